//! Which failed reports refuse a keyset digest, and that the record of refusals holds (issue 24,
//! item 6): a refusal makes the named keyset's receipts fail with `RefusedKeyset` instead of
//! being vouched for by the same-key rule, so nobody but the keyset's own holder may cause one.
//! Hostile paths here are real: a TLS-intercepting proxy on loopback with a certificate the
//! client trusts, a transport that replays another nonce, a gateway that mints refused keysets
//! to push a real refusal out of the record.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aci_test_gateway::{GatewayConfig, GatewayKeys, TestGateway};
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};
use tower_aci::attest::{Clock, KeyProvider, ManualClock, Policy, SystemClock};
use tower_aci::protocol::Suite;
use tower_aci::receipt::{ReceiptClient, ReceiptPolicy, verify_exchange};
use tower_aci::{AttestationFailure, BoxError, E2eeLayer, ErrorKind, ReceiptFailure};

use crate::data::reason;
use crate::support::{hyper, layer_client, post, read};

const THIRTY_DAYS: u64 = 30 * 24 * 3600;
use crate::doubles::{PINNED_COMPOSE, UNPINNED_COMPOSE, compose_pinned_policy};

fn stub_policy() -> Policy {
    Policy::builder().select_suite(Suite::X25519).dangerous().accept_stub_quote().any_workload().build().unwrap()
}

fn chat(url: &str, text: &str) -> Request<Full<Bytes>> {
    post(url, &json!({"model": "demo-model", "messages": [{"role": "user", "content": text}]}))
}

/// `uri` with its authority replaced.
fn to_authority(uri: &Uri, authority: &str) -> Uri {
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(authority.parse().unwrap());
    Uri::from_parts(parts).unwrap()
}

/// A provider transport over loopback HTTP that applies `rewrite` to each report request.
fn rewriting(
    rewrite: impl Fn(&mut Request<Full<Bytes>>) + Clone + Send + Sync + 'static,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<hyper::body::Incoming>,
    Error = BoxError,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let client = hyper();
    tower::service_fn(move |mut req: Request<Full<Bytes>>| {
        if req.uri().path().ends_with("/v1/aci/attestation") {
            rewrite(&mut req);
        }
        let client = client.clone();
        async move { client.oneshot(req).await.map_err(BoxError::from) }
    })
}

/// A replayed report (a genuine report served for another nonce, or for none) fails the binding
/// to our nonce; anyone who saw one report can replay it, so it refuses nothing.
#[tokio::test]
async fn a_replayed_report_refuses_no_keyset() {
    let gw = TestGateway::start(GatewayConfig::new()).await.unwrap();
    let other_nonce = "ab".repeat(32);
    type Rewrite = fn(&mut Request<Full<Bytes>>, &str);
    let cases: [(&str, Rewrite, AttestationFailure); 2] = [
        (
            "served for another nonce",
            |req, nonce| {
                let path = format!("{}?nonce={nonce}", req.uri().path());
                let mut parts = req.uri().clone().into_parts();
                parts.path_and_query = Some(path.parse().unwrap());
                *req.uri_mut() = Uri::from_parts(parts).unwrap();
            },
            AttestationFailure::ReportData,
        ),
        (
            "served for no nonce",
            |req, _| {
                let mut parts = req.uri().clone().into_parts();
                parts.path_and_query = Some(req.uri().path().parse().unwrap());
                *req.uri_mut() = Uri::from_parts(parts).unwrap();
            },
            AttestationFailure::Nonce,
        ),
    ];
    for (what, rewrite, failure) in cases {
        let nonce = other_nonce.clone();
        let provider = KeyProvider::builder(rewriting(move |req| rewrite(req, &nonce)))
            .base_url(gw.base_url().parse().unwrap())
            .policy(stub_policy())
            .build()
            .unwrap();
        let err = provider.establish().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Attestation(failure), "{what}: {err}");
        let keys = provider.handle();
        assert!(
            keys.refused_keysets().is_empty(),
            "attack succeeded ({what}): the genuine keyset was refused: {:?}",
            keys.refused_keysets()
        );
        assert!(keys.refused_keyset(&gw.keyset_digest()).is_none(), "{what}");
    }
}

