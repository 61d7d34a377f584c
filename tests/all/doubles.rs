//! Test doubles of what surrounds a gateway, played on loopback: a certificate authority, a
//! `CONNECT` proxy (splicing, refusing, asking for credentials, or inspecting TLS with its own
//! certificate), an HTTPS server, a PCCS serving dcap-qvl's sample collateral, and a hostile
//! front in front of the local gateway (with a second server, the thief's).
//!
//! Helpers only, no tests: shared by tower-aci's tests and aci-proxy's
//! (`crates/aci-proxy/tests/all/main.rs` includes this file by path; it needs the `support` and
//! `attest_support` modules beside it), so each double exists once in the workspace.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aci_test_gateway::{Fault, GatewayConfig, GatewayKeys, GatewayTls, TestGateway};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request as AxumRequest, State};
use axum::response::{IntoResponse, Response as AxumResponse};
use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use rustls::RootCertStore;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::util::BoxCloneService;
use tower_aci::attest::{Clock, Policy, SystemClock};
use tower_aci::protocol::Suite;

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---- the sample TDX quote and its collateral ---------------------------------------------

/// Inside the window of `tdx_quote_collateral.json`: every part is valid from 2025-06-19T10:32:27Z
/// (QE identity issueDate) to 2025-07-19T10:00:35Z (PCK CRL nextUpdate).
pub(crate) const NOW: u64 = 1_751_328_000; // 2025-07-01T00:00:00Z

/// `tests/data/dcap/<name>`: the sample quotes and collateral that ship in the dcap-qvl crate.
pub(crate) fn dcap_data(name: &str) -> Vec<u8> {
    let path = crate::attest_support::data_dir().join("dcap").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// dcap-qvl's sample TDX quote.
pub(crate) fn quote() -> Vec<u8> {
    dcap_data("tdx_quote")
}

/// A report (stub-sealed keyset and statement) carrying the sample quote as its evidence; its
/// `report_data` cannot match the quote's slot.
pub(crate) fn report_with_sample_quote(nonce: &[u8; 32]) -> Value {
    let keyset = crate::attest_support::production_keyset(None, NOW + 24 * 3600);
    let mut report = crate::attest_support::seal_report(&keyset, Some(nonce));
    report["attestation"]["evidence"]["quote"] = json!(const_hex::encode(quote()));
    report["attestation"]["evidence"]["quote_report_data"] = Value::Null;
    report
}

pub(crate) type TestService = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A fake PCCS (Intel's v4 API) serving the sample collateral, and (for the key provider) an ACI
/// gateway serving a report with the sample quote. Records the paths asked for.
#[derive(Clone)]
pub(crate) struct FakePccs {
    collateral: Value,
    seen: Arc<Mutex<Vec<String>>>,
    pub(crate) status: StatusCode,
}

impl FakePccs {
    pub(crate) fn new() -> FakePccs {
        FakePccs {
            collateral: serde_json::from_slice(&dcap_data("tdx_quote_collateral.json")).unwrap(),
            seen: Arc::default(),
            status: StatusCode::OK,
        }
    }

    pub(crate) fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn field(&self, name: &str) -> &str {
        self.collateral[name].as_str().unwrap()
    }

    pub(crate) fn answer(&self, uri: &Uri) -> Response<Full<Bytes>> {
        let path = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
        self.seen.lock().unwrap().push(format!("{}{path}", uri.authority().map(|a| a.as_str()).unwrap_or("")));
        let ok = Response::builder().status(self.status);
        let (builder, body) = if path.starts_with("/v1/aci/attestation") {
            let report = report_with_sample_quote(&[0; 32]);
            (ok, crate::attest_support::bytes(&report))
        } else if path.starts_with("/sgx/certification/v4/pckcrl") {
            let chain = percent_encode(self.field("pck_crl_issuer_chain"));
            (ok.header("SGX-PCK-CRL-Issuer-Chain", chain), const_hex::decode(self.field("pck_crl")).unwrap())
        } else if path.starts_with("/tdx/certification/v4/tcb") {
            let body = format!(
                r#"{{"tcbInfo":{},"signature":"{}"}}"#,
                self.field("tcb_info"),
                self.field("tcb_info_signature")
            );
            (ok.header("TCB-Info-Issuer-Chain", percent_encode(self.field("tcb_info_issuer_chain"))), body.into_bytes())
        } else if path.starts_with("/tdx/certification/v4/qe/identity") {
            let body = format!(
                r#"{{"enclaveIdentity":{},"signature":"{}"}}"#,
                self.field("qe_identity"),
                self.field("qe_identity_signature")
            );
            let chain = percent_encode(self.field("qe_identity_issuer_chain"));
            (ok.header("SGX-Enclave-Identity-Issuer-Chain", chain), body.into_bytes())
        } else if path.starts_with("/sgx/certification/v4/rootcacrl") {
            (ok, self.field("root_ca_crl").as_bytes().to_vec())
        } else {
            (Response::builder().status(StatusCode::NOT_FOUND), Vec::new())
        };
        builder.body(Full::new(Bytes::from(body))).unwrap()
    }

    pub(crate) fn service(&self) -> TestService {
        let me = self.clone();
        BoxCloneService::new(tower::service_fn(move |req: Request<Full<Bytes>>| {
            let me = me.clone();
            async move { Ok::<_, Infallible>(me.answer(req.uri())) }
        }))
    }
}

// ---- certificates ------------------------------------------------------------------------

/// A test certificate authority.
pub(crate) struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub(crate) fn pem(&self) -> String {
        self.cert.pem()
    }

    pub(crate) fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A leaf certificate for these names (IP addresses become IP SANs), and its key.
    pub(crate) fn leaf(&self, names: &[&str]) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.der().clone(), key)
    }

    pub(crate) fn gateway_tls(&self) -> GatewayTls {
        let (cert, key) = self.leaf(&["127.0.0.1"]);
        GatewayTls::new(vec![cert], private(&key)).unwrap()
    }

    /// A rustls server configuration (HTTP/1.1) presenting a leaf for these names.
    pub(crate) fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.leaf(names);
        let mut config = rustls::ServerConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], private(&key))
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

