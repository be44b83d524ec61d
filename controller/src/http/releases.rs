//! The releases: each on its milestone track, the current gate's verdict rule by rule with
//! reasons, failing nodes and failure groups, the waivers in force, the promotions, the runs,
//! and in one sentence what blocks the release now; each milestone's target against its
//! projected finish, and which are at risk (`ListReleases` and `GetRelease` project every
//! release once per page). Release managers promote and waive here.

use super::layout::{self, badge, csrf, report_links, time};
use super::session::{Caller, PageError, encode};
use axum::extract::{Path, Query};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use tollgate_proto::v1::{
    self as pb, gate_service_server::GateService, release_service_server::ReleaseService,
    run_service_server::RunService,
};
use tollgate_wire::release::{blocker, finish_words, risk_words, waits_words};

/// gRPC paths the release pages call (rows of `grpc/authz.rs`).
pub const LIST_RELEASES: &str = "/tollgate.v1.ReleaseService/ListReleases";
/// `GetRelease`.
pub const GET_RELEASE: &str = "/tollgate.v1.ReleaseService/GetRelease";
/// `Promote`.
pub const PROMOTE: &str = "/tollgate.v1.ReleaseService/Promote";
/// `EvaluateGate`.
pub const EVALUATE_GATE: &str = "/tollgate.v1.GateService/EvaluateGate";
/// `Waive`.
pub const WAIVE: &str = "/tollgate.v1.GateService/Waive";
/// `ListWaivers`.
pub const LIST_WAIVERS: &str = "/tollgate.v1.GateService/ListWaivers";
/// `ListRuns`.
pub const LIST_RUNS: &str = "/tollgate.v1.RunService/ListRuns";

/// `/releases`' query: the page.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    page: String,
}

/// Every release (a page of 100), newest first, on its track.
pub async fn list(caller: Caller, Query(query): Query<ListQuery>) -> Result<Response, PageError> {
    let api = crate::grpc::release::ReleaseApi::new(caller.shared.clone());
    let answer = caller
        .rpc(
            LIST_RELEASES,
            pb::ListReleasesRequest {
                page_size: 100,
                page_token: query.page,
            },
            |request| api.list_releases(request),
        )
        .await?;
    let body = html! {
        h1 { "Releases" }
        @if answer.releases.is_empty() {
            p.muted { "No release yet: register one with " code { "tollgate release create" } "." }
        } @else {
            table.list {
                thead { tr { th { "Release" } th { "Track" } th { "State" } th { "Target vs projected" } th { "Created" } th { "Report" } } }
                tbody {
                    @for release in &answer.releases {
                        tr {
                            td { a href={ "/releases/" (encode(&release.name)) } { (release.name) }
                                 @if !release.description.is_empty() { div.muted { (release.description) } } }
                            td { (track(release)) }
                            td { @if release.halted_reason.is_empty() { (badge("active")) } @else { (badge("halted")) } }
                            td { (plan_of_record_lines(release)) }
                            td { (time(release.created_at.as_ref())) }
                            td { (report_links(&release.name, report_milestone(release))) }
                        }
                    }
                }
            }
            @if !answer.next_page_token.is_empty() {
                p { a href={ "/releases?page=" (encode(&answer.next_page_token)) } { "Next page →" } }
            }
        }
    };
    Ok(layout::page(&caller, "Releases", "/releases", body))
}

/// Each milestone's target against its projected (or passed) finish, one line each, with
/// `AT RISK (why)` where it is.
fn plan_of_record_lines(release: &pb::Release) -> Markup {
    html! {
        @if release.projections.is_empty() { span.muted { "—" } }
        @for projection in &release.projections {
            div.projection {
                (projection.milestone) ": "
                @if projection.target_date.is_empty() { span.muted { "no target" } } @else { (projection.target_date) }
                " vs " (finish_words(projection))
                @let risk = risk_words(projection);
                @if !risk.is_empty() { " " (badge(&risk)) }
                @let waits = waits_words(projection);
                @if !waits.is_empty() { " " span.muted { (waits) } }
            }
        }
    }
}

