//! Egress through an HTTP proxy (`CONNECT`), against a small real proxy on loopback written
//! here: it accepts `CONNECT`, records the request heads it saw and every byte it spliced, can
//! require `Proxy-Authorization`, refuse, or terminate TLS itself with its own certificate for
//! the gateway's name (an inspection appliance). The gateway is the local test gateway serving
//! HTTPS. NO_PROXY matching is unit-tested in `src/egress.rs` with an injected environment (the
//! process environment is never touched here). The proxy and the certificates are test doubles
//! shared with aci-proxy's tests (`doubles.rs`); aci-proxy through a proxy is tested there.
#![cfg(feature = "rustls")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aci_test_gateway::{GatewayConfig, TestGateway};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_aci::client::ReceiptCheck;
use tower_aci::receipt::ExchangeRecord;
use tower_aci::{AttestationFailure, ErrorKind};

use crate::doubles::{Ca, ConnectProxy, Mode, https_server, roots};

const CHAT: &str = "/v1/chat/completions";

fn chat(text: &str, stream: bool) -> String {
    json!({"model": "demo-model", "stream": stream, "messages": [{"role": "user", "content": text}]}).to_string()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---- the gateway through the proxy -------------------------------------------------------

/// The local gateway over HTTPS with a certificate from `ca`.
async fn gateway(ca: &Ca) -> TestGateway {
    TestGateway::start(GatewayConfig::new().tls(ca.gateway_tls())).await.unwrap()
}

fn content(answer: &[u8]) -> String {
    let v: Value = serde_json::from_slice(answer).unwrap();
    v["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_client_through_a_connect_proxy_attests_chats_streams_and_verifies_receipts_and_the_proxy_sees_only_connect()
{
    let ca = Ca::new("gateway CA");
    let gw = gateway(&ca).await;
    let proxy = ConnectProxy::start(Mode::Splice).await;
    // WebPKI to the gateway's CA, then the pin (not pin-only: the CA-signed path end to end).
    let client = gw
        .client_builder()
        .root_store(roots(&[&ca]))
        .https_proxy(proxy.url())
        .api_key("sk-egress")
        .build()
        .await
        .unwrap();
    assert_eq!(client.keyset().unwrap().digest(), gw.keyset_digest());

    // A buffered chat.
    let answer = client.post(CHAT, chat("tunnelled walrus", false)).await.unwrap();
    assert_eq!(content(&answer.body), "You said: tunnelled walrus");

    // A stream, read to its end, whose receipt is fetched and verified in the background.
    let req = Request::post(client.url(CHAT).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat("tunnelled heron", true))))
        .unwrap();
    let res = client.service().oneshot(req).await.unwrap();
    let check = res.extensions().get::<ReceiptCheck>().cloned().expect("a background receipt check");
    let record = res.extensions().get::<ExchangeRecord>().cloned().unwrap();
    let sse = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(sse.contains("[DONE]"), "{sse}");
    let streamed: String = sse
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.strip_prefix("data: ")?).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(streamed, "You said: tunnelled heron");
    let verified = tokio::time::timeout(Duration::from_secs(10), check.verified()).await.unwrap().unwrap();
    assert_eq!(verified.receipt().workload_keyset_digest(), gw.keyset_digest());
    // And a receipt fetched on demand.
    let fetches = gw.receipt_fetches();
    client.verify_receipt(&record).await.unwrap();
    assert!(gw.receipt_fetches() > fetches);

    // Every connection went through the proxy, which saw one CONNECT per tunnel to the
    // gateway's host:port and nothing else in clear.
    let target = format!("127.0.0.1:{}", gw.addr().port());
    let heads = proxy.heads();
    assert!(heads.len() >= 2, "the report's connection and a pinned one: {heads:?}");
    for head in &heads {
        assert_eq!(head, &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"));
    }
    assert_eq!(gw.connections_accepted(), heads.len(), "a connection that did not go through the proxy");
    let spliced = proxy.spliced();
    assert!(spliced.len() > 1000, "TLS was spliced: {} bytes", spliced.len());
    for clear in [&b"tunnelled"[..], b"walrus", b"heron", b"HTTP/", b"/v1/", b"sk-egress", b"You said"] {
        assert!(!contains(&spliced, clear), "{:?} crossed the proxy in clear", String::from_utf8_lossy(clear));
    }
}

#[tokio::test]
async fn a_proxy_that_terminates_tls_is_refused_by_the_pin_even_with_a_trusted_ca() {
    let gateway_ca = Ca::new("gateway CA");
    let appliance_ca = Ca::new("inspection appliance CA");
    let appliance = appliance_ca.server_config(&["127.0.0.1"]);
    let gw = gateway(&gateway_ca).await;
    let trusting = || {
        // Both CAs are trusted: WebPKI passes for the appliance too, only the pin tells them apart.
        gw.client_builder().root_store(roots(&[&gateway_ca, &appliance_ca]))
    };

    // Intercepted from the first connection: the report comes over the appliance's TLS key,
    // which the attested keyset does not list.
    let proxy = ConnectProxy::start(Mode::Intercept(appliance.clone())).await;
    let e = trusting().https_proxy(proxy.url()).build().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding), "{e}");
    assert!(gw.attestations_served() >= 1, "the appliance relayed the report request (the attack was real)");
    assert!(contains(&proxy.decrypted(), b"GET /v1/aci/attestation?nonce="), "the appliance read the report request");
    assert_eq!(gw.requests_seen(), 0);

    // Intercepted after an honest attestation: the handshake with the appliance is refused
    // before any request byte, and the prompt never reaches it.
    let proxy = ConnectProxy::start(Mode::Splice).await;
    let client = trusting().https_proxy(proxy.url()).build().await.unwrap();
    proxy.set_mode(Mode::Intercept(appliance));
    let tunnels = proxy.heads().len();
    let e = client.post(CHAT, chat("inspected ocelot", false)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding), "{e}");
    assert!(proxy.heads().len() > tunnels, "the chat's connection went to the appliance");
    tokio::time::sleep(Duration::from_millis(300)).await; // a refresh the refusal woke may pass through it
    assert!(!contains(&proxy.decrypted(), b"ocelot"), "the appliance read the prompt");
    assert!(!contains(&proxy.decrypted(), b"/v1/chat/completions"), "the appliance saw the chat request");
    assert_eq!(gw.requests_seen(), 0);
}

