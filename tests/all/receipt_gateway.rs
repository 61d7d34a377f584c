//! Receipts end to end over loopback: E2EE exchanges through `E2eeLayer` against the local
//! gateway, then fetch + verify with `ReceiptClient`.

use std::time::Duration;

use crate::data::{exchange_record, reason};
use aci_test_gateway::{Fault, GatewayConfig};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::ServiceBuilder;
use tower_aci::attest::{KeyHandle, KeyProvider, SystemClock};
use tower_aci::protocol::Suite;
use tower_aci::receipt::{
    ExchangeRecord, KeysetMatch, Receipt, ReceiptClient, ReceiptPolicy, RetryPolicy, verify_against_keyset,
    verify_exchange,
};
use tower_aci::{ErrorKind, ReceiptFailure as F};

use crate::support::{Env, Hyper, hyper, kind, layer_client, post, read, send, stub_policy};

const PROMPT: &str = "the receipt must name exactly this";

fn chat(stream: bool) -> Value {
    json!({"model": "demo-model", "stream": stream, "messages": [{"role": "user", "content": PROMPT}]})
}

fn receipts(env: &Env) -> ReceiptClient<Hyper> {
    ReceiptClient::new(hyper(), env.gw.base_url().parse().unwrap()).retry(RetryPolicy::new(
        3,
        Duration::from_millis(10),
        Duration::from_millis(50),
    ))
}

fn with_bearer(url: &str, body: &Value, token: &str) -> Request<Full<Bytes>> {
    let mut req = post(url, body);
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

#[tokio::test]
async fn buffered_and_streamed_exchanges_verify_end_to_end_in_both_suites() {
    for suite in Suite::ALL {
        let env = Env::start(suite).await;
        let client = env.client(env.layer());
        let rc = receipts(&env);
        let policy = ReceiptPolicy::new().reject_rewrites(true).require_verified_upstream(true);
        for (path, body) in [
            ("/v1/chat/completions", chat(false)),
            ("/v1/chat/completions", chat(true)),
            ("/v1/completions", json!({"model": "demo-model", "prompt": PROMPT})),
            ("/v1/completions", json!({"model": "demo-model", "prompt": PROMPT, "stream": true})),
            ("/v1/embeddings", json!({"model": "demo-model", "input": PROMPT})),
        ] {
            let res = send(&client, post(&env.url(path), &body)).await.unwrap();
            assert_eq!(res.status(), 200, "{path}");
            let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
            assert_eq!(record.streamed(), body["stream"] == true);
            let out = read(res.into_body()).await.unwrap();
            assert!(!out.is_empty());

            let verified = rc.fetch_and_verify(&record, None, &env.keys, &policy).await.unwrap();
            let receipt = verified.receipt();
            assert_eq!(Some(receipt.receipt_id()), record.receipt_id());
            assert_eq!(receipt.endpoint(), path);
            assert_eq!(receipt.model(), Some("demo-model"));
            assert!(verified.forwarded() && !verified.rewritten());
            assert!(verified.upstream().is_none() && verified.session().is_none(), "a direct gateway");
            assert_eq!(verified.keyset().digest(), env.gw.keyset_digest());
            assert_eq!(record.keyset_digest(), Some(env.gw.keyset_digest().as_str()));

            // Archived bytes re-verify offline against the keyset, and against the record.
            let archived = Receipt::from_bytes(Bytes::copy_from_slice(receipt.as_bytes())).unwrap();
            verify_against_keyset(&archived, &env.keys.current().unwrap()).unwrap();
            verify_exchange(&archived, &record, &env.keys, &policy).unwrap();
        }
    }
}

#[tokio::test]
async fn the_receipt_client_works_through_the_layered_client_too() {
    let env = Env::start(Suite::Secp256k1).await;
    let client = env.client(env.layer());
    // The layer lets GETs through untouched, so one client stack serves both.
    let rc = ReceiptClient::new(client.clone(), env.gw.base_url().parse().unwrap());
    let res = send(&client, post(&env.url("/v1/chat/completions"), &chat(true))).await.unwrap();
    let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
    read(res.into_body()).await.unwrap();
    rc.fetch_and_verify(&record, None, &env.keys, &ReceiptPolicy::new()).await.unwrap();
    // By response id as well.
    let receipt = rc.fetch(record.receipt_id().unwrap(), None).await.unwrap();
    let chat_id = receipt.chat_id().unwrap().to_owned();
    assert_eq!(rc.fetch(&chat_id, None).await.unwrap(), receipt);
}

/// One hyper-util client — one connection pool — under the layer, for the key provider and for
/// the receipt client: the provider and receipts build their `GET`s as `RequestBody::from(Bytes)`.
#[tokio::test]
async fn one_client_serves_the_provider_the_layer_and_the_receipt_client() {
    let env = Env::start(Suite::X25519).await;
    let http = layer_client();
    let provider = KeyProvider::builder(http.clone())
        .base_url(env.gw.base_url().parse().unwrap())
        .policy(stub_policy(Suite::X25519))
        .build()
        .unwrap();
    let keyset = provider.establish().await.unwrap();
    assert_eq!(keyset.digest(), env.gw.keyset_digest());
    let client = ServiceBuilder::new().layer(tower_aci::E2eeLayer::new(provider.handle())).service(http.clone());
    let res = send(&client, post(&env.url("/v1/chat/completions"), &chat(false))).await.unwrap();
    assert_eq!(res.status(), 200);
    let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
    let out: Value = serde_json::from_slice(&read(res.into_body()).await.unwrap()).unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], format!("You said: {PROMPT}"));
    let rc = ReceiptClient::new(http, env.gw.base_url().parse().unwrap());
    let verified = rc.fetch_and_verify(&record, None, &provider.handle(), &ReceiptPolicy::new()).await.unwrap();
    assert_eq!(Some(verified.receipt().receipt_id()), record.receipt_id());
}

