//! The two generations of the `aci/1` report, and the rules only the older one has.
//!
//! Both generations say `api_version: "aci/1"`; they differ in shape and in what `report_data`
//! binds. [`detect`] decides the generation from the shape (a document that mixes members of
//! both is refused); the rules below are the older generation's *binding*, *endorsement* and
//! *validity* steps. Everything after them (the quote and its report-data slot, RTMR3 replay,
//! event lookups, allowlists, KMS custody, key parsing) is shared with the current generation in
//! [`report`](crate::attest::report), so the older generation is never a weaker path.
//!
//! The older generation (served by `inference.phala.com` in June 2026; see
//! `shared/spec/vectors/real_tdx_report_2026-06.md`):
//!
//! - a top-level `workload_id`; `attestation` holds `vendor`, `workload_keyset` (with
//!   `workload_identity` and `keyset_epoch` instead of `subject` and `not_after`),
//!   `keyset_endorsement`, `freshness {fetched_at, stale_after}` and `evidence`;
//! - `workload_id = "sha256:" + hex(SHA-256(JCS(workload_identity.public_key)))`;
//! - `report_data = SHA-256(JCS({nonce, purpose: "aci.report_data.v1", workload_id,
//!   workload_keyset_digest}))`, the keyset digest computed as in the current generation;
//! - `keyset_endorsement`: ECDSA over secp256k1 (`value` = hex of the 64-byte `r‖s`) over
//!   SHA-256 of `JCS({purpose: "aci.keyset.endorsement.v1", workload_keyset_digest})`, under the
//!   workload identity key (uncompressed SEC1);
//! - validity from `freshness.stale_after` (the keyset's own `keyset_epoch.not_after` is
//!   `u64::MAX` in production), bounded by the policy's horizon like the current `not_after`;
//! - the only E2EE key is `dstack-kms-e2ee-v1` (secp256k1); the legacy entries
//!   (`…-legacy-ecdsa`, `dstack-kms-legacy-ed25519-v1`) are never selected.

use k256::ecdsa::signature::hazmat::PrehashVerifier;
use k256::ecdsa::{Signature, VerifyingKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{AttestationFailure as F, Error, Result};
use crate::hex;
use crate::protocol::jcs;
use crate::protocol::keys::{DEFAULT_KEY_ID, E2eeKey};
use crate::protocol::suite::Suite;

/// Which generation of the `aci/1` report a keyset was verified from
/// ([`AttestedKeyset::generation`](crate::attest::AttestedKeyset::generation)).
///
/// Both are verified with the same hardware, event-log, allowlist and key-custody checks; a
/// policy accepts both unless built with
/// [`current_generation_only`](crate::attest::PolicyBuilder::current_generation_only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Generation {
    /// The current report (protocol.md §6.2): the keyset carries `subject` and `not_after`, and
    /// `report_data` is SHA-256 of `{"keyset_digest", "nonce", "purpose"}`.
    Current,
    /// The older report production served in June 2026: a top-level `workload_id`, a keyset with
    /// `workload_identity` and `keyset_epoch`, a secp256k1 `keyset_endorsement` by the workload
    /// identity key, `freshness`, and `report_data` binding `workload_id` as well.
    Legacy,
}

impl Generation {
    /// A short name for messages and logs: `"current"` or `"legacy (June 2026)"`.
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn name(self) -> &'static str {
        match self {
            Generation::Current => "current",
            Generation::Legacy => "legacy (June 2026)",
        }
    }
}

