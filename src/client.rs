//! [`Client`]: one attested client for an ACI gateway, built in a few lines (feature `rustls`).
//!
//! [`Client::builder`] takes the gateway's URL, what you trust about its workload (the pins, or
//! a ready [`Policy`]) and your API key (or the name of the environment variable holding it).
//! [`build`](ClientBuilder::build) then attests the gateway over HTTPS pinned to the attested
//! keyset ([`AttestedTls`]), and keeps the key fresh in the background for as long as the client
//! or a service it handed out lives. It hands out:
//!
//! - [`Client::post`]: send a JSON body, get the decrypted answer (or a typed error);
//! - [`Client::service`]: a cloneable tower [`Service`] ([`AciService`]) that stacks
//!   [`KeyMismatchRetry`] → [verify before release] → [`E2eeLayer`] → the pinned hyper client,
//!   for tower and hyper code;
//! - [`Client::reqwest`] (feature `reqwest-middleware`): a `ClientWithMiddleware` over the
//!   pinned rustls configuration, with [`E2eeMiddleware`](crate::middleware::E2eeMiddleware);
//! - [`Client::keys`] and [`Client::keyset`]: the [`KeyHandle`] and the verified keyset.
//!
//! Behind an HTTP proxy, every connection (report, PCCS, requests, receipts) goes through a
//! `CONNECT` tunnel with TLS and its pin end to end inside: from `HTTPS_PROXY` / `NO_PROXY` by
//! default, or [`ClientBuilder::https_proxy`] (see [`crate::tls`]).
//!
//! Receipts are verified as [`ReceiptMode`] says: in the background once an answer was read
//! to its end (the default; the outcome is a [`ReceiptCheck`] in the response's extensions:
//! reported, too late to withhold anything), before the answer is released
//! ([`VerifyBeforeReleaseLayer`]: a buffered answer whole, a stream's `[DONE]`), before any byte
//! of an answer, streams included, is released ([`ReceiptMode::HoldUntilVerified`]), or not at
//! all. [The `release` module's table](crate::receipt::VerifyBeforeReleaseLayer) says exactly
//! what each mode guarantees.
//!
//! The parts the client is built from ([`KeyProvider`],
//! [`E2eeLayer`], [`ReceiptClient`], [`AttestedTls`]) stay public
//! for stacks of your own; `aci-proxy` ([`crate::proxy`]) is the same stack behind an
//! OpenAI-compatible endpoint.
//!
//! [verify before release]: VerifyBeforeReleaseLayer

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use tokio::sync::Notify;
use tower::retry::RetryLayer;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_service::Service;
use zeroize::Zeroizing;

use crate::attest::{AttestedKeyset, KeyHandle, KeyProvider, Policy, PolicyBuilder, RefreshTask};
use crate::e2ee::{E2eeLayer, KeyMismatchRetry, RequestBody};
use crate::error::{BoxError, Error, ErrorKind, ReceiptFailure, Result};
use crate::protocol::GatewayError;
use crate::receipt::{ExchangeRecord, ReceiptClient, ReceiptPolicy, VerifiedReceipt, VerifyBeforeReleaseLayer};
use crate::tls::{AttestedTls, HttpsProxy};

/// The body of an [`AciService`] answer: decrypted (and in before-release mode verified) bytes.
pub type AciBody = UnsyncBoxBody<Bytes, BoxError>;

/// The future of [`AciService`].
pub type AciFuture = Pin<Box<dyn Future<Output = std::result::Result<Response<AciBody>, BoxError>> + Send>>;

/// The pinned hyper client under the layer: one pool for the layer, the provider and receipts.
type Plain = BoxCloneSyncService<Request<RequestBody<Full<Bytes>>>, Response<Incoming>, BoxError>;
/// Key-mismatch retry → [verify before release] → E2EE → `Plain`.
type Stack = BoxCloneSyncService<Request<Full<Bytes>>, Response<AciBody>, BoxError>;

