//! Hardware verification (feature `dcap`) with the sample TDX quotes and collateral that ship in
//! the dcap-qvl crate package (`tests/data/dcap/`, see its README): verification inside and
//! outside the collateral window at a fixed `now`, the report-data slot, the TCB status policy,
//! collateral selection, hostile quotes, and collateral fetched from a fake PCCS through a tower
//! service (directly and by the key provider).
#![cfg(feature = "dcap")]

use std::sync::Arc;

use http::{StatusCode, Uri};
use serde_json::{Value, json};
use tower_aci::attest::dcap::dcap_qvl::quote::Quote;
use tower_aci::attest::dcap::{Collateral, fetch_collateral, verify_quote};
use tower_aci::attest::{KeyProvider, ManualClock, verify_report, verify_report_with_collateral};
use tower_aci::{AttestationFailure as F, ErrorKind};

use crate::attest_support::*;
use crate::doubles::{FakePccs, NOW, dcap_data as data, quote, report_with_sample_quote};

/// After the PCK CRL's, TCB info's and QE identity's nextUpdate.
const AFTER_WINDOW: u64 = 1_754_006_400; // 2025-08-01T00:00:00Z
/// Before the TCB info and QE identity were issued.
const BEFORE_WINDOW: u64 = 1_748_736_000; // 2025-06-01T00:00:00Z

fn collateral() -> Collateral {
    Collateral::from_json(&data("tdx_quote_collateral.json")).unwrap()
}

fn outdated_collateral() -> Collateral {
    Collateral::from_json(&data("tdx_quote_outdated_collateral.json")).unwrap()
}

/// A quote's own report-data slot, read with dcap-qvl's parser.
fn own_slot(raw: &[u8]) -> [u8; 64] {
    Quote::parse(raw).unwrap().report.as_td10().unwrap().report_data
}

/// Where the signed quote ends in the v4 sample (header, 584-byte TD report, length-prefixed
/// auth data); the sample carries 70 zero bytes of padding after it.
const SAMPLE_SIGNED_END: usize = 48 + 584 + 4 + 4300;

fn failure<T: std::fmt::Debug>(r: tower_aci::Result<T>) -> F {
    match r {
        Ok(v) => panic!("expected a failure, got {v:?}"),
        Err(e) => match e.kind() {
            ErrorKind::Attestation(f) => f,
            other => panic!("expected an attestation failure, got {other:?}: {e}"),
        },
    }
}

#[test]
fn sample_quote_verifies_inside_the_collateral_window() {
    let raw = quote();
    let c = collateral();
    assert_eq!(c.fmspc(), Some("B0C06F000000"));
    let v = verify_quote(&raw, &c, NOW, Some(&own_slot(&raw))).unwrap();
    assert_eq!(v.tcb_status(), "UpToDate");
    assert!(v.advisory_ids().is_empty());
    // The slot, RTMR3 and MRTD are read from the verified report (TD report offsets 520, 472, 136
    // after the 48-byte header of a v4 quote).
    assert_eq!(&v.report_data()[..], &raw[48 + 520..48 + 584]);
    assert_eq!(&v.rt_mr3()[..], &raw[48 + 472..48 + 520]);
    assert_eq!(&v.mr_td()[..], &raw[48 + 136..48 + 184]);
    v.check_tcb_status(pinned_policy().accepted_tcb_statuses()).unwrap();
    // Without an expected slot the quote verifies too.
    assert!(verify_quote(&raw, &c, NOW, None).is_ok());
    // Collateral survives a JSON round trip.
    let again = Collateral::from_json(&c.to_json()).unwrap();
    assert!(verify_quote(&raw, &again, NOW, None).is_ok());
}

#[test]
fn the_same_quote_outside_the_collateral_window_is_rejected() {
    let raw = quote();
    let c = collateral();
    let slot = own_slot(&raw);
    assert_eq!(failure(verify_quote(&raw, &c, AFTER_WINDOW, Some(&slot))), F::Quote);
    assert_eq!(failure(verify_quote(&raw, &c, BEFORE_WINDOW, Some(&slot))), F::Quote);
    // The edges: valid from the latest issue date, expired a second after the earliest nextUpdate.
    assert_eq!(failure(verify_quote(&raw, &c, 1_750_329_146, Some(&slot))), F::Quote);
    assert!(verify_quote(&raw, &c, 1_750_329_147, Some(&slot)).is_ok());
    assert_eq!(failure(verify_quote(&raw, &c, 1_752_919_236, Some(&slot))), F::Quote);
}