#[tokio::test]
async fn a_proxy_that_refuses_connect_gives_an_error_naming_its_status() {
    let ca = Ca::new("gateway CA");
    let gw = gateway(&ca).await;
    for (status, says) in [
        ("HTTP/1.1 403 Forbidden", "403 Forbidden"),
        ("HTTP/1.1 407 Proxy Authentication Required", "407 Proxy Authentication Required"),
        ("HTTP/1.1 502 Bad Gateway", "502 Bad Gateway"),
    ] {
        let proxy = ConnectProxy::start(Mode::Refuse(status)).await;
        let e = gw.client_builder().https_proxy(proxy.url()).build().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
        let text = e.to_string();
        for part in [says, &proxy.url(), &format!("127.0.0.1:{}", gw.addr().port())] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
    }
    assert_eq!(gw.connections_accepted(), 0, "nothing reached the gateway");

    // A proxy URL that is not one fails at build, without repeating its password.
    let e = gw.client_builder().https_proxy("socks5://u:hunter2@p:1").build().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

/// A `tracing` writer into a buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn proxy_credentials_go_in_proxy_authorization_and_are_never_logged() {
    let ca = Ca::new("gateway CA");
    let gw = gateway(&ca).await;
    // alice:s3cr@t-Q7 (RFC 7617 Basic), percent-encoded in the URL.
    let expected = "Basic YWxpY2U6czNjckB0LVE3";
    let proxy = ConnectProxy::start(Mode::RequireAuth(expected.to_owned())).await;
    let with = |credentials: &str| format!("http://{credentials}@{}", proxy.addr);

    // The log at trace level (this current-thread runtime's tasks all log on this thread).
    let log = Captured::default();
    let sink = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let e = gw.client_builder().https_proxy(proxy.url()).build().await.unwrap_err();
    assert!(e.to_string().contains("407") && e.to_string().contains("user:password@"), "{e}");
    let e = gw.client_builder().https_proxy(with("alice:wrong")).build().await.unwrap_err();
    assert!(e.to_string().contains("did not accept the credentials"), "{e}");

    let builder = gw.client_builder().https_proxy(with("alice:s3cr%40t-Q7")).api_key("sk-auth");
    assert!(!format!("{builder:?}").contains("s3cr"));
    let client = builder.build().await.unwrap();
    assert_eq!(
        content(&client.post(CHAT, chat("authorised yak", false)).await.unwrap().body),
        "You said: authorised yak"
    );
    let heads = proxy.heads();
    assert!(heads.iter().any(|h| h.contains(&format!("Proxy-Authorization: {expected}\r\n"))), "{heads:?}");
    assert!(!format!("{client:?}").contains("s3cr"));

    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("CONNECT tunnel open"), "the capture works and traces the tunnel: {log}");
    for secret in ["s3cr", "YWxpY2U6czNjckB0LVE3", "Q7"] {
        assert!(!log.contains(secret), "{secret:?} is in the log");
    }
}