/// The PCCS quote collateral is fetched from by default (feature `dcap`): the reference
/// verifier's default. It serves Intel-signed collateral; trust does not rest on it.
#[cfg(feature = "dcap")]
const DEFAULT_PCCS: &str = "https://pccs.phala.network";

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
        ReceiptMode::HoldUntilVerified => layer.hold_whole_stream(crate::receipt::DEFAULT_MAX_RELEASE_BODY),
        _ => layer,
    }
}

/// Largest error document read from a non-2xx answer by [`Client::post`].
const MAX_ERROR_BODY: usize = 64 * 1024;

/// When a [`Client`] verifies the gateway's signed receipt of each exchange.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiptMode {
    /// Once the answer was read to its end, fetch and verify its receipt in the background
    /// (on Tokio); the outcome is the [`ReceiptCheck`] in the response's extensions, and a
    /// failure is logged at `error`. The answer itself is not held back.
    #[default]
    Background,
    /// Release an answer only once its receipt verified ([`VerifyBeforeReleaseLayer`]): a
    /// buffered answer is the call's error when the receipt does not verify; a stream's events
    /// flow as they authenticate, and its `[DONE]` waits for the receipt (an event an on-path
    /// attacker dropped, duplicated or reordered may reach you before the receipt's error).
    BeforeRelease,
    /// Do not verify receipts (verify some yourself with [`Client::verify_receipt`]).
    Off,
    /// Release no byte of any answer before its receipt verified: as
    /// [`BeforeRelease`](Self::BeforeRelease) for buffered answers, and a stream is read to its
    /// end and held (at most [`DEFAULT_MAX_RELEASE_BODY`](crate::receipt::DEFAULT_MAX_RELEASE_BODY),
    /// 64 MiB, else `TooLarge`) until its receipt verified, then released whole; on any failure
    /// the body's first frame is the error
    /// ([`hold_whole_stream`](VerifyBeforeReleaseLayer::hold_whole_stream)). You wait for the
    /// end of every stream, and never see a forged answer.
    HoldUntilVerified,
}

enum ApiKey {
    None,
    Value(Zeroizing<String>),
    Env(String),
}

enum Trust {
    WebPki,
    PinOnly,
    Roots(RootCertStore),
}

/// How the client's connections leave this machine.
enum Egress {
    /// `HTTPS_PROXY` / `NO_PROXY`, read at `build`.
    Environment,
    /// Through this proxy (or the URL's parse error, returned by `build`).
    Proxy(Result<HttpsProxy>),
    Direct,
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
    #[cfg(feature = "dcap")]
    pccs: Option<Option<String>>,
    #[cfg(feature = "dcap")]
    pccs_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    egress: Egress,
    strict: bool,
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
    fn pins(mut self, f: impl FnOnce(PolicyBuilder) -> PolicyBuilder) -> Self {
        self.pins = Some(f(self.pins.take().unwrap_or_else(Policy::builder)));
        self
    }

    /// Trust the workload whose compose hash (SHA-256 of the report's `app_compose`, hex) is
    /// this; see [`PolicyBuilder::allow_compose_hash`]. Several may be allowed.
    pub fn allow_compose_hash(self, hex_hash: &str) -> Self {
        self.pins(|p| p.allow_compose_hash(hex_hash))
    }

    /// Trust the dstack application with this app id (hex); see
    /// [`PolicyBuilder::allow_app_id`].
    pub fn allow_app_id(self, hex_app_id: &str) -> Self {
        self.pins(|p| p.allow_app_id(hex_app_id))
    }

    /// Require the keys' custody chain to end at this dstack KMS root public key (hex), beside
    /// the pins above (a KMS root alone covers only the secp256k1 E2EE key); see
    /// [`PolicyBuilder::accept_kms_root`].
    pub fn accept_kms_root(self, public_key_hex: &str) -> Self {
        self.pins(|p| p.accept_kms_root(public_key_hex))
    }

    /// Trust only the genuine boot chain: the hardware-verified quote's MRTD and RTMR0–2 (hex, 48
    /// bytes each) must equal this set. Several sets may be allowed; see
    /// [`PolicyBuilder::allow_boot_measurements`]. With a compose hash and a KMS identity, the
    /// combination every client needs.
    pub fn allow_boot_measurements(self, mrtd: &str, rtmr0: &str, rtmr1: &str, rtmr2: &str) -> Self {
        self.pins(|p| p.allow_boot_measurements(mrtd, rtmr0, rtmr1, rtmr2))
    }

