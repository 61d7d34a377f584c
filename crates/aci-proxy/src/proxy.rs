//! The proxy itself: its state, its routes and handlers, the exchange from request to archived
//! receipt, and the serving loop with its graceful stop. `lib.rs` re-exports [`Proxy`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::extract::{Request as AxumRequest, State};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::{any, get, post};
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use tower::ServiceExt;

use crate::access::ExchangeLog;
use crate::audit::AuditLog;
use crate::body::{OnEnd, OnFailure, ProxyStream};
use crate::config::{PolicyPins, ProxyConfig, ReceiptMode};
use crate::errors::ProxyError;
use crate::guard::{self, Guard};
use crate::names;
use crate::ops::{self, Ops};
use crate::relay;
use crate::salt;
use crate::stack::crypto_backends;
use crate::status::Counters;
use crate::upstream::upstream_uri;
#[cfg(feature = "local-test-gateway")]
use aci_test_gateway::{GatewayConfig, TestGateway};
use tower_aci::attest::KeyHandle;
use tower_aci::client::{AciBody, Client, ClientBuilder, ReceiptCheck, carries_api_key};
use tower_aci::error::{BoxError, Error, ErrorKind, Result};
use tower_aci::receipt::{ExchangeRecord, StreamVerification, VerifiedReceipt};

/// An answer of the client's stack: decrypted, and in before-release mode verified.
type Answer = Response<AciBody>;

/// A running proxy: a [`Client`] (attested keys kept fresh, E2EE, receipts) behind the OpenAI
/// API.
#[derive(Clone)]
pub struct Proxy {
    state: Arc<ProxyState>,
}

struct ProxyState {
    client: Client,
    /// The client's keys (the probes read them).
    keys: KeyHandle,
    audit: Option<AuditLog>,
    /// Where the gateway's `Authorization` comes from, and that said in one line.
    auth: (relay::AuthSource, String),
    /// The prompt-cache salt of `--cache-salt-env`, if any.
    cache_salt: salt::CacheSalt,
    guard: Arc<Guard>,
    /// The operator listener's guard (its own address, no origin, no client key).
    ops_guard: Arc<Guard>,
    pins: PolicyPins,
    max_request_body: usize,
    counters: Arc<Counters>,
    started_at: u64,
    ops: Ops,
    shutdown_timeout: Duration,
    #[cfg(feature = "local-test-gateway")]
    _local_gateway: Option<TestGateway>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("gateway", self.state.client.base_url())
            .field("mode", &self.state.client.receipt_mode())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Start the proxy's parts: the local test gateway if asked, the [`Client`] its
    /// configuration describes ([`ProxyConfig::client_builder`]; the gateway is attested now: a
    /// gateway that fails its policy fails here, with which check; the client's refresher keeps
    /// the key fresh), and the audit file. Serve [`router`](Self::router) to accept requests.
    ///
    /// Fails with a [`Config`](ErrorKind::Config) error, before any connection, when `listen` is
    /// not a loopback address, or [`require_client_key`](ProxyConfig::require_client_key) is set,
    /// and no client key is configured; when the client key's variable is unset or shorter than
    /// 16 characters; when [`ops_listen`](ProxyConfig::ops_listen) is not a loopback address and
    /// not acknowledged with [`ops_listen_beyond_loopback`](ProxyConfig::ops_listen_beyond_loopback);
    /// when an allowed origin is not an exact origin; when
    /// [`cache_salt_env`](ProxyConfig::cache_salt_env) names a variable that is unset or shorter
    /// than 16 characters; and wherever [`ClientBuilder::build`](tower_aci::client::ClientBuilder::build)
    /// fails (plain `http://` beyond loopback, an API key that is not a valid header value, a PCCS
    /// on the gateway's host, …). It installs no process-wide metrics recorder (see
    /// [`install_metrics_recorder`](crate::install_metrics_recorder)), and says in one log line what the gateway gets as
    /// `Authorization` (`GET /aci/status` repeats it).
    pub async fn start(config: ProxyConfig) -> Result<Proxy> {
        Proxy::start_with(config, |builder| builder).await
    }

