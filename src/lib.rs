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
//! Against a real gateway (RedPill, Phala, a dstack deployment), with the default features
//! (`client`: `rustls` and `dcap`), [`Client`] is the whole stack: pin the workload, and it
//! verifies the TDX quote, talks HTTPS pinned to the attested keyset, encrypts, and verifies each
//! answer's receipt. The README's "What to pin" says where each pinned value comes
//! from, and docs/guide.md what each failure looks like.
//!
//! ```no_run
//! # #[cfg(all(feature = "rustls", feature = "dcap"))]
//! # async fn run(compose: &str, [m, r0, r1, r2]: [&str; 4], kms: &str) -> tower_aci::Result<()> {
//! let client = tower_aci::Client::builder("https://api.redpill.ai")
//!     .allow_compose_hash(compose).allow_boot_measurements(m, r0, r1, r2).allow_kms_identity(kms)
//!     .api_key_env("REDPILL_API_KEY")
//!     .build().await?;
//! let chat = r#"{"model":"YOUR-MODEL","messages":[{"role":"user","content":"hi"}]}"#;
//! let answer = client.post("/v1/chat/completions", chat).await?; // decrypted
//! answer.receipt.verified().await?; // the gateway signed exactly these bytes
//! # Ok(()) }
//! ```
//!
//! [`Client`] assembles the parts below, which stay public for a stack of your own: a
//! [`attest::KeyProvider`] over any tower HTTP client, [`E2eeLayer`] above that client,
//! [`e2ee::KeyMismatchRetry`] above the layer, [`receipt::ReceiptClient`], and (feature
//! `rustls`) `tls::AttestedTls`, the connector pinned to the attested keyset. `examples/chat.rs`
//! builds that stack by hand, part by part.
//!
//! `cargo run --example quickstart` runs the whole job offline against the workspace's local
//! gateway (crate `aci-test-gateway`, a dev-dependency: plain HTTP, a stub quote accepted under
//! `dangerous()`), and `cargo run --example chat -- --tls` over pinned TLS.
//!
//! ## Where the layer goes in a stack
//!
//! Outermost first: **trace → retry → timeout → E2EE → decompression → client**.
//!
//! - Retries must sit *above* the layer: the gateway burns a nonce before it decrypts, so a retry
//!   below would replay it (`e2ee_replay_detected`); above, each attempt is re-encrypted with a
//!   fresh nonce, timestamp and client key. [`e2ee::KeyMismatchRetry`] is the retry policy for a
//!   gateway that rotated its key (`e2ee_model_key_mismatch`): it waits for the refresher's new
//!   key and re-sends once.
//! - One HTTP client can serve the layer, the key provider and the receipt client: they take any
//!   service whose request body is `From<Bytes>`, including the layer's
//!   [`RequestBody`](e2ee::RequestBody). The provider and the receipt client use the client
//!   *under* the layer (or through it: the layer lets `GET`s pass untouched).
//! - `tower::timeout` ends at the response head; streams need a deadline on reading the body.
//! - The layer calls the inner service's `poll_ready` and moves the ready instance into the call;
//!   key trouble (none established yet, expired) is a per-request error, never a readiness error.
//!
//! ## Features
//!
//! | feature | adds |
//! | --- | --- |
//! | `client` (default) | [`Client`]: `rustls` + `dcap`, everything a real gateway needs; `default-features = false` keeps the bare layer |
//! | `reqwest-middleware` | `middleware::E2eeMiddleware` for reqwest-middleware chains |
//! | `dcap` | `attest::dcap`: TDX quote verification with `dcap-qvl` (every policy requires it unless `dangerous()` relaxes it) |
//! | `rustls` | `tls`: HTTPS pinned to the attested keyset's TLS keys (hyper-util connector, rustls config for reqwest), through an HTTP proxy's `CONNECT` tunnels when `HTTPS_PROXY` or the builder says so |
//! | `rustls-native-roots` | the platform's root store for `tls` |
//! | `metrics` | the library's metrics through the `metrics` facade (see [`telemetry`]); free while no recorder is installed |
//! | `libsecp256k1` | secp256k1 ECDH and key generation on libsecp256k1 (C): same bytes, faster |
//! | `aws-lc` | X25519 and AES-256-GCM on AWS-LC (assembly): same bytes, faster |
//!
//! `__internal-test-vectors` is not for users: it exposes internals (raw ECDH secrets, a
//! replaceable random source) to the crate's own tests and benches, carries no stability promise
//! and no feature above enables it.
//!
//! [`prelude`] gathers the handful of names each path needs.
//!
//! ## Beside this crate
//!
//! The workspace holds two more crates, each depending on this one and never the other way:
//! **`aci-proxy`** (the `aci-proxy` binary, and `aci_proxy::Proxy` for in-process use: a local
//! OpenAI-compatible endpoint that applies E2EE for any SDK) and **`aci-test-gateway`** (a local
//! attested ACI gateway on loopback for examples and tests; a dev-dependency only).
//!
//! ## Why `serde_json/preserve_order` is on
//!
//! The receipt names the SHA-256 of the request body the gateway *restored* after decrypting it:
//! `serde_json`'s compact re-serialisation of the parsed body, in the order the members arrived
//! (protocol.md §5.3). To predict that hash the crate must parse and print JSON exactly as the
//! gateway does, so it enables `serde_json`'s `preserve_order` feature — which Cargo's feature
//! unification turns on for every crate in your build that uses `serde_json` (its `Map` then
//! keeps insertion order instead of sorting keys). The crate does not enable `float_roundtrip` or
//! `arbitrary_precision`; if another crate does, a receipt's request hash may differ for exotic
//! floats, which the verifier reports as a number-normalisation mismatch, not as tampering.
//!
//! ## Security notes
//!
//! - Fail closed: a protected field in clear is [`ErrorKind::MissingEncryption`]; a tampered
//!   ciphertext is [`ErrorKind::Decrypt`]; a stream without its terminal is
//!   [`ErrorKind::Truncated`]; a report whose binding does not recompute is
//!   [`ErrorKind::Attestation`]. Nothing from the network panics.
//! - Only keys from an [`attest::AttestedKeyset`] — which only the verifier constructs — are
//!   encrypted to. A policy must pin the workload (compose hash or app id) and anchor that pin
//!   (a KMS root, or the TD's boot measurements); test relaxations live behind
//!   `Policy::builder().dangerous()`.
//! - E2EE v2 keeps a request confidential to the attested key; it does not authenticate the
//!   answer. Response fields are sealed to the client's ephemeral key, which travels in clear,
//!   so anyone who sees the request can forge a complete answer that decrypts cleanly. Only the
//!   attested TLS channel, or a receipt verified before release
//!   ([`receipt::VerifyBeforeReleaseLayer`]), authenticates an answer. So for an `https://`
//!   gateway the key provider and the layer refuse a report or an answer that does not name the
//!   attested channel it came over (`tls::AttestedTls`, feature `rustls`; ACI §1.1, §4: WebPKI
//!   alone proves nothing when TLS may terminate outside the workload), with
//!   [`AttestationFailure::ChannelBinding`]; plain `http://` is allowed only to loopback. The
//!   opt-outs are `dangerous().accept_unbound_channel()` on the provider builder and the layer.
//! - Whether an answer is decoded as a stream follows the request's `"stream"` flag; an answer
//!   whose content type disagrees is a [`ErrorKind::Protocol`] error.
//! - `POST`s outside the E2EE endpoints are refused unless allowed by name, and so is a body
//!   sent to an E2EE endpoint in any other method (`PUT`, `PATCH`, a lowercase `post`), so
//!   plaintext is never sent by accident.
//! - The gateway leaves tool-call arguments, refusals, logprobs, transcripts and images of
//!   responses in clear, and `tools`/`response_format` of requests: the layer warns, and
//!   [`E2eeLayer::strict`] refuses them.
//! - A stream's events are authenticated one by one, not their order: every event is sealed
//!   under the same AAD, so dropped, duplicated or reordered events show only in the receipt's
//!   response hash. [`receipt::VerifyBeforeReleaseLayer`] holds `[DONE]` until the receipt
//!   verified (see [`protocol::StreamDecryptor`]).
//! - Secrets are zeroized on drop (private keys, ECDH secrets, HKDF's pseudorandom and derived
//!   keys, the layer's copy of a plaintext body; [`e2ee::ZeroizingBody`] for the copy a retry
//!   keeps), print as `[redacted]`, never go into extensions or logs; the E2EE headers are
//!   marked sensitive.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod attest;
#[cfg(feature = "rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
pub mod client;
pub mod e2ee;
#[cfg(feature = "rustls")]
mod egress;
pub mod error;
mod hex;
#[cfg(feature = "reqwest-middleware")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
pub mod middleware;
mod percent;
pub mod prelude;
pub mod protocol;
pub mod receipt;
#[cfg(feature = "reqwest-middleware")]
mod reqwest_service;
pub mod telemetry;
#[cfg(feature = "rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
pub mod tls;