/// Failures of time (our clock against `not_after` and the policy's horizon) and of our verifier
/// (no collateral to verify the quote with) say nothing about the workload: no refusal.
#[tokio::test]
async fn expiry_horizon_and_missing_collateral_refuse_no_keyset() {
    const T0: u64 = 1_750_000_000;
    let expired = TestGateway::start(GatewayConfig::new().not_after(T0 - 1)).await.unwrap();
    let far = TestGateway::start(GatewayConfig::new().not_after(T0 + THIRTY_DAYS)).await.unwrap();
    let short_horizon = Policy::builder()
        .select_suite(Suite::X25519)
        .max_validity(Duration::from_secs(24 * 3600))
        .dangerous()
        .accept_stub_quote()
        .any_workload()
        .build()
        .unwrap();
    // Hardware verification required (the default), and no collateral given or fetched.
    let hardware = Policy::builder().select_suite(Suite::X25519).dangerous().any_workload().build().unwrap();
    let cases = [
        ("expired", &expired, stub_policy(), AttestationFailure::Expired),
        ("beyond the horizon", &far, short_horizon, AttestationFailure::NotAfterTooFar),
        ("no collateral", &far, hardware, AttestationFailure::HardwareUnverifiable),
    ];
    for (what, gw, policy, failure) in cases {
        let provider = KeyProvider::builder(hyper())
            .base_url(gw.base_url().parse().unwrap())
            .policy(policy)
            .clock(Arc::new(ManualClock::new(T0)))
            .build()
            .unwrap();
        let err = provider.establish().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Attestation(failure), "{what}: {err}");
        let refused = provider.handle().refused_keysets();
        assert!(refused.is_empty(), "{what}: the keyset was refused for a failure of time or verifier: {refused:?}");
    }
}

/// Without an attested channel (the user gave the channel check up and the gateway is not on
/// loopback), whoever is on the path can wrap the genuine keyset in evidence that fails the
/// policy: nothing is refused on such a report.
#[tokio::test]
async fn an_unbound_path_cannot_get_the_genuine_keyset_refused() {
    let gw = TestGateway::start(GatewayConfig::new().app_compose(PINNED_COMPOSE)).await.unwrap();
    let addr = gw.addr().to_string();
    // The provider names a remote host; the transport (the path) delivers to the gateway and
    // swaps the published app_compose for another build's in the report it relays.
    let client = hyper();
    let path = tower::service_fn(move |mut req: Request<Full<Bytes>>| {
        *req.uri_mut() = to_authority(req.uri(), &addr);
        let client = client.clone();
        async move {
            let res = client.oneshot(req).await?;
            let (parts, body) = res.into_parts();
            let mut report: Value = serde_json::from_slice(&body.collect().await?.to_bytes())?;
            report["attestation"]["evidence"]["app_compose"] = Value::String(UNPINNED_COMPOSE.to_owned());
            Ok::<_, BoxError>(Response::from_parts(parts, Full::new(Bytes::from(serde_json::to_vec(&report)?))))
        }
    });
    let provider = KeyProvider::builder(path)
        .base_url(format!("http://gw.example:{}", gw.addr().port()).parse().unwrap())
        .policy(compose_pinned_policy())
        .dangerous()
        .accept_unbound_channel()
        .build()
        .unwrap();
    let err = provider.establish().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Attestation(AttestationFailure::NotAllowed), "{err}");
    let refused = provider.handle().refused_keysets();
    assert!(refused.is_empty(), "attack succeeded: the genuine keyset was refused on an unbound path: {refused:?}");
}

