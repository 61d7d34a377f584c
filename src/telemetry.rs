//! What the library tells an operator: tracing spans, and metrics through the [`metrics`] facade
//! (feature `metrics`).
//!
//! # Spans
//!
//! | span | level | fields |
//! | --- | --- | --- |
//! | `aci.attest.establish` | info | `digest`, `outcome` (`ok`, or the error kind) — every report fetch and verification |
//! | `aci.attest.refresh` | info | the refresher's scheduled re-attestation (the `establish` span inside it) |
//! | `aci.e2ee.exchange` | info | `endpoint`, `suite`, `key_id` — one E2EE request and its answer's head |
//! | `aci.receipt` | info | `receipt_id`, `keyset_match` (`exact`, `same-key`), `outcome` — fetch and verification of a receipt |
//!
//! Futures carry their span with `Instrument::instrument`; no span guard is held across an
//! `.await`, so the spans nest correctly under any subscriber, `tracing-opentelemetry` included.
//! Spans and events carry digests, key ids, receipt ids and error kinds: never prompts, answers,
//! keys or bearer tokens.
//!
//! # Metrics
//!
//! With feature `metrics`, the library records these through the
//! [`metrics`](https://docs.rs/metrics) facade. The names and label values are fixed strings (a
//! renamed variant never changes a dashboard), held to a golden list by the tests.
//!
//! | metric | kind | labels | counts |
//! | --- | --- | --- | --- |
//! | `aci_e2ee_requests_total` | counter | `endpoint`, `suite` | requests encrypted to an attested key |
//! | `aci_errors_total` | counter | `kind` (the `ErrorKind` in snake case: `decrypt`, `attestation`, `receipt`, …) | errors the library returned from an exchange, a key establishment or a receipt check |
//! | `aci_e2ee_event_decrypt_seconds` | histogram, seconds | | time to decrypt and authenticate one event of a stream |
//! | `aci_keyset_refreshes_total` | counter | `outcome` (`ok`, `failed`) | report fetches and verifications (the first and every refresh) |
//! | `aci_keyset_not_after_timestamp_seconds` | gauge, Unix seconds | | the `not_after` of the keyset last published |
//! | `aci_receipts_total` | counter | `outcome` (`verified`, `failed`, `refused`: a receipt whose keyset failed the policy); `keyset_match` (`exact`, `same-key`) when verified | receipt checks |
//!
//! With no recorder installed, each call is a no-op (one atomic load); install any recorder
//! (`metrics-exporter-prometheus`, as `aci-proxy` does, or another) to collect them, and call
//! [`describe`] to register their help texts.
//!
//! [`metrics`]: https://docs.rs/metrics

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::Span;
use tracing::field::Empty;

use crate::error::{Error, ErrorKind, ReceiptFailure};
use crate::protocol::Endpoint;
use crate::protocol::stream::StreamOutput;
use crate::protocol::suite::Suite;

/// How many fields an E2EE exchange sealed (request) and opened (answer), in the extensions of
/// every response of the [`E2eeLayer`](crate::E2eeLayer) to an encrypted request. `opened` grows
/// as the body is read: read it once the body ended.
#[derive(Debug, Default)]
#[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
pub struct FieldCounts {
    sealed: usize,
    opened: AtomicUsize,
}

impl FieldCounts {
    pub(crate) fn sealed(fields: usize) -> Arc<Self> {
        Arc::new(FieldCounts { sealed: fields, opened: AtomicUsize::new(0) })
    }

    #[inline]
    pub(crate) fn opened(counts: &Option<Arc<Self>>, fields: usize) {
        if let Some(c) = counts {
            c.opened.fetch_add(fields, Ordering::Relaxed);
        }
    }

    /// Fields of the request encrypted to the attested key.
    pub fn sealed_fields(&self) -> usize {
        self.sealed
    }

    /// Fields of the answer decrypted so far (every event of a stream adds its own).
    pub fn opened_fields(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }
}

