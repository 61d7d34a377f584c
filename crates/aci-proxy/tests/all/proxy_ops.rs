//! What an operator sees of `aci-proxy`, over loopback HTTP: probes, `/metrics`, the request
//! timeout, a graceful stop.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aci_proxy::{Proxy, ReceiptMode};
use aci_test_gateway::{Fault, GatewayConfig, TestGateway};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tower_aci::protocol::Suite;

use crate::proxy::{config_for, serve_config as serve};

async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let res = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = res.status().as_u16();
    let ct = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, ct, res.text().await.unwrap())
}

fn chat(text: &str, stream: bool) -> Value {
    json!({"model": "demo-model", "stream": stream, "messages": [{"role": "user", "content": text}]})
}

async fn post(addr: SocketAddr, body: &Value) -> (u16, String) {
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn healthz_answers_while_serving_and_readyz_turns_503_with_the_reason_once_no_keyset_is_current() {
    // A keyset that expires in 3 s; the gateway keeps serving it, so no refresh can renew it.
    let gw = TestGateway::start(GatewayConfig::new().not_after(now() + 3)).await.unwrap();
    let (_proxy, addr) = serve(config_for(&gw)).await;

    let (status, ct, body) = get(addr, "/healthz").await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], "ok");
    let (status, ct, body) = get(addr, "/readyz").await;
    assert_eq!((status, ct.as_str()), (200, "application/json"), "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["keyset"], gw.keyset_digest());

    let started = Instant::now();
    let body = loop {
        let (status, _, body) = get(addr, "/readyz").await;
        if status == 503 {
            break body;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "still ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("expired") || reason.contains("not_after") || reason.contains("no attested"), "{reason}");
    // Still alive.
    assert_eq!(get(addr, "/healthz").await.0, 200);
}

/// The value of the sample of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            return None;
        }
        labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))).then(|| value.parse().ok())?
    })
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_text_format_from_the_library_and_the_proxy() {
    aci_proxy::install_metrics_recorder().unwrap(); // asked for: Proxy::start installs none
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (proxy, addr) = serve(config_for(&gw).receipts(ReceiptMode::Background)).await;

    assert_eq!(post(addr, &chat("plain", false)).await.0, 200);
    let (status, sse) = post(addr, &chat("streamed", true)).await;
    assert_eq!(status, 200);
    assert!(sse.ends_with("data: [DONE]\n\n"));
    // A tampered event: the stream ends with an error event (counted by kind and outcome).
    gw.set_fault(Some(Fault::TamperEvent { index: 1 }));
    let (_, broken) = post(addr, &chat("tampered", true)).await;
    assert!(broken.contains("e2ee_decryption_failed"), "{broken}");
    gw.set_fault(None);
    for _ in 0..500 {
        if proxy.status()["counts"]["receipts_verified"].as_u64() >= Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (status, ct, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let chat_ep = ("endpoint", "/v1/chat/completions");
    let at_least = |name: &str, labels: &[(&str, &str)], n: f64| {
        let v = sample(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"));
        assert!(v >= n, "{name}{labels:?} = {v} < {n}");
    };
    // The proxy's own.
    at_least("aci_proxy_exchanges_total", &[chat_ep, ("outcome", "ok")], 2.0);
    at_least("aci_proxy_exchanges_total", &[chat_ep, ("outcome", "e2ee_decryption_failed")], 1.0);
    at_least("aci_proxy_request_duration_seconds_count", &[chat_ep], 3.0);
    at_least("aci_proxy_request_duration_seconds_bucket", &[chat_ep, ("le", "+Inf")], 3.0);
    at_least("aci_proxy_time_to_first_event_seconds_count", &[chat_ep], 2.0);
    assert!(sample(&text, "aci_proxy_open_streams", &[]).is_some(), "{text}");
    let expires = sample(&text, "aci_keyset_expires_in_seconds", &[]).unwrap();
    assert!(expires > 0.0 && expires <= (gw.not_after() - now() + 1) as f64, "{expires}");
    at_least("aci_keyset_current", &[], 1.0);
    // The library's, through the same facade.
    at_least("aci_e2ee_requests_total", &[chat_ep, ("suite", Suite::Secp256k1.algo())], 3.0);
    at_least("aci_e2ee_event_decrypt_seconds_count", &[], 5.0);
    at_least("aci_errors_total", &[("kind", "decrypt")], 1.0);
    at_least("aci_keyset_refreshes_total", &[("outcome", "ok")], 1.0);
    at_least("aci_receipts_total", &[("outcome", "verified"), ("keyset_match", "exact")], 2.0);
    assert!(sample(&text, "aci_keyset_not_after_timestamp_seconds", &[]).is_some());
    assert!(text.contains("# HELP aci_proxy_exchanges_total "), "help texts are registered");

    // A proxy with metrics off does not serve them.
    let (_quiet, quiet_addr) = serve(config_for(&gw).metrics(false)).await;
    let (status, _, body) = get(quiet_addr, "/metrics").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("metrics are off"), "{body}");
}

/// Run in a process of its own by
/// [`a_library_proxy_installs_no_process_wide_metrics_recorder`]: two proxies start side by
/// side, serve, and leave the process's one `metrics` recorder free; `/metrics` says how to ask
/// for one.
#[tokio::test]
#[ignore = "run in a fresh process by proxy_ops::a_library_proxy_installs_no_process_wide_metrics_recorder"]
async fn two_library_proxies_in_a_fresh_process() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let (_first, a) = serve(config_for(&gw)).await;
    let (_second, b) = serve(config_for(&gw)).await;
    for addr in [a, b] {
        assert_eq!(post(addr, &chat("two proxies", false)).await.0, 200);
        let (status, _, body) = get(addr, "/metrics").await;
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("install_metrics_recorder()"), "{body}");
    }
    assert!(
        metrics::set_global_recorder(metrics::NoopRecorder).is_ok(),
        "Proxy::start installed a process-wide metrics recorder unasked"
    );
    println!("NO RECORDER WAS INSTALLED");
}

