#![allow(missing_docs)]
//! Endurance: many concurrent SSE streams through `E2eeLayer` against the local gateway over
//! loopback, with the gateway's E2EE keys rotated mid-run.
//!
//! ```text
//! cargo bench --bench soak                                     # pure Rust
//! cargo bench --bench soak --features libsecp256k1,aws-lc       # fast backends
//! ```
//!
//! Bounded in count and time: `SOAK_STREAMS` streams (default 1000) of `SOAK_EVENTS` events
//! (default 500), started over `SOAK_RAMP_MS` (default 4000 ms); the run is abandoned (and
//! counted as failed) after `SOAK_DEADLINE_SECS` (default 900 s). `SOAK_SUITE` is `secp256k1`
//! (default) or `x25519`. Only loopback is used. Not run by `cargo test` (a `harness = false`
//! bench that does nothing unless cargo passes `--bench`).
//!
//! The gateway runs in a child process (this binary again, `TOWER_ACI_SOAK_ROLE=gateway`), so
//! the CPU time and peak RSS reported are the client's alone. Two phases run in one process:
//! the same streams in plaintext without the layer (the transport's own cost: HTTP, sockets,
//! Tokio), then through `KeyMismatchRetry` → `E2eeLayer`. When half the E2EE streams have been
//! started the gateway rotates its E2EE keys: streams in flight must finish unharmed, and
//! requests encrypted to the old key must recover through `KeyMismatchRetry` and the
//! provider's refresher (which spaces refreshes 10 s apart by default, so those streams wait).
//!
//! Both phases run at the same concurrency: each stream, once its answer's head arrived, waits
//! until every stream of its phase has one (a gate), then reads its events. Without it the
//! plaintext streams, which finish in a few milliseconds, never overlapped (a peak of 4 in
//! flight against 998 through the layer), and the per-event comparison set a lone stream's
//! reads against a thousand streams' batched ones. The peak and the mean number of streams in
//! flight are reported for both phases.
//!
//! Reported:
//! - errors: any failed request, non-200 answer, body error, missing or wrong event, count
//!   mismatch (must be 0);
//! - events/s per core: decrypted events / the client process's CPU seconds (utime + stime from
//!   `/proc/self/stat`), against 1 / (the cost of one `open` of such an event field, measured in
//!   this process before the run);
//! - added latency per event, p50/p99: from the moment the layer's body read the frame that
//!   completed an encrypted event from the connection to the moment it handed out the decrypted
//!   event (a wrapper under the layer timestamps terminators as frames come up, the consumer
//!   above timestamps them as they come out);
//! - peak RSS of the client (`VmHWM`).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aci_test_gateway::{GatewayConfig, TestGateway, UpstreamResponse};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower::retry::RetryLayer;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_aci::E2eeLayer;
use tower_aci::attest::{KeyHandle, KeyProvider, Policy};
use tower_aci::e2ee::{KeyMismatchRetry, RequestBody};
use tower_aci::protocol::{
    SecretKey, Suite,
    kat::{open, seal},
};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn suite() -> Suite {
    match std::env::var("SOAK_SUITE").as_deref() {
        Ok("x25519") => Suite::X25519,
        _ => Suite::Secp256k1,
    }
}

fn main() {
    if std::env::var("TOWER_ACI_SOAK_ROLE").as_deref() == Ok("gateway") {
        gateway_main();
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!("soak: run it with `cargo bench --bench soak`");
        return;
    }
    client_main();
}

// ---------------------------------------------------------------------------------------------
// The gateway process.

