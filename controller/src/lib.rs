//! The Tollgate controller: gRPC services for agents and managers, the store, the scheduler
//! loop, the lease watchdog and reports.
//!
//! [`run`] receives its listener and a shutdown future, so tests bind `127.0.0.1:0` and stop
//! it at will.
//!
//! # How shutdown flows
//!
//! `run` owns everything it starts. When the caller's shutdown future completes:
//!
//! 1. the internal shutdown flag ([`Shared::shutdown`]) is raised; every long-lived stream
//!    (agent sessions, `WatchRun`, `PushTelemetry`) watches it and ends, and the agent
//!    sessions are dropped so their command streams finish;
//! 2. the gRPC server stops accepting connections and lets in-flight requests finish (bounded
//!    by [`DRAIN_TIMEOUT`], so one stuck client cannot hold the process forever);
//! 3. the scheduler loop, the lease watchdog and the gate re-evaluation loop see the flag and
//!    return; `run` awaits them;
//! 4. the store is closed, waiting for in-flight statements.

pub mod clock;
pub mod config;
pub mod gates;
pub mod grpc;
pub mod lease;
pub mod report;
pub mod scheduler;
pub mod sessions;
pub mod store;

pub use config::ControllerConfig;

use anyhow::Context as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tollgate_domain::Timestamp;
use tollgate_proto::v1::agent_service_server::AgentServiceServer;
use tollgate_proto::v1::audit_service_server::AuditServiceServer;
use tollgate_proto::v1::gate_service_server::GateServiceServer;
use tollgate_proto::v1::node_service_server::NodeServiceServer;
use tollgate_proto::v1::plan_service_server::PlanServiceServer;
use tollgate_proto::v1::release_service_server::ReleaseServiceServer;
use tollgate_proto::v1::report_service_server::ReportServiceServer;
use tollgate_proto::v1::run_service_server::RunServiceServer;

/// How long in-flight requests may take to finish once shutdown started.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// State every service, the scheduler and the lease watchdog share, behind one `Arc`.
///
/// Ownership: `run` creates it and holds the only long-lived clone besides the services and
/// the two loops; everything in it is safe to use from any task. Shutdown is announced
/// through `shutdown`, never by dropping this.
#[derive(Debug)]
pub struct Shared {
    /// The database.
    pub store: store::Store,
    /// Flags and the clock.
    pub config: ControllerConfig,
    /// Live agent sessions: who can be sent a command right now.
    pub sessions: sessions::Sessions,
    /// Node tokens already seen, so a call does not cost a database lookup.
    pub tokens: grpc::auth::TokenCache,
    /// The controller's first clock read; leases get a fresh grace from here after a restart.
    pub started_at: Timestamp,
    /// When leases last got a fresh grace: the start, or the moment the database accepted
    /// writes again after refusing them (heartbeats could not be recorded meanwhile).
    leases_fresh_from: std::sync::Mutex<Timestamp>,
    /// Wakes the scheduler loop early (node connected, run started, job ended).
    scheduler_wake: Notify,
    /// Bumped after every change a run watcher may care about.
    changes: watch::Sender<u64>,
    /// Runs whose gate must be evaluated again; drained by `gates::run_loop`.
    reevaluation_requests: std::sync::Mutex<std::collections::BTreeSet<tollgate_domain::RunId>>,
    /// Wakes `gates::run_loop`.
    reevaluation_wake: Notify,
    /// Gates kept evaluated in memory.
    pub gate_cache: gates::GateCache,
    /// Raised once when shutdown starts.
    shutdown: watch::Sender<bool>,
}

impl Shared {
    /// Builds the shared state; `run` does this, and so can tests that drive the loops directly.
    pub fn new(store: store::Store, config: ControllerConfig) -> Self {
        let started_at = config.clock.now();
        Self {
            store,
            config,
            sessions: sessions::Sessions::default(),
            tokens: grpc::auth::TokenCache::default(),
            started_at,
            leases_fresh_from: std::sync::Mutex::new(started_at),
            scheduler_wake: Notify::new(),
            changes: watch::channel(0).0,
            reevaluation_requests: std::sync::Mutex::default(),
            reevaluation_wake: Notify::new(),
            gate_cache: gates::GateCache::default(),
            shutdown: watch::channel(false).0,
        }
    }

