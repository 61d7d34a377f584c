//! `tower_aci::Client`, the convenience client, against the local gateway over loopback: plain
//! HTTP and pinned HTTPS.
#![cfg(feature = "rustls")]

use std::time::Duration;

use aci_test_gateway::{Fault, GatewayConfig, GatewayTls, TestGateway};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_aci::client::{ReceiptCheck, ReceiptMode};
use tower_aci::protocol::Suite;
use tower_aci::receipt::{ExchangeRecord, KeysetMatch, VerifiedReceipt};
use tower_aci::{AttestationFailure, Client, ErrorKind};

use crate::support::stub_policy;

const CHAT: &str = "/v1/chat/completions";

fn chat(text: &str) -> String {
    json!({"model": "demo-model", "messages": [{"role": "user", "content": text}]}).to_string()
}

fn content(answer: &[u8]) -> String {
    let v: Value = serde_json::from_slice(answer).unwrap();
    v["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
}

/// A self-signed certificate for 127.0.0.1: only the attested keyset vouches for it.
fn self_signed() -> GatewayTls {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key_pair.serialize_der()));
    GatewayTls::new(vec![c.cert.der().clone()], key).unwrap()
}

#[tokio::test]
async fn the_client_decrypts_an_answer_and_verifies_its_receipt_in_the_background() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let client = gw.client_builder().api_key("sk-client").build().await.unwrap();
    assert_eq!(client.receipt_mode(), ReceiptMode::Background);
    assert_eq!(client.keyset().unwrap().digest(), gw.keyset_digest());

    // The one-call path: the decrypted answer; the wire carried ciphertext only.
    let answer = client.post(CHAT, chat("quiet lynx")).await.unwrap();
    assert_eq!(content(&answer.body), "You said: quiet lynx");
    assert!(!gw.wire_log().iter().any(|w| w.windows(10).any(|x| x == b"quiet lynx")), "plaintext on the wire");

    // The tower path: the receipt is checked once the body was read to its end, with the API
    // key (the gateway binds receipts to the bearer token).
    let req = Request::post(client.url(CHAT).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat("amber owl"))))
        .unwrap();
    let res = client.service().oneshot(req).await.unwrap();
    let check = res.extensions().get::<ReceiptCheck>().cloned().expect("a background receipt check");
    let record = res.extensions().get::<ExchangeRecord>().cloned().unwrap();
    assert!(check.result().is_none(), "nothing checked before the body was read");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(content(&body), "You said: amber owl");
    let verified = tokio::time::timeout(Duration::from_secs(10), check.verified()).await.unwrap().unwrap();
    assert_eq!(Some(verified.receipt().receipt_id()), record.receipt_id());
    assert_eq!(verified.keyset_match(), KeysetMatch::Exact);
    assert_eq!(verified.receipt().workload_keyset_digest(), gw.keyset_digest());
    // And on demand.
    assert!(client.verify_receipt(&record).await.is_ok());
}

#[tokio::test]
async fn a_stream_read_to_its_end_gets_its_receipt_checked_and_a_dropped_one_does_not() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let client = gw.client_builder().api_key("sk-client").build().await.unwrap();
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "slow river"}]});
    let request = || {
        Request::post(client.url(CHAT).unwrap())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let res = client.service().oneshot(request()).await.unwrap();
    let check = res.extensions().get::<ReceiptCheck>().cloned().unwrap();
    let text = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    let verified = tokio::time::timeout(Duration::from_secs(10), check.verified()).await.unwrap();
    assert!(verified.is_ok(), "{verified:?}");

    let res = client.service().oneshot(request()).await.unwrap();
    let check = res.extensions().get::<ReceiptCheck>().cloned().unwrap();
    drop(res);
    let e = check.verified().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Receipt(tower_aci::ReceiptFailure::NotAvailable), "{e}");
}

#[tokio::test]
async fn before_release_mode_hands_out_only_verified_answers() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let client = gw.client_builder().receipts(ReceiptMode::BeforeRelease).api_key("sk-x").build().await.unwrap();
    let req = Request::post(client.url(CHAT).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat("held heron"))))
        .unwrap();
    let fetches = gw.receipt_fetches();
    let res = client.service().oneshot(req).await.unwrap();
    assert!(gw.receipt_fetches() > fetches, "the receipt was fetched before the answer was handed out");
    assert!(res.extensions().get::<VerifiedReceipt>().is_some());
    assert!(res.extensions().get::<ReceiptCheck>().is_none());
    assert_eq!(content(&res.into_body().collect().await.unwrap().to_bytes()), "You said: held heron");
    assert_eq!(content(&client.post(CHAT, chat("second")).await.unwrap().body), "You said: second");
}

