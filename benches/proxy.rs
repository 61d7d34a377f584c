#![allow(missing_docs)]
//! What `aci-proxy` costs beyond its cryptography, end to end on loopback, in one run.
//!
//! ```text
//! cargo bench --bench proxy --features proxy,test-gateway            # pure-Rust backends
//! PROXY_BENCH_CALLGRIND=1 cargo bench --bench proxy --features proxy,test-gateway   # instruction counts
//! ```
//!
//! Three processes, all this binary: the local test gateway (`PROXY_BENCH_ROLE=gateway`), the
//! proxies (`PROXY_BENCH_ROLE=proxy`), and the load generator (the parent). The proxy process
//! runs, on one Tokio runtime of two workers, `tower_aci::proxy::Proxy` as `aci-proxy` runs it
//! (its own subscriber at the default `tower_aci=info,aci_proxy=info`, writing to a file;
//! metrics on; `serve_until`) twice — receipts off, and receipts verified in the background —
//! and a plain reverse proxy written for this bench: the same axum server and hyper-util client,
//! forwarding to the same gateway, no E2EE. The proxies' CPU is the proxy process's own
//! (`CLOCK_PROCESS_CPUTIME_ID`, read by that process when the parent asks between phases), so
//! neither the gateway nor the load generator is counted, and it is precise to the nanosecond
//! where `/proc/<pid>/stat` counts 10 ms ticks. The cost of one seal and one open of the same
//! fields, of one open of a stream event's field, of the per-exchange client key and of one
//! Ed25519 signature check are measured in that same process (thread CPU time), before, between
//! and after the phases; the median is the reference.
//!
//! Phases (each against the same gateway, the same fields):
//! - buffered: `PROXY_BENCH_REQUESTS` (default 3000) short chat completions, one encrypted field
//!   each way, `PROXY_BENCH_CONCURRENCY` (default 32) at a time, through the E2EE proxy with
//!   receipts off, the plain proxy, and the E2EE proxy verifying receipts; in
//!   `PROXY_BENCH_ROUNDS` (default 2) interleaved rounds, so drift in the machine's speed falls on
//!   all three alike;
//! - streamed: `PROXY_BENCH_STREAMS` (default 100) concurrent streams of `PROXY_BENCH_EVENTS`
//!   (default 100) events, one encrypted field each, through the E2EE proxy and the plain proxy.
//!   The gateway paces events `PROXY_BENCH_EVENT_MS` (default 20 ms) apart, as a model does: all
//!   streams are open at once in both phases (the same concurrency, reported), and each event
//!   arrives on its own, so neither phase batches events into fewer reads than the other.
//!
//! Ratios (targets in brackets):
//! - E2EE proxy CPU per buffered request ÷ (seal + open) [≤ 1.5];
//! - (E2EE proxy − seal − open) ÷ plain proxy, per buffered request [≤ 2];
//! - (E2EE proxy − plain proxy) per streamed event ÷ one open [≤ 1.1];
//! - what verifying receipts in the background adds per exchange, ÷ one Ed25519 check.
//!
//! `PROXY_BENCH_CALLGRIND=1` runs the proxy process under `valgrind --tool=callgrind` with
//! instrumentation off, switches it on (`callgrind_control -i on`) for a fixed number of
//! requests or events per phase after a warm-up, and dumps each phase to
//! `target/proxy-callgrind/callgrind.out.<phase>`: instructions per request and per event, which
//! repeat on a shared machine where time does not. Read one with
//! `callgrind_annotate --inclusive=yes target/proxy-callgrind/callgrind.out.<phase>`.
//!
//! Not run by `cargo test` (a `harness = false` bench that does nothing unless cargo passes
//! `--bench`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower_aci::attest::Policy;
use tower_aci::gateway::{Fault, GatewayConfig, TestGateway, UpstreamRequest, UpstreamResponse};
use tower_aci::protocol::aad;
use tower_aci::protocol::suite::{SecretKey, Suite, open, seal};
use tower_aci::proxy::{Proxy, ProxyConfig, ReceiptMode};

