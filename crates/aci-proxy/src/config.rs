//! What the proxy is told: the gateway, where to listen, the policy's pins, what to do with
//! receipts. Read from flags and an optional TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tower_aci::attest::{Policy, PolicyBuilder};
use tower_aci::error::{Error, Result};
use tower_aci::tls::HttpsProxy;

mod keys;

/// What the proxy does with receipts: the [`Client`](tower_aci::Client)'s one receipt mode
/// (`--receipts off|verify|before-release|hold-until-verified`).
pub use tower_aci::client::ReceiptMode;

/// How `aci-proxy` writes its log lines (the access log included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines (`tracing-subscriber`'s full format).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(Error::config(format!("unknown log format {s:?} (text, json)"))),
        }
    }
}

/// One set of boot measurements to pin (see
/// [`PolicyBuilder::allow_boot_measurements`]): the TD's MRTD and RTMR0–2, hex, 48 bytes each.
///
/// On the command line `--boot-measurements MRTD,RTMR0,RTMR1,RTMR2`; in the TOML file a
/// `[[pins.boot-measurements]]` table with `mrtd`, `rtmr0`, `rtmr1` and `rtmr2`.
///
/// ```
/// use aci_proxy::{BootMeasurementPin, PolicyPins};
/// let (mrtd, rtmr) = ("11".repeat(48), "22".repeat(48));
/// let pin = BootMeasurementPin::new(&mrtd, &rtmr, &rtmr, &rtmr);
/// assert_eq!(format!("{mrtd},{rtmr},{rtmr},{rtmr}").parse::<BootMeasurementPin>().unwrap(), pin);
/// let pins = PolicyPins::default().boot_measurements(pin);
/// # let _ = pins;
/// ```
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BootMeasurementPin {
    /// MRTD (the initial TD image).
    pub mrtd: String,
    /// RTMR0 (firmware boot configuration).
    pub rtmr0: String,
    /// RTMR1 (OS loader and kernel).
    pub rtmr1: String,
    /// RTMR2 (kernel command line and initrd).
    pub rtmr2: String,
}

impl BootMeasurementPin {
    /// One set: MRTD and RTMR0–2, hex as `aci-proxy inspect` prints them (checked when the
    /// policy is built).
    pub fn new(
        mrtd: impl Into<String>,
        rtmr0: impl Into<String>,
        rtmr1: impl Into<String>,
        rtmr2: impl Into<String>,
    ) -> Self {
        BootMeasurementPin { mrtd: mrtd.into(), rtmr0: rtmr0.into(), rtmr1: rtmr1.into(), rtmr2: rtmr2.into() }
    }
}

impl std::str::FromStr for BootMeasurementPin {
    type Err = Error;

    /// `MRTD,RTMR0,RTMR1,RTMR2` (the values are checked when the policy is built).
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        match parts.as_slice() {
            [mrtd, rtmr0, rtmr1, rtmr2] => Ok(BootMeasurementPin::new(*mrtd, *rtmr0, *rtmr1, *rtmr2)),
            _ => Err(Error::config(format!(
                "boot measurements {s:?} are not MRTD,RTMR0,RTMR1,RTMR2 (four hex values, comma-separated)"
            ))),
        }
    }
}

/// A proxy URL, as the configuration file spells it (the text is zeroized once parsed).
fn https_proxy<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<HttpsProxy>, D::Error> {
    let mut text = String::deserialize(d)?;
    let parsed = HttpsProxy::parse(&text);
    zeroize::Zeroize::zeroize(&mut text);
    parsed.map(Some).map_err(serde::de::Error::custom)
}

/// A proxy URL as a file may hold it: without its credentials (they belong in the root-only
/// environment file), so a printed configuration never shows them.
fn write_https_proxy<S: serde::Serializer>(p: &Option<HttpsProxy>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&p.to_string()),
        None => s.serialize_none(),
    }
}

/// A duration in whole seconds, as the configuration file spells it.
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

/// A duration written as whole seconds; a fraction of a second cannot be written (the file
/// would read back as another duration).
fn write_seconds<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    if d.subsec_nanos() != 0 {
        return Err(serde::ser::Error::custom(format!("{d:?} is not a whole number of seconds")));
    }
    s.serialize_u64(d.as_secs())
}

