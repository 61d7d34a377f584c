//! Verify an ACI attestation report (`GET /v1/aci/attestation?nonce=…`) under a [`Policy`].

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::attest::anchor::{self, Anchor, KmsIdentity};
use crate::attest::custody;
#[cfg(feature = "dcap")]
use crate::attest::dcap::{self, Collateral};
use crate::attest::eventlog;
use crate::attest::generation::{self, Generation, Legacy};
use crate::attest::keyset::{self, AttestedKeyset, HardwareEvidence, ReceiptKey, TlsKey};
use crate::attest::policy::{Custody, Hardware, KeySelection, Policy, decode_hex};
use crate::error::{AttestationFailure, Error, Result};
use crate::hex;
use crate::protocol::jcs;
use crate::protocol::keys::{DEFAULT_KEY_ID, E2eeKey};
use crate::protocol::suite::Suite;

/// The report format this crate verifies.
#[cfg_attr(not(feature = "__internal-test-vectors"), allow(unreachable_pub))]
pub const API_VERSION: &str = "aci/1";

/// The `purpose` of the report-data statement.
#[cfg_attr(not(feature = "__internal-test-vectors"), allow(unreachable_pub))]
pub const STATEMENT_PURPOSE: &str = "aci.report_data.v1";

/// The E2EE version this crate speaks.
const E2EE_VERSION: &str = "2";

/// The production key id of the X25519 E2EE key.
const DEFAULT_X25519_KEY_ID: &str = "dstack-kms-e2ee-x25519-v1";

/// The raw quote of the local test gateway: this prefix, then the report-data slot.
const STUB_QUOTE_PREFIX: &[u8] = b"aci-stub-quote|";

use AttestationFailure as F;

/// Without the `dcap` feature there is no collateral to pass.
#[cfg(not(feature = "dcap"))]
type Collateral = std::convert::Infallible;

fn fail(failure: AttestationFailure, message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::attestation(failure, message)
}

/// `sha256:<hex>` of the canonical (JCS) form of a parsed `workload_keyset`, unknown members
/// included. Fails with `Canonicalization` for floats and non-ASCII member names.
///
/// ```
/// let keyset = serde_json::json!({"subject": null, "not_after": 1});
/// let digest = tower_aci::attest::keyset_digest(&keyset).unwrap();
/// assert!(digest.starts_with("sha256:") && digest.len() == 71);
/// ```
#[cfg_attr(not(feature = "__internal-test-vectors"), allow(unreachable_pub))]
pub fn keyset_digest(keyset: &Value) -> Result<String> {
    let canonical = jcs::to_vec(keyset)
        .map_err(|e| fail(F::Canonicalization, format!("the workload keyset cannot be canonicalised: {e}")))?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(&canonical))))
}

