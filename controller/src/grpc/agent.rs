//! `AgentService`: enrollment, the per-agent command stream, result upload and fleet telemetry.
//!
//! **Invariant:** an agent acts only as its own node: every call but `Register` is
//! authenticated by its node token, and anything about a job of another node is refused.
//! **Invariant:** a result is committed before it is acknowledged, and stored once however
//! often it is sent.

use super::auth::{generate_token, hash_token};
use super::convert::{Enrollment, FromProto as _};
use super::status;
use crate::shared::Shared;
use crate::store::{EncodedRow, Recorded, StoreError};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_domain::job::{
    self, Acceptance, JobChange, JobEvent, JobFacts, JobState, NodeChange, PlanSteps, ResultChange,
    ResultRefusal,
};
use tollgate_domain::node::NodeEvent;
use tollgate_domain::result::StepResult;
use tollgate_domain::{JobId, NodeId, RunId, Timestamp};
use tollgate_proto::v1::{self as proto, agent_event::Event, agent_service_server::AgentService};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

/// How often `ReportResult` decides again when a concurrent change (the agent's own
/// `JobAccepted` racing its first result, another result of the job, a cancel, an operator
/// moving the node) made the compare-and-set fail.
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

    /// The node making an agent call: the one its certificate names, or, only on a
    /// plain-text loopback listener, the one its node token names.
    async fn authenticate<T>(&self, request: &Request<T>) -> Result<NodeId, Status> {
        match self.certified(request)? {
            Some(node) => Ok(node),
            None => {
                self.shared
                    .tokens
                    .authenticate(&self.shared.store, request.metadata())
                    .await
            }
        }
    }

    fn certified<T>(&self, request: &Request<T>) -> Result<Option<NodeId>, Status> {
        super::auth::certified_node(
            request,
            &self.shared.config.transport,
            &self.shared.revocations,
        )
        .map_err(|error| {
            tracing::warn!(%error, "agent call refused");
            Status::from(error)
        })
    }
}

