//! A streamed, encrypted chat completion: each event is printed as soon as it is decrypted.
//!
//! ```text
//! cargo run --example stream
//! ```

use aci_test_gateway::{GatewayConfig, TestGateway};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io::Write;
use tower::{ServiceBuilder, ServiceExt};
use tower_aci::attest::{KeyProvider, Policy};
use tower_aci::{E2eeLayer, Error};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let gw = TestGateway::start(GatewayConfig::new()).await?;
    let plain: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let policy = Policy::builder().dangerous().accept_stub_quote().any_workload().build()?;
    let provider = KeyProvider::builder(plain).base_url(gw.base_url().parse()?).policy(policy).build()?;
    // The refresher keeps the key current in the background until `_refresh` is dropped.
    let (keys, _refresh) = provider.spawn()?;
    provider.establish().await?;

    let client =
        ServiceBuilder::new().layer(E2eeLayer::new(keys)).service(Client::builder(TokioExecutor::new()).build_http());
    let body = serde_json::json!({"model": "demo", "stream": true,
        "messages": [{"role": "user", "content": "Stream this sentence back to me, word by word."}]});
    let req = http::Request::post(format!("{}/v1/chat/completions", gw.base_url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
    let mut body = client.oneshot(req).await?.into_body();

    let mut out = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                // Truncated streams, tampered events and in-band errors end here, typed.
                let kind = Error::find(e.as_ref()).map(Error::kind);
                return Err(format!("stream failed ({kind:?}): {e}").into());
            }
        };
        let Some(data) = frame.data_ref() else { continue };
        for line in data.split(|b| *b == b'\n') {
            let Some(json) = line.strip_prefix(b"data: ") else { continue };
            let Ok(chunk) = serde_json::from_slice::<serde_json::Value>(json) else { continue };
            if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
                write!(out, "{piece}")?;
                out.flush()?;
            }
        }
    }
    println!("\n[stream ended cleanly with [DONE]]");
    Ok(())
}