/// The report-data statement bytes:
/// `{"keyset_digest":"<digest>","nonce":"<lowercase hex>"|null,"purpose":"aci.report_data.v1"}`.
#[cfg_attr(not(feature = "__internal-test-vectors"), allow(unreachable_pub))]
pub fn report_statement(keyset_digest: &str, nonce: Option<&[u8; 32]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(b"{\"keyset_digest\":");
    jcs::write_str(keyset_digest, &mut out);
    out.extend_from_slice(b",\"nonce\":");
    match nonce {
        Some(n) => {
            out.push(b'"');
            out.extend_from_slice(hex::encode(n).as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"purpose\":\"");
    out.extend_from_slice(STATEMENT_PURPOSE.as_bytes());
    out.extend_from_slice(b"\"}");
    out
}

/// `report_data`: SHA-256 of [`report_statement`].
#[cfg_attr(not(feature = "__internal-test-vectors"), allow(unreachable_pub))]
pub fn report_data(keyset_digest: &str, nonce: Option<&[u8; 32]>) -> [u8; 32] {
    Sha256::digest(report_statement(keyset_digest, nonce)).into()
}

/// Verify an attestation report fetched with `nonce` at `now` (Unix seconds) under `policy`.
///
/// The only way to obtain an [`AttestedKeyset`]. Every failure is
/// [`ErrorKind::Attestation`](crate::error::ErrorKind::Attestation) with the reason below.
///
/// The checks run in this order, each failing closed with its own
/// [`AttestationFailure`]:
///
/// 1. `api_version == "aci/1"` ([`ApiVersion`](AttestationFailure::ApiVersion)); the document
///    has the report's shape ([`Shape`](AttestationFailure::Shape)). The shape decides the
///    report [`Generation`] (a document with members of both is `Shape`), and a policy built
///    with [`current_generation_only`](crate::attest::PolicyBuilder::current_generation_only)
///    refuses the older one ([`Generation`](AttestationFailure::Generation)).
/// 2. Hardware evidence ([`HardwareUnverifiable`](AttestationFailure::HardwareUnverifiable),
///    [`Quote`](AttestationFailure::Quote), [`TcbStatus`](AttestationFailure::TcbStatus)): under a
///    policy that requires hardware verification, a build without the `dcap` feature fails with
///    `HardwareUnverifiable`. With it, `tee_type` must be `tdx`, `quote_report_data` (if present)
///    and the TDX quote's report-data slot must equal `report_data ‖ 32 zero bytes`, the quote must
///    verify at `now` against the policy's collateral for its platform (none is
///    `HardwareUnverifiable`; see the `dcap` module), its TCB status must be one
///    the policy accepts and no Intel advisory that applies to it may be one the policy
///    refuses. The `dangerous()` stub acceptance still requires the stub quote's
///    report-data slot (and `quote_report_data`, if present) to carry `report_data`.
/// 3. Binding: the digest recomputed as `sha256:` + hex(SHA-256(JCS(parsed keyset))) — unknown
///    members included — equals `workload_keyset_digest`
///    ([`KeysetDigest`](AttestationFailure::KeysetDigest),
///    [`Canonicalization`](AttestationFailure::Canonicalization) for floats and non-ASCII member
///    names); SHA-256 of the statement built for *our* nonce equals `report_data`
///    ([`Nonce`](AttestationFailure::Nonce) when it is the `"nonce":null` statement,
///    [`ReportData`](AttestationFailure::ReportData) otherwise: a report for another nonce, or a
///    forged one). The older generation instead checks, after the digest: `workload_id` is
///    `sha256:` + hex(SHA-256(JCS(workload_identity.public_key)))
///    ([`WorkloadId`](AttestationFailure::WorkloadId)), `report_data` is SHA-256 of
///    `JCS({nonce, purpose, workload_id, workload_keyset_digest})` for our nonce (`ReportData`),
///    and the secp256k1 `keyset_endorsement` of the digest verifies under the identity key
///    ([`Endorsement`](AttestationFailure::Endorsement); see the `generation` module).
/// 4. `now < not_after` ([`Expired`](AttestationFailure::Expired)) and
///    `not_after <= now + max_validity` ([`NotAfterTooFar`](AttestationFailure::NotAfterTooFar)).
///    For the older generation `not_after` is `freshness.stale_after` (or the keyset epoch's
///    `not_after` if earlier): never unbounded.
/// 5. `service_capabilities.supported_e2ee_versions` contains `"2"`
///    ([`E2eeUnsupported`](AttestationFailure::E2eeUnsupported); there is never a plaintext
///    fallback).
/// 6. Keys: E2EE entries of unknown algorithms are ignored, a malformed entry of a known one is
///    [`BadKey`](AttestationFailure::BadKey), as is a malformed Ed25519 receipt key; the policy
///    selects the E2EE key ([`NoUsableKey`](AttestationFailure::NoUsableKey)). Of an older
///    keyset only `dstack-kms-e2ee-v1` (secp256k1) is kept; its legacy entries never are.
/// 7. Measured values against the allowlists ([`NotAllowed`](AttestationFailure::NotAllowed),
///    naming the measured value, and [`EventLog`](AttestationFailure::EventLog)). Every RTMR3
///    event must be a dstack runtime event, the log must reach `system-ready`, and the identity
///    events (`app-id`, `compose-hash`, `os-image-hash`, `instance-id`, `key-provider`,
///    `mr-kms`) are read only before it, each at most once. For a hardware-verified quote the
///    event log must replay (runtime digests recomputed) to the quote's RTMR3, and must measure a
///    `compose-hash` equal to SHA-256 of `app_compose` (required; the older generation served
///    none, so its measured compose hash stands alone) and an `app-id`; pinned boot
///    measurements must equal the quote's MRTD and RTMR0–2 (a quote that was not
///    hardware-verified matches none).
/// 8. KMS key custody, required once the policy accepts a KMS root, for every key role: the
///    keyset's identity key where it has one, the receipt keys and both E2EE roles
///    ([`Custody`](AttestationFailure::Custody)); for the older generation its own roles: the
///    identity key, the secp256k1 receipt key and the E2EE key.
///
/// # Where the app id comes from
///
/// Key custody and the app-id allowlist need the dstack app id. A hardware-verified report
/// measures it (the `app-id` event of the event log, replayed to the quote's RTMR3). When a
/// `dangerous()` policy skips hardware verification, the app id is, in this order: the one the
/// policy assumes ([`assume_app_id`](crate::attest::DangerousPolicyBuilder::assume_app_id)), the
/// `app-id` event of the (unverified) event log, or the keyset `subject` of the form
/// `app-id:0x<hex>`. Every source that names one must agree, and a non-null `subject` must be
/// `app-id:0x<hex(app_id)>` once an app id is known (as the reference verifier's policy anchor
/// requires); otherwise the report fails with `NotAllowed`.
///
/// ```
/// use tower_aci::attest::{verify_report, Policy};
/// use tower_aci::{AttestationFailure, ErrorKind};
///
/// // The real June 2026 capture's values (tests/data/real_tdx_report_2026-06.json).
/// let policy = Policy::builder()
///     .allow_compose_hash("5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb")
///     .allow_boot_measurements(
///         "f06dfda6dce1cf904d4e2bab1dc370634cf95cefa2ceb2de2eee127c9382698090d7a4a13e14c536ec6c9c3c8fa87077",
///         "ec216f1d1d591468ff4741b9b192f016b26d3f90303bfa9dbb97557273853183981f21a4bcb3ae908247538d371ad072",
///         "07e6f51aa763abfe75c3ddfbf4f425fe3f0ceff66d807a75e049303dce9addf68e7218729bd419638af63a370f65878c",
///         "a2a58c9a959a4fa44bd6da0c97a2270c051faf12084cfe91ae900e4fdff6cdd4f69a82005e04ee920f231497894d677f",
///     )
///     .allow_kms_identity(concat!(
///         "3059301306072a8648ce3d020106082a8648ce3d030107034200048844eb42ccdf8c52fd4f174f362fcb9bb",
///         "d19c45fd48f1edec2d8f1ca23536ec1a74021b4cee610c074f8294d431b2b7fee2c39e5333fdaf0a4522d43fb159d9f",
///     ))
///     .build()?;
/// let err = verify_report(br#"{"api_version":"aci/0"}"#, &[0; 32], 1_700_000_000, &policy).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Attestation(AttestationFailure::ApiVersion));
/// # Ok::<(), tower_aci::Error>(())
/// ```
pub fn verify_report(report: &[u8], nonce: &[u8; 32], now: u64, policy: &Policy) -> Result<AttestedKeyset> {
    verify(report, nonce, now, policy, Appraisal::Collateral(None))
}

/// [`verify_report`] with collateral fetched for this report's quote (feature `dcap`), used in
/// place of the policy's offline collateral.
///
/// The key provider calls this after fetching collateral from its PCCS
/// ([`fetch_collateral`](crate::attest::dcap::fetch_collateral)); call it yourself when you fetch
/// collateral another way.
#[cfg(feature = "dcap")]
#[cfg_attr(docsrs, doc(cfg(feature = "dcap")))]
pub fn verify_report_with_collateral(
    report: &[u8],
    nonce: &[u8; 32],
    now: u64,
    policy: &Policy,
    collateral: &Collateral,
) -> Result<AttestedKeyset> {
    verify(report, nonce, now, policy, Appraisal::Collateral(Some(collateral)))
}

/// How step 2 treats a quote that needs hardware verification.
#[derive(Clone, Copy)]
enum Appraisal<'a> {
    /// Verify it to Intel's root against this collateral (fetched for it), else against the
    /// policy's offline collateral for its platform. (Without feature `dcap` there is none.)
    Collateral(#[cfg_attr(not(feature = "dcap"), allow(dead_code))] Option<&'a Collateral>),
    /// Tests only, for a real quote whose collateral was never captured: every check of step 2
    /// except the DCAP collateral check (the quote's signature chain to Intel's root and its TCB
    /// status). The quote is parsed, `tee_type`, `quote_report_data` and the report-data slot
    /// are checked, and RTMR3 is taken from the *unverified* TD report body. The keyset then
    /// says `hardware_verified() == false`.
    #[cfg(all(test, feature = "dcap"))]
    UnverifiedBody,
}

/// [`verify_report`] with the DCAP collateral check as the one skipped check: see
/// [`Appraisal::UnverifiedBody`]. For tests on real captures that carry no collateral.
#[cfg(all(test, feature = "dcap"))]
pub(crate) fn verify_report_skipping_collateral(
    report: &[u8],
    nonce: &[u8; 32],
    now: u64,
    policy: &Policy,
) -> Result<AttestedKeyset> {
    verify(report, nonce, now, policy, Appraisal::UnverifiedBody)
}

fn verify(
    report: &[u8],
    nonce: &[u8; 32],
    now: u64,
    policy: &Policy,
    appraisal: Appraisal<'_>,
) -> Result<AttestedKeyset> {
    let doc: Value = serde_json::from_slice(report).map_err(|_| fail(F::Shape, "the report is not JSON"))?;
    let top = doc.as_object().ok_or_else(|| fail(F::Shape, "the report is not a JSON object"))?;

    // 1. api_version and shape.
    match top.get("api_version").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        Some(_) => return Err(fail(F::ApiVersion, "the report's api_version is not aci/1")),
        None => return Err(fail(F::ApiVersion, "the document has no api_version")),
    }
    let published_digest = top
        .get("workload_keyset_digest")
        .and_then(Value::as_str)
        .ok_or_else(|| fail(F::Shape, "the report has no workload_keyset_digest"))?;
    let attestation = object(top, "attestation")?;
    let keyset_value = attestation
        .get("workload_keyset")
        .filter(|v| v.is_object())
        .ok_or_else(|| fail(F::Shape, "the report has no workload_keyset object"))?;
    let claimed_report_data: [u8; 32] = attestation
        .get("report_data")
        .and_then(Value::as_str)
        .and_then(decode_hex)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| fail(F::Shape, "report_data is not 32 bytes of hex"))?;
    let empty = Map::new();
    let evidence = match attestation.get("evidence") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => &empty,
        Some(_) => return Err(fail(F::Shape, "evidence is not an object")),
    };
    let keyset = keyset_value.as_object().unwrap_or(&empty);
    // The generation, from the shape (see `generation`); the older one adds its own members.
    let generation = generation::detect(top, attestation, keyset)?;
    if !policy.accepts_generation(generation) {
        return Err(fail(
            F::Generation,
            format!(
                "the report is of the {} generation and the policy accepts only the current one",
                generation.name()
            ),
        ));
    }
    let legacy = match generation {
        Generation::Legacy => Some(Legacy::parse(top, attestation, keyset, evidence)?),
        _ => None,
    };

    // 2. Hardware evidence.
    let hardware = appraise_quote(attestation, evidence, &claimed_report_data, now, policy, appraisal)?;
    let rt_mr3 = hardware.as_ref().map(|(rt_mr3, _)| *rt_mr3);
    let hardware = hardware.and_then(|(_, evidence)| evidence);

    // 3. Binding.
    let digest = keyset_digest(keyset_value)?;
    if digest != published_digest {
        return Err(fail(F::KeysetDigest, "the keyset does not hash to workload_keyset_digest"));
    }
    if let Some(legacy) = &legacy {
        legacy.bind(&digest, nonce, &claimed_report_data)?;
    } else if report_data(&digest, Some(nonce)) != claimed_report_data {
        if report_data(&digest, None) == claimed_report_data {
            return Err(fail(F::Nonce, "the report binds no nonce (\"nonce\":null) but we sent one"));
        }
        return Err(fail(
            F::ReportData,
            "report_data is not bound to this keyset and our nonce (a report for another nonce, or forged)",
        ));
    }

    // 4. Expiry (the older generation's validity is its freshness; see `generation`).
    let not_after = match &legacy {
        Some(legacy) => legacy.not_after(),
        None => keyset
            .get("not_after")
            .and_then(Value::as_u64)
            .ok_or_else(|| fail(F::Shape, "the keyset's not_after is not an unsigned integer"))?,
    };
    if now >= not_after {
        return Err(fail(F::Expired, format!("the keyset expired at {not_after} (now {now})")));
    }
    if not_after > now.saturating_add(policy.max_validity) {
        return Err(fail(
            F::NotAfterTooFar,
            format!("the keyset's not_after {not_after} lies beyond the policy's horizon"),
        ));
    }

    // 5. Capabilities.
    let offers_v2 = top
        .get("service_capabilities")
        .and_then(|c| c.get("supported_e2ee_versions"))
        .and_then(Value::as_array)
        .is_some_and(|v| v.iter().any(|x| x.as_str() == Some(E2EE_VERSION)));
    if !offers_v2 {
        return Err(fail(F::E2eeUnsupported, "the service does not offer E2EE v2"));
    }

    // 6. Keys.
    let subject = match (&legacy, keyset.get("subject")) {
        (Some(legacy), _) => legacy.subject.clone(),
        (None, None | Some(Value::Null)) => None,
        (None, Some(Value::String(s))) => Some(s.clone()),
        (None, Some(_)) => return Err(fail(F::Shape, "the keyset's subject is neither a string nor null")),
    };
    let mut e2ee_keys = parse_e2ee_keys(keyset)?;
    let (receipt_keys, receipt_texts) = parse_receipt_keys(keyset)?;
    let legacy_receipt_texts = match legacy {
        Some(_) => {
            generation::retain_e2ee_keys(&mut e2ee_keys);
            generation::secp256k1_receipt_keys(keyset)?
        }
        None => Vec::new(),
    };
    let tls_keys = parse_tls_keys(keyset)?;
    let identity_key = identity_key(keyset)?;
    // Which key the policy would select among all: a keyset without one is refused here, before
    // the anchors below decide which keys may be used at all.
    select_key(&e2ee_keys, &policy.selection)?;

    // 7. Measured values and allowlists.
    let require_app_compose = generation == Generation::Current;
    let measured = measured_values(evidence, subject.as_deref(), policy, rt_mr3.as_ref(), require_app_compose)?;
    check_allowlists(attestation, &measured, policy)?;
    keyset::check_boot_measurements(policy.allowed_boot_measurements(), hardware.as_ref().map(|h| &h.boot))?;

    // 8. Key custody.
    let key_custody = evidence.get("key_custody").filter(|v| !v.is_null());
    let own_bytes = match (policy.custody, key_custody) {
        // Skipped, or no KMS root to verify it against.
        (Custody::Skip | Custody::NoRoot, _) => None,
        (Custody::Required, None) => {
            return Err(fail(F::Custody, "the policy requires key custody and the report has none"));
        }
        (Custody::Required, Some(kc)) => {
            let app_id = measured.app_id.as_deref().ok_or_else(|| {
                fail(F::Custody, "no app id is known (measured, assumed or in the subject) to verify key custody")
            })?;
            match &legacy {
                None => {
                    let covered =
                        custody::CoveredKeys { identity: identity_key, receipt: &receipt_texts, e2ee: &e2ee_keys };
                    Some(custody::verify(kc, &covered, app_id, &policy.kms_roots)?)
                }
                Some(legacy) => {
                    let covered = custody::LegacyCoveredKeys {
                        identity: legacy.identity_text,
                        receipt: &legacy_receipt_texts,
                        e2ee: &e2ee_keys,
                    };
                    custody::verify_legacy(kc, &covered, app_id, &policy.kms_roots)?;
                    // The identity key's chain signs its own bytes and the identity key endorsed
                    // this keyset's digest (step 3): every key of it is covered.
                    Some(custody::OwnBytes { e2ee: vec![true; e2ee_keys.len()] })
                }
            }
        }
    };

    // 9. Anchors: only keys an anchor covers are kept (see `anchor`).
    let anchor = if policy.pins_measured_workload() {
        // Steps 2 and 7 matched the pinned boot measurements, KMS identity and compose hash.
        Anchor::MeasuredWorkload
    } else if policy.covers_unanchored() {
        Anchor::Unanchored
    } else {
        Anchor::KmsCustody
    };
    let (e2ee_keys, receipt_keys, tls_keys) = match anchor {
        Anchor::KmsCustody => {
            let own = own_bytes.map(|o| o.e2ee).unwrap_or_default();
            let all_covered = legacy.is_some() && own.iter().all(|c| *c) && !own.is_empty();
            let mut own = own.into_iter();
            let (kept, left_out): (Vec<E2eeKey>, Vec<E2eeKey>) =
                e2ee_keys.into_iter().partition(|_| own.next().unwrap_or(false));
            if select_key(&kept, &policy.selection).is_err() {
                let names: Vec<String> =
                    left_out.iter().map(|k| format!("{} ({})", k.key_id(), k.suite().algo())).collect();
                return Err(fail(
                    F::Unanchored,
                    format!(
                        "no anchor covers the E2EE key the policy would use: the KMS root covers only keys whose \
                         custody chain signs their own bytes, and the chains of {} sign kms_public_key (a copied \
                         chain fits any key). Add allow_compose_hash, allow_boot_measurements and \
                         allow_kms_identity (the measured workload covers every key)",
                        names.join(", ")
                    ),
                ));
            }
            if all_covered { (kept, receipt_keys, tls_keys) } else { (kept, Vec::new(), Vec::new()) }
        }
        Anchor::MeasuredWorkload | Anchor::Unanchored => (e2ee_keys, receipt_keys, tls_keys),
    };
    let selected = select_key(&e2ee_keys, &policy.selection)?;
    if tls_keys.is_empty() && receipt_keys.is_empty() && anchor != Anchor::Unanchored && !policy.unauthenticated_answers
    {
        return Err(fail(
            F::Unanchored,
            format!(
                "nothing in the keyset can authenticate an answer: it lists no TLS key and no receipt key that {} \
                 covers (E2EE alone does not authenticate answers: anyone who sees a request can forge one)",
                anchor.name()
            ),
        ));
    }

    Ok(AttestedKeyset {
        digest,
        subject,
        not_after,
        e2ee_keys,
        selected,
        receipt_keys,
        tls_keys,
        verified_at: now,
        hardware_verified: rt_mr3.is_some() && appraisal.verifies_collateral(),
        generation,
        hardware,
        anchor,
        kms_identity: measured.kms_identity,
        report: bytes::Bytes::copy_from_slice(report),
        nonce: *nonce,
    })
}

