//! One stack (issue 25): `aci-proxy` is a `Client` behind the OpenAI API, so the two agree when
//! driven from the same settings (the client's own defaults and refusals are tested in
//! tower-aci's `tests/all/stack.rs`). A real TDX quote goes through the proxy to the default
//! PCCS (a local stand-in, reached through a `CONNECT` proxy that routes `pccs.phala.network` to
//! it), and fails only at its binding. The proxy's hold mode releases no byte before the receipt.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aci_proxy::{Proxy, ProxyConfig};
use aci_test_gateway::{GatewayConfig, GatewayTls, TestGateway};
use bytes::Bytes;
use http_body_util::Full;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use sha2::Digest;
use tower_aci::attest::{ManualClock, Policy, PolicyBuilder};
use tower_aci::client::{DEFAULT_PCCS, ReceiptMode};
use tower_aci::protocol::Suite;
use tower_aci::{AttestationFailure, Client, ErrorKind};

use crate::attest_support::{REAL_BOOT, REAL_COMPOSE_HASH, REAL_KMS_IDENTITY, bytes};
use crate::doubles::{Ca, ConnectProxy, FakePccs, Mode, NOW, https_server, report_with_sample_quote};
use crate::support::stub_policy;

const CHAT: &str = "/v1/chat/completions";
/// A variable no test sets: no API key.
const NO_KEY: &str = "TOWER_ACI_TEST_NO_SUCH_VARIABLE";

/// A self-signed certificate for 127.0.0.1: only the attested keyset vouches for it.
fn self_signed() -> GatewayTls {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key_pair.serialize_der()));
    GatewayTls::new(vec![c.cert.der().clone()], key).unwrap()
}

/// The proxy's settings for the local gateway at `gateway` (stub quote accepted).
fn proxy_config(gateway: &str) -> ProxyConfig {
    ProxyConfig::default()
        .gateway(gateway.to_owned())
        .with_policy(stub_policy(Suite::Secp256k1))
        .tls_pin_only(true)
        .api_key_env(NO_KEY.to_owned())
}

/// The client's builder for the same settings.
fn client_builder(gateway: &str) -> tower_aci::client::ClientBuilder {
    Client::builder(gateway).policy(stub_policy(Suite::Secp256k1)).tls_pin_only()
}

/// A compose-hash pin the local gateway's stub quote can satisfy (it measures only the
/// published `app_compose`): for comparing how pins are applied, never for production.
fn compose_pin(p: PolicyBuilder, hash: &str) -> PolicyBuilder {
    p.allow_compose_hash(hash).dangerous().accept_stub_quote().unanchored_pin().end_dangerous()
}

