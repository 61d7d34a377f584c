//! The E2EE layer over real HTTP on loopback against the local gateway.

use std::time::Duration;

use aci_test_gateway::{Fault, GatewayConfig};
use bytes::Bytes;
use http_body::Body;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use tower_aci::GatewayError;
use tower_aci::protocol::Suite;
use tower_aci::receipt::ExchangeRecord;
use tower_aci::{BoxError, ErrorKind};

use crate::support::{Env, kind, post, read, send, sse_choice, sse_text};

const SECRET: &str = "my passphrase is purple-zebra-quartz";

#[tokio::test]
async fn chat_buffered_both_suites_gateway_sees_plaintext_wire_sees_ciphertext() {
    for suite in Suite::ALL {
        let env = Env::start(suite).await;
        let client = env.client(env.layer());
        let body = json!({"model": "demo", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": SECRET}]});
        let res = send(&client, post(&env.url("/v1/chat/completions"), &body)).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-e2ee-applied"], "true");
        assert!(res.headers().get("content-length").is_none(), "length changes under decryption");
        let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
        assert_eq!(record.suite(), Some(suite));
        assert!(record.receipt_id().unwrap().starts_with("rcpt-"));
        let out: Value = serde_json::from_slice(&read(res.into_body()).await.unwrap()).unwrap();
        let answer = out["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(answer, format!("You said: {SECRET}"));
        assert!(out["choices"][0]["message"]["reasoning_content"].as_str().unwrap().starts_with("The user wrote"));

        // The upstream (inside the TEE) saw the plaintext …
        let upstream = env.gw.upstream_log();
        assert_eq!(upstream.last().unwrap()["messages"][1]["content"], SECRET);
        // … while neither direction of the wire carried it.
        let wire_req = env.gw.wire_log();
        let wire_req = String::from_utf8_lossy(wire_req.last().unwrap());
        assert!(!wire_req.contains("zebra") && !wire_req.contains("be brief"), "{wire_req}");
        let wire_res = env.wire_text();
        assert!(!wire_res.contains("zebra") && !wire_res.contains("You said"), "{wire_res}");
        // The record's response hash is SHA-256 of exactly those wire bytes.
        let h: [u8; 32] = Sha256::digest(env.response_wire.lock().unwrap().as_slice()).into();
        assert_eq!(record.response_body_sha256(), Some(h));
    }
}

#[tokio::test]
async fn chat_stream_both_suites_decrypts_event_by_event() {
    for suite in Suite::ALL {
        let env = Env::start(suite).await;
        let client = env.client(env.layer());
        let body = json!({"model": "demo", "stream": true, "n": 2, "messages": [{"role": "user", "content": SECRET}]});
        let res = send(&client, post(&env.url("/v1/chat/completions"), &body)).await.unwrap();
        assert_eq!(res.status(), 200);
        let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
        assert!(record.streamed());
        assert_eq!(record.response_body_sha256(), None, "not final before the body is read");
        let out = read(res.into_body()).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert_eq!(sse_choice(&out, "content", Some(0)), format!("You said: {SECRET}"));
        assert_eq!(sse_choice(&out, "content", Some(1)), format!("You said: {SECRET} (choice 1)"));
        assert!(sse_text(&out, "reasoning_content").starts_with("The user wrote"));
        assert!(!env.wire_text().contains("zebra"));
        let h: [u8; 32] = Sha256::digest(env.response_wire.lock().unwrap().as_slice()).into();
        assert_eq!(record.response_body_sha256(), Some(h));
    }
}

#[tokio::test]
async fn completions_buffered_and_streamed_and_embeddings() {
    let env = Env::start(Suite::Secp256k1).await;
    let client = env.client(env.layer());
    let res =
        send(&client, post(&env.url("/v1/completions"), &json!({"model": "m", "prompt": ["a secret prompt", 42]})))
            .await
            .unwrap();
    let out: Value = serde_json::from_slice(&read(res.into_body()).await.unwrap()).unwrap();
    assert_eq!(out["choices"][0]["text"], "Echo: a secret prompt");

    let res =
        send(&client, post(&env.url("/v1/completions"), &json!({"model": "m", "prompt": "stream me", "stream": true})))
            .await
            .unwrap();
    let out = read(res.into_body()).await.unwrap();
    assert_eq!(sse_text(&out, "text"), "Echo: stream me");

    for format in ["float", "base64"] {
        let body = json!({"model": "e", "input": ["one secret", "two secrets"], "encoding_format": format});
        let res = send(&client, post(&env.url("/v1/embeddings"), &body)).await.unwrap();
        let out: Value = serde_json::from_slice(&read(res.into_body()).await.unwrap()).unwrap();
        let data = out["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        match format {
            "float" => assert_eq!(data[1]["embedding"].as_array().unwrap().len(), 8),
            _ => assert!(data[1]["embedding"].as_str().unwrap().ends_with('=')),
        }
    }
    assert!(!env.wire_text().contains("secret"));
}

#[tokio::test]
async fn blocking_pool_path_decrypts_large_buffered_answers_over_http() {
    let env = Env::start(Suite::X25519).await;
    // Threshold 0: every buffered body goes through spawn_blocking (that it is offloaded at
    // all is checked in `e2ee::body` unit tests); here the answer must decrypt correctly.
    let client = env.client(env.layer().blocking_threshold(0));
    let inputs: Vec<String> = (0..300).map(|i| format!("input {i}")).collect();
    let res = send(&client, post(&env.url("/v1/embeddings"), &json!({"model": "e", "input": inputs}))).await.unwrap();
    let out: Value = serde_json::from_slice(&read(res.into_body()).await.unwrap()).unwrap();
    let data = out["data"].as_array().unwrap();
    assert_eq!(data.len(), 300);
    assert!(data.iter().all(|d| d["embedding"].as_array().is_some_and(|e| e.len() == 8)), "every embedding decrypted");
}

#[tokio::test]
async fn other_requests_pass_through_and_unknown_posts_are_refused() {
    let env = Env::start(Suite::X25519).await;
    let client = env.client(env.layer());
    let res =
        send(&client, http::Request::get(env.url("/v1/models")).body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    let models: Value = serde_json::from_slice(&read(res.into_body()).await.unwrap()).unwrap();
    assert!(models["data"].is_array());

    let before = env.gw.requests_seen();
    for path in ["/v1/messages", "/v1/responses", "/v1/unknown"] {
        let err =
            send(&client, post(&env.url(path), &json!({"model": "m", "input": SECRET}))).await.err().expect("refused");
        assert_eq!(kind(&err), Some(ErrorKind::UnsupportedEndpoint), "{path}");
    }
    assert_eq!(env.gw.requests_seen(), before, "nothing was sent");
    assert!(env.gw.wire_log().iter().all(|b| !String::from_utf8_lossy(b).contains("zebra")));

    // A route the user allows goes through in plaintext.
    let client = env.client(env.layer().allow_plaintext_route("/v1/unknown"));
    let res = send(&client, post(&env.url("/v1/unknown"), &json!({}))).await.unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn strict_mode_and_unprotectable_bodies_are_refused_before_sending() {
    let env = Env::start(Suite::X25519).await;
    let strict = env.client(env.layer().strict(true));
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]});
    let err = send(&strict, post(&env.url("/v1/chat/completions"), &body)).await.err().expect("refused");
    assert_eq!(kind(&err), Some(ErrorKind::Cleartext));
    let client = env.client(env.layer());
    let err = send(&client, post(&env.url("/v1/completions"), &json!({"model": "m", "prompt": [1, 2, 3]})))
        .await
        .err()
        .expect("refused");
    assert_eq!(kind(&err), Some(ErrorKind::UnsupportedBody));
    let tiny = env.client(env.layer().max_request_body(16));
    let err = send(
        &tiny,
        post(
            &env.url("/v1/chat/completions"),
            &json!({"model": "m", "messages": [{"role": "user", "content": SECRET}]}),
        ),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(kind(&err), Some(ErrorKind::TooLarge));
    assert_eq!(env.gw.requests_seen(), 0);
}

/// A `cache_salt` (the prefix-cache partition of vLLM-style servers, which the gateway keeps)
/// passes strict mode on chat completions and completions, buffered and streamed: it travels
/// in clear, as the protocol leaves it, and reaches the model server unchanged. A value that
/// looks like text rather than a token, or a salt on embeddings, is still refused.
#[tokio::test]
async fn strict_mode_lets_a_cache_salt_through_to_the_model_server() {
    let env = Env::start(Suite::X25519).await;
    let strict = env.client(env.layer().strict(true));
    let salt = "tenant-7f3a9c_2Kq+/w==";
    for (path, stream) in [
        ("/v1/chat/completions", false),
        ("/v1/chat/completions", true),
        ("/v1/completions", false),
        ("/v1/completions", true),
    ] {
        let mut body = if path == "/v1/completions" {
            json!({"model": "m", "prompt": SECRET})
        } else {
            json!({"model": "m", "messages": [{"role": "user", "content": SECRET}]})
        };
        body["stream"] = json!(stream);
        body["cache_salt"] = json!(salt);
        let res = send(&strict, post(&env.url(path), &body)).await.unwrap_or_else(|e| panic!("{path} {stream}: {e}"));
        assert_eq!(res.status(), 200, "{path} {stream}");
        read(res.into_body()).await.unwrap();
        let seen = env.gw.upstream_log().pop().unwrap();
        assert_eq!(seen["cache_salt"], salt, "{path} {stream}: {seen}");
        let wire = String::from_utf8_lossy(&env.gw.wire_log().pop().unwrap()).into_owned();
        assert!(wire.contains(&format!("\"cache_salt\":\"{salt}\"")) && !wire.contains("zebra"), "{wire}");
    }
    let before = env.gw.requests_seen();
    let chat = |salt: Value| json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "cache_salt": salt});
    for (path, body) in [
        ("/v1/chat/completions", chat(json!("my salt is my mother's maiden name"))),
        ("/v1/chat/completions", chat(json!({"tenant": "acme"}))),
        ("/v1/chat/completions", chat(json!("x".repeat(257)))),
        ("/v1/embeddings", json!({"model": "m", "input": "x", "cache_salt": salt})),
    ] {
        let err = send(&strict, post(&env.url(path), &body)).await.err().expect("refused");
        assert_eq!(kind(&err), Some(ErrorKind::Cleartext), "{body}");
    }
    assert_eq!(env.gw.requests_seen(), before, "nothing was sent");
}

#[tokio::test]
async fn gateway_errors_pass_through_readable_with_their_type() {
    let env = Env::start(Suite::X25519).await;
    let client = env.client(env.layer());
    env.gw.set_fault(Some(Fault::UpstreamStatus(
        429,
        r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#.into(),
    )));
    let res = send(
        &client,
        post(&env.url("/v1/chat/completions"), &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 429);
    let gw = res.extensions().get::<GatewayError>().unwrap().clone();
    assert_eq!(gw.error_type.as_deref(), Some("rate_limit_error"));
    assert_eq!(gw.to_error().gateway_error_type(), Some("rate_limit_error"));
    let body: Value = serde_json::from_slice(&read(res.into_body()).await.unwrap()).unwrap();
    assert_eq!(body["error"]["message"], "slow down");
}

/// Read frames until the body ends or errors; returns the data read and the error, if any.
async fn drain<B>(mut body: B) -> (Vec<u8>, Option<BoxError>)
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => out.extend_from_slice(f.data_ref().map(|d| &d[..]).unwrap_or_default()),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

fn stream_body() -> Value {
    json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "one two three four five six seven eight"}]})
}