fn object<'a>(parent: &'a Map<String, Value>, name: &'static str) -> Result<&'a Map<String, Value>> {
    parent
        .get(name)
        .and_then(Value::as_object)
        .ok_or_else(|| fail(F::Shape, format!("the report has no `{name}` object")))
}

/// `evidence.quote`, decoded.
fn raw_quote(evidence: &Map<String, Value>) -> Result<Option<Vec<u8>>> {
    match evidence.get("quote") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(decode_hex(s).ok_or_else(|| fail(F::Quote, "evidence.quote is not hex"))?)),
        Some(_) => Err(fail(F::Quote, "evidence.quote is not a string")),
    }
}

/// The raw quote of `report` if verifying it under `policy` needs hardware verification (and
/// so collateral); `None` when it does not or when the report is malformed (verification then
/// reports why).
#[cfg(feature = "dcap")]
pub(crate) fn quote_to_verify(report: &[u8], policy: &Policy) -> Option<Vec<u8>> {
    if policy.hardware == Hardware::Skip {
        return None;
    }
    let doc: Value = serde_json::from_slice(report).ok()?;
    let evidence = doc.get("attestation")?.get("evidence")?.as_object()?;
    let quote = raw_quote(evidence).ok()??;
    let stub = quote.starts_with(STUB_QUOTE_PREFIX) && policy.hardware == Hardware::AcceptStub;
    (!stub).then_some(quote)
}

