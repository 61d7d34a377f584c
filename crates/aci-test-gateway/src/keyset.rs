//! The gateway's keys, its workload keyset and the attestation report it serves (protocol.md
//! §6.2, §8.3).

use std::fmt;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use const_hex as hex;
use tower_aci::__private::jcs_to_vec;
use tower_aci::protocol::{PublicKey, SecretKey, Suite};

/// Key id of the receipt-signing key, as production publishes it.
pub(crate) const RECEIPT_KEY_ID: &str = "dstack-kms-receipt-ed25519-v1";
/// Key id of the secp256k1 E2EE v2 key (published first).
pub(crate) const SECP256K1_KEY_ID: &str = "dstack-kms-e2ee-v1";
/// Key id of the X25519 E2EE v2 key.
pub(crate) const X25519_KEY_ID: &str = "dstack-kms-e2ee-x25519-v1";

/// The fixed seeds of protocol.md §8.3.
pub(crate) const RECEIPT_SEED: [u8; 32] = [0x66; 32];
pub(crate) const SECP256K1_SEED: [u8; 32] = [0x44; 32];
pub(crate) const X25519_SEED: [u8; 32] = [0x55; 32];

/// The prefix of the stub quote: `quote = hex("aci-stub-quote|" ‖ report_data)`.
pub(crate) const STUB_QUOTE_PREFIX: &[u8] = b"aci-stub-quote|";

/// Seeds of the older generation's secp256k1 keys under fixed seeds.
const IDENTITY_SEED: [u8; 32] = [0x77; 32];
const LEGACY_RECEIPT_SEED: [u8; 32] = [0x78; 32];
/// How long a report of the older generation stays fresh (`freshness.stale_after - fetched_at`),
/// as production served it.
const LEGACY_FRESHNESS_SECS: u64 = 3_600;

/// The keys only the older (June 2026) report generation publishes: the workload identity key
/// that endorses the keyset, and a secp256k1 receipt key (published, never used: this gateway
/// signs receipts with Ed25519, which a keyset of that generation does not list).
#[derive(Clone)]
pub(crate) struct LegacyKeys {
    identity: k256::ecdsa::SigningKey,
    receipt: k256::ecdsa::VerifyingKey,
}

impl LegacyKeys {
    pub(crate) fn new(fixed: bool) -> Self {
        let key = |seed: &[u8; 32]| {
            if fixed {
                k256::ecdsa::SigningKey::from_bytes(seed.into()).expect("0x77…/0x78… are valid scalars")
            } else {
                k256::ecdsa::SigningKey::random(&mut OsRng)
            }
        };
        LegacyKeys { identity: key(&IDENTITY_SEED), receipt: *key(&LEGACY_RECEIPT_SEED).verifying_key() }
    }
}

/// Uncompressed SEC1 hex of a secp256k1 key.
fn uncompressed(key: &k256::ecdsa::VerifyingKey) -> String {
    hex::encode(key.to_encoded_point(false).as_bytes())
}

fn sha256_jcs(value: &Value) -> [u8; 32] {
    Sha256::digest(jcs_to_vec(value).expect("strings, integers and null only")).into()
}

/// One E2EE service key: the secret the gateway decrypts with and the entry it publishes.
pub(crate) struct ServiceKey {
    pub(crate) key_id: String,
    pub(crate) secret: SecretKey,
    pub(crate) public: PublicKey,
}

impl ServiceKey {
    pub(crate) fn new(key_id: impl Into<String>, secret: SecretKey) -> Self {
        let public = secret.public_key();
        ServiceKey { key_id: key_id.into(), secret, public }
    }

    pub(crate) fn suite(&self) -> Suite {
        self.public.suite()
    }

    fn random(key_id: &str, suite: Suite) -> Self {
        ServiceKey::new(key_id, SecretKey::generate(suite, &mut OsRng))
    }
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceKey").field("key_id", &self.key_id).field("public", &self.public).finish()
    }
}

/// The production pair of E2EE keys, secp256k1 first.
pub(crate) fn e2ee_keys(fixed: bool) -> Vec<Arc<ServiceKey>> {
    if fixed {
        vec![
            Arc::new(ServiceKey::new(
                SECP256K1_KEY_ID,
                SecretKey::from_bytes(Suite::Secp256k1, &SECP256K1_SEED).expect("0x44… is a valid scalar"),
            )),
            Arc::new(ServiceKey::new(
                X25519_KEY_ID,
                SecretKey::from_bytes(Suite::X25519, &X25519_SEED).expect("any 32 bytes are an X25519 key"),
            )),
        ]
    } else {
        vec![
            Arc::new(ServiceKey::random(SECP256K1_KEY_ID, Suite::Secp256k1)),
            Arc::new(ServiceKey::random(X25519_KEY_ID, Suite::X25519)),
        ]
    }
}

