//! Attack tests for "anchored for every key" (ACI key custody and the policy's anchors).
//!
//! The attacker runs a TD of its own whose RTMR3 it extended with the pinned values, lists its
//! own X25519 E2EE key, Ed25519 receipt key and TLS key, and copies the `key_custody` entries of
//! the genuine report over them (changing only `public_key`). In the current report generation
//! the `e2ee-x25519` and `receipt` chains sign `kms_public_key`, never the published key, and
//! TLS keys have no custody, so the copied chains still reach the accepted KMS root. A KMS root
//! therefore covers only the keys whose chain signs their own bytes (the secp256k1 E2EE key).
//!
//! Quotes here are the local gateway's stub (`dangerous().accept_stub_quote()`): these attacks
//! are on the anchors, not on the hardware check, which the attacker passes with a genuine TD.

use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey as Ed25519Key};
use serde_json::{Value, json};
use tower_aci::attest::{Anchor, Policy, PolicyBuilder, verify_report};
use tower_aci::protocol::jcs;
use tower_aci::receipt::{Receipt, verify_against_keyset};
use tower_aci::{AttestationFailure as F, ErrorKind, ReceiptFailure};

use crate::attest_support::*;

const NOW: u64 = 1_900_000_000;
const NONCE: [u8; 32] = [0x3c; 32];
/// The attacker's seeds (the genuine keys use 0x31, 0x44, 0x55).
const ATTACKER_ED25519: u8 = 0x71;
const ATTACKER_X25519: u8 = 0x72;
/// The SPKI SHA-256 of the attacker's TLS certificate and of the genuine one.
const ATTACKER_SPKI: &str = "a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7";
const GENUINE_SPKI: &str = "6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e";

/// The genuine gateway's keyset (receipt, secp256k1, X25519, TLS), its public custody, and the
/// subject naming the app the KMS issued to.
fn genuine(kms: &TestKms) -> (Value, Value) {
    let mut keyset = production_keyset(Some(&format!("app-id:0x{}", const_hex::encode(&kms.app_id))), NOW + 3_600);
    keyset["tls_public_keys"] = json!([{"spki_sha256": GENUINE_SPKI}]);
    (keyset, kms.custody())
}

/// The attacker's copy of the public custody: every entry kept, `public_key` swapped for the
/// attacker's key where the attacker replaced the key.
fn copied_custody(custody: &Value, receipt: Option<&str>, x25519: Option<&str>) -> Value {
    let mut custody = custody.clone();
    for entry in custody["keys"].as_array_mut().unwrap() {
        match entry["role"].as_str().unwrap() {
            "receipt" if receipt.is_some() => entry["public_key"] = json!(receipt),
            "e2ee-x25519" if x25519.is_some() => entry["public_key"] = json!(x25519),
            _ => {}
        }
    }
    custody
}

/// A stub-sealed report of `keyset` carrying `custody`.
fn report(keyset: &Value, custody: &Value) -> Vec<u8> {
    let mut r = seal_report(keyset, Some(&NONCE));
    r["attestation"]["evidence"]["key_custody"] = custody.clone();
    bytes(&r)
}

/// The attacker's keyset: its own X25519, Ed25519 and TLS keys, no secp256k1 key (attack 1), or
/// the genuine secp256k1 key beside its own TLS and receipt keys (attack 2).
fn attacker_keyset(kms: &TestKms, keep_genuine_secp256k1: bool) -> (Value, Value) {
    let (mut keyset, custody) = genuine(kms);
    keyset["receipt_signing_keys"][0]["public_key"] = json!(ed25519_public_hex(ATTACKER_ED25519));
    keyset["tls_public_keys"] = json!([{"spki_sha256": ATTACKER_SPKI}]);
    let mut e2ee = Vec::new();
    if keep_genuine_secp256k1 {
        e2ee.push(keyset["e2ee_public_keys"][0].clone());
    }
    let mut x = keyset["e2ee_public_keys"][1].clone();
    x["public_key"] = json!(x25519_public_hex(ATTACKER_X25519));
    e2ee.push(x);
    keyset["e2ee_public_keys"] = Value::Array(e2ee);
    let mut copied = copied_custody(
        &custody,
        Some(&ed25519_public_hex(ATTACKER_ED25519)),
        Some(&x25519_public_hex(ATTACKER_X25519)),
    );
    if !keep_genuine_secp256k1 {
        copied["keys"].as_array_mut().unwrap().retain(|e| e["role"] != "e2ee-secp256k1");
    }
    (keyset, copied)
}

