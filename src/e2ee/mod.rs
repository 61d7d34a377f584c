//! The E2EE v2 tower middleware: [`E2eeLayer`] and its service, future and bodies, and
//! [`KeyMismatchRetry`], the retry policy that goes above it.
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower::retry::RetryLayer;
//! use tower_aci::E2eeLayer;
//! use tower_aci::e2ee::KeyMismatchRetry;
//! # fn build<S>(keys: tower_aci::attest::KeyHandle, client: S) {
//! // Outermost first: trace → retry → timeout → E2EE → decompression → client.
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new(KeyMismatchRetry::new(keys.clone())))
//!     .layer(E2eeLayer::new(keys))
//!     .service(client);
//! # let _ = svc;
//! # }
//! ```
//!
//! Inside: `config` (settings and routing), `exchange` (one exchange, transport-independent:
//! shared with the reqwest-middleware adapter), and the tower-http layout, whose arrows run one
//! way: `layer` → `service` → `future` → the bodies (`request_body`: what the inner service
//! receives; `body`: the decrypting response body).

mod body;
pub(crate) mod config;
pub(crate) mod exchange;
mod frame;
mod future;
mod layer;
mod request_body;
pub(crate) mod retry;
mod service;

pub use body::ResponseBody;
pub use config::DEFAULT_MAX_REQUEST_BODY;
pub use future::ResponseFuture;
pub use layer::{DangerousE2eeLayer, E2eeLayer};
pub use request_body::RequestBody;
pub use retry::{KeyMismatchRetry, ZeroizingBody};
pub use service::E2ee;
