//! Reaching one of several controller replicas: `--controller` takes a comma-separated list of
//! URLs (and a host name resolving to several addresses counts as several). Every connection
//! the agent's channel makes goes through [`Connector`], which tries the replica that
//! answered last first, then the others in order, so that when a replica dies the next
//! reconnect (a jittered backoff apart, `session.rs`) lands on another one. Every RPC rides
//! the channel's one connection, so the stream, uploads and telemetry follow together.
//!
//! Replicas are all active and share the database: which one takes a result does not matter,
//! and a result sent twice (to the dead one, then again) is stored once.

use super::tls::TlsSettings;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;

/// How long one replica gets to accept a TCP connection before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One controller address of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// As given, for logs.
    pub url: String,
    /// Host name or IP (without brackets).
    pub host: String,
    /// Port (443 for `https://`, 80 for `http://` when not given).
    pub port: u16,
}

/// Splits `--controller` into its URLs: comma-separated, blanks ignored. Every URL must use
/// the same scheme, `https://` or `http://`, and name a host.
pub fn parse_list(list: &str) -> Result<Vec<Address>, String> {
    let mut addresses = Vec::new();
    for url in list.split(',').map(str::trim).filter(|url| !url.is_empty()) {
        let uri: Uri = url
            .parse()
            .map_err(|error| format!("controller address '{url}': {error}"))?;
        let default_port = match uri.scheme_str() {
            Some("https") => 443,
            Some("http") => 80,
            _ => {
                return Err(format!(
                    "controller address '{url}': use https://HOST:PORT (or http:// to loopback)"
                ));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("controller address '{url}' has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        addresses.push(Address {
            url: url.to_owned(),
            host,
            port: uri.port_u16().unwrap_or(default_port),
        });
    }
    let Some(first) = addresses.first() else {
        return Err("no controller address: give --controller https://HOST:PORT".to_owned());
    };
    let https = first.url.starts_with("https://");
    if let Some(other) = addresses
        .iter()
        .find(|address| address.url.starts_with("https://") != https)
    {
        return Err(format!(
            "controller addresses mix https:// and http:// ('{}' and '{}'): replicas of one \
             controller all speak TLS",
            first.url, other.url
        ));
    }
    Ok(addresses)
}

/// A connection to a replica, TLS or plain.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Connects to the first replica of the list that answers, starting with the one that
/// answered last; TLS with the settings of the moment for `https://` (the node's current
/// certificate, `tls.rs`).
#[derive(Clone, Debug)]
pub struct Connector {
    addresses: Arc<[Address]>,
    /// Index of the replica that answered last.
    current: Arc<AtomicUsize>,
    tls: Option<Arc<TlsSettings>>,
}

impl Connector {
    /// Over `addresses` (not empty), with TLS when `tls` is given.
    pub fn new(addresses: Vec<Address>, tls: Option<Arc<TlsSettings>>) -> Self {
        Self {
            addresses: addresses.into(),
            current: Arc::default(),
            tls,
        }
    }

    /// The TLS settings it connects with (renewal changes their certificate).
    pub fn tls(&self) -> Option<Arc<TlsSettings>> {
        self.tls.clone()
    }
}

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let n = this.addresses.len();
            let start = this.current.load(Ordering::Relaxed) % n.max(1);
            let mut last_error = None;
            for step in 0..n {
                let idx = (start + step) % n;
                let address = &this.addresses[idx];
                match connect(address, this.tls.as_deref()).await {
                    Ok(io) => {
                        if idx != start {
                            tracing::info!(controller = %address.url, "connected to another controller replica");
                        }
                        this.current.store(idx, Ordering::Relaxed);
                        return Ok(TokioIo::new(io));
                    }
                    Err(error) => {
                        if n > 1 {
                            tracing::warn!(controller = %address.url, %error, "controller replica not reachable; trying the next");
                        }
                        last_error = Some(error);
                    }
                }
            }
            Err(last_error.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "no controller address")
            }))
        })
    }
}

async fn connect(address: &Address, tls: Option<&TlsSettings>) -> std::io::Result<Box<dyn Io>> {
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((address.host.as_str(), address.port)),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    let Some(tls) = tls else {
        return Ok(Box::new(tcp));
    };
    let name = ServerName::try_from(address.host.clone()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the controller's host is not a valid TLS server name",
        )
    })?;
    let stream = tokio_rustls::TlsConnector::from(tls.config())
        .connect(name, tcp)
        .await?;
    Ok(Box::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_replicas_parses_and_mixed_schemes_are_refused() {
        let list = parse_list("https://ctl-a:7443, https://[::1]:7444,,https://ctl-c")
            .expect("three replicas");
        let hosts: Vec<(&str, u16)> = list.iter().map(|a| (a.host.as_str(), a.port)).collect();
        assert_eq!(hosts, [("ctl-a", 7443), ("::1", 7444), ("ctl-c", 443)]);
        let mixed = parse_list("https://a:1,http://127.0.0.1:2").expect_err("mixed");
        assert!(mixed.contains("mix https:// and http://"), "{mixed}");
        assert!(
            parse_list(" , ")
                .expect_err("empty")
                .contains("no controller address")
        );
        assert!(
            parse_list("ctl-a:7443")
                .expect_err("no scheme")
                .contains("use https://")
        );
    }

    #[tokio::test]
    async fn a_dead_replica_is_skipped_and_the_live_one_kept() {
        use tonic::codegen::Service as _;
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let dead_port = dead.local_addr().expect("addr").port();
        drop(dead);
        let live = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let live_port = live.local_addr().expect("addr").port();
        let list = parse_list(&format!(
            "http://127.0.0.1:{dead_port},http://127.0.0.1:{live_port}"
        ))
        .expect("list");
        let mut connector = Connector::new(list, None);
        let uri: Uri = "http://controller".parse().expect("uri");
        connector.call(uri.clone()).await.expect("the live replica");
        assert_eq!(connector.current.load(Ordering::Relaxed), 1);
        // The next connection starts with the replica that answered.
        connector.call(uri).await.expect("again");
        assert_eq!(connector.current.load(Ordering::Relaxed), 1);
        drop(live);
        let mut all_dead = connector.clone();
        assert!(
            all_dead
                .call("http://controller".parse().expect("uri"))
                .await
                .is_err(),
            "nobody answers"
        );
    }
}
