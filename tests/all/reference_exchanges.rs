//! The reference gateway's own bytes as the oracle: every captured exchange (both suites) is
//! decrypted through the public API and checked against the plaintext, the decrypted and
//! cleartext paths and the signed receipts the reference produced. Nothing here comes from this
//! crate's test gateway.

#![cfg_attr(not(feature = "__internal-test-vectors"), allow(unused_imports, dead_code))]

use std::collections::BTreeSet;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt};
use tower_aci::attest::verify_report;
use tower_aci::protocol::aad;
use tower_aci::protocol::decrypt_response;
use tower_aci::protocol::{
    PublicKey, SecretKey, Suite,
    kat::{open, seal_with},
};
use tower_aci::protocol::{StreamDecryptor, StreamOutput};
use tower_aci::receipt::{ExchangeRecord, Receipt, ReceiptPolicy, verify_exchange};
use tower_aci::{E2eeLayer, ErrorKind, GatewayError, ReceiptFailure};

use crate::data::arr32;
use crate::reference::*;

fn paths(e: &Value, key: &str) -> Vec<String> {
    e[key].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect()
}

#[test]
fn reference_report_verifies_under_a_stub_accepting_policy() {
    let f = file();
    for suite in Suite::ALL {
        let keyset = keyset(suite);
        assert_eq!(keyset.digest(), f["workload_keyset_digest"].as_str().unwrap());
        assert!(!keyset.hardware_verified(), "a stub quote proves nothing about hardware");
        let rk = keyset.receipt_key(f["receipt_key"]["key_id"].as_str().unwrap()).expect("the receipt key");
        assert_eq!(const_hex::encode(rk.verifying_key().as_bytes()), f["receipt_key"]["public_key"].as_str().unwrap());
        let published: BTreeSet<(String, String)> = f["service_e2ee_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| (s(k, "key_id").to_owned(), s(k, "public_key").to_owned()))
            .collect();
        let attested: BTreeSet<(String, String)> =
            keyset.e2ee_keys().iter().map(|k| (k.key_id().to_owned(), k.public_key_text().to_owned())).collect();
        assert_eq!(attested, published);
        assert_eq!(keyset.e2ee_key().suite(), suite, "the policy selects {suite}");
        // The service's test secrets are the keys the keyset publishes.
        for k in f["service_e2ee_keys"].as_array().unwrap() {
            let suite = Suite::from_algo(s(k, "algo")).unwrap();
            let sk = SecretKey::from_bytes(suite, &arr32(s(k, "test_only_secret_key"))).unwrap();
            assert_eq!(sk.public_key(), PublicKey::parse(suite, s(k, "public_key")).unwrap());
        }
    }
    // Without the dangerous relaxation the stub quote is refused.
    let report = &f["report"];
    let now = f["generated_at"].as_u64().unwrap();
    let pinned = crate::attest_support::pinned_policy();
    let strict = verify_report(report["body"].as_str().unwrap().as_bytes(), &report_nonce(), now, &pinned);
    assert!(matches!(strict.unwrap_err().kind(), ErrorKind::Attestation(_)));
    // Nor does it verify for another nonce.
    let other =
        verify_report(report["body"].as_str().unwrap().as_bytes(), &[0xbb; 32], now, &stub_policy(Suite::X25519));
    assert!(matches!(other.unwrap_err().kind(), ErrorKind::Attestation(_)));
}

#[test]
fn reference_client_keys_match_their_secrets() {
    for e in exchanges() {
        let pk = client_secret(e).public_key();
        assert_eq!(pk.to_hex(), s(e, "client_public_key"), "{}", name(e));
        assert_eq!(s(e, "algo"), suite_of(e).algo());
    }
}

/// Request side: the AADs, the ciphertexts (from the recorded ephemeral keys and IVs), the
/// service's view, and the restored-body hash the receipt names.
#[test]
fn reference_request_fields_reproduce_byte_for_byte() {
    let service: Vec<(Suite, SecretKey)> = file()["service_e2ee_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let suite = Suite::from_algo(s(k, "algo")).unwrap();
            (suite, SecretKey::from_bytes(suite, &arr32(s(k, "test_only_secret_key"))).unwrap())
        })
        .collect();
    for e in exchanges() {
        let suite = suite_of(e);
        let to = e.get("request_encrypted_to").and_then(Value::as_str).unwrap_or_else(|| s(e, "model_public_key"));
        let recipient = PublicKey::parse(suite, to).unwrap();
        for f in e["request_fields"].as_array().unwrap() {
            let aad = aad::request(suite, s(f, "field"), s(e, "model"), s(e, "nonce"), timestamp(e));
            assert_eq!(std::str::from_utf8(&aad).unwrap(), s(f, "aad"), "{} {}", name(e), s(f, "field"));
            let eph = SecretKey::from_bytes(suite, &arr32(s(f, "ephemeral_secret_key"))).unwrap();
            let iv: [u8; 12] = const_hex::decode(s(f, "iv")).unwrap().try_into().unwrap();
            let sealed = seal_with(&recipient, &eph, &iv, s(f, "plaintext").as_bytes(), &aad).unwrap();
            assert_eq!(sealed, s(f, "ciphertext"), "{} {}", name(e), s(f, "field"));
            assert!(s(e, "request_wire").contains(&sealed));
            // The service opens it (unless it was sealed to another key).
            let sk = &service.iter().find(|(s, _)| *s == suite).unwrap().1;
            let opened = open(sk, &sealed, &aad);
            if e.get("request_encrypted_to").is_some() {
                assert_eq!(opened.unwrap_err().kind(), ErrorKind::Decrypt);
            } else {
                assert_eq!(opened.unwrap(), s(f, "plaintext").as_bytes());
            }
        }
        // request.received: sha256 of our compact serialisation of the plaintext request.
        if let Some(h) = e["restored_request_sha256"].as_str() {
            let compact = serde_json::to_vec(&e["request_plaintext"]).unwrap();
            assert_eq!(sha256(&compact), hash(h), "{}", name(e));
        }
    }
}

