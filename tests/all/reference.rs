//! The reference gateway's captured exchanges (`tests/data/reference_exchanges.json`, format in
//! the spec's `reference_exchanges.FORMAT.md`), and a canned inner service that answers the E2EE
//! layer with their exact bytes.

#[cfg(feature = "__internal-test-vectors")]
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::Service;
use tower_aci::attest::{AttestedKeyset, KeyHandle, ManualClock, Policy, verify_report};
use tower_aci::e2ee::RequestBody;
use tower_aci::protocol::{Endpoint, ExchangeContext};
use tower_aci::protocol::{SecretKey, Suite};

use crate::data::{arr32, load};

/// The whole file, parsed once.
pub(crate) fn file() -> &'static Value {
    static FILE: OnceLock<Value> = OnceLock::new();
    FILE.get_or_init(|| load("reference_exchanges.json"))
}

/// Every exchange.
pub(crate) fn exchanges() -> impl Iterator<Item = &'static Value> {
    file()["exchanges"].as_array().expect("exchanges").iter()
}

/// The exchange `name` of `suite`.
pub(crate) fn exchange(suite: Suite, name: &str) -> &'static Value {
    exchanges()
        .find(|e| e["name"] == name && suite_of(e) == suite)
        .unwrap_or_else(|| panic!("no exchange {name} for {suite}"))
}

/// A string member.
pub(crate) fn s<'a>(e: &'a Value, key: &str) -> &'a str {
    e[key].as_str().unwrap_or_else(|| panic!("{key} is not a string in {}", e["name"]))
}

pub(crate) fn name(e: &Value) -> String {
    format!("{}/{}", s(e, "suite"), s(e, "name"))
}

pub(crate) fn suite_of(e: &Value) -> Suite {
    match s(e, "suite") {
        "secp256k1" => Suite::Secp256k1,
        "x25519" => Suite::X25519,
        other => panic!("unknown suite {other}"),
    }
}

pub(crate) fn endpoint_of(e: &Value) -> Endpoint {
    Endpoint::from_path(s(e, "endpoint")).expect("an inference endpoint")
}

pub(crate) fn kind_of(e: &Value) -> &str {
    s(e, "kind")
}

pub(crate) fn timestamp(e: &Value) -> u64 {
    e["timestamp"].as_u64().expect("timestamp")
}

/// The exact response body bytes.
pub(crate) fn wire(e: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s(e, "response_wire_b64")).expect("base64")
}

/// `sha256:<hex>` → 32 bytes.
pub(crate) fn hash(text: &str) -> [u8; 32] {
    arr32(text.strip_prefix("sha256:").expect("sha256: prefix"))
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The client's fixed secret key of the exchange.
pub(crate) fn client_secret(e: &Value) -> SecretKey {
    SecretKey::from_bytes(suite_of(e), &arr32(s(e, "client_secret_key"))).expect("a valid client key")
}

/// What decrypts the exchange's answer.
pub(crate) fn context(e: &Value) -> ExchangeContext {
    ExchangeContext::new(endpoint_of(e), client_secret(e), s(e, "model"), s(e, "nonce"), timestamp(e))
}

/// The policy that accepts the reference's stub quote, selecting `suite`'s key.
pub(crate) fn stub_policy(suite: Suite) -> Policy {
    Policy::builder().select_suite(suite).dangerous().accept_stub_quote().any_workload().build().unwrap()
}

/// The report's nonce as bytes.
pub(crate) fn report_nonce() -> [u8; 32] {
    arr32(file()["report"]["nonce"].as_str().unwrap())
}

/// The keyset of the reference report, verified under the stub-accepting policy for `suite`.
pub(crate) fn keyset(suite: Suite) -> AttestedKeyset {
    let report = &file()["report"];
    let now = file()["generated_at"].as_u64().unwrap();
    verify_report(report["body"].as_str().unwrap().as_bytes(), &report_nonce(), now, &stub_policy(suite))
        .expect("the reference report verifies under a stub-accepting policy")
}

/// A key handle serving the reference keyset for `suite`, with a clock the test sets.
pub(crate) fn handle(suite: Suite) -> (KeyHandle, ManualClock) {
    let clock = ManualClock::new(file()["generated_at"].as_u64().unwrap());
    (KeyHandle::fixed_with_clock(keyset(suite), Arc::new(clock.clone())), clock)
}

/// The random bytes the client of `e` drew, in the order the layer draws them: client key,
/// nonce, then for each request field its ephemeral key and AES-GCM nonce. Once used up, the
/// tape falls back to the OS CSPRNG (for request shapes this client builds differently).
#[cfg(feature = "__internal-test-vectors")]
pub(crate) fn tape(e: &Value) -> Arc<Mutex<VecDeque<u8>>> {
    let mut bytes = Vec::new();
    bytes.extend(const_hex::decode(s(e, "client_secret_key")).unwrap());
    bytes.extend(const_hex::decode(s(e, "nonce")).unwrap());
    for f in e["request_fields"].as_array().unwrap() {
        bytes.extend(const_hex::decode(s(f, "ephemeral_secret_key")).unwrap());
        bytes.extend(const_hex::decode(s(f, "iv")).unwrap());
    }
    Arc::new(Mutex::new(bytes.into()))
}

/// A fill function reading `tape`.
#[cfg(feature = "__internal-test-vectors")]
pub(crate) fn tape_fill(tape: Arc<Mutex<VecDeque<u8>>>) -> impl FnMut(&mut [u8]) + Send + 'static {
    move |dest: &mut [u8]| {
        let mut t = tape.lock().unwrap();
        for b in dest.iter_mut() {
            *b = t.pop_front().unwrap_or_else(rand::random);
        }
    }
}

