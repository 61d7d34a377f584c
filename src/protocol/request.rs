//! Request rewriting: encrypt the protected fields of an OpenAI-style body.
//!
//! ```
//! use tower_aci::protocol::E2eeKey;
//! use tower_aci::protocol::{encrypt_request, Endpoint, EncryptOptions};
//! use tower_aci::protocol::{SecretKey, Suite};
//!
//! # let service = SecretKey::generate(Suite::Secp256k1, &mut rand_core::OsRng);
//! # let key = E2eeKey::parse("dstack-kms-e2ee-v1", Suite::Secp256k1.algo(), service.public_key().to_hex()).unwrap();
//! let body = br#"{"model":"m","messages":[{"role":"user","content":"secret"}]}"#;
//! let req = encrypt_request(
//!     Endpoint::ChatCompletions, body, &key, &EncryptOptions::default(),
//!     1_750_000_000, &mut rand_core::OsRng,
//! ).unwrap();
//! assert!(!String::from_utf8_lossy(&req.body).contains("secret"));
//! assert_eq!(req.headers["x-e2ee-nonce"].len(), 64);
//! ```

use std::fmt;

use http::{HeaderMap, HeaderValue};
use rand_core::CryptoRngCore;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::error::{Error, ErrorKind, Result};
use crate::hex;
use crate::protocol::endpoint::Endpoint;
use crate::protocol::fields::{RequestField, walk_request};
use crate::protocol::keys::E2eeKey;
use crate::protocol::suite::{SecretKey, Suite, seal};
use crate::protocol::{aad, headers};

/// Options of [`encrypt_request`]: `EncryptOptions::default()` (not strict), then setters.
///
/// ```
/// use tower_aci::protocol::EncryptOptions;
///
/// let options = EncryptOptions::default().strict(true);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct EncryptOptions {
    /// See [`EncryptOptions::strict`].
    pub(crate) strict: bool,
}

impl EncryptOptions {
    /// Strict mode: refuse requests carrying members that travel in clear and are not known to
    /// carry nothing private, with [`ErrorKind::Cleartext`]. Off by default. The allow-list:
    /// `model`; sampling parameters and limits as numbers (`temperature`, `top_p`, `top_k`,
    /// `min_p`, penalties, `seed`, `n`, `max_tokens`, `max_completion_tokens`, `top_logprobs`,
    /// `best_of`, `dimensions`); flags as booleans (`stream`, `store`, `echo`,
    /// `parallel_tool_calls`, `logprobs`); short identifiers (`reasoning_effort`,
    /// `service_tier`, `encoding_format`, `modalities`); `stream_options` of booleans;
    /// `provider` holding only `aci_verified` and `aci_session_ids`; on chat completions and
    /// completions `cache_salt` as an opaque token (1 to 256 characters of letters, digits and
    /// `_.:+/=-`: the prefix-cache partition of vLLM-style servers, which the gateway keeps);
    /// message `role`, `content` (a string or part array, which are encrypted) and
    /// `tool_call_id`. Anything else — `stop`, `user`, `logit_bias`, `suffix`, `audio`,
    /// `metadata`, `tools`, `response_format`, message `name` or `tool_calls`, a `content`
    /// object, token ids in a `prompt`/`input` array, members unknown today — is refused.
    #[must_use]
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }
}

/// The five E2EE v2 request headers (protocol.md §3), values marked sensitive (never logged by
/// hyper's `Debug`): `X-E2EE-Version: 2`, `X-Client-Pub-Key` (lowercase hex, the 65-byte form for
/// secp256k1), `X-Model-Pub-Key` (the keyset entry's string verbatim), `X-E2EE-Nonce` (64
/// lowercase hex chars from 32 CSPRNG bytes) and `X-E2EE-Timestamp` (Unix seconds).
fn e2ee_headers(client_pub_key: String, model_pub_key: &str, nonce: &str, timestamp: u64) -> Result<HeaderMap> {
    let sensitive = |mut v: HeaderValue| {
        v.set_sensitive(true);
        v
    };
    let text = |s: String| {
        HeaderValue::from_maybe_shared(bytes::Bytes::from(s))
            .map(sensitive)
            .map_err(|_| Error::malformed("an E2EE header value is not a valid header value"))
    };
    let mut h = HeaderMap::with_capacity(5);
    h.insert(headers::E2EE_VERSION, HeaderValue::from_static("2"));
    h.insert(headers::CLIENT_PUB_KEY, text(client_pub_key)?);
    h.insert(headers::MODEL_PUB_KEY, text(model_pub_key.to_owned())?);
    h.insert(headers::E2EE_NONCE, text(nonce.to_owned())?);
    h.insert(headers::E2EE_TIMESTAMP, sensitive(HeaderValue::from(timestamp)));
    Ok(h)
}

