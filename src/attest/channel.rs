//! The channel check (ACI §1.1, §4; protocol.md §6.4 item 7): the TLS key of the connection a
//! report was served over must be listed in the keyset that report attests, for the hostname
//! the client connected to.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::task::AtomicWaker;

use crate::attest::keyset::{AttestedKeyset, normalize_host};
use crate::error::{AttestationFailure, Error, Result};
use crate::hex;

/// The TLS channel a response travelled over: the hostname the client connected to and the
/// SHA-256 of the SubjectPublicKeyInfo of the certificate the server presented.
///
/// The attested TLS connector (feature `rustls`) puts one into the extensions of every response
/// it carries (hyper-util's `Connected::extra`). The [`KeyProvider`](crate::attest::KeyProvider)
/// reads it from the report's response and refuses a verified keyset that does not list this
/// SPKI for this host ([`ChannelBinding`](AttestationFailure::ChannelBinding)). A report fetched
/// over a transport that adds none (plain HTTP on loopback, another connector) gets no channel
/// check: its binding is then the E2EE key alone.
#[derive(Clone)]
pub struct ChannelInfo {
    host: Arc<str>,
    spki_sha256: [u8; 32],
    state: Arc<ChannelState>,
}

/// Shared between a connection and every `ChannelInfo` of its responses.
#[derive(Default)]
pub(crate) struct ChannelState {
    revoked: AtomicBool,
    /// Woken on revocation, so an idle connection closes itself.
    pub(crate) reader: AtomicWaker,
}

impl ChannelState {
    pub(crate) fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

impl ChannelInfo {
    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    pub(crate) fn new(host: &str, spki_sha256: [u8; 32], state: Arc<ChannelState>) -> Self {
        ChannelInfo { host: normalize_host(host).to_ascii_lowercase().into(), spki_sha256, state }
    }

    /// The hostname (or IP address) the client connected to, lowercase, without a trailing dot.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// SHA-256 of the server certificate's SubjectPublicKeyInfo (DER).
    pub fn spki_sha256(&self) -> &[u8; 32] {
        &self.spki_sha256
    }

    /// [`spki_sha256`](Self::spki_sha256) in lowercase hex, as `tls_public_keys[].spki_sha256`
    /// spells it.
    pub fn spki_sha256_hex(&self) -> String {
        hex::encode(self.spki_sha256)
    }

    /// Stop using this connection: nothing more is written on it, and it closes (and leaves the
    /// connection pool) the next time it is polled.
    pub fn revoke(&self) {
        self.state.revoked.store(true, Ordering::Release);
        self.state.reader.wake();
    }

    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    pub(crate) fn state(&self) -> &ChannelState {
        &self.state
    }

