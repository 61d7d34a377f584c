//! HTTPS bound to the attested keyset (feature `rustls`).
//!
//! ACI §1.1 and §4: a client must pin the TLS key the attested keyset lists for the hostname it
//! connects to (`tls_public_keys[].spki_sha256`, optionally scoped by `domain`) and must request
//! the report through a hostname the keyset lists. WebPKI alone proves nothing here: TLS may
//! terminate outside the workload (a CDN, a load balancer). [`AttestedTls`] does both:
//!
//! - its certificate verifier runs the usual checks (WebPKI to your root store, or, with
//!   [`pin_only`](AttestedTlsBuilder::pin_only), none for self-signed gateways), then requires
//!   the leaf certificate's SPKI SHA-256 to be listed for the hostname in the **current**
//!   keyset of a [`KeyHandle`] (read live, so a rotation that lists a new key is followed after
//!   the provider refreshes). A mismatch fails the handshake before any request byte is written,
//!   with an [`AttestationFailure::ChannelBinding`] error naming the SPKI seen and the ones
//!   attested;
//! - its hyper-util connector ([`AttestedTls::connector`]) speaks HTTP/2 (ALPN `h2`) or
//!   HTTP/1.1 and adds a [`ChannelInfo`] to every response, from which the [`KeyProvider`](crate::attest::KeyProvider) learns the SPKI the
//!   report was served over: a verified keyset that does not list it for the host fails with
//!   `ChannelBinding`;
//! - [`AttestedTls::rustls_config`] is the same verifier for reqwest
//!   (`ClientBuilder::use_preconfigured_tls`).
//!
//! # Bootstrap and pooled connections
//!
//! On first contact there is no keyset: the connector accepts the certificate (after WebPKI, or
//! any certificate in pin-only mode), and the connection is *unattested*. Each request is
//! checked when it starts, against the keyset current then and the SPKI the connection's
//! handshake verified (the [`ChannelInfo`] its responses carry):
//!
//! - a connection whose key the current keyset lists for its host carries any request, over
//!   HTTP/2 or HTTP/1.1, and nothing of the request is read: over HTTP/1.1 a request starts with
//!   the first write after a response was read, over HTTP/2 with a `HEADERS` frame that opens a
//!   stream (frame headers are read, HPACK-coded request headers are not);
//! - a connection whose key the current keyset does not list carries **only report requests**
//!   (`GET …/v1/aci/attestation?nonce=…`): every other request is refused before its first byte
//!   is written. Telling a report request apart takes its request line, so such a connection
//!   speaks HTTP/1.1: the connector offers `h2` in ALPN only when the handshake can accept
//!   nothing but a key the current keyset lists (a keyset is current and the provider is not
//!   fetching a report). A connection accepted before its key was attested serves the one
//!   request it was opened for and is never reused by hyper-util's pool (it is *poisoned*), so
//!   the first request after the provider establishes opens a new connection, whose handshake
//!   the keyset pins, and which speaks HTTP/2 when the gateway offers it.
//!
//! Once a keyset is current, a handshake presenting an unlisted key is refused — except while
//! the key provider fetches a report, so that a gateway that restarted with a new certificate
//! can be re-attested; such a connection is again limited to report requests. A refused
//! handshake asks the provider's refresher to re-attest. When a newly published keyset no
//! longer lists a pooled connection's key, the connection closes itself: over HTTP/1.1 once it
//! is idle, over HTTP/2 at once (its open streams fail). The provider revokes a connection that
//! served a report whose keyset does not list it. Should a request still reach an HTTP/2
//! connection whose key is no longer listed (the keyset expired, or a request raced the close),
//! the stream is refused before its `HEADERS` frame is written and the connection closes; h2
//! gives the stream a bare "stream closed" error, and the reason is logged at `warn`.
//!
//! TLS session resumption is disabled in both configurations: a resumed session skips the
//! certificate verifier, so every connection runs a full handshake and the pin check.
//!
//! reqwest's pool cannot be gated: its configuration ([`AttestedTls::rustls_config`]) refuses
//! every handshake until a keyset is current, and checks the key at each handshake.
//!
//! # Egress through an HTTP proxy
//!
//! On a network that lets traffic out only through an HTTP proxy, the connector opens a
//! `CONNECT host:port` tunnel through it for each connection and runs the TLS handshake inside:
//! TLS is end to end, the SPKI pin and the per-request gate are unchanged, and the proxy sees
//! the `CONNECT` line only. Every connection the connector makes goes this way: the report
//! fetch, the PCCS fetch (an [unpinned host](AttestedTlsBuilder::unpinned_host)), the E2EE
//! requests and the receipt fetches.
//!
//! - By default the proxy is read from the environment when the connector is
//!   [built](AttestedTlsBuilder::build), as curl and reqwest read it: `HTTPS_PROXY`, else
//!   `https_proxy` (`HTTP_PROXY` is for plain `http://` and is never used; neither is
//!   `ALL_PROXY`). The hosts `NO_PROXY` (else `no_proxy`) lists are reached directly, with
//!   curl's rules as hyper-util implements them (`example.com` and `.example.com` cover the
//!   domain and its subdomains, IP addresses and CIDR blocks, `*` for all), and so are loopback
//!   hosts (`localhost`, `127.0.0.0/8`, `::1`), as Go does.
//! - [`https_proxy`](AttestedTlsBuilder::https_proxy) names the proxy for every host (loopback
//!   included); [`no_proxy`](AttestedTlsBuilder::no_proxy) connects directly. Either way the
//!   environment is not read.
//!
//! The proxy URL is `http://[user:password@]host[:port]` ([`HttpsProxy`]); its credentials go
//! in `Proxy-Authorization: Basic …`, are zeroized, and are never logged or printed. A proxy
//! that answers `CONNECT` with anything but `2xx` fails the connection with a
//! [`Transport`](ErrorKind::Transport) error naming the proxy, the target and the status (`403`
//! and `407` say what to do). A proxy that terminates TLS itself (an inspection appliance
//! presenting its own certificate for the gateway's name) presents a key the attested keyset
//! does not list: it is refused with `ChannelBinding`, even when its CA is in the root store,
//! and no request reaches it. For such an appliance, the PCCS (which is not pinned) may accept
//! its CA through [`unpinned_extra_root`](AttestedTlsBuilder::unpinned_extra_root); the gateway
//! never does.
//!
//! reqwest connects on its own: the clients the crate builds over [`rustls_config`](AttestedTls::rustls_config)
//! (`Client::reqwest`, `middleware::ReqwestService::pinned`) are given the same proxy, but
//! reqwest 0.12 reports no TLS information for a tunnelled connection, so their answers cannot be
//! bound to the attested channel and fail closed with `ChannelBinding`. Behind a proxy, use
//! this connector.
//!
//! ```no_run
//! use tower_aci::attest::KeyHandle;
//! use tower_aci::tls::AttestedTls;
//!
//! # fn run(appliance_ca: rustls::pki_types::CertificateDer<'static>) -> tower_aci::Result<()> {
//! let keys = KeyHandle::new();
//! let tls = AttestedTls::builder(keys)
//!     .with_webpki_roots()
//!     .unpinned_host("pccs.phala.network")
//!     .https_proxy("http://proxy.corp.example:3128") // or leave it out: HTTPS_PROXY / NO_PROXY
//!     .unpinned_extra_root(appliance_ca) // only if the proxy re-signs TLS; the PCCS only
//!     .build()?;
//! assert_eq!(tls.https_proxy().map(|p| p.authority()), Some("proxy.corp.example:3128"));
//! let connector = tls.connector(); // CONNECT proxy.corp.example:3128, then TLS pinned as ever
//! # let _ = connector; Ok(()) }
//! ```
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower_aci::attest::{KeyHandle, KeyProvider, Policy};
//! use tower_aci::e2ee::RequestBody;
//! use tower_aci::tls::AttestedTls;
//!
//! # async fn run(roots: rustls::RootCertStore) -> Result<(), tower_aci::BoxError> {
//! # const COMPOSE_HASH: &str = "5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb";
//! # const MRTD: &str = "f06dfda6dce1cf904d4e2bab1dc370634cf95cefa2ceb2de2eee127c9382698090d7a4a13e14c536ec6c9c3c8fa87077";
//! # const RTMR0: &str = "ec216f1d1d591468ff4741b9b192f016b26d3f90303bfa9dbb97557273853183981f21a4bcb3ae908247538d371ad072";
//! # const RTMR1: &str = "07e6f51aa763abfe75c3ddfbf4f425fe3f0ceff66d807a75e049303dce9addf68e7218729bd419638af63a370f65878c";
//! # const RTMR2: &str = "a2a58c9a959a4fa44bd6da0c97a2270c051faf12084cfe91ae900e4fdff6cdd4f69a82005e04ee920f231497894d677f";
//! # const KMS_IDENTITY: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200048844eb42ccdf8c52fd4f174f362fcb9bbd19c45fd48f1edec2d8f1ca23536ec1a74021b4cee610c074f8294d431b2b7fee2c39e5333fdaf0a4522d43fb159d9f";
//! let keys = KeyHandle::new();
//! let tls = AttestedTls::builder(keys.clone()).root_store(roots).build()?;
//! // One client for the key provider, the E2EE layer and the receipt client.
//! let http: Client<_, RequestBody<Full<Bytes>>> = Client::builder(TokioExecutor::new()).build(tls.connector());
//! let provider = KeyProvider::builder(http.clone())
//!     .handle(keys)
//!     .base_url("https://api.redpill.ai".parse()?)
//!     .policy(
//!         // The sound combination (the real June 2026 capture's values; `aci-proxy inspect`).
//!         Policy::builder()
//!             .allow_compose_hash(COMPOSE_HASH)
//!             .allow_boot_measurements(MRTD, RTMR0, RTMR1, RTMR2)
//!             .allow_kms_identity(KMS_IDENTITY)
//!             .build()?,
//!     )
//!     .build()?;
//! provider.establish().await?; // fails with ChannelBinding if the keyset does not list the TLS key
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower_service::Service;

