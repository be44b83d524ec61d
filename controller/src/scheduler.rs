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
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tollgate_domain::RunId;
use tollgate_domain::fleet::Labels;
use tollgate_domain::job::{self, JobEvent};
use tollgate_domain::scheduler::{Concurrency, NodeSlot};
use tollgate_proto::v1::{self as proto, ControllerCommand, controller_command::Command};
use tracing::Instrument as _;

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

/// The least time from the end of one scheduling pass to the start of the next.
const PASS_SPACING: std::time::Duration = std::time::Duration::from_millis(20);

/// Runs until shutdown starts.
pub async fn run_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.subscribe_shutdown();
    let tick = shared.config.tick;
    tracing::debug!(tick_ms = tick.as_millis(), "scheduler started");
    while shared.wait_for_work(&mut shutdown, tick).await {
        if let Err(error) = schedule_once(&shared)
            .instrument(crate::traces::pass("scheduler pass"))
            .await
        {
            tracing::warn!(%error, "scheduling pass failed; retrying at the next tick");
        }
        // Pokes that arrive meanwhile are taken together by the next pass: while results
        // stream in, each ended job pokes (1,000 nodes ending a step made about 4,000 passes,
        // each reading the pending jobs), and a new job waits at most this long more.
        tokio::time::sleep(PASS_SPACING).await;
    }
    tracing::debug!("scheduler stopped");
}

/// One scheduling pass; returns how many jobs were assigned.
pub async fn schedule_once(shared: &Shared) -> Result<usize, StoreError> {
    let pending = shared.store.pending_jobs().await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let (slots, active) = node_slots(shared).await?;
    let now = shared.now();
    let mut commands = CommandCache::default();
    let mut concurrency = Concurrency {
        limits: BTreeMap::new(),
        active,
    };
    for run in pending.iter().map(|job| &job.run).collect::<BTreeSet<_>>() {
        match commands.max_concurrent(shared, run).await {
            Ok(limits) if !limits.is_empty() => {
                concurrency.limits.insert(run.clone(), limits);
            }
            Ok(_) => {}
            // Its jobs cannot be built either: `assign` says why and leaves them pending.
            Err(error) => tracing::debug!(run = %run, %error, "no plan limits for the run"),
        }
    }
    let windows = shared.store.maintenance_windows(now, false).await?;
    let assignments =
        tollgate_domain::scheduler::plan(&slots, &pending, &concurrency, &windows, now);
    let labels: HashMap<&tollgate_domain::NodeId, &Labels> = slots
        .iter()
        .map(|slot| (&slot.node, &slot.labels))
        .collect();
    let run_of: HashMap<&tollgate_domain::JobId, &RunId> =
        pending.iter().map(|job| (&job.job, &job.run)).collect();
    let job_ids: Vec<&tollgate_domain::JobId> = assignments
        .iter()
        .map(|assignment| &assignment.job)
        .collect();
    let mut facts = shared.store.job_facts_of_jobs(&job_ids).await?;
    let mut prepared = Vec::with_capacity(assignments.len());
    for assignment in &assignments {
        let limit = run_of
            .get(&assignment.job)
            .and_then(|run| concurrency.limits.get(*run))
            .zip(labels.get(&assignment.node).copied());
        let Some(facts) = facts.remove(&assignment.job) else {
            // Gone since `pending_jobs` read it.
            continue;
        };
        if let Some(ready) = prepare(shared, facts, limit, &mut commands).await? {
            prepared.push(ready);
        }
    }
    // Applied all at once: on SQLite the assignments share commits (`group_commit.rs`)
    // instead of waiting for one fsync each.
    let applied =
        futures::future::join_all(prepared.into_iter().map(|ready| apply(shared, ready))).await;
    let mut n_assigned = 0;
    for outcome in applied {
        if outcome? {
            n_assigned += 1;
        }
    }
    if n_assigned > 0 {
        shared.notify_changed();
    }
    Ok(n_assigned)
}