    /// Trust only the KMS that provisioned the gateway: the `id` (hex) of the event log's
    /// `key-provider` event; see [`PolicyBuilder::allow_kms_identity`].
    pub fn allow_kms_identity(self, hex_id: &str) -> Self {
        self.pins(|p| p.allow_kms_identity(hex_id))
    }

    /// Require a reviewed dstack production OS image; see
    /// [`PolicyBuilder::require_production_os`].
    pub fn require_production_os(self) -> Self {
        self.pins(PolicyBuilder::require_production_os)
    }

    /// A ready policy, for anything the pin methods above do not cover. Given together with
    /// pins, [`build`](Self::build) fails.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The API key, sent as `Authorization: Bearer …` on every request that carries none (and
    /// on receipt fetches). Zeroized on drop, never logged.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = ApiKey::Value(Zeroizing::new(key.into()));
        self
    }

    /// Read the API key from this environment variable at [`build`](Self::build), which fails
    /// when it is unset or empty.
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
    /// [`AttestedTlsBuilder::pin_only`](crate::tls::AttestedTlsBuilder::pin_only)).
    pub fn tls_pin_only(mut self) -> Self {
        self.trust = Trust::PinOnly;
        self
    }

    /// Fetch TDX quote collateral from this PCCS (feature `dcap`; default
    /// `https://pccs.phala.network` for an `https://` gateway). Verified with WebPKI, not pinned.
    #[cfg(feature = "dcap")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dcap")))]
    pub fn pccs(mut self, url: impl Into<String>) -> Self {
        self.pccs = Some(Some(url.into()));
        self
    }

    /// Fetch no collateral from a PCCS (feature `dcap`): the policy's offline collateral
    /// ([`PolicyBuilder::collateral`]) is used instead.
    #[cfg(feature = "dcap")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dcap")))]
    pub fn no_pccs(mut self) -> Self {
        self.pccs = Some(None);
        self
    }

    /// One more root certificate for the PCCS connection only (feature `dcap`): for a network
    /// whose egress proxy inspects TLS and re-signs what it forwards with its own CA. The
    /// gateway's connection never accepts it (and its key stays pinned to the attested keyset);
    /// see [`AttestedTlsBuilder::unpinned_extra_root`](crate::tls::AttestedTlsBuilder::unpinned_extra_root).
    /// [`build`](Self::build) fails when no PCCS is used.
    #[cfg(feature = "dcap")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dcap")))]
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
    /// # async fn run(app_id: &str, kms_root: &str) -> tower_aci::Result<()> {
    /// let client = tower_aci::Client::builder("https://api.redpill.ai")
    ///     .allow_app_id(app_id).accept_kms_root(kms_root)
    ///     .https_proxy("http://proxy.corp.example:3128") // credentials: http://user:password@host:port
    ///     .build().await?;
    /// # Ok(()) }
    /// ```
    pub fn https_proxy(mut self, url: impl AsRef<str>) -> Self {
        self.egress = Egress::Proxy(HttpsProxy::parse(url.as_ref()));
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

    /// Attest the gateway now and start the refresher (on the current Tokio runtime).
    ///
    /// Fails with [`Config`](ErrorKind::Config) for an invalid URL, an `http://` gateway that
    /// is not on loopback, no pin and no policy, both pins and a policy, an API key variable
    /// that is unset, or a proxy URL (given, or in `HTTPS_PROXY`) that is not one; with
    /// [`Transport`](ErrorKind::Transport) when the gateway (or the HTTPS proxy) cannot be
    /// reached or the proxy refuses the tunnel; with the attestation's error when the gateway
    /// does not satisfy the policy (kind [`Attestation`](ErrorKind::Attestation), naming the
    /// check that failed).
    pub async fn build(self) -> Result<Client> {
        let config = |m: String| Error::new(ErrorKind::Config, m);
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
        if !https && !is_loopback(&base) {
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
                let mut v = HeaderValue::try_from(format!("Bearer {}", k.as_str()))
                    .map_err(|_| config("the API key is not a valid header value".to_owned()))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        #[cfg(feature = "dcap")]
        let pccs: Option<Uri> = match self.pccs.unwrap_or_else(|| https.then(|| DEFAULT_PCCS.to_owned())) {
            Some(u) => Some(u.parse().map_err(|e| config(format!("invalid PCCS URL {u:?}")).with_source(e))?),
            None => None,
        };
        #[cfg(not(feature = "dcap"))]
        let pccs: Option<Uri> = None;
        #[cfg(feature = "dcap")]
        let pccs_roots = self.pccs_roots;
        #[cfg(not(feature = "dcap"))]
        let pccs_roots = Vec::new();
        if !pccs_roots.is_empty() && (pccs.is_none() || !https) {
            return Err(config(
                "pccs_extra_root is given but no PCCS is reached over HTTPS (no_pccs(), or an http:// gateway)"
                    .to_owned(),
            ));
        }

        // One handle for the TLS verifier, the provider that publishes into it, and the layer.
        let keys = KeyHandle::new();
        let (plain, tls) = if https {
            let tls = attested_tls(&keys, self.trust, pccs.as_ref(), pccs_roots, self.egress)?;
            let mut tcp = HttpConnector::new();
            tcp.enforce_http(false);
            tcp.set_nodelay(true);
            let client: HyperClient<_, RequestBody<Full<Bytes>>> =
                HyperClient::builder(TokioExecutor::new()).build(tls.connector_with(tcp));
            (boxed_plain(client), Some(tls))
        } else {
            let mut tcp = HttpConnector::new();
            tcp.set_nodelay(true);
            let client: HyperClient<_, RequestBody<Full<Bytes>>> =
                HyperClient::builder(TokioExecutor::new()).build(tcp);
            (boxed_plain(client), None)
        };

        let provider = KeyProvider::builder(plain.clone()).handle(keys.clone()).base_url(base.clone()).policy(policy);
        #[cfg(feature = "dcap")]
        let provider = match pccs {
            Some(url) => provider.pccs(url),
            None => provider,
        };
        let provider = provider.build()?;
        provider.establish().await?;
        let (_, refresher) = provider.spawn()?;
        let refresher = Arc::new(refresher);

        let receipts = ReceiptClient::new(plain.clone(), base.clone());
        let layer = E2eeLayer::new(keys.clone()).strict(self.strict);
        let retry = RetryLayer::new(KeyMismatchRetry::new(keys.clone()));
        let stack: Stack = match self.receipts {
            ReceiptMode::BeforeRelease | ReceiptMode::HoldUntilVerified => BoxCloneSyncService::new(
                ServiceBuilder::new()
                    .map_response(|r: Response<_>| r.map(BodyExt::boxed_unsync))
                    .layer(retry)
                    .layer(before_release(&receipts, &keys, &self.receipt_policy, self.receipts))
                    .layer(layer.clone())
                    .service(plain),
            ),
            ReceiptMode::Background | ReceiptMode::Off => BoxCloneSyncService::new(
                ServiceBuilder::new()
                    .map_response(|r: Response<_>| r.map(BodyExt::boxed_unsync))
                    .layer(retry)
                    .layer(layer.clone())
                    .service(plain),
            ),
        };
        let verifier = Arc::new(Verifier { receipts, keys: keys.clone(), policy: self.receipt_policy });
        let service = AciService {
            stack,
            shared: Arc::new(ServiceShared {
                authorization,
                background: (self.receipts == ReceiptMode::Background).then(|| verifier.clone()),
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
                api_key,
                layer,
                tls,
                mode: self.receipts,
            }),
        })
    }
}

