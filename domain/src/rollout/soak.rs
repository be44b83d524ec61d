//! A wave's soak judged over fleet telemetry: after a node's procedure ended, what its agent
//! reports outside steps (`PushTelemetry`: GPU events, telemetry buckets) counts for the
//! rollout's health rules until the wave's soak ends. [`judge_soak`] decides, beside the
//! health gate's decision over the procedure runs; [`combine`] joins the two verdicts.
//!
//! Rules judged here: `no-xid` and `no-events` (an event of a watched kind seen in a node's
//! window fails them; `no-events` with `row-remap-failure` also a rising row remap failure
//! counter), and `telemetry` rules without a `step` (each GPU's statistic over its node's
//! window, aggregated over the wave's GPUs, must meet the condition). Other kinds judge the
//! procedure's results only. A rule's `scope` and `since` apply as in the gate.

use super::machine::{HealthFailure, HealthVerdict};
use crate::fleet::Labels;
use crate::fleet_history::Bucket;
use crate::gate::{Rule, RuleKind, Stat};
use crate::telemetry::{EventKind, Field, GpuEvent};
use crate::{NodeId, Timestamp};
use std::collections::BTreeMap;

/// One node's soak window: from its procedure's end to the wave's soak end (or now, while
/// the wave runs or soaks).
#[derive(Clone, Debug, PartialEq)]
pub struct SoakWindow {
    /// The node.
    pub node: NodeId,
    /// Its labels, for the rules' `scope`.
    pub labels: Labels,
    /// When its procedure ended.
    pub from: Timestamp,
    /// When the window closes.
    pub until: Timestamp,
}

impl SoakWindow {
    pub(super) fn holds(&self, at: Timestamp) -> bool {
        self.from <= at && at < self.until
    }
}

/// What a wave's soak is judged on.
#[derive(Clone, Copy, Debug)]
pub struct SoakFacts<'a> {
    /// When the release was created (a rule's `since`).
    pub release_created: Timestamp,
    /// The windows of the wave's nodes whose procedure ended.
    pub windows: &'a [SoakWindow],
    /// The events those nodes reported outside steps, any time (those outside a node's window
    /// are left out here).
    pub events: &'a [(NodeId, GpuEvent)],
    /// Their fleet telemetry buckets (those not wholly inside a node's window are left out).
    pub buckets: &'a [Bucket],
    /// Whether every bucket of the windows was written: until then a `telemetry` rule that
    /// holds so far waits (a failure is a failure at once).
    pub telemetry_complete: bool,
}

/// The verdict of the health rules over the soak windows: `failed` with each rule that saw
/// something (the nodes, and what was seen, in its reason), `waiting` while telemetry still
/// comes, `passed` otherwise (also with no window yet: nothing was seen).
pub fn judge_soak(rules: &[Rule], facts: &SoakFacts<'_>) -> HealthVerdict {
    let mut failures = Vec::new();
    let mut waiting = false;
    for rule in rules {
        if rule
            .since
            .is_some_and(|since| facts.release_created < since)
        {
            continue;
        }
        let windows: Vec<&SoakWindow> = facts
            .windows
            .iter()
            .filter(|window| rule.scope.matches(&window.labels))
            .collect();
        let outcome = match &rule.kind {
            RuleKind::NoXid { codes } => {
                Outcome::from_seen(events_seen(&windows, facts, |event| {
                    event.kind == EventKind::Xid
                        && (codes.is_empty() || codes.contains(&event.code))
                }))
            }
            RuleKind::NoEvents {
                xid,
                ecc_uncorrected,
                row_remap_failure,
                gpu_lost,
            } => {
                let mut seen = events_seen(&windows, facts, |event| match event.kind {
                    EventKind::Xid => xid.is_empty() || xid.contains(&event.code),
                    EventKind::EccUncorrected => *ecc_uncorrected,
                    EventKind::GpuLost => *gpu_lost,
                });
                if *row_remap_failure {
                    seen.extend(remap_failures(&windows, facts));
                }
                Outcome::from_seen(seen)
            }
            RuleKind::Telemetry {
                field,
                step: None,
                stat,
                aggregate,
                condition,
            } => {
                let values = gpu_values(&windows, facts.buckets, *field, *stat);
                if values.is_empty() {
                    Outcome::Held
                } else {
                    let all: Vec<f64> = values.iter().map(|(_, _, value)| *value).collect();
                    let aggregated = aggregate.apply(&all);
                    if condition.holds(aggregated) {
                        Outcome::Held
                    } else {
                        // The GPUs whose own value breaks the condition; all of them when
                        // only the aggregate does.
                        let breaking: Vec<&(NodeId, u32, f64)> = values
                            .iter()
                            .filter(|(_, _, value)| !condition.holds(*value))
                            .collect();
                        let shown = if breaking.is_empty() {
                            values.iter().collect()
                        } else {
                            breaking
                        };
                        let mut nodes: Vec<NodeId> =
                            shown.iter().map(|(node, _, _)| node.clone()).collect();
                        nodes.dedup();
                        let seen: Vec<String> = shown
                            .iter()
                            .take(SHOWN)
                            .map(|(node, gpu, value)| format!("{node} GPU {gpu} = {value}"))
                            .collect();
                        Outcome::Failed {
                            nodes,
                            reason: format!(
                                "during the soak: {aggregate} of {field} {stat} per GPU = \
                                 {aggregated}, which breaks {condition} ({})",
                                seen.join(", ")
                            ),
                        }
                    }
                }
            }
            _ => Outcome::Held,
        };
        match outcome {
            Outcome::Held => {
                if matches!(rule.kind, RuleKind::Telemetry { step: None, .. })
                    && !facts.telemetry_complete
                    && !windows.is_empty()
                {
                    waiting = true;
                }
            }
            Outcome::Failed { nodes, reason } => failures.push(HealthFailure {
                rule_id: rule.id.clone(),
                reason,
                nodes,
            }),
        }
    }
    if !failures.is_empty() {
        HealthVerdict::Failed(failures)
    } else if waiting {
        HealthVerdict::Waiting
    } else {
        HealthVerdict::Passed
    }
}

