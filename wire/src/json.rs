//! The JSON view of every controller answer, as the CLI prints it with `-o json`.
//!
//! One function per proto message, each destructuring its message completely, so a new proto
//! field fails to compile here until someone decides how it prints. Field names are the proto's
//! snake_case names and stay stable when the generated code changes; timestamps and outcomes go
//! through this crate's conversions ([`crate::time`], [`crate::result::outcome_from_proto`]),
//! so they print as RFC 3339 UTC text and lowercase outcome names.

use crate::result::outcome_from_proto;
use crate::time::timestamp_from_proto;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use tollgate_proto::v1 as pb;

/// A timestamp as RFC 3339 UTC text to the second, `null` when absent and `-` when the
/// controller sent one out of range.
fn time(timestamp: Option<&prost_types::Timestamp>) -> Value {
    match timestamp {
        Some(at) => Value::String(timestamp_from_proto(at).map_or_else(
            || "-".to_owned(),
            |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )),
        None => Value::Null,
    }
}

/// An outcome's lowercase name; `unknown` for unspecified or newer values.
pub fn outcome_name(outcome: i32) -> &'static str {
    outcome_from_proto(outcome).map_or("unknown", |outcome| outcome.as_str())
}

fn map(labels: &HashMap<String, String>) -> Value {
    let sorted: BTreeMap<&String, &String> = labels.iter().collect();
    json!(sorted)
}

/// A node.
pub fn node(node: &pb::Node) -> Value {
    let pb::Node {
        name,
        labels,
        state,
        health,
        inventory: node_inventory,
        last_seen_at,
        current_job_id,
        health_reason,
        reported_labels,
        drain_deadline,
        maintenance_window,
        health_checks,
        rollout_drift,
    } = node;
    json!({
        "name": name,
        "labels": map(labels),
        "reported_labels": map(reported_labels),
        "state": state,
        "health": health,
        "health_reason": health_reason,
        "inventory": node_inventory.as_ref().map(inventory),
        "last_seen_at": time(last_seen_at.as_ref()),
        "current_job_id": current_job_id,
        "drain_deadline": time(drain_deadline.as_ref()),
        "maintenance_window": maintenance_window,
        "health_checks": health_checks.iter().map(|check| {
            let pb::NodeHealthCheck { plan_name, run_id, started_at, verdict } = check;
            json!({
                "plan_name": plan_name,
                "run_id": run_id,
                "started_at": time(started_at.as_ref()),
                "verdict": verdict,
            })
        }).collect::<Vec<_>>(),
        "rollout_drift": rollout_drift.iter().map(drift).collect::<Vec<_>>(),
    })
}

/// A component a node reports otherwise than the rollout that updated it brought it to.
pub fn drift(drift: &pb::RolloutDrift) -> Value {
    let pb::RolloutDrift {
        rollout,
        node,
        component,
        expected,
        reported,
    } = drift;
    json!({
        "rollout": rollout,
        "node": node,
        "component": component,
        "expected": expected,
        "reported": reported,
    })
}

/// A node's inventory.
pub fn inventory(inventory: &pb::Inventory) -> Value {
    let pb::Inventory {
        driver_version,
        cuda_driver_version,
        nvml_version,
        gpus,
        components,
        gpu_source,
        hostname,
    } = inventory;
    json!({
        "driver_version": driver_version,
        "cuda_driver_version": cuda_driver_version,
        "nvml_version": nvml_version,
        "gpus": gpus.iter().map(gpu).collect::<Vec<_>>(),
        "components": map(components),
        "gpu_source": gpu_source,
        "hostname": hostname,
    })
}

/// One GPU.
pub fn gpu(gpu: &pb::GpuInfo) -> Value {
    let pb::GpuInfo {
        index,
        uuid,
        name,
        serial,
        board_part_number,
        pci_bus_id,
        vbios_version,
        inforom_version,
        memory_total_mib,
        ecc_enabled,
        power_limit_w,
        max_pcie_gen,
        max_pcie_width,
    } = gpu;
    json!({
        "index": index,
        "uuid": uuid,
        "name": name,
        "serial": serial,
        "board_part_number": board_part_number,
        "pci_bus_id": pci_bus_id,
        "vbios_version": vbios_version,
        "inforom_version": inforom_version,
        "memory_total_mib": memory_total_mib,
        "ecc_enabled": ecc_enabled,
        "power_limit_w": power_limit_w,
        "max_pcie_gen": max_pcie_gen,
        "max_pcie_width": max_pcie_width,
    })
}

