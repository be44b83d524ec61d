//! The authorization matrix: every RPC, manager's and agent's, called over a real TLS socket
//! by every identity (no credential, an unknown, an expired and a revoked API token, each
//! role, two customers, an expired and a spent bootstrap token, node A's and node B's enrolled
//! certificates, a revoked node's), compared with this file's own literal table, so a change
//! of the controller's rules fails here until the expectation is changed too. Then what each
//! customer sees: none of the other's nodes, runs, evidence or issues, and of a release only
//! for the other, nothing at all: every call naming it answers as for a release nobody made,
//! and nothing it reads names it. And README.md's
//! "Authorization" section is the controller's table.

use std::sync::Arc;
use std::time::Duration;
use tollgate_controller::clock::{Clock, ManualClock, SystemClock};
use tollgate_proto::v1;
use tollgate_tests::{Agent, Backend, Controller, ControllerOptions, gate_yaml, plan_yaml};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The identities, in the order of the expected table's columns. API tokens and bootstrap
/// tokens are sent as bearer tokens on a TLS connection without a client certificate; node
/// identities present their enrolled certificate and no token.
const IDENTITIES: [&str; 15] = [
    "none",
    "unknown",
    "expired",
    "revoked",
    "viewer",
    "operator",
    "release-manager",
    "admin",
    "customer-a",
    "customer-b",
    "bootstrap-expired",
    "bootstrap-spent",
    "node-a",
    "node-b",
    "node-revoked",
];

/// What each identity gets from each RPC, in [`IDENTITIES`] order: `A` allowed (any answer
/// but the three below), `D` PermissionDenied, `U` Unauthenticated, `X` the connection closed
/// by the controller before any answer (a revoked certificate is refused at the handshake). Written out by hand: it is
/// not read from the controller's table. Agent calls act as node A, on node A's job; a node
/// may open its own streams and renew its own certificate; nobody enrolls without a live
/// bootstrap token.
const EXPECTED: &[(&str, &str)] = &[
    ("AgentService/Register", "UUUU UUUU UU UU ADX"),
    ("AgentService/Connect", "UUUU UUUU UU UU AAX"),
    ("AgentService/ReportResult", "UUUU UUUU UU UU ADX"),
    ("AgentService/PushTelemetry", "UUUU UUUU UU UU AAX"),
    ("AgentService/Enroll", "UUUU UUUU UU UU UUX"),
    ("AgentService/RenewCertificate", "UUUU UUUU UU UU AAX"),
    ("NodeService/ListNodes", "UUUU AAAA AA UU UUX"),
    ("NodeService/GetNode", "UUUU AAAA AA UU UUX"),
    ("NodeService/SetCordon", "UUUU DADA DD UU UUX"),
    ("NodeService/SetHealth", "UUUU DADA DD UU UUX"),
    ("NodeService/DrainNode", "UUUU DADA DD UU UUX"),
    ("NodeService/RetireNode", "UUUU DADA DD UU UUX"),
    ("NodeService/EnrollNode", "UUUU DDDA DD UU UUX"),
    ("NodeService/RevokeNode", "UUUU DDDA DD UU UUX"),
    ("NodeService/AddMaintenanceWindow", "UUUU DADA DD UU UUX"),
    ("NodeService/ListMaintenanceWindows", "UUUU AAAA DD UU UUX"),
    ("NodeService/EndMaintenanceWindow", "UUUU DADA DD UU UUX"),
    ("NodeService/SetHealthPlan", "UUUU DADA DD UU UUX"),
    ("NodeService/ListHealthPlans", "UUUU AAAA DD UU UUX"),
    ("NodeService/RemoveHealthPlan", "UUUU DADA DD UU UUX"),
    ("NodeService/GetNodeTelemetry", "UUUU AAAA AA UU UUX"),
    ("ReleaseService/CreateRelease", "UUUU DDAA DD UU UUX"),
    ("ReleaseService/GetRelease", "UUUU AAAA AA UU UUX"),
    ("ReleaseService/ListReleases", "UUUU AAAA AA UU UUX"),
    ("ReleaseService/Promote", "UUUU DDAA DD UU UUX"),
    ("ReleaseService/Demote", "UUUU DDAA DD UU UUX"),
    ("ReleaseService/Halt", "UUUU DDAA DD UU UUX"),
    ("ReleaseService/Resume", "UUUU DDAA DD UU UUX"),
    ("ReleaseService/SetMilestoneTarget", "UUUU DDAA DD UU UUX"),
    ("ReleaseService/SetCustomers", "UUUU DDAA DD UU UUX"),
    ("PlanService/ApplyPlan", "UUUU DDAA DD UU UUX"),
    ("PlanService/GetPlan", "UUUU AAAA DD UU UUX"),
    ("PlanService/ListPlans", "UUUU AAAA DD UU UUX"),
    ("RolloutService/StartRollout", "UUUU DDAA DD UU UUX"),
    ("RolloutService/GetRollout", "UUUU AAAA AA UU UUX"),
    ("RolloutService/ListRollouts", "UUUU AAAA AA UU UUX"),
    ("RolloutService/WatchRollout", "UUUU AAAA AA UU UUX"),
    ("RolloutService/PauseRollout", "UUUU DDAA DD UU UUX"),
    ("RolloutService/ResumeRollout", "UUUU DDAA DD UU UUX"),
    ("RolloutService/AbortRollout", "UUUU DDAA DD UU UUX"),
    ("RolloutService/SkipWave", "UUUU DDAA DD UU UUX"),
    ("RunService/StartRun", "UUUU DADA DD UU UUX"),
    ("RunService/GetRun", "UUUU AAAA AA UU UUX"),
    ("RunService/ListRuns", "UUUU AAAA AA UU UUX"),
    ("RunService/WatchRun", "UUUU AAAA AA UU UUX"),
    ("RunService/CancelRun", "UUUU DADA DD UU UUX"),
    ("GateService/ApplyGate", "UUUU DDAA DD UU UUX"),
    ("GateService/GetGate", "UUUU AAAA DD UU UUX"),
    ("GateService/EvaluateGate", "UUUU AAAA AA UU UUX"),
    ("GateService/StreamDecision", "UUUU AAAA AA UU UUX"),
    ("GateService/Waive", "UUUU DDAA DD UU UUX"),
    ("GateService/RevokeWaiver", "UUUU DDAA DD UU UUX"),
    ("GateService/ListWaivers", "UUUU AAAA DD UU UUX"),
    ("IssueService/OpenIssue", "UUUU DDAA DD UU UUX"),
    ("IssueService/GetIssue", "UUUU AAAA AA UU UUX"),
    ("IssueService/ListIssues", "UUUU AAAA AA UU UUX"),
    ("IssueService/UpdateIssue", "UUUU DDAA DD UU UUX"),
    ("IssueService/SetFixRelease", "UUUU DDAA DD UU UUX"),
    ("IssueService/WontFix", "UUUU DDAA DD UU UUX"),
    ("IssueService/Reopen", "UUUU DDAA DD UU UUX"),
    ("IssueService/ImportIssues", "UUUU DDAA DD UU UUX"),
    ("AuditService/ListAudit", "UUUU AAAA DD UU UUX"),
    ("AuditService/VerifyAudit", "UUUU AAAA DD UU UUX"),
    ("ReportService/RenderReport", "UUUU AAAA AA UU UUX"),
    ("ReportService/StreamReport", "UUUU AAAA AA UU UUX"),
    ("ReportService/GetPublicKey", "UUUU AAAA AA UU UUX"),
    ("ReportService/RenderAttestation", "UUUU AAAA DD UU UUX"),
    ("TokenService/CreateToken", "UUUU DDDA DD UU UUX"),
    ("TokenService/ListTokens", "UUUU DDDA DD UU UUX"),
    ("TokenService/RevokeToken", "UUUU DDDA DD UU UUX"),
    ("StatusService/RenderStatus", "UUUU AAAA AA UU UUX"),
    ("StatusService/AddNote", "UUUU DDAA DD UU UUX"),
    ("StatusService/ListNotes", "UUUU AAAA DD UU UUX"),
    ("StatusService/CompleteAction", "UUUU DDAA DD UU UUX"),
];

