//! The local gateway serving the older (June 2026) report generation
//! (`GatewayConfig::generation(Generation::Legacy)`), over loopback: attest, encrypt, decrypt,
//! and receipts, which fail closed for that generation (no real receipt of it exists to learn its
//! signature rule from, so none is verified). These prove consistency and HTTP behaviour; the
//! older generation's correctness is pinned by the real capture (`src/attest/tests/`).

use std::sync::Arc;

use aci_test_gateway::{GatewayConfig, TestGateway};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower_aci::attest::{Generation, KeyProvider, ManualClock, Policy, verify_report};
use tower_aci::protocol::Suite;
use tower_aci::receipt::{ExchangeRecord, ReceiptClient, ReceiptPolicy, RetryPolicy};
use tower_aci::{AttestationFailure, ErrorKind, ReceiptFailure};

use crate::data::reason;
use crate::support::{Env, hyper, post, read, send, sse_text};

const T0: u64 = 1_782_664_738;
const PROMPT: &str = "legacy gateways still get ciphertext only";

fn legacy() -> GatewayConfig {
    GatewayConfig::new().generation(Generation::Legacy)
}

fn chat(stream: bool) -> Value {
    json!({"model": "demo-model", "stream": stream, "messages": [{"role": "user", "content": PROMPT}]})
}

fn attestation_failure(e: &tower_aci::Error) -> AttestationFailure {
    match e.kind() {
        ErrorKind::Attestation(f) => f,
        other => panic!("expected an attestation failure, got {other:?}: {e}"),
    }
}

