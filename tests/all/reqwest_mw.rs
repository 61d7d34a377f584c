//! The reqwest-middleware adapter over loopback against the local gateway.
#![cfg(feature = "reqwest-middleware")]

use aci_test_gateway::Fault;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use serde_json::{Value, json};
use tower_aci::ErrorKind;
use tower_aci::middleware::E2eeMiddleware;
use tower_aci::protocol::Suite;
use tower_aci::receipt::ExchangeRecord;

use crate::support::{Env, sse_text};

fn client(env: &Env) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(RetryTransientMiddleware::new_with_policy(ExponentialBackoff::builder().build_with_max_retries(2)))
        .with(E2eeMiddleware::new(env.keys.clone()))
        .build()
}

fn middleware_kind(e: &reqwest_middleware::Error) -> Option<ErrorKind> {
    let reqwest_middleware::Error::Middleware(a) = e else { return None };
    if let Some(ours) = a.downcast_ref::<tower_aci::Error>() {
        return Some(ours.kind());
    }
    // reqwest-retry wraps middleware errors in a `transparent` RetryError, which hides them from
    // `source()` chains: unwrap it explicitly.
    match a.downcast_ref::<reqwest_retry::RetryError>()? {
        reqwest_retry::RetryError::Error(inner) | reqwest_retry::RetryError::WithRetries { err: inner, .. } => {
            middleware_kind(inner)
        }
    }
}

#[tokio::test]
async fn buffered_and_streamed_through_reqwest_both_suites() {
    for suite in Suite::ALL {
        let env = Env::start(suite).await;
        let c = client(&env);
        let url = env.url("/v1/chat/completions");
        let res = c
            .post(&url)
            .body(json!({"model": "m", "messages": [{"role": "user", "content": "quiet zebra"}]}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.url().as_str(), url, "response URL preserved");
        let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
        assert_eq!(record.suite(), Some(suite));
        let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "You said: quiet zebra");
        assert!(record.response_body_sha256().is_some());

        let res = c
            .post(&url)
            .body(
                json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "stream zebra"}]})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        let body = res.bytes().await.unwrap();
        assert_eq!(sse_text(&body, "content"), "You said: stream zebra");
        let wire = env.gw.wire_log();
        assert!(wire.iter().all(|b| !String::from_utf8_lossy(b).contains("zebra")));
    }
}

#[tokio::test]
async fn retry_before_e2ee_re_encrypts_and_errors_are_typed() {
    let env = Env::start(Suite::X25519).await;
    env.gw.set_fault(Some(Fault::StatusOnce(503)));
    let c = client(&env);
    let res = c
        .post(env.url("/v1/chat/completions"))
        .body(json!({"model": "m", "messages": [{"role": "user", "content": "retry me"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(env.gw.wire_log().len(), 2, "two attempts, two encryptions");

    let err = c
        .post(env.url("/v1/responses"))
        .body(json!({"model": "m", "input": "x"}).to_string())
        .send()
        .await
        .unwrap_err();
    assert_eq!(middleware_kind(&err), Some(ErrorKind::UnsupportedEndpoint));

    env.gw.set_fault(Some(Fault::TamperEvent { index: 0 }));
    let res = c
        .post(env.url("/v1/chat/completions"))
        .body(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}).to_string())
        .send()
        .await
        .unwrap();
    let err = res.bytes().await.unwrap_err();
    let kind = tower_aci::Error::find(&err).map(tower_aci::Error::kind);
    assert_eq!(kind, Some(ErrorKind::Decrypt));
}

/// With `retry_on_key_mismatch`, a request sent across a key rotation is answered
/// `e2ee_model_key_mismatch`, the refresher re-attests, and the middleware re-sends it once,
/// encrypted to the new key; without it the 400 comes back.
#[tokio::test]
async fn a_key_rotation_is_followed_with_one_re_encrypted_re_send() {
    use std::time::Duration;
    use tower_aci::attest::KeyProvider;

    let gw = aci_test_gateway::TestGateway::start(aci_test_gateway::GatewayConfig::new()).await.unwrap();
    let provider = KeyProvider::builder(crate::support::hyper())
        .base_url(gw.base_url().parse().unwrap())
        .policy(crate::support::stub_policy(Suite::Secp256k1))
        .min_refresh_interval(Duration::from_millis(1))
        .build()
        .unwrap();
    provider.establish().await.unwrap();
    let (keys, _refresher) = provider.spawn().unwrap();
    let url = format!("{}/v1/chat/completions", gw.base_url());
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "across a rotation"}]}).to_string();

    let plain = ClientBuilder::new(reqwest::Client::new()).with(E2eeMiddleware::new(keys.clone())).build();
    gw.rotate_e2ee_keys();
    let res = plain.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(res.status(), 400, "no re-send by default");
    let gw_error = res.extensions().get::<tower_aci::GatewayError>().cloned().unwrap();
    assert_eq!(gw_error.error_type.as_deref(), Some("e2ee_model_key_mismatch"));

    // Let the refresher catch up with the first rotation, then rotate again.
    let rotated = gw.keyset_digest();
    for _ in 0..200 {
        if keys.current().is_ok_and(|k| k.digest() == rotated) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.rotate_e2ee_keys();
    let retrying = ClientBuilder::new(reqwest::Client::new())
        .with(E2eeMiddleware::new(keys.clone()).retry_on_key_mismatch(Some(Duration::from_secs(10))))
        .build();
    let wire_before = gw.wire_log().len();
    let res = retrying.post(&url).body(body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
    assert_eq!(record.attested_keyset_digest(), gw.keyset_digest());
    let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "You said: across a rotation");
    let wire = gw.wire_log();
    assert_eq!(wire.len(), wire_before + 2, "the mismatched attempt and one re-send");
    assert_ne!(wire[wire.len() - 1], wire[wire.len() - 2], "re-encrypted, not replayed");
}

