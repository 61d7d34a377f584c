//! # aci-test-gateway
//!
//! A local attested ACI gateway for examples and tests of [`tower_aci`] and `aci-proxy`: a test
//! double, as `tower-test` is for tower. Use it as a **dev-dependency**; no production code path
//! of tower-aci or aci-proxy imports it (the proxy's `--local-test-gateway` demo uses it behind
//! the proxy's own feature `local-test-gateway`, off by default).
//!
//! [`TestGateway`] serves the ACI and E2EE v2 wire contract over real HTTP on loopback, the way
//! the reference gateway's *direct* path does (protocol.md §1, §3–§6): an `aci/1` attestation
//! report with a **stub quote** (no TEE: the evidence says `"stub": true` and must never pass a
//! hardware check), E2EE v2 request validation with the reference's error types and order,
//! response sealing and SSE re-framing, and Ed25519-signed receipts. Behind it sits a
//! deterministic built-in upstream (an echo model), which a test may replace with its own
//! handler, and a set of injectable [`Fault`]s.
//!
//! Routes:
//!
//! | Route | |
//! | --- | --- |
//! | `GET /v1/aci/attestation?nonce=<64 lowercase hex>` | the report (`nonce` absent: `null` statement) |
//! | `POST /v1/chat/completions`, `/v1/completions` | buffered, or SSE with `"stream": true` |
//! | `POST /v1/embeddings` | buffered |
//! | `POST /v1/messages`, `/v1/responses` | plaintext only (`400 e2ee_unsupported_endpoint` under E2EE) |
//! | `GET /v1/aci/receipts/{id}` | by receipt id, then by response id; bearer ownership rules |
//! | `GET /v1/models` | one model, `demo-model` |
//!
//! Every response carries `X-ACI-Version: aci/1` and `X-ACI-Keyset-Digest`. Request bodies are
//! limited to 32 MiB.
//!
//! [`GatewayConfig::tls`] serves HTTPS with a certificate you give ([`GatewayTls`]) and
//! publishes its SPKI in the keyset's `tls_public_keys` (optionally scoped to hostnames), so
//! clients pinning with `tower_aci::tls` are tested over real TLS on loopback;
//! [`TestGateway::rotate_tls`] moves to another certificate and keyset.
//!
//! [`TestGateway::client_builder`] is a [`tower_aci::ClientBuilder`] for it, with the
//! **dangerous** policy its stub quote needs:
//!
//! ```
//! use aci_test_gateway::{GatewayConfig, TestGateway};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! // Fixed seeds and a fixed `not_after` give a fixed keyset digest.
//! let fixed = TestGateway::start(GatewayConfig::new().fixed_seeds().not_after(2_000_000_000)).await?;
//! assert!(fixed.keyset_digest().starts_with("sha256:"));
//!
//! let gateway = TestGateway::start(GatewayConfig::new()).await?; // random keys, 30 days
//! assert!(gateway.base_url().starts_with("http://127.0.0.1:"));
//! let client = gateway.client_builder().build().await?; // attests the stub quote
//! let answer = client.post("/v1/chat/completions", r#"{"model":"demo-model","messages":[{"role":"user","content":"hi"}]}"#).await?;
//! assert!(String::from_utf8_lossy(&answer.body).contains("You said: hi"));
//! // Dropping the gateway shuts the server down.
//! drop(gateway);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! It also serves the gateway's halves of E2EE v2 as functions ([`open_request`],
//! [`ResponseSealer`]), for tests that check a client against the server's rules.

mod e2ee;
mod fault;
mod keyset;
mod receipts;
mod server;
mod tls;
mod upstream;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use tower_aci::attest::{Clock, Generation, Policy, SystemClock};
use tower_aci::{Client, ClientBuilder};

