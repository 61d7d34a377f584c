//! HTTPS bound to the attested keyset, over real TLS on loopback: the local gateway serves a
//! certificate (signed by a test CA, or self-signed) and publishes its SPKI in
//! `tls_public_keys`; the client pins it with `tower_aci::tls::AttestedTls`. The pinning tests
//! run twice: over HTTP/2 (the connector offers `h2`, the gateway picks it) and over HTTP/1.1
//! (`http1_only`).
#![cfg(feature = "rustls")]

use std::net::SocketAddr;
use std::sync::Arc;

use aci_test_gateway::{GatewayConfig, GatewayTls, TestGateway};
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};
use tower_aci::attest::{ChannelInfo, KeyHandle, KeyProvider, ManualClock, Policy};
use tower_aci::e2ee::RequestBody;
use tower_aci::receipt::{ExchangeRecord, ReceiptClient, ReceiptPolicy};
use tower_aci::tls::{AttestedConnector, AttestedTls, AttestedTlsBuilder, spki_sha256};
use tower_aci::{AttestationFailure, E2eeLayer, Error, ErrorKind};

/// Resolves every name to 127.0.0.1 (the port comes from the URI), so tests can use hostnames.
#[derive(Clone)]
pub(crate) struct Loopback;

impl tower::Service<Name> for Loopback {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Name) -> Self::Future {
        std::future::ready(Ok(vec![SocketAddr::from(([127, 0, 0, 1], 0))].into_iter()))
    }
}

pub(crate) type Pinned = Client<AttestedConnector<HttpConnector<Loopback>>, RequestBody<Full<Bytes>>>;

/// The protocol a test runs over once a keyset is current (before, connections are HTTP/1.1
/// and carry report requests only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    /// The connector offers `h2` and `http/1.1`; the gateway picks `h2`.
    H2,
    /// The connector offers `http/1.1` only.
    H1,
}

const PROTOCOLS: [Proto; 2] = [Proto::H2, Proto::H1];

impl Proto {
    fn builder(self, keys: &KeyHandle) -> AttestedTlsBuilder {
        let b = AttestedTls::builder(keys.clone());
        if self == Proto::H1 { b.http1_only() } else { b }
    }

    fn version(self) -> Version {
        match self {
            Proto::H2 => Version::HTTP_2,
            Proto::H1 => Version::HTTP_11,
        }
    }
}

/// A test certificate authority.
pub(crate) struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    pub(crate) fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "tower-aci test CA");
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub(crate) fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }

    /// A leaf for these names (and 127.0.0.1), with its own key.
    pub(crate) fn leaf(&self, names: &[&str]) -> GatewayTls {
        let (cert, key) = self.leaf_der(names);
        GatewayTls::new(vec![cert], key).unwrap()
    }

    /// [`leaf`](Self::leaf)'s certificate and private key, for a TLS server of a test's own.
    pub(crate) fn leaf_der(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        sans.push("127.0.0.1".into());
        let cert = rcgen::CertificateParams::new(sans).unwrap().signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.der().clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
    }
}

fn gateway_tls(cert: CertificateDer<'static>, key: &rcgen::KeyPair) -> GatewayTls {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    GatewayTls::new(vec![cert], key).unwrap()
}

fn self_signed(names: &[&str]) -> GatewayTls {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let c = rcgen::generate_simple_self_signed(names).unwrap();
    gateway_tls(c.cert.der().clone(), &c.key_pair)
}

async fn gateway(tls: GatewayTls) -> TestGateway {
    TestGateway::start(GatewayConfig::new().tls(tls)).await.unwrap()
}

fn url(host: &str, gw: &TestGateway, path: &str) -> String {
    format!("https://{host}:{}{path}", gw.addr().port())
}

pub(crate) fn client(tls: &AttestedTls) -> Pinned {
    let mut tcp = HttpConnector::new_with_resolver(Loopback);
    tcp.enforce_http(false);
    Client::builder(TokioExecutor::new()).build(tls.connector_with(tcp))
}

fn policy() -> Policy {
    Policy::builder().dangerous().accept_stub_quote().any_workload().build().unwrap()
}

fn provider(http: &Pinned, keys: &KeyHandle, base: &str) -> KeyProvider<Pinned, RequestBody<Full<Bytes>>> {
    KeyProvider::builder(http.clone())
        .handle(keys.clone())
        .base_url(base.parse().unwrap())
        .policy(policy())
        .build()
        .unwrap()
}

