//! What crosses the proxy from the gateway to the client, and what goes to the gateway.
//!
//! - **No redirect.** A `3xx` from the gateway is an error at the [`Client`](tower_aci::Client)'s
//!   transport, under the E2EE layer, the key provider and the receipt client alike
//!   ([`REDIRECT_REFUSED`](tower_aci::client::REDIRECT_REFUSED)): the proxy never follows one, and
//!   never relays one, since an SDK that follows a `307`/`308` re-sends the *plaintext* request
//!   to the `Location`. The client gets a `502` `gateway_redirect_refused` instead.
//! - **Allow-listed headers.** Of the gateway's answer (success, error or passthrough) only
//!   [`RELAYED`] headers and `x-ratelimit-*` reach the client: never `Location`, never
//!   `Set-Cookie`.
//! - **The API key** goes only to the inference routes, `/v1/models` and the receipts
//!   (`/v1/aci/receipts/…`, owned by the key): never to the attestation endpoint or any other
//!   passthrough ([`carries_api_key`](tower_aci::client::carries_api_key), the client's rule).

use http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderName, StatusCode};

use super::errors::ProxyError;
use tower_aci::protocol::headers;

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

/// Where the `Authorization` the gateway gets comes from, decided once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthSource {
    /// The API key of `--api-key-env`; a client's own `Authorization` is dropped.
    ApiKey,
    /// `--api-key-env`'s variable is unset and clients do not authenticate to the proxy: a
    /// client's own `Authorization` is forwarded.
    Client,
    /// `--api-key-env`'s variable is unset and clients authenticate with the client key, which
    /// is never forwarded: the gateway gets no `Authorization`.
    None,
}

impl AuthSource {
    /// The source, from whether the API key is set and whether clients send a client key.
    pub(crate) fn new(api_key: bool, client_key: bool) -> AuthSource {
        match (api_key, client_key) {
            (true, _) => AuthSource::ApiKey,
            (false, false) => AuthSource::Client,
            (false, true) => AuthSource::None,
        }
    }

    /// The name `GET /aci/status` gives it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            AuthSource::ApiKey => "api-key",
            AuthSource::Client => "client",
            AuthSource::None => "none",
        }
    }

    /// What the proxy does with `Authorization`, as the one line it says at start, for the
    /// gateway at `base`.
    pub(crate) fn describe(self, api_key_env: &str, base: &http::Uri) -> String {
        let loopback = base
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .is_some_and(|h| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()));
        let channel = match (base.scheme_str(), loopback) {
            (Some("https"), _) => "over the attested TLS channel",
            (_, true) => "over plain HTTP to the loopback gateway",
            _ => "over PLAIN HTTP to a gateway off loopback (readable on the network)",
        };
        let routes = "inference, /v1/models and receipts only, never the attestation endpoint";
        match self {
            AuthSource::ApiKey => format!(
                "the gateway gets the API key of {api_key_env} ({routes}), {channel}; a client's own Authorization \
                 header is dropped"
            ),
            AuthSource::Client => format!(
                "{api_key_env} is unset: a client's own `Authorization` header (its bearer token) is forwarded to the \
                 gateway ({routes}), {channel}; a request without one reaches the gateway with no API key"
            ),
            AuthSource::None => format!(
                "{api_key_env} is unset and clients authenticate with the client key, which is never forwarded: \
                 requests reach the gateway with no API key until {api_key_env} is set"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use tower_aci::client::carries_api_key;

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
    fn the_authorization_line_names_the_source_and_the_channel() {
        let https: http::Uri = "https://api.redpill.ai".parse().unwrap();
        let line = AuthSource::new(false, false).describe("ACI_API_KEY", &https);
        assert!(line.starts_with("ACI_API_KEY is unset: a client's own `Authorization` header"), "{line}");
        assert!(line.contains("over the attested TLS channel"), "{line}");
        let line = AuthSource::new(true, true).describe("MY_KEY", &"http://[::1]:8080".parse().unwrap());
        assert!(line.starts_with("the gateway gets the API key of MY_KEY") && line.contains("loopback"), "{line}");
        let line = AuthSource::new(false, false).describe("K", &"http://10.0.0.7".parse().unwrap());
        assert!(line.contains("PLAIN HTTP to a gateway off loopback"), "{line}");
        assert_eq!(AuthSource::new(false, true), AuthSource::None);
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
