use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256};
use tower_service::Service;

use crate::e2ee::body::ResponseBody;
use crate::e2ee::layer::Config;
use crate::e2ee::service::RequestBody;
use crate::error::{BoxError, Error, ErrorKind};
use crate::protocol::headers;
use crate::protocol::request::{EncryptOptions, Endpoint, ExchangeContext, encrypt_request};
use crate::receipt::{ExchangeRecord, ResponseDigest};

/// The gateway's error document, read from a non-2xx answer to an E2EE request and put in the
/// response's extensions. The body itself passes through readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    /// HTTP status.
    pub status: u16,
    /// The error's `type` (for example `e2ee_replay_detected`), if the body was an error document.
    pub error_type: Option<String>,
    /// The error's `message`, if any.
    pub message: Option<String>,
}

/// The longest gateway `type`/`message` kept from an error document; a hostile gateway cannot
/// make errors grow beyond it.
const MAX_QUOTED: usize = 200;

impl GatewayError {
    /// Parse an error answer's body (`{"error":{"type","message",…}}`), keeping at most 200
    /// characters of each string.
    pub(crate) fn parse(status: u16, body: &[u8]) -> Self {
        let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let err = v.as_ref().and_then(|v| v.get("error"));
        let s =
            |k: &str| err.and_then(|e| e.get(k)).and_then(|x| x.as_str()).map(|x| x.chars().take(MAX_QUOTED).collect());
        GatewayError { status, error_type: s("type"), message: s("message") }
    }

    /// A non-success answer to a request of ours (`what`, e.g. "fetching the receipt") as an
    /// error: [`ErrorKind::Gateway`] when the body was an error document, else
    /// [`ErrorKind::Transport`].
    pub(crate) fn error_for(status: u16, body: &[u8], what: &str) -> Error {
        let gw = GatewayError::parse(status, body);
        match gw.error_type {
            Some(t) => Error::gateway(status, t, &format!("{what}: {}", gw.message.unwrap_or_default())),
            None => Error::new(ErrorKind::Transport, format!("{what}: the gateway answered {status}")),
        }
    }

    /// This answer as an [`Error`] of kind [`ErrorKind::Gateway`].
    pub fn to_error(&self) -> Error {
        Error::gateway(
            self.status,
            self.error_type.as_deref().unwrap_or("unknown"),
            self.message.as_deref().unwrap_or(""),
        )
    }
}

/// An exchange in flight: what decrypts the answer and what the record will hold.
pub(crate) struct Exchange {
    pub(crate) ctx: ExchangeContext,
    pub(crate) config: Arc<Config>,
    pub(crate) attested_digest: String,
    pub(crate) path: String,
    pub(crate) restored_sha256: [u8; 32],
    /// The `X-Model-Pub-Key` the request was encrypted to.
    pub(crate) model_key: String,
}

