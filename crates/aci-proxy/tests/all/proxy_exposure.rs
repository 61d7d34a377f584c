//! `aci-proxy` must not expose the person running it (issue 18 item 5): a gateway's redirect
//! never reaches the client, the gateway's headers are allow-listed, a rebound DNS name or a
//! foreign browser origin is refused, a network-reachable proxy needs a client key, the API key
//! never goes to the attestation passthrough, and `--pccs` cannot unpin the gateway.
//!
//! The hostile gateway is a tiny axum server on loopback in front of the local test gateway: it
//! forwards what a test does not intercept (so the proxy still attests the real gateway) and
//! answers, or decorates, the rest.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aci_proxy::{Proxy, ProxyConfig, ReceiptMode};
use aci_test_gateway::{GatewayConfig, TestGateway};
use http::header::{AUTHORIZATION, HOST, LOCATION, ORIGIN, SET_COOKIE};
use http::{HeaderMap, Method};
use serde_json::{Value, json};
use tower_aci::protocol::Suite;

use crate::doubles::{Intercept, hostile_front, serve_router, thief};
use crate::support::stub_policy;

/// A proxy to `gateway` served on an ephemeral loopback port.
async fn proxy(gateway: String, tweak: impl FnOnce(&mut ProxyConfig)) -> (Proxy, SocketAddr) {
    let mut config = ProxyConfig::default()
        .gateway(gateway)
        .with_policy(stub_policy(Suite::Secp256k1))
        .receipts(ReceiptMode::Off)
        .api_key_env("TOWER_ACI_TEST_NO_SUCH_VARIABLE");
    tweak(&mut config);
    let proxy = Proxy::start(config).await.unwrap();
    let addr = serve_router(proxy.router()).await;
    (proxy, addr)
}

fn chat(text: &str) -> String {
    json!({"model": "demo-model", "messages": [{"role": "user", "content": text}]}).to_string()
}

async fn error_type(res: reqwest::Response) -> Value {
    let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    v["error"]["type"].clone()
}

/// The answer's text: the message of a buffered answer, the deltas of a stream.
fn answer_text(body: &str, stream: bool) -> String {
    if !stream {
        let v: Value = serde_json::from_str(body).unwrap();
        return v["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    }
    let events = body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).filter(|d| *d != "[DONE]");
    events
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

fn header_names(h: &HeaderMap) -> Vec<String> {
    h.keys().map(|n| n.as_str().to_owned()).collect()
}

/// The end-to-end attack: the gateway 307s the POST to a thief; a client that follows redirects
/// (reqwest's policy, as the Python SDK's) would re-POST the plaintext prompt there.
#[tokio::test]
async fn a_gateway_that_answers_post_with_307_reaches_no_second_server() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (front, url) = hostile_front(&gw).await;
    let (hits, thief_url) = thief().await;
    let (_proxy, addr) = proxy(url, |_| {}).await;
    let redirect = |status| {
        Intercept::Answer(
            status,
            vec![("location", format!("{thief_url}/v1/chat/completions")), ("set-cookie", "track=1".to_owned())],
            String::new(),
        )
    };
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::limited(10)).build().unwrap();
    for status in [307, 308, 302] {
        *front.post.lock().unwrap() = redirect(status);
        for stream in [false, true] {
            let body = json!({"model": "demo-model", "stream": stream,
                "messages": [{"role": "user", "content": "my private prompt"}]});
            let res = client
                .post(format!("http://{addr}/v1/chat/completions"))
                .header("content-type", "application/json")
                .header(AUTHORIZATION, "Bearer sk-user")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 502, "{status} stream={stream}");
            assert!(res.headers().get(LOCATION).is_none() && res.headers().get(SET_COOKIE).is_none());
            assert_eq!(error_type(res).await, "gateway_redirect_refused", "{status} stream={stream}");
        }
    }
    // A redirected passthrough GET is refused the same way.
    *front.models.lock().unwrap() = redirect(302);
    let res = client.get(format!("http://{addr}/v1/models")).send().await.unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(error_type(res).await, "gateway_redirect_refused");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the second server was reached");
}