/// What the client keeps to decrypt the answer of one exchange. Holds the client's secret key:
/// zeroized on drop, never printed.
pub struct ExchangeContext {
    pub(crate) endpoint: Endpoint,
    pub(crate) client_secret: SecretKey,
    pub(crate) model: String,
    pub(crate) nonce: String,
    pub(crate) ts: u64,
    /// The request asked for a stream (`"stream": true`, never for embeddings).
    pub(crate) stream: bool,
    /// What every response AAD of the exchange ends with ([`aad::response_tail`]).
    pub(crate) aad_tail: Box<[u8]>,
}

impl ExchangeContext {
    /// Build a context by hand (for servers and tests; the client gets one from
    /// [`encrypt_request`]).
    #[doc(hidden)] // for the test gateway, the benches and the vector tests: not API
    pub fn new(
        endpoint: Endpoint,
        client_secret: SecretKey,
        model: impl Into<String>,
        nonce: impl Into<String>,
        ts: u64,
    ) -> Self {
        let (model, nonce) = (model.into(), nonce.into());
        let aad_tail = aad::response_tail(&model, &nonce, ts);
        ExchangeContext { endpoint, client_secret, model, nonce, ts, stream: false, aad_tail }
    }

    /// Whether the request asked for a stream: `"stream": true` on chat or completions (the
    /// gateway answers embeddings buffered whatever `stream` says). Its answer must then be
    /// `text/event-stream`, and any other request's answer must not be.
    #[doc(hidden)] // for the test gateway and the crate's own tests: not API
    pub fn stream(&self) -> bool {
        self.stream
    }

    /// The endpoint of the exchange.
    #[doc(hidden)] // for the test gateway and the crate's own tests: not API
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// The suite of the exchange (responses come back under the request's suite).
    #[doc(hidden)] // for the test gateway and the crate's own tests: not API
    pub fn suite(&self) -> Suite {
        self.client_secret.suite()
    }

    /// The request's `model` string, which response AADs use.
    #[doc(hidden)] // for the test gateway and the crate's own tests: not API
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The `X-E2EE-Nonce` string verbatim.
    #[doc(hidden)] // for the test gateway and the crate's own tests: not API
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// The `X-E2EE-Timestamp` value.
    #[doc(hidden)] // for the test gateway and the crate's own tests: not API
    pub fn timestamp(&self) -> u64 {
        self.ts
    }

    pub(crate) fn response_aad(&self, field: &str, id: &str) -> Vec<u8> {
        aad::response_with_tail(self.suite(), field, id, &self.aad_tail)
    }
}

impl fmt::Debug for ExchangeContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeContext")
            .field("endpoint", &self.endpoint)
            .field("suite", &self.suite())
            .field("model", &self.model)
            .field("nonce", &self.nonce)
            .field("ts", &self.ts)
            .field("stream", &self.stream)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// An encrypted request, ready to send.
#[derive(Debug)]
#[non_exhaustive]
pub struct EncryptedRequest {
    /// The wire body.
    pub body: Vec<u8>,
    /// The five `X-E2EE-*` request headers, names and values, to set on the request (replacing
    /// any of the same name). Send no `X-Signing-Algo`: it selects the legacy protocol.
    pub headers: HeaderMap,
    /// The context that decrypts the answer.
    pub context: ExchangeContext,
    /// SHA-256 of the body the gateway will restore after decrypting (protocol.md §5.3): what the
    /// receipt's `request.received.body_hash` must name.
    pub restored_body_sha256: [u8; 32],
    /// How many fields were encrypted.
    pub fields: usize,
    /// Members of the request that travel in clear and are not known to carry nothing private
    /// (names and paths such as `stop` or `messages.0.name`, never values; at most 64). Strict
    /// mode refuses a request with any; otherwise the E2EE layer warns about them once per
    /// request.
    pub clear_members: Vec<String>,
}

