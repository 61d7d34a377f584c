#![allow(missing_docs)]
//! What `aci-proxy` costs beyond its cryptography, end to end on loopback, in one run.
//!
//! ```text
//! cargo bench -p aci-proxy --bench proxy --no-default-features --features local-test-gateway   # pure-Rust backends
//! PROXY_BENCH_CALLGRIND=1 cargo bench -p aci-proxy --bench proxy --no-default-features --features local-test-gateway   # instruction counts
//! ```
//!
//! Three processes, all this binary: the local test gateway (`PROXY_BENCH_ROLE=gateway`), the
//! proxies (`PROXY_BENCH_ROLE=proxy`), and the load generator (the parent). The proxy process
//! runs, on one Tokio runtime of two workers, `aci_proxy::Proxy` as `aci-proxy` runs it
//! (its own subscriber at the default `tower_aci=info,aci_proxy=info`, writing to a file;
//! metrics on; `serve_until`) twice — receipts off, and receipts verified in the background —
//! and a plain reverse proxy written for this bench: the same axum server and hyper-util client,
//! forwarding to the same gateway, no E2EE. The proxies' CPU is the proxy process's own
//! (`CLOCK_PROCESS_CPUTIME_ID`, read by that process when the parent asks between phases), so
//! neither the gateway nor the load generator is counted, and it is precise to the nanosecond
//! where `/proc/<pid>/stat` counts 10 ms ticks. A process of its own, rather than dedicated
//! runtime threads in one process, also keeps the gateway's and the load's allocator, caches and
//! threads out of what is counted.
//!
//! The crypto the proxy's CPU is compared with runs in that same process on the same fields: one
//! seal of the prompt's field, one open of the answer's, one open of a stream event's, the
//! exchange's client key (generated, its public key in hex) and one Ed25519 check of a
//! receipt-sized document, each measured two ways in thread CPU time: 1,000 in a loop between
//! the rounds (the floor: warm caches), and "in place", one of each every 2 ms on a thread of
//! the proxy process while the E2EE phases run (what the same operation costs among the proxy's
//! and the machine's other work; that thread's CPU is subtracted from the phase's;
//! `PROXY_BENCH_IN_PLACE=0` leaves it out).
//!
//! Phases (each against the same gateway, the same fields):
//! - buffered: `PROXY_BENCH_REQUESTS` (default 3000) short chat completions, one encrypted field
//!   each way, `PROXY_BENCH_CONCURRENCY` (default 32) at a time, through the E2EE proxy with
//!   receipts off, the plain proxy, and the E2EE proxy verifying receipts (until every check of
//!   the phase ran); in `PROXY_BENCH_ROUNDS` (default 5) interleaved rounds, each followed by the
//!   crypto in a loop;
//! - streamed: `PROXY_BENCH_STREAMS` (default 100) concurrent streams of `PROXY_BENCH_EVENTS`
//!   (default 100) events, one encrypted field each, through the E2EE proxy and the plain proxy,
//!   `PROXY_BENCH_STREAM_ROUNDS` (default 3) times. The gateway paces events
//!   `PROXY_BENCH_EVENT_MS` (default 20 ms) apart, as a model does: all streams are open at once
//!   in both phases (the same concurrency, reported), and each event arrives on its own, so
//!   neither phase batches events into fewer reads than the other.
//!
//! Ratios, each taken within its round (the machine's speed drifts over seconds when it is
//! shared) against the crypto in a loop measured around that round, the median reported, and
//! in brackets against the crypto in place (targets):
//! - E2EE proxy CPU per buffered request ÷ (seal + open) (≤ 1.5);
//! - (E2EE proxy − seal − open) ÷ plain proxy, per buffered request (≤ 2), and the same with the
//!   exchange's client key also left out;
//! - (E2EE proxy − plain proxy) per streamed event ÷ one open (≤ 1.1);
//! - what verifying receipts in the background adds per exchange, ÷ one Ed25519 check.
//!
//! `PROXY_BENCH_CALLGRIND=1` runs the proxy process under `valgrind --tool=callgrind` with
//! instrumentation off, switches it on (`callgrind_control --instr=on`) for a fixed number of
//! requests (`PROXY_BENCH_PROFILE_REQUESTS`, default 200) or streams
//! (`PROXY_BENCH_PROFILE_STREAMS`, default 10) per phase after a warm-up, then for 20 of each
//! crypto operation, and dumps each to `target/proxy-callgrind/callgrind.out.<phase>`:
//! instructions per request, per event and per operation, which repeat on a shared machine where
//! time does not (user space only: the kernel's share of the HTTP work is not counted). Read one
//! with `callgrind_annotate --inclusive=yes target/proxy-callgrind/callgrind.out.<phase>`.
//!
//! Not run by `cargo test` (a `harness = false` bench that does nothing unless cargo passes
//! `--bench`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aci_proxy::{Proxy, ProxyConfig, ReceiptMode};
use aci_test_gateway::{Fault, GatewayConfig, TestGateway, UpstreamRequest, UpstreamResponse};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower_aci::attest::Policy;
use tower_aci::protocol::aad;
use tower_aci::protocol::{
    PublicKey, SecretKey, Suite,
    kat::{open, seal},
};

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
        _ => println!(
            "proxy: run it with `cargo bench -p aci-proxy --bench proxy --no-default-features --features local-test-gateway`"
        ),
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

