//! dstack KMS key custody (protocol.md §6.4 step 6), for the receipt key and both E2EE keys.
//!
//! Each `key_custody.keys[]` entry names one keyset key (`public_key`, compared as a string) and
//! carries `kms_public_key`, the compressed secp256k1 public key of the 32-byte scalar the KMS
//! released for the entry's path, plus a two-signature chain of recoverable secp256k1 signatures
//! (`r‖s‖v`, 65 bytes, over Keccak-256, no Ethereum prefix):
//!
//! 1. `chain[0]` over `"<purpose>:<lowercase hex of compressed kms_public_key>"` recovers the
//!    app's KMS key `app_pub`;
//! 2. `chain[1]` over `b"dstack-kms-issued:" ‖ app_id ‖ compressed(app_pub)` recovers the KMS
//!    root, which must be one the policy accepts.
//!
//! For the secp256k1 E2EE role `kms_public_key` must also be the published E2EE key itself.
//! For the X25519 and Ed25519 roles the link from the released scalar to the published key cannot
//! be checked from outside; it rests on the measured workload code.
//!
//! Every key of the keyset whose role is known (the secp256k1 identity key where the keyset has
//! one, Ed25519 receipt keys, secp256k1 and X25519 E2EE keys) must be covered by a verified
//! entry; an entry for a key that is not in the keyset is an error; entries with unknown roles
//! are ignored.
//!
//! The `identity` role (`aci/identity/v1`, purpose `aci.identity.v1`, algo `ecdsa-secp256k1`)
//! is the older report generation's `workload_identity` key. Its chain signs the identity key
//! itself: `kms_public_key` when the entry has one (it must then be that key), else the entry's
//! own `public_key`, as that generation publishes it.
//!
//! A keyset of the older (June 2026) report generation is checked by [`verify_legacy`]: that
//! generation has no `kms_public_key`, its roles `identity` (`aci/identity/v1`), `receipt`
//! (`aci/receipt/v1`) and `e2ee` (`aci/e2ee/v1`) are all secp256k1, and `chain[0]` signs the compressed form of the entry's own `public_key`; the
//! workload identity key, every secp256k1 receipt key and the E2EE key must be covered. Its
//! `legacy-ed25519` role cannot be checked from outside and is ignored.

use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use serde_json::{Map, Value};
use sha3::{Digest, Keccak256};

use crate::attest::policy::{compressed, decode_hex};
use crate::error::{AttestationFailure, Error, Result};
use crate::hex;
use crate::protocol::keys::E2eeKey;
use crate::protocol::suite::Suite;

/// The only custody provider this crate understands.
pub(crate) const PROVIDER: &str = "dstack-kms";

/// The prefix of the second message of the chain.
const ISSUED_PREFIX: &[u8] = b"dstack-kms-issued:";

/// One custody role: `(role, path, purpose, algo)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Role {
    role: &'static str,
    path: &'static str,
    purpose: &'static str,
    algo: &'static str,
}

const RECEIPT: Role =
    Role { role: "receipt", path: "aci/receipt-ed25519/v1", purpose: "aci.receipt.ed25519.v1", algo: "ed25519" };
const E2EE_SECP256K1: Role = Role {
    role: "e2ee-secp256k1",
    path: "aci/e2ee/v1",
    purpose: "aci.e2ee.v1",
    algo: "secp256k1-aes-256-gcm-hkdf-sha256",
};
const E2EE_X25519: Role = Role {
    role: "e2ee-x25519",
    path: "aci/e2ee-x25519/v1",
    purpose: "aci.e2ee.x25519.v1",
    algo: "x25519-aes-256-gcm-hkdf-sha256",
};
const IDENTITY: Role =
    Role { role: "identity", path: "aci/identity/v1", purpose: "aci.identity.v1", algo: "ecdsa-secp256k1" };
const ROLES: [Role; 4] = [IDENTITY, RECEIPT, E2EE_SECP256K1, E2EE_X25519];

fn custody_error(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::attestation(AttestationFailure::Custody, message)
}

/// The keyset keys custody must cover: the identity key (hex of a secp256k1 key, any SEC1 form)
/// where the keyset has one, receipt `public_key` strings and the E2EE keys.
pub(crate) struct CoveredKeys<'a> {
    pub(crate) identity: Option<&'a str>,
    pub(crate) receipt: &'a [String],
    pub(crate) e2ee: &'a [E2eeKey],
}

