//! The attestation path run on the real capture ([`capture`](super::capture)), piece by piece:
//! each test feeds the real bytes to the crate's own functions (`eventlog::parse`,
//! `replay_rtmr`, `runtime_event`, `measured`, `custody::recover_chain`, `check_root`,
//! `custody::verify`, and with feature `dcap` dcap-qvl's `Quote::parse` through
//! `dcap::parse_tdx`).
//!
//! The whole report is verified end to end, as the older report generation, in
//! [`end_to_end`](super::end_to_end) (only the DCAP collateral check skipped) and through the
//! public API in `tests/all/attest_real_capture.rs`.

use serde_json::{Map, Value};

use super::capture::*;
use crate::attest::custody::{self, ChainKeys};
use crate::attest::eventlog::{self, DSTACK_RUNTIME_EVENT, Event};
use crate::attest::policy::Policy;
use crate::error::{AttestationFailure as F, ErrorKind, Result};
use crate::hex;
use crate::protocol::keys::E2eeKey;

/// The app id as the crate reads it from the real log.
fn measured_app_id() -> Vec<u8> {
    eventlog::measured(&events(), None).unwrap().app_id.expect("the log measures an app id")
}

fn custody_entries() -> Vec<Map<String, Value>> {
    let kc = &evidence()["key_custody"];
    assert_eq!(kc["provider"], custody::PROVIDER);
    kc["keys"].as_array().unwrap().iter().map(|e| e.as_object().cloned().unwrap()).collect()
}

fn custody_entry(role: &str) -> Map<String, Value> {
    custody_entries().into_iter().find(|e| e["role"] == role).unwrap_or_else(|| panic!("no {role} entry"))
}

fn policy_with_root(root: &str) -> Policy {
    sound().accept_kms_root(root).allow_app_id(&hex::encode(measured_app_id())).build().unwrap()
}

/// One chain the way the older schema signs it (`msg1` names the entry's own secp256k1 key), run
/// through the crate's custody functions, then the root check against `policy`'s KMS roots.
fn old_schema_chain(
    entry: &Map<String, Value>,
    purpose: &str,
    app_id: &[u8],
    chain: &[[u8; 65]; 2],
    policy: &Policy,
) -> Result<ChainKeys> {
    let role = entry["role"].as_str().unwrap();
    let signed_key = custody::secp256k1_member(entry, "public_key", role)?;
    let keys = custody::recover_chain(purpose, &signed_key, app_id, chain, role)?;
    custody::check_root(&keys.root, &policy.kms_roots, role)?;
    Ok(keys)
}

// ---- quote ----

#[test]
fn quote_slot_at_its_fixed_offset_carries_quote_report_data() {
    let quote = raw_quote();
    assert_eq!(quote.len(), 5006);
    rt_mr3_at_fixed_offset(&quote); // checks version 4, TDX
    let qrd = evidence_str("quote_report_data");
    assert!(qrd.starts_with(REPORT_DATA_PREFIX));
    assert_eq!(hex::encode(&quote[REPORT_DATA]), qrd);
    // The slot is `report_data ‖ 32 zero bytes`, as every ACI report binds it.
    let slot = &quote[REPORT_DATA];
    assert_eq!(hex::encode(&slot[..32]), report()["attestation"]["report_data"].as_str().unwrap());
    assert!(slot[32..].iter().all(|b| *b == 0));
}

#[cfg(feature = "dcap")]
#[test]
fn dcap_qvl_parses_the_real_quote() {
    use crate::attest::dcap;

    let raw = raw_quote();
    let quote = dcap::parse_tdx(&raw).expect("dcap-qvl parses the real TDX quote");
    assert_eq!(quote.header.version, 4);
    assert_eq!(quote.header.tee_type, 0x81);
    let td = quote.report.as_td10().expect("a TDX report");
    // Its report-data slot is `quote_report_data`.
    assert_eq!(hex::encode(dcap::slot_of(&quote).unwrap()), evidence_str("quote_report_data"));
    // RTMR3 as dcap-qvl reads it: the fixed-offset read agrees, and the event log replays to it.
    assert_eq!(td.rt_mr3, rt_mr3_at_fixed_offset(&raw));
    assert_eq!(eventlog::replay_rtmr(&events(), 3).unwrap(), td.rt_mr3);
}