impl Appraisal<'_> {
    /// Whether a quote that passes step 2 was verified to Intel's root (its collateral checked).
    fn verifies_collateral(self) -> bool {
        match self {
            Appraisal::Collateral(_) => true,
            #[cfg(all(test, feature = "dcap"))]
            Appraisal::UnverifiedBody => false,
        }
    }
}

/// What step 2 learnt from a quote that needs hardware verification: its RTMR3 and, when the
/// quote was verified to Intel's root, the evidence the keyset reports.
type Appraised = ([u8; 48], Option<HardwareEvidence>);

/// Step 2. Returns the quote's RTMR3 (and evidence) when the quote needed hardware verification,
/// `None` when a `dangerous()` policy let it pass unverified.
fn appraise_quote(
    attestation: &Map<String, Value>,
    evidence: &Map<String, Value>,
    report_data: &[u8; 32],
    now: u64,
    policy: &Policy,
    appraisal: Appraisal<'_>,
) -> Result<Option<Appraised>> {
    let quote = raw_quote(evidence)?;
    let stub_slot = quote.as_deref().and_then(|q| q.strip_prefix(STUB_QUOTE_PREFIX));
    let stub_allowed = matches!(policy.hardware, Hardware::AcceptStub | Hardware::Skip);
    match (stub_slot, policy.hardware) {
        (Some(slot), _) if stub_allowed => {
            check_slot(slot, report_data, true)?;
            check_quote_report_data(evidence, slot)?;
            Ok(None)
        }
        (None, Hardware::Skip) => {
            // The quote itself goes unverified; a published slot must still carry report_data.
            if let Some(qrd) = quote_report_data(evidence)? {
                check_slot(&qrd, report_data, false)?;
            }
            Ok(None)
        }
        (None, Hardware::AcceptStub) if quote.is_none() => Err(fail(F::Quote, "the report carries no quote")),
        _ => verify_hardware(attestation, evidence, quote.as_deref(), report_data, now, policy, appraisal).map(Some),
    }
}

