//! Egress through an HTTP proxy (feature `rustls`): which connections go through a `CONNECT`
//! tunnel, and the tunnel's handshake.
//!
//! The attested connector ([`AttestedConnector`](crate::tls::AttestedConnector)) asks
//! [`Egress::route`] for each connection. When a proxy applies, it connects to the proxy, sends
//! `CONNECT host:port` (with `Proxy-Authorization: Basic …` when the proxy URL carries
//! credentials), and on a `2xx` answer runs the TLS handshake with the gateway (or the PCCS)
//! *inside* the tunnel: TLS is end to end, the SPKI pin and the per-request gate are the same as
//! without a proxy, and the proxy sees only the `CONNECT` line. A proxy that terminates TLS
//! itself presents a key the attested keyset does not list and is refused by the pin.
//!
//! Where the proxy comes from (read once, when the connector is built):
//!
//! - by default, the environment, as curl and reqwest read it: `HTTPS_PROXY`, else
//!   `https_proxy` (`HTTP_PROXY` is for plain `http://` and is never used); `NO_PROXY`, else
//!   `no_proxy`, lists hosts reached directly with hyper-util's rules (curl's: `example.com`
//!   also covers its subdomains, `.example.com` likewise, IP addresses and CIDR blocks, `*` for
//!   every host). Loopback destinations (`localhost`, `127.0.0.0/8`, `::1`) are never proxied
//!   from the environment, as Go's `ProxyFromEnvironment` does: a proxy cannot reach this host's
//!   loopback;
//! - [`AttestedTlsBuilder::https_proxy`](crate::tls::AttestedTlsBuilder::https_proxy): this
//!   proxy for every host, the environment not read;
//! - [`AttestedTlsBuilder::no_proxy`](crate::tls::AttestedTlsBuilder::no_proxy): direct
//!   connections, the environment not read.
//!
//! Only `http://` proxy URLs are spoken (TLS to the proxy itself is not); a URL without a scheme
//! is `http://`, and without a port, port 80 (as reqwest reads it). Credentials are
//! percent-decoded, held zeroized, and never printed (`Debug` and `Display` show
//! `http://host:port`).

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Poll, ready};

use base64::Engine as _;
use http::Uri;
use hyper_util::client::proxy::matcher::Matcher;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};

/// The longest answer head a proxy may send to `CONNECT`.
const MAX_ANSWER_HEAD: usize = 8 * 1024;

/// An HTTP proxy that opens `CONNECT` tunnels, parsed from `http://[user:password@]host[:port]`.
///
/// Credentials (percent-encoded in the URL, as curl reads them) become the tunnel's
/// `Proxy-Authorization: Basic …`; they are held zeroized and never shown: `Display` and `Debug`
/// print `http://host:port`.
///
/// ```
/// use tower_aci::tls::HttpsProxy;
/// let proxy: HttpsProxy = "http://alice:s3cr%40t@proxy.corp.example:3128".parse()?;
/// assert_eq!(proxy.to_string(), "http://proxy.corp.example:3128");
/// assert!(proxy.has_credentials() && !format!("{proxy:?}").contains("s3cr"));
/// assert_eq!("proxy.corp.example".parse::<HttpsProxy>()?.authority(), "proxy.corp.example:80");
/// assert!("https://proxy:3128".parse::<HttpsProxy>().is_err()); // TLS to the proxy is not spoken
/// # Ok::<(), tower_aci::Error>(())
/// ```
#[derive(Clone)]
pub struct HttpsProxy {
    /// `http://host:port/`: where the TCP connector connects.
    uri: Uri,
    /// `host:port` (IPv6 in brackets).
    authority: String,
    /// `Basic <base64(user:password)>`.
    authorization: Option<Zeroizing<Vec<u8>>>,
    /// The environment variable the URL was read from, if any.
    from: Option<&'static str>,
}

