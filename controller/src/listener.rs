//! The accept loop: takes TCP connections off the listener, completes the TLS handshake of
//! each on its own task (a slow client holds up only itself), and hands finished connections
//! to the gRPC server as a stream. Plain connections are only ever served on a loopback
//! address (`--insecure-loopback`); `run` refuses anything else before it gets here.
//!
//! Connections are bounded ([`ConnectionLimits`]): at most so many at once, and per client
//! address; a connection over the per-address cap is closed as soon as it is accepted, so it
//! costs a file descriptor for an instant. At the overall cap, the oldest connection still in
//! its TLS handshake gives its place up (a real client finishes its handshake in
//! milliseconds, so a flood of silent connections only evicts itself); with none, the new one
//! is closed. At most [`MAX_HANDSHAKES`] handshakes run at once, the oldest evicted likewise.
//! A connection must send its first bytes within [`HANDSHAKE_TIMEOUT`], then is closed once it
//! sends nothing for the idle timeout; live clients are never idle that long, since the server
//! pings every connection (HTTP/2 keepalive) and the answers count as traffic.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
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

/// The stream of one accepted connection, plain or TLS.
enum Io {
    /// Plain TCP (loopback only).
    Plain(TcpStream),
    /// TLS over TCP, handshake done.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection: its stream, the client's node certificate if it sent one, its
/// idle deadline, and its places under the connection caps (given back when it is dropped).
pub struct Conn {
    io: Io,
    certificate: Option<PeerCertificate>,
    remote: Option<SocketAddr>,
    idle_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    _slot: Slot,
}

impl Conn {
    fn new(io: Io, certificate: Option<PeerCertificate>, slot: Slot, idle: Duration) -> Self {
        let remote = match &io {
            Io::Plain(tcp) => tcp.peer_addr().ok(),
            Io::Tls(tls) => tls.get_ref().0.peer_addr().ok(),
        };
        Self {
            io,
            certificate,
            remote,
            idle_timeout: idle,
            // Until its first bytes arrive, a connection gets the handshake's deadline.
            idle: Box::pin(tokio::time::sleep(idle.min(HANDSHAKE_TIMEOUT))),
            _slot: slot,
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        Peer {
            remote: self.remote,
            certificate: self.certificate.clone(),
        }
    }
}

impl AsyncRead for Conn {
    /// Reads, and closes the connection (a `TimedOut` error) once it has sent nothing for the
    /// idle timeout.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut this.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        };
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let deadline = tokio::time::Instant::now() + this.idle_timeout;
                this.idle.as_mut().reset(deadline);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    tracing::debug!(remote = ?this.remote, "idle connection closed");
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing for the idle timeout",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default of `--max-connections-per-ip`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Default of `--idle-timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the server pings each connection (HTTP/2 keepalive), well inside the idle
/// timeout so that a live client's answers keep its connection open.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// Bounds on the listener's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once (TLS handshakes included); more are closed at accept.
    pub max: usize,
    /// Connections open at once from one IP address.
    pub per_ip: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max: DEFAULT_MAX_CONNECTIONS,
            per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Counts open connections, in all and per IP address.
struct Slots {
    all: Arc<Semaphore>,
    per_ip: usize,
    by_ip: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

/// A connection's place under the caps; given back when dropped.
struct Slot {
    _all: OwnedSemaphorePermit,
    ip: IpAddr,
    by_ip: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_ip = self
            .by_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = by_ip.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// Why a connection was closed at accept, or its handshake cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    All,
    PerIp,
    /// The oldest handshake gave its place to a newer connection.
    Evicted,
}

/// Most TLS handshakes in progress at once; beyond it the oldest is evicted.
pub const MAX_HANDSHAKES: usize = 1024;

/// Connections in their TLS handshake, oldest first, each holding its [`Slot`] here (not in
/// its task) so that evicting one frees its place at once.
#[derive(Default)]
struct Handshakes {
    next: u64,
    pending: std::collections::BTreeMap<u64, (Slot, tokio::sync::oneshot::Sender<()>)>,
}

impl Handshakes {
    /// Holds `slot` while a handshake runs; its id and the signal that it was evicted.
    fn start(&mut self, slot: Slot) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let (evict, evicted) = tokio::sync::oneshot::channel();
        let id = self.next;
        self.next += 1;
        self.pending.insert(id, (slot, evict));
        (id, evicted)
    }

    /// The slot of a finished handshake; `None` when it was evicted meanwhile.
    fn finish(&mut self, id: u64) -> Option<Slot> {
        self.pending.remove(&id).map(|(slot, _)| slot)
    }