/// The workload pins of the attestation policy, as the proxy's flags and config file give them.
///
/// Every value is hex, as the report and its event log spell it: the compose hash is SHA-256 of
/// the report's `app_compose` (the `compose-hash` event of the event log), the app id is the
/// payload of the `app-id` event (and the keyset subject `app-id:0x…`), the OS image hash the
/// payload of `os-image-hash`, the KMS root the compressed secp256k1 key at the end of the
/// `key_custody` chains, the boot measurements the quote's MRTD and RTMR0–2, the KMS identity the
/// `id` of the `key-provider` event. A compose hash, boot measurements and a KMS identity
/// together are the sound combination that covers every key; an app id and a KMS root add
/// checks beside them (see [`Policy`]).
///
/// In the TOML file they form the `[pins]` table, each key spelt like its flag (given below). In
/// code, start from [`PolicyPins::default`] and add pins with the setters named like the flags
/// (each takes and returns the pins by value; a repeatable flag's setter adds one value); the
/// fields stay public to read and to change in place. New pins may be added in any release, so
/// the struct is `#[non_exhaustive]`: build it this way, never as a struct literal.
///
/// ```
/// use aci_proxy::{BootMeasurementPin, PolicyPins, ProxyConfig};
/// let (mrtd, rtmr) = ("11".repeat(48), "22".repeat(48));
/// let pins = PolicyPins::default()
///     .compose_hash("5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb")
///     .boot_measurements(BootMeasurementPin::new(&mrtd, &rtmr, &rtmr, &rtmr))
///     .kms_identity("3059301306072a8648ce3d0201")
///     .refuse_advisory("INTEL-SA-00837");
/// assert_eq!(pins.compose_hashes.len(), 1);
/// let config = ProxyConfig::default().gateway("https://api.redpill.ai").pins(pins);
/// assert!(config.policy().is_ok());
/// ```
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
#[non_exhaustive]
pub struct PolicyPins {
    /// Allowed compose hashes (`--compose-hash`, TOML `compose-hash`).
    #[serde(rename = "compose-hash")]
    pub compose_hashes: Vec<String>,
    /// Allowed dstack app ids (`--app-id`, TOML `app-id`).
    #[serde(rename = "app-id")]
    pub app_ids: Vec<String>,
    /// Allowed OS image hashes (`--os-image-hash`, TOML `os-image-hash`).
    #[serde(rename = "os-image-hash")]
    pub os_image_hashes: Vec<String>,
    /// Accepted KMS root keys, custody is then required (`--kms-root`, TOML `kms-root`).
    #[serde(rename = "kms-root")]
    pub kms_roots: Vec<String>,
    /// Encrypt only to this E2EE key id (`--key-id`, TOML `key-id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Prefer the X25519 key over secp256k1 (`--prefer-x25519`, TOML `prefer-x25519`).
    pub prefer_x25519: bool,
    /// Accepted TCB statuses, default `UpToDate` (`--tcb-status`, TOML `tcb-status`).
    #[serde(rename = "tcb-status")]
    pub tcb_statuses: Vec<String>,
    /// Allowed KMS identities, the `id` of the `key-provider` event (`--kms-identity`, TOML
    /// `kms-identity`).
    #[serde(rename = "kms-identity")]
    pub kms_identities: Vec<String>,
    /// Require a reviewed dstack production OS image (`--require-production-os`, TOML
    /// `require-production-os`).
    pub require_production_os: bool,
    /// Intel advisory ids (`INTEL-SA-…`) the platform's TCB level must not be affected by
    /// (`--refuse-advisory`, TOML `refuse-advisory`).
    #[serde(rename = "refuse-advisory")]
    pub refused_advisories: Vec<String>,
    /// Allowed boot measurement sets, MRTD and RTMR0–2 (`--boot-measurements`, TOML
    /// `[[pins.boot-measurements]]` tables). Last, since TOML writes tables after values.
    pub boot_measurements: Vec<BootMeasurementPin>,
}

impl PolicyPins {
    /// Allow one more compose hash (`--compose-hash`).
    pub fn compose_hash(mut self, hash: impl Into<String>) -> Self {
        self.compose_hashes.push(hash.into());
        self
    }

    /// Allow one more dstack app id (`--app-id`).
    pub fn app_id(mut self, id: impl Into<String>) -> Self {
        self.app_ids.push(id.into());
        self
    }

    /// Allow one more OS image hash (`--os-image-hash`).
    pub fn os_image_hash(mut self, hash: impl Into<String>) -> Self {
        self.os_image_hashes.push(hash.into());
        self
    }

    /// Accept one more KMS root key; custody is then required (`--kms-root`).
    pub fn kms_root(mut self, root: impl Into<String>) -> Self {
        self.kms_roots.push(root.into());
        self
    }

    /// Encrypt only to this E2EE key id (`--key-id`).
    pub fn key_id(mut self, id: impl Into<String>) -> Self {
        self.key_id = Some(id.into());
        self
    }

    /// Prefer the X25519 key over secp256k1 (`--prefer-x25519`).
    pub fn prefer_x25519(mut self, prefer: bool) -> Self {
        self.prefer_x25519 = prefer;
        self
    }

    /// Accept one more TCB status (`--tcb-status`; default `UpToDate` when none is given).
    pub fn tcb_status(mut self, status: impl Into<String>) -> Self {
        self.tcb_statuses.push(status.into());
        self
    }

    /// Allow one more KMS identity, the `id` of the `key-provider` event (`--kms-identity`).
    pub fn kms_identity(mut self, id: impl Into<String>) -> Self {
        self.kms_identities.push(id.into());
        self
    }

    /// Require a reviewed dstack production OS image (`--require-production-os`).
    pub fn require_production_os(mut self, require: bool) -> Self {
        self.require_production_os = require;
        self
    }

    /// Refuse a platform whose TCB level this Intel advisory (`INTEL-SA-…`) affects (`--refuse-advisory`).
    pub fn refuse_advisory(mut self, id: impl Into<String>) -> Self {
        self.refused_advisories.push(id.into());
        self
    }

    /// Allow one more set of boot measurements, MRTD and RTMR0–2 (`--boot-measurements`).
    pub fn boot_measurements(mut self, set: BootMeasurementPin) -> Self {
        self.boot_measurements.push(set);
        self
    }

    /// Whether no workload is pinned (an OS image hash alone pins only the OS).
    pub fn is_empty(&self) -> bool {
        self.compose_hashes.is_empty() && self.app_ids.is_empty()
    }

