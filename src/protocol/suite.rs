//! The two E2EE v2 cipher suites: seal and open one field.
//!
//! A field value is the lowercase hex of `ephemeral public key ‖ 12-byte nonce ‖ ciphertext ‖ tag`,
//! where the AES-256-GCM key is `HKDF-SHA256(salt = none, IKM = ECDH(ephemeral, recipient), info)`.
//! The suite is fixed by the `algo` of the keyset entry; it is never negotiated.
//!
//! ```
//! use tower_aci::protocol::suite::{open, seal, SecretKey, Suite};
//!
//! let mut rng = rand_core::OsRng;
//! let recipient = SecretKey::generate(Suite::Secp256k1, &mut rng);
//! let field = seal(&recipient.public_key(), b"hello", b"aad", &mut rng);
//! assert_eq!(open(&recipient, &field, b"aad").unwrap(), b"hello");
//! assert!(open(&recipient, &field, b"other aad").is_err());
//! ```

use std::fmt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use k256::elliptic_curve::ops::MulByGenerator;
use k256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::CryptoRngCore;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::hex;

/// Length of the AES-GCM nonce carried in each field.
pub const NONCE_LEN: usize = 12;
/// Length of the AES-GCM tag carried in each field.
pub const TAG_LEN: usize = 16;

/// An E2EE v2 cipher suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// `secp256k1-aes-256-gcm-hkdf-sha256`: the default RedPill/Phala key (`dstack-kms-e2ee-v1`).
    Secp256k1,
    /// `x25519-aes-256-gcm-hkdf-sha256`.
    X25519,
}

impl Suite {
    /// Every suite, secp256k1 first (the production default).
    pub const ALL: [Suite; 2] = [Suite::Secp256k1, Suite::X25519];

    /// The suite's `algo` string as it appears in keysets and in the AAD.
    pub const fn algo(self) -> &'static str {
        match self {
            Suite::Secp256k1 => "secp256k1-aes-256-gcm-hkdf-sha256",
            Suite::X25519 => "x25519-aes-256-gcm-hkdf-sha256",
        }
    }

    /// The suite named by an exact `algo` string, if it is an E2EE v2 suite.
    pub fn from_algo(algo: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.algo() == algo)
    }

    /// The HKDF `info` string.
    pub const fn hkdf_info(self) -> &'static [u8] {
        match self {
            Suite::Secp256k1 => b"aci.e2ee.v2.secp256k1",
            Suite::X25519 => b"aci.e2ee.v2.x25519",
        }
    }

    /// Length of the ephemeral public key on the wire (65-byte uncompressed SEC1, or 32 raw bytes).
    pub const fn ephemeral_len(self) -> usize {
        match self {
            Suite::Secp256k1 => 65,
            Suite::X25519 => 32,
        }
    }

    /// The smallest valid field blob (empty plaintext): 93 or 60 bytes.
    pub const fn min_blob_len(self) -> usize {
        self.ephemeral_len() + NONCE_LEN + TAG_LEN
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.algo())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PublicInner {
    Secp256k1(k256::PublicKey),
    X25519(x25519_dalek::PublicKey),
}

/// A recipient's public key in one suite, validated and normalised.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(PublicInner);

impl PublicKey {
    /// Parse a public key as the reference gateway does: optional lowercase `0x`, hex of any case;
    /// secp256k1 as 65 bytes (`04‖X‖Y`) or 64 bytes (`X‖Y`) naming a curve point; X25519 as exactly
    /// 32 bytes, refusing the all-zero and other low-order points.
    pub fn parse(suite: Suite, text: &str) -> Result<PublicKey> {
        let bytes = hex::decode_prefixed(text).ok_or_else(|| Error::malformed("public key is not hex"))?;
        Self::from_bytes(suite, &bytes)
    }