fn boxed_plain<C>(client: HyperClient<C, RequestBody<Full<Bytes>>>) -> Plain
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let map_err = |e: hyper_util::client::legacy::Error| -> BoxError { Box::new(e) };
    BoxCloneSyncService::new(ServiceBuilder::new().map_err(map_err).service(client))
}

fn attested_tls(
    keys: &KeyHandle,
    trust: Trust,
    pccs: Option<&Uri>,
    pccs_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    egress: Egress,
) -> Result<AttestedTls> {
    let tls = AttestedTls::builder(keys.clone());
    let tls = match egress {
        Egress::Environment => tls,
        Egress::Proxy(proxy) => tls.egress(Some(proxy?)),
        Egress::Direct => tls.no_proxy(),
    };
    let mut tls = match trust {
        Trust::WebPki => tls.with_webpki_roots(),
        Trust::Roots(roots) => tls.root_store(roots),
        // The PCCS is an ordinary WebPKI host.
        Trust::PinOnly if pccs.is_some() => tls.pin_only().with_webpki_roots(),
        Trust::PinOnly => tls.pin_only(),
    };
    if let Some(host) = pccs.and_then(Uri::host) {
        tls = tls.unpinned_host(host);
    }
    for cert in pccs_roots {
        tls = tls.unpinned_extra_root(cert);
    }
    tls.build()
}

