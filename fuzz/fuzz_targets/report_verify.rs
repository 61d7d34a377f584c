//! Attestation report verification on arbitrary and mutated-valid reports, under stub-accepting,
//! custody-requiring, default and hardware (DCAP, with the sample collateral) policies: never
//! panics, every failure is an attestation error, and what verifies is the keyset the report
//! carries (protocol.md §6).
//!
//! Control byte, low two bits:
//! - 0: the bytes are the report as served (binding usually fails: exercises the parsers);
//! - 1: the bytes are parsed as JSON and re-bound before verification: a report document keeps
//!   its keyset and gets the digest, `report_data` and stub quote recomputed; any other object is
//!   taken as a keyset and sealed into a reference-shaped report. Mutations of the keyset,
//!   evidence, event log, custody and capabilities then reach every check after the binding;
//! - 2: the bytes are a TDX quote, verified by dcap-qvl against the sample collateral, and
//!   wrapped into a report verified under the default policy with that collateral.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use tower_aci::ErrorKind;
use tower_aci::attest::dcap::{Collateral, verify_quote};
use tower_aci::attest::{AttestedKeyset, Policy, verify_report};
use tower_aci::protocol::{SecretKey, Suite};

/// Inside the sample collateral's validity window (2025-07-01).
const DCAP_NOW: u64 = 1_751_328_000;

struct Policies {
    list: Vec<(&'static str, Policy)>,
    hardware: Policy,
    collateral: Collateral,
}

static POLICIES: LazyLock<Policies> = LazyLock::new(|| {
    // The KMS root of the tests' dstack KMS (secp256k1 seed 32×0x11), compressed.
    let root = SecretKey::from_bytes(Suite::Secp256k1, &[0x11; 32]).unwrap().public_key();
    let root = tower_aci::protocol::kat::to_compressed_sec1(&root).unwrap();
    let collateral = Collateral::from_json(include_bytes!("../../tests/data/dcap/tdx_quote_collateral.json")).unwrap();
    Policies {
        list: vec![
            ("stub", common::stub_policy()),
            (
                "stub, no custody",
                Policy::builder().dangerous().accept_stub_quote().skip_key_custody().any_workload().build().unwrap(),
            ),
            (
                "no hardware, custody required",
                Policy::builder()
                    .accept_kms_root(&hex::encode(root))
                    .require_key_custody()
                    .prefer_x25519()
                    .dangerous()
                    .skip_hardware_verification()
                    .any_workload()
                    .build()
                    .unwrap(),
            ),
            (
                "hardware required, pinned",
                Policy::builder()
                    .allow_compose_hash(&"00".repeat(32))
                    .allow_boot_measurements(&"00".repeat(48), &"00".repeat(48), &"00".repeat(48), &"00".repeat(48))
                    .allow_kms_identity("3059")
                    .accept_kms_root(&hex::encode(root))
                    .build()
                    .unwrap(),
            ),
            (
                "stub, pinned to boot measurements",
                Policy::builder()
                    .allow_compose_hash(&"00".repeat(32))
                    .allow_boot_measurements(&"00".repeat(48), &"00".repeat(48), &"00".repeat(48), &"00".repeat(48))
                    .allow_kms_identity("3059")
                    .dangerous()
                    .accept_stub_quote()
                    .build()
                    .unwrap(),
            ),
            (
                "kms root only",
                Policy::builder()
                    .allow_app_id(&"aa".repeat(20))
                    .accept_kms_root(&hex::encode(root))
                    .dangerous()
                    .skip_hardware_verification()
                    .accept_unauthenticated_answers()
                    .build()
                    .unwrap(),
            ),
        ],
        hardware: Policy::builder().collateral(collateral.clone()).dangerous().any_workload().build().unwrap(),
        collateral,
    }
});

fn attestation_error<T>(r: &tower_aci::Result<T>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => matches!(e.kind(), ErrorKind::Attestation(_)),
    }
}