#[tokio::test]
async fn stalled_stream_still_delivers_the_first_events() {
    let env = Env::start(Suite::Secp256k1).await;
    env.gw.set_fault(Some(Fault::StallAfter { events: 3 }));
    let client = env.client(env.layer());
    let res = send(&client, post(&env.url("/v1/chat/completions"), &stream_body())).await.unwrap();
    let mut body = res.into_body();
    let mut got = Vec::new();
    // Three events arrive, decrypted, although the stream never ends.
    while sse_text(&got, "content").is_empty() {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.expect("event released promptly");
        got.extend_from_slice(frame.unwrap().unwrap().data_ref().unwrap());
    }
    assert!(sse_text(&got, "content").starts_with("You said"));
    // Nothing more comes.
    assert!(tokio::time::timeout(Duration::from_millis(200), body.frame()).await.is_err());
}

#[tokio::test]
async fn tampered_event_fails_at_that_event() {
    let env = Env::start(Suite::X25519).await;
    env.gw.set_fault(Some(Fault::TamperEvent { index: 2 }));
    let client = env.client(env.layer());
    let res = send(&client, post(&env.url("/v1/chat/completions"), &stream_body())).await.unwrap();
    let (got, err) = drain(res.into_body()).await;
    assert_eq!(kind(&err.expect("tamper detected")), Some(ErrorKind::Decrypt));
    // The events before the tampered one were released, decrypted.
    assert!(sse_text(&got, "reasoning_content").starts_with("The user wrote"));
    assert!(!String::from_utf8_lossy(&got).contains("[DONE]"));
}

