//! The real TDX capture (`tests/data/real_tdx_report_2026-06.json`: a production gateway's report
//! of 2026-06-28 in an older report schema, fetched with nonce `00…01`; see
//! `src/attest/tests/real_capture.rs` for the unit tests on its quote, event log and custody chains)
//! through the public API: it is of the older (June 2026) report generation, which a default
//! policy verifies (and `current_generation_only` refuses with `Generation`); never a wrong
//! success and never a panic.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower_aci::attest::{Generation, Policy, keyset_digest, report_data, verify_report};
use tower_aci::protocol::jcs;
use tower_aci::{AttestationFailure as F, ErrorKind};

use crate::attest_support::{REAL_APP_ID, REAL_COMPOSE_HASH, REAL_KMS_ROOT, load, pinned_builder, pinned_policy};

/// The nonce the report was fetched with.
const NONCE: [u8; 32] = {
    let mut n = [0; 32];
    n[31] = 1;
    n
};
/// `attestation.freshness.fetched_at` of the capture.
const FETCHED_AT: u64 = 1_782_664_738;

fn capture() -> Value {
    load("real_tdx_report_2026-06.json")
}

fn capture_bytes() -> Vec<u8> {
    serde_json::to_vec(&capture()).unwrap()
}

fn skip_hardware() -> Policy {
    Policy::builder().dangerous().skip_hardware_verification().any_workload().build().unwrap()
}

fn failure<T: std::fmt::Debug>(r: tower_aci::Result<T>) -> (F, String) {
    match r {
        Ok(v) => panic!("expected an attestation failure, got {v:?}"),
        Err(e) => match e.kind() {
            ErrorKind::Attestation(f) => (f, e.to_string()),
            other => panic!("expected an attestation failure, got {other:?}: {e}"),
        },
    }
}

/// `attestation.freshness.stale_after` of the capture.
const STALE_AFTER: u64 = 1_782_668_338;

/// Hardware verification skipped (dangerous), so boot measurements cannot be matched: the app
/// pinned by its id and compose hash and anchored by the KMS root alone (custody required), which
/// for this generation covers every key (the identity key's chain signs its own bytes and the
/// identity key endorses the keyset).
fn skip_hardware_with_custody() -> Policy {
    Policy::builder()
        .allow_app_id(REAL_APP_ID)
        .allow_compose_hash(REAL_COMPOSE_HASH)
        .accept_kms_root(REAL_KMS_ROOT)
        .dangerous()
        .skip_hardware_verification()
        .accept_unauthenticated_answers()
        .build()
        .unwrap()
}

