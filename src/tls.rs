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
//! - its hyper-util connector ([`AttestedTls::connector`]) adds a [`ChannelInfo`] to every
//!   response, from which the [`KeyProvider`](crate::attest::KeyProvider) learns the SPKI the
//!   report was served over: a verified keyset that does not list it for the host fails with
//!   `ChannelBinding`;
//! - [`AttestedTls::rustls_config`] is the same verifier for reqwest
//!   (`ClientBuilder::use_preconfigured_tls`).
//!
//! # Bootstrap and pooled connections
//!
//! On first contact there is no keyset: the connector accepts the certificate (after WebPKI, or
//! any certificate in pin-only mode), and the connection is *unattested*. A connection whose SPKI
//! the current keyset does not list for its host carries **only report requests**
//! (`GET …/v1/aci/attestation?nonce=…`): every other request is refused before its first byte is
//! written (checked at the start of each request, against the keyset current then). So the
//! keep-alive connection that fetched the first report may carry E2EE requests and receipt
//! fetches afterwards exactly because the provider verified that the keyset lists its SPKI; any
//! other connection opened before a keyset existed cannot. Once a keyset is current, a handshake
//! presenting an unlisted key is refused — except while the key provider fetches a report, so
//! that a gateway that restarted with a new certificate can be re-attested; such a connection is
//! again limited to report requests until a keyset listing its key is published. A refused
//! handshake asks the provider's refresher to re-attest. An idle pooled connection whose key a
//! newly published keyset no longer lists closes itself; the provider revokes a connection that
//! served a report whose keyset does not list it.
//!
//! The gate reads HTTP/1 request lines, so the connector offers only `http/1.1` (ALPN).
//! reqwest's pool cannot be gated: its configuration ([`AttestedTls::rustls_config`]) refuses
//! every handshake until a keyset is current, and checks the key at each handshake.
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
//! let keys = KeyHandle::new();
//! let tls = AttestedTls::builder(keys.clone()).root_store(roots).build()?;
//! // One client for the key provider, the E2EE layer and the receipt client.
//! let http: Client<_, RequestBody<Full<Bytes>>> = Client::builder(TokioExecutor::new()).build(tls.connector());
//! let provider = KeyProvider::builder(http.clone())
//!     .handle(keys)
//!     .base_url("https://api.redpill.ai".parse()?)
//!     .policy(
//!         Policy::builder()
//!             .allow_app_id("fdb7a14e5a6675f752e2cb69c9067a98ca402918")
//!             .accept_kms_root("0334c76e0c3f52ec64cbf9bbf5c910c272330166fd656c0a86bb330963e46910e1")
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
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower_service::Service;

use crate::attest::channel::{ChannelState, attested_for};
use crate::attest::keyset::normalize_host;
use crate::attest::{AttestedKeyset, ChannelInfo, KeyHandle};
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
pub struct AttestedTlsBuilder {
    keys: KeyHandle,
    roots: Option<RootCertStore>,
    pin_only: bool,
    unpinned: Vec<String>,
    error: Option<Error>,
}

impl fmt::Debug for AttestedTlsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedTlsBuilder")
            .field("roots", &self.roots.as_ref().map(RootCertStore::len))
            .field("pin_only", &self.pin_only)
            .field("unpinned", &self.unpinned)
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

    /// The configuration, or a [`Config`](ErrorKind::Config) error: a trust mode must be chosen
    /// (a root store, or `pin_only()`), and unpinned hosts need a root store.
    pub fn build(self) -> Result<AttestedTls> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = match self.roots {
            None if !self.pin_only => {
                return Err(config_error(
                    "choose how certificates are checked before the pin: root_store(…) / with_webpki_roots() / \
                     with_native_roots() for WebPKI, or pin_only() for self-signed gateways",
                ));
            }
            None if !self.unpinned.is_empty() => {
                return Err(config_error("unpinned hosts are verified with WebPKI and need a root store"));
            }
            None => None,
            Some(roots) if roots.is_empty() => return Err(config_error("the root store is empty")),
            Some(roots) => Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| config_error(format!("cannot build the WebPKI verifier: {e}")))?,
            ),
        };
        let shared =
            Arc::new(Shared { keys: self.keys, webpki, pin_only: self.pin_only, unpinned: self.unpinned, provider });
        let config = Arc::new(client_config(&shared, Mode::Gated)?);
        let strict = Arc::new(client_config(&shared, Mode::Strict)?);
        Ok(AttestedTls { shared, config, strict })
    }
}

/// TLS bound to an attested keyset: a hyper-util connector and a rustls configuration whose
/// certificate verifier pins the gateway's TLS key to the keyset's `tls_public_keys`. See the
/// [module documentation](self). Cheap to clone.
#[derive(Clone)]
pub struct AttestedTls {
    shared: Arc<Shared>,
    /// The connector's (gated) configuration.
    config: Arc<ClientConfig>,
    /// reqwest's (strict) configuration.
    strict: Arc<ClientConfig>,
}

impl fmt::Debug for AttestedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedTls")
            .field("webpki", &self.shared.webpki.is_some())
            .field("pin_only", &self.shared.pin_only)
            .field("unpinned", &self.shared.unpinned)
            .finish_non_exhaustive()
    }
}

