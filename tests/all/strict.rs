//! Strict mode on both halves: requests carry only members known to carry nothing private (or
//! the caller is warned), and streams fail at the event that carries generated content in clear,
//! before it is released.

#![cfg_attr(not(feature = "__internal-test-vectors"), allow(unused_imports, dead_code))]

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};
use tower_aci::protocol::E2eeKey;
use tower_aci::protocol::{EncryptOptions, Endpoint, encrypt_request};
use tower_aci::protocol::{SecretKey, Suite};
use tower_aci::{BoxError, E2eeLayer, ErrorKind};
use tracing::Level;

#[cfg(feature = "__internal-test-vectors")]
use crate::capture::Capture;
use crate::reference::*;

fn key() -> E2eeKey {
    let sk = SecretKey::generate(Suite::X25519, &mut rand_core::OsRng);
    E2eeKey::parse("k", Suite::X25519.algo(), sk.public_key().to_hex()).unwrap()
}

fn strict(endpoint: Endpoint, body: &Value) -> tower_aci::Result<usize> {
    let bytes = serde_json::to_vec(body).unwrap();
    encrypt_request(endpoint, &bytes, &key(), &EncryptOptions::default().strict(true), 1, &mut rand_core::OsRng)
        .map(|r| r.fields)
}

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "secret"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[test]
fn strict_requests_refuse_members_outside_the_allow_list() {
    let refused = [
        (Endpoint::ChatCompletions, json!({"stop": ["my secret word"]})),
        (Endpoint::ChatCompletions, json!({"stop": "x"})),
        (Endpoint::ChatCompletions, json!({"user": "alice@example.com"})),
        (Endpoint::ChatCompletions, json!({"logit_bias": {"1234": 100}})),
        (Endpoint::ChatCompletions, json!({"audio": {"voice": "alloy", "format": "wav"}})),
        (Endpoint::ChatCompletions, json!({"metadata": {"case": "divorce"}})),
        (Endpoint::ChatCompletions, json!({"tools": []})),
        (Endpoint::ChatCompletions, json!({"response_format": {"type": "json_schema"}})),
        (Endpoint::ChatCompletions, json!({"prediction": {"type": "content", "content": "draft"}})),
        (Endpoint::ChatCompletions, json!({"some_future_member": 1})),
        // A member on the list with a value that can carry text.
        (Endpoint::ChatCompletions, json!({"temperature": "my secret"})),
        (Endpoint::ChatCompletions, json!({"stream_options": {"include_usage": "secret"}})),
        (Endpoint::ChatCompletions, json!({"reasoning_effort": "please summarise my medical record"})),
        (Endpoint::Completions, json!({"suffix": "the end of my secret"})),
        (Endpoint::Embeddings, json!({"user": "alice"})),
    ];
    for (endpoint, extra) in refused {
        let body = match endpoint {
            Endpoint::ChatCompletions => chat(extra.clone()),
            Endpoint::Completions => {
                let mut b = json!({"model": "m", "prompt": "p"});
                b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
                b
            }
            Endpoint::Embeddings => {
                let mut b = json!({"model": "m", "input": "p"});
                b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
                b
            }
            other => panic!("no body for {other:?}"),
        };
        let err = strict(endpoint, &body).expect_err(&format!("{endpoint:?} {extra}"));
        assert_eq!(err.kind(), ErrorKind::Cleartext, "{extra}");
        // The error names the member, never its value.
        let name = extra.as_object().unwrap().keys().next().unwrap();
        assert!(err.to_string().contains(name.as_str()), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    // Members that carry nothing private pass.
    let allowed = chat(json!({
        "temperature": 0.2, "top_p": 1, "n": 2, "max_tokens": 64, "max_completion_tokens": 64,
        "presence_penalty": 0, "frequency_penalty": 0.5, "seed": 7, "stream": true,
        "stream_options": {"include_usage": true}, "logprobs": false, "top_logprobs": 0,
        "parallel_tool_calls": false, "reasoning_effort": "low", "modalities": ["text"], "service_tier": "auto",
        "store": false, "temperature_unset": null
    }));
    // `temperature_unset` is not on the list: refused even though null.
    assert_eq!(strict(Endpoint::ChatCompletions, &allowed).unwrap_err().kind(), ErrorKind::Cleartext);
    let mut allowed = allowed;
    allowed.as_object_mut().unwrap().remove("temperature_unset");
    assert_eq!(strict(Endpoint::ChatCompletions, &allowed).unwrap(), 1);
    let completions = json!({"model": "m", "prompt": ["a", "b"], "max_tokens": 5, "echo": false, "best_of": 1, "logprobs": 2, "stream": false});
    assert_eq!(strict(Endpoint::Completions, &completions).unwrap(), 2);
    // Token ids beside prompt strings travel in clear, and token ids are text.
    let mixed = json!({"model": "m", "prompt": ["a", [1, 2], 3]});
    let err = strict(Endpoint::Completions, &mixed).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cleartext);
    assert!(err.to_string().contains("`prompt.1`, `prompt.2`"), "{err}");
    let embeddings = json!({"model": "m", "input": "a", "encoding_format": "base64", "dimensions": 8});
    assert_eq!(strict(Endpoint::Embeddings, &embeddings).unwrap(), 1);

    // Message members: role, content and tool_call_id only.
    for m in [
        json!({"role": "user", "name": "alice", "content": "x"}),
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]}),
        json!({"role": "assistant", "content": "x", "reasoning_content": "private chain of thought"}),
    ] {
        let body = json!({"model": "m", "messages": [m, {"role": "user", "content": "x"}]});
        assert_eq!(strict(Endpoint::ChatCompletions, &body).unwrap_err().kind(), ErrorKind::Cleartext);
    }
    let tool = json!({"model": "m", "messages": [{"role": "tool", "tool_call_id": "call_1", "content": "42"}]});
    assert_eq!(strict(Endpoint::ChatCompletions, &tool).unwrap(), 1);
}

