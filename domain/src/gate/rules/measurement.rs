//! `measurement`: a measurement aggregated across nodes meets a condition. The values are the
//! measurement's in the final attempt of each step that passed or failed on the release.

use super::numeric::{Point, Values, measurement_item};
use super::*;
use crate::result::Outcome;

pub(super) struct Measurement {
    name: String,
    step: Option<String>,
    condition: Condition,
}

impl Measurement {
    pub(super) fn new(name: &str, step: &Option<String>, condition: Condition) -> Self {
        Self {
            name: name.to_owned(),
            step: step.clone(),
            condition,
        }
    }
}

impl Values for Measurement {
    fn what(&self) -> String {
        format!("measurement {}", self.name)
    }

    fn points(&self, ctx: &Ctx<'_>, j: usize, visit: &mut dyn FnMut(Point, Option<u32>)) {
        measurement_points(ctx, j, &self.name, self.step.as_deref(), |point| {
            visit(point, None);
        });
    }

    fn item(&self, ctx: &Ctx<'_>, j: usize, point: Point) -> EvidenceItem {
        let job = ctx.job(j);
        let result = &job.results[point.result];
        let (name, condition) = (&self.name, self.condition);
        let ok = condition.holds(point.value);
        EvidenceItem {
            limit: Some(condition.to_string()),
            signature: (!ok).then(|| format!("{name} breaks {condition} in {}", result.step_name)),
            ..measurement_item(job, result, point, name, ok)
        }
    }
}

/// The values of measurement `name` in the latest attempt of each step of job `j` that passed
/// or failed on the release under test (`step` only, when given).
pub(super) fn measurement_points(
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
