//! A native [`reqwest_middleware::Middleware`] applying E2EE v2 (feature `reqwest-middleware`).
//!
//! A tower layer cannot sit inside reqwest-middleware's chain, so this middleware drives the same
//! protocol core and the same decrypting response body as [`E2eeLayer`].
//! Put it **after** `RetryTransientMiddleware` (middleware run in the order attached), so every
//! attempt re-encrypts with a fresh nonce: the gateway burns a nonce before it decrypts.
//!
//! ```no_run
//! # async fn run(keys: tower_aci::attest::KeyHandle) -> Result<(), Box<dyn std::error::Error>> {
//! use reqwest_middleware::ClientBuilder;
//! use tower_aci::reqwest::E2eeMiddleware;
//!
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     // .with(RetryTransientMiddleware::new_with_policy(…))   // retries first
//!     .with(E2eeMiddleware::new(keys))                         // then E2EE
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
//! [`tower_aci::Error`](crate::Error): `err.downcast_ref::<tower_aci::Error>()` on the inner
//! `anyhow::Error`. `reqwest_retry` wraps middleware errors once more in its `RetryError`
//! (whose `transparent` form hides them from `source()` chains), so downcast that first when
//! a retry middleware runs outside this one. Errors while reading a decrypted body (a tampered
//! event, a truncated stream) come from `reqwest::Response::bytes`/`chunk` as `reqwest::Error`s
//! whose `source()` chain holds the `tower_aci::Error`: use [`Error::find`](crate::Error::find).

use std::sync::Arc;

use bytes::Bytes;
use http::Extensions;
use http_body_util::{BodyExt, Limited};
use reqwest::ResponseBuilderExt;
use reqwest_middleware::{Middleware, Next};

use crate::attest::KeyHandle;
use crate::e2ee::E2eeLayer;
use crate::e2ee::future::{decrypting_response, encrypt, error_response};
use crate::e2ee::layer::Config;
use crate::e2ee::service::Route;
use crate::error::{Error, ErrorKind};

/// E2EE v2 as a reqwest-middleware [`Middleware`]. Configure it like the tower layer.
#[derive(Clone, Debug)]
pub struct E2eeMiddleware {
    config: Arc<Config>,
}

impl E2eeMiddleware {
    /// A middleware encrypting to the keys `keys` holds, with default settings.
    pub fn new(keys: KeyHandle) -> Self {
        Self::from_layer(E2eeLayer::new(keys))
    }

    /// A middleware with the settings of a configured [`E2eeLayer`].
    pub fn from_layer(layer: E2eeLayer) -> Self {
        E2eeMiddleware { config: layer.config }
    }
}

fn mw(e: Error) -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(e)
}

#[async_trait::async_trait]
impl Middleware for E2eeMiddleware {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let path = req.url().path().to_owned();
        let endpoint = match self.config.route(req.method(), &path) {
            Route::Passthrough => return next.run(req, extensions).await,
            Route::Refuse(e) => return Err(mw(e)),
            Route::Encrypt(endpoint) => endpoint,
        };
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
        let (wire, exchange) = encrypt(&self.config, endpoint, &path, req.headers_mut(), bytes).map_err(mw)?;
        drop(body);
        *req.body_mut() = Some(reqwest::Body::from(wire));

        let res = next.run(req, extensions).await?;
        let url = res.url().clone();
        let (mut parts, body) = http::Response::<reqwest::Body>::from(res).into_parts();
        let body = if parts.status.is_success() {
            reqwest::Body::wrap(decrypting_response(&mut parts, body, exchange).map_err(mw)?)
        } else {
            let bytes: Bytes = Limited::new(body, self.config.max_response_body)
                .collect()
                .await
                .map_err(|e| mw(Error::new(ErrorKind::Transport, "reading the error response failed").with_source(e)))?
                .to_bytes();
            error_response(&mut parts, &bytes, &exchange).map_err(mw)?;
            reqwest::Body::from(bytes)
        };
        // Keep the response URL: a rebuilt reqwest::Response takes it from its extensions.
        let (url_parts, ()) = http::Response::builder()
            .url(url)
            .body(())
            .map_err(|e| mw(Error::new(ErrorKind::Transport, "rebuilding the response failed").with_source(e)))?
            .into_parts();
        parts.extensions.extend(url_parts.extensions);
        Ok(reqwest::Response::from(http::Response::from_parts(parts, body)))
    }
}
