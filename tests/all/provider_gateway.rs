//! The key provider against the local gateway over loopback: a manual clock shared by the
//! gateway and the provider, and a sleep the test fires by hand, so every refresh happens at a
//! point the test chooses and nothing waits in real time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aci_test_gateway::{GatewayConfig, TestGateway};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tower::retry::Retry;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_aci::attest::{KeyHandle, KeyProvider, KeyProviderBuilder, ManualClock};
use tower_aci::e2ee::KeyMismatchRetry;
use tower_aci::protocol::Suite;
use tower_aci::receipt::ExchangeRecord;
use tower_aci::{AttestationFailure, BoxError, E2eeLayer, ErrorKind, GatewayError};

use crate::attest_support::{LOAD_TIMEOUT, Sleeps};
use crate::support::{hyper, kind, layer_client, post, read, send, sse_text, stub_policy};

const T0: u64 = 1_750_000_000;
/// The gateway's keyset lifetime in these tests.
const VALIDITY: u64 = 3_600;
/// The provider's refresh buffer.
const BUFFER: u64 = 600;
/// The provider's minimum spacing of woken refreshes.
const MIN_INTERVAL: Duration = Duration::from_secs(10);

/// The provider's transport: hyper-util over loopback, or a simulated outage of the
/// attestation endpoint (inference requests still reach the gateway).
type Transport = BoxCloneService<Request<Full<Bytes>>, Response<Incoming>, BoxError>;

fn transport(down: Arc<AtomicBool>) -> Transport {
    let client = hyper();
    BoxCloneService::new(tower::service_fn(move |req: Request<Full<Bytes>>| {
        let client = client.clone();
        let down = down.clone();
        async move {
            if down.load(Ordering::SeqCst) {
                return Err::<Response<Incoming>, BoxError>("attestation endpoint unreachable (simulated)".into());
            }
            client.oneshot(req).await.map_err(BoxError::from)
        }
    }))
}

/// Let the refresher (same runtime) run whatever it has become ready to do.
async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

/// A gateway and a provider on one manual clock, with a hand-fired sleep.
struct Rig {
    clock: ManualClock,
    gw: TestGateway,
    sleeps: Sleeps,
    /// Makes the provider's attestation fetches fail at the transport.
    attestation_down: Arc<AtomicBool>,
    /// Makes the test client drop `X-ACI-Keyset-Digest` from responses before the layer sees
    /// them (isolates the layer's key-mismatch report from its unknown-digest report).
    strip_digest: Arc<AtomicBool>,
    provider: KeyProvider<Transport>,
}

