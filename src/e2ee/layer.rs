use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use crate::attest::KeyHandle;
use crate::e2ee::config::Config;
use crate::e2ee::service::E2ee;
use crate::protocol::sse::SseLimits;

/// A [`Layer`] that applies E2EE v2 to requests through the wrapped service.
///
/// `POST`s to `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings` are encrypted to
/// the attested key the [`KeyHandle`] currently holds; their responses (buffered JSON or SSE) are
/// decrypted on the way back. `POST`s to any other path (including `/v1/messages` and
/// `/v1/responses`, which E2EE v2 does not cover) are refused unless named with
/// [`allow_plaintext_route`](Self::allow_plaintext_route), and so is a request with a body (or a
/// body of unknown size) to one of the three endpoints in any other method — `PUT`, `PATCH`, an
/// extension method such as `post` in lower case, or a `GET` with a body; the path compared
/// ignoring case — with [`UnsupportedEndpoint`](crate::error::ErrorKind::UnsupportedEndpoint): plaintext
/// is never sent by accident. Other requests (a `GET` of `/v1/models`, a receipt) pass through
/// untouched.
///
/// The layer is a `Clone + Debug` configuration holder with by-value builder methods.
///
/// # The channel
///
/// E2EE v2 keeps a request confidential to the attested key, but it does not authenticate the
/// answer: response fields are sealed to the client's ephemeral key, which travels in clear, so
/// anyone who sees the request can forge a complete answer that decrypts cleanly. Only the
/// attested TLS channel (or a receipt verified before release) authenticates an answer. So the
/// answer to an E2EE request sent to an `https://` URL (or to a URL without a scheme) must name
/// the attested TLS channel it came over: a [`ChannelInfo`](crate::attest::ChannelInfo), which
/// `tls::AttestedTls`'s connector (feature `rustls`) puts into every response. Without one it
/// fails with [`ChannelBinding`](crate::error::AttestationFailure::ChannelBinding) before any byte of
/// it is read. Plain `http://` is allowed only to a loopback address (`127.0.0.0/8`, `::1`,
/// `localhost`); a request to any other `http://` host fails with
/// [`Config`](crate::error::ErrorKind::Config) before anything is sent.
/// [`dangerous`](Self::dangerous)`().`[`accept_unbound_channel`](DangerousE2eeLayer::accept_unbound_channel)`()`
/// gives both up.
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

    /// Buffered responses above this size, and SSE events whose data lines together exceed it,
    /// are decrypted on Tokio's blocking pool (default 16 KiB), one at a time and in order: a
    /// stream reads no further byte while its event is decrypted there. `usize::MAX` keeps all
    /// decryption inline.
    #[doc(hidden)] // a hook for the crate's own tests: not API
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

    /// Relaxations that give up part of what the layer checks, each named for what it gives up.
    pub fn dangerous(self) -> DangerousE2eeLayer {
        DangerousE2eeLayer { layer: self }
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
            .field("unbound_channel", &self.config.unbound_channel)
            .finish_non_exhaustive()
    }
}

/// The relaxations of an [`E2eeLayer`], from [`E2eeLayer::dangerous`]. Also a layer itself.
#[derive(Clone, Debug)]
#[must_use]
pub struct DangerousE2eeLayer {
    layer: E2eeLayer,
}

impl DangerousE2eeLayer {
    /// Give up the channel binding of answers: accept an answer that names no attested TLS
    /// channel (an `https://` response through a connector other than
    /// `tls::AttestedTls`'s, a transport of your own), and send E2EE requests over plain `http://`
    /// to any host. Requests stay confidential to the attested key, but nothing then shows that
    /// an answer came from the attested workload: anyone who sees the request can forge one that
    /// decrypts cleanly. Verify receipts before release
    /// ([`VerifyBeforeReleaseLayer`](crate::receipt::VerifyBeforeReleaseLayer)) if you use this.
    pub fn accept_unbound_channel(self) -> Self {
        DangerousE2eeLayer { layer: self.layer.update(|c| c.unbound_channel = true) }
    }

    /// Back to the ordinary layer.
    pub fn end_dangerous(self) -> E2eeLayer {
        self.layer
    }
}

impl From<DangerousE2eeLayer> for E2eeLayer {
    fn from(d: DangerousE2eeLayer) -> Self {
        d.layer
    }
}

impl<S> Layer<S> for DangerousE2eeLayer {
    type Service = E2ee<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.layer.layer(inner)
    }
}

impl<S> Layer<S> for E2eeLayer {
    type Service = E2ee<S>;

    fn layer(&self, inner: S) -> Self::Service {
        E2ee { inner, config: self.config.clone() }
    }
}
