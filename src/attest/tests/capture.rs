//! The real capture (issue 15): `tests/data/real_tdx_report_2026-06.json`, a report served by a
//! production gateway (`inference.phala.com`, 2026-06-28, nonce `00…01`) with a real TDX v4
//! quote, the real dstack event log and real KMS custody chains, in an older report schema
//! (`workload_identity`, `keyset_epoch`, no `kms_public_key`). It was published in the test data
//! of `looprig/llm` (`aci/testdata/report_aci1.json`, Apache-2.0).
//!
//! The expected values below come from the spec's notes (`real_tdx_report_2026-06.md`), which
//! were checked independently of this crate; nothing expected is computed here with the code under
//! test. This file holds them and the readers of the capture the three test files share.

use serde_json::{Map, Value};

use crate::attest::PolicyBuilder;
use crate::attest::eventlog::{self, Event};
use crate::attest::policy::Policy;
use crate::error::{AttestationFailure as F, ErrorKind, Result};
use crate::hex;

pub(super) const REPORT: &str = include_str!("../../../tests/data/real_tdx_report_2026-06.json");

/// The payload of the `app-id` event.
pub(super) const APP_ID: &str = "fdb7a14e5a6675f752e2cb69c9067a98ca402918";
/// The payload of the `compose-hash` event.
pub(super) const COMPOSE_HASH: &str = "5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb";
/// `vm_config.os_image_hash` (and the payload of the `os-image-hash` event).
pub(super) const OS_IMAGE_HASH: &str = "de9c74f0c85d0820ce075cb4a99f8e39f7b681be632907c5bf8bdc95ea72feb9";
/// The KMS root all three secp256k1 chains recover.
pub(super) const KMS_ROOT: &str = "0334c76e0c3f52ec64cbf9bbf5c910c272330166fd656c0a86bb330963e46910e1";
/// The app key all three secp256k1 chains recover. The notes list its prefix
/// (`02cdcc3ffd3e22f60a0e…`); the full value is from an independent pure-Python recovery
/// (Keccak-256 and secp256k1 written out, no shared code with this crate).
pub(super) const APP_KEY: &str = "02cdcc3ffd3e22f60a0e4f7c0dfcc3fb62d4765295dd43997c538109b732bdb835";
/// Another valid secp256k1 key (the generator), as a root the KMS never used.
pub(super) const OTHER_ROOT: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
/// The first bytes of `quote_report_data`.
pub(super) const REPORT_DATA_PREFIX: &str = "659810686f7ef071";
/// The `imr == 3` events, in log order.
pub(super) const RTMR3_EVENTS: [&str; 10] = [
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
pub(super) const SECP256K1_ROLES: [&str; 3] = ["identity", "receipt", "e2ee"];

// TDX quote v4 layout: a 48-byte header, then the 584-byte TD 1.0 report body, in which RTMR3
// sits at 472..520 and the report-data slot at 520..584.
pub(super) const HEADER_LEN: usize = 48;
pub(super) const RT_MR3: std::ops::Range<usize> = HEADER_LEN + 472..HEADER_LEN + 520;
pub(super) const REPORT_DATA: std::ops::Range<usize> = HEADER_LEN + 520..HEADER_LEN + 584;

/// MRTD of the real quote, read at its fixed TD-report offset (136..184) by an independent
/// Python reading of the capture.
pub(super) const MRTD: &str =
    "f06dfda6dce1cf904d4e2bab1dc370634cf95cefa2ceb2de2eee127c9382698090d7a4a13e14c536ec6c9c3c8fa87077";
/// RTMR0-2 of the real quote (TD-report offsets 328, 376, 424), read by the same independent
/// Python reading.
pub(super) const RTMR0: &str =
    "ec216f1d1d591468ff4741b9b192f016b26d3f90303bfa9dbb97557273853183981f21a4bcb3ae908247538d371ad072";
pub(super) const RTMR1: &str =
    "07e6f51aa763abfe75c3ddfbf4f425fe3f0ceff66d807a75e049303dce9addf68e7218729bd419638af63a370f65878c";
pub(super) const RTMR2: &str =
    "a2a58c9a959a4fa44bd6da0c97a2270c051faf12084cfe91ae900e4fdff6cdd4f69a82005e04ee920f231497894d677f";
/// The `id` of the real log's `key-provider` event (`{"name":"kms","id":…}`), decoded from the
/// event payload by the same independent reading.
pub(super) const KMS_IDENTITY: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200048844eb42ccdf8c52fd4f174f362fcb9bbd19c45fd48f1edec2d8f1ca23536ec1a74021b4cee610c074f8294d431b2b7fee2c39e5333fdaf0a4522d43fb159d9f";

/// The sound combination for the real capture: its compose hash, boot measurements and KMS
/// identity.
pub(super) fn sound() -> PolicyBuilder {
    Policy::builder()
        .allow_compose_hash(COMPOSE_HASH)
        .allow_boot_measurements(MRTD, RTMR0, RTMR1, RTMR2)
        .allow_kms_identity(KMS_IDENTITY)
}

pub(super) fn report() -> Value {
    serde_json::from_str(REPORT).expect("the capture is JSON")
}

pub(super) fn evidence() -> Map<String, Value> {
    report()["attestation"]["evidence"].as_object().cloned().expect("evidence object")
}

pub(super) fn evidence_str(name: &str) -> String {
    evidence()[name].as_str().unwrap_or_else(|| panic!("evidence.{name} is a string")).to_owned()
}

pub(super) fn raw_quote() -> Vec<u8> {
    hex::decode(evidence_str("quote")).unwrap()
}

/// RTMR3 read from the raw quote at its fixed TDX v4 offset, after checking the header says
/// version 4 and TEE type TDX (0x81): a cross-check independent of dcap-qvl.
pub(super) fn rt_mr3_at_fixed_offset(quote: &[u8]) -> [u8; 48] {
    assert_eq!(u16::from_le_bytes([quote[0], quote[1]]), 4, "quote version");
    assert_eq!(u32::from_le_bytes(quote[4..8].try_into().unwrap()), 0x81, "TEE type TDX");
    quote[RT_MR3].try_into().unwrap()
}

pub(super) fn events() -> Vec<Event> {
    eventlog::parse(&evidence_str("event_log")).expect("the real event log parses")
}

pub(super) fn rtmr3() -> [u8; 48] {
    rt_mr3_at_fixed_offset(&raw_quote())
}

pub(super) fn failure<T: std::fmt::Debug>(r: Result<T>) -> F {
    match r {
        Ok(v) => panic!("expected an attestation failure, got {v:?}"),
        Err(e) => match e.kind() {
            ErrorKind::Attestation(f) => f,
            other => panic!("expected an attestation failure, got {other:?}: {e}"),
        },
    }
}
