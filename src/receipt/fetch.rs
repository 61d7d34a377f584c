//! Fetching receipts and attested sessions over any tower HTTP service, with bounded retries.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use tower::ServiceExt;
use tower_service::Service;

use crate::attest::SleepFn;
use crate::error::{BoxError, Error, ErrorKind, ReceiptFailure, Result};
use crate::protocol::GatewayError;
use crate::receipt::document::Receipt;
use crate::receipt::record::ExchangeRecord;
use crate::receipt::session::{AttestedSession, MAX_SESSION_SIZE};
use crate::receipt::verify::{Keysets, ReceiptPolicy, VerifiedReceipt, verify_exchange};

/// Path of the receipt endpoint, appended to the base URL's path.
const RECEIPTS_PATH: &str = "/v1/aci/receipts/";
/// Path of the session endpoint, appended to the base URL's path.
const SESSIONS_PATH: &str = "/v1/aci/sessions/";
/// Default limit on a fetched document (receipt or session with its evidence).
pub const DEFAULT_MAX_DOCUMENT_SIZE: usize = MAX_SESSION_SIZE;
/// Default limit on a body [`ReceiptClient::release_after_receipt`] collects: 64 MiB.
pub const DEFAULT_MAX_RELEASE_BODY: usize = 64 * 1024 * 1024;

/// Bounded retries with exponential backoff for `404`, `429` and `5xx` answers.
///
/// A stream's receipt is stored only when the gateway reaches the end of the stream, and a
/// busy gateway may answer `429`/`503`: a few retries spaced out absorb both. A `Retry-After`
/// in seconds replaces the computed delay (capped at the maximum backoff).
///
/// ```
/// use std::time::Duration;
/// use tower_aci::receipt::RetryPolicy;
///
/// let retry = RetryPolicy::new(3, Duration::from_millis(50), Duration::from_secs(1));
/// assert_eq!(retry.backoff(0), Duration::from_millis(50));
/// assert_eq!(retry.backoff(2), Duration::from_millis(200));
/// assert_eq!(RetryPolicy::none().max_retries(), 0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Five retries, 100 ms doubling up to 2 s (about 3 s in all).
    fn default() -> Self {
        RetryPolicy::new(5, Duration::from_millis(100), Duration::from_secs(2))
    }
}

impl RetryPolicy {
    /// Up to `max_retries` retries after the first attempt, waiting `initial_backoff`, then
    /// twice as long each time, never more than `max_backoff`.
    pub const fn new(max_retries: u32, initial_backoff: Duration, max_backoff: Duration) -> Self {
        RetryPolicy { max_retries, initial_backoff, max_backoff }
    }

    /// No retries: one attempt.
    pub const fn none() -> Self {
        RetryPolicy::new(0, Duration::ZERO, Duration::ZERO)
    }

    /// Retries after the first attempt.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The wait before retry number `retry` (0-based): `initial * 2^retry`, capped.
    pub fn backoff(&self, retry: u32) -> Duration {
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
pub struct ReceiptClient<S, ReqB = Full<Bytes>> {
    service: S,
    _body: PhantomData<fn() -> ReqB>,
    base: Uri,
    retry: RetryPolicy,
    max_document_size: usize,
    max_release_body: usize,
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
            sleep: Arc::new(|d| Box::pin(tokio::time::sleep(d))),
        }
    }

    /// How to retry `404`, `429` and `5xx` answers.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The sleep used between retries (default `tokio::time::sleep`, which needs a Tokio
    /// runtime with time enabled).
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

