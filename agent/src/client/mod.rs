//! The controller connection, one module per concern: [`session`] registers, opens the
//! `Connect` stream (heartbeats, job assignments and cancels) and reconnects with the jittered
//! backoff of [`backoff`]; [`jobs`] drives the running job and spools its results;
//! [`upload`] delivers spooled results (and those held in memory) until they are acknowledged;
//! [`resume`] deals with what a previous run of the agent left: a job to continue after the
//! reboot its flash step needed (see [`crate::runner::resume`]) and an interrupted attempt;
//! [`telemetry`] streams fleet telemetry while no job runs. This module holds the agent's
//! shared state and [`Agent::run`], which starts the tasks and the session loop.
//!
//! Ownership and shutdown: [`Agent::run`] owns the session loop and turns the caller's
//! shutdown future into a `watch` that every task listens to. The running job (at most one)
//! lives in `job`, a slot shared between the session that starts or cancels it and the job
//! task that clears it when the job ends. The uploader is one task, so a result is never sent
//! twice at once. On shutdown the job is stopped (its process group killed), its results are
//! spooled, and the uploader stops; what was not acknowledged stays in the spool for the next
//! start. A result the spool cannot take is held in memory (`held`, shared by the job task
//! and the uploader), spooled when the disk takes it again and meanwhile sent from memory.
//!
//! Every heartbeat says what the agent runs (job, lease epoch, step, attempt), how many
//! results it still holds (spooled and held) and how many commands of the stream it had read;
//! the controller decides from that whether the node's job is still being run. Before the
//! first session, the agent kills what a killed predecessor's step left running and spools
//! that attempt as `error` (see [`crate::runner::orphans`]).
//!
//! A job whose flash waits for a reboot keeps its slot until the agent stops, so heartbeats
//! keep naming it. At the next start the resume record (if any) is read before the first
//! session; the session that registers first resolves it before its first heartbeat: the flash
//! result is spooled and delivered, and only once the controller acknowledged it does the job
//! continue, in the slot, so that the first heartbeat already names it.

mod backoff;
mod failover;
pub use failover::parse_list as parse_controllers;
mod jobs;
mod renew;
mod resume;
mod session;
mod telemetry;
mod tls;
mod upload;

pub use session::token_path;

use crate::config::AgentConfig;
use crate::gpu::GpuSource;
use crate::runner::{RunnerContext, Stop};
use crate::spool::Spool;
use anyhow::Context;
use resume::PendingResume;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tollgate_domain::JobId;
use tollgate_proto::v1;
use tollgate_proto::v1::agent_service_client::AgentServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use upload::Held;

/// Deadline of a unary call (Register, ReportResult, PushTelemetry).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The job being run, owned by the slot; the job task removes it when done.
struct RunningJob {
    job_id: JobId,
    /// The latest epoch the controller assigned the job under; results spooled from now on
    /// carry it. Shared with the job task.
    lease_epoch: Arc<AtomicU64>,
    /// The step and attempt running now, `None` between attempts; written by the job task,
    /// read by every heartbeat.
    step: Arc<Mutex<Option<(u32, u32)>>>,
    stop: watch::Sender<Option<Stop>>,
    task: JoinHandle<()>,
}

/// Aborts a task when dropped, so nothing the agent spawned outlives it, even when the
/// caller aborts the agent's own task instead of shutting it down.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The agent: configuration, GPU source, spool and the shared state of its tasks.
pub struct Agent {
    config: AgentConfig,
    source: Arc<dyn GpuSource>,
    spool: Arc<Spool>,
    channel: Channel,
    /// The TLS settings of an `https://` controller (the certificate renewal replaces).
    tls: Option<Arc<tls::TlsSettings>>,
    /// The node token; written by the session after each registration, read by the uploader.
    token: watch::Sender<Option<String>>,
    /// At most one running job.
    job: Arc<Mutex<Option<RunningJob>>>,
    /// Progress (StepStarted) from the job task to whichever session is connected.
    progress_sender: mpsc::Sender<v1::AgentEvent>,
    /// Taken by [`Agent::run`], which lends it to each session in turn.
    progress: Option<mpsc::Receiver<v1::AgentEvent>>,
    /// Wakes the uploader: a new result was spooled or held, or a session (re)registered.
    upload: Arc<Notify>,
    /// Results not spooled, kept in memory until acknowledged.
    held: Held,
    /// Held during each pass over the spool, so the uploader and a session resolving a resume
    /// never deliver the same result at once.
    uploading: Arc<tokio::sync::Mutex<()>>,
    /// A job to continue after the reboot its flash needed, until the controller answered
    /// its flash result. Read at start-up; resolved by the first session that registers.
    resume: Arc<Mutex<Option<PendingResume>>>,
    /// Counters and the latest GPU values for `--metrics-listen`.
    metrics: Arc<crate::metrics::AgentMetrics>,
    /// What every step's environment is built from, read from the agent's own at start.
    step_environment: Arc<crate::runner::environment::StepEnvironment>,
    /// Each GPU's newest reading by a step's sampler, which the fleet stream sends while a
    /// job runs.
    latest: Arc<crate::fleet::LatestReadings>,
}

