//! How each rule kind judges the evidence. Every function here returns a verdict, a reason a
//! person can act on, the evidence used and the failing nodes; grouping and waivers are
//! applied by `evaluate`.

use super::*;
use crate::release::check_inventory;
use crate::result::Outcome;
use crate::telemetry::EventKind;

/// The evidence a rule sees: jobs on nodes inside its scope.
struct View<'a> {
    evidence: &'a Evidence,
    runs: Vec<(&'a RunEvidence, Vec<&'a JobEvidence>)>,
}

impl<'a> View<'a> {
    fn new(evidence: &'a Evidence, scope: &Selector) -> Self {
        let runs = evidence
            .runs
            .iter()
            .map(|run| {
                (
                    run,
                    run.jobs
                        .iter()
                        .filter(|job| scope.matches(&job.labels))
                        .collect(),
                )
            })
            .collect();
        Self { evidence, runs }
    }

    fn jobs(&self) -> impl Iterator<Item = &'a JobEvidence> + '_ {
        self.runs.iter().flat_map(|(_, jobs)| jobs.iter().copied())
    }

    fn still_running(&self) -> usize {
        self.jobs().filter(|job| !job.state.is_terminal()).count()
    }

    fn release(&self) -> &'a Release {
        &self.evidence.release
    }
}

struct Judged {
    verdict: Verdict,
    reason: String,
    items: Vec<EvidenceItem>,
}

fn judged(verdict: Verdict, reason: impl Into<String>, items: Vec<EvidenceItem>) -> Judged {
    Judged {
        verdict,
        reason: reason.into(),
        items,
    }
}

/// Evaluates one rule (without waivers).
pub(super) fn evaluate_rule(rule: &Rule, evidence: &Evidence) -> RuleDecision {
    let judged = if let Some(since) = rule
        .since
        .filter(|since| evidence.release.created_at < *since)
    {
        judged(
            Verdict::NotApplicable,
            format!(
                "applies to releases created since {}; {} was created {}",
                since.format("%Y-%m-%d %H:%M UTC"),
                evidence.release.id,
                evidence.release.created_at.format("%Y-%m-%d %H:%M UTC")
            ),
            Vec::new(),
        )
    } else if evidence.runs.is_empty() {
        judged(Verdict::Waiting, no_run_reason(evidence), Vec::new())
    } else {
        let view = View::new(evidence, &rule.scope);
        if view.jobs().next().is_none() {
            judged(
                Verdict::Waiting,
                format!("no job ran on a node in scope {}", rule.scope),
                Vec::new(),
            )
        } else {
            judge(&rule.kind, &view)
        }
    };
    let mut failing: BTreeSet<NodeId> = BTreeSet::new();
    let mut groups: BTreeMap<String, (usize, BTreeSet<NodeId>)> = BTreeMap::new();
    if judged.verdict == Verdict::Failed {
        for item in judged.items.iter().filter(|item| !item.ok) {
            failing.insert(item.node.clone());
            let signature = item
                .signature
                .clone()
                .unwrap_or_else(|| item.detail.clone());
            let group = groups.entry(signature).or_default();
            group.0 += 1;
            group.1.insert(item.node.clone());
        }
    }
    let mut failure_groups: Vec<FailureGroup> = groups
        .into_iter()
        .map(|(signature, (count, nodes))| FailureGroup {
            signature,
            count,
            nodes: nodes.into_iter().collect(),
        })
        .collect();
    failure_groups.sort_by(|a, b| {
        b.nodes
            .len()
            .cmp(&a.nodes.len())
            .then(b.count.cmp(&a.count))
    });
    RuleDecision {
        rule_id: rule.id.clone(),
        kind: rule.kind.name().to_owned(),
        verdict: judged.verdict,
        reason: judged.reason,
        evidence: judged.items,
        failing_nodes: failing.into_iter().collect(),
        failure_groups,
        waiver_id: None,
    }
}

