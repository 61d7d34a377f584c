//! Signed receipts (protocol.md §5): building, signing, storing and serving them.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use rand_core::{OsRng, RngCore};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use const_hex as hex;
use tower_aci::__private::jcs_to_vec;
use tower_aci::error::{Error, Result};

/// How long a receipt is kept (seconds of the gateway clock), as the reference does.
pub(crate) const RETENTION_SECS: u64 = 3600;

/// Sign a receipt document and return its served bytes.
///
/// `unsigned` is the receipt object without `signature` (a `signature` member, if present, is
/// ignored). `key_id` is inserted (replacing any present), the JCS form of the document is
/// signed with Ed25519, the lowercase hex signature is added as `signature`, and the JCS form of
/// the complete document is returned: exactly the bytes `GET /v1/aci/receipts/{id}` serves.
///
/// # Errors
///
/// `Config` when `unsigned` is not an object; `Malformed` when it cannot be canonicalised (a
/// float, a non-ASCII member name).
///
/// ```
/// use serde_json::json;
/// use aci_test_gateway::sign_receipt;
///
/// let key = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
/// let doc = sign_receipt(&json!({"api_version": "aci/1", "receipt_id": "rcpt-0001"}), "receipt-1", &key)?;
/// let text = String::from_utf8(doc).unwrap();
/// assert!(text.starts_with(r#"{"api_version":"aci/1","key_id":"receipt-1","receipt_id":"rcpt-0001","signature":""#));
/// # Ok::<(), tower_aci::Error>(())
/// ```
pub fn sign_receipt(unsigned: &Value, key_id: &str, key: &SigningKey) -> Result<Vec<u8>> {
    let Value::Object(map) = unsigned else { return Err(Error::config("a receipt must be a JSON object")) };
    let mut map: Map<String, Value> = map.clone();
    map.remove("signature");
    map.insert("key_id".into(), Value::String(key_id.to_owned()));
    let mut doc = Value::Object(map);
    let signing_input = jcs_to_vec(&doc)?;
    let signature = key.sign(&signing_input);
    if let Value::Object(m) = &mut doc {
        m.insert("signature".into(), Value::String(hex::encode(signature.to_bytes())));
    }
    jcs_to_vec(&doc)
}

/// `sha256:<hex>` of a digest, as receipts spell hashes (tower-aci's verifier compares the same
/// spelling).
pub(crate) fn hash_string(digest: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(digest))
}

/// The bearer token of an `Authorization` header (`Bearer ` or `bearer ` prefix, as the
/// reference gateway accepts them; trimmed; `None` when absent or empty). Receipts are owned by
/// this token (protocol.md §5.5).
fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
    (!token.is_empty()).then_some(token)
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn body_hash(bytes: &[u8]) -> String {
    hash_string(&Sha256::digest(bytes).into())
}

/// A fresh receipt id: `rcpt-` + 24 lowercase hex.
pub(crate) fn new_receipt_id() -> String {
    let mut b = [0u8; 12];
    OsRng.fill_bytes(&mut b);
    format!("rcpt-{}", hex::encode(b))
}

/// The bearer token of a request (`Bearer ` or `bearer ` prefix, trimmed, non-empty), hashed:
/// the store never keeps credentials.
pub(crate) fn owner_of(headers: &http::HeaderMap) -> Option<[u8; 32]> {
    let token = bearer_token(headers)?;
    Some(Sha256::digest(token.as_bytes()).into())
}

/// Everything a receipt names except what the response decides.
#[derive(Debug, Clone)]
pub(crate) struct PendingReceipt {
    pub(crate) receipt_id: String,
    pub(crate) endpoint: String,
    pub(crate) model: Option<String>,
    pub(crate) keyset_digest: String,
    pub(crate) received_hash: String,
    pub(crate) forwarded_hash: String,
    pub(crate) owner: Option<[u8; 32]>,
}

impl PendingReceipt {
    /// The document without `key_id` and `signature`.
    fn document(&self, chat_id: Option<&str>, response_hash: &str, served_at: u64) -> Value {
        json!({
            "api_version": "aci/1",
            "receipt_id": self.receipt_id,
            "chat_id": chat_id,
            "model": self.model,
            "workload_keyset_digest": self.keyset_digest,
            "endpoint": self.endpoint,
            "method": "POST",
            "served_at": served_at,
            "event_log": [
                {"type": "request.received", "body_hash": self.received_hash},
                {"type": "request.forwarded", "body_hash": self.forwarded_hash},
                {"type": "response.returned", "body_hash": response_hash},
            ],
        })
    }
}