/// Adds the bearer token, when there is one.
#[derive(Clone)]
struct Bearer(Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(secret) = &self.0 {
            let value = format!("Bearer {secret}")
                .parse()
                .expect("a token is header text");
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// Every manager client, calling as one identity.
#[derive(Clone)]
struct As {
    nodes: v1::node_service_client::NodeServiceClient<Authed>,
    releases: v1::release_service_client::ReleaseServiceClient<Authed>,
    plans: v1::plan_service_client::PlanServiceClient<Authed>,
    runs: v1::run_service_client::RunServiceClient<Authed>,
    rollouts: v1::rollout_service_client::RolloutServiceClient<Authed>,
    gates: v1::gate_service_client::GateServiceClient<Authed>,
    audit: v1::audit_service_client::AuditServiceClient<Authed>,
    reports: v1::report_service_client::ReportServiceClient<Authed>,
    tokens: v1::token_service_client::TokenServiceClient<Authed>,
    issues: v1::issue_service_client::IssueServiceClient<Authed>,
    status: v1::status_service_client::StatusServiceClient<Authed>,
    agent: v1::agent_service_client::AgentServiceClient<Authed>,
    /// The bearer secret, if any (sent as the bootstrap token of `Enroll`).
    secret: Option<String>,
}

impl As {
    fn new(channel: &Channel, secret: Option<&str>) -> Self {
        let bearer = Bearer(secret.map(str::to_owned));
        let channel = channel.clone();
        Self {
            nodes: v1::node_service_client::NodeServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            releases: v1::release_service_client::ReleaseServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            plans: v1::plan_service_client::PlanServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            runs: v1::run_service_client::RunServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            rollouts: v1::rollout_service_client::RolloutServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            gates: v1::gate_service_client::GateServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            audit: v1::audit_service_client::AuditServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            reports: v1::report_service_client::ReportServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            issues: v1::issue_service_client::IssueServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            tokens: v1::token_service_client::TokenServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            status: v1::status_service_client::StatusServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            agent: v1::agent_service_client::AgentServiceClient::with_interceptor(channel, bearer),
            secret: secret.map(str::to_owned),
        }
    }
}

/// What the calls name: a real release, run, plan and node, and node A's finished job; and
/// the run of the release only for customer b.
struct World {
    run_id: String,
    job_a: String,
    hidden_run_id: String,
}

const RELEASE: &str = "r550";
/// A release only for customer b: to customer a, a release that does not exist.
const HIDDEN: &str = "r549-b";
/// A release nobody made.
const MISSING: &str = "r000-none";
const PLAN: &str = "gpu-qual";
/// An issue number no issue has.
const NO_ISSUE: i64 = 999_999;

/// Makes the call `rpc` names. Requests that would change something name things that do not
/// exist or are invalid: authorization comes first, so the answer still says whether the call
/// got past it, and the world stays as it was for the next identity.
async fn call(clients: &As, rpc: &str, world: &World) -> Result<(), tonic::Status> {
    let mut c = clients.clone();
    let release = || RELEASE.to_owned();
    let missing = || "no-such-thing".to_owned();
    match rpc {
        "NodeService/ListNodes" => c
            .nodes
            .list_nodes(v1::ListNodesRequest::default())
            .await
            .map(drop),
        "NodeService/GetNode" => c
            .nodes
            .get_node(v1::GetNodeRequest {
                name: "node-a".into(),
            })
            .await
            .map(drop),
        "NodeService/SetCordon" => c
            .nodes
            .set_cordon(v1::SetCordonRequest {
                name: missing(),
                cordoned: true,
            })
            .await
            .map(drop),
        "NodeService/SetHealth" => c
            .nodes
            .set_health(v1::SetHealthRequest {
                name: missing(),
                health: "good".into(),
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        "NodeService/DrainNode" => c
            .nodes
            .drain_node(v1::DrainNodeRequest {
                name: missing(),
                reason: "matrix".into(),
                deadline_seconds: 0,
            })
            .await
            .map(drop),
        "NodeService/RetireNode" => c
            .nodes
            .retire_node(v1::RetireNodeRequest {
                name: missing(),
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        // An empty node name: refused as invalid once past authorization, so nothing is made.
        "NodeService/EnrollNode" => c
            .nodes
            .enroll_node(v1::EnrollNodeRequest::default())
            .await
            .map(drop),
        "NodeService/RevokeNode" => c
            .nodes
            .revoke_node(v1::RevokeNodeRequest {
                node_name: missing(),
            })
            .await
            .map(drop),
        // Invalid (no label, no end) once past authorization: nothing is opened.
        "NodeService/AddMaintenanceWindow" => c
            .nodes
            .add_maintenance_window(v1::AddMaintenanceWindowRequest::default())
            .await
            .map(drop),
        "NodeService/ListMaintenanceWindows" => c
            .nodes
            .list_maintenance_windows(v1::ListMaintenanceWindowsRequest::default())
            .await
            .map(drop),
        "NodeService/EndMaintenanceWindow" => c
            .nodes
            .end_maintenance_window(v1::EndMaintenanceWindowRequest {
                id: missing(),
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        // A period of 0: invalid once past authorization, so nothing is set.
        "NodeService/SetHealthPlan" => c
            .nodes
            .set_health_plan(v1::SetHealthPlanRequest::default())
            .await
            .map(drop),
        "NodeService/ListHealthPlans" => c
            .nodes
            .list_health_plans(v1::ListHealthPlansRequest {})
            .await
            .map(drop),
        "NodeService/RemoveHealthPlan" => c
            .nodes
            .remove_health_plan(v1::RemoveHealthPlanRequest { plan: missing() })
            .await
            .map(drop),
        "NodeService/GetNodeTelemetry" => c
            .nodes
            .get_node_telemetry(v1::GetNodeTelemetryRequest {
                node: "node-a".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "ReleaseService/CreateRelease" => c
            .releases
            .create_release(v1::CreateReleaseRequest::default())
            .await
            .map(drop),
        "ReleaseService/GetRelease" => c
            .releases
            .get_release(v1::GetReleaseRequest { name: release() })
            .await
            .map(drop),
        "ReleaseService/ListReleases" => c
            .releases
            .list_releases(v1::ListReleasesRequest::default())
            .await
            .map(drop),
        "ReleaseService/Promote" => c
            .releases
            .promote(v1::PromoteRequest { name: missing() })
            .await
            .map(drop),
        "ReleaseService/Demote" => c
            .releases
            .demote(v1::DemoteRequest {
                release: missing(),
                to_milestone: "lab-qual".into(),
                reason: "m".into(),
            })
            .await
            .map(drop),
        "ReleaseService/Halt" => c
            .releases
            .halt(v1::HaltRequest {
                release: missing(),
                reason: "m".into(),
            })
            .await
            .map(drop),
        "ReleaseService/Resume" => c
            .releases
            .resume(v1::ResumeRequest {
                release: missing(),
                reason: "m".into(),
            })
            .await
            .map(drop),
        "ReleaseService/SetCustomers" => c
            .releases
            .set_customers(v1::SetCustomersRequest {
                release: missing(),
                customers: vec!["acme".into()],
            })
            .await
            .map(drop),
        "ReleaseService/SetMilestoneTarget" => c
            .releases
            .set_milestone_target(v1::SetMilestoneTargetRequest {
                release: missing(),
                milestone: "lab-qual".into(),
                target_date: "2027-01-15".into(),
                reason: String::new(),
            })
            .await
            .map(drop),
        "PlanService/ApplyPlan" => c
            .plans
            .apply_plan(v1::ApplyPlanRequest::default())
            .await
            .map(drop),
        "PlanService/GetPlan" => c
            .plans
            .get_plan(v1::GetPlanRequest {
                name: PLAN.into(),
                version: String::new(),
            })
            .await
            .map(drop),
        "PlanService/ListPlans" => c.plans.list_plans(v1::ListPlansRequest {}).await.map(drop),
        "RolloutService/StartRollout" => c
            .rollouts
            .start_rollout(v1::StartRolloutRequest {
                release: missing(),
                ..Default::default()
            })
            .await
            .map(drop),
        "RolloutService/GetRollout" => c
            .rollouts
            .get_rollout(v1::GetRolloutRequest { id: missing() })
            .await
            .map(drop),
        "RolloutService/ListRollouts" => c
            .rollouts
            .list_rollouts(v1::ListRolloutsRequest::default())
            .await
            .map(drop),
        "RolloutService/WatchRollout" => c
            .rollouts
            .watch_rollout(v1::GetRolloutRequest { id: missing() })
            .await
            .map(drop),
        "RolloutService/PauseRollout" => c
            .rollouts
            .pause_rollout(v1::RolloutActionRequest {
                id: missing(),
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        "RolloutService/ResumeRollout" => c
            .rollouts
            .resume_rollout(v1::RolloutActionRequest {
                id: missing(),
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        "RolloutService/AbortRollout" => c
            .rollouts
            .abort_rollout(v1::AbortRolloutRequest {
                id: missing(),
                reason: "matrix".into(),
                rollback: true,
            })
            .await
            .map(drop),
        "RolloutService/SkipWave" => c
            .rollouts
            .skip_wave(v1::RolloutActionRequest {
                id: missing(),
                reason: "matrix".into(),
            })
            .await
            .map(drop),
        "RunService/StartRun" => c
            .runs
            .start_run(v1::StartRunRequest {
                release: missing(),
                plan: PLAN.into(),
                ..Default::default()
            })
            .await
            .map(drop),
        "RunService/GetRun" => c
            .runs
            .get_run(v1::GetRunRequest {
                id: world.run_id.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        "RunService/ListRuns" => c
            .runs
            .list_runs(v1::ListRunsRequest {
                release: release(),
                ..Default::default()
            })
            .await
            .map(drop),
        "RunService/WatchRun" => c
            .runs
            .watch_run(v1::GetRunRequest {
                id: world.run_id.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        "RunService/CancelRun" => c
            .runs
            .cancel_run(v1::CancelRunRequest { id: missing() })
            .await
            .map(drop),
        "GateService/ApplyGate" => c
            .gates
            .apply_gate(v1::ApplyGateRequest::default())
            .await
            .map(drop),
        "GateService/GetGate" => c
            .gates
            .get_gate(v1::GetGateRequest {
                milestone: "lab-qual".into(),
            })
            .await
            .map(drop),
        "GateService/EvaluateGate" => c
            .gates
            .evaluate_gate(v1::EvaluateGateRequest {
                release: release(),
                milestone: String::new(),
                at: None,
            })
            .await
            .map(drop),
        "GateService/StreamDecision" => c
            .gates
            .stream_decision(v1::EvaluateGateRequest {
                release: release(),
                milestone: String::new(),
                at: None,
            })
            .await
            .map(drop),
        "GateService/Waive" => c.gates.waive(v1::WaiveRequest::default()).await.map(drop),
        "GateService/RevokeWaiver" => c
            .gates
            .revoke_waiver(v1::RevokeWaiverRequest { id: missing() })
            .await
            .map(drop),
        "GateService/ListWaivers" => c
            .gates
            .list_waivers(v1::ListWaiversRequest {
                release: release(),
                ..Default::default()
            })
            .await
            .map(drop),
        "AuditService/ListAudit" => c
            .audit
            .list_audit(v1::ListAuditRequest::default())
            .await
            .map(drop),
        "AuditService/VerifyAudit" => c
            .audit
            .verify_audit(v1::VerifyAuditRequest {})
            .await
            .map(drop),
        "ReportService/RenderReport" => c.reports.render_report(report_request()).await.map(drop),
        "ReportService/StreamReport" => c.reports.stream_report(report_request()).await.map(drop),
        "ReportService/GetPublicKey" => c
            .reports
            .get_public_key(v1::GetPublicKeyRequest {})
            .await
            .map(drop),
        "ReportService/RenderAttestation" => c
            .reports
            .render_attestation(v1::RenderAttestationRequest {
                release: release(),
                milestone: String::new(),
            })
            .await
            .map(drop),
        "TokenService/CreateToken" => c
            .tokens
            .create_token(v1::CreateTokenRequest::default())
            .await
            .map(drop),
        "TokenService/ListTokens" => c
            .tokens
            .list_tokens(v1::ListTokensRequest {})
            .await
            .map(drop),
        "TokenService/RevokeToken" => c
            .tokens
            .revoke_token(v1::RevokeTokenRequest { name: missing() })
            .await
            .map(drop),
        "IssueService/OpenIssue" => c
            .issues
            .open_issue(v1::OpenIssueRequest::default())
            .await
            .map(drop),
        "IssueService/GetIssue" => c
            .issues
            .get_issue(v1::GetIssueRequest { id: NO_ISSUE })
            .await
            .map(drop),
        "IssueService/ListIssues" => c
            .issues
            .list_issues(v1::ListIssuesRequest::default())
            .await
            .map(drop),
        "IssueService/UpdateIssue" => c
            .issues
            .update_issue(v1::UpdateIssueRequest {
                id: NO_ISSUE,
                title: Some("no such issue".into()),
                ..Default::default()
            })
            .await
            .map(drop),
        "IssueService/SetFixRelease" => c
            .issues
            .set_fix_release(v1::SetFixReleaseRequest {
                id: NO_ISSUE,
                release: release(),
                note: String::new(),
            })
            .await
            .map(drop),
        "IssueService/WontFix" => c
            .issues
            .wont_fix(v1::WontFixRequest {
                id: NO_ISSUE,
                reason: "no such issue".into(),
            })
            .await
            .map(drop),
        "IssueService/Reopen" => c
            .issues
            .reopen(v1::ReopenIssueRequest {
                id: NO_ISSUE,
                reason: String::new(),
            })
            .await
            .map(drop),
        "IssueService/ImportIssues" => c
            .issues
            .import_issues(v1::ImportIssuesRequest::default())
            .await
            .map(drop),
        "StatusService/RenderStatus" => c
            .status
            .render_status(v1::RenderStatusRequest::default())
            .await
            .map(drop),
        "StatusService/AddNote" => c
            .status
            .add_note(v1::AddNoteRequest {
                release: missing(),
                text: "m".into(),
                action_owner: String::new(),
                due: String::new(),
            })
            .await
            .map(drop),
        "StatusService/ListNotes" => c
            .status
            .list_notes(v1::ListNotesRequest::default())
            .await
            .map(drop),
        "StatusService/CompleteAction" => c
            .status
            .complete_action(v1::CompleteActionRequest {
                id: i64::MAX,
                comment: String::new(),
            })
            .await
            .map(drop),
        "AgentService/Register" => c.agent.register(register_as("node-a")).await.map(drop),
        "AgentService/Connect" => {
            let heartbeat = v1::AgentEvent {
                event: Some(v1::agent_event::Event::Heartbeat(v1::Heartbeat::default())),
            };
            c.agent
                .connect(tokio_stream::iter([heartbeat]))
                .await
                .map(drop)
        }
        "AgentService/ReportResult" => c
            .agent
            .report_result(result_of(&world.job_a))
            .await
            .map(drop),
        "AgentService/PushTelemetry" => c
            .agent
            .push_telemetry(tokio_stream::iter([v1::TelemetryBatch::default()]))
            .await
            .map(drop),
        "AgentService/Enroll" => {
            let (_, csr_pem) = tollgate_agent::identity::new_request("node-new").expect("a CSR");
            c.agent
                .enroll(v1::EnrollRequest {
                    node_name: "node-new".into(),
                    bootstrap_token: c.secret.clone().unwrap_or_else(|| "no-token".into()),
                    csr_pem,
                })
                .await
                .map(drop)
        }
        "AgentService/RenewCertificate" => {
            let (_, csr_pem) = tollgate_agent::identity::new_request("node-a").expect("a CSR");
            c.agent
                .renew_certificate(v1::RenewCertificateRequest { csr_pem })
                .await
                .map(drop)
        }
        other => panic!("the matrix has no call for {other}: add one"),
    }
}

fn report_request() -> v1::RenderReportRequest {
    v1::RenderReportRequest {
        release: RELEASE.into(),
        milestone: String::new(),
        format: "markdown".into(),
        customer: String::new(),
    }
}

/// The cell an answer is: `U`, `D`, `X` or `A`.
fn cell(answer: &Result<(), tonic::Status>) -> char {
    match answer {
        Err(status) if status.code() == Code::Unauthenticated => 'U',
        Err(status) if status.code() == Code::PermissionDenied => 'D',
        // No answer at all: the status carries the transport's error (reset, closed).
        Err(status)
            if std::error::Error::source(status)
                .is_some_and(|source| source.is::<tonic::transport::Error>()) =>
        {
            'X'
        }
        _ => 'A',
    }
}

/// Creates a token as `admin` and returns its secret.
async fn create(admin: &As, name: &str, role: &str, customer: &str, ttl_seconds: i64) -> String {
    admin
        .tokens
        .clone()
        .create_token(v1::CreateTokenRequest {
            name: name.into(),
            role: role.into(),
            customer: customer.into(),
            ttl_seconds,
        })
        .await
        .unwrap_or_else(|status| panic!("create token {name}: {status}"))
        .into_inner()
        .secret
}

/// A well-formed result of node A's first step: whatever answers it gets past its checks
/// depends only on who sends it.
fn result_of(job_id: &str) -> v1::StepResult {
    let now = prost_types::Timestamp {
        seconds: 1_767_225_600,
        nanos: 0,
    };
    v1::StepResult {
        job_id: job_id.into(),
        step_index: 0,
        step_name: "versions".into(),
        attempt: 1,
        lease_epoch: 1,
        outcome: v1::Outcome::Passed as i32,
        exit_code: Some(0),
        started_at: Some(now),
        finished_at: Some(now),
        inventory: Some(v1::Inventory {
            driver_version: "550.54.15".into(),
            gpu_source: "simulated".into(),
            ..Default::default()
        }),
        message: "exit code 0".into(),
        ..Default::default()
    }
}

/// A registration of `node` as an agent would send it.
fn register_as(node: &str) -> v1::RegisterRequest {
    v1::RegisterRequest {
        node_name: node.into(),
        inventory: Some(v1::Inventory {
            driver_version: "550.54.15".into(),
            gpu_source: "simulated".into(),
            hostname: node.into(),
            ..Default::default()
        }),
        agent_version: "matrix".into(),
        ..Default::default()
    }
}

/// A bootstrap token for `node` with `labels` of record (besides `sku=hgx-h100`).
async fn bootstrap_token(
    anonymous: &As,
    node: &str,
    labels: &[(&str, &str)],
    ttl_seconds: u64,
) -> String {
    let mut labels: std::collections::HashMap<String, String> = labels
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    labels.insert("sku".into(), "hgx-h100".into());
    anonymous
        .nodes
        .clone()
        .enroll_node(v1::EnrollNodeRequest {
            node_name: node.into(),
            labels,
            ttl_seconds,
        })
        .await
        .unwrap_or_else(|status| panic!("enroll {node}: {status}"))
        .into_inner()
        .bootstrap_token
}

/// An agent enrolled the real way (`--bootstrap-token-file`); the token it spent, and the
/// directory that holds the token file.
async fn enrolled_agent(
    controller: &Controller,
    anonymous: &As,
    node: &str,
    customer: &str,
) -> (Agent, String, tempfile::TempDir) {
    let token = bootstrap_token(anonymous, node, &[("customer", customer)], 3600).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).expect("token file");
    let mut config = controller.agent_config(node, 1);
    config.labels.insert("customer".into(), customer.into());
    config.bootstrap_token_file = Some(token_file);
    (Agent::start_config(config), token, dir)
}

/// The endpoint of a TLS channel presenting `cert_pem` and `key_pem`.
fn node_endpoint(
    controller: &Controller,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
) -> tonic::transport::Endpoint {
    let ca = std::fs::read(controller.ca_file.as_ref().expect("TLS")).expect("CA");
    tonic::transport::Endpoint::from_shared(controller.url.clone())
        .expect("url")
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem)),
        )
        .expect("TLS settings")
}

/// A TLS channel presenting `cert_pem` and `key_pem`, connected.
async fn node_channel(controller: &Controller, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Channel {
    node_endpoint(controller, cert_pem, key_pem)
        .connect()
        .await
        .expect("an mTLS connection")
}

/// The channel of an enrolled agent's certificate, read from its state directory.
async fn agent_channel(controller: &Controller, agent: &Agent) -> Channel {
    let read = |name: &str| std::fs::read(agent.state_dir.join(name)).expect("enrolled");
    node_channel(controller, read("node.crt"), read("node.key")).await
}

/// What every identity calls with: a bearer secret, or a channel with a node certificate.
enum Credential {
    Bearer(Option<String>),
    Node(Channel),
}

/// A finished run of release r549-b (for customer b only), then one of release r550 (for no
/// customer in particular), each on node-a (customer a) and node-b (customer b), whose
/// agents enrolled with bootstrap tokens, made while no API token existed (anonymous, from
/// loopback); a revoked node; then every identity's credential.
async fn world(controller: &Controller, clock: &ManualClock) -> (World, Vec<Credential>) {
    let channel = controller.channel().await;
    let anonymous = As::new(&channel, None);
    let (agent_a, spent, _dir_a) = enrolled_agent(controller, &anonymous, "node-a", "a").await;
    let (agent_b, _, _dir_b) = enrolled_agent(controller, &anonymous, "node-b", "b").await;
    let mut clients = controller.clients().await;
    // A release only for customer b, run first on both customers' nodes: its run has a job
    // on node-a too, and the releases after it wait for the nodes its later milestones hold.
    clients.apply_gate(&gate_yaml(2)).await;
    clients.wait_ready_nodes(2).await;
    clients.create_release(HIDDEN).await;
    clients.set_customers(HIDDEN, &["b"]).await;
    let plan = clients.apply_plan(&plan_yaml(0.1)).await;
    let hidden_run = clients.start_run(HIDDEN, &plan.name).await;
    let hidden_run = clients.wait_run_done(&hidden_run.id).await;
    assert_eq!(hidden_run.jobs.len(), 2, "{hidden_run:#?}");
    let run = clients
        .qualify(RELEASE, 2, &plan_yaml(0.1), &gate_yaml(2))
        .await;
    assert_eq!(run.jobs.len(), 2, "{run:#?}");
    let job_a = run
        .jobs
        .iter()
        .find(|job| job.node == "node-a")
        .expect("a job on node-a")
        .id
        .clone();
    // Node identities act without their agents, which stop here.
    let node_a = agent_channel(controller, &agent_a).await;
    let node_b = agent_channel(controller, &agent_b).await;
    agent_a.stop().await;
    agent_b.stop().await;
    // A node enrolled by hand, then revoked.
    let token = bootstrap_token(&anonymous, "node-r", &[], 3600).await;
    let (key_pem, csr_pem) = tollgate_agent::identity::new_request("node-r").expect("a CSR");
    let enrolled = anonymous
        .agent
        .clone()
        .enroll(v1::EnrollRequest {
            node_name: "node-r".into(),
            bootstrap_token: token,
            csr_pem,
        })
        .await
        .expect("enrolled")
        .into_inner();
    anonymous
        .nodes
        .clone()
        .revoke_node(v1::RevokeNodeRequest {
            node_name: "node-r".into(),
        })
        .await
        .expect("revoked");
    // Connected after the revocation: the controller closes the connection at its handshake.
    // (A connection open before it is refused call by call: tests/tests/mtls.rs.)
    let node_r =
        node_endpoint(controller, enrolled.certificate_pem.into(), key_pem.into()).connect_lazy();
    let bootstrap_expired = bootstrap_token(&anonymous, "node-late", &[], 1).await;

    // The first API token ends anonymous access; every other is made with it.
    let root = create(&anonymous, "root", "admin", "", 3600).await;
    let admin = As::new(&channel, Some(&root));
    let expired = create(&admin, "short-lived", "viewer", "", 1).await;
    let revoked = create(&admin, "gone", "viewer", "", 3600).await;
    admin
        .tokens
        .clone()
        .revoke_token(v1::RevokeTokenRequest {
            name: "gone".into(),
        })
        .await
        .expect("revoke");
    let bearer = |secret: String| Credential::Bearer(Some(secret));
    let credentials = vec![
        Credential::Bearer(None),
        bearer("not-a-token".to_owned()),
        bearer(expired),
        bearer(revoked),
        bearer(create(&admin, "view", "viewer", "", 3600).await),
        bearer(create(&admin, "ops", "operator", "", 3600).await),
        bearer(create(&admin, "rm", "release-manager", "", 3600).await),
        bearer(root),
        bearer(create(&admin, "cust-a", "customer", "a", 3600).await),
        bearer(create(&admin, "cust-b", "customer", "b", 3600).await),
        bearer(bootstrap_expired),
        bearer(spent),
        Credential::Node(node_a),
        Credential::Node(node_b),
        Credential::Node(node_r),
    ];
    clock.advance(chrono::Duration::seconds(2));
    (
        World {
            run_id: run.id,
            job_a,
            hidden_run_id: hidden_run.id,
        },
        credentials,
    )
}

async fn matrix(backend: Backend) {
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let mut options = ControllerOptions::new(backend);
    options.clock = Some(clock.clone());
    options.tls = true;
    // Leases are not what this test is about: the clock moves by hand.
    options.lease_grace = Duration::from_secs(60);
    let Some(mut controller) = Controller::start(options).await else {
        return;
    };
    let (world, credentials) = world(&controller, &clock).await;
    let channel = controller.channel().await;
    let identities: Vec<As> = credentials
        .iter()
        .map(|credential| match credential {
            Credential::Bearer(secret) => As::new(&channel, secret.as_deref()),
            Credential::Node(node) => As::new(node, None),
        })
        .collect();

    let mut mismatches = Vec::new();
    for (rpc, expected) in EXPECTED {
        let expected: String = expected.chars().filter(|c| !c.is_whitespace()).collect();
        assert_eq!(
            expected.len(),
            IDENTITIES.len(),
            "{rpc}: one cell per identity"
        );
        let mut got = String::new();
        for clients in &identities {
            let answer = call(clients, rpc, &world).await;
            // MATRIX_DEBUG=1 prints every answer, to see why a cell differs.
            if std::env::var_os("MATRIX_DEBUG").is_some() {
                eprintln!("{rpc}: {answer:?}");
            }
            got.push(cell(&answer));
        }
        if got != expected {
            mismatches.push(format!("{rpc}: expected {expected}, got {got}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "columns: {IDENTITIES:?}\n{}",
        mismatches.join("\n")
    );
    // Every RPC of the contract is in the matrix, and every manager RPC of the controller's
    // table.
    let set = <prost_types::FileDescriptorSet as prost::Message>::decode(
        tollgate_proto::FILE_DESCRIPTOR_SET,
    )
    .expect("the descriptor set decodes");
    for file in set
        .file
        .iter()
        .filter(|file| file.package() == "tollgate.v1")
    {
        for service in &file.service {
            for method in &service.method {
                let rpc = format!("{}/{}", service.name(), method.name());
                assert!(
                    EXPECTED.iter().any(|(covered, _)| *covered == rpc),
                    "{rpc} is missing from the matrix"
                );
            }
        }
    }
    let covered: Vec<String> = EXPECTED.iter().map(|(rpc, _)| (*rpc).to_owned()).collect();
    for row in tollgate_controller::grpc::authz::TABLE {
        let rpc = format!("{}/{}", row.service, row.method);
        assert!(covered.contains(&rpc), "{rpc} is missing from the matrix");
    }

    let customer_a = &identities[8];
    let customer_b = &identities[9];
    sees_only_its_own(customer_a, "node-a", "node-b", &world).await;
    sees_only_its_own(customer_b, "node-b", "node-a", &world).await;

    // Issues: a customer lists and gets only those set to matter to it.
    let document = serde_json::json!({
        "format": "tollgate-issues/1",
        "issues": [
            {"kind": "events", "text": "XID 79", "state": "open", "customers": ["a"],
             "releases": [RELEASE, HIDDEN], "nodes": []},
            {"kind": "events", "text": "XID 48", "state": "open", "customers": ["b"],
             "releases": [RELEASE], "nodes": []},
            {"kind": "events", "text": "XID 94", "state": "open", "customers": [],
             "releases": [RELEASE], "nodes": []},
        ],
    });
    let imported = identities[7]
        .issues
        .clone()
        .import_issues(v1::ImportIssuesRequest {
            document: document.to_string(),
            file_name: String::new(),
            format: String::new(),
        })
        .await
        .expect("import issues")
        .into_inner();
    let [for_a, for_b, for_none] = imported.opened[..] else {
        panic!("three issues opened: {imported:?}");
    };
    sees_only_its_issues(customer_a, "a", for_a, &[for_b, for_none]).await;
    sees_only_its_issues(customer_b, "b", for_b, &[for_a, for_none]).await;

    // Releases: a customer lists and gets the releases for it and those for no customer in
    // particular, never one only for others, and sees no other customer's name on them.
    for (name, customers) in [("r560-a", vec!["a"]), ("r561-ab", vec!["a", "b"])] {
        let mut admin = identities[7].releases.clone();
        admin
            .create_release(v1::CreateReleaseRequest {
                name: name.into(),
                components: vec![v1::Component {
                    name: "driver".into(),
                    version: "560.1".into(),
                    ..v1::Component::default()
                }],
                description: String::new(),
            })
            .await
            .expect("create release");
        admin
            .set_customers(v1::SetCustomersRequest {
                release: name.into(),
                customers: customers.into_iter().map(str::to_owned).collect(),
            })
            .await
            .expect("set customers");
    }
    // The release for no customer in particular is seen by both.
    sees_only_its_releases(customer_a, "a", &["r561-ab", "r560-a", RELEASE], &[HIDDEN]).await;
    sees_only_its_releases(customer_b, "b", &["r561-ab", RELEASE, HIDDEN], &["r560-a"]).await;
    let all: Vec<String> = identities[7]
        .releases
        .clone()
        .list_releases(v1::ListReleasesRequest::default())
        .await
        .expect("list releases")
        .into_inner()
        .releases
        .into_iter()
        .map(|release| format!("{} {:?}", release.name, release.customers))
        .collect();
    assert_eq!(
        all,
        [
            r#"r561-ab ["a", "b"]"#,
            r#"r560-a ["a"]"#,
            &format!("{RELEASE} []"),
            &format!(r#"{HIDDEN} ["b"]"#),
        ],
        "an admin sees every release and its customers"
    );

    // A release only for customer b is, to customer a, one that does not exist: every call
    // naming it answers as for a release nobody made, and nothing customer a reads names it.
    let admin_view = identities[7]
        .releases
        .clone()
        .get_release(v1::GetReleaseRequest {
            name: RELEASE.into(),
        })
        .await
        .expect("get release")
        .into_inner();
    assert!(
        waits_for(&admin_view).contains(&HIDDEN.to_owned()),
        "{RELEASE}'s later milestones wait for the nodes {HIDDEN} holds: {admin_view:#?}"
    );
    for rpc in RELEASE_RPCS {
        for visible in [RELEASE, "r560-a"] {
            names_release(customer_a, rpc, visible)
                .await
                .unwrap_or_else(|status| panic!("customer a, {rpc} of {visible}: {status:?}"));
        }
        names_release(customer_b, rpc, HIDDEN)
            .await
            .unwrap_or_else(|status| panic!("customer b, {rpc} of {HIDDEN}: {status:?}"));
        let hidden = names_release(customer_a, rpc, HIDDEN)
            .await
            .expect_err("a release only for another customer is not found");
        let missing = names_release(customer_a, rpc, MISSING)
            .await
            .expect_err("a release nobody made is not found");
        assert_eq!(hidden.code(), Code::NotFound, "{rpc}: {hidden:?}");
        assert_eq!(
            hidden.message().replace(HIDDEN, MISSING),
            missing.message(),
            "{rpc}: the answers tell the two apart"
        );
    }
    sees_nothing_of_the_hidden_release(customer_a, for_a, &world).await;
    let mut b_runs = customer_b.runs.clone();
    for watch in [false, true] {
        let request = v1::GetRunRequest {
            id: world.hidden_run_id.clone(),
            ..Default::default()
        };
        let answer = if watch {
            first_of(b_runs.watch_run(request).await).await
        } else {
            b_runs.get_run(request).await.map(drop)
        };
        answer.expect("customer b gets the run of its release");
    }

    // The refusals say what to do.
    let status = call(&identities[2], "NodeService/ListNodes", &world)
        .await
        .expect_err("an expired token is refused");
    assert!(
        status.message().contains("short-lived expired"),
        "{status:?}"
    );
    let status = call(&identities[3], "NodeService/ListNodes", &world)
        .await
        .expect_err("a revoked token is refused");
    assert!(status.message().contains("gone was revoked"), "{status:?}");
    let status = call(&identities[4], "NodeService/SetCordon", &world)
        .await
        .expect_err("a viewer may not cordon");
    assert!(status.message().contains("operator, admin"), "{status:?}");
    let status = call(&identities[13], "AgentService/ReportResult", &world)
        .await
        .expect_err("node B may not report node A's job");
    assert!(status.message().contains("node-a"), "{status:?}");
    let status = call(&identities[11], "AgentService/Enroll", &world)
        .await
        .expect_err("a spent bootstrap token is refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    controller.stop().await;
}

/// The customer-callable RPCs that name a release, by the name [`names_release`] knows them.
const RELEASE_RPCS: [&str; 5] = [
    "ReleaseService/GetRelease",
    "GateService/EvaluateGate",
    "GateService/StreamDecision",
    "ReportService/RenderReport",
    "ReportService/StreamReport",
];

/// Calls `rpc` (one of [`RELEASE_RPCS`]) about `release`; a stream's answer is its first
/// message's.
async fn names_release(clients: &As, rpc: &str, release: &str) -> Result<(), tonic::Status> {
    let mut c = clients.clone();
    let evaluate = || v1::EvaluateGateRequest {
        release: release.into(),
        milestone: String::new(),
        at: None,
    };
    let report = || v1::RenderReportRequest {
        release: release.into(),
        ..report_request()
    };
    match rpc {
        "ReleaseService/GetRelease" => c
            .releases
            .get_release(v1::GetReleaseRequest {
                name: release.into(),
            })
            .await
            .map(drop),
        "GateService/EvaluateGate" => c.gates.evaluate_gate(evaluate()).await.map(drop),
        "GateService/StreamDecision" => first_of(c.gates.stream_decision(evaluate()).await).await,
        "ReportService/RenderReport" => c.reports.render_report(report()).await.map(drop),
        "ReportService/StreamReport" => first_of(c.reports.stream_report(report()).await).await,
        other => panic!("no call names a release for {other}"),
    }
}

/// The first message of a streamed answer: the call's refusal, or the stream's first item.
async fn first_of<T>(
    answer: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> Result<(), tonic::Status> {
    let mut stream = answer?.into_inner();
    stream
        .message()
        .await?
        .map(drop)
        .ok_or_else(|| tonic::Status::internal("the stream ended before its first message"))
}

/// The releases a release's projected milestones wait for.
fn waits_for(release: &v1::Release) -> Vec<String> {
    release
        .projections
        .iter()
        .flat_map(|projection| projection.waits_for.iter())
        .map(|holder| holder.release.clone())
        .collect()
}

/// Customer a, whose node ran a job of [`HIDDEN`] and whose issue `its_issue` failed in it
/// too, reads nothing that names it: no run of it, by id or in a list; an empty list of its
/// runs and issues exactly as of a release nobody made; no projection waiting for it; no issue
/// listing it; no status report naming it.
async fn sees_nothing_of_the_hidden_release(clients: &As, its_issue: i64, world: &World) {
    let mut c = clients.clone();
    let nobodys_run = "run-0000000000000000";
    for watch in [false, true] {
        let ask = |id: &str| v1::GetRunRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        let (hidden, missing) = if watch {
            (
                first_of(c.runs.watch_run(ask(&world.hidden_run_id)).await).await,
                first_of(c.runs.watch_run(ask(nobodys_run)).await).await,
            )
        } else {
            (
                c.runs.get_run(ask(&world.hidden_run_id)).await.map(drop),
                c.runs.get_run(ask(nobodys_run)).await.map(drop),
            )
        };
        let hidden = hidden.expect_err("the run of another customer's release is not found");
        let missing = missing.expect_err("a run nobody started is not found");
        assert_eq!(hidden.code(), Code::NotFound, "watch {watch}: {hidden:?}");
        assert_eq!(
            hidden.message().replace(&world.hidden_run_id, nobodys_run),
            missing.message(),
            "watch {watch}: the answers tell the two apart"
        );
    }
    let runs = |release: &str| v1::ListRunsRequest {
        release: release.into(),
        page_size: 1,
        page_token: String::new(),
    };
    let hidden = c
        .runs
        .list_runs(runs(HIDDEN))
        .await
        .expect("runs")
        .into_inner();
    let missing = c
        .runs
        .list_runs(runs(MISSING))
        .await
        .expect("runs")
        .into_inner();
    assert_eq!(
        hidden, missing,
        "the runs of {HIDDEN} as of a release nobody made"
    );
    assert_eq!(hidden, v1::ListRunsResponse::default());
    let visible = c
        .runs
        .list_runs(runs(RELEASE))
        .await
        .expect("runs")
        .into_inner();
    assert_eq!(visible.runs.len(), 1, "the runs of {RELEASE} are listed");
    let listed = c
        .runs
        .list_runs(v1::ListRunsRequest::default())
        .await
        .expect("runs")
        .into_inner();
    let ids: Vec<&str> = listed.runs.iter().map(|run| run.id.as_str()).collect();
    assert_eq!(ids, [world.run_id.as_str()], "no run of {HIDDEN} is listed");
    let issues = |release: &str| v1::ListIssuesRequest {
        release: release.into(),
        ..Default::default()
    };
    let hidden = c
        .issues
        .list_issues(issues(HIDDEN))
        .await
        .expect("issues")
        .into_inner();
    let missing = c
        .issues
        .list_issues(issues(MISSING))
        .await
        .expect("issues")
        .into_inner();
    assert_eq!(
        hidden, missing,
        "the issues of {HIDDEN} as of a release nobody made"
    );
    assert!(hidden.issues.is_empty(), "{hidden:?}");
    let visible = c
        .issues
        .list_issues(issues(RELEASE))
        .await
        .expect("issues")
        .into_inner();
    let ids: Vec<i64> = visible.issues.iter().map(|issue| issue.id).collect();
    assert_eq!(ids, [its_issue], "the issues of {RELEASE} are listed");
    assert_eq!(visible.issues[0].releases, [RELEASE], "{visible:?}");
    let issue = c
        .issues
        .get_issue(v1::GetIssueRequest { id: its_issue })
        .await
        .expect("its issue")
        .into_inner();
    assert_eq!(issue.releases, [RELEASE], "{issue:?}");
    let releases = c
        .releases
        .list_releases(v1::ListReleasesRequest::default())
        .await
        .expect("releases")
        .into_inner()
        .releases;
    let release = c
        .releases
        .get_release(v1::GetReleaseRequest {
            name: RELEASE.into(),
        })
        .await
        .expect("get release")
        .into_inner();
    for release in releases.iter().chain([&release]) {
        assert!(
            !waits_for(release).contains(&HIDDEN.to_owned()),
            "{} waits for {HIDDEN}: {release:#?}",
            release.name
        );
    }
    let rollouts = |release: &str| v1::ListRolloutsRequest {
        release: release.into(),
        ..Default::default()
    };
    let hidden = c
        .rollouts
        .list_rollouts(rollouts(HIDDEN))
        .await
        .expect("rollouts");
    let missing = c
        .rollouts
        .list_rollouts(rollouts(MISSING))
        .await
        .expect("rollouts");
    assert_eq!(hidden.into_inner(), missing.into_inner());
    let status = c
        .status
        .render_status(v1::RenderStatusRequest::default())
        .await
        .expect("status report")
        .into_inner();
    assert!(!status.text.contains(HIDDEN), "{}", status.text);
}

/// A customer (`own`) lists exactly the releases `its` (newest first), gets each with
/// itself alone as customer, and gets none of the `others` (NotFound, as if they did not
/// exist), also one page at a time.
async fn sees_only_its_releases(clients: &As, own: &str, its: &[&str], others: &[&str]) {
    let mut releases = clients.releases.clone();
    let listed = releases
        .list_releases(v1::ListReleasesRequest::default())
        .await
        .expect("list releases")
        .into_inner()
        .releases;
    let names: Vec<&str> = listed.iter().map(|release| release.name.as_str()).collect();
    assert_eq!(names, its, "customer {own}");
    for release in &listed {
        // Its own name alone, or none on the release for no customer in particular.
        let expected: &[&str] = if release.name == RELEASE { &[] } else { &[own] };
        assert_eq!(release.customers, expected, "customer {own}: {release:?}");
    }
    let first = releases
        .list_releases(v1::ListReleasesRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("list one page")
        .into_inner();
    assert_eq!(first.releases.len(), 1, "customer {own}: pages are full");
    assert_eq!(first.releases[0].name, its[0]);
    for name in its {
        let got = releases
            .get_release(v1::GetReleaseRequest {
                name: (*name).into(),
            })
            .await
            .expect("get its release")
            .into_inner();
        assert!(got.customers.iter().all(|of| of == own), "{got:?}");
    }
    for name in others {
        let status = releases
            .get_release(v1::GetReleaseRequest {
                name: (*name).into(),
            })
            .await
            .expect_err("another customer's release is not found");
        assert_eq!(status.code(), Code::NotFound, "customer {own}: {status:?}");
    }
}

/// A customer token lists, gets, evaluates and reports only its own node's part.
/// A customer (`own`) lists and gets its issue `its` and none of the `others`; a filter naming
/// another customer is refused.
async fn sees_only_its_issues(clients: &As, own: &str, its: i64, others: &[i64]) {
    let mut c = clients.clone();
    for customer in ["", own] {
        let listed = c
            .issues
            .list_issues(v1::ListIssuesRequest {
                customer: customer.into(),
                ..Default::default()
            })
            .await
            .expect("issues")
            .into_inner();
        let ids: Vec<i64> = listed.issues.iter().map(|issue| issue.id).collect();
        assert_eq!(ids, [its], "customer {own}, filter {customer:?}");
    }
    let status = c
        .issues
        .list_issues(v1::ListIssuesRequest {
            customer: "someone-else".into(),
            ..Default::default()
        })
        .await
        .expect_err("another customer's filter is refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(own), "{status:?}");
    let issue = c
        .issues
        .get_issue(v1::GetIssueRequest { id: its })
        .await
        .expect("its own issue")
        .into_inner();
    assert_eq!(issue.customers, [own]);
    for id in others {
        let status = c
            .issues
            .get_issue(v1::GetIssueRequest { id: *id })
            .await
            .expect_err("another customer's issue is not found");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
}

async fn sees_only_its_own(clients: &As, own: &str, other: &str, world: &World) {
    let mut c = clients.clone();
    let nodes = c
        .nodes
        .list_nodes(v1::ListNodesRequest::default())
        .await
        .expect("list")
        .into_inner();
    let names: Vec<&str> = nodes.nodes.iter().map(|node| node.name.as_str()).collect();
    assert_eq!(names, [own]);
    let status = c
        .nodes
        .get_node(v1::GetNodeRequest { name: other.into() })
        .await
        .expect_err("another customer's node is not found");
    assert_eq!(
        status.code(),
        Code::NotFound,
        "another customer's node does not exist"
    );
    let runs = c
        .runs
        .list_runs(v1::ListRunsRequest::default())
        .await
        .expect("runs")
        .into_inner();
    for run in &runs.runs {
        assert!(run.jobs.iter().all(|job| job.node == own), "{run:#?}");
    }
    let run = c
        .runs
        .get_run(v1::GetRunRequest {
            id: world.run_id.clone(),
            ..Default::default()
        })
        .await
        .expect("run")
        .into_inner();
    let job_nodes: Vec<&str> = run.jobs.iter().map(|job| job.node.as_str()).collect();
    assert_eq!(job_nodes, [own]);
    // The counts are of the customer's own jobs too.
    assert_eq!(run.n_jobs, 1);
    assert_eq!(
        run.job_counts.iter().map(|count| count.count).sum::<u32>(),
        1
    );
    let decision = c
        .gates
        .evaluate_gate(v1::EvaluateGateRequest {
            release: RELEASE.into(),
            milestone: String::new(),
            at: None,
        })
        .await
        .expect("evaluate")
        .into_inner();
    let text = format!("{decision:?}");
    assert!(!text.contains(other), "{text}");
    let report = c
        .reports
        .render_report(report_request())
        .await
        .expect("report")
        .into_inner();
    let text = String::from_utf8_lossy(&report.content);
    assert!(text.contains(own), "the report shows the customer's node");
    assert!(!text.contains(other), "the report shows nothing of {other}");
}

tollgate_tests::on_both_backends!(matrix);

/// README.md's "Authorization" section holds the controller's table exactly.
#[test]
fn the_readme_holds_the_authorization_table() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let table = tollgate_controller::grpc::authz::markdown();
    assert!(
        readme.contains("## Authorization"),
        "README.md has an Authorization section"
    );
    assert!(
        readme.contains(&table),
        "README.md's Authorization section must hold this table exactly:\n{table}"
    );
}

/// This host's address on a non-loopback interface, if it has one: the address a socket
/// would send from towards a documentation-range host (nothing is sent).
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// With no token anywhere, a manager call from loopback is anonymous and one from another
/// address is refused, saying to create a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_calls_come_from_loopback_only() {
    let Some(ip) = non_loopback_address() else {
        eprintln!("skipped: this host has no non-loopback address to call from");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = tollgate_controller::ControllerConfig::new(dir.path().to_path_buf());
    // A listener other hosts can reach serves TLS only: a throwaway CA, and a server
    // certificate for both addresses called below.
    use tollgate_controller::clock::Clock as _;
    use tollgate_controller::pki;
    let pki_dir = dir.path().join("pki");
    let ca = pki::init_ca_now(&pki_dir).expect("a test CA");
    let identity = ca
        .server_certificate(&["127.0.0.1".to_owned(), ip.to_string()], SystemClock.now())
        .expect("a server certificate");
    let server_config = pki::server_config(
        &identity,
        &pki_dir.join("server.pem"),
        &pki_dir.join("server.key"),
        Some(ca.cert_pem()),
    )
    .expect("TLS settings");
    config.transport = tollgate_controller::listener::Transport::Tls(server_config);
    let ca_pem = ca.cert_pem().to_owned();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tollgate_controller::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let list = |host: String| {
        let ca_pem = ca_pem.clone();
        async move {
            let url = format!("https://{host}:{port}");
            let answer =
                tollgate_tests::wait_for(Duration::from_secs(20), "the controller", || {
                    let url = url.clone();
                    let tls = tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem.clone()));
                    async move {
                        let channel = tonic::transport::Endpoint::from_shared(url)
                            .expect("url")
                            .tls_config(tls)
                            .expect("TLS settings")
                            .connect()
                            .await
                            .ok()?;
                        let mut nodes = v1::node_service_client::NodeServiceClient::new(channel);
                        Some(nodes.list_nodes(v1::ListNodesRequest::default()).await)
                    }
                })
                .await;
            answer.map(drop)
        }
    };
    list("127.0.0.1".to_owned())
        .await
        .expect("a loopback caller is anonymous");
    let status = list(ip.to_string())
        .await
        .expect_err("a caller from another address is refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("create an API token"),
        "{status:?}"
    );
    let _ = stop.send(());
    server
        .await
        .expect("controller task")
        .expect("controller run");
}
