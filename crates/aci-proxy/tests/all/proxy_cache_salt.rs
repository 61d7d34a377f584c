//! Prompt-cache partitioning (`--cache-salt-env`), over loopback against the local test
//! gateway: what `cache_salt` the model server behind the gateway receives (`upstream_log`).

use std::net::SocketAddr;

use aci_proxy::Proxy;
use aci_test_gateway::{GatewayConfig, TestGateway};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::proxy::{config_for, serve_config};

/// Variables cargo sets for every test run, of at least 16 characters: the two tenants' salts
/// (no test mutates the environment).
const TENANT_A: &str = "CARGO_PKG_DESCRIPTION";
const TENANT_B: &str = "CARGO_PKG_REPOSITORY";

/// What the proxy salted with `var` sends, by the documented rule, computed with the RustCrypto
/// HMAC (HKDF-Extract with the key as salt is HMAC-SHA256(key, message)).
fn expected(var: &str, client: Option<&str>) -> String {
    let key = std::env::var(var).unwrap();
    let mut message = b"aci-proxy cache_salt v1".to_vec();
    if let Some(c) = client {
        message.push(0);
        message.extend_from_slice(c.as_bytes());
    }
    let (mac, _) = hkdf::Hkdf::<Sha256>::extract(Some(key.trim().as_bytes()), &message);
    mac.iter().map(|b| format!("{b:02x}")).collect()
}

async fn salted(gw: &TestGateway, var: Option<&str>) -> (Proxy, SocketAddr) {
    let mut config = config_for(gw);
    config.cache_salt_env = var.map(str::to_owned);
    serve_config(config).await
}

/// A request body for `path`, with the client's own `cache_salt` if given.
fn body(path: &str, stream: bool, client_salt: Option<&str>) -> Value {
    let mut b = if path == "/v1/completions" {
        json!({"model": "demo-model", "prompt": "the shared system prompt", "stream": stream})
    } else {
        json!({"model": "demo-model", "stream": stream, "messages": [{"role": "user", "content": "the shared prompt"}]})
    };
    if let Some(s) = client_salt {
        b["cache_salt"] = json!(s);
    }
    b
}

/// Send one request through the proxy and read its answer to the end; the body the model
/// server behind the gateway received.
async fn through(gw: &TestGateway, addr: SocketAddr, path: &str, body: &Value) -> Value {
    let res = reqwest::Client::new().post(format!("http://{addr}{path}")).body(body.to_string()).send().await.unwrap();
    assert_eq!(res.status(), 200, "{path} {body}");
    let text = res.text().await.unwrap();
    if body["stream"] == true {
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }
    gw.upstream_log().pop().unwrap()
}

const INFERENCE: [(&str, bool); 4] = [
    ("/v1/chat/completions", false),
    ("/v1/chat/completions", true),
    ("/v1/completions", false),
    ("/v1/completions", true),
];

#[tokio::test]
async fn the_gateway_sees_the_proxys_salt_on_chat_and_completions_buffered_and_streamed() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (proxy, addr) = salted(&gw, Some(TENANT_A)).await;
    assert_eq!(proxy.status()["cache_salt"], true);
    let secret = std::env::var(TENANT_A).unwrap();
    for (path, stream) in INFERENCE {
        // No salt of the client's own: the proxy's.
        let seen = through(&gw, addr, path, &body(path, stream, None)).await;
        assert_eq!(seen["cache_salt"], expected(TENANT_A, None), "{path} stream={stream}: {seen}");
        // The client's own salt is combined with the proxy's, never sent as it is.
        let seen = through(&gw, addr, path, &body(path, stream, Some("end-user-42"))).await;
        assert_eq!(seen["cache_salt"], expected(TENANT_A, Some("end-user-42")), "{path} stream={stream}: {seen}");
        // The prompt reached the model; the secret itself never left the proxy.
        assert!(seen.to_string().contains("the shared"), "{seen}");
    }
    assert!(gw.wire_log().iter().all(|w| !String::from_utf8_lossy(w).contains(&secret)));
    // An empty or null salt of the client's is no salt.
    for none in [json!(""), Value::Null] {
        let mut b = body("/v1/chat/completions", false, None);
        b["cache_salt"] = none;
        let seen = through(&gw, addr, "/v1/chat/completions", &b).await;
        assert_eq!(seen["cache_salt"], expected(TENANT_A, None));
    }
}

