#![allow(missing_docs)]
//! 200 concurrent requests through the attested connector (hyper-util's pooled client), over
//! HTTP/2 (one connection, 200 streams) against HTTP/1.1 (one request per connection at a
//! time, so the pool holds up to 200 connections), on loopback TLS to the local gateway. Both
//! clients are warm: the HTTP/2 connection and the HTTP/1.1 pool exist before measuring, so the
//! figure is steady-state request cost, not handshakes. Each batch is 200 `GET /v1/models`
//! sent at once and read to the end.
//!
//! Run: `cargo bench --bench h2`. After criterion's group it
//! prints the medians of an interleaved run (h2 and h1 batches alternating), as a ratio.

use std::time::{Duration, Instant};

use aci_test_gateway::{GatewayConfig, GatewayTls, TestGateway};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::future::join_all;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tower_aci::attest::{KeyHandle, KeyProvider, Policy};
use tower_aci::e2ee::RequestBody;
use tower_aci::tls::{AttestedConnector, AttestedTls};

const STREAMS: usize = 200;

type Pinned = Client<AttestedConnector<HttpConnector>, RequestBody<Full<Bytes>>>;

/// 200 concurrent `GET /v1/models`, each read to the end; the versions seen.
async fn batch(client: &Pinned, url: &http::Uri) -> Vec<http::Version> {
    join_all((0..STREAMS).map(|_| {
        let req = http::Request::get(url.clone()).body(RequestBody::from(Bytes::new())).unwrap();
        async move {
            let res = client.request(req).await.unwrap();
            assert_eq!(res.status(), 200);
            let v = res.version();
            res.into_body().collect().await.unwrap();
            v
        }
    }))
    .await
}

fn h2(c: &mut Criterion) {
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
    let over_h2 = AttestedTls::builder(keys.clone()).root_store(roots.clone()).build().unwrap();
    let over_h1 = AttestedTls::builder(keys.clone()).root_store(roots).http1_only().build().unwrap();
    let client = |tls: &AttestedTls| -> Pinned { Client::builder(TokioExecutor::new()).build(tls.connector()) };
    let (h2_client, h1_client) = (client(&over_h2), client(&over_h1));

    let gw = rt.block_on(async {
        let gw = TestGateway::start(GatewayConfig::new().tls(GatewayTls::new(vec![leaf.der().clone()], key).unwrap()))
            .await
            .unwrap();
        let policy = Policy::builder().dangerous().accept_stub_quote().any_workload().build().unwrap();
        KeyProvider::builder(client(&over_h2))
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
    let url: http::Uri = format!("{}/v1/models", gw.base_url()).parse().unwrap();

    // Warm both: the HTTP/2 connection, and a pool of HTTP/1.1 connections.
    rt.block_on(async {
        let _ = h2_client.request(http::Request::get(url.clone()).body(RequestBody::from(Bytes::new())).unwrap()).await;
        for _ in 0..3 {
            assert!(batch(&h2_client, &url).await.iter().all(|v| *v == http::Version::HTTP_2));
            assert!(batch(&h1_client, &url).await.iter().all(|v| *v == http::Version::HTTP_11));
        }
    });
    let h2_connections = gw.h2_connections();
    println!("connections after warm-up: {} accepted, {h2_connections} over HTTP/2", gw.connections_accepted());

    let mut g = c.benchmark_group("200_concurrent_requests");
    g.bench_function("h2", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    batch(&h2_client, &url).await;
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("h1", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    batch(&h1_client, &url).await;
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    assert_eq!(gw.h2_connections(), h2_connections, "the HTTP/2 client kept its one connection");

    // Interleaved: alternating batches see the same machine load.
    let (mut a, mut b): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..60 {
            let t = Instant::now();
            batch(&h2_client, &url).await;
            a.push(t.elapsed());
            let t = Instant::now();
            batch(&h1_client, &url).await;
            b.push(t.elapsed());
        }
    });
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (m2, m1) = (median(&mut a), median(&mut b));
    println!(
        "interleaved medians over 60 pairs of {STREAMS}-request batches: h2 {m2:?}, h1 {m1:?}, ratio h1/h2 {:.2}",
        m1.as_secs_f64() / m2.as_secs_f64()
    );
    println!("connections at the end: {} accepted, {} over HTTP/2", gw.connections_accepted(), gw.h2_connections());
    drop(gw);
}

criterion_group!(benches, h2);
criterion_main!(benches);
