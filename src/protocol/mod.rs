//! The sans-IO protocol core: E2EE v2 field encryption, AAD, request rewriting, response and
//! SSE decryption, canonical JSON. Synchronous, no tower; randomness and time are injected.

pub mod aad;
mod endpoint;
mod error_document;
pub(crate) mod fields;
pub mod headers;
pub mod jcs;
pub mod keys;
pub mod request;
pub mod response;
pub(crate) mod server;
pub mod sse;
pub mod stream;
pub mod suite;

pub use endpoint::Endpoint;
pub use error_document::GatewayError;
