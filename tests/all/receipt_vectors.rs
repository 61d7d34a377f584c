//! Receipt verification against the spec vectors (`aci_vectors.json`: receipt, keys, keyset,
//! session), and every tamper rejected with its own reason.

use std::sync::Arc;

use crate::data::{exchange_record, reason};
use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower_aci::attest::{AttestedKeyset, KeyHandle, ManualClock, verify_report};
use tower_aci::protocol::jcs;
use tower_aci::receipt::{
    AttestedSession, Event, ExchangeRecord, Receipt, ReceiptPolicy, VerifiedReceipt, verify_against_keyset,
    verify_exchange, verify_signature,
};
use tower_aci::{ErrorKind, ReceiptFailure as F};

use crate::attest_support::{bytes, load, seal_report, stub_policy};

const DAY: u64 = 24 * 3600;
/// Ten days before the vector keyset's `not_after` (1800000000).
const VECTOR_NOW: u64 = 1_800_000_000 - 10 * DAY;

fn vectors() -> Value {
    load("aci_vectors.json")
}

fn text(v: &Value, a: &str, b: &str) -> String {
    v[a][b].as_str().unwrap().to_owned()
}

fn document() -> Value {
    serde_json::from_str(&text(&vectors(), "receipt", "document")).unwrap()
}

fn parse(doc: &Value) -> Receipt {
    Receipt::from_bytes(Bytes::from(serde_json::to_vec(doc).unwrap())).unwrap()
}

fn vector_receipt() -> Receipt {
    Receipt::from_bytes(Bytes::from(text(&vectors(), "receipt", "document"))).unwrap()
}

/// The receipt key `receipt-1` (seed 32×0x02).
fn receipt_key() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}

/// Sign `doc` (its `signature` replaced) with `key`, as the gateway does.
fn sign(doc: &Value, key: &SigningKey) -> Value {
    let mut doc = doc.clone();
    doc.as_object_mut().unwrap().remove("signature");
    let sig = key.sign(&jcs::to_vec(&doc).unwrap());
    doc["signature"] = Value::String(const_hex::encode(sig.to_bytes()));
    doc
}

/// The vector keyset, attested through a stub-quoted report.
fn vector_keyset() -> AttestedKeyset {
    let keyset: Value = serde_json::from_str(&text(&vectors(), "keyset", "jcs")).unwrap();
    let nonce: [u8; 32] = core::array::from_fn(|i| i as u8);
    verify_report(&bytes(&seal_report(&keyset, Some(&nonce))), &nonce, VECTOR_NOW, &stub_policy()).unwrap()
}

fn keysets() -> Vec<Arc<AttestedKeyset>> {
    vec![Arc::new(vector_keyset())]
}

