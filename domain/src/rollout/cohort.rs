//! A wave compared with its cohort (`baseline-by-cohort: true`): the fleet's nodes the
//! rollout has not updated yet, watched over the same span as the wave's soak windows.
//! [`judge_cohort`] decides the `baseline` and `no-regression` health rules that way, beside
//! [`super::judge_soak`]; the controller joins the verdicts with [`super::combine`].
//!
//! - The **cohort** of the current wave ([`cohort_nodes`]): the nodes of the later waves
//!   still `waiting`. Nodes that went through the procedure (or its rollback) run other
//!   firmware than the fleet did, and a skipped wave's nodes were set aside by a person: none
//!   of them is a baseline.
//! - Its **window** ([`cohort_windows`]): from the earliest end of a wave node's procedure to
//!   the end of the wave's windows, so both sides are watched over the same span.
//! - Comparisons are made per value of the rule's `per` label; `scope` picks the nodes of
//!   both sides, and `since` applies as in the gate.
//! - `baseline`: `measurement` is a telemetry field; on each side, `aggregate` over each
//!   GPU's mean of it in its window; the wave fails when worse by more than
//!   `max-regression-pct` in `direction`.
//! - `no-regression` without `measurement`: the share of nodes without a critical event in
//!   their window (an XID of [`CRITICAL_XIDS`], an uncorrected ECC error, a lost GPU), wave
//!   against cohort, by a one-sided Fisher's exact test; with `measurement` (a telemetry
//!   field), each GPU's mean of it in its window by a one-sided Mann–Whitney U test in
//!   `direction`. Samples are nodes for the first, GPUs for the second; a p-value below
//!   `significance` is a regression.
//!
//! A regression fails the rule at once. A comparison holding so far waits until the soak's
//! telemetry was all written (and, for `no-regression`, until the wave side has
//! `min-samples`). A comparison that cannot be made is never passed silently: a group
//! without cohort (the last wave has none at all), a cohort side with fewer than
//! `min-samples`, or a wave side still short once everything is in, is named in
//! [`CohortVerdict::not_compared`] and holds nothing up, as the gate's `no-regression` does
//! with a baseline too small to compare with.

use super::machine::{HealthFailure, HealthVerdict, RolloutFacts};
use super::soak::{SoakFacts, SoakWindow, gpu_values};
use crate::NodeId;
use crate::fleet::Labels;
use crate::gate::{Aggregate, CRITICAL_XIDS, Direction, Rule, RuleKind, Stat};
use crate::stats::{self, Alternative};
use crate::telemetry::{EventKind, Field};
use std::collections::{BTreeMap, BTreeSet};

use super::machine::NodeProgress;

/// The verdict of the comparisons with the cohort.
#[derive(Clone, Debug, PartialEq)]
pub struct CohortVerdict {
    /// Failed with each rule that found the wave worse; waiting while a comparison holding
    /// so far still lacks evidence; passed otherwise.
    pub verdict: HealthVerdict,
    /// Each comparison that could not be made, saying which rule, which group and why.
    pub not_compared: Vec<String>,
}

/// Whether a rule is judged against the cohort when the file has `baseline-by-cohort: true`.
pub fn compares_with_cohort(rule: &Rule) -> bool {
    matches!(
        rule.kind,
        RuleKind::Baseline { .. } | RuleKind::NoRegression { .. }
    )
}

/// The current wave's cohort: the nodes of the later waves not started yet, in wave order.
pub fn cohort_nodes<'a>(facts: &RolloutFacts<'a>) -> Vec<&'a NodeId> {
    facts
        .waves
        .cohort(facts.state.wave)
        .into_iter()
        .filter(|node| {
            facts.progress.get(*node).copied().unwrap_or_default() == NodeProgress::Waiting
        })
        .collect()
}

/// The cohort's windows: each node (with its labels) watched over the span of the wave's
/// `windows`, from the earliest one's start to the latest one's end; none without a window.
pub fn cohort_windows(windows: &[SoakWindow], cohort: &[(NodeId, Labels)]) -> Vec<SoakWindow> {
    let from = windows.iter().map(|window| window.from).min();
    let until = windows.iter().map(|window| window.until).max();
    let (Some(from), Some(until)) = (from, until) else {
        return Vec::new();
    };
    cohort
        .iter()
        .map(|(node, labels)| SoakWindow {
            node: node.clone(),
            labels: labels.clone(),
            from,
            until,
        })
        .collect()
}

