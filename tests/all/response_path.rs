//! The response path's gaps: which events are in-band errors, a gateway that did not apply E2EE,
//! bounded bookkeeping of cleartext paths, capped error strings, and the wire digest of a stream
//! that ended in an error. Checked on the reference gateway's bytes.

#![cfg_attr(not(feature = "__internal-test-vectors"), allow(unused_imports, dead_code))]

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};
use tower_aci::protocol::Suite;
use tower_aci::protocol::{StreamDecryptor, StreamOutput};
use tower_aci::receipt::{ExchangeRecord, Receipt, ReceiptPolicy, verify_exchange};
use tower_aci::{E2eeLayer, ErrorKind};

use crate::reference::*;

/// Decrypt a whole stream with the context of `e`: the decrypted data payloads (`[DONE]`
/// included) and how it ended (the first error, in-band or not).
fn decrypt(e: &Value, wire: &[u8]) -> (Vec<String>, Result<(), tower_aci::Error>) {
    let mut dec = StreamDecryptor::new(context(e), Default::default());
    dec.push(wire);
    let mut out = Vec::new();
    loop {
        match dec.next_output() {
            Ok(Some(StreamOutput::Event(b))) => out.extend(sse_data(&b)),
            Ok(Some(StreamOutput::InBandError(b, err))) => {
                out.extend(sse_data(&b));
                return (out, Err(err));
            }
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) => return (out, dec.finish().map(|_| ())),
            Err(err) => return (out, Err(err)),
        }
    }
}

/// The reference stream `chat_default_stream` with `edit` applied to the JSON text of event `k`
/// (members added at the top level or in the first choice do not change any AAD).
fn edited(suite: Suite, k: usize, edit: impl Fn(&str) -> String) -> (&'static Value, Vec<u8>) {
    let e = exchange(suite, "chat_default_stream");
    let wire = String::from_utf8(wire(e)).unwrap();
    let mut events: Vec<String> = wire.split_inclusive("\n\n").map(str::to_owned).collect();
    let json = events[k].strip_prefix("data: ").unwrap().trim_end().to_owned();
    events[k] = format!("data: {}\n\n", edit(&json));
    (e, events.concat().into_bytes())
}