#[tokio::test]
async fn truncated_stream_is_an_error() {
    let env = Env::start(Suite::X25519).await;
    env.gw.set_fault(Some(Fault::CutMidEvent { after_events: 3 }));
    let client = env.client(env.layer());
    let res = send(&client, post(&env.url("/v1/chat/completions"), &stream_body())).await.unwrap();
    let (got, err) = drain(res.into_body()).await;
    assert_eq!(kind(&err.expect("truncation detected")), Some(ErrorKind::Truncated));
    assert!(!got.is_empty());
}

#[tokio::test]
async fn in_band_error_then_done_is_surfaced() {
    let env = Env::start(Suite::Secp256k1).await;
    env.gw.set_fault(Some(Fault::TransportErrorAfter { events: 3 }));
    let client = env.client(env.layer());
    let res = send(&client, post(&env.url("/v1/chat/completions"), &stream_body())).await.unwrap();
    let (_, err) = drain(res.into_body()).await;
    let err = err.expect("in-band error surfaced");
    let e = tower_aci::Error::find(err.as_ref()).unwrap();
    assert_eq!(e.kind(), ErrorKind::InBandError);
    assert_eq!(e.gateway_error_type(), Some("upstream_error"));
}

#[tokio::test]
async fn expired_key_is_never_used() {
    let now = tower_aci::attest::Clock::now(&tower_aci::attest::SystemClock);
    let clock = tower_aci::attest::ManualClock::new(now);
    let env =
        Env::with(GatewayConfig::new().clock(std::sync::Arc::new(clock.clone())).not_after(now + 100), Suite::X25519)
            .await;
    // The provider's handle uses the system clock; a fixed handle on the manual clock shows the
    // layer refuses once the keyset expired.
    let keyset = env.keys.current().unwrap();
    let handle = tower_aci::attest::KeyHandle::fixed_with_clock((*keyset).clone(), std::sync::Arc::new(clock.clone()));
    let client = env.client(tower_aci::E2eeLayer::new(handle));
    let ok = send(
        &client,
        post(&env.url("/v1/chat/completions"), &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})),
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
    clock.set(now + 100);
    let err = send(
        &client,
        post(&env.url("/v1/chat/completions"), &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(kind(&err), Some(ErrorKind::KeyUnavailable));
}

#[derive(Clone)]
struct RetryOn503(usize);

impl<B, E> tower::retry::Policy<http::Request<Full<Bytes>>, http::Response<B>, E> for RetryOn503 {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut http::Request<Full<Bytes>>,
        result: &mut Result<http::Response<B>, E>,
    ) -> Option<Self::Future> {
        match result {
            Ok(res) if res.status() == 503 && self.0 > 0 => {
                self.0 -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &http::Request<Full<Bytes>>) -> Option<http::Request<Full<Bytes>>> {
        let mut r = http::Request::builder().method(req.method().clone()).uri(req.uri().clone());
        *r.headers_mut().unwrap() = req.headers().clone();
        Some(r.body(req.body().clone()).unwrap())
    }
}

#[tokio::test]
async fn retry_outside_the_layer_re_encrypts_each_attempt() {
    let env = Env::start(Suite::X25519).await;
    env.gw.set_fault(Some(Fault::StatusOnce(503)));
    let client = tower::ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(RetryOn503(1)))
        .service(env.client(env.layer()));
    let res = client
        .oneshot(post(
            &env.url("/v1/chat/completions"),
            &json!({"model": "m", "messages": [{"role": "user", "content": "again"}]}),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.extensions().get::<GatewayError>());
    let out: Value = serde_json::from_slice(&read(res.into_body()).await.unwrap()).unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], "You said: again");
    // Two attempts on the wire, with different nonces (the first was burned).
    let wire = env.gw.wire_log();
    assert_eq!(wire.len(), 2);
    assert_ne!(wire[0], wire[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_through_one_layer() {
    let env = Env::start(Suite::X25519).await;
    let client = env.client(env.layer());
    let url = env.url("/v1/chat/completions");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": format!("request number {i}")}]});
            let res = send(&client, post(&url, &body)).await.unwrap();
            let out = read(res.into_body()).await.unwrap();
            (i, sse_text(&out, "content"))
        }));
    }
    for t in tasks {
        let (i, text) = t.await.unwrap();
        assert_eq!(text, format!("You said: request number {i}"));
    }
}