pin_project! {
    /// The response future of [`E2ee`](crate::E2ee).
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<RequestBody<ReqBody>>>,
    {
        #[pin]
        state: State<S, ReqBody, ResBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, ResBody>
    where
        S: Service<Request<RequestBody<ReqBody>>>,
    {
        Failed { error: Option<Error> },
        Collecting {
            #[pin]
            body: ReqBody,
            buf: BytesMut,
            head: Option<(http::request::Parts, S)>,
            spare: Option<S>,
            config: Arc<Config>,
            endpoint: Endpoint,
        },
        Calling {
            #[pin]
            fut: S::Future,
            exchange: Option<Box<Exchange>>,
            retry: Option<Box<Retry<S>>>,
        },
        ReadingError {
            #[pin]
            body: ResBody,
            buf: BytesMut,
            head: Option<(http::response::Parts, Box<Exchange>)>,
            retry: Option<Box<Retry<S>>>,
        },
        WaitingForKey {
            wait: Pin<Box<dyn Future<Output = bool> + Send>>,
            retry: Option<Box<Retry<S>>>,
            answer: Option<(http::response::Parts, Bytes)>,
        },
        Readying {
            retry: Option<Box<Retry<S>>>,
        },
    }
}

/// What it takes to send an E2EE request once more after `e2ee_model_key_mismatch`: the
/// plaintext request (before encryption) and a spare instance of the inner service.
pub(crate) struct Retry<S> {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    plaintext: Bytes,
    endpoint: Endpoint,
    config: Arc<Config>,
    old_key: String,
    service: S,
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<RequestBody<ReqBody>>>,
    ReqBody: Body,
{
    pub(crate) fn error(error: Error) -> Self {
        ResponseFuture { state: State::Failed { error: Some(error) } }
    }

    pub(crate) fn passthrough(mut inner: S, req: Request<RequestBody<ReqBody>>) -> Self {
        ResponseFuture { state: State::Calling { fut: inner.call(req), exchange: None, retry: None } }
    }

    /// `spare`: another instance of the inner service, for one retry after a key mismatch.
    pub(crate) fn encrypt(
        inner: S,
        spare: Option<S>,
        config: Arc<Config>,
        endpoint: Endpoint,
        req: Request<ReqBody>,
    ) -> Self {
        let (parts, body) = req.into_parts();
        ResponseFuture {
            state: State::Collecting {
                body,
                buf: BytesMut::new(),
                head: Some((parts, inner)),
                spare,
                config,
                endpoint,
            },
        }
    }
}

/// A future that resolves to `true` once the handle holds a key other than the one `retry`
/// was encrypted to, or `false` after the configured wait. `None` when no retry can happen:
/// disabled, no refresher keeps the handle current, or not on a Tokio runtime (for the timer).
fn wait_for_new_key<S>(retry: &Retry<S>) -> Option<Pin<Box<dyn Future<Output = bool> + Send>>> {
    let wait = retry.config.key_mismatch_retry?;
    let keys = retry.config.keys.clone();
    if !keys.has_refresher() || tokio::runtime::Handle::try_current().is_err() {
        return None;
    }
    let changed = keys.wait_for_other_key(retry.old_key.clone());
    Some(Box::pin(async move { tokio::time::timeout(wait, changed).await.is_ok() }))
}

/// Encrypt a collected body: rewrite `headers` in place, return the wire body and the exchange.
/// Shared by the tower layer and the reqwest middleware.
pub(crate) fn encrypt(
    config: &Arc<Config>,
    endpoint: Endpoint,
    path: &str,
    h: &mut http::HeaderMap,
    body: &[u8],
) -> Result<(Bytes, Box<Exchange>), Error> {
    let keyset = config.keys.current()?;
    let key = keyset.e2ee_key();
    let span = tracing::debug_span!("aci.e2ee.encrypt", endpoint = endpoint.path(), suite = %key.suite(), key_id = key.key_id());
    let _enter = span.enter();
    let options = EncryptOptions::strict(config.strict);
    let enc = encrypt_request(endpoint, body, key, &options, config.keys.now(), &mut rand_core::OsRng)?;
    tracing::debug!(fields = enc.fields, bytes = enc.body.len(), "request encrypted");

    for name in headers::E2EE_REQUEST_HEADERS {
        h.remove(name);
    }
    let sensitive = |s: &str| {
        let mut v = HeaderValue::from_str(s).map_err(|_| Error::malformed("header value is not valid"))?;
        v.set_sensitive(true);
        Ok::<_, Error>(v)
    };
    h.insert(headers::E2EE_VERSION, HeaderValue::from_static("2"));
    h.insert(headers::CLIENT_PUB_KEY, sensitive(&enc.headers.client_pub_key)?);
    h.insert(headers::MODEL_PUB_KEY, sensitive(&enc.headers.model_pub_key)?);
    h.insert(headers::E2EE_NONCE, sensitive(&enc.headers.nonce)?);
    h.insert(headers::E2EE_TIMESTAMP, sensitive(&enc.headers.timestamp.to_string())?);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(enc.body.len()));

    let exchange = Box::new(Exchange {
        ctx: enc.context,
        config: config.clone(),
        attested_digest: keyset.digest().to_owned(),
        path: path.to_owned(),
        restored_sha256: enc.restored_body_sha256,
        model_key: enc.headers.model_pub_key.clone(),
    });
    Ok((Bytes::from(enc.body), exchange))
}

/// A 2xx answer to an E2EE request: check its headers, record the exchange, and wrap the body
/// in the decrypting body (SSE or buffered).
pub(crate) fn decrypting_response<B>(
    parts: &mut http::response::Parts,
    body: B,
    exchange: Box<Exchange>,
) -> Result<ResponseBody<B>, Error> {
    let streamed = exchange.ctx.endpoint() != Endpoint::Embeddings && is_event_stream(parts);
    let digest = Arc::new(ResponseDigest::default());
    let record = inspect(parts, &exchange, streamed, digest.clone())?;
    parts.headers.remove(CONTENT_LENGTH);
    parts.extensions.insert(record);
    let Exchange { ctx, config, .. } = *exchange;
    Ok(if streamed {
        ResponseBody::sse(body, ctx, &config, digest)
    } else {
        ResponseBody::buffered(body, ctx, &config, digest)
    })
}

/// A non-2xx answer to an E2EE request, read whole: record it, surface the gateway's error
/// document in the extensions, and pass the bytes through readable.
pub(crate) fn error_response(
    parts: &mut http::response::Parts,
    bytes: &Bytes,
    exchange: &Exchange,
) -> Result<(), Error> {
    let digest = Arc::new(ResponseDigest::default());
    digest.set(Sha256::digest(bytes).into());
    let record = inspect(parts, exchange, false, digest)?;
    let gw = GatewayError::parse(parts.status.as_u16(), bytes);
    tracing::debug!(status = gw.status, error_type = ?gw.error_type, "gateway answered an error");
    if gw.error_type.as_deref() == Some("e2ee_model_key_mismatch") {
        exchange.config.keys.report_key_mismatch();
    }
    parts.extensions.insert(record);
    parts.extensions.insert(gw);
    Ok(())
}

enum CollectError {
    TooLarge,
    Body(BoxError),
}

impl CollectError {
    fn context(self, what: &str) -> Error {
        match self {
            CollectError::TooLarge => {
                Error::new(ErrorKind::TooLarge, format!("{what} body exceeds the E2EE layer's limit"))
            }
            CollectError::Body(e) => {
                Error::new(ErrorKind::Transport, format!("reading the {what} body failed")).with_source(e)
            }
        }
    }
}

/// Read a whole body into `buf`, up to `limit` bytes.
fn poll_collect<B>(
    mut body: Pin<&mut B>,
    buf: &mut BytesMut,
    limit: usize,
    cx: &mut Context<'_>,
) -> Poll<Result<Bytes, CollectError>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    loop {
        match ready!(body.as_mut().poll_frame(cx)) {
            None => return Poll::Ready(Ok(std::mem::take(buf).freeze())),
            Some(Err(e)) => return Poll::Ready(Err(CollectError::Body(e.into()))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.remaining() > limit {
                        return Poll::Ready(Err(CollectError::TooLarge));
                    }
                    buf.put(data);
                }
            }
        }
    }
}