/// Rewrite `from` to `to` (same length) in the response bytes, after the gateway signed them and
/// before the layer sees them: outside any ciphertext, so decryption still succeeds.
fn tampering_client(
    env: &Env,
    from: &'static [u8],
    to: &'static [u8],
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = tower_aci::BoxError> + Send + use<>>,
    Error = tower_aci::BoxError,
    Future: Send,
> + Clone
+ use<> {
    ServiceBuilder::new()
        .layer(env.layer())
        .map_response(move |res: Response<hyper::body::Incoming>| {
            res.map(move |b| {
                b.map_frame(move |f| {
                    f.map_data(|d: Bytes| match memchr_find(&d, from) {
                        Some(i) => {
                            let mut v = d.to_vec();
                            v[i..i + to.len()].copy_from_slice(to);
                            Bytes::from(v)
                        }
                        None => d,
                    })
                })
            })
        })
        .service(layer_client())
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test]
async fn a_response_byte_changed_in_transit_fails_the_response_hash() {
    for stream in [false, true] {
        let env = Env::start(Suite::X25519).await;
        let client = tampering_client(&env, b"chat.completion", b"chat.complexion");
        let rc = receipts(&env);
        let res = send(&client, post(&env.url("/v1/chat/completions"), &chat(stream))).await.unwrap();
        let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
        let out = read(res.into_body()).await.unwrap();
        assert!(String::from_utf8_lossy(&out).contains("complexion"), "the layer decrypted the altered body");
        let err = rc.fetch_and_verify(&record, None, &env.keys, &ReceiptPolicy::new()).await;
        assert_eq!(reason(err), F::ResponseHash, "stream: {stream}");

        // Verify before release: the altered body is never handed out.
        let res = send(&client, post(&env.url("/v1/chat/completions"), &chat(stream))).await.unwrap();
        let released = rc.release_after_receipt(res, None, &env.keys, &ReceiptPolicy::new()).await;
        assert_eq!(reason(released), F::ResponseHash);
    }
}

#[tokio::test]
async fn a_ciphertext_flipped_in_transit_fails_decryption_and_the_receipt() {
    let env = Env::start(Suite::Secp256k1).await;
    env.gw.set_fault(Some(Fault::TamperEvent { index: 0 }));
    let client = env.client(env.layer());
    let res = send(&client, post(&env.url("/v1/chat/completions"), &chat(false))).await.unwrap();
    let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
    let err = read(res.into_body()).await.unwrap_err();
    assert_eq!(kind(&err), Some(ErrorKind::Decrypt));
    // The whole wire body was read, so its hash is final: it is not what the gateway signed.
    assert!(record.response_body_sha256().is_some());
    let err = receipts(&env).fetch_and_verify(&record, None, &env.keys, &ReceiptPolicy::new()).await;
    assert_eq!(reason(err), F::ResponseHash);
}

#[tokio::test]
async fn a_record_that_differs_from_the_exchange_fails_the_right_check() {
    let env = Env::start(Suite::X25519).await;
    let client = env.client(env.layer());
    let rc = receipts(&env);
    let res = send(&client, post(&env.url("/v1/chat/completions"), &chat(false))).await.unwrap();
    let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
    read(res.into_body()).await.unwrap();
    let receipt = rc.fetch(record.receipt_id().unwrap(), None).await.unwrap();
    let policy = ReceiptPolicy::new();
    let response = record.response_body_sha256();

    let mut request = record.request_body_sha256();
    request[5] ^= 0x80;
    let fake = exchange_record(record.path(), record.model(), record.receipt_id(), request, response);
    assert_eq!(reason(verify_exchange(&receipt, &fake, &env.keys, &policy)), F::RequestHash);

    let mut changed = response.unwrap();
    changed[0] ^= 1;
    let fake = exchange_record(
        record.path(),
        record.model(),
        record.receipt_id(),
        record.request_body_sha256(),
        Some(changed),
    );
    assert_eq!(reason(verify_exchange(&receipt, &fake, &env.keys, &policy)), F::ResponseHash);

    let fake = exchange_record(record.path(), "other-model", None, record.request_body_sha256(), response);
    assert_eq!(reason(verify_exchange(&receipt, &fake, &env.keys, &policy)), F::Mismatch);
    verify_exchange(&receipt, &record, &env.keys, &policy).unwrap();
}

#[tokio::test]
async fn bearer_token_rules_are_typed_errors() {
    let env = Env::start(Suite::Secp256k1).await;
    let client = env.client(env.layer());
    let rc = receipts(&env);
    let policy = ReceiptPolicy::new();
    let res = send(&client, with_bearer(&env.url("/v1/chat/completions"), &chat(false), "tok-1")).await.unwrap();
    let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
    read(res.into_body()).await.unwrap();

    let err = rc.fetch_and_verify(&record, None, &env.keys, &policy).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Receipt(F::Unauthorized));
    assert!(err.to_string().contains("bearer token"), "{err}");
    let err = rc.fetch_and_verify(&record, Some("tok-2"), &env.keys, &policy).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Receipt(F::NotAvailable));
    rc.fetch_and_verify(&record, Some("tok-1"), &env.keys, &policy).await.unwrap();

    // A streamed exchange under a token: the same rules.
    let res = send(&client, with_bearer(&env.url("/v1/chat/completions"), &chat(true), "tok-3")).await.unwrap();
    let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
    read(res.into_body()).await.unwrap();
    assert_eq!(reason(rc.fetch(record.receipt_id().unwrap(), None).await), F::Unauthorized);
    rc.fetch_and_verify(&record, Some("tok-3"), &env.keys, &policy).await.unwrap();

    // Tokens that cannot be a header value are a configuration error, not a fetch.
    let err = rc.fetch(record.receipt_id().unwrap(), Some("a\nb")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn a_stream_read_half_way_reports_not_available() {
    let env = Env::with(GatewayConfig::new(), Suite::X25519).await;
    env.gw.set_fault(Some(Fault::EventDelay(Duration::from_millis(30))));
    let client = env.client(env.layer());
    let rc = receipts(&env);
    // A receipt client that cannot reach anything: proves no fetch is attempted.
    let unreachable = ReceiptClient::new(hyper(), "http://127.0.0.1:9".parse().unwrap()).retry(RetryPolicy::none());
    let policy = ReceiptPolicy::new();

    let res = send(&client, post(&env.url("/v1/chat/completions"), &chat(true))).await.unwrap();
    let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    assert_eq!(record.response_body_sha256(), None);
    let err = unreachable.fetch_and_verify(&record, None, &env.keys, &policy).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Receipt(F::NotAvailable));
    assert!(err.to_string().contains("not read to its end"), "{err}");
    let released = unreachable.release_after_receipt(Response::new(Full::new(Bytes::new())), None, &env.keys, &policy);
    assert_eq!(reason(released.await), F::NotAvailable, "a response that did not come through the layer");

    // Read to the end: now it verifies.
    while let Some(frame) = body.frame().await {
        frame.unwrap();
    }
    rc.fetch_and_verify(&record, None, &env.keys, &policy).await.unwrap();

    // A stream abandoned half-way leaves no receipt at all on the gateway.
    env.gw.set_fault(Some(Fault::StallAfter { events: 1 }));
    let res = send(&client, post(&env.url("/v1/chat/completions"), &chat(true))).await.unwrap();
    let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(reason(rc.fetch_and_verify(&record, None, &env.keys, &policy).await), F::NotAvailable);
    drop(body);
    let id = record.receipt_id().unwrap();
    assert_eq!(reason(rc.clone().retry(RetryPolicy::none()).fetch(id, None).await), F::NotAvailable);
}

