//! How each rule kind judges the evidence, kept up to date one job at a time.
//!
//! Every rule keeps, per job, the part of the evidence it needs (a node's class for a quorum,
//! the values a numeric rule aggregates, the failing items) and running totals over those
//! parts. When a job changes (a result lands, its state moves) only that job's part is
//! recomputed and swapped into the totals, so deciding after one new result costs the size of
//! the decision, not the size of the evidence. Evidence items are built for failing data, plus
//! a bounded sample of passing data ([`PASSING_SAMPLE`]); the reason of every rule states the
//! counts over all of it.
//!
//! Grouping failures and applying waivers happen in [`super::GateState::decide`].

use super::order_stats::OrderStats;
use super::*;
use crate::ReleaseId;
use crate::release::check_inventory;
use crate::result::Outcome;
use crate::telemetry::EventKind;

/// How many passing evidence items a rule decision lists. Failing items are always listed in
/// full; passing ones are summarized by the counts in the reason, with this many examples (and,
/// for numeric rules, the smallest and the largest value).
pub const PASSING_SAMPLE: usize = 10;

/// Most failing nodes a reason names one by one before saying how many more there are.
const NAMED_IN_REASON: usize = 20;

/// Where a job sits in the evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slot {
    pub(super) run: usize,
    pub(super) job: usize,
}

/// The flat list of every job of `evidence`, run by run.
pub(super) fn slots(evidence: &Evidence) -> Vec<Slot> {
    evidence
        .runs
        .iter()
        .enumerate()
        .flat_map(|(run, r)| (0..r.jobs.len()).map(move |job| Slot { run, job }))
        .collect()
}

/// What every rule needs to know about one job, computed once per change of the job.
#[derive(Clone, Debug, Default)]
pub(super) struct JobFacts {
    /// Per result: whether it ran the release under test.
    counts: Vec<bool>,
    /// The final attempt of each step ([`crate::result::final_attempts`]): (step index,
    /// result index), by step index.
    latest: Vec<(u32, usize)>,
}

impl JobFacts {
    pub(super) fn new(job: &JobEvidence, release: &Release) -> Self {
        let counts = job.results.iter().map(|r| counts(r, release)).collect();
        let latest = crate::result::final_attempts(&job.results);
        Self { counts, latest }
    }

    fn latest(&self, step_index: usize) -> Option<usize> {
        let step = u32::try_from(step_index).ok()?;
        self.latest
            .binary_search_by_key(&step, |(s, _)| *s)
            .ok()
            .map(|pos| self.latest[pos].1)
    }
}

/// The evidence and the per-job facts, as rules read them.
#[derive(Clone, Copy)]
pub(super) struct Ctx<'a> {
    pub(super) evidence: &'a Evidence,
    pub(super) slots: &'a [Slot],
    pub(super) facts: &'a [JobFacts],
}

impl<'a> Ctx<'a> {
    fn job(&self, j: usize) -> &'a JobEvidence {
        let slot = self.slots[j];
        &self.evidence.runs[slot.run].jobs[slot.job]
    }

    fn release(&self) -> &'a Release {
        &self.evidence.release
    }

    /// The latest attempt of every step of job `j`, by step index, with the result's index.
    fn latest_results(&self, j: usize) -> impl Iterator<Item = (usize, &'a StepResult)> + 'a {
        let job = self.job(j);
        let facts: &'a JobFacts = &self.facts[j];
        facts
            .latest
            .iter()
            .map(move |(_, i)| (*i, &job.results[*i]))
    }

    /// Whether result `i` of job `j` ran the release under test.
    fn counts(&self, j: usize, i: usize) -> bool {
        self.facts[j].counts[i]
    }
}

pub(super) struct Judged {
    pub(super) verdict: Verdict,
    pub(super) reason: String,
    pub(super) items: Vec<EvidenceItem>,
}

fn judged(verdict: Verdict, reason: impl Into<String>, items: Vec<EvidenceItem>) -> Judged {
    Judged {
        verdict,
        reason: reason.into(),
        items,
    }
}

