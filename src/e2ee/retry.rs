//! Re-sending a request once after the gateway rotated its E2EE key: a
//! [`tower::retry::Policy`] that goes *above* the E2EE layer.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::attest::KeyHandle;
use crate::protocol::GatewayError;
use crate::receipt::ExchangeRecord;

/// How long [`KeyMismatchRetry`] waits, by default, for the refresher to publish a new key.
pub(crate) const DEFAULT_KEY_MISMATCH_WAIT: Duration = Duration::from_secs(15);

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
/// each request for a possible second attempt, in the plaintext the caller gave. Send the body
/// as a [`ZeroizingBody`] to have that copy zeroized when the exchange is over (the last clone
/// and every frame read from it dropped); a `Full<Bytes>` or a `String` is freed as it is. The
/// layer copies a body only when it arrives in several frames, and zeroizes that copy (or a
/// single frame nobody else holds) as soon as it is encrypted.
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

/// A plaintext request body that is zeroized when it is no longer used: its clones share one
/// buffer, wiped when the last clone and the last frame read from any of them are dropped.
/// Meant for the requests [`KeyMismatchRetry`] keeps a copy of (tower's retry clones the request
/// before the first attempt and holds the clone until the exchange is over). `Debug` prints only
/// the length.
///
/// ```
/// use tower_aci::e2ee::ZeroizingBody;
/// let req = http::Request::post("https://gateway.example/v1/chat/completions")
///     .header("content-type", "application/json")
///     .body(ZeroizingBody::from(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#.to_owned()))
///     .unwrap();
/// # let _ = req;
/// ```
#[derive(Clone, Default)]
pub struct ZeroizingBody {
    data: Option<Arc<Zeroizing<Vec<u8>>>>,
}

impl ZeroizingBody {
    /// A body of these bytes (taken over, not copied); `From<Vec<u8>>` and `From<String>` for users.
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        ZeroizingBody { data: Some(Arc::new(Zeroizing::new(bytes))) }
    }
}

impl From<Vec<u8>> for ZeroizingBody {
    fn from(bytes: Vec<u8>) -> Self {
        ZeroizingBody::new(bytes)
    }
}

impl From<String> for ZeroizingBody {
    fn from(text: String) -> Self {
        ZeroizingBody::new(text.into_bytes())
    }
}

/// The buffer a frame of a [`ZeroizingBody`] points into.
struct Shared(Arc<Zeroizing<Vec<u8>>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Body for ZeroizingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        // The frame borrows the shared buffer (no copy): it is wiped once this is dropped too.
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(Bytes::from_owner(Shared(d))))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// The shared buffer is a `Zeroizing<Vec<u8>>`, wiped when its last owner is dropped.
impl ZeroizeOnDrop for ZeroizingBody {}

impl fmt::Debug for ZeroizingBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.data.as_ref().map_or(0, |d| d.len());
        write!(f, "ZeroizingBody([redacted; {len} bytes])")
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn the_body_is_zeroized_on_drop_and_never_printed() {
        fn zeroized_on_drop<T: ZeroizeOnDrop>() {}
        zeroized_on_drop::<ZeroizingBody>();
        let body = ZeroizingBody::from("my secret prompt".to_owned());
        let shown = format!("{body:?}");
        assert!(!shown.contains("secret") && shown.contains("16 bytes"), "{shown}");
    }

    #[tokio::test]
    async fn clones_share_one_buffer_and_read_whole() {
        let body = ZeroizingBody::from(b"abc".to_vec());
        let copy = body.clone();
        let a = body.collect().await.unwrap().to_bytes();
        let b = copy.clone().collect().await.unwrap().to_bytes();
        assert_eq!((&a[..], &b[..]), (&b"abc"[..], &b"abc"[..]));
        assert_eq!(a.as_ptr(), b.as_ptr(), "no copy of the plaintext was made");
        assert_eq!(copy.size_hint().exact(), Some(3));
    }
}
