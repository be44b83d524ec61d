//! The rollouts: every rollout with its phase, wave and nodes done (`/rollouts`), and one
//! rollout (`/rollouts/ID`): its phase and why, each wave's nodes with their state and runs,
//! each wave's health verdicts with reasons, the blast-radius limits of its file, and its audit
//! entries. Read through `RolloutService` (`GetRollout`, `ListRollouts`: a customer sees only
//! the rollouts of the releases for it) and `AuditService/ListAudit`; one rollout's page makes
//! the same few calls however many nodes it has.

use super::layout::{self, badge, time};
use super::session::{Caller, PageError, encode};
use axum::extract::Path;
use axum::response::Response;
use maud::{Markup, html};
use tollgate_proto::v1::{
    self as pb, audit_service_server::AuditService, rollout_service_server::RolloutService,
};

/// `ListRollouts`.
pub const LIST_ROLLOUTS: &str = "/tollgate.v1.RolloutService/ListRollouts";
/// `GetRollout`.
pub const GET_ROLLOUT: &str = "/tollgate.v1.RolloutService/GetRollout";

/// The rollout's entries in one page of the audit log (its release's, since it was created).
const AUDIT_PAGE: u32 = 1000;

/// Every rollout the caller may see, newest first (`ListRollouts`, summarized): of `release`
/// only, and holding `node` only, when given.
pub async fn all(
    caller: &Caller,
    release: Option<&str>,
    node: Option<&str>,
) -> Result<Vec<pb::Rollout>, PageError> {
    let api = crate::grpc::rollout::RolloutApi::new(caller.shared.clone());
    Ok(caller
        .rpc(
            LIST_ROLLOUTS,
            pb::ListRolloutsRequest {
                active_only: false,
                release: release.unwrap_or_default().to_owned(),
                node: node.unwrap_or_default().to_owned(),
            },
            |request| api.list_rollouts(request),
        )
        .await?
        .rollouts)
}

/// `/rollouts`: every rollout, newest first.
pub async fn list(caller: Caller) -> Result<Response, PageError> {
    let rollouts = all(&caller, None, None).await?;
    let body = html! {
        h1 { "Rollouts" }
        @if rollouts.is_empty() {
            p.muted { "No rollout yet: start one with " code { "tollgate rollout start" } " once a release passed its production gate." }
        } @else {
            (table(&rollouts, true))
        }
    };
    Ok(layout::page(&caller, "Rollouts", "/rollouts", body))
}

/// A table of rollouts: release (with `with_release`), fleet, phase, wave, nodes done,
/// started, halt reason. Also on the release and node pages.
pub fn table(rollouts: &[pb::Rollout], with_release: bool) -> Markup {
    html! {
        table.list.rollouts {
            thead { tr {
                th { "Rollout" }
                @if with_release { th { "Release" } }
                th { "Fleet" } th { "Phase" } th { "Wave" } th { "Nodes done" } th { "Started" } th { "Halted because" }
            } }
            tbody { @for rollout in rollouts {
                tr {
                    td { a href={ "/rollouts/" (encode(&rollout.id)) } { (rollout.id) } div.muted { (rollout.name) } }
                    @if with_release { td { a href={ "/releases/" (encode(&rollout.release)) } { (rollout.release) } } }
                    td { @if rollout.fleet.is_empty() { span.muted { "—" } } @else { code { (rollout.fleet) } } }
                    td { (phase_badge(rollout)) }
                    td { (wave_words(rollout)) }
                    td { (nodes_done(rollout)) }
                    td { (time(rollout.created_at.as_ref())) }
                    td { @match &rollout.halt {
                        Some(halt) => { @for failure in &halt.failures { div { (failure_words(failure)) } } },
                        None => { span.muted { "—" } },
                    } }
                }
            } }
        }
    }
}

/// The phase as a badge, with the phase a paused rollout resumes to.
fn phase_badge(rollout: &pb::Rollout) -> Markup {
    html! {
        (badge(&rollout.phase))
        @if !rollout.paused_from.is_empty() { " " span.muted { "(from " (rollout.paused_from) ")" } }
    }
}

/// `wave 2 of 3`.
fn wave_words(rollout: &pb::Rollout) -> String {
    if rollout.n_waves == 0 {
        return "no wave".to_owned();
    }
    format!("wave {} of {}", rollout.wave + 1, rollout.n_waves)
}