#[test]
fn an_error_member_that_is_null_is_not_an_in_band_error() {
    for suite in Suite::ALL {
        // `"error": null` in an encrypted content chunk: decrypted like any other.
        let (e, wire) = edited(suite, 1, |j| j.replacen('{', r#"{"error":null,"#, 1));
        let (data, end) = decrypt(e, &wire);
        end.unwrap_or_else(|err| panic!("{err}"));
        let event: Value = serde_json::from_str(&data[1]).unwrap();
        assert_eq!(event["choices"][0]["delta"]["content"], "Echo: Hell");
        assert_eq!(event["error"], Value::Null);
    }
}

#[test]
fn finish_reason_error_is_an_in_band_error() {
    for reason in ["error", "upstream_error", "content_filter_error"] {
        let (e, wire) = edited(Suite::X25519, 5, |j| {
            j.replace(r#""finish_reason":"stop""#, &format!(r#""finish_reason":"{reason}""#))
        });
        let (_, end) = decrypt(e, &wire);
        let err = end.expect_err(reason);
        assert_eq!(err.kind(), ErrorKind::InBandError, "{reason}");
        assert_eq!(err.gateway_error_type(), Some(reason));
    }
    // Standard reasons are not errors.
    for reason in ["stop", "length", "tool_calls", "content_filter", "errors_were_fine"] {
        let (e, wire) = edited(Suite::X25519, 5, |j| {
            j.replace(r#""finish_reason":"stop""#, &format!(r#""finish_reason":"{reason}""#))
        });
        decrypt(e, &wire).1.unwrap_or_else(|err| panic!("{reason}: {err}"));
    }
}

/// An error event that also carries a protected field in clear is refused like any other event
/// with a protected field in clear: the clear text never comes out, not even as the error
/// event's bytes.
#[test]
fn an_error_event_cannot_smuggle_protected_fields_in_clear() {
    let (e, wire) = edited(Suite::X25519, 2, |_| {
        json!({"error": {"type": "x", "message": "m"}, "choices": [{"index": 0, "delta": {"content": "SMUGGLED"}}]})
            .to_string()
    });
    let (data, end) = decrypt(e, &wire);
    assert_eq!(end.unwrap_err().kind(), ErrorKind::MissingEncryption);
    assert!(data.iter().all(|d| !d.contains("SMUGGLED")));
}

#[test]
fn in_band_error_strings_are_capped() {
    let long = "é".repeat(50_000);
    let (e, wire) = edited(Suite::X25519, 2, |_| {
        json!({"error": {"type": format!("t{long}"), "message": format!("m{long}"), "code": 502}}).to_string()
    });
    let (_, end) = decrypt(e, &wire);
    let err = end.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InBandError);
    assert!(err.gateway_error_type().unwrap().chars().count() <= 200, "type not capped");
    assert!(err.to_string().chars().count() <= 600, "message not capped: {} chars", err.to_string().chars().count());
    // The cap is on characters: still valid text, prefix kept.
    assert!(err.gateway_error_type().unwrap().starts_with("té"));
}

/// Bookkeeping of cleartext paths over a long stream: no peer-chosen index in the summary, a
/// small bounded list, each event's own paths reported exactly.
#[test]
fn stream_cleartext_tracking_is_bounded() {
    let e = exchange(Suite::X25519, "chat_default_stream");
    let mut dec = StreamDecryptor::new(context(e), Default::default());
    let n = 20_000u64;
    for i in 0..n {
        let ev = json!({"id": "x", "choices": [{"index": 1_000_000 + i, "delta": {"tool_calls": [{"index": i, "function": {"arguments": "a"}}]}}]});
        dec.push(format!("data: {ev}\n\n").as_bytes());
        while let Some(o) = dec.next_output().unwrap() {
            assert!(matches!(o, StreamOutput::Event(_)));
            assert_eq!(
                dec.last_cleartext_paths(),
                [format!("choices.{}.delta.tool_calls.0.function.arguments", 1_000_000 + i)]
            );
        }
    }
    let summary = dec.cleartext_fields().to_vec();
    assert!(summary.len() <= 32, "{} entries", summary.len());
    assert_eq!(summary, ["choices.*.delta.tool_calls.*.function.arguments"]);
    dec.push(b"data: [DONE]\n\n");
    while dec.next_output().unwrap().is_some() {}
    assert_eq!(dec.finish().unwrap().cleartext_fields, summary);
}

/// A 2xx answer to an encrypted request that says `X-E2EE-Applied: false` (something between
/// client and gateway stripped E2EE): a typed error at the response head, before any body byte.
#[tokio::test]
async fn a_2xx_answer_without_e2ee_applied_is_a_protocol_error() {
    for (e, body) in [
        (
            exchange(Suite::X25519, "chat_default_buffered"),
            br#"{"id":"x","choices":[{"index":0,"message":{"content":"what did the model read?"}}]}"#.to_vec(),
        ),
        (exchange(Suite::X25519, "chat_tools_buffered"), br#"{"choices":[]}"#.to_vec()),
        (exchange(Suite::Secp256k1, "chat_default_stream"), b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n".to_vec()),
    ] {
        let (keys, clock) = handle(suite_of(e));
        clock.set(timestamp(e));
        let mut answer = Answer::of(e, vec![]);
        for (k, v) in answer.headers.iter_mut() {
            if k == "x-e2ee-applied" {
                *v = "false".into();
            }
        }
        answer.body = Bytes::from(body);
        let (inner, _) = canned(answer);
        let svc = ServiceBuilder::new().layer(E2eeLayer::new(keys)).service(inner);
        let req = Request::post(format!("http://localhost{}", s(e, "endpoint")))
            .body(Full::new(Bytes::from(serde_json::to_vec(&e["request_plaintext"]).unwrap())))
            .unwrap();
        let err = svc.oneshot(req).await.expect_err("refused at the head");
        let err = tower_aci::Error::find(err.as_ref()).expect("ours");
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(err.to_string().contains("X-E2EE-Applied"), "{err}");
    }
}

/// The reference's mid-stream failure through the layer: the error ends the body, and the wire
/// digest is still recorded, so the receipt (which signs the whole wire) can be checked.
#[cfg(feature = "__internal-test-vectors")]
#[tokio::test]
async fn an_errored_stream_records_its_wire_digest() {
    for suite in Suite::ALL {
        let e = exchange(suite, "chat_midfail_stream");
        let (keys, clock) = handle(suite);
        clock.set(timestamp(e));
        let layer = E2eeLayer::new(keys.clone()).dangerous_randomness_for_tests(tape_fill(tape(e)));
        let w = wire(e);
        // The error event and [DONE] arrive in a later network read than the content.
        let cut = w.windows(9).position(|x| x == b"{\"error\":").unwrap();
        let (inner, _) = canned(Answer::of(e, vec![cut - 10, cut + 20]));
        let svc = ServiceBuilder::new().layer(layer).service(inner);
        let req = Request::post(format!("http://localhost{}", s(e, "endpoint")))
            .body(Full::new(Bytes::from(serde_json::to_vec(&e["request_plaintext"]).unwrap())))
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        let record = res.extensions().get::<ExchangeRecord>().cloned().unwrap();
        let err = res.into_body().collect().await.expect_err("the in-band error");
        assert_eq!(tower_aci::Error::find(err.as_ref()).map(tower_aci::Error::kind), Some(ErrorKind::InBandError));
        assert_eq!(record.response_body_sha256(), Some(sha256(&w)));
        let receipt = Receipt::from_bytes(Bytes::from(s(e, "receipt").to_owned())).unwrap();
        verify_exchange(&receipt, &record, &keys, &ReceiptPolicy::new()).unwrap();
    }
}
