//! When a rollout should end: an estimate from the per-node procedure durations measured so
//! far, the nodes left, the blast radius, the soaks and the pauses between waves.

use super::machine::{NodeProgress, Phase, RolloutFacts};
use crate::fleet::Labels;
use crate::projection::{chrono_of, median};
use crate::{NodeId, Timestamp};
use std::collections::BTreeMap;
use std::time::Duration;

/// What an estimate is made from, besides the rollout.
#[derive(Clone, Copy, Debug)]
pub struct EtaFacts<'a> {
    /// The rollout.
    pub rollout: RolloutFacts<'a>,
    /// The labels of the fleet's nodes, for the blast radius (a node not listed has none).
    pub labels: &'a BTreeMap<NodeId, Labels>,
    /// When each node in procedure started it.
    pub started_at: &'a BTreeMap<NodeId, Timestamp>,
    /// The procedure durations of the nodes that finished it.
    pub measured: &'a [Duration],
    /// The duration to assume before any was measured (the plan's steps' timeouts, say).
    pub assumed: Duration,
}

/// An estimate of a rollout's end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eta {
    /// When the last wave should have passed.
    pub ends_at: Timestamp,
    /// The per-node duration assumed: the median of those measured, or `assumed`.
    pub per_node: Duration,
    /// How many nodes are still to go through the procedure.
    pub n_remaining: usize,
}

/// Estimates when the rollout ends, or `None` when no estimate holds: it is paused, halted,
/// rolling back or has ended. Each node is assumed to take the median measured duration;
/// nodes start as soon as the rollout's `max-concurrent` allows, in wave order; every wave
/// soaks, and every wave but the last is followed by the pause between waves. Judging is taken
/// as instant, and waits for maintenance windows or for nodes not ready are not foreseen.
pub fn eta(facts: EtaFacts<'_>, now: Timestamp) -> Option<Eta> {
    let rollout = facts.rollout;
    let spec = rollout.spec;
    let state = rollout.state;
    let per_node = median(facts.measured).unwrap_or(facts.assumed);
    let labels_of = |node: &NodeId| facts.labels.get(node).cloned().unwrap_or_default();
    let n_waves = rollout.waves.waves.len();
    let soak = chrono_of(spec.soak);
    let pause = chrono_of(spec.limits.pause_between_waves);
    let per_node_chrono = chrono_of(per_node);
    let mut n_remaining = 0;
    let (mut wave, mut t) = match state.phase {
        Phase::Pending => (0, now),
        Phase::Running => {
            let running: Vec<(Timestamp, Labels)> = rollout
                .active()
                .into_iter()
                .map(|node| {
                    let started = facts.started_at.get(node).copied().unwrap_or(now);
                    ((started + per_node_chrono).max(now), labels_of(node))
                })
                .collect();
            let waiting: Vec<Labels> = rollout
                .waiting_in_wave()
                .into_iter()
                .map(labels_of)
                .collect();
            n_remaining += waiting.len() + running.len();
            let done = simulate(running, waiting, &spec.limits.max_concurrent, per_node, now);
            (state.wave, done + soak)
        }
        Phase::Soaking => (state.wave, (state.since + soak).max(now)),
        Phase::Judging => (state.wave, now),
        Phase::Interval => (state.wave, (state.since + pause).max(now)),
        Phase::Paused
        | Phase::Halted
        | Phase::RollingBack
        | Phase::RolledBack
        | Phase::Completed
        | Phase::Aborted => return None,
    };
    // The waves not started: for Running, Soaking and Judging the current one is done above.
    if matches!(
        state.phase,
        Phase::Running | Phase::Soaking | Phase::Judging
    ) {
        if wave + 1 < n_waves {
            t += pause;
        }
        wave += 1;
    }
    for (idx, plan_wave) in rollout.waves.waves.iter().enumerate().skip(wave) {
        let waiting: Vec<Labels> = plan_wave
            .nodes
            .iter()
            .filter(|node| rollout.progress_of(node) == NodeProgress::Waiting)
            .map(labels_of)
            .collect();
        n_remaining += waiting.len();
        t = simulate(
            Vec::new(),
            waiting,
            &spec.limits.max_concurrent,
            per_node,
            t,
        ) + soak;
        if idx + 1 < n_waves {
            t += pause;
        }
    }
    Some(Eta {
        ends_at: t,
        per_node,
        n_remaining,
    })
}

