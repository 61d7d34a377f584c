//! The gateway's error document: `{"error":{"message":…,"type":…,"code":…,"param":…}}`
//! (protocol.md §3.2), read from any non-success answer: an E2EE exchange, a report fetch, a
//! receipt fetch.

use crate::error::{Error, ErrorKind};

/// The gateway's error document, read from a non-2xx answer. The E2EE layer puts it in the
/// response's extensions of a failed exchange (the body itself passes through readable).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewayError {
    /// HTTP status.
    pub status: u16,
    /// The error's `type` (for example `e2ee_replay_detected`), if the body was an error document.
    pub error_type: Option<String>,
    /// The error's `message`, if any.
    pub message: Option<String>,
}

/// The longest gateway `type`/`message` kept from an error document; a hostile gateway cannot
/// make errors grow beyond it.
pub(crate) const MAX_QUOTED: usize = 200;

impl GatewayError {
    /// Parse an error answer's body (`{"error":{"type","message",…}}`), keeping at most 200
    /// characters of each string.
    pub fn parse(status: u16, body: &[u8]) -> Self {
        let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let err = v.as_ref().and_then(|v| v.get("error"));
        let s =
            |k: &str| err.and_then(|e| e.get(k)).and_then(|x| x.as_str()).map(|x| x.chars().take(MAX_QUOTED).collect());
        GatewayError { status, error_type: s("type"), message: s("message") }
    }

    /// A non-success answer to a request of ours (`what`, e.g. "fetching the receipt") as an
    /// error: [`ErrorKind::Gateway`] when the body was an error document, else
    /// [`ErrorKind::Transport`].
    pub(crate) fn error_for(status: u16, body: &[u8], what: &str) -> Error {
        let gw = GatewayError::parse(status, body);
        match gw.error_type {
            Some(t) => Error::gateway(status, t, &format!("{what}: {}", gw.message.unwrap_or_default())),
            None => Error::new(ErrorKind::Transport, format!("{what}: the gateway answered {status}")),
        }
    }

    /// This answer as an [`Error`] of kind [`ErrorKind::Gateway`].
    pub fn to_error(&self) -> Error {
        Error::gateway(
            self.status,
            self.error_type.as_deref().unwrap_or("unknown"),
            self.message.as_deref().unwrap_or(""),
        )
    }
}
