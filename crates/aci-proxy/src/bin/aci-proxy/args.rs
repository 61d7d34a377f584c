//! The flags of `aci-proxy serve` (and of `inspect`, `config`, `verify-receipts`), merged over the
//! `--config` file and the `ACI_PROXY_*` environment into a [`ProxyConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aci_proxy::{BootMeasurementPin, LogFormat, ProxyConfig, ReceiptMode};
use clap::Args;
use clap::builder::BoolishValueParser;
use tower_aci::tls::HttpsProxy;

use crate::exit::Failure;

/// The flags of `aci-proxy serve`.
#[derive(Args, Debug, Default)]
pub(crate) struct ServeArgs {
    /// The gateway's base URL, e.g. https://api.redpill.ai
    #[arg(long, env = "ACI_PROXY_GATEWAY", value_name = "URL")]
    gateway: Option<String>,
    /// Where to listen [default: 127.0.0.1:8787]
    #[arg(long, env = "ACI_PROXY_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Environment variable holding the API key sent as the bearer token [default: ACI_API_KEY].
    /// When it is unset, a client's own Authorization header is forwarded instead (never with
    /// --client-key-env); the start-up log says which
    #[arg(long, env = "ACI_PROXY_API_KEY_ENV", value_name = "VAR")]
    api_key_env: Option<String>,
    /// Environment variable holding the key clients must send as `Authorization: Bearer <key>`
    /// (at least 16 characters; required to listen on a non-loopback address). Checked on every
    /// route of --listen, loopback and probes included. The client key is never forwarded: the
    /// gateway gets the API key of --api-key-env
    #[arg(long, env = "ACI_PROXY_CLIENT_KEY_ENV", value_name = "VAR")]
    client_key_env: Option<String>,
    /// Refuse to start without a client key (--client-key-env), on loopback too: for a shared
    /// machine, where other users and processes must not spend the API key
    #[arg(long, env = "ACI_PROXY_REQUIRE_CLIENT_KEY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    require_client_key: Option<bool>,
    /// Also listen here for GET /healthz, /readyz and /metrics only, without the client key (for a
    /// supervisor or Prometheus); Host must name this address or loopback, Origin is refused
    #[arg(long, env = "ACI_PROXY_OPS_LISTEN", value_name = "ADDR")]
    ops_listen: Option<SocketAddr>,
    /// Allow --ops-listen on a non-loopback address (its probes and metrics then answer whoever
    /// reaches it: keep it behind a firewall or in a pod network)
    #[arg(long, env = "ACI_PROXY_OPS_LISTEN_BEYOND_LOOPBACK", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    ops_listen_beyond_loopback: Option<bool>,
    /// Allow requests from this browser origin, exactly scheme://host or scheme://host:port (repeatable); any
    /// other request carrying Origin is refused
    #[arg(long = "allow-origin", env = "ACI_PROXY_ALLOW_ORIGIN", value_name = "ORIGIN", value_delimiter = ',')]
    allow_origins: Vec<String>,
    /// Receipts: off, verify (in the background), before-release (an answer ends only once its
    /// receipt verified) or hold-until-verified (no byte before it) [default: verify]
    #[arg(long, env = "ACI_PROXY_RECEIPTS", value_name = "MODE")]
    receipts: Option<ReceiptMode>,
    /// Environment variable holding this proxy's secret prompt-cache salt (at least 16
    /// characters): every chat completion and completion then carries a cache_salt derived from
    /// it (and from the client's own), so one tenant's cached prefixes never serve another's
    #[arg(long, env = "ACI_PROXY_CACHE_SALT_ENV", value_name = "VAR")]
    cache_salt_env: Option<String>,
    /// Append verified receipts (exact bytes, with their exchange and report) to this file
    #[arg(long, env = "ACI_PROXY_AUDIT_FILE", value_name = "FILE")]
    audit_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes [default: 33554432]
    #[arg(long, env = "ACI_PROXY_MAX_REQUEST_BODY", value_name = "BYTES")]
    max_request_body: Option<usize>,
    /// HTTPS gateways with a self-signed certificate: trust only the TLS keys the attested keyset
    /// lists (no WebPKI)
    #[arg(long, env = "ACI_PROXY_TLS_PIN_ONLY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    tls_pin_only: Option<bool>,
    /// Fetch the TDX quote's collateral from this PCCS, e.g. https://pccs.phala.network
    #[arg(long, env = "ACI_PROXY_PCCS", value_name = "URL")]
    pccs: Option<String>,
    /// Also accept this CA (a PEM file) for the PCCS connection only, for an egress proxy that
    /// inspects TLS with its own CA; the gateway's connection never accepts it
    #[arg(long, env = "ACI_PROXY_PCCS_CA", value_name = "FILE")]
    pccs_ca: Option<PathBuf>,
    /// Connect to the gateway and the PCCS through this HTTP proxy (CONNECT tunnels, TLS end to
    /// end inside), e.g. http://proxy.corp:3128 or http://user:password@proxy.corp:3128; put
    /// credentials in the environment, not on the command line [default: HTTPS_PROXY, except
    /// NO_PROXY hosts and loopback]
    #[arg(long, env = "ACI_PROXY_HTTPS_PROXY", value_name = "URL", hide_env_values = true)]
    https_proxy: Option<String>,
    /// Longest time one exchange may take, request to last byte (e.g. 600, 90s, 10m) [default: 600s]
    #[arg(long, env = "ACI_PROXY_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    request_timeout: Option<Duration>,
    /// On SIGTERM or SIGINT, how long open streams may drain before they end with an error event
    /// [default: 30s]
    #[arg(long, env = "ACI_PROXY_SHUTDOWN_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    shutdown_timeout: Option<Duration>,
    /// Serve GET /metrics in the Prometheus text format [default: true]
    #[arg(long, env = "ACI_PROXY_METRICS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    metrics: Option<bool>,
    /// Log lines as text or json (one object per line); RUST_LOG picks what is logged [default: text]
    #[arg(long, env = "ACI_PROXY_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// The local test gateway paces its stream events this far apart (demos, tests)
    #[arg(long, hide = true, env = "ACI_PROXY_TEST_GATEWAY_EVENT_DELAY", value_parser = duration_ms)]
    test_gateway_event_delay: Option<Duration>,
    /// The local test gateway serves HTTPS with the certificate and key in this PEM file (tests)
    #[arg(long, hide = true, env = "ACI_PROXY_LOCAL_TEST_GATEWAY_TLS", value_name = "FILE")]
    local_test_gateway_tls: Option<PathBuf>,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// The flags of the attestation policy (and `--config`).
#[derive(Args, Debug, Default)]
pub(crate) struct PolicyArgs {
    /// A TOML configuration file, keys spelt like the flags (the environment and flags override
    /// it; `aci-proxy config` prints one)
    #[arg(long, env = "ACI_PROXY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Start the local test gateway in-process and proxy to it (offline demo; needs a build
    /// with feature local-test-gateway)
    #[arg(long, env = "ACI_PROXY_LOCAL_TEST_GATEWAY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    local_test_gateway: Option<bool>,
    /// Allow this compose hash (hex SHA-256 of the report's app_compose)
    #[arg(long = "compose-hash", env = "ACI_PROXY_COMPOSE_HASH", value_name = "HEX", value_delimiter = ',')]
    compose_hashes: Vec<String>,
    /// Allow this dstack app id (hex; the event log's app-id)
    #[arg(long = "app-id", env = "ACI_PROXY_APP_ID", value_name = "HEX", value_delimiter = ',')]
    app_ids: Vec<String>,
    /// Allow this OS image hash (hex; the event log's os-image-hash)
    #[arg(long = "os-image-hash", env = "ACI_PROXY_OS_IMAGE_HASH", value_name = "HEX", value_delimiter = ',')]
    os_image_hashes: Vec<String>,
    /// Accept this KMS root key (hex, compressed secp256k1); key custody is then required (beside the
    /// compose hash, boot measurements and KMS identity, never instead of them)
    #[arg(long = "kms-root", env = "ACI_PROXY_KMS_ROOT", value_name = "HEX", value_delimiter = ',')]
    kms_roots: Vec<String>,
    /// Allow this KMS identity: the id (hex) of the event log's key-provider event, the KMS that
    /// provisioned the gateway (repeatable)
    #[arg(long = "kms-identity", env = "ACI_PROXY_KMS_IDENTITY", value_name = "HEX", value_delimiter = ',')]
    kms_identities: Vec<String>,
    /// Require a reviewed dstack production OS image (the os-image-hash event)
    #[arg(long, env = "ACI_PROXY_REQUIRE_PRODUCTION_OS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    require_production_os: Option<bool>,
    /// Allow these boot measurements: the quote's MRTD and RTMR0-2, hex, comma-separated (repeatable, one set
    /// per OS image; sets separated by ';' in the environment)
    #[arg(
        long = "boot-measurements",
        env = "ACI_PROXY_BOOT_MEASUREMENTS",
        value_name = "MRTD,RTMR0,RTMR1,RTMR2",
        value_delimiter = ';'
    )]
    boot_measurements: Vec<BootMeasurementPin>,
    /// Refuse a platform whose TCB level is affected by this Intel advisory (e.g. INTEL-SA-00837; repeatable)
    #[arg(long = "refuse-advisory", env = "ACI_PROXY_REFUSE_ADVISORY", value_name = "ID", value_delimiter = ',')]
    refused_advisories: Vec<String>,
    /// Accept these TCB statuses of the quote [default: UpToDate]
    #[arg(long = "tcb-status", env = "ACI_PROXY_TCB_STATUS", value_name = "STATUS", value_delimiter = ',')]
    tcb_statuses: Vec<String>,
    /// Encrypt only to the E2EE key with this key id
    #[arg(long, env = "ACI_PROXY_KEY_ID", value_name = "ID")]
    key_id: Option<String>,
    /// Prefer the gateway's X25519 key over secp256k1
    #[arg(long, env = "ACI_PROXY_PREFER_X25519", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    prefer_x25519: Option<bool>,
    /// Dangerous: trust any workload running in a TEE (no pin)
    #[arg(long, env = "ACI_PROXY_ANY_WORKLOAD", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    any_workload: Option<bool>,
    /// Accept a receipt only when the keyset it names was itself attested, never on the
    /// same-key rule (a replica whose report could not be fetched)
    #[arg(long, env = "ACI_PROXY_REQUIRE_EXACT_KEYSET", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    require_exact_keyset: Option<bool>,
}

