//! The crate's error type.
//!
//! Every fallible operation in tower-aci returns [`Error`]: an opaque value with a
//! [`kind`](Error::kind) you can match on, a human-readable message and, where one exists, the
//! underlying cause in [`source`](std::error::Error::source). Errors that cross a tower boundary
//! travel as `tower::BoxError`; [`Error::find`] walks a `source()` chain to get ours back.
//!
//! ```
//! use tower_aci::{Error, ErrorKind};
//!
//! fn classify(err: &(dyn std::error::Error + 'static)) -> &'static str {
//!     match Error::find(err).map(Error::kind) {
//!         Some(ErrorKind::Decrypt) => "tampered or wrong key",
//!         Some(ErrorKind::Truncated) => "stream cut short",
//!         Some(_) => "other tower-aci error",
//!         None => "not ours",
//!     }
//! }
//! # let _ = classify;
//! ```

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use http::StatusCode;

/// A boxed error, as tower services return them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in a form a caller can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A ciphertext failed to open. Deliberately says nothing about why (wrong key, tampered byte,
    /// moved to another field, wrong AAD).
    Decrypt,
    /// A field that the protocol requires to be ciphertext arrived in clear (or not as a string).
    MissingEncryption,
    /// Input from the network (or the caller) is not well formed: bad hex, wrong length, invalid
    /// point, invalid JSON, invalid header.
    Malformed,
    /// A stream ended before its terminal event (`[DONE]`), or a body ended early.
    Truncated,
    /// A body, line or event exceeded a configured limit.
    TooLarge,
    /// The request targets an endpoint E2EE v2 does not define; it was not sent.
    UnsupportedEndpoint,
    /// The request body cannot be protected as E2EE v2 requires (for example a prompt made only
    /// of token ids, or no field to encrypt); it was not sent.
    UnsupportedBody,
    /// Strict mode: the request carries members that would travel in clear; it was not sent.
    Cleartext,
    /// No attested key is available right now (not yet fetched, expired, or refresh failed).
    KeyUnavailable,
    /// The attestation report failed verification; see [`AttestationFailure`].
    Attestation(AttestationFailure),
    /// A receipt failed verification; see [`ReceiptFailure`].
    Receipt(ReceiptFailure),
    /// The gateway answered with an error document (`{"error":{"type":…}}`); see
    /// [`Error::gateway_error_type`].
    Gateway,
    /// The stream carried an in-band `{"error":…}` event.
    InBandError,
    /// The peer violated the protocol (for example a response that claims another E2EE version).
    Protocol,
    /// The inner transport failed.
    Transport,
    /// A builder or configuration value is invalid.
    Config,
}

/// Why an attestation report was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AttestationFailure {
    /// `api_version` is not `aci/1`.
    ApiVersion,
    /// The document does not have the shape of an ACI report.
    Shape,
    /// The keyset digest recomputed from the keyset's JCS form differs from the published one.
    KeysetDigest,
    /// The keyset cannot be canonicalised (floats, non-ASCII member names).
    Canonicalization,
    /// `report_data` is not SHA-256 of the statement built for our nonce.
    ReportData,
    /// The report was made for another nonce, or for none.
    Nonce,
    /// `now >= not_after`.
    Expired,
    /// `not_after` lies further in the future than the policy allows.
    NotAfterTooFar,
    /// The service does not offer E2EE v2 (`supported_e2ee_versions` lacks `"2"`).
    E2eeUnsupported,
    /// No E2EE key in the keyset matches the policy (algorithm or pinned key id).
    NoUsableKey,
    /// A key in the keyset is malformed.
    BadKey,
    /// The hardware quote failed to parse or verify, or its report-data slot does not match.
    Quote,
    /// The TCB status is not accepted by the policy.
    TcbStatus,
    /// The event log does not replay to the quote's RTMR3, or a measured value is inconsistent.
    EventLog,
    /// A measured value (compose hash, app id, OS image, provenance) is not on the allowlist.
    NotAllowed,
    /// The KMS key custody chain failed.
    Custody,
    /// The policy requires hardware verification and this build cannot do it (feature `dcap`).
    HardwareUnverifiable,
    /// The TLS channel is not bound to the attested keyset: the certificate a connection to the
    /// gateway presented has an SPKI the keyset does not list for that hostname (the report was
    /// served over it, or a request would have been), ACI §1.1 and §4. The message names the
    /// SPKI seen and the ones attested.
    ChannelBinding,
    /// The report is of a generation the policy refuses: the older (June 2026) generation under
    /// [`current_generation_only`](crate::attest::PolicyBuilder::current_generation_only).
    Generation,
    /// Older generation: `workload_id` is not SHA-256 of the JCS form of the workload identity
    /// key.
    WorkloadId,
    /// Older generation: the `keyset_endorsement` does not verify under the workload identity
    /// key.
    Endorsement,
    /// No anchor of the policy covers a key the exchange needs: the E2EE key requests would be
    /// sealed to, or any TLS or receipt key that could authenticate an answer. A key is covered
    /// by a KMS root only when its custody chain signs that key's own bytes, and by pinned boot
    /// measurements, KMS identity and compose hash together (see
    /// [`Anchor`](crate::attest::Anchor)). The message names the keys and the missing anchor.
    Unanchored,
}