/// What verified is the report's keyset: its digest, expiry, keys and capabilities.
fn check_verified(report: &Value, k: &AttestedKeyset, now: u64, policy: &str) {
    let keyset = &report["attestation"]["workload_keyset"];
    assert_eq!(report["workload_keyset_digest"].as_str(), Some(k.digest()), "{policy}");
    assert_eq!(common::digest_of(keyset).as_deref(), Some(k.digest()), "{policy}");
    assert_eq!(keyset["not_after"].as_u64(), Some(k.not_after()), "{policy}");
    assert!(now < k.not_after(), "{policy}: expired keyset accepted");
    assert!(
        report["service_capabilities"]["supported_e2ee_versions"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == "2")),
        "{policy}: no E2EE v2 offered"
    );
    let selected = k.e2ee_key();
    let listed = keyset["e2ee_public_keys"].as_array().expect("an E2EE key came from somewhere");
    assert!(
        listed.iter().any(|e| e["key_id"].as_str() == Some(selected.key_id())
            && e["algo"].as_str() == Some(selected.suite().algo())
            && e["public_key"].as_str() == Some(selected.public_key_text())),
        "{policy}: the selected key is not an entry of the keyset"
    );
    for r in k.receipt_keys() {
        assert!(
            keyset["receipt_signing_keys"]
                .as_array()
                .is_some_and(|l| l.iter().any(|e| e["key_id"].as_str() == Some(r.key_id()) && e["algo"] == "ed25519")),
            "{policy}: a receipt key that is not an entry of the keyset"
        );
    }
    assert!(!k.hardware_verified(), "{policy}: a stub or skipped quote counted as hardware-verified");
}

fn verify_all(bytes: &[u8], now: u64, parsed: Option<&Value>) {
    for (name, policy) in &POLICIES.list {
        let r = verify_report(bytes, &common::REPORT_NONCE, now, policy);
        if std::env::var_os("FUZZ_PRINT").is_some() {
            eprintln!("{name}: {:?}", r.as_ref().map(|k| k.digest()));
        }
        assert!(attestation_error(&r), "{name}: not an attestation error");
        if let Ok(k) = r {
            assert!(*name != "default", "the default policy accepted a report without hardware verification");
            assert!(
                *name != "stub, pinned to boot measurements",
                "boot measurements were satisfied by a quote that was not hardware-verified"
            );
            let doc = match parsed {
                Some(v) => v.clone(),
                None => serde_json::from_slice(bytes).unwrap(),
            };
            if *name == "kms root only" && k.generation() == tower_aci::attest::Generation::Current {
                // A KMS root alone covers only the secp256k1 key: no other key may survive.
                assert_eq!(k.anchor(), tower_aci::attest::Anchor::KmsCustody, "{name}");
                assert!(k.e2ee_keys().iter().all(|e| e.suite() == Suite::Secp256k1), "{name}: an uncovered E2EE key");
                assert!(k.tls_keys().is_empty() && k.receipt_keys().is_empty(), "{name}: an uncovered key kept");
            }
            check_verified(&doc, &k, now, name);
        }
    }
}

fn now_for(report: &Value) -> u64 {
    report["attestation"]["workload_keyset"]["not_after"].as_u64().map_or(1_750_000_000, |n| n.saturating_sub(3600))
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    match ctl & 3 {
        0 => {
            let now = serde_json::from_slice::<Value>(rest).map_or(1_750_000_000, |v| now_for(&v));
            verify_all(rest, now, None);
        }
        1 => {
            let Ok(mut doc) = serde_json::from_slice::<Value>(rest) else { return };
            if doc.get("attestation").is_some_and(|a| a.get("workload_keyset").is_some()) {
                if common::reseal(&mut doc, &common::REPORT_NONCE).is_none() {
                    return;
                }
            } else if doc.is_object() {
                match common::seal_report(doc, &common::REPORT_NONCE) {
                    Some(r) => doc = r,
                    None => return,
                }
            } else {
                return;
            }
            let bytes = serde_json::to_vec(&doc).unwrap();
            verify_all(&bytes, now_for(&doc), Some(&doc));
        }
        _ => {
            let p = &*POLICIES;
            let q = verify_quote(rest, &p.collateral, DCAP_NOW, None);
            assert!(attestation_error(&q));
            if let Ok(v) = &q {
                let _ = (v.tcb_status(), v.rt_mr3(), v.check_tcb_status(p.hardware.accepted_tcb_statuses()));
            }
            let mut report = common::seal_report(
                json!({"not_after": DCAP_NOW + 3600, "e2ee_public_keys": [], "receipt_signing_keys": []}),
                &common::REPORT_NONCE,
            )
            .unwrap();
            report["attestation"]["evidence"]["quote"] = Value::String(hex::encode(rest));
            let r = verify_report(&serde_json::to_vec(&report).unwrap(), &common::REPORT_NONCE, DCAP_NOW, &p.hardware);
            assert!(attestation_error(&r));
            assert!(r.is_err(), "a quote that cannot carry this report's report_data verified");
        }
    }
});