fn sha(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// What the layer would have recorded for the vector exchange.
fn vector_record() -> ExchangeRecord {
    let v = vectors();
    exchange_record(
        "/v1/chat/completions",
        "demo-model",
        Some("rcpt-0001"),
        sha(&text(&v, "receipt", "request_body")),
        Some(sha(&text(&v, "receipt", "response_body"))),
    )
}

fn vector_session() -> AttestedSession {
    AttestedSession::from_bytes(Bytes::from(text(&vectors(), "session", "jcs"))).unwrap()
}

fn exchange(receipt: &Receipt, record: &ExchangeRecord, policy: &ReceiptPolicy) -> tower_aci::Result<VerifiedReceipt> {
    verify_exchange(receipt, record, &keysets(), policy)
}

#[test]
fn the_vector_receipt_verifies_byte_for_byte() {
    let v = vectors();
    let receipt = vector_receipt();
    assert_eq!(receipt.as_bytes(), text(&v, "receipt", "document").as_bytes());
    assert_eq!(receipt.signing_input(), text(&v, "receipt", "signing_input_jcs").as_bytes());
    assert_eq!(const_hex::encode(Sha256::digest(receipt.signing_input())), text(&v, "receipt", "signing_input_sha256"));
    assert_eq!(receipt.signature(), text(&v, "receipt", "signature"));

    // The key from the seed is the vector's public key, and the signature verifies under it.
    let public = const_hex::decode(text(&v["keys"], "receipt-1", "public_key")).unwrap();
    assert_eq!(receipt_key().verifying_key().as_bytes().as_slice(), public.as_slice());
    let key = VerifyingKey::from_bytes(&public.try_into().unwrap()).unwrap();
    verify_signature(&receipt, &key).unwrap();
    // Re-signing the parsed document reproduces the vector's signature (Ed25519 is deterministic).
    assert_eq!(sign(&document(), &receipt_key())["signature"], v["receipt"]["signature"]);

    // Accessors.
    assert_eq!(receipt.api_version(), "aci/1");
    assert_eq!(receipt.receipt_id(), "rcpt-0001");
    assert_eq!(receipt.chat_id(), Some("chatcmpl-123"));
    assert_eq!(receipt.model(), Some("demo-model"));
    assert_eq!(receipt.workload_keyset_digest(), text(&v, "keyset", "digest"));
    assert_eq!(receipt.endpoint(), "/v1/chat/completions");
    assert_eq!(receipt.method(), "POST");
    assert_eq!(receipt.served_at(), 1_750_000_000);
    assert_eq!(receipt.key_id(), "receipt-1");
    let request_hash = text(&v, "receipt", "request_body_hash");
    assert_eq!(receipt.events()[0], Event::RequestReceived { body_hash: request_hash.clone() });
    assert_eq!(receipt.events()[1], Event::RequestForwarded { body_hash: request_hash });
    let Event::UpstreamVerified(up) = &receipt.events()[2] else { panic!("{:?}", receipt.events()[2]) };
    assert!(up.is_verified() && up.required);
    assert_eq!(up.session_id.as_deref(), Some(text(&v, "session", "session_id").as_str()));
    assert_eq!(up.model_id.as_deref(), Some("demo-model"));
    assert_eq!(receipt.events()[3], Event::ResponseReturned { body_hash: text(&v, "receipt", "response_body_hash") });
}

#[test]
fn the_vector_receipt_verifies_against_the_attested_keyset() {
    let keyset = vector_keyset();
    assert_eq!(keyset.digest(), text(&vectors(), "keyset", "digest"));
    verify_against_keyset(&vector_receipt(), &keyset).unwrap();

    // Any JSON encoding of the same document verifies (the signature is over its JCS form).
    let pretty = serde_json::to_vec_pretty(&document()).unwrap();
    let receipt = Receipt::from_bytes(Bytes::from(pretty.clone())).unwrap();
    assert_eq!(receipt.as_bytes(), pretty.as_slice(), "the served bytes are kept as they were");
    verify_against_keyset(&receipt, &keyset).unwrap();
}

#[test]
fn the_vector_exchange_verifies_with_its_session() {
    let v = vectors();
    let verified = exchange(&vector_receipt(), &vector_record(), &ReceiptPolicy::new()).unwrap();
    assert!(verified.forwarded());
    assert!(!verified.rewritten());
    assert_eq!(verified.keyset().digest(), text(&v, "keyset", "digest"));
    assert_eq!(verified.cited_session_id(), Some(text(&v, "session", "session_id").as_str()));
    assert!(verified.session_pending());
    let verified = verified.attach_session(&vector_session()).unwrap();
    assert!(!verified.session_pending());
    let session = verified.session().unwrap();
    assert_eq!(session.evidence(), text(&v, "session", "evidence_bytes_ascii").as_bytes());
    assert_eq!(session.session().upstream_name(), Some("demo-upstream"));

    // Pinned to the cited session, and under a policy requiring verified serving.
    let strict = ReceiptPolicy::new().reject_rewrites(true).require_verified_upstream(true).accept_sessions([text(
        &v,
        "session",
        "session_id",
    )]);
    exchange(&vector_receipt(), &vector_record(), &strict).unwrap();
    let other = ReceiptPolicy::new().accept_sessions(["00".repeat(32)]);
    assert_eq!(reason(exchange(&vector_receipt(), &vector_record(), &other)), F::Session);
}

#[test]
fn keysets_are_found_through_a_key_handle_even_after_expiry() {
    let receipt = vector_receipt();
    let policy = ReceiptPolicy::new();
    let fresh = KeyHandle::fixed_with_clock(vector_keyset(), Arc::new(ManualClock::new(VECTOR_NOW)));
    verify_exchange(&receipt, &vector_record(), &fresh, &policy).unwrap();
    // The keyset has expired by now, but the receipt was served while it was valid.
    let late = KeyHandle::fixed_with_clock(vector_keyset(), Arc::new(ManualClock::new(1_900_000_000)));
    assert!(late.current().is_err());
    verify_exchange(&receipt, &vector_record(), &late, &policy).unwrap();
    // A slice and a single keyset work too.
    let ks = Arc::new(vector_keyset());
    verify_exchange(&receipt, &vector_record(), &ks, &policy).unwrap();
    verify_exchange(&receipt, &vector_record(), [ks].as_slice(), &policy).unwrap();
    // No keyset at all.
    let none: Vec<Arc<AttestedKeyset>> = Vec::new();
    assert_eq!(reason(verify_exchange(&receipt, &vector_record(), &none, &policy)), F::UnknownKeyset);
}

#[test]
fn tampered_documents_fail_the_signature() {
    let keyset = vector_keyset();
    let doc = document();

    let mut flipped = doc.clone();
    let mut sig = const_hex::decode(doc["signature"].as_str().unwrap()).unwrap();
    sig[10] ^= 0x01;
    flipped["signature"] = Value::String(const_hex::encode(&sig));
    assert_eq!(reason(verify_against_keyset(&parse(&flipped), &keyset)), F::Signature);

    for (member, value) in [
        ("model", json!("other-model")),
        ("served_at", json!(1_750_000_001u64)),
        ("chat_id", Value::Null),
        ("extra", json!("an added member")),
    ] {
        let mut d = doc.clone();
        d[member] = value;
        assert_eq!(reason(verify_against_keyset(&parse(&d), &keyset)), F::Signature, "{member}");
    }
    let mut d = doc.clone();
    d["event_log"][3]["body_hash"] = json!(format!("sha256:{}", "00".repeat(32)));
    assert_eq!(reason(verify_against_keyset(&parse(&d), &keyset)), F::Signature);

    for bad in ["", "00", &"zz".repeat(64), &"00".repeat(65)] {
        let mut d = doc.clone();
        d["signature"] = json!(bad);
        assert_eq!(reason(verify_against_keyset(&parse(&d), &keyset)), F::Signature, "{bad:?}");
    }

    // Signed by another key under the same key id.
    let other = sign(&doc, &SigningKey::from_bytes(&[3; 32]));
    assert_eq!(reason(verify_against_keyset(&parse(&other), &keyset)), F::Signature);
}

#[test]
fn re_signed_tampers_fail_with_their_own_reason() {
    let keyset = vector_keyset();
    let key = receipt_key();
    let resigned = |member: &str, value: Value| {
        let mut d = document();
        d[member] = value;
        parse(&sign(&d, &key))
    };

    // Sanity: re-signing the untouched document verifies.
    verify_against_keyset(&parse(&sign(&document(), &key)), &keyset).unwrap();

    assert_eq!(reason(verify_against_keyset(&resigned("key_id", json!("receipt-2")), &keyset)), F::UnknownKey);
    assert_eq!(reason(verify_against_keyset(&resigned("api_version", json!("aci/2")), &keyset)), F::ApiVersion);
    let digest = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(
        reason(verify_against_keyset(&resigned("workload_keyset_digest", json!(digest)), &keyset)),
        F::UnknownKeyset
    );
    // Served after the keyset's not_after.
    assert_eq!(
        reason(verify_against_keyset(&resigned("served_at", json!(1_800_000_000u64)), &keyset)),
        F::UnknownKeyset
    );

    // Through verify_exchange, against the record of the exchange.
    let record = vector_record();
    let policy = ReceiptPolicy::new();
    let check = |r: &Receipt| exchange(r, &record, &policy);
    assert_eq!(reason(check(&resigned("workload_keyset_digest", json!(digest)))), F::UnknownKeyset);
    assert_eq!(reason(check(&resigned("key_id", json!("receipt-2")))), F::UnknownKey);
    assert_eq!(reason(check(&resigned("model", json!("other-model")))), F::Mismatch);
    assert_eq!(reason(check(&resigned("model", Value::Null))), F::Mismatch);
    assert_eq!(reason(check(&resigned("endpoint", json!("/v1/completions")))), F::Mismatch);
    assert_eq!(reason(check(&resigned("method", json!("GET")))), F::Mismatch);
    assert_eq!(reason(check(&resigned("receipt_id", json!("rcpt-0002")))), F::Mismatch);
}

#[test]
fn hashes_are_checked_against_the_record() {
    let v = vectors();
    let receipt = vector_receipt();
    let policy = ReceiptPolicy::new();
    let request = sha(&text(&v, "receipt", "request_body"));
    let response = sha(&text(&v, "receipt", "response_body"));
    let record = |path: &str, model: &str, id: Option<&str>, req: [u8; 32], res: Option<[u8; 32]>| {
        exchange_record(path, model, id, req, res)
    };

    let mut other = request;
    other[0] ^= 1;
    let e = exchange(&receipt, &record("/v1/chat/completions", "demo-model", None, other, Some(response)), &policy);
    assert_eq!(reason(e), F::RequestHash);

    let mut other = response;
    other[31] ^= 1;
    let e = exchange(&receipt, &record("/v1/chat/completions", "demo-model", None, request, Some(other)), &policy);
    assert_eq!(reason(e), F::ResponseHash);

    // A response not read to its end: no verdict yet.
    let half = record("/v1/chat/completions", "demo-model", Some("rcpt-0001"), request, None);
    let err = exchange(&receipt, &half, &policy).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Receipt(F::NotAvailable));
    assert!(err.to_string().contains("not read to its end"), "{err}");

    // The record's own identity.
    let e = exchange(&receipt, &record("/v1/chat/completions", "demo", None, request, Some(response)), &policy);
    assert_eq!(reason(e), F::Mismatch);
    let e = exchange(&receipt, &record("/v1/embeddings", "demo-model", None, request, Some(response)), &policy);
    assert_eq!(reason(e), F::Mismatch);
    let e = exchange(
        &receipt,
        &record("/v1/chat/completions", "demo-model", Some("rcpt-9"), request, Some(response)),
        &policy,
    );
    assert_eq!(reason(e), F::Mismatch);
    // A path prefix stripped by a proxy in front of the gateway is fine.
    exchange(&receipt, &record("/api/v1/chat/completions", "demo-model", None, request, Some(response)), &policy)
        .unwrap();
}

