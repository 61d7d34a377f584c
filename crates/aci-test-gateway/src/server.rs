//! The hyper accept loop, routing and the request handlers.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::e2ee::{self, ApiError, Framed, Reframer};
use crate::fault::Fault;
use crate::keyset::{self, Keyset};
use crate::receipts::{self, FetchError, PendingReceipt, ReceiptStore};
use crate::upstream::{UpstreamBody, UpstreamFn, UpstreamRequest, UpstreamResponse};
use tower_aci::__private::ResponseSealer;
use tower_aci::attest::Clock;
use tower_aci::protocol::Endpoint;
use tower_aci::protocol::Suite;
use tower_aci::protocol::headers;

/// The request body limit of the reference gateway.
pub(crate) const BODY_LIMIT: usize = 32 * 1024 * 1024;
/// How many entries each log keeps.
const LOG_CAP: usize = 1024;

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";
const EMBEDDINGS: &str = "/v1/embeddings";
const MESSAGES: &str = "/v1/messages";
const RESPONSES: &str = "/v1/responses";
const ATTESTATION: &str = "/v1/aci/attestation";
const RECEIPTS: &str = "/v1/aci/receipts/";
const MODELS: &str = "/v1/models";

const X_UPSTREAM_VERIFICATION: HeaderName = HeaderName::from_static("x-upstream-verification");
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// State shared by the handle and every connection.
pub(crate) struct Shared {
    keyset: RwLock<Arc<Keyset>>,
    clock: Arc<dyn Clock>,
    upstream: Option<Arc<UpstreamFn>>,
    replay: e2ee::ReplayCache,
    receipts: ReceiptStore,
    fault: Mutex<Option<Fault>>,
    upstream_log: Mutex<VecDeque<Value>>,
    wire_log: Mutex<VecDeque<Bytes>>,
    requests: AtomicUsize,
    attestations: AtomicUsize,
    receipt_fetches: AtomicUsize,
    connections: AtomicUsize,
    /// Connections accepted since start (TCP accepts).
    accepted: AtomicUsize,
    /// Connections served over HTTP/2 (ALPN `h2`) since start.
    h2_connections: AtomicUsize,
    total: AtomicUsize,
    seq: AtomicU64,
    shutdown: watch::Receiver<bool>,
    /// The `evidence.app_compose` text the report publishes (`None`: `null`).
    app_compose: Option<String>,
    /// The TLS acceptor for new connections, when serving HTTPS.
    tls: RwLock<Option<tokio_rustls::TlsAcceptor>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn push_capped<T>(log: &Mutex<VecDeque<T>>, item: T) {
    let mut log = lock(log);
    if log.len() == LOG_CAP {
        log.pop_front();
    }
    log.push_back(item);
}

impl Shared {
    pub(crate) fn new(
        keyset: Keyset,
        clock: Arc<dyn Clock>,
        upstream: Option<Arc<UpstreamFn>>,
        shutdown: watch::Receiver<bool>,
        app_compose: Option<String>,
    ) -> Self {
        Shared {
            keyset: RwLock::new(Arc::new(keyset)),
            clock,
            upstream,
            replay: e2ee::ReplayCache::default(),
            receipts: ReceiptStore::default(),
            fault: Mutex::new(None),
            upstream_log: Mutex::new(VecDeque::new()),
            wire_log: Mutex::new(VecDeque::new()),
            requests: AtomicUsize::new(0),
            attestations: AtomicUsize::new(0),
            receipt_fetches: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            h2_connections: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            shutdown,
            app_compose,
            tls: RwLock::new(None),
        }
    }

    pub(crate) fn set_tls(&self, tls: Option<&crate::tls::GatewayTls>) {
        let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = acceptor;
    }

    fn tls_acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn serves_tls(&self) -> bool {
        self.tls_acceptor().is_some()
    }