impl Rig {
    async fn start(
        suite: Suite,
        not_after: u64,
        tune: impl FnOnce(KeyProviderBuilder<Transport>) -> KeyProviderBuilder<Transport>,
    ) -> Rig {
        let clock = ManualClock::new(T0);
        let gw =
            TestGateway::start(GatewayConfig::new().clock(Arc::new(clock.clone())).not_after(not_after)).await.unwrap();
        let sleeps = Sleeps::default();
        let attestation_down = Arc::new(AtomicBool::new(false));
        let s = sleeps.clone();
        let builder = KeyProvider::builder(transport(attestation_down.clone()))
            .base_url(gw.base_url().parse().unwrap())
            .policy(stub_policy(suite))
            .clock(Arc::new(clock.clone()))
            .sleep(move |d| s.sleep(d))
            .load_timeout(LOAD_TIMEOUT)
            .refresh_buffer(Duration::from_secs(BUFFER))
            .refresh_jitter(Duration::ZERO)
            .min_refresh_interval(MIN_INTERVAL)
            .retry_backoff(Duration::from_secs(1), Duration::from_secs(8));
        let provider = tune(builder).build().unwrap();
        Rig { clock, gw, sleeps, attestation_down, strip_digest: Arc::default(), provider }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gw.base_url())
    }

    /// hyper-util under the E2EE layer reading `handle`.
    fn client(
        &self,
        handle: &KeyHandle,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<impl Body<Data = Bytes, Error = BoxError> + Send + Unpin + use<>>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + use<> {
        self.client_with(E2eeLayer::new(handle.clone()))
    }

    fn client_with(
        &self,
        layer: E2eeLayer,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<impl Body<Data = Bytes, Error = BoxError> + Send + Unpin + use<>>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + use<> {
        let strip = self.strip_digest.clone();
        ServiceBuilder::new()
            .layer(layer)
            .map_response(move |mut res: Response<Incoming>| {
                if strip.load(Ordering::SeqCst) {
                    res.headers_mut().remove("x-aci-keyset-digest");
                }
                res
            })
            .service(layer_client())
    }
}

/// `inner` under a retry of key-mismatch answers, as the crate docs recommend.
fn with_key_mismatch_retry<S>(handle: &KeyHandle, inner: S) -> Retry<KeyMismatchRetry, S> {
    Retry::new(KeyMismatchRetry::new(handle.clone()), inner)
}

fn chat(url: &str, text: &str) -> Request<Full<Bytes>> {
    post(url, &json!({"model": "demo", "messages": [{"role": "user", "content": text}]}))
}

/// A chat request that must succeed and decrypt; returns the exchange record.
async fn chat_ok<S, B>(client: &S, rig: &Rig, text: &str) -> ExchangeRecord
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError> + Clone,
    B: Body<Data = Bytes, Error = BoxError>,
{
    let res = send(client, chat(&rig.url("/v1/chat/completions"), text)).await.unwrap();
    assert_eq!(res.status(), 200, "{text}: {:?}", res.extensions().get::<GatewayError>());
    let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
    let out: Value = serde_json::from_slice(&read(res.into_body()).await.unwrap()).unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], format!("You said: {text}"));
    record
}

#[tokio::test]
async fn refresh_before_expiry_publishes_the_renewed_keyset() {
    let rig = Rig::start(Suite::X25519, T0 + VALIDITY, |b| b).await;
    let (handle, worker) = rig.provider.pair();
    tokio::spawn(worker);

    // The refresher attests at once, then sleeps until not_after - buffer.
    let (d, fire) = rig.sleeps.next().await;
    assert_eq!(rig.gw.attestations_served(), 1);
    assert_eq!(d, Duration::from_secs(VALIDITY - BUFFER));
    let first = handle.current().unwrap();
    assert_eq!(first.digest(), rig.gw.keyset_digest());
    assert_eq!(first.not_after(), T0 + VALIDITY);

    // The gateway restarts with a later not_after before the refresh point (same keys).
    rig.gw.renew_keyset(T0 + 2 * VALIDITY);
    let renewed = rig.gw.keyset_digest();
    assert_ne!(renewed, first.digest());

    // Up to the refresh point nothing is fetched and the first keyset keeps serving.
    rig.clock.set(T0 + VALIDITY - BUFFER - 1);
    settle().await;
    assert_eq!(rig.gw.attestations_served(), 1);
    assert_eq!(handle.current().unwrap().digest(), first.digest());

    // At not_after - buffer the timer fires and the refresher re-attests.
    rig.clock.set(T0 + VALIDITY - BUFFER);
    fire.send(()).unwrap();
    let (d2, _fire2) = rig.sleeps.next().await;
    assert_eq!(rig.gw.attestations_served(), 2);
    let second = handle.current().unwrap();
    assert_eq!(second.digest(), renewed);
    assert_eq!(second.not_after(), T0 + 2 * VALIDITY);
    assert!(second.verified_at() >= T0 + VALIDITY - BUFFER);
    // The next refresh is scheduled buffer-before the new not_after.
    assert_eq!(d2, Duration::from_secs(T0 + 2 * VALIDITY - BUFFER - (T0 + VALIDITY - BUFFER)));
    // The first keyset is remembered (and still valid until its own not_after).
    assert!(handle.keyset_for_digest(first.digest()).is_some());
    let known: Vec<String> = handle.known_keysets().iter().map(|k| k.digest().to_owned()).collect();
    assert_eq!(known, [first.digest().to_owned(), renewed.clone()]);

    // Requests now encrypt to the renewed keyset and the gateway names the same digest.
    let client = rig.client(&handle);
    let record = chat_ok(&client, &rig, "after the refresh").await;
    assert_eq!(record.attested_keyset_digest(), renewed);
    assert_eq!(record.keyset_digest(), Some(renewed.as_str()));
    settle().await;
    assert_eq!(rig.gw.attestations_served(), 2, "a known digest does not trigger a re-attestation");
    assert!(rig.sleeps.queued().is_empty());
}

