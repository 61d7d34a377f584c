//! The client's one HTTP client: pinned HTTPS (or plain HTTP to loopback), through an HTTPS
//! proxy when one applies, refusing every redirect; and the rules its URLs must satisfy.

use bytes::Bytes;
use http::header::LOCATION;
use http::{HeaderMap, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::attest::KeyHandle;
use crate::client::service::Plain;
use crate::e2ee::RequestBody;
use crate::error::{BoxError, Error, Result};
use crate::tls::{AttestedTls, HttpsProxy};

/// The [`gateway_error_type`](Error::gateway_error_type) of the error a redirect from the
/// gateway becomes (kind [`Gateway`](crate::error::ErrorKind::Gateway), with the `3xx`
/// [`status`](Error::status)).
///
/// A client never follows a redirect, and never hands one out: a caller (or an SDK behind
/// `aci-proxy`) that followed a `307` would re-send the request, in clear, to the `Location`,
/// and take that server's answer for the model's. The message names the `Location`, in case
/// the gateway really moved.
pub const REDIRECT_REFUSED: &str = "redirect_refused";

/// How the gateway's certificate is checked before the pin.
pub(crate) enum Trust {
    WebPki,
    PinOnly,
    Roots(RootCertStore),
}

/// How the client's connections leave this machine.
pub(crate) enum Egress {
    /// `HTTPS_PROXY` / `NO_PROXY`, read at `build`.
    Environment,
    /// Through this proxy (or the URL's parse error, returned by `build`).
    Proxy(Result<HttpsProxy>),
    Direct,
}

/// The error a gateway redirect becomes.
pub(crate) fn redirect_error(status: StatusCode, headers: &HeaderMap) -> Error {
    let location = headers.get(LOCATION).map(|l| {
        let l = String::from_utf8_lossy(l.as_bytes());
        let end = l.char_indices().nth(200).map_or(l.len(), |(i, _)| i);
        l[..end].to_owned()
    });
    Error::gateway(
        status,
        REDIRECT_REFUSED,
        &format!(
            "the gateway redirected ({status}, Location {location:?}); tower-aci never follows or relays a redirect, \
             since a client that followed it would send the request in plaintext elsewhere. If the gateway moved, \
             check the gateway URL (aci-proxy: --gateway)"
        ),
    )
}

/// The transport's answer, with a redirect turned into an error.
fn refuse_redirect<B>(
    result: std::result::Result<Response<B>, BoxError>,
) -> std::result::Result<Response<B>, BoxError> {
    match result {
        Ok(res) if res.status().is_redirection() => {
            tracing::warn!(status = %res.status(), "the gateway answered a redirect: refused");
            Err(Box::new(redirect_error(res.status(), res.headers())))
        }
        other => other,
    }
}

fn boxed_plain<C>(client: HyperClient<C, RequestBody<Full<Bytes>>>) -> Plain
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let map_err = |e: hyper_util::client::legacy::Error| -> BoxError { Box::new(e) };
    BoxCloneSyncService::new(ServiceBuilder::new().map_result(refuse_redirect).map_err(map_err).service(client))
}

/// The one HTTP client (and its attested TLS for an `https://` gateway).
pub(crate) fn plain_client(
    base: &Uri,
    keys: &KeyHandle,
    trust: Trust,
    pccs: Option<&Uri>,
    pccs_roots: Vec<CertificateDer<'static>>,
    egress: Egress,
) -> Result<(Plain, Option<AttestedTls>)> {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    if base.scheme_str() == Some("https") {
        let tls = attested_tls(keys, trust, pccs, pccs_roots, egress)?;
        if let Some(proxy) = tls.proxy_for(base) {
            tracing::info!(gateway = %base, proxy = %proxy, "connecting through the HTTPS proxy (CONNECT tunnels)");
        }
        tcp.enforce_http(false);
        let client: HyperClient<_, RequestBody<Full<Bytes>>> =
            HyperClient::builder(TokioExecutor::new()).build(tls.connector_with(tcp));
        return Ok((boxed_plain(client), Some(tls)));
    }
    let client: HyperClient<_, RequestBody<Full<Bytes>>> = HyperClient::builder(TokioExecutor::new()).build(tcp);
    Ok((boxed_plain(client), None))
}

fn attested_tls(
    keys: &KeyHandle,
    trust: Trust,
    pccs: Option<&Uri>,
    pccs_roots: Vec<CertificateDer<'static>>,
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
pub(crate) fn is_loopback(uri: &Uri) -> bool {
    let Some(host) = uri.host() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The PCCS is reached without the attested pin (WebPKI only): naming the gateway's own host
/// would unpin the gateway.
pub(crate) fn refuse_pccs_on_gateway_host(base: &Uri, pccs: &Uri) -> Result<()> {
    let norm = |h: &str| h.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
    let (Some(gateway), Some(pccs_host)) = (base.host(), pccs.host()) else { return Ok(()) };
    if norm(gateway) == norm(pccs_host) {
        return Err(Error::config(format!(
            "the PCCS ({pccs}) names the gateway's own host {pccs_host}: the PCCS is checked with WebPKI only, so \
             this would take the gateway out of the attested pin. Give the PCCS's own URL (e.g. \
             https://pccs.phala.network) or leave it to the default (aci-proxy: --pccs)"
        )));
    }
    Ok(())
}
