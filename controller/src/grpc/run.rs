//! `RunService`: starting runs (one job per selected node), showing, watching and cancelling
//! them.

use super::agent::cancel_command;
use super::auth::actor_of;
use super::convert::{result_summary, timestamp_to_proto};
use super::pages::PageAsk;
use super::release::refuse_if_halted;
use super::status::{FieldErrors, invalid_fields, no_nodes, not_found};
use super::{load_plan, load_release, new_id, resolve_milestone, split_plan_ref};
use crate::shared::Shared;
use crate::store::{
    AuditNote, JobMark, JobRecord, RESULTS_OF_JOBS_MAX, RunRecord, RunState, StoreError,
};
use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_domain::job::JobState;
use tollgate_domain::result::StepResult;
use tollgate_domain::scheduler::{Selecting, Selection};
use tollgate_domain::{JobId, NodeId, ReleaseId, RunId};
use tollgate_proto::v1::{self as proto, run_service_server::RunService};
use tollgate_wire::page::{After, MAX_PAGE_BYTES};
use tonic::{Request, Response, Status};

/// How often `WatchRun` looks again when no change was announced (a change made by another
/// replica is only seen this way).
pub const WATCH_FALLBACK: Duration = Duration::from_secs(1);

/// The least time between two reads of a watched run: changes that arrive closer together
/// are sent together. A thousand jobs ending within a second cost a few reads of the run,
/// not a thousand; a lone change is still sent at once.
pub const WATCH_SPACING: Duration = Duration::from_millis(250);

/// How many jobs' results GetRun reads in one query while filling a page.
const JOBS_READ_AT_ONCE: usize = 100;

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

/// Loads a run as a caller scoped to `customer` may see it: a run of a release only for other
/// customers is `NotFound`, as one that does not exist.
async fn load_run_for(
    shared: &Shared,
    id: &str,
    customer: Option<&str>,
) -> Result<RunRecord, Status> {
    let run = load_run(shared, id).await?;
    if super::sees_release(shared, customer, &run.release).await? {
        Ok(run)
    } else {
        Err(not_found(format!("run {id}")))
    }
}

/// The nodes a caller scoped to `customer` sees; `None` (every node) for unscoped callers.
async fn visible_nodes(
    shared: &Shared,
    customer: Option<&str>,
) -> Result<Option<BTreeSet<String>>, Status> {
    match customer {
        None => Ok(None),
        Some(customer) => Ok(Some(super::customer_nodes(shared, customer).await?)),
    }
}

/// A run's jobs as a caller sees them: only those on its own nodes when `nodes` is set.
fn visible_jobs(jobs: Vec<JobRecord>, nodes: Option<&BTreeSet<String>>) -> Vec<JobRecord> {
    match nodes {
        None => jobs,
        Some(nodes) => jobs
            .into_iter()
            .filter(|job| nodes.contains(job.node.as_str()))
            .collect(),
    }
}

/// How many jobs are in each of `states` (one per job), in lifecycle order, states without a
/// job left out.
fn job_counts(states: impl IntoIterator<Item = JobState>) -> Vec<proto::JobCount> {
    use tollgate_domain::names::IntoEnumIterator as _;
    let mut counts: HashMap<JobState, u32> = HashMap::new();
    for state in states {
        *counts.entry(state).or_default() += 1;
    }
    JobState::iter()
        .filter_map(|state| {
            counts.get(&state).map(|&count| proto::JobCount {
                state: state.as_str().to_owned(),
                count,
            })
        })
        .collect()
}

/// The number of steps of the plan version a run pinned (0 when it is gone).
async fn n_steps_of(shared: &Shared, run: &RunRecord) -> Result<u32, Status> {
    Ok(
        match shared
            .store
            .get_plan(&run.plan_name, Some(run.plan_version.as_str()))
            .await?
        {
            Some(plan) => u32::try_from(plan.plan.steps.len()).unwrap_or(u32::MAX),
            None => 0,
        },
    )
}

/// A run's own fields with the counts of its jobs' `states` (of every job the caller sees),
/// no jobs yet.
fn run_header(run: &RunRecord, states: &[JobState]) -> proto::Run {
    proto::Run {
        id: run.id.to_string(),
        release: run.release.to_string(),
        plan_name: run.plan_name.clone(),
        plan_version: run.plan_version.to_string(),
        milestone: run.milestone.clone(),
        state: run.state.as_str().to_owned(),
        created_at: Some(timestamp_to_proto(run.created_at)),
        finished_at: run.finished_at.map(timestamp_to_proto),
        jobs: Vec::new(),
        selection: None,
        purpose: run.purpose.as_str().to_owned(),
        job_counts: job_counts(states.iter().copied()),
        n_jobs: u32::try_from(states.len()).unwrap_or(u32::MAX),
        next_page_token: String::new(),
    }
}

