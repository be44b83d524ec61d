//! `no-regression`: the release fails no more often than the last release promoted past the
//! milestone, with a regression told apart from noise by a significance test.
//!
//! Per subject (a step, or one testcase of a step whose results carry test results) and per
//! value of the `per` label, the passes and failures of the release under test are compared
//! with the baseline release's by a one-sided Fisher's exact test; a measurement, when named,
//! is compared per step and label value by a one-sided Mann–Whitney U test. A p-value below
//! the significance level is a regression, and fails the rule at once, as `baseline` does,
//! even while jobs still run. A comparison with fewer than `min-samples` samples of the release
//! under test waits, as does a clean one while jobs run: missing evidence never passes. One
//! whose baseline has fewer (a SKU or testcase new since the baseline) can never be made, since
//! the baseline's evidence is final: it is named as not compared and holds nothing up, as the
//! rule passes and says so with no baseline release at all, like `baseline`. Subjects the
//! baseline ran and the release under test did not are not compared (`steps-passed` and
//! `scope` say what must run).

use super::measurement::measurement_points;
use super::numeric::{Point, measurement_item};
use super::*;
use crate::ReleaseId;
use crate::result::Outcome;
use crate::stats::{self, Alternative};

/// The rule's settings, as its gate file gave them.
pub(super) struct Settings {
    pub(super) step: Option<String>,
    pub(super) per: String,
    pub(super) significance: f64,
    pub(super) min_samples: u32,
    pub(super) measurement: Option<String>,
    pub(super) direction: Direction,
}

/// What one pass or failure is about: a step, or one testcase of a step.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Subject {
    step: String,
    testcase: Option<String>,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.testcase {
            Some(testcase) => write!(f, "{}/{testcase}", self.step),
            None => f.write_str(&self.step),
        }
    }
}

/// Passes and failures of one subject.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    fn n(self) -> u64 {
        self.passed + self.failed
    }

    fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
    }

    fn remove(&mut self, other: Tally) {
        self.passed -= other.passed;
        self.failed -= other.failed;
    }

    /// `41/50 passed (82.0%)`, or without `passed` when `word` is empty.
    fn rate(self, word: &str) -> String {
        let pct = if self.n() == 0 {
            0.0
        } else {
            self.passed as f64 / self.n() as f64 * 100.0
        };
        format!("{}/{}{word} ({pct:.1}%)", self.passed, self.n())
    }
}

/// One comparison: a subject's pass rate, or a step's measurement values, on one group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Compared {
    Rate(Subject, String),
    Values(String, String),
}

/// How a comparison came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finding {
    /// Significantly worse.
    Regressed,
    /// Not significantly worse.
    Held,
    /// Too few samples of the release under test to say yet.
    Short,
    /// Too few samples of the baseline release to compare with, ever: its evidence is
    /// final. Not a comparison; says so and does not hold the rule up.
    NoBasis,
}

/// One job's passes and failures and measurement values, with its node's group.
pub(super) struct RegressionPart {
    group: String,
    tallies: Vec<(Subject, Tally)>,
    /// The measurement's values, with the step that reported each.
    points: Vec<(String, Point)>,
}

/// The baseline release's evidence, tallied once when the rule is built.
struct Before {
    release: ReleaseId,
    tallies: BTreeMap<(Subject, String), Tally>,
    values: BTreeMap<(String, String), Vec<f64>>,
}

pub(super) struct NoRegression {
    settings: Settings,
    before: Option<Before>,
    /// Per subject and group, the tallies of every job in scope.
    totals: BTreeMap<(Subject, String), Tally>,
}

fn group_of(job: &JobEvidence, per: &str) -> String {
    job.labels
        .get(per)
        .cloned()
        .unwrap_or_else(|| format!("(no {per})"))
}

/// Visits every trial of job `j`: the final attempt of each step (`step` only, when given)
/// that passed or failed on the release, or, when that attempt carries test results, each of
/// its tests that passed or failed, as (subject, passed, result index, test index). Skipped,
/// errored and lost results are no trial: they say nothing of how often the thing under test
/// fails (`steps-passed` and `dcgm-diag` judge them).
fn trials(
    ctx: &Ctx<'_>,
    j: usize,
    step: Option<&str>,
    mut visit: impl FnMut(Subject, bool, usize, Option<usize>),
) {
    let judged = |outcome| matches!(outcome, Outcome::Passed | Outcome::Failed);
    for (i, result) in ctx.latest_results(j) {
        if !(step.is_none_or(|s| s == result.step_name)
            && judged(result.outcome)
            && ctx.counts(j, i))
        {
            continue;
        }
        if result.sub_results.is_empty() {
            let subject = Subject {
                step: result.step_name.clone(),
                testcase: None,
            };
            visit(subject, result.outcome == Outcome::Passed, i, None);
            continue;
        }
        for (s, sub) in result.sub_results.iter().enumerate() {
            if judged(sub.outcome) {
                let subject = Subject {
                    step: result.step_name.clone(),
                    testcase: Some(sub.name.clone()),
                };
                visit(subject, sub.outcome == Outcome::Passed, i, Some(s));
            }
        }
    }
}