    /// [`start`](Self::start), with the [`ClientBuilder`] the configuration describes passed
    /// through `customize` before it is built: for settings a configuration file does not
    /// carry (a [clock](ClientBuilder::clock) for a replay of captured evidence, a
    /// [root store](ClientBuilder::root_store), more [policy](ClientBuilder::policy_with)).
    ///
    /// ```no_run
    /// # async fn run(config: aci_proxy::ProxyConfig) -> tower_aci::Result<()> {
    /// use aci_proxy::Proxy;
    /// let proxy = Proxy::start_with(config, |client| client.strict(true)).await?;
    /// # let _ = proxy; Ok(()) }
    /// ```
    pub async fn start_with(
        config: ProxyConfig,
        customize: impl FnOnce(ClientBuilder) -> ClientBuilder,
    ) -> Result<Proxy> {
        #[cfg(feature = "local-test-gateway")]
        let mut config = config;
        // The pins first: the error a person at a terminal most likely needs.
        config.policy()?;
        let guard = Guard::new(
            config.listen,
            &config.allow_origins,
            config.client_key_env.as_deref(),
            config.require_client_key,
        )?;
        let ops_guard = Guard::ops(config.ops_listen, config.ops_listen_beyond_loopback, config.listen)?;
        let cache_salt = salt::CacheSalt::from_env(config.cache_salt_env.as_deref())?;
        #[cfg(feature = "local-test-gateway")]
        let local = if config.local_test_gateway {
            let mut gw_config = GatewayConfig::new();
            if let Some(pem) = &config.local_test_gateway_tls {
                gw_config = gw_config.tls(local_gateway_tls(pem)?);
            }
            let gw = TestGateway::start(gw_config)
                .await
                .map_err(|e| Error::config("cannot start the local test gateway").with_source(e))?;
            if let Some(delay) = config.local_test_gateway_event_delay {
                gw.set_fault(Some(aci_test_gateway::Fault::EventDelay(delay)));
            }
            config.gateway = Some(gw.base_url());
            Some(gw)
        } else {
            None
        };
        #[cfg(not(feature = "local-test-gateway"))]
        if config.local_test_gateway {
            return Err(Error::config(
                "this aci-proxy was built without the local test gateway.\n  \
                 fix: build it in: cargo install aci-proxy --features local-test-gateway\n  \
                 fix: or name a real gateway: --gateway URL",
            ));
        }
        let client = customize(config.client_builder()?).build().await?;
        let audit = match &config.audit_file {
            Some(path) => Some(AuditLog::open(path).await?),
            None => None,
        };
        let source = relay::AuthSource::new(client.has_api_key(), guard.requires_client_key());
        let auth = (source, source.describe(&config.api_key_env, client.base_url()));
        match source {
            relay::AuthSource::None => tracing::warn!(authorization = source.name(), "{}", auth.1),
            _ => tracing::info!(authorization = source.name(), "{}", auth.1),
        }
        if cache_salt.is_set() {
            tracing::info!(
                "prompt-cache partition: every chat completion and completion carries this proxy's cache_salt"
            );
        }
        tracing::info!(crypto = crypto_backends(), "field encryption backends");
        let started_at = client.keys().now();
        let ops = Ops::new(config.metrics, config.request_timeout);
        Ok(Proxy {
            state: Arc::new(ProxyState {
                keys: client.keys().clone(),
                client,
                audit,
                auth,
                cache_salt,
                guard: Arc::new(guard),
                ops_guard: Arc::new(ops_guard),
                pins: config.pins,
                max_request_body: config.max_request_body,
                counters: Arc::default(),
                started_at,
                ops,
                shutdown_timeout: config.shutdown_timeout,
                #[cfg(feature = "local-test-gateway")]
                _local_gateway: local,
            }),
        })
    }

