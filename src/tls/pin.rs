//! What the pin compares: the SHA-256 of a certificate's SubjectPublicKeyInfo, and whether a
//! keyset lists it for a host; the `ChannelBinding` error a refusal carries.

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::attest::AttestedKeyset;
use crate::error::{AttestationFailure, Error, Result};

/// SHA-256 of the SubjectPublicKeyInfo (DER, with its `SEQUENCE` header) of an X.509
/// certificate: the value `tls_public_keys[].spki_sha256` lists, in bytes.
///
/// Fails with `Malformed` when the certificate is not X.509 DER.
#[doc(hidden)] // for the test gateway and the crate's own tests: not API
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Result<[u8; 32]> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| Error::malformed(format!("the certificate is not X.509 DER: {e}")))?;
    Ok(Sha256::digest(ee.subject_public_key_info().as_ref()).into())
}

/// The error of a refused channel: `Attestation(ChannelBinding)`.
pub(super) fn channel_error(message: String) -> Error {
    Error::attestation(AttestationFailure::ChannelBinding, message)
}

/// Whether `keyset` lists the SPKI (lowercase hex) for `host`.
pub(super) fn lists(keyset: &AttestedKeyset, host: &str, spki_hex: &str) -> bool {
    keyset.tls_keys_for_host(host).any(|k| k.spki_sha256 == spki_hex)
}
