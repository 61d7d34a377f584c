//! [`AciService`], the tower service a [`Client`](crate::Client) hands out, and the receipt checks
//! it runs in the background ([`ReceiptCheck`], counted in [`ReceiptStats`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tower::util::BoxCloneSyncService;
use tower_service::Service;
use zeroize::Zeroizing;

use crate::attest::{KeyHandle, RefreshTask};
use crate::e2ee::RequestBody;
use crate::error::{BoxError, Error, ErrorKind, ReceiptFailure, Result};
use crate::receipt::{ExchangeRecord, ReceiptClient, ReceiptPolicy, VerifiedReceipt};

/// The body of an [`AciService`] answer: decrypted (and in before-release mode verified) bytes.
pub type AciBody = UnsyncBoxBody<Bytes, BoxError>;

/// The future of [`AciService`].
pub type AciFuture = Pin<Box<dyn Future<Output = std::result::Result<Response<AciBody>, BoxError>> + Send>>;

/// The pinned hyper client under the layer: one pool for the layer, the provider and receipts.
pub(crate) type Plain = BoxCloneSyncService<Request<RequestBody<Full<Bytes>>>, Response<Incoming>, BoxError>;
/// Key-mismatch retry → [verify before release] → E2EE → `Plain`.
pub(crate) type Stack = BoxCloneSyncService<Request<Full<Bytes>>, Response<AciBody>, BoxError>;

/// Whether a request to `path` (under the gateway's base URL) carries the client's API key: a
/// `POST` to one of the three E2EE endpoints, a `GET` of `/v1/models` (and `/v1/models/…`) or
/// of a receipt (`/v1/aci/receipts/…`, owned by the key). Never the attestation endpoint or
/// any other route, and never a path the gateway could normalise into another one (`/.`,
/// `//`, `%`, `\`).
///
/// [`AciService`] adds the key only where this holds; `aci-proxy` forwards a client's own
/// `Authorization` by the same rule.
///
/// ```
/// use http::Method;
/// use tower_aci::client::carries_api_key;
/// assert!(carries_api_key(&Method::POST, "/v1/chat/completions"));
/// assert!(carries_api_key(&Method::GET, "/v1/aci/receipts/rcpt-1"));
/// assert!(!carries_api_key(&Method::GET, "/v1/aci/attestation"));
/// assert!(!carries_api_key(&Method::GET, "/v1/models/%2e%2e/aci/attestation"));
/// ```
#[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
pub fn carries_api_key(method: &Method, path: &str) -> bool {
    if path.contains("/.") || path.contains("//") || path.contains('%') || path.contains('\\') {
        return false;
    }
    match *method {
        Method::POST => matches!(path, "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings"),
        Method::GET => path == "/v1/models" || path.starts_with("/v1/models/") || path.starts_with("/v1/aci/receipts/"),
        _ => false,
    }
}

/// Fetches and verifies receipts.
pub(crate) struct Verifier {
    pub(crate) receipts: ReceiptClient<Plain, RequestBody<Full<Bytes>>>,
    pub(crate) keys: KeyHandle,
    pub(crate) policy: ReceiptPolicy,
}

impl Verifier {
    pub(crate) async fn verify(&self, record: &ExchangeRecord, bearer: Option<&str>) -> Result<VerifiedReceipt> {
        self.receipts.fetch_and_verify(record, bearer, &self.keys, &self.policy).await
    }
}

/// How many background receipt checks a client ran, and how they ended
/// ([`Client::receipt_stats`](crate::Client::receipt_stats)).
///
/// A check starts once an answer was read to its end in
/// [`ReceiptMode::Background`](crate::client::ReceiptMode::Background); an answer dropped
/// before its end is not checked and not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceiptStats {
    /// Receipts fetched and verified.
    pub verified: u64,
    /// Checks that failed: the receipt did not verify, could not be fetched, or names a refused
    /// keyset ([`Client::last_receipt_error`](crate::Client::last_receipt_error) says why the
    /// last one failed).
    pub failed: u64,
    /// Checks running now.
    pub pending: u64,
}

