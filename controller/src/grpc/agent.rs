//! `AgentService`: enrollment, the per-agent command stream, result upload and fleet telemetry.
//!
//! **Invariant:** an agent acts only as its own node: every call but `Register` is
//! authenticated by its node token, and anything about a job of another node is refused.
//! **Invariant:** a result is committed before it is acknowledged, and stored once however
//! often it is sent.

use super::auth::{generate_token, hash_token};
use super::convert::{Enrollment, FromProto as _};
use super::status::{self, not_found};
use crate::Shared;
use crate::store::{Recorded, StoreError};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_domain::fleet::NodeState;
use tollgate_domain::job::{JobEvent, JobState};
use tollgate_domain::result::StepResult;
use tollgate_domain::{JobId, NodeId};
use tollgate_proto::v1::{self as proto, agent_event::Event, agent_service_server::AgentService};
use tonic::{Request, Response, Status, Streaming};

/// How often `ReportResult` retries when a concurrent change (the agent's own `JobAccepted`
/// racing its first result) made the job's compare-and-set fail.
const RESULT_RETRIES: usize = 3;

/// The agent-facing service.
#[derive(Debug, Clone)]
pub struct AgentApi {
    shared: Arc<Shared>,
    /// Fleet telemetry samples agents reported dropped (their buffer overflowed while the
    /// controller was unreachable), since this controller started.
    telemetry_dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl AgentApi {
    /// A service over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            telemetry_dropped: Arc::default(),
        }
    }

    /// Fleet telemetry samples agents reported dropped since this controller started.
    pub fn telemetry_dropped(&self) -> u64 {
        self.telemetry_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn authenticate<T>(&self, request: &Request<T>) -> Result<NodeId, Status> {
        self.shared
            .tokens
            .authenticate(&self.shared.store, request.metadata())
            .await
    }
}