#[test]
fn a_quote_whose_report_data_does_not_match_is_rejected() {
    let raw = quote();
    let c = collateral();
    let mut slot = own_slot(&raw);
    slot[63] ^= 1;
    let e = verify_quote(&raw, &c, NOW, Some(&slot)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::Quote));
    assert!(e.to_string().contains("report-data slot"), "{e}");

    // A signed byte changed: the slot check passes (it is the slot we read), the signature fails.
    let mut tampered = raw.clone();
    tampered[48 + 600 - 64] ^= 1; // inside the report data
    let tampered_slot = own_slot(&tampered);
    assert_eq!(failure(verify_quote(&tampered, &c, NOW, Some(&tampered_slot))), F::Quote);
}

/// The sample quote's MRTD and RTMR0-2, read at their TD-report offsets (136, 328, 376, 424
/// after the 48-byte header) by an independent Python reading of `tdx_quote`.
const SAMPLE_BOOT: [&str; 4] = [
    "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7",
    "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0",
    "0084452c01668329d4bc06acdf58a7205c26743304509973949e5619bf81a6a7aea8c323c173019b3093d54e579e9378",
    "d833feef2cd945148aa38ead2c53e9b7f138190aaaebfc551dccd829fc207aa3ba80b70870d7330733642e01d48c3132",
];

/// A policy pinning the real capture's compose hash and KMS identity, with `boot` (MRTD,
/// RTMR0-2).
fn boot_pinned(boot: [&str; 4]) -> tower_aci::attest::Policy {
    tower_aci::attest::Policy::builder()
        .allow_compose_hash(REAL_COMPOSE_HASH)
        .allow_kms_identity(REAL_KMS_IDENTITY)
        .allow_boot_measurements(boot[0], boot[1], boot[2], boot[3])
        .build()
        .unwrap()
}

/// No test can make a hardware-verified quote with a chosen MRTD (the quote is signed by the
/// platform's PCK key), and the sample quote's report-data slot cannot carry a report's
/// `report_data`, so `verify_report` stops at the slot before comparing boot measurements. The
/// comparison it runs in step 7 is checked here on the sample quote after dcap-qvl verified it.
#[test]
fn boot_measurements_of_a_verified_quote_must_match_the_pin() {
    let v = verify_quote(&quote(), &collateral(), NOW, None).unwrap();
    let measured = v.boot_measurements();
    assert_eq!(const_hex::encode(measured.mrtd()), SAMPLE_BOOT[0]);
    assert_eq!(const_hex::encode(measured.rtmr0()), SAMPLE_BOOT[1]);
    assert_eq!(const_hex::encode(measured.rtmr1()), SAMPLE_BOOT[2]);
    assert_eq!(const_hex::encode(measured.rtmr2()), SAMPLE_BOOT[3]);
    assert_eq!(
        (v.mr_td(), v.rt_mr0(), v.rt_mr1(), v.rt_mr2()),
        (measured.mrtd(), measured.rtmr0(), measured.rtmr1(), measured.rtmr2())
    );

    // Pinned to exactly these values: accepted.
    v.check_boot_measurements(boot_pinned(SAMPLE_BOOT).allowed_boot_measurements()).unwrap();
    // A pinned set whose MRTD differs (in one bit of the last byte): refused, naming the measured
    // MRTD in full and the register that differs.
    let mut other_mrtd = const_hex::decode(SAMPLE_BOOT[0]).unwrap();
    other_mrtd[47] ^= 1;
    let other_mrtd = const_hex::encode(other_mrtd);
    let policy = boot_pinned([&other_mrtd, SAMPLE_BOOT[1], SAMPLE_BOOT[2], SAMPLE_BOOT[3]]);
    let e = v.check_boot_measurements(policy.allowed_boot_measurements()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::NotAllowed));
    let message = e.to_string();
    assert!(message.contains(&format!("MRTD {}", SAMPLE_BOOT[0])), "{message}");
    assert!(message.contains("differing registers: set 1: MRTD;"), "{message}");
    assert!(message.contains(&other_mrtd), "{message}");
    // Each RTMR0-2 register is compared too.
    for i in 1..4 {
        let mut boot = SAMPLE_BOOT.map(str::to_owned);
        boot[i] = "00".repeat(48);
        let policy = boot_pinned([&boot[0], &boot[1], &boot[2], &boot[3]]);
        let e = v.check_boot_measurements(policy.allowed_boot_measurements()).unwrap_err();
        assert!(e.to_string().contains(&format!("set 1: RTMR{};", i - 1)), "{e}");
    }
    // One matching set among several is enough.
    let both = tower_aci::attest::Policy::builder()
        .allow_compose_hash(REAL_COMPOSE_HASH)
        .allow_kms_identity(REAL_KMS_IDENTITY)
        .allow_boot_measurements(&other_mrtd, SAMPLE_BOOT[1], SAMPLE_BOOT[2], SAMPLE_BOOT[3])
        .allow_boot_measurements(SAMPLE_BOOT[0], SAMPLE_BOOT[1], SAMPLE_BOOT[2], SAMPLE_BOOT[3])
        .build()
        .unwrap();
    v.check_boot_measurements(both.allowed_boot_measurements()).unwrap();
}

