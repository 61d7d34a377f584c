//! A report checked step by step (feature `dcap`): what a gateway runs, the values to pin, and
//! whether it verifies under a policy — for the operator who is about to choose the pins, and
//! for anyone who wants more than [`verify_report`]'s first failure.
//!
//! [`inspect_report`] runs the checks in the order [`verify_report`] does and records one
//! [`Check`] per step (passed, failed or skipped, with why) and the values an operator pins
//! ([`PinValues`]), continuing past a failure wherever the next step can still run. With a
//! [`Policy`] the last check, `pins`, is the verdict: the report verified under it, or why not.
//! `aci-proxy inspect` prints exactly this.
//!
//! **The values are trusted on first use**: they are read from the report being inspected.
//! Compare them with what the gateway's operator publishes before you pin them.
//!
//! ```
//! use tower_aci::attest::inspect::{Outcome, inspect_report};
//!
//! // Not a report: the first check fails, and nothing is read.
//! let found = inspect_report(b"<html>", &[0; 32], 1_750_000_000, None, None);
//! assert_eq!(found.checks[0].name, "report");
//! assert_eq!(found.checks[0].outcome, Outcome::Fail);
//! assert!(!found.verified);
//! ```

use serde_json::{Map, Value};

use super::dcap::{self, Collateral};
use super::report::{API_VERSION, keyset_digest};
use super::{AttestedKeyset, Policy, anchor, custody, eventlog, generation, verify_report};
use crate::error::ErrorKind;
use crate::error::{AttestationFailure, Result};
use crate::hex;

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The check passed.
    Pass,
    /// The check failed.
    Fail,
    /// The check could not run (its detail says why).
    Skip,
}

impl Outcome {
    /// `"pass"`, `"fail"` or `"skip"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Skip => "skip",
        }
    }
}

/// One step of the verification.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Check {
    /// What was checked: `report`, `quote`, `binding`, `expiry`, `keys`, `event log`,
    /// `identity`, `key custody`, `pins` (in that order), or a caller's own step.
    pub name: &'static str,
    /// How it ended.
    pub outcome: Outcome,
    /// What was seen, or why it failed or was skipped.
    pub detail: String,
}

impl Check {
    /// A check of the caller's own (a fetch, the TLS channel the report came over), to insert
    /// among [`ReportInspection::checks`].
    pub fn new(name: &'static str, outcome: Outcome, detail: impl Into<String>) -> Check {
        Check { name, outcome, detail: detail.into() }
    }
}

/// The values to pin, as the report shows them (lowercase hex, as the policy builder takes
/// them). Each is `None` (or empty) when the report does not carry it or its check failed.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PinValues {
    /// `sha256:…` of the keyset.
    pub keyset_digest: Option<String>,
    /// The report generation ([`Generation::name`](super::Generation::name)).
    pub generation: Option<String>,
    /// The measured compose hash ([`PolicyBuilder::allow_compose_hash`](super::PolicyBuilder::allow_compose_hash)).
    pub compose_hash: Option<String>,
    /// The measured app id.
    pub app_id: Option<String>,
    /// The measured OS image hash.
    pub os_image_hash: Option<String>,
    /// The KMS root every key custody chain recovers to.
    pub kms_root: Option<String>,
    /// The KMS identity: the `id` of the `key-provider` event (the KMS that provisioned the app).
    pub kms_identity: Option<String>,
    /// The reviewed production image the OS image hash names (`dstack 0.5.9`, …; see
    /// [`PRODUCTION_OS_IMAGES`](super::PRODUCTION_OS_IMAGES)), or `None` for a development or
    /// unknown image.
    pub production_os: Option<String>,
    /// `vm_config.image`, when the report carries it (e.g. `dstack-dev-0.5.9-de9c74f0`).
    pub vm_image: Option<String>,
    /// MRTD, RTMR0, RTMR1, RTMR2 of the quote.
    pub boot_measurements: Option<[String; 4]>,
    /// Whether the boot measurements come from a quote verified to Intel's root.
    pub boot_measurements_verified: bool,
    /// The platform's TCB status (hardware-verified quotes only).
    pub tcb_status: Option<String>,
    /// Intel advisories that apply to the platform's TCB level.
    pub advisory_ids: Vec<String>,
    /// TLS keys: (domain, SPKI SHA-256).
    pub tls_keys: Vec<(Option<String>, String)>,
    /// E2EE keys: (key id, suite, public key).
    pub e2ee_keys: Vec<(String, String, String)>,
    /// The keyset's `not_after` (Unix seconds).
    pub not_after: Option<u64>,
}