fn millis(duration: std::time::Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::Registration>, Status> {
        let Enrollment {
            node,
            labels,
            inventory,
            agent_version,
            node_token,
        } = Enrollment::try_from(request.into_inner()).map_err(status::invalid_fields)?;
        let store = &self.shared.store;
        let existing = store.node_token_hash(&node).await?;
        let (token, is_new) = match (existing, node_token) {
            (Some(stored), Some(token)) if hash_token(&token) == stored => (token, false),
            (Some(_), _) => {
                tracing::warn!(node = %node, "registration refused: the node is enrolled with another token");
                return Err(Status::permission_denied(format!(
                    "node {node} is already enrolled with another token; the agent keeps its \
                     token in <state-dir>/node-token: restore that file on the node, or pick \
                     another node name"
                )));
            }
            // A node the store does not know gets a fresh token, even if the agent presents
            // an old one (the controller's database was reset).
            (None, _) => (generate_token(), true),
        };
        let token_hash = hash_token(&token);
        store
            .register_node(&node, &labels, &inventory, &token_hash, self.shared.now())
            .await?;
        self.shared.tokens.remember(&node, &token_hash);
        // Registering is a sign of life: it renews the lease until the stream's heartbeats do.
        store.touch_node(&node, self.shared.now()).await?;
        tracing::info!(
            node = %node,
            agent_version,
            n_gpus = inventory.gpus.len(),
            gpu_source = inventory.gpu_source.as_str(),
            driver = inventory.driver_version,
            "{}",
            if is_new { "node registered" } else { "node re-registered" }
        );
        self.shared.notify_changed();
        self.shared.poke_scheduler();
        Ok(Response::new(proto::Registration {
            node_name: node.to_string(),
            node_token: token,
            heartbeat_interval_ms: millis(self.shared.config.heartbeat_interval),
            lease_grace_ms: millis(self.shared.config.lease_grace),
        }))
    }

    type ConnectStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::ControllerCommand, Status>> + Send>>;

    async fn connect(
        &self,
        request: Request<Streaming<proto::AgentEvent>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let node = self.authenticate(&request).await?;
        let inbound = request.into_inner();
        let shared = &self.shared;
        let (session_id, commands) = shared.sessions.open(&node).ok_or_else(|| {
            Status::unavailable("the controller is shutting down; reconnect later")
        })?;
        tracing::info!(node = %node, "agent connected");
        // Connecting counts as a heartbeat: the stream is the lease.
        if let Err(error) = on_heartbeat(shared, &node).await.map(|_| ()) {
            tracing::warn!(node = %node, %error, "could not record the connection as a heartbeat");
        }
        if let Err(error) = crate::scheduler::resend_assigned(shared, &node).await {
            tracing::warn!(node = %node, %error, "could not resend assigned jobs");
        }
        shared.poke_scheduler();
        shared.notify_changed();
        tokio::spawn(read_events(shared.clone(), node, session_id, inbound));
        let outbound = ReceiverStream::new(commands).map(Ok);
        Ok(Response::new(Box::pin(outbound)))
    }

    async fn report_result(
        &self,
        request: Request<proto::StepResult>,
    ) -> Result<Response<proto::Ack>, Status> {
        let node = self.authenticate(&request).await?;
        let result =
            StepResult::from_proto(request.into_inner()).map_err(status::invalid_fields)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match record(&self.shared, &node, &result).await {
                Err(RecordError::Store(StoreError::Conflict { detail, .. }))
                    if attempt < RESULT_RETRIES =>
                {
                    tracing::debug!(job = %result.job_id, detail, "job changed while recording a result; retrying");
                }
                Err(RecordError::Store(error)) => return Err(error.into()),
                Err(RecordError::Refused(status)) => return Err(status),
                Ok(duplicate) => return Ok(Response::new(proto::Ack { duplicate })),
            }
        }
    }

    async fn push_telemetry(
        &self,
        request: Request<Streaming<proto::TelemetryBatch>>,
    ) -> Result<Response<proto::Ack>, Status> {
        let node = self.authenticate(&request).await?;
        let mut batches = request.into_inner();
        let mut shutdown = self.shared.subscribe_shutdown();
        let (mut n_batches, mut n_samples, mut n_dropped) = (0u64, 0u64, 0u64);
        loop {
            let batch = tokio::select! {
                batch = batches.message() => batch?,
                () = crate::stopped(&mut shutdown) => None,
            };
            let Some(batch) = batch else { break };
            let batch = super::convert::bounded(batch)?;
            n_batches += 1;
            n_samples += batch.samples.len() as u64;
            n_dropped += batch.dropped;
            if batch.dropped > 0 {
                self.telemetry_dropped
                    .fetch_add(batch.dropped, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(node = %node, dropped = batch.dropped, "the agent dropped fleet telemetry samples while the controller was unreachable");
            }
            // Fleet telemetry outside steps is not stored yet; events in it are worth a line.
            for event in &batch.events {
                tracing::debug!(node = %node, kind = event.kind, code = event.code, gpu = event.gpu_index, "fleet telemetry event");
            }
            tracing::debug!(node = %node, n_samples = batch.samples.len(), dropped = batch.dropped, "telemetry batch");
        }
        tracing::debug!(node = %node, n_batches, n_samples, n_dropped, "telemetry stream ended");
        Ok(Response::new(proto::Ack { duplicate: false }))
    }
}