/// The names of the metrics the library records (feature `metrics`).
#[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
pub mod names {
    /// Counter, labels `endpoint`, `suite`: requests encrypted to an attested key.
    pub const E2EE_REQUESTS: &str = "aci_e2ee_requests_total";
    /// Counter, label `kind` (an [`ErrorKind`](crate::error::ErrorKind) in snake case, e.g. `decrypt`,
    /// `attestation`, `receipt`): errors the library returned from an exchange, a key
    /// establishment or a receipt check.
    pub const ERRORS: &str = "aci_errors_total";
    /// Histogram, seconds: time to decrypt and authenticate one event of a stream.
    pub const EVENT_DECRYPT_SECONDS: &str = "aci_e2ee_event_decrypt_seconds";
    /// Counter, label `outcome` (`ok`, `failed`): report fetches and verifications (the first
    /// establishment and every refresh).
    pub const KEYSET_REFRESHES: &str = "aci_keyset_refreshes_total";
    /// Gauge, Unix seconds: the `not_after` of the keyset last published.
    pub const KEYSET_NOT_AFTER: &str = "aci_keyset_not_after_timestamp_seconds";
    /// Counter, label `outcome` (`verified`, `failed`, `refused`) and for verified receipts
    /// `keyset_match` (`exact`, `same-key`): receipt checks. `refused` is a receipt whose keyset
    /// failed the policy.
    pub const RECEIPTS: &str = "aci_receipts_total";
}

/// Metric keys whose labels are known in advance, made once. A key built per call with the
/// `metrics` macros and a label that is not a literal allocates its labels (twice, with the
/// recorder's retained copy) and hashes them on every call; these are `static`, hashed at
/// compile time, and retained without a copy. Registered through [`counter`], [`histogram`].
#[cfg(feature = "metrics")]
pub(crate) mod keys {
    use metrics::{Key, Label};

    use super::{KIND_NAMES, names};
    use crate::protocol::Endpoint;
    use crate::protocol::suite::Suite;

    /// A static label.
    const fn l(key: &'static str, value: &'static str) -> Label {
        Label::from_static_parts(key, value)
    }

    const CHAT: &str = Endpoint::ChatCompletions.path();
    const COMPLETIONS: &str = Endpoint::Completions.path();
    const EMBEDDINGS: &str = Endpoint::Embeddings.path();
    const SECP: &str = Suite::Secp256k1.algo();
    const X25519: &str = Suite::X25519.algo();

    static E2EE_REQUEST_LABELS: [[[Label; 2]; 2]; 3] = [
        [[l("endpoint", CHAT), l("suite", SECP)], [l("endpoint", CHAT), l("suite", X25519)]],
        [[l("endpoint", COMPLETIONS), l("suite", SECP)], [l("endpoint", COMPLETIONS), l("suite", X25519)]],
        [[l("endpoint", EMBEDDINGS), l("suite", SECP)], [l("endpoint", EMBEDDINGS), l("suite", X25519)]],
    ];
    static E2EE_REQUESTS: [[Key; 2]; 3] = {
        const fn k(e: usize, s: usize) -> Key {
            Key::from_static_parts(names::E2EE_REQUESTS, &E2EE_REQUEST_LABELS[e][s])
        }
        [[k(0, 0), k(0, 1)], [k(1, 0), k(1, 1)], [k(2, 0), k(2, 1)]]
    };