pub(crate) fn private(key: &rcgen::KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

pub(crate) fn roots(cas: &[&Ca]) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.der()).unwrap();
    }
    roots
}

/// The intercepting proxy's own TLS client to the real server: it accepts any certificate.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ---- the CONNECT proxy -------------------------------------------------------------------

/// What the proxy does with a `CONNECT`.
#[derive(Clone)]
pub(crate) enum Mode {
    /// Open the tunnel and splice bytes.
    Splice,
    /// Answer with this status line and close.
    Refuse(&'static str),
    /// Splice when `Proxy-Authorization` is exactly this value, else answer 407.
    RequireAuth(String),
    /// Answer 200, then terminate TLS itself with this configuration and relay the plaintext to
    /// the target over a TLS connection of its own: an inspection appliance.
    Intercept(Arc<rustls::ServerConfig>),
}

#[derive(Default)]
struct Seen {
    /// Each request head, as sent.
    heads: Vec<String>,
    /// Every byte relayed through plain tunnels, both ways.
    spliced: Vec<u8>,
    /// Every plaintext byte the intercepting mode relayed, both ways.
    decrypted: Vec<u8>,
}

pub(crate) struct ConnectProxy {
    pub(crate) addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Seen>>,
}

impl ConnectProxy {
    pub(crate) async fn start(mode: Mode) -> ConnectProxy {
        ConnectProxy::with_routes(mode, HashMap::new()).await
    }

    /// `routes` maps a `CONNECT` target (`name:port`) to where it really is.
    pub(crate) async fn with_routes(mode: Mode, routes: HashMap<String, SocketAddr>) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, seen) = (Arc::new(Mutex::new(mode)), Arc::new(Mutex::new(Seen::default())));
        let (m, s, routes) = (mode.clone(), seen.clone(), Arc::new(routes));
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let mode = m.lock().unwrap().clone();
                tokio::spawn(serve(conn, mode, s.clone(), routes.clone()));
            }
        });
        ConnectProxy { addr, mode, seen }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub(crate) fn heads(&self) -> Vec<String> {
        self.seen.lock().unwrap().heads.clone()
    }

    pub(crate) fn spliced(&self) -> Vec<u8> {
        self.seen.lock().unwrap().spliced.clone()
    }

    pub(crate) fn decrypted(&self) -> Vec<u8> {
        self.seen.lock().unwrap().decrypted.clone()
    }
}