pub use fault::Fault;
pub use receipts::sign_receipt;
pub use tls::GatewayTls;
/// The gateway's halves of E2EE v2, as the reference gateway runs them (protocol.md §3.4–§3.6,
/// §4): [`open_request`] decrypts a request's protected fields, [`ResponseSealer`] seals an
/// answer's. They live in tower-aci beside the client's halves and walk the same fields with the
/// same code, so a test against them alone proves consistency, not correctness (the spec's
/// vectors and the reference gateway's exchanges do that).
pub use tower_aci::__private::{OpenedRequest, ResponseSealer, open_request};
use upstream::UpstreamFn;
pub use upstream::{UpstreamRequest, UpstreamResponse};

/// Thirty days, the production `not_after` horizon.
const DEFAULT_VALIDITY_SECS: u64 = 30 * 24 * 3600;

/// How to start a [`TestGateway`]. Builder methods take and return the config by value.
///
/// ```
/// use std::sync::Arc;
/// use tower_aci::attest::ManualClock;
/// use aci_test_gateway::{GatewayConfig, UpstreamResponse};
///
/// let config = GatewayConfig::new()
///     .fixed_seeds()
///     .not_after(2_000_000_000)
///     .clock(Arc::new(ManualClock::new(1_750_000_000)))
///     .upstream(|req| UpstreamResponse::echo(&req));
/// # let _ = config;
/// ```
#[derive(Clone)]
#[must_use]
pub struct GatewayConfig {
    fixed_seeds: bool,
    keys: Option<GatewayKeys>,
    not_after: Option<u64>,
    clock: Arc<dyn Clock>,
    upstream: Option<Arc<UpstreamFn>>,
    bind: SocketAddr,
    generation: Generation,
    app_compose: Option<String>,
    tls: Option<GatewayTls>,
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("fixed_seeds", &self.fixed_seeds)
            .field("keys", &self.keys)
            .field("not_after", &self.not_after)
            .field("clock", &self.clock)
            .field("upstream", &self.upstream.as_ref().map(|_| "custom"))
            .field("bind", &self.bind)
            .field("generation", &self.generation)
            .field("app_compose", &self.app_compose)
            .finish_non_exhaustive()
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig::new()
    }
}

impl GatewayConfig {
    /// Random keys, `not_after` = start time + 30 days, the system clock, the built-in upstream,
    /// bound to `127.0.0.1:0`.
    pub fn new() -> Self {
        GatewayConfig {
            fixed_seeds: false,
            keys: None,
            not_after: None,
            clock: Arc::new(SystemClock),
            upstream: None,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            generation: Generation::Current,
            app_compose: None,
            tls: None,
        }
    }

    /// Which generation of the `aci/1` report to serve (default [`Generation::Current`]).
    ///
    /// [`Generation::Legacy`] serves the older shape production served in June 2026: a
    /// top-level `workload_id`, a keyset with `workload_identity` and `keyset_epoch` (its
    /// `not_after` is the configured one), a secp256k1 identity key's `keyset_endorsement`,
    /// `freshness` (one hour from each fetch) and `report_data` binding `workload_id`. Its keyset
    /// lists the secp256k1 E2EE key (no X25519 key) next to the two legacy entries production
    /// listed, and a secp256k1 receipt key; the receipts this gateway signs (Ed25519) therefore
    /// do not verify against it, as no receipt of that generation is verified by this crate.
    /// Under fixed seeds the identity key is 32×`0x77`. Inference and E2EE are unchanged.
    ///
    /// ```
    /// use tower_aci::attest::Generation;
    /// use aci_test_gateway::GatewayConfig;
    ///
    /// let config = GatewayConfig::new().generation(Generation::Legacy);
    /// # let _ = config;
    /// ```
    pub fn generation(mut self, generation: Generation) -> Self {
        self.generation = generation;
        self
    }

    /// Deterministic keys from the reference test tree's seeds (protocol.md §8.3): receipt
    /// Ed25519 seed 32×`0x66`, secp256k1 E2EE seed 32×`0x44`, X25519 seed 32×`0x55`. With a
    /// fixed [`not_after`](Self::not_after) the keyset digest is fixed too.
    pub fn fixed_seeds(mut self) -> Self {
        self.fixed_seeds = true;
        self
    }