/// When the last of `waiting` (in order) and `running` (each with its end) has finished,
/// starting each waiting node as soon as `limits` allow and giving it `per_node`.
fn simulate(
    mut running: Vec<(Timestamp, Labels)>,
    waiting: Vec<Labels>,
    limits: &BTreeMap<String, u32>,
    per_node: Duration,
    start: Timestamp,
) -> Timestamp {
    let per_node = chrono_of(per_node);
    let mut waiting: std::collections::VecDeque<Labels> = waiting.into();
    let mut t = start;
    loop {
        let mut idx = 0;
        while idx < waiting.len() {
            let fits = limits.iter().all(|(key, max)| {
                let Some(value) = waiting[idx].get(key) else {
                    return true;
                };
                let n = running
                    .iter()
                    .filter(|(_, labels)| labels.get(key) == Some(value))
                    .count();
                n < *max as usize
            });
            // With nothing running every node fits (each limit is at least 1); the second
            // test only guards the loop against a limit of 0.
            if fits || running.is_empty() {
                let labels = waiting.remove(idx).expect("index is in range");
                running.push((t + per_node, labels));
            } else {
                idx += 1;
            }
        }
        let Some(first_end) = running.iter().map(|(end, _)| *end).min() else {
            return t;
        };
        if waiting.is_empty() {
            return running
                .iter()
                .map(|(end, _)| *end)
                .max()
                .unwrap_or(t)
                .max(t);
        }
        t = first_end.max(t);
        running.retain(|(end, _)| *end > t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::machine::{Progress, RolloutState};
    use crate::rollout::spec::RolloutSpec;
    use crate::rollout::waves::{Wave, WavePlan};
    use crate::test_support::{at, rollout_spec};

    const HOUR: i64 = 3600;
    const MIN: i64 = 60;

    /// Three waves: c1; n1 and n2 (both in rack r1); n3. A 30-minute soak, a 10-minute pause.
    fn spec(rack_limit: Option<u32>) -> RolloutSpec {
        let mut spec = rollout_spec();
        spec.soak = Duration::from_secs(30 * 60);
        spec.limits.pause_between_waves = Duration::from_secs(10 * 60);
        if let Some(n) = rack_limit {
            spec.limits.max_concurrent.insert("rack".into(), n);
        }
        spec
    }

    fn waves() -> WavePlan {
        let wave = |spec_idx, nodes: &[&str]| Wave {
            spec_idx,
            nodes: nodes.iter().map(|n| NodeId::from(*n)).collect(),
        };
        WavePlan {
            waves: vec![wave(0, &["c1"]), wave(1, &["n1", "n2"]), wave(2, &["n3"])],
            left_out: Vec::new(),
        }
    }

    fn labels() -> BTreeMap<NodeId, Labels> {
        [("c1", "r0"), ("n1", "r1"), ("n2", "r1"), ("n3", "r2")]
            .into_iter()
            .map(|(node, rack)| {
                let labels = [("rack".to_owned(), rack.to_owned())].into();
                (NodeId::from(node), labels)
            })
            .collect()
    }

    /// The estimate for `spec` in `state` with `progress`, nodes in procedure since
    /// `started`, and `measured` durations (minutes); one hour assumed.
    fn estimate(
        spec: &RolloutSpec,
        state: &RolloutState,
        progress: &[(&str, NodeProgress)],
        started: &[(&str, i64)],
        measured: &[u64],
        now: i64,
    ) -> Option<Eta> {
        let waves = waves();
        let progress: Progress = progress
            .iter()
            .map(|(n, p)| (NodeId::from(*n), *p))
            .collect();
        let started: BTreeMap<NodeId, Timestamp> = started
            .iter()
            .map(|(n, t)| (NodeId::from(*n), at(*t)))
            .collect();
        let measured: Vec<Duration> = measured
            .iter()
            .map(|m| Duration::from_secs(m * 60))
            .collect();
        let labels = labels();
        let facts = EtaFacts {
            rollout: RolloutFacts {
                spec,
                waves: &waves,
                state,
                progress: &progress,
            },
            labels: &labels,
            started_at: &started,
            measured: &measured,
            assumed: Duration::from_secs(3600),
        };
        eta(facts, at(now))
    }

    fn state(phase: Phase, wave: usize, since: i64) -> RolloutState {
        RolloutState {
            phase,
            wave,
            ..RolloutState::new(at(since))
        }
    }

    #[test]
    fn a_rollout_not_started_takes_every_wave_soak_and_pause() {
        let pending = state(Phase::Pending, 0, 0);
        // Per wave: an hour, a 30-minute soak, then a 10-minute pause but after the last.
        let eta = estimate(&spec(None), &pending, &[], &[], &[], 0).expect("an estimate");
        assert_eq!(eta.ends_at, at(3 * HOUR + 3 * 30 * MIN + 2 * 10 * MIN));
        assert_eq!(
            (eta.per_node, eta.n_remaining),
            (Duration::from_secs(3600), 4)
        );
        // One node of rack r1 at a time: wave 1 takes two hours.
        let eta = estimate(&spec(Some(1)), &pending, &[], &[], &[], 0).expect("an estimate");
        assert_eq!(eta.ends_at, at(4 * HOUR + 3 * 30 * MIN + 2 * 10 * MIN));
    }

    #[test]
    fn a_running_wave_counts_its_nodes_in_procedure_and_the_measured_median() {
        let running = state(Phase::Running, 1, 0);
        let progress = [
            ("c1", NodeProgress::Passed),
            ("n1", NodeProgress::InProcedure),
            ("n2", NodeProgress::Waiting),
        ];
        let now = 20 * MIN;
        let eta = estimate(
            &spec(Some(1)),
            &running,
            &progress,
            &[("n1", 0)],
            &[40, 60, 120],
            now,
        )
        .expect("an estimate");
        assert_eq!(eta.per_node, Duration::from_secs(3600), "the median");
        // n1 ends at 1:00, n2 (same rack) runs 1:00-2:00, soak to 2:30, pause to 2:40; wave 2
        // runs to 3:40 and soaks to 4:10.
        assert_eq!(eta.ends_at, at(4 * HOUR + 10 * MIN));
        assert_eq!(eta.n_remaining, 3);
        // A node overdue is taken to end now.
        let eta = estimate(
            &spec(Some(1)),
            &running,
            &progress,
            &[("n1", 0)],
            &[],
            2 * HOUR,
        )
        .expect("an estimate");
        assert_eq!(eta.ends_at, at(2 * HOUR + 4 * HOUR + 10 * MIN - HOUR));
    }

    #[test]
    fn soaks_and_pauses_count_from_their_start_and_stopped_rollouts_have_none() {
        let soaking = state(Phase::Soaking, 2, 0);
        let eta = estimate(&spec(None), &soaking, &[], &[], &[], 10 * MIN).expect("an estimate");
        assert_eq!((eta.ends_at, eta.n_remaining), (at(30 * MIN), 0));
        let interval = state(Phase::Interval, 2, 0);
        let eta = estimate(&spec(None), &interval, &[], &[], &[], MIN).expect("an estimate");
        assert_eq!(eta.ends_at, at(10 * MIN + HOUR + 30 * MIN));
        let judging = state(Phase::Judging, 2, 0);
        let eta = estimate(&spec(None), &judging, &[], &[], &[], MIN).expect("an estimate");
        assert_eq!(eta.ends_at, at(MIN));
        for phase in [
            Phase::Paused,
            Phase::Halted,
            Phase::RollingBack,
            Phase::RolledBack,
            Phase::Completed,
            Phase::Aborted,
        ] {
            let stopped = state(phase, 1, 0);
            assert_eq!(
                estimate(&spec(None), &stopped, &[], &[], &[], 0),
                None,
                "{phase}"
            );
        }
    }
}