    /// Apply the pins to a policy builder.
    pub fn apply(&self, mut b: PolicyBuilder) -> PolicyBuilder {
        for h in &self.compose_hashes {
            b = b.allow_compose_hash(h);
        }
        for id in &self.app_ids {
            b = b.allow_app_id(id);
        }
        for h in &self.os_image_hashes {
            b = b.allow_os_image_hash(h);
        }
        for root in &self.kms_roots {
            b = b.accept_kms_root(root);
        }
        if !self.kms_roots.is_empty() {
            b = b.require_key_custody();
        }
        if let Some(id) = &self.key_id {
            b = b.pin_key_id(id.clone());
        }
        if self.prefer_x25519 {
            b = b.prefer_x25519();
        }
        if !self.tcb_statuses.is_empty() {
            b = b.accept_tcb_statuses(self.tcb_statuses.clone());
        }
        for m in &self.boot_measurements {
            b = b.allow_boot_measurements(&m.mrtd, &m.rtmr0, &m.rtmr1, &m.rtmr2);
        }
        for id in &self.kms_identities {
            b = b.allow_kms_identity(id);
        }
        if self.require_production_os {
            b = b.require_production_os();
        }
        if !self.refused_advisories.is_empty() {
            b = b.refuse_advisories(self.refused_advisories.iter().cloned());
        }
        b
    }

    /// The pins as a JSON object, for `GET /aci/status`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "compose_hashes": self.compose_hashes,
            "app_ids": self.app_ids,
            "os_image_hashes": self.os_image_hashes,
            "kms_roots": self.kms_roots,
            "key_id": self.key_id,
            "prefer_x25519": self.prefer_x25519,
            "tcb_statuses": self.tcb_statuses,
            "boot_measurements": self.boot_measurements.iter().map(|m| serde_json::json!({
                "mrtd": m.mrtd, "rtmr0": m.rtmr0, "rtmr1": m.rtmr1, "rtmr2": m.rtmr2,
            })).collect::<Vec<_>>(),
            "refused_advisories": self.refused_advisories,
            "kms_identities": self.kms_identities,
            "require_production_os": self.require_production_os,
        })
    }
}

/// The unpinned-policy error, in the CLI's terms (the builder's own message names its methods).
const UNPINNED_CLI: &str = "no workload is pinned: any code running in a TEE could read the prompts.
  fix: see what the gateway runs and what to pin: aci-proxy inspect GATEWAY-URL
  fix: pin the code: --compose-hash HEX
  fix: with the boot chain and the KMS: --boot-measurements MRTD,RTMR0,RTMR1,RTMR2 --kms-identity HEX
  fix: optionally beside them: --app-id HEX --kms-root HEX --require-production-os
  fix: or, for a trial only, trust any workload: --any-workload";

/// Why the pins are not enough, in the CLI's terms, after the line that says what to add.
const INSUFFICIENT_CLI: &str = "
  why: only the compose hash, boot measurements and KMS identity together cover every key the proxy uses
  why: a KMS root covers only the secp256k1 E2EE key, not the TLS and receipt keys that authenticate answers
  why: an app id is a label its owner authorises, not the code; --app-id and --kms-root only add checks
  fix: aci-proxy inspect GATEWAY-URL prints every value (--write-config writes them)";

/// What to do about a rejected pin value.
const PIN_FIXES: &str = "  fix: give each pin as the hex aci-proxy inspect prints (--compose-hash, --boot-measurements, \
--kms-identity, --app-id, --kms-root, --tcb-status)";

