//! The real capture through the whole of `verify_report`, end to end (issue 19).
//!
//! `verify_report_skipping_collateral` runs every step of `verify_report` on the real bytes under
//! a pinned, non-dangerous policy, with ONE check skipped: the DCAP collateral check (the quote's
//! signature chain to Intel's root and its TCB status), because no collateral was captured with
//! the report. The quote is still parsed by dcap-qvl; `tee_type`, `quote_report_data`, the
//! report-data slot (`report_data ‖ 32 zero bytes`) are checked, and RTMR3 comes from the
//! (unverified) TD report body, to which the event log must replay. The keyset then says
//! `hardware_verified() == false`, and `verify_report` itself (which does not skip it) refuses the
//! same report with `HardwareUnverifiable`.

use serde_json::Value;

use super::capture::*;
use crate::attest::generation::Generation;
use crate::attest::policy::Policy;
use crate::attest::report::{verify_report, verify_report_skipping_collateral};
use crate::attest::{AttestedKeyset, PolicyBuilder};
use crate::error::{AttestationFailure as F, ErrorKind, Result};
use crate::hex;

/// The nonce the capture was fetched with: `00…01`.
const NONCE: [u8; 32] = {
    let mut n = [0; 32];
    n[31] = 1;
    n
};
/// `attestation.freshness` of the capture.
const FETCHED_AT: u64 = 1_782_664_738;
const STALE_AFTER: u64 = 1_782_668_338;
/// The published keyset digest and workload id, from the spec's notes / the capture.
const DIGEST: &str = "sha256:46cdea445e5f2abcb78a5db0a630e7ba2127bc4f24033aa628b49e310e3928e2";
/// The E2EE key `dstack-kms-e2ee-v1`.
const E2EE_KEY: &str = "04943cea0b4babf60f6e2031e9a00866a37c4ae696fb45895b3a9b38ab8cbb898f42c85b704aceaa0a396cf26f7fdf79d83205be7e11d3a5d70419a68277158c3d";
/// The domain-scoped TLS SPKIs the notes list.
const API_REDPILL_SPKI: &str = "c2ebede7c2c632381123e3193b01f5f3fa45cc6c6327b2d0536749348ceeb408";
const INFERENCE_PHALA_SPKI: &str = "698c87b1ed32d3d67f23d14295fc443e91b82ad4e40482041ac1a9158c8212e2";

/// The production policy for this gateway: the sound combination (compose hash, boot
/// measurements, KMS identity) with the app id and the KMS root (custody required) beside it;
/// hardware verification required; nothing dangerous.
fn pinned() -> PolicyBuilder {
    sound().accept_kms_root(KMS_ROOT).allow_app_id(APP_ID)
}

fn bytes(doc: &Value) -> Vec<u8> {
    serde_json::to_vec(doc).unwrap()
}

fn verify(doc: &Value, nonce: &[u8; 32], policy: &Policy) -> Result<AttestedKeyset> {
    verify_report_skipping_collateral(&bytes(doc), nonce, FETCHED_AT, policy)
}

fn spki(text: &str) -> [u8; 32] {
    hex::decode(text).unwrap().try_into().unwrap()
}