pub use crate::egress::HttpsProxy;

use crate::attest::channel::{ChannelState, attested_for};
use crate::attest::keyset::normalize_host;
use crate::attest::{AttestedKeyset, ChannelInfo, KeyHandle};
use crate::egress::{self, Egress};
use crate::error::{AttestationFailure, BoxError, Error, ErrorKind, Result};
use crate::hex;

/// The report path a connection whose key is not attested may still carry.
const ATTESTATION_PATH: &[u8] = b"/v1/aci/attestation";

/// SHA-256 of the SubjectPublicKeyInfo (DER, with its `SEQUENCE` header) of an X.509
/// certificate: the value `tls_public_keys[].spki_sha256` lists, in bytes.
///
/// Fails with `Malformed` when the certificate is not X.509 DER.
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Result<[u8; 32]> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| Error::malformed(format!("the certificate is not X.509 DER: {e}")))?;
    Ok(Sha256::digest(ee.subject_public_key_info().as_ref()).into())
}

fn channel_error(message: String) -> Error {
    Error::attestation(AttestationFailure::ChannelBinding, message)
}

fn config_error(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::Config, message)
}

/// `host` as a rustls server name sees it: a DNS name, or an IP address in text.
fn host_of(server_name: &ServerName<'_>) -> String {
    match server_name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// Whether `keyset` lists the SPKI (lowercase hex) for `host`.
fn lists(keyset: &AttestedKeyset, host: &str, spki_hex: &str) -> bool {
    keyset.tls_keys_for_host(host).any(|k| k.spki_sha256 == spki_hex)
}

/// Builds an [`AttestedTls`]. Created by [`AttestedTls::builder`]; methods take and return the
/// builder by value, and an invalid value surfaces from [`build`](Self::build).
#[must_use]
pub struct AttestedTlsBuilder {
    keys: KeyHandle,
    roots: Option<RootCertStore>,
    pin_only: bool,
    http1_only: bool,
    unpinned: Vec<String>,
    unpinned_roots: Vec<CertificateDer<'static>>,
    /// `None`: read the environment at `build`.
    egress: Option<Egress>,
    error: Option<Error>,
}

impl fmt::Debug for AttestedTlsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedTlsBuilder")
            .field("roots", &self.roots.as_ref().map(RootCertStore::len))
            .field("pin_only", &self.pin_only)
            .field("http1_only", &self.http1_only)
            .field("unpinned", &self.unpinned)
            .field("unpinned_extra_roots", &self.unpinned_roots.len())
            .field("egress", &self.egress)
            .finish_non_exhaustive()
    }
}

