//! `RunService`: starting runs (one job per selected node), showing, watching and cancelling
//! them.

use super::agent::cancel_command;
use super::auth::actor_of;
use super::convert::{result_summary, timestamp_to_proto};
use super::release::refuse_if_halted;
use super::status::{FieldErrors, invalid_fields, no_nodes, not_found};
use super::{load_plan, load_release, new_id, resolve_milestone, split_plan_ref};
use crate::shared::Shared;
use crate::store::{AuditNote, JobRecord, RunRecord, RunState, StoreError};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_domain::scheduler::{Selecting, Selection};
use tollgate_domain::{JobId, NodeId, ReleaseId, RunId};
use tollgate_proto::v1::{self as proto, run_service_server::RunService};
use tonic::{Request, Response, Status};

/// How often `WatchRun` looks again when no change was announced (a change made by another
/// replica is only seen this way).
pub const WATCH_FALLBACK: Duration = Duration::from_secs(1);

/// How often `CancelRun` decides again when a job or node of the run moved while it was
/// being cancelled (a result racing the cancel).
const CANCEL_RETRIES: usize = 3;

/// The run service.
#[derive(Debug, Clone)]
pub struct RunApi {
    shared: Arc<Shared>,
}

impl RunApi {
    /// A service over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

async fn load_run(shared: &Shared, id: &str) -> Result<RunRecord, Status> {
    if id.is_empty() {
        return Err(super::status::invalid_field(
            "id",
            "is empty; give a run id",
        ));
    }
    shared
        .store
        .get_run(&RunId::from(id))
        .await?
        .ok_or_else(|| not_found(format!("run {id}")))
}

/// A run as a caller scoped to `customer` sees it: only the jobs on its own nodes, and no
/// node selection (it names other customers' nodes); `None` when it has no job there. Unscoped
/// callers see it whole.
async fn scope_run(
    shared: &Shared,
    customer: Option<&str>,
    mut view: proto::Run,
) -> Result<Option<proto::Run>, Status> {
    let Some(customer) = customer else {
        return Ok(Some(view));
    };
    let nodes = super::customer_nodes(shared, customer).await?;
    view.jobs.retain(|job| nodes.contains(&job.node));
    view.selection = None;
    Ok((!view.jobs.is_empty()).then_some(view))
}

/// A run as the wire shows it; with every job's results when `with_results`.
pub async fn run_view(
    shared: &Shared,
    run: &RunRecord,
    with_results: bool,
) -> Result<proto::Run, Status> {
    let jobs = shared.store.jobs_of_run(&run.id).await?;
    let n_steps = match shared
        .store
        .get_plan(&run.plan_name, Some(run.plan_version.as_str()))
        .await?
    {
        Some(plan) => u32::try_from(plan.plan.steps.len()).unwrap_or(u32::MAX),
        None => 0,
    };
    let mut job_views = Vec::with_capacity(jobs.len());
    for job in jobs {
        let results = if with_results {
            shared
                .store
                .results_of_job(&job.id)
                .await?
                .iter()
                .map(result_summary)
                .collect()
        } else {
            Vec::new()
        };
        job_views.push(proto::Job {
            id: job.id.to_string(),
            node: job.node.to_string(),
            state: job.state.as_str().to_owned(),
            lease_epoch: job.lease_epoch,
            results,
            n_steps,
            attempt: job.attempt,
            rescheduled_from: job
                .rescheduled_from
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        });
    }
    Ok(proto::Run {
        id: run.id.to_string(),
        release: run.release.to_string(),
        plan_name: run.plan_name.clone(),
        plan_version: run.plan_version.to_string(),
        milestone: run.milestone.clone(),
        state: run.state.as_str().to_owned(),
        created_at: Some(timestamp_to_proto(run.created_at)),
        finished_at: run.finished_at.map(timestamp_to_proto),
        jobs: job_views,
        selection: None,
        purpose: run.purpose.as_str().to_owned(),
    })
}

/// One pending job per selected node of a new run, and the run's audit entry.
fn new_jobs(
    run: &RunRecord,
    selection: &Selection,
    actor: &str,
    now: tollgate_domain::Timestamp,
) -> (Vec<JobRecord>, AuditNote) {
    let jobs: Vec<JobRecord> = selection
        .nodes()
        .map(|node| JobRecord::first_pending(JobId::new(new_id("job")), run, node.clone(), now))
        .collect();
    let note = AuditNote::new(now, actor, "run.start", format!("run/{}", run.id))
        .release(&run.release)
        .details(serde_json::json!({
            "plan": run.plan_name,
            "plan_version": run.plan_version.as_str(),
            "milestone": run.milestone,
            "nodes": jobs.iter().map(|job| job.node.as_str()).collect::<Vec<_>>(),
            "waiting": selection.waiting.iter().map(NodeId::as_str).collect::<Vec<_>>(),
        }));
    (jobs, note)
}

fn selection_to_proto(selection: &Selection) -> proto::NodeSelection {
    let names = |ids: &[NodeId]| ids.iter().map(ToString::to_string).collect();
    proto::NodeSelection {
        now: names(&selection.now),
        waiting: names(&selection.waiting),
        left_out: selection
            .left_out
            .iter()
            .map(|(_, why)| why.clone())
            .collect(),
        n_plan_not_allowed: u32::try_from(selection.n_plan_not_allowed).unwrap_or(u32::MAX),
        held: selection.held.iter().map(|(_, why)| why.clone()).collect(),
    }
}

#[tonic::async_trait]
impl RunService for RunApi {
    async fn start_run(
        &self,
        request: Request<proto::StartRunRequest>,
    ) -> Result<Response<proto::Run>, Status> {
        let actor = actor_of(&request);
        let proto::StartRunRequest {
            release,
            plan,
            milestone,
            nodes_now,
        } = super::convert::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        if release.is_empty() {
            errors.add("release", "is empty; give a release name");
        }
        if split_plan_ref(&plan).0.is_empty() {
            errors.add("plan", "is empty; give a plan name or name@version");
        }
        errors.finish(()).map_err(invalid_fields)?;
        let shared = &self.shared;
        let release = load_release(shared, &release).await?;
        refuse_if_halted(shared, &release.id, "run").await?;
        let milestone = resolve_milestone(&release, &milestone)?;
        let (plan_name, plan_version) = split_plan_ref(&plan);
        let stored = load_plan(shared, plan_name, plan_version).await?;

        // A node without a live session cannot be sent its job, so for selection it is not
        // ready, whatever the store says.
        let mut nodes = shared.store.list_nodes().await?;
        let n_disconnected = super::node::mark_disconnected(shared, &mut nodes);
        let selecting = Selecting::for_run(&stored.plan, nodes_now);
        let now = shared.now();
        let windows = shared.store.maintenance_windows(now, false).await?;
        let selection = tollgate_domain::scheduler::select_nodes(
            &stored.plan,
            &nodes,
            selecting,
            &windows,
            now,
        )
        .map_err(|error| no_nodes(&error, n_disconnected))?;

        let run = RunRecord {
            id: RunId::new(new_id("run")),
            release: ReleaseId::clone(&release.id),
            plan_name: stored.plan.name.clone(),
            plan_version: stored.version.clone(),
            milestone,
            state: RunState::Running,
            created_at: now,
            finished_at: None,
            purpose: crate::store::RunPurpose::Qualification,
        };
        let (jobs, note) = new_jobs(&run, &selection, &actor, now);
        shared.store.create_run(&run, &jobs, &note).await?;
        tracing::info!(
            run = %run.id,
            release = %run.release,
            plan = run.plan_name,
            plan_version = %run.plan_version,
            milestone = run.milestone,
            n_jobs = jobs.len(),
            n_waiting = selection.waiting.len(),
            "run started"
        );
        shared.poke_scheduler();
        shared.notify_changed();
        let mut view = run_view(shared, &run, true).await?;
        view.selection = Some(selection_to_proto(&selection));
        Ok(Response::new(view))
    }