impl NoRegression {
    pub(super) fn new(ctx: &Ctx<'_>, scope: &Selector, settings: Settings) -> Self {
        let before = ctx.evidence.baseline.as_deref().map(|base| {
            with_evidence(base, |base_ctx| {
                let mut before = Before {
                    release: base.release.id.clone(),
                    tallies: BTreeMap::new(),
                    values: BTreeMap::new(),
                };
                for j in 0..base_ctx.slots.len() {
                    let job = base_ctx.job(j);
                    if !scope.matches(&job.labels) {
                        continue;
                    }
                    let group = group_of(job, &settings.per);
                    trials(
                        base_ctx,
                        j,
                        settings.step.as_deref(),
                        |subject, passed, _, _| {
                            let tally = before.tallies.entry((subject, group.clone())).or_default();
                            tally.add(Tally {
                                passed: u64::from(passed),
                                failed: u64::from(!passed),
                            });
                        },
                    );
                    if let Some(name) = &settings.measurement {
                        measurement_points(base_ctx, j, name, settings.step.as_deref(), |p| {
                            let step = job.results[p.result].step_name.clone();
                            before
                                .values
                                .entry((step, group.clone()))
                                .or_default()
                                .push(p.value);
                        });
                    }
                }
                before
            })
        });
        Self {
            settings,
            before,
            totals: BTreeMap::new(),
        }
    }

    /// Every comparison with the baseline: what, how it came out, and a sentence saying so.
    fn compare(
        &self,
        parts: &[Option<RegressionPart>],
        before: &Before,
    ) -> Vec<(Compared, Finding, String)> {
        let settings = &self.settings;
        let (per, min) = (&settings.per, u64::from(settings.min_samples));
        let significance = format_number(settings.significance);
        let mut compared = Vec::new();
        // What the release under test produced is compared; whether it covers everything
        // the baseline ran is for `steps-passed` and `scope` to say.
        let keys: BTreeSet<&(Subject, String)> = self.totals.keys().collect();
        for key @ (subject, group) in keys {
            let now = self.totals.get(key).copied().unwrap_or_default();
            let base = before.tallies.get(key).copied().unwrap_or_default();
            let what = format!("{subject} on {per}={group}");
            let (finding, text) = if base.n() < min {
                let text = format!("{what}: baseline has {} samples", base.n());
                (Finding::NoBasis, text)
            } else if now.n() < min {
                let text = format!("{what}: {} vs baseline {} samples", now.n(), base.n());
                (Finding::Short, text)
            } else {
                let table = [[now.passed, now.failed], [base.passed, base.failed]];
                let p = stats::fisher_exact(table, Alternative::Less);
                let regressed = p < settings.significance;
                let text = format!(
                    "{what}: {} vs baseline {}, Fisher one-sided p={} {} {significance}",
                    now.rate(" passed"),
                    base.rate(""),
                    stats::format_p(p),
                    if regressed { "<" } else { ">=" }
                );
                let finding = if regressed {
                    Finding::Regressed
                } else {
                    Finding::Held
                };
                (finding, text)
            };
            compared.push((
                Compared::Rate(subject.clone(), group.clone()),
                finding,
                text,
            ));
        }
        if let Some(measurement) = &settings.measurement {
            let mut values: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
            for part in parts.iter().flatten() {
                for (step, point) in &part.points {
                    values
                        .entry((step.clone(), part.group.clone()))
                        .or_default()
                        .push(point.value);
                }
            }
            let keys: BTreeSet<&(String, String)> = values.keys().collect();
            let empty = Vec::new();
            for key @ (step, group) in keys {
                let now = values.get(key).unwrap_or(&empty);
                let base = before.values.get(key).unwrap_or(&empty);
                let what = format!("{step} {measurement} on {per}={group}");
                let (n_now, n_base) = (now.len(), base.len());
                let (finding, text) = if (n_base as u64) < min {
                    let text = format!("{what}: baseline has {n_base} values");
                    (Finding::NoBasis, text)
                } else if (n_now as u64) < min {
                    let text = format!("{what}: {n_now} vs baseline {n_base} values");
                    (Finding::Short, text)
                } else {
                    // One-sided in the bad direction: lower bandwidth, higher latency.
                    let alternative = match settings.direction {
                        Direction::HigherIsBetter => Alternative::Less,
                        Direction::LowerIsBetter => Alternative::Greater,
                    };
                    let test = stats::mann_whitney_u(now, base, alternative);
                    let regressed = test.p < settings.significance;
                    let median = |values: &[f64]| Aggregate::P50.apply(values);
                    let text = format!(
                        "{what}: median {} vs baseline median {} ({n_now} vs {n_base} values, {}), Mann-Whitney one-sided p={} {} {significance}",
                        median(now),
                        median(base),
                        settings.direction,
                        stats::format_p(test.p),
                        if regressed { "<" } else { ">=" }
                    );
                    let finding = if regressed {
                        Finding::Regressed
                    } else {
                        Finding::Held
                    };
                    (finding, text)
                };
                compared.push((Compared::Values(step.clone(), group.clone()), finding, text));
            }
        }
        compared
    }

