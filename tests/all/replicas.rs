//! Replicas and restarts (issue 12): local gateways that share keys but differ in `not_after`
//! (hence in keyset digest) and keep their own receipt stores, behind a round-robin TCP
//! forwarder written here (loopback only, one backend per accepted connection, like an L4 load
//! balancer); and a gateway restarting mid-run with the same keys, or with new ones.
//!
//! One hyper-util client (one connection pool) serves the key provider, the E2EE layer and the
//! receipt client throughout, as the crate recommends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aci_test_gateway::{Fault, GatewayConfig, GatewayKeys, TestGateway};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::Full;
use serde_json::{Value, json};
use tower::retry::Retry;
use tower::{ServiceBuilder, ServiceExt};
use tower_aci::attest::{Clock, KeyHandle, KeyProvider, ManualClock, SystemClock};
use tower_aci::e2ee::{KeyMismatchRetry, RequestBody};
use tower_aci::protocol::Suite;
use tower_aci::receipt::{
    ExchangeRecord, KeysetMatch, ReceiptClient, ReceiptPolicy, RetryPolicy, VerifiedReceipt, verify_exchange,
};
use tower_aci::{AttestationFailure, BoxError, E2eeLayer, ErrorKind, GatewayError, ReceiptFailure as F};

use crate::data::reason;
use crate::doubles::{Forwarder, THIRTY_DAYS, compose_pinned_policy, mixed_builds};
use crate::support::{LayerClient, layer_client, post, sse_text, stub_policy};

const PROBES: u32 = 24;

/// `n` replicas of one deployment (same keys, `not_after` one second apart) behind a forwarder.
struct Cluster {
    replicas: Vec<TestGateway>,
    lb: Forwarder,
}

impl Cluster {
    async fn start(n: usize) -> Cluster {
        let keys = GatewayKeys::generate();
        let launch = SystemClock.now();
        let mut replicas = Vec::new();
        for i in 0..n {
            let config = GatewayConfig::new().keys(keys.clone()).not_after(launch + THIRTY_DAYS + i as u64);
            replicas.push(TestGateway::start(config).await.unwrap());
        }
        let lb = Forwarder::start(replicas.iter().map(TestGateway::addr).collect()).await;
        Cluster { replicas, lb }
    }

    fn digests(&self) -> Vec<String> {
        self.replicas.iter().map(TestGateway::keyset_digest).collect()
    }

    fn replica_of(&self, digest: &str) -> usize {
        self.digests().iter().position(|d| d == digest).expect("a replica's digest")
    }

    fn reports_served(&self) -> usize {
        self.replicas.iter().map(TestGateway::attestations_served).sum()
    }
}

type Provider = KeyProvider<LayerClient, RequestBody<Full<Bytes>>>;

fn provider(http: &LayerClient, base: &str) -> Provider {
    KeyProvider::builder(http.clone())
        .base_url(base.parse().unwrap())
        .policy(stub_policy(Suite::X25519))
        .digest_probes(PROBES)
        .build()
        .unwrap()
}

/// Backoffs of a millisecond: the tests never wait on a real timer (a retry that sleeps is a
/// failure of the replica logic, and the time limits never fire when it works).
fn receipt_client(http: &LayerClient, base: &str) -> ReceiptClient<LayerClient, RequestBody<Full<Bytes>>> {
    ReceiptClient::new(http.clone(), base.parse().unwrap()).retry(RetryPolicy::new(
        3,
        Duration::from_millis(1),
        Duration::from_millis(5),
    ))
}

/// The layered client: E2EE over the shared hyper-util client.
type Layered = tower_aci::E2ee<LayerClient>;

fn layered(http: &LayerClient, keys: &KeyHandle) -> Layered {
    ServiceBuilder::new().layer(E2eeLayer::new(keys.clone())).service(http.clone())
}

fn chat(base: &str, text: &str, stream: bool) -> Request<Full<Bytes>> {
    post(
        &format!("{base}/v1/chat/completions"),
        &json!({"model": "demo-model", "stream": stream, "messages": [{"role": "user", "content": text}]}),
    )
}

