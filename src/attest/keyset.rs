//! The verified keyset: the only source of keys the E2EE layer and the receipt verifier trust.

use std::fmt;

use crate::attest::generation::Generation;
use crate::hex;
use crate::protocol::keys::E2eeKey;

/// A receipt-signing key of a verified keyset (`algo` `ed25519`).
#[derive(Clone, PartialEq, Eq)]
pub struct ReceiptKey {
    pub(crate) key_id: String,
    pub(crate) key: ed25519_dalek::VerifyingKey,
}

impl ReceiptKey {
    /// The entry's `key_id`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The Ed25519 verifying key.
    pub fn verifying_key(&self) -> &ed25519_dalek::VerifyingKey {
        &self.key
    }
}

impl fmt::Debug for ReceiptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReceiptKey({}, {})", self.key_id, hex::encode(self.key.as_bytes()))
    }
}

/// A hostname as ACI compares them: surrounding whitespace and one trailing dot dropped.
pub(crate) fn normalize_host(host: &str) -> &str {
    let host = host.trim();
    host.strip_suffix('.').unwrap_or(host)
}

/// A TLS key entry of a verified keyset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsKey {
    /// SHA-256 of the certificate's SubjectPublicKeyInfo, lowercase hex.
    pub spki_sha256: String,
    /// The host this entry is scoped to, if any.
    pub domain: Option<String>,
}

/// A workload keyset whose attestation report verified under a policy.
///
/// Only the verifier in this module constructs one (there is no public constructor), so a value
/// of this type is proof that its keys were checked: the E2EE layer cannot be handed an
/// unverified key by mistake.
#[derive(Clone)]
pub struct AttestedKeyset {
    pub(crate) digest: String,
    pub(crate) subject: Option<String>,
    pub(crate) not_after: u64,
    pub(crate) e2ee_keys: Vec<E2eeKey>,
    /// Index into `e2ee_keys` of the key the policy selected.
    pub(crate) selected: usize,
    pub(crate) receipt_keys: Vec<ReceiptKey>,
    pub(crate) tls_keys: Vec<TlsKey>,
    pub(crate) verified_at: u64,
    pub(crate) hardware_verified: bool,
    pub(crate) generation: Generation,
}

impl AttestedKeyset {
    /// `sha256:<hex>` of the keyset's canonical form, as `X-ACI-Keyset-Digest` and receipts name it.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The keyset's `subject`.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// Unix seconds after which the keyset must not be used.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }

    /// Whether the keyset may be used at `now` (Unix seconds): `now < not_after`.
    pub fn is_valid_at(&self, now: u64) -> bool {
        now < self.not_after
    }

    /// The E2EE key the policy selected: the one requests are encrypted to.
    pub fn e2ee_key(&self) -> &E2eeKey {
        &self.e2ee_keys[self.selected]
    }

    /// Whether `other` selects the same E2EE key (key id, suite and public key): a replica of
    /// this keyset, or the same process after a restart, as far as encryption goes. A keyset
    /// whose selected key differs is a rotation.
    pub fn same_e2ee_key(&self, other: &AttestedKeyset) -> bool {
        self.e2ee_key() == other.e2ee_key()
    }

    /// Every E2EE v2 key of the keyset (unknown algorithms are left out).
    pub fn e2ee_keys(&self) -> &[E2eeKey] {
        &self.e2ee_keys
    }

    /// The receipt-signing keys.
    pub fn receipt_keys(&self) -> &[ReceiptKey] {
        &self.receipt_keys
    }

    /// The receipt-signing key with `key_id`.
    pub fn receipt_key(&self, key_id: &str) -> Option<&ReceiptKey> {
        self.receipt_keys.iter().find(|k| k.key_id == key_id)
    }

    /// The TLS key entries.
    pub fn tls_keys(&self) -> &[TlsKey] {
        &self.tls_keys
    }

    /// The TLS key entries that apply to `host` (ACI §3.1): an entry without a `domain` applies
    /// to every host, one with a `domain` only to that hostname (compared case-insensitively,
    /// a trailing dot ignored).
    pub fn tls_keys_for_host<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a TlsKey> + 'a {
        let host = normalize_host(host);
        self.tls_keys.iter().filter(move |k| match &k.domain {
            None => true,
            Some(domain) => normalize_host(domain).eq_ignore_ascii_case(host),
        })
    }

    /// Whether the keyset lists a TLS key with this SPKI SHA-256 for `host`: the channel check a
    /// client runs on the certificate a connection to `host` presented.
    pub fn lists_tls_key(&self, host: &str, spki_sha256: &[u8; 32]) -> bool {
        let seen = hex::encode(spki_sha256);
        self.tls_keys_for_host(host).any(|k| k.spki_sha256 == seen)
    }

    /// Unix seconds at which the report was verified.
    pub fn verified_at(&self) -> u64 {
        self.verified_at
    }

    /// Whether the hardware quote was verified (false only under a `dangerous()` policy).
    pub fn hardware_verified(&self) -> bool {
        self.hardware_verified
    }

    /// The report generation the keyset was verified from. For [`Generation::Legacy`],
    /// [`not_after`](Self::not_after) is the report's `freshness.stale_after` (bounded by the
    /// policy's horizon), the only E2EE key is `dstack-kms-e2ee-v1`, and there are no
    /// [`receipt_keys`](Self::receipt_keys) (that generation signs receipts with secp256k1, which
    /// this crate does not verify), so its receipts fail closed.
    pub fn generation(&self) -> Generation {
        self.generation
    }
}

impl fmt::Debug for AttestedKeyset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedKeyset")
            .field("digest", &self.digest)
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("e2ee_key", self.e2ee_key())
            .field("receipt_keys", &self.receipt_keys)
            .field("hardware_verified", &self.hardware_verified)
            .field("generation", &self.generation)
            .finish()
    }
}
