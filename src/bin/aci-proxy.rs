//! `aci-proxy`: a local OpenAI-compatible endpoint that sends every request end-to-end
//! encrypted to an attested ACI gateway. See `tower_aci::proxy`.
//!
//! ```text
//! cargo run --features proxy --bin aci-proxy -- --local-test-gateway          # offline demo
//! ACI_API_KEY=sk-… aci-proxy --gateway https://api.redpill.ai --compose-hash … --kms-root …
//! aci-proxy verify-receipts receipts.jsonl --config aci-proxy.toml           # offline audit
//! ACI_CLIENT_KEY=… aci-proxy --listen 0.0.0.0:8787 --client-key-env ACI_CLIENT_KEY …  # beyond loopback
//! ```

// The doc comments below are the command's `--help` text, where bare URLs read best.
#![allow(rustdoc::bare_urls)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tower_aci::proxy::{BootMeasurementPin, Proxy, ProxyConfig, ReceiptMode, verify_audit};

/// End-to-end encryption (ACI E2EE v2) for any OpenAI SDK, through a local proxy.
#[derive(Parser, Debug)]
#[command(name = "aci-proxy", version, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Re-verify an audit file offline: every report, every receipt.
    VerifyReceipts {
        /// The JSON-lines audit file the proxy wrote (`--audit-file`).
        file: PathBuf,
        #[command(flatten)]
        policy: PolicyArgs,
    },
}

#[derive(Args, Debug, Default)]
struct ServeArgs {
    /// The gateway's base URL, e.g. https://api.redpill.ai
    #[arg(long)]
    gateway: Option<String>,
    /// Where to listen [default: 127.0.0.1:8787]
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Environment variable holding the API key sent as the bearer token [default: ACI_API_KEY]
    #[arg(long)]
    api_key_env: Option<String>,
    /// Environment variable holding the key clients must send as `Authorization: Bearer <key>`
    /// (at least 16 characters; required to listen on a non-loopback address). The client key
    /// is never forwarded: the gateway gets the API key of --api-key-env
    #[arg(long, value_name = "VAR")]
    client_key_env: Option<String>,
    /// Allow requests from this browser origin, exactly scheme://host or scheme://host:port (repeatable); any
    /// other request carrying Origin is refused
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allow_origins: Vec<String>,
    /// Receipts: off, verify (in the background) or before-release [default: verify]
    #[arg(long)]
    receipts: Option<ReceiptMode>,
    /// Append verified receipts (exact bytes, with their exchange and report) to this file
    #[arg(long)]
    audit_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes [default: 33554432]
    #[arg(long)]
    max_request_body: Option<usize>,
    /// HTTPS gateways with a self-signed certificate: trust only the TLS keys the attested keyset
    /// lists (no WebPKI)
    #[arg(long)]
    tls_pin_only: bool,
    /// Fetch the TDX quote's collateral from this PCCS (with feature dcap), e.g. https://pccs.phala.network
    #[arg(long)]
    pccs: Option<String>,
    #[command(flatten)]
    policy: PolicyArgs,
}

#[derive(Args, Debug, Default)]
struct PolicyArgs {
    /// A TOML configuration file (flags override it)
    #[arg(long)]
    config: Option<PathBuf>,
    /// Start the crate's local test gateway in-process and proxy to it (offline demo)
    #[arg(long)]
    local_test_gateway: bool,
    /// Allow this compose hash (hex SHA-256 of the report's app_compose)
    #[arg(long = "compose-hash", value_name = "HEX")]
    compose_hashes: Vec<String>,
    /// Allow this dstack app id (hex; the event log's app-id)
    #[arg(long = "app-id", value_name = "HEX")]
    app_ids: Vec<String>,
    /// Allow this OS image hash (hex; the event log's os-image-hash)
    #[arg(long = "os-image-hash", value_name = "HEX")]
    os_image_hashes: Vec<String>,
    /// Accept this KMS root key (hex, compressed secp256k1); key custody is then required. Anchors the pin
    #[arg(long = "kms-root", value_name = "HEX")]
    kms_roots: Vec<String>,
    /// Allow these boot measurements: the quote's MRTD and RTMR0-2, hex, comma-separated (repeatable, one set
    /// per OS image). Anchors the pin without a KMS root
    #[arg(long = "boot-measurements", value_name = "MRTD,RTMR0,RTMR1,RTMR2")]
    boot_measurements: Vec<BootMeasurementPin>,
    /// Refuse a platform whose TCB level is affected by this Intel advisory (e.g. INTEL-SA-00837; repeatable)
    #[arg(long = "refuse-advisory", value_name = "ID")]
    refused_advisories: Vec<String>,
    /// Dangerous: trust any workload running in a TEE (no pin)
    #[arg(long)]
    any_workload: bool,
    /// Accept a receipt only when the keyset it names was itself attested, never on the
    /// same-key rule (a replica whose report could not be fetched)
    #[arg(long)]
    require_exact_keyset: bool,
}

