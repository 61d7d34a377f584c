//! The metrics the library records for key establishment and receipt checks, captured with a
//! local recorder over real exchanges with the local gateway: names and label values are a
//! contract operators build dashboards on (`tower_aci::telemetry::names`), whatever the types
//! behind them are called.

use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use serde_json::json;
use tower_aci::attest::{Clock, KeyHandle, KeyProvider, Policy, SystemClock};
use tower_aci::protocol::Suite;
use tower_aci::receipt::{ExchangeRecord, KeysetMatch, ReceiptClient, ReceiptPolicy};

use crate::data::exchange_record;
use crate::support::{Env, hyper, post, read, send, stub_policy};

/// A metric's name and labels (sorted).
type Name = (String, Vec<(String, String)>);

/// Every update a metric received: name, labels, value.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(Name, f64)>>>);

struct Handle {
    key: Key,
    log: Capture,
}

impl Handle {
    fn push(&self, value: f64) {
        let mut labels: Vec<_> = self.key.labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect();
        labels.sort();
        self.log.0.lock().unwrap().push(((self.key.name().to_owned(), labels), value));
    }
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.push(value as f64);
    }
    fn absolute(&self, value: u64) {
        self.push(value as f64);
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        self.push(value);
    }
    fn decrement(&self, value: f64) {
        self.push(-value);
    }
    fn set(&self, value: f64) {
        self.push(value);
    }
}

impl HistogramFn for Handle {
    fn record(&self, value: f64) {
        self.push(value);
    }
}

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Handle { key: key.clone(), log: self.clone() }))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Handle { key: key.clone(), log: self.clone() }))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Handle { key: key.clone(), log: self.clone() }))
    }
}

impl Capture {
    /// The updates of `name` with exactly these labels, taken out of the log.
    fn take(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let mut want: Vec<(String, String)> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        want.sort();
        let mut log = self.0.lock().unwrap();
        let (hit, rest): (Vec<_>, Vec<_>) = log.drain(..).partition(|((n, l), _)| n == name && *l == want);
        *log = rest;
        hit.into_iter().map(|(_, v)| v).collect()
    }

    /// The names and labels of what is left in the log.
    fn rest(&self) -> Vec<Name> {
        self.0.lock().unwrap().iter().map(|(name, _)| name.clone()).collect()
    }
}

/// Run `test` on a current-thread runtime with `capture` as this thread's recorder.
fn captured<F: std::future::Future<Output = ()>>(capture: &Capture, test: impl FnOnce() -> F) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    metrics::with_local_recorder(capture, || rt.block_on(test()));
}

#[test]
fn key_establishment_is_counted_by_outcome_with_the_keysets_not_after() {
    let capture = Capture::default();
    captured(&capture, || async {
        let env = Env::start(Suite::X25519).await;
        let _ = capture.take("aci_keyset_refreshes_total", &[("outcome", "ok")]); // the Env's own
        let _ = capture.take("aci_keyset_not_after_timestamp_seconds", &[]);
        let provider = KeyProvider::builder(hyper())
            .base_url(env.gw.base_url().parse().unwrap())
            .policy(stub_policy(Suite::X25519))
            .build()
            .unwrap();
        let keyset = provider.establish().await.unwrap();
        assert_eq!(capture.take("aci_keyset_refreshes_total", &[("outcome", "ok")]), [1.0]);
        assert_eq!(capture.take("aci_keyset_not_after_timestamp_seconds", &[]), [keyset.not_after() as f64]);

        // A policy the gateway's report does not meet: its stub quote is not accepted.
        let other = Policy::builder().select_suite(Suite::X25519).dangerous().any_workload().build().unwrap();
        let refused =
            KeyProvider::builder(hyper()).base_url(env.gw.base_url().parse().unwrap()).policy(other).build().unwrap();
        refused.establish().await.unwrap_err();
        assert_eq!(capture.take("aci_keyset_refreshes_total", &[("outcome", "failed")]), [1.0]);
        assert_eq!(capture.take("aci_errors_total", &[("kind", "attestation")]), [1.0]);
        assert_eq!(capture.take("aci_keyset_not_after_timestamp_seconds", &[]), Vec::<f64>::new());
    });
}

#[test]
fn receipt_checks_are_counted_by_outcome_and_keyset_match() {
    let capture = Capture::default();
    captured(&capture, || async {
        let env = Env::start(Suite::X25519).await;
        let client = env.client(env.layer());
        let rc = ReceiptClient::new(hyper(), env.gw.base_url().parse().unwrap());
        let policy = ReceiptPolicy::new();
        let exchange = || async {
            let body = json!({"model": "demo-model", "messages": [{"role": "user", "content": "count me"}]});
            let res = send(&client, post(&env.url("/v1/chat/completions"), &body)).await.unwrap();
            let record = res.extensions().get::<ExchangeRecord>().unwrap().clone();
            read(res.into_body()).await.unwrap();
            record
        };
        let before = exchange().await;
        let verified = rc.fetch_and_verify(&before, None, &env.keys, &policy).await.unwrap();
        assert_eq!(verified.keyset_match(), KeysetMatch::Exact);
        let exact = [("outcome", "verified"), ("keyset_match", "exact")];
        assert_eq!(capture.take("aci_receipts_total", &exact), [1.0]);

        // Same E2EE keys, a new keyset digest no provider attests for a fixed handle: the
        // same-key rule decides, and the label says so.
        env.gw.renew_keyset(SystemClock.now() + 20 * 24 * 3600);
        let after = exchange().await;
        let fixed = KeyHandle::fixed((*env.keys.current().unwrap()).clone());
        let verified = rc.fetch_and_verify(&after, None, &fixed, &policy).await.unwrap();
        assert_eq!(verified.keyset_match(), KeysetMatch::SameKey);
        let same_key = [("outcome", "verified"), ("keyset_match", "same-key")];
        assert_eq!(capture.take("aci_receipts_total", &same_key), [1.0]);

        // A record whose request hash is not the receipt's: failed, and counted as an error.
        let mut hash = before.request_body_sha256();
        hash[0] ^= 1;
        let forged =
            exchange_record(before.path(), before.model(), before.receipt_id(), hash, before.response_body_sha256());
        rc.fetch_and_verify(&forged, None, &env.keys, &policy).await.unwrap_err();
        assert_eq!(capture.take("aci_receipts_total", &[("outcome", "failed")]), [1.0]);
        assert_eq!(capture.take("aci_errors_total", &[("kind", "receipt")]), [1.0]);
        let left: Vec<_> = capture.rest().into_iter().filter(|(n, _)| n == "aci_receipts_total").collect();
        assert!(left.is_empty(), "no other receipt outcome: {left:?}");
    });
}