/// The proxy's configuration.
///
/// # The configuration file
///
/// `aci-proxy serve --config FILE` reads a TOML file that **spells every key like its flag**, without
/// the `--`: `--compose-hash` is `compose-hash`, `--api-key-env` is `api-key-env`. A flag that
/// may be repeated keeps its singular name and takes an array (`compose-hash = ["…"]`,
/// `allow-origin = ["…"]`). The attestation pins (`--compose-hash`, `--boot-measurements`,
/// `--kms-identity`, `--app-id`, `--kms-root`, `--os-image-hash`, `--require-production-os`,
/// `--refuse-advisory`, `--tcb-status`, `--key-id`, `--prefer-x25519`) sit in the `[pins]`
/// table, each set of boot measurements in a `[[pins.boot-measurements]]` table with `mrtd`,
/// `rtmr0`, `rtmr1` and `rtmr2`; every other key sits at the top. Durations are whole seconds.
/// [`to_toml`](Self::to_toml) writes this format (`aci-proxy config` prints it) and
/// [`from_toml`](Self::from_toml) reads it back to the same configuration; a key spelt
/// otherwise (an older name, `_` for `-`, a pin outside `[pins]`) is refused with a message
/// naming the key to use.
///
/// The pins below are the real June 2026 capture's (`tests/data/real_tdx_report_2026-06.json`),
/// as `aci-proxy inspect --write-config` writes them:
///
/// ```
/// use aci_proxy::{ProxyConfig, ReceiptMode};
/// let config = ProxyConfig::from_toml(r#"
///     gateway = "https://api.redpill.ai"
///     listen = "127.0.0.1:8787"
///     receipts = "before-release"
///     audit-file = "receipts.jsonl"
///     [pins]
///     compose-hash = ["5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb"]
///     kms-identity = ["3059301306072a8648ce3d020106082a8648ce3d030107034200048844eb42ccdf8c52fd4f174f362fcb9bbd19c45fd48f1edec2d8f1ca23536ec1a74021b4cee610c074f8294d431b2b7fee2c39e5333fdaf0a4522d43fb159d9f"]
///     app-id = ["fdb7a14e5a6675f752e2cb69c9067a98ca402918"]
///     kms-root = ["0334c76e0c3f52ec64cbf9bbf5c910c272330166fd656c0a86bb330963e46910e1"]
///     refuse-advisory = ["INTEL-SA-00837"]
///     [[pins.boot-measurements]]
///     mrtd = "f06dfda6dce1cf904d4e2bab1dc370634cf95cefa2ceb2de2eee127c9382698090d7a4a13e14c536ec6c9c3c8fa87077"
///     rtmr0 = "ec216f1d1d591468ff4741b9b192f016b26d3f90303bfa9dbb97557273853183981f21a4bcb3ae908247538d371ad072"
///     rtmr1 = "07e6f51aa763abfe75c3ddfbf4f425fe3f0ceff66d807a75e049303dce9addf68e7218729bd419638af63a370f65878c"
///     rtmr2 = "a2a58c9a959a4fa44bd6da0c97a2270c051faf12084cfe91ae900e4fdff6cdd4f69a82005e04ee920f231497894d677f"
/// "#).unwrap();
/// assert_eq!(config.receipts, ReceiptMode::BeforeRelease);
/// assert_eq!(config.pins.compose_hashes.len(), 1);
/// let policy = config.policy().unwrap();
/// assert!(policy.pins_measured_workload() && policy.requires_key_custody());
/// assert_eq!(policy.allowed_boot_measurements().len(), 1);
///
/// // A KMS root is no anchor on its own: the error says what to add.
/// let config = ProxyConfig::from_toml(r#"
///     [pins]
///     app-id = ["fdb7a14e5a6675f752e2cb69c9067a98ca402918"]
///     kms-root = ["0334c76e0c3f52ec64cbf9bbf5c910c272330166fd656c0a86bb330963e46910e1"]
/// "#).unwrap();
/// assert!(config.policy().unwrap_err().to_string().starts_with("add --compose-hash HEX"));
///
/// // Keys are spelt like the flags: an older spelling is refused, naming the key to use.
/// let e = ProxyConfig::from_toml("[pins]\ncompose_hashes = [\"5092ebbd\"]").unwrap_err();
/// assert!(e.to_string().contains("`compose_hashes` is spelt `compose-hash`"), "{e}");
///
/// // What `to_toml` writes, `from_toml` reads back to the same configuration.
/// assert_eq!(ProxyConfig::from_toml(&config.to_toml().unwrap()).unwrap().to_toml().unwrap(), config.to_toml().unwrap());
/// ```
///
/// # In code
///
/// Start from [`ProxyConfig::default`] and set what differs with the setters, named like the
/// flags (each takes and returns the configuration by value; a repeatable flag's setter adds one
/// value); the fields stay public to read and to change in place. Settings may be added in any
/// release, so the struct is `#[non_exhaustive]`: build it this way, never as a struct literal.
///
/// ```
/// use std::time::Duration;
/// use aci_proxy::{PolicyPins, ProxyConfig, ReceiptMode};
/// let config = ProxyConfig::default()
///     .gateway("https://api.redpill.ai")
///     .listen("127.0.0.1:8787".parse().unwrap())
///     .receipts(ReceiptMode::BeforeRelease)
///     .audit_file("receipts.jsonl")
///     .request_timeout(Duration::from_secs(120))
///     .pins(PolicyPins::default().compose_hash("5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb"));
/// assert!(config.to_toml().unwrap().contains("request-timeout = 120"));
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
#[non_exhaustive]
pub struct ProxyConfig {
    /// The gateway's base URL (`https://…`, or `http://…` on loopback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Where the proxy listens (default `127.0.0.1:8787`). Requests must name it (or a loopback
    /// name) in `Host`; a non-loopback address needs [`client_key_env`](Self::client_key_env).
    pub listen: SocketAddr,
    /// The environment variable holding the API key forwarded as the bearer token (default
    /// `ACI_API_KEY`; TOML `api-key-env`). When it is unset, the client's own `Authorization`
    /// header is forwarded (unless clients authenticate with a client key, which is never
    /// forwarded); [`Proxy::start`](super::Proxy::start) says which at start. The key goes only
    /// to the inference routes, `/v1/models` and `/v1/aci/receipts/…`, over the attested channel.
    pub api_key_env: String,
    /// The environment variable holding the key clients must send as `Authorization: Bearer …`
    /// (TOML `client-key-env`; at least 16 characters). Required to listen on a non-loopback
    /// address; on loopback it guards the proxy on a shared machine. When set it is checked on
    /// every route of [`listen`](Self::listen), the probes and `/metrics` included (those are
    /// served without it on [`ops_listen`](Self::ops_listen)). With it, the upstream API key
    /// comes only from [`api_key_env`](Self::api_key_env).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_env: Option<String>,
    /// Refuse to start unless a client key is configured (TOML `require-client-key`), on
    /// loopback too: a missing `client_key_env` then fails the start instead of serving every
    /// local user and process.
    pub require_client_key: bool,
    /// A second listen address serving only `GET /healthz`, `/readyz` and `/metrics`, without
    /// the client key, for a supervisor or Prometheus (TOML `ops-listen`). Requests must name it
    /// (or a loopback name) in `Host` and carry no `Origin`. A non-loopback address needs
    /// [`ops_listen_beyond_loopback`](Self::ops_listen_beyond_loopback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_listen: Option<SocketAddr>,
    /// Acknowledge that [`ops_listen`](Self::ops_listen) is not a loopback address (TOML
    /// `ops-listen-beyond-loopback`): the probes and metrics (keyset digest and expiry, counts,
    /// latencies; never a prompt, answer or key) then answer whoever can reach that address.
    pub ops_listen_beyond_loopback: bool,
    /// Browser origins allowed to call the proxy, exact `scheme://host[:port]` (`--allow-origin`,
    /// TOML `allow-origin`). A request carrying any other `Origin` is refused.
    #[serde(rename = "allow-origin")]
    pub allow_origins: Vec<String>,
    /// What to do with receipts (default `verify`).
    pub receipts: ReceiptMode,
    /// Where verified receipts are appended (JSON lines), if anywhere (TOML `audit-file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_file: Option<PathBuf>,
    /// Start the crate's local test gateway in-process and proxy to it (offline demo; its stub
    /// quote is accepted under a `dangerous()` policy).
    pub local_test_gateway: bool,
    /// Dangerous: accept any workload (no pin). Never for production.
    pub any_workload: bool,
    /// Largest request body accepted from a client (default 32 MiB, the gateway's own limit).
    pub max_request_body: usize,
    /// HTTPS gateways: trust only the attested keyset's TLS keys, without WebPKI (for gateways
    /// with self-signed certificates). By default the certificate must also chain to a root of
    /// Mozilla's store (`webpki-roots`).
    pub tls_pin_only: bool,
    /// The PCCS to fetch the TDX quote's collateral from (default, for an `https://` gateway,
    /// the client's [`DEFAULT_PCCS`](tower_aci::client::DEFAULT_PCCS), `https://pccs.phala.network`);
    /// verified with WebPKI, not pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pccs: Option<String>,
    /// A CA certificate file (PEM, one or more certificates) the PCCS connection accepts besides
    /// Mozilla's roots (TOML `pccs-ca`, flag `--pccs-ca`): for a network whose egress proxy
    /// inspects TLS and re-signs with its own CA. The gateway's connection never accepts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pccs_ca: Option<PathBuf>,
    /// Connect to the gateway and the PCCS through this HTTP proxy, `http://[user:password@]host[:port]`
    /// (TOML `https-proxy`, flag `--https-proxy`): a `CONNECT` tunnel per connection, TLS and
    /// its pin end to end inside it. When unset, `HTTPS_PROXY` (else `https_proxy`) and
    /// `NO_PROXY` are read from the environment, as curl does. Its credentials are never
    /// printed; keep them out of a world-readable file (`ACI_PROXY_HTTPS_PROXY` or `HTTPS_PROXY`
    /// in the root-only environment file instead).
    #[serde(
        deserialize_with = "https_proxy",
        serialize_with = "write_https_proxy",
        skip_serializing_if = "Option::is_none"
    )]
    pub https_proxy: Option<HttpsProxy>,
    /// Longest time one exchange may take, from the request to the answer's last byte (default
    /// 600 s; seconds in the file). A buffered answer then fails with 504, a stream ends with
    /// an error event.
    #[serde(deserialize_with = "seconds", serialize_with = "write_seconds")]
    pub request_timeout: Duration,
    /// On shutdown, how long open streams may drain before they are ended with an error event
    /// (default 30 s; seconds in the file). Pending receipt checks get as long again.
    #[serde(deserialize_with = "seconds", serialize_with = "write_seconds")]
    pub shutdown_timeout: Duration,
    /// Serve `GET /metrics` in the Prometheus text format (default true), from the process-wide
    /// recorder [`install_metrics_recorder`](super::install_metrics_recorder) installs.
    /// [`Proxy::start`](super::Proxy::start) installs none itself (a library must not take the
    /// process's one recorder): without that call `/metrics` answers `404 metrics_off`. The
    /// `aci-proxy` binary calls it when this is on.
    pub metrics: bool,
    /// How the `aci-proxy` binary writes its log (default `text`).
    pub log_format: LogFormat,
    /// Accept a receipt only when the keyset it names was itself attested
    /// ([`ReceiptPolicy::require_exact_keyset`](tower_aci::receipt::ReceiptPolicy::require_exact_keyset)),
    /// never on the same-key rule; `verify-receipts` applies it too.
    pub require_exact_keyset: bool,
    /// The environment variable holding this proxy's prompt-cache salt (`--cache-salt-env`,
    /// TOML `cache-salt-env`; the value itself is never written to the file, like the API key).
    /// When set, every chat completion and completion the proxy forwards carries a `cache_salt`
    /// derived from this secret and from the client's own `cache_salt`, if it sent one, so
    /// that prefix caches such as vLLM's never serve one tenant's cached prompts to another.
    /// The value on the wire is the lowercase hex of HMAC-SHA256 keyed with the secret, over
    /// `aci-proxy cache_salt v1`, then, when the client sent a non-empty `cache_salt`, a zero
    /// byte and the client's value: a client cannot choose the value another tenant's proxy
    /// sends, nor learn this secret, yet its own salts still partition within this proxy's
    /// share. Embeddings are left alone. The variable must hold at least 16 characters (e.g.
    /// `openssl rand -hex 32`); unset or shorter fails the start. Without it, a client's own
    /// `cache_salt` passes unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_salt_env: Option<String>,
    /// The policy's workload pins (the `[pins]` table).
    pub pins: PolicyPins,
    /// A policy built in code, used instead of the pins (for embedding the proxy, and tests).
    #[serde(skip)]
    pub policy: Option<Policy>,
    /// The local test gateway paces its stream events this far apart (demos and tests of
    /// streams in flight).
    #[doc(hidden)]
    #[serde(skip)]
    pub local_test_gateway_event_delay: Option<Duration>,
    /// The local test gateway serves HTTPS with the certificate and key in this PEM file (tests
    /// of the proxy's TLS egress).
    #[doc(hidden)]
    #[serde(skip)]
    pub local_test_gateway_tls: Option<PathBuf>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            gateway: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            api_key_env: "ACI_API_KEY".to_owned(),
            client_key_env: None,
            require_client_key: false,
            ops_listen: None,
            ops_listen_beyond_loopback: false,
            allow_origins: Vec::new(),
            receipts: ReceiptMode::Background,
            audit_file: None,
            pins: PolicyPins::default(),
            local_test_gateway: false,
            any_workload: false,
            max_request_body: tower_aci::e2ee::DEFAULT_MAX_REQUEST_BODY,
            tls_pin_only: false,
            pccs: None,
            pccs_ca: None,
            https_proxy: None,
            request_timeout: Duration::from_secs(600),
            shutdown_timeout: Duration::from_secs(30),
            metrics: true,
            log_format: LogFormat::Text,
            require_exact_keyset: false,
            cache_salt_env: None,
            policy: None,
            local_test_gateway_event_delay: None,
            local_test_gateway_tls: None,
        }
    }
}

