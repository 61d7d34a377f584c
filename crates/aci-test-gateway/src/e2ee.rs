//! The gateway's E2EE v2 request validation (protocol.md §3.2, in the reference's order), replay
//! state (§3.3), request opening (§3.4–§3.6) and SSE re-framing with response sealing (§4.3).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use rand_core::OsRng;
use serde_json::{Value, json};

use crate::keyset::{Keyset, ServiceKey};
use tower_aci::__private::SseDecoder;
use tower_aci::__private::{ResponseSealer, open_request};
use tower_aci::protocol::Endpoint;
use tower_aci::protocol::SseLimits;
use tower_aci::protocol::headers;
use tower_aci::protocol::{PublicKey, Suite};

/// How long a claimed replay tuple is remembered, and the accepted timestamp skew (seconds).
pub(crate) const WINDOW_SECS: u64 = 300;

/// An error answer: status, `error.type` and `error.message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) kind: &'static str,
    pub(crate) message: Cow<'static, str>,
}

impl ApiError {
    pub(crate) fn new(status: u16, kind: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError { status, kind, message: message.into() }
    }

    fn bad(kind: &'static str, message: &'static str) -> Self {
        ApiError::new(400, kind, message)
    }

    /// `{"error":{"message":…,"type":…,"code":null,"param":null}}`.
    pub(crate) fn body(&self) -> Bytes {
        let v = json!({"error": {"message": self.message, "type": self.kind, "code": null, "param": null}});
        Bytes::from(serde_json::to_vec(&v).expect("serialising a Value cannot fail"))
    }

    pub(crate) fn header_missing() -> Self {
        ApiError::bad("e2ee_header_missing", "missing E2EE header")
    }

    pub(crate) fn decryption_failed() -> Self {
        ApiError::bad("e2ee_decryption_failed", "E2EE decryption failed")
    }

    pub(crate) fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(500, "internal_error", message)
    }
}

/// Whether any of the six headers that engage E2EE is present.
pub(crate) fn has_e2ee_headers(h: &HeaderMap) -> bool {
    headers::E2EE_REQUEST_HEADERS.iter().any(|n| h.contains_key(n))
}

fn header<'a>(h: &'a HeaderMap, name: &http::HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// A request whose E2EE headers passed steps 1–9.
#[derive(Debug)]
pub(crate) struct Validated {
    pub(crate) key: Arc<ServiceKey>,
    pub(crate) client: PublicKey,
    pub(crate) nonce: String,
    pub(crate) ts: u64,
}

impl Validated {
    pub(crate) fn suite(&self) -> Suite {
        self.key.suite()
    }
}

/// Steps 2–9 of §3.2 (step 0 and the body limit are the router's; step 1 cannot fail here since
/// the gateway always offers version `2`).
pub(crate) fn validate_headers(h: &HeaderMap, keyset: &Keyset, now: u64) -> Result<Validated, ApiError> {
    if h.contains_key(headers::SIGNING_ALGO) {
        return Err(legacy(h));
    }
    let version = header(h, &headers::E2EE_VERSION).ok_or_else(ApiError::header_missing)?;
    if version != "2" {
        return Err(ApiError::bad("e2ee_invalid_version", "invalid E2EE version"));
    }
    let client = header(h, &headers::CLIENT_PUB_KEY).ok_or_else(ApiError::header_missing)?;
    let model_key = header(h, &headers::MODEL_PUB_KEY).ok_or_else(ApiError::header_missing)?;
    let nonce = header(h, &headers::E2EE_NONCE).ok_or_else(ApiError::header_missing)?;
    let ts = header(h, &headers::E2EE_TIMESTAMP).ok_or_else(ApiError::header_missing)?;

    if nonce.len() != 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad("e2ee_invalid_nonce", "invalid E2EE nonce"));
    }
    let invalid_ts = || ApiError::bad("e2ee_invalid_timestamp", "invalid E2EE timestamp");
    let ts: u64 = ts.parse().map_err(|_| invalid_ts())?;
    if now.abs_diff(ts) > WINDOW_SECS {
        return Err(invalid_ts());
    }
    let key = keyset
        .e2ee
        .iter()
        .find(|k| PublicKey::parse(k.suite(), model_key).is_ok_and(|p| p == k.public))
        .cloned()
        .ok_or_else(|| ApiError::bad("e2ee_model_key_mismatch", "X-Model-Pub-Key does not match this ACI service"))?;
    let client = PublicKey::parse(key.suite(), client)
        .map_err(|_| ApiError::bad("e2ee_invalid_public_key", "invalid E2EE public key"))?;
    Ok(Validated { key, client, nonce: nonce.to_owned(), ts })
}

