//! One integration-test binary (keeps link time down on small machines).

mod attest_dcap;
mod attest_provider;
mod attest_report;
mod attest_support;
mod data;
mod gateway;
mod layer;
mod layer_fits;
mod protocol_props;
mod protocol_vectors;
mod provider_gateway;
mod receipt_fetch;
mod receipt_gateway;
mod receipt_vectors;
mod reqwest_mw;
mod support;