#[test]
fn a_boot_measurement_pin_is_not_satisfied_by_an_unverified_quote() {
    // The dangerous stub relaxation lets a stub quote through, but it measures no MRTD: refused.
    let keyset = production_keyset(None, NOW + 3_600);
    let report = bytes(&seal_report(&keyset, Some(&[1; 32])));
    let policy = tower_aci::attest::Policy::builder()
        .allow_boot_measurements(SAMPLE_BOOT[0], SAMPLE_BOOT[1], SAMPLE_BOOT[2], SAMPLE_BOOT[3])
        .dangerous()
        .accept_stub_quote()
        .any_workload()
        .build()
        .unwrap();
    let e = verify_report(&report, &[1; 32], NOW, &policy).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::NotAllowed));
    assert!(e.to_string().contains("not hardware-verified"), "{e}");
    // Without the boot pin the same report verifies, and reports no boot measurements.
    let ks = verify_report(&report, &[1; 32], NOW, &stub_policy()).unwrap();
    assert!(ks.boot_measurements().is_none() && ks.tcb_status().is_none() && ks.advisory_ids().is_empty());
}

#[test]
fn refused_advisories_are_checked_against_the_verified_quote() {
    // The sample platform is affected by no advisory (a sample that is would need collateral of a
    // TCB level with advisories; the refusal itself is unit-tested in `dcap`).
    let v = verify_quote(&quote(), &collateral(), NOW, None).unwrap();
    assert!(v.advisory_ids().is_empty());
    let policy = pinned_builder().refuse_advisories(["INTEL-SA-00837"]).build().unwrap();
    assert_eq!(policy.refused_advisories(), ["INTEL-SA-00837"]);
    v.check_advisories(policy.refused_advisories()).unwrap();
}

#[test]
fn a_tcb_status_the_policy_does_not_accept_is_rejected() {
    // The package ships no TDX sample that verifies with a status other than UpToDate (its
    // "outdated" sample needs a TCB override to match a level), so the policy side moves instead.
    let v = verify_quote(&quote(), &collateral(), NOW, None).unwrap();
    assert_eq!(v.tcb_status(), "UpToDate");
    let only_outdated = pinned_builder().accept_tcb_statuses(["OutOfDate"]).build().unwrap();
    let e = v.check_tcb_status(only_outdated.accepted_tcb_statuses()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::TcbStatus));
    assert!(e.to_string().contains("UpToDate"), "{e}");
    let several = pinned_builder().accept_tcb_statuses(["OutOfDate", "UpToDate", "SWHardeningNeeded"]).build().unwrap();
    v.check_tcb_status(several.accepted_tcb_statuses()).unwrap();
    v.check_tcb_status(pinned_policy().accepted_tcb_statuses()).unwrap();
}