#[tokio::test]
async fn single_flight_sixteen_concurrent_establish_calls_make_one_fetch() {
    let rig = Rig::start(Suite::Secp256k1, T0 + VALIDITY, |b| b).await;
    let before = rig.gw.attestations_served();
    let results = futures_util::future::join_all((0..16).map(|_| rig.provider.establish())).await;
    assert_eq!(rig.gw.attestations_served() - before, 1, "one fetch for sixteen overlapping callers");
    let first = results[0].as_ref().unwrap().clone();
    for r in &results {
        assert!(Arc::ptr_eq(r.as_ref().unwrap(), &first), "every caller gets the same verified keyset");
    }
    assert_eq!(first.digest(), rig.gw.keyset_digest());
    assert_eq!(rig.provider.handle().current().unwrap().digest(), first.digest());

    // Failures are shared the same way.
    rig.attestation_down.store(true, Ordering::SeqCst);
    let results = futures_util::future::join_all((0..16).map(|_| rig.provider.establish())).await;
    for r in results {
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Transport);
    }
    assert_eq!(rig.gw.attestations_served() - before, 1);

    // A call after the flight has landed fetches again.
    rig.attestation_down.store(false, Ordering::SeqCst);
    let again = rig.provider.establish().await.unwrap();
    assert_eq!(rig.gw.attestations_served() - before, 2);
    assert!(!Arc::ptr_eq(&again, &first));
    assert_eq!(again.digest(), first.digest(), "same keyset, verified again with a fresh nonce");
}

