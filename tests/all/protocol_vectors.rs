//! The spec's byte-exact vectors, and tamper tests, against the sans-IO protocol core.

use aci_test_gateway::{ResponseSealer, open_request};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower_aci::ErrorKind;
use tower_aci::protocol::E2eeKey;
use tower_aci::protocol::decrypt_response;
#[cfg(feature = "__internal-test-vectors")]
use tower_aci::protocol::{Backend, kat};
use tower_aci::protocol::{EncryptOptions, encrypt_request};
use tower_aci::protocol::{Endpoint, ExchangeContext};
use tower_aci::protocol::{
    PublicKey, SecretKey, Suite,
    kat::{open, seal, seal_with},
};
use tower_aci::protocol::{aad, jcs};

use crate::data::{arr32, load};

/// The recipient's secret key for a KAT vector, from the seeds in the file's `keys`.
fn recipient_secret(keys: &Value, suite: Suite, recipient_public: &str) -> SecretKey {
    let candidates: &[(&str, &str)] = match suite {
        Suite::X25519 => {
            &[("service_x25519_seed", "service_x25519_public"), ("client_x25519_seed", "client_x25519_public")]
        }
        Suite::Secp256k1 => &[
            ("service_secp256k1_seed", "service_secp256k1_public_65"),
            ("client_secp256k1_seed", "client_secp256k1_public_65"),
        ],
        other => panic!("no KAT keys for {other}"),
    };
    let (seed, _) = candidates
        .iter()
        .find(|(_, public)| keys[*public].as_str() == Some(recipient_public))
        .expect("recipient is one of the vector keys");
    let sk = SecretKey::from_bytes(suite, &arr32(keys[*seed].as_str().unwrap())).unwrap();
    assert_eq!(sk.public_key().to_hex(), recipient_public, "seed derives the published key");
    sk
}

/// Rebuild an AAD from its parsed members with our builder.
fn rebuild_aad(aad_utf8: &str) -> Vec<u8> {
    let v: Value = serde_json::from_str(aad_utf8).unwrap();
    let suite = Suite::from_algo(v["algo"].as_str().unwrap()).unwrap();
    let (field, model, nonce, ts) = (
        v["field"].as_str().unwrap(),
        v["model"].as_str().unwrap(),
        v["nonce"].as_str().unwrap(),
        v["ts"].as_u64().unwrap(),
    );
    match v["purpose"].as_str().unwrap() {
        aad::REQUEST_PURPOSE => aad::request(suite, field, model, nonce, ts),
        aad::RESPONSE_PURPOSE => aad::response(suite, field, v["id"].as_str().unwrap(), model, nonce, ts),
        p => panic!("unknown purpose {p}"),
    }
}

#[test]
fn kat_vectors_open_and_seal_byte_for_byte() {
    let file = load("e2ee_v2_kat.json");
    let keys = &file["keys"];
    let vectors = file["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 7, "K1–K7");
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let suite = Suite::from_algo(v["algo"].as_str().unwrap()).unwrap();
        let aad_text = v["aad_utf8"].as_str().unwrap();
        // AAD built by our builder is byte-equal to the vector.
        let aad = rebuild_aad(aad_text);
        assert_eq!(aad, aad_text.as_bytes(), "{name}: AAD bytes");
        assert_eq!(const_hex::encode(Sha256::digest(&aad)), v["aad_sha256"].as_str().unwrap(), "{name}");

        let recipient = recipient_secret(keys, suite, v["recipient_public"].as_str().unwrap());
        let recipient_pub = PublicKey::parse(suite, v["recipient_public"].as_str().unwrap()).unwrap();
        let eph = SecretKey::from_bytes(suite, &arr32(v["ephemeral_secret"].as_str().unwrap())).unwrap();
        assert_eq!(eph.public_key().to_hex(), v["ephemeral_public"].as_str().unwrap(), "{name}");
        // Intermediates (feature `__internal-test-vectors`: the raw ECDH secret is not API).
        #[cfg(feature = "__internal-test-vectors")]
        assert_eq!(
            const_hex::encode(kat::shared_secret(&eph, &recipient_pub).unwrap()),
            v["shared_secret"].as_str().unwrap(),
            "{name}"
        );
        #[cfg(feature = "__internal-test-vectors")]
        assert_eq!(
            const_hex::encode(kat::field_key(&eph, &recipient_pub).unwrap()),
            v["aes_key"].as_str().unwrap(),
            "{name}"
        );

        let plaintext = v["plaintext_utf8"].as_str().unwrap().as_bytes();
        let nonce: [u8; 12] = const_hex::decode(v["gcm_nonce"].as_str().unwrap()).unwrap().try_into().unwrap();
        let field_hex = v["field_hex"].as_str().unwrap();
        // Seal reproduces the vector with the fixed ephemeral key and nonce injected.
        assert_eq!(seal_with(&recipient_pub, &eph, &nonce, plaintext, &aad).unwrap(), field_hex, "{name}: seal");
        // Open recovers the plaintext.
        assert_eq!(open(&recipient, field_hex, &aad).unwrap(), plaintext, "{name}: open");

        // The same bytes from every compiled backend (features `libsecp256k1`, `aws-lc`).
        #[cfg(feature = "__internal-test-vectors")]
        for &backend in Backend::ALL {
            let tag = format!("{name} on {}", backend.name());
            assert_eq!(kat::public_key_using(backend, &eph).to_hex(), v["ephemeral_public"].as_str().unwrap(), "{tag}");
            assert_eq!(
                kat::public_key_using(backend, &recipient).to_hex(),
                v["recipient_public"].as_str().unwrap(),
                "{tag}"
            );
            assert_eq!(
                const_hex::encode(kat::shared_secret_using(backend, &eph, &recipient_pub).unwrap()),
                v["shared_secret"].as_str().unwrap(),
                "{tag}"
            );
            assert_eq!(
                kat::seal_with_using(backend, &recipient_pub, &eph, &nonce, plaintext, &aad).unwrap(),
                field_hex,
                "{tag}: seal"
            );
            assert_eq!(kat::open_using(backend, &recipient, field_hex, &aad).unwrap(), plaintext, "{tag}: open");
        }
    }
}