/// The flush attack: a gateway whose report fails the policy mints a fresh refused keyset for
/// every search it triggers (receipts naming digests nobody knows), until the real refusal would
/// have been forgotten and its receipts pass the same-key rule again. The refusal must hold.
#[tokio::test]
async fn the_refusal_record_cannot_be_flushed_by_many_searches() {
    let keys_of_app = GatewayKeys::generate();
    let launch = SystemClock.now();
    let build = |compose: &str, i: u64| {
        GatewayConfig::new().keys(keys_of_app.clone()).not_after(launch + THIRTY_DAYS + i).app_compose(compose)
    };
    let pinned = TestGateway::start(build(PINNED_COMPOSE, 0)).await.unwrap();
    let unpinned = TestGateway::start(build(UNPINNED_COMPOSE, 1)).await.unwrap();
    // The provider's report requests go wherever `reports_to` says (a balancer's choice).
    let reports_to = Arc::new(Mutex::new(pinned.addr()));
    let to = reports_to.clone();
    let clock = ManualClock::new(launch);
    let provider = KeyProvider::builder(rewriting(move |req| {
        let addr: SocketAddr = *to.lock().unwrap();
        *req.uri_mut() = to_authority(req.uri(), &addr.to_string());
    }))
    .base_url(pinned.base_url().parse().unwrap())
    .policy(compose_pinned_policy())
    .clock(Arc::new(clock.clone()))
    .digest_probes(1)
    .min_refresh_interval(Duration::from_secs(1))
    .build()
    .unwrap();
    assert_eq!(provider.establish().await.unwrap().digest(), pinned.keyset_digest());
    let keys = provider.handle();

    // The unpinned build (same KMS-derived keys) serves an exchange; its report is refused.
    let layered = ServiceBuilder::new().layer(E2eeLayer::new(keys.clone())).service(layer_client());
    let res = layered.oneshot(chat(&format!("{}/v1/chat/completions", unpinned.base_url()), "which build")).await;
    let res = res.unwrap();
    assert_eq!(res.status(), 200);
    let record = res.extensions().get::<tower_aci::receipt::ExchangeRecord>().cloned().unwrap();
    read(res.into_body()).await.unwrap();
    let receipt = ReceiptClient::new(hyper(), unpinned.base_url().parse().unwrap()).fetch_for(&record, None).await;
    let receipt = receipt.unwrap();
    let refused_digest = unpinned.keyset_digest();
    *reports_to.lock().unwrap() = unpinned.addr();
    keys.attest_digest(&refused_digest).expect("a search").await;
    assert_eq!(keys.refused_keyset(&refused_digest).unwrap().failure(), AttestationFailure::NotAllowed);
    let policy = ReceiptPolicy::new();
    assert_eq!(
        reason(verify_exchange(&receipt, &record, &keys, &policy)),
        ReceiptFailure::RefusedKeyset(AttestationFailure::NotAllowed)
    );

    // The flush: each search reaches a report of a keyset never seen before, refused too.
    for i in 0..80u64 {
        unpinned.renew_keyset(launch + THIRTY_DAYS + 2 + i);
        clock.advance(2);
        if let Some(search) = keys.attest_digest(&unpinned.keyset_digest()) {
            search.await;
        }
    }
    assert!(keys.refused_keysets().len() >= 64, "{} refusals", keys.refused_keysets().len());
    let outcome = verify_exchange(&receipt, &record, &keys, &policy);
    if let Ok(v) = &outcome {
        panic!("attack succeeded: the refusal was flushed and the receipt verified ({:?})", v.keyset_match());
    }
    assert_eq!(reason(outcome), ReceiptFailure::RefusedKeyset(AttestationFailure::NotAllowed));
    assert_eq!(keys.refused_keyset(&refused_digest).unwrap().failure(), AttestationFailure::NotAllowed);
}

/// Over real TLS: a TLS-intercepting proxy (a middlebox or CDN with a certificate the client
/// trusts) between the client and an honest gateway.
#[cfg(feature = "rustls")]
mod intercepted {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aci_test_gateway::{GatewayConfig, GatewayKeys, TestGateway};
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use serde_json::Value;
    use tokio::net::{TcpListener, TcpStream};
    use tower::{ServiceBuilder, ServiceExt};
    use tower_aci::attest::{Clock, KeyHandle, KeyProvider, Policy, SystemClock};
    use tower_aci::receipt::{ExchangeRecord, KeysetMatch, ReceiptClient, ReceiptPolicy};
    use tower_aci::tls::AttestedTls;
    use tower_aci::{AttestationFailure, E2eeLayer, ErrorKind};

    use super::{PINNED_COMPOSE, THIRTY_DAYS, UNPINNED_COMPOSE, chat, compose_pinned_policy, stub_policy};
    use crate::tls::{Ca, Pinned, client};

    /// A report rewrite the interceptor applies.
    type Edit = fn(&mut Value);