#[test]
fn rewrites_are_reported_and_rejected_on_request() {
    let key = receipt_key();
    let mut d = document();
    d["event_log"][1]["body_hash"] = json!(format!("sha256:{}", "11".repeat(32)));
    let rewritten = parse(&sign(&d, &key));
    let verified = exchange(&rewritten, &vector_record(), &ReceiptPolicy::new()).unwrap();
    assert!(verified.rewritten());
    assert_eq!(
        reason(exchange(&rewritten, &vector_record(), &ReceiptPolicy::new().reject_rewrites(true))),
        F::Rewritten
    );

    // A middleware.forwarded that differs is a rewrite too.
    let mut d = document();
    let received = d["event_log"][0]["body_hash"].clone();
    d["event_log"]
        .as_array_mut()
        .unwrap()
        .insert(1, json!({"type": "middleware.forwarded", "body_hash": format!("sha256:{}", "22".repeat(32))}));
    d["event_log"].as_array_mut().unwrap().insert(2, json!({"type": "route.selected", "target_route_id": "r"}));
    let r = parse(&sign(&d, &key));
    assert!(exchange(&r, &vector_record(), &ReceiptPolicy::new()).unwrap().rewritten());
    d["event_log"][1]["body_hash"] = received;
    let r = parse(&sign(&d, &key));
    assert!(!exchange(&r, &vector_record(), &ReceiptPolicy::new()).unwrap().rewritten());

    // A refusal: nothing forwarded, not a rewrite.
    let mut d = document();
    d["event_log"].as_array_mut().unwrap().remove(1);
    let verified = exchange(&parse(&sign(&d, &key)), &vector_record(), &ReceiptPolicy::new()).unwrap();
    assert!(!verified.forwarded() && !verified.rewritten());
}

