//! The accept loop: takes TCP connections off the listener, completes the TLS handshake of
//! each on its own task (a slow client holds up only itself), and hands finished connections
//! to the gRPC server as a stream. Plain connections are only ever served on a loopback
//! address (`--insecure-loopback`); `run` refuses anything else before it gets here.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::pki::{PeerCertificate, Revocations};

/// How the listener talks to its clients.
#[derive(Clone)]
pub enum Transport {
    /// Plain HTTP/2; only on a loopback address, for tests and the demo without TLS.
    InsecureLoopback,
    /// TLS with this server configuration.
    Tls(Arc<rustls::ServerConfig>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InsecureLoopback => f.write_str("InsecureLoopback"),
            Self::Tls(_) => f.write_str("Tls"),
        }
    }
}

/// Why the listener refuses to serve.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Plain text on an address other hosts can reach.
    #[error(
        "refusing to serve plain text on {0}, which is not a loopback address: serve TLS with \
         --tls-cert FILE --tls-key FILE, or make a lab CA with `tollgate-controller ca init \
         --dir DIR` and pass --ca-dir DIR; --insecure-loopback is only for 127.0.0.1 or ::1"
    )]
    PlainOffLoopback(SocketAddr),
}

/// Refuses a plain-text transport on an address that is not loopback.
pub fn check(transport: &Transport, addr: SocketAddr) -> Result<(), ListenerError> {
    match transport {
        Transport::InsecureLoopback if !addr.ip().is_loopback() => {
            Err(ListenerError::PlainOffLoopback(addr))
        }
        _ => Ok(()),
    }
}

/// What the gRPC handlers can learn about a request's connection (in its extensions).
#[derive(Clone, Debug)]
pub struct Peer {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The node certificate the client presented (verified against the lab CA), if any.
    pub certificate: Option<PeerCertificate>,
}

/// One accepted connection, plain or TLS.
pub enum Conn {
    /// Plain TCP (loopback only).
    Plain(TcpStream),
    /// TLS over TCP, handshake done, with the client's node certificate if it sent one.
    Tls(
        Box<tokio_rustls::server::TlsStream<TcpStream>>,
        Option<PeerCertificate>,
    ),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        let (tcp, certificate) = match self {
            Self::Plain(tcp) => (tcp, None),
            Self::Tls(tls, certificate) => (tls.get_ref().0, certificate.clone()),
        };
        Peer {
            remote: tcp.peer_addr().ok(),
            certificate,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls, _) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls, _) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls, _) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls, _) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connections ready for the gRPC server, until `shutdown` turns true. Accept errors (out
/// of file descriptors, a connection reset before it was accepted) are logged and the loop
/// goes on after a short pause: they never end the server.
pub fn incoming(
    listener: TcpListener,
    transport: Transport,
    revocations: Arc<Revocations>,
    mut shutdown: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Conn>> {
    let (ready, stream) = mpsc::channel(64);
    tokio::spawn(async move {
        let acceptor = match &transport {
            Transport::InsecureLoopback => None,
            Transport::Tls(config) => Some(tokio_rustls::TlsAcceptor::from(config.clone())),
        };
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.wait_for(|stop| *stop) => return,
                () = ready.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed; retrying shortly");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = acceptor.clone() else {
                if ready.send(Ok(Conn::Plain(tcp))).await.is_err() {
                    return;
                }
                continue;
            };
            let ready = ready.clone();
            let revocations = revocations.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let certificate = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|der| crate::pki::peer_certificate(der));
                        if let Some(certificate) = &certificate
                            && revocations.is_revoked(&certificate.serial)
                        {
                            tracing::warn!(%remote, node = %certificate.node, serial = certificate.serial, "revoked node certificate; connection closed");
                            return;
                        }
                        let _ = ready.send(Ok(Conn::Tls(Box::new(tls), certificate))).await;
                    }
                    Ok(Err(error)) => {
                        tracing::info!(%remote, %error, "TLS handshake failed");
                    }
                    Err(_) => {
                        tracing::info!(%remote, "TLS handshake took too long; connection closed");
                    }
                }
            });
        }
    });
    ReceiverStream::new(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_refused_off_loopback() {
        let public: SocketAddr = "0.0.0.0:7800".parse().expect("address");
        let loopback: SocketAddr = "127.0.0.1:7800".parse().expect("address");
        let refused = check(&Transport::InsecureLoopback, public).expect_err("refused");
        assert!(refused.to_string().contains("ca init"), "{refused}");
        check(&Transport::InsecureLoopback, loopback).expect("loopback is fine");
        check(
            &Transport::InsecureLoopback,
            "[::1]:7800".parse().expect("address"),
        )
        .expect("IPv6 loopback is fine");
    }
}