fn chat(url: &str, text: &str) -> Request<Full<Bytes>> {
    let body = json!({"model": "demo-model", "messages": [{"role": "user", "content": text}]});
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn get(url: &str) -> Request<RequestBody<Full<Bytes>>> {
    Request::get(url).body(RequestBody::from(Bytes::new())).unwrap()
}

/// The `ChannelBinding` error in an error's chain (at any depth), with its message.
fn channel_binding(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = e;
    loop {
        let ours = Error::find(cur)?;
        if ours.kind() == ErrorKind::Attestation(AttestationFailure::ChannelBinding) {
            return Some(ours.to_string());
        }
        cur = std::error::Error::source(ours)?;
    }
}

fn hex(b: [u8; 32]) -> String {
    const_hex::encode(b)
}

/// Every message in an error's source chain, joined (an HTTP/2 stream error carries the
/// refusal's text, not the typed error: h2 copies I/O errors into each stream as text).
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(" / ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Waits (up to 5 s) until the gateway has `n` open connections.
async fn live_connections_reach(gw: &TestGateway, n: usize) {
    for _ in 0..500 {
        if gw.live_connections() == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the gateway still has {} connections open, expected {n}", gw.live_connections());
}

#[test]
fn spki_sha256_is_the_hash_of_the_subject_public_key_info() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["gw.test".to_string()]).unwrap().self_signed(&key).unwrap();
    let expected: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(key.public_key_der()).into();
    assert_eq!(spki_sha256(cert.der()).unwrap(), expected);
    assert_eq!(
        spki_sha256(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])).unwrap_err().kind(),
        ErrorKind::Malformed
    );
}

#[tokio::test]
async fn one_pinned_client_serves_the_provider_the_layer_and_receipts() {
    for proto in PROTOCOLS {
        one_pinned_client_serves_the_provider_the_layer_and_receipts_over(proto).await;
    }
}

async fn one_pinned_client_serves_the_provider_the_layer_and_receipts_over(proto: Proto) {
    let ca = Ca::new();
    let cert = ca.leaf(&["gw.test"]);
    let spki = cert.spki_sha256();
    let gw = gateway(cert).await;
    assert!(gw.base_url().starts_with("https://127.0.0.1:"));

    let keys = KeyHandle::new();
    let tls = proto.builder(&keys).root_store(ca.roots()).build().unwrap();
    let http = client(&tls);
    let base = url("gw.test", &gw, "");
    let keyset = provider(&http, &keys, &base).establish().await.unwrap();
    assert!(keyset.lists_tls_key("gw.test", &spki), "the keyset publishes the served SPKI");

    // The E2EE layer over the same client: encrypted out, decrypted back, over the pinned channel.
    let layered = ServiceBuilder::new().layer(E2eeLayer::new(keys.clone())).service(http.clone());
    let res = layered.oneshot(chat(&url("gw.test", &gw, "/v1/chat/completions"), "pinned zebra")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), proto.version(), "{proto:?}");
    let channel = res.extensions().get::<ChannelInfo>().cloned().expect("the connector names the channel");
    assert_eq!((channel.host(), *channel.spki_sha256()), ("gw.test", spki));
    let record = res.extensions().get::<ExchangeRecord>().cloned().unwrap();
    let v: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "You said: pinned zebra");
    assert!(!gw.wire_log().last().unwrap().windows(12).any(|w| w == b"pinned zebra"), "only ciphertext on the wire");

    // The receipt client over the same client.
    let receipts = ReceiptClient::new(http.clone(), base.parse().unwrap());
    let verified = receipts.fetch_and_verify(&record, None, &keys, &ReceiptPolicy::new()).await.unwrap();
    assert_eq!(verified.receipt().workload_keyset_digest(), keyset.digest());
    assert_eq!(gw.attestations_served(), 1);
    // The report-only bootstrap connection, then one connection for everything else.
    assert_eq!(gw.connections_accepted(), 2, "{proto:?}");
    assert_eq!(gw.h2_connections(), usize::from(proto == Proto::H2));
}

#[tokio::test]
async fn a_certificate_the_keyset_does_not_list_is_refused_in_the_handshake() {
    for proto in PROTOCOLS {
        a_certificate_the_keyset_does_not_list_is_refused_in_the_handshake_over(proto).await;
    }
}

async fn a_certificate_the_keyset_does_not_list_is_refused_in_the_handshake_over(proto: Proto) {
    let ca = Ca::new();
    let real = gateway(ca.leaf(&["gw.test"])).await;
    // An impostor with a certificate every WebPKI check accepts, for the same name.
    let impostor_cert = ca.leaf(&["gw.test"]);
    let impostor_spki = impostor_cert.spki_sha256();
    let impostor = gateway(impostor_cert).await;

    let keys = KeyHandle::new();
    let tls = proto.builder(&keys).root_store(ca.roots()).build().unwrap();
    let keyset = provider(&client(&tls), &keys, &url("gw.test", &real, "")).establish().await.unwrap();

    let layered = ServiceBuilder::new().layer(E2eeLayer::new(keys.clone())).service(client(&tls));
    let e = layered.oneshot(chat(&url("gw.test", &impostor, "/v1/chat/completions"), "secret")).await.unwrap_err();
    let message = channel_binding(e.as_ref()).unwrap_or_else(|| panic!("not a channel-binding refusal: {e:?}"));
    assert!(message.contains("refused the TLS handshake with gw.test"), "{message}");
    assert!(message.contains(&hex(impostor_spki)), "names the SPKI seen: {message}");
    let attested = &keyset.tls_keys()[0].spki_sha256;
    assert!(message.contains(attested.as_str()), "names the SPKI attested: {message}");
    // Nothing reached the impostor, nor a plain GET.
    let e = client(&tls).request(get(&url("gw.test", &impostor, "/v1/models"))).await.unwrap_err();
    assert!(channel_binding(&e).is_some(), "{e:?}");
    assert_eq!(impostor.requests_total(), 0, "the impostor saw no request");
    assert_eq!(impostor.requests_seen(), 0);
}

