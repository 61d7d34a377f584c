//! One integration-test binary (keeps link time down on small machines).
//!
//! The tests that run against the local gateway use the workspace's `aci-test-gateway` crate (a
//! dev-dependency); the README's test command (`cargo test --workspace --all-features`) runs
//! them all, and aci-proxy's and the gateway's own.

mod anchors;
mod attest_dcap;
mod attest_provider;
mod attest_real_capture;
mod attest_report;
mod attest_support;
#[cfg(feature = "__internal-test-vectors")]
mod capture;
mod channel;
#[cfg(feature = "rustls")]
mod client;
mod data;
mod doubles;
#[cfg(feature = "rustls")]
mod egress;
mod layer;
mod layer_fits;
mod legacy_gateway;
mod policy_pins;
mod protocol_props;
mod protocol_vectors;
mod provider_gateway;
mod receipt_fetch;
mod receipt_gateway;
mod receipt_vectors;
mod reference;
mod reference_exchanges;
mod refusals;
mod replicas;
#[cfg(feature = "reqwest-middleware")]
mod reqwest_mw;
#[cfg(all(feature = "reqwest-middleware", feature = "rustls"))]
mod reqwest_service;
mod response_path;
#[cfg(feature = "rustls")]
mod stack;
mod stream_release;
mod strict;
mod support;
#[cfg(feature = "metrics")]
mod telemetry;
#[cfg(feature = "rustls")]
mod tls;