/// The canned answer's body: the wire bytes cut at the given points.
pub(crate) type CannedBody =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// `wire` as a body delivered in pieces cut at `cuts` (sorted, deduplicated here).
pub(crate) fn chunked(wire: &[u8], cuts: &[usize]) -> CannedBody {
    let mut points: Vec<usize> = cuts.iter().map(|c| (*c).min(wire.len())).collect();
    points.sort_unstable();
    points.dedup();
    let mut frames = Vec::new();
    let mut last = 0;
    for p in points.into_iter().chain(std::iter::once(wire.len())) {
        if p > last {
            frames.push(Ok(Frame::data(Bytes::copy_from_slice(&wire[last..p]))));
            last = p;
        }
    }
    StreamBody::new(futures_util::stream::iter(frames))
}

/// An answer a canned service gives.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Bytes,
    pub(crate) cuts: Vec<usize>,
}

impl Answer {
    /// The exchange's recorded answer, delivered in pieces cut at `cuts`.
    pub(crate) fn of(e: &Value, cuts: Vec<usize>) -> Answer {
        let headers = e["response_headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        Answer { status: e["response_status"].as_u64().unwrap() as u16, headers, body: wire(e).into(), cuts }
    }
}

/// What the canned service saw of the request.
pub(crate) type Seen = Arc<Mutex<Option<(http::request::Parts, Bytes)>>>;

/// An inner service that records the request it gets and answers `answer`.
pub(crate) fn canned(
    answer: Answer,
) -> (
    impl Service<Request<RequestBody<Full<Bytes>>>, Response = Response<CannedBody>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + use<>,
    Seen,
) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let svc = tower::service_fn(move |req: Request<RequestBody<Full<Bytes>>>| {
        let answer = answer.clone();
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("the layer's body").to_bytes();
            *log.lock().unwrap() = Some((parts, body));
            let mut res = Response::builder().status(answer.status);
            for (k, v) in &answer.headers {
                res = res.header(k, v);
            }
            Ok::<_, Infallible>(res.body(chunked(&answer.body, &answer.cuts)).unwrap())
        }
    });
    (svc, seen)
}

/// Split an SSE body (LF framing, as the layer re-emits it) into its `data:` payloads, `[DONE]`
/// included.
pub(crate) fn sse_data(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).expect("UTF-8");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let data: Vec<&str> =
                e.lines().filter_map(|l| l.strip_prefix("data:").map(|d| d.strip_prefix(' ').unwrap_or(d))).collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}
