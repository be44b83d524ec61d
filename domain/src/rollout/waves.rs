//! Wave planning: which nodes of the fleet each wave of a rollout takes, decided once when the
//! rollout starts.

use super::spec::{RolloutSpec, WaveSpec};
use crate::NodeId;
use crate::fleet::{Node, NodeState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use thiserror::Error;

/// The waves of a rollout with their nodes: every node of the fleet in exactly one wave, in
/// the order the waves run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WavePlan {
    /// The waves that have nodes, in order; a rollout's `wave` indexes this list.
    pub waves: Vec<Wave>,
    /// The waves of the file left without a node (the fleet was covered before them), each
    /// with its index in the file and why.
    pub left_out: Vec<(usize, String)>,
}

/// One wave and its nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    /// The wave's index in the rollout file's `waves`.
    pub spec_idx: usize,
    /// Its nodes, by name (canaries in the order the file names them).
    pub nodes: Vec<NodeId>,
}

impl WavePlan {
    /// Every node of the fleet.
    pub fn n_nodes(&self) -> usize {
        self.waves.iter().map(|wave| wave.nodes.len()).sum()
    }

    /// The index of the wave holding `node`.
    pub fn wave_of(&self, node: &NodeId) -> Option<usize> {
        self.waves.iter().position(|wave| wave.nodes.contains(node))
    }

    /// The nodes of the waves after `wave`: the fleet not updated yet while `wave` runs (of
    /// which [`super::cohort_nodes`] keeps those not started, a wave's cohort).
    pub fn cohort(&self, wave: usize) -> Vec<&NodeId> {
        self.waves
            .iter()
            .skip(wave + 1)
            .flat_map(|wave| &wave.nodes)
            .collect()
    }
}

/// Why the waves of a rollout cannot be planned on the fleet as it is.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum WavesError {
    /// No node carries the rollout's selector (retired nodes are not part of a fleet).
    #[error(
        "no node matches the rollout's selector {selector}; check it against `tollgate node list`"
    )]
    NoFleet {
        /// The selector, as text.
        selector: String,
    },
    /// Canary waves name nodes the fleet does not have; every problem is listed.
    #[error("{}", .problems.join("; "))]
    Canaries {
        /// Each problem, naming its wave (`waves[0]: node gpu-a09 is not in the fleet ...`).
        problems: Vec<String>,
    },
}

/// The fleet of a rollout: the nodes matching its selector, retired ones left out, by name.
pub fn select_fleet<'a>(spec: &RolloutSpec, nodes: &'a [Node]) -> Vec<&'a Node> {
    let mut fleet: Vec<&Node> = nodes
        .iter()
        .filter(|node| node.state != NodeState::Retired && spec.selector.matches(&node.labels))
        .collect();
    fleet.sort_by(|a, b| a.id.cmp(&b.id));
    fleet
}

/// Plans the waves of `spec` over its fleet (of `nodes`, see [`select_fleet`]). Canary waves
/// take the nodes they name, or those carrying their labels; a `count` wave takes that many
/// more nodes, a `percent` wave more nodes until that share of the fleet, rounded up, is
/// covered; each takes at least one node, the first ones by name not in an earlier wave. A
/// wave with no node left is listed in `left_out`.
pub fn plan_waves(spec: &RolloutSpec, nodes: &[Node]) -> Result<WavePlan, WavesError> {
    let fleet = select_fleet(spec, nodes);
    if fleet.is_empty() {
        return Err(WavesError::NoFleet {
            selector: spec.selector.to_string(),
        });
    }
    assign(&spec.waves, &fleet, &spec.selector.to_string())
}