#[tokio::test]
async fn a_domain_scoped_entry_for_another_host_is_refused() {
    for proto in PROTOCOLS {
        a_domain_scoped_entry_for_another_host_is_refused_over(proto).await;
    }
}

async fn a_domain_scoped_entry_for_another_host_is_refused_over(proto: Proto) {
    let ca = Ca::new();
    let cert = ca.leaf(&["gw-a.test", "gw-b.test"]).domains(["gw-a.test"]);
    let gw = gateway(cert).await;
    let keys = KeyHandle::new();
    let tls = proto.builder(&keys).root_store(ca.roots()).build().unwrap();
    let http = client(&tls);

    // The report is not served through a hostname the keyset does not name.
    let e = provider(&http, &keys, &url("gw-b.test", &gw, "")).establish().await.unwrap_err();
    assert_eq!(e.gateway_error_type(), Some("not_found"), "{e}");
    assert!(keys.current().is_err());

    // Attested through gw-a.test; the same certificate under gw-b.test is not listed.
    let keyset = provider(&http, &keys, &url("gw-a.test", &gw, "")).establish().await.unwrap();
    assert_eq!(keyset.tls_keys()[0].domain.as_deref(), Some("gw-a.test"));
    let before = gw.requests_total();
    let e = http.request(get(&url("gw-b.test", &gw, "/v1/models"))).await.unwrap_err();
    let message = channel_binding(&e).unwrap_or_else(|| panic!("{e:?}"));
    assert!(message.contains("gw-b.test") && message.contains("attested: none for gw-b.test"), "{message}");
    assert_eq!(gw.requests_total(), before, "no request reached the gateway");
    // gw-a.test works.
    let res = http.request(get(&url("gw-a.test", &gw, "/v1/models"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), proto.version(), "{proto:?}");
}

#[tokio::test]
async fn a_report_served_over_an_unlisted_key_fails_establishment() {
    for proto in PROTOCOLS {
        a_report_served_over_an_unlisted_key_fails_establishment_over(proto).await;
    }
}

async fn a_report_served_over_an_unlisted_key_fails_establishment_over(proto: Proto) {
    let ca = Ca::new();
    let cert = ca.leaf(&["gw.test"]).advertise_spki([7; 32]);
    let served = cert.spki_sha256();
    let gw = gateway(cert).await;
    let keys = KeyHandle::new();
    let tls = proto.builder(&keys).root_store(ca.roots()).build().unwrap();
    let http = client(&tls);

    let e = provider(&http, &keys, &url("gw.test", &gw, "")).establish().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding), "{e}");
    let message = e.to_string();
    assert!(message.contains(&hex(served)) && message.contains(&hex([7; 32])), "{message}");
    assert!(keys.current().is_err(), "nothing published");
    // Whoever holds the certificate, the keyset does not name it: no refusal is attributed.
    assert!(keys.refused_keysets().is_empty(), "{:?}", keys.refused_keysets());
    // And nothing but report requests travel before a keyset lists the key.
    let e = http.request(get(&url("gw.test", &gw, "/v1/models"))).await.unwrap_err();
    assert!(channel_binding(&e).unwrap().contains("before its TLS key"), "{e:?}");
    assert_eq!(gw.requests_total(), gw.attestations_served(), "only report requests reached the gateway");
    assert_eq!(gw.h2_connections(), 0, "no HTTP/2 before a keyset lists the key ({proto:?})");
}

#[tokio::test]
async fn before_establishment_the_bootstrap_connection_carries_only_report_requests() {
    for proto in PROTOCOLS {
        before_establishment_the_bootstrap_connection_carries_only_report_requests_over(proto).await;
    }
}

