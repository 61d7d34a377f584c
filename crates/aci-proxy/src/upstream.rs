//! The plain HTTP client of `aci-proxy inspect` (report and collateral fetches) and the gateway
//! URL of a proxied path.

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::config::ProxyConfig;
use tower_aci::attest::KeyHandle;
use tower_aci::e2ee::RequestBody;
use tower_aci::error::{BoxError, Result};

/// A plain HTTP client (`aci-proxy inspect`'s report fetch).
pub(crate) type Plain = BoxCloneSyncService<Request<RequestBody<Full<Bytes>>>, Response<Incoming>, BoxError>;

/// A plain HTTP client for `aci-proxy inspect`'s report and collateral fetches (no E2EE, no
/// receipts; any non-2xx answer, a redirect included, fails the inspection): pinned HTTPS for
/// an `https://` gateway, plain HTTP otherwise.
pub(crate) fn http_client(base: &Uri, keys: &KeyHandle, config: &ProxyConfig, pccs: Option<&Uri>) -> Result<Plain> {
    use hyper_util::client::legacy::Client as Hyper;
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    let map_err = |e: hyper_util::client::legacy::Error| -> BoxError { Box::new(e) };
    if base.scheme_str() == Some("https") {
        let mut tls = tower_aci::tls::AttestedTls::builder(keys.clone());
        if let Some(proxy) = &config.https_proxy {
            tls = tls.with_https_proxy(proxy.clone());
        }
        tls = if config.tls_pin_only { tls.pin_only() } else { tls.with_webpki_roots() };
        if let Some(host) = pccs.and_then(Uri::host) {
            if config.tls_pin_only {
                tls = tls.with_webpki_roots();
            }
            tls = tls.unpinned_host(host);
            for cert in config.pccs_extra_roots()? {
                tls = tls.unpinned_extra_root(cert);
            }
        }
        let tls = tls.build()?;
        if let Some(proxy) = tls.proxy_for(base) {
            tracing::info!(gateway = %base, proxy = %proxy, "connecting through the HTTPS proxy (CONNECT tunnels)");
        }
        tcp.enforce_http(false);
        let client: Hyper<_, RequestBody<Full<Bytes>>> =
            Hyper::builder(TokioExecutor::new()).build(tls.connector_with(tcp));
        return Ok(BoxCloneSyncService::new(ServiceBuilder::new().map_err(map_err).service(client)));
    }
    if !base.host().is_some_and(|h| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
    {
        tracing::warn!(gateway = %base, "plain HTTP to a gateway that is not on loopback: the channel is not pinned");
    }
    let client: Hyper<HttpConnector, RequestBody<Full<Bytes>>> = Hyper::builder(TokioExecutor::new()).build(tcp);
    Ok(BoxCloneSyncService::new(ServiceBuilder::new().map_err(map_err).service(client)))
}

/// The gateway URL for a proxied path (the gateway's base path kept as a prefix).
pub(crate) fn upstream_uri(base: &Uri, path_and_query: &str) -> std::result::Result<Uri, http::Error> {
    let prefix = base.path().trim_end_matches('/');
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(format!("{prefix}{path_and_query}").parse()?);
    Ok(Uri::from_parts(parts)?)
}
