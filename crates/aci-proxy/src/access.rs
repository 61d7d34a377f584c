//! The access log: one line per exchange, at target `aci_proxy::access`, when the exchange
//! ended (a stream at its last event), with the exchange's metrics.
//!
//! ```text
//! INFO aci_proxy::access: exchange method=POST path=/v1/chat/completions status=200 duration_ms=412
//!   streamed=true sealed=1 opened=7 receipt_id=chatcmpl-… keyset=sha256:… outcome=ok
//! ```
//!
//! It holds what identifies the exchange — ids, digests, counts, the outcome — and never a
//! prompt, an answer, a key or a bearer token.

use std::sync::Arc;

use http::Method;
use tokio::time::Instant;

use tower_aci::receipt::ExchangeRecord;
use tower_aci::telemetry::FieldCounts;

use crate::names::{self, ENDPOINTS};

/// One exchange, from its request to its last byte; logged once, when it ends or is dropped.
pub(crate) struct ExchangeLog {
    method: Method,
    /// Index into [`ENDPOINTS`].
    endpoint: usize,
    pub(crate) started: Instant,
    status: u16,
    streamed: bool,
    counts: Option<Arc<FieldCounts>>,
    receipt_id: Option<String>,
    keyset: Option<String>,
    first_event: bool,
    open_stream: bool,
    done: bool,
}

/// The index into [`ENDPOINTS`] of a request path.
fn endpoint_index(path: &str) -> usize {
    ENDPOINTS[..3].iter().position(|e| *e == path).unwrap_or(3)
}

/// The counter of a static key: the `metrics` macros' registration, without building the key
/// (the hot path's metrics are made once, in [`keys`]).
fn counter(key: &'static metrics::Key) -> metrics::Counter {
    metrics::with_recorder(|r| r.register_counter(key, &METADATA))
}

/// The histogram of a static key (see [`counter`]).
fn histogram(key: &'static metrics::Key) -> metrics::Histogram {
    metrics::with_recorder(|r| r.register_histogram(key, &METADATA))
}

/// The gauge of a static key (see [`counter`]).
fn gauge(key: &'static metrics::Key) -> metrics::Gauge {
    metrics::with_recorder(|r| r.register_gauge(key, &METADATA))
}

/// What the `metrics` macros would pass for a call in this module.
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// The per-exchange metric keys, made once (as tower-aci's own are): labelled by
/// endpoint, and the exchange counter for the common outcome, `ok`. Other outcomes build their
/// key when they happen.
mod keys {
    use metrics::{Key, Label};

    use crate::names::{self, ENDPOINTS};

    const fn l(key: &'static str, value: &'static str) -> Label {
        Label::from_static_parts(key, value)
    }

    static ENDPOINT: [[Label; 1]; 4] = [
        [l("endpoint", ENDPOINTS[0])],
        [l("endpoint", ENDPOINTS[1])],
        [l("endpoint", ENDPOINTS[2])],
        [l("endpoint", ENDPOINTS[3])],
    ];
    static ENDPOINT_OK: [[Label; 2]; 4] = [
        [l("endpoint", ENDPOINTS[0]), l("outcome", "ok")],
        [l("endpoint", ENDPOINTS[1]), l("outcome", "ok")],
        [l("endpoint", ENDPOINTS[2]), l("outcome", "ok")],
        [l("endpoint", ENDPOINTS[3]), l("outcome", "ok")],
    ];

    /// `aci_proxy_request_duration_seconds{endpoint}`.
    pub(super) static REQUEST_SECONDS: [Key; 4] = {
        const fn k(i: usize) -> Key {
            Key::from_static_parts(names::REQUEST_SECONDS, &ENDPOINT[i])
        }
        [k(0), k(1), k(2), k(3)]
    };
    /// `aci_proxy_time_to_first_event_seconds{endpoint}`.
    pub(super) static FIRST_EVENT_SECONDS: [Key; 4] = {
        const fn k(i: usize) -> Key {
            Key::from_static_parts(names::FIRST_EVENT_SECONDS, &ENDPOINT[i])
        }
        [k(0), k(1), k(2), k(3)]
    };
    /// `aci_proxy_exchanges_total{endpoint, outcome="ok"}`.
    pub(super) static EXCHANGES_OK: [Key; 4] = {
        const fn k(i: usize) -> Key {
            Key::from_static_parts(names::EXCHANGES, &ENDPOINT_OK[i])
        }
        [k(0), k(1), k(2), k(3)]
    };
    /// `aci_proxy_open_streams`.
    pub(super) static OPEN_STREAMS: Key = Key::from_static_name(names::OPEN_STREAMS);
}