/// Reads one agent's events until its stream ends or shutdown starts, then drops the session.
/// The lease watchdog, not the disconnect, decides whether the node is unreachable.
async fn read_events(
    shared: Arc<Shared>,
    node: NodeId,
    session_id: u64,
    mut inbound: Streaming<proto::AgentEvent>,
) {
    let mut shutdown = shared.subscribe_shutdown();
    loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            () = crate::stopped(&mut shutdown) => break,
        };
        match message {
            Ok(Some(proto::AgentEvent { event: Some(event) })) => {
                // An event with a field over its limit is not acted on; the line names the
                // field and the limit (the stream stays open: the agent's next heartbeat counts).
                let event = match super::convert::bounded(event) {
                    Ok(event) => event,
                    Err(invalid) => {
                        tracing::warn!(node = %node, error = %invalid, "agent event refused");
                        continue;
                    }
                };
                if let Err(error) = on_event(&shared, &node, session_id, event).await {
                    tracing::warn!(node = %node, %error, "could not handle an agent event");
                }
            }
            Ok(Some(proto::AgentEvent { event: None })) => {
                tracing::debug!(node = %node, "empty agent event ignored");
            }
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(node = %node, %status, "agent stream failed");
                break;
            }
        }
    }
    shared.sessions.close(&node, session_id);
    tracing::info!(node = %node, "agent disconnected");
}

async fn on_event(
    shared: &Shared,
    node: &NodeId,
    session_id: u64,
    event: Event,
) -> Result<(), StoreError> {
    match event {
        Event::Heartbeat(heartbeat) => {
            let proto::Heartbeat {
                ref running_job_id,
                sent_at: _,
                unsent_results,
                lease_epoch,
                step_index,
                attempt,
                commands_received,
                unsent_by_job: _,
            } = heartbeat;
            tracing::debug!(node = %node, running_job_id, lease_epoch, step_index, attempt, unsent_results, commands_received, "heartbeat");
            let current_job = on_heartbeat(shared, node).await?;
            on_running_report(shared, node, session_id, &heartbeat, current_job).await
        }
        Event::JobAccepted(proto::JobAccepted {
            job_id,
            lease_epoch,
        }) => on_job_accepted(shared, node, JobId::new(job_id), lease_epoch).await,
        Event::StepStarted(proto::StepStarted {
            job_id,
            lease_epoch,
            step_index,
            attempt,
        }) => {
            tracing::debug!(node = %node, job = job_id, lease_epoch, step_index, attempt, "step started");
            shared.notify_changed();
            Ok(())
        }
    }
}

/// Renews the node's lease and brings an `unreachable` node back; returns the job the store
/// says the node runs.
async fn on_heartbeat(shared: &Shared, node: &NodeId) -> Result<Option<JobId>, StoreError> {
    shared.store.touch_node(node, shared.now()).await?;
    let Some(current) = shared.store.get_node(node).await? else {
        return Ok(None);
    };
    if current.state == NodeState::Unreachable {
        let state = if current.current_job.is_some() {
            NodeState::Busy
        } else {
            NodeState::Ready
        };
        shared.store.set_node_state(node, state).await?;
        tracing::info!(node = %node, state = %state, "node reachable again");
        shared.notify_changed();
        shared.poke_scheduler();
    }
    Ok(current.current_job)
}