const ROLE: &str = "PROXY_BENCH_ROLE";
const MODEL: &str = "demo-model";
/// The prompt: `messages.0.content`, the one field each request seals.
const PROMPT: &str = "Say hello to the reader in one short sentence, please.";
/// The answer: `choices.0.message.content`, the one field each buffered answer opens.
const ANSWER: &str = "Hello, reader! I hope your day is going well.";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn suite() -> Suite {
    match std::env::var("PROXY_BENCH_SUITE").as_deref() {
        Ok("x25519") => Suite::X25519,
        _ => Suite::Secp256k1,
    }
}

/// The `content` of stream event `i`: one encrypted field per event.
fn token(i: usize) -> String {
    format!("token{i} ")
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("gateway") => gateway_main(),
        Ok("proxy") => proxy_main(),
        _ if std::env::args().any(|a| a == "--bench") => driver_main(),
        _ => println!("proxy: run it with `cargo bench --bench proxy --features proxy,test-gateway`"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Commands on stdin, one per line, until EOF.
fn commands() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim().to_owned()).is_err() {
                break;
            }
        }
    });
    rx
}

fn reply(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

// ---------------------------------------------------------------------------------------------
// The gateway process.

fn gateway_main() {
    let events: usize = env_or("PROXY_BENCH_EVENTS", 100);
    let event_ms: u64 = env_or("PROXY_BENCH_EVENT_MS", 20);
    runtime().block_on(async move {
        let upstream = move |req: UpstreamRequest| {
            if req.stream {
                let chunks: Vec<Value> = (0..events)
                    .map(|i| {
                        json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": MODEL,
                        "choices": [{"index": 0, "delta": {"content": token(i)}, "finish_reason": null}]})
                    })
                    .collect();
                return UpstreamResponse::sse_events(chunks, true);
            }
            UpstreamResponse::json(
                200,
                json!({"id": format!("chatcmpl-{}", req.seq), "object": "chat.completion", "model": MODEL,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 11, "total_tokens": 23}}),
            )
        };
        let gw = TestGateway::start(GatewayConfig::new().upstream(upstream)).await.unwrap();
        if event_ms > 0 {
            gw.set_fault(Some(Fault::EventDelay(Duration::from_millis(event_ms))));
        }
        reply(&gw.base_url());
        let mut rx = commands();
        while rx.recv().await.is_some() {}
    });
}

// ---------------------------------------------------------------------------------------------
// The proxy process.

/// The plain reverse proxy: the same axum server and hyper-util client as `aci-proxy`, the
/// same headers forwarded, no E2EE.
#[derive(Clone)]
struct Plain {
    base: String,
    client: Client<HttpConnector, axum::body::Body>,
}

async fn plain_forward(
    axum::extract::State(p): axum::extract::State<Plain>,
    req: Request<axum::body::Body>,
) -> Response<axum::body::Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut up = Request::new(body);
    *up.method_mut() = parts.method;
    *up.uri_mut() = format!("{}{path}", p.base).parse().unwrap();
    for name in [http::header::CONTENT_TYPE, http::header::ACCEPT, http::header::AUTHORIZATION] {
        if let Some(v) = parts.headers.get(&name) {
            up.headers_mut().insert(name, v.clone());
        }
    }
    match p.client.request(up).await {
        Ok(res) => res.map(axum::body::Body::new),
        Err(e) => {
            Response::builder().status(StatusCode::BAD_GATEWAY).body(axum::body::Body::from(e.to_string())).unwrap()
        }
    }
}

fn policy(suite: Suite) -> Policy {
    Policy::builder().select_suite(suite).dangerous().accept_stub_quote().any_workload().build().unwrap()
}

