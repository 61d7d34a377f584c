//! Property tests of the protocol core.

use proptest::prelude::*;
use serde_json::{Value, json};
#[cfg(feature = "__internal-test-vectors")]
use tower_aci::protocol::{Backend, kat};
use tower_aci::protocol::{Endpoint, ExchangeContext};
use tower_aci::protocol::{
    SecretKey, Suite,
    kat::{open, seal},
};
use tower_aci::protocol::{StreamDecryptor, StreamOutput};

fn suite() -> impl Strategy<Value = Suite> {
    prop_oneof![Just(Suite::X25519), Just(Suite::Secp256k1)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn seal_open_round_trip(suite in suite(), plaintext in proptest::collection::vec(any::<u8>(), 0..2048), aad in proptest::collection::vec(any::<u8>(), 0..64)) {
        let sk = SecretKey::generate(suite, &mut rand_core::OsRng);
        let field = seal(&sk.public_key(), &plaintext, &aad, &mut rand_core::OsRng);
        prop_assert_eq!(field.len(), 2 * (kat::min_blob_len(suite) + plaintext.len()));
        prop_assert!(field.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        prop_assert_eq!(open(&sk, &field, &aad).unwrap(), plaintext);
    }

    /// Seal on one backend, open on another (every compiled pair, the default included).
    #[cfg(feature = "__internal-test-vectors")]
    #[test]
    fn seal_on_one_backend_open_on_another(
        suite in suite(),
        sealer in backend(),
        opener in backend(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..2048),
        aad in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let sk = SecretKey::generate(suite, &mut rand_core::OsRng);
        let field = match sealer {
            Some(b) => kat::seal_using(b, &sk.public_key(), &plaintext, &aad, &mut rand_core::OsRng),
            None => seal(&sk.public_key(), &plaintext, &aad, &mut rand_core::OsRng),
        };
        prop_assert_eq!(field.len(), 2 * (kat::min_blob_len(suite) + plaintext.len()));
        let opened = match opener {
            Some(b) => kat::open_using(b, &sk, &field, &aad),
            None => open(&sk, &field, &aad),
        };
        prop_assert_eq!(opened.unwrap(), plaintext);
    }
}

/// A compiled backend, or `None` for the default (the fastest compiled one per primitive).
#[cfg(feature = "__internal-test-vectors")]
fn backend() -> impl Strategy<Value = Option<Backend>> {
    prop_oneof![Just(None), proptest::sample::select(Backend::ALL).prop_map(Some)]
}

/// The client's encryption against the gateway's opening half (feature `test-gateway`).
mod restoration {
    use super::*;
    use aci_test_gateway::open_request;
    use sha2::{Digest, Sha256};
    use tower_aci::protocol::E2eeKey;
    use tower_aci::protocol::{EncryptOptions, encrypt_request};

    /// Message content as a user might write it.
    fn content() -> impl Strategy<Value = Value> {
        let text = "\\PC{0,40}";
        prop_oneof![
            4 => text.prop_map(Value::String),
            1 => Just(Value::String(String::new())),
            1 => Just(Value::String("[1, 2]".into())),
            1 => Just(Value::Null),
            2 => proptest::collection::vec(
                prop_oneof![
                    text.prop_map(|t| json!({"type": "text", "text": t})),
                    text.prop_map(|u| json!({"type": "image_url", "image_url": {"url": u, "detail": "low"}})),
                    text.prop_map(|d| json!({"type": "input_audio", "input_audio": {"data": d, "format": "wav"}})),
                    text.prop_map(|f| json!({"type": "file", "file": {"file_data": f}})),
                    text.prop_map(|u| json!({"type": "image_url", "image_url": u})),
                ],
                0..4,
            )
            .prop_map(Value::Array),
        ]
    }

    fn chat_body() -> impl Strategy<Value = Value> {
        let message = (prop_oneof![Just("system"), Just("user"), Just("assistant"), Just("tool")], content())
            .prop_map(|(role, content)| json!({"role": role, "content": content}));
        (
            "\\PC{1,12}",
            proptest::collection::vec(message, 1..6),
            prop_oneof![Just(json!(0.7)), Just(json!(1)), Just(json!(4.545896140860994e-14)), Just(json!(1e16))],
        )
            .prop_map(|(model, mut messages, temperature)| {
                // Always at least one encryptable field.
                messages.push(json!({"role": "user", "content": "last"}));
                json!({"model": model, "messages": messages, "temperature": temperature, "stream": false})
            })
    }

    /// What the gateway should restore for a body the user wrote (protocol.md §3.4): a string that
    /// parses as a JSON array travels as a one-element text part.
    fn expected_restoration(mut body: Value) -> Value {
        for m in body["messages"].as_array_mut().unwrap() {
            if let Some(Value::String(s)) = m.get("content") {
                if s.trim_start().starts_with('[') && serde_json::from_str::<Value>(s).is_ok_and(|v| v.is_array()) {
                    m["content"] = json!([{"type": "text", "text": s.clone()}]);
                }
            }
        }
        body
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn request_rewrite_then_server_decrypt_restores_the_body(suite in suite(), body in chat_body()) {
            let sk = SecretKey::generate(suite, &mut rand_core::OsRng);
            let key = E2eeKey::parse("k", suite.algo(), sk.public_key().to_hex()).unwrap();
            let bytes = serde_json::to_vec(&body).unwrap();
            let req = encrypt_request(Endpoint::ChatCompletions, &bytes, &key, &EncryptOptions::default(), 1_750_000_000, &mut rand_core::OsRng).unwrap();
            let opened = open_request(Endpoint::ChatCompletions, &req.body, &sk, req.context.nonce(), req.context.timestamp()).unwrap();
            // The restored document is what the user meant (floats compared through the gateway's
            // own reparse, which the hash below pins byte for byte).
            let mut expected = expected_restoration(serde_json::from_slice(&bytes).unwrap());
            expected["temperature"] = opened.body["temperature"].clone();
            prop_assert_eq!(&opened.body, &expected);
            prop_assert_eq!(req.restored_body_sha256, <[u8; 32]>::from(Sha256::digest(&opened.bytes)));
            // No user string survives in clear on the wire (beyond trivially short ones).
            let wire = String::from_utf8(req.body.clone()).unwrap();
            for m in body["messages"].as_array().unwrap() {
                if let Some(s) = m["content"].as_str() {
                    if s.len() >= 8 {
                        let escaped = serde_json::to_string(s).unwrap();
                        prop_assert!(!wire.contains(&escaped[1..escaped.len() - 1]));
                    }
                }
            }
        }
    }
}

/// A sealed SSE stream of `deltas` as the gateway frames it, with a comment and `[DONE]`
/// (sealed with the bare `seal` and the spec's AAD).
fn sealed_stream(client: &tower_aci::protocol::PublicKey, deltas: &[String], crlf: bool) -> Vec<u8> {
    let nl = if crlf { "\r\n" } else { "\n" };
    let mut out = format!(": PROCESSING{nl}{nl}");
    out.push_str(&format!(
        "data: {}{nl}{nl}",
        json!({"id": "c0", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    ));
    for (i, d) in deltas.iter().enumerate() {
        let id = format!("c{i}");
        let aad = tower_aci::protocol::aad::response(client.suite(), "choices.0.delta.content", &id, "m", "n", 1);
        let sealed = seal(client, d.as_bytes(), &aad, &mut rand_core::OsRng);
        let chunk = json!({"id": id, "choices": [{"index": 0, "delta": {"content": sealed}}]});
        out.push_str(&format!("event: chunk{nl}data: {chunk}{nl}{nl}"));
    }
    out.push_str(&format!("data: [DONE]{nl}{nl}"));
    out.into_bytes()
}

/// Feed `wire` in the given chunks; return the concatenated output events and the decrypted
/// deltas.
fn decrypt_chunks(ctx: ExchangeContext, wire: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<String>) {
    let mut dec = StreamDecryptor::new(ctx, Default::default());
    let mut out = Vec::new();
    let mut last = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.sort_unstable();
    points.push(wire.len());
    for p in points {
        dec.push(&wire[last..p]);
        last = p;
        while let Some(o) = dec.next_output().unwrap() {
            match o {
                StreamOutput::Event(b) => out.extend_from_slice(&b),
                StreamOutput::InBandError(_, e) => panic!("{e}"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    dec.finish().unwrap();
    let mut deltas = Vec::new();
    for line in out.split(|b| *b == b'\n') {
        if let Some(json) = line.strip_prefix(b"data: ") {
            if let Ok(v) = serde_json::from_slice::<Value>(json) {
                if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                    deltas.push(c.to_owned());
                }
            }
        }
    }
    (out, deltas)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn any_rechunking_of_an_sse_stream_decrypts_to_the_same_events(
        suite in suite(),
        deltas in proptest::collection::vec("\\PC{1,20}", 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
        crlf in any::<bool>(),
    ) {
        let client = SecretKey::from_bytes(suite, &[9; 32]).unwrap();
        let wire = sealed_stream(&client.public_key(), &deltas, crlf);
        let ctx = || ExchangeContext::new(Endpoint::ChatCompletions, SecretKey::from_bytes(suite, &[9; 32]).unwrap(), "m", "n", 1);
        let (whole, whole_deltas) = decrypt_chunks(ctx(), &wire, &[]);
        let (split, split_deltas) = decrypt_chunks(ctx(), &wire, &cuts);
        prop_assert_eq!(&whole_deltas, &deltas);
        prop_assert_eq!(split_deltas, deltas);
        prop_assert_eq!(whole, split);
    }
}

/// JSON-ish noise: documents shaped like responses, with random values where ciphertext goes,
/// and sometimes an `error` member or an error `finish_reason` beside them.
fn hostile_document() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just(json!(null)),
        any::<i64>().prop_map(|n| json!(n)),
        "[0-9a-fA-Fx]{0,200}".prop_map(|s| json!(s)),
        "\\PC{0,20}".prop_map(|s| json!(s)),
        Just(json!([1, 2])),
        Just(json!({"a": 1})),
    ];
    let index = prop_oneof![Just(json!(0)), Just(json!(-1)), Just(json!("1")), Just(json!(1.5)), Just(json!(u64::MAX))];
    let error = prop_oneof![
        3 => Just(None),
        1 => Just(Some(json!(null))),
        1 => Just(Some(json!({"type": "upstream_error", "message": "m"}))),
        1 => Just(Some(json!("boom"))),
    ];
    let finish = prop_oneof![Just(json!(null)), Just(json!("stop")), Just(json!("error")), Just(json!("x_error"))];
    (value.clone(), value.clone(), value, index, error, finish, any::<bool>()).prop_map(|(a, b, c, i, error, finish, wrap)| {
        let mut doc = json!({"id": b, "choices": [{"index": i, "message": {"content": a, "reasoning": c, "audio": {"data": c}},
            "delta": {"content": a, "reasoning_content": c}, "text": c, "finish_reason": finish}],
            "data": [{"index": i, "embedding": a}]});
        if let Some(error) = error {
            doc["error"] = error;
        }
        let bytes = serde_json::to_vec(&doc).unwrap();
        if wrap { [b"data: ".as_slice(), &bytes, b"\n\n"].concat() } else { bytes }
    })
}

/// Every value in `doc` at a location E2EE v2 protects (protocol.md §3.4, written out here
/// independently of the crate's walkers) that is neither null nor absent.
fn protected_values(endpoint: Endpoint, doc: &Value, stream: bool) -> Vec<Value> {
    let mut out = Vec::new();
    let mut take = |v: Option<&Value>| {
        if let Some(v) = v.filter(|v| !v.is_null()) {
            out.push(v.clone());
        }
    };
    match endpoint {
        Endpoint::Embeddings => {
            for item in doc["data"].as_array().into_iter().flatten() {
                take(item.get("embedding"));
            }
        }
        Endpoint::Completions => {
            for choice in doc["choices"].as_array().into_iter().flatten() {
                take(choice.get("text"));
            }
        }
        Endpoint::ChatCompletions => {
            for choice in doc["choices"].as_array().into_iter().flatten() {
                let holder = if stream { "delta" } else { "message" };
                for f in ["content", "reasoning", "reasoning_content"] {
                    take(choice.get(holder).and_then(|m| m.get(f)));
                }
                if !stream {
                    take(
                        choice
                            .get("message")
                            .and_then(|m| m.get("audio"))
                            .and_then(|a| a.get("data"))
                            .filter(|d| d.is_string()),
                    );
                }
            }
        }
        other => panic!("no protected values known for {other:?}"),
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the network sends, decryption fails with a typed error or succeeds; it never
    /// panics and never lets a protected field out in clear: no key sealed anything here, so
    /// every output — a buffered body, a stream event, an in-band error event — must hold
    /// nothing but null at every protected location.
    #[test]
    fn hostile_responses_never_panic_or_leak(doc in hostile_document(), noise in proptest::collection::vec(any::<u8>(), 0..300)) {
        use tower_aci::protocol::decrypt_response;
        for endpoint in [Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings] {
            for input in [&doc, &noise] {
                let ctx = || ExchangeContext::new(endpoint, SecretKey::from_bytes(Suite::X25519, &[1; 32]).unwrap(), "m", "n", 1);
                if let Ok(out) = decrypt_response(&ctx(), bytes::Bytes::copy_from_slice(input)) {
                    prop_assert_eq!(out.decrypted_fields, 0);
                    let v: Value = serde_json::from_slice(&out.body).expect("a success is JSON");
                    prop_assert_eq!(protected_values(endpoint, &v, false), Vec::<Value>::new(), "buffered output leaks");
                }
                let mut dec = StreamDecryptor::new(ctx(), Default::default());
                dec.push(input);
                let mut released = Vec::new();
                while let Ok(Some(StreamOutput::Event(b) | StreamOutput::InBandError(b, _))) = dec.next_output() {
                    released.push(b);
                }
                let _ = dec.finish();
                for event in &released {
                    for line in event.split(|b| *b == b'\n') {
                        let Some(data) = line.strip_prefix(b"data:") else { continue };
                        if let Ok(v) = serde_json::from_slice::<Value>(data) {
                            prop_assert_eq!(protected_values(endpoint, &v, true), Vec::<Value>::new(), "stream output leaks");
                        }
                    }
                }
            }
        }
        if let Ok(text) = std::str::from_utf8(&noise) {
            for suite in Suite::ALL {
                let _ = tower_aci::protocol::PublicKey::parse(suite, text);
            }
        }
        let _ = tower_aci::receipt::Receipt::from_bytes(bytes::Bytes::copy_from_slice(&doc));
    }
}