#[test]
fn aci_aad_vectors_are_byte_exact() {
    let v = load("aci_vectors.json");
    let a = &v["e2ee_aad"];
    let suite = Suite::from_algo(a["suite"].as_str().unwrap()).unwrap();
    let (model, nonce, ts) = (a["model"].as_str().unwrap(), a["nonce"].as_str().unwrap(), a["ts"].as_u64().unwrap());
    assert_eq!(
        aad::request(suite, "messages.0.content", model, nonce, ts),
        a["request_messages.0.content"].as_str().unwrap().as_bytes()
    );
    assert_eq!(
        aad::response(suite, "choices.0.message.content", a["response_id"].as_str().unwrap(), model, nonce, ts),
        a["response_choices.0.message.content"].as_str().unwrap().as_bytes()
    );
}

#[test]
fn keyset_jcs_vector_is_byte_exact() {
    let v = load("aci_vectors.json");
    let jcs_text = v["keyset"]["jcs"].as_str().unwrap();
    // Re-order members to prove canonicalisation sorts them.
    let parsed: Value = serde_json::from_str(jcs_text).unwrap();
    let mut reordered = serde_json::Map::new();
    for (k, val) in parsed.as_object().unwrap().iter().rev() {
        reordered.insert(k.clone(), val.clone());
    }
    let bytes = jcs::to_vec(&Value::Object(reordered)).unwrap();
    assert_eq!(bytes, jcs_text.as_bytes());
    assert_eq!(
        format!("sha256:{}", const_hex::encode(Sha256::digest(&bytes))),
        v["keyset"]["digest"].as_str().unwrap()
    );
}

fn service_key(suite: Suite) -> (SecretKey, E2eeKey) {
    let sk = SecretKey::generate(suite, &mut rand_core::OsRng);
    let k = E2eeKey::parse("k", suite.algo(), sk.public_key().to_hex()).unwrap();
    (sk, k)
}

/// Seal `plaintext` as the `messages.0.content` field of a wire template holding `"<ct>"`, as a
/// client would, and return the wire body.
fn wire_from_template(template: &str, plaintext: &str, service: &E2eeKey, nonce: &str, ts: u64) -> Vec<u8> {
    let aad = aad::request(service.suite(), "messages.0.content", "m", nonce, ts);
    let ct = seal(service.public_key(), plaintext.as_bytes(), &aad, &mut rand_core::OsRng);
    template.replace("<ct>", &ct).into_bytes()
}

