//! Errors the proxy answers with, shaped like OpenAI's
//! (`{"error":{"message","type","code","param"}}`) so that every SDK surfaces them.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use http::header::CONTENT_TYPE;

use tower_aci::error::{BoxError, Error, ErrorKind};

/// An error answer of the proxy.
#[derive(Debug, Clone)]
pub(crate) struct ProxyError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

impl ProxyError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ProxyError { status, kind, message: message.into() }
    }

    /// The error document.
    pub(crate) fn document(&self) -> serde_json::Value {
        serde_json::json!({"error": {"message": self.message, "type": self.kind, "code": self.kind, "param": null}})
    }

    /// The error as one SSE event, for a stream that fails after its head was sent.
    pub(crate) fn sse_event(&self) -> Bytes {
        Bytes::from(format!("data: {}\n\n", self.document()))
    }

    /// Classify an error of the E2EE stack (or of the transport under it).
    pub(crate) fn from_box(e: &BoxError) -> Self {
        match Error::find(e.as_ref()) {
            Some(ours) => Self::from_error(ours),
            None => ProxyError::new(
                StatusCode::BAD_GATEWAY,
                "gateway_unreachable",
                format!("the gateway could not be reached: {}", chain(e.as_ref())),
            ),
        }
    }

    pub(crate) fn from_error(e: &Error) -> Self {
        use ErrorKind as K;
        let (status, kind) = match e.kind() {
            K::KeyUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "key_unavailable"),
            K::Attestation(_) => (StatusCode::SERVICE_UNAVAILABLE, "attestation_failed"),
            K::Transport => (StatusCode::BAD_GATEWAY, "gateway_unreachable"),
            K::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
            K::UnsupportedEndpoint => (StatusCode::NOT_FOUND, "e2ee_unsupported_endpoint"),
            K::UnsupportedBody | K::Malformed | K::Cleartext => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            K::Decrypt | K::MissingEncryption | K::Protocol => (StatusCode::BAD_GATEWAY, "e2ee_decryption_failed"),
            K::Truncated => (StatusCode::BAD_GATEWAY, "e2ee_stream_truncated"),
            K::InBandError => (StatusCode::BAD_GATEWAY, "upstream_error"),
            K::Receipt(_) => (StatusCode::BAD_GATEWAY, "receipt_verification_failed"),
            K::Gateway if e.gateway_error_type() == Some(tower_aci::client::REDIRECT_REFUSED) => {
                (StatusCode::BAD_GATEWAY, "gateway_redirect_refused")
            }
            K::Gateway => (StatusCode::BAD_GATEWAY, "gateway_error"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        };
        let message = match e.kind() {
            K::Attestation(f) => format!("attestation failed ({f:?}): {e}"),
            K::Receipt(f) => format!("receipt verification failed ({f:?}): {e}"),
            _ => chain(e),
        };
        ProxyError::new(status, kind, message)
    }
}

/// An error and its causes, one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.document()).unwrap_or_default();
        (self.status, [(CONTENT_TYPE, "application/json")], body).into_response()
    }
}
