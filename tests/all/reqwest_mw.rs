//! The reqwest-middleware adapter over loopback against the local gateway.
#![cfg(feature = "reqwest-middleware")]

use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use serde_json::{Value, json};
use tower_aci::ErrorKind;
use tower_aci::gateway::Fault;
use tower_aci::middleware::E2eeMiddleware;
use tower_aci::protocol::suite::Suite;
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