/// reqwest 0.12 gives a tunnelled connection no `TlsInfo` (seanmonstar/reqwest#2589, open), so
/// an answer it carries cannot be bound to the attested channel: the reqwest clients the crate
/// builds go through the same proxy as its own connector (never around it) and fail closed with
/// `ChannelBinding`. When reqwest carries `TlsInfo` through tunnels, this test must be turned
/// round.
#[cfg(feature = "reqwest-middleware")]
#[tokio::test]
async fn the_reqwest_clients_the_crate_builds_take_the_same_proxy_and_fail_closed_without_tls_info() {
    use tower_aci::attest::{KeyHandle, KeyProvider, Policy};
    use tower_aci::middleware::ReqwestService;
    use tower_aci::tls::AttestedTls;

    let ca = Ca::new("gateway CA");
    let gw = gateway(&ca).await;
    let proxy = ConnectProxy::start(Mode::RequireAuth("Basic cnE6cnEtcGFzcw==".to_owned())).await; // rq:rq-pass
    let url = format!("http://rq:rq-pass@{}", proxy.addr);
    let target = format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n", gw.addr().port());
    let binding = ErrorKind::Attestation(AttestationFailure::ChannelBinding);

    // Client::reqwest(): the pinned rustls configuration, through the client's proxy.
    let client =
        gw.client_builder().root_store(roots(&[&ca])).https_proxy(&url).api_key("sk-rq").build().await.unwrap();
    let tunnels = proxy.heads().len();
    let rq = client.reqwest().unwrap();
    let e = rq.post(client.url(CHAT).unwrap().to_string()).body(chat("reqwest raven", false)).send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(e) = e else { panic!("not refused by the E2EE middleware: {e:?}") };
    assert_eq!(e.downcast_ref::<tower_aci::Error>().map(|e| e.kind()), Some(binding), "{e:?}");
    assert!(proxy.heads().len() > tunnels, "reqwest went around the proxy");

    // ReqwestService::pinned: the report fetch goes through the proxy of the AttestedTls.
    let keys = KeyHandle::new();
    let tls = AttestedTls::builder(keys.clone()).root_store(roots(&[&ca])).https_proxy(&url).build().unwrap();
    let tunnels = proxy.heads().len();
    let provider = KeyProvider::builder(ReqwestService::pinned(&tls).unwrap())
        .handle(keys)
        .base_url(gw.base_url().parse().unwrap())
        .policy(Policy::builder().dangerous().accept_stub_quote().any_workload().build().unwrap())
        .build()
        .unwrap();
    assert_eq!(provider.establish().await.unwrap_err().kind(), binding);
    assert!(proxy.heads().len() > tunnels, "the report went around the proxy");

    let heads = proxy.heads();
    assert!(heads.iter().all(|h| h.starts_with(&target)), "{heads:?}");
    assert_eq!(gw.connections_accepted(), heads.len(), "a connection that did not go through the proxy");
    assert!(!contains(&proxy.spliced(), b"raven"));
}

// ---- the PCCS through the tunnel, and its extra root -------------------------------------

type Pinned = hyper_util::client::legacy::Client<
    tower_aci::tls::AttestedConnector<hyper_util::client::legacy::connect::HttpConnector>,
    tower_aci::e2ee::RequestBody<Full<Bytes>>,
>;

fn hyper_client(tls: &tower_aci::tls::AttestedTls) -> Pinned {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(tls.connector())
}