#[tokio::test]
async fn verify_before_release_hands_out_the_body_only_after_the_receipt() {
    let env = Env::start(Suite::Secp256k1).await;
    let client = env.client(env.layer());
    let rc = receipts(&env);
    let policy = ReceiptPolicy::new();
    let res = send(&client, with_bearer(&env.url("/v1/chat/completions"), &chat(false), "tok")).await.unwrap();
    let (res, verified) = rc.release_after_receipt(res, Some("tok"), &env.keys, &policy).await.unwrap();
    assert_eq!(res.status(), 200);
    let record = res.extensions().get::<ExchangeRecord>().unwrap();
    assert_eq!(Some(verified.receipt().receipt_id()), record.receipt_id());
    let out: Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], format!("You said: {PROMPT}"));

    // Without the owner's token nothing is released.
    let res = send(&client, with_bearer(&env.url("/v1/chat/completions"), &chat(false), "tok")).await.unwrap();
    assert_eq!(reason(rc.release_after_receipt(res, None, &env.keys, &policy).await), F::Unauthorized);

    // A gateway error is surfaced as such.
    env.gw.set_fault(Some(Fault::UpstreamStatus(429, r#"{"error":{"type":"rate_limited","message":"slow"}}"#.into())));
    let res = send(&client, post(&env.url("/v1/chat/completions"), &chat(false))).await.unwrap();
    assert_eq!(res.status(), 429);
    let err = rc.release_after_receipt(res, None, &env.keys, &policy).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Gateway);
}

#[tokio::test]
async fn receipts_of_a_renewed_keyset_are_attested_then_verified() {
    let env = Env::start(Suite::X25519).await;
    let provider = KeyProvider::builder(hyper())
        .base_url(env.gw.base_url().parse().unwrap())
        .policy(stub_policy(Suite::X25519))
        .build()
        .unwrap();
    let first = provider.establish().await.unwrap();
    let keys = provider.handle();
    let client = env.client(tower_aci::E2eeLayer::new(keys.clone()));
    let rc = receipts(&env);
    let policy = ReceiptPolicy::new();

    let exchange = || async {
        let res = send(&client, post(&env.url("/v1/chat/completions"), &chat(false))).await.unwrap();
        let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
        read(res.into_body()).await.unwrap();
        record
    };
    let before = exchange().await;
    assert_eq!(rc.fetch_and_verify(&before, None, &keys, &policy).await.unwrap().keyset_match(), KeysetMatch::Exact);

    // A restart or another replica: same E2EE keys, a new keyset digest (protocol.md §6.5).
    let now = tower_aci::attest::Clock::now(&SystemClock);
    env.gw.renew_keyset(now + 20 * 24 * 3600);
    let after = exchange().await;
    assert_ne!(after.keyset_digest(), before.keyset_digest());
    let reports = env.gw.attestations_served();
    // The receipt names a digest the handle does not know: the provider attests it first (one
    // report, fresh nonce), and the receipt verifies against it exactly.
    let verified = rc.fetch_and_verify(&after, None, &keys, &policy).await.unwrap();
    assert_eq!(verified.keyset_match(), KeysetMatch::Exact);
    assert_eq!(verified.keyset().digest(), env.gw.keyset_digest());
    assert_eq!(env.gw.attestations_served(), reports + 1);
    // Learnt, not published: the current key is still the one established first.
    assert_eq!(keys.current().unwrap().digest(), first.digest());
    // The earlier receipt still verifies against the keyset it names.
    rc.fetch_and_verify(&before, None, &keys, &policy).await.unwrap();

    // A handle no provider serves cannot attest: the same-key rule decides, and says so.
    let fixed = KeyHandle::fixed((*first).clone());
    let verified = rc.fetch_and_verify(&after, None, &fixed, &policy).await.unwrap();
    assert_eq!(verified.keyset_match(), KeysetMatch::SameKey);
    assert_eq!(verified.keyset().digest(), first.digest());
    assert_eq!(verified.named_keyset_digest(), env.gw.keyset_digest());
    let exact = ReceiptPolicy::new().require_exact_keyset(true);
    assert_eq!(reason(rc.fetch_and_verify(&after, None, &fixed, &exact).await), F::UnknownKeyset);
    // Keysets given as a list match exactly only.
    let list = vec![first.clone()];
    assert_eq!(reason(rc.fetch_and_verify(&after, None, &list, &policy).await), F::UnknownKeyset);
}

#[tokio::test]
async fn plaintext_exchange_receipt_names_the_raw_wire_bytes() {
    let env = Env::start(Suite::X25519).await;
    // Sent without the layer: the gateway serves plaintext too, and hashes the raw bytes.
    let body = br#"{ "model": "demo-model",  "messages": [{"role": "user", "content": "plain \u00e9"}] }"#;
    let req = Request::post(env.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let res = tower::ServiceExt::oneshot(hyper(), req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-e2ee-applied"], "false");
    let receipt_id = res.headers()["x-receipt-id"].to_str().unwrap().to_owned();
    let answer = res.into_body().collect().await.unwrap().to_bytes();

    let record = ExchangeRecord::plaintext("/v1/chat/completions", "demo-model", body, &receipt_id, &answer).unwrap();
    let rc = receipts(&env);
    let verified = rc.fetch_and_verify(&record, None, &env.keys, &ReceiptPolicy::new()).await.unwrap();
    assert_eq!(verified.receipt().receipt_id(), receipt_id);

    // The same request re-serialised is not what was sent: the request hash must not match.
    let reserialised = serde_json::to_vec(&serde_json::from_slice::<Value>(body).unwrap()).unwrap();
    let wrong =
        ExchangeRecord::plaintext("/v1/chat/completions", "demo-model", &reserialised, &receipt_id, &answer).unwrap();
    assert_eq!(reason(rc.fetch_and_verify(&wrong, None, &env.keys, &ReceiptPolicy::new()).await), F::RequestHash);
    // Nor is a response with one byte changed.
    let mut tampered = answer.to_vec();
    tampered[0] = b' ';
    let wrong = ExchangeRecord::plaintext("/v1/chat/completions", "demo-model", body, &receipt_id, &tampered).unwrap();
    assert_eq!(reason(rc.fetch_and_verify(&wrong, None, &env.keys, &ReceiptPolicy::new()).await), F::ResponseHash);
    assert_eq!(
        ExchangeRecord::plaintext("/v1/messages", "m", body, &receipt_id, &answer).unwrap_err().kind(),
        ErrorKind::Config
    );
}

#[tokio::test]
async fn verify_before_release_hands_out_only_verified_answers() {
    use tower_aci::receipt::{VerifiedReceipt, VerifyBeforeReleaseLayer};
    let env = Env::start(Suite::Secp256k1).await;
    let svc = ServiceBuilder::new()
        .layer(VerifyBeforeReleaseLayer::new(receipts(&env), env.keys.clone(), ReceiptPolicy::new()))
        .layer(env.layer())
        .service(layer_client());

    // Buffered, with a bearer token: the receipt is owned, and the layer fetches it with the
    // request's own token before releasing the body.
    let req = with_bearer(&env.url("/v1/chat/completions"), &chat(false), "sk-release");
    let res = tower::ServiceExt::oneshot(svc.clone(), req).await.unwrap();
    let verified = res.extensions().get::<VerifiedReceipt>().expect("verified before release").clone();
    let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
    assert_eq!(Some(verified.receipt().receipt_id()), record.receipt_id());
    let body: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], format!("You said: {PROMPT}"));

    // A tampered answer: nothing is released, the call fails.
    env.gw.set_fault(Some(Fault::TamperEvent { index: 0 }));
    let err = tower::ServiceExt::oneshot(svc.clone(), post(&env.url("/v1/chat/completions"), &chat(false)))
        .await
        .expect_err("not released");
    assert_eq!(kind(&err), Some(ErrorKind::Decrypt));
    env.gw.set_fault(None);

    // Streams flow as they arrive; [DONE] and the end wait for the receipt (stream_release.rs).
    let res = tower::ServiceExt::oneshot(svc, post(&env.url("/v1/chat/completions"), &chat(true))).await.unwrap();
    assert!(res.extensions().get::<VerifiedReceipt>().is_none());
    let verification = res.extensions().get::<tower_aci::receipt::StreamVerification>().cloned().unwrap();
    let out = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&out).ends_with("data: [DONE]\n\n"));
    assert!(verification.receipt().is_some());
}