    /// `aci_e2ee_requests_total{endpoint, suite}`.
    pub(crate) fn e2ee_requests(endpoint: Endpoint, suite: Suite) -> &'static Key {
        let e = match endpoint {
            Endpoint::ChatCompletions => 0,
            Endpoint::Completions => 1,
            Endpoint::Embeddings => 2,
        };
        let s = match suite {
            Suite::Secp256k1 => 0,
            Suite::X25519 => 1,
        };
        &E2EE_REQUESTS[e][s]
    }

    static ERROR_LABELS: [[Label; 1]; 16] = [
        [l("kind", KIND_NAMES[0])],
        [l("kind", KIND_NAMES[1])],
        [l("kind", KIND_NAMES[2])],
        [l("kind", KIND_NAMES[3])],
        [l("kind", KIND_NAMES[4])],
        [l("kind", KIND_NAMES[5])],
        [l("kind", KIND_NAMES[6])],
        [l("kind", KIND_NAMES[7])],
        [l("kind", KIND_NAMES[8])],
        [l("kind", KIND_NAMES[9])],
        [l("kind", KIND_NAMES[10])],
        [l("kind", KIND_NAMES[11])],
        [l("kind", KIND_NAMES[12])],
        [l("kind", KIND_NAMES[13])],
        [l("kind", KIND_NAMES[14])],
        [l("kind", KIND_NAMES[15])],
    ];
    static ERRORS: [Key; 16] = {
        const fn k(i: usize) -> Key {
            Key::from_static_parts(names::ERRORS, &ERROR_LABELS[i])
        }
        [k(0), k(1), k(2), k(3), k(4), k(5), k(6), k(7), k(8), k(9), k(10), k(11), k(12), k(13), k(14), k(15)]
    };

    /// `aci_errors_total{kind}`.
    pub(crate) fn error(kind: crate::error::ErrorKind) -> &'static Key {
        &ERRORS[super::kind_index(kind)]
    }

    /// `aci_e2ee_event_decrypt_seconds`.
    pub(crate) static EVENT_DECRYPT_SECONDS: Key = Key::from_static_name(names::EVENT_DECRYPT_SECONDS);

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Every static key names the metric and carries the labels the macros would build.
        #[test]
        fn static_keys_carry_the_labels_of_their_values() {
            for endpoint in [Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings] {
                for suite in Suite::ALL {
                    let key = e2ee_requests(endpoint, suite);
                    let built = Key::from_parts(
                        names::E2EE_REQUESTS,
                        vec![Label::new("endpoint", endpoint.path()), Label::new("suite", suite.algo())],
                    );
                    assert_eq!(key, &built);
                    assert_eq!(key.get_hash(), built.get_hash());
                }
            }
            for (i, name) in KIND_NAMES.iter().enumerate() {
                let built = Key::from_parts(names::ERRORS, vec![Label::new("kind", *name)]);
                assert_eq!(&ERRORS[i], &built);
            }
        }
    }
}

/// Register and return the counter of a static key (see [`keys`]).
#[cfg(feature = "metrics")]
pub(crate) fn counter(key: &'static metrics::Key) -> metrics::Counter {
    metrics::with_recorder(|r| r.register_counter(key, &METADATA))
}

/// Register and return the histogram of a static key (see [`keys`]).
#[cfg(feature = "metrics")]
pub(crate) fn histogram(key: &'static metrics::Key) -> metrics::Histogram {
    metrics::with_recorder(|r| r.register_histogram(key, &METADATA))
}

/// What the `metrics` macros would pass for a call in this module.
#[cfg(feature = "metrics")]
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Register the help texts of the library's metrics with the installed recorder (call it once
/// after installing one; without feature `metrics` it does nothing).
pub fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(names::E2EE_REQUESTS, "Requests encrypted to an attested key, by endpoint and suite");
        describe_counter!(names::ERRORS, "Errors the library returned, by ErrorKind");
        describe_histogram!(
            names::EVENT_DECRYPT_SECONDS,
            Unit::Seconds,
            "Time to decrypt and authenticate one stream event"
        );
        describe_counter!(names::KEYSET_REFRESHES, "Attestation report fetches and verifications, by outcome");
        describe_gauge!(names::KEYSET_NOT_AFTER, Unit::Seconds, "not_after of the keyset last published (Unix time)");
        describe_counter!(names::RECEIPTS, "Receipt checks, by outcome (verified, failed, refused) and keyset match");
    }
}

/// An [`ErrorKind`] as a metric label or log field: `decrypt`, `key_unavailable`,
/// `attestation`, `receipt`, … (the variant's name in snake case, without its detail).
pub(crate) fn kind_name(kind: ErrorKind) -> &'static str {
    KIND_NAMES[kind_index(kind)]
}

