//! Who may use the proxy: every request is checked before any route sees it — the API, the
//! status page, and the operator's routes (`/healthz`, `/readyz`, `/metrics`) alike.
//!
//! - **Host.** A request whose `Host` (or absolute-form authority) is neither a loopback name
//!   (`localhost`, a loopback IP such as `127.0.0.1` or `[::1]`, any port) nor the listen address
//!   is refused with `421`: a web page that rebinds its own DNS name to 127.0.0.1 reaches the
//!   proxy with `Host: its-own-name`, and would otherwise spend the user's API key or read the
//!   metrics. When the proxy listens on an unspecified address (`0.0.0.0`, `[::]`), any IP
//!   literal is its address; a DNS name is still refused, as rebinding needs one.
//! - **Origin.** Browsers put `Origin` on every cross-origin request and every POST; a request
//!   that carries one is refused with `403` unless `--allow-origin` names it exactly. An allowed
//!   origin gets CORS answers (preflight and `Access-Control-Allow-Origin`).
//! - **Client credential.** With `--client-key-env VAR` every request must carry
//!   `Authorization: Bearer <the key in VAR>` (compared in constant time, `401` otherwise), on
//!   loopback too. Listening on a non-loopback address requires it, and so does
//!   `--require-client-key`: [`Proxy::start`](super::Proxy::start) refuses to start without one.
//!
//! The operator listener (`--ops-listen`) has a guard of its own: the same Host check against
//! its own address, every `Origin` refused, no client key (it serves only the probes and
//! metrics); a non-loopback address needs `--ops-listen-beyond-loopback`.

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

use crate::errors::ProxyError;
use crate::status::Counters;
use tower_aci::error::{Error, Result};

/// Shortest client key accepted (a key guarding a network-reachable proxy must not be guessable).
pub(crate) const MIN_CLIENT_KEY_LEN: usize = 16;

/// The checks every request passes.
#[derive(Debug)]
pub(crate) struct Guard {
    listen: SocketAddr,
    /// The flag that set `listen`, for the messages.
    listen_flag: &'static str,
    allow_origins: Vec<String>,
    /// SHA-256 of the client key (the key itself is not kept).
    client_key: Option<[u8; 32]>,
}

/// `--require-client-key` with no client key configured.
const REQUIRED_KEY_MISSING: &str = "--require-client-key is set, but no client key is configured: the proxy would \
serve every local user and process.
  fix: name the environment variable holding the key: --client-key-env VAR (ACI_PROXY_CLIENT_KEY_ENV, TOML \
client-key-env)
  fix: or drop --require-client-key (ACI_PROXY_REQUIRE_CLIENT_KEY, TOML require-client-key)";

impl Guard {
    /// The guard of the main listener on `listen`: reads the client key from `client_key_env`
    /// (if named), and refuses a non-loopback `listen`, or `require_client_key`, without one.
    pub(crate) fn new(
        listen: SocketAddr,
        allow_origins: &[String],
        client_key_env: Option<&str>,
        require_client_key: bool,
    ) -> Result<Guard> {
        if require_client_key && client_key_env.is_none() {
            return Err(Error::config(REQUIRED_KEY_MISSING));
        }
        for origin in allow_origins {
            if origin.is_empty() || origin == "*" || origin.ends_with('/') || !origin.contains("://") {
                return Err(Error::config(format!(
                    "--allow-origin {origin:?}: give one exact origin as browsers send it, scheme://host[:port] \
                         with no path and no trailing slash (wildcards are not accepted)"
                )));
            }
        }
        let client_key = match client_key_env {
            Some(var) => {
                let value = std::env::var(var).map(Zeroizing::new);
                let key = value.as_ref().map_or("", |k| k.trim());
                if key.len() < MIN_CLIENT_KEY_LEN {
                    let seen = match &value {
                        Err(_) => "unset".to_owned(),
                        Ok(_) if key.is_empty() => "empty".to_owned(),
                        Ok(_) => format!("shorter than {MIN_CLIENT_KEY_LEN} characters"),
                    };
                    return Err(Error::config(format!(
                        "--client-key-env {var}: the environment variable {var} is {seen}; it must hold the \
                             key clients send as `Authorization: Bearer <key>`, at least {MIN_CLIENT_KEY_LEN} \
                             characters (e.g. {var}=$(openssl rand -hex 32))"
                    )));
                }
                Some(Sha256::digest(key.as_bytes()).into())
            }
            None => None,
        };
        if !listen.ip().is_loopback() && client_key.is_none() {
            return Err(Error::config(format!(
                "listening on {listen}, which is not a loopback address, needs a client credential: give \
                     --client-key-env VAR (an environment variable holding a key of at least {MIN_CLIENT_KEY_LEN} \
                     characters that clients send as `Authorization: Bearer <key>`), or listen on 127.0.0.1"
            )));
        }
        Ok(Guard { listen, listen_flag: "--listen", allow_origins: allow_origins.to_vec(), client_key })
    }