/// The per-unit CPU cost of `f`, in nanoseconds of this thread's CPU time.
fn thread_cost<O>(n: u32, mut f: impl FnMut() -> O) -> f64 {
    for _ in 0..n / 10 {
        std::hint::black_box(f());
    }
    let t = cpu_time::ThreadTime::now();
    for _ in 0..n {
        std::hint::black_box(f());
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

/// One seal of the prompt's field, one open of the answer's field, one open of an event's
/// field, the client key of an exchange (generated, its public key in hex) and one Ed25519
/// signature check of a receipt-sized document: ns each, in this process.
fn crypto_costs(suite: Suite, gateway_key: &tower_aci::protocol::suite::PublicKey) -> [f64; 5] {
    let rng = &mut rand_core::OsRng;
    let nonce = "ab".repeat(32);
    let ts = 1_750_000_000;
    let req_aad = aad::request(suite, "messages.0.content", MODEL, &nonce, ts);
    let seal_ns = thread_cost(1000, || seal(gateway_key, PROMPT.as_bytes(), &req_aad, rng));
    let client = SecretKey::generate(suite, rng);
    let res_aad = aad::response(suite, "choices.0.message.content", "chatcmpl-1", MODEL, &nonce, ts);
    let field = seal(&client.public_key(), ANSWER.as_bytes(), &res_aad, rng);
    let open_ns = thread_cost(1000, || open(&client, &field, &res_aad).unwrap());
    let ev_aad = aad::response(suite, "choices.0.delta.content", "chatcmpl-bench", MODEL, &nonce, ts);
    let ev_field = seal(&client.public_key(), token(42).as_bytes(), &ev_aad, rng);
    let event_ns = thread_cost(1000, || open(&client, &ev_field, &ev_aad).unwrap());
    let keygen_ns = thread_cost(1000, || SecretKey::generate(suite, rng).public_key().to_hex());
    use ed25519_dalek::{Signer, Verifier};
    let signer = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let doc = vec![b'r'; 1500];
    let sig = signer.sign(&doc);
    let verifying = signer.verifying_key();
    let ed_ns = thread_cost(1000, || verifying.verify(&doc, &sig).unwrap());
    [seal_ns, open_ns, event_ns, keygen_ns, ed_ns]
}

/// One open of an event's field every 2 ms until `stop`: (count, ns of the opens, ns of this
/// thread's CPU in all).
fn open_probe(
    suite: Suite,
    _key: &tower_aci::protocol::suite::PublicKey,
    stop: &std::sync::atomic::AtomicBool,
) -> (u64, u64, u64) {
    let rng = &mut rand_core::OsRng;
    let client = SecretKey::generate(suite, rng);
    let nonce = "ab".repeat(32);
    let ev_aad = aad::response(suite, "choices.0.delta.content", "chatcmpl-bench", MODEL, &nonce, 1_750_000_000);
    let field = seal(&client.public_key(), token(42).as_bytes(), &ev_aad, rng);
    let all = cpu_time::ThreadTime::now();
    let (mut n, mut ns) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(2));
        let t = cpu_time::ThreadTime::now();
        std::hint::black_box(open(&client, &field, &ev_aad).unwrap());
        ns += t.elapsed().as_nanos() as u64;
        n += 1;
    }
    (n, ns, all.elapsed().as_nanos() as u64)
}

