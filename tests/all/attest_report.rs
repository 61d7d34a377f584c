//! Report verification: spec vectors, the reference's stub-quoted fixture, every tamper with its
//! own reason, and KMS key custody on keys generated here.

use std::time::Duration;

use serde_json::{Value, json};
use tower_aci::attest::{Policy, keyset_digest, report_data, report_statement, verify_report};
use tower_aci::protocol::Suite;
use tower_aci::protocol::jcs;
use tower_aci::{AttestationFailure as F, ErrorKind};

use crate::attest_support::*;

const DAY: u64 = 24 * 3600;

fn vector_nonce() -> [u8; 32] {
    core::array::from_fn(|i| i as u8)
}

fn vector_keyset() -> Value {
    let v = load("aci_vectors.json");
    serde_json::from_str(v["keyset"]["jcs"].as_str().unwrap()).unwrap()
}

/// `not_after` of the vector keyset is 1800000000; verify ten days before it.
const VECTOR_NOW: u64 = 1_800_000_000 - 10 * DAY;

fn x25519_stub_policy() -> Policy {
    Policy::builder().dangerous().accept_stub_quote().any_workload().end_dangerous().prefer_x25519().build().unwrap()
}

#[test]
fn aci_vectors_digest_statement_and_report_data() {
    let v = load("aci_vectors.json");
    let keyset = vector_keyset();
    let jcs_text = v["keyset"]["jcs"].as_str().unwrap();
    assert_eq!(jcs::to_vec(&keyset).unwrap(), jcs_text.as_bytes());
    let digest = keyset_digest(&keyset).unwrap();
    assert_eq!(digest, v["keyset"]["digest"].as_str().unwrap());
    assert_eq!(digest, digest_of(&keyset));

    let nonce = vector_nonce();
    assert_eq!(const_hex::encode(nonce), v["statement"]["nonce"].as_str().unwrap());
    let statement = report_statement(&digest, Some(&nonce));
    assert_eq!(statement, v["statement"]["bytes"].as_str().unwrap().as_bytes());
    assert_eq!(const_hex::encode(report_data(&digest, Some(&nonce))), v["statement"]["report_data"].as_str().unwrap());
    let mut slot = report_data(&digest, Some(&nonce)).to_vec();
    slot.extend_from_slice(&[0; 32]);
    assert_eq!(const_hex::encode(slot), v["statement"]["report_data_slot"].as_str().unwrap());

    let null = report_statement(&digest, None);
    assert_eq!(null, v["statement_null_nonce"]["bytes"].as_str().unwrap().as_bytes());
    assert_eq!(
        const_hex::encode(report_data(&digest, None)),
        v["statement_null_nonce"]["report_data"].as_str().unwrap()
    );
}

#[test]
fn a_report_built_from_the_vectors_verifies() {
    let v = load("aci_vectors.json");
    let nonce = vector_nonce();
    let report = seal_report(&vector_keyset(), Some(&nonce));
    assert_eq!(report["attestation"]["report_data"], v["statement"]["report_data"]);
    let ks = verify_report(&bytes(&report), &nonce, VECTOR_NOW, &x25519_stub_policy()).unwrap();
    assert_eq!(ks.digest(), v["keyset"]["digest"].as_str().unwrap());
    assert_eq!(ks.subject(), Some("dstack-app://example-app"));
    assert_eq!(ks.not_after(), 1_800_000_000);
    assert_eq!(ks.e2ee_key().key_id(), "e2ee-1");
    assert_eq!(ks.e2ee_key().suite(), Suite::X25519);
    assert_eq!(
        ks.receipt_key("receipt-1").unwrap().verifying_key().as_bytes().to_vec(),
        const_hex::decode(v["keys"]["receipt-1"]["public_key"].as_str().unwrap()).unwrap()
    );
    assert_eq!(ks.tls_keys().len(), 1);
    assert_eq!(ks.tls_keys()[0].domain.as_deref(), Some("api.example.com"));
    assert_eq!(ks.verified_at(), VECTOR_NOW);
    assert!(!ks.hardware_verified());
    // The default selection falls back to X25519 when the keyset has no secp256k1 key.
    let ks = verify_report(&bytes(&report), &nonce, VECTOR_NOW, &stub_policy()).unwrap();
    assert_eq!(ks.e2ee_key().key_id(), "e2ee-1");
}

// --- The reference's stub-quoted fixture -----------------------------------------------------

const FIXTURE_NONCE: &str = "cd20088d763605cf78564e5b35524ad52715419624b76e029582a3652758708d";
const FIXTURE_DIGEST: &str = "sha256:e338157d18d77aaa3d1186c9d96147c2d4edc0f1a169ace1243c0bc3ad701fad";
/// `not_after` of the fixture is 2000000000; verify thirty days before it.
const FIXTURE_NOW: u64 = 2_000_000_000 - 30 * DAY;

fn fixture_nonce() -> [u8; 32] {
    const_hex::decode(FIXTURE_NONCE).unwrap().try_into().unwrap()
}