/// How the value of a member on the strict allow-list must look to carry nothing private. `null`
/// always qualifies.
#[derive(Clone, Copy)]
enum Shape {
    /// Anything (the `model`, which travels in clear by protocol, and the encrypted members,
    /// which the walker checks).
    Any,
    /// A number.
    Number,
    /// A boolean.
    Bool,
    /// A number or a boolean (`logprobs` is a boolean in chat, a number in completions).
    Scalar,
    /// A short identifier: 1 to 64 characters of `[A-Za-z0-9_.:-]`, no spaces (`"low"`,
    /// `"base64"`, `"auto"`, a tool-call id).
    Word,
    /// An array of [`Shape::Word`]s.
    Words,
    /// An opaque token: 1 to 256 characters of `[A-Za-z0-9_.:+/=-]`, no spaces (a random salt
    /// in hex, base64 or base64url; never a sentence).
    Token,
    /// An object whose members are all booleans (`stream_options`).
    Flags,
    /// `provider` holding only the ACI serving constraints
    /// ([`pin_sessions`](crate::receipt::pin_sessions)): `aci_verified` (a boolean) and
    /// `aci_session_ids` (session ids).
    AciProvider,
}

/// Request members, on every endpoint, known to carry nothing private: sampling parameters,
/// limits, flags. Everything else a request may hold (`stop`, `user`, `logit_bias`, `metadata`,
/// `tools`, `response_format`, `prediction`, `audio`, `suffix`, members unknown today) travels
/// in clear and may carry the user's text.
const ALLOWED_COMMON: &[(&str, Shape)] = &[
    ("model", Shape::Any),
    ("stream", Shape::Bool),
    ("stream_options", Shape::Flags),
    ("n", Shape::Number),
    ("max_tokens", Shape::Number),
    ("seed", Shape::Number),
    ("temperature", Shape::Number),
    ("top_p", Shape::Number),
    ("top_k", Shape::Number),
    ("min_p", Shape::Number),
    ("presence_penalty", Shape::Number),
    ("frequency_penalty", Shape::Number),
    ("repetition_penalty", Shape::Number),
    ("logprobs", Shape::Scalar),
    ("top_logprobs", Shape::Number),
    ("service_tier", Shape::Word),
    ("store", Shape::Bool),
    ("provider", Shape::AciProvider),
];
/// Chat-only members on the allow-list (`messages` is checked member by member).
const ALLOWED_CHAT: &[(&str, Shape)] = &[
    ("messages", Shape::Any),
    ("cache_salt", Shape::Token),
    ("max_completion_tokens", Shape::Number),
    ("parallel_tool_calls", Shape::Bool),
    ("reasoning_effort", Shape::Word),
    ("modalities", Shape::Words),
];
/// Completions-only members on the allow-list.
const ALLOWED_COMPLETIONS: &[(&str, Shape)] =
    &[("prompt", Shape::Any), ("echo", Shape::Bool), ("best_of", Shape::Number), ("cache_salt", Shape::Token)];
/// Embeddings-only members on the allow-list.
const ALLOWED_EMBEDDINGS: &[(&str, Shape)] =
    &[("input", Shape::Any), ("encoding_format", Shape::Word), ("dimensions", Shape::Number)];
/// Message members on the allow-list (`content` is encrypted).
const ALLOWED_MESSAGE: &[(&str, Shape)] =
    &[("role", Shape::Word), ("content", Shape::Any), ("tool_call_id", Shape::Word)];
/// At most this many clear members are listed (a request can hold any number).
const MAX_LISTED: usize = 64;

fn is_word(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
    })
}

fn fits(shape: Shape, v: &Value) -> bool {
    if v.is_null() {
        return true;
    }
    match shape {
        Shape::Any => true,
        Shape::Number => v.is_number(),
        Shape::Bool => v.is_boolean(),
        Shape::Scalar => v.is_number() || v.is_boolean(),
        Shape::Word => is_word(v),
        Shape::Words => v.as_array().is_some_and(|a| a.iter().all(is_word)),
        Shape::Token => v.as_str().is_some_and(|s| {
            (1..=256).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:+/=-".contains(&b))
        }),
        Shape::Flags => v.as_object().is_some_and(|o| o.values().all(|x| x.is_boolean() || x.is_null())),
        Shape::AciProvider => v.as_object().is_some_and(|o| {
            o.iter().all(|(k, x)| match k.as_str() {
                "aci_verified" => x.is_boolean() || x.is_null(),
                "aci_session_ids" => fits(Shape::Words, x),
                _ => false,
            })
        }),
    }
}