#[test]
fn the_real_capture_verifies_end_to_end_with_only_the_collateral_check_skipped() {
    let policy = pinned().build().unwrap();
    assert!(!policy.is_dangerous() && policy.requires_hardware_verification() && policy.requires_key_custody());

    // The raw served bytes, not a re-serialisation.
    let ks = verify_report_skipping_collateral(REPORT.as_bytes(), &NONCE, FETCHED_AT, &policy)
        .unwrap_or_else(|e| panic!("the real capture verifies: {e}"));
    assert_eq!(ks.generation(), Generation::Legacy);
    assert_eq!(ks.digest(), DIGEST);
    assert_eq!(ks.subject(), None);
    // Validity is the report's freshness, not the keyset's u64::MAX epoch.
    assert_eq!(ks.not_after(), STALE_AFTER);
    assert!(ks.is_valid_at(STALE_AFTER - 1) && !ks.is_valid_at(STALE_AFTER));
    // Only dstack-kms-e2ee-v1 is kept and selected; the legacy entries never are.
    assert_eq!(ks.e2ee_keys().len(), 1);
    assert_eq!(ks.e2ee_key().key_id(), "dstack-kms-e2ee-v1");
    assert_eq!(ks.e2ee_key().public_key_text(), E2EE_KEY);
    // That generation signs receipts with secp256k1, which is not verified here.
    assert!(ks.receipt_keys().is_empty());
    // TLS: the domain-scoped SPKIs, each only for its host.
    assert!(ks.lists_tls_key("api.redpill.ai", &spki(API_REDPILL_SPKI)));
    assert!(ks.lists_tls_key("API.redpill.ai.", &spki(API_REDPILL_SPKI)));
    assert_eq!(ks.tls_keys_for_host("api.redpill.ai").count(), 1);
    assert!(!ks.lists_tls_key("api.redpill.ai", &spki(INFERENCE_PHALA_SPKI)));
    assert!(!ks.lists_tls_key("other.example", &spki(API_REDPILL_SPKI)));
    assert!(ks.lists_tls_key("inference.phala.com", &spki(INFERENCE_PHALA_SPKI)));
    // The skipped collateral check is visible on the keyset...
    assert!(!ks.hardware_verified());
    // ...and it is the only thing standing between: verify_report itself refuses.
    let e = verify_report(REPORT.as_bytes(), &NONCE, FETCHED_AT, &policy).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::HardwareUnverifiable), "{e}");
}

#[test]
fn custody_must_reach_the_kms_root() {
    let other = sound().accept_kms_root(OTHER_ROOT).allow_app_id(APP_ID).build().unwrap();
    assert_eq!(failure(verify(&report(), &NONCE, &other)), F::Custody);
    // Custody is required once a root is accepted: dropping it is refused.
    let mut doc = report();
    doc["attestation"]["evidence"].as_object_mut().unwrap().remove("key_custody");
    assert_eq!(failure(verify(&doc, &NONCE, &pinned().build().unwrap())), F::Custody);
    // Each covered role must be there (identity, receipt, e2ee); legacy-ed25519 is not needed.
    for (i, role) in ["identity", "receipt", "e2ee", "legacy-ed25519"].into_iter().enumerate() {
        let mut doc = report();
        doc["attestation"]["evidence"]["key_custody"]["keys"].as_array_mut().unwrap().remove(i);
        let r = verify(&doc, &NONCE, &pinned().build().unwrap());
        if role == "legacy-ed25519" {
            assert!(r.is_ok(), "{role}");
        } else {
            assert_eq!(failure(r), F::Custody, "{role}");
        }
    }
    // A changed byte in a signature of any role breaks its chain.
    for i in 0..3 {
        for k in 0..2 {
            let mut doc = report();
            let sig = &mut doc["attestation"]["evidence"]["key_custody"]["keys"][i]["signature_chain"][k];
            let mut b = hex::decode(sig.as_str().unwrap()).unwrap();
            b[7] ^= 1;
            *sig = hex::encode(b).into();
            assert_eq!(failure(verify(&doc, &NONCE, &pinned().build().unwrap())), F::Custody, "entry {i} sig {k}");
        }
    }
}

#[test]
fn the_event_log_must_replay_to_the_quotes_rtmr3() {
    let text = evidence_str("event_log");
    let mut doc = report();
    doc["attestation"]["evidence"]["event_log"] = text.replacen(APP_ID, &format!("0{}", &APP_ID[1..]), 1).into();
    assert_eq!(failure(verify(&doc, &NONCE, &pinned().build().unwrap())), F::EventLog);
    let mut doc = report();
    doc["attestation"]["evidence"]["event_log"] = Value::Null;
    assert_eq!(failure(verify(&doc, &NONCE, &pinned().build().unwrap())), F::EventLog);
}

