//! Scheduling as pure functions: which nodes a run selects, which pending jobs go out now,
//! and whose lease ran out.

use crate::fleet::{Health, Node, NodeState};
use crate::plan::Plan;
use crate::{JobId, NodeId, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use thiserror::Error;

/// Why no node could be selected for a run.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SelectError {
    /// No node carries the selector's labels.
    #[error(
        "no node matches selector {selector}; check the plan's selector against `tollgate node list`"
    )]
    NoMatchingNode {
        /// The selector, as text.
        selector: String,
    },
    /// Nodes match, but none can take a job.
    #[error(
        "{n_matching} node(s) match selector {selector} but none is ready and healthy: {details}"
    )]
    NoReadyNode {
        /// The selector, as text.
        selector: String,
        /// How many nodes match.
        n_matching: usize,
        /// Each matching node with its state and health.
        details: String,
    },
}

/// Picks the nodes a new run of `plan` gets: nodes matching the selector that are ready
/// (connected, idle, not cordoned) and in good health, by name, at most `plan.max_nodes`.
pub fn select_nodes(plan: &Plan, nodes: &[Node]) -> Result<Vec<NodeId>, SelectError> {
    let matching: Vec<&Node> = nodes
        .iter()
        .filter(|n| plan.selector.matches(&n.labels))
        .collect();
    if matching.is_empty() {
        return Err(SelectError::NoMatchingNode {
            selector: plan.selector.to_string(),
        });
    }
    let mut selected: Vec<NodeId> = matching
        .iter()
        .filter(|n| n.state == NodeState::Ready && n.health == Health::Good)
        .map(|n| n.id.clone())
        .collect();
    if selected.is_empty() {
        let details = matching
            .iter()
            .map(|n| format!("{} is {}/{}", n.id, n.state, n.health))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(SelectError::NoReadyNode {
            selector: plan.selector.to_string(),
            n_matching: matching.len(),
            details,
        });
    }
    selected.sort();
    if let Some(max) = plan.max_nodes {
        selected.truncate(max as usize);
    }
    Ok(selected)
}

/// A node as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSlot {
    /// The node.
    pub node: NodeId,
    /// Its state.
    pub state: NodeState,
    /// Whether its agent has a stream open to this controller, so an assignment can be sent.
    pub connected: bool,
    /// Whether a job is assigned to or running on it.
    pub has_active_job: bool,
}

/// A job waiting for its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingJob {
    /// The job.
    pub job: JobId,
    /// Its node.
    pub node: NodeId,
    /// When it was created; older jobs go first.
    pub created_at: Timestamp,
}

/// What the scheduler decided: send each job to its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The job.
    pub job: JobId,
    /// The node.
    pub node: NodeId,
}

/// Assigns pending jobs whose node is connected, ready or busy-free, and holds no other job;
/// one job per node, oldest first. Nodes that are cordoned, draining, unreachable or retired
/// get nothing.
pub fn plan(nodes: &[NodeSlot], pending: &[PendingJob], _now: Timestamp) -> Vec<Assignment> {
    let mut free: BTreeSet<&NodeId> = nodes
        .iter()
        .filter(|slot| slot.connected && !slot.has_active_job && slot.state == NodeState::Ready)
        .map(|slot| &slot.node)
        .collect();
    let mut ordered: Vec<&PendingJob> = pending.iter().collect();
    ordered.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.job.cmp(&b.job))
    });
    let mut assignments = Vec::new();
    for job in ordered {
        if free.remove(&job.node) {
            assignments.push(Assignment {
                job: job.job.clone(),
                node: job.node.clone(),
            });
        }
    }
    assignments
}

