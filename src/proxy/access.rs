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

use crate::proxy::ops::names;
use crate::receipt::ExchangeRecord;
use crate::telemetry::FieldCounts;

/// One exchange, from its request to its last byte; logged once, when it ends or is dropped.
pub(crate) struct ExchangeLog {
    method: Method,
    endpoint: &'static str,
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

/// The proxy's E2EE routes, as a bounded metric label.
fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/embeddings" => "/v1/embeddings",
        _ => "other",
    }
}

impl ExchangeLog {
    pub(crate) fn new(method: &Method, path: &str) -> ExchangeLog {
        ExchangeLog {
            method: method.clone(),
            endpoint: endpoint_label(path),
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
        metrics::gauge!(names::OPEN_STREAMS).increment(1.0);
    }

    /// A stream's first event went out.
    pub(crate) fn first_event(&mut self) {
        if !self.first_event {
            self.first_event = true;
            metrics::histogram!(names::FIRST_EVENT_SECONDS, "endpoint" => self.endpoint)
                .record(self.started.elapsed().as_secs_f64());
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
            metrics::gauge!(names::OPEN_STREAMS).decrement(1.0);
        }
        metrics::counter!(names::EXCHANGES, "endpoint" => self.endpoint, "outcome" => outcome).increment(1);
        metrics::histogram!(names::REQUEST_SECONDS, "endpoint" => self.endpoint).record(elapsed.as_secs_f64());
        let (sealed, opened) = self.counts.as_ref().map_or((0, 0), |c| (c.sealed_fields(), c.opened_fields()));
        tracing::info!(
            target: "aci_proxy::access",
            method = %self.method,
            path = self.endpoint,
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