/// One exchange that must succeed and decrypt to the echo; its record, read to the end.
async fn exchange<S, B>(svc: &S, base: &str, text: &str, stream: bool) -> ExchangeRecord
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError> + Clone,
    B: http_body::Body<Data = Bytes, Error = BoxError>,
{
    let res = svc.clone().oneshot(chat(base, text, stream)).await.unwrap();
    assert_eq!(res.status(), 200, "{text}: {:?}", res.extensions().get::<GatewayError>());
    let record = res.extensions().get::<ExchangeRecord>().expect("recorded by the layer").clone();
    let body = crate::support::read(res.into_body()).await.unwrap();
    let expected = format!("You said: {text}");
    if stream {
        assert_eq!(sse_text(&body, "content"), expected);
    } else {
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], expected.as_str());
    }
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_exchanges_behind_a_round_robin_balancer_all_verify() {
    let started = Instant::now();
    let cluster = Cluster::start(3).await;
    // The third replica's report endpoint fails: its keyset can never be attested.
    cluster.replicas[2].set_fault(Some(Fault::AttestationStatus(503)));
    let digests = cluster.digests();
    let base = cluster.lb.url();
    let http = layer_client();
    let provider = provider(&http, &base);
    // The first connection through the forwarder goes to replica 0.
    assert_eq!(provider.establish().await.unwrap().digest(), digests[0]);
    let keys = provider.handle();
    let client = layered(&http, &keys);
    let receipts = receipt_client(&http, &base);
    let policy = ReceiptPolicy::new();

    let results: Vec<(ExchangeRecord, VerifiedReceipt)> = futures_util::stream::iter(0..200)
        .map(|i| {
            let (client, receipts, keys, policy, base) =
                (client.clone(), receipts.clone(), keys.clone(), policy.clone(), base.clone());
            async move {
                let record = exchange(&client, &base, &format!("exchange {i}"), i % 2 == 1).await;
                let verified = receipts
                    .fetch_and_verify(&record, None, &keys, &policy)
                    .await
                    .unwrap_or_else(|e| panic!("exchange {i} ({:?}): {e}", record.keyset_digest()));
                (record, verified)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    assert_eq!(results.len(), 200);
    let mut served = [0usize; 3];
    let mut streamed = 0;
    for (record, verified) in &results {
        let named = record.keyset_digest().expect("every response names its replica");
        assert_eq!(verified.named_keyset_digest(), named, "the receipt comes from the replica that served");
        assert_eq!(Some(verified.receipt().receipt_id()), record.receipt_id());
        let replica = cluster.replica_of(named);
        served[replica] += 1;
        streamed += usize::from(record.streamed());
        if replica == 2 {
            // Never attested: accepted on its signing key, vouched for by an attested replica.
            assert_eq!(verified.keyset_match(), KeysetMatch::SameKey);
            assert!(verified.keyset().digest() == digests[0] || verified.keyset().digest() == digests[1]);
        } else {
            assert_eq!(verified.keyset_match(), KeysetMatch::Exact, "replica {replica}");
            assert_eq!(verified.keyset().digest(), named);
        }
    }
    assert_eq!(streamed, 100);
    assert!(served.iter().all(|&n| n > 0), "every replica served: {served:?}");
    // Replica 1 was attested by a search; replica 2 was looked for once, a bounded number of
    // times, and then not again.
    assert!(keys.keyset_for_digest(&digests[1]).is_some());
    assert!(keys.keyset_for_digest(&digests[2]).is_none());
    let reports = cluster.reports_served();
    assert!(reports <= 1 + 2 * PROBES as usize, "{reports} report fetches");
    assert!(cluster.replicas[2].attestations_served() >= 1, "replica 2 was asked");
    // Searches learn keysets; they do not replace the current one.
    assert_eq!(keys.current().unwrap().digest(), digests[0]);

    // Under a policy that requires the exact keyset, replica 2's receipts fail, the others pass.
    let exact = ReceiptPolicy::new().require_exact_keyset(true);
    for (record, verified) in &results {
        let outcome = verify_exchange(verified.receipt(), record, &keys, &exact);
        if record.keyset_digest() == Some(digests[2].as_str()) {
            assert_eq!(reason(outcome), F::UnknownKeyset);
        } else {
            outcome.unwrap();
        }
    }
    let fetches: usize = cluster.replicas.iter().map(TestGateway::receipt_fetches).sum();
    println!(
        "200 exchanges through 3 replicas: served {served:?}, connections forwarded {:?}, {reports} reports, \
         {fetches} receipt requests, {:?}",
        cluster.lb.forwarded(),
        started.elapsed()
    );
}

/// The measurement, with and without replica hops: a receipt client whose one
/// keep-alive connection is pinned to a replica reaches that replica only, unless a `404` from
/// another replica is re-sent on a fresh connection.
#[tokio::test]
async fn a_pinned_receipt_connection_reaches_other_replicas_only_with_hops() {
    let cluster = Cluster::start(2).await;
    let base = cluster.lb.url();
    let http = layer_client();
    let provider = provider(&http, &base);
    provider.establish().await.unwrap();
    let keys = provider.handle();
    // A fresh client per exchange: each exchange opens its own connection, alternating replicas.
    let mut records = Vec::new();
    for i in 0..20 {
        records.push(exchange(&layered(&layer_client(), &keys), &base, &format!("pinned {i}"), i % 2 == 0).await);
    }
    let digests = cluster.digests();
    let on_replica_0 = records.iter().filter(|r| r.keyset_digest() == Some(digests[0].as_str())).count();
    assert_eq!(on_replica_0, 10, "the forwarder alternates");

    // Without hops: one attempt, on the client's one connection (to one replica).
    let pinned = layer_client();
    let no_hops = ReceiptClient::new(pinned.clone(), base.parse().unwrap()).retry(RetryPolicy::none());
    let mut not_found = 0;
    for record in &records {
        match no_hops.fetch_and_verify(record, None, &keys, &ReceiptPolicy::new()).await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Receipt(F::NotAvailable), "{e}");
                assert!(e.to_string().contains("the replica that served the exchange"), "{e}");
                not_found += 1;
            }
        }
    }
    assert_eq!(not_found, 10, "the pinned connection reached one replica only");

    // With hops, on the same pool: every receipt is reached and verifies. The pool holds one
    // connection, to one replica: only `Connection: close` on the re-sends makes them reach the
    // other. Each fetch's first attempt goes out without it (it may reuse the exchange's
    // connection), every later attempt with it.
    // (path, `Connection` header) of every receipt request.
    type Seen = Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let recording = tower::service_fn(move |req: Request<RequestBody<Full<Bytes>>>| {
        let connection = req.headers().get("connection").map(|v| v.to_str().unwrap().to_owned());
        log.lock().unwrap().push((req.uri().path().to_owned(), connection));
        pinned.clone().oneshot(req)
    });
    let hops = ReceiptClient::new(recording, base.parse().unwrap()).retry(RetryPolicy::new(
        3,
        Duration::from_millis(1),
        Duration::from_millis(5),
    ));
    for record in &records {
        hops.fetch_and_verify(record, None, &keys, &ReceiptPolicy::new()).await.unwrap();
    }
    let seen = seen.lock().unwrap();
    let mut fetches = 0;
    for (i, (path, connection)) in seen.iter().enumerate() {
        let first = i == 0 || seen[i - 1].0 != *path;
        fetches += usize::from(first);
        assert_eq!(connection.as_deref(), if first { None } else { Some("close") }, "request {i} for {path}");
    }
    assert_eq!(fetches, 20);
    assert!(seen.len() > 20, "some receipts needed re-sends: {}", seen.len());
}