#[test]
fn collateral_of_another_platform_does_not_verify() {
    let outdated = outdated_collateral();
    assert_eq!(outdated.fmspc(), Some("90C06F000000"));
    assert_eq!(failure(verify_quote(&quote(), &outdated, NOW, None)), F::Quote);
    assert!(Collateral::from_json(b"{}").is_err_and(|e| e.kind() == ErrorKind::Config));
}

#[test]
fn hostile_quotes_fail_without_panicking() {
    let raw = quote();
    let c = collateral();
    assert_eq!(raw.len(), SAMPLE_SIGNED_END + 70);
    assert!(raw[SAMPLE_SIGNED_END..].iter().all(|b| *b == 0));
    // Truncations into the signed part, sampled (the zero padding after it may go).
    assert!(verify_quote(&raw[..SAMPLE_SIGNED_END], &c, NOW, None).is_ok());
    for len in (0..SAMPLE_SIGNED_END).step_by(37).chain([47, 48, 631, 632, 636, SAMPLE_SIGNED_END - 1]) {
        assert_eq!(failure(verify_quote(&raw[..len], &c, NOW, None)), F::Quote, "truncated to {len}");
    }
    // Flipped bytes in the signed header and TD report, the signature, the QE report and the
    // base64 of the PCK leaf and intermediate certificates (PEM at 1258..3005 and 3031..3961; the
    // chain's root certificate is not used, Intel's root is built in).
    for at in [0, 1, 2, 4, 8, 48, 200, 600, 636, 700, 1200, 1300, 2001, 3001] {
        for mask in [0x01, 0x80, 0xff] {
            let mut q = raw.clone();
            q[at] ^= mask;
            assert!(verify_quote(&q, &c, NOW, None).is_err(), "flipped byte {at} with {mask:#x}");
        }
    }
    // Flipped bytes of the auth-data length: no panic (a length one longer still reads the
    // padding and verifies, since the length is not signed).
    for at in 632..636 {
        for mask in [0x01, 0x80, 0xff] {
            let mut q = raw.clone();
            q[at] ^= mask;
            let _ = verify_quote(&q, &c, NOW, None);
        }
    }
    // Absurd lengths.
    let mut q = raw.clone();
    q[632..636].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(failure(verify_quote(&q, &c, NOW, None)), F::Quote);
    assert_eq!(failure(verify_quote(&vec![0; 1 << 20], &c, NOW, None)), F::Quote);
}

// --- the hook in verify_report -------------------------------------------------------------

#[test]
fn verify_report_runs_the_quote_through_dcap() {
    let nonce = [7u8; 32];
    let report = bytes(&report_with_sample_quote(&nonce));
    let with_collateral = pinned_builder().collateral(collateral()).build().unwrap();
    // The sample quote verifies, but its slot does not carry this report's report_data.
    let e = verify_report(&report, &nonce, NOW, &with_collateral).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::Quote));
    assert!(e.to_string().contains("report-data slot"), "{e}");
    assert_eq!(failure(verify_report_with_collateral(&report, &nonce, NOW, &pinned_policy(), &collateral())), F::Quote);

    // No collateral at all, or none for the quote's platform: the quote cannot be verified.
    assert_eq!(failure(verify_report(&report, &nonce, NOW, &pinned_policy())), F::HardwareUnverifiable);
    let elsewhere = pinned_builder().collateral(outdated_collateral()).build().unwrap();
    assert_eq!(failure(verify_report(&report, &nonce, NOW, &elsewhere)), F::HardwareUnverifiable);
    // Two platforms: the quote's is picked (and then fails on the slot).
    let both = pinned_builder().collateral(outdated_collateral()).collateral(collateral()).build().unwrap();
    assert_eq!(failure(verify_report(&report, &nonce, NOW, &both)), F::Quote);

    // A published quote_report_data must be report_data ‖ 0³² (and so the quote's slot).
    let mut qrd = report_with_sample_quote(&nonce);
    qrd["attestation"]["evidence"]["quote_report_data"] = json!(const_hex::encode(own_slot(&quote())));
    assert_eq!(failure(verify_report(&bytes(&qrd), &nonce, NOW, &with_collateral)), F::Quote);
    // tee_type must be tdx; a missing, garbled or non-TDX quote is a Quote failure.
    let mut sgx = report_with_sample_quote(&nonce);
    sgx["attestation"]["tee_type"] = json!("sgx");
    assert_eq!(failure(verify_report(&bytes(&sgx), &nonce, NOW, &with_collateral)), F::Quote);
    for bad in [Value::Null, json!("zz"), json!("0x0400"), json!(const_hex::encode(b"aci-stub-quote|"))] {
        let mut r = report_with_sample_quote(&nonce);
        r["attestation"]["evidence"]["quote"] = bad.clone();
        assert_eq!(failure(verify_report(&bytes(&r), &nonce, NOW, &with_collateral)), F::Quote, "{bad}");
    }
    // The dangerous stub policy still sends a real quote to hardware verification.
    let stub_and_collateral =
        pinned_builder().collateral(collateral()).dangerous().accept_stub_quote().any_workload().build().unwrap();
    assert_eq!(failure(verify_report(&report, &nonce, NOW, &stub_and_collateral)), F::Quote);
    // Outside the collateral window the quote itself fails (the slot is checked first here too).
    assert_eq!(failure(verify_report(&report, &nonce, AFTER_WINDOW, &with_collateral)), F::Quote);
}