#[tokio::test]
async fn key_rotation_mid_run_mismatch_then_reattest_then_success() {
    let rig = Rig::start(Suite::Secp256k1, T0 + VALIDITY, |b| b).await;
    let (handle, _task) = rig.provider.spawn().unwrap();
    let (_, _timer) = rig.sleeps.next().await;
    assert_eq!(rig.gw.attestations_served(), 1);
    let client = rig.client(&handle);
    let url = rig.url("/v1/chat/completions");
    let original = handle.current().unwrap();
    chat_ok(&client, &rig, "before the rotation").await;

    // Phase 1: the layer's key-mismatch report alone (the test client hides the response's
    // X-ACI-Keyset-Digest, so the unknown-digest path cannot be what wakes the refresher).
    rig.strip_digest.store(true, Ordering::SeqCst);
    rig.gw.rotate_e2ee_keys();
    let rotated = rig.gw.keyset_digest();
    rig.clock.advance(60);
    let wire_before = rig.gw.wire_log().len();
    let upstream_before = rig.gw.upstream_log().len();
    let res = send(&client, chat(&url, "encrypted to the old key")).await.unwrap();
    assert_eq!(res.status(), 400);
    let err = res.extensions().get::<GatewayError>().expect("typed gateway error").clone();
    assert_eq!(err.status, 400);
    assert_eq!(err.error_type.as_deref(), Some("e2ee_model_key_mismatch"));
    assert_eq!(err.to_error().kind(), ErrorKind::Gateway);
    let body: Value = serde_json::from_slice(&read(res.into_body()).await.unwrap()).unwrap();
    assert_eq!(body["error"]["type"], "e2ee_model_key_mismatch");
    // With the retry disabled, the mismatched request is not re-sent: one attempt on the wire,
    // nothing upstream.
    assert_eq!(rig.gw.wire_log().len(), wire_before + 1);
    assert_eq!(rig.gw.upstream_log().len(), upstream_before);

    // The report woke the refresher: it re-attests at once (the last attempt was 60 s ago) and
    // then sleeps until the next scheduled refresh, with nothing else queued.
    let (d, timer) = rig.sleeps.next().await;
    assert_eq!(d, Duration::from_secs(VALIDITY - BUFFER - 60));
    assert_eq!(rig.gw.attestations_served(), 2);
    let current = handle.current().unwrap();
    assert_eq!(current.digest(), rotated);
    assert_ne!(current.e2ee_key().public_key_text(), original.e2ee_key().public_key_text());
    settle().await;
    assert!(!timer.is_closed(), "no second wake-up pending");
    assert!(rig.sleeps.queued().is_empty());

    // The next request encrypts to the rotated key and succeeds.
    let record = chat_ok(&client, &rig, "after the rotation").await;
    assert_eq!(record.attested_keyset_digest(), rotated);

    // Phase 2, as on the wire: the mismatch answer also names the rotated keyset's unknown
    // digest, so the layer signals twice for one response; still exactly one re-attestation.
    rig.strip_digest.store(false, Ordering::SeqCst);
    rig.gw.rotate_e2ee_keys();
    let rotated_again = rig.gw.keyset_digest();
    rig.clock.advance(60);
    let res = send(&client, chat(&url, "encrypted to the old key again")).await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["x-aci-keyset-digest"], rotated_again.as_str());
    let err = res.extensions().get::<GatewayError>().unwrap();
    assert_eq!(err.error_type.as_deref(), Some("e2ee_model_key_mismatch"));
    drop(timer);
    let (d, timer) = rig.sleeps.next().await;
    assert_eq!(d, Duration::from_secs(VALIDITY - BUFFER - 120));
    assert_eq!(rig.gw.attestations_served(), 3);
    assert_eq!(handle.current().unwrap().digest(), rotated_again);
    settle().await;
    assert!(!timer.is_closed(), "the second signal of the same response did not cause another refresh");
    assert!(rig.sleeps.queued().is_empty(), "{:?}", rig.sleeps.queued());
    assert_eq!(rig.gw.attestations_served(), 3);
    let record = chat_ok(&client, &rig, "after the second rotation").await;
    assert_eq!(record.attested_keyset_digest(), rotated_again);
    assert_eq!(record.keyset_digest(), Some(rotated_again.as_str()));
}

#[tokio::test]
async fn key_rotation_mismatch_is_retried_once_with_the_new_key() {
    let rig = Rig::start(Suite::Secp256k1, T0 + VALIDITY, |b| b).await;
    let (handle, _task) = rig.provider.spawn().unwrap();
    let (_, _timer) = rig.sleeps.next().await;
    let client = with_key_mismatch_retry(&handle, rig.client(&handle));
    chat_ok(&client, &rig, "before the rotation").await;

    rig.gw.rotate_e2ee_keys();
    let rotated = rig.gw.keyset_digest();
    rig.clock.advance(60);
    let wire_before = rig.gw.wire_log().len();
    let upstream_before = rig.gw.upstream_log().len();
    // One call: the gateway answers e2ee_model_key_mismatch, the refresher re-attests, the
    // layer re-encrypts to the new key with a fresh nonce and succeeds.
    let record = chat_ok(&client, &rig, "sent across a rotation").await;
    assert_eq!(record.attested_keyset_digest(), rotated);
    assert_eq!(rig.gw.wire_log().len(), wire_before + 2, "two attempts on the wire");
    assert_eq!(rig.gw.upstream_log().len(), upstream_before + 1, "the first was never decrypted");
    let wire = rig.gw.wire_log();
    assert_ne!(wire[wire.len() - 1], wire[wire.len() - 2]);
    assert_eq!(rig.gw.attestations_served(), 2);

    // Without a refresher no new key can come: the 400 comes back at once.
    let fixed = KeyHandle::fixed_with_clock((*handle.current().unwrap()).clone(), Arc::new(rig.clock.clone()));
    let client = with_key_mismatch_retry(&fixed, rig.client(&fixed));
    rig.gw.rotate_e2ee_keys();
    let res = send(&client, chat(&rig.url("/v1/chat/completions"), "no refresher")).await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.extensions().get::<GatewayError>().and_then(|g| g.error_type.as_deref()),
        Some("e2ee_model_key_mismatch")
    );
}