/// The verdict when a wave's soak telemetry is more than `max_rows` rows even at the coarsest
/// tier of the history, so nothing can be read whole: each rule over it (a `telemetry` rule
/// without `step`, `no-events` watching row remap failures, a `baseline` or a `no-regression`
/// with a measurement) cannot be judged and fails, which halts the rollout as an `error` rule
/// does; `n_nodes` is how many nodes were to be read.
pub fn too_much_telemetry(rules: &[Rule], n_nodes: usize, max_rows: usize) -> HealthVerdict {
    let failures: Vec<HealthFailure> = rules
        .iter()
        .filter(|rule| {
            matches!(
                rule.kind,
                RuleKind::Telemetry { step: None, .. }
                    | RuleKind::NoEvents {
                        row_remap_failure: true,
                        ..
                    }
                    | RuleKind::Baseline { .. }
                    | RuleKind::NoRegression {
                        measurement: Some(_),
                        ..
                    }
            )
        })
        .map(|rule| HealthFailure {
            rule_id: rule.id.clone(),
            reason: format!(
                "cannot be judged: the soak's fleet telemetry of {n_nodes} node(s) is more than \
                 {max_rows} rows even at the coarsest tier; make the waves smaller or the soak \
                 shorter"
            ),
            nodes: Vec::new(),
        })
        .collect();
    HealthVerdict::Failed(failures)
}

/// The health verdict of a wave from its procedure runs' verdict and its soak's: failed if
/// either failed (every failure listed), waiting if either waits, passed when both passed.
pub fn combine(procedure: HealthVerdict, soak: HealthVerdict) -> HealthVerdict {
    match (procedure, soak) {
        (HealthVerdict::Failed(mut failures), HealthVerdict::Failed(more)) => {
            failures.extend(more);
            HealthVerdict::Failed(failures)
        }
        (HealthVerdict::Failed(failures), _) | (_, HealthVerdict::Failed(failures)) => {
            HealthVerdict::Failed(failures)
        }
        (HealthVerdict::Waiting, _) | (_, HealthVerdict::Waiting) => HealthVerdict::Waiting,
        (HealthVerdict::Passed, HealthVerdict::Passed) => HealthVerdict::Passed,
    }
}

/// How many sightings a reason quotes; the nodes are all listed beside it.
const SHOWN: usize = 5;

/// One rule over the soak windows.
enum Outcome {
    Held,
    Failed { nodes: Vec<NodeId>, reason: String },
}