/// The cryptography of one exchange, on the fields the bench sends, in this process: what the
/// proxy's CPU is compared with.
struct Crypto {
    suite: Suite,
    gateway_key: PublicKey,
    client: SecretKey,
    req_aad: Vec<u8>,
    answer: String,
    res_aad: Vec<u8>,
    event: String,
    ev_aad: Vec<u8>,
    signer: ed25519_dalek::SigningKey,
    doc: Vec<u8>,
    sig: ed25519_dalek::Signature,
}

/// What [`Crypto`] measures, in order.
const OPS: [&str; 5] = ["seal", "open", "open_event", "client_key", "ed25519"];
const SEAL: usize = 0;
const OPEN: usize = 1;
const OPEN_EVENT: usize = 2;
const CLIENT_KEY: usize = 3;
const ED25519: usize = 4;

impl Crypto {
    fn new(suite: Suite, gateway_key: PublicKey) -> Crypto {
        use ed25519_dalek::Signer;
        let rng = &mut rand_core::OsRng;
        let nonce = "ab".repeat(32);
        let ts = 1_750_000_000;
        let client = SecretKey::generate(suite, rng);
        let res_aad = aad::response(suite, "choices.0.message.content", "chatcmpl-1", MODEL, &nonce, ts);
        let ev_aad = aad::response(suite, "choices.0.delta.content", "chatcmpl-bench", MODEL, &nonce, ts);
        let signer = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        // About the size of a receipt's signed document.
        let doc = vec![b'r'; 1500];
        Crypto {
            suite,
            req_aad: aad::request(suite, "messages.0.content", MODEL, &nonce, ts),
            answer: seal(&client.public_key(), ANSWER.as_bytes(), &res_aad, rng),
            event: seal(&client.public_key(), token(42).as_bytes(), &ev_aad, rng),
            gateway_key,
            client,
            res_aad,
            ev_aad,
            sig: signer.sign(&doc),
            signer,
            doc,
        }
    }

    /// Run operation `op` (an index into [`OPS`]) once.
    fn run(&self, op: usize) {
        let rng = &mut rand_core::OsRng;
        match op {
            SEAL => drop(std::hint::black_box(seal(&self.gateway_key, PROMPT.as_bytes(), &self.req_aad, rng))),
            OPEN => drop(std::hint::black_box(open(&self.client, &self.answer, &self.res_aad).unwrap())),
            OPEN_EVENT => drop(std::hint::black_box(open(&self.client, &self.event, &self.ev_aad).unwrap())),
            // The exchange's own key: generated, its public key in hex for `X-Client-Pub-Key`.
            CLIENT_KEY => drop(std::hint::black_box(SecretKey::generate(self.suite, rng).public_key().to_hex())),
            _ => {
                use ed25519_dalek::Verifier;
                self.signer.verifying_key().verify(std::hint::black_box(&self.doc), &self.sig).unwrap()
            }
        }
    }

    /// Each operation's cost in a tight loop (this thread's CPU time, ns): the floor, with warm
    /// caches and predictors.
    fn hot(&self) -> [f64; 5] {
        std::array::from_fn(|op| {
            for _ in 0..100 {
                self.run(op);
            }
            let n = 1000;
            let t = cpu_time::ThreadTime::now();
            for _ in 0..n {
                self.run(op);
            }
            t.elapsed().as_nanos() as f64 / f64::from(n)
        })
    }

