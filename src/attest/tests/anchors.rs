//! Attacks on the anchors, on the real capture's bytes (issue "Anchored for every key").
//!
//! The attacker's TD produces a genuine quote over values of its choosing. With the real quote
//! and `verify_report_skipping_collateral` (every check but the quote's signature chain to
//! Intel's root), such a quote is simulated by patching the TD report body: what the hardware
//! would have measured for the attacker's TD (another RTMR3, another MRTD).

use serde_json::Value;

use super::capture::*;
use crate::attest::eventlog;
use crate::attest::policy::Policy;
use crate::attest::report::verify_report_skipping_collateral;
use crate::error::{AttestationFailure as F, ErrorKind};
use crate::hex;

const NONCE: [u8; 32] = {
    let mut n = [0; 32];
    n[31] = 1;
    n
};
const FETCHED_AT: u64 = 1_782_664_738;
/// MRTD at its TD-report offset.
const MR_TD: std::ops::Range<usize> = HEADER_LEN + 136..HEADER_LEN + 184;

/// The capture with its event log edited by `edit_log` (RTMR3 in the quote recomputed to match,
/// as the attacker's own TD would measure it) and its quote body edited by `edit_quote`.
fn attacker_td(edit_log: impl FnOnce(&mut Vec<Value>), edit_quote: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut doc = report();
    let mut log: Vec<Value> = serde_json::from_str(&evidence_str("event_log")).unwrap();
    edit_log(&mut log);
    let text = Value::Array(log).to_string();
    let rtmr3 = eventlog::replay_rtmr(&eventlog::parse(&text).unwrap(), 3).unwrap();
    let mut quote = raw_quote();
    quote[RT_MR3].copy_from_slice(&rtmr3);
    edit_quote(&mut quote);
    doc["attestation"]["evidence"]["event_log"] = text.into();
    doc["attestation"]["evidence"]["quote"] = hex::encode(&quote).into();
    serde_json::to_vec(&doc).unwrap()
}

fn set_payload(log: &mut [Value], event: &str, payload: &[u8]) {
    let e = log.iter_mut().find(|e| e["imr"] == 3 && e["event"] == event).unwrap();
    e["event_payload"] = hex::encode(payload).into();
}

/// The sound combination with the app id and KMS root beside it.
fn production() -> Policy {
    sound().allow_app_id(APP_ID).accept_kms_root(KMS_ROOT).build().unwrap()
}

#[test]
fn the_unedited_capture_passes_the_production_policy() {
    let report = attacker_td(|_| {}, |_| {});
    let ks = verify_report_skipping_collateral(&report, &NONCE, FETCHED_AT, &production()).unwrap();
    assert_eq!(ks.anchor(), crate::attest::Anchor::MeasuredWorkload);
}

/// A host boots the genuine, pinned dstack image against a KMS it runs: the boot measurements,
/// app id and compose hash all match, only the `key-provider` event names another KMS.
#[test]
fn a_genuine_image_provisioned_by_another_kms_is_refused_naming_that_kms() {
    let other_id = "3059301306072a8648ce3d020106082a8648ce3d03010703420004".to_owned() + &"5a".repeat(64);
    let payload = format!(r#"{{"name":"kms","id":"{other_id}"}}"#);
    let report = attacker_td(|log| set_payload(log, "key-provider", payload.as_bytes()), |_| {});
    let e = verify_report_skipping_collateral(&report, &NONCE, FETCHED_AT, &production()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::NotAllowed), "{e}");
    let message = e.to_string();
    assert!(message.contains(&format!("KMS identity (kms {other_id})")), "{message}");
    assert!(message.contains(KMS_IDENTITY), "{message}");
    // A local key provider instead of a KMS, and a log with no key-provider event at all.
    let local = attacker_td(|log| set_payload(log, "key-provider", br#"{"name":"local-sgx","id":"aa"}"#), |_| {});
    let e = verify_report_skipping_collateral(&local, &NONCE, FETCHED_AT, &production()).unwrap_err();
    assert!(e.to_string().contains("KMS identity (local-sgx aa)"), "{e}");
    let none = attacker_td(|log| log.retain(|e| e["event"] != "key-provider"), |_| {});
    let e = verify_report_skipping_collateral(&none, &NONCE, FETCHED_AT, &production()).unwrap_err();
    assert!(e.to_string().contains("measures no KMS identity"), "{e}");
}

/// The attacker's own TD (firmware nobody pinned) extends RTMR3 with the pinned app id, compose
/// hash, KMS identity and `system-ready`: only the boot measurements tell it apart.
#[test]
fn the_attackers_own_td_with_the_pinned_rtmr3_is_refused_naming_its_mrtd() {
    let mut foreign = hex::decode(MRTD).unwrap();
    foreign[..4].copy_from_slice(b"evil");
    let report = attacker_td(|_| {}, |q| q[MR_TD].copy_from_slice(&foreign));
    let e = verify_report_skipping_collateral(&report, &NONCE, FETCHED_AT, &production()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::NotAllowed), "{e}");
    assert!(e.to_string().contains(&format!("MRTD {}", hex::encode(&foreign))), "{e}");
}

/// A genuine image and KMS running another compose under the same app id (its owner authorised
/// it on chain): the compose-hash pin refuses it, naming the measured hash.
#[test]
fn another_compose_under_the_pinned_app_id_is_refused_naming_its_hash() {
    let other = [0x77; 32];
    let report = attacker_td(|log| set_payload(log, "compose-hash", &other), |_| {});
    let e = verify_report_skipping_collateral(&report, &NONCE, FETCHED_AT, &production()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::NotAllowed), "{e}");
    assert!(e.to_string().contains(&format!("the compose hash {}", hex::encode(other))), "{e}");
}