/// Buffered answers through the sans-IO decryptor: the plaintext, the paths that were
/// ciphertext, the paths that came in clear, embeddings byte for byte; and the usual tampering.
#[test]
fn reference_buffered_answers_decrypt_with_the_reported_paths() {
    let mut seen = 0;
    for e in exchanges().filter(|e| kind_of(e) == "buffered") {
        seen += 1;
        let out = decrypt_response(&context(e), wire(e).into()).unwrap_or_else(|err| panic!("{}: {err}", name(e)));
        let got: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(got, e["expected_plaintext"], "{}", name(e));
        assert_eq!(out.decrypted_paths, paths(e, "decrypted_paths"), "{}", name(e));
        assert_eq!(out.decrypted_fields, out.decrypted_paths.len());
        assert_eq!(out.cleartext_fields, paths(e, "cleartext_paths"), "{}", name(e));

        // Embeddings: the exact decrypted text.
        if let Some(texts) = e["embedding_plaintexts"].as_object() {
            let doc: Value = serde_json::from_slice(&wire(e)).unwrap();
            let id = doc["id"].as_str().unwrap_or("");
            for (path, text) in texts {
                let k: usize = path.split('.').nth(1).unwrap().parse().unwrap();
                let field = doc["data"][k]["embedding"].as_str().unwrap();
                let aad = aad::response(suite_of(e), path, id, s(e, "model"), s(e, "nonce"), timestamp(e));
                let plain = open(&client_secret(e), field, &aad).unwrap();
                assert_eq!(std::str::from_utf8(&plain).unwrap(), text.as_str().unwrap(), "{} {path}", name(e));
            }
        }

        // Tampering: one ciphertext byte, or another id/field/model/ts in the AAD.
        if out.decrypted_fields > 0 {
            let w = String::from_utf8(wire(e)).unwrap();
            let first = paths(e, "decrypted_paths")[0].clone();
            let doc: Value = serde_json::from_str(&w).unwrap();
            let pointer = format!("/{}", first.replace('.', "/"));
            let ct = doc.pointer(&pointer).and_then(Value::as_str).unwrap().to_owned();
            let mut flipped = ct.clone().into_bytes();
            let i = flipped.len() - 10;
            flipped[i] = if flipped[i] == b'0' { b'1' } else { b'0' };
            let tampered = w.replacen(&ct, std::str::from_utf8(&flipped).unwrap(), 1);
            assert_eq!(
                decrypt_response(&context(e), Bytes::from(tampered)).unwrap_err().kind(),
                ErrorKind::Decrypt,
                "{}",
                name(e)
            );
            let with_id = w.replacen(r#""id":""#, r#""id":"x"#, 1);
            assert_eq!(decrypt_response(&context(e), Bytes::from(with_id)).unwrap_err().kind(), ErrorKind::Decrypt);
            let ctx = |model: &str, ts: u64| {
                tower_aci::protocol::ExchangeContext::new(endpoint_of(e), client_secret(e), model, s(e, "nonce"), ts)
            };
            let w = Bytes::from(w);
            assert_eq!(
                decrypt_response(&ctx("test-model2", timestamp(e)), w.clone()).unwrap_err().kind(),
                ErrorKind::Decrypt
            );
            assert_eq!(
                decrypt_response(&ctx("test-model", timestamp(e) + 1), w.clone()).unwrap_err().kind(),
                ErrorKind::Decrypt
            );
            // The field moved: swap the first two choices' indexes (or data items).
            if out.decrypted_fields > 1 && first.starts_with("choices.0") {
                let mut doc: Value = serde_json::from_slice(&w).unwrap();
                if doc["choices"].as_array().is_some_and(|c| c.len() > 1) {
                    doc["choices"][0]["index"] = 1.into();
                    doc["choices"][1]["index"] = 0.into();
                    let moved = Bytes::from(serde_json::to_vec(&doc).unwrap());
                    assert_eq!(decrypt_response(&context(e), moved).unwrap_err().kind(), ErrorKind::Decrypt);
                }
            }
        }
    }
    assert_eq!(seen, 2 * 18, "every buffered exchange of both suites");
}

/// One stream fed in the given pieces: the outputs, and for each data event (not `[DONE]`) its
/// decrypted and cleartext paths prefixed `events.{k}.`.
struct StreamRun {
    events: Vec<Value>,
    done: bool,
    in_band: Option<(usize, tower_aci::Error)>,
    decrypted: Vec<String>,
    cleartext: Vec<String>,
    finish: tower_aci::Result<tower_aci::protocol::StreamEnd>,
}

fn run_stream(e: &Value, wire: &[u8], cuts: &[usize]) -> StreamRun {
    let mut dec = StreamDecryptor::new(context(e), Default::default());
    let mut events = Vec::new();
    let mut done = false;
    let mut in_band = None;
    let mut decrypted = Vec::new();
    let mut cleartext = Vec::new();
    let mut last = 0;
    for p in cuts.iter().copied().chain(std::iter::once(wire.len())) {
        dec.push(&wire[last..p]);
        last = p;
        while let Some(o) = dec.next_output().unwrap_or_else(|err| panic!("{}: {err}", name(e))) {
            let (bytes, mut err) = match o {
                StreamOutput::Event(b) => (b, None),
                StreamOutput::InBandError(b, err) => (b, Some(err)),
                other => panic!("{}: unexpected {other:?}", name(e)),
            };
            for data in sse_data(&bytes) {
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let k = events.len();
                decrypted.extend(dec.last_decrypted_paths().iter().map(|p| format!("events.{k}.{p}")));
                cleartext.extend(dec.last_cleartext_paths().iter().map(|p| format!("events.{k}.{p}")));
                events.push(serde_json::from_str(&data).unwrap());
                if let Some(err) = err.take() {
                    in_band.get_or_insert((k, err));
                }
            }
        }
    }
    StreamRun { events, done, in_band, decrypted, cleartext, finish: dec.finish() }
}

fn check_stream(e: &Value, run: &StreamRun) {
    let expected = &e["expected_plaintext"];
    assert_eq!(Value::Array(run.events.clone()), expected["events"], "{}", name(e));
    assert_eq!(run.done, expected["done"].as_bool().unwrap(), "{}", name(e));
    assert_eq!(run.decrypted, paths(e, "decrypted_paths"), "{}", name(e));
    assert_eq!(run.cleartext, paths(e, "cleartext_paths"), "{}", name(e));
    match expected["error_event_index"].as_u64() {
        Some(k) => {
            let (at, err) = run.in_band.as_ref().expect("an in-band error");
            assert_eq!(*at as u64, k);
            assert_eq!(err.kind(), ErrorKind::InBandError);
            assert_eq!(err.gateway_error_type(), Some("upstream_error"));
            assert_eq!(run.finish.as_ref().unwrap_err().kind(), ErrorKind::InBandError);
        }
        None => {
            assert!(run.in_band.is_none(), "{}", name(e));
            let end = run.finish.as_ref().unwrap_or_else(|err| panic!("{}: {err}", name(e)));
            let with_ciphertext: BTreeSet<&str> = run.decrypted.iter().map(|p| p.split('.').nth(1).unwrap()).collect();
            assert_eq!(end.decrypted_events as usize, with_ciphertext.len(), "{}", name(e));
        }
    }
}

/// Streams through `StreamDecryptor`, whole, in random chunkings, and split at every byte for a
/// few of them.
#[test]
fn reference_streams_decrypt_in_any_chunking() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut seen = 0;
    for e in exchanges().filter(|e| kind_of(e) == "stream") {
        seen += 1;
        let w = wire(e);
        check_stream(e, &run_stream(e, &w, &[]));
        for _ in 0..8 {
            let mut cuts: Vec<usize> = (0..rng.gen_range(1..40)).map(|_| rng.gen_range(0..=w.len())).collect();
            cuts.sort_unstable();
            check_stream(e, &run_stream(e, &w, &cuts));
        }
        let bytewise: Vec<usize> = (1..w.len()).collect();
        check_stream(e, &run_stream(e, &w, &bytewise));
    }
    assert_eq!(seen, 2 * 10, "every stream of both suites");
    // Every split point, for a few.
    for (suite, n) in [
        (Suite::X25519, "chat_default_stream"),
        (Suite::Secp256k1, "chat_midfail_stream"),
        (Suite::X25519, "chat_unicode_stream"),
        (Suite::X25519, "chat_tools_stream"),
    ] {
        let e = exchange(suite, n);
        let w = wire(e);
        for split in 0..=w.len() {
            check_stream(e, &run_stream(e, &w, &[split]));
        }
    }
}

