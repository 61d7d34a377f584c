//! Egress through an HTTP proxy (`CONNECT`), against a small real proxy on loopback written
//! here: it accepts `CONNECT`, records the request heads it saw and every byte it spliced, can
//! require `Proxy-Authorization`, refuse, or terminate TLS itself with its own certificate for
//! the gateway's name (an inspection appliance). The gateway is the local test gateway serving
//! HTTPS. NO_PROXY matching is unit-tested in `src/egress.rs` with an injected environment (the
//! process environment is never touched here).
#![cfg(all(feature = "test-gateway", feature = "rustls"))]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use rustls::RootCertStore;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;
use tower_aci::client::ReceiptCheck;
use tower_aci::gateway::{GatewayConfig, GatewayTls, TestGateway};
use tower_aci::receipt::ExchangeRecord;
use tower_aci::{AttestationFailure, Client, ErrorKind};

const CHAT: &str = "/v1/chat/completions";

fn chat(text: &str, stream: bool) -> String {
    json!({"model": "demo-model", "stream": stream, "messages": [{"role": "user", "content": text}]}).to_string()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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

    fn gateway_tls(&self) -> GatewayTls {
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

fn private(key: &rcgen::KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

fn roots(cas: &[&Ca]) -> RootCertStore {
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
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Seen>>,
}

impl ConnectProxy {
    async fn start(mode: Mode) -> ConnectProxy {
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

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub(crate) fn heads(&self) -> Vec<String> {
        self.seen.lock().unwrap().heads.clone()
    }

    fn spliced(&self) -> Vec<u8> {
        self.seen.lock().unwrap().spliced.clone()
    }

    fn decrypted(&self) -> Vec<u8> {
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

// ---- the gateway through the proxy -------------------------------------------------------

/// The local gateway over HTTPS with a certificate from `ca`.
async fn gateway(ca: &Ca) -> TestGateway {
    TestGateway::start(GatewayConfig::new().tls(ca.gateway_tls())).await.unwrap()
}

fn content(answer: &[u8]) -> String {
    let v: Value = serde_json::from_slice(answer).unwrap();
    v["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_client_through_a_connect_proxy_attests_chats_streams_and_verifies_receipts_and_the_proxy_sees_only_connect()
{
    let ca = Ca::new("gateway CA");
    let gw = gateway(&ca).await;
    let proxy = ConnectProxy::start(Mode::Splice).await;
    // WebPKI to the gateway's CA, then the pin (not pin-only: the CA-signed path end to end).
    let client = Client::for_test_gateway(&gw)
        .root_store(roots(&[&ca]))
        .https_proxy(proxy.url())
        .api_key("sk-egress")
        .build()
        .await
        .unwrap();
    assert_eq!(client.keyset().unwrap().digest(), gw.keyset_digest());

    // A buffered chat.
    let answer = client.post(CHAT, chat("tunnelled walrus", false)).await.unwrap();
    assert_eq!(content(&answer.body), "You said: tunnelled walrus");

    // A stream, read to its end, whose receipt is fetched and verified in the background.
    let req = Request::post(client.url(CHAT).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat("tunnelled heron", true))))
        .unwrap();
    let res = client.service().oneshot(req).await.unwrap();
    let check = res.extensions().get::<ReceiptCheck>().cloned().expect("a background receipt check");
    let record = res.extensions().get::<ExchangeRecord>().cloned().unwrap();
    let sse = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(sse.contains("[DONE]"), "{sse}");
    let streamed: String = sse
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.strip_prefix("data: ")?).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(streamed, "You said: tunnelled heron");
    let verified = tokio::time::timeout(Duration::from_secs(10), check.verified()).await.unwrap().unwrap();
    assert_eq!(verified.receipt().workload_keyset_digest(), gw.keyset_digest());
    // And a receipt fetched on demand.
    let fetches = gw.receipt_fetches();
    client.verify_receipt(&record).await.unwrap();
    assert!(gw.receipt_fetches() > fetches);

    // Every connection went through the proxy, which saw one CONNECT per tunnel to the
    // gateway's host:port and nothing else in clear.
    let target = format!("127.0.0.1:{}", gw.addr().port());
    let heads = proxy.heads();
    assert!(heads.len() >= 2, "the report's connection and a pinned one: {heads:?}");
    for head in &heads {
        assert_eq!(head, &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"));
    }
    assert_eq!(gw.connections_accepted(), heads.len(), "a connection that did not go through the proxy");
    let spliced = proxy.spliced();
    assert!(spliced.len() > 1000, "TLS was spliced: {} bytes", spliced.len());
    for clear in [&b"tunnelled"[..], b"walrus", b"heron", b"HTTP/", b"/v1/", b"sk-egress", b"You said"] {
        assert!(!contains(&spliced, clear), "{:?} crossed the proxy in clear", String::from_utf8_lossy(clear));
    }
}

#[tokio::test]
async fn a_proxy_that_terminates_tls_is_refused_by_the_pin_even_with_a_trusted_ca() {
    let gateway_ca = Ca::new("gateway CA");
    let appliance_ca = Ca::new("inspection appliance CA");
    let appliance = appliance_ca.server_config(&["127.0.0.1"]);
    let gw = gateway(&gateway_ca).await;
    let trusting = || {
        // Both CAs are trusted: WebPKI passes for the appliance too, only the pin tells them apart.
        Client::for_test_gateway(&gw).root_store(roots(&[&gateway_ca, &appliance_ca]))
    };

    // Intercepted from the first connection: the report comes over the appliance's TLS key,
    // which the attested keyset does not list.
    let proxy = ConnectProxy::start(Mode::Intercept(appliance.clone())).await;
    let e = trusting().https_proxy(proxy.url()).build().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding), "{e}");
    assert!(gw.attestations_served() >= 1, "the appliance relayed the report request (the attack was real)");
    assert!(contains(&proxy.decrypted(), b"GET /v1/aci/attestation?nonce="), "the appliance read the report request");
    assert_eq!(gw.requests_seen(), 0);

    // Intercepted after an honest attestation: the handshake with the appliance is refused
    // before any request byte, and the prompt never reaches it.
    let proxy = ConnectProxy::start(Mode::Splice).await;
    let client = trusting().https_proxy(proxy.url()).build().await.unwrap();
    proxy.set_mode(Mode::Intercept(appliance));
    let tunnels = proxy.heads().len();
    let e = client.post(CHAT, chat("inspected ocelot", false)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding), "{e}");
    assert!(proxy.heads().len() > tunnels, "the chat's connection went to the appliance");
    tokio::time::sleep(Duration::from_millis(300)).await; // a refresh the refusal woke may pass through it
    assert!(!contains(&proxy.decrypted(), b"ocelot"), "the appliance read the prompt");
    assert!(!contains(&proxy.decrypted(), b"/v1/chat/completions"), "the appliance saw the chat request");
    assert_eq!(gw.requests_seen(), 0);
}

#[tokio::test]
async fn a_proxy_that_refuses_connect_gives_an_error_naming_its_status() {
    let ca = Ca::new("gateway CA");
    let gw = gateway(&ca).await;
    for (status, says) in [
        ("HTTP/1.1 403 Forbidden", "403 Forbidden"),
        ("HTTP/1.1 407 Proxy Authentication Required", "407 Proxy Authentication Required"),
        ("HTTP/1.1 502 Bad Gateway", "502 Bad Gateway"),
    ] {
        let proxy = ConnectProxy::start(Mode::Refuse(status)).await;
        let e = Client::for_test_gateway(&gw).https_proxy(proxy.url()).build().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
        let text = e.to_string();
        for part in [says, &proxy.url(), &format!("127.0.0.1:{}", gw.addr().port())] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
    }
    assert_eq!(gw.connections_accepted(), 0, "nothing reached the gateway");

    // A proxy URL that is not one fails at build, without repeating its password.
    let e = Client::for_test_gateway(&gw).https_proxy("socks5://u:hunter2@p:1").build().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

/// A `tracing` writer into a buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn proxy_credentials_go_in_proxy_authorization_and_are_never_logged() {
    let ca = Ca::new("gateway CA");
    let gw = gateway(&ca).await;
    // alice:s3cr@t-Q7 (RFC 7617 Basic), percent-encoded in the URL.
    let expected = "Basic YWxpY2U6czNjckB0LVE3";
    let proxy = ConnectProxy::start(Mode::RequireAuth(expected.to_owned())).await;
    let with = |credentials: &str| format!("http://{credentials}@{}", proxy.addr);

    // The log at trace level (this current-thread runtime's tasks all log on this thread).
    let log = Captured::default();
    let sink = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let e = Client::for_test_gateway(&gw).https_proxy(proxy.url()).build().await.unwrap_err();
    assert!(e.to_string().contains("407") && e.to_string().contains("user:password@"), "{e}");
    let e = Client::for_test_gateway(&gw).https_proxy(with("alice:wrong")).build().await.unwrap_err();
    assert!(e.to_string().contains("did not accept the credentials"), "{e}");

    let builder = Client::for_test_gateway(&gw).https_proxy(with("alice:s3cr%40t-Q7")).api_key("sk-auth");
    assert!(!format!("{builder:?}").contains("s3cr"));
    let client = builder.build().await.unwrap();
    assert_eq!(
        content(&client.post(CHAT, chat("authorised yak", false)).await.unwrap().body),
        "You said: authorised yak"
    );
    let heads = proxy.heads();
    assert!(heads.iter().any(|h| h.contains(&format!("Proxy-Authorization: {expected}\r\n"))), "{heads:?}");
    assert!(!format!("{client:?}").contains("s3cr"));

    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("CONNECT tunnel open"), "the capture works and traces the tunnel: {log}");
    for secret in ["s3cr", "YWxpY2U6czNjckB0LVE3", "Q7"] {
        assert!(!log.contains(secret), "{secret:?} is in the log");
    }
}

/// reqwest 0.12 gives a tunnelled connection no `TlsInfo` (seanmonstar/reqwest#2589, open), so
/// an answer it carries cannot be bound to the attested channel: the reqwest clients the crate
/// builds go through the same proxy as its own connector (never around it) and fail closed with
/// `ChannelBinding`. When reqwest carries `TlsInfo` through tunnels, this test must be turned
/// round.
#[cfg(feature = "reqwest-middleware")]
#[tokio::test]
async fn the_reqwest_clients_the_crate_builds_take_the_same_proxy_and_fail_closed_without_tls_info() {
    use tower_aci::attest::{KeyHandle, KeyProvider, Policy};
    use tower_aci::middleware::ReqwestService;
    use tower_aci::tls::AttestedTls;

    let ca = Ca::new("gateway CA");
    let gw = gateway(&ca).await;
    let proxy = ConnectProxy::start(Mode::RequireAuth("Basic cnE6cnEtcGFzcw==".to_owned())).await; // rq:rq-pass
    let url = format!("http://rq:rq-pass@{}", proxy.addr);
    let target = format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n", gw.addr().port());
    let binding = ErrorKind::Attestation(AttestationFailure::ChannelBinding);

    // Client::reqwest(): the pinned rustls configuration, through the client's proxy.
    let client = Client::for_test_gateway(&gw)
        .root_store(roots(&[&ca]))
        .https_proxy(&url)
        .api_key("sk-rq")
        .build()
        .await
        .unwrap();
    let tunnels = proxy.heads().len();
    let rq = client.reqwest().unwrap();
    let e = rq.post(client.url(CHAT).unwrap().to_string()).body(chat("reqwest raven", false)).send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(e) = e else { panic!("not refused by the E2EE middleware: {e:?}") };
    assert_eq!(e.downcast_ref::<tower_aci::Error>().map(|e| e.kind()), Some(binding), "{e:?}");
    assert!(proxy.heads().len() > tunnels, "reqwest went around the proxy");

    // ReqwestService::pinned: the report fetch goes through the proxy of the AttestedTls.
    let keys = KeyHandle::new();
    let tls = AttestedTls::builder(keys.clone()).root_store(roots(&[&ca])).https_proxy(&url).build().unwrap();
    let tunnels = proxy.heads().len();
    let provider = KeyProvider::builder(ReqwestService::pinned(&tls).unwrap())
        .handle(keys)
        .base_url(gw.base_url().parse().unwrap())
        .policy(Policy::builder().dangerous().accept_stub_quote().any_workload().build().unwrap())
        .build()
        .unwrap();
    assert_eq!(provider.establish().await.unwrap_err().kind(), binding);
    assert!(proxy.heads().len() > tunnels, "the report went around the proxy");

    let heads = proxy.heads();
    assert!(heads.iter().all(|h| h.starts_with(&target)), "{heads:?}");
    assert_eq!(gw.connections_accepted(), heads.len(), "a connection that did not go through the proxy");
    assert!(!contains(&proxy.spliced(), b"raven"));
}

// ---- the PCCS through the tunnel, and its extra root -------------------------------------

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

type Pinned = hyper_util::client::legacy::Client<
    tower_aci::tls::AttestedConnector<hyper_util::client::legacy::connect::HttpConnector>,
    tower_aci::e2ee::RequestBody<Full<Bytes>>,
>;

fn hyper_client(tls: &tower_aci::tls::AttestedTls) -> Pinned {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(tls.connector())
}

#[cfg(feature = "dcap")]
#[tokio::test]
async fn the_pccs_fetch_goes_through_the_tunnel_and_its_extra_root_applies_to_it_alone() {
    use tower_aci::attest::KeyHandle;
    use tower_aci::attest::dcap::fetch_collateral;
    use tower_aci::tls::AttestedTls;

    use crate::attest_dcap::{FakePccs, quote};

    // The PCCS, reached by name through the proxy only (pccs.test resolves nowhere else), behind
    // an appliance that re-signs with its own CA.
    let appliance_ca = Ca::new("inspection appliance CA");
    let pccs = FakePccs::new();
    let stand_in = pccs.clone();
    let pccs_addr = https_server(appliance_ca.server_config(&["pccs.test"]), move |uri| stand_in.answer(uri)).await;
    let routes = HashMap::from([("pccs.test:443".to_owned(), pccs_addr)]);
    let proxy = ConnectProxy::with_routes(Mode::Splice, routes).await;
    let unrelated = Ca::new("some public CA");
    let tls = |extra: bool| {
        let b = AttestedTls::builder(KeyHandle::new())
            .root_store(roots(&[&unrelated]))
            .unpinned_host("pccs.test")
            .https_proxy(proxy.url());
        if extra { b.unpinned_extra_root(appliance_ca.der()) } else { b }.build().unwrap()
    };
    let url: http::Uri = "https://pccs.test".parse().unwrap();

    // Without the extra root the appliance's certificate is refused, and nothing is asked.
    let e = fetch_collateral(hyper_client(&tls(false)), &url, &quote()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(pccs.seen().is_empty(), "{:?}", pccs.seen());

    // With it, the collateral is fetched, through the tunnel.
    let collateral = fetch_collateral(hyper_client(&tls(true)), &url, &quote()).await.unwrap();
    assert_eq!(collateral.fmspc(), Some("B0C06F000000"));
    assert_eq!(pccs.seen().len(), 4, "{:?}", pccs.seen());
    let heads = proxy.heads();
    assert!(
        !heads.is_empty() && heads.iter().all(|h| h.starts_with("CONNECT pccs.test:443 HTTP/1.1\r\n")),
        "{heads:?}"
    );
    assert!(!contains(&proxy.spliced(), b"/certification/v4"), "the PCCS requests crossed the proxy in clear");
}

#[tokio::test]
async fn the_extra_pccs_root_never_applies_to_the_gateway() {
    use tower_aci::attest::{KeyHandle, KeyProvider, Policy};
    use tower_aci::tls::AttestedTls;

    // A gateway whose certificate chains to the appliance CA, and whose keyset lists that very
    // certificate: only WebPKI can refuse it, and only the root store counts for the gateway.
    let appliance_ca = Ca::new("inspection appliance CA");
    let gw = gateway(&appliance_ca).await;
    let unrelated = Ca::new("some public CA");
    let keys = KeyHandle::new();
    let tls = |extra_as_root: bool| {
        let b = AttestedTls::builder(keys.clone()).unpinned_host("pccs.test").no_proxy();
        let b = if extra_as_root {
            b.root_store(roots(&[&unrelated, &appliance_ca]))
        } else {
            b.root_store(roots(&[&unrelated])).unpinned_extra_root(appliance_ca.der())
        };
        b.build().unwrap()
    };
    let establish = |tls: AttestedTls| {
        let provider = KeyProvider::builder(hyper_client(&tls))
            .handle(keys.clone())
            .base_url(gw.base_url().parse().unwrap())
            .policy(Policy::builder().dangerous().accept_stub_quote().any_workload().build().unwrap())
            .build()
            .unwrap();
        async move { provider.establish().await }
    };
    let e = establish(tls(false)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(e.to_string().contains("fetching the attestation report failed"), "{e}");
    assert_eq!(gw.attestations_served(), 0);
    // The same CA in the root store: the gateway is accepted (so the refusal above was the root's).
    establish(tls(true)).await.unwrap();
    assert_eq!(gw.attestations_served(), 1);

    // Client: an extra PCCS root without a PCCS is a configuration error.
    #[cfg(feature = "dcap")]
    {
        let e = Client::for_test_gateway(&gw).pccs_extra_root(appliance_ca.der()).build().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert!(e.to_string().contains("pccs_extra_root"), "{e}");
    }
}

// ---- aci-proxy through the proxy ---------------------------------------------------------

#[cfg(feature = "proxy")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aci_proxy_with_https_proxy_sends_everything_through_the_tunnel() {
    use crate::proxy_binary::{chat as proxy_chat, command, start, stream_text};

    // The local test gateway serves HTTPS (self-signed: --tls-pin-only) and is reached through
    // the CONNECT proxy, which wants credentials (given in the environment, not on the line).
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("gateway.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(&pem, format!("{}{}", cert.cert.pem(), cert.key_pair.serialize_pem())).unwrap();
    let proxy = ConnectProxy::start(Mode::RequireAuth("Basic b3A6cGFzcy13b3JkLTk=".to_owned())).await;
    let url = format!("http://op:pass-word-9@{}", proxy.addr);
    let running = start(
        &["--local-test-gateway-tls", pem.to_str().unwrap(), "--tls-pin-only"],
        &[("ACI_PROXY_HTTPS_PROXY", url.as_str()), ("RUST_LOG", "trace")],
    );
    let http = reqwest::Client::new();
    let send = |text: &'static str, stream: bool| {
        http.post(running.url(CHAT))
            .header("content-type", "application/json")
            .body(proxy_chat(text, stream).to_string())
            .send()
    };
    let answer: Value =
        serde_json::from_str(&send("binary badger", false).await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "You said: binary badger");
    let sse = send("binary bittern", true).await.unwrap().text().await.unwrap();
    assert_eq!(stream_text(&sse), "You said: binary bittern");

    let heads = proxy.heads();
    assert!(heads.len() >= 2, "{heads:?}");
    let target = heads[0].split(' ').nth(1).unwrap().to_owned();
    assert!(target.starts_with("127.0.0.1:"), "{target}");
    for head in &heads {
        assert!(head.starts_with(&format!("CONNECT {target} HTTP/1.1\r\n")), "{head}");
    }
    for clear in [&b"binary"[..], b"badger", b"bittern", b"HTTP/", b"/v1/"] {
        assert!(!contains(&proxy.spliced(), clear), "{:?} crossed in clear", String::from_utf8_lossy(clear));
    }
    let log = running.log();
    assert!(log.contains(&format!("proxy=http://{}", proxy.addr)), "the proxy is named at start: {log}");
    assert!(!log.contains("pass-word-9") && !log.contains("b3A6cGFzcy13b3JkLTk="), "credentials in the log");

    // `aci-proxy config` shows the proxy without its credentials; a bad URL is refused
    // without repeating them.
    let out = command(&["config", "--https-proxy", "http://op:pass-word-9@proxy.corp:3128"], &[]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("https-proxy = \"http://proxy.corp:3128\""), "{text}");
    assert!(!text.contains("pass-word-9"), "{text}");
    let out = command(&["config", "--https-proxy", "socks5://op:pass-word-9@p:1"], &[]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("--https-proxy"), "{text}");
    assert!(!text.contains("pass-word-9"), "{text}");
}