    /// The gateway this proxy talks to.
    pub fn gateway(&self) -> &Uri {
        self.state.client.base_url()
    }

    /// The client the proxy serves through: its keys, policy, PCCS, receipt mode and
    /// [receipt counts](Client::receipt_stats) are the proxy's.
    pub fn client(&self) -> &Client {
        &self.state.client
    }

    /// The local test gateway, when the proxy started one.
    #[cfg(feature = "local-test-gateway")]
    #[cfg_attr(docsrs, doc(cfg(feature = "local-test-gateway")))]
    pub fn local_gateway(&self) -> Option<&TestGateway> {
        self.state._local_gateway.as_ref()
    }

    /// The attested keys the proxy encrypts to.
    pub fn keys(&self) -> &KeyHandle {
        self.state.client.keys()
    }

    /// The proxy's routes, ready for `axum::serve`: the OpenAI API, `GET /aci/status`, and for
    /// operators `GET /healthz` (200 while the process serves), `GET /readyz` (200 while an
    /// attested keyset is current, else 503 with the reason; JSON) and `GET /metrics`
    /// (Prometheus text format, when [`ProxyConfig::metrics`] is on and
    /// [`install_metrics_recorder`](crate::install_metrics_recorder) installed the recorder).
    ///
    /// Every route, the operator's included, is behind the guard: `Host` must name the proxy
    /// (`421`), an `Origin` must be allowed (`403`), and a configured client key must be sent
    /// (`401`). Serve [`ops_router`](Self::ops_router) for probes without the client key.
    pub fn router(&self) -> Router {
        self.probes()
            .route("/v1/chat/completions", post(inference))
            .route("/v1/completions", post(inference))
            .route("/v1/embeddings", post(inference))
            .route("/aci/status", get(status))
            .route("/v1/{*rest}", get(passthrough).post(refuse).fallback(refuse))
            .fallback(any(refuse))
            .layer(axum::middleware::from_fn_with_state(self.guarded(&self.state.guard), guard::guard))
            .with_state(self.state.clone())
    }

    /// The operator listener's routes, for a supervisor or Prometheus that holds no client key:
    /// only `GET /healthz`, `/readyz` and `/metrics` (anything else is `404`), with no client
    /// key. `Host` must be a loopback name or [`ProxyConfig::ops_listen`] (`421`), and a request
    /// carrying `Origin` is refused (`403`): no web page reads them. Serve it on its own
    /// listener, e.g. with [`serve_with_ops_until`](Self::serve_with_ops_until).
    ///
    /// ```no_run
    /// # async fn run() -> tower_aci::Result<()> {
    /// use aci_proxy::{Proxy, ProxyConfig};
    ///
    /// let config = ProxyConfig::default()
    ///     .local_test_gateway(true)
    ///     .client_key_env("ACI_CLIENT_KEY")
    ///     .ops_listen("127.0.0.1:9090".parse().unwrap());
    /// let proxy = Proxy::start(config).await?;
    /// let ops = tokio::net::TcpListener::bind("127.0.0.1:9090").await.unwrap();
    /// axum::serve(ops, proxy.ops_router()).await.unwrap(); // curl http://127.0.0.1:9090/readyz
    /// # Ok(()) }
    /// ```
    pub fn ops_router(&self) -> Router {
        self.probes()
            .fallback(ops_unknown)
            .layer(axum::middleware::from_fn_with_state(self.guarded(&self.state.ops_guard), guard::guard))
            .with_state(self.state.clone())
    }

    /// The operator's routes: probes and metrics.
    fn probes(&self) -> Router<Arc<ProxyState>> {
        Router::new().route("/healthz", get(ops::healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics))
    }

