//! [`Client`]: one attested client for an ACI gateway, built in a few lines (feature `rustls`,
//! in the default feature `client`).
//!
//! [`Client::builder`] takes the gateway's URL, what you trust about its workload (the pins, a
//! closure over the [`PolicyBuilder`], or a ready [`Policy`]) and your API key (or the name of the
//! environment variable holding it). [`build`](ClientBuilder::build) then attests the gateway
//! over HTTPS pinned to the attested keyset ([`AttestedTls`]), and keeps the key fresh in the
//! background for as long as the client or a service it handed out lives. It hands out:
//!
//! - [`Client::post`]: send a JSON body, get the decrypted [`Answer`] with its receipt's
//!   [`ReceiptVerdict`] (or a typed error);
//! - [`Client::service`]: a cloneable tower [`Service`](tower_service::Service) ([`AciService`])
//!   that stacks [`KeyMismatchRetry`] → [verify before release] → [`E2eeLayer`] → the pinned
//!   hyper client, for tower and hyper code;
//! - [`Client::reqwest`] (feature `reqwest-middleware`): a `ClientWithMiddleware` over the
//!   pinned rustls configuration, with [`E2eeMiddleware`](crate::middleware::E2eeMiddleware);
//! - [`Client::keys`] and [`Client::keyset`]: the [`KeyHandle`] and the verified keyset (whose
//!   [`report`](AttestedKeyset::report) is the exact report it was verified from).
//!
//! **One stack.** Every default and every refusal lives in [`ClientBuilder::build`]: the PCCS
//! ([`DEFAULT_PCCS`] for an `https://` gateway), plain `http://` only to loopback, an API key
//! that must be a valid header value, a PCCS that may not be the gateway's own host, no
//! redirect ever followed or handed out ([`REDIRECT_REFUSED`]), the API key only on the
//! gateway's API routes (never on the attestation endpoint). `aci-proxy` (its own crate) is this client behind an
//! OpenAI-compatible endpoint: its configuration becomes a [`ClientBuilder`] and it serves
//! through [`Client::service`].
//!
//! Behind an HTTP proxy, every connection (report, PCCS, requests, receipts) goes through a
//! `CONNECT` tunnel with TLS and its pin end to end inside: from `HTTPS_PROXY` / `NO_PROXY` by
//! default, or [`ClientBuilder::https_proxy`] (see [`crate::tls`]).
//!
//! Receipts are verified as [`ReceiptMode`] says: in the background once an answer was read
//! to its end (the default; the outcome is a [`ReceiptCheck`] you can await, in the
//! response's extensions and in [`Answer::receipt`], and every outcome is counted in
//! [`Client::receipt_stats`]), before the answer is released ([`VerifyBeforeReleaseLayer`]: a
//! buffered answer whole, a stream's `[DONE]`), before any byte of an answer, streams included,
//! is released ([`ReceiptMode::HoldUntilVerified`]), or not at all. [The `release` module's
//! table](crate::receipt::VerifyBeforeReleaseLayer) says exactly what each mode guarantees.
//!
//! The parts the client is built from ([`KeyProvider`], [`E2eeLayer`], [`ReceiptClient`],
//! [`AttestedTls`]) stay public for stacks of your own.
//!
//! [verify before release]: VerifyBeforeReleaseLayer

mod answer;
mod mode;
mod service;
mod transport;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use rustls::RootCertStore;
use tower::retry::RetryLayer;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use zeroize::Zeroizing;

pub use answer::{Answer, ReceiptVerdict};
pub use mode::ReceiptMode;
pub use service::{AciBody, AciFuture, AciService, ReceiptCheck, ReceiptStats, carries_api_key};
pub use transport::REDIRECT_REFUSED;

use crate::attest::{AttestedKeyset, Clock, KeyHandle, KeyProvider, Policy, PolicyBuilder};
use crate::e2ee::{E2eeLayer, KeyMismatchRetry, RequestBody};
use crate::error::{BoxError, Error, ErrorKind, Result};
use crate::protocol::GatewayError;
use crate::receipt::{
    ExchangeRecord, ReceiptClient, ReceiptPolicy, StreamVerification, VerifiedReceipt, VerifyBeforeReleaseLayer,
};
use crate::tls::{AttestedTls, HttpsProxy};
use service::{Plain, ServiceShared, Stack, Tracker, Verifier};
use transport::{Egress, Trust};

/// The PCCS quote collateral is fetched from by default (feature `dcap`) for an `https://`
/// gateway: the reference verifier's default. It serves Intel-signed collateral, checked
/// against Intel's root; trust does not rest on it. `aci-proxy` uses the same default.
pub const DEFAULT_PCCS: &str = "https://pccs.phala.network";

