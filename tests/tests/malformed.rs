//! Malformed request fields, table-driven: every request of a manager RPC that writes (and
//! the reads that take ids), and the agent's registration, result and enrollment, is sent
//! with one field corrupted at a time (empty where required, over its limit, a NUL byte, an
//! out-of-range number, a bad timestamp, an unknown enum value). Each must be
//! `INVALID_ARGUMENT` whose `BadRequest` details name that field, and leave the store as it
//! was (every table's row count and the audit chain's head).

use tollgate_controller::store::{Pool, Store};
use tollgate_proto::v1;
use tollgate_tests::{Backend, Clients, Controller, ControllerOptions, plan_yaml};
use tonic::Code;

tollgate_tests::on_both_backends!(every_malformed_field_is_refused_by_name_and_changes_nothing);

/// One request, to be sent as it is.
#[derive(Debug, Clone)]
enum Call {
    GetNode(v1::GetNodeRequest),
    SetCordon(v1::SetCordonRequest),
    SetHealth(v1::SetHealthRequest),
    CreateRelease(v1::CreateReleaseRequest),
    GetRelease(v1::GetReleaseRequest),
    Promote(v1::PromoteRequest),
    Demote(v1::DemoteRequest),
    Halt(v1::HaltRequest),
    Resume(v1::ResumeRequest),
    SetMilestoneTarget(v1::SetMilestoneTargetRequest),
    SetCustomers(v1::SetCustomersRequest),
    ApplyPlan(v1::ApplyPlanRequest),
    GetPlan(v1::GetPlanRequest),
    StartRun(v1::StartRunRequest),
    GetRun(v1::GetRunRequest),
    CancelRun(v1::CancelRunRequest),
    ApplyGate(v1::ApplyGateRequest),
    EvaluateGate(v1::EvaluateGateRequest),
    Waive(v1::WaiveRequest),
    RevokeWaiver(v1::RevokeWaiverRequest),
    RenderReport(v1::RenderReportRequest),
    WatchRun(v1::GetRunRequest),
    GetGate(v1::GetGateRequest),
    RenderAttestation(v1::RenderAttestationRequest),
    DrainNode(v1::DrainNodeRequest),
    RetireNode(v1::RetireNodeRequest),
    EnrollNode(v1::EnrollNodeRequest),
    RevokeNode(v1::RevokeNodeRequest),
    AddMaintenanceWindow(v1::AddMaintenanceWindowRequest),
    EndMaintenanceWindow(v1::EndMaintenanceWindowRequest),
    SetHealthPlan(v1::SetHealthPlanRequest),
    RemoveHealthPlan(v1::RemoveHealthPlanRequest),
    GetNodeTelemetry(v1::GetNodeTelemetryRequest),
    StartRollout(v1::StartRolloutRequest),
    GetRollout(v1::GetRolloutRequest),
    WatchRollout(v1::GetRolloutRequest),
    PauseRollout(v1::RolloutActionRequest),
    ResumeRollout(v1::RolloutActionRequest),
    AbortRollout(v1::AbortRolloutRequest),
    SkipWave(v1::RolloutActionRequest),
    ListRollouts(v1::ListRolloutsRequest),
    Register(v1::RegisterRequest),
    ReportResult(Box<v1::StepResult>),
    Enroll(v1::EnrollRequest),
    OpenIssue(v1::OpenIssueRequest),
    GetIssue(v1::GetIssueRequest),
    ListIssues(v1::ListIssuesRequest),
    UpdateIssue(v1::UpdateIssueRequest),
    SetFixRelease(v1::SetFixReleaseRequest),
    WontFix(v1::WontFixRequest),
    ReopenIssue(v1::ReopenIssueRequest),
    ImportIssues(v1::ImportIssuesRequest),
    RenderStatus(v1::RenderStatusRequest),
    AddNote(v1::AddNoteRequest),
    ListNotes(v1::ListNotesRequest),
    CompleteAction(v1::CompleteActionRequest),
}

/// Sends a node's token, as its agent does.
#[derive(Clone)]
struct NodeToken(String);

impl tonic::service::Interceptor for NodeToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let value = format!("Bearer {}", self.0)
            .parse()
            .expect("a token is header text");
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

type Agent = v1::agent_service_client::AgentServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, NodeToken>,
>;