/// A release.
pub fn release(release: &pb::Release) -> Value {
    let pb::Release {
        name,
        components,
        description,
        milestone,
        track,
        created_at,
        promotions,
        halted_reason,
        targets,
        projections,
        customers,
        blocking_issues,
    } = release;
    json!({
        "name": name,
        "components": components.iter().map(component).collect::<Vec<_>>(),
        "description": description,
        "milestone": milestone,
        "track": track,
        "created_at": time(created_at.as_ref()),
        "promotions": promotions.iter().map(promotion).collect::<Vec<_>>(),
        "halted_reason": halted_reason,
        "targets": targets.iter().map(milestone_target).collect::<Vec<_>>(),
        "projections": projections.iter().map(milestone_projection).collect::<Vec<_>>(),
        "customers": customers,
        "blocking_issues": blocking_issues.iter().map(blocking_issue).collect::<Vec<_>>(),
    })
}

/// An issue not closed or won't-fix that blocks a release.
pub fn blocking_issue(issue: &pb::BlockingIssue) -> Value {
    let pb::BlockingIssue {
        id,
        state,
        owner,
        opened_at,
        age_days,
    } = issue;
    json!({
        "id": id,
        "state": state,
        "owner": (!owner.is_empty()).then_some(owner),
        "opened_at": time(opened_at.as_ref()),
        "age_days": age_days,
    })
}

/// A milestone's target against when it was passed or is projected to be.
pub fn milestone_projection(projection: &pb::MilestoneProjection) -> Value {
    let pb::MilestoneProjection {
        milestone,
        target_date,
        finish,
        finish_at,
        basis,
        risk,
        after,
        waits_for,
    } = projection;
    json!({
        "milestone": milestone,
        "target_date": target_date,
        "finish": finish,
        "finish_at": time(finish_at.as_ref()),
        "basis": basis,
        "risk": risk,
        "after": after,
        "waits_for": waits_for
            .iter()
            .map(|holder| json!({"release": holder.release, "milestone": holder.milestone}))
            .collect::<Vec<_>>(),
    })
}

/// A milestone's target date.
pub fn milestone_target(target: &pb::MilestoneTarget) -> Value {
    let pb::MilestoneTarget {
        milestone,
        target_date,
        reason,
        set_by,
        set_at,
    } = target;
    json!({
        "milestone": milestone,
        "target_date": target_date,
        "reason": reason,
        "set_by": set_by,
        "set_at": time(set_at.as_ref()),
    })
}

/// A release component.
pub fn component(component: &pb::Component) -> Value {
    let pb::Component {
        name,
        version,
        artifact_uri,
        sha256,
    } = component;
    json!({
        "name": name,
        "version": version,
        "artifact_uri": artifact_uri,
        "sha256": sha256,
    })
}

/// A promotion.
pub fn promotion(promotion: &pb::Promotion) -> Value {
    let pb::Promotion {
        from_milestone,
        to_milestone,
        at,
        decision_digest,
        actor,
    } = promotion;
    json!({
        "from_milestone": from_milestone,
        "to_milestone": to_milestone,
        "at": time(at.as_ref()),
        "decision_digest": decision_digest,
        "actor": actor,
    })
}

/// Promote's answer.
pub fn promote_response(response: &pb::PromoteResponse) -> Value {
    let pb::PromoteResponse {
        release: promoted,
        decision: passed,
    } = response;
    json!({
        "release": promoted.as_ref().map(release),
        "decision": passed.as_ref().map(decision),
    })
}

/// A stored plan.
pub fn plan(plan: &pb::Plan) -> Value {
    let pb::Plan {
        name,
        version,
        source,
        steps,
        selector,
        created_at,
    } = plan;
    json!({
        "name": name,
        "version": version,
        "source": source,
        "steps": steps,
        "selector": map(selector),
        "created_at": time(created_at.as_ref()),
    })
}