    /// Terminates TLS with a certificate of its own for `gw.test` (signed by the CA the client
    /// trusts) and relays each HTTP/1.1 request to the gateway over a TLS connection of its own;
    /// `edit` rewrites the reports it relays.
    struct Interceptor {
        addr: SocketAddr,
        relayed: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Interceptor {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Interceptor {
        async fn start(ca: &Ca, upstream: SocketAddr, edit: Option<Edit>) -> Interceptor {
            let (cert, key) = ca.leaf_der(&["gw.test"]);
            let crypto = Arc::new(rustls::crypto::ring::default_provider());
            let mut server = rustls::ServerConfig::builder_with_provider(crypto.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .unwrap();
            server.alpn_protocols = vec![b"http/1.1".to_vec()];
            let mut upstream_tls = rustls::ClientConfig::builder_with_provider(crypto)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(ca.roots())
                .with_no_client_auth();
            upstream_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            let connector = tokio_rustls::TlsConnector::from(Arc::new(upstream_tls));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let relayed = Arc::new(AtomicUsize::new(0));
            let count = relayed.clone();
            let task = tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else { continue };
                    let (acceptor, connector, count) = (acceptor.clone(), connector.clone(), count.clone());
                    conns.spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (connector, count) = (connector.clone(), count.clone());
                            async move {
                                let res = relay(req, upstream, connector, edit).await;
                                count.fetch_add(1, Ordering::SeqCst);
                                res
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                    while conns.try_join_next().is_some() {}
                }
            });
            Interceptor { addr, relayed, task }
        }

        fn url(&self) -> String {
            format!("https://gw.test:{}", self.addr.port())
        }
    }

    async fn relay(
        req: Request<Incoming>,
        upstream: SocketAddr,
        connector: tokio_rustls::TlsConnector,
        edit: Option<Edit>,
    ) -> std::io::Result<Response<Full<Bytes>>> {
        let is_report = req.uri().path().ends_with("/v1/aci/attestation");
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
        let tcp = TcpStream::connect(upstream).await?;
        let name = rustls::pki_types::ServerName::try_from("gw.test").map_err(std::io::Error::other)?;
        let tls = connector.connect(name, tcp).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let res =
            sender.send_request(Request::from_parts(parts, Full::new(body))).await.map_err(std::io::Error::other)?;
        let (mut parts, body) = res.into_parts();
        let mut body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
        if let (true, Some(edit)) = (is_report && parts.status == 200, edit) {
            let mut report: Value = serde_json::from_slice(&body)?;
            edit(&mut report);
            body = Bytes::from(serde_json::to_vec(&report)?);
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        Ok(Response::from_parts(parts, Full::new(body)))
    }

    fn swap_compose(report: &mut Value) {
        report["attestation"]["evidence"]["app_compose"] = Value::String(UNPINNED_COMPOSE.to_owned());
    }

    fn gw_url(gw: &TestGateway) -> String {
        format!("https://gw.test:{}", gw.addr().port())
    }

    fn provider(
        http: &Pinned,
        keys: &KeyHandle,
        base: &str,
        policy: Policy,
    ) -> KeyProvider<Pinned, tower_aci::e2ee::RequestBody<Full<Bytes>>> {
        KeyProvider::builder(http.clone())
            .handle(keys.clone())
            .base_url(base.parse().unwrap())
            .policy(policy)
            .build()
            .unwrap()
    }

    /// The interceptor relays the genuine report, fresh, for our nonce: only the channel check
    /// fails. The genuine keyset must not be refused, and a receipt of that (honest) replica
    /// must still verify on the same-key rule.
    #[tokio::test]
    async fn an_interceptor_relaying_the_genuine_report_refuses_nothing() {
        let ca = Ca::new();
        let cert = ca.leaf(&["gw.test"]);
        let keys_of_app = GatewayKeys::generate();
        let launch = SystemClock.now();
        let replica = |i: u64| {
            GatewayConfig::new().keys(keys_of_app.clone()).not_after(launch + THIRTY_DAYS + i).tls(cert.clone())
        };
        let g1 = TestGateway::start(replica(0)).await.unwrap();
        let g2 = TestGateway::start(replica(1)).await.unwrap();
        let mitm = Interceptor::start(&ca, g2.addr(), None).await;

        let keys = KeyHandle::new();
        let tls = AttestedTls::builder(keys.clone()).root_store(ca.roots()).build().unwrap();
        let http = client(&tls);
        // The provider whose reports cross the interceptor (its digest searches too).
        let intercepted = provider(&http, &keys, &mitm.url(), stub_policy());
        let err = intercepted.establish().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding), "{err}");
        assert!(mitm.relayed.load(Ordering::SeqCst) >= 1, "the genuine report was relayed");
        assert!(
            keys.refused_keysets().is_empty(),
            "attack succeeded: an on-path interceptor got the genuine keyset refused: {:?}",
            keys.refused_keysets()
        );

