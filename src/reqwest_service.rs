//! [`ReqwestService`]: a `reqwest::Client` as a tower service, so that the key provider and
//! the receipt client run over reqwest (feature `reqwest-middleware`), without hyper.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use tower_service::Service;

use crate::attest::ChannelInfo;
use crate::error::{BoxError, Error, ErrorKind};

/// The report path: only requests for it travel over the report client of
/// [`ReqwestService::pinned`].
const ATTESTATION_PATH: &str = "/v1/aci/attestation";

/// A `reqwest::Client` as a tower [`Service`] for `http::Request<Full<Bytes>>` (feature
/// `reqwest-middleware`): what [`KeyProvider`](crate::attest::KeyProvider) and
/// [`ReceiptClient`](crate::receipt::ReceiptClient) need, so a reqwest application attests the
/// gateway and verifies receipts without a second HTTP stack. Cheap to clone (reqwest clients
/// share their pool).
///
/// Responses are `http::Response<reqwest::Body>`. When the client was built with
/// `tls_info(true)` (as [`pinned`](Self::pinned) does), every response over TLS carries a
/// [`ChannelInfo`] naming the host and the SPKI SHA-256 of the certificate the server presented,
/// and the key provider then refuses a keyset that does not list that key for the host
/// ([`ChannelBinding`](crate::error::AttestationFailure::ChannelBinding)). reqwest cannot close one of
/// its connections from outside: a connection whose key a refused keyset named stays in its pool.
///
/// ```no_run
/// # #[cfg(feature = "rustls")]
/// # async fn run() -> Result<(), tower_aci::BoxError> {
/// use tower_aci::attest::{KeyHandle, KeyProvider, Policy};
/// use tower_aci::middleware::ReqwestService;
/// use tower_aci::tls::AttestedTls;
///
/// # const COMPOSE_HASH: &str = "5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb";
/// # const MRTD: &str = "f06dfda6dce1cf904d4e2bab1dc370634cf95cefa2ceb2de2eee127c9382698090d7a4a13e14c536ec6c9c3c8fa87077";
/// # const RTMR0: &str = "ec216f1d1d591468ff4741b9b192f016b26d3f90303bfa9dbb97557273853183981f21a4bcb3ae908247538d371ad072";
/// # const RTMR1: &str = "07e6f51aa763abfe75c3ddfbf4f425fe3f0ceff66d807a75e049303dce9addf68e7218729bd419638af63a370f65878c";
/// # const RTMR2: &str = "a2a58c9a959a4fa44bd6da0c97a2270c051faf12084cfe91ae900e4fdff6cdd4f69a82005e04ee920f231497894d677f";
/// # const KMS_IDENTITY: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200048844eb42ccdf8c52fd4f174f362fcb9bbd19c45fd48f1edec2d8f1ca23536ec1a74021b4cee610c074f8294d431b2b7fee2c39e5333fdaf0a4522d43fb159d9f";
/// let keys = KeyHandle::new();
/// let tls = AttestedTls::builder(keys.clone()).with_webpki_roots().build()?;
/// let http = ReqwestService::pinned(&tls)?; // reqwest over the pinned rustls configuration
/// let provider = KeyProvider::builder(http.clone())
///     .handle(keys)
///     .base_url("https://gateway.example".parse()?)
///     .policy(
///         Policy::builder()
///             .allow_compose_hash(COMPOSE_HASH)
///             .allow_boot_measurements(MRTD, RTMR0, RTMR1, RTMR2)
///             .allow_kms_identity(KMS_IDENTITY)
///             .build()?,
///     )
///     .build()?;
/// provider.establish().await?; // the report's channel is checked against the keyset
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReqwestService {
    client: reqwest::Client,
    /// Carries report requests only (`GET …/v1/aci/attestation?nonce=…`), when set.
    reports: Option<reqwest::Client>,
}

impl fmt::Debug for ReqwestService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReqwestService").field("report_client", &self.reports.is_some()).finish_non_exhaustive()
    }
}

impl ReqwestService {
    /// Wrap a client. Build it with `tls_info(true)` for responses to carry a [`ChannelInfo`];
    /// for a pinned client use [`pinned`](Self::pinned).
    pub fn new(client: reqwest::Client) -> Self {
        ReqwestService { client, reports: None }
    }

    /// Two reqwest clients over the attested TLS configuration of `tls`, both with
    /// `tls_info(true)` (feature `rustls`):
    ///
    /// - every request but report requests goes through
    ///   [`AttestedTls::rustls_config`](crate::tls::AttestedTls::rustls_config), which refuses a
    ///   handshake unless the current keyset lists the server's key for the host (or the host is
    ///   [unpinned](crate::tls::AttestedTlsBuilder::unpinned_host), such as the PCCS);
    /// - report requests (`GET …/v1/aci/attestation?nonce=…`) go through a client of their own
    ///   that also accepts an unattested key while no keyset is current or a report is being
    ///   fetched (the bootstrap, a gateway restarted with a new certificate). Nothing else ever
    ///   travels over it, and the key provider binds the report it carried to the connection's
    ///   key through the response's [`ChannelInfo`].
    ///
    /// Both go out as `tls`'s own connector does: through the HTTPS proxy it was given or read
    /// from `HTTPS_PROXY` (for the hosts it applies to), else directly (see
    /// [`crate::tls`](crate::tls#egress-through-an-http-proxy)). Through a proxy, reqwest 0.12
    /// gives responses no TLS information, so they cannot be bound to the attested channel and
    /// fail closed with `ChannelBinding`: behind a proxy, use the hyper-util connector.
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn pinned(tls: &crate::tls::AttestedTls) -> crate::error::Result<Self> {
        // Through `tls`'s HTTPS proxy, as its own connector would go (see `crate::tls`).
        let proxy = tls.reqwest_proxy()?;
        Self::pinned_with(tls, || match &proxy {
            Some(p) => reqwest::Client::builder().proxy(p.clone()),
            None => reqwest::Client::builder().no_proxy(),
        })
    }