/// [`plan_waves`] over a fleet already selected and sorted by name.
fn assign(waves: &[WaveSpec], fleet: &[&Node], selector: &str) -> Result<WavePlan, WavesError> {
    let n_fleet = fleet.len();
    let mut taken: BTreeSet<&NodeId> = BTreeSet::new();
    let mut plan = WavePlan::default();
    let mut problems = Vec::new();
    for (spec_idx, wave) in waves.iter().enumerate() {
        let remaining = fleet.iter().filter(|node| !taken.contains(&node.id));
        let nodes: Vec<&NodeId> = match wave {
            WaveSpec::Nodes(names) => names
                .iter()
                .filter_map(|name| match fleet.iter().find(|node| node.id == *name) {
                    Some(node) if !taken.contains(&node.id) => Some(&node.id),
                    Some(_) => None,
                    None => {
                        problems.push(format!(
                            "waves[{spec_idx}]: node {name} is not in the fleet (selector \
                             {selector}, retired nodes left out)"
                        ));
                        None
                    }
                })
                .collect(),
            WaveSpec::Selector(labels) => {
                let nodes: Vec<&NodeId> = remaining
                    .filter(|node| labels.matches(&node.labels))
                    .map(|node| &node.id)
                    .collect();
                if nodes.is_empty() {
                    problems.push(format!(
                        "waves[{spec_idx}]: selector {labels} matches no node of the fleet \
                         outside earlier waves"
                    ));
                }
                nodes
            }
            WaveSpec::Count(n) => remaining
                .take(usize::try_from(*n).unwrap_or(usize::MAX))
                .map(|node| &node.id)
                .collect(),
            WaveSpec::Percent(percent) => {
                let want = share(*percent, n_fleet).saturating_sub(taken.len()).max(1);
                remaining.take(want).map(|node| &node.id).collect()
            }
        };
        if nodes.is_empty() {
            if !wave.is_canary() {
                plan.left_out.push((
                    spec_idx,
                    format!("every node of the fleet is in an earlier wave; {wave} is left out"),
                ));
            }
            continue;
        }
        taken.extend(nodes.iter().copied());
        plan.waves.push(Wave {
            spec_idx,
            nodes: nodes.into_iter().cloned().collect(),
        });
    }
    if !problems.is_empty() {
        return Err(WavesError::Canaries { problems });
    }
    Ok(plan)
}