impl AttestedTlsBuilder {
    fn fail(mut self, e: Error) -> Self {
        self.error.get_or_insert(e);
        self
    }

    /// Verify certificates to these roots (WebPKI) before the pin check. Replaces roots given
    /// before.
    pub fn root_store(mut self, roots: RootCertStore) -> Self {
        self.roots = Some(roots);
        self
    }

    /// Mozilla's root store, as `webpki-roots` ships it.
    pub fn with_webpki_roots(self) -> Self {
        let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        self.root_store(roots)
    }

    /// The platform's root store, as `rustls-native-certs` loads it (feature
    /// `rustls-native-roots`). Fails at `build` when no root could be loaded.
    #[cfg(feature = "rustls-native-roots")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls-native-roots")))]
    pub fn with_native_roots(self) -> Self {
        let loaded = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            return self.fail(config_error(format!(
                "no root certificate could be loaded from the platform store ({} errors)",
                loaded.errors.len()
            )));
        }
        self.root_store(roots)
    }

    /// No WebPKI for pinned hosts: the attested keyset is the only trust anchor, for gateways
    /// with self-signed certificates. The handshake signature is still verified (the server
    /// proves it holds the key of the SPKI), and until a keyset lists that SPKI the connection
    /// carries only report requests, which the provider then binds to the connection's SPKI.
    pub fn pin_only(mut self) -> Self {
        self.pin_only = true;
        self
    }

    /// Offer only `http/1.1` in ALPN, never `h2`: for a gateway or a middlebox that mishandles
    /// HTTP/2. By default the connector offers `h2` and `http/1.1` on connections whose key the
    /// current keyset lists (see [Bootstrap and pooled connections](self#bootstrap-and-pooled-connections)).
    pub fn http1_only(mut self) -> Self {
        self.http1_only = true;
        self
    }

    /// A host verified with WebPKI only, not pinned to the keyset: another service the same
    /// client reaches, such as the PCCS the key provider fetches collateral from
    /// ([`KeyProviderBuilder::pccs`](crate::attest::KeyProviderBuilder::pccs)). Every other host
    /// is pinned. Needs a root store.
    pub fn unpinned_host(mut self, host: impl Into<String>) -> Self {
        let host = host.into();
        let normalized = normalize_host(&host).to_ascii_lowercase();
        if normalized.is_empty() {
            return self.fail(config_error("an unpinned host is empty"));
        }
        self.unpinned.push(normalized);
        self
    }

    /// One more root certificate for the [unpinned hosts](Self::unpinned_host) (the PCCS) only:
    /// for a network whose egress proxy inspects TLS and re-signs what it forwards with its own
    /// CA. Their certificates may chain to it besides the root store; the gateway's never do
    /// (and its key is pinned to the attested keyset whatever CA signed it). Fails at
    /// [`build`](Self::build) when the certificate is not a usable root, or no host is unpinned.
    pub fn unpinned_extra_root(mut self, cert: CertificateDer<'static>) -> Self {
        self.unpinned_roots.push(cert);
        self
    }

    /// Connect through this HTTP proxy (`http://[user:password@]host[:port]`; see
    /// [`HttpsProxy`]) to every host, opening a `CONNECT` tunnel for each connection; the TLS
    /// handshake and the pin run inside it, end to end. `HTTPS_PROXY` and `NO_PROXY` are then not
    /// read. An invalid URL fails at [`build`](Self::build) (without repeating it).
    ///
    /// By default the proxy comes from the environment: `HTTPS_PROXY` (else `https_proxy`),
    /// except for the hosts `NO_PROXY` (else `no_proxy`) lists and loopback; see the
    /// [module documentation](self#egress-through-an-http-proxy).
    pub fn https_proxy(mut self, url: impl AsRef<str>) -> Self {
        match HttpsProxy::parse(url.as_ref()) {
            Ok(proxy) => self.egress = Some(Egress::Always(Arc::new(proxy))),
            Err(e) => return self.fail(e),
        }
        self
    }

    /// Connect directly to every host: `HTTPS_PROXY` and `NO_PROXY` are not read.
    pub fn no_proxy(mut self) -> Self {
        self.egress = Some(Egress::Direct);
        self
    }

    /// [`https_proxy`](Self::https_proxy) with a proxy already parsed ([`HttpsProxy::parse`],
    /// for example from a configuration file), as
    /// [`ClientBuilder::with_https_proxy`](crate::ClientBuilder::with_https_proxy) takes it.
    pub fn with_https_proxy(self, proxy: HttpsProxy) -> Self {
        self.egress(Some(proxy))
    }

    /// The proxy settings of a [`ClientBuilder`](crate::Client), already parsed.
    pub(crate) fn egress(mut self, proxy: Option<HttpsProxy>) -> Self {
        if let Some(proxy) = proxy {
            self.egress = Some(Egress::Always(Arc::new(proxy)));
        }
        self
    }

    /// The configuration, or a [`Config`](ErrorKind::Config) error: a trust mode must be chosen
    /// (a root store, or `pin_only()`), unpinned hosts need a root store (or an
    /// [extra root](Self::unpinned_extra_root)), and `HTTPS_PROXY`, when it is read and set,
    /// must be a proxy URL.
    pub fn build(self) -> Result<AttestedTls> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = |roots: RootCertStore| {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| config_error(format!("cannot build the WebPKI verifier: {e}")))
        };
        if !self.unpinned_roots.is_empty() && self.unpinned.is_empty() {
            return Err(config_error(
                "an extra root for unpinned hosts, but no host is unpinned: it would never apply (name the PCCS \
                 with unpinned_host)",
            ));
        }
        let (webpki, unpinned_webpki) = match self.roots {
            None if !self.pin_only => {
                return Err(config_error(
                    "choose how certificates are checked before the pin: root_store(…) / with_webpki_roots() / \
                     with_native_roots() for WebPKI, or pin_only() for self-signed gateways",
                ));
            }
            None if !self.unpinned.is_empty() && self.unpinned_roots.is_empty() => {
                return Err(config_error("unpinned hosts are verified with WebPKI and need a root store"));
            }
            Some(roots) if roots.is_empty() => return Err(config_error("the root store is empty")),
            roots => {
                // The gateway's roots, and the unpinned hosts' (the same plus the extra ones).
                let mut unpinned = roots.clone().unwrap_or_else(RootCertStore::empty);
                for cert in &self.unpinned_roots {
                    unpinned.add(cert.clone()).map_err(|e| {
                        config_error(format!("the extra root for unpinned hosts is not a usable root certificate: {e}"))
                    })?;
                }
                let unpinned = if self.unpinned.is_empty() { None } else { Some(verifier(unpinned)?) };
                (roots.map(verifier).transpose()?, unpinned)
            }
        };
        let egress = match self.egress {
            Some(egress) => egress,
            None => Egress::from_env()?,
        };
        let shared = Arc::new(Shared {
            keys: self.keys,
            webpki,
            unpinned_webpki,
            pin_only: self.pin_only,
            unpinned: self.unpinned,
            provider,
            egress,
        });
        let h1 = Arc::new(client_config(&shared, Mode::Gated, &[HTTP1])?);
        let h2 =
            if self.http1_only { h1.clone() } else { Arc::new(client_config(&shared, Mode::Gated, &[H2, HTTP1])?) };
        let strict = Arc::new(client_config(&shared, Mode::Strict, &[HTTP1])?);
        Ok(AttestedTls { shared, h1, h2, strict })
    }
}