#[tokio::test]
async fn a_non_2xx_answer_is_a_typed_gateway_error() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let client = gw.client_builder().build().await.unwrap();
    gw.set_fault(Some(Fault::UpstreamStatus(
        429,
        r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#.into(),
    )));
    let e = client.post(CHAT, chat("x")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Gateway, "{e}");
    assert_eq!(e.gateway_error_type(), Some("rate_limit_error"));
    assert!(e.to_string().contains("slow down"), "{e}");
    // Not an error document: a transport error naming the status.
    gw.set_fault(Some(Fault::UpstreamStatus(502, "bad gateway".into())));
    let e = client.post(CHAT, chat("x")).await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Gateway | ErrorKind::Transport), "{e}");
    assert!(e.to_string().contains("500") || e.to_string().contains("502"), "{e}");
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_key_until_it_expires_and_then_says_why() {
    let not_after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 2;
    let gw = TestGateway::start(GatewayConfig::new().not_after(not_after)).await.unwrap();
    let client = gw.client_builder().build().await.unwrap();
    assert!(client.refresh_error().is_none());

    gw.set_fault(Some(Fault::AttestationStatus(503)));
    let e = client.refresh().await.unwrap_err();
    let why = client.refresh_error().expect("the failed refresh is reported");
    assert_eq!(why, e.to_string());
    // The attested key keeps serving until its not_after…
    assert_eq!(content(&client.post(CHAT, chat("still here")).await.unwrap().body), "You said: still here");
    // …and never after it: a typed error naming what to look at.
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let before = gw.requests_seen();
    let e = client.post(CHAT, chat("too late")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyUnavailable, "{e}");
    assert_eq!(gw.requests_seen(), before, "nothing was sent without a valid key");

    // Once the gateway answers again, a refresh restores service.
    gw.set_fault(None);
    gw.renew_keyset(not_after + 3_600);
    client.refresh().await.unwrap();
    assert!(client.refresh_error().is_none());
    assert_eq!(content(&client.post(CHAT, chat("back")).await.unwrap().body), "You said: back");
}

#[tokio::test]
async fn the_refresher_lives_as_long_as_the_client_or_a_service_it_handed_out() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let client = gw.client_builder().build().await.unwrap();
    let keys = client.keys().clone();
    let service = client.service();
    let clone = client.clone();
    for _ in 0..200 {
        if keys.has_refresher() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(keys.has_refresher(), "the refresher runs");
    drop(client);
    drop(clone);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(keys.has_refresher(), "a service still uses the keys");
    drop(service);
    for _ in 0..200 {
        if !keys.has_refresher() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the refresher outlived the client and its services");
}

#[tokio::test]
async fn the_builder_refuses_unpinned_unprotected_or_ambiguous_set_ups() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    // Plain HTTP beyond loopback: the prompt would travel next to its key in clear.
    let e = Client::builder("http://gateway.example").policy(stub_policy(Suite::X25519)).build().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("loopback"), "{e}");
    // No pin, no policy.
    let e = Client::builder(gw.base_url()).build().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    // A pin without an anchor (no KMS root, no boot measurements) is no pin: refused, naming both.
    let e = Client::builder(gw.base_url()).allow_app_id("fdb7a14e5a6675f752e2cb69c9067a98ca402918").build().await;
    let e = e.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("accept_kms_root") && e.to_string().contains("allow_boot_measurements"), "{e}");
    // A malformed boot-measurement anchor is refused before anything is fetched.
    let e = Client::builder(gw.base_url())
        .allow_app_id("fdb7a14e5a6675f752e2cb69c9067a98ca402918")
        .allow_boot_measurements("00", "11", "22", "33")
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    // Pins and a policy.
    let e = Client::builder(gw.base_url())
        .allow_app_id("fdb7a14e5a6675f752e2cb69c9067a98ca402918")
        .policy(stub_policy(Suite::X25519))
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    // An API key variable that is not set.
    let e = gw.client_builder().api_key_env("TOWER_ACI_TEST_UNSET_KEY").build().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("TOWER_ACI_TEST_UNSET_KEY"), "{e}");
    assert_eq!(gw.attestations_served(), 0, "nothing was attested for a refused set-up");
}

