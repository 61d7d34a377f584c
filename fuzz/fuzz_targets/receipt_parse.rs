//! Receipt and attested-session parsing and verification on arbitrary documents: never panics,
//! every failure is a receipt error, and what verifies satisfies the spec (protocol.md §5).
//!
//! Control byte bit 0 clear: the bytes are the served receipt (and session) document as they
//! are. Bit 0 set: the bytes are parsed as JSON and, if an object, signed with the vector
//! receipt key (`receipt-1`) over the JCS form of the document without `signature`, so that the
//! checks after the signature (identity, event log, hashes, rewrites, upstream, sessions) see
//! arbitrary signed documents.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower_aci::ErrorKind;
use tower_aci::attest::{AttestedKeyset, verify_report};
use tower_aci::protocol::jcs;
use tower_aci::receipt::{
    AttestedSession, ExchangeRecord, Receipt, ReceiptPolicy, verify_against_keyset, verify_exchange, verify_signature,
};

struct Fixture {
    signing: SigningKey,
    keysets: Vec<Arc<AttestedKeyset>>,
    record: ExchangeRecord,
    request_hash: String,
    response_hash: String,
    session: AttestedSession,
    session_id: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let keyset: Value = serde_json::from_str(&common::vector_text("keyset", "jcs")).unwrap();
    let report = common::seal_report(keyset, &common::REPORT_NONCE).unwrap();
    let attested = verify_report(
        &serde_json::to_vec(&report).unwrap(),
        &common::REPORT_NONCE,
        common::VECTOR_NOW,
        &common::stub_policy(),
    )
    .unwrap();
    let sha = |a: &str, b: &str| -> [u8; 32] { Sha256::digest(common::vector_text(a, b).as_bytes()).into() };
    let (req, resp) = (sha("receipt", "request_body"), sha("receipt", "response_body"));
    Fixture {
        signing: SigningKey::from_bytes(&[2; 32]),
        keysets: vec![Arc::new(attested)],
        record: ExchangeRecord::builder("/v1/chat/completions", "demo-model")
            .suite(tower_aci::protocol::Suite::X25519)
            .receipt_id("rcpt-0001")
            .request_body_sha256(req)
            .response_body_sha256(resp)
            .build()
            .unwrap(),
        request_hash: format!("sha256:{}", hex::encode(req)),
        response_hash: format!("sha256:{}", hex::encode(resp)),
        session: AttestedSession::from_bytes(Bytes::from(common::vector_text("session", "jcs"))).unwrap(),
        session_id: common::vectors()["session"]["session_id"].as_str().unwrap().to_owned(),
    }
});

fn is_receipt_error<T>(r: &tower_aci::Result<T>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => matches!(e.kind(), ErrorKind::Receipt(_)),
    }
}

fn event_hash<'a>(doc: &'a Value, ty: &str) -> Option<&'a str> {
    doc["event_log"].as_array()?.iter().find(|e| e["type"] == ty)?["body_hash"].as_str()
}

fn check(raw: Bytes, signed: bool) {
    let f = &*FIXTURE;

    // Sessions are parsed from the same bytes: never panics.
    if let Ok(session) = AttestedSession::from_bytes(raw.clone()) {
        let _ = (session.session_id(), session.api_version(), session.upstream_name(), session.expires_at());
        let _ = session.covers(common::VECTOR_NOW);
        let v = session.verify(&f.session_id);
        assert!(is_receipt_error(&v));
    }

    let parsed = Receipt::from_bytes(raw.clone());
    assert!(is_receipt_error(&parsed), "parse failed with a non-receipt error");
    let Ok(receipt) = parsed else { return };

    // The document is kept byte for byte and the signing input is the document without its
    // signature (compared as JSON values here, independently of the canonical form).
    assert_eq!(receipt.as_bytes(), &raw[..]);
    let doc: Value = serde_json::from_slice(&raw).unwrap();
    let mut unsigned = doc.clone();
    unsigned.as_object_mut().unwrap().remove("signature");
    let input: Value = serde_json::from_slice(receipt.signing_input()).expect("signing input is JSON");
    assert_eq!(input, unsigned);
    assert_eq!(receipt.signature(), doc["signature"].as_str().unwrap());
    let _ = (receipt.chat_id(), receipt.model(), receipt.served_at(), receipt.events().len());
    for e in receipt.events() {
        let _ = e.event_type();
    }
    let _ = receipt.events().iter().filter(|e| matches!(e, tower_aci::receipt::Event::UpstreamVerified(_))).count();

    let sig = verify_signature(&receipt, f.signing.as_ref());
    if signed {
        sig.expect("a document signed with the vector key verifies under it");
    } else {
        assert!(is_receipt_error(&sig));
    }
    let r = verify_against_keyset(&receipt, &f.keysets[0]);
    assert!(is_receipt_error(&r));

    for (policy, rejects_rewrites) in [
        (ReceiptPolicy::new(), false),
        (
            ReceiptPolicy::new().reject_rewrites(true).require_verified_upstream(true).accept_sessions([&f.session_id]),
            true,
        ),
    ] {
        let verified = verify_exchange(&receipt, &f.record, &f.keysets, &policy);
        if std::env::var_os("FUZZ_PRINT").is_some() {
            eprintln!("{policy:?}: {:?}", verified.as_ref().map(|v| v.rewritten()));
        }
        assert!(is_receipt_error(&verified));
        let Ok(verified) = verified else { continue };
        // What verifies is the exchange recorded: its id, POST to the endpoint, the model, the
        // restored request body's hash and the response bytes' hash (protocol.md §5).
        // (Hex of any case: the signature bytes are what is signed over, not their spelling.)
        assert!(signed || receipt.signature().eq_ignore_ascii_case(&common::vector_text("receipt", "signature")));
        assert_eq!(doc["receipt_id"], "rcpt-0001");
        assert_eq!(doc["method"], "POST");
        assert_eq!(doc["workload_keyset_digest"].as_str(), Some(f.keysets[0].digest()));
        assert_eq!(doc["event_log"][0]["type"], "request.received");
        assert_eq!(doc["event_log"][0]["body_hash"].as_str(), Some(f.request_hash.as_str()));
        assert_eq!(event_hash(&doc, "response.returned"), Some(f.response_hash.as_str()));
        if rejects_rewrites {
            if let Some(forwarded) = event_hash(&doc, "request.forwarded") {
                assert_eq!(forwarded, f.request_hash, "a rewrite passed a policy that rejects rewrites");
            }
        }
        let _ = (verified.forwarded(), verified.rewritten(), verified.upstream(), verified.cited_session_id());
        let attached = verified.attach_session(&f.session);
        assert!(is_receipt_error(&attached));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    if ctl & 1 == 0 {
        check(Bytes::copy_from_slice(rest), false);
        return;
    }
    let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(rest) else { return };
    doc.remove("signature");
    let Ok(input) = jcs::to_vec(&Value::Object(doc.clone())) else { return };
    let sig = FIXTURE.signing.sign(&input);
    doc.insert("signature".into(), Value::String(hex::encode(sig.to_bytes())));
    check(Bytes::from(serde_json::to_vec(&Value::Object(doc)).unwrap()), true);
});