/// Largest error document read from a non-2xx answer by [`Client::post`].
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The verify-before-release layer of a receipt mode that has one.
fn before_release<R, RQ>(
    receipts: &ReceiptClient<R, RQ>,
    keys: &KeyHandle,
    policy: &ReceiptPolicy,
    mode: ReceiptMode,
) -> VerifyBeforeReleaseLayer<R, RQ>
where
    ReceiptClient<R, RQ>: Clone,
{
    let layer = VerifyBeforeReleaseLayer::new(receipts.clone(), keys.clone(), policy.clone());
    match mode {
        ReceiptMode::HoldUntilVerified => layer.hold_whole_stream(crate::receipt::fetch::DEFAULT_MAX_RELEASE_BODY),
        _ => layer,
    }
}

enum ApiKey {
    None,
    Value(Zeroizing<String>),
    Env(String),
}

/// Builds a [`Client`]. Made by [`Client::builder`]; methods take and return the builder by
/// value, and an invalid value surfaces from [`build`](Self::build).
#[must_use = "a builder does nothing until build() is awaited"]
pub struct ClientBuilder {
    url: String,
    policy: Option<Policy>,
    pins: Option<PolicyBuilder>,
    api_key: ApiKey,
    receipts: ReceiptMode,
    receipt_policy: ReceiptPolicy,
    trust: Trust,
    /// `None`: the default PCCS for an `https://` gateway; `Some(None)`: none.
    pccs: Option<Option<String>>,
    pccs_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    egress: Egress,
    strict: bool,
    clock: Option<Arc<dyn Clock>>,
    max_keyset_age: Option<Duration>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("policy", &self.policy)
            .field("api_key", &matches!(self.api_key, ApiKey::None).then_some("none").unwrap_or("[redacted]"))
            .field("receipts", &self.receipts)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Any pin or option of the attestation policy, as a closure over the [`PolicyBuilder`]
    /// the pin methods below fill in: everything [`Policy::builder`] can say (an OS image hash,
    /// accepted TCB statuses, refused advisories, a pinned key id, the current report generation
    /// only, offline collateral, …). Called in order with the other pins; a [`policy`](Self::policy)
    /// given as well makes [`build`](Self::build) fail.
    ///
    /// ```no_run
    /// # async fn run(compose: &str, [m, r0, r1, r2]: [&str; 4], kms: &str) -> tower_aci::Result<()> {
    /// let client = tower_aci::Client::builder("https://api.redpill.ai")
    ///     .allow_compose_hash(compose).allow_boot_measurements(m, r0, r1, r2).allow_kms_identity(kms)
    ///     .policy_with(|p| p.accept_tcb_statuses(["UpToDate", "SWHardeningNeeded"]).refuse_advisories(["INTEL-SA-00837"]))
    ///     .build().await?;
    /// # let _ = client; Ok(()) }
    /// ```
    pub fn policy_with(mut self, f: impl FnOnce(PolicyBuilder) -> PolicyBuilder) -> Self {
        self.pins = Some(f(self.pins.take().unwrap_or_else(Policy::builder)));
        self
    }

    /// Trust the workload whose compose hash (SHA-256 of the report's `app_compose`, hex) is
    /// this; see [`PolicyBuilder::allow_compose_hash`]. Several may be allowed.
    pub fn allow_compose_hash(self, hex_hash: &str) -> Self {
        self.policy_with(|p| p.allow_compose_hash(hex_hash))
    }

    /// Trust the dstack application with this app id (hex); see
    /// [`PolicyBuilder::allow_app_id`].
    pub fn allow_app_id(self, hex_app_id: &str) -> Self {
        self.policy_with(|p| p.allow_app_id(hex_app_id))
    }

    /// Require the keys' custody chain to end at this dstack KMS root public key (hex), beside
    /// the pins above (a KMS root alone covers only the secp256k1 E2EE key); see
    /// [`PolicyBuilder::accept_kms_root`].
    pub fn accept_kms_root(self, public_key_hex: &str) -> Self {
        self.policy_with(|p| p.accept_kms_root(public_key_hex))
    }

    /// Trust only the genuine boot chain: the hardware-verified quote's MRTD and RTMR0–2 (hex, 48
    /// bytes each) must equal this set. Several sets may be allowed; see
    /// [`PolicyBuilder::allow_boot_measurements`]. With a compose hash and a KMS identity, the
    /// combination every client needs.
    pub fn allow_boot_measurements(self, mrtd: &str, rtmr0: &str, rtmr1: &str, rtmr2: &str) -> Self {
        self.policy_with(|p| p.allow_boot_measurements(mrtd, rtmr0, rtmr1, rtmr2))
    }