const NONCE: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[test]
fn restored_body_hash_r1() {
    let expected = "8d85436f7c88b6c67f5762093f477c3a381a4381ec0b64bb77d97b7084c37957";
    let (sk, key) = service_key(Suite::X25519);
    // Server side: the exact R1 wire (whole-content plaintext with surrounding spaces).
    let template = r#"{"model":"m","temperature":0.7,"messages":[{"role":"user","content":"<ct>"}]}"#;
    let plaintext = r#" [ {"type":"text", "text":"hi"}, {"type":"image_url","image_url":{"url":"https://x/y.png"}} ] "#;
    let wire = wire_from_template(template, plaintext, &key, NONCE, 1_750_000_000);
    let opened = open_request(Endpoint::ChatCompletions, &wire, &sk, NONCE, 1_750_000_000).unwrap();
    assert_eq!(
        std::str::from_utf8(&opened.bytes).unwrap(),
        r#"{"model":"m","temperature":0.7,"messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#
    );
    assert_eq!(const_hex::encode(Sha256::digest(&opened.bytes)), expected);

    // Client side: the user's body with that structured content yields the same hash, and the
    // server restores exactly it.
    let user = r#"{"model":"m","temperature":0.7,"messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#;
    let req = encrypt_request(
        Endpoint::ChatCompletions,
        user.as_bytes(),
        &key,
        &EncryptOptions::default(),
        1_750_000_000,
        &mut rand_core::OsRng,
    )
    .unwrap();
    assert_eq!(const_hex::encode(req.restored_body_sha256), expected);
    let opened =
        open_request(Endpoint::ChatCompletions, &req.body, &sk, req.context.nonce(), req.context.timestamp()).unwrap();
    assert_eq!(const_hex::encode(Sha256::digest(&opened.bytes)), expected);
}

#[test]
fn restored_body_hash_r2_number_and_escape_normalisation() {
    let expected_hex = "7b2274656d7065726174757265223a302e372c226d6f64656c223a226d222c2278223a322c2279223a2d302e302c227a223a342e35343538393631343038363039393434652d31342c22626967223a312e38343436373434303733373039353532652b31392c2265223a22c3a92f222c226d65737361676573223a5b7b22726f6c65223a2275736572222c22636f6e74656e74223a2268c3a96c6c6f20e280a8205c22715c22227d5d7d";
    let expected_hash = "0b4244bb3f603ac8a00c52388bba254ce67a79402f34116972bb3becbbf79c4b";
    let template = r#"{ "temperature": 0.7, "model":"m", "x": 1e16, "y": -0, "z": 4.545896140860994e-14, "big": 18446744073709551616, "e":"\u00e9\/", "messages":[{"role":"user","content":"<ct>"}], "x": 2 }"#;
    let plaintext = "héllo \u{2028} \"q\"";
    let (sk, key) = service_key(Suite::Secp256k1);

    // Server side on the exact R2 wire.
    let wire = wire_from_template(template, plaintext, &key, NONCE, 1_750_000_000);
    let opened = open_request(Endpoint::ChatCompletions, &wire, &sk, NONCE, 1_750_000_000).unwrap();
    assert_eq!(const_hex::encode(&opened.bytes), expected_hex);
    assert_eq!(const_hex::encode(Sha256::digest(&opened.bytes)), expected_hash);

    // Client side: the user's body (same document, plaintext in place) predicts the hash the
    // gateway will compute over what we actually send, including the 1-ULP float change.
    let user = template.replace("\"<ct>\"", &serde_json::to_string(plaintext).unwrap());
    let req = encrypt_request(
        Endpoint::ChatCompletions,
        user.as_bytes(),
        &key,
        &EncryptOptions::default(),
        1_750_000_000,
        &mut rand_core::OsRng,
    )
    .unwrap();
    let opened =
        open_request(Endpoint::ChatCompletions, &req.body, &sk, req.context.nonce(), req.context.timestamp()).unwrap();
    assert_eq!(req.restored_body_sha256, <[u8; 32]>::from(Sha256::digest(&opened.bytes)));
    assert_eq!(const_hex::encode(req.restored_body_sha256), expected_hash);
}

/// A one-field request sealed to `suite`, with the wire blob split out for tampering.
struct Tamper {
    sk: SecretKey,
    suite: Suite,
    field: String,
}

impl Tamper {
    fn new(suite: Suite) -> Self {
        let sk = SecretKey::generate(suite, &mut rand_core::OsRng);
        let aad = aad::request(suite, "messages.0.content", "m", NONCE, 1);
        let field = seal(&sk.public_key(), b"attack at dawn", &aad, &mut rand_core::OsRng);
        Tamper { sk, suite, field }
    }

    fn open_with(&self, field: &str, path: &str, model: &str, nonce: &str, ts: u64) -> ErrorKind {
        let aad = aad::request(self.suite, path, model, nonce, ts);
        match open(&self.sk, field, &aad) {
            Ok(p) => panic!("tampered field opened to {p:?}"),
            Err(e) => e.kind(),
        }
    }

    fn open(&self, field: &str) -> ErrorKind {
        self.open_with(field, "messages.0.content", "m", NONCE, 1)
    }
}