    pub(crate) fn requests_total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    pub(crate) fn keyset(&self) -> Arc<Keyset> {
        self.keyset.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn update_keyset(&self, f: impl FnOnce(&Keyset) -> Keyset) {
        let mut guard = self.keyset.write().unwrap_or_else(|e| e.into_inner());
        let next = f(&guard);
        *guard = Arc::new(next);
    }

    pub(crate) fn upstream_log(&self) -> Vec<Value> {
        lock(&self.upstream_log).iter().cloned().collect()
    }

    pub(crate) fn wire_log(&self) -> Vec<Bytes> {
        lock(&self.wire_log).iter().cloned().collect()
    }

    pub(crate) fn set_fault(&self, fault: Option<Fault>) {
        *lock(&self.fault) = fault;
    }

    fn fault(&self) -> Option<Fault> {
        lock(&self.fault).clone()
    }

    /// Take a pending `StatusOnce`, leaving any other fault in place.
    fn take_status_once(&self) -> Option<u16> {
        let mut f = lock(&self.fault);
        match *f {
            Some(Fault::StatusOnce(s)) => {
                *f = None;
                Some(s)
            }
            _ => None,
        }
    }

    pub(crate) fn requests_seen(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub(crate) fn attestations_served(&self) -> usize {
        self.attestations.load(Ordering::SeqCst)
    }

    pub(crate) fn receipt_fetches(&self) -> usize {
        self.receipt_fetches.load(Ordering::SeqCst)
    }

    /// Connections whose task is still running.
    pub(crate) fn live_connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections accepted since start.
    pub(crate) fn connections_accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections served over HTTP/2 since start.
    pub(crate) fn h2_connections(&self) -> usize {
        self.h2_connections.load(Ordering::SeqCst)
    }
}

/// Counts a connection task while it runs.
struct LiveConnection(Arc<Shared>);

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resolves once shutdown was signalled (or the handle is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // Map to `()` so the borrowed value does not live across an await.
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}

/// Accept connections until the shutdown signal.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    // Small SSE events must not wait for Nagle's algorithm.
                    let _ = stream.set_nodelay(true);
                    stream
                }
                Err(_) => {
                    // Out of file descriptors and the like: back off briefly.
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        let shared = shared.clone();
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let live = LiveConnection(shared.clone());
        tokio::spawn(async move {
            let _live = live;
            let shutdown = shared.shutdown.clone();
            if let Some(acceptor) = shared.tls_acceptor() {
                // A client that refuses our certificate ends the handshake: nothing is served.
                let mut stop = shutdown.clone();
                let tls = tokio::select! {
                    r = acceptor.accept(stream) => match r {
                        Ok(tls) => tls,
                        Err(_) => return,
                    },
                    _ = stopped(&mut stop) => return,
                };
                // HTTP/2 when the client chose it in ALPN, HTTP/1.1 otherwise.
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                serve_connection(TokioIo::new(tls), shared, shutdown, h2).await;
                return;
            }
            serve_connection(TokioIo::new(stream), shared, shutdown, false).await;
        });
    }
}

/// Serve HTTP/1 (or HTTP/2, negotiated in TLS) on one connection until it ends or the gateway
/// shuts down.
async fn serve_connection<I>(io: I, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>, h2: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let counters = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    if h2 {
        counters.h2_connections.fetch_add(1, Ordering::SeqCst);
        let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(io, service);
        tokio::select! {
            _ = conn => {}
            _ = stopped(&mut shutdown) => {}
        }
        return;
    }
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::select! {
        _ = conn => {}
        _ = stopped(&mut shutdown) => {}
    }
}

/// The body of every gateway response: complete bytes, or a stream fed by a producer task.
pub(crate) enum GatewayBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
}

impl GatewayBody {
    fn full(bytes: impl Into<Bytes>) -> Self {
        let b: Bytes = bytes.into();
        GatewayBody::Full(if b.is_empty() { None } else { Some(b) })
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            GatewayBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, GatewayBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            GatewayBody::Full(None) => SizeHint::with_exact(0),
            GatewayBody::Channel(_) => SizeHint::default(),
        }
    }
}

