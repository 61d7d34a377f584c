//! The faults a [`TestGateway`](crate::TestGateway) can be told to inject.

use std::time::Duration;

/// A fault to inject, set with [`TestGateway::set_fault`](crate::TestGateway::set_fault). A fault stays in force until it is
/// replaced or cleared, except [`StatusOnce`](Fault::StatusOnce), which is used up by one
/// request.
///
/// Stream faults count the upstream's stream pieces as "events" (the built-in upstream and
/// [`UpstreamResponse::sse_events`](crate::UpstreamResponse::sse_events) send one event per piece), 0-based.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The upstream answers this status with this body (`application/json` when the body parses
    /// as JSON, else `text/plain`).
    UpstreamStatus(u16, String),
    /// The upstream sends `after_events` events, then half of the next one, then closes cleanly:
    /// the gateway drops the partial event and appends nothing; the receipt is still stored.
    CutMidEvent {
        /// Complete events sent before the cut.
        after_events: usize,
    },
    /// The upstream sends `events` events, then fails at the transport level: the gateway
    /// appends its `upstream_error` chunk and `[DONE]` (protocol.md §4.3).
    TransportErrorAfter {
        /// Events sent before the failure.
        events: usize,
    },
    /// Wait this long before each upstream event after the first.
    EventDelay(Duration),
    /// The upstream sends `events` events and then neither sends nor closes; the gateway keeps
    /// the response open until the client goes away. No receipt is stored.
    StallAfter {
        /// Events sent before stalling.
        events: usize,
    },
    /// Streams: a non-JSON data event after the first event, which under E2EE ends the stream
    /// early with no receipt. Buffered: the upstream body is not JSON (under E2EE:
    /// `500 internal_error`, no receipt).
    NonJsonEvent,
    /// Flip one hex digit of a ciphertext on the wire, in the `index`-th (0-based) response
    /// part that carries ciphertext: an SSE event, or a buffered body (index 0). The receipt
    /// names the bytes before the flip, as if an attacker changed them in transit.
    TamperEvent {
        /// Which ciphertext-carrying part to tamper with.
        index: usize,
    },
    /// The next E2EE request that passes validation is answered with this status and an error
    /// body *after* its nonce was burned (for retry tests); then the fault clears itself.
    StatusOnce(u16),
    /// The attestation endpoint answers this status with an error body (a replica whose report
    /// cannot be fetched); inference and receipts are served as usual.
    AttestationStatus(u16),
}