async fn serve(mut client: TcpStream, mode: Mode, seen: Arc<Mutex<Seen>>, routes: Arc<HashMap<String, SocketAddr>>) {
    // The head, byte by byte: nothing of the tunnel is read with it.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || client.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    seen.lock().unwrap().heads.push(head.clone());
    let mut line = head.split(' ');
    let (method, target) = (line.next().unwrap_or(""), line.next().unwrap_or("").to_owned());
    let answer = |status: &str| format!("{status}\r\nContent-Length: 0\r\n\r\n");
    if method != "CONNECT" {
        let _ = client.write_all(answer("HTTP/1.1 405 Method Not Allowed").as_bytes()).await;
        return;
    }
    match &mode {
        Mode::Refuse(status) => {
            let _ = client.write_all(answer(status).as_bytes()).await;
            return;
        }
        Mode::RequireAuth(expected) => {
            let given = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("proxy-authorization").then(|| value.trim().to_owned())
            });
            if given.as_deref() != Some(expected.as_str()) {
                let status = "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"";
                let _ = client.write_all(answer(status).as_bytes()).await;
                return;
            }
        }
        _ => {}
    }
    let addr = routes.get(&target).copied().or_else(|| target.parse().ok());
    let Some(upstream) = (match addr {
        Some(a) => TcpStream::connect(a).await.ok(),
        None => None,
    }) else {
        let _ = client.write_all(answer("HTTP/1.1 502 Bad Gateway").as_bytes()).await;
        return;
    };
    if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
        return;
    }
    match mode {
        Mode::Intercept(config) => {
            let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(client).await else { return };
            let host = target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h).to_owned();
            let mut own = rustls::ClientConfig::builder_with_provider(ring())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(ring())))
                .with_no_client_auth();
            own.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = ServerName::try_from(host).unwrap();
            let Ok(up) = tokio_rustls::TlsConnector::from(Arc::new(own)).connect(name, upstream).await else { return };
            splice(tls, up, seen, true).await;
        }
        _ => splice(client, upstream, seen, false).await,
    }
}

async fn splice<A, B>(a: A, b: B, seen: Arc<Mutex<Seen>>, decrypted: bool)
where
    A: AsyncRead + AsyncWrite + Send + 'static,
    B: AsyncRead + AsyncWrite + Send + 'static,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    tokio::join!(pump(ar, bw, seen.clone(), decrypted), pump(br, aw, seen, decrypted));
}

async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut r: R,
    mut w: W,
    seen: Arc<Mutex<Seen>>,
    decrypted: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut seen = seen.lock().unwrap();
            if decrypted { &mut seen.decrypted } else { &mut seen.spliced }.extend_from_slice(&buf[..n]);
        }
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

// ---- an HTTPS server ----------------------------------------------------------------------