/// Every inference route through the layer fails with `KeyUnavailable` and nothing is sent.
async fn all_requests_refused(rig: &Rig, handle: &KeyHandle) {
    let client = rig.client(handle);
    let wire = rig.gw.wire_log().len();
    let seen = rig.gw.requests_seen();
    let attestations = rig.gw.attestations_served();
    let secret = "never on the wire after not_after";
    let requests = [
        chat(&rig.url("/v1/chat/completions"), secret),
        post(
            &rig.url("/v1/chat/completions"),
            &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": secret}]}),
        ),
        post(&rig.url("/v1/completions"), &json!({"model": "m", "prompt": secret})),
        post(&rig.url("/v1/embeddings"), &json!({"model": "m", "input": secret})),
    ];
    for req in requests {
        let path = req.uri().path().to_owned();
        let err = send(&client, req).await.err().expect("refused");
        assert_eq!(kind(&err), Some(ErrorKind::KeyUnavailable), "{path}: {err}");
    }
    assert_eq!(rig.gw.wire_log().len(), wire, "nothing reached the gateway");
    assert_eq!(rig.gw.requests_seen(), seen);
    assert!(rig.gw.wire_log().iter().all(|b| !String::from_utf8_lossy(b).contains("never on the wire")));
    // Requests do not fetch inline; they only wake the refresher.
    settle().await;
    assert_eq!(rig.gw.attestations_served(), attestations);
}

#[tokio::test]
async fn expired_keys_are_never_used_when_the_gateway_serves_an_expired_keyset() {
    let rig = Rig::start(Suite::X25519, T0 + VALIDITY, |b| b).await;
    let (handle, worker) = rig.provider.pair();
    tokio::spawn(worker);
    let (_, fire) = rig.sleeps.next().await;
    let client = rig.client(&handle);
    chat_ok(&client, &rig, "while valid").await;

    // The clock jumps past not_after (a suspended machine) before the timer fires; the refresh
    // then fails because the gateway still serves the keyset that just expired.
    rig.clock.set(T0 + VALIDITY + 5);
    fire.send(()).unwrap();
    let (backoff, _retry) = rig.sleeps.next().await;
    assert_eq!(backoff, Duration::from_secs(1), "the refresh failed and backs off");
    assert_eq!(rig.gw.attestations_served(), 2);
    let e = handle.current().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyUnavailable);

    all_requests_refused(&rig, &handle).await;

    // The reason the refresh failed: the served keyset is expired.
    let e = rig.provider.establish().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::Expired));
    // Exactly at not_after is already too late.
    rig.clock.set(T0 + VALIDITY);
    assert_eq!(handle.current().unwrap_err().kind(), ErrorKind::KeyUnavailable);
}