/// Two tenants, each behind its own salted proxy: the same prompt (and the same client salt)
/// lands in different partitions, and a client of one cannot name the other's partition by
/// sending its value.
#[tokio::test]
async fn one_tenant_cannot_pick_another_tenants_partition() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (_a, a) = salted(&gw, Some(TENANT_A)).await;
    let (_b, b) = salted(&gw, Some(TENANT_B)).await;
    let path = "/v1/chat/completions";
    let a_plain = through(&gw, a, path, &body(path, false, None)).await["cache_salt"].clone();
    let a_user = through(&gw, a, path, &body(path, false, Some("end-user-42"))).await["cache_salt"].clone();
    let b_plain = through(&gw, b, path, &body(path, false, None)).await["cache_salt"].clone();
    let b_user = through(&gw, b, path, &body(path, false, Some("end-user-42"))).await["cache_salt"].clone();
    assert!(a_plain != b_plain && a_user != b_user && a_plain != a_user, "{a_plain} {a_user} {b_plain} {b_user}");
    // Tenant B's client sends tenant A's values (read off the wire, say) as its own salt.
    for stolen in [&a_plain, &a_user] {
        let seen = through(&gw, b, path, &body(path, false, stolen.as_str())).await;
        assert_ne!(&seen["cache_salt"], stolen, "tenant B reached tenant A's partition");
        assert_eq!(seen["cache_salt"], expected(TENANT_B, stolen.as_str()));
    }
}

/// Without `--cache-salt-env` the client's `cache_salt` passes unchanged, and none is added.
#[tokio::test]
async fn without_a_proxy_salt_the_clients_salt_passes_unchanged() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (proxy, addr) = salted(&gw, None).await;
    assert_eq!(proxy.status()["cache_salt"], false);
    for (path, stream) in INFERENCE {
        let seen = through(&gw, addr, path, &body(path, stream, Some("tenant-chosen-salt"))).await;
        assert_eq!(seen["cache_salt"], "tenant-chosen-salt", "{path} stream={stream}");
        let seen = through(&gw, addr, path, &body(path, stream, None)).await;
        assert!(seen.get("cache_salt").is_none(), "{path} stream={stream}: {seen}");
    }
}

/// Embeddings keep their body; a request the proxy cannot salt is refused, not sent unsalted.
#[tokio::test]
async fn embeddings_are_left_alone_and_an_unsaltable_request_is_refused() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (_proxy, addr) = salted(&gw, Some(TENANT_A)).await;
    let http = reqwest::Client::new();
    let res = http
        .post(format!("http://{addr}/v1/embeddings"))
        .body(json!({"model": "demo-model", "input": "embed me"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(gw.upstream_log().pop().unwrap().get("cache_salt").is_none());
    let before = gw.requests_seen();
    for bad in [
        json!({"model": "demo-model", "messages": [{"role": "user", "content": "x"}], "cache_salt": 42}),
        json!([{"model": "demo-model"}]),
    ] {
        let res = http.post(format!("http://{addr}/v1/chat/completions")).body(bad.to_string()).send().await.unwrap();
        assert_eq!(res.status(), 400, "{bad}");
        let err: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
        assert_eq!(err["error"]["type"], "invalid_request_error");
    }
    assert_eq!(gw.requests_seen(), before, "nothing was sent");
}

/// A named salt variable that is unset or short fails the start, naming the variable only.
#[tokio::test]
async fn a_missing_or_short_salt_fails_the_start() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    for (var, seen) in [("TOWER_ACI_TEST_UNSET_SALT", "is unset"), ("CARGO_PKG_NAME", "is shorter than 16 characters")]
    {
        let config = config_for(&gw).cache_salt_env(var.to_owned());
        let e = Proxy::start(config).await.unwrap_err();
        assert_eq!(e.kind(), tower_aci::ErrorKind::Config);
        assert!(
            e.to_string().contains(&format!("--cache-salt-env {var}: the environment variable {var} {seen}")),
            "{e}"
        );
    }
    assert_eq!(gw.requests_seen(), 0);
}
