use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use crate::attest::KeyHandle;
use crate::e2ee::config::Config;
use crate::e2ee::service::E2ee;
use crate::protocol::sse::SseLimits;

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
#[must_use]
pub struct E2eeLayer {
    pub(crate) config: Arc<Config>,
}

impl E2eeLayer {
    /// A layer encrypting to the keys `keys` holds.
    pub fn new(keys: KeyHandle) -> Self {
        E2eeLayer { config: Arc::new(Config::new(keys)) }
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

    /// Strict mode: refuse requests carrying any member that travels in clear and is not on the
    /// allow-list of members known to carry nothing private (see
    /// [`EncryptOptions::strict`](crate::protocol::request::EncryptOptions::strict): `stop`,
    /// `user`, `logit_bias`, `tools`, `response_format`, message `name`, … are refused), and fail
    /// responses that carry generated content in clear (tool-call names and arguments, refusals,
    /// logprobs, transcripts, …): a buffered body before any byte of it, a stream at the event
    /// that carries it, before that event is released. Without strict mode the layer warns
    /// (`tracing`, once per request and once per stream; names only, never values).
    pub fn strict(self, strict: bool) -> Self {
        self.update(|c| c.strict = strict)
    }

    /// Let `POST`s to this path through in plaintext (exact path match). Use for routes of
    /// your own that carry nothing private.
    pub fn allow_plaintext_route(self, path: impl Into<String>) -> Self {
        self.update(|c| c.plaintext_routes.push(path.into()))
    }

    /// **Dangerous, for tests only**: draw every random byte of an exchange (client key,
    /// `X-E2EE-Nonce`, ephemeral keys, AES-GCM nonces, in that order) from `fill` instead of the
    /// operating system's CSPRNG, so that a test can replay an exchange recorded with fixed keys
    /// byte for byte. Anything but a CSPRNG here voids the protection E2EE gives. Compiled only
    /// with the hidden feature `__internal-test-vectors`, which no user feature enables.
    #[cfg(feature = "__internal-test-vectors")]
    #[doc(hidden)]
    pub fn dangerous_randomness_for_tests(self, fill: impl FnMut(&mut [u8]) + Send + 'static) -> Self {
        let randomness = crate::e2ee::config::Randomness::from_fn(fill);
        self.update(|c| c.randomness = randomness)
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
