//! The two E2EE v2 cipher suites: seal and open one field.
//!
//! A field value is the lowercase hex of `ephemeral public key ‖ 12-byte nonce ‖ ciphertext ‖ tag`,
//! where the AES-256-GCM key is `HKDF-SHA256(salt = none, IKM = ECDH(ephemeral, recipient), info)`.
//! The suite is fixed by the `algo` of the keyset entry; it is never negotiated.
//!
//! ```
//! use tower_aci::protocol::kat::{open, seal};
//! use tower_aci::protocol::{SecretKey, Suite};
//!
//! let mut rng = rand_core::OsRng;
//! let recipient = SecretKey::generate(Suite::Secp256k1, &mut rng);
//! let field = seal(&recipient.public_key(), b"hello", b"aad", &mut rng);
//! assert_eq!(open(&recipient, &field, b"aad").unwrap(), b"hello");
//! assert!(open(&recipient, &field, b"other aad").is_err());
//! ```
//!
//! # Backends
//!
//! Every field costs one ECDH (and, when sealing, one key generation), so the primitives set the
//! speed. Pure Rust is the default (k256, x25519-dalek, aes-gcm); two features swap in faster
//! libraries with the same API and the same bytes on the wire:
//!
//! | feature | primitives it takes over |
//! | --- | --- |
//! | `libsecp256k1` | secp256k1 ECDH and key generation (libsecp256k1, C) |
//! | `aws-lc` | X25519 ECDH and key generation, and AES-256-GCM of both suites (AWS-LC, assembly) |
//!
//! With a feature on, every seal and open uses its library; the known-answer vectors and a
//! cross-backend property test hold each backend to the pure-Rust bytes.

use std::fmt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use k256::elliptic_curve::ops::MulByGenerator;
use k256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::hex;

#[cfg(feature = "aws-lc")]
mod aws_lc;
#[cfg(feature = "libsecp256k1")]
mod libsecp256k1;

/// Length of the AES-GCM nonce carried in each field.
pub(crate) const NONCE_LEN: usize = 12;
/// Length of the AES-GCM tag carried in each field.
pub(crate) const TAG_LEN: usize = 16;

/// An E2EE v2 cipher suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Suite {
    /// `secp256k1-aes-256-gcm-hkdf-sha256`: the default RedPill/Phala key (`dstack-kms-e2ee-v1`).
    Secp256k1,
    /// `x25519-aes-256-gcm-hkdf-sha256`.
    X25519,
}

impl Suite {
    /// Every suite, secp256k1 first (the production default).
    #[doc(hidden)] // a hook for the crate's own tests: not API
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
    pub(crate) const fn hkdf_info(self) -> &'static [u8] {
        match self {
            Suite::Secp256k1 => b"aci.e2ee.v2.secp256k1",
            Suite::X25519 => b"aci.e2ee.v2.x25519",
        }
    }

    /// Length of the ephemeral public key on the wire (65-byte uncompressed SEC1, or 32 raw bytes).
    pub(crate) const fn ephemeral_len(self) -> usize {
        match self {
            Suite::Secp256k1 => 65,
            Suite::X25519 => 32,
        }
    }

    /// The smallest valid field blob (empty plaintext): 93 or 60 bytes.
    pub(crate) const fn min_blob_len(self) -> usize {
        self.ephemeral_len() + NONCE_LEN + TAG_LEN
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.algo())
    }
}

/// A library that implements some of the primitives. Not part of the stable API: the parity
/// tests and benches pick one per call through `kat` (feature `__internal-test-vectors`);
/// applications choose with features.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// k256, x25519-dalek and aes-gcm: every primitive, always compiled.
    RustCrypto,
    /// libsecp256k1 (feature `libsecp256k1`): secp256k1 ECDH and key generation.
    #[cfg(feature = "libsecp256k1")]
    Libsecp256k1,
    /// AWS-LC (feature `aws-lc`): X25519 ECDH and key generation, AES-256-GCM.
    #[cfg(feature = "aws-lc")]
    AwsLc,
}

impl Backend {
    /// Every compiled backend, pure Rust first.
    pub const ALL: &'static [Backend] = &[
        Backend::RustCrypto,
        #[cfg(feature = "libsecp256k1")]
        Backend::Libsecp256k1,
        #[cfg(feature = "aws-lc")]
        Backend::AwsLc,
    ];

    /// A short name for bench ids and test messages.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::RustCrypto => "rustcrypto",
            #[cfg(feature = "libsecp256k1")]
            Backend::Libsecp256k1 => "libsecp256k1",
            #[cfg(feature = "aws-lc")]
            Backend::AwsLc => "aws-lc",
        }
    }
}

#[cfg(feature = "libsecp256k1")]
const FASTEST_SECP256K1: Backend = Backend::Libsecp256k1;
#[cfg(not(feature = "libsecp256k1"))]
const FASTEST_SECP256K1: Backend = Backend::RustCrypto;
#[cfg(feature = "aws-lc")]
const FASTEST_X25519_AND_AEAD: Backend = Backend::AwsLc;
#[cfg(not(feature = "aws-lc"))]
const FASTEST_X25519_AND_AEAD: Backend = Backend::RustCrypto;

