//! `tower_aci::Client` against the workspace's local test gateway (crate `aci-test-gateway`): attest, send, read the decrypted
//! answer with its receipt's verdict, and handle a gateway error and a failed refresh.
//!
//! ```text
//! cargo run --example client
//! ```
//!
//! Against a real gateway, `Client::builder("https://…")` with your pins replaces
//! `gw.client_builder()` (`aci_test_gateway::TestGateway::client_builder`; see the `Client` docs).

use aci_test_gateway::{Fault, GatewayConfig, TestGateway};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_aci::ErrorKind;
use tower_aci::client::ReceiptCheck;

const CHAT: &str = "/v1/chat/completions";
const BODY: &str = r#"{"model":"demo","messages":[{"role":"user","content":"Hello, client"}]}"#;

#[tokio::main]
async fn main() -> Result<(), tower_aci::BoxError> {
    let gw = TestGateway::start(GatewayConfig::new()).await?;
    // Offline demo: a dangerous policy accepting the local gateway's stub quote.
    let client = gw.client_builder().api_key("sk-demo").build().await?;
    println!("attested keyset {}", client.keyset()?.digest());

    // One call: the decrypted answer, and its receipt verified in the background (the
    // default `ReceiptMode::Background`; await the verdict, or read `client.receipt_stats()`).
    let answer = client.post(CHAT, BODY).await?;
    println!("answer: {}", String::from_utf8_lossy(&answer.body));
    let receipt = answer.receipt.verified().await?;
    println!("receipt {} verified under keyset {}", receipt.receipt().receipt_id(), receipt.keyset().digest());

    // The tower service, and the receipt checked in the background once the body was read.
    let req = http::Request::post(client.url(CHAT)?)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))?;
    let res = client.service().oneshot(req).await?;
    let check = res.extensions().get::<ReceiptCheck>().cloned();
    let _answer = res.into_body().collect().await?.to_bytes();
    if let Some(check) = check {
        let verified = check.verified().await?;
        println!("receipt {} verified", verified.receipt().receipt_id());
    }

    // A non-2xx answer is a typed error with the gateway's error type and status.
    gw.set_fault(Some(Fault::UpstreamStatus(
        429,
        r#"{"error":{"type":"rate_limit_error","message":"slow down"}}"#.into(),
    )));
    match client.post(CHAT, BODY).await {
        Err(e) if e.kind() == ErrorKind::Gateway => {
            println!(
                "gateway error {:?} ({:?}, retry after {:?}): {e}",
                e.gateway_error_type(),
                e.status(),
                e.retry_after()
            )
        }
        other => println!("unexpected: {other:?}"),
    }
    // A failed refresh: the attested key keeps serving until its not_after.
    gw.set_fault(Some(Fault::AttestationStatus(503)));
    if let Err(e) = client.refresh().await {
        println!("refresh failed ({e}); still serving keyset {}", client.keyset()?.digest());
    }
    let stats = client.receipt_stats();
    println!("background receipts: {} verified, {} failed", stats.verified, stats.failed);
    Ok(())
}