async fn send(clients: &mut Clients, agent: &mut Agent, call: Call) -> Result<(), tonic::Status> {
    match call {
        Call::DrainNode(r) => clients.nodes.drain_node(r).await.map(drop),
        Call::RetireNode(r) => clients.nodes.retire_node(r).await.map(drop),
        Call::EnrollNode(r) => clients.nodes.enroll_node(r).await.map(drop),
        Call::RevokeNode(r) => clients.nodes.revoke_node(r).await.map(drop),
        Call::AddMaintenanceWindow(r) => clients.nodes.add_maintenance_window(r).await.map(drop),
        Call::EndMaintenanceWindow(r) => clients.nodes.end_maintenance_window(r).await.map(drop),
        Call::SetHealthPlan(r) => clients.nodes.set_health_plan(r).await.map(drop),
        Call::RemoveHealthPlan(r) => clients.nodes.remove_health_plan(r).await.map(drop),
        Call::GetNodeTelemetry(r) => clients.nodes.get_node_telemetry(r).await.map(drop),
        Call::Register(r) => agent.register(r).await.map(drop),
        Call::ReportResult(r) => agent.report_result(*r).await.map(drop),
        Call::Enroll(r) => agent.enroll(r).await.map(drop),
        Call::GetNode(r) => clients.nodes.get_node(r).await.map(drop),
        Call::SetCordon(r) => clients.nodes.set_cordon(r).await.map(drop),
        Call::SetHealth(r) => clients.nodes.set_health(r).await.map(drop),
        Call::CreateRelease(r) => clients.releases.create_release(r).await.map(drop),
        Call::GetRelease(r) => clients.releases.get_release(r).await.map(drop),
        Call::Promote(r) => clients.releases.promote(r).await.map(drop),
        Call::Demote(r) => clients.releases.demote(r).await.map(drop),
        Call::Halt(r) => clients.releases.halt(r).await.map(drop),
        Call::Resume(r) => clients.releases.resume(r).await.map(drop),
        Call::SetMilestoneTarget(r) => clients.releases.set_milestone_target(r).await.map(drop),
        Call::SetCustomers(r) => clients.releases.set_customers(r).await.map(drop),
        Call::ApplyPlan(r) => clients.plans.apply_plan(r).await.map(drop),
        Call::GetPlan(r) => clients.plans.get_plan(r).await.map(drop),
        Call::StartRun(r) => clients.runs.start_run(r).await.map(drop),
        Call::StartRollout(r) => clients.rollouts.start_rollout(r).await.map(drop),
        Call::GetRollout(r) => clients.rollouts.get_rollout(r).await.map(drop),
        Call::WatchRollout(r) => clients.rollouts.watch_rollout(r).await.map(drop),
        Call::ListRollouts(r) => clients.rollouts.list_rollouts(r).await.map(drop),
        Call::PauseRollout(r) => clients.rollouts.pause_rollout(r).await.map(drop),
        Call::ResumeRollout(r) => clients.rollouts.resume_rollout(r).await.map(drop),
        Call::AbortRollout(r) => clients.rollouts.abort_rollout(r).await.map(drop),
        Call::SkipWave(r) => clients.rollouts.skip_wave(r).await.map(drop),
        Call::GetRun(r) => clients.runs.get_run(r).await.map(drop),
        Call::CancelRun(r) => clients.runs.cancel_run(r).await.map(drop),
        Call::ApplyGate(r) => clients.gates.apply_gate(r).await.map(drop),
        Call::EvaluateGate(r) => clients.gates.evaluate_gate(r).await.map(drop),
        Call::Waive(r) => clients.gates.waive(r).await.map(drop),
        Call::RevokeWaiver(r) => clients.gates.revoke_waiver(r).await.map(drop),
        Call::RenderReport(r) => clients.reports.render_report(r).await.map(drop),
        Call::WatchRun(r) => clients.runs.watch_run(r).await.map(drop),
        Call::GetGate(r) => clients.gates.get_gate(r).await.map(drop),
        Call::RenderAttestation(r) => clients.reports.render_attestation(r).await.map(drop),
        Call::OpenIssue(r) => clients.issues.open_issue(r).await.map(drop),
        Call::GetIssue(r) => clients.issues.get_issue(r).await.map(drop),
        Call::ListIssues(r) => clients.issues.list_issues(r).await.map(drop),
        Call::UpdateIssue(r) => clients.issues.update_issue(r).await.map(drop),
        Call::SetFixRelease(r) => clients.issues.set_fix_release(r).await.map(drop),
        Call::WontFix(r) => clients.issues.wont_fix(r).await.map(drop),
        Call::ReopenIssue(r) => clients.issues.reopen(r).await.map(drop),
        Call::ImportIssues(r) => clients.issues.import_issues(r).await.map(drop),
        Call::RenderStatus(r) => clients.status.render_status(r).await.map(drop),
        Call::AddNote(r) => clients.status.add_note(r).await.map(drop),
        Call::ListNotes(r) => clients.status.list_notes(r).await.map(drop),
        Call::CompleteAction(r) => clients.status.complete_action(r).await.map(drop),
    }
}

/// Corrupted texts: empty, over a name's limit, over a reason's limit, with a NUL byte.
const EMPTY: &str = "";
const NUL: &str = "r1\0x";

fn over_name() -> String {
    "n".repeat(tollgate_domain::limits::NAME.max + 1)
}

fn over_reason() -> String {
    "r".repeat(tollgate_domain::limits::REASON.max + 1)
}

/// A timestamp whose nanoseconds are out of range.
fn bad_time() -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: 1_700_000_000,
        nanos: 2_000_000_000,
    })
}