/// The raw report for `nonce`, as the gateway serves it.
async fn fetch_report(gw: &TestGateway, nonce: &[u8; 32]) -> Vec<u8> {
    let uri = format!("{}/v1/aci/attestation?nonce={}", gw.base_url(), const_hex::encode(nonce));
    let res = hyper().get(uri.parse().unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap().to_bytes().to_vec()
}

#[tokio::test]
async fn attest_encrypt_decrypt_against_a_legacy_gateway() {
    for stream in [false, true] {
        let env = Env::with(legacy(), Suite::Secp256k1).await;
        let keyset = env.keys.current().unwrap();
        assert_eq!(keyset.generation(), Generation::Legacy);
        assert_eq!(keyset.digest(), env.gw.keyset_digest());
        assert_eq!(keyset.e2ee_key().key_id(), "dstack-kms-e2ee-v1");
        assert_eq!(keyset.e2ee_keys().len(), 1, "the legacy entries are not kept");

        let client = env.client(env.layer());
        let res = send(&client, post(&env.url("/v1/chat/completions"), &chat(stream))).await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.extensions().get::<ExchangeRecord>().is_some());
        let body = read(res.into_body()).await.unwrap();
        let text = if stream {
            sse_text(&body, "content")
        } else {
            let out: Value = serde_json::from_slice(&body).unwrap();
            out["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
        };
        assert_eq!(text, format!("You said: {PROMPT}"), "stream: {stream}");
        // Neither direction carried the prompt in the clear.
        let upstream = env.gw.upstream_log();
        assert_eq!(upstream.last().unwrap()["messages"][0]["content"], PROMPT);
        let wire = env.gw.wire_log();
        assert!(!String::from_utf8_lossy(wire.last().unwrap()).contains(PROMPT));
        assert!(!env.wire_text().contains(PROMPT), "stream: {stream}");
    }
}

#[tokio::test]
async fn the_legacy_report_verifies_as_legacy_and_its_binding_holds() {
    let clock = ManualClock::new(T0);
    let gw = TestGateway::start(legacy().clock(Arc::new(clock.clone())).not_after(T0 + 30 * 24 * 3600)).await.unwrap();
    let nonce = [0x5a; 32];
    let raw = fetch_report(&gw, &nonce).await;
    let report: Value = serde_json::from_slice(&raw).unwrap();
    assert!(report["workload_id"].is_string());
    assert!(report["attestation"]["workload_keyset"]["keyset_epoch"].is_object());
    assert!(report["attestation"]["evidence"]["vm_config"].is_string());

    let stub = Policy::builder().dangerous().accept_stub_quote().any_workload().build().unwrap();
    let ks = verify_report(&raw, &nonce, T0, &stub).unwrap();
    assert_eq!(ks.generation(), Generation::Legacy);
    // Valid until the report's freshness ends, not the keyset epoch's 30 days.
    assert_eq!(ks.not_after(), T0 + 3_600);
    // Another nonce, or a changed endorsement, workload id or keyset: refused, each its own way.
    let e = verify_report(&raw, &[0x5b; 32], T0, &stub).unwrap_err();
    assert_eq!(attestation_failure(&e), AttestationFailure::ReportData);
    let tampered = |pointer: &str| {
        let mut doc = report.clone();
        let v = doc.pointer_mut(pointer).unwrap();
        let mut text = v.as_str().unwrap().to_owned();
        let last = if text.ends_with('0') { "1" } else { "0" };
        text.replace_range(text.len() - 1.., last);
        *v = text.into();
        serde_json::to_vec(&doc).unwrap()
    };
    for (pointer, expected) in [
        ("/attestation/keyset_endorsement/value", AttestationFailure::Endorsement),
        ("/workload_id", AttestationFailure::WorkloadId),
        ("/attestation/workload_keyset/e2ee_public_keys/0/key_id", AttestationFailure::KeysetDigest),
    ] {
        let e = verify_report(&tampered(pointer), &nonce, T0, &stub).unwrap_err();
        assert_eq!(attestation_failure(&e), expected, "{pointer}: {e}");
    }
    // Only the current generation: refused with its own failure.
    let current_only =
        Policy::builder().current_generation_only().dangerous().accept_stub_quote().any_workload().build().unwrap();
    let e = verify_report(&raw, &nonce, T0, &current_only).unwrap_err();
    assert_eq!(attestation_failure(&e), AttestationFailure::Generation);
    // The same policy accepts a current gateway.
    let current = TestGateway::start(GatewayConfig::new().clock(Arc::new(clock))).await.unwrap();
    let ks = verify_report(&fetch_report(&current, &nonce).await, &nonce, T0, &current_only).unwrap();
    assert_eq!(ks.generation(), Generation::Current);
}

#[tokio::test]
async fn the_key_provider_refuses_a_legacy_gateway_under_current_generation_only_and_never_picks_legacy_keys() {
    let gw = TestGateway::start(legacy()).await.unwrap();
    let provider = |policy: Policy| {
        KeyProvider::builder(hyper()).base_url(gw.base_url().parse().unwrap()).policy(policy).build().unwrap()
    };
    let stub = || Policy::builder().dangerous().accept_stub_quote().any_workload().end_dangerous();
    let e = provider(stub().current_generation_only().build().unwrap()).establish().await.unwrap_err();
    assert_eq!(attestation_failure(&e), AttestationFailure::Generation);
    // X25519 preferred: the legacy keyset has none, secp256k1 dstack-kms-e2ee-v1 is used.
    let ks = provider(stub().prefer_x25519().build().unwrap()).establish().await.unwrap();
    assert_eq!(ks.e2ee_key().key_id(), "dstack-kms-e2ee-v1");
    for key_id in ["dstack-kms-e2ee-v1-legacy-ecdsa", "dstack-kms-legacy-ed25519-v1"] {
        let e = provider(stub().pin_key_id(key_id).build().unwrap()).establish().await.unwrap_err();
        assert_eq!(attestation_failure(&e), AttestationFailure::NoUsableKey, "{key_id}");
    }
}

#[tokio::test]
async fn receipts_of_a_legacy_keyset_fail_closed() {
    let env = Env::with(legacy(), Suite::Secp256k1).await;
    let client = env.client(env.layer());
    let res = send(&client, post(&env.url("/v1/chat/completions"), &chat(false))).await.unwrap();
    let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
    read(res.into_body()).await.unwrap();
    let rc = ReceiptClient::new(hyper(), env.gw.base_url().parse().unwrap()).retry(RetryPolicy::none());
    // The receipt is served, but the legacy keyset lists no receipt key this crate verifies with.
    let receipt = rc.clone().fetch(record.receipt_id().unwrap(), None).await.unwrap();
    let r = tower_aci::receipt::verify_against_keyset(&receipt, &env.keys.current().unwrap());
    let message = r.as_ref().map_err(ToString::to_string).unwrap_err();
    assert!(message.contains("older report generation"), "{message}");
    assert_eq!(reason(r), ReceiptFailure::UnknownKey);
    let r = rc.fetch_and_verify(&record, None, &env.keys, &ReceiptPolicy::new()).await;
    assert_eq!(reason(r), ReceiptFailure::UnknownKey);
}