fn not_allowed(builder: PolicyBuilder, measured: &str) {
    let r = verify(&report(), &NONCE, &builder.build().unwrap());
    let e = r.expect_err("another pin is refused");
    assert_eq!(e.kind(), ErrorKind::Attestation(F::NotAllowed), "{e}");
    assert!(e.to_string().contains(measured), "the message names the measured {measured}: {e}");
}

#[test]
fn pins_on_the_measured_values_pass_and_any_other_pin_fails_naming_the_measured_value() {
    // The real capture under its app id, compose hash, KMS identity and boot measurements,
    // with and without its KMS root beside them.
    let measured = || sound().allow_app_id(APP_ID);
    for policy in [
        measured(),
        measured().accept_kms_root(KMS_ROOT),
        measured().allow_os_image_hash(OS_IMAGE_HASH),
        // One of several allowed values.
        measured().allow_compose_hash(&"11".repeat(32)),
        measured().allow_kms_identity(&"ab".repeat(91)),
    ] {
        let ks = verify(&report(), &NONCE, &policy.build().unwrap()).unwrap();
        assert_eq!(ks.anchor(), crate::attest::Anchor::MeasuredWorkload);
        assert_eq!(ks.kms_identity().as_deref(), Some(KMS_IDENTITY));
        // Every key of the keyset is covered: its TLS keys are kept.
        assert_eq!(ks.tls_keys().len(), 3);
    }
    // Each pin that differs is refused with NotAllowed naming the measured value in full.
    let boot = |mrtd: &str, rtmr0: &str| {
        Policy::builder()
            .allow_compose_hash(COMPOSE_HASH)
            .allow_kms_identity(KMS_IDENTITY)
            .allow_app_id(APP_ID)
            .allow_boot_measurements(mrtd, rtmr0, RTMR1, RTMR2)
    };
    let mut other_hash = COMPOSE_HASH.to_owned();
    other_hash.replace_range(63.., "c");
    let compose = Policy::builder()
        .allow_compose_hash(&other_hash)
        .allow_boot_measurements(MRTD, RTMR0, RTMR1, RTMR2)
        .allow_kms_identity(KMS_IDENTITY);
    not_allowed(compose, COMPOSE_HASH);
    not_allowed(sound().allow_app_id("fdb7a14e5a6675f752e2cb69c9067a98ca402919"), APP_ID);
    not_allowed(sound().allow_app_id("fdb7a14e"), APP_ID);
    let mut other_mrtd = hex::decode(MRTD).unwrap();
    other_mrtd[0] ^= 1;
    not_allowed(boot(&hex::encode(&other_mrtd), RTMR0), &format!("MRTD {MRTD}"));
    not_allowed(boot(MRTD, &"00".repeat(48)), &format!("RTMR0 {RTMR0}"));
    let other_kms = Policy::builder()
        .allow_compose_hash(COMPOSE_HASH)
        .allow_boot_measurements(MRTD, RTMR0, RTMR1, RTMR2)
        .allow_kms_identity(&KMS_IDENTITY.replace("8844eb42", "8844eb43"));
    not_allowed(other_kms, &format!("kms {KMS_IDENTITY}"));
    not_allowed(measured().allow_os_image_hash(&"de".repeat(32)), OS_IMAGE_HASH);
    // The capture's image (`dstack-dev-0.5.9-de9c74f0`) is a development image.
    not_allowed(measured().require_production_os(), OS_IMAGE_HASH);
}

#[test]
fn the_policy_can_refuse_the_older_generation() {
    let e = verify(&report(), &NONCE, &pinned().current_generation_only().build().unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::Generation), "{e}");
    assert!(e.to_string().contains("legacy (June 2026) generation"), "{e}");
}