    /// The state of the guard middleware in front of a listener's routes.
    fn guarded(&self, guard: &Arc<Guard>) -> guard::Guarded {
        guard::Guarded { guard: guard.clone(), counters: self.state.counters.clone() }
    }

    /// Serve on `listener` until `signal` resolves, then stop gracefully: no new connections,
    /// `/readyz` answers 503, open streams drain for up to [`ProxyConfig::shutdown_timeout`] and
    /// are then ended with an error event; then pending receipt checks finish (bounded by the
    /// same time) and the audit file is flushed to disk.
    pub async fn serve_until<F>(&self, listener: tokio::net::TcpListener, signal: F) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.serve_with_ops_until(listener, None, signal).await
    }

    /// [`serve_until`](Self::serve_until), and the [`ops_router`](Self::ops_router) on
    /// `ops_listener` when given. The operator listener keeps answering while open streams
    /// drain (`/readyz` says 503, shutting down; `/metrics` shows the streams still open) and
    /// closes when the main listener's last connection did; then the receipt checks finish and
    /// the audit file is flushed.
    ///
    /// ```no_run
    /// # async fn run() -> tower_aci::Result<()> {
    /// use aci_proxy::{Proxy, ProxyConfig};
    ///
    /// let config = ProxyConfig::default().local_test_gateway(true);
    /// let proxy = Proxy::start(config).await?;
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await.unwrap();
    /// let ops = tokio::net::TcpListener::bind("127.0.0.1:9090").await.unwrap();
    /// let stop = async { let _ = tokio::signal::ctrl_c().await; };
    /// proxy.serve_with_ops_until(listener, Some(ops), stop).await.unwrap();
    /// # Ok(()) }
    /// ```
    pub async fn serve_with_ops_until<F>(
        &self,
        listener: tokio::net::TcpListener,
        ops_listener: Option<tokio::net::TcpListener>,
        signal: F,
    ) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Closed (dropped) once the main server is done, whatever its outcome.
        let (main_done, ops_stop) = tokio::sync::watch::channel(());
        let ops_server = async move {
            let Some(ops_listener) = ops_listener else { return Ok(()) };
            let mut stop = ops_stop.clone();
            let mut grace = ops_stop;
            let server = axum::serve(ops_listener, self.ops_router())
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .into_future();
            let bound = async move {
                let _ = grace.changed().await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            };
            tokio::select! {
                served = server => served,
                () = bound => {
                    tracing::warn!("shutdown: operator connections still open; closing them");
                    Ok(())
                }
            }
        };
        let main_server = async move {
            let served = self.serve_main(listener, signal).await;
            drop(main_done);
            served
        };
        let (served, ops_served) = tokio::join!(main_server, ops_server);
        served?;
        if let Err(e) = ops_served {
            tracing::error!("the operator listener failed: {e}");
            return Err(e);
        }
        self.finish().await;
        Ok(())
    }

    /// The main listener, until `signal` and the drain.
    async fn serve_main<F>(&self, listener: tokio::net::TcpListener, signal: F) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let state = self.state.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stopping = async move {
            signal.await;
            state.ops.begin_shutdown();
            tracing::info!(open = state.ops.pending(), "shutting down: no new connections; draining open streams");
            let _ = stop_tx.send(());
        };
        let server = axum::serve(listener, self.router()).with_graceful_shutdown(stopping).into_future();
        let mut server = std::pin::pin!(server);
        let drain = self.state.shutdown_timeout;
        let deadline = async move {
            if stop_rx.await.is_ok() {
                tokio::time::sleep(drain).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            served = &mut server => served?,
            () = deadline => {
                tracing::warn!(?drain, "shutdown: drain time over; ending the exchanges still open with an error event");
                self.state.ops.abort_all();
                // The error events go out and the connections close.
                if tokio::time::timeout(Duration::from_secs(5), &mut server).await.is_err() {
                    tracing::warn!("shutdown: connections still open after their exchanges ended; closing them");
                }
            }
        }
        Ok(())
    }

    /// Wait for the background receipt checks (the client's, and the archiving of their
    /// receipts; at most [`ProxyConfig::shutdown_timeout`]) and flush the audit file to disk.
    /// [`serve_until`](Self::serve_until) calls it after the last connection closed.
    pub async fn finish(&self) {
        let st = &self.state;
        let settled = async { tokio::join!(st.client.receipts_settled(), st.ops.idle()) };
        if tokio::time::timeout(st.shutdown_timeout, settled).await.is_err() {
            tracing::warn!(pending = st.ops.pending(), "shutdown: receipt checks still pending; giving up on them");
        }
        if let Some(audit) = &st.audit {
            if let Err(e) = audit.sync().await {
                tracing::error!("audit file: {e}");
            }
        }
    }

    /// The status document `GET /aci/status` serves.
    pub fn status(&self) -> serde_json::Value {
        status_json(&self.state)
    }
}

