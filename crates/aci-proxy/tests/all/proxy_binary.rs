//! The `aci-proxy` binary run as a user runs it: `--local-test-gateway`, its log on stderr,
//! SIGTERM to stop it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

/// A running `aci-proxy` whose stderr is collected.
pub(crate) struct Running {
    pub(crate) child: Child,
    log: Arc<Mutex<String>>,
    pub(crate) addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aci-proxy"));
    cmd.env_clear().args(args).envs(envs.iter().copied()).stdin(Stdio::null());
    cmd
}

/// Start the binary (on an ephemeral loopback port, with no subcommand: `aci-proxy [FLAGS]`
/// still serves) and wait until it listens.
pub(crate) fn start(args: &[&str], envs: &[(&str, &str)]) -> Running {
    start_with(&[&["--local-test-gateway", "--listen", "127.0.0.1:0"], args].concat(), envs)
}

/// Start the binary with exactly `args` and wait until it listens.
pub(crate) fn start_with(args: &[&str], envs: &[(&str, &str)]) -> Running {
    let mut cmd = command(args, envs);
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("aci-proxy starts");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let started = Instant::now();
    let addr = loop {
        let text = log.lock().unwrap().clone();
        if let Some(at) = text.find("listening on http://") {
            let rest = &text[at + "listening on http://".len()..];
            break rest[..rest.find("/v1").unwrap()].parse().unwrap();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("aci-proxy exited ({status}): {text}");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "aci-proxy did not listen: {text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    Running { child, log, addr }
}

impl Running {
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub(crate) fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Wait (bounded) for the process to exit.
    pub(crate) fn wait(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(started.elapsed() < limit, "aci-proxy did not exit in {limit:?}: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

pub(crate) fn chat(text: &str, stream: bool) -> Value {
    json!({"model": "demo-model", "stream": stream, "messages": [{"role": "user", "content": text}]})
}

/// Wait (bounded) until `cond` holds.
pub(crate) async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn receipt_lines(audit: &Path) -> Vec<Value> {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "receipt")
        .collect()
}

/// The text a stream carried: the `delta.content` of its events.
pub(crate) fn stream_text(sse: &str) -> String {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_trace_level_the_log_holds_the_access_lines_and_spans_but_no_prompt_answer_or_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("receipts.jsonl");
    let api_key = "sk-live-ZX81-do-not-log-me";
    let mut proxy = start(
        &["--log-format", "json", "--audit-file", audit.to_str().unwrap()],
        &[("RUST_LOG", "trace"), ("ACI_API_KEY", api_key)],
    );
    let client = reqwest::Client::new();

    // A buffered chat and a streamed one, both decrypted (the log must not show either side).
    let res = client
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat("ultramarine pangolin", false).to_string())
        .send();
    let answer: Value = serde_json::from_str(&res.await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "You said: ultramarine pangolin");
    let res = client
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat("ochre basilisk", true).to_string())
        .send();
    let sse = res.await.unwrap().text().await.unwrap();
    assert_eq!(stream_text(&sse), "You said: ochre basilisk");

    until("both receipts archived", Duration::from_secs(30), || receipt_lines(&audit).len() == 2).await;
    proxy.sigterm();
    assert!(proxy.wait(Duration::from_secs(30)).success(), "{}", proxy.log());
    let log = proxy.log();

    for secret in ["ultramarine", "pangolin", "ochre", "basilisk", "You said", api_key, "ZX81"] {
        assert!(!log.contains(secret), "{secret:?} is in the log");
    }
    // The log is not empty of what matters: every line is JSON (--log-format json), trace
    // events were written, each exchange has its access line, the library's spans carry their
    // fields.
    let lines: Vec<Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"))).collect();
    assert!(lines.iter().any(|l| l["level"] == "TRACE"), "no trace-level event: the test would prove nothing");
    let access: Vec<&Value> = lines.iter().filter(|l| l["target"] == "aci_proxy::access").collect();
    assert_eq!(access.len(), 2, "{access:?}");
    let ids: Vec<Value> = receipt_lines(&audit).iter().map(|r| r["exchange"]["receipt_id"].clone()).collect();
    for (line, streamed) in access.iter().zip([false, true]) {
        assert_eq!(line["method"], "POST");
        assert_eq!(line["path"], "/v1/chat/completions");
        assert_eq!(line["status"], 200);
        assert_eq!(line["outcome"], "ok");
        assert_eq!(line["streamed"], streamed);
        assert!(line["duration_ms"].is_u64());
        assert!(line["sealed"].as_u64() >= Some(1), "{line}");
        assert!(line["opened"].as_u64() >= Some(1), "{line}");
        assert!(line["keyset"].as_str().unwrap().starts_with("sha256:"), "{line}");
        assert!(line["receipt_id"].is_string() && ids.contains(&line["receipt_id"]), "{line} not among {ids:?}");
    }
    let span = |name: &str| -> Vec<&Value> {
        // An event's own span (`span`, with the fields recorded so far) and the spans around it.
        lines
            .iter()
            .flat_map(|l| l["spans"].as_array().into_iter().flatten().chain(std::iter::once(&l["span"])))
            .filter(|s| s["name"] == name)
            .collect()
    };
    let establish = span("aci.attest.establish");
    assert!(establish.iter().any(|s| s["outcome"] == "ok" && s["digest"].as_str().is_some()), "{establish:?}");
    let exchange = span("aci.e2ee.exchange");
    assert!(
        exchange.iter().any(|s| s["endpoint"] == "/v1/chat/completions"
            && s["suite"].as_str().is_some()
            && s["key_id"].as_str().is_some()),
        "{exchange:?}"
    );
    let receipt = span("aci.receipt");
    assert!(
        receipt
            .iter()
            .any(|s| s["outcome"] == "verified" && s["keyset_match"] == "exact" && s["receipt_id"].is_string()),
        "{receipt:?}"
    );
}

/// SIGTERM while two streams are open: no new connections; the stream that can finish within
/// `--shutdown-timeout` finishes and its receipt (checked after the signal) is in the audit
/// file; the one that cannot ends with an error event; the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_streams_then_ends_the_rest_with_an_error_event_and_archives_every_verified_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("receipts.jsonl");
    // Every stream of the local gateway takes 9 x 600 ms.
    let mut proxy = start(
        &["--audit-file", audit.to_str().unwrap(), "--shutdown-timeout", "3s", "--test-gateway-event-delay", "600ms"],
        &[],
    );
    let client = reqwest::Client::new();
    let open = |text: &'static str| {
        let client = client.clone();
        let url = proxy.url("/v1/chat/completions");
        let (tx, rx) = tokio::sync::watch::channel(0usize);
        let task = tokio::spawn(async move {
            let res = client
                .post(url)
                .header("content-type", "application/json")
                .body(chat(text, true).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let mut body = res.bytes_stream();
            let mut text = String::new();
            while let Some(chunk) = body.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
                tx.send_replace(text.matches("data: ").count());
            }
            text
        });
        (task, rx)
    };
    // The first stream is well on its way (6 of 9 events) when the second starts.
    let (first, mut first_events) = open("first stream");
    first_events.wait_for(|n| *n >= 6).await.unwrap();
    let (second, mut second_events) = open("second stream");
    second_events.wait_for(|n| *n >= 1).await.unwrap();

    proxy.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = tokio::net::TcpStream::connect(proxy.addr).await;
    assert!(refused.is_err(), "a new connection was accepted after SIGTERM");

    let first = first.await.unwrap();
    assert!(first.ends_with("data: [DONE]\n\n"), "the first stream did not finish: {first}");
    assert_eq!(stream_text(&first), "You said: first stream");
    let second = second.await.unwrap();
    let last: Value =
        serde_json::from_str(second.trim_end().rsplit("data: ").next().unwrap()).expect("a final error event");
    assert_eq!(last["error"]["type"], "proxy_shutting_down", "{second}");
    assert!(!second.contains("[DONE]"));

    assert!(proxy.wait(Duration::from_secs(30)).success(), "{}", proxy.log());
    // The first stream's receipt was fetched and verified after the signal, and archived: the
    // one receipt of the audit file is the one its access line names.
    let log = proxy.log();
    let archived = receipt_lines(&audit);
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert_eq!(archived[0]["exchange"]["streamed"], true);
    let id = archived[0]["exchange"]["receipt_id"].as_str().unwrap();
    let ok_line = log.lines().find(|l| l.contains("aci_proxy::access") && l.contains("outcome=\"ok\"")).unwrap();
    assert!(ok_line.contains(id), "{ok_line} does not name {id}");
    let log = proxy.log();
    assert!(log.contains("outcome=\"shutdown\"") || log.contains("outcome=shutdown"), "{log}");
}

