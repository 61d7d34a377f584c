//! One encrypted chat completion through `E2eeLayer` over hyper-util's client, in the stack the
//! crate recommends: trace → retry (transient answers, then key rotations) → timeout → E2EE →
//! client, with one connection pool shared by the key provider and the layer.
//!
//! ```text
//! RUST_LOG=tower_aci=debug,tower_http=debug cargo run --example chat --features test-gateway   # with spans
//! cargo run --example chat --features test-gateway                       # local gateway
//! cargo run --example chat --features test-gateway -- "your question"
//! ACI_API_KEY=… cargo run --example chat --features test-gateway,dcap -- --base-url http://host:port "question"
//! ```
//!
//! With `--base-url` the report is verified under the default policy, which needs the `dcap`
//! feature for the hardware quote. hyper-util's `HttpConnector` speaks plain HTTP; for an
//! `https://` gateway build the client over an HTTPS connector (e.g. hyper-rustls) instead —
//! everything else stays the same.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

use tower::retry::{Policy as RetryPolicy, RetryLayer};
use tower::timeout::TimeoutLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_aci::E2eeLayer;
use tower_aci::GatewayError;
use tower_aci::attest::{KeyProvider, Policy};
use tower_aci::e2ee::{KeyMismatchRetry, RequestBody};
use tower_aci::gateway::{GatewayConfig, TestGateway};
use tower_aci::receipt::ExchangeRecord;
use tower_http::trace::TraceLayer;

/// Retry transient gateway answers (502/503/504) up to twice. It sits above the E2EE layer, so
/// each attempt is encrypted afresh: the gateway burns a nonce before it decrypts.
#[derive(Clone)]
struct RetryTransient(usize);

impl<B, E> RetryPolicy<http::Request<Full<Bytes>>, http::Response<B>, E> for RetryTransient {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _: &mut http::Request<Full<Bytes>>,
        res: &mut Result<http::Response<B>, E>,
    ) -> Option<Self::Future> {
        let transient = matches!(res, Ok(r) if matches!(r.status().as_u16(), 502..=504));
        (transient && self.0 > 0).then(|| {
            self.0 -= 1;
            tokio::time::sleep(Duration::from_millis(200))
        })
    }

    fn clone_request(&mut self, req: &http::Request<Full<Bytes>>) -> Option<http::Request<Full<Bytes>>> {
        let mut clone = http::Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.headers_mut() = req.headers().clone();
        Some(clone)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let base_url = match args.iter().position(|a| a == "--base-url") {
        Some(i) if i + 1 < args.len() => Some(args.drain(i..=i + 1).nth(1).unwrap()),
        _ => None,
    };
    let question = args.pop().unwrap_or_else(|| "What is a TEE, in one sentence?".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let token = std::env::var("ACI_API_KEY").ok();

    // A real gateway, or the crate's local one (stub quote, accepted only under `dangerous()`).
    let (_local, base, policy) = match base_url {
        Some(url) => (None, url, Policy::builder().build()?),
        None => {
            let gw = TestGateway::start(GatewayConfig::new()).await?;
            let base = gw.base_url();
            (Some(gw), base, Policy::builder().dangerous().accept_stub_quote().any_workload().build()?)
        }
    };

    // One client (one connection pool) for the key provider and under the E2EE layer.
    let http: Client<_, RequestBody<Full<Bytes>>> = Client::builder(TokioExecutor::new()).build_http();

    // 1. Establish: fetch the report with a fresh nonce and verify it (never through the E2EE
    //    layer); the refresher keeps it fresh and follows key rotations.
    let provider = KeyProvider::builder(http.clone()).base_url(base.parse()?).policy(policy).build()?;
    let keyset = provider.establish().await?;
    let (keys, _refresher) = provider.spawn()?;
    println!("attested keyset {} (key {})", keyset.digest(), keyset.e2ee_key().key_id());

    // 2. Send through the layer: the body is encrypted on the way out, decrypted on the way back.
    //    Outermost first: trace → retry → timeout (to the response head) → E2EE → client.
    let client = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(RetryLayer::new(RetryTransient(2)))
        .layer(RetryLayer::new(KeyMismatchRetry::new(keys.clone())))
        .layer(TimeoutLayer::new(Duration::from_secs(60)))
        .layer(E2eeLayer::new(keys))
        .service(http);
    let body = serde_json::json!({"model": "demo", "messages": [{"role": "user", "content": question}]});
    let mut req = http::Request::post(format!("{base}/v1/chat/completions")).header("content-type", "application/json");
    if let Some(t) = &token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = client.oneshot(req.body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?).await?;
    let status = res.status();
    if let Some(err) = res.extensions().get::<GatewayError>() {
        return Err(err.to_error().into());
    }
    let record = res.extensions().get::<ExchangeRecord>().cloned();
    let answer: serde_json::Value = serde_json::from_slice(&res.into_body().collect().await?.to_bytes())?;
    println!("{status}: {}", answer["choices"][0]["message"]["content"].as_str().unwrap_or("<no content>"));
    if let Some(r) = record {
        println!("receipt {:?}, suite {:?}", r.receipt_id(), r.suite());
    }
    Ok(())
}
