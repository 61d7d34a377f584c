#![allow(missing_docs)]
//! Throughput of `aci-proxy` against the E2EE layer used directly, in one run: 50 concurrent
//! 100-event streams to the local gateway, (a) through `E2eeLayer` in the client, (b) through
//! the proxy with a plain HTTP client in front (the extra loopback hop and the proxy's own
//! request and response handling are the difference), (c) the same with metrics on: the
//! Prometheus recorder installed, every library and proxy metric recorded.
//!
//! (b) runs before (c) because a recorder, once installed, stays for the process: (b) is the
//! proxy with no recorder at all.
//!
//! Run: `cargo bench --bench proxy --features proxy,test-gateway`.

use std::net::SocketAddr;

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
use tower_aci::gateway::{GatewayConfig, TestGateway, UpstreamResponse};
use tower_aci::protocol::suite::Suite;
use tower_aci::proxy::{Proxy, ProxyConfig, ReceiptMode};

const STREAMS: usize = 50;
const EVENTS: usize = 100;

fn upstream(req: tower_aci::gateway::UpstreamRequest) -> UpstreamResponse {
    let events: Vec<Value> = (0..EVENTS)
        .map(|i| {
            json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": format!("token{i} ")}, "finish_reason": null}]})
        })
        .collect();
    let _ = req;
    UpstreamResponse::sse_events(events, true)
}

fn policy() -> Policy {
    Policy::builder().select_suite(Suite::Secp256k1).dangerous().accept_stub_quote().any_workload().build().unwrap()
}

async fn streams<S, B>(svc: &S, url: &str)
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    let tasks: Vec<_> = (0..STREAMS)
        .map(|_| {
            let svc = svc.clone();
            let url = url.to_owned();
            tokio::spawn(async move {
                let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "go"}]});
                let req = http::Request::post(url)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap();
                let res = svc.oneshot(req).await.unwrap();
                assert_eq!(res.status(), 200);
                let bytes = res.into_body().collect().await.unwrap().to_bytes();
                assert!(bytes.ends_with(b"data: [DONE]\n\n"));
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn proxy_vs_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let connector = || {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        c
    };
    let (gw, keys) = rt.block_on(async {
        let gw = TestGateway::start(GatewayConfig::new().upstream(upstream)).await.unwrap();
        let plain: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let provider =
            KeyProvider::builder(plain).base_url(gw.base_url().parse().unwrap()).policy(policy()).build().unwrap();
        provider.establish().await.unwrap();
        (gw, provider.handle())
    });
    let proxy = |metrics: bool| {
        rt.block_on(async {
            let config = ProxyConfig {
                gateway: Some(gw.base_url()),
                receipts: ReceiptMode::Off,
                policy: Some(policy()),
                metrics,
                ..ProxyConfig::default()
            };
            let proxy = Proxy::start(config).await.unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr: SocketAddr = listener.local_addr().unwrap();
            let router = proxy.router();
            tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
            (proxy, format!("http://{addr}/v1/chat/completions"))
        })
    };
    let inner: Client<HttpConnector, RequestBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build(connector());
    let direct = ServiceBuilder::new().layer(E2eeLayer::new(keys)).service(inner);
    let plain: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector());
    let gw_url = format!("{}/v1/chat/completions", gw.base_url());

    let mut g = c.benchmark_group(format!("{STREAMS}_streams_of_{EVENTS}_events"));
    g.sample_size(10);
    g.bench_function("layer_direct", |b| b.iter(|| rt.block_on(streams(&direct, &gw_url))));
    let (_off, off_url) = proxy(false);
    g.bench_function("through_proxy_metrics_off", |b| b.iter(|| rt.block_on(streams(&plain, &off_url))));
    let (_on, on_url) = proxy(true);
    g.bench_function("through_proxy_metrics_on", |b| b.iter(|| rt.block_on(streams(&plain, &on_url))));
    g.finish();
}

criterion_group!(benches, proxy_vs_layer);
criterion_main!(benches);