/// `percent` of `n_nodes`, rounded up: 10 % of 30 nodes is 3, of 31 is 4. A share that is
/// whole up to floating-point noise is not rounded up past itself.
pub fn share(percent: f64, n_nodes: usize) -> usize {
    let exact = percent * n_nodes as f64 / 100.0;
    let nearest = exact.round();
    let n = if (exact - nearest).abs() < 1e-9 {
        nearest
    } else {
        exact.ceil()
    };
    (n.max(0.0) as usize).min(n_nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Selector;
    use crate::test_support::node;
    use proptest::prelude::*;

    fn fleet(n: usize) -> Vec<Node> {
        (1..=n)
            .map(|i| {
                let mut node = node(&format!("gpu-{i:03}"), "hgx-h100");
                node.labels.insert("env".into(), "prod".into());
                node.labels
                    .insert("rack".into(), format!("r{}", (i - 1) / 4 + 1));
                node
            })
            .collect()
    }

    fn spec(waves: Vec<WaveSpec>) -> RolloutSpec {
        RolloutSpec {
            waves,
            ..crate::test_support::rollout_spec()
        }
    }

    fn names(plan: &WavePlan) -> Vec<Vec<&str>> {
        plan.waves
            .iter()
            .map(|wave| wave.nodes.iter().map(NodeId::as_str).collect())
            .collect()
    }

    fn sizes(plan: &WavePlan) -> Vec<usize> {
        plan.waves.iter().map(|wave| wave.nodes.len()).collect()
    }

    #[test]
    fn percentages_are_cumulative_shares_of_the_fleet_rounded_up() {
        for (percents, n_fleet, expected) in [
            (vec![10.0, 50.0, 100.0], 20, vec![2, 8, 10]),
            (vec![10.0, 50.0, 100.0], 21, vec![3, 8, 10]),
            (vec![10.0, 100.0], 30, vec![3, 27]),
            (vec![0.5, 100.0], 1000, vec![5, 995]),
            // Each wave takes at least one node.
            (vec![1.0, 2.0, 100.0], 10, vec![1, 1, 8]),
            (vec![100.0], 7, vec![7]),
        ] {
            let waves = percents.into_iter().map(WaveSpec::Percent).collect();
            let plan = plan_waves(&spec(waves), &fleet(n_fleet)).expect("planned");
            assert_eq!(sizes(&plan), expected, "fleet of {n_fleet}");
        }
        assert_eq!(share(10.0, 30), 3, "no floating-point round-up");
        assert_eq!(share(33.3, 3), 1);
    }

    #[test]
    fn canaries_go_first_then_counts_and_percentages_take_the_rest_by_name() {
        let waves = vec![
            WaveSpec::Nodes(vec!["gpu-007".into(), "gpu-002".into()]),
            WaveSpec::Selector(Selector([("rack".to_owned(), "r3".to_owned())].into())),
            WaveSpec::Count(2),
            WaveSpec::Percent(50.0),
            WaveSpec::Percent(100.0),
        ];
        let plan = plan_waves(&spec(waves), &fleet(16)).expect("planned");
        assert_eq!(
            names(&plan),
            [
                vec!["gpu-007", "gpu-002"],
                vec!["gpu-009", "gpu-010", "gpu-011", "gpu-012"],
                vec!["gpu-001", "gpu-003"],
                // 50 % of 16 is 8; 8 nodes are covered already: one more.
                vec!["gpu-004"],
                vec![
                    "gpu-005", "gpu-006", "gpu-008", "gpu-013", "gpu-014", "gpu-015", "gpu-016"
                ],
            ]
        );
        assert_eq!(plan.wave_of(&"gpu-004".into()), Some(3));
        assert_eq!(plan.cohort(3).len(), 7);
        assert_eq!(plan.n_nodes(), 16);
    }

    #[test]
    fn waves_after_the_fleet_is_covered_are_left_out() {
        let waves = vec![
            WaveSpec::Count(2),
            WaveSpec::Percent(10.0),
            WaveSpec::Percent(100.0),
        ];
        let plan = plan_waves(&spec(waves), &fleet(2)).expect("planned");
        assert_eq!(sizes(&plan), [2]);
        let left: Vec<usize> = plan.left_out.iter().map(|(idx, _)| *idx).collect();
        assert_eq!(left, [1, 2]);
        assert!(plan.left_out[0].1.contains("10% of the fleet is left out"));
    }

    #[test]
    fn canaries_outside_the_fleet_and_an_empty_fleet_are_refused() {
        let mut nodes = fleet(8);
        nodes[2].state = NodeState::Retired;
        let waves = vec![
            WaveSpec::Nodes(vec!["gpu-003".into(), "gpu-099".into()]),
            WaveSpec::Selector(Selector([("rack".to_owned(), "r9".to_owned())].into())),
            WaveSpec::Percent(100.0),
        ];
        let error = plan_waves(&spec(waves), &nodes).unwrap_err().to_string();
        assert_eq!(
            error,
            "waves[0]: node gpu-003 is not in the fleet (selector env=prod, retired nodes left \
             out); waves[0]: node gpu-099 is not in the fleet (selector env=prod, retired nodes \
             left out); waves[1]: selector rack=r9 matches no node of the fleet outside \
             earlier waves"
        );
        let lab = [node("lab-1", "hgx-h100")];
        let error = plan_waves(&spec(vec![WaveSpec::Percent(100.0)]), &lab).unwrap_err();
        assert_eq!(
            error,
            WavesError::NoFleet {
                selector: "env=prod".into()
            }
        );
    }

    /// Waves as a file could give them: canaries by name first, then counts and rising
    /// percentages, the last one 100.
    fn arb_waves(n_fleet: usize) -> impl Strategy<Value = Vec<WaveSpec>> {
        (
            proptest::collection::btree_set(1..=n_fleet, 0..3),
            proptest::collection::vec(1u32..5, 0..3),
            proptest::collection::btree_set(1u32..100, 0..5),
        )
            .prop_map(|(canaries, counts, percents)| {
                let mut waves = Vec::new();
                if !canaries.is_empty() {
                    waves.push(WaveSpec::Nodes(
                        canaries
                            .into_iter()
                            .map(|i| NodeId::from(format!("gpu-{i:03}")))
                            .collect(),
                    ));
                }
                waves.extend(counts.into_iter().map(WaveSpec::Count));
                waves.extend(
                    percents
                        .into_iter()
                        .map(|p| WaveSpec::Percent(f64::from(p))),
                );
                waves.push(WaveSpec::Percent(100.0));
                waves
            })
    }

    proptest! {
        /// Every node of the fleet is in exactly one wave, every wave has a node, canaries
        /// come first, and after each percent wave at least its share of the fleet is covered.
        #[test]
        fn every_node_is_in_exactly_one_wave(
            (n_fleet, waves) in (1usize..60).prop_flat_map(|n| (Just(n), arb_waves(n)))
        ) {
            let nodes = fleet(n_fleet);
            let plan = plan_waves(&spec(waves.clone()), &nodes).expect("planned");
            let mut seen = BTreeSet::new();
            let mut covered = 0;
            for wave in &plan.waves {
                prop_assert!(!wave.nodes.is_empty());
                for node in &wave.nodes {
                    prop_assert!(seen.insert(node.clone()), "{node} in two waves");
                }
                covered += wave.nodes.len();
                if let WaveSpec::Percent(p) = waves[wave.spec_idx] {
                    prop_assert!(covered >= share(p, n_fleet));
                }
            }
            prop_assert_eq!(seen.len(), n_fleet);
            if let Some(WaveSpec::Nodes(canaries)) = waves.first() {
                prop_assert_eq!(&plan.waves[0].nodes, canaries);
            }
            let n_waves = plan.waves.len() + plan.left_out.len();
            prop_assert_eq!(n_waves, waves.len());
        }
    }
}