async fn before_establishment_the_bootstrap_connection_carries_only_report_requests_over(proto: Proto) {
    let ca = Ca::new();
    let gw = gateway(ca.leaf(&["gw.test"])).await;
    let keys = KeyHandle::new();
    let tls = proto.builder(&keys).root_store(ca.roots()).build().unwrap();
    let http = client(&tls);
    let receipts = ReceiptClient::new(http.clone(), url("gw.test", &gw, "").parse().unwrap());

    // A receipt fetch before the key is attested is refused before its first byte is written.
    let e = receipts.fetch("rcpt-0", None).await.unwrap_err();
    assert!(channel_binding(&e).is_some(), "{e:?}");
    assert_eq!(gw.requests_total(), 0);

    // The provider's report request goes, over HTTP/1.1 (HTTP/2 is not offered before a keyset
    // is current). That connection carried its one report request and is not reused: E2EE goes
    // over a new connection, whose handshake the keyset pins, over `proto`.
    provider(&http, &keys, &url("gw.test", &gw, "")).establish().await.unwrap();
    assert_eq!(gw.h2_connections(), 0);
    let accepted = gw.connections_accepted();
    let layered = ServiceBuilder::new().layer(E2eeLayer::new(keys.clone())).service(http.clone());
    let res = layered.oneshot(chat(&url("gw.test", &gw, "/v1/chat/completions"), "hello")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), proto.version(), "{proto:?}");
    assert_eq!(gw.requests_total(), 2);
    assert_eq!(gw.connections_accepted(), accepted + 1, "not over the bootstrap connection");
}

#[tokio::test]
async fn rotation_to_a_new_certificate_and_keyset_is_followed() {
    for proto in PROTOCOLS {
        rotation_to_a_new_certificate_and_keyset_is_followed_over(proto).await;
    }
}

async fn rotation_to_a_new_certificate_and_keyset_is_followed_over(proto: Proto) {
    let ca = Ca::new();
    let first = ca.leaf(&["gw.test"]);
    let gw = gateway(first.clone()).await;
    let keys = KeyHandle::new();
    let tls = proto.builder(&keys).root_store(ca.roots()).build().unwrap();
    let http = client(&tls);
    let base = url("gw.test", &gw, "");
    let provider = provider(&http, &keys, &base);
    let before = provider.establish().await.unwrap();
    let layered = ServiceBuilder::new().layer(E2eeLayer::new(keys.clone())).service(http.clone());
    let chat_url = url("gw.test", &gw, "/v1/chat/completions");
    assert_eq!(layered.clone().oneshot(chat(&chat_url, "one")).await.unwrap().status(), StatusCode::OK);

    // The gateway moves to a new certificate; its keyset now lists only the new key.
    let second = ca.leaf(&["gw.test"]);
    let new_spki = second.spki_sha256();
    gw.rotate_tls(second);
    assert_ne!(gw.keyset_digest(), before.digest());

    // A new connection presents the new key, which the current keyset does not list.
    let e = client(&tls).request(get(&url("gw.test", &gw, "/v1/models"))).await.unwrap_err();
    assert!(channel_binding(&e).unwrap().contains(&hex(new_spki)), "{e:?}");

    // Re-attesting over the pooled old connection: the new keyset does not list the key that
    // connection presented, so that report is refused and the connection revoked…
    let e = provider.establish().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding), "{e}");
    assert_eq!(keys.current().unwrap().digest(), before.digest(), "the old keyset still serves");
    // …and the next attempt goes over a new connection, which the keyset it delivers lists.
    let after = provider.establish().await.unwrap();
    assert_eq!(after.digest(), gw.keyset_digest());
    assert!(after.lists_tls_key("gw.test", &new_spki));

    // Requests follow: over the new connection, and for a fresh client too.
    let res = layered.oneshot(chat(&chat_url, "two")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), proto.version(), "{proto:?}");
    assert_eq!(res.extensions().get::<ChannelInfo>().unwrap().spki_sha256(), &new_spki);
    let res = client(&tls).request(get(&url("gw.test", &gw, "/v1/models"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), proto.version(), "{proto:?}");
}

#[tokio::test]
async fn a_keyset_that_stops_listing_the_key_closes_pooled_connections() {
    for proto in PROTOCOLS {
        a_keyset_that_stops_listing_the_key_closes_pooled_connections_over(proto).await;
    }
}

/// A connection pooled by one client closes itself when the provider (over another client on
/// the same handle) publishes a keyset that no longer lists its key, over HTTP/2 as over
/// HTTP/1.1; the client's next request goes over a new connection with the new key.
async fn a_keyset_that_stops_listing_the_key_closes_pooled_connections_over(proto: Proto) {
    let ca = Ca::new();
    let gw = gateway(ca.leaf(&["gw.test"])).await;
    let keys = KeyHandle::new();
    let tls = proto.builder(&keys).root_store(ca.roots()).build().unwrap();
    let provider = provider(&client(&tls), &keys, &url("gw.test", &gw, ""));
    provider.establish().await.unwrap();
    let user = client(&tls);
    let models = url("gw.test", &gw, "/v1/models");
    let res = user.request(get(&models)).await.unwrap();
    assert_eq!(res.version(), proto.version(), "{proto:?}");
    let old_channel = res.extensions().get::<ChannelInfo>().cloned().unwrap();
    res.into_body().collect().await.unwrap();
    // The user's connection stays pooled; the bootstrap connection is gone.
    live_connections_reach(&gw, 1).await;

    // The gateway moves to a new certificate; the provider re-attests (over a new connection:
    // its bootstrap connection served one report and was not pooled), and publishes a keyset
    // listing only the new key.
    let second = ca.leaf(&["gw.test"]);
    let new_spki = second.spki_sha256();
    gw.rotate_tls(second);
    assert!(!old_channel.is_revoked());
    provider.establish().await.unwrap();

    // Every old connection closes, the user's too, without a request to make it notice.
    live_connections_reach(&gw, 0).await;
    assert!(old_channel.is_revoked(), "{proto:?}");
    let accepted = gw.connections_accepted();
    let res = user.request(get(&models)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), proto.version(), "{proto:?}");
    assert_eq!(res.extensions().get::<ChannelInfo>().unwrap().spki_sha256(), &new_spki);
    assert_eq!(gw.connections_accepted(), accepted + 1, "a new connection");
}

