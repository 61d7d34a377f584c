//! The receipt document (`GET /v1/aci/receipts/{id}`), parsed and kept byte for byte.

use std::fmt;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::{Error, ReceiptFailure, Result};
use crate::protocol::jcs;

/// The largest receipt document [`Receipt::from_bytes`] parses (receipts are a few KiB).
pub(crate) const MAX_RECEIPT_SIZE: usize = 1024 * 1024;

/// Most events a receipt may carry (the reference writes at most seven).
const MAX_EVENTS: usize = 1024;

fn shape(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::receipt(ReceiptFailure::Shape, message)
}

/// A signed ACI receipt, exactly as `GET /v1/aci/receipts/{id}` served it.
///
/// The raw bytes are kept ([`as_bytes`](Self::as_bytes)): a receipt is an archivable,
/// self-contained file that re-verifies offline against the keyset whose digest it names.
/// Parsing checks the shape only; nothing here is trusted before the signature verified (see
/// [`verify_exchange`](crate::receipt::verify_exchange)).
///
/// ```
/// use tower_aci::receipt::{Event, Receipt};
///
/// let doc = r#"{"api_version":"aci/1","chat_id":null,"endpoint":"/v1/chat/completions",
///   "event_log":[{"body_hash":"sha256:00","type":"request.received"},{"type":"x.custom"}],
///   "key_id":"k","method":"POST","model":"m","receipt_id":"rcpt-1","served_at":1,
///   "signature":"00","workload_keyset_digest":"sha256:11"}"#;
/// let receipt = Receipt::from_bytes(doc.as_bytes().to_vec().into())?;
/// assert_eq!(receipt.receipt_id(), "rcpt-1");
/// assert_eq!(receipt.events()[0], Event::RequestReceived { body_hash: "sha256:00".into() });
/// assert!(matches!(&receipt.events()[1], Event::Unknown { event_type } if event_type == "x.custom"));
/// assert_eq!(receipt.as_bytes(), doc.as_bytes());
/// # Ok::<(), tower_aci::Error>(())
/// ```
#[derive(Clone)]
pub struct Receipt {
    raw: Bytes,
    document: Value,
    signing_input: Vec<u8>,
    api_version: String,
    receipt_id: String,
    chat_id: Option<String>,
    model: Option<String>,
    keyset_digest: String,
    endpoint: String,
    method: String,
    served_at: u64,
    key_id: String,
    signature: String,
    events: Vec<Event>,
}

/// One entry of a receipt's `event_log`.
///
/// Event types this crate does not know are kept as [`Event::Unknown`] and otherwise ignored,
/// as the protocol requires.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// `request.received`: the hash of the request body the gateway processed (for E2EE, the
    /// body it restored after decrypting).
    RequestReceived {
        /// `sha256:<hex>`.
        body_hash: String,
    },
    /// `middleware.forwarded` (middleware path): the body the control plane handed on.
    MiddlewareForwarded {
        /// `sha256:<hex>`, if present.
        body_hash: Option<String>,
    },
    /// `route.selected` (middleware path): the route the control plane chose.
    RouteSelected {
        /// The chosen route, if named.
        target_route_id: Option<String>,
    },
    /// `request.forwarded`: the body used for inference after any rewrite. Absent on refusals.
    RequestForwarded {
        /// `sha256:<hex>`.
        body_hash: String,
    },
    /// `upstream.verified` (aggregators): the outcome of verifying the upstream.
    UpstreamVerified(UpstreamVerified),
    /// `response.received` (middleware path): the upstream's bytes.
    ResponseReceived {
        /// `sha256:<hex>`, if present.
        body_hash: Option<String>,
    },
    /// `response.returned`: the exact response body bytes the gateway emitted.
    ResponseReturned {
        /// `sha256:<hex>`.
        body_hash: String,
    },
    /// An event type this crate does not know (ignored by verification).
    Unknown {
        /// The event's `type`.
        event_type: String,
    },
}

