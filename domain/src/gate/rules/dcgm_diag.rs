//! `dcgm-diag`: the required `dcgmi diag` tests passed at a level or higher on every GPU of
//! every node; a skipped or unreported test counts as missing, never as passed.

use super::*;
use crate::result::Outcome;

#[derive(Default)]
pub(super) struct DiagPart {
    /// Items of failed, missing or skipped tests.
    bad: Vec<EvidenceItem>,
    n_failed: usize,
    n_missing: usize,
}

pub(super) struct Diag {
    min_level: u8,
    tests: Vec<String>,
    step: Option<String>,
    flagged: BTreeSet<usize>,
    n_failed: usize,
    n_missing: usize,
}

impl Diag {
    pub(super) fn new(min_level: u8, tests: &[String], step: &Option<String>) -> Self {
        Self {
            min_level,
            tests: tests.to_vec(),
            step: step.clone(),
            flagged: BTreeSet::new(),
            n_failed: 0,
            n_missing: 0,
        }
    }

    /// Job `j`'s items (the passing ones only when `with_ok`), and how many required results
    /// failed and how many are missing.
    fn items(&self, ctx: &Ctx<'_>, j: usize, with_ok: bool) -> DiagPart {
        let min_level = self.min_level;
        let job = ctx.job(j);
        let mut part = DiagPart::default();
        let diag = ctx
            .latest_results(j)
            .filter(|(i, r)| {
                self.step.as_ref().is_none_or(|s| s == &r.step_name) && ctx.counts(j, *i)
            })
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
        for test in &self.tests {
            for gpu in result.inventory.gpus.iter().map(|g| g.index) {
                if let Some(item) = test_item(job, result, test, gpu, with_ok, &mut part) {
                    part.bad.push(item);
                }
            }
        }
        part
    }
}

/// The item of `test` on `gpu` in the diagnostic `result`, counting it into `part`; `None`
/// for a passed test unless `with_ok`.
fn test_item(
    job: &JobEvidence,
    result: &StepResult,
    test: &str,
    gpu: u32,
    with_ok: bool,
    part: &mut DiagPart,
) -> Option<EvidenceItem> {
    let sub = result
        .sub_results
        .iter()
        .find(|s| s.source == "dcgm-diag" && s.name == test && s.gpu_index == Some(gpu));
    let (ok, detail, signature) = match sub {
        Some(s) if s.outcome == Outcome::Passed => {
            if !with_ok {
                return None;
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
    Some(EvidenceItem {
        step: Some(result.step_name.clone()),
        attempt: Some(result.attempt),
        gpu_index: Some(gpu),
        limit: Some("passed".into()),
        signature,
        ..item(job, detail, ok)
    })
}

impl Kind for Diag {
    type Part = DiagPart;

    fn part(&self, ctx: &Ctx<'_>, j: usize) -> DiagPart {
        self.items(ctx, j, false)
    }

    fn add(&mut self, j: usize, part: &DiagPart) {
        self.n_failed += part.n_failed;
        self.n_missing += part.n_missing;
        if !part.bad.is_empty() {
            self.flagged.insert(j);
        }
    }

    fn remove(&mut self, j: usize, part: &DiagPart) {
        self.n_failed -= part.n_failed;
        self.n_missing -= part.n_missing;
        self.flagged.remove(&j);
    }

    fn judge(&self, parts: &[DiagPart], scope: &Scope, ctx: &Ctx<'_>) -> Judged {
        let (min_level, tests) = (self.min_level, &self.tests);
        let mut items: Vec<EvidenceItem> = self
            .flagged
            .iter()
            .flat_map(|j| parts[*j].bad.iter().cloned())
            .collect();
        let sample = || scope.sample_ok(|j| self.items(ctx, j, true).bad);
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