/// A run with its jobs.
pub fn run(run: &pb::Run) -> Value {
    let pb::Run {
        id,
        release,
        plan_name,
        plan_version,
        milestone,
        state,
        created_at,
        finished_at,
        jobs,
        selection,
        purpose,
        job_counts,
        n_jobs,
        // Followed by the CLI, which prints every page's jobs as one list.
        next_page_token: _,
    } = run;
    let counts: serde_json::Map<String, Value> = job_counts
        .iter()
        .map(|pb::JobCount { state, count }| (state.clone(), json!(count)))
        .collect();
    let mut value = json!({
        "id": id,
        "purpose": purpose,
        "release": release,
        "plan_name": plan_name,
        "plan_version": plan_version,
        "milestone": milestone,
        "state": state,
        "created_at": time(created_at.as_ref()),
        "finished_at": time(finished_at.as_ref()),
        "n_jobs": n_jobs,
        "job_counts": counts,
        "jobs": jobs.iter().map(job).collect::<Vec<_>>(),
    });
    // Only `run start` answers with a selection.
    if let Some(pb::NodeSelection {
        now,
        waiting,
        left_out,
        n_plan_not_allowed,
        held,
    }) = selection
    {
        value["selection"] = json!({
            "now": now,
            "waiting": waiting,
            "left_out": left_out,
            "n_plan_not_allowed": n_plan_not_allowed,
            "held": held,
        });
    }
    value
}

/// A job.
pub fn job(job: &pb::Job) -> Value {
    let pb::Job {
        id,
        node,
        state,
        lease_epoch,
        results,
        n_steps,
        attempt,
        rescheduled_from,
    } = job;
    json!({
        "id": id,
        "node": node,
        "state": state,
        "lease_epoch": lease_epoch,
        "results": results.iter().map(step_result).collect::<Vec<_>>(),
        "n_steps": n_steps,
        "attempt": attempt,
        "rescheduled_from": rescheduled_from,
    })
}

/// A step result as a run shows it; the outcome is its lowercase name.
pub fn step_result(result: &pb::StepResultSummary) -> Value {
    let pb::StepResultSummary {
        step_index,
        step_name,
        attempt,
        outcome,
        message,
        measurements,
        duration_ms,
        sub_results,
        sub_results_not_listed,
        lease_epoch,
    } = result;
    json!({
        "step_index": step_index,
        "step_name": step_name,
        "attempt": attempt,
        "outcome": outcome_name(*outcome),
        "message": message,
        "measurements": measurements.iter().map(measurement).collect::<Vec<_>>(),
        "duration_ms": duration_ms,
        "sub_results": sub_results.iter().map(sub_result).collect::<Vec<_>>(),
        "sub_results_not_listed": sub_results_not_listed,
        "lease_epoch": lease_epoch,
    })
}

/// One test of a step (a JUnit testcase, a dcgmi diag test on one GPU); the outcome is its
/// lowercase name, a GPU or level that does not apply is null.
pub fn sub_result(sub: &pb::SubResult) -> Value {
    let pb::SubResult {
        source,
        suite,
        name,
        gpu_index,
        outcome,
        message,
        level,
    } = sub;
    json!({
        "source": source,
        "suite": suite,
        "name": name,
        "gpu_index": gpu_index,
        "outcome": outcome_name(*outcome),
        "message": message,
        "level": level,
    })
}

/// A measurement.
pub fn measurement(measurement: &pb::Measurement) -> Value {
    let pb::Measurement { name, value, unit } = measurement;
    json!({ "name": name, "value": value, "unit": unit })
}

/// A stored gate policy.
pub fn gate_policy(policy: &pb::GatePolicy) -> Value {
    let pb::GatePolicy {
        milestone,
        version,
        source,
        rules,
    } = policy;
    json!({
        "milestone": milestone,
        "version": version,
        "source": source,
        "rules": rules,
    })
}

/// A gate decision: one entry in `rules` per rule of the policy.
pub fn decision(decision: &pb::Decision) -> Value {
    let pb::Decision {
        release,
        milestone,
        verdict,
        summary,
        rules,
        digest,
        evaluated_at,
        policy_version,
        // Printed by `gate show -o greenwave` on its own.
        greenwave_json: _,
        replay,
    } = decision;
    json!({
        "release": release,
        "milestone": milestone,
        "verdict": verdict,
        "summary": summary,
        "digest": digest,
        "policy_version": policy_version,
        "evaluated_at": time(evaluated_at.as_ref()),
        "rules": rules.iter().map(rule_decision).collect::<Vec<_>>(),
        "replay": replay,
    })
}