#[tokio::test]
async fn two_hundred_concurrent_streams_share_one_h2_connection() {
    let ca = Ca::new();
    let gw = gateway(ca.leaf(&["gw.test"])).await;
    let keys = KeyHandle::new();
    let tls = AttestedTls::builder(keys.clone()).root_store(ca.roots()).build().unwrap();
    let http = client(&tls);
    provider(&http, &keys, &url("gw.test", &gw, "")).establish().await.unwrap();
    let layered = ServiceBuilder::new().layer(E2eeLayer::new(keys.clone())).service(http.clone());
    let chat_url = url("gw.test", &gw, "/v1/chat/completions");
    // One request opens the HTTP/2 connection (hyper-util learns from ALPN that it is shared).
    let res = layered.clone().oneshot(chat(&chat_url, "warm-up")).await.unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    res.into_body().collect().await.unwrap();
    let accepted = gw.connections_accepted();
    assert_eq!(accepted, 2, "the report-only bootstrap connection and the HTTP/2 one");

    let answers = futures_util::future::join_all((0..200).map(|i| {
        let layered = layered.clone();
        let chat_url = chat_url.clone();
        async move {
            let res = layered.oneshot(chat(&chat_url, &format!("stream {i}"))).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let version = res.version();
            let spki = *res.extensions().get::<ChannelInfo>().unwrap().spki_sha256();
            let v: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
            (i, version, spki, v)
        }
    }))
    .await;
    for (i, version, spki, v) in answers {
        assert_eq!(version, Version::HTTP_2);
        assert_eq!(spki, gw_spki(&keys));
        assert_eq!(v["choices"][0]["message"]["content"], format!("You said: stream {i}"));
    }
    assert_eq!(gw.requests_seen(), 201);
    assert_eq!(gw.connections_accepted(), accepted, "no TLS handshake for the 200 streams");
    assert_eq!(gw.h2_connections(), 1);
}

/// The SPKI the current keyset lists (one entry).
fn gw_spki(keys: &KeyHandle) -> [u8; 32] {
    let keyset = keys.current().unwrap();
    const_hex::decode(&keyset.tls_keys()[0].spki_sha256).unwrap().try_into().unwrap()
}

/// The per-stream check of HTTP/2: when no keyset lists the connection's key any more (here:
/// the keyset expired, which publishes nothing, so the pooled connection is still open), the
/// next stream is refused before its HEADERS frame is written, and the connection closes.
#[tokio::test]
async fn an_h2_stream_is_refused_once_no_keyset_lists_the_key() {
    let ca = Ca::new();
    let gw = gateway(ca.leaf(&["gw.test"])).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let clock = ManualClock::new(now);
    let keys = KeyHandle::with_clock(Arc::new(clock.clone()));
    let tls = AttestedTls::builder(keys.clone()).root_store(ca.roots()).build().unwrap();
    let http = client(&tls);
    let keyset = KeyProvider::builder(http.clone())
        .handle(keys.clone())
        .base_url(url("gw.test", &gw, "").parse().unwrap())
        .policy(policy())
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap()
        .establish()
        .await
        .unwrap();
    let models = url("gw.test", &gw, "/v1/models");
    let res = http.request(get(&models)).await.unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    let channel = res.extensions().get::<ChannelInfo>().cloned().unwrap();
    res.into_body().collect().await.unwrap();
    let before = gw.requests_total();

    clock.set(keyset.not_after() + 1);
    // h2 hands the refusal to the stream as a closed stream (the reason is logged at warn).
    let e = http.request(get(&models)).await.unwrap_err();
    assert!(channel_binding(&e).is_none(), "{e:?}");
    assert!(chain_text(&e).contains("stream closed"), "{}", chain_text(&e));
    assert_eq!(gw.requests_total(), before, "no request reached the gateway");
    assert!(channel.is_revoked(), "the HTTP/2 connection is closed");
    // The next request opens a new connection, which carries report requests only.
    let e = http.request(get(&models)).await.unwrap_err();
    assert!(channel_binding(&e).unwrap().contains("before its TLS key"), "{e:?}");
    assert_eq!(gw.requests_total(), before, "no request reached the gateway");
}