#[tokio::test]
async fn over_https_the_client_pins_the_attested_tls_key() {
    let gw = TestGateway::start(GatewayConfig::new().tls(self_signed())).await.unwrap();
    assert!(gw.base_url().starts_with("https://"));
    let client = gw.client_builder().api_key("sk-tls").build().await.unwrap();
    assert_eq!(content(&client.post(CHAT, chat("pinned puma")).await.unwrap().body), "You said: pinned puma");

    // A gateway whose keyset does not list the key it serves fails at build, before any prompt.
    let impostor = TestGateway::start(GatewayConfig::new().tls(self_signed().advertise_spki([7; 32]))).await.unwrap();
    let e = impostor.client_builder().build().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding), "{e}");
    assert_eq!(impostor.requests_seen(), 0);
}

/// Whether a `ChannelBinding` refusal is in the error's chain, at any depth.
#[cfg(feature = "reqwest-middleware")]
fn channel_binding(e: &(dyn std::error::Error + 'static)) -> Option<()> {
    let mut cur = e;
    loop {
        let ours = tower_aci::Error::find(cur)?;
        if ours.kind() == ErrorKind::Attestation(AttestationFailure::ChannelBinding) {
            return Some(());
        }
        cur = std::error::Error::source(ours)?;
    }
}

#[cfg(feature = "reqwest-middleware")]
#[tokio::test]
async fn reqwest_from_the_client_uses_the_pinned_configuration_and_the_same_keys() {
    let gw = TestGateway::start(GatewayConfig::new().tls(self_signed())).await.unwrap();
    let client = gw.client_builder().api_key("sk-rq").build().await.unwrap();
    let rq = client.reqwest().unwrap();
    let res = rq.post(client.url(CHAT).unwrap().to_string()).body(chat("reqwest rabbit")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let record = res.extensions().get::<ExchangeRecord>().cloned().unwrap();
    assert_eq!(content(&res.bytes().await.unwrap()), "You said: reqwest rabbit");
    // The API key went along (the receipt is bound to it) and the receipt verifies.
    let verified = client.verify_receipt(&record).await.unwrap();
    assert_eq!(verified.receipt().workload_keyset_digest(), gw.keyset_digest());

    // The same reqwest client refuses a server whose key is not attested.
    let other = TestGateway::start(GatewayConfig::new().tls(self_signed())).await.unwrap();
    let e = rq.post(format!("{}{CHAT}", other.base_url())).body(chat("secret")).send().await.unwrap_err();
    let reqwest_middleware::Error::Reqwest(e) = e else { panic!("not a transport refusal: {e:?}") };
    assert_eq!(channel_binding(&e), Some(()), "{e:?}");
    assert_eq!(other.requests_total(), 0);
}

/// `ReceiptMode::HoldUntilVerified`: no byte of a stream reaches the caller before its receipt
/// verified; when it does not verify, the body's first frame is the error.
#[tokio::test]
async fn hold_until_verified_mode_releases_no_byte_of_a_stream_before_its_receipt() {
    use http_body::Body as _;
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let stream = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "patient crane"}]});
    let request = |client: &Client| {
        Request::post(client.url(CHAT).unwrap())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(stream.to_string())))
            .unwrap()
    };
    let client = gw.client_builder().receipts(ReceiptMode::HoldUntilVerified).api_key("sk-x").build().await.unwrap();
    assert_eq!(client.receipt_mode(), ReceiptMode::HoldUntilVerified);
    let fetches = gw.receipt_fetches();
    let res = client.service().oneshot(request(&client)).await.unwrap();
    let mut body = res.into_body();
    let first = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await.unwrap().unwrap();
    assert!(gw.receipt_fetches() > fetches, "the receipt was fetched and verified before the first byte");
    let mut text = String::from_utf8(first.into_data().unwrap().to_vec()).unwrap();
    text.push_str(std::str::from_utf8(&body.collect().await.unwrap().to_bytes()).unwrap());
    assert_eq!(crate::support::sse_text(text.as_bytes(), "content"), "You said: patient crane");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");

    // A receipt that fails the receipt policy: it pins an upstream session, and the local
    // gateway's receipts cite none.
    let strict = gw
        .client_builder()
        .receipts(ReceiptMode::HoldUntilVerified)
        .receipt_policy(tower_aci::receipt::ReceiptPolicy::new().accept_sessions(["00".repeat(32)]))
        .api_key("sk-x")
        .build()
        .await
        .unwrap();
    let res = strict.service().oneshot(request(&strict)).await.unwrap();
    let mut body = res.into_body();
    let first = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await.unwrap();
    let err = first.expect_err("the first frame is the error, not content");
    let kind = tower_aci::Error::find(err.as_ref()).map(tower_aci::Error::kind);
    assert_eq!(kind, Some(ErrorKind::Receipt(tower_aci::ReceiptFailure::Session)), "{err}");
}