/// One rule's verdict.
pub fn rule_decision(rule: &pb::RuleDecision) -> Value {
    let pb::RuleDecision {
        rule_id,
        kind,
        verdict,
        reason,
        evidence,
        failing_nodes,
        failure_groups,
        waiver_id,
    } = rule;
    json!({
        "rule_id": rule_id,
        "kind": kind,
        "verdict": verdict,
        "reason": reason,
        "failing_nodes": failing_nodes,
        "failure_groups": failure_groups.iter().map(|group| json!({
            "signature": group.signature,
            "count": group.count,
            "nodes": group.nodes,
        })).collect::<Vec<_>>(),
        "waiver_id": (!waiver_id.is_empty()).then_some(waiver_id),
        "evidence": evidence.iter().map(evidence_item).collect::<Vec<_>>(),
    })
}

/// One evidence item.
pub fn evidence_item(item: &pb::EvidenceItem) -> Value {
    let pb::EvidenceItem {
        node,
        step,
        attempt,
        value,
        limit,
        detail,
        ok,
        gpu_index,
        signature,
    } = item;
    json!({
        "node": node,
        "step": step,
        "attempt": attempt,
        "gpu_index": gpu_index,
        "value": value,
        "limit": limit,
        "detail": detail,
        "ok": ok,
        "signature": (!signature.is_empty()).then_some(signature),
    })
}

/// A waiver.
pub fn waiver(waiver: &pb::Waiver) -> Value {
    let pb::Waiver {
        id,
        release,
        milestone,
        rule_id,
        reason,
        ticket,
        approver,
        created_at,
        expires_at,
        revoked_at,
        nodes,
        skus,
        steps,
        issue,
        issue_state,
    } = waiver;
    json!({
        "id": id,
        "release": release,
        "milestone": milestone,
        "rule_id": rule_id,
        "reason": reason,
        "ticket": ticket,
        "approver": approver,
        "created_at": time(created_at.as_ref()),
        "expires_at": time(expires_at.as_ref()),
        "revoked_at": time(revoked_at.as_ref()),
        "nodes": nodes,
        "skus": skus,
        "steps": steps,
        "issue": (*issue > 0).then_some(issue),
        "issue_state": (!issue_state.is_empty()).then_some(issue_state),
    })
}

/// An audit entry; its details, JSON text on the wire, are embedded as JSON (or as the text
/// when they do not parse).
pub fn audit_entry(entry: &pb::AuditEntry) -> Value {
    let pb::AuditEntry {
        seq,
        at,
        actor,
        action,
        subject,
        details,
        prev_hash,
        hash,
    } = entry;
    let details: Value =
        serde_json::from_str(details).unwrap_or_else(|_| Value::String(details.clone()));
    json!({
        "seq": seq,
        "at": time(at.as_ref()),
        "actor": actor,
        "action": action,
        "subject": subject,
        "details": details,
        "prev_hash": prev_hash,
        "hash": hash,
    })
}

/// A list under one key, for list commands: `{"nodes": [...]}`.
pub fn list(key: &str, items: Vec<Value>) -> Value {
    let mut object = Map::new();
    object.insert(key.to_owned(), Value::Array(items));
    Value::Object(object)
}

/// An API token (never with a secret).
pub fn api_token(token: &pb::ApiToken) -> Value {
    let pb::ApiToken {
        name,
        role,
        customer,
        created_by,
        created_at,
        expires_at,
        revoked_at,
    } = token;
    json!({
        "name": name,
        "role": role,
        "customer": customer,
        "created_by": created_by,
        "created_at": time(created_at.as_ref()),
        "expires_at": time(expires_at.as_ref()),
        "revoked_at": time(revoked_at.as_ref()),
    })
}

/// A maintenance window.
pub fn maintenance_window(window: &pb::MaintenanceWindow) -> Value {
    let pb::MaintenanceWindow {
        id,
        label,
        starts_at,
        ends_at,
        reason,
        created_by,
        active,
    } = window;
    json!({
        "id": id,
        "label": label,
        "starts_at": time(starts_at.as_ref()),
        "ends_at": time(ends_at.as_ref()),
        "reason": reason,
        "created_by": created_by,
        "active": active,
    })
}

/// A health plan.
pub fn health_plan(plan: &pb::HealthPlan) -> Value {
    let pb::HealthPlan {
        plan_name,
        plan_version,
        release,
        every_seconds,
        set_by,
        set_at,
    } = plan;
    json!({
        "plan_name": plan_name,
        "plan_version": plan_version,
        "release": release,
        "every_seconds": every_seconds,
        "set_by": set_by,
        "set_at": time(set_at.as_ref()),
    })
}

