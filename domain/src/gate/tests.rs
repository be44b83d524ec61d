//! Gate parsing and evaluation: table-driven cases, snapshots of explained decisions and
//! properties that must hold for any evidence.

use super::*;
use crate::result::{Outcome, SubResult};
use crate::test_support::*;

const EXAMPLE: &str = r#"
milestone: lab-qual
rules:
  - steps-passed: {plan: gpu-qual, steps: [step0, step1], min-nodes: 3}
  - measurement: {name: membw_gbps, aggregate: min, condition: ">= 2800"}
  - telemetry: {field: gpu_temp_c, aggregate: max, condition: "< 88"}
  - no-xid: {codes: [48, 63, 64, 74, 79, 94, 95]}
  - inventory-matches-release: {}
"#;

fn policy() -> GatePolicy {
    parse_gate("gate.yaml", EXAMPLE).expect("example gate is valid")
}

/// A node that passed both steps with healthy numbers (both of its GPUs report).
fn good(node: &str) -> JobEvidence {
    let s0 = step_result(0, 1, Outcome::Passed);
    let s1 = with_telemetry(
        with_telemetry(
            with_measurement(step_result(1, 1, Outcome::Passed), "membw_gbps", 3000.0),
            0,
            Field::GpuTempC,
            70.0,
        ),
        1,
        Field::GpuTempC,
        69.0,
    );
    job(node, JobState::Passed, vec![s0, s1])
}

fn verdicts(decision: &Decision) -> Vec<(&str, Verdict)> {
    decision
        .rules
        .iter()
        .map(|r| (r.rule_id.as_str(), r.verdict))
        .collect()
}

#[test]
fn example_gate_parses_with_default_ids() {
    let ids: Vec<String> = policy().rules.into_iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        [
            "steps-passed:gpu-qual",
            "measurement:membw_gbps",
            "telemetry:gpu_temp_c",
            "no-xid",
            "inventory-matches-release"
        ]
    );
}

/// A GPU of the node that never reported the field during a passed step is missing
/// evidence: the telemetry rule waits, naming node and GPU, and the gate does not pass.
#[test]
fn a_gpu_without_a_value_never_passes_a_telemetry_rule() {
    let mut silent = good("n3");
    for result in &mut silent.results {
        result.telemetry.retain(|gpu| gpu.gpu_index != 1);
    }
    let decision = evaluate(
        &policy(),
        &evidence(vec![good("n1"), good("n2"), silent]),
        &[],
        at(100),
    );
    let rule = &decision.rules[2];
    assert_eq!(rule.verdict, Verdict::Waiting, "{}", rule.reason);
    assert!(
        rule.reason.contains("no gpu_temp_c value from n3 (GPU 1)"),
        "{}",
        rule.reason
    );
    assert_ne!(decision.verdict, Verdict::Passed);
    // A hot GPU elsewhere still fails the rule: a failure is not hidden behind missing data.
    let mut hot = good("n2");
    hot.results[1].telemetry[0].fields[0].max = 95.0;
    let mut silent = good("n3");
    silent.results[1].telemetry.clear();
    let decision = evaluate(
        &policy(),
        &evidence(vec![good("n1"), hot, silent]),
        &[],
        at(100),
    );
    assert_eq!(decision.rules[2].verdict, Verdict::Failed);
}

#[test]
fn gate_errors_name_line_and_field() {
    let source = "milestone: lab-qual\nrules:\n  - telemetry: {field: gpu_tmp, aggregate: max, condition: \"< 88\"}\n  - measurement: {name: bw, aggregate: median, condition: \"about 5\"}\n  - {}\n";
    let text = parse_gate("g.yaml", source).unwrap_err().to_string();
    assert!(
        text.contains("g.yaml:3:")
            && text.contains("rules[0].telemetry.field: unknown telemetry field 'gpu_tmp'"),
        "{text}"
    );
    assert!(
        text.contains("g.yaml:4:") && text.contains("rules[1].measurement.aggregate"),
        "{text}"
    );
    assert!(
        text.contains("rules[1].measurement.condition: condition 'about 5' must start with"),
        "{text}"
    );
    assert!(text.contains("rules[2]: a rule needs one of"), "{text}");
}

#[test]
fn clean_evidence_passes() {
    let decision = evaluate(
        &policy(),
        &evidence(vec![good("n1"), good("n2"), good("n3")]),
        &[],
        at(100),
    );
    assert_eq!(decision.verdict, Verdict::Passed, "{decision:#?}");
    assert!(decision.rules.iter().all(|r| r.verdict == Verdict::Passed));
}

#[test]
fn hot_gpu_fails_naming_node_and_rule() {
    let mut hot = good("n3");
    hot.results[1] = with_telemetry(hot.results[1].clone(), 1, Field::GpuTempC, 93.0);
    let decision = evaluate(
        &policy(),
        &evidence(vec![good("n1"), good("n2"), hot]),
        &[],
        at(100),
    );
    assert_eq!(decision.verdict, Verdict::Failed);
    let rule = &decision.rules[2];
    assert_eq!(
        (rule.rule_id.as_str(), rule.verdict),
        ("telemetry:gpu_temp_c", Verdict::Failed)
    );
    assert_eq!(rule.failing_nodes, vec![NodeId::from("n3")]);
    assert!(
        rule.reason.contains("n3") && rule.reason.contains("93"),
        "{}",
        rule.reason
    );
    assert!(
        decision.summary.contains("telemetry:gpu_temp_c"),
        "{}",
        decision.summary
    );
}

#[test]
fn missing_or_running_evidence_waits() {
    let no_runs = Evidence {
        runs: Vec::new(),
        ..evidence(Vec::new())
    };
    let decision = evaluate(&policy(), &no_runs, &[], at(100));
    assert_eq!(decision.verdict, Verdict::Waiting);
    assert!(decision.rules[0].reason.contains("tollgate run start"));
    let running = job(
        "n3",
        JobState::Running,
        vec![step_result(0, 1, Outcome::Passed)],
    );
    let decision = evaluate(
        &policy(),
        &evidence(vec![good("n1"), good("n2"), running]),
        &[],
        at(100),
    );
    assert_eq!(
        decision.verdict,
        Verdict::Waiting,
        "{:?}",
        verdicts(&decision)
    );
}

#[test]
fn wrong_driver_does_not_count_and_fails_inventory() {
    let mut other = good("n3");
    for result in &mut other.results {
        result.inventory.driver_version = "535.104.05".into();
    }
    let decision = evaluate(
        &policy(),
        &evidence(vec![good("n1"), good("n2"), other]),
        &[],
        at(100),
    );
    let v = verdicts(&decision);
    assert_eq!(
        v[0],
        ("steps-passed:gpu-qual", Verdict::Failed),
        "the node did not run the build under test"
    );
    assert_eq!(v[4], ("inventory-matches-release", Verdict::Failed));
    assert!(
        decision.rules[4]
            .reason
            .contains("driver is 535.104.05, release wants 550.54.15"),
        "{}",
        decision.rules[4].reason
    );
}

#[test]
fn xid_fails_and_unlisted_xid_does_not() {
    let mut bad = good("n2");
    bad.results[1] = with_xid(bad.results[1].clone(), 0, 79);
    let decision = evaluate(
        &policy(),
        &evidence(vec![good("n1"), bad.clone(), good("n3")]),
        &[],
        at(100),
    );
    assert_eq!(decision.rules[3].verdict, Verdict::Failed);
    assert_eq!(decision.rules[3].failing_nodes, vec![NodeId::from("n2")]);
    bad.results[1].events[0].code = 13;
    let decision = evaluate(
        &policy(),
        &evidence(vec![good("n1"), bad, good("n3")]),
        &[],
        at(100),
    );
    assert_eq!(decision.rules[3].verdict, Verdict::Passed);
}

#[test]
fn unknown_step_in_rule_is_an_error_not_a_pass() {
    let policy = parse_gate(
        "g.yaml",
        "milestone: lab-qual\nrules:\n  - steps-passed: {plan: gpu-qual, steps: [nope]}\n",
    )
    .expect("valid");
    let decision = evaluate(&policy, &evidence(vec![good("n1")]), &[], at(100));
    assert_eq!(decision.verdict, Verdict::Error);
    assert!(decision.rules[0].reason.contains("has no step 'nope'"));
}

