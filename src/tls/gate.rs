//! The per-request gate in a connection's IO: where a request starts (the first HTTP/1.1 write
//! after a read, an HTTP/2 `HEADERS` frame opening a stream), whether the current keyset lets it
//! through, and the close of a connection whose key a newly published keyset no longer lists.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::attest::channel::attested_for;
use crate::attest::{AttestedKeyset, ChannelInfo, KeyHandle};
use crate::tls::pin::{channel_error, lists};

/// The report path a connection whose key is not attested may still carry.
const ATTESTATION_PATH: &[u8] = b"/v1/aci/attestation";

type Watch = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Resolves when the handle publishes a keyset.
fn watch_publish(keys: &KeyHandle) -> Watch {
    let shared = keys.shared.clone();
    Box::pin(async move { shared.published.notified().await })
}

/// How the gate finds where a request starts in what the client writes.
enum Framing {
    /// HTTP/1.1: the first write after data was read (or the first write at all) starts a
    /// request.
    Http1 {
        /// The next write starts a request.
        request_start: bool,
    },
    /// HTTP/2: a `HEADERS` frame on a stream the client has not used before starts a request.
    Http2(H2Frames),
}

/// HTTP/2 frame boundaries in the client's byte stream (RFC 9113 §3.4, §4.1): the connection
/// preface, then frames of a 9-byte header (24-bit length, type, flags, 31-bit stream ID) and
/// a payload. Only headers are read; HPACK-coded request headers are not decoded.
#[derive(Clone, Copy, Debug)]
struct H2Frames {
    /// Bytes of the connection preface still to come.
    preface: usize,
    header: [u8; 9],
    /// Bytes of `header` filled.
    filled: usize,
    /// Payload bytes of the current frame still to come.
    payload: usize,
    /// The highest stream ID a `HEADERS` frame has opened.
    last_stream: u32,
}

/// `HEADERS` (RFC 9113 §6.2).
const FRAME_HEADERS: u8 = 0x1;

impl H2Frames {
    fn new() -> Self {
        // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        H2Frames { preface: 24, header: [0; 9], filled: 0, payload: 0, last_stream: 0 }
    }

