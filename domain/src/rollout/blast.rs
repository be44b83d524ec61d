//! Blast radius: which nodes of the current wave may start their procedure (or rollback) now,
//! so that no label value ever has more nodes in procedure than the rollout allows.

use super::spec::RolloutLimits;
use crate::fleet::{Health, Labels, Node, NodeState};
use crate::maintenance::MaintenanceWindow;
use crate::{NodeId, Timestamp};
use std::collections::BTreeMap;

/// What [`startable`] decided: the nodes to start now, and the others with why they wait.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Starts {
    /// Start these, in this order.
    pub start: Vec<NodeId>,
    /// These wait, each with why (`gpu-a03 waits: 1 node(s) with rack=r1 in procedure, the
    /// rollout's max-concurrent for rack`).
    pub held: Vec<(NodeId, String)>,
}

/// Chooses which of `waiting` (the current wave's nodes not started yet, in wave order) start
/// now, given the labels of the rollout's nodes in procedure now (`in_procedure`), the
/// rollout's limits, the maintenance windows and `now`.
///
/// A node starts only when it is `ready` and `good`, inside a maintenance window covering it
/// when `limits.maintenance_windows` asks for one, and when one more node in procedure keeps
/// every label value within `limits.max_concurrent` (counting the nodes started by this very
/// call). Nodes are taken in wave order.
pub fn startable(
    waiting: &[&Node],
    in_procedure: &[&Labels],
    limits: &RolloutLimits,
    windows: &[MaintenanceWindow],
    now: Timestamp,
) -> Starts {
    // Nodes in procedure per (label key, label value), for the limited keys only.
    let mut counts: BTreeMap<(String, String), u32> = BTreeMap::new();
    let add = |labels: &Labels, counts: &mut BTreeMap<(String, String), u32>| {
        for key in limits.max_concurrent.keys() {
            if let Some(value) = labels.get(key) {
                *counts.entry((key.clone(), value.clone())).or_default() += 1;
            }
        }
    };
    for labels in in_procedure {
        add(labels, &mut counts);
    }
    let mut starts = Starts::default();
    for node in waiting {
        match held_because(node, limits, &counts, windows, now) {
            Some(why) => starts.held.push((node.id.clone(), why)),
            None => {
                add(&node.labels, &mut counts);
                starts.start.push(node.id.clone());
            }
        }
    }
    starts
}