    /// [`pinned`](Self::pinned) with your own reqwest settings (timeouts, proxy, user agent):
    /// `builder` makes a fresh `reqwest::ClientBuilder` for each of the two clients; the TLS
    /// configuration and `tls_info` are set on top (feature `rustls`).
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn pinned_with(
        tls: &crate::tls::AttestedTls,
        builder: impl Fn() -> reqwest::ClientBuilder,
    ) -> crate::error::Result<Self> {
        let build = |b: reqwest::ClientBuilder| {
            b.build().map_err(|e| Error::new(ErrorKind::Config, "cannot build the reqwest client").with_source(e))
        };
        let client = build(builder().use_preconfigured_tls(tls.rustls_config()).tls_info(true))?;
        let mut report_config = tls.report_rustls_config();
        // reqwest is built here without HTTP/2.
        report_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let reports = build(builder().use_preconfigured_tls(report_config).tls_info(true).http1_only())?;
        Ok(ReqwestService { client, reports: Some(reports) })
    }

    /// The client every request but report requests goes through.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// Whether `req` is `GET <prefix>/v1/aci/attestation?nonce=…`.
fn is_report_request<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.uri().path().ends_with(ATTESTATION_PATH)
        && req.uri().query().is_some_and(|q| q.starts_with("nonce="))
}

/// The future of [`ReqwestService`].
pub type ReqwestFuture = Pin<Box<dyn Future<Output = Result<Response<reqwest::Body>, BoxError>> + Send>>;

impl Service<Request<Full<Bytes>>> for ReqwestService {
    type Response = Response<reqwest::Body>;
    type Error = BoxError;
    type Future = ReqwestFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let client = match &self.reports {
            Some(reports) if is_report_request(&req) => reports.clone(),
            _ => self.client.clone(),
        };
        let host = req.uri().host().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned());
        let (parts, body) = req.into_parts();
        // `Full` yields its one chunk at once: no copy, and reqwest keeps a sized body.
        let bytes = match body.collect().now_or_never() {
            Some(Ok(collected)) => collected.to_bytes(),
            Some(Err(never)) => match never {},
            None => Bytes::new(),
        };
        let request = reqwest::Request::try_from(Request::from_parts(parts, reqwest::Body::from(bytes)));
        Box::pin(async move {
            let request = request
                .map_err(|e| Error::new(ErrorKind::Config, "the request cannot be sent with reqwest").with_source(e))?;
            let response = client.execute(request).await?;
            let mut response = Response::from(response);
            if let Some(channel) = channel_of(&response, host.as_deref())? {
                response.extensions_mut().insert(channel);
            }
            Ok(response)
        })
    }
}

/// The channel a response came over, from reqwest's `TlsInfo` (a client built with
/// `tls_info(true)`): the host and the SPKI SHA-256 of the server's certificate.
#[cfg(feature = "rustls")]
fn channel_of(response: &Response<reqwest::Body>, host: Option<&str>) -> crate::error::Result<Option<ChannelInfo>> {
    let (Some(host), Some(der)) =
        (host, response.extensions().get::<reqwest::tls::TlsInfo>().and_then(reqwest::tls::TlsInfo::peer_certificate))
    else {
        return Ok(None);
    };
    let spki = crate::tls::spki_sha256(&rustls::pki_types::CertificateDer::from(der))?;
    Ok(Some(ChannelInfo::new(host, spki, std::sync::Arc::default())))
}

/// Without feature `rustls` reqwest has no TLS backend of ours and the certificate is not
/// read: no [`ChannelInfo`] (the key provider then applies its rule for reports without one).
#[cfg(not(feature = "rustls"))]
fn channel_of(_response: &Response<reqwest::Body>, _host: Option<&str>) -> crate::error::Result<Option<ChannelInfo>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_report_requests_take_the_report_client() {
        let get = |uri: &str| Request::get(uri).body(()).unwrap();
        assert!(is_report_request(&get("https://gw/v1/aci/attestation?nonce=ab")));
        assert!(is_report_request(&get("https://gw/prefix/v1/aci/attestation?nonce=ab")));
        assert!(!is_report_request(&get("https://gw/v1/aci/attestation")));
        assert!(!is_report_request(&get("https://gw/v1/aci/attestation?x=1")));
        assert!(!is_report_request(&get("https://gw/v1/aci/receipts/r-1?nonce=ab")));
        assert!(!is_report_request(&get("https://gw/v1/models?q=/v1/aci/attestation?nonce=ab")));
        let post = Request::post("https://gw/v1/aci/attestation?nonce=ab").body(()).unwrap();
        assert!(!is_report_request(&post));
    }
}