    /// The current time, from the configured clock.
    pub fn now(&self) -> Timestamp {
        self.config.clock.now()
    }

    /// Heartbeats older than this count as made at this moment (see `lease.rs`).
    pub fn leases_fresh_from(&self) -> Timestamp {
        *self
            .leases_fresh_from
            .lock()
            .expect("the timestamp is never poisoned: nothing panics while holding it")
    }

    /// Gives every lease a fresh grace from `now`, as a restart does: heartbeats that came
    /// while the database refused writes were lost, not missing.
    pub fn refresh_leases(&self, now: Timestamp) {
        let mut fresh_from = self
            .leases_fresh_from
            .lock()
            .expect("the timestamp is never poisoned: nothing panics while holding it");
        *fresh_from = (*fresh_from).max(now);
    }

    /// Asks the scheduler to look at pending jobs now rather than at its next tick.
    pub fn poke_scheduler(&self) {
        self.scheduler_wake.notify_one();
    }

    /// Asks for the gate that `run` feeds to be evaluated again soon (coalesced; see
    /// `gates::run_loop`).
    pub fn request_reevaluation(&self, run: &tollgate_domain::RunId) {
        self.reevaluation_requests
            .lock()
            .expect("the request set is never poisoned: nothing panics while holding it")
            .insert(run.clone());
        self.reevaluation_wake.notify_one();
    }

    /// Takes every pending re-evaluation request.
    fn take_reevaluation_requests(&self) -> std::collections::BTreeSet<tollgate_domain::RunId> {
        std::mem::take(
            &mut *self
                .reevaluation_requests
                .lock()
                .expect("the request set is never poisoned: nothing panics while holding it"),
        )
    }

    /// Tells run watchers that something changed.
    pub fn notify_changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// A receiver that sees every [`Shared::notify_changed`].
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A receiver whose value turns true when shutdown starts.
    pub fn subscribe_shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Starts shutdown: raises the flag and drops every agent session.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        self.sessions.close_all();
    }

    /// Waits until the scheduler is poked, `tick` passes, or shutdown starts; false on shutdown.
    async fn wait_for_work(&self, shutdown: &mut watch::Receiver<bool>, tick: Duration) -> bool {
        tokio::select! {
            () = self.scheduler_wake.notified() => {}
            () = tokio::time::sleep(tick) => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return false,
        }
        !*shutdown.borrow()
    }
}

/// Waits until `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped, which only happens when everything stops.
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// Runs the controller on `listener` until `shutdown` completes, then stops gracefully (see
/// the module docs for the order).
pub async fn run(
    config: ControllerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(config, listener, shutdown, |_serving| {}).await
}

/// What [`run_with`] hands its caller once the controller answers.
#[derive(Debug, Clone)]
pub struct Serving {
    /// The bound address.
    pub addr: std::net::SocketAddr,
    /// The controller's state, for tests that want to look without a gRPC round trip (which
    /// nodes have a live session, the store). Holding it does not delay shutdown.
    pub shared: Arc<Shared>,
}

/// [`run`], calling `on_serving` once the store is open and the services are about to answer
/// (`main` writes `--addr-file` there).
pub async fn run_with(
    config: ControllerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_serving: impl FnOnce(Serving),
) -> anyhow::Result<()> {
    let store = store::Store::connect(&config.database_url)
        .await
        .with_context(|| {
            format!(
                "opening the database {}",
                redact_database_url(&config.database_url)
            )
        })?;
    let local_addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    tracing::info!(
        addr = %local_addr,
        backend = store.backend(),
        data_dir = %config.data_dir.display(),
        "controller starting"
    );
    let report_key = report::signing_key::load_or_create(&config.data_dir)
        .context("loading the report signing key")?;
    let shared = Arc::new(Shared::new(store, config));
    let serving = Serving {
        addr: local_addr,
        shared: shared.clone(),
    };
    let result = serve(shared.clone(), report_key, listener, shutdown, move || {
        tracing::info!(addr = %local_addr, "serving");
        on_serving(serving);
    })
    .await;
    shared.store.close().await;
    tracing::info!("controller stopped");
    result
}