/// What the README taught before: an app pin anchored by the KMS root (stub quote accepted, as
/// the attacker's genuine TD would pass the hardware check).
fn kms_root_pins(kms: &TestKms) -> PolicyBuilder {
    Policy::builder().allow_app_id(&const_hex::encode(&kms.app_id)).accept_kms_root(&kms.root_hex())
}

/// A receipt for `keyset_digest` signed by `key` under `key_id`.
fn forged_receipt(keyset_digest: &str, key_id: &str, key: &Ed25519Key) -> Receipt {
    let mut doc: Value =
        serde_json::from_str(load("aci_vectors.json")["receipt"]["document"].as_str().unwrap()).unwrap();
    doc["workload_keyset_digest"] = json!(keyset_digest);
    doc["key_id"] = json!(key_id);
    doc.as_object_mut().unwrap().remove("signature");
    let signature = key.sign(&jcs::to_vec(&doc).unwrap());
    doc["signature"] = json!(const_hex::encode(signature.to_bytes()));
    Receipt::from_bytes(Bytes::from(serde_json::to_vec(&doc).unwrap())).unwrap()
}

fn spki(text: &str) -> [u8; 32] {
    const_hex::decode(text).unwrap().try_into().unwrap()
}

/// The sound combination names what a KMS root lacks.
fn assert_insufficient(builder: PolicyBuilder, adds: &[&str]) {
    let e = builder.build().expect_err("a policy that pins less than the table does not build");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let message = e.to_string();
    for add in adds {
        assert!(message.contains(add), "{add} missing from: {message}");
    }
    // It leads with what to add.
    assert!(message.starts_with("add "), "{message}");
}

/// Attack 1: copied custody chains over the attacker's X25519, Ed25519 and TLS keys. The
/// README's former policy (app id + KMS root) no longer builds; with the KMS root as the only
/// anchor (the dangerous prompt-only mode), no prompt is encrypted to the attacker's X25519 key.
#[test]
fn copied_custody_over_foreign_x25519_ed25519_and_tls_keys_is_refused() {
    let kms = TestKms::new();
    let (keyset, custody) = attacker_keyset(&kms, false);
    let report = report(&keyset, &custody);

    assert_insufficient(
        kms_root_pins(&kms).dangerous().accept_stub_quote().end_dangerous(),
        &["allow_boot_measurements", "allow_kms_identity", "allow_compose_hash"],
    );

    let prompt_only = kms_root_pins(&kms).dangerous().accept_stub_quote().accept_unauthenticated_answers().build();
    let e = verify_report(&report, &NONCE, NOW, &prompt_only.unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::Unanchored), "{e}");
    let message = e.to_string();
    assert!(message.contains("dstack-kms-e2ee-x25519-v1"), "{message}");
    assert!(message.contains("allow_boot_measurements"), "{message}");
}