    /// Build from raw bytes (same rules as [`parse`](Self::parse), without the hex).
    pub fn from_bytes(suite: Suite, bytes: &[u8]) -> Result<PublicKey> {
        match suite {
            Suite::Secp256k1 => {
                let mut buf = [0u8; 65];
                let sec1: &[u8] = match bytes.len() {
                    65 if bytes[0] == 0x04 => bytes,
                    64 => {
                        buf[0] = 0x04;
                        buf[1..].copy_from_slice(bytes);
                        &buf
                    }
                    _ => {
                        return Err(Error::malformed(
                            "secp256k1 public key must be 65 bytes (04‖X‖Y) or 64 bytes (X‖Y)",
                        ));
                    }
                };
                let point = k256::PublicKey::from_sec1_bytes(sec1)
                    .map_err(|_| Error::malformed("secp256k1 public key is not a curve point"))?;
                Ok(PublicKey(PublicInner::Secp256k1(point)))
            }
            Suite::X25519 => {
                let arr: [u8; 32] =
                    bytes.try_into().map_err(|_| Error::malformed("x25519 public key must be 32 bytes"))?;
                if is_low_order_x25519(&arr) {
                    return Err(Error::malformed("x25519 public key is a low-order point"));
                }
                Ok(PublicKey(PublicInner::X25519(x25519_dalek::PublicKey::from(arr))))
            }
        }
    }

    /// The key's suite.
    pub fn suite(&self) -> Suite {
        match self.0 {
            PublicInner::Secp256k1(_) => Suite::Secp256k1,
            PublicInner::X25519(_) => Suite::X25519,
        }
    }

    /// The wire bytes: 65-byte uncompressed SEC1 or 32 raw bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.0 {
            PublicInner::Secp256k1(p) => p.to_encoded_point(false).as_bytes().to_vec(),
            PublicInner::X25519(p) => p.as_bytes().to_vec(),
        }
    }

    /// The normalised lowercase hex form (no prefix; 130 chars starting `04` for secp256k1).
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    /// The compressed SEC1 form of a secp256k1 key (33 bytes), `None` for X25519.
    pub fn to_compressed_sec1(&self) -> Option<[u8; 33]> {
        match &self.0 {
            PublicInner::Secp256k1(p) => p.to_encoded_point(true).as_bytes().try_into().ok(),
            PublicInner::X25519(_) => None,
        }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, {})", self.suite(), self.to_hex())
    }
}

/// The eight low-order points of Curve25519 (little-endian u-coordinates), plus their
/// non-canonical twins, as listed by libsodium.
fn is_low_order_x25519(key: &[u8; 32]) -> bool {
    const BLOCKLIST: [[u8; 32]; 7] = [
        [0; 32],
        {
            let mut k = [0u8; 32];
            k[0] = 1;
            k
        },
        [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09,
            0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00,
        ],
        [
            0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b, 0x04, 0x44,
            0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57,
        ],
        [
            0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ],
        [
            0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ],
        [
            0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ],
    ];
    // The top bit is ignored by X25519, so compare with it cleared as well.
    let mut masked = *key;
    masked[31] &= 0x7f;
    BLOCKLIST.iter().any(|b| {
        let mut bm = *b;
        bm[31] &= 0x7f;
        bm == masked
    })
}

enum SecretInner {
    Secp256k1(k256::NonZeroScalar),
    X25519(x25519_dalek::StaticSecret),
}

/// A secret key in one suite: the client's per-exchange key, an ephemeral key, or a gateway's
/// service key. Zeroized on drop; `Debug` prints `[redacted]`.
pub struct SecretKey(SecretInner);

impl SecretKey {
    /// A fresh random key.
    pub fn generate(suite: Suite, rng: &mut impl CryptoRngCore) -> SecretKey {
        match suite {
            Suite::Secp256k1 => SecretKey(SecretInner::Secp256k1(k256::NonZeroScalar::random(rng))),
            Suite::X25519 => SecretKey(SecretInner::X25519(x25519_dalek::StaticSecret::random_from_rng(rng))),
        }
    }

