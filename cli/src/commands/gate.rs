//! `tollgate gate`: validate gate files offline, apply them, and show a release's decision.

use crate::Reported;
use crate::args::{DecisionFormat, GateCommand};
use crate::client::{Controller, RpcError, answer};
use crate::output::{Format, format_number, format_time, print_json, short_hash};
use anyhow::Context as _;
use serde_json::json;
use std::fmt::Write as _;
use std::path::Path;
use tollgate_domain::gate::{GatePolicy, Rule};
use tollgate_proto::v1 as pb;
use tollgate_wire::json;

/// Runs one `gate` command.
pub async fn run(controller: &Controller, command: GateCommand) -> anyhow::Result<()> {
    match command {
        GateCommand::Validate { file, output } => validate(&file, output.output),
        GateCommand::Apply { file, output } => {
            let source = read(&file)?;
            let policy = apply(controller, &file.display().to_string(), source).await?;
            match output.output {
                Format::Json => print_json(&json::gate_policy(&policy)),
                Format::Text => {
                    print!("{}", format_applied(&policy));
                    Ok(())
                }
            }
        }
        GateCommand::Check {
            release,
            milestone,
            output,
        } => {
            let decision = evaluate(controller, &release, milestone.as_deref()).await?;
            match output {
                DecisionFormat::Json => print_json(&json::decision(&decision))?,
                DecisionFormat::Greenwave => print_json(&greenwave(&decision)?)?,
                DecisionFormat::Text => print!("{}", format_decision(&decision)),
            }
            match check_exit_code(&decision.verdict) {
                0 => Ok(()),
                code => Err(Reported(code).into()),
            }
        }
        GateCommand::Show {
            release,
            milestone,
            at,
            output,
        } => {
            let at = at
                .as_deref()
                .map(crate::commands::waiver::parse_time)
                .transpose()?
                .map(tollgate_wire::timestamp_to_proto);
            let decision = evaluate_at(controller, &release, milestone.as_deref(), at).await?;
            match output {
                DecisionFormat::Json => print_json(&json::decision(&decision)),
                DecisionFormat::Greenwave => print_json(&greenwave(&decision)?),
                DecisionFormat::Text => {
                    print!("{}", format_decision(&decision));
                    let waivers = waivers_of(controller, &decision).await;
                    print!("{}", format_closed_issues(&decision, &waivers));
                    if !decision.replay.is_empty() {
                        println!("\n{}", decision.replay);
                    }
                    if decision.replay.contains("MISMATCH") {
                        return Err(Reported(1).into());
                    }
                    Ok(())
                }
            }
        }
    }
}

/// The waivers of the decision's release at its milestone, when a rule is waived: `gate
/// show` says which of them name a closed issue. Empty when none is waived, and when the
/// caller may not list waivers (a customer token): the decision itself is still shown.
async fn waivers_of(controller: &Controller, decision: &pb::Decision) -> Vec<pb::Waiver> {
    if decision.rules.iter().all(|rule| rule.waiver_id.is_empty()) {
        return Vec::new();
    }
    let request = pb::ListWaiversRequest {
        release: decision.release.clone(),
        milestone: decision.milestone.clone(),
        page_size: 0,
        page_token: String::new(),
    };
    let pages = crate::pages::PageArgs::default();
    crate::pages::follow(pages, |page_size, page_token| {
        let mut client = controller.gates();
        let request = pb::ListWaiversRequest {
            page_size,
            page_token,
            ..request.clone()
        };
        async move {
            let page = answer(client.list_waivers(request).await)?;
            Ok::<_, RpcError>((page.waivers, page.next_page_token))
        }
    })
    .await
    .unwrap_or_default()
}

/// One line per rule waived by a waiver whose issue is closed: the waiver can be revoked.
pub fn format_closed_issues(decision: &pb::Decision, waivers: &[pb::Waiver]) -> String {
    let mut out = String::new();
    for rule in decision
        .rules
        .iter()
        .filter(|rule| !rule.waiver_id.is_empty())
    {
        let Some(waiver) = waivers.iter().find(|waiver| waiver.id == rule.waiver_id) else {
            continue;
        };
        if waiver.issue > 0 && waiver.issue_state == "closed" {
            let _ = writeln!(
                out,
                "\nrule {} is waived by {}, whose issue #{} is closed; revoke the waiver with \
                 `tollgate waiver revoke {}`",
                rule.rule_id, waiver.id, waiver.issue, waiver.id
            );
        }
    }
    out
}