/// Judges the `baseline` and `no-regression` rules of `rules`: the wave's windows
/// (`facts.windows`) against the `cohort`'s; `facts.events` and `facts.buckets` hold both
/// sides' (what lies outside a node's window is left out here).
pub fn judge_cohort(rules: &[Rule], facts: &SoakFacts<'_>, cohort: &[SoakWindow]) -> CohortVerdict {
    let mut failures = Vec::new();
    let mut waiting = false;
    let mut not_compared = Vec::new();
    for rule in rules.iter().filter(|rule| compares_with_cohort(rule)) {
        if rule
            .since
            .is_some_and(|since| facts.release_created < since)
        {
            continue;
        }
        let in_scope = |windows: &[SoakWindow]| -> Vec<SoakWindow> {
            windows
                .iter()
                .filter(|window| rule.scope.matches(&window.labels))
                .cloned()
                .collect()
        };
        let sides = Sides {
            wave: in_scope(facts.windows),
            cohort: in_scope(cohort),
            facts,
        };
        if sides.wave.is_empty() {
            // No node of the wave ended its procedure yet (or none is in scope).
            waiting |= !facts.telemetry_complete;
            if facts.telemetry_complete {
                not_compared.push(format!(
                    "rule {}: no node of the wave in its scope to compare with the cohort",
                    rule.id
                ));
            }
            continue;
        }
        let findings = match &rule.kind {
            RuleKind::Baseline {
                measurement,
                aggregate,
                max_regression_pct,
                direction,
                per,
                ..
            } => match measurement.parse::<Field>() {
                Ok(field) => {
                    sides.baseline(field, *aggregate, *max_regression_pct, *direction, per)
                }
                Err(message) => vec![(String::new(), Finding::Unusable(message))],
            },
            RuleKind::NoRegression {
                per,
                significance,
                min_samples,
                measurement: None,
                ..
            } => sides.event_free_shares(per, *significance, *min_samples),
            RuleKind::NoRegression {
                per,
                significance,
                min_samples,
                measurement: Some(measurement),
                direction,
                ..
            } => match measurement.parse::<Field>() {
                Ok(field) => sides.means(field, per, *significance, *min_samples, *direction),
                Err(message) => vec![(String::new(), Finding::Unusable(message))],
            },
            _ => continue,
        };
        let mut reasons = Vec::new();
        let mut nodes: BTreeSet<NodeId> = BTreeSet::new();
        for (group, finding) in findings {
            match finding {
                Finding::Worse { text, wave_nodes } => {
                    reasons.push(text);
                    nodes.extend(wave_nodes);
                }
                Finding::Unusable(message) => {
                    reasons.push(format!("cannot compare with the cohort: {message}"));
                }
                Finding::Held => waiting |= !facts.telemetry_complete,
                Finding::Short => waiting = true,
                Finding::NotCompared(why) => {
                    not_compared.push(format!("rule {} on {group}: {why}", rule.id));
                }
            }
        }
        if !reasons.is_empty() {
            failures.push(HealthFailure {
                rule_id: rule.id.clone(),
                reason: format!(
                    "against the cohort (the fleet's nodes not updated yet) over the soak: {}",
                    reasons.join("; ")
                ),
                nodes: nodes.into_iter().collect(),
            });
        }
    }
    let verdict = if !failures.is_empty() {
        HealthVerdict::Failed(failures)
    } else if waiting {
        HealthVerdict::Waiting
    } else {
        HealthVerdict::Passed
    };
    CohortVerdict {
        verdict,
        not_compared,
    }
}

/// How one group's comparison came out.
enum Finding {
    /// The wave is worse: the sentence saying so, and the wave's nodes it is about.
    Worse {
        text: String,
        wave_nodes: Vec<NodeId>,
    },
    /// Not worse so far.
    Held,
    /// The wave side has too few samples yet.
    Short,
    /// Cannot be compared, and never will be: why.
    NotCompared(String),
    /// The rule cannot be evaluated (it fails closed).
    Unusable(String),
}