    /// A key from 32 secret bytes (a secp256k1 scalar in big-endian, or an X25519 seed).
    pub fn from_bytes(suite: Suite, bytes: &[u8; 32]) -> Result<SecretKey> {
        match suite {
            Suite::Secp256k1 => {
                let sk = k256::SecretKey::from_bytes(bytes.into())
                    .map_err(|_| Error::malformed("secp256k1 secret key out of range"))?;
                Ok(SecretKey(SecretInner::Secp256k1(sk.to_nonzero_scalar())))
            }
            Suite::X25519 => Ok(SecretKey(SecretInner::X25519(x25519_dalek::StaticSecret::from(*bytes)))),
        }
    }

    /// The key's suite.
    pub fn suite(&self) -> Suite {
        match self.0 {
            SecretInner::Secp256k1(_) => Suite::Secp256k1,
            SecretInner::X25519(_) => Suite::X25519,
        }
    }

    /// The matching public key (secp256k1 through k256's precomputed generator tables).
    pub fn public_key(&self) -> PublicKey {
        match &self.0 {
            SecretInner::Secp256k1(s) => {
                let point = k256::ProjectivePoint::mul_by_generator(s.as_ref());
                // A non-zero scalar times the generator is never the identity.
                let pk = k256::PublicKey::from_affine(point.to_affine()).expect("non-zero scalar");
                PublicKey(PublicInner::Secp256k1(pk))
            }
            SecretInner::X25519(s) => PublicKey(PublicInner::X25519(x25519_dalek::PublicKey::from(s))),
        }
    }

    /// ECDH, then HKDF-SHA256 with the suite's info string: the field's AES-256 key.
    fn derive_key(&self, peer: &PublicKey) -> Result<Zeroizing<[u8; 32]>> {
        let mut shared = Zeroizing::new([0u8; 32]);
        match (&self.0, &peer.0) {
            (SecretInner::Secp256k1(s), PublicInner::Secp256k1(p)) => {
                let ss = k256::ecdh::diffie_hellman(s, p.as_affine());
                shared.copy_from_slice(ss.raw_secret_bytes());
            }
            (SecretInner::X25519(s), PublicInner::X25519(p)) => {
                let ss = s.diffie_hellman(p);
                if !ss.was_contributory() {
                    return Err(Error::decrypt());
                }
                shared.copy_from_slice(ss.as_bytes());
            }
            _ => return Err(Error::malformed("key suites differ")),
        }
        Ok(hkdf_key(self.suite(), &shared))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}, [redacted])", self.suite())
    }
}

