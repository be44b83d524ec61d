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
//! 1. the internal shutdown flag is raised ([`Shared::begin_shutdown`]); every long-lived stream
//!    (agent sessions, `WatchRun`, `PushTelemetry`) watches it and ends, and the agent
//!    sessions are dropped so their command streams finish;
//! 2. the gRPC server stops accepting connections and lets in-flight requests finish (bounded
//!    by [`DRAIN_TIMEOUT`], so one stuck client cannot hold the process forever);
//! 3. the scheduler loop, the lease watchdog and the gate re-evaluation loop see the flag and
//!    return, and the dashboard (`http/`, when `--http-listen` is given) stops accepting,
//!    its event streams end and in-flight pages finish (bounded by [`DRAIN_TIMEOUT`] too);
//!    `run` awaits them;
//! 4. the store is closed, waiting for in-flight statements.

pub mod clock;
pub mod config;
pub mod drain;
pub mod drift;
pub mod fleet_history;
pub mod gate_cache;
pub mod gates;
pub mod group_commit;
pub mod grpc;
pub mod health;
pub mod health_checks;
pub mod heartbeats;
pub mod http;
pub mod issue_webhook;
pub mod issues;
pub mod job_reads;
pub mod lease;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod node_reads;
pub mod pki;
pub mod projections;
pub mod replica;
pub mod report;
pub mod reschedule;
pub mod rollout_eta;
pub mod rollouts;
pub mod scheduler;
pub mod sessions;
pub mod shared;
pub mod status_report;
pub mod store;
pub mod tokens;
pub mod traces;

pub use config::ControllerConfig;

use config::redact_database_url;
use health::{follow_writes, set_health};
use shared::{Shared, stopped};

use anyhow::Context as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tollgate_proto::v1::agent_service_server::AgentServiceServer;
use tollgate_proto::v1::audit_service_server::AuditServiceServer;
use tollgate_proto::v1::gate_service_server::GateServiceServer;
use tollgate_proto::v1::issue_service_server::IssueServiceServer;
use tollgate_proto::v1::node_service_server::NodeServiceServer;
use tollgate_proto::v1::plan_service_server::PlanServiceServer;
use tollgate_proto::v1::release_service_server::ReleaseServiceServer;
use tollgate_proto::v1::report_service_server::ReportServiceServer;
use tollgate_proto::v1::rollout_service_server::RolloutServiceServer;
use tollgate_proto::v1::run_service_server::RunServiceServer;
use tollgate_proto::v1::status_service_server::StatusServiceServer;
use tollgate_proto::v1::token_service_server::TokenServiceServer;

/// How long in-flight requests may take to finish once shutdown started.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The dashboard's bound address, when `ControllerConfig::http_listen` asked for one.
    pub http_addr: Option<std::net::SocketAddr>,
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
        })?
        .with_issue_webhook(config.issue_webhook.is_some());
    // Held until the controller stops: a second controller on this SQLite file is refused
    // (after opening it, so that a database that cannot be opened says so first).
    let _sole = match replica::sole_sqlite_controller(&config.database_url) {
        Ok(lock) => lock,
        Err(error) => {
            store.close().await;
            return Err(error);
        }
    };
    let local_addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    crate::listener::check(&config.transport, local_addr)?;
    // The dashboard's listener, under the same transport rule: TLS, or plain text on loopback.
    let http_listener = match bind_dashboard(&config).await {
        Ok(listener) => listener,
        Err(error) => {
            store.close().await;
            return Err(error);
        }
    };
    let http_addr = http_listener
        .as_ref()
        .map(tokio::net::TcpListener::local_addr)
        .transpose()
        .context("reading the dashboard listener's address")?;
    tracing::info!(
        addr = %local_addr,
        tls = matches!(config.transport, crate::listener::Transport::Tls(_)),
        backend = store.backend(),
        data_dir = %config.data_dir.display(),
        "controller starting"
    );
    let report_key =
        report::keys::key_at_start(&store, &config.data_dir, config.clock.now()).await?;
    let shared = Arc::new(Shared::new(store, config));
    shared
        .api_tokens
        .reload(&shared.store)
        .await
        .context("loading the API tokens")?;
    shared.revocations.add(
        shared
            .store
            .revoked_certificates()
            .await
            .context("loading the revoked node certificates")?
            .into_iter()
            .map(|(serial, _node)| serial),
    );
    let serving = Serving {
        addr: local_addr,
        http_addr,
        shared: shared.clone(),
    };
    let listeners = Listeners {
        grpc: listener,
        http: http_listener,
    };
    let result = serve(shared.clone(), report_key, listeners, shutdown, move || {
        tracing::info!(addr = %local_addr, "serving");
        if let Some(http_addr) = http_addr {
            tracing::info!(addr = %http_addr, "dashboard serving");
        }
        on_serving(serving);
    })
    .await;
    shared.store.close().await;
    tracing::info!("controller stopped");
    result
}

