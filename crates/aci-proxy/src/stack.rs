//! The proxy's stack is a [`Client`]: [`ProxyConfig::client_builder`] turns the configuration
//! into a [`ClientBuilder`], so every default (the PCCS, the receipt mode) and every refusal
//! (plain `http://` beyond loopback, an API key that is no header value, a PCCS on the gateway's
//! host, redirects) is the client's, once.

use crate::config::ProxyConfig;
use tower_aci::client::{Client, ClientBuilder};
use tower_aci::error::{Error, Result};

/// The ECDH and AES-256-GCM backends this build decrypts with, in one line: `aci-proxy
/// --version`, the start-up log and `GET /aci/status` (`crypto_backends`) say it. The default
/// feature `fast-crypto` builds libsecp256k1 (secp256k1 ECDH) and AWS-LC (X25519 ECDH and
/// AES-256-GCM); `--no-default-features` builds pure Rust (RustCrypto). Same bytes on the wire
/// either way.
///
/// ```
/// let line = aci_proxy::crypto_backends();
/// assert!(line.contains("libsecp256k1") || line.contains("pure Rust"));
/// ```
pub fn crypto_backends() -> &'static str {
    if cfg!(feature = "fast-crypto") {
        "fast-crypto: libsecp256k1 (secp256k1 ECDH), aws-lc (X25519 ECDH, AES-256-GCM)"
    } else {
        "pure Rust: RustCrypto k256, x25519-dalek, aes-gcm (built without fast-crypto)"
    }
}

impl ProxyConfig {
    /// The [`ClientBuilder`] these settings describe, for [`Proxy::start`](crate::Proxy::start)
    /// (which builds it and serves through [`Client::service`]) or for a [`Client`] of your own
    /// that agrees with the proxy on everything: the gateway, the policy
    /// ([`policy`](Self::policy)), the API key (read now from [`api_key_env`](Self::api_key_env);
    /// when unset, none: the proxy then forwards a client's own token), the receipt mode and
    /// receipt policy, the PCCS (default [`DEFAULT_PCCS`](tower_aci::client::DEFAULT_PCCS) for an
    /// `https://` gateway; none for the local test gateway unless given), its extra CA
    /// ([`pccs_ca`](Self::pccs_ca)), the HTTPS proxy and `tls_pin_only`.
    ///
    /// Fails with `Config` when no gateway is named, the pins are not enough, or the PCCS CA
    /// file cannot be read; the rest is checked by [`ClientBuilder::build`].
    ///
    /// ```no_run
    /// # async fn run(config: aci_proxy::ProxyConfig) -> tower_aci::Result<()> {
    /// let client = config.client_builder()?.build().await?; // what aci-proxy --config … runs
    /// assert_eq!(client.receipt_mode(), config.receipts);
    /// # Ok(()) }
    /// ```
    pub fn client_builder(&self) -> Result<ClientBuilder> {
        let gateway = self.gateway.clone().ok_or_else(|| {
            Error::config("no gateway to proxy to.\n  fix: name it: --gateway URL (or ACI_PROXY_GATEWAY)")
        })?;
        let mut builder = Client::builder(gateway)
            .policy(self.policy()?)
            .receipts(self.receipts)
            .receipt_policy(self.receipt_policy());
        if let Ok(key) = std::env::var(&self.api_key_env) {
            if !key.is_empty() {
                builder = builder.api_key(key);
            }
        }
        builder = match &self.pccs {
            Some(url) => builder.pccs(url.clone()),
            None if self.local_test_gateway => builder.no_pccs(),
            None => builder,
        };
        for cert in self.pccs_extra_roots()? {
            builder = builder.pccs_extra_root(cert);
        }
        if let Some(proxy) = &self.https_proxy {
            builder = builder.with_https_proxy(proxy.clone());
        }
        if self.tls_pin_only {
            builder = builder.tls_pin_only();
        }
        Ok(builder)
    }
}