/// Step 2 for a quote that needs hardware verification: returns its RTMR3 and evidence.
#[cfg(feature = "dcap")]
fn verify_hardware(
    attestation: &Map<String, Value>,
    evidence: &Map<String, Value>,
    quote: Option<&[u8]>,
    report_data: &[u8; 32],
    now: u64,
    policy: &Policy,
    appraisal: Appraisal<'_>,
) -> Result<Appraised> {
    let quote = quote.ok_or_else(|| fail(F::Quote, "the report carries no quote"))?;
    match appraisal {
        Appraisal::Collateral(collateral) => dcap::require_collateral(collateral, &policy.collateral)?,
        #[cfg(test)]
        Appraisal::UnverifiedBody => {}
    }
    if attestation.get("tee_type").and_then(Value::as_str) != Some("tdx") {
        return Err(fail(F::Quote, "the report's tee_type is not tdx"));
    }
    let mut slot = [0u8; 64];
    slot[..32].copy_from_slice(report_data);
    check_quote_report_data(evidence, &slot)?;
    match appraisal {
        Appraisal::Collateral(collateral) => {
            let (rt_mr3, evidence) = dcap::appraise(
                quote,
                &slot,
                collateral,
                &policy.collateral,
                &policy.tcb_statuses,
                &policy.refused_advisories,
                now,
            )?;
            Ok((rt_mr3, Some(evidence)))
        }
        #[cfg(test)]
        Appraisal::UnverifiedBody => {
            let parsed = dcap::parse_tdx(quote)?;
            if *dcap::slot_of(&parsed)? != slot {
                return Err(fail(F::Quote, "the quote's report-data slot does not carry report_data"));
            }
            let td = parsed.report.as_td10().ok_or_else(|| fail(F::Quote, "the quote is not a TDX quote"))?;
            // The body's boot measurements stand in for verified ones, so that tests on real
            // captures can exercise the pins; the keyset still says hardware_verified() == false.
            let boot = crate::attest::keyset::BootMeasurements {
                mrtd: td.mr_td,
                rtmr0: td.rt_mr0,
                rtmr1: td.rt_mr1,
                rtmr2: td.rt_mr2,
            };
            let evidence = HardwareEvidence {
                boot,
                tcb_status: "unverified (test: the collateral check was skipped)".to_owned(),
                advisory_ids: Vec::new(),
            };
            Ok((td.rt_mr3, Some(evidence)))
        }
    }
}

/// Step 2 for a quote that needs hardware verification, in a build without a verifier.
#[cfg(not(feature = "dcap"))]
fn verify_hardware(
    _attestation: &Map<String, Value>,
    _evidence: &Map<String, Value>,
    _quote: Option<&[u8]>,
    _report_data: &[u8; 32],
    _now: u64,
    _policy: &Policy,
    _appraisal: Appraisal<'_>,
) -> Result<Appraised> {
    Err(fail(
        F::HardwareUnverifiable,
        "the policy requires hardware verification of the TDX quote and this build has no quote verifier \
         (feature `dcap`)",
    ))
}

/// `slot` must be `report_data ‖ 32 zero bytes` (or, for the stub, `report_data` alone).
fn check_slot(slot: &[u8], report_data: &[u8; 32], stub: bool) -> Result<()> {
    let ok = match slot.len() {
        64 => slot[..32] == report_data[..] && slot[32..].iter().all(|b| *b == 0),
        32 => stub && slot == report_data,
        _ => false,
    };
    if ok { Ok(()) } else { Err(fail(F::Quote, "the quote's report-data slot does not carry report_data")) }
}

fn quote_report_data(evidence: &Map<String, Value>) -> Result<Option<Vec<u8>>> {
    match evidence.get("quote_report_data") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            v.as_str().and_then(decode_hex).map(Some).ok_or_else(|| fail(F::Quote, "quote_report_data is not hex"))
        }
    }
}

/// `quote_report_data`, when published, must equal the quote's slot.
fn check_quote_report_data(evidence: &Map<String, Value>, slot: &[u8]) -> Result<()> {
    match quote_report_data(evidence)? {
        Some(qrd) if qrd != slot => Err(fail(F::Quote, "quote_report_data differs from the quote's slot")),
        _ => Ok(()),
    }
}