/// Every case: the field named in the answer, and the request with that field corrupted.
#[allow(clippy::too_many_lines)]
fn cases() -> Vec<(&'static str, Call)> {
    let mut cases: Vec<(&'static str, Call)> = Vec::new();
    let names = || [EMPTY.to_owned(), over_name(), NUL.to_owned()];

    for name in names() {
        cases.push((
            "name",
            Call::GetNode(v1::GetNodeRequest { name: name.clone() }),
        ));
        cases.push((
            "name",
            Call::SetCordon(v1::SetCordonRequest {
                name: name.clone(),
                cordoned: true,
            }),
        ));
        cases.push((
            "name",
            Call::GetRelease(v1::GetReleaseRequest { name: name.clone() }),
        ));
        cases.push((
            "name",
            Call::Promote(v1::PromoteRequest { name: name.clone() }),
        ));
        cases.push((
            "id",
            Call::GetRun(v1::GetRunRequest {
                id: name.clone(),
                ..Default::default()
            }),
        ));
        cases.push((
            "id",
            Call::WatchRun(v1::GetRunRequest {
                id: name.clone(),
                ..Default::default()
            }),
        ));
        cases.push((
            "release",
            Call::RenderAttestation(v1::RenderAttestationRequest {
                release: name.clone(),
                milestone: String::new(),
            }),
        ));
        cases.push((
            "id",
            Call::CancelRun(v1::CancelRunRequest { id: name.clone() }),
        ));
        cases.push((
            "id",
            Call::RevokeWaiver(v1::RevokeWaiverRequest { id: name.clone() }),
        ));
        cases.push((
            "name",
            Call::GetPlan(v1::GetPlanRequest {
                name: name.clone(),
                version: String::new(),
            }),
        ));
    }

    let health = v1::SetHealthRequest {
        name: "lab-1".into(),
        health: "bad".into(),
        reason: "burnt VRM".into(),
    };
    for name in names() {
        cases.push((
            "name",
            Call::SetHealth(v1::SetHealthRequest {
                name,
                ..health.clone()
            }),
        ));
    }
    for bad in ["", "bogus"] {
        let health = v1::SetHealthRequest {
            health: bad.into(),
            ..health.clone()
        };
        cases.push(("health", Call::SetHealth(health)));
    }
    for reason in [over_reason(), NUL.to_owned()] {
        cases.push((
            "reason",
            Call::SetHealth(v1::SetHealthRequest {
                reason,
                ..health.clone()
            }),
        ));
    }

    let release = v1::CreateReleaseRequest {
        name: "r2".into(),
        components: vec![v1::Component {
            name: "driver".into(),
            version: "550.54.15".into(),
            ..Default::default()
        }],
        description: "candidate".into(),
    };
    for name in names() {
        cases.push((
            "name",
            Call::CreateRelease(v1::CreateReleaseRequest {
                name,
                ..release.clone()
            }),
        ));
    }
    for (field, component) in [
        (
            "components[0].name",
            v1::Component {
                name: String::new(),
                ..release.components[0].clone()
            },
        ),
        (
            "components[0].name",
            v1::Component {
                name: NUL.into(),
                ..release.components[0].clone()
            },
        ),
        (
            "components[0].version",
            v1::Component {
                version: String::new(),
                ..release.components[0].clone()
            },
        ),
        (
            "components[0].version",
            v1::Component {
                version: over_name(),
                ..release.components[0].clone()
            },
        ),
    ] {
        cases.push((
            field,
            Call::CreateRelease(v1::CreateReleaseRequest {
                components: vec![component],
                ..release.clone()
            }),
        ));
    }
    for description in [
        "d".repeat(tollgate_domain::limits::DESCRIPTION.max + 1),
        NUL.to_owned(),
    ] {
        cases.push((
            "description",
            Call::CreateRelease(v1::CreateReleaseRequest {
                description,
                ..release.clone()
            }),
        ));
    }

    for release in names() {
        cases.push((
            "release",
            Call::Demote(v1::DemoteRequest {
                release: release.clone(),
                to_milestone: "lab-qual".into(),
                reason: "bad batch".into(),
            }),
        ));
        cases.push((
            "release",
            Call::Halt(v1::HaltRequest {
                release: release.clone(),
                reason: "bad batch".into(),
            }),
        ));
        cases.push((
            "release",
            Call::Resume(v1::ResumeRequest {
                release: release.clone(),
                reason: "fixed".into(),
            }),
        ));
    }
    for reason in [EMPTY.to_owned(), over_reason(), NUL.to_owned()] {
        cases.push((
            "reason",
            Call::Halt(v1::HaltRequest {
                release: "r1".into(),
                reason: reason.clone(),
            }),
        ));
        cases.push((
            "reason",
            Call::Demote(v1::DemoteRequest {
                release: "r1".into(),
                to_milestone: "lab-qual".into(),
                reason,
            }),
        ));
    }
    let target = v1::SetMilestoneTargetRequest {
        release: "r1".into(),
        milestone: "lab-qual".into(),
        target_date: "2027-01-15".into(),
        reason: String::new(),
    };
    for release in names() {
        cases.push((
            "release",
            Call::SetMilestoneTarget(v1::SetMilestoneTargetRequest {
                release: release.clone(),
                ..target.clone()
            }),
        ));
        cases.push((
            "release",
            Call::SetCustomers(v1::SetCustomersRequest {
                release,
                customers: vec!["acme".into()],
            }),
        ));
    }
    for milestone in [
        EMPTY.to_owned(),
        over_name(),
        NUL.to_owned(),
        "moon".to_owned(),
    ] {
        cases.push((
            "milestone",
            Call::SetMilestoneTarget(v1::SetMilestoneTargetRequest {
                milestone,
                ..target.clone()
            }),
        ));
    }
    for target_date in [EMPTY, "2027-02-30", "15/01/2027", NUL] {
        cases.push((
            "target_date",
            Call::SetMilestoneTarget(v1::SetMilestoneTargetRequest {
                target_date: target_date.into(),
                ..target.clone()
            }),
        ));
    }
    for reason in [over_reason(), NUL.to_owned()] {
        cases.push((
            "reason",
            Call::SetMilestoneTarget(v1::SetMilestoneTargetRequest {
                reason,
                ..target.clone()
            }),
        ));
    }
    for customer in names() {
        cases.push((
            "customers[1]",
            Call::SetCustomers(v1::SetCustomersRequest {
                release: "r1".into(),
                customers: vec!["acme".into(), customer],
            }),
        ));
    }
    cases.push((
        "customers",
        Call::SetCustomers(v1::SetCustomersRequest {
            release: "r1".into(),
            customers: (0..=tollgate_domain::limits::CUSTOMERS.max)
                .map(|idx| format!("c{idx}"))
                .collect(),
        }),
    ));
    for to_milestone in ["", "moon"] {
        cases.push((
            "to_milestone",
            Call::Demote(v1::DemoteRequest {
                release: "r1".into(),
                to_milestone: to_milestone.into(),
                reason: "bad batch".into(),
            }),
        ));
    }

    for source in [EMPTY.to_owned(), format!("{}\0", plan_yaml(1.0))] {
        cases.push((
            "source",
            Call::ApplyPlan(v1::ApplyPlanRequest {
                source: source.clone(),
                file_name: "plan.yaml".into(),
            }),
        ));
        cases.push((
            "source",
            Call::ApplyGate(v1::ApplyGateRequest {
                source,
                file_name: "gate.yaml".into(),
            }),
        ));
    }

    let start = v1::StartRunRequest {
        release: "r1".into(),
        plan: "gpu-qual".into(),
        milestone: String::new(),
        nodes_now: false,
    };
    for text in names() {
        cases.push((
            "release",
            Call::StartRun(v1::StartRunRequest {
                release: text.clone(),
                ..start.clone()
            }),
        ));
        cases.push((
            "plan",
            Call::StartRun(v1::StartRunRequest {
                plan: text.clone(),
                ..start.clone()
            }),
        ));
        cases.push((
            "release",
            Call::EvaluateGate(v1::EvaluateGateRequest {
                release: text.clone(),
                milestone: String::new(),
                at: None,
            }),
        ));
        cases.push((
            "release",
            Call::RenderReport(v1::RenderReportRequest {
                release: text,
                milestone: String::new(),
                format: "markdown".into(),
                customer: String::new(),
            }),
        ));
    }
    cases.push((
        "milestone",
        Call::StartRun(v1::StartRunRequest {
            milestone: "moon".into(),
            ..start.clone()
        }),
    ));
    cases.push((
        "at",
        Call::EvaluateGate(v1::EvaluateGateRequest {
            release: "r1".into(),
            milestone: String::new(),
            at: bad_time(),
        }),
    ));
    for milestone in ["", "moon", NUL] {
        cases.push((
            "milestone",
            Call::GetGate(v1::GetGateRequest {
                milestone: milestone.into(),
            }),
        ));
    }
    cases.push((
        "format",
        Call::RenderReport(v1::RenderReportRequest {
            release: "r1".into(),
            milestone: String::new(),
            format: "bogus".into(),
            customer: String::new(),
        }),
    ));

    let waive = v1::WaiveRequest {
        release: "r1".into(),
        milestone: String::new(),
        rule_id: "min-nodes".into(),
        reason: "lab-3 down for repair".into(),
        ticket: "HW-1".into(),
        expires_at: None,
        ttl_seconds: 3600,
        nodes: Vec::new(),
        skus: Vec::new(),
        steps: Vec::new(),
        issue: 0,
    };
    let over = |limit: &tollgate_domain::limits::Limit| "x".repeat(limit.max + 1);
    cases.push((
        "issue",
        Call::Waive(v1::WaiveRequest {
            issue: -1,
            ..waive.clone()
        }),
    ));
    for text in names() {
        cases.push((
            "release",
            Call::Waive(v1::WaiveRequest {
                release: text.clone(),
                ..waive.clone()
            }),
        ));
        cases.push((
            "nodes[0]",
            Call::Waive(v1::WaiveRequest {
                nodes: vec![text],
                ..waive.clone()
            }),
        ));
    }
    for (rule_id, ticket) in [
        (EMPTY.to_owned(), EMPTY.to_owned()),
        (
            over(&tollgate_domain::limits::RULE_ID),
            over(&tollgate_domain::limits::TICKET),
        ),
        (NUL.to_owned(), NUL.to_owned()),
    ] {
        cases.push((
            "rule_id",
            Call::Waive(v1::WaiveRequest {
                rule_id,
                ..waive.clone()
            }),
        ));
        cases.push((
            "ticket",
            Call::Waive(v1::WaiveRequest {
                ticket,
                ..waive.clone()
            }),
        ));
    }
    for reason in [EMPTY.to_owned(), over_reason(), NUL.to_owned()] {
        cases.push((
            "reason",
            Call::Waive(v1::WaiveRequest {
                reason,
                ..waive.clone()
            }),
        ));
    }
    cases.push((
        "ttl_seconds",
        Call::Waive(v1::WaiveRequest {
            ttl_seconds: u64::MAX,
            ..waive.clone()
        }),
    ));
    cases.push((
        "expires_at",
        Call::Waive(v1::WaiveRequest {
            ttl_seconds: 0,
            expires_at: bad_time(),
            ..waive
        }),
    ));
    node_and_agent_cases(&mut cases);
    issue_cases(&mut cases);
    status_cases(&mut cases);
    let rollout = v1::StartRolloutRequest {
        release: "r550".into(),
        fleet: "role=prod".into(),
        file: "name: prod\n".into(),
        file_name: "rollout.yaml".into(),
    };
    for release in names() {
        cases.push((
            "release",
            Call::StartRollout(v1::StartRolloutRequest {
                release,
                ..rollout.clone()
            }),
        ));
    }
    for fleet in ["role".to_owned(), over_reason(), NUL.to_owned()] {
        cases.push((
            "fleet",
            Call::StartRollout(v1::StartRolloutRequest {
                fleet,
                ..rollout.clone()
            }),
        ));
    }
    for file in [EMPTY.to_owned(), NUL.to_owned()] {
        cases.push((
            "file",
            Call::StartRollout(v1::StartRolloutRequest {
                file,
                ..rollout.clone()
            }),
        ));
    }
    let action = |id: String, reason: String| v1::RolloutActionRequest { id, reason };
    for id in names() {
        cases.push((
            "id",
            Call::GetRollout(v1::GetRolloutRequest { id: id.clone() }),
        ));
        cases.push((
            "id",
            Call::WatchRollout(v1::GetRolloutRequest { id: id.clone() }),
        ));
        cases.push((
            "id",
            Call::PauseRollout(action(id.clone(), "PDU work".into())),
        ));
        cases.push((
            "id",
            Call::AbortRollout(v1::AbortRolloutRequest {
                id: id.clone(),
                reason: "bad canary".into(),
                rollback: true,
            }),
        ));
    }
    // An empty filter means any; an oversized or NUL one is refused.
    for name in [over_name(), NUL.to_owned()] {
        cases.push((
            "release",
            Call::ListRollouts(v1::ListRolloutsRequest {
                release: name.clone(),
                ..Default::default()
            }),
        ));
        cases.push((
            "node",
            Call::ListRollouts(v1::ListRolloutsRequest {
                node: name.clone(),
                ..Default::default()
            }),
        ));
    }
    for reason in [EMPTY.to_owned(), over_reason(), NUL.to_owned()] {
        cases.push((
            "reason",
            Call::PauseRollout(action("rollout-1".into(), reason.clone())),
        ));
        cases.push((
            "reason",
            Call::ResumeRollout(action("rollout-1".into(), reason.clone())),
        ));
        cases.push((
            "reason",
            Call::SkipWave(action("rollout-1".into(), reason.clone())),
        ));
        cases.push((
            "reason",
            Call::AbortRollout(v1::AbortRolloutRequest {
                id: "rollout-1".into(),
                reason,
                rollback: false,
            }),
        ));
    }
    cases
}

/// The issue calls' cases: numbers that cannot be an issue's, required texts empty, texts over
/// their limits or with a NUL byte, list entries blank, an unknown state, a bad timestamp.
fn issue_cases(cases: &mut Vec<(&'static str, Call)>) {
    let open = || v1::OpenIssueRequest {
        release: "r1".into(),
        group: "no-xid#1".into(),
        ..Default::default()
    };
    for release in [EMPTY.to_owned(), over_name(), NUL.to_owned()] {
        cases.push((
            "release",
            Call::OpenIssue(v1::OpenIssueRequest {
                release: release.clone(),
                ..open()
            }),
        ));
        cases.push((
            "release",
            Call::SetFixRelease(v1::SetFixReleaseRequest {
                id: 1,
                release,
                note: String::new(),
            }),
        ));
    }
    for group in [EMPTY.to_owned(), over_reason(), NUL.to_owned()] {
        cases.push((
            "group",
            Call::OpenIssue(v1::OpenIssueRequest { group, ..open() }),
        ));
    }
    cases.push((
        "title",
        Call::OpenIssue(v1::OpenIssueRequest {
            title: over_reason(),
            ..open()
        }),
    ));
    cases.push((
        "owner",
        Call::OpenIssue(v1::OpenIssueRequest {
            owner: over_name(),
            ..open()
        }),
    ));
    let update = || v1::UpdateIssueRequest {
        id: 1,
        owner: Some("alice".into()),
        ..Default::default()
    };
    for id in [0, -3] {
        cases.push(("id", Call::GetIssue(v1::GetIssueRequest { id })));
        cases.push((
            "id",
            Call::UpdateIssue(v1::UpdateIssueRequest { id, ..update() }),
        ));
        cases.push((
            "id",
            Call::SetFixRelease(v1::SetFixReleaseRequest {
                id,
                release: "r1".into(),
                note: String::new(),
            }),
        ));
        cases.push((
            "id",
            Call::WontFix(v1::WontFixRequest {
                id,
                reason: "retired".into(),
            }),
        ));
        cases.push((
            "id",
            Call::ReopenIssue(v1::ReopenIssueRequest {
                id,
                reason: String::new(),
            }),
        ));
    }
    for reason in [
        EMPTY.to_owned(),
        " ".to_owned(),
        over_reason(),
        NUL.to_owned(),
    ] {
        cases.push((
            "reason",
            Call::WontFix(v1::WontFixRequest { id: 1, reason }),
        ));
    }
    for title in [" ".to_owned(), over_reason(), NUL.to_owned()] {
        cases.push((
            "title",
            Call::UpdateIssue(v1::UpdateIssueRequest {
                title: Some(title),
                ..update()
            }),
        ));
    }
    cases.push((
        "title",
        Call::UpdateIssue(v1::UpdateIssueRequest {
            id: 1,
            ..Default::default()
        }),
    ));
    cases.push((
        "tickets[1]",
        Call::UpdateIssue(v1::UpdateIssueRequest {
            tickets: Some(v1::TextList {
                values: vec!["JIRA-1".into(), " ".into()],
            }),
            ..update()
        }),
    ));
    cases.push((
        "customers[1]",
        Call::UpdateIssue(v1::UpdateIssueRequest {
            customers: Some(v1::TextList {
                values: vec!["acme".into(), "acme".into()],
            }),
            ..update()
        }),
    ));
    cases.push((
        "add_tickets",
        Call::UpdateIssue(v1::UpdateIssueRequest {
            tickets: Some(v1::TextList {
                values: vec!["JIRA-1".into()],
            }),
            add_tickets: vec!["JIRA-2".into()],
            ..update()
        }),
    ));
    cases.push((
        "remove_customers",
        Call::UpdateIssue(v1::UpdateIssueRequest {
            customers: Some(v1::TextList { values: vec![] }),
            remove_customers: vec!["acme".into()],
            ..update()
        }),
    ));
    cases.push((
        "remove_tickets[0]",
        Call::UpdateIssue(v1::UpdateIssueRequest {
            add_tickets: vec!["JIRA-1".into()],
            remove_tickets: vec!["JIRA-1".into()],
            ..update()
        }),
    ));
    cases.push((
        "add_customers[1]",
        Call::UpdateIssue(v1::UpdateIssueRequest {
            add_customers: vec!["acme".into(), " ".into()],
            ..update()
        }),
    ));
    cases.push((
        "expected_updated_at",
        Call::UpdateIssue(v1::UpdateIssueRequest {
            expected_updated_at: bad_time(),
            ..update()
        }),
    ));
    cases.push((
        "state",
        Call::ListIssues(v1::ListIssuesRequest {
            state: "resolved".into(),
            ..Default::default()
        }),
    ));
    cases.push((
        "page_token",
        Call::ListIssues(v1::ListIssuesRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        }),
    ));
    let import = |document: &str| {
        Call::ImportIssues(v1::ImportIssuesRequest {
            document: document.to_owned(),
            file_name: "issues.json".into(),
            format: String::new(),
        })
    };
    let import_csv = |document: &str| {
        Call::ImportIssues(v1::ImportIssuesRequest {
            document: document.to_owned(),
            file_name: "issues.csv".into(),
            format: "csv".into(),
        })
    };
    cases.push((
        "line 2, state",
        import_csv("kind,text,state\r\nk,t,resolved\r\n"),
    ));
    cases.push(("line 1, 'colour'", import_csv("kind,text,state,colour\r\n")));
    cases.push((
        "line 3",
        import_csv("kind,text,state\r\nk,t,open\r\nk,t\r\n"),
    ));
    cases.push((
        "format",
        Call::ImportIssues(v1::ImportIssuesRequest {
            document: "kind,text,state\r\n".into(),
            file_name: "issues.xlsx".into(),
            format: "xlsx".into(),
        }),
    ));
    cases.push(("document", import("{\"format\": ")));
    cases.push((
        "document",
        Call::ImportIssues(v1::ImportIssuesRequest {
            document: "x".repeat(tollgate_domain::limits::SPEC_SOURCE.max + 1),
            file_name: String::new(),
            format: String::new(),
        }),
    ));
    cases.push((
        "format",
        import(r#"{"format": "tollgate-issues/9", "issues": []}"#),
    ));
    cases.push((
        "issues[0].state",
        import(r#"{"format": "tollgate-issues/1", "issues": [{"kind": "k", "text": "t", "state": "resolved"}]}"#),
    ));
    cases.push((
        "issues[0].fix_release",
        import(r#"{"format": "tollgate-issues/1", "issues": [{"kind": "k", "text": "t", "state": "closed"}]}"#),
    ));
}

/// The status report's and the notes' cases.
fn status_cases(cases: &mut Vec<(&'static str, Call)>) {
    let names = || [EMPTY.to_owned(), over_name(), NUL.to_owned()];
    let note = v1::AddNoteRequest {
        release: "r1".into(),
        text: "replace the fan".into(),
        action_owner: "bob".into(),
        due: "2027-01-15".into(),
    };
    for release in names() {
        cases.push((
            "release",
            Call::AddNote(v1::AddNoteRequest {
                release,
                ..note.clone()
            }),
        ));
    }
    let over_text = "t".repeat(tollgate_domain::limits::DESCRIPTION.max + 1);
    for text in [EMPTY.to_owned(), over_text, NUL.to_owned()] {
        cases.push((
            "text",
            Call::AddNote(v1::AddNoteRequest {
                text,
                ..note.clone()
            }),
        ));
    }
    for due in [EMPTY, "2027-02-30", "15/01/2027", NUL] {
        cases.push((
            "due",
            Call::AddNote(v1::AddNoteRequest {
                due: due.into(),
                ..note.clone()
            }),
        ));
    }
    for action_owner in [EMPTY.to_owned(), over_name(), NUL.to_owned()] {
        cases.push((
            "action_owner",
            Call::AddNote(v1::AddNoteRequest {
                action_owner,
                ..note.clone()
            }),
        ));
    }
    // Every bad field of one request is named: here the last of three.
    cases.push((
        "due",
        Call::AddNote(v1::AddNoteRequest {
            release: EMPTY.into(),
            text: EMPTY.into(),
            action_owner: "bob".into(),
            due: "someday".into(),
        }),
    ));
    let status = v1::RenderStatusRequest {
        customer: String::new(),
        since: None,
        format: "markdown".into(),
        minutes: false,
    };
    for format in ["pdf", NUL] {
        cases.push((
            "format",
            Call::RenderStatus(v1::RenderStatusRequest {
                format: format.into(),
                ..status.clone()
            }),
        ));
    }
    let over_customer = "c".repeat(tollgate_domain::limits::LABEL_VALUE.max + 1);
    for customer in [over_customer, NUL.to_owned()] {
        cases.push((
            "customer",
            Call::RenderStatus(v1::RenderStatusRequest {
                customer,
                ..status.clone()
            }),
        ));
    }
    let future = Some(prost_types::Timestamp {
        seconds: 32_000_000_000,
        nanos: 0,
    });
    for since in [bad_time(), future] {
        cases.push((
            "since",
            Call::RenderStatus(v1::RenderStatusRequest {
                since,
                ..status.clone()
            }),
        ));
    }
    for release in [over_name(), NUL.to_owned()] {
        cases.push((
            "release",
            Call::ListNotes(v1::ListNotesRequest {
                release,
                since: None,
                actions_only: false,
            }),
        ));
    }
    cases.push((
        "since",
        Call::ListNotes(v1::ListNotesRequest {
            release: String::new(),
            since: bad_time(),
            actions_only: false,
        }),
    ));
    let over_comment = "c".repeat(tollgate_domain::limits::REASON.max + 1);
    for comment in [over_comment, NUL.to_owned()] {
        cases.push((
            "comment",
            Call::CompleteAction(v1::CompleteActionRequest { id: 1, comment }),
        ));
    }
    for id in [0, -3] {
        cases.push((
            "id",
            Call::CompleteAction(v1::CompleteActionRequest {
                id,
                comment: String::new(),
            }),
        ));
    }
}

/// The operator's node calls and the agent's own: registration, a result, enrollment.
fn node_and_agent_cases(cases: &mut Vec<(&'static str, Call)>) {
    let names = || [EMPTY.to_owned(), over_name(), NUL.to_owned()];
    let over = |limit: &tollgate_domain::limits::Limit| "x".repeat(limit.max + 1);
    let register = v1::RegisterRequest {
        node_name: "n2".into(),
        inventory: Some(v1::Inventory {
            driver_version: "550.54.15".into(),
            gpu_source: "simulated".into(),
            hostname: "n2".into(),
            ..Default::default()
        }),
        agent_version: "test".into(),
        ..Default::default()
    };
    let now = prost_types::Timestamp {
        seconds: 1_767_225_600,
        nanos: 0,
    };
    let result = v1::StepResult {
        job_id: "no-such-job".into(),
        step_index: 0,
        step_name: "versions".into(),
        attempt: 1,
        lease_epoch: 1,
        outcome: v1::Outcome::Passed as i32,
        exit_code: Some(0),
        started_at: Some(now),
        finished_at: Some(now),
        inventory: register.inventory.clone(),
        message: "exit code 0".into(),
        ..Default::default()
    };
    for name in names() {
        cases.push((
            "name",
            Call::DrainNode(v1::DrainNodeRequest {
                name: name.clone(),
                reason: "maintenance".into(),
                deadline_seconds: 0,
            }),
        ));
        cases.push((
            "name",
            Call::RetireNode(v1::RetireNodeRequest {
                name: name.clone(),
                reason: "decommissioned".into(),
            }),
        ));
        cases.push((
            "node_name",
            Call::EnrollNode(v1::EnrollNodeRequest {
                node_name: name.clone(),
                labels: Default::default(),
                ttl_seconds: 3600,
            }),
        ));
        cases.push((
            "node_name",
            Call::RevokeNode(v1::RevokeNodeRequest {
                node_name: name.clone(),
            }),
        ));
        cases.push((
            "node_name",
            Call::Register(v1::RegisterRequest {
                node_name: name.clone(),
                ..register.clone()
            }),
        ));
        cases.push((
            "job_id",
            Call::ReportResult(Box::new(v1::StepResult {
                job_id: name.clone(),
                ..result.clone()
            })),
        ));
        cases.push((
            "step_name",
            Call::ReportResult(Box::new(v1::StepResult {
                step_name: name.clone(),
                ..result.clone()
            })),
        ));
        cases.push((
            "node_name",
            Call::Enroll(v1::EnrollRequest {
                node_name: name,
                bootstrap_token: "t".into(),
                csr_pem: String::new(),
            }),
        ));
    }
    // A drain's reason may be empty (the CLI's default), never too long or holding a NUL.
    for reason in [over_reason(), NUL.to_owned()] {
        cases.push((
            "reason",
            Call::DrainNode(v1::DrainNodeRequest {
                name: "n1".into(),
                reason,
                deadline_seconds: 0,
            }),
        ));
    }
    // A drain's deadline is at most a week.
    cases.push((
        "deadline_seconds",
        Call::DrainNode(v1::DrainNodeRequest {
            name: "n1".into(),
            reason: String::new(),
            deadline_seconds: 8 * 24 * 3600,
        }),
    ));
    // A window a day from now, for an hour: every field of it bad in turn.
    let in_a_day = prost_types::Timestamp {
        seconds: 4_102_444_800,
        nanos: 0,
    };
    let window = || v1::AddMaintenanceWindowRequest {
        label: "rack=r12".into(),
        starts_at: Some(in_a_day),
        ends_at: Some(prost_types::Timestamp {
            seconds: in_a_day.seconds + 3600,
            nanos: 0,
        }),
        reason: "PDU swap".into(),
    };
    for label in [
        EMPTY.to_owned(),
        "rack".to_owned(),
        over_name(),
        NUL.to_owned(),
    ] {
        cases.push((
            "label",
            Call::AddMaintenanceWindow(v1::AddMaintenanceWindowRequest { label, ..window() }),
        ));
    }
    cases.push((
        "ends_at",
        Call::AddMaintenanceWindow(v1::AddMaintenanceWindowRequest {
            ends_at: None,
            ..window()
        }),
    ));
    cases.push((
        "ends_at",
        Call::AddMaintenanceWindow(v1::AddMaintenanceWindowRequest {
            ends_at: Some(in_a_day),
            ..window()
        }),
    ));
    cases.push((
        "starts_at",
        Call::AddMaintenanceWindow(v1::AddMaintenanceWindowRequest {
            starts_at: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            }),
            ..window()
        }),
    ));
    cases.push((
        "reason",
        Call::AddMaintenanceWindow(v1::AddMaintenanceWindowRequest {
            reason: " ".into(),
            ..window()
        }),
    ));
    for id in [EMPTY.to_owned(), over_name(), NUL.to_owned()] {
        cases.push((
            "id",
            Call::EndMaintenanceWindow(v1::EndMaintenanceWindowRequest {
                id,
                reason: String::new(),
            }),
        ));
    }
    let health_plan = || v1::SetHealthPlanRequest {
        plan: "gpu-qual".into(),
        release: "r1".into(),
        every_seconds: 3600,
    };
    for name in names() {
        cases.push((
            "plan",
            Call::SetHealthPlan(v1::SetHealthPlanRequest {
                plan: name.clone(),
                ..health_plan()
            }),
        ));
        cases.push((
            "release",
            Call::SetHealthPlan(v1::SetHealthPlanRequest {
                release: name.clone(),
                ..health_plan()
            }),
        ));
        cases.push((
            "plan",
            Call::RemoveHealthPlan(v1::RemoveHealthPlanRequest { plan: name.clone() }),
        ));
    }
    let telemetry = || v1::GetNodeTelemetryRequest {
        node: "n1".into(),
        ..Default::default()
    };
    for name in names() {
        cases.push((
            "node",
            Call::GetNodeTelemetry(v1::GetNodeTelemetryRequest {
                node: name.clone(),
                ..telemetry()
            }),
        ));
    }
    for field in ["gpu_tmep_c".to_owned(), over_name(), NUL.to_owned()] {
        cases.push((
            "fields",
            Call::GetNodeTelemetry(v1::GetNodeTelemetryRequest {
                fields: vec!["power_w".into(), field],
                ..telemetry()
            }),
        ));
    }
    cases.push((
        "resolution_seconds",
        Call::GetNodeTelemetry(v1::GetNodeTelemetryRequest {
            resolution_seconds: 7,
            ..telemetry()
        }),
    ));
    cases.push((
        "limit",
        Call::GetNodeTelemetry(v1::GetNodeTelemetryRequest {
            limit: 2_001,
            ..telemetry()
        }),
    ));
    for field in ["since", "until"] {
        let mut request = telemetry();
        if field == "since" {
            request.since = bad_time();
        } else {
            request.until = bad_time();
        }
        cases.push((field, Call::GetNodeTelemetry(request)));
    }
    for every_seconds in [0, 59, 90 * 86_400 + 1] {
        cases.push((
            "every_seconds",
            Call::SetHealthPlan(v1::SetHealthPlanRequest {
                every_seconds,
                ..health_plan()
            }),
        ));
    }
    cases.push((
        "ttl_seconds",
        Call::EnrollNode(v1::EnrollNodeRequest {
            node_name: "n3".into(),
            labels: Default::default(),
            ttl_seconds: u64::MAX,
        }),
    ));
    cases.push((
        "inventory",
        Call::Register(v1::RegisterRequest {
            inventory: None,
            ..register.clone()
        }),
    ));
    cases.push((
        "agent_version",
        Call::Register(v1::RegisterRequest {
            agent_version: over(&tollgate_domain::limits::VERSION),
            ..register
        }),
    ));
    cases.push((
        "attempt",
        Call::ReportResult(Box::new(v1::StepResult {
            attempt: 0,
            ..result.clone()
        })),
    ));
    cases.push((
        "outcome",
        Call::ReportResult(Box::new(v1::StepResult {
            outcome: 99,
            ..result.clone()
        })),
    ));
    cases.push((
        "started_at",
        Call::ReportResult(Box::new(v1::StepResult {
            started_at: bad_time(),
            ..result.clone()
        })),
    ));
    cases.push((
        "log_tail",
        Call::ReportResult(Box::new(v1::StepResult {
            log_tail: over(&tollgate_domain::limits::LOG_TAIL),
            ..result
        })),
    ));
    cases.push((
        "csr_pem",
        Call::Enroll(v1::EnrollRequest {
            node_name: "n4".into(),
            bootstrap_token: "t".into(),
            csr_pem: over(&tollgate_domain::limits::CSR),
        }),
    ));
}

/// What must not change: every table's row count and the audit chain's head.
async fn snapshot(store: &Store) -> (Vec<(String, i64)>, Option<String>) {
    const SQLITE_TABLES: &str = "SELECT name FROM sqlite_master WHERE type = 'table'
         AND name NOT LIKE 'sqlite_%' ORDER BY name";
    const POSTGRES_TABLES: &str = "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1";
    let mut counts = Vec::new();
    match store.pool() {
        Pool::Sqlite(pool) => {
            let tables: Vec<String> = sqlx::query_scalar(SQLITE_TABLES)
                .fetch_all(pool)
                .await
                .expect("tables");
            for table in tables {
                let sql = format!("SELECT COUNT(*) FROM \"{table}\"");
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
                    .expect("count");
                counts.push((table, n));
            }
        }
        Pool::Postgres(pool) => {
            let tables: Vec<String> = sqlx::query_scalar(POSTGRES_TABLES)
                .fetch_all(pool)
                .await
                .expect("tables");
            for table in tables {
                let sql = format!("SELECT COUNT(*) FROM \"{table}\"");
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
                    .expect("count");
                counts.push((table, n));
            }
        }
    }
    (counts, store.audit_head().await.expect("audit head"))
}

async fn every_malformed_field_is_refused_by_name_and_changes_nothing(backend: Backend) {
    let mut options = ControllerOptions::new(backend);
    options.limits.rate.per_second = 0;
    let Some(controller) = Controller::start(options).await else {
        return;
    };
    let mut clients = controller.clients().await;
    clients.create_release("r1").await;
    clients.apply_plan(&plan_yaml(1.0)).await;
    // Node n1 registers (on this loopback listener an agent's node token names it) and sends
    // its results with that token.
    let token = v1::agent_service_client::AgentServiceClient::new(controller.channel().await)
        .register(v1::RegisterRequest {
            node_name: "n1".into(),
            inventory: Some(v1::Inventory {
                driver_version: "550.54.15".into(),
                gpu_source: "simulated".into(),
                hostname: "n1".into(),
                ..Default::default()
            }),
            agent_version: "test".into(),
            ..Default::default()
        })
        .await
        .expect("n1 registers")
        .into_inner()
        .node_token;
    let mut agent = v1::agent_service_client::AgentServiceClient::with_interceptor(
        controller.channel().await,
        NodeToken(token),
    );
    let store = Store::connect(&controller.database_url)
        .await
        .expect("the controller's store");
    let mut before = snapshot(&store).await;
    assert!(before.1.is_some(), "the setup wrote audit entries");

    let mut wrong = Vec::new();
    for (field, call) in cases() {
        let described = format!("{call:?}");
        let described: String = described.chars().take(160).collect();
        match send(&mut clients, &mut agent, call).await {
            Ok(()) => wrong.push(format!("{field}: accepted {described}")),
            Err(status) => {
                use tonic_types::StatusExt as _;
                let named = status
                    .get_error_details()
                    .bad_request()
                    .is_some_and(|bad| bad.field_violations.iter().any(|v| v.field == field));
                if status.code() != Code::InvalidArgument || !named {
                    wrong.push(format!(
                        "{field}: {:?} {:?} for {described}",
                        status.code(),
                        status.message()
                    ));
                }
            }
        }
        let after = snapshot(&store).await;
        if after != before {
            wrong.push(format!("{field}: changed the store: {described}"));
            before = after;
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cases answered wrongly:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