type Resp = Response<GatewayBody>;

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY)
}

fn json_bytes_response(status: u16, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(GatewayBody::full(body));
    *r.status_mut() = status_of(status);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: &ApiError) -> Resp {
    json_bytes_response(e.status, e.body())
}

fn json_response(status: u16, v: &Value) -> Resp {
    json_bytes_response(status, serde_json::to_vec(v).expect("serialising a Value cannot fail"))
}

fn insert(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

async fn handle(shared: Arc<Shared>, req: http::Request<Incoming>) -> Resp {
    shared.total.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let (mut resp, digest) = route(&shared, &parts, &path, body).await;
    let h = resp.headers_mut();
    h.insert(headers::ACI_VERSION, HeaderValue::from_static("aci/1"));
    insert(h, headers::ACI_KEYSET_DIGEST, &digest);
    resp
}

async fn route(shared: &Arc<Shared>, parts: &http::request::Parts, path: &str, body: Incoming) -> (Resp, String) {
    let current = || shared.keyset().digest.clone();
    let inference = match path {
        CHAT => Some(CHAT),
        COMPLETIONS => Some(COMPLETIONS),
        EMBEDDINGS => Some(EMBEDDINGS),
        MESSAGES => Some(MESSAGES),
        RESPONSES => Some(RESPONSES),
        _ => None,
    };
    if parts.method == Method::OPTIONS {
        let mut r = Response::new(GatewayBody::full(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        return (r, current());
    }
    if let Some(p) = inference {
        if parts.method == Method::POST {
            return inference_request(shared, p, parts, body).await;
        }
        return (method_not_allowed(), current());
    }
    let get = parts.method == Method::GET;
    let resp = if path == ATTESTATION {
        if get { attestation(shared, parts) } else { method_not_allowed() }
    } else if path == MODELS {
        if get { models() } else { method_not_allowed() }
    } else if let Some(id) = path.strip_prefix(RECEIPTS).filter(|id| !id.is_empty() && !id.contains('/')) {
        if get { receipt(shared, id, &parts.headers) } else { method_not_allowed() }
    } else {
        error_response(&ApiError::new(404, "not_found", format!("no route for {path}")))
    };
    (resp, current())
}

fn method_not_allowed() -> Resp {
    error_response(&ApiError::new(405, "invalid_request_error", "method not allowed on this route"))
}

fn models() -> Resp {
    json_response(
        200,
        &json!({"object": "list", "data": [
            {"id": "demo-model", "object": "model", "created": 0, "owned_by": "tower-aci-test-gateway"}
        ]}),
    )
}

fn attestation(shared: &Shared, parts: &http::request::Parts) -> Resp {
    shared.attestations.fetch_add(1, Ordering::SeqCst);
    if let Some(Fault::AttestationStatus(status)) = shared.fault() {
        return error_response(&ApiError::new(status, "service_unavailable", "injected fault: AttestationStatus"));
    }
    let query = parts.uri.query();
    let keyset = shared.keyset();
    // As the reference: with domain-scoped TLS entries, the report is served only through a
    // hostname the keyset names (protocol.md §6.1).
    let domains = keyset.tls_domains();
    if !domains.is_empty() {
        // HTTP/1 names the host in `Host`, HTTP/2 in `:authority` (the request URI).
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(http::uri::Authority::as_str))
            .unwrap_or("");
        let host =
            host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
        let host = host.strip_suffix('.').unwrap_or(host);
        if !domains.iter().any(|d| d.strip_suffix('.').unwrap_or(d).eq_ignore_ascii_case(host)) {
            return error_response(&ApiError::new(404, "not_found", "no attestation report is served for this host"));
        }
    }
    let bad = || {
        error_response(&ApiError::new(
            400,
            "invalid_request_error",
            "nonce must be exactly 64 lowercase hex characters (32 bytes)",
        ))
    };
    let mut nonce: Option<String> = None;
    // Parsed as the reference's axum `Query` extractor does (form-urlencoded).
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k != "nonce" {
            continue;
        }
        if nonce.is_some() || !keyset::is_report_nonce(&v) {
            return bad();
        }
        nonce = Some(v.into_owned());
    }
    let mut report = keyset.report(nonce.as_deref(), shared.clock.now());
    if let Some(compose) = &shared.app_compose {
        report["attestation"]["evidence"]["app_compose"] = Value::String(compose.clone());
    }
    json_response(200, &report)
}

fn receipt(shared: &Shared, id: &str, headers: &HeaderMap) -> Resp {
    shared.receipt_fetches.fetch_add(1, Ordering::SeqCst);
    match shared.receipts.fetch(id, receipts::owner_of(headers), shared.clock.now()) {
        Ok(doc) => json_bytes_response(200, doc),
        Err(FetchError::Unauthorized) => error_response(&ApiError::new(
            401,
            "unauthorized",
            "this receipt is owned; authenticate with the original bearer token",
        )),
        Err(FetchError::NotFound) => {
            error_response(&ApiError::new(404, "not_found", "Receipt id (receipt_id or chat_id) not found or expired"))
        }
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(ApiError::new(413, "invalid_request_error", "request body exceeds the 32 MiB limit"))
        }
        Err(_) => Err(ApiError::new(400, "invalid_request_error", "failed to read the request body")),
    }
}

