//! `aci-proxy`: a local OpenAI-compatible endpoint that sends every request end-to-end
//! encrypted to an attested ACI gateway. The library is `aci_proxy` (this crate's `src/lib.rs`);
//! the operator's manual is the crate's README.
//!
//! ```text
//! cargo run -p aci-proxy --features local-test-gateway -- serve --local-test-gateway   # offline demo
//! aci-proxy inspect https://api.redpill.ai                                      # what to pin
//! ACI_API_KEY=sk-… aci-proxy serve --gateway https://api.redpill.ai --compose-hash … --kms-root …
//! aci-proxy serve --config aci-proxy.toml                                    # the same, from a file
//! aci-proxy config --config aci-proxy.toml --receipts before-release         # the merged file, as TOML
//! aci-proxy verify-receipts receipts.jsonl --config aci-proxy.toml           # offline audit
//! ACI_CLIENT_KEY=… aci-proxy serve --listen 0.0.0.0:8787 --client-key-env ACI_CLIENT_KEY …  # beyond loopback
//! ACI_CLIENT_KEY=… aci-proxy serve --require-client-key --client-key-env ACI_CLIENT_KEY \
//!     --ops-listen 127.0.0.1:9090 …     # a shared machine: the key on loopback, probes without it
//! ```
//!
//! `aci-proxy [FLAGS]` with no subcommand is `aci-proxy serve [FLAGS]` (kept for
//! compatibility). Every flag can also come from an `ACI_PROXY_*` environment variable
//! (`--gateway` from `ACI_PROXY_GATEWAY`, lists comma-separated) and from the `--config` TOML
//! file, whose keys are the flags without `--`; a flag wins over the environment, and the
//! environment over the file. Every subcommand exits with the statuses of [`exit::Exit`].

// The doc comments below are the command's `--help` text, where bare URLs read best.
#![allow(rustdoc::bare_urls)]

#[path = "aci-proxy/args.rs"]
mod args;
#[path = "aci-proxy/exit.rs"]
mod exit;
#[path = "aci-proxy/inspect.rs"]
mod inspect;
#[path = "aci-proxy/runtime.rs"]
mod runtime;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use aci_proxy::{LogFormat, Proxy, ProxyConfig, install_metrics_recorder, verify_audit};
use args::{PolicyArgs, ServeArgs};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use exit::{Exit, Failure};
use runtime::runtime;

/// End-to-end encryption (ACI E2EE v2) for any OpenAI SDK, through a local proxy.
///
/// `aci-proxy serve` attests the gateway and serves the OpenAI API on loopback; `aci-proxy
/// [FLAGS]` with no subcommand is `aci-proxy serve [FLAGS]` (kept for compatibility; its flags
/// are listed by `aci-proxy serve --help`). Every flag can also be set from an ACI_PROXY_*
/// environment variable (shown with each flag; lists comma-separated) and from the --config TOML
/// file, whose keys are the flags without `--`. Precedence: flag, then environment, then file.
#[derive(Parser, Debug)]
#[command(
    name = "aci-proxy",
    version,
    args_conflicts_with_subcommands = true,
    override_usage = "aci-proxy <COMMAND> [FLAGS]\n       aci-proxy [SERVE FLAGS]   (the same as aci-proxy serve [SERVE FLAGS])",
    after_help = exit::HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The flags of `serve`, for `aci-proxy [FLAGS]` without a subcommand (hidden in `--help`).
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Attest the gateway and serve the OpenAI API on loopback, every inference request
    /// end-to-end encrypted (what `aci-proxy [FLAGS]` does without a subcommand)
    #[command(after_help = exit::HELP)]
    Serve(ServeArgs),
    /// Fetch a gateway's attestation report, verify what can be verified, and print the values
    /// to pin (exit status 0 only when it verified under the pins given)
    #[command(after_help = exit::HELP)]
    Inspect(inspect::InspectArgs),
    /// Re-verify an audit file offline: every report, every receipt (exit status 0 only when
    /// every line verified)
    #[command(after_help = exit::HELP)]
    VerifyReceipts {
        /// The JSON-lines audit file the proxy wrote (`--audit-file`).
        file: PathBuf,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Print the configuration `serve` would run with (file, environment and flags merged) as a
    /// TOML file that --config reads back unchanged, and exit. Secrets are named by their
    /// environment variables, never printed
    #[command(after_help = exit::HELP)]
    Config {
        #[command(flatten)]
        serve: ServeArgs,
    },
}

/// `aci-proxy config`: the effective configuration as the TOML file `--config` reads back.
fn print_config(config: &ProxyConfig) -> Result<(), Failure> {
    let text = config.to_toml().map_err(|e| Failure::of(&e, ""))?;
    print!(
        "# aci-proxy configuration: the file, the ACI_PROXY_* environment and the flags, merged.\n\
         # `aci-proxy serve --config FILE` reads it back unchanged. Secrets are named by their\n\
         # environment variables (api-key-env, client-key-env, cache-salt-env), never written here.\n\n{text}"
    );
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                let which = tokio::select! {
                    _ = tokio::signal::ctrl_c() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                };
                tracing::info!(signal = which, "stopping");
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); stopping on SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("stopping");
    }
}