#[test]
fn a_document_mixing_both_generations_is_refused() {
    for (pointer, member, value) in [
        ("/attestation/workload_keyset", "not_after", serde_json::json!(STALE_AFTER)),
        ("/attestation/workload_keyset", "subject", Value::Null),
    ] {
        let mut doc = report();
        doc.pointer_mut(pointer).unwrap()[member] = value;
        let e = verify(&doc, &NONCE, &pinned().build().unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Attestation(F::Shape), "{member}: {e}");
        assert!(e.to_string().contains("mixes members of two report generations"), "{e}");
    }
    // A legacy document missing one of its own members is not taken for the current one.
    for (pointer, member) in [
        ("", "workload_id"),
        ("/attestation", "keyset_endorsement"),
        ("/attestation", "freshness"),
        ("/attestation/workload_keyset", "workload_identity"),
        ("/attestation/workload_keyset", "keyset_epoch"),
    ] {
        let mut doc = report();
        doc.pointer_mut(pointer).unwrap().as_object_mut().unwrap().remove(member);
        let f = failure(verify(&doc, &NONCE, &pinned().build().unwrap()));
        // Removing the keyset members also changes the digest; either way it is refused
        // before any binding could pass.
        assert!(matches!(f, F::Shape | F::KeysetDigest), "{member}: {f:?}");
    }
}

#[test]
fn validity_comes_from_freshness_bounded_by_the_policy() {
    let policy = pinned().build().unwrap();
    let at = |now| verify_report_skipping_collateral(REPORT.as_bytes(), &NONCE, now, &policy);
    assert!(at(STALE_AFTER - 1).is_ok());
    assert_eq!(failure(at(STALE_AFTER)), F::Expired);
    // A horizon shorter than the freshness window refuses it (never valid "forever").
    let short = pinned().max_validity(std::time::Duration::from_secs(1800)).build().unwrap();
    assert_eq!(failure(verify(&report(), &NONCE, &short)), F::NotAfterTooFar);
    // freshness is not signed: pushing stale_after past the horizon is refused too.
    let mut doc = report();
    doc["attestation"]["freshness"]["stale_after"] = u64::MAX.into();
    assert_eq!(failure(verify(&doc, &NONCE, &policy)), F::NotAfterTooFar);
}

#[test]
fn the_legacy_keys_are_never_selected() {
    for key_id in ["dstack-kms-e2ee-v1-legacy-ecdsa", "dstack-kms-legacy-ed25519-v1"] {
        let policy = pinned().pin_key_id(key_id).build().unwrap();
        assert_eq!(failure(verify(&report(), &NONCE, &policy)), F::NoUsableKey, "{key_id}");
    }
    let ks = verify(&report(), &NONCE, &pinned().prefer_x25519().build().unwrap()).unwrap();
    assert_eq!(ks.e2ee_key().key_id(), "dstack-kms-e2ee-v1");
    let x25519 = pinned().select_suite(crate::protocol::suite::Suite::X25519).build().unwrap();
    assert_eq!(failure(verify(&report(), &NONCE, &x25519)), F::NoUsableKey);
}

// ---- tamper tests: one byte at a time, each refused with its own failure ----

/// `text` with byte `i` changed to another character of the same kind (a hex digit stays a
/// hex digit), so only the value changes, never the shape.
fn changed_at(text: &str, i: usize) -> String {
    let mut b = text.as_bytes().to_vec();
    b[i] = match b[i] {
        b'0'..=b'8' | b'a'..=b'e' | b'A'..=b'E' => b[i] + 1,
        b'9' => b'0',
        b'f' => b'a',
        b'F' => b'A',
        c if c.is_ascii_lowercase() => {
            if c == b'z' {
                b'a'
            } else {
                c + 1
            }
        }
        c => c ^ 1,
    };
    String::from_utf8(b).unwrap()
}