/// Why a receipt was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReceiptFailure {
    /// The document does not have the shape of an ACI receipt.
    Shape,
    /// `api_version` is not `aci/1`.
    ApiVersion,
    /// The Ed25519 signature does not verify.
    Signature,
    /// The receipt names a key id not in the keyset's receipt signing keys.
    UnknownKey,
    /// The receipt names a keyset digest we have not verified.
    UnknownKeyset,
    /// `request.received.body_hash` differs from the hash of what we sent.
    RequestHash,
    /// `response.returned.body_hash` differs from the hash of the bytes we received.
    ResponseHash,
    /// `endpoint`, `method` or `model` differ from the request.
    Mismatch,
    /// The receipt is not (yet) available: not found, or the stream was not read to its end.
    NotAvailable,
    /// The receipt server refused our credentials (401).
    Unauthorized,
    /// The gateway rewrote the request before forwarding it and the policy forbids that.
    Rewritten,
    /// An aggregator session check failed.
    Session,
    /// The receipt names a keyset whose attestation report was fetched and failed verification
    /// under the policy (for example another build of the application, which holds the same
    /// KMS-derived receipt key): the same-key rule does not vouch for it. Carries why the report
    /// was refused; see [`RefusedKeyset`](crate::attest::RefusedKeyset).
    RefusedKeyset(AttestationFailure),
}

/// The longest wait [`Error::retry_after`] reports: a gateway that asks for more is read as
/// asking for one hour, so that no answer can park a caller for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// The error type of tower-aci.
///
/// Only the crate makes errors of the kinds that are verdicts (an attestation, a receipt, a
/// decryption, a stream's integrity); the workspace's other crates make only `Config` and
/// `Transport` errors (with constructors hidden for them), so a `Attestation(..)` error always
/// comes from a verification that ran.
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    gateway_type: Option<Box<str>>,
    /// The gateway's HTTP status, for an error made from its answer.
    status: Option<StatusCode>,
    /// Whole seconds of the answer's `Retry-After` (at most [`MAX_RETRY_AFTER`]).
    retry_after: Option<u32>,
    source: Option<BoxError>,
}