fn gateway_main() {
    let events: usize = env_or("SOAK_EVENTS", 500);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let upstream = move |req: aci_test_gateway::UpstreamRequest| {
            if !req.stream {
                return UpstreamResponse::echo(&req);
            }
            let chunks: Vec<Value> = (0..events)
                .map(|i| {
                    json!({"id": "chatcmpl-soak", "object": "chat.completion.chunk", "model": "m",
                    "choices": [{"index": 0, "delta": {"content": format!("token{i} ")}, "finish_reason": null}]})
                })
                .collect();
            UpstreamResponse::sse_events(chunks, true)
        };
        let gw = TestGateway::start(GatewayConfig::new().upstream(upstream)).await.unwrap();
        println!("{}", gw.base_url());
        std::io::stdout().flush().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Until the client closes our stdin.
        while let Some(line) = rx.recv().await {
            if line.trim() == "rotate" {
                gw.rotate_e2ee_keys();
                println!("rotated");
                std::io::stdout().flush().unwrap();
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Measurements.

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Latency histogram in microseconds: 1 µs buckets to 10 ms, 100 µs to 1 s, 10 ms to 100 s.
struct Histogram {
    buckets: Vec<AtomicU64>,
}

impl Histogram {
    fn new() -> Self {
        Histogram { buckets: (0..10_000 + 9_900 + 9_900).map(|_| AtomicU64::new(0)).collect() }
    }

    fn bucket(us: u64) -> usize {
        if us < 10_000 {
            us as usize
        } else if us < 1_000_000 {
            10_000 + ((us - 10_000) / 100) as usize
        } else {
            (19_900 + ((us - 1_000_000) / 10_000) as usize).min(29_799)
        }
    }

    fn lower_bound(idx: usize) -> u64 {
        if idx < 10_000 {
            idx as u64
        } else if idx < 19_900 {
            10_000 + (idx as u64 - 10_000) * 100
        } else {
            1_000_000 + (idx as u64 - 19_900) * 10_000
        }
    }

    fn record(&self, d: Duration) {
        self.buckets[Self::bucket(d.as_micros() as u64)].fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn percentile(&self, p: f64) -> u64 {
        let total = self.count();
        let target = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= target {
                return Self::lower_bound(i);
            }
        }
        0
    }
}

/// Counts SSE event terminators (`\n\n`) across frame boundaries.
#[derive(Default)]
struct Terminators {
    last_was_lf: bool,
}

impl Terminators {
    fn scan(&mut self, data: &[u8], mut each: impl FnMut(usize)) {
        for (i, &b) in data.iter().enumerate() {
            if b == b'\n' {
                if self.last_was_lf {
                    each(i);
                    self.last_was_lf = false;
                    continue;
                }
                self.last_was_lf = true;
            } else if b != b'\r' {
                self.last_was_lf = false;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Under the layer: timestamps each encrypted event as the layer reads it off the connection.

type Arrivals = Arc<Mutex<VecDeque<Instant>>>;

#[derive(Clone)]
struct Timed<S> {
    inner: S,
    arrivals: Arrivals,
    attempts: Arc<AtomicUsize>,
}

impl<S, ReqB> Service<Request<ReqB>> for Timed<S>
where
    S: Service<Request<ReqB>, Response = Response<hyper::body::Incoming>>,
    S::Future: Send + 'static,
{
    type Response = Response<TimedBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<TimedBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let arrivals = self.arrivals.clone();
        arrivals.lock().unwrap().clear();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|inner| TimedBody { inner, arrivals, terminators: Terminators::default() }))
        })
    }
}

struct TimedBody {
    inner: hyper::body::Incoming,
    arrivals: Arrivals,
    terminators: Terminators,
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let now = Instant::now();
                let mut q = this.arrivals.lock().unwrap();
                this.terminators.scan(data, |_| q.push_back(now));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------------------
// The client process.

#[derive(Default)]
struct Tally {
    errors: AtomicUsize,
    events: AtomicU64,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    started: AtomicUsize,
    unmatched_terminators: AtomicUsize,
    /// Sum of the streams' durations, µs (÷ the phase's wall time: the mean concurrency).
    stream_us: AtomicU64,
}

/// Holds every stream of a phase after its answer's head until all of them have one, so that
/// both phases stream at the same concurrency. A stream that fails before its head arrives
/// (counted as an error) still passes, so the gate always opens.
struct Gate {
    arrived: AtomicUsize,
    total: usize,
    open: tokio::sync::Notify,
}

impl Gate {
    fn new(total: usize) -> Self {
        Gate { arrived: AtomicUsize::new(0), total, open: tokio::sync::Notify::new() }
    }

    fn is_open(&self) -> bool {
        self.arrived.load(Ordering::Acquire) >= self.total
    }

    /// Arrive without waiting.
    fn pass(&self) {
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 >= self.total {
            self.open.notify_waiters();
        }
    }

    /// Arrive, and wait until every stream has.
    async fn wait(&self) {
        let notified = self.open.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        self.pass();
        while !self.is_open() {
            notified.as_mut().await;
            notified.set(self.open.notified());
            notified.as_mut().enable();
        }
    }
}

async fn one_stream<S, B>(
    svc: S,
    url: &str,
    events: usize,
    arrivals: &Arrivals,
    hist: &Histogram,
    tally: &Tally,
    gate: &Gate,
) where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Display,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "Count for me."}]});
    let req = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let res = match svc.oneshot(req).await {
        Ok(res) => res,
        Err(e) => {
            eprintln!("request failed: {e}");
            tally.errors.fetch_add(1, Ordering::Relaxed);
            gate.pass();
            return;
        }
    };
    if res.status() != 200 {
        eprintln!("status {}", res.status());
        tally.errors.fetch_add(1, Ordering::Relaxed);
        gate.pass();
        return;
    }
    gate.wait().await;
    let mut body = res.into_body();
    let mut terminators = Terminators::default();
    let mut pending_event: Vec<u8> = Vec::new();
    let mut seen = 0usize;
    let mut done = false;
    let mut bad = false;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                eprintln!("body error after {seen} events: {e}");
                bad = true;
                break;
            }
        };
        let Some(data) = frame.data_ref() else { continue };
        let now = Instant::now();
        let mut start = 0;
        let mut ends = Vec::new();
        terminators.scan(data, |i| ends.push(i));
        for end in ends {
            pending_event.extend_from_slice(&data[start..=end]);
            start = end + 1;
            match arrivals.lock().unwrap().pop_front() {
                Some(t) => hist.record(now - t),
                None => {
                    tally.unmatched_terminators.fetch_add(1, Ordering::Relaxed);
                }
            }
            if pending_event.starts_with(b"data: [DONE]") {
                done = true;
            } else if pending_event.starts_with(b"data: ") {
                let want = format!("token{seen} ");
                if memchr::memmem::find(&pending_event, want.as_bytes()).is_none() {
                    eprintln!("event {seen} lacks {want:?}");
                    bad = true;
                }
                seen += 1;
            }
            pending_event.clear();
        }
        pending_event.extend_from_slice(&data[start..]);
    }
    tally.events.fetch_add(seen as u64, Ordering::Relaxed);
    if bad || !done || seen != events {
        if !bad {
            eprintln!("stream ended with {seen} of {events} events, [DONE] seen: {done}");
        }
        tally.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// CPU cost of one `open` of an event-sized field (this build's fastest backends), in seconds.
/// CPU time rather than wall time, as the events/s per core it is compared with.
fn open_cost(suite: Suite) -> f64 {
    let client = SecretKey::generate(suite, &mut rand_core::OsRng);
    let aad = tower_aci::protocol::aad::response(suite, "choices.0.delta.content", "chatcmpl-soak", "m", "n", 1);
    let field = seal(&client.public_key(), b"token123 ", &aad, &mut rand_core::OsRng);
    for _ in 0..200 {
        std::hint::black_box(open(&client, &field, &aad).unwrap());
    }
    let n = 10_000;
    let t = cpu_time::ThreadTime::now();
    for _ in 0..n {
        std::hint::black_box(open(&client, std::hint::black_box(&field), &aad).unwrap());
    }
    t.elapsed().as_secs_f64() / n as f64
}

/// User and system CPU seconds of the whole process so far.
fn cpu_split() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<u64>().unwrap() as f64 / 100.0, f[12].parse::<u64>().unwrap() as f64 / 100.0)
}