/// The short name: `current` or `legacy (June 2026)`.
impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The `purpose` of the report-data statement (the same as the current generation's).
pub(crate) const STATEMENT_PURPOSE: &str = "aci.report_data.v1";
/// The `purpose` of the older generation's keyset endorsement.
pub(crate) const ENDORSEMENT_PURPOSE: &str = "aci.keyset.endorsement.v1";
/// The algorithm of the identity key and of the endorsement.
pub(crate) const IDENTITY_ALGO: &str = "ecdsa-secp256k1";

fn fail(failure: F, message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::attestation(failure, message)
}

/// Members only the older generation has, as `(where, member)`.
const LEGACY_MEMBERS: [(&str, &str); 5] = [
    ("report", "workload_id"),
    ("attestation", "keyset_endorsement"),
    ("attestation", "freshness"),
    ("workload_keyset", "workload_identity"),
    ("workload_keyset", "keyset_epoch"),
];
/// Members only the current generation has.
const CURRENT_MEMBERS: [(&str, &str); 2] = [("workload_keyset", "subject"), ("workload_keyset", "not_after")];

/// The generation of a report, from its shape. A document with members of both generations
/// fails with [`Shape`](F::Shape), naming them; one with neither's is treated as current (and
/// fails there).
pub(crate) fn detect(
    top: &Map<String, Value>,
    attestation: &Map<String, Value>,
    keyset: &Map<String, Value>,
) -> Result<Generation> {
    let has = |(place, member): &(&str, &str)| {
        let object = match *place {
            "report" => top,
            "attestation" => attestation,
            _ => keyset,
        };
        object.contains_key(*member)
    };
    let name = |(place, member): &(&str, &str)| format!("{place}.{member}");
    let legacy: Vec<String> = LEGACY_MEMBERS.iter().filter(|m| has(m)).map(name).collect();
    let current: Vec<String> = CURRENT_MEMBERS.iter().filter(|m| has(m)).map(name).collect();
    match (legacy.is_empty(), current.is_empty()) {
        (true, _) => Ok(Generation::Current),
        (false, true) => Ok(Generation::Legacy),
        (false, false) => Err(fail(
            F::Shape,
            format!(
                "the report mixes members of two report generations (legacy: {}; current: {}); refusing it",
                legacy.join(", "),
                current.join(", ")
            ),
        )),
    }
}

/// What the older generation adds to a report, parsed.
#[derive(Debug)]
pub(crate) struct Legacy<'a> {
    /// The top-level `workload_id` as served.
    workload_id: &'a str,
    /// `workload_identity.public_key` (the object whose JCS form `workload_id` hashes).
    identity_object: &'a Value,
    /// `workload_identity.public_key.algo`.
    identity_algo: &'a str,
    /// `workload_identity.public_key.public_key`, as served (custody compares this text).
    pub(crate) identity_text: &'a str,
    /// `keyset_endorsement.algo` and `.value`.
    endorsement_algo: &'a str,
    endorsement_value: &'a str,
    /// `keyset_epoch.not_after`.
    epoch_not_after: u64,
    /// `freshness.stale_after`.
    stale_after: u64,
    /// `workload_identity.subject`.
    pub(crate) subject: Option<String>,
}

fn member<'a>(parent: &'a Map<String, Value>, name: &'static str, what: &str) -> Result<&'a Value> {
    parent.get(name).ok_or_else(|| fail(F::Shape, format!("the legacy report has no {what}")))
}

fn object<'a>(parent: &'a Map<String, Value>, name: &'static str, what: &str) -> Result<&'a Map<String, Value>> {
    member(parent, name, what)?.as_object().ok_or_else(|| fail(F::Shape, format!("the legacy {what} is not an object")))
}

fn string<'a>(parent: &'a Map<String, Value>, name: &'static str, what: &str) -> Result<&'a str> {
    member(parent, name, what)?.as_str().ok_or_else(|| fail(F::Shape, format!("the legacy {what} is not a string")))
}

fn unsigned(parent: &Map<String, Value>, name: &'static str, what: &str) -> Result<u64> {
    member(parent, name, what)?
        .as_u64()
        .ok_or_else(|| fail(F::Shape, format!("the legacy {what} is not an unsigned integer")))
}