impl Agent {
    /// Prepares the agent; connects lazily, so the controller need not be up yet.
    pub fn new(
        config: AgentConfig,
        source: Arc<dyn GpuSource>,
        spool: Arc<Spool>,
    ) -> anyhow::Result<Self> {
        let (channel, tls) = channel(&config)?;
        let saved = session::read_token(&token_path(&config.state_dir))?;
        let (progress_sender, progress) = mpsc::channel(64);
        let step_environment = Arc::new(crate::runner::environment::StepEnvironment::of_agent(
            config.step_path.as_deref(),
            &config.pass_env,
        ));
        Ok(Self {
            step_environment,
            latest: Arc::default(),
            config,
            source,
            spool,
            channel,
            tls,
            token: watch::Sender::new(saved),
            job: Arc::new(Mutex::new(None)),
            progress_sender,
            progress: Some(progress),
            upload: Arc::new(Notify::new()),
            held: Held::default(),
            uploading: Arc::new(tokio::sync::Mutex::new(())),
            resume: Arc::new(Mutex::new(None)),
            metrics: Arc::default(),
        })
    }

    fn runner_context(&self) -> RunnerContext {
        RunnerContext {
            source: Arc::clone(&self.source),
            node: self.config.node.clone(),
            controller: self.config.controller.clone(),
            state_dir: self.config.state_dir.clone(),
            sample_interval: self.config.sample_interval,
            environment: Arc::clone(&self.step_environment),
            latest: Arc::clone(&self.latest),
        }
    }

    /// Runs sessions until `shutdown` resolves or a fatal error.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (shutdown_sender, mut shutdown_receiver) = watch::channel(false);
        let _watcher = AbortOnDrop(tokio::spawn(async move {
            shutdown.await;
            let _ = shutdown_sender.send(true);
        }));
        self.load_resume_record();
        self.report_leftover_attempt().await;
        let uploader = AbortOnDrop(tokio::spawn(upload::upload_loop(
            AgentServiceClient::new(self.channel.clone()),
            Arc::clone(&self.spool),
            Arc::clone(&self.held),
            self.token.subscribe(),
            Arc::clone(&self.upload),
            Arc::clone(&self.uploading),
            self.answers(),
            shutdown_receiver.clone(),
        )));
        let _fleet = AbortOnDrop(tokio::spawn(telemetry::fleet_loop(
            telemetry::FleetGpus {
                source: Arc::clone(&self.source),
                latest: Arc::clone(&self.latest),
            },
            AgentServiceClient::new(self.channel.clone()),
            self.token.subscribe(),
            Arc::clone(&self.job),
            self.config.fleet_interval,
            self.config.telemetry_buffer,
            Arc::clone(&self.metrics),
        )));
        let _metrics = match self.config.metrics_listen {
            Some(addr) => Some(AbortOnDrop(self.serve_metrics(addr).await?)),
            None => None,
        };
        let _renewal = self.tls.clone().map(|tls| {
            AbortOnDrop(tokio::spawn(renew::renew_loop(
                self.channel.clone(),
                tls,
                self.config.node.clone(),
                self.config.state_dir.clone(),
                shutdown_receiver.clone(),
            )))
        });
        let mut progress = self.progress.take().unwrap_or_else(|| mpsc::channel(1).1);
        let outcome = self
            .serve_sessions(&mut progress, &mut shutdown_receiver)
            .await;
        self.stop_job(Stop::Shutdown).await;
        drop(uploader);
        tracing::info!(node = %self.config.node, "agent stopped");
        outcome
    }
}

impl Drop for Agent {
    /// An agent dropped without a shutdown (its task aborted) takes its job down with it: the
    /// job task is aborted, which kills the step's process group through the runner's guard.
    fn drop(&mut self) {
        let running = self
            .job
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(running) = running {
            running.task.abort();
        }
    }
}

