//! Scheduling as pure functions: which nodes a run selects, which pending jobs go out now,
//! and whose lease ran out.

use crate::fleet::{Health, Labels, Node, NodeState};
use crate::lease::LeaseGrace;
use crate::maintenance::MaintenanceWindow;
use crate::plan::Plan;
use crate::{JobId, NodeId, RunId, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
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
    #[error("{n_matching} node(s) match selector {selector} but none can take a job: {details}")]
    NoReadyNode {
        /// The selector, as text.
        selector: String,
        /// How many nodes match.
        n_matching: usize,
        /// Each matching node with why it was left out.
        details: String,
    },
}

/// Which nodes a run takes, when it is started; written in plans as `selection:
/// ready-and-busy` or `ready-now`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(
    serialize_all = "kebab-case",
    parse_err_ty = String,
    parse_err_fn = crate::names::unknown::<Self>
)]
pub enum Selecting {
    /// Every matching node that can run the job now or once its current job ends.
    #[default]
    ReadyAndBusy,
    /// Only the nodes that can run the job now (`--nodes-now`, `selection: ready-now`).
    ReadyNow,
}

impl Selecting {
    /// How a run of `plan` selects its nodes: only the ready ones when `nodes_now` (the
    /// `--nodes-now` flag) asks for it, else as the plan says.
    pub fn for_run(plan: &Plan, nodes_now: bool) -> Self {
        if nodes_now {
            Self::ReadyNow
        } else {
            plan.selection
        }
    }

    /// Whether this is the default, which a plan's canonical form leaves out.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The nodes a new run takes, and the matching nodes it leaves out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// Nodes ready now: their jobs go out at the next scheduling pass. By name.
    pub now: Vec<NodeId>,
    /// Nodes busy with another job: theirs waits, pending, until the node frees up, after
    /// every older pending job of the node. By name.
    pub waiting: Vec<NodeId>,
    /// Matching nodes not selected, each with why (`n3 is unreachable`). By name.
    pub left_out: Vec<(NodeId, String)>,
    /// How many of `left_out` were left out because their `allowed-plans` label does not list
    /// the plan.
    #[serde(default)]
    pub n_plan_not_allowed: usize,
    /// Of `waiting`, the nodes whose jobs wait for a maintenance window to end, each with
    /// which window.
    #[serde(default)]
    pub held: Vec<(NodeId, String)>,
}

/// The node label that restricts which plans a node runs: a comma-separated list of plan
/// names. A node without it runs any plan.
pub const ALLOWED_PLANS_LABEL: &str = "allowed-plans";

/// Whether a node with `labels` may run the plan named `plan`: yes without an
/// [`ALLOWED_PLANS_LABEL`], else only when the label lists it.
pub fn plan_allowed(labels: &crate::fleet::Labels, plan: &str) -> bool {
    labels
        .get(ALLOWED_PLANS_LABEL)
        .is_none_or(|allowed| allowed.split(',').any(|name| name.trim() == plan))
}

impl Selection {
    /// Every selected node: the ready ones, then the busy ones.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.now.iter().chain(&self.waiting)
    }
}

/// Why a matching node cannot be selected, or `None` when it can.
fn left_out_because(
    node: &Node,
    plan: &str,
    selecting: Selecting,
    held: Option<&MaintenanceWindow>,
) -> Option<String> {
    use NodeState as S;
    if !plan_allowed(&node.labels, plan) {
        return Some(format!(
            "{} runs only the plans its {ALLOWED_PLANS_LABEL} label lists, not {plan}",
            node.id
        ));
    }
    if node.health != Health::Good {
        return Some(format!(
            "{} is {} (set it good with `tollgate node health {} --set good --reason ...`)",
            node.id, node.health, node.id
        ));
    }
    if let (Some(window), Selecting::ReadyNow) = (held, selecting) {
        return Some(crate::maintenance::explain(node.id.as_str(), window));
    }
    match (node.state, selecting) {
        (S::Ready, _) | (S::Busy, Selecting::ReadyAndBusy) => None,
        (S::Busy, Selecting::ReadyNow) => Some(format!("{} is busy", node.id)),
        // An unreachable node may never come back: a run does not wait for it.
        (S::Cordoned | S::Draining | S::Maintenance | S::Unreachable | S::Retired, _) => {
            Some(format!("{} is {}", node.id, node.state))
        }
    }
}