fn header_str<'a>(parts: &'a http::response::Parts, name: &http::HeaderName) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Check the E2EE response headers and build the record of the exchange.
fn inspect(
    parts: &http::response::Parts,
    exchange: &Exchange,
    streamed: bool,
    digest: Arc<ResponseDigest>,
) -> Result<ExchangeRecord, Error> {
    if let Some(v) = parts.headers.get(headers::E2EE_VERSION) {
        if v.as_bytes() != b"2" {
            return Err(Error::new(ErrorKind::Protocol, "the response claims another E2EE version than 2"));
        }
    }
    if let Some(algo) = header_str(parts, &headers::E2EE_ALGO) {
        if algo != exchange.ctx.suite().algo() {
            return Err(Error::new(ErrorKind::Protocol, "the response names another E2EE suite than the request's"));
        }
    }
    let keyset_digest = header_str(parts, &headers::ACI_KEYSET_DIGEST).map(str::to_owned);
    if let Some(d) = &keyset_digest {
        exchange.config.keys.observe_digest(d);
    }
    Ok(ExchangeRecord {
        receipt_id: header_str(parts, &headers::RECEIPT_ID).map(str::to_owned),
        keyset_digest,
        attested_digest: exchange.attested_digest.clone(),
        suite: Some(exchange.ctx.suite()),
        endpoint: exchange.ctx.endpoint(),
        path: exchange.path.clone(),
        model: exchange.ctx.model().to_owned(),
        request_body_sha256: exchange.restored_sha256,
        streamed,
        status: parts.status.as_u16(),
        response: digest,
    })
}