    /// Trust only the KMS that provisioned the gateway: the `id` (hex) of the event log's
    /// `key-provider` event; see [`PolicyBuilder::allow_kms_identity`].
    pub fn allow_kms_identity(self, hex_id: &str) -> Self {
        self.policy_with(|p| p.allow_kms_identity(hex_id))
    }

    /// Require a reviewed dstack production OS image; see
    /// [`PolicyBuilder::require_production_os`].
    pub fn require_production_os(self) -> Self {
        self.policy_with(PolicyBuilder::require_production_os)
    }

    /// A ready policy, instead of the pins. Given together with pins (or
    /// [`policy_with`](Self::policy_with)), [`build`](Self::build) fails.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The API key, sent as `Authorization: Bearer …` on every request that carries none, only
    /// on a `POST` to the three E2EE endpoints and a `GET` of `/v1/models…` or of a receipt
    /// (never on the attestation endpoint, nor on a path the gateway could normalise into
    /// another one). Zeroized on drop, never
    /// logged. [`build`](Self::build) fails with `Config` when it is not a valid header value.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = ApiKey::Value(Zeroizing::new(key.into()));
        self
    }

    /// Read the API key from this environment variable at [`build`](Self::build), which fails
    /// when it is unset, empty, or not a valid header value.
    pub fn api_key_env(mut self, name: impl Into<String>) -> Self {
        self.api_key = ApiKey::Env(name.into());
        self
    }

    /// When receipts are verified (default [`ReceiptMode::Background`]).
    pub fn receipts(mut self, mode: ReceiptMode) -> Self {
        self.receipts = mode;
        self
    }

    /// What a receipt must satisfy (default [`ReceiptPolicy::new`]).
    pub fn receipt_policy(mut self, policy: ReceiptPolicy) -> Self {
        self.receipt_policy = policy;
        self
    }

    /// Check the gateway's certificate to these roots (WebPKI) before the pin (default:
    /// Mozilla's roots, `webpki-roots`).
    pub fn root_store(mut self, roots: RootCertStore) -> Self {
        self.trust = Trust::Roots(roots);
        self
    }

    /// No WebPKI for the gateway: the attested keyset is the only trust anchor of its TLS key,
    /// for gateways with self-signed certificates (see
    /// [`AttestedTlsBuilder::pin_only`](crate::tls::AttestedTlsBuilder::pin_only)). The PCCS is
    /// still checked with WebPKI.
    pub fn tls_pin_only(mut self) -> Self {
        self.trust = Trust::PinOnly;
        self
    }

    /// Fetch TDX quote collateral from this PCCS (feature `dcap`; default [`DEFAULT_PCCS`] for
    /// an `https://` gateway, none for a loopback `http://` one). Verified with WebPKI, not
    /// pinned; [`build`](Self::build) fails when it names the gateway's own host (which would
    /// take the gateway out of the pin).
    pub fn pccs(mut self, url: impl Into<String>) -> Self {
        self.pccs = Some(Some(url.into()));
        self
    }

    /// Fetch no collateral from a PCCS: the policy's offline collateral
    /// ([`PolicyBuilder::collateral`], feature `dcap`) is used instead.
    pub fn no_pccs(mut self) -> Self {
        self.pccs = Some(None);
        self
    }

    /// One more root certificate for the PCCS connection only: for a network whose egress proxy
    /// inspects TLS and re-signs what it forwards with its own CA, or a PCCS of your own. The
    /// gateway's connection never accepts it (and its key stays pinned to the attested keyset);
    /// see [`AttestedTlsBuilder::unpinned_extra_root`](crate::tls::AttestedTlsBuilder::unpinned_extra_root).
    /// [`build`](Self::build) fails when no PCCS is used.
    pub fn pccs_extra_root(mut self, cert: rustls::pki_types::CertificateDer<'static>) -> Self {
        self.pccs_roots.push(cert);
        self
    }

    /// Connect to the gateway and the PCCS through this HTTP proxy
    /// (`http://[user:password@]host[:port]`): each connection opens a `CONNECT` tunnel, and TLS
    /// with its pin runs inside it, end to end. The environment (`HTTPS_PROXY`, `NO_PROXY`) is
    /// then not read. [`build`](Self::build) fails with `Config` for an invalid URL, and a
    /// proxy's refusal to open a tunnel is a [`Transport`](ErrorKind::Transport) error naming
    /// its status.
    ///
    /// By default the proxy comes from `HTTPS_PROXY` (else `https_proxy`), except for the hosts
    /// `NO_PROXY` lists and loopback, as in [`crate::tls`].
    ///
    /// ```no_run
    /// # async fn run(compose: &str, [m, r0, r1, r2]: [&str; 4], kms: &str) -> tower_aci::Result<()> {
    /// let client = tower_aci::Client::builder("https://api.redpill.ai")
    ///     .allow_compose_hash(compose).allow_boot_measurements(m, r0, r1, r2).allow_kms_identity(kms)
    ///     .https_proxy("http://proxy.corp.example:3128") // credentials: http://user:password@host:port
    ///     .build().await?;
    /// # let _ = client; Ok(()) }
    /// ```
    pub fn https_proxy(mut self, url: impl AsRef<str>) -> Self {
        self.egress = Egress::Proxy(HttpsProxy::parse(url.as_ref()));
        self
    }

    /// [`https_proxy`](Self::https_proxy) with a proxy already parsed (for example from a
    /// configuration file).
    pub fn with_https_proxy(mut self, proxy: HttpsProxy) -> Self {
        self.egress = Egress::Proxy(Ok(proxy));
        self
    }

    /// Connect directly, whatever `HTTPS_PROXY` says (the environment is not read).
    pub fn no_proxy(mut self) -> Self {
        self.egress = Egress::Direct;
        self
    }

    /// Strict mode of the E2EE layer ([`E2eeLayer::strict`]): refuse requests whose members
    /// would travel in clear, and answers that carry generated content in clear.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Re-attest at least this often, whatever the keyset's `not_after` says (default one day;
    /// see [`KeyProviderBuilder::max_keyset_age`](crate::attest::KeyProviderBuilder::max_keyset_age)).
    pub fn max_keyset_age(mut self, age: Duration) -> Self {
        self.max_keyset_age = Some(age);
        self
    }

    /// The clock reports, keysets and quote collateral are judged by (default: the system
    /// clock). For tests and replays of captured evidence, e.g. a
    /// [`ManualClock`](crate::attest::ManualClock) inside a captured collateral's window; a
    /// client serving real traffic keeps the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Attest the gateway now and start the refresher (on the current Tokio runtime).
    ///
    /// Fails with [`Config`](ErrorKind::Config) for an invalid URL, an `http://` gateway that
    /// is not on loopback, no pin and no policy, both pins and a policy, an API key variable
    /// that is unset or an API key that is not a valid header value, a PCCS URL that is invalid
    /// or names the gateway's host, an extra PCCS root with no PCCS, or a proxy URL (given, or
    /// in `HTTPS_PROXY`) that is not one; with [`Transport`](ErrorKind::Transport) when the
    /// gateway (or the HTTPS proxy) cannot be reached or the proxy refuses the tunnel; with the
    /// attestation's error when the gateway does not satisfy the policy (kind
    /// [`Attestation`](ErrorKind::Attestation), naming the check that failed).
    pub async fn build(self) -> Result<Client> {
        let config = |m: String| Error::config(m);
        let base: Uri =
            self.url.parse().map_err(|e| config(format!("invalid gateway URL {:?}", self.url)).with_source(e))?;
        let https = match base.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(config(format!("the gateway URL {base} needs https:// (or http:// to loopback)"))),
        };
        if base.authority().is_none() || base.query().is_some() {
            return Err(config(format!("the gateway URL {base} needs a host and no query")));
        }
        if !https && !transport::is_loopback(&base) {
            return Err(config(format!(
                "refusing plain http:// to {base}: only a gateway on loopback may be reached without TLS; use https://"
            )));
        }
        let policy = match (self.policy, self.pins) {
            (Some(_), Some(_)) => {
                return Err(config("give the client either pins or a ready policy, not both".to_owned()));
            }
            (Some(policy), None) => policy,
            (None, Some(pins)) => pins.build()?,
            (None, None) => Policy::builder().build()?, // fails, saying what to pin
        };
        let api_key = match self.api_key {
            ApiKey::None => None,
            ApiKey::Value(k) => Some(k),
            ApiKey::Env(name) => match std::env::var(&name) {
                Ok(k) if !k.is_empty() => Some(Zeroizing::new(k)),
                _ => return Err(config(format!("the API key variable {name} is unset or empty; export it"))),
            },
        };
        let authorization = match &api_key {
            Some(k) => {
                let mut v = HeaderValue::try_from(format!("Bearer {}", k.as_str())).map_err(|_| {
                    config(
                        "the API key is not a valid header value (a control character or a line break in it?): \
                         check the key or the variable holding it"
                            .to_owned(),
                    )
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let pccs: Option<Uri> = match self.pccs.unwrap_or_else(|| https.then(|| DEFAULT_PCCS.to_owned())) {
            Some(u) => Some(u.parse().map_err(|e| config(format!("invalid PCCS URL {u:?}")).with_source(e))?),
            None => None,
        };
        #[cfg(not(feature = "dcap"))]
        let pccs: Option<Uri> = {
            // Without `dcap` no collateral is ever fetched: the PCCS stays unused.
            let _ = pccs;
            None
        };
        if let Some(pccs) = &pccs {
            transport::refuse_pccs_on_gateway_host(&base, pccs)?;
        }
        if !self.pccs_roots.is_empty() && (pccs.is_none() || !https) {
            return Err(config(
                "pccs_extra_root is given but no PCCS is reached over HTTPS (no_pccs(), an http:// gateway, or a \
                 build without feature dcap)"
                    .to_owned(),
            ));
        }

        // One handle for the TLS verifier, the provider that publishes into it, and the layer.
        let keys = match self.clock {
            Some(clock) => KeyHandle::with_clock(clock),
            None => KeyHandle::new(),
        };
        let (plain, tls) =
            transport::plain_client(&base, &keys, self.trust, pccs.as_ref(), self.pccs_roots, self.egress)?;

        let provider = KeyProvider::builder(plain.clone()).handle(keys.clone()).base_url(base.clone()).policy(policy);
        let provider = match self.max_keyset_age {
            Some(age) => provider.max_keyset_age(age),
            None => provider,
        };
        #[cfg(feature = "dcap")]
        let provider = match &pccs {
            Some(url) => provider.pccs(url.clone()),
            None => provider,
        };
        let provider = provider.build()?;
        provider.establish().await?;
        let (_, refresher) = provider.spawn()?;
        let refresher = Arc::new(refresher);

        let receipts = ReceiptClient::new(plain.clone(), base.clone());
        let layer = E2eeLayer::new(keys.clone()).strict(self.strict);
        let retry = RetryLayer::new(KeyMismatchRetry::new(keys.clone()));
        let before_release_mode = matches!(self.receipts, ReceiptMode::BeforeRelease | ReceiptMode::HoldUntilVerified);
        let stack: Stack = if before_release_mode {
            BoxCloneSyncService::new(
                ServiceBuilder::new()
                    .map_response(|r: Response<_>| r.map(BodyExt::boxed_unsync))
                    .layer(retry)
                    .layer(before_release(&receipts, &keys, &self.receipt_policy, self.receipts))
                    .layer(layer.clone())
                    .service(plain),
            )
        } else {
            BoxCloneSyncService::new(
                ServiceBuilder::new()
                    .map_response(|r: Response<_>| r.map(BodyExt::boxed_unsync))
                    .layer(retry)
                    .layer(layer.clone())
                    .service(plain),
            )
        };
        let verifier = Arc::new(Verifier { receipts, keys: keys.clone(), policy: self.receipt_policy });
        let tracker = Arc::new(Tracker::default());
        let service = AciService {
            stack,
            shared: Arc::new(ServiceShared {
                authorization,
                base_path: base.path().trim_end_matches('/').to_owned(),
                background: (self.receipts == ReceiptMode::Background).then(|| verifier.clone()),
                tracker: tracker.clone(),
                _refresher: refresher,
            }),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                base,
                keys,
                provider,
                service,
                verifier,
                tracker,
                api_key,
                pccs,
                layer,
                tls,
                mode: self.receipts,
            }),
        })
    }
}

