//! Who may use the proxy: every request is checked before any route sees it.
//!
//! - **Host.** A request whose `Host` (or absolute-form authority) is neither a loopback name
//!   (`localhost`, a loopback IP such as `127.0.0.1` or `[::1]`, any port) nor the listen address
//!   is refused with `421`: a web page that rebinds its own DNS name to 127.0.0.1 reaches the
//!   proxy with `Host: its-own-name`, and would otherwise spend the user's API key. When the proxy
//!   listens on an unspecified address (`0.0.0.0`, `[::]`), any IP literal is its address; a DNS
//!   name is still refused, as rebinding needs one.
//! - **Origin.** Browsers put `Origin` on every cross-origin request and every POST; a request
//!   that carries one is refused with `403` unless `--allow-origin` names it exactly. An allowed
//!   origin gets CORS answers (preflight and `Access-Control-Allow-Origin`).
//! - **Client credential.** With `--client-key-env VAR` every request must carry
//!   `Authorization: Bearer <the key in VAR>` (compared in constant time, `401` otherwise).
//!   Listening on a non-loopback address requires it: [`Proxy::start`](super::Proxy::start)
//!   refuses to start without one.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE,
    AUTHORIZATION, HOST, ORIGIN, VARY,
};
use http::{HeaderValue, Method, StatusCode};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::ProxyState;
use super::errors::ProxyError;
use super::status::Counters;
use crate::error::{Error, ErrorKind, Result};

/// Shortest client key accepted (a key guarding a network-reachable proxy must not be guessable).
pub(crate) const MIN_CLIENT_KEY_LEN: usize = 16;

/// The checks every request passes.
#[derive(Debug)]
pub(crate) struct Guard {
    listen: SocketAddr,
    allow_origins: Vec<String>,
    /// SHA-256 of the client key (the key itself is not kept).
    client_key: Option<[u8; 32]>,
}