    async fn get_run(
        &self,
        request: Request<proto::GetRunRequest>,
    ) -> Result<Response<proto::Run>, Status> {
        let customer = super::auth::customer_of(&request);
        let proto::GetRunRequest { id } = super::convert::bounded(request.into_inner())?;
        let run = load_run(&self.shared, &id).await?;
        let view = run_view(&self.shared, &run, true).await?;
        // A run with none of the customer's nodes is answered as if it did not exist.
        scope_run(&self.shared, customer.as_deref(), view)
            .await?
            .map(Response::new)
            .ok_or_else(|| not_found(format!("run {id}")))
    }

    async fn list_runs(
        &self,
        request: Request<proto::ListRunsRequest>,
    ) -> Result<Response<proto::ListRunsResponse>, Status> {
        let customer = super::auth::customer_of(&request);
        let proto::ListRunsRequest {
            release,
            page_size,
            page_token,
        } = super::convert::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        let page = super::pages::by_creation(
            &mut errors,
            tollgate_wire::page::List::Runs,
            &[&release],
            page_size,
            &page_token,
        );
        errors.finish(()).map_err(invalid_fields)?;
        let release = (!release.is_empty()).then(|| ReleaseId::new(release));
        let fetched = self
            .shared
            .store
            .list_runs_page(release.as_ref(), page.after, page.fetch())
            .await?;
        let (runs, next_page_token) = page.answer(fetched, |(_, key)| super::pages::created(key));
        let mut views = Vec::with_capacity(runs.len());
        // A listing shows jobs and their states; results are for GetRun, one run at a time.
        for (run, _) in &runs {
            let view = run_view(&self.shared, run, false).await?;
            views.extend(scope_run(&self.shared, customer.as_deref(), view).await?);
        }
        Ok(Response::new(proto::ListRunsResponse {
            runs: views,
            next_page_token,
        }))
    }