/// The background checks of one client and its services.
#[derive(Default)]
pub(crate) struct Tracker {
    verified: AtomicU64,
    failed: AtomicU64,
    pending: AtomicU64,
    last_error: Mutex<Option<String>>,
    idle: Notify,
}

impl Tracker {
    pub(crate) fn stats(&self) -> ReceiptStats {
        ReceiptStats {
            verified: self.verified.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            pending: self.pending.load(Ordering::SeqCst),
        }
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn started(&self) {
        self.pending.fetch_add(1, Ordering::SeqCst);
    }

    fn ended(&self, result: &Result<VerifiedReceipt>) {
        match result {
            Ok(_) => {
                self.verified.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e.to_string());
                }
            }
        }
        if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Resolves once no check is running.
    pub(crate) async fn settled(&self) {
        loop {
            let idle = self.idle.notified();
            if self.pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

pub(crate) struct ServiceShared {
    pub(crate) authorization: Option<HeaderValue>,
    /// The gateway's base path (no trailing `/`): routes are judged below it.
    pub(crate) base_path: String,
    /// Set in [`ReceiptMode::Background`](crate::client::ReceiptMode::Background).
    pub(crate) background: Option<Arc<Verifier>>,
    pub(crate) tracker: Arc<Tracker>,
    pub(crate) _refresher: Arc<RefreshTask>,
}

/// The tower service a [`Client`](crate::Client) hands out: `http::Request<Full<Bytes>>` in,
/// decrypted `http::Response<AciBody>` out. Cheap to clone; while any clone lives, the key
/// refresher runs.
///
/// It adds the client's API key to requests that carry no `Authorization`, on the routes
/// `carries_api_key` names (see [`ClientBuilder::api_key`](crate::ClientBuilder::api_key)). In
/// [`ReceiptMode::Background`](crate::client::ReceiptMode::Background) a successful E2EE
/// answer carries a [`ReceiptCheck`] in its extensions; in
/// [`ReceiptMode::BeforeRelease`](crate::client::ReceiptMode::BeforeRelease) (and
/// `HoldUntilVerified`) a buffered answer carries the [`VerifiedReceipt`], a stream a
/// [`StreamVerification`](crate::receipt::StreamVerification). Every answer of an E2EE request
/// carries its [`ExchangeRecord`], and a non-2xx one the
/// [`GatewayError`](crate::GatewayError). A redirect (`3xx`) from the gateway is never an
/// answer: it is an error of kind [`Gateway`](ErrorKind::Gateway) whose
/// [`gateway_error_type`](Error::gateway_error_type) is
/// [`REDIRECT_REFUSED`](crate::client::REDIRECT_REFUSED).
#[derive(Clone)]
pub struct AciService {
    pub(crate) stack: Stack,
    pub(crate) shared: Arc<ServiceShared>,
}

impl fmt::Debug for AciService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AciService").field("background_receipts", &self.shared.background.is_some()).finish()
    }
}

impl Service<Request<Full<Bytes>>> for AciService {
    type Response = Response<AciBody>;
    type Error = BoxError;
    type Future = AciFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        self.stack.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        if let Some(value) = &self.shared.authorization {
            let path = req.uri().path();
            let route = path.strip_prefix(self.shared.base_path.as_str()).filter(|p| p.starts_with('/'));
            if !req.headers().contains_key(AUTHORIZATION) && route.is_some_and(|p| carries_api_key(req.method(), p)) {
                req.headers_mut().insert(AUTHORIZATION, value.clone());
            }
        }
        let background = self.shared.background.clone().map(|verifier| {
            let bearer = crate::protocol::headers::bearer_token(req.headers()).map(|t| Zeroizing::new(t.to_owned()));
            (verifier, bearer)
        });
        let tracker = self.shared.tracker.clone();
        let fut = self.stack.call(req);
        Box::pin(async move {
            let res = fut.await?;
            let Some((verifier, bearer)) = background else { return Ok(res) };
            if !res.status().is_success() {
                return Ok(res);
            }
            let Some(record) = res.extensions().get::<ExchangeRecord>().cloned() else { return Ok(res) };
            let (mut parts, body) = res.into_parts();
            let check = ReceiptCheck::default();
            parts.extensions.insert(check.clone());
            let job = Job { record, bearer, verifier, check, tracker };
            Ok(Response::from_parts(parts, VerifyOnEnd { inner: body, job: Some(job) }.boxed_unsync()))
        })
    }
}

