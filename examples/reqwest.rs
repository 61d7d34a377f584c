//! E2EE through reqwest-middleware, after a retry middleware so every attempt re-encrypts; the
//! gateway attested and the receipt verified over the same `reqwest::Client` (no hyper client).
//!
//! ```text
//! cargo run --example reqwest --features reqwest-middleware
//! ```
//!
//! Against a real (HTTPS) gateway, `tower_aci::Client::reqwest` gives the same client over the
//! pinned rustls configuration, or build one with `ReqwestService::pinned(&attested_tls)`.

use aci_test_gateway::{Fault, GatewayConfig, TestGateway};
use reqwest_middleware::ClientBuilder;
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use tower_aci::attest::{KeyProvider, Policy};
use tower_aci::middleware::{E2eeMiddleware, ReqwestService};
use tower_aci::receipt::{ExchangeRecord, ReceiptClient, ReceiptPolicy};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let gw = TestGateway::start(GatewayConfig::new()).await?;
    let base: http::Uri = gw.base_url().parse()?;
    // One reqwest client for attestation, inference and receipts (plain HTTP: a loopback gateway).
    let http = reqwest::Client::new();
    let transport = ReqwestService::new(http.clone());
    // Offline demo: the local gateway's stub quote is accepted under `dangerous()`.
    let policy = Policy::builder().dangerous().accept_stub_quote().any_workload().build()?;
    let provider = KeyProvider::builder(transport.clone()).base_url(base.clone()).policy(policy).build()?;
    provider.establish().await?;
    let (keys, _refresher) = provider.spawn()?; // dropping `_refresher` stops the refreshes

    let client = ClientBuilder::new(http)
        .with(RetryTransientMiddleware::new_with_policy(ExponentialBackoff::builder().build_with_max_retries(2)))
        .with(E2eeMiddleware::new(keys.clone()))
        .build();

    // The gateway answers the first attempt 503 after burning its nonce; the retry re-encrypts
    // with a fresh nonce and succeeds (a replayed nonce would be `e2ee_replay_detected`).
    gw.set_fault(Some(Fault::StatusOnce(503)));
    let res = client
        .post(format!("{}/v1/chat/completions", gw.base_url()))
        .bearer_auth("sk-demo")
        .header("content-type", "application/json")
        .body(r#"{"model":"demo","messages":[{"role":"user","content":"Hello over reqwest"}]}"#)
        .send()
        .await?;
    println!("status {} from {}", res.status(), res.url());
    if !res.status().is_success() {
        // The gateway's error document (`tower_aci::GatewayError` is in the extensions).
        return Err(format!("the gateway answered {}: {}", res.status(), res.text().await?).into());
    }
    let record = res.extensions().get::<ExchangeRecord>().cloned().ok_or("not an E2EE exchange")?;
    let answer: serde_json::Value = serde_json::from_slice(&res.bytes().await?)?; // decrypted
    println!("answer: {}", answer["choices"][0]["message"]["content"]);
    println!("attempts on the wire: {}", gw.wire_log().len());

    // The receipt, fetched over the same reqwest client and checked against the attested keyset.
    let receipts = ReceiptClient::new(transport, base);
    let verified = receipts.fetch_and_verify(&record, Some("sk-demo"), &keys, &ReceiptPolicy::new()).await?;
    println!("receipt {} verified under keyset {}", verified.receipt().receipt_id(), verified.keyset().digest());
    Ok(())
}