/// Attack 2: the genuine secp256k1 key with the attacker's TLS and receipt keys. Under the
/// KMS-root-only anchor the prompt goes to the genuine key (which the attacker cannot read), and
/// no answer the attacker forges is accepted: its TLS key is not the channel's, its receipts do
/// not verify. Without the dangerous prompt-only mode, nothing could authenticate an answer, so
/// the policy does not build.
#[test]
fn the_genuine_secp256k1_key_beside_foreign_tls_and_receipt_keys_authenticates_no_answer() {
    let kms = TestKms::new();
    let (keyset, custody) = attacker_keyset(&kms, true);
    let report = report(&keyset, &custody);

    assert_insufficient(
        kms_root_pins(&kms).dangerous().accept_stub_quote().end_dangerous(),
        &["allow_boot_measurements", "allow_kms_identity"],
    );
    let prompt_only =
        kms_root_pins(&kms).prefer_x25519().dangerous().accept_stub_quote().accept_unauthenticated_answers().build();
    let ks = verify_report(&report, &NONCE, NOW, &prompt_only.unwrap()).unwrap();
    assert_eq!(ks.anchor(), Anchor::KmsCustody);
    // Even preferring X25519, the prompt is sealed to the key the KMS root covers.
    assert_eq!(ks.e2ee_key().key_id(), "dstack-kms-e2ee-v1");
    assert_eq!(ks.e2ee_key().public_key_text(), secp_public_hex(0x44));
    assert!(ks.e2ee_keys().iter().all(|k| k.key_id() == "dstack-kms-e2ee-v1"));
    // The attacker's TLS key is never the channel's.
    assert!(!ks.lists_tls_key("gateway.example", &spki(ATTACKER_SPKI)));
    assert_eq!(ks.tls_keys().len(), 0);
    // Its receipt key verifies nothing.
    assert!(ks.receipt_keys().is_empty());
    let receipt =
        forged_receipt(ks.digest(), "dstack-kms-receipt-ed25519-v1", &Ed25519Key::from_bytes(&[ATTACKER_ED25519; 32]));
    let e = verify_against_keyset(&receipt, &ks).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Receipt(ReceiptFailure::UnknownKey), "{e}");
}

/// The same checks hold for the genuine keyset: a KMS root alone never covers the X25519,
/// Ed25519 or TLS keys, whoever holds them, so they are left out even when genuine.
#[test]
fn a_kms_root_alone_covers_only_the_secp256k1_key_of_a_genuine_keyset() {
    let kms = TestKms::new();
    let (keyset, custody) = genuine(&kms);
    let policy = kms_root_pins(&kms).dangerous().accept_stub_quote().accept_unauthenticated_answers().build();
    let ks = verify_report(&report(&keyset, &custody), &NONCE, NOW, &policy.unwrap()).unwrap();
    assert_eq!(ks.e2ee_keys().len(), 1);
    assert_eq!(ks.e2ee_key().key_id(), "dstack-kms-e2ee-v1");
    assert!(ks.receipt_keys().is_empty() && ks.tls_keys().is_empty());
    // And a prompt-only policy still needs its KMS root.
    let e = Policy::builder().allow_app_id("ab").dangerous().accept_unauthenticated_answers().build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("accept_kms_root"), "{e}");
}

/// App-id pins: an app id is a label its owner authorises on chain, not a measurement of code,
/// so every combination that leaves the compose free (or the KMS or the boot chain unpinned)
/// does not build, and the message says what to add.
#[test]
fn app_id_pins_that_leave_the_compose_or_the_kms_free_do_not_build() {
    let kms = TestKms::new();
    let app = const_hex::encode(&kms.app_id);
    let boot = ["11".repeat(48), "22".repeat(48), "33".repeat(48), "44".repeat(48)];
    let kms_id = "3059301306072a8648ce3d020106082a8648ce3d03010703420004aa";
    let with_boot = |b: PolicyBuilder| b.allow_boot_measurements(&boot[0], &boot[1], &boot[2], &boot[3]);
    for (builder, adds) in [
        (Policy::builder().allow_app_id(&app).accept_kms_root(&kms.root_hex()), &["allow_compose_hash"][..]),
        (with_boot(Policy::builder().allow_app_id(&app)), &["allow_compose_hash", "allow_kms_identity"][..]),
        (with_boot(Policy::builder().allow_app_id(&app)).allow_kms_identity(kms_id), &["allow_compose_hash"][..]),
        (with_boot(Policy::builder().allow_compose_hash(&"ab".repeat(32))), &["allow_kms_identity"][..]),
        (
            Policy::builder().allow_compose_hash(&"ab".repeat(32)).allow_kms_identity(kms_id),
            &["allow_boot_measurements"][..],
        ),
    ] {
        assert_insufficient(builder, adds);
    }
    // The sound combination builds, with or without an app id and a KMS root beside it.
    let sound = with_boot(Policy::builder().allow_compose_hash(&"ab".repeat(32))).allow_kms_identity(kms_id);
    let policy = sound.allow_app_id(&app).accept_kms_root(&kms.root_hex()).build().unwrap();
    assert!(policy.anchors_pin() && !policy.is_dangerous());
}

