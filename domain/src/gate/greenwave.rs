//! Export of a decision in the shape of Fedora Greenwave's decision response, so tooling built
//! for Greenwave can read Tollgate's gates.

use super::*;
use serde_json::{Value, json};

/// The decision as a Greenwave decision response: `policies_satisfied`, `summary`,
/// `applicable_policies`, `satisfied_requirements` and `unsatisfied_requirements`.
///
/// Requirement types: `steps-passed` rules use Greenwave's `test-result-passed`,
/// `test-result-failed`, `test-result-missing` and `test-result-errored`; the other kinds use
/// Tollgate's own `tollgate-<kind>-<verdict>` types (`tollgate-telemetry-failed`,
/// `tollgate-measurement-passed`, `tollgate-quorum-…` for quorum shortfalls). Waived rules are
/// satisfied requirements with `"waived": true`.
pub fn greenwave(decision: &Decision) -> Value {
    let subject = json!({
        "type": "tollgate-release",
        "item": decision.release,
        "milestone": decision.milestone,
    });
    let mut satisfied = Vec::new();
    let mut unsatisfied = Vec::new();
    for rule in &decision.rules {
        let verdict = match rule.verdict {
            Verdict::Waived => "failed",
            other => other.as_str(),
        };
        let kind = if rule.kind == "steps-passed" {
            match rule.verdict {
                Verdict::Passed => "test-result-passed".to_owned(),
                Verdict::Failed | Verdict::Waived => "test-result-failed".to_owned(),
                Verdict::Waiting => "test-result-missing".to_owned(),
                Verdict::Error => "test-result-errored".to_owned(),
                Verdict::NotApplicable => "excluded".to_owned(),
            }
        } else {
            format!("tollgate-{}-{verdict}", rule.kind)
        };
        let mut requirement = json!({
            "type": kind,
            "testcase": format!("tollgate.{}", rule.rule_id),
            "subject_type": "tollgate-release",
            "subject_identifier": decision.release,
            "scenario": decision.milestone,
            "item": subject,
            "reason": rule.reason,
        });
        if !rule.failing_nodes.is_empty() {
            requirement["failing_nodes"] = json!(rule.failing_nodes);
        }
        match rule.verdict {
            Verdict::Passed | Verdict::NotApplicable => satisfied.push(requirement),
            Verdict::Waived => {
                requirement["waived"] = json!(true);
                requirement["waiver_id"] = json!(rule.waiver_id);
                satisfied.push(requirement);
            }
            Verdict::Failed | Verdict::Waiting | Verdict::Error => unsatisfied.push(requirement),
        }
    }
    json!({
        "policies_satisfied": decision.verdict == Verdict::Passed,
        "summary": decision.summary,
        "applicable_policies": [format!("tollgate-gate.{}", decision.milestone)],
        "satisfied_requirements": satisfied,
        "unsatisfied_requirements": unsatisfied,
        "tollgate": {
            "verdict": decision.verdict.as_str(),
            "digest": decision.digest,
            "policy_version": decision.policy_version,
            "evaluated_at": decision.evaluated_at.to_rfc3339(),
        }
    })
}