/// Flags win over `ACI_PROXY_*`, which win over the file; lists from the environment are
/// comma-separated and replace the file's.
#[test]
fn flags_override_the_environment_which_overrides_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aci-proxy.toml");
    std::fs::write(
        &file,
        "gateway = \"https://file.example\"\nlisten = \"127.0.0.1:1111\"\nrequest-timeout = 11\n\
         [pins]\ncompose-hash = [\"aa\"]\ntcb-status = [\"UpToDate\"]\n",
    )
    .unwrap();
    let out = command(
        &["config", "--listen", "127.0.0.1:3333", "--tcb-status", "UpToDate,SWHardeningNeeded"],
        &[
            ("ACI_PROXY_CONFIG", file.to_str().unwrap()),
            ("ACI_PROXY_GATEWAY", "https://env.example"),
            ("ACI_PROXY_LISTEN", "127.0.0.1:2222"),
            ("ACI_PROXY_COMPOSE_HASH", "bb,cc"),
            ("ACI_PROXY_TLS_PIN_ONLY", "1"),
            ("ACI_PROXY_SHUTDOWN_TIMEOUT", "2m"),
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c = printed_config(&out.stdout);
    assert_eq!(c.gateway.as_deref(), Some("https://env.example")); // env over file
    assert_eq!(c.listen.to_string(), "127.0.0.1:3333"); // flag over env
    assert_eq!(c.request_timeout, Duration::from_secs(11)); // file
    assert_eq!(c.shutdown_timeout, Duration::from_secs(120)); // env
    assert!(c.tls_pin_only);
    assert_eq!(c.pins.compose_hashes, ["bb", "cc"]);
    assert_eq!(c.pins.tcb_statuses, ["UpToDate", "SWHardeningNeeded"]);
}

/// What `aci-proxy config` printed, read as `--config` reads it.
pub(crate) fn printed_config(stdout: &[u8]) -> aci_proxy::ProxyConfig {
    let text = std::str::from_utf8(stdout).unwrap();
    aci_proxy::ProxyConfig::from_toml(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The unpinned-policy error, at a terminal: the CLI's own flags, one line per problem and per
/// fix, no builder method names.
#[test]
fn an_unpinned_start_says_what_to_do_in_the_clis_flags_one_line_each() {
    let out = command(&["--gateway", "https://gateway.invalid"], &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a configuration error");
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines[0].starts_with("aci-proxy: ") && lines[0].contains("no workload is pinned"), "{err}");
    assert!(lines.len() >= 3, "{err}");
    for line in &lines {
        assert!(line.len() <= 110, "a long line: {line}");
    }
    for line in &lines[1..] {
        assert!(line.trim_start().starts_with("fix: "), "{line}");
    }
    for flag in ["--compose-hash", "--app-id", "--kms-root", "--any-workload", "aci-proxy inspect"] {
        assert!(err.contains(flag), "{flag} missing: {err}");
    }
    for api in ["allow_compose_hash", "accept_kms_root", "dangerous()", "any_workload()"] {
        assert!(!err.contains(api), "{api} in: {err}");
    }
}

impl Running {
    /// The operator listener's address (`--ops-listen`), from the start-up line.
    fn ops_addr(&self) -> SocketAddr {
        let text = self.log();
        let at = text.find("probes and metrics on http://").unwrap_or_else(|| panic!("no ops line: {text}"));
        let rest = &text[at + "probes and metrics on http://".len()..];
        rest[..rest.find(' ').unwrap()].parse().unwrap()
    }
}

/// Run the binary to its exit (bounded: one that starts serving instead is killed and fails the
/// test); its status and stderr.
pub(crate) fn run_to_exit(args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut child = command(args, envs).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("aci-proxy {args:?} is still running: it started");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

/// `--require-client-key` (flag, environment or file) with no client key: the start fails with
/// exit status 2 (a configuration error) and a message that says what is missing and how to
/// give it.
#[test]
fn require_client_key_without_a_key_fails_at_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aci-proxy.toml");
    std::fs::write(&file, "require-client-key = true\n").unwrap();
    let file = file.to_str().unwrap();
    let base = ["--local-test-gateway", "--listen", "127.0.0.1:0"];
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: [Case; 3] = [
        (vec!["--require-client-key"], vec![]),
        // The variable that should have named the key is misspelled: nothing names it.
        (vec![], vec![("ACI_PROXY_REQUIRE_CLIENT_KEY", "true"), ("ACI_PROXY_CLIENT_KEY_EVN", "ACI_CLIENT_KEY")]),
        (vec!["--config", file], vec![]),
    ];
    for (args, envs) in cases {
        let (status, stderr) = run_to_exit(&[&base[..], &args].concat(), &envs);
        assert_eq!(status.code(), Some(2), "{args:?} {envs:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            "aci-proxy: cannot start: --require-client-key is set, but no client key is configured: the proxy would \
             serve every local user and process.",
            "{stderr}"
        );
        assert!(
            stderr.contains("fix: name the environment variable holding the key: --client-key-env VAR"),
            "{stderr}"
        );
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
    // Named, but the variable is unset or too short: the message names the variable and what is wrong.
    for (envs, seen) in [(vec![], "is unset"), (vec![("ACI_CLIENT_KEY", "short")], "is shorter than 16 characters")] {
        let args = [&base[..], &["--require-client-key", "--client-key-env", "ACI_CLIENT_KEY"]].concat();
        let (status, stderr) = run_to_exit(&args, &envs);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(
            stderr.starts_with(
                "aci-proxy: cannot start: --client-key-env ACI_CLIENT_KEY: the environment variable ACI_CLIENT_KEY"
            ),
            "{stderr}"
        );
        assert!(stderr.contains(seen), "{stderr}");
        assert!(!stderr.contains("short\n") && !stderr.contains("\"short\""), "the value is not printed: {stderr}");
    }
    // The settings reach the configuration from the flags and the file alike.
    let out = command(&["config", "--config", file, "--ops-listen", "127.0.0.1:9090"], &[]).output().unwrap();
    let c = printed_config(&out.stdout);
    assert_eq!((c.require_client_key, c.ops_listen), (true, Some("127.0.0.1:9090".parse().unwrap())));
    assert!(!c.ops_listen_beyond_loopback);
}

/// A shared machine: the client key on loopback for every route of `--listen`, the probes and
/// metrics without it on `--ops-listen` (its own Host check); SIGTERM closes both listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_listen_serves_probes_without_the_client_key_and_sigterm_closes_both_listeners() {
    let key = "ck-0123456789abcdef-loopback";
    let mut proxy = start(
        &["--require-client-key", "--client-key-env", "TEST_ACI_CLIENT_KEY", "--ops-listen", "127.0.0.1:0"],
        &[("TEST_ACI_CLIENT_KEY", key)],
    );
    let ops = proxy.ops_addr();
    let http = reqwest::Client::new();
    let post = |auth: Option<&str>| {
        let req = http.post(proxy.url("/v1/chat/completions")).body(chat("on a shared machine", false).to_string());
        match auth {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
        .send()
    };
    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!(post(Some("ck-0123456789abcdef-loopbacK")).await.unwrap().status(), 401);
    assert_eq!(post(Some(key)).await.unwrap().status(), 200);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(http.get(proxy.url(path)).send().await.unwrap().status(), 401, "{path} on --listen");
        assert_eq!(http.get(proxy.url(path)).bearer_auth(key).send().await.unwrap().status(), 200, "{path}");
        let res = http.get(format!("http://{ops}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path} on --ops-listen");
        let res = http.get(format!("http://{ops}{path}")).header("host", "evil.example").send().await.unwrap();
        assert_eq!(res.status(), 421, "{path} rebound on --ops-listen");
    }
    let res = http.post(format!("http://{ops}/v1/chat/completions")).bearer_auth(key).send().await.unwrap();
    assert_eq!(res.status(), 404);

    proxy.sigterm();
    assert!(proxy.wait(Duration::from_secs(30)).success(), "{}", proxy.log());
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err());
    assert!(tokio::net::TcpStream::connect(ops).await.is_err());
}

/// `--ops-listen` on a non-loopback address is refused unless acknowledged; acknowledged, it
/// serves IP literals and still refuses a DNS name in `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_ops_listen_needs_its_acknowledgement() {
    let port = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
    let everywhere = format!("0.0.0.0:{port}");
    let args = ["--local-test-gateway", "--listen", "127.0.0.1:0", "--ops-listen", &everywhere];
    let (status, stderr) = run_to_exit(&args, &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!("aci-proxy: cannot start: --ops-listen {everywhere} is not a loopback")),
        "{stderr}"
    );
    assert!(stderr.contains("fix: keep it on this machine: --ops-listen 127.0.0.1:"), "{stderr}");
    assert!(stderr.contains("--ops-listen-beyond-loopback"), "{stderr}");

    let proxy = start(&["--ops-listen", &everywhere, "--ops-listen-beyond-loopback"], &[]);
    assert_eq!(proxy.ops_addr().to_string(), everywhere);
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/readyz");
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    let res = http.get(&url).header("host", format!("evil.example:{port}")).send().await.unwrap();
    assert_eq!(res.status(), 421);
}

/// `aci-proxy --version`, its start-up log and `/aci/status` say which field-encryption
/// backends the build decrypts with (`fast-crypto`, the default, or pure Rust).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_the_log_and_the_status_name_the_crypto_backends() {
    let backends = aci_proxy::crypto_backends();
    assert_eq!(backends.contains("libsecp256k1") && backends.contains("aws-lc"), cfg!(feature = "fast-crypto"));
    let out = command(&["--version"], &[]).output().unwrap();
    assert!(out.status.success());
    let version = String::from_utf8(out.stdout).unwrap();
    assert_eq!(version.trim(), format!("aci-proxy {} ({backends})", env!("CARGO_PKG_VERSION")));
    let proxy = start(&[], &[]);
    let status: Value =
        serde_json::from_str(&reqwest::get(proxy.url("/aci/status")).await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(status["crypto_backends"], backends);
    assert!(proxy.log().contains(backends), "{}", proxy.log());
}
