//! `aci-proxy`: end-to-end encryption for any OpenAI SDK, as a local proxy, built on
//! [`tower_aci`] (its public API, and a few hooks it hides for this crate). This crate is the
//! `aci-proxy` binary (its README is the operator's manual) and the same proxy as a library, for
//! in-process use ([`Proxy::spawn_local`]).
//!
//! The proxy listens on loopback and speaks the OpenAI API: `POST /v1/chat/completions`,
//! `/v1/completions` and `/v1/embeddings` (buffered and streaming) go through
//! [`E2eeLayer`](tower_aci::E2eeLayer) to the attested gateway — fields encrypted to the attested key,
//! answers decrypted, streams released event by event; `GET /v1/…` (models, receipts) pass
//! through; every other `POST` is refused with an OpenAI-shaped error, so no plaintext leaves by
//! accident. `GET /aci/status` reports the attested keyset, the policy's pins and counters.
//!
//! It is a [`Client`] behind an OpenAI-compatible endpoint: [`Proxy::start`] turns the
//! [`ProxyConfig`] into a [`ClientBuilder`]
//! ([`ProxyConfig::client_builder`]), builds it (the gateway is attested there, with the
//! client's defaults and refusals: the PCCS, loopback-only `http://`, the API key's validity,
//! no redirect) and serves through [`Client::service`]; background receipt checks are the
//! client's ([`ReceiptCheck`]), drained at shutdown. It is the
//! reference for embedding tower-aci in an axum backend. What it protects: the hop
//! from this machine to the gateway and the gateway's own handling. What it does not: the hop
//! from your application to the proxy is loopback plaintext, so run it on the same host.
//!
//! It does not expose the person running it:
//! - a redirect from the gateway never reaches the client (an SDK that followed a `307` would
//!   re-send the plaintext prompt to the `Location`): it becomes a `502`
//!   `gateway_redirect_refused`, and the proxy's own client never follows one; of the gateway's
//!   headers only an allow-list is relayed (content type, request id, `retry-after`,
//!   `x-ratelimit-*`, the ACI/E2EE response headers), never `Location` or `Set-Cookie`;
//! - a request whose `Host` is not a loopback name or the listen address (DNS rebinding), or that
//!   carries an `Origin` not named by [`ProxyConfig::allow_origins`] (a web page), is refused
//!   before anything is sent or read — the probes and `/metrics` included; listening beyond
//!   loopback needs a client key ([`ProxyConfig::client_key_env`]), and a configured key is
//!   checked on every request, on loopback too ([`ProxyConfig::require_client_key`] makes one
//!   mandatory); a supervisor or Prometheus without the key reads the probes and metrics on
//!   their own listener ([`ProxyConfig::ops_listen`], [`Proxy::ops_router`]);
//! - the API key goes only to the inference routes, `/v1/models` and `/v1/aci/receipts/…`, never
//!   to the attestation endpoint; a `--pccs` on the gateway's own host (which would take the
//!   gateway out of the TLS pin) is refused at start.
//!
//! ```no_run
//! # async fn run() -> tower_aci::Result<()> {
//! use aci_proxy::{Proxy, ProxyConfig};
//!
//! let config = ProxyConfig::default().local_test_gateway(true); // offline demo
//! let proxy = Proxy::start(config).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await.unwrap();
//! axum::serve(listener, proxy.router()).await.unwrap();
//! # Ok(()) }
//! ```
//!
//! ## Features
//!
//! | feature | adds |
//! | --- | --- |
//! | `fast-crypto` (default) | tower-aci's `libsecp256k1` and `aws-lc` backends: the same bytes, about half the time per field (a C compiler, about a minute more to build); `--no-default-features` keeps pure Rust |
//! | `local-test-gateway` | `--local-test-gateway` / [`ProxyConfig::local_test_gateway`]: the local attested gateway of crate `aci-test-gateway`, in-process, for an offline demo (its stub quote is accepted under a dangerous policy); without it that setting is a `Config` error at start |
//!
//! [`Client`]: tower_aci::client::Client
//! [`Client::service`]: tower_aci::client::Client::service
//! [`ClientBuilder`]: tower_aci::client::ClientBuilder
//! [`ReceiptCheck`]: tower_aci::client::ReceiptCheck

#![cfg_attr(docsrs, feature(doc_cfg))]

mod access;
mod audit;
mod body;
mod config;
mod errors;
mod guard;
pub mod inspect;
mod local;
mod names;
mod ops;
mod proxy;
mod relay;
mod salt;
mod stack;
mod status;
mod upstream;

pub use audit::{AuditSummary, LineFailure, verify_audit};
pub use config::{BootMeasurementPin, LogFormat, PolicyPins, ProxyConfig, ReceiptMode};
pub use local::LocalProxy;
pub use ops::install_metrics_recorder;
pub use proxy::Proxy;
pub use stack::crypto_backends;

/// The README's Rust snippets, compiled as doc tests (`cargo test -p aci-proxy --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