/// The plan of record as a table: milestone, target, projected (or passed), risk.
fn plan_of_record_table(release: &pb::Release) -> Markup {
    html! {
        section {
            h2 { "Plan of record" }
            @if release.projections.is_empty() { p.muted { "Not projected." } }
            @else {
                table.list.plan-of-record {
                    thead { tr { th { "Milestone" } th { "Target" } th { "Projected" } th { "Risk" } th { "Queues behind" } } }
                    tbody { @for projection in &release.projections {
                        tr { td { (projection.milestone) }
                             td { @if projection.target_date.is_empty() { span.muted { "—" } } @else { (projection.target_date) } }
                             td { (finish_words(projection)) }
                             td { @let risk = risk_words(projection);
                                  @if risk.is_empty() { span.muted { "—" } } @else { (badge(&risk)) } }
                             td { @if projection.waits_for.is_empty() { span.muted { "—" } }
                                  @for holder in &projection.waits_for {
                                      a href=(format!("/releases/{}", encode(&holder.release))) { (holder.release) }
                                      " " (holder.milestone) " " } } }
                    } }
                }
            }
        }
    }
}

/// The milestone whose report shows the release now: its current one, or the last of the
/// track once released.
fn report_milestone(release: &pb::Release) -> &str {
    if release.milestone == tollgate_domain::release::RELEASED {
        release.track.last().map_or("", String::as_str)
    } else {
        &release.milestone
    }
}

/// The milestone track with the release's place on it.
fn track(release: &pb::Release) -> Markup {
    let current = release.track.iter().position(|m| *m == release.milestone);
    let released = release.milestone == tollgate_domain::release::RELEASED;
    html! {
        ol.track aria-label="Milestone track" {
            @for (idx, milestone) in release.track.iter().enumerate() {
                @let state = match current {
                    _ if released => "done",
                    Some(at) if idx < at => "done",
                    Some(at) if idx == at => "current",
                    _ => "ahead",
                };
                li class=(state) {
                    @if state == "current" { span aria-current="step" { (milestone) } } @else { (milestone) }
                }
            }
            li class=(if released { "current" } else { "ahead" }) { "released" }
        }
    }
}

