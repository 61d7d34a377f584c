//! Fetching receipts and attested sessions over any tower HTTP service, with bounded retries.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{Either, select};
use http::header::{ACCEPT, AUTHORIZATION, CONNECTION};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use tower::ServiceExt;
use tower_service::Service;

use crate::attest::SleepFn;
use crate::error::{BoxError, Error, ErrorKind, ReceiptFailure, Result};
use crate::protocol::{GatewayError, headers};
use crate::receipt::document::Receipt;
use crate::receipt::record::ExchangeRecord;
use crate::receipt::session::{AttestedSession, MAX_SESSION_SIZE};
use crate::receipt::verify::{Keysets, ReceiptPolicy, VerifiedReceipt, verify_exchange_owned};

/// Path of the receipt endpoint, appended to the base URL's path.
const RECEIPTS_PATH: &str = "/v1/aci/receipts/";
/// Path of the session endpoint, appended to the base URL's path.
const SESSIONS_PATH: &str = "/v1/aci/sessions/";
/// Default limit on a fetched document (receipt or session with its evidence).
pub(crate) const DEFAULT_MAX_DOCUMENT_SIZE: usize = MAX_SESSION_SIZE;
/// Default limit on a body [`ReceiptClient::release_after_receipt`] collects: 64 MiB.
pub(crate) const DEFAULT_MAX_RELEASE_BODY: usize = 64 * 1024 * 1024;
/// Default bound on waiting for the attestation of a keyset digest a receipt names.
pub(crate) const DEFAULT_KEYSET_WAIT: Duration = Duration::from_secs(10);

/// Default number of immediate re-sends after a `404` from another replica.
pub(crate) const DEFAULT_REPLICA_HOPS: u32 = 32;
/// Default time limit on one fetch, all attempts included.
pub(crate) const DEFAULT_FETCH_TIME_LIMIT: Duration = Duration::from_secs(15);

/// Bounded retries of receipt and session fetches: exponential backoff for `404`, `429` and
/// `5xx` answers, immediate re-sends when another replica answered, and a time limit.
///
/// A stream's receipt is stored only when the gateway reaches the end of the stream, and a
/// busy gateway may answer `429`/`503`: a few retries spaced out absorb both. A `Retry-After`
/// in seconds replaces the computed delay (capped at the maximum backoff).
///
/// Behind a load balancer the receipt lives only on the replica that served the exchange. Every
/// attempt after the first carries `Connection: close`, so that the attempt after it opens a new
/// connection, which a per-connection (L4) balancer may route to another replica; an HTTP-aware
/// (L7) balancer routes each request anyway. When a `404` names (in `X-ACI-Keyset-Digest`)
/// another replica than the one the exchange's response named, the fetch is re-sent at once,
/// up to [`replica_hops`](Self::replica_hops) times, without counting against the backoff
/// retries. The whole fetch is bounded by [`time_limit`](Self::time_limit).
///
/// ```
/// use std::time::Duration;
/// use tower_aci::receipt::RetryPolicy;
///
/// // Three retries after 50, 100 and 200 ms; four replica hops; 5 s in all.
/// let retry = RetryPolicy::new(3, Duration::from_millis(50), Duration::from_secs(1))
///     .replica_hops(4)
///     .time_limit(Duration::from_secs(5));
/// assert_ne!(retry, RetryPolicy::none());
/// ```
/// Hand it to [`ReceiptClient::retry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct RetryPolicy {
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    replica_hops: u32,
    time_limit: Duration,
}

impl Default for RetryPolicy {
    /// Five retries, 100 ms doubling up to 2 s (about 3 s in all), 32 replica hops, 15 s in
    /// all.
    fn default() -> Self {
        RetryPolicy::new(5, Duration::from_millis(100), Duration::from_secs(2))
    }
}

impl RetryPolicy {
    /// Up to `max_retries` retries after the first attempt, waiting `initial_backoff`, then
    /// twice as long each time, never more than `max_backoff`; with the default replica hops
    /// (32) and time limit (15 s).
    pub const fn new(max_retries: u32, initial_backoff: Duration, max_backoff: Duration) -> Self {
        RetryPolicy {
            max_retries,
            initial_backoff,
            max_backoff,
            replica_hops: DEFAULT_REPLICA_HOPS,
            time_limit: DEFAULT_FETCH_TIME_LIMIT,
        }
    }

