//! The request rewriter (`encrypt_request`) on arbitrary JSON, checked against the spec by an
//! independent walk (protocol.md §3.4, written here, not the crate's walker):
//!
//! - it succeeds exactly when the gateway can take the body (a string `model`, at least one field
//!   E2EE v2 encrypts, after the client-side reshaping) and no content would travel in clear;
//!   strict mode refuses the documented clear members, and exactly what lenient mode reports as clear;
//! - every location the gateway decrypts holds lowercase-hex ciphertext that opens, under the
//!   service secret and the request AAD of that path, and the gateway's restoration of the wire
//!   body is the input (normalised by one serde_json round trip; a string content that parses
//!   as a JSON array becomes a one-element text part) and hashes to `restored_body_sha256`;
//! - nothing inside a message's `content` (or `prompt` / `input`) is left in clear on the wire
//!   but part types and the `detail` / `format` siblings, and no protected string of the input
//!   appears in the output bytes.
//!
//! Input: one control byte (endpoint, suite, strict, raw-or-structured), then either the body
//! text itself or bytes from which a request-shaped body is generated.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::LazyLock;

use common::{restore, slot, spec_locations};

use libfuzzer_sys::arbitrary::{self, Unstructured};
use libfuzzer_sys::fuzz_target;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tower_aci::ErrorKind;
use tower_aci::protocol::E2eeKey;
use tower_aci::protocol::aad;
use tower_aci::protocol::{EncryptOptions, Endpoint, encrypt_request};
use tower_aci::protocol::{PublicKey, SecretKey, Suite, kat::open};

const NOW: u64 = 1_750_000_000;

struct Service {
    secret: SecretKey,
    key: E2eeKey,
}

fn service(suite: Suite, seed: u8) -> Service {
    let secret = SecretKey::from_bytes(suite, &[seed; 32]).unwrap();
    let key = E2eeKey::parse("k", suite.algo(), secret.public_key().to_hex()).unwrap();
    Service { secret, key }
}

static X25519: LazyLock<Service> = LazyLock::new(|| service(Suite::X25519, 0x55));
static SECP256K1: LazyLock<Service> = LazyLock::new(|| service(Suite::Secp256k1, 0x44));

/// Top-level members the docs of `EncryptOptions::strict` say travel in clear.
const CLEAR_TOP_LEVEL: [&str; 7] =
    ["tools", "functions", "response_format", "prediction", "metadata", "tool_choice", "function_call"];
/// Names of the structure of content parts (never protected text themselves).
const PART_KEYS: [&str; 8] = ["type", "text", "image_url", "url", "detail", "input_audio", "data", "format"];

fn has_text(v: &Value) -> bool {
    match v {
        Value::String(_) => true,
        Value::Array(a) => a.iter().any(has_text),
        Value::Object(o) => !o.is_empty(),
        _ => false,
    }
}