#[test]
fn tampering_is_rejected_as_decrypt_in_both_suites() {
    for suite in Suite::ALL {
        let t = Tamper::new(suite);
        let blob = const_hex::decode(&t.field).unwrap();
        // The untampered field opens.
        let aad = aad::request(suite, "messages.0.content", "m", NONCE, 1);
        assert_eq!(open(&t.sk, &t.field, &aad).unwrap(), b"attack at dawn");
        // Flip every byte, one at a time.
        for i in 0..blob.len() {
            let mut b = blob.clone();
            b[i] ^= 0x01;
            assert_eq!(t.open(&const_hex::encode(&b)), ErrorKind::Decrypt, "{suite}: flip byte {i}");
        }
        // Truncate by one byte, drop the tag, drop everything but the header.
        assert_eq!(t.open(&const_hex::encode(&blob[..blob.len() - 1])), ErrorKind::Decrypt);
        assert_eq!(t.open(&const_hex::encode(&blob[..blob.len() - 16])), ErrorKind::Decrypt);
        assert_eq!(t.open(&const_hex::encode(&blob[..kat::ephemeral_len(suite) + 12])), ErrorKind::Decrypt);
        assert_eq!(t.open(""), ErrorKind::Decrypt);
        // Appending bytes breaks the tag too.
        assert_eq!(t.open(&format!("{}00", t.field)), ErrorKind::Decrypt);
        // Moved to another field, other model, nonce or timestamp.
        assert_eq!(t.open_with(&t.field, "messages.1.content", "m", NONCE, 1), ErrorKind::Decrypt);
        assert_eq!(t.open_with(&t.field, "messages.0.content", "m2", NONCE, 1), ErrorKind::Decrypt);
        assert_eq!(t.open_with(&t.field, "messages.0.content", "m", &NONCE.to_uppercase(), 1), ErrorKind::Decrypt);
        assert_eq!(t.open_with(&t.field, "messages.0.content", "m", NONCE, 2), ErrorKind::Decrypt);
        // Not hex at all.
        assert_eq!(t.open("attack at dawn"), ErrorKind::Malformed);
        // Sealed to another key of the same suite.
        let other = SecretKey::generate(suite, &mut rand_core::OsRng);
        assert_eq!(open(&other, &t.field, &aad).unwrap_err().kind(), ErrorKind::Decrypt);
    }
}

/// A client exchange and the matching server-side sealer.
fn exchange(endpoint: Endpoint, suite: Suite, model: &str) -> (ExchangeContext, ResponseSealer) {
    let client = SecretKey::generate(suite, &mut rand_core::OsRng);
    let sealer = ResponseSealer::new(endpoint, client.public_key(), model, NONCE, 7);
    (ExchangeContext::new(endpoint, client, model, NONCE, 7), sealer)
}

#[test]
fn buffered_chat_response_decrypts_with_index_rules() {
    for suite in Suite::ALL {
        let (ctx, sealer) = exchange(Endpoint::ChatCompletions, suite, "Qwen/é");
        let mut doc: Value = serde_json::json!({
            "id": "chatcmpl-1",
            "choices": [
                {"index": 3, "message": {"role": "assistant", "content": "three", "reasoning_content": ""}},
                {"message": {"content": "no index", "reasoning": null}},
                {"index": "1", "message": {"content": "string index", "audio": {"data": "UklGRg==", "transcript": "hi"}}},
                "not an object"
            ],
            "usage": {"total_tokens": 5}
        });
        let plain = doc.clone();
        assert_eq!(sealer.seal_document(&mut doc, &mut rand_core::OsRng).unwrap(), 5);
        let wire = serde_json::to_vec(&doc).unwrap();
        let text = String::from_utf8_lossy(&wire);
        assert!(!text.contains("three") && !text.contains("no index") && !text.contains("UklGRg"));
        let out = decrypt_response(&ctx, wire.into()).unwrap();
        assert_eq!(out.decrypted_fields, 5);
        assert_eq!(serde_json::from_slice::<Value>(&out.body).unwrap(), plain);
        assert_eq!(out.cleartext_fields, vec!["choices.2.message.audio.transcript".to_owned()]);
    }
}