/// A stream decrypts only with its own AAD: another model, timestamp or chunk id fails; a
/// flipped ciphertext byte fails.
#[test]
fn reference_stream_tampering_is_detected() {
    for suite in Suite::ALL {
        let e = exchange(suite, "chat_default_stream");
        let w = String::from_utf8(wire(e)).unwrap();
        let first_chunk_id = r#""id":"chatcmpl-mock-"#;
        let dec_err = |wire: &str, ctx: tower_aci::protocol::ExchangeContext| {
            let mut dec = StreamDecryptor::new(ctx, Default::default());
            dec.push(wire.as_bytes());
            loop {
                match dec.next_output() {
                    Ok(Some(_)) => {}
                    Ok(None) => return dec.finish().err().map(|e| e.kind()),
                    Err(e) => return Some(e.kind()),
                }
            }
        };
        assert_eq!(dec_err(&w, context(e)), None);
        assert_eq!(
            dec_err(&w.replacen(first_chunk_id, r#""id":"chatcmpl-mock-X"#, 1), context(e)),
            Some(ErrorKind::Decrypt)
        );
        let other = tower_aci::protocol::ExchangeContext::new(
            endpoint_of(e),
            client_secret(e),
            "test-model",
            s(e, "nonce"),
            timestamp(e) - 1,
        );
        assert_eq!(dec_err(&w, other), Some(ErrorKind::Decrypt));
        let i = w.find(r#""content":""#).unwrap() + 40;
        let mut bytes = w.clone().into_bytes();
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        assert_eq!(dec_err(std::str::from_utf8(&bytes).unwrap(), context(e)), Some(ErrorKind::Decrypt));
    }
}

/// The layer over a canned inner service that answers with the reference's exact bytes. The
/// layer draws the recorded client key, nonce, ephemeral keys and IVs, so it sends the recorded
/// request byte for byte and decrypts the recorded answer.
#[cfg(feature = "__internal-test-vectors")]
#[tokio::test]
async fn reference_exchanges_through_the_layer() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xfeed);
    // Request shapes this client builds differently from the reference's client: the same
    // restored body, another wire form.
    let own_shape = |e: &Value| match s(e, "name") {
        // This client encrypts a part array whose parts it fully protects part by part.
        "chat_request_parts_whole_content" => false,
        // Encrypted on purpose to a key that is not the attested one.
        "negative_wrong_model_key_header" | "negative_ciphertext_to_wrong_key" => false,
        _ => true,
    };
    let mut wire_identical = 0;
    for e in exchanges() {
        let suite = suite_of(e);
        let (keys, clock) = handle(suite);
        clock.set(timestamp(e));
        let w = wire(e);
        let cuts: Vec<usize> = if kind_of(e) == "stream" {
            let mut c: Vec<usize> = (0..rng.gen_range(1..30)).map(|_| rng.gen_range(0..=w.len())).collect();
            c.sort_unstable();
            c
        } else {
            vec![w.len() / 2]
        };
        let (inner, seen) = canned(Answer::of(e, cuts));
        let layer = E2eeLayer::new(keys.clone()).dangerous_randomness_for_tests(tape_fill(tape(e)));
        let svc = ServiceBuilder::new().layer(layer).service(inner);
        let req = Request::post(format!("http://localhost{}", s(e, "endpoint")))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&e["request_plaintext"]).unwrap())))
            .unwrap();
        let res = svc.oneshot(req).await.unwrap_or_else(|err| panic!("{}: {err}", name(e)));

        // What went out.
        let (parts, sent) = seen.lock().unwrap().take().expect("a request reached the inner service");
        for (k, v) in e["request_headers"].as_object().unwrap() {
            if k == "X-Model-Pub-Key" && !own_shape(e) {
                continue;
            }
            assert_eq!(parts.headers.get(k.as_str()).map(|h| h.to_str().unwrap()), v.as_str(), "{} {k}", name(e));
        }
        if own_shape(e) {
            assert_eq!(std::str::from_utf8(&sent).unwrap(), s(e, "request_wire"), "{}", name(e));
            wire_identical += 1;
        } else {
            assert_ne!(std::str::from_utf8(&sent).unwrap(), s(e, "request_wire"));
        }

        let record = res.extensions().get::<ExchangeRecord>().cloned().expect("a record");
        if let Some(h) = e["restored_request_sha256"].as_str() {
            assert_eq!(record.request_body_sha256(), hash(h), "{}: the restored-body hash", name(e));
        }
        assert_eq!(record.receipt_id(), e["receipt_id"].as_str());
        assert_eq!(record.streamed(), kind_of(e) == "stream");

        match kind_of(e) {
            "buffered" => {
                let body = res.into_body().collect().await.unwrap().to_bytes();
                let got: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(got, e["expected_plaintext"], "{}", name(e));
            }
            "stream" => {
                let mut body = res.into_body();
                let mut out = Vec::new();
                let mut error = None;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(f) => out.extend_from_slice(f.data_ref().unwrap()),
                        Err(err) => {
                            error = Some(err);
                            break;
                        }
                    }
                }
                let data = sse_data(&out);
                let events: Vec<Value> =
                    data.iter().filter(|d| *d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect();
                let expected = &e["expected_plaintext"];
                match expected["error_event_index"].as_u64() {
                    None => {
                        assert!(error.is_none(), "{}: {error:?}", name(e));
                        assert_eq!(Value::Array(events), expected["events"], "{}", name(e));
                        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
                    }
                    Some(k) => {
                        // Everything before the error event is released; the error ends the body.
                        let err = error.expect("the in-band error");
                        let err = tower_aci::Error::find(err.as_ref()).expect("ours");
                        assert_eq!(err.kind(), ErrorKind::InBandError);
                        assert_eq!(err.gateway_error_type(), Some("upstream_error"));
                        assert_eq!(
                            Value::Array(events),
                            Value::Array(expected["events"].as_array().unwrap()[..k as usize].to_vec())
                        );
                    }
                }
            }
            "error" => {
                let gw = res.extensions().get::<GatewayError>().cloned().expect("the gateway's error");
                let doc = &e["expected_plaintext"]["error"];
                assert_eq!(u64::from(gw.status.as_u16()), e["response_status"].as_u64().unwrap());
                assert_eq!(gw.error_type.as_deref(), doc["type"].as_str(), "{}", name(e));
                assert_eq!(gw.message.as_deref(), doc["message"].as_str());
                let body = res.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], &w[..], "an error body passes through readable");
            }
            other => panic!("kind {other}"),
        }

        // The exact wire bytes were hashed, and the receipt verifies against the layer's record.
        assert_eq!(record.response_body_sha256(), Some(sha256(&w)), "{}", name(e));
        if let Some(r) = e["receipt"].as_str() {
            let receipt = Receipt::from_bytes(Bytes::from(r.to_owned())).unwrap();
            verify_exchange(&receipt, &record, &keys, &ReceiptPolicy::new())
                .unwrap_or_else(|err| panic!("{}: {err}", name(e)));
        }
    }
    assert_eq!(wire_identical, 2 * 29, "every exchange this client shapes like the reference's");
}

