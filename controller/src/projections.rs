//! The plan of record of every release, projected now: loads the facts
//! `tollgate_domain::projection::project` needs (releases oldest first, their targets and
//! promotions, the plan of each milestone's latest run, the step durations earlier runs
//! measured, the nodes in service) and calls it. Decides nothing itself.

use crate::shared::Shared;
use crate::store::{RunPurpose, RunRecord, RunState, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tollgate_domain::ReleaseId;
use tollgate_domain::fleet::{Health, Node, NodeState};
use tollgate_domain::plan::Plan;
use tollgate_domain::projection::{
    FreeAt, MilestoneFacts, ReleaseFacts, ReleaseProjection, StepWork, Work, project,
};
use tollgate_domain::release::{Release, Track};

/// How many measured attempts of a plan's steps a projection reads, newest first.
const MEASURED_ATTEMPTS: usize = 1000;

/// Every release's projection, by release. Releases are served oldest first, so a newer one
/// waits for the nodes an older one needs. Every node in service (ready or busy, `good`) is
/// taken as free now: the job a busy node runs is not foreseen.
pub async fn project_now(
    shared: &Shared,
) -> Result<BTreeMap<ReleaseId, ReleaseProjection>, StoreError> {
    let now = shared.now();
    let track = Track::default();
    let store = &shared.store;
    let mut releases = store.list_releases().await?;
    releases.reverse();
    let ids: Vec<ReleaseId> = releases.iter().map(|release| release.id.clone()).collect();
    let mut targets = store.milestone_targets_of(&ids).await?;
    let runs = store.list_runs(None).await?;
    let nodes = store.list_nodes().await?;
    let free_at: FreeAt = nodes
        .iter()
        .filter(|node| in_service(node))
        .map(|node| (node.id.clone(), now))
        .collect();
    let mut plans: HashMap<(String, String), Option<Plan>> = HashMap::new();
    let mut measured: HashMap<String, Vec<(String, Duration)>> = HashMap::new();
    let mut facts = Vec::with_capacity(releases.len());
    for release in &releases {
        let targets = targets.remove(&release.id).unwrap_or_default();
        // Runs newest first: the first of a milestone is its latest.
        let release_runs: Vec<&RunRecord> = runs
            .iter()
            .filter(|run| {
                run.release == release.id
                    && run.purpose == RunPurpose::Qualification
                    && run.state != RunState::Cancelled
            })
            .collect();
        let mut milestones = Vec::with_capacity(track.milestones.len());
        for milestone in &track.milestones {
            let latest = release_runs.iter().find(|run| &run.milestone == milestone);
            let work = match latest.or(release_runs.first()) {
                None => None,
                Some(run) => {
                    let key = (run.plan_name.clone(), run.plan_version.to_string());
                    if !plans.contains_key(&key) {
                        let plan = store
                            .get_plan(&run.plan_name, Some(&key.1))
                            .await?
                            .map(|stored| stored.plan);
                        plans.insert(key.clone(), plan);
                    }
                    if !measured.contains_key(&run.plan_name) {
                        let durations = store
                            .step_durations(&run.plan_name, MEASURED_ATTEMPTS)
                            .await?;
                        measured.insert(run.plan_name.clone(), durations);
                    }
                    match &plans[&key] {
                        None => None,
                        Some(plan) => {
                            let n_jobs = match latest {
                                Some(run) => open_jobs(shared, run).await?,
                                None => jobs_of_a_new_run(plan, &nodes, plan.max_nodes),
                            };
                            Some(work_of(plan, n_jobs, &nodes, &measured[&run.plan_name]))
                        }
                    }
                }
            };
            milestones.push(MilestoneFacts {
                milestone: milestone.clone(),
                target: targets
                    .iter()
                    .find(|target| &target.milestone == milestone)
                    .map(|target| target.target),
                passed_at: passed_at(release, &track, milestone),
                work,
            });
        }
        let halted = store
            .release_state(&release.id)
            .await?
            .is_some_and(|state| state.halted.is_some());
        facts.push(ReleaseFacts {
            release: release.id.clone(),
            halted,
            milestones,
        });
    }
    Ok(project(&facts, &free_at, now)
        .into_iter()
        .map(|projection| (projection.release.clone(), projection))
        .collect())
}

/// Whether `node` can take jobs: ready or busy, and `good`.
fn in_service(node: &Node) -> bool {
    matches!(node.state, NodeState::Ready | NodeState::Busy) && node.health == Health::Good
}

/// When `release` was last promoted past `milestone`, if it is past it now (a demotion
/// undoes a pass).
fn passed_at(
    release: &Release,
    track: &Track,
    milestone: &str,
) -> Option<tollgate_domain::Timestamp> {
    let now_at = track.position(&release.milestone)?;
    if track.position(milestone)? >= now_at {
        return None;
    }
    release
        .promotions
        .iter()
        .filter(|promotion| promotion.from_milestone == milestone)
        .map(|promotion| promotion.at)
        .max()
}

/// The jobs of `run` that have not ended (none once the run is over).
async fn open_jobs(shared: &Shared, run: &RunRecord) -> Result<usize, StoreError> {
    if run.state != RunState::Running {
        return Ok(0);
    }
    let jobs = shared.store.jobs_of_run(&run.id).await?;
    Ok(jobs.iter().filter(|job| !job.state.is_terminal()).count())
}

/// How many jobs a new run of `plan` would get: one per matching node not retired (in
/// service or not: one out of service now may be back), at most `max_nodes`, and at least one
/// (a run needs a node; with none in service the projection says so).
fn jobs_of_a_new_run(plan: &Plan, nodes: &[Node], max_nodes: Option<u32>) -> usize {
    let n = nodes
        .iter()
        .filter(|node| node.state != NodeState::Retired && plan.selector.matches(&node.labels))
        .count();
    max_nodes.map_or(n, |max| n.min(max as usize)).max(1)
}

/// The work of `n_jobs` jobs of `plan`, on the nodes its selector matches, each step with its
/// durations from `measured`.
fn work_of(plan: &Plan, n_jobs: usize, nodes: &[Node], measured: &[(String, Duration)]) -> Work {
    Work {
        n_jobs,
        steps: plan
            .steps
            .iter()
            .map(|step| StepWork {
                name: step.name.clone(),
                measured: measured
                    .iter()
                    .filter(|(name, _)| *name == step.name)
                    .map(|(_, took)| *took)
                    .collect(),
                timeout: step.timeout,
            })
            .collect(),
        matching: nodes
            .iter()
            .filter(|node| plan.selector.matches(&node.labels))
            .map(|node| node.id.clone())
            .collect(),
    }
}
