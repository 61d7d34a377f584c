//! Replicas (issue 18, item 3) through `aci-proxy`: three replicas of one application behind a
//! round-robin forwarder (the doubles shared with tower-aci's `tests/all/replicas.rs`, which
//! tests the library's side): the pinned build, another build refused by the policy, and the
//! pinned build with a failing report endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use aci_test_gateway::TestGateway;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower_aci::receipt::ReceiptPolicy;
use tower_aci::{AttestationFailure, ErrorKind, ReceiptFailure as F};

use crate::doubles::{compose_pinned_policy, mixed_builds};

/// Send chats through the proxy at `addr`, several at a time (so its client opens several
/// connections, which the forwarder spreads), until every replica served one; returns how many
/// each served.
async fn chats_until_every_replica_served(addr: SocketAddr, replicas: &[TestGateway]) -> Vec<usize> {
    let http = reqwest::Client::new();
    for round in 0..20 {
        let sends = (0..6).map(|i| {
            let http = http.clone();
            async move {
                let res = http
                    .post(format!("http://{addr}/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .body(json!({"model": "demo-model", "messages": [{"role": "user", "content": format!("round {round} chat {i}")}]}).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
                let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
                assert_eq!(v["choices"][0]["message"]["content"], format!("You said: round {round} chat {i}"));
            }
        });
        futures_util::future::join_all(sends).await;
        if replicas.iter().all(|r| r.requests_seen() > 0) {
            break;
        }
    }
    let served: Vec<usize> = replicas.iter().map(TestGateway::requests_seen).collect();
    assert!(served.iter().all(|&n| n > 0), "every replica served: {served:?}");
    served
}

/// Wait (bounded) until the proxy judged every receipt of `n` exchanges.
async fn receipts_judged(proxy: &aci_proxy::Proxy, n: u64) -> Value {
    for _ in 0..1_000 {
        let status = proxy.status();
        let c = &status["counts"];
        if c["receipts_verified"].as_u64().unwrap() + c["receipts_failed"].as_u64().unwrap() >= n {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("receipts not judged in time: {}", proxy.status());
}

/// Issue 18, item 3, through `aci-proxy`: the unpinned build's receipts fail and `/aci/status`
/// counts its refused keyset; the audit file records the rule each receipt verified under, and
/// the offline audit reaches the proxy's verdicts (the same-key receipts verify as same-key only,
/// and not under `--require-exact-keyset`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_refuses_the_unpinned_build_and_its_audit_agrees_offline() {
    use aci_proxy::{Proxy, ProxyConfig, ReceiptMode, verify_audit};

    let (replicas, lb) = mixed_builds().await;
    let digests: Vec<String> = replicas.iter().map(TestGateway::keyset_digest).collect();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("receipts.jsonl");
    let config = ProxyConfig::default()
        .gateway(lb.url())
        .with_policy(compose_pinned_policy())
        .receipts(ReceiptMode::Background)
        .audit_file(audit.clone());
    let proxy = Proxy::start(config).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = proxy.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let served = chats_until_every_replica_served(addr, &replicas).await;
    let total = served.iter().sum::<usize>() as u64;
    let status = receipts_judged(&proxy, total).await;
    let counts = &status["counts"];
    assert_eq!(counts["refused_keysets"], 1, "{status}");
    assert_eq!(counts["receipts_failed"], served[1] as u64, "the unpinned build's receipts fail: {status}");
    assert_eq!(counts["receipts_verified"], (served[0] + served[2]) as u64, "{status}");
    assert_eq!(proxy.keys().refused_keyset(&digests[1]).unwrap().failure(), AttestationFailure::NotAllowed);

    // The audit file: the pinned build's receipts under `exact`, the unreachable replica's under
    // `same_key`, vouched for by the pinned build's keyset; nothing of the unpinned build.
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let receipt_lines = |rule: &str| lines.iter().filter(|l| l["type"] == "receipt" && l["rule"] == rule).count();
    assert_eq!((receipt_lines("exact"), receipt_lines("same_key")), (served[0], served[2]), "{text}");
    for l in lines.iter().filter(|l| l["type"] == "receipt") {
        assert_eq!(l["keyset_digest"], digests[0].as_str());
    }
    let keyset_lines: Vec<&Value> = lines.iter().filter(|l| l["type"] == "keyset").collect();
    assert_eq!(keyset_lines.len(), 1);
    assert_eq!(keyset_lines[0]["digest"], digests[0].as_str());

    // Offline: the same verdicts.
    let policy = compose_pinned_policy();
    let summary = verify_audit(&text, &policy, &ReceiptPolicy::new());
    assert!(summary.is_clean(), "{:?}", summary.failures);
    assert_eq!((summary.keysets_verified, summary.receipts_verified), (1, served[0] + served[2]));
    // Offline under --require-exact-keyset: the same-key receipts fail, the exact ones pass.
    let exact = ReceiptPolicy::new().require_exact_keyset(true);
    let summary = verify_audit(&text, &policy, &exact);
    assert_eq!(summary.receipts_verified, served[0]);
    assert_eq!(summary.failures.len(), served[2]);
    assert!(
        summary
            .failures
            .iter()
            .all(|(_, e)| e.error().map(tower_aci::Error::kind) == Some(ErrorKind::Receipt(F::UnknownKeyset)))
    );
    // The recorded rule is checked: a same-key receipt relabelled exact, or an exact one
    // relabelled same-key, does not verify.
    for (from, to) in [("same_key", "exact"), ("exact", "same_key")] {
        let line = text.lines().find(|l| l.contains(&format!(r#""rule":"{from}""#))).unwrap();
        let relabelled =
            text.replace(line, &line.replace(&format!(r#""rule":"{from}""#), &format!(r#""rule":"{to}""#)));
        let summary = verify_audit(&relabelled, &policy, &ReceiptPolicy::new());
        assert_eq!(summary.failures.len(), 1, "{from} relabelled {to}: {:?}", summary.failures);
    }
}

/// `--require-exact-keyset` (TOML `require_exact_keyset`) reaches the proxy's receipt policy:
/// the unreachable replica's receipts then fail online too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_requires_the_exact_keyset_when_told() {
    use aci_proxy::{Proxy, ProxyConfig, ReceiptMode};

    let (replicas, lb) = mixed_builds().await;
    let mut config = ProxyConfig::from_toml(&format!("gateway = {:?}\nrequire-exact-keyset = true", lb.url())).unwrap();
    assert!(config.require_exact_keyset && config.receipt_policy().requires_exact_keyset());
    config.policy = Some(compose_pinned_policy());
    config.receipts = ReceiptMode::Background;
    let proxy = Proxy::start(config).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = proxy.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let served = chats_until_every_replica_served(addr, &replicas).await;
    let status = receipts_judged(&proxy, served.iter().sum::<usize>() as u64).await;
    assert_eq!(status["counts"]["receipts_verified"], served[0] as u64, "{status}");
    assert_eq!(status["counts"]["receipts_failed"], (served[1] + served[2]) as u64, "{status}");
}