/// Why an agent's call is refused (mapped to a status in `status.rs`).
#[derive(Debug, thiserror::Error)]
pub enum AgentRefusal {
    /// The node is enrolled under another token than the one presented.
    #[error(
        "node {node} is already enrolled with another token; the agent keeps its token in \
         <state-dir>/node-token: restore that file on the node, or pick another node name"
    )]
    EnrolledWithAnotherToken {
        /// The node.
        node: NodeId,
    },
    /// The certificate names another node than the request.
    #[error(
        "this agent's certificate names node {certified}, not {asked}: an agent acts only as \
         its own node; start it with --node {certified}"
    )]
    AnotherNode {
        /// The node the certificate names.
        certified: NodeId,
        /// The node the request names.
        asked: NodeId,
    },
    /// The controller is shutting down and opens no new stream.
    #[error("the controller is shutting down; reconnect later")]
    ShuttingDown,
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
        let certified = self.certified(&request)?;
        let Enrollment {
            node,
            labels,
            inventory,
            agent_version,
            node_token,
        } = Enrollment::try_from(request.into_inner()).map_err(status::invalid_fields)?;
        let store = &self.shared.store;
        // One read for the token check, the labels of record and the state decided from.
        let facts = self
            .shared
            .node_reads
            .registration_facts(store, &node)
            .await?;
        if let Some(certified) = &certified
            && *certified != node
        {
            tracing::warn!(certified = %certified, asked = %node, "registration refused: the certificate names another node");
            return Err(AgentRefusal::AnotherNode {
                certified: certified.clone(),
                asked: node,
            }
            .into());
        }
        let (token, is_new) = match (&facts.token_hash, node_token) {
            // A certified node needs no token; it still gets one, unused over TLS.
            (existing, _) if certified.is_some() => (generate_token(), existing.is_none()),
            (Some(stored), Some(token)) if hash_token(&token) == *stored => (token, false),
            (Some(_), _) => {
                tracing::warn!(node = %node, "registration refused: the node is enrolled with another token");
                return Err(AgentRefusal::EnrolledWithAnotherToken { node }.into());
            }
            // A node the store does not know gets a fresh token, even if the agent presents
            // an old one (the controller's database was reset).
            (None, _) => (generate_token(), true),
        };
        let token_hash = hash_token(&token);
        // An enrolled node's labels are those the operator gave at enroll; what the agent
        // says is kept beside them, as reported.
        let labels_of_record = facts.labels_of_record.as_ref();
        // One write: the node, its labels as reported and its last-seen time (registering is
        // a sign of life: it renews the lease until the stream's heartbeats do).
        let claim = match certified {
            Some(_) => super::node::Claim::Certificate,
            None => super::node::Claim::Token,
        };
        super::node::register_reported(
            store,
            Some(&self.shared.group_commit),
            Some(&facts),
            claim,
            &node,
            labels_of_record.unwrap_or(&labels),
            &labels,
            &inventory,
            &token_hash,
            self.shared.now(),
        )
        .await?;
        if let Some(labels_of_record) = labels_of_record {
            super::node::apply_label_findings(&self.shared, &node, labels_of_record, &inventory)
                .await?;
        }
        self.shared.tokens.remember(&node, &token_hash);
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

    async fn enroll(
        &self,
        request: Request<proto::EnrollRequest>,
    ) -> Result<Response<proto::EnrollResponse>, Status> {
        super::enroll::enroll(&self.shared, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn renew_certificate(
        &self,
        request: Request<proto::RenewCertificateRequest>,
    ) -> Result<Response<proto::EnrollResponse>, Status> {
        let Some(node) = self.certified(&request)? else {
            return Err(super::auth::AuthError::MissingNodeCertificate.into());
        };
        let proto::RenewCertificateRequest { csr_pem } = request.into_inner();
        super::enroll::renew(&self.shared, &node, &csr_pem)
            .await
            .map(Response::new)
    }

    type ConnectStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::ControllerCommand, Status>> + Send>>;

    async fn connect(
        &self,
        request: Request<Streaming<proto::AgentEvent>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let node = self.authenticate(&request).await?;
        // Counted before the session opens: a refused stream must not replace the live one.
        let permit = super::limits::open_stream(
            &self.shared,
            crate::limits::Identity::node(node.as_str()),
            "Connect",
        )?;
        let inbound = request.into_inner();
        let shared = &self.shared;
        let (session_id, commands) = shared
            .sessions
            .open(&node)
            .ok_or(AgentRefusal::ShuttingDown)?;
        tracing::info!(node = %node, "agent connected");
        // Connecting counts as a heartbeat: the stream is the lease.
        let occupied = match on_connect(shared, &node).await {
            Ok(occupied) => occupied,
            Err(error) => {
                tracing::warn!(node = %node, %error, "could not record the connection as a heartbeat");
                true
            }
        };
        // A node the read after the session opened found free has nothing to resend: a job
        // assigned since is sent through this session.
        if occupied && let Err(error) = crate::scheduler::resend_assigned(shared, &node).await {
            tracing::warn!(node = %node, %error, "could not resend assigned jobs");
        }
        shared.poke_scheduler();
        shared.notify_changed();
        tokio::spawn(read_events(shared.clone(), node, session_id, inbound));
        let outbound = super::limits::holding(
            permit,
            ReceiverStream::new(commands).map(|command| Ok(*command)),
        );
        Ok(Response::new(Box::pin(outbound)))
    }

    async fn report_result(
        &self,
        request: Request<proto::StepResult>,
    ) -> Result<Response<proto::Ack>, Status> {
        let node = self.authenticate(&request).await?;
        let result =
            StepResult::from_proto(request.into_inner()).map_err(status::invalid_fields)?;
        // Encoded for its row once, however many times it is decided; what is kept decoded
        // while it waits for its write is what deciding and its findings read.
        let row = Arc::new(EncodedRow::new(&result));
        let result = deciding_part(result);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // With traces on: the result's handling, a child of the call's span (and so of
            // the agent's upload), store write included.
            let span = crate::traces::span(|| {
                tracing::info_span!(
                    target: "tollgate_traces",
                    "record result",
                    tollgate.node = %node,
                    tollgate.job = %result.job_id,
                    tollgate.step_index = result.step_index,
                    tollgate.attempt = result.attempt,
                    tollgate.try = attempt,
                )
            });
            match record(&self.shared, &node, &result, &row)
                .instrument(span)
                .await
            {
                Err(RecordError::Store(StoreError::Conflict { detail, .. }))
                    if attempt < RESULT_RETRIES =>
                {
                    tracing::debug!(job = %result.job_id, detail, "job changed while recording a result; retrying");
                }
                Err(RecordError::Store(error)) => return Err(error.into()),
                Err(RecordError::Refused(refusal)) => return Err(status::refused_result(refusal)),
                Ok(duplicate) => return Ok(Response::new(proto::Ack { duplicate })),
            }
        }
    }

    async fn push_telemetry(
        &self,
        request: Request<Streaming<proto::TelemetryBatch>>,
    ) -> Result<Response<proto::Ack>, Status> {
        let node = self.authenticate(&request).await?;
        // Held until this call returns.
        let _permit = super::limits::open_stream(
            &self.shared,
            crate::limits::Identity::node(node.as_str()),
            "PushTelemetry",
        )?;
        let mut batches = request.into_inner();
        let mut shutdown = self.shared.subscribe_shutdown();
        let (mut n_batches, mut n_samples, mut n_dropped) = (0u64, 0u64, 0u64);
        loop {
            let batch = tokio::select! {
                batch = batches.message() => batch?,
                () = crate::shared::stopped(&mut shutdown) => None,
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
            let folded =
                crate::fleet_history::fold(&self.shared, &node, &batch.samples, self.shared.now());
            if folded.refused > 0 || folded.unknown_fields > 0 {
                tracing::warn!(node = %node, refused = folded.refused, unknown_fields = folded.unknown_fields, "fleet telemetry samples not kept: stamped more than 5 min ahead of the controller's clock or older than the history keeps, or fields this controller does not know (check the node's clock and versions)");
            }
            // Events outside steps are kept: a soaking rollout wave's health rules judge them.
            let events = fleet_events(&node, &batch.events);
            for event in &events {
                tracing::info!(node = %node, kind = %event.kind, code = event.code, gpu = event.gpu_index, "GPU event outside a step");
            }
            self.shared
                .metrics
                .store(
                    "record_fleet_events",
                    self.shared.store.record_fleet_events(&node, &events),
                )
                .await?;
            tracing::debug!(node = %node, n_samples = batch.samples.len(), dropped = batch.dropped, "telemetry batch");
        }
        tracing::debug!(node = %node, n_batches, n_samples, n_dropped, "telemetry stream ended");
        Ok(Response::new(proto::Ack { duplicate: false }))
    }
}

/// The usable events of a telemetry batch. An unusable one (no time, an unknown kind) is
/// left out with a warning rather than refusing the batch: its samples were folded already,
/// and a refused batch would be sent again and again.
fn fleet_events(
    node: &NodeId,
    events: &[proto::GpuEvent],
) -> Vec<tollgate_domain::telemetry::GpuEvent> {
    let mut errors = tollgate_wire::FieldErrors::new();
    let events: Vec<_> = events
        .iter()
        .enumerate()
        .filter_map(|(i, event)| {
            tollgate_wire::result::event_from_proto(
                event.clone(),
                &format!("events[{i}]"),
                &mut errors,
            )
        })
        .collect();
    if let Err(invalid) = errors.finish(()) {
        tracing::warn!(node = %node, problems = %invalid, "GPU events outside a step left out; upgrade the agent to one this controller understands");
    }
    events
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
            () = crate::shared::stopped(&mut shutdown) => break,
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
                let handled = match event {
                    Event::Heartbeat(heartbeat) => {
                        note_heartbeat(&shared, &node, session_id, heartbeat);
                        Ok(())
                    }
                    // Boxed: the store calls' futures are large and this task lives as long
                    // as the stream, one per connected agent; boxed, they take memory only
                    // while an event is handled (heartbeats, nearly all events, await nothing).
                    event => Box::pin(on_event(&shared, &node, session_id, event)).await,
                };
                if let Err(error) = handled {
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

/// Notes a heartbeat; recorded and judged with the other nodes' at the next flush
/// (`heartbeats.rs`).
fn note_heartbeat(shared: &Shared, node: &NodeId, session_id: u64, heartbeat: proto::Heartbeat) {
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
    shared.heartbeats.note(
        node.clone(),
        crate::heartbeats::Note {
            session_id,
            heartbeat,
            at: shared.now(),
        },
    );
}

async fn on_event(
    shared: &Shared,
    node: &NodeId,
    session_id: u64,
    event: Event,
) -> Result<(), StoreError> {
    match event {
        Event::Heartbeat(heartbeat) => {
            note_heartbeat(shared, node, session_id, heartbeat);
            Ok(())
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

/// Judges one heartbeat, already recorded, against the node as a flush read it (`facts`;
/// `None` when the node is gone): tells the node's lifecycle that its agent is back
/// (`node::next_state` with `Reconnected`: an `unreachable` node becomes ready or busy, a
/// cordoned one stays cordoned), then compares what the agent runs with the node's job
/// (`on_running_report`).
pub async fn judge_heartbeat(
    shared: &Shared,
    node: &NodeId,
    note: &crate::heartbeats::Note,
    facts: Option<&crate::store::HeartbeatFacts>,
) -> Result<(), StoreError> {
    let Some(facts) = facts else {
        return Ok(());
    };
    if tollgate_domain::lease::revives(note.at, shared.now(), shared.config.lease_grace) {
        reconnected(shared, node, facts).await?;
    }
    on_running_report(
        shared,
        node,
        note.at,
        note.session_id,
        &note.heartbeat,
        facts.current_job.clone(),
    )
    .await
}

/// A new stream renews the lease at once (this replica's watchdog reads it; the store's
/// `last_seen_at` follows with the next heartbeat flush) and tells the node's lifecycle its
/// agent is back. Returns whether the node has an assigned or running job (false for a node
/// the store does not hold).
async fn on_connect(shared: &Shared, node: &NodeId) -> Result<bool, StoreError> {
    shared.heartbeats.connected(node.clone(), shared.now());
    let facts = shared
        .node_reads
        .heartbeat_facts(&shared.store, node)
        .await?;
    match facts {
        Some(facts) => {
            reconnected(shared, node, &facts).await?;
            Ok(facts.current_job.is_some())
        }
        None => Ok(false),
    }
}

/// `node::next_state` with `Reconnected`, applied with a compare-and-set: an `unreachable`
/// node becomes ready or busy, a cordoned one stays cordoned.
async fn reconnected(
    shared: &Shared,
    node: &NodeId,
    facts: &crate::store::HeartbeatFacts,
) -> Result<(), StoreError> {
    let event = NodeEvent::Reconnected {
        active_job: facts.current_job.is_some(),
    };
    match tollgate_domain::node::next_state(facts.state, event) {
        Ok(to) if to != facts.state => {
            let change = NodeChange {
                node: node.clone(),
                from: facts.state,
                to,
            };
            match shared.store.node_reconnected(&change).await {
                Ok(()) => {
                    tracing::info!(node = %node, state = %to, "node reachable again");
                    shared.notify_changed();
                    shared.poke_scheduler();
                }
                // An operator or the watchdog moved it meanwhile; the next heartbeat decides
                // again from what they left.
                Err(StoreError::Conflict { detail, .. }) => {
                    tracing::debug!(node = %node, detail, "node changed while it reconnected");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(_) => {}
        Err(refusal) => tracing::debug!(node = %node, %refusal, "reconnection changes nothing"),
    }
    Ok(())
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
    heard_at: Timestamp,
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
        cancel_if_ended(shared, node, running_job_id, heard_at).await?;
    }
    // Cheap checks first: this runs on every heartbeat.
    let Some(current_job) = current_job else {
        return Ok(());
    };
    if current_job.as_str() == running_job_id {
        return Ok(());
    }
    // The job and its results in one read, made together with the results' reads arriving
    // meanwhile (heartbeats land here between a step's end and its result's commit).
    let Some((job, results)) = shared.job_reads.result_basis(store, &current_job).await? else {
        return Ok(());
    };
    if &job.node != node || job.state != JobState::Running {
        return Ok(());
    }
    let Some(n_sent) = shared.sessions.commands_sent(node, session_id) else {
        // A newer stream replaced this one: its own heartbeats will be judged.
        return Ok(());
    };
    let Some(pinned) = store.pinned_plan(&job.run).await? else {
        return Ok(());
    };
    let steps = &pinned.stored.plan.steps;
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
        Liveness::Ended {
            step_index,
            end,
            message,
        } => {
            return end_abandoned(shared, node, &job, step_index, end, &message).await;
        }
    };
    let interrupted = Interrupted {
        job: &job,
        results: &results,
        names: &names,
    };
    let recorded = match record_attempt {
        Some(attempt) => {
            record_interrupted(
                shared,
                node,
                &interrupted,
                step_index,
                attempt,
                end,
                &message,
            )
            .await?
        }
        None => {
            tracing::warn!(node = %node, job = %job.id, step_index, "{message}");
            true
        }
    };
    if recorded && end.is_none() {
        assign_again(shared, node, &job.id).await?;
    }
    Ok(())
}

/// What an interrupted attempt is recorded against: the running job as loaded (its run
/// included), its stored results and its plan's step names.
struct Interrupted<'a> {
    job: &'a JobFacts,
    results: &'a [StepResult],
    names: &'a [String],
}

/// Records the interrupted attempt `attempt` of step `step_index` as an `error` result; with
/// `end` set it was the step's last allowed attempt and the job ends so. Returns whether it
/// was recorded: not when the job moved meanwhile (its result arrived, the run was
/// cancelled) or another heartbeat recorded it first; the next heartbeat judges it again.
async fn record_interrupted(
    shared: &Shared,
    node: &NodeId,
    interrupted: &Interrupted<'_>,
    step_index: u32,
    attempt: u32,
    end: Option<JobState>,
    message: &str,
) -> Result<bool, StoreError> {
    let store = &shared.store;
    let job = interrupted.job;
    let now = shared.now();
    let inventory = store
        .get_node(node)
        .await?
        .map(|node| node.inventory)
        .unwrap_or_default();
    let result = StepResult {
        job_id: job.id.clone(),
        step_index,
        step_name: interrupted
            .names
            .get(step_index as usize)
            .cloned()
            .unwrap_or_default(),
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
        message: message.to_owned(),
        sub_results: Vec::new(),
        inventory_at_end: None,
        series: Vec::new(),
    };
    let Some(facts) = store.job_facts(&job.id).await? else {
        return Ok(false);
    };
    let event = JobEvent::StepReported { finished: end };
    let mut change = match job::decide(&facts, event, facts.lease_epoch) {
        Ok(change) => ResultChange {
            job: change,
            results_before: interrupted.results.len(),
        },
        Err(refusal) => {
            tracing::debug!(job = %job.id, %refusal, "interrupted attempt not recorded");
            return Ok(false);
        }
    };
    crate::reschedule::attach(shared, &mut change.job, false).await?;
    match store.record_result(&result, &change, now).await {
        Ok(Recorded::Duplicate) | Err(StoreError::Conflict { .. }) => return Ok(false),
        Ok(Recorded::Inserted) => {}
        Err(error) => return Err(error),
    }
    tracing::warn!(node = %node, job = %job.id, step_index, attempt, "{message}");
    shared.notify_changed();
    job_changed(shared, &interrupted.job.run, &change.job);
    Ok(true)
}

/// Ends a running job its agent no longer runs after one of its steps finally did not pass
/// (`job::Liveness::Ended`): its last stored result decided how it ends, and the agent, which
/// restarted before it reported the remaining steps skipped, will report nothing more. The job
/// is rescheduled when its plan says so. A job that moved meanwhile is left to the next
/// heartbeat.
async fn end_abandoned(
    shared: &Shared,
    node: &NodeId,
    job: &JobFacts,
    step_index: u32,
    end: JobState,
    message: &str,
) -> Result<(), StoreError> {
    let Some(facts) = shared.store.job_facts(&job.id).await? else {
        return Ok(());
    };
    if facts.lease_epoch != job.lease_epoch {
        return Ok(());
    }
    let event = JobEvent::StepReported {
        finished: Some(end),
    };
    let mut change = match job::decide(&facts, event, facts.lease_epoch) {
        Ok(change) => change,
        Err(refusal) => {
            tracing::debug!(job = %job.id, %refusal, "abandoned job not ended");
            return Ok(());
        }
    };
    crate::reschedule::attach(shared, &mut change, false).await?;
    match shared.store.apply_job_change(&change, shared.now()).await {
        Ok(()) => {
            tracing::warn!(node = %node, job = %job.id, step_index, "{message}");
            shared.notify_changed();
            job_changed(shared, &job.run, &change);
            Ok(())
        }
        Err(StoreError::Conflict { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Assigns a job its agent no longer runs again, under a new lease epoch, and sends it.
async fn assign_again(shared: &Shared, node: &NodeId, job_id: &JobId) -> Result<(), StoreError> {
    let Some(facts) = shared.store.job_facts(job_id).await? else {
        return Ok(());
    };
    let Ok(change) = job::decide(&facts, JobEvent::AgentRestarted, facts.lease_epoch + 1) else {
        return Ok(());
    };
    match shared.store.apply_job_change(&change, shared.now()).await {
        Ok(()) => {
            tracing::info!(job = %job_id, node = %node, lease_epoch = change.to_epoch, "job assigned again: its agent no longer ran it");
            shared.notify_changed();
            crate::scheduler::resend_assigned(shared, node).await
        }
        // The job moved meanwhile: the next heartbeat judges it again.
        Err(StoreError::Conflict { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// The agent runs a job the store does not hold as this node's running job: when it ended
/// (cancelled, lost, finished) or is another node's, the agent is told to stop it, so no step
/// keeps loading the GPUs for nothing.
async fn cancel_if_ended(
    shared: &Shared,
    node: &NodeId,
    job_id: &str,
    heard_at: Timestamp,
) -> Result<(), StoreError> {
    let job = shared.store.get_job(&JobId::new(job_id.to_owned())).await?;
    let reason = match &job {
        None => format!("job {job_id} does not exist"),
        Some(job) if &job.node != node => format!("job {job_id} belongs to node {}", job.node),
        // Heartbeats are judged in batches: one that arrived before the job's last result
        // ended it still names the job, and says nothing about the agent now.
        Some(job) if job.state.is_terminal() && job.updated_at >= heard_at => return Ok(()),
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
    let Some(facts) = shared
        .job_reads
        .acceptance_facts(&shared.store, &job_id)
        .await?
    else {
        tracing::warn!(node = %node, job = %job_id, "accepted job does not exist; ignored");
        return Ok(());
    };
    if &facts.node != node {
        tracing::warn!(node = %node, job = %job_id, owner = %facts.node, "node accepted a job of another node; ignored");
        return Ok(());
    }
    if facts.lease_epoch != lease_epoch {
        tracing::warn!(job = %job_id, lease_epoch, current = facts.lease_epoch, "acceptance under a stale lease epoch; ignored");
        return Ok(());
    }
    if facts.state.is_terminal() {
        // The job was cancelled or lost before the agent started it: tell the agent to stop.
        tracing::warn!(job = %job_id, state = %facts.state, "agent accepted a job that already ended; cancelling it");
        let cancel = cancel_command(&job_id, &format!("job already ended as {}", facts.state));
        if let Err(error) = shared.sessions.send(node, cancel) {
            tracing::warn!(job = %job_id, %error, "cancel not delivered");
        }
        return Ok(());
    }
    match job::decide(&facts, JobEvent::Accepted, facts.lease_epoch) {
        Ok(change) if change.to != change.from => {
            match shared
                .group_commit
                .apply(&shared.store, &change, shared.now())
                .await
            {
                Ok(()) => {
                    tracing::info!(job = %job_id, node = %node, "job running");
                    shared.notify_changed();
                }
                // A result overtook the acceptance and moved the job already.
                Err(StoreError::Conflict { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(_) => {}
        Err(refusal) => tracing::warn!(job = %job_id, %refusal, "acceptance ignored"),
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
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The domain refused it for good (the refusal says why).
    #[error(transparent)]
    Refused(#[from] ResultRefusal),
    /// The store failed; a `Conflict` is retried.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What of a result its handler keeps decoded once the result is encoded ([`EncodedRow`]):
/// all but its telemetry summaries and series, which neither `job::accept_result` nor
/// `node::findings` reads and which are most of a decoded result. The row stores them.
fn deciding_part(result: StepResult) -> StepResult {
    StepResult {
        telemetry: Vec::new(),
        series: Vec::new(),
        ..result
    }
}

/// Checks and stores one result, `result` as [`deciding_part`] keeps it, `row` encoded from
/// the whole: load (the job's facts and results, one read), ask the domain
/// (`job::accept_result`), apply (one transaction, compare-and-set on the job and its node);
/// returns whether it was a duplicate.
async fn record(
    shared: &Shared,
    node: &NodeId,
    result: &StepResult,
    row: &Arc<EncodedRow>,
) -> Result<bool, RecordError> {
    let store = &shared.store;
    let (facts, results) = shared
        .job_reads
        .result_basis(store, &result.job_id)
        .await?
        .ok_or_else(|| ResultRefusal::UnknownJob {
            job: result.job_id.clone(),
        })?;
    let pinned = store
        .pinned_plan(&facts.run)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("run {} or the plan version it pinned", facts.run),
        })?;
    let steps = PlanSteps {
        name: &pinned.name,
        steps: &pinned.stored.plan.steps,
    };
    let mut change = match job::accept_result(&facts, node, steps, &results, result) {
        Ok(Acceptance::Record(change)) => change,
        Ok(Acceptance::Duplicate) => {
            tracing::debug!(job = %facts.id, step_index = result.step_index, attempt = result.attempt, "duplicate result acknowledged");
            return Ok(true);
        }
        Err(refusal) => {
            if let ResultRefusal::NotYourJob { owner, .. } = &refusal {
                tracing::warn!(node = %node, job = %facts.id, owner = %owner, "result for a job of another node refused");
            }
            return Err(refusal.into());
        }
    };
    crate::reschedule::attach(shared, &mut change.job, false).await?;
    let now = shared.now();
    let recorded = shared
        .metrics
        .store(
            "record_result",
            shared.group_commit.record(store, row, &change, now),
        )
        .await?;
    if recorded == Recorded::Duplicate {
        return Ok(true);
    }
    shared.metrics.result_ingested();
    tracing::debug!(job = %facts.id, step = result.step_name, attempt = result.attempt, outcome = %result.outcome, "result recorded");
    // The result is stored and acknowledged whatever happens to its findings.
    if let Some(step) = pinned.stored.plan.steps.get(result.step_index as usize)
        && let Err(error) =
            super::node::apply_findings(shared, node, &step.kind, &pinned.release, result).await
    {
        tracing::warn!(node = %node, job = %facts.id, %error, "the result's health findings were not applied");
    }
    shared.notify_changed();
    job_changed(shared, &facts.run, &change.job);
    Ok(false)
}

/// Says what an applied job change did, and wakes who acts on it: an ended job frees its
/// node (the scheduler) and changes its run's evidence (the gate).
pub(crate) fn job_changed(shared: &Shared, run: &RunId, change: &JobChange) {
    if let Some(node) = &change.node {
        tracing::debug!(node = %node.node, from = %node.from, to = %node.to, "node state changed by its job");
    }
    if change.to.is_terminal() {
        tracing::info!(job = %change.job, state = %change.to, "job ended");
        shared.poke_scheduler();
        shared.request_reevaluation(run);
    } else if change.to == JobState::Running && change.from == JobState::Assigned {
        tracing::info!(job = %change.job, "job running");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ControllerConfig;
    use crate::clock::ManualClock;
    use crate::store::{AuditNote, JobRecord, RunRecord, RunState, Store, testing};
    use std::time::Duration;
    use tollgate_domain::RunId;
    use tollgate_domain::fleet::NodeState;
    use tollgate_domain::test_support::{at, node, plan_for, release};

    async fn node_state(store: &Store, node: &NodeId) -> NodeState {
        store
            .get_node(node)
            .await
            .expect("read")
            .expect("node")
            .state
    }

    /// A cordoned node whose lease runs out (its running job is lost) and whose agent comes
    /// back stays cordoned: the watchdog and the heartbeat move it only as `node::next_state`
    /// decides, and the scheduler sends it no job (another run's job for it stays pending).
    async fn a_cordon_outlives_a_lost_lease_and_the_agent_coming_back(store: Store) {
        let n1 = node("n1", "hgx");
        let setup = AuditNote::new(at(0), "alice", "setup", "test");
        crate::grpc::node::register(&store, &n1.id, &n1.labels, &n1.inventory, "hash", at(0))
            .await
            .expect("register");
        store.touch_node(&n1.id, at(0)).await.expect("heartbeat");
        let release = release();
        store
            .create_release(&release, &setup)
            .await
            .expect("release");
        let plan = plan_for("hgx");
        store
            .put_plan(&plan, "steps: []", at(0), &setup)
            .await
            .expect("plan");
        // Job 1 runs on the node; job 2, of another run, waits for it.
        let mut jobs = Vec::new();
        for idx in 1..=2 {
            let run = RunRecord {
                id: RunId::from(format!("run-{idx}").as_str()),
                release: release.id.clone(),
                plan_name: plan.name.clone(),
                plan_version: plan.version(),
                milestone: "lab-qual".into(),
                state: RunState::Running,
                created_at: at(idx),
                finished_at: None,
                purpose: crate::store::RunPurpose::Qualification,
            };
            let job = JobRecord {
                id: JobId::from(format!("job-{idx}").as_str()),
                run_id: run.id.clone(),
                node: n1.id.clone(),
                state: JobState::Pending,
                lease_epoch: 0,
                created_at: at(idx),
                updated_at: at(idx),
                attempt: 1,
                rescheduled_from: None,
            };
            let note = AuditNote::new(at(idx), "alice", "run.start", format!("run/{}", run.id));
            store
                .create_run(&run, std::slice::from_ref(&job), &note)
                .await
                .expect("run");
            jobs.push(job.id);
        }
        for event in [JobEvent::Assigned, JobEvent::Accepted] {
            let facts = store
                .job_facts(&jobs[0])
                .await
                .expect("facts")
                .expect("job");
            let change = job::decide(&facts, event, 1).expect("decided");
            store
                .apply_job_change(&change, at(3))
                .await
                .expect("applied");
        }
        let note = AuditNote::new(at(4), "alice", "node.cordon", "node/n1");
        store
            .change_node_state(&n1.id, NodeState::Busy, NodeState::Cordoned, None, &note)
            .await
            .expect("cordon");

        let clock = ManualClock::new(at(0));
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut config = ControllerConfig::new(data_dir.path().to_owned());
        config.clock = Arc::new(clock.clone());
        config.lease_grace = Duration::from_secs(10);
        let shared = Shared::new(store.clone(), config);

        // The agent goes silent for far longer than any grace: its running job is lost.
        clock.advance(chrono::Duration::hours(1));
        assert_eq!(
            crate::lease::check_once(&shared)
                .await
                .expect("lease check"),
            vec![n1.id.clone()]
        );
        let lost = store.get_job(&jobs[0]).await.expect("job").expect("some");
        assert_eq!(lost.state, JobState::Lost);
        assert_eq!(node_state(&store, &n1.id).await, NodeState::Cordoned);

        // Its agent comes back: connected, heartbeating.
        let (session_id, _commands) = shared.sessions.open(&n1.id).expect("session");
        shared.heartbeats.note(
            n1.id.clone(),
            crate::heartbeats::Note {
                session_id,
                heartbeat: proto::Heartbeat::default(),
                at: shared.now(),
            },
        );
        assert_eq!(crate::heartbeats::flush(&shared).await.expect("flush"), 1);
        assert_eq!(node_state(&store, &n1.id).await, NodeState::Cordoned);
        assert_eq!(
            crate::scheduler::schedule_once(&shared)
                .await
                .expect("schedule"),
            0,
            "a cordoned node gets no job"
        );
        let waiting = store.get_job(&jobs[1]).await.expect("job").expect("some");
        assert_eq!(waiting.state, JobState::Pending);
        store.close().await;
    }

    #[tokio::test]
    async fn a_cordon_outlives_a_lost_lease_on_sqlite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/tollgate.db", dir.path().display());
        let store = Store::connect(&url).await.expect("sqlite store");
        a_cordon_outlives_a_lost_lease_and_the_agent_coming_back(store).await;
    }

    #[tokio::test]
    async fn a_cordon_outlives_a_lost_lease_on_postgres() {
        let Some(base) = testing::postgres_url_or_skip() else {
            return;
        };
        let url = testing::fresh_postgres_url(&base).await.expect("schema");
        let store = Store::connect(&url).await.expect("postgres store");
        a_cordon_outlives_a_lost_lease_and_the_agent_coming_back(store).await;
        testing::drop_postgres_schema(&url)
            .await
            .expect("drop schema");
    }
}