/// The negative answers as the layer reports them, and the key provider's reaction.
#[tokio::test]
async fn reference_negative_answers_map_to_gateway_errors() {
    for suite in Suite::ALL {
        for (n, status, ty) in [
            ("negative_replay", 400, "e2ee_replay_detected"),
            ("negative_wrong_model_key_header", 400, "e2ee_model_key_mismatch"),
            ("negative_ciphertext_to_wrong_key", 400, "e2ee_decryption_failed"),
            ("chat_midfail_buffered", 500, "internal_error"),
        ] {
            let e = exchange(suite, n);
            let (keys, clock) = handle(suite);
            clock.set(timestamp(e));
            let (inner, _) = canned(Answer::of(e, vec![]));
            let svc = ServiceBuilder::new().layer(E2eeLayer::new(keys.clone())).service(inner);
            let req = Request::post(format!("http://localhost{}", s(e, "endpoint")))
                .body(Full::new(Bytes::from(serde_json::to_vec(&e["request_plaintext"]).unwrap())))
                .unwrap();
            let res = svc.oneshot(req).await.unwrap();
            assert_eq!(res.status().as_u16(), status);
            let gw = res.extensions().get::<GatewayError>().unwrap();
            assert_eq!(gw.error_type.as_deref(), Some(ty), "{n}");
            let err = gw.to_error();
            assert_eq!(err.kind(), ErrorKind::Gateway);
            assert_eq!(err.gateway_error_type(), Some(ty));
            let record = res.extensions().get::<ExchangeRecord>().unwrap();
            assert_eq!(record.receipt_id(), None, "{n}: negative answers carry no receipt");
            assert_eq!(record.status(), status);
        }
    }
}

