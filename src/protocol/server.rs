//! The gateway's halves of E2EE v2: open request fields and seal response fields, exactly as the
//! reference gateway does (protocol.md §3.4–§3.6, §4). Not public API: the local test gateway
//! (crate `aci-test-gateway`), the fuzz targets and the tests reach it through
//! [`crate::__private`]. It lives here, beside the client's halves, because both walk the same
//! fields with the same walkers (`protocol::fields`), so a test against these halves alone proves
//! consistency, not correctness (the spec's vectors and the reference exchanges do that).

use rand_core::CryptoRngCore;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::Endpoint;
use crate::protocol::aad;
use crate::protocol::fields::{ResponseShape, walk_request, walk_response};
use crate::protocol::request::restore_field;
use crate::protocol::suite::{PublicKey, SecretKey, Suite, open, seal};

/// A request body after the gateway decrypted it.
#[derive(Debug)]
#[non_exhaustive]
pub struct OpenedRequest {
    /// The restored document.
    pub body: Value,
    /// `serde_json::to_vec` of the restored document: what is forwarded and what
    /// `request.received.body_hash` is computed over.
    pub bytes: Vec<u8>,
    /// How many fields were decrypted.
    pub fields: usize,
}

/// Decrypt an E2EE v2 request body with the service's secret key. `nonce` is the
/// `X-E2EE-Nonce` header verbatim and `ts` the parsed timestamp. Every failure the reference
/// reports as `e2ee_decryption_failed` is an error here (structure, a field in clear, a bad tag,
/// no field at all); a body that is not JSON or lacks a string `model` is `Malformed`.
pub fn open_request(
    endpoint: Endpoint,
    wire: &[u8],
    service: &SecretKey,
    nonce: &str,
    ts: u64,
) -> Result<OpenedRequest> {
    let mut root: Value = serde_json::from_slice(wire).map_err(|_| Error::malformed("body is not JSON"))?;
    let suite = service.suite();
    let Value::Object(map) = &mut root else { return Err(Error::malformed("body is not an object")) };
    let model = match map.get("model") {
        Some(Value::String(m)) => m.clone(),
        _ => return Err(Error::malformed("`model` missing or not a string")),
    };
    let fields = walk_request(endpoint, map, &mut |path, kind, slot| {
        let Value::String(s) = slot else { return Err(Error::decrypt()) };
        let plain = open(service, s, &aad::request(suite, path, &model, nonce, ts)).map_err(|_| Error::decrypt())?;
        let plain = String::from_utf8(plain).map_err(|_| Error::decrypt())?;
        *slot = restore_field(kind, plain);
        Ok(())
    })
    .map_err(|e| match e.kind() {
        ErrorKind::UnsupportedBody => Error::decrypt().with_source(e),
        _ => e,
    })?;
    let bytes = serde_json::to_vec(&root).expect("serialising a Value cannot fail");
    Ok(OpenedRequest { body: root, bytes, fields })
}

/// Seals response fields to the client's key of one exchange.
#[derive(Debug, Clone)]
pub struct ResponseSealer {
    endpoint: Endpoint,
    client: PublicKey,
    model: String,
    nonce: String,
    ts: u64,
}

impl ResponseSealer {
    /// A sealer for the exchange: the client's public key (same suite as the service key the
    /// request matched), the request's `model`, the nonce header verbatim and the timestamp.
    pub fn new(
        endpoint: Endpoint,
        client: PublicKey,
        model: impl Into<String>,
        nonce: impl Into<String>,
        ts: u64,
    ) -> Self {
        ResponseSealer { endpoint, client, model: model.into(), nonce: nonce.into(), ts }
    }

    /// The suite responses are sealed under.
    pub fn suite(&self) -> Suite {
        self.client.suite()
    }

    /// Seal a buffered response document in place. A protected field holding a non-string
    /// (e.g. a content array) is an error, as on the reference gateway.
    pub fn seal_document(&self, root: &mut Value, rng: &mut impl CryptoRngCore) -> Result<usize> {
        self.seal(ResponseShape::Buffered, root, rng)
    }

    /// Seal one SSE chunk in place; `delta.content: ""` is removed first, as the reference does.
    pub fn seal_chunk(&self, root: &mut Value, rng: &mut impl CryptoRngCore) -> Result<usize> {
        self.seal(ResponseShape::Chunk, root, rng)
    }

    fn seal(&self, shape: ResponseShape, root: &mut Value, rng: &mut impl CryptoRngCore) -> Result<usize> {
        let Value::Object(map) = root else { return Ok(0) };
        let id = map.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
        let mut count = 0;
        walk_response(self.endpoint, shape, map, &mut |path, slot| {
            let value = slot.parent.get_mut(slot.key).expect("present");
            let plain: Vec<u8> = match value {
                Value::Null => return Ok(()),
                Value::String(s) if shape == ResponseShape::Chunk && s.is_empty() && slot.key == "content" => {
                    slot.parent.remove("content");
                    return Ok(());
                }
                v if slot.json => serde_json::to_vec(v).expect("serialising a Value cannot fail"),
                Value::String(s) => std::mem::take(s).into_bytes(),
                _ => return Err(Error::malformed("E2EE encryption failed")),
            };
            let aad = aad::response(self.suite(), path, &id, &self.model, &self.nonce, self.ts);
            *slot.parent.get_mut(slot.key).expect("present") = Value::String(seal(&self.client, &plain, &aad, rng));
            count += 1;
            Ok(())
        })?;
        Ok(count)
    }
}