/// The snake-case names of the [`ErrorKind`] variants, in [`kind_index`] order.
const KIND_NAMES: [&str; 16] = [
    "decrypt",
    "missing_encryption",
    "malformed",
    "truncated",
    "too_large",
    "unsupported_endpoint",
    "unsupported_body",
    "cleartext",
    "key_unavailable",
    "attestation",
    "receipt",
    "gateway",
    "in_band_error",
    "protocol",
    "transport",
    "config",
];

fn kind_index(kind: ErrorKind) -> usize {
    match kind {
        ErrorKind::Decrypt => 0,
        ErrorKind::MissingEncryption => 1,
        ErrorKind::Malformed => 2,
        ErrorKind::Truncated => 3,
        ErrorKind::TooLarge => 4,
        ErrorKind::UnsupportedEndpoint => 5,
        ErrorKind::UnsupportedBody => 6,
        ErrorKind::Cleartext => 7,
        ErrorKind::KeyUnavailable => 8,
        ErrorKind::Attestation(_) => 9,
        ErrorKind::Receipt(_) => 10,
        ErrorKind::Gateway => 11,
        ErrorKind::InBandError => 12,
        ErrorKind::Protocol => 13,
        ErrorKind::Transport => 14,
        ErrorKind::Config => 15,
    }
}

/// Count an error the library returns.
pub(crate) fn error(e: &Error) {
    #[cfg(feature = "metrics")]
    counter(keys::error(e.kind())).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = e;
}

/// The span of one report fetch and verification.
pub(crate) fn establish_span() -> Span {
    tracing::info_span!("aci.attest.establish", digest = Empty, outcome = Empty)
}

/// The span of the refresher's scheduled re-attestation.
pub(crate) fn refresh_span() -> Span {
    tracing::info_span!("aci.attest.refresh")
}

/// A keyset an establishment verified, as telemetry records it (this module sits below
/// `attest` and takes plain values, not its types).
#[derive(Clone, Copy, Debug)]
pub(crate) struct VerifiedKeyset<'a> {
    /// `workload_keyset_digest`.
    pub(crate) digest: &'a str,
    /// `not_after`, Unix seconds.
    pub(crate) not_after: u64,
}

/// Record how an establishment ended, on its span and in the metrics.
pub(crate) fn keyset_outcome(span: &Span, result: Result<VerifiedKeyset<'_>, &Error>) {
    match result {
        Ok(keyset) => {
            span.record("digest", keyset.digest);
            span.record("outcome", "ok");
            tracing::debug!(parent: span, "report verified");
            #[cfg(feature = "metrics")]
            {
                metrics::counter!(names::KEYSET_REFRESHES, "outcome" => "ok").increment(1);
                metrics::gauge!(names::KEYSET_NOT_AFTER).set(keyset.not_after as f64);
            }
            #[cfg(not(feature = "metrics"))]
            let _ = keyset.not_after;
        }
        Err(e) => {
            span.record("outcome", kind_name(e.kind()));
            tracing::debug!(parent: span, "report refused");
            error(e);
            #[cfg(feature = "metrics")]
            metrics::counter!(names::KEYSET_REFRESHES, "outcome" => "failed").increment(1);
        }
    }
}

/// The span of one E2EE exchange (its suite and key id are recorded once it is encrypted).
pub(crate) fn exchange_span(endpoint: Endpoint) -> Span {
    tracing::info_span!("aci.e2ee.exchange", endpoint = endpoint.path(), suite = Empty, key_id = Empty)
}

/// A request was encrypted: record the suite and key on the current exchange span, count it.
pub(crate) fn exchange_encrypted(endpoint: Endpoint, suite: Suite, key_id: &str) {
    let span = Span::current();
    span.record("suite", suite.algo());
    span.record("key_id", key_id);
    #[cfg(feature = "metrics")]
    counter(keys::e2ee_requests(endpoint, suite)).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = endpoint;
}

