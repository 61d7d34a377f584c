//! The handful of names each way of using the crate needs: `use tower_aci::prelude::*;`.
//!
//! | path | names |
//! | --- | --- |
//! | every path | [`Error`], [`ErrorKind`], [`GatewayError`] (a non-2xx answer), [`BoxError`] |
//! | the convenience client (`rustls`) | [`Client`], [`ReceiptMode`] |
//! | a tower stack of your own | [`E2eeLayer`], [`KeyMismatchRetry`], [`KeyProvider`], [`KeyHandle`], [`Policy`], [`AttestedKeyset`], [`AttestedTls`] (`rustls`) |
//! | receipts | [`ReceiptClient`], [`ReceiptPolicy`] |
//! | reqwest (`reqwest-middleware`) | [`E2eeMiddleware`] |
//!
//! The crate's `Result` alias is left out on purpose: a glob import of it would shadow
//! `std::result::Result` in your module. Everything else stays in its module
//! ([`attest`](crate::attest), [`receipt`](crate::receipt), …).
//!
//! ```
//! use tower_aci::prelude::*;
//!
//! fn layer(keys: KeyHandle) -> E2eeLayer {
//!     E2eeLayer::new(keys).strict(true)
//! }
//! # let _ = layer(KeyHandle::new());
//! ```

pub use crate::attest::{AttestedKeyset, KeyHandle, KeyProvider, Policy};
#[cfg(feature = "rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
pub use crate::client::{Client, ReceiptMode};
pub use crate::e2ee::{E2eeLayer, KeyMismatchRetry};
pub use crate::error::{BoxError, Error, ErrorKind};
#[cfg(feature = "reqwest-middleware")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
pub use crate::middleware::E2eeMiddleware;
pub use crate::protocol::GatewayError;
pub use crate::receipt::{ReceiptClient, ReceiptPolicy};
#[cfg(feature = "rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
pub use crate::tls::AttestedTls;