/// The receipt-signing key.
pub(crate) fn receipt_key(fixed: bool) -> SigningKey {
    if fixed {
        SigningKey::from_bytes(&RECEIPT_SEED)
    } else {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let key = SigningKey::from_bytes(&seed);
        zeroize::Zeroize::zeroize(&mut seed);
        key
    }
}

/// A sealed keyset: the keys, the served keyset object and its digest. Immutable; rotation
/// builds a new one.
pub(crate) struct Keyset {
    pub(crate) receipt_key_id: String,
    pub(crate) receipt_key: SigningKey,
    pub(crate) e2ee: Vec<Arc<ServiceKey>>,
    pub(crate) not_after: u64,
    /// The `tls_public_keys` entries.
    pub(crate) tls: Vec<Value>,
    /// The `workload_keyset` object in served member order.
    pub(crate) value: Value,
    /// `sha256:<hex>` of the JCS form of `value`.
    pub(crate) digest: String,
    /// `Some` when the gateway serves the older (June 2026) report generation.
    pub(crate) legacy: Option<LegacyKeys>,
}

impl fmt::Debug for Keyset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyset")
            .field("digest", &self.digest)
            .field("not_after", &self.not_after)
            .field("receipt_key_id", &self.receipt_key_id)
            .field("e2ee", &self.e2ee)
            .finish_non_exhaustive()
    }
}

impl Keyset {
    /// Seal a keyset of the current generation (subject `null`, these TLS entries).
    #[cfg(test)]
    pub(crate) fn seal(
        receipt_key_id: impl Into<String>,
        receipt_key: SigningKey,
        e2ee: Vec<Arc<ServiceKey>>,
        not_after: u64,
        tls: Vec<Value>,
    ) -> Self {
        Keyset::seal_as(receipt_key_id, receipt_key, e2ee, not_after, tls, None)
    }

    /// Seal a keyset of the current generation, or of the older one with `legacy` keys.
    pub(crate) fn seal_as(
        receipt_key_id: impl Into<String>,
        receipt_key: SigningKey,
        e2ee: Vec<Arc<ServiceKey>>,
        not_after: u64,
        tls: Vec<Value>,
        legacy: Option<LegacyKeys>,
    ) -> Self {
        let receipt_key_id = receipt_key_id.into();
        let value = match &legacy {
            None => Self::current_value(&receipt_key_id, &receipt_key, &e2ee, not_after, &tls),
            Some(l) => Self::legacy_value(l, &receipt_key, &e2ee, not_after, &tls),
        };
        let bytes = jcs_to_vec(&value).expect("a keyset holds only strings, integers and null");
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        Keyset { receipt_key_id, receipt_key, e2ee, not_after, tls, value, digest, legacy }
    }

    fn current_value(
        receipt_key_id: &str,
        receipt_key: &SigningKey,
        e2ee: &[Arc<ServiceKey>],
        not_after: u64,
        tls: &[Value],
    ) -> Value {
        json!({
            "subject": null,
            "not_after": not_after,
            "receipt_signing_keys": [{
                "key_id": receipt_key_id,
                "algo": "ed25519",
                "public_key": hex::encode(receipt_key.verifying_key().as_bytes()),
            }],
            "e2ee_public_keys": e2ee.iter().map(|k| json!({
                "key_id": k.key_id,
                "algo": k.suite().algo(),
                "public_key": k.public.to_hex(),
            })).collect::<Vec<_>>(),
            "tls_public_keys": tls,
        })
    }

    /// The older generation's keyset, in the member order production served: the workload
    /// identity, the epoch (`not_after` as given), a secp256k1 receipt key, the secp256k1 E2EE
    /// key followed by the two legacy entries production listed (never to be selected), the TLS
    /// entries. The X25519 key is not published (that generation had none).
    fn legacy_value(
        legacy: &LegacyKeys,
        receipt_key: &SigningKey,
        e2ee: &[Arc<ServiceKey>],
        not_after: u64,
        tls: &[Value],
    ) -> Value {
        let mut e2ee_entries = Vec::new();
        for k in e2ee.iter().filter(|k| k.suite() == Suite::Secp256k1) {
            let text = k.public.to_hex();
            e2ee_entries.push(json!({"key_id": k.key_id, "algo": k.suite().algo(), "public_key": text}));
            e2ee_entries.push(json!({
                "key_id": format!("{}-legacy-ecdsa", k.key_id),
                "algo": "ecdsa",
                "public_key": text.strip_prefix("04").unwrap_or(&text),
            }));
        }
        e2ee_entries.push(json!({
            "key_id": "dstack-kms-legacy-ed25519-v1",
            "algo": "ed25519",
            "public_key": hex::encode(receipt_key.verifying_key().as_bytes()),
        }));
        json!({
            "workload_identity": {
                "public_key": {"algo": "ecdsa-secp256k1", "public_key": uncompressed(legacy.identity.verifying_key())},
                "subject": null,
            },
            "keyset_epoch": {"version": 1, "not_after": not_after},
            "receipt_signing_keys": [{
                "key_id": "dstack-kms-receipt-v1",
                "algo": "ecdsa-secp256k1",
                "public_key": uncompressed(&legacy.receipt),
            }],
            "e2ee_public_keys": e2ee_entries,
            "tls_public_keys": tls,
        })
    }