    /// Serve these keys (taking precedence over [`fixed_seeds`](Self::fixed_seeds)): the keys
    /// of another gateway ([`TestGateway::keys`]) make a replica of it, or the same gateway
    /// after a restart ([`TestGateway::restart`]). With its own `not_after` the replica has its
    /// own keyset digest, as in production.
    pub fn keys(mut self, keys: GatewayKeys) -> Self {
        self.keys = Some(keys);
        self
    }

    /// The keyset's `not_after` (Unix seconds).
    pub fn not_after(mut self, not_after: u64) -> Self {
        self.not_after = Some(not_after);
        self
    }

    /// The clock for the ±300 s timestamp window, replay expiry, `served_at`, receipt retention
    /// and the default `not_after`.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Replace the built-in upstream. The handler sees the decrypted, forwarded request and
    /// returns the upstream's answer, which the gateway then seals and signs as usual;
    /// [`UpstreamResponse::echo`] is the built-in answer, for delegating.
    pub fn upstream(mut self, handler: impl Fn(UpstreamRequest) -> UpstreamResponse + Send + Sync + 'static) -> Self {
        self.upstream = Some(Arc::new(handler));
        self
    }

    /// Publish this text as the report's `evidence.app_compose` (default `null`). With the stub
    /// quote a policy then measures its compose hash (SHA-256 of the text): gateways sharing
    /// [`keys`](Self::keys) but publishing different compose files are replicas of one
    /// application running different builds, one of which a pinned policy refuses.
    pub fn app_compose(mut self, compose: impl Into<String>) -> Self {
        self.app_compose = Some(compose.into());
        self
    }

    /// The address to listen on (default `127.0.0.1:0`, an ephemeral port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Serve HTTPS with this certificate (feature `rustls`), and publish its SPKI in the
    /// keyset's `tls_public_keys`, so clients can pin it ([`tower_aci::tls`]).
    pub fn tls(mut self, tls: GatewayTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// The keys a [`TestGateway`] serves: the receipt-signing key and both E2EE keys. Share them
/// between gateways to run replicas of one deployment, or carry them across a
/// [`restart`](TestGateway::restart). Cloning shares the secrets; `Debug` shows only the public
/// keys.
///
/// ```
/// use aci_test_gateway::{GatewayConfig, GatewayKeys, TestGateway};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let keys = GatewayKeys::generate();
/// let a = TestGateway::start(GatewayConfig::new().keys(keys.clone()).not_after(2_000_000_000)).await?;
/// let b = TestGateway::start(GatewayConfig::new().keys(keys).not_after(2_000_000_001)).await?;
/// // Same keys, another not_after: another keyset digest.
/// assert_ne!(a.keyset_digest(), b.keyset_digest());
/// assert_eq!(a.keys().receipt_public_key(), b.keys().receipt_public_key());
/// # Ok::<(), std::io::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct GatewayKeys {
    receipt_key_id: String,
    receipt_key: ed25519_dalek::SigningKey,
    e2ee: Vec<Arc<keyset::ServiceKey>>,
}

impl GatewayKeys {
    /// New random keys (a new application, as far as a client can tell).
    pub fn generate() -> Self {
        Self::from_seeds(false)
    }

    /// The fixed keys of [`GatewayConfig::fixed_seeds`].
    pub fn fixed() -> Self {
        Self::from_seeds(true)
    }

    fn from_seeds(fixed: bool) -> Self {
        GatewayKeys {
            receipt_key_id: keyset::RECEIPT_KEY_ID.to_owned(),
            receipt_key: keyset::receipt_key(fixed),
            e2ee: keyset::e2ee_keys(fixed),
        }
    }

    /// The same receipt key with new random E2EE keys (an E2EE key rotation).
    pub fn with_new_e2ee_keys(&self) -> Self {
        GatewayKeys { e2ee: keyset::e2ee_keys(false), ..self.clone() }
    }

    /// The receipt-signing public key (Ed25519, 32 bytes).
    pub fn receipt_public_key(&self) -> [u8; 32] {
        self.receipt_key.verifying_key().to_bytes()
    }

