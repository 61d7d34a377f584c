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