/// Why `node` cannot start now, or `None` when it can.
fn held_because(
    node: &Node,
    limits: &RolloutLimits,
    counts: &BTreeMap<(String, String), u32>,
    windows: &[MaintenanceWindow],
    now: Timestamp,
) -> Option<String> {
    let id = &node.id;
    if node.state != NodeState::Ready {
        return Some(format!("{id} waits: it is {}", node.state));
    }
    if node.health != Health::Good {
        return Some(format!("{id} waits: it is {}", node.health));
    }
    if limits.maintenance_windows
        && crate::maintenance::holding(windows, &node.labels, now).is_none()
    {
        return Some(format!(
            "{id} waits: no maintenance window covers it now, and the rollout starts nodes \
             only inside one"
        ));
    }
    limits.max_concurrent.iter().find_map(|(key, max)| {
        let value = node.labels.get(key)?;
        let n = counts
            .get(&(key.clone(), value.clone()))
            .copied()
            .unwrap_or_default();
        (n >= *max).then(|| {
            format!(
                "{id} waits: {n} node(s) with {key}={value} in procedure, the rollout's \
                 max-concurrent for {key}"
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{at, node};
    use proptest::prelude::*;

    fn racked(name: &str, rack: &str, pdu: &str) -> Node {
        let mut node = node(name, "hgx-h100");
        node.labels.insert("rack".into(), rack.into());
        node.labels.insert("pdu".into(), pdu.into());
        node
    }

    fn limits(pairs: &[(&str, u32)]) -> RolloutLimits {
        RolloutLimits {
            max_concurrent: pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
            ..RolloutLimits::default()
        }
    }

    fn window(label: (&str, &str), from: i64, to: i64) -> MaintenanceWindow {
        MaintenanceWindow {
            id: "mw-1".into(),
            key: label.0.into(),
            value: label.1.into(),
            starts_at: at(from),
            ends_at: at(to),
            reason: "rollout".into(),
            created_by: "ops".into(),
        }
    }

    fn started(starts: &Starts) -> Vec<&str> {
        starts.start.iter().map(NodeId::as_str).collect()
    }

    #[test]
    fn at_most_the_limit_per_label_value_counting_nodes_in_procedure_and_this_call() {
        let nodes = [
            racked("a1", "r1", "p1"),
            racked("a2", "r1", "p1"),
            racked("b1", "r2", "p1"),
            racked("b2", "r2", "p2"),
            racked("c1", "r3", "p2"),
        ];
        let waiting: Vec<&Node> = nodes.iter().collect();
        let limits = limits(&[("rack", 1), ("pdu", 2)]);
        let starts = startable(&waiting, &[], &limits, &[], at(0));
        // a1 (r1, p1); a2 waits for rack r1; b1 (r2, p1) fills p1; b2 waits for rack r2; c1.
        assert_eq!(started(&starts), ["a1", "b1", "c1"]);
        let held: Vec<&str> = starts.held.iter().map(|(_, why)| why.as_str()).collect();
        assert_eq!(
            held,
            [
                "a2 waits: 1 node(s) with rack=r1 in procedure, the rollout's max-concurrent for rack",
                "b2 waits: 1 node(s) with rack=r2 in procedure, the rollout's max-concurrent for rack",
            ]
        );
        // With a node of rack r3 in procedure already, c1 waits too.
        let r3 = racked("x", "r3", "p9").labels;
        let starts = startable(&waiting, &[&r3], &limits, &[], at(0));
        assert_eq!(started(&starts), ["a1", "b1"]);
        // No limits: the whole wave starts.
        let starts = startable(&waiting, &[], &RolloutLimits::default(), &[], at(0));
        assert_eq!(starts.start.len(), 5);
    }

    #[test]
    fn only_ready_good_nodes_start_and_only_inside_a_window_when_asked() {
        let mut nodes = [
            racked("a1", "r1", "p1"),
            racked("a2", "r2", "p1"),
            racked("a3", "r3", "p1"),
        ];
        nodes[1].state = NodeState::Unreachable;
        nodes[2].health = Health::Suspect;
        let waiting: Vec<&Node> = nodes.iter().collect();
        let starts = startable(&waiting, &[], &RolloutLimits::default(), &[], at(0));
        assert_eq!(started(&starts), ["a1"]);
        assert_eq!(starts.held[0].1, "a2 waits: it is unreachable");
        assert_eq!(starts.held[1].1, "a3 waits: it is suspect");

        let in_windows = RolloutLimits {
            maintenance_windows: true,
            ..RolloutLimits::default()
        };
        let windows = [window(("rack", "r1"), 100, 200)];
        let waiting = [&nodes[0]];
        for (now, expected) in [(99, 0), (100, 1), (199, 1), (200, 0)] {
            let starts = startable(&waiting, &[], &in_windows, &windows, at(now));
            assert_eq!(starts.start.len(), expected, "at {now}");
        }
        let starts = startable(&waiting, &[], &in_windows, &windows, at(0));
        assert!(
            starts.held[0]
                .1
                .contains("no maintenance window covers it now")
        );
    }

    /// One step of the world: the controller asks what may start and starts it all, or one of
    /// the nodes in procedure finishes.
    #[derive(Clone, Debug)]
    enum Op {
        Tick,
        Finish(usize),
    }

    proptest! {
        /// Over any sequence of starts and finishes, no label value ever has more nodes in
        /// procedure than its limit.
        #[test]
        fn no_label_value_ever_goes_over_its_limit(
            racks in proptest::collection::vec((0u8..4, 0u8..3, any::<bool>()), 1..24),
            rack_max in 1u32..3,
            pdu_max in 1u32..4,
            ops in proptest::collection::vec(
                prop_oneof![Just(Op::Tick), (0usize..24).prop_map(Op::Finish)],
                1..60,
            ),
        ) {
            let nodes: Vec<Node> = racks
                .iter()
                .enumerate()
                .map(|(idx, (rack, pdu, labelled))| {
                    let mut node = racked(&format!("n{idx:02}"), &format!("r{rack}"), &format!("p{pdu}"));
                    if !labelled {
                        node.labels.remove("pdu");
                    }
                    node
                })
                .collect();
            let limits = limits(&[("rack", rack_max), ("pdu", pdu_max)]);
            let mut waiting: Vec<&Node> = nodes.iter().collect();
            let mut running: Vec<&Node> = Vec::new();
            for op in ops {
                match op {
                    Op::Tick => {
                        let labels: Vec<&Labels> = running.iter().map(|n| &n.labels).collect();
                        let starts = startable(&waiting, &labels, &limits, &[], at(0));
                        prop_assert!(
                            !starts.start.is_empty() || waiting.is_empty() || !running.is_empty(),
                            "nothing in procedure, yet nothing starts"
                        );
                        for id in &starts.start {
                            let idx = waiting.iter().position(|n| n.id == *id).expect("waiting");
                            running.push(waiting.remove(idx));
                        }
                    }
                    Op::Finish(idx) if !running.is_empty() => {
                        let node = running.remove(idx % running.len());
                        waiting.push(node);
                    }
                    Op::Finish(_) => {}
                }
                for (key, max) in &limits.max_concurrent {
                    let mut per_value: BTreeMap<&str, u32> = BTreeMap::new();
                    for node in &running {
                        if let Some(value) = node.labels.get(key) {
                            *per_value.entry(value).or_default() += 1;
                        }
                    }
                    for (value, n) in per_value {
                        prop_assert!(n <= *max, "{n} nodes with {key}={value}, limit {max}");
                    }
                }
            }
        }
    }
}