/// Both sides of a comparison, the windows in the rule's scope.
struct Sides<'a> {
    wave: Vec<SoakWindow>,
    cohort: Vec<SoakWindow>,
    facts: &'a SoakFacts<'a>,
}

/// `sku=hgx-h100`: the group of a node by label `per`.
fn group_of(labels: &Labels, per: &str) -> String {
    match labels.get(per) {
        Some(value) => format!("{per}={value}"),
        None => format!("(no {per})"),
    }
}

/// Each GPU's mean of a field in its node's window: `(node, value)` per GPU.
type GpuMeans = Vec<(NodeId, f64)>;
/// [`GpuMeans`] by group.
type GroupValues = BTreeMap<String, GpuMeans>;

impl Sides<'_> {
    /// Whether everything is in: the soak's telemetry was all written (by then every node of
    /// the wave has ended its procedure), so a side short of samples stays short.
    fn complete(&self) -> bool {
        self.facts.telemetry_complete
    }

    /// Per group of the wave's nodes, each side's GPU means of `field`.
    fn gpu_means(&self, field: Field, per: &str) -> BTreeMap<String, (GpuMeans, GpuMeans)> {
        let by_group = |windows: &[SoakWindow]| -> GroupValues {
            let refs: Vec<&SoakWindow> = windows.iter().collect();
            let groups: BTreeMap<&NodeId, String> = windows
                .iter()
                .map(|window| (&window.node, group_of(&window.labels, per)))
                .collect();
            let mut values = GroupValues::new();
            for (node, _, value) in gpu_values(&refs, self.facts.buckets, field, Stat::Mean) {
                if let Some(group) = groups.get(&node) {
                    values.entry(group.clone()).or_default().push((node, value));
                }
            }
            values
        };
        let (mut wave, mut cohort) = (by_group(&self.wave), by_group(&self.cohort));
        self.wave
            .iter()
            .map(|window| group_of(&window.labels, per))
            .collect::<BTreeSet<String>>()
            .into_iter()
            .map(|group| {
                let sides = (
                    wave.remove(&group).unwrap_or_default(),
                    cohort.remove(&group).unwrap_or_default(),
                );
                (group, sides)
            })
            .collect()
    }

    /// `baseline`: per group, `aggregate` of the GPU means on each side.
    fn baseline(
        &self,
        field: Field,
        aggregate: Aggregate,
        max_pct: f64,
        direction: Direction,
        per: &str,
    ) -> Vec<(String, Finding)> {
        self.gpu_means(field, per)
            .into_iter()
            .map(|(group, (wave, cohort))| {
                let finding = if cohort.is_empty() {
                    Finding::NotCompared(format!("no node of the cohort reported {field}"))
                } else if wave.is_empty() {
                    if self.complete() {
                        Finding::NotCompared(format!("the wave's nodes reported no {field}"))
                    } else {
                        Finding::Short
                    }
                } else {
                    let values = |side: &[(NodeId, f64)]| -> Vec<f64> {
                        side.iter().map(|(_, value)| *value).collect()
                    };
                    let now = aggregate.apply(&values(&wave));
                    let before = aggregate.apply(&values(&cohort));
                    let change_pct = if before == 0.0 {
                        0.0
                    } else {
                        (now - before) / before.abs() * 100.0
                    };
                    let regression = match direction {
                        Direction::HigherIsBetter => -change_pct,
                        Direction::LowerIsBetter => change_pct,
                    };
                    if regression > max_pct {
                        Finding::Worse {
                            text: format!(
                                "{aggregate} of {field} per GPU on {group}: wave {} ({} GPU(s)) vs \
                                 cohort {} ({} GPU(s)), {change_pct:+.1}%, more than {max_pct}% \
                                 worse ({direction}); wave nodes: {}",
                                round(now),
                                wave.len(),
                                round(before),
                                cohort.len(),
                                node_means(&wave)
                            ),
                            wave_nodes: nodes_of(&wave),
                        }
                    } else {
                        Finding::Held
                    }
                };
                (group, finding)
            })
            .collect()
    }

    /// `no-regression` with a measurement: per group, the GPU means by a one-sided
    /// Mann–Whitney U test.
    fn means(
        &self,
        field: Field,
        per: &str,
        significance: f64,
        min_samples: u32,
        direction: Direction,
    ) -> Vec<(String, Finding)> {
        let min = min_samples as usize;
        self.gpu_means(field, per)
            .into_iter()
            .map(|(group, (wave, cohort))| {
                let finding = if cohort.len() < min {
                    Finding::NotCompared(format!(
                        "the cohort has {} GPU(s) reporting {field}, fewer than min-samples {min}",
                        cohort.len()
                    ))
                } else if wave.len() < min {
                    if self.complete() {
                        Finding::NotCompared(format!(
                            "the wave has {} GPU(s) reporting {field}, fewer than min-samples {min}",
                            wave.len()
                        ))
                    } else {
                        Finding::Short
                    }
                } else {
                    let now: Vec<f64> = wave.iter().map(|(_, value)| *value).collect();
                    let before: Vec<f64> = cohort.iter().map(|(_, value)| *value).collect();
                    // One-sided in the bad direction: hotter when lower is better.
                    let alternative = match direction {
                        Direction::HigherIsBetter => Alternative::Less,
                        Direction::LowerIsBetter => Alternative::Greater,
                    };
                    let test = stats::mann_whitney_u(&now, &before, alternative);
                    if test.p < significance {
                        Finding::Worse {
                            text: format!(
                                "{field} per-GPU means on {group}: wave median {} ({} GPU(s)) vs \
                                 cohort median {} ({} GPU(s)), {direction}, Mann-Whitney one-sided \
                                 p={} < {significance}; wave nodes: {}",
                                round(Aggregate::P50.apply(&now)),
                                now.len(),
                                round(Aggregate::P50.apply(&before)),
                                before.len(),
                                stats::format_p(test.p),
                                node_means(&wave)
                            ),
                            wave_nodes: nodes_of(&wave),
                        }
                    } else {
                        Finding::Held
                    }
                };
                (group, finding)
            })
            .collect()
    }

    /// `no-regression` without a measurement: per group, the share of nodes without a
    /// critical event in their window by a one-sided Fisher's exact test.
    fn event_free_shares(
        &self,
        per: &str,
        significance: f64,
        min_samples: u32,
    ) -> Vec<(String, Finding)> {
        let min = u64::from(min_samples);
        let with_event = |windows: &[SoakWindow]| -> BTreeSet<NodeId> {
            let by_node: BTreeMap<&NodeId, &SoakWindow> = windows
                .iter()
                .map(|window| (&window.node, window))
                .collect();
            self.facts
                .events
                .iter()
                .filter(|(node, event)| {
                    let critical = match event.kind {
                        EventKind::Xid => CRITICAL_XIDS.contains(&event.code),
                        EventKind::EccUncorrected | EventKind::GpuLost => true,
                    };
                    critical
                        && by_node
                            .get(node)
                            .is_some_and(|window| window.holds(event.at))
                })
                .map(|(node, _)| node.clone())
                .collect()
        };
        let (wave_bad, cohort_bad) = (with_event(&self.wave), with_event(&self.cohort));
        // Per group: (nodes, nodes with a critical event) on each side.
        let tally = |windows: &[SoakWindow], bad: &BTreeSet<NodeId>| {
            let mut groups: BTreeMap<String, (u64, Vec<NodeId>)> = BTreeMap::new();
            for window in windows {
                let entry = groups.entry(group_of(&window.labels, per)).or_default();
                entry.0 += 1;
                if bad.contains(&window.node) {
                    entry.1.push(window.node.clone());
                }
            }
            groups
        };
        let wave = tally(&self.wave, &wave_bad);
        let cohort = tally(&self.cohort, &cohort_bad);
        let share = |n: u64, bad: u64| {
            let clean = n - bad;
            format!(
                "{clean}/{n} ({:.1}%)",
                clean as f64 / n.max(1) as f64 * 100.0
            )
        };
        wave.into_iter()
            .map(|(group, (n_wave, bad_wave))| {
                let (n_cohort, bad_cohort) = cohort.get(&group).cloned().unwrap_or_default();
                let finding = if n_cohort < min {
                    Finding::NotCompared(format!(
                        "the cohort has {n_cohort} node(s), fewer than min-samples {min}"
                    ))
                } else if n_wave < min {
                    if self.complete() {
                        Finding::NotCompared(format!(
                            "the wave has {n_wave} node(s), fewer than min-samples {min}"
                        ))
                    } else {
                        Finding::Short
                    }
                } else {
                    let (b_wave, b_cohort) = (bad_wave.len() as u64, bad_cohort.len() as u64);
                    let table = [[n_wave - b_wave, b_wave], [n_cohort - b_cohort, b_cohort]];
                    let p = stats::fisher_exact(table, Alternative::Less);
                    if p < significance {
                        Finding::Worse {
                            text: format!(
                                "nodes without a critical event on {group}: wave {} vs cohort \
                                 {}, Fisher one-sided p={} < {significance}; wave nodes with \
                                 one: {}",
                                share(n_wave, b_wave),
                                share(n_cohort, b_cohort),
                                stats::format_p(p),
                                names(&bad_wave)
                            ),
                            wave_nodes: bad_wave,
                        }
                    } else {
                        Finding::Held
                    }
                };
                (group, finding)
            })
            .collect()
    }
}