impl HttpsProxy {
    /// Parse `http://[user:password@]host[:port]` (the scheme may be left out; the port defaults
    /// to 80; a path is ignored). Fails with [`Config`](ErrorKind::Config), without repeating
    /// the URL (it may hold a password), for another scheme, no host, an invalid port or an
    /// invalid `%` escape in the credentials.
    pub fn parse(url: &str) -> Result<HttpsProxy> {
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(config(
                    "an https:// proxy URL: TLS to the proxy itself is not supported; give the proxy as http://host:port \
                     (the connection to the gateway is TLS end to end inside the tunnel either way)",
                ));
            }
            Some((scheme, _)) if scheme.len() <= 10 && scheme.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                return Err(config(format!(
                    "a {scheme}:// proxy URL: only HTTP proxies that open CONNECT tunnels are supported (http://host:port)"
                )));
            }
            Some(_) => return Err(config("the proxy URL is not http://[user:password@]host[:port]")),
            None => url,
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let bad = || {
            config(
                "the proxy URL is not http://[user:password@]host[:port] (percent-encode '@', ':', '/' and '#' in the \
                 user name and password)",
            )
        };
        let parsed: http::uri::Authority = host_port.parse().map_err(|_| bad())?;
        let host = parsed.host();
        // `Authority` takes `host:anything`; the port must be digits.
        let port: u16 = match host_port.get(host.len()..) {
            _ if host.is_empty() => return Err(bad()),
            Some("") => 80,
            Some(p) => match p.strip_prefix(':') {
                Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                    digits.parse().map_err(|_| bad())?
                }
                _ => return Err(bad()),
            },
            None => return Err(bad()),
        };
        let authority = format!("{host}:{port}");
        let uri = format!("http://{authority}/").parse().map_err(|_| bad())?;
        let authorization = userinfo.map(basic).transpose()?;
        Ok(HttpsProxy { uri, authority, authorization, from: None })
    }

    /// `host:port` of the proxy (an IPv6 address in brackets).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Whether the URL carried credentials (sent as `Proxy-Authorization: Basic …`).
    pub fn has_credentials(&self) -> bool {
        self.authorization.is_some()
    }

    /// The proxy as the TCP connector reaches it: `http://host:port/`.
    pub(crate) fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The `Proxy-Authorization` value, if the URL carried credentials.
    #[cfg_attr(not(feature = "reqwest-middleware"), allow(dead_code))]
    pub(crate) fn authorization(&self) -> Option<&[u8]> {
        self.authorization.as_deref().map(Vec::as_slice)
    }

    /// The proxy, and where it was read from, for messages.
    fn named(&self) -> String {
        match self.from {
            Some(var) => format!("the HTTPS proxy {self} (from {var})"),
            None => format!("the HTTPS proxy {self}"),
        }
    }
}

impl FromStr for HttpsProxy {
    type Err = Error;

    fn from_str(s: &str) -> Result<HttpsProxy> {
        HttpsProxy::parse(s)
    }
}

impl fmt::Display for HttpsProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

impl fmt::Debug for HttpsProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HttpsProxy");
        d.field("url", &format_args!("http://{}", self.authority));
        if self.authorization.is_some() {
            d.field("credentials", &"[redacted]");
        }
        if let Some(var) = self.from {
            d.field("from", &var);
        }
        d.finish()
    }
}

fn config(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::Config, message)
}

/// `%XX`-decode `part` into zeroized memory allocated once (no reallocation leaves a copy).
fn decode(part: &str) -> Result<Zeroizing<Vec<u8>>> {
    let mut rest = part.as_bytes();
    while let Some(i) = memchr::memchr(b'%', rest) {
        match rest.get(i + 1..i + 3) {
            Some(escape) if escape.iter().all(u8::is_ascii_hexdigit) => rest = &rest[i + 3..],
            _ => return Err(config("the proxy URL's credentials hold a '%' that starts no %XX escape")),
        }
    }
    let mut out = Zeroizing::new(Vec::with_capacity(part.len()));
    out.extend(percent_encoding::percent_decode(part.as_bytes()));
    Ok(out)
}

/// `Basic <base64(user:password)>` (RFC 7617) from a URL's `user[:password]`, in zeroized
/// buffers sized up front.
fn basic(userinfo: &str) -> Result<Zeroizing<Vec<u8>>> {
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (user, password) = (decode(user)?, decode(password)?);
    let mut pair = Zeroizing::new(Vec::with_capacity(user.len() + 1 + password.len()));
    pair.extend_from_slice(&user);
    pair.push(b':');
    pair.extend_from_slice(&password);
    let encoded = base64::encoded_len(pair.len(), true).ok_or_else(|| config("the proxy credentials are too long"))?;
    let mut value = Zeroizing::new(vec![0u8; 6 + encoded]);
    value[..6].copy_from_slice(b"Basic ");
    base64::engine::general_purpose::STANDARD
        .encode_slice(&pair[..], &mut value[6..])
        .map_err(|_| config("the proxy credentials cannot be encoded"))?;
    Ok(value)
}