/// Which backend computes each primitive of one seal or open.
#[derive(Debug, Clone, Copy)]
struct Impls {
    secp256k1: Backend,
    x25519: Backend,
    aead: Backend,
}

impl Impls {
    /// The fastest compiled library for each primitive: what [`seal`] and [`open`] use.
    const FASTEST: Impls =
        Impls { secp256k1: FASTEST_SECP256K1, x25519: FASTEST_X25519_AND_AEAD, aead: FASTEST_X25519_AND_AEAD };

    /// `backend` for every primitive it implements, pure Rust for the others.
    #[cfg(any(test, feature = "__internal-test-vectors"))]
    fn only(backend: Backend) -> Impls {
        let rust = Backend::RustCrypto;
        match backend {
            Backend::RustCrypto => Impls { secp256k1: rust, x25519: rust, aead: rust },
            #[cfg(feature = "libsecp256k1")]
            Backend::Libsecp256k1 => Impls { secp256k1: backend, x25519: rust, aead: rust },
            #[cfg(feature = "aws-lc")]
            Backend::AwsLc => Impls { secp256k1: rust, x25519: backend, aead: backend },
        }
    }
}

/// A secp256k1 public key, parsed once by every compiled library that may use it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Secp256k1Public {
    point: k256::PublicKey,
    #[cfg(feature = "libsecp256k1")]
    lib: secp256k1::PublicKey,
}

