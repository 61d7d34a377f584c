//! HTTPS for the local gateway.

use std::fmt;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use const_hex as hex;
use tower_aci::error::{Error, Result};

/// The certificate the local gateway serves and the `tls_public_keys` entries its keyset
/// publishes for it. By default the keyset lists the leaf certificate's SPKI for every host (an
/// entry without `domain`).
///
/// Generate the certificate however you like (the crate's tests and examples use `rcgen`):
///
/// ```ignore
/// let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
/// let tls = GatewayTls::new(vec![cert.cert.der().clone()], cert.key_pair.serialize_der().try_into()?)?;
/// let gateway = TestGateway::start(GatewayConfig::new().tls(tls)).await?; // https://127.0.0.1:…
/// ```
#[derive(Clone)]
#[must_use]
pub struct GatewayTls {
    pub(crate) config: Arc<ServerConfig>,
    spki: [u8; 32],
    advertised: [u8; 32],
    domains: Vec<String>,
}

impl fmt::Debug for GatewayTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayTls")
            .field("spki_sha256", &hex::encode(self.spki))
            .field("advertised", &hex::encode(self.advertised))
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

impl GatewayTls {
    /// Serve this certificate chain (leaf first) with this private key (rustls with `ring`,
    /// TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`: HTTP/2 to a client that offers it, HTTP/1.1
    /// otherwise). Fails with `Config` when rustls refuses the pair.
    pub fn new(cert_chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<GatewayTls> {
        let leaf = cert_chain.first().ok_or_else(|| Error::config("the certificate chain is empty"))?;
        let spki = tower_aci::tls::spki_sha256(leaf)?;
        let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(cert_chain, key))
            .map_err(|e| Error::config(format!("the gateway's certificate is not usable: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(GatewayTls { config: Arc::new(config), spki, advertised: spki, domains: Vec::new() })
    }

    /// Publish the SPKI scoped to these hostnames (one `tls_public_keys` entry each, with
    /// `domain`) instead of one entry for every host. As the reference gateway does, a report
    /// requested through any other `Host` is then answered `404 not_found`.
    pub fn domains<I, D>(mut self, domains: I) -> Self
    where
        I: IntoIterator<Item = D>,
        D: Into<String>,
    {
        self.domains = domains.into_iter().map(Into::into).collect();
        self
    }

    /// Publish this SPKI SHA-256 in place of the served certificate's: a keyset that does not
    /// attest the key the connection presents (TLS terminating outside the workload), for tests.
    pub fn advertise_spki(mut self, spki_sha256: [u8; 32]) -> Self {
        self.advertised = spki_sha256;
        self
    }

    /// SHA-256 of the served leaf certificate's SubjectPublicKeyInfo.
    pub fn spki_sha256(&self) -> [u8; 32] {
        self.spki
    }

    /// The `tls_public_keys` entries the keyset publishes.
    pub(crate) fn entries(&self) -> Vec<Value> {
        let spki = hex::encode(self.advertised);
        if self.domains.is_empty() {
            vec![json!({ "spki_sha256": spki })]
        } else {
            self.domains.iter().map(|d| json!({ "spki_sha256": spki, "domain": d })).collect()
        }
    }
}
