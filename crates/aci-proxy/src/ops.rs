//! What an operator needs from the proxy: probes (`/healthz`, `/readyz`), Prometheus metrics
//! (`/metrics`), a graceful stop (streams drain, then end with an error event; pending receipt
//! checks finish) and the time limit of one exchange.
//!
//! The probes and `/metrics` sit behind the guard like every route (Host, Origin, client key);
//! the operator listener (`--ops-listen`, [`Proxy::ops_router`](super::Proxy::ops_router))
//! serves them without the client key, behind a guard of its own.
//!
//! Metrics go through the `metrics` facade; the recorder is `metrics-exporter-prometheus`
//! without its own HTTP server (`default-features = false`), rendered by the proxy's own axum
//! route. It is the facade's maintained Prometheus recorder, so the library's metrics (feature
//! `metrics`) and the proxy's land in one registry with no bridge. The facade has one recorder
//! per process, so a library must not take it unasked: [`Proxy::start`](super::Proxy::start)
//! installs none; [`install_metrics_recorder`] does, and the `aci-proxy` binary calls it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::CONTENT_TYPE;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::{Notify, watch};

use crate::errors::ProxyError;
use crate::names;
use tower_aci::attest::KeyHandle;
use tower_aci::error::{Error, Result};

/// Buckets of the latency histograms (seconds): 5 ms to 10 min.
const LATENCY_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
/// Buckets of the per-event decrypt histogram (seconds): 10 µs to 100 ms.
const DECRYPT_BUCKETS: &[f64] = &[1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1];

/// The process-wide Prometheus recorder, once [`install_metrics_recorder`] installed it.
static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install a Prometheus recorder as the process's [`metrics`](https://docs.rs/metrics) recorder
/// and register the help texts of the library's and the proxy's metrics, so that every
/// [`Proxy`](super::Proxy) with [`ProxyConfig::metrics`](super::ProxyConfig::metrics) on serves
/// them at `GET /metrics`. The `aci-proxy` binary calls it; a program that embeds the proxy
/// calls it only if it wants these metrics in the Prometheus text format, since the facade
/// takes one recorder per process: [`Proxy::start`](super::Proxy::start) installs none.
///
/// Call it before the proxies start (what happens before it is not recorded). Calling it again
/// is harmless. Fails with a [`Config`](tower_aci::ErrorKind::Config) error when another recorder was
/// installed first (then install your own recorder's exporter instead; the library's metrics
/// reach it too).
///
/// ```no_run
/// # async fn run() -> tower_aci::Result<()> {
/// use aci_proxy::{Proxy, ProxyConfig, install_metrics_recorder};
///
/// install_metrics_recorder()?; // the process's one `metrics` recorder: Prometheus
/// let proxy = Proxy::start(ProxyConfig::default().local_test_gateway(true)).await?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await.unwrap();
/// axum::serve(listener, proxy.router()).await.unwrap(); // curl http://127.0.0.1:8787/metrics
/// # Ok(()) }
/// ```
pub fn install_metrics_recorder() -> Result<()> {
    match installed_recorder(true) {
        Some(_) => Ok(()),
        None => Err(Error::config(
            "cannot install the Prometheus metrics recorder: another `metrics` recorder is installed in this \
             process (the proxy's /metrics stays off; the library's metrics reach that recorder)",
        )),
    }
}

/// The recorder [`install_metrics_recorder`] installed; with `install`, install it first when
/// nobody tried yet.
fn installed_recorder(install: bool) -> Option<&'static PrometheusHandle> {
    if !install {
        return RECORDER.get().and_then(Option::as_ref);
    }
    RECORDER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("first_event_seconds".into()), LATENCY_BUCKETS))
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(tower_aci::telemetry::names::EVENT_DECRYPT_SECONDS.into()),
                        DECRYPT_BUCKETS,
                    )
                });
            match builder.map(PrometheusBuilder::install_recorder) {
                Ok(Ok(handle)) => {
                    describe();
                    Some(handle)
                }
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!("metrics: cannot install the Prometheus recorder ({e}); /metrics is off");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    tower_aci::telemetry::describe();
    describe_counter!(names::EXCHANGES, "Exchanges the proxy ended, by endpoint and outcome");
    describe_histogram!(names::REQUEST_SECONDS, Unit::Seconds, "From the request to the answer's last byte");
    describe_histogram!(names::FIRST_EVENT_SECONDS, Unit::Seconds, "From the request to a stream's first event");
    describe_gauge!(names::OPEN_STREAMS, "Streams being relayed now");
    describe_counter!(names::REFUSED, "Requests refused because they are outside E2EE v2");
    describe_gauge!(names::KEYSET_EXPIRES_IN, Unit::Seconds, "Seconds until the current keyset's not_after");
    describe_gauge!(names::KEYSET_CURRENT, "1 while an attested keyset is current (ready), else 0");
}

/// Why streams and exchanges in flight are cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abort {
    /// The exchange ran past `request_timeout`.
    Timeout,
    /// The proxy is stopping and the drain time ran out.
    Shutdown,
}

