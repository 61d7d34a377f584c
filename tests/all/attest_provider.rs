//! The key provider against a fake gateway (a `tower::service_fn` that seals fresh reports),
//! with a manual clock and a sleep the test fires by hand.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use serde_json::json;
use tower::util::BoxCloneService;
use tower_aci::attest::{Clock, KeyProvider, KeyProviderBuilder, ManualClock};
use tower_aci::{AttestationFailure, ErrorKind};

use crate::attest_support::*;

const T0: u64 = 1_750_000_000;
const VALIDITY: u64 = 3_600;

type TestService = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Serve,
    Fail,
    Tamper,
    Hang,
}

struct State {
    clock: ManualClock,
    mode: Mode,
    /// Key seed of the secp256k1 E2EE key served (changes simulate a key rotation).
    seed: u8,
    /// How often the handler yields before answering, so concurrent callers overlap.
    yields: usize,
    fetches: usize,
    nonces: Vec<String>,
    paths: Vec<String>,
}

/// A fake ACI gateway: seals a keyset valid for an hour from "now" for each nonce it is asked.
#[derive(Clone)]
struct Gateway(Arc<Mutex<State>>);

impl Gateway {
    fn new(clock: &ManualClock) -> Gateway {
        Gateway(Arc::new(Mutex::new(State {
            clock: clock.clone(),
            mode: Mode::Serve,
            seed: 0x44,
            yields: 0,
            fetches: 0,
            nonces: Vec::new(),
            paths: Vec::new(),
        })))
    }

    fn set_mode(&self, mode: Mode) {
        self.0.lock().unwrap().mode = mode;
    }

    fn fetches(&self) -> usize {
        self.0.lock().unwrap().fetches
    }

    /// The gateway as a boxed tower service (`Send` but not `Sync`, like many real clients).
    fn service(&self) -> TestService {
        let gw = self.clone();
        BoxCloneService::new(tower::service_fn(move |req: Request<Full<Bytes>>| {
            let gw = gw.clone();
            async move { Ok::<_, Infallible>(gw.serve(req).await) }
        }))
    }

    async fn serve(&self, req: Request<Full<Bytes>>) -> Response<Full<Bytes>> {
        let nonce_hex = req.uri().query().and_then(|q| q.strip_prefix("nonce=")).unwrap_or("").to_owned();
        let (mode, yields, seed, now) = {
            let mut s = self.0.lock().unwrap();
            s.fetches += 1;
            s.nonces.push(nonce_hex.clone());
            s.paths.push(req.uri().path().to_owned());
            (s.mode, s.yields, s.seed, s.clock.now())
        };
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        let json_response = |status: StatusCode, body: serde_json::Value| {
            Response::builder().status(status).body(Full::new(Bytes::from(bytes(&body)))).unwrap()
        };
        match mode {
            Mode::Hang => std::future::pending().await,
            Mode::Fail => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": {"type": "attestation_unavailable", "message": "quote service down"}}),
            ),
            Mode::Serve | Mode::Tamper => {
                let Some(nonce) = const_hex::decode(&nonce_hex).ok().and_then(|n| <[u8; 32]>::try_from(n).ok()) else {
                    return json_response(StatusCode::BAD_REQUEST, json!({"error": {"type": "invalid_request_error"}}));
                };
                let mut keyset = production_keyset(None, now + VALIDITY);
                keyset["e2ee_public_keys"][0]["public_key"] = json!(secp_public_hex(seed));
                let mut report = seal_report(&keyset, Some(&nonce));
                if mode == Mode::Tamper {
                    report["attestation"]["workload_keyset"]["subject"] = json!("someone-else");
                }
                json_response(StatusCode::OK, report)
            }
        }
    }
}

/// Yield until `cond` holds (the refresher runs on the same thread).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

struct Setup {
    clock: ManualClock,
    gateway: Gateway,
    sleeps: Sleeps,
}

impl Setup {
    fn new() -> Setup {
        let clock = ManualClock::new(T0);
        Setup { gateway: Gateway::new(&clock), clock, sleeps: Sleeps::default() }
    }

    fn builder(&self) -> KeyProviderBuilder<TestService> {
        let sleeps = self.sleeps.clone();
        KeyProvider::builder(self.gateway.service())
            .base_url(Uri::from_static("http://localhost"))
            .policy(stub_policy())
            .clock(Arc::new(self.clock.clone()))
            .sleep(move |d| sleeps.sleep(d))
            .load_timeout(LOAD_TIMEOUT)
            .refresh_jitter(Duration::ZERO)
    }
}