/// The message contents (chat) or the prompt/input value of a body.
fn protected_regions(endpoint: Endpoint, body: &Map<String, Value>) -> Vec<&Value> {
    match endpoint {
        Endpoint::ChatCompletions => match body.get("messages") {
            Some(Value::Array(ms)) => ms.iter().filter_map(|m| m.as_object()?.get("content")).collect(),
            _ => Vec::new(),
        },
        Endpoint::Completions => body.get("prompt").into_iter().collect(),
        Endpoint::Embeddings => body.get("input").into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Whether the client, after reshaping, can send the body at all: a string `model`, a content
/// shape whose every byte can be encrypted, and at least one field.
fn expect_accepted(endpoint: Endpoint, input: &Value) -> Result<(), &'static str> {
    let Value::Object(body) = input else { return Err("not an object") };
    if !body.get("model").is_some_and(Value::is_string) {
        return Err("no string model");
    }
    match endpoint {
        Endpoint::ChatCompletions => {
            let Some(Value::Array(ms)) = body.get("messages") else { return Err("messages not an array") };
            let mut any = false;
            for m in ms {
                match m.as_object().and_then(|o| o.get("content")) {
                    None | Some(Value::Null) => {}
                    Some(Value::String(_) | Value::Array(_)) => any = true,
                    Some(_) => return Err("content neither string, array nor null"),
                }
            }
            if !any {
                return Err("no content");
            }
        }
        Endpoint::Completions | Endpoint::Embeddings => {
            let name = if endpoint == Endpoint::Completions { "prompt" } else { "input" };
            match body.get(name) {
                Some(Value::String(_)) => {}
                Some(Value::Array(items)) => {
                    if !items.iter().any(Value::is_string) {
                        return Err("no string prompt");
                    }
                    let token_ids = |v: &Value| match v {
                        Value::Number(_) => true,
                        Value::Array(a) => a.iter().all(Value::is_number),
                        _ => false,
                    };
                    if items.iter().any(|i| !i.is_string() && !token_ids(i)) {
                        return Err("a prompt element neither text nor token ids");
                    }
                }
                _ => return Err("prompt neither string nor array"),
            }
        }
        _ => return Err("an endpoint this target does not know"),
    }
    Ok(())
}

/// Top-level members the docs of `EncryptOptions::strict` name as refused (they can carry the
/// user's words or intent in clear).
const REFUSED_TOP_LEVEL: [&str; 5] = ["stop", "user", "logit_bias", "suffix", "audio"];

/// Members strict mode must refuse (a necessary condition; the allow-list refuses more): the
/// members the docs name, and message members other than `role`, `content`, `tool_call_id`.
fn must_refuse(endpoint: Endpoint, body: &Map<String, Value>) -> bool {
    let named = |k: &str| CLEAR_TOP_LEVEL.contains(&k) || REFUSED_TOP_LEVEL.contains(&k);
    if body.iter().any(|(k, v)| named(k) && !v.is_null()) {
        return true;
    }
    endpoint == Endpoint::ChatCompletions
        && matches!(body.get("messages"), Some(Value::Array(ms)) if ms.iter().any(|m| {
            m.as_object().is_some_and(|o| o.iter().any(|(k, v)| {
                !v.is_null() && !matches!(k.as_str(), "role" | "content" | "tool_call_id")
            }))
        }))
}

/// What the gateway must restore: the input after one serde_json round trip (what the gateway's
/// reparse of the wire does to clear members), with string contents that parse as JSON arrays
/// sent as one text part (protocol.md §3.4, client guidance).
fn expected_restored(endpoint: Endpoint, input: &Value) -> Value {
    let mut v: Value = serde_json::from_slice(&serde_json::to_vec(input).unwrap()).unwrap();
    if endpoint == Endpoint::ChatCompletions {
        if let Some(Value::Array(ms)) = v.get_mut("messages") {
            for m in ms {
                let Some(c) = m.as_object_mut().and_then(|o| o.get_mut("content")) else { continue };
                if let Value::String(s) = c {
                    if matches!(serde_json::from_str::<Value>(s), Ok(Value::Array(_))) {
                        *c = json!([{"type": "text", "text": s.clone()}]);
                    }
                }
            }
        }
    }
    v
}

/// Strings inside protected regions that may legitimately travel in clear: part types, the
/// `detail`/`format` siblings, and the part structure's member names.
fn clear_in_content(v: &Value, out: &mut Vec<String>, protected: &mut Vec<String>, depth: usize) {
    match v {
        Value::String(s) => protected.push(s.clone()),
        // Token ids travel in clear; a protected text may spell the same digits.
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(a) => a.iter().for_each(|x| clear_in_content(x, out, protected, depth + 1)),
        Value::Object(o) => {
            for (k, x) in o {
                if PART_KEYS.contains(&k.as_str()) {
                    out.push(k.clone());
                } else {
                    protected.push(k.clone());
                }
                match (k.as_str(), x) {
                    ("type" | "detail" | "format", Value::String(s)) => out.push(s.clone()),
                    _ => clear_in_content(x, out, protected, depth + 1),
                }
            }
        }
        _ => {}
    }
}

fn escaped(s: &str) -> String {
    let q = serde_json::to_string(s).unwrap();
    q[1..q.len() - 1].to_owned()
}

/// Nothing protected left in clear on the wire: inside each region, only ciphertext at a spec
/// location (replaced by null in `wire_nulled`), part structure, types and `detail`/`format`
/// strings, and (prompt/input) token ids.
fn assert_no_clear_content(endpoint: Endpoint, wire_nulled: &Map<String, Value>) {
    let part_ok = |p: &Value| -> bool {
        let Some(o) = p.as_object() else { return false };
        let inner_ok = |name: &str, leaf: &str, sib: &str| {
            o.get(name).and_then(Value::as_object).is_some_and(|i| {
                i.get(leaf) == Some(&Value::Null)
                    && i.iter().all(|(k, x)| k == leaf || (k == sib && matches!(x, Value::String(_) | Value::Null)))
            })
        };
        let only = |keys: &[&str]| o.keys().all(|k| keys.contains(&k.as_str()));
        match o.get("type").and_then(Value::as_str) {
            Some("text") => only(&["type", "text"]) && o.get("text") == Some(&Value::Null),
            Some("image_url") => only(&["type", "image_url"]) && inner_ok("image_url", "url", "detail"),
            Some("input_audio") => only(&["type", "input_audio"]) && inner_ok("input_audio", "data", "format"),
            _ => false,
        }
    };
    for region in protected_regions(endpoint, wire_nulled) {
        let ok = match (endpoint, region) {
            (_, Value::Null) => true,
            (Endpoint::ChatCompletions, Value::Array(parts)) => parts.iter().all(part_ok),
            (Endpoint::ChatCompletions, _) => false,
            (_, Value::Array(items)) => items.iter().all(|i| !has_text(i)),
            _ => false,
        };
        assert!(ok, "content left in clear on the wire: {region}");
    }
}

/// `FUZZ_PRINT=1`: print each body (to read a crash input).
static PRINT: LazyLock<bool> = LazyLock::new(|| std::env::var_os("FUZZ_PRINT").is_some());

fn check(endpoint: Endpoint, svc: &Service, strict: bool, body: &[u8]) {
    if *PRINT {
        eprintln!("{endpoint:?} {} strict={strict}: {}", svc.key.suite(), String::from_utf8_lossy(body));
    }
    let mut rng = ChaCha20Rng::from_seed(Sha256::digest(body).into());
    let result = encrypt_request(endpoint, body, &svc.key, &EncryptOptions::default().strict(strict), NOW, &mut rng);
    let input: Option<Value> = serde_json::from_slice(body).ok();
    let Some(input) = input else {
        let e = result.expect_err("a body that is not JSON was accepted");
        assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
        return;
    };
    let expected = expect_accepted(endpoint, &input);
    let refuse = strict && input.as_object().is_some_and(|b| must_refuse(endpoint, b));
    let req = match result {
        Err(e) => {
            match e.kind() {
                ErrorKind::Cleartext => {
                    assert!(strict, "Cleartext outside strict mode: {e}");
                    // Strict mode refuses exactly what the lenient mode reports as clear.
                    // (Strict mode looks at the members first; a body that cannot be sent at
                    // all is refused either way.)
                    match encrypt_request(
                        endpoint,
                        body,
                        &svc.key,
                        &EncryptOptions::default().strict(false),
                        NOW,
                        &mut rng,
                    ) {
                        Ok(lenient) => {
                            assert!(
                                !lenient.clear_members.is_empty(),
                                "strict refused a body with nothing in clear: {e}"
                            )
                        }
                        Err(l) => assert!(
                            l.kind() == ErrorKind::UnsupportedBody && expected.is_err(),
                            "lenient mode refused what strict mode called clear: {l}"
                        ),
                    }
                }
                ErrorKind::UnsupportedBody => assert!(expected.is_err(), "refused a body the gateway takes: {e}"),
                other => panic!("unexpected refusal {other:?}: {e}"),
            }
            return;
        }
        Ok(req) => req,
    };
    if let Err(why) = expected {
        panic!("accepted a body that should be refused ({why})");
    }
    assert!(!refuse, "strict mode let a clear member through");
    if strict {
        assert!(req.clear_members.is_empty(), "strict mode sent clear members {:?}", req.clear_members);
    }

    // Headers.
    let suite = svc.key.suite();
    let header = |name: &str| req.headers[name].to_str().expect("header values are ASCII");
    assert_eq!(req.headers.len(), 5, "exactly the five X-E2EE-* request headers");
    assert_eq!(header("x-e2ee-version"), "2");
    let nonce = header("x-e2ee-nonce");
    assert_eq!(nonce, req.context.nonce());
    assert_eq!(nonce.len(), 64);
    assert!(nonce.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    assert_eq!(header("x-e2ee-timestamp"), NOW.to_string());
    assert_eq!(header("x-model-pub-key"), svc.key.public_key_text());
    PublicKey::parse(suite, header("x-client-pub-key")).expect("client key parses in the service's suite");
    for name in ["x-client-pub-key", "x-model-pub-key", "x-e2ee-nonce", "x-e2ee-timestamp"] {
        assert!(req.headers[name].is_sensitive(), "{name} is marked sensitive");
    }

    // The gateway's view: parse the wire, walk the spec locations, open each field.
    let mut wire: Value = serde_json::from_slice(&req.body).expect("wire body is JSON");
    let model = input["model"].as_str().unwrap().to_owned();
    assert_eq!(wire["model"].as_str(), Some(model.as_str()));
    let locations = spec_locations(endpoint, wire.as_object().unwrap()).expect("the gateway can walk the wire body");
    assert_eq!(locations.len(), req.fields, "field count");
    let mut restored = wire.clone();
    let mut nulled = wire.clone();
    for (path, steps, kind) in &locations {
        let Value::String(ct) = slot(&mut wire, steps) else { panic!("{path} is not a string") };
        assert!(ct.len() >= 2 * tower_aci::protocol::kat::min_blob_len(suite), "{path}: ciphertext too short");
        assert!(ct.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')), "{path}: not lowercase hex");
        let plain = open(&svc.secret, ct, &aad::request(suite, path, &model, nonce, NOW))
            .unwrap_or_else(|e| panic!("{path} does not open: {e}"));
        let plain = String::from_utf8(plain).expect("plaintext is UTF-8");
        *slot(&mut restored, steps) = restore(*kind, plain);
        *slot(&mut nulled, steps) = Value::Null;
    }
    let restored_bytes = serde_json::to_vec(&restored).unwrap();
    assert_eq!(
        <[u8; 32]>::from(Sha256::digest(&restored_bytes)),
        req.restored_body_sha256,
        "restored_body_sha256 is not the hash of what the gateway restores"
    );
    assert_eq!(restored, expected_restored(endpoint, &input), "the gateway restores another body");

    // Nothing protected in clear.
    assert_no_clear_content(endpoint, nulled.as_object().unwrap());
    let mut skeleton_doc = input.clone();
    let mut clear = Vec::new();
    let mut protected = Vec::new();
    {
        let body = skeleton_doc.as_object_mut().unwrap();
        let names: &[&str] = match endpoint {
            Endpoint::ChatCompletions => &["content"],
            Endpoint::Completions => &["prompt"],
            Endpoint::Embeddings => &["input"],
            _ => &[],
        };
        let mut take = |v: &mut Value| {
            let old = std::mem::replace(v, Value::Null);
            clear_in_content(&old, &mut clear, &mut protected, 0);
        };
        if endpoint == Endpoint::ChatCompletions {
            if let Some(Value::Array(ms)) = body.get_mut("messages") {
                for m in ms.iter_mut().filter_map(Value::as_object_mut) {
                    if let Some(c) = m.get_mut(names[0]) {
                        take(c);
                    }
                }
            }
        } else if let Some(p) = body.get_mut(names[0]) {
            take(p);
        }
    }
    let mut skeleton = serde_json::to_string(&skeleton_doc).unwrap();
    for c in &clear {
        skeleton.push('\u{0}');
        skeleton.push_str(&escaped(c));
    }
    let finder = |needle: &str| memchr::memmem::find(&req.body, needle.as_bytes()).is_some();
    for p in &protected {
        let e = escaped(p);
        if e.len() >= 16 && !skeleton.contains(&e) {
            assert!(!finder(&e), "protected text {p:?} appears in the wire body");
        }
    }
}

mod generate {
    use super::*;

    const WORDS: [&str; 14] = [
        "",
        "hi",
        "[1,2]",
        " [ {\"type\":\"text\", \"text\":\"hi\"} ] ",
        "[1e999]",
        "{\"a\":1}",
        "null",
        "\"q\"",
        "h\u{e9}llo \u{2028} \"q\"",
        "the quick brown fox jumps over",
        "data:image/png;base64,iVBORw0KGgo=",
        "[",
        "[]",
        "\\u0000",
    ];

    pub(super) fn string(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
        Ok(match u.int_in_range(0..=3u8)? {
            0 => u.choose(&WORDS)?.to_string(),
            1 => format!("{} secret text {}", u.arbitrary::<u16>()?, u.arbitrary::<String>()?),
            2 => value(u, 2)?.to_string(),
            _ => u.arbitrary::<String>()?,
        })
    }

    fn number(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
        Ok(match u.int_in_range(0..=4u8)? {
            0 => json!(u.arbitrary::<i64>()?),
            1 => json!(u.arbitrary::<u64>()?),
            2 => json!(*u.choose(&[0.7, 1e16, -0.0, 4.545896140860994e-14, 1.8446744073709552e19, 5e-324, 0.1])?),
            _ => {
                let f = f64::from_bits(u.arbitrary()?);
                if f.is_finite() { json!(f) } else { json!(0.5) }
            }
        })
    }

    pub(super) fn value(u: &mut Unstructured<'_>, depth: usize) -> arbitrary::Result<Value> {
        let max = if depth == 0 { 3 } else { 5 };
        Ok(match u.int_in_range(0..=max)? {
            0 => Value::Null,
            1 => Value::Bool(u.arbitrary()?),
            2 => number(u)?,
            3 => Value::String(u.arbitrary()?),
            4 => Value::Array(
                (0..u.int_in_range(0..=3)?).map(|_| value(u, depth - 1)).collect::<arbitrary::Result<_>>()?,
            ),
            _ => {
                let mut m = Map::new();
                for _ in 0..u.int_in_range(0..=3)? {
                    m.insert(key(u)?, value(u, depth - 1)?);
                }
                Value::Object(m)
            }
        })
    }

    fn key(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
        if u.ratio(1, 2)? { Ok(u.choose(&PART_KEYS)?.to_string()) } else { u.arbitrary() }
    }

    fn inner(u: &mut Unstructured<'_>, leaf: &str, sibling: &str) -> arbitrary::Result<Value> {
        Ok(match u.int_in_range(0..=4u8)? {
            0 => Value::String(string(u)?),
            1 => value(u, 2)?,
            _ => {
                let mut m = Map::new();
                if u.ratio(7, 8)? {
                    m.insert(leaf.into(), if u.ratio(7, 8)? { Value::String(string(u)?) } else { value(u, 1)? });
                }
                if u.ratio(1, 3)? {
                    m.insert(sibling.into(), if u.ratio(3, 4)? { Value::String(string(u)?) } else { value(u, 1)? });
                }
                if u.ratio(1, 6)? {
                    m.insert(key(u)?, value(u, 1)?);
                }
                Value::Object(m)
            }
        })
    }

    fn part(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
        if u.ratio(1, 10)? {
            return value(u, 2);
        }
        let mut m = Map::new();
        match u.int_in_range(0..=4u8)? {
            0 | 1 => {
                m.insert("type".into(), json!("text"));
                if u.ratio(7, 8)? {
                    m.insert("text".into(), if u.ratio(7, 8)? { Value::String(string(u)?) } else { value(u, 1)? });
                }
            }
            2 => {
                m.insert("type".into(), json!("image_url"));
                m.insert("image_url".into(), inner(u, "url", "detail")?);
            }
            3 => {
                m.insert("type".into(), json!("input_audio"));
                m.insert("input_audio".into(), inner(u, "data", "format")?);
            }
            _ => {
                m.insert("type".into(), if u.ratio(1, 2)? { Value::String(string(u)?) } else { value(u, 1)? });
                m.insert(key(u)?, Value::String(string(u)?));
            }
        }
        if u.ratio(1, 8)? {
            m.insert(key(u)?, value(u, 1)?);
        }
        Ok(Value::Object(m))
    }

    fn content(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
        Ok(match u.int_in_range(0..=9u8)? {
            0..=3 => Value::String(string(u)?),
            4..=7 => Value::Array((0..u.int_in_range(0..=4)?).map(|_| part(u)).collect::<arbitrary::Result<_>>()?),
            8 => Value::Null,
            _ => value(u, 2)?,
        })
    }

    fn message(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
        if u.ratio(1, 16)? {
            return value(u, 2);
        }
        let mut m = Map::new();
        m.insert("role".into(), json!(*u.choose(&["system", "user", "assistant", "tool", "developer"])?));
        if u.ratio(7, 8)? {
            m.insert("content".into(), content(u)?);
        }
        if u.ratio(1, 8)? {
            let k = *u.choose(&["name", "tool_call_id", "tool_calls", "refusal", "audio"])?;
            m.insert(k.into(), value(u, 2)?);
        }
        Ok(Value::Object(m))
    }

    fn prompt(u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
        Ok(match u.int_in_range(0..=5u8)? {
            0 | 1 => Value::String(string(u)?),
            2..=4 => Value::Array(
                (0..u.int_in_range(0..=4)?)
                    .map(|_| {
                        Ok(match u.int_in_range(0..=4u8)? {
                            0 | 1 => Value::String(string(u)?),
                            2 => json!(u.arbitrary::<u32>()?),
                            3 => json!([u.arbitrary::<u16>()?, u.arbitrary::<u16>()?]),
                            _ => value(u, 2)?,
                        })
                    })
                    .collect::<arbitrary::Result<_>>()?,
            ),
            _ => value(u, 2)?,
        })
    }

    pub(super) fn body(endpoint: Endpoint, u: &mut Unstructured<'_>) -> arbitrary::Result<Value> {
        let mut m = Map::new();
        if u.ratio(1, 3)? {
            m.insert("temperature".into(), number(u)?);
        }
        m.insert("model".into(), if u.ratio(15, 16)? { Value::String(string(u)?) } else { value(u, 1)? });
        match endpoint {
            Endpoint::ChatCompletions => {
                let ms = (0..u.int_in_range(0..=4)?).map(|_| message(u)).collect::<arbitrary::Result<_>>()?;
                m.insert("messages".into(), Value::Array(ms));
            }
            Endpoint::Completions => {
                m.insert("prompt".into(), prompt(u)?);
            }
            Endpoint::Embeddings => {
                m.insert("input".into(), prompt(u)?);
            }
            _ => {}
        }
        for _ in 0..u.int_in_range(0..=3u8)? {
            let k = if u.ratio(1, 2)? {
                u.choose(&CLEAR_TOP_LEVEL)?.to_string()
            } else {
                u.choose(&["stream", "user", "stop", "n", "seed", "x"])?.to_string()
            };
            m.insert(k, value(u, 2)?);
        }
        Ok(Value::Object(m))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let endpoint = match ctl & 3 {
        1 => Endpoint::Completions,
        2 => Endpoint::Embeddings,
        _ => Endpoint::ChatCompletions,
    };
    let svc: &Service = if ctl & 4 == 0 { &X25519 } else { &SECP256K1 };
    let strict = ctl & 8 != 0;
    if ctl & 16 == 0 {
        check(endpoint, svc, strict, rest);
    } else {
        let Ok(body) = generate::body(endpoint, &mut Unstructured::new(rest)) else { return };
        check(endpoint, svc, strict, &serde_json::to_vec(&body).unwrap());
    }
});
