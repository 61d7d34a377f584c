//! One integration-test binary (keeps link time down on small machines).
//!
//! Tests that run against the local gateway need the `test-gateway` feature; the README's test
//! command (`cargo test --all-features`) runs them all.

mod anchors;
mod attest_dcap;
mod attest_provider;
mod attest_real_capture;
mod attest_report;
mod attest_support;
#[cfg(feature = "__internal-test-vectors")]
mod capture;
#[cfg(all(feature = "test-gateway", feature = "rustls"))]
mod client;
mod data;
#[cfg(all(feature = "test-gateway", feature = "rustls"))]
mod egress;
mod layer_fits;
mod policy_pins;
mod protocol_props;
mod protocol_vectors;
mod receipt_fetch;
mod receipt_vectors;
mod reference;
mod reference_exchanges;
mod response_path;
mod strict;

#[cfg(feature = "test-gateway")]
mod channel;
#[cfg(feature = "test-gateway")]
mod gateway;
#[cfg(feature = "test-gateway")]
mod layer;
#[cfg(feature = "test-gateway")]
mod legacy_gateway;
#[cfg(feature = "test-gateway")]
mod provider_gateway;
#[cfg(all(feature = "proxy", feature = "test-gateway"))]
mod proxy;
#[cfg(all(feature = "proxy", feature = "test-gateway"))]
mod proxy_binary;
#[cfg(all(feature = "proxy", feature = "test-gateway"))]
mod proxy_cache_salt;
#[cfg(all(feature = "proxy", feature = "test-gateway"))]
mod proxy_cli;
#[cfg(all(feature = "proxy", feature = "test-gateway"))]
mod proxy_exposure;
#[cfg(all(feature = "proxy", feature = "test-gateway"))]
mod proxy_inspect;
#[cfg(all(feature = "proxy", feature = "test-gateway"))]
mod proxy_local;
#[cfg(all(feature = "proxy", feature = "test-gateway"))]
mod proxy_ops;
#[cfg(all(feature = "proxy", feature = "test-gateway", unix))]
mod proxy_systemd;
#[cfg(feature = "test-gateway")]
mod receipt_gateway;
#[cfg(feature = "test-gateway")]
mod refusals;
#[cfg(feature = "test-gateway")]
mod replicas;
#[cfg(all(feature = "test-gateway", feature = "reqwest-middleware"))]
mod reqwest_mw;
#[cfg(all(feature = "test-gateway", feature = "reqwest-middleware", feature = "rustls"))]
mod reqwest_service;
#[cfg(all(feature = "proxy", feature = "test-gateway"))]
mod stack;
#[cfg(feature = "test-gateway")]
mod stream_release;
#[cfg(feature = "test-gateway")]
mod support;
#[cfg(all(feature = "test-gateway", feature = "metrics"))]
mod telemetry;
#[cfg(all(feature = "test-gateway", feature = "rustls"))]
mod tls;