fn is_event_stream(parts: &http::response::Parts) -> bool {
    header_str(parts, &CONTENT_TYPE)
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    let e =
                        error.take().unwrap_or_else(|| Error::new(ErrorKind::Config, "future polled after completion"));
                    return Poll::Ready(Err(e.into()));
                }
                StateProj::Collecting { body, buf, head, spare, config, endpoint } => {
                    let collected = ready!(poll_collect(body, buf, config.max_request_body, cx));
                    let (mut parts, mut inner) = head.take().expect("polled after completion");
                    let body = match collected {
                        Ok(b) => b,
                        Err(e) => {
                            this.state.set(State::Failed { error: Some(e.context("request")) });
                            continue;
                        }
                    };
                    // The plaintext request, kept for one retry after a key mismatch.
                    let original_headers = spare.is_some().then(|| parts.headers.clone());
                    let path = parts.uri.path().to_owned();
                    match encrypt(config, *endpoint, &path, &mut parts.headers, &body) {
                        Ok((wire, exchange)) => {
                            let retry = spare.take().zip(original_headers).map(|(service, headers)| {
                                Box::new(Retry {
                                    method: parts.method.clone(),
                                    uri: parts.uri.clone(),
                                    version: parts.version,
                                    headers,
                                    plaintext: body,
                                    endpoint: *endpoint,
                                    config: config.clone(),
                                    old_key: exchange.model_key.clone(),
                                    service,
                                })
                            });
                            let fut = inner.call(Request::from_parts(parts, RequestBody::encrypted(wire)));
                            this.state.set(State::Calling { fut, exchange: Some(exchange), retry });
                        }
                        Err(e) => {
                            tracing::debug!(kind = ?e.kind(), "request not sent: {e}");
                            this.state.set(State::Failed { error: Some(e) });
                        }
                    }
                }
                StateProj::Calling { fut, exchange, retry } => {
                    let res = ready!(fut.poll(cx)).map_err(Into::into)?;
                    let Some(exchange) = exchange.take() else {
                        return Poll::Ready(Ok(res.map(ResponseBody::passthrough)));
                    };
                    let (mut parts, body) = res.into_parts();
                    if !parts.status.is_success() {
                        let retry = retry.take();
                        this.state.set(State::ReadingError {
                            body,
                            buf: BytesMut::new(),
                            head: Some((parts, exchange)),
                            retry,
                        });
                        continue;
                    }
                    let body = decrypting_response(&mut parts, body, exchange)?;
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
                StateProj::ReadingError { body, buf, head, retry } => {
                    let limit = head.as_ref().map_or(0, |h| h.1.config.max_response_body);
                    let collected = ready!(poll_collect(body, buf, limit, cx));
                    let (mut parts, exchange) = head.take().expect("polled after completion");
                    let bytes = collected.map_err(|e| e.context("error response"))?;
                    error_response(&mut parts, &bytes, &exchange)?;
                    let mismatch = parts
                        .extensions
                        .get::<GatewayError>()
                        .is_some_and(|g| g.error_type.as_deref() == Some("e2ee_model_key_mismatch"));
                    if let Some(r) = retry.take().filter(|_| mismatch) {
                        if let Some(wait) = wait_for_new_key(&r) {
                            tracing::info!("gateway rotated its E2EE key; retrying once with the new key");
                            this.state.set(State::WaitingForKey { wait, retry: Some(r), answer: Some((parts, bytes)) });
                            continue;
                        }
                    }
                    return Poll::Ready(Ok(Response::from_parts(parts, ResponseBody::full(bytes))));
                }
                StateProj::WaitingForKey { wait, retry, answer } => {
                    if ready!(wait.as_mut().poll(cx)) {
                        let retry = retry.take();
                        this.state.set(State::Readying { retry });
                        continue;
                    }
                    // No new key in time: hand back the gateway's answer.
                    let (parts, bytes) = answer.take().expect("polled after completion");
                    return Poll::Ready(Ok(Response::from_parts(parts, ResponseBody::full(bytes))));
                }
                StateProj::Readying { retry } => {
                    let r = retry.as_mut().expect("polled after completion");
                    ready!(r.service.poll_ready(cx)).map_err(Into::into)?;
                    let mut r = retry.take().expect("checked above");
                    let mut req = Request::new(());
                    *req.method_mut() = r.method.clone();
                    *req.uri_mut() = r.uri.clone();
                    *req.version_mut() = r.version;
                    *req.headers_mut() = std::mem::take(&mut r.headers);
                    let (mut parts, ()) = req.into_parts();
                    let path = parts.uri.path().to_owned();
                    match encrypt(&r.config, r.endpoint, &path, &mut parts.headers, &r.plaintext) {
                        Ok((wire, exchange)) => {
                            let fut = r.service.call(Request::from_parts(parts, RequestBody::encrypted(wire)));
                            this.state.set(State::Calling { fut, exchange: Some(exchange), retry: None });
                        }
                        Err(e) => this.state.set(State::Failed { error: Some(e) }),
                    }
                }
            }
        }
    }
}
