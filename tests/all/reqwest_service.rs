//! `middleware::ReqwestService`: the key provider and the receipt client over reqwest alone,
//! pinned with the attested TLS configuration, over real TLS on loopback.
#![cfg(all(feature = "reqwest-middleware", feature = "rustls"))]

use aci_test_gateway::{GatewayConfig, GatewayTls, TestGateway};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use reqwest_middleware::ClientBuilder;
use rustls::RootCertStore;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_aci::attest::{ChannelInfo, KeyHandle, KeyProvider, Policy};
use tower_aci::middleware::{E2eeMiddleware, ReqwestService};
use tower_aci::protocol::Suite;
use tower_aci::receipt::{ExchangeRecord, ReceiptClient, ReceiptPolicy};
use tower_aci::tls::AttestedTls;
use tower_aci::{AttestationFailure, Error, ErrorKind};

use crate::support::stub_policy;

/// A test CA and a leaf for `gw.test` (and 127.0.0.1).
fn ca_and_leaf() -> (RootCertStore, GatewayTls) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["gw.test".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (roots, GatewayTls::new(vec![leaf.der().clone()], der).unwrap())
}

fn policy() -> Policy {
    stub_policy(Suite::X25519)
}

fn base(gw: &TestGateway) -> String {
    format!("https://gw.test:{}", gw.addr().port())
}

/// reqwest clients pinned by `tls`, resolving `gw.test` to the gateway.
fn pinned(tls: &AttestedTls, gw: &TestGateway) -> ReqwestService {
    let addr = gw.addr();
    ReqwestService::pinned_with(tls, || reqwest::Client::builder().resolve("gw.test", addr)).unwrap()
}

fn provider(http: &ReqwestService, keys: &KeyHandle, gw: &TestGateway) -> KeyProvider<ReqwestService> {
    KeyProvider::builder(http.clone())
        .handle(keys.clone())
        .base_url(base(gw).parse().unwrap())
        .policy(policy())
        .build()
        .unwrap()
}

fn kind(e: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    let mut cur = e;
    loop {
        let ours = Error::find(cur)?;
        if ours.kind() == ErrorKind::Attestation(AttestationFailure::ChannelBinding) {
            return Some(ours.kind());
        }
        match std::error::Error::source(ours) {
            Some(next) => cur = next,
            None => return Some(ours.kind()),
        }
    }
}

#[tokio::test]
async fn reqwest_alone_attests_the_gateway_encrypts_and_verifies_the_receipt() {
    let (roots, leaf) = ca_and_leaf();
    let spki = leaf.spki_sha256();
    let gw = TestGateway::start(GatewayConfig::new().tls(leaf)).await.unwrap();
    let keys = KeyHandle::new();
    let tls = AttestedTls::builder(keys.clone()).root_store(roots).build().unwrap();
    let http = pinned(&tls, &gw);

    let keyset = provider(&http, &keys, &gw).establish().await.unwrap();
    assert!(keyset.lists_tls_key("gw.test", &spki));

    // The report's response named its channel (host and the served key).
    let report = http
        .clone()
        .oneshot(
            Request::get(format!("{}/v1/aci/attestation?nonce={}", base(&gw), "ab".repeat(32)))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let channel = report.extensions().get::<ChannelInfo>().cloned().expect("reqwest's TLS info as a ChannelInfo");
    assert_eq!((channel.host(), *channel.spki_sha256()), ("gw.test", spki));

    // E2EE through reqwest-middleware on the same (pinned) reqwest client.
    let rq = ClientBuilder::new(http.client().clone()).with(E2eeMiddleware::new(keys.clone())).build();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "reqwest only"}]});
    let res = rq
        .post(format!("{}/v1/chat/completions", base(&gw)))
        .bearer_auth("sk-rq")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let record = res.extensions().get::<ExchangeRecord>().cloned().unwrap();
    let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "You said: reqwest only");

    // The receipt client over reqwest too.
    let receipts = ReceiptClient::new(http.clone(), base(&gw).parse().unwrap());
    let verified = receipts.fetch_and_verify(&record, Some("sk-rq"), &keys, &ReceiptPolicy::new()).await.unwrap();
    assert_eq!(verified.receipt().workload_keyset_digest(), keyset.digest());
}

#[tokio::test]
async fn over_reqwest_a_report_served_over_an_unlisted_key_fails_establishment() {
    let (roots, leaf) = ca_and_leaf();
    let gw = TestGateway::start(GatewayConfig::new().tls(leaf.advertise_spki([7; 32]))).await.unwrap();
    let keys = KeyHandle::new();
    let tls = AttestedTls::builder(keys.clone()).root_store(roots).build().unwrap();
    let e = provider(&pinned(&tls, &gw), &keys, &gw).establish().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding), "{e}");
    assert!(keys.current().is_err(), "nothing published");
}

#[tokio::test]
async fn over_reqwest_nothing_but_report_requests_travel_before_the_key_is_attested() {
    let (roots, leaf) = ca_and_leaf();
    let gw = TestGateway::start(GatewayConfig::new().tls(leaf)).await.unwrap();
    let keys = KeyHandle::new();
    let tls = AttestedTls::builder(keys.clone()).root_store(roots).build().unwrap();
    let http = pinned(&tls, &gw);
    let get = |path: &str| Request::get(format!("{}{path}", base(&gw))).body(Full::new(Bytes::new())).unwrap();

    // Before establishment: a receipt fetch or a models listing is refused in the handshake.
    for path in ["/v1/models", "/v1/aci/receipts/r-1", "/v1/aci/attestation"] {
        let e = http.clone().oneshot(get(path)).await.unwrap_err();
        assert_eq!(kind(e.as_ref()), Some(ErrorKind::Attestation(AttestationFailure::ChannelBinding)), "{path}: {e:?}");
    }
    assert_eq!(gw.requests_total(), 0, "nothing reached the gateway");
    // A report request may travel (the provider binds it to the channel).
    let res = http.clone().oneshot(get(&format!("/v1/aci/attestation?nonce={}", "cd".repeat(32)))).await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_plain_reqwest_client_serves_a_loopback_gateway() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let http = ReqwestService::new(reqwest::Client::new());
    let provider =
        KeyProvider::builder(http).base_url(gw.base_url().parse().unwrap()).policy(policy()).build().unwrap();
    let keyset = provider.establish().await.unwrap();
    assert_eq!(keyset.digest(), gw.keyset_digest());
}
