//! What the answer's channel and content type must show (issue 18, items 4 and 6): plain HTTP
//! only to loopback, refused elsewhere before anything is sent; the decoder follows the
//! request's `stream` flag, so an answer served as SSE to a buffered request cannot slip past
//! verify-before-release.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};
use tower_aci::attest::KeyProvider;
use tower_aci::e2ee::RequestBody;
use tower_aci::protocol::aad;
use tower_aci::protocol::{PublicKey, Suite, kat::seal};
use tower_aci::receipt::{ReceiptClient, ReceiptPolicy, RetryPolicy, VerifyBeforeReleaseLayer};
use tower_aci::{BoxError, E2eeLayer, ErrorKind};

use crate::support::{Env, hyper, kind, post, stub_policy};

/// A transport that counts the requests handed to it and answers 503: nothing must reach it.
fn counting(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<Request<RequestBody<Full<Bytes>>>, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |_req: Request<RequestBody<Full<Bytes>>>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, BoxError>(Response::builder().status(503).body(Full::new(Bytes::new())).unwrap()) }
    })
}

fn chat(url: &str, stream: bool) -> Request<Full<Bytes>> {
    post(url, &json!({"model": "demo-model", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
}

#[tokio::test]
async fn plain_http_off_loopback_is_refused_before_anything_is_sent() {
    let calls = Arc::new(AtomicUsize::new(0));
    // The key provider: at build time.
    for base in ["http://gateway.example", "http://10.0.0.1:8080", "http://[2001:db8::1]", "http://127.0.0.1.nip.io"] {
        let e = KeyProvider::builder(counting(calls.clone()))
            .base_url(base.parse::<Uri>().unwrap())
            .policy(stub_policy(Suite::X25519))
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{base}: {e}");
        assert!(e.to_string().contains("not a loopback address"), "{e}");
    }
    // Loopback in every spelling builds.
    for base in ["http://127.0.0.1:9", "http://127.1.2.3", "http://[::1]:9", "http://localhost:9", "http://LOCALHOST."]
    {
        let built = KeyProvider::builder(counting(calls.clone()))
            .base_url(base.parse::<Uri>().unwrap())
            .policy(stub_policy(Suite::X25519))
            .build();
        assert!(built.is_ok(), "{base}: {:?}", built.err());
    }

    // The E2EE layer: per request, before the transport is called.
    let env = Env::start(Suite::X25519).await;
    let layered = ServiceBuilder::new().layer(E2eeLayer::new(env.keys.clone())).service(counting(calls.clone()));
    for url in ["http://gateway.example/v1/chat/completions", "http://192.0.2.7:8000/v1/chat/completions"] {
        let e = layered.clone().oneshot(chat(url, false)).await.unwrap_err();
        assert_eq!(kind(&e), Some(ErrorKind::Config), "{url}: {e}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "no request reached the transport");
}

#[tokio::test]
async fn loopback_http_still_works_for_the_provider_and_the_layer() {
    let env = Env::start(Suite::X25519).await;
    // The provider over plain HTTP to 127.0.0.1 (what `Env::start` did), and to `localhost`.
    let port = env.gw.addr().port();
    let provider = KeyProvider::builder(hyper())
        .base_url(format!("http://localhost:{port}").parse().unwrap())
        .policy(stub_policy(Suite::X25519))
        .build()
        .unwrap();
    provider.establish().await.unwrap();
    // The layer over plain HTTP on loopback: an answer with no channel information is fine.
    let client = env.client(env.layer());
    let res = client.oneshot(chat(&env.url("/v1/chat/completions"), false)).await.unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "You said: hi");
}

/// An on-path attacker under the layer: it reads what travels in clear (the client's ephemeral
/// key, nonce, timestamp and the model) and forges a complete answer sealed to that key, as SSE
/// (`sse`) or as buffered JSON. It never talks to the gateway.
fn forger(
    sse: bool,
    served: Arc<AtomicUsize>,
) -> impl tower::Service<Request<RequestBody<Full<Bytes>>>, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |req: Request<RequestBody<Full<Bytes>>>| {
        let served = served.clone();
        async move {
            let (parts, body) = req.into_parts();
            let header = |name: &str| parts.headers[name].to_str().unwrap().to_owned();
            let client = PublicKey::parse(Suite::X25519, &header("x-client-pub-key")).unwrap();
            let (nonce, ts) = (header("x-e2ee-nonce"), header("x-e2ee-timestamp").parse::<u64>().unwrap());
            let sent: Value = serde_json::from_slice(&body.collect().await?.to_bytes()).unwrap();
            let model = sent["model"].as_str().unwrap();
            let (field, id) =
                if sse { ("choices.0.delta.content", "chunk-1") } else { ("choices.0.message.content", "cmpl-1") };
            let a = aad::response(Suite::X25519, field, id, model, &nonce, ts);
            let sealed = seal(&client, b"FORGED: wire the money", &a, &mut rand_core::OsRng);
            let (content_type, body) = if sse {
                let chunk = json!({"id": id, "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": {"content": sealed}, "finish_reason": null}]});
                ("text/event-stream", format!("data: {chunk}\n\ndata: [DONE]\n\n"))
            } else {
                let answer = json!({"id": id, "object": "chat.completion", "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": sealed}, "finish_reason": "stop"}]});
                ("application/json", answer.to_string())
            };
            served.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(
                Response::builder()
                    .status(200)
                    .header("content-type", content_type)
                    .header("x-e2ee-applied", "true")
                    .header("x-e2ee-version", "2")
                    .header("x-receipt-id", "rcpt-000000000000000000000001")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
        }
    })
}

