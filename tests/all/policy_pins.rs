//! The policy binds a workload, fail-closed: an unpinned policy (or one pinning only the OS image)
//! does not build, nor does a pin that neither a KMS root nor boot measurements anchor; each pin
//! kind (compose hash, app id, OS image hash) accepts the report that measures the pinned value and
//! rejects one that measures another, naming the measured value; a configured KMS root makes key
//! custody required; the event log's identity events count only when dstack measured them at boot.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower_aci::attest::{Policy, PolicyBuilder, verify_report};
use tower_aci::{AttestationFailure as F, ErrorKind};

use crate::attest_support::*;

const NOW: u64 = 1_900_000_000;
const NONCE: [u8; 32] = [0x5a; 32];
const RUNTIME_EVENT: u32 = 0x0800_0001;

/// The measured identity of one workload.
struct Workload {
    compose: &'static str,
    app_id: [u8; 20],
    os_image: [u8; 32],
}

const GATEWAY: Workload = Workload {
    compose: r#"{"services":{"gateway":{"image":"ghcr.io/dstack-tee/private-ai-gateway@sha256:aa"}}}"#,
    app_id: [0xab; 20],
    os_image: [0x0e; 32],
};

const OTHER: Workload = Workload {
    compose: r#"{"services":{"gateway":{"image":"ghcr.io/someone/else@sha256:bb"}}}"#,
    app_id: [0xcd; 20],
    os_image: [0x0f; 32],
};

impl Workload {
    fn compose_hash(&self) -> String {
        const_hex::encode(Sha256::digest(self.compose.as_bytes()))
    }

    /// A stub-quoted report whose event log measures this workload (dstack runtime events).
    fn report(&self) -> Vec<u8> {
        let event = |name: &str, payload: &[u8]| {
            json!({"imr": 3, "event_type": RUNTIME_EVENT, "digest": "00".repeat(48), "event": name,
                   "event_payload": const_hex::encode(payload)})
        };
        let log = Value::Array(vec![
            event("app-id", &self.app_id),
            event("compose-hash", &Sha256::digest(self.compose.as_bytes())),
            event("os-image-hash", &self.os_image),
            event("system-ready", b""),
        ]);
        let mut report = seal_report(&production_keyset(None, NOW + 3_600), Some(&NONCE));
        report["attestation"]["evidence"]["event_log"] = json!(log.to_string());
        report["attestation"]["evidence"]["app_compose"] = json!(self.compose);
        bytes(&report)
    }
}

/// The stub report measures nothing but RTMR3 values it was told: these pins are unanchored.
fn stub(builder: PolicyBuilder) -> Policy {
    builder.dangerous().accept_stub_quote().unanchored_pin().build().unwrap()
}

#[test]
fn an_unpinned_policy_does_not_build() {
    let e = Policy::builder().build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let message = e.to_string();
    // Says what to pin and where each value comes from.
    for hint in ["allow_compose_hash", "app_compose", "allow_app_id", "app-id event", "accept_kms_root", "KMS root"] {
        assert!(message.contains(hint), "{hint:?} missing: {message}");
    }
    // A KMS root, declared provenance or a stub relaxation are not workload pins.
    assert!(Policy::builder().accept_kms_root(&TestKms::new().root_hex()).build().is_err());
    assert!(Policy::builder().allow_source("https://github.com/o/r", "c0ffee").build().is_err());
    assert!(Policy::builder().allow_image_digest("sha256:aa").build().is_err());
    assert!(Policy::builder().dangerous().accept_stub_quote().build().is_err());
    // The explicit opt-out builds, and says it is dangerous.
    let any = Policy::builder().dangerous().any_workload().build().unwrap();
    assert!(any.is_dangerous() && !any.pins_workload());
}

#[test]
fn a_compose_hash_pin_accepts_its_workload_only() {
    let policy = stub(Policy::builder().allow_compose_hash(&GATEWAY.compose_hash()));
    assert!(policy.pins_workload());
    assert!(verify_report(&GATEWAY.report(), &NONCE, NOW, &policy).is_ok());
    let e = verify_report(&OTHER.report(), &NONCE, NOW, &policy).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::NotAllowed));
    // The message names the measured compose hash in full, and the allowed one, to re-pin.
    let message = e.to_string();
    assert!(message.contains(&format!("the compose hash {} is not on the policy's allowlist", OTHER.compose_hash())));
    assert!(message.contains(&format!("allowed: {}", GATEWAY.compose_hash())), "{message}");
    assert!(message.contains("allow_compose_hash"), "{message}");
}