    /// No retries and no replica hops: one attempt (still bounded by the time limit).
    pub const fn none() -> Self {
        RetryPolicy::new(0, Duration::ZERO, Duration::ZERO).replica_hops(0)
    }

    /// Re-send at once, up to `hops` times, when another replica than the one that served the
    /// exchange answered `404` (default 32). With `n` replicas behind a round-robin balancer,
    /// `n` hops reach them all.
    pub const fn replica_hops(mut self, hops: u32) -> Self {
        self.replica_hops = hops;
        self
    }

    /// Give up a fetch, all attempts and waits included, after this long (default 15 s).
    pub const fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = limit;
        self
    }

    /// The wait before retry number `retry` (0-based): `initial * 2^retry`, capped.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.initial_backoff.checked_mul(factor).unwrap_or(self.max_backoff).min(self.max_backoff)
    }
}

/// Fetches receipts (`GET /v1/aci/receipts/{id}`) and attested sessions
/// (`GET /v1/aci/sessions/{id}`) over any tower HTTP service, and verifies them.
///
/// The service takes `http::Request<B>` for any body `B` that is `From<Bytes>` (`Full<Bytes>` by
/// default): a hyper-util legacy client — the very client under the E2EE layer, whose body is
/// [`RequestBody`](crate::e2ee::RequestBody), so one pool serves both — or that client behind
/// [`E2eeLayer`](crate::E2eeLayer) (which lets `GET`s through untouched). It is cloned for each
/// request. Configuration methods take and return the client by value.
///
/// ```no_run
/// # async fn f<S, B>(client: S, keys: tower_aci::attest::KeyHandle, response: http::Response<()>) -> tower_aci::Result<()>
/// # where
/// #     S: tower::Service<http::Request<http_body_util::Full<bytes::Bytes>>, Response = http::Response<B>> + Clone,
/// #     S::Error: Into<tower_aci::BoxError>,
/// #     B: http_body::Body,
/// #     B::Error: Into<tower_aci::BoxError>,
/// # {
/// use tower_aci::receipt::{ExchangeRecord, ReceiptClient, ReceiptPolicy};
///
/// let receipts = ReceiptClient::new(client, "https://gateway.example".parse().unwrap());
/// // After reading the response body to its end:
/// let record = response.extensions().get::<ExchangeRecord>().expect("an E2EE exchange");
/// let verified = receipts.fetch_and_verify(record, Some("sk-…"), &keys, &ReceiptPolicy::new()).await?;
/// std::fs::write("receipt.json", verified.receipt().as_bytes()).ok(); // archive it
/// # Ok(()) }
/// ```
///
/// # Replicas and restarts
///
/// A gateway keeps receipts in memory, in the process that served the exchange: behind a load
/// balancer only that replica has the receipt, and a restart loses it. To reach it:
///
/// - Give the receipt client the same HTTP client (connection pool) as the E2EE layer: its first
///   attempt then usually reuses the connection the exchange used (hyper-util reuses the most
///   recently idle connection), which a per-connection balancer pinned to that replica.
/// - A `404` that names another replica's keyset digest than the exchange's
///   ([`ExchangeRecord::keyset_digest`]) is re-sent at once on a fresh connection; see
///   [`RetryPolicy`].
/// - A receipt naming a keyset digest the [`Keysets`] do not know (a replica or a restarted
///   process not attested yet) is verified after the key provider attested it, waiting at most
///   [`keyset_wait`](Self::keyset_wait); see [`KeysetMatch`](crate::receipt::KeysetMatch) for
///   the rule applied when it cannot be attested, and
///   [`ReceiptFailure::RefusedKeyset`] for a keyset whose report failed the policy.
#[must_use]
pub struct ReceiptClient<S, ReqB = Full<Bytes>> {
    service: S,
    _body: PhantomData<fn() -> ReqB>,
    base: Uri,
    retry: RetryPolicy,
    max_document_size: usize,
    max_release_body: usize,
    keyset_wait: Duration,
    sleep: SleepFn,
}

impl<S: Clone, ReqB> Clone for ReceiptClient<S, ReqB> {
    fn clone(&self) -> Self {
        ReceiptClient {
            service: self.service.clone(),
            _body: PhantomData,
            base: self.base.clone(),
            retry: self.retry,
            max_document_size: self.max_document_size,
            max_release_body: self.max_release_body,
            keyset_wait: self.keyset_wait,
            sleep: self.sleep.clone(),
        }
    }
}