/// Run `process` (a stream decryptor's decryption of one event) and, with feature `metrics`,
/// record how long it took when it produced an event.
#[inline]
pub(crate) fn timed_event<F>(process: F) -> Result<StreamOutput, Error>
where
    F: FnOnce() -> Result<StreamOutput, Error>,
{
    #[cfg(feature = "metrics")]
    {
        let start = std::time::Instant::now();
        let out = process();
        if let Ok(StreamOutput::Event(_)) = &out {
            histogram(&keys::EVENT_DECRYPT_SECONDS).record(start.elapsed().as_secs_f64());
        }
        out
    }
    #[cfg(not(feature = "metrics"))]
    process()
}

/// The span of one receipt's fetch and verification.
pub(crate) fn receipt_span(receipt_id: Option<&str>) -> Span {
    tracing::info_span!("aci.receipt", receipt_id = receipt_id, keyset_match = Empty, outcome = Empty)
}

/// Which keyset a verified receipt was checked against, as telemetry labels it (the receipt
/// module's `KeysetMatch`, in this module's own terms: it sits below `receipt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReceiptKeyset {
    /// The keyset the receipt names was attested: `exact`.
    Exact,
    /// The same-key rule decided: `same-key`.
    SameKey,
}

impl ReceiptKeyset {
    /// The `keyset_match` label and span field.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            ReceiptKeyset::Exact => "exact",
            ReceiptKeyset::SameKey => "same-key",
        }
    }
}

/// Record how a receipt check ended, on its span and in the metrics.
pub(crate) fn receipt_checked(span: &Span, result: Result<ReceiptKeyset, &Error>) {
    match result {
        Ok(keyset) => {
            let matched = keyset.label();
            span.record("keyset_match", matched);
            span.record("outcome", "verified");
            tracing::debug!(parent: span, "receipt verified");
            #[cfg(feature = "metrics")]
            metrics::counter!(names::RECEIPTS, "outcome" => "verified", "keyset_match" => matched).increment(1);
        }
        Err(e) => {
            let outcome = receipt_outcome(e);
            span.record("outcome", outcome);
            tracing::debug!(parent: span, "receipt not verified");
            error(e);
            #[cfg(feature = "metrics")]
            metrics::counter!(names::RECEIPTS, "outcome" => outcome).increment(1);
        }
    }
}

/// `refused` for a receipt whose keyset failed the policy, `failed` for every other failure.
fn receipt_outcome(e: &Error) -> &'static str {
    match e.kind() {
        ErrorKind::Receipt(ReceiptFailure::RefusedKeyset(_)) => "refused",
        _ => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::AttestationFailure;

    /// Every kind's label is its variant's name in snake case, without the detail.
    #[test]
    fn kind_names_are_the_variant_names_in_snake_case() {
        use crate::error::AttestationFailure as A;
        let kinds = [
            ErrorKind::Decrypt,
            ErrorKind::MissingEncryption,
            ErrorKind::Malformed,
            ErrorKind::Truncated,
            ErrorKind::TooLarge,
            ErrorKind::UnsupportedEndpoint,
            ErrorKind::UnsupportedBody,
            ErrorKind::Cleartext,
            ErrorKind::KeyUnavailable,
            ErrorKind::Attestation(A::Nonce),
            ErrorKind::Receipt(ReceiptFailure::Mismatch),
            ErrorKind::Gateway,
            ErrorKind::InBandError,
            ErrorKind::Protocol,
            ErrorKind::Transport,
            ErrorKind::Config,
        ];
        assert_eq!(kinds.len(), KIND_NAMES.len());
        for kind in kinds {
            let debug = format!("{kind:?}");
            let name = debug.split('(').next().unwrap();
            let mut snake = String::new();
            for (i, c) in name.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    snake.push('_');
                }
                snake.push(c.to_ascii_lowercase());
            }
            assert_eq!(kind_name(kind), snake);
        }
    }

    #[test]
    fn kinds_are_snake_case_without_detail() {
        assert_eq!(kind_name(ErrorKind::Decrypt), "decrypt");
        assert_eq!(kind_name(ErrorKind::KeyUnavailable), "key_unavailable");
        assert_eq!(kind_name(ErrorKind::Attestation(AttestationFailure::Shape)), "attestation");
        assert_eq!(kind_name(ErrorKind::Receipt(ReceiptFailure::Signature)), "receipt");
    }
}