#[cfg(feature = "dcap")]
#[test]
fn dcap_qvl_refuses_the_real_quote_cut_short() {
    use crate::attest::dcap;

    let raw = raw_quote();
    // The signed quote ends after the header, the TD report and the length-prefixed signature
    // data; like dcap-qvl's own sample, the capture carries 70 zero bytes of padding after it.
    let auth_len = u32::from_le_bytes(raw[HEADER_LEN + 584..HEADER_LEN + 588].try_into().unwrap()) as usize;
    let signed_end = HEADER_LEN + 584 + 4 + auth_len;
    assert_eq!(signed_end, 4936);
    assert!(raw[signed_end..].iter().all(|b| *b == 0));
    assert!(dcap::parse_tdx(&raw[..signed_end]).is_ok());
    // Cut inside the header, the TD report, the signature data, or one byte short.
    for len in [0, 47, 300, HEADER_LEN + 584, 2000, signed_end - 1] {
        assert_eq!(failure(dcap::parse_tdx(&raw[..len])), F::Quote, "quote cut to {len} bytes");
    }
}

// ---- event log ----

#[test]
fn event_log_parses_and_lists_the_rtmr3_events() {
    let events = events();
    assert_eq!(events.len(), 30);
    let rtmr3: Vec<&Event> = events.iter().filter(|e| e.imr == 3).collect();
    assert_eq!(rtmr3.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), RTMR3_EVENTS);
    for e in rtmr3 {
        assert_eq!(e.event_type, DSTACK_RUNTIME_EVENT, "{}", e.event);
        // The digest the crate recomputes is the one dstack published on the real machine.
        assert_eq!(e.measured_digest().unwrap()[..], e.digest[..], "{}", e.event);
    }
}

#[test]
fn rtmr3_replay_equals_the_quotes_rt_mr3() {
    let mut events = events();
    assert_eq!(eventlog::replay_rtmr(&events, 3).unwrap(), rtmr3());
    // Runtime digests are recomputed, not trusted: blanking the published ones changes nothing.
    for e in events.iter_mut().filter(|e| e.event_type == DSTACK_RUNTIME_EVENT) {
        e.digest = vec![0; 48];
    }
    assert_eq!(eventlog::replay_rtmr(&events, 3).unwrap(), rtmr3());
    // Events of the other registers do not take part in the RTMR3 replay.
    let mut events = self::events();
    for e in events.iter_mut().filter(|e| e.imr != 3) {
        e.digest[0] ^= 1;
    }
    assert_eq!(eventlog::replay_rtmr(&events, 3).unwrap(), rtmr3());
}

#[test]
fn runtime_lookups_return_the_listed_values() {
    let events = events();
    let payload = |name| eventlog::runtime_event(&events, name).unwrap().map(|e| hex::encode(&e.payload));
    assert_eq!(payload("app-id").as_deref(), Some(APP_ID));
    assert_eq!(payload("compose-hash").as_deref(), Some(COMPOSE_HASH));
    assert_eq!(payload("os-image-hash").as_deref(), Some(OS_IMAGE_HASH));

    let m = eventlog::measured(&events, None).unwrap();
    assert_eq!(m.app_id.map(hex::encode).as_deref(), Some(APP_ID));
    assert_eq!(m.compose_hash.map(hex::encode).as_deref(), Some(COMPOSE_HASH));
    assert_eq!(m.os_image_hash.map(hex::encode).as_deref(), Some(OS_IMAGE_HASH));
    // The measured OS image is the one vm_config declares.
    let vm_config: Value = serde_json::from_str(&evidence_str("vm_config")).unwrap();
    assert_eq!(vm_config["os_image_hash"], OS_IMAGE_HASH);

    // No app_compose was captured; any candidate preimage is checked against the real hash.
    assert_eq!(failure(eventlog::measured(&events, Some("{}"))), F::EventLog);
}

