//! The verified keyset: the only source of keys the E2EE layer and the receipt verifier trust.

use std::fmt;

use crate::attest::anchor::{Anchor, KmsIdentity};
use crate::attest::generation::Generation;
use crate::error::{AttestationFailure, Error, Result};
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
#[non_exhaustive]
pub struct TlsKey {
    /// SHA-256 of the certificate's SubjectPublicKeyInfo, lowercase hex.
    pub spki_sha256: String,
    /// The host this entry is scoped to, if any.
    pub domain: Option<String>,
}

/// The TD's boot-time measurements from a hardware-verified TDX quote: MRTD (the initial TD image,
/// i.e. the firmware) and RTMR0–2 (the boot configuration, kernel and command line, and the
/// initrd / root filesystem, as dstack extends them). Together with RTMR3 (the event log) they
/// identify the whole VM image a workload runs on.
///
/// Pin them with
/// [`PolicyBuilder::allow_boot_measurements`](crate::attest::PolicyBuilder::allow_boot_measurements);
/// read the measured ones from [`AttestedKeyset::boot_measurements`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootMeasurements {
    pub(crate) mrtd: [u8; 48],
    pub(crate) rtmr0: [u8; 48],
    pub(crate) rtmr1: [u8; 48],
    pub(crate) rtmr2: [u8; 48],
}

impl BootMeasurements {
    /// MRTD: the measurement of the initial TD image (the virtual firmware).
    pub fn mrtd(&self) -> &[u8; 48] {
        &self.mrtd
    }

    /// RTMR0: the firmware's boot configuration (TD HOB, ACPI tables, boot variables).
    pub fn rtmr0(&self) -> &[u8; 48] {
        &self.rtmr0
    }

    /// RTMR1: the OS loader and kernel.
    pub fn rtmr1(&self) -> &[u8; 48] {
        &self.rtmr1
    }

    /// RTMR2: the kernel command line and initrd.
    pub fn rtmr2(&self) -> &[u8; 48] {
        &self.rtmr2
    }

    /// The four registers with their names, in the order `allow_boot_measurements` takes them.
    pub(crate) fn named(&self) -> [(&'static str, &[u8; 48]); 4] {
        [("MRTD", &self.mrtd), ("RTMR0", &self.rtmr0), ("RTMR1", &self.rtmr1), ("RTMR2", &self.rtmr2)]
    }
}

impl fmt::Debug for BootMeasurements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootMeasurements")
            .field("mrtd", &hex::encode(self.mrtd))
            .field("rtmr0", &hex::encode(self.rtmr0))
            .field("rtmr1", &hex::encode(self.rtmr1))
            .field("rtmr2", &hex::encode(self.rtmr2))
            .finish()
    }
}

impl fmt::Display for BootMeasurements {
    /// `MRTD <hex>, RTMR0 <hex>, RTMR1 <hex>, RTMR2 <hex>`, full hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.named().into_iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{name} {}", hex::encode(value))?;
        }
        Ok(())
    }
}

/// Fails with [`NotAllowed`](AttestationFailure::NotAllowed) unless `measured` equals one of
/// `allowed` (an empty `allowed` pins nothing). `None` (a quote that was not hardware-verified)
/// never matches a pin. The message names the measured values in full, so a user can re-pin.
pub(crate) fn check_boot_measurements(allowed: &[BootMeasurements], measured: Option<&BootMeasurements>) -> Result<()> {
    if allowed.is_empty() {
        return Ok(());
    }
    let Some(measured) = measured else {
        return Err(Error::attestation(
            AttestationFailure::NotAllowed,
            "the policy pins boot measurements (allow_boot_measurements) and the quote was not hardware-verified, \
             so the TD's MRTD and RTMR0-2 are unknown",
        ));
    };
    if allowed.contains(measured) {
        return Ok(());
    }
    let differs: Vec<String> = allowed
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let names: Vec<&str> =
                a.named().into_iter().zip(measured.named()).filter(|(x, y)| x.1 != y.1).map(|(x, _)| x.0).collect();
            format!("set {}: {}", i + 1, names.join(" "))
        })
        .collect();
    Err(Error::attestation(
        AttestationFailure::NotAllowed,
        format!(
            "the TD's boot measurements ({measured}) are not on the policy's allowlist (differing registers: {}; \
             allowed: {}). If the gateway now boots another dstack OS image or firmware, check it and re-pin with \
             allow_boot_measurements",
            differs.join("; "),
            allowed.iter().map(|a| format!("[{a}]")).collect::<Vec<_>>().join(", ")
        ),
    ))
}

/// What the hardware verifier measured and judged, for a keyset whose quote it verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HardwareEvidence {
    pub(crate) boot: BootMeasurements,
    pub(crate) tcb_status: String,
    pub(crate) advisory_ids: Vec<String>,
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
    /// The verified quote's boot measurements, TCB status and advisories (`None` when the quote
    /// was not hardware-verified).
    pub(crate) hardware: Option<HardwareEvidence>,
    /// What covers the keys kept above (keys no anchor covers were left out).
    pub(crate) anchor: Anchor,
    /// The measured KMS identity (`key-provider` event), when the event log names one.
    pub(crate) kms_identity: Option<KmsIdentity>,
    /// The report's exact bytes, as verified.
    pub(crate) report: bytes::Bytes,
    /// The nonce the report was verified against.
    pub(crate) nonce: [u8; 32],
}