/// One release: its track, what blocks it, the gate rule by rule, waivers, promotions, runs.
pub async fn show(caller: Caller, Path(name): Path<String>) -> Result<Response, PageError> {
    let shared = caller.shared.clone();
    let releases = crate::grpc::release::ReleaseApi::new(shared.clone());
    let gates = crate::grpc::gate::GateApi::new(shared.clone());
    let runs = crate::grpc::run::RunApi::new(shared.clone());
    let release = caller
        .rpc(
            GET_RELEASE,
            pb::GetReleaseRequest { name: name.clone() },
            |request| releases.get_release(request),
        )
        .await?;
    let released = release.milestone == tollgate_domain::release::RELEASED;
    let decision = if released {
        Err("released".to_owned())
    } else {
        match caller
            .rpc(
                EVALUATE_GATE,
                pb::EvaluateGateRequest {
                    release: name.clone(),
                    milestone: String::new(),
                    at: None,
                },
                |request| gates.evaluate_gate(request),
            )
            .await
        {
            Ok(decision) => Ok(decision),
            Err(PageError::Status(status)) => Err(status.message().to_owned()),
            Err(other) => return Err(other),
        }
    };
    let waivers = if caller.may(LIST_WAIVERS) {
        super::waivers::of_release(&caller, &gates, &name).await?
    } else {
        Vec::new()
    };
    let now = shared.now();
    let in_force: Vec<&pb::Waiver> = waivers
        .iter()
        .filter(|waiver| super::waivers::in_force(waiver, now))
        .collect();
    let run_list = caller
        .rpc(
            LIST_RUNS,
            pb::ListRunsRequest {
                release: name.clone(),
                page_size: 20,
                page_token: String::new(),
            },
            |request| runs.list_runs(request),
        )
        .await?;
    let rollouts: Vec<pb::Rollout> = if caller.may(super::rollouts::LIST_ROLLOUTS) {
        super::rollouts::all(&caller, Some(&release.name), None).await?
    } else {
        Vec::new()
    };
    let may_promote = caller.may(PROMOTE) && !released;
    let may_waive = caller.may(WAIVE) && !released;
    let milestone = decision
        .as_ref()
        .map_or(release.milestone.clone(), |decision| {
            decision.milestone.clone()
        });
    let body = html! {
        h1 { "Release " (release.name) }
        @if !release.description.is_empty() { p.muted { (release.description) } }
        (track(&release))
        p.blocker role="status" { b { "What blocks it now: " } (blocker(&release, &decision)) }
        p { @for issue in &release.blocking_issues {
                a href={ "/issues/" (issue.id) } { "issue #" (issue.id) } " · "
            }
            a href={ "/issues?release=" (encode(&release.name)) } { "every issue of " (release.name) } }
        (plan_of_record_table(&release))
        p { (report_links(&release.name, if released { report_milestone(&release) } else { &milestone })) }
        @if may_promote {
            form.action method="post" action={ "/releases/" (encode(&release.name)) "/promote" } {
                (csrf(&caller))
                button type="submit" { "Promote past " (milestone) }
                " " span.muted { "(refused unless the gate passed)" }
            }
        }
        section {
            h2 { "Components" }
            table.list {
                thead { tr { th { "Component" } th { "Version" } th { "Artifact" } } }
                tbody { @for component in &release.components {
                    tr { td { (component.name) } td { code { (component.version) } }
                         td { @if component.artifact_uri.is_empty() { span.muted { "—" } } @else { (component.artifact_uri) } } }
                } }
            }
        }
        @match &decision {
            Ok(decision) => (decision_view(&caller, &release.name, decision, may_waive)),
            Err(why) if !released => { section { h2 { "Gate" } p.notice { (why) } } },
            Err(_) => {},
        }
        section {
            h2 { "Waivers in force" }
            @if !caller.may(LIST_WAIVERS) { p.muted { "Your role does not list waivers." } }
            @else if in_force.is_empty() { p.muted { "None." } }
            @else { (super::waivers::table(&caller, &in_force, false)) }
        }
        section {
            h2 { "Promotions" }
            @if release.promotions.is_empty() { p.muted { "None yet." } }
            @else {
                table.list {
                    thead { tr { th { "From" } th { "To" } th { "When" } th { "By" } th { "Decision digest" } th { "Report" } } }
                    tbody { @for promotion in &release.promotions {
                        tr { td { (promotion.from_milestone) } td { (promotion.to_milestone) }
                             td { (time(promotion.at.as_ref())) } td { (promotion.actor) }
                             td { code.digest { (promotion.decision_digest) } }
                             td { (report_links(&release.name, &promotion.from_milestone)) } }
                    } }
                }
            }
        }
        section {
            h2 { "Runs" }
            @if run_list.runs.is_empty() { p.muted { "No run yet: start one with " code { "tollgate run start" } "." } }
            @else {
                table.list {
                    thead { tr { th { "Run" } th { "Plan" } th { "Milestone" } th { "State" } th { "Jobs" } th { "Started" } } }
                    tbody { @for run in &run_list.runs {
                        tr { td { a href={ "/runs/" (encode(&run.id)) } { (run.id) } }
                             td { (run.plan_name) } td { (run.milestone) } td { (badge(&run.state)) }
                             td { (super::runs::counts(run)) }
                             td { (time(run.created_at.as_ref())) } }
                    } }
                }
            }
        }
        section {
            h2 { "Rollouts" }
            @if rollouts.is_empty() { p.muted { "Not rolled out: once its production gate passed, start one with " code { "tollgate rollout start" } "." } }
            @else { (super::rollouts::table(&rollouts, false)) }
        }
    };
    Ok(layout::page(
        &caller,
        &format!("Release {}", release.name),
        "/releases",
        body,
    ))
}