fn proxy_main() {
    let gateway = std::env::var("PROXY_BENCH_GATEWAY").unwrap();
    let suite = suite();
    // As `aci-proxy` logs by default; to a file, as a service's journal would take it.
    let log = std::fs::File::create(std::env::var("PROXY_BENCH_LOG").unwrap()).unwrap();
    tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(log))
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("tower_aci=info,aci_proxy=info"))
        .init();
    let rt = runtime();
    rt.block_on(async move {
        let e2ee = |receipts| {
            let config = ProxyConfig {
                gateway: Some(gateway.clone()),
                receipts,
                policy: Some(policy(suite)),
                ..ProxyConfig::default()
            };
            async move {
                let proxy = Proxy::start(config).await.unwrap();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let url = format!("http://{}", listener.local_addr().unwrap());
                let serving = proxy.clone();
                tokio::spawn(async move { serving.serve_until(listener, std::future::pending()).await.unwrap() });
                (proxy, url)
            }
        };
        let (off, off_url) = e2ee(ReceiptMode::Off).await;
        let (verify, verify_url) = e2ee(ReceiptMode::Verify).await;
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        let plain = Plain { base: gateway.clone(), client: Client::builder(TokioExecutor::new()).build(tcp) };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_url = format!("http://{}", listener.local_addr().unwrap());
        let router = axum::Router::new().fallback(plain_forward).with_state(plain);
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        reply(&format!("{off_url} {verify_url} {plain_url}"));

        let gateway_key = off.keys().current().unwrap().e2ee_key().public_key().clone();
        let mut rx = commands();
        let mut probe = None;
        while let Some(cmd) = rx.recv().await {
            match cmd.as_str() {
                "cpu" => reply(&cpu_time::ProcessTime::now().as_duration().as_nanos().to_string()),
                "drain" => {
                    // The background receipt checks of the verifying proxy: all done.
                    verify.finish().await;
                    let counts = &verify.status()["counts"];
                    reply(&format!("{} {}", counts["receipts_verified"], counts["receipts_failed"]));
                }
                "probe-on" => {
                    let (suite, key) = (suite, gateway_key.clone());
                    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let flag = stop.clone();
                    probe = Some((stop, std::thread::spawn(move || open_probe(suite, &key, &flag))));
                    reply("ok");
                }
                "probe-off" => {
                    let (stop, handle) = probe.take().unwrap();
                    stop.store(true, Ordering::Relaxed);
                    let (n, open_ns, total_ns) = handle.join().unwrap();
                    reply(&format!("{n} {open_ns} {total_ns}"));
                }
                "crypto" => {
                    let costs = tokio::task::spawn_blocking({
                        let key = gateway_key.clone();
                        move || crypto_costs(suite, &key)
                    })
                    .await
                    .unwrap();
                    reply(&costs.map(|c| format!("{c:.0}")).join(" "));
                }
                other => reply(&format!("unknown command {other}")),
            }
        }
        drop(off);
    });
}

// ---------------------------------------------------------------------------------------------
// The load generator.

struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("start a bench process");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Proc { child, stdin, stdout }
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).unwrap();
        assert!(!s.is_empty(), "a bench process exited early");
        s.trim().to_owned()
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        self.line()
    }

    fn cpu_ns(&mut self) -> u64 {
        self.ask("cpu").parse().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn own(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ROLE, role);
    cmd
}

type Http = Client<HttpConnector, Full<Bytes>>;

fn chat_body(stream: bool) -> Bytes {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]});
    if stream {
        body["stream"] = Value::Bool(true);
    }
    Bytes::from(body.to_string())
}

async fn post(http: &Http, url: &str, body: Bytes) -> Response<hyper::body::Incoming> {
    let req = Request::post(url).header("content-type", "application/json").body(Full::new(body)).unwrap();
    let res = http.request(req).await.expect("request");
    assert_eq!(res.status(), 200, "{url}");
    res
}