/// `gate check`'s exit code for a verdict: 0 passed, 3 failed (as a refused promotion), 5
/// waiting for evidence, 1 for an error or a verdict this CLI does not know.
pub fn check_exit_code(verdict: &str) -> u8 {
    match verdict {
        "passed" => 0,
        "failed" => 3,
        "waiting" => 5,
        _ => 1,
    }
}

fn read(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading gate file {}", file.display()))
}

/// Stores a gate; an InvalidArgument answer carries every located problem.
pub async fn apply(
    controller: &Controller,
    file_name: &str,
    source: String,
) -> anyhow::Result<pb::GatePolicy> {
    Ok(answer(
        controller
            .gates()
            .apply_gate(pb::ApplyGateRequest {
                source,
                file_name: file_name.to_owned(),
            })
            .await,
    )?)
}

/// The decision in Greenwave's shape, as the controller computed it.
pub fn greenwave(decision: &pb::Decision) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(&decision.greenwave_json).with_context(|| {
        format!(
            "the controller's greenwave_json is not JSON: '{}'",
            decision.greenwave_json
        )
    })
}

/// Evaluates the gate of `release` at `milestone` (its current one when `None`).
pub async fn evaluate(
    controller: &Controller,
    release: &str,
    milestone: Option<&str>,
) -> anyhow::Result<pb::Decision> {
    evaluate_at(controller, release, milestone, None).await
}

/// Evaluates the gate now, or, with `at`, replays the decision as it stood then. The decision
/// comes as StreamDecision's parts (one message could not carry the decision of a large
/// lab), put back together here.
pub async fn evaluate_at(
    controller: &Controller,
    release: &str,
    milestone: Option<&str>,
    at: Option<prost_types::Timestamp>,
) -> anyhow::Result<pb::Decision> {
    let mut stream = answer(
        controller
            .gates()
            .stream_decision(pb::EvaluateGateRequest {
                release: release.to_owned(),
                milestone: milestone.unwrap_or_default().to_owned(),
                at,
            })
            .await,
    )?;
    let mut parts = Vec::new();
    while let Some(part) = stream.message().await.map_err(RpcError::from)? {
        parts.push(part);
    }
    Ok(tollgate_wire::decision_parts::assemble(parts)?)
}