impl<S, ReqB> fmt::Debug for ReceiptClient<S, ReqB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiptClient")
            .field("base", &self.base)
            .field("retry", &self.retry)
            .field("max_document_size", &self.max_document_size)
            .field("max_release_body", &self.max_release_body)
            .field("keyset_wait", &self.keyset_wait)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB> ReceiptClient<S, ReqB> {
    /// A client for the gateway at `base` (scheme and authority, optionally a path prefix),
    /// with the default [`RetryPolicy`] and `tokio::time::sleep` for backoff.
    pub fn new(service: S, base: Uri) -> Self
    where
        S: Service<Request<ReqB>>,
    {
        ReceiptClient {
            service,
            _body: PhantomData,
            base,
            retry: RetryPolicy::default(),
            max_document_size: DEFAULT_MAX_DOCUMENT_SIZE,
            max_release_body: DEFAULT_MAX_RELEASE_BODY,
            keyset_wait: DEFAULT_KEYSET_WAIT,
            sleep: Arc::new(|d| Box::pin(tokio::time::sleep(d))),
        }
    }

    /// How long [`fetch_and_verify`](Self::fetch_and_verify) waits at most, once the receipt is
    /// fetched, for the key provider to attest a keyset digest the receipt names and the keysets
    /// do not know (default 10 s; the attempt started while the receipt was fetched). Zero does
    /// not wait.
    pub fn keyset_wait(mut self, wait: Duration) -> Self {
        self.keyset_wait = wait;
        self
    }

    /// How to retry `404`, `429` and `5xx` answers.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The sleep used between retries and for the time limits (default `tokio::time::sleep`,
    /// which needs a Tokio runtime with time enabled).
    pub fn sleep<F, Fut>(mut self, sleep: F) -> Self
    where
        F: Fn(Duration) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.sleep = Arc::new(move |d| Box::pin(sleep(d)));
        self
    }

    /// Limit on a fetched receipt or session document (default 16 MiB).
    pub fn max_document_size(mut self, bytes: usize) -> Self {
        self.max_document_size = bytes;
        self
    }

    /// Limit on the body [`release_after_receipt`](Self::release_after_receipt) collects
    /// (default 64 MiB).
    pub fn max_release_body(mut self, bytes: usize) -> Self {
        self.max_release_body = bytes;
        self
    }

    /// The limit on bodies collected before release.
    pub(crate) fn max_release_body_limit(&self) -> usize {
        self.max_release_body
    }

    /// The base URL.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn base_url(&self) -> &Uri {
        &self.base
    }
}

/// Which document a fetch is for: decides the failure kinds.
#[derive(Clone, Copy)]
enum Doc {
    Receipt,
    Session,
}

impl Doc {
    fn name(self) -> &'static str {
        match self {
            Doc::Receipt => "receipt",
            Doc::Session => "attested session",
        }
    }
}

fn receipt_err(failure: ReceiptFailure, message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::receipt(failure, message)
}

/// `{base path}{prefix}{encoded id}`.
fn document_uri(base: &Uri, prefix: &str, id: &str) -> Result<Uri> {
    let config = |e: http::Error| Error::new(ErrorKind::Config, "cannot build the receipt URL").with_source(e);
    let base_path = base.path().trim_end_matches('/');
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(
        format!("{base_path}{prefix}{}", crate::percent::encode_path_segment(id))
            .parse()
            .map_err(|e: http::uri::InvalidUri| config(e.into()))?,
    );
    Uri::from_parts(parts).map_err(|e| config(e.into()))
}

/// The answer's `Retry-After` (seconds or an HTTP-date).
fn retry_after(response_headers: &http::HeaderMap) -> Option<Duration> {
    headers::retry_after(response_headers, unix_now(), crate::error::MAX_RETRY_AFTER)
}

/// The system clock, in Unix seconds (an HTTP-date `Retry-After` is read against it).
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A body error as a tower-aci error: ours passes through (decryption failures keep their kind).
fn body_error(e: BoxError, what: &str) -> Error {
    match e.downcast::<Error>() {
        Ok(e) => *e,
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Error::new(ErrorKind::TooLarge, format!("the {what} exceeds the configured limit"))
            } else {
                Error::new(ErrorKind::Transport, format!("reading the {what} failed")).with_source(e)
            }
        }
    }
}

