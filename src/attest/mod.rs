//! Attestation: verify a gateway's report under a policy and keep its keyset current.
//!
//! - [`verify_report`] checks one report (fetched with our nonce) under a [`Policy`] and is the
//!   only way to obtain an [`AttestedKeyset`].
//! - [`KeyProvider`] fetches reports over any tower HTTP service, verifies them and publishes the
//!   result into a [`KeyHandle`] that the E2EE layer reads without locking, refreshing before
//!   `not_after`, at least once a day ([`KeyProviderBuilder::max_keyset_age`]), and when the
//!   gateway names a keyset digest it has not seen.
//! - `dcap` (feature `dcap`) verifies the gateway's Intel TDX quote against collateral
//!   supplied offline or fetched from a PCCS; without it, a policy that requires hardware
//!   verification fails closed with `HardwareUnverifiable`.

pub(crate) mod anchor;
pub(crate) mod channel;
mod clock;
pub(crate) mod custody;
#[cfg(feature = "dcap")]
#[cfg_attr(docsrs, doc(cfg(feature = "dcap")))]
pub mod dcap;
pub(crate) mod eventlog;
pub(crate) mod generation;
mod handle;
#[cfg(feature = "dcap")]
#[cfg_attr(docsrs, doc(cfg(feature = "dcap")))]
// The engine of `aci-proxy inspect` (crates/aci-proxy): not API. Its stable face is that
// command's output; a library user verifies with `verify_report` and reads the `AttestedKeyset`.
#[doc(hidden)]
pub mod inspect;
pub(crate) mod keyset;
mod policy;
mod provider;
pub(crate) mod report;
#[cfg(test)]
mod tests;

pub use anchor::{Anchor, PRODUCTION_OS_IMAGES};
pub use channel::ChannelInfo;
pub use clock::{Clock, ManualClock, SystemClock};
pub use generation::Generation;
pub use handle::{KeyHandle, RefusedKeyset};
pub use keyset::{AttestedKeyset, BootMeasurements, ReceiptKey, TlsKey};
pub use policy::{DangerousPolicyBuilder, Policy, PolicyBuilder};
pub use provider::{DangerousKeyProviderBuilder, KeyProvider, KeyProviderBuilder, RefreshTask, RefreshWorker, SleepFn};
pub use report::verify_report;
#[cfg(feature = "dcap")]
#[cfg_attr(docsrs, doc(cfg(feature = "dcap")))]
pub use report::verify_report_with_collateral;
// The report's statement and digests, as the gateway computes them: for the tests, which play
// the gateway (hidden feature `__internal-test-vectors`).
#[cfg(feature = "__internal-test-vectors")]
#[doc(hidden)]
pub use report::{API_VERSION, STATEMENT_PURPOSE, keyset_digest, report_data, report_statement};
