//! The metric names and label values `aci-proxy` serves at `/metrics` are a contract operators
//! build dashboards and alerts on: a real `aci-proxy` (the binary, in a process of its own, so
//! that its registry holds only what this test did) in front of the local test gateway serves a
//! known set of exchanges, and every series it then serves — its own (`aci_proxy::names`) and the
//! library's (`tower_aci::telemetry::names`) — is compared, name and label values, with the
//! checked-in list `metrics_golden.txt`. A renamed metric, label or label value fails here.
//!
//! After an intended change, regenerate the list with
//! `ACI_PROXY_BLESS_METRICS=1 cargo test -p aci-proxy --all-features --test all metrics_golden`
//! and review its diff (and the CHANGELOG: it is a change operators see).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::proxy_binary::{chat, start, until};

const GOLDEN: &str = include_str!("metrics_golden.txt");

/// Every series of a Prometheus text exposition, as `name{label="value",…}` (labels sorted), a
/// histogram as its family (no `_bucket`, `_sum`, `_count`, no `le`); values dropped.
fn series(text: &str) -> BTreeSet<String> {
    let histograms: BTreeSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.strip_suffix(" histogram")).collect();
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let mut name = &line[..name_end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(family) = name.strip_suffix(suffix) {
                if histograms.contains(family) {
                    name = family;
                }
            }
        }
        let mut labels: Vec<&str> = match line[name_end..].strip_prefix('{') {
            Some(rest) => split_labels(&rest[..rest.rfind('}').expect("a closed label set")]),
            None => Vec::new(),
        };
        labels.retain(|l| !l.starts_with("le="));
        labels.sort_unstable();
        out.insert(if labels.is_empty() { name.to_owned() } else { format!("{name}{{{}}}", labels.join(",")) });
    }
    out
}

/// `a="x",b="y,z"` → `["a=\"x\"", "b=\"y,z\""]` (commas inside quoted values kept).
fn split_labels(s: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_served_match_the_golden_list_of_names_and_label_values() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("receipts.jsonl");
    let proxy = start(&["--audit-file", audit.to_str().unwrap()], &[]);
    let http = reqwest::Client::new();
    let post = |path: &str, body: String| {
        http.post(proxy.url(path)).header("content-type", "application/json").body(body).send()
    };

    // One exchange of each kind the proxy serves, each ending `ok`.
    for (path, body) in [
        ("/v1/chat/completions", chat("buffered", false)),
        ("/v1/chat/completions", chat("streamed", true)),
        ("/v1/completions", json!({"model": "demo-model", "prompt": "complete me", "stream": false})),
        ("/v1/completions", json!({"model": "demo-model", "prompt": "complete me", "stream": true})),
        ("/v1/embeddings", json!({"model": "demo-model", "input": "embed me"})),
    ] {
        let res = post(path, body.to_string()).await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        res.text().await.unwrap();
    }
    // A body the E2EE layer refuses before anything is sent: the proxy's own error outcome.
    let res = post("/v1/chat/completions", "{not json".to_owned()).await.unwrap();
    assert_eq!(res.status(), 400);
    // A POST outside E2EE v2: refused.
    let res = post("/v1/images/generations", json!({"prompt": "a cat"}).to_string()).await.unwrap();
    assert_eq!(res.status(), 404);

    // The background receipt checks counted (the library's receipt metrics).
    let status = || async {
        let text = http.get(proxy.url("/aci/status")).send().await.unwrap().text().await.unwrap();
        serde_json::from_str::<Value>(&text).unwrap()
    };
    let mut verified = 0;
    for _ in 0..300 {
        verified = status().await["counts"]["receipts_verified"].as_u64().unwrap_or(0);
        if verified >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(verified, 5, "{}", status().await);
    until("the receipts archived", Duration::from_secs(30), || crate::proxy_binary::receipt_lines(&audit).len() == 5)
        .await;

    let res = http.get(proxy.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let served = series(&res.text().await.unwrap());
    let golden: BTreeSet<String> =
        GOLDEN.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect();
    if std::env::var_os("ACI_PROXY_BLESS_METRICS").is_some() {
        let head: String = GOLDEN.lines().take_while(|l| l.starts_with('#')).map(|l| format!("{l}\n")).collect();
        let body: String = served.iter().map(|s| format!("{s}\n")).collect();
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/all/metrics_golden.txt"), head + &body).unwrap();
        return;
    }
    let missing: Vec<_> = golden.difference(&served).collect();
    let unknown: Vec<_> = served.difference(&golden).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "/metrics no longer matches tests/all/metrics_golden.txt: a name or label value operators rely on \
         changed.\nin the list, not served: {missing:#?}\nserved, not in the list: {unknown:#?}"
    );
}

#[test]
fn the_series_parser_reads_histograms_as_families_and_keeps_quoted_commas() {
    let text = "# TYPE h histogram\nh_bucket{endpoint=\"a\",le=\"0.5\"} 1\nh_sum{endpoint=\"a\"} 1\nh_count{endpoint=\"a\"} 1\n\
                # TYPE c_count counter\nc_count{b=\"x,y\",a=\"1\"} 3\ng 2\n";
    let got: Vec<String> = series(text).into_iter().collect();
    assert_eq!(got, ["c_count{a=\"1\",b=\"x,y\"}", "g", "h{endpoint=\"a\"}"]);
}