/// The real log with `extra` runtime events inserted at `at`, parsed by the crate.
fn log_with(at: usize, extra: &[(&str, &str)]) -> Vec<Event> {
    let mut log: Vec<Value> = serde_json::from_str(&evidence_str("event_log")).unwrap();
    for (i, (name, payload_hex)) in extra.iter().enumerate() {
        let event = serde_json::json!({
            "imr": 3, "event_type": DSTACK_RUNTIME_EVENT, "digest": "00".repeat(48),
            "event": name, "event_payload": payload_hex,
        });
        log.insert(at + i, event);
    }
    eventlog::parse(&Value::Array(log).to_string()).unwrap()
}

#[test]
fn runtime_lookups_stop_at_system_ready() {
    let events = events();
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("system-ready"));
    assert!(eventlog::runtime_event(&events, "system-ready").unwrap().is_none());

    // After system-ready: a second app-id or compose-hash is measured (RTMR3 changes) and refused
    // (issue 18: the workload extended it itself).
    let other_id = "11".repeat(20);
    let other_hash = "22".repeat(32);
    let after = log_with(events.len(), &[("app-id", &other_id), ("compose-hash", &other_hash)]);
    assert_ne!(eventlog::replay_rtmr(&after, 3).unwrap(), rtmr3());
    assert_eq!(failure(eventlog::measured(&after, None)), F::EventLog);
    // A workload's own event after system-ready is not read, and not refused.
    let after = log_with(events.len(), &[("workload-started", "00")]);
    let m = eventlog::measured(&after, None).unwrap();
    assert_eq!(m.app_id.map(hex::encode).as_deref(), Some(APP_ID));
    assert_eq!(m.compose_hash.map(hex::encode).as_deref(), Some(COMPOSE_HASH));

    // The same events before system-ready are duplicates: refused.
    let ready = events.len() - 1;
    let before = log_with(ready, &[("app-id", &other_id)]);
    assert_eq!(failure(eventlog::runtime_event(&before, "app-id")), F::EventLog);
    assert_eq!(failure(eventlog::measured(&before, None)), F::EventLog);
    let before = log_with(ready, &[("compose-hash", &other_hash)]);
    assert_eq!(failure(eventlog::measured(&before, None)), F::EventLog);
}

#[test]
fn a_changed_byte_in_any_replayed_event_breaks_the_replay() {
    let good = rtmr3();
    let events = events();
    let breaks = |changed: &[Event], what: &str| {
        assert_ne!(eventlog::replay_rtmr(changed, 3).unwrap(), good, "{what}");
    };
    let mut checked = 0;
    for i in events.iter().enumerate().filter(|(_, e)| e.imr == 3).map(|(i, _)| i) {
        let name = events[i].event.clone();
        for j in 0..events[i].payload.len() {
            let mut changed = events.clone();
            changed[i].payload[j] ^= 0x01;
            breaks(&changed, &format!("{name}: payload byte {j}"));
            checked += 1;
        }
        for j in 0..name.len() {
            let mut changed = events.clone();
            let mut bytes = name.clone().into_bytes();
            bytes[j] ^= 0x01;
            changed[i].event = String::from_utf8(bytes).unwrap();
            breaks(&changed, &format!("{name}: name byte {j}"));
            checked += 1;
        }
        let mut changed = events.clone();
        changed[i].payload.push(0);
        breaks(&changed, &format!("{name}: a byte appended to the payload"));
        let mut changed = events.clone();
        changed[i].imr = 2;
        breaks(&changed, &format!("{name}: moved to another register"));
        let mut changed = events.clone();
        changed.remove(i);
        breaks(&changed, &format!("{name}: dropped"));
        if i + 1 < events.len() {
            let mut changed = events.clone();
            changed.swap(i, i + 1);
            breaks(&changed, &format!("{name}: swapped with the next event"));
        }
    }
    assert!(checked > 300, "only {checked} byte changes were tried");

    // The same through the parser: one hex digit of the app-id payload in the log text.
    let text = evidence_str("event_log");
    let tampered = text.replacen(APP_ID, &format!("0{}", &APP_ID[1..]), 1);
    assert_ne!(tampered, text);
    let changed = eventlog::parse(&tampered).unwrap();
    assert_ne!(eventlog::replay_rtmr(&changed, 3).unwrap(), good);
}

