//! The certificate verifier: WebPKI (unless pin-only), then the pin against the current keyset;
//! and the rustls configurations built around it.

use std::fmt;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme};

use crate::attest::channel::attested_for;
use crate::error::{Error, Result};
use crate::hex;
use crate::tls::pin::{channel_error, lists, spki_sha256};
use crate::tls::shared::Shared;

/// What the verifier does when no keyset lists the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// The connector's: accept while bootstrapping or attesting (the gate limits the
    /// connection to report requests).
    Gated,
    /// reqwest's: refuse.
    Strict,
}

pub(super) fn client_config(shared: &Arc<Shared>, mode: Mode, alpn: &[&[u8]]) -> Result<ClientConfig> {
    let verifier = Arc::new(PinningVerifier { shared: shared.clone(), mode });
    let mut config = ClientConfig::builder_with_provider(shared.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("cannot configure TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // A resumed session skips the certificate verifier, and with it the pin: every connection
    // runs a full handshake, checked against the keyset current then.
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// `host` as a rustls server name sees it: a DNS name, or an IP address in text.
fn host_of(server_name: &ServerName<'_>) -> String {
    match server_name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// The certificate verifier: WebPKI (unless pin-only), then the pin.
struct PinningVerifier {
    shared: Arc<Shared>,
    mode: Mode,
}

impl fmt::Debug for PinningVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinningVerifier").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl PinningVerifier {
    fn refuse(&self, message: String) -> rustls::Error {
        self.shared.keys.request_refresh();
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(channel_error(message)))))
    }
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let shared = &self.shared;
        let host = host_of(server_name);
        if !shared.is_pinned(&host) {
            // An ordinary WebPKI host (the PCCS); `build` made its verifier.
            let Some(webpki) = &shared.unpinned_webpki else {
                return Err(rustls::Error::General(format!("no WebPKI verifier for the unpinned host {host}")));
            };
            webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        // The gateway: its root store only (never the unpinned hosts' extra roots), then the pin.
        if let (Some(webpki), false) = (&shared.webpki, shared.pin_only) {
            webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        let spki =
            spki_sha256(end_entity).map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let seen = hex::encode(spki);
        match shared.keys.current_valid() {
            Some(keyset) if lists(&keyset, &host, &seen) => Ok(ServerCertVerified::assertion()),
            // A report fetch may meet a restarted gateway's new key; the gate lets the
            // connection carry only report requests until a keyset lists the key.
            Some(_) if self.mode == Mode::Gated && shared.keys.is_attesting() => Ok(ServerCertVerified::assertion()),
            Some(keyset) => Err(self.refuse(format!(
                "refused the TLS handshake with {host}: its certificate's SPKI sha256 {seen} is not in the attested \
                 keyset {digest} for {host} (attested: {attested})",
                digest = keyset.digest(),
                attested = attested_for(&keyset, &host),
            ))),
            None if self.mode == Mode::Gated => Ok(ServerCertVerified::assertion()),
            None => Err(self.refuse(format!(
                "refused the TLS handshake with {host} (SPKI sha256 {seen}): no attested keyset is current to pin it \
                 to; establish the key provider first"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.shared.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.shared.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.shared.provider.signature_verification_algorithms.supported_schemes()
    }
}