    /// Move past `bytes`; whether they complete the header of a frame that opens a stream.
    fn advance(&mut self, mut bytes: &[u8]) -> bool {
        let mut opens = false;
        while !bytes.is_empty() {
            let skip = if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                n
            } else if self.payload > 0 {
                let n = self.payload.min(bytes.len());
                self.payload -= n;
                n
            } else {
                let n = (9 - self.filled).min(bytes.len());
                self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
                self.filled += n;
                if self.filled == 9 {
                    let h = self.header;
                    self.filled = 0;
                    self.payload = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    if h[3] == FRAME_HEADERS && stream > self.last_stream {
                        self.last_stream = stream;
                        opens = true;
                    }
                }
                n
            };
            bytes = &bytes[skip..];
        }
        opens
    }

    /// Whether writing `bufs` would open a stream (the state is left as it is).
    fn would_open(&self, bufs: &[io::IoSlice<'_>]) -> bool {
        let mut probe = *self;
        let mut opens = false;
        for b in bufs {
            opens |= probe.advance(b);
        }
        opens
    }

    /// Move past the first `n` bytes of `bufs` (the ones written).
    fn advance_written(&mut self, bufs: &[io::IoSlice<'_>], mut n: usize) {
        for b in bufs {
            if n == 0 {
                break;
            }
            let take = n.min(b.len());
            self.advance(&b[..take]);
            n -= take;
        }
    }
}

/// The per-request gate around the TLS stream.
pub(super) struct Gate<T> {
    pub(super) tls: tokio_rustls::client::TlsStream<TokioIo<T>>,
    keys: KeyHandle,
    pub(super) info: ChannelInfo,
    pub(super) spki_hex: String,
    framing: Framing,
    /// The key was not listed when the connection was made: it serves report requests only,
    /// and the pool does not reuse it.
    pub(super) report_only: bool,
    /// The keyset last checked, and whether it lists this connection's key.
    checked: Option<(Arc<AttestedKeyset>, bool)>,
    published: Watch,
    /// An unpinned host's connection is not gated.
    pub(super) pinned: bool,
}

impl<T> Gate<T> {
    pub(super) fn new(
        tls: tokio_rustls::client::TlsStream<TokioIo<T>>,
        keys: KeyHandle,
        info: ChannelInfo,
        pinned: bool,
        h2: bool,
    ) -> Self {
        let published = watch_publish(&keys);
        let spki_hex = info.spki_sha256_hex();
        let framing = if h2 { Framing::Http2(H2Frames::new()) } else { Framing::Http1 { request_start: true } };
        Gate { tls, keys, info, spki_hex, framing, report_only: false, checked: None, published, pinned }
    }

    pub(super) fn is_h2(&self) -> bool {
        matches!(self.framing, Framing::Http2(_))
    }

    /// Whether the keyset current now lists this connection's key for its host.
    pub(super) fn listed(&mut self) -> (bool, Option<Arc<AttestedKeyset>>) {
        let Some(keyset) = self.keys.current_valid() else {
            return (false, None);
        };
        if let Some((k, listed)) = &self.checked {
            if Arc::ptr_eq(k, &keyset) {
                return (*listed, Some(keyset));
            }
        }
        let listed = lists(&keyset, self.info.host(), &self.spki_hex);
        self.checked = Some((keyset.clone(), listed));
        (listed, Some(keyset))
    }

    /// The start of a request: allowed when the current keyset lists the connection's key, or,
    /// over HTTP/1.1, for a report request (`head` is the first bytes of the request; `None`
    /// for an HTTP/2 stream, whose request cannot be read).
    fn admit(&mut self, head: Option<&[u8]>) -> io::Result<()> {
        if !self.pinned {
            return Ok(());
        }
        let (listed, keyset) = self.listed();
        if listed || head.is_some_and(is_report_request) {
            return Ok(());
        }
        let host = self.info.host();
        let message = match keyset {
            Some(k) => format!(
                "not sending a request to {host}: the TLS key it presented (SPKI sha256 {seen}) is not in the attested \
                 keyset {digest} for {host} (attested: {attested}); only report requests travel over this connection",
                seen = self.spki_hex,
                digest = k.digest(),
                attested = attested_for(&k, host),
            ),
            None => format!(
                "not sending a request to {host} before its TLS key (SPKI sha256 {seen}) is attested: no attested \
                 keyset is current; establish the key provider first",
                seen = self.spki_hex,
            ),
        };
        if head.is_none() {
            // An HTTP/2 connection cannot refuse one stream and go on: it closes. h2 hands the
            // streams a bare "stream closed", so the reason goes to the log.
            tracing::warn!(host, "closing an HTTP/2 connection: {message}");
            self.info.revoke();
        }
        Err(io::Error::new(io::ErrorKind::PermissionDenied, channel_error(message)))
    }

    /// Check the request (if any) that `bufs` start before they are written.
    fn before_write(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<()> {
        if self.info.is_revoked() {
            return Err(self.revoked());
        }
        match &mut self.framing {
            Framing::Http1 { request_start } => {
                if *request_start {
                    if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                        self.admit(Some(first))?;
                        self.framing = Framing::Http1 { request_start: false };
                    }
                }
            }
            Framing::Http2(frames) => {
                if frames.would_open(bufs) {
                    self.admit(None)?;
                }
            }
        }
        Ok(())
    }

    /// Account for `n` bytes of `bufs` written.
    fn written(&mut self, bufs: &[io::IoSlice<'_>], n: usize) {
        if let Framing::Http2(frames) = &mut self.framing {
            frames.advance_written(bufs, n);
        }
    }

    fn revoked(&self) -> io::Error {
        let message = format!("the TLS connection to {} was revoked: its key is not attested", self.info.host());
        io::Error::new(io::ErrorKind::PermissionDenied, channel_error(message))
    }
}

/// Whether an HTTP/1 request head is `GET <path ending in /v1/aci/attestation>?nonce=…`.
fn is_report_request(head: &[u8]) -> bool {
    let Some(rest) = head.strip_prefix(b"GET ") else { return false };
    let Some(end) = memchr::memchr(b' ', rest) else { return false };
    let target = &rest[..end];
    let Some(q) = memchr::memchr(b'?', target) else { return false };
    let (path, query) = (&target[..q], &target[q + 1..]);
    path.starts_with(b"/") && path.ends_with(ATTESTATION_PATH) && query.starts_with(b"nonce=")
}

impl<T: hyper::rt::Read + hyper::rt::Write + Unpin> AsyncRead for Gate<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.info.state().reader.register(cx.waker());
        if this.info.is_revoked() {
            return Poll::Ready(Err(this.revoked()));
        }
        // A newly published keyset that no longer lists this key closes the connection, so the
        // pool drops it: an HTTP/1.1 connection once it is idle, an HTTP/2 one at once (its
        // streams cannot be told apart, and the pool would otherwise send every request to it).
        while this.pinned && this.published.as_mut().poll(cx).is_ready() {
            this.published = watch_publish(&this.keys);
            let idle = match this.framing {
                Framing::Http1 { request_start } => request_start,
                Framing::Http2(_) => true,
            };
            if idle && this.keys.current_valid().is_some() && !this.listed().0 {
                tracing::debug!(
                    host = this.info.host(),
                    http2 = this.is_h2(),
                    "closing a pooled TLS connection whose key is no longer attested"
                );
                this.info.revoke();
                return Poll::Ready(Err(this.revoked()));
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.tls).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Framing::Http1 { request_start }) = (&r, &mut this.framing) {
            if buf.filled().len() > before {
                *request_start = true;
            }
        }
        r
    }
}