/// A request to an E2EE endpoint in any method but `POST` — `PUT`, `PATCH`, an extension method
/// such as `post` in lower case, `GET` or `DELETE` with a body — is never sent: the layer
/// encrypts only `POST`, and would otherwise pass the body through in plaintext.
#[tokio::test]
async fn non_post_requests_with_a_body_to_e2ee_endpoints_are_refused_before_sending() {
    use http::Method;
    let env = Env::start(Suite::X25519).await;
    let client = env.client(env.layer());
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": SECRET}]});
    let methods = [
        Method::PUT,
        Method::PATCH,
        Method::from_bytes(b"post").unwrap(),
        Method::from_bytes(b"Post").unwrap(),
        Method::GET,
        Method::DELETE,
        Method::from_bytes(b"QUERY").unwrap(),
    ];
    let paths = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings/",
        "/api/v1/chat/completions",
        "/V1/Chat/Completions",
    ];
    let before = env.gw.requests_total();
    for method in &methods {
        for path in paths {
            let mut req = post(&env.url(path), &chat);
            *req.method_mut() = method.clone();
            let err = match send(&client, req).await {
                Ok(res) => {
                    panic!("attack succeeded: {method} {path} was sent in plaintext (answered {})", res.status())
                }
                Err(e) => e,
            };
            assert_eq!(kind(&err), Some(ErrorKind::UnsupportedEndpoint), "{method} {path}: {err}");
            assert!(err.to_string().contains(method.as_str()) && err.to_string().contains("POST"), "{err}");
        }
    }
    assert_eq!(env.gw.requests_total(), before, "the gateway saw none of them");

    // A body of unknown size could carry a prompt: refused too, even if it turns out empty.
    let streamed = tower::ServiceBuilder::new().layer(env.layer()).service(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<tower_aci::e2ee::RequestBody<http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>>>(),
    );
    let unknown_size =
        http_body_util::StreamBody::new(futures_util::stream::empty::<Result<http_body::Frame<Bytes>, BoxError>>());
    assert_eq!(unknown_size.size_hint().exact(), None);
    let req = http::Request::put(env.url("/v1/chat/completions")).body(unknown_size.boxed_unsync()).unwrap();
    let Err(err) = streamed.oneshot(req).await else { panic!("a PUT of unknown size was sent") };
    assert_eq!(kind(&err), Some(ErrorKind::UnsupportedEndpoint), "{err}");
    assert_eq!(env.gw.requests_total(), before, "the gateway saw nothing");

    // Without a body they pass through as before: the gateway answers a GET itself.
    let get = http::Request::get(env.url("/v1/chat/completions")).body(Full::new(Bytes::new())).unwrap();
    let res = send(&client, get).await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(env.gw.requests_total(), before + 1);
}

/// The E2EE request headers the layer writes are marked sensitive (`Debug` hides them, HTTP/2
/// keeps them out of its compression tables), however their values were built.
#[tokio::test]
async fn the_e2ee_request_headers_are_sensitive() {
    let env = Env::start(Suite::Secp256k1).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let spy = seen.clone();
    let client = tower::ServiceBuilder::new()
        .layer(env.layer())
        .map_request(move |req: http::Request<_>| {
            *spy.lock().unwrap() = Some(req.headers().clone());
            req
        })
        .service(crate::support::layer_client());
    let req =
        post(&env.url("/v1/chat/completions"), &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
    let res = client.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let headers = seen.lock().unwrap().take().unwrap();
    for name in ["x-client-pub-key", "x-model-pub-key", "x-e2ee-nonce", "x-e2ee-timestamp"] {
        assert!(headers[name].is_sensitive(), "{name} is not marked sensitive");
    }
    assert!(headers["x-e2ee-timestamp"].to_str().unwrap().parse::<u64>().is_ok());
    assert_eq!(headers["x-client-pub-key"].len(), 130);
}