/// `localhost`, or a loopback IP address.
fn is_loopback(uri: &Uri) -> bool {
    let Some(host) = uri.host() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// One attested client for an ACI gateway: the key kept fresh, E2EE on every inference
/// request, receipts verified. Cheap to clone; the background refresher stops when the last
/// clone (and the last [`AciService`] it handed out) is dropped.
///
/// A real gateway, with features `rustls` and `dcap` (`no_run`: it needs the network):
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
///     Ok(answer) => println!("{}", String::from_utf8_lossy(&answer)), // decrypted; receipt checked next
///     Err(e) if e.kind() == ErrorKind::Gateway => eprintln!("gateway refused: {e}"), // non-2xx, with its type
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
    api_key: Option<Zeroizing<String>>,
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
            #[cfg(feature = "dcap")]
            pccs: None,
            #[cfg(feature = "dcap")]
            pccs_roots: Vec::new(),
            egress: Egress::Environment,
            strict: false,
        }
    }

    /// A builder for the crate's local test gateway (feature `test-gateway`): its URL, and a
    /// **dangerous** policy that accepts its stub quote and any workload (TLS, if the gateway
    /// serves it, pinned to its keyset alone). For tests and examples only.
    #[cfg(feature = "test-gateway")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-gateway")))]
    pub fn for_test_gateway(gateway: &crate::gateway::TestGateway) -> ClientBuilder {
        let policy = Policy::builder().dangerous().accept_stub_quote().any_workload().build();
        let builder = Client::builder(gateway.base_url()).tls_pin_only();
        #[cfg(feature = "dcap")]
        let builder = builder.no_pccs();
        match policy {
            Ok(policy) => builder.policy(policy),
            Err(e) => {
                tracing::error!("the test gateway's policy does not build: {e}");
                builder
            }
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
    /// answer, read whole.
    ///
    /// A non-2xx answer is an error of kind [`Gateway`](ErrorKind::Gateway) (the gateway's
    /// error document; [`Error::gateway_error_type`] names its `type`) or, when the body is
    /// not one, [`Transport`](ErrorKind::Transport). No attested key (the refresh failed and the
    /// key expired) is [`KeyUnavailable`](ErrorKind::KeyUnavailable), naming the refresh's error.
    /// With [`ReceiptMode::BeforeRelease`], a receipt that does not verify is the error (kind
    /// [`Receipt`](ErrorKind::Receipt)). A streamed request (`"stream": true`) is read to its
    /// end; use [`service`](Self::service) to read it event by event.
    pub async fn post(&self, path: &str, json: impl Into<Bytes>) -> Result<Bytes> {
        let request = Request::post(self.url(path)?)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(json.into()))
            .map_err(|e| Error::new(ErrorKind::Config, "cannot build the request").with_source(e))?;
        let response = self.service().oneshot(request).await.map_err(ours)?;
        let status = response.status();
        if !status.is_success() {
            let gateway = response.extensions().get::<GatewayError>().cloned();
            let body = Limited::new(response.into_body(), MAX_ERROR_BODY).collect().await.map(|c| c.to_bytes());
            return Err(match (gateway, body) {
                (Some(g), _) if g.error_type.is_some() => g.to_error(),
                (_, Ok(body)) => GatewayError::error_for(status.as_u16(), &body, &format!("POST {path}")),
                (_, Err(_)) => Error::new(ErrorKind::Transport, format!("POST {path}: the gateway answered {status}")),
            });
        }
        Ok(response.into_body().collect().await.map_err(ours)?.to_bytes())
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
    pub fn base_url(&self) -> &Uri {
        &self.inner.base
    }

    /// When receipts are verified.
    pub fn receipt_mode(&self) -> ReceiptMode {
        self.inner.mode
    }

    /// Fetch and verify the receipt of an exchange now (its [`ExchangeRecord`], from the
    /// response's extensions, after the body was read to its end), with the client's API key.
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
        if let Some(value) = self.inner.service.shared.authorization.clone() {
            builder = builder.default_headers(http::HeaderMap::from_iter([(AUTHORIZATION, value)]));
        }
        let client = builder
            .build()
            .map_err(|e| Error::new(ErrorKind::Config, "cannot build the reqwest client").with_source(e))?;
        let e2ee = crate::middleware::E2eeMiddleware::from_layer(self.inner.layer.clone())
            .retry_on_key_mismatch(Some(crate::e2ee::DEFAULT_KEY_MISMATCH_WAIT));
        Ok(reqwest_middleware::ClientBuilder::new(client).with(e2ee).build())
    }
}