    /// Job `j`'s items: its failed trials and measurement values in `regressed` comparisons
    /// (failing), or, when `ok`, its passed trials and values in the others.
    fn items(
        &self,
        ctx: &Ctx<'_>,
        j: usize,
        part: &RegressionPart,
        regressed: &BTreeSet<&Compared>,
        ok: bool,
    ) -> Vec<EvidenceItem> {
        let settings = &self.settings;
        let (per, group) = (&settings.per, &part.group);
        let job = ctx.job(j);
        let mut items = Vec::new();
        let rate_regressed =
            |subject: &Subject| regressed.contains(&Compared::Rate(subject.clone(), group.clone()));
        let has_trials = part.tallies.iter().any(|(subject, tally)| {
            if ok {
                tally.passed > 0 && !rate_regressed(subject)
            } else {
                tally.failed > 0 && rate_regressed(subject)
            }
        });
        if has_trials {
            trials(ctx, j, settings.step.as_deref(), |subject, passed, i, s| {
                if passed != ok || rate_regressed(&subject) == ok {
                    return;
                }
                let result = &job.results[i];
                let sub = s.map(|s| &result.sub_results[s]);
                let what = match sub {
                    Some(sub) => format!("{}/{}", result.step_name, sub.label()),
                    None => result.step_name.clone(),
                };
                let first_line = match sub {
                    Some(sub) => sub.first_message_line(),
                    None => result.message.lines().next().unwrap_or_default().to_owned(),
                };
                let detail = match (passed, first_line.is_empty()) {
                    (true, _) => format!("{what} passed"),
                    (false, true) => format!("{what} failed"),
                    (false, false) => format!("{what} failed: {first_line}"),
                };
                items.push(EvidenceItem {
                    step: Some(result.step_name.clone()),
                    attempt: Some(result.attempt),
                    gpu_index: sub.and_then(|sub| sub.gpu_index),
                    limit: Some("pass rate not significantly below the baseline's".to_owned()),
                    signature: (!passed)
                        .then(|| format!("{subject} pass rate regressed on {per}={group}")),
                    ..item(job, detail, passed)
                });
            });
        }
        if let Some(measurement) = &settings.measurement {
            for (step, point) in &part.points {
                let compared = Compared::Values(step.clone(), group.clone());
                if regressed.contains(&compared) == ok {
                    continue;
                }
                items.push(EvidenceItem {
                    limit: Some(format!(
                        "{measurement} not significantly worse than the baseline's ({})",
                        settings.direction
                    )),
                    signature: (!ok)
                        .then(|| format!("{step} {measurement} regressed on {per}={group}")),
                    ..measurement_item(job, &job.results[point.result], *point, measurement, ok)
                });
            }
        }
        items
    }
}

impl Kind for NoRegression {
    type Part = Option<RegressionPart>;

    fn part(&self, ctx: &Ctx<'_>, j: usize) -> Self::Part {
        let settings = &self.settings;
        let step = settings.step.as_deref();
        let mut tallies: Vec<(Subject, Tally)> = Vec::new();
        trials(ctx, j, step, |subject, passed, _, _| {
            let trial = Tally {
                passed: u64::from(passed),
                failed: u64::from(!passed),
            };
            match tallies.iter_mut().find(|(s, _)| *s == subject) {
                Some((_, tally)) => tally.add(trial),
                None => tallies.push((subject, trial)),
            }
        });
        let mut points = Vec::new();
        if let Some(name) = &settings.measurement {
            let job = ctx.job(j);
            measurement_points(ctx, j, name, step, |point| {
                points.push((job.results[point.result].step_name.clone(), point));
            });
        }
        (!tallies.is_empty() || !points.is_empty()).then(|| RegressionPart {
            group: group_of(ctx.job(j), &settings.per),
            tallies,
            points,
        })
    }