#[tokio::test]
async fn establish_fetches_verifies_and_publishes() {
    let s = Setup::new();
    let provider = s.builder().build().unwrap();
    let handle = provider.handle();
    assert_eq!(handle.current().unwrap_err().kind(), ErrorKind::KeyUnavailable);

    let ks = provider.establish().await.unwrap();
    assert_eq!(ks.not_after(), T0 + VALIDITY);
    assert_eq!(ks.e2ee_key().key_id(), "dstack-kms-e2ee-v1");
    assert_eq!(handle.current().unwrap().digest(), ks.digest());
    assert!(handle.keyset_for_digest(ks.digest()).is_some());

    provider.establish().await.unwrap();
    let state = s.gateway.0.lock().unwrap();
    assert_eq!(state.fetches, 2);
    for n in &state.nonces {
        assert_eq!(n.len(), 64);
        assert!(n.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{n}");
    }
    assert_ne!(state.nonces[0], state.nonces[1], "every fetch uses a fresh nonce");
    assert_eq!(state.paths[0], "/v1/aci/attestation");
}

#[tokio::test]
async fn base_path_prefix_is_kept() {
    let s = Setup::new();
    let provider = s.builder().base_url(Uri::from_static("http://localhost/aci/")).build().unwrap();
    provider.establish().await.unwrap();
    assert_eq!(s.gateway.0.lock().unwrap().paths[0], "/aci/v1/aci/attestation");
}

#[tokio::test]
async fn single_flight_shares_one_fetch() {
    let s = Setup::new();
    s.gateway.0.lock().unwrap().yields = 20;
    let provider = s.builder().build().unwrap();
    let calls = (0..8).map(|_| provider.establish());
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(s.gateway.fetches(), 1);
    let first = results[0].as_ref().unwrap().digest().to_owned();
    assert!(results.iter().all(|r| r.as_ref().unwrap().digest() == first));

    // A later call fetches again.
    provider.establish().await.unwrap();
    assert_eq!(s.gateway.fetches(), 2);
}

#[tokio::test]
async fn single_flight_shares_failures() {
    let s = Setup::new();
    s.gateway.0.lock().unwrap().yields = 20;
    s.gateway.set_mode(Mode::Fail);
    let provider = s.builder().build().unwrap();
    let results = futures_util::future::join_all((0..5).map(|_| provider.establish())).await;
    assert_eq!(s.gateway.fetches(), 1);
    for r in results {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Gateway);
        assert!(e.to_string().contains("attestation_unavailable"), "{e}");
    }
    let e = provider.handle().current().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::KeyUnavailable);
    assert!(e.to_string().contains("attestation_unavailable"), "{e}");
}

#[tokio::test]
async fn a_report_that_fails_verification_is_not_published() {
    let s = Setup::new();
    s.gateway.set_mode(Mode::Tamper);
    let provider = s.builder().build().unwrap();
    let e = provider.establish().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::KeysetDigest));
    assert!(provider.handle().current().is_err());

    // The default policy demands hardware verification this build cannot do.
    let strict = s.builder().policy(pinned_policy()).build().unwrap();
    s.gateway.set_mode(Mode::Serve);
    let e = strict.establish().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::HardwareUnverifiable));
}

#[tokio::test]
async fn load_timeout_and_size_limit() {
    let s = Setup::new();
    s.gateway.set_mode(Mode::Hang);
    let provider = s.builder().sleep(|_| async {}).build().unwrap();
    let e = provider.establish().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transport);
    assert!(e.to_string().contains("timed out"), "{e}");

    s.gateway.set_mode(Mode::Serve);
    let small = s.builder().max_report_size(256).build().unwrap();
    assert_eq!(small.establish().await.unwrap_err().kind(), ErrorKind::TooLarge);
}