impl AttestedKeyset {
    /// The exact bytes of the attestation report this keyset was verified from (the JSON
    /// document as the gateway served it), for an audit trail that re-verifies it later with
    /// [`verify_report`](crate::attest::verify_report), [`nonce`](Self::nonce) and
    /// [`verified_at`](Self::verified_at): `aci-proxy --audit-file` writes it beside the
    /// receipts verified under this keyset.
    ///
    /// ```no_run
    /// # async fn run(client: tower_aci::Client) -> tower_aci::Result<()> {
    /// let keyset = client.keyset()?;
    /// std::fs::write("report.json", keyset.report()).ok(); // what was verified, byte for byte
    /// let nonce: String = keyset.nonce().iter().map(|b| format!("{b:02x}")).collect(); // the nonce it answered
    /// # let _ = nonce; Ok(()) }
    /// ```
    pub fn report(&self) -> &[u8] {
        &self.report
    }

    /// The nonce the report was fetched with and verified against (32 bytes).
    pub fn nonce(&self) -> &[u8; 32] {
        &self.nonce
    }

    /// `sha256:<hex>` of the keyset's canonical form, as `X-ACI-Keyset-Digest` and receipts name it.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The keyset's `subject`.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// Unix seconds after which the keyset must not be used.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }

    /// Whether the keyset may be used at `now` (Unix seconds): `now < not_after`.
    pub(crate) fn is_valid_at(&self, now: u64) -> bool {
        now < self.not_after
    }

    /// The E2EE key the policy selected: the one requests are encrypted to.
    pub fn e2ee_key(&self) -> &E2eeKey {
        &self.e2ee_keys[self.selected]
    }

    /// Whether `other` selects the same E2EE key (key id, suite and public key): a replica of
    /// this keyset, or the same process after a restart, as far as encryption goes. A keyset
    /// whose selected key differs is a rotation.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn same_e2ee_key(&self, other: &AttestedKeyset) -> bool {
        self.e2ee_key() == other.e2ee_key()
    }

    /// The E2EE v2 keys of the keyset that an anchor covers (unknown algorithms, and keys no
    /// anchor covers, are left out; see [`anchor`](Self::anchor)).
    pub fn e2ee_keys(&self) -> &[E2eeKey] {
        &self.e2ee_keys
    }

    /// The receipt-signing keys that an anchor covers (the only ones receipts verify under).
    pub fn receipt_keys(&self) -> &[ReceiptKey] {
        &self.receipt_keys
    }

    /// The receipt-signing key with `key_id`.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn receipt_key(&self, key_id: &str) -> Option<&ReceiptKey> {
        self.receipt_keys.iter().find(|k| k.key_id == key_id)
    }

    /// The TLS key entries that an anchor covers (the only ones the channel is accepted on).
    pub fn tls_keys(&self) -> &[TlsKey] {
        &self.tls_keys
    }

    /// The TLS key entries that apply to `host` (ACI §3.1): an entry without a `domain` applies
    /// to every host, one with a `domain` only to that hostname (compared case-insensitively,
    /// a trailing dot ignored).
    pub(crate) fn tls_keys_for_host<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a TlsKey> + 'a {
        let host = normalize_host(host);
        self.tls_keys.iter().filter(move |k| match &k.domain {
            None => true,
            Some(domain) => normalize_host(domain).eq_ignore_ascii_case(host),
        })
    }

    /// Whether the keyset lists a TLS key with this SPKI SHA-256 for `host`: the channel check a
    /// client runs on the certificate a connection to `host` presented.
    #[doc(hidden)] // a hook for the crate's own tests: not API
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

    /// What covers the keys this keyset kept: the measured workload (every key), a KMS root
    /// alone (only the keys whose custody chain signs their own bytes), or a `dangerous()`
    /// opt-out. Keys no anchor covers were left out of [`e2ee_keys`](Self::e2ee_keys),
    /// [`receipt_keys`](Self::receipt_keys) and [`tls_keys`](Self::tls_keys).
    pub fn anchor(&self) -> Anchor {
        self.anchor
    }

    /// The `id` (lowercase hex) of the event log's `key-provider` event: the KMS that provisioned
    /// the app, what [`allow_kms_identity`](crate::attest::PolicyBuilder::allow_kms_identity)
    /// pins (`None` when the log names none).
    pub fn kms_identity(&self) -> Option<String> {
        self.kms_identity.as_ref().filter(|k| !k.id.is_empty()).map(KmsIdentity::id_hex)
    }

    /// The verified quote's MRTD and RTMR0–2 (`None` when the quote was not hardware-verified):
    /// what [`allow_boot_measurements`](crate::attest::PolicyBuilder::allow_boot_measurements)
    /// pins.
    pub fn boot_measurements(&self) -> Option<&BootMeasurements> {
        self.hardware.as_ref().map(|h| &h.boot)
    }

    /// The platform's TCB status as the hardware verifier derived it (`UpToDate`, …; `None` when
    /// the quote was not hardware-verified). The policy accepted it.
    pub fn tcb_status(&self) -> Option<&str> {
        self.hardware.as_ref().map(|h| h.tcb_status.as_str())
    }

    /// The Intel security advisories (`INTEL-SA-…`) that apply to the platform's TCB level, as
    /// the collateral lists them (empty when none apply or the quote was not hardware-verified).
    /// A policy can refuse listed ones with
    /// [`refuse_advisories`](crate::attest::PolicyBuilder::refuse_advisories).
    pub fn advisory_ids(&self) -> &[String] {
        self.hardware.as_ref().map_or(&[], |h| h.advisory_ids.as_slice())
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
            .field("hardware", &self.hardware)
            .field("anchor", &self.anchor)
            .finish()
    }
}