#[test]
fn the_real_report_is_of_the_older_generation_and_verifies_as_such() {
    let report = capture();
    let claimed = report["attestation"]["report_data"].as_str().unwrap();

    // Why the current rule does not apply: the keyset digest is right, but report_data binds the
    // older statement, which names workload_id too.
    let keyset = &report["attestation"]["workload_keyset"];
    let digest = report["workload_keyset_digest"].as_str().unwrap();
    assert_eq!(keyset_digest(keyset).unwrap(), digest);
    assert_ne!(const_hex::encode(report_data(digest, Some(&NONCE))), claimed);
    assert_ne!(const_hex::encode(report_data(digest, None)), claimed);
    let old_statement = json!({
        "nonce": const_hex::encode(NONCE),
        "purpose": "aci.report_data.v1",
        "workload_id": report["workload_id"],
        "workload_keyset_digest": digest,
    });
    assert_eq!(const_hex::encode(Sha256::digest(jcs::to_vec(&old_statement).unwrap())), claimed);

    // A policy for the current generation only refuses it, with its own failure.
    let current_only =
        pinned_builder().current_generation_only().dangerous().skip_hardware_verification().unanchored_pin();
    let current_only = current_only.build();
    let (f, message) = failure(verify_report(&capture_bytes(), &NONCE, FETCHED_AT, &current_only.unwrap()));
    assert_eq!(f, F::Generation, "{message}");

    // By default the older generation verifies (the quote unverified here: see
    // src/attest/tests/end_to_end.rs for the end-to-end run with only the collateral skipped).
    let ks = verify_report(&capture_bytes(), &NONCE, FETCHED_AT, &skip_hardware_with_custody()).unwrap();
    assert_eq!(ks.generation(), Generation::Legacy);
    assert_eq!(ks.digest(), digest);
    assert_eq!(ks.not_after(), STALE_AFTER);
    assert_eq!(ks.e2ee_key().key_id(), "dstack-kms-e2ee-v1");
    assert!(!ks.hardware_verified());
    // The KMS root alone covers every key of this generation's keyset, its TLS keys included.
    assert_eq!(ks.anchor(), tower_aci::attest::Anchor::KmsCustody);
    assert_eq!(ks.tls_keys().len(), 3);
    assert_eq!(ks.kms_identity().as_deref(), Some(crate::attest_support::REAL_KMS_IDENTITY));
    // For another nonce its binding fails.
    let (f, _) = failure(verify_report(&capture_bytes(), &[7; 32], FETCHED_AT, &skip_hardware_with_custody()));
    assert_eq!(f, F::ReportData);
    // Under another KMS root its custody chains are refused.
    let other_root = Policy::builder()
        .allow_app_id(REAL_APP_ID)
        .accept_kms_root("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
        .dangerous()
        .skip_hardware_verification()
        .accept_unauthenticated_answers()
        .build()
        .unwrap();
    let (f, message) = failure(verify_report(&capture_bytes(), &NONCE, FETCHED_AT, &other_root));
    assert_eq!(f, F::Custody, "{message}");
}

#[test]
fn a_fail_closed_policy_refuses_the_real_report_before_the_binding() {
    // Without the `dcap` feature there is no quote verifier; with it, no collateral was captured.
    let (f, message) = failure(verify_report(&capture_bytes(), &NONCE, FETCHED_AT, &pinned_policy()));
    assert_eq!(f, F::HardwareUnverifiable, "{message}");
}

#[test]
fn cut_or_corrupted_captures_fail_without_panicking() {
    let bytes = capture_bytes();
    for policy in [pinned_policy(), skip_hardware()] {
        for len in (0..bytes.len()).step_by(53) {
            assert!(verify_report(&bytes[..len], &NONCE, FETCHED_AT, &policy).is_err(), "cut to {len}");
        }
    }
    // Every evidence member replaced by a value of the wrong type, or removed: never a panic.
    // Under a policy that skips the hardware check, the members the remaining checks rest on
    // (the event log that measures the pinned app id, key custody) cannot be dropped or
    // mistyped; the end-to-end tests in src/attest/tests/end_to_end.rs cover the quote itself.
    let report = capture();
    let members: Vec<String> = report["attestation"]["evidence"].as_object().unwrap().keys().cloned().collect();
    for member in members {
        let must_fail = ["event_log", "key_custody"].contains(&member.as_str());
        let mut changes: Vec<Value> = Vec::new();
        for replacement in [Value::Null, json!(1), json!("zz"), json!([]), json!({})] {
            let mut changed = report.clone();
            changed["attestation"]["evidence"][&member] = replacement;
            changes.push(changed);
        }
        let mut changed = report.clone();
        changed["attestation"]["evidence"].as_object_mut().unwrap().remove(&member);
        changes.push(changed);
        for changed in changes {
            let what = &changed["attestation"]["evidence"][&member];
            for policy in [pinned_policy(), skip_hardware_with_custody()] {
                let r = verify_report(&serde_json::to_vec(&changed).unwrap(), &NONCE, FETCHED_AT, &policy);
                if must_fail || policy.requires_hardware_verification() {
                    assert!(r.is_err(), "{member} = {what}");
                }
            }
        }
    }
}

#[cfg(feature = "dcap")]
mod dcap {
    use tower_aci::attest::dcap::Collateral;
    use tower_aci::attest::verify_report_with_collateral;

    use super::*;

    /// dcap-qvl's sample collateral (`tests/data/dcap/`), for another platform and another time.
    fn sample_collateral() -> Collateral {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dcap/tdx_quote_collateral.json");
        Collateral::from_json(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn collateral_of_another_platform_does_not_verify_the_real_quote() {
        let c = sample_collateral();
        assert_eq!(c.fmspc(), Some("B0C06F000000"));
        // Offline collateral is selected by the FMSPC of the real quote's PCK certificate.
        let policy = pinned_builder().collateral(c.clone()).build().unwrap();
        let (f, message) = failure(verify_report(&capture_bytes(), &NONCE, FETCHED_AT, &policy));
        assert_eq!(f, F::HardwareUnverifiable, "{message}");
        assert!(message.contains("no collateral for the quote's platform (FMSPC"), "{message}");
        // Collateral handed in directly is used as is and does not verify the quote.
        let (f, message) =
            failure(verify_report_with_collateral(&capture_bytes(), &NONCE, FETCHED_AT, &pinned_policy(), &c));
        assert_eq!(f, F::Quote, "{message}");
    }
}