/// A request ready to forward.
struct Prepared {
    body: Value,
    bytes: Bytes,
    received_hash: String,
    model: Option<String>,
    /// `Some` for E2EE requests.
    sealer: Option<ResponseSealer>,
}

fn upstream_verification_check(h: &HeaderMap) -> Result<(), ApiError> {
    if h.contains_key(X_UPSTREAM_VERIFICATION) {
        return Err(ApiError::new(
            400,
            "invalid_request_error",
            "X-Upstream-Verification is not accepted; use provider.aci_* constraints",
        ));
    }
    Ok(())
}

fn finish_prepare(
    mut body: Value,
    original: Bytes,
    received_hash: String,
    model: Option<String>,
    sealer: Option<ResponseSealer>,
) -> Prepared {
    let bytes = if e2ee::rewrite_for_forwarding(&mut body) {
        Bytes::from(serde_json::to_vec(&body).expect("serialising a Value cannot fail"))
    } else {
        original
    };
    Prepared { body, bytes, received_hash, model, sealer }
}

fn prepare_e2ee(
    shared: &Shared,
    keyset: &Keyset,
    endpoint: Endpoint,
    h: &HeaderMap,
    wire: &[u8],
    now: u64,
) -> Result<(Prepared, Suite), ApiError> {
    let v = e2ee::validate_headers(h, keyset, now)?;
    let opened = e2ee::open(endpoint, wire, &v, &shared.replay, now)?;
    upstream_verification_check(h)?;
    if let Some(status) = shared.take_status_once() {
        return Err(ApiError::new(status, "upstream_error", "injected fault: StatusOnce"));
    }
    let received_hash = receipts::body_hash(&opened.bytes);
    let bytes = Bytes::from(opened.bytes);
    let suite = v.suite();
    Ok((finish_prepare(opened.body, bytes, received_hash, Some(opened.model), Some(opened.sealer)), suite))
}

fn prepare_plain(h: &HeaderMap, wire: Bytes) -> Result<Prepared, ApiError> {
    let body: Value = serde_json::from_slice(&wire)
        .map_err(|_| ApiError::new(400, "invalid_request_error", "request body is not valid JSON"))?;
    upstream_verification_check(h)?;
    let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    let received_hash = receipts::body_hash(&wire);
    Ok(finish_prepare(body, wire, received_hash, model, None))
}

