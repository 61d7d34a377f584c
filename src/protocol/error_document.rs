//! The gateway's error document: `{"error":{"message":…,"type":…,"code":…,"param":…}}`
//! (protocol.md §3.2), read from any non-success answer: an E2EE exchange, a report fetch, a
//! receipt fetch.

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::error::{Error, ErrorKind, MAX_RETRY_AFTER};

/// The gateway's error document, read from a non-2xx answer. The E2EE layer puts it in the
/// response's extensions of a failed exchange (the body itself passes through readable).
///
/// ```
/// use http::StatusCode;
/// use tower_aci::GatewayError;
///
/// let e = GatewayError::parse(StatusCode::TOO_MANY_REQUESTS, br#"{"error":{"type":"rate_limit_error","message":"slow down"}}"#);
/// assert_eq!(e.error_type.as_deref(), Some("rate_limit_error"));
/// assert_eq!(e.to_string(), "the gateway answered 429 Too Many Requests (rate_limit_error): slow down");
/// let as_error: &dyn std::error::Error = &e; // a std error, for `?` into a boxed error
/// # let _ = as_error;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewayError {
    /// HTTP status.
    pub status: StatusCode,
    /// The error's `type` (for example `e2ee_replay_detected`), if the body was an error document.
    pub error_type: Option<String>,
    /// The error's `message`, if any.
    pub message: Option<String>,
    /// The answer's `Retry-After` (seconds, or an HTTP-date read when the answer arrived), at
    /// most [`MAX_RETRY_AFTER`]; `None` when it carried none.
    pub retry_after: Option<Duration>,
}

/// The longest gateway `type`/`message` kept from an error document; a hostile gateway cannot
/// make errors grow beyond it.
pub(crate) const MAX_QUOTED: usize = 200;

impl GatewayError {
    /// Parse an error answer's body (`{"error":{"type","message",…}}`), keeping at most 200
    /// characters of each string.
    pub fn parse(status: StatusCode, body: &[u8]) -> Self {
        let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let err = v.as_ref().and_then(|v| v.get("error"));
        let s =
            |k: &str| err.and_then(|e| e.get(k)).and_then(|x| x.as_str()).map(|x| x.chars().take(MAX_QUOTED).collect());
        GatewayError { status, error_type: s("type"), message: s("message"), retry_after: None }
    }

    /// The answer's `Retry-After`, read against `now` (Unix seconds).
    pub(crate) fn with_headers(mut self, headers: &HeaderMap, now: u64) -> Self {
        self.retry_after = crate::protocol::headers::retry_after(headers, now, MAX_RETRY_AFTER);
        self
    }

    /// A non-success answer to a request of ours (`what`, e.g. "fetching the receipt") as an
    /// error: [`ErrorKind::Gateway`] when the body was an error document, else
    /// [`ErrorKind::Transport`]; either carries the status and `Retry-After`.
    pub(crate) fn error_for(status: StatusCode, headers: &HeaderMap, now: u64, body: &[u8], what: &str) -> Error {
        GatewayError::parse(status, body).with_headers(headers, now).error_of(what)
    }

    /// This document as an error of a request of ours (`what`).
    pub(crate) fn error_of(self, what: &str) -> Error {
        let retry_after = self.retry_after;
        match self.error_type {
            Some(t) => Error::gateway(self.status, t, &format!("{what}: {}", self.message.unwrap_or_default())),
            None => Error::new(ErrorKind::Transport, format!("{what}: the gateway answered {}", self.status.as_u16())),
        }
        .with_answer(self.status, retry_after)
    }

    /// This answer as an [`Error`] of kind [`ErrorKind::Gateway`], with its
    /// [`status`](Error::status) and [`retry_after`](Error::retry_after).
    pub fn to_error(&self) -> Error {
        Error::gateway(
            self.status,
            self.error_type.as_deref().unwrap_or("unknown"),
            self.message.as_deref().unwrap_or(""),
        )
        .with_answer(self.status, self.retry_after)
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the gateway answered {}", self.status)?;
        if let Some(t) = &self.error_type {
            write!(f, " ({t})")?;
        }
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_answer_keeps_its_status_and_retry_after() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        let body = br#"{"error":{"type":"rate_limit_error","message":"slow down"}}"#;
        let e = GatewayError::error_for(StatusCode::TOO_MANY_REQUESTS, &headers, 0, body, "POST /v1/chat/completions");
        assert_eq!(e.kind(), ErrorKind::Gateway);
        assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        // Not an error document: a transport error, still with the status and the wait.
        let e = GatewayError::error_for(StatusCode::SERVICE_UNAVAILABLE, &headers, 0, b"<html>", "POST /x");
        assert_eq!((e.kind(), e.status()), (ErrorKind::Transport, Some(StatusCode::SERVICE_UNAVAILABLE)));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        // No header: no wait.
        let e = GatewayError::error_for(StatusCode::BAD_REQUEST, &HeaderMap::new(), 0, body, "x");
        assert_eq!((e.status(), e.retry_after()), (Some(StatusCode::BAD_REQUEST), None));
    }
}