/// Whether a gate is stored for `milestone`.
pub async fn exists(controller: &Controller, milestone: &str) -> anyhow::Result<bool> {
    match answer(
        controller
            .gates()
            .get_gate(pb::GetGateRequest {
                milestone: milestone.to_owned(),
            })
            .await,
    ) {
        Ok(_) => Ok(true),
        Err(RpcError {
            code: tonic::Code::NotFound,
            ..
        }) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// `gate validate`: parses the file with the controller's own code; problems go to stderr.
pub fn validate(file: &Path, format: Format) -> anyhow::Result<()> {
    let source = read(file)?;
    let file_name = file.display().to_string();
    let parsed = tollgate_domain::gate::parse_gate(&file_name, &source);
    super::print_validated(
        &file_name,
        parsed,
        format,
        gate_summary_json,
        format_gate_summary,
    )
}

/// What a rule checks, in one sentence.
pub fn describe_rule(rule: &Rule) -> String {
    rule.kind.describe()
}

/// The summary `gate validate` prints.
pub fn format_gate_summary(file_name: &str, policy: &GatePolicy) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{file_name}: valid gate");
    let _ = writeln!(out, "milestone: {}", policy.milestone);
    let _ = writeln!(out, "version:   {}", short_hash(&policy.version()));
    let _ = writeln!(out, "rules:");
    for (idx, rule) in policy.rules.iter().enumerate() {
        let _ = writeln!(out, "  {}. {}: {}", idx + 1, rule.id, describe_rule(rule));
    }
    out
}

/// The JSON form of `gate validate`'s summary.
pub fn gate_summary_json(policy: &GatePolicy) -> serde_json::Value {
    json!({
        "milestone": policy.milestone,
        "description": policy.description,
        "version": policy.version(),
        "rules": policy.rules.iter().map(|rule| json!({
            "id": rule.id,
            "kind": rule.kind.name(),
            "description": describe_rule(rule),
        })).collect::<Vec<_>>(),
    })
}

/// What `gate apply` prints.
pub fn format_applied(policy: &pb::GatePolicy) -> String {
    format!(
        "gate {} applied: version {}\nrules: {}\n",
        policy.milestone,
        short_hash(&policy.version),
        policy.rules.join(", ")
    )
}

/// Up to this many evidence items a rule shows them all; past it, only the failing ones. A
/// telemetry rule over a lab has one item per GPU per step, which would bury the one that
/// matters.
const MAX_EVIDENCE_SHOWN: usize = 8;

/// A decision for people: the verdict in capitals with its summary, then one block per rule
/// with its verdict, id, reason, failing nodes and evidence.
pub fn format_decision(decision: &pb::Decision) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: release {} at {}: {}",
        decision.verdict.to_uppercase(),
        decision.release,
        decision.milestone,
        decision.summary
    );
    let _ = writeln!(
        out,
        "digest {}  policy {}  evaluated {}",
        short_hash(&decision.digest),
        short_hash(&decision.policy_version),
        format_time(decision.evaluated_at.as_ref())
    );
    for rule in &decision.rules {
        out.push('\n');
        let _ = writeln!(out, "{:<7} {} ({})", rule.verdict, rule.rule_id, rule.kind);
        let _ = writeln!(out, "        {}", rule.reason);
        if !rule.waiver_id.is_empty() {
            let _ = writeln!(out, "        waiver: {}", rule.waiver_id);
        }
        if !rule.failing_nodes.is_empty() {
            let _ = writeln!(
                out,
                "        failing nodes: {}",
                rule.failing_nodes.join(", ")
            );
        }
        for (idx, group) in rule.failure_groups.iter().enumerate() {
            let _ = writeln!(
                out,
                "        group {}: {}: {} on {}",
                tollgate_domain::issue::group_ref(&rule.rule_id, idx),
                rule.kind,
                group.signature,
                group.nodes.join(", ")
            );
        }
        let shown: Vec<&pb::EvidenceItem> = if rule.evidence.len() <= MAX_EVIDENCE_SHOWN {
            rule.evidence.iter().collect()
        } else {
            rule.evidence.iter().filter(|item| !item.ok).collect()
        };
        for item in &shown {
            let _ = writeln!(out, "          {}", format_evidence(item));
        }
        let n_hidden = rule.evidence.len() - shown.len();
        if n_hidden > 0 {
            let _ = writeln!(
                out,
                "          ... and {n_hidden} more ok item{} (-o json lists the decision's items; the reason counts all the evidence)",
                if n_hidden == 1 { "" } else { "s" }
            );
        }
    }
    out
}