/// Which keys a verified `key_custody` covers by itself: those whose chain signs the key's own
/// bytes (the secp256k1 E2EE key, whose `kms_public_key` must be the published key). The
/// X25519 and Ed25519 chains sign `kms_public_key`, which the outside cannot link to the
/// published key, so a copied chain fits any key: they are verified but cover nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnBytes {
    /// Per E2EE key (in the order given): its chain signs its own bytes.
    pub(crate) e2ee: Vec<bool>,
}

/// Verify `key_custody` for every key of the keyset, and say which keys it covers by itself
/// ([`OwnBytes`]). `app_id` is the app the KMS issued the keys to; `roots` are the accepted
/// compressed KMS root keys.
pub(crate) fn verify(
    key_custody: &Value,
    keys: &CoveredKeys<'_>,
    app_id: &[u8],
    roots: &[[u8; 33]],
) -> Result<OwnBytes> {
    let custody = key_custody.as_object().ok_or_else(|| custody_error("key_custody is not an object"))?;
    match custody.get("provider").and_then(Value::as_str) {
        Some(PROVIDER) => {}
        Some(_) => return Err(custody_error("key_custody names an unsupported provider")),
        None => return Err(custody_error("key_custody has no provider")),
    }
    let entries =
        custody.get("keys").and_then(Value::as_array).ok_or_else(|| custody_error("key_custody has no keys array"))?;
    if roots.is_empty() {
        return Err(custody_error("the policy accepts no KMS root, so key custody cannot verify"));
    }

    let identity = match keys.identity {
        None => None,
        Some(text) => Some(
            decode_hex(text)
                .and_then(|b| k256::PublicKey::from_sec1_bytes(&b).ok())
                .and_then(|pk| compressed(&pk))
                .ok_or_else(|| custody_error("the keyset's identity key is not a secp256k1 key"))?,
        ),
    };
    let mut identity_covered = false;
    let mut receipt_covered = vec![false; keys.receipt.len()];
    let mut e2ee_covered = vec![false; keys.e2ee.len()];
    for entry in entries {
        let entry = entry.as_object().ok_or_else(|| custody_error("a key_custody entry is not an object"))?;
        let role_name = str_member(entry, "role")?;
        let Some(role) = ROLES.iter().copied().find(|r| r.role == role_name) else {
            tracing::debug!(role = role_name, "ignoring key custody entry with an unknown role");
            continue;
        };
        let public_key = str_member(entry, "public_key")?;
        if role == IDENTITY {
            let expected = identity
                .ok_or_else(|| custody_error("an identity custody entry for a keyset without an identity key"))?;
            if secp256k1_member(entry, "public_key", role.role)? != expected {
                return Err(custody_error("the identity custody entry names a key that is not in the keyset"));
            }
            let signed = if entry.contains_key("kms_public_key") { "kms_public_key" } else { "public_key" };
            verify_entry(entry, role, signed, Some(expected), app_id, roots)?;
            identity_covered = true;
            continue;
        }
        // Which keyset key the entry speaks for.
        let (kms_must_equal, covered) = if role == RECEIPT {
            let i = keys
                .receipt
                .iter()
                .position(|k| k == public_key)
                .ok_or_else(|| custody_error("a receipt custody entry names a key that is not in the keyset"))?;
            (None, &mut receipt_covered[i])
        } else {
            let suite = if role == E2EE_SECP256K1 { Suite::Secp256k1 } else { Suite::X25519 };
            let i = keys
                .e2ee
                .iter()
                .position(|k| k.suite() == suite && k.public_key_text() == public_key)
                .ok_or_else(|| custody_error("an E2EE custody entry names a key that is not in the keyset"))?;
            (keys.e2ee[i].public_key().to_compressed_sec1(), &mut e2ee_covered[i])
        };
        verify_entry(entry, role, "kms_public_key", kms_must_equal, app_id, roots)?;
        *covered = true;
    }

    if identity.is_some() && !identity_covered {
        return Err(custody_error("the keyset's identity key has no key custody entry"));
    }
    if receipt_covered.contains(&false) {
        return Err(custody_error("a receipt signing key has no key custody entry"));
    }
    if e2ee_covered.contains(&false) {
        return Err(custody_error("an E2EE key has no key custody entry"));
    }
    Ok(OwnBytes { e2ee: keys.e2ee.iter().map(|k| k.suite() == Suite::Secp256k1).collect() })
}

