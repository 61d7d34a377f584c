//! The E2EE layer's settings, shared by the tower layer and the reqwest-middleware adapter, and
//! the routing decision they make for each request.

use std::fmt;
use std::sync::{Arc, Mutex};

use http::Method;

use crate::attest::KeyHandle;
use crate::attest::channel::{ChannelRule, channel_rule};
use crate::error::{Error, ErrorKind};
use crate::protocol::Endpoint;
use crate::protocol::sse::SseLimits;

/// Default limit on a request body the layer reads to encrypt: 32 MiB, the gateway's own limit.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;
/// Default limit on a buffered response body (and on a non-2xx error body): 64 MiB.
pub(crate) const DEFAULT_MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;
/// Buffered responses larger than this, and SSE events whose data is larger, are decrypted on
/// Tokio's blocking pool (when running on Tokio) so a large answer or event does not stall the
/// executor. At 16 KiB a body holds at
/// most ~85 ciphertext fields (a field is at least 186 hex characters), a few milliseconds of
/// secp256k1 work in the worst case; a typical chat answer stays inline.
pub(crate) const DEFAULT_BLOCKING_THRESHOLD: usize = 16 * 1024;

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) keys: KeyHandle,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) blocking_threshold: usize,
    pub(crate) strict: bool,
    pub(crate) plaintext_routes: Vec<String>,
    pub(crate) sse_limits: SseLimits,
    pub(crate) randomness: Randomness,
    /// `dangerous().accept_unbound_channel()`: answers need no attested channel.
    pub(crate) unbound_channel: bool,
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
            randomness: Randomness::default(),
            unbound_channel: false,
        }
    }

    /// What the answer to an E2EE request for this URL must show about its channel; plain HTTP
    /// off loopback is refused here, before anything is sent.
    pub(crate) fn target(&self, scheme: Option<&str>, host: Option<&str>) -> Result<Target, Error> {
        let rule = channel_rule(scheme, host, self.unbound_channel, "the E2EE request's URL")?;
        Ok(Target { rule, host: host.map(str::to_owned) })
    }

    /// What to do with a request. `may_have_body`: the request carries a body, or might (its
    /// size is unknown).
    ///
    /// Only `POST` (exactly: methods are case-sensitive, and `post` is another, extension
    /// method) is encrypted. Any other method with a body to a path that names an E2EE endpoint
    /// (its path compared ignoring ASCII case, as a lenient router might) is refused: the body
    /// would travel in plaintext. Without a body it passes through.
    pub(crate) fn route(&self, method: &Method, path: &str, may_have_body: bool) -> Route {
        if method != Method::POST {
            let endpoint = Endpoint::from_path(&path.to_ascii_lowercase());
            if let (Some(endpoint), true) = (endpoint, may_have_body) {
                return Route::Refuse(Error::new(
                    ErrorKind::UnsupportedEndpoint,
                    format!(
                        "{method} {path} carries a body to the E2EE endpoint {}, which E2EE v2 covers only as POST \
                         (exactly, in upper case); refusing to send it in plaintext. Send it as POST",
                        endpoint.path()
                    ),
                ));
            }
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

/// Where an E2EE request goes, for the channel check of its answer.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) rule: ChannelRule,
    /// The request URL's host, which the channel must have been opened to.
    pub(crate) host: Option<String>,
}

/// How `E2eeLayer::dangerous().accept_unbound_channel()` is spelt in messages.
pub(crate) const LAYER_OPT_OUT: &str = "E2eeLayer::dangerous().accept_unbound_channel()";

/// What the layer does with one request.
pub(crate) enum Route {
    Encrypt(Endpoint),
    Passthrough,
    Refuse(Error),
}

/// Where the layer draws client keys, nonces and ephemeral keys from: the OS CSPRNG, or — tests
/// only, see `E2eeLayer::dangerous_randomness_for_tests` — a caller's byte source.
#[derive(Clone, Default)]
pub(crate) struct Randomness(Option<Arc<Mutex<FillFn>>>);

/// A caller's byte source.
type FillFn = dyn FnMut(&mut [u8]) + Send;

impl Randomness {
    #[cfg(feature = "__internal-test-vectors")]
    pub(crate) fn from_fn(fill: impl FnMut(&mut [u8]) + Send + 'static) -> Self {
        Randomness(Some(Arc::new(Mutex::new(fill))))
    }

    /// Run `f` with this source of randomness.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut dyn rand_core::CryptoRngCore) -> R) -> R {
        match &self.0 {
            None => f(&mut rand_core::OsRng),
            Some(fill) => {
                let mut guard = fill.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                f(&mut FillRng(&mut *guard))
            }
        }
    }
}

impl fmt::Debug for Randomness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Randomness(test source)" } else { "Randomness(OsRng)" })
    }
}

/// A byte source dressed as a CSPRNG, for tests that replay recorded exchanges.
struct FillRng<'a>(&'a mut FillFn);

impl rand_core::RngCore for FillRng<'_> {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }
    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        (self.0)(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        (self.0)(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for FillRng<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, path: &str, body: bool) -> &'static str {
        let config = Config::new(KeyHandle::new());
        match config.route(&Method::from_bytes(method.as_bytes()).unwrap(), path, body) {
            Route::Encrypt(_) => "encrypt",
            Route::Passthrough => "pass",
            Route::Refuse(e) => {
                assert_eq!(e.kind(), ErrorKind::UnsupportedEndpoint);
                "refuse"
            }
        }
    }

    #[test]
    fn only_post_is_encrypted_and_other_bodies_to_e2ee_endpoints_are_refused() {
        assert_eq!(route("POST", "/v1/chat/completions", true), "encrypt");
        assert_eq!(route("POST", "/v1/messages", true), "refuse");
        for method in ["PUT", "PATCH", "post", "Post", "GET", "DELETE", "OPTIONS", "QUERY"] {
            for path in ["/v1/chat/completions", "/v1/completions/", "/p/v1/embeddings", "/V1/CHAT/COMPLETIONS"] {
                assert_eq!(route(method, path, true), "refuse", "{method} {path}");
                assert_eq!(route(method, path, false), "pass", "{method} {path} without a body");
            }
            // Other paths are not the layer's business unless they are POSTs.
            assert_eq!(route(method, "/v1/models", true), "pass", "{method}");
        }
    }
}
