//! Tests of `attest` that need its crate-internal functions (`eventlog`, `custody`, the report
//! verifier's `verify_report_skipping_collateral`), so they cannot live in `tests/`: a room of
//! their own, compiled only under `cfg(test)` (`#[cfg(test)] mod tests;` in `attest/mod.rs`).
//! Tests through the public API are in `tests/all/` (`attest_*.rs`); each production file keeps
//! its own small unit tests inline.
//!
//! - [`capture`]: the real TDX report capture and the values independently read from it;
//! - [`real_capture`]: the attestation path run on it piece by piece (event log, custody chains,
//!   the quote);
//! - [`anchors`] (feature `dcap`): attacks on the anchors, on the real bytes;
//! - [`end_to_end`] (feature `dcap`): the whole report through `verify_report`, with only the DCAP
//!   collateral check skipped.

#[cfg(feature = "dcap")]
mod anchors;
mod capture;
#[cfg(feature = "dcap")]
mod end_to_end;
mod real_capture;