/// A node's fleet telemetry history: each bucket with each field's min, mean, max and
/// sample count.
pub fn node_telemetry(telemetry: &pb::NodeTelemetry) -> Value {
    let pb::NodeTelemetry {
        node,
        resolution_seconds,
        buckets,
        truncated,
        gpu_source,
        history,
    } = telemetry;
    let buckets: Vec<Value> = buckets
        .iter()
        .map(|bucket| {
            let pb::TelemetryBucket {
                gpu_index,
                start,
                fields,
            } = bucket;
            let fields: Map<String, Value> = fields
                .iter()
                .map(|stat| {
                    let pb::FieldStat {
                        field,
                        min,
                        mean,
                        max,
                        samples,
                    } = stat;
                    (
                        field.clone(),
                        json!({"min": min, "mean": mean, "max": max, "samples": samples}),
                    )
                })
                .collect();
            json!({"gpu_index": gpu_index, "start": time(start.as_ref()), "fields": fields})
        })
        .collect();
    json!({
        "node": node,
        "resolution_seconds": resolution_seconds,
        "gpu_source": gpu_source,
        "simulated": gpu_source == "simulated",
        "history": history,
        "truncated": truncated,
        "buckets": buckets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_have_one_entry_per_rule_and_snake_case_names() {
        let decision_pb = pb::Decision {
            release: "r1".into(),
            milestone: "lab-qual".into(),
            verdict: "failed".into(),
            summary: "1 of 2 rules failed".into(),
            rules: vec![
                pb::RuleDecision {
                    rule_id: "no-xid".into(),
                    kind: "no-xid".into(),
                    verdict: "passed".into(),
                    ..Default::default()
                },
                pb::RuleDecision {
                    rule_id: "telemetry:gpu_temp_c".into(),
                    kind: "telemetry".into(),
                    verdict: "failed".into(),
                    failing_nodes: vec!["lab-4".into()],
                    evidence: vec![pb::EvidenceItem {
                        node: "lab-4".into(),
                        value: Some(95.0),
                        ok: false,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            digest: "abc".into(),
            evaluated_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            policy_version: "def".into(),
            greenwave_json: String::new(),
            replay: String::new(),
        };
        let value = decision(&decision_pb);
        assert_eq!(value["rules"].as_array().map(Vec::len), Some(2));
        assert_eq!(value["rules"][1]["failing_nodes"][0], "lab-4");
        assert_eq!(value["rules"][1]["evidence"][0]["value"], 95.0);
        assert_eq!(value["evaluated_at"], "1970-01-01T00:00:00Z");
        assert_eq!(value["policy_version"], "def");
    }

    #[test]
    fn times_print_to_the_second_and_absent_ones_as_null() {
        let entry = pb::AuditEntry {
            at: Some(prost_types::Timestamp {
                seconds: 1_767_225_600,
                nanos: 999_999_999,
            }),
            details: r#"{"reason":"x"}"#.into(),
            ..Default::default()
        };
        let value = audit_entry(&entry);
        assert_eq!(value["at"], "2026-01-01T00:00:00Z");
        assert_eq!(value["details"]["reason"], "x");
        let value = waiver(&pb::Waiver {
            revoked_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
            ..Default::default()
        });
        assert_eq!(value["created_at"], Value::Null);
        assert_eq!(value["revoked_at"], "-");
    }

    #[test]
    fn outcomes_print_as_words() {
        let result = pb::StepResultSummary {
            outcome: pb::Outcome::Error as i32,
            ..Default::default()
        };
        assert_eq!(step_result(&result)["outcome"], "error");
    }

    #[test]
    fn step_results_list_their_tests() {
        let result = pb::StepResultSummary {
            outcome: pb::Outcome::Failed as i32,
            sub_results: vec![pb::SubResult {
                source: "dcgm-diag".into(),
                suite: "Hardware".into(),
                name: "memory".into(),
                gpu_index: Some(3),
                outcome: pb::Outcome::Failed as i32,
                message: "uncorrectable ECC".into(),
                level: Some(2),
            }],
            sub_results_not_listed: 4,
            ..Default::default()
        };
        let value = step_result(&result);
        assert_eq!(value["sub_results"][0]["name"], "memory");
        assert_eq!(value["sub_results"][0]["gpu_index"], 3);
        assert_eq!(value["sub_results"][0]["outcome"], "failed");
        assert_eq!(value["sub_results"][0]["message"], "uncorrectable ECC");
        assert_eq!(value["sub_results_not_listed"], 4);
    }
}