/// The gateway's error answers carry no answer to verify: they pass verify-before-release with
/// their `GatewayError`, so a retry policy above it can still act on them (a key rotation is
/// followed through both layers).
#[tokio::test]
async fn error_answers_pass_verify_before_release_and_a_key_rotation_is_retried_through_it() {
    use tower_aci::attest::KeyProvider;
    use tower_aci::e2ee::KeyMismatchRetry;
    use tower_aci::receipt::VerifyBeforeReleaseLayer;
    let env = Env::start(Suite::Secp256k1).await;
    let svc = ServiceBuilder::new()
        .layer(VerifyBeforeReleaseLayer::new(receipts(&env), env.keys.clone(), ReceiptPolicy::new()))
        .layer(env.layer())
        .service(layer_client());
    env.gw.set_fault(Some(Fault::StatusOnce(503)));
    let res = tower::ServiceExt::oneshot(svc, post(&env.url("/v1/chat/completions"), &chat(false))).await.unwrap();
    assert_eq!(res.status(), 503);
    let gw_error = res.extensions().get::<tower_aci::GatewayError>().cloned().expect("the gateway's error document");
    assert_eq!(gw_error.status, 503);
    assert!(res.extensions().get::<tower_aci::receipt::VerifiedReceipt>().is_none());

    // A rotation: KeyMismatchRetry above verify-before-release above the layer.
    let provider = KeyProvider::builder(layer_client())
        .base_url(env.gw.base_url().parse().unwrap())
        .policy(stub_policy(Suite::Secp256k1))
        .min_refresh_interval(Duration::from_millis(1))
        .build()
        .unwrap();
    provider.establish().await.unwrap();
    let (keys, _refresher) = provider.spawn().unwrap();
    let svc = ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(KeyMismatchRetry::new(keys.clone())))
        .layer(VerifyBeforeReleaseLayer::new(receipts(&env), keys.clone(), ReceiptPolicy::new()))
        .layer(tower_aci::E2eeLayer::new(keys.clone()))
        .service(layer_client());
    env.gw.rotate_e2ee_keys();
    let wire = env.gw.wire_log().len();
    let res = tower::ServiceExt::oneshot(svc, post(&env.url("/v1/chat/completions"), &chat(false))).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.extensions().get::<tower_aci::receipt::VerifiedReceipt>().is_some(), "verified before release");
    assert_eq!(env.gw.wire_log().len(), wire + 2, "the mismatched attempt and one re-encrypted re-send");
    let body: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], format!("You said: {PROMPT}"));
}