#[tokio::test]
async fn expired_keys_are_never_used_while_attestation_is_unreachable_then_recover() {
    let rig = Rig::start(Suite::Secp256k1, T0 + VALIDITY, |b| b).await;
    let (handle, worker) = rig.provider.pair();
    tokio::spawn(worker);
    let (_, fire) = rig.sleeps.next().await;
    let client = rig.client(&handle);
    chat_ok(&client, &rig, "while valid").await;

    // The gateway restarted with a fresh keyset, but its attestation endpoint is unreachable.
    rig.gw.renew_keyset(T0 + 3 * VALIDITY);
    rig.attestation_down.store(true, Ordering::SeqCst);
    rig.clock.set(T0 + VALIDITY + 5);
    fire.send(()).unwrap();
    let (backoff, retry) = rig.sleeps.next().await;
    assert_eq!(backoff, Duration::from_secs(1));
    assert_eq!(rig.gw.attestations_served(), 1, "the fetch never reached the gateway");

    all_requests_refused(&rig, &handle).await;

    // The refused requests (each of which signals the refresher) did not cut the backoff short:
    // no other sleep was started, and the backoff timer is still pending.
    settle().await;
    assert!(rig.sleeps.queued().is_empty(), "{:?}", rig.sleeps.queued());
    assert!(!retry.is_closed());

    // Attempts follow the backoff: the timer fires, the fetch fails again, the wait doubles.
    rig.clock.advance(1);
    retry.send(()).unwrap();
    let (backoff, retry) = rig.sleeps.next().await;
    assert_eq!(backoff, Duration::from_secs(2));
    all_requests_refused(&rig, &handle).await;
    settle().await;
    assert!(rig.sleeps.queued().is_empty(), "{:?}", rig.sleeps.queued());

    // The endpoint comes back; the next backoff attempt succeeds.
    rig.attestation_down.store(false, Ordering::SeqCst);
    rig.clock.advance(2);
    retry.send(()).unwrap();
    let (_, _timer) = rig.sleeps.next().await;
    assert_eq!(rig.gw.attestations_served(), 2);
    assert_eq!(handle.current().unwrap().digest(), rig.gw.keyset_digest());
    chat_ok(&client, &rig, "after recovery").await;
}

#[tokio::test]
async fn replica_digests_are_tolerated_and_learned_in_the_background() {
    let rig = Rig::start(Suite::Secp256k1, T0 + VALIDITY, |b| b).await;
    let (handle, _task) = rig.provider.spawn().unwrap();
    let (_, timer) = rig.sleeps.next().await;
    let first = handle.current().unwrap();
    let d1 = first.digest().to_owned();
    let client = rig.client(&handle);
    let record = chat_ok(&client, &rig, "replica one").await;
    assert_eq!(record.keyset_digest(), Some(d1.as_str()));
    settle().await;
    assert_eq!(rig.gw.attestations_served(), 1);

    // Another replica (or a restart): same keys, new not_after, new digest.
    rig.gw.renew_keyset(T0 + 2 * VALIDITY);
    let d2 = rig.gw.keyset_digest();
    assert_ne!(d2, d1);

    // The request still succeeds with the current key; the response names the unknown digest.
    let res = send(&client, chat(&rig.url("/v1/chat/completions"), "replica two")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-aci-keyset-digest"], d2.as_str());
    let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
    assert_eq!(record.keyset_digest(), Some(d2.as_str()));
    assert_eq!(record.attested_keyset_digest(), d1);
    let out: Value = serde_json::from_slice(&read(res.into_body()).await.unwrap()).unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], "You said: replica two");

    // That woke the refresher; the last attempt was just now, so it waits out the minimum
    // interval before re-attesting. The digest is not known yet.
    let (gap, fire_gap) = rig.sleeps.next().await;
    assert_eq!(gap, MIN_INTERVAL);
    drop(timer);
    assert!(handle.keyset_for_digest(&d2).is_none());
    assert_eq!(rig.gw.attestations_served(), 1);

    // Requests in between keep succeeding with the current key (buffered and streamed).
    for i in 0..3 {
        let record = chat_ok(&client, &rig, &format!("in between {i}")).await;
        assert_eq!(record.attested_keyset_digest(), d1);
        assert_eq!(record.keyset_digest(), Some(d2.as_str()));
    }
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "streamed in between"}]});
    let res = send(&client, post(&rig.url("/v1/chat/completions"), &body)).await.unwrap();
    assert_eq!(res.status(), 200);
    let out = read(res.into_body()).await.unwrap();
    assert_eq!(sse_text(&out, "content"), "You said: streamed in between");
    assert_eq!(rig.gw.attestations_served(), 1, "no fetch before the minimum interval");

    // The refresher runs: the new digest becomes known and current; the old one stays known.
    rig.clock.advance(MIN_INTERVAL.as_secs());
    fire_gap.send(()).unwrap();
    let (d, timer) = rig.sleeps.next().await;
    assert_eq!(d, Duration::from_secs(T0 + 2 * VALIDITY - BUFFER - (T0 + MIN_INTERVAL.as_secs())));
    assert_eq!(rig.gw.attestations_served(), 2);
    let second = handle.keyset_for_digest(&d2).expect("the new digest is known");
    assert_eq!(handle.current().unwrap().digest(), d2);
    assert_eq!(second.e2ee_key().public_key_text(), first.e2ee_key().public_key_text(), "same keys");
    assert!(handle.keyset_for_digest(&d1).is_some(), "the old digest is still known and valid");

    // The responses in between all named the same unknown digest: one re-attestation answers
    // them all, and the refresher goes back to its schedule.
    settle().await;
    assert!(!timer.is_closed(), "no leftover wake-up");
    assert!(rig.sleeps.queued().is_empty(), "{:?}", rig.sleeps.queued());
    assert_eq!(rig.gw.attestations_served(), 2);

    // A response naming the now-known digest wakes nothing.
    let record = chat_ok(&client, &rig, "known replica").await;
    assert_eq!(record.attested_keyset_digest(), d2);
    settle().await;
    assert!(rig.sleeps.queued().is_empty());
    assert_eq!(rig.gw.attestations_served(), 2);

    // After d1's not_after it is no longer served for encryption, but it is still remembered
    // (with its receipt key) so receipts naming it can be verified.
    rig.clock.set(T0 + VALIDITY);
    assert!(handle.keyset_for_digest(&d1).is_none());
    let old = handle.known_keysets().into_iter().find(|k| k.digest() == d1).expect("d1 remembered");
    assert_eq!(old.receipt_keys().len(), 1);
    assert_eq!(old.receipt_keys()[0].verifying_key(), second.receipt_keys()[0].verifying_key());
    assert!(handle.known_keysets().iter().any(|k| k.digest() == d2));
}

