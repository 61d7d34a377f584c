//! The attestation path run on a real capture (issue 15): `tests/data/real_tdx_report_2026-06.json`,
//! a report served by a production gateway (`inference.phala.com`, 2026-06-28, nonce `00…01`)
//! with a real TDX v4 quote, the real dstack event log and real KMS custody chains, in an older
//! report schema (`workload_identity`, `keyset_epoch`, no `kms_public_key`). It was published in
//! the test data of `looprig/llm` (`aci/testdata/report_aci1.json`, Apache-2.0).
//!
//! The expected values below come from the spec's notes (`real_tdx_report_2026-06.md`), which
//! were checked independently of this crate; nothing expected is computed here with the code under
//! test. Each test feeds the real bytes to the crate's own functions (`eventlog::parse`,
//! `replay_rtmr`, `runtime_event`, `measured`, `custody::recover_chain`, `check_root`,
//! `custody::verify`, and with feature `dcap` dcap-qvl's `Quote::parse` through
//! `dcap::parse_tdx`).
//!
//! The whole-report check (`verify_report` refuses it as a current report) goes through the
//! public API in `tests/all/attest_real_capture.rs`.

use serde_json::{Map, Value};

use crate::attest::custody::{self, ChainKeys};
use crate::attest::eventlog::{self, DSTACK_RUNTIME_EVENT, Event};
use crate::attest::policy::Policy;
use crate::error::{AttestationFailure as F, ErrorKind, Result};
use crate::hex;
use crate::protocol::keys::E2eeKey;

const REPORT: &str = include_str!("../../tests/data/real_tdx_report_2026-06.json");

/// The payload of the `app-id` event.
const APP_ID: &str = "fdb7a14e5a6675f752e2cb69c9067a98ca402918";
/// The payload of the `compose-hash` event.
const COMPOSE_HASH: &str = "5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb";
/// `vm_config.os_image_hash` (and the payload of the `os-image-hash` event).
const OS_IMAGE_HASH: &str = "de9c74f0c85d0820ce075cb4a99f8e39f7b681be632907c5bf8bdc95ea72feb9";
/// The KMS root all three secp256k1 chains recover.
const KMS_ROOT: &str = "0334c76e0c3f52ec64cbf9bbf5c910c272330166fd656c0a86bb330963e46910e1";
/// The app key all three secp256k1 chains recover. The notes list its prefix
/// (`02cdcc3ffd3e22f60a0e…`); the full value is from an independent pure-Python recovery
/// (Keccak-256 and secp256k1 written out, no shared code with this crate).
const APP_KEY: &str = "02cdcc3ffd3e22f60a0e4f7c0dfcc3fb62d4765295dd43997c538109b732bdb835";
/// Another valid secp256k1 key (the generator), as a root the KMS never used.
const OTHER_ROOT: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
/// The first bytes of `quote_report_data`.
const REPORT_DATA_PREFIX: &str = "659810686f7ef071";
/// The `imr == 3` events, in log order.
const RTMR3_EVENTS: [&str; 10] = [
    "system-preparing",
    "app-id",
    "compose-hash",
    "instance-id",
    "boot-mr-done",
    "mr-kms",
    "os-image-hash",
    "key-provider",
    "storage-fs",
    "system-ready",
];
/// The custody roles whose chain signs the entry's own secp256k1 key in this schema.
const SECP256K1_ROLES: [&str; 3] = ["identity", "receipt", "e2ee"];

// TDX quote v4 layout: a 48-byte header, then the 584-byte TD 1.0 report body, in which RTMR3
// sits at 472..520 and the report-data slot at 520..584.
const HEADER_LEN: usize = 48;
const RT_MR3: std::ops::Range<usize> = HEADER_LEN + 472..HEADER_LEN + 520;
const REPORT_DATA: std::ops::Range<usize> = HEADER_LEN + 520..HEADER_LEN + 584;

fn report() -> Value {
    serde_json::from_str(REPORT).expect("the capture is JSON")
}

fn evidence() -> Map<String, Value> {
    report()["attestation"]["evidence"].as_object().cloned().expect("evidence object")
}

fn evidence_str(name: &str) -> String {
    evidence()[name].as_str().unwrap_or_else(|| panic!("evidence.{name} is a string")).to_owned()
}

fn raw_quote() -> Vec<u8> {
    hex::decode(evidence_str("quote")).unwrap()
}

/// RTMR3 read from the raw quote at its fixed TDX v4 offset, after checking the header says
/// version 4 and TEE type TDX (0x81): a cross-check independent of dcap-qvl.
fn rt_mr3_at_fixed_offset(quote: &[u8]) -> [u8; 48] {
    assert_eq!(u16::from_le_bytes([quote[0], quote[1]]), 4, "quote version");
    assert_eq!(u32::from_le_bytes(quote[4..8].try_into().unwrap()), 0x81, "TEE type TDX");
    quote[RT_MR3].try_into().unwrap()
}

fn events() -> Vec<Event> {
    eventlog::parse(&evidence_str("event_log")).expect("the real event log parses")
}

fn rtmr3() -> [u8; 48] {
    rt_mr3_at_fixed_offset(&raw_quote())
}

