//! The proxy's own metrics (the library's are in [`tower_aci::telemetry::names`]): their names
//! and every value their labels take, as plain strings. Operators build dashboards and alerts on
//! them, so they are a contract: `tests/all/metrics_golden.rs` compares what a real proxy serves
//! at `/metrics` with a checked-in list. No label value comes from a type's `Debug`.

/// Counter, labels `endpoint`, `outcome`: exchanges the proxy ended.
pub(crate) const EXCHANGES: &str = "aci_proxy_exchanges_total";
/// Histogram, label `endpoint`: seconds from the request to the answer's last byte.
pub(crate) const REQUEST_SECONDS: &str = "aci_proxy_request_duration_seconds";
/// Histogram, label `endpoint`: seconds from the request to a stream's first event.
pub(crate) const FIRST_EVENT_SECONDS: &str = "aci_proxy_time_to_first_event_seconds";
/// Gauge: streams being relayed now.
pub(crate) const OPEN_STREAMS: &str = "aci_proxy_open_streams";
/// Counter: requests refused because they are outside E2EE v2.
pub(crate) const REFUSED: &str = "aci_proxy_refused_requests_total";
/// Gauge: seconds until the current keyset's `not_after` (negative once expired).
pub(crate) const KEYSET_EXPIRES_IN: &str = "aci_keyset_expires_in_seconds";
/// Gauge: 1 while a keyset is current (the proxy is ready), else 0.
pub(crate) const KEYSET_CURRENT: &str = "aci_keyset_current";

/// The values of the `endpoint` label: the proxy's E2EE routes, and `other` (also the access
/// log's `path`).
pub(crate) const ENDPOINTS: [&str; 4] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "other"];