fn no_run_reason(evidence: &Evidence) -> String {
    format!(
        "no run of release {} at milestone {} yet; start one with `tollgate run start --release {} --plan PLAN --milestone {}`",
        evidence.release.id, evidence.milestone, evidence.release.id, evidence.milestone
    )
}

/// Whether a result counts toward the gate: the node ran the release under test.
fn counts(result: &StepResult, release: &Release) -> bool {
    check_inventory(&release.components, &[], &result.inventory).is_empty()
}

/// A message with its numbers blanked, so alike failures share a signature.
fn error_class(message: &str) -> String {
    let mut class: String = message
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    class.truncate(80);
    class
}

fn item(job: &JobEvidence, detail: impl Into<String>, ok: bool) -> EvidenceItem {
    EvidenceItem {
        node: job.node.clone(),
        step: None,
        attempt: None,
        gpu_index: None,
        value: None,
        limit: None,
        detail: detail.into(),
        ok,
        signature: None,
    }
}

fn judge(kind: &RuleKind, view: &View<'_>) -> Judged {
    match kind {
        RuleKind::StepsPassed {
            plan,
            steps,
            quorum,
            per,
            tolerance,
        } => steps_passed(view, plan, steps, *quorum, per.as_deref(), *tolerance),
        RuleKind::Measurement {
            name,
            step,
            aggregate,
            condition,
        } => {
            let items = measurement_items(view, name, step.as_deref(), *condition);
            judge_numeric(
                &format!("measurement {name}"),
                items,
                *aggregate,
                *condition,
                view,
            )
        }
        RuleKind::Telemetry {
            field,
            step,
            stat,
            aggregate,
            condition,
        } => {
            let mut items = Vec::new();
            for job in view.jobs() {
                for result in &job.results {
                    if step.as_ref().is_some_and(|s| s != &result.step_name)
                        || !counts(result, view.release())
                    {
                        continue;
                    }
                    for gpu in &result.telemetry {
                        let Some(summary) = gpu.field(*field) else {
                            continue;
                        };
                        let value = match stat {
                            Stat::Min => summary.min,
                            Stat::Max => summary.max,
                            Stat::Mean => summary.mean,
                            Stat::P99 => summary.p99,
                            Stat::Last => summary.last,
                        };
                        let ok = condition.holds(value);
                        items.push(EvidenceItem {
                            step: Some(result.step_name.clone()),
                            attempt: Some(result.attempt),
                            gpu_index: Some(gpu.gpu_index),
                            value: Some(value),
                            limit: Some(condition.to_string()),
                            signature: (!ok).then(|| {
                                format!("{field} {stat} breaks {condition} in {}", result.step_name)
                            }),
                            ..item(
                                job,
                                format!("GPU {} {field} {stat} = {value}", gpu.gpu_index),
                                ok,
                            )
                        });
                    }
                }
            }
            judge_numeric(
                &format!("telemetry {field} ({stat} per GPU)"),
                items,
                *aggregate,
                *condition,
                view,
            )
        }
        RuleKind::Baseline {
            measurement,
            step,
            aggregate,
            max_regression_pct,
            direction,
            per,
        } => baseline(
            view,
            measurement,
            step.as_deref(),
            *aggregate,
            *max_regression_pct,
            *direction,
            per,
        ),
        RuleKind::NoXid { codes } => {
            let matches = |code: i64| codes.is_empty() || codes.contains(&code);
            no_events(
                view,
                &format!("XID ({})", describe_codes(codes)),
                &|kind, code| kind == EventKind::Xid && matches(code),
                false,
                false,
            )
        }
        RuleKind::NoEvents {
            xid,
            ecc_uncorrected,
            row_remap_failure,
            gpu_lost,
        } => {
            let watched = |kind: EventKind, code: i64| match kind {
                EventKind::Xid => xid.is_empty() || xid.contains(&code),
                EventKind::EccUncorrected => *ecc_uncorrected,
                EventKind::GpuLost => *gpu_lost,
            };
            let what = format!(
                "XID {}{}{}{}",
                describe_codes(xid),
                if *ecc_uncorrected {
                    ", uncorrected ECC"
                } else {
                    ""
                },
                if *row_remap_failure {
                    ", row remap failure"
                } else {
                    ""
                },
                if *gpu_lost { ", GPU lost" } else { "" }
            );
            no_events(view, &what, &watched, *ecc_uncorrected, *row_remap_failure)
        }
        RuleKind::DcgmDiag {
            min_level,
            tests,
            step,
        } => dcgm_diag(view, *min_level, tests, step.as_deref()),
        RuleKind::InventoryMatchesRelease { components } => inventory_matches(view, components),
    }
}

