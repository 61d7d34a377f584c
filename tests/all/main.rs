//! One integration-test binary (keeps link time down on small machines).

mod data;
mod protocol_props;
mod protocol_vectors;
mod attest_report;
mod attest_support;
mod layer_fits;
mod attest_provider;
mod layer;
mod support;
mod gateway;
mod reqwest_mw;
mod provider_gateway;
mod receipt_vectors;
mod receipt_gateway;
mod receipt_fetch;
mod attest_dcap;