#[test]
fn content_objects_and_numbers_are_never_sent_in_clear_silently() {
    for content in [json!({"secret": "in an object"}), json!(12345), json!(true)] {
        let body =
            json!({"model": "m", "messages": [{"role": "user", "content": content}, {"role": "user", "content": "x"}]});
        let err = strict(Endpoint::ChatCompletions, &body).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cleartext, "{content}");
        assert!(err.to_string().contains("messages.0.content"), "{err}");
        // Outside strict mode too: E2EE v2 cannot encrypt it, so the request is not sent at all.
        let bytes = serde_json::to_vec(&body).unwrap();
        let err = encrypt_request(
            Endpoint::ChatCompletions,
            &bytes,
            &key(),
            &EncryptOptions::default(),
            1,
            &mut rand_core::OsRng,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsupportedBody, "{content}");
        assert!(err.to_string().contains("messages.0.content"), "{err}");
    }
    // null content is fine (an assistant turn with tool calls has none).
    let body =
        json!({"model": "m", "messages": [{"role": "assistant", "content": null}, {"role": "user", "content": "x"}]});
    assert_eq!(strict(Endpoint::ChatCompletions, &body).unwrap(), 1);
}

#[cfg(feature = "__internal-test-vectors")]
async fn send(
    layer: E2eeLayer,
    body: &Value,
    e: &Value,
    answer: Answer,
) -> Result<http::Response<impl http_body::Body<Data = Bytes, Error = BoxError>>, BoxError> {
    let (inner, _) = canned(answer);
    let svc = ServiceBuilder::new().layer(layer).service(inner);
    let req = Request::post(format!("http://localhost{}", s(e, "endpoint")))
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap();
    svc.oneshot(req).await
}

/// Not strict: one warning per request, naming every member in clear and no value.
#[cfg(feature = "__internal-test-vectors")]
#[tokio::test(flavor = "current_thread")]
async fn clear_request_members_are_warned_about_once_per_request() {
    let e = exchange(Suite::X25519, "chat_default_buffered");
    let (keys, clock) = handle(Suite::X25519);
    clock.set(timestamp(e));
    let (capture, _guard) = Capture::install();
    let body = json!({"model": "test-model", "messages": [{"role": "user", "name": "alice", "content": "hi"}],
        "stop": ["hushhush"], "user": "bob-the-user", "logit_bias": {"42": 1}, "temperature": 0.1});
    let layer = E2eeLayer::new(keys.clone()).dangerous_randomness_for_tests(tape_fill(tape(e)));
    let res = send(layer, &body, e, Answer::of(e, vec![])).await.unwrap();
    res.into_body().collect().await.unwrap();
    let warnings = capture.at(Level::WARN);
    let about: Vec<&String> = warnings.iter().filter(|w| w.contains("in clear")).collect();
    assert_eq!(about.len(), 1, "{warnings:?}");
    for member in ["stop", "user", "logit_bias", "messages.0.name"] {
        assert!(about[0].contains(member), "{member}: {}", about[0]);
    }
    for value in ["hushhush", "bob-the-user", "alice"] {
        assert!(!about[0].contains(value), "{}", about[0]);
    }
    assert!(!about[0].contains("temperature"));

    // A request with nothing in clear: no warning.
    let before = capture.at(Level::WARN).len();
    let layer = E2eeLayer::new(keys).dangerous_randomness_for_tests(tape_fill(tape(e)));
    let res = send(layer, &e["request_plaintext"], e, Answer::of(e, vec![])).await.unwrap();
    res.into_body().collect().await.unwrap();
    assert_eq!(capture.at(Level::WARN).len(), before);
}