    /// Until `stop`: every 2 ms, each operation of `ops` once, timed alone (this thread's CPU
    /// time). What the same operations cost in place, while the proxy and the machine's other
    /// work run between them: (count, ns per operation, this thread's CPU in all, ns).
    fn sparse(&self, ops: &[usize], stop: &AtomicBool) -> (u64, [f64; 5], u64) {
        let all = cpu_time::ThreadTime::now();
        let (mut n, mut ns) = (0u64, [0u64; 5]);
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(2));
            for &op in ops {
                let t = cpu_time::ThreadTime::now();
                self.run(op);
                ns[op] += t.elapsed().as_nanos() as u64;
            }
            n += 1;
        }
        (n, ns.map(|x| x as f64 / n.max(1) as f64), all.elapsed().as_nanos() as u64)
    }
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
            let config = ProxyConfig::default().gateway(gateway.clone()).receipts(receipts).with_policy(policy(suite));
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
        let (verify, verify_url) = e2ee(ReceiptMode::Background).await;
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        let plain = Plain { base: gateway.clone(), client: Client::builder(TokioExecutor::new()).build(tcp) };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_url = format!("http://{}", listener.local_addr().unwrap());
        let router = axum::Router::new().fallback(plain_forward).with_state(plain);
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        reply(&format!("{off_url} {verify_url} {plain_url}"));

        let gateway_key = *off.keys().current().unwrap().e2ee_key().public_key();
        let crypto = Arc::new(Crypto::new(suite, gateway_key));
        let mut rx = commands();
        let mut probe = None;
        while let Some(cmd) = rx.recv().await {
            let mut words = cmd.split(' ');
            match words.next().unwrap_or_default() {
                "cpu" => reply(&cpu_time::ProcessTime::now().as_duration().as_nanos().to_string()),
                "drain" => {
                    // The background receipt checks of the verifying proxy: all done.
                    verify.finish().await;
                    let counts = &verify.status()["counts"];
                    reply(&format!("{} {}", counts["receipts_verified"], counts["receipts_failed"]));
                }
                // `probe seal open client_key`: the sparse measurement, on its own thread.
                "probe" => {
                    let ops: Vec<usize> =
                        words.filter(|w| !w.is_empty()).map(|w| OPS.iter().position(|o| *o == w).unwrap()).collect();
                    let stop = Arc::new(AtomicBool::new(false));
                    let (flag, crypto) = (stop.clone(), crypto.clone());
                    probe = Some((stop, std::thread::spawn(move || crypto.sparse(&ops, &flag))));
                    reply("ok");
                }
                "probe-end" => {
                    let (stop, handle) = probe.take().unwrap();
                    stop.store(true, Ordering::Relaxed);
                    let (n, ns, cpu) = handle.join().unwrap();
                    reply(&format!("{n} {cpu} {}", ns.map(|c| format!("{c:.0}")).join(" ")));
                }
                // `run seal 20`: one operation, n times (under callgrind).
                "run" => {
                    let name = words.next();
                    let op = OPS.iter().position(|o| Some(*o) == name).unwrap();
                    let n: usize = words.next().unwrap().parse().unwrap();
                    let crypto = crypto.clone();
                    tokio::task::spawn_blocking(move || (0..n).for_each(|_| crypto.run(op))).await.unwrap();
                    reply("ok");
                }
                "crypto" => {
                    let crypto = crypto.clone();
                    let costs = tokio::task::spawn_blocking(move || crypto.hot()).await.unwrap();
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
    let rounds: usize = env_or("PROXY_BENCH_ROUNDS", 5);
    let stream_rounds_n: usize = env_or("PROXY_BENCH_STREAM_ROUNDS", 3);
    let streams: usize = env_or("PROXY_BENCH_STREAMS", 100);
    let events: usize = env_or("PROXY_BENCH_EVENTS", 100);
    let event_ms: u64 = env_or("PROXY_BENCH_EVENT_MS", 20);
    let callgrind = std::env::var("PROXY_BENCH_CALLGRIND").is_ok_and(|v| v == "1");

    // The workspace's target directory (this crate sits in crates/aci-proxy).
    let target = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target");
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

    // Rounds: the crypto in a loop, then each proxy, then the crypto again. A ratio is taken
    // within its round (the machine's speed drifts over seconds when it is shared) and the
    // median over the rounds is reported.
    let mut hot = vec![hot_costs(&mut proxy)];
    let mut rounds_data: Vec<Round> = Vec::new();
    let mut walls = [0f64; 3];
    let mut in_place = Sparse::default();
    let per_round = requests / rounds.max(1);
    for _ in 0..rounds.max(1) {
        let mut cpu = [0f64; 3];
        for (i, url) in [&urls.off, &urls.plain, &urls.verify].into_iter().enumerate() {
            let t0 = Instant::now();
            let (ns, sparse) = measured(&mut proxy, "seal open client_key", i == 2, || {
                rt.block_on(buffered(&http, url, per_round, concurrency));
            });
            walls[i] += t0.elapsed().as_secs_f64();
            cpu[i] = ns / per_round as f64 / 1000.0;
            if i == 0 {
                in_place.add(&sparse);
            }
        }
        hot.push(hot_costs(&mut proxy));
        let floor = mean2(&hot[hot.len() - 2], &hot[hot.len() - 1]);
        rounds_data.push(Round { per_req: cpu, per_event: [f64::NAN; 2], floor });
    }
    let mut stream_rounds: Vec<Round> = Vec::new();
    let mut stream_stats = Vec::new();
    for _ in 0..stream_rounds_n.max(1) {
        let mut per_event = [0f64; 2];
        for (i, url) in [&urls.off, &urls.plain].into_iter().enumerate() {
            let t0 = Instant::now();
            let mut stats = (0.0, 0, 0);
            let (ns, sparse) = measured(&mut proxy, "open_event", false, || {
                stats = rt.block_on(streamed(&http, url, streams, events));
            });
            per_event[i] = ns / stats.2 as f64 / 1000.0;
            stream_stats.push((i, stats.0, stats.1, stats.2, t0.elapsed().as_secs_f64()));
            if i == 0 {
                in_place.add(&sparse);
            }
        }
        hot.push(hot_costs(&mut proxy));
        let floor = mean2(&hot[hot.len() - 2], &hot[hot.len() - 1]);
        stream_rounds.push(Round { per_req: [f64::NAN; 3], per_event, floor });
    }
    drop(proxy);
    drop(gateway);

    let floor: [f64; 5] = std::array::from_fn(|op| median(hot.iter().map(|c| c[op]).collect()) / 1000.0);
    let placed = in_place.means().map(|ns| ns / 1000.0);
    let n = (per_round * rounds.max(1)) as f64;
    let per_req: [f64; 3] = std::array::from_fn(|i| median(rounds_data.iter().map(|r| r.per_req[i]).collect()));
    let per_event: [f64; 2] = std::array::from_fn(|i| median(stream_rounds.iter().map(|r| r.per_event[i]).collect()));

    println!("-- the cryptography of one exchange, in the proxy process (µs of thread CPU)");
    println!("{:<44} {:>9} {:>9}   in a loop, at each measurement", "", "in a loop", "in place");
    for (op, what) in [
        (SEAL, format!("seal of the prompt's field ({} B)", PROMPT.len())),
        (OPEN, format!("open of the answer's field ({} B)", ANSWER.len())),
        (OPEN_EVENT, "open of a stream event's field".to_owned()),
        (CLIENT_KEY, "the exchange's client key (generate, hex)".to_owned()),
        (ED25519, "one Ed25519 check (1.5 KB)".to_owned()),
    ] {
        let placed = if op == ED25519 { "—".to_owned() } else { format!("{:.1}", placed[op]) };
        let samples = hot.iter().map(|c| format!("{:.0}", c[op] / 1000.0)).collect::<Vec<_>>().join(" ");
        println!("{what:<44} {:>9.1} {placed:>9}   {samples}", floor[op]);
    }
    println!(
        "in a loop: 1,000 in a row, between the rounds (median shown); in place: one of each every 2 ms on a thread of \
         the proxy process during the E2EE phases ({} samples; its CPU is left out of the phases')",
        in_place.n
    );
    println!(
        "-- buffered: {n} requests per proxy in {rounds} interleaved rounds, {concurrency} concurrent (median of the rounds)"
    );
    for (name, i) in [("E2EE, receipts off", 0), ("plain proxy", 1), ("E2EE, receipts verified", 2)] {
        let each = rounds_data.iter().map(|r| format!("{:.0}", r.per_req[i])).collect::<Vec<_>>().join(" ");
        println!(
            "{name:<26} proxy CPU {:>7.1} µs/request   ({:.0} requests/s wall; rounds: {each})",
            per_req[i],
            n / walls[i]
        );
    }
    println!(
        "-- streamed: {streams} streams × {events} events, one every {event_ms} ms per stream, {} rounds",
        stream_rounds_n.max(1)
    );
    for (name, i) in [("E2EE", 0), ("plain proxy", 1)] {
        let each = stream_rounds.iter().map(|r| format!("{:.1}", r.per_event[i])).collect::<Vec<_>>().join(" ");
        let (mut mean, mut peak, mut wall) = (0.0, 0, 0.0);
        for &(_, m, p, _, w) in stream_stats.iter().filter(|s| s.0 == i) {
            mean += m / stream_rounds_n.max(1) as f64;
            peak = peak.max(p);
            wall += w / stream_rounds_n.max(1) as f64;
        }
        println!(
            "{name:<26} proxy CPU {:>7.2} µs/event   ({wall:.2} s a round; streams in flight: mean {mean:.1}, peak {peak}; rounds: {each})",
            per_event[i]
        );
    }
    let crypto = |c: &[f64; 5]| (c[SEAL] + c[OPEN]) / 1000.0;
    let r1 = median(rounds_data.iter().map(|r| r.per_req[0] / crypto(&r.floor)).collect());
    let r2 = median(rounds_data.iter().map(|r| (r.per_req[0] - crypto(&r.floor)) / r.per_req[1]).collect());
    let r2k = median(
        rounds_data
            .iter()
            .map(|r| (r.per_req[0] - crypto(&r.floor) - r.floor[CLIENT_KEY] / 1000.0) / r.per_req[1])
            .collect(),
    );
    let r3 = median(
        stream_rounds.iter().map(|r| (r.per_event[0] - r.per_event[1]) / (r.floor[OPEN_EVENT] / 1000.0)).collect(),
    );
    let sum = placed[SEAL] + placed[OPEN];
    println!("-- ratios: median of the rounds, each against the crypto in a loop in its round [in place] (target)");
    println!(
        "E2EE proxy per request ÷ (seal + open): {:.1} / {:.1} = {r1:.2} [{:.2}] (≤ 1.5)",
        per_req[0],
        floor[SEAL] + floor[OPEN],
        per_req[0] / sum
    );
    println!(
        "(E2EE proxy − seal − open) ÷ plain proxy: {:.1} / {:.1} = {r2:.2} [{:.2}] (≤ 2)",
        per_req[0] - floor[SEAL] - floor[OPEN],
        per_req[1],
        (per_req[0] - sum) / per_req[1]
    );
    println!(
        "  the same, the exchange's client key (crypto outside seal + open) left out as well: {r2k:.2} [{:.2}]",
        (per_req[0] - sum - placed[CLIENT_KEY]) / per_req[1]
    );
    println!(
        "(E2EE − plain) per event ÷ one open: {:.2} / {:.2} = {r3:.3} [{:.3}] (≤ 1.1)",
        per_event[0] - per_event[1],
        floor[OPEN_EVENT],
        (per_event[0] - per_event[1]) / placed[OPEN_EVENT]
    );
    let receipt = median(rounds_data.iter().map(|r| r.per_req[2] - r.per_req[0]).collect());
    println!(
        "receipts verified in the background add {receipt:.1} µs per exchange = {:.2}× one Ed25519 check ({:.1} µs)",
        receipt / floor[ED25519],
        floor[ED25519]
    );
}

/// One round's figures: µs per request (E2EE, plain, E2EE verifying) or per event (E2EE,
/// plain), and the crypto in a loop around it (ns).
struct Round {
    per_req: [f64; 3],
    per_event: [f64; 2],
    floor: [f64; 5],
}

fn mean2(a: &[f64; 5], b: &[f64; 5]) -> [f64; 5] {
    std::array::from_fn(|i| (a[i] + b[i]) / 2.0)
}

/// The crypto in a loop, in the proxy process (ns per operation).
fn hot_costs(proxy: &mut Proc) -> [f64; 5] {
    let v: Vec<f64> = proxy.ask("crypto").split(' ').map(|x| x.parse().unwrap()).collect();
    std::array::from_fn(|i| v[i])
}

/// The sparse crypto measurements of several phases, summed.
#[derive(Default)]
struct Sparse {
    n: u64,
    sum: [f64; 5],
    count: [u64; 5],
}

impl Sparse {
    fn add(&mut self, other: &(u64, Vec<(usize, f64)>)) {
        self.n += other.0;
        for &(op, ns) in &other.1 {
            self.sum[op] += ns * other.0 as f64;
            self.count[op] += other.0;
        }
    }

    fn means(&self) -> [f64; 5] {
        std::array::from_fn(|op| self.sum[op] / self.count[op].max(1) as f64)
    }
}

/// The proxy process's CPU (ns) while `work` runs (and, with `drain`, until the background
/// receipt checks it started are done), without the sparse crypto measurement of `ops` that
/// runs beside it; and that measurement: (samples, (operation, ns each)).
fn measured(proxy: &mut Proc, ops: &str, drain: bool, work: impl FnOnce()) -> (f64, (u64, Vec<(usize, f64)>)) {
    // `PROXY_BENCH_IN_PLACE=0`: no crypto beside the phases (to see what it changes).
    let ops = if env_or("PROXY_BENCH_IN_PLACE", 1) == 0 { "" } else { ops };
    proxy.ask(&format!("probe {ops}"));
    let c0 = proxy.cpu_ns();
    work();
    if drain {
        let counts = proxy.ask("drain");
        assert!(counts.ends_with(" 0"), "receipt checks failed (verified, failed): {counts}");
    }
    let c1 = proxy.cpu_ns();
    let reply = proxy.ask("probe-end");
    let v: Vec<f64> = reply.split(' ').map(|x| x.parse().unwrap()).collect();
    let (n, probe_cpu) = (v[0] as u64, v[1]);
    let each = ops
        .split(' ')
        .filter(|o| !o.is_empty())
        .map(|o| OPS.iter().position(|x| *x == o).unwrap())
        .map(|op| (op, v[2 + op]))
        .collect();
    ((c1 - c0) as f64 - probe_cpu, (n, each))
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
    let mut counted = |phase: &str, units: usize, unit: &str, work: &mut dyn FnMut(&mut Proc)| -> f64 {
        control(&["--zero"]);
        control(&["--instr=on"]);
        work(proxy);
        control(&["--instr=off"]);
        control(&[&format!("--dump={phase}")]);
        let (dump, ir) = latest_dump(dir);
        let file = dir.join(format!("callgrind.out.{phase}"));
        std::fs::rename(&dump, &file).unwrap();
        let each = ir as f64 / units as f64;
        println!("{phase:<18} {each:>10.0} instructions per {unit:<8} ({ir} in {units}; {})", file.display());
        each
    };
    let mut ir = std::collections::HashMap::new();
    for (phase, url, stream) in [
        ("e2ee-buffered", &urls.off, false),
        ("plain-buffered", &urls.plain, false),
        ("verify-buffered", &urls.verify, false),
        ("e2ee-stream", &urls.off, true),
        ("plain-stream", &urls.plain, true),
    ] {
        let units = if stream { streams * events } else { requests };
        let unit = if stream { "event" } else { "request" };
        let each = counted(phase, units, unit, &mut |proxy| {
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
        });
        ir.insert(phase, each);
    }
    // The crypto alone, in the same process: 20 of each.
    for (op, name) in OPS.iter().enumerate() {
        let each = counted(&format!("crypto-{name}"), 20, name, &mut |proxy| {
            proxy.ask(&format!("run {name} 20"));
        });
        ir.insert(OPS[op], each);
    }
    println!("-- in instructions (user space only: the kernel's share of the HTTP work is not counted)");
    println!(
        "E2EE proxy per request ÷ (seal + open): {:.2}; (E2EE − seal − open) ÷ plain: {:.2}; without the client key: {:.2}",
        ir["e2ee-buffered"] / (ir["seal"] + ir["open"]),
        (ir["e2ee-buffered"] - ir["seal"] - ir["open"]) / ir["plain-buffered"],
        (ir["e2ee-buffered"] - ir["seal"] - ir["open"] - ir["client_key"]) / ir["plain-buffered"],
    );
    println!(
        "(E2EE − plain) per event ÷ one open: {:.3}; receipts verified add {:.0} per exchange = {:.2}× one Ed25519 check",
        (ir["e2ee-stream"] - ir["plain-stream"]) / ir["open_event"],
        ir["verify-buffered"] - ir["e2ee-buffered"],
        (ir["verify-buffered"] - ir["e2ee-buffered"]) / ir["ed25519"],
    );
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