struct Params {
    streams: usize,
    events: usize,
    ramp: Duration,
    deadline: Duration,
    suite: Suite,
    base_url: String,
}

struct Phase {
    errors: usize,
    attempts: usize,
    peak_in_flight: usize,
    mean_in_flight: f64,
    events: u64,
    wall: Duration,
    user: f64,
    sys: f64,
    hist: Arc<Histogram>,
    unmatched: usize,
    rss_kib: u64,
}

impl Phase {
    fn cpu(&self) -> f64 {
        self.user + self.sys
    }

    fn cpu_per_event_us(&self) -> f64 {
        self.cpu() / self.events.max(1) as f64 * 1e6
    }
}

/// One phase: every stream plain (no layer), or through `KeyMismatchRetry` → `E2eeLayer`, with
/// the gateway's keys rotated (by writing to `rotate`) once half the streams have started.
fn run_phase(p: &Params, layered: bool, rotate: Option<&mut dyn Write>) -> Phase {
    // Peak RSS of this phase alone: "5" resets VmHWM (Linux ≥ 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let hist = Arc::new(Histogram::new());
    let tally = Arc::new(Tally::default());
    let attempts = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Gate::new(p.streams));
    let (streams, events) = (p.streams, p.events);
    let (finished, wall, (user, sys)) = rt.block_on(async {
        let plain: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let policy =
            Policy::builder().select_suite(p.suite).dangerous().accept_stub_quote().any_workload().build().unwrap();
        let provider =
            KeyProvider::builder(plain).base_url(p.base_url.parse().unwrap()).policy(policy).build().unwrap();
        let (keys, _refresher): (KeyHandle, _) = provider.spawn().unwrap();
        provider.establish().await.unwrap();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let e2ee_client: Client<HttpConnector, RequestBody<Full<Bytes>>> =
            Client::builder(TokioExecutor::new()).pool_max_idle_per_host(usize::MAX).build(connector.clone());
        let plain_client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).pool_max_idle_per_host(usize::MAX).build(connector);
        let url = format!("{}/v1/chat/completions", p.base_url);

        let (user0, sys0) = cpu_split();
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..streams {
            let (keys, url) = (keys.clone(), url.clone());
            let (e2ee_client, plain_client) = (e2ee_client.clone(), plain_client.clone());
            let (hist, tally, attempts, gate) = (hist.clone(), tally.clone(), attempts.clone(), gate.clone());
            let start = t0 + p.ramp.mul_f64(i as f64 / streams as f64);
            tasks.spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                tally.started.fetch_add(1, Ordering::Relaxed);
                let began = Instant::now();
                let n = tally.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                tally.peak_in_flight.fetch_max(n, Ordering::Relaxed);
                let arrivals: Arrivals = Arc::default();
                if layered {
                    let svc = ServiceBuilder::new()
                        .layer(RetryLayer::new(KeyMismatchRetry::new(keys.clone())))
                        .layer(E2eeLayer::new(keys))
                        .service(Timed { inner: e2ee_client, arrivals: arrivals.clone(), attempts });
                    one_stream(svc, &url, events, &arrivals, &hist, &tally, &gate).await;
                } else {
                    let svc = Timed { inner: plain_client, arrivals: arrivals.clone(), attempts };
                    one_stream(svc, &url, events, &arrivals, &hist, &tally, &gate).await;
                }
                tally.in_flight.fetch_sub(1, Ordering::Relaxed);
                tally.stream_us.fetch_add(began.elapsed().as_micros() as u64, Ordering::Relaxed);
            });
        }
        let rotation = {
            let tally = tally.clone();
            async move {
                if let Some(w) = rotate {
                    while tally.started.load(Ordering::Relaxed) < streams / 2 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    w.write_all(b"rotate\n").unwrap();
                    w.flush().unwrap();
                }
            }
        };
        let all = async {
            rotation.await;
            while let Some(r) = tasks.join_next().await {
                if r.is_err() {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        let finished = tokio::time::timeout(p.deadline, all).await.is_ok();
        let (user1, sys1) = cpu_split();
        (finished, t0.elapsed(), (user1 - user0, sys1 - sys0))
    });
    drop(rt);
    if !finished {
        println!("DEADLINE: the phase did not finish within {} s", p.deadline.as_secs());
        tally.errors.fetch_add(1, Ordering::Relaxed);
    }
    Phase {
        errors: tally.errors.load(Ordering::Relaxed),
        attempts: attempts.load(Ordering::Relaxed),
        peak_in_flight: tally.peak_in_flight.load(Ordering::Relaxed),
        mean_in_flight: tally.stream_us.load(Ordering::Relaxed) as f64 / wall.as_micros().max(1) as f64,
        events: tally.events.load(Ordering::Relaxed),
        wall,
        user,
        sys,
        hist,
        unmatched: tally.unmatched_terminators.load(Ordering::Relaxed),
        rss_kib: vm_hwm_kib(),
    }
}