/// Picks the nodes a new run of `plan` gets: every node matching the selector in good health
/// that is ready, or busy with another job (its job waits until the node frees up; not with
/// [`Selecting::ReadyNow`]). Cordoned, draining, unreachable and retired nodes are left out,
/// and so are `suspect` and `bad` ones, and nodes whose `allowed-plans` label does not list
/// the plan (counted in `n_plan_not_allowed`). A node in a maintenance window at `now` counts
/// as busy: its job waits for the window's end (left out with [`Selecting::ReadyNow`]). With
/// `plan.max_nodes` (`nodes: N`) ready nodes go first, then busy ones, each by name, up to N.
pub fn select_nodes(
    plan: &Plan,
    nodes: &[Node],
    selecting: Selecting,
    windows: &[MaintenanceWindow],
    now: Timestamp,
) -> Result<Selection, SelectError> {
    let mut matching: Vec<&Node> = nodes
        .iter()
        .filter(|n| plan.selector.matches(&n.labels))
        .collect();
    if matching.is_empty() {
        return Err(SelectError::NoMatchingNode {
            selector: plan.selector.to_string(),
        });
    }
    matching.sort_by(|a, b| a.id.cmp(&b.id));
    let mut selection = Selection::default();
    for node in &matching {
        if !plan_allowed(&node.labels, &plan.name) {
            selection.n_plan_not_allowed += 1;
        }
        let held = crate::maintenance::holding(windows, &node.labels, now);
        match left_out_because(node, &plan.name, selecting, held) {
            Some(why) => selection.left_out.push((node.id.clone(), why)),
            None if node.state == NodeState::Ready && held.is_none() => {
                selection.now.push(node.id.clone())
            }
            None if held.is_some() => {
                selection.waiting.push(node.id.clone());
                if let Some(window) = held {
                    let why = crate::maintenance::explain(node.id.as_str(), window);
                    selection.held.push((node.id.clone(), why));
                }
            }
            None => selection.waiting.push(node.id.clone()),
        }
    }
    if selection.now.is_empty() && selection.waiting.is_empty() {
        let details = selection
            .left_out
            .iter()
            .map(|(_, why)| why.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(SelectError::NoReadyNode {
            selector: plan.selector.to_string(),
            n_matching: matching.len(),
            details,
        });
    }
    if let Some(max) = plan.max_nodes.map(|max| max as usize) {
        let beyond = |ids: &mut Vec<NodeId>, keep: usize| -> Vec<NodeId> {
            ids.split_off(keep.min(ids.len()))
        };
        let n_now = selection.now.len();
        let mut dropped = beyond(&mut selection.now, max);
        dropped.extend(beyond(&mut selection.waiting, max.saturating_sub(n_now)));
        dropped.sort();
        selection.left_out.extend(dropped.into_iter().map(|id| {
            let why = format!("{id} is beyond the plan's nodes: {max}");
            (id, why)
        }));
        selection.left_out.sort();
    }
    Ok(selection)
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
    /// Its health: only a `good` node is sent a job.
    pub health: Health,
    /// Its labels (of record), for the plans' `max-concurrent` limits.
    pub labels: Labels,
}

/// A job waiting for its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingJob {
    /// The job.
    pub job: JobId,
    /// Its run.
    pub run: RunId,
    /// Its node.
    pub node: NodeId,
    /// When it was created; older jobs go first.
    pub created_at: Timestamp,
    /// Whether it is a periodic health check: those also go to `suspect` nodes, which a
    /// passing check clears.
    pub health_check: bool,
    /// Whether it is a rollout's procedure or rollback: those run on nodes inside a
    /// maintenance window (the rollout chose the node, and may have waited for the window).
    pub rollout: bool,
}

/// The blast-radius limits a scheduling pass keeps: each run's plan's `max-concurrent`, and
/// the jobs active now (assigned or running), by run and node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Concurrency {
    /// Per run, the plan's `max-concurrent` (runs without limits may be left out).
    pub limits: BTreeMap<RunId, BTreeMap<String, u32>>,
    /// Active jobs: (run, node).
    pub active: Vec<(RunId, NodeId)>,
}