impl Guard {
    /// The guard for a proxy listening on `listen`: reads the client key from `client_key_env`
    /// (if named), and refuses a non-loopback `listen` without one.
    pub(crate) fn new(listen: SocketAddr, allow_origins: &[String], client_key_env: Option<&str>) -> Result<Guard> {
        for origin in allow_origins {
            if origin.is_empty() || origin == "*" || origin.ends_with('/') || !origin.contains("://") {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "--allow-origin {origin:?}: give one exact origin as browsers send it, scheme://host[:port] \
                         with no path and no trailing slash (wildcards are not accepted)"
                    ),
                ));
            }
        }
        let client_key = match client_key_env {
            Some(var) => {
                let key = Zeroizing::new(std::env::var(var).unwrap_or_default());
                let key = key.trim();
                if key.len() < MIN_CLIENT_KEY_LEN {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "--client-key-env {var}: the environment variable must hold the key clients send as \
                             `Authorization: Bearer <key>`, at least {MIN_CLIENT_KEY_LEN} characters (it is unset, \
                             empty or shorter)"
                        ),
                    ));
                }
                Some(Sha256::digest(key.as_bytes()).into())
            }
            None => None,
        };
        if !listen.ip().is_loopback() && client_key.is_none() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "listening on {listen}, which is not a loopback address, needs a client credential: give \
                     --client-key-env VAR (an environment variable holding a key of at least {MIN_CLIENT_KEY_LEN} \
                     characters that clients send as `Authorization: Bearer <key>`), or listen on 127.0.0.1"
                ),
            ));
        }
        Ok(Guard { listen, allow_origins: allow_origins.to_vec(), client_key })
    }

    /// Whether clients authenticate to the proxy (their `Authorization` is then the client key,
    /// never forwarded to the gateway).
    pub(crate) fn requires_client_key(&self) -> bool {
        self.client_key.is_some()
    }

    /// Whether `host` (a `Host` header value or a URI authority) names this proxy.
    fn host_allowed(&self, host: &str) -> bool {
        let name = strip_port(host);
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let ip = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
        match ip.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == self.listen.ip() || self.listen.ip().is_unspecified(),
            Err(_) => false,
        }
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        self.allow_origins.iter().any(|o| o.as_bytes() == origin.as_bytes())
    }

    /// Whether the request carries `Authorization: Bearer <client key>` (constant time over the
    /// keys' digests).
    fn client_key_ok(&self, req: &Request) -> bool {
        let Some(expected) = &self.client_key else { return true };
        let Some(token) = crate::protocol::headers::bearer_token(req.headers()) else { return false };
        let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let diff = expected.iter().zip(got.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// `host[:port]` → `host` (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn refused(st: &ProxyState, status: StatusCode, kind: &'static str, message: String) -> Response {
    Counters::bump(&st.counters.refused);
    tracing::warn!(kind, "refused: {message}");
    ProxyError::new(status, kind, message).into_response()
}

/// The middleware in front of every route.
pub(crate) async fn guard(State(st): State<Arc<ProxyState>>, req: Request, next: Next) -> Response {
    let guard = &st.guard;
    // Host: the header, and the authority of an absolute-form request line; both must name us.
    let host = req.headers().get(HOST).map(|h| h.to_str().unwrap_or("\u{fffd}"));
    let authority = req.uri().authority().map(|a| a.as_str());
    let hosts = [host, authority];
    if hosts.iter().all(Option::is_none) || hosts.iter().flatten().any(|h| !guard.host_allowed(h)) {
        let seen = host.or(authority).unwrap_or("(none)");
        return refused(
            &st,
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            format!(
                "Host {seen:?} does not name aci-proxy: it answers only to localhost, a loopback address or its \
                 listen address {} (a page that rebinds its DNS name to this machine is refused)",
                guard.listen
            ),
        );
    }
    let origin = req.headers().get(ORIGIN).cloned();
    if let Some(origin) = &origin {
        if !guard.origin_allowed(origin) {
            let seen = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            return refused(
                &st,
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!(
                    "a request from origin {seen:?} is refused: browsers may reach aci-proxy only from origins named \
                     with --allow-origin (exact match)"
                ),
            );
        }
        if req.method() == Method::OPTIONS {
            // A CORS preflight of an allowed origin (it never carries credentials).
            let mut res = StatusCode::NO_CONTENT.into_response();
            let h = res.headers_mut();
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST"));
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type, accept"));
            h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
            h.insert(VARY, HeaderValue::from_static("Origin"));
            return res;
        }
    }
    if !guard.client_key_ok(&req) {
        let what = if req.headers().contains_key(AUTHORIZATION) { "a wrong" } else { "no" };
        return refused(
            &st,
            StatusCode::UNAUTHORIZED,
            "invalid_client_key",
            format!(
                "the request carries {what} client key: this aci-proxy requires `Authorization: Bearer <key>` with \
                 the key held in the environment variable named by its --client-key-env"
            ),
        );
    }
    let mut res = next.run(req).await;
    if let Some(origin) = origin {
        res.headers_mut().insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        res.headers_mut().insert(VARY, HeaderValue::from_static("Origin"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(listen: &str) -> Guard {
        Guard { listen: listen.parse().unwrap(), allow_origins: vec![], client_key: None }
    }

    #[test]
    fn loopback_names_and_the_listen_address_are_hosts_of_the_proxy() {
        let g = guard("127.0.0.1:8787");
        for ok in ["localhost", "LOCALHOST:8787", "127.0.0.1", "127.0.0.1:9", "[::1]", "[::1]:8787", "127.0.0.2"] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8787",
            "localhost.",
            "localhost.attacker.example",
            "10.0.0.1",
            "",
            "[::1",
        ] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        let g = guard("192.168.1.5:8787");
        assert!(g.host_allowed("192.168.1.5:8787"));
        assert!(!g.host_allowed("192.168.1.6:8787"));
        let g = guard("0.0.0.0:8787");
        assert!(g.host_allowed("192.168.1.6:8787"));
        assert!(!g.host_allowed("myhost.lan:8787"));
    }

    #[test]
    fn the_toml_file_names_the_client_key_variable_and_the_allowed_origins() {
        let c = crate::proxy::ProxyConfig::from_toml(
            "listen = \"0.0.0.0:8787\"\nclient_key_env = \"ACI_CLIENT_KEY\"\nallow_origins = [\"http://localhost:3000\"]",
        )
        .unwrap();
        assert_eq!(c.client_key_env.as_deref(), Some("ACI_CLIENT_KEY"));
        assert_eq!(c.allow_origins, ["http://localhost:3000"]);
    }

    #[test]
    fn a_non_loopback_listen_address_needs_a_client_key() {
        let e = Guard::new("0.0.0.0:8787".parse().unwrap(), &[], None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("--client-key-env"), "{e}");
        let e =
            Guard::new("127.0.0.1:8787".parse().unwrap(), &[], Some("TOWER_ACI_TEST_UNSET_CLIENT_KEY")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        for bad in ["*", "https://app.example/", "app.example", ""] {
            let e = Guard::new("127.0.0.1:8787".parse().unwrap(), &[bad.to_owned()], None).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
        }
    }
}
