//! The scheduler loop: wakes when poked (an agent connected, a run started, a job ended) or
//! every tick, asks `tollgate_domain::scheduler::plan` which pending jobs go out now, moves
//! each to `assigned` under a new lease epoch and sends it over its node's session.
//!
//! If the send fails (the agent's stream just went away) the job stays `assigned`: when the
//! agent reconnects, [`resend_assigned`] sends it again; if the node never comes back, the
//! lease watchdog turns the job `lost`. A job an agent was running when its stream dropped
//! stays `running`; its results still count when the agent uploads them, and if its
//! heartbeats stop the watchdog loses it too.

use crate::grpc::convert::{ToProto, step_to_proto};
use crate::shared::Shared;
use crate::store::{JobRecord, StoreError};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tollgate_domain::RunId;
use tollgate_domain::job::{self, JobEvent, JobState};
use tollgate_domain::scheduler::NodeSlot;
use tollgate_proto::v1::{self as proto, ControllerCommand, controller_command::Command};

/// Why an assignment could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    /// A row the job refers to is gone.
    #[error("{0} not found")]
    Missing(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs until shutdown starts.
pub async fn run_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.subscribe_shutdown();
    let tick = shared.config.tick;
    tracing::debug!(tick_ms = tick.as_millis(), "scheduler started");
    while shared.wait_for_work(&mut shutdown, tick).await {
        if let Err(error) = schedule_once(&shared).await {
            tracing::warn!(%error, "scheduling pass failed; retrying at the next tick");
        }
    }
    tracing::debug!("scheduler stopped");
}

/// One scheduling pass; returns how many jobs were assigned.
pub async fn schedule_once(shared: &Shared) -> Result<usize, StoreError> {
    let pending = shared.store.pending_jobs().await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let slots = node_slots(shared).await?;
    let now = shared.now();
    let assignments = tollgate_domain::scheduler::plan(&slots, &pending, now);
    let mut commands = CommandCache::default();
    let mut n_assigned = 0;
    for assignment in assignments {
        if assign(shared, &assignment.job, &mut commands).await? {
            n_assigned += 1;
        }
    }
    if n_assigned > 0 {
        shared.notify_changed();
    }
    Ok(n_assigned)
}

/// Every node as the scheduler sees it: state, health, whether its agent is connected here
/// and whether it has an active job.
async fn node_slots(shared: &Shared) -> Result<Vec<NodeSlot>, StoreError> {
    let nodes = shared.store.list_nodes().await?;
    let busy: BTreeSet<_> = shared
        .store
        .active_jobs()
        .await?
        .into_iter()
        .map(|job| job.node)
        .collect();
    Ok(nodes
        .iter()
        .map(|node| NodeSlot {
            node: node.id.clone(),
            state: node.state,
            connected: shared.sessions.is_connected(&node.id),
            has_active_job: busy.contains(&node.id),
            health: node.health,
        })
        .collect())
}

/// Assigns one planned job: decided by `job::decide` from its facts as stored now, applied
/// with compare-and-set, then sent to its agent. Returns whether it was assigned (a job
/// cancelled, taken or moved meanwhile waits for the next pass).
async fn assign(
    shared: &Shared,
    job_id: &tollgate_domain::JobId,
    commands: &mut CommandCache,
) -> Result<bool, StoreError> {
    let now = shared.now();
    let Some(facts) = shared.store.job_facts(job_id).await? else {
        return Ok(false);
    };
    let change = match job::decide(&facts, JobEvent::Assigned, facts.lease_epoch + 1) {
        Ok(change) => change,
        // Cancelled or taken by another replica since `pending_jobs` read it, or its node
        // went away: the job waits for the next pass.
        Err(refusal) => {
            tracing::debug!(job = %facts.id, %refusal, "job not assigned");
            return Ok(false);
        }
    };
    let assigned = JobRecord {
        id: facts.id.clone(),
        run_id: facts.run.clone(),
        node: facts.node.clone(),
        state: change.to,
        lease_epoch: change.to_epoch,
        created_at: now,
        updated_at: now,
    };
    // Build the command before the job changes state, so a missing plan or release
    // leaves the job pending instead of assigned to an agent that never hears of it.
    let command = match commands.build(shared, &assigned).await {
        Ok(command) => command,
        Err(error) => {
            tracing::warn!(job = %facts.id, %error, "cannot build the assignment; job stays pending");
            return Ok(false);
        }
    };
    match shared.store.apply_job_change(&change, now).await {
        Ok(()) => {}
        Err(StoreError::Conflict { detail, .. }) => {
            tracing::debug!(job = %facts.id, detail, "job or node changed before the job was assigned");
            return Ok(false);
        }
        Err(error) => return Err(error),
    }
    tracing::info!(job = %facts.id, run = %facts.run, node = %facts.node, lease_epoch = change.to_epoch, "job assigned");
    if let Err(error) = shared.sessions.send(&facts.node, command) {
        tracing::warn!(
            job = %facts.id,
            %error,
            "assignment not delivered; it is sent again when the agent reconnects"
        );
    }
    Ok(true)
}