/// TLS bound to an attested keyset: a hyper-util connector and a rustls configuration whose
/// certificate verifier pins the gateway's TLS key to the keyset's `tls_public_keys`. See the
/// [module documentation](self). Cheap to clone.
#[derive(Clone)]
pub struct AttestedTls {
    shared: Arc<Shared>,
    /// The connector's (gated) configuration offering `http/1.1` only: for connections that may
    /// present a key the current keyset does not list (they carry report requests only).
    h1: Arc<ClientConfig>,
    /// The connector's (gated) configuration offering `h2` and `http/1.1` (`h1` again with
    /// `http1_only`).
    h2: Arc<ClientConfig>,
    /// reqwest's (strict) configuration.
    strict: Arc<ClientConfig>,
}

impl fmt::Debug for AttestedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedTls")
            .field("webpki", &self.shared.webpki.is_some())
            .field("pin_only", &self.shared.pin_only)
            .field("unpinned", &self.shared.unpinned)
            .field("egress", &self.shared.egress)
            .finish_non_exhaustive()
    }
}

impl AttestedTls {
    /// A builder pinning to the keysets `keys` holds: make it with [`KeyHandle::new`] and hand
    /// the same handle to the key provider
    /// ([`KeyProviderBuilder::handle`](crate::attest::KeyProviderBuilder::handle)).
    pub fn builder(keys: KeyHandle) -> AttestedTlsBuilder {
        AttestedTlsBuilder {
            keys,
            roots: None,
            pin_only: false,
            http1_only: false,
            unpinned: Vec::new(),
            unpinned_roots: Vec::new(),
            egress: None,
            error: None,
        }
    }

    /// The HTTP proxy connections go through (for the hosts it applies to), if any: the one
    /// given to [`https_proxy`](AttestedTlsBuilder::https_proxy) or read from `HTTPS_PROXY`.
    pub fn https_proxy(&self) -> Option<&HttpsProxy> {
        self.shared.egress.proxy()
    }

    /// The HTTP proxy the connection to `dst` (an `https://` URI) goes through, if any: a proxy
    /// given to the builder applies to every host; one read from `HTTPS_PROXY` to every host but
    /// loopback and those `NO_PROXY` lists. For a log line naming the route.
    pub fn proxy_for(&self, dst: &Uri) -> Option<&HttpsProxy> {
        self.shared.egress.route(dst).map(|p| &**p)
    }

    /// The same egress for a reqwest client the crate builds (which connects on its own): each
    /// URL through the proxy this connector would use for it, or directly. Apply it with
    /// `builder.proxy(p)`, or `builder.no_proxy()` for `None`; either turns reqwest's own
    /// reading of the environment off.
    #[cfg(feature = "reqwest-middleware")]
    pub(crate) fn reqwest_proxy(&self) -> Result<Option<reqwest::Proxy>> {
        let Some(configured) = self.shared.egress.proxy() else { return Ok(None) };
        let shared = self.shared.clone();
        let mut proxy = reqwest::Proxy::custom(move |url| {
            let dst: Uri = url.as_str().parse().ok()?;
            shared.egress.route(&dst).map(|p| p.to_string())
        });
        if let Some(auth) = configured.authorization() {
            let mut value = http::HeaderValue::from_bytes(auth)
                .map_err(|_| config_error("the proxy credentials are not a header value"))?;
            value.set_sensitive(true);
            proxy = proxy.custom_http_auth(value);
        }
        Ok(Some(proxy))
    }

    /// The handle the verifier reads.
    pub fn keys(&self) -> &KeyHandle {
        &self.shared.keys
    }

    /// A hyper-util connector (HTTPS only) over hyper-util's `HttpConnector` (TCP_NODELAY on).
    pub fn connector(&self) -> AttestedConnector<HttpConnector> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        self.connector_with(tcp)
    }

    /// A hyper-util connector over your own TCP connector (a custom resolver, timeouts, …). It
    /// must connect `https://` URIs (for `HttpConnector`: `enforce_http(false)`).
    pub fn connector_with<C>(&self, tcp: C) -> AttestedConnector<C> {
        AttestedConnector {
            tcp,
            h1: tokio_rustls::TlsConnector::from(self.h1.clone()),
            h2: tokio_rustls::TlsConnector::from(self.h2.clone()),
            shared: self.shared.clone(),
        }
    }

    /// The same verifier as a rustls configuration, for reqwest
    /// (`reqwest::ClientBuilder::use_preconfigured_tls`, reqwest feature `rustls-tls-*`; this
    /// crate's `rustls` feature enables it when `reqwest-middleware` is on).
    ///
    /// reqwest's connections cannot be gated per request, so this configuration is stricter:
    /// every handshake with a pinned host is refused until a keyset is current (establish the
    /// key provider first, over [`connector`](Self::connector)), and then the key must be listed.
    /// A connection stays pooled after a later keyset stops listing its key; reqwest closes idle
    /// connections after 90 s by default.
    ///
    /// TLS session resumption is disabled: a resumed session skips the certificate verifier,
    /// so every connection runs the full handshake and the pin check against the keyset current
    /// then. ALPN offers `http/1.1` only; with reqwest's `http2` feature you may add `h2` to
    /// `alpn_protocols` (the check is per handshake, so both protocols are pinned alike).
    pub fn rustls_config(&self) -> ClientConfig {
        (*self.strict).clone()
    }

    /// The connector's (gated) configuration: it accepts an unattested key while bootstrapping
    /// or attesting. Only for a transport that carries nothing but report requests over it
    /// (`middleware::ReqwestService`'s report client).
    #[cfg_attr(not(feature = "reqwest-middleware"), allow(dead_code))]
    pub(crate) fn report_rustls_config(&self) -> ClientConfig {
        (*self.h1).clone()
    }
}