/// A gap shared with the reference verifier's rule (protocol.md §6.4), closed here (issue 18): the
/// replay recomputes the digest of events typed as dstack runtime events but would extend the
/// *published* digest of any other event, so the `event_type` of an event whose published digest
/// is right is not bound by RTMR3. dstack puts only runtime events in RTMR3, so any other type
/// there is refused, by the replay and by the lookups.
#[test]
fn relabelling_a_runtime_event_is_refused() {
    let events = events();
    for i in events.iter().enumerate().filter(|(_, e)| e.imr == 3).map(|(i, _)| i) {
        let mut relabelled = events.clone();
        relabelled[i].event_type ^= 0x01;
        assert_eq!(failure(eventlog::replay_rtmr(&relabelled, 3)), F::EventLog, "{}", events[i].event);
        assert_eq!(failure(eventlog::measured(&relabelled, None)), F::EventLog, "{}", events[i].event);
    }
    let compose = events.iter().position(|e| e.event == "compose-hash").unwrap();
    let mut relabelled = events.clone();
    relabelled[compose].event_type = 0x0800_0002;
    assert_eq!(failure(eventlog::runtime_event(&relabelled, "compose-hash")), F::EventLog);
}

// ---- KMS custody ----

#[test]
fn custody_entries_speak_for_the_keyset_keys() {
    let roles: Vec<String> = custody_entries().iter().map(|e| e["role"].as_str().unwrap().to_owned()).collect();
    assert_eq!(roles, ["identity", "receipt", "e2ee", "legacy-ed25519"]);
    let keyset = &report()["attestation"]["workload_keyset"];
    let key = |role: &str| custody_entry(role)["public_key"].clone();
    assert_eq!(key("identity"), keyset["workload_identity"]["public_key"]["public_key"]);
    assert_eq!(key("receipt"), keyset["receipt_signing_keys"][0]["public_key"]);
    assert_eq!(key("e2ee"), keyset["e2ee_public_keys"][0]["public_key"]);
    assert_eq!(keyset["e2ee_public_keys"][0]["key_id"], "dstack-kms-e2ee-v1");
}

#[test]
fn secp256k1_chains_recover_the_app_key_and_the_kms_root() {
    let app_id = measured_app_id();
    assert_eq!(hex::encode(&app_id), APP_ID);
    let accepting = policy_with_root(KMS_ROOT);
    let other = policy_with_root(OTHER_ROOT);
    for role in SECP256K1_ROLES {
        let entry = custody_entry(role);
        let purpose = entry["purpose"].as_str().unwrap();
        let chain = custody::signature_chain(&entry, role).unwrap();
        let keys = old_schema_chain(&entry, purpose, &app_id, &chain, &accepting)
            .unwrap_or_else(|e| panic!("{role}: the policy with the real root accepts the chain: {e}"));
        assert_eq!(hex::encode(keys.app_key), APP_KEY, "{role}");
        assert_eq!(hex::encode(keys.root), KMS_ROOT, "{role}");
        // Another root configured: the same chain is refused.
        assert_eq!(failure(old_schema_chain(&entry, purpose, &app_id, &chain, &other)), F::Custody, "{role}");
        // No root configured: refused.
        let none = custody::check_root(&keys.root, &[], role);
        assert_eq!(failure(none), F::Custody, "{role}");
    }
}