/// `Proxy::start` used as a library takes no process-wide recorder: checked in a process of its
/// own (this test binary, running only the test above), since tests here share one process and
/// some install the recorder.
#[test]
fn a_library_proxy_installs_no_process_wide_metrics_recorder() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "proxy_ops::two_library_proxies_in_a_fresh_process", "--ignored", "--nocapture"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("NO RECORDER WAS INSTALLED") && stdout.contains("1 passed"), "{stdout}\n{stderr}");
}

#[tokio::test]
async fn a_stream_past_the_request_timeout_ends_with_an_error_event() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let config = config_for(&gw).request_timeout(Duration::from_secs(1)).receipts(ReceiptMode::Off);
    let (_proxy, addr) = serve(config).await;
    gw.set_fault(Some(Fault::StallAfter { events: 2 }));
    let started = Instant::now();
    let (status, sse) = post(addr, &chat("stalls", true)).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(10));
    let last: Value = serde_json::from_str(sse.trim_end().rsplit("data: ").next().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "request_timeout", "{sse}");
    assert!(!sse.contains("[DONE]"));
}

#[tokio::test]
async fn serve_until_stops_accepting_then_ends_streams_still_open_after_the_drain_time() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let config = config_for(&gw).shutdown_timeout(Duration::from_secs(1)).receipts(ReceiptMode::Off);
    let proxy = Proxy::start(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            proxy
                .serve_until(listener, async move {
                    let _ = stopped.await;
                })
                .await
        })
    };
    gw.set_fault(Some(Fault::StallAfter { events: 2 }));
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat("held open", true).to_string())
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    let mut sse = String::from_utf8_lossy(&body.next().await.unwrap().unwrap()).into_owned();

    let started = Instant::now();
    stop.send(()).unwrap();
    while let Some(chunk) = body.next().await {
        sse.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(6), "{waited:?}");
    let last: Value = serde_json::from_str(sse.trim_end().rsplit("data: ").next().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "proxy_shutting_down", "{sse}");
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting");
}

/// With an operator listener: on the signal the main listener closes at once; the operator's
/// keeps answering while a stream drains (`/readyz` 503 "shutting down") and closes with it.
#[tokio::test]
async fn serve_with_ops_until_keeps_readyz_answering_503_while_draining_then_closes_both_listeners() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let config = config_for(&gw).shutdown_timeout(Duration::from_secs(2)).receipts(ReceiptMode::Off);
    let proxy = Proxy::start(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, ops) = (listener.local_addr().unwrap(), ops_listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            proxy
                .serve_with_ops_until(listener, Some(ops_listener), async move {
                    let _ = stopped.await;
                })
                .await
        })
    };
    assert_eq!(get(ops, "/readyz").await.0, 200);
    gw.set_fault(Some(Fault::StallAfter { events: 2 }));
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat("held open", true).to_string())
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    body.next().await.unwrap().unwrap();

    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the main listener still accepts");
    // A fresh client: a new connection to the operator listener, mid-drain.
    let (status, _, text) = get(ops, "/readyz").await;
    assert_eq!(status, 503, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["reason"], "aci-proxy is shutting down");
    while let Some(chunk) = body.next().await {
        chunk.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(15), server).await.unwrap().unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(ops).await.is_err(), "the operator listener still accepts");
}