/// What the verifier does when no keyset lists the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The connector's: accept while bootstrapping or attesting (the gate limits the
    /// connection to report requests).
    Gated,
    /// reqwest's: refuse.
    Strict,
}

struct Shared {
    keys: KeyHandle,
    /// WebPKI for pinned hosts (the root store only).
    webpki: Option<Arc<WebPkiServerVerifier>>,
    /// WebPKI for unpinned hosts (the root store and the extra roots); set when a host is
    /// unpinned.
    unpinned_webpki: Option<Arc<WebPkiServerVerifier>>,
    pin_only: bool,
    unpinned: Vec<String>,
    provider: Arc<CryptoProvider>,
    egress: Egress,
}

impl Shared {
    fn is_pinned(&self, host: &str) -> bool {
        let host = normalize_host(host);
        !self.unpinned.iter().any(|u| u.eq_ignore_ascii_case(host))
    }
}

/// ALPN protocol IDs.
const H2: &[u8] = b"h2";
const HTTP1: &[u8] = b"http/1.1";

fn client_config(shared: &Arc<Shared>, mode: Mode, alpn: &[&[u8]]) -> Result<ClientConfig> {
    let verifier = Arc::new(PinningVerifier { shared: shared.clone(), mode });
    let mut config = ClientConfig::builder_with_provider(shared.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(format!("cannot configure TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // A resumed session skips the certificate verifier, and with it the pin: every connection
    // runs a full handshake, checked against the keyset current then.
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// The certificate verifier: WebPKI (unless pin-only), then the pin.
struct PinningVerifier {
    shared: Arc<Shared>,
    mode: Mode,
}

impl fmt::Debug for PinningVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinningVerifier").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl PinningVerifier {
    fn refuse(&self, message: String) -> rustls::Error {
        self.shared.keys.request_refresh();
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(channel_error(message)))))
    }
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let shared = &self.shared;
        let host = host_of(server_name);
        if !shared.is_pinned(&host) {
            // An ordinary WebPKI host (the PCCS); `build` made its verifier.
            let Some(webpki) = &shared.unpinned_webpki else {
                return Err(rustls::Error::General(format!("no WebPKI verifier for the unpinned host {host}")));
            };
            webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        // The gateway: its root store only (never the unpinned hosts' extra roots), then the pin.
        if let (Some(webpki), false) = (&shared.webpki, shared.pin_only) {
            webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        let spki =
            spki_sha256(end_entity).map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let seen = hex::encode(spki);
        match shared.keys.current_valid() {
            Some(keyset) if lists(&keyset, &host, &seen) => Ok(ServerCertVerified::assertion()),
            // A report fetch may meet a restarted gateway's new key; the gate lets the
            // connection carry only report requests until a keyset lists the key.
            Some(_) if self.mode == Mode::Gated && shared.keys.is_attesting() => Ok(ServerCertVerified::assertion()),
            Some(keyset) => Err(self.refuse(format!(
                "refused the TLS handshake with {host}: its certificate's SPKI sha256 {seen} is not in the attested \
                 keyset {digest} for {host} (attested: {attested})",
                digest = keyset.digest(),
                attested = attested_for(&keyset, &host),
            ))),
            None if self.mode == Mode::Gated => Ok(ServerCertVerified::assertion()),
            None => Err(self.refuse(format!(
                "refused the TLS handshake with {host} (SPKI sha256 {seen}): no attested keyset is current to pin it \
                 to; establish the key provider first"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.shared.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.shared.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.shared.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A hyper-util connector speaking TLS pinned to the attested keyset, made by
/// [`AttestedTls::connector`]. Every response carries a [`ChannelInfo`] in its extensions.
#[derive(Clone)]
pub struct AttestedConnector<C> {
    tcp: C,
    /// Offers `http/1.1` only.
    h1: tokio_rustls::TlsConnector,
    /// Offers `h2` and `http/1.1` (unless `http1_only`).
    h2: tokio_rustls::TlsConnector,
    shared: Arc<Shared>,
}

impl<C> fmt::Debug for AttestedConnector<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedConnector").finish_non_exhaustive()
    }
}

/// The future of [`AttestedConnector`]'s `call`.
pub type ConnectFuture<T> = Pin<Box<dyn Future<Output = std::result::Result<AttestedStream<T>, BoxError>> + Send>>;

impl<C> Service<Uri> for AttestedConnector<C>
where
    C: Service<Uri> + Send + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Connection + Unpin + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = AttestedStream<C::Response>;
    type Error = BoxError;
    type Future = ConnectFuture<C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        if dst.scheme_str() != Some("https") {
            let e = config_error(format!("the attested TLS connector speaks https only, not {dst}"));
            return Box::pin(async move { Err(e.into()) });
        }
        let host = dst.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_owned();
        let server_name = match ServerName::try_from(host.clone()) {
            Ok(n) => n,
            Err(_) => {
                let e = config_error(format!("{host:?} is not a DNS name or IP address"));
                return Box::pin(async move { Err(e.into()) });
            }
        };
        let keys = self.shared.keys.clone();
        let pinned = self.shared.is_pinned(&host);
        // HTTP/2 requests cannot be told apart on the wire, so `h2` is offered only when the
        // handshake can accept nothing but a key the current keyset lists: not before the first
        // keyset, nor while the provider fetches a report (when a restarted gateway's new key
        // is let through for report requests, over HTTP/1.1).
        let offer_h2 = !pinned || (keys.current_valid().is_some() && !keys.is_attesting());
        let tls = if offer_h2 { self.h2.clone() } else { self.h1.clone() };
        // Through an HTTP proxy: TCP to the proxy, a CONNECT tunnel to the host, TLS inside it.
        let proxy = self.shared.egress.route(&dst).cloned();
        let port = dst.port_u16().unwrap_or(443);
        let tcp = match &proxy {
            Some(p) => self.tcp.call(p.uri().clone()),
            None => self.tcp.call(dst),
        };
        Box::pin(async move {
            let io = tcp.await.map_err(|e| {
                let to = match &proxy {
                    Some(p) => format!("the HTTPS proxy {p} (for {host})"),
                    None => host.clone(),
                };
                Error::new(ErrorKind::Transport, format!("connecting to {to} failed")).with_source(e)
            })?;
            let io = match &proxy {
                Some(p) => egress::tunnel(io, p, &host, port).await?,
                None => io,
            };
            let stream = tls.connect(server_name, TokioIo::new(io)).await.map_err(|e| handshake_error(e, &host))?;
            let session = stream.get_ref().1;
            let h2 = session.alpn_protocol() == Some(H2);
            let leaf = session
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| Error::new(ErrorKind::Transport, format!("{host} presented no certificate")))?;
            let spki = spki_sha256(leaf)?;
            let info = ChannelInfo::new(&host, spki, Arc::new(ChannelState::default()));
            let mut gate = Gate::new(stream, keys, info, pinned, h2);
            // A connection whose key no keyset lists yet serves one report request (HTTP/1.1).
            gate.report_only = pinned && !gate.listed().0;
            if gate.report_only && h2 {
                // The provider started attesting during the handshake, which then let an
                // unlisted key through: such a connection must speak HTTP/1.1.
                let message = format!(
                    "not using the HTTP/2 connection to {host}: the TLS key it presented (SPKI sha256 {seen}) is not in \
                     the current attested keyset; retry once the key provider has re-attested",
                    seen = gate.spki_hex,
                );
                return Err(channel_error(message).into());
            }
            Ok(AttestedStream { io: TokioIo::new(gate) })
        })
    }
}

/// A refused handshake as our error (kind `Attestation(ChannelBinding)`), anything else as a
/// transport error.
fn handshake_error(e: io::Error, host: &str) -> BoxError {
    if let Some(ours) = Error::find(&e) {
        return Error::new(ours.kind(), ours.to_string()).into();
    }
    Error::new(ErrorKind::Transport, format!("the TLS handshake with {host} failed")).with_source(e).into()
}

/// A TLS connection made by [`AttestedConnector`]: hyper-util IO that refuses to start a
/// request the current keyset does not allow over it (see the
/// [module documentation](self#bootstrap-and-pooled-connections)), over HTTP/1.1 or HTTP/2.
pub struct AttestedStream<T> {
    io: TokioIo<Gate<T>>,
}

impl<T> fmt::Debug for AttestedStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gate = self.io.inner();
        f.debug_struct("AttestedStream")
            .field("channel", &gate.info)
            .field("http2", &gate.is_h2())
            .field("report_only", &gate.report_only)
            .finish_non_exhaustive()
    }
}