/// Whether a result counts toward the gate: the node ran the release under test
/// ([`StepResult::ran_on`]).
fn counts(result: &StepResult, release: &Release) -> bool {
    check_inventory(&release.components, &[], result.ran_on()).is_empty()
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

fn no_run_reason(evidence: &Evidence) -> String {
    format!(
        "no run of release {} at milestone {} yet; start one with `tollgate run start --release {} --plan PLAN --milestone {}`",
        evidence.release.id, evidence.milestone, evidence.release.id, evidence.milestone
    )
}

/// `a, b, c and 7 more` over at most [`NAMED_IN_REASON`] names.
fn name_some(names: impl Iterator<Item = String>, total: usize) -> String {
    let named: Vec<String> = names.take(NAMED_IN_REASON).collect();
    let more = total.saturating_sub(named.len());
    if more > 0 {
        format!("{} and {more} more", named.join(", "))
    } else {
        named.join(", ")
    }
}

// ---------------------------------------------------------------------------------------------
// One rule's state.

/// One rule kept up to date over the jobs of the evidence.
pub(super) struct RuleState {
    /// Per job: inside the rule's scope.
    in_scope: Vec<bool>,
    /// Per job: inside the scope and not ended.
    running: Vec<bool>,
    n_in_scope: usize,
    n_running: usize,
    kind: KindState,
}

enum KindState {
    Steps(Steps),
    Numeric(Numeric),
    Baseline(Baseline),
    Events(Events),
    Diag(Diag),
    Inventory(InventoryRule),
}

impl RuleState {
    /// A state with no job taken in yet.
    ///
    /// Jobs are taken in through [`RuleState::build_job`], job by job, and the build ends
    /// with [`RuleState::finish_build`]: the gate takes each job into every rule while the
    /// job's results are in the cache, instead of walking the whole evidence once per rule.
    pub(super) fn empty(rule: &Rule, ctx: &Ctx<'_>) -> Self {
        let n = ctx.slots.len();
        let kind = match &rule.kind {
            RuleKind::StepsPassed { plan, steps, .. } => {
                KindState::Steps(Steps::new(ctx, plan, steps, n))
            }
            RuleKind::Measurement { aggregate, .. } | RuleKind::Telemetry { aggregate, .. } => {
                KindState::Numeric(Numeric::new(*aggregate, n))
            }
            RuleKind::Baseline {
                measurement,
                step,
                aggregate,
                per,
                ..
            } => KindState::Baseline(Baseline::new(
                ctx,
                measurement,
                step.as_deref(),
                *aggregate,
                per,
                n,
            )),
            RuleKind::NoXid { .. } | RuleKind::NoEvents { .. } => KindState::Events(Events::new(n)),
            RuleKind::DcgmDiag { .. } => KindState::Diag(Diag::new(n)),
            RuleKind::InventoryMatchesRelease { .. } => KindState::Inventory(InventoryRule::new(n)),
        };
        Self {
            in_scope: vec![false; n],
            running: vec![false; n],
            n_in_scope: 0,
            n_running: 0,
            kind,
        }
    }

    /// Takes job `j` in while building.
    pub(super) fn build_job(&mut self, rule: &Rule, ctx: &Ctx<'_>, j: usize) {
        self.update(rule, ctx, j, true);
    }

    /// Ends the build, once every job was taken in.
    pub(super) fn finish_build(&mut self) {
        if let KindState::Numeric(numeric) = &mut self.kind {
            numeric.finish_build();
        }
    }

    /// Takes in the jobs of `range`, which `other` (built over the same evidence, starting
    /// empty) took in: how a gate built on several threads joins their work.
    pub(super) fn absorb(&mut self, mut other: RuleState, range: std::ops::Range<usize>) {
        for j in range.clone() {
            self.in_scope[j] = other.in_scope[j];
            self.running[j] = other.running[j];
        }
        self.n_in_scope += other.n_in_scope;
        self.n_running += other.n_running;
        match (&mut self.kind, &mut other.kind) {
            (KindState::Steps(a), KindState::Steps(b)) => {
                for j in range {
                    a.parts[j] = b.parts[j].take();
                }
                for (group, counts) in std::mem::take(&mut b.groups) {
                    let mine = a.groups.entry(group).or_default();
                    for (m, c) in mine.iter_mut().zip(counts) {
                        *m += c;
                    }
                }
                a.flagged.append(&mut b.flagged);
            }
            (KindState::Numeric(a), KindState::Numeric(b)) => {
                for j in range {
                    a.parts[j] = std::mem::take(&mut b.parts[j]);
                }
                a.pending.append(&mut b.pending);
                a.flagged.append(&mut b.flagged);
                a.silent.append(&mut b.silent);
                a.total += b.total;
            }
            (KindState::Baseline(a), KindState::Baseline(b)) => {
                for j in range {
                    a.parts[j] = b.parts[j].take();
                }
            }
            (KindState::Events(a), KindState::Events(b)) => {
                for j in range {
                    a.parts[j] = std::mem::take(&mut b.parts[j]);
                }
                a.flagged.append(&mut b.flagged);
                a.total += b.total;
            }
            (KindState::Diag(a), KindState::Diag(b)) => {
                for j in range {
                    a.parts[j] = std::mem::take(&mut b.parts[j]);
                }
                a.flagged.append(&mut b.flagged);
                a.n_failed += b.n_failed;
                a.n_missing += b.n_missing;
            }
            (KindState::Inventory(a), KindState::Inventory(b)) => {
                for j in range {
                    a.parts[j] = std::mem::take(&mut b.parts[j]);
                }
                a.flagged.append(&mut b.flagged);
                a.n_results += b.n_results;
            }
            _ => {}
        }
    }

    /// Recomputes job `j`'s part after it changed.
    pub(super) fn job_changed(&mut self, rule: &Rule, ctx: &Ctx<'_>, j: usize) {
        self.update(rule, ctx, j, false);
    }

    fn update(&mut self, rule: &Rule, ctx: &Ctx<'_>, j: usize, building: bool) {
        let job = ctx.job(j);
        let in_scope = rule.scope.matches(&job.labels);
        let running = in_scope && !job.state.is_terminal();
        self.n_in_scope = self.n_in_scope + usize::from(in_scope) - usize::from(self.in_scope[j]);
        self.n_running = self.n_running + usize::from(running) - usize::from(self.running[j]);
        self.in_scope[j] = in_scope;
        self.running[j] = running;
        match &mut self.kind {
            KindState::Steps(s) => s.update(&rule.kind, ctx, j, in_scope),
            KindState::Numeric(s) => s.update(&rule.kind, ctx, j, in_scope, building),
            KindState::Baseline(s) => s.update(ctx, j, in_scope),
            KindState::Events(s) => s.update(&rule.kind, ctx, j, in_scope),
            KindState::Diag(s) => s.update(&rule.kind, ctx, j, in_scope),
            KindState::Inventory(s) => s.update(&rule.kind, ctx, j, in_scope),
        }
    }

    /// The jobs in scope, in evidence order.
    fn scoped(&self) -> impl Iterator<Item = usize> + '_ {
        self.in_scope
            .iter()
            .enumerate()
            .filter_map(|(j, in_scope)| in_scope.then_some(j))
    }

    /// Decides the rule (without waivers).
    pub(super) fn decide(&self, rule: &Rule, ctx: &Ctx<'_>) -> RuleDecision {
        let evidence = ctx.evidence;
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
        } else if self.n_in_scope == 0 {
            judged(
                Verdict::Waiting,
                format!("no job ran on a node in scope {}", rule.scope),
                Vec::new(),
            )
        } else {
            self.judge(&rule.kind, ctx)
        };
        rule_decision(rule, judged)
    }

    fn judge(&self, kind: &RuleKind, ctx: &Ctx<'_>) -> Judged {
        match (&self.kind, kind) {
            (
                KindState::Steps(s),
                RuleKind::StepsPassed {
                    plan,
                    steps,
                    quorum,
                    per,
                    tolerance,
                },
            ) => s.judge(ctx, plan, steps, *quorum, per.as_deref(), *tolerance),
            (
                KindState::Numeric(s),
                RuleKind::Measurement {
                    name,
                    aggregate,
                    condition,
                    ..
                },
            ) => s.judge(
                self,
                kind,
                ctx,
                &format!("measurement {name}"),
                *aggregate,
                *condition,
            ),
            (
                KindState::Numeric(s),
                RuleKind::Telemetry {
                    field,
                    stat,
                    aggregate,
                    condition,
                    ..
                },
            ) => s.judge(
                self,
                kind,
                ctx,
                &format!("telemetry {field} ({stat} per GPU)"),
                *aggregate,
                *condition,
            ),
            (KindState::Baseline(s), RuleKind::Baseline { .. }) => s.judge(self, kind, ctx),
            (KindState::Events(s), _) => s.judge(self, kind, ctx),
            (
                KindState::Diag(s),
                RuleKind::DcgmDiag {
                    min_level, tests, ..
                },
            ) => s.judge(self, kind, ctx, *min_level, tests),
            (KindState::Inventory(s), RuleKind::InventoryMatchesRelease { components }) => {
                s.judge(self, kind, ctx, components)
            }
            _ => judged(
                Verdict::Error,
                "internal: the rule's state does not match its kind; rebuild the gate state",
                Vec::new(),
            ),
        }
    }

    /// Up to [`PASSING_SAMPLE`] passing items from the first jobs in scope.
    fn sample_ok(&self, mut items_of: impl FnMut(usize) -> Vec<EvidenceItem>) -> Vec<EvidenceItem> {
        let mut sample = Vec::new();
        for j in self.scoped() {
            sample.extend(items_of(j).into_iter().filter(|i| i.ok));
            if sample.len() >= PASSING_SAMPLE {
                sample.truncate(PASSING_SAMPLE);
                break;
            }
        }
        sample
    }
}