#[test]
fn event_log_skeleton_and_unknown_events() {
    let key = receipt_key();
    let policy = ReceiptPolicy::new();
    let with_log = |f: &dyn Fn(&mut Vec<Value>)| {
        let mut d = document();
        f(d["event_log"].as_array_mut().unwrap());
        parse(&sign(&d, &key))
    };

    // Unknown event types anywhere are ignored.
    let r = with_log(&|log| {
        log.insert(1, json!({"type": "x.audit", "note": "hi"}));
        log.push(json!({"type": "z.trailer"}));
    });
    exchange(&r, &vector_record(), &policy).unwrap();

    let r = with_log(&|log| log.swap(0, 1));
    assert_eq!(reason(exchange(&r, &vector_record(), &policy)), F::Shape);
    let r = with_log(&|log| {
        log.pop();
    });
    assert_eq!(reason(exchange(&r, &vector_record(), &policy)), F::Shape);
    let r = with_log(&|log| {
        let last = log[3].clone();
        log.push(last);
    });
    assert_eq!(reason(exchange(&r, &vector_record(), &policy)), F::Shape);
    let r = with_log(&|log| {
        let first = log[0].clone();
        log.push(first);
    });
    assert_eq!(reason(exchange(&r, &vector_record(), &policy)), F::Shape);
    let r = with_log(&|log| log.clear());
    assert_eq!(reason(exchange(&r, &vector_record(), &policy)), F::Shape);
}