    type WatchRunStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::Run, Status>> + Send>>;

    async fn watch_run(
        &self,
        request: Request<proto::GetRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let customer = super::auth::customer_of(&request);
        let identity = super::limits::identity_of(&request);
        let proto::GetRunRequest { id } = super::convert::bounded(request.into_inner())?;
        // Fail the call itself, not the stream, when the run does not exist (for a customer:
        // has none of its nodes).
        let run = load_run(&self.shared, &id).await?;
        let view = run_view(&self.shared, &run, false).await?;
        if scope_run(&self.shared, customer.as_deref(), view)
            .await?
            .is_none()
        {
            return Err(not_found(format!("run {id}")));
        }
        let permit = super::limits::open_stream(&self.shared, identity, "WatchRun")?;
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(watch(self.shared.clone(), run.id, customer, sender));
        let stream = super::limits::holding(permit, ReceiverStream::new(receiver));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_run(
        &self,
        request: Request<proto::CancelRunRequest>,
    ) -> Result<Response<proto::Run>, Status> {
        let actor = actor_of(&request);
        let proto::CancelRunRequest { id } = super::convert::bounded(request.into_inner())?;
        let shared = &self.shared;
        let mut attempt = 0;
        let (run, stopped) = loop {
            attempt += 1;
            let run = load_run(shared, &id).await?;
            let jobs = shared.store.job_facts_of_run(&run.id).await?;
            let cancellation = tollgate_domain::run::cancel(run.state, &jobs)
                .map_err(super::status::refused_cancel)?;
            let note = AuditNote::new(
                shared.now(),
                &actor,
                "run.cancel",
                format!("run/{}", run.id),
            )
            .release(&run.release);
            match shared
                .store
                .cancel_run(&run.id, &cancellation, &note, shared.now())
                .await
            {
                Ok(()) => {
                    let stopped: Vec<(JobId, NodeId)> = jobs
                        .into_iter()
                        .filter(|job| job.state.is_active())
                        .map(|job| (job.id, job.node))
                        .collect();
                    break (run, stopped);
                }
                // A job ended or a node moved since the run was read: decide again.
                Err(StoreError::Conflict { detail, .. }) if attempt < CANCEL_RETRIES => {
                    tracing::debug!(run = %run.id, detail, "run changed while cancelling it; retrying");
                }
                Err(error) => return Err(error.into()),
            }
        };
        for (job, node) in &stopped {
            let command = cancel_command(job, &format!("run {} was cancelled", run.id));
            if let Err(error) = shared.sessions.send(node, command) {
                tracing::warn!(job = %job, %error, "cancel not delivered; the agent's results for it will be refused");
            }
        }
        tracing::info!(run = %run.id, n_stopped = stopped.len(), "run cancelled");
        shared.notify_changed();
        shared.poke_scheduler();
        shared.request_reevaluation(&run.id);
        let run = load_run(shared, &id).await?;
        Ok(Response::new(run_view(shared, &run, true).await?))
    }
}

/// Sends the run now and after every change until it ends, the watcher leaves, or shutdown.
async fn watch(
    shared: Arc<Shared>,
    run_id: RunId,
    customer: Option<String>,
    sender: mpsc::Sender<Result<proto::Run, Status>>,
) {
    let mut changes = shared.subscribe_changes();
    let mut shutdown = shared.subscribe_shutdown();
    let mut last_sent: Option<proto::Run> = None;
    loop {
        let view = match load_run(&shared, run_id.as_str()).await {
            Ok(run) => match run_view(&shared, &run, true).await {
                Ok(view) => scope_run(&shared, customer.as_deref(), view)
                    .await
                    .and_then(|view| view.ok_or_else(|| not_found(format!("run {run_id}")))),
                Err(status) => Err(status),
            },
            Err(status) => Err(status),
        };
        match view {
            Ok(view) => {
                let ended = view.state != RunState::Running.as_str();
                if last_sent.as_ref() != Some(&view) {
                    if sender.send(Ok(view.clone())).await.is_err() {
                        return;
                    }
                    last_sent = Some(view);
                }
                if ended {
                    return;
                }
            }
            Err(status) => {
                // The watcher learns why the stream ended.
                let _ = sender.send(Err(status)).await;
                return;
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(WATCH_FALLBACK) => {}
            () = sender.closed() => return,
            () = crate::shared::stopped(&mut shutdown) => return,
        }
    }
}