impl<'a> Legacy<'a> {
    /// Parse the older generation's members; every one the rules use is required.
    pub(crate) fn parse(
        top: &'a Map<String, Value>,
        attestation: &'a Map<String, Value>,
        keyset: &'a Map<String, Value>,
        evidence: &Map<String, Value>,
    ) -> Result<Self> {
        let workload_id = string(top, "workload_id", "workload_id")?;
        let identity = object(keyset, "workload_identity", "workload_keyset.workload_identity")?;
        let subject = match identity.get("subject") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(fail(F::Shape, "the workload identity's subject is neither a string nor null")),
        };
        let identity_object = member(identity, "public_key", "workload_identity.public_key")?;
        let identity_key = identity_object
            .as_object()
            .ok_or_else(|| fail(F::Shape, "workload_identity.public_key is not an object"))?;
        let identity_algo = string(identity_key, "algo", "workload_identity.public_key.algo")?;
        let identity_text = string(identity_key, "public_key", "workload_identity.public_key.public_key")?;

        let epoch = object(keyset, "keyset_epoch", "workload_keyset.keyset_epoch")?;
        let epoch_not_after = unsigned(epoch, "not_after", "keyset_epoch.not_after")?;
        unsigned(epoch, "version", "keyset_epoch.version")?;
        let freshness = object(attestation, "freshness", "attestation.freshness")?;
        let fetched_at = unsigned(freshness, "fetched_at", "freshness.fetched_at")?;
        let stale_after = unsigned(freshness, "stale_after", "freshness.stale_after")?;
        if stale_after <= fetched_at {
            return Err(fail(F::Shape, "the legacy report's freshness.stale_after is not after fetched_at"));
        }

        let endorsement = object(attestation, "keyset_endorsement", "attestation.keyset_endorsement")?;
        let endorsement_algo = string(endorsement, "algo", "keyset_endorsement.algo")?;
        let endorsement_value = string(endorsement, "value", "keyset_endorsement.value")?;

        // The older evidence carries vm_config as a JSON string.
        match evidence.get("vm_config") {
            None | Some(Value::Null | Value::String(_)) => {}
            Some(_) => return Err(fail(F::Shape, "the legacy evidence's vm_config is not a JSON string")),
        }

        Ok(Legacy {
            workload_id,
            identity_object,
            identity_algo,
            identity_text,
            endorsement_algo,
            endorsement_value,
            epoch_not_after,
            stale_after,
            subject,
        })
    }

    /// Step 3 for the older generation, after the keyset digest was checked against
    /// `workload_keyset_digest`: `workload_id` ([`WorkloadId`](F::WorkloadId)), `report_data`
    /// for our nonce ([`ReportData`](F::ReportData)), the identity key
    /// ([`BadKey`](F::BadKey)), the endorsement ([`Endorsement`](F::Endorsement)).
    pub(crate) fn bind(&self, digest: &str, nonce: &[u8; 32], claimed_report_data: &[u8; 32]) -> Result<()> {
        if workload_id(self.identity_object)? != self.workload_id {
            return Err(fail(
                F::WorkloadId,
                "workload_id is not sha256 of the JCS form of workload_identity.public_key",
            ));
        }
        if report_data(self.workload_id, digest, Some(nonce))? != *claimed_report_data {
            return Err(fail(
                F::ReportData,
                "report_data is not bound to this workload, keyset and our nonce (a report for another nonce, or \
                 forged)",
            ));
        }
        if self.identity_algo != IDENTITY_ALGO {
            return Err(fail(F::BadKey, "the workload identity key is not an ecdsa-secp256k1 key"));
        }
        let identity = hex::decode_prefixed(self.identity_text)
            .and_then(|b| VerifyingKey::from_sec1_bytes(&b).ok())
            .ok_or_else(|| fail(F::BadKey, "the workload identity key is not a secp256k1 public key"))?;
        if self.endorsement_algo != IDENTITY_ALGO {
            return Err(fail(F::Endorsement, "the keyset endorsement is not ecdsa-secp256k1"));
        }
        let endorsement = hex::decode_prefixed(self.endorsement_value)
            .filter(|b| b.len() == 64)
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or_else(|| fail(F::Endorsement, "the keyset endorsement is not a 64-byte r‖s secp256k1 signature"))?;
        identity
            .verify_prehash(&endorsement_digest(digest), &endorsement)
            .map_err(|_| fail(F::Endorsement, "the keyset endorsement does not verify under the workload identity key"))
    }

    /// The keyset's end of validity: `freshness.stale_after`, or the keyset epoch's `not_after`
    /// if that is earlier. The caller bounds it by the policy's horizon.
    pub(crate) fn not_after(&self) -> u64 {
        self.stale_after.min(self.epoch_not_after)
    }
}

