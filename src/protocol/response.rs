//! Response decryption: buffered JSON documents and single SSE chunks.
//!
//! Every field the protocol protects must arrive as ciphertext: a clear string (or any
//! non-string, non-null value) in a protected place is [`ErrorKind::MissingEncryption`], never
//! passed through. Bodies that legitimately carry no protected field (error documents,
//! usage-only bodies) come back unchanged.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::fields::{ResponseShape, ResponseSlot, cleartext_fields, walk_response};
use crate::protocol::request::ExchangeContext;
use crate::protocol::suite::open;

/// A decrypted response document.
#[derive(Debug, Clone)]
pub struct DecryptedBody {
    /// The body with every protected field in clear (unchanged bytes when nothing was encrypted).
    pub body: Bytes,
    /// How many fields were decrypted.
    pub decrypted_fields: usize,
    /// Paths of generated content the gateway sent in clear (tool-call arguments, refusals,
    /// logprobs, …); empty when none.
    pub cleartext_fields: Vec<String>,
}

/// The string `id` of a response or chunk, or `""`.
fn response_id(root: &Map<String, Value>) -> String {
    root.get("id").and_then(Value::as_str).unwrap_or("").to_owned()
}

/// Decrypt the protected fields of one parsed document in place. Returns how many were opened.
pub(crate) fn decrypt_document(
    ctx: &ExchangeContext,
    shape: ResponseShape,
    root: &mut Map<String, Value>,
) -> Result<usize> {
    let id = response_id(root);
    let mut count = 0;
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
        count += 1;
        Ok(())
    })?;
    Ok(count)
}

/// Decrypt a buffered JSON response of the exchange `ctx`.
///
/// ```
/// # use tower_aci::protocol::{request::*, response::*, suite::*, keys::E2eeKey};
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
    let decrypted_fields = decrypt_document(ctx, ResponseShape::Buffered, map)?;
    let cleartext_fields = cleartext_fields(ctx.endpoint, ResponseShape::Buffered, map);
    let body = if decrypted_fields == 0 {
        body
    } else {
        Bytes::from(serde_json::to_vec(&root).expect("serialising a Value cannot fail"))
    };
    Ok(DecryptedBody { body, decrypted_fields, cleartext_fields })
}

/// The outcome of decrypting one SSE chunk's JSON payload.
#[derive(Debug)]
pub(crate) enum ChunkOutcome {
    /// Nothing was encrypted: re-emit the payload unchanged.
    Unchanged { cleartext: Vec<String> },
    /// The decrypted payload, re-serialised.
    Decrypted { payload: Vec<u8>, cleartext: Vec<String> },
    /// An in-band `{"error": …}` event: its `type` and `message`.
    InBandError { error_type: String, message: String },
}

/// Decrypt one SSE chunk payload (`data:` JSON).
pub(crate) fn decrypt_chunk(ctx: &ExchangeContext, payload: &[u8]) -> Result<ChunkOutcome> {
    let mut root: Value = serde_json::from_slice(payload)
        .map_err(|e| Error::new(ErrorKind::Malformed, "stream event data is not JSON").with_source(e))?;
    let Value::Object(map) = &mut root else {
        return Err(Error::malformed("stream event data is not a JSON object"));
    };
    if let Some(err) = map.get("error") {
        let t = err.get("type").and_then(Value::as_str).unwrap_or("error");
        let m = err.get("message").and_then(Value::as_str).unwrap_or("");
        return Ok(ChunkOutcome::InBandError { error_type: t.to_owned(), message: m.to_owned() });
    }
    let n = decrypt_document(ctx, ResponseShape::Chunk, map)?;
    let cleartext = cleartext_fields(ctx.endpoint, ResponseShape::Chunk, map);
    if n == 0 {
        Ok(ChunkOutcome::Unchanged { cleartext })
    } else {
        Ok(ChunkOutcome::Decrypted {
            payload: serde_json::to_vec(&root).expect("serialising a Value cannot fail"),
            cleartext,
        })
    }
}