/// Which connections go through a proxy. The proxy (and its credentials) is held once, shared
/// by the connections.
pub(crate) enum Egress {
    /// Every connection is direct.
    Direct,
    /// One proxy for every host (given explicitly; the environment is not read).
    Always(Arc<HttpsProxy>),
    /// `HTTPS_PROXY` from the environment, except loopback and the `NO_PROXY` hosts.
    Environment {
        proxy: Arc<HttpsProxy>,
        /// Intercepts the hosts `NO_PROXY` does not list (hyper-util's rules).
        matcher: Box<Matcher>,
    },
}

impl fmt::Debug for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Egress::Direct => f.write_str("Direct"),
            Egress::Always(p) => f.debug_tuple("Always").field(p).finish(),
            Egress::Environment { proxy, .. } => f.debug_tuple("Environment").field(proxy).finish(),
        }
    }
}

impl Egress {
    /// What the process environment says.
    pub(crate) fn from_env() -> Result<Egress> {
        Egress::from_lookup(|name| std::env::var(name).ok())
    }

    /// What an environment says, read through `var` (tests inject one).
    fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Egress> {
        let first = |names: [&'static str; 2]| {
            names.into_iter().find_map(|name| {
                let value = Zeroizing::new(var(name)?);
                (!value.trim().is_empty()).then_some((name, value))
            })
        };
        let Some((from, url)) = first(["HTTPS_PROXY", "https_proxy"]) else { return Ok(Egress::Direct) };
        let mut proxy = HttpsProxy::parse(&url).map_err(|e| {
            config(format!("{from} is not a usable proxy URL: {e}; fix it, unset it, or build with no_proxy()"))
        })?;
        proxy.from = Some(from);
        let no_proxy = first(["NO_PROXY", "no_proxy"]).map(|(_, v)| v.to_string()).unwrap_or_default();
        let matcher = Box::new(Matcher::builder().https(proxy.uri.to_string()).no(no_proxy).build());
        Ok(Egress::Environment { proxy: Arc::new(proxy), matcher })
    }

    /// The proxy configured, whether or not it applies to a given host.
    pub(crate) fn proxy(&self) -> Option<&HttpsProxy> {
        match self {
            Egress::Direct => None,
            Egress::Always(p) | Egress::Environment { proxy: p, .. } => Some(p),
        }
    }

    /// The proxy the connection to `dst` (an `https://` URI) goes through, if any.
    pub(crate) fn route(&self, dst: &Uri) -> Option<&Arc<HttpsProxy>> {
        match self {
            Egress::Direct => None,
            Egress::Always(p) => Some(p),
            Egress::Environment { proxy, matcher } => {
                let host = dst.host()?;
                (!is_loopback(host) && matcher.intercept(dst).is_some()).then_some(proxy)
            }
        }
    }
}