#[test]
fn an_app_id_pin_accepts_its_workload_only() {
    let policy = stub(Policy::builder().allow_app_id(&format!("0x{}", const_hex::encode(GATEWAY.app_id))));
    let ks = verify_report(&GATEWAY.report(), &NONCE, NOW, &policy).unwrap();
    assert_eq!(ks.e2ee_key().key_id(), "dstack-kms-e2ee-v1");
    let e = verify_report(&OTHER.report(), &NONCE, NOW, &policy).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::NotAllowed));
    assert!(e.to_string().contains(&format!("the app id {} is not", const_hex::encode(OTHER.app_id))), "{e}");
}

#[test]
fn an_os_image_pin_accepts_its_image_only() {
    // Checked alongside an app pin (alone it is not a pin).
    let policy = stub(
        Policy::builder()
            .allow_app_id(&const_hex::encode(GATEWAY.app_id))
            .allow_os_image_hash(&const_hex::encode(GATEWAY.os_image)),
    );
    assert!(verify_report(&GATEWAY.report(), &NONCE, NOW, &policy).is_ok());
    let moved = Workload { os_image: OTHER.os_image, ..GATEWAY };
    let e = verify_report(&moved.report(), &NONCE, NOW, &policy).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::NotAllowed));
    assert!(e.to_string().contains(&format!("the OS image hash {} is not", const_hex::encode(OTHER.os_image))), "{e}");
}

#[test]
fn a_report_measuring_nothing_fails_every_pin() {
    // The local gateway's stub report measures no compose hash, app id or OS image.
    let bare = bytes(&seal_report(&production_keyset(None, NOW + 3_600), Some(&NONCE)));
    for policy in [
        stub(Policy::builder().allow_compose_hash(&GATEWAY.compose_hash())),
        stub(Policy::builder().allow_app_id(&const_hex::encode(GATEWAY.app_id))),
        Policy::builder()
            .allow_os_image_hash(&const_hex::encode(GATEWAY.os_image))
            .dangerous()
            .accept_stub_quote()
            .any_workload()
            .build()
            .unwrap(),
    ] {
        let e = verify_report(&bare, &NONCE, NOW, &policy).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Attestation(F::NotAllowed), "{policy:?}");
        assert!(e.to_string().contains("the report measures no"), "{e}");
    }
    assert!(verify_report(&bare, &NONCE, NOW, &stub_policy()).is_ok(), "only any_workload() accepts it");
}

#[test]
fn a_kms_root_requires_custody() {
    let kms = TestKms::new();
    let subject = format!("app-id:0x{}", const_hex::encode(&kms.app_id));
    let mut report = seal_report(&production_keyset(Some(&subject), NOW + 3_600), Some(&NONCE));
    report["attestation"]["evidence"]["key_custody"] = kms.custody();
    // The KMS root alone anchors the pin only in the prompt-confidentiality-only mode.
    let policy = Policy::builder()
        .accept_kms_root(&kms.root_hex())
        .allow_app_id(&const_hex::encode(&kms.app_id))
        .dangerous()
        .accept_stub_quote()
        .accept_unauthenticated_answers()
        .build()
        .unwrap();
    assert!(policy.requires_key_custody() && policy.anchors_pin());
    assert!(verify_report(&bytes(&report), &NONCE, NOW, &policy).is_ok());
    // The same report with `key_custody` dropped (or null) is rejected.
    let mut dropped = report.clone();
    dropped["attestation"]["evidence"].as_object_mut().unwrap().remove("key_custody");
    assert_eq!(reason(verify_report(&bytes(&dropped), &NONCE, NOW, &policy)), F::Custody);
    dropped["attestation"]["evidence"]["key_custody"] = Value::Null;
    assert_eq!(reason(verify_report(&bytes(&dropped), &NONCE, NOW, &policy)), F::Custody);
}

/// A stub-quoted report carrying `log` (dstack event-log JSON) and `compose`.
fn report_with_log(log: Vec<Value>, compose: &str) -> Vec<u8> {
    let mut report = seal_report(&production_keyset(None, NOW + 3_600), Some(&NONCE));
    report["attestation"]["evidence"]["event_log"] = json!(Value::Array(log).to_string());
    report["attestation"]["evidence"]["app_compose"] = json!(compose);
    bytes(&report)
}

fn runtime(name: &str, payload: &[u8]) -> Value {
    json!({"imr": 3, "event_type": RUNTIME_EVENT, "digest": "00".repeat(48), "event": name,
           "event_payload": const_hex::encode(payload)})
}