fn failure<T: std::fmt::Debug>(r: Result<T>) -> F {
    match r {
        Ok(v) => panic!("expected an attestation failure, got {v:?}"),
        Err(e) => match e.kind() {
            ErrorKind::Attestation(f) => f,
            other => panic!("expected an attestation failure, got {other:?}: {e}"),
        },
    }
}

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
    Policy::builder().accept_kms_root(root).allow_app_id(&hex::encode(measured_app_id())).build().unwrap()
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

    // After system-ready: a second app-id and compose-hash are measured (RTMR3 changes) but the
    // lookups still return the boot-time values and see no duplicate.
    let other_id = "11".repeat(20);
    let other_hash = "22".repeat(32);
    let after = log_with(events.len(), &[("app-id", &other_id), ("compose-hash", &other_hash)]);
    assert_ne!(eventlog::replay_rtmr(&after, 3).unwrap(), rtmr3());
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

/// Documents a gap shared with the reference verifier's rule (protocol.md §6.4): the replay
/// recomputes the digest of events typed as dstack runtime events but extends the *published*
/// digest of any other event, so the `event_type` of an event whose published digest is right is
/// not bound by RTMR3. A runtime event relabelled with another type replays the same and drops
/// out of the runtime-event lookups (which only consider runtime events). Its published digest,
/// once trusted, is bound: a changed byte there breaks the replay. If the replay starts refusing
/// non-runtime events in RTMR3 (dstack only puts runtime events there), update this test.
#[test]
fn relabelling_a_runtime_event_is_not_caught_by_the_replay() {
    let good = rtmr3();
    let events = events();
    for i in events.iter().enumerate().filter(|(_, e)| e.imr == 3).map(|(i, _)| i) {
        let mut relabelled = events.clone();
        relabelled[i].event_type ^= 0x01;
        assert_eq!(eventlog::replay_rtmr(&relabelled, 3).unwrap(), good, "{}", events[i].event);
        relabelled[i].digest[0] ^= 0x01;
        assert_ne!(eventlog::replay_rtmr(&relabelled, 3).unwrap(), good, "{}", events[i].event);
    }
    let compose = events.iter().position(|e| e.event == "compose-hash").unwrap();
    let mut relabelled = events.clone();
    relabelled[compose].event_type = 0x0800_0002;
    assert_eq!(eventlog::replay_rtmr(&relabelled, 3).unwrap(), good);
    assert!(eventlog::runtime_event(&relabelled, "compose-hash").unwrap().is_none());
    assert_eq!(eventlog::measured(&relabelled, None).unwrap().compose_hash, None);
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
    let covered = custody::CoveredKeys { receipt: &[], e2ee: &keys };
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
    let keys = [real_e2ee_key()];
    let covered = custody::CoveredKeys { receipt: &[], e2ee: &keys };
    let served = &evidence()["key_custody"];
    let e = custody::verify(served, &covered, &measured_app_id(), &policy_with_root(KMS_ROOT).kms_roots)
        .expect_err("the older custody object does not pass the current rule");
    assert_eq!(e.kind(), ErrorKind::Attestation(F::Custody));
    assert!(e.to_string().contains("receipt custody entry"), "{e}");
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

// ---- the whole report, end to end ----
//
// `verify_report_skipping_collateral` runs every step of `verify_report` on the real bytes under
// a pinned, non-dangerous policy, with ONE check skipped: the DCAP collateral check (the quote's
// signature chain to Intel's root and its TCB status), because no collateral was captured with
// the report. The quote is still parsed by dcap-qvl; `tee_type`, `quote_report_data`, the
// report-data slot (`report_data ‖ 32 zero bytes`) are checked, and RTMR3 comes from the
// (unverified) TD report body, to which the event log must replay. The keyset then says
// `hardware_verified() == false`, and `verify_report` itself (which does not skip it) refuses the
// same report with `HardwareUnverifiable`.

#[cfg(feature = "dcap")]
mod end_to_end {
    use super::*;
    use crate::attest::generation::Generation;
    use crate::attest::report::{verify_report, verify_report_skipping_collateral};
    use crate::attest::{AttestedKeyset, PolicyBuilder};

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

    /// The production policy for this gateway: KMS root (custody required), compose hash and
    /// app id pins; hardware verification required; nothing dangerous.
    fn pinned() -> PolicyBuilder {
        Policy::builder().accept_kms_root(KMS_ROOT).allow_compose_hash(COMPOSE_HASH).allow_app_id(APP_ID)
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
        let other = Policy::builder().accept_kms_root(OTHER_ROOT).allow_app_id(APP_ID).build().unwrap();
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
        let root = || Policy::builder().accept_kms_root(KMS_ROOT);
        for policy in [
            root().allow_compose_hash(COMPOSE_HASH),
            root().allow_app_id(APP_ID),
            root().allow_os_image_hash(OS_IMAGE_HASH),
            // One of several allowed values.
            root().allow_compose_hash(&"11".repeat(32)).allow_compose_hash(COMPOSE_HASH),
        ] {
            verify(&report(), &NONCE, &policy.build().unwrap()).unwrap();
        }
        let mut other_hash = COMPOSE_HASH.to_owned();
        other_hash.replace_range(63.., "c");
        not_allowed(root().allow_compose_hash(&other_hash), COMPOSE_HASH);
        not_allowed(root().allow_app_id("fdb7a14e5a6675f752e2cb69c9067a98ca402919"), APP_ID);
        not_allowed(root().allow_compose_hash(COMPOSE_HASH).allow_app_id("fdb7a14e"), APP_ID);
        not_allowed(root().allow_app_id(APP_ID).allow_os_image_hash(&"de".repeat(32)), OS_IMAGE_HASH);
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
            doc["workload_keyset_digest"] = crate::attest::keyset_digest(&keyset).unwrap().into();
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
            for replacement in [None, Some(Value::Null), Some(1.into()), Some("zz".into()), Some(serde_json::json!([]))]
            {
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
}