impl Abort {
    pub(crate) fn error(self) -> ProxyError {
        match self {
            Abort::Timeout => ProxyError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "request_timeout",
                "the exchange took longer than aci-proxy's --request-timeout",
            ),
            Abort::Shutdown => ProxyError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "proxy_shutting_down",
                "aci-proxy is shutting down and the stream did not finish within --shutdown-timeout; retry",
            ),
        }
    }

    pub(crate) fn outcome(self) -> &'static str {
        match self {
            Abort::Timeout => "timeout",
            Abort::Shutdown => "shutdown",
        }
    }
}

/// A future that resolves when an exchange must be cut short.
pub(crate) type AbortFuture = Pin<Box<dyn Future<Output = Abort> + Send>>;

/// Background work that must finish before the process exits (receipt checks, audit writes).
#[derive(Default)]
struct Tasks {
    running: AtomicUsize,
    idle: Notify,
}

/// The operator-facing state of a proxy.
pub(crate) struct Ops {
    /// Whether `GET /metrics` is served ([`ProxyConfig::metrics`](super::ProxyConfig::metrics)).
    serve_metrics: bool,
    pub(crate) request_timeout: Duration,
    stopping: AtomicBool,
    abort: watch::Sender<bool>,
    tasks: Arc<Tasks>,
    _upkeep: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Ops {
    fn drop(&mut self) {
        if let Some(t) = &self._upkeep {
            t.abort();
        }
    }
}

impl Ops {
    pub(crate) fn new(serve_metrics: bool, request_timeout: Duration) -> Ops {
        // No recorder is installed here: only one that install_metrics_recorder installed is used.
        let metrics = if serve_metrics { installed_recorder(false) } else { None };
        // Histograms are drained at render; upkeep bounds what accumulates between scrapes.
        let upkeep = metrics.map(|h| {
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    h.run_upkeep();
                }
            })
        });
        Ops {
            serve_metrics,
            request_timeout,
            stopping: AtomicBool::new(false),
            abort: watch::Sender::new(false),
            tasks: Arc::default(),
            _upkeep: upkeep,
        }
    }

    /// The recorder `/metrics` renders: `None` when metrics are off or none was installed.
    fn metrics(&self) -> Option<&'static PrometheusHandle> {
        if self.serve_metrics { installed_recorder(false) } else { None }
    }

    /// Whether the proxy is stopping (`/readyz` then answers 503).
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub(crate) fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// End every exchange still in flight (streams get an error event).
    pub(crate) fn abort_all(&self) {
        self.abort.send_replace(true);
    }

    /// Resolves when this exchange must end: its `request_timeout` passed, or the drain time of
    /// a shutdown ran out.
    pub(crate) fn abort_future(&self, started: tokio::time::Instant) -> AbortFuture {
        let mut rx = self.abort.subscribe();
        let deadline = started + self.request_timeout;
        Box::pin(async move {
            tokio::select! {
                _ = rx.wait_for(|stop| *stop) => Abort::Shutdown,
                () = tokio::time::sleep_until(deadline) => Abort::Timeout,
            }
        })
    }

    /// Run `work` in the background; [`idle`](Self::idle) waits for it.
    pub(crate) fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let tasks = self.tasks.clone();
        tasks.running.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            work.await;
            if tasks.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                tasks.idle.notify_waiters();
            }
        });
    }

    /// Background work still running.
    pub(crate) fn pending(&self) -> usize {
        self.tasks.running.load(Ordering::Acquire)
    }

    /// Wait until no background work runs.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.tasks.idle.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.pending() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// `GET /healthz`: 200 while the process serves.
pub(crate) async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// `GET /readyz`: 200 while an attested keyset is current and the proxy is not stopping, else
/// 503 with the reason.
pub(crate) fn readyz(ops: &Ops, keys: &KeyHandle) -> Response {
    if ops.stopping() {
        let body = serde_json::json!({"ready": false, "reason": "aci-proxy is shutting down"});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    match keys.current() {
        Ok(k) => axum::Json(serde_json::json!({
            "ready": true,
            "keyset": k.digest(),
            "not_after": k.not_after(),
            "expires_in": k.not_after().saturating_sub(keys.now()),
        }))
        .into_response(),
        Err(e) => {
            let body = serde_json::json!({"ready": false, "reason": e.to_string()});
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    }
}

/// `GET /metrics`: the Prometheus text format.
pub(crate) fn metrics(ops: &Ops, keys: &KeyHandle) -> Response {
    let Some(handle) = ops.metrics() else {
        let why = if ops.serve_metrics {
            "no metrics recorder is installed in this process: a program that embeds the proxy calls \
             aci_proxy::install_metrics_recorder() to serve them (aci-proxy does)"
        } else {
            "metrics are off in this aci-proxy"
        };
        return ProxyError::new(StatusCode::NOT_FOUND, "metrics_off", why).into_response();
    };
    // Gauges that depend on the time of the scrape.
    match keys.current() {
        Ok(k) => {
            metrics::gauge!(names::KEYSET_EXPIRES_IN).set(k.not_after() as f64 - keys.now() as f64);
            metrics::gauge!(names::KEYSET_CURRENT).set(1.0);
        }
        Err(_) => metrics::gauge!(names::KEYSET_CURRENT).set(0.0),
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
}
