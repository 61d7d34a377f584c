use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use crate::attest::KeyHandle;
use crate::e2ee::service::E2ee;
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

/// How long the layer waits, by default, for a new key after `e2ee_model_key_mismatch`.
pub const DEFAULT_KEY_MISMATCH_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// A [`Layer`] that applies E2EE v2 to requests through the wrapped service.
///
/// Requests to `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings` are encrypted to
/// the attested key the [`KeyHandle`] currently holds; their responses (buffered JSON or SSE) are
/// decrypted on the way back. Non-`POST` requests pass through untouched. `POST`s to any other
/// path (including `/v1/messages` and `/v1/responses`, which E2EE v2 does not cover) are refused
/// unless named with [`allow_plaintext_route`](Self::allow_plaintext_route), so plaintext is
/// never sent by accident.
///
/// The layer is a `Clone + Debug` configuration holder with by-value builder methods.
///
/// ```
/// # fn make(keys: tower_aci::attest::KeyHandle) {
/// use tower_aci::E2eeLayer;
/// let layer = E2eeLayer::new(keys)
///     .strict(true)                       // refuse requests whose tools/… would travel in clear
///     .max_request_body(4 * 1024 * 1024); // 4 MiB
/// # let _ = layer;
/// # }
/// ```
#[derive(Clone)]
pub struct E2eeLayer {
    pub(crate) config: Arc<Config>,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) keys: KeyHandle,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) blocking_threshold: usize,
    pub(crate) strict: bool,
    pub(crate) plaintext_routes: Vec<String>,
    pub(crate) sse_limits: SseLimits,
    pub(crate) key_mismatch_retry: Option<std::time::Duration>,
}

impl E2eeLayer {
    /// A layer encrypting to the keys `keys` holds.
    pub fn new(keys: KeyHandle) -> Self {
        E2eeLayer {
            config: Arc::new(Config {
                keys,
                max_request_body: DEFAULT_MAX_REQUEST_BODY,
                max_response_body: DEFAULT_MAX_RESPONSE_BODY,
                blocking_threshold: DEFAULT_BLOCKING_THRESHOLD,
                strict: false,
                plaintext_routes: Vec::new(),
                sse_limits: SseLimits::default(),
                key_mismatch_retry: Some(DEFAULT_KEY_MISMATCH_WAIT),
            }),
        }
    }

    fn update(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Limit on request bodies read for encryption (default 32 MiB); larger ones fail with
    /// `TooLarge` before anything is sent.
    pub fn max_request_body(self, limit: usize) -> Self {
        self.update(|c| c.max_request_body = limit)
    }

    /// Limit on buffered response bodies (default 64 MiB).
    pub fn max_response_body(self, limit: usize) -> Self {
        self.update(|c| c.max_response_body = limit)
    }

    /// Buffered responses above this size are decrypted on Tokio's blocking pool (default
    /// 16 KiB). `usize::MAX` keeps all decryption inline.
    pub fn blocking_threshold(self, bytes: usize) -> Self {
        self.update(|c| c.blocking_threshold = bytes)
    }

    /// Strict mode: refuse requests carrying members that travel in clear (`tools`,
    /// `response_format`, message `name`, …) and fail responses that carry generated content in
    /// clear (tool-call arguments, refusals, logprobs, …).
    pub fn strict(self, strict: bool) -> Self {
        self.update(|c| c.strict = strict)
    }

    /// Let `POST`s to this path through in plaintext (exact path match). Use for routes of
    /// your own that carry nothing private.
    pub fn allow_plaintext_route(self, path: impl Into<String>) -> Self {
        self.update(|c| c.plaintext_routes.push(path.into()))
    }

    /// When the gateway answers `e2ee_model_key_mismatch` (its E2EE key rotated), wait up to this
    /// long for the key provider's refresher to publish the new key, then send the request once
    /// more, re-encrypted with a fresh nonce (the gateway never decrypted the first attempt).
    /// Default 15 s; `None` hands the 400 answer back at once. Only with a handle that a running
    /// refresher keeps current, on a Tokio runtime.
    pub fn retry_on_key_mismatch(self, wait: Option<std::time::Duration>) -> Self {
        self.update(|c| c.key_mismatch_retry = wait)
    }

    /// Line and event size limits of the SSE decoder.
    pub fn sse_limits(self, limits: SseLimits) -> Self {
        self.update(|c| c.sse_limits = limits)
    }
}

impl fmt::Debug for E2eeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("E2eeLayer")
            .field("max_request_body", &self.config.max_request_body)
            .field("max_response_body", &self.config.max_response_body)
            .field("strict", &self.config.strict)
            .field("plaintext_routes", &self.config.plaintext_routes)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for E2eeLayer {
    type Service = E2ee<S>;

    fn layer(&self, inner: S) -> Self::Service {
        E2ee { inner, config: self.config.clone() }
    }
}