/// The members of a request that travel in clear beyond those known to carry nothing private
/// (names and paths only, never values; at most [`MAX_LISTED`]): top-level members off the
/// allow-list or whose value does not have the expected shape, message members other than
/// `role`, `content` and `tool_call_id`, a message `content` the gateway would forward as it is
/// (an object, a number or a boolean), and token ids beside the strings of a `prompt`/`input`
/// array.
fn clear_members(endpoint: Endpoint, body: &Map<String, Value>) -> Vec<String> {
    let specific = match endpoint {
        Endpoint::ChatCompletions => ALLOWED_CHAT,
        Endpoint::Completions => ALLOWED_COMPLETIONS,
        Endpoint::Embeddings => ALLOWED_EMBEDDINGS,
    };
    let allowed = |list: &[(&str, Shape)], k: &str, v: &Value| list.iter().any(|(n, shape)| *n == k && fits(*shape, v));
    let mut out = Vec::new();
    for (k, v) in body {
        if !allowed(ALLOWED_COMMON, k, v) && !allowed(specific, k, v) {
            out.push(k.clone());
        }
    }
    if endpoint != Endpoint::ChatCompletions {
        // Token ids (and nested arrays of them) beside prompt strings are forwarded as they are.
        let name = if endpoint == Endpoint::Completions { "prompt" } else { "input" };
        if let Some(Value::Array(items)) = body.get(name) {
            out.extend(items.iter().enumerate().filter(|(_, v)| !v.is_string()).map(|(i, _)| format!("{name}.{i}")));
        }
    }
    if endpoint == Endpoint::ChatCompletions {
        if let Some(Value::Array(messages)) = body.get("messages") {
            for (m, msg) in messages.iter().enumerate() {
                let Some(obj) = msg.as_object() else { continue };
                for (k, v) in obj {
                    if out.len() >= MAX_LISTED {
                        return out;
                    }
                    let clear_content =
                        k == "content" && !matches!(v, Value::String(_) | Value::Array(_) | Value::Null);
                    if clear_content || !allowed(ALLOWED_MESSAGE, k, v) {
                        out.push(format!("messages.{m}.{k}"));
                    }
                }
            }
        }
    }
    out.truncate(MAX_LISTED);
    out
}

