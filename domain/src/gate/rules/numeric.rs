//! What `measurement` and `telemetry` rules share: values aggregated across nodes (and GPUs)
//! and compared with a condition. Where the values come from is the kind's [`Values`].

use super::super::order_stats::OrderStats;
use super::*;

/// One value a numeric rule aggregates, and where it came from.
#[derive(Clone, Copy, Debug)]
pub(super) struct Point {
    /// The result's index in its job.
    pub(super) result: usize,
    /// The measurement's index in the result (measurement rules).
    pub(super) measurement: usize,
    /// The GPU's index in the result's telemetry (telemetry rules).
    pub(super) gpu: usize,
    pub(super) value: f64,
}

/// Where a numeric rule's values come from, and how they are shown.
pub(super) trait Values: Send + Sync {
    /// `measurement NAME`, `telemetry FIELD (STAT per GPU)`: what the reasons call the values.
    fn what(&self) -> String;

    /// Visits the values job `j` contributes; with each, the GPU it belongs to when values are
    /// per GPU.
    fn points(&self, ctx: &Ctx<'_>, j: usize, visit: &mut dyn FnMut(Point, Option<u32>));

    /// The evidence item of one value.
    fn item(&self, ctx: &Ctx<'_>, j: usize, point: Point) -> EvidenceItem;

    /// The GPUs of job `j` that should have reported a value and are not in `reporting`.
    fn silent_gpus(&self, _ctx: &Ctx<'_>, _j: usize, _reporting: &[u32]) -> Vec<u32> {
        Vec::new()
    }

    /// What a GPU without a value did not report, for the reason.
    fn silent_what(&self) -> String {
        self.what()
    }
}

/// One job's values for a numeric rule.
#[derive(Default)]
pub(super) struct NumPart {
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
    /// GPUs of the node that took part in a passed step on the release but never reported
    /// the value (not sampled, or not supported).
    silent_gpus: Vec<u32>,
}

pub(super) struct Numeric<V: Values> {
    values: V,
    aggregate: Aggregate,
    condition: Condition,
    /// Every value, sorted, when the aggregate is a percentile.
    order: Option<OrderStats>,
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

impl<V: Values> Numeric<V> {
    pub(super) fn new(values: V, aggregate: Aggregate, condition: Condition) -> Self {
        Self {
            values,
            aggregate,
            condition,
            order: percentile_of(aggregate).map(|_| OrderStats::default()),
            flagged: BTreeSet::new(),
            silent: BTreeSet::new(),
            total: 0,
        }
    }

    /// Adds a part to everything but the order statistics.
    fn add_counts(&mut self, j: usize, part: &NumPart) {
        self.total += part.count;
        if !part.offenders.is_empty() {
            self.flagged.insert(j);
        }
        if !part.silent_gpus.is_empty() {
            self.silent.insert(j);
        }
    }

    /// `node (GPU 0, 1)` for the first nodes with GPUs that reported nothing.
    fn describe_silent(&self, parts: &[NumPart], ctx: &Ctx<'_>) -> String {
        let nodes = self.silent.iter().map(|j| {
            let gpus: Vec<String> = parts[*j].silent_gpus.iter().map(u32::to_string).collect();
            format!("{} (GPU {})", ctx.job(*j).node, gpus.join(", "))
        });
        format!(
            "no {} value from {}; a GPU without a value never passes (if it cannot report the field, scope the rule to nodes that can)",
            self.values.silent_what(),
            name_some(nodes, self.silent.len())
        )
    }

    fn aggregated(&self, parts: &[NumPart]) -> f64 {
        let parts = parts.iter().filter(|p| p.count > 0);
        match self.aggregate {
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
    fn extremes(&self, parts: &[NumPart], ctx: &Ctx<'_>) -> Vec<EvidenceItem> {
        let pick = |better: fn(f64, f64) -> bool, of: fn(&NumPart) -> Option<Point>| {
            parts
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
            let item = self.values.item(ctx, j, point);
            if !items.contains(&item) {
                items.push(item);
            }
        }
        items
    }

    /// The extremes and a few passing values, without repeating `shown`.
    fn sample(
        &self,
        parts: &[NumPart],
        scope: &Scope,
        ctx: &Ctx<'_>,
        shown: &[EvidenceItem],
    ) -> Vec<EvidenceItem> {
        let mut sample = self.extremes(parts, ctx);
        sample.extend(scope.sample_ok(|j| {
            let mut items = Vec::new();
            self.values.points(ctx, j, &mut |point, _| {
                if items.len() < PASSING_SAMPLE {
                    items.push(self.values.item(ctx, j, point));
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

impl<V: Values> Kind for Numeric<V> {
    type Part = NumPart;

    fn part(&self, ctx: &Ctx<'_>, j: usize) -> NumPart {
        let condition = self.condition;
        // A count's limit is on how many values there are: no single value can break it.
        let judges_values = self.aggregate != Aggregate::Count;
        let mut part = NumPart::default();
        let keep = self.order.is_some();
        let mut reporting: Vec<u32> = Vec::new();
        self.values.points(ctx, j, &mut |point, gpu| {
            if let Some(gpu) = gpu
                && !reporting.contains(&gpu)
            {
                reporting.push(gpu);
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
            if judges_values && !condition.holds(point.value) {
                part.offenders.push(self.values.item(ctx, j, point));
            }
        });
        part.silent_gpus = self.values.silent_gpus(ctx, j, &reporting);
        part
    }

    fn add(&mut self, j: usize, part: &NumPart) {
        self.add_counts(j, part);
        if let Some(order) = &mut self.order {
            for value in &part.values {
                order.insert(*value);
            }
        }
    }

    fn remove(&mut self, j: usize, part: &NumPart) {
        self.total -= part.count;
        if let Some(order) = &mut self.order {
            for value in &part.values {
                order.remove(*value);
            }
        }
        self.flagged.remove(&j);
        self.silent.remove(&j);
    }

    /// Sorts every value once instead of inserting them one by one.
    fn add_all(&mut self, parts: &[NumPart]) {
        for (j, part) in parts.iter().enumerate() {
            self.add_counts(j, part);
        }
        if self.order.is_some() {
            let values = parts
                .iter()
                .flat_map(|p| p.values.iter().copied())
                .collect();
            self.order = Some(OrderStats::from_values(values));
        }
    }

    /// Judges a numeric rule: aggregate the values, compare, name the nodes whose own values
    /// break the condition. While jobs run, only a violation more values cannot repair fails
    /// early (a minimum already too low, a maximum already too high).
    fn judge(&self, parts: &[NumPart], scope: &Scope, ctx: &Ctx<'_>) -> Judged {
        let (aggregate, condition, what) = (self.aggregate, self.condition, self.values.what());
        let running = scope.n_running;
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
        let value = self.aggregated(parts);
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
            items.extend(parts[*j].offenders.iter().cloned());
        }
        let n_offenders = items.len();
        if !holds && (running == 0 || settled) {
            let reason = if aggregate == Aggregate::Count {
                format!("{base}; the limit is on how many values were reported")
            } else {
                format!("{base}; {}", describe_offenders(&items))
            };
            items.extend(self.sample(parts, scope, ctx, &items));
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
        items.extend(self.sample(parts, scope, ctx, &items));
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
        if !self.silent.is_empty() {
            return judged(
                Verdict::Waiting,
                format!("{base}{beyond}; {}", self.describe_silent(parts, ctx)),
                items,
            );
        }
        judged(Verdict::Passed, format!("{base}{beyond}"), items)
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

/// The evidence item of one value of a measurement: the step, attempt, value and unit.
pub(super) fn measurement_item(
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