impl Secp256k1Public {
    fn from_point(point: k256::PublicKey) -> Secp256k1Public {
        Secp256k1Public {
            #[cfg(feature = "libsecp256k1")]
            lib: libsecp256k1::parse_public(point.to_encoded_point(false).as_bytes())
                .expect("a k256 point parses in libsecp256k1"),
            point,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PublicInner {
    Secp256k1(Secp256k1Public),
    X25519([u8; 32]),
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
                Ok(PublicKey(PublicInner::Secp256k1(Secp256k1Public::from_point(point))))
            }
            Suite::X25519 => {
                let arr: [u8; 32] =
                    bytes.try_into().map_err(|_| Error::malformed("x25519 public key must be 32 bytes"))?;
                if is_low_order_x25519(&arr) {
                    return Err(Error::malformed("x25519 public key is a low-order point"));
                }
                Ok(PublicKey(PublicInner::X25519(arr)))
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
            PublicInner::Secp256k1(p) => p.point.to_encoded_point(false).as_bytes().to_vec(),
            PublicInner::X25519(p) => p.to_vec(),
        }
    }

    /// The normalised lowercase hex form (no prefix; 130 chars starting `04` for secp256k1).
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    /// The compressed SEC1 form of a secp256k1 key (33 bytes), `None` for X25519.
    #[allow(clippy::wrong_self_convention)] // named as the public `to_*` conversions beside it
    pub(crate) fn to_compressed_sec1(&self) -> Option<[u8; 33]> {
        match &self.0 {
            PublicInner::Secp256k1(p) => p.point.to_encoded_point(true).as_bytes().try_into().ok(),
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

/// A secp256k1 secret key in each compiled library's form. Neither k256's `NonZeroScalar` nor
/// libsecp256k1's `SecretKey` wipes itself, so this wrapper wipes both on drop.
struct Secp256k1Secret {
    scalar: k256::NonZeroScalar,
    #[cfg(feature = "libsecp256k1")]
    lib: secp256k1::SecretKey,
}

impl Secp256k1Secret {
    fn new(scalar: k256::NonZeroScalar) -> Secp256k1Secret {
        Secp256k1Secret {
            #[cfg(feature = "libsecp256k1")]
            lib: {
                let mut bytes = Zeroizing::new([0u8; 32]);
                bytes.copy_from_slice(&scalar.to_bytes());
                libsecp256k1::secret(&bytes)
            },
            scalar,
        }
    }

    /// The uncompressed SEC1 public key.
    fn public_sec1(&self, backend: Backend) -> [u8; 65] {
        #[cfg(feature = "libsecp256k1")]
        if backend == Backend::Libsecp256k1 {
            return libsecp256k1::public(&self.lib).serialize_uncompressed();
        }
        let _ = backend;
        let point = k256::ProjectivePoint::mul_by_generator(self.scalar.as_ref()).to_affine();
        point.to_encoded_point(false).as_bytes().try_into().expect("uncompressed SEC1 is 65 bytes")
    }

    /// The public key as a k256 point: computed by `backend`, never re-parsed from its encoding
    /// when k256 computed it.
    fn public_point(&self, backend: Backend) -> k256::PublicKey {
        #[cfg(feature = "libsecp256k1")]
        if backend == Backend::Libsecp256k1 {
            let sec1 = self.public_sec1(backend);
            return k256::PublicKey::from_sec1_bytes(&sec1).expect("a non-zero scalar's public key is a point");
        }
        let _ = backend;
        let point = k256::ProjectivePoint::mul_by_generator(self.scalar.as_ref()).to_affine();
        k256::PublicKey::from_affine(point).expect("a non-zero scalar's public key is not the identity")
    }

    /// What sealing to `peer` with this (ephemeral) key needs: the ECDH shared x-coordinate and
    /// the uncompressed SEC1 public key. With k256 both points are made affine together, with
    /// one field inversion instead of two (Montgomery's trick, constant time like `to_affine`).
    fn shared_and_public(&self, backend: Backend, peer: &Secp256k1Public) -> (Zeroizing<[u8; 32]>, [u8; 65]) {
        #[cfg(feature = "libsecp256k1")]
        if backend == Backend::Libsecp256k1 {
            return (self.shared(backend, peer), self.public_sec1(backend));
        }
        let _ = backend;
        use k256::elliptic_curve::point::{AffineCoordinates, BatchNormalize};
        let mut points = Zeroizing::new([
            k256::ProjectivePoint::from(*peer.point.as_affine()) * self.scalar.as_ref(),
            k256::ProjectivePoint::mul_by_generator(self.scalar.as_ref()),
        ]);
        let affine = Zeroizing::new(<k256::ProjectivePoint as BatchNormalize<_>>::batch_normalize(&*points));
        points.zeroize();
        let mut shared = Zeroizing::new([0u8; 32]);
        shared.copy_from_slice(&Zeroizing::new(affine[0].x()));
        let public = affine[1].to_encoded_point(false).as_bytes().try_into().expect("uncompressed SEC1 is 65 bytes");
        (shared, public)
    }

    /// ECDH with a parsed peer: the x-coordinate of the shared point.
    fn shared(&self, backend: Backend, peer: &Secp256k1Public) -> Zeroizing<[u8; 32]> {
        #[cfg(feature = "libsecp256k1")]
        if backend == Backend::Libsecp256k1 {
            return libsecp256k1::shared_x(&self.lib, &peer.lib);
        }
        let _ = backend;
        k256_shared(&self.scalar, &peer.point)
    }

    /// ECDH with a peer's 65-byte `04‖X‖Y` encoding, parsed by `backend` only; `None` when it is
    /// not a curve point.
    fn shared_with_sec1(&self, backend: Backend, sec1: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
        #[cfg(feature = "libsecp256k1")]
        if backend == Backend::Libsecp256k1 {
            let peer = libsecp256k1::parse_public(sec1)?;
            return Some(libsecp256k1::shared_x(&self.lib, &peer));
        }
        let _ = backend;
        if sec1.first() != Some(&0x04) {
            return None;
        }
        let peer = k256::PublicKey::from_sec1_bytes(sec1).ok()?;
        Some(k256_shared(&self.scalar, &peer))
    }
}

fn k256_shared(scalar: &k256::NonZeroScalar, peer: &k256::PublicKey) -> Zeroizing<[u8; 32]> {
    let ss = k256::ecdh::diffie_hellman(scalar, peer.as_affine());
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(ss.raw_secret_bytes());
    out
}

impl Zeroize for Secp256k1Secret {
    fn zeroize(&mut self) {
        // k256 writes through volatile stores and leaves ONE, keeping the non-zero invariant.
        self.scalar.zeroize();
        #[cfg(feature = "libsecp256k1")]
        self.lib.non_secure_erase();
    }
}

impl Drop for Secp256k1Secret {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for Secp256k1Secret {}

/// An X25519 secret key. x25519-dalek's `StaticSecret` wipes itself on drop; AWS-LC's key is
/// built on first use and cleansed by AWS-LC when freed.
struct X25519Secret {
    dalek: x25519_dalek::StaticSecret,
    #[cfg(feature = "aws-lc")]
    aws_lc: std::sync::OnceLock<aws_lc_rs::agreement::PrivateKey>,
}

impl X25519Secret {
    fn new(dalek: x25519_dalek::StaticSecret) -> X25519Secret {
        X25519Secret {
            dalek,
            #[cfg(feature = "aws-lc")]
            aws_lc: std::sync::OnceLock::new(),
        }
    }

    #[cfg(feature = "aws-lc")]
    fn aws_lc(&self) -> &aws_lc_rs::agreement::PrivateKey {
        self.aws_lc.get_or_init(|| aws_lc::x25519_private(self.dalek.as_bytes()))
    }

    fn public(&self, backend: Backend) -> [u8; 32] {
        #[cfg(feature = "aws-lc")]
        if backend == Backend::AwsLc {
            return aws_lc::x25519_public(self.aws_lc());
        }
        let _ = backend;
        x25519_dalek::PublicKey::from(&self.dalek).to_bytes()
    }

    /// X25519 with a peer already checked against the low-order list. A non-contributory result
    /// is [`Decrypt`](crate::error::ErrorKind::Decrypt) on every backend.
    fn shared(&self, backend: Backend, peer: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
        #[cfg(feature = "aws-lc")]
        if backend == Backend::AwsLc {
            return aws_lc::x25519_shared(self.aws_lc(), peer);
        }
        let _ = backend;
        let ss = self.dalek.diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
        if !ss.was_contributory() {
            return Err(Error::decrypt());
        }
        Ok(Zeroizing::new(*ss.as_bytes()))
    }
}

enum SecretInner {
    Secp256k1(Secp256k1Secret),
    X25519(X25519Secret),
}

/// A secret key in one suite: the client's per-exchange key, an ephemeral key, or a gateway's
/// service key. Zeroized on drop (in every backend's form); `Debug` prints `[redacted]`.
///
/// The key material lives on the heap, so moving a `SecretKey` moves a pointer and leaves no
/// copy of the secret behind on the stack.
pub struct SecretKey(Box<SecretInner>);

impl SecretKey {
    /// A fresh random key.
    pub fn generate(suite: Suite, rng: &mut impl CryptoRngCore) -> SecretKey {
        match suite {
            Suite::Secp256k1 => {
                SecretKey(Box::new(SecretInner::Secp256k1(Secp256k1Secret::new(k256::NonZeroScalar::random(rng)))))
            }
            Suite::X25519 => SecretKey(Box::new(SecretInner::X25519(X25519Secret::new(
                x25519_dalek::StaticSecret::random_from_rng(rng),
            )))),
        }
    }

    /// A key from 32 secret bytes (a secp256k1 scalar in big-endian, or an X25519 seed).
    pub fn from_bytes(suite: Suite, bytes: &[u8; 32]) -> Result<SecretKey> {
        match suite {
            Suite::Secp256k1 => {
                let sk = k256::SecretKey::from_bytes(bytes.into())
                    .map_err(|_| Error::malformed("secp256k1 secret key out of range"))?;
                Ok(SecretKey(Box::new(SecretInner::Secp256k1(Secp256k1Secret::new(sk.to_nonzero_scalar())))))
            }
            Suite::X25519 => Ok(SecretKey(Box::new(SecretInner::X25519(X25519Secret::new(
                x25519_dalek::StaticSecret::from(*bytes),
            ))))),
        }
    }

    /// The key's suite.
    pub fn suite(&self) -> Suite {
        match *self.0 {
            SecretInner::Secp256k1(_) => Suite::Secp256k1,
            SecretInner::X25519(_) => Suite::X25519,
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        self.public_key_with(Impls::FASTEST)
    }

    fn public_key_with(&self, impls: Impls) -> PublicKey {
        match &*self.0 {
            SecretInner::Secp256k1(s) => {
                PublicKey(PublicInner::Secp256k1(Secp256k1Public::from_point(s.public_point(impls.secp256k1))))
            }
            SecretInner::X25519(s) => PublicKey(PublicInner::X25519(s.public(impls.x25519))),
        }
    }

    /// The wire form of the public key, without building a [`PublicKey`]: 65 or 32 bytes used.
    fn public_wire(&self, impls: Impls) -> ([u8; 65], usize) {
        let mut out = [0u8; 65];
        match &*self.0 {
            SecretInner::Secp256k1(s) => (s.public_sec1(impls.secp256k1), 65),
            SecretInner::X25519(s) => {
                out[..32].copy_from_slice(&s.public(impls.x25519));
                (out, 32)
            }
        }
    }

    /// The public key's normalised lowercase hex, without building a [`PublicKey`]: what
    /// `PublicKey::to_hex` gives for [`public_key`](Self::public_key).
    pub(crate) fn public_key_hex(&self) -> String {
        let (wire, len) = self.public_wire(Impls::FASTEST);
        hex::encode(&wire[..len])
    }

    /// For sealing to `peer` with this ephemeral key: the field's AES-256 key and this key's
    /// wire form (65 or 32 bytes used).
    fn seal_key_and_public(&self, impls: Impls, peer: &PublicKey) -> Result<(Zeroizing<[u8; 32]>, [u8; 65], usize)> {
        if let (SecretInner::Secp256k1(s), PublicInner::Secp256k1(p)) = (&*self.0, &peer.0) {
            let (shared, public) = s.shared_and_public(impls.secp256k1, p);
            return Ok((hkdf_key(Suite::Secp256k1, &shared), public, 65));
        }
        let key = self.derive_key(impls, peer)?;
        let (public, len) = self.public_wire(impls);
        Ok((key, public, len))
    }

    /// The raw ECDH shared secret with a parsed peer.
    fn shared_secret(&self, impls: Impls, peer: &PublicKey) -> Result<Zeroizing<[u8; 32]>> {
        match (&*self.0, &peer.0) {
            (SecretInner::Secp256k1(s), PublicInner::Secp256k1(p)) => Ok(s.shared(impls.secp256k1, p)),
            (SecretInner::X25519(s), PublicInner::X25519(p)) => s.shared(impls.x25519, p),
            _ => Err(Error::malformed("key suites differ")),
        }
    }

    /// ECDH, then HKDF-SHA256 with the suite's info string: the field's AES-256 key.
    fn derive_key(&self, impls: Impls, peer: &PublicKey) -> Result<Zeroizing<[u8; 32]>> {
        let shared = self.shared_secret(impls, peer)?;
        Ok(hkdf_key(self.suite(), &shared))
    }

    /// The field key for an ephemeral public key straight off the wire, parsed only by the
    /// backend that uses it. Every failure is [`Decrypt`](crate::error::ErrorKind::Decrypt).
    fn derive_key_from_wire(&self, impls: Impls, ephemeral: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        let shared = match &*self.0 {
            SecretInner::Secp256k1(s) => s.shared_with_sec1(impls.secp256k1, ephemeral).ok_or_else(Error::decrypt)?,
            SecretInner::X25519(s) => {
                let peer: [u8; 32] = ephemeral.try_into().map_err(|_| Error::decrypt())?;
                if is_low_order_x25519(&peer) {
                    return Err(Error::decrypt());
                }
                s.shared(impls.x25519, &peer)?
            }
        };
        Ok(hkdf_key(self.suite(), &shared))
    }
}

impl ZeroizeOnDrop for SecretKey {}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}, [redacted])", self.suite())
    }
}

/// HKDF-SHA256 (RFC 5869) with no salt and the suite's info, 32 bytes out: extract
/// `PRK = HMAC(0³², shared)`, then one expand block `OKM = HMAC(PRK, info ‖ 0x01)`.
///
/// Computed on SHA-256's compression function with buffers of our own, so that the
/// pseudorandom key, HMAC's padded key blocks, the keyed chaining states and the inner digests
/// are all zeroized when done (the `hkdf`/`hmac` crates keep the keyed state in structs that are
/// not). Byte-identical to `hkdf::Hkdf::<Sha256>` (tested).
fn hkdf_key(suite: Suite, shared: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let prk = hmac_sha256(&[0u8; 32], &[shared]);
    hmac_sha256(&prk, &[suite.hkdf_info(), &[1]])
}

/// HMAC-SHA256 under a 32-byte key of the concatenation of `parts` (at most 119 bytes).
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let inner = sha256_after_key_block(key, 0x36, parts);
    sha256_after_key_block(key, 0x5c, &[&inner[..]])
}

/// SHA-256 of `(key ‖ 0³²) ⊕ pad` (one 64-byte block) followed by `parts` (at most 119 bytes
/// together: every use here is one or two blocks). Every buffer and state is zeroized.
fn sha256_after_key_block(key: &[u8; 32], pad: u8, parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    use sha2::digest::generic_array::GenericArray;
    const IV: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut state = Zeroizing::new(IV);
    let mut block = Zeroizing::new([pad; 128]);
    for (b, k) in block.iter_mut().zip(key) {
        *b ^= k;
    }
    sha2::compress256(&mut state, std::slice::from_ref(GenericArray::from_slice(&block[..64])));
    // The message, SHA-256 padded: 0x80, zeros, the bit length of everything hashed.
    block.zeroize();
    let mut len = 0;
    for part in parts {
        block[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    assert!(len <= 128 - 9, "HMAC input too long for this fixed-size HMAC");
    block[len] = 0x80;
    let blocks = if len + 9 <= 64 { 1 } else { 2 };
    let bits = ((64 + len) as u64) * 8;
    block[blocks * 64 - 8..blocks * 64].copy_from_slice(&bits.to_be_bytes());
    for b in block[..blocks * 64].chunks_exact(64) {
        sha2::compress256(&mut state, std::slice::from_ref(GenericArray::from_slice(b)));
    }
    let mut out = Zeroizing::new([0u8; 32]);
    for (o, word) in out.chunks_exact_mut(4).zip(state.iter()) {
        o.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// AES-256-GCM encryption in place, by the chosen backend; returns the tag.
fn aead_seal(
    backend: Backend,
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<[u8; TAG_LEN]> {
    #[cfg(feature = "aws-lc")]
    if backend == Backend::AwsLc {
        return aws_lc::aes_gcm_seal(key, nonce, aad, buf);
    }
    let _ = backend;
    let tag = Aes256Gcm::new(key.into())
        .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
        .map_err(|_| Error::malformed("plaintext too long for AES-GCM"))?;
    Ok(tag.into())
}

/// AES-256-GCM decryption in place, by the chosen backend. On failure `buf` is wiped.
fn aead_open(
    backend: Backend,
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<()> {
    #[cfg(feature = "aws-lc")]
    let result = if backend == Backend::AwsLc {
        aws_lc::aes_gcm_open(key, nonce, aad, buf, tag)
    } else {
        rustcrypto_open(key, nonce, aad, buf, tag)
    };
    #[cfg(not(feature = "aws-lc"))]
    let result = {
        let _ = backend;
        rustcrypto_open(key, nonce, aad, buf, tag)
    };
    if result.is_err() {
        buf.zeroize();
    }
    result
}

fn rustcrypto_open(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<()> {
    Aes256Gcm::new(key.into())
        .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf, Tag::from_slice(tag))
        .map_err(|_| Error::decrypt())
}

/// Seal `plaintext` to `recipient` with a fresh ephemeral key and nonce from `rng`.
pub(crate) fn seal(recipient: &PublicKey, plaintext: &[u8], aad: &[u8], rng: &mut impl CryptoRngCore) -> String {
    seal_impl(Impls::FASTEST, recipient, plaintext, aad, rng)
}

fn seal_impl(
    impls: Impls,
    recipient: &PublicKey,
    plaintext: &[u8],
    aad: &[u8],
    rng: &mut impl CryptoRngCore,
) -> String {
    let ephemeral = SecretKey::generate(recipient.suite(), rng);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    seal_with_impl(impls, recipient, &ephemeral, &nonce, plaintext, aad)
        .expect("ephemeral key generated in the recipient's suite")
}

/// Seal with a caller-chosen ephemeral key and nonce. For known-answer tests; production code
/// uses [`seal`], which draws both fresh for every field.
#[cfg(any(test, feature = "__internal-test-vectors"))]
pub(crate) fn seal_with(
    recipient: &PublicKey,
    ephemeral: &SecretKey,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<String> {
    seal_with_impl(Impls::FASTEST, recipient, ephemeral, nonce, plaintext, aad)
}

fn seal_with_impl(
    impls: Impls,
    recipient: &PublicKey,
    ephemeral: &SecretKey,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<String> {
    let suite = recipient.suite();
    let (key, eph_pub, eph_len) = ephemeral.seal_key_and_public(impls, recipient)?;
    let head = eph_len + NONCE_LEN;
    let mut blob = Vec::with_capacity(head + plaintext.len() + TAG_LEN);
    blob.extend_from_slice(&eph_pub[..eph_len]);
    blob.extend_from_slice(nonce);
    blob.extend_from_slice(plaintext);
    let tag = aead_seal(impls.aead, &key, nonce, aad, &mut blob[head..])?;
    blob.extend_from_slice(&tag);
    debug_assert_eq!(blob.len(), suite.min_blob_len() + plaintext.len());
    // SIMD hex: at 64 KiB the hex codec costs more than AES-GCM.
    Ok(const_hex::encode(&blob))
}

/// Open one field sealed to `recipient`. Hex of any case and a lowercase `0x` prefix are
/// accepted, as the reference decryptor does.
///
/// Errors: [`Malformed`](crate::error::ErrorKind::Malformed) when the text is not hex at all; every
/// other failure (too short, bad ephemeral key, wrong key, tampered byte, wrong AAD) is
/// [`Decrypt`](crate::error::ErrorKind::Decrypt) and says nothing more.
pub(crate) fn open(recipient: &SecretKey, field: &str, aad: &[u8]) -> Result<Vec<u8>> {
    open_impl(Impls::FASTEST, recipient, field, aad)
}

fn open_impl(impls: Impls, recipient: &SecretKey, field: &str, aad: &[u8]) -> Result<Vec<u8>> {
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

    let key = recipient.derive_key_from_wire(impls, &eph[..eph_len])?;
    aead_open(impls.aead, &key, &nonce, aad, &mut buf, &tag)?;
    Ok(buf)
}

/// Internals exposed for the known-answer tests, the cross-backend tests and the benches: the raw
/// ECDH shared secret, the HKDF output, and seal/open on one chosen [`Backend`]. Not part of the
/// API: compiled only with the hidden feature `__internal-test-vectors`, which no user feature
/// enables (see `Cargo.toml`).
#[cfg(any(test, feature = "__internal-test-vectors"))]
#[cfg_attr(not(feature = "__internal-test-vectors"), allow(unreachable_pub))]
#[doc(hidden)]
pub mod kat {
    use super::*;

    /// Length of a field's AES-GCM nonce.
    pub const NONCE_LEN: usize = super::NONCE_LEN;

    /// Seal one field to `recipient` (the gateway's half, for tests that play the gateway).
    pub fn seal(recipient: &PublicKey, plaintext: &[u8], aad: &[u8], rng: &mut impl CryptoRngCore) -> String {
        super::seal(recipient, plaintext, aad, rng)
    }

    /// [`seal`] with a chosen ephemeral key and nonce (known-answer vectors).
    pub fn seal_with(
        recipient: &PublicKey,
        ephemeral: &SecretKey,
        nonce: &[u8; NONCE_LEN],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<String> {
        super::seal_with(recipient, ephemeral, nonce, plaintext, aad)
    }

    /// Open one field sealed to `recipient`.
    pub fn open(recipient: &SecretKey, field: &str, aad: &[u8]) -> Result<Vec<u8>> {
        super::open(recipient, field, aad)
    }

    /// The ephemeral public key's length in a sealed field of `suite`.
    pub const fn ephemeral_len(suite: Suite) -> usize {
        suite.ephemeral_len()
    }

    /// The shortest sealed field of `suite`, decoded.
    pub const fn min_blob_len(suite: Suite) -> usize {
        suite.min_blob_len()
    }

    /// The compressed SEC1 form of a secp256k1 key.
    pub fn to_compressed_sec1(key: &PublicKey) -> Option<[u8; 33]> {
        key.to_compressed_sec1()
    }

    /// The raw ECDH shared secret (fastest backend).
    pub fn shared_secret(secret: &SecretKey, peer: &PublicKey) -> Result<[u8; 32]> {
        Ok(*secret.shared_secret(Impls::FASTEST, peer)?)
    }

    /// The raw ECDH shared secret computed by `backend` (pure Rust where it has no ECDH).
    pub fn shared_secret_using(backend: Backend, secret: &SecretKey, peer: &PublicKey) -> Result<[u8; 32]> {
        Ok(*secret.shared_secret(Impls::only(backend), peer)?)
    }

    /// The derived AES-256 key.
    pub fn field_key(secret: &SecretKey, peer: &PublicKey) -> Result<[u8; 32]> {
        Ok(*secret.derive_key(Impls::FASTEST, peer)?)
    }

    /// The public key of `secret` computed by `backend`.
    pub fn public_key_using(backend: Backend, secret: &SecretKey) -> PublicKey {
        secret.public_key_with(Impls::only(backend))
    }

    /// [`seal`] with every primitive `backend` has taken from it, pure Rust for the rest.
    pub fn seal_using(
        backend: Backend,
        recipient: &PublicKey,
        plaintext: &[u8],
        aad: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> String {
        seal_impl(Impls::only(backend), recipient, plaintext, aad, rng)
    }

    /// [`seal_with`] on `backend`.
    pub fn seal_with_using(
        backend: Backend,
        recipient: &PublicKey,
        ephemeral: &SecretKey,
        nonce: &[u8; NONCE_LEN],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<String> {
        seal_with_impl(Impls::only(backend), recipient, ephemeral, nonce, plaintext, aad)
    }

    /// [`open`] on `backend`.
    pub fn open_using(backend: Backend, recipient: &SecretKey, field: &str, aad: &[u8]) -> Result<Vec<u8>> {
        open_impl(Impls::only(backend), recipient, field, aad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn rng() -> rand_core::OsRng {
        rand_core::OsRng
    }

    /// The hex the request headers carry is the public key's own, on every compiled backend.
    #[test]
    fn public_key_hex_is_the_public_keys_hex() {
        for suite in Suite::ALL {
            let sk = SecretKey::generate(suite, &mut rng());
            assert_eq!(sk.public_key_hex(), sk.public_key().to_hex());
            for &backend in Backend::ALL {
                assert_eq!(sk.public_key_with(Impls::only(backend)).to_hex(), sk.public_key_hex(), "{backend:?}");
            }
        }
    }

    /// Sealing makes the ECDH point and the ephemeral public key affine together: the field
    /// carries the ephemeral key's own encoding and opens, on every backend.
    #[test]
    fn batched_seal_carries_the_ephemeral_key_and_opens() {
        for suite in Suite::ALL {
            let recipient = SecretKey::generate(suite, &mut rng());
            let ephemeral = SecretKey::generate(suite, &mut rng());
            for &backend in Backend::ALL {
                let impls = Impls::only(backend);
                let field =
                    seal_with_impl(impls, &recipient.public_key(), &ephemeral, &[9; NONCE_LEN], b"pt", b"a").unwrap();
                let eph = ephemeral.public_key().to_bytes();
                assert_eq!(&hex::decode_prefixed(&field).unwrap()[..eph.len()], &eph[..], "{backend:?}");
                assert_eq!(open_impl(impls, &recipient, &field, b"a").unwrap(), b"pt");
            }
        }
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

    #[test]
    fn hkdf_matches_the_hkdf_crate() {
        use hkdf::Hkdf;
        use sha2::Sha256;
        let mut r = rng();
        for suite in Suite::ALL {
            for n in 0..64 {
                let mut shared = [0u8; 32];
                rand_core::RngCore::fill_bytes(&mut r, &mut shared);
                if n == 0 {
                    shared = [0; 32];
                }
                let mut expected = [0u8; 32];
                Hkdf::<Sha256>::new(None, &shared).expand(suite.hkdf_info(), &mut expected).unwrap();
                assert_eq!(*hkdf_key(suite, &shared), expected, "{suite}");
            }
        }
        // HMAC of every message length up to the limit (one and two blocks): HKDF-Extract with
        // the key as salt is HMAC(key, message).
        let key = [0x0b; 32];
        let msg = [0x61u8; 119];
        for len in 0..=msg.len() {
            let (expected, _) = Hkdf::<Sha256>::extract(Some(&key), &msg[..len]);
            let split = len / 3;
            assert_eq!(hmac_sha256(&key, &[&msg[..split], &msg[split..len]])[..], expected[..], "{len}");
        }
    }

    #[test]
    fn derived_keys_are_zeroizing() {
        // The pseudorandom key and the derived key come back in `Zeroizing` buffers (wiped on
        // drop), and a derived key's type says so.
        fn zeroizing<T: Zeroize>(_: &Zeroizing<T>) {}
        let prk = hmac_sha256(&[0; 32], &[&[7; 32]]);
        zeroizing(&prk);
        let okm = hkdf_key(Suite::X25519, &[7; 32]);
        zeroizing(&okm);
        let sk = SecretKey::from_bytes(Suite::X25519, &[0x42; 32]).unwrap();
        let peer = SecretKey::from_bytes(Suite::X25519, &[0x43; 32]).unwrap().public_key();
        let key: Zeroizing<[u8; 32]> = sk.derive_key(Impls::FASTEST, &peer).unwrap();
        assert_ne!(*key, [0; 32]);
    }

    #[test]
    fn secret_keys_are_zeroized_on_drop() {
        fn zeroized_on_drop<T: ZeroizeOnDrop>() {}
        zeroized_on_drop::<SecretKey>();
        zeroized_on_drop::<Secp256k1Secret>();
        assert!(std::mem::needs_drop::<Secp256k1Secret>());
        assert!(std::mem::needs_drop::<X25519Secret>());
        // Moving a key moves a pointer: no copy of the secret is left on the stack.
        assert_eq!(std::mem::size_of::<SecretKey>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn secp256k1_wipe_clears_every_backend_form() {
        let sk = SecretKey::from_bytes(Suite::Secp256k1, &[0x42; 32]).unwrap();
        let SecretInner::Secp256k1(mut s) = *sk.0 else { unreachable!() };
        assert_eq!(s.scalar.to_bytes().as_slice(), &[0x42; 32]);
        #[cfg(feature = "libsecp256k1")]
        assert_eq!(s.lib.secret_bytes(), [0x42; 32]);
        // What `Drop` runs.
        s.zeroize();
        assert_eq!(*s.scalar.as_ref(), k256::Scalar::ONE, "k256 scalar wiped (to ONE)");
        #[cfg(feature = "libsecp256k1")]
        assert_eq!(s.lib.secret_bytes(), [1; 32], "libsecp256k1 key wiped");
    }

    #[test]
    fn every_backend_seals_what_every_backend_opens() {
        for suite in Suite::ALL {
            let sk = SecretKey::generate(suite, &mut rng());
            for &a in Backend::ALL {
                assert_eq!(kat::public_key_using(a, &sk), sk.public_key(), "{suite} {a:?}");
                for &b in Backend::ALL {
                    let f = kat::seal_using(a, &sk.public_key(), b"hi", b"aad", &mut rng());
                    assert_eq!(kat::open_using(b, &sk, &f, b"aad").unwrap(), b"hi", "{suite} {a:?} -> {b:?}");
                    let err = kat::open_using(b, &sk, &f, b"aaD").unwrap_err();
                    assert_eq!(err.kind(), ErrorKind::Decrypt, "{suite} {a:?} -> {b:?}");
                }
            }
        }
    }

    /// Peers off the happy path: random u-coordinates (most on the twist), the top bit set, and
    /// non-canonical values ≥ 2^255 − 19. Every backend computes the same secret or refuses.
    #[test]
    fn x25519_backends_agree_on_odd_peers() {
        let sk = SecretKey::generate(Suite::X25519, &mut rng());
        let mut peers: Vec<[u8; 32]> = Vec::new();
        for i in 0..64u8 {
            let mut p = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rng(), &mut p);
            if i % 2 == 0 {
                p[31] |= 0x80;
            }
            peers.push(p);
        }
        for low in 0..19u8 {
            // 2^255 − 19 + low, and the same with the top bit set.
            let mut p = [0xff; 32];
            p[0] = 0xed + low;
            p[31] = 0x7f;
            peers.push(p);
            p[31] = 0xff;
            peers.push(p);
        }
        let mut agreed = 0;
        for p in peers {
            let Ok(peer) = PublicKey::from_bytes(Suite::X25519, &p) else { continue };
            let results: Vec<_> =
                Backend::ALL.iter().map(|&b| kat::shared_secret_using(b, &sk, &peer).map_err(|e| e.kind())).collect();
            assert!(results.windows(2).all(|w| w[0] == w[1]), "{p:02x?}: {results:?}");
            agreed += usize::from(results[0].is_ok());
        }
        assert!(agreed >= 64, "the random peers give secrets, not only refusals ({agreed})");
    }

    /// Ephemeral keys off the curve or out of range are refused by every backend alike.
    #[test]
    fn secp256k1_backends_refuse_the_same_ephemeral_keys() {
        let sk = SecretKey::generate(Suite::Secp256k1, &mut rng());
        let good = seal(&sk.public_key(), b"x", b"", &mut rng());
        let mut cases = vec![good.clone()];
        // Off-curve: change the last byte of Y; x = p; hybrid (06/07) and compressed prefixes.
        let mut off = good.clone();
        off.replace_range(128..130, if &good[128..130] == "00" { "01" } else { "00" });
        cases.push(off);
        let p_hex = "fffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f";
        cases.push(format!("04{p_hex}{}", &good[66..]));
        for prefix in ["06", "07", "02", "00"] {
            cases.push(format!("{prefix}{}", &good[2..]));
        }
        for case in cases {
            let results: Vec<_> =
                Backend::ALL.iter().map(|&b| kat::open_using(b, &sk, &case, b"").map_err(|e| e.kind())).collect();
            assert!(results.windows(2).all(|w| w[0] == w[1]), "{}: {results:?}", &case[..4]);
        }
    }
}