/// Flip bit 0 of byte `i` of the hex string at `pointer`.
fn flip_hex_byte(doc: &mut Value, pointer: &str, i: usize) {
    let v = doc.pointer_mut(pointer).unwrap();
    let mut b = hex::decode(v.as_str().unwrap()).unwrap();
    b[i] ^= 1;
    *v = hex::encode(b).into();
}

#[test]
fn each_changed_byte_of_the_endorsement_is_refused_with_endorsement() {
    let policy = pinned().build().unwrap();
    for i in 0..64 {
        let mut doc = report();
        flip_hex_byte(&mut doc, "/attestation/keyset_endorsement/value", i);
        assert_eq!(failure(verify(&doc, &NONCE, &policy)), F::Endorsement, "byte {i}");
    }
    for algo in ["ecdsa-secp256r1", "ed25519", "ecdsa-secp256k2"] {
        let mut doc = report();
        doc["attestation"]["keyset_endorsement"]["algo"] = algo.into();
        assert_eq!(failure(verify(&doc, &NONCE, &policy)), F::Endorsement, "{algo}");
    }
    // Cut short or extended.
    let value = report()["attestation"]["keyset_endorsement"]["value"].as_str().unwrap().to_owned();
    for changed in [&value[..126], &format!("{value}00")[..]] {
        let mut doc = report();
        doc["attestation"]["keyset_endorsement"]["value"] = changed.into();
        assert_eq!(failure(verify(&doc, &NONCE, &policy)), F::Endorsement);
    }
}

#[test]
fn each_changed_byte_of_workload_id_is_refused_with_workload_id() {
    let policy = pinned().build().unwrap();
    let id = report()["workload_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 71);
    for i in 0..id.len() {
        let mut doc = report();
        doc["workload_id"] = changed_at(&id, i).into();
        assert_eq!(failure(verify(&doc, &NONCE, &policy)), F::WorkloadId, "char {i}");
    }
}

#[test]
fn each_changed_byte_of_the_nonce_is_refused_with_report_data() {
    let policy = pinned().build().unwrap();
    for i in 0..32 {
        let mut nonce = NONCE;
        nonce[i] ^= 0x80;
        assert_eq!(failure(verify(&report(), &nonce, &policy)), F::ReportData, "nonce byte {i}");
    }
}

/// Every string, integer and null leaf of `value`, as JSON pointers.
fn leaves(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(m) => m.iter().for_each(|(k, v)| leaves(v, format!("{at}/{k}"), out)),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| leaves(v, format!("{at}/{i}"), out)),
        Value::String(_) | Value::Number(_) | Value::Null => out.push(at),
        Value::Bool(_) => {}
    }
}

#[test]
fn each_changed_byte_of_any_keyset_field_is_refused_with_keyset_digest() {
    let policy = pinned().build().unwrap();
    let mut fields = Vec::new();
    leaves(&report()["attestation"]["workload_keyset"], "/attestation/workload_keyset".into(), &mut fields);
    assert_eq!(fields.len(), 23, "{fields:?}");
    let mut tried = 0;
    for field in &fields {
        let original = report().pointer(field).unwrap().clone();
        let changes: Vec<Value> = match &original {
            Value::String(s) => (0..s.len()).map(|i| Value::from(changed_at(s, i))).collect(),
            Value::Number(n) => {
                let n = n.as_u64().unwrap();
                vec![Value::from(n.wrapping_add(1)), Value::from(n ^ 0x80), Value::from(n - n.min(1))]
            }
            // The identity's null subject.
            _ => vec![Value::from(""), Value::from(format!("app-id:0x{APP_ID}"))],
        };
        for changed in changes.into_iter().filter(|c| *c != original) {
            let mut doc = report();
            *doc.pointer_mut(field).unwrap() = changed.clone();
            assert_eq!(failure(verify(&doc, &NONCE, &policy)), F::KeysetDigest, "{field} = {changed}");
            tried += 1;
        }
        // The same change with workload_keyset_digest (and workload_id) recomputed to match
        // is still refused: report_data in the quote binds the original keyset.
        let mut doc = report();
        let changed = match &original {
            Value::String(s) => Value::from(changed_at(s, s.len() - 1)),
            Value::Number(n) => Value::from(n.as_u64().unwrap() ^ 1),
            _ => Value::from(format!("app-id:0x{APP_ID}")),
        };
        *doc.pointer_mut(field).unwrap() = changed;
        let keyset = doc["attestation"]["workload_keyset"].clone();
        doc["workload_keyset_digest"] = crate::attest::report::keyset_digest(&keyset).unwrap().into();
        if let Ok(id) = crate::attest::generation::workload_id(&keyset["workload_identity"]["public_key"]) {
            doc["workload_id"] = id.into();
        }
        let f = failure(verify(&doc, &NONCE, &policy));
        assert!(matches!(f, F::ReportData | F::BadKey | F::Shape), "{field} recomputed: {f:?}");
    }
    assert!(tried > 1000, "only {tried} changes tried");
}

