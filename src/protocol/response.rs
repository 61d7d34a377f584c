//! Response decryption: buffered JSON documents and single SSE chunks.
//!
//! Every field the protocol protects must arrive as ciphertext: a clear string (or any
//! non-string, non-null value) in a protected place is [`ErrorKind::MissingEncryption`], never
//! passed through. Bodies that legitimately carry no protected field (error documents,
//! usage-only bodies) come back unchanged.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::error_document::MAX_QUOTED;
use crate::protocol::fields::{ResponseShape, ResponseSlot, cleartext_fields, walk_response};
use crate::protocol::request::ExchangeContext;
use crate::protocol::suite::open;

/// A decrypted response document.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DecryptedBody {
    /// The body with every protected field in clear (unchanged bytes when nothing was encrypted).
    pub body: Bytes,
    /// How many fields were decrypted.
    pub decrypted_fields: usize,
    /// The field paths that held ciphertext, in document order, as the AAD names them (for
    /// example `choices.1.message.content` or `data.2.embedding`).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub decrypted_paths: Vec<String>,
    /// Paths of generated content the gateway sent in clear (tool-call names and arguments,
    /// refusals, logprobs, audio transcripts, …); empty when none.
    pub cleartext_fields: Vec<String>,
}

/// The string `id` of a response or chunk, or `""`.
fn response_id(root: &Map<String, Value>) -> String {
    root.get("id").and_then(Value::as_str).unwrap_or("").to_owned()
}

/// Decrypt the protected fields of one parsed document in place. Returns the paths opened, in
/// document order.
pub(crate) fn decrypt_document(
    ctx: &ExchangeContext,
    shape: ResponseShape,
    root: &mut Map<String, Value>,
) -> Result<Vec<String>> {
    let id = response_id(root);
    let mut opened = Vec::new();
    walk_response(ctx.endpoint, shape, root, &mut |path, slot: ResponseSlot<'_>| {
        let value = slot.parent.get_mut(slot.key).expect("walker yields present members");
        let text = match value {
            Value::Null => return Ok(()),
            Value::String(s) => s,
            _ => return Err(Error::missing_encryption(path)),
        };
        let aad = ctx.response_aad(path, &id);
        let plain = open(&ctx.client_secret, text, &aad).map_err(|e| match e.kind() {
            ErrorKind::Malformed => Error::missing_encryption(path),
            _ => e,
        })?;
        let plain = String::from_utf8(plain).map_err(|_| Error::decrypt())?;
        *value = if slot.json {
            serde_json::from_str(&plain)
                .map_err(|_| Error::malformed(format!("decrypted `{path}` is not the JSON text of an embedding")))?
        } else {
            Value::String(plain)
        };
        opened.push(path.to_owned());
        Ok(())
    })?;
    Ok(opened)
}

/// Decrypt a buffered JSON response of the exchange `ctx`.
///
/// ```
/// # use tower_aci::protocol::*;
/// # let ctx = ExchangeContext::new(Endpoint::ChatCompletions, SecretKey::generate(Suite::X25519, &mut rand_core::OsRng), "m", "00", 1);
/// // An error document carries nothing encrypted and passes through unchanged.
/// let body = bytes::Bytes::from_static(br#"{"error":{"message":"no","type":"x"}}"#);
/// let out = decrypt_response(&ctx, body.clone()).unwrap();
/// assert_eq!(out.body, body);
/// assert_eq!(out.decrypted_fields, 0);
/// ```
pub fn decrypt_response(ctx: &ExchangeContext, body: Bytes) -> Result<DecryptedBody> {
    let mut root: Value = serde_json::from_slice(&body)
        .map_err(|e| Error::new(ErrorKind::Malformed, "response body is not JSON").with_source(e))?;
    let Value::Object(map) = &mut root else {
        return Err(Error::malformed("response body is not a JSON object"));
    };
    let decrypted_paths = decrypt_document(ctx, ResponseShape::Buffered, map)?;
    let cleartext_fields = cleartext_fields(ctx.endpoint, ResponseShape::Buffered, map);
    let body = if decrypted_paths.is_empty() {
        body
    } else {
        Bytes::from(serde_json::to_vec(&root).expect("serialising a Value cannot fail"))
    };
    Ok(DecryptedBody { body, decrypted_fields: decrypted_paths.len(), decrypted_paths, cleartext_fields })
}

/// What one SSE chunk's JSON payload turned out to be.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// The decrypted payload, re-serialised; `None` when nothing was encrypted (re-emit the
    /// payload unchanged).
    pub(crate) payload: Option<Vec<u8>>,
    /// The field paths that held ciphertext.
    pub(crate) decrypted: Vec<String>,
    /// Paths of generated content in clear.
    pub(crate) cleartext: Vec<String>,
    /// An in-band error the chunk signals: its `type` and `message`, capped.
    pub(crate) error: Option<(String, String)>,
}

/// A gateway- or upstream-supplied string, capped as [`GatewayError`](crate::GatewayError)
/// caps its strings.
fn quoted(s: &str) -> String {
    s.chars().take(MAX_QUOTED).collect()
}

/// The in-band error a chunk signals, as the reference gateway detects one
/// (`src/middleware/sse.rs`, `detect_outcome`): a non-null `error` member, a `type: "error"`
/// event, a non-null `response.error`, or a `finish_reason` that is `"error"` or ends in
/// `_error`. A `null` error is no error.
fn in_band_error(root: &Map<String, Value>) -> Option<(String, String)> {
    let described = |error: &Value| {
        let t = error.get("type").and_then(Value::as_str).unwrap_or("error");
        let m = error.get("message").and_then(Value::as_str).or_else(|| error.as_str()).unwrap_or("");
        (quoted(t), quoted(m))
    };
    if let Some(error) = root.get("error").filter(|e| !e.is_null()) {
        return Some(described(error));
    }
    if root.get("type").and_then(Value::as_str) == Some("error") {
        return Some(("error".to_owned(), quoted(root.get("message").and_then(Value::as_str).unwrap_or(""))));
    }
    if let Some(error) = root.get("response").and_then(|r| r.get("error")).filter(|e| !e.is_null()) {
        return Some(described(error));
    }
    let choices = root.get("choices").and_then(Value::as_array)?;
    choices.iter().filter_map(|c| c.get("finish_reason").and_then(Value::as_str)).find_map(|reason| {
        (reason == "error" || reason.ends_with("_error"))
            .then(|| (quoted(reason), format!("finish_reason {:?}", quoted(reason))))
    })
}

/// Decrypt one SSE chunk payload (`data:` JSON). Protected fields are opened (and must be
/// ciphertext) whatever else the chunk says, so an error event cannot carry them in clear.
pub(crate) fn decrypt_chunk(ctx: &ExchangeContext, payload: &[u8]) -> Result<Chunk> {
    let mut root: Value = serde_json::from_slice(payload)
        .map_err(|e| Error::new(ErrorKind::Malformed, "stream event data is not JSON").with_source(e))?;
    let Value::Object(map) = &mut root else {
        return Err(Error::malformed("stream event data is not a JSON object"));
    };
    let decrypted = decrypt_document(ctx, ResponseShape::Chunk, map)?;
    let cleartext = cleartext_fields(ctx.endpoint, ResponseShape::Chunk, map);
    let error = in_band_error(map);
    let payload = (!decrypted.is_empty()).then(|| serde_json::to_vec(&root).expect("serialising a Value cannot fail"));
    Ok(Chunk { payload, decrypted, cleartext, error })
}