fn entries<'a>(keyset: &'a Map<String, Value>, name: &'static str) -> Result<&'a [Value]> {
    match keyset.get(name) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(fail(F::Shape, format!("the keyset's `{name}` is not an array"))),
    }
}

fn entry_str<'a>(entry: &'a Value, list: &'static str, name: &'static str) -> Result<&'a str> {
    entry
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| fail(F::Shape, format!("an entry of `{list}` has no string `{name}`")))
}

fn parse_e2ee_keys(keyset: &Map<String, Value>) -> Result<Vec<E2eeKey>> {
    let mut keys = Vec::new();
    for entry in entries(keyset, "e2ee_public_keys")? {
        let algo = entry_str(entry, "e2ee_public_keys", "algo")?;
        let key_id = entry_str(entry, "e2ee_public_keys", "key_id")?;
        let public_key = entry_str(entry, "e2ee_public_keys", "public_key")?;
        if Suite::from_algo(algo).is_none() {
            tracing::debug!(algo, key_id, "ignoring E2EE key of an unknown algorithm");
            continue;
        }
        let key = E2eeKey::parse(key_id, algo, public_key)
            .map_err(|e| fail(F::BadKey, format!("E2EE key {key_id:?} is malformed: {e}")))?;
        keys.push(key);
    }
    Ok(keys)
}

fn parse_receipt_keys(keyset: &Map<String, Value>) -> Result<(Vec<ReceiptKey>, Vec<String>)> {
    let mut keys = Vec::new();
    let mut texts = Vec::new();
    for entry in entries(keyset, "receipt_signing_keys")? {
        let algo = entry_str(entry, "receipt_signing_keys", "algo")?;
        let key_id = entry_str(entry, "receipt_signing_keys", "key_id")?;
        let public_key = entry_str(entry, "receipt_signing_keys", "public_key")?;
        if algo != "ed25519" {
            tracing::debug!(algo, key_id, "ignoring receipt key of an unknown algorithm");
            continue;
        }
        let key = decode_hex(public_key)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
            .ok_or_else(|| fail(F::BadKey, format!("receipt key {key_id:?} is not an Ed25519 public key")))?;
        keys.push(ReceiptKey { key_id: key_id.to_owned(), key });
        texts.push(public_key.to_owned());
    }
    Ok((keys, texts))
}

/// The keyset's identity key (`workload_identity.public_key.public_key`, as the older report
/// generation publishes it), if it has one: key custody must then cover it too.
fn identity_key(keyset: &Map<String, Value>) -> Result<Option<&str>> {
    match keyset.get("workload_identity") {
        None | Some(Value::Null) => Ok(None),
        Some(identity) => identity
            .get("public_key")
            .and_then(|k| k.get("public_key"))
            .and_then(Value::as_str)
            .map(Some)
            .ok_or_else(|| fail(F::Shape, "the keyset's workload_identity names no public_key")),
    }
}

pub(crate) fn parse_tls_keys(keyset: &Map<String, Value>) -> Result<Vec<TlsKey>> {
    let mut keys = Vec::new();
    for entry in entries(keyset, "tls_public_keys")? {
        let spki = entry_str(entry, "tls_public_keys", "spki_sha256")?;
        if decode_hex(spki).is_none_or(|b| b.len() != 32) {
            return Err(fail(F::BadKey, "a TLS entry's spki_sha256 is not 32 bytes of hex"));
        }
        let domain = match entry.get("domain") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => return Err(fail(F::Shape, "a TLS entry's domain is not a string")),
        };
        keys.push(TlsKey { spki_sha256: spki.to_ascii_lowercase(), domain });
    }
    Ok(keys)
}

fn select_key(keys: &[E2eeKey], selection: &KeySelection) -> Result<usize> {
    let found = match selection {
        KeySelection::KeyId(id) => keys.iter().position(|k| k.key_id() == id),
        KeySelection::Suites(order) => order.iter().find_map(|&suite| {
            let preferred = match suite {
                Suite::Secp256k1 => DEFAULT_KEY_ID,
                Suite::X25519 => DEFAULT_X25519_KEY_ID,
            };
            keys.iter()
                .position(|k| k.suite() == suite && k.key_id() == preferred)
                .or_else(|| keys.iter().position(|k| k.suite() == suite))
        }),
    };
    found.ok_or_else(|| fail(F::NoUsableKey, "no E2EE key of the keyset matches the policy"))
}

/// Values the allowlists and key custody judge.
#[derive(Debug, Default)]
struct MeasuredValues {
    app_id: Option<Vec<u8>>,
    compose_hash: Option<[u8; 32]>,
    os_image_hash: Option<Vec<u8>>,
    /// The `key-provider` event: the KMS that provisioned the app.
    kms_identity: Option<KmsIdentity>,
}