    /// Evicts the oldest handshake, freeing its slot; `false` when none runs.
    fn evict_oldest(&mut self) -> bool {
        match self.pending.pop_first() {
            Some((_, (slot, evict))) => {
                drop(slot);
                let _ = evict.send(());
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.pending.len()
    }
}

/// Locks the handshakes (a poisoned lock still guards a consistent map).
fn lock(handshakes: &std::sync::Mutex<Handshakes>) -> std::sync::MutexGuard<'_, Handshakes> {
    handshakes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Slots {
    fn new(limits: &ConnectionLimits) -> Self {
        Self {
            all: Arc::new(Semaphore::new(limits.max.max(1))),
            per_ip: limits.per_ip.max(1),
            by_ip: Arc::default(),
        }
    }

    fn take(&self, ip: IpAddr) -> Result<Slot, Over> {
        let all = self
            .all
            .clone()
            .try_acquire_owned()
            .map_err(|_| Over::All)?;
        let mut by_ip = self
            .by_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = by_ip.entry(ip).or_insert(0);
        if *count >= self.per_ip {
            return Err(Over::PerIp);
        }
        *count += 1;
        Ok(Slot {
            _all: all,
            ip,
            by_ip: self.by_ip.clone(),
        })
    }
}

/// Logs refused connections at most once a second, with how many since the last line.
#[derive(Default)]
struct RefusalLog {
    last: Option<tokio::time::Instant>,
    since: u64,
}

impl RefusalLog {
    fn refused(&mut self, over: Over, remote: SocketAddr, limits: &ConnectionLimits) {
        self.since += 1;
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            return;
        }
        match over {
            Over::All | Over::PerIp => {
                let (limit, flag) = if over == Over::All {
                    (limits.max, "--max-connections")
                } else {
                    (limits.per_ip, "--max-connections-per-ip")
                };
                tracing::warn!(
                    %remote,
                    refused = self.since,
                    limit,
                    "connections over {flag} closed at accept (raise {flag} if these clients are real)"
                );
            }
            Over::Evicted => tracing::warn!(
                %remote,
                evicted = self.since,
                "connections still in their TLS handshake closed to make room for newer ones \
                 (a flood of connections that never finish a handshake, or --max-connections \
                 too low for this many clients)"
            ),
        }
        self.last = Some(now);
        self.since = 0;
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
    limits: ConnectionLimits,
    revocations: Arc<Revocations>,
    mut shutdown: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Conn>> {
    let (ready, stream) = mpsc::channel(64);
    let slots = Slots::new(&limits);
    let handshakes = Arc::new(std::sync::Mutex::new(Handshakes::default()));
    let idle = limits.idle_timeout;
    tokio::spawn(async move {
        let mut refusals = RefusalLog::default();
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
            let mut taken = slots.take(remote.ip());
            if taken.as_ref().err() == Some(&Over::All) && lock(&handshakes).evict_oldest() {
                refusals.refused(Over::Evicted, remote, &limits);
                taken = slots.take(remote.ip());
            }
            let slot = match taken {
                Ok(slot) => slot,
                Err(over) => {
                    refusals.refused(over, remote, &limits);
                    drop(tcp);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = acceptor.clone() else {
                let conn = Conn::new(Io::Plain(tcp), None, slot, idle);
                if ready.send(Ok(conn)).await.is_err() {
                    return;
                }
                continue;
            };
            let (id, evicted) = {
                let mut handshakes = lock(&handshakes);
                if handshakes.len() >= MAX_HANDSHAKES && handshakes.evict_oldest() {
                    refusals.refused(Over::Evicted, remote, &limits);
                }
                handshakes.start(slot)
            };
            let ready = ready.clone();
            let revocations = revocations.clone();
            let handshakes = handshakes.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let outcome = tokio::select! {
                    outcome = handshake => outcome,
                    _ = evicted => {
                        tracing::debug!(%remote, "TLS handshake evicted for a newer connection");
                        return;
                    }
                };
                let Some(slot) = lock(&handshakes).finish(id) else {
                    return;
                };
                match outcome {
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
                        let conn = Conn::new(Io::Tls(Box::new(tls)), certificate, slot, idle);
                        let _ = ready.send(Ok(conn)).await;
                    }
                    Ok(Err(error)) => {
                        drop(slot);
                        tracing::info!(%remote, %error, "TLS handshake failed");
                    }
                    Err(_) => {
                        drop(slot);
                        tracing::debug!(%remote, "TLS handshake took too long; connection closed");
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