/// Compares what the agent says it runs, in every heartbeat, with what the store says the
/// node runs, and acts on the domain's answer (`job::compare_heartbeat`): a running job the
/// agent no longer runs (it restarted, or lost the job) gets its interrupted attempt recorded
/// as an `error` result and is then assigned again under a new epoch (attempts left) or ends.
/// A job the agent runs that already ended is cancelled on the agent.
///
/// The heartbeat counts only if it was built after the agent had read every command this
/// stream carried: the job is loaded first and the count of commands sent read after, so an
/// assignment that made the job running is always among the commands counted.
async fn on_running_report(
    shared: &Shared,
    node: &NodeId,
    session_id: u64,
    heartbeat: &proto::Heartbeat,
    current_job: Option<JobId>,
) -> Result<(), StoreError> {
    use tollgate_domain::job::{AgentReport, Liveness};
    let store = &shared.store;
    let running_job_id = heartbeat.running_job_id.as_str();
    if !running_job_id.is_empty()
        && current_job
            .as_ref()
            .is_none_or(|job| job.as_str() != running_job_id)
    {
        cancel_if_ended(shared, node, running_job_id).await?;
    }
    // Cheap checks first: this runs on every heartbeat.
    let Some(current_job) = current_job else {
        return Ok(());
    };
    if current_job.as_str() == running_job_id {
        return Ok(());
    }
    let Some(job) = store.get_job(&current_job).await? else {
        return Ok(());
    };
    if &job.node != node || job.state != JobState::Running {
        return Ok(());
    }
    let Some(n_sent) = shared.sessions.commands_sent(node, session_id) else {
        // A newer stream replaced this one: its own heartbeats will be judged.
        return Ok(());
    };
    let results = store.results_of_job(&job.id).await?;
    let Some(run) = store.get_run(&job.run_id).await? else {
        return Ok(());
    };
    let Some(plan) = store
        .get_plan(&run.plan_name, Some(run.plan_version.as_str()))
        .await?
    else {
        return Ok(());
    };
    let steps = &plan.plan.steps;
    let names: Vec<String> = steps.iter().map(|step| step.name.clone()).collect();
    let retries: Vec<u32> = steps.iter().map(|step| step.retries).collect();
    // Only this job's results can still finish it: another job's result that cannot be
    // delivered must not hold this one up.
    let unsent_of_job = heartbeat
        .unsent_by_job
        .get(job.id.as_str())
        .copied()
        .unwrap_or(0);
    let agent = AgentReport {
        runs_job: false,
        unsent_results: unsent_of_job,
        saw_every_command: heartbeat.commands_received >= n_sent,
    };
    let decision = tollgate_domain::job::compare_heartbeat(
        job.state,
        job.lease_epoch,
        agent,
        &results,
        &names,
        &retries,
    );
    let (step_index, record_attempt, end, message) = match decision {
        Liveness::Nothing | Liveness::Stale => return Ok(()),
        Liveness::WaitForResults => {
            tracing::debug!(node = %node, job = %job.id, unsent_results = unsent_of_job, "the agent no longer runs the job but still holds results; waiting for them");
            return Ok(());
        }
        Liveness::Interrupted {
            step_index,
            record_attempt,
            end,
            message,
        } => (step_index, record_attempt, end, message),
    };
    let now = shared.now();
    if let Some(attempt) = record_attempt {
        let inventory = store
            .get_node(node)
            .await?
            .map(|node| node.inventory)
            .unwrap_or_default();
        let interrupted = StepResult {
            job_id: job.id.clone(),
            step_index,
            step_name: names.get(step_index as usize).cloned().unwrap_or_default(),
            attempt,
            lease_epoch: job.lease_epoch,
            outcome: tollgate_domain::result::Outcome::Error,
            exit_code: None,
            started_at: now,
            finished_at: now,
            measurements: Vec::new(),
            telemetry: Vec::new(),
            events: Vec::new(),
            inventory,
            log_tail: String::new(),
            message: message.clone(),
            sub_results: Vec::new(),
            inventory_at_end: None,
            series: Vec::new(),
        };
        let transition = end.map(|to| (job.state, to));
        match store.record_result(&interrupted, transition, now).await {
            Ok(Recorded::Duplicate) => return Ok(()),
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => return Ok(()),
            Err(error) => return Err(error),
        }
        tracing::warn!(node = %node, job = %job.id, step_index, attempt, "{message}");
        shared.notify_changed();
    } else {
        tracing::warn!(node = %node, job = %job.id, step_index, "{message}");
    }
    if let Some(to) = end {
        tracing::info!(job = %job.id, run = %run.id, node = %node, state = %to, "job ended");
        shared.poke_scheduler();
        shared.request_reevaluation(&run.id);
        return Ok(());
    }
    let Ok(to) = tollgate_domain::job::next(job.state, JobEvent::AgentRestarted) else {
        return Ok(());
    };
    let epoch = job.lease_epoch + 1;
    match store
        .transition_job(&job.id, job.state, to, epoch, now)
        .await
    {
        Ok(()) => {
            tracing::info!(job = %job.id, node = %node, lease_epoch = epoch, "job assigned again: its agent no longer ran it");
            shared.notify_changed();
            crate::scheduler::resend_assigned(shared, node).await?;
        }
        Err(StoreError::Conflict { .. }) => {}
        Err(error) => return Err(error),
    }
    Ok(())
}