impl<S, ReqB, B> ReceiptClient<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone,
    ReqB: From<Bytes>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    /// `GET {prefix}{id}` with retries, within the retry policy's time limit; the body of the
    /// `200`. `served_by` is the keyset digest of the replica that served the exchange.
    async fn get(
        &self,
        prefix: &str,
        id: &str,
        bearer: Option<&str>,
        doc: Doc,
        served_by: Option<&str>,
    ) -> Result<Bytes> {
        // The status of the last answer (0: none yet), for the timeout's message.
        let last = std::sync::atomic::AtomicU16::new(0);
        let work = std::pin::pin!(self.get_unbounded(prefix, id, bearer, doc, served_by, &last));
        match select(work, (self.sleep)(self.retry.time_limit)).await {
            Either::Left((result, _)) => result,
            Either::Right(_) => {
                let what = doc.name();
                let limit = self.retry.time_limit;
                Err(match StatusCode::from_u16(last.load(std::sync::atomic::Ordering::Relaxed)).ok() {
                    Some(status) => Error::new(
                        ErrorKind::Transport,
                        format!("fetching the {what} gave up after {limit:?} (last answer: {status})"),
                    ),
                    None => Error::new(ErrorKind::Transport, format!("fetching the {what} timed out after {limit:?}")),
                })
            }
        }
    }

    async fn get_unbounded(
        &self,
        prefix: &str,
        id: &str,
        bearer: Option<&str>,
        doc: Doc,
        served_by: Option<&str>,
        last: &std::sync::atomic::AtomicU16,
    ) -> Result<Bytes> {
        let what = doc.name();
        let uri = document_uri(&self.base, prefix, id)?;
        let authorization = match bearer {
            Some(token) => {
                let mut v = HeaderValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| Error::new(ErrorKind::Config, "the bearer token is not a valid header value"))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let mut retry = 0;
        let mut hops = 0;
        let mut first = true;
        let mut other_replicas: Vec<String> = Vec::new();
        loop {
            let mut request = Request::get(uri.clone())
                .header(ACCEPT, "application/json")
                .body(ReqB::from(Bytes::new()))
                .map_err(|e| Error::new(ErrorKind::Config, "cannot build the receipt request").with_source(e))?;
            if let Some(v) = &authorization {
                request.headers_mut().insert(AUTHORIZATION, v.clone());
            }
            if !std::mem::take(&mut first) {
                // This connection is not reused: the attempt after this one opens a new
                // connection, which a per-connection balancer may route to another replica.
                request.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            }
            let response =
                self.service.clone().oneshot(request).await.map_err(|e| {
                    Error::new(ErrorKind::Transport, format!("fetching the {what} failed")).with_source(e)
                })?;
            let status = response.status();
            last.store(status.as_u16(), std::sync::atomic::Ordering::Relaxed);
            let answer_headers = response.headers().clone();
            let wait = retry_after(&answer_headers);
            let answered_by =
                response.headers().get(headers::ACI_KEYSET_DIGEST).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body = Limited::new(response.into_body(), self.max_document_size)
                .collect()
                .await
                .map_err(|e| body_error(e, what))?
                .to_bytes();
            if status == StatusCode::OK {
                return Ok(body);
            }
            // A 404 from another replica than the one that served: try another at once.
            let elsewhere = match (served_by, answered_by.as_deref()) {
                (Some(want), Some(got)) => want != got,
                _ => false,
            };
            if status == StatusCode::NOT_FOUND && elsewhere {
                if let Some(got) = answered_by {
                    if !other_replicas.contains(&got) && other_replicas.len() < 8 {
                        other_replicas.push(got);
                    }
                }
                if hops < self.retry.replica_hops {
                    hops += 1;
                    tracing::debug!(hops, "{what} asked of another replica than the one that served; retrying at once");
                    continue;
                }
                let want = served_by.unwrap_or_default();
                let failure = match doc {
                    Doc::Receipt => ReceiptFailure::NotAvailable,
                    Doc::Session => ReceiptFailure::Session,
                };
                return Err(receipt_err(
                    failure,
                    format!(
                        "{what} {id:?} not found: the replica that served the exchange (keyset {want}) did not answer \
                         in {} attempts, other replicas did ({}). A gateway keeps receipts in memory, in the process \
                         that served the exchange: that process may have restarted (the receipt is then lost), or \
                         the load balancer does not route new connections to it",
                        hops + 1,
                        other_replicas.join(", ")
                    ),
                ));
            }
            let retryable =
                status == StatusCode::NOT_FOUND || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            if retryable && retry < self.retry.max_retries {
                let delay = match wait {
                    Some(w) => w.min(self.retry.max_backoff),
                    None => self.retry.backoff(retry),
                };
                tracing::debug!(%status, retry, ?delay, "{what} not available yet; retrying");
                retry += 1;
                (self.sleep)(delay).await;
                continue;
            }
            return Err(match (status, doc) {
                (StatusCode::UNAUTHORIZED, Doc::Receipt) => receipt_err(
                    ReceiptFailure::Unauthorized,
                    "the receipt belongs to a credential: fetch it with the bearer token the request used",
                ),
                (StatusCode::NOT_FOUND, Doc::Receipt) => receipt_err(
                    ReceiptFailure::NotAvailable,
                    format!(
                        "receipt {id:?} not found: unknown, expired, not stored (a stream not read to its end), lost \
                         in a restart of the gateway process that served it, or fetched with another bearer token \
                         than the request's"
                    ),
                ),
                (StatusCode::NOT_FOUND, Doc::Session) => {
                    receipt_err(ReceiptFailure::Session, format!("the cited attested session {id} is not served"))
                }
                _ => {
                    GatewayError::error_for(status, &answer_headers, unix_now(), &body, &format!("fetching the {what}"))
                }
            });
        }
    }

    /// Fetch a receipt by receipt id (`X-Receipt-Id`) or response id, with the bearer token the
    /// request used (receipts of authenticated requests are owned by that token).
    ///
    /// `401` is [`ReceiptFailure::Unauthorized`]; `404` (after the retries) is
    /// [`ReceiptFailure::NotAvailable`]; `429`/`5xx` after the retries are a `Gateway` (or
    /// `Transport`) error; an unparsable document is [`ReceiptFailure::Shape`]. The receipt is not
    /// verified.
    pub async fn fetch(&self, id: &str, bearer: Option<&str>) -> Result<Receipt> {
        let body = self.get(RECEIPTS_PATH, id, bearer, Doc::Receipt, None).await?;
        Receipt::from_bytes(body)
    }

    /// Fetch the receipt of a recorded exchange (its receipt id), with the bearer token the
    /// request used, aiming at the replica that served it: a `404` from another replica (by
    /// `X-ACI-Keyset-Digest`, see [`ExchangeRecord::keyset_digest`]) is re-sent on a fresh
    /// connection (see [`RetryPolicy`]). The receipt is not verified.
    pub async fn fetch_for(&self, record: &ExchangeRecord, bearer: Option<&str>) -> Result<Receipt> {
        let id = record.receipt_id().ok_or_else(|| {
            receipt_err(ReceiptFailure::NotAvailable, "the response named no receipt (no X-Receipt-Id)")
        })?;
        let body = self.get(RECEIPTS_PATH, id, bearer, Doc::Receipt, record.keyset_digest()).await?;
        Receipt::from_bytes(body)
    }

    /// Fetch an attested session by id (sessions are public transparency artifacts: no
    /// credential is sent). A missing session is [`ReceiptFailure::Session`]. The session is not
    /// verified (see [`AttestedSession::verify`]).
    pub async fn fetch_session(&self, session_id: &str) -> Result<AttestedSession> {
        self.fetch_session_from(session_id, None).await
    }

    async fn fetch_session_from(&self, session_id: &str, served_by: Option<&str>) -> Result<AttestedSession> {
        let body = self.get(SESSIONS_PATH, session_id, None, Doc::Session, served_by).await?;
        AttestedSession::from_bytes(body)
    }

    /// Fetch the receipt of a recorded exchange and verify it in one call: the receipt id from
    /// the record, the same bearer token as the request,
    /// [`verify_exchange`](crate::receipt::verify_exchange) under `policy`, and, when the receipt
    /// cites an attested session and the policy verifies sessions, the session
    /// ([`VerifiedReceipt::attach_session`]).
    ///
    /// Fails with [`ReceiptFailure::NotAvailable`] without fetching when the response body was
    /// not read to its end (its hash is not final and a stream's receipt does not exist yet) or
    /// the response named no receipt id.
    ///
    /// Replicas: the fetch aims at the replica that served (see [`fetch_for`](Self::fetch_for)).
    /// When the exchange's response, or the receipt, names a keyset digest `keysets` do not know,
    /// the keysets are asked to attest it ([`Keysets::attest_digest`]: a [`KeyHandle`] served by
    /// a key provider looks for it with a few report fetches) while the receipt is fetched;
    /// once the receipt is in, verification waits for that attempt at most
    /// [`keyset_wait`](Self::keyset_wait). A digest whose report was fetched and failed the
    /// policy fails with [`ReceiptFailure::RefusedKeyset`]. If the digest
    /// is still unknown, the same-key rule of [`verify_exchange`](crate::receipt::verify_exchange)
    /// decides, unless the policy requires the exact keyset; [`VerifiedReceipt::keyset_match`]
    /// says which applied.
    ///
    /// [`KeyHandle`]: crate::attest::KeyHandle
    pub async fn fetch_and_verify<K>(
        &self,
        record: &ExchangeRecord,
        bearer: Option<&str>,
        keysets: &K,
        policy: &ReceiptPolicy,
    ) -> Result<VerifiedReceipt>
    where
        K: Keysets + ?Sized,
    {
        let span = crate::telemetry::receipt_span(record.receipt_id());
        let work = self.fetch_and_verify_untraced(record, bearer, keysets, policy);
        let result = tracing::Instrument::instrument(work, span.clone()).await;
        crate::telemetry::receipt_checked(&span, result.as_ref().map(|v| v.keyset_match().into()));
        result
    }

    async fn fetch_and_verify_untraced<K>(
        &self,
        record: &ExchangeRecord,
        bearer: Option<&str>,
        keysets: &K,
        policy: &ReceiptPolicy,
    ) -> Result<VerifiedReceipt>
    where
        K: Keysets + ?Sized,
    {
        if record.response_body_sha256().is_none() {
            return Err(receipt_err(
                ReceiptFailure::NotAvailable,
                "the response body was not read to its end: its hash is not final, and the gateway stores a \
                 stream's receipt only when the stream ends",
            ));
        }
        let served_by = record.keyset_digest();
        // Learn the serving replica's keyset while its receipt is fetched.
        let mut learning =
            served_by.filter(|d| keysets.keyset_for_digest(d).is_none()).and_then(|d| keysets.attest_digest(d));
        let receipt = match learning.take() {
            None => self.fetch_for(record, bearer).await?,
            Some(learn) => {
                let fetch = std::pin::pin!(self.fetch_for(record, bearer));
                match select(fetch, learn).await {
                    Either::Left((receipt, learn)) => {
                        learning = Some(learn);
                        receipt?
                    }
                    Either::Right(((), fetch)) => fetch.await?,
                }
            }
        };
        let named = receipt.workload_keyset_digest();
        if keysets.keyset_for_digest(named).is_none() {
            let attempt = match learning.take() {
                Some(learn) if Some(named) == served_by => Some(learn),
                _ => keysets.attest_digest(named),
            };
            if let Some(attempt) = attempt {
                if let Either::Right(_) = select(attempt, (self.sleep)(self.keyset_wait)).await {
                    tracing::debug!(digest = named, wait = ?self.keyset_wait, "the receipt's keyset was not attested in time");
                }
            }
        }
        drop(learning);
        let verified = verify_exchange_owned(receipt, record, keysets, policy)?;
        if !policy.verifies_sessions() {
            return Ok(verified);
        }
        match verified.cited_session_id().map(str::to_owned) {
            Some(session_id) => {
                let session = self.fetch_session_from(&session_id, served_by).await?;
                verified.attach_session(&session)
            }
            None => Ok(verified),
        }
    }

    /// Verify before release: read the whole (decrypted) body of a response from the
    /// [`E2eeLayer`](crate::E2eeLayer), then fetch and verify its receipt
    /// ([`fetch_and_verify`](Self::fetch_and_verify)), and only then hand out the body.
    ///
    /// Meant for buffered responses (it works for streams too, but collects them). A body
    /// larger than [`max_release_body`](Self::max_release_body) fails with `TooLarge`; a
    /// decryption failure surfaces as the layer's error. A non-2xx answer the layer recorded as
    /// a [`GatewayError`] fails with that error (kind `Gateway`). A response that did not go
    /// through the layer fails with [`ReceiptFailure::NotAvailable`].
    ///
    /// ```no_run
    /// # async fn f<S, B, RB>(receipts: tower_aci::receipt::ReceiptClient<S>, keys: tower_aci::attest::KeyHandle, response: http::Response<RB>) -> tower_aci::Result<()>
    /// # where
    /// #     S: tower::Service<http::Request<http_body_util::Full<bytes::Bytes>>, Response = http::Response<B>> + Clone,
    /// #     S::Error: Into<tower_aci::BoxError>,
    /// #     B: http_body::Body,
    /// #     B::Error: Into<tower_aci::BoxError>,
    /// #     RB: http_body::Body,
    /// #     RB::Error: Into<tower_aci::BoxError>,
    /// # {
    /// use tower_aci::receipt::ReceiptPolicy;
    ///
    /// let (response, verified) =
    ///     receipts.release_after_receipt(response, Some("sk-…"), &keys, &ReceiptPolicy::new()).await?;
    /// let answer: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    /// # let _ = (answer, verified); Ok(()) }
    /// ```
    pub async fn release_after_receipt<RB, K>(
        &self,
        response: Response<RB>,
        bearer: Option<&str>,
        keysets: &K,
        policy: &ReceiptPolicy,
    ) -> Result<(Response<Bytes>, VerifiedReceipt)>
    where
        RB: Body,
        RB::Error: Into<BoxError>,
        K: Keysets + ?Sized,
    {
        let (parts, body) = response.into_parts();
        if let Some(gw) = parts.extensions.get::<GatewayError>() {
            return Err(gw.to_error());
        }
        let record = parts.extensions.get::<ExchangeRecord>().cloned().ok_or_else(|| {
            receipt_err(
                ReceiptFailure::NotAvailable,
                "the response carries no ExchangeRecord: it did not come through the E2EE layer",
            )
        })?;
        let body = Limited::new(body, self.max_release_body)
            .collect()
            .await
            .map_err(|e| body_error(e, "response body"))?
            .to_bytes();
        let verified = self.fetch_and_verify(&record, bearer, keysets, policy).await?;
        Ok((Response::from_parts(parts, body), verified))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_keep_the_base_path_and_encode_the_id() {
        let u = document_uri(&"http://127.0.0.1:8080".parse().unwrap(), RECEIPTS_PATH, "rcpt-00ff").unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:8080/v1/aci/receipts/rcpt-00ff");
        let u = document_uri(&"https://gw.example/prefix/".parse().unwrap(), SESSIONS_PATH, "ab").unwrap();
        assert_eq!(u.to_string(), "https://gw.example/prefix/v1/aci/sessions/ab");
        let u = document_uri(&"http://h".parse().unwrap(), RECEIPTS_PATH, "a/../b?x=1#é ").unwrap();
        assert_eq!(u.path(), "/v1/aci/receipts/a%2F..%2Fb%3Fx%3D1%23%C3%A9%20");
        assert_eq!(u.query(), None);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let r = RetryPolicy::new(10, Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(r.backoff(0), Duration::from_millis(100));
        assert_eq!(r.backoff(3), Duration::from_millis(800));
        assert_eq!(r.backoff(4), Duration::from_secs(1));
        assert_eq!(r.backoff(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn non_success_answers_keep_the_gateway_type() {
        let none = http::HeaderMap::new();
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        let e = GatewayError::error_for(
            unavailable,
            &none,
            0,
            br#"{"error":{"type":"overloaded","message":"m"}}"#,
            "fetching the receipt",
        );
        assert_eq!(e.kind(), ErrorKind::Gateway);
        assert_eq!(e.gateway_error_type(), Some("overloaded"));
        let e = GatewayError::error_for(StatusCode::BAD_GATEWAY, &none, 0, b"<html>", "fetching the receipt");
        assert_eq!(e.kind(), ErrorKind::Transport);
        let long = format!(r#"{{"error":{{"type":"{}","message":"m"}}}}"#, "t".repeat(10_000));
        let e = GatewayError::error_for(unavailable, &none, 0, long.as_bytes(), "fetching the receipt");
        assert_eq!(e.gateway_error_type().map(str::len), Some(200), "hostile type strings are capped");
    }
}