/// `n` buffered chat completions, `concurrency` at a time.
async fn buffered(http: &Http, base: &str, n: usize, concurrency: usize) {
    let url = format!("{base}/v1/chat/completions");
    let next = Arc::new(AtomicUsize::new(0));
    let body = chat_body(false);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(n) {
        let (http, url, next, body) = (http.clone(), url.clone(), next.clone(), body.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let res = post(&http, &url, body.clone()).await;
                let bytes = res.into_body().collect().await.unwrap().to_bytes();
                let v: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(v["choices"][0]["message"]["content"], ANSWER);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

#[derive(Default)]
struct StreamTally {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    /// Sum of the streams' durations, µs: ÷ the phase's wall time = mean concurrency.
    stream_us: AtomicU64,
    events: AtomicU64,
}

/// `streams` concurrent streams of `events` events each; checks every event's text.
async fn streamed(http: &Http, base: &str, streams: usize, events: usize) -> (f64, usize, u64) {
    let url = format!("{base}/v1/chat/completions");
    let tally = Arc::new(StreamTally::default());
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let (http, url, tally) = (http.clone(), url.clone(), tally.clone());
        tasks.spawn(async move {
            let start = Instant::now();
            let n = tally.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            tally.peak.fetch_max(n, Ordering::Relaxed);
            let mut body = post(&http, &url, chat_body(true)).await.into_body();
            let mut pending = Vec::new();
            let mut seen = 0;
            let mut done = false;
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame.unwrap().into_data() else { continue };
                pending.extend_from_slice(&data);
                while let Some(end) = memchr::memmem::find(&pending, b"\n\n") {
                    let event: Vec<u8> = pending.drain(..end + 2).collect();
                    if event.starts_with(b"data: [DONE]") {
                        done = true;
                    } else if event.starts_with(b"data: ") {
                        let v: Value = serde_json::from_slice(&event[6..]).unwrap();
                        assert_eq!(v["choices"][0]["delta"]["content"], token(seen).as_str());
                        seen += 1;
                    }
                }
            }
            assert!(done && seen == events, "stream ended after {seen} of {events} events, [DONE]: {done}");
            tally.events.fetch_add(seen as u64, Ordering::Relaxed);
            tally.in_flight.fetch_sub(1, Ordering::Relaxed);
            tally.stream_us.fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let wall = t0.elapsed().as_micros() as f64;
    (
        tally.stream_us.load(Ordering::Relaxed) as f64 / wall,
        tally.peak.load(Ordering::Relaxed),
        tally.events.load(Ordering::Relaxed),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Urls {
    off: String,
    verify: String,
    plain: String,
}

fn driver_main() {
    let suite = suite();
    let requests: usize = env_or("PROXY_BENCH_REQUESTS", 3000);
    let concurrency: usize = env_or("PROXY_BENCH_CONCURRENCY", 32);
    let rounds: usize = env_or("PROXY_BENCH_ROUNDS", 2);
    let streams: usize = env_or("PROXY_BENCH_STREAMS", 100);
    let events: usize = env_or("PROXY_BENCH_EVENTS", 100);
    let event_ms: u64 = env_or("PROXY_BENCH_EVENT_MS", 20);
    let callgrind = std::env::var("PROXY_BENCH_CALLGRIND").is_ok_and(|v| v == "1");

    let target = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let mut gateway = Proc::spawn({
        let mut cmd = own("gateway");
        cmd.env("PROXY_BENCH_EVENTS", events.to_string())
            .env("PROXY_BENCH_EVENT_MS", if callgrind { "0".into() } else { event_ms.to_string() });
        cmd
    });
    let gateway_url = gateway.line();
    let log = target.join("proxy-bench.log");
    let mut proxy_cmd = if callgrind {
        let dir = target.join("proxy-callgrind");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("valgrind");
        cmd.args(["--tool=callgrind", "--instr-atstart=no", "-q"])
            .arg(format!("--callgrind-out-file={}/callgrind.out", dir.display()))
            .arg(std::env::current_exe().unwrap())
            .env(ROLE, "proxy");
        cmd
    } else {
        own("proxy")
    };
    proxy_cmd.env("PROXY_BENCH_GATEWAY", &gateway_url).env("PROXY_BENCH_LOG", &log);
    let mut proxy = Proc::spawn(proxy_cmd);
    let line = proxy.line();
    let mut it = line.split(' ').map(str::to_owned);
    let urls = Urls { off: it.next().unwrap(), verify: it.next().unwrap(), plain: it.next().unwrap() };
    println!(
        "proxy bench: suite {}, gateway {gateway_url}, proxy log {} (pid {})",
        suite.algo(),
        log.display(),
        proxy.child.id()
    );

    let rt = runtime();
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    let http: Http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(usize::MAX).build(tcp);

    if callgrind {
        profile(&rt, &http, &mut proxy, &urls, events, &target.join("proxy-callgrind"));
        drop(proxy);
        drop(gateway);
        return;
    }

    // Warm-up: connections, pools, allocator, the receipt path.
    rt.block_on(async {
        for url in [&urls.off, &urls.plain, &urls.verify] {
            buffered(&http, url, 200, concurrency).await;
        }
    });
    proxy.ask("drain");

    let crypto = |proxy: &mut Proc| -> [f64; 5] {
        let r = proxy.ask("crypto");
        let v: Vec<f64> = r.split(' ').map(|x| x.parse().unwrap()).collect();
        [v[0], v[1], v[2], v[3], v[4]]
    };
    let mut costs = vec![crypto(&mut proxy)];

    // Buffered, interleaved rounds. CPU ns and requests per proxy.
    let mut cpu = [0u64; 3];
    let mut walls = [0f64; 3];
    let per_round = requests / rounds.max(1);
    for _ in 0..rounds.max(1) {
        for (i, url) in [&urls.off, &urls.plain, &urls.verify].into_iter().enumerate() {
            let c0 = proxy.cpu_ns();
            let t0 = Instant::now();
            rt.block_on(buffered(&http, url, per_round, concurrency));
            if i == 2 {
                let counts = proxy.ask("drain");
                assert!(counts.ends_with(" 0"), "receipt checks failed: {counts}");
            }
            walls[i] += t0.elapsed().as_secs_f64();
            cpu[i] += proxy.cpu_ns() - c0;
        }
    }
    costs.push(crypto(&mut proxy));

    // Streams: the same concurrency in both phases.
    let mut stream_cpu = [0u64; 2];
    let mut stream_stats = Vec::new();
    for (i, url) in [&urls.off, &urls.plain].into_iter().enumerate() {
        proxy.ask("probe-on");
        let c0 = proxy.cpu_ns();
        let t0 = Instant::now();
        let (mean, peak, n) = rt.block_on(streamed(&http, url, streams, events));
        let c1 = proxy.cpu_ns();
        let probe = proxy.ask("probe-off");
        let p: Vec<u64> = probe.split(' ').map(|x| x.parse().unwrap()).collect();
        println!(
            "probe during phase {i}: {} opens, {:.1} µs each, probe thread CPU {:.1} ms",
            p[0],
            p[1] as f64 / p[0] as f64 / 1000.0,
            p[2] as f64 / 1e6
        );
        stream_cpu[i] = c1 - c0 - p[2];
        stream_stats.push((mean, peak, n, t0.elapsed().as_secs_f64()));
    }
    costs.push(crypto(&mut proxy));
    drop(proxy);
    drop(gateway);

    let pick = |k: usize| median(costs.iter().map(|c| c[k]).collect()) / 1000.0;
    let (seal_us, open_us, event_open_us, keygen_us, ed_us) = (pick(0), pick(1), pick(2), pick(3), pick(4));
    let n = (per_round * rounds.max(1)) as f64;
    let per_req = cpu.map(|c| c as f64 / n / 1000.0);
    let (e2ee, plain, verify) = (per_req[0], per_req[1], per_req[2]);
    let events_total = |i: usize| stream_stats[i].2 as f64;
    let per_event = [stream_cpu[0] as f64 / events_total(0) / 1000.0, stream_cpu[1] as f64 / events_total(1) / 1000.0];

    println!("-- crypto in the proxy process (thread CPU, median of before/between/after)");
    let samples = |k: usize| costs.iter().map(|c| format!("{:.1}", c[k] / 1000.0)).collect::<Vec<_>>().join(" / ");
    println!("seal of the prompt field ({} B): {seal_us:.1} µs ({})", PROMPT.len(), samples(0));
    println!("open of the answer field ({} B): {open_us:.1} µs ({})", ANSWER.len(), samples(1));
    println!("open of an event field: {event_open_us:.1} µs ({})", samples(2));
    println!("the exchange's client key (generate, public key in hex): {keygen_us:.1} µs ({})", samples(3));
    println!("one Ed25519 check of a 1.5 KB document: {ed_us:.1} µs ({})", samples(4));
    println!("-- buffered: {} requests per proxy in {rounds} rounds, {concurrency} concurrent", n);
    for (name, i) in [("E2EE, receipts off", 0), ("plain proxy", 1), ("E2EE, receipts verified", 2)] {
        println!("{name:<26} proxy CPU {:>7.1} µs/request   ({:.0} requests/s wall)", per_req[i], n / walls[i]);
    }
    println!("-- streamed: {streams} streams × {events} events, gateway pacing {event_ms} ms");
    for (name, i) in [("E2EE", 0), ("plain proxy", 1)] {
        let (mean, peak, count, wall) = stream_stats[i];
        println!(
            "{name:<26} proxy CPU {:>7.2} µs/event   ({count} events in {wall:.2} s; concurrent streams: mean {mean:.1}, peak {peak})",
            per_event[i]
        );
    }
    let crypto_us = seal_us + open_us;
    println!("-- ratios (target)");
    println!("E2EE proxy per request ÷ (seal + open): {e2ee:.1} / {crypto_us:.1} = {:.2} (≤ 1.5)", e2ee / crypto_us);
    println!(
        "(E2EE proxy − seal − open) ÷ plain proxy: {:.1} / {plain:.1} = {:.2} (≤ 2)",
        e2ee - crypto_us,
        (e2ee - crypto_us) / plain
    );
    println!(
        "  of which the exchange's client key: {keygen_us:.1} µs; without it: {:.2}",
        (e2ee - crypto_us - keygen_us) / plain
    );
    let layer_event = per_event[0] - per_event[1];
    println!(
        "E2EE per event above plain ÷ one open: {layer_event:.2} / {event_open_us:.2} = {:.3} (≤ 1.1)",
        layer_event / event_open_us
    );
    let receipt = verify - e2ee;
    println!(
        "receipts verified in the background add {receipt:.1} µs per exchange = {:.1}× one Ed25519 check ({ed_us:.1} µs)",
        receipt / ed_us
    );
}

// ---------------------------------------------------------------------------------------------
// Instruction counts.

/// Under callgrind: a warm-up, then instrumentation on for a fixed amount of work per phase,
/// one dump per phase.
fn profile(
    rt: &tokio::runtime::Runtime,
    http: &Http,
    proxy: &mut Proc,
    urls: &Urls,
    events: usize,
    dir: &std::path::Path,
) {
    let pid = proxy.child.id().to_string();
    let control = |args: &[&str]| {
        let out = Command::new("callgrind_control").args(args).arg(&pid).output().expect("callgrind_control");
        assert!(out.status.success(), "callgrind_control {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let requests: usize = env_or("PROXY_BENCH_PROFILE_REQUESTS", 200);
    let streams: usize = env_or("PROXY_BENCH_PROFILE_STREAMS", 10);
    println!("callgrind: {requests} buffered requests (4 concurrent), {streams} streams × {events} events per phase");
    rt.block_on(async {
        for url in [&urls.off, &urls.plain] {
            buffered(http, url, 50, 4).await;
            streamed(http, url, 2, events).await;
        }
        buffered(http, &urls.verify, 50, 4).await;
    });
    for (phase, url, stream) in [
        ("e2ee-buffered", &urls.off, false),
        ("plain-buffered", &urls.plain, false),
        ("verify-buffered", &urls.verify, false),
        ("e2ee-stream", &urls.off, true),
        ("plain-stream", &urls.plain, true),
    ] {
        control(&["--zero"]);
        control(&["--instr=on"]);
        rt.block_on(async {
            if stream {
                streamed(http, url, streams, events).await;
            } else {
                buffered(http, url, requests, 4).await;
            }
        });
        if url == &urls.verify {
            proxy.ask("drain");
        }
        control(&["--instr=off"]);
        control(&[&format!("--dump={phase}")]);
        let units = if stream { streams * events } else { requests };
        let (dump, ir) = latest_dump(dir);
        let file = dir.join(format!("callgrind.out.{phase}"));
        std::fs::rename(&dump, &file).unwrap();
        println!(
            "{phase:<16} {:>12.0} instructions per {}   ({ir} in {units}; {})",
            ir as f64 / units as f64,
            if stream { "event" } else { "request" },
            file.display()
        );
    }
}

/// The newest callgrind dump in `dir` (waiting for it to be written) and its total instructions.
fn latest_dump(dir: &std::path::Path) -> (std::path::PathBuf, u64) {
    for _ in 0..600 {
        let newest = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            // Numbered dumps only (`callgrind.out.<n>`): those already named for a phase are done.
            .filter(|e| e.path().extension().and_then(|x| x.to_str()).is_some_and(|x| x.parse::<u32>().is_ok()))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .max();
        if let Some((_, path)) = newest {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(total) = text.lines().find_map(|l| l.strip_prefix("totals:")) {
                return (path, total.trim().split(' ').next().unwrap().parse().unwrap());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no callgrind dump appeared in {}", dir.display());
}