impl ProxyConfig {
    /// The gateway's base URL (`--gateway`).
    pub fn gateway(mut self, url: impl Into<String>) -> Self {
        self.gateway = Some(url.into());
        self
    }

    /// Where the proxy listens (`--listen`).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// The environment variable holding the API key (`--api-key-env`).
    pub fn api_key_env(mut self, var: impl Into<String>) -> Self {
        self.api_key_env = var.into();
        self
    }

    /// The environment variable holding the key clients must send (`--client-key-env`).
    pub fn client_key_env(mut self, var: impl Into<String>) -> Self {
        self.client_key_env = Some(var.into());
        self
    }

    /// Refuse to start without a client key, on loopback too (`--require-client-key`).
    pub fn require_client_key(mut self, require: bool) -> Self {
        self.require_client_key = require;
        self
    }

    /// The operator listener for the probes and metrics (`--ops-listen`).
    pub fn ops_listen(mut self, addr: SocketAddr) -> Self {
        self.ops_listen = Some(addr);
        self
    }

    /// Acknowledge an operator listener beyond loopback (`--ops-listen-beyond-loopback`).
    pub fn ops_listen_beyond_loopback(mut self, acknowledge: bool) -> Self {
        self.ops_listen_beyond_loopback = acknowledge;
        self
    }

