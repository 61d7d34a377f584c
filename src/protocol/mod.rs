//! The sans-IO protocol core, for callers who bring their own HTTP stack: seal a request
//! ([`encrypt_request`]), open a response ([`decrypt_response`]) and decrypt a stream
//! ([`StreamDecryptor`]), with the suite and key types they take and the wire's header names
//! ([`headers`]). Synchronous, no tower; randomness and time are injected. The layer
//! ([`E2eeLayer`](crate::E2eeLayer)) runs exactly these functions.
//!
//! ```
//! use tower_aci::protocol::{
//!     E2eeKey, EncryptOptions, Endpoint, SecretKey, StreamDecryptor, StreamOutput, SseLimits, Suite,
//!     decrypt_response, encrypt_request,
//! };
//! # fn main() -> tower_aci::Result<()> {
//! // The gateway's key, as an attested keyset lists it (here: a key of our own).
//! let gateway = SecretKey::generate(Suite::X25519, &mut rand_core::OsRng);
//! let key = E2eeKey::parse("k1", Suite::X25519.algo(), gateway.public_key().to_hex())?;
//!
//! // Seal: the body to send, its five headers, and the context that opens the answer.
//! let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
//! let now = 1_700_000_000;
//! let options = EncryptOptions::default().strict(true);
//! let sealed = encrypt_request(Endpoint::ChatCompletions, body, &key, &options, now, &mut rand_core::OsRng)?;
//! assert_eq!(sealed.headers.timestamp, now);
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
pub use request::{E2eeHeaders, EncryptOptions, EncryptedRequest, ExchangeContext, encrypt_request};
pub use response::{DecryptedBody, decrypt_response};
pub use sse::{SseEvent, SseLimits};
pub use stream::{StreamDecryptor, StreamEnd, StreamOutput};
pub use suite::{PublicKey, SecretKey, Suite};

#[doc(hidden)]
pub use suite::Backend;
#[cfg(feature = "__internal-test-vectors")]
#[doc(hidden)]
pub use suite::kat;