fn call_upstream(shared: &Shared, req: UpstreamRequest) -> UpstreamResponse {
    match &shared.upstream {
        Some(handler) => std::panic::catch_unwind(AssertUnwindSafe(|| handler(req))).unwrap_or_else(|_| {
            UpstreamResponse::json(
                500,
                json!({"error": {"message": "the upstream handler panicked", "type": "internal_error",
                    "code": null, "param": null}}),
            )
        }),
        None => UpstreamResponse::echo(&req),
    }
}

fn apply_response_faults(resp: UpstreamResponse, fault: Option<&Fault>, stream: bool) -> UpstreamResponse {
    match fault {
        Some(Fault::UpstreamStatus(status, body)) => {
            let ct = if serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok() {
                "application/json"
            } else {
                "text/plain"
            };
            UpstreamResponse::raw(*status, Some(ct), body.clone())
        }
        Some(Fault::NonJsonEvent) if !stream => {
            UpstreamResponse::raw(resp.status, Some("application/json"), "this is not json")
        }
        _ => resp,
    }
}

fn body_bytes(body: UpstreamBody) -> Bytes {
    match body {
        UpstreamBody::Full(b) => b,
        UpstreamBody::Chunks(chunks) => {
            let mut out = BytesMut::new();
            for c in chunks {
                out.extend_from_slice(&c);
            }
            out.freeze()
        }
    }
}

fn e2ee_headers(h: &mut HeaderMap, suite: Option<Suite>, receipt_id: &str) {
    match suite {
        Some(suite) => {
            h.insert(headers::E2EE_APPLIED, HeaderValue::from_static("true"));
            h.insert(headers::E2EE_VERSION, HeaderValue::from_static("2"));
            h.insert(headers::E2EE_ALGO, HeaderValue::from_static(suite.algo()));
        }
        None => {
            h.insert(headers::E2EE_APPLIED, HeaderValue::from_static("false"));
        }
    }
    insert(h, headers::RECEIPT_ID, receipt_id);
}

async fn inference_request(
    shared: &Arc<Shared>,
    path: &'static str,
    parts: &http::request::Parts,
    body: Incoming,
) -> (Resp, String) {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let keyset = shared.keyset();
    let digest = keyset.digest.clone();
    let resp = match inference_inner(shared, keyset, path, parts, body).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    (resp, digest)
}

async fn inference_inner(
    shared: &Arc<Shared>,
    keyset: Arc<Keyset>,
    path: &'static str,
    parts: &http::request::Parts,
    body: Incoming,
) -> Result<Resp, ApiError> {
    let wire = read_body(body).await?;
    push_capped(&shared.wire_log, wire.clone());
    let h = &parts.headers;
    let is_e2ee = e2ee::has_e2ee_headers(h);
    if is_e2ee && (path == MESSAGES || path == RESPONSES) {
        return Err(ApiError::new(400, "e2ee_unsupported_endpoint", format!("ACI E2EE is not supported on {path}")));
    }
    let now = shared.clock.now();
    let endpoint = Endpoint::from_path(path).filter(|e| e.path() == path);
    let (prepared, suite) = match (is_e2ee, endpoint) {
        (true, Some(endpoint)) => {
            let (p, s) = prepare_e2ee(shared, &keyset, endpoint, h, &wire, now)?;
            (p, Some(s))
        }
        _ => (prepare_plain(h, wire)?, None),
    };
    let stream = endpoint != Some(Endpoint::Embeddings) && prepared.body.get("stream") == Some(&Value::Bool(true));

    let seq = shared.seq.fetch_add(1, Ordering::SeqCst);
    let request =
        UpstreamRequest { path: path.to_owned(), body: prepared.body, bytes: prepared.bytes.clone(), stream, seq, now };
    push_capped(&shared.upstream_log, request.body.clone());
    let fault = shared.fault();
    let upstream = apply_response_faults(call_upstream(shared, request), fault.as_ref(), stream);

    let pending = PendingReceipt {
        receipt_id: receipts::new_receipt_id(),
        endpoint: path.to_owned(),
        model: prepared.model,
        keyset_digest: keyset.digest.clone(),
        received_hash: prepared.received_hash,
        forwarded_hash: receipts::body_hash(&prepared.bytes),
        owner: receipts::owner_of(h),
    };
    let sealer = prepared.sealer;

    if stream {
        if upstream.status != 200 {
            // A failed stream comes back as a buffered error in clear: no E2EE headers, no receipt.
            let raw = body_bytes(upstream.body);
            return Ok(match serde_json::from_slice::<Value>(&raw) {
                Ok(v) => json_response(upstream.status, &v),
                Err(_) => error_response(&ApiError::new(
                    upstream.status,
                    "upstream_error",
                    "The upstream provider returned an error",
                )),
            });
        }
        let is_sse = upstream
            .content_type
            .as_deref()
            .is_none_or(|ct| ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("text/event-stream"));
        if is_sse {
            return Ok(start_stream(shared, keyset, pending, sealer, suite, upstream.body, fault));
        }
        if sealer.is_some() {
            return Err(ApiError::internal("E2EE request failed: the upstream answered a stream with a non-SSE body"));
        }
    }
    buffered(shared, &keyset, &pending, sealer.as_ref(), suite, upstream, fault.as_ref())
}

