//! Quick start, fully offline: start a local attested ACI gateway in-process, attest it with
//! `tower_aci::Client`, send one encrypted chat completion and one streamed one, show what the
//! wire and the model each saw, and verify both signed receipts.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! The gateway's quote is a stub (there is no TEE on your machine), accepted only by the
//! dangerous policy `TestGateway::client_builder()` gives the client; everything else — the
//! keyset binding, the field encryption, the receipts — is the real wire protocol. Against a real
//! gateway, `Client::builder("https://…")` with your pins replaces `gateway.client_builder()`
//! (README, "Ten lines to a verified answer").

use aci_test_gateway::{GatewayConfig, TestGateway};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_aci::client::ReceiptCheck;
use tower_aci::{BoxError, Error};

const CHAT: &str = "/v1/chat/completions";

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_owned() } else { format!("{}…", s.chars().take(n).collect::<String>()) }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let gateway = TestGateway::start(GatewayConfig::new()).await?;
    println!("Local ACI gateway listening on {}\n", gateway.base_url());

    // 1. Establish: fetch the report with a fresh nonce, verify that it binds the keyset to it,
    //    and keep the keyset fresh in the background.
    let client = gateway.client_builder().build().await?;
    let keyset = client.keyset()?;
    println!("✔ Attested keyset {} (stub quote, binding to our nonce verified)", shorten(keyset.digest(), 23));
    println!("  Encrypting to {} ({})\n", keyset.e2ee_key().key_id(), keyset.e2ee_key().suite());

    // 2. Send: the message content is sealed to the attested key, the answer decrypted.
    let question = "What is attested confidential inference?";
    let chat = json!({"model": "demo-model", "messages": [{"role": "user", "content": question}]});
    let answer = client.post(CHAT, chat.to_string()).await?;
    let body: Value = serde_json::from_slice(&answer.body)?;
    println!("You:       {question}");
    println!("Assistant: {}\n", body["choices"][0]["message"]["content"].as_str().unwrap_or_default());

    // What each side saw.
    let wire: Value = serde_json::from_slice(gateway.wire_log().last().ok_or("no request on the wire")?)?;
    let upstream = gateway.upstream_log().pop().ok_or("the upstream saw nothing")?;
    println!(
        "On the wire, the message was:      {}",
        shorten(wire["messages"][0]["content"].as_str().unwrap_or_default(), 48)
    );
    println!("Inside the gateway, the model saw: {}\n", upstream["messages"][0]["content"]);

    // A streamed answer through the client's tower service: each event is released as soon as
    // its tag verifies.
    let stream = json!({"model": "demo-model", "stream": true,
        "messages": [{"role": "user", "content": "Stream a short answer, please."}]});
    let req = http::Request::post(client.url(CHAT)?)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(stream.to_string())))?;
    let res = client.service().oneshot(req).await?;
    let streamed_receipt = res.extensions().get::<ReceiptCheck>().cloned().ok_or("no receipt check")?;
    let mut body = res.into_body();
    print!("Streamed:  ");
    let mut events = 0;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| format!("stream failed ({:?}): {e}", Error::find(e.as_ref()).map(Error::kind)))?;
        let Some(data) = frame.data_ref() else { continue };
        for line in std::str::from_utf8(data)?.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if let Ok(chunk) = serde_json::from_str::<Value>(line) {
                events += 1;
                print!("{}", chunk["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
            }
        }
    }
    println!("\n           ({events} events decrypted; the stream ended cleanly with [DONE])\n");

    // 3. Verify: the gateway signed exactly what we sent and received (checked in the
    //    background once each answer was read; here we wait for the verdicts).
    for (what, verified) in
        [("response", answer.receipt.verified().await?), ("stream", streamed_receipt.verified().await?)]
    {
        println!(
            "✔ Receipt {}: Ed25519 signature by the attested key; it names the plaintext we sent and \
             the exact {what} bytes we received",
            verified.receipt().receipt_id(),
        );
    }
    Ok(())
}