/// One call through the E2EE stack, boxed as a `Send` future (naming the future's type keeps
/// the handlers' futures provably `Send`).
fn call(
    st: &ProxyState,
    req: Request<Full<Bytes>>,
) -> Pin<Box<dyn Future<Output = std::result::Result<Answer, BoxError>> + Send>> {
    Box::pin(st.client.service().oneshot(req))
}

fn status_json(st: &ProxyState) -> serde_json::Value {
    let keys = st.client.keys();
    let keyset = match keys.current() {
        Ok(k) => serde_json::json!({
            "digest": k.digest(),
            "not_after": k.not_after(),
            "verified_at": k.verified_at(),
            "hardware_verified": k.hardware_verified(),
            "e2ee_key_id": k.e2ee_key().key_id(),
            "suite": k.e2ee_key().suite().algo(),
            "receipt_key_ids": k.receipt_keys().iter().map(|r| r.key_id()).collect::<Vec<_>>(),
        }),
        Err(e) => serde_json::json!({"error": e.to_string()}),
    };
    serde_json::json!({
        "gateway": st.client.base_url().to_string(),
        "keyset": keyset,
        "last_refresh": keys.current().ok().map(|k| k.verified_at()),
        "pins": st.pins.to_json(),
        "pccs": st.client.pccs().map(Uri::to_string),
        "receipts": st.client.receipt_mode().as_str(),
        "started_at": st.started_at,
        "authorization": {"source": st.auth.0.name(), "detail": st.auth.1},
        "cache_salt": st.cache_salt.is_set(),
        "crypto_backends": crypto_backends(),
        "counts": st.counters.to_json_with(keys.refused_keysets().len()),
    })
}

/// `GET /readyz` ([`ops::readyz`]).
async fn readyz(State(st): State<Arc<ProxyState>>) -> AxumResponse {
    ops::readyz(&st.ops, &st.keys)
}

/// `GET /metrics` ([`ops::metrics`]).
async fn metrics(State(st): State<Arc<ProxyState>>) -> AxumResponse {
    ops::metrics(&st.ops, &st.keys)
}

async fn status(State(st): State<Arc<ProxyState>>) -> AxumResponse {
    axum::Json(status_json(&st)).into_response()
}

/// Anything but the probes and metrics on the operator listener.
async fn ops_unknown(req: AxumRequest) -> AxumResponse {
    ProxyError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "{} {} is not served on aci-proxy's --ops-listen address: only GET /healthz, /readyz and /metrics",
            req.method(),
            req.uri().path()
        ),
    )
    .into_response()
}