fn steps_passed(
    view: &View<'_>,
    plan: &str,
    steps: &[String],
    quorum: Quorum,
    per: Option<&str>,
    tolerance: Tolerance,
) -> Judged {
    let Some((run, jobs)) = view
        .runs
        .iter()
        .filter(|(r, _)| r.plan_name == plan)
        .max_by_key(|(r, _)| r.created_at)
    else {
        let evidence = view.evidence;
        return judged(
            Verdict::Waiting,
            format!(
                "no run of plan {plan} for release {} at milestone {} yet; start one with `tollgate run start --release {} --plan {plan} --milestone {}`",
                evidence.release.id, evidence.milestone, evidence.release.id, evidence.milestone
            ),
            Vec::new(),
        );
    };
    let mut indexes = Vec::new();
    for step in steps {
        match run.plan_steps.iter().position(|s| s == step) {
            Some(idx) => indexes.push((idx, step)),
            None => {
                return judged(
                    Verdict::Error,
                    format!(
                        "plan {plan} (version {}) has no step '{step}'; its steps are: {}",
                        &run.plan_version.0[..run.plan_version.0.len().min(12)],
                        run.plan_steps.join(", ")
                    ),
                    Vec::new(),
                );
            }
        }
    }
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Class {
        Passed,
        Failed,
        Errored,
        Inconclusive,
        Pending,
    }
    // Classify every node; the first step that is not passed decides.
    let mut items = Vec::new();
    let mut classes: Vec<(String, Class)> = Vec::new();
    for job in jobs {
        let mut class = Class::Passed;
        let mut detail = "every listed step passed".to_owned();
        let mut signature = None;
        let mut failing_step = None;
        for (idx, step) in &indexes {
            let (c, d, s) = match job.latest(*idx) {
                None if job.state.is_terminal() => (
                    Class::Inconclusive,
                    format!("{step}: no result (job {})", job.state),
                    format!("{step}: missing"),
                ),
                None => (
                    Class::Pending,
                    format!("{step}: not reported yet (job {})", job.state),
                    String::new(),
                ),
                Some(result)
                    if result.outcome == Outcome::Passed && counts(result, view.release()) =>
                {
                    continue;
                }
                Some(result) if result.outcome == Outcome::Passed => {
                    let mismatch: Vec<String> =
                        check_inventory(&view.release().components, &[], &result.inventory)
                            .iter()
                            .map(ToString::to_string)
                            .collect();
                    (
                        Class::Inconclusive,
                        format!(
                            "{step}: passed, but not on the release under test ({})",
                            mismatch.join("; ")
                        ),
                        format!("{step}: wrong build"),
                    )
                }
                Some(_) if !job.state.is_terminal() => (
                    Class::Pending,
                    format!("{step}: retrying (job {})", job.state),
                    String::new(),
                ),
                Some(result) => {
                    let class = match result.outcome {
                        Outcome::Failed => Class::Failed,
                        Outcome::Error | Outcome::Lost => Class::Errored,
                        Outcome::Skipped | Outcome::Passed => Class::Inconclusive,
                    };
                    let why = if result.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", result.message)
                    };
                    (
                        class,
                        format!(
                            "{step}: {} (attempt {}){why}",
                            result.outcome, result.attempt
                        ),
                        format!(
                            "{step}: {}: {}",
                            result.outcome,
                            error_class(&result.message)
                        ),
                    )
                }
            };
            class = c;
            detail = d;
            signature = (c != Class::Pending).then_some(s);
            failing_step = Some((*step).clone());
            break;
        }
        let group = per
            .map(|key| {
                job.labels
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| format!("(no {key})"))
            })
            .unwrap_or_default();
        classes.push((group, class));
        items.push(EvidenceItem {
            step: failing_step,
            signature,
            ..item(job, detail, class == Class::Passed)
        });
    }
    let mut groups: BTreeMap<&str, Vec<Class>> = BTreeMap::new();
    for (group, class) in &classes {
        groups.entry(group.as_str()).or_default().push(*class);
    }
    let count = |classes: &[Class], c: Class| classes.iter().filter(|x| **x == c).count();
    let all: Vec<Class> = classes.iter().map(|(_, c)| *c).collect();
    let (n_failed, n_errored, n_inconclusive) = (
        count(&all, Class::Failed),
        count(&all, Class::Errored),
        count(&all, Class::Inconclusive),
    );
    let mut over_limit = Vec::new();
    if n_failed > tolerance.max_failed as usize {
        over_limit.push(format!(
            "{n_failed} failed (tolerated {})",
            tolerance.max_failed
        ));
    }
    if n_errored > tolerance.max_errored as usize {
        over_limit.push(format!(
            "{n_errored} errored (tolerated {})",
            tolerance.max_errored
        ));
    }
    if n_inconclusive > tolerance.max_inconclusive as usize {
        over_limit.push(format!(
            "{n_inconclusive} inconclusive (tolerated {})",
            tolerance.max_inconclusive
        ));
    }
    let mut short = Vec::new();
    let mut pending_could_help = false;
    let mut described = Vec::new();
    for (group, classes) in &groups {
        let n = classes.len();
        let required = quorum.required(n);
        let passed = count(classes, Class::Passed);
        let pending = count(classes, Class::Pending);
        let label = if per.is_some() {
            format!("{}={group}: ", per.unwrap_or_default())
        } else {
            String::new()
        };
        described.push(format!(
            "{label}{passed} of {n} nodes passed, {required} required"
        ));
        if passed < required {
            if passed + pending >= required {
                pending_could_help = true;
            } else {
                short.push(format!(
                    "{label}{passed} of {n} passed, {required} required"
                ));
            }
        }
    }
    let n_pending = count(&all, Class::Pending);
    let head = format!(
        "[{}] of plan {plan}: {}",
        steps.join(", "),
        described.join("; ")
    );
    let failures: Vec<String> = items
        .iter()
        .filter(|i| !i.ok && i.signature.is_some())
        .map(|i| format!("{} ({})", i.node, i.detail))
        .collect();
    let failure_text = if failures.is_empty() {
        String::new()
    } else {
        format!("; failed: {}", failures.join(", "))
    };
    if !over_limit.is_empty() || !short.is_empty() {
        let mut why = short;
        why.extend(over_limit);
        return judged(
            Verdict::Failed,
            format!("{head}; {}{failure_text}", why.join("; ")),
            items,
        );
    }
    if pending_could_help || n_pending > 0 {
        return judged(
            Verdict::Waiting,
            format!("{head}; {n_pending} node(s) still running"),
            items,
        );
    }
    judged(Verdict::Passed, head, items)
}