#[test]
fn upstream_outcomes_under_policy() {
    let key = receipt_key();
    let strict = ReceiptPolicy::new().require_verified_upstream(true);
    let with_event = |event: Value| {
        let mut d = document();
        d["event_log"][2] = event;
        parse(&sign(&d, &key))
    };
    let failed = with_event(json!({"type": "upstream.verified", "result": "failed", "required": false,
        "model_id": "demo-model", "reason": "quote expired", "upstream_name": "u"}));
    let verified = exchange(&failed, &vector_record(), &ReceiptPolicy::new()).unwrap();
    let up = verified.upstream().unwrap();
    assert!(!up.is_verified());
    assert_eq!(up.reason.as_deref(), Some("quote expired"));
    assert_eq!(verified.cited_session_id(), None);
    assert_eq!(reason(exchange(&failed, &vector_record(), &strict)), F::Session);

    let best_effort = with_event(json!({"type": "upstream.verified", "result": "verified", "required": false,
        "model_id": "demo-model", "session_id": text(&vectors(), "session", "session_id")}));
    exchange(&best_effort, &vector_record(), &ReceiptPolicy::new()).unwrap();
    assert_eq!(reason(exchange(&best_effort, &vector_record(), &strict)), F::Session);

    let no_session = with_event(json!({"type": "upstream.verified", "result": "verified", "required": true}));
    assert_eq!(reason(exchange(&no_session, &vector_record(), &ReceiptPolicy::new())), F::Session);

    // A direct service's receipt has no upstream.verified event: fine even when strict.
    let mut d = document();
    d["event_log"].as_array_mut().unwrap().remove(2);
    let direct = parse(&sign(&d, &key));
    let verified = exchange(&direct, &vector_record(), &strict).unwrap();
    assert!(verified.upstream().is_none() && !verified.session_pending());
    assert_eq!(reason(verified.attach_session(&vector_session())), F::Session);
}

#[test]
fn the_session_vector() {
    let v = vectors();
    let session = vector_session();
    assert_eq!(session.session_id(), text(&v, "session", "session_id"));
    assert_eq!(session.evidence_digest(), Some(text(&v, "session", "evidence_digest").as_str()));
    assert_eq!(
        format!("sha256:{}", const_hex::encode(Sha256::digest(text(&v, "session", "evidence_bytes_ascii")))),
        text(&v, "session", "evidence_digest")
    );
    assert_eq!((session.established_at(), session.expires_at()), (Some(1_750_000_000), Some(1_750_003_600)));
    assert!(session.covers(1_750_000_000) && session.covers(1_750_003_600) && !session.covers(1_750_003_601));
    assert_eq!(session.endpoint(), Some("https://upstream.example.com"));
    assert_eq!(session.verifier_id(), Some("example/1"));
    assert_eq!(session.claims().unwrap()["tee_attested"]["source"], "hardware_proven");
    assert_eq!(session.channel_binding().unwrap()[0]["type"], "tls_spki_sha256");
    let checked = session.verify(&text(&v, "session", "session_id")).unwrap();
    assert_eq!(checked.evidence(), b"example-evidence");

    // The served encoding is free: a pretty-printed document has the same id.
    let doc: Value = serde_json::from_str(&text(&v, "session", "jcs")).unwrap();
    let pretty = AttestedSession::from_bytes(Bytes::from(serde_json::to_vec_pretty(&doc).unwrap())).unwrap();
    assert_eq!(pretty.session_id(), session.session_id());
    // An older gateway that embeds `session_id` in the served document still checks out.
    let mut embedded = doc.clone();
    embedded["session_id"] = json!(text(&v, "session", "session_id"));
    let embedded = AttestedSession::from_bytes(Bytes::from(serde_json::to_vec(&embedded).unwrap())).unwrap();
    embedded.verify(&text(&v, "session", "session_id")).unwrap();
}