/// Read a body frame by frame: the bytes released and the error that ended it.
#[cfg(feature = "__internal-test-vectors")]
async fn drain<B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin>(mut body: B) -> (Vec<u8>, Option<BoxError>) {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => out.extend_from_slice(f.data_ref().unwrap()),
            Err(err) => return (out, Some(err)),
        }
    }
    (out, None)
}

#[cfg(feature = "__internal-test-vectors")]
fn kind(err: &BoxError) -> Option<ErrorKind> {
    tower_aci::Error::find(err.as_ref()).map(tower_aci::Error::kind)
}

/// The reference's tool-call stream: its first event names a tool in clear. Strict: the body
/// fails at once and releases nothing; not strict: it passes, with a warning.
#[cfg(feature = "__internal-test-vectors")]
#[tokio::test(flavor = "current_thread")]
async fn strict_streams_fail_at_the_first_event_in_clear() {
    for suite in Suite::ALL {
        let e = exchange(suite, "chat_tools_stream");
        let (keys, clock) = handle(suite);
        clock.set(timestamp(e));
        let mut request = e["request_plaintext"].clone();
        request.as_object_mut().unwrap().remove("tools"); // strict refuses `tools` itself
        let layer = E2eeLayer::new(keys.clone()).strict(true).dangerous_randomness_for_tests(tape_fill(tape(e)));
        let res = send(layer, &request, e, Answer::of(e, vec![])).await.unwrap();
        let (released, err) = drain(Box::pin(res.into_body())).await;
        assert_eq!(kind(&err.expect("strict fails the stream")), Some(ErrorKind::Cleartext));
        assert!(released.is_empty(), "released {:?}", String::from_utf8_lossy(&released));

        let (capture, _guard) = Capture::install();
        let layer = E2eeLayer::new(keys).dangerous_randomness_for_tests(tape_fill(tape(e)));
        let res = send(layer, &e["request_plaintext"], e, Answer::of(e, vec![])).await.unwrap();
        let (released, err) = drain(Box::pin(res.into_body())).await;
        assert!(err.is_none());
        assert!(String::from_utf8_lossy(&released).ends_with("data: [DONE]\n\n"));
        assert!(capture.at(Level::WARN).iter().any(|w| w.contains("tool_calls")));
    }
}

/// Encrypted events before the one in clear are released; the one in clear (a refusal, then
/// logprobs) is not.
#[cfg(feature = "__internal-test-vectors")]
#[tokio::test(flavor = "current_thread")]
async fn strict_streams_release_what_authenticated_before_the_clear_event() {
    let e = exchange(Suite::X25519, "chat_default_stream");
    let wire = String::from_utf8(wire(e)).unwrap();
    let events: Vec<&str> = wire.split_inclusive("\n\n").collect();
    let id = e["expected_plaintext"]["events"][0]["id"].as_str().unwrap();
    for (clear, secret) in [
        (json!({"index": 0, "delta": {"refusal": "I cannot tell you about SECRET-REFUSAL"}}), "SECRET-REFUSAL"),
        (
            json!({"index": 0, "delta": {}, "logprobs": {"content": [{"token": "SECRET-TOKEN", "logprob": -0.1}]}}),
            "SECRET-TOKEN",
        ),
    ] {
        let clear_event = format!("data: {}\n\n", json!({"id": id, "choices": [clear]}));
        let body = [events[0], events[1], &clear_event, events[2], events[3], events[4], events[5], events[6]].concat();
        let (keys, clock) = handle(Suite::X25519);
        clock.set(timestamp(e));
        let layer = E2eeLayer::new(keys).strict(true).dangerous_randomness_for_tests(tape_fill(tape(e)));
        let mut answer = Answer::of(e, vec![]);
        answer.body = Bytes::from(body);
        let res = send(layer, &e["request_plaintext"], e, answer).await.unwrap();
        let (released, err) = drain(Box::pin(res.into_body())).await;
        assert_eq!(kind(&err.expect("strict fails the stream")), Some(ErrorKind::Cleartext));
        let released = String::from_utf8(released).unwrap();
        let data = sse_data(released.as_bytes());
        assert_eq!(data.len(), 2, "the two events before the clear one: {released}");
        let first: Value = serde_json::from_str(&data[1]).unwrap();
        assert_eq!(first["choices"][0]["delta"]["content"], "Echo: Hell");
        assert!(!released.contains(secret));
    }
}