/// Nodes whose lease ran out: no heartbeat for longer than `grace`.
///
/// A heartbeat older than the controller's start counts as made at the start: after a
/// controller restart every lease gets a fresh grace period, so an outage of the controller
/// is never read as the whole fleet dying.
pub fn expired_leases(
    last_seen: &[(NodeId, Option<Timestamp>)],
    controller_started_at: Timestamp,
    grace: chrono::Duration,
    now: Timestamp,
) -> Vec<NodeId> {
    last_seen
        .iter()
        .filter(|(_, seen)| {
            let effective = seen.map_or(controller_started_at, |s| s.max(controller_started_at));
            now - effective > grace
        })
        .map(|(node, _)| node.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{at, node, plan_for};
    use proptest::prelude::*;

    #[test]
    fn selection_takes_ready_healthy_matching_nodes() {
        let mut nodes = vec![
            node("n1", "hgx-h100"),
            node("n2", "hgx-h100"),
            node("n3", "hgx-h100"),
            node("n4", "hgx-b200"),
        ];
        nodes[1].state = NodeState::Cordoned;
        nodes[2].health = Health::Bad;
        let plan = plan_for("hgx-h100");
        assert_eq!(select_nodes(&plan, &nodes), Ok(vec![NodeId::from("n1")]));
        let err = select_nodes(&plan_for("gb200"), &nodes).unwrap_err();
        assert!(
            err.to_string()
                .contains("no node matches selector sku=gb200")
        );
        nodes[0].state = NodeState::Unreachable;
        let err = select_nodes(&plan, &nodes).unwrap_err().to_string();
        assert!(
            err.contains("n1 is unreachable/good") && err.contains("n3 is ready/bad"),
            "{err}"
        );
    }

    #[test]
    fn selection_respects_max_nodes() {
        let nodes: Vec<Node> = (1..=5)
            .map(|i| node(&format!("n{i}"), "hgx-h100"))
            .collect();
        let mut plan = plan_for("hgx-h100");
        plan.max_nodes = Some(3);
        assert_eq!(select_nodes(&plan, &nodes).expect("nodes").len(), 3);
    }

    #[test]
    fn leases_get_a_fresh_grace_after_restart() {
        let grace = chrono::Duration::seconds(10);
        let started = at(1000);
        let seen = vec![
            (NodeId::from("old"), Some(at(100))),
            (NodeId::from("never"), None),
            (NodeId::from("fresh"), Some(at(1005))),
        ];
        assert!(expired_leases(&seen, started, grace, at(1009)).is_empty());
        assert_eq!(
            expired_leases(&seen, started, grace, at(1011)),
            vec![NodeId::from("old"), NodeId::from("never")]
        );
        assert_eq!(expired_leases(&seen, started, grace, at(1016)).len(), 3);
    }

    fn slot(name: &str, connected: bool, busy: bool) -> NodeSlot {
        NodeSlot {
            node: name.into(),
            state: NodeState::Ready,
            connected,
            has_active_job: busy,
        }
    }

    fn pending(job: &str, node: &str, t: i64) -> PendingJob {
        PendingJob {
            job: job.into(),
            node: node.into(),
            created_at: at(t),
        }
    }

    #[test]
    fn assigns_only_free_connected_nodes_oldest_first() {
        let nodes = [
            slot("a", true, false),
            slot("b", false, false),
            slot("c", true, true),
        ];
        let jobs = [
            pending("j2", "a", 2),
            pending("j1", "a", 1),
            pending("j3", "b", 1),
            pending("j4", "c", 1),
        ];
        assert_eq!(
            plan(&nodes, &jobs, at(5)),
            vec![Assignment {
                job: "j1".into(),
                node: "a".into()
            }]
        );
    }

    proptest! {
        #[test]
        fn no_node_ever_holds_two_jobs(
            node_flags in proptest::collection::vec((any::<bool>(), any::<bool>()), 1..8),
            jobs in proptest::collection::vec((0usize..8, 0i64..100), 0..30),
        ) {
            let nodes: Vec<NodeSlot> = node_flags.iter().enumerate()
                .map(|(i, (connected, busy))| slot(&format!("n{i}"), *connected, *busy)).collect();
            let pending: Vec<PendingJob> = jobs.iter().enumerate()
                .map(|(i, (n, t))| pending(&format!("j{i}"), &format!("n{}", n % nodes.len()), *t)).collect();
            let assignments = plan(&nodes, &pending, at(0));
            let mut seen = BTreeSet::new();
            for a in &assignments {
                prop_assert!(seen.insert(a.node.clone()), "node {} got two jobs", a.node);
                let slot = nodes.iter().find(|s| s.node == a.node).expect("known node");
                prop_assert!(slot.connected && !slot.has_active_job);
            }
        }
    }
}
