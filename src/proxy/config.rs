//! What the proxy is told: the gateway, where to listen, the policy's pins, what to do with
//! receipts. Read from flags and an optional TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::attest::{Policy, PolicyBuilder};
use crate::error::{Error, ErrorKind, Result};

/// What the proxy does with receipts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiptMode {
    /// Receipts are not fetched.
    Off,
    /// Each receipt is fetched and verified in the background after its exchange ended (the
    /// answer is released at once); failures are counted and logged.
    #[default]
    Verify,
    /// Buffered answers are held until their receipt verified; a stream's events are released
    /// as they authenticate but its terminal `[DONE]` is held until the receipt verified, and a
    /// failed receipt ends the stream with an error event instead.
    BeforeRelease,
}

impl std::str::FromStr for ReceiptMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(ReceiptMode::Off),
            "verify" => Ok(ReceiptMode::Verify),
            "before-release" => Ok(ReceiptMode::BeforeRelease),
            _ => {
                Err(Error::new(ErrorKind::Config, format!("unknown receipt mode {s:?} (off, verify, before-release)")))
            }
        }
    }
}

/// The workload pins of the attestation policy, as the proxy's flags and config file give them.
///
/// Every value is hex, as the report and its event log spell it: the compose hash is SHA-256 of
/// the report's `app_compose` (the `compose-hash` event of the event log), the app id is the
/// payload of the `app-id` event (and the keyset subject `app-id:0x…`), the OS image hash the
/// payload of `os-image-hash`, the KMS root the compressed secp256k1 key at the end of the
/// `key_custody` chains.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyPins {
    /// Allowed compose hashes.
    pub compose_hashes: Vec<String>,
    /// Allowed dstack app ids.
    pub app_ids: Vec<String>,
    /// Allowed OS image hashes.
    pub os_image_hashes: Vec<String>,
    /// Accepted KMS root keys (custody is then required).
    pub kms_roots: Vec<String>,
    /// Encrypt only to this E2EE key id.
    pub key_id: Option<String>,
    /// Prefer the X25519 key over secp256k1.
    pub prefer_x25519: bool,
    /// Accepted TCB statuses (default `UpToDate`).
    pub tcb_statuses: Vec<String>,
}

impl PolicyPins {
    /// Whether no workload identity is pinned.
    pub fn is_empty(&self) -> bool {
        self.compose_hashes.is_empty() && self.app_ids.is_empty() && self.os_image_hashes.is_empty()
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
        })
    }
}

/// The proxy's configuration.
///
/// ```
/// use tower_aci::proxy::{ProxyConfig, ReceiptMode};
/// let config = ProxyConfig::from_toml(r#"
///     gateway = "https://api.redpill.ai"
///     listen = "127.0.0.1:8787"
///     receipts = "before-release"
///     audit_file = "receipts.jsonl"
///     [pins]
///     compose_hashes = ["5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb"]
/// "#).unwrap();
/// assert_eq!(config.receipts, ReceiptMode::BeforeRelease);
/// assert_eq!(config.pins.compose_hashes.len(), 1);
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// The gateway's base URL (`https://…`, or `http://…` on loopback).
    pub gateway: Option<String>,
    /// Where the proxy listens (default `127.0.0.1:8787`). Requests must name it (or a loopback
    /// name) in `Host`; a non-loopback address needs [`client_key_env`](Self::client_key_env).
    pub listen: SocketAddr,
    /// The environment variable holding the API key forwarded as the bearer token (default
    /// `ACI_API_KEY`). When it is unset, the client's own `Authorization` header is forwarded
    /// (unless clients authenticate with a client key, which is never forwarded). The key goes
    /// only to the inference routes, `/v1/models` and `/v1/aci/receipts/…`.
    pub api_key_env: String,
    /// The environment variable holding the key clients must send as `Authorization: Bearer …`
    /// (TOML `client_key_env`; at least 16 characters). Required to listen on a non-loopback
    /// address. With it, the upstream API key comes only from [`api_key_env`](Self::api_key_env).
    pub client_key_env: Option<String>,
    /// Browser origins allowed to call the proxy, exact `scheme://host[:port]` (TOML
    /// `allow_origins`). A request carrying any other `Origin` is refused.
    pub allow_origins: Vec<String>,
    /// What to do with receipts (default `verify`).
    pub receipts: ReceiptMode,
    /// Where verified receipts are appended (JSON lines), if anywhere.
    pub audit_file: Option<PathBuf>,
    /// The policy's workload pins.
    pub pins: PolicyPins,
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
    /// A PCCS to fetch the TDX quote's collateral from (feature `dcap`), e.g.
    /// `https://pccs.phala.network`; verified with WebPKI, not pinned.
    pub pccs: Option<String>,
    /// Accept a receipt only when the keyset it names was itself attested
    /// ([`ReceiptPolicy::require_exact_keyset`](crate::receipt::ReceiptPolicy::require_exact_keyset)),
    /// never on the same-key rule; `verify-receipts` applies it too.
    pub require_exact_keyset: bool,
    /// A policy built in code, used instead of the pins (for embedding the proxy, and tests).
    #[serde(skip)]
    pub policy: Option<Policy>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            gateway: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            api_key_env: "ACI_API_KEY".to_owned(),
            client_key_env: None,
            allow_origins: Vec::new(),
            receipts: ReceiptMode::Verify,
            audit_file: None,
            pins: PolicyPins::default(),
            local_test_gateway: false,
            any_workload: false,
            max_request_body: crate::e2ee::DEFAULT_MAX_REQUEST_BODY,
            tls_pin_only: false,
            pccs: None,
            require_exact_keyset: false,
            policy: None,
        }
    }
}

impl ProxyConfig {
    /// Parse a TOML configuration file's text.
    pub fn from_toml(text: &str) -> Result<ProxyConfig> {
        toml::from_str(text).map_err(|e| Error::new(ErrorKind::Config, format!("invalid proxy configuration: {e}")))
    }

    /// The receipt policy these settings describe.
    pub fn receipt_policy(&self) -> crate::receipt::ReceiptPolicy {
        crate::receipt::ReceiptPolicy::new().require_exact_keyset(self.require_exact_keyset)
    }

    /// The attestation policy these settings describe. Fails with a clear `Config` error when
    /// no workload is pinned (unless `any_workload`, or the local test gateway).
    pub fn policy(&self) -> Result<Policy> {
        if let Some(p) = &self.policy {
            return Ok(p.clone());
        }
        let builder = self.pins.apply(Policy::builder());
        if self.local_test_gateway {
            return builder.dangerous().accept_stub_quote().any_workload().build();
        }
        if self.any_workload {
            return builder.dangerous().any_workload().build();
        }
        builder.build().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "{e} (aci-proxy flags: --compose-hash, --app-id, --os-image-hash, --kms-root; or --any-workload, \
                     which trusts any code running in a TEE)"
                ),
            )
        })
    }
}