/// The older (June 2026) generation's custody roles. Each chain signs the compressed form of
/// the entry's own secp256k1 `public_key` (that generation has no `kms_public_key`). Its
/// `legacy-ed25519` role cannot be checked from outside (an Ed25519 key, no `kms_public_key`) and
/// speaks for a key that is never selected, so it is ignored like any unknown role.
const LEGACY_IDENTITY: Role =
    Role { role: "identity", path: "aci/identity/v1", purpose: "aci.identity.v1", algo: "ecdsa-secp256k1" };
const LEGACY_RECEIPT: Role =
    Role { role: "receipt", path: "aci/receipt/v1", purpose: "aci.receipt.v1", algo: "ecdsa-secp256k1" };
const LEGACY_E2EE: Role = Role { role: "e2ee", ..E2EE_SECP256K1 };
const LEGACY_ROLES: [Role; 3] = [LEGACY_IDENTITY, LEGACY_RECEIPT, LEGACY_E2EE];

/// The keys of an older-generation keyset that custody must cover, as served (`public_key`
/// texts, compared as strings).
pub(crate) struct LegacyCoveredKeys<'a> {
    /// `workload_identity.public_key.public_key`.
    pub(crate) identity: &'a str,
    /// The `ecdsa-secp256k1` receipt keys.
    pub(crate) receipt: &'a [String],
    /// The E2EE keys the verifier kept (only `dstack-kms-e2ee-v1`).
    pub(crate) e2ee: &'a [E2eeKey],
}

/// [`verify`] for the older generation: the identity key, every secp256k1 receipt key and every
/// kept E2EE key must be covered by an entry whose chain reaches an accepted KMS root; an entry
/// for a key that is not in the keyset is an error.
pub(crate) fn verify_legacy(
    key_custody: &Value,
    keys: &LegacyCoveredKeys<'_>,
    app_id: &[u8],
    roots: &[[u8; 33]],
) -> Result<()> {
    let entries = provider_entries(key_custody, roots)?;
    let mut identity_covered = false;
    let mut receipt_covered = vec![false; keys.receipt.len()];
    let mut e2ee_covered = vec![false; keys.e2ee.len()];
    for entry in entries {
        let entry = entry.as_object().ok_or_else(|| custody_error("a key_custody entry is not an object"))?;
        let role_name = str_member(entry, "role")?;
        let Some(role) = LEGACY_ROLES.iter().copied().find(|r| r.role == role_name) else {
            tracing::debug!(role = role_name, "ignoring key custody entry with an unknown role");
            continue;
        };
        let public_key = str_member(entry, "public_key")?;
        let covered = if role == LEGACY_IDENTITY {
            if public_key != keys.identity {
                return Err(custody_error("the identity custody entry names a key other than the workload identity"));
            }
            &mut identity_covered
        } else if role == LEGACY_RECEIPT {
            let i = keys
                .receipt
                .iter()
                .position(|k| k == public_key)
                .ok_or_else(|| custody_error("a receipt custody entry names a key that is not in the keyset"))?;
            &mut receipt_covered[i]
        } else {
            let i = keys
                .e2ee
                .iter()
                .position(|k| k.public_key_text() == public_key)
                .ok_or_else(|| custody_error("an E2EE custody entry names a key that is not in the keyset"))?;
            &mut e2ee_covered[i]
        };
        check_role(entry, role)?;
        let signed_key = secp256k1_member(entry, "public_key", role.role)?;
        let chain = signature_chain(entry, role.role)?;
        let chain_keys = recover_chain(role.purpose, &signed_key, app_id, &chain, role.role)?;
        check_root(&chain_keys.root, roots, role.role)?;
        *covered = true;
    }
    if !identity_covered {
        return Err(custody_error("the workload identity key has no key custody entry"));
    }
    if receipt_covered.contains(&false) {
        return Err(custody_error("a receipt signing key has no key custody entry"));
    }
    if e2ee_covered.contains(&false) {
        return Err(custody_error("an E2EE key has no key custody entry"));
    }
    Ok(())
}