async fn refuse(State(st): State<Arc<ProxyState>>, req: AxumRequest) -> AxumResponse {
    Counters::bump(&st.counters.refused);
    metrics::counter!(names::REFUSED).increment(1);
    let what = format!("{} {}", req.method(), req.uri().path());
    tracing::warn!(request = %what, "refused: outside E2EE v2");
    let status = if req.method() == Method::POST { StatusCode::NOT_FOUND } else { StatusCode::METHOD_NOT_ALLOWED };
    ProxyError::new(
        status,
        "e2ee_unsupported_endpoint",
        format!("{what} is not served by aci-proxy: only /v1/chat/completions, /v1/completions and /v1/embeddings can be sent end-to-end encrypted"),
    )
    .into_response()
}

/// The local test gateway's certificate and key, from one PEM file (`--local-test-gateway-tls`).
#[cfg(feature = "local-test-gateway")]
fn local_gateway_tls(pem: &std::path::Path) -> Result<aci_test_gateway::GatewayTls> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |e: &dyn std::fmt::Display| Error::config(format!("{}: {e}", pem.display()));
    let certs = CertificateDer::pem_file_iter(pem)
        .map_err(|e| bad(&e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_file(pem).map_err(|e| bad(&e))?;
    aci_test_gateway::GatewayTls::new(certs, key)
}

/// The client's own `Authorization`, forwarded to the gateway when the proxy has no API key
/// (`--api-key-env`, which the [`Client`] adds itself) and clients do not authenticate to the
/// proxy with a client key; only on the routes that carry a key ([`carries_api_key`]: never
/// the attestation passthrough).
fn upstream_auth(st: &ProxyState, parts: &http::request::Parts) -> Option<HeaderValue> {
    if !carries_api_key(&parts.method, parts.uri.path()) {
        return None;
    }
    match st.auth.0 {
        // The Client adds its own API key; a client key is never forwarded.
        relay::AuthSource::ApiKey | relay::AuthSource::None => None,
        relay::AuthSource::Client => parts.headers.get(AUTHORIZATION).cloned(),
    }
}

/// The request the gateway gets: method, the proxied path, a few headers, the bearer token.
fn upstream_request<B>(
    st: &ProxyState,
    parts: &http::request::Parts,
    body: B,
) -> std::result::Result<Request<B>, ProxyError> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = upstream_uri(st.client.base_url(), path).map_err(|e| {
        ProxyError::new(StatusCode::BAD_REQUEST, "invalid_request_error", format!("invalid request path: {e}"))
    })?;
    for name in [CONTENT_TYPE, ACCEPT] {
        if let Some(v) = parts.headers.get(&name) {
            req.headers_mut().insert(name, v.clone());
        }
    }
    if let Some(mut v) = upstream_auth(st, parts) {
        v.set_sensitive(true);
        req.headers_mut().insert(AUTHORIZATION, v);
    }
    Ok(req)
}

/// `GET /v1/…`: models, receipts — nothing private, passed through (the layer lets GETs by).
async fn passthrough(State(st): State<Arc<ProxyState>>, req: AxumRequest) -> AxumResponse {
    let (parts, _) = req.into_parts();
    let req = match upstream_request(&st, &parts, Full::new(Bytes::new())) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match call(&st, req).await {
        Ok(res) => relay_answer(res),
        Err(e) => ProxyError::from_box(&e).into_response(),
    }
}

/// The gateway's answer as the client gets it: never a redirect, only the relayed headers.
fn relay_answer(res: Answer) -> AxumResponse {
    if res.status().is_redirection() {
        // The client's transport refuses every 3xx; should one ever get here, it is not relayed.
        return relay::redirect_refused(res.status(), res.headers()).into_response();
    }
    let (mut parts, body) = res.into_parts();
    relay::filter_headers(&mut parts.headers);
    Response::from_parts(parts, AxumBody::new(body)).into_response()
}

async fn inference(State(st): State<Arc<ProxyState>>, req: AxumRequest) -> AxumResponse {
    let span = tracing::info_span!("aci.proxy", path = req.uri().path());
    tracing::Instrument::instrument(exchange(st, req), span).await
}