/// Serves every service and runs the loops until shutdown; does not close the store.
async fn serve(
    shared: Arc<Shared>,
    report_key: ed25519_dalek::SigningKey,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_serving: impl FnOnce(),
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, tonic_health::ServingStatus::Serving).await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tollgate_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tollgate_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service (v1alpha)")?;

    let scheduler_task = tokio::spawn(scheduler::run_loop(shared.clone()));
    let lease_task = tokio::spawn(lease::run_loop(shared.clone()));
    let gates_task = tokio::spawn(gates::run_loop(shared.clone()));
    let writes_task = tokio::spawn(follow_writes(shared.clone(), health_reporter.clone()));

    let signal = {
        let shared = shared.clone();
        let health_reporter = health_reporter.clone();
        async move {
            shutdown.await;
            tracing::info!("shutdown requested: no new connections, finishing in-flight requests");
            health_reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            shared.begin_shutdown();
        }
    };
    // Manager calls carry an API token naming their actor; agent calls carry node tokens,
    // checked by the agent service itself.
    let api_auth = shared.config.api_tokens.interceptor();
    if shared.config.api_tokens.is_empty() {
        tracing::warn!(
            "no API token configured: manager calls are accepted without authentication and \
             recorded as actor 'anonymous'; configure --api-token NAME=SECRET or --api-tokens-file"
        );
    }
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AgentServiceServer::new(grpc::agent::AgentApi::new(
            shared.clone(),
        )))
        .add_service(NodeServiceServer::with_interceptor(
            grpc::node::NodeApi::new(shared.clone()),
            api_auth.clone(),
        ))
        .add_service(ReleaseServiceServer::with_interceptor(
            grpc::release::ReleaseApi::new(shared.clone()),
            api_auth.clone(),
        ))
        .add_service(PlanServiceServer::with_interceptor(
            grpc::plan::PlanApi::new(shared.clone()),
            api_auth.clone(),
        ))
        .add_service(RunServiceServer::with_interceptor(
            grpc::run::RunApi::new(shared.clone()),
            api_auth.clone(),
        ))
        .add_service(GateServiceServer::with_interceptor(
            grpc::gate::GateApi::new(shared.clone()),
            api_auth.clone(),
        ))
        .add_service(ReportServiceServer::with_interceptor(
            grpc::report::ReportApi::new(shared.clone(), report_key),
            api_auth.clone(),
        ))
        .add_service(AuditServiceServer::with_interceptor(
            grpc::audit::AuditApi::new(shared.clone()),
            api_auth.clone(),
        ))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);
    tokio::pin!(server);
    // The listener is bound and queues connections already; the server answers them as soon
    // as it is first polled, right below.
    on_serving();

    let mut shutdown_rx = shared.subscribe_shutdown();
    let drain_deadline = async {
        stopped(&mut shutdown_rx).await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    let served = tokio::select! {
        served = &mut server => served.context("serving gRPC"),
        () = drain_deadline => {
            tracing::warn!(
                timeout_s = DRAIN_TIMEOUT.as_secs(),
                "in-flight requests did not finish in time; stopping anyway"
            );
            Ok(())
        }
    };
    // The server can also end on its own (an accept error); the loops must stop either way.
    shared.begin_shutdown();
    for (name, task) in [
        ("scheduler", scheduler_task),
        ("lease watchdog", lease_task),
        ("gate re-evaluation", gates_task),
        ("database health", writes_task),
    ] {
        if let Err(error) = task.await {
            tracing::error!(%error, "the {name} task panicked");
        }
    }
    served
}