/// Sends the node's `assigned` jobs again: its agent reconnected and may never have seen them.
pub async fn resend_assigned(
    shared: &Shared,
    node: &tollgate_domain::NodeId,
) -> Result<(), StoreError> {
    let mut commands = CommandCache::default();
    for job in shared.store.active_jobs().await? {
        if &job.node != node || job.state != JobState::Assigned {
            continue;
        }
        match commands.build(shared, &job).await {
            Ok(command) => {
                tracing::info!(job = %job.id, node = %node, "assignment sent again after reconnect");
                if let Err(error) = shared.sessions.send(node, command) {
                    tracing::warn!(job = %job.id, %error, "assignment not delivered");
                }
            }
            Err(error) => tracing::warn!(job = %job.id, %error, "cannot rebuild the assignment"),
        }
    }
    Ok(())
}

/// The `AssignJob` of each run, built once per pass.
#[derive(Default)]
struct CommandCache {
    by_run: HashMap<RunId, proto::AssignJob>,
}

impl CommandCache {
    async fn build(
        &mut self,
        shared: &Shared,
        job: &JobRecord,
    ) -> Result<ControllerCommand, AssignError> {
        if !self.by_run.contains_key(&job.run_id) {
            let template = assignment_template(shared, &job.run_id).await?;
            self.by_run.insert(job.run_id.clone(), template);
        }
        let template = self
            .by_run
            .get(&job.run_id)
            .ok_or_else(|| AssignError::Missing(format!("run {}", job.run_id)))?;
        Ok(ControllerCommand {
            command: Some(Command::AssignJob(proto::AssignJob {
                job_id: job.id.to_string(),
                lease_epoch: job.lease_epoch,
                ..template.clone()
            })),
        })
    }
}

/// Everything of an `AssignJob` that is the same for every job of a run.
async fn assignment_template(
    shared: &Shared,
    run_id: &RunId,
) -> Result<proto::AssignJob, AssignError> {
    let run = shared
        .store
        .get_run(run_id)
        .await?
        .ok_or_else(|| AssignError::Missing(format!("run {run_id}")))?;
    let release = shared
        .store
        .get_release(&run.release)
        .await?
        .ok_or_else(|| AssignError::Missing(format!("release {}", run.release)))?;
    let plan = shared
        .store
        .get_plan(&run.plan_name, Some(run.plan_version.as_str()))
        .await?
        .ok_or_else(|| {
            AssignError::Missing(format!("plan {}@{}", run.plan_name, run.plan_version))
        })?;
    Ok(proto::AssignJob {
        job_id: String::new(),
        run_id: run.id.to_string(),
        lease_epoch: 0,
        release: release.id.to_string(),
        components: release.components.iter().map(ToProto::to_proto).collect(),
        milestone: run.milestone.clone(),
        plan_name: run.plan_name.clone(),
        plan_version: plan.version.to_string(),
        steps: plan
            .plan
            .steps
            .iter()
            .enumerate()
            .map(|(idx, step)| step_to_proto(u32::try_from(idx).unwrap_or(u32::MAX), step))
            .collect(),
    })
}