/// `a`, `b` and 3 more.
fn listed(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = names.iter().take(SHOWN).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Refuse content the gateway would forward in clear next to encrypted fields: a message
/// `content` that is neither a string, an array of parts nor null, and a `prompt`/`input` array
/// element that is neither a string nor token ids (a number or an array of numbers). The gateway
/// skips such values without decrypting them, so they would travel in clear while the rest of
/// the request is protected (found by the `request_encrypt` fuzz target).
fn refuse_clear_content(endpoint: Endpoint, body: &Map<String, Value>) -> Result<()> {
    let unsupported = |what: String| Error::new(ErrorKind::UnsupportedBody, what);
    match endpoint {
        Endpoint::ChatCompletions => {
            let Some(Value::Array(messages)) = body.get("messages") else { return Ok(()) };
            for (m, msg) in messages.iter().enumerate() {
                match msg.as_object().and_then(|o| o.get("content")) {
                    None | Some(Value::Null | Value::String(_) | Value::Array(_)) => {}
                    Some(_) => {
                        return Err(unsupported(format!(
                            "messages.{m}.content must be a string, an array of parts or null: E2EE v2 cannot \
                             encrypt it and it would travel in clear"
                        )));
                    }
                }
            }
        }
        Endpoint::Completions | Endpoint::Embeddings => {
            let name = if endpoint == Endpoint::Completions { "prompt" } else { "input" };
            let Some(Value::Array(items)) = body.get(name) else { return Ok(()) };
            let token_ids = |v: &Value| match v {
                Value::Number(_) => true,
                Value::Array(a) => a.iter().all(Value::is_number),
                _ => false,
            };
            if let Some(i) = items.iter().position(|v| !v.is_string() && !token_ids(v)) {
                return Err(unsupported(format!(
                    "{name}.{i} is neither a string nor token ids: E2EE v2 cannot encrypt it and it would travel \
                     in clear"
                )));
            }
        }
    }
    Ok(())
}

/// Whether a string would be restored by the gateway as structured content: it parses as a
/// JSON array (surrounding whitespace allowed).
pub(crate) fn parses_as_json_array(s: &str) -> bool {
    // Parsed into a `Value`, exactly as the gateway restores it: skipping the value
    // (`IgnoredAny`) accepts numbers a `Value` cannot hold (`[1e999]`), which made the client wrap
    // a text the gateway keeps as a string (found by the `request_encrypt` fuzz target).
    s.trim_start().starts_with('[') && matches!(serde_json::from_str::<Value>(s), Ok(Value::Array(_)))
}

/// Whether a content part is one the gateway decrypts whole: no member would travel in clear.
fn part_fully_protected(part: &Value) -> bool {
    let Some(obj) = part.as_object() else { return false };
    let only = |allowed: &[&str]| obj.keys().all(|k| allowed.contains(&k.as_str()));
    let inner_ok = |name: &str, field: &str, extra: &str| {
        obj.get(name).and_then(Value::as_object).is_some_and(|o| {
            // The sibling (`detail`, `format`) travels in clear: only a string (or null) may
            // (found by the `request_encrypt` fuzz target: any value was let through).
            o.get(field).is_some_and(Value::is_string)
                && o.iter().all(|(k, v)| k == field || (k == extra && (v.is_string() || v.is_null())))
        })
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("text") => only(&["type", "text"]) && obj.get("text").is_some_and(Value::is_string),
        Some("image_url") => only(&["type", "image_url"]) && inner_ok("image_url", "url", "detail"),
        Some("input_audio") => only(&["type", "input_audio"]) && inner_ok("input_audio", "data", "format"),
        _ => false,
    }
}

/// Client-side reshaping so that every sensitive byte is encrypted and the gateway restores
/// exactly what the user meant (protocol.md §3.4, §9 items 22–23). `restored` changes what the
/// gateway will restore (a text that parses as a JSON array becomes a one-element text part);
/// `wire_only` changes only the wire form (a part array the gateway would partly forward in
/// clear is sent as the compact JSON of the array, which the gateway parses back unchanged).
fn reshape_chat(body: &mut Map<String, Value>, stage: Reshape) {
    let Some(Value::Array(messages)) = body.get_mut("messages") else { return };
    for msg in messages.iter_mut() {
        let Some(content) = msg.as_object_mut().and_then(|o| o.get_mut("content")) else { continue };
        match (stage, &mut *content) {
            (Reshape::Restored, Value::String(s)) if parses_as_json_array(s) => {
                let text = std::mem::take(s);
                let mut part = Map::new();
                part.insert("type".into(), Value::String("text".into()));
                part.insert("text".into(), Value::String(text));
                *content = Value::Array(vec![Value::Object(part)]);
            }
            (Reshape::WireOnly, Value::Array(parts)) if parts.is_empty() || !parts.iter().all(part_fully_protected) => {
                *content = Value::String(Value::Array(std::mem::take(parts)).to_string());
            }
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reshape {
    Restored,
    WireOnly,
}

/// Whether every float in `v` survives a print-and-reparse with this build's serde_json
/// unchanged, so the gateway's reparse of our wire body yields the same numbers.
fn floats_stable(v: &Value) -> bool {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if !(n.is_i64() || n.is_u64()) => {
                serde_json::from_str::<f64>(&n.to_string()).is_ok_and(|g| g.to_bits() == f.to_bits())
            }
            _ => true,
        },
        Value::Array(a) => a.iter().all(floats_stable),
        Value::Object(o) => o.values().all(floats_stable),
        _ => true,
    }
}

/// Restore one decrypted request field as the gateway does.
pub(crate) fn restore_field(kind: RequestField, plaintext: String) -> Value {
    if kind == RequestField::WholeContent && plaintext.trim_start().starts_with('[') {
        if let Ok(v @ Value::Array(_)) = serde_json::from_str::<Value>(&plaintext) {
            return v;
        }
    }
    Value::String(plaintext)
}

struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// SHA-256 of `serde_json`'s compact serialisation of `v`, without building the bytes.
pub(crate) fn json_sha256(v: &Value) -> [u8; 32] {
    let mut w = HashWriter(Sha256::new());
    serde_json::to_writer(&mut w, v).expect("writing JSON into a hasher cannot fail");
    w.0.finalize().into()
}

/// Encrypt the protected fields of a request body to `key`.
///
/// Parses the body once, reshapes chat content where the gateway would otherwise forward bytes
/// in clear or restore them differently, computes the restored-body hash, seals each field with
/// a fresh ephemeral key and nonce, and serialises the wire body. `now` is the Unix time put in
/// `X-E2EE-Timestamp`; `rng` must be a CSPRNG (client key, nonce, ephemeral keys).
pub fn encrypt_request(
    endpoint: Endpoint,
    body: &[u8],
    key: &E2eeKey,
    options: &EncryptOptions,
    now: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<EncryptedRequest> {
    let mut root: Value = serde_json::from_slice(body)
        .map_err(|e| Error::new(ErrorKind::Malformed, "request body is not JSON").with_source(e))?;
    let Value::Object(map) = &mut root else {
        return Err(Error::new(ErrorKind::UnsupportedBody, "request body must be a JSON object"));
    };
    let model = match map.get("model") {
        Some(Value::String(m)) => m.clone(),
        _ => return Err(Error::new(ErrorKind::UnsupportedBody, "request body needs a string `model`")),
    };
    // As the gateway decides it (protocol.md §2, §4.3): only a JSON `true` asks for a stream.
    let stream = endpoint != Endpoint::Embeddings && map.get("stream") == Some(&Value::Bool(true));
    let clear_members = clear_members(endpoint, map);
    if options.strict && !clear_members.is_empty() {
        return Err(Error::new(
            ErrorKind::Cleartext,
            format!("strict mode: {} would travel in clear", listed(&clear_members)),
        ));
    }
    refuse_clear_content(endpoint, map)?;
    if endpoint == Endpoint::ChatCompletions {
        reshape_chat(map, Reshape::Restored);
    }
    let stable = floats_stable(&root);
    let direct_hash = stable.then(|| json_sha256(&root));
    if endpoint == Endpoint::ChatCompletions {
        let Value::Object(map) = &mut root else { unreachable!("checked above") };
        reshape_chat(map, Reshape::WireOnly);
    }

    let suite = key.suite();
    let client_secret = SecretKey::generate(suite, rng);
    let mut nonce_bytes = [0u8; 32];
    rng.fill_bytes(&mut nonce_bytes);
    let nonce = hex::encode(nonce_bytes);
    let recipient = key.public_key();

    let Value::Object(map) = &mut root else { unreachable!("checked above") };
    let mut plaintexts: Vec<String> = Vec::new();
    let fields = walk_request(endpoint, map, &mut |path, _kind, slot| {
        let Value::String(s) = slot else { unreachable!("walker yields strings") };
        let aad = aad::request(suite, path, &model, &nonce, now);
        let sealed = seal(recipient, s.as_bytes(), &aad, rng);
        let plain = std::mem::replace(s, sealed);
        if stable {
            let mut plain = plain;
            plain.zeroize();
        } else {
            plaintexts.push(plain);
        }
        Ok(())
    })?;
    let wire = serde_json::to_vec(&root).expect("serialising a Value cannot fail");
    drop(root);

    let restored_body_sha256 = match direct_hash {
        Some(h) => h,
        None => {
            // Some float does not survive the gateway's reparse unchanged: reproduce exactly what
            // it will hash by reparsing the bytes we send (protocol.md §5.3).
            let mut w: Value = serde_json::from_slice(&wire)
                .map_err(|e| Error::malformed("the wire body does not reparse").with_source(e))?;
            let Value::Object(wm) = &mut w else { unreachable!() };
            let mut it = plaintexts.into_iter();
            walk_request(endpoint, wm, &mut |_, kind, slot| {
                let p = it.next().ok_or_else(|| Error::malformed("field count changed on reparse"))?;
                *slot = restore_field(kind, p);
                Ok(())
            })?;
            json_sha256(&w)
        }
    };

    Ok(EncryptedRequest {
        body: wire,
        headers: e2ee_headers(client_secret.public_key_hex(), key.public_key_text(), &nonce, now)?,
        context: ExchangeContext {
            endpoint,
            client_secret,
            aad_tail: aad::response_tail(&model, &nonce, now),
            model,
            nonce,
            ts: now,
            stream,
        },
        restored_body_sha256,
        fields,
        clear_members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(suite: Suite) -> (SecretKey, E2eeKey) {
        let sk = SecretKey::generate(suite, &mut rand_core::OsRng);
        let k = E2eeKey::parse("k", suite.algo(), sk.public_key().to_hex()).unwrap();
        (sk, k)
    }

    fn enc(endpoint: Endpoint, body: &str) -> Result<EncryptedRequest> {
        let (_, k) = key(Suite::X25519);
        encrypt_request(endpoint, body.as_bytes(), &k, &EncryptOptions::default(), 1, &mut rand_core::OsRng)
    }

    #[test]
    fn the_sealed_request_carries_exactly_the_five_headers_of_the_spec() {
        // protocol.md §3.1: the v2 client sends exactly these five (never `X-Signing-Algo`); the
        // names here are the spec's, not the crate's constants.
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        for (suite, key_hex_len) in [(Suite::Secp256k1, 130), (Suite::X25519, 64)] {
            let (_, k) = key(suite);
            let req = encrypt_request(
                Endpoint::ChatCompletions,
                body,
                &k,
                &EncryptOptions::default(),
                1_750_000_000,
                &mut rand_core::OsRng,
            )
            .unwrap();
            let h = &req.headers;
            let mut names: Vec<&str> = h.keys().map(http::HeaderName::as_str).collect();
            names.sort_unstable();
            assert_eq!(
                names,
                ["x-client-pub-key", "x-e2ee-nonce", "x-e2ee-timestamp", "x-e2ee-version", "x-model-pub-key"]
            );
            assert_eq!(h.len(), 5, "one value each");
            let v = |name: &str| h[name].to_str().unwrap();
            let lower_hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            assert_eq!(v("X-E2EE-Version"), "2");
            assert_eq!(v("X-Model-Pub-Key"), k.public_key_text(), "the keyset entry's string, verbatim");
            assert_eq!(v("X-E2EE-Timestamp"), "1750000000");
            assert!(v("X-E2EE-Nonce").len() == 64 && lower_hex(v("X-E2EE-Nonce")));
            assert_eq!(v("X-E2EE-Nonce"), req.context.nonce(), "the nonce the answer is opened under");
            assert!(v("X-Client-Pub-Key").len() == key_hex_len && lower_hex(v("X-Client-Pub-Key")), "{suite:?}");
            for name in ["x-client-pub-key", "x-model-pub-key", "x-e2ee-nonce", "x-e2ee-timestamp"] {
                assert!(h[name].is_sensitive(), "{name} is marked sensitive");
            }
        }
    }

    #[test]
    fn token_id_only_prompt_is_refused() {
        let e = enc(Endpoint::Completions, r#"{"model":"m","prompt":[1,2,3]}"#).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsupportedBody);
        let e = enc(Endpoint::Embeddings, r#"{"model":"m","input":[[1,2]]}"#).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsupportedBody);
        assert_eq!(enc(Endpoint::Completions, r#"{"model":"m","prompt":[1,"a"]}"#).unwrap().fields, 1);
    }

    #[test]
    fn missing_model_or_fields_are_refused() {
        assert_eq!(
            enc(Endpoint::ChatCompletions, r#"{"messages":[]}"#).unwrap_err().kind(),
            ErrorKind::UnsupportedBody
        );
        let e = enc(Endpoint::ChatCompletions, r#"{"model":"m","messages":[{"role":"assistant","content":null}]}"#);
        assert_eq!(e.unwrap_err().kind(), ErrorKind::UnsupportedBody);
        assert_eq!(enc(Endpoint::ChatCompletions, "not json").unwrap_err().kind(), ErrorKind::Malformed);
    }

    #[test]
    fn strict_mode_refuses_clear_members() {
        let (_, k) = key(Suite::X25519);
        let body = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[]}"#;
        let e = encrypt_request(
            Endpoint::ChatCompletions,
            body,
            &k,
            &EncryptOptions::default().strict(true),
            1,
            &mut rand_core::OsRng,
        );
        assert_eq!(e.unwrap_err().kind(), ErrorKind::Cleartext);
        let body = br#"{"model":"m","messages":[{"role":"user","name":"alice","content":"x"}]}"#;
        let e = encrypt_request(
            Endpoint::ChatCompletions,
            body,
            &k,
            &EncryptOptions::default().strict(true),
            1,
            &mut rand_core::OsRng,
        );
        assert_eq!(e.unwrap_err().kind(), ErrorKind::Cleartext);
        let body = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":0.5}"#;
        assert!(
            encrypt_request(
                Endpoint::ChatCompletions,
                body,
                &k,
                &EncryptOptions::default().strict(true),
                1,
                &mut rand_core::OsRng
            )
            .is_ok()
        );
    }

    #[test]
    fn every_role_and_empty_content_is_encrypted() {
        let r = enc(
            Endpoint::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"system","content":""},{"role":"assistant","content":"a"},{"role":"tool","tool_call_id":"t","content":"r"},{"role":"user","content":"u"}]}"#,
        )
        .unwrap();
        assert_eq!(r.fields, 4);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        let lens: Vec<usize> =
            v["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap().len()).collect();
        // Each field is hex of 60 + plaintext bytes (x25519): "", "a", "r", "u".
        assert_eq!(lens, vec![120, 122, 122, 122]);
    }

    /// Regression (fuzz target `request_encrypt`): values the gateway skips without decrypting
    /// were sent in clear beside encrypted fields.
    #[test]
    fn content_the_gateway_would_forward_in_clear_is_refused() {
        for (endpoint, body) in [
            (Endpoint::Embeddings, r#"{"model":"m","input":[[[null],"l1<",{"format":""}],[1,2],"text"]}"#),
            (Endpoint::Completions, r#"{"model":"m","prompt":["a",{"secret":"s"}]}"#),
            (Endpoint::Completions, r#"{"model":"m","prompt":["a",["nested secret"]]}"#),
            (Endpoint::Completions, r#"{"model":"m","prompt":["a",null]}"#),
            (
                Endpoint::ChatCompletions,
                r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":{"text":"secret"}}]}"#,
            ),
            (
                Endpoint::ChatCompletions,
                r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":42}]}"#,
            ),
        ] {
            let e = enc(endpoint, body).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnsupportedBody, "{body}");
        }
        // Token ids, nulls and missing content still pass, next to encrypted text.
        assert_eq!(enc(Endpoint::Completions, r#"{"model":"m","prompt":["a",1,[2,3]]}"#).unwrap().fields, 1);
        let chat = r#"{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[]},{"role":"user","content":"a"}]}"#;
        assert_eq!(enc(Endpoint::ChatCompletions, chat).unwrap().fields, 1);
    }

    /// Regression (fuzz target `request_encrypt`): a text the gateway cannot parse as a JSON
    /// array (a number out of range) was wrapped into a text part although the gateway restores
    /// it as the string it is.
    #[test]
    fn text_that_only_looks_like_a_json_array_stays_a_string() {
        let plain = r#"{"model":"m","messages":[{"role":"system","content":"[1e999]"}]}"#;
        let r = enc(Endpoint::ChatCompletions, plain).unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v["messages"][0]["content"].is_string(), "sent whole, not as a part array");
        assert_eq!(r.fields, 1);
        let restored: [u8; 32] = Sha256::digest(plain.as_bytes()).into();
        assert_eq!(r.restored_body_sha256, restored, "the gateway restores the string unchanged");
        // A real array is still sent as a text part.
        let r =
            enc(Endpoint::ChatCompletions, r#"{"model":"m","messages":[{"role":"user","content":"[1e9]"}]}"#).unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["messages"][0]["content"][0]["type"], "text");
    }

    /// Regression (fuzz target `request_encrypt`): a part whose clear sibling (`detail`,
    /// `format`) was not a string was kept as a part, so that value travelled in clear.
    #[test]
    fn a_part_with_a_structured_sibling_is_sent_whole() {
        for content in [
            r#"[{"type":"input_audio","input_audio":{"data":"AAAA","format":false}}]"#,
            r#"[{"type":"image_url","image_url":{"url":"https://x/y.png","detail":{"note":"secret"}}}]"#,
        ] {
            let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":{content}}}]}}"#);
            let r = enc(Endpoint::ChatCompletions, &body).unwrap();
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert!(v["messages"][0]["content"].is_string(), "{content} must be encrypted whole");
            let wire = String::from_utf8(r.body).unwrap();
            assert!(!wire.contains("secret") && !wire.contains("false"), "{wire}");
        }
        // String siblings stay in clear beside an encrypted leaf, as the gateway expects.
        let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"u","detail":"low"}}]}]}"#;
        let v: Value = serde_json::from_slice(&enc(Endpoint::ChatCompletions, body).unwrap().body).unwrap();
        assert_eq!(v["messages"][0]["content"][0]["image_url"]["detail"], "low");
    }

    #[test]
    fn unknown_part_types_switch_to_whole_content() {
        let r = enc(
            Endpoint::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"file","file":{"file_data":"secret"}}]}]}"#,
        )
        .unwrap();
        let s = String::from_utf8(r.body).unwrap();
        assert!(!s.contains("secret") && !s.contains("file"), "{s}");
        assert_eq!(r.fields, 1);
    }
}