/// The legacy path (`X-Signing-Algo`, §7). This gateway publishes no legacy keys, so a
/// well-formed legacy request ends in `e2ee_model_key_mismatch`.
fn legacy(h: &HeaderMap) -> ApiError {
    let algo = header(h, &headers::SIGNING_ALGO).map(|a| a.trim().to_ascii_lowercase());
    if !matches!(algo.as_deref(), Some("ecdsa" | "ed25519")) {
        return ApiError::bad("e2ee_invalid_signing_algo", "invalid E2EE signing algorithm");
    }
    if header(h, &headers::CLIENT_PUB_KEY).is_none() || header(h, &headers::MODEL_PUB_KEY).is_none() {
        return ApiError::header_missing();
    }
    ApiError::bad("e2ee_model_key_mismatch", "X-Model-Pub-Key does not match this ACI service")
}

/// Claimed `(client key, model key, nonce)` tuples, each remembered until server `now + 300`.
#[derive(Debug, Default)]
pub(crate) struct ReplayCache {
    /// Claimed tuples with their expiry, and the second of the last sweep (expired entries are
    /// swept at most once a second; a lookup checks expiry itself).
    seen: Mutex<(HashMap<ReplayKey, u64>, u64)>,
}

/// `(client key, model key, lowercase nonce)`, keys in normalised hex.
type ReplayKey = (String, String, String);

impl ReplayCache {
    /// Claim a tuple; `false` when it was seen within the window.
    pub(crate) fn claim(&self, client: &PublicKey, model: &PublicKey, nonce: &str, now: u64) -> bool {
        let key = (client.to_hex(), model.to_hex(), nonce.to_ascii_lowercase());
        let mut guard = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (seen, swept_at) = &mut *guard;
        if *swept_at != now {
            *swept_at = now;
            seen.retain(|_, expires| *expires > now);
        }
        if seen.get(&key).is_some_and(|expires| *expires > now) {
            return false;
        }
        seen.insert(key, now.saturating_add(WINDOW_SECS));
        true
    }
}

/// A decrypted request, ready to forward.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) body: Value,
    pub(crate) bytes: Vec<u8>,
    pub(crate) model: String,
    pub(crate) sealer: ResponseSealer,
}

/// Steps 10–13 of §3.2: JSON, `model`, replay claim (the nonce is burned before decryption),
/// then field decryption and restoration.
pub(crate) fn open(
    endpoint: Endpoint,
    wire: &[u8],
    v: &Validated,
    replay: &ReplayCache,
    now: u64,
) -> Result<Opened, ApiError> {
    let parsed: Value = serde_json::from_slice(wire).map_err(|_| ApiError::decryption_failed())?;
    let model = match parsed.get("model") {
        Some(Value::String(m)) => m.clone(),
        _ => return Err(ApiError::bad("e2ee_invalid_payload_model", "invalid E2EE payload model")),
    };
    drop(parsed);
    if !replay.claim(&v.client, &v.key.public, &v.nonce, now) {
        return Err(ApiError::bad("e2ee_replay_detected", "E2EE replay detected"));
    }
    let opened =
        open_request(endpoint, wire, &v.key.secret, &v.nonce, v.ts).map_err(|_| ApiError::decryption_failed())?;
    let sealer = ResponseSealer::new(endpoint, v.client, model.clone(), v.nonce.clone(), v.ts);
    Ok(Opened { body: opened.body, bytes: opened.bytes, model, sealer })
}

/// The direct path's forwarding rewrites (§3.6): drop empty `tool_calls: []` from messages and
/// strip `provider.aci_verified` / `provider.aci_session_ids`. Returns whether anything changed.
pub(crate) fn rewrite_for_forwarding(body: &mut Value) -> bool {
    let Value::Object(map) = body else { return false };
    let mut changed = false;
    if let Some(Value::Array(messages)) = map.get_mut("messages") {
        for m in messages.iter_mut().filter_map(Value::as_object_mut) {
            if matches!(m.get("tool_calls"), Some(Value::Array(a)) if a.is_empty()) {
                m.remove("tool_calls");
                changed = true;
            }
        }
    }
    if let Some(Value::Object(provider)) = map.get_mut("provider") {
        for k in ["aci_verified", "aci_session_ids"] {
            changed |= provider.remove(k).is_some();
        }
    }
    changed
}