    /// The E2EE public keys as the keyset publishes them (`public_key` text), in keyset order.
    pub fn e2ee_public_keys(&self) -> Vec<String> {
        self.e2ee.iter().map(|k| k.public.to_hex()).collect()
    }

    fn seal(&self, not_after: u64, tls: Vec<serde_json::Value>, legacy: Option<keyset::LegacyKeys>) -> keyset::Keyset {
        let (id, key) = (self.receipt_key_id.clone(), self.receipt_key.clone());
        keyset::Keyset::seal_as(id, key, self.e2ee.clone(), not_after, tls, legacy)
    }
}

impl fmt::Debug for GatewayKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayKeys")
            .field("receipt_key_id", &self.receipt_key_id)
            .field("receipt_public_key", &const_hex::encode(self.receipt_public_key()))
            .field("e2ee", &self.e2ee)
            .finish()
    }
}

/// A running local ACI gateway. Dropping it shuts the server down.
///
/// ```
/// use aci_test_gateway::{Fault, GatewayConfig, TestGateway};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let gateway = TestGateway::start(GatewayConfig::new()).await?;
/// gateway.set_fault(Some(Fault::TransportErrorAfter { events: 2 }));
/// let before = gateway.keyset_digest();
/// gateway.rotate_e2ee_keys();
/// assert_ne!(gateway.keyset_digest(), before);
/// assert_eq!(gateway.requests_seen(), 0);
/// # Ok::<(), std::io::Error>(())
/// # }).unwrap();
/// ```
pub struct TestGateway {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for TestGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestGateway")
            .field("addr", &self.addr)
            .field("keyset_digest", &self.keyset_digest())
            .finish_non_exhaustive()
    }
}

impl TestGateway {
    /// Bind and start serving on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// The listener could not be bound.
    pub async fn start(config: GatewayConfig) -> std::io::Result<TestGateway> {
        let listener = tokio::net::TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let not_after = config.not_after.unwrap_or_else(|| config.clock.now().saturating_add(DEFAULT_VALIDITY_SECS));
        let tls_entries = config.tls.as_ref().map(GatewayTls::entries).unwrap_or_default();
        let keys = config.keys.clone().unwrap_or_else(|| GatewayKeys::from_seeds(config.fixed_seeds));
        let legacy = (config.generation == Generation::Legacy).then(|| keyset::LegacyKeys::new(config.fixed_seeds));
        let keyset = keys.seal(not_after, tls_entries, legacy);
        let (shutdown, watch) = tokio::sync::watch::channel(false);
        let shared = Arc::new(server::Shared::new(keyset, config.clock, config.upstream, watch, config.app_compose));
        shared.set_tls(config.tls.as_ref());
        let task = tokio::spawn(server::serve(listener, shared.clone()));
        Ok(TestGateway { addr, shared, shutdown, task })
    }

    /// Stop this gateway and start a new process on the same address with `config` (its
    /// `bind` is replaced by this gateway's address): a restart. Everything held in memory is
    /// gone — stored receipts, the replay cache, the fault, the logs and counters — as with the
    /// reference gateway. Pass [`keys`](Self::keys) in `config` to keep the keys (the keyset
    /// digest still changes with `not_after`); without them the new process has new keys.
    /// Connections to the old process are closed before the new one listens.
    ///
    /// # Errors
    ///
    /// The address could not be bound again.
    pub async fn restart(&mut self, config: GatewayConfig) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.abort();
        let _ = (&mut self.task).await;
        // Let every connection task see the shutdown and close its socket.
        for _ in 0..1_000 {
            if self.shared.live_connections() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let addr = self.addr;
        *self = TestGateway::start(config.bind(addr)).await?;
        Ok(())
    }

    /// The keys this gateway serves, for a replica or a restart.
    pub fn keys(&self) -> GatewayKeys {
        let k = self.shared.keyset();
        GatewayKeys {
            receipt_key_id: k.receipt_key_id.clone(),
            receipt_key: k.receipt_key.clone(),
            e2ee: k.e2ee.clone(),
        }
    }

