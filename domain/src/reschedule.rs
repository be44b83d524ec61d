//! Retries at the job level: whether a job that ended is started again on another node
//! (its plan's `reschedule: {attempts: N}`, or its node was drained past a deadline), which
//! node takes it, and which attempt of a job counts.
//!
//! ```text
//!   job (attempt 1, n1) ──lost | error──▶ job (attempt 2, n2, rescheduled from the first) ──▶ …
//!   job on a draining node ──drain deadline: cancelled──▶ job (next attempt, another node)
//! ```
//!
//! A rescheduled job stays in its run, ended as it ended; its successor is a new pending job of
//! the same run, created in the same transaction as the end, so the run never finishes in
//! between. The gate and the reports count the final attempt only ([`superseded`]).

use crate::fleet::{Health, Node, NodeState};
use crate::job::JobState;
use crate::plan::Plan;
use crate::scheduler::plan_allowed;
use crate::{JobId, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Why a job is started again.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Cause {
    /// Its node's lease ran out (`lost`).
    Lost,
    /// A step's final attempt was a harness error (`error`), not a failure of what was tested.
    Error,
    /// Its node was drained with a deadline that passed before the job ended (`cancelled`).
    DrainDeadline,
}

impl Cause {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Why a job that ends in `to` would be started again: `lost` and `error` (harness
    /// reasons), and a cancellation at a drain's deadline (`drained`); `None` for every other
    /// end (passed, failed, a manager's cancel).
    pub fn of_end(to: JobState, drained: bool) -> Option<Self> {
        match to {
            JobState::Lost => Some(Self::Lost),
            JobState::Error => Some(Self::Error),
            JobState::Cancelled if drained => Some(Self::DrainDeadline),
            _ => None,
        }
    }
}

/// A decided reschedule: the new job, created pending in the ended job's run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reschedule {
    /// The new job's id.
    pub job: JobId,
    /// The node it goes to.
    pub node: NodeId,
    /// Its attempt: the ended job's plus one (the first job of a node is attempt 1).
    pub attempt: u32,
    /// Why.
    pub cause: Cause,
}

/// Why an ended job is not started again; the message says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotRescheduled {
    /// Its plan does not ask for it.
    #[error("its plan sets no `reschedule: {{attempts: N}}`")]
    NotAsked,
    /// The plan's attempts are spent.
    #[error(
        "it was attempt {attempt}; its plan allows {allowed} reschedule(s) \
         (`reschedule: {{attempts: {allowed}}}`)"
    )]
    AttemptsSpent {
        /// The ended job's attempt.
        attempt: u32,
        /// The plan's `reschedule.attempts`.
        allowed: u32,
    },
    /// No node can take it.
    #[error(
        "no other node can take it (matching the plan's selector, in good health, ready or \
         busy, and not tried before: {tried})"
    )]
    NoNode {
        /// The nodes of earlier attempts, as text.
        tried: String,
    },
}

/// Whether jobs of a run for `purpose` are ever started again elsewhere: a qualification's
/// are; a health check's never (it checks its node: another node's result says nothing of it,
/// even at a drain deadline).
pub fn reschedules(purpose: crate::run::RunPurpose) -> bool {
    purpose == crate::run::RunPurpose::Qualification
}