/// The event the gateway appends after an upstream transport error (§4.3).
pub(crate) const TRANSPORT_ERROR_EVENT: &[u8] = b"data: {\"error\":{\"message\":\"The upstream provider returned an error\",\"type\":\"upstream_error\",\"code\":502,\"param\":null}}\n\n";
/// The terminal event.
pub(crate) const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// One step of [`Reframer`].
#[derive(Debug)]
pub(crate) enum Framed {
    /// Bytes to emit, and how many fields were sealed in them.
    Event(Bytes, usize),
    /// End the stream now, with no receipt (a non-JSON data event under E2EE, an oversized or
    /// unsealable event).
    Abort,
}

/// Re-frames an upstream SSE stream event by event as the reference does: comments and other
/// data-less events verbatim, `[DONE]` verbatim, JSON data sealed (when a sealer is given) and
/// re-emitted as one `data: <compact JSON>` line after the event's other lines.
#[derive(Debug)]
pub(crate) struct Reframer {
    decoder: SseDecoder,
    sealer: Option<ResponseSealer>,
    saw_done: bool,
    in_band_error: bool,
    first_id: Option<Option<String>>,
    out: BytesMut,
}

impl Reframer {
    pub(crate) fn new(sealer: Option<ResponseSealer>) -> Self {
        Reframer {
            decoder: SseDecoder::new(SseLimits::default()),
            sealer,
            saw_done: false,
            in_band_error: false,
            first_id: None,
            out: BytesMut::new(),
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.decoder.push(chunk);
    }

    /// The next re-framed event, `None` when more input is needed.
    pub(crate) fn next(&mut self) -> Option<Framed> {
        let event = match self.decoder.next_event() {
            Ok(Some(e)) => e,
            Ok(None) => return None,
            Err(_) => return Some(Framed::Abort),
        };
        let Some(data) = event.data() else {
            event.encode(None, &mut self.out);
            return Some(Framed::Event(self.out.split().freeze(), 0));
        };
        if event.is_done() {
            self.saw_done = true;
            event.encode(None, &mut self.out);
            return Some(Framed::Event(self.out.split().freeze(), 0));
        }
        let mut value: Value = match serde_json::from_slice(&data) {
            Ok(v) => v,
            Err(_) if self.sealer.is_some() => return Some(Framed::Abort),
            Err(_) => {
                event.encode(None, &mut self.out);
                return Some(Framed::Event(self.out.split().freeze(), 0));
            }
        };
        if self.first_id.is_none() {
            self.first_id = Some(value.get("id").and_then(Value::as_str).map(str::to_owned));
        }
        if value.get("error").is_some() {
            self.in_band_error = true;
        }
        let Some(sealer) = &self.sealer else {
            event.encode(None, &mut self.out);
            return Some(Framed::Event(self.out.split().freeze(), 0));
        };
        let sealed = match sealer.seal_chunk(&mut value, &mut OsRng) {
            Ok(n) => n,
            Err(_) => return Some(Framed::Abort),
        };
        let payload = serde_json::to_vec(&value).expect("serialising a Value cannot fail");
        event.encode(Some(&payload), &mut self.out);
        Some(Framed::Event(self.out.split().freeze(), sealed))
    }

    /// At a clean upstream close: whether the stream stopped inside an event (the partial event
    /// is discarded and nothing is appended).
    pub(crate) fn ended_mid_event(&mut self) -> bool {
        self.decoder.finish().is_err()
    }

    /// Whether a clean close needs the gateway's own `[DONE]`.
    pub(crate) fn needs_done(&self) -> bool {
        !self.saw_done && !self.in_band_error
    }

    /// The receipt's `chat_id`: the first JSON chunk's string `id`.
    pub(crate) fn chat_id(&self) -> Option<String> {
        self.first_id.clone().flatten()
    }
}

/// Flip the last hex digit of the first ciphertext-sized run of lowercase hex in `bytes` (for
/// the tamper fault). `None` when there is no such run.
pub(crate) fn tamper(bytes: &[u8]) -> Option<Bytes> {
    const MIN_RUN: usize = 120; // the shortest field blob (60 bytes) in hex
    let is_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    let mut start = 0;
    while start < bytes.len() {
        if !is_hex(bytes[start]) {
            start += 1;
            continue;
        }
        let end = bytes[start..].iter().position(|&b| !is_hex(b)).map_or(bytes.len(), |p| start + p);
        if end - start >= MIN_RUN {
            let mut out = bytes.to_vec();
            out[end - 1] = if out[end - 1] == b'0' { b'1' } else { b'0' };
            return Some(out.into());
        }
        start = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyset::{RECEIPT_KEY_ID, e2ee_keys, receipt_key};
    use http::HeaderValue;

    fn keyset() -> Keyset {
        Keyset::seal(RECEIPT_KEY_ID, receipt_key(true), e2ee_keys(true), 2_000_000_000, vec![])
    }

    fn headers(pairs: &[(&http::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert((*k).clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn validation_order() {
        let ks = keyset();
        let x = ks.e2ee[1].public.to_hex();
        let nonce = "ab".repeat(32);
        let kind = |h: HeaderMap| validate_headers(&h, &ks, 1000).unwrap_err().kind;
        assert_eq!(kind(headers(&[(&headers::E2EE_NONCE, &nonce)])), "e2ee_header_missing");
        assert_eq!(kind(headers(&[(&headers::E2EE_VERSION, "1")])), "e2ee_invalid_version");
        assert_eq!(kind(headers(&[(&headers::E2EE_VERSION, "2")])), "e2ee_header_missing");
        assert_eq!(kind(headers(&[(&headers::SIGNING_ALGO, "rsa")])), "e2ee_invalid_signing_algo");
        let full = |n: &str, ts: &str, model: &str, client: &str| {
            headers(&[
                (&headers::E2EE_VERSION, "2"),
                (&headers::CLIENT_PUB_KEY, client),
                (&headers::MODEL_PUB_KEY, model),
                (&headers::E2EE_NONCE, n),
                (&headers::E2EE_TIMESTAMP, ts),
            ])
        };
        let client = "11".repeat(32);
        assert_eq!(kind(full("zz", "x", "bad", "bad")), "e2ee_invalid_nonce");
        assert_eq!(kind(full(&nonce, "-1", "bad", "bad")), "e2ee_invalid_timestamp");
        assert_eq!(kind(full(&nonce, "1301", "bad", "bad")), "e2ee_invalid_timestamp");
        assert!(validate_headers(&full(&nonce, "+0700", &x, &client), &ks, 1000).is_ok());
        assert_eq!(kind(full(&nonce, "1300", "bad", "bad")), "e2ee_model_key_mismatch");
        assert_eq!(kind(full(&nonce, "1300", &format!("0X{x}"), "bad")), "e2ee_model_key_mismatch");
        assert_eq!(kind(full(&nonce, "1300", &x, &ks.e2ee[0].public.to_hex())), "e2ee_invalid_public_key");
        let v =
            validate_headers(&full(&nonce, "1300", &format!("0x{}", x.to_uppercase()), &client), &ks, 1000).unwrap();
        assert_eq!(v.suite(), Suite::X25519);
        let secp64 = &ks.e2ee[0].public.to_hex()[2..];
        let v = validate_headers(&full(&nonce, "1300", secp64, &ks.e2ee[0].public.to_hex()), &ks, 1000).unwrap();
        assert_eq!(v.key.key_id, "dstack-kms-e2ee-v1");
    }

    #[test]
    fn replay_is_case_insensitive_and_expires() {
        let ks = keyset();
        let r = ReplayCache::default();
        let (c, m) = (&ks.e2ee[1].public, &ks.e2ee[1].public);
        assert!(r.claim(c, m, &"AB".repeat(32), 10));
        assert!(!r.claim(c, m, &"ab".repeat(32), 309));
        assert!(r.claim(c, m, &"ab".repeat(32), 310));
    }

    #[test]
    fn tamper_flips_one_digit_of_a_long_run() {
        let ct = "ab".repeat(60);
        let input = format!("data: {{\"id\":\"chatcmpl-abc\",\"c\":\"{ct}\"}}\n\n");
        let out = tamper(input.as_bytes()).unwrap();
        let diff = input.bytes().zip(out.iter()).filter(|(a, b)| a != *b).count();
        assert_eq!(diff, 1);
        assert!(tamper(b"data: {\"id\":\"abc\"}\n\n").is_none());
    }

    #[test]
    fn reframer_rules() {
        let mut r = Reframer::new(None);
        r.push(b": PROCESSING\r\n\r\n\n\nevent: x\ndata: {\"id\":\"a\",\n");
        let Some(Framed::Event(b, 0)) = r.next() else { panic!() };
        assert_eq!(&b[..], b": PROCESSING\n\n");
        assert!(r.next().is_none());
        r.push(b"data: \"k\":1}\n\ndata:[DONE]\n\n");
        let Some(Framed::Event(b, 0)) = r.next() else { panic!() };
        assert_eq!(&b[..], b"event: x\ndata: {\"id\":\"a\",\ndata: \"k\":1}\n\n");
        let Some(Framed::Event(b, 0)) = r.next() else { panic!() };
        assert_eq!(&b[..], b"data:[DONE]\n\n");
        assert!(!r.needs_done());
        assert_eq!(r.chat_id().as_deref(), Some("a"));
        assert!(!r.ended_mid_event());
    }
}