/// The background check of an answer's receipt
/// ([`ReceiptMode::Background`](crate::client::ReceiptMode::Background)), in the response's
/// extensions and in [`ReceiptVerdict::Background`](crate::client::ReceiptVerdict::Background).
/// It starts once the body was read to its end; clones share the outcome.
#[derive(Clone, Default)]
pub struct ReceiptCheck(Arc<CheckState>);

#[derive(Default)]
struct CheckState {
    result: OnceLock<std::result::Result<VerifiedReceipt, (ErrorKind, String)>>,
    done: Notify,
}

impl fmt::Debug for ReceiptCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.0.result.get() {
            None => "pending",
            Some(Ok(_)) => "verified",
            Some(Err(_)) => "failed",
        };
        f.debug_tuple("ReceiptCheck").field(&state).finish()
    }
}

impl ReceiptCheck {
    fn set(&self, result: Result<VerifiedReceipt>) {
        let _ = self.0.result.set(result.map_err(|e| (e.kind(), e.to_string())));
        self.0.done.notify_waiters();
    }

    /// The outcome, once the check finished.
    pub fn result(&self) -> Option<Result<VerifiedReceipt>> {
        self.0.result.get().map(|r| r.clone().map_err(|(kind, message)| Error::new(kind, message)))
    }

    /// Wait for the outcome: the verified receipt, or why it did not verify (kind
    /// [`Receipt`](ErrorKind::Receipt) with its [`ReceiptFailure`], or a fetch error). Resolves
    /// once the body was read to its end and the receipt fetched, or at once when the body
    /// failed or was dropped before its end ([`NotAvailable`](ReceiptFailure::NotAvailable)).
    pub async fn verified(&self) -> Result<VerifiedReceipt> {
        loop {
            let done = self.0.done.notified();
            if let Some(result) = self.result() {
                return result;
            }
            done.await;
        }
    }
}

struct Job {
    record: ExchangeRecord,
    bearer: Option<Zeroizing<String>>,
    verifier: Arc<Verifier>,
    check: ReceiptCheck,
    tracker: Arc<Tracker>,
}

impl Job {
    fn start(self) {
        self.tracker.started();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let result = Err(Error::config("background receipt verification needs a Tokio runtime"));
            self.tracker.ended(&result);
            self.check.set(result);
            return;
        };
        runtime.spawn(async move {
            let result = self.verifier.verify(&self.record, self.bearer.as_ref().map(|b| b.as_str())).await;
            if let Err(e) = &result {
                tracing::error!(receipt = ?self.record.receipt_id(), kind = ?e.kind(), "receipt verification failed: {e}");
            }
            self.tracker.ended(&result);
            self.check.set(result);
        });
    }

    fn abandon(self, why: &str) {
        let message = format!("the receipt was not checked: {why}");
        self.check.set(Err(Error::new(ErrorKind::Receipt(ReceiptFailure::NotAvailable), message)));
    }
}

/// An answer's body that starts the receipt check at its end.
struct VerifyOnEnd {
    inner: AciBody,
    job: Option<Job>,
}

impl Body for VerifyOnEnd {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => {
                if let Some(job) = this.job.take() {
                    job.start();
                }
            }
            Some(Err(e)) => {
                if let Some(job) = this.job.take() {
                    job.abandon(&format!("the answer failed before its end: {e}"));
                }
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        // Polled once more at the end, so the check starts.
        self.job.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for VerifyOnEnd {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            job.abandon("the answer was dropped before its end");
        }
    }
}