/// `600`, `600s`, `10m`, `1h`: a duration in seconds unless suffixed.
fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a duration (e.g. 30, 30s, 10m)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{s:?}: the unit must be s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// `250ms` or a [`duration`].
fn duration_ms(s: &str) -> Result<Duration, String> {
    match s.trim().strip_suffix("ms") {
        Some(ms) => ms.parse().map(Duration::from_millis).map_err(|_| format!("{s:?} is not a duration")),
        None => duration(s),
    }
}

/// A list from the flags or the environment replaces the file's.
fn replace_if_given(target: &mut Vec<String>, given: &[String]) {
    if !given.is_empty() {
        *target = given.to_vec();
    }
}

impl PolicyArgs {
    /// The `--config` file, then these flags over it.
    pub(crate) fn config(&self) -> Result<ProxyConfig, Failure> {
        let mut config = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
                ProxyConfig::from_toml(&text).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?
            }
            None => ProxyConfig::default(),
        };
        if let Some(b) = self.local_test_gateway {
            config.local_test_gateway = b;
        }
        if let Some(b) = self.any_workload {
            config.any_workload = b;
        }
        if let Some(b) = self.require_exact_keyset {
            config.require_exact_keyset = b;
        }
        let pins = &mut config.pins;
        replace_if_given(&mut pins.compose_hashes, &self.compose_hashes);
        replace_if_given(&mut pins.app_ids, &self.app_ids);
        replace_if_given(&mut pins.os_image_hashes, &self.os_image_hashes);
        replace_if_given(&mut pins.kms_roots, &self.kms_roots);
        replace_if_given(&mut pins.kms_identities, &self.kms_identities);
        if let Some(b) = self.require_production_os {
            pins.require_production_os = b;
        }
        replace_if_given(&mut pins.tcb_statuses, &self.tcb_statuses);
        replace_if_given(&mut pins.refused_advisories, &self.refused_advisories);
        if !self.boot_measurements.is_empty() {
            pins.boot_measurements = self.boot_measurements.clone();
        }
        if let Some(id) = &self.key_id {
            pins.key_id = Some(id.clone());
        }
        if let Some(b) = self.prefer_x25519 {
            pins.prefer_x25519 = b;
        }
        Ok(config)
    }
}