/// Step 7's measured values. `rt_mr3` is the hardware-verified quote's RTMR3: the event log
/// must then replay to it and measure the compose hash and app id. `app_compose` (the compose
/// hash's preimage) is then required by the current generation; the older one did not serve it,
/// so its compose hash is the measured one (an `app_compose` it carries is still checked).
fn measured_values(
    evidence: &Map<String, Value>,
    subject: Option<&str>,
    policy: &Policy,
    rt_mr3: Option<&[u8; 48]>,
    require_app_compose: bool,
) -> Result<MeasuredValues> {
    let app_compose = match evidence.get("app_compose") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(fail(F::Shape, "evidence.app_compose is not a string")),
    };
    let from_log = match evidence.get("event_log") {
        None | Some(Value::Null) if rt_mr3.is_some() => {
            return Err(fail(F::EventLog, "the report has no event log to replay to the quote's RTMR3"));
        }
        None | Some(Value::Null) => eventlog::Measured::default(),
        Some(Value::String(text)) => {
            let events = eventlog::parse(text)?;
            if let Some(rt_mr3) = rt_mr3 {
                if eventlog::replay_rtmr(&events, 3)? != *rt_mr3 {
                    return Err(fail(F::EventLog, "the event log does not replay to the quote's RTMR3"));
                }
            }
            eventlog::measured(&events, app_compose)?
        }
        Some(_) => return Err(fail(F::EventLog, "evidence.event_log is not a JSON string")),
    };
    if rt_mr3.is_some() {
        if require_app_compose && app_compose.is_none() {
            return Err(fail(F::EventLog, "the hardware-verified report has no app_compose"));
        }
        if from_log.compose_hash.is_none() {
            return Err(fail(F::EventLog, "the measured event log has no compose-hash event"));
        }
        if from_log.app_id.is_none() {
            return Err(fail(F::EventLog, "the measured event log has no app-id event"));
        }
    }
    let from_subject = match subject.map(|s| (s, s.strip_prefix("app-id:0x"))) {
        Some((_, Some(h))) => Some(
            decode_hex(h)
                .filter(|b| !b.is_empty())
                .ok_or_else(|| fail(F::NotAllowed, "the keyset subject names an app id that is not hex"))?,
        ),
        _ => None,
    };

    let candidates = [policy.assumed_app_id.as_ref(), from_log.app_id.as_ref(), from_subject.as_ref()];
    let mut app_id: Option<&Vec<u8>> = None;
    for c in candidates.into_iter().flatten() {
        match app_id {
            None => app_id = Some(c),
            Some(a) if a != c => {
                return Err(fail(F::NotAllowed, "the assumed, logged and subject app ids disagree"));
            }
            Some(_) => {}
        }
    }
    if let Some(id) = app_id {
        if subject.is_some() && from_subject.is_none() {
            return Err(fail(
                F::NotAllowed,
                format!("the keyset subject must be null or app-id:0x{} for this app", hex::encode(id)),
            ));
        }
    }

    let compose_hash = from_log.compose_hash.or_else(|| app_compose.map(|c| Sha256::digest(c.as_bytes()).into()));
    Ok(MeasuredValues {
        app_id: app_id.cloned(),
        compose_hash,
        os_image_hash: from_log.os_image_hash,
        kms_identity: from_log.key_provider.as_deref().map(KmsIdentity::from_payload),
    })
}

/// `NotAllowed` for a measured value not on an allowlist: names the value seen (in full, so the
/// user can re-pin after an upgrade), the allowed ones, and the builder method that pins it.
fn not_allowed<T: AsRef<[u8]>>(what: &str, seen: Option<&T>, allowed: &[T], how: &str) -> Error {
    let allowed = allowed.iter().map(hex::encode).collect::<Vec<_>>().join(", ");
    let message = match seen {
        Some(v) => format!(
            "the {what} {} is not on the policy's allowlist (allowed: {allowed}). If the gateway was upgraded, check \
             the new {what} and re-pin with {how}",
            hex::encode(v)
        ),
        None => format!("the report measures no {what}, and the policy allows only: {allowed} ({how})"),
    };
    fail(F::NotAllowed, message)
}

