//! HTTPS bound to the attested keyset (feature `rustls`).
//!
//! ACI §1.1 and §4: a client must pin the TLS key the attested keyset lists for the hostname it
//! connects to (`tls_public_keys[].spki_sha256`, optionally scoped by `domain`) and must request
//! the report through a hostname the keyset lists. WebPKI alone proves nothing here: TLS may
//! terminate outside the workload (a CDN, a load balancer). [`AttestedTls`] does both:
//!
//! - its certificate verifier runs the usual checks (WebPKI to your root store, or, with
//!   [`pin_only`](AttestedTlsBuilder::pin_only), none for self-signed gateways), then requires
//!   the leaf certificate's SPKI SHA-256 to be listed for the hostname in the **current**
//!   keyset of a [`KeyHandle`] (read live, so a rotation that lists a new key is followed after
//!   the provider refreshes). A mismatch fails the handshake before any request byte is written,
//!   with an [`AttestationFailure::ChannelBinding`] error naming the SPKI seen and the ones
//!   attested;
//! - its hyper-util connector ([`AttestedTls::connector`]) speaks HTTP/2 (ALPN `h2`) or
//!   HTTP/1.1 and adds a [`ChannelInfo`] to every response, from which the [`KeyProvider`](crate::attest::KeyProvider) learns the SPKI the
//!   report was served over: a verified keyset that does not list it for the host fails with
//!   `ChannelBinding`;
//! - [`AttestedTls::rustls_config`] is the same verifier for reqwest
//!   (`ClientBuilder::use_preconfigured_tls`).
//!
//! # Bootstrap and pooled connections
//!
//! On first contact there is no keyset: the connector accepts the certificate (after WebPKI, or
//! any certificate in pin-only mode), and the connection is *unattested*. Each request is
//! checked when it starts, against the keyset current then and the SPKI the connection's
//! handshake verified (the [`ChannelInfo`] its responses carry):
//!
//! - a connection whose key the current keyset lists for its host carries any request, over
//!   HTTP/2 or HTTP/1.1, and nothing of the request is read: over HTTP/1.1 a request starts with
//!   the first write after a response was read, over HTTP/2 with a `HEADERS` frame that opens a
//!   stream (frame headers are read, HPACK-coded request headers are not);
//! - a connection whose key the current keyset does not list carries **only report requests**
//!   (`GET …/v1/aci/attestation?nonce=…`): every other request is refused before its first byte
//!   is written. Telling a report request apart takes its request line, so such a connection
//!   speaks HTTP/1.1: the connector offers `h2` in ALPN only when the handshake can accept
//!   nothing but a key the current keyset lists (a keyset is current and the provider is not
//!   fetching a report). A connection accepted before its key was attested serves the one
//!   request it was opened for and is never reused by hyper-util's pool (it is *poisoned*), so
//!   the first request after the provider establishes opens a new connection, whose handshake
//!   the keyset pins, and which speaks HTTP/2 when the gateway offers it.
//!
//! Once a keyset is current, a handshake presenting an unlisted key is refused — except while
//! the key provider fetches a report, so that a gateway that restarted with a new certificate
//! can be re-attested; such a connection is again limited to report requests. A refused
//! handshake asks the provider's refresher to re-attest. When a newly published keyset no
//! longer lists a pooled connection's key, the connection closes itself: over HTTP/1.1 once it
//! is idle, over HTTP/2 at once (its open streams fail). The provider revokes a connection that
//! served a report whose keyset does not list it. Should a request still reach an HTTP/2
//! connection whose key is no longer listed (the keyset expired, or a request raced the close),
//! the stream is refused before its `HEADERS` frame is written and the connection closes; h2
//! gives the stream a bare "stream closed" error, and the reason is logged at `warn`.
//!
//! TLS session resumption is disabled in both configurations: a resumed session skips the
//! certificate verifier, so every connection runs a full handshake and the pin check.
//!
//! reqwest's pool cannot be gated: its configuration ([`AttestedTls::rustls_config`]) refuses
//! every handshake until a keyset is current, and checks the key at each handshake.
//!
//! # Egress through an HTTP proxy
//!
//! On a network that lets traffic out only through an HTTP proxy, the connector opens a
//! `CONNECT host:port` tunnel through it for each connection and runs the TLS handshake inside:
//! TLS is end to end, the SPKI pin and the per-request gate are unchanged, and the proxy sees
//! the `CONNECT` line only. Every connection the connector makes goes this way: the report
//! fetch, the PCCS fetch (an [unpinned host](AttestedTlsBuilder::unpinned_host)), the E2EE
//! requests and the receipt fetches.
//!
//! - By default the proxy is read from the environment when the connector is
//!   [built](AttestedTlsBuilder::build), as curl and reqwest read it: `HTTPS_PROXY`, else
//!   `https_proxy` (`HTTP_PROXY` is for plain `http://` and is never used; neither is
//!   `ALL_PROXY`). The hosts `NO_PROXY` (else `no_proxy`) lists are reached directly, with
//!   curl's rules as hyper-util implements them (`example.com` and `.example.com` cover the
//!   domain and its subdomains, IP addresses and CIDR blocks, `*` for all), and so are loopback
//!   hosts (`localhost`, `127.0.0.0/8`, `::1`), as Go does.
//! - [`https_proxy`](AttestedTlsBuilder::https_proxy) names the proxy for every host (loopback
//!   included); [`no_proxy`](AttestedTlsBuilder::no_proxy) connects directly. Either way the
//!   environment is not read.
//!
//! The proxy URL is `http://[user:password@]host[:port]` ([`HttpsProxy`]); its credentials go
//! in `Proxy-Authorization: Basic …`, are zeroized, and are never logged or printed. A proxy
//! that answers `CONNECT` with anything but `2xx` fails the connection with a
//! [`Transport`](crate::error::ErrorKind::Transport) error naming the proxy, the target and the status
//! (`403` and `407` say what to do). A proxy that terminates TLS itself (an inspection appliance
//! presenting its own certificate for the gateway's name) presents a key the attested keyset
//! does not list: it is refused with `ChannelBinding`, even when its CA is in the root store,
//! and no request reaches it. For such an appliance, the PCCS (which is not pinned) may accept
//! its CA through [`unpinned_extra_root`](AttestedTlsBuilder::unpinned_extra_root); the gateway
//! never does.
//!
//! reqwest connects on its own: the clients the crate builds over [`rustls_config`](AttestedTls::rustls_config)
//! (`Client::reqwest`, `middleware::ReqwestService::pinned`) are given the same proxy, but
//! reqwest 0.12 reports no TLS information for a tunnelled connection, so their answers cannot be
//! bound to the attested channel and fail closed with `ChannelBinding`. Behind a proxy, use
//! this connector.
//!
//! ```no_run
//! use tower_aci::attest::KeyHandle;
//! use tower_aci::tls::AttestedTls;
//!
//! # fn run(appliance_ca: rustls::pki_types::CertificateDer<'static>) -> tower_aci::Result<()> {
//! let keys = KeyHandle::new();
//! let tls = AttestedTls::builder(keys)
//!     .with_webpki_roots()
//!     .unpinned_host("pccs.phala.network")
//!     .https_proxy("http://proxy.corp.example:3128") // or leave it out: HTTPS_PROXY / NO_PROXY
//!     .unpinned_extra_root(appliance_ca) // only if the proxy re-signs TLS; the PCCS only
//!     .build()?;
//! let connector = tls.connector(); // CONNECT proxy.corp.example:3128, then TLS pinned as ever
//! # let _ = connector; Ok(()) }
//! ```
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower_aci::attest::{KeyHandle, KeyProvider, Policy};
//! use tower_aci::e2ee::RequestBody;
//! use tower_aci::tls::AttestedTls;
//!
//! # async fn run(roots: rustls::RootCertStore) -> Result<(), tower_aci::BoxError> {
//! # const COMPOSE_HASH: &str = "5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb";
//! # const MRTD: &str = "f06dfda6dce1cf904d4e2bab1dc370634cf95cefa2ceb2de2eee127c9382698090d7a4a13e14c536ec6c9c3c8fa87077";
//! # const RTMR0: &str = "ec216f1d1d591468ff4741b9b192f016b26d3f90303bfa9dbb97557273853183981f21a4bcb3ae908247538d371ad072";
//! # const RTMR1: &str = "07e6f51aa763abfe75c3ddfbf4f425fe3f0ceff66d807a75e049303dce9addf68e7218729bd419638af63a370f65878c";
//! # const RTMR2: &str = "a2a58c9a959a4fa44bd6da0c97a2270c051faf12084cfe91ae900e4fdff6cdd4f69a82005e04ee920f231497894d677f";
//! # const KMS_IDENTITY: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200048844eb42ccdf8c52fd4f174f362fcb9bbd19c45fd48f1edec2d8f1ca23536ec1a74021b4cee610c074f8294d431b2b7fee2c39e5333fdaf0a4522d43fb159d9f";
//! let keys = KeyHandle::new();
//! let tls = AttestedTls::builder(keys.clone()).root_store(roots).build()?;
//! // One client for the key provider, the E2EE layer and the receipt client.
//! let http: Client<_, RequestBody<Full<Bytes>>> = Client::builder(TokioExecutor::new()).build(tls.connector());
//! let provider = KeyProvider::builder(http.clone())
//!     .handle(keys)
//!     .base_url("https://api.redpill.ai".parse()?)
//!     .policy(
//!         // The sound combination (the real June 2026 capture's values; `aci-proxy inspect`).
//!         Policy::builder()
//!             .allow_compose_hash(COMPOSE_HASH)
//!             .allow_boot_measurements(MRTD, RTMR0, RTMR1, RTMR2)
//!             .allow_kms_identity(KMS_IDENTITY)
//!             .build()?,
//!     )
//!     .build()?;
//! provider.establish().await?; // fails with ChannelBinding if the keyset does not list the TLS key
//! # Ok(()) }
//! ```
//!
//! [`KeyHandle`]: crate::attest::KeyHandle
//! [`ChannelInfo`]: crate::attest::ChannelInfo
//! [`AttestationFailure::ChannelBinding`]: crate::error::AttestationFailure::ChannelBinding

mod config;
mod connector;
mod gate;
mod pin;
mod shared;
mod stream;
mod verifier;

pub use crate::egress::HttpsProxy;
pub use config::{AttestedTls, AttestedTlsBuilder};
pub use connector::{AttestedConnector, ConnectFuture};
pub use pin::spki_sha256;
pub use stream::AttestedStream;