/// `"sha256:" + hex(SHA-256(JCS(public_key)))` of `workload_identity.public_key`.
pub(crate) fn workload_id(public_key: &Value) -> Result<String> {
    let canonical = jcs::to_vec(public_key)
        .map_err(|e| fail(F::Canonicalization, format!("the workload identity key cannot be canonicalised: {e}")))?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(&canonical))))
}

/// The older generation's `report_data`: SHA-256 of
/// `JCS({nonce, purpose: "aci.report_data.v1", workload_id, workload_keyset_digest})`.
pub(crate) fn report_data(workload_id: &str, digest: &str, nonce: Option<&[u8; 32]>) -> Result<[u8; 32]> {
    let statement = serde_json::json!({
        "nonce": nonce.map(hex::encode),
        "purpose": STATEMENT_PURPOSE,
        "workload_id": workload_id,
        "workload_keyset_digest": digest,
    });
    let canonical = jcs::to_vec(&statement)
        .map_err(|e| fail(F::Canonicalization, format!("the report-data statement cannot be canonicalised: {e}")))?;
    Ok(Sha256::digest(&canonical).into())
}

/// SHA-256 of `JCS({purpose: "aci.keyset.endorsement.v1", workload_keyset_digest})`: what the
/// endorsement signs.
pub(crate) fn endorsement_digest(digest: &str) -> [u8; 32] {
    let mut statement = Vec::with_capacity(160);
    statement.extend_from_slice(b"{\"purpose\":");
    jcs::write_str(ENDORSEMENT_PURPOSE, &mut statement);
    statement.extend_from_slice(b",\"workload_keyset_digest\":");
    jcs::write_str(digest, &mut statement);
    statement.push(b'}');
    Sha256::digest(&statement).into()
}

/// The older generation's E2EE keys: only `dstack-kms-e2ee-v1` of the secp256k1 suite. The
/// legacy entries are of algorithms the keyset parser already ignores (`ecdsa`, `ed25519`); any
/// other entry is dropped here, so nothing but the production key can be selected.
pub(crate) fn retain_e2ee_keys(keys: &mut Vec<E2eeKey>) {
    keys.retain(|k| {
        let keep = k.key_id() == DEFAULT_KEY_ID && k.suite() == Suite::Secp256k1;
        if !keep {
            tracing::debug!(
                key_id = k.key_id(),
                "ignoring an E2EE key of a legacy report other than dstack-kms-e2ee-v1"
            );
        }
        keep
    });
}