#[tokio::test]
async fn a_restart_mid_run_loses_old_receipts_and_the_next_receipt_verifies_at_once() {
    let keys_of_app = GatewayKeys::generate();
    let launch = SystemClock.now();
    let mut gw = TestGateway::start(GatewayConfig::new().keys(keys_of_app.clone()).not_after(launch + THIRTY_DAYS))
        .await
        .unwrap();
    let base = gw.base_url();
    let http = layer_client();
    let provider = provider(&http, &base);
    // The refresher runs, with its default 10 s minimum between woken refreshes: it cannot be
    // what attests the restarted process during this test.
    let (keys, _refresher) = provider.spawn().unwrap();
    let first = provider.establish().await.unwrap();
    let client = layered(&http, &keys);
    let receipts = receipt_client(&http, &base);
    let policy = ReceiptPolicy::new();
    let started = Instant::now();

    let before = exchange(&client, &base, "before the restart", false).await;
    let verified = receipts.fetch_and_verify(&before, None, &keys, &policy).await.unwrap();
    assert_eq!(verified.keyset_match(), KeysetMatch::Exact);
    let unfetched = exchange(&client, &base, "its receipt is never fetched before the restart", true).await;

    // Restart: same keys, a new not_after, a new digest, an empty receipt store.
    gw.restart(GatewayConfig::new().keys(keys_of_app).not_after(launch + THIRTY_DAYS + 60)).await.unwrap();
    let renewed = gw.keyset_digest();
    assert_ne!(renewed, first.digest());

    // The receipt of the exchange before the restart is gone, and the error says why.
    let err = receipts.fetch_and_verify(&unfetched, None, &keys, &policy).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Receipt(F::NotAvailable));
    assert!(err.to_string().contains("restarted"), "{err}");

    // The next requests succeed (same keys) and their receipts verify at once, exactly: the
    // receipt client had the provider attest the new digest.
    for (i, stream) in [false, true, false].into_iter().enumerate() {
        let record = exchange(&client, &base, &format!("after the restart {i}"), stream).await;
        assert_eq!(record.keyset_digest(), Some(renewed.as_str()));
        assert_eq!(record.attested_keyset_digest(), first.digest(), "still encrypted to the first keyset");
        let verified = receipts.fetch_and_verify(&record, None, &keys, &policy).await.unwrap();
        assert_eq!(verified.keyset_match(), KeysetMatch::Exact);
        assert_eq!(verified.keyset().digest(), renewed);
    }
    assert_eq!(gw.attestations_served(), 1, "one report of the new process, fetched by the search");
    assert!(started.elapsed() < Duration::from_secs(10), "no wait for the refresher: {:?}", started.elapsed());

    // A handle holding only the first keyset (no provider to attest with) verifies the new
    // process's receipts by the same-key rule, and says so.
    let record = exchange(&client, &base, "same key", false).await;
    let only_first = KeyHandle::fixed((*first).clone());
    let verified = receipts.fetch_and_verify(&record, None, &only_first, &policy).await.unwrap();
    assert_eq!(verified.keyset_match(), KeysetMatch::SameKey);
    assert_eq!(verified.keyset().digest(), first.digest());
    assert_eq!(verified.named_keyset_digest(), renewed);
}

