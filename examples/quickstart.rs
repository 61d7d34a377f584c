//! Quick start, fully offline: start a local attested ACI gateway in-process, attest it, send one
//! encrypted chat completion and one streamed one through `E2eeLayer`, and verify the signed
//! receipts.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! The gateway's quote is a stub (there is no TEE on your machine), accepted only under
//! `Policy::builder().dangerous()`; everything else — the keyset binding, the field encryption,
//! the receipts — is the real wire protocol.

use aci_test_gateway::{GatewayConfig, TestGateway};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};
use tower_aci::attest::{KeyProvider, Policy};
use tower_aci::e2ee::RequestBody;
use tower_aci::receipt::{ExchangeRecord, ReceiptClient, ReceiptPolicy};
use tower_aci::{BoxError, E2eeLayer, Error};

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_owned() } else { format!("{}…", s.chars().take(n).collect::<String>()) }
}

fn chat(base: &str, body: &Value) -> Result<http::Request<Full<Bytes>>, BoxError> {
    Ok(http::Request::post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let gateway = TestGateway::start(GatewayConfig::new()).await?;
    let base = gateway.base_url();
    println!("Local ACI gateway listening on {base}\n");

    // One HTTP client (one connection pool) serves the key provider, the E2EE layer and the
    // receipt client. The provider and the receipt client use it directly, never through the layer.
    let http: Client<HttpConnector, RequestBody<Full<Bytes>>> = Client::builder(TokioExecutor::new()).build_http();

    // 1. Establish: fetch the report with a fresh nonce, check that it binds the keyset to it.
    let policy = Policy::builder().dangerous().accept_stub_quote().any_workload().build()?;
    let provider = KeyProvider::builder(http.clone()).base_url(base.parse()?).policy(policy).build()?;
    let (keys, _refresher) = provider.spawn()?;
    let keyset = provider.establish().await?;
    println!("✔ Attested keyset {} (stub quote, binding to our nonce verified)", shorten(keyset.digest(), 23));
    println!("  Encrypting to {} ({})\n", keyset.e2ee_key().key_id(), keyset.e2ee_key().suite());

    // 2. Send through the layer.
    let client = ServiceBuilder::new().layer(E2eeLayer::new(keys.clone())).service(http.clone());

    let question = "What is attested confidential inference?";
    let res = client
        .clone()
        .oneshot(chat(
            &base,
            &json!({"model": "demo-model",
        "messages": [{"role": "user", "content": question}]}),
        )?)
        .await?;
    let first = res.extensions().get::<ExchangeRecord>().cloned().ok_or("no exchange record")?;
    let answer: Value = serde_json::from_slice(&res.into_body().collect().await?.to_bytes())?;
    println!("You:       {question}");
    println!("Assistant: {}\n", answer["choices"][0]["message"]["content"].as_str().unwrap_or_default());

    // What each side saw.
    let wire: Value = serde_json::from_slice(gateway.wire_log().last().ok_or("no request on the wire")?)?;
    let upstream = gateway.upstream_log().pop().ok_or("the upstream saw nothing")?;
    println!(
        "On the wire, the message was:      {}",
        shorten(wire["messages"][0]["content"].as_str().unwrap_or_default(), 48)
    );
    println!("Inside the gateway, the model saw: {}\n", upstream["messages"][0]["content"]);

    // A streamed answer: each event is released as soon as its tag verifies.
    let res = client
        .oneshot(chat(
            &base,
            &json!({"model": "demo-model", "stream": true,
        "messages": [{"role": "user", "content": "Stream a short answer, please."}]}),
        )?)
        .await?;
    let second = res.extensions().get::<ExchangeRecord>().cloned().ok_or("no exchange record")?;
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

    // 3. Verify: the gateway signed exactly what we sent and received.
    let receipts = ReceiptClient::new(http, base.parse()?);
    for record in [first, second] {
        let verified = receipts.fetch_and_verify(&record, None, &keys, &ReceiptPolicy::default()).await?;
        println!(
            "✔ Receipt {}: Ed25519 signature by the attested key; it names the plaintext we sent and \
             the exact {} bytes we received",
            verified.receipt().receipt_id(),
            if record.streamed() { "stream" } else { "response" },
        );
    }
    Ok(())
}