/// Every name the health service answers for: the whole server ("") and each service.
const HEALTH_NAMES: [&str; 9] = [
    "",
    <AgentServiceServer<grpc::agent::AgentApi> as tonic::server::NamedService>::NAME,
    <NodeServiceServer<grpc::node::NodeApi> as tonic::server::NamedService>::NAME,
    <ReleaseServiceServer<grpc::release::ReleaseApi> as tonic::server::NamedService>::NAME,
    <PlanServiceServer<grpc::plan::PlanApi> as tonic::server::NamedService>::NAME,
    <RunServiceServer<grpc::run::RunApi> as tonic::server::NamedService>::NAME,
    <GateServiceServer<grpc::gate::GateApi> as tonic::server::NamedService>::NAME,
    <ReportServiceServer<grpc::report::ReportApi> as tonic::server::NamedService>::NAME,
    <AuditServiceServer<grpc::audit::AuditApi> as tonic::server::NamedService>::NAME,
];

/// Sets every name of [`HEALTH_NAMES`] to `status`.
async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    for name in HEALTH_NAMES {
        reporter.set_service_status(name, status).await;
    }
}

/// How often a write is tried while the database refuses them, so that recovery is noticed
/// even when nothing else writes.
pub const WRITE_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Follows whether the database accepts writes until shutdown: while it refuses them the
/// health service says `NOT_SERVING` (for "" and every service) and a write is probed every
/// [`WRITE_PROBE_INTERVAL`]; once one succeeds it says `SERVING` again, every lease gets a
/// fresh grace, and the log says how long the controller was degraded.
async fn follow_writes(shared: Arc<Shared>, reporter: tonic_health::server::HealthReporter) {
    let mut writes = shared.store.watch_writes();
    let mut shutdown = shared.subscribe_shutdown();
    let mut refused_since: Option<Timestamp> = None;
    loop {
        let state = writes.borrow_and_update().clone();
        match (state, refused_since) {
            (store::Writes::Refused(error), None) => {
                let now = shared.now();
                refused_since = Some(now);
                tracing::error!(
                    %error,
                    "the database refuses writes: health is NOT_SERVING, results and changes \
                     are refused until it accepts them again (checked every {}s)",
                    WRITE_PROBE_INTERVAL.as_secs()
                );
                if !shared.is_shutting_down() {
                    set_health(&reporter, tonic_health::ServingStatus::NotServing).await;
                }
            }
            (store::Writes::Accepted, Some(since)) => {
                let now = shared.now();
                refused_since = None;
                shared.refresh_leases(now);
                tracing::info!(
                    degraded_s = (now - since).num_seconds(),
                    "the database accepts writes again: health is SERVING, every lease gets \
                     a fresh grace"
                );
                if !shared.is_shutting_down() {
                    set_health(&reporter, tonic_health::ServingStatus::Serving).await;
                }
                shared.poke_scheduler();
            }
            _ => {}
        }
        let probe = async {
            if refused_since.is_some() {
                tokio::time::sleep(WRITE_PROBE_INTERVAL).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            changed = writes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = probe => {
                // Its outcome arrives through `writes` like any other write's.
                if let Err(error) = shared.store.probe_write().await {
                    tracing::debug!(%error, "the database still refuses writes");
                }
            }
            () = stopped(&mut shutdown) => break,
        }
    }
}

/// The database URL with any password replaced, for logs and error messages.
pub fn redact_database_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_passwords_never_reach_logs() {
        assert_eq!(
            redact_database_url("postgres://tg:s3cret@db:5432/tollgate"),
            "postgres://tg:***@db:5432/tollgate"
        );
        assert_eq!(
            redact_database_url("postgres://tg@db/tollgate"),
            "postgres://tg@db/tollgate"
        );
        assert_eq!(
            redact_database_url("sqlite://./.tollgate/tollgate.db"),
            "sqlite://./.tollgate/tollgate.db"
        );
    }
}