fn buffered(
    shared: &Shared,
    keyset: &Keyset,
    pending: &PendingReceipt,
    sealer: Option<&ResponseSealer>,
    suite: Option<Suite>,
    upstream: UpstreamResponse,
    fault: Option<&Fault>,
) -> Result<Resp, ApiError> {
    let status = upstream.status;
    let raw = body_bytes(upstream.body);
    let (out, chat_id, sealed) = match sealer {
        Some(sealer) => {
            let mut v: Value = serde_json::from_slice(&raw)
                .map_err(|_| ApiError::internal("E2EE request failed: the upstream body is not JSON"))?;
            let sealed = sealer
                .seal_document(&mut v, &mut rand_core::OsRng)
                .map_err(|_| ApiError::internal("E2EE request failed: E2EE encryption failed"))?;
            let chat_id = v.get("id").and_then(Value::as_str).map(str::to_owned);
            (Bytes::from(serde_json::to_vec(&v).expect("serialising a Value cannot fail")), chat_id, sealed)
        }
        None => {
            let chat_id = serde_json::from_slice::<Value>(&raw)
                .ok()
                .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned));
            (raw, chat_id, 0)
        }
    };
    let hash = receipts::body_hash(&out);
    shared.receipts.store(
        pending,
        chat_id.as_deref(),
        &hash,
        shared.clock.now(),
        &keyset.receipt_key_id,
        &keyset.receipt_key,
    );
    let wire = match fault {
        Some(Fault::TamperEvent { index: 0 }) if sealed > 0 => e2ee::tamper(&out).unwrap_or(out),
        _ => out,
    };
    let mut r = json_bytes_response(status, wire);
    e2ee_headers(r.headers_mut(), suite, &pending.receipt_id);
    Ok(r)
}

fn start_stream(
    shared: &Arc<Shared>,
    keyset: Arc<Keyset>,
    pending: PendingReceipt,
    sealer: Option<ResponseSealer>,
    suite: Option<Suite>,
    body: UpstreamBody,
    fault: Option<Fault>,
) -> Resp {
    let (tx, rx) = mpsc::channel(1);
    let mut r = Response::new(GatewayBody::Channel(rx));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    e2ee_headers(h, suite, &pending.receipt_id);
    let chunks = match body {
        UpstreamBody::Full(b) => vec![b],
        UpstreamBody::Chunks(c) => c,
    };
    let producer = Producer {
        shared: shared.clone(),
        keyset,
        pending,
        reframer: Reframer::new(sealer),
        out: Emitter {
            tx,
            hasher: Sha256::new(),
            tamper: match fault {
                Some(Fault::TamperEvent { index }) => Some(index),
                _ => None,
            },
            sealed_events: 0,
        },
        fault,
    };
    tokio::spawn(producer.run(chunks));
    r
}