/// The proxy's own error answer to an exchange, logged.
fn answer_error(mut log: ExchangeLog, err: ProxyError) -> AxumResponse {
    log.status(err.status.as_u16());
    log.finish(err.kind);
    err.into_response()
}

async fn exchange(st: Arc<ProxyState>, req: AxumRequest) -> AxumResponse {
    let (parts, body) = req.into_parts();
    let log = ExchangeLog::new(&parts.method, parts.uri.path());
    // Resolves at the request timeout, or when a shutdown's drain time ran out.
    let mut abort = st.ops.abort_future(log.started);
    let bytes = match Limited::new(body, st.max_request_body).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let err = ProxyError::new(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", format!("request body: {e}"));
            return answer_error(log, err);
        }
    };
    // With --cache-salt-env, chat completions and completions carry the proxy's cache_salt.
    let bytes = match st.cache_salt.apply(parts.uri.path(), bytes) {
        Ok(b) => b,
        Err(err) => return answer_error(log, err),
    };
    let req = match upstream_request(&st, &parts, Full::new(bytes)) {
        Ok(r) => r,
        Err(e) => return answer_error(log, e),
    };
    Counters::bump(&st.counters.exchanges);
    let res = tokio::select! {
        res = call(&st, req) => res,
        why = &mut abort => {
            Counters::bump(&st.counters.failed_exchanges);
            return answer_error(log, why.error());
        }
    };
    let res = match res {
        Ok(res) => res,
        Err(e) => {
            Counters::bump(&st.counters.failed_exchanges);
            let err = ProxyError::from_box(&e);
            tracing::warn!(kind = err.kind, "exchange failed: {}", err.message);
            return answer_error(log, err);
        }
    };
    let (head, body) = res.into_parts();
    let mut log = log;
    log.answered(&head);
    let res = Response::from_parts(head, body);
    let record = res.extensions().get::<ExchangeRecord>().cloned();
    if !res.status().is_success() {
        // The gateway's own error document, passed through.
        Counters::bump(&st.counters.failed_exchanges);
        log.finish("gateway_error");
        return relay_answer(res);
    }
    let Some(record) = record else {
        let err = ProxyError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "no exchange record");
        return answer_error(log, err);
    };
    if record.streamed() {
        stream_response(st.clone(), res, record, abort, log)
    } else {
        buffered_response(st.clone(), res, record, abort, log).await
    }
}

async fn buffered_response(
    st: Arc<ProxyState>,
    res: Answer,
    record: ExchangeRecord,
    mut abort: ops::AbortFuture,
    log: ExchangeLog,
) -> AxumResponse {
    let (mut parts, body) = res.into_parts();
    let collected = tokio::select! {
        collected = body.collect() => collected,
        why = &mut abort => {
            Counters::bump(&st.counters.failed_exchanges);
            return answer_error(log, why.error());
        }
    };
    let body = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            Counters::bump(&st.counters.failed_exchanges);
            let err = ProxyError::from_box(&e);
            tracing::warn!(kind = err.kind, "decrypting the answer failed: {}", err.message);
            return answer_error(log, err);
        }
    };
    match st.client.receipt_mode() {
        ReceiptMode::Background => match parts.extensions.get::<ReceiptCheck>() {
            // Read to its end: the client's check runs; archive its outcome.
            Some(check) => archive_when_checked(&st, check.clone(), record),
            None => {
                let err = ProxyError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "no receipt check");
                return answer_error(log, err);
            }
        },
        // Verified below the proxy before the answer came back (VerifyBeforeReleaseLayer).
        ReceiptMode::BeforeRelease | ReceiptMode::HoldUntilVerified => {
            match parts.extensions.get::<VerifiedReceipt>() {
                Some(verified) => archive(&st, verified, &record).await,
                None => {
                    let err =
                        ProxyError::new(StatusCode::BAD_GATEWAY, "receipt_verification_failed", "no verified receipt");
                    return answer_error(log, err);
                }
            }
        }
        _ => {}
    }
    relay::filter_headers(&mut parts.headers);
    log.finish("ok");
    Response::from_parts(parts, AxumBody::from(body)).into_response()
}