    /// The current keyset's `not_after`.
    pub fn not_after(&self) -> u64 {
        self.shared.keyset().not_after
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>` (`https://` when serving TLS), without a trailing slash.
    pub fn base_url(&self) -> String {
        let scheme = if self.shared.serves_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// A [`tower_aci::ClientBuilder`] for this gateway: its URL and a **dangerous** policy that
    /// accepts its stub quote and any workload (TLS, if the gateway serves it, pinned to its
    /// keyset alone; no PCCS). For tests and examples only: never give a client this policy for
    /// a real gateway. Further settings (receipt mode, API key, a clock) go on the builder.
    pub fn client_builder(&self) -> ClientBuilder {
        let builder = Client::builder(self.base_url()).tls_pin_only().no_pccs();
        match Policy::builder().dangerous().accept_stub_quote().any_workload().build() {
            Ok(policy) => builder.policy(policy),
            // Cannot happen (the dangerous policy has nothing to check); without a policy,
            // `build` fails with the pins to add.
            Err(_) => builder,
        }
    }

    /// The current keyset digest (`sha256:<hex>`), as `X-ACI-Keyset-Digest` names it.
    pub fn keyset_digest(&self) -> String {
        self.shared.keyset().digest.clone()
    }

    /// The plaintext bodies the upstream received, oldest first (the last 1024).
    pub fn upstream_log(&self) -> Vec<Value> {
        self.shared.upstream_log()
    }

    /// The raw request bodies of the inference requests as they arrived on the wire, oldest
    /// first (the last 1024): for asserting that the wire carried only ciphertext.
    pub fn wire_log(&self) -> Vec<Bytes> {
        self.shared.wire_log()
    }

    /// Set or clear the injected fault.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.shared.set_fault(fault);
    }

    /// Replace both E2EE keys with new random ones: a new keyset and digest. Requests still
    /// encrypted to an old key fail with `e2ee_model_key_mismatch`.
    pub fn rotate_e2ee_keys(&self) {
        self.shared.update_keyset(|k| k.rotated());
    }

    /// Same keys, a new `not_after`: a new digest, as after a restart or on another replica.
    pub fn renew_keyset(&self, not_after: u64) {
        self.shared.update_keyset(|k| k.renewed(not_after));
    }

    /// How many inference requests (`POST` to an inference route) reached the gateway.
    pub fn requests_seen(&self) -> usize {
        self.shared.requests_seen()
    }

    /// How many receipts were requested (`GET /v1/aci/receipts/{id}`, found or not).
    pub fn receipt_fetches(&self) -> usize {
        self.shared.receipt_fetches()
    }

    /// How many client connections are open now (a client that goes away mid-stream closes
    /// its connection, and the stream it was reading stops).
    pub fn live_connections(&self) -> usize {
        self.shared.live_connections()
    }

    /// How many client connections were accepted since the gateway started (TCP accepts, one
    /// per TLS handshake when serving HTTPS).
    pub fn connections_accepted(&self) -> usize {
        self.shared.connections_accepted()
    }

    /// How many of the [accepted](Self::connections_accepted) connections were served over
    /// HTTP/2 (the client offered `h2` in ALPN; HTTPS only).
    pub fn h2_connections(&self) -> usize {
        self.shared.h2_connections()
    }

    /// How many attestation reports were requested.
    pub fn attestations_served(&self) -> usize {
        self.shared.attestations_served()
    }

    /// How many HTTP requests of any kind reached the gateway's router.
    pub fn requests_total(&self) -> usize {
        self.shared.requests_total()
    }

    /// Serve another certificate to new connections (existing ones keep theirs) and re-seal the
    /// keyset with its `tls_public_keys` entries in place of the old ones: same keys, a new
    /// digest. Clients pinned to the old keyset refuse the new certificate until they re-attest.
    pub fn rotate_tls(&self, tls: GatewayTls) {
        self.shared.update_keyset(|k| k.with_tls(tls.entries()));
        self.shared.set_tls(Some(&tls));
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}

/// The README's Rust snippet, compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