/// The node an ended job of `plan` goes to next, and its attempt, or why it is not started
/// again.
///
/// `attempt` is the ended job's attempt; `tried` the nodes of every attempt so far (its own
/// included); `nodes` the fleet as it is seen now (a node without a live agent shown
/// `unreachable`); `busy_in_run` the nodes holding an open job of the same run.
///
/// A drain deadline always moves the job (the operator took the node away, not the harness);
/// `lost` and `error` move it while the plan's `reschedule.attempts` are not spent. The node
/// is one matching the plan's selector and `allowed-plans`, in good health, `ready` or `busy`,
/// and not one tried before; ready nodes first, then nodes without an open job of the run,
/// then by name.
pub fn next_node(
    plan: &Plan,
    cause: Cause,
    attempt: u32,
    tried: &[NodeId],
    busy_in_run: &[NodeId],
    nodes: &[Node],
) -> Result<(NodeId, u32), NotRescheduled> {
    if cause != Cause::DrainDeadline {
        if plan.reschedule_attempts == 0 {
            return Err(NotRescheduled::NotAsked);
        }
        if attempt > plan.reschedule_attempts {
            return Err(NotRescheduled::AttemptsSpent {
                attempt,
                allowed: plan.reschedule_attempts,
            });
        }
    }
    let tried_set: HashSet<&NodeId> = tried.iter().collect();
    let busy_in_run: HashSet<&NodeId> = busy_in_run.iter().collect();
    nodes
        .iter()
        .filter(|node| {
            plan.selector.matches(&node.labels)
                && plan_allowed(&node.labels, &plan.name)
                && node.health == Health::Good
                && matches!(node.state, NodeState::Ready | NodeState::Busy)
                && !tried_set.contains(&node.id)
        })
        .min_by_key(|node| {
            (
                node.state != NodeState::Ready,
                busy_in_run.contains(&node.id),
                &node.id,
            )
        })
        .map(|node| (node.id.clone(), attempt.saturating_add(1)))
        .ok_or_else(|| NotRescheduled::NoNode {
            tried: tried
                .iter()
                .map(NodeId::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The jobs that do not count because a later attempt replaced them: every job another one
/// was rescheduled from. `jobs` gives each job's id and the job it was rescheduled from. The
/// one place that decides which attempt of a job counts; the gate and the reports ask it.
pub fn superseded<'a>(
    jobs: impl IntoIterator<Item = (&'a JobId, Option<&'a JobId>)>,
) -> HashSet<JobId> {
    jobs.into_iter()
        .filter_map(|(_, from)| from.cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_health_check_is_never_started_again_elsewhere() {
        assert!(reschedules(crate::run::RunPurpose::Qualification));
        assert!(!reschedules(crate::run::RunPurpose::Health));
    }
    use crate::test_support::{node, node_ids as ids, plan_for};

    fn plan(attempts: u32) -> Plan {
        Plan {
            reschedule_attempts: attempts,
            ..plan_for("hgx-h100")
        }
    }

    #[test]
    fn only_harness_ends_and_drain_deadlines_are_rescheduled() {
        assert_eq!(Cause::of_end(JobState::Lost, false), Some(Cause::Lost));
        assert_eq!(Cause::of_end(JobState::Error, false), Some(Cause::Error));
        assert_eq!(
            Cause::of_end(JobState::Cancelled, true),
            Some(Cause::DrainDeadline)
        );
        for end in [JobState::Passed, JobState::Failed, JobState::Cancelled] {
            assert_eq!(Cause::of_end(end, false), None, "{end}");
        }
        assert_eq!(Cause::of_end(JobState::Failed, true), None);
    }

    #[test]
    fn a_job_is_rescheduled_as_often_as_its_plan_allows_and_no_more() {
        let nodes = vec![
            node("n1", "hgx-h100"),
            node("n2", "hgx-h100"),
            node("n3", "hgx-h100"),
        ];
        assert_eq!(
            next_node(&plan(0), Cause::Lost, 1, &ids(&["n1"]), &[], &nodes),
            Err(NotRescheduled::NotAsked)
        );
        assert_eq!(
            next_node(&plan(2), Cause::Error, 1, &ids(&["n1"]), &[], &nodes),
            Ok(("n2".into(), 2))
        );
        assert_eq!(
            next_node(&plan(2), Cause::Lost, 2, &ids(&["n1", "n2"]), &[], &nodes),
            Ok(("n3".into(), 3))
        );
        let spent = next_node(
            &plan(2),
            Cause::Lost,
            3,
            &ids(&["n1", "n2", "n3"]),
            &[],
            &nodes,
        )
        .unwrap_err();
        assert_eq!(
            spent,
            NotRescheduled::AttemptsSpent {
                attempt: 3,
                allowed: 2
            }
        );
        assert!(spent.to_string().contains("attempts: 2"), "{spent}");
        // A drain deadline moves the job whatever the plan says.
        assert_eq!(
            next_node(
                &plan(0),
                Cause::DrainDeadline,
                1,
                &ids(&["n1"]),
                &[],
                &nodes
            ),
            Ok(("n2".into(), 2))
        );
    }

    #[test]
    fn the_next_node_is_an_untried_eligible_one_ready_and_outside_the_run_first() {
        let mut nodes = vec![
            node("n1", "hgx-h100"),
            node("n2", "hgx-h100"),
            node("n3", "hgx-h100"),
            node("n4", "hgx-h100"),
            node("n5", "hgx-b200"),
            node("n6", "hgx-h100"),
            node("n7", "hgx-h100"),
        ];
        nodes[1].state = NodeState::Busy;
        nodes[2].health = Health::Suspect;
        nodes[5].state = NodeState::Maintenance;
        nodes[6].state = NodeState::Unreachable;
        let plan = plan(3);
        // n4 is ready but holds a job of the run; n2 is busy elsewhere: n4 goes first (ready).
        assert_eq!(
            next_node(&plan, Cause::Lost, 1, &ids(&["n1"]), &ids(&["n4"]), &nodes),
            Ok(("n4".into(), 2))
        );
        // Without n4, the busy n2 (its job waits until n2 frees up).
        assert_eq!(
            next_node(&plan, Cause::Lost, 2, &ids(&["n1", "n4"]), &[], &nodes),
            Ok(("n2".into(), 3))
        );
        let none = next_node(
            &plan,
            Cause::Lost,
            3,
            &ids(&["n1", "n2", "n4"]),
            &[],
            &nodes,
        )
        .unwrap_err();
        assert!(
            matches!(&none, NotRescheduled::NoNode { tried } if tried == "n1, n2, n4"),
            "{none:?}"
        );
    }

    #[test]
    fn a_job_rescheduled_from_does_not_count() {
        let (a, b, c, d) = (
            JobId::from("a"),
            JobId::from("b"),
            JobId::from("c"),
            JobId::from("d"),
        );
        let gone = superseded([(&a, None), (&b, Some(&a)), (&c, Some(&b)), (&d, None)]);
        assert_eq!(gone, [a, b].into_iter().collect());
    }
}