#[test]
fn collateral_without_an_fmspc_is_a_config_error() {
    let mut c: serde_json::Map<String, Value> = serde_json::from_slice(&data("tdx_quote_collateral.json")).unwrap();
    c.insert("tcb_info".into(), json!("{}"));
    let c = Collateral::from_json(&serde_json::to_vec(&c).unwrap()).unwrap();
    assert_eq!(c.fmspc(), None);
    let e = pinned_builder().collateral(c).build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn collateral_fetched_from_a_pccs_verifies_the_quote() {
    let pccs = FakePccs::new();
    let raw = quote();
    let url: Uri = "https://pccs.test/sgx/certification/v4/".parse().unwrap();
    let fetched = fetch_collateral(pccs.service(), &url, &raw).await.unwrap();
    assert_eq!(fetched.fmspc(), Some("B0C06F000000"));
    assert!(fetched.as_qvl().pck_certificate_chain.is_some());
    let v = verify_quote(&raw, &fetched, NOW, Some(&own_slot(&raw))).unwrap();
    assert_eq!(v.tcb_status(), "UpToDate");
    let seen = pccs.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.iter().all(|p| p.starts_with("pccs.test/")), "{seen:?}");
    assert!(seen.iter().any(|p| p.contains("/tdx/certification/v4/tcb?fmspc=B0C06F000000")), "{seen:?}");
    assert!(seen.iter().any(|p| p.contains("pckcrl?ca=")), "{seen:?}");

    // A PCCS that answers with errors is a transport failure.
    let mut failing = FakePccs::new();
    failing.status = StatusCode::SERVICE_UNAVAILABLE;
    let e = fetch_collateral(failing.service(), &url, &raw).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport);
    // A quote that does not parse is a quote failure, before anything is fetched.
    let e = fetch_collateral(pccs.service(), &url, &raw[..100]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::Quote));
    assert_eq!(pccs.seen().len(), 4);
}

#[tokio::test]
async fn the_key_provider_fetches_collateral_through_its_service() {
    let pccs = FakePccs::new();
    // The fake answers in process (plain HTTP to loopback needs no attested channel).
    let provider = KeyProvider::builder(pccs.service())
        .base_url("http://localhost".parse().unwrap())
        .pccs("https://pccs.test".parse().unwrap())
        .clock(Arc::new(ManualClock::new(NOW)))
        .policy(pinned_policy())
        .build()
        .unwrap();
    // The collateral is fetched and the quote verified against it; the sample quote's slot does
    // not carry the report's report_data, so the report is refused for its quote.
    let e = provider.establish().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(F::Quote), "{e}");
    assert!(e.to_string().contains("report-data slot"), "{e}");
    let seen = pccs.seen();
    assert!(seen[0].starts_with("localhost/v1/aci/attestation?nonce="), "{seen:?}");
    assert_eq!(seen.iter().filter(|p| p.starts_with("pccs.test/")).count(), 4, "{seen:?}");

    // A PCCS URL without an authority is a configuration error.
    let e = KeyProvider::builder(pccs.service())
        .base_url("http://localhost".parse().unwrap())
        .pccs("/pccs".parse().unwrap())
        .policy(pinned_policy())
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
}
