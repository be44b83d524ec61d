//! Drift after a rollout: a node a rollout brought to a release's components that reports
//! other versions of them later (a board swapped, a driver reinstalled by hand). Which
//! expectation holds for a node ([`in_force`]) and what differs ([`drift`]) are decided here;
//! the controller records the expectation as the node's procedure passes.

use crate::fleet::Inventory;
use crate::release::{Component, check_inventory};
use crate::{NodeId, RolloutId, Timestamp};
use std::collections::{BTreeMap, BTreeSet};

/// What a rollout brought a node to: the release's components, as its procedure passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The rollout.
    pub rollout: RolloutId,
    /// The node.
    pub node: NodeId,
    /// The release's components.
    pub components: Vec<Component>,
    /// When its procedure passed.
    pub recorded_at: Timestamp,
}

/// One component a node reports otherwise than the rollout that updated it expects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Drift {
    /// The rollout whose expectation holds for the node.
    pub rollout: RolloutId,
    /// The component (`driver`, `vbios`, `gpu-fw`).
    pub component: String,
    /// The version the rollout brought the node to.
    pub expected: String,
    /// What the node reports now, every distinct value joined by `, `; empty when nothing
    /// reports the component.
    pub reported: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reported = if self.reported.is_empty() {
            "nothing"
        } else {
            &self.reported
        };
        write!(
            f,
            "rollout {} expects {} {}, reports {reported}",
            self.rollout, self.component, self.expected
        )
    }
}

/// The expectation in force for each node: its latest (by `recorded_at`, then by position in
/// `expected`, which lists older rollouts first): a later rollout's supersedes an earlier one.
pub fn in_force(expected: Vec<Expected>) -> BTreeMap<NodeId, Expected> {
    let mut latest: BTreeMap<NodeId, Expected> = BTreeMap::new();
    for one in expected {
        match latest.get(&one.node) {
            Some(held) if held.recorded_at > one.recorded_at => {}
            _ => {
                latest.insert(one.node.clone(), one);
            }
        }
    }
    latest
}

/// How the node's reported `inventory` differs from what `expected` brought it to, one entry
/// per component (however many GPUs differ); empty when it matches. A node with no inventory
/// reported is not judged.
pub fn drift(expected: &Expected, inventory: Option<&Inventory>) -> Vec<Drift> {
    let Some(inventory) = inventory else {
        return Vec::new();
    };
    let mut by_component: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for mismatch in check_inventory(&expected.components, &[], inventory) {
        by_component
            .entry((mismatch.component, mismatch.expected))
            .or_default()
            .extend(mismatch.observed);
    }
    by_component
        .into_iter()
        .map(|((component, version), reported)| Drift {
            rollout: expected.rollout.clone(),
            component,
            expected: version,
            reported: reported.into_iter().collect::<Vec<_>>().join(", "),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{component, inventory};

    fn at(seconds: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(seconds, 0).expect("a time")
    }

    fn expected(rollout: &str, node: &str, vbios: &str, seconds: i64) -> Expected {
        Expected {
            rollout: RolloutId::from(rollout),
            node: NodeId::from(node),
            components: vec![component("driver", "550.54.15"), component("vbios", vbios)],
            recorded_at: at(seconds),
        }
    }

    #[test]
    fn a_node_reporting_what_the_rollout_brought_it_to_has_not_drifted() {
        let reported = inventory("550.54.15", "96.00.89.00.01", 2);
        let expected = expected("rollout-1", "prod-1", "96.00.89.00.01", 10);
        assert_eq!(drift(&expected, Some(&reported)), Vec::new());
        assert_eq!(
            drift(&expected, None),
            Vec::new(),
            "no inventory, no verdict"
        );
    }

    #[test]
    fn each_differing_component_is_one_drift_with_every_value_reported() {
        let mut reported = inventory("535.104.05", "96.00.89.00.01", 2);
        for (idx, gpu) in reported.gpus.iter_mut().enumerate() {
            gpu.vbios_version = if idx == 0 {
                "96.00.74.00.01".into()
            } else {
                "96.00.89.00.01".into()
            };
        }
        let expected = expected("rollout-3", "prod-1", "96.00.89.00.01", 10);
        let found = drift(&expected, Some(&reported));
        let words: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            words,
            [
                "rollout rollout-3 expects driver 550.54.15, reports 535.104.05",
                "rollout rollout-3 expects vbios 96.00.89.00.01, reports 96.00.74.00.01",
            ]
        );
    }

    #[test]
    fn the_latest_rollout_of_a_node_holds() {
        let held = in_force(vec![
            expected("rollout-1", "prod-1", "old", 10),
            expected("rollout-2", "prod-1", "new", 20),
            expected("rollout-0", "prod-1", "older", 5),
            expected("rollout-1", "prod-2", "old", 10),
        ]);
        assert_eq!(held.len(), 2);
        assert_eq!(held[&NodeId::from("prod-1")].rollout.as_str(), "rollout-2");
        assert_eq!(held[&NodeId::from("prod-2")].rollout.as_str(), "rollout-1");
    }
}