fn measurement_items(
    view: &View<'_>,
    name: &str,
    step: Option<&str>,
    condition: Condition,
) -> Vec<EvidenceItem> {
    let mut items = Vec::new();
    for job in view.jobs() {
        for result in job.latest_results() {
            let relevant = step.is_none_or(|s| s == result.step_name)
                && matches!(result.outcome, Outcome::Passed | Outcome::Failed)
                && counts(result, view.release());
            if !relevant {
                continue;
            }
            for m in result.measurements.iter().filter(|m| m.name == name) {
                let unit = m
                    .unit
                    .as_deref()
                    .map(|u| format!(" {u}"))
                    .unwrap_or_default();
                let ok = condition.holds(m.value);
                items.push(EvidenceItem {
                    step: Some(result.step_name.clone()),
                    attempt: Some(result.attempt),
                    value: Some(m.value),
                    limit: Some(condition.to_string()),
                    signature: (!ok)
                        .then(|| format!("{name} breaks {condition} in {}", result.step_name)),
                    ..item(job, format!("{name} = {}{unit}", m.value), ok)
                });
            }
        }
    }
    items
}

/// Judges a numeric rule: aggregate the items, compare, name the nodes whose own values break
/// the condition. While jobs run, only a violation more values cannot repair fails early (a
/// minimum already too low, a maximum already too high).
fn judge_numeric(
    what: &str,
    items: Vec<EvidenceItem>,
    aggregate: Aggregate,
    condition: Condition,
    view: &View<'_>,
) -> Judged {
    let values: Vec<f64> = items.iter().filter_map(|i| i.value).collect();
    let running = view.still_running();
    if values.is_empty() {
        let reason = if running > 0 {
            format!("no {what} yet; {running} job(s) still running")
        } else {
            format!(
                "no result on the release under test reports {what}; the gate waits for a run that does"
            )
        };
        return judged(Verdict::Waiting, reason, items);
    }
    let value = aggregate.apply(&values);
    let holds = condition.holds(value);
    let base = format!(
        "{aggregate} of {what} is {value} over {} value(s), limit {condition}",
        values.len()
    );
    let settled = matches!(
        (aggregate, condition.op),
        (Aggregate::Min, Comparison::Ge | Comparison::Gt)
            | (Aggregate::Max, Comparison::Le | Comparison::Lt)
    );
    if !holds && (running == 0 || settled) {
        return judged(
            Verdict::Failed,
            format!("{base}; {}", describe_offenders(&items)),
            items,
        );
    }
    let mut items = items;
    if holds {
        // The aggregate is what the rule judges; single values beyond the limit do not fail it
        // (a mean or a percentile may allow them), so they are shown but not flagged.
        for item in &mut items {
            item.ok = true;
            item.signature = None;
        }
    }
    if running > 0 {
        return judged(
            Verdict::Waiting,
            format!("{base} so far; {running} job(s) still running"),
            items,
        );
    }
    judged(Verdict::Passed, base, items)
}