/// `{base path}{path_and_query}`.
fn join(base: &Uri, path_and_query: &str) -> Result<Uri> {
    let bad = |e: http::Error| {
        Error::new(ErrorKind::Config, format!("invalid request path {path_and_query:?}")).with_source(e)
    };
    if !path_and_query.starts_with('/') {
        return Err(Error::new(ErrorKind::Config, format!("the request path {path_and_query:?} must start with '/'")));
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
        Err(e) => match Error::find(e.as_ref()).map(|found| (found.kind(), found.to_string())) {
            Some((kind, message)) => Error::new(kind, message).with_source(e),
            None => Error::new(ErrorKind::Transport, "the exchange failed").with_source(e),
        },
    }
}

/// Fetches and verifies receipts.
struct Verifier {
    receipts: ReceiptClient<Plain, RequestBody<Full<Bytes>>>,
    keys: KeyHandle,
    policy: ReceiptPolicy,
}

impl Verifier {
    async fn verify(&self, record: &ExchangeRecord, bearer: Option<&str>) -> Result<VerifiedReceipt> {
        self.receipts.fetch_and_verify(record, bearer, &self.keys, &self.policy).await
    }
}

struct ServiceShared {
    authorization: Option<HeaderValue>,
    /// Set in [`ReceiptMode::Background`].
    background: Option<Arc<Verifier>>,
    _refresher: Arc<RefreshTask>,
}

/// The tower service a [`Client`] hands out: `http::Request<Full<Bytes>>` in, decrypted
/// `http::Response<AciBody>` out. Cheap to clone; while any clone lives, the key refresher runs.
///
/// It adds the client's API key to requests that carry no `Authorization`. In
/// [`ReceiptMode::Background`] a successful E2EE answer carries a [`ReceiptCheck`] in its
/// extensions; in [`ReceiptMode::BeforeRelease`] a buffered answer carries the
/// [`VerifiedReceipt`], a stream a [`StreamVerification`](crate::receipt::StreamVerification).
/// Every answer of an E2EE request carries its [`ExchangeRecord`], and a non-2xx one the
/// [`GatewayError`].
#[derive(Clone)]
pub struct AciService {
    stack: Stack,
    shared: Arc<ServiceShared>,
}

impl fmt::Debug for AciService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AciService").field("background_receipts", &self.shared.background.is_some()).finish()
    }
}

