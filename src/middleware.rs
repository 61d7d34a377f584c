//! The reqwest-middleware adapter: [`E2eeMiddleware`], a native
//! [`reqwest_middleware::Middleware`] applying E2EE v2 (feature `reqwest-middleware`).
//!
//! A tower layer cannot sit inside reqwest-middleware's chain, so this middleware drives the same
//! protocol core and the same decrypting response body as [`E2eeLayer`].
//! Put it **after** `RetryTransientMiddleware` (middleware run in the order attached), so every
//! attempt re-encrypts with a fresh nonce: the gateway burns a nonce before it decrypts.
//!
//! Over HTTPS, reqwest must use the pinned rustls configuration of
//! [`AttestedTls`](crate::tls::AttestedTls) and report the peer certificate (`tls_info(true)`):
//! the middleware refuses an answer from an `https://` URL unless the certificate it came with
//! has an SPKI the attested keyset lists for the host
//! ([`ChannelBinding`](crate::error::AttestationFailure::ChannelBinding)). E2EE does not authenticate
//! answers: they are sealed to the client's ephemeral key, which travels in clear. Plain
//! `http://` is allowed only to a loopback address. (Feature `rustls`; without it only loopback
//! `http://` works, or the layer's `dangerous().accept_unbound_channel()`.)
//!
//! ```no_run
//! # #[cfg(feature = "rustls")]
//! # async fn run(keys: tower_aci::attest::KeyHandle) -> Result<(), Box<dyn std::error::Error>> {
//! use reqwest_middleware::ClientBuilder;
//! use tower_aci::middleware::E2eeMiddleware;
//! use tower_aci::tls::AttestedTls;
//!
//! // `keys`: the handle of a key provider established over `tls.connector()` (see `tower_aci::tls`).
//! let tls = AttestedTls::builder(keys.clone()).with_webpki_roots().build()?;
//! let pinned = reqwest::Client::builder()
//!     .use_preconfigured_tls(tls.rustls_config()) // the TLS key must be in the attested keyset
//!     .tls_info(true) // hands the certificate to the middleware's channel check
//!     .build()?;
//! let client = ClientBuilder::new(pinned)
//!     // .with(RetryTransientMiddleware::new_with_policy(…))   // retries first
//!     .with(E2eeMiddleware::new(keys).retry_on_key_mismatch(Some(std::time::Duration::from_secs(15))))
//!     .build();
//! let answer = client
//!     .post("https://gateway.example/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
//!     .send()
//!     .await?
//!     .text()
//!     .await?; // decrypted
//! # let _ = answer; Ok(()) }
//! ```
//!
//! Errors from this middleware are `reqwest_middleware::Error::Middleware` wrapping a
//! [`tower_aci::Error`](crate::error::Error): `err.downcast_ref::<tower_aci::Error>()` on the inner
//! `anyhow::Error`. `reqwest_retry` wraps middleware errors once more in its `RetryError`
//! (whose `transparent` form hides them from `source()` chains), so downcast that first when
//! a retry middleware runs outside this one. Errors while reading a decrypted body (a tampered
//! event, a truncated stream) come from `reqwest::Response::bytes`/`chunk` as `reqwest::Error`s
//! whose `source()` chain holds the `tower_aci::Error`: use [`Error::find`](crate::error::Error::find).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Extensions;
use http_body_util::{BodyExt, Limited};
use reqwest::ResponseBuilderExt;
use reqwest_middleware::{Middleware, Next};

use crate::attest::KeyHandle;
use crate::e2ee::E2eeLayer;
use crate::e2ee::config::{Config, Route, Target};
use crate::e2ee::exchange::{decrypting_response, encrypt, error_response};
use crate::error::{Error, ErrorKind};
use crate::protocol::GatewayError;
pub use crate::reqwest_service::{ReqwestFuture, ReqwestService};

/// E2EE v2 as a reqwest-middleware [`Middleware`]. Configure it like the tower layer.
#[derive(Clone, Debug)]
#[must_use]
pub struct E2eeMiddleware {
    config: Arc<Config>,
    key_mismatch_wait: Option<Duration>,
}

impl E2eeMiddleware {
    /// A middleware encrypting to the keys `keys` holds, with default settings.
    pub fn new(keys: KeyHandle) -> Self {
        Self::from_layer(E2eeLayer::new(keys))
    }

    /// A middleware with every setting of a configured [`E2eeLayer`] (or of its
    /// [`dangerous`](E2eeLayer::dangerous) form).
    pub(crate) fn from_layer(layer: impl Into<E2eeLayer>) -> Self {
        E2eeMiddleware { config: layer.into().config, key_mismatch_wait: None }
    }

    /// When the gateway answers `e2ee_model_key_mismatch` (its E2EE key rotated), wait up to
    /// `wait` for the key provider's refresher to publish the new key, then send the request
    /// once more, re-encrypted to it with a fresh nonce — what
    /// [`KeyMismatchRetry`](crate::e2ee::KeyMismatchRetry) does above the tower layer. Off by
    /// default (`None`); needs a handle a running refresher keeps current, on Tokio.
    pub fn retry_on_key_mismatch(mut self, wait: Option<Duration>) -> Self {
        self.key_mismatch_wait = wait;
        self
    }
}

fn mw(e: Error) -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(e)
}