impl Error {
    /// A new error of `kind` with a message (crate-private: a verdict is made only where it is
    /// reached).
    pub(crate) fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error { kind, message: message.into(), gateway_type: None, status: None, retry_after: None, source: None }
    }

    /// A [`Config`](ErrorKind::Config) error: a builder or configuration value is invalid. For
    /// code that builds on tower-aci (a layer, a proxy, a configuration reader) and reports its
    /// own settings' errors as this crate's.
    ///
    /// ```
    /// let e = tower_aci::Error::config("--listen 0.0.0.0:8787 needs a client key");
    /// assert_eq!(e.kind(), tower_aci::ErrorKind::Config);
    /// ```
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    /// A [`Transport`](ErrorKind::Transport) error: a connection, a file or another I/O path
    /// failed. Attach the cause with [`with_source`](Self::with_source).
    ///
    /// ```
    /// let io = std::io::Error::other("disk full");
    /// let e = tower_aci::Error::transport("cannot append to the audit file").with_source(io);
    /// assert_eq!(e.kind(), tower_aci::ErrorKind::Transport);
    /// ```
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn transport(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Transport, message)
    }

    /// Attach an underlying cause.
    #[must_use]
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// An error document returned by the gateway, with its `type` string.
    pub(crate) fn gateway(status: StatusCode, error_type: impl Into<Box<str>>, message: &str) -> Self {
        let error_type = error_type.into();
        let code = status.as_u16();
        let mut e = Error::new(ErrorKind::Gateway, format!("gateway answered {code} {error_type}: {message}"));
        e.gateway_type = Some(error_type);
        e.status = Some(status);
        e
    }

    /// The gateway's status (and its `Retry-After`) on an error made from its answer.
    pub(crate) fn with_answer(mut self, status: StatusCode, retry_after: Option<Duration>) -> Self {
        self.status = Some(status);
        self.retry_after = retry_after.map(|d| d.min(MAX_RETRY_AFTER).as_secs() as u32);
        self
    }

    /// A copy of `found` (kind, message, the gateway's type, status and wait), without its
    /// source: for an error of ours found inside another error, returned as the cause.
    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    pub(crate) fn copy_of(found: &Error) -> Self {
        let mut e = Error::new(found.kind, found.message.to_string());
        e.gateway_type.clone_from(&found.gateway_type);
        e.status = found.status;
        e.retry_after = found.retry_after;
        e
    }

    /// An in-band error event read from a stream, with its `type` string.
    pub(crate) fn in_band(error_type: impl Into<Box<str>>, message: &str) -> Self {
        let error_type = error_type.into();
        let mut e =
            Error::new(ErrorKind::InBandError, format!("stream carried an error event ({error_type}): {message}"));
        e.gateway_type = Some(error_type);
        e
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The gateway's error `type` (for example `e2ee_replay_detected`), for
    /// [`ErrorKind::Gateway`] and [`ErrorKind::InBandError`].
    pub fn gateway_error_type(&self) -> Option<&str> {
        self.gateway_type.as_deref()
    }

    /// The HTTP status the gateway answered with, when this error was made from a non-2xx
    /// answer: a [`Gateway`](ErrorKind::Gateway) error (its error document), or a
    /// [`Transport`](ErrorKind::Transport) error whose body was no error document. `None` for
    /// errors that no answer caused.
    ///
    /// ```no_run
    /// # async fn run(client: tower_aci::Client, chat: String) -> tower_aci::Result<()> {
    /// match client.post("/v1/chat/completions", chat).await {
    ///     Err(e) if e.status() == Some(http::StatusCode::TOO_MANY_REQUESTS) => {
    ///         let wait = e.retry_after().unwrap_or(std::time::Duration::from_secs(1));
    ///         tokio::time::sleep(wait).await; // then try again
    ///     }
    ///     other => { other?; }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// How long the gateway asked to wait before trying again: its answer's `Retry-After`,
    /// in seconds or as an HTTP-date (read against the system clock), at most
    /// [`MAX_RETRY_AFTER`]. `None` when the answer carried none (or an unreadable one), or no
    /// answer caused this error.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after.map(|s| Duration::from_secs(u64::from(s)))
    }

    /// Find a tower-aci [`Error`] in an error or anywhere in its `source()` chain, including
    /// inside a `std::io::Error` (whose `source()` skips the error it wraps) and, with feature
    /// `rustls`, inside a rustls certificate error (a refused handshake).
    pub fn find<'a>(mut err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
        loop {
            if let Some(e) = err.downcast_ref::<Error>() {
                return Some(e);
            }
            if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
                if let Some(e) = Error::find(inner) {
                    return Some(e);
                }
            }
            // A handshake our certificate verifier refused carries our error inside rustls's.
            #[cfg(feature = "rustls")]
            if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(inner)))) =
                err.downcast_ref::<rustls::Error>()
            {
                let inner: &(dyn std::error::Error + 'static) = &**inner;
                if let Some(e) = Error::find(inner) {
                    return Some(e);
                }
            }
            err = err.source()?;
        }
    }

    pub(crate) fn decrypt() -> Self {
        Error::new(ErrorKind::Decrypt, "decryption failed")
    }

    pub(crate) fn malformed(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Malformed, message)
    }

    pub(crate) fn missing_encryption(field: &str) -> Self {
        Error::new(ErrorKind::MissingEncryption, format!("field `{field}` must be ciphertext but is not"))
    }

    pub(crate) fn attestation(failure: AttestationFailure, message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Attestation(failure), message)
    }

    pub(crate) fn receipt(failure: ReceiptFailure, message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Receipt(failure), message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(t) = &self.gateway_type {
            d.field("gateway_type", t);
        }
        if let Some(s) = &self.status {
            d.field("status", s);
        }
        if let Some(r) = &self.retry_after() {
            d.field("retry_after", r);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_walks_the_source_chain() {
        #[derive(Debug)]
        struct Outer(Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("outer")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let outer = Outer(Error::new(ErrorKind::Truncated, "cut"));
        assert_eq!(Error::find(&outer).map(Error::kind), Some(ErrorKind::Truncated));
        let io = std::io::Error::other("x");
        assert!(Error::find(&io).is_none());
    }

    #[test]
    fn gateway_error_keeps_its_type() {
        let e = Error::gateway(StatusCode::BAD_REQUEST, "e2ee_replay_detected", "replay");
        assert_eq!(e.kind(), ErrorKind::Gateway);
        assert_eq!(e.gateway_error_type(), Some("e2ee_replay_detected"));
        assert!(e.to_string().contains("400"));
        assert_eq!((e.status(), e.retry_after()), (Some(StatusCode::BAD_REQUEST), None));
        let e = e.with_answer(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(86_400)));
        assert_eq!((e.status(), e.retry_after()), (Some(StatusCode::TOO_MANY_REQUESTS), Some(MAX_RETRY_AFTER)));
        // Errors no answer caused carry neither.
        let e = Error::config("x");
        assert_eq!((e.status(), e.retry_after()), (None, None));
    }
}