/// The `upstream.verified` event of an aggregator's receipt (protocol.md §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamVerified {
    /// `result`: `"verified"` or `"failed"` (other values are kept verbatim).
    pub result: String,
    /// `required`: whether the effective policy demanded verified serving for this request.
    pub required: bool,
    /// `model_id`: the upstream model served (or requested, when failed).
    pub model_id: Option<String>,
    /// `session_id`: the attested session that served (64 hex), when verified.
    pub session_id: Option<String>,
    /// `reason`: why verification failed, when failed.
    pub reason: Option<String>,
    /// `upstream_name`: an optional label of the upstream.
    pub upstream_name: Option<String>,
}

impl UpstreamVerified {
    /// Whether `result` is `"verified"`.
    pub fn is_verified(&self) -> bool {
        self.result == "verified"
    }
}

fn get_str(map: &Map<String, Value>, name: &'static str) -> Result<String> {
    match map.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(shape(format!("receipt member `{name}` is not a string"))),
        None => Err(shape(format!("receipt member `{name}` is missing"))),
    }
}

fn get_opt_str(map: &Map<String, Value>, name: &'static str) -> Result<Option<String>> {
    match map.get(name) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Null) | None => Ok(None),
        Some(_) => Err(shape(format!("receipt member `{name}` is neither a string nor null"))),
    }
}

fn event_str(map: &Map<String, Value>, event: &str, name: &str) -> Result<String> {
    match map.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(shape(format!("`{event}` event without a string `{name}`"))),
    }
}

/// An optional member of an informational event: kept when it is a string, else dropped.
fn lenient_str(map: &Map<String, Value>, name: &str) -> Option<String> {
    map.get(name).and_then(Value::as_str).map(str::to_owned)
}

impl Event {
    fn parse(value: &Value) -> Result<Event> {
        let map = value.as_object().ok_or_else(|| shape("an event_log entry is not an object"))?;
        let event_type = match map.get("type") {
            Some(Value::String(t)) => t.as_str(),
            _ => return Err(shape("an event_log entry has no string `type`")),
        };
        Ok(match event_type {
            "request.received" => Event::RequestReceived { body_hash: event_str(map, event_type, "body_hash")? },
            "request.forwarded" => Event::RequestForwarded { body_hash: event_str(map, event_type, "body_hash")? },
            "response.returned" => Event::ResponseReturned { body_hash: event_str(map, event_type, "body_hash")? },
            "middleware.forwarded" => Event::MiddlewareForwarded { body_hash: lenient_str(map, "body_hash") },
            "response.received" => Event::ResponseReceived { body_hash: lenient_str(map, "body_hash") },
            "route.selected" => Event::RouteSelected { target_route_id: lenient_str(map, "target_route_id") },
            "upstream.verified" => {
                let result = event_str(map, event_type, "result")?;
                let required = match map.get("required") {
                    Some(Value::Bool(b)) => *b,
                    _ => return Err(shape("`upstream.verified` event without a boolean `required`")),
                };
                let session_id = match map.get("session_id") {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Null) | None => None,
                    Some(_) => return Err(shape("`upstream.verified` event with a non-string `session_id`")),
                };
                Event::UpstreamVerified(UpstreamVerified {
                    result,
                    required,
                    model_id: lenient_str(map, "model_id"),
                    session_id,
                    reason: lenient_str(map, "reason"),
                    upstream_name: lenient_str(map, "upstream_name"),
                })
            }
            other => Event::Unknown { event_type: other.to_owned() },
        })
    }

    /// The event's `type` string.
    pub fn event_type(&self) -> &str {
        match self {
            Event::RequestReceived { .. } => "request.received",
            Event::MiddlewareForwarded { .. } => "middleware.forwarded",
            Event::RouteSelected { .. } => "route.selected",
            Event::RequestForwarded { .. } => "request.forwarded",
            Event::UpstreamVerified(_) => "upstream.verified",
            Event::ResponseReceived { .. } => "response.received",
            Event::ResponseReturned { .. } => "response.returned",
            Event::Unknown { event_type } => event_type,
        }
    }
}