impl ExchangeLog {
    pub(crate) fn new(method: &Method, path: &str) -> ExchangeLog {
        ExchangeLog {
            method: method.clone(),
            endpoint: endpoint_index(path),
            started: Instant::now(),
            status: 0,
            streamed: false,
            counts: None,
            receipt_id: None,
            keyset: None,
            first_event: false,
            open_stream: false,
            done: false,
        }
    }

    /// The answer's head arrived.
    pub(crate) fn answered(&mut self, res: &http::response::Parts) {
        self.status = res.status.as_u16();
        self.counts = res.extensions.get::<Arc<FieldCounts>>().cloned();
        if let Some(record) = res.extensions.get::<ExchangeRecord>() {
            self.streamed = record.streamed();
            self.receipt_id = record.receipt_id().map(str::to_owned);
            self.keyset = Some(record.keyset_digest().unwrap_or(record.attested_keyset_digest()).to_owned());
        }
    }

    /// The answer is relayed as a stream from now on.
    pub(crate) fn stream_opened(&mut self) {
        self.open_stream = true;
        gauge(&keys::OPEN_STREAMS).increment(1.0);
    }

    /// A stream's first event went out.
    pub(crate) fn first_event(&mut self) {
        if !self.first_event {
            self.first_event = true;
            histogram(&keys::FIRST_EVENT_SECONDS[self.endpoint]).record(self.started.elapsed().as_secs_f64());
        }
    }

    /// The status the client gets, when the proxy answers with its own error.
    pub(crate) fn status(&mut self, status: u16) {
        self.status = status;
    }

    /// The exchange ended: `outcome` is `ok`, `gateway_error`, `timeout`, `shutdown`,
    /// `client_closed`, or the code of the proxy's error answer.
    pub(crate) fn finish(mut self, outcome: &'static str) {
        self.log(outcome);
    }

    fn log(&mut self, outcome: &'static str) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.started.elapsed();
        if self.open_stream {
            gauge(&keys::OPEN_STREAMS).decrement(1.0);
        }
        let endpoint = ENDPOINTS[self.endpoint];
        if outcome == "ok" {
            counter(&keys::EXCHANGES_OK[self.endpoint]).increment(1);
        } else {
            metrics::counter!(names::EXCHANGES, "endpoint" => endpoint, "outcome" => outcome).increment(1);
        }
        histogram(&keys::REQUEST_SECONDS[self.endpoint]).record(elapsed.as_secs_f64());
        let (sealed, opened) = self.counts.as_ref().map_or((0, 0), |c| (c.sealed_fields(), c.opened_fields()));
        tracing::info!(
            target: "aci_proxy::access",
            method = %self.method,
            path = endpoint,
            status = self.status,
            duration_ms = elapsed.as_millis() as u64,
            streamed = self.streamed,
            sealed,
            opened,
            receipt_id = self.receipt_id.as_deref(),
            keyset = self.keyset.as_deref(),
            outcome,
            "exchange"
        );
    }
}

impl Drop for ExchangeLog {
    fn drop(&mut self) {
        // The client went away before the end (the body was dropped unread).
        self.log("client_closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The static keys are the keys the `metrics` macros build for the same labels.
    #[test]
    fn static_keys_match_the_labelled_keys() {
        for (i, endpoint) in ENDPOINTS.iter().enumerate() {
            assert_eq!(endpoint_index(endpoint), i);
            let one = vec![metrics::Label::new("endpoint", *endpoint)];
            assert_eq!(keys::REQUEST_SECONDS[i], metrics::Key::from_parts(names::REQUEST_SECONDS, one.clone()));
            assert_eq!(keys::FIRST_EVENT_SECONDS[i], metrics::Key::from_parts(names::FIRST_EVENT_SECONDS, one));
            let ok = vec![metrics::Label::new("endpoint", *endpoint), metrics::Label::new("outcome", "ok")];
            assert_eq!(keys::EXCHANGES_OK[i], metrics::Key::from_parts(names::EXCHANGES, ok));
        }
        assert_eq!(endpoint_index("/v1/models"), 3);
        assert_eq!(keys::OPEN_STREAMS, metrics::Key::from_name(names::OPEN_STREAMS));
    }
}
