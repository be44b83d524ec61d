//! `baseline`: a measurement, aggregated per group of nodes, has not regressed by more than a
//! percentage against the last release promoted past the milestone.

use super::measurement::measurement_points;
use super::numeric::{Point, measurement_item};
use super::*;
use crate::ReleaseId;

pub(super) struct BasePart {
    group: String,
    points: Vec<Point>,
}

pub(super) struct Baseline {
    measurement: String,
    step: Option<String>,
    aggregate: Aggregate,
    max_pct: f64,
    direction: Direction,
    per: String,
    /// The baseline release and its aggregate per group, when there is one.
    before: Option<(ReleaseId, BTreeMap<String, f64>)>,
}

fn group_of(job: &JobEvidence, per: &str) -> String {
    job.labels
        .get(per)
        .cloned()
        .unwrap_or_else(|| format!("(no {per})"))
}

impl Baseline {
    pub(super) fn new(
        ctx: &Ctx<'_>,
        measurement: &str,
        step: Option<&str>,
        aggregate: Aggregate,
        max_pct: f64,
        direction: Direction,
        per: &str,
    ) -> Self {
        let before = ctx.evidence.baseline.as_deref().map(|base| {
            let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            with_evidence(base, |base_ctx| {
                for j in 0..base_ctx.slots.len() {
                    let group = group_of(base_ctx.job(j), per);
                    measurement_points(base_ctx, j, measurement, step, |p| {
                        values.entry(group.clone()).or_default().push(p.value);
                    });
                }
            });
            let aggregated = values
                .into_iter()
                .map(|(group, values)| (group, aggregate.apply(&values)))
                .collect();
            (base.release.id.clone(), aggregated)
        });
        Self {
            measurement: measurement.to_owned(),
            step: step.map(str::to_owned),
            aggregate,
            max_pct,
            direction,
            per: per.to_owned(),
            before,
        }
    }

    fn item(&self, ctx: &Ctx<'_>, j: usize, point: Point) -> EvidenceItem {
        let job = ctx.job(j);
        measurement_item(
            job,
            &job.results[point.result],
            point,
            &self.measurement,
            true,
        )
    }

    /// Per group of the current values: `(description, regression in % when over the limit)`.
    fn compare(
        &self,
        parts: &[Option<BasePart>],
        base: &BTreeMap<String, f64>,
    ) -> (Vec<String>, Vec<(String, f64)>) {
        let per = &self.per;
        let mut current: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for part in parts.iter().flatten() {
            current
                .entry(part.group.as_str())
                .or_default()
                .extend(part.points.iter().map(|p| p.value));
        }
        let mut regressions: Vec<(String, f64)> = Vec::new();
        let mut deltas = Vec::new();
        for (group, values) in &current {
            let now = self.aggregate.apply(values);
            let Some(before) = base.get(*group).copied() else {
                deltas.push(format!("{per}={group}: {now} (no baseline on this {per})"));
                continue;
            };
            let change_pct = if before == 0.0 {
                0.0
            } else {
                (now - before) / before.abs() * 100.0
            };
            let regression = match self.direction {
                Direction::HigherIsBetter => -change_pct,
                Direction::LowerIsBetter => change_pct,
            };
            deltas.push(format!(
                "{per}={group}: {now} vs {before} ({change_pct:+.1}%)"
            ));
            if regression > self.max_pct {
                regressions.push(((*group).to_owned(), regression));
            }
        }
        (deltas, regressions)
    }

    /// The items of the regressed groups' values, then a sample of the others'.
    fn regressed_items(
        &self,
        parts: &[Option<BasePart>],
        scope: &Scope,
        ctx: &Ctx<'_>,
        regressions: &[(String, f64)],
    ) -> Vec<EvidenceItem> {
        let (measurement, per, max_pct) = (&self.measurement, &self.per, self.max_pct);
        let mut items = Vec::new();
        for (j, part) in parts.iter().enumerate() {
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
                    ..self.item(ctx, j, *point)
                });
            }
        }
        items.extend(scope.sample_ok(|j| {
            match &parts[j] {
                Some(part) if !regressions.iter().any(|(g, _)| *g == part.group) => part
                    .points
                    .iter()
                    .map(|point| self.item(ctx, j, *point))
                    .collect(),
                _ => Vec::new(),
            }
        }));
        items
    }
}

impl Kind for Baseline {
    type Part = Option<BasePart>;

    fn part(&self, ctx: &Ctx<'_>, j: usize) -> Self::Part {
        let mut points = Vec::new();
        measurement_points(ctx, j, &self.measurement, self.step.as_deref(), |p| {
            points.push(p);
        });
        (!points.is_empty()).then(|| BasePart {
            group: group_of(ctx.job(j), &self.per),
            points,
        })
    }

    /// The comparison is made per group when judging: nothing to total.
    fn add(&mut self, _j: usize, _part: &Self::Part) {}

    fn remove(&mut self, _j: usize, _part: &Self::Part) {}

    fn judge(&self, parts: &[Self::Part], scope: &Scope, ctx: &Ctx<'_>) -> Judged {
        let (measurement, aggregate, direction) =
            (&self.measurement, self.aggregate, self.direction);
        let (per, max_pct) = (&self.per, self.max_pct);
        let sample = || {
            scope.sample_ok(|j| {
                parts[j]
                    .iter()
                    .flat_map(|p| p.points.iter())
                    .map(|point| self.item(ctx, j, *point))
                    .collect()
            })
        };
        if parts.iter().all(Option::is_none) {
            return judged(
                Verdict::Waiting,
                format!(
                    "no measurement {measurement} on the release under test yet; {} job(s) still running",
                    scope.n_running
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
        let (deltas, regressions) = self.compare(parts, base);
        let head = format!(
            "{aggregate} {measurement} against {base_release} ({direction}): {}",
            deltas.join("; ")
        );
        if regressions.is_empty() {
            if scope.n_running > 0 {
                return judged(Verdict::Waiting, format!("{head} so far"), sample());
            }
            return judged(Verdict::Passed, head, sample());
        }
        let items = self.regressed_items(parts, scope, ctx, &regressions);
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