#[tokio::test]
async fn the_client_and_the_proxy_agree_from_the_same_settings() {
    // The PCCS default: the same PCCS for an https:// gateway, none for plain HTTP to loopback.
    let tls_gw = TestGateway::start(GatewayConfig::new().tls(self_signed())).await.unwrap();
    let plain_gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    for (gw, expected) in [(&tls_gw, Some(DEFAULT_PCCS)), (&plain_gw, None)] {
        let client = client_builder(&gw.base_url()).build().await.unwrap();
        let proxy = Proxy::start(proxy_config(&gw.base_url())).await.unwrap();
        let shown = |c: &Client| c.pccs().map(|u| u.to_string().trim_end_matches('/').to_owned());
        assert_eq!(shown(&client).as_deref(), expected, "{}", gw.base_url());
        assert_eq!(shown(proxy.client()), shown(&client), "{}", gw.base_url());
        assert_eq!(proxy.status()["pccs"].as_str().map(|s| s.trim_end_matches('/')), expected);
    }

    // Plain http:// beyond loopback: a Config error in both, before any connection.
    for url in ["http://gateway.example", "http://10.0.0.1:9"] {
        let e = client_builder(url).tls_pin_only().build().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{url}: {e}");
        let p = Proxy::start(proxy_config(url)).await.unwrap_err();
        assert_eq!(p.kind(), ErrorKind::Config, "{url}: {p}");
        assert_eq!(p.to_string(), e.to_string(), "one refusal, one message");
    }

    // Receipts: each mode, as the proxy's --receipts spells it.
    for mode in [ReceiptMode::Off, ReceiptMode::Background, ReceiptMode::BeforeRelease, ReceiptMode::HoldUntilVerified]
    {
        let client = client_builder(&plain_gw.base_url()).receipts(mode).build().await.unwrap();
        let config = ProxyConfig::from_toml(&format!("receipts = \"{mode}\"")).unwrap();
        let proxy = Proxy::start(proxy_config(&plain_gw.base_url()).receipts(config.receipts)).await.unwrap();
        assert_eq!(proxy.client().receipt_mode(), client.receipt_mode());
        assert_eq!(proxy.status()["receipts"], mode.as_str());
    }

    // Pins: the same compose hash, given to each its own way, is judged the same way.
    let compose = "services:\n  gateway:\n    image: private-ai-gateway@sha256:00\n";
    let gw = TestGateway::start(GatewayConfig::new().app_compose(compose)).await.unwrap();
    let measured = const_hex::encode(sha2::Sha256::digest(compose.as_bytes()));
    let other = "11".repeat(32);
    for (hash, accepted) in [(&other, false), (&measured, true)] {
        let client = Client::builder(gw.base_url()).policy_with(|p| compose_pin(p, hash)).build().await;
        let policy = compose_pin(Policy::builder(), hash).build().unwrap();
        let proxy = Proxy::start(proxy_config(&gw.base_url()).with_policy(policy)).await;
        match (client, proxy) {
            (Ok(client), Ok(proxy)) if accepted => {
                assert_eq!(format!("{:?}", client.policy()), format!("{:?}", proxy.client().policy()));
                assert_eq!(client.keyset().unwrap().digest(), proxy.keys().current().unwrap().digest());
            }
            (Err(c), Err(p)) if !accepted => {
                assert_eq!(c.kind(), ErrorKind::Attestation(AttestationFailure::NotAllowed), "{c}");
                assert_eq!(p.kind(), c.kind(), "{p}");
                assert!(c.to_string().contains(&measured) && p.to_string().contains(&measured), "{c} / {p}");
            }
            (c, p) => panic!("they disagree on the pin {hash}: client {c:?}, proxy {p:?}"),
        }
    }
}

/// An API key that is not a valid header value (a line break from a badly written environment
/// file) fails the proxy's start, naming the problem (as it fails the client's build, tested in
/// tower-aci): the binary, as an operator runs it, reading its key from the environment.
#[test]
fn an_api_key_that_is_no_header_value_fails_the_start() {
    let bad = "sk-line\nbreak";
    let mut child = crate::proxy_binary::command(
        &["--local-test-gateway", "--listen", "127.0.0.1:0"],
        &[("ACI_API_KEY", bad), ("RUST_LOG", "warn")],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("aci-proxy started with an API key that is not a header value");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "a configuration error: {err}");
    assert!(err.contains("not a valid header value"), "{err}");
    assert!(!err.contains("line\nbreak") && !err.contains("sk-line"), "the key is not shown: {err}");
}

/// A gateway stand-in over HTTPS on loopback serving, for the nonce asked, a report whose
/// evidence is dcap-qvl's sample TDX quote; a PCCS stand-in over HTTPS for the name
/// `pccs.phala.network` (a certificate of `ca`); and a `CONNECT` proxy that every connection
/// goes through (`https_proxy`), which routes that name to the stand-in: nothing leaves the
/// machine, and the default PCCS's name is the one asked for.
struct RealQuote {
    gateway: String,
    pccs: FakePccs,
    connect: ConnectProxy,
    ca: Ca,
}

impl RealQuote {
    async fn start() -> RealQuote {
        let ca = Ca::new("PCCS stand-in CA");
        let gateway_addr = https_server(ca.server_config(&["127.0.0.1"]), |uri| {
            let nonce: [u8; 32] = uri
                .query()
                .and_then(|q| q.strip_prefix("nonce="))
                .and_then(|n| const_hex::decode(n).ok())
                .and_then(|n| n.try_into().ok())
                .unwrap_or([0; 32]);
            http::Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(bytes(&report_with_sample_quote(&nonce)))))
                .unwrap()
        })
        .await;
        let pccs = FakePccs::new();
        let stand_in = pccs.clone();
        let pccs_addr = https_server(ca.server_config(&["pccs.phala.network"]), move |uri| stand_in.answer(uri)).await;
        let routes = HashMap::from([("pccs.phala.network:443".to_owned(), pccs_addr)]);
        let connect = ConnectProxy::with_routes(Mode::Splice, routes).await;
        RealQuote { gateway: format!("https://{gateway_addr}"), pccs, connect, ca }
    }

    /// The collateral fetches the PCCS stand-in answered.
    fn collateral_fetches(&self) -> usize {
        self.pccs.seen().iter().filter(|p| p.contains("/certification/v4/")).count()
    }
}