/// The default re-attestation ceiling (`KeyProviderBuilder::max_keyset_age`).
const DAY: u64 = 24 * 3600;
/// A keyset lifetime far beyond the ceiling, as production gateways publish (launch + 30 days).
const THIRTY_DAYS: u64 = 30 * DAY;

/// A gateway that publishes a keyset valid for thirty days is still re-attested within a day:
/// TCB status, revocation lists and advisories are judged again.
#[tokio::test]
async fn a_keyset_valid_for_thirty_days_is_re_attested_within_a_day() {
    let rig = Rig::start(Suite::X25519, T0 + THIRTY_DAYS, |b| b).await;
    let (handle, worker) = rig.provider.pair();
    tokio::spawn(worker);

    let (d, fire) = rig.sleeps.next().await;
    assert_eq!(rig.gw.attestations_served(), 1);
    assert_eq!(handle.current().unwrap().not_after(), T0 + THIRTY_DAYS);
    assert!(d.as_secs() < DAY, "the next re-attestation is {d:?} away: beyond the one-day ceiling");
    assert_eq!(d, Duration::from_secs(DAY - BUFFER), "the ceiling, less the refresh buffer");

    // The timer fires: the gateway is attested again, and the next one is a day later again.
    rig.clock.set(T0 + d.as_secs());
    fire.send(()).unwrap();
    let (d2, _fire) = rig.sleeps.next().await;
    assert_eq!(rig.gw.attestations_served(), 2);
    let renewed = handle.current().unwrap();
    assert_eq!(renewed.verified_at(), T0 + d.as_secs());
    assert_eq!(d2, Duration::from_secs(DAY - BUFFER));
}