fn describe_offenders(items: &[EvidenceItem]) -> String {
    let mut by_node: BTreeMap<&NodeId, Vec<&EvidenceItem>> = BTreeMap::new();
    for item in items.iter().filter(|i| !i.ok) {
        by_node.entry(&item.node).or_default().push(item);
    }
    if by_node.is_empty() {
        return "no single value breaks the limit; the aggregate does".into();
    }
    let parts: Vec<String> = by_node
        .iter()
        .take(10)
        .map(|(node, items)| {
            let worst = items
                .iter()
                .map(|i| i.detail.as_str())
                .take(2)
                .collect::<Vec<_>>()
                .join(", ");
            let more = if items.len() > 2 {
                format!(" and {} more", items.len() - 2)
            } else {
                String::new()
            };
            format!(
                "{node} ({}: {worst}{more})",
                items[0].step.as_deref().unwrap_or("?")
            )
        })
        .collect();
    let more = if by_node.len() > 10 {
        format!(" and {} more node(s)", by_node.len() - 10)
    } else {
        String::new()
    };
    format!("breaking the limit: {}{more}", parts.join("; "))
}

fn baseline(
    view: &View<'_>,
    measurement: &str,
    step: Option<&str>,
    aggregate: Aggregate,
    max_pct: f64,
    direction: Direction,
    per: &str,
) -> Judged {
    let any = Condition {
        op: Comparison::Ne,
        threshold: f64::NAN,
    };
    let group_of = |item: &EvidenceItem, jobs: &[&JobEvidence]| {
        jobs.iter()
            .find(|j| j.node == item.node)
            .and_then(|j| j.labels.get(per).cloned())
            .unwrap_or_else(|| format!("(no {per})"))
    };
    let current_jobs: Vec<&JobEvidence> = view.jobs().collect();
    let mut items = measurement_items(view, measurement, step, any);
    if items.is_empty() {
        let running = view.still_running();
        return judged(
            Verdict::Waiting,
            format!(
                "no measurement {measurement} on the release under test yet; {running} job(s) still running"
            ),
            items,
        );
    }
    let Some(base_evidence) = view.evidence.baseline.as_deref() else {
        return judged(
            Verdict::Passed,
            format!(
                "no earlier release was promoted past {}; nothing to compare {measurement} with",
                view.evidence.milestone
            ),
            items,
        );
    };
    let base_view = View::new(base_evidence, &Selector::default());
    let base_items = measurement_items(&base_view, measurement, step, any);
    let base_jobs: Vec<&JobEvidence> = base_view.jobs().collect();
    let mut current: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for item in &items {
        current
            .entry(group_of(item, &current_jobs))
            .or_default()
            .extend(item.value);
    }
    let mut base: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for item in &base_items {
        base.entry(group_of(item, &base_jobs))
            .or_default()
            .extend(item.value);
    }
    let mut regressions = Vec::new();
    let mut deltas = Vec::new();
    for (group, values) in &current {
        let now = aggregate.apply(values);
        let Some(before) = base.get(group).map(|v| aggregate.apply(v)) else {
            deltas.push(format!("{per}={group}: {now} (no baseline on this {per})"));
            continue;
        };
        let change_pct = if before == 0.0 {
            0.0
        } else {
            (now - before) / before.abs() * 100.0
        };
        let regression = match direction {
            Direction::HigherIsBetter => -change_pct,
            Direction::LowerIsBetter => change_pct,
        };
        deltas.push(format!(
            "{per}={group}: {now} vs {before} ({change_pct:+.1}%)"
        ));
        if regression > max_pct {
            regressions.push((group.clone(), regression));
        }
    }
    let head = format!(
        "{aggregate} {measurement} against {} ({}): {}",
        base_evidence.release.id,
        direction,
        deltas.join("; ")
    );
    if regressions.is_empty() {
        if view.still_running() > 0 {
            return judged(Verdict::Waiting, format!("{head} so far"), items);
        }
        return judged(Verdict::Passed, head, items);
    }
    for item in &mut items {
        let group = group_of(item, &current_jobs);
        if let Some((_, pct)) = regressions.iter().find(|(g, _)| *g == group) {
            item.ok = false;
            item.limit = Some(format!("at most {max_pct}% regression"));
            item.signature = Some(format!(
                "{measurement} regressed {pct:.1}% on {per}={group}"
            ));
        } else {
            item.ok = true;
        }
    }
    let worst: Vec<String> = regressions
        .iter()
        .map(|(g, pct)| format!("{per}={g} regressed {pct:.1}%"))
        .collect();
    judged(
        Verdict::Failed,
        format!(
            "{head}; {} (at most {max_pct}% tolerated)",
            worst.join(", ")
        ),
        items,
    )
}