fn stream_response(
    st: Arc<ProxyState>,
    res: Answer,
    record: ExchangeRecord,
    abort: ops::AbortFuture,
    log: ExchangeLog,
) -> AxumResponse {
    let (mut parts, body) = res.into_parts();
    relay::filter_headers(&mut parts.headers);
    let counters = st.counters.clone();
    let on_end: Option<OnEnd> = match st.client.receipt_mode() {
        ReceiptMode::Background => {
            let check = parts.extensions.get::<ReceiptCheck>().cloned();
            Some(Box::new(move || match check {
                Some(check) => archive_when_checked(&st, check, record),
                None => Counters::bump(&st.counters.receipts_failed),
            }))
        }
        // The `[DONE]` (or, holding until verified, the whole stream) was held below the proxy
        // until the receipt verified; archive it.
        ReceiptMode::BeforeRelease | ReceiptMode::HoldUntilVerified => {
            let verification = parts.extensions.get::<StreamVerification>().cloned();
            Some(Box::new(move || {
                let Some(verified) = verification.as_ref().and_then(StreamVerification::receipt).cloned() else {
                    Counters::bump(&st.counters.receipts_failed);
                    return;
                };
                // Counted now (the client may look at /aci/status as soon as the stream ended);
                // archived in the background.
                Counters::bump(&st.counters.receipts_verified);
                let state = st.clone();
                st.ops.spawn(async move { append_to_audit(&state, &verified, &record).await });
            }))
        }
        _ => None,
    };
    let on_failure: OnFailure = Box::new(move |kind| {
        Counters::bump(&counters.failed_exchanges);
        if matches!(kind, Some(ErrorKind::Receipt(_))) {
            Counters::bump(&counters.receipts_failed);
        }
    });
    let body = ProxyStream::new(body, on_end, on_failure, abort, log);
    Response::from_parts(parts, AxumBody::new(body)).into_response()
}

/// Count a verified receipt and append it to the audit file.
async fn archive(st: &ProxyState, verified: &VerifiedReceipt, record: &ExchangeRecord) {
    append_to_audit(st, verified, record).await;
    Counters::bump(&st.counters.receipts_verified);
}

async fn append_to_audit(st: &ProxyState, verified: &VerifiedReceipt, record: &ExchangeRecord) {
    tracing::debug!(receipt = verified.receipt().receipt_id(), "receipt verified");
    if let Some(audit) = &st.audit {
        if let Err(e) = audit.append(verified, record).await {
            tracing::error!("audit file: {e}");
        }
    }
}

/// Once the client's background check of an exchange's receipt ended: count it, archive it
/// (the client logged a failure already). Tracked, so a shutdown waits for it.
fn archive_when_checked(st: &Arc<ProxyState>, check: ReceiptCheck, record: ExchangeRecord) {
    let state = st.clone();
    st.ops.spawn(async move {
        match check.verified().await {
            Ok(verified) => archive(&state, &verified, &record).await,
            Err(_) => Counters::bump(&state.counters.receipts_failed),
        }
    });
}

#[cfg(all(test, not(feature = "local-test-gateway")))]
mod without_test_gateway {
    use super::*;

    /// `--local-test-gateway` in a build without the test gateway: a clear error that says how
    /// to build it in.
    #[tokio::test]
    async fn the_local_test_gateway_needs_its_feature() {
        let config = ProxyConfig::default().local_test_gateway(true);
        let e = Proxy::start(config).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        let text = e.to_string();
        assert!(text.contains("cargo install aci-proxy --features local-test-gateway"), "{text}");
        assert!(text.lines().skip(1).all(|l| l.trim_start().starts_with("fix: ")), "{text}");
    }
}