#[tokio::test]
async fn refresh_before_expiry() {
    let s = Setup::new();
    let provider = s.builder().refresh_buffer(Duration::from_secs(600)).build().unwrap();
    let (handle, worker) = provider.pair();
    tokio::spawn(worker);

    let (d, fire) = s.sleeps.next().await;
    assert_eq!(s.gateway.fetches(), 1);
    assert_eq!(d, Duration::from_secs(VALIDITY - 600), "refresh is scheduled buffer-before not_after");
    let first = handle.current().unwrap();

    s.clock.advance(d.as_secs());
    fire.send(()).unwrap();
    let (d2, _fire2) = s.sleeps.next().await;
    assert_eq!(s.gateway.fetches(), 2);
    assert_eq!(d2, Duration::from_secs(VALIDITY - 600));
    let second = handle.current().unwrap();
    assert_ne!(second.digest(), first.digest(), "the new keyset has a later not_after");
    assert_eq!(second.not_after(), T0 + VALIDITY - 600 + VALIDITY);
    // Both replicas' digests stay known.
    assert!(handle.keyset_for_digest(first.digest()).is_some());
}

#[tokio::test]
async fn failure_keeps_the_last_valid_key_until_not_after() {
    let s = Setup::new();
    let provider = s.builder().retry_backoff(Duration::from_secs(1), Duration::from_secs(8)).build().unwrap();
    let (handle, worker) = provider.pair();
    tokio::spawn(worker);
    let (d, fire) = s.sleeps.next().await;
    let first = handle.current().unwrap();

    // The refresh fails: the old key keeps serving and the refresher backs off.
    s.gateway.set_mode(Mode::Fail);
    s.clock.advance(d.as_secs());
    fire.send(()).unwrap();
    let (backoff, fire_backoff) = s.sleeps.next().await;
    assert_eq!(s.gateway.fetches(), 2);
    assert_eq!(backoff, Duration::from_secs(1));
    assert_eq!(handle.current().unwrap().digest(), first.digest());

    // Past not_after the key is never served. Asking for it does not cut the backoff short:
    // attempts follow the backoff, however many requests are refused meanwhile.
    s.clock.set(first.not_after());
    for _ in 0..10 {
        assert_eq!(handle.current().unwrap_err().kind(), ErrorKind::KeyUnavailable);
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(s.gateway.fetches(), 2);
    assert!(s.sleeps.queued().is_empty());
    assert!(!fire_backoff.is_closed(), "the backoff timer is still the one that decides");
    s.clock.advance(1);
    fire_backoff.send(()).unwrap();
    let (backoff, fire_backoff2) = s.sleeps.next().await;
    assert_eq!(s.gateway.fetches(), 3);
    assert_eq!(backoff, Duration::from_secs(2));
    assert!(handle.current().is_err());

    // The gateway recovers: the next attempt publishes a fresh key.
    s.gateway.set_mode(Mode::Serve);
    s.clock.advance(2);
    fire_backoff2.send(()).unwrap();
    let (d, _timer) = s.sleeps.next().await;
    assert_eq!(d, Duration::from_secs(VALIDITY - 600));
    assert_eq!(s.gateway.fetches(), 4);
    let fresh = handle.current().unwrap();
    assert_ne!(fresh.digest(), first.digest());
}

#[tokio::test]
async fn wake_on_unknown_digest_or_key_mismatch() {
    let s = Setup::new();
    let provider = s.builder().min_refresh_interval(Duration::from_secs(10)).build().unwrap();
    let (handle, worker) = provider.pair();
    tokio::spawn(worker);
    let (_, _timer) = s.sleeps.next().await;
    let first = handle.current().unwrap();

    // A known digest does nothing.
    s.clock.advance(60);
    handle.observe_digest(first.digest());
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(s.gateway.fetches(), 1);

    // An unknown one (another replica) re-attests in the background; the current key keeps serving.
    handle.observe_digest(&format!("sha256:{}", "00".repeat(32)));
    assert_eq!(handle.current().unwrap().digest(), first.digest());
    let (_, _timer) = s.sleeps.next().await;
    assert_eq!(s.gateway.fetches(), 2);
    let second = handle.current().unwrap();
    assert_ne!(second.digest(), first.digest());

    // A key mismatch right away (key rotated on the gateway) waits out the minimum interval.
    s.gateway.0.lock().unwrap().seed = 0x48;
    handle.report_key_mismatch();
    let (gap, fire_gap) = s.sleeps.next().await;
    assert_eq!(gap, Duration::from_secs(10));
    assert_eq!(s.gateway.fetches(), 2);
    s.clock.advance(10);
    fire_gap.send(()).unwrap();
    let (_, _timer) = s.sleeps.next().await;
    assert_eq!(s.gateway.fetches(), 3);
    let rotated = handle.current().unwrap();
    assert_eq!(rotated.e2ee_key().public_key_text(), secp_public_hex(0x48));
}

#[tokio::test]
async fn spawn_runs_on_tokio_and_stops_when_dropped() {
    let s = Setup::new();
    let provider = s.builder().build().unwrap();
    let (handle, task) = provider.spawn().unwrap();
    let (_, fire) = s.sleeps.next().await;
    assert!(handle.current().is_ok());
    drop(task);
    until("the refresher is dropped", || fire.is_closed()).await;

    // An established key makes the refresher start with a timer instead of a fetch.
    let (_handle, _task) = provider.spawn().unwrap();
    let (d, _fire) = s.sleeps.next().await;
    assert!(d > Duration::from_secs(60));
    assert_eq!(s.gateway.fetches(), 1);
}

#[test]
fn spawn_outside_a_runtime_is_a_config_error() {
    let s = Setup::new();
    let provider = s.builder().build().unwrap();
    assert_eq!(provider.spawn().unwrap_err().kind(), ErrorKind::Config);
}

#[test]
fn builder_validation() {
    let s = Setup::new();
    let no_base = KeyProvider::builder(s.gateway.service()).policy(stub_policy()).build();
    assert_eq!(no_base.unwrap_err().kind(), ErrorKind::Config);
    let no_policy = KeyProvider::builder(s.gateway.service()).base_url(Uri::from_static("http://localhost")).build();
    assert_eq!(no_policy.unwrap_err().kind(), ErrorKind::Config);
    let relative = s.builder().base_url(Uri::from_static("/v1")).build();
    assert_eq!(relative.unwrap_err().kind(), ErrorKind::Config);
    let query = s.builder().base_url(Uri::from_static("http://localhost/?x=1")).build();
    assert_eq!(query.unwrap_err().kind(), ErrorKind::Config);
    let backoff = s.builder().retry_backoff(Duration::from_secs(5), Duration::from_secs(1)).build();
    assert_eq!(backoff.unwrap_err().kind(), ErrorKind::Config);
    // The re-attestation ceiling: positive, and at least a minute.
    let zero = s.builder().max_keyset_age(Duration::ZERO).build().unwrap_err();
    assert_eq!(zero.kind(), ErrorKind::Config);
    assert!(zero.to_string().contains("max_keyset_age must be positive"), "{zero}");
    let short = s.builder().max_keyset_age(Duration::from_secs(59)).build().unwrap_err();
    assert_eq!(short.kind(), ErrorKind::Config);
    assert!(short.to_string().contains("at least one minute"), "{short}");
    let minute = s.builder().max_keyset_age(Duration::from_secs(60)).build().unwrap();
    assert_eq!(minute.handle().max_keyset_age(), Some(Duration::from_secs(60)));
    let default = s.builder().build().unwrap();
    assert_eq!(default.handle().max_keyset_age(), Some(Duration::from_secs(24 * 3600)));
    assert_eq!(tower_aci::attest::KeyHandle::new().max_keyset_age(), None, "no provider, no ceiling");
}

/// A ceiling shorter than the keyset's life decides both the schedule and the end of service.
#[tokio::test]
async fn a_configured_ceiling_schedules_re_attestation_and_ends_service() {
    const CEILING: u64 = 1_200;
    let s = Setup::new();
    let provider = s.builder().refresh_buffer(Duration::from_secs(600)).max_keyset_age(Duration::from_secs(CEILING));
    let provider = provider.build().unwrap();
    let (handle, worker) = provider.pair();
    tokio::spawn(worker);

    let (d, _fire) = s.sleeps.next().await;
    let keyset = handle.current().unwrap();
    assert_eq!(keyset.not_after(), T0 + VALIDITY, "the keyset itself is valid for {VALIDITY} s");
    assert_eq!(handle.serves_until(&keyset), T0 + CEILING);
    assert_eq!(d, Duration::from_secs(CEILING - 600), "the buffer before the ceiling, not before not_after");
    s.clock.set(T0 + CEILING - 1);
    assert!(handle.current().is_ok());
    assert!(handle.keyset_for_digest(keyset.digest()).is_some());
    // No refresh happened (the timer was not fired): past the ceiling the key is not served.
    s.clock.set(T0 + CEILING);
    assert_eq!(handle.current().unwrap_err().kind(), ErrorKind::KeyUnavailable);
    assert!(handle.keyset_for_digest(keyset.digest()).is_none());
    // Still remembered, for receipts it signed.
    assert!(handle.known_keysets().iter().any(|k| k.digest() == keyset.digest()));
}