/// `key_custody`'s provider must be ours and it must list `keys`; some root must be accepted.
/// (The same rules as the start of [`verify`].)
fn provider_entries<'a>(key_custody: &'a Value, roots: &[[u8; 33]]) -> Result<&'a [Value]> {
    let custody = key_custody.as_object().ok_or_else(|| custody_error("key_custody is not an object"))?;
    match custody.get("provider").and_then(Value::as_str) {
        Some(PROVIDER) => {}
        Some(_) => return Err(custody_error("key_custody names an unsupported provider")),
        None => return Err(custody_error("key_custody has no provider")),
    }
    let entries =
        custody.get("keys").and_then(Value::as_array).ok_or_else(|| custody_error("key_custody has no keys array"))?;
    if roots.is_empty() {
        return Err(custody_error("the policy accepts no KMS root, so key custody cannot verify"));
    }
    Ok(entries)
}

/// The entry's `path`, `purpose` and `algo` must be the role's (as in `verify_entry`).
fn check_role(entry: &Map<String, Value>, role: Role) -> Result<()> {
    let what = role.role;
    if str_member(entry, "path")? != role.path {
        return Err(custody_error(format!("the {what} custody entry has the wrong path")));
    }
    if str_member(entry, "purpose")? != role.purpose {
        return Err(custody_error(format!("the {what} custody entry has the wrong purpose")));
    }
    if str_member(entry, "algo")? != role.algo {
        return Err(custody_error(format!("the {what} custody entry has the wrong algo")));
    }
    Ok(())
}

fn str_member<'a>(entry: &'a Map<String, Value>, name: &'static str) -> Result<&'a str> {
    entry
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| custody_error(format!("a key_custody entry has no string `{name}`")))
}

/// Check one entry: its path, purpose and algo, then the chain over the key in member `signed`
/// (`kms_public_key`; the identity role may sign its own `public_key`), which must equal
/// `kms_must_equal` when given.
fn verify_entry(
    entry: &Map<String, Value>,
    role: Role,
    signed: &'static str,
    kms_must_equal: Option<[u8; 33]>,
    app_id: &[u8],
    roots: &[[u8; 33]],
) -> Result<()> {
    let what = role.role;
    if str_member(entry, "path")? != role.path {
        return Err(custody_error(format!("the {what} custody entry has the wrong path")));
    }
    if str_member(entry, "purpose")? != role.purpose {
        return Err(custody_error(format!("the {what} custody entry has the wrong purpose")));
    }
    if str_member(entry, "algo")? != role.algo {
        return Err(custody_error(format!("the {what} custody entry has the wrong algo")));
    }
    let kms_public_key = secp256k1_member(entry, signed, what)?;
    if let Some(expected) = kms_must_equal {
        if expected != kms_public_key {
            return Err(custody_error(format!("the {what} custody entry's {signed} is not the published {what} key")));
        }
    }
    let chain = signature_chain(entry, what)?;
    let keys = recover_chain(role.purpose, &kms_public_key, app_id, &chain, what)?;
    check_root(&keys.root, roots, what)
}

/// The member `name` of a custody entry as a compressed secp256k1 key (hex of any SEC1 form).
pub(crate) fn secp256k1_member(entry: &Map<String, Value>, name: &'static str, what: &str) -> Result<[u8; 33]> {
    decode_hex(str_member(entry, name)?)
        .and_then(|b| k256::PublicKey::from_sec1_bytes(&b).ok())
        .and_then(|pk| compressed(&pk))
        .ok_or_else(|| custody_error(format!("the {what} custody entry's {name} is not a secp256k1 key")))
}

/// The entry's `signature_chain`: exactly two 65-byte `r‖s‖v` signatures in hex.
pub(crate) fn signature_chain(entry: &Map<String, Value>, what: &str) -> Result<[[u8; 65]; 2]> {
    let chain = entry
        .get("signature_chain")
        .and_then(Value::as_array)
        .ok_or_else(|| custody_error(format!("the {what} custody entry has no signature_chain")))?;
    let [first, second] = chain.as_slice() else {
        return Err(custody_error(format!("the {what} signature_chain must hold exactly 2 signatures")));
    };
    let signature = |v: &Value| -> Result<[u8; 65]> {
        v.as_str()
            .and_then(decode_hex)
            .and_then(|b| <[u8; 65]>::try_from(b).ok())
            .ok_or_else(|| custody_error(format!("a {what} custody signature is not 65 bytes of hex")))
    };
    Ok([signature(first)?, signature(second)?])
}

/// The two keys a custody chain recovers (compressed SEC1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChainKeys {
    /// The app's KMS key, recovered from `chain[0]`.
    pub(crate) app_key: [u8; 33],
    /// The KMS root, recovered from `chain[1]`.
    pub(crate) root: [u8; 33],
}

