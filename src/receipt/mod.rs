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
//! // Archive the receipt's bytes with the record and the keyset: `verify_exchange` re-checks them offline.
//! let archived = verified.receipt().as_bytes().to_vec();
//! # let _ = (body, archived); Ok(()) }
//! ```
//!
//! - [`Receipt`] is the document, parsed from the exact bytes served and kept byte for byte.
//! - [`verify_exchange`] checks a receipt against an [`ExchangeRecord`] under a
//!   [`ReceiptPolicy`] and the attested keysets it may name, and returns a [`VerifiedReceipt`]:
//!   online, or offline for archived receipts (an archived keyset is a [`Keysets`] too).
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
//! Every failure is an [`Error`](crate::error::Error) of kind
//! [`ErrorKind::Receipt`](crate::error::ErrorKind::Receipt) with a specific
//! [`ReceiptFailure`](crate::error::ReceiptFailure); hostile documents never panic.
//!
//! A stream's receipt exists only once the gateway reached the end of the stream, and its
//! response hash is final only once the body was read to its end: until then verification
//! reports [`NotAvailable`](crate::error::ReceiptFailure::NotAvailable). A stream that ended without
//! `[DONE]` may still have a valid receipt: require the terminal event yourself (the layer
//! reports a truncated stream as an error when it is read).
//!
//! # Replicas and restarts: verify soon, archive the bytes
//!
//! **A receipt may live on one replica only, and may be lost on a restart.** The reference
//! gateway keeps receipts in memory, for an hour, in the process that served the exchange:
//! behind a load balancer only that replica can return it, and a restart or a redeployment
//! loses it for good. Fetch and verify a receipt soon after its exchange — or before you release
//! the answer ([`VerifyBeforeReleaseLayer`],
//! [`release_after_receipt`](ReceiptClient::release_after_receipt)) — and archive the verified
//! bytes ([`Receipt::as_bytes`]) together with the keyset that verified them
//! ([`VerifiedReceipt::keyset`]) and the [`ExchangeRecord`]; [`verify_exchange`] re-checks them
//! offline.
//!
//! What the client does to reach the right replica:
//!
//! - The [`ExchangeRecord`] keeps the serving replica's keyset digest (its
//!   `X-ACI-Keyset-Digest`, [`ExchangeRecord::keyset_digest`]). A `404` naming another
//!   replica's digest is re-sent at once; every re-send carries `Connection: close`, so that the
//!   next attempt opens a new connection, which a per-connection (L4) balancer may route to
//!   another replica ([`RetryPolicy`]: 32 such hops by default, and a time limit). An HTTP-aware
//!   (L7) balancer spreads requests anyway.
//! - Give the [`ReceiptClient`] the client under the E2EE layer (one connection pool for the
//!   layer, the key provider and the receipts): its first attempt then often reuses the
//!   exchange's own connection. Each re-send retires one pooled connection, so with many idle
//!   connections to other replicas more hops may be needed; a receipt client with its own
//!   hyper-util client built with `pool_max_idle_per_host(0)` opens a new connection for every
//!   attempt instead.
//! - Every replica and every restarted process has its own keyset digest (its `not_after` is
//!   launch time + 30 days; its TLS keys differ), while its keys are the application's. A
//!   receipt naming a digest the [`KeyHandle`](crate::attest::KeyHandle) does not know makes the
//!   key provider look for it ([`Keysets::attest_digest`]:
//!   a few reports, fresh nonces, fresh connections), and
//!   [`fetch_and_verify`](ReceiptClient::fetch_and_verify) waits for that, bounded
//!   ([`ReceiptClient::keyset_wait`]).
//! - If that keyset's report was fetched and failed the policy (say, another build of the
//!   application, which holds the same KMS-derived receipt key), the key provider remembers the
//!   digest as refused ([`RefusedKeyset`](crate::attest::RefusedKeyset)) and the receipt fails
//!   with [`RefusedKeyset`](crate::error::ReceiptFailure::RefusedKeyset), which says why.
//! - If that keyset still cannot be attested (its report endpoint fails, or the balancer never
//!   routed a report fetch to it), the receipt is accepted only when its signing key is the
//!   receipt key of a keyset attested under the same policy and it was served before that
//!   keyset's `not_after`; the result says so ([`VerifiedReceipt::keyset_match`] is
//!   [`KeysetMatch::SameKey`]). [`KeysetMatch`] explains what this gives up;
//!   [`ReceiptPolicy::require_exact_keyset`] refuses it.

pub(crate) mod document;
pub(crate) mod fetch;
mod record;
mod release;
pub(crate) mod session;
pub(crate) mod verify;

pub use document::{Event, Receipt, UpstreamVerified};
pub use fetch::{ReceiptClient, RetryPolicy};
pub(crate) use record::ResponseDigest;
pub use record::{ExchangeRecord, ExchangeRecordBuilder};
pub use release::{ReleaseBody, StreamVerification, VerifyBeforeRelease, VerifyBeforeReleaseLayer};
pub use session::{AttestedSession, VerifiedSession, pin_sessions};
pub use verify::{AttestDigestFuture, KeysetMatch, Keysets, ReceiptPolicy, VerifiedReceipt, verify_exchange};
// The steps `verify_exchange` runs, for the receipt vector tests (hidden feature
// `__internal-test-vectors`).
#[cfg(feature = "__internal-test-vectors")]
#[doc(hidden)]
pub use verify::{verify_against_keyset, verify_signature};