/// Binds the dashboard's listener when `http_listen` asks for one; plain text is refused off
/// loopback as it is for the gRPC listener.
async fn bind_dashboard(
    config: &ControllerConfig,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = config.http_listen else {
        return Ok(None);
    };
    crate::listener::check(&config.transport, addr)?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("listening for the dashboard on {addr}; pick another with --http-listen")
    })?;
    Ok(Some(listener))
}

/// The listeners `serve` answers on: gRPC, and the dashboard's when configured.
struct Listeners {
    grpc: tokio::net::TcpListener,
    http: Option<tokio::net::TcpListener>,
}

/// Serves every service and runs the loops until shutdown; does not close the store.
async fn serve(
    shared: Arc<Shared>,
    report_key: ed25519_dalek::SigningKey,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_serving: impl FnOnce(),
) -> anyhow::Result<()> {
    let Listeners {
        grpc: listener,
        http: http_listener,
    } = listeners;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, tonic_health::ServingStatus::Serving).await;
    let router = router(&shared, report_key, health_service)?;

    let scheduler_task = tokio::spawn(scheduler::run_loop(shared.clone()));
    let lease_task = tokio::spawn(lease::run_loop(shared.clone()));
    let gates_task = tokio::spawn(gates::run_loop(shared.clone()));
    let writes_task = tokio::spawn(follow_writes(shared.clone(), health_reporter.clone()));
    let sync_task = tokio::spawn(replica::sync_loop(shared.clone()));
    let wake_task = tokio::spawn(replica::wake_loop(shared.clone()));
    let fleet_task = tokio::spawn(fleet_history::run_loop(shared.clone()));
    let heartbeats_task = tokio::spawn(heartbeats::run_loop(shared.clone()));
    let metrics_task = tokio::spawn(metrics::run_upkeep_loop(shared.clone()));
    let webhook_task = tokio::spawn(issue_webhook::run_loop(shared.clone()));
    let http_task =
        http_listener.map(|listener| tokio::spawn(http::serve(shared.clone(), listener)));

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
    let incoming = crate::listener::incoming(
        listener,
        shared.config.transport.clone(),
        shared.config.connections,
        shared.revocations.clone(),
        shared.subscribe_shutdown(),
    );
    let server = router.serve_with_incoming_shutdown(incoming, signal);
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
        ("replica sync", sync_task),
        ("replica wake", wake_task),
        ("fleet telemetry writer", fleet_task),
        ("heartbeat flusher", heartbeats_task),
        ("metrics upkeep", metrics_task),
        ("issue webhook", webhook_task),
    ] {
        if let Err(error) = task.await {
            tracing::error!(%error, "the {name} task panicked");
        }
    }
    if let Some(mut task) = http_task {
        // Dashboard requests get the same deadline as gRPC ones: a client that holds a page or
        // a report download open longer is cut off.
        match tokio::time::timeout(DRAIN_TIMEOUT, &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::error!("{error:#}"),
            Ok(Err(error)) => tracing::error!(%error, "the dashboard task panicked"),
            Err(_) => {
                tracing::warn!(
                    timeout_s = DRAIN_TIMEOUT.as_secs(),
                    "dashboard requests did not finish in time; stopping anyway"
                );
                task.abort();
            }
        }
    }
    served
}