/// Recover the app key and the KMS root from one signature chain: `chain[0]` over
/// `"<purpose>:<lowercase hex of signed_key>"` yields the app key, `chain[1]` over
/// `b"dstack-kms-issued:" ‖ app_id ‖ app_key` the root. The root is not judged here (see
/// [`check_root`]). `what` names the entry in error messages.
pub(crate) fn recover_chain(
    purpose: &str,
    signed_key: &[u8; 33],
    app_id: &[u8],
    chain: &[[u8; 65]; 2],
    what: &str,
) -> Result<ChainKeys> {
    let msg1 = format!("{purpose}:{}", hex::encode(signed_key));
    let app_pub = recover(msg1.as_bytes(), &chain[0])
        .map_err(|why| custody_error(format!("the {what} custody chain[0] does not recover: {why}")))?;
    let app_key = compressed_vk(&app_pub);

    let mut msg2 = Vec::with_capacity(ISSUED_PREFIX.len() + app_id.len() + 33);
    msg2.extend_from_slice(ISSUED_PREFIX);
    msg2.extend_from_slice(app_id);
    msg2.extend_from_slice(&app_key);
    let root = recover(&msg2, &chain[1])
        .map_err(|why| custody_error(format!("the {what} custody chain[1] does not recover: {why}")))?;
    Ok(ChainKeys { app_key, root: compressed_vk(&root) })
}

/// The recovered `root` must be one of the policy's accepted KMS roots.
pub(crate) fn check_root(root: &[u8; 33], roots: &[[u8; 33]], what: &str) -> Result<()> {
    if roots.contains(root) {
        Ok(())
    } else {
        Err(custody_error(format!(
            "the {what} custody chain ends in a KMS root the policy does not accept (or for another app id)"
        )))
    }
}

fn compressed_vk(vk: &VerifyingKey) -> [u8; 33] {
    let mut out = [0u8; 33];
    out.copy_from_slice(&vk.to_encoded_point(true).as_bytes()[..33]);
    out
}

/// Recover the signer of `Keccak-256(message)` from `r‖s‖v`, `v` in `0..=3` or `27..=30`.
fn recover(message: &[u8], sig: &[u8; 65]) -> std::result::Result<VerifyingKey, &'static str> {
    let mut v = sig[64];
    if (27..=30).contains(&v) {
        v -= 27;
    }
    let recid = RecoveryId::from_byte(v).ok_or("invalid recovery id")?;
    let signature = Signature::from_slice(&sig[..64]).map_err(|_| "invalid signature scalars")?;
    let prehash = Keccak256::digest(message);
    VerifyingKey::recover_from_prehash(&prehash, &signature, recid).map_err(|_| "no key recovers")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::ecdsa::SigningKey;

    fn sign(key: &SigningKey, message: &[u8], v_offset: u8) -> String {
        let (sig, recid) = key.sign_prehash_recoverable(&Keccak256::digest(message)).unwrap();
        let mut out = sig.to_bytes().to_vec();
        out.push(recid.to_byte() + v_offset);
        hex::encode(out)
    }

    #[test]
    fn recovers_with_either_v_convention_and_refuses_bad_v() {
        let key = SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
        let expected = compressed_vk(key.verifying_key());
        for offset in [0, 27] {
            let sig: [u8; 65] = hex::decode(sign(&key, b"msg", offset)).unwrap().try_into().unwrap();
            assert_eq!(compressed_vk(&recover(b"msg", &sig).unwrap()), expected);
        }
        let mut sig: [u8; 65] = hex::decode(sign(&key, b"msg", 0)).unwrap().try_into().unwrap();
        sig[64] = 4;
        assert!(recover(b"msg", &sig).is_err());
        sig[64] = 31;
        assert!(recover(b"msg", &sig).is_err());
    }

    #[test]
    fn role_table_matches_the_spec() {
        assert_eq!(
            ROLES.map(|r| r.purpose),
            ["aci.identity.v1", "aci.receipt.ed25519.v1", "aci.e2ee.v1", "aci.e2ee.x25519.v1"]
        );
        assert_eq!(
            ROLES.map(|r| r.path),
            ["aci/identity/v1", "aci/receipt-ed25519/v1", "aci/e2ee/v1", "aci/e2ee-x25519/v1"]
        );
    }
}