/// The state of each of `jobs`.
fn states_of(jobs: &[JobRecord]) -> Vec<JobState> {
    jobs.iter().map(|job| job.state).collect()
}

/// A job as the wire shows it, with `results` (already in order).
fn job_view(job: &JobRecord, results: &[StepResult], n_steps: u32) -> proto::Job {
    proto::Job {
        id: job.id.to_string(),
        node: job.node.to_string(),
        state: job.state.as_str().to_owned(),
        lease_epoch: job.lease_epoch,
        results: results.iter().map(result_summary).collect(),
        n_steps,
        attempt: job.attempt,
        rescheduled_from: job
            .rescheduled_from
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

/// The views of `jobs`, each with every result when `with_results`, read in one query per
/// [`RESULTS_OF_JOBS_MAX`] jobs.
async fn job_views(
    shared: &Shared,
    jobs: &[&JobRecord],
    n_steps: u32,
    with_results: bool,
) -> Result<Vec<proto::Job>, Status> {
    let mut results = HashMap::new();
    if with_results {
        let ids: Vec<&JobId> = jobs.iter().map(|job| &job.id).collect();
        results = shared.store.result_summaries_of_jobs(&ids).await?;
    }
    Ok(jobs
        .iter()
        .map(|job| {
            let results = results.get(&job.id).map_or(&[][..], Vec::as_slice);
            job_view(job, results, n_steps)
        })
        .collect())
}

/// A run with every job the caller sees (`None` when it sees none of them), each with its
/// results when `with_results`: the answer of StartRun, CancelRun and ListRuns.
pub async fn run_view(
    shared: &Shared,
    run: &RunRecord,
    nodes: Option<&BTreeSet<String>>,
    with_results: bool,
) -> Result<Option<proto::Run>, Status> {
    let jobs = visible_jobs(shared.store.jobs_of_run(&run.id).await?, nodes);
    if nodes.is_some() && jobs.is_empty() {
        return Ok(None);
    }
    let n_steps = n_steps_of(shared, run).await?;
    let mut view = run_header(run, &states_of(&jobs));
    let all: Vec<&JobRecord> = jobs.iter().collect();
    view.jobs = job_views(shared, &all, n_steps, with_results).await?;
    Ok(Some(view))
}

/// GetRun's answer: the run with its job counts and one page of jobs with their results, or
/// `None` when a scoped caller sees none of its jobs.
async fn run_page_view(
    shared: &Shared,
    run: &RunRecord,
    nodes: Option<&BTreeSet<String>>,
    page: &PageAsk<(String, String)>,
) -> Result<Option<proto::Run>, Status> {
    // Every job's row (no results): the counts, and where the page starts.
    let jobs = visible_jobs(shared.store.jobs_of_run(&run.id).await?, nodes);
    if nodes.is_some() && jobs.is_empty() {
        return Ok(None);
    }
    let n_steps = n_steps_of(shared, run).await?;
    let mut view = run_header(run, &states_of(&jobs));
    // `jobs_of_run` orders by node, then id: the page's order.
    let candidates: Vec<&JobRecord> = jobs
        .iter()
        .filter(|job| match &page.after {
            None => true,
            Some((node, id)) => (job.node.as_str(), job.id.as_str()) > (node.as_str(), id.as_str()),
        })
        .take(page.fetch())
        .collect();
    // Results are read a slice of jobs at a time, and no further than the page's bytes
    // reach: a page of 1000 small jobs is one read per slice, one of large jobs stops early.
    let mut fetched = Vec::with_capacity(candidates.len());
    let mut n_bytes = 0;
    for slice in candidates.chunks(JOBS_READ_AT_ONCE) {
        for view in job_views(shared, slice, n_steps, true).await? {
            n_bytes += prost::Message::encoded_len(&view);
            fetched.push(view);
        }
        if n_bytes > MAX_PAGE_BYTES {
            break;
        }
    }
    let (jobs, next_page_token) = page.answer_within(
        fetched,
        |job| After::Job {
            node: job.node.clone(),
            id: job.id.clone(),
        },
        prost::Message::encoded_len,
    );
    view.jobs = jobs;
    view.next_page_token = next_page_token;
    Ok(Some(view))
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
        let mut view = run_view(shared, &run, None, true)
            .await?
            .ok_or_else(|| not_found(format!("run {}", run.id)))?;
        view.selection = Some(selection_to_proto(&selection));
        Ok(Response::new(view))
    }

    async fn get_run(
        &self,
        request: Request<proto::GetRunRequest>,
    ) -> Result<Response<proto::Run>, Status> {
        let customer = super::auth::customer_of(&request);
        let proto::GetRunRequest {
            id,
            page_size,
            page_token,
        } = super::convert::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        // A token of one run's jobs is refused on another's.
        let page = super::pages::by_job(&mut errors, &[&id], page_size, &page_token);
        errors.finish(()).map_err(invalid_fields)?;
        let run = load_run_for(&self.shared, &id, customer.as_deref()).await?;
        let nodes = visible_nodes(&self.shared, customer.as_deref()).await?;
        // A run with none of the customer's nodes is answered as if it did not exist.
        run_page_view(&self.shared, &run, nodes.as_ref(), &page)
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
        if let Some(release) = &release
            && !super::sees_release(&self.shared, customer.as_deref(), release).await?
        {
            // The runs of a release only for other customers: none, as of one that does not
            // exist, and no page token to say otherwise.
            return Ok(Response::new(proto::ListRunsResponse::default()));
        }
        let fetched = self
            .shared
            .store
            .list_runs_page(release.as_ref(), page.after, page.fetch())
            .await?;
        let nodes = visible_nodes(&self.shared, customer.as_deref()).await?;
        let of: Vec<ReleaseId> = fetched.iter().map(|(run, _)| run.release.clone()).collect();
        let unseen = super::unseen_releases(&self.shared, customer.as_deref(), &of).await?;
        // A listing shows jobs and their states; results are for GetRun, one run at a time.
        let mut views = Vec::with_capacity(fetched.len());
        for (run, key) in fetched {
            let view = if unseen.contains(&run.release) {
                None
            } else {
                run_view(&self.shared, &run, nodes.as_ref(), false).await?
            };
            views.push((view, key));
        }
        let (views, next_page_token) = page.answer_within(
            views,
            |(_, key)| super::pages::created(key),
            |(view, _)| view.as_ref().map_or(0, prost::Message::encoded_len),
        );
        Ok(Response::new(proto::ListRunsResponse {
            runs: views.into_iter().filter_map(|(view, _)| view).collect(),
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
        let proto::GetRunRequest {
            id,
            page_size,
            page_token,
        } = super::convert::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        if page_size != 0 {
            errors.add(
                "page_size",
                "is for GetRun; WatchRun sends every job and then each change, so leave it 0",
            );
        }
        if !page_token.is_empty() {
            errors.add(
                "page_token",
                "is for GetRun; WatchRun sends every job and then each change, so leave it empty",
            );
        }
        errors.finish(()).map_err(invalid_fields)?;
        // Fail the call itself, not the stream, when the run does not exist (for a customer:
        // has none of its nodes, or is of a release only for other customers).
        let run = load_run_for(&self.shared, &id, customer.as_deref()).await?;
        let nodes = visible_nodes(&self.shared, customer.as_deref()).await?;
        if let Some(nodes) = &nodes {
            let marks = self.shared.store.job_marks_of_run(&run.id).await?;
            if !marks.iter().any(|job| nodes.contains(job.node.as_str())) {
                return Err(not_found(format!("run {id}")));
            }
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
        // Every job without its results, as a listing shows it: the results of thousands of
        // jobs would not fit one answer (GetRun pages them).
        let view = run_view(shared, &run, None, false)
            .await?
            .ok_or_else(|| not_found(format!("run {id}")))?;
        Ok(Response::new(view))
    }
}

/// What a watcher has been sent of a job: a job changes only in these (its results are never
/// edited, only added).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JobSeen {
    state: JobState,
    lease_epoch: u64,
    n_results: usize,
}

/// Sends the run now and after every change until it ends, the watcher leaves, or shutdown:
/// every message carries the run's own fields and job counts, and only the jobs that changed
/// since the message before (the first ones every job), cut into messages of at most
/// [`MAX_PAGE_BYTES`] of jobs.
async fn watch(
    shared: Arc<Shared>,
    run_id: RunId,
    customer: Option<String>,
    sender: mpsc::Sender<Result<proto::Run, Status>>,
) {
    let mut changes = shared.subscribe_changes();
    let mut shutdown = shared.subscribe_shutdown();
    let mut seen: HashMap<JobId, JobSeen> = HashMap::new();
    let mut last_header: Option<proto::Run> = None;
    let mut last_read: Option<tokio::time::Instant> = None;
    loop {
        if let Some(read_at) = last_read {
            tokio::select! {
                () = tokio::time::sleep_until(read_at + WATCH_SPACING) => {}
                () = sender.closed() => return,
                () = crate::shared::stopped(&mut shutdown) => return,
            }
            // What arrived while waiting is read below; mark it seen.
            changes.borrow_and_update();
        }
        last_read = Some(tokio::time::Instant::now());
        let messages = match changed_since(&shared, &run_id, customer.as_deref(), &mut seen).await {
            Ok(Some(messages)) => Ok(messages),
            Ok(None) => Err(not_found(format!("run {run_id}"))),
            Err(status) => Err(status),
        };
        match messages {
            Ok((header, messages)) => {
                let ended = header.state != RunState::Running.as_str();
                // A message when a job changed, or the run itself did (its state, its end).
                let messages = if messages.is_empty() && last_header.as_ref() != Some(&header) {
                    vec![header.clone()]
                } else {
                    messages
                };
                for message in messages {
                    if sender.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                last_header = Some(header);
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

/// The run's header (own fields and job counts) and the messages carrying the jobs that
/// changed since `seen` (updated to what they carry), each the header with a share of the
/// jobs; no messages when no job changed. `None` when the caller sees none of its jobs, or
/// not its release. What changed is found from one narrow read of every job
/// ([`Store::job_marks_of_run`](crate::store::Store::job_marks_of_run)); only the jobs that
/// changed are read whole, with their results: a run of thousands of jobs is not read again
/// for each few that moved.
async fn changed_since(
    shared: &Shared,
    run_id: &RunId,
    customer: Option<&str>,
    seen: &mut HashMap<JobId, JobSeen>,
) -> Result<Option<(proto::Run, Vec<proto::Run>)>, Status> {
    let run = load_run(shared, run_id.as_str()).await?;
    if !super::sees_release(shared, customer, &run.release).await? {
        return Ok(None);
    }
    let nodes = visible_nodes(shared, customer).await?;
    let mut marks = shared.store.job_marks_of_run(&run.id).await?;
    if let Some(nodes) = &nodes {
        marks.retain(|job| nodes.contains(job.node.as_str()));
        if marks.is_empty() {
            return Ok(None);
        }
    }
    let states: Vec<JobState> = marks.iter().map(|job| job.state).collect();
    let header = run_header(&run, &states);
    let mut changed: Vec<&JobMark> = marks
        .iter()
        .filter(|job| {
            let now = JobSeen {
                state: job.state,
                lease_epoch: job.lease_epoch,
                n_results: job.n_results,
            };
            seen.insert(job.id.clone(), now) != Some(now)
        })
        .collect();
    if changed.is_empty() {
        return Ok(Some((header, Vec::new())));
    }
    // In the order GetRun pages: by node, then id.
    changed.sort_unstable_by(|a, b| (&a.node, &a.id).cmp(&(&b.node, &b.id)));
    let n_steps = n_steps_of(shared, &run).await?;
    let mut messages = Vec::new();
    for chunk in changed.chunks(RESULTS_OF_JOBS_MAX) {
        let ids: Vec<&JobId> = chunk.iter().map(|job| &job.id).collect();
        let mut records: HashMap<JobId, JobRecord> = shared
            .store
            .jobs_with_ids(&ids)
            .await?
            .into_iter()
            .map(|job| (job.id.clone(), job))
            .collect();
        // A job is never deleted while its run exists; one missing is left out of this look.
        let jobs: Vec<JobRecord> = ids.iter().filter_map(|id| records.remove(*id)).collect();
        let jobs: Vec<&JobRecord> = jobs.iter().collect();
        let mut message = header.clone();
        let mut n_bytes = 0;
        for view in job_views(shared, &jobs, n_steps, true).await? {
            let view_bytes = prost::Message::encoded_len(&view);
            if !message.jobs.is_empty() && n_bytes + view_bytes > MAX_PAGE_BYTES {
                messages.push(std::mem::replace(&mut message, header.clone()));
                n_bytes = 0;
            }
            n_bytes += view_bytes;
            message.jobs.push(view);
        }
        if !message.jobs.is_empty() {
            messages.push(message);
        }
    }
    Ok(Some((header, messages)))
}
