//! E2EE through reqwest-middleware, after a retry middleware so every attempt re-encrypts.
//!
//! ```text
//! cargo run --example reqwest --features test-gateway,reqwest-middleware
//! ```

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use reqwest_middleware::ClientBuilder;
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use tower_aci::attest::{KeyProvider, Policy};
use tower_aci::gateway::{Fault, GatewayConfig, TestGateway};
use tower_aci::middleware::E2eeMiddleware;
use tower_aci::receipt::ExchangeRecord;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let gw = TestGateway::start(GatewayConfig::new()).await?;
    let plain: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let policy = Policy::builder().dangerous().accept_stub_quote().any_workload().build()?;
    let provider = KeyProvider::builder(plain).base_url(gw.base_url().parse()?).policy(policy).build()?;
    provider.establish().await?;

    let client = ClientBuilder::new(reqwest::Client::new())
        .with(RetryTransientMiddleware::new_with_policy(ExponentialBackoff::builder().build_with_max_retries(2)))
        .with(E2eeMiddleware::new(provider.handle()))
        .build();

    // The gateway answers the first attempt 503 after burning its nonce; the retry re-encrypts
    // with a fresh nonce and succeeds (a replayed nonce would be `e2ee_replay_detected`).
    gw.set_fault(Some(Fault::StatusOnce(503)));
    let res = client
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .header("content-type", "application/json")
        .body(r#"{"model":"demo","messages":[{"role":"user","content":"Hello over reqwest"}]}"#)
        .send()
        .await?;
    println!("status {} from {}", res.status(), res.url());
    let receipt = res.extensions().get::<ExchangeRecord>().and_then(|r| r.receipt_id().map(str::to_owned));
    let answer: serde_json::Value = res.json_or_text().await?;
    println!("answer: {}", answer["choices"][0]["message"]["content"]);
    println!("receipt: {receipt:?}; attempts on the wire: {}", gw.wire_log().len());
    Ok(())
}

trait JsonOrText {
    async fn json_or_text(self) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>>;
}

impl JsonOrText for reqwest::Response {
    async fn json_or_text(self) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
        let bytes = self.bytes().await?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}
