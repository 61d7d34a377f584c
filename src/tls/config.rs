//! The configuration: [`AttestedTls`] and its builder (trust mode, unpinned hosts, ALPN, the
//! egress proxy), and the connectors and rustls configurations it hands out.

use std::fmt;
use std::sync::Arc;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::attest::KeyHandle;
use crate::attest::keyset::normalize_host;
use crate::egress::{Egress, HttpsProxy};
use crate::error::{Error, Result};
use crate::tls::connector::AttestedConnector;
use crate::tls::shared::{H2, HTTP1, Shared};
use crate::tls::verifier::{Mode, client_config};

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
            return self.fail(Error::config(format!(
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
    /// current keyset lists (see
    /// [Bootstrap and pooled connections](crate::tls#bootstrap-and-pooled-connections)).
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
            return self.fail(Error::config("an unpinned host is empty"));
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
    /// [module documentation](crate::tls#egress-through-an-http-proxy).
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

    /// The configuration, or a [`Config`](crate::error::ErrorKind::Config) error: a trust mode must be
    /// chosen (a root store, or `pin_only()`), unpinned hosts need a root store (or an
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
                .map_err(|e| Error::config(format!("cannot build the WebPKI verifier: {e}")))
        };
        if !self.unpinned_roots.is_empty() && self.unpinned.is_empty() {
            return Err(Error::config(
                "an extra root for unpinned hosts, but no host is unpinned: it would never apply (name the PCCS \
                 with unpinned_host)",
            ));
        }
        let (webpki, unpinned_webpki) = match self.roots {
            None if !self.pin_only => {
                return Err(Error::config(
                    "choose how certificates are checked before the pin: root_store(…) / with_webpki_roots() / \
                     with_native_roots() for WebPKI, or pin_only() for self-signed gateways",
                ));
            }
            None if !self.unpinned.is_empty() && self.unpinned_roots.is_empty() => {
                return Err(Error::config("unpinned hosts are verified with WebPKI and need a root store"));
            }
            Some(roots) if roots.is_empty() => return Err(Error::config("the root store is empty")),
            roots => {
                // The gateway's roots, and the unpinned hosts' (the same plus the extra ones).
                let mut unpinned = roots.clone().unwrap_or_else(RootCertStore::empty);
                for cert in &self.unpinned_roots {
                    unpinned.add(cert.clone()).map_err(|e| {
                        Error::config(format!(
                            "the extra root for unpinned hosts is not a usable root certificate: {e}"
                        ))
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
/// [module documentation](crate::tls). Cheap to clone.
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
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn https_proxy(&self) -> Option<&HttpsProxy> {
        self.shared.egress.proxy()
    }

    /// The HTTP proxy the connection to `dst` (an `https://` URI) goes through, if any: a proxy
    /// given to the builder applies to every host; one read from `HTTPS_PROXY` to every host but
    /// loopback and those `NO_PROXY` lists. For a log line naming the route.
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
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
                .map_err(|_| Error::config("the proxy credentials are not a header value"))?;
            value.set_sensitive(true);
            proxy = proxy.custom_http_auth(value);
        }
        Ok(Some(proxy))
    }

    /// The handle the verifier reads.
    #[doc(hidden)] // a hook for the crate's own tests: not API
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
        AttestedConnector::new(tcp, self.h1.clone(), self.h2.clone(), self.shared.clone())
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