/// An HTTPS server on loopback answering with `answer`, with the certificate of `config`.
pub(crate) async fn https_server(
    config: Arc<rustls::ServerConfig>,
    answer: impl Fn(&http::Uri) -> http::Response<Full<Bytes>> + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (config, answer) = (config.clone(), answer.clone());
            tokio::spawn(async move {
                let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(conn).await else { return };
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let res = answer(req.uri());
                    async move { Ok::<_, std::convert::Infallible>(res) }
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    addr
}

// ---- a hostile front ----------------------------------------------------------------------

/// What the hostile front does with a request it intercepts.
#[derive(Clone, Default)]
pub(crate) enum Intercept {
    /// Forward everything to the gateway untouched.
    #[default]
    None,
    /// Answer this status, these headers and this body instead of forwarding.
    Answer(u16, Vec<(&'static str, String)>, String),
    /// Forward, then add these headers to the gateway's answer.
    Decorate(Vec<(&'static str, String)>),
}

pub(crate) struct Front {
    gateway: String,
    client: crate::support::Hyper,
    /// What to do with POSTs, and with GETs of `/v1/models`.
    pub(crate) post: Mutex<Intercept>,
    pub(crate) models: Mutex<Intercept>,
    /// Every request seen: method, path, `Authorization`.
    pub(crate) seen: Mutex<Vec<(Method, String, Option<String>)>>,
}

async fn front(State(f): State<Arc<Front>>, req: AxumRequest) -> AxumResponse {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let auth = parts.headers.get(AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned());
    f.seen.lock().unwrap().push((parts.method.clone(), parts.uri.path().to_owned(), auth));
    let rule = match (&parts.method, parts.uri.path()) {
        (&Method::POST, _) => f.post.lock().unwrap().clone(),
        (&Method::GET, "/v1/models") => f.models.lock().unwrap().clone(),
        _ => Intercept::None,
    };
    let with = |mut res: AxumResponse, headers: &[(&'static str, String)]| {
        for (n, v) in headers {
            res.headers_mut().insert(*n, HeaderValue::from_str(v).unwrap());
        }
        res
    };
    if let Intercept::Answer(status, headers, body) = &rule {
        let res = (StatusCode::from_u16(*status).unwrap(), body.clone()).into_response();
        return with(res, headers);
    }
    let body = body.collect().await.unwrap().to_bytes();
    let mut up = http::Request::new(Full::new(body));
    *up.method_mut() = parts.method;
    *up.uri_mut() = format!("{}{path}", f.gateway).parse().unwrap();
    for (n, v) in &parts.headers {
        if n != HOST {
            up.headers_mut().append(n, v.clone());
        }
    }
    let res = f.client.request(up).await.unwrap();
    let (mut parts, body) = res.into_parts();
    // Re-framed as one body.
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    let res = AxumResponse::from_parts(parts, Body::from(body.collect().await.unwrap().to_bytes()));
    match &rule {
        Intercept::Decorate(headers) => with(res, headers),
        _ => res,
    }
}

pub(crate) async fn serve_router(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// The local gateway behind a hostile front; the front's URL.
pub(crate) async fn hostile_front(gw: &TestGateway) -> (Arc<Front>, String) {
    let f = Arc::new(Front {
        gateway: gw.base_url().trim_end_matches('/').to_owned(),
        client: crate::support::hyper(),
        post: Mutex::default(),
        models: Mutex::default(),
        seen: Mutex::default(),
    });
    let addr = serve_router(Router::new().fallback(front).with_state(f.clone())).await;
    (f, format!("http://{addr}"))
}

/// A second server that counts every request it gets (the thief's).
pub(crate) async fn thief() -> (Arc<AtomicUsize>, String) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let router = Router::new().fallback(move || {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!({"id": "stolen", "object": "chat.completion", "choices": [{"index": 0,
                "message": {"role": "assistant", "content": "the thief's answer"}, "finish_reason": "stop"}]}))
        }
    });
    (hits, format!("http://{}", serve_router(router).await))
}

// ---- replicas of one application behind an L4 balancer ----------------------------------

/// The production `not_after` horizon of the local gateway.
pub(crate) const THIRTY_DAYS: u64 = 30 * 24 * 3600;

/// A round-robin L4 balancer on loopback: each accepted connection is piped to the next backend.
pub(crate) struct Forwarder {
    addr: SocketAddr,
    /// Connections forwarded to each backend.
    forwarded: Arc<Vec<AtomicUsize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    pub(crate) async fn start(backends: Vec<SocketAddr>) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let forwarded: Arc<Vec<AtomicUsize>> = Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = forwarded.clone();
        let task = tokio::spawn(async move {
            // Dropped with the accept loop: aborts every forwarded connection.
            let mut pipes = tokio::task::JoinSet::new();
            let mut next = 0;
            loop {
                let Ok((mut down, _)) = listener.accept().await else { continue };
                let i = next % backends.len();
                next += 1;
                counts[i].fetch_add(1, Ordering::SeqCst);
                let backend = backends[i];
                pipes.spawn(async move {
                    let _ = down.set_nodelay(true);
                    if let Ok(mut up) = TcpStream::connect(backend).await {
                        let _ = up.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                while pipes.try_join_next().is_some() {}
            }
        });
        Forwarder { addr, forwarded, task }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn forwarded(&self) -> Vec<usize> {
        self.forwarded.iter().map(|c| c.load(Ordering::SeqCst)).collect()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The compose file the refused-replica tests pin (tower-aci's and aci-proxy's), and another
/// build of the same application.
pub(crate) const PINNED_COMPOSE: &str =
    r#"{"services":{"gateway":{"image":"ghcr.io/dstack-tee/private-ai-gateway@sha256:aa"}}}"#;
pub(crate) const UNPINNED_COMPOSE: &str =
    r#"{"services":{"gateway":{"image":"ghcr.io/dstack-tee/private-ai-gateway@sha256:bb"}}}"#;

/// Stub quotes accepted; the workload pinned to `PINNED_COMPOSE`'s compose hash (with the stub
/// quote, SHA-256 of the published `app_compose`).
pub(crate) fn compose_pinned_policy() -> Policy {
    let hash = const_hex::encode(Sha256::digest(PINNED_COMPOSE.as_bytes()));
    Policy::builder()
        .select_suite(Suite::X25519)
        .allow_compose_hash(&hash)
        .dangerous()
        .accept_stub_quote()
        .unanchored_pin()
        .build()
        .unwrap()
}

/// The three replicas of the refused-replica test behind a forwarder: the pinned build, another
/// build under the same keys, and the pinned build with a failing report endpoint.
pub(crate) async fn mixed_builds() -> ([TestGateway; 3], Forwarder) {
    let keys_of_app = GatewayKeys::generate();
    let launch = SystemClock.now();
    let replica = |i: u64, compose: &str| {
        GatewayConfig::new().keys(keys_of_app.clone()).not_after(launch + THIRTY_DAYS + i).app_compose(compose)
    };
    let replicas = [
        TestGateway::start(replica(0, PINNED_COMPOSE)).await.unwrap(),
        TestGateway::start(replica(1, UNPINNED_COMPOSE)).await.unwrap(),
        TestGateway::start(replica(2, PINNED_COMPOSE)).await.unwrap(),
    ];
    replicas[2].set_fault(Some(Fault::AttestationStatus(503)));
    let lb = Forwarder::start(replicas.iter().map(TestGateway::addr).collect()).await;
    (replicas, lb)
}