#[test]
fn a_changed_byte_in_a_signature_purpose_or_app_id_is_rejected() {
    let app_id = measured_app_id();
    let policy = policy_with_root(KMS_ROOT);
    let mut tried = 0;
    for role in SECP256K1_ROLES {
        let entry = custody_entry(role);
        let purpose = entry["purpose"].as_str().unwrap();
        let chain = custody::signature_chain(&entry, role).unwrap();
        // Every byte of both signatures (r, s and the recovery id).
        for (k, j) in (0..2).flat_map(|k| (0..65).map(move |j| (k, j))) {
            let mut changed = chain;
            changed[k][j] ^= 0x01;
            let r = old_schema_chain(&entry, purpose, &app_id, &changed, &policy);
            assert_eq!(failure(r), F::Custody, "{role}: chain[{k}] byte {j}");
            tried += 1;
        }
        // Every byte of the purpose, and another role's purpose.
        for j in 0..purpose.len() {
            let mut bytes = purpose.as_bytes().to_vec();
            bytes[j] ^= 0x01;
            let changed = String::from_utf8(bytes).unwrap();
            let r = old_schema_chain(&entry, &changed, &app_id, &chain, &policy);
            assert_eq!(failure(r), F::Custody, "{role}: purpose {changed:?}");
            tried += 1;
        }
        for other in SECP256K1_ROLES.iter().filter(|r| **r != role) {
            let other_purpose = custody_entry(other)["purpose"].as_str().unwrap().to_owned();
            let r = old_schema_chain(&entry, &other_purpose, &app_id, &chain, &policy);
            assert_eq!(failure(r), F::Custody, "{role}: purpose of {other}");
        }
        // Every byte of the app id, and the app id cut short or extended.
        for j in 0..app_id.len() {
            let mut changed = app_id.clone();
            changed[j] ^= 0x01;
            let r = old_schema_chain(&entry, purpose, &changed, &chain, &policy);
            assert_eq!(failure(r), F::Custody, "{role}: app id byte {j}");
            tried += 1;
        }
        let r = old_schema_chain(&entry, purpose, &app_id[..19], &chain, &policy);
        assert_eq!(failure(r), F::Custody, "{role}: app id cut short");
        let r = old_schema_chain(&entry, purpose, &[&app_id[..], &[0]].concat(), &chain, &policy);
        assert_eq!(failure(r), F::Custody, "{role}: app id extended");
        // The chain signed for one key does not vouch for another role's key.
        for other in SECP256K1_ROLES.iter().filter(|r| **r != role) {
            let mut swapped = entry.clone();
            swapped.insert("public_key".into(), custody_entry(other)["public_key"].clone());
            let r = old_schema_chain(&swapped, purpose, &app_id, &chain, &policy);
            assert_eq!(failure(r), F::Custody, "{role}: public key of {other}");
        }
    }
    assert_eq!(tried, 3 * (130 + 20) + "aci.identity.v1aci.receipt.v1aci.e2ee.v1".len());
}

/// The real e2ee entry in the current schema's shape: its role renamed `e2ee-secp256k1` and
/// `kms_public_key` added as the compressed form of the key its chain signs (which the current
/// rule requires to be the published E2EE key). Path, purpose, algo and signatures are untouched.
fn e2ee_entry_in_current_shape() -> Value {
    let mut entry = custody_entry("e2ee");
    assert_eq!(entry["path"], "aci/e2ee/v1");
    assert_eq!(entry["purpose"], "aci.e2ee.v1");
    assert_eq!(entry["algo"], "secp256k1-aes-256-gcm-hkdf-sha256");
    let signed = custody::secp256k1_member(&entry, "public_key", "e2ee").unwrap();
    entry.insert("role".into(), "e2ee-secp256k1".into());
    entry.insert("kms_public_key".into(), hex::encode(signed).into());
    Value::Object(entry)
}

fn real_e2ee_key() -> E2eeKey {
    let entry = &report()["attestation"]["workload_keyset"]["e2ee_public_keys"][0];
    let text = |name: &str| entry[name].as_str().unwrap().to_owned();
    E2eeKey::parse(text("key_id"), &text("algo"), text("public_key")).unwrap()
}

fn custody_document(entries: Vec<Value>) -> Value {
    serde_json::json!({"provider": "dstack-kms", "keys": entries})
}