#[tokio::test]
async fn plain_http_off_loopback_sends_nothing() {
    let env = Env::start(Suite::X25519).await;
    let c = client(&env);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    // 192.0.2.0/24 is TEST-NET-1, where nothing answers: the refusal has to come first.
    for url in ["http://192.0.2.1:9/v1/chat/completions", "http://gateway.example/v1/chat/completions"] {
        let sent = tokio::time::timeout(std::time::Duration::from_secs(5), c.post(url).body(body.to_string()).send());
        let e = sent.await.expect("the request went out to the network").unwrap_err();
        assert_eq!(middleware_kind(&e), Some(ErrorKind::Config), "{url}: {e:?}");
    }
    // Loopback is fine.
    let res = c.post(env.url("/v1/chat/completions")).body(body.to_string()).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

/// The middleware refuses a body sent to an E2EE endpoint in any method but `POST` before it
/// goes out (else it would travel in plaintext); the gateway sees nothing.
#[tokio::test]
async fn non_post_requests_with_a_body_to_e2ee_endpoints_send_nothing() {
    let env = Env::start(Suite::X25519).await;
    let c = client(&env);
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "purple-zebra"}]}).to_string();
    let before = env.gw.requests_total();
    let methods = [
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::from_bytes(b"post").unwrap(),
        reqwest::Method::DELETE,
    ];
    for method in methods {
        for path in ["/v1/chat/completions", "/v1/embeddings", "/V1/COMPLETIONS"] {
            let sent = c.request(method.clone(), env.url(path)).body(body.clone()).send().await;
            let e = match sent {
                Ok(res) => {
                    panic!("attack succeeded: {method} {path} was sent in plaintext (answered {})", res.status())
                }
                Err(e) => e,
            };
            assert_eq!(middleware_kind(&e), Some(ErrorKind::UnsupportedEndpoint), "{method} {path}: {e:?}");
        }
    }
    // A streaming body (unknown size), with no retry middleware in front (it refuses those itself).
    let bare = ClientBuilder::new(reqwest::Client::new()).with(E2eeMiddleware::new(env.keys.clone())).build();
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(body.clone()))]);
    let sent = bare.put(env.url("/v1/chat/completions")).body(reqwest::Body::wrap_stream(stream)).send().await;
    let e = sent.unwrap_err();
    assert_eq!(middleware_kind(&e), Some(ErrorKind::UnsupportedEndpoint), "{e:?}");
    assert_eq!(env.gw.requests_total(), before, "the gateway saw none of them");
    // Without a body, a GET passes through and the gateway answers it.
    let res = c.get(env.url("/v1/chat/completions")).send().await.unwrap();
    assert_eq!(res.status(), 405);
}