    /// The guard of the operator listener on `ops_listen` (loopback when none is set): its own
    /// address in `Host`, no `Origin`, no client key. A non-loopback address is refused unless
    /// `beyond_loopback` acknowledges it; the main listen address is refused (it would not bind).
    pub(crate) fn ops(ops_listen: Option<SocketAddr>, beyond_loopback: bool, listen: SocketAddr) -> Result<Guard> {
        let ops = ops_listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        if ops_listen.is_some() && ops == listen && ops.port() != 0 {
            return Err(Error::config(format!(
                "--ops-listen {ops} is also --listen: give the operator routes an address of their own"
            )));
        }
        if !ops.ip().is_loopback() && !beyond_loopback {
            return Err(Error::config(format!(
                "--ops-listen {ops} is not a loopback address: /healthz, /readyz and /metrics (keyset, counts, \
                     latencies) would answer anyone who reaches it, with no client key.
  fix: keep it on this machine: --ops-listen 127.0.0.1:{port}
  fix: or, behind a firewall or in a pod network, acknowledge it: --ops-listen-beyond-loopback \
                     (ACI_PROXY_OPS_LISTEN_BEYOND_LOOPBACK, TOML ops-listen-beyond-loopback)",
                port = ops.port()
            )));
        }
        Ok(Guard { listen: ops, listen_flag: "--ops-listen", allow_origins: Vec::new(), client_key: None })
    }

    /// Whether clients authenticate to the proxy (their `Authorization` is then the client key,
    /// never forwarded to the gateway).
    pub(crate) fn requires_client_key(&self) -> bool {
        self.client_key.is_some()
    }