impl<T> AttestedStream<T> {
    /// Whether the host is pinned to the keyset (not an
    /// [`unpinned_host`](AttestedTlsBuilder::unpinned_host)).
    pub fn is_pinned(&self) -> bool {
        self.io.inner().pinned
    }

    /// The channel: host and the SPKI the server presented.
    pub fn channel(&self) -> &ChannelInfo {
        &self.io.inner().info
    }

    /// Whether the server chose HTTP/2 (ALPN `h2`).
    pub fn is_http2(&self) -> bool {
        self.io.inner().is_h2()
    }
}

impl<T: Connection + hyper::rt::Read + hyper::rt::Write + Unpin> Connection for AttestedStream<T> {
    fn connected(&self) -> Connected {
        let gate = self.io.inner();
        let mut connected = gate.tls.get_ref().0.inner().connected();
        if gate.is_h2() {
            connected = connected.negotiated_h2();
        }
        if gate.report_only {
            // Accepted before its key was attested: it carries the one report request it was
            // opened for, and the pool never hands it out again.
            connected.poison();
        }
        // Responses of pinned hosts name their channel (the provider checks it for reports).
        if gate.pinned { connected.extra(gate.info.clone()) } else { connected }
    }
}

impl<T: hyper::rt::Read + hyper::rt::Write + Unpin> hyper::rt::Read for AttestedStream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Read + hyper::rt::Write + Unpin> hyper::rt::Write for AttestedStream<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

type Watch = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Resolves when the handle publishes a keyset.
fn watch_publish(keys: &KeyHandle) -> Watch {
    let shared = keys.shared.clone();
    Box::pin(async move { shared.published.notified().await })
}

/// How the gate finds where a request starts in what the client writes.
enum Framing {
    /// HTTP/1.1: the first write after data was read (or the first write at all) starts a
    /// request.
    Http1 {
        /// The next write starts a request.
        request_start: bool,
    },
    /// HTTP/2: a `HEADERS` frame on a stream the client has not used before starts a request.
    Http2(H2Frames),
}

/// HTTP/2 frame boundaries in the client's byte stream (RFC 9113 §3.4, §4.1): the connection
/// preface, then frames of a 9-byte header (24-bit length, type, flags, 31-bit stream ID) and
/// a payload. Only headers are read; HPACK-coded request headers are not decoded.
#[derive(Clone, Copy, Debug)]
struct H2Frames {
    /// Bytes of the connection preface still to come.
    preface: usize,
    header: [u8; 9],
    /// Bytes of `header` filled.
    filled: usize,
    /// Payload bytes of the current frame still to come.
    payload: usize,
    /// The highest stream ID a `HEADERS` frame has opened.
    last_stream: u32,
}

/// `HEADERS` (RFC 9113 §6.2).
const FRAME_HEADERS: u8 = 0x1;

impl H2Frames {
    fn new() -> Self {
        // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        H2Frames { preface: 24, header: [0; 9], filled: 0, payload: 0, last_stream: 0 }
    }

