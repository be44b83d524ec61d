//! Periodic health checks: a plan of record run on every idle node it selects, every so often
//! (`tollgate node health-plan set PLAN --every 6h --release R`). A failed check makes a good
//! node `suspect`, which takes it out of selection; a passing one clears `suspect` again
//! ([`crate::node::HealthEvent::PeriodicCheck`]). Checks run only on idle nodes, never in a
//! maintenance window, and never count as qualification evidence.

use crate::fleet::{Health, NodeState};
use crate::job::JobState;
use crate::maintenance::MaintenanceWindow;
use crate::plan::Plan;
use crate::scheduler::{NodeSlot, plan_allowed};
use crate::{NodeId, PlanVersion, ReleaseId, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

/// The shortest period between two checks of one node.
pub const MIN_EVERY_SECONDS: u64 = 60;
/// The longest period between two checks of one node (90 days).
pub const MAX_EVERY_SECONDS: u64 = 90 * 86_400;

/// A health plan of record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthPlan {
    /// The plan run as the check.
    pub plan_name: String,
    /// Its version, pinned when the health plan was set.
    pub plan_version: PlanVersion,
    /// The release the check runs against (its components are what the steps see): the one
    /// the fleet runs.
    pub release: ReleaseId,
    /// How often each node is checked, in seconds.
    pub every_seconds: u64,
    /// Who set it.
    pub set_by: String,
    /// When.
    pub set_at: Timestamp,
}

/// Why a period is refused, or `None`.
pub fn check_every(seconds: u64) -> Option<String> {
    (!(MIN_EVERY_SECONDS..=MAX_EVERY_SECONDS).contains(&seconds)).then(|| {
        format!(
            "is {seconds} s; give a period from {MIN_EVERY_SECONDS} s to \
             {MAX_EVERY_SECONDS} s (90 days), for example 6h"
        )
    })
}

/// What an ended health check says about its node: passed when its job passed; failed when
/// it failed (a step failed); nothing when it ended otherwise (cancelled, lost, a harness
/// error: the harness is judged elsewhere, [`crate::node::REPEATED_ERRORS`]).
pub fn verdict(job: JobState) -> Option<bool> {
    match job {
        JobState::Passed => Some(true),
        JobState::Failed => Some(false),
        _ => None,
    }
}

/// A check to start now: `plan` on `node`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DueCheck {
    /// The health plan's plan name.
    pub plan: String,
    /// The node.
    pub node: NodeId,
}