    fn add(&mut self, _j: usize, part: &Self::Part) {
        let Some(part) = part else { return };
        for (subject, tally) in &part.tallies {
            let key = (subject.clone(), part.group.clone());
            self.totals.entry(key).or_default().add(*tally);
        }
    }

    fn remove(&mut self, _j: usize, part: &Self::Part) {
        let Some(part) = part else { return };
        for (subject, tally) in &part.tallies {
            let key = (subject.clone(), part.group.clone());
            if let Some(total) = self.totals.get_mut(&key) {
                total.remove(*tally);
                if total.n() == 0 {
                    self.totals.remove(&key);
                }
            }
        }
    }

    fn judge(&self, parts: &[Self::Part], scope: &Scope, ctx: &Ctx<'_>) -> Judged {
        let settings = &self.settings;
        let sample = |regressed: &BTreeSet<&Compared>| {
            scope.sample_ok(|j| match &parts[j] {
                Some(part) => self.items(ctx, j, part, regressed, true),
                None => Vec::new(),
            })
        };
        if parts.iter().all(Option::is_none) {
            let what = match &settings.step {
                Some(step) => format!("step {step}"),
                None => "any step".to_owned(),
            };
            return judged(
                Verdict::Waiting,
                format!(
                    "no passed or failed result of {what} on the release under test yet; {} job(s) still running",
                    scope.n_running
                ),
                Vec::new(),
            );
        }
        let Some(before) = &self.before else {
            return judged(
                Verdict::Passed,
                format!(
                    "no earlier release was promoted past {}; nothing to compare pass rates with",
                    ctx.evidence.milestone
                ),
                sample(&BTreeSet::new()),
            );
        };
        let compared = self.compare(parts, before);
        let texts = |finding: Finding| -> Vec<&str> {
            compared
                .iter()
                .filter(|(_, f, _)| *f == finding)
                .map(|(_, _, text)| text.as_str())
                .collect()
        };
        let listed = |texts: &[&str]| name_some(texts.iter().map(|t| (*t).to_owned()), texts.len());
        let (regressed, short, held, no_basis) = (
            texts(Finding::Regressed),
            texts(Finding::Short),
            texts(Finding::Held),
            texts(Finding::NoBasis),
        );
        let base_release = &before.release;
        // Comparisons the baseline cannot support, said at the end of every reason.
        let not_compared = if no_basis.is_empty() {
            String::new()
        } else {
            format!(
                "; not compared, the baseline having fewer than {} samples: {}",
                settings.min_samples,
                listed(&no_basis)
            )
        };
        if !regressed.is_empty() {
            let regressed_keys: BTreeSet<&Compared> = compared
                .iter()
                .filter(|(_, f, _)| *f == Finding::Regressed)
                .map(|(c, _, _)| c)
                .collect();
            let mut items = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                if let Some(part) = part {
                    items.extend(self.items(ctx, j, part, &regressed_keys, false));
                }
            }
            items.extend(sample(&regressed_keys));
            let unsettled = if short.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} more comparison(s) wait for enough evidence",
                    short.len()
                )
            };
            return judged(
                Verdict::Failed,
                format!(
                    "regressed against {base_release}: {}{unsettled}{not_compared}",
                    listed(&regressed)
                ),
                items,
            );
        }
        let no_regressions = BTreeSet::new();
        if !short.is_empty() {
            let others = if held.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} other comparison(s) show no significant regression",
                    held.len()
                )
            };
            return judged(
                Verdict::Waiting,
                format!(
                    "not enough evidence against {base_release} (at least {} samples on each side are needed): {}{others}{not_compared}",
                    settings.min_samples,
                    listed(&short)
                ),
                sample(&no_regressions),
            );
        }
        let head = if held.is_empty() {
            format!("nothing to compare with {base_release}{not_compared}")
        } else {
            format!(
                "no significant regression against {base_release}: {}{not_compared}",
                listed(&held)
            )
        };
        if scope.n_running > 0 {
            return judged(
                Verdict::Waiting,
                format!("{head} so far; {} job(s) still running", scope.n_running),
                sample(&no_regressions),
            );
        }
        judged(Verdict::Passed, head, sample(&no_regressions))
    }
}