#[tokio::test]
async fn a_resumed_tls_session_is_pinned_again() {
    for proto in PROTOCOLS {
        a_resumed_tls_session_is_pinned_again_over(proto).await;
    }
}

/// Issue 18 item 6: a TLS session resumed from an earlier connection skips rustls' certificate
/// verifier. After the keyset stops listing the server's key, a new connection to it must be
/// refused in the handshake, not resumed.
async fn a_resumed_tls_session_is_pinned_again_over(proto: Proto) {
    let ca = Ca::new();
    let first = gateway(ca.leaf(&["gw.test"])).await;
    let other = gateway(ca.leaf(&["gw2.test"])).await;
    let keys = KeyHandle::new();
    let tls = proto.builder(&keys).root_store(ca.roots()).build().unwrap();
    provider(&client(&tls), &keys, &url("gw.test", &first, "")).establish().await.unwrap();
    // A full handshake with `first`, pinned; a resumable session would be stored now.
    let res = client(&tls).request(get(&url("gw.test", &first, "/v1/models"))).await.unwrap();
    res.into_body().collect().await.unwrap();
    // The keyset moves to `other`'s (reached under another name), which does not list `first`'s key.
    provider(&client(&tls), &keys, &url("gw2.test", &other, "")).establish().await.unwrap();
    let before = first.requests_total();
    let e = client(&tls).request(get(&url("gw.test", &first, "/v1/models"))).await.unwrap_err();
    let message = channel_binding(&e).unwrap_or_else(|| panic!("{e:?}"));
    assert!(message.contains("refused the TLS handshake with gw.test"), "{proto:?}: {message}");
    assert_eq!(first.requests_total(), before);
}

#[tokio::test]
async fn pin_only_accepts_a_self_signed_gateway_and_webpki_does_not() {
    for proto in PROTOCOLS {
        pin_only_accepts_a_self_signed_gateway_and_webpki_does_not_over(proto).await;
    }
}

async fn pin_only_accepts_a_self_signed_gateway_and_webpki_does_not_over(proto: Proto) {
    let cert = self_signed(&["gw.test", "127.0.0.1"]);
    let gw = gateway(cert).await;
    let base = url("gw.test", &gw, "");

    // WebPKI to a root store that does not hold it: the handshake fails (not a pin failure).
    let keys = KeyHandle::new();
    let webpki = proto.builder(&keys).root_store(Ca::new().roots()).build().unwrap();
    let e = provider(&client(&webpki), &keys, &base).establish().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(channel_binding(&e).is_none());

    // Pin-only: the attested keyset is the trust anchor.
    let keys = KeyHandle::new();
    let tls = proto.builder(&keys).pin_only().build().unwrap();
    let http = client(&tls);
    provider(&http, &keys, &base).establish().await.unwrap();
    let layered = ServiceBuilder::new().layer(E2eeLayer::new(keys.clone())).service(http);
    let res = layered.oneshot(chat(&url("gw.test", &gw, "/v1/chat/completions"), "self-signed")).await.unwrap();
    assert_eq!(res.version(), proto.version(), "{proto:?}");
    let v: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "You said: self-signed");

    // Pin-only still pins: another self-signed server for the same name is refused.
    let other = gateway(self_signed(&["gw.test"])).await;
    let e = client(&tls).request(get(&url("gw.test", &other, "/v1/models"))).await.unwrap_err();
    assert!(channel_binding(&e).is_some(), "{e:?}");
    assert_eq!(other.requests_total(), 0);
}

#[test]
fn the_builder_wants_a_trust_mode() {
    let e = AttestedTls::builder(KeyHandle::new()).build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("pin_only()"), "{e}");
    assert!(AttestedTls::builder(KeyHandle::new()).root_store(RootCertStore::empty()).build().is_err());
    assert!(AttestedTls::builder(KeyHandle::new()).pin_only().unpinned_host("pccs.example").build().is_err());
    let ca = Ca::new();
    assert!(
        AttestedTls::builder(KeyHandle::new())
            .root_store(ca.roots())
            .pin_only()
            .unpinned_host("pccs.example")
            .build()
            .is_ok()
    );
}

#[tokio::test]
async fn an_unpinned_host_is_verified_with_webpki_only() {
    for proto in PROTOCOLS {
        an_unpinned_host_is_verified_with_webpki_only_over(proto).await;
    }
}