    /// Allow one more browser origin, exact `scheme://host[:port]` (`--allow-origin`).
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.allow_origins.push(origin.into());
        self
    }

    /// What to do with receipts (`--receipts`).
    pub fn receipts(mut self, mode: ReceiptMode) -> Self {
        self.receipts = mode;
        self
    }

    /// Where verified receipts are appended (`--audit-file`).
    pub fn audit_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.audit_file = Some(path.into());
        self
    }

    /// Start the local test gateway in-process and proxy to it (`--local-test-gateway`; feature `local-test-gateway`).
    pub fn local_test_gateway(mut self, on: bool) -> Self {
        self.local_test_gateway = on;
        self
    }

    /// Dangerous: accept any workload (`--any-workload`). Never for production.
    pub fn any_workload(mut self, on: bool) -> Self {
        self.any_workload = on;
        self
    }

    /// The largest request body accepted, in bytes (`--max-request-body`).
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.max_request_body = bytes;
        self
    }

    /// Trust the gateway's attested TLS key alone, no web PKI (`--tls-pin-only`).
    pub fn tls_pin_only(mut self, on: bool) -> Self {
        self.tls_pin_only = on;
        self
    }

    /// Where the TDX collateral comes from (`--pccs`).
    pub fn pccs(mut self, url: impl Into<String>) -> Self {
        self.pccs = Some(url.into());
        self
    }

    /// A PEM file of extra CA certificates for the PCCS (`--pccs-ca`).
    pub fn pccs_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.pccs_ca = Some(path.into());
        self
    }

    /// Go out through this HTTP proxy (`--https-proxy`).
    pub fn https_proxy(mut self, proxy: HttpsProxy) -> Self {
        self.https_proxy = Some(proxy);
        self
    }

    /// The longest time one exchange may take (`--request-timeout`).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long open streams may drain on shutdown (`--shutdown-timeout`).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Serve `GET /metrics` (`--metrics`).
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// How the `aci-proxy` binary writes its log (`--log-format`).
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.log_format = format;
        self
    }

    /// Accept a receipt only when the keyset it names was itself attested (`--require-exact-keyset`).
    pub fn require_exact_keyset(mut self, require: bool) -> Self {
        self.require_exact_keyset = require;
        self
    }

    /// The environment variable holding this proxy's prompt-cache salt (`--cache-salt-env`).
    pub fn cache_salt_env(mut self, var: impl Into<String>) -> Self {
        self.cache_salt_env = Some(var.into());
        self
    }

    /// The policy's workload pins (the `[pins]` table).
    pub fn pins(mut self, pins: PolicyPins) -> Self {
        self.pins = pins;
        self
    }

    /// A policy built in code, used instead of the [`pins`](Self::pins) (for embedding the proxy, and tests; a TOML file cannot hold it). Named `with_policy` since [`policy`](Self::policy) builds the policy the settings describe.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Parse a TOML configuration file's text (see [the format](Self#the-configuration-file)).
    /// A key spelt otherwise than its flag (an older name such as `compose_hashes`, `_` for `-`)
    /// or in the wrong table fails with a [`Config`](tower_aci::ErrorKind::Config) error naming the key to
    /// use.
    pub fn from_toml(text: &str) -> Result<ProxyConfig> {
        // The snippet toml quotes would repeat a proxy URL's credentials: then the message and
        // the line only.
        let invalid = |e: &toml::de::Error| {
            let span = e.span().unwrap_or(0..0);
            let shown = match text.get(span.clone()) {
                Some(quoted) if quoted.contains('@') => {
                    let line = text[..span.start].matches('\n').count() + 1;
                    format!("{} (line {line})", e.message().trim_end())
                }
                _ => e.to_string().trim_end().to_owned(),
            };
            Error::config(format!("invalid proxy configuration: {shown}"))
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| invalid(&e))?;
        keys::check::<ProxyConfig, PolicyPins>(&table, text)
            .map_err(|e| Error::config(format!("invalid proxy configuration: {}", e.trim_end())))?;
        toml::from_str(text).map_err(|e| invalid(&e))
    }

    /// The certificates of [`pccs_ca`](Self::pccs_ca) (none when unset). Fails with `Config`
    /// when the file cannot be read or holds no PEM certificate.
    pub fn pccs_extra_roots(&self) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
        use rustls::pki_types::pem::PemObject;
        let Some(path) = &self.pccs_ca else { return Ok(Vec::new()) };
        let unreadable = |e: &dyn std::fmt::Display| {
            Error::config(format!("--pccs-ca {}: {e} (a PEM file of CA certificates)", path.display()))
        };
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| unreadable(&e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| unreadable(&e))?;
        if certs.is_empty() {
            return Err(unreadable(&"no CERTIFICATE block"));
        }
        Ok(certs)
    }

    /// The configuration as a TOML file that [`from_toml`](Self::from_toml) reads back to the
    /// same configuration (`aci-proxy config` prints it). Secrets are never in it: the API key,
    /// the client key and the cache salt are named by their environment variables. Fails with
    /// a [`Config`](tower_aci::ErrorKind::Config) error for what a file cannot hold: a
    /// [`policy`](Self::policy) built in code, a duration with a fraction of a second, a path
    /// that is not UTF-8.
    ///
    /// ```
    /// use aci_proxy::ProxyConfig;
    /// let mut config = ProxyConfig::default();
    /// config.gateway = Some("https://api.redpill.ai".into());
    /// config.pins.compose_hashes.push("5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb".into());
    /// let text = config.to_toml().unwrap();
    /// assert!(text.contains("compose-hash = [\"5092ebbd"), "{text}");
    /// assert!(text.contains("api-key-env = \"ACI_API_KEY\""), "{text}");
    /// assert_eq!(ProxyConfig::from_toml(&text).unwrap().to_toml().unwrap(), text);
    /// ```
    pub fn to_toml(&self) -> Result<String> {
        if self.policy.is_some() {
            return Err(Error::config(
                "this configuration holds a policy built in code, which a TOML file cannot hold; give the pins \
                 instead (ProxyConfig::pins)",
            ));
        }
        toml::to_string(self).map_err(|e| Error::config(format!("cannot write the configuration as TOML: {e}")))
    }

    /// The receipt policy these settings describe.
    pub fn receipt_policy(&self) -> tower_aci::receipt::ReceiptPolicy {
        tower_aci::receipt::ReceiptPolicy::new().require_exact_keyset(self.require_exact_keyset)
    }

    /// The attestation policy these settings describe. Fails with a clear `Config` error when
    /// no workload is pinned, or the pins are not the sound combination (compose hash, boot
    /// measurements, KMS identity; unless `any_workload`, or the local test gateway), written for
    /// a person at a terminal: what to add first, then why and how, in `aci-proxy`'s flags.
    pub fn policy(&self) -> Result<Policy> {
        if let Some(p) = &self.policy {
            return Ok(p.clone());
        }
        let builder = self.pins.apply(Policy::builder());
        let invalid = |e: Error| Error::config(format!("{}\n{}", e, PIN_FIXES.lines().next().unwrap_or_default()));
        if self.local_test_gateway {
            return builder.dangerous().accept_stub_quote().any_workload().build().map_err(invalid);
        }
        if self.any_workload {
            return builder.dangerous().any_workload().build().map_err(invalid);
        }
        if self.pins.is_empty() {
            return Err(Error::config(UNPINNED_CLI));
        }
        let missing: Vec<&str> = [
            (self.pins.compose_hashes.is_empty(), "--compose-hash HEX"),
            (self.pins.boot_measurements.is_empty(), "--boot-measurements MRTD,RTMR0,RTMR1,RTMR2"),
            (self.pins.kms_identities.is_empty(), "--kms-identity HEX"),
        ]
        .into_iter()
        .filter_map(|(missing, flag)| missing.then_some(flag))
        .collect();
        if !missing.is_empty() {
            return Err(Error::config(format!(
                "add {}: the pins do not cover every key{INSUFFICIENT_CLI}",
                missing.join(" ")
            )));
        }
        builder.build().map_err(invalid)
    }
}