impl Receipt {
    /// Parse a receipt document from the exact bytes the gateway served.
    ///
    /// Fails with [`ReceiptFailure::Shape`] when the bytes are not a JSON object with the
    /// receipt's members (`api_version`, `receipt_id`, `chat_id`, `model`,
    /// `workload_keyset_digest`, `endpoint`, `method`, `served_at`, `event_log`, `key_id`,
    /// `signature`), when a known event lacks its fields, when the document is larger than
    /// 1 MiB, or when it cannot be put in canonical form (a float, a non-ASCII
    /// member name). Unknown members and unknown event types are accepted (the signature covers
    /// them).
    pub fn from_bytes(raw: Bytes) -> Result<Receipt> {
        if raw.len() > MAX_RECEIPT_SIZE {
            return Err(shape(format!("the receipt is larger than {MAX_RECEIPT_SIZE} bytes")));
        }
        let document: Value =
            serde_json::from_slice(&raw).map_err(|e| shape(format!("the receipt is not JSON: {e}")))?;
        let map = document.as_object().ok_or_else(|| shape("the receipt is not a JSON object"))?;

        let served_at = match map.get("served_at") {
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| shape("`served_at` is not a non-negative integer"))?,
            Some(_) => return Err(shape("`served_at` is not a number")),
            None => return Err(shape("receipt member `served_at` is missing")),
        };
        let entries = match map.get("event_log") {
            Some(Value::Array(a)) => a,
            Some(_) => return Err(shape("`event_log` is not an array")),
            None => return Err(shape("receipt member `event_log` is missing")),
        };
        if entries.len() > MAX_EVENTS {
            return Err(shape("the receipt carries too many events"));
        }
        let events = entries.iter().map(Event::parse).collect::<Result<Vec<_>>>()?;

        let mut unsigned = map.clone();
        unsigned.remove("signature");
        let signing_input = jcs::to_vec(&Value::Object(unsigned))
            .map_err(|e| shape(format!("the receipt cannot be canonicalised: {e}")))?;

        Ok(Receipt {
            api_version: get_str(map, "api_version")?,
            receipt_id: get_str(map, "receipt_id")?,
            chat_id: get_opt_str(map, "chat_id")?,
            model: get_opt_str(map, "model")?,
            keyset_digest: get_str(map, "workload_keyset_digest")?,
            endpoint: get_str(map, "endpoint")?,
            method: get_str(map, "method")?,
            served_at,
            key_id: get_str(map, "key_id")?,
            signature: get_str(map, "signature")?,
            events,
            signing_input,
            document,
            raw,
        })
    }

    /// The exact bytes the gateway served: archive these to re-verify later.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The parsed document.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// The bytes the signature covers: the JCS form of the document without `signature`.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn signing_input(&self) -> &[u8] {
        &self.signing_input
    }

    /// `api_version` (verification requires `aci/1`).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// `receipt_id` (`rcpt-` + 24 hex on the reference gateway).
    pub fn receipt_id(&self) -> &str {
        &self.receipt_id
    }

    /// `chat_id`: the response `id` (for a stream, the first chunk's), if any.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn chat_id(&self) -> Option<&str> {
        self.chat_id.as_deref()
    }

    /// `model`: the request's clear `model`, if any.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// `workload_keyset_digest`: the keyset whose receipt key signed this receipt.
    pub fn workload_keyset_digest(&self) -> &str {
        &self.keyset_digest
    }

    /// `endpoint`: the request path the gateway served.
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `method` (`POST`).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn method(&self) -> &str {
        &self.method
    }

    /// `served_at`: Unix seconds, as the gateway's clock said (self-asserted).
    pub fn served_at(&self) -> u64 {
        self.served_at
    }

    /// `key_id`: the receipt signing key, resolved in the keyset's `receipt_signing_keys`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// `signature`: lowercase hex of the 64-byte Ed25519 signature.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn signature(&self) -> &str {
        &self.signature
    }

    /// The `event_log`, in order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }
}

impl PartialEq for Receipt {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for Receipt {}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receipt")
            .field("receipt_id", &self.receipt_id)
            .field("chat_id", &self.chat_id)
            .field("model", &self.model)
            .field("workload_keyset_digest", &self.keyset_digest)
            .field("endpoint", &self.endpoint)
            .field("served_at", &self.served_at)
            .field("key_id", &self.key_id)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn doc() -> Value {
        serde_json::json!({
            "api_version": "aci/1", "receipt_id": "r", "chat_id": null, "model": null,
            "workload_keyset_digest": "sha256:00", "endpoint": "/v1/chat/completions", "method": "POST",
            "served_at": 5, "key_id": "k", "signature": "00",
            "event_log": [{"type": "request.received", "body_hash": "sha256:01"}]
        })
    }