/// The key-mismatch re-send above the layer, over the shared client.
type Resending = Retry<KeyMismatchRetry, Layered>;

#[tokio::test]
async fn a_rotation_on_restart_is_followed_and_older_receipts_still_verify() {
    let launch = SystemClock.now();
    let mut gw = TestGateway::start(GatewayConfig::new().not_after(launch + THIRTY_DAYS)).await.unwrap();
    let base = gw.base_url();
    let http = layer_client();
    let provider = KeyProvider::builder(http.clone())
        .base_url(base.parse().unwrap())
        .policy(stub_policy(Suite::X25519))
        .min_refresh_interval(Duration::ZERO)
        .build()
        .unwrap();
    let (keys, _refresher) = provider.spawn().unwrap();
    let old = provider.establish().await.unwrap();
    let client: Resending = Retry::new(KeyMismatchRetry::new(keys.clone()), layered(&http, &keys));
    let receipts = receipt_client(&http, &base);
    let policy = ReceiptPolicy::new();

    // Exchanges before the rotation; their receipts are fetched (the restart will lose them).
    let mut before = Vec::new();
    for (i, stream) in [false, true].into_iter().enumerate() {
        let record = exchange(&client, &base, &format!("before the rotation {i}"), stream).await;
        before.push((receipts.fetch_for(&record, None).await.unwrap(), record));
    }

    // The restarted process has new keys: a new application (new E2EE and receipt keys).
    gw.restart(GatewayConfig::new().not_after(launch + THIRTY_DAYS + 60)).await.unwrap();
    let rotated = gw.keyset_digest();
    let wire_before = gw.wire_log().len();

    // One call: the first attempt is refused with e2ee_model_key_mismatch, the refresher
    // re-attests, the request is re-encrypted to the new key and succeeds.
    let after = exchange(&client, &base, "after the rotation", false).await;
    assert_eq!(gw.wire_log().len(), wire_before + 2, "a refused attempt, then the re-sent one");
    assert_eq!(after.attested_keyset_digest(), rotated);
    let current = keys.current().unwrap();
    assert_eq!(current.digest(), rotated);
    assert!(!current.same_e2ee_key(&old), "a rotation, not a replica");
    let verified = receipts.fetch_and_verify(&after, None, &keys, &policy).await.unwrap();
    assert_eq!((verified.keyset_match(), verified.keyset().digest()), (KeysetMatch::Exact, rotated.as_str()));

    // The receipts made before the rotation verify against the keyset verified when they were
    // made, which the handle still remembers.
    for (receipt, record) in &before {
        let verified = verify_exchange(receipt, record, &keys, &policy).unwrap();
        assert_eq!(verified.keyset_match(), KeysetMatch::Exact);
        assert_eq!(verified.keyset().digest(), old.digest());
    }

    // The same-key rule does not cross a rotation: against the old keyset alone, a receipt of
    // the new process (another receipt key under the same key id) fails.
    let only_old = KeyHandle::fixed((*old).clone());
    let receipt = receipts.fetch_for(&after, None).await.unwrap();
    assert_eq!(reason(verify_exchange(&receipt, &after, &only_old, &policy)), F::UnknownKeyset);
}