    /// Whether [`revoke`](Self::revoke) was called.
    pub fn is_revoked(&self) -> bool {
        self.state.is_revoked()
    }
}

impl fmt::Debug for ChannelInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelInfo")
            .field("host", &self.host)
            .field("spki_sha256", &self.spki_sha256_hex())
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

/// The SPKIs `keyset` lists for `host`, for messages.
pub(crate) fn attested_for(keyset: &AttestedKeyset, host: &str) -> String {
    let listed: Vec<&str> = keyset.tls_keys_for_host(host).map(|k| k.spki_sha256.as_str()).collect();
    if listed.is_empty() {
        if keyset.tls_keys().is_empty() {
            "none (the keyset publishes no TLS key)".to_owned()
        } else {
            format!("none for {host}")
        }
    } else {
        listed.join(", ")
    }
}

/// The provider's check of the connection a report came over (when the transport says which).
/// A keyset that does not list the connection's SPKI for its host fails with `ChannelBinding`,
/// and the connection is revoked so the next fetch opens a fresh one.
pub(crate) fn check_report_channel(keyset: AttestedKeyset, channel: Option<&ChannelInfo>) -> Result<AttestedKeyset> {
    let Some(channel) = channel else { return Ok(keyset) };
    if keyset.lists_tls_key(channel.host(), channel.spki_sha256()) {
        return Ok(keyset);
    }
    channel.revoke();
    Err(Error::attestation(
        AttestationFailure::ChannelBinding,
        format!(
            "the report was served over a TLS connection to {host} whose certificate has SPKI sha256 {seen}, which \
             the verified keyset {digest} does not list for {host} (attested: {attested}); either TLS terminates \
             outside the attested workload, or the report was requested through a hostname the keyset does not \
             name",
            host = channel.host(),
            seen = channel.spki_sha256_hex(),
            digest = keyset.digest(),
            attested = attested_for(&keyset, channel.host()),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::attest::report::parse_tls_keys;
    use crate::protocol::keys::E2eeKey;
    use crate::protocol::suite::{SecretKey, Suite};

    /// `tls_public_keys` of the real production report (`tests/data/real_tdx_report_2026-06.json`):
    /// three domain-scoped entries.
    const TEE_REDPILL: &str = "11af02e1c69bb2227e9b65903010abb60fbb626930cd11b0866281bb291a352c";
    const PHALA: &str = "698c87b1ed32d3d67f23d14295fc443e91b82ad4e40482041ac1a9158c8212e2";
    const API_REDPILL: &str = "c2ebede7c2c632381123e3193b01f5f3fa45cc6c6327b2d0536749348ceeb408";

    /// A keyset carrying the real report's TLS entries, parsed by the report verifier's parser.
    fn real_keyset() -> AttestedKeyset {
        let report: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/real_tdx_report_2026-06.json")).unwrap();
        let keyset = report["attestation"]["workload_keyset"].as_object().unwrap();
        let tls_keys = parse_tls_keys(keyset).unwrap();
        assert_eq!(tls_keys.len(), 3);
        let key = SecretKey::from_bytes(Suite::X25519, &[0x55; 32]).unwrap().public_key();
        AttestedKeyset {
            digest: report["workload_keyset_digest"].as_str().unwrap().to_owned(),
            subject: None,
            not_after: u64::MAX,
            e2ee_keys: vec![E2eeKey::parse("k", Suite::X25519.algo(), key.to_hex()).unwrap()],
            selected: 0,
            receipt_keys: vec![],
            tls_keys,
            verified_at: 0,
            hardware_verified: false,
            hardware: None,
        }
    }

    fn spki(hex_text: &str) -> [u8; 32] {
        hex::decode(hex_text).unwrap().try_into().unwrap()
    }

    fn channel(host: &str, spki_hex: &str) -> ChannelInfo {
        ChannelInfo::new(host, spki(spki_hex), Arc::default())
    }

    #[test]
    fn each_real_domain_accepts_its_own_spki_and_no_other() {
        let ks = real_keyset();
        let domains =
            [("tee.redpill.ai", TEE_REDPILL), ("inference.phala.com", PHALA), ("api.redpill.ai", API_REDPILL)];
        for (host, own) in domains {
            assert!(ks.lists_tls_key(host, &spki(own)), "{host}");
            for (other_host, other) in domains {
                if other_host != host {
                    assert!(!ks.lists_tls_key(host, &spki(other)), "{host} must refuse {other_host}'s SPKI");
                }
            }
            // Hostnames compare case-insensitively; a trailing dot is ignored.
            assert!(ks.lists_tls_key(&format!("{}.", host.to_uppercase()), &spki(own)));
        }
        // A host the keyset does not name has no entry (they are all domain-scoped).
        assert_eq!(ks.tls_keys_for_host("redpill.ai").count(), 0);
        assert!(!ks.lists_tls_key("evil.example", &spki(API_REDPILL)));
    }

    #[test]
    fn the_report_channel_must_be_listed_for_its_host() {
        let ks = real_keyset();
        // The right domain's SPKI: accepted, the connection left alone.
        let ok = channel("api.redpill.ai", API_REDPILL);
        assert!(check_report_channel(ks.clone(), Some(&ok)).is_ok());
        assert!(!ok.is_revoked());
        // Another domain's SPKI on api.redpill.ai: refused, naming what was seen and attested.
        let wrong = channel("API.redpill.ai.", PHALA);
        assert_eq!(wrong.host(), "api.redpill.ai");
        let e = check_report_channel(ks.clone(), Some(&wrong)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding));
        let m = e.to_string();
        assert!(m.contains(PHALA) && m.contains(API_REDPILL) && m.contains("api.redpill.ai"), "{m}");
        assert!(!m.contains(TEE_REDPILL), "only the entries for the host are listed: {m}");
        assert!(wrong.is_revoked(), "the connection that served it is revoked");
        // A hostname the keyset does not name.
        let e = check_report_channel(ks.clone(), Some(&channel("redpill.ai", API_REDPILL))).unwrap_err();
        assert!(e.to_string().contains("attested: none for redpill.ai"), "{e}");
        // No channel information (plain HTTP, another transport): no channel check.
        assert!(check_report_channel(ks, None).is_ok());
    }

    #[test]
    fn unscoped_entries_apply_to_every_host() {
        let mut ks = real_keyset();
        ks.tls_keys.push(crate::attest::TlsKey { spki_sha256: "ab".repeat(32), domain: None });
        assert!(ks.lists_tls_key("anything.example", &[0xab; 32]));
        assert!(ks.lists_tls_key("api.redpill.ai", &[0xab; 32]));
        assert_eq!(ks.tls_keys_for_host("api.redpill.ai").count(), 2);
    }
}
