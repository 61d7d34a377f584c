//! `aci-proxy` through an HTTP proxy (`CONNECT`): every connection to the gateway goes through
//! the tunnel, with TLS and its pin end to end inside, and the credentials are never logged. The
//! `CONNECT` proxy is the test double shared with tower-aci's `tests/all/egress.rs` (which tests
//! the library's egress).

use serde_json::Value;

use crate::doubles::{ConnectProxy, Mode};
use crate::proxy_binary::{chat as proxy_chat, command, start, stream_text};

const CHAT: &str = "/v1/chat/completions";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aci_proxy_with_https_proxy_sends_everything_through_the_tunnel() {
    // The local test gateway serves HTTPS (self-signed: --tls-pin-only) and is reached through
    // the CONNECT proxy, which wants credentials (given in the environment, not on the line).
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("gateway.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(&pem, format!("{}{}", cert.cert.pem(), cert.key_pair.serialize_pem())).unwrap();
    let proxy = ConnectProxy::start(Mode::RequireAuth("Basic b3A6cGFzcy13b3JkLTk=".to_owned())).await;
    let url = format!("http://op:pass-word-9@{}", proxy.addr);
    let running = start(
        &["--local-test-gateway-tls", pem.to_str().unwrap(), "--tls-pin-only"],
        &[("ACI_PROXY_HTTPS_PROXY", url.as_str()), ("RUST_LOG", "trace")],
    );
    let http = reqwest::Client::new();
    let send = |text: &'static str, stream: bool| {
        http.post(running.url(CHAT))
            .header("content-type", "application/json")
            .body(proxy_chat(text, stream).to_string())
            .send()
    };
    let answer: Value =
        serde_json::from_str(&send("binary badger", false).await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "You said: binary badger");
    let sse = send("binary bittern", true).await.unwrap().text().await.unwrap();
    assert_eq!(stream_text(&sse), "You said: binary bittern");

    let heads = proxy.heads();
    assert!(heads.len() >= 2, "{heads:?}");
    let target = heads[0].split(' ').nth(1).unwrap().to_owned();
    assert!(target.starts_with("127.0.0.1:"), "{target}");
    for head in &heads {
        assert!(head.starts_with(&format!("CONNECT {target} HTTP/1.1\r\n")), "{head}");
    }
    for clear in [&b"binary"[..], b"badger", b"bittern", b"HTTP/", b"/v1/"] {
        assert!(!contains(&proxy.spliced(), clear), "{:?} crossed in clear", String::from_utf8_lossy(clear));
    }
    let log = running.log();
    assert!(log.contains(&format!("proxy=http://{}", proxy.addr)), "the proxy is named at start: {log}");
    assert!(!log.contains("pass-word-9") && !log.contains("b3A6cGFzcy13b3JkLTk="), "credentials in the log");

    // `aci-proxy config` shows the proxy without its credentials; a bad URL is refused
    // without repeating them.
    let out = command(&["config", "--https-proxy", "http://op:pass-word-9@proxy.corp:3128"], &[]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("https-proxy = \"http://proxy.corp:3128\""), "{text}");
    assert!(!text.contains("pass-word-9"), "{text}");
    let out = command(&["config", "--https-proxy", "socks5://op:pass-word-9@p:1"], &[]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("--https-proxy"), "{text}");
    assert!(!text.contains("pass-word-9"), "{text}");
}