/// Every node as the scheduler sees it: state, health, labels, whether its agent is connected
/// here and whether it has an active job; and the active jobs, as (run, node).
async fn node_slots(
    shared: &Shared,
) -> Result<(Vec<NodeSlot>, Vec<(RunId, tollgate_domain::NodeId)>), StoreError> {
    let nodes = shared.store.list_nodes().await?;
    let active: Vec<_> = shared
        .store
        .active_jobs()
        .await?
        .into_iter()
        .map(|job| (job.run_id, job.node))
        .collect();
    let busy: BTreeSet<_> = active.iter().map(|(_, node)| node).collect();
    let slots = nodes
        .into_iter()
        .map(|node| NodeSlot {
            connected: shared.sessions.is_connected(&node.id),
            has_active_job: busy.contains(&node.id),
            node: node.id,
            state: node.state,
            health: node.health,
            labels: node.labels,
        })
        .collect();
    Ok((slots, active))
}

/// A planned job decided and its command built, ready to apply.
struct Ready<'a> {
    facts: job::JobFacts,
    change: job::JobChange,
    command: proto::ControllerCommand,
    limit: Option<(&'a BTreeMap<String, u32>, &'a Labels)>,
    now: tollgate_domain::Timestamp,
}

/// Decides one planned job's assignment by `job::decide` from its `facts` as stored now (read
/// for the pass's assignments together) and builds its command; `None` when it is not to be
/// assigned now (cancelled, taken or moved meanwhile, or its command cannot be built: it
/// waits for the next pass).
async fn prepare<'a>(
    shared: &Shared,
    facts: job::JobFacts,
    limit: Option<(&'a BTreeMap<String, u32>, &'a Labels)>,
    commands: &mut CommandCache,
) -> Result<Option<Ready<'a>>, StoreError> {
    let now = shared.now();
    let change = match job::decide(&facts, JobEvent::Assigned, facts.lease_epoch + 1) {
        Ok(change) => change,
        // Cancelled or taken by another replica since `pending_jobs` read it, or its node
        // went away: the job waits for the next pass.
        Err(refusal) => {
            tracing::debug!(job = %facts.id, %refusal, "job not assigned");
            return Ok(None);
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
        attempt: 1,
        rescheduled_from: None,
    };
    // Build the command before the job changes state, so a missing plan or release
    // leaves the job pending instead of assigned to an agent that never hears of it.
    let command = match commands.build(shared, &assigned).await {
        Ok(command) => command,
        Err(error) => {
            tracing::warn!(job = %facts.id, %error, "cannot build the assignment; job stays pending");
            return Ok(None);
        }
    };
    Ok(Some(Ready {
        facts,
        change,
        command,
        limit,
        now,
    }))
}

/// Applies a prepared assignment with compare-and-set, then sends it to its agent. Returns
/// whether it was assigned (a job cancelled, taken or moved meanwhile waits for the next
/// pass).
async fn apply(shared: &Shared, ready: Ready<'_>) -> Result<bool, StoreError> {
    let Ready {
        facts,
        change,
        command,
        limit,
        now,
    } = ready;
    let applied = match limit {
        Some((limits, labels)) => {
            shared
                .store
                .assign_job_within(&change, now, limits, labels)
                .await
        }
        None => shared.group_commit.apply(&shared.store, &change, now).await,
    };
    match applied {
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
    for job in shared.store.assigned_jobs_of_node(node).await? {
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

/// The `AssignJob` of each run, and its plan's `max-concurrent`, built once per pass.
#[derive(Default)]
struct CommandCache {
    by_run: HashMap<RunId, proto::AssignJob>,
    limits_by_run: HashMap<RunId, BTreeMap<String, u32>>,
}

impl CommandCache {
    /// The `max-concurrent` of the run's plan.
    async fn max_concurrent(
        &mut self,
        shared: &Shared,
        run_id: &RunId,
    ) -> Result<BTreeMap<String, u32>, AssignError> {
        if let Some(limits) = self.limits_by_run.get(run_id) {
            return Ok(limits.clone());
        }
        let (template, limits) = assignment_template(shared, run_id).await?;
        self.by_run.insert(run_id.clone(), template);
        self.limits_by_run.insert(run_id.clone(), limits.clone());
        Ok(limits)
    }

    async fn build(
        &mut self,
        shared: &Shared,
        job: &JobRecord,
    ) -> Result<ControllerCommand, AssignError> {
        if !self.by_run.contains_key(&job.run_id) {
            let (template, limits) = assignment_template(shared, &job.run_id).await?;
            self.by_run.insert(job.run_id.clone(), template);
            self.limits_by_run.insert(job.run_id.clone(), limits);
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
) -> Result<(proto::AssignJob, BTreeMap<String, u32>), AssignError> {
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
    let assign = proto::AssignJob {
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
    };
    Ok((assign, plan.plan.max_concurrent))
}