#[tokio::test]
async fn a_gateway_error_answer_relays_only_allow_listed_headers() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (front, url) = hostile_front(&gw).await;
    let (_proxy, addr) = proxy(url, |_| {}).await;
    let error = json!({"error": {"message": "slow down", "type": "rate_limit_exceeded", "code": null, "param": null}});
    *front.post.lock().unwrap() = Intercept::Answer(
        429,
        vec![
            ("content-type", "application/json".to_owned()),
            ("retry-after", "7".to_owned()),
            ("x-ratelimit-remaining-requests", "0".to_owned()),
            ("x-request-id", "req-42".to_owned()),
            ("set-cookie", "session=stolen".to_owned()),
            ("location", "http://thief.example/".to_owned()),
            ("x-internal-debug", "secret".to_owned()),
        ],
        error.to_string(),
    );
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .body(chat("rate limited"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let h = res.headers().clone();
    assert_eq!(h["retry-after"], "7");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    assert_eq!(h["x-request-id"], "req-42");
    assert_eq!(h["content-type"], "application/json");
    for never in ["set-cookie", "location", "x-internal-debug"] {
        assert!(!h.contains_key(never), "{never} relayed: {:?}", header_names(&h));
    }
    assert_eq!(error_type(res).await, "rate_limit_exceeded");
}

#[tokio::test]
async fn answers_and_passthroughs_relay_no_cookie() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (front, url) = hostile_front(&gw).await;
    let (_proxy, addr) = proxy(url, |_| {}).await;
    let extra = vec![("set-cookie", "session=stolen".to_owned()), ("x-internal-debug", "secret".to_owned())];
    *front.post.lock().unwrap() = Intercept::Decorate(extra.clone());
    *front.models.lock().unwrap() = Intercept::Decorate(extra);
    let http = reqwest::Client::new();
    for stream in [false, true] {
        let body = json!({"model": "demo-model", "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
        let res = http.post(format!("http://{addr}/v1/chat/completions")).body(body.to_string()).send().await.unwrap();
        assert_eq!(res.status(), 200, "stream={stream}");
        let h = res.headers().clone();
        assert!(!h.contains_key("set-cookie") && !h.contains_key("x-internal-debug"), "{:?}", header_names(&h));
        assert!(h.contains_key("x-receipt-id"), "the receipt id is relayed: {:?}", header_names(&h));
        assert_eq!(answer_text(&res.text().await.unwrap(), stream), "You said: hi", "the answer decrypted");
    }
    let res = http.get(format!("http://{addr}/v1/models")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(!res.headers().contains_key("set-cookie"), "{:?}", header_names(res.headers()));
}

#[tokio::test]
async fn the_api_key_never_goes_to_the_attestation_passthrough() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (front, url) = hostile_front(&gw).await;
    // The client's own key (no --api-key-env), then the proxy's key from the environment
    // (CARGO_PKG_NAME: a variable cargo sets for every test run, so no test mutates the env).
    let package = format!("Bearer {}", env!("CARGO_PKG_NAME"));
    for (env, client_auth, expected, source) in [
        ("TOWER_ACI_TEST_NO_SUCH_VARIABLE", Some("Bearer sk-user"), "Bearer sk-user", "client"),
        ("CARGO_PKG_NAME", None, package.as_str(), "api-key"),
    ] {
        let (proxy, addr) = proxy(url.clone(), |c| c.api_key_env = env.to_owned()).await;
        // What the start said (and the status page says) is what happens below.
        assert_eq!(proxy.status()["authorization"]["source"], source);
        front.seen.lock().unwrap().clear();
        let http = reqwest::Client::new();
        for path in ["/v1/aci/attestation?nonce=00", "/v1/attestation/report", "/v1/models", "/v1/aci/receipts/rcpt-x"]
        {
            let mut req = http.get(format!("http://{addr}{path}"));
            if let Some(a) = client_auth {
                req = req.header(AUTHORIZATION, a);
            }
            req.send().await.unwrap();
        }
        let mut req = http.post(format!("http://{addr}/v1/chat/completions")).body(chat("key check"));
        if let Some(a) = client_auth {
            req = req.header(AUTHORIZATION, a);
        }
        assert_eq!(req.send().await.unwrap().status(), 200);
        let seen = front.seen.lock().unwrap().clone();
        let auths =
            |p: &str| seen.iter().filter(|(_, path, _)| path == p).map(|(_, _, a)| a.clone()).collect::<Vec<_>>();
        for p in ["/v1/aci/attestation", "/v1/attestation/report"] {
            let a = auths(p);
            assert!(!a.is_empty() && a.iter().all(Option::is_none), "{env}: the key went to {p}: {seen:?}");
        }
        // The routes that need the key still get it (the test is not vacuous).
        for p in ["/v1/models", "/v1/aci/receipts/rcpt-x", "/v1/chat/completions"] {
            assert_eq!(auths(p), [Some(expected.to_owned())], "{env} {p}: {seen:?}");
        }
    }
}

/// With a client key, the client's `Authorization` is the client key: it is never forwarded;
/// the gateway gets the API key of `--api-key-env`, or none.
#[tokio::test]
async fn the_client_key_is_never_forwarded_to_the_gateway() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (front, url) = hostile_front(&gw).await;
    // Variables cargo sets for every test run (no test mutates the environment): the client key
    // is this crate's description (over 16 characters wherever the checkout lives).
    let client_key = std::env::var("CARGO_PKG_DESCRIPTION").unwrap();
    let package = format!("Bearer {}", env!("CARGO_PKG_NAME"));
    for (api_key_env, expected) in
        [("CARGO_PKG_NAME", Some(package.as_str())), ("TOWER_ACI_TEST_NO_SUCH_VARIABLE", None)]
    {
        let (_proxy, addr) = proxy(url.clone(), |c| {
            c.client_key_env = Some("CARGO_PKG_DESCRIPTION".to_owned());
            c.api_key_env = api_key_env.to_owned();
        })
        .await;
        front.seen.lock().unwrap().clear();
        let http = reqwest::Client::new();
        let res = http.post(format!("http://{addr}/v1/chat/completions")).body(chat("anonymous")).send().await.unwrap();
        assert_eq!(res.status(), 401);
        for path in ["/v1/chat/completions", "/v1/models"] {
            let req = if path == "/v1/models" {
                http.get(format!("http://{addr}{path}"))
            } else {
                http.post(format!("http://{addr}{path}")).body(chat("with the client key"))
            };
            assert_eq!(req.bearer_auth(&client_key).send().await.unwrap().status(), 200, "{path}");
        }
        let seen = front.seen.lock().unwrap().clone();
        for p in ["/v1/chat/completions", "/v1/models"] {
            let auths: Vec<_> = seen.iter().filter(|(_, path, _)| path == p).map(|(_, _, a)| a.clone()).collect();
            assert_eq!(auths, [expected.map(str::to_owned)], "{api_key_env} {p}: {seen:?}");
        }
    }
}

#[tokio::test]
async fn a_rebound_host_or_a_foreign_origin_is_refused_and_nothing_is_sent() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let allowed = "http://app.localhost:3000";
    let (proxy, addr) = proxy(gw.base_url(), |c| c.allow_origins = vec![allowed.to_owned()]).await;
    let http = reqwest::Client::new();
    let seen = gw.requests_seen();
    let post = |host: &str, origin: Option<&str>| {
        let mut req = http
            .post(format!("http://{addr}/v1/chat/completions"))
            .header(HOST, host)
            .header(AUTHORIZATION, "Bearer sk-user")
            .body(chat("rebound"));
        if let Some(o) = origin {
            req = req.header(ORIGIN, o);
        }
        req.send()
    };
    let port = addr.port();
    for host in [
        format!("attacker.example:{port}"),
        "attacker.example".to_owned(),
        format!("localhost.attacker.example:{port}"),
    ] {
        let res = post(&host, None).await.unwrap();
        assert_eq!(res.status(), 421, "{host}");
        assert_eq!(error_type(res).await, "host_not_allowed", "{host}");
    }
    for origin in ["https://attacker.example", "http://app.localhost:3001", "null"] {
        let res = post(&format!("127.0.0.1:{port}"), Some(origin)).await.unwrap();
        assert_eq!(res.status(), 403, "{origin}");
        assert_eq!(error_type(res).await, "origin_not_allowed", "{origin}");
    }
    // The status page is guarded too.
    let res = http.get(format!("http://{addr}/aci/status")).header(HOST, "attacker.example").send().await.unwrap();
    assert_eq!(res.status(), 421);
    assert_eq!(gw.requests_seen(), seen, "the gateway saw none of them");
    assert_eq!(proxy.status()["counts"]["exchanges"], 0);

    // Loopback names and the allowed origin are served (with CORS for the origin).
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), "[::1]".to_owned()] {
        assert_eq!(post(&host, None).await.unwrap().status(), 200, "{host}");
    }
    let res = post("localhost", Some(allowed)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["access-control-allow-origin"], allowed);
    let preflight = http
        .request(Method::OPTIONS, format!("http://{addr}/v1/chat/completions"))
        .header(ORIGIN, allowed)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], allowed);
}

