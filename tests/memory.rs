//! Memory of the E2EE layer, measured with a counting global allocator (`peak_alloc`): a
//! streamed answer keeps a fixed amount of memory however long it runs, and a buffered answer
//! never holds much more than `max_response_body`, however large the answer is.
//!
//! A separate test binary: the allocator counts every allocation of the process, so nothing
//! else may run beside it (one `#[test]`, a current-thread runtime). The layer talks to an
//! in-process inner service rather than the gateway, so the gateway's own memory is not counted;
//! that service hands out frames that were sealed once up front (a field's AAD names no event
//! index, so a sealed event may be sent again), and allocates nothing per streamed frame.
//!
//! Run: `cargo test --test memory -- --nocapture` (prints the figures).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use aci_test_gateway::{GatewayConfig, ResponseSealer, TestGateway};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use peak_alloc::PeakAlloc;
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt};
use tower_aci::attest::{KeyProvider, Policy};
use tower_aci::e2ee::RequestBody;
use tower_aci::protocol::Endpoint;
use tower_aci::protocol::headers;
use tower_aci::protocol::{PublicKey, Suite};
use tower_aci::{BoxError, E2eeLayer, ErrorKind};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Distinct sealed events the inner service cycles through.
const DISTINCT: usize = 8;
const SUITE: Suite = Suite::X25519;

/// What the inner service answers with.
#[derive(Clone, Copy)]
enum Answer {
    /// An SSE stream of this many sealed events, then `[DONE]`.
    Stream(usize),
    /// A buffered JSON answer of this many bytes, in freshly allocated 64 KiB chunks (as a
    /// network read would hand them over).
    Buffered(usize),
}

/// The answer body: frames made on demand, never the whole answer at once.
struct AnswerBody {
    events: Vec<Bytes>,
    answer: Answer,
    sent: usize,
    done: bool,
}

const CHUNK: usize = 64 * 1024;

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let frame = match this.answer {
            Answer::Stream(n) if this.sent < n => this.events[this.sent % DISTINCT].clone(),
            Answer::Stream(_) => {
                this.done = true;
                Bytes::from_static(b"data: [DONE]\n\n")
            }
            Answer::Buffered(n) if this.sent < n => Bytes::from(vec![b' '; CHUNK.min(n - this.sent)]),
            Answer::Buffered(_) => return Poll::Ready(None),
        };
        this.sent += match this.answer {
            Answer::Stream(_) => 1,
            Answer::Buffered(_) => frame.len(),
        };
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

/// The inner service: seals `DISTINCT` events to the request's client key, then answers.
#[derive(Clone)]
struct Inner(Answer);

impl tower::Service<Request<RequestBody<Full<Bytes>>>> for Inner {
    type Response = Response<AnswerBody>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<AnswerBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody<Full<Bytes>>>) -> Self::Future {
        let answer = self.0;
        let h = req.headers();
        let text = |name: &http::HeaderName| h.get(name).unwrap().to_str().unwrap().to_owned();
        let client = PublicKey::parse(SUITE, &text(&headers::CLIENT_PUB_KEY)).unwrap();
        let sealer = ResponseSealer::new(
            Endpoint::ChatCompletions,
            client,
            "m",
            text(&headers::E2EE_NONCE),
            text(&headers::E2EE_TIMESTAMP).parse().unwrap(),
        );
        let events = (0..DISTINCT)
            .map(|i| {
                let mut chunk = json!({"id": "chatcmpl-mem", "object": "chat.completion.chunk", "model": "m",
                    "choices": [{"index": 0, "delta": {"content": format!("token{i} ")}, "finish_reason": null}]});
                sealer.seal_chunk(&mut chunk, &mut rand_core::OsRng).unwrap();
                Bytes::from(format!("data: {chunk}\n\n"))
            })
            .collect();
        let content_type = match answer {
            Answer::Stream(_) => "text/event-stream",
            Answer::Buffered(_) => "application/json",
        };
        let res = Response::builder()
            .header(http::header::CONTENT_TYPE, content_type)
            .header(headers::E2EE_APPLIED, "true")
            .header(headers::E2EE_VERSION, "2")
            .header(headers::E2EE_ALGO, SUITE.algo())
            .body(AnswerBody { events, answer, sent: 0, done: false })
            .unwrap();
        std::future::ready(Ok(res))
    }
}