    /// Whether this is the operator listener's guard.
    fn is_ops(&self) -> bool {
        self.listen_flag == "--ops-listen"
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
        let Some(token) = bearer_token(req.headers()) else { return false };
        let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let diff = expected.iter().zip(got.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// The bearer token of an `Authorization` header (`Bearer ` or `bearer ` prefix, as the
/// gateway accepts them; trimmed; `None` when absent or empty).
fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
    (!token.is_empty()).then_some(token)
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

fn refused(counters: &Counters, status: StatusCode, kind: &'static str, message: String) -> Response {
    Counters::bump(&counters.refused);
    tracing::warn!(kind, "refused: {message}");
    ProxyError::new(status, kind, message).into_response()
}

/// What the guard's middleware holds: the guard of one listener, and the counters its refusals
/// bump.
#[derive(Clone)]
pub(crate) struct Guarded {
    pub(crate) guard: Arc<Guard>,
    pub(crate) counters: Arc<Counters>,
}

/// The middleware in front of every route of a listener (the main one, or the operator's with
/// its own guard).
pub(crate) async fn guard(State(g): State<Guarded>, req: Request, next: Next) -> Response {
    check(&g.counters, &g.guard, req, next).await
}

async fn check(st: &Counters, guard: &Guard, req: Request, next: Next) -> Response {
    // Host: the header, and the authority of an absolute-form request line; both must name us.
    let host = req.headers().get(HOST).map(|h| h.to_str().unwrap_or("\u{fffd}"));
    let authority = req.uri().authority().map(|a| a.as_str());
    let hosts = [host, authority];
    if hosts.iter().all(Option::is_none) || hosts.iter().flatten().any(|h| !guard.host_allowed(h)) {
        let seen = host.or(authority).unwrap_or("(none)");
        return refused(
            st,
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            format!(
                "Host {seen:?} does not name aci-proxy: it answers only to localhost, a loopback address or its \
                 {} address {} (a page that rebinds its DNS name to this machine is refused)",
                guard.listen_flag, guard.listen
            ),
        );
    }
    let origin = req.headers().get(ORIGIN).cloned();
    if let Some(origin) = &origin {
        if !guard.origin_allowed(origin) {
            let seen = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            return refused(
                st,
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                if guard.is_ops() {
                    format!("a request from origin {seen:?} is refused: the --ops-listen address serves no browser")
                } else {
                    format!(
                        "a request from origin {seen:?} is refused: browsers may reach aci-proxy only from origins \
                         named with --allow-origin (exact match)"
                    )
                },
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
        let probe = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics");
        let hint = if probe { " (a supervisor or Prometheus without the key: serve them on --ops-listen)" } else { "" };
        return refused(
            st,
            StatusCode::UNAUTHORIZED,
            "invalid_client_key",
            format!(
                "the request carries {what} client key: this aci-proxy requires `Authorization: Bearer <key>` with \
                 the key held in the environment variable named by its --client-key-env{hint}"
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
    use tower_aci::ErrorKind;

    fn guard(listen: &str) -> Guard {
        Guard { listen: listen.parse().unwrap(), listen_flag: "--listen", allow_origins: vec![], client_key: None }
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
        let c = crate::ProxyConfig::from_toml(
            "listen = \"0.0.0.0:8787\"\nclient-key-env = \"ACI_CLIENT_KEY\"\nallow-origin = [\"http://localhost:3000\"]",
        )
        .unwrap();
        assert_eq!(c.client_key_env.as_deref(), Some("ACI_CLIENT_KEY"));
        assert_eq!(c.allow_origins, ["http://localhost:3000"]);
        assert!(!c.require_client_key && c.ops_listen.is_none() && !c.ops_listen_beyond_loopback);
        let c = crate::ProxyConfig::from_toml(
            "require-client-key = true\nops-listen = \"0.0.0.0:9090\"\nops-listen-beyond-loopback = true",
        )
        .unwrap();
        assert!(c.require_client_key && c.ops_listen_beyond_loopback);
        assert_eq!(c.ops_listen, Some("0.0.0.0:9090".parse().unwrap()));
    }

    #[test]
    fn a_non_loopback_listen_address_needs_a_client_key() {
        let e = Guard::new("0.0.0.0:8787".parse().unwrap(), &[], None, false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("--client-key-env"), "{e}");
        let e = Guard::new("127.0.0.1:8787".parse().unwrap(), &[], Some("TOWER_ACI_TEST_UNSET_CLIENT_KEY"), false)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("TOWER_ACI_TEST_UNSET_CLIENT_KEY is unset"), "{e}");
        for bad in ["*", "https://app.example/", "app.example", ""] {
            let e = Guard::new("127.0.0.1:8787".parse().unwrap(), &[bad.to_owned()], None, false).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
        }
    }

    #[test]
    fn require_client_key_refuses_a_start_without_one_on_loopback_too() {
        let loopback = "127.0.0.1:8787".parse().unwrap();
        let e = Guard::new(loopback, &[], None, true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        let text = e.to_string();
        assert!(text.starts_with("--require-client-key is set, but no client key is configured"), "{text}");
        assert!(text.contains("--client-key-env VAR"), "{text}");
        assert!(text.lines().skip(1).all(|l| l.trim_start().starts_with("fix: ")), "{text}");
        // A client key on loopback is kept and enforced (cargo sets CARGO_PKG_DESCRIPTION, > 16 chars).
        let g = Guard::new(loopback, &[], Some("CARGO_PKG_DESCRIPTION"), true).unwrap();
        assert!(g.requires_client_key());
        assert!(Guard::new(loopback, &[], Some("CARGO_PKG_DESCRIPTION"), false).unwrap().requires_client_key());
        // Too short.
        let e = Guard::new(loopback, &[], Some("CARGO_PKG_NAME"), true).unwrap_err();
        assert!(e.to_string().contains("CARGO_PKG_NAME is shorter than 16 characters"), "{e}");
    }

    #[test]
    fn the_operator_listener_stays_on_loopback_unless_acknowledged() {
        let listen: SocketAddr = "127.0.0.1:8787".parse().unwrap();
        for beyond in ["0.0.0.0:9090", "192.168.1.5:9090", "[::]:9090"] {
            let e = Guard::ops(Some(beyond.parse().unwrap()), false, listen).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{beyond}");
            assert!(e.to_string().contains("--ops-listen-beyond-loopback"), "{e}");
            let g = Guard::ops(Some(beyond.parse().unwrap()), true, listen).unwrap();
            assert!(!g.requires_client_key());
            assert!(!g.host_allowed("evil.example:9090"), "{beyond}");
        }
        let g = Guard::ops(Some("127.0.0.1:9090".parse().unwrap()), false, listen).unwrap();
        assert!(
            g.host_allowed("localhost:9090") && g.host_allowed("127.0.0.1:9090") && !g.host_allowed("evil.example")
        );
        assert!(!g.requires_client_key() && g.allow_origins.is_empty());
        // Unset: the ops router alone answers to loopback names.
        let g = Guard::ops(None, false, listen).unwrap();
        assert!(g.host_allowed("127.0.0.1:1") && !g.host_allowed("10.0.0.1"));
        // The main listen address cannot be the operator's too.
        let e = Guard::ops(Some(listen), false, listen).unwrap_err();
        assert!(e.to_string().contains("is also --listen"), "{e}");
    }
}
