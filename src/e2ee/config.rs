//! The E2EE layer's settings, shared by the tower layer and the reqwest-middleware adapter, and
//! the routing decision they make for each request.

use http::Method;

use crate::attest::KeyHandle;
use crate::error::{Error, ErrorKind};
use crate::protocol::Endpoint;
use crate::protocol::sse::SseLimits;

/// Default limit on a request body the layer reads to encrypt: 32 MiB, the gateway's own limit.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;
/// Default limit on a buffered response body (and on a non-2xx error body): 64 MiB.
pub const DEFAULT_MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;
/// Buffered responses larger than this are decrypted on Tokio's blocking pool (when running on
/// Tokio) so a large embeddings answer does not stall the executor. At 16 KiB a body holds at
/// most ~85 ciphertext fields (a field is at least 186 hex characters), a few milliseconds of
/// secp256k1 work in the worst case; a typical chat answer stays inline.
pub const DEFAULT_BLOCKING_THRESHOLD: usize = 16 * 1024;

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) keys: KeyHandle,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) blocking_threshold: usize,
    pub(crate) strict: bool,
    pub(crate) plaintext_routes: Vec<String>,
    pub(crate) sse_limits: SseLimits,
}

impl Config {
    pub(crate) fn new(keys: KeyHandle) -> Self {
        Config {
            keys,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            max_response_body: DEFAULT_MAX_RESPONSE_BODY,
            blocking_threshold: DEFAULT_BLOCKING_THRESHOLD,
            strict: false,
            plaintext_routes: Vec::new(),
            sse_limits: SseLimits::default(),
        }
    }

    pub(crate) fn route(&self, method: &Method, path: &str) -> Route {
        if method != Method::POST {
            return Route::Passthrough;
        }
        if let Some(endpoint) = Endpoint::from_path(path) {
            return Route::Encrypt(endpoint);
        }
        if self.plaintext_routes.iter().any(|p| p == path) {
            return Route::Passthrough;
        }
        Route::Refuse(Error::new(
            ErrorKind::UnsupportedEndpoint,
            format!(
                "E2EE v2 does not cover POST {path}; refusing to send it in plaintext (see E2eeLayer::allow_plaintext_route)"
            ),
        ))
    }
}

/// What the layer does with one request.
pub(crate) enum Route {
    Encrypt(Endpoint),
    Passthrough,
    Refuse(Error),
}