#[tokio::test]
async fn a_pccs_on_the_gateway_host_is_refused_at_start() {
    use aci_test_gateway::GatewayTls;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let gw = TestGateway::start(GatewayConfig::new().tls(GatewayTls::new(vec![cert.cert.der().clone()], key).unwrap()))
        .await
        .unwrap();
    // Another port on the same host is the same host: TLS unpins by host name.
    for pccs in ["https://127.0.0.1:9/", "https://127.0.0.1./sgx/certification/v4"] {
        let config = ProxyConfig::default()
            .gateway(gw.base_url())
            .with_policy(stub_policy(Suite::Secp256k1))
            .tls_pin_only(true)
            .pccs(pccs.to_owned());
        let e = Proxy::start(config).await.unwrap_err();
        assert_eq!(e.kind(), tower_aci::ErrorKind::Config, "{pccs}: {e}");
        assert!(e.to_string().contains("names the gateway's own host"), "{e}");
    }
}

/// The real binary: a free port on all interfaces.
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port()
}

fn aci_proxy() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_aci-proxy"));
    cmd.env_remove("ACI_API_KEY").env("RUST_LOG", "warn").kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn the_binary_refuses_to_listen_beyond_loopback_without_a_client_key() {
    let port = free_port();
    let mut child = aci_proxy()
        .args(["--local-test-gateway", "--listen", &format!("0.0.0.0:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let Ok(status) = tokio::time::timeout(Duration::from_secs(20), child.wait()).await else {
        child.kill().await.unwrap();
        panic!("aci-proxy started on 0.0.0.0 without a client key");
    };
    assert!(!status.unwrap().success());
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).await.unwrap();
    assert!(stderr.contains("--client-key-env"), "{stderr}");
}

#[tokio::test]
async fn the_binary_on_a_non_loopback_address_serves_only_clients_with_the_key() {
    let port = free_port();
    let key = "ck-0123456789abcdef-client";
    let _child = aci_proxy()
        .args([
            "--local-test-gateway",
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--client-key-env",
            "TEST_ACI_CLIENT_KEY",
        ])
        .env("TEST_ACI_CLIENT_KEY", key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let status = format!("http://127.0.0.1:{port}/aci/status");
    let mut up = false;
    for _ in 0..400 {
        if http.get(&status).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "aci-proxy did not start");
    let chat_url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    for auth in [None, Some("Bearer wrong-key-0123456789"), Some("Bearer ck-0123456789abcdef-clien")] {
        let mut req = http.post(&chat_url).body(chat("no key"));
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "{auth:?}");
        assert_eq!(error_type(res).await, "invalid_client_key");
        assert_eq!(http.get(&status).send().await.unwrap().status(), 401);
    }
    let res = http.post(&chat_url).bearer_auth(key).body(chat("with the key")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "You said: with the key");
}

/// The operator's routes of the main listener.
const PROBES: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

/// A DNS-rebinding page (`Host: evil.example`) or a cross-site page (`Origin`) reads no probe
/// and no metric (issue 24 item 6).
#[tokio::test]
async fn probes_and_metrics_refuse_a_rebound_host_and_a_foreign_origin() {
    aci_proxy::install_metrics_recorder().unwrap(); // the proxy serves /metrics from it
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (_proxy, addr) = proxy(gw.base_url(), |_| {}).await;
    let http = reqwest::Client::new();
    // One exchange, so there are metrics to steal.
    let res = http.post(format!("http://{addr}/v1/chat/completions")).body(chat("metered")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let port = addr.port();
    for path in PROBES {
        for host in [format!("evil.example:{port}"), "evil.example".to_owned()] {
            let res = http.get(format!("http://{addr}{path}")).header(HOST, &host).send().await.unwrap();
            assert_eq!(res.status(), 421, "{path} Host {host}");
            let body = res.text().await.unwrap();
            assert!(
                !body.contains("aci_") && !body.contains("\"ready\"") && !body.contains("\"ok\""),
                "{path}: {body}"
            );
            assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["type"], "host_not_allowed");
        }
        let res = http.get(format!("http://{addr}{path}")).header(ORIGIN, "https://evil.example").send().await.unwrap();
        assert_eq!(res.status(), 403, "{path} Origin");
        assert!(res.headers().get("access-control-allow-origin").is_none());
        let body = res.text().await.unwrap();
        assert!(!body.contains("aci_") && !body.contains("\"ready\""), "{path}: {body}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["type"], "origin_not_allowed");
        // The same request from a loopback name and no Origin is served (the test is not vacuous).
        let res =
            http.get(format!("http://{addr}{path}")).header(HOST, format!("localhost:{port}")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    let metrics = http.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("aci_proxy_exchanges_total"), "{metrics}");
}

/// A client key configured on loopback (a shared machine) is enforced on every route of the
/// listener: the API, the status page, the probes and the metrics.
#[tokio::test]
async fn a_client_key_on_loopback_guards_every_route_probes_included() {
    aci_proxy::install_metrics_recorder().unwrap(); // the proxy serves /metrics from it
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    // CARGO_PKG_DESCRIPTION: set by cargo for every test run, over 16 characters.
    let client_key = std::env::var("CARGO_PKG_DESCRIPTION").unwrap();
    let (_proxy, addr) = proxy(gw.base_url(), |c| c.client_key_env = Some("CARGO_PKG_DESCRIPTION".to_owned())).await;
    let http = reqwest::Client::new();
    let seen = gw.requests_seen();
    let get_routes = ["/v1/models", "/aci/status", "/metrics", "/healthz", "/readyz"];
    for auth in [None, Some("Bearer wrong-key-0123456789"), Some("Bearer sk-user")] {
        let mut requests = vec![http.post(format!("http://{addr}/v1/chat/completions")).body(chat("no key"))];
        requests.extend(get_routes.iter().map(|p| http.get(format!("http://{addr}{p}"))));
        for req in requests {
            let req = match auth {
                Some(a) => req.header(AUTHORIZATION, a),
                None => req,
            };
            let res = req.send().await.unwrap();
            let url = res.url().path().to_owned();
            assert_eq!(res.status(), 401, "{url} {auth:?}");
            let body = res.text().await.unwrap();
            assert!(!body.contains("aci_") && !body.contains("\"ready\""), "{url}: {body}");
            assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["type"], "invalid_client_key");
        }
    }
    assert_eq!(gw.requests_seen(), seen, "the gateway saw none of them");
    // With the key, every route answers.
    let res = http.post(format!("http://{addr}/v1/chat/completions")).bearer_auth(&client_key).body(chat("keyed"));
    assert_eq!(res.send().await.unwrap().status(), 200);
    for path in get_routes {
        let res = http.get(format!("http://{addr}{path}")).bearer_auth(&client_key).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
}

/// The operator listener (`--ops-listen`) serves the probes and metrics to a supervisor or
/// Prometheus that holds no client key, and nothing else; a rebound Host or a web page is
/// refused there too.
#[tokio::test]
async fn the_ops_router_serves_probes_without_the_client_key_and_refuses_a_foreign_host_or_origin() {
    aci_proxy::install_metrics_recorder().unwrap(); // the proxy serves /metrics from it
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (proxy, addr) = proxy(gw.base_url(), |c| {
        c.client_key_env = Some("CARGO_PKG_DESCRIPTION".to_owned());
        c.allow_origins = vec!["http://app.localhost:3000".to_owned()];
        c.ops_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let ops = serve_router(proxy.ops_router()).await;
    let http = reqwest::Client::new();
    let client_key = std::env::var("CARGO_PKG_DESCRIPTION").unwrap();
    let res = http.post(format!("http://{addr}/v1/chat/completions")).bearer_auth(&client_key).body(chat("metered"));
    assert_eq!(res.send().await.unwrap().status(), 200);
    // No key on the main listener: refused; on the operator's: served.
    for path in PROBES {
        assert_eq!(http.get(format!("http://{addr}{path}")).send().await.unwrap().status(), 401, "{path}");
        let res = http.get(format!("http://{ops}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let body = res.text().await.unwrap();
        match path {
            "/metrics" => assert!(body.contains("aci_proxy_exchanges_total"), "{body}"),
            "/readyz" => assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["ready"], true),
            _ => assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], "ok"),
        }
    }
    let port = ops.port();
    let seen = gw.requests_seen();
    for path in PROBES {
        for host in [format!("evil.example:{port}"), format!("localhost.evil.example:{port}")] {
            let res = http.get(format!("http://{ops}{path}")).header(HOST, &host).send().await.unwrap();
            assert_eq!(res.status(), 421, "{path} {host}");
            let body = res.text().await.unwrap();
            assert!(!body.contains("aci_") && !body.contains("\"ready\""), "{path}: {body}");
        }
        // Every origin, even one the main listener allows.
        for origin in ["https://evil.example", "http://app.localhost:3000"] {
            let res = http.get(format!("http://{ops}{path}")).header(ORIGIN, origin).send().await.unwrap();
            assert_eq!(res.status(), 403, "{path} {origin}");
            assert!(res.headers().get("access-control-allow-origin").is_none());
            assert_eq!(error_type(res).await, "origin_not_allowed");
        }
    }
    // Only the probes: not the API, not the status page, whatever the key.
    for (method, path) in [
        (Method::POST, "/v1/chat/completions"),
        (Method::GET, "/v1/models"),
        (Method::GET, "/aci/status"),
        (Method::GET, "/"),
    ] {
        let req = http.request(method.clone(), format!("http://{ops}{path}")).bearer_auth(&client_key);
        let res = req.body(chat("via the ops listener")).send().await.unwrap();
        assert_eq!(res.status(), 404, "{method} {path}");
        assert_eq!(error_type(res).await, "not_found");
    }
    assert_eq!(gw.requests_seen(), seen, "the gateway saw nothing through the ops listener");
}

/// `--ops-listen` beyond loopback needs its acknowledgement; `require_client_key` needs a key,
/// on loopback too. Both are refused before anything is attested.
#[tokio::test]
async fn a_non_loopback_ops_listener_or_a_required_but_missing_client_key_is_refused_at_start() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let seen = gw.requests_seen();
    let start = |tweak: fn(&mut ProxyConfig)| {
        let mut config = ProxyConfig::default().gateway(gw.base_url()).with_policy(stub_policy(Suite::Secp256k1));
        tweak(&mut config);
        Proxy::start(config)
    };
    let e = start(|c| c.ops_listen = Some("0.0.0.0:9090".parse().unwrap())).await.unwrap_err();
    assert_eq!(e.kind(), tower_aci::ErrorKind::Config);
    assert!(e.to_string().contains("--ops-listen-beyond-loopback"), "{e}");
    let e = start(|c| c.require_client_key = true).await.unwrap_err();
    assert_eq!(e.kind(), tower_aci::ErrorKind::Config);
    assert!(e.to_string().contains("--require-client-key is set, but no client key is configured"), "{e}");
    let e = start(|c| {
        c.require_client_key = true;
        c.client_key_env = Some("TOWER_ACI_TEST_NO_SUCH_VARIABLE".to_owned());
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("TOWER_ACI_TEST_NO_SUCH_VARIABLE is unset"), "{e}");
    assert_eq!(gw.requests_seen(), seen, "refused before the gateway was asked anything");

    // Acknowledged: it starts, and its guard still refuses a DNS name in Host.
    let proxy = start(|c| {
        c.ops_listen = Some("0.0.0.0:9090".parse().unwrap());
        c.ops_listen_beyond_loopback = true;
    })
    .await
    .unwrap();
    let ops = serve_router(proxy.ops_router()).await;
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("http://{ops}/readyz")).send().await.unwrap().status(), 200);
    let res = http.get(format!("http://{ops}/readyz")).header(HOST, "evil.example:9090").send().await.unwrap();
    assert_eq!(res.status(), 421);
}