/// The gate's decision, rule by rule.
fn decision_view(
    caller: &Caller,
    release: &str,
    decision: &pb::Decision,
    may_waive: bool,
) -> Markup {
    html! {
        section {
            h2 { "Gate " (decision.milestone) " " (badge(&decision.verdict)) }
            p { (decision.summary) }
            p.muted { "Evaluated " (time(decision.evaluated_at.as_ref())) " · policy "
                code { (decision.policy_version.get(..12).unwrap_or(&decision.policy_version)) }
                " · digest " code.digest { (decision.digest) } }
            table.list.rules {
                thead { tr { th { "Rule" } th { "Verdict" } th { "Reason" } th { "Failing nodes" } th { "Failure groups" } } }
                tbody {
                    @for rule in &decision.rules {
                        tr {
                            td { b { (rule.rule_id) } div.muted { (rule.kind) } }
                            td { (badge(&rule.verdict)) @if !rule.waiver_id.is_empty() { div.muted { "waiver " (rule.waiver_id) } } }
                            td { (rule.reason) }
                            td { @for node in &rule.failing_nodes { a.chip href={ "/nodes/" (encode(node)) } { (node) } " " } }
                            td { @for group in &rule.failure_groups {
                                div { code { (group.signature) } " × " (group.count) " on " (group.nodes.join(", ")) } } }
                        }
                        @if may_waive && matches!(rule.verdict.as_str(), "failed" | "waiting" | "error") {
                            tr.waive { td colspan="5" {
                                details {
                                    summary { "Waive " (rule.rule_id) "…" }
                                    form.grid method="post" action={ "/releases/" (encode(release)) "/waive" } {
                                        (csrf(caller))
                                        input type="hidden" name="milestone" value=(decision.milestone);
                                        input type="hidden" name="rule_id" value=(rule.rule_id);
                                        label { "Reason " input type="text" name="reason" required; }
                                        label { "Ticket " input type="text" name="ticket" required; }
                                        label { "For " input type="text" name="ttl" value="7d" required size="6"; }
                                        button type="submit" { "Grant waiver" }
                                    }
                                }
                            } }
                        }
                    }
                }
            }
        }
    }
}

/// Promotes the release past its milestone, through `ReleaseService/Promote`.
pub async fn promote(
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<layout::ActionForm>,
) -> Result<Response, PageError> {
    caller.check_post(&headers, &form.csrf)?;
    let api = crate::grpc::release::ReleaseApi::new(caller.shared.clone());
    caller
        .rpc(
            PROMOTE,
            pb::PromoteRequest { name: name.clone() },
            |request| api.promote(request),
        )
        .await?;
    Ok(Redirect::to(&format!("/releases/{}", encode(&name))).into_response())
}

/// The waive form.
#[derive(Debug, serde::Deserialize)]
pub struct WaiveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    milestone: String,
    #[serde(default)]
    rule_id: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    ticket: String,
    #[serde(default)]
    ttl: String,
}

/// Grants a waiver of one rule, through `GateService/Waive`.
pub async fn waive(
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<WaiveForm>,
) -> Result<Response, PageError> {
    caller.check_post(&headers, &form.csrf)?;
    let ttl = tollgate_domain::spec::parse_duration(form.ttl.trim()).map_err(|why| {
        PageError::BadRequest(format!(
            "the waiver's duration '{}' does not parse ({why}); give one such as 7d or 12h",
            form.ttl
        ))
    })?;
    let api = crate::grpc::gate::GateApi::new(caller.shared.clone());
    caller
        .rpc(
            WAIVE,
            pb::WaiveRequest {
                release: name.clone(),
                milestone: form.milestone,
                rule_id: form.rule_id,
                reason: form.reason,
                ticket: form.ticket,
                expires_at: None,
                ttl_seconds: ttl.as_secs(),
                nodes: Vec::new(),
                skus: Vec::new(),
                steps: Vec::new(),
                issue: 0,
            },
            |request| api.waive(request),
        )
        .await?;
    Ok(Redirect::to(&format!("/releases/{}", encode(&name))).into_response())
}
