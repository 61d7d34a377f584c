//! Buffered response decryption on arbitrary bodies, against an independent walk of the spec
//! (protocol.md §4.1–§4.2): never panics, succeeds exactly when every protected location holds
//! null or ciphertext that opens under that location's response AAD (for embeddings, to JSON
//! text), and then returns the body with exactly those locations replaced by their plaintext
//! (the input bytes unchanged when nothing was encrypted). So a protected field is never passed
//! through in clear, and nothing else is changed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower_aci::protocol::aad;
use tower_aci::protocol::decrypt_response;
use tower_aci::protocol::{Endpoint, ExchangeContext};
use tower_aci::protocol::{SecretKey, Suite, kat::open};

const MODEL: &str = "m";
const NONCE: &str = "n";
const TS: u64 = 1;

enum Step {
    Key(&'static str),
    Index(usize),
}

/// The spec's protected locations of a buffered response: path, steps, whether the plaintext is
/// JSON text (embeddings).
fn locations(endpoint: Endpoint, root: &serde_json::Map<String, Value>) -> Vec<(String, Vec<Step>, bool)> {
    let mut out = Vec::new();
    let index =
        |o: &serde_json::Map<String, Value>, pos: usize| o.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
    if endpoint == Endpoint::Embeddings {
        let Some(Value::Array(data)) = root.get("data") else { return out };
        for (k, item) in data.iter().enumerate() {
            let Some(o) = item.as_object() else { continue };
            if o.contains_key("embedding") {
                let steps = vec![Step::Key("data"), Step::Index(k), Step::Key("embedding")];
                out.push((format!("data.{}.embedding", index(o, k)), steps, true));
            }
        }
        return out;
    }
    let Some(Value::Array(choices)) = root.get("choices") else { return out };
    for (p, choice) in choices.iter().enumerate() {
        let Some(c) = choice.as_object() else { continue };
        let i = index(c, p);
        if endpoint == Endpoint::Completions {
            if c.contains_key("text") {
                out.push((
                    format!("choices.{i}.text"),
                    vec![Step::Key("choices"), Step::Index(p), Step::Key("text")],
                    false,
                ));
            }
            continue;
        }
        let Some(Value::Object(msg)) = c.get("message") else { continue };
        for f in ["content", "reasoning", "reasoning_content"] {
            if msg.contains_key(f) {
                let steps = vec![Step::Key("choices"), Step::Index(p), Step::Key("message"), Step::Key(f)];
                out.push((format!("choices.{i}.message.{f}"), steps, false));
            }
        }
        if let Some(Value::Object(audio)) = msg.get("audio") {
            if audio.get("data").is_some_and(Value::is_string) {
                let steps = vec![
                    Step::Key("choices"),
                    Step::Index(p),
                    Step::Key("message"),
                    Step::Key("audio"),
                    Step::Key("data"),
                ];
                out.push((format!("choices.{i}.message.audio.data"), steps, false));
            }
        }
    }
    out
}

fn at<'a>(v: &'a mut Value, steps: &[Step]) -> &'a mut Value {
    steps.iter().fold(v, |v, s| match s {
        Step::Key(k) => v.get_mut(*k).unwrap(),
        Step::Index(i) => v.get_mut(*i).unwrap(),
    })
}

/// What decryption must return: `Some(document, fields opened)`, or `None` when it must fail.
fn expected(endpoint: Endpoint, secret: &SecretKey, input: &[u8]) -> Option<(Value, usize)> {
    let mut doc: Value = serde_json::from_slice(input).ok()?;
    let root = doc.as_object()?.clone();
    let id = root.get("id").and_then(Value::as_str).unwrap_or("");
    let mut opened = 0;
    for (path, steps, json) in locations(endpoint, &root) {
        let slot = at(&mut doc, &steps);
        let text = match slot {
            Value::Null => continue,
            Value::String(s) => s,
            _ => return None,
        };
        let plain = open(secret, text, &aad::response(secret.suite(), &path, id, MODEL, NONCE, TS)).ok()?;
        let plain = String::from_utf8(plain).ok()?;
        *slot = if json { serde_json::from_str(&plain).ok()? } else { Value::String(plain) };
        opened += 1;
    }
    Some((doc, opened))
}

fuzz_target!(|data: &[u8]| {
    for (endpoint, suite) in [
        (Endpoint::ChatCompletions, Suite::X25519),
        (Endpoint::Completions, Suite::Secp256k1),
        (Endpoint::Embeddings, Suite::X25519),
    ] {
        let secret = SecretKey::from_bytes(suite, &[5; 32]).unwrap();
        let ctx = ExchangeContext::new(endpoint, SecretKey::from_bytes(suite, &[5; 32]).unwrap(), MODEL, NONCE, TS);
        let r = decrypt_response(&ctx, bytes::Bytes::copy_from_slice(data));
        if std::env::var_os("FUZZ_PRINT").is_some() {
            eprintln!("{endpoint:?} {suite}: {r:?}");
        }
        match (r, expected(endpoint, &secret, data)) {
            (Ok(out), Some((doc, opened))) => {
                assert_eq!(out.decrypted_fields, opened, "{endpoint:?}: fields opened");
                if opened == 0 {
                    assert_eq!(&out.body[..], data, "{endpoint:?}: nothing encrypted, yet the body changed");
                } else {
                    assert_eq!(out.body, serde_json::to_vec(&doc).unwrap(), "{endpoint:?}: another body");
                }
            }
            (Err(_), None) => {}
            (Ok(_), None) => panic!("{endpoint:?}: accepted a response with a protected field that does not open"),
            (Err(e), Some(_)) => panic!("{endpoint:?}: refused a well-formed response: {e}"),
        }
    }
});