#[test]
fn waiver_exempts_failed_rule_until_it_expires() {
    let mut hot = good("n3");
    hot.results[1] = with_telemetry(hot.results[1].clone(), 0, Field::GpuTempC, 95.0);
    let evidence = evidence(vec![good("n1"), good("n2"), hot]);
    let waiver = Waiver {
        id: "w1".into(),
        release: "r550".into(),
        milestone: "lab-qual".into(),
        rule_id: "telemetry:gpu_temp_c".into(),
        reason: "known fan curve issue".into(),
        ticket: "LAB-42".into(),
        approver: "alice".into(),
        created_at: at(0),
        expires_at: at(200),
        revoked_at: None,
        nodes: Vec::new(),
        skus: Vec::new(),
        steps: Vec::new(),
        issue: None,
    };
    let waived = evaluate(&policy(), &evidence, std::slice::from_ref(&waiver), at(100));
    assert_eq!(waived.verdict, Verdict::Passed);
    assert_eq!(waived.rules[2].verdict, Verdict::Waived);
    let expired = evaluate(&policy(), &evidence, &[waiver], at(300));
    assert_eq!(expired.verdict, Verdict::Failed);
    assert!(
        expired.rules[2].reason.contains("waiver w1 expired"),
        "{}",
        expired.rules[2].reason
    );
    assert_ne!(waived.digest, expired.digest);
}

#[test]
fn same_inputs_same_digest() {
    let ev = evidence(vec![good("n1"), good("n2"), good("n3")]);
    let a = evaluate(&policy(), &ev, &[], at(100));
    let b = evaluate(&policy(), &ev, &[], at(5000));
    assert_eq!(a.digest, b.digest, "time alone does not change the inputs");
    let mut changed = ev.clone();
    changed.runs[0].jobs[0].results[1].measurements[0].value = 2999.0;
    assert_ne!(a.digest, evaluate(&policy(), &changed, &[], at(100)).digest);
}