/// What [`inspect_report`] found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReportInspection {
    /// The checks, in the order verification runs.
    pub checks: Vec<Check>,
    /// The values to pin.
    pub values: PinValues,
    /// Whether the report verified under the policy given (the `pins` check); `false` without
    /// one.
    pub verified: bool,
}

impl ReportInspection {
    fn push(&mut self, name: &'static str, outcome: Outcome, detail: impl Into<String>) {
        self.checks.push(Check::new(name, outcome, detail));
    }
}

/// A lenient policy that verifies everything but the hardware quote and the pins: the report's
/// structure, binding and expiry, to read its values.
fn structural_policy() -> Result<Policy> {
    Policy::builder().dangerous().skip_hardware_verification().any_workload().build()
}

fn hex48(b: &[u8; 48]) -> String {
    hex::encode(b)
}

/// Check the report `report`, fetched with `nonce`, at `now` (Unix seconds), step by step.
///
/// `collateral` verifies the quote to Intel's root (fetch it with
/// [`dcap::fetch_collateral`]); without it the `quote` check is skipped and the boot
/// measurements are read from an unverified quote. With a `policy`, the last check (`pins`)
/// verifies the report under it ([`verify_report_with_collateral`](super::verify_report_with_collateral)
/// when collateral is given) and sets [`verified`](ReportInspection::verified); without one
/// there is no `pins` check. Never fails and never panics: a report that cannot be read is a
/// failed `report` check.
pub fn inspect_report(
    report: &[u8],
    nonce: &[u8; 32],
    now: u64,
    policy: Option<&Policy>,
    collateral: Option<&Collateral>,
) -> ReportInspection {
    let mut out = ReportInspection { checks: Vec::new(), values: PinValues::default(), verified: false };
    let doc: Value = match serde_json::from_slice(report) {
        Ok(v) => v,
        Err(_) => {
            out.push("report", Outcome::Fail, "not JSON");
            return out;
        }
    };
    let empty = Map::new();
    let top = doc.as_object().unwrap_or(&empty);
    let attestation = top.get("attestation").and_then(Value::as_object).unwrap_or(&empty);
    let evidence = attestation.get("evidence").and_then(Value::as_object).unwrap_or(&empty);
    let keyset = attestation.get("workload_keyset").and_then(Value::as_object).unwrap_or(&empty);
    // `vm_config` is a JSON string (or, served by some gateways, an object).
    let vm_config = match evidence.get("vm_config") {
        Some(Value::String(text)) => serde_json::from_str::<Value>(text).ok(),
        Some(v @ Value::Object(_)) => Some(v.clone()),
        _ => None,
    };
    out.values.vm_image = vm_config.as_ref().and_then(|c| c.get("image")).and_then(Value::as_str).map(str::to_owned);

    // 1. Shape and generation.
    match top.get("api_version").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        other => {
            out.push("report", Outcome::Fail, format!("api_version is {other:?}, not aci/1"));
            return out;
        }
    }
    match generation::detect(top, attestation, keyset) {
        Ok(g) => {
            out.values.generation = Some(g.name().to_owned());
            out.push("report", Outcome::Pass, format!("aci/1, {} report generation", g.name()));
        }
        Err(e) => {
            out.push("report", Outcome::Fail, e.to_string());
            return out;
        }
    }

    // 2. The hardware quote.
    let raw_quote = evidence.get("quote").and_then(Value::as_str).and_then(hex::decode);
    let mut rt_mr3 = None;
    match &raw_quote {
        None => out.push("quote", Outcome::Fail, "the report carries no TDX quote"),
        Some(q) if q.starts_with(b"aci-stub-quote|") => {
            out.push("quote", Outcome::Fail, "a stub quote (the local test gateway), not TDX hardware")
        }
        Some(q) => match dcap::parse_tdx(q) {
            Err(e) => out.push("quote", Outcome::Fail, e.to_string()),
            Ok(parsed) => {
                if let Some(td) = parsed.report.as_td10() {
                    rt_mr3 = Some(td.rt_mr3);
                    out.values.boot_measurements =
                        Some([hex48(&td.mr_td), hex48(&td.rt_mr0), hex48(&td.rt_mr1), hex48(&td.rt_mr2)]);
                }
                match collateral {
                    None => out.push(
                        "quote",
                        Outcome::Skip,
                        format!(
                            "TDX v{} quote parsed; not verified to Intel's root: no collateral",
                            parsed.header.version
                        ),
                    ),
                    Some(c) => match dcap::verify_quote(q, c, now, None) {
                        Ok(v) => {
                            out.values.boot_measurements_verified = true;
                            out.values.tcb_status = Some(v.tcb_status().to_owned());
                            out.values.advisory_ids = v.advisory_ids().to_vec();
                            rt_mr3 = Some(*v.rt_mr3());
                            out.push(
                                "quote",
                                Outcome::Pass,
                                format!("verified to Intel's root; TCB status {}", v.tcb_status()),
                            );
                        }
                        Err(e) => out.push("quote", Outcome::Fail, e.to_string()),
                    },
                }
            }
        },
    }

    // 3-6. Binding, expiry, capabilities and keys: the verifier itself, without the quote and
    // the pins.
    let structural = structural_policy().and_then(|p| verify_report(report, nonce, now, &p));
    match &structural {
        Ok(k) => {
            record_keyset(&mut out.values, k);
            out.push("binding", Outcome::Pass, format!("report_data binds keyset {} and our nonce", k.digest()));
            out.push(
                "expiry",
                Outcome::Pass,
                format!("not_after {} ({} s from now)", k.not_after(), k.not_after().saturating_sub(now)),
            );
            out.push(
                "keys",
                Outcome::Pass,
                format!("{} E2EE v2 key(s), {} TLS key(s)", k.e2ee_keys().len(), k.tls_keys().len()),
            );
        }
        Err(e) => {
            let name = match e.kind() {
                ErrorKind::Attestation(AttestationFailure::Expired)
                | ErrorKind::Attestation(AttestationFailure::NotAfterTooFar) => "expiry",
                ErrorKind::Attestation(AttestationFailure::E2eeUnsupported) => "keys",
                _ => "binding",
            };
            out.push(name, Outcome::Fail, e.to_string());
            if let Ok(d) = attestation.get("workload_keyset").map(keyset_digest).transpose() {
                out.values.keyset_digest = d;
            }
        }
    }

    // 7. The event log and the values it measures.
    let app_compose = evidence.get("app_compose").and_then(Value::as_str);
    let mut app_id = None;
    match evidence.get("event_log").and_then(Value::as_str).map(eventlog::parse) {
        None => out.push("event log", Outcome::Fail, "the report carries no event log"),
        Some(Err(e)) => out.push("event log", Outcome::Fail, e.to_string()),
        Some(Ok(events)) => {
            match (rt_mr3, eventlog::replay_rtmr(&events, 3)) {
                (_, Err(e)) => out.push("event log", Outcome::Fail, e.to_string()),
                (Some(q), Ok(r)) if q == r => {
                    out.push("event log", Outcome::Pass, format!("{} events replay to the quote's RTMR3", events.len()))
                }
                (Some(_), Ok(_)) => out.push("event log", Outcome::Fail, "does not replay to the quote's RTMR3"),
                (None, Ok(_)) => out.push("event log", Outcome::Skip, "no quote to replay it against"),
            }
            match eventlog::measured(&events, app_compose) {
                Ok(m) => {
                    out.values.compose_hash = m.compose_hash.map(hex::encode);
                    out.values.app_id = m.app_id.as_deref().map(hex::encode);
                    out.values.os_image_hash = m.os_image_hash.as_deref().map(hex::encode);
                    out.values.production_os =
                        m.os_image_hash.as_deref().and_then(anchor::production_os_image).map(str::to_owned);
                    out.values.kms_identity = m
                        .key_provider
                        .as_deref()
                        .map(anchor::KmsIdentity::from_payload)
                        .filter(|k| !k.id.is_empty())
                        .map(|k| k.id_hex());
                    app_id = m.app_id;
                    let compose = match app_compose {
                        Some(_) => "app_compose hashes to the measured compose-hash",
                        None => "no app_compose in the report: its compose hash is measured but has no preimage",
                    };
                    let kms = if out.values.kms_identity.is_some() { ", KMS identity" } else { "; no KMS identity" };
                    out.push(
                        "identity",
                        Outcome::Pass,
                        format!("app id, compose hash, OS image hash{kms} read; {compose}"),
                    );
                }
                Err(e) => out.push("identity", Outcome::Fail, e.to_string()),
            }
        }
    }

    // 8. Key custody: the root every chain recovers to.
    match (evidence.get("key_custody").filter(|v| !v.is_null()), &app_id) {
        (None, _) => out.push("key custody", Outcome::Skip, "the report carries no key_custody"),
        (Some(_), None) => out.push("key custody", Outcome::Skip, "no measured app id to recover the chains with"),
        (Some(kc), Some(app_id)) => match custody_root(kc, app_id) {
            Ok((root, n)) => {
                out.values.kms_root = Some(hex::encode(root));
                out.push("key custody", Outcome::Pass, format!("{n} chain(s) recover one KMS root"));
            }
            Err(e) => out.push("key custody", Outcome::Fail, e),
        },
    }

    // 9. The verdict: the policy given.
    let Some(policy) = policy else { return out };
    let verdict = match collateral {
        Some(c) => super::verify_report_with_collateral(report, nonce, now, policy, c),
        None => verify_report(report, nonce, now, policy),
    };
    match verdict {
        Ok(k) => {
            out.verified = true;
            record_keyset(&mut out.values, &k);
            out.push("pins", Outcome::Pass, "verified under the pins given");
        }
        Err(e) if e.kind() == ErrorKind::Attestation(AttestationFailure::HardwareUnverifiable) => {
            let why = "the quote cannot be verified to Intel's root without collateral: inspect the gateway online \
                       (collateral from a PCCS)";
            out.push("pins", Outcome::Fail, why);
        }
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or_default().to_owned();
            out.push("pins", Outcome::Fail, first);
        }
    }
    out
}