async fn serve(config: ProxyConfig) -> Result<(), Failure> {
    let (listen, ops_listen, format) = (config.listen, config.ops_listen, config.log_format);
    if config.metrics {
        // The process's one `metrics` recorder: Prometheus, for GET /metrics (the library
        // installs none unasked).
        if let Err(e) = install_metrics_recorder() {
            tracing::warn!("{e}");
        }
    }
    let proxy = Proxy::start(config).await.map_err(|e| Failure::of(&e, "cannot start: "))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::runtime(format!("cannot listen on {listen}: {e}")))?;
    let listen = listener.local_addr().unwrap_or(listen);
    let ops_listener = match ops_listen {
        Some(at) => Some(
            tokio::net::TcpListener::bind(at)
                .await
                .map_err(|e| Failure::runtime(format!("cannot listen on {at} (--ops-listen): {e}")))?,
        ),
        None => None,
    };
    let status = proxy.status();
    if format == LogFormat::Text {
        // What the gateway gets as Authorization (the library logs it too, at start).
        if let Some(detail) = status["authorization"]["detail"].as_str() {
            eprintln!("aci-proxy: {detail}");
        }
    }
    if let (Some(l), Some(at)) = (&ops_listener, ops_listen) {
        let ops = l.local_addr().unwrap_or(at);
        tracing::info!("probes and metrics without the client key on http://{ops} (/healthz, /readyz, /metrics)");
        if format == LogFormat::Text {
            eprintln!("aci-proxy: probes and metrics on http://{ops} (/healthz, /readyz, /metrics)");
        }
    }
    tracing::info!(gateway = %proxy.gateway(), keyset = %status["keyset"]["digest"], "attested; listening on http://{listen}/v1");
    if format == LogFormat::Text {
        eprintln!(
            "aci-proxy: attested {} (keyset {}), listening on http://{listen}/v1",
            proxy.gateway(),
            status["keyset"]["digest"]
        );
    }
    proxy
        .serve_with_ops_until(listener, ops_listener, stop_signal())
        .await
        .map_err(|e| Failure::runtime(format!("server error: {e}")))?;
    tracing::info!("stopped");
    Ok(())
}

fn verify_receipts(file: &PathBuf, policy: &PolicyArgs) -> Result<(), Failure> {
    let config = policy.config()?;
    let policy = config.policy().map_err(|e| Failure::of(&e, ""))?;
    let text = std::fs::read_to_string(file).map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
    let summary = verify_audit(&text, &policy, &config.receipt_policy());
    println!("{} reports and {} receipts verified", summary.keysets_verified, summary.receipts_verified);
    for (line, e) in &summary.failures {
        match e.error() {
            Some(verdict) => println!("line {line}: {:?}: {e}", verdict.kind()),
            None => println!("line {line}: Malformed: {e}"),
        }
    }
    if summary.is_clean() {
        Ok(())
    } else {
        Err(Failure::not_verified(format!("{} lines did not verify", summary.failures.len())))
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "tower_aci=info,aci_proxy=info".into());
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        _ => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// The command line. The serve flags of `aci-proxy [FLAGS]` are hidden in the top-level
/// `--help`, which lists the subcommands (`aci-proxy serve --help` lists those flags).
fn parse() -> Cli {
    // `--version` says which field-encryption backends this build decrypts with.
    let version = format!("{} ({})", env!("CARGO_PKG_VERSION"), aci_proxy::crypto_backends());
    let command = Cli::command().mut_args(|a| a.hide(true)).version(&*Box::leak(version.into_boxed_str()));
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let cli = parse();
    let serve_with = |args: &ServeArgs| {
        let config = args.config()?;
        init_logging(config.log_format);
        runtime()?.block_on(serve(config))
    };
    let outcome = match &cli.command {
        Some(Command::Serve(args)) => serve_with(args),
        Some(Command::Inspect(args)) => {
            init_logging(LogFormat::Text);
            inspect::run(args)
        }
        Some(Command::VerifyReceipts { file, policy }) => {
            init_logging(LogFormat::Text);
            verify_receipts(file, policy)
        }
        Some(Command::Config { serve }) => serve.config().and_then(|c| print_config(&c)),
        None => serve_with(&cli.serve),
    };
    match outcome {
        Ok(()) => Exit::Ok.into(),
        Err(failure) => {
            eprintln!("aci-proxy: {}", failure.message);
            failure.exit.into()
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
            "--compose-hash",
            "5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb",
            "--boot-measurements",
            &set,
            "--kms-identity",
            "3059301306072a8648ce3d0201",
            "--require-production-os",
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
        assert_eq!(config.pins.kms_identities, ["3059301306072a8648ce3d0201"]);
        assert!(config.pins.require_production_os);
        let policy = config.policy().unwrap();
        assert!(policy.anchors_pin() && policy.pins_measured_workload());
        assert!(Cli::try_parse_from(["aci-proxy", "--boot-measurements", "aa,bb"]).is_err());
    }
}