/// `7 / 12`: the nodes whose procedure passed, of all.
fn nodes_done(rollout: &pb::Rollout) -> String {
    let count = |wanted: Option<&str>| -> u32 {
        rollout
            .progress_counts
            .iter()
            .filter(|count| wanted.is_none_or(|wanted| count.progress == wanted))
            .map(|count| count.nodes)
            .sum()
    };
    format!("{} / {}", count(Some("passed")), count(None))
}

/// `rule no-xid failed on prod-2: 1 event(s) ...`.
fn failure_words(failure: &pb::RolloutHealthFailure) -> String {
    if failure.nodes.is_empty() {
        format!("rule {} failed: {}", failure.rule_id, failure.reason)
    } else {
        format!(
            "rule {} failed on {}: {}",
            failure.rule_id,
            failure.nodes.join(", "),
            failure.reason
        )
    }
}

/// Why the rollout is in its phase, in one sentence.
fn why(rollout: &pb::Rollout) -> String {
    let wave = rollout.wave + 1;
    match rollout.phase.as_str() {
        "pending" => "Created; its first wave starts at the controller's next tick.".to_owned(),
        "running" => format!("Wave {wave}'s nodes go through the procedure as the blast radius allows."),
        "soaking" => format!("Every node of wave {wave} finished; the wave soaks before its health is judged."),
        "judging" => format!("Wave {wave}'s health rules are being judged over its procedure runs."),
        "interval" => format!("Wave {} passed; the pause between waves runs before wave {wave} starts.", rollout.wave),
        "paused" => format!("A person paused it (see the audit entries below); it resumes to {}.", rollout.paused_from),
        "halted" => format!("A health rule of wave {} failed: nothing starts until a person resumes it, skips the wave or aborts it.", rollout.halt.as_ref().map_or(wave, |halt| halt.wave + 1)),
        "rolling-back" => "Aborted with rollback: every node that went through the procedure runs the rollback plan.".to_owned(),
        "rolled-back" => "Aborted with rollback, and every updated node ran the rollback plan.".to_owned(),
        "aborted" => "Aborted: no node starts again; updated nodes keep the release.".to_owned(),
        "completed" => "Every wave passed its health rules.".to_owned(),
        other => format!("Phase {other}."),
    }
}

/// A node's state in words: waiting, in procedure, soaking (its wave soaks), done, failed,
/// skipped, rollback pending, rolling back, rolled back, rollback failed.
fn node_state(rollout: &pb::Rollout, wave: &pb::RolloutWave, node: &pb::RolloutNode) -> String {
    match node.progress.as_str() {
        "passed" if wave.index == rollout.wave && rollout.phase == "soaking" => "soaking".into(),
        "passed" => "done".into(),
        other => other.replace('-', " "),
    }
}

/// One health verdict of a wave: (wave index, passed, each failure in words, when).
type Verdict = (u64, bool, Vec<String>, Option<prost_types::Timestamp>);

