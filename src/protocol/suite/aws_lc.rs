//! X25519 and AES-256-GCM on AWS-LC (feature `aws-lc`).
//!
//! AWS-LC's X25519 is assembly (s2n-bignum) on x86-64 and AArch64, its AES-GCM uses AES-NI/VAES
//! and carry-less multiplication. `agreement::PrivateKey` (unlike ring's ephemeral keys) can be
//! used for many agreements, which the client needs: it opens every event of a stream with one
//! request key. AWS-LC cleanses key memory when it frees it.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// An X25519 private key from its 32 secret bytes (clamped at use, as RFC 7748 says).
pub(super) fn x25519_private(seed: &[u8; 32]) -> PrivateKey {
    PrivateKey::from_private_key(&X25519, seed).expect("32 bytes are an X25519 private key")
}

/// The public key of `key`.
pub(super) fn x25519_public(key: &PrivateKey) -> [u8; 32] {
    let public = key.compute_public_key().expect("an X25519 private key has a public key");
    public.as_ref().try_into().expect("an X25519 public key is 32 bytes")
}

/// X25519(key, peer). AWS-LC refuses an all-zero result (a non-contributory peer), which is
/// [`Decrypt`](crate::error::ErrorKind::Decrypt) here as with x25519-dalek.
pub(super) fn x25519_shared(key: &PrivateKey, peer: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
    agreement::agree(key, UnparsedPublicKey::new(&X25519, peer), Error::decrypt(), |shared| {
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(shared);
        Ok(out)
    })
}

fn cipher(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32 bytes are an AES-256 key"))
}

/// AES-256-GCM encryption of `buf` in place; returns the tag.
pub(super) fn aes_gcm_seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> Result<[u8; 16]> {
    let tag = cipher(key)
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
        .map_err(|_| Error::malformed("plaintext too long for AES-GCM"))?;
    Ok(tag.as_ref().try_into().expect("an AES-GCM tag is 16 bytes"))
}

/// AES-256-GCM decryption of `buf` in place. On failure `buf` holds unspecified bytes.
pub(super) fn aes_gcm_open(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> Result<()> {
    cipher(key)
        .open_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), tag, buf)
        .map(|_| ())
        .map_err(|_| Error::decrypt())
}
