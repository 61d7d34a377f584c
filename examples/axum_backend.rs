//! An axum backend that calls the gateway for its own users through the E2EE layer and streams
//! the decrypted SSE straight through to them.
//!
//! ```text
//! cargo run --example axum_backend
//! ```

use aci_test_gateway::{GatewayConfig, TestGateway};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_aci::attest::{KeyProvider, Policy};
use tower_aci::e2ee::{RequestBody, ResponseBody};
use tower_aci::{BoxError, E2eeLayer};

type Upstream =
    BoxCloneSyncService<http::Request<Full<Bytes>>, http::Response<ResponseBody<hyper::body::Incoming>>, BoxError>;

#[derive(Clone)]
struct App {
    gateway: String,
    client: Upstream,
}

/// `POST /ask` with a plain question as the body: streams the model's answer back as SSE.
async fn ask(State(app): State<App>, question: String) -> Response {
    let body =
        serde_json::json!({"model": "demo", "stream": true, "messages": [{"role": "user", "content": question}]});
    let req = http::Request::post(format!("{}/v1/chat/completions", app.gateway))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid request");
    match app.client.oneshot(req).await {
        // The decrypting body goes straight into axum: events are released as they verify.
        Ok(res) => res.map(Body::new).into_response(),
        Err(e) => (http::StatusCode::BAD_GATEWAY, format!("gateway error: {e}")).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let gw = TestGateway::start(GatewayConfig::new()).await?;
    let plain: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let policy = Policy::builder().dangerous().accept_stub_quote().any_workload().build()?;
    let provider = KeyProvider::builder(plain).base_url(gw.base_url().parse()?).policy(policy).build()?;
    let (keys, _refresh) = provider.spawn()?;
    provider.establish().await?;

    let hyper: Client<HttpConnector, RequestBody<Full<Bytes>>> = Client::builder(TokioExecutor::new()).build_http();
    let client = BoxCloneSyncService::new(ServiceBuilder::new().layer(E2eeLayer::new(keys)).service(hyper));
    let app = Router::new().route("/ask", post(ask)).with_state(App { gateway: gw.base_url(), client });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("backend listening on http://{addr}/ask");

    // A user of the backend: plain HTTP to our server, which talks E2EE to the gateway.
    let user: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let res = user
        .request(http::Request::post(format!("http://{addr}/ask")).body(Full::new(Bytes::from("Is this private?")))?)
        .await?;
    println!("backend answered {} ({:?})", res.status(), res.headers().get("content-type"));
    let text = res.into_body().collect().await?.to_bytes();
    for line in text.split(|b| *b == b'\n') {
        if let Some(json) = line.strip_prefix(b"data: ") {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) {
                if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
                    print!("{piece}");
                }
            }
        }
    }
    println!();
    Ok(())
}