#[test]
fn the_full_custody_check_verifies_the_real_e2ee_chain() {
    let app_id = measured_app_id();
    let keys = [real_e2ee_key()];
    let covered = custody::CoveredKeys { identity: None, receipt: &[], e2ee: &keys };
    let doc = custody_document(vec![e2ee_entry_in_current_shape()]);

    custody::verify(&doc, &covered, &app_id, &policy_with_root(KMS_ROOT).kms_roots)
        .expect("custody::verify accepts the real chain with the real root");
    let other = custody::verify(&doc, &covered, &app_id, &policy_with_root(OTHER_ROOT).kms_roots);
    assert_eq!(failure(other), F::Custody);

    let roots = policy_with_root(KMS_ROOT).kms_roots;
    let mut changed_id = app_id.clone();
    changed_id[0] ^= 0x01;
    assert_eq!(failure(custody::verify(&doc, &covered, &changed_id, &roots)), F::Custody);

    for k in 0..2 {
        let mut entry = e2ee_entry_in_current_shape();
        let mut sig = hex::decode(entry["signature_chain"][k].as_str().unwrap()).unwrap();
        sig[10] ^= 0x01;
        entry["signature_chain"][k] = hex::encode(sig).into();
        let r = custody::verify(&custody_document(vec![entry]), &covered, &app_id, &roots);
        assert_eq!(failure(r), F::Custody, "chain[{k}]");
    }
    let mut entry = e2ee_entry_in_current_shape();
    entry["purpose"] = "aci.e2ee.v2".into();
    let r = custody::verify(&custody_document(vec![entry]), &covered, &app_id, &roots);
    assert_eq!(failure(r), F::Custody);
}

#[test]
fn the_custody_object_as_served_fails_the_current_rule() {
    // What `verify_report` would hand to custody for this keyset: its secp256k1 E2EE key (the
    // `ecdsa` and `ed25519` entries are of algorithms the keyset parser ignores) and no Ed25519
    // receipt key. The served `receipt` entry names a secp256k1 key the current schema has no
    // place for, so the check fails closed instead of skipping it.
    // The identity key is covered (see `the_real_identity_chain_verifies_to_the_kms_root`).
    let keys = [real_e2ee_key()];
    let identity = real_identity_key();
    let covered = custody::CoveredKeys { identity: Some(&identity), receipt: &[], e2ee: &keys };
    let served = &evidence()["key_custody"];
    let e = custody::verify(served, &covered, &measured_app_id(), &policy_with_root(KMS_ROOT).kms_roots)
        .expect_err("the older custody object does not pass the current rule");
    assert_eq!(e.kind(), ErrorKind::Attestation(F::Custody));
    assert!(e.to_string().contains("receipt custody entry"), "{e}");
}

/// `workload_keyset.workload_identity.public_key.public_key` of the capture.
fn real_identity_key() -> String {
    report()["attestation"]["workload_keyset"]["workload_identity"]["public_key"]["public_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_real_identity_chain_verifies_to_the_kms_root() {
    // The served identity entry as is (this generation signs the entry's own public_key), through
    // the full custody check with the keyset's identity key to cover.
    let identity = real_identity_key();
    assert_eq!(custody_entry("identity")["public_key"].as_str(), Some(identity.as_str()));
    let covered = custody::CoveredKeys { identity: Some(&identity), receipt: &[], e2ee: &[] };
    let doc = custody_document(vec![Value::Object(custody_entry("identity"))]);
    let app_id = measured_app_id();
    let roots = policy_with_root(KMS_ROOT).kms_roots;
    assert_eq!(hex::encode(roots[0]), KMS_ROOT);
    custody::verify(&doc, &covered, &app_id, &roots).expect("the real identity chain verifies to the KMS root");
    assert_eq!(failure(custody::verify(&doc, &covered, &app_id, &policy_with_root(OTHER_ROOT).kms_roots)), F::Custody);
    // An identity key the custody document does not cover is refused...
    let e2ee_only = custody_document(vec![e2ee_entry_in_current_shape()]);
    let keys = [real_e2ee_key()];
    let both = custody::CoveredKeys { identity: Some(&identity), receipt: &[], e2ee: &keys };
    let e = custody::verify(&e2ee_only, &both, &app_id, &roots).unwrap_err();
    assert!(e.to_string().contains("identity key has no key custody entry"), "{e}");
    // ...and covering both verifies.
    let full = custody_document(vec![Value::Object(custody_entry("identity")), e2ee_entry_in_current_shape()]);
    custody::verify(&full, &both, &app_id, &roots).expect("identity and E2EE chains verify");
    // The identity entry cannot vouch for another key.
    let other = hex::encode(custody::secp256k1_member(&custody_entry("e2ee"), "public_key", "e2ee").unwrap());
    let wrong = custody::CoveredKeys { identity: Some(&other), receipt: &[], e2ee: &[] };
    assert_eq!(failure(custody::verify(&doc, &wrong, &app_id, &roots)), F::Custody);
}

#[test]
fn the_ed25519_role_fails_with_a_clear_error() {
    let entry = custody_entry("legacy-ed25519");
    assert_eq!(entry["algo"], "ed25519");
    // Its chain is well formed...
    let chain = custody::signature_chain(&entry, "legacy-ed25519").unwrap();
    // ...but this schema names no secp256k1 key for `msg1`: the entry's own key is Ed25519 and
    // there is no `kms_public_key`. Both ways of naming the signed key fail, with Custody.
    let e = custody::secp256k1_member(&entry, "public_key", "legacy-ed25519").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::Custody));
    assert!(e.to_string().contains("public_key is not a secp256k1 key"), "{e}");
    let e = custody::secp256k1_member(&entry, "kms_public_key", "legacy-ed25519").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::Custody));
    assert!(e.to_string().contains("no string `kms_public_key`"), "{e}");
    let policy = policy_with_root(KMS_ROOT);
    let r = old_schema_chain(&entry, "aci.legacy.ed25519.v1", &measured_app_id(), &chain, &policy);
    assert_eq!(failure(r), F::Custody);
}