    fn parse(v: &Value) -> Result<Receipt> {
        Receipt::from_bytes(Bytes::from(serde_json::to_vec(v).unwrap()))
    }

    fn is_shape(r: Result<Receipt>) -> bool {
        matches!(r, Err(e) if e.kind() == ErrorKind::Receipt(ReceiptFailure::Shape))
    }

    #[test]
    fn parses_and_strips_only_the_signature() {
        let r = parse(&doc()).unwrap();
        assert_eq!(r.served_at(), 5);
        assert_eq!(r.chat_id(), None);
        assert!(!String::from_utf8_lossy(r.signing_input()).contains("signature"));
        assert!(String::from_utf8_lossy(r.signing_input()).contains("key_id"));
    }

    #[test]
    fn hostile_shapes_are_typed_errors() {
        for bytes in [&b""[..], b"[]", b"null", b"{", b"\xff\xfe", b"{\"api_version\":1}"] {
            assert!(is_shape(Receipt::from_bytes(Bytes::copy_from_slice(bytes))), "{bytes:?}");
        }
        let deep = "[".repeat(10_000);
        assert!(is_shape(Receipt::from_bytes(Bytes::from(deep))));
        let cases: Vec<(&str, Value)> = vec![
            ("served_at", Value::from(-1)),
            ("served_at", Value::from(1.5)),
            ("served_at", Value::from("1")),
            ("event_log", Value::from("x")),
            ("event_log", serde_json::json!([1])),
            ("event_log", serde_json::json!([{"type": 1}])),
            ("event_log", serde_json::json!([{"type": "request.received"}])),
            ("event_log", serde_json::json!([{"type": "upstream.verified", "result": "verified"}])),
            ("model", Value::from(3)),
            ("signature", Value::Null),
            ("receipt_id", Value::Bool(true)),
            ("extra", serde_json::json!({"é": 1})),
            ("extra", Value::from(0.5)),
        ];
        for (k, v) in cases {
            let mut d = doc();
            d[k] = v.clone();
            assert!(is_shape(parse(&d)), "{k} = {v}");
        }
        for k in ["api_version", "endpoint", "method", "key_id", "workload_keyset_digest", "served_at", "event_log"] {
            let mut d = doc();
            d.as_object_mut().unwrap().remove(k);
            assert!(is_shape(parse(&d)), "without {k}");
        }
    }

    #[test]
    fn events_are_typed_and_unknown_ones_kept() {
        let mut d = doc();
        d["event_log"] = serde_json::json!([
            {"type": "request.received", "body_hash": "sha256:01"},
            {"type": "middleware.forwarded", "body_hash": 7},
            {"type": "route.selected", "target_route_id": "r1"},
            {"type": "request.forwarded", "body_hash": "sha256:02"},
            {"type": "upstream.verified", "result": "failed", "required": false, "model_id": "m", "reason": "down"},
            {"type": "response.received", "body_hash": "sha256:03"},
            {"type": "response.returned", "body_hash": "sha256:04"},
            {"type": "later.thing", "x": [1, 2]}
        ]);
        let r = parse(&d).unwrap();
        let types: Vec<&str> = r.events().iter().map(Event::event_type).collect();
        assert_eq!(
            types,
            [
                "request.received",
                "middleware.forwarded",
                "route.selected",
                "request.forwarded",
                "upstream.verified",
                "response.received",
                "response.returned",
                "later.thing"
            ]
        );
        assert_eq!(r.events()[1], Event::MiddlewareForwarded { body_hash: None });
        let up = r
            .events()
            .iter()
            .find_map(|e| match e {
                Event::UpstreamVerified(u) => Some(u),
                _ => None,
            })
            .unwrap();
        assert!(!up.is_verified());
        assert_eq!(up.reason.as_deref(), Some("down"));
        assert_eq!(up.session_id, None);
    }
}
