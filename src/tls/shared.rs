//! What the verifier, the connector and the configuration share: the handle the pin reads, the
//! WebPKI verifiers, the unpinned hosts, the crypto provider and the egress route; the ALPN ids.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;

use crate::attest::KeyHandle;
use crate::attest::keyset::normalize_host;
use crate::egress::Egress;

/// The settings of one `AttestedTls`, behind an `Arc` in it, its connectors and verifiers.
pub(super) struct Shared {
    pub(super) keys: KeyHandle,
    /// WebPKI for pinned hosts (the root store only).
    pub(super) webpki: Option<Arc<WebPkiServerVerifier>>,
    /// WebPKI for unpinned hosts (the root store and the extra roots); set when a host is
    /// unpinned.
    pub(super) unpinned_webpki: Option<Arc<WebPkiServerVerifier>>,
    pub(super) pin_only: bool,
    pub(super) unpinned: Vec<String>,
    pub(super) provider: Arc<CryptoProvider>,
    pub(super) egress: Egress,
}

impl Shared {
    pub(super) fn is_pinned(&self, host: &str) -> bool {
        let host = normalize_host(host);
        !self.unpinned.iter().any(|u| u.eq_ignore_ascii_case(host))
    }
}

/// ALPN protocol IDs.
pub(super) const H2: &[u8] = b"h2";
pub(super) const HTTP1: &[u8] = b"http/1.1";
