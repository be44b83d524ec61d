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
//! Each kind lives in its own file and implements [`Kind`]: it is built from its rule's
//! settings once ([`RuleState::new`] is the one place that builds from a [`RuleKind`];
//! [`summary_fields`] says which telemetry summaries each reads), computes a job's part, adds
//! and removes parts from its totals, and judges. `measurement` and `telemetry` share the
//! numeric machinery of `numeric.rs`; `no-xid` and `no-events` are both `events.rs`, which
//! differ only in what they watch.
//!
//! Grouping failures and applying waivers happen in [`super::GateState::decide`].

mod baseline;
mod dcgm_diag;
mod events;
mod inventory;
mod measurement;
mod no_regression;
mod numeric;
mod steps_passed;
mod telemetry;

use super::*;
use crate::release::check_inventory;

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

/// Adds to `fields` the telemetry summary fields a rule of `kind` reads of each result:
/// `telemetry.rs` reads its field, `events.rs` (`counter_items`) the uncorrected-ECC counter and
/// the row-remap flag when `no-events` watches them; no other kind reads summaries. Evidence kept
/// for a gate holds only these ([`super::ResultReads`], which also says what else of a result
/// rules read), so a kind that starts reading another field must say so here.
pub(super) fn summary_fields(kind: &RuleKind, fields: &mut Vec<Field>) {
    match kind {
        RuleKind::Telemetry { field, .. } => fields.push(*field),
        RuleKind::NoEvents {
            ecc_uncorrected,
            row_remap_failure,
            ..
        } => {
            if *ecc_uncorrected {
                fields.push(Field::EccUncorrectedVolatile);
            }
            if *row_remap_failure {
                fields.push(Field::RowRemapFailure);
            }
        }
        RuleKind::StepsPassed { .. }
        | RuleKind::Measurement { .. }
        | RuleKind::Baseline { .. }
        | RuleKind::NoRegression { .. }
        | RuleKind::NoXid { .. }
        | RuleKind::DcgmDiag { .. }
        | RuleKind::InventoryMatchesRelease { .. } => {}
    }
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

/// Calls `f` with a context over a whole other evidence set (the baseline release's), its
/// facts computed against that evidence's own release.
fn with_evidence<R>(evidence: &Evidence, f: impl FnOnce(&Ctx<'_>) -> R) -> R {
    let slots = slots(evidence);
    let facts: Vec<JobFacts> = slots
        .iter()
        .map(|s| JobFacts::new(&evidence.runs[s.run].jobs[s.job], &evidence.release))
        .collect();
    f(&Ctx {
        evidence,
        slots: &slots,
        facts: &facts,
        first: 0,
    })
}

/// The evidence and the per-job facts, as rules read them.
#[derive(Clone, Copy)]
pub(super) struct Ctx<'a> {
    pub(super) evidence: &'a Evidence,
    pub(super) slots: &'a [Slot],
    /// The facts of jobs `first..first + facts.len()`: all of them, or while building on
    /// several threads, the share of one thread.
    pub(super) facts: &'a [JobFacts],
    pub(super) first: usize,
}

impl<'a> Ctx<'a> {
    fn job(&self, j: usize) -> &'a JobEvidence {
        let slot = self.slots[j];
        &self.evidence.runs[slot.run].jobs[slot.job]
    }

    fn release(&self) -> &'a Release {
        &self.evidence.release
    }

    fn facts(&self, j: usize) -> &'a JobFacts {
        &self.facts[j - self.first]
    }

    /// The latest attempt of every step of job `j`, by step index, with the result's index.
    fn latest_results(&self, j: usize) -> impl Iterator<Item = (usize, &'a StepResult)> + 'a {
        let job = self.job(j);
        self.facts(j)
            .latest
            .iter()
            .map(move |(_, i)| (*i, &job.results[*i]))
    }

    /// Whether result `i` of job `j` ran the release under test.
    fn counts(&self, j: usize, i: usize) -> bool {
        self.facts(j).counts[i]
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
// The kinds' common shape.

/// Which jobs a rule looks at, kept per job.
pub(super) struct Scope {
    /// Per job: inside the rule's scope.
    in_scope: Vec<bool>,
    /// Per job: inside the scope and not ended.
    running: Vec<bool>,
    n_in_scope: usize,
    n_running: usize,
}

impl Scope {
    fn new(selector: &Selector, ctx: &Ctx<'_>) -> Self {
        let mut scope = Self {
            in_scope: vec![false; ctx.slots.len()],
            running: vec![false; ctx.slots.len()],
            n_in_scope: 0,
            n_running: 0,
        };
        for j in 0..ctx.slots.len() {
            scope.job_changed(selector, ctx.job(j), j);
        }
        scope
    }

    /// Takes in job `j`'s labels and state; returns whether it is in scope.
    fn job_changed(&mut self, selector: &Selector, job: &JobEvidence, j: usize) -> bool {
        let in_scope = selector.matches(&job.labels);
        let running = in_scope && !job.state.is_terminal();
        self.n_in_scope = self.n_in_scope + usize::from(in_scope) - usize::from(self.in_scope[j]);
        self.n_running = self.n_running + usize::from(running) - usize::from(self.running[j]);
        self.in_scope[j] = in_scope;
        self.running[j] = running;
        in_scope
    }

    /// The jobs in scope, in evidence order.
    fn jobs(&self) -> impl Iterator<Item = usize> + '_ {
        self.in_scope
            .iter()
            .enumerate()
            .filter_map(|(j, in_scope)| in_scope.then_some(j))
    }

    /// Up to [`PASSING_SAMPLE`] passing items from the first jobs in scope.
    fn sample_ok(&self, mut items_of: impl FnMut(usize) -> Vec<EvidenceItem>) -> Vec<EvidenceItem> {
        let mut sample = Vec::new();
        for j in self.jobs() {
            sample.extend(items_of(j).into_iter().filter(|i| i.ok));
            if sample.len() >= PASSING_SAMPLE {
                sample.truncate(PASSING_SAMPLE);
                break;
            }
        }
        sample
    }
}

/// One rule kind: its settings, taken from the rule when it is built, and its running totals
/// over the jobs' parts.
trait Kind: Send + Sync {
    /// What the kind keeps of one job; the default is the part of a job out of scope.
    type Part: Default + Send + Sync;

    /// The part of job `j`, which is in scope. Reads only the job and its facts, so the parts
    /// of different jobs can be computed on different threads.
    fn part(&self, ctx: &Ctx<'_>, j: usize) -> Self::Part;

    /// Adds job `j`'s part to the totals.
    fn add(&mut self, j: usize, part: &Self::Part);

    /// Takes job `j`'s part, added before, out of the totals.
    fn remove(&mut self, j: usize, part: &Self::Part);

    /// Computes the totals from every job's part, once the build computed them all.
    fn add_all(&mut self, parts: &[Self::Part]) {
        for (j, part) in parts.iter().enumerate() {
            self.add(j, part);
        }
    }

    /// Judges the rule over every job's part.
    fn judge(&self, parts: &[Self::Part], scope: &Scope, ctx: &Ctx<'_>) -> Judged;
}

/// A kind with its jobs' parts: what [`RuleState`] holds, whatever the kind.
struct Kept<K: Kind> {
    kind: K,
    parts: Vec<K::Part>,
}

/// [`Kept`] seen without its kind's types.
trait Keeps: Send + Sync {
    /// One builder per share of `share` jobs, each filling its share's parts.
    fn builders<'s>(&'s mut self, in_scope: &'s [bool], share: usize)
    -> Vec<Box<dyn Builder + 's>>;

    /// Ends the build: the totals from every part.
    fn finish_build(&mut self);

    /// Recomputes job `j`'s part after it changed, and the totals.
    fn job_changed(&mut self, ctx: &Ctx<'_>, j: usize, in_scope: bool);

    fn judge(&self, scope: &Scope, ctx: &Ctx<'_>) -> Judged;
}

/// Fills the parts of one share of the jobs while the gate is built.
trait Builder: Send {
    /// Computes job `j`'s part.
    fn take(&mut self, ctx: &Ctx<'_>, j: usize);
}

struct Share<'s, K: Kind> {
    kind: &'s K,
    in_scope: &'s [bool],
    parts: &'s mut [K::Part],
    first: usize,
}

impl<K: Kind> Builder for Share<'_, K> {
    fn take(&mut self, ctx: &Ctx<'_>, j: usize) {
        if self.in_scope[j - self.first] {
            self.parts[j - self.first] = self.kind.part(ctx, j);
        }
    }
}

impl<K: Kind> Keeps for Kept<K> {
    fn builders<'s>(
        &'s mut self,
        in_scope: &'s [bool],
        share: usize,
    ) -> Vec<Box<dyn Builder + 's>> {
        let kind = &self.kind;
        self.parts
            .chunks_mut(share)
            .zip(in_scope.chunks(share))
            .enumerate()
            .map(|(i, (parts, in_scope))| {
                Box::new(Share {
                    kind,
                    in_scope,
                    parts,
                    first: i * share,
                }) as Box<dyn Builder + 's>
            })
            .collect()
    }

    fn finish_build(&mut self) {
        self.kind.add_all(&self.parts);
    }

    fn job_changed(&mut self, ctx: &Ctx<'_>, j: usize, in_scope: bool) {
        let old = std::mem::take(&mut self.parts[j]);
        self.kind.remove(j, &old);
        if in_scope {
            let part = self.kind.part(ctx, j);
            self.kind.add(j, &part);
            self.parts[j] = part;
        }
    }

    fn judge(&self, scope: &Scope, ctx: &Ctx<'_>) -> Judged {
        self.kind.judge(&self.parts, scope, ctx)
    }
}

fn kept<K: Kind + 'static>(kind: K, n: usize) -> Box<dyn Keeps> {
    Box::new(Kept {
        kind,
        parts: (0..n).map(|_| K::Part::default()).collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// One rule's state.

/// One rule kept up to date over the jobs of the evidence.
pub(super) struct RuleState {
    rule: Rule,
    scope: Scope,
    kept: Box<dyn Keeps>,
}

impl RuleState {
    /// The state of `rule` with every job's scope known and no part computed yet: the build
    /// fills the parts ([`RuleState::builders`]) and ends with [`RuleState::finish_build`].
    ///
    /// Longer than most functions here: one arm per kind, each handing the kind's settings to
    /// its file. It is the one place that reads a [`RuleKind`]; split, it would be two.
    pub(super) fn new(rule: &Rule, ctx: &Ctx<'_>) -> Self {
        let n = ctx.slots.len();
        let kept = match &rule.kind {
            RuleKind::StepsPassed {
                plan,
                steps,
                quorum,
                per,
                tolerance,
            } => kept(
                steps_passed::StepsPassed::new(ctx, plan, steps, *quorum, per, *tolerance),
                n,
            ),
            RuleKind::Measurement {
                name,
                step,
                aggregate,
                condition,
            } => kept(
                numeric::Numeric::new(
                    measurement::Measurement::new(name, step, *condition),
                    *aggregate,
                    *condition,
                ),
                n,
            ),
            RuleKind::Telemetry {
                field,
                step,
                stat,
                aggregate,
                condition,
            } => kept(
                numeric::Numeric::new(
                    telemetry::Telemetry::new(*field, step, *stat, *condition),
                    *aggregate,
                    *condition,
                ),
                n,
            ),
            RuleKind::Baseline {
                measurement,
                step,
                aggregate,
                max_regression_pct,
                direction,
                per,
            } => kept(
                baseline::Baseline::new(
                    ctx,
                    measurement,
                    step.as_deref(),
                    *aggregate,
                    *max_regression_pct,
                    *direction,
                    per,
                ),
                n,
            ),
            RuleKind::NoRegression {
                step,
                per,
                significance,
                min_samples,
                measurement,
                direction,
            } => kept(
                no_regression::NoRegression::new(
                    ctx,
                    &rule.scope,
                    no_regression::Settings {
                        step: step.clone(),
                        per: per.clone(),
                        significance: *significance,
                        min_samples: *min_samples,
                        measurement: measurement.clone(),
                        direction: *direction,
                    },
                ),
                n,
            ),
            RuleKind::NoXid { codes } => kept(events::Events::new(events::Watch::xid(codes)), n),
            RuleKind::NoEvents {
                xid,
                ecc_uncorrected,
                row_remap_failure,
                gpu_lost,
            } => kept(
                events::Events::new(events::Watch::events(
                    xid,
                    *ecc_uncorrected,
                    *row_remap_failure,
                    *gpu_lost,
                )),
                n,
            ),
            RuleKind::DcgmDiag {
                min_level,
                tests,
                step,
            } => kept(dcgm_diag::Diag::new(*min_level, tests, step), n),
            RuleKind::InventoryMatchesRelease { components } => {
                kept(inventory::Inventory::new(components), n)
            }
        };
        Self {
            rule: rule.clone(),
            scope: Scope::new(&rule.scope, ctx),
            kept,
        }
    }

    /// One builder per share of `share` jobs: the gate hands every rule's builder of a share
    /// to one thread, which takes in each job of the share into every rule while the job's
    /// results are in the cache, instead of walking the whole evidence once per rule.
    fn builders(&mut self, share: usize) -> Vec<Box<dyn Builder + '_>> {
        self.kept.builders(&self.scope.in_scope, share)
    }

    /// Ends the build, once every job's part was computed.
    pub(super) fn finish_build(&mut self) {
        self.kept.finish_build();
    }

    /// Recomputes job `j`'s part after it changed.
    pub(super) fn job_changed(&mut self, ctx: &Ctx<'_>, j: usize) {
        let in_scope = self.scope.job_changed(&self.rule.scope, ctx.job(j), j);
        self.kept.job_changed(ctx, j, in_scope);
    }

    /// Decides the rule (without waivers).
    pub(super) fn decide(&self, ctx: &Ctx<'_>) -> RuleDecision {
        let rule = &self.rule;
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
        } else if self.scope.n_in_scope == 0 {
            judged(
                Verdict::Waiting,
                format!("no job ran on a node in scope {}", rule.scope),
                Vec::new(),
            )
        } else {
            self.kept.judge(&self.scope, ctx)
        };
        rule_decision(rule, judged)
    }
}

/// One thread's share of a build: jobs `first..first + facts.len()`, their facts and digests,
/// and every rule's builder for them.
struct BuildShare<'s> {
    first: usize,
    facts: &'s mut [JobFacts],
    digests: &'s mut [[u8; 32]],
    builders: Vec<Box<dyn Builder + 's>>,
}

/// Computes every job's facts, digest (`job_digest`) and part of every rule in `states`, on
/// `threads` threads each taking a contiguous share of the jobs, then ends the rules' builds.
/// Each thread takes its jobs one by one into every rule at once: a job's results are read
/// while they are in the cache, not once per rule. The result does not depend on `threads`.
pub(super) fn build(
    states: &mut [RuleState],
    evidence: &Evidence,
    slots: &[Slot],
    threads: usize,
    job_digest: fn(&JobEvidence) -> [u8; 32],
) -> (Vec<JobFacts>, Vec<[u8; 32]>) {
    let n = slots.len();
    let share = n.div_ceil(threads.max(1)).max(1);
    let mut facts = vec![JobFacts::default(); n];
    let mut digests = vec![[0u8; 32]; n];
    {
        let mut builders: Vec<Vec<Box<dyn Builder + '_>>> =
            (0..n.div_ceil(share)).map(|_| Vec::new()).collect();
        for state in states.iter_mut() {
            for (i, builder) in state.builders(share).into_iter().enumerate() {
                builders[i].push(builder);
            }
        }
        let mut shares = facts
            .chunks_mut(share)
            .zip(digests.chunks_mut(share))
            .zip(builders)
            .enumerate()
            .map(|(i, ((facts, digests), builders))| BuildShare {
                first: i * share,
                facts,
                digests,
                builders,
            });
        let work = |mut share: BuildShare<'_>| {
            for k in 0..share.facts.len() {
                let j = share.first + k;
                let job = &evidence.runs[slots[j].run].jobs[slots[j].job];
                share.facts[k] = JobFacts::new(job, &evidence.release);
                share.digests[k] = job_digest(job);
                let ctx = Ctx {
                    evidence,
                    slots,
                    facts: share.facts,
                    first: share.first,
                };
                for builder in &mut share.builders {
                    builder.take(&ctx, j);
                }
            }
        };
        if let Some(mine) = shares.next() {
            std::thread::scope(|scope| {
                let others: Vec<_> = shares
                    .map(|share| scope.spawn(move || work(share)))
                    .collect();
                work(mine);
                for other in others {
                    other.join().expect("a gate build thread does not panic");
                }
            });
        }
    }
    for state in states.iter_mut() {
        state.finish_build();
    }
    (facts, digests)
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

fn describe_codes(codes: &[i64]) -> String {
    if codes.is_empty() {
        "any code".into()
    } else {
        let list: Vec<String> = codes.iter().map(i64::to_string).collect();
        format!("codes {}", list.join(", "))
    }
}
