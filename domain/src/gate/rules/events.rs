//! `no-xid` and `no-events`: no watched GPU event on any node. `no-xid` watches XIDs (some
//! codes, or all); `no-events` also uncorrected ECC errors (reported events, or a rising
//! volatile counter), row remap failures and lost GPUs. Both are this one kind with a
//! different [`Watch`].

use super::*;
use crate::telemetry::{EventKind, GpuEvent, GpuTelemetry};

/// What a `no-xid` or `no-events` rule watches.
pub(super) struct Watch {
    /// XID codes; every code when empty.
    xid: Vec<i64>,
    ecc_uncorrected: bool,
    row_remap_failure: bool,
    gpu_lost: bool,
    /// What the reasons say is watched.
    what: String,
}

impl Watch {
    /// `no-xid`: XIDs with these codes (every code when empty).
    pub(super) fn xid(codes: &[i64]) -> Self {
        Self {
            xid: codes.to_vec(),
            ecc_uncorrected: false,
            row_remap_failure: false,
            gpu_lost: false,
            what: format!("XID ({})", describe_codes(codes)),
        }
    }

    /// `no-events`: XIDs with these codes and the other events switched on.
    pub(super) fn events(
        xid: &[i64],
        ecc_uncorrected: bool,
        row_remap_failure: bool,
        gpu_lost: bool,
    ) -> Self {
        let what = format!(
            "XID {}{}{}{}",
            describe_codes(xid),
            if ecc_uncorrected {
                ", uncorrected ECC"
            } else {
                ""
            },
            if row_remap_failure {
                ", row remap failure"
            } else {
                ""
            },
            if gpu_lost { ", GPU lost" } else { "" }
        );
        Self {
            xid: xid.to_vec(),
            ecc_uncorrected,
            row_remap_failure,
            gpu_lost,
            what,
        }
    }

    fn event(&self, kind: EventKind, code: i64) -> bool {
        match kind {
            EventKind::Xid => self.xid.is_empty() || self.xid.contains(&code),
            EventKind::EccUncorrected => self.ecc_uncorrected,
            EventKind::GpuLost => self.gpu_lost,
        }
    }
}

pub(super) struct Events {
    watch: Watch,
    flagged: BTreeSet<usize>,
    total: usize,
}

impl Events {
    pub(super) fn new(watch: Watch) -> Self {
        Self {
            watch,
            flagged: BTreeSet::new(),
            total: 0,
        }
    }

    /// The failing item of one reported event.
    fn event_item(&self, job: &JobEvidence, result: &StepResult, event: &GpuEvent) -> EvidenceItem {
        let (label, signature) = match event.kind {
            EventKind::Xid => (format!("XID {}", event.code), format!("XID {}", event.code)),
            EventKind::EccUncorrected => (
                format!("{} uncorrected ECC error(s)", event.code),
                "uncorrected ECC".to_owned(),
            ),
            EventKind::GpuLost => ("GPU lost".to_owned(), "GPU lost".to_owned()),
        };
        EvidenceItem {
            step: Some(result.step_name.clone()),
            attempt: Some(result.attempt),
            gpu_index: Some(event.gpu_index),
            value: Some(event.code as f64),
            limit: Some(self.watch.what.clone()),
            signature: Some(signature),
            ..item(
                job,
                format!(
                    "{label} on GPU {} during {}: {}",
                    event.gpu_index, result.step_name, event.detail
                ),
                false,
            )
        }
    }

    /// The failing items of what the counters of one GPU's telemetry show: uncorrected ECC
    /// errors no event reported, a row remap failure.
    fn counter_items(
        &self,
        job: &JobEvidence,
        result: &StepResult,
        gpu: &GpuTelemetry,
        items: &mut Vec<EvidenceItem>,
    ) {
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
        if self.watch.ecc_uncorrected && !has_ecc_event && rising(Field::EccUncorrectedVolatile) {
            let delta = gpu
                .field(Field::EccUncorrectedVolatile)
                .map(|s| s.max - s.min);
            flag("uncorrected ECC", delta);
        }
        if self.watch.row_remap_failure && set(Field::RowRemapFailure) {
            flag("row remap failure", Some(1.0));
        }
    }
}

impl Kind for Events {
    /// The watched events of the job, as failing items.
    type Part = Vec<EvidenceItem>;

    fn part(&self, ctx: &Ctx<'_>, j: usize) -> Self::Part {
        let job = ctx.job(j);
        let mut items = Vec::new();
        for result in &job.results {
            for event in &result.events {
                if self.watch.event(event.kind, event.code) {
                    items.push(self.event_item(job, result, event));
                }
            }
            for gpu in &result.telemetry {
                self.counter_items(job, result, gpu, &mut items);
            }
        }
        items
    }

    fn add(&mut self, j: usize, part: &Self::Part) {
        self.total += part.len();
        if !part.is_empty() {
            self.flagged.insert(j);
        }
    }

    fn remove(&mut self, j: usize, part: &Self::Part) {
        self.total -= part.len();
        self.flagged.remove(&j);
    }

    fn judge(&self, parts: &[Self::Part], scope: &Scope, ctx: &Ctx<'_>) -> Judged {
        let what = &self.watch.what;
        if self.total > 0 {
            let mut per_node: BTreeMap<&NodeId, usize> = BTreeMap::new();
            let mut items = Vec::with_capacity(self.total);
            for j in &self.flagged {
                *per_node.entry(&ctx.job(*j).node).or_default() += parts[*j].len();
                items.extend(parts[*j].iter().cloned());
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
        if scope.n_running > 0 {
            return judged(
                Verdict::Waiting,
                format!("no {what} so far; {} job(s) still running", scope.n_running),
                Vec::new(),
            );
        }
        let checked = scope.sample_ok(|j| vec![item(ctx.job(j), "no event", true)]);
        judged(
            Verdict::Passed,
            format!("no {what} on any of {} node(s)", scope.n_in_scope),
            checked,
        )
    }
}