impl Outcome {
    /// Failed when anything was seen: each sighting is a node and what it saw.
    fn from_seen(seen: Vec<(NodeId, String)>) -> Self {
        if seen.is_empty() {
            return Self::Held;
        }
        let mut nodes: Vec<NodeId> = seen.iter().map(|(node, _)| node.clone()).collect();
        nodes.sort();
        nodes.dedup();
        let shown: Vec<String> = seen
            .iter()
            .take(SHOWN)
            .map(|(node, what)| format!("{node}: {what}"))
            .collect();
        let more = seen.len().saturating_sub(SHOWN);
        Self::Failed {
            nodes,
            reason: format!(
                "during the soak: {}{}",
                shown.join("; "),
                if more > 0 {
                    format!(" (and {more} more)")
                } else {
                    String::new()
                }
            ),
        }
    }
}

/// The events inside their node's window that `watched` picks, as sightings.
fn events_seen(
    windows: &[&SoakWindow],
    facts: &SoakFacts<'_>,
    watched: impl Fn(&GpuEvent) -> bool,
) -> Vec<(NodeId, String)> {
    facts
        .events
        .iter()
        .filter(|(node, event)| {
            watched(event)
                && windows
                    .iter()
                    .any(|window| &window.node == node && window.holds(event.at))
        })
        .map(|(node, event)| {
            let what = match event.kind {
                EventKind::Xid => format!("XID {}", event.code),
                EventKind::EccUncorrected => format!("{} uncorrected ECC error(s)", event.code),
                EventKind::GpuLost => "GPU lost".to_owned(),
            };
            (
                node.clone(),
                format!(
                    "{what} on GPU {} at {}",
                    event.gpu_index,
                    event.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            )
        })
        .collect()
}

/// The buckets inside their node's window: those starting in it. A node has one window; a
/// cohort is most of a fleet, so each bucket finds its node's window by name.
fn in_windows<'a>(
    windows: &'a [&'a SoakWindow],
    buckets: &'a [Bucket],
) -> impl Iterator<Item = &'a Bucket> + 'a {
    let by_node: BTreeMap<&NodeId, &SoakWindow> = windows
        .iter()
        .map(|window| (&window.node, *window))
        .collect();
    buckets.iter().filter(move |bucket| {
        by_node
            .get(&bucket.node)
            .is_some_and(|window| window.holds(bucket.start))
    })
}

/// A row remap failure reported in a node's window, once per GPU.
fn remap_failures(windows: &[&SoakWindow], facts: &SoakFacts<'_>) -> Vec<(NodeId, String)> {
    let mut seen: BTreeMap<(NodeId, u32), f64> = BTreeMap::new();
    for bucket in in_windows(windows, facts.buckets) {
        if let Some(stat) = bucket.fields.get(&Field::RowRemapFailure)
            && stat.max > 0.0
        {
            seen.entry((bucket.node.clone(), bucket.gpu_index))
                .or_insert(stat.max);
        }
    }
    seen.into_iter()
        .map(|((node, gpu), _)| (node, format!("row remap failure on GPU {gpu}")))
        .collect()
}

