//! `steps-passed`: the listed steps of a plan passed on enough nodes (per label value when
//! `per` is set), with at most so many failed, errored and inconclusive nodes.

use super::*;
use crate::result::Outcome;

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

pub(super) struct StepsPart {
    class: Class,
    group: String,
    /// The item, for a node that did not pass.
    item: Option<EvidenceItem>,
}

pub(super) struct StepsPassed {
    plan: String,
    steps: Vec<String>,
    quorum: Quorum,
    per: Option<String>,
    tolerance: Tolerance,
    /// The latest run of the plan.
    run: Option<usize>,
    /// The listed steps' indexes in that run's plan, or why they cannot be found.
    indexes: Result<Vec<(usize, String)>, String>,
    /// Per group: nodes per class.
    groups: BTreeMap<String, [usize; 5]>,
    /// Jobs whose node did not pass.
    flagged: BTreeSet<usize>,
}

impl StepsPassed {
    pub(super) fn new(
        ctx: &Ctx<'_>,
        plan: &str,
        steps: &[String],
        quorum: Quorum,
        per: &Option<String>,
        tolerance: Tolerance,
    ) -> Self {
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
            plan: plan.to_owned(),
            steps: steps.to_vec(),
            quorum,
            per: per.clone(),
            tolerance,
            run,
            indexes,
            groups: BTreeMap::new(),
            flagged: BTreeSet::new(),
        }
    }

    fn total(&self, class: Class) -> usize {
        self.groups
            .values()
            .map(|counts| counts[class.slot()])
            .sum::<usize>()
    }

    /// What is over the tolerance, one phrase per count.
    fn over_limit(&self) -> Vec<String> {
        let tolerance = self.tolerance;
        let mut over_limit = Vec::new();
        for (class, tolerated, what) in [
            (Class::Failed, tolerance.max_failed, "failed"),
            (Class::Errored, tolerance.max_errored, "errored"),
            (
                Class::Inconclusive,
                tolerance.max_inconclusive,
                "inconclusive",
            ),
        ] {
            let n = self.total(class);
            if n > tolerated as usize {
                over_limit.push(format!("{n} {what} (tolerated {tolerated})"));
            }
        }
        over_limit
    }

    /// Each group's count against its quorum: the descriptions, the groups that fell short,
    /// and whether a group short now could still reach its quorum with its running nodes.
    fn quorums(&self) -> (Vec<String>, Vec<String>, bool) {
        let per = self.per.as_deref();
        let mut short = Vec::new();
        let mut pending_could_help = false;
        let mut described = Vec::new();
        for (group, counts) in &self.groups {
            let n: usize = counts.iter().sum();
            let required = self.quorum.required(n);
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
        (described, short, pending_could_help)
    }

    /// The items of the nodes that did not pass, then a sample of those that did; and the
    /// `; failed: ...` text naming the failures.
    fn items(&self, parts: &[Option<StepsPart>], ctx: &Ctx<'_>) -> (Vec<EvidenceItem>, String) {
        let mut items: Vec<EvidenceItem> = self
            .flagged
            .iter()
            .filter_map(|j| parts[*j].as_ref()?.item.clone())
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
        let passed_sample = parts
            .iter()
            .enumerate()
            .filter(|(_, part)| part.as_ref().is_some_and(|p| p.class == Class::Passed))
            .take(PASSING_SAMPLE)
            .map(|(j, _)| item(ctx.job(j), "every listed step passed", true));
        items.extend(passed_sample);
        (items, failure_text)
    }
}

impl Kind for StepsPassed {
    type Part = Option<StepsPart>;

    fn part(&self, ctx: &Ctx<'_>, j: usize) -> Self::Part {
        let (Some(run), Ok(indexes)) = (self.run, &self.indexes) else {
            return None;
        };
        if ctx.slots[j].run != run {
            return None;
        }
        Some(classify(ctx, j, indexes, self.per.as_deref()))
    }

    fn add(&mut self, j: usize, part: &Self::Part) {
        let Some(part) = part else { return };
        self.groups.entry(part.group.clone()).or_default()[part.class.slot()] += 1;
        if part.class != Class::Passed {
            self.flagged.insert(j);
        }
    }

    fn remove(&mut self, j: usize, part: &Self::Part) {
        let Some(old) = part else { return };
        if let Some(counts) = self.groups.get_mut(&old.group) {
            counts[old.class.slot()] -= 1;
            if counts.iter().all(|c| *c == 0) {
                self.groups.remove(&old.group);
            }
        }
        self.flagged.remove(&j);
    }

    fn judge(&self, parts: &[Self::Part], _scope: &Scope, ctx: &Ctx<'_>) -> Judged {
        let evidence = ctx.evidence;
        let plan = &self.plan;
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
        let n_pending = self.total(Class::Pending);
        let over_limit = self.over_limit();
        let (described, short, pending_could_help) = self.quorums();
        let head = format!(
            "[{}] of plan {plan}: {}",
            self.steps.join(", "),
            described.join("; ")
        );
        let (items, failure_text) = self.items(parts, ctx);
        if !over_limit.is_empty() || !short.is_empty() {
            let mut why = Vec::new();
            match (self.per.as_deref(), short.is_empty()) {
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
        let latest = ctx.facts(j).latest(*idx);
        let (class, detail, signature) = match latest.map(|i| (i, &job.results[i])) {
            Some((i, result)) if result.outcome == Outcome::Passed && ctx.counts(j, i) => {
                continue;
            }
            latest => step_class(ctx, job, step, latest.map(|(_, result)| result)),
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

/// The class of a node whose listed `step` did not pass on the release, with the item's
/// detail and the failure signature: from the step's final attempt, or its absence.
fn step_class(
    ctx: &Ctx<'_>,
    job: &JobEvidence,
    step: &str,
    latest: Option<&StepResult>,
) -> (Class, String, String) {
    match latest {
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
        Some(result) if result.outcome == Outcome::Passed => {
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
    }
}