fn fixture_with_v2() -> Value {
    let mut r = load("report_stub_quote.json");
    r["service_capabilities"]["supported_e2ee_versions"] = json!(["2"]);
    r
}

#[test]
fn stub_fixture_binds_but_offers_no_e2ee_v2() {
    let report = load("report_stub_quote.json");
    assert_eq!(report["workload_keyset_digest"], FIXTURE_DIGEST);
    assert_eq!(keyset_digest(&report["attestation"]["workload_keyset"]).unwrap(), FIXTURE_DIGEST);
    assert_eq!(
        const_hex::encode(report_data(FIXTURE_DIGEST, Some(&fixture_nonce()))),
        report["attestation"]["report_data"].as_str().unwrap()
    );
    // As served, the fixture advertises no E2EE version: never a plaintext fallback.
    let r = verify_report(&bytes(&report), &fixture_nonce(), FIXTURE_NOW, &stub_policy());
    assert_eq!(reason(r), F::E2eeUnsupported);
}

#[test]
fn stub_fixture_verifies_once_it_offers_v2() {
    let report = bytes(&fixture_with_v2());
    let ks = verify_report(&report, &fixture_nonce(), FIXTURE_NOW, &stub_policy()).unwrap();
    assert_eq!(ks.digest(), FIXTURE_DIGEST);
    assert_eq!(ks.subject(), None);
    assert_eq!(ks.e2ee_keys().len(), 2);
    assert_eq!(ks.e2ee_key().key_id(), "static-e2ee-key-secp256k1");
    assert_eq!(ks.e2ee_key().suite(), Suite::Secp256k1);
    assert_eq!(ks.receipt_keys()[0].key_id(), "static-receipt-ed25519");
    assert!(ks.tls_keys().is_empty());

    let x = Policy::builder()
        .dangerous()
        .accept_stub_quote()
        .any_workload()
        .end_dangerous()
        .prefer_x25519()
        .build()
        .unwrap();
    let ks = verify_report(&report, &fixture_nonce(), FIXTURE_NOW, &x).unwrap();
    assert_eq!(ks.e2ee_key().key_id(), "static-e2ee-x25519-key");

    let pinned = Policy::builder()
        .pin_key_id("static-e2ee-x25519-key")
        .dangerous()
        .accept_stub_quote()
        .any_workload()
        .build()
        .unwrap();
    let ks = verify_report(&report, &fixture_nonce(), FIXTURE_NOW, &pinned).unwrap();
    assert_eq!(ks.e2ee_key().key_id(), "static-e2ee-x25519-key");

    let missing = Policy::builder()
        .pin_key_id("dstack-kms-e2ee-v1")
        .dangerous()
        .accept_stub_quote()
        .any_workload()
        .build()
        .unwrap();
    assert_eq!(reason(verify_report(&report, &fixture_nonce(), FIXTURE_NOW, &missing)), F::NoUsableKey);
}

#[test]
fn default_policy_requires_hardware_verification() {
    let report = bytes(&fixture_with_v2());
    let r = verify_report(&report, &fixture_nonce(), FIXTURE_NOW, &pinned_policy());
    assert_eq!(reason(r), F::HardwareUnverifiable);
    // Accepting the stub does not accept a real quote.
    let mut real = fixture_with_v2();
    real["attestation"]["evidence"]["quote"] = json!("04000200810000000000");
    let r = verify_report(&bytes(&real), &fixture_nonce(), FIXTURE_NOW, &stub_policy());
    assert_eq!(reason(r), F::HardwareUnverifiable);
    // Skipping hardware verification does, but still checks a published slot.
    let skip = Policy::builder().dangerous().skip_hardware_verification().any_workload().build().unwrap();
    real["attestation"]["evidence"]["quote_report_data"] =
        json!(format!("{}{}", real["attestation"]["report_data"].as_str().unwrap(), "00".repeat(32)));
    assert!(verify_report(&bytes(&real), &fixture_nonce(), FIXTURE_NOW, &skip).is_ok());
    real["attestation"]["evidence"]["quote_report_data"] = json!("11".repeat(64));
    assert_eq!(reason(verify_report(&bytes(&real), &fixture_nonce(), FIXTURE_NOW, &skip)), F::Quote);
}