        // Replica 1, reached directly, is attested; replica 2 serves an exchange (same keys, same
        // TLS key), and the search for its keyset crosses the interceptor again.
        let direct = provider(&http, &keys, &gw_url(&g1), stub_policy());
        assert_eq!(direct.establish().await.unwrap().digest(), g1.keyset_digest());
        let layered = ServiceBuilder::new().layer(E2eeLayer::new(keys.clone())).service(http.clone());
        let res =
            layered.oneshot(chat(&format!("{}/v1/chat/completions", gw_url(&g2)), "via replica 2")).await.unwrap();
        assert_eq!(res.status(), 200);
        let record = res.extensions().get::<ExchangeRecord>().cloned().unwrap();
        res.into_body().collect().await.unwrap();
        assert_eq!(record.keyset_digest(), Some(g2.keyset_digest().as_str()));
        let receipts = ReceiptClient::new(http.clone(), gw_url(&g2).parse().unwrap());
        let verified = match receipts.fetch_and_verify(&record, None, &keys, &ReceiptPolicy::new()).await {
            Ok(v) => v,
            Err(e) => panic!("attack succeeded: the honest replica's receipt failed: {e}"),
        };
        assert_eq!(verified.keyset_match(), KeysetMatch::SameKey);
        assert!(keys.refused_keyset(&g2.keyset_digest()).is_none());
    }

    /// The interceptor swaps the genuine report's `app_compose` for another build's: the report
    /// fails the policy (`NotAllowed`) before the channel is checked, but it did not come over a
    /// channel the keyset names, so it is not attributed to the keyset's holder.
    #[tokio::test]
    async fn an_interceptor_editing_the_evidence_refuses_nothing() {
        let ca = Ca::new();
        let gw = TestGateway::start(GatewayConfig::new().app_compose(PINNED_COMPOSE).tls(ca.leaf(&["gw.test"])))
            .await
            .unwrap();
        let mitm = Interceptor::start(&ca, gw.addr(), Some(swap_compose as Edit)).await;
        let keys = KeyHandle::new();
        let tls = AttestedTls::builder(keys.clone()).root_store(ca.roots()).build().unwrap();
        let http = client(&tls);
        let err = provider(&http, &keys, &mitm.url(), compose_pinned_policy()).establish().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Attestation(AttestationFailure::NotAllowed), "{err}");
        assert!(
            keys.refused_keysets().is_empty(),
            "attack succeeded: an on-path interceptor got the genuine keyset refused: {:?}",
            keys.refused_keysets()
        );
        // Reached directly, the same gateway verifies.
        let ok = provider(&http, &keys, &gw_url(&gw), compose_pinned_policy()).establish().await.unwrap();
        assert_eq!(ok.digest(), gw.keyset_digest());
    }

    /// The control: a report that fails the policy and came over a TLS key its own keyset lists
    /// is the keyset holder's, and is refused.
    #[tokio::test]
    async fn a_report_over_its_own_attested_channel_that_fails_the_policy_is_refused() {
        let ca = Ca::new();
        let gw = TestGateway::start(GatewayConfig::new().app_compose(UNPINNED_COMPOSE).tls(ca.leaf(&["gw.test"])))
            .await
            .unwrap();
        let keys = KeyHandle::new();
        let tls = AttestedTls::builder(keys.clone()).root_store(ca.roots()).build().unwrap();
        let http = client(&tls);
        let err = provider(&http, &keys, &gw_url(&gw), compose_pinned_policy()).establish().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Attestation(AttestationFailure::NotAllowed), "{err}");
        let refused = keys.refused_keyset(&gw.keyset_digest()).expect("refused");
        assert_eq!(refused.failure(), AttestationFailure::NotAllowed);
    }
}