fn request(stream: bool) -> Request<Full<Bytes>> {
    let body = json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hello"}]});
    Request::post("http://127.0.0.1:1/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Live bytes and peak live bytes (above the moment the answer's head arrived) of one answer.
struct Measured {
    events: usize,
    error: Option<BoxError>,
    /// Largest live allocation seen between two frames.
    live_between_frames: usize,
    /// Largest live allocation at any moment (allocator's peak), transients included.
    peak: usize,
}

async fn measure(layer: E2eeLayer, answer: Answer) -> Measured {
    let svc = ServiceBuilder::new().layer(layer).service(Inner(answer));
    let res = svc.oneshot(request(matches!(answer, Answer::Stream(_)))).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let base = ALLOC.current_usage();
    ALLOC.reset_peak_usage();
    let mut m = Measured { events: 0, error: None, live_between_frames: 0, peak: 0 };
    let finder = |i: usize| format!("token{i} ");
    let expected: Vec<String> = (0..DISTINCT).map(finder).collect();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let (Answer::Stream(_), Some(data)) = (answer, frame.data_ref()) {
                    if data.starts_with(b"data: [DONE]") {
                        continue;
                    }
                    // Each decrypted event carries the plaintext it was sealed from.
                    let want = &expected[m.events % DISTINCT];
                    assert!(memchr::memmem::find(data, want.as_bytes()).is_some(), "event {}", m.events);
                    m.events += 1;
                }
            }
            Err(e) => {
                m.error = Some(e);
                break;
            }
        }
        m.live_between_frames = m.live_between_frames.max(ALLOC.current_usage().saturating_sub(base));
    }
    m.peak = ALLOC.peak_usage().saturating_sub(base);
    drop(body);
    m
}

#[tokio::test]
async fn layer_memory_is_flat_in_stream_length_and_bounded_for_buffered_answers() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let plain: Client<_, Full<Bytes>> = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let policy = Policy::builder().select_suite(SUITE).dangerous().accept_stub_quote().any_workload().build().unwrap();
    let provider = KeyProvider::builder(plain).base_url(gw.base_url().parse().unwrap()).policy(policy).build().unwrap();
    provider.establish().await.unwrap();
    let keys = provider.handle();

    // Streams: 1,000 events, then 100,000 events.
    let short = measure(E2eeLayer::new(keys.clone()), Answer::Stream(1_000)).await;
    let long = measure(E2eeLayer::new(keys.clone()), Answer::Stream(100_000)).await;
    for (m, n) in [(&short, 1_000), (&long, 100_000)] {
        assert!(m.error.is_none(), "{n}-event stream failed: {:?}", m.error);
        assert_eq!(m.events, n);
        println!(
            "stream of {n:>7} events: peak live {} B, largest live between frames {} B",
            m.peak, m.live_between_frames
        );
    }
    // Flat: a 100× longer stream needs no more memory (a few hundred bytes of slack for
    // allocator-visible noise such as a buffer that happened to grow once more).
    assert!(long.peak <= short.peak + 1024, "peak grew with length: {} B → {} B", short.peak, long.peak);
    assert!(
        long.live_between_frames <= short.live_between_frames + 1024,
        "live memory grew with length: {} B → {} B",
        short.live_between_frames,
        long.live_between_frames
    );
    // And small in absolute terms: one event's buffers, not the stream.
    assert!(long.peak < 64 * 1024, "peak {} B", long.peak);

    // Buffered answers far above the limit: refused as TooLarge once the limit is passed,
    // holding about the limit, whatever the answer's size.
    let limit = 1024 * 1024;
    let mut peaks = Vec::new();
    for size in [8 * 1024 * 1024, 64 * 1024 * 1024] {
        let layer = E2eeLayer::new(keys.clone()).max_response_body(limit);
        let m = measure(layer, Answer::Buffered(size)).await;
        let e = m.error.expect("an answer above max_response_body is refused");
        assert_eq!(tower_aci::Error::find(&*e).map(|e| e.kind()), Some(ErrorKind::TooLarge), "{e}");
        println!("buffered answer of {size:>8} B, limit {limit} B: peak live {} B", m.peak);
        peaks.push(m.peak);
    }
    for &p in &peaks {
        // The layer's buffer (which may double once while growing) plus the chunk in hand.
        assert!(p <= 2 * limit + 2 * CHUNK, "peak {p} B for a {limit} B limit");
    }
    assert!(peaks[1] <= peaks[0] + 1024, "peak grew with the answer's size: {peaks:?}");
    drop(gw);
}