/// Sends re-framed bytes to the client, hashing exactly what the gateway emits.
struct Emitter {
    tx: mpsc::Sender<Bytes>,
    hasher: Sha256,
    tamper: Option<usize>,
    sealed_events: usize,
}

impl Emitter {
    /// `false` when the client went away.
    async fn emit(&mut self, bytes: Bytes, sealed: usize) -> bool {
        self.hasher.update(&bytes);
        let mut wire = bytes;
        if sealed > 0 {
            if self.tamper == Some(self.sealed_events) {
                wire = e2ee::tamper(&wire).unwrap_or(wire);
            }
            self.sealed_events += 1;
        }
        self.tx.send(wire).await.is_ok()
    }

    /// Emit every complete event; `false` to stop without a receipt.
    async fn drain(&mut self, reframer: &mut Reframer) -> bool {
        while let Some(step) = reframer.next() {
            match step {
                Framed::Event(bytes, sealed) => {
                    if !self.emit(bytes, sealed).await {
                        return false;
                    }
                }
                Framed::Abort => return false,
            }
        }
        true
    }
}

enum End {
    Clean,
    Transport,
    Stall,
}

struct Producer {
    shared: Arc<Shared>,
    keyset: Arc<Keyset>,
    pending: PendingReceipt,
    reframer: Reframer,
    out: Emitter,
    fault: Option<Fault>,
}

impl Producer {
    async fn run(mut self, chunks: Vec<Bytes>) {
        let n = chunks.len();
        let mut end = End::Clean;
        let mut cut = false;
        for (i, chunk) in chunks.iter().enumerate() {
            if i > 0 {
                if let Some(Fault::EventDelay(d)) = &self.fault {
                    tokio::select! {
                        _ = tokio::time::sleep(*d) => {}
                        _ = self.out.tx.closed() => return,
                    }
                }
            }
            match &self.fault {
                Some(Fault::CutMidEvent { after_events }) if *after_events == i => {
                    self.reframer.push(&chunk[..chunk.len() / 2]);
                    cut = true;
                }
                Some(Fault::TransportErrorAfter { events }) if *events == i => end = End::Transport,
                Some(Fault::StallAfter { events }) if *events == i => end = End::Stall,
                _ => self.reframer.push(chunk),
            }
            if !self.out.drain(&mut self.reframer).await {
                return;
            }
            if cut || !matches!(end, End::Clean) {
                break;
            }
            if i == 0 && self.fault == Some(Fault::NonJsonEvent) {
                self.reframer.push(b"data: this is not json\n\n");
                if !self.out.drain(&mut self.reframer).await {
                    return;
                }
            }
        }
        if !cut && matches!(end, End::Clean) {
            match &self.fault {
                Some(Fault::TransportErrorAfter { events }) if *events >= n => end = End::Transport,
                Some(Fault::StallAfter { events }) if *events >= n => end = End::Stall,
                _ => {}
            }
        }
        match end {
            End::Stall => {
                // Neither send nor close; hold the response open until the client leaves.
                self.out.tx.closed().await;
                return;
            }
            End::Transport => {
                for ev in [e2ee::TRANSPORT_ERROR_EVENT, e2ee::DONE_EVENT] {
                    if !self.out.emit(Bytes::from_static(ev), 0).await {
                        return;
                    }
                }
            }
            End::Clean => {
                if !self.reframer.ended_mid_event()
                    && self.reframer.needs_done()
                    && !self.out.emit(Bytes::from_static(e2ee::DONE_EVENT), 0).await
                {
                    return;
                }
            }
        }
        // The stream reached its end: store the receipt before the body closes.
        let hash = crate::receipts::hash_string(&self.out.hasher.finalize_reset().into());
        self.shared.receipts.store(
            &self.pending,
            self.reframer.chat_id().as_deref(),
            &hash,
            self.shared.clock.now(),
            &self.keyset.receipt_key_id,
            &self.keyset.receipt_key,
        );
    }
}
