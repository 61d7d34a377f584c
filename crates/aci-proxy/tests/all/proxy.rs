//! `aci-proxy` driven by an OpenAI client written by someone else (`async-openai`), over
//! loopback, against the local test gateway.

use std::net::SocketAddr;
use std::time::Duration;

use aci_proxy::{Proxy, ProxyConfig, ReceiptMode, verify_audit};
use aci_test_gateway::{Fault, GatewayConfig, TestGateway};
use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};
use async_openai::types::completions::CreateCompletionRequestArgs;
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tower_aci::protocol::Suite;
use tower_aci::receipt::ReceiptPolicy;

use crate::support::stub_policy;

/// A proxy in front of `gw`, served on an ephemeral loopback port.
async fn serve(gw: &TestGateway, receipts: ReceiptMode, audit: Option<std::path::PathBuf>) -> (Proxy, SocketAddr) {
    let mut config = config_for(gw).receipts(receipts);
    config.audit_file = audit;
    serve_config(config).await
}

/// The proxy's configuration for `gw`, under the tests' stub-accepting policy.
pub(crate) fn config_for(gw: &TestGateway) -> ProxyConfig {
    ProxyConfig::default().gateway(gw.base_url()).with_policy(stub_policy(Suite::Secp256k1))
}

/// A proxy with `config`, served on an ephemeral loopback port.
pub(crate) async fn serve_config(config: ProxyConfig) -> (Proxy, SocketAddr) {
    let proxy = Proxy::start(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = proxy.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (proxy, addr)
}

fn sdk(addr: SocketAddr) -> Client<OpenAIConfig> {
    Client::with_config(OpenAIConfig::new().with_api_base(format!("http://{addr}/v1")).with_api_key("sk-test"))
}

/// Wait (bounded) until the proxy verified `n` receipts in the background.
async fn receipts_verified(proxy: &Proxy, n: u64) -> Value {
    for _ in 0..500 {
        let status = proxy.status();
        if status["counts"]["receipts_verified"].as_u64() >= Some(n) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("receipts not verified in time: {}", proxy.status());
}

/// A one-message chat completion for async-openai (also used by `proxy_local`).
pub(crate) fn chat_request(text: &str) -> async_openai::types::chat::CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("demo-model")
        .messages([ChatCompletionRequestUserMessageArgs::default().content(text).build().unwrap().into()])
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_openai_sdk_gets_decrypted_answers_while_the_wire_carries_ciphertext_and_receipts_are_archived() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("receipts.jsonl");
    let (proxy, addr) = serve(&gw, ReceiptMode::Background, Some(audit.clone())).await;
    let client = sdk(addr);

    // Buffered chat.
    let answer = client.chat().create(chat_request("amber falcon")).await.unwrap();
    assert_eq!(answer.choices[0].message.content.as_deref(), Some("You said: amber falcon"));

    // Streamed chat, event by event.
    let mut stream = client.chat().create_stream(chat_request("cobalt heron")).await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        for choice in chunk.unwrap().choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or_default());
        }
    }
    assert_eq!(text, "You said: cobalt heron");

    // Completions.
    let completion = client
        .completions()
        .create(CreateCompletionRequestArgs::default().model("demo-model").prompt("violet otter").build().unwrap())
        .await
        .unwrap();
    assert!(completion.choices[0].text.contains("violet otter"), "{:?}", completion.choices[0].text);

    // Embeddings.
    let embeddings = client
        .embeddings()
        .create(CreateEmbeddingRequestArgs::default().model("demo-model").input("saffron lynx").build().unwrap())
        .await
        .unwrap();
    assert!(!embeddings.data[0].embedding.is_empty());

    // The gateway's wire saw only ciphertext; its upstream saw the plaintext.
    let wire = gw.wire_log();
    assert_eq!(wire.len(), 4);
    for secret in ["amber falcon", "cobalt heron", "violet otter", "saffron lynx"] {
        assert!(wire.iter().all(|b| !String::from_utf8_lossy(b).contains(secret)), "{secret} on the wire");
        assert!(gw.upstream_log().iter().any(|u| u.to_string().contains(secret)), "{secret} never reached the model");
    }

    // Every receipt verified in the background and was archived; the archive re-verifies offline,
    // and a changed byte in it does not.
    let status = receipts_verified(&proxy, 4).await;
    assert_eq!(status["counts"]["receipts_failed"], 0);
    assert_eq!(status["counts"]["exchanges"], 4);
    assert_eq!(status["keyset"]["digest"], gw.keyset_digest());
    let text = std::fs::read_to_string(&audit).unwrap();
    let summary = verify_audit(&text, &stub_policy(Suite::Secp256k1), &ReceiptPolicy::new());
    assert!(summary.is_clean(), "{:?}", summary.failures);
    assert_eq!((summary.keysets_verified, summary.receipts_verified), (1, 4));
    let line = text.lines().last().unwrap();
    let mut v: Value = serde_json::from_str(line).unwrap();
    v["exchange"]["request_sha256"] = json!("00".repeat(32));
    let broken = text.replace(line, &v.to_string());
    let summary = verify_audit(&broken, &stub_policy(Suite::Secp256k1), &ReceiptPolicy::new());
    assert_eq!(summary.failures.len(), 1);
    assert_eq!(
        summary.failures[0].1.error().map(tower_aci::Error::kind),
        Some(tower_aci::ErrorKind::Receipt(tower_aci::ReceiptFailure::RequestHash))
    );
}