/// HKDF-SHA256 with no salt and the suite's info, 32 bytes out.
fn hkdf_key(suite: Suite, shared: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut okm = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, shared)
        .expand(suite.hkdf_info(), okm.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

/// Seal `plaintext` to `recipient` with a fresh ephemeral key and nonce from `rng`.
pub fn seal(recipient: &PublicKey, plaintext: &[u8], aad: &[u8], rng: &mut impl CryptoRngCore) -> String {
    let ephemeral = SecretKey::generate(recipient.suite(), rng);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    seal_with(recipient, &ephemeral, &nonce, plaintext, aad).expect("ephemeral key generated in the recipient's suite")
}

/// Seal with a caller-chosen ephemeral key and nonce. For known-answer tests; production code
/// uses [`seal`], which draws both fresh for every field.
pub fn seal_with(
    recipient: &PublicKey,
    ephemeral: &SecretKey,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<String> {
    let suite = recipient.suite();
    let key = ephemeral.derive_key(recipient)?;
    let eph_pub = ephemeral.public_key().to_bytes();
    let head = eph_pub.len() + NONCE_LEN;
    let mut blob = Vec::with_capacity(head + plaintext.len() + TAG_LEN);
    blob.extend_from_slice(&eph_pub);
    blob.extend_from_slice(nonce);
    blob.extend_from_slice(plaintext);
    let cipher = Aes256Gcm::new(key.as_ref().into());
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, &mut blob[head..])
        .map_err(|_| Error::malformed("plaintext too long for AES-GCM"))?;
    blob.extend_from_slice(&tag);
    debug_assert_eq!(blob.len(), suite.min_blob_len() + plaintext.len());
    // SIMD hex: at 64 KiB the hex codec costs more than AES-GCM.
    Ok(const_hex::encode(&blob))
}

/// Open one field sealed to `recipient`. Hex of any case and a lowercase `0x` prefix are
/// accepted, as the reference decryptor does.
///
/// Errors: [`Malformed`](crate::ErrorKind::Malformed) when the text is not hex at all; every
/// other failure (too short, bad ephemeral key, wrong key, tampered byte, wrong AAD) is
/// [`Decrypt`](crate::ErrorKind::Decrypt) and says nothing more.
pub fn open(recipient: &SecretKey, field: &str, aad: &[u8]) -> Result<Vec<u8>> {
    let suite = recipient.suite();
    let text = field.strip_prefix("0x").unwrap_or(field).as_bytes();
    if !text.len().is_multiple_of(2) {
        return Err(Error::malformed("ciphertext is not hex"));
    }
    if text.len() / 2 < suite.min_blob_len() {
        // Still distinguish "not hex at all" from "too short" for the caller.
        if !text.iter().all(u8::is_ascii_hexdigit) {
            return Err(Error::malformed("ciphertext is not hex"));
        }
        return Err(Error::decrypt());
    }
    // `const_hex` strips a leading `0x`/`0X` from what it decodes; the only prefix accepted was
    // removed above, so any `x` left makes the field malformed.
    if memchr::memchr2(b'x', b'X', text).is_some() {
        return Err(Error::malformed("ciphertext is not hex"));
    }
    let eph_len = suite.ephemeral_len();
    let ct_len = text.len() / 2 - suite.min_blob_len();
    let (eph_hex, rest) = text.split_at(eph_len * 2);
    let (nonce_hex, rest) = rest.split_at(NONCE_LEN * 2);
    let (ct_hex, tag_hex) = rest.split_at(ct_len * 2);
    let not_hex = |_| Error::malformed("ciphertext is not hex");

    let mut eph = [0u8; 65];
    const_hex::decode_to_slice(eph_hex, &mut eph[..eph_len]).map_err(not_hex)?;
    let mut nonce = [0u8; NONCE_LEN];
    const_hex::decode_to_slice(nonce_hex, &mut nonce).map_err(not_hex)?;
    let mut tag = [0u8; TAG_LEN];
    const_hex::decode_to_slice(tag_hex, &mut tag).map_err(not_hex)?;
    let mut buf = vec![0u8; ct_len];
    const_hex::decode_to_slice(ct_hex, &mut buf).map_err(not_hex)?;

    let eph_bytes = &eph[..eph_len];
    if suite == Suite::Secp256k1 && eph_bytes[0] != 0x04 {
        return Err(Error::decrypt());
    }
    let peer = PublicKey::from_bytes(suite, eph_bytes).map_err(|_| Error::decrypt())?;
    let key = recipient.derive_key(&peer)?;
    let cipher = Aes256Gcm::new(key.as_ref().into());
    match cipher.decrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut buf, Tag::from_slice(&tag)) {
        Ok(()) => Ok(buf),
        Err(_) => {
            buf.zeroize();
            Err(Error::decrypt())
        }
    }
}

#[doc(hidden)]
/// Internals exposed for the known-answer tests and benches: the raw ECDH shared secret and
/// the HKDF output. Not part of the stable API.
pub mod kat {
    use super::*;