#[async_trait::async_trait]
impl Middleware for E2eeMiddleware {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let path = req.url().path().to_owned();
        // A streaming body (unknown size) may carry a prompt: only none or an empty one is no body.
        let may_have_body = req.body().is_some_and(|b| b.as_bytes().is_none_or(|bytes| !bytes.is_empty()));
        let endpoint = match self.config.route(req.method(), &path, may_have_body) {
            Route::Passthrough => return next.run(req, extensions).await,
            Route::Refuse(e) => return Err(mw(e)),
            Route::Encrypt(endpoint) => endpoint,
        };
        // Plain HTTP off loopback is refused here, before anything is sent.
        let target = self.config.target(Some(req.url().scheme()), req.url().host_str()).map_err(mw)?;
        // A copy of the plaintext request for one re-send after a key rotation.
        let spare = self.key_mismatch_wait.and_then(|_| req.try_clone());
        let (res, old_key) = self.send(req, endpoint, &path, target.clone(), extensions, next.clone()).await?;
        let (Some(old_key), Some(spare), Some(wait)) = (old_key, spare, self.key_mismatch_wait) else {
            return Ok(res);
        };
        let keys = &self.config.keys;
        if !keys.has_refresher() || tokio::runtime::Handle::try_current().is_err() {
            return Ok(res);
        }
        tracing::info!("gateway rotated its E2EE key; retrying once with the new key");
        if tokio::time::timeout(wait, keys.clone().wait_for_other_key(old_key)).await.is_err() {
            tracing::warn!("no new E2EE key within {wait:?}; retrying anyway");
        }
        Ok(self.send(spare, endpoint, &path, target, extensions, next).await?.0)
    }
}

impl E2eeMiddleware {
    /// Encrypt, send, and wrap the answer. Also returns the key the request was encrypted to
    /// when the gateway answered `e2ee_model_key_mismatch`.
    async fn send(
        &self,
        mut req: reqwest::Request,
        endpoint: crate::protocol::Endpoint,
        path: &str,
        target: Target,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<(reqwest::Response, Option<String>)> {
        let body = req.body_mut().take();
        let Some(bytes) = body.as_ref().and_then(reqwest::Body::as_bytes) else {
            return Err(mw(Error::new(
                ErrorKind::UnsupportedBody,
                "streaming request bodies cannot be encrypted; send the JSON body as bytes",
            )));
        };
        if bytes.len() > self.config.max_request_body {
            return Err(mw(Error::new(ErrorKind::TooLarge, "request body exceeds the E2EE layer's limit")));
        }
        let (wire, exchange) = encrypt(&self.config, endpoint, path, target, req.headers_mut(), bytes).map_err(mw)?;
        drop(body);
        *req.body_mut() = Some(reqwest::Body::from(wire));

        let res = next.run(req, extensions).await?;
        let url = res.url().clone();
        #[cfg(feature = "rustls")]
        let channel = reqwest_channel(&res, &self.config.keys, &exchange.attested_digest).map_err(mw)?;
        let (mut parts, body) = http::Response::<reqwest::Body>::from(res).into_parts();
        #[cfg(feature = "rustls")]
        if let Some(channel) = channel {
            parts.extensions.insert(channel);
        }
        let mut mismatched_key = None;
        let body = if parts.status.is_success() {
            reqwest::Body::wrap(decrypting_response(&mut parts, body, exchange).map_err(mw)?)
        } else {
            let bytes: Bytes = Limited::new(body, self.config.max_response_body)
                .collect()
                .await
                .map_err(|e| mw(Error::new(ErrorKind::Transport, "reading the error response failed").with_source(e)))?
                .to_bytes();
            error_response(&mut parts, &bytes, &exchange).map_err(mw)?;
            let mismatch = parts
                .extensions
                .get::<GatewayError>()
                .is_some_and(|g| g.error_type.as_deref() == Some("e2ee_model_key_mismatch"));
            if mismatch {
                mismatched_key = Some(exchange.model_key.clone());
            }
            reqwest::Body::from(bytes)
        };
        // Keep the response URL: a rebuilt reqwest::Response takes it from its extensions.
        let (url_parts, ()) = http::Response::builder()
            .url(url)
            .body(())
            .map_err(|e| mw(Error::new(ErrorKind::Transport, "rebuilding the response failed").with_source(e)))?
            .into_parts();
        parts.extensions.extend(url_parts.extensions);
        Ok((reqwest::Response::from(http::Response::from_parts(parts, body)), mismatched_key))
    }
}

/// The channel of a reqwest answer, from the peer certificate reqwest reports (`tls_info(true)`):
/// its SPKI must be listed, for the answer's host, in the keyset the request was encrypted to.
/// `None` when reqwest reports no certificate (plain HTTP, or `tls_info` off).
#[cfg(feature = "rustls")]
fn reqwest_channel(
    res: &reqwest::Response,
    keys: &crate::attest::KeyHandle,
    digest: &str,
) -> Result<Option<crate::attest::ChannelInfo>, Error> {
    use crate::error::AttestationFailure;
    let Some(der) = res.extensions().get::<reqwest::tls::TlsInfo>().and_then(|t| t.peer_certificate()) else {
        return Ok(None);
    };
    let host = res.url().host_str().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    let spki = crate::tls::spki_sha256(&rustls::pki_types::CertificateDer::from(der))?;
    let keyset = match keys.keyset_for_digest(digest) {
        Some(k) => k,
        None => keys.current()?,
    };
    if !keyset.lists_tls_key(host, &spki) {
        return Err(Error::new(
            ErrorKind::Attestation(AttestationFailure::ChannelBinding),
            format!(
                "the answer from {host} came over a TLS connection whose certificate has SPKI sha256 {seen}, which \
                 the attested keyset {digest} does not list for {host} (attested: {attested}); build the reqwest \
                 client with use_preconfigured_tls(AttestedTls::rustls_config()) so that such a handshake fails",
                seen = crate::hex::encode(spki),
                digest = keyset.digest(),
                attested = crate::attest::channel::attested_for(&keyset, host),
            ),
        ));
    }
    Ok(Some(crate::attest::ChannelInfo::new(host, spki, std::sync::Arc::default())))
}