/// The same-key rule does not stretch an attested keyset past its `not_after`: a replica's
/// receipt served after it is not vouched for by it.
#[tokio::test]
async fn the_same_key_rule_stops_at_the_vouching_keysets_not_after() {
    const T0: u64 = 1_750_000_000;
    let keys_of_app = GatewayKeys::generate();
    let early = ManualClock::new(T0);
    let late = ManualClock::new(T0 + 200);
    // Replica A expires at T0 + 100; replica B, launched later, at T0 + 10_000 and its clock
    // says T0 + 200 (within the ±300 s request window).
    let a = TestGateway::start(
        GatewayConfig::new().keys(keys_of_app.clone()).clock(Arc::new(early.clone())).not_after(T0 + 100),
    )
    .await
    .unwrap();
    let b =
        TestGateway::start(GatewayConfig::new().keys(keys_of_app).clock(Arc::new(late.clone())).not_after(T0 + 10_000))
            .await
            .unwrap();
    let http = layer_client();
    let provider = KeyProvider::builder(http.clone())
        .base_url(a.base_url().parse().unwrap())
        .policy(stub_policy(Suite::X25519))
        .clock(Arc::new(early.clone()))
        .build()
        .unwrap();
    let keyset_a = provider.establish().await.unwrap();
    let keys = KeyHandle::fixed_with_clock((*keyset_a).clone(), Arc::new(early));
    let record = exchange(&layered(&http, &keys), &b.base_url(), "served late", false).await;
    let receipts = receipt_client(&http, &b.base_url());
    let receipt = receipts.fetch_for(&record, None).await.unwrap();
    assert_eq!(receipt.served_at(), T0 + 200);
    let err = verify_exchange(&receipt, &record, &keys, &ReceiptPolicy::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Receipt(F::UnknownKeyset));
    assert!(err.to_string().contains("not_after"), "{err}");
    // Served before A's not_after, the same receipt key is accepted.
    late.set(T0 + 50);
    let record = exchange(&layered(&http, &keys), &b.base_url(), "served in time", false).await;
    let receipt = receipts.fetch_for(&record, None).await.unwrap();
    let verified = verify_exchange(&receipt, &record, &keys, &ReceiptPolicy::new()).unwrap();
    assert_eq!(verified.keyset_match(), KeysetMatch::SameKey);
}