/// A figure as people read it: at most one decimal.
fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// The distinct nodes of per-GPU values, in order.
fn nodes_of(values: &[(NodeId, f64)]) -> Vec<NodeId> {
    let mut nodes: Vec<NodeId> = values.iter().map(|(node, _)| node.clone()).collect();
    nodes.dedup();
    nodes
}

/// `prod-04 45.1, prod-05 36`: each node's mean over its GPUs' means, hottest first.
fn node_means(values: &[(NodeId, f64)]) -> String {
    let mut means: Vec<(NodeId, f64)> = nodes_of(values)
        .into_iter()
        .map(|node| {
            let mine: Vec<f64> = values
                .iter()
                .filter(|(of, _)| *of == node)
                .map(|(_, value)| *value)
                .collect();
            (node, Aggregate::Mean.apply(&mine))
        })
        .collect();
    means.sort_by(|a, b| b.1.total_cmp(&a.1));
    means
        .iter()
        .map(|(node, mean)| format!("{node} {}", round(*mean)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn names(nodes: &[NodeId]) -> String {
    nodes
        .iter()
        .map(NodeId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Selector;
    use crate::fleet_history::{Bucket, Stat as Samples};
    use crate::rollout::machine::{Progress, RolloutState};
    use crate::rollout::waves::{Wave, WavePlan};
    use crate::telemetry::GpuEvent;
    use crate::test_support::{at, rollout_spec, rule, xid};

    /// `baseline` on gpu_temp_c: the mean over GPUs may be at most 10 % hotter.
    fn cooler_than_cohort() -> Rule {
        rule(
            "temp-vs-cohort",
            RuleKind::Baseline {
                measurement: "gpu_temp_c".into(),
                step: None,
                aggregate: Aggregate::Mean,
                max_regression_pct: 10.0,
                direction: Direction::LowerIsBetter,
                per: "sku".into(),
            },
        )
    }

    fn no_regression(measurement: Option<&str>, min_samples: u32) -> Rule {
        rule(
            "no-regression",
            RuleKind::NoRegression {
                step: None,
                per: "sku".into(),
                significance: 0.05,
                min_samples,
                measurement: measurement.map(str::to_owned),
                direction: Direction::LowerIsBetter,
            },
        )
    }

    fn window(node: &str, sku: &str, from: i64) -> SoakWindow {
        SoakWindow {
            node: node.into(),
            labels: [("sku".to_owned(), sku.to_owned())].into(),
            from: at(from),
            until: at(200),
        }
    }

    /// A 10-second bucket of GPU 0 of `node` with every sample at `temp`.
    fn temp(node: &str, start: i64, temp: f64) -> Bucket {
        Bucket {
            node: node.into(),
            gpu_index: 0,
            resolution_s: 10,
            start: at(start),
            fields: [(
                Field::GpuTempC,
                Samples {
                    min: temp,
                    max: temp,
                    sum: 2.0 * temp,
                    samples: 2,
                },
            )]
            .into(),
        }
    }

    struct World {
        wave: Vec<SoakWindow>,
        cohort: Vec<SoakWindow>,
        events: Vec<(NodeId, GpuEvent)>,
        buckets: Vec<Bucket>,
    }

    impl World {
        /// Wave w1 (sku a) from 100 s; cohort c1, c2 (sku a) and c3 (sku b) over the same
        /// span; every GPU at 35 °C in its window, w1's at `w1_temp`.
        fn new(w1_temp: f64) -> Self {
            let wave = vec![window("w1", "a", 100)];
            let labelled = |node: &str, sku: &str| {
                (
                    NodeId::from(node),
                    [("sku".to_owned(), sku.to_owned())].into(),
                )
            };
            let cohort = cohort_windows(
                &wave,
                &[
                    labelled("c1", "a"),
                    labelled("c2", "a"),
                    labelled("c3", "b"),
                ],
            );
            let mut buckets = vec![
                temp("w1", 110, w1_temp),
                temp("w1", 90, 99.0), // before its window: its procedure
                temp("c3", 120, 35.0),
            ];
            for node in ["c1", "c2"] {
                buckets.push(temp(node, 110, 35.0));
                buckets.push(temp(node, 50, 80.0)); // before the span
            }
            Self {
                wave,
                cohort,
                events: Vec::new(),
                buckets,
            }
        }

        fn judge(&self, rules: &[Rule], complete: bool) -> CohortVerdict {
            judge_cohort(
                rules,
                &SoakFacts {
                    release_created: at(0),
                    windows: &self.wave,
                    events: &self.events,
                    buckets: &self.buckets,
                    telemetry_complete: complete,
                },
                &self.cohort,
            )
        }
    }

    #[test]
    fn the_cohort_is_the_later_waves_nodes_not_started_and_shares_the_wave_s_span() {
        let waves = WavePlan {
            waves: [&["c"][..], &["w1", "w2"], &["n1", "n2", "n3", "n4"]]
                .iter()
                .enumerate()
                .map(|(spec_idx, nodes)| Wave {
                    spec_idx,
                    nodes: nodes.iter().map(|n| NodeId::from(*n)).collect(),
                })
                .collect(),
            left_out: Vec::new(),
        };
        use NodeProgress as N;
        let progress: Progress = [
            ("c", N::Passed),
            ("w1", N::Passed),
            ("w2", N::InProcedure),
            ("n1", N::Waiting),
            ("n2", N::InProcedure),
            ("n3", N::RolledBack),
        ]
        .iter()
        .map(|(node, progress)| (NodeId::from(*node), *progress))
        .collect();
        let spec = rollout_spec();
        let state = RolloutState {
            wave: 1,
            ..RolloutState::new(at(0))
        };
        let facts = RolloutFacts {
            spec: &spec,
            waves: &waves,
            state: &state,
            progress: &progress,
        };
        // n4 has no progress recorded: waiting.
        assert_eq!(cohort_nodes(&facts), [&NodeId::from("n1"), &"n4".into()]);
        let last = RolloutState {
            wave: 2,
            ..state.clone()
        };
        let facts = RolloutFacts {
            state: &last,
            ..facts
        };
        assert!(cohort_nodes(&facts).is_empty(), "the last wave has none");

        let wave = [window("w1", "a", 100), window("w2", "a", 150)];
        let cohort = cohort_windows(&wave, &[("n1".into(), Labels::new())]);
        assert_eq!((cohort[0].from, cohort[0].until), (at(100), at(200)));
        assert!(cohort_windows(&[], &[("n1".into(), Labels::new())]).is_empty());
    }

    #[test]
    fn a_wave_hotter_than_its_cohort_fails_naming_the_group_the_figures_and_the_nodes() {
        let verdict = World::new(45.0).judge(&[cooler_than_cohort()], false);
        let HealthVerdict::Failed(failures) = verdict.verdict else {
            panic!("45 °C against 35 °C is 28.6 % hotter: {verdict:?}");
        };
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].rule_id, "temp-vs-cohort");
        assert_eq!(failures[0].nodes, [NodeId::from("w1")]);
        assert_eq!(
            failures[0].reason,
            "against the cohort (the fleet's nodes not updated yet) over the soak: mean of \
             gpu_temp_c per GPU on sku=a: wave 45 (1 GPU(s)) vs cohort 35 (2 GPU(s)), +28.6%, more \
             than 10% worse (lower-is-better); wave nodes: w1 45"
        );
    }

    #[test]
    fn a_wave_like_its_cohort_waits_for_the_soak_s_telemetry_then_passes() {
        for w1_temp in [35.0, 38.0] {
            let world = World::new(w1_temp);
            let rules = [cooler_than_cohort()];
            assert_eq!(world.judge(&rules, false).verdict, HealthVerdict::Waiting);
            let done = world.judge(&rules, true);
            assert_eq!(done.verdict, HealthVerdict::Passed, "{w1_temp}");
            assert!(done.not_compared.is_empty(), "{done:?}");
        }
        // Better is never worse: a cooler wave passes however much cooler.
        assert_eq!(
            World::new(20.0)
                .judge(&[cooler_than_cohort()], true)
                .verdict,
            HealthVerdict::Passed
        );
    }

    #[test]
    fn a_group_without_cohort_is_named_as_not_compared() {
        let mut world = World::new(90.0);
        world.wave = vec![window("w1", "b", 100), window("w9", "z", 100)];
        world.buckets.push(temp("w9", 110, 90.0));
        let verdict = world.judge(&[cooler_than_cohort()], true);
        // sku=b: 90 against c3's 35 fails; sku=z has no cohort node at all.
        let HealthVerdict::Failed(failures) = &verdict.verdict else {
            panic!("{verdict:?}");
        };
        assert_eq!(failures[0].nodes, [NodeId::from("w1")]);
        assert!(
            failures[0].reason.contains("on sku=b: wave 90"),
            "{failures:?}"
        );
        assert_eq!(
            verdict.not_compared,
            ["rule temp-vs-cohort on sku=z: no node of the cohort reported gpu_temp_c"]
        );
        // The last wave: no cohort; passes, saying so.
        world.cohort.clear();
        world.wave.truncate(1);
        let verdict = world.judge(&[cooler_than_cohort()], true);
        assert_eq!(verdict.verdict, HealthVerdict::Passed);
        assert_eq!(verdict.not_compared.len(), 1, "{verdict:?}");
    }

    #[test]
    fn too_few_samples_wait_while_the_wave_soaks_then_are_named() {
        let world = World::new(90.0);
        let rules = [no_regression(Some("gpu_temp_c"), 2)];
        assert_eq!(world.judge(&rules, false).verdict, HealthVerdict::Waiting);
        let done = world.judge(&rules, true);
        assert_eq!(done.verdict, HealthVerdict::Passed);
        assert_eq!(
            done.not_compared,
            [
                "rule no-regression on sku=a: the wave has 1 GPU(s) reporting \
              gpu_temp_c, fewer than min-samples 2"
            ]
        );
        // A cohort too small never grows: named at once.
        let rules = [no_regression(Some("gpu_temp_c"), 3)];
        let verdict = world.judge(&rules, false);
        assert!(
            verdict.not_compared[0].contains("the cohort has 2 GPU(s)"),
            "{verdict:?}"
        );
    }

    #[test]
    fn no_regression_with_a_measurement_is_a_mann_whitney_test_on_gpu_means() {
        // Three wave nodes at 50-52 °C against six cohort nodes at 34-36 °C: the smallest
        // possible exact one-sided p for 3 against 6 is 1/84 = 0.0119.
        let mut world = World::new(35.0);
        world.wave = (1..=3)
            .map(|i| window(&format!("w{i}"), "a", 100))
            .collect();
        let cohort: Vec<(NodeId, Labels)> = (1..=6)
            .map(|i| {
                (
                    NodeId::from(format!("c{i}").as_str()),
                    [("sku".to_owned(), "a".to_owned())].into(),
                )
            })
            .collect();
        world.cohort = cohort_windows(&world.wave, &cohort);
        world.buckets = (1..=3)
            .map(|i| temp(&format!("w{i}"), 120, 49.0 + f64::from(i)))
            .chain((1..=6).map(|i| temp(&format!("c{i}"), 120, 33.5 + f64::from(i) / 2.0)))
            .collect();
        let verdict = world.judge(&[no_regression(Some("gpu_temp_c"), 3)], true);
        let HealthVerdict::Failed(failures) = &verdict.verdict else {
            panic!("{verdict:?}");
        };
        assert_eq!(failures[0].nodes.len(), 3);
        assert_eq!(
            failures[0].reason,
            "against the cohort (the fleet's nodes not updated yet) over the soak: gpu_temp_c \
             per-GPU means on sku=a: wave median 51 (3 GPU(s)) vs cohort median 35 (6 GPU(s)), \
             lower-is-better, Mann-Whitney one-sided p=0.0119 < 0.05; wave nodes: w3 52, w2 51, \
             w1 50"
        );
        // The same figures the other way round are no regression.
        for bucket in &mut world.buckets {
            let stat = bucket
                .fields
                .get_mut(&Field::GpuTempC)
                .expect("a temperature");
            let flipped = 100.0 - stat.max;
            *stat = Samples {
                min: flipped,
                max: flipped,
                sum: 2.0 * flipped,
                samples: 2,
            };
        }
        let verdict = world.judge(&[no_regression(Some("gpu_temp_c"), 3)], true);
        assert_eq!(verdict.verdict, HealthVerdict::Passed, "{verdict:?}");
    }

    #[test]
    fn no_regression_without_a_measurement_compares_nodes_free_of_critical_events_by_fisher() {
        let mut world = World::new(35.0);
        let labelled = |prefix: &str, n: usize| -> Vec<(NodeId, Labels)> {
            (1..=n)
                .map(|i| {
                    (
                        NodeId::from(format!("{prefix}{i}").as_str()),
                        [("sku".to_owned(), "a".to_owned())].into(),
                    )
                })
                .collect()
        };
        world.wave = labelled("w", 5)
            .iter()
            .map(|(node, _)| window(node.as_str(), "a", 100))
            .collect();
        world.cohort = cohort_windows(&world.wave, &labelled("c", 20));
        let rules = [no_regression(None, 5)];
        // Three wave nodes with XID 79 in their windows; one cohort node with one; an XID
        // before the windows, and one not critical (13), count for nothing.
        world.events = vec![
            xid("w1", 79, 120),
            xid("w2", 79, 130),
            xid("w3", 79, 140),
            xid("w4", 79, 50),
            xid("w5", 13, 150),
            xid("c1", 79, 150),
        ];
        let verdict = world.judge(&rules, false);
        let HealthVerdict::Failed(failures) = &verdict.verdict else {
            panic!("{verdict:?}");
        };
        assert_eq!(
            failures[0].nodes,
            ["w1", "w2", "w3"].map(NodeId::from).to_vec()
        );
        assert!(
            failures[0].reason.contains(
                "nodes without a critical event on sku=a: wave 2/5 (40.0%) vs cohort 19/20 \
                 (95.0%), Fisher one-sided p=0.0"
            ) && failures[0]
                .reason
                .ends_with("< 0.05; wave nodes with one: w1, w2, w3"),
            "{failures:?}"
        );
        // One wave node with one, like the cohort's share: no regression.
        world.events.truncate(1);
        assert_eq!(world.judge(&rules, true).verdict, HealthVerdict::Passed);
    }

    #[test]
    fn scope_and_since_apply_to_both_sides() {
        let world = World::new(45.0);
        let mut scoped = cooler_than_cohort();
        scoped.scope = Selector([("sku".to_owned(), "b".to_owned())].into());
        let verdict = world.judge(&[scoped], true);
        assert_eq!(verdict.verdict, HealthVerdict::Passed);
        assert_eq!(
            verdict.not_compared,
            ["rule temp-vs-cohort: no node of the wave in its scope to compare with the cohort"]
        );
        let mut later = cooler_than_cohort();
        later.since = Some(at(1));
        assert_eq!(
            world.judge(&[later], true),
            CohortVerdict {
                verdict: HealthVerdict::Passed,
                not_compared: Vec::new()
            }
        );
        // Other kinds are the soak's and the gate's to judge.
        let other = rule("no-xid", RuleKind::NoXid { codes: vec![] });
        assert_eq!(world.judge(&[other], false).verdict, HealthVerdict::Passed);
    }
}