#[test]
fn each_changed_byte_of_the_quotes_report_data_slot_is_refused_with_quote() {
    let policy = pinned().build().unwrap();
    for i in 0..64 {
        // In the quote only: quote_report_data no longer equals the slot.
        let mut doc = report();
        let mut quote = raw_quote();
        quote[REPORT_DATA.start + i] ^= 1;
        doc["attestation"]["evidence"]["quote"] = hex::encode(&quote).into();
        assert_eq!(failure(verify(&doc, &NONCE, &policy)), F::Quote, "slot byte {i}");
        // In the quote and quote_report_data alike: the slot no longer carries report_data.
        flip_hex_byte(&mut doc, "/attestation/evidence/quote_report_data", i);
        assert_eq!(failure(verify(&doc, &NONCE, &policy)), F::Quote, "slot and quote_report_data byte {i}");
        // In quote_report_data only.
        let mut doc = report();
        flip_hex_byte(&mut doc, "/attestation/evidence/quote_report_data", i);
        assert_eq!(failure(verify(&doc, &NONCE, &policy)), F::Quote, "quote_report_data byte {i}");
    }
    // The claimed report_data (which the slot carries) changed: refused at the slot too.
    for i in 0..32 {
        let mut doc = report();
        flip_hex_byte(&mut doc, "/attestation/report_data", i);
        assert_eq!(failure(verify(&doc, &NONCE, &policy)), F::Quote, "report_data byte {i}");
    }
    // RTMR3 in the quote changed: the event log no longer replays to it.
    let mut doc = report();
    let mut quote = raw_quote();
    quote[RT_MR3.start] ^= 1;
    doc["attestation"]["evidence"]["quote"] = hex::encode(&quote).into();
    assert_eq!(failure(verify(&doc, &NONCE, &policy)), F::EventLog);
}

#[test]
fn evidence_members_that_carry_weight_cannot_be_dropped_or_mistyped() {
    let policy = pinned().build().unwrap();
    for member in ["quote", "event_log", "key_custody"] {
        for replacement in [None, Some(Value::Null), Some(1.into()), Some("zz".into()), Some(serde_json::json!([]))] {
            let mut doc = report();
            let evidence = doc["attestation"]["evidence"].as_object_mut().unwrap();
            match &replacement {
                None => evidence.remove(member),
                Some(v) => evidence.insert(member.into(), v.clone()),
            };
            assert!(verify(&doc, &NONCE, &policy).is_err(), "{member} = {replacement:?}");
        }
    }
    // vm_config is a JSON string in this generation.
    let mut doc = report();
    doc["attestation"]["evidence"]["vm_config"] = serde_json::json!({"os_image_hash": OS_IMAGE_HASH});
    assert_eq!(failure(verify(&doc, &NONCE, &policy)), F::Shape);
}