fn no_events(
    view: &View<'_>,
    what: &str,
    watched: &dyn Fn(EventKind, i64) -> bool,
    ecc_counter: bool,
    row_remap: bool,
) -> Judged {
    let mut items = Vec::new();
    let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
    for job in view.jobs() {
        for result in &job.results {
            for event in result.events.iter().filter(|e| watched(e.kind, e.code)) {
                let (label, signature) = match event.kind {
                    EventKind::Xid => {
                        (format!("XID {}", event.code), format!("XID {}", event.code))
                    }
                    EventKind::EccUncorrected => (
                        format!("{} uncorrected ECC error(s)", event.code),
                        "uncorrected ECC".to_owned(),
                    ),
                    EventKind::GpuLost => ("GPU lost".to_owned(), "GPU lost".to_owned()),
                };
                *per_node.entry(job.node.clone()).or_default() += 1;
                items.push(EvidenceItem {
                    step: Some(result.step_name.clone()),
                    attempt: Some(result.attempt),
                    gpu_index: Some(event.gpu_index),
                    value: Some(event.code as f64),
                    limit: Some(what.to_owned()),
                    signature: Some(signature),
                    ..item(
                        job,
                        format!(
                            "{label} on GPU {} during {}: {}",
                            event.gpu_index, result.step_name, event.detail
                        ),
                        false,
                    )
                });
            }
            for gpu in &result.telemetry {
                let rising = |field: Field| gpu.field(field).is_some_and(|s| s.max > s.min);
                let set = |field: Field| gpu.field(field).is_some_and(|s| s.max > 0.0);
                let mut flag = |what: &str, value: Option<f64>| {
                    *per_node.entry(job.node.clone()).or_default() += 1;
                    items.push(EvidenceItem {
                        step: Some(result.step_name.clone()),
                        attempt: Some(result.attempt),
                        gpu_index: Some(gpu.gpu_index),
                        value,
                        limit: Some("none".into()),
                        signature: Some(what.to_owned()),
                        ..item(
                            job,
                            format!(
                                "{what} on GPU {} during {}",
                                gpu.gpu_index, result.step_name
                            ),
                            false,
                        )
                    });
                };
                let has_ecc_event = result
                    .events
                    .iter()
                    .any(|e| e.kind == EventKind::EccUncorrected && e.gpu_index == gpu.gpu_index);
                if ecc_counter && !has_ecc_event && rising(Field::EccUncorrectedVolatile) {
                    let delta = gpu
                        .field(Field::EccUncorrectedVolatile)
                        .map(|s| s.max - s.min);
                    flag("uncorrected ECC", delta);
                }
                if row_remap && set(Field::RowRemapFailure) {
                    flag("row remap failure", Some(1.0));
                }
            }
        }
    }
    if !items.is_empty() {
        let counts: Vec<String> = per_node
            .iter()
            .map(|(node, n)| format!("{node}: {n}"))
            .collect();
        let kinds: BTreeSet<&str> = items
            .iter()
            .filter_map(|i| i.signature.as_deref())
            .collect();
        let kinds: Vec<&str> = kinds.into_iter().collect();
        return judged(
            Verdict::Failed,
            format!(
                "{} event(s) ({}) on {} node(s) — {}",
                items.len(),
                kinds.join(", "),
                per_node.len(),
                counts.join(", ")
            ),
            items,
        );
    }
    let running = view.still_running();
    if running > 0 {
        return judged(
            Verdict::Waiting,
            format!("no {what} so far; {running} job(s) still running"),
            items,
        );
    }
    let n_jobs = view.jobs().count();
    let checked: Vec<EvidenceItem> = view.jobs().map(|job| item(job, "no event", true)).collect();
    judged(
        Verdict::Passed,
        format!("no {what} on any of {n_jobs} node(s)"),
        checked,
    )
}