#[test]
fn session_tampers() {
    let v = vectors();
    let cited = text(&v, "session", "session_id");
    let doc: Value = serde_json::from_str(&text(&v, "session", "jcs")).unwrap();
    let session = |d: &Value| AttestedSession::from_bytes(Bytes::from(serde_json::to_vec(d).unwrap())).unwrap();

    // Any change moves the id away from the cited one.
    let mut d = doc.clone();
    d["expires_at"] = json!(1_750_999_999u64);
    assert_eq!(reason(session(&d).verify(&cited)), F::Session);
    let mut d = doc.clone();
    d["session_id"] = json!("00".repeat(32));
    assert_eq!(reason(session(&d).verify(&cited)), F::Session);

    // Checked against their own id, the other §9.2 checks bite.
    let own = |d: &Value| {
        let s = session(d);
        let id = s.session_id().to_owned();
        s.verify(&id)
    };
    let mut d = doc.clone();
    d["evidence"]["data"] = json!("data:text/plain;base64,ZXhhbXBsZS1ldmlkZW5jZR==");
    assert_eq!(reason(own(&d)), F::Session, "non-canonical base64");
    d["evidence"]["data"] = json!("data:text/plain;base64,b3RoZXItZXZpZGVuY2U=");
    assert_eq!(reason(own(&d)), F::Session, "other evidence");
    d["evidence"]["data"] = json!("not a data url");
    assert_eq!(reason(own(&d)), F::Session);
    d["evidence"].as_object_mut().unwrap().remove("data");
    assert_eq!(reason(own(&d)), F::Session, "abbreviated list entry");
    let mut d = doc.clone();
    d["api_version"] = json!("aci/2");
    assert_eq!(reason(own(&d)), F::Session);
    let mut d = doc.clone();
    d.as_object_mut().unwrap().remove("evidence");
    assert_eq!(reason(own(&d)), F::Session);

    for bad in [&b"[]"[..], b"{", b"{\"a\":1.5}", b""] {
        assert_eq!(reason(AttestedSession::from_bytes(Bytes::copy_from_slice(bad))), F::Session);
    }

    // A receipt served outside the session's window.
    let key = receipt_key();
    let mut r = document();
    r["served_at"] = json!(1_750_003_601u64);
    let late = parse(&sign(&r, &key));
    let verified = exchange(&late, &vector_record(), &ReceiptPolicy::new()).unwrap();
    assert_eq!(reason(verified.attach_session(&vector_session())), F::Session);
    // A receipt citing a session whose evidence does not hash to its digest.
    let mut bad = doc.clone();
    bad["evidence"]["data"] = json!("data:text/plain;base64,b3RoZXItZXZpZGVuY2U=");
    let bad = session(&bad);
    let mut r = document();
    r["event_log"][2]["session_id"] = json!(bad.session_id());
    let citing = parse(&sign(&r, &key));
    let verified = exchange(&citing, &vector_record(), &ReceiptPolicy::new()).unwrap();
    assert_eq!(reason(verified.clone().attach_session(&bad)), F::Session);
    assert_eq!(reason(verified.attach_session(&vector_session())), F::Session, "another session than cited");
}

#[test]
fn hostile_receipts_never_panic() {
    let raw = text(&vectors(), "receipt", "document");
    let keyset = vector_keyset();
    let all = keysets();
    let record = vector_record();
    let policy = ReceiptPolicy::new();
    // Every prefix and every single-byte corruption either fails to parse or fails to verify.
    for i in 0..raw.len() {
        assert!(Receipt::from_bytes(Bytes::copy_from_slice(&raw.as_bytes()[..i])).is_err());
        for b in [b'"', b'0', b'{', 0xff] {
            let mut bytes = raw.as_bytes().to_vec();
            if bytes[i] == b {
                continue;
            }
            bytes[i] = b;
            if let Ok(r) = Receipt::from_bytes(Bytes::from(bytes)) {
                let _ = verify_against_keyset(&r, &keyset);
                let _ = verify_exchange(&r, &record, &all, &policy);
            }
        }
    }
}
