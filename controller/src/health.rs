//! Health: what the gRPC health service says for the whole server and each service, and the
//! loop that follows whether the database accepts writes (`NOT_SERVING` while it refuses them,
//! probing every [`WRITE_PROBE_INTERVAL`]; `SERVING` and a fresh grace for every lease once it
//! accepts them again).

use crate::grpc;
use crate::shared::{Shared, stopped};
use crate::store;
use std::sync::Arc;
use std::time::Duration;
use tollgate_domain::Timestamp;
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

/// Every name the health service answers for: the whole server ("") and each service.
const HEALTH_NAMES: [&str; 12] = [
    "",
    <AgentServiceServer<grpc::agent::AgentApi> as tonic::server::NamedService>::NAME,
    <NodeServiceServer<grpc::node::NodeApi> as tonic::server::NamedService>::NAME,
    <ReleaseServiceServer<grpc::release::ReleaseApi> as tonic::server::NamedService>::NAME,
    <PlanServiceServer<grpc::plan::PlanApi> as tonic::server::NamedService>::NAME,
    <RunServiceServer<grpc::run::RunApi> as tonic::server::NamedService>::NAME,
    <GateServiceServer<grpc::gate::GateApi> as tonic::server::NamedService>::NAME,
    <IssueServiceServer<grpc::issue::IssueApi> as tonic::server::NamedService>::NAME,
    <RolloutServiceServer<grpc::rollout::RolloutApi> as tonic::server::NamedService>::NAME,
    <StatusServiceServer<grpc::status_report::StatusApi> as tonic::server::NamedService>::NAME,
    <ReportServiceServer<grpc::report::ReportApi> as tonic::server::NamedService>::NAME,
    <AuditServiceServer<grpc::audit::AuditApi> as tonic::server::NamedService>::NAME,
];

/// Sets every name of [`HEALTH_NAMES`] to `status`.
pub(crate) async fn set_health(
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

// Two probes that succeed, one interval apart, confirm that writes work again.
const _: () =
    assert!(WRITE_PROBE_INTERVAL.as_millis() >= store::WRITES_CONFIRMED_AFTER.as_millis());

/// Follows whether the database accepts writes until shutdown: while it refuses them the
/// health service says `NOT_SERVING` (for "" and every service) and a write is probed every
/// [`WRITE_PROBE_INTERVAL`]; once writes are accepted again (`store::WRITES_CONFIRMED_AFTER`
/// of successes, none refused) it says `SERVING` again, every lease gets a
/// fresh grace, and the log says how long the controller was degraded.
pub(crate) async fn follow_writes(
    shared: Arc<Shared>,
    reporter: tonic_health::server::HealthReporter,
) {
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