#[test]
fn stub_quote_slot_is_checked() {
    let nonce = fixture_nonce();
    // Slot of the stub quote does not carry report_data.
    let mut r = fixture_with_v2();
    let mut quote = b"aci-stub-quote|".to_vec();
    quote.extend_from_slice(&[0x42; 32]);
    r["attestation"]["evidence"]["quote"] = json!(const_hex::encode(&quote));
    assert_eq!(reason(verify_report(&bytes(&r), &nonce, FIXTURE_NOW, &stub_policy())), F::Quote);
    // quote_report_data differs from the slot.
    let mut r = fixture_with_v2();
    r["attestation"]["evidence"]["quote_report_data"] = json!("00".repeat(32));
    assert_eq!(reason(verify_report(&bytes(&r), &nonce, FIXTURE_NOW, &stub_policy())), F::Quote);
    // A 64-byte slot whose upper half is not zero.
    let mut r = seal_report(&vector_keyset(), Some(&vector_nonce()));
    let slot = format!("{}{}", r["attestation"]["report_data"].as_str().unwrap(), "01".repeat(32));
    r["attestation"]["evidence"]["quote"] = json!(format!("{}{slot}", const_hex::encode(b"aci-stub-quote|")));
    r["attestation"]["evidence"]["quote_report_data"] = json!(slot);
    assert_eq!(reason(verify_report(&bytes(&r), &vector_nonce(), VECTOR_NOW, &stub_policy())), F::Quote);
    // No quote at all.
    let mut r = fixture_with_v2();
    r["attestation"]["evidence"].as_object_mut().unwrap().remove("quote");
    assert_eq!(reason(verify_report(&bytes(&r), &nonce, FIXTURE_NOW, &stub_policy())), F::Quote);
}

// --- Tampers, each with its own reason -------------------------------------------------------

fn check(report: &Value, nonce: &[u8; 32], now: u64) -> tower_aci::Result<tower_aci::attest::AttestedKeyset> {
    verify_report(&bytes(report), nonce, now, &stub_policy())
}

#[test]
fn keyset_member_changed() {
    let mut r = fixture_with_v2();
    r["attestation"]["workload_keyset"]["e2ee_public_keys"][0]["public_key"] = json!(secp_public_hex(0x45));
    assert_eq!(reason(check(&r, &fixture_nonce(), FIXTURE_NOW)), F::KeysetDigest);
    let mut r = fixture_with_v2();
    r["attestation"]["workload_keyset"]["not_after"] = json!(2_000_000_001u64);
    assert_eq!(reason(check(&r, &fixture_nonce(), FIXTURE_NOW)), F::KeysetDigest);
    // Unknown members count: adding one changes the digest...
    let mut r = fixture_with_v2();
    r["attestation"]["workload_keyset"]["extra"] = json!("x");
    assert_eq!(reason(check(&r, &fixture_nonce(), FIXTURE_NOW)), F::KeysetDigest);
    // ...and a keyset sealed with it verifies.
    let mut keyset = vector_keyset();
    keyset["future_member"] = json!({"b": [1, 2], "a": null});
    let sealed = seal_report(&keyset, Some(&vector_nonce()));
    assert!(verify_report(&bytes(&sealed), &vector_nonce(), VECTOR_NOW, &stub_policy()).is_ok());
    // A re-published digest does not help: report_data no longer matches.
    let mut r = fixture_with_v2();
    r["attestation"]["workload_keyset"]["not_after"] = json!(2_000_000_001u64);
    r["workload_keyset_digest"] = json!(digest_of(&r["attestation"]["workload_keyset"]));
    assert_eq!(reason(check(&r, &fixture_nonce(), FIXTURE_NOW)), F::ReportData);
}

#[test]
fn keyset_that_cannot_be_canonicalised() {
    for (name, value) in [("not_after_float", json!(1.5)), ("é", json!(1))] {
        let mut keyset = vector_keyset();
        keyset[name] = value;
        let mut r = seal_report(&vector_keyset(), Some(&vector_nonce()));
        r["attestation"]["workload_keyset"] = keyset;
        assert_eq!(reason(check(&r, &vector_nonce(), VECTOR_NOW)), F::Canonicalization, "{name}");
    }
}

#[test]
fn wrong_nonce() {
    let mut other = fixture_nonce();
    other[0] ^= 1;
    assert_eq!(reason(check(&fixture_with_v2(), &other, FIXTURE_NOW)), F::ReportData);
}

#[test]
fn null_nonce_report_when_a_nonce_was_sent() {
    let r = seal_report(&vector_keyset(), None);
    let v = load("aci_vectors.json");
    assert_eq!(r["attestation"]["report_data"], v["statement_null_nonce"]["report_data"]);
    assert_eq!(reason(check(&r, &vector_nonce(), VECTOR_NOW)), F::Nonce);
}

#[test]
fn report_data_tampered() {
    let mut r = seal_report(&vector_keyset(), Some(&vector_nonce()));
    r["attestation"]["report_data"] = json!("ab".repeat(32));
    // The stub quote still carries the original report_data.
    assert_eq!(reason(check(&r, &vector_nonce(), VECTOR_NOW)), F::Quote);
    r["attestation"]["evidence"]["quote"] =
        json!(format!("{}{}", const_hex::encode(b"aci-stub-quote|"), "ab".repeat(32)));
    r["attestation"]["evidence"]["quote_report_data"] = json!("ab".repeat(32));
    assert_eq!(reason(check(&r, &vector_nonce(), VECTOR_NOW)), F::ReportData);
}

#[test]
fn expired() {
    let r = fixture_with_v2();
    assert_eq!(reason(check(&r, &fixture_nonce(), 2_000_000_000)), F::Expired);
    assert_eq!(reason(check(&r, &fixture_nonce(), 2_000_000_001)), F::Expired);
    assert!(check(&r, &fixture_nonce(), 1_999_999_999).is_ok());
}