/// The agent runs a job the store does not hold as this node's running job: when it ended
/// (cancelled, lost, finished) or is another node's, the agent is told to stop it, so no step
/// keeps loading the GPUs for nothing.
async fn cancel_if_ended(shared: &Shared, node: &NodeId, job_id: &str) -> Result<(), StoreError> {
    let job = shared.store.get_job(&JobId::new(job_id.to_owned())).await?;
    let reason = match &job {
        None => format!("job {job_id} does not exist"),
        Some(job) if &job.node != node => format!("job {job_id} belongs to node {}", job.node),
        Some(job) if job.state.is_terminal() => format!("job already ended as {}", job.state),
        Some(_) => return Ok(()),
    };
    tracing::warn!(node = %node, job = job_id, %reason, "the agent runs a job the controller does not; cancelling it");
    if let Err(error) = shared.sessions.send(
        node,
        cancel_command(&JobId::new(job_id.to_owned()), &reason),
    ) {
        tracing::warn!(job = job_id, %error, "cancel not delivered");
    }
    Ok(())
}

/// The agent starts an assigned job: assigned → running, under the assignment's epoch.
async fn on_job_accepted(
    shared: &Shared,
    node: &NodeId,
    job_id: JobId,
    lease_epoch: u64,
) -> Result<(), StoreError> {
    let Some(job) = shared.store.get_job(&job_id).await? else {
        tracing::warn!(node = %node, job = %job_id, "accepted job does not exist; ignored");
        return Ok(());
    };
    if &job.node != node {
        tracing::warn!(node = %node, job = %job_id, owner = %job.node, "node accepted a job of another node; ignored");
        return Ok(());
    }
    if job.lease_epoch != lease_epoch {
        tracing::warn!(job = %job_id, lease_epoch, current = job.lease_epoch, "acceptance under a stale lease epoch; ignored");
        return Ok(());
    }
    if job.state.is_terminal() {
        // The job was cancelled or lost before the agent started it: tell the agent to stop.
        tracing::warn!(job = %job_id, state = %job.state, "agent accepted a job that already ended; cancelling it");
        let cancel = cancel_command(&job_id, &format!("job already ended as {}", job.state));
        if let Err(error) = shared.sessions.send(node, cancel) {
            tracing::warn!(job = %job_id, %error, "cancel not delivered");
        }
        return Ok(());
    }
    match tollgate_domain::job::next(job.state, JobEvent::Accepted) {
        Ok(to) if to != job.state => {
            match shared
                .store
                .transition_job(&job.id, job.state, to, job.lease_epoch, shared.now())
                .await
            {
                Ok(()) => {
                    tracing::info!(job = %job.id, node = %node, "job running");
                    shared.notify_changed();
                }
                // A result overtook the acceptance and moved the job already.
                Err(StoreError::Conflict { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(job = %job.id, %error, "acceptance ignored"),
    }
    Ok(())
}

/// A `CancelJob` command.
pub fn cancel_command(job: &JobId, reason: &str) -> proto::ControllerCommand {
    proto::ControllerCommand {
        command: Some(proto::controller_command::Command::CancelJob(
            proto::CancelJob {
                job_id: job.to_string(),
                reason: reason.to_owned(),
            },
        )),
    }
}

/// Why a result was not recorded.
enum RecordError {
    /// The request is refused for good (the status says why).
    Refused(Status),
    /// The store failed; a `Conflict` is retried.
    Store(StoreError),
}

impl From<StoreError> for RecordError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl From<Status> for RecordError {
    fn from(status: Status) -> Self {
        Self::Refused(status)
    }
}

/// Checks and stores one result; returns whether it was a duplicate.
async fn record(shared: &Shared, node: &NodeId, result: &StepResult) -> Result<bool, RecordError> {
    let store = &shared.store;
    let job = store
        .get_job(&result.job_id)
        .await?
        .ok_or_else(|| not_found(format!("job {}", result.job_id)))?;
    if &job.node != node {
        tracing::warn!(node = %node, job = %job.id, owner = %job.node, "result for a job of another node refused");
        return Err(Status::permission_denied(format!(
            "node {node} cannot report results of job {}: it belongs to node {}",
            job.id, job.node
        ))
        .into());
    }
    if result.lease_epoch != job.lease_epoch {
        return Err(Status::failed_precondition(format!(
            "stale lease epoch {} for job {}: the job is at epoch {} (it was reassigned or lost); \
             this result is not recorded",
            result.lease_epoch, job.id, job.lease_epoch
        ))
        .into());
    }
    let mut results = store.results_of_job(&job.id).await?;
    let same_attempt = |r: &StepResult| {
        r.step_index == result.step_index
            && r.attempt == result.attempt
            && r.lease_epoch == result.lease_epoch
    };
    if results.iter().any(same_attempt) {
        tracing::debug!(job = %job.id, step_index = result.step_index, attempt = result.attempt, "duplicate result acknowledged");
        return Ok(true);
    }
    if !job.state.is_active() {
        return Err(Status::failed_precondition(format!(
            "job {} is {}; the result of step {} attempt {} is not recorded",
            job.id, job.state, result.step_index, result.attempt
        ))
        .into());
    }
    let run = store
        .get_run(&job.run_id)
        .await?
        .ok_or_else(|| not_found(format!("run {}", job.run_id)))?;
    let plan = store
        .get_plan(&run.plan_name, Some(run.plan_version.as_str()))
        .await?
        .ok_or_else(|| not_found(format!("plan {}@{}", run.plan_name, run.plan_version)))?;
    let steps = &plan.plan.steps;
    let step = steps.get(result.step_index as usize).ok_or_else(|| {
        Status::invalid_argument(format!(
            "step_index: {} is out of range; plan {} has {} steps",
            result.step_index,
            run.plan_name,
            steps.len()
        ))
    })?;
    if step.name != result.step_name {
        return Err(Status::invalid_argument(format!(
            "step_name: '{}' does not match step {} of plan {}, '{}'",
            result.step_name, result.step_index, run.plan_name, step.name
        ))
        .into());
    }
    tollgate_domain::result::check_fits_step(result, step)
        .map_err(|problems| status::invalid_fields(super::status::InvalidFields(problems)))?;
    let retries: Vec<u32> = steps.iter().map(|step| step.retries).collect();
    results.push(result.clone());
    let finished = tollgate_domain::job::final_state(&results, &retries);
    let to = tollgate_domain::job::next(job.state, JobEvent::StepReported { finished })
        .map_err(|error| status::bad_transition(&error))?;
    let transition = (to != job.state).then_some((job.state, to));
    let now = shared.now();
    if store.record_result(result, transition, now).await? == Recorded::Duplicate {
        return Ok(true);
    }
    tracing::debug!(job = %job.id, step = result.step_name, attempt = result.attempt, outcome = %result.outcome, "result recorded");
    // The result is stored and acknowledged whatever happens to its findings.
    if let Err(error) =
        super::node::apply_findings(shared, node, &step.kind, &run.release, result).await
    {
        tracing::warn!(node = %node, job = %job.id, %error, "the result's health findings were not applied");
    }
    shared.notify_changed();
    if to.is_terminal() {
        tracing::info!(job = %job.id, run = %run.id, node = %node, state = %to, "job ended");
        shared.poke_scheduler();
        shared.request_reevaluation(&run.id);
    } else if to == JobState::Running && job.state == JobState::Assigned {
        tracing::info!(job = %job.id, node = %node, "job running");
    }
    Ok(false)
}