impl Service<Request<Full<Bytes>>> for AciService {
    type Response = Response<AciBody>;
    type Error = BoxError;
    type Future = AciFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        self.stack.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        if let Some(value) = &self.shared.authorization {
            if !req.headers().contains_key(AUTHORIZATION) {
                req.headers_mut().insert(AUTHORIZATION, value.clone());
            }
        }
        let background = self.shared.background.clone().map(|verifier| {
            let bearer = crate::protocol::headers::bearer_token(req.headers()).map(|t| Zeroizing::new(t.to_owned()));
            (verifier, bearer)
        });
        let fut = self.stack.call(req);
        Box::pin(async move {
            let res = fut.await?;
            let Some((verifier, bearer)) = background else { return Ok(res) };
            if !res.status().is_success() {
                return Ok(res);
            }
            let Some(record) = res.extensions().get::<ExchangeRecord>().cloned() else { return Ok(res) };
            let (mut parts, body) = res.into_parts();
            let check = ReceiptCheck::default();
            parts.extensions.insert(check.clone());
            let job = Job { record, bearer, verifier, check };
            Ok(Response::from_parts(parts, VerifyOnEnd { inner: body, job: Some(job) }.boxed_unsync()))
        })
    }
}

/// The background check of an answer's receipt ([`ReceiptMode::Background`]), in the
/// response's extensions. It starts once the body was read to its end.
#[derive(Clone, Default)]
pub struct ReceiptCheck(Arc<CheckState>);

#[derive(Default)]
struct CheckState {
    result: OnceLock<std::result::Result<VerifiedReceipt, (ErrorKind, String)>>,
    done: Notify,
}

impl fmt::Debug for ReceiptCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.0.result.get() {
            None => "pending",
            Some(Ok(_)) => "verified",
            Some(Err(_)) => "failed",
        };
        f.debug_tuple("ReceiptCheck").field(&state).finish()
    }
}

impl ReceiptCheck {
    fn set(&self, result: Result<VerifiedReceipt>) {
        let _ = self.0.result.set(result.map_err(|e| (e.kind(), e.to_string())));
        self.0.done.notify_waiters();
    }

    /// The outcome, once the check finished.
    pub fn result(&self) -> Option<Result<VerifiedReceipt>> {
        self.0.result.get().map(|r| r.clone().map_err(|(kind, message)| Error::new(kind, message)))
    }

    /// Wait for the outcome: the verified receipt, or why it did not verify (kind
    /// [`Receipt`](ErrorKind::Receipt) with its [`ReceiptFailure`], or a fetch error). Resolves
    /// once the body was read to its end and the receipt fetched, or at once when the body
    /// failed or was dropped before its end ([`NotAvailable`](ReceiptFailure::NotAvailable)).
    pub async fn verified(&self) -> Result<VerifiedReceipt> {
        loop {
            let done = self.0.done.notified();
            if let Some(result) = self.result() {
                return result;
            }
            done.await;
        }
    }
}

struct Job {
    record: ExchangeRecord,
    bearer: Option<Zeroizing<String>>,
    verifier: Arc<Verifier>,
    check: ReceiptCheck,
}

impl Job {
    fn start(self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.check.set(Err(Error::new(ErrorKind::Config, "background receipt verification needs a Tokio runtime")));
            return;
        };
        runtime.spawn(async move {
            let result = self.verifier.verify(&self.record, self.bearer.as_ref().map(|b| b.as_str())).await;
            if let Err(e) = &result {
                tracing::error!(receipt = ?self.record.receipt_id(), kind = ?e.kind(), "receipt verification failed: {e}");
            }
            self.check.set(result);
        });
    }

    fn abandon(self, why: &str) {
        let message = format!("the receipt was not checked: {why}");
        self.check.set(Err(Error::new(ErrorKind::Receipt(ReceiptFailure::NotAvailable), message)));
    }
}

/// An answer's body that starts the receipt check at its end.
struct VerifyOnEnd {
    inner: AciBody,
    job: Option<Job>,
}

impl Body for VerifyOnEnd {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => {
                if let Some(job) = this.job.take() {
                    job.start();
                }
            }
            Some(Err(e)) => {
                if let Some(job) = this.job.take() {
                    job.abandon(&format!("the answer failed before its end: {e}"));
                }
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        // Polled once more at the end, so the check starts.
        self.job.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for VerifyOnEnd {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            job.abandon("the answer was dropped before its end");
        }
    }
}