// ---- issue 18: relabelled and post-boot identity events ----

/// The real log with the genuine `compose-hash` and `system-ready` events relabelled to another
/// event type, each keeping its true digest (the one dstack published, which equals the
/// recomputed runtime digest), so the replay still equals the quote's RTMR3.
fn relabelled_real_log() -> Vec<Event> {
    let mut events = events();
    for name in ["compose-hash", "system-ready"] {
        let i = events.iter().position(|e| e.event == name).unwrap();
        assert_eq!(events[i].measured_digest().unwrap()[..], events[i].digest[..], "{name}: true digest");
        events[i].event_type = 0x0800_0002;
    }
    events
}

#[test]
fn a_relabelled_real_log_is_refused() {
    let relabelled = relabelled_real_log();
    // RTMR3 does not bind the event type of a non-runtime event: the replay alone would pass.
    let mut blind = [0u8; 48];
    for e in relabelled.iter().filter(|e| e.imr == 3) {
        use sha2::{Digest, Sha384};
        let mut padded = [0u8; 48];
        padded[..e.digest.len()].copy_from_slice(&e.digest);
        blind = Sha384::new().chain_update(blind).chain_update(padded).finalize().into();
    }
    assert_eq!(blind, rtmr3(), "the relabelled log replays to the real RTMR3 by digest");
    // Every imr == 3 event must be a dstack runtime event: both the replay and the reading refuse it.
    assert_eq!(failure(eventlog::replay_rtmr(&relabelled, 3)), F::EventLog);
    assert_eq!(failure(eventlog::measured(&relabelled, None)), F::EventLog);
    assert_eq!(failure(eventlog::runtime_event(&relabelled, "app-id")), F::EventLog);

    // The attack: after boot the workload extends RTMR3 with its own compose-hash (and a
    // system-ready), which would become "the" compose hash once the genuine ones are relabelled.
    let evil = "66".repeat(32);
    let mut attack = relabelled.clone();
    attack.extend(log_with(0, &[("compose-hash", &evil), ("system-ready", "")]).drain(..2));
    assert_eq!(failure(eventlog::measured(&attack, None)), F::EventLog);
    assert_eq!(failure(eventlog::replay_rtmr(&attack, 3)), F::EventLog);
}