#[test]
fn explained_decision_snapshot() {
    let mut hot = good("n3");
    hot.results[1] = with_telemetry(hot.results[1].clone(), 1, Field::GpuTempC, 93.0);
    let mut failed = good("n4");
    failed.state = JobState::Failed;
    failed.results[1].outcome = Outcome::Failed;
    failed.results[1].message = "exit code 1".into();
    let decision = evaluate(
        &policy(),
        &evidence(vec![good("n1"), good("n2"), hot, failed]),
        &[],
        at(100),
    );
    let explained: Vec<String> = decision
        .rules
        .iter()
        .map(|r| {
            format!(
                "{} {}: {} [{}]",
                r.verdict,
                r.rule_id,
                r.reason,
                r.failing_nodes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .collect();
    insta::assert_snapshot!(format!(
        "{}: {}\n{}",
        decision.verdict,
        decision.summary,
        explained.join("\n")
    ));
}

fn waiver(rule_id: &str) -> Waiver {
    Waiver {
        id: "w1".into(),
        release: "r550".into(),
        milestone: "lab-qual".into(),
        rule_id: rule_id.into(),
        reason: "known issue".into(),
        ticket: "LAB-42".into(),
        approver: "alice".into(),
        created_at: at(0),
        expires_at: at(1000),
        revoked_at: None,
        nodes: Vec::new(),
        skus: Vec::new(),
        steps: Vec::new(),
        issue: None,
    }
}

fn gate(rules: &str) -> GatePolicy {
    parse_gate("g.yaml", &format!("milestone: lab-qual\nrules:\n{rules}")).expect("valid gate")
}

fn labelled(mut job: JobEvidence, sku: &str) -> JobEvidence {
    job.labels.insert("sku".into(), sku.into());
    job
}

fn failed_stress(node: &str, message: &str) -> JobEvidence {
    let mut j = good(node);
    j.state = JobState::Failed;
    j.results[1].outcome = Outcome::Failed;
    j.results[1].message = message.into();
    j
}

#[test]
fn tolerance_limits_failed_nodes_even_when_quorum_is_met() {
    let jobs = vec![
        good("n1"),
        good("n2"),
        good("n3"),
        failed_stress("n4", "exit code 1"),
    ];
    let strict = gate("  - steps-passed: {plan: gpu-qual, steps: [step0, step1], min-nodes: 3}\n");
    let decision = evaluate(&strict, &evidence(jobs.clone()), &[], at(100));
    assert_eq!(
        decision.rules[0].verdict,
        Verdict::Failed,
        "{}",
        decision.rules[0].reason
    );
    assert!(
        decision.rules[0].reason.contains("1 failed (tolerated 0)"),
        "{}",
        decision.rules[0].reason
    );
    let tolerant = gate(
        "  - steps-passed: {plan: gpu-qual, steps: [step0, step1], min-nodes: 3, max-failed: 1}\n",
    );
    assert_eq!(
        evaluate(&tolerant, &evidence(jobs), &[], at(100)).rules[0].verdict,
        Verdict::Passed
    );
}

#[test]
fn gate_integers_out_of_range_name_the_field() {
    let source = "milestone: lab-qual\nrules:\n  - steps-passed: {plan: p, steps: [a], min-nodes: -1, max-failed: 1.5}\n  - dcgm-diag: {level: -2, tests: [memory]}\n";
    let text = parse_gate("gate.yaml", source).unwrap_err().to_string();
    for expected in [
        "gate.yaml:3:",
        "rules[0].steps-passed.min-nodes: -1 is not a non-negative integer",
        "rules[0].steps-passed.max-failed: 1.5 is not a non-negative integer",
        "gate.yaml:4:",
        "rules[1].dcgm-diag.level: -2 is not a dcgmi diag level (1 to 4)",
    ] {
        assert!(text.contains(expected), "{expected} not in:\n{text}");
    }
}

#[test]
fn gate_names_and_lists_over_their_limits_are_refused_by_name() {
    let long = "x".repeat(10_000);
    let many: Vec<String> = (0..=crate::limits::STEPS.max)
        .map(|i| format!("s{i}"))
        .collect();
    let source = format!(
        "milestone: lab-qual\nrules:\n  - steps-passed: {{plan: {long}, steps: [{}]}}\n  - measurement: {{name: m, aggregate: min, condition: \">= 1\", id: {long}}}\n",
        many.join(", ")
    );
    let text = parse_gate("gate.yaml", &source).unwrap_err().to_string();
    for expected in [
        "gate.yaml:3:",
        "rules[0].steps-passed.plan: 'xxxx",
        "(10000 bytes) is 10000 bytes, over the limit of 128 bytes (name)",
        "rules[0].steps-passed.steps: has 101 entries, over the limit of 100 items (steps)",
        "gate.yaml:4:",
        "rules[1].id: ",
        "(rule-id)",
    ] {
        assert!(text.contains(expected), "{expected} not in:\n{text}");
    }
    assert!(text.len() < 2048, "{} bytes of errors", text.len());
}

#[test]
fn a_short_quorum_is_stated_once() {
    let jobs = vec![
        good("n1"),
        good("n2"),
        failed_stress("n3", "exit code 1"),
        failed_stress("n4", "exit code 1"),
    ];
    let policy = gate("  - steps-passed: {plan: gpu-qual, steps: [step0, step1], min-nodes: 4}\n");
    let rule = &evaluate(&policy, &evidence(jobs), &[], at(100)).rules[0];
    assert_eq!(rule.verdict, Verdict::Failed, "{}", rule.reason);
    assert!(
        rule.reason.starts_with(
            "[step0, step1] of plan gpu-qual: 2 of 4 nodes passed, 4 required; too few nodes passed; 2 failed (tolerated 0)"
        ),
        "{}",
        rule.reason
    );
    assert_eq!(
        rule.reason.matches("required").count(),
        1,
        "{}",
        rule.reason
    );
}

#[test]
fn a_count_limits_how_many_values_not_each_value() {
    let jobs = vec![good("n1"), good("n2"), good("n3")];
    // Every value (3000) is far above 5; the count (3) is not.
    let passing =
        gate("  - measurement: {name: membw_gbps, aggregate: count, condition: \"<= 5\"}\n");
    let rule = &evaluate(&passing, &evidence(jobs.clone()), &[], at(100)).rules[0];
    assert_eq!(rule.verdict, Verdict::Passed, "{}", rule.reason);
    assert_eq!(
        rule.reason,
        "count of measurement membw_gbps is 3 over 3 value(s), limit <= 5"
    );
    assert!(
        rule.evidence.iter().all(|item| item.ok),
        "{:?}",
        rule.evidence
    );

    let failing =
        gate("  - measurement: {name: membw_gbps, aggregate: count, condition: \"<= 2\"}\n");
    let rule = &evaluate(&failing, &evidence(jobs), &[], at(100)).rules[0];
    assert_eq!(rule.verdict, Verdict::Failed, "{}", rule.reason);
    assert_eq!(
        rule.reason,
        "count of measurement membw_gbps is 3 over 3 value(s), limit <= 2; the limit is on how many values were reported"
    );
    assert!(rule.failing_nodes.is_empty(), "{:?}", rule.failing_nodes);
}

#[test]
fn quorum_per_label_value_needs_every_group() {
    let mut jobs: Vec<JobEvidence> = (1..=5)
        .map(|i| labelled(good(&format!("h{i}")), "hgx-h100"))
        .collect();
    jobs.extend((1..=3).map(|i| labelled(good(&format!("b{i}")), "hgx-b200")));
    let policy = gate(
        "  - steps-passed: {plan: gpu-qual, steps: [step0, step1], per: sku, min-fraction: 0.98, min-nodes: 4}\n",
    );
    let decision = evaluate(&policy, &evidence(jobs.clone()), &[], at(100));
    assert_eq!(decision.rules[0].verdict, Verdict::Failed);
    assert!(
        decision.rules[0]
            .reason
            .contains("sku=hgx-b200: 3 of 3 nodes passed, 4 required;"),
        "{}",
        decision.rules[0].reason
    );
    assert!(
        decision.rules[0]
            .reason
            .ends_with("; too few passed in sku=hgx-b200"),
        "{}",
        decision.rules[0].reason
    );
    jobs.push(labelled(good("b4"), "hgx-b200"));
    assert_eq!(
        evaluate(&policy, &evidence(jobs), &[], at(100)).rules[0].verdict,
        Verdict::Passed
    );
}

#[test]
fn aggregates_include_percentiles_and_count() {
    let values: Vec<f64> = (1..=100).map(f64::from).collect();
    let cases = [
        (Aggregate::Min, 1.0),
        (Aggregate::Max, 100.0),
        (Aggregate::Mean, 50.5),
        (Aggregate::P5, 5.0),
        (Aggregate::P50, 50.0),
        (Aggregate::P95, 95.0),
        (Aggregate::P99, 99.0),
        (Aggregate::Count, 100.0),
    ];
    for (aggregate, expected) in cases {
        assert_eq!(aggregate.apply(&values), expected, "{aggregate}");
    }
    let jobs = vec![good("n1"), good("n2"), good("n3")];
    let policy = gate(
        "  - telemetry: {field: gpu_temp_c, aggregate: p95, condition: \"< 60\"}\n  - measurement: {name: membw_gbps, aggregate: count, condition: \">= 3\"}\n",
    );
    let decision = evaluate(&policy, &evidence(jobs), &[], at(100));
    assert_eq!(
        verdicts(&decision),
        [
            ("telemetry:gpu_temp_c", Verdict::Failed),
            ("measurement:membw_gbps", Verdict::Passed)
        ]
    );
}

#[test]
fn baseline_reports_the_delta_per_sku_and_fails_a_regression() {
    let policy = gate("  - baseline: {measurement: membw_gbps, max-regression-pct: 5}\n");
    let mut current = evidence(vec![
        labelled(good("n1"), "hgx-h100"),
        labelled(good("n2"), "hgx-h100"),
    ]);
    let first = evaluate(&policy, &current, &[], at(100));
    assert_eq!(first.rules[0].verdict, Verdict::Passed);
    assert!(
        first.rules[0].reason.contains("nothing to compare"),
        "{}",
        first.rules[0].reason
    );

    let mut older = evidence(vec![labelled(good("o1"), "hgx-h100")]);
    older.release.id = "r545".into();
    older.runs[0].jobs[0].results[1].measurements[0].value = 3300.0;
    current.baseline = Some(Box::new(older));
    let decision = evaluate(&policy, &current, &[], at(100));
    let rule = &decision.rules[0];
    assert_eq!(rule.verdict, Verdict::Failed, "{}", rule.reason);
    assert!(
        rule.reason.contains("sku=hgx-h100: 3000 vs 3300 (-9.1%)"),
        "{}",
        rule.reason
    );
    assert_eq!(
        rule.failing_nodes,
        vec![NodeId::from("n1"), NodeId::from("n2")]
    );
}

#[test]
fn no_events_counts_per_node() {
    let mut ecc = good("n2");
    ecc.results[1].events.push(crate::telemetry::GpuEvent {
        gpu_index: 1,
        gpu_uuid: "GPU-1".into(),
        kind: crate::telemetry::EventKind::EccUncorrected,
        code: 2,
        at: at(15),
        detail: "DBE".into(),
    });
    let mut remap = good("n3");
    remap.results[1] = with_telemetry(remap.results[1].clone(), 0, Field::RowRemapFailure, 1.0);
    let policy = gate("  - no-events: {}\n");
    let decision = evaluate(
        &policy,
        &evidence(vec![good("n1"), ecc, remap]),
        &[],
        at(100),
    );
    let rule = &decision.rules[0];
    assert_eq!(rule.verdict, Verdict::Failed);
    assert!(
        rule.reason.contains("n2: 1") && rule.reason.contains("n3: 1"),
        "{}",
        rule.reason
    );
    let signatures: Vec<&str> = rule
        .failure_groups
        .iter()
        .map(|g| g.signature.as_str())
        .collect();
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    let clean = evaluate(&policy, &evidence(vec![good("n1")]), &[], at(100));
    assert_eq!(clean.rules[0].verdict, Verdict::Passed);
}

fn diag(outcome: Outcome, level: u8) -> SubResult {
    SubResult {
        source: "dcgm-diag".into(),
        suite: "Hardware".into(),
        name: "memory".into(),
        gpu_index: None,
        outcome,
        message: String::new(),
        level: Some(level),
    }
}

fn with_diag(node: &str, outcomes: [Outcome; 2], level: u8) -> JobEvidence {
    let mut j = good(node);
    j.results[1].sub_results = outcomes
        .iter()
        .enumerate()
        .map(|(gpu, o)| SubResult {
            gpu_index: Some(gpu as u32),
            ..diag(*o, level)
        })
        .collect();
    j
}

#[test]
fn dcgm_diag_needs_every_gpu_passed_and_skipped_is_missing() {
    let policy = gate("  - dcgm-diag: {level: 3, tests: [memory]}\n");
    let decide = |outcomes: [Outcome; 2], level: u8, waivers: &[Waiver]| {
        evaluate(
            &policy,
            &evidence(vec![with_diag("n1", outcomes, level)]),
            waivers,
            at(100),
        )
    };
    let cases = [
        (
            "passed on every GPU",
            [Outcome::Passed, Outcome::Passed],
            3,
            Verdict::Passed,
        ),
        (
            "skipped on one GPU",
            [Outcome::Passed, Outcome::Skipped],
            3,
            Verdict::Waiting,
        ),
        (
            "failed on one GPU",
            [Outcome::Failed, Outcome::Passed],
            3,
            Verdict::Failed,
        ),
        (
            "run at a lower level",
            [Outcome::Passed, Outcome::Passed],
            2,
            Verdict::Waiting,
        ),
    ];
    for (what, outcomes, level, verdict) in cases {
        let decision = decide(outcomes, level, &[]);
        assert_eq!(
            decision.rules[0].verdict, verdict,
            "{what}: {}",
            decision.rules[0].reason
        );
    }
    let waived = decide(
        [Outcome::Passed, Outcome::Skipped],
        3,
        &[waiver("dcgm-diag")],
    );
    assert_ne!(
        waived.verdict,
        Verdict::Passed,
        "a waiver never makes a missing result pass"
    );
}

#[test]
fn scope_and_since_limit_a_rule() {
    let hot = {
        let mut j = labelled(good("h1"), "hgx-h100");
        j.results[1] = with_telemetry(j.results[1].clone(), 0, Field::GpuTempC, 95.0);
        j
    };
    let jobs = vec![hot, labelled(good("b1"), "hgx-b200")];
    let scoped = gate(
        "  - telemetry: {field: gpu_temp_c, aggregate: max, condition: \"< 88\", scope: {sku: hgx-b200}}\n",
    );
    assert_eq!(
        evaluate(&scoped, &evidence(jobs.clone()), &[], at(100)).rules[0].verdict,
        Verdict::Passed
    );
    let later = gate(
        "  - telemetry: {field: gpu_temp_c, aggregate: max, condition: \"< 88\", since: 2027-01-01}\n",
    );
    let decision = evaluate(&later, &evidence(jobs), &[], at(100));
    assert_eq!(decision.rules[0].verdict, Verdict::NotApplicable);
    assert_eq!(decision.verdict, Verdict::Passed);
    assert!(
        decision.rules[0].reason.contains("since 2027-01-01"),
        "{}",
        decision.rules[0].reason
    );
}

#[test]
fn failures_group_by_signature() {
    let jobs = vec![
        good("n1"),
        failed_stress("n2", "exit code 1"),
        failed_stress("n3", "exit code 2"),
        failed_stress("n4", "timed out after 1m"),
    ];
    let policy = gate("  - steps-passed: {plan: gpu-qual, steps: [step0, step1], min-nodes: 1}\n");
    let decision = evaluate(&policy, &evidence(jobs), &[], at(100));
    let groups = &decision.rules[0].failure_groups;
    assert_eq!(groups[0].signature, "step1: failed: exit code #");
    assert_eq!(
        groups[0].nodes,
        vec![NodeId::from("n2"), NodeId::from("n3")]
    );
    assert_eq!(groups[1].nodes, vec![NodeId::from("n4")]);
}

#[test]
fn the_same_failing_testcase_on_forty_nodes_is_one_group() {
    let testcase = |name: &str, outcome, message: &str| SubResult {
        source: "junit".into(),
        suite: "test_gpu_checks".into(),
        name: name.into(),
        gpu_index: None,
        outcome,
        message: message.into(),
        level: None,
    };
    let mut jobs: Vec<JobEvidence> = (0..40)
        .map(|n| {
            // Each node measured a different bandwidth, so the messages differ in their
            // numbers and in how many digits those have.
            let message = format!("bandwidth {} < 3000 GB/s", 900 + n * 7);
            let mut j = failed_stress(&format!("n{n:02}"), &message);
            j.results[1].sub_results = vec![
                testcase("test_gpu_checks.test_nvlink", Outcome::Passed, ""),
                testcase(
                    "test_gpu_checks.test_hbm_bandwidth_regression",
                    Outcome::Failed,
                    &message,
                ),
            ];
            j
        })
        .collect();
    let mut other = failed_stress("z-other", "1 testcase(s) failed");
    other.results[1].sub_results = vec![testcase(
        "test_gpu_checks.test_pcie_link",
        Outcome::Failed,
        "gen 4 < 5",
    )];
    jobs.push(other);
    let policy = gate("  - steps-passed: {plan: gpu-qual, steps: [step0, step1], min-nodes: 1}\n");
    let decision = evaluate(&policy, &evidence(jobs), &[], at(100));
    let groups = &decision.rules[0].failure_groups;
    let view: Vec<(&str, usize)> = groups
        .iter()
        .map(|g| (g.signature.as_str(), g.nodes.len()))
        .collect();
    assert_eq!(
        view,
        [
            (
                "step1: test_gpu_checks.test_hbm_bandwidth_regression failed",
                40
            ),
            ("step1: test_gpu_checks.test_pcie_link failed", 1),
        ]
    );
}

#[test]
fn scoped_waiver_covers_only_its_nodes() {
    let jobs = vec![
        good("n1"),
        failed_stress("n2", "exit code 1"),
        failed_stress("n3", "exit code 1"),
    ];
    let policy = gate(
        "  - steps-passed: {plan: gpu-qual, steps: [step0, step1], min-nodes: 1, id: stress}\n",
    );
    let narrow = Waiver {
        nodes: vec!["n2".into()],
        ..waiver("stress")
    };
    let decision = evaluate(
        &policy,
        &evidence(jobs.clone()),
        std::slice::from_ref(&narrow),
        at(100),
    );
    assert_eq!(decision.rules[0].verdict, Verdict::Failed);
    assert!(
        decision.rules[0]
            .reason
            .contains("does not cover every failure"),
        "{}",
        decision.rules[0].reason
    );
    let both = Waiver {
        nodes: vec!["n2".into(), "n3".into()],
        ..waiver("stress")
    };
    let decision = evaluate(&policy, &evidence(jobs.clone()), &[both], at(100));
    assert_eq!(decision.rules[0].verdict, Verdict::Waived);
    assert_eq!(decision.rules[0].waiver_id.as_deref(), Some("w1"));
    let by_step = Waiver {
        steps: vec!["step1".into()],
        ..waiver("stress")
    };
    assert_eq!(
        evaluate(&policy, &evidence(jobs.clone()), &[by_step], at(100)).rules[0].verdict,
        Verdict::Waived
    );
    let revoked = Waiver {
        revoked_at: Some(at(50)),
        ..waiver("stress")
    };
    let decision = evaluate(&policy, &evidence(jobs), &[revoked], at(100));
    assert!(
        decision.rules[0].reason.contains("was revoked"),
        "{}",
        decision.rules[0].reason
    );
}

#[test]
fn greenwave_export_has_its_shape() {
    let mut hot = good("n3");
    hot.results[1] = with_telemetry(hot.results[1].clone(), 1, Field::GpuTempC, 93.0);
    let decision = evaluate(
        &policy(),
        &evidence(vec![good("n1"), good("n2"), hot]),
        &[],
        at(100),
    );
    let json = greenwave(&decision);
    assert_eq!(json["policies_satisfied"], false);
    assert_eq!(json["summary"], decision.summary.as_str());
    let unsatisfied = json["unsatisfied_requirements"].as_array().expect("array");
    assert_eq!(unsatisfied.len(), 1);
    assert_eq!(unsatisfied[0]["type"], "tollgate-telemetry-failed");
    assert_eq!(unsatisfied[0]["testcase"], "tollgate.telemetry:gpu_temp_c");
    let satisfied = json["satisfied_requirements"].as_array().expect("array");
    assert!(satisfied.iter().any(|r| r["type"] == "test-result-passed"));
}

/// A step that failed at epoch 1 attempt 1, was interrupted at epoch 1 attempt 2 and passed at
/// epoch 2 attempt 1 (an agent restart with `retries: 2`): the job passed, and the gate, the
/// job's evidence and the job's end state all take epoch 2 attempt 1 as the step's final one.
#[test]
fn the_gate_judges_the_attempt_the_job_ended_on() {
    let failed = step_result(0, 1, Outcome::Failed);
    let interrupted = step_result(0, 2, Outcome::Error);
    let mut passed = step_result(0, 1, Outcome::Passed);
    passed.lease_epoch = 2;
    let results = vec![
        failed,
        interrupted,
        passed,
        step_result(1, 1, Outcome::Passed),
    ];
    assert_eq!(
        crate::job::final_state(&results, &[2, 0]),
        Some(JobState::Passed)
    );
    let job = job("n1", JobState::Passed, results);
    let latest = job.latest(0).expect("step 0 has results");
    assert_eq!((latest.lease_epoch, latest.attempt), (2, 1));
    assert_eq!(
        job.latest_results().map(|r| r.outcome).collect::<Vec<_>>(),
        [Outcome::Passed, Outcome::Passed]
    );
    let policy = parse_gate(
        "g.yaml",
        "milestone: lab-qual\nrules:\n  - steps-passed: {plan: gpu-qual, steps: [step0, step1]}\n",
    )
    .expect("valid gate");
    let decision = evaluate(&policy, &evidence(vec![job]), &[], at(100));
    assert_eq!(
        decision.rules[0].verdict,
        Verdict::Passed,
        "{}",
        decision.rules[0].reason
    );
}

/// A flash without a reboot starts on the old VBIOS and ends on the release's: the step, and
/// the step after it, ran on the release, so the steps rule and the inventory rule pass.
#[test]
fn a_flash_is_judged_on_the_inventory_after_it() {
    let mut flash = step_result(0, 1, Outcome::Passed);
    flash.inventory = inventory(DRIVER, "96.00.61.00.01", 2);
    flash.inventory_at_end = Some(inventory(DRIVER, VBIOS, 2));
    let mut after = step_result(1, 1, Outcome::Passed);
    after.inventory_at_end = Some(inventory(DRIVER, VBIOS, 2));
    let policy = parse_gate(
        "g.yaml",
        "milestone: lab-qual\nrules:\n  - steps-passed: {plan: gpu-qual, steps: [step0, step1]}\n  - inventory-matches-release: {}\n",
    )
    .expect("valid gate");
    let ev = evidence(vec![job(
        "n1",
        JobState::Passed,
        vec![flash.clone(), after],
    )]);
    let decision = evaluate(&policy, &ev, &[], at(100));
    for rule in &decision.rules {
        assert_eq!(
            rule.verdict,
            Verdict::Passed,
            "{}: {}",
            rule.rule_id,
            rule.reason
        );
    }
    // A flash that ended on another build did not install the release.
    let mut wrong = flash;
    wrong.inventory_at_end = Some(inventory(DRIVER, "96.00.61.00.01", 2));
    let ev = evidence(vec![job(
        "n1",
        JobState::Passed,
        vec![wrong, step_result(1, 1, Outcome::Passed)],
    )]);
    let decision = evaluate(&policy, &ev, &[], at(100));
    let steps = &decision.rules[0];
    assert_ne!(steps.verdict, Verdict::Passed, "{}", steps.reason);
    assert!(
        steps
            .evidence
            .iter()
            .any(|item| item.signature.as_deref() == Some("step0: wrong build")),
        "{:?}",
        steps.evidence
    );
}

// ---------------------------------------------------------------------------------------------
// no-regression

/// `n_passed` nodes of `sku` whose step1 passed and `n_failed` whose step1 failed, named
/// `<prefix><i>`.
fn fleet(prefix: &str, sku: &str, n_passed: usize, n_failed: usize) -> Vec<JobEvidence> {
    (0..n_passed + n_failed)
        .map(|i| {
            let node = format!("{prefix}{i}");
            let job = if i < n_passed {
                good(&node)
            } else {
                failed_stress(&node, "exit code 1")
            };
            labelled(job, sku)
        })
        .collect()
}

/// Evidence of release r550 over `current`, compared with release r545's `baseline` jobs.
fn against(current: Vec<JobEvidence>, baseline: Vec<JobEvidence>) -> Evidence {
    let mut older = evidence(baseline);
    older.release.id = "r545".into();
    let mut ev = evidence(current);
    ev.baseline = Some(Box::new(older));
    ev
}

const NO_REGRESSION: &str =
    "  - no-regression: {step: step1, per: sku, significance: 0.05, min-samples: 20}\n";

#[test]
fn a_significant_drop_in_pass_rate_fails_naming_both_rates_and_the_p_value() {
    // 41 of 50 against 98 of 100: SciPy's fisher_exact(alternative="less") gives p=0.000905.
    let ev = against(fleet("n", "hgx-h100", 41, 9), fleet("o", "hgx-h100", 98, 2));
    let decision = evaluate(&gate(NO_REGRESSION), &ev, &[], at(100));
    let rule = &decision.rules[0];
    assert_eq!(rule.rule_id, "no-regression:step1");
    assert_eq!(rule.verdict, Verdict::Failed, "{}", rule.reason);
    assert_eq!(
        rule.reason,
        "regressed against r545: step1 on sku=hgx-h100: 41/50 passed (82.0%) vs baseline 98/100 (98.0%), Fisher one-sided p=9.0e-4 < 0.05"
    );
    let failing: Vec<String> = (41..50).map(|i| format!("n{i}")).collect();
    assert_eq!(
        rule.failing_nodes,
        failing
            .iter()
            .map(|n| NodeId::from(n.as_str()))
            .collect::<Vec<_>>()
    );
    assert_eq!(rule.failure_groups.len(), 1, "{:?}", rule.failure_groups);
    assert_eq!(
        rule.failure_groups[0].signature,
        "step1 pass rate regressed on sku=hgx-h100"
    );
    assert!(needs_baseline(&gate(NO_REGRESSION)));
    // The regression is a failure signature like any other: the controller opens (or attaches
    // to) an issue for it, on the nodes that failed.
    let failures = crate::issue::failures_of(&decision);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].signature.kind, "no-regression");
    assert_eq!(
        failures[0].signature.text,
        "step1 pass rate regressed on sku=hgx-h100"
    );
    assert_eq!(failures[0].nodes.len(), failing.len());
}

#[test]
fn the_same_pass_rate_passes_and_flaky_but_not_worse_passes() {
    let policy = gate(NO_REGRESSION);
    let same = against(fleet("n", "hgx-h100", 49, 1), fleet("o", "hgx-h100", 98, 2));
    let rule = &evaluate(&policy, &same, &[], at(100)).rules[0];
    assert_eq!(rule.verdict, Verdict::Passed, "{}", rule.reason);
    assert!(
        rule.reason.contains(
            "step1 on sku=hgx-h100: 49/50 passed (98.0%) vs baseline 98/100 (98.0%), Fisher one-sided p=0.7067 >= 0.05"
        ),
        "{}",
        rule.reason
    );
    // One failure in 20 where the baseline had none: flaky, not significantly worse (p=0.5).
    let flaky = against(fleet("n", "hgx-h100", 19, 1), fleet("o", "hgx-h100", 20, 0));
    let rule = &evaluate(&policy, &flaky, &[], at(100)).rules[0];
    assert_eq!(rule.verdict, Verdict::Passed, "{}", rule.reason);
    assert!(rule.reason.contains("p=0.5 >= 0.05"), "{}", rule.reason);
}

#[test]
fn too_few_samples_wait_and_never_pass() {
    let policy = gate(NO_REGRESSION);
    let ev = against(fleet("n", "hgx-h100", 5, 0), fleet("o", "hgx-h100", 98, 2));
    let rule = &evaluate(&policy, &ev, &[], at(100)).rules[0];
    assert_eq!(rule.verdict, Verdict::Waiting, "{}", rule.reason);
    assert!(
        rule.reason.contains("not enough evidence against r545")
            && rule
                .reason
                .contains("step1 on sku=hgx-h100: 5 vs baseline 100 samples"),
        "{}",
        rule.reason
    );
    // A SKU the baseline never ran on can never be compared (the baseline's evidence is
    // final): named as not compared, it does not hold the rule up.
    let mut current = fleet("n", "hgx-h100", 30, 0);
    current.extend(fleet("m", "hgx-b200", 30, 0));
    let ev = against(current, fleet("o", "hgx-h100", 30, 0));
    let rule = &evaluate(&policy, &ev, &[], at(100)).rules[0];
    assert_eq!(rule.verdict, Verdict::Passed, "{}", rule.reason);
    assert!(
        rule.reason
            .contains("no significant regression against r545: step1 on sku=hgx-h100")
            && rule.reason.contains(
                "not compared, the baseline having fewer than 20 samples: step1 on sku=hgx-b200: baseline has 0 samples"
            ),
        "{}",
        rule.reason
    );
    // Nor does a SKU the baseline ran and the release under test did not: coverage is
    // `steps-passed`'s to require.
    let mut baseline = fleet("o", "hgx-h100", 30, 0);
    baseline.extend(fleet("p", "hgx-b200", 30, 0));
    let ev = against(fleet("n", "hgx-h100", 30, 0), baseline);
    let rule = &evaluate(&policy, &ev, &[], at(100)).rules[0];
    assert_eq!(rule.verdict, Verdict::Passed, "{}", rule.reason);
    assert!(!rule.reason.contains("hgx-b200"), "{}", rule.reason);
    // Too few on the baseline's side while the release under test is short too: it waits
    // for its own evidence, and says the other cannot be compared.
    let mut current = fleet("n", "hgx-h100", 5, 0);
    current.extend(fleet("m", "hgx-b200", 30, 0));
    let ev = against(current, fleet("o", "hgx-h100", 30, 0));
    let rule = &evaluate(&policy, &ev, &[], at(100)).rules[0];
    assert_eq!(rule.verdict, Verdict::Waiting, "{}", rule.reason);
    assert!(
        rule.reason
            .contains("step1 on sku=hgx-h100: 5 vs baseline 30 samples")
            && rule.reason.contains("hgx-b200: baseline has 0 samples"),
        "{}",
        rule.reason
    );
    // Running jobs: no verdict yet, however good the numbers so far.
    let mut running = fleet("n", "hgx-h100", 30, 0);
    running[0].state = JobState::Running;
    let ev = against(running, fleet("o", "hgx-h100", 30, 0));
    let rule = &evaluate(&policy, &ev, &[], at(100)).rules[0];
    assert_eq!(rule.verdict, Verdict::Waiting, "{}", rule.reason);
    assert!(
        rule.reason.contains("1 job(s) still running"),
        "{}",
        rule.reason
    );
}

#[test]
fn without_a_baseline_release_no_regression_passes_like_baseline_and_says_so() {
    let ev = evidence(fleet("n", "hgx-h100", 10, 0));
    let rule = &evaluate(&gate(NO_REGRESSION), &ev, &[], at(100)).rules[0];
    assert_eq!(rule.verdict, Verdict::Passed, "{}", rule.reason);
    assert_eq!(
        rule.reason,
        "no earlier release was promoted past lab-qual; nothing to compare pass rates with"
    );
}

/// Nodes of `sku` whose step1 ran two tests on both GPUs: `memory` passed on both GPUs of
/// the first `n_memory_passed` nodes and failed on both of the rest; `pcie` always passed.
fn with_tests(prefix: &str, sku: &str, n_nodes: usize, n_memory_passed: usize) -> Vec<JobEvidence> {
    (0..n_nodes)
        .map(|i| {
            let mut job = labelled(good(&format!("{prefix}{i}")), sku);
            let memory = if i < n_memory_passed {
                Outcome::Passed
            } else {
                Outcome::Failed
            };
            let mut subs = Vec::new();
            for gpu in 0..2 {
                for (name, outcome) in [("memory", memory), ("pcie", Outcome::Passed)] {
                    subs.push(SubResult {
                        name: name.into(),
                        gpu_index: Some(gpu),
                        message: "bandwidth below threshold".into(),
                        ..diag(outcome, 3)
                    });
                }
            }
            if memory == Outcome::Failed {
                job.results[1].outcome = Outcome::Failed;
                job.state = JobState::Failed;
            }
            job.results[1].sub_results = subs;
            job
        })
        .collect()
}

#[test]
fn each_testcase_is_compared_per_sku_and_only_the_regressed_one_fails() {
    // memory: 40/50 GPUs passed now against 100/100; pcie 50/50 against 100/100.
    let mut current = with_tests("n", "hgx-h100", 25, 20);
    current.extend(with_tests("m", "hgx-b200", 25, 25));
    let mut baseline = with_tests("o", "hgx-h100", 50, 50);
    baseline.extend(with_tests("p", "hgx-b200", 50, 50));
    let policy = gate("  - no-regression: {min-samples: 20}\n");
    let rule = &evaluate(&policy, &against(current, baseline), &[], at(100)).rules[0];
    assert_eq!(rule.rule_id, "no-regression");
    assert_eq!(rule.verdict, Verdict::Failed, "{}", rule.reason);
    assert!(
        rule.reason.starts_with(
            "regressed against r545: step1/memory on sku=hgx-h100: 40/50 passed (80.0%) vs baseline 100/100 (100.0%), Fisher one-sided p="
        ),
        "{}",
        rule.reason
    );
    assert!(
        !rule.reason.contains("pcie") && !rule.reason.contains("b200"),
        "{}",
        rule.reason
    );
    // The failing items are the failed tests, each naming its GPU; waivers judge those.
    let failing: Vec<&EvidenceItem> = rule.evidence.iter().filter(|i| !i.ok).collect();
    assert_eq!(failing.len(), 10);
    assert!(failing.iter().all(|i| i.step.as_deref() == Some("step1")
        && i.gpu_index.is_some()
        && i.detail.starts_with("step1/memory on GPU ")
        && i.detail.ends_with("failed: bandwidth below threshold")));
    assert_eq!(rule.failing_nodes.len(), 5);
}

#[test]
fn a_worse_measurement_fails_by_mann_whitney_u() {
    let with_bw = |jobs: Vec<JobEvidence>, base: f64| -> Vec<JobEvidence> {
        jobs.into_iter()
            .enumerate()
            .map(|(i, mut job)| {
                job.results[1].measurements[0].value = base + (i % 7) as f64;
                job
            })
            .collect()
    };
    let policy = gate(
        "  - no-regression: {step: step1, min-samples: 20, measurement: membw_gbps, direction: higher-is-better}\n",
    );
    let slower = against(
        with_bw(fleet("n", "hgx-h100", 30, 0), 2900.0),
        with_bw(fleet("o", "hgx-h100", 30, 0), 2950.0),
    );
    let rule = &evaluate(&policy, &slower, &[], at(100)).rules[0];
    assert_eq!(rule.rule_id, "no-regression:step1:membw_gbps");
    assert_eq!(rule.verdict, Verdict::Failed, "{}", rule.reason);
    assert!(
        rule.reason.contains(
            "step1 membw_gbps on sku=hgx-h100: median 2903 vs baseline median 2953 (30 vs 30 values, higher-is-better), Mann-Whitney one-sided p="
        ) && !rule.reason.contains("step1 on sku"),
        "{}",
        rule.reason
    );
    assert_eq!(rule.failing_nodes.len(), 30);
    // The same numbers are no regression where lower is better.
    let lower = gate(
        "  - no-regression: {step: step1, min-samples: 20, measurement: membw_gbps, direction: lower-is-better}\n",
    );
    let rule = &evaluate(&lower, &slower, &[], at(100)).rules[0];
    assert_eq!(rule.verdict, Verdict::Passed, "{}", rule.reason);
}

#[test]
fn waivers_apply_to_no_regression_by_its_id_and_scope() {
    let ev = against(fleet("n", "hgx-h100", 41, 9), fleet("o", "hgx-h100", 98, 2));
    let policy = gate(NO_REGRESSION);
    let whole = waiver("no-regression:step1");
    let rule = &evaluate(&policy, &ev, &[whole], at(100)).rules[0];
    assert_eq!(rule.verdict, Verdict::Waived, "{}", rule.reason);
    let other_sku = Waiver {
        skus: vec!["hgx-b200".into()],
        ..waiver("no-regression:step1")
    };
    let rule = &evaluate(&policy, &ev, &[other_sku], at(100)).rules[0];
    assert_eq!(rule.verdict, Verdict::Failed, "{}", rule.reason);
    let this_sku = Waiver {
        skus: vec!["hgx-h100".into()],
        ..waiver("no-regression:step1")
    };
    let rule = &evaluate(&policy, &ev, &[this_sku], at(100)).rules[0];
    assert_eq!(rule.verdict, Verdict::Waived, "{}", rule.reason);
}

#[test]
fn no_regression_decided_incrementally_equals_a_full_evaluation() {
    let policy = gate("  - no-regression: {min-samples: 20, measurement: membw_gbps}\n");
    let full = against(fleet("n", "hgx-h100", 41, 9), fleet("o", "hgx-h100", 98, 2));
    let mut partial = full.clone();
    for k in [3, 45] {
        partial.runs[0].jobs[k].results.truncate(1);
        partial.runs[0].jobs[k].state = JobState::Running;
    }
    let mut state = GateState::new(&policy, &partial);
    assert_eq!(
        state.decide(&policy, &partial, &[], at(100)),
        evaluate(&policy, &partial, &[], at(100))
    );
    for k in [3, 45] {
        partial.runs[0].jobs[k] = full.runs[0].jobs[k].clone();
        state.job_changed(&policy, &partial, 0, k);
    }
    assert_eq!(
        state.decide(&policy, &partial, &[], at(100)),
        evaluate(&policy, &full, &[], at(100))
    );
}

#[test]
fn no_regression_errors_name_line_and_field() {
    let source = "milestone: lab-qual\nrules:\n  - steps-passed: {plan: gpu-qual, steps: [step0]}\n  - no-regression: {significance: 1.5, min-samples: 0, direction: up}\n";
    let text = parse_gate("g.yaml", source).unwrap_err().to_string();
    for expected in [
        "g.yaml:4:",
        "rules[1].no-regression.significance: 1.5 is not a significance level in (0, 1)",
        "rules[1].no-regression.min-samples: must be at least 1",
        "rules[1].no-regression.direction: applies to a measurement",
    ] {
        assert!(text.contains(expected), "{expected} not in {text}");
    }
    let source = "milestone: lab-qual\nrules:\n  - no-regression: {measurement: bw, direction: up}\n  - no-regression: {per-sku: true}\n";
    let text = parse_gate("g.yaml", source).unwrap_err().to_string();
    assert!(
        text.contains("g.yaml:4:") && text.contains("unknown field `per-sku`"),
        "{text}"
    );
    let source =
        "milestone: lab-qual\nrules:\n  - no-regression: {measurement: bw, direction: up}\n";
    let text = parse_gate("g.yaml", source).unwrap_err().to_string();
    assert!(
        text.contains("g.yaml:3:") && text.contains("rules[0].no-regression.direction"),
        "{text}"
    );
    let defaults = gate("  - no-regression: {}\n");
    assert_eq!(
        defaults.rules[0].kind,
        RuleKind::NoRegression {
            step: None,
            per: "sku".into(),
            significance: 0.05,
            min_samples: 20,
            measurement: None,
            direction: Direction::HigherIsBetter,
        }
    );
}

#[test]
fn the_documented_no_regression_rules_parse_with_their_ids() {
    let policy = gate(
        "  - no-regression: {per: sku, significance: 0.05, min-samples: 20}\n  - no-regression: {step: dcgm-diag, per: sku, significance: 0.01, min-samples: 30,\n                    measurement: membw_gbps, direction: higher-is-better}\n",
    );
    let ids: Vec<&str> = policy.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["no-regression", "no-regression:dcgm-diag:membw_gbps"]);
    assert_eq!(
        policy.rules[1].kind.describe(),
        "the pass rate of step dcgm-diag and each of its testcases per sku is not significantly lower than the last release promoted past this milestone (one-sided Fisher's exact test), nor are its membw_gbps values significantly worse (higher-is-better; one-sided Mann-Whitney U), at p < 0.01 with at least 30 samples on each side"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A gate with a percentile, a mean, events and inventory, for the incremental property.
    const INCREMENTAL: &str = r#"
milestone: lab-qual
rules:
  - steps-passed: {plan: gpu-qual, steps: [step0, step1], min-fraction: 0.5}
  - measurement: {name: membw_gbps, aggregate: p50, condition: ">= 2800"}
  - telemetry: {field: gpu_temp_c, aggregate: mean, condition: "< 88"}
  - no-events: {}
  - inventory-matches-release: {}
"#;

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Passed),
            Just(Outcome::Failed),
            Just(Outcome::Error),
            Just(Outcome::Skipped),
            Just(Outcome::Lost)
        ]
    }

    /// Every attempt of one step: one to three lease epochs (an agent restart reassigns the
    /// job), each with one to three attempts numbered from 1, in any order.
    fn attempts(step_index: u32) -> impl Strategy<Value = Vec<StepResult>> {
        proptest::collection::vec(proptest::collection::vec(outcome(), 1..4), 1..4)
            .prop_map(move |epochs| {
                let mut results = Vec::new();
                for (epoch, outcomes) in epochs.into_iter().enumerate() {
                    for (attempt, outcome) in outcomes.into_iter().enumerate() {
                        let mut result = step_result(step_index, attempt as u32 + 1, outcome);
                        result.lease_epoch = epoch as u64 + 1;
                        results.push(result);
                    }
                }
                results
            })
            .prop_shuffle()
    }

    /// Jobs whose steps have several attempts over several lease epochs; a finished job's
    /// state is the one `job::final_state` gives its results.
    fn jobs() -> impl Strategy<Value = Vec<JobEvidence>> {
        proptest::collection::vec(
            (
                attempts(0),
                attempts(1),
                60.0f64..100.0,
                2000.0f64..3500.0,
                any::<bool>(),
            ),
            1..6,
        )
        .prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (s0, s1, temp, bw, done))| {
                    let s1 = s1.into_iter().map(|result| {
                        with_telemetry(
                            with_measurement(result, "membw_gbps", bw),
                            0,
                            Field::GpuTempC,
                            temp,
                        )
                    });
                    let results: Vec<StepResult> = s0.into_iter().chain(s1).collect();
                    let state = if done {
                        crate::job::final_state(&results, &[0, 0]).unwrap_or(JobState::Running)
                    } else {
                        JobState::Running
                    };
                    job(&format!("n{i}"), state, results)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn adding_a_failure_never_turns_failed_into_passed(jobs in jobs(), fail_step in 0u32..2) {
            let before = evaluate(&policy(), &evidence(jobs.clone()), &[], at(100));
            let mut worse = jobs;
            let extra = job("extra", JobState::Failed, vec![step_result(fail_step, 1, Outcome::Failed)]);
            worse.push(extra);
            let after = evaluate(&policy(), &evidence(worse), &[], at(100));
            if before.verdict == Verdict::Failed {
                prop_assert_ne!(after.verdict, Verdict::Passed);
            }
        }

        #[test]
        fn a_waiver_never_makes_missing_evidence_pass(jobs in jobs()) {
            let waivers: Vec<Waiver> = policy().rules.iter().map(|r| Waiver {
                id: format!("w-{}", r.id), release: "r550".into(), milestone: "lab-qual".into(), rule_id: r.id.clone(),
                reason: "r".into(), ticket: "T-1".into(), approver: "a".into(), created_at: at(0), expires_at: at(1000), revoked_at: None, nodes: Vec::new(), skus: Vec::new(), steps: Vec::new(), issue: None,
            }).collect();
            let decision = evaluate(&policy(), &evidence(jobs), &waivers, at(100));
            for rule in &decision.rules {
                prop_assert!(rule.verdict != Verdict::Passed || !rule.reason.contains("waived"));
            }
            if decision.rules.iter().any(|r| r.verdict == Verdict::Waiting || r.verdict == Verdict::Error) {
                prop_assert_ne!(decision.verdict, Verdict::Passed);
            }
        }

        /// Which attempt of a step counts is decided by (lease epoch, attempt), never by the
        /// order in which the store happens to list a job's results: the same results in
        /// another order give the same decision: the same verdicts, reasons, failing nodes
        /// and failure groups. (Which of several equal values an evidence item names, and the
        /// digest over the items, follow the listing.)
        #[test]
        fn the_order_results_are_listed_in_does_not_change_the_decision(jobs in jobs(), rotate in 1usize..9) {
            let listed = evaluate(&policy(), &evidence(jobs.clone()), &[], at(100));
            let reordered: Vec<JobEvidence> = jobs.into_iter().map(|mut job| {
                job.results.reverse();
                let n = job.results.len();
                job.results.rotate_left(rotate % n.max(1));
                job
            }).collect();
            let reordered = evaluate(&policy(), &evidence(reordered), &[], at(100));
            let unordered = |mut decision: Decision| {
                decision.digest.clear();
                for rule in &mut decision.rules {
                    rule.evidence.clear();
                }
                decision
            };
            prop_assert_eq!(unordered(listed), unordered(reordered));
        }

        /// A state told about each change one job at a time decides exactly as a full
        /// evaluation of the final evidence: same verdicts, reasons, evidence and digest.
        #[test]
        fn incremental_decisions_equal_full_evaluation(jobs in jobs(), changed in 0usize..6, digested in any::<bool>()) {
            let policy = parse_gate("g.yaml", INCREMENTAL).expect("valid gate");
            let mut full = evidence(jobs);
            if digested {
                for job in &mut full.runs[0].jobs {
                    job.result_digests = job.results.iter().map(result_digest).collect();
                }
            }
            let k = changed % full.runs[0].jobs.len();
            let mut partial = full.clone();
            let job = &mut partial.runs[0].jobs[k];
            job.results.truncate(1);
            job.result_digests.truncate(1);
            job.state = JobState::Running;
            let mut state = GateState::new(&policy, &partial);
            let early = state.decide(&policy, &partial, &[], at(100));
            prop_assert_eq!(&early, &evaluate(&policy, &partial, &[], at(100)));
            // Built on several threads, the state decides as built on one.
            prop_assert_eq!(
                GateState::with_threads(&policy, &full, 3).decide(&policy, &full, &[], at(100)),
                GateState::with_threads(&policy, &full, 1).decide(&policy, &full, &[], at(100))
            );
            partial.runs[0].jobs[k] = full.runs[0].jobs[k].clone();
            state.job_changed(&policy, &partial, 0, k);
            prop_assert_eq!(state.decide(&policy, &partial, &[], at(100)), evaluate(&policy, &full, &[], at(100)));
            let mut undigested = full.clone();
            for job in &mut undigested.runs[0].jobs {
                job.result_digests.clear();
            }
            prop_assert_eq!(digest_inputs(&policy, &full, &[]), digest_inputs(&policy, &undigested, &[]));
        }

        /// The gate and the job's end state agree on which attempt of each step counts: with
        /// every listed step required on every node, the steps rule passes exactly when the last
        /// attempt of each listed step passed on every node.
        #[test]
        fn the_steps_rule_agrees_with_the_job_end_state(jobs in jobs()) {
            let policy = parse_gate(
                "g.yaml",
                "milestone: lab-qual\nrules:\n  - steps-passed: {plan: gpu-qual, steps: [step0, step1]}\n",
            ).expect("valid gate");
            let ev = evidence(jobs);
            let decision = evaluate(&policy, &ev, &[], at(100));
            // The oracle: the last attempt by (lease epoch, attempt), as the agent ran them.
            let last_outcome = |job: &JobEvidence, step: u32| {
                job.results
                    .iter()
                    .filter(|r| r.step_index == step)
                    .max_by_key(|r| (r.lease_epoch, r.attempt))
                    .map(|r| r.outcome)
            };
            let all_passed = ev.runs[0].jobs.iter().all(|job| {
                (0..2).all(|step| last_outcome(job, step) == Some(Outcome::Passed))
            });
            // A job the gate sees passed has the end state `final_state` gives it.
            for job in &ev.runs[0].jobs {
                if job.state.is_terminal()
                    && (0..2).all(|step| last_outcome(job, step) == Some(Outcome::Passed))
                {
                    prop_assert_eq!(job.state, JobState::Passed);
                }
            }
            prop_assert_eq!(decision.rules[0].verdict == Verdict::Passed, all_passed, "{}", decision.rules[0].reason);
        }

        /// A node counts toward the steps rule only when the final attempt of every listed
        /// step passed. A missing result never counts; a running job counts only for steps
        /// that already passed (a passed attempt is final: it is never retried), so whether
        /// the job is still running is not what decides. (The job state alone is not the
        /// oracle: the generator may pair a running job with every step passed.)
        #[test]
        fn a_missing_or_unpassed_final_attempt_never_counts(jobs in jobs()) {
            let ev = evidence(jobs);
            let decision = evaluate(&policy(), &ev, &[], at(100));
            let n_passed = ev.runs[0].jobs.iter().filter(|j| {
                (0..2).all(|step| {
                    crate::result::final_attempt(&j.results, step)
                        .is_some_and(|r| r.outcome == Outcome::Passed)
                })
            }).count();
            if decision.rules[0].verdict == Verdict::Passed {
                prop_assert!(n_passed >= 3, "passed with {} node(s) whose listed steps passed", n_passed);
            }
        }
    }
}