async fn an_unpinned_host_is_verified_with_webpki_only_over(proto: Proto) {
    let ca = Ca::new();
    let gw = gateway(ca.leaf(&["gw.test", "pccs.test"])).await;
    let keys = KeyHandle::new();
    let tls = proto.builder(&keys).root_store(ca.roots()).unpinned_host("pccs.test").build().unwrap();
    let http = client(&tls);
    // Before any keyset, a pinned host carries only report requests; the unpinned one anything.
    assert!(http.request(get(&url("gw.test", &gw, "/v1/models"))).await.is_err());
    let res = http.request(get(&url("pccs.test", &gw, "/v1/models"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), proto.version(), "an unpinned host may speak HTTP/2 at once ({proto:?})");
    assert!(res.extensions().get::<ChannelInfo>().is_none(), "not a pinned channel");
}

#[tokio::test]
async fn a_plain_http_url_is_refused() {
    let keys = KeyHandle::new();
    let tls = AttestedTls::builder(keys).pin_only().build().unwrap();
    let e = client(&tls).request(get("http://127.0.0.1:9/v1/models")).await.unwrap_err();
    assert_eq!(Error::find(&e).map(Error::kind), Some(ErrorKind::Config), "{e:?}");
}

/// A plain HTTPS transport: WebPKI to `roots`, no pin, so its responses name no attested
/// channel (hyper's own HTTP/1 connection over tokio-rustls, one connection per request, to
/// `addr` whatever the URI's host).
fn plain_https<B>(
    roots: RootCertStore,
    addr: SocketAddr,
) -> impl tower::Service<
    Request<B>,
    Response = http::Response<hyper::body::Incoming>,
    Error = tower_aci::BoxError,
    Future: Send,
> + Clone
+ Send
+ Sync
+ 'static
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tower_aci::BoxError>,
{
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    tower::service_fn(move |mut req: Request<B>| {
        let tls = tls.clone();
        async move {
            let host = req.uri().host().unwrap().to_owned();
            let authority = req.uri().authority().unwrap().to_string();
            *req.uri_mut() = req.uri().path_and_query().unwrap().as_str().parse()?;
            req.headers_mut().insert(http::header::HOST, authority.parse()?);
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let stream = tls.connect(rustls::pki_types::ServerName::try_from(host)?, tcp).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            Ok::<_, tower_aci::BoxError>(sender.send_request(req).await?)
        }
    })
}

#[tokio::test]
async fn https_through_a_plain_connector_is_refused() {
    let ca = Ca::new();
    let gw = gateway(ca.leaf(&["gw.test"])).await;
    let base = url("gw.test", &gw, "");

    // The key provider: a report over HTTPS that names no attested channel is not accepted,
    // although the certificate is WebPKI-valid (and even the one the keyset lists).
    let keys = KeyHandle::new();
    let plain = KeyProvider::builder(plain_https::<Full<Bytes>>(ca.roots(), gw.addr()))
        .handle(keys.clone())
        .base_url(base.parse().unwrap())
        .policy(policy())
        .build()
        .unwrap();
    let e = plain.establish().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding), "{e}");
    assert!(keys.current().is_err(), "nothing published");

    // The E2EE layer: with a keyset attested over the pinned connector, an answer that comes back
    // over the plain connector is refused before any byte of it is decrypted.
    let tls = AttestedTls::builder(keys.clone()).root_store(ca.roots()).build().unwrap();
    provider(&client(&tls), &keys, &base).establish().await.unwrap();
    let layered = ServiceBuilder::new()
        .layer(E2eeLayer::new(keys.clone()))
        .service(plain_https::<RequestBody<Full<Bytes>>>(ca.roots(), gw.addr()));
    let e = layered.oneshot(chat(&url("gw.test", &gw, "/v1/chat/completions"), "unbound")).await.unwrap_err();
    let message = channel_binding(e.as_ref()).unwrap_or_else(|| panic!("not a channel-binding refusal: {e:?}"));
    assert!(message.contains("gw.test") && message.contains("AttestedTls"), "{message}");
}

#[tokio::test]
async fn the_unbound_channel_opt_out_is_explicit() {
    let ca = Ca::new();
    let gw = gateway(ca.leaf(&["gw.test"])).await;
    let keys = KeyHandle::new();
    KeyProvider::builder(plain_https::<Full<Bytes>>(ca.roots(), gw.addr()))
        .handle(keys.clone())
        .base_url(url("gw.test", &gw, "").parse().unwrap())
        .policy(policy())
        .dangerous()
        .accept_unbound_channel()
        .build()
        .unwrap()
        .establish()
        .await
        .unwrap();
    let layered = ServiceBuilder::new()
        .layer(E2eeLayer::new(keys.clone()).dangerous().accept_unbound_channel())
        .service(plain_https::<RequestBody<Full<Bytes>>>(ca.roots(), gw.addr()));
    let res = layered.oneshot(chat(&url("gw.test", &gw, "/v1/chat/completions"), "opted out")).await.unwrap();
    assert!(res.extensions().get::<ChannelInfo>().is_none());
    let v: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "You said: opted out");
}

#[cfg(feature = "reqwest-middleware")]
mod over_reqwest {
    use reqwest_middleware::ClientBuilder;
    use tower_aci::middleware::E2eeMiddleware;

    use super::*;