/// Item 2: the proxy, with its default PCCS, fetches the sample quote's captured collateral
/// and verifies the quote to Intel's root at a time inside that collateral's window
/// (2025-07-01); the first failure is the binding (the quote's report-data slot does not carry
/// the report's `report_data`), never `HardwareUnverifiable`. The client, from the same
/// settings, fails the same way.
#[tokio::test]
async fn a_real_quote_through_the_proxy_is_checked_against_collateral_from_the_default_pccs() {
    let real = RealQuote::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("pccs-ca.pem");
    std::fs::write(&ca_file, real.ca.pem()).unwrap();
    let mut config = ProxyConfig::from_toml(&format!(
        r#"
        gateway = "{gateway}"
        https-proxy = "{proxy}"
        pccs-ca = "{ca}"
        tls-pin-only = true
        [pins]
        compose-hash = ["{REAL_COMPOSE_HASH}"]
        kms-identity = ["{REAL_KMS_IDENTITY}"]
        [[pins.boot-measurements]]
        mrtd = "{m}"
        rtmr0 = "{r0}"
        rtmr1 = "{r1}"
        rtmr2 = "{r2}"
        "#,
        gateway = real.gateway,
        proxy = real.connect.url(),
        ca = ca_file.display(),
        m = REAL_BOOT[0],
        r0 = REAL_BOOT[1],
        r1 = REAL_BOOT[2],
        r2 = REAL_BOOT[3],
    ))
    .unwrap();
    config.api_key_env = NO_KEY.to_owned();
    assert_eq!(config.pccs, None, "no PCCS configured: the default applies");

    let at = |builder: tower_aci::client::ClientBuilder| builder.clock(Arc::new(ManualClock::new(NOW)));
    let e = Proxy::start_with(config.clone(), at).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::Quote), "{e}");
    assert!(e.to_string().contains("report-data slot"), "{e}");
    // The collateral came from the default PCCS's name, through the tunnel.
    assert_eq!(real.collateral_fetches(), 4, "{:?}", real.pccs.seen());
    let heads = real.connect.heads();
    assert!(heads.iter().any(|h| h.starts_with("CONNECT pccs.phala.network:443 ")), "{heads:?}");

    // The client, from the same settings: the same failure, through the same PCCS.
    let e = at(config.client_builder().unwrap()).build().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::Quote), "{e}");
    assert!(e.to_string().contains("report-data slot"), "{e}");
    assert_eq!(real.collateral_fetches(), 8);

    // Outside the collateral's window (the system clock) the quote fails too, never as
    // unverifiable: the collateral was fetched and judged.
    let e = Proxy::start(config).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::Quote), "{e}");
    assert_eq!(real.collateral_fetches(), 12);
}

// ---- the proxy's hold mode ------------------------------------------------------------------

/// `--receipts hold-until-verified`: the proxy releases no byte of a stream before its receipt
/// verified.
#[tokio::test]
async fn the_proxy_holds_a_stream_until_its_receipt_verified() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let config = ProxyConfig::from_toml("receipts = \"hold-until-verified\"").unwrap();
    assert_eq!(config.receipts, ReceiptMode::HoldUntilVerified);
    let proxy = Proxy::start(proxy_config(&gw.base_url()).receipts(config.receipts)).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = proxy.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "patient heron"}]});
    let fetches = gw.receipt_fetches();
    let mut res = reqwest::Client::new()
        .post(format!("http://{addr}{CHAT}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let first = res.chunk().await.unwrap().expect("a first chunk");
    assert!(gw.receipt_fetches() > fetches, "the receipt was verified before the first byte");
    let mut text = String::from_utf8(first.to_vec()).unwrap();
    while let Some(chunk) = res.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(crate::support::sse_text(text.as_bytes(), "content"), "You said: patient heron");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let status: Value = proxy.status();
    assert_eq!(status["receipts"], "hold-until-verified");
}