fn check_allowlists(attestation: &Map<String, Value>, m: &MeasuredValues, policy: &Policy) -> Result<()> {
    let allow = &policy.allow;
    if let Some(list) = &allow.app_ids {
        if !m.app_id.as_ref().is_some_and(|id| list.contains(id)) {
            return Err(not_allowed("app id", m.app_id.as_ref(), list, "allow_app_id"));
        }
    }
    if let Some(list) = &allow.compose_hashes {
        if !m.compose_hash.is_some_and(|h| list.contains(&h)) {
            return Err(not_allowed("compose hash", m.compose_hash.as_ref(), list, "allow_compose_hash"));
        }
    }
    if let Some(list) = &allow.os_image_hashes {
        if !m.os_image_hash.as_ref().is_some_and(|h| list.contains(h)) {
            return Err(not_allowed("OS image hash", m.os_image_hash.as_ref(), list, "allow_os_image_hash"));
        }
    }
    if let Some(list) = &allow.kms_identities {
        let measured = m.kms_identity.as_ref();
        if !measured.is_some_and(|k| list.contains(&k.id)) {
            let allowed = list.iter().map(hex::encode).collect::<Vec<_>>().join(", ");
            let message = match measured {
                Some(k) => format!(
                    "the KMS identity ({}) is not on the policy's allowlist (allowed: {allowed}): another KMS \
                     provisioned this TD. If the gateway's operator moved it to another KMS, check the new \
                     identity and re-pin with allow_kms_identity",
                    k.describe()
                ),
                None => format!(
                    "the report measures no KMS identity (no key-provider event), and the policy allows only: \
                     {allowed} (allow_kms_identity)"
                ),
            };
            return Err(fail(F::NotAllowed, message));
        }
    }
    if allow.production_os {
        let image = m.os_image_hash.as_deref().and_then(anchor::production_os_image);
        if image.is_none() {
            return Err(fail(
                F::NotAllowed,
                format!(
                    "the OS image {} is not a reviewed dstack production image (require_production_os; known: {}): \
                     a development image gives its operator a shell in the TD",
                    m.os_image_hash.as_ref().map_or_else(|| "(none measured)".to_owned(), hex::encode),
                    anchor::PRODUCTION_OS_IMAGES.iter().map(|(h, n)| format!("{n} {h}")).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    let provenance = attestation.get("source_provenance").and_then(Value::as_object);
    let declared = |name: &str| provenance.and_then(|p| p.get(name)).and_then(Value::as_str);
    if let Some(list) = &allow.sources {
        let ok = match (declared("repo_url"), declared("repo_commit")) {
            (Some(url), Some(commit)) => list.iter().any(|(u, c)| u == url && c == commit),
            _ => false,
        };
        if !ok {
            return Err(fail(
                F::NotAllowed,
                format!(
                    "the source provenance (repo_url {:?}, repo_commit {:?}) is not on the policy's allowlist \
                     (allowed: {})",
                    declared("repo_url"),
                    declared("repo_commit"),
                    list.iter().map(|(u, c)| format!("{u} @ {c}")).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    if let Some(list) = &allow.image_digests {
        if !declared("image_digest").is_some_and(|d| list.iter().any(|a| a == d)) {
            return Err(fail(
                F::NotAllowed,
                format!(
                    "the image digest {:?} is not on the policy's allowlist (allowed: {})",
                    declared("image_digest"),
                    list.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_generations_state_the_same_purpose() {
        assert_eq!(generation::STATEMENT_PURPOSE, STATEMENT_PURPOSE);
    }

    #[test]
    fn statement_matches_the_spec_vector() {
        let digest = "sha256:53a5cd44b30dcc51999754c719f2628a041f174ecbf9662a6f8e898a10cd9371";
        let nonce: [u8; 32] = core::array::from_fn(|i| i as u8);
        assert_eq!(
            hex::encode(report_data(digest, Some(&nonce))),
            "df2174d28130852b413646a3786927b93e94c11d770268b65def8bdba45cb49e"
        );
        assert_eq!(
            hex::encode(report_data(digest, None)),
            "0633919ca3f00e97bafaa3304278eb22420cc3ff0d19f87dfca2d3f7508150bc"
        );
    }

    /// A dstack-shaped event log (one RTMR0 boot event, then runtime events) and the RTMR3 it
    /// replays to, computed here from the spec's recipe rather than with `eventlog`.
    fn crafted_log(compose: &str, with_app_id: bool) -> (Map<String, Value>, [u8; 48]) {
        use sha2::Sha384;
        let sha384 = |parts: &[&[u8]]| -> [u8; 48] {
            let mut h = Sha384::new();
            parts.iter().for_each(|p| h.update(p));
            h.finalize().into()
        };
        let runtime_type: u32 = 0x0800_0001;
        let compose_hash = Sha256::digest(compose.as_bytes());
        let mut runtime: Vec<(&str, Vec<u8>)> = Vec::new();
        if with_app_id {
            runtime.push(("app-id", vec![0xab; 20]));
        }
        runtime.push(("compose-hash", compose_hash.to_vec()));
        runtime.push(("system-ready", Vec::new()));
        // A boot event of another register, which does not take part in the RTMR3 replay.
        let mut events = vec![serde_json::json!({
            "imr": 0, "event_type": 0x8000_0007u32, "digest": hex::encode([0x5a; 48]), "event": "", "event_payload": ""
        })];
        let mut mr = [0u8; 48];
        for (name, payload) in &runtime {
            // The published digest is wrong on purpose: runtime digests are recomputed.
            events.push(serde_json::json!({
                "imr": 3, "event_type": runtime_type, "digest": "00".repeat(48),
                "event": name, "event_payload": hex::encode(payload),
            }));
            let d = sha384(&[&runtime_type.to_le_bytes(), b":", name.as_bytes(), b":", payload]);
            mr = sha384(&[&mr, &d]);
        }
        let evidence = serde_json::json!({
            "event_log": Value::Array(events).to_string(),
            "app_compose": compose,
        });
        (evidence.as_object().cloned().unwrap_or_default(), mr)
    }

    fn event_log_failure(r: Result<MeasuredValues>) -> bool {
        matches!(r, Err(e) if e.kind() == crate::error::ErrorKind::Attestation(F::EventLog))
    }

    #[test]
    fn hardware_measurements_replay_to_rtmr3() {
        const COMPOSE: &str = r#"{"services":{"gw":{"image":"gw@sha256:aa"}}}"#;
        let policy = Policy::builder().dangerous().any_workload().build().unwrap();
        let (evidence, rtmr3) = crafted_log(COMPOSE, true);
        let m = measured_values(&evidence, None, &policy, Some(&rtmr3), true).unwrap();
        assert_eq!(m.app_id, Some(vec![0xab; 20]));
        assert_eq!(m.compose_hash.map(|h| h.to_vec()), Some(Sha256::digest(COMPOSE.as_bytes()).to_vec()));

        // Another RTMR3.
        let mut other = rtmr3;
        other[0] ^= 1;
        assert!(event_log_failure(measured_values(&evidence, None, &policy, Some(&other), true)));
        // app_compose that does not hash to the measured compose-hash, or none at all.
        let mut tampered = evidence.clone();
        tampered.insert("app_compose".into(), Value::from("{}"));
        assert!(event_log_failure(measured_values(&tampered, None, &policy, Some(&rtmr3), true)));
        tampered.insert("app_compose".into(), Value::Null);
        assert!(event_log_failure(measured_values(&tampered, None, &policy, Some(&rtmr3), true)));
        // No event log.
        let mut no_log = evidence.clone();
        no_log.remove("event_log");
        assert!(event_log_failure(measured_values(&no_log, None, &policy, Some(&rtmr3), true)));
        // A log without an app-id event replays, but a hardware-verified report needs one.
        let (no_app_id, rtmr3_without) = crafted_log(COMPOSE, false);
        assert!(event_log_failure(measured_values(&no_app_id, None, &policy, Some(&rtmr3_without), true)));
        // Without a verified quote the log is not replayed (and an app id is optional).
        assert!(measured_values(&no_app_id, None, &policy, None, true).is_ok());
        // The measured app id is the policy anchor for the keyset subject.
        let subject = format!("app-id:0x{}", hex::encode([0xab; 20]));
        assert!(measured_values(&evidence, Some(&subject), &policy, Some(&rtmr3), true).is_ok());
        let r = measured_values(&evidence, Some("app-id:0x01"), &policy, Some(&rtmr3), true);
        assert!(matches!(r, Err(e) if e.kind() == crate::error::ErrorKind::Attestation(F::NotAllowed)));

        // The older generation served no app_compose: the measured compose hash stands alone,
        // but an app_compose that is served must still hash to it.
        let mut without = evidence.clone();
        without.remove("app_compose");
        let m = measured_values(&without, None, &policy, Some(&rtmr3), false).unwrap();
        assert_eq!(m.compose_hash.map(|h| h.to_vec()), Some(Sha256::digest(COMPOSE.as_bytes()).to_vec()));
        let mut wrong = evidence.clone();
        wrong.insert("app_compose".into(), Value::from("{}"));
        assert!(event_log_failure(measured_values(&wrong, None, &policy, Some(&rtmr3), false)));
        assert!(event_log_failure(measured_values(&no_app_id, None, &policy, Some(&rtmr3_without), false)));
    }

    #[test]
    fn slot_rules() {
        let rd = [7u8; 32];
        let mut slot = [0u8; 64];
        slot[..32].copy_from_slice(&rd);
        assert!(check_slot(&slot, &rd, false).is_ok());
        assert!(check_slot(&rd, &rd, true).is_ok());
        assert!(check_slot(&rd, &rd, false).is_err());
        slot[40] = 1;
        assert!(check_slot(&slot, &rd, true).is_err());
    }
}
