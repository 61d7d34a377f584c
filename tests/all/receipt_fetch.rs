//! `ReceiptClient` against a scripted service: retries and backoff, status mapping, limits, and
//! the aggregator session flow with the spec vectors.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::data::{exchange_record, reason};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower_aci::attest::AttestedKeyset;
use tower_aci::receipt::{ExchangeRecord, ReceiptClient, ReceiptPolicy, RetryPolicy};
use tower_aci::{ErrorKind, ReceiptFailure as F};

use crate::attest_support::load;

type Reply = (u16, Vec<(&'static str, String)>, Bytes);
/// A logged request: URI, `Authorization`, whether that header was marked sensitive.
type Logged = (String, Option<String>, bool);
type Sleeps = Arc<Mutex<Vec<Duration>>>;

/// A scripted HTTP service: per path, a queue of replies (the last one repeats); every request
/// is logged with its `Authorization` header.
#[derive(Clone, Default)]
struct Mock {
    routes: Arc<Mutex<HashMap<String, VecDeque<Reply>>>>,
    log: Arc<Mutex<Vec<Logged>>>,
}

impl Mock {
    fn route(&self, path: &str, replies: Vec<Reply>) -> &Self {
        self.routes.lock().unwrap().insert(path.to_owned(), replies.into());
        self
    }

    fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

impl tower::Service<Request<Full<Bytes>>> for Mock {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        let auth = req.headers().get("authorization");
        let sensitive = auth.is_some_and(|v| v.is_sensitive());
        let auth = auth.map(|v| v.to_str().unwrap().to_owned());
        self.log.lock().unwrap().push((req.uri().to_string(), auth, sensitive));
        let reply = {
            let mut routes = self.routes.lock().unwrap();
            match routes.get_mut(req.uri().path()) {
                Some(q) if q.len() > 1 => q.pop_front().unwrap(),
                Some(q) => q.front().cloned().unwrap(),
                None => (404, vec![], Bytes::from_static(br#"{"error":{"type":"not_found","message":"no"}}"#)),
            }
        };
        let mut res = Response::builder().status(reply.0);
        for (k, v) in reply.1 {
            res = res.header(k, v);
        }
        std::future::ready(Ok(res.body(Full::new(reply.2)).unwrap()))
    }
}

fn ok(body: impl Into<Bytes>) -> Reply {
    (200, vec![], body.into())
}

fn status(code: u16) -> Reply {
    (code, vec![], Bytes::from(format!(r#"{{"error":{{"type":"e{code}","message":"status {code}"}}}}"#)))
}

fn vectors() -> Value {
    load("aci_vectors.json")
}

fn text(a: &str, b: &str) -> String {
    vectors()[a][b].as_str().unwrap().to_owned()
}

const RECEIPT_PATH: &str = "/v1/aci/receipts/rcpt-0001";

fn session_path() -> String {
    format!("/v1/aci/sessions/{}", text("session", "session_id"))
}

/// A client with recorded backoff sleeps. The fetch's time limit is a sleep too: it is left
/// pending (the scripted service answers at once) and not recorded.
fn client(mock: &Mock, retry: RetryPolicy) -> (ReceiptClient<Mock>, Sleeps) {
    const LIMIT: Duration = Duration::from_secs(999);
    let sleeps: Sleeps = Arc::default();
    let s = sleeps.clone();
    let c = ReceiptClient::new(mock.clone(), "http://gw.test".parse().unwrap()).retry(retry.time_limit(LIMIT)).sleep(
        move |d| -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
            if d == LIMIT {
                return Box::pin(std::future::pending());
            }
            s.lock().unwrap().push(d);
            Box::pin(std::future::ready(()))
        },
    );
    (c, sleeps)
}

fn retry3() -> RetryPolicy {
    RetryPolicy::new(3, Duration::from_millis(10), Duration::from_millis(25))
}

fn sha(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn vector_record(response: Option<[u8; 32]>, receipt_id: Option<&str>) -> ExchangeRecord {
    exchange_record("/v1/chat/completions", "demo-model", receipt_id, sha(&text("receipt", "request_body")), response)
}

fn full_record() -> ExchangeRecord {
    vector_record(Some(sha(&text("receipt", "response_body"))), Some("rcpt-0001"))
}

fn keysets() -> Vec<Arc<AttestedKeyset>> {
    let keyset: Value = serde_json::from_str(&text("keyset", "jcs")).unwrap();
    let nonce = [7u8; 32];
    let report = crate::attest_support::seal_report(&keyset, Some(&nonce));
    let ks = tower_aci::attest::verify_report(
        &crate::attest_support::bytes(&report),
        &nonce,
        1_800_000_000 - 86_400,
        &crate::attest_support::stub_policy(),
    )
    .unwrap();
    vec![Arc::new(ks)]
}

#[tokio::test]
async fn not_found_is_retried_with_backoff_until_the_receipt_appears() {
    let mock = Mock::default();
    mock.route(RECEIPT_PATH, vec![status(404), status(404), status(503), ok(text("receipt", "document"))]);
    let (c, sleeps) = client(&mock, retry3());
    let receipt = c.fetch("rcpt-0001", Some("tok")).await.unwrap();
    assert_eq!(receipt.as_bytes(), text("receipt", "document").as_bytes());
    assert_eq!(*sleeps.lock().unwrap(), [10, 20, 25].map(Duration::from_millis));
    let log = mock.requests();
    assert_eq!(log.len(), 4);
    assert!(log.iter().all(|(uri, auth, sensitive)| uri == "http://gw.test/v1/aci/receipts/rcpt-0001"
        && auth.as_deref() == Some("Bearer tok")
        && *sensitive));
}

#[tokio::test]
async fn retries_are_bounded_and_statuses_typed() {
    // 404 for good: NotAvailable after 1 + 3 attempts.
    let mock = Mock::default();
    mock.route(RECEIPT_PATH, vec![status(404)]);
    let (c, sleeps) = client(&mock, retry3());
    assert_eq!(reason(c.fetch("rcpt-0001", None).await), F::NotAvailable);
    assert_eq!(mock.requests().len(), 4);
    assert_eq!(sleeps.lock().unwrap().len(), 3);

    // 401 is not retried.
    let mock = Mock::default();
    mock.route(RECEIPT_PATH, vec![status(401)]);
    let (c, sleeps) = client(&mock, retry3());
    assert_eq!(reason(c.fetch("rcpt-0001", None).await), F::Unauthorized);
    assert_eq!(mock.requests().len(), 1);
    assert!(sleeps.lock().unwrap().is_empty());

    // 5xx for good: the gateway's error, with its type.
    let mock = Mock::default();
    mock.route(RECEIPT_PATH, vec![status(502)]);
    let (c, _) = client(&mock, retry3());
    let err = c.fetch("rcpt-0001", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Gateway);
    assert_eq!(err.gateway_error_type(), Some("e502"));
    assert_eq!(mock.requests().len(), 4);

    // Other statuses are not retried.
    let mock = Mock::default();
    mock.route(RECEIPT_PATH, vec![status(400)]);
    let (c, _) = client(&mock, retry3());
    assert_eq!(c.fetch("rcpt-0001", None).await.unwrap_err().kind(), ErrorKind::Gateway);
    assert_eq!(mock.requests().len(), 1);

    // No retries at all.
    let mock = Mock::default();
    mock.route(RECEIPT_PATH, vec![status(404), ok(text("receipt", "document"))]);
    let (c, _) = client(&mock, RetryPolicy::none());
    assert_eq!(reason(c.fetch("rcpt-0001", None).await), F::NotAvailable);
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_the_cap() {
    let mock = Mock::default();
    let limited = |secs: &str| (429, vec![("retry-after", secs.to_owned())], Bytes::new());
    mock.route(RECEIPT_PATH, vec![limited("0"), limited("3600"), ok(text("receipt", "document"))]);
    let (c, sleeps) = client(&mock, retry3());
    c.fetch("rcpt-0001", None).await.unwrap();
    assert_eq!(*sleeps.lock().unwrap(), [Duration::ZERO, Duration::from_millis(25)]);
}

#[tokio::test]
async fn malformed_and_oversized_documents() {
    let mock = Mock::default();
    mock.route(RECEIPT_PATH, vec![ok("<html>not json")]);
    let (c, _) = client(&mock, retry3());
    assert_eq!(reason(c.fetch("rcpt-0001", None).await), F::Shape);

    let mock = Mock::default();
    mock.route(RECEIPT_PATH, vec![ok(text("receipt", "document"))]);
    let (c, _) = client(&mock, retry3());
    let err = c.max_document_size(100).fetch("rcpt-0001", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge);

    // Ids are one path segment, whatever they contain.
    let (c, _) = client(&mock, RetryPolicy::none());
    let _ = c.fetch("../attestation?nonce=1", None).await;
    assert_eq!(mock.requests().last().unwrap().0, "http://gw.test/v1/aci/receipts/..%2Fattestation%3Fnonce%3D1");
}

#[tokio::test]
async fn fetch_and_verify_checks_the_cited_session() {
    let mock = Mock::default();
    mock.route(RECEIPT_PATH, vec![ok(text("receipt", "document"))]);
    mock.route(&session_path(), vec![ok(text("session", "jcs"))]);
    let (c, _) = client(&mock, retry3());
    let policy = ReceiptPolicy::new().require_verified_upstream(true);
    let verified = c.fetch_and_verify(&full_record(), Some("tok"), &keysets(), &policy).await.unwrap();
    let session = verified.session().expect("the cited session was checked");
    assert_eq!(session.session().session_id(), text("session", "session_id"));
    assert_eq!(session.evidence(), b"example-evidence");
    let log = mock.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].0, format!("http://gw.test{}", session_path()));
    assert_eq!(log[1].1, None, "sessions are public: no credential is sent");

    // Sessions not verified on request: no session fetch.
    let mock2 = Mock::default();
    mock2.route(RECEIPT_PATH, vec![ok(text("receipt", "document"))]);
    let (c2, _) = client(&mock2, retry3());
    let lax = ReceiptPolicy::new().verify_sessions(false);
    let verified = c2.fetch_and_verify(&full_record(), None, &keysets(), &lax).await.unwrap();
    assert!(verified.session().is_none() && verified.session_pending());
    assert_eq!(mock2.requests().len(), 1);

    // A session that is not served, or not the one cited.
    let mock3 = Mock::default();
    mock3.route(RECEIPT_PATH, vec![ok(text("receipt", "document"))]);
    let (c3, _) = client(&mock3, RetryPolicy::none());
    assert_eq!(reason(c3.fetch_and_verify(&full_record(), None, &keysets(), &policy).await), F::Session);
    let mut other: Value = serde_json::from_str(&text("session", "jcs")).unwrap();
    other["expires_at"] = json!(1_750_000_001u64);
    mock3.route(&session_path(), vec![ok(serde_json::to_vec(&other).unwrap())]);
    assert_eq!(reason(c3.fetch_and_verify(&full_record(), None, &keysets(), &policy).await), F::Session);
}

#[tokio::test]
async fn nothing_is_fetched_when_no_verdict_is_possible() {
    let mock = Mock::default();
    mock.route(RECEIPT_PATH, vec![ok(text("receipt", "document"))]);
    let (c, _) = client(&mock, retry3());
    let policy = ReceiptPolicy::new();
    let half = vector_record(None, Some("rcpt-0001"));
    assert_eq!(reason(c.fetch_and_verify(&half, None, &keysets(), &policy).await), F::NotAvailable);
    let anonymous = vector_record(Some(sha(&text("receipt", "response_body"))), None);
    assert_eq!(reason(c.fetch_and_verify(&anonymous, None, &keysets(), &policy).await), F::NotAvailable);
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn the_base_path_prefix_is_kept() {
    let mock = Mock::default();
    mock.route("/gw/v1/aci/receipts/rcpt-0001", vec![ok(text("receipt", "document"))]);
    let c = ReceiptClient::new(mock.clone(), "http://gw.test/gw/".parse().unwrap());
    assert_eq!(c.base_url().path(), "/gw/");
    c.fetch("rcpt-0001", None).await.unwrap();
}