/// Why one more job of a run on a node with `labels` would go over the run's plan's
/// `max-concurrent` (`limits`), given `active(key, value)`: how many of the run's jobs are
/// active now on nodes whose label `key` is `value`. `None` when it fits.
pub fn over_limit(
    limits: &BTreeMap<String, u32>,
    labels: &Labels,
    active: impl Fn(&str, &str) -> u32,
) -> Option<String> {
    first_over(limits, labels, active).map(|(key, value, n)| {
        format!(
            "{n} of the run's jobs are active on nodes with {key}={value}, the plan's \
             max-concurrent for {key}"
        )
    })
}

/// The first label whose limit one more job would pass: its key, value and the jobs active
/// there ([`over_limit`] without the message, for the scheduling pass).
fn first_over<'a>(
    limits: &'a BTreeMap<String, u32>,
    labels: &'a Labels,
    active: impl Fn(&str, &str) -> u32,
) -> Option<(&'a str, &'a str, u32)> {
    limits.iter().find_map(|(key, max)| {
        let value = labels.get(key)?;
        let n = active(key, value);
        (n >= *max).then_some((key.as_str(), value.as_str(), n))
    })
}

/// [`over_limit`] over the labels of the nodes holding the run's active jobs: the check the
/// store repeats under the run's lock, so that replicas assigning at once keep the limit.
pub fn within_limits(
    limits: &BTreeMap<String, u32>,
    labels: &Labels,
    active_labels: &[Labels],
) -> Result<(), String> {
    match over_limit(limits, labels, |key, value| {
        let n = active_labels
            .iter()
            .filter(|other| other.get(key).is_some_and(|v| v == value))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// What the scheduler decided: send each job to its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The job.
    pub job: JobId,
    /// The node.
    pub node: NodeId,
}

/// Assigns pending jobs whose node is connected, ready, in good health and holds no other
/// job; one job per node, oldest first. A busy node's pending jobs wait until its job ends;
/// nodes that are cordoned, draining, unreachable, retired, `suspect` or `bad` get nothing,
/// and their pending jobs wait until an operator brings the node back (or cancels the run);
/// a `suspect` node still gets its periodic health checks. Nodes in a maintenance window at
/// `now` get nothing until it ends, except a rollout's procedure and rollback jobs. A job that would put its run over its plan's
/// `max-concurrent` for a label value waits until one of the run's jobs there ends.
pub fn plan(
    nodes: &[NodeSlot],
    pending: &[PendingJob],
    concurrency: &Concurrency,
    windows: &[MaintenanceWindow],
    now: Timestamp,
) -> Vec<Assignment> {
    let labels_of: HashMap<&NodeId, &Labels> = nodes
        .iter()
        .map(|slot| (&slot.node, &slot.labels))
        .collect();
    // Active jobs per (run, label key, label value), for the limited runs only.
    let mut counts: HashMap<(&RunId, &str, &str), u32> = HashMap::new();
    for (run, node) in &concurrency.active {
        let (Some(limits), Some(labels)) = (concurrency.limits.get(run), labels_of.get(node))
        else {
            continue;
        };
        for key in limits.keys() {
            if let Some(value) = labels.get(key) {
                *counts
                    .entry((run, key.as_str(), value.as_str()))
                    .or_default() += 1;
            }
        }
    }
    // Looked up once per pending job, never iterated: hashed, not ordered.
    let mut free: HashSet<&NodeId> = nodes
        .iter()
        .filter(|slot| {
            slot.connected
                && !slot.has_active_job
                && slot.state == NodeState::Ready
                && matches!(slot.health, Health::Good | Health::Suspect)
        })
        .map(|slot| &slot.node)
        .collect();
    let in_window: HashSet<&NodeId> = nodes
        .iter()
        .filter(|slot| crate::maintenance::holding(windows, &slot.labels, now).is_some())
        .map(|slot| &slot.node)
        .collect();
    let suspect: HashSet<&NodeId> = nodes
        .iter()
        .filter(|slot| slot.health == Health::Suspect)
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
        if !free.contains(&job.node)
            || (suspect.contains(&job.node) && !job.health_check)
            || (in_window.contains(&job.node) && !job.rollout)
        {
            continue;
        }
        if let (Some(limits), Some(labels)) =
            (concurrency.limits.get(&job.run), labels_of.get(&job.node))
        {
            let over = first_over(limits, labels, |key, value| {
                counts
                    .get(&(&job.run, key, value))
                    .copied()
                    .unwrap_or_default()
            });
            if over.is_some() {
                continue;
            }
            for key in limits.keys() {
                if let Some(value) = labels.get(key) {
                    *counts
                        .entry((&job.run, key.as_str(), value.as_str()))
                        .or_default() += 1;
                }
            }
        }
        free.remove(&job.node);
        assignments.push(Assignment {
            job: job.job.clone(),
            node: job.node.clone(),
        });
    }
    assignments
}

/// Nodes whose lease ran out: no heartbeat for longer than their grace.
///
/// A heartbeat older than `fresh_from` (the controller's start, or the end of a database
/// outage) counts as made then: after a controller restart every lease gets a fresh grace
/// period, so an outage of the controller is never read as the whole fleet dying. A lease not
/// renewed since then gets [`LeaseGrace::after_start`], long enough for an agent reconnecting
/// at its backoff cap; a renewed one gets [`LeaseGrace::renewed`].
pub fn expired_leases(
    last_seen: &[(NodeId, Option<Timestamp>)],
    fresh_from: Timestamp,
    grace: LeaseGrace,
    now: Timestamp,
) -> Vec<NodeId> {
    last_seen
        .iter()
        .filter(|(_, seen)| match seen {
            Some(seen) if *seen >= fresh_from => now - *seen > grace.renewed,
            _ => now - fresh_from > grace.after_start,
        })
        .map(|(node, _)| node.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{at, node, node_ids as ids, plan_for};
    use proptest::prelude::*;

    #[test]
    fn selection_takes_ready_and_busy_healthy_matching_nodes() {
        let mut nodes = vec![
            node("n1", "hgx-h100"),
            node("n2", "hgx-h100"),
            node("n3", "hgx-h100"),
            node("n4", "hgx-b200"),
            node("n5", "hgx-h100"),
            node("n6", "hgx-h100"),
        ];
        nodes[1].state = NodeState::Cordoned;
        nodes[2].health = Health::Bad;
        nodes[4].state = NodeState::Busy;
        nodes[5].state = NodeState::Unreachable;
        let plan = plan_for("hgx-h100");
        let selection =
            select_nodes(&plan, &nodes, Selecting::ReadyAndBusy, &[], at(0)).expect("nodes");
        assert_eq!(selection.now, ids(&["n1"]));
        assert_eq!(selection.waiting, ids(&["n5"]));
        let left_out: Vec<&str> = selection
            .left_out
            .iter()
            .map(|(_, why)| why.as_str())
            .collect();
        assert_eq!(left_out.len(), 3, "{left_out:?}");
        assert!(left_out[0].starts_with("n2 is cordoned"), "{left_out:?}");
        assert!(
            left_out[1].starts_with("n3 is bad (set it good with"),
            "{left_out:?}"
        );
        assert!(left_out[2].starts_with("n6 is unreachable"), "{left_out:?}");
        // `--nodes-now`: the busy node is left out.
        let now = select_nodes(&plan, &nodes, Selecting::ReadyNow, &[], at(0)).expect("nodes");
        assert_eq!((now.now, now.waiting), (ids(&["n1"]), Vec::new()));
        let err = select_nodes(
            &plan_for("gb200"),
            &nodes,
            Selecting::ReadyAndBusy,
            &[],
            at(0),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("no node matches selector sku=gb200")
        );
        nodes[0].state = NodeState::Busy;
        nodes[4].state = NodeState::Unreachable;
        let err = select_nodes(&plan, &nodes, Selecting::ReadyNow, &[], at(0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("n1 is busy")
                && err.contains("n3 is bad")
                && err.contains("n5 is unreachable"),
            "{err}"
        );
    }

    #[test]
    fn a_node_with_allowed_plans_runs_only_the_listed_ones() {
        let mut nodes: Vec<Node> = (1..=3)
            .map(|i| node(&format!("n{i}"), "hgx-h100"))
            .collect();
        nodes[0]
            .labels
            .insert(ALLOWED_PLANS_LABEL.into(), "burn-in, other".into());
        nodes[1]
            .labels
            .insert(ALLOWED_PLANS_LABEL.into(), "flash-only".into());
        let mut plan = plan_for("hgx-h100");
        plan.name = "burn-in".into();
        let selection =
            select_nodes(&plan, &nodes, Selecting::ReadyAndBusy, &[], at(0)).expect("nodes");
        assert_eq!(selection.now, ids(&["n1", "n3"]));
        assert_eq!(selection.n_plan_not_allowed, 1);
        assert_eq!(selection.left_out.len(), 1);
        assert!(
            selection.left_out[0]
                .1
                .contains("n2 runs only the plans its allowed-plans label lists, not burn-in"),
            "{:?}",
            selection.left_out
        );
        plan.name = "flash-only".into();
        let selection =
            select_nodes(&plan, &nodes, Selecting::ReadyAndBusy, &[], at(0)).expect("nodes");
        assert_eq!(selection.now, ids(&["n2", "n3"]));
        assert_eq!(selection.n_plan_not_allowed, 1);
    }

    #[test]
    fn the_flag_or_the_plan_keeps_a_run_to_the_ready_nodes() {
        let mut plan = plan_for("hgx-h100");
        assert_eq!(Selecting::for_run(&plan, false), Selecting::ReadyAndBusy);
        assert_eq!(Selecting::for_run(&plan, true), Selecting::ReadyNow);
        plan.selection = Selecting::ReadyNow;
        assert_eq!(Selecting::for_run(&plan, false), Selecting::ReadyNow);
        assert_eq!(Selecting::for_run(&plan, true), Selecting::ReadyNow);
    }

    #[test]
    fn a_run_started_while_every_node_is_busy_waits_for_them() {
        let mut nodes: Vec<Node> = (1..=3)
            .map(|i| node(&format!("n{i}"), "hgx-h100"))
            .collect();
        for node in &mut nodes {
            node.state = NodeState::Busy;
        }
        let selection = select_nodes(
            &plan_for("hgx-h100"),
            &nodes,
            Selecting::ReadyAndBusy,
            &[],
            at(0),
        )
        .expect("nodes");
        assert!(selection.now.is_empty());
        assert_eq!(selection.waiting, ids(&["n1", "n2", "n3"]));
    }

    #[test]
    fn selection_respects_max_nodes_ready_first() {
        let mut nodes: Vec<Node> = (1..=5)
            .map(|i| node(&format!("n{i}"), "hgx-h100"))
            .collect();
        nodes[0].state = NodeState::Busy;
        nodes[2].state = NodeState::Busy;
        let mut plan = plan_for("hgx-h100");
        plan.max_nodes = Some(4);
        let selection =
            select_nodes(&plan, &nodes, Selecting::ReadyAndBusy, &[], at(0)).expect("nodes");
        assert_eq!(selection.now, ids(&["n2", "n4", "n5"]));
        assert_eq!(selection.waiting, ids(&["n1"]));
        assert_eq!(
            selection.left_out,
            vec![(
                NodeId::from("n3"),
                "n3 is beyond the plan's nodes: 4".to_owned()
            )]
        );
        plan.max_nodes = Some(2);
        let selection =
            select_nodes(&plan, &nodes, Selecting::ReadyAndBusy, &[], at(0)).expect("nodes");
        assert_eq!((selection.now.len(), selection.waiting.len()), (2, 0));
        assert_eq!(selection.nodes().count(), 2);
    }

    #[test]
    fn leases_get_a_fresh_grace_after_restart() {
        let grace = LeaseGrace {
            renewed: chrono::Duration::seconds(10),
            after_start: chrono::Duration::seconds(10),
        };
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

    #[test]
    fn a_lease_not_renewed_since_the_start_gets_the_longer_grace() {
        // `--lease-grace 4s` with 1 s heartbeats: 6 s after a start, 4 s once renewed.
        let grace = crate::lease::LeaseGrace::new(
            std::time::Duration::from_secs(4),
            std::time::Duration::from_secs(1),
        );
        let started = at(1000);
        let seen = vec![
            (NodeId::from("before-start"), Some(at(990))),
            (NodeId::from("renewed"), Some(at(1001))),
        ];
        assert!(expired_leases(&seen, started, grace, at(1005)).is_empty());
        assert_eq!(
            expired_leases(&seen, started, grace, at(1006)),
            vec![NodeId::from("renewed")]
        );
        assert_eq!(expired_leases(&seen, started, grace, at(1007)).len(), 2);
    }

    fn slot(name: &str, connected: bool, busy: bool) -> NodeSlot {
        NodeSlot {
            node: name.into(),
            state: NodeState::Ready,
            connected,
            has_active_job: busy,
            health: Health::Good,
            labels: Labels::new(),
        }
    }

    fn pending(job: &str, node: &str, t: i64) -> PendingJob {
        PendingJob {
            job: job.into(),
            run: "run-1".into(),
            node: node.into(),
            created_at: at(t),
            health_check: false,
            rollout: false,
        }
    }

    fn in_rack(name: &str, rack: &str) -> NodeSlot {
        NodeSlot {
            labels: [("rack".to_owned(), rack.to_owned())].into(),
            ..slot(name, true, false)
        }
    }

    /// `max-concurrent: {rack: 2}`: at most two of a run's jobs active per rack, counting the
    /// ones already running; another run, and a node without the label, are not held back.
    #[test]
    fn a_run_takes_at_most_its_max_concurrent_nodes_of_one_rack() {
        let nodes = [
            in_rack("r1-a", "r1"),
            in_rack("r1-b", "r1"),
            in_rack("r1-c", "r1"),
            in_rack("r1-d", "r1"),
            in_rack("r2-a", "r2"),
            slot("loose", true, false),
        ];
        let jobs: Vec<PendingJob> = ["r1-a", "r1-b", "r1-c", "r2-a", "loose"]
            .iter()
            .enumerate()
            .map(|(i, node)| pending(&format!("j{i}"), node, i as i64))
            .chain([PendingJob {
                run: "run-2".into(),
                ..pending("other-run", "r1-d", 9)
            }])
            .collect();
        let concurrency = Concurrency {
            limits: [("run-1".into(), [("rack".to_owned(), 2)].into())].into(),
            active: Vec::new(),
        };
        let assigned = |concurrency: &Concurrency| -> Vec<String> {
            plan(&nodes, &jobs, concurrency, &[], at(10))
                .into_iter()
                .map(|a| a.job.to_string())
                .collect()
        };
        assert_eq!(
            assigned(&concurrency),
            ["j0", "j1", "j3", "j4", "other-run"]
        );
        // With one of the run's jobs already running in r1, one more fits there.
        let running = Concurrency {
            active: vec![("run-1".into(), "r1-d".into())],
            ..concurrency.clone()
        };
        assert_eq!(assigned(&running), ["j0", "j3", "j4", "other-run"]);
        assert_eq!(
            within_limits(
                &[("rack".to_owned(), 2)].into(),
                &nodes[2].labels,
                &[nodes[0].labels.clone(), nodes[1].labels.clone()]
            ),
            Err(
                "2 of the run's jobs are active on nodes with rack=r1, the plan's \
                 max-concurrent for rack"
                    .to_owned()
            )
        );
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
            plan(&nodes, &jobs, &Concurrency::default(), &[], at(5)),
            vec![Assignment {
                job: "j1".into(),
                node: "a".into()
            }]
        );
    }

    /// A job waiting for a busy node goes out once the node is free, before younger jobs of
    /// the node; a node that is not in good health gets nothing.
    #[test]
    fn a_waiting_job_goes_out_when_its_node_frees_up() {
        let mut busy = slot("c", true, true);
        let mut suspect = slot("d", true, false);
        suspect.health = Health::Suspect;
        let jobs = [
            pending("younger", "c", 9),
            pending("older", "c", 3),
            pending("j5", "d", 1),
        ];
        assert!(
            plan(
                &[busy.clone(), suspect.clone()],
                &jobs,
                &Concurrency::default(),
                &[],
                at(10)
            )
            .is_empty()
        );
        busy.has_active_job = false;
        assert_eq!(
            plan(
                &[busy, suspect],
                &jobs,
                &Concurrency::default(),
                &[],
                at(11)
            ),
            vec![Assignment {
                job: "older".into(),
                node: "c".into()
            }]
        );
    }

    /// A suspect node gets its health check and nothing else; a bad one not even that.
    #[test]
    fn a_suspect_node_gets_only_health_checks() {
        let mut suspect = slot("s", true, false);
        suspect.health = Health::Suspect;
        let mut bad = slot("b", true, false);
        bad.health = Health::Bad;
        let check = |job: &str, node: &str| PendingJob {
            health_check: true,
            ..pending(job, node, 5)
        };
        let jobs = [
            pending("qual", "s", 1),
            check("hc", "s"),
            check("hc-bad", "b"),
        ];
        assert_eq!(
            plan(&[suspect, bad], &jobs, &Concurrency::default(), &[], at(10)),
            vec![Assignment {
                job: "hc".into(),
                node: "s".into()
            }]
        );
    }

    /// No job starts on a node while a maintenance window covers its label; it goes out once
    /// the window ends. Selection counts the node as busy (its job waits) or, ready-now,
    /// leaves it out saying which window holds it.
    #[test]
    fn no_job_starts_in_a_maintenance_window() {
        let window = crate::maintenance::MaintenanceWindow {
            id: "mw-1".into(),
            key: "rack".into(),
            value: "r1".into(),
            starts_at: at(100),
            ends_at: at(200),
            reason: "PDU swap".into(),
            created_by: "ops".into(),
        };
        let windows = [window];
        let nodes = [in_rack("a", "r1"), in_rack("b", "r2")];
        let jobs = [pending("ja", "a", 1), pending("jb", "b", 1)];
        let assigned = |now: i64| -> Vec<String> {
            plan(&nodes, &jobs, &Concurrency::default(), &windows, at(now))
                .into_iter()
                .map(|a| a.job.to_string())
                .collect()
        };
        assert_eq!(assigned(99), ["ja", "jb"]);
        assert_eq!(assigned(100), ["jb"]);
        assert_eq!(assigned(199), ["jb"]);
        assert_eq!(assigned(200), ["ja", "jb"]);

        // A rollout's procedure job is the exception: the rollout started the node inside
        // the window on purpose (`maintenance-windows: true`), so the window lets it through.
        let rollout_jobs = [
            PendingJob {
                rollout: true,
                ..pending("flash", "a", 1)
            },
            pending("qual", "a", 2),
        ];
        let in_window = plan(
            &nodes,
            &rollout_jobs,
            &Concurrency::default(),
            &windows,
            at(150),
        );
        assert_eq!(
            in_window,
            vec![Assignment {
                job: "flash".into(),
                node: "a".into()
            }]
        );

        let mut fleet = vec![node("a", "hgx-h100"), node("b", "hgx-h100")];
        fleet[0].labels.insert("rack".into(), "r1".into());
        let plan = plan_for("hgx-h100");
        let waits =
            select_nodes(&plan, &fleet, Selecting::ReadyAndBusy, &windows, at(150)).expect("nodes");
        assert_eq!(waits.now, ids(&["b"]));
        assert_eq!(waits.waiting, ids(&["a"]));
        assert!(
            waits.held[0]
                .1
                .starts_with("a is in maintenance window mw-1"),
            "{:?}",
            waits.held
        );
        let now =
            select_nodes(&plan, &fleet, Selecting::ReadyNow, &windows, at(150)).expect("nodes");
        assert_eq!(now.now, ids(&["b"]));
        assert!(
            now.left_out[0]
                .1
                .starts_with("a is in maintenance window mw-1 (rack=r1) until"),
            "{:?}",
            now.left_out
        );
        let after =
            select_nodes(&plan, &fleet, Selecting::ReadyNow, &windows, at(200)).expect("nodes");
        assert_eq!(after.now, ids(&["a", "b"]));
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
            let assignments = plan(&nodes, &pending, &Concurrency::default(), &[], at(0));
            let mut seen = std::collections::BTreeSet::new();
            for a in &assignments {
                prop_assert!(seen.insert(a.node.clone()), "node {} got two jobs", a.node);
                let slot = nodes.iter().find(|s| s.node == a.node).expect("known node");
                prop_assert!(slot.connected && !slot.has_active_job);
            }
        }
    }
}
