//! The sans-IO protocol core, for callers who bring their own HTTP stack: seal a request
//! ([`encrypt_request`]), open a response ([`decrypt_response`]) and decrypt a stream
//! ([`StreamDecryptor`]), with the key and options they take; the sealed request carries its
//! five headers whole. Synchronous, no tower; randomness and time are injected. The layer
//! ([`E2eeLayer`](crate::E2eeLayer)) runs exactly these functions.
//!
//! ```
//! use tower_aci::protocol::{
//!     E2eeKey, EncryptOptions, Endpoint, StreamDecryptor, StreamOutput, SseLimits, Suite,
//!     decrypt_response, encrypt_request,
//! };
//! # fn main() -> tower_aci::Result<()> {
//! # let gateway = tower_aci::protocol::SecretKey::generate(Suite::X25519, &mut rand_core::OsRng);
//! # let gateway_public_key_hex = gateway.public_key().to_hex();
//! // The gateway's key, as an attested keyset lists it (`AttestedKeyset::e2ee_key`).
//! let key = E2eeKey::parse("k1", Suite::X25519.algo(), gateway_public_key_hex)?;
//!
//! // Seal: the body to send, its five headers, and the context that opens the answer.
//! let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
//! let now = 1_700_000_000;
//! let options = EncryptOptions::default().strict(true);
//! let sealed = encrypt_request(Endpoint::ChatCompletions, body, &key, &options, now, &mut rand_core::OsRng)?;
//! assert_eq!(sealed.headers["x-e2ee-timestamp"], now.to_string().as_str());
//!
//! // Open a non-streamed answer (a body without encrypted fields: nothing to decrypt).
//! let answer = decrypt_response(&sealed.context, r#"{"id":"x","choices":[]}"#.into())?;
//! assert_eq!(&answer.body[..], br#"{"id":"x","choices":[]}"#);
//!
//! // Decrypt a streamed answer as its bytes arrive.
//! let mut stream = StreamDecryptor::new(sealed.context, SseLimits::default());
//! stream.push(b"data: [DONE]\n\n");
//! while let Some(out) = stream.next_output()? {
//!     if let StreamOutput::Event(event) = out {
//!         assert_eq!(&event[..], b"data: [DONE]\n\n");
//!     }
//! }
//! stream.finish()?;
//! # Ok(())
//! # }
//! ```

// Hidden, for the crate's vector tests, benches and fuzz targets only (feature
// `__internal-test-vectors`, which no user feature enables); crate-private otherwise.
#[cfg(feature = "__internal-test-vectors")]
#[doc(hidden)]
pub mod aad;
#[cfg(not(feature = "__internal-test-vectors"))]
#[allow(unreachable_pub)]
pub(crate) mod aad;
#[cfg(feature = "__internal-test-vectors")]
#[doc(hidden)]
pub mod jcs;
#[cfg(not(feature = "__internal-test-vectors"))]
#[allow(unreachable_pub)]
pub(crate) mod jcs;

pub(crate) mod endpoint;
mod error_document;
pub(crate) mod fields;
// The wire's header names: the layer, the proxy and the test gateway read and write them; a
// caller of this module gets the request's headers whole (`EncryptedRequest::headers`).
#[doc(hidden)]
pub mod headers;
pub(crate) mod keys;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod server;
pub(crate) mod sse;
pub(crate) mod stream;
pub(crate) mod suite;

pub use endpoint::Endpoint;
pub use error_document::GatewayError;
pub use keys::E2eeKey;
pub use request::{EncryptOptions, EncryptedRequest, ExchangeContext, encrypt_request};
pub use response::{DecryptedBody, decrypt_response};
pub use sse::SseLimits;
pub use stream::{StreamDecryptor, StreamEnd, StreamOutput};
pub use suite::Suite;

// Key pairs of a suite: the client's per-exchange key lives inside `ExchangeContext`, so a
// client names neither; the test gateway (crates/aci-test-gateway), the benches and the vector
// tests play the gateway with them.
#[doc(hidden)]
pub use suite::{PublicKey, SecretKey};

#[doc(hidden)]
pub use suite::Backend;
#[cfg(feature = "__internal-test-vectors")]
#[doc(hidden)]
pub use suite::kat;