/// The checks due at `now`, at most one per node: for each health plan (by plan name) every
/// node its plan selects (selector and `allowed-plans`) that is ready, connected, `good` or
/// `suspect`, idle (no active job, none pending: `waiting` lists the nodes with pending jobs),
/// outside any maintenance window, and not checked by that plan in the last `every_seconds`
/// (`last_checks`: when each (plan, node) check was last started). The plan's
/// `max-concurrent` holds across its checks: `open_checks` lists each check not ended yet,
/// as (plan, node), and no more start on nodes of a label value than it allows.
pub fn due(
    plans: &[(HealthPlan, Plan)],
    nodes: &[NodeSlot],
    waiting: &BTreeSet<NodeId>,
    last_checks: &HashMap<(String, NodeId), Timestamp>,
    open_checks: &[(String, NodeId)],
    windows: &[MaintenanceWindow],
    now: Timestamp,
) -> Vec<DueCheck> {
    let labels_of: HashMap<&NodeId, &crate::fleet::Labels> = nodes
        .iter()
        .map(|slot| (&slot.node, &slot.labels))
        .collect();
    let mut taken: BTreeSet<&NodeId> = BTreeSet::new();
    let mut ordered: Vec<&(HealthPlan, Plan)> = plans.iter().collect();
    ordered.sort_by(|a, b| a.0.plan_name.cmp(&b.0.plan_name));
    let mut checks = Vec::new();
    for (health_plan, plan) in ordered {
        let every = chrono::Duration::seconds(
            i64::try_from(health_plan.every_seconds).unwrap_or(i64::MAX / 1_000_000),
        );
        for slot in nodes {
            let idle = slot.connected
                && !slot.has_active_job
                && slot.state == NodeState::Ready
                && matches!(slot.health, Health::Good | Health::Suspect)
                && !waiting.contains(&slot.node);
            if !idle
                || taken.contains(&slot.node)
                || !plan.selector.matches(&slot.labels)
                || !plan_allowed(&slot.labels, &health_plan.plan_name)
                || crate::maintenance::holding(windows, &slot.labels, now).is_some()
            {
                continue;
            }
            let last = last_checks.get(&(health_plan.plan_name.clone(), slot.node.clone()));
            if last.is_some_and(|last| now - *last < every) {
                continue;
            }
            if !plan.max_concurrent.is_empty() {
                let open: Vec<crate::fleet::Labels> = open_checks
                    .iter()
                    .filter(|(name, _)| *name == health_plan.plan_name)
                    .map(|(_, node)| node)
                    .chain(
                        checks
                            .iter()
                            .filter(|check: &&DueCheck| check.plan == health_plan.plan_name)
                            .map(|check| &check.node),
                    )
                    .filter_map(|node| labels_of.get(node).map(|labels| (*labels).clone()))
                    .collect();
                if crate::scheduler::within_limits(&plan.max_concurrent, &slot.labels, &open)
                    .is_err()
                {
                    continue;
                }
            }
            taken.insert(&slot.node);
            checks.push(DueCheck {
                plan: health_plan.plan_name.clone(),
                node: slot.node.clone(),
            });
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Labels;
    use crate::test_support::{at, plan_for};

    fn slot(name: &str, sku: &str) -> NodeSlot {
        NodeSlot {
            node: name.into(),
            state: NodeState::Ready,
            connected: true,
            has_active_job: false,
            health: Health::Good,
            labels: Labels::from([("sku".to_owned(), sku.to_owned())]),
        }
    }

    fn health_plan(name: &str, every_seconds: u64) -> (HealthPlan, Plan) {
        let mut plan = plan_for("hgx-h100");
        plan.name = name.into();
        (
            HealthPlan {
                plan_name: name.into(),
                plan_version: PlanVersion("v1".into()),
                release: ReleaseId("r550".into()),
                every_seconds,
                set_by: "ops".into(),
                set_at: at(0),
            },
            plan,
        )
    }

    fn nodes(due: &[DueCheck]) -> Vec<&str> {
        due.iter().map(|check| check.node.as_str()).collect()
    }

    #[test]
    fn only_idle_matching_nodes_not_checked_lately_are_due() {
        let mut fleet = vec![
            slot("idle", "hgx-h100"),
            slot("other-sku", "hgx-b200"),
            slot("busy", "hgx-h100"),
            slot("waiting", "hgx-h100"),
            slot("cordoned", "hgx-h100"),
            slot("bad", "hgx-h100"),
            slot("suspect", "hgx-h100"),
            slot("gone", "hgx-h100"),
            slot("checked", "hgx-h100"),
            slot("held", "hgx-h100"),
        ];
        fleet[2].has_active_job = true;
        fleet[4].state = NodeState::Cordoned;
        fleet[5].health = Health::Bad;
        fleet[6].health = Health::Suspect;
        fleet[7].connected = false;
        fleet[9].labels.insert("rack".into(), "r1".into());
        let waiting = BTreeSet::from([NodeId("waiting".into())]);
        let window = MaintenanceWindow {
            id: "mw-1".into(),
            key: "rack".into(),
            value: "r1".into(),
            starts_at: at(0),
            ends_at: at(86_400),
            reason: "PDU swap".into(),
            created_by: "ops".into(),
        };
        let plans = [health_plan("node-health", 3_600)];
        let last = HashMap::from([(
            ("node-health".to_owned(), NodeId("checked".into())),
            at(1_000),
        )]);
        let due_at = |now| {
            due(
                &plans,
                &fleet,
                &waiting,
                &last,
                &[],
                std::slice::from_ref(&window),
                at(now),
            )
        };
        assert_eq!(nodes(&due_at(4_599)), ["idle", "suspect"]);
        assert_eq!(nodes(&due_at(4_600)), ["idle", "suspect", "checked"]);
        assert!(due(&[], &fleet, &waiting, &last, &[], &[], at(0)).is_empty());
    }

    #[test]
    fn a_node_gets_one_check_at_a_time_the_first_plan_by_name_first() {
        let fleet = [slot("n1", "hgx-h100")];
        let plans = [health_plan("zz-burn", 60), health_plan("aa-quick", 60)];
        let checks = due(
            &plans,
            &fleet,
            &BTreeSet::new(),
            &HashMap::new(),
            &[],
            &[],
            at(0),
        );
        assert_eq!(
            checks,
            [DueCheck {
                plan: "aa-quick".into(),
                node: "n1".into()
            }]
        );
    }

    /// `max-concurrent: {rack: 1}` on the health plan: one check at a time per rack, counting
    /// the checks still open.
    #[test]
    fn a_plan_s_max_concurrent_holds_across_its_checks() {
        let in_rack = |name: &str, rack: &str| {
            let mut slot = slot(name, "hgx-h100");
            slot.labels.insert("rack".into(), rack.into());
            slot
        };
        let fleet = [
            in_rack("r1-a", "r1"),
            in_rack("r1-b", "r1"),
            in_rack("r2-a", "r2"),
            in_rack("r2-b", "r2"),
        ];
        let mut limited = health_plan("node-health", 60);
        limited.1.max_concurrent = [("rack".to_owned(), 1)].into();
        let plans = [limited];
        let none = BTreeSet::new();
        let last = HashMap::new();
        let checks = due(&plans, &fleet, &none, &last, &[], &[], at(0));
        assert_eq!(nodes(&checks), ["r1-a", "r2-a"]);
        // r1-a is still being checked (its own node busy with it): r1 takes no other.
        let mut busy = fleet.clone();
        busy[0].has_active_job = true;
        let open = [("node-health".to_owned(), NodeId("r1-a".into()))];
        let checks = due(&plans, &busy, &none, &last, &open, &[], at(0));
        assert_eq!(nodes(&checks), ["r2-a"]);
        // Another plan's open checks do not count.
        let other = [("burn-in".to_owned(), NodeId("r1-a".into()))];
        let checks = due(&plans, &busy, &none, &last, &other, &[], at(0));
        assert_eq!(nodes(&checks), ["r1-b", "r2-a"]);
    }

    #[test]
    fn periods_outside_a_minute_to_ninety_days_are_refused() {
        assert!(check_every(60).is_none());
        assert!(check_every(90 * 86_400).is_none());
        assert!(check_every(59).expect("refused").contains("for example 6h"));
        assert!(check_every(90 * 86_400 + 1).is_some());
        assert_eq!(verdict(JobState::Passed), Some(true));
        assert_eq!(verdict(JobState::Failed), Some(false));
        for state in [JobState::Error, JobState::Lost, JobState::Cancelled] {
            assert_eq!(verdict(state), None, "{state}");
        }
    }
}