    /// The same keys (and generation) sealed again with other values.
    fn resealed(&self, e2ee: Vec<Arc<ServiceKey>>, not_after: u64, tls: Vec<Value>) -> Self {
        Keyset::seal_as(
            self.receipt_key_id.clone(),
            self.receipt_key.clone(),
            e2ee,
            not_after,
            tls,
            self.legacy.clone(),
        )
    }

    /// The same keys under a new `not_after` (a restart or another replica).
    pub(crate) fn renewed(&self, not_after: u64) -> Self {
        self.resealed(self.e2ee.clone(), not_after, self.tls.clone())
    }

    /// The same keys and `not_after`, other TLS entries (a new certificate).
    pub(crate) fn with_tls(&self, tls: Vec<Value>) -> Self {
        self.resealed(self.e2ee.clone(), self.not_after, tls)
    }

    /// The hostnames the TLS entries are scoped to (empty: no entry names a domain).
    pub(crate) fn tls_domains(&self) -> Vec<&str> {
        self.tls.iter().filter_map(|e| e.get("domain").and_then(Value::as_str)).collect()
    }

    /// New random E2EE keys, same receipt key and `not_after`.
    pub(crate) fn rotated(&self) -> Self {
        self.resealed(e2ee_keys(false), self.not_after, self.tls.clone())
    }

    /// The attestation report for `nonce` (already validated as 64 lowercase hex) served at
    /// `now`, with a stub quote in the reference's format, in this keyset's generation.
    pub(crate) fn report(&self, nonce: Option<&str>, now: u64) -> Value {
        match &self.legacy {
            None => self.current_report(nonce),
            Some(legacy) => self.legacy_report(legacy, nonce, now),
        }
    }

    fn stub_evidence(report_data: &[u8; 32]) -> Map<String, Value> {
        let mut quote = STUB_QUOTE_PREFIX.to_vec();
        quote.extend_from_slice(report_data);
        let mut evidence = Map::new();
        evidence.insert("quote".into(), Value::String(hex::encode(&quote)));
        evidence.insert("quote_report_data".into(), Value::String(hex::encode(report_data)));
        evidence.insert("event_log".into(), Value::Null);
        evidence
    }

    /// A report of the older (June 2026) generation: `workload_id`, `report_data` binding it,
    /// the identity key's endorsement of the keyset digest, `freshness`, `vm_config` as a JSON
    /// string.
    fn legacy_report(&self, legacy: &LegacyKeys, nonce: Option<&str>, now: u64) -> Value {
        let identity = &self.value["workload_identity"]["public_key"];
        let workload_id = format!("sha256:{}", hex::encode(sha256_jcs(identity)));
        let report_data = sha256_jcs(&json!({
            "nonce": nonce,
            "purpose": "aci.report_data.v1",
            "workload_id": workload_id,
            "workload_keyset_digest": self.digest,
        }));
        let endorsed =
            sha256_jcs(&json!({"purpose": "aci.keyset.endorsement.v1", "workload_keyset_digest": self.digest}));
        let signature: k256::ecdsa::Signature =
            k256::ecdsa::signature::hazmat::PrehashSigner::sign_prehash(&legacy.identity, &endorsed)
                .expect("a 32-byte prehash signs");
        let signature = signature.normalize_s().unwrap_or(signature);
        let mut evidence = Self::stub_evidence(&report_data);
        evidence.insert("vm_config".into(), Value::String(json!({ "stub": true }).to_string()));
        evidence.insert("stub".into(), Value::Bool(true));
        json!({
            "api_version": "aci/1",
            "workload_id": workload_id,
            "workload_keyset_digest": self.digest,
            "attestation": {
                "vendor": "tower-aci-test-gateway",
                "tee_type": "tdx",
                "workload_keyset": self.value,
                "report_data": hex::encode(report_data),
                "keyset_endorsement": {"algo": "ecdsa-secp256k1", "value": hex::encode(signature.to_bytes())},
                "freshness": {"fetched_at": now, "stale_after": now.saturating_add(LEGACY_FRESHNESS_SECS)},
                "evidence": Value::Object(evidence),
            },
            "service_capabilities": {"supported_e2ee_versions": ["2"]},
        })
    }