/// Evidence thinned to what a policy's rules read (as the controller keeps a gate's evidence in
/// memory) gives the decision the whole evidence gives, digest included, for each kind of rule
/// over evidence each can fail on; the summaries no rule reads, the series, the log tails and
/// the inventories' names and serials are gone.
#[test]
fn evidence_thinned_to_what_the_rules_read_decides_alike() {
    /// Every GPU of every result also reports power and SM clock; each result carries a
    /// series and a log tail.
    fn with_unread_parts(mut job: JobEvidence) -> JobEvidence {
        for result in &mut job.results {
            for gpu_index in 0..2 {
                *result = with_telemetry(result.clone(), gpu_index, Field::PowerW, 700.0);
                *result = with_telemetry(result.clone(), gpu_index, Field::SmClockMhz, 1980.0);
            }
            result.series.push(crate::telemetry::TelemetrySeries {
                gpu_index: 0,
                field: Field::PowerW,
                bucket_ms: 1000,
                points: Vec::new(),
            });
            result.log_tail = "stress: 2 GPUs, 600 s\n".repeat(100);
        }
        job
    }
    let mut hot = good("n2");
    hot.results[1] = with_telemetry(hot.results[1].clone(), 1, Field::GpuTempC, 93.0);
    let mut ecc = good("n3");
    ecc.results[1] = with_telemetry(
        ecc.results[1].clone(),
        0,
        Field::EccUncorrectedVolatile,
        2.0,
    );
    let mut remap = good("n4");
    remap.results[1] = with_telemetry(remap.results[1].clone(), 1, Field::RowRemapFailure, 1.0);
    let mut xid = good("n5");
    xid.results[0] = with_xid(xid.results[0].clone(), 0, 79);
    // Flashed to another VBIOS on GPU 1 during its last step.
    let mut flashed = good("n6");
    let mut after = flashed.results[1].inventory.clone();
    after.gpus[1].vbios_version = "96.00.00.00.00".into();
    flashed.results[1].inventory_at_end = Some(after);
    let mut other_driver = good("n7");
    for result in &mut other_driver.results {
        result.inventory.driver_version = "535.104.05".into();
    }
    let diag = with_diag("n8", [Outcome::Passed, Outcome::Skipped], 3);
    let mut slow = good("n9");
    slow.results[1].measurements[0].value = 2500.0;
    let mut whole = evidence(
        [
            good("n1"),
            hot,
            ecc,
            remap,
            xid,
            flashed,
            other_driver,
            diag,
            slow,
        ]
        .into_iter()
        .map(with_unread_parts)
        .collect(),
    );
    for job in &mut whole.runs[0].jobs {
        job.result_digests = job.results.iter().map(result_digest).collect();
    }
    let cases = [
        (policy(), vec![Field::GpuTempC]),
        (
            gate("  - no-events: {}\n"),
            vec![Field::EccUncorrectedVolatile, Field::RowRemapFailure],
        ),
        (
            gate(concat!(
                "  - no-events: {ecc-uncorrected: false}\n",
                "  - telemetry: {field: power_w, aggregate: max, condition: \"< 600\"}\n",
                "  - inventory-matches-release: {components: [vbios]}\n",
            )),
            vec![Field::PowerW, Field::RowRemapFailure],
        ),
        (
            gate(concat!(
                "  - dcgm-diag: {level: 3, tests: [memory]}\n",
                "  - telemetry: {field: sm_clock_mhz, step: step1, aggregate: min, condition: \"> 1975\"}\n",
            )),
            vec![Field::SmClockMhz],
        ),
        (gate("  - no-xid: {}\n"), vec![]),
    ];
    for (policy, fields) in cases {
        let reads = ResultReads::of(&policy);
        assert_eq!(reads.fields(), fields.as_slice());
        let mut thinned = whole.clone();
        for result in thinned.runs[0]
            .jobs
            .iter_mut()
            .flat_map(|job| &mut job.results)
        {
            reads.thin(result);
            assert!(result.series.is_empty() && result.log_tail.is_empty());
            assert!(result.inventory.gpus.iter().all(|gpu| gpu.uuid.is_empty()));
            for gpu in &result.telemetry {
                assert!(gpu.fields.iter().all(|s| fields.contains(&s.field)));
            }
        }
        let decided = evaluate(&policy, &whole, &[], at(100));
        for rule in &decided.rules {
            assert_ne!(
                rule.verdict,
                Verdict::Passed,
                "{}: {}",
                rule.rule_id,
                rule.reason
            );
        }
        assert_eq!(evaluate(&policy, &thinned, &[], at(100)), decided);
    }
}