/// `post` hands out the answer with its receipt's verdict: awaitable in the background mode,
/// verified already before release, and explicitly off.
#[tokio::test]
async fn post_returns_the_answer_with_its_receipt_verdict_in_every_mode() {
    use tower_aci::client::ReceiptVerdict;
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    for mode in [ReceiptMode::Background, ReceiptMode::BeforeRelease, ReceiptMode::HoldUntilVerified, ReceiptMode::Off]
    {
        let client = gw.client_builder().receipts(mode).api_key("sk-verdict").build().await.unwrap();
        for stream in [false, true] {
            let body = json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "vole"}]});
            let answer = client.post(CHAT, body.to_string()).await.unwrap();
            let text = String::from_utf8(answer.body.to_vec()).unwrap();
            assert!(text.contains("You said") || text.contains("vole"), "{mode:?} {stream}: {text}");
            assert_eq!(answer.record.streamed(), stream);
            match (&answer.receipt, mode) {
                (ReceiptVerdict::Background(_), ReceiptMode::Background) => {
                    let verified = tokio::time::timeout(Duration::from_secs(10), answer.receipt.verified()).await;
                    let verified = verified.unwrap().unwrap();
                    assert_eq!(Some(verified.receipt().receipt_id()), answer.record.receipt_id());
                }
                (ReceiptVerdict::Verified(v), ReceiptMode::BeforeRelease | ReceiptMode::HoldUntilVerified) => {
                    assert_eq!(Some(v.receipt().receipt_id()), answer.record.receipt_id());
                    assert!(answer.receipt.verified().await.is_ok());
                }
                (ReceiptVerdict::Off, ReceiptMode::Off) => {
                    let e = answer.receipt.verified().await.unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::Receipt(tower_aci::ReceiptFailure::NotAvailable));
                    assert!(e.to_string().contains("receipts are off"), "{e}");
                    // The record verifies it on demand.
                    client.verify_receipt(&answer.record).await.unwrap();
                }
                (verdict, mode) => panic!("{mode:?}: {verdict:?}"),
            }
        }
        if mode == ReceiptMode::Background {
            client.receipts_settled().await;
            let stats = client.receipt_stats();
            assert_eq!((stats.verified, stats.failed, stats.pending), (2, 0, 0), "{stats:?}");
        }
    }
}

/// In the background mode a receipt that fails reaches the caller through the API, with no log
/// subscriber: the verdict it awaits, and the client's counter and last error.
#[tokio::test]
async fn a_background_receipt_failure_reaches_the_caller_without_a_log() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    // The receipt policy pins an upstream session; the local gateway's receipts cite none.
    let client = gw
        .client_builder()
        .receipt_policy(tower_aci::receipt::ReceiptPolicy::new().accept_sessions(["00".repeat(32)]))
        .api_key("sk-x")
        .build()
        .await
        .unwrap();
    assert_eq!(client.receipt_stats(), tower_aci::client::ReceiptStats::default());
    let answer = client.post(CHAT, chat("doubtful dormouse")).await.unwrap();
    assert_eq!(content(&answer.body), "You said: doubtful dormouse", "the answer itself is released");
    let e = tokio::time::timeout(Duration::from_secs(10), answer.receipt.verified()).await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Receipt(tower_aci::ReceiptFailure::Session), "{e}");
    client.receipts_settled().await;
    let stats = client.receipt_stats();
    assert_eq!((stats.verified, stats.failed, stats.pending), (0, 1, 0), "{stats:?}");
    assert_eq!(client.last_receipt_error(), Some(e.to_string()));
    // A service clone counts into the same client.
    let req = Request::post(client.url(CHAT).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat("second dormouse"))))
        .unwrap();
    let res = client.service().oneshot(req).await.unwrap();
    let check = res.extensions().get::<ReceiptCheck>().cloned().unwrap();
    res.into_body().collect().await.unwrap();
    assert!(check.verified().await.is_err());
    client.receipts_settled().await;
    assert_eq!(client.receipt_stats().failed, 2);
}