/// One attested client for an ACI gateway: the key kept fresh, E2EE on every inference
/// request, receipts verified. Cheap to clone; the background refresher stops when the last
/// clone (and the last [`AciService`] it handed out) is dropped.
///
/// A real gateway, with the default features (`client`: `rustls` and `dcap`; `no_run`: it
/// needs the network). The pins are the real June 2026 capture's
/// (`tests/data/real_tdx_report_2026-06.json`), as `aci-proxy inspect` prints them:
///
/// ```no_run
/// # async fn run() -> Result<(), tower_aci::BoxError> {
/// # const COMPOSE_HASH: &str = "5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb";
/// # const MRTD: &str = "f06dfda6dce1cf904d4e2bab1dc370634cf95cefa2ceb2de2eee127c9382698090d7a4a13e14c536ec6c9c3c8fa87077";
/// # const RTMR0: &str = "ec216f1d1d591468ff4741b9b192f016b26d3f90303bfa9dbb97557273853183981f21a4bcb3ae908247538d371ad072";
/// # const RTMR1: &str = "07e6f51aa763abfe75c3ddfbf4f425fe3f0ceff66d807a75e049303dce9addf68e7218729bd419638af63a370f65878c";
/// # const RTMR2: &str = "a2a58c9a959a4fa44bd6da0c97a2270c051faf12084cfe91ae900e4fdff6cdd4f69a82005e04ee920f231497894d677f";
/// # const KMS_IDENTITY: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200048844eb42ccdf8c52fd4f174f362fcb9bbd19c45fd48f1edec2d8f1ca23536ec1a74021b4cee610c074f8294d431b2b7fee2c39e5333fdaf0a4522d43fb159d9f";
/// use tower_aci::{Client, ErrorKind};
/// let client = Client::builder("https://api.redpill.ai") // what you trust: the code, on a genuine
///     .allow_compose_hash(COMPOSE_HASH) //                  boot chain, provisioned by that KMS
///     .allow_boot_measurements(MRTD, RTMR0, RTMR1, RTMR2).allow_kms_identity(KMS_IDENTITY)
///     .api_key_env("REDPILL_API_KEY")
///     .build().await?; // attests now, then keeps the key fresh in the background
/// let body = r#"{"model":"MODEL","messages":[{"role":"user","content":"hi"}]}"#;
/// match client.post("/v1/chat/completions", body).await {
///     Ok(answer) => {
///         println!("{}", String::from_utf8_lossy(&answer.body)); // decrypted
///         answer.receipt.verified().await?; // the gateway's signature over exactly these bytes
///     }
///     Err(e) if e.kind() == ErrorKind::Gateway => eprintln!("gateway refused ({:?}): {e}", e.status()),
///     Err(e) => eprintln!("{e}"), // KeyUnavailable: the refresh failed and the key expired (says why)
/// }
/// # Ok(()) }
/// ```
///
/// As a tower service (hyper-style requests, the decrypted body streams):
///
/// ```no_run
/// # async fn run(client: tower_aci::Client) -> Result<(), tower_aci::BoxError> {
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower::ServiceExt;
///
/// let req = http::Request::post(client.url("/v1/chat/completions")?)
///     .header("content-type", "application/json")
///     .body(Full::new(Bytes::from_static(br#"{"model":"MODEL","messages":[{"role":"user","content":"hi"}]}"#)))?;
/// let res = client.service().oneshot(req).await?;
/// let answer = res.into_body().collect().await?.to_bytes();
/// # let _ = answer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    base: Uri,
    keys: KeyHandle,
    provider: KeyProvider<Plain, RequestBody<Full<Bytes>>>,
    service: AciService,
    verifier: Arc<Verifier>,
    tracker: Arc<Tracker>,
    api_key: Option<Zeroizing<String>>,
    pccs: Option<Uri>,
    #[cfg_attr(not(feature = "reqwest-middleware"), allow(dead_code))]
    layer: E2eeLayer,
    #[cfg_attr(not(feature = "reqwest-middleware"), allow(dead_code))]
    tls: Option<AttestedTls>,
    mode: ReceiptMode,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("gateway", &self.inner.base)
            .field("receipts", &self.inner.mode)
            .field("keys", &self.inner.keys)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for a client of the gateway at `url` (`https://…`; `http://` only to
    /// loopback).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            policy: None,
            pins: None,
            api_key: ApiKey::None,
            receipts: ReceiptMode::default(),
            receipt_policy: ReceiptPolicy::new(),
            trust: Trust::WebPki,
            pccs: None,
            pccs_roots: Vec::new(),
            egress: Egress::Environment,
            strict: false,
            clock: None,
            max_keyset_age: None,
        }
    }

    /// The tower service: key-mismatch retry, [verify before release](ReceiptMode::BeforeRelease),
    /// E2EE, the pinned hyper client. Cheap to clone; it keeps the refresher running too.
    pub fn service(&self) -> AciService {
        self.inner.service.clone()
    }

    /// `path` (and query) under the gateway's base URL.
    pub fn url(&self, path_and_query: &str) -> Result<Uri> {
        join(&self.inner.base, path_and_query)
    }

    /// POST `json` to `path` (for example `/v1/chat/completions`) and return the decrypted
    /// [`Answer`], read whole, with its receipt's [`ReceiptVerdict`]: the verified receipt in
    /// [`BeforeRelease`](ReceiptMode::BeforeRelease) and
    /// [`HoldUntilVerified`](ReceiptMode::HoldUntilVerified) modes, the running check to await
    /// in [`Background`](ReceiptMode::Background) mode, [`Off`](ReceiptVerdict::Off) otherwise.
    ///
    /// A non-2xx answer is an error of kind [`Gateway`](ErrorKind::Gateway) (the gateway's
    /// error document; [`Error::gateway_error_type`] names its `type`, [`Error::status`] the
    /// status and [`Error::retry_after`] its `Retry-After`) or, when the body is not one,
    /// [`Transport`](ErrorKind::Transport) (with the status too). No attested key (the refresh
    /// failed and the key expired) is [`KeyUnavailable`](ErrorKind::KeyUnavailable), naming the
    /// refresh's error. Before release, a receipt that does not verify is the error (kind
    /// [`Receipt`](ErrorKind::Receipt)). A streamed request (`"stream": true`) is read to its
    /// end; use [`service`](Self::service) to read it event by event.
    pub async fn post(&self, path: &str, json: impl Into<Bytes>) -> Result<Answer> {
        let request = Request::post(self.url(path)?)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(json.into()))
            .map_err(|e| Error::config("cannot build the request").with_source(e))?;
        let response = self.service().oneshot(request).await.map_err(ours)?;
        let status = response.status();
        if !status.is_success() {
            let gateway = response.extensions().get::<GatewayError>().cloned();
            let headers = response.headers().clone();
            let body = Limited::new(response.into_body(), MAX_ERROR_BODY).collect().await.map(|c| c.to_bytes());
            let what = format!("POST {path}");
            return Err(match (gateway, body) {
                (Some(g), _) if g.error_type.is_some() => g.to_error(),
                (Some(g), _) => g.error_of(&what),
                (None, Ok(body)) => GatewayError::error_for(status, &headers, self.inner.keys.now(), &body, &what),
                (None, Err(_)) => Error::transport(format!("{what}: the gateway answered {status}")),
            });
        }
        let Some(record) = response.extensions().get::<ExchangeRecord>().cloned() else {
            return Err(Error::new(ErrorKind::Protocol, format!("POST {path}: the answer carries no exchange record")));
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(ours)?.to_bytes();
        let receipt = match self.inner.mode {
            ReceiptMode::Off => ReceiptVerdict::Off,
            ReceiptMode::Background => match parts.extensions.get::<ReceiptCheck>() {
                Some(check) => ReceiptVerdict::Background(check.clone()),
                None => return Err(Error::new(ErrorKind::Protocol, "the answer carries no receipt check")),
            },
            _ => {
                let verified = parts.extensions.get::<VerifiedReceipt>().cloned().or_else(|| {
                    parts.extensions.get::<StreamVerification>().and_then(StreamVerification::receipt).cloned()
                });
                match verified {
                    Some(v) => ReceiptVerdict::Verified(Box::new(v)),
                    // The layer releases nothing unverified: a body read whole without a
                    // verified receipt is a bug of ours, never handed out as verified.
                    None => return Err(Error::new(ErrorKind::Protocol, "the answer was released without its receipt")),
                }
            }
        };
        Ok(Answer { body, receipt, record })
    }

    /// The handle holding the attested keys (what the E2EE layer encrypts to).
    pub fn keys(&self) -> &KeyHandle {
        &self.inner.keys
    }

    /// The verified keyset requests are encrypted to now; `KeyUnavailable` when it expired (or
    /// was verified more than a day ago) and no refresh succeeded.
    pub fn keyset(&self) -> Result<Arc<AttestedKeyset>> {
        self.inner.keys.current()
    }

    /// Attest the gateway again now (the refresher does it on its own before expiry and on
    /// rotations). On failure the current keyset keeps serving until its `not_after`.
    pub async fn refresh(&self) -> Result<Arc<AttestedKeyset>> {
        self.inner.provider.establish().await
    }

    /// Why the last attestation failed, while no later one succeeded (the key keeps serving
    /// until its `not_after`); `None` after a success.
    pub fn refresh_error(&self) -> Option<String> {
        self.inner.keys.shared.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// The gateway's base URL.
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn base_url(&self) -> &Uri {
        &self.inner.base
    }

    /// The policy reports are verified under (the pins, as built).
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn policy(&self) -> &Policy {
        self.inner.provider.policy()
    }

    /// The PCCS quote collateral is fetched from (`None`: none, the policy's offline
    /// collateral is used; always `None` without feature `dcap`).
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn pccs(&self) -> Option<&Uri> {
        self.inner.pccs.as_ref()
    }

    /// Whether the client holds an API key (it adds it to requests that carry none).
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn has_api_key(&self) -> bool {
        self.inner.api_key.is_some()
    }

    /// When receipts are verified.
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn receipt_mode(&self) -> ReceiptMode {
        self.inner.mode
    }

    /// How many background receipt checks ([`ReceiptMode::Background`]) this client and the
    /// services it handed out ran, and how they ended: a failure reaches you here (and in
    /// [`last_receipt_error`](Self::last_receipt_error)) even when nobody awaits its
    /// [`ReceiptCheck`].
    ///
    /// ```no_run
    /// # fn run(client: &tower_aci::Client) {
    /// let stats = client.receipt_stats();
    /// if stats.failed > 0 {
    ///     eprintln!("{} receipt(s) failed; the last: {:?}", stats.failed, client.last_receipt_error());
    /// }
    /// # }
    /// ```
    pub fn receipt_stats(&self) -> ReceiptStats {
        self.inner.tracker.stats()
    }

    /// Why the last failed background receipt check failed; `None` while none failed.
    pub fn last_receipt_error(&self) -> Option<String> {
        self.inner.tracker.last_error()
    }

    /// Resolves once no background receipt check is running (for a graceful shutdown: stop
    /// sending, let the open answers end, then wait here, under a timeout of yours). Checks
    /// start when an answer was read to its end, so one whose body is still being read is not
    /// waited for.
    pub async fn receipts_settled(&self) {
        self.inner.tracker.settled().await;
    }

    /// Fetch and verify the receipt of an exchange now (its [`ExchangeRecord`], from the
    /// response's extensions or [`Answer::record`], after the body was read to its end), with
    /// the client's API key.
    pub async fn verify_receipt(&self, record: &ExchangeRecord) -> Result<VerifiedReceipt> {
        self.inner.verifier.verify(record, self.inner.api_key.as_ref().map(|k| k.as_str())).await
    }

    /// A reqwest-middleware client (feature `reqwest-middleware`) over the same attested keys:
    /// reqwest over the pinned rustls configuration
    /// ([`AttestedTls::rustls_config`]; plain HTTP for a loopback gateway) and through the
    /// client's HTTPS proxy when one applies to the gateway (else directly; through a proxy
    /// its answers fail closed with `ChannelBinding`, since reqwest 0.12 reports no TLS
    /// information for a tunnelled connection), the API key as a
    /// default header, and [`E2eeMiddleware`](crate::middleware::E2eeMiddleware) configured as
    /// the client's layer, retrying once on a key rotation. Receipts are not verified by it:
    /// pass the response's [`ExchangeRecord`] to [`verify_receipt`](Self::verify_receipt).
    #[cfg(feature = "reqwest-middleware")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
    pub fn reqwest(&self) -> Result<reqwest_middleware::ClientWithMiddleware> {
        let mut builder = reqwest::Client::builder();
        // The same egress as the client's own connections; plain HTTP (loopback) goes direct.
        match self.inner.tls.as_ref().map(AttestedTls::reqwest_proxy).transpose()?.flatten() {
            Some(proxy) => builder = builder.proxy(proxy),
            None => builder = builder.no_proxy(),
        }
        if let Some(tls) = &self.inner.tls {
            builder = builder.use_preconfigured_tls(tls.rustls_config()).tls_info(true);
        }
        // reqwest follows no redirect either.
        builder = builder.redirect(reqwest::redirect::Policy::none());
        if let Some(value) = self.inner.service.shared.authorization.clone() {
            builder = builder.default_headers(http::HeaderMap::from_iter([(http::header::AUTHORIZATION, value)]));
        }
        let client = builder.build().map_err(|e| Error::config("cannot build the reqwest client").with_source(e))?;
        let e2ee = crate::middleware::E2eeMiddleware::from_layer(self.inner.layer.clone())
            .retry_on_key_mismatch(Some(crate::e2ee::retry::DEFAULT_KEY_MISMATCH_WAIT));
        Ok(reqwest_middleware::ClientBuilder::new(client).with(e2ee).build())
    }
}

/// `{base path}{path_and_query}`.
fn join(base: &Uri, path_and_query: &str) -> Result<Uri> {
    let bad = |e: http::Error| Error::config(format!("invalid request path {path_and_query:?}")).with_source(e);
    if !path_and_query.starts_with('/') {
        return Err(Error::config(format!("the request path {path_and_query:?} must start with '/'")));
    }
    let prefix = base.path().trim_end_matches('/');
    let mut parts = base.clone().into_parts();
    parts.path_and_query =
        Some(format!("{prefix}{path_and_query}").parse().map_err(|e: http::uri::InvalidUri| bad(e.into()))?);
    Uri::from_parts(parts).map_err(|e| bad(e.into()))
}

/// A boxed error as ours: the crate error it is (or carries), else a transport error.
fn ours(e: BoxError) -> Error {
    match e.downcast::<Error>() {
        Ok(ours) => *ours,
        Err(e) => match Error::find(e.as_ref()).map(Error::copy_of) {
            Some(found) => found.with_source(e),
            None => Error::transport("the exchange failed").with_source(e),
        },
    }
}
