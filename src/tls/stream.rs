//! The IO of a pinned connection as hyper-util sees it: the gate around the TLS stream, and the
//! `Connected` it reports (the channel, `h2`, poisoned when it serves report requests only).

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;

use crate::attest::ChannelInfo;
use crate::tls::gate::Gate;

/// A TLS connection made by [`AttestedConnector`](crate::tls::AttestedConnector): hyper-util IO
/// that refuses to start a request the current keyset does not allow over it (see the
/// [module documentation](crate::tls#bootstrap-and-pooled-connections)), over HTTP/1.1 or HTTP/2.
pub struct AttestedStream<T> {
    io: TokioIo<Gate<T>>,
}

impl<T> fmt::Debug for AttestedStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gate = self.io.inner();
        f.debug_struct("AttestedStream")
            .field("channel", &gate.info)
            .field("http2", &gate.is_h2())
            .field("report_only", &gate.report_only)
            .finish_non_exhaustive()
    }
}

impl<T> AttestedStream<T> {
    pub(super) fn new(gate: Gate<T>) -> Self {
        AttestedStream { io: TokioIo::new(gate) }
    }

    /// The channel: host and the SPKI the server presented.
    pub fn channel(&self) -> &ChannelInfo {
        &self.io.inner().info
    }
}

impl<T: Connection + hyper::rt::Read + hyper::rt::Write + Unpin> Connection for AttestedStream<T> {
    fn connected(&self) -> Connected {
        let gate = self.io.inner();
        let mut connected = gate.tls.get_ref().0.inner().connected();
        if gate.is_h2() {
            connected = connected.negotiated_h2();
        }
        if gate.report_only {
            // Accepted before its key was attested: it carries the one report request it was
            // opened for, and the pool never hands it out again.
            connected.poison();
        }
        // Responses of pinned hosts name their channel (the provider checks it for reports).
        if gate.pinned { connected.extra(gate.info.clone()) } else { connected }
    }
}

impl<T: hyper::rt::Read + hyper::rt::Write + Unpin> hyper::rt::Read for AttestedStream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Read + hyper::rt::Write + Unpin> hyper::rt::Write for AttestedStream<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