#[test]
fn not_after_too_far() {
    let r = fixture_with_v2();
    let now = 2_000_000_000 - 401 * DAY;
    assert_eq!(reason(check(&r, &fixture_nonce(), now)), F::NotAfterTooFar);
    assert!(check(&r, &fixture_nonce(), 2_000_000_000 - 400 * DAY).is_ok());
    let wide = Policy::builder()
        .max_validity(Duration::from_secs(500 * DAY))
        .dangerous()
        .accept_stub_quote()
        .any_workload()
        .build()
        .unwrap();
    assert!(verify_report(&bytes(&r), &fixture_nonce(), now, &wide).is_ok());
}

#[test]
fn digest_mismatch() {
    let mut r = fixture_with_v2();
    r["workload_keyset_digest"] = json!(format!("sha256:{}", "00".repeat(32)));
    assert_eq!(reason(check(&r, &fixture_nonce(), FIXTURE_NOW)), F::KeysetDigest);
    let mut r = fixture_with_v2();
    r["workload_keyset_digest"] = json!(FIXTURE_DIGEST.to_uppercase());
    assert_eq!(reason(check(&r, &fixture_nonce(), FIXTURE_NOW)), F::KeysetDigest);
}

#[test]
fn unknown_api_version() {
    for v in [json!("aci/2"), json!("ACI/1"), json!(1), Value::Null] {
        let mut r = fixture_with_v2();
        r["api_version"] = v.clone();
        assert_eq!(reason(check(&r, &fixture_nonce(), FIXTURE_NOW)), F::ApiVersion, "{v}");
    }
    let mut r = fixture_with_v2();
    r.as_object_mut().unwrap().remove("api_version");
    assert_eq!(reason(check(&r, &fixture_nonce(), FIXTURE_NOW)), F::ApiVersion);
}

#[test]
fn e2ee_v2_must_be_offered() {
    for caps in [
        json!({"supported_e2ee_versions": ["1"]}),
        json!({"serving": "direct"}),
        json!(null),
        json!({"supported_e2ee_versions": [2]}),
    ] {
        let mut r = fixture_with_v2();
        r["service_capabilities"] = caps.clone();
        assert_eq!(reason(check(&r, &fixture_nonce(), FIXTURE_NOW)), F::E2eeUnsupported, "{caps}");
    }
    // Unknown capability members and serving modes are ignored.
    let mut r = fixture_with_v2();
    r["service_capabilities"] = json!({"supported_e2ee_versions": ["1", "2"], "serving": "mesh", "x": {}});
    assert!(check(&r, &fixture_nonce(), FIXTURE_NOW).is_ok());
}

#[test]
fn not_a_report() {
    let nonce = fixture_nonce();
    let p = stub_policy();
    assert_eq!(reason(verify_report(b"not json", &nonce, FIXTURE_NOW, &p)), F::Shape);
    assert_eq!(reason(verify_report(b"[]", &nonce, FIXTURE_NOW, &p)), F::Shape);
    for path in ["attestation", "workload_keyset_digest"] {
        let mut r = fixture_with_v2();
        r.as_object_mut().unwrap().remove(path);
        assert_eq!(reason(check(&r, &nonce, FIXTURE_NOW)), F::Shape, "{path}");
    }
    let mut r = fixture_with_v2();
    r["attestation"]["report_data"] = json!("abcd");
    assert_eq!(reason(check(&r, &nonce, FIXTURE_NOW)), F::Shape);
    let mut r = fixture_with_v2();
    r["attestation"]["workload_keyset"] = json!([]);
    assert_eq!(reason(check(&r, &nonce, FIXTURE_NOW)), F::Shape);
}

// --- Keys ------------------------------------------------------------------------------------

fn resealed(edit: impl FnOnce(&mut Value)) -> Value {
    let mut keyset = vector_keyset();
    edit(&mut keyset);
    seal_report(&keyset, Some(&vector_nonce()))
}

