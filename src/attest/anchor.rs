//! Which anchor proves who holds the secret of each key the crate uses.
//!
//! A genuine TDX quote proves only that *some* TD produced it. The keys a keyset lists are used
//! (requests sealed to the E2EE key, the channel accepted on a TLS key, receipts checked under
//! a receipt key) only where an **anchor** names who holds their secret:
//!
//! - **Measured workload** ([`Anchor::MeasuredWorkload`]): pinned boot measurements (MRTD and
//!   RTMR0–2 of the hardware-verified quote: the genuine firmware and dstack OS, which extends
//!   RTMR3 honestly), a pinned KMS identity (the `key-provider` event: the KMS that provisioned
//!   the app) and a pinned compose hash (the code). Together they say that only the pinned code,
//!   in a genuine TD, provisioned by the KMS you named, holds the secrets; that code publishes
//!   the keyset the quote binds, so every key of it is covered.
//! - **KMS root** ([`Anchor::KmsCustody`]): an accepted dstack KMS root covers exactly the keys
//!   whose custody chain signs *that key's own bytes*: the secp256k1 E2EE key (its
//!   `kms_public_key` must be the published key). The `e2ee-x25519` and `receipt` chains sign
//!   `kms_public_key`, a secp256k1 key the outside cannot link to the published X25519 or
//!   Ed25519 key, so a copied chain fits any key; TLS keys have no custody at all. In the older
//!   (June 2026) report generation the identity, receipt and E2EE chains all sign their own
//!   secp256k1 keys, and the identity key endorses the keyset digest, so a KMS root covers every
//!   key of such a keyset.
//!
//! An app id is a label its owner authorises on chain (in KMS mode the owner decides which
//! composes may run under it), not a measurement of code: it never completes an anchor on its
//! own. A key no anchor covers is left out of the [`AttestedKeyset`](crate::attest::AttestedKeyset):
//! never selected for encryption, never accepted as the channel's TLS key, never used to verify a
//! receipt.

use std::fmt;

/// What anchored the keys of a verified keyset
/// ([`AttestedKeyset::anchor`](crate::attest::AttestedKeyset::anchor)).
///
/// ```
/// use tower_aci::attest::Anchor;
///
/// assert_eq!(Anchor::MeasuredWorkload.to_string(), "measured workload (boot measurements, KMS identity, compose hash)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Anchor {
    /// Pinned boot measurements, KMS identity and compose hash, all matched on a
    /// hardware-verified quote: every key the quote binds is covered.
    MeasuredWorkload,
    /// An accepted KMS root alone (a `dangerous()` prompt-confidentiality-only policy): only the
    /// keys whose custody chain signs their own bytes are covered; the rest were left out.
    KmsCustody,
    /// A `dangerous()` opt-out (`any_workload`, `unanchored_pin`): the keys are used although no
    /// anchor covers them. For tests against a local gateway only.
    Unanchored,
}

impl Anchor {
    /// A short name for messages and logs.
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn name(self) -> &'static str {
        match self {
            Anchor::MeasuredWorkload => "measured workload (boot measurements, KMS identity, compose hash)",
            Anchor::KmsCustody => "KMS root (custody of the keys' own bytes)",
            Anchor::Unanchored => "none (dangerous: keys used without an anchor)",
        }
    }
}

impl fmt::Display for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The reviewed dstack production OS images (`is_dev: false` images of dstack 0.5.8–0.5.9), as
/// `(os image hash, image)`: the list the reference verifier's `--require-production-os` uses.
/// [`PolicyBuilder::require_production_os`](crate::attest::PolicyBuilder::require_production_os)
/// requires the `os-image-hash` event to be one of them.
///
/// The `os-image-hash` event is extended into RTMR3 by the OS itself, so it means something only
/// under pinned boot measurements (a TD of someone else's making can extend any value).
pub const PRODUCTION_OS_IMAGES: [(&str, &str); 4] = [
    ("bd369a8c2f9edb2b52dad48ac8e0b32dde5f1337c423a506b48d07403a7d8033", "dstack 0.5.9"),
    ("806a352e16175d90568de97dff563f31f680239e6b90e9b5b2e9141d0955b0d9", "dstack-nvidia 0.5.9"),
    ("6427f4f5ded88b72d326bd973e581c1689c5080c6444a0cf90fec7d9e4c8b92a", "dstack 0.5.8"),
    ("5d286131b20689d0d59bae1b34cd91cb78149016a9ef50afff51fb1a04cad5e4", "dstack-nvidia 0.5.8"),
];