/// One evidence item: `FAIL lab-4 stress#1 95.2 (limit < 88): GPU 0 ...`.
pub fn format_evidence(item: &pb::EvidenceItem) -> String {
    let mut text = String::from(if item.ok { "ok  " } else { "FAIL" });
    let _ = write!(
        text,
        " {}",
        if item.node.is_empty() {
            "-"
        } else {
            &item.node
        }
    );
    if !item.step.is_empty() {
        let _ = write!(text, " {}", item.step);
        if item.attempt > 0 {
            let _ = write!(text, "#{}", item.attempt);
        }
    }
    if let Some(value) = item.value {
        let _ = write!(text, " {}", format_number(value));
    }
    if !item.limit.is_empty() {
        let _ = write!(text, " (limit {})", item.limit);
    }
    if !item.detail.is_empty() {
        let _ = write!(text, ": {}", item.detail);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greenwave_output_has_greenwaves_fields() {
        use tollgate_domain::test_support::{at, evidence};
        let policy = tollgate_domain::gate::parse_gate(
            "gate.yaml",
            "milestone: lab-qual\nrules:\n  - no-xid: {}\n",
        )
        .expect("gate");
        let decision = tollgate_domain::gate::evaluate(&policy, &evidence(Vec::new()), &[], at(0));
        let wire = pb::Decision {
            greenwave_json: tollgate_domain::gate::greenwave(&decision).to_string(),
            ..Default::default()
        };
        let value = greenwave(&wire).expect("greenwave");
        for key in [
            "policies_satisfied",
            "summary",
            "satisfied_requirements",
            "unsatisfied_requirements",
        ] {
            assert!(value.get(key).is_some(), "{key} missing in {value}");
        }
        let broken = pb::Decision::default();
        assert!(greenwave(&broken).is_err());
    }

    fn failed_decision() -> pb::Decision {
        pb::Decision {
            release: "r550-u3".into(),
            milestone: "lab-qual".into(),
            verdict: "failed".into(),
            summary: "1 of 2 rules failed".into(),
            rules: vec![
                pb::RuleDecision {
                    rule_id: "no-xid".into(),
                    kind: "no-xid".into(),
                    verdict: "passed".into(),
                    reason: "no XID seen".into(),
                    ..Default::default()
                },
                pb::RuleDecision {
                    rule_id: "telemetry:gpu_temp_c".into(),
                    kind: "telemetry".into(),
                    verdict: "failed".into(),
                    reason: "max gpu_temp_c 95.2 is not < 88".into(),
                    failing_nodes: vec!["lab-4".into()],
                    failure_groups: vec![pb::FailureGroup {
                        signature: "gpu_temp_c max breaks < 88 in stress".into(),
                        count: 1,
                        nodes: vec!["lab-4".into()],
                    }],
                    evidence: vec![pb::EvidenceItem {
                        node: "lab-4".into(),
                        step: "stress".into(),
                        attempt: 1,
                        value: Some(95.2),
                        limit: "< 88".into(),
                        detail: "GPU 0".into(),
                        ok: false,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            digest: "0123456789abcdef".into(),
            evaluated_at: None,
            policy_version: "fedcba9876543210".into(),
            greenwave_json: String::new(),
            replay: String::new(),
        }
    }

    #[test]
    fn decisions_read_rule_by_rule() {
        let text = format_decision(&failed_decision());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "FAILED: release r550-u3 at lab-qual: 1 of 2 rules failed"
        );
        assert!(lines[1].contains("digest 0123456789ab"), "{text}");
        assert!(text.contains("passed  no-xid (no-xid)"), "{text}");
        assert!(
            text.contains("failed  telemetry:gpu_temp_c (telemetry)"),
            "{text}"
        );
        assert!(text.contains("failing nodes: lab-4"), "{text}");
        // What `tollgate issue open --from` takes.
        assert!(
            text.contains(
                "group telemetry:gpu_temp_c#1: telemetry: gpu_temp_c max breaks < 88 in stress \
                 on lab-4"
            ),
            "{text}"
        );
        assert!(
            text.contains("FAIL lab-4 stress#1 95.2 (limit < 88): GPU 0"),
            "{text}"
        );
    }

    #[test]
    fn a_rule_waived_for_a_closed_issue_says_the_waiver_can_go() {
        let mut decision = failed_decision();
        decision.rules[1].waiver_id = "waiver-9".into();
        let waiver = |issue_state: &str| pb::Waiver {
            id: "waiver-9".into(),
            issue: 4,
            issue_state: issue_state.into(),
            ..Default::default()
        };
        let text = format_closed_issues(&decision, &[waiver("closed")]);
        assert_eq!(
            text,
            "\nrule telemetry:gpu_temp_c is waived by waiver-9, whose issue #4 is closed; \
             revoke the waiver with `tollgate waiver revoke waiver-9`\n"
        );
        assert_eq!(format_closed_issues(&decision, &[waiver("open")]), "");
        assert_eq!(
            format_closed_issues(&failed_decision(), &[waiver("closed")]),
            ""
        );
    }

    #[test]
    fn long_evidence_shows_only_the_failing_items() {
        let mut decision = failed_decision();
        let ok_item = pb::EvidenceItem {
            node: "lab-1".into(),
            ok: true,
            ..Default::default()
        };
        decision.rules[1]
            .evidence
            .extend(std::iter::repeat_n(ok_item, 20));
        let text = format_decision(&decision);
        assert!(text.contains("FAIL lab-4 stress#1"), "{text}");
        assert!(!text.contains("ok   lab-1"), "{text}");
        assert!(text.contains("... and 20 more ok items"), "{text}");
    }

    #[test]
    fn the_demo_gate_summarizes() {
        let policy = tollgate_domain::gate::parse_gate(
            "gate-lab-qual.yaml",
            include_str!("../../../examples/gate-lab-qual.yaml"),
        )
        .expect("the demo gate is valid");
        let text = format_gate_summary("gate-lab-qual.yaml", &policy);
        assert!(text.contains("milestone: lab-qual"), "{text}");
        assert!(
            text.contains("steps versions, stress of plan gpu-qual pass on at least 4 node(s)"),
            "{text}"
        );
        assert!(
            text.contains("max of telemetry gpu_temp_c over every GPU (every step) < 88"),
            "{text}"
        );
        assert!(
            text.contains("min of measurement membw_gbps over nodes (every step) >= 2800"),
            "{text}"
        );
        assert_eq!(
            gate_summary_json(&policy)["rules"].as_array().map(Vec::len),
            Some(5)
        );
    }
}