impl<T: hyper::rt::Read + hyper::rt::Write + Unpin> AsyncWrite for Gate<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let bufs = [io::IoSlice::new(buf)];
        this.before_write(&bufs)?;
        let r = Pin::new(&mut this.tls).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.written(&bufs, n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.before_write(bufs)?;
        let r = Pin::new(&mut this.tls).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.written(bufs, n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_report_requests_pass_the_gate_unattested() {
        let n = "ab".repeat(32);
        for ok in [
            format!("GET /v1/aci/attestation?nonce={n} HTTP/1.1\r\nhost: gw\r\n\r\n"),
            format!("GET /prefix/v1/aci/attestation?nonce={n} HTTP/1.1\r\n"),
        ] {
            assert!(is_report_request(ok.as_bytes()), "{ok}");
        }
        for no in [
            "POST /v1/aci/attestation?nonce=ab HTTP/1.1\r\n".to_owned(),
            "GET /v1/aci/attestation HTTP/1.1\r\n".to_owned(),
            "GET /v1/aci/attestation?x=1 HTTP/1.1\r\n".to_owned(),
            "GET /v1/chat/completions?q=/v1/aci/attestation?nonce=ab HTTP/1.1\r\n".to_owned(),
            "GET /v1/aci/attestation/x?nonce=ab HTTP/1.1\r\n".to_owned(),
            "GET /v1/aci/receipts/rcpt-1 HTTP/1.1\r\n".to_owned(),
            format!("GET /v1/aci/attestation?nonce={n}"), // request line cut before its end
            "GET http://gw/v1/aci/attestation?nonce=ab HTTP/1.1\r\n".to_owned(),
            String::new(),
        ] {
            assert!(!is_report_request(no.as_bytes()), "{no}");
        }
    }

    /// A frame header (RFC 9113 §4.1) and its payload.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    /// What a client writes, built by hand from RFC 9113 and RFC 7541 (not by h2): the
    /// preface, SETTINGS, a request on stream 1 whose header block is RFC 7541 C.3.1 split
    /// over HEADERS and CONTINUATION, a DATA frame whose payload looks like a HEADERS frame for
    /// stream 9, trailers on stream 1, WINDOW_UPDATE on stream 3, a request on stream 3.
    fn client_bytes() -> (Vec<u8>, Vec<usize>) {
        let block = const_hex::decode("828684410f7777772e6578616d706c652e636f6d").unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        let mut opens = vec![out.len() + 9]; // HEADERS on stream 1 (no END_HEADERS)
        out.extend(frame(0x1, 0, 1, &block[..5]));
        out.extend(frame(0x9, 0x4, 1, &block[5..])); // CONTINUATION
        out.extend(frame(0x0, 0, 1, &frame(0x1, 0x4, 9, &block))); // DATA
        out.extend(frame(0x1, 0x5, 1, &[0x40, 1, b'x', 1, b'y'])); // trailers
        out.extend(frame(0x8, 0, 3, &[0, 0, 1, 0])); // WINDOW_UPDATE
        opens.push(out.len() + 9); // HEADERS on stream 3
        out.extend(frame(0x1, 0x5, 3, &block));
        (out, opens)
    }

    #[test]
    fn h2_requests_are_found_in_frame_headers_however_the_writes_split() {
        let (bytes, opens) = client_bytes();
        // In one write.
        assert!(H2Frames::new().would_open(&[io::IoSlice::new(&bytes)]));
        // Byte by byte: a stream opens exactly when the 9th byte of its HEADERS header passes.
        let mut f = H2Frames::new();
        let mut seen = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            if f.advance(std::slice::from_ref(b)) {
                seen.push(i + 1);
            }
        }
        assert_eq!(seen, opens);
        // Split at every point, written partially: the probe does not move the state, and
        // `advance_written` counts only what was written.
        for cut in 0..bytes.len() {
            let mut f = H2Frames::new();
            let bufs = [io::IoSlice::new(&bytes[..cut]), io::IoSlice::new(&bytes[cut..])];
            assert!(f.would_open(&bufs));
            assert_eq!(f.last_stream, 0, "would_open leaves the state alone");
            f.advance_written(&bufs, cut);
            let expect_last = match opens.iter().filter(|&&o| o <= cut).count() {
                0 => 0,
                1 => 1,
                _ => 3,
            };
            assert_eq!(f.last_stream, expect_last, "cut {cut}");
            let rest = [io::IoSlice::new(&bytes[cut..])];
            assert_eq!(f.would_open(&rest), opens.iter().any(|&o| o > cut), "cut {cut}");
            f.advance_written(&rest, bytes.len() - cut);
            assert_eq!(f.last_stream, 3);
            assert!(!f.would_open(&[io::IoSlice::new(&frame(0x1, 0x5, 1, b""))]), "an old stream is no request");
        }
    }
}
