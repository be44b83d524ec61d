//! When a rollout should end: an estimate from the per-node procedure durations measured so
//! far, the nodes left, the blast radius, the soaks and the pauses between waves.

use super::machine::{NodeProgress, Phase, RolloutFacts};
use crate::fleet::Labels;
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

/// The median (the upper one of an even count), or `None` for no duration.
fn median(durations: &[Duration]) -> Option<Duration> {
    let mut sorted = durations.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied()
}

fn chrono_of(duration: Duration) -> chrono::Duration {
    // Past a century an estimate means nothing; capping keeps the sums from overflowing.
    chrono::Duration::from_std(duration)
        .unwrap_or(chrono::Duration::MAX)
        .min(chrono::Duration::days(36_500))
}