/// Every receipt verifies against an `ExchangeRecord` rebuilt from the file (the restored
/// request hash, the exact wire hash); a one-byte change in the wire fails it, and so does a
/// request hash of the wire instead of the restored body.
#[test]
fn reference_receipts_verify_against_records_rebuilt_from_the_file() {
    let mut verified = 0;
    for e in exchanges() {
        let Some(r) = e["receipt"].as_str() else {
            assert!(!e["receipt_exists"].as_bool().unwrap());
            continue;
        };
        let suite = suite_of(e);
        let keyset = std::sync::Arc::new(keyset(suite));
        let receipt = Receipt::from_bytes(Bytes::from(r.to_owned())).unwrap();
        let restored = hash(s(e, "restored_request_sha256"));
        let w = wire(e);
        let record = |response: &[u8], request: [u8; 32]| {
            ExchangeRecord::builder(s(e, "endpoint"), s(e, "model"))
                .receipt_id(s(e, "receipt_id"))
                .request_body_sha256(request)
                .response_body_sha256(sha256(response))
                .keyset_digest(e["response_headers"]["x-aci-keyset-digest"].as_str().unwrap())
                .suite(suite)
                .e2ee_public_key(s(e, "model_public_key"))
                .streamed(kind_of(e) == "stream")
                .build()
                .unwrap()
        };
        let ok = verify_exchange(&receipt, &record(&w, restored), &keyset, &ReceiptPolicy::new())
            .unwrap_or_else(|err| panic!("{}: {err}", name(e)));
        assert!(ok.forwarded());
        assert!(!ok.rewritten(), "{}", name(e));
        verified += 1;

        let mut tampered = w.clone();
        let i = w.len() / 3;
        tampered[i] ^= 0x01;
        let fail = verify_exchange(&receipt, &record(&tampered, restored), &keyset, &ReceiptPolicy::new());
        assert_eq!(fail.unwrap_err().kind(), ErrorKind::Receipt(ReceiptFailure::ResponseHash), "{}", name(e));
        let wire_hash = sha256(s(e, "request_wire").as_bytes());
        let fail = verify_exchange(&receipt, &record(&w, wire_hash), &keyset, &ReceiptPolicy::new());
        assert_eq!(fail.unwrap_err().kind(), ErrorKind::Receipt(ReceiptFailure::RequestHash), "{}", name(e));
    }
    assert_eq!(verified, 2 * 28);
}
