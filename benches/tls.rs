#![allow(missing_docs)]
//! TLS handshake + first request on loopback: the attested connector (WebPKI, then the SPKI pin
//! against the current keyset, then the per-request gate) against a plain rustls WebPKI
//! verifier, in one run. Both use the same rustls (ring) provider, the same root store, the same
//! gateway certificate (ECDSA P-256, signed by a test CA) and hyper's HTTP/1 client connection:
//! each iteration opens a TCP connection, handshakes, sends `GET /v1/models` and reads the body.
//!
//! Run: `cargo bench --bench tls`. After criterion's groups it
//! prints the median of an interleaved run (pinned and plain alternating), as a ratio.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aci_test_gateway::{GatewayConfig, GatewayTls, TestGateway};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tower::Service;
use tower_aci::attest::{KeyHandle, KeyProvider, Policy};
use tower_aci::e2ee::RequestBody;
use tower_aci::tls::AttestedTls;

/// One request over a fresh HTTP/1 connection on `io`.
async fn first_request<I>(io: I, authority: &str)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/v1/models").header("host", authority).body(Empty::<Bytes>::new()).unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
}

fn tls(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // A test CA and a leaf for 127.0.0.1.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();

    let keys = KeyHandle::new();
    // HTTP/1.1 only, as the plain rustls client (which offers no ALPN) and `first_request` speak.
    let attested = AttestedTls::builder(keys.clone()).root_store(roots.clone()).http1_only().build().unwrap();
    let gw = rt.block_on(async {
        let gw = TestGateway::start(GatewayConfig::new().tls(GatewayTls::new(vec![leaf.der().clone()], key).unwrap()))
            .await
            .unwrap();
        // Attest first, so every measured handshake runs the pin check against a keyset.
        let http: Client<_, RequestBody<Full<Bytes>>> =
            Client::builder(TokioExecutor::new()).build(attested.connector());
        let policy = Policy::builder().dangerous().accept_stub_quote().any_workload().build().unwrap();
        KeyProvider::builder(http)
            .handle(keys.clone())
            .base_url(gw.base_url().parse().unwrap())
            .policy(policy)
            .build()
            .unwrap()
            .establish()
            .await
            .unwrap();
        gw
    });
    let authority = gw.addr().to_string();
    let uri: http::Uri = gw.base_url().parse().unwrap();

    let plain_config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let plain = tokio_rustls::TlsConnector::from(Arc::new(plain_config));
    let server_name = ServerName::try_from("127.0.0.1").unwrap();

    let pinned_once = || {
        let mut connector = attested.connector();
        let uri = uri.clone();
        let authority = authority.clone();
        async move {
            let io = connector.call(uri).await.unwrap();
            first_request(io, &authority).await;
        }
    };
    // The same TCP connector as the attested one uses.
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let plain_once = || {
        let plain = plain.clone();
        let server_name = server_name.clone();
        let authority = authority.clone();
        let (mut tcp, uri) = (tcp.clone(), uri.clone());
        async move {
            let io = tcp.call(uri).await.unwrap();
            let tls = plain.connect(server_name, TokioIo::new(io)).await.unwrap();
            first_request(TokioIo::new(tls), &authority).await;
        }
    };

    let mut g = c.benchmark_group("tls_handshake_and_first_request");
    g.bench_function("webpki", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    plain_once().await;
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("pinned", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    pinned_once().await;
                }
                start.elapsed()
            })
        })
    });
    g.finish();

    // Interleaved: alternating runs see the same machine load.
    let (mut p, mut w): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..400 {
            let t = Instant::now();
            pinned_once().await;
            p.push(t.elapsed());
            let t = Instant::now();
            plain_once().await;
            w.push(t.elapsed());
        }
    });
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mp, mw) = (median(&mut p), median(&mut w));
    println!(
        "interleaved medians over 400 pairs: pinned {mp:?}, webpki {mw:?}, ratio pinned/webpki {:.3}",
        mp.as_secs_f64() / mw.as_secs_f64()
    );
    drop(gw);
}

criterion_group!(benches, tls);
criterion_main!(benches);
