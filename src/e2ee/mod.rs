//! The E2EE v2 tower middleware: [`E2eeLayer`] and its service, future and bodies.
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_aci::E2eeLayer;
//! # fn build<S>(keys: tower_aci::attest::KeyHandle, client: S) {
//! // Outermost first: trace → retry → timeout → E2EE → decompression → client.
//! let svc = ServiceBuilder::new()
//!     .layer(E2eeLayer::new(keys))
//!     .service(client);
//! # let _ = svc;
//! # }
//! ```

mod body;
pub(crate) mod future;
pub(crate) mod layer;
pub(crate) mod service;

pub use body::ResponseBody;
pub use future::{GatewayError, ResponseFuture};
pub use layer::{
    DEFAULT_BLOCKING_THRESHOLD, DEFAULT_KEY_MISMATCH_WAIT, DEFAULT_MAX_REQUEST_BODY, DEFAULT_MAX_RESPONSE_BODY,
    E2eeLayer,
};
pub use service::{E2ee, RequestBody};