/// Every service the controller answers: health, reflection, the agent service (checked by
/// node tokens in its handlers) and the manager services behind the API token interceptor.
fn router(
    shared: &Arc<Shared>,
    report_key: ed25519_dalek::SigningKey,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> anyhow::Result<
    tonic::transport::server::Router<
        tower::layer::util::Stack<
            grpc::limits::OversizeLayer,
            tower::layer::util::Stack<grpc::timing::TimingLayer, tower::layer::util::Identity>,
        >,
    >,
> {
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
    // Manager calls carry an API token naming their actor; agent calls carry node tokens,
    // checked by the agent service itself. Each manager service's interceptor sits inside
    // `WithPath`, so it knows the RPC and checks it against the authorization table
    // (`grpc/authz.rs`).
    let api_auth = grpc::auth::interceptor(shared.clone());
    if shared.config.api_tokens.is_empty() && shared.api_tokens.is_empty() {
        tracing::warn!(
            "no API token configured: manager calls from this host's loopback are accepted \
             without authentication and recorded as actor 'anonymous', others are refused; \
             configure --api-token-file with NAME[:ROLE] SECRET lines"
        );
    }
    // Manager calls are authenticated, then counted against their caller's rate limit.
    let api_auth = grpc::limits::rate_limited(api_auth, shared.clone());
    // Stated per service, not left to tonic's default (see `grpc::limits` for each size): a
    // larger request is refused before it is decoded, as `RESOURCE_EXHAUSTED`
    // (`oversize_layer`), and every field limit is far below it, so an oversize field always
    // reaches the field checks: `INVALID_ARGUMENT` naming it.
    use grpc::auth::WithPath;
    use grpc::limits::{AGENT_REQUEST_BYTES, SMALL_REQUEST_BYTES, SPEC_REQUEST_BYTES};
    use tonic::service::interceptor::InterceptedService;
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Pings keep a live client's connection busy, so only a silent one reaches the
        // listener's idle timeout; one that does not answer within 10 s is closed.
        .http2_keepalive_interval(Some(crate::listener::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        // Outermost, so that it sees the code the oversize rewrite answers.
        .layer(grpc::timing::TimingLayer::new(shared.clone()))
        .layer(grpc::limits::oversize_layer())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(grpc::admission::Admitted::new(
            AgentServiceServer::new(grpc::agent::AgentApi::new(shared.clone()))
                .max_decoding_message_size(AGENT_REQUEST_BYTES),
            grpc::admission::RESULTS_IN_FLIGHT,
        ))
        .add_service(WithPath(InterceptedService::new(
            NodeServiceServer::new(grpc::node::NodeApi::new(shared.clone()))
                .max_decoding_message_size(SMALL_REQUEST_BYTES),
            api_auth.clone(),
        )))
        .add_service(WithPath(InterceptedService::new(
            ReleaseServiceServer::new(grpc::release::ReleaseApi::new(shared.clone()))
                .max_decoding_message_size(SPEC_REQUEST_BYTES),
            api_auth.clone(),
        )))
        .add_service(WithPath(InterceptedService::new(
            PlanServiceServer::new(grpc::plan::PlanApi::new(shared.clone()))
                .max_decoding_message_size(SPEC_REQUEST_BYTES),
            api_auth.clone(),
        )))
        .add_service(WithPath(InterceptedService::new(
            RunServiceServer::new(grpc::run::RunApi::new(shared.clone()))
                .max_decoding_message_size(SMALL_REQUEST_BYTES),
            api_auth.clone(),
        )))
        .add_service(WithPath(InterceptedService::new(
            RolloutServiceServer::new(grpc::rollout::RolloutApi::new(shared.clone()))
                .max_decoding_message_size(SPEC_REQUEST_BYTES),
            api_auth.clone(),
        )))
        .add_service(WithPath(InterceptedService::new(
            GateServiceServer::new(grpc::gate::GateApi::new(shared.clone()))
                .max_decoding_message_size(SPEC_REQUEST_BYTES),
            api_auth.clone(),
        )))
        .add_service(WithPath(InterceptedService::new(
            IssueServiceServer::new(grpc::issue::IssueApi::new(shared.clone()))
                .max_decoding_message_size(SPEC_REQUEST_BYTES),
            api_auth.clone(),
        )))
        .add_service(WithPath(InterceptedService::new(
            ReportServiceServer::new(grpc::report::ReportApi::new(
                shared.clone(),
                report::keys::Signer::new(shared.config.data_dir.clone(), report_key),
            ))
            .max_decoding_message_size(SMALL_REQUEST_BYTES),
            api_auth.clone(),
        )))
        .add_service(WithPath(InterceptedService::new(
            AuditServiceServer::new(grpc::audit::AuditApi::new(shared.clone()))
                .max_decoding_message_size(SMALL_REQUEST_BYTES),
            api_auth.clone(),
        )))
        .add_service(WithPath(InterceptedService::new(
            StatusServiceServer::new(grpc::status_report::StatusApi::new(shared.clone()))
                .max_decoding_message_size(SMALL_REQUEST_BYTES),
            api_auth.clone(),
        )))
        .add_service(WithPath(InterceptedService::new(
            TokenServiceServer::new(grpc::token::TokenApi::new(shared.clone()))
                .max_decoding_message_size(SMALL_REQUEST_BYTES),
            api_auth.clone(),
        )));
    Ok(router)
}