/// Past the ceiling without a successful re-attestation the keyset is no longer current, however
/// far its `not_after`; a later success brings requests back.
#[tokio::test]
async fn past_the_ceiling_without_a_re_attestation_requests_fail_with_key_unavailable() {
    let rig = Rig::start(Suite::Secp256k1, T0 + THIRTY_DAYS, |b| b).await;
    let (handle, worker) = rig.provider.pair();
    tokio::spawn(worker);
    let (d, fire) = rig.sleeps.next().await;
    let client = rig.client(&handle);
    chat_ok(&client, &rig, "on the day of attestation").await;

    // The re-attestation fails (the endpoint is unreachable) and backs off.
    rig.attestation_down.store(true, Ordering::SeqCst);
    rig.clock.set(T0 + d.as_secs());
    fire.send(()).unwrap();
    let (backoff, retry) = rig.sleeps.next().await;
    assert_eq!(backoff, Duration::from_secs(1));
    rig.clock.set(T0 + DAY - 1);
    chat_ok(&client, &rig, "a second before the ceiling").await;

    rig.clock.set(T0 + DAY);
    let e = handle.current().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyUnavailable, "a keyset verified a day ago is not current: {e}");
    assert!(handle.current().unwrap_err().to_string().contains("max_keyset_age"), "{e}");
    all_requests_refused(&rig, &handle).await;

    // The endpoint comes back; the backoff's attempt succeeds and requests flow again.
    rig.attestation_down.store(false, Ordering::SeqCst);
    retry.send(()).unwrap();
    let (_, _timer) = rig.sleeps.next().await;
    assert_eq!(handle.current().unwrap().verified_at(), T0 + DAY);
    chat_ok(&client, &rig, "after the re-attestation").await;
}

/// The older report generation's validity is its `freshness.stale_after`, which the quote does
/// not bind: an on-path attacker can push it to the policy's horizon (400 days by default). The
/// ceiling still ends the keyset's life a day after it was verified.
#[tokio::test]
async fn an_edited_stale_after_does_not_stretch_a_keyset_beyond_the_ceiling() {
    let clock = ManualClock::new(T0);
    // The keyset epoch's own not_after is u64::MAX in production; far beyond the horizon here.
    let gw = TestGateway::start(
        GatewayConfig::new()
            .generation(tower_aci::attest::Generation::Legacy)
            .clock(Arc::new(clock.clone()))
            .not_after(T0 + 390 * DAY),
    )
    .await
    .unwrap();
    let stretched = T0 + 300 * DAY;
    let down = Arc::new(AtomicBool::new(false));
    let cut = down.clone();
    let client = hyper();
    let path = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let (client, cut) = (client.clone(), cut.clone());
        async move {
            if cut.load(Ordering::SeqCst) {
                return Err::<Response<Full<Bytes>>, BoxError>("attestation endpoint unreachable (simulated)".into());
            }
            let (parts, body) = client.oneshot(req).await?.into_parts();
            let mut report: Value = serde_json::from_slice(&body.collect().await?.to_bytes())?;
            report["attestation"]["freshness"]["stale_after"] = json!(stretched);
            Ok(Response::from_parts(parts, Full::new(Bytes::from(serde_json::to_vec(&report)?))))
        }
    });
    let sleeps = Sleeps::default();
    let s = sleeps.clone();
    let provider = KeyProvider::builder(path)
        .base_url(gw.base_url().parse().unwrap())
        .policy(stub_policy(Suite::Secp256k1))
        .clock(Arc::new(clock.clone()))
        .sleep(move |d| s.sleep(d))
        .load_timeout(LOAD_TIMEOUT)
        .refresh_jitter(Duration::ZERO)
        .build()
        .unwrap();
    let (handle, worker) = provider.pair();
    tokio::spawn(worker);
    let (d, _timer) = sleeps.next().await;
    let keyset = handle.current().unwrap();
    assert_eq!(keyset.generation(), tower_aci::attest::Generation::Legacy);
    assert_eq!(keyset.not_after(), stretched, "the edited stale_after is accepted: it is not signed");
    assert!(d.as_secs() < DAY, "re-attestation {d:?} away");

    down.store(true, Ordering::SeqCst);
    clock.set(T0 + DAY - 1);
    handle.current().unwrap();
    clock.set(T0 + DAY);
    let e = handle.current().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyUnavailable, "the stretched keyset outlived the ceiling: {e}");
}