fn dcgm_diag(view: &View<'_>, min_level: u8, tests: &[String], step: Option<&str>) -> Judged {
    let mut items = Vec::new();
    let (mut n_failed, mut n_missing) = (0, 0);
    for job in view.jobs() {
        let diag = job
            .latest_results()
            .filter(|r| step.is_none_or(|s| s == r.step_name) && counts(r, view.release()))
            .filter(|r| {
                r.sub_results
                    .iter()
                    .any(|s| s.source == "dcgm-diag" && s.level.is_some_and(|l| l >= min_level))
            })
            .last();
        let Some(result) = diag else {
            n_missing += 1;
            let detail = if job.state.is_terminal() {
                format!("no dcgm-diag result at level {min_level} or higher")
            } else {
                format!("no dcgm-diag result yet (job {})", job.state)
            };
            items.push(EvidenceItem {
                limit: Some(format!("level >= {min_level}")),
                ..item(job, detail, false)
            });
            continue;
        };
        let gpus: Vec<u32> = result.inventory.gpus.iter().map(|g| g.index).collect();
        for test in tests {
            for gpu in &gpus {
                let sub = result.sub_results.iter().find(|s| {
                    s.source == "dcgm-diag" && &s.name == test && s.gpu_index == Some(*gpu)
                });
                let (ok, detail, signature) = match sub {
                    Some(s) if s.outcome == Outcome::Passed => {
                        (true, format!("{test} passed on GPU {gpu}"), None)
                    }
                    Some(s) if s.outcome == Outcome::Failed || s.outcome == Outcome::Error => {
                        n_failed += 1;
                        (
                            false,
                            format!("{test} {} on GPU {gpu}: {}", s.outcome, s.message),
                            Some(format!("dcgm-diag {test}: {}", s.outcome)),
                        )
                    }
                    Some(_) => {
                        n_missing += 1;
                        (
                            false,
                            format!("{test} was skipped on GPU {gpu} (counts as missing)"),
                            None,
                        )
                    }
                    None => {
                        n_missing += 1;
                        (
                            false,
                            format!("{test} did not report GPU {gpu} (missing)"),
                            None,
                        )
                    }
                };
                items.push(EvidenceItem {
                    step: Some(result.step_name.clone()),
                    attempt: Some(result.attempt),
                    gpu_index: Some(*gpu),
                    limit: Some("passed".into()),
                    signature,
                    ..item(job, detail, ok)
                });
            }
        }
    }
    if n_failed > 0 {
        // Missing entries are not failures; only the failed ones are flagged for grouping.
        for item in &mut items {
            if item.signature.is_none() && !item.ok {
                item.ok = true;
                item.detail = format!("{} — not counted as a failure", item.detail);
            }
        }
        return judged(
            Verdict::Failed,
            format!(
                "{n_failed} required dcgm-diag test result(s) failed ({})",
                tests.join(", ")
            ),
            items,
        );
    }
    if n_missing > 0 {
        return judged(
            Verdict::Waiting,
            format!(
                "{n_missing} required dcgm-diag result(s) at level {min_level}+ missing or skipped; a skipped test never passes"
            ),
            items,
        );
    }
    judged(
        Verdict::Passed,
        format!(
            "[{}] passed at level {min_level}+ on every GPU",
            tests.join(", ")
        ),
        items,
    )
}