#[tokio::test]
async fn other_posts_are_refused_with_an_openai_shaped_error_and_nothing_is_sent() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (proxy, addr) = serve(&gw, ReceiptMode::Off, None).await;
    let seen = gw.requests_seen();
    let http = reqwest::Client::new();
    for path in ["/v1/responses", "/v1/messages", "/v1/images/generations", "/other"] {
        let res = http
            .post(format!("http://{addr}{path}"))
            .body(r#"{"model":"m","input":"private words"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
        let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        assert_eq!(v["error"]["type"], "e2ee_unsupported_endpoint", "{path}");
        assert!(v["error"]["message"].as_str().unwrap().contains(path));
    }
    assert_eq!(gw.requests_seen(), seen, "the gateway saw none of them");
    assert_eq!(proxy.status()["counts"]["refused_requests"], 4);
    // GETs pass through.
    let models = http.get(format!("http://{addr}/v1/models")).send().await.unwrap().bytes().await.unwrap();
    let models: Value = serde_json::from_slice(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "demo-model");
}

#[tokio::test]
async fn a_client_that_drops_a_stream_cancels_the_upstream_and_the_proxy_stays_healthy() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (proxy, addr) = serve(&gw, ReceiptMode::Background, None).await;
    let client = sdk(addr);
    client.chat().create(chat_request("warm up the pool")).await.unwrap();

    gw.set_fault(Some(Fault::StallAfter { events: 2 }));
    let mut stream = client.chat().create_stream(chat_request("never finished")).await.unwrap();
    // The first event arrives (the stream is live) before the client walks away.
    stream.next().await.unwrap().unwrap();
    let stalled = gw.live_connections();
    assert!(stalled >= 1);
    drop(stream);
    // The proxy drops its upstream response: the gateway's stalled connection goes away.
    let mut closed = false;
    for _ in 0..300 {
        if gw.live_connections() < stalled {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "the upstream stream was not cancelled");

    gw.set_fault(None);
    let answer = client.chat().create(chat_request("still here")).await.unwrap();
    assert_eq!(answer.choices[0].message.content.as_deref(), Some("You said: still here"));
    // The abandoned stream never reached its end, so no receipt was checked for it.
    let status = receipts_verified(&proxy, 2).await;
    assert_eq!(status["counts"]["receipts_failed"], 0);
}

#[tokio::test]
async fn a_stream_that_fails_mid_way_ends_with_an_error_event() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (_proxy, addr) = serve(&gw, ReceiptMode::Off, None).await;
    gw.set_fault(Some(Fault::TamperEvent { index: 1 }));
    let body = json!({"model": "demo-model", "stream": true, "messages": [{"role": "user", "content": "tampered"}]});
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    let last: Value = serde_json::from_str(events.last().unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "e2ee_decryption_failed", "{text}");
    assert!(!text.contains("[DONE]"), "a failed stream must not look complete");
    assert!(events.len() >= 2, "the events before the tampered one were released");
}

#[tokio::test]
async fn before_release_holds_answers_until_their_receipt_verified() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (proxy, addr) = serve(&gw, ReceiptMode::BeforeRelease, None).await;
    let client = sdk(addr);
    let fetches = gw.receipt_fetches();
    let answer = client.chat().create(chat_request("held back")).await.unwrap();
    assert_eq!(answer.choices[0].message.content.as_deref(), Some("You said: held back"));
    assert!(gw.receipt_fetches() > fetches, "the receipt was fetched before the answer was released");
    assert_eq!(proxy.status()["counts"]["receipts_verified"], 1);

    let mut stream = client.chat().create_stream(chat_request("held stream")).await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        for choice in chunk.unwrap().choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or_default());
        }
    }
    assert_eq!(text, "You said: held stream");
    // [DONE] came only after the stream's receipt verified.
    assert_eq!(proxy.status()["counts"]["receipts_verified"], 2);
}

/// 200 concurrent streams through the proxy, all decrypted, none failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_without_an_error() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (proxy, addr) = serve(&gw, ReceiptMode::Off, None).await;
    let client = sdk(addr);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut stream = client.chat().create_stream(chat_request(&format!("stream {i}"))).await?;
                let mut text = String::new();
                while let Some(chunk) = stream.next().await {
                    for choice in chunk?.choices {
                        text.push_str(choice.delta.content.as_deref().unwrap_or_default());
                    }
                }
                Ok::<_, async_openai::error::OpenAIError>((i, text))
            })
        })
        .collect();
    for t in tasks {
        let (i, text) = t.await.unwrap().unwrap();
        assert_eq!(text, format!("You said: stream {i}"));
    }
    let status = proxy.status();
    assert_eq!(status["counts"]["exchanges"], 200);
    assert_eq!(status["counts"]["failed_exchanges"], 0);
}

/// An HTTPS gateway with a self-signed certificate: the proxy pins the TLS key the attested
/// keyset lists (pin-only mode) and the SDK's answers still decrypt.
#[tokio::test]
async fn the_proxy_reaches_an_https_gateway_over_the_pinned_channel() {
    use aci_test_gateway::GatewayTls;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let tls = GatewayTls::new(vec![cert.cert.der().clone()], key).unwrap();
    let gw = TestGateway::start(GatewayConfig::new().tls(tls)).await.unwrap();
    assert!(gw.base_url().starts_with("https://"));
    let config = config_for(&gw).receipts(ReceiptMode::BeforeRelease).tls_pin_only(true);
    let (proxy, addr) = serve_config(config).await;
    let answer = sdk(addr).chat().create(chat_request("over pinned tls")).await.unwrap();
    assert_eq!(answer.choices[0].message.content.as_deref(), Some("You said: over pinned tls"));
    assert_eq!(proxy.status()["counts"]["receipts_verified"], 1);
    assert!(gw.wire_log().iter().all(|b| !String::from_utf8_lossy(b).contains("over pinned tls")));
}
