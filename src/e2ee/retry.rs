//! Re-sending a request once after the gateway rotated its E2EE key: a
//! [`tower::retry::Policy`] that goes *above* the E2EE layer.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http::{Request, Response};

use crate::attest::KeyHandle;
use crate::protocol::GatewayError;
use crate::receipt::ExchangeRecord;

/// How long [`KeyMismatchRetry`] waits, by default, for the refresher to publish a new key.
pub const DEFAULT_KEY_MISMATCH_WAIT: Duration = Duration::from_secs(15);

/// The gateway's error type when a request was encrypted to a key it no longer holds.
const KEY_MISMATCH: &str = "e2ee_model_key_mismatch";

/// A [`tower::retry::Policy`] that sends a request once more after the gateway answered
/// `e2ee_model_key_mismatch` (its E2EE key rotated), as soon as the key provider's refresher has
/// published the new key.
///
/// Put it **above** [`E2eeLayer`](crate::E2eeLayer), where the request is still plaintext: the
/// retried attempt goes through the layer again and is encrypted to the new key with a fresh
/// nonce, timestamp and client key (the gateway never decrypted the first attempt, and burned
/// its nonce). The layer has already told the [`KeyHandle`] to re-attest when the answer came
/// back; this policy waits, up to [`max_wait`](Self::max_wait), until the handle holds a key
/// other than the one the failed attempt was encrypted to, then retries. At most one retry per
/// request; a second mismatch is handed back as it is.
///
/// No retry happens when no refresher keeps the handle current (a
/// [`KeyHandle::fixed`] handle), outside a Tokio runtime, or when the answer is anything else.
/// If the wait runs out the request is sent once more anyway (to the key the handle holds then)
/// and that answer is returned.
///
/// The request body must be `Clone` (`Full<Bytes>`, `String`, …): tower's retry keeps a copy of
/// each request for a possible second attempt.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower::retry::RetryLayer;
/// use tower_aci::E2eeLayer;
/// use tower_aci::e2ee::KeyMismatchRetry;
/// # fn build<S>(keys: tower_aci::attest::KeyHandle, client: S) {
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(KeyMismatchRetry::new(keys.clone()))) // above the layer
///     .layer(E2eeLayer::new(keys))
///     .service(client);
/// # let _ = svc;
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct KeyMismatchRetry {
    keys: KeyHandle,
    wait: Duration,
    retried: bool,
}

impl KeyMismatchRetry {
    /// A policy waiting for new keys on `keys` (the handle the E2EE layer reads), up to 15 s.
    pub fn new(keys: KeyHandle) -> Self {
        KeyMismatchRetry { keys, wait: DEFAULT_KEY_MISMATCH_WAIT, retried: false }
    }

    /// How long to wait for the refresher to publish a new key (default 15 s).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The key the failed attempt was encrypted to, if `response` is a key-mismatch answer of
    /// the E2EE layer.
    fn mismatched_key<B>(response: &Response<B>) -> Option<&str> {
        let gateway = response.extensions().get::<GatewayError>()?;
        if gateway.error_type.as_deref() != Some(KEY_MISMATCH) {
            return None;
        }
        response.extensions().get::<ExchangeRecord>()?.e2ee_public_key()
    }
}

impl<ReqBody, ResBody, E> tower::retry::Policy<Request<ReqBody>, Response<ResBody>, E> for KeyMismatchRetry
where
    ReqBody: Clone,
{
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        _req: &mut Request<ReqBody>,
        result: &mut Result<Response<ResBody>, E>,
    ) -> Option<Self::Future> {
        if self.retried {
            return None;
        }
        let old_key = Self::mismatched_key(result.as_ref().ok()?)?.to_owned();
        if !self.keys.has_refresher() || tokio::runtime::Handle::try_current().is_err() {
            return None;
        }
        self.retried = true;
        tracing::info!("gateway rotated its E2EE key; retrying once with the new key");
        let changed = self.keys.clone().wait_for_other_key(old_key);
        let wait = self.wait;
        Some(Box::pin(async move {
            if tokio::time::timeout(wait, changed).await.is_err() {
                tracing::warn!("no new E2EE key within {wait:?}; retrying anyway");
            }
        }))
    }

    fn clone_request(&mut self, req: &Request<ReqBody>) -> Option<Request<ReqBody>> {
        let mut clone = Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}