/// Turns a rule's judgement into its decision: failing nodes and failures grouped by
/// signature.
fn rule_decision(rule: &Rule, judged: Judged) -> RuleDecision {
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

// ---------------------------------------------------------------------------------------------
// steps-passed

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Passed,
    Failed,
    Errored,
    Inconclusive,
    Pending,
}

impl Class {
    fn slot(self) -> usize {
        self as usize
    }
}

struct StepsPart {
    class: Class,
    group: String,
    /// The item, for a node that did not pass.
    item: Option<EvidenceItem>,
}

struct Steps {
    /// The latest run of the plan.
    run: Option<usize>,
    /// The listed steps' indexes in that run's plan, or why they cannot be found.
    indexes: Result<Vec<(usize, String)>, String>,
    parts: Vec<Option<StepsPart>>,
    /// Per group: nodes per class.
    groups: BTreeMap<String, [usize; 5]>,
    /// Jobs whose node did not pass.
    flagged: BTreeSet<usize>,
}

impl Steps {
    fn new(ctx: &Ctx<'_>, plan: &str, steps: &[String], n: usize) -> Self {
        let run = ctx
            .evidence
            .runs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.plan_name == plan)
            .max_by_key(|(_, r)| r.created_at)
            .map(|(i, _)| i);
        let indexes = match run {
            None => Ok(Vec::new()),
            Some(run) => {
                let run = &ctx.evidence.runs[run];
                steps
                    .iter()
                    .map(|step| match run.plan_steps.iter().position(|s| s == step) {
                        Some(idx) => Ok((idx, step.clone())),
                        None => Err(format!(
                            "plan {plan} (version {}) has no step '{step}'; its steps are: {}",
                            &run.plan_version.0[..run.plan_version.0.len().min(12)],
                            run.plan_steps.join(", ")
                        )),
                    })
                    .collect()
            }
        };
        Self {
            run,
            indexes,
            parts: (0..n).map(|_| None).collect(),
            groups: BTreeMap::new(),
            flagged: BTreeSet::new(),
        }
    }

    fn update(&mut self, kind: &RuleKind, ctx: &Ctx<'_>, j: usize, in_scope: bool) {
        if let Some(old) = self.parts[j].take() {
            if let Some(counts) = self.groups.get_mut(&old.group) {
                counts[old.class.slot()] -= 1;
                if counts.iter().all(|c| *c == 0) {
                    self.groups.remove(&old.group);
                }
            }
            self.flagged.remove(&j);
        }
        let RuleKind::StepsPassed { per, .. } = kind else {
            return;
        };
        let (Some(run), Ok(indexes)) = (self.run, &self.indexes) else {
            return;
        };
        if !in_scope || ctx.slots[j].run != run {
            return;
        }
        let part = classify(ctx, j, indexes, per.as_deref());
        self.groups.entry(part.group.clone()).or_default()[part.class.slot()] += 1;
        if part.class != Class::Passed {
            self.flagged.insert(j);
        }
        self.parts[j] = Some(part);
    }

    fn judge(
        &self,
        ctx: &Ctx<'_>,
        plan: &str,
        steps: &[String],
        quorum: Quorum,
        per: Option<&str>,
        tolerance: Tolerance,
    ) -> Judged {
        let evidence = ctx.evidence;
        if self.run.is_none() {
            return judged(
                Verdict::Waiting,
                format!(
                    "no run of plan {plan} for release {} at milestone {} yet; start one with `tollgate run start --release {} --plan {plan} --milestone {}`",
                    evidence.release.id,
                    evidence.milestone,
                    evidence.release.id,
                    evidence.milestone
                ),
                Vec::new(),
            );
        }
        if let Err(reason) = &self.indexes {
            return judged(Verdict::Error, reason.clone(), Vec::new());
        }
        let total = |class: Class| {
            self.groups
                .values()
                .map(|counts| counts[class.slot()])
                .sum::<usize>()
        };
        let (n_failed, n_errored, n_inconclusive, n_pending) = (
            total(Class::Failed),
            total(Class::Errored),
            total(Class::Inconclusive),
            total(Class::Pending),
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
        for (group, counts) in &self.groups {
            let n: usize = counts.iter().sum();
            let required = quorum.required(n);
            let passed = counts[Class::Passed.slot()];
            let pending = counts[Class::Pending.slot()];
            let label = match per {
                Some(key) => format!("{key}={group}: "),
                None => String::new(),
            };
            described.push(format!(
                "{label}{passed} of {n} nodes passed, {required} required"
            ));
            if passed < required {
                if passed + pending >= required {
                    pending_could_help = true;
                } else {
                    // The head already gives each group's count; only say which fell short.
                    short.push(match per {
                        Some(key) => format!("{key}={group}"),
                        None => String::new(),
                    });
                }
            }
        }
        let head = format!(
            "[{}] of plan {plan}: {}",
            steps.join(", "),
            described.join("; ")
        );
        let mut items: Vec<EvidenceItem> = self
            .flagged
            .iter()
            .filter_map(|j| self.parts[*j].as_ref()?.item.clone())
            .collect();
        let failures: Vec<&EvidenceItem> = items
            .iter()
            .filter(|i| !i.ok && i.signature.is_some())
            .collect();
        let failure_text = if failures.is_empty() {
            String::new()
        } else {
            format!(
                "; failed: {}",
                name_some(
                    failures
                        .iter()
                        .map(|i| format!("{} ({})", i.node, i.detail)),
                    failures.len()
                )
            )
        };
        let passed_sample = self
            .parts
            .iter()
            .enumerate()
            .filter(|(_, part)| part.as_ref().is_some_and(|p| p.class == Class::Passed))
            .take(PASSING_SAMPLE)
            .map(|(j, _)| item(ctx.job(j), "every listed step passed", true));
        items.extend(passed_sample);
        if !over_limit.is_empty() || !short.is_empty() {
            let mut why = Vec::new();
            match (per, short.is_empty()) {
                (_, true) => {}
                (None, false) => why.push("too few nodes passed".to_owned()),
                (Some(_), false) => why.push(format!("too few passed in {}", short.join(", "))),
            }
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
}

/// Classifies one node: the first listed step that is not passed decides.
fn classify(ctx: &Ctx<'_>, j: usize, indexes: &[(usize, String)], per: Option<&str>) -> StepsPart {
    let job = ctx.job(j);
    let group = per
        .map(|key| {
            job.labels
                .get(key)
                .cloned()
                .unwrap_or_else(|| format!("(no {key})"))
        })
        .unwrap_or_default();
    for (idx, step) in indexes {
        let latest = ctx.facts[j].latest(*idx);
        let (class, detail, signature) = match latest.map(|i| (i, &job.results[i])) {
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
            Some((i, result)) if result.outcome == Outcome::Passed && ctx.counts(j, i) => {
                continue;
            }
            Some((_, result)) if result.outcome == Outcome::Passed => {
                let mismatch: Vec<String> =
                    check_inventory(&ctx.release().components, &[], result.ran_on())
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
            Some((_, result)) => {
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
                // A result with a failing test is grouped by that test, so the same test
                // failing on many nodes is one group whatever its message's numbers say.
                let signature = match result.sub_results.iter().find(|s| s.is_failing()) {
                    Some(sub) => format!("{step}: {}", sub.failure_signature()),
                    None => format!(
                        "{step}: {}: {}",
                        result.outcome,
                        error_class(&result.message)
                    ),
                };
                (
                    class,
                    format!(
                        "{step}: {} (attempt {}){why}",
                        result.outcome, result.attempt
                    ),
                    signature,
                )
            }
        };
        return StepsPart {
            class,
            group,
            item: Some(EvidenceItem {
                step: Some(step.clone()),
                signature: (class != Class::Pending).then_some(signature),
                ..item(job, detail, false)
            }),
        };
    }
    StepsPart {
        class: Class::Passed,
        group,
        item: None,
    }
}

// ---------------------------------------------------------------------------------------------
// measurement and telemetry

/// One value a numeric rule aggregates, and where it came from.
#[derive(Clone, Copy, Debug)]
struct Point {
    /// The result's index in its job.
    result: usize,
    /// The measurement's index in the result (measurement rules).
    measurement: usize,
    /// The GPU's index in the result's telemetry (telemetry rules).
    gpu: usize,
    value: f64,
}

/// Visits the values job `j` contributes to a measurement or telemetry rule.
fn points(kind: &RuleKind, ctx: &Ctx<'_>, j: usize, mut visit: impl FnMut(Point)) {
    match kind {
        RuleKind::Measurement { name, step, .. } => {
            measurement_points(ctx, j, name, step.as_deref(), visit);
        }
        RuleKind::Telemetry {
            field, step, stat, ..
        } => {
            let job = ctx.job(j);
            for (i, result) in job.results.iter().enumerate() {
                if step.as_ref().is_some_and(|s| s != &result.step_name) || !ctx.counts(j, i) {
                    continue;
                }
                for (g, gpu) in result.telemetry.iter().enumerate() {
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
                    visit(Point {
                        result: i,
                        measurement: 0,
                        gpu: g,
                        value,
                    });
                }
            }
        }
        _ => {}
    }
}

/// The GPUs of job `j` that took part in a step that passed on the release (`step` only,
/// when given) and are not in `reporting`.
fn silent_gpus(ctx: &Ctx<'_>, j: usize, step: Option<&str>, reporting: &[u32]) -> Vec<u32> {
    let mut silent: Vec<u32> = Vec::new();
    for (i, result) in ctx.job(j).results.iter().enumerate() {
        if result.outcome != Outcome::Passed
            || step.is_some_and(|s| s != result.step_name)
            || !ctx.counts(j, i)
        {
            continue;
        }
        for gpu in &result.inventory.gpus {
            if !reporting.contains(&gpu.index) && !silent.contains(&gpu.index) {
                silent.push(gpu.index);
            }
        }
    }
    silent.sort_unstable();
    silent
}

/// The values of measurement `name` in the latest attempt of each step of job `j` that passed
/// or failed on the release under test.
fn measurement_points(
    ctx: &Ctx<'_>,
    j: usize,
    name: &str,
    step: Option<&str>,
    mut visit: impl FnMut(Point),
) {
    for (i, result) in ctx.latest_results(j) {
        let relevant = step.is_none_or(|s| s == result.step_name)
            && matches!(result.outcome, Outcome::Passed | Outcome::Failed)
            && ctx.counts(j, i);
        if !relevant {
            continue;
        }
        for (m, measurement) in result.measurements.iter().enumerate() {
            if measurement.name == name {
                visit(Point {
                    result: i,
                    measurement: m,
                    gpu: 0,
                    value: measurement.value,
                });
            }
        }
    }
}

/// The evidence item of one value of a measurement or telemetry rule.
fn point_item(kind: &RuleKind, ctx: &Ctx<'_>, j: usize, point: Point) -> EvidenceItem {
    let job = ctx.job(j);
    let result = &job.results[point.result];
    let value = point.value;
    match kind {
        RuleKind::Telemetry {
            field,
            stat,
            condition,
            ..
        } => {
            let gpu = &result.telemetry[point.gpu];
            let ok = condition.holds(value);
            EvidenceItem {
                step: Some(result.step_name.clone()),
                attempt: Some(result.attempt),
                gpu_index: Some(gpu.gpu_index),
                value: Some(value),
                limit: Some(condition.to_string()),
                signature: (!ok)
                    .then(|| format!("{field} {stat} breaks {condition} in {}", result.step_name)),
                ..item(
                    job,
                    format!("GPU {} {field} {stat} = {value}", gpu.gpu_index),
                    ok,
                )
            }
        }
        RuleKind::Measurement {
            name, condition, ..
        } => {
            let ok = condition.holds(value);
            EvidenceItem {
                limit: Some(condition.to_string()),
                signature: (!ok)
                    .then(|| format!("{name} breaks {condition} in {}", result.step_name)),
                ..measurement_item(job, result, point, name, ok)
            }
        }
        RuleKind::Baseline { measurement, .. } => {
            measurement_item(job, result, point, measurement, true)
        }
        _ => item(job, format!("{value}"), true),
    }
}

fn measurement_item(
    job: &JobEvidence,
    result: &StepResult,
    point: Point,
    name: &str,
    ok: bool,
) -> EvidenceItem {
    let unit = result.measurements[point.measurement]
        .unit
        .as_deref()
        .map(|u| format!(" {u}"))
        .unwrap_or_default();
    EvidenceItem {
        step: Some(result.step_name.clone()),
        attempt: Some(result.attempt),
        value: Some(point.value),
        ..item(job, format!("{name} = {}{unit}", point.value), ok)
    }
}

/// One job's values for a numeric rule.
#[derive(Default)]
struct NumPart {
    /// How many values.
    count: usize,
    /// The values themselves, kept only for a percentile (to take them out of the order
    /// statistics when the job changes).
    values: Vec<f64>,
    sum: f64,
    min: Option<Point>,
    max: Option<Point>,
    /// Items of the values that break the rule's condition on their own.
    offenders: Vec<EvidenceItem>,
    /// Telemetry rules: GPUs of the node that took part in a passed step on the release but
    /// never reported the field (not sampled, or not supported).
    silent_gpus: Vec<u32>,
}

struct Numeric {
    parts: Vec<NumPart>,
    /// Every value, sorted, when the aggregate is a percentile.
    order: Option<OrderStats>,
    /// While building: every value, sorted once at the end.
    pending: Vec<f64>,
    /// Jobs with offenders.
    flagged: BTreeSet<usize>,
    /// Jobs with GPUs that reported no value.
    silent: BTreeSet<usize>,
    total: usize,
}

fn percentile_of(aggregate: Aggregate) -> Option<f64> {
    match aggregate {
        Aggregate::P5 => Some(0.05),
        Aggregate::P50 => Some(0.50),
        Aggregate::P95 => Some(0.95),
        Aggregate::P99 => Some(0.99),
        Aggregate::Min | Aggregate::Max | Aggregate::Mean | Aggregate::Count => None,
    }
}

impl Numeric {
    fn new(aggregate: Aggregate, n: usize) -> Self {
        Self {
            parts: (0..n).map(|_| NumPart::default()).collect(),
            order: percentile_of(aggregate).map(|_| OrderStats::default()),
            pending: Vec::new(),
            flagged: BTreeSet::new(),
            silent: BTreeSet::new(),
            total: 0,
        }
    }

    fn finish_build(&mut self) {
        if self.order.is_some() {
            self.order = Some(OrderStats::from_values(std::mem::take(&mut self.pending)));
        }
    }

    fn update(&mut self, kind: &RuleKind, ctx: &Ctx<'_>, j: usize, in_scope: bool, building: bool) {
        let old = std::mem::take(&mut self.parts[j]);
        self.total -= old.count;
        if let Some(order) = &mut self.order {
            for value in &old.values {
                order.remove(*value);
            }
        }
        self.flagged.remove(&j);
        self.silent.remove(&j);
        if !in_scope {
            return;
        }
        let (condition, judges_values) = match kind {
            RuleKind::Measurement {
                condition,
                aggregate,
                ..
            }
            | RuleKind::Telemetry {
                condition,
                aggregate,
                ..
            } => (*condition, *aggregate != Aggregate::Count),
            _ => return,
        };
        let mut part = NumPart::default();
        let keep = self.order.is_some();
        let mut reporting: Vec<u32> = Vec::new();
        points(kind, ctx, j, |point| {
            if let RuleKind::Telemetry { .. } = kind {
                let gpu = ctx.job(j).results[point.result].telemetry[point.gpu].gpu_index;
                if !reporting.contains(&gpu) {
                    reporting.push(gpu);
                }
            }
            part.count += 1;
            if keep {
                part.values.push(point.value);
            }
            part.sum += point.value;
            if part.min.is_none_or(|m| point.value < m.value) {
                part.min = Some(point);
            }
            if part.max.is_none_or(|m| point.value > m.value) {
                part.max = Some(point);
            }
            // A count's limit is on how many values there are: no single value can break it.
            if judges_values && !condition.holds(point.value) {
                part.offenders.push(point_item(kind, ctx, j, point));
            }
        });
        self.total += part.count;
        if let Some(order) = &mut self.order {
            if building {
                self.pending.extend_from_slice(&part.values);
            } else {
                for value in &part.values {
                    order.insert(*value);
                }
            }
        }
        if !part.offenders.is_empty() {
            self.flagged.insert(j);
        }
        if let RuleKind::Telemetry { step, .. } = kind {
            part.silent_gpus = silent_gpus(ctx, j, step.as_deref(), &reporting);
            if !part.silent_gpus.is_empty() {
                self.silent.insert(j);
            }
        }
        self.parts[j] = part;
    }

    /// `node (GPU 0, 1)` for the first nodes with GPUs that reported nothing.
    fn describe_silent(&self, ctx: &Ctx<'_>, field: &str) -> String {
        let nodes = self.silent.iter().map(|j| {
            let gpus: Vec<String> = self.parts[*j]
                .silent_gpus
                .iter()
                .map(u32::to_string)
                .collect();
            format!("{} (GPU {})", ctx.job(*j).node, gpus.join(", "))
        });
        format!(
            "no {field} value from {}; a GPU without a value never passes (if it cannot report the field, scope the rule to nodes that can)",
            name_some(nodes, self.silent.len())
        )
    }

    fn aggregate(&self, aggregate: Aggregate) -> f64 {
        let parts = self.parts.iter().filter(|p| p.count > 0);
        match aggregate {
            Aggregate::Min => parts
                .filter_map(|p| p.min)
                .map(|p| p.value)
                .fold(f64::INFINITY, f64::min),
            Aggregate::Max => parts
                .filter_map(|p| p.max)
                .map(|p| p.value)
                .fold(f64::NEG_INFINITY, f64::max),
            Aggregate::Mean => parts.map(|p| p.sum).sum::<f64>() / self.total as f64,
            Aggregate::Count => self.total as f64,
            percentile => {
                let p = percentile_of(percentile).unwrap_or(0.5);
                self.order
                    .as_ref()
                    .and_then(|order| order.percentile(p))
                    .unwrap_or(f64::NAN)
            }
        }
    }

    /// The items of the smallest and the largest value.
    fn extremes(&self, kind: &RuleKind, ctx: &Ctx<'_>) -> Vec<EvidenceItem> {
        let pick = |better: fn(f64, f64) -> bool, of: fn(&NumPart) -> Option<Point>| {
            self.parts
                .iter()
                .enumerate()
                .filter_map(|(j, p)| Some((j, of(p)?)))
                .fold(None::<(usize, Point)>, |best, (j, p)| match best {
                    Some((_, b)) if !better(p.value, b.value) => best,
                    _ => Some((j, p)),
                })
        };
        let mut items = Vec::new();
        for (j, point) in [pick(|a, b| a < b, |p| p.min), pick(|a, b| a > b, |p| p.max)]
            .into_iter()
            .flatten()
        {
            let item = point_item(kind, ctx, j, point);
            if !items.contains(&item) {
                items.push(item);
            }
        }
        items
    }

    /// Judges a numeric rule: aggregate the values, compare, name the nodes whose own values
    /// break the condition. While jobs run, only a violation more values cannot repair fails
    /// early (a minimum already too low, a maximum already too high).
    fn judge(
        &self,
        rule: &RuleState,
        kind: &RuleKind,
        ctx: &Ctx<'_>,
        what: &str,
        aggregate: Aggregate,
        condition: Condition,
    ) -> Judged {
        let running = rule.n_running;
        if self.total == 0 {
            let reason = if running > 0 {
                format!("no {what} yet; {running} job(s) still running")
            } else {
                format!(
                    "no result on the release under test reports {what}; the gate waits for a run that does"
                )
            };
            return judged(Verdict::Waiting, reason, Vec::new());
        }
        let value = self.aggregate(aggregate);
        let holds = condition.holds(value);
        let base = format!(
            "{aggregate} of {what} is {value} over {} value(s), limit {condition}",
            self.total
        );
        let settled = matches!(
            (aggregate, condition.op),
            (Aggregate::Min, Comparison::Ge | Comparison::Gt)
                | (Aggregate::Max, Comparison::Le | Comparison::Lt)
        );
        let mut items: Vec<EvidenceItem> = Vec::new();
        for j in &self.flagged {
            items.extend(self.parts[*j].offenders.iter().cloned());
        }
        let n_offenders = items.len();
        if !holds && (running == 0 || settled) {
            let reason = if aggregate == Aggregate::Count {
                format!("{base}; the limit is on how many values were reported")
            } else {
                format!("{base}; {}", describe_offenders(&items))
            };
            items.extend(self.sample(rule, kind, ctx, &items));
            return judged(Verdict::Failed, reason, items);
        }
        if holds {
            // The aggregate is what the rule judges; single values beyond the limit do not fail
            // it (a mean or a percentile may allow them), so they are shown but not flagged.
            items.truncate(PASSING_SAMPLE);
            for item in &mut items {
                item.ok = true;
                item.signature = None;
            }
        }
        items.extend(self.sample(rule, kind, ctx, &items));
        let beyond = if holds && n_offenders > 0 {
            format!("; {n_offenders} single value(s) beyond the limit, allowed by the {aggregate}")
        } else {
            String::new()
        };
        if running > 0 {
            return judged(
                Verdict::Waiting,
                format!("{base} so far{beyond}; {running} job(s) still running"),
                items,
            );
        }
        if let (false, RuleKind::Telemetry { field, .. }) = (self.silent.is_empty(), kind) {
            return judged(
                Verdict::Waiting,
                format!(
                    "{base}{beyond}; {}",
                    self.describe_silent(ctx, &field.to_string())
                ),
                items,
            );
        }
        judged(Verdict::Passed, format!("{base}{beyond}"), items)
    }

    /// The extremes and a few passing values, without repeating `shown`.
    fn sample(
        &self,
        rule: &RuleState,
        kind: &RuleKind,
        ctx: &Ctx<'_>,
        shown: &[EvidenceItem],
    ) -> Vec<EvidenceItem> {
        let mut sample = self.extremes(kind, ctx);
        sample.extend(rule.sample_ok(|j| {
            let mut items = Vec::new();
            points(kind, ctx, j, |point| {
                if items.len() < PASSING_SAMPLE {
                    items.push(point_item(kind, ctx, j, point));
                }
            });
            items
        }));
        let mut unique: Vec<EvidenceItem> = Vec::new();
        for item in sample {
            if item.ok && !shown.contains(&item) && !unique.contains(&item) {
                unique.push(item);
            }
        }
        unique.truncate(PASSING_SAMPLE + 2);
        unique
    }
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

// ---------------------------------------------------------------------------------------------
// baseline

struct BasePart {
    group: String,
    points: Vec<Point>,
}

struct Baseline {
    parts: Vec<Option<BasePart>>,
    /// The baseline release and its aggregate per group, when there is one.
    before: Option<(ReleaseId, BTreeMap<String, f64>)>,
    measurement: String,
    step: Option<String>,
    per: String,
}

fn group_of(job: &JobEvidence, per: &str) -> String {
    job.labels
        .get(per)
        .cloned()
        .unwrap_or_else(|| format!("(no {per})"))
}

impl Baseline {
    fn new(
        ctx: &Ctx<'_>,
        measurement: &str,
        step: Option<&str>,
        aggregate: Aggregate,
        per: &str,
        n: usize,
    ) -> Self {
        let before = ctx.evidence.baseline.as_deref().map(|base| {
            let slots = slots(base);
            let facts: Vec<JobFacts> = slots
                .iter()
                .map(|s| JobFacts::new(&base.runs[s.run].jobs[s.job], &base.release))
                .collect();
            let base_ctx = Ctx {
                evidence: base,
                slots: &slots,
                facts: &facts,
            };
            let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for j in 0..slots.len() {
                let group = group_of(base_ctx.job(j), per);
                measurement_points(&base_ctx, j, measurement, step, |p| {
                    values.entry(group.clone()).or_default().push(p.value);
                });
            }
            let aggregated = values
                .into_iter()
                .map(|(group, values)| (group, aggregate.apply(&values)))
                .collect();
            (base.release.id.clone(), aggregated)
        });
        Self {
            parts: (0..n).map(|_| None).collect(),
            before,
            measurement: measurement.to_owned(),
            step: step.map(str::to_owned),
            per: per.to_owned(),
        }
    }

    fn update(&mut self, ctx: &Ctx<'_>, j: usize, in_scope: bool) {
        self.parts[j] = None;
        if !in_scope {
            return;
        }
        let mut points = Vec::new();
        measurement_points(ctx, j, &self.measurement, self.step.as_deref(), |p| {
            points.push(p);
        });
        if !points.is_empty() {
            self.parts[j] = Some(BasePart {
                group: group_of(ctx.job(j), &self.per),
                points,
            });
        }
    }

    fn judge(&self, rule: &RuleState, kind: &RuleKind, ctx: &Ctx<'_>) -> Judged {
        let RuleKind::Baseline {
            measurement,
            aggregate,
            max_regression_pct: max_pct,
            direction,
            per,
            ..
        } = kind
        else {
            return judged(Verdict::Error, "internal: not a baseline rule", Vec::new());
        };
        let (aggregate, max_pct, direction) = (*aggregate, *max_pct, *direction);
        let sample = || {
            rule.sample_ok(|j| {
                self.parts[j]
                    .iter()
                    .flat_map(|p| p.points.iter())
                    .map(|point| point_item(kind, ctx, j, *point))
                    .collect()
            })
        };
        if self.parts.iter().all(Option::is_none) {
            return judged(
                Verdict::Waiting,
                format!(
                    "no measurement {measurement} on the release under test yet; {} job(s) still running",
                    rule.n_running
                ),
                Vec::new(),
            );
        }
        let Some((base_release, base)) = &self.before else {
            return judged(
                Verdict::Passed,
                format!(
                    "no earlier release was promoted past {}; nothing to compare {measurement} with",
                    ctx.evidence.milestone
                ),
                sample(),
            );
        };
        let mut current: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for part in self.parts.iter().flatten() {
            current
                .entry(part.group.as_str())
                .or_default()
                .extend(part.points.iter().map(|p| p.value));
        }
        let mut regressions: Vec<(String, f64)> = Vec::new();
        let mut deltas = Vec::new();
        for (group, values) in &current {
            let now = aggregate.apply(values);
            let Some(before) = base.get(*group).copied() else {
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
                regressions.push(((*group).to_owned(), regression));
            }
        }
        let head = format!(
            "{aggregate} {measurement} against {base_release} ({direction}): {}",
            deltas.join("; ")
        );
        if regressions.is_empty() {
            if rule.n_running > 0 {
                return judged(Verdict::Waiting, format!("{head} so far"), sample());
            }
            return judged(Verdict::Passed, head, sample());
        }
        let mut items = Vec::new();
        for (j, part) in self.parts.iter().enumerate() {
            let Some(part) = part else { continue };
            let Some((_, pct)) = regressions.iter().find(|(g, _)| *g == part.group) else {
                continue;
            };
            for point in &part.points {
                items.push(EvidenceItem {
                    ok: false,
                    limit: Some(format!("at most {max_pct}% regression")),
                    signature: Some(format!(
                        "{measurement} regressed {pct:.1}% on {per}={}",
                        part.group
                    )),
                    ..point_item(kind, ctx, j, *point)
                });
            }
        }
        items.extend(rule.sample_ok(|j| {
            match &self.parts[j] {
                Some(part) if !regressions.iter().any(|(g, _)| *g == part.group) => part
                    .points
                    .iter()
                    .map(|point| point_item(kind, ctx, j, *point))
                    .collect(),
                _ => Vec::new(),
            }
        }));
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
}

// ---------------------------------------------------------------------------------------------
// no-xid and no-events

/// What a `no-xid` or `no-events` rule watches.
struct Watch<'a> {
    kind: &'a RuleKind,
}

impl Watch<'_> {
    fn event(&self, kind: EventKind, code: i64) -> bool {
        match self.kind {
            RuleKind::NoXid { codes } => {
                kind == EventKind::Xid && (codes.is_empty() || codes.contains(&code))
            }
            RuleKind::NoEvents {
                xid,
                ecc_uncorrected,
                gpu_lost,
                ..
            } => match kind {
                EventKind::Xid => xid.is_empty() || xid.contains(&code),
                EventKind::EccUncorrected => *ecc_uncorrected,
                EventKind::GpuLost => *gpu_lost,
            },
            _ => false,
        }
    }

    fn ecc_counter(&self) -> bool {
        matches!(
            self.kind,
            RuleKind::NoEvents {
                ecc_uncorrected: true,
                ..
            }
        )
    }

    fn row_remap(&self) -> bool {
        matches!(
            self.kind,
            RuleKind::NoEvents {
                row_remap_failure: true,
                ..
            }
        )
    }

    fn what(&self) -> String {
        match self.kind {
            RuleKind::NoXid { codes } => format!("XID ({})", describe_codes(codes)),
            RuleKind::NoEvents {
                xid,
                ecc_uncorrected,
                row_remap_failure,
                gpu_lost,
            } => format!(
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
            ),
            _ => String::new(),
        }
    }
}

/// The events of job `j` a `no-xid` or `no-events` rule counts, as failing items.
fn event_items(kind: &RuleKind, ctx: &Ctx<'_>, j: usize) -> Vec<EvidenceItem> {
    let watch = Watch { kind };
    let job = ctx.job(j);
    let mut items = Vec::new();
    for result in &job.results {
        for event in result.events.iter().filter(|e| watch.event(e.kind, e.code)) {
            let (label, signature) = match event.kind {
                EventKind::Xid => (format!("XID {}", event.code), format!("XID {}", event.code)),
                EventKind::EccUncorrected => (
                    format!("{} uncorrected ECC error(s)", event.code),
                    "uncorrected ECC".to_owned(),
                ),
                EventKind::GpuLost => ("GPU lost".to_owned(), "GPU lost".to_owned()),
            };
            items.push(EvidenceItem {
                step: Some(result.step_name.clone()),
                attempt: Some(result.attempt),
                gpu_index: Some(event.gpu_index),
                value: Some(event.code as f64),
                limit: Some(watch.what()),
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
            if watch.ecc_counter() && !has_ecc_event && rising(Field::EccUncorrectedVolatile) {
                let delta = gpu
                    .field(Field::EccUncorrectedVolatile)
                    .map(|s| s.max - s.min);
                flag("uncorrected ECC", delta);
            }
            if watch.row_remap() && set(Field::RowRemapFailure) {
                flag("row remap failure", Some(1.0));
            }
        }
    }
    items
}

struct Events {
    parts: Vec<Vec<EvidenceItem>>,
    flagged: BTreeSet<usize>,
    total: usize,
}

impl Events {
    fn new(n: usize) -> Self {
        Self {
            parts: vec![Vec::new(); n],
            flagged: BTreeSet::new(),
            total: 0,
        }
    }

    fn update(&mut self, kind: &RuleKind, ctx: &Ctx<'_>, j: usize, in_scope: bool) {
        self.total -= self.parts[j].len();
        self.parts[j] = if in_scope {
            event_items(kind, ctx, j)
        } else {
            Vec::new()
        };
        self.total += self.parts[j].len();
        if self.parts[j].is_empty() {
            self.flagged.remove(&j);
        } else {
            self.flagged.insert(j);
        }
    }

    fn judge(&self, rule: &RuleState, kind: &RuleKind, ctx: &Ctx<'_>) -> Judged {
        let what = Watch { kind }.what();
        if self.total > 0 {
            let mut per_node: BTreeMap<&NodeId, usize> = BTreeMap::new();
            let mut items = Vec::with_capacity(self.total);
            for j in &self.flagged {
                *per_node.entry(&ctx.job(*j).node).or_default() += self.parts[*j].len();
                items.extend(self.parts[*j].iter().cloned());
            }
            let counts = name_some(
                per_node.iter().map(|(node, n)| format!("{node}: {n}")),
                per_node.len(),
            );
            let kinds: BTreeSet<&str> = items
                .iter()
                .filter_map(|i| i.signature.as_deref())
                .collect();
            let kinds: Vec<&str> = kinds.into_iter().collect();
            return judged(
                Verdict::Failed,
                format!(
                    "{} event(s) ({}) on {} node(s) — {counts}",
                    self.total,
                    kinds.join(", "),
                    per_node.len(),
                ),
                items,
            );
        }
        if rule.n_running > 0 {
            return judged(
                Verdict::Waiting,
                format!("no {what} so far; {} job(s) still running", rule.n_running),
                Vec::new(),
            );
        }
        let checked = rule.sample_ok(|j| vec![item(ctx.job(j), "no event", true)]);
        judged(
            Verdict::Passed,
            format!("no {what} on any of {} node(s)", rule.n_in_scope),
            checked,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// dcgm-diag

#[derive(Default)]
struct DiagPart {
    /// Items of failed, missing or skipped tests.
    bad: Vec<EvidenceItem>,
    n_failed: usize,
    n_missing: usize,
}

struct Diag {
    parts: Vec<DiagPart>,
    flagged: BTreeSet<usize>,
    n_failed: usize,
    n_missing: usize,
}

/// Job `j`'s dcgm-diag items (the passing ones only when `with_ok`), and how many required
/// results failed and how many are missing.
fn diag_items(kind: &RuleKind, ctx: &Ctx<'_>, j: usize, with_ok: bool) -> DiagPart {
    let RuleKind::DcgmDiag {
        min_level,
        tests,
        step,
    } = kind
    else {
        return DiagPart::default();
    };
    let min_level = *min_level;
    let job = ctx.job(j);
    let mut part = DiagPart::default();
    let diag = ctx
        .latest_results(j)
        .filter(|(i, r)| step.as_ref().is_none_or(|s| s == &r.step_name) && ctx.counts(j, *i))
        .filter(|(_, r)| {
            r.sub_results
                .iter()
                .any(|s| s.source == "dcgm-diag" && s.level.is_some_and(|l| l >= min_level))
        })
        .last();
    let Some((_, result)) = diag else {
        part.n_missing += 1;
        let detail = if job.state.is_terminal() {
            format!("no dcgm-diag result at level {min_level} or higher")
        } else {
            format!("no dcgm-diag result yet (job {})", job.state)
        };
        part.bad.push(EvidenceItem {
            limit: Some(format!("level >= {min_level}")),
            ..item(job, detail, false)
        });
        return part;
    };
    for test in tests {
        for gpu in result.inventory.gpus.iter().map(|g| g.index) {
            let sub = result
                .sub_results
                .iter()
                .find(|s| s.source == "dcgm-diag" && &s.name == test && s.gpu_index == Some(gpu));
            let (ok, detail, signature) = match sub {
                Some(s) if s.outcome == Outcome::Passed => {
                    if !with_ok {
                        continue;
                    }
                    (true, format!("{test} passed on GPU {gpu}"), None)
                }
                Some(s) if s.outcome == Outcome::Failed || s.outcome == Outcome::Error => {
                    part.n_failed += 1;
                    (
                        false,
                        format!("{test} {} on GPU {gpu}: {}", s.outcome, s.message),
                        Some(format!("dcgm-diag {test}: {}", s.outcome)),
                    )
                }
                Some(_) => {
                    part.n_missing += 1;
                    (
                        false,
                        format!("{test} was skipped on GPU {gpu} (counts as missing)"),
                        None,
                    )
                }
                None => {
                    part.n_missing += 1;
                    (
                        false,
                        format!("{test} did not report GPU {gpu} (missing)"),
                        None,
                    )
                }
            };
            part.bad.push(EvidenceItem {
                step: Some(result.step_name.clone()),
                attempt: Some(result.attempt),
                gpu_index: Some(gpu),
                limit: Some("passed".into()),
                signature,
                ..item(job, detail, ok)
            });
        }
    }
    part
}

impl Diag {
    fn new(n: usize) -> Self {
        Self {
            parts: (0..n).map(|_| DiagPart::default()).collect(),
            flagged: BTreeSet::new(),
            n_failed: 0,
            n_missing: 0,
        }
    }

    fn update(&mut self, kind: &RuleKind, ctx: &Ctx<'_>, j: usize, in_scope: bool) {
        let old = std::mem::take(&mut self.parts[j]);
        self.n_failed -= old.n_failed;
        self.n_missing -= old.n_missing;
        self.flagged.remove(&j);
        if !in_scope {
            return;
        }
        let part = diag_items(kind, ctx, j, false);
        self.n_failed += part.n_failed;
        self.n_missing += part.n_missing;
        if !part.bad.is_empty() {
            self.flagged.insert(j);
        }
        self.parts[j] = part;
    }

    fn judge(
        &self,
        rule: &RuleState,
        kind: &RuleKind,
        ctx: &Ctx<'_>,
        min_level: u8,
        tests: &[String],
    ) -> Judged {
        let mut items: Vec<EvidenceItem> = self
            .flagged
            .iter()
            .flat_map(|j| self.parts[*j].bad.iter().cloned())
            .collect();
        let sample = || rule.sample_ok(|j| diag_items(kind, ctx, j, true).bad);
        if self.n_failed > 0 {
            // Missing entries are not failures; only the failed ones are flagged for grouping.
            for item in &mut items {
                if item.signature.is_none() && !item.ok {
                    item.ok = true;
                    item.detail = format!("{} — not counted as a failure", item.detail);
                }
            }
            items.extend(sample());
            return judged(
                Verdict::Failed,
                format!(
                    "{} required dcgm-diag test result(s) failed ({})",
                    self.n_failed,
                    tests.join(", ")
                ),
                items,
            );
        }
        items.extend(sample());
        if self.n_missing > 0 {
            return judged(
                Verdict::Waiting,
                format!(
                    "{} required dcgm-diag result(s) at level {min_level}+ missing or skipped; a skipped test never passes",
                    self.n_missing
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
}

// ---------------------------------------------------------------------------------------------
// inventory-matches-release

#[derive(Default)]
struct InventoryPart {
    n_results: usize,
    /// The item of a node that did not run the release.
    bad: Option<EvidenceItem>,
}

struct InventoryRule {
    parts: Vec<InventoryPart>,
    flagged: BTreeSet<usize>,
    n_results: usize,
}

/// Job `j`'s inventory item: `None` when it has no result yet.
fn inventory_item(ctx: &Ctx<'_>, j: usize, components: &[String]) -> Option<EvidenceItem> {
    let job = ctx.job(j);
    if job.results.is_empty() {
        return None;
    }
    let release = ctx.release();
    let mut problems: Vec<String> = Vec::new();
    for (i, result) in job.results.iter().enumerate() {
        if components.is_empty() && ctx.counts(j, i) {
            continue;
        }
        for mismatch in check_inventory(&release.components, components, result.ran_on()) {
            let text = mismatch.to_string();
            if !problems.contains(&text) {
                problems.push(text);
            }
        }
    }
    let ok = problems.is_empty();
    Some(EvidenceItem {
        limit: Some(describe_components(release, components)),
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
    })
}

impl InventoryRule {
    fn new(n: usize) -> Self {
        Self {
            parts: (0..n).map(|_| InventoryPart::default()).collect(),
            flagged: BTreeSet::new(),
            n_results: 0,
        }
    }

    fn update(&mut self, kind: &RuleKind, ctx: &Ctx<'_>, j: usize, in_scope: bool) {
        let old = std::mem::take(&mut self.parts[j]);
        self.n_results -= old.n_results;
        self.flagged.remove(&j);
        let RuleKind::InventoryMatchesRelease { components } = kind else {
            return;
        };
        if !in_scope {
            return;
        }
        let part = InventoryPart {
            n_results: ctx.job(j).results.len(),
            bad: inventory_item(ctx, j, components).filter(|i| !i.ok),
        };
        self.n_results += part.n_results;
        if part.bad.is_some() {
            self.flagged.insert(j);
        }
        self.parts[j] = part;
    }

    fn judge(
        &self,
        rule: &RuleState,
        _kind: &RuleKind,
        ctx: &Ctx<'_>,
        components: &[String],
    ) -> Judged {
        let release = ctx.release();
        let mut items: Vec<EvidenceItem> = self
            .flagged
            .iter()
            .filter_map(|j| self.parts[*j].bad.clone())
            .collect();
        let n_failing = items.len();
        let sample = rule.sample_ok(|j| inventory_item(ctx, j, components).into_iter().collect());
        if let Some(first) = items.first() {
            let reason = format!(
                "{n_failing} node(s) did not run release {}: {}: {}",
                release.id, first.node, first.detail
            );
            items.extend(sample);
            return judged(Verdict::Failed, reason, items);
        }
        items.extend(sample);
        let running = rule.n_running;
        if running > 0 || self.n_results == 0 {
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
                release.id,
                describe_components(release, components)
            ),
            items,
        )
    }
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
