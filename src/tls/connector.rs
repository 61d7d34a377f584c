//! The hyper-util connector: TCP (through the egress proxy's `CONNECT` tunnel when one applies),
//! the TLS handshake the verifier pins, and the gate around the connection.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tower_service::Service;

use crate::attest::ChannelInfo;
use crate::attest::channel::ChannelState;
use crate::egress;
use crate::error::{BoxError, Error, ErrorKind};
use crate::tls::gate::Gate;
use crate::tls::pin::{channel_error, spki_sha256};
use crate::tls::shared::{H2, Shared};
use crate::tls::stream::AttestedStream;

/// A hyper-util connector speaking TLS pinned to the attested keyset, made by
/// [`AttestedTls::connector`](crate::tls::AttestedTls::connector). Every response carries a
/// [`ChannelInfo`] in its extensions.
#[derive(Clone)]
pub struct AttestedConnector<C> {
    tcp: C,
    /// Offers `http/1.1` only.
    h1: tokio_rustls::TlsConnector,
    /// Offers `h2` and `http/1.1` (unless `http1_only`).
    h2: tokio_rustls::TlsConnector,
    shared: Arc<Shared>,
}

impl<C> AttestedConnector<C> {
    /// Over `tcp`, with the configuration offering `http/1.1` only and the one offering `h2` too.
    pub(super) fn new(tcp: C, h1: Arc<ClientConfig>, h2: Arc<ClientConfig>, shared: Arc<Shared>) -> Self {
        AttestedConnector {
            tcp,
            h1: tokio_rustls::TlsConnector::from(h1),
            h2: tokio_rustls::TlsConnector::from(h2),
            shared,
        }
    }
}

impl<C> fmt::Debug for AttestedConnector<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedConnector").finish_non_exhaustive()
    }
}

/// The future of [`AttestedConnector`]'s `call`.
pub type ConnectFuture<T> = Pin<Box<dyn Future<Output = std::result::Result<AttestedStream<T>, BoxError>> + Send>>;

impl<C> Service<Uri> for AttestedConnector<C>
where
    C: Service<Uri> + Send + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Connection + Unpin + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = AttestedStream<C::Response>;
    type Error = BoxError;
    type Future = ConnectFuture<C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        if dst.scheme_str() != Some("https") {
            let e = Error::config(format!("the attested TLS connector speaks https only, not {dst}"));
            return Box::pin(async move { Err(e.into()) });
        }
        let host = dst.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_owned();
        let server_name = match ServerName::try_from(host.clone()) {
            Ok(n) => n,
            Err(_) => {
                let e = Error::config(format!("{host:?} is not a DNS name or IP address"));
                return Box::pin(async move { Err(e.into()) });
            }
        };
        let keys = self.shared.keys.clone();
        let pinned = self.shared.is_pinned(&host);
        // HTTP/2 requests cannot be told apart on the wire, so `h2` is offered only when the
        // handshake can accept nothing but a key the current keyset lists: not before the first
        // keyset, nor while the provider fetches a report (when a restarted gateway's new key
        // is let through for report requests, over HTTP/1.1).
        let offer_h2 = !pinned || (keys.current_valid().is_some() && !keys.is_attesting());
        let tls = if offer_h2 { self.h2.clone() } else { self.h1.clone() };
        // Through an HTTP proxy: TCP to the proxy, a CONNECT tunnel to the host, TLS inside it.
        let proxy = self.shared.egress.route(&dst).cloned();
        let port = dst.port_u16().unwrap_or(443);
        let tcp = match &proxy {
            Some(p) => self.tcp.call(p.uri().clone()),
            None => self.tcp.call(dst),
        };
        Box::pin(async move {
            let io = tcp.await.map_err(|e| {
                let to = match &proxy {
                    Some(p) => format!("the HTTPS proxy {p} (for {host})"),
                    None => host.clone(),
                };
                Error::new(ErrorKind::Transport, format!("connecting to {to} failed")).with_source(e)
            })?;
            let io = match &proxy {
                Some(p) => egress::tunnel(io, p, &host, port).await?,
                None => io,
            };
            let stream = tls.connect(server_name, TokioIo::new(io)).await.map_err(|e| handshake_error(e, &host))?;
            let session = stream.get_ref().1;
            let h2 = session.alpn_protocol() == Some(H2);
            let leaf = session
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| Error::new(ErrorKind::Transport, format!("{host} presented no certificate")))?;
            let spki = spki_sha256(leaf)?;
            let info = ChannelInfo::new(&host, spki, Arc::new(ChannelState::default()));
            let mut gate = Gate::new(stream, keys, info, pinned, h2);
            // A connection whose key no keyset lists yet serves one report request (HTTP/1.1).
            gate.report_only = pinned && !gate.listed().0;
            if gate.report_only && h2 {
                // The provider started attesting during the handshake, which then let an
                // unlisted key through: such a connection must speak HTTP/1.1.
                let message = format!(
                    "not using the HTTP/2 connection to {host}: the TLS key it presented (SPKI sha256 {seen}) is not in \
                     the current attested keyset; retry once the key provider has re-attested",
                    seen = gate.spki_hex,
                );
                return Err(channel_error(message).into());
            }
            Ok(AttestedStream::new(gate))
        })
    }
}

/// A refused handshake as our error (kind `Attestation(ChannelBinding)`), anything else as a
/// transport error.
fn handshake_error(e: io::Error, host: &str) -> BoxError {
    if let Some(ours) = Error::find(&e) {
        return Error::new(ours.kind(), ours.to_string()).into();
    }
    Error::new(ErrorKind::Transport, format!("the TLS handshake with {host} failed")).with_source(e).into()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::{CertificateError, OtherError};

    use super::*;
    use crate::error::AttestationFailure;

    #[test]
    fn refusals_are_found_inside_rustls_and_io_errors() {
        let ours = channel_error("seen x, attested y".to_owned());
        let rustls_error = rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(ours))));
        let io_error = io::Error::new(io::ErrorKind::InvalidData, rustls_error);
        let found = Error::find(&io_error).unwrap();
        assert_eq!(found.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding));
        assert_eq!(found.to_string(), "seen x, attested y");
        let boxed = handshake_error(io_error, "gw");
        assert_eq!(
            Error::find(boxed.as_ref()).map(Error::kind),
            Some(ErrorKind::Attestation(AttestationFailure::ChannelBinding))
        );
        let other = handshake_error(io::Error::other("reset"), "gw");
        assert_eq!(Error::find(other.as_ref()).map(Error::kind), Some(crate::error::ErrorKind::Transport));
    }
}