#[test]
fn a_post_boot_compose_hash_does_not_satisfy_the_pin() {
    let policy = stub(Policy::builder().allow_compose_hash(&GATEWAY.compose_hash()));
    // OTHER booted; the genuine compose-hash and system-ready are relabelled to another event type
    // (keeping their digests), and the workload then extends RTMR3 with GATEWAY's compose hash.
    let relabelled = |name: &str, payload: &[u8]| {
        let mut e = runtime(name, payload);
        e["event_type"] = json!(RUNTIME_EVENT + 1);
        e
    };
    let log = vec![
        runtime("app-id", &OTHER.app_id),
        relabelled("compose-hash", &Sha256::digest(OTHER.compose.as_bytes())),
        runtime("os-image-hash", &OTHER.os_image),
        relabelled("system-ready", b""),
        runtime("compose-hash", &Sha256::digest(GATEWAY.compose.as_bytes())),
        runtime("system-ready", b""),
    ];
    let e = verify_report(&report_with_log(log, GATEWAY.compose), &NONCE, NOW, &policy).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::EventLog), "{e}");

    // Without the relabelling: a compose-hash after system-ready is refused, not skipped.
    let log = vec![
        runtime("app-id", &GATEWAY.app_id),
        runtime("compose-hash", &Sha256::digest(GATEWAY.compose.as_bytes())),
        runtime("system-ready", b""),
        runtime("compose-hash", &Sha256::digest(OTHER.compose.as_bytes())),
    ];
    let e = verify_report(&report_with_log(log, GATEWAY.compose), &NONCE, NOW, &policy).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::EventLog), "{e}");

    // A log that never reached system-ready satisfies no pin.
    let log = vec![runtime("app-id", &GATEWAY.app_id), runtime("compose-hash", &Sha256::digest(GATEWAY.compose))];
    let e = verify_report(&report_with_log(log, GATEWAY.compose), &NONCE, NOW, &policy).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::EventLog), "{e}");
}

#[test]
fn an_os_image_pin_alone_does_not_build() {
    let e = Policy::builder().allow_os_image_hash(&const_hex::encode(GATEWAY.os_image)).build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("allow_os_image_hash"), "{e}");
    // Also with a KMS root: the OS image is not the app.
    let kms = TestKms::new();
    let e = Policy::builder()
        .allow_os_image_hash(&const_hex::encode(GATEWAY.os_image))
        .accept_kms_root(&kms.root_hex())
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
}

#[test]
fn an_insufficient_compose_hash_pin_does_not_build() {
    for builder in [
        Policy::builder().allow_compose_hash(&GATEWAY.compose_hash()),
        Policy::builder().allow_app_id(&const_hex::encode(GATEWAY.app_id)),
        Policy::builder().allow_compose_hash(&GATEWAY.compose_hash()).dangerous().accept_stub_quote().end_dangerous(),
    ] {
        let e = builder.build().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        let message = e.to_string();
        for way in ["allow_boot_measurements", "allow_kms_identity", "accept_kms_root", "unanchored_pin"] {
            assert!(message.contains(way), "{way:?} missing: {message}");
        }
    }
}

/// A current-generation keyset (`subject`, `not_after`) that also names a `workload_identity`
/// mixes the two report generations and is refused before custody is looked at (issue 19). The
/// identity key's custody is required in the older generation, where it belongs: see
/// `src/attest/tests/end_to_end.rs` (`custody_must_reach_the_kms_root`).
#[test]
fn a_current_keyset_naming_an_identity_key_is_refused_as_a_mix_of_generations() {
    let kms = TestKms::new();
    let identity = compressed_hex(&signing_key(0x77));
    let subject = format!("app-id:0x{}", const_hex::encode(&kms.app_id));
    let mut keyset = production_keyset(Some(&subject), NOW + 3_600);
    keyset["workload_identity"] = json!({"public_key": {"algo": "ecdsa-secp256k1", "public_key": identity}});
    let policy = custody_builder(&const_hex::encode(&kms.app_id), &kms.root_hex()).accept_stub_quote().build().unwrap();
    let with_custody = |keyset: &Value, custody: Value| {
        let mut report = seal_report(keyset, Some(&NONCE));
        report["attestation"]["evidence"]["key_custody"] = custody;
        bytes(&report)
    };
    // Without an identity custody entry, and with one whose chain signs the identity key.
    let mut custody = kms.custody();
    let entry = json!({
        "role": "identity", "path": "aci/identity/v1", "purpose": "aci.identity.v1", "algo": "ecdsa-secp256k1",
        "public_key": identity, "kms_public_key": identity, "signature_chain": kms.chain("aci.identity.v1", &identity)
    });
    custody["keys"].as_array_mut().unwrap().push(entry);
    for custody in [kms.custody(), custody] {
        let e = verify_report(&with_custody(&keyset, custody), &NONCE, NOW, &policy).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Attestation(F::Shape), "{e}");
        assert!(e.to_string().contains("mixes members of two report generations"), "{e}");
    }
    // The same keyset without the identity key verifies.
    keyset.as_object_mut().unwrap().remove("workload_identity");
    assert!(verify_report(&with_custody(&keyset, kms.custody()), &NONCE, NOW, &policy).is_ok());
}
