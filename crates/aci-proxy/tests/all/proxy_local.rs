//! async-openai talking to `aci-proxy` embedded in the test's own process
//! (`Proxy::spawn_local`): no second process, an ephemeral loopback port.

use std::time::Duration;

use aci_proxy::{Proxy, ProxyConfig, ReceiptMode};
use aci_test_gateway::{GatewayConfig, TestGateway};
use async_openai::Client;
use async_openai::config::OpenAIConfig;
use futures_util::StreamExt;
use tower_aci::protocol::Suite;

use crate::proxy::chat_request;
use crate::support::stub_policy;

async fn proxy_for(gw: &TestGateway) -> Proxy {
    Proxy::start(
        ProxyConfig::default()
            .gateway(gw.base_url())
            .with_policy(stub_policy(Suite::X25519))
            .receipts(ReceiptMode::BeforeRelease),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn async_openai_talks_to_the_embedded_proxy_and_the_wire_carries_ciphertext() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let proxy = proxy_for(&gw).await;
    let (url, server) = proxy.spawn_local().await.unwrap();
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/v1"), "{url}");
    assert_eq!(server.url(), url);
    assert!(server.addr().ip().is_loopback());

    let sdk = Client::with_config(OpenAIConfig::new().with_api_base(&url).with_api_key("sk-local"));
    let answer = sdk.chat().create(chat_request("violet marten")).await.unwrap();
    assert_eq!(answer.choices[0].message.content.as_deref(), Some("You said: violet marten"));
    let mut stream = sdk.chat().create_stream(chat_request("teal stoat")).await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        if let Some(delta) = chunk.unwrap().choices.first().and_then(|c| c.delta.content.clone()) {
            text.push_str(&delta);
        }
    }
    assert_eq!(text, "You said: teal stoat");
    let wire = gw.wire_log();
    assert!(!wire.iter().any(|w| w.windows(13).any(|x| x == b"violet marten")), "plaintext on the wire");
    for _ in 0..500 {
        if proxy.status()["counts"]["receipts_verified"].as_u64() >= Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proxy.status()["counts"]["receipts_verified"].as_u64(), Some(2), "{}", proxy.status());

    // Shut down: the port no longer answers.
    let addr = server.addr();
    server.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the embedded proxy still listens");
}

#[tokio::test]
async fn dropping_the_handle_stops_the_embedded_proxy() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let proxy = proxy_for(&gw).await;
    let (url, server) = proxy.spawn_local().await.unwrap();
    let sdk = Client::with_config(OpenAIConfig::new().with_api_base(&url).with_api_key("sk-local"));
    sdk.chat().create(chat_request("first")).await.unwrap();
    let addr = server.addr();
    drop(server);
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the embedded proxy outlived its handle");
}