/// `localhost` or a loopback IP address (IPv6 with or without brackets).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Open a `CONNECT` tunnel to `host:port` over `io`, a connection to `proxy`: the request (with
/// the proxy's credentials), then the proxy's answer head. A `2xx` answer hands `io` back for
/// the TLS handshake; anything else is a [`Transport`](ErrorKind::Transport) error naming the
/// status. A proxy that sends bytes after its answer head (before our TLS `ClientHello`, which
/// speaks first) is refused.
pub(crate) async fn tunnel<T>(mut io: T, proxy: &HttpsProxy, host: &str, port: u16) -> Result<T>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    let target = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let failed = |what: &str| Error::new(ErrorKind::Transport, format!("{} {what} (CONNECT {target})", proxy.named()));

    let line = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    const AUTH: &[u8] = b"Proxy-Authorization: ";
    let auth = proxy.authorization.as_deref().map_or(0, |a| AUTH.len() + a.len() + 2);
    // Sized once: the credentials are never copied by a reallocation.
    let mut request = Zeroizing::new(Vec::with_capacity(line.len() + auth + 2));
    request.extend_from_slice(line.as_bytes());
    if let Some(a) = &proxy.authorization {
        request.extend_from_slice(AUTH);
        request.extend_from_slice(a);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    write_all(&mut io, &request).await.map_err(|e| failed("closed the connection").with_source(e))?;
    drop(request);

    let mut head = vec![0u8; MAX_ANSWER_HEAD];
    let mut filled = 0;
    loop {
        let n = read(&mut io, &mut head[filled..]).await.map_err(|e| failed("failed").with_source(e))?;
        if n == 0 {
            return Err(failed("closed the connection before it answered"));
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut answer = httparse::Response::new(&mut headers);
        match answer.parse(&head[..filled]) {
            Ok(httparse::Status::Complete(end)) => {
                let status = answer.code.unwrap_or(0);
                if !(200..300).contains(&status) {
                    return Err(refused(proxy, &target, status, answer.reason.unwrap_or("")));
                }
                if end < filled {
                    return Err(failed(
                        "sent data after its answer, before the TLS handshake began: it does not speak CONNECT as \
                         expected",
                    ));
                }
                tracing::debug!(proxy = %proxy, %target, "CONNECT tunnel open");
                return Ok(io);
            }
            Ok(httparse::Status::Partial) if filled == head.len() => {
                return Err(failed("answered with a head longer than 8 KiB"));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(failed(&format!("answered with something that is not HTTP ({e})"))),
        }
    }
}

/// The proxy answered `CONNECT` with a non-`2xx` status.
fn refused(proxy: &HttpsProxy, target: &str, status: u16, reason: &str) -> Error {
    // The reason phrase comes from the network: printable ASCII, bounded.
    let reason: String = reason.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(64).collect();
    let hint = match status {
        407 if proxy.has_credentials() => " The proxy did not accept the credentials in its URL: check them.",
        407 => " The proxy wants credentials: give them in its URL, http://user:password@host:port.",
        403 => {
            " The proxy's policy does not let this destination through: ask its operator to allow CONNECT to it, \
               or list the host in NO_PROXY if it is reachable directly."
        }
        _ => "",
    };
    Error::new(
        ErrorKind::Transport,
        format!(
            "{} refused to open a tunnel to {target}: it answered CONNECT with {status} {}.{hint}",
            proxy.named(),
            reason.trim()
        ),
    )
}

async fn write_all<T: hyper::rt::Write + Unpin>(io: &mut T, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, buf)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await
}

async fn read<T: hyper::rt::Read + Unpin>(io: &mut T, buf: &mut [u8]) -> io::Result<usize> {
    poll_fn(|cx| {
        let mut read = hyper::rt::ReadBuf::new(buf);
        ready!(Pin::new(&mut *io).poll_read(cx, read.unfilled()))?;
        Poll::Ready(Ok(read.filled().len()))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Egress> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Egress::from_lookup(|name| vars.get(name).cloned())
    }

    fn routed(egress: &Egress, url: &str) -> Option<String> {
        egress.route(&url.parse().unwrap()).map(|p| p.authority().to_owned())
    }

    #[test]
    fn a_proxy_url_is_read_as_curl_and_reqwest_read_it() {
        let p = HttpsProxy::parse("http://proxy.corp:3128").unwrap();
        assert_eq!((p.authority(), p.uri().to_string().as_str()), ("proxy.corp:3128", "http://proxy.corp:3128/"));
        assert!(!p.has_credentials());
        // No scheme: http; no port: 80; a path is ignored; IPv6 in brackets.
        assert_eq!(HttpsProxy::parse("proxy.corp").unwrap().authority(), "proxy.corp:80");
        assert_eq!(HttpsProxy::parse("HTTP://10.0.0.1:8080/ignored").unwrap().authority(), "10.0.0.1:8080");
        assert_eq!(HttpsProxy::parse("http://[::1]:3128").unwrap().authority(), "[::1]:3128");
        for bad in [
            "https://proxy:3128",
            "socks5://proxy:1080",
            "http://",
            "http://:3128",
            "http://proxy:",
            "http://proxy:x80",
            "http://proxy:+80",
            "http://proxy:65536",
            "",
        ] {
            assert_eq!(HttpsProxy::parse(bad).unwrap_err().kind(), ErrorKind::Config, "{bad:?}");
        }
        assert!(HttpsProxy::parse("https://p:1").unwrap_err().to_string().contains("TLS to the proxy"));
    }

    #[test]
    fn credentials_become_basic_authorization_and_are_never_shown() {
        // RFC 7617 §2's example, percent-encoded in the URL as curl reads it.
        let p = HttpsProxy::parse("http://Aladdin:open%20sesame@proxy:3128").unwrap();
        assert_eq!(p.authorization().unwrap(), b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(p.authority(), "proxy:3128");
        for shown in [p.to_string(), format!("{p:?}"), format!("{p:#?}")] {
            assert!(!shown.contains("Aladdin") && !shown.contains("sesame"), "{shown}");
        }
        assert!(format!("{p:?}").contains("[redacted]"));
        // A password holding '@' and ':' (the last '@' ends the credentials); a user alone.
        let p = HttpsProxy::parse("http://u:p%40ss:w@proxy:1").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD.decode(&p.authorization().unwrap()[6..]).unwrap();
        assert_eq!(decoded, b"u:p@ss:w");
        let p = HttpsProxy::parse("http://user@proxy:1").unwrap();
        assert_eq!(p.authorization().unwrap(), b"Basic dXNlcjo=");
        // A broken escape is refused without repeating the URL.
        let e = HttpsProxy::parse("http://u:top%zzsecret@proxy:1").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = HttpsProxy::parse("http://u:top/secret@proxy:1").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn https_proxy_is_read_from_the_environment_and_http_proxy_is_not() {
        assert!(matches!(env(&[]).unwrap(), Egress::Direct));
        assert!(matches!(env(&[("HTTP_PROXY", "http://p:1"), ("http_proxy", "http://p:1")]).unwrap(), Egress::Direct));
        let e = env(&[("https_proxy", "http://lower:1")]).unwrap();
        assert_eq!(routed(&e, "https://gw.example"), Some("lower:1".into()));
        let e = env(&[("HTTPS_PROXY", "http://upper:1"), ("https_proxy", "http://lower:1")]).unwrap();
        assert_eq!(routed(&e, "https://gw.example"), Some("upper:1".into()));
        assert!(format!("{:?}", e.proxy().unwrap()).contains("HTTPS_PROXY"));
        // Set but empty: as unset.
        let e = env(&[("HTTPS_PROXY", " "), ("https_proxy", "http://lower:1")]).unwrap();
        assert_eq!(routed(&e, "https://gw.example"), Some("lower:1".into()));
        // A value that is no proxy URL fails, naming the variable and not the value.
        let e = env(&[("HTTPS_PROXY", "socks5://u:hunter2@p:1")]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("HTTPS_PROXY") && !e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn no_proxy_lists_hosts_reached_directly_and_loopback_is_never_proxied() {
        let e = env(&[
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NO_PROXY", "internal.example, .corp.example,10.0.0.0/8, 192.168.1.7"),
            ("no_proxy", "gw.example"), // NO_PROXY wins
        ])
        .unwrap();
        let via = Some("proxy:3128".to_owned());
        for direct in [
            "https://internal.example",
            "https://pccs.internal.example:8081",
            "https://a.corp.example",
            "https://corp.example",
            "https://10.1.2.3",
            "https://192.168.1.7:443",
            "https://localhost:8443",
            "https://LOCALHOST.",
            "https://127.0.0.1:9000",
            "https://127.9.9.9",
            "https://[::1]:443",
        ] {
            assert_eq!(routed(&e, direct), None, "{direct}");
        }
        for proxied in [
            "https://gw.example",
            "https://notinternal.example",
            "https://internal.example.evil",
            "https://192.168.1.8",
            "https://11.0.0.1",
            "https://[2001:db8::1]:443",
        ] {
            assert_eq!(routed(&e, proxied), via, "{proxied}");
        }
        let e = env(&[("https_proxy", "http://proxy:3128"), ("no_proxy", "*")]).unwrap();
        assert_eq!(routed(&e, "https://gw.example"), None);
        // An explicit proxy applies to every host, loopback included.
        let always = Egress::Always(Arc::new(HttpsProxy::parse("http://proxy:3128").unwrap()));
        assert_eq!(routed(&always, "https://127.0.0.1:8443"), via);
    }

    /// Run `tunnel` against a scripted proxy: what the client wrote, and the outcome.
    async fn handshake(proxy: &str, host: &str, answer: &'static [u8]) -> (String, Result<()>) {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let proxy = HttpsProxy::parse(proxy).unwrap();
        let script = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.ends_with(b"\r\n\r\n") {
                let n = server.read(&mut buf).await.unwrap();
                assert!(n > 0);
                seen.extend_from_slice(&buf[..n]);
            }
            for chunk in answer.chunks(7) {
                // The client may stop reading once it has seen enough.
                if server.write_all(chunk).await.is_err() {
                    break;
                }
            }
            if answer.is_empty() {
                drop(server);
            } else {
                std::mem::forget(server); // keep the tunnel open
            }
            String::from_utf8(seen).unwrap()
        });
        let outcome = tunnel(TokioIo::new(client), &proxy, host, 443).await.map(drop);
        (script.await.unwrap(), outcome)
    }

    #[tokio::test]
    async fn the_tunnel_sends_connect_with_credentials_and_accepts_2xx() {
        let (sent, ok) =
            handshake("http://Aladdin:open%20sesame@p:1", "gw.example", b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await;
        ok.unwrap();
        assert_eq!(
            sent,
            "CONNECT gw.example:443 HTTP/1.1\r\nHost: gw.example:443\r\nProxy-Authorization: Basic \
             QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n"
        );
        let (sent, ok) = handshake("p:1", "2001:db8::1", b"HTTP/1.0 204 No Content\r\nVia: x\r\n\r\n").await;
        ok.unwrap();
        assert_eq!(sent, "CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n");
    }

    #[tokio::test]
    async fn a_refused_connect_names_the_status_and_what_to_do() {
        let (_, e) =
            handshake("http://p:3128", "gw.example", b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await;
        let e = e.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transport);
        let text = e.to_string();
        for part in ["http://p:3128", "gw.example:443", "407 Proxy Authentication Required", "user:password@"] {
            assert!(text.contains(part), "{part} missing: {text}");
        }
        let (_, e) = handshake("http://u:pw@p:3128", "gw.example", b"HTTP/1.1 407 Nope\r\n\r\n").await;
        assert!(e.unwrap_err().to_string().contains("did not accept the credentials"));
        let (_, e) = handshake("p:3128", "gw.example", b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n").await;
        let text = e.unwrap_err().to_string();
        assert!(text.contains("403 Forbidden") && text.contains("NO_PROXY"), "{text}");
        // A hostile reason phrase is cut short; one with control characters is no HTTP.
        let long: &'static [u8] = Box::leak(format!("HTTP/1.1 502 {}\r\n\r\n", "b".repeat(500)).into_bytes().into());
        let text = handshake("p:3128", "gw", long).await.1.unwrap_err().to_string();
        assert!(text.contains(&format!("502 {}.", "b".repeat(64))), "{text}");
        let (_, e) = handshake("p:3128", "gw", b"HTTP/1.1 502 \x1b[31mBad\x1b[0m\r\n\r\n").await;
        let text = e.unwrap_err().to_string();
        assert!(text.contains("not HTTP") && !text.contains('\x1b'), "{text}");
    }

    #[tokio::test]
    async fn a_proxy_that_misbehaves_is_refused() {
        for (answer, what) in [
            (&b"HTTP/1.1 200 OK\r\n\r\nHELLO"[..], "sent data after its answer"),
            (b"", "closed the connection before it answered"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not HTTP"),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "not HTTP"),
        ] {
            let answer: &'static [u8] = Box::leak(answer.to_vec().into_boxed_slice());
            let (_, e) = handshake("p:1", "gw", answer).await;
            let e = e.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Transport);
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
        let long: &'static [u8] = Box::leak(format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(9000)).into_bytes().into());
        let (_, e) = handshake("p:1", "gw", long).await;
        assert!(e.unwrap_err().to_string().contains("longer than 8 KiB"));
    }
}