    /// The raw ECDH shared secret.
    pub fn shared_secret(secret: &SecretKey, peer: &PublicKey) -> Result<[u8; 32]> {
        match (&secret.0, &peer.0) {
            (SecretInner::Secp256k1(s), PublicInner::Secp256k1(p)) => {
                let ss = k256::ecdh::diffie_hellman(s, p.as_affine());
                Ok((*ss.raw_secret_bytes()).into())
            }
            (SecretInner::X25519(s), PublicInner::X25519(p)) => Ok(*s.diffie_hellman(p).as_bytes()),
            _ => Err(Error::malformed("key suites differ")),
        }
    }

    /// The derived AES-256 key.
    pub fn field_key(secret: &SecretKey, peer: &PublicKey) -> Result<[u8; 32]> {
        Ok(*secret.derive_key(peer)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn rng() -> rand_core::OsRng {
        rand_core::OsRng
    }

    #[test]
    fn round_trip_both_suites_including_empty() {
        for suite in Suite::ALL {
            let sk = SecretKey::generate(suite, &mut rng());
            for pt in [&b""[..], b"x", &[7u8; 1000]] {
                let f = seal(&sk.public_key(), pt, b"aad", &mut rng());
                assert_eq!(f.len(), 2 * (suite.min_blob_len() + pt.len()));
                assert_eq!(open(&sk, &f, b"aad").unwrap(), pt);
                assert_eq!(open(&sk, &format!("0x{f}"), b"aad").unwrap(), pt);
                assert_eq!(open(&sk, &f.to_uppercase(), b"aad").unwrap(), pt);
                assert_eq!(open(&sk, &format!("0X{f}"), b"aad").unwrap_err().kind(), ErrorKind::Malformed);
            }
        }
    }

    #[test]
    fn secp256k1_accepts_64_and_65_byte_forms() {
        let sk = SecretKey::generate(Suite::Secp256k1, &mut rng());
        let hex65 = sk.public_key().to_hex();
        assert_eq!(hex65.len(), 130);
        let a = PublicKey::parse(Suite::Secp256k1, &hex65).unwrap();
        let b = PublicKey::parse(Suite::Secp256k1, &hex65[2..]).unwrap();
        let c = PublicKey::parse(Suite::Secp256k1, &format!("0x{}", hex65.to_uppercase())).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert!(PublicKey::parse(Suite::Secp256k1, &format!("0X{hex65}")).is_err());
        let compressed = hex::encode(a.to_compressed_sec1().unwrap());
        assert!(PublicKey::parse(Suite::Secp256k1, &compressed).is_err());
        let mut bad = hex65.clone();
        bad.replace_range(128..130, if &hex65[128..] == "00" { "01" } else { "00" });
        assert!(PublicKey::parse(Suite::Secp256k1, &bad).is_err(), "off-curve point");
    }

    #[test]
    fn x25519_rejects_low_order_and_wrong_length() {
        assert!(PublicKey::parse(Suite::X25519, &"00".repeat(32)).is_err());
        let mut one = "00".repeat(32);
        one.replace_range(0..2, "01");
        assert!(PublicKey::parse(Suite::X25519, &one).is_err());
        assert!(PublicKey::parse(Suite::X25519, &"11".repeat(31)).is_err());
        assert!(PublicKey::parse(Suite::X25519, &"11".repeat(32)).is_ok());
    }

    #[test]
    fn suite_mismatch_is_an_error_not_a_panic() {
        let sk = SecretKey::generate(Suite::X25519, &mut rng());
        let other = SecretKey::generate(Suite::Secp256k1, &mut rng());
        let f = seal(&other.public_key(), b"hi", b"", &mut rng());
        assert!(open(&sk, &f, b"").is_err());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let sk = SecretKey::from_bytes(Suite::X25519, &[0x42; 32]).unwrap();
        let s = format!("{sk:?}");
        assert!(s.contains("redacted"));
        assert!(!s.contains("42"));
    }
}