/// Each GPU's `stat` of `field` over its node's window, by node and GPU. Buckets keep each
/// field's smallest, largest, sum and count: `min`, `max` and `mean` are exact; `p99` is
/// taken as the largest sample (never lower than the true one), `last` as the mean of the
/// last bucket.
pub(super) fn gpu_values(
    windows: &[&SoakWindow],
    buckets: &[Bucket],
    field: Field,
    stat: Stat,
) -> Vec<(NodeId, u32, f64)> {
    let mut per_gpu: BTreeMap<(NodeId, u32), (crate::fleet_history::Stat, Timestamp, f64)> =
        BTreeMap::new();
    for bucket in in_windows(windows, buckets) {
        let Some(sample) = bucket.fields.get(&field) else {
            continue;
        };
        per_gpu
            .entry((bucket.node.clone(), bucket.gpu_index))
            .and_modify(|(folded, last_at, last)| {
                folded.merge(sample);
                if bucket.start >= *last_at {
                    *last_at = bucket.start;
                    *last = sample.mean();
                }
            })
            .or_insert((*sample, bucket.start, sample.mean()));
    }
    per_gpu
        .into_iter()
        .map(|((node, gpu), (folded, _, last))| {
            let value = match stat {
                Stat::Min => folded.min,
                Stat::Max | Stat::P99 => folded.max,
                Stat::Mean => folded.mean(),
                Stat::Last => last,
            };
            (node, gpu, value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Selector;
    use crate::fleet_history::Stat as Samples;
    use crate::gate::{Aggregate, Condition};
    use crate::test_support::{at, rule, xid};

    fn no_xid_79() -> Rule {
        rule(
            "no-xid-79",
            RuleKind::NoEvents {
                xid: vec![79],
                ecc_uncorrected: true,
                row_remap_failure: true,
                gpu_lost: true,
            },
        )
    }

    fn temp_below(limit: &str) -> Rule {
        rule(
            "cool",
            RuleKind::Telemetry {
                field: Field::GpuTempC,
                step: None,
                stat: Stat::Max,
                aggregate: Aggregate::Max,
                condition: Condition::parse(limit).expect("a condition"),
            },
        )
    }

    fn window(node: &str, from: i64, until: i64) -> SoakWindow {
        SoakWindow {
            node: node.into(),
            labels: [("rack".to_owned(), "r1".to_owned())].into(),
            from: at(from),
            until: at(until),
        }
    }

    fn bucket(node: &str, gpu: u32, start: i64, field: Field, max: f64) -> Bucket {
        Bucket {
            node: node.into(),
            gpu_index: gpu,
            resolution_s: 10,
            start: at(start),
            fields: [(
                field,
                Samples {
                    min: max - 5.0,
                    max,
                    sum: 2.0 * max - 5.0,
                    samples: 2,
                },
            )]
            .into(),
        }
    }

    fn judge(
        rules: &[Rule],
        windows: &[SoakWindow],
        events: &[(NodeId, GpuEvent)],
        buckets: &[Bucket],
        complete: bool,
    ) -> HealthVerdict {
        judge_soak(
            rules,
            &SoakFacts {
                release_created: at(0),
                windows,
                events,
                buckets,
                telemetry_complete: complete,
            },
        )
    }

    #[test]
    fn an_event_counts_only_inside_its_node_s_window() {
        let windows = [window("n1", 100, 200), window("n2", 150, 200)];
        // (events, verdict): before the procedure ended, at the window's end, another code,
        // another node's window: none count.
        let held: [Vec<(NodeId, GpuEvent)>; 4] = [
            vec![xid("n1", 79, 99)],
            vec![xid("n1", 79, 200)],
            vec![xid("n1", 48, 120)],
            vec![xid("n2", 79, 120), xid("n3", 79, 160)],
        ];
        for events in &held {
            assert_eq!(
                judge(&[no_xid_79()], &windows, events, &[], true),
                HealthVerdict::Passed,
                "{events:?}"
            );
        }
        let HealthVerdict::Failed(failures) =
            judge(&[no_xid_79()], &windows, &[xid("n2", 79, 160)], &[], true)
        else {
            panic!("an XID 79 on n2 in its window fails the rule");
        };
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].rule_id, "no-xid-79");
        assert_eq!(failures[0].nodes, vec![NodeId::from("n2")]);
        assert_eq!(
            failures[0].reason,
            "during the soak: n2: XID 79 on GPU 0 at 2026-01-01T00:02:40Z"
        );
    }

    #[test]
    fn no_xid_ecc_and_row_remap_failures_are_watched_as_the_rule_says() {
        let windows = [window("n1", 0, 100)];
        let ecc = (
            NodeId::from("n1"),
            GpuEvent {
                kind: EventKind::EccUncorrected,
                code: 2,
                ..xid("n1", 0, 10).1
            },
        );
        let any_xid = rule("no-xid", RuleKind::NoXid { codes: vec![] });
        assert_eq!(
            judge(
                std::slice::from_ref(&any_xid),
                &windows,
                std::slice::from_ref(&ecc),
                &[],
                true
            ),
            HealthVerdict::Passed,
            "no-xid does not watch ECC errors"
        );
        assert!(matches!(
            judge(&[any_xid], &windows, &[xid("n1", 13, 10)], &[], true),
            HealthVerdict::Failed(_)
        ));
        let HealthVerdict::Failed(failures) = judge(&[no_xid_79()], &windows, &[ecc], &[], true)
        else {
            panic!("no-events watches uncorrected ECC errors");
        };
        assert!(
            failures[0]
                .reason
                .contains("2 uncorrected ECC error(s) on GPU 0")
        );
        let remap = bucket("n1", 3, 20, Field::RowRemapFailure, 1.0);
        let HealthVerdict::Failed(failures) = judge(&[no_xid_79()], &windows, &[], &[remap], true)
        else {
            panic!("a row remap failure in the window fails no-events");
        };
        assert_eq!(
            failures[0].reason,
            "during the soak: n1: row remap failure on GPU 3"
        );
    }

    #[test]
    fn a_telemetry_limit_breached_in_the_window_fails_naming_the_gpu() {
        let windows = [window("n1", 100, 200), window("n2", 100, 200)];
        let buckets = [
            bucket("n1", 0, 90, Field::GpuTempC, 99.0), // before the window: the procedure
            bucket("n1", 0, 100, Field::GpuTempC, 70.0),
            bucket("n2", 1, 110, Field::GpuTempC, 91.0),
            bucket("n2", 1, 200, Field::GpuTempC, 99.0), // after it
        ];
        let HealthVerdict::Failed(failures) =
            judge(&[temp_below("< 88")], &windows, &[], &buckets, false)
        else {
            panic!("n2's GPU 1 ran at 91 during the soak");
        };
        assert_eq!(failures[0].rule_id, "cool");
        assert_eq!(failures[0].nodes, vec![NodeId::from("n2")]);
        assert_eq!(
            failures[0].reason,
            "during the soak: max of gpu_temp_c max per GPU = 91, which breaks < 88 (n2 GPU 1 = 91)"
        );
        // Within the limit: waits while buckets are still being written, then passes.
        assert_eq!(
            judge(&[temp_below("< 95")], &windows, &[], &buckets, false),
            HealthVerdict::Waiting
        );
        assert_eq!(
            judge(&[temp_below("< 95")], &windows, &[], &buckets, true),
            HealthVerdict::Passed
        );
        // A rule of one step judges the procedure's results, not the soak.
        let mut of_step = temp_below("< 88");
        if let RuleKind::Telemetry { step, .. } = &mut of_step.kind {
            *step = Some("flash".into());
        }
        assert_eq!(
            judge(&[of_step], &windows, &[], &buckets, false),
            HealthVerdict::Passed
        );
    }

    #[test]
    fn scope_and_since_apply_as_in_the_gate() {
        let windows = [window("n1", 0, 100)];
        let mut scoped = no_xid_79();
        scoped.scope = Selector([("rack".to_owned(), "r2".to_owned())].into());
        assert_eq!(
            judge(&[scoped], &windows, &[xid("n1", 79, 10)], &[], true),
            HealthVerdict::Passed
        );
        let mut later = no_xid_79();
        later.since = Some(at(1));
        assert_eq!(
            judge(&[later], &windows, &[xid("n1", 79, 10)], &[], true),
            HealthVerdict::Passed
        );
    }

    #[test]
    fn combined_verdicts_fail_if_either_fails_and_wait_if_either_waits() {
        let failure = |id: &str| HealthFailure {
            rule_id: id.into(),
            reason: String::new(),
            nodes: vec![],
        };
        use HealthVerdict::{Failed, Passed, Waiting};
        let cases = [
            (Passed, Passed, Passed),
            (Passed, Waiting, Waiting),
            (Waiting, Passed, Waiting),
            (
                Waiting,
                Failed(vec![failure("b")]),
                Failed(vec![failure("b")]),
            ),
            (
                Failed(vec![failure("a")]),
                Waiting,
                Failed(vec![failure("a")]),
            ),
            (
                Failed(vec![failure("a")]),
                Failed(vec![failure("b")]),
                Failed(vec![failure("a"), failure("b")]),
            ),
        ];
        for (procedure, soak, expected) in cases {
            assert_eq!(
                combine(procedure.clone(), soak.clone()),
                expected,
                "{procedure:?} + {soak:?}"
            );
        }
    }

    /// Rules over the soak's telemetry cannot be judged when it is too large: each fails,
    /// saying why and what to do; rules over events alone are not named.
    #[test]
    fn too_much_telemetry_fails_each_rule_that_reads_it() {
        let mut spec = crate::test_support::rollout_spec();
        // `no-events` with row remap failures reads the telemetry's counters; `no-xid` reads
        // events only.
        spec.health
            .push(rule("xid", RuleKind::NoXid { codes: vec![79] }));
        let HealthVerdict::Failed(failures) = too_much_telemetry(&spec.health, 3, 500_000) else {
            panic!("fails closed");
        };
        let ids: Vec<&str> = failures.iter().map(|f| f.rule_id.as_str()).collect();
        assert_eq!(ids, ["no-events"]);
        assert!(
            failures[0].reason.contains("3 node(s)")
                && failures[0].reason.contains("make the waves smaller"),
            "{failures:?}"
        );
    }
}