fn record_keyset(v: &mut PinValues, k: &AttestedKeyset) {
    v.keyset_digest = Some(k.digest().to_owned());
    v.not_after = Some(k.not_after());
    v.tls_keys = k.tls_keys().iter().map(|t| (t.domain.clone(), t.spki_sha256.clone())).collect();
    v.e2ee_keys = k
        .e2ee_keys()
        .iter()
        .map(|e| (e.key_id().to_owned(), e.suite().algo().to_owned(), e.public_key_text().to_owned()))
        .collect();
    if let Some(b) = k.boot_measurements() {
        v.boot_measurements = Some([hex48(b.mrtd()), hex48(b.rtmr0()), hex48(b.rtmr1()), hex48(b.rtmr2())]);
        v.boot_measurements_verified = true;
    }
    if let Some(s) = k.tcb_status() {
        v.tcb_status = Some(s.to_owned());
        v.advisory_ids = k.advisory_ids().to_vec();
    }
}

/// The KMS root every custody chain of `key_custody` recovers to, and how many chains.
fn custody_root(key_custody: &Value, app_id: &[u8]) -> std::result::Result<([u8; 33], usize), String> {
    let entries = key_custody.get("keys").and_then(Value::as_array).ok_or("key_custody has no keys array")?;
    let mut root = None;
    let mut n = 0;
    for entry in entries.iter().filter_map(Value::as_object) {
        let (Some(purpose), Some(role)) =
            (entry.get("purpose").and_then(Value::as_str), entry.get("role").and_then(Value::as_str))
        else {
            continue;
        };
        let signed = if entry.contains_key("kms_public_key") { "kms_public_key" } else { "public_key" };
        // Ed25519 entries of the older generation cannot be checked from outside.
        let Ok(key) = custody::secp256k1_member(entry, signed, role) else { continue };
        let chain = custody::signature_chain(entry, role).map_err(|e| e.to_string())?;
        let keys = custody::recover_chain(purpose, &key, app_id, &chain, role).map_err(|e| e.to_string())?;
        match root {
            None => root = Some(keys.root),
            Some(r) if r != keys.root => return Err(format!("the {role} chain recovers another KMS root")),
            Some(_) => {}
        }
        n += 1;
    }
    root.map(|r| (r, n)).ok_or_else(|| "no custody chain could be checked".to_owned())
}