impl AttestedTls {
    /// A builder pinning to the keysets `keys` holds: make it with [`KeyHandle::new`] and hand
    /// the same handle to the key provider
    /// ([`KeyProviderBuilder::handle`](crate::attest::KeyProviderBuilder::handle)).
    pub fn builder(keys: KeyHandle) -> AttestedTlsBuilder {
        AttestedTlsBuilder { keys, roots: None, pin_only: false, unpinned: Vec::new(), error: None }
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
            tls: tokio_rustls::TlsConnector::from(self.config.clone()),
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
    pub fn rustls_config(&self) -> ClientConfig {
        (*self.strict).clone()
    }

    /// The connector's (gated) configuration: it accepts an unattested key while bootstrapping
    /// or attesting. Only for a transport that carries nothing but report requests over it
    /// (`middleware::ReqwestService`'s report client).
    #[cfg_attr(not(feature = "reqwest-middleware"), allow(dead_code))]
    pub(crate) fn report_rustls_config(&self) -> ClientConfig {
        (*self.config).clone()
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
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pin_only: bool,
    unpinned: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl Shared {
    fn is_pinned(&self, host: &str) -> bool {
        let host = normalize_host(host);
        !self.unpinned.iter().any(|u| u.eq_ignore_ascii_case(host))
    }
}

fn client_config(shared: &Arc<Shared>, mode: Mode) -> Result<ClientConfig> {
    let verifier = Arc::new(PinningVerifier { shared: shared.clone(), mode });
    let mut config = ClientConfig::builder_with_provider(shared.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(format!("cannot configure TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // The per-request gate reads HTTP/1 request lines.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
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
        let pinned = shared.is_pinned(&host);
        if let Some(webpki) = &shared.webpki {
            if !pinned || !shared.pin_only {
                webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
            }
        }
        if !pinned {
            return Ok(ServerCertVerified::assertion());
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
    tls: tokio_rustls::TlsConnector,
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
        let tcp = self.tcp.call(dst);
        let tls = self.tls.clone();
        let keys = self.shared.keys.clone();
        let pinned = self.shared.is_pinned(&host);
        Box::pin(async move {
            let io = tcp
                .await
                .map_err(|e| Error::new(ErrorKind::Transport, format!("connecting to {host} failed")).with_source(e))?;
            let stream = tls.connect(server_name, TokioIo::new(io)).await.map_err(|e| handshake_error(e, &host))?;
            let leaf = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| Error::new(ErrorKind::Transport, format!("{host} presented no certificate")))?;
            let spki = spki_sha256(leaf)?;
            let info = ChannelInfo::new(&host, spki, Arc::new(ChannelState::default()));
            Ok(AttestedStream { io: TokioIo::new(Gate::new(stream, keys, info, pinned)) })
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

/// A TLS connection made by [`AttestedConnector`]: hyper-util IO that refuses to write any
/// request but a report request while the current keyset does not list the connection's key.
pub struct AttestedStream<T> {
    io: TokioIo<Gate<T>>,
}

impl<T> fmt::Debug for AttestedStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedStream").field("channel", &self.io.inner().info).finish_non_exhaustive()
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
}

impl<T: Connection + hyper::rt::Read + hyper::rt::Write + Unpin> Connection for AttestedStream<T> {
    fn connected(&self) -> Connected {
        let gate = self.io.inner();
        let connected = gate.tls.get_ref().0.inner().connected();
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

/// The per-request gate around the TLS stream.
struct Gate<T> {
    tls: tokio_rustls::client::TlsStream<TokioIo<T>>,
    keys: KeyHandle,
    info: ChannelInfo,
    spki_hex: String,
    /// The next write starts a request (nothing written since the last read of data).
    request_start: bool,
    /// The keyset last checked, and whether it lists this connection's key.
    checked: Option<(Arc<AttestedKeyset>, bool)>,
    published: Watch,
    /// An unpinned host's connection is not gated.
    pinned: bool,
}

impl<T> Gate<T> {
    fn new(tls: tokio_rustls::client::TlsStream<TokioIo<T>>, keys: KeyHandle, info: ChannelInfo, pinned: bool) -> Self {
        let published = watch_publish(&keys);
        let spki_hex = info.spki_sha256_hex();
        Gate { tls, keys, info, spki_hex, request_start: true, checked: None, published, pinned }
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

    /// The start of a request: allowed when the key is attested, or for a report request.
    fn admit(&mut self, head: &[u8]) -> io::Result<()> {
        if !self.pinned {
            return Ok(());
        }
        let (listed, keyset) = self.listed();
        if listed || is_report_request(head) {
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
        Err(io::Error::new(io::ErrorKind::PermissionDenied, channel_error(message)))
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
        // A newly published keyset that no longer lists this key closes the connection while
        // it is idle, so the pool drops it.
        while this.pinned && this.published.as_mut().poll(cx).is_ready() {
            this.published = watch_publish(&this.keys);
            if this.request_start && this.keys.current_valid().is_some() && !this.listed().0 {
                tracing::debug!(
                    host = this.info.host(),
                    "closing a pooled TLS connection whose key is no longer attested"
                );
                return Poll::Ready(Err(this.revoked()));
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.tls).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if buf.filled().len() > before {
                this.request_start = true;
            }
        }
        r
    }
}

impl<T: hyper::rt::Read + hyper::rt::Write + Unpin> AsyncWrite for Gate<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.info.is_revoked() {
            return Poll::Ready(Err(this.revoked()));
        }
        if this.request_start && !buf.is_empty() {
            this.admit(buf)?;
            this.request_start = false;
        }
        Pin::new(&mut this.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.info.is_revoked() {
            return Poll::Ready(Err(this.revoked()));
        }
        if this.request_start {
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                this.admit(first)?;
                this.request_start = false;
            }
        }
        Pin::new(&mut this.tls).poll_write_vectored(cx, bufs)
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