#[test]
fn buffered_response_fails_closed() {
    let (ctx, sealer) = exchange(Endpoint::ChatCompletions, Suite::X25519, "m");
    // A clear string where ciphertext belongs.
    let clear = br#"{"id":"x","choices":[{"index":0,"message":{"content":"hello"}}]}"#;
    assert_eq!(decrypt_response(&ctx, clear.to_vec().into()).unwrap_err().kind(), ErrorKind::MissingEncryption);
    // A content array where ciphertext belongs.
    let arr = br#"{"id":"x","choices":[{"index":0,"message":{"content":[{"type":"text","text":"a"}]}}]}"#;
    assert_eq!(decrypt_response(&ctx, arr.to_vec().into()).unwrap_err().kind(), ErrorKind::MissingEncryption);
    // A ciphertext moved to another choice index.
    let mut doc = serde_json::json!({"id":"x","choices":[{"index":0,"message":{"content":"a"}}]});
    sealer.seal_document(&mut doc, &mut rand_core::OsRng).unwrap();
    doc["choices"][0]["index"] = 1.into();
    assert_eq!(
        decrypt_response(&ctx, serde_json::to_vec(&doc).unwrap().into()).unwrap_err().kind(),
        ErrorKind::Decrypt
    );
    // Another response id in the AAD.
    doc["choices"][0]["index"] = 0.into();
    doc["id"] = "y".into();
    assert_eq!(
        decrypt_response(&ctx, serde_json::to_vec(&doc).unwrap().into()).unwrap_err().kind(),
        ErrorKind::Decrypt
    );
    // Not JSON.
    assert_eq!(decrypt_response(&ctx, b"<html>".to_vec().into()).unwrap_err().kind(), ErrorKind::Malformed);
    // Error and usage-only bodies carry nothing and pass through; null content stays null.
    for ok in [
        &br#"{"error":{"message":"m","type":"t"}}"#[..],
        br#"{"usage":{"a":1}}"#,
        br#"{"id":"x","choices":[{"message":{"content":null,"tool_calls":[{"function":{"arguments":"{}"}}]}}]}"#,
    ] {
        let out = decrypt_response(&ctx, ok.to_vec().into()).unwrap();
        assert_eq!(&out.body[..], ok);
    }
    let out = decrypt_response(&ctx, br#"{"choices":[{"message":{"content":null,"tool_calls":[{"id":"t"}],"refusal":"no"},"logprobs":{"content":[]}}]}"#.to_vec().into()).unwrap();
    assert_eq!(
        out.cleartext_fields,
        vec!["choices.0.message.tool_calls.0", "choices.0.message.refusal", "choices.0.logprobs"]
    );
}

#[test]
fn completions_and_embeddings_decrypt() {
    let (ctx, sealer) = exchange(Endpoint::Completions, Suite::Secp256k1, "m");
    let mut doc = serde_json::json!({"id":"c","choices":[{"index":0,"text":""},{"index":1,"text":"two"}]});
    let plain = doc.clone();
    sealer.seal_document(&mut doc, &mut rand_core::OsRng).unwrap();
    let out = decrypt_response(&ctx, serde_json::to_vec(&doc).unwrap().into()).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&out.body).unwrap(), plain);

    let (ctx, sealer) = exchange(Endpoint::Embeddings, Suite::Secp256k1, "e");
    let mut doc = serde_json::json!({"object":"list","data":[
        {"object":"embedding","index":0,"embedding":[0.5,-0.25,1.0]},
        {"object":"embedding","index":1,"embedding":"AAAAPw=="}
    ]});
    let plain = doc.clone();
    sealer.seal_document(&mut doc, &mut rand_core::OsRng).unwrap();
    assert!(doc["data"][0]["embedding"].is_string() && doc["data"][1]["embedding"].as_str().unwrap().len() > 100);
    let out = decrypt_response(&ctx, serde_json::to_vec(&doc).unwrap().into()).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&out.body).unwrap(), plain);
    // A clear float array is missing encryption.
    let clear = br#"{"data":[{"index":0,"embedding":[0.5]}]}"#;
    assert_eq!(decrypt_response(&ctx, clear.to_vec().into()).unwrap_err().kind(), ErrorKind::MissingEncryption);
}

#[test]
fn k6_embedding_vector_decrypts_in_a_document() {
    let file = load("e2ee_v2_kat.json");
    let v = &file["vectors"][5];
    assert!(v["name"].as_str().unwrap().contains("embedding"));
    let client =
        SecretKey::from_bytes(Suite::Secp256k1, &arr32(file["keys"]["client_secp256k1_seed"].as_str().unwrap()))
            .unwrap();
    let ctx = ExchangeContext::new(Endpoint::Embeddings, client, "demo-model", NONCE, 1_750_000_000);
    let body = format!(r#"{{"data":[{{"index":0,"embedding":"{}"}}]}}"#, v["field_hex"].as_str().unwrap());
    let out = decrypt_response(&ctx, body.into_bytes().into()).unwrap();
    assert_eq!(&out.body[..], br#"{"data":[{"index":0,"embedding":[0.5,-0.25,1.0]}]}"#);
}