/// The production image an `os-image-hash` payload names, if it is one of
/// [`PRODUCTION_OS_IMAGES`].
pub(crate) fn production_os_image(hash: &[u8]) -> Option<&'static str> {
    let hash = crate::hex::encode(hash);
    PRODUCTION_OS_IMAGES.iter().find(|(h, _)| *h == hash).map(|(_, name)| *name)
}

/// The KMS that provisioned the app, as the `key-provider` event measures it: its payload is
/// JSON `{"name": "kms", "id": "<hex>"}` (`id`: the KMS's public key as dstack records it; a
/// local key provider names itself otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KmsIdentity {
    /// `name` (or `type`) of the key provider: `kms` in KMS mode.
    pub(crate) name: String,
    /// `id`, decoded from hex (empty when the payload names none or it is not hex).
    pub(crate) id: Vec<u8>,
    /// The payload as measured, for messages.
    pub(crate) payload: Vec<u8>,
}

impl KmsIdentity {
    /// Read a `key-provider` payload. A payload that is not the JSON shape yields an identity
    /// with no name and no id, which no pin matches.
    pub(crate) fn from_payload(payload: &[u8]) -> KmsIdentity {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(payload).ok();
        let field = |name: &str| parsed.as_ref().and_then(|v| v.get(name)).and_then(serde_json::Value::as_str);
        let name = field("name").or_else(|| field("type")).unwrap_or_default().to_owned();
        let id = field("id").and_then(crate::hex::decode_prefixed).unwrap_or_default();
        KmsIdentity { name, id, payload: payload.to_vec() }
    }

    /// The id as lowercase hex (what `allow_kms_identity` takes).
    pub(crate) fn id_hex(&self) -> String {
        crate::hex::encode(&self.id)
    }

    /// How a message names the measured identity: the id in full, or the raw payload.
    pub(crate) fn describe(&self) -> String {
        if self.id.is_empty() {
            format!("key-provider payload {:?}", String::from_utf8_lossy(&self.payload))
        } else {
            format!("{} {}", if self.name.is_empty() { "key provider" } else { &self.name }, self.id_hex())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_capture_key_provider_reads_as_a_kms() {
        let payload = br#"{"name":"kms","id":"3059301306072a8648ce3d020106082a8648ce3d030107034200048844eb42"}"#;
        let k = KmsIdentity::from_payload(payload);
        assert_eq!(k.name, "kms");
        assert_eq!(k.id_hex(), "3059301306072a8648ce3d020106082a8648ce3d030107034200048844eb42");
        assert!(k.describe().starts_with("kms 3059"));
        let garbled = KmsIdentity::from_payload(b"\xff not json");
        assert!(garbled.id.is_empty() && garbled.describe().contains("key-provider payload"));
        let local = KmsIdentity::from_payload(br#"{"type":"local-sgx","id":"0xAbCd"}"#);
        assert_eq!((local.name.as_str(), local.id.as_slice()), ("local-sgx", &[0xab, 0xcd][..]));
    }

    #[test]
    fn production_images_are_recognised_and_the_real_capture_is_not() {
        let h = crate::hex::decode(PRODUCTION_OS_IMAGES[0].0).unwrap();
        assert_eq!(production_os_image(&h), Some("dstack 0.5.9"));
        let dev = crate::hex::decode("de9c74f0c85d0820ce075cb4a99f8e39f7b681be632907c5bf8bdc95ea72feb9").unwrap();
        assert_eq!(production_os_image(&dev), None);
    }
}