impl Agent {
    /// Binds `addr` and serves `GET /metrics` there until the agent stops.
    async fn serve_metrics(&self, addr: std::net::SocketAddr) -> anyhow::Result<JoinHandle<()>> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-listen {addr}"))?;
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics");
        let metrics = Arc::clone(&self.metrics);
        let spool = Arc::clone(&self.spool);
        let job = Arc::clone(&self.job);
        let node = self.config.node.clone();
        let scrape = move || {
            let metrics = Arc::clone(&metrics);
            let spool = Arc::clone(&spool);
            let job = Arc::clone(&job);
            let node = node.clone();
            async move {
                let steps_running = job
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .as_ref()
                    .and_then(|running| *running.step.lock().unwrap_or_else(|p| p.into_inner()))
                    .map_or(0, |_| 1);
                // Reading the spool's directory blocks.
                let spool_depth = tokio::task::spawn_blocking(move || {
                    spool.pending().map(|entries| entries.len()).unwrap_or(0)
                })
                .await
                .unwrap_or(0);
                let live = crate::metrics::Live {
                    spool_depth,
                    steps_running,
                };
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        tollgate_wire::prometheus::CONTENT_TYPE,
                    )],
                    metrics.render(&node, live),
                )
            }
        };
        let routes = axum::Router::new().route("/metrics", axum::routing::get(scrape));
        Ok(tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, routes).await {
                tracing::warn!(%error, "/metrics stopped serving");
            }
        }))
    }
}

/// The agent's channel to the controller: every connection through [`failover::Connector`]
/// (the replicas of `--controller` in turn), for `https://` presenting the node's current
/// certificate (renewal replaces it); plain only to loopback (`AgentConfig::check`).
/// Connects lazily.
fn channel(config: &AgentConfig) -> anyhow::Result<(Channel, Option<Arc<tls::TlsSettings>>)> {
    let identity = crate::identity::load(&config.state_dir)?;
    let (endpoint, connector) = connector(config, identity.as_ref())?;
    let tls = connector.tls();
    let channel = endpoint
        .connect_timeout(failover::CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(config.keepalive)
        .keep_alive_timeout(crate::config::KEEPALIVE_TIMEOUT)
        .connect_with_connector_lazy(connector);
    Ok((channel, tls))
}

/// The channel for enrollment: TLS trusting `--ca-file`, without a client certificate (the
/// node has none yet); connects now, to whichever replica answers.
pub(crate) async fn enrollment_channel(config: &AgentConfig) -> anyhow::Result<Channel> {
    let (endpoint, connector) = connector(config, None)?;
    endpoint
        .connect_timeout(failover::CONNECT_TIMEOUT)
        .connect_with_connector(connector)
        .await
        .with_context(|| format!("connecting to {}", config.controller))
}

/// The endpoint (its URI only names the first replica; the connector picks the replica) and
/// the connector over every replica of `--controller`.
fn connector(
    config: &AgentConfig,
    identity: Option<&crate::identity::Identity>,
) -> anyhow::Result<(Endpoint, failover::Connector)> {
    let addresses = failover::parse_list(&config.controller).map_err(anyhow::Error::msg)?;
    let tls = if config.controller.trim_start().starts_with("https://") {
        let Some(path) = &config.ca_file else {
            anyhow::bail!(
                "--ca-file is needed for {}: pass the controller's ca.pem",
                config.controller
            );
        };
        let ca_pem =
            std::fs::read(path).with_context(|| format!("reading --ca-file {}", path.display()))?;
        Some(tls::TlsSettings::new(ca_pem, identity)?)
    } else {
        None
    };
    let first = &addresses[0];
    let host = if first.host.contains(':') {
        format!("[{}]", first.host)
    } else {
        first.host.clone()
    };
    // The connector does TLS itself; tonic sees a plain URI.
    let endpoint = Endpoint::from_shared(format!("http://{host}:{}", first.port))
        .with_context(|| format!("controller address '{}'", first.url))?;
    Ok((endpoint, failover::Connector::new(addresses, tls)))
}

/// Resolves once shutdown was requested (or its sender is gone, which only happens then).
async fn until_shutdown(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here rather than hold it in a select.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// Wraps a message with the node's bearer token.
fn authorized<T>(message: T, token: &str) -> Result<Request<T>, Status> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| Status::internal("the node token is not valid ASCII metadata"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

fn describe(status: &Status, call: &str) -> String {
    format!("{call}: {:?}: {}", status.code(), status.message())
}
