//! Receipts: what the gateway signed, checked against what the layer saw.
//!
//! After each exchange the gateway stores a signed receipt: the hash of the request body it
//! processed (for E2EE, the body it restored after decrypting), of the bytes it forwarded, of the
//! exact response bytes it returned (SSE framing included) and, behind an aggregator, the
//! outcome of verifying the upstream. The [`E2eeLayer`](crate::E2eeLayer) records its side of
//! the exchange in the response's extensions as an [`ExchangeRecord`]; this module fetches the
//! receipt and checks one against the other.
//!
//! Three steps: establish an attested keyset, send through the layer, verify.
//!
//! ```no_run
//! # async fn f<S, B>(client: S, base: http::Uri, keys: tower_aci::attest::KeyHandle, response: http::Response<tower_aci::e2ee::ResponseBody<B>>) -> Result<(), tower_aci::BoxError>
//! # where
//! #     S: tower::Service<http::Request<http_body_util::Full<bytes::Bytes>>, Response = http::Response<B>> + Clone,
//! #     S::Error: Into<tower_aci::BoxError>,
//! #     B: http_body::Body,
//! #     B::Error: Into<tower_aci::BoxError>,
//! # {
//! use http_body_util::BodyExt;
//! use tower_aci::receipt::{ExchangeRecord, ReceiptClient, ReceiptPolicy};
//!
//! // `response` came from a client wrapped in `E2eeLayer::new(keys.clone())`.
//! let record = response.extensions().get::<ExchangeRecord>().cloned().expect("an E2EE exchange");
//! let body = response.into_body().collect().await?.to_bytes(); // read to the end: the hash is final
//!
//! let receipts = ReceiptClient::new(client, base);
//! let verified = receipts.fetch_and_verify(&record, Some("sk-…"), &keys, &ReceiptPolicy::new()).await?;
//! assert!(!verified.rewritten());
//! let archived = verified.receipt().to_bytes(); // re-verify offline with `verify_against_keyset`
//! # let _ = (body, archived); Ok(()) }
//! ```
//!
//! - [`Receipt`] is the document, parsed from the exact bytes served and kept byte for byte.
//! - [`verify_against_keyset`] checks the signature under an attested keyset (offline
//!   re-verification of archived receipts); [`verify_signature`] under a bare key.
//! - [`verify_exchange`] checks a receipt against an [`ExchangeRecord`] under a
//!   [`ReceiptPolicy`] and returns a [`VerifiedReceipt`].
//! - [`ReceiptClient`] fetches receipts and attested sessions with bounded retries, and offers
//!   [`fetch_and_verify`](ReceiptClient::fetch_and_verify) and a verify-before-release helper,
//!   [`release_after_receipt`](ReceiptClient::release_after_receipt).
//! - [`VerifyBeforeReleaseLayer`] goes above the E2EE layer: a buffered answer is released only
//!   after its receipt verified; a stream's events flow as they authenticate, but its `[DONE]`
//!   and end wait for the verified receipt ([`StreamVerification`]).
//! - [`ExchangeRecord::builder`] rebuilds a record from stored facts, to re-verify archived
//!   exchanges offline.
//! - [`AttestedSession`] is an aggregator's record of a verified upstream (ACI spec §8, §9.2);
//!   [`pin_sessions`] pins a request to sessions you verified.
//!
//! Every failure is an [`Error`](crate::Error) of kind
//! [`ErrorKind::Receipt`](crate::ErrorKind::Receipt) with a specific
//! [`ReceiptFailure`](crate::ReceiptFailure); hostile documents never panic.
//!
//! A stream's receipt exists only once the gateway reached the end of the stream, and its
//! response hash is final only once the body was read to its end: until then verification
//! reports [`NotAvailable`](crate::ReceiptFailure::NotAvailable). A stream that ended without
//! `[DONE]` may still have a valid receipt: require the terminal event yourself (the layer
//! reports a truncated stream as an error when it is read).

mod document;
mod fetch;
mod record;
mod release;
mod session;
mod testing;
mod verify;

pub use document::{Event, MAX_RECEIPT_SIZE, Receipt, UpstreamVerified};
pub use fetch::{DEFAULT_MAX_DOCUMENT_SIZE, DEFAULT_MAX_RELEASE_BODY, ReceiptClient, RetryPolicy};
pub use record::{ExchangeRecord, ExchangeRecordBuilder, ResponseDigest};
pub use release::{ReleaseBody, StreamVerification, VerifyBeforeRelease, VerifyBeforeReleaseLayer};
pub use session::{AttestedSession, MAX_SESSION_SIZE, VerifiedSession, pin_sessions};
pub(crate) use verify::hash_string;
pub use verify::{
    Keysets, RECEIPT_API_VERSION, ReceiptPolicy, VerifiedReceipt, verify_against_keyset, verify_exchange,
    verify_signature,
};