/// Issue 18, item 3. Three replicas of one application (the same KMS-derived keys, so the same
/// receipt key) behind a round-robin forwarder: 0 runs the pinned build; 1 runs another build,
/// whose report fails the policy; 2 runs the pinned build but its report endpoint fails. The
/// unpinned build's receipts must not verify on the same-key rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_report_fails_the_policy_has_its_receipts_refused() {
    let (replicas, lb) = mixed_builds().await;
    let digests: Vec<String> = replicas.iter().map(TestGateway::keyset_digest).collect();
    let base = lb.url();
    let http = layer_client();
    let provider = KeyProvider::builder(http.clone())
        .base_url(base.parse().unwrap())
        .policy(compose_pinned_policy())
        .digest_probes(PROBES)
        .build()
        .unwrap();
    // The first connection through the forwarder goes to replica 0, the pinned build.
    assert_eq!(provider.establish().await.unwrap().digest(), digests[0]);
    let keys = provider.handle();

    // One exchange per fresh connection: the forwarder sends them to each replica in turn.
    let mut records = Vec::new();
    for i in 0..6 {
        records.push(exchange(&layered(&layer_client(), &keys), &base, &format!("which build {i}"), i % 2 == 1).await);
    }
    let receipts = receipt_client(&http, &base);
    let policy = ReceiptPolicy::new();
    let mut served = [0usize; 3];
    for record in &records {
        let replica = digests.iter().position(|d| record.keyset_digest() == Some(d.as_str())).expect("a replica");
        served[replica] += 1;
        let outcome = receipts.fetch_and_verify(record, None, &keys, &policy).await;
        match replica {
            0 => assert_eq!(outcome.unwrap().keyset_match(), KeysetMatch::Exact),
            1 => {
                let err = match outcome {
                    Ok(v) => panic!(
                        "attack succeeded: the unpinned build's receipt verified ({:?}, vouched for by {})",
                        v.keyset_match(),
                        v.keyset().digest()
                    ),
                    Err(e) => e,
                };
                assert_eq!(err.kind(), ErrorKind::Receipt(F::RefusedKeyset(AttestationFailure::NotAllowed)), "{err}");
                let message = err.to_string();
                assert!(message.contains(&digests[1]) && message.contains("compose hash"), "{message}");
            }
            _ => {
                let verified = outcome.unwrap();
                assert_eq!(verified.keyset_match(), KeysetMatch::SameKey, "unreachable, not refused");
                assert_eq!(verified.keyset().digest(), digests[0]);
            }
        }
    }
    assert!(served.iter().all(|&n| n > 0), "every replica served: {served:?}");

    // The refusal is remembered with its failure; the unreachable replica is not refused, and
    // neither is known.
    let refused = keys.refused_keyset(&digests[1]).expect("the unpinned build's keyset is refused");
    assert_eq!(refused.failure(), AttestationFailure::NotAllowed);
    assert!(refused.message().contains("compose hash"), "{}", refused.message());
    assert_eq!(keys.refused_keysets().len(), 1);
    assert!(keys.refused_keyset(&digests[2]).is_none());
    assert!(keys.keyset_for_digest(&digests[1]).is_none() && keys.keyset_for_digest(&digests[2]).is_none());
    // Once refused, a receipt naming it fails at once: no report is fetched for it (not again
    // before min_refresh_interval).
    let reports = || replicas.iter().map(TestGateway::attestations_served).sum::<usize>();
    let before = reports();
    assert!(before <= 1 + 2 * PROBES as usize, "bounded: {before} report fetches");
    let refused_record = records.iter().find(|r| r.keyset_digest() == Some(digests[1].as_str())).unwrap();
    let err = receipts.fetch_and_verify(refused_record, None, &keys, &policy).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Receipt(F::RefusedKeyset(AttestationFailure::NotAllowed)));
    assert_eq!(reports(), before, "no report fetched for a digest refused moments ago");

    // Offline, with the handle's refusals: the same verdicts without any fetch; and requiring
    // the exact keyset, the unreachable replica's receipts fail too.
    let exact = ReceiptPolicy::new().require_exact_keyset(true);
    for record in &records {
        let receipt = receipts.fetch_for(record, None).await.unwrap();
        let lenient = verify_exchange(&receipt, record, &keys, &policy);
        let strict = verify_exchange(&receipt, record, &keys, &exact);
        match digests.iter().position(|d| record.keyset_digest() == Some(d.as_str())).unwrap() {
            0 => {
                lenient.unwrap();
                strict.unwrap();
            }
            1 => {
                assert_eq!(reason(lenient), F::RefusedKeyset(AttestationFailure::NotAllowed));
                assert_eq!(reason(strict), F::RefusedKeyset(AttestationFailure::NotAllowed));
            }
            _ => {
                assert_eq!(lenient.unwrap().keyset_match(), KeysetMatch::SameKey);
                assert_eq!(reason(strict), F::UnknownKeyset);
            }
        }
    }
}