    /// Move past `bytes`; whether they complete the header of a frame that opens a stream.
    fn advance(&mut self, mut bytes: &[u8]) -> bool {
        let mut opens = false;
        while !bytes.is_empty() {
            let skip = if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                n
            } else if self.payload > 0 {
                let n = self.payload.min(bytes.len());
                self.payload -= n;
                n
            } else {
                let n = (9 - self.filled).min(bytes.len());
                self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
                self.filled += n;
                if self.filled == 9 {
                    let h = self.header;
                    self.filled = 0;
                    self.payload = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    if h[3] == FRAME_HEADERS && stream > self.last_stream {
                        self.last_stream = stream;
                        opens = true;
                    }
                }
                n
            };
            bytes = &bytes[skip..];
        }
        opens
    }

    /// Whether writing `bufs` would open a stream (the state is left as it is).
    fn would_open(&self, bufs: &[io::IoSlice<'_>]) -> bool {
        let mut probe = *self;
        let mut opens = false;
        for b in bufs {
            opens |= probe.advance(b);
        }
        opens
    }

    /// Move past the first `n` bytes of `bufs` (the ones written).
    fn advance_written(&mut self, bufs: &[io::IoSlice<'_>], mut n: usize) {
        for b in bufs {
            if n == 0 {
                break;
            }
            let take = n.min(b.len());
            self.advance(&b[..take]);
            n -= take;
        }
    }
}

/// The per-request gate around the TLS stream.
struct Gate<T> {
    tls: tokio_rustls::client::TlsStream<TokioIo<T>>,
    keys: KeyHandle,
    info: ChannelInfo,
    spki_hex: String,
    framing: Framing,
    /// The key was not listed when the connection was made: it serves report requests only,
    /// and the pool does not reuse it.
    report_only: bool,
    /// The keyset last checked, and whether it lists this connection's key.
    checked: Option<(Arc<AttestedKeyset>, bool)>,
    published: Watch,
    /// An unpinned host's connection is not gated.
    pinned: bool,
}

impl<T> Gate<T> {
    fn new(
        tls: tokio_rustls::client::TlsStream<TokioIo<T>>,
        keys: KeyHandle,
        info: ChannelInfo,
        pinned: bool,
        h2: bool,
    ) -> Self {
        let published = watch_publish(&keys);
        let spki_hex = info.spki_sha256_hex();
        let framing = if h2 { Framing::Http2(H2Frames::new()) } else { Framing::Http1 { request_start: true } };
        Gate { tls, keys, info, spki_hex, framing, report_only: false, checked: None, published, pinned }
    }

    fn is_h2(&self) -> bool {
        matches!(self.framing, Framing::Http2(_))
    }

    /// Whether the keyset current now lists this connection's key for its host.
    fn listed(&mut self) -> (bool, Option<Arc<AttestedKeyset>>) {
        let Some(keyset) = self.keys.current_valid() else {
            return (false, None);
        };
        if let Some((k, listed)) = &self.checked {
            if Arc::ptr_eq(k, &keyset) {
                return (*listed, Some(keyset));
            }
        }
        let listed = lists(&keyset, self.info.host(), &self.spki_hex);
        self.checked = Some((keyset.clone(), listed));
        (listed, Some(keyset))
    }

    /// The start of a request: allowed when the current keyset lists the connection's key, or,
    /// over HTTP/1.1, for a report request (`head` is the first bytes of the request; `None`
    /// for an HTTP/2 stream, whose request cannot be read).
    fn admit(&mut self, head: Option<&[u8]>) -> io::Result<()> {
        if !self.pinned {
            return Ok(());
        }
        let (listed, keyset) = self.listed();
        if listed || head.is_some_and(is_report_request) {
            return Ok(());
        }
        let host = self.info.host();
        let message = match keyset {
            Some(k) => format!(
                "not sending a request to {host}: the TLS key it presented (SPKI sha256 {seen}) is not in the attested \
                 keyset {digest} for {host} (attested: {attested}); only report requests travel over this connection",
                seen = self.spki_hex,
                digest = k.digest(),
                attested = attested_for(&k, host),
            ),
            None => format!(
                "not sending a request to {host} before its TLS key (SPKI sha256 {seen}) is attested: no attested \
                 keyset is current; establish the key provider first",
                seen = self.spki_hex,
            ),
        };
        if head.is_none() {
            // An HTTP/2 connection cannot refuse one stream and go on: it closes. h2 hands the
            // streams a bare "stream closed", so the reason goes to the log.
            tracing::warn!(host, "closing an HTTP/2 connection: {message}");
            self.info.revoke();
        }
        Err(io::Error::new(io::ErrorKind::PermissionDenied, channel_error(message)))
    }

    /// Check the request (if any) that `bufs` start before they are written.
    fn before_write(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<()> {
        if self.info.is_revoked() {
            return Err(self.revoked());
        }
        match &mut self.framing {
            Framing::Http1 { request_start } => {
                if *request_start {
                    if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                        self.admit(Some(first))?;
                        self.framing = Framing::Http1 { request_start: false };
                    }
                }
            }
            Framing::Http2(frames) => {
                if frames.would_open(bufs) {
                    self.admit(None)?;
                }
            }
        }
        Ok(())
    }

    /// Account for `n` bytes of `bufs` written.
    fn written(&mut self, bufs: &[io::IoSlice<'_>], n: usize) {
        if let Framing::Http2(frames) = &mut self.framing {
            frames.advance_written(bufs, n);
        }
    }

    fn revoked(&self) -> io::Error {
        let message = format!("the TLS connection to {} was revoked: its key is not attested", self.info.host());
        io::Error::new(io::ErrorKind::PermissionDenied, channel_error(message))
    }
}

/// Whether an HTTP/1 request head is `GET <path ending in /v1/aci/attestation>?nonce=…`.
fn is_report_request(head: &[u8]) -> bool {
    let Some(rest) = head.strip_prefix(b"GET ") else { return false };
    let Some(end) = memchr::memchr(b' ', rest) else { return false };
    let target = &rest[..end];
    let Some(q) = memchr::memchr(b'?', target) else { return false };
    let (path, query) = (&target[..q], &target[q + 1..]);
    path.starts_with(b"/") && path.ends_with(ATTESTATION_PATH) && query.starts_with(b"nonce=")
}

impl<T: hyper::rt::Read + hyper::rt::Write + Unpin> AsyncRead for Gate<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.info.state().reader.register(cx.waker());
        if this.info.is_revoked() {
            return Poll::Ready(Err(this.revoked()));
        }
        // A newly published keyset that no longer lists this key closes the connection, so the
        // pool drops it: an HTTP/1.1 connection once it is idle, an HTTP/2 one at once (its
        // streams cannot be told apart, and the pool would otherwise send every request to it).
        while this.pinned && this.published.as_mut().poll(cx).is_ready() {
            this.published = watch_publish(&this.keys);
            let idle = match this.framing {
                Framing::Http1 { request_start } => request_start,
                Framing::Http2(_) => true,
            };
            if idle && this.keys.current_valid().is_some() && !this.listed().0 {
                tracing::debug!(
                    host = this.info.host(),
                    http2 = this.is_h2(),
                    "closing a pooled TLS connection whose key is no longer attested"
                );
                this.info.revoke();
                return Poll::Ready(Err(this.revoked()));
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.tls).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Framing::Http1 { request_start }) = (&r, &mut this.framing) {
            if buf.filled().len() > before {
                *request_start = true;
            }
        }
        r
    }
}