    fn current_report(&self, nonce: Option<&str>) -> Value {
        let report_data = report_data(&statement(&self.digest, nonce));
        let mut evidence = Self::stub_evidence(&report_data);
        evidence.insert("vm_config".into(), json!({ "stub": true }));
        evidence.insert("app_compose".into(), Value::Null);
        evidence.insert("stub".into(), Value::Bool(true));
        json!({
            "api_version": "aci/1",
            "workload_keyset_digest": self.digest,
            "attestation": {
                "tee_type": "tdx",
                "workload_keyset": self.value,
                "report_data": hex::encode(report_data),
                "evidence": Value::Object(evidence),
            },
            "service_capabilities": {
                "supported_e2ee_versions": ["2"],
                "serving": "direct",
            },
        })
    }
}

/// The statement bytes `report_data` hashes: exactly
/// `{"keyset_digest":"<digest>","nonce":"<nonce>"|null,"purpose":"aci.report_data.v1"}`.
pub(crate) fn statement(digest: &str, nonce: Option<&str>) -> Vec<u8> {
    let nonce = match nonce {
        Some(n) => format!("\"{n}\""),
        None => "null".to_owned(),
    };
    format!("{{\"keyset_digest\":\"{digest}\",\"nonce\":{nonce},\"purpose\":\"aci.report_data.v1\"}}").into_bytes()
}

/// `SHA-256(statement)`.
pub(crate) fn report_data(statement: &[u8]) -> [u8; 32] {
    Sha256::digest(statement).into()
}

/// Whether `nonce` is an attestation nonce: exactly 64 lowercase hex characters.
pub(crate) fn is_report_nonce(nonce: &str) -> bool {
    nonce.len() == 64 && nonce.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference's own stub-quote fixture (protocol.md §8.3), rebuilt from the fixed seeds
    /// under the fixture's key ids.
    #[test]
    fn reproduces_the_reference_stub_quote_fixture() {
        let e2ee = vec![
            Arc::new(ServiceKey::new(
                "static-e2ee-key-secp256k1",
                SecretKey::from_bytes(Suite::Secp256k1, &SECP256K1_SEED).unwrap(),
            )),
            Arc::new(ServiceKey::new(
                "static-e2ee-x25519-key",
                SecretKey::from_bytes(Suite::X25519, &X25519_SEED).unwrap(),
            )),
        ];
        let ks =
            Keyset::seal("static-receipt-ed25519", SigningKey::from_bytes(&RECEIPT_SEED), e2ee, 2_000_000_000, vec![]);
        assert_eq!(ks.digest, "sha256:e338157d18d77aaa3d1186c9d96147c2d4edc0f1a169ace1243c0bc3ad701fad");
        let nonce = "cd20088d763605cf78564e5b35524ad52715419624b76e029582a3652758708d";
        let report = ks.report(Some(nonce), 0);
        let fixture: Value = serde_json::from_str(include_str!("../../../tests/data/report_stub_quote.json")).unwrap();
        assert_eq!(report["attestation"]["workload_keyset"], fixture["attestation"]["workload_keyset"]);
        assert_eq!(
            serde_json::to_string(&report["attestation"]["workload_keyset"]).unwrap(),
            serde_json::to_string(&fixture["attestation"]["workload_keyset"]).unwrap(),
            "served member order"
        );
        assert_eq!(report["attestation"]["report_data"], fixture["attestation"]["report_data"]);
        for k in ["quote", "quote_report_data", "event_log", "vm_config", "app_compose"] {
            assert_eq!(report["attestation"]["evidence"][k], fixture["attestation"]["evidence"][k], "{k}");
        }
    }

    #[test]
    fn renewal_keeps_keys_and_changes_the_digest() {
        let ks = Keyset::seal(RECEIPT_KEY_ID, receipt_key(false), e2ee_keys(false), 10, vec![]);
        let r = ks.renewed(11);
        assert_ne!(r.digest, ks.digest);
        assert_eq!(r.value["e2ee_public_keys"], ks.value["e2ee_public_keys"]);
        assert_eq!(r.value["receipt_signing_keys"], ks.value["receipt_signing_keys"]);
        let rot = ks.rotated();
        assert_ne!(rot.value["e2ee_public_keys"], ks.value["e2ee_public_keys"]);
        assert_eq!(rot.value["receipt_signing_keys"], ks.value["receipt_signing_keys"]);
    }
}