#[test]
fn unknown_algorithms_are_ignored_and_malformed_keys_refused() {
    let r = resealed(|k| {
        k["e2ee_public_keys"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key_id": "pq", "algo": "ml-kem-768", "public_key": "00"}));
        k["receipt_signing_keys"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key_id": "r2", "algo": "ml-dsa", "public_key": "zz"}));
    });
    let ks = verify_report(&bytes(&r), &vector_nonce(), VECTOR_NOW, &stub_policy()).unwrap();
    assert_eq!(ks.e2ee_keys().len(), 1);
    assert_eq!(ks.receipt_keys().len(), 1);

    let bad_keys: [fn(&mut Value); 4] = [
        |k| k["e2ee_public_keys"][0]["public_key"] = json!("00".repeat(32)),
        |k| k["e2ee_public_keys"][0]["public_key"] = json!("5dfe"),
        |k| k["receipt_signing_keys"][0]["public_key"] = json!("81".repeat(31)),
        |k| k["tls_public_keys"][0]["spki_sha256"] = json!("c0c0"),
    ];
    for edit in bad_keys {
        let r = resealed(edit);
        assert_eq!(reason(check(&r, &vector_nonce(), VECTOR_NOW)), F::BadKey);
    }
    let r = resealed(|k| {
        k["e2ee_public_keys"].as_array_mut().unwrap().push(json!({
            "key_id": "s", "algo": "secp256k1-aes-256-gcm-hkdf-sha256", "public_key": format!("04{}", "11".repeat(64))
        }));
    });
    assert_eq!(reason(check(&r, &vector_nonce(), VECTOR_NOW)), F::BadKey);
}

#[test]
fn key_selection() {
    let r = resealed(|k| {
        let keys = k["e2ee_public_keys"].as_array_mut().unwrap();
        keys.push(json!({"key_id": "other-secp", "algo": "secp256k1-aes-256-gcm-hkdf-sha256", "public_key": secp_public_hex(0x46)}));
        keys.push(json!({"key_id": "dstack-kms-e2ee-v1", "algo": "secp256k1-aes-256-gcm-hkdf-sha256", "public_key": secp_public_hex(0x44)}));
    });
    let ks = verify_report(&bytes(&r), &vector_nonce(), VECTOR_NOW, &stub_policy()).unwrap();
    assert_eq!(ks.e2ee_key().key_id(), "dstack-kms-e2ee-v1");
    let ks = verify_report(&bytes(&r), &vector_nonce(), VECTOR_NOW, &x25519_stub_policy()).unwrap();
    assert_eq!(ks.e2ee_key().key_id(), "e2ee-1");

    let r = resealed(|_| {});
    let secp_only = Policy::builder()
        .select_suite(Suite::Secp256k1)
        .dangerous()
        .accept_stub_quote()
        .any_workload()
        .build()
        .unwrap();
    assert_eq!(reason(verify_report(&bytes(&r), &vector_nonce(), VECTOR_NOW, &secp_only)), F::NoUsableKey);
    let r = resealed(|k| k["e2ee_public_keys"] = json!([]));
    assert_eq!(reason(check(&r, &vector_nonce(), VECTOR_NOW)), F::NoUsableKey);
}

// --- Allowlists ------------------------------------------------------------------------------

#[test]
fn allowlists() {
    let r = bytes(&seal_report(&vector_keyset(), Some(&vector_nonce())));
    let n = vector_nonce();
    let with = |b: tower_aci::attest::PolicyBuilder| b.dangerous().accept_stub_quote().any_workload().build().unwrap();

    let ok = with(Policy::builder().allow_source("https://github.com/Dstack-TEE/private-ai-gateway", "deadbeef"));
    assert!(verify_report(&r, &n, VECTOR_NOW, &ok).is_ok());
    let no = with(Policy::builder().allow_source("https://github.com/Dstack-TEE/private-ai-gateway", "cafe"));
    assert_eq!(reason(verify_report(&r, &n, VECTOR_NOW, &no)), F::NotAllowed);
    let no = with(Policy::builder().allow_image_digest("sha256:aa"));
    assert_eq!(reason(verify_report(&r, &n, VECTOR_NOW, &no)), F::NotAllowed);
    let no = with(Policy::builder().allow_compose_hash(&"00".repeat(32)));
    assert_eq!(reason(verify_report(&r, &n, VECTOR_NOW, &no)), F::NotAllowed);
    let no = with(Policy::builder().allow_app_id("aa"));
    assert_eq!(reason(verify_report(&r, &n, VECTOR_NOW, &no)), F::NotAllowed);
    let no = with(Policy::builder().allow_os_image_hash("aa"));
    assert_eq!(reason(verify_report(&r, &n, VECTOR_NOW, &no)), F::NotAllowed);

    // The compose hash of a published app_compose, and an app id named by the subject.
    let compose = r#"{"services":{}}"#;
    let mut keyset = vector_keyset();
    keyset["subject"] = json!("app-id:0xaabbcc");
    let mut report = seal_report(&keyset, Some(&n));
    report["attestation"]["evidence"]["app_compose"] = json!(compose);
    let report = bytes(&report);
    let hash = const_hex::encode(<sha2::Sha256 as sha2::Digest>::digest(compose.as_bytes()));
    let ok = with(Policy::builder().allow_compose_hash(&hash).allow_app_id("0xAABBCC"));
    assert!(verify_report(&report, &n, VECTOR_NOW, &ok).is_ok());
    let no = with(Policy::builder().allow_app_id("aabbcd"));
    assert_eq!(reason(verify_report(&report, &n, VECTOR_NOW, &no)), F::NotAllowed);
}

// --- Key custody -----------------------------------------------------------------------------

const CUSTODY_NOW: u64 = 1_900_000_000;

struct Custody {
    kms: TestKms,
    report: Value,
}

impl Custody {
    fn new() -> Custody {
        let kms = TestKms::new();
        let subject = format!("app-id:0x{}", const_hex::encode(&kms.app_id));
        let mut report = seal_report(&production_keyset(Some(&subject), CUSTODY_NOW + 30 * DAY), Some(&[9; 32]));
        report["attestation"]["evidence"]["key_custody"] = kms.custody();
        Custody { kms, report }
    }

    /// Custody verified (a KMS root), the keys used unanchored: these tests are about the
    /// chains, not about which keys an anchor covers (tests/all/anchors.rs).
    fn policy(&self) -> Policy {
        custody_builder(&const_hex::encode(&self.kms.app_id), &self.kms.root_hex()).accept_stub_quote().build().unwrap()
    }

    fn verify(&self, report: &Value, policy: &Policy) -> tower_aci::Result<tower_aci::attest::AttestedKeyset> {
        verify_report(&bytes(report), &[9; 32], CUSTODY_NOW, policy)
    }

    fn tampered(&self, edit: impl FnOnce(&mut Value)) -> AttestationFailureOrOk {
        let mut r = self.report.clone();
        edit(&mut r["attestation"]["evidence"]["key_custody"]);
        match self.verify(&r, &self.policy()) {
            Ok(_) => AttestationFailureOrOk::Ok,
            Err(e) => match e.kind() {
                ErrorKind::Attestation(f) => AttestationFailureOrOk::Failed(f),
                k => panic!("{k:?}"),
            },
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum AttestationFailureOrOk {
    Ok,
    Failed(F),
}
use AttestationFailureOrOk::{Failed, Ok as Passed};

#[test]
fn custody_chain_verifies_for_all_three_roles() {
    let c = Custody::new();
    let ks = c.verify(&c.report, &c.policy()).unwrap();
    assert_eq!(ks.e2ee_key().key_id(), "dstack-kms-e2ee-v1");
    // The app id may come from the policy instead of the subject.
    let mut r = c.report.clone();
    r["attestation"]["workload_keyset"]["subject"] = Value::Null;
    let r = {
        let mut sealed = seal_report(&r["attestation"]["workload_keyset"], Some(&[9; 32]));
        sealed["attestation"]["evidence"]["key_custody"] = c.kms.custody();
        sealed
    };
    // No app id known: the app-id pin cannot be met, and custody cannot be verified.
    assert_eq!(reason(c.verify(&r, &c.policy())), F::NotAllowed, "no app id known");
    let root_only = Policy::builder()
        .accept_kms_root(&c.kms.root_hex())
        .dangerous()
        .accept_stub_quote()
        .any_workload()
        .build()
        .unwrap();
    assert_eq!(reason(c.verify(&r, &root_only)), F::Custody, "no app id known");
    let assumed = Policy::builder()
        .accept_kms_root(&c.kms.root_hex())
        .dangerous()
        .accept_stub_quote()
        .any_workload()
        .assume_app_id(&const_hex::encode(&c.kms.app_id))
        .build()
        .unwrap();
    assert!(c.verify(&r, &assumed).is_ok());
    let wrong_app = Policy::builder()
        .accept_kms_root(&c.kms.root_hex())
        .dangerous()
        .accept_stub_quote()
        .any_workload()
        .assume_app_id("bb")
        .build()
        .unwrap();
    assert_eq!(reason(c.verify(&r, &wrong_app)), F::Custody);
    // An assumed app id that contradicts the subject.
    assert_eq!(reason(c.verify(&c.report, &wrong_app)), F::NotAllowed);
}

#[test]
fn custody_policy_modes() {
    let c = Custody::new();
    // Present, no roots configured: there is nothing to verify it against, so it is not judged
    // (a workload pin must then be anchored by boot measurements).
    assert!(c.verify(&c.report, &stub_policy()).is_ok());
    // Dangerous skip.
    let skip = Policy::builder().dangerous().accept_stub_quote().any_workload().skip_key_custody().build().unwrap();
    assert!(c.verify(&c.report, &skip).is_ok());
    // Required but absent.
    let mut r = c.report.clone();
    r["attestation"]["evidence"].as_object_mut().unwrap().remove("key_custody");
    assert_eq!(reason(c.verify(&r, &c.policy())), F::Custody);
    // A KMS root makes custody required: a report that drops it fails, with or without an
    // explicit require_key_custody().
    let root_only = Policy::builder()
        .accept_kms_root(&c.kms.root_hex())
        .dangerous()
        .accept_stub_quote()
        .any_workload()
        .build()
        .unwrap();
    assert!(root_only.requires_key_custody());
    assert_eq!(reason(c.verify(&r, &root_only)), F::Custody);
    assert!(c.verify(&c.report, &root_only).is_ok());
    // Absent and not required (no KMS root).
    assert!(c.verify(&r, &stub_policy()).is_ok());
}

#[test]
fn custody_wrong_root() {
    let c = Custody::new();
    let other = custody_builder(&const_hex::encode(&c.kms.app_id), &compressed_hex(&signing_key(0x12)))
        .accept_stub_quote()
        .build()
        .unwrap();
    assert_eq!(reason(c.verify(&c.report, &other)), F::Custody);
    // Chains signed by another root.
    let rogue = TestKms { root: signing_key(0x13), ..TestKms::new() };
    assert_eq!(c.tampered(|kc| *kc = rogue.custody()), Failed(F::Custody));
}

#[test]
fn custody_swapped_chain() {
    let c = Custody::new();
    for i in 0..3 {
        assert_eq!(
            c.tampered(|kc| {
                let chain = kc["keys"][i]["signature_chain"].as_array_mut().unwrap();
                chain.swap(0, 1);
            }),
            Failed(F::Custody),
            "entry {i}"
        );
    }
    // Chains moved between entries.
    assert_eq!(
        c.tampered(|kc| {
            let a = kc["keys"][1]["signature_chain"].clone();
            kc["keys"][2]["signature_chain"] = a;
        }),
        Failed(F::Custody)
    );
}

#[test]
fn custody_bad_v() {
    let c = Custody::new();
    let set_v = |v: u8| {
        move |kc: &mut Value| {
            let sig = kc["keys"][0]["signature_chain"][0].as_str().unwrap();
            let mut raw = const_hex::decode(sig).unwrap();
            raw[64] = v;
            kc["keys"][0]["signature_chain"][0] = json!(const_hex::encode(raw));
        }
    };
    for v in [4, 26, 31, 255] {
        assert_eq!(c.tampered(set_v(v)), Failed(F::Custody), "v = {v}");
    }
    // The other recovery id recovers another key.
    let original = const_hex::decode(
        c.report["attestation"]["evidence"]["key_custody"]["keys"][0]["signature_chain"][0].as_str().unwrap(),
    )
    .unwrap()[64];
    assert_eq!(c.tampered(set_v(original ^ 1)), Failed(F::Custody));
    // Both conventions are accepted.
    assert_eq!(c.tampered(set_v(original + 27)), Passed);
}

#[test]
fn custody_wrong_purpose_path_or_algo() {
    let c = Custody::new();
    assert_eq!(c.tampered(|kc| kc["keys"][0]["purpose"] = json!("aci.e2ee.v1")), Failed(F::Custody));
    assert_eq!(c.tampered(|kc| kc["keys"][1]["purpose"] = json!("aci.legacy.ed25519.v1")), Failed(F::Custody));
    assert_eq!(c.tampered(|kc| kc["keys"][1]["path"] = json!("aci/e2ee/v2")), Failed(F::Custody));
    assert_eq!(c.tampered(|kc| kc["keys"][2]["algo"] = json!("ed25519")), Failed(F::Custody));
    // A chain honestly signed for the wrong purpose still fails the table check.
    let kms = TestKms::new();
    assert_eq!(
        c.tampered(|kc| {
            let key = kc["keys"][1]["kms_public_key"].as_str().unwrap().to_owned();
            kc["keys"][1]["purpose"] = json!("aci.e2ee.v2");
            kc["keys"][1]["signature_chain"] = json!(kms.chain("aci.e2ee.v2", &key));
        }),
        Failed(F::Custody)
    );
}

#[test]
fn custody_wrong_public_key() {
    let c = Custody::new();
    assert_eq!(c.tampered(|kc| kc["keys"][0]["public_key"] = json!(ed25519_public_hex(0x32))), Failed(F::Custody));
    assert_eq!(c.tampered(|kc| kc["keys"][2]["public_key"] = json!(x25519_public_hex(0x56))), Failed(F::Custody));
    // The same key in another case is another string.
    assert_eq!(
        c.tampered(|kc| kc["keys"][1]["public_key"] = json!(secp_public_hex(0x44).to_uppercase())),
        Failed(F::Custody)
    );
    // A keyset key without an entry.
    assert_eq!(
        c.tampered(|kc| {
            kc["keys"].as_array_mut().unwrap().remove(2);
        }),
        Failed(F::Custody)
    );
    assert_eq!(
        c.tampered(|kc| {
            kc["keys"].as_array_mut().unwrap().remove(0);
        }),
        Failed(F::Custody)
    );
}

#[test]
fn custody_kms_key_must_be_the_secp256k1_e2ee_key() {
    let c = Custody::new();
    let kms = TestKms::new();
    // A correctly signed chain over another released key: only the E2EE link fails.
    let other = compressed_hex(&signing_key(0x47));
    assert_eq!(
        c.tampered(|kc| {
            kc["keys"][1]["kms_public_key"] = json!(other);
            kc["keys"][1]["signature_chain"] = json!(kms.chain("aci.e2ee.v1", &other));
        }),
        Failed(F::Custody)
    );
    // The same check does not apply to X25519 (it cannot be made from outside).
    assert_eq!(
        c.tampered(|kc| {
            kc["keys"][2]["kms_public_key"] = json!(other);
            kc["keys"][2]["signature_chain"] = json!(kms.chain("aci.e2ee.x25519.v1", &other));
        }),
        Passed
    );
    // The uncompressed form of the right key is accepted.
    let uncompressed = const_hex::encode(signing_key(0x44).verifying_key().to_encoded_point(false).as_bytes());
    assert_eq!(c.tampered(|kc| kc["keys"][1]["kms_public_key"] = json!(uncompressed)), Passed);
}

#[test]
fn custody_malformed() {
    let c = Custody::new();
    type Edit = Box<dyn Fn(&mut Value)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("provider", Box::new(|kc| kc["provider"] = json!("aws-kms"))),
        (
            "no keys",
            Box::new(|kc| {
                kc.as_object_mut().unwrap().remove("keys");
            }),
        ),
        (
            "three sigs",
            Box::new(|kc| {
                let s = kc["keys"][0]["signature_chain"][0].clone();
                kc["keys"][0]["signature_chain"].as_array_mut().unwrap().push(s);
            }),
        ),
        (
            "one sig",
            Box::new(|kc| {
                kc["keys"][0]["signature_chain"].as_array_mut().unwrap().pop();
            }),
        ),
        ("not hex", Box::new(|kc| kc["keys"][0]["signature_chain"][0] = json!("zz".repeat(65)))),
        ("short", Box::new(|kc| kc["keys"][0]["signature_chain"][0] = json!("11".repeat(64)))),
        ("kms key", Box::new(|kc| kc["keys"][0]["kms_public_key"] = json!("02".repeat(33)))),
        ("entry", Box::new(|kc| kc["keys"][0] = json!("receipt"))),
        ("not object", Box::new(|kc| *kc = json!("dstack-kms"))),
    ];
    for (name, edit) in edits {
        assert_eq!(c.tampered(edit), Failed(F::Custody), "{name}");
    }
    // Entries of unknown roles are ignored.
    assert_eq!(
        c.tampered(|kc| kc["keys"].as_array_mut().unwrap().push(json!({"role": "legacy-ed25519", "x": 1}))),
        Passed
    );
}

// --- Event log (unverified under dangerous(); replayed to RTMR3 by the hardware verifier) ----

fn runtime_event(name: &str, payload: &[u8]) -> Value {
    json!({"imr": 3, "event_type": 0x0800_0001u32, "digest": "", "event": name, "event_payload": const_hex::encode(payload)})
}

fn with_event_log(app_id: &[u8], compose: &str, published_compose: &str) -> Value {
    let kms = TestKms::new();
    let hash = <sha2::Sha256 as sha2::Digest>::digest(compose.as_bytes());
    let log = json!([
        runtime_event("app-id", app_id),
        runtime_event("compose-hash", &hash),
        runtime_event("system-ready", b""),
    ]);
    let mut r = seal_report(&production_keyset(None, CUSTODY_NOW + DAY), Some(&[9; 32]));
    let evidence = &mut r["attestation"]["evidence"];
    evidence["event_log"] = json!(log.to_string());
    evidence["app_compose"] = json!(published_compose);
    evidence["key_custody"] = kms.custody();
    r
}

#[test]
fn event_log_supplies_app_id_and_compose_hash() {
    let kms = TestKms::new();
    let compose = r#"{"services":{"gateway":{"image":"gw@sha256:00"}}}"#;
    let hash = const_hex::encode(<sha2::Sha256 as sha2::Digest>::digest(compose.as_bytes()));
    let policy = Policy::builder()
        .accept_kms_root(&kms.root_hex())
        .require_key_custody()
        .allow_compose_hash(&hash)
        .allow_app_id(&const_hex::encode(&kms.app_id))
        .dangerous()
        .skip_hardware_verification()
        .unanchored_pin()
        .build()
        .unwrap();
    let verify = |r: &Value| verify_report(&bytes(r), &[9; 32], CUSTODY_NOW, &policy);

    // Custody verifies against the app id of the event log.
    let ks = verify(&with_event_log(&kms.app_id, compose, compose)).unwrap();
    assert!(!ks.hardware_verified());

    // app_compose that does not hash to the measured compose-hash.
    assert_eq!(reason(verify(&with_event_log(&kms.app_id, compose, "{}"))), F::EventLog);
    // Another compose, consistently logged: not on the allowlist.
    assert_eq!(reason(verify(&with_event_log(&kms.app_id, "{}", "{}"))), F::NotAllowed);
    // Another app: not on the allowlist.
    assert_eq!(reason(verify(&with_event_log(&[0xbb; 20], compose, compose))), F::NotAllowed);
    // The subject names another app than the log.
    let mut r = with_event_log(&kms.app_id, compose, compose);
    let mut keyset = r["attestation"]["workload_keyset"].clone();
    keyset["subject"] = json!("app-id:0xbbbb");
    let mut resealed = seal_report(&keyset, Some(&[9; 32]));
    for member in ["event_log", "app_compose", "key_custody"] {
        resealed["attestation"]["evidence"][member] = r["attestation"]["evidence"][member].take();
    }
    assert_eq!(reason(verify(&resealed)), F::NotAllowed);
    // A malformed log.
    let mut r = with_event_log(&kms.app_id, compose, compose);
    r["attestation"]["evidence"]["event_log"] = json!([]);
    assert_eq!(reason(verify(&r)), F::EventLog);
    r["attestation"]["evidence"]["event_log"] = json!("not json");
    assert_eq!(reason(verify(&r)), F::EventLog);
}
