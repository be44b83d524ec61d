//! Periodic health checks, run by the replica that expires leases, every tick: the nodes'
//! health is judged from each check whose run ended (`tollgate_domain::health_plan::verdict`,
//! then `node::next` with `PeriodicCheck`), and a check is started on every node due one
//! (`tollgate_domain::health_plan::due`) as a run of purpose `health` with one pending job,
//! which the scheduler sends like any other (also to a `suspect` node).

use crate::grpc::new_id;
use crate::shared::Shared;
use crate::store::{AuditNote, JobRecord, RunPurpose, RunRecord, RunState, StoreError};
use std::collections::BTreeSet;
use tollgate_domain::health_plan::{self, DueCheck};
use tollgate_domain::node::HealthEvent;
use tollgate_domain::scheduler::NodeSlot;
use tollgate_domain::{JobId, RunId};

/// The actor of health checks in the audit log.
const ACTOR: &str = "health-plan";

/// Judges ended checks, then starts due ones; returns the checks started.
pub async fn tick(shared: &Shared) -> Result<Vec<DueCheck>, StoreError> {
    judge_ended(shared).await?;
    start_due(shared).await
}

/// Applies what each ended check says to its node's health, once (a compare-and-set on the
/// check keeps a second replica from judging it again; judging twice would change nothing).
async fn judge_ended(shared: &Shared) -> Result<(), StoreError> {
    for check in shared.store.ended_health_checks().await? {
        let verdict = health_plan::verdict(check.job_state);
        if let Some(passed) = verdict {
            let detail = if passed {
                format!(
                    "health check {} passed (run {}, `tollgate run show {}`)",
                    check.plan_name, check.run, check.run
                )
            } else {
                format!(
                    "health check {} failed (run {}): see `tollgate run show {}`; a passing \
                     check or `tollgate node health {} --set good --reason ...` clears it",
                    check.plan_name, check.run, check.run, check.node
                )
            };
            let event = HealthEvent::PeriodicCheck { passed, detail };
            if let Some(change) =
                crate::grpc::node::change_health(shared, &check.node, ACTOR, &event).await?
            {
                tracing::warn!(node = %check.node, run = %check.run, from = %change.from, to = %change.to, "node health changed by a health check");
            }
        }
        let verdict = match verdict {
            Some(true) => "passed",
            Some(false) => "failed",
            None => "none",
        };
        shared
            .store
            .judge_health_check(&check.run, verdict, shared.now())
            .await?;
        tracing::info!(node = %check.node, run = %check.run, plan = check.plan_name, verdict, job = %check.job_state, "health check judged");
    }
    Ok(())
}

/// Starts a check on every node due one.
async fn start_due(shared: &Shared) -> Result<Vec<DueCheck>, StoreError> {
    let health_plans = shared.store.health_plans().await?;
    if health_plans.is_empty() {
        return Ok(Vec::new());
    }
    let mut plans = Vec::with_capacity(health_plans.len());
    for health_plan in health_plans {
        match shared
            .store
            .get_plan(
                &health_plan.plan_name,
                Some(health_plan.plan_version.as_str()),
            )
            .await?
        {
            Some(stored) => plans.push((health_plan, stored.plan)),
            None => {
                tracing::warn!(plan = health_plan.plan_name, version = %health_plan.plan_version, "health plan names a plan version that is gone; set it again")
            }
        }
    }
    let now = shared.now();
    let nodes = shared.store.list_nodes().await?;
    let active: BTreeSet<_> = shared
        .store
        .active_jobs()
        .await?
        .into_iter()
        .map(|job| job.node)
        .collect();
    let waiting: BTreeSet<_> = shared
        .store
        .pending_jobs()
        .await?
        .into_iter()
        .map(|job| job.node)
        .collect();
    // Liveness is the fleet's: an agent connected to any replica can be sent its check.
    let slots: Vec<NodeSlot> = nodes
        .into_iter()
        .map(|node| NodeSlot {
            connected: shared.agent_connected(&node.id, node.last_seen_at, now),
            has_active_job: active.contains(&node.id),
            node: node.id,
            state: node.state,
            health: node.health,
            labels: node.labels,
        })
        .collect();
    let last = shared.store.last_health_checks().await?;
    let open = shared.store.open_health_checks().await?;
    let windows = shared.store.maintenance_windows(now, false).await?;
    let due = health_plan::due(&plans, &slots, &waiting, &last, &open, &windows, now);
    for check in &due {
        let Some((health_plan, _)) = plans
            .iter()
            .find(|(health_plan, _)| health_plan.plan_name == check.plan)
        else {
            continue;
        };
        let Some(release) = shared.store.get_release(&health_plan.release).await? else {
            tracing::warn!(plan = check.plan, release = %health_plan.release, "health plan names a release that is gone; set it again");
            continue;
        };
        let run = RunRecord {
            id: RunId::new(new_id("run")),
            release: release.id.clone(),
            plan_name: health_plan.plan_name.clone(),
            plan_version: health_plan.plan_version.clone(),
            milestone: release.milestone.to_string(),
            state: RunState::Running,
            created_at: now,
            finished_at: None,
            purpose: RunPurpose::Health,
        };
        let job =
            JobRecord::first_pending(JobId::new(new_id("job")), &run, check.node.clone(), now);
        let note = AuditNote::new(now, ACTOR, "health.check", format!("run/{}", run.id))
            .release(&run.release)
            .details(serde_json::json!({
                "plan": run.plan_name,
                "plan_version": run.plan_version.as_str(),
                "node": check.node.as_str(),
                "every_seconds": health_plan.every_seconds,
            }));
        shared.store.create_run(&run, &[job], &note).await?;
        tracing::info!(run = %run.id, node = %check.node, plan = run.plan_name, "health check started");
    }
    if !due.is_empty() {
        shared.poke_scheduler();
        shared.notify_changed();
    }
    Ok(due)
}