#[tokio::test]
async fn an_sse_answer_to_a_buffered_request_is_not_released_before_its_receipt() {
    let env = Env::start(Suite::X25519).await;
    let served = Arc::new(AtomicUsize::new(0));
    let receipts = ReceiptClient::new(hyper(), env.gw.base_url().parse().unwrap()).retry(RetryPolicy::new(
        1,
        Duration::from_millis(5),
        Duration::from_millis(20),
    ));
    let svc = ServiceBuilder::new()
        .layer(VerifyBeforeReleaseLayer::new(receipts, env.keys.clone(), ReceiptPolicy::new()))
        .layer(env.layer())
        .service(forger(true, served.clone()));
    // A buffered request (no `"stream": true`): the caller expects nothing before the receipt.
    let outcome = svc.oneshot(chat(&env.url("/v1/chat/completions"), false)).await;
    assert_eq!(served.load(Ordering::SeqCst), 1, "the forger answered");
    match outcome {
        Err(e) => assert_eq!(kind(&e), Some(ErrorKind::Protocol), "{e}"),
        Ok(res) => {
            let mut body = res.into_body();
            let mut released = String::new();
            while let Some(Ok(frame)) = body.frame().await {
                released.push_str(&String::from_utf8_lossy(frame.data_ref().unwrap()));
            }
            panic!("an SSE answer to a buffered request was released before its receipt verified: {released:?}");
        }
    }
}

#[tokio::test]
async fn a_buffered_answer_to_a_stream_request_is_refused() {
    let env = Env::start(Suite::X25519).await;
    let served = Arc::new(AtomicUsize::new(0));
    let client = ServiceBuilder::new().layer(env.layer()).service(forger(false, served.clone()));
    let e = client.oneshot(chat(&env.url("/v1/chat/completions"), true)).await.unwrap_err();
    assert_eq!(kind(&e), Some(ErrorKind::Protocol), "{e}");
    assert!(e.to_string().contains("\"stream\": true"), "{e}");
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_real_gateway_answers_each_kind_as_asked() {
    // Control: the gateway's own answers agree with the request's flag, both ways.
    let env = Env::start(Suite::X25519).await;
    let client = env.client(env.layer());
    for stream in [false, true] {
        let res = client.clone().oneshot(chat(&env.url("/v1/chat/completions"), stream)).await.unwrap();
        let record = res.extensions().get::<tower_aci::receipt::ExchangeRecord>().unwrap().clone();
        assert_eq!(record.streamed(), stream);
        let text = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert_eq!(text.contains("data: [DONE]"), stream, "{text}");
    }
}

#[tokio::test]
async fn a_zeroizing_body_goes_through_the_retry_and_the_layer() {
    use tower::retry::RetryLayer;
    use tower_aci::e2ee::{KeyMismatchRetry, ZeroizingBody};
    let env = Env::start(Suite::X25519).await;
    let http: hyper_util::client::legacy::Client<_, RequestBody<ZeroizingBody>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(KeyMismatchRetry::new(env.keys.clone())))
        .layer(env.layer())
        .service(http);
    let body = json!({"model": "demo-model", "messages": [{"role": "user", "content": "wiped after"}]});
    let req = Request::post(env.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(ZeroizingBody::from(body.to_string()))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let v: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "You said: wiped after");
}