#[cfg(test)]
mod pin_tests {
    use super::*;
    use tower_aci::ErrorKind;

    const APP_ID: &str = "fdb7a14e5a6675f752e2cb69c9067a98ca402918";

    fn boot(mrtd: &str) -> String {
        format!("{mrtd},{r},{r},{r}", r = "22".repeat(48))
    }

    #[test]
    fn an_insufficient_pin_names_the_flags_to_add() {
        let config = ProxyConfig::from_toml(&format!("[pins]\napp-id = [\"{APP_ID}\"]")).unwrap();
        let e = config.policy().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().starts_with("add --compose-hash HEX --boot-measurements"), "{e}");
        for hint in ["--kms-identity", "aci-proxy inspect"] {
            assert!(e.to_string().contains(hint), "{hint} missing: {e}");
        }
        // An OS image alone is not a pin.
        let config = ProxyConfig::from_toml("[pins]\nos-image-hash = [\"de9c74f0\"]\nkms-root = [\"0334c76e0c3f52ec64cbf9bbf5c910c272330166fd656c0a86bb330963e46910e1\"]").unwrap();
        assert!(config.pins.is_empty());
        assert_eq!(config.policy().unwrap_err().kind(), ErrorKind::Config);
    }

    #[test]
    fn boot_measurements_and_refused_advisories_reach_the_policy() {
        let mut config = ProxyConfig::default();
        config.pins.app_ids.push(APP_ID.to_owned());
        config.pins.compose_hashes.push("ab".repeat(32));
        config.pins.kms_identities.push("3059".to_owned());
        config.pins.boot_measurements.push(boot(&"11".repeat(48)).parse().unwrap());
        config.pins.refused_advisories.push("INTEL-SA-00837".to_owned());
        let policy = config.policy().unwrap();
        assert!(policy.anchors_pin() && !policy.is_dangerous());
        assert_eq!(policy.allowed_boot_measurements()[0].mrtd(), &[0x11; 48]);
        assert_eq!(policy.refused_advisories(), ["INTEL-SA-00837"]);
        let status = config.pins.to_json();
        assert_eq!(status["boot_measurements"][0]["mrtd"], "11".repeat(48));
        assert_eq!(status["refused_advisories"][0], "INTEL-SA-00837");
        assert_eq!(status["kms_identities"][0], "3059");
        // Without the KMS identity the pins are not enough, and the message says what to add.
        let mut partial = config.clone();
        partial.pins.kms_identities.clear();
        assert!(partial.policy().unwrap_err().to_string().starts_with("add --kms-identity HEX: the pins"));
        // A malformed set is refused when the policy is built, naming the register.
        config.pins.boot_measurements.push(boot("11").parse().unwrap());
        assert!(config.policy().unwrap_err().to_string().contains("boot measurement MRTD"));
        // Not four values.
        assert!("aa,bb,cc".parse::<BootMeasurementPin>().is_err());
        // TOML: unknown keys in a set are refused.
        let toml =
            "[[pins.boot-measurements]]\nmrtd = \"aa\"\nrtmr0 = \"aa\"\nrtmr1 = \"aa\"\nrtmr2 = \"aa\"\nrtmr3 = \"aa\"";
        assert!(ProxyConfig::from_toml(toml).is_err());
    }
}