/// Over real TLS on loopback: the attacker's gateway serves attack 2's keyset (the genuine
/// secp256k1 key, its own TLS and receipt keys, copied custody) for every nonce, over its own
/// certificate, which the keyset lists. Under the KMS-root-only anchor the keyset keeps no TLS
/// key, so the provider refuses the channel the report came over: no answer over it is accepted.
#[cfg(feature = "rustls")]
mod over_tls {
    use std::sync::Arc;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tower_aci::attest::{KeyHandle, KeyProvider};
    use tower_aci::e2ee::RequestBody;
    use tower_aci::tls::{AttestedTls, spki_sha256};

    use super::*;

    /// The attacker's gateway: answers `GET /v1/aci/attestation?nonce=…` with attack 2's report
    /// sealed for that nonce, and anything else with a forged chat answer. Returns its address.
    async fn hostile_gateway() -> std::net::SocketAddr {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let spki = const_hex::encode(spki_sha256(cert.cert.der()).unwrap());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let kms = TestKms::new();
        let (mut keyset, custody) = attacker_keyset(&kms, true);
        keyset["tls_public_keys"] = json!([{"spki_sha256": spki}]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, keyset, custody) = (acceptor.clone(), keyset.clone(), custody.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let nonce: Option<[u8; 32]> = req
                            .uri()
                            .query()
                            .and_then(|q| q.strip_prefix("nonce="))
                            .and_then(|n| const_hex::decode(n).ok())
                            .and_then(|n| n.try_into().ok());
                        let body = match nonce {
                            Some(nonce) => {
                                let mut r = seal_report(&keyset, Some(&nonce));
                                r["attestation"]["evidence"]["key_custody"] = custody.clone();
                                bytes(&r)
                            }
                            None => br#"{"choices":[{"message":{"role":"assistant","content":"forged"}}]}"#.to_vec(),
                        };
                        let res = Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap();
                        async move { Ok::<_, std::convert::Infallible>(res) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_attackers_tls_channel_is_refused_under_a_kms_root_anchor() {
        let addr = hostile_gateway().await;
        let kms = TestKms::new();
        let keys = KeyHandle::with_clock(Arc::new(tower_aci::attest::ManualClock::new(NOW)));
        let tls = AttestedTls::builder(keys.clone()).pin_only().build().unwrap();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        let http: Client<_, RequestBody<Full<Bytes>>> =
            Client::builder(TokioExecutor::new()).build(tls.connector_with(tcp));
        let policy = kms_root_pins(&kms).dangerous().accept_stub_quote().accept_unauthenticated_answers().build();
        let provider = KeyProvider::builder(http)
            .handle(keys.clone())
            .base_url(format!("https://127.0.0.1:{}", addr.port()).parse().unwrap())
            .policy(policy.unwrap())
            .build()
            .unwrap();
        let e = provider.establish().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Attestation(F::ChannelBinding), "{e}");
        // Nothing was published: no request can be sent, let alone an answer accepted.
        assert!(keys.current().is_err());
        assert!(e.to_string().contains("127.0.0.1") || e.to_string().contains("SPKI"), "{e}");
    }
}