impl<T: hyper::rt::Read + hyper::rt::Write + Unpin> AsyncWrite for Gate<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let bufs = [io::IoSlice::new(buf)];
        this.before_write(&bufs)?;
        let r = Pin::new(&mut this.tls).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.written(&bufs, n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.before_write(bufs)?;
        let r = Pin::new(&mut this.tls).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.written(bufs, n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_report_requests_pass_the_gate_unattested() {
        let n = "ab".repeat(32);
        for ok in [
            format!("GET /v1/aci/attestation?nonce={n} HTTP/1.1\r\nhost: gw\r\n\r\n"),
            format!("GET /prefix/v1/aci/attestation?nonce={n} HTTP/1.1\r\n"),
        ] {
            assert!(is_report_request(ok.as_bytes()), "{ok}");
        }
        for no in [
            "POST /v1/aci/attestation?nonce=ab HTTP/1.1\r\n".to_owned(),
            "GET /v1/aci/attestation HTTP/1.1\r\n".to_owned(),
            "GET /v1/aci/attestation?x=1 HTTP/1.1\r\n".to_owned(),
            "GET /v1/chat/completions?q=/v1/aci/attestation?nonce=ab HTTP/1.1\r\n".to_owned(),
            "GET /v1/aci/attestation/x?nonce=ab HTTP/1.1\r\n".to_owned(),
            "GET /v1/aci/receipts/rcpt-1 HTTP/1.1\r\n".to_owned(),
            format!("GET /v1/aci/attestation?nonce={n}"), // request line cut before its end
            "GET http://gw/v1/aci/attestation?nonce=ab HTTP/1.1\r\n".to_owned(),
            String::new(),
        ] {
            assert!(!is_report_request(no.as_bytes()), "{no}");
        }
    }

    /// A frame header (RFC 9113 §4.1) and its payload.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    /// What a client writes, built by hand from RFC 9113 and RFC 7541 (not by h2): the
    /// preface, SETTINGS, a request on stream 1 whose header block is RFC 7541 C.3.1 split
    /// over HEADERS and CONTINUATION, a DATA frame whose payload looks like a HEADERS frame for
    /// stream 9, trailers on stream 1, WINDOW_UPDATE on stream 3, a request on stream 3.
    fn client_bytes() -> (Vec<u8>, Vec<usize>) {
        let block = const_hex::decode("828684410f7777772e6578616d706c652e636f6d").unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        let mut opens = vec![out.len() + 9]; // HEADERS on stream 1 (no END_HEADERS)
        out.extend(frame(0x1, 0, 1, &block[..5]));
        out.extend(frame(0x9, 0x4, 1, &block[5..])); // CONTINUATION
        out.extend(frame(0x0, 0, 1, &frame(0x1, 0x4, 9, &block))); // DATA
        out.extend(frame(0x1, 0x5, 1, &[0x40, 1, b'x', 1, b'y'])); // trailers
        out.extend(frame(0x8, 0, 3, &[0, 0, 1, 0])); // WINDOW_UPDATE
        opens.push(out.len() + 9); // HEADERS on stream 3
        out.extend(frame(0x1, 0x5, 3, &block));
        (out, opens)
    }

    #[test]
    fn h2_requests_are_found_in_frame_headers_however_the_writes_split() {
        let (bytes, opens) = client_bytes();
        // In one write.
        assert!(H2Frames::new().would_open(&[io::IoSlice::new(&bytes)]));
        // Byte by byte: a stream opens exactly when the 9th byte of its HEADERS header passes.
        let mut f = H2Frames::new();
        let mut seen = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            if f.advance(std::slice::from_ref(b)) {
                seen.push(i + 1);
            }
        }
        assert_eq!(seen, opens);
        // Split at every point, written partially: the probe does not move the state, and
        // `advance_written` counts only what was written.
        for cut in 0..bytes.len() {
            let mut f = H2Frames::new();
            let bufs = [io::IoSlice::new(&bytes[..cut]), io::IoSlice::new(&bytes[cut..])];
            assert!(f.would_open(&bufs));
            assert_eq!(f.last_stream, 0, "would_open leaves the state alone");
            f.advance_written(&bufs, cut);
            let expect_last = match opens.iter().filter(|&&o| o <= cut).count() {
                0 => 0,
                1 => 1,
                _ => 3,
            };
            assert_eq!(f.last_stream, expect_last, "cut {cut}");
            let rest = [io::IoSlice::new(&bytes[cut..])];
            assert_eq!(f.would_open(&rest), opens.iter().any(|&o| o > cut), "cut {cut}");
            f.advance_written(&rest, bytes.len() - cut);
            assert_eq!(f.last_stream, 3);
            assert!(!f.would_open(&[io::IoSlice::new(&frame(0x1, 0x5, 1, b""))]), "an old stream is no request");
        }
    }

    #[test]
    fn refusals_are_found_inside_rustls_and_io_errors() {
        let ours = channel_error("seen x, attested y".to_owned());
        let rustls_error = rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(ours))));
        let io_error = io::Error::new(io::ErrorKind::InvalidData, rustls_error);
        let found = Error::find(&io_error).unwrap();
        assert_eq!(found.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding));
        assert_eq!(found.to_string(), "seen x, attested y");
        let boxed = handshake_error(io_error, "gw");
        assert_eq!(
            Error::find(boxed.as_ref()).map(Error::kind),
            Some(ErrorKind::Attestation(AttestationFailure::ChannelBinding))
        );
        let other = handshake_error(io::Error::other("reset"), "gw");
        assert_eq!(Error::find(other.as_ref()).map(Error::kind), Some(ErrorKind::Transport));
    }
}
