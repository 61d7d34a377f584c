#![allow(missing_docs)]
//! A loopback round trip to the local gateway with and without the E2EE layer, in one run:
//! a buffered chat completion and a 500-event stream.
//!
//! Run: `cargo bench --bench roundtrip`. "plain" sends the same request
//! without E2EE (the gateway serves plaintext too); "e2ee" goes through `E2eeLayer`: the
//! difference is the whole cost of the layer — request rewrite, gateway-side decryption and
//! re-encryption, client-side decryption — on top of HTTP.

use aci_test_gateway::{GatewayConfig, TestGateway, UpstreamResponse};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_aci::E2eeLayer;
use tower_aci::attest::{KeyProvider, Policy};
use tower_aci::e2ee::RequestBody;
use tower_aci::protocol::Suite;

const EVENTS: usize = 500;

fn upstream(req: aci_test_gateway::UpstreamRequest) -> UpstreamResponse {
    if !req.stream {
        return UpstreamResponse::echo(&req);
    }
    let events: Vec<Value> = (0..EVENTS)
        .map(|i| {
            json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": format!("token{i} ")}, "finish_reason": null}]})
        })
        .collect();
    UpstreamResponse::sse_events(events, true)
}

fn body(stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "How private is this request, really? Tell me in a few words."}]})
}

async fn call<S, B>(svc: &S, url: &str, stream: bool) -> usize
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body(stream)).unwrap())))
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap().to_bytes().len()
}

fn roundtrip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (gw, keys) = rt.block_on(async {
        let gw = TestGateway::start(GatewayConfig::new().upstream(upstream)).await.unwrap();
        let plain: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let policy = Policy::builder()
            .select_suite(Suite::Secp256k1)
            .dangerous()
            .accept_stub_quote()
            .any_workload()
            .build()
            .unwrap();
        let provider =
            KeyProvider::builder(plain).base_url(gw.base_url().parse().unwrap()).policy(policy).build().unwrap();
        provider.establish().await.unwrap();
        (gw, provider.handle())
    });
    let url = format!("{}/v1/chat/completions", gw.base_url());
    let connector = || {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        c
    };
    let plain: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector());
    let inner: Client<HttpConnector, RequestBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build(connector());
    let e2ee = ServiceBuilder::new().layer(E2eeLayer::new(keys)).service(inner);

    // Iterations run inside one `block_on`, so the runtime's own hand-off is not measured.
    macro_rules! timed {
        ($svc:expr, $stream:expr) => {
            |b: &mut criterion::Bencher<'_>| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = std::time::Instant::now();
                        for _ in 0..iters {
                            call($svc, &url, $stream).await;
                        }
                        start.elapsed()
                    })
                })
            }
        };
    }

    let mut g = c.benchmark_group("roundtrip_buffered_chat");
    g.bench_function("plain", timed!(&plain, false));
    g.bench_function("e2ee", timed!(&e2ee, false));
    g.finish();

    let mut g = c.benchmark_group("roundtrip_stream_500_events");
    g.sample_size(20);
    g.bench_function("plain", timed!(&plain, true));
    g.bench_function("e2ee", timed!(&e2ee, true));
    g.finish();
    drop(gw);
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