impl PolicyArgs {
    fn config(&self) -> Result<ProxyConfig, String> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
                ProxyConfig::from_toml(&text).map_err(|e| e.to_string())?
            }
            None => ProxyConfig::default(),
        };
        config.local_test_gateway |= self.local_test_gateway;
        config.any_workload |= self.any_workload;
        config.require_exact_keyset |= self.require_exact_keyset;
        config.pins.compose_hashes.extend(self.compose_hashes.iter().cloned());
        config.pins.app_ids.extend(self.app_ids.iter().cloned());
        config.pins.os_image_hashes.extend(self.os_image_hashes.iter().cloned());
        config.pins.kms_roots.extend(self.kms_roots.iter().cloned());
        config.pins.boot_measurements.extend(self.boot_measurements.iter().cloned());
        config.pins.refused_advisories.extend(self.refused_advisories.iter().cloned());
        Ok(config)
    }
}

impl ServeArgs {
    fn config(&self) -> Result<ProxyConfig, String> {
        let mut config = self.policy.config()?;
        if let Some(g) = &self.gateway {
            config.gateway = Some(g.clone());
        }
        if let Some(l) = self.listen {
            config.listen = l;
        }
        if let Some(e) = &self.api_key_env {
            config.api_key_env = e.clone();
        }
        if let Some(e) = &self.client_key_env {
            config.client_key_env = Some(e.clone());
        }
        config.allow_origins.extend(self.allow_origins.iter().cloned());
        if let Some(r) = self.receipts {
            config.receipts = r;
        }
        if let Some(a) = &self.audit_file {
            config.audit_file = Some(a.clone());
        }
        if let Some(m) = self.max_request_body {
            config.max_request_body = m;
        }
        config.tls_pin_only |= self.tls_pin_only;
        if let Some(p) = &self.pccs {
            config.pccs = Some(p.clone());
        }
        Ok(config)
    }
}

async fn serve(config: ProxyConfig) -> Result<(), String> {
    let listen = config.listen;
    let proxy = Proxy::start(config).await.map_err(|e| format!("cannot start: {e}"))?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let status = proxy.status();
    tracing::info!(gateway = %proxy.gateway(), keyset = %status["keyset"]["digest"], "attested; listening on http://{listen}/v1");
    eprintln!(
        "aci-proxy: attested {} (keyset {}), listening on http://{listen}/v1",
        proxy.gateway(),
        status["keyset"]["digest"]
    );
    axum::serve(listener, proxy.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
        })
        .await
        .map_err(|e| format!("server error: {e}"))
}

fn verify_receipts(file: &PathBuf, policy: &PolicyArgs) -> Result<(), String> {
    let config = policy.config()?;
    let policy = config.policy().map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let summary = verify_audit(&text, &policy, &config.receipt_policy());
    println!("{} reports and {} receipts verified", summary.keysets_verified, summary.receipts_verified);
    for (line, e) in &summary.failures {
        println!("line {line}: {:?}: {e}", e.kind());
    }
    if summary.is_clean() { Ok(()) } else { Err(format!("{} lines did not verify", summary.failures.len())) }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tower_aci=info,aci_proxy=info".into()),
        )
        .init();
    let outcome = match &cli.command {
        Some(Command::VerifyReceipts { file, policy }) => verify_receipts(file, policy),
        None => match cli.serve.config() {
            Ok(config) => match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt.block_on(serve(config)),
                Err(e) => Err(format!("cannot start the runtime: {e}")),
            },
            Err(e) => Err(e),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aci-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn boot_measurement_and_advisory_flags_reach_the_config() {
        let m = "ab".repeat(48);
        let set = format!("{m},{m},{m},{m}");
        let cli = Cli::try_parse_from([
            "aci-proxy",
            "--app-id",
            "fdb7a14e5a6675f752e2cb69c9067a98ca402918",
            "--boot-measurements",
            &set,
            "--refuse-advisory",
            "INTEL-SA-00837",
            "--refuse-advisory",
            "INTEL-SA-01036",
        ])
        .unwrap();
        let config = cli.serve.config().unwrap();
        assert_eq!(config.pins.boot_measurements.len(), 1);
        assert_eq!(config.pins.boot_measurements[0].rtmr2, m);
        assert_eq!(config.pins.refused_advisories, ["INTEL-SA-00837", "INTEL-SA-01036"]);
        assert!(config.policy().unwrap().anchors_pin());
        assert!(Cli::try_parse_from(["aci-proxy", "--boot-measurements", "aa,bb"]).is_err());
    }
}
