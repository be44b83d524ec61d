//! `telemetry`: a telemetry field aggregated across nodes and GPUs meets a condition. The
//! values are one statistic of each GPU's per-step summary, from every result on the release;
//! a GPU that took part in a passed step and reported no value keeps the rule waiting.

use super::numeric::{Point, Values};
use super::*;
use crate::result::Outcome;

pub(super) struct Telemetry {
    field: Field,
    step: Option<String>,
    stat: Stat,
    condition: Condition,
}

impl Telemetry {
    pub(super) fn new(
        field: Field,
        step: &Option<String>,
        stat: Stat,
        condition: Condition,
    ) -> Self {
        Self {
            field,
            step: step.clone(),
            stat,
            condition,
        }
    }
}

impl Values for Telemetry {
    fn what(&self) -> String {
        format!("telemetry {} ({} per GPU)", self.field, self.stat)
    }

    fn points(&self, ctx: &Ctx<'_>, j: usize, visit: &mut dyn FnMut(Point, Option<u32>)) {
        let job = ctx.job(j);
        for (i, result) in job.results.iter().enumerate() {
            if self.step.as_ref().is_some_and(|s| s != &result.step_name) || !ctx.counts(j, i) {
                continue;
            }
            for (g, gpu) in result.telemetry.iter().enumerate() {
                let Some(summary) = gpu.field(self.field) else {
                    continue;
                };
                let value = match self.stat {
                    Stat::Min => summary.min,
                    Stat::Max => summary.max,
                    Stat::Mean => summary.mean,
                    Stat::P99 => summary.p99,
                    Stat::Last => summary.last,
                };
                let point = Point {
                    result: i,
                    measurement: 0,
                    gpu: g,
                    value,
                };
                visit(point, Some(gpu.gpu_index));
            }
        }
    }

    fn item(&self, ctx: &Ctx<'_>, j: usize, point: Point) -> EvidenceItem {
        let job = ctx.job(j);
        let result = &job.results[point.result];
        let (field, stat, condition, value) = (self.field, self.stat, self.condition, point.value);
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

    /// The GPUs of job `j` that took part in a step that passed on the release (the rule's
    /// step only, when given) and are not in `reporting`.
    fn silent_gpus(&self, ctx: &Ctx<'_>, j: usize, reporting: &[u32]) -> Vec<u32> {
        let mut silent: Vec<u32> = Vec::new();
        for (i, result) in ctx.job(j).results.iter().enumerate() {
            if result.outcome != Outcome::Passed
                || self.step.as_ref().is_some_and(|s| s != &result.step_name)
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

    fn silent_what(&self) -> String {
        self.field.to_string()
    }
}
