//! One stack (issue 25): `Client` owns every default and every refusal. Its errors carry the
//! gateway's status and `Retry-After`, and it never follows a redirect or sends its API key to
//! the attestation endpoint. (That `aci-proxy`, a `Client` behind the OpenAI API, agrees with it
//! when driven from the same settings is tested in `crates/aci-proxy/tests/all/stack.rs`.)

use std::sync::atomic::Ordering;
use std::time::Duration;

use aci_test_gateway::{GatewayConfig, TestGateway};
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::json;
use tower::ServiceExt;
use tower_aci::client::REDIRECT_REFUSED;
use tower_aci::protocol::Suite;
use tower_aci::{Client, ErrorKind};

use crate::doubles::{Intercept, hostile_front, thief};
use crate::support::stub_policy;

const CHAT: &str = "/v1/chat/completions";

fn chat(text: &str) -> String {
    json!({"model": "demo-model", "messages": [{"role": "user", "content": text}]}).to_string()
}

/// The client's builder for the local gateway at `gateway` (stub quote accepted).
fn client_builder(gateway: &str) -> tower_aci::client::ClientBuilder {
    Client::builder(gateway).policy(stub_policy(Suite::Secp256k1)).tls_pin_only()
}

/// An API key that is not a valid header value (a line break from a badly written environment
/// file) fails the build, naming the problem: never an empty `Authorization` (aci-proxy's
/// tests check its start the same way).
#[tokio::test]
async fn an_api_key_that_is_no_header_value_fails_the_client() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let bad = "sk-line\nbreak";
    let e = gw.client_builder().api_key(bad).build().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("not a valid header value"), "{e}");
    assert!(!e.to_string().contains("sk-line"), "the key is not shown: {e}");
}

// ---- the client's errors ----------------------------------------------------------------

#[tokio::test]
async fn a_gateway_error_carries_its_status_and_retry_after() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (front, url) = hostile_front(&gw).await;
    let client = client_builder(&url).build().await.unwrap();
    let error = json!({"error": {"message": "slow down", "type": "rate_limit_error"}}).to_string();
    let answer = |status, retry_after: &str, body: &str| {
        Intercept::Answer(
            status,
            vec![("content-type", "application/json".to_owned()), ("retry-after", retry_after.to_owned())],
            body.to_owned(),
        )
    };
    // Seconds.
    *front.post.lock().unwrap() = answer(429, "7", &error);
    let e = client.post(CHAT, chat("x")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Gateway, "{e}");
    assert_eq!(e.gateway_error_type(), Some("rate_limit_error"));
    assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    // An HTTP-date a minute ahead.
    let in_a_minute = httpdate(std::time::SystemTime::now() + Duration::from_secs(61));
    *front.post.lock().unwrap() = answer(503, &in_a_minute, &error);
    let e = client.post(CHAT, chat("x")).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    let wait = e.retry_after().expect("the date is read");
    assert!((Duration::from_secs(55)..=Duration::from_secs(61)).contains(&wait), "{wait:?}");
    // Absurd waits are bounded; a body that is no error document still names the status.
    *front.post.lock().unwrap() = answer(503, "999999999", "<html>busy</html>");
    let e = client.post(CHAT, chat("x")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert_eq!(e.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(e.retry_after(), Some(tower_aci::error::MAX_RETRY_AFTER));
    // No header: no wait.
    *front.post.lock().unwrap() = Intercept::Answer(400, vec![], error.clone());
    let e = client.post(CHAT, chat("x")).await.unwrap_err();
    assert_eq!((e.status(), e.retry_after()), (Some(StatusCode::BAD_REQUEST), None));
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` for `t`.
fn httpdate(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        months[month as usize - 1],
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// The client never follows a redirect and never hands one out: the prompt does not reach the
/// `Location`, in `post` or through `service()`.
#[tokio::test]
async fn the_client_refuses_a_redirect_and_the_prompt_goes_nowhere_else() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (front, url) = hostile_front(&gw).await;
    let (hits, thief_url) = thief().await;
    let client = client_builder(&url).build().await.unwrap();
    for status in [307, 308, 302, 301] {
        *front.post.lock().unwrap() =
            Intercept::Answer(status, vec![("location", format!("{thief_url}{CHAT}"))], String::new());
        let e = client.post(CHAT, chat("my private prompt")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Gateway, "{status}: {e}");
        assert_eq!(e.gateway_error_type(), Some(REDIRECT_REFUSED), "{status}: {e}");
        assert_eq!(e.status().map(|s| s.as_u16()), Some(status));
        assert!(e.to_string().contains(&thief_url), "the message names the Location: {e}");
        // The tower service hands out no 3xx answer either.
        let req = Request::post(client.url(CHAT).unwrap())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(chat("my private prompt"))))
            .unwrap();
        let e = client.service().oneshot(req).await.unwrap_err();
        let ours = tower_aci::Error::find(e.as_ref()).expect("a tower-aci error");
        assert_eq!(ours.gateway_error_type(), Some(REDIRECT_REFUSED), "{status}: {e}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the second server was reached");
}

/// The API key goes to the inference routes, the models and the receipts, never to the
/// attestation endpoint (nor a path the gateway could normalise into it), whatever the caller
/// sends through `service()`.
#[tokio::test]
async fn the_client_sends_its_api_key_only_where_it_belongs() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (front, url) = hostile_front(&gw).await;
    let client = client_builder(&url).api_key("sk-client-secret").build().await.unwrap();
    front.seen.lock().unwrap().clear();
    let get = |path: &str| {
        Request::builder().method(Method::GET).uri(client.url(path).unwrap()).body(Full::new(Bytes::new())).unwrap()
    };
    let nonce = "00".repeat(32);
    for path in [
        format!("/v1/aci/attestation?nonce={nonce}"),
        "/v1/models/%2e%2e/aci/attestation".to_owned(),
        "/v1/models".to_owned(),
    ] {
        let _ = client.service().oneshot(get(&path)).await.unwrap();
    }
    client.post(CHAT, chat("keyed")).await.unwrap();
    let seen = front.seen.lock().unwrap().clone();
    let keyed = |p: &str| {
        seen.iter()
            .filter(|(_, path, _)| path == p)
            .map(|(_, _, auth)| auth.as_deref() == Some("Bearer sk-client-secret"))
            .collect::<Vec<_>>()
    };
    assert_eq!(keyed("/v1/aci/attestation"), [false], "{seen:?}");
    assert_eq!(keyed("/v1/models/%2e%2e/aci/attestation"), [false], "{seen:?}");
    assert_eq!(keyed("/v1/models"), [true], "{seen:?}");
    assert_eq!(keyed(CHAT), [true], "{seen:?}");
    // A key the caller sets itself is the caller's business: it is not replaced.
    let mut own = get("/v1/models");
    own.headers_mut().insert(AUTHORIZATION, "Bearer sk-own".parse().unwrap());
    let _ = client.service().oneshot(own).await.unwrap();
    let seen = front.seen.lock().unwrap().clone();
    let last = seen.iter().rev().find(|(_, path, _)| path == "/v1/models").unwrap();
    assert_eq!(last.2.as_deref(), Some("Bearer sk-own"));
}