/// The `public_key` texts of the keyset's `ecdsa-secp256k1` receipt keys (the older generation
/// signs receipts with secp256k1). Key custody must cover each; a malformed one is
/// [`BadKey`](F::BadKey). This crate verifies no receipt of that generation (no real one exists
/// to learn the signature rule from), so these keys never verify a receipt.
pub(crate) fn secp256k1_receipt_keys(keyset: &Map<String, Value>) -> Result<Vec<String>> {
    let entries = match keyset.get("receipt_signing_keys") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(fail(F::Shape, "the keyset's `receipt_signing_keys` is not an array")),
    };
    let mut texts = Vec::new();
    for entry in entries {
        if entry.get("algo").and_then(Value::as_str) != Some(IDENTITY_ALGO) {
            continue;
        }
        let text = entry
            .get("public_key")
            .and_then(Value::as_str)
            .ok_or_else(|| fail(F::Shape, "a receipt key has no string `public_key`"))?;
        if hex::decode_prefixed(text).and_then(|b| k256::PublicKey::from_sec1_bytes(&b).ok()).is_none() {
            return Err(fail(F::BadKey, "an ecdsa-secp256k1 receipt key is not a secp256k1 public key"));
        }
        texts.push(text.to_owned());
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    type Object = Map<String, Value>;

    fn maps(doc: &Value) -> (&Object, &Object, &Object) {
        let top = doc.as_object().unwrap();
        let attestation = top["attestation"].as_object().unwrap();
        let keyset = attestation["workload_keyset"].as_object().unwrap();
        (top, attestation, keyset)
    }

    #[test]
    fn the_shape_decides_and_a_mix_is_refused() {
        let current = json!({"attestation": {"workload_keyset": {"subject": null, "not_after": 1}}});
        assert_eq!(detect(maps(&current).0, maps(&current).1, maps(&current).2).unwrap(), Generation::Current);
        let legacy =
            json!({"workload_id": "x", "attestation": {"freshness": {}, "workload_keyset": {"keyset_epoch": {}}}});
        assert_eq!(detect(maps(&legacy).0, maps(&legacy).1, maps(&legacy).2).unwrap(), Generation::Legacy);
        // One legacy member in a current report (or the reverse) is a mix.
        for (path, value) in [
            ("/workload_id", json!("x")),
            ("/attestation/keyset_endorsement", json!({})),
            ("/attestation/freshness", json!({})),
            ("/attestation/workload_keyset/workload_identity", json!({})),
            ("/attestation/workload_keyset/keyset_epoch", json!({})),
        ] {
            let mut mixed = current.clone();
            let (parent, name) = path.rsplit_once('/').unwrap();
            mixed.pointer_mut(if parent.is_empty() { "" } else { parent }).unwrap()[name] = value;
            let (t, a, k) = maps(&mixed);
            let e = detect(t, a, k).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::Attestation(F::Shape), "{path}");
            assert!(e.to_string().contains("mixes members of two report generations"), "{e}");
        }
        let mut mixed = legacy.clone();
        mixed["attestation"]["workload_keyset"]["not_after"] = json!(1);
        let (t, a, k) = maps(&mixed);
        assert_eq!(detect(t, a, k).unwrap_err().kind(), crate::error::ErrorKind::Attestation(F::Shape));
    }

    #[test]
    fn only_the_production_e2ee_key_is_kept() {
        use crate::protocol::suite::SecretKey;
        let secp = SecretKey::from_bytes(Suite::Secp256k1, &[0x44; 32]).unwrap().public_key().to_hex();
        let x = SecretKey::from_bytes(Suite::X25519, &[0x55; 32]).unwrap().public_key().to_hex();
        let mut keys = vec![
            E2eeKey::parse("dstack-kms-e2ee-v1-legacy-ecdsa", Suite::Secp256k1.algo(), secp.clone()).unwrap(),
            E2eeKey::parse("dstack-kms-e2ee-x25519-v1", Suite::X25519.algo(), x.clone()).unwrap(),
            E2eeKey::parse(DEFAULT_KEY_ID, Suite::X25519.algo(), x).unwrap(),
            E2eeKey::parse(DEFAULT_KEY_ID, Suite::Secp256k1.algo(), secp).unwrap(),
        ];
        retain_e2ee_keys(&mut keys);
        assert_eq!(keys.len(), 1);
        assert_eq!((keys[0].key_id(), keys[0].suite()), (DEFAULT_KEY_ID, Suite::Secp256k1));
    }

    #[test]
    fn endorsement_statement_is_the_jcs_form() {
        let digest = "sha256:46cdea445e5f2abcb78a5db0a630e7ba2127bc4f24033aa628b49e310e3928e2";
        let via_jcs = jcs::to_vec(&json!({"workload_keyset_digest": digest, "purpose": ENDORSEMENT_PURPOSE})).unwrap();
        assert_eq!(endorsement_digest(digest), <[u8; 32]>::from(Sha256::digest(&via_jcs)));
    }
}