    fn reqwest_client(tls: &AttestedTls, gw: &TestGateway) -> reqwest_middleware::ClientWithMiddleware {
        let inner = reqwest::Client::builder()
            .use_preconfigured_tls(tls.rustls_config())
            .tls_info(true)
            .resolve("gw.test", gw.addr())
            .build()
            .unwrap();
        ClientBuilder::new(inner).with(E2eeMiddleware::new(tls.keys().clone())).build()
    }

    fn refusal(e: &reqwest_middleware::Error) -> Option<String> {
        match e {
            reqwest_middleware::Error::Reqwest(r) => channel_binding(r),
            reqwest_middleware::Error::Middleware(a) => channel_binding(a.as_ref()),
        }
    }

    /// Issue 18 item 6 over reqwest: two clients built from `rustls_config()` share its session
    /// store; the second must not resume the first's session past the pin.
    #[tokio::test]
    async fn reqwest_does_not_resume_a_session_past_the_pin() {
        let ca = Ca::new();
        let first = gateway(ca.leaf(&["gw.test"])).await;
        let other = gateway(ca.leaf(&["gw2.test"])).await;
        let keys = KeyHandle::new();
        let tls = AttestedTls::builder(keys.clone()).root_store(ca.roots()).build().unwrap();
        provider(&client(&tls), &keys, &url("gw.test", &first, "")).establish().await.unwrap();
        let res = reqwest_client(&tls, &first).get(url("gw.test", &first, "/v1/models")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.bytes().await.unwrap();
        // The keyset moves to `other`'s, which does not list `first`'s key.
        provider(&client(&tls), &keys, &url("gw2.test", &other, "")).establish().await.unwrap();
        let before = first.requests_total();
        let e = reqwest_client(&tls, &first).get(url("gw.test", &first, "/v1/models")).send().await.unwrap_err();
        assert!(refusal(&e).unwrap().contains("refused the TLS handshake with gw.test"), "{e:?}");
        assert_eq!(first.requests_total(), before, "nothing reached the server the keyset no longer lists");
    }

    #[tokio::test]
    async fn reqwest_pins_with_the_same_verifier() {
        let ca = Ca::new();
        let gw = gateway(ca.leaf(&["gw.test"])).await;
        let keys = KeyHandle::new();
        let tls = AttestedTls::builder(keys.clone()).root_store(ca.roots()).build().unwrap();
        let chat_url = url("gw.test", &gw, "/v1/chat/completions");
        let body = json!({"model": "demo-model", "messages": [{"role": "user", "content": "reqwest zebra"}]});

        // Before a keyset is current, reqwest's handshakes are refused (it has no per-request gate).
        let rq = reqwest_client(&tls, &gw);
        let e = rq.get(url("gw.test", &gw, "/v1/models")).send().await.unwrap_err();
        assert!(refusal(&e).unwrap().contains("no attested keyset"), "{e:?}");
        assert_eq!(gw.requests_total(), 0);

        provider(&client(&tls), &keys, &url("gw.test", &gw, "")).establish().await.unwrap();
        let rq = reqwest_client(&tls, &gw);
        let res = rq.post(&chat_url).body(body.to_string()).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "You said: reqwest zebra");

        // An impostor with a WebPKI-valid certificate for the name is refused in the handshake.
        let impostor = gateway(ca.leaf(&["gw.test"])).await;
        let rq = reqwest_client(&tls, &impostor);
        let e = rq.post(url("gw.test", &impostor, "/v1/chat/completions")).body(body.to_string()).send().await;
        let e = e.unwrap_err();
        assert!(refusal(&e).unwrap().contains("refused the TLS handshake"), "{e:?}");
        assert_eq!(impostor.requests_total(), 0);
    }

    #[tokio::test]
    async fn an_unpinned_reqwest_client_gets_no_answer() {
        let ca = Ca::new();
        let gw = gateway(ca.leaf(&["gw.test"])).await;
        let keys = KeyHandle::new();
        let tls = AttestedTls::builder(keys.clone()).root_store(ca.roots()).build().unwrap();
        provider(&client(&tls), &keys, &url("gw.test", &gw, "")).establish().await.unwrap();
        let body = json!({"model": "demo-model", "messages": [{"role": "user", "content": "unpinned"}]});

        // WebPKI only, and no certificate handed to the middleware: the answer is refused.
        let webpki = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(ca.roots())
            .with_no_client_auth();
        let inner =
            reqwest::Client::builder().use_preconfigured_tls(webpki).resolve("gw.test", gw.addr()).build().unwrap();
        let rq = ClientBuilder::new(inner).with(E2eeMiddleware::new(keys.clone())).build();
        let e = rq.post(url("gw.test", &gw, "/v1/chat/completions")).body(body.to_string()).send().await.unwrap_err();
        let message = refusal(&e).unwrap_or_else(|| panic!("not a channel-binding refusal: {e:?}"));
        assert!(message.contains("gw.test"), "{message}");
    }
}
