//! The secp256k1 suite's ECDH and key generation on libsecp256k1 (feature `libsecp256k1`).
//!
//! Same results as k256, byte for byte (the known-answer vectors run on both): the shared secret
//! is the x-coordinate of the ECDH point, public keys are 65-byte uncompressed SEC1.

use std::sync::LazyLock;

use rand_core::{OsRng, RngCore};
use secp256k1::{Secp256k1, SignOnly, ecdh};
use zeroize::Zeroizing;

/// One signing context for the process, randomized once from the OS (libsecp256k1's blinding of
/// the generator multiplication; it changes no result). Creating or re-randomizing one per key
/// would cost a second generator multiplication per field.
static CONTEXT: LazyLock<Secp256k1<SignOnly>> = LazyLock::new(|| {
    let mut ctx = Secp256k1::signing_only();
    let mut seed = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(seed.as_mut());
    ctx.seeded_randomize(&seed);
    ctx
});

/// A secret key from 32 big-endian bytes already known to be a valid scalar (in `1..n`).
pub(super) fn secret(bytes: &[u8; 32]) -> secp256k1::SecretKey {
    secp256k1::SecretKey::from_byte_array(*bytes).expect("a k256 non-zero scalar is a valid libsecp256k1 secret key")
}

/// The public key of `secret`.
pub(super) fn public(secret: &secp256k1::SecretKey) -> secp256k1::PublicKey {
    secp256k1::PublicKey::from_secret_key(&CONTEXT, secret)
}

/// Parse a 65-byte uncompressed SEC1 point (`04‖X‖Y`); anything else, or a point off the curve,
/// is `None`. libsecp256k1 would also take the hybrid `06`/`07` forms, which the reference does
/// not, so the prefix is checked here.
pub(super) fn parse_public(sec1: &[u8]) -> Option<secp256k1::PublicKey> {
    if sec1.len() != 65 || sec1[0] != 0x04 {
        return None;
    }
    secp256k1::PublicKey::from_slice(sec1).ok()
}

/// The ECDH shared secret: the x-coordinate of `secret · peer`.
pub(super) fn shared_x(secret: &secp256k1::SecretKey, peer: &secp256k1::PublicKey) -> Zeroizing<[u8; 32]> {
    let point = Zeroizing::new(ecdh::shared_secret_point(peer, secret));
    let mut x = Zeroizing::new([0u8; 32]);
    x.copy_from_slice(&point[..32]);
    x
}