struct Stored {
    doc: Bytes,
    owner: Option<[u8; 32]>,
    expires: u64,
}

/// Why a receipt fetch failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FetchError {
    /// Owned receipt, no credential: 401.
    Unauthorized,
    /// Missing, expired, or another credential: 404.
    NotFound,
}

/// In-memory receipts by receipt id, with a response-id index.
#[derive(Default)]
pub(crate) struct ReceiptStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Stored>,
    by_chat_id: HashMap<String, String>,
    /// The second of the last sweep: expired entries are swept at most once a second (a sweep
    /// is linear in the store), and lookups check expiry themselves.
    pruned_at: u64,
}

impl Inner {
    fn prune(&mut self, now: u64) {
        if now == self.pruned_at {
            return;
        }
        self.pruned_at = now;
        self.by_id.retain(|_, s| s.expires > now);
        let by_id = &self.by_id;
        self.by_chat_id.retain(|_, rid| by_id.contains_key(rid));
    }
}

impl ReceiptStore {
    /// Sign and store the receipt of a completed exchange. Returns the stored bytes.
    pub(crate) fn store(
        &self,
        pending: &PendingReceipt,
        chat_id: Option<&str>,
        response_hash: &str,
        now: u64,
        key_id: &str,
        key: &SigningKey,
    ) -> Bytes {
        let doc = pending.document(chat_id, response_hash, now);
        let bytes = Bytes::from(sign_receipt(&doc, key_id, key).expect("receipts hold only strings, integers, null"));
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.prune(now);
        if let Some(c) = chat_id {
            inner.by_chat_id.insert(c.to_owned(), pending.receipt_id.clone());
        }
        inner.by_id.insert(
            pending.receipt_id.clone(),
            Stored { doc: bytes.clone(), owner: pending.owner, expires: now.saturating_add(RETENTION_SECS) },
        );
        bytes
    }

    /// Fetch by receipt id, then by response id, under the bearer ownership rules (§5.5).
    pub(crate) fn fetch(&self, id: &str, caller: Option<[u8; 32]>, now: u64) -> std::result::Result<Bytes, FetchError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.prune(now);
        let stored = match inner.by_id.get(id) {
            Some(s) => s,
            None => {
                let rid = inner.by_chat_id.get(id).ok_or(FetchError::NotFound)?;
                inner.by_id.get(rid).ok_or(FetchError::NotFound)?
            }
        };
        if stored.expires <= now {
            return Err(FetchError::NotFound);
        }
        match (stored.owner, caller) {
            (None, _) => Ok(stored.doc.clone()),
            (Some(_), None) => Err(FetchError::Unauthorized),
            (Some(o), Some(c)) if o == c => Ok(stored.doc.clone()),
            (Some(_), Some(_)) => Err(FetchError::NotFound),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(owner: Option<[u8; 32]>) -> PendingReceipt {
        PendingReceipt {
            receipt_id: new_receipt_id(),
            endpoint: "/v1/chat/completions".into(),
            model: Some("m".into()),
            keyset_digest: "sha256:00".into(),
            received_hash: body_hash(b"a"),
            forwarded_hash: body_hash(b"a"),
            owner,
        }
    }

    #[test]
    fn receipt_ids_have_the_reference_shape() {
        let id = new_receipt_id();
        assert_eq!(id.len(), 5 + 24);
        assert!(id[5..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn ownership_and_expiry() {
        let store = ReceiptStore::default();
        let key = SigningKey::from_bytes(&[1; 32]);
        let owner = Some(Sha256::digest(b"tok").into());
        let p = pending(owner);
        store.store(&p, Some("chat-1"), &body_hash(b""), 100, "k", &key);
        assert_eq!(store.fetch(&p.receipt_id, None, 100), Err(FetchError::Unauthorized));
        assert_eq!(store.fetch(&p.receipt_id, Some([0; 32]), 100), Err(FetchError::NotFound));
        assert!(store.fetch(&p.receipt_id, owner, 100).is_ok());
        assert!(store.fetch("chat-1", owner, 100).is_ok());
        assert_eq!(store.fetch("nope", owner, 100), Err(FetchError::NotFound));
        assert_eq!(store.fetch(&p.receipt_id, owner, 100 + RETENTION_SECS), Err(FetchError::NotFound));
    }

    #[test]
    fn bearer_prefixes() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "bearer  t ".parse().unwrap());
        assert_eq!(owner_of(&h), Some(Sha256::digest(b"t").into()));
        h.insert(http::header::AUTHORIZATION, "Basic t".parse().unwrap());
        assert_eq!(owner_of(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(owner_of(&h), None);
    }
}
