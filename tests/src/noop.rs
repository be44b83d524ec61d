//! A no-op `AgentService`: the ceiling the ingest and heartbeat benchmarks measure the
//! controller against, in the same run. It takes what an agent sends over the same transport
//! and does nothing with it: `Register` answers at once, `Connect` reads and drops every
//! event, `PushTelemetry` decodes every batch and drops it. Served by a benchmark binary in a
//! child process (`--noop-server FILE`), so that its CPU is read from `/proc` like the
//! controller's.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tollgate_proto::v1;
use tonic::{Request, Response, Status, Streaming};

/// The heartbeat interval and lease grace `Register` hands out.
#[derive(Clone, Copy, Debug)]
pub struct Rhythm {
    /// How often each agent heartbeats.
    pub heartbeat_interval: Duration,
    /// The grace, unused here but sent as the controller does.
    pub lease_grace: Duration,
}

impl Default for Rhythm {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            lease_grace: Duration::from_secs(30),
        }
    }
}

/// The no-op service.
#[derive(Default)]
pub struct Noop {
    rhythm: Rhythm,
    counts: Arc<Counts>,
}

/// What the no-op service counted.
#[derive(Default)]
pub struct Counts {
    /// Telemetry samples decoded.
    pub samples: AtomicU64,
    /// `Connect` streams open now.
    pub streams: AtomicU64,
    /// Agent events read from every `Connect` stream.
    pub events: AtomicU64,
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl v1::agent_service_server::AgentService for Noop {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::Registration>, Status> {
        let request = request.into_inner();
        Ok(Response::new(v1::Registration {
            node_name: request.node_name,
            node_token: "no-op".to_owned(),
            heartbeat_interval_ms: millis(self.rhythm.heartbeat_interval),
            lease_grace_ms: millis(self.rhythm.lease_grace),
        }))
    }

    type ConnectStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::ControllerCommand, Status>> + Send>>;

    /// Reads and drops every event in a task of its own (as the controller does); sends
    /// nothing and keeps the stream open.
    async fn connect(
        &self,
        request: Request<Streaming<v1::AgentEvent>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let counts = Arc::clone(&self.counts);
        counts.streams.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            while let Ok(Some(_event)) = inbound.message().await {
                counts.events.fetch_add(1, Ordering::Relaxed);
            }
            counts.streams.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }

    async fn report_result(&self, _: Request<v1::StepResult>) -> Result<Response<v1::Ack>, Status> {
        Err(Status::unimplemented("no-op server"))
    }

    async fn push_telemetry(
        &self,
        request: Request<Streaming<v1::TelemetryBatch>>,
    ) -> Result<Response<v1::Ack>, Status> {
        let mut batches = request.into_inner();
        while let Some(batch) = batches.message().await? {
            self.counts
                .samples
                .fetch_add(batch.samples.len() as u64, Ordering::Relaxed);
        }
        Ok(Response::new(v1::Ack { duplicate: false }))
    }

    async fn enroll(
        &self,
        _: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        Err(Status::unimplemented("no-op server"))
    }

    async fn renew_certificate(
        &self,
        _: Request<v1::RenewCertificateRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        Err(Status::unimplemented("no-op server"))
    }
}

/// The file beside `addr_file` where the server keeps the number of open `Connect` streams.
pub fn streams_file(addr_file: &Path) -> PathBuf {
    addr_file.with_extension("streams")
}

/// Serves on a free loopback port until killed, its address written to `addr_file` and the
/// number of open `Connect` streams to [`streams_file`] every 100 ms. The transport is set as
/// the controller's is (no delay on small writes, a ping after 20 s without a byte).
pub async fn serve(addr_file: &Path, rhythm: Rhythm) -> anyhow::Result<()> {
    serve_on("127.0.0.1:0", addr_file, rhythm).await
}

/// [`serve`] on `listen` (`127.0.0.1:PORT`): a restart on the address its agents know.
pub async fn serve_on(listen: &str, addr_file: &Path, rhythm: Rhythm) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let noop = Noop {
        rhythm,
        counts: Arc::default(),
    };
    let counts = Arc::clone(&noop.counts);
    let streams = streams_file(addr_file);
    tokio::spawn(async move {
        let mut written = None;
        loop {
            let open = counts.streams.load(Ordering::Relaxed);
            if written != Some(open) && std::fs::write(&streams, open.to_string()).is_ok() {
                written = Some(open);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    std::fs::write(addr_file, listener.local_addr()?.to_string())?;
    let service = v1::agent_service_server::AgentServiceServer::new(noop)
        .max_decoding_message_size(16 * 1024 * 1024);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(service)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}

/// Starts this benchmark binary again as the no-op server (`--noop-server FILE` plus
/// `extra`) and waits for its address.
pub async fn start(
    addr_file: &Path,
    extra: &[&str],
) -> anyhow::Result<(tokio::process::Child, String)> {
    // A restart's files are written anew: the old ones must not read as the new server's.
    let _ = std::fs::remove_file(addr_file);
    let _ = std::fs::remove_file(streams_file(addr_file));
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--noop-server")
        .arg(addr_file)
        .args(extra)
        .kill_on_drop(true)
        .spawn()?;
    let url = loop {
        if let Ok(text) = std::fs::read_to_string(addr_file)
            && !text.trim().is_empty()
        {
            break format!("http://{}", text.trim());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok((child, url))
}