#[test]
fn a_post_boot_identity_event_is_refused() {
    let events = events();
    for name in ["compose-hash", "app-id", "os-image-hash", "instance-id", "key-provider", "mr-kms"] {
        let after = log_with(events.len(), &[(name, &"22".repeat(32))]);
        // Measured into RTMR3 like any runtime event...
        assert!(eventlog::replay_rtmr(&after, 3).is_ok(), "{name}");
        // ...but an identity event after system-ready is refused, not skipped.
        assert_eq!(failure(eventlog::measured(&after, None)), F::EventLog, "{name}");
        // Twice before system-ready is refused too.
        let twice = log_with(events.len() - 1, &[(name, &"22".repeat(32))]);
        assert_eq!(failure(eventlog::measured(&twice, None)), F::EventLog, "{name} twice");
    }
    // Other runtime events after boot are the workload's own business.
    let after = log_with(events.len(), &[("my-app-event", "01")]);
    assert_eq!(eventlog::measured(&after, None).unwrap().compose_hash.map(hex::encode).as_deref(), Some(COMPOSE_HASH));
}

#[test]
fn a_log_without_system_ready_satisfies_no_pin() {
    let mut events = events();
    assert_eq!(events.pop().map(|e| e.event), Some("system-ready".to_owned()));
    let e = eventlog::measured(&events, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::EventLog));
    assert!(e.to_string().contains("system-ready"), "{e}");
}

#[test]
fn the_real_log_still_replays_and_reads() {
    let events = events();
    assert_eq!(eventlog::replay_rtmr(&events, 3).unwrap(), rtmr3());
    let m = eventlog::measured(&events, None).unwrap();
    assert_eq!(m.app_id.map(hex::encode).as_deref(), Some(APP_ID));
    assert_eq!(m.compose_hash.map(hex::encode).as_deref(), Some(COMPOSE_HASH));
}

#[cfg(feature = "dcap")]
#[test]
fn boot_measurements_of_the_real_quote_are_compared_with_the_pin() {
    use crate::attest::dcap;
    use crate::attest::keyset::{BootMeasurements, check_boot_measurements};

    let raw = raw_quote();
    let quote = dcap::parse_tdx(&raw).unwrap();
    let td = quote.report.as_td10().unwrap();
    assert_eq!(hex::encode(td.mr_td), MRTD);
    assert_eq!(hex::encode(&raw[HEADER_LEN + 136..HEADER_LEN + 184]), MRTD);
    // RTMR0-2 as dcap-qvl reads them are what the event log's RTMR0-2 events replay to.
    let events = events();
    for (imr, value) in [(0, td.rt_mr0), (1, td.rt_mr1), (2, td.rt_mr2)] {
        assert_eq!(eventlog::replay_rtmr(&events, imr).unwrap(), value, "RTMR{imr}");
    }
    let measured = BootMeasurements { mrtd: td.mr_td, rtmr0: td.rt_mr0, rtmr1: td.rt_mr1, rtmr2: td.rt_mr2 };

    // A policy pinning exactly these values accepts them (also among other sets).
    let hexes = [MRTD.to_owned(), hex::encode(td.rt_mr0), hex::encode(td.rt_mr1), hex::encode(td.rt_mr2)];
    let pinned = |mrtd: &str| {
        Policy::builder()
            .allow_compose_hash(COMPOSE_HASH)
            .allow_kms_identity(KMS_IDENTITY)
            .allow_app_id(APP_ID)
            .allow_boot_measurements(mrtd, &hexes[1], &hexes[2], &hexes[3])
            .build()
            .unwrap()
    };
    check_boot_measurements(pinned(MRTD).allowed_boot_measurements(), Some(&measured)).unwrap();
    // A policy pinning another MRTD refuses the real quote, naming the measured MRTD in full.
    let mut other = hex::decode(MRTD).unwrap();
    other[47] ^= 1;
    let policy = pinned(&hex::encode(&other));
    let e = check_boot_measurements(policy.allowed_boot_measurements(), Some(&measured)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::NotAllowed));
    let message = e.to_string();
    assert!(message.contains(&format!("MRTD {MRTD}")), "{message}");
    assert!(message.contains("differing registers: set 1: MRTD;"), "{message}");
    // No hardware-verified quote: nothing to compare, refused.
    assert_eq!(failure(check_boot_measurements(pinned(MRTD).allowed_boot_measurements(), None)), F::NotAllowed);
    // Nothing pinned: no constraint.
    check_boot_measurements(&[], None).unwrap();
}