fn report(name: &str, p: &Params, ph: &Phase) {
    println!("-- {name}");
    println!(
        "errors: {}   streams: {}   attempts (incl. key-mismatch retries): {}   concurrent: peak {}, mean {:.0}",
        ph.errors, p.streams, ph.attempts, ph.peak_in_flight, ph.mean_in_flight
    );
    println!(
        "events: {} in {:.2} s wall; client CPU {:.2} s (user {:.2}, sys {:.2}) = {:.2} µs/event → {:.0} events/s per core",
        ph.events,
        ph.wall.as_secs_f64(),
        ph.cpu(),
        ph.user,
        ph.sys,
        ph.cpu_per_event_us(),
        ph.events as f64 / ph.cpu()
    );
    println!(
        "added latency per event: p50 {} µs, p99 {} µs, p99.9 {} µs (n = {}, unmatched {})",
        ph.hist.percentile(0.50),
        ph.hist.percentile(0.99),
        ph.hist.percentile(0.999),
        ph.hist.count(),
        ph.unmatched
    );
    println!("peak RSS (VmHWM) of the client in this phase: {} KiB", ph.rss_kib);
}

fn client_main() {
    let streams: usize = env_or("SOAK_STREAMS", 1000);
    let events: usize = env_or("SOAK_EVENTS", 500);
    let ramp = Duration::from_millis(env_or("SOAK_RAMP_MS", 4000));
    let deadline = Duration::from_secs(env_or("SOAK_DEADLINE_SECS", 900));
    let suite = suite();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("TOWER_ACI_SOAK_ROLE", "gateway")
        .env("SOAK_EVENTS", events.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the gateway process");
    let mut gw_in = child.stdin.take().unwrap();
    let mut gw_out = BufReader::new(child.stdout.take().unwrap());
    let mut base_url = String::new();
    gw_out.read_line(&mut base_url).unwrap();
    let base_url = base_url.trim().to_owned();
    let rotations = Arc::new(AtomicUsize::new(0));
    let acks = rotations.clone();
    let reader = std::thread::spawn(move || {
        for line in gw_out.lines() {
            if line.map(|l| l.trim() == "rotated").unwrap_or(false) {
                acks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    println!(
        "soak: {streams} streams × {events} events, suite {}, ramp {} ms, gateway {base_url}",
        suite.algo(),
        ramp.as_millis()
    );
    let p = Params { streams, events, ramp, deadline, suite, base_url };

    // The open cost is sampled before, between and after the phases (the machine's speed drifts
    // with the host's load); the median is the reference.
    let mut opens = vec![open_cost(suite)];
    let plain = run_phase(&p, false, None);
    report("plain (no layer): the transport's own cost", &p, &plain);
    opens.push(open_cost(suite));
    let e2ee = run_phase(&p, true, Some(&mut gw_in));
    report("E2EE layer, keys rotated mid-run", &p, &e2ee);
    opens.push(open_cost(suite));
    drop(gw_in); // EOF: the gateway exits
    let _ = child.wait();
    let _ = reader.join();
    let samples: Vec<String> = opens.iter().map(|o| format!("{:.2}", o * 1e6)).collect();
    opens.sort_by(f64::total_cmp);
    let open_s = opens[1];
    println!(
        "one open of an event field (fastest compiled backend), CPU: {} µs before/between/after; median {:.2} µs",
        samples.join(" / "),
        open_s * 1e6
    );

    let per_core = e2ee.events as f64 / e2ee.cpu();
    let layer_us = e2ee.cpu_per_event_us() - plain.cpu_per_event_us();
    println!("-- summary");
    println!("gateway key rotations acknowledged: {}", rotations.load(Ordering::Relaxed));
    println!("errors: {} (plain {}, e2ee {})", plain.errors + e2ee.errors, plain.errors, e2ee.errors);
    println!("events/s per core {:.0} vs 1/open {:.0}: ratio {:.3}", per_core, 1.0 / open_s, per_core * open_s);
    println!(
        "the layer's CPU per event above plain streaming: {:.2} µs = {:.2}× one open ({:.2} µs)",
        layer_us,
        layer_us / (open_s * 1e6),
        open_s * 1e6
    );
}
