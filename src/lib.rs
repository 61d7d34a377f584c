//! # tower-aci
//!
//! Talk to an attested confidential-inference (ACI) gateway with end-to-end encryption from any
//! tower HTTP client, and prove afterwards what the gateway did.
//!
//! (Crate documentation is completed as the layers land.)

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod attest;
pub mod e2ee;
pub mod error;
pub mod protocol;
pub mod receipt;
#[cfg(feature = "reqwest-middleware")]
pub mod reqwest;

pub use e2ee::{E2ee, E2eeLayer};
pub use error::{AttestationFailure, BoxError, Error, ErrorKind, ReceiptFailure, Result};
#[cfg(feature = "test-gateway")]
pub mod gateway;