/// The waves' health verdicts from the rollout's audit entries (`rollout.health-judged`).
fn verdicts(entries: &[pb::AuditEntry]) -> Vec<Verdict> {
    entries
        .iter()
        .filter(|entry| entry.action == "rollout.health-judged")
        .filter_map(|entry| {
            let details: serde_json::Value = serde_json::from_str(&entry.details).ok()?;
            let failed = details["event"]["failed"].as_array();
            let passed = failed.is_none_or(Vec::is_empty);
            // The wave judged is the one before the change (`from_wave`); entries written
            // before it was recorded hold only the wave after: a failure halts in the wave
            // judged, a pass moves on to the next one unless the rollout completed.
            let wave = match details["from_wave"].as_u64() {
                Some(judged) => judged,
                None => {
                    let after = details["wave"].as_u64()?;
                    if passed && details["to"] != "completed" {
                        after.checked_sub(1)?
                    } else {
                        after
                    }
                }
            };
            let failures = failed
                .into_iter()
                .flatten()
                .map(|failure| {
                    let nodes: Vec<&str> = failure["nodes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(serde_json::Value::as_str)
                        .collect();
                    format!(
                        "rule {} failed{}: {}",
                        failure["rule_id"].as_str().unwrap_or("?"),
                        if nodes.is_empty() {
                            String::new()
                        } else {
                            format!(" on {}", nodes.join(", "))
                        },
                        failure["reason"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>();
            Some((wave, passed, failures, entry.at))
        })
        .collect()
}

/// `/rollouts/ID`: one rollout.
pub async fn show(caller: Caller, Path(id): Path<String>) -> Result<Response, PageError> {
    let api = crate::grpc::rollout::RolloutApi::new(caller.shared.clone());
    let rollout = caller
        .rpc(
            GET_ROLLOUT,
            pb::GetRolloutRequest { id: id.clone() },
            |request| api.get_rollout(request),
        )
        .await?;
    let entries = if caller.may(super::audit::LIST_AUDIT) {
        let audit = crate::grpc::audit::AuditApi::new(caller.shared.clone());
        let subject = format!("rollout/{}", rollout.id);
        let page = caller
            .rpc(
                super::audit::LIST_AUDIT,
                pb::ListAuditRequest {
                    release: rollout.release.clone(),
                    actor: String::new(),
                    since: rollout.created_at,
                    until: None,
                    page_size: AUDIT_PAGE,
                    page_token: String::new(),
                },
                |request| audit.list_audit(request),
            )
            .await?;
        Some(
            page.entries
                .into_iter()
                .filter(|entry| entry.subject == subject)
                .collect::<Vec<_>>(),
        )
    } else {
        None
    };
    let spec = tollgate_domain::rollout::parse_rollout("rollout.yaml", &rollout.file).ok();
    let verdicts = entries.as_deref().map(verdicts).unwrap_or_default();
    let body = html! {
        h1 { "Rollout " (rollout.id) " " (phase_badge(&rollout)) }
        p { "Rollout " b { (rollout.name) } " of release "
            a href={ "/releases/" (encode(&rollout.release)) } { (rollout.release) }
            " onto " @if rollout.fleet.is_empty() { "its file's selector" } @else { code { (rollout.fleet) } }
            ", started by " (rollout.created_by) " " (time(rollout.created_at.as_ref())) "." }
        p.blocker role="status" { b { "Phase: " } (rollout.phase) ", " (wave_words(&rollout)) ", since " (time(rollout.since.as_ref())) ". " (why(&rollout)) }
        @if let Some(halt) = &rollout.halt {
            section.halt {
                h2 { "Halted at wave " (halt.wave + 1) " " (time(halt.at.as_ref())) }
                ul { @for failure in &halt.failures {
                    li { "rule " b { (failure.rule_id) } " failed"
                         @if !failure.nodes.is_empty() { " on " @for node in &failure.nodes { a.chip href={ "/nodes/" (encode(node)) } { (node) } " " } }
                         ": " (failure.reason) }
                } }
            }
        }
        dl.facts {
            dt { "Nodes done" } dd { (nodes_done(&rollout)) }
            dt { "Ends about" } dd { @match &rollout.eta {
                Some(eta) => { (time(Some(eta))) span.muted { " (" (rollout.eta_nodes_left) " node(s) left, " (humantime(std::time::Duration::from_secs_f64(rollout.eta_per_node_seconds.max(0.0)))) " each)" } },
                None => { span.muted { "no estimate while " (rollout.phase) } },
            } }
            dt { "File" } dd { "sha256 " code.digest { (rollout.digest) } }
            @if let Some(spec) = &spec {
                dt { "Procedure" } dd { "plan " code { (spec.procedure.plan) } }
                dt { "Rollback" } dd { @match &spec.rollback { Some(rollback) => { "plan " code { (rollback.plan) } }, None => { span.muted { "none: a halt waits for a person" } } } }
                dt { "Soak" } dd { (humantime(spec.soak)) }
                dt { "Blast radius" } dd {
                    @if spec.limits.max_concurrent.is_empty() { "no per-label limit" }
                    @for (key, n) in &spec.limits.max_concurrent { span.chip { "at most " (n) " per " (key) } " " }
                    @if spec.limits.maintenance_windows { "; only inside maintenance windows" }
                    @if !spec.limits.pause_between_waves.is_zero() { "; " (humantime(spec.limits.pause_between_waves)) " between waves" }
                }
                dt { "Health rules" } dd { @for rule in &spec.health { code { (rule.id) } " " } }
            }
        }
        @if !rollout.drifted.is_empty() {
            section.drifted {
                h2 { "Drift since this rollout" }
                p { "Nodes this rollout updated that now report other components than it brought them to:" }
                table.list {
                    thead { tr { th { "Node" } th { "Component" } th { "Expected" } th { "Reported" } } }
                    tbody { @for one in &rollout.drifted {
                        tr { td { a href={ "/nodes/" (encode(&one.node)) } { (one.node) } " " (badge("drifted")) }
                             td { (one.component) } td { code { (one.expected) } }
                             td { @if one.reported.is_empty() { span.muted { "nothing" } } @else { code { (one.reported) } } } }
                    } }
                }
            }
        }
        @for skipped in &rollout.skipped {
            p.notice { "Wave " (skipped.wave + 1) " was skipped (" (skipped.nodes.join(", ")) "): " (skipped.reason) }
        }
        @for wave in &rollout.waves {
            section.wave {
                h2 { "Wave " (wave.index + 1) " of " (rollout.waves.len())
                     @if wave.index == rollout.wave && !matches!(rollout.phase.as_str(), "completed" | "rolled-back" | "aborted") { " " (badge("current")) } }
                @let judged: Vec<_> = verdicts.iter().filter(|verdict| verdict.0 == u64::from(wave.index)).collect();
                @if judged.is_empty() { p.muted { "Health not judged yet." } }
                @for (_, passed, failures, at) in &judged {
                    div.verdict {
                        "Health " (badge(if *passed { "passed" } else { "failed" })) " " (time(at.as_ref()))
                        @for failure in failures { div { (failure) } }
                    }
                }
                table.list.wave {
                    thead { tr { th { "Node" } th { "State" } th { "Procedure run" } th { "Rollback run" } } }
                    tbody { @for node in &wave.nodes {
                        tr {
                            td { a href={ "/nodes/" (encode(&node.node)) } { (node.node) } }
                            td { (badge(&node_state(&rollout, wave, node))) }
                            td { @if node.run.is_empty() { span.muted { "—" } } @else { a href={ "/runs/" (encode(&node.run)) } { (node.run) } } }
                            td { @if node.rollback_run.is_empty() { span.muted { "—" } } @else { a href={ "/runs/" (encode(&node.rollback_run)) } { (node.rollback_run) } } }
                        }
                    } }
                }
            }
        }
        section {
            h2 { "Audit entries" }
            @match &entries {
                None => { p.muted { "Your role does not read the audit log." } },
                Some(entries) if entries.is_empty() => { p.muted { "None." } },
                Some(entries) => {
                    table.list.audit {
                        thead { tr { th { "#" } th { "When" } th { "Actor" } th { "Action" } th { "Details" } } }
                        tbody { @for entry in entries {
                            tr { td { (entry.seq) } td { (time(entry.at.as_ref())) } td { (entry.actor) }
                                 td { code { (entry.action) } } td { code.details { (entry.details) } } }
                        } }
                    }
                },
            }
        }
    };
    Ok(layout::page(
        &caller,
        &format!("Rollout {}", rollout.id),
        "/rollouts",
        body,
    ))
}

/// A duration as the rollout file writes it (`90s`, `5m`).
fn humantime(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs();
    if seconds == 0 {
        "none".to_owned()
    } else if seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(details: serde_json::Value) -> pb::AuditEntry {
        pb::AuditEntry {
            action: "rollout.health-judged".into(),
            details: details.to_string(),
            ..pb::AuditEntry::default()
        }
    }

    #[test]
    fn a_verdict_belongs_to_the_wave_judged() {
        let failed =
            serde_json::json!([{"rule_id": "no-xid", "reason": "XID 79", "nodes": ["n4"]}]);
        let judged: Vec<(u64, bool)> = verdicts(&[
            // Recorded with the wave judged: a pass of wave 1 moving on to wave 2.
            entry(serde_json::json!({"event": null, "from_wave": 1, "wave": 2, "to": "running"})),
            // A pass of the last wave, completing.
            entry(serde_json::json!({"event": null, "from_wave": 3, "wave": 3, "to": "completed"})),
            // A failure halting in wave 2.
            entry(serde_json::json!({"event": {"failed": failed}, "from_wave": 2, "wave": 2, "to": "halted"})),
            // Entries from before `from_wave`: the wave is worked out from the one after.
            entry(serde_json::json!({"event": null, "wave": 2, "to": "running"})),
            entry(serde_json::json!({"event": {"failed": failed}, "wave": 2, "to": "halted"})),
        ])
        .into_iter()
        .map(|(wave, passed, _, _)| (wave, passed))
        .collect();
        assert_eq!(
            judged,
            [(1, true), (3, true), (2, false), (1, true), (2, false)]
        );
    }
}