fn inventory_matches(view: &View<'_>, components: &[String]) -> Judged {
    let mut items = Vec::new();
    let mut n_results = 0;
    for job in view.jobs() {
        let mut problems: Vec<String> = Vec::new();
        for result in &job.results {
            n_results += 1;
            for mismatch in
                check_inventory(&view.release().components, components, &result.inventory)
            {
                let text = mismatch.to_string();
                if !problems.contains(&text) {
                    problems.push(text);
                }
            }
        }
        if job.results.is_empty() {
            continue;
        }
        let ok = problems.is_empty();
        items.push(EvidenceItem {
            limit: Some(describe_components(view.release(), components)),
            signature: problems.first().map(|p| error_class(p)),
            ..item(
                job,
                if ok {
                    "observed inventory matches the release".into()
                } else {
                    problems.join("; ")
                },
                ok,
            )
        });
    }
    let failing: Vec<&EvidenceItem> = items.iter().filter(|i| !i.ok).collect();
    if let Some(first) = failing.first() {
        let reason = format!(
            "{} node(s) did not run release {}: {}: {}",
            failing.len(),
            view.release().id,
            first.node,
            first.detail
        );
        return judged(Verdict::Failed, reason, items);
    }
    let running = view.still_running();
    if running > 0 || n_results == 0 {
        return judged(
            Verdict::Waiting,
            format!("inventory matches so far; {running} job(s) still running"),
            items,
        );
    }
    judged(
        Verdict::Passed,
        format!(
            "every node ran {} ({})",
            view.release().id,
            describe_components(view.release(), components)
        ),
        items,
    )
}

fn describe_codes(codes: &[i64]) -> String {
    if codes.is_empty() {
        "any code".into()
    } else {
        let list: Vec<String> = codes.iter().map(i64::to_string).collect();
        format!("codes {}", list.join(", "))
    }
}

fn describe_components(release: &Release, only: &[String]) -> String {
    release
        .components
        .iter()
        .filter(|c| only.is_empty() || only.contains(&c.name))
        .map(|c| format!("{}={}", c.name, c.version))
        .collect::<Vec<_>>()
        .join(", ")
}