    /// The base URL.
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

fn retry_after(response_headers: &http::HeaderMap) -> Option<Duration> {
    let v = response_headers.get(RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
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
    /// `GET {prefix}{id}` with retries; the body of the `200`.
    async fn get(&self, prefix: &str, id: &str, bearer: Option<&str>, doc: Doc) -> Result<Bytes> {
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
        loop {
            let mut request = Request::get(uri.clone())
                .header(ACCEPT, "application/json")
                .body(ReqB::from(Bytes::new()))
                .map_err(|e| Error::new(ErrorKind::Config, "cannot build the receipt request").with_source(e))?;
            if let Some(v) = &authorization {
                request.headers_mut().insert(AUTHORIZATION, v.clone());
            }
            let response =
                self.service.clone().oneshot(request).await.map_err(|e| {
                    Error::new(ErrorKind::Transport, format!("fetching the {what} failed")).with_source(e)
                })?;
            let status = response.status();
            let wait = retry_after(response.headers());
            let body = Limited::new(response.into_body(), self.max_document_size)
                .collect()
                .await
                .map_err(|e| body_error(e, what))?
                .to_bytes();
            if status == StatusCode::OK {
                return Ok(body);
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
                        "receipt {id:?} not found: unknown, expired, not stored (a stream not read to its end), or \
                         fetched with another bearer token than the request's"
                    ),
                ),
                (StatusCode::NOT_FOUND, Doc::Session) => {
                    receipt_err(ReceiptFailure::Session, format!("the cited attested session {id} is not served"))
                }
                _ => GatewayError::error_for(status.as_u16(), &body, &format!("fetching the {what}")),
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
        let body = self.get(RECEIPTS_PATH, id, bearer, Doc::Receipt).await?;
        Receipt::from_bytes(body)
    }

    /// Fetch an attested session by id (sessions are public transparency artifacts: no
    /// credential is sent). A missing session is [`ReceiptFailure::Session`]. The session is not
    /// verified (see [`AttestedSession::verify`]).
    pub async fn fetch_session(&self, session_id: &str) -> Result<AttestedSession> {
        let body = self.get(SESSIONS_PATH, session_id, None, Doc::Session).await?;
        AttestedSession::from_bytes(body)
    }

    /// Fetch the receipt of a recorded exchange and verify it in one call: the receipt id from
    /// the record, the same bearer token as the request, [`verify_exchange`] under `policy`, and,
    /// when the receipt cites an attested session and the policy verifies sessions, the session
    /// ([`VerifiedReceipt::attach_session`]).
    ///
    /// Fails with [`ReceiptFailure::NotAvailable`] without fetching when the response body was
    /// not read to its end (its hash is not final and a stream's receipt does not exist yet) or
    /// the response named no receipt id.
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
        if record.response_body_sha256().is_none() {
            return Err(receipt_err(
                ReceiptFailure::NotAvailable,
                "the response body was not read to its end: its hash is not final, and the gateway stores a \
                 stream's receipt only when the stream ends",
            ));
        }
        let id = record.receipt_id().ok_or_else(|| {
            receipt_err(ReceiptFailure::NotAvailable, "the response named no receipt (no X-Receipt-Id)")
        })?;
        let receipt = self.fetch(id, bearer).await?;
        let verified = verify_exchange(&receipt, record, keysets, policy)?;
        if !policy.verifies_sessions() {
            return Ok(verified);
        }
        match verified.cited_session_id().map(str::to_owned) {
            Some(session_id) => {
                let session = self.fetch_session(&session_id).await?;
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
        let e =
            GatewayError::error_for(503, br#"{"error":{"type":"overloaded","message":"m"}}"#, "fetching the receipt");
        assert_eq!(e.kind(), ErrorKind::Gateway);
        assert_eq!(e.gateway_error_type(), Some("overloaded"));
        assert_eq!(GatewayError::error_for(502, b"<html>", "fetching the receipt").kind(), ErrorKind::Transport);
        let long = format!(r#"{{"error":{{"type":"{}","message":"m"}}}}"#, "t".repeat(10_000));
        let e = GatewayError::error_for(503, long.as_bytes(), "fetching the receipt");
        assert_eq!(e.gateway_error_type().map(str::len), Some(200), "hostile type strings are capped");
    }
}