#[cfg(test)]
mod egress_tests {
    use super::*;
    use tower_aci::ErrorKind;

    #[test]
    fn the_https_proxy_and_pccs_ca_keys_are_read_and_credentials_never_shown() {
        let config = ProxyConfig::from_toml(
            "https-proxy = \"http://ops:hunter2@proxy.corp:3128\"\npccs-ca = \"/etc/aci-proxy/appliance-ca.pem\"",
        )
        .unwrap();
        let proxy = config.https_proxy.as_ref().unwrap();
        assert_eq!((proxy.authority(), proxy.has_credentials()), ("proxy.corp:3128", true));
        assert_eq!(config.pccs_ca.as_deref(), Some(std::path::Path::new("/etc/aci-proxy/appliance-ca.pem")));
        assert!(!format!("{config:?}").contains("hunter2"));
        let printed = config.to_toml().unwrap();
        assert!(
            printed.contains("https-proxy = \"http://proxy.corp:3128\"") && !printed.contains("hunter2"),
            "{printed}"
        );
        let e = ProxyConfig::from_toml("https-proxy = \"socks5://ops:hunter2@proxy:1080\"").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("http://host:port") && e.to_string().contains("line 1"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // Other errors keep toml's snippet.
        let e = ProxyConfig::from_toml("listen = \"nowhere\"").unwrap_err();
        assert!(e.to_string().contains("listen = \"nowhere\""), "{e}");
    }
}