#[cfg(doctest)]
mod surface_checks;

/// **Not public API.** For the workspace's sibling crates only (`aci-test-gateway`, and the
/// fuzz targets in `fuzz/`): no stability promise, may change or vanish in any release, hidden
/// from the docs and not counted in the public surface. What is here lives in this crate
/// because it must agree with code that does (and only the crate can reach that code); nothing
/// here is meant for a client.
///
/// - `open_request`, `OpenedRequest` and `ResponseSealer`: the gateway's halves of E2EE v2
///   (open a request's fields, seal a response's), built on the same field walkers as the
///   client's halves (`protocol::fields`, crate-private), so that both walk the same fields.
///   The local test gateway serves with them; the `request_open` fuzz target attacks them.
/// - `SseDecoder` and `SseEvent`: the SSE framing the client's stream decryption runs on, which
///   the gateway re-frames its upstream's streams with (the seal_open bench times it).
/// - `jcs_to_vec`: RFC 8785 canonical JSON, the bytes the gateway signs receipts and keysets over
///   (the same canonicalizer the client verifies them with).
#[doc(hidden)]
pub mod __private {
    pub use crate::protocol::server::{OpenedRequest, ResponseSealer, open_request};
    pub use crate::protocol::sse::{SseDecoder, SseEvent};

    /// RFC 8785 canonical JSON of `value`.
    pub fn jcs_to_vec(value: &serde_json::Value) -> crate::Result<Vec<u8>> {
        crate::protocol::jcs::to_vec(value)
    }
}

#[cfg(feature = "rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
pub use client::{Client, ClientBuilder};
pub use e2ee::{E2ee, E2eeLayer};
pub use error::{AttestationFailure, BoxError, Error, ErrorKind, ReceiptFailure, Result};
pub use protocol::GatewayError;

/// The README's Rust snippets, compiled as doc tests (`cargo test --all-features --doc`).
#[cfg(all(doctest, feature = "rustls", feature = "dcap", feature = "reqwest-middleware"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The user's guide's Rust snippets, compiled as doc tests (`cargo test --all-features --doc`).
#[cfg(all(doctest, feature = "rustls", feature = "dcap", feature = "reqwest-middleware"))]
#[doc = include_str!("../docs/guide.md")]
pub struct GuideDoctests;
