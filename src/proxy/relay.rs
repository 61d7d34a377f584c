//! What crosses the proxy from the gateway to the client, and what goes to the gateway.
//!
//! - **No redirect.** A `3xx` from the gateway is an error at the [`Client`](crate::Client)'s
//!   transport, under the E2EE layer, the key provider and the receipt client alike
//!   ([`REDIRECT_REFUSED`](crate::client::REDIRECT_REFUSED)): the proxy never follows one, and
//!   never relays one, since an SDK that follows a `307`/`308` re-sends the *plaintext* request
//!   to the `Location`. The client gets a `502` `gateway_redirect_refused` instead.
//! - **Allow-listed headers.** Of the gateway's answer (success, error or passthrough) only
//!   [`RELAYED`] headers and `x-ratelimit-*` reach the client: never `Location`, never
//!   `Set-Cookie`.
//! - **The API key** goes only to the inference routes, `/v1/models` and the receipts
//!   (`/v1/aci/receipts/…`, owned by the key): never to the attestation endpoint or any other
//!   passthrough ([`carries_api_key`](crate::client::carries_api_key), the client's rule).

use http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderName, StatusCode};

use super::errors::ProxyError;
use crate::protocol::headers;

/// Headers of the gateway's answer relayed to the client (plus `x-ratelimit-*`).
pub(crate) const RELAYED: [HeaderName; 10] = [
    CONTENT_TYPE,
    RETRY_AFTER,
    HeaderName::from_static("retry-after-ms"),
    HeaderName::from_static("x-request-id"),
    headers::RECEIPT_ID,
    headers::ACI_VERSION,
    headers::ACI_KEYSET_DIGEST,
    headers::E2EE_VERSION,
    headers::E2EE_APPLIED,
    headers::E2EE_ALGO,
];

/// Whether a header of the gateway's answer may reach the client.
pub(crate) fn relayed(name: &HeaderName) -> bool {
    RELAYED.contains(name) || name.as_str().starts_with("x-ratelimit-")
}

/// Keep only the relayed headers.
pub(crate) fn filter_headers(headers: &mut HeaderMap) {
    let dropped: Vec<HeaderName> = headers.keys().filter(|n| !relayed(n)).cloned().collect();
    for name in dropped {
        headers.remove(&name);
    }
}

/// The answer to a gateway redirect that reached the proxy (the client's transport refuses
/// them first; this is the second line).
pub(crate) fn redirect_refused(status: StatusCode, headers: &HeaderMap) -> ProxyError {
    let location = headers.get(LOCATION).map(|l| {
        let l = String::from_utf8_lossy(l.as_bytes());
        let end = l.char_indices().nth(200).map_or(l.len(), |(i, _)| i);
        l[..end].to_owned()
    });
    ProxyError::new(
        StatusCode::BAD_GATEWAY,
        "gateway_redirect_refused",
        format!(
            "the gateway redirected ({status}, Location {location:?}); aci-proxy never follows or relays a redirect"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::carries_api_key;
    use http::Method;

    #[test]
    fn the_api_key_goes_to_inference_models_and_receipts_only() {
        for (m, p) in [
            (Method::POST, "/v1/chat/completions"),
            (Method::GET, "/v1/models"),
            (Method::GET, "/v1/models/demo-model"),
            (Method::GET, "/v1/aci/receipts/rcpt-0123"),
        ] {
            assert!(carries_api_key(&m, p), "{m} {p}");
        }
        for (m, p) in [
            (Method::GET, "/v1/aci/attestation"),
            (Method::GET, "/v1/attestation/report"),
            (Method::GET, "/v1/aci/sessions"),
            (Method::GET, "/v1/signature/x"),
            (Method::GET, "/v1/models/../aci/attestation"),
            (Method::GET, "/v1/models/%2e%2e/aci/attestation"),
            (Method::GET, "/v1/models//x"),
            (Method::POST, "/v1/responses"),
        ] {
            assert!(!carries_api_key(&m, p), "{m} {p}");
        }
    }

    #[test]
    fn location_and_set_cookie_are_never_relayed() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("location", "https://thief.example/"),
            ("set-cookie", "s=1"),
            ("x-internal", "1"),
            ("content-type", "application/json"),
            ("x-ratelimit-remaining-requests", "9"),
            ("retry-after", "2"),
            ("x-request-id", "req-1"),
        ] {
            h.insert(HeaderName::from_static(n), v.parse().unwrap());
        }
        filter_headers(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "retry-after", "x-ratelimit-remaining-requests", "x-request-id"]);
    }
}