impl ServeArgs {
    /// The `--config` file, then these flags over it.
    pub(crate) fn config(&self) -> Result<ProxyConfig, Failure> {
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
        if let Some(e) = &self.cache_salt_env {
            config.cache_salt_env = Some(e.clone());
        }
        if let Some(b) = self.require_client_key {
            config.require_client_key = b;
        }
        if let Some(a) = self.ops_listen {
            config.ops_listen = Some(a);
        }
        if let Some(b) = self.ops_listen_beyond_loopback {
            config.ops_listen_beyond_loopback = b;
        }
        replace_if_given(&mut config.allow_origins, &self.allow_origins);
        if let Some(r) = self.receipts {
            config.receipts = r;
        }
        if let Some(a) = &self.audit_file {
            config.audit_file = Some(a.clone());
        }
        if let Some(m) = self.max_request_body {
            config.max_request_body = m;
        }
        if let Some(b) = self.tls_pin_only {
            config.tls_pin_only = b;
        }
        if let Some(p) = &self.pccs {
            config.pccs = Some(p.clone());
        }
        if let Some(p) = &self.pccs_ca {
            config.pccs_ca = Some(p.clone());
        }
        if let Some(url) = &self.https_proxy {
            // Parsed here, not by clap, whose error would repeat the URL and its credentials.
            config.https_proxy =
                Some(HttpsProxy::parse(url).map_err(|e| Failure::usage(format!("--https-proxy: {e}")))?);
        }
        if let Some(t) = self.request_timeout {
            config.request_timeout = t;
        }
        if let Some(t) = self.shutdown_timeout {
            config.shutdown_timeout = t;
        }
        if let Some(m) = self.metrics {
            config.metrics = m;
        }
        if let Some(f) = self.log_format {
            config.log_format = f;
        }
        if self.test_gateway_event_delay.is_some() {
            config.local_test_gateway_event_delay = self.test_gateway_event_delay;
        }
        if self.local_test_gateway_tls.is_some() {
            config.local_test_gateway_tls = self.local_test_gateway_tls.clone();
        }
        Ok(config)
    }
}
