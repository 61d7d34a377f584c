//! # tower-aci
//!
//! End-to-end encryption to attested confidential-inference (ACI) gateways for any tower HTTP
//! client, and proof afterwards of what the gateway did.
//!
//! An ACI gateway runs inside a TEE and publishes, at `GET /v1/aci/attestation?nonce=…`, a report
//! whose hardware quote binds a keyset: receipt-signing keys, TLS keys and E2EE public keys. This
//! crate
//!
//! 1. **establishes** that keyset ([`attest::KeyProvider`]): fetch the report with a fresh nonce,
//!    verify it under an [`attest::Policy`], keep it fresh, hand the current key to the layer
//!    through a lock-free [`attest::KeyHandle`];
//! 2. **encrypts and decrypts** ([`E2eeLayer`]): the private fields of OpenAI-style requests are
//!    sealed to the attested key (E2EE v2), answers are opened on the way back — buffered JSON, or
//!    server-sent events released one by one as each authenticates;
//! 3. **verifies receipts** ([`receipt`]): the gateway's Ed25519-signed record of the exchange is
//!    checked against the attested keyset and the exact bytes the layer saw
//!    ([`receipt::ExchangeRecord`], in the response's extensions).
//!
//! ## Quick start
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_aci::attest::{KeyProvider, Policy};
//! use tower_aci::E2eeLayer;
//!
//! # async fn run() -> Result<(), tower_aci::BoxError> {
//! let base = "http://gateway.internal:8080";
//! // Reports are fetched over a plain client, never through the E2EE layer.
//! let plain: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
//! let provider = KeyProvider::builder(plain).base_url(base.parse()?).policy(Policy::default()).build()?;
//! let (keys, _refresher) = provider.spawn()?; // refreshes before expiry and on keyset changes
//! provider.establish().await?;
//!
//! let client = ServiceBuilder::new()
//!     .layer(E2eeLayer::new(keys))
//!     .service(Client::builder(TokioExecutor::new()).build_http());
//! let req = http::Request::post(format!("{base}/v1/chat/completions"))
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)))?;
//! let res = client.oneshot(req).await?;
//! let answer = res.into_body().collect().await?.to_bytes(); // decrypted JSON
//! # let _ = answer; Ok(()) }
//! ```
//!
//! `cargo run --example quickstart --features test-gateway` runs the whole job offline against
//! the crate's local gateway.
//!
//! ## Where the layer goes in a stack
//!
//! Outermost first: **trace → retry → timeout → E2EE → decompression → client**.
//!
//! - Retries must sit *above* the layer: the gateway burns a nonce before it decrypts, so a retry
//!   below would replay it (`e2ee_replay_detected`); above, each attempt is re-encrypted with a
//!   fresh nonce, timestamp and client key.
//! - `tower::timeout` ends at the response head; streams need a deadline on reading the body.
//! - The layer calls the inner service's `poll_ready` and moves the ready instance into the call;
//!   key trouble (none established yet, expired) is a per-request error, never a readiness error.
//!
//! ## Features
//!
//! | feature | adds |
//! | --- | --- |
//! | `test-gateway` | [`gateway`]: a local ACI gateway on loopback for examples and tests |
//! | `reqwest-middleware` | `reqwest::E2eeMiddleware` for reqwest-middleware chains |
//! | `dcap` | TDX quote verification with `dcap-qvl` (the default policy requires it) |
//! | `libsecp256k1` | secp256k1 ECDH and key generation on libsecp256k1 (C): same bytes, faster |
//! | `aws-lc` | X25519 and AES-256-GCM on AWS-LC (assembly): same bytes, faster |
//!
//! ## Security notes
//!
//! - Fail closed: a protected field in clear is [`ErrorKind::MissingEncryption`]; a tampered
//!   ciphertext is [`ErrorKind::Decrypt`]; a stream without its terminal is
//!   [`ErrorKind::Truncated`]; a report whose binding does not recompute is
//!   [`ErrorKind::Attestation`]. Nothing from the network panics.
//! - Only keys from an [`attest::AttestedKeyset`] — which only the verifier constructs — are
//!   encrypted to. Test relaxations live behind `Policy::builder().dangerous()`.
//! - `POST`s outside the E2EE endpoints are refused unless allowed by name, so plaintext is
//!   never sent by accident.
//! - The gateway leaves tool-call arguments, refusals, logprobs, transcripts and images of
//!   responses in clear, and `tools`/`response_format` of requests: the layer warns, and
//!   [`E2eeLayer::strict`] refuses them.
//! - Secrets are zeroized on drop, print as `[redacted]`, never go into extensions or logs; the
//!   E2EE headers are marked sensitive.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod attest;
pub mod e2ee;
pub mod error;
#[cfg(feature = "test-gateway")]
pub mod gateway;
mod hex;
#[cfg(feature = "reqwest-middleware")]
pub mod middleware;
mod percent;
pub mod protocol;
pub mod receipt;

pub use e2ee::{E2ee, E2eeLayer};
pub use error::{AttestationFailure, BoxError, Error, ErrorKind, ReceiptFailure, Result};
pub use protocol::GatewayError;