#[cfg(feature = "dcap")]
#[tokio::test]
async fn the_pccs_fetch_goes_through_the_tunnel_and_its_extra_root_applies_to_it_alone() {
    use tower_aci::attest::KeyHandle;
    use tower_aci::attest::dcap::fetch_collateral;
    use tower_aci::tls::AttestedTls;

    use crate::doubles::{FakePccs, quote};

    // The PCCS, reached by name through the proxy only (pccs.test resolves nowhere else), behind
    // an appliance that re-signs with its own CA.
    let appliance_ca = Ca::new("inspection appliance CA");
    let pccs = FakePccs::new();
    let stand_in = pccs.clone();
    let pccs_addr = https_server(appliance_ca.server_config(&["pccs.test"]), move |uri| stand_in.answer(uri)).await;
    let routes = HashMap::from([("pccs.test:443".to_owned(), pccs_addr)]);
    let proxy = ConnectProxy::with_routes(Mode::Splice, routes).await;
    let unrelated = Ca::new("some public CA");
    let tls = |extra: bool| {
        let b = AttestedTls::builder(KeyHandle::new())
            .root_store(roots(&[&unrelated]))
            .unpinned_host("pccs.test")
            .https_proxy(proxy.url());
        if extra { b.unpinned_extra_root(appliance_ca.der()) } else { b }.build().unwrap()
    };
    let url: http::Uri = "https://pccs.test".parse().unwrap();

    // Without the extra root the appliance's certificate is refused, and nothing is asked.
    let e = fetch_collateral(hyper_client(&tls(false)), &url, &quote()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(pccs.seen().is_empty(), "{:?}", pccs.seen());

    // With it, the collateral is fetched, through the tunnel.
    let collateral = fetch_collateral(hyper_client(&tls(true)), &url, &quote()).await.unwrap();
    assert_eq!(collateral.fmspc(), Some("B0C06F000000"));
    assert_eq!(pccs.seen().len(), 4, "{:?}", pccs.seen());
    let heads = proxy.heads();
    assert!(
        !heads.is_empty() && heads.iter().all(|h| h.starts_with("CONNECT pccs.test:443 HTTP/1.1\r\n")),
        "{heads:?}"
    );
    assert!(!contains(&proxy.spliced(), b"/certification/v4"), "the PCCS requests crossed the proxy in clear");
}

#[tokio::test]
async fn the_extra_pccs_root_never_applies_to_the_gateway() {
    use tower_aci::attest::{KeyHandle, KeyProvider, Policy};
    use tower_aci::tls::AttestedTls;

    // A gateway whose certificate chains to the appliance CA, and whose keyset lists that very
    // certificate: only WebPKI can refuse it, and only the root store counts for the gateway.
    let appliance_ca = Ca::new("inspection appliance CA");
    let gw = gateway(&appliance_ca).await;
    let unrelated = Ca::new("some public CA");
    let keys = KeyHandle::new();
    let tls = |extra_as_root: bool| {
        let b = AttestedTls::builder(keys.clone()).unpinned_host("pccs.test").no_proxy();
        let b = if extra_as_root {
            b.root_store(roots(&[&unrelated, &appliance_ca]))
        } else {
            b.root_store(roots(&[&unrelated])).unpinned_extra_root(appliance_ca.der())
        };
        b.build().unwrap()
    };
    let establish = |tls: AttestedTls| {
        let provider = KeyProvider::builder(hyper_client(&tls))
            .handle(keys.clone())
            .base_url(gw.base_url().parse().unwrap())
            .policy(Policy::builder().dangerous().accept_stub_quote().any_workload().build().unwrap())
            .build()
            .unwrap();
        async move { provider.establish().await }
    };
    let e = establish(tls(false)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(e.to_string().contains("fetching the attestation report failed"), "{e}");
    assert_eq!(gw.attestations_served(), 0);
    // The same CA in the root store: the gateway is accepted (so the refusal above was the root's).
    establish(tls(true)).await.unwrap();
    assert_eq!(gw.attestations_served(), 1);

    // Client: an extra PCCS root without a PCCS is a configuration error.
    #[cfg(feature = "dcap")]
    {
        let e = gw.client_builder().pccs_extra_root(appliance_ca.der()).build().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert!(e.to_string().contains("pccs_extra_root"), "{e}");
    }
}
