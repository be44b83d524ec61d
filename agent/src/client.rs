//! The controller connection: registration and the node token, the `Connect` stream
//! (heartbeats, job assignments and cancels), reconnection with capped backoff, and the
//! uploader that delivers spooled results until they are acknowledged, and the resumption of
//! a job after the reboot its flash step needed (see [`crate::runner::resume`]).
//!
//! Ownership and shutdown: [`Agent::run`] owns the session loop and turns the caller's
//! shutdown future into a `watch` that every task listens to. The running job (at most one)
//! lives in `job`, a slot shared between the session that starts or cancels it and the job
//! task that clears it when the job ends. The uploader is one task, so a result is never sent
//! twice at once. On shutdown the job is stopped (its process group killed), its results are
//! spooled, and the uploader stops; what was not acknowledged stays in the spool for the next
//! start. A result the spool cannot take is held in memory (`held`, shared by the job task
//! and the uploader), spooled when the disk takes it again and meanwhile sent from memory.
//!
//! Every heartbeat says what the agent runs (job, lease epoch, step, attempt), how many
//! results it still holds (spooled and held) and how many commands of the stream it had read;
//! the controller decides from that whether the node's job is still being run. Before the
//! first session, the agent kills what a killed predecessor's step left running and spools
//! that attempt as `error` (see [`crate::runner::orphans`]).
//!
//! A job whose flash waits for a reboot keeps its slot until the agent stops, so heartbeats
//! keep naming it. At the next start the resume record (if any) is read before the first
//! session; the session that registers first resolves it before its first heartbeat: the flash
//! result is spooled and delivered, and only once the controller acknowledged it does the job
//! continue, in the slot, so that the first heartbeat already names it.

use crate::config::AgentConfig;
use crate::gpu::GpuSource;
use crate::runner::resume::{self, ResumeRecord};
use crate::runner::{self, JobEnd, JobEvent, RunnerContext, Stop};
use crate::spool::{Spool, SpoolEntry};
use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_domain::JobId;
use tollgate_proto::v1;
use tollgate_proto::v1::agent_service_client::AgentServiceClient;
use tollgate_wire::{FromProto as _, ToProto as _};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// First reconnect delay; doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Deadline of a unary call (Register, ReportResult).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Used when the controller's registration carries no heartbeat interval.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// Capped exponential backoff.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: BACKOFF_START,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_START;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }
}

/// How a session ended when it did not fail.
enum SessionEnd {
    Shutdown,
}

/// How a session failed.
enum SessionError {
    /// Reconnect after a backoff.
    Retry(String),
    /// Stop the agent.
    Fatal(anyhow::Error),
}

/// The job being run, owned by the slot; the job task removes it when done.
struct RunningJob {
    job_id: JobId,
    /// The latest epoch the controller assigned the job under; results spooled from now on
    /// carry it. Shared with the job task.
    lease_epoch: Arc<AtomicU64>,
    /// The step and attempt running now, `None` between attempts; written by the job task,
    /// read by every heartbeat.
    step: Arc<Mutex<Option<(u32, u32)>>>,
    stop: watch::Sender<Option<Stop>>,
    task: JoinHandle<()>,
}

/// Results that could not be spooled (the state directory's disk is full or failing), oldest
/// first. The uploader spools them as soon as the disk takes them again, and meanwhile
/// delivers them straight from memory; one leaves only once acknowledged (or refused for
/// good). Heartbeats count them as unsent, so the controller waits for them.
type Held = Arc<Mutex<std::collections::VecDeque<v1::StepResult>>>;

/// Aborts a task when dropped, so nothing the agent spawned outlives it, even when the
/// caller aborts the agent's own task instead of shutting it down.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The agent: configuration, GPU source, spool and the shared state of its tasks.
pub struct Agent {
    config: AgentConfig,
    source: Arc<dyn GpuSource>,
    spool: Arc<Spool>,
    channel: Channel,
    /// The node token; written by the session after each registration, read by the uploader.
    token: watch::Sender<Option<String>>,
    /// At most one running job.
    job: Arc<Mutex<Option<RunningJob>>>,
    /// Progress (StepStarted) from the job task to whichever session is connected.
    progress_sender: mpsc::Sender<v1::AgentEvent>,
    /// Taken by [`Agent::run`], which lends it to each session in turn.
    progress: Option<mpsc::Receiver<v1::AgentEvent>>,
    /// Wakes the uploader: a new result was spooled or held, or a session (re)registered.
    upload: Arc<Notify>,
    /// Results not spooled, kept in memory until acknowledged.
    held: Held,
    /// Held during each pass over the spool, so the uploader and a session resolving a resume
    /// never deliver the same result at once.
    uploading: Arc<tokio::sync::Mutex<()>>,
    /// A job to continue after the reboot its flash needed, until the controller answered
    /// its flash result. Read at start-up; resolved by the first session that registers.
    resume: Arc<Mutex<Option<PendingResume>>>,
}

/// A resume record this agent will act on, and how far it got.
struct PendingResume {
    record: ResumeRecord,
    /// Set once the flash result is spooled.
    flash: Option<SpooledFlash>,
}

/// The flash result after the reboot, spooled and waiting for the controller's answer.
struct SpooledFlash {
    /// The job's position to continue from (the step after the flash).
    from: usize,
    /// The flash step's name when it did not pass: the remaining steps are then skipped.
    failed_step: Option<String>,
    /// The controller's answer: `Ok` acknowledged, `Err` refused with its reason.
    answer: Option<Result<(), String>>,
}

/// How a job starts on this agent.
enum Start {
    /// From its first step: a fresh assignment.
    Fresh,
    /// From position `from`, after the reboot its flash step needed.
    AfterReboot {
        from: usize,
        failed_step: Option<String>,
    },
}

/// What the uploader tells the rest of the agent about the controller's answers.
#[derive(Clone)]
struct Answers {
    job: Arc<Mutex<Option<RunningJob>>>,
    resume: Arc<Mutex<Option<PendingResume>>>,
}

impl Answers {
    /// Records the controller's answer to `result`: a resumed flash result gets its answer,
    /// and a refusal meaning the controller no longer runs the job (`FailedPrecondition`:
    /// the job ended or moved to a newer lease epoch; `NotFound`; `PermissionDenied`) stops
    /// that job if it is the one running here, so no more of it runs for nothing.
    fn note(&self, result: &v1::StepResult, answer: Result<(), &Status>) {
        {
            let mut resume = self.resume.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(pending) = resume.as_mut()
                && let Some(flash) = pending.flash.as_mut()
                && pending.record.job.job_id.as_str() == result.job_id
                && pending.record.job.lease_epoch == result.lease_epoch
                && pending.record.step_index == result.step_index
                && pending.record.attempt == result.attempt
            {
                flash.answer = Some(answer.map_err(|status| status.message().to_owned()));
            }
        }
        let Err(status) = answer else { return };
        if !matches!(
            status.code(),
            Code::FailedPrecondition | Code::NotFound | Code::PermissionDenied
        ) {
            return;
        }
        let slot = self.job.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = slot.as_ref()
            && running.job_id.as_str() == result.job_id
            && running.lease_epoch.load(Ordering::SeqCst) <= result.lease_epoch
        {
            tracing::warn!(
                job = %running.job_id,
                reason = %status.message(),
                "the controller no longer runs this job; stopping it"
            );
            let _ = running.stop.send(Some(Stop::Cancelled(format!(
                "the controller refused its results: {}",
                status.message()
            ))));
        }
    }
}

impl Agent {
    /// Prepares the agent; connects lazily, so the controller need not be up yet.
    pub fn new(
        config: AgentConfig,
        source: Arc<dyn GpuSource>,
        spool: Arc<Spool>,
    ) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(config.controller.clone())
            .with_context(|| format!("controller address '{}'", config.controller))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        let saved = read_token(&token_path(&config.state_dir))?;
        let (progress_sender, progress) = mpsc::channel(64);
        Ok(Self {
            config,
            source,
            spool,
            channel,
            token: watch::Sender::new(saved),
            job: Arc::new(Mutex::new(None)),
            progress_sender,
            progress: Some(progress),
            upload: Arc::new(Notify::new()),
            held: Held::default(),
            uploading: Arc::new(tokio::sync::Mutex::new(())),
            resume: Arc::new(Mutex::new(None)),
        })
    }

    fn answers(&self) -> Answers {
        Answers {
            job: Arc::clone(&self.job),
            resume: Arc::clone(&self.resume),
        }
    }

    fn runner_context(&self) -> RunnerContext {
        RunnerContext {
            source: Arc::clone(&self.source),
            node: self.config.node.clone(),
            controller: self.config.controller.clone(),
            state_dir: self.config.state_dir.clone(),
            sample_interval: self.config.sample_interval,
        }
    }

    /// Reads the resume record a flash left before the node rebooted. A record this agent
    /// cannot use (corrupt, unreadable, or written for another node or controller) is moved
    /// aside and logged, never read again, so it cannot stop the agent at every start; the
    /// controller then treats the job as interrupted, as for any restart.
    fn load_resume_record(&self) {
        let state_dir = &self.config.state_dir;
        let set_aside = |why: &str| match resume::set_aside(state_dir, why) {
            Ok(path) => path.display().to_string(),
            Err(error) => format!("not moved: {error}"),
        };
        let record = match resume::read(state_dir) {
            Ok(None) => return,
            Ok(Some(record)) => record,
            Err(error) => {
                let kept = set_aside(match error {
                    resume::ResumeError::Corrupt { .. } => "corrupt",
                    resume::ResumeError::Io { .. } => "unreadable",
                });
                tracing::error!(
                    %error,
                    kept_at = %kept,
                    "the resume record of a flash cannot be read; its job is not resumed (the \
                     controller records it as interrupted)"
                );
                return;
            }
        };
        if let Err(problem) =
            resume::check_owner(&record, &self.config.node, &self.config.controller)
        {
            let kept = set_aside("other-owner");
            tracing::error!(
                job = %record.job.job_id,
                %problem,
                kept_at = %kept,
                "the resume record of a flash is not this agent's; its job is not resumed"
            );
            return;
        }
        tracing::info!(
            job = %record.job.job_id,
            step_index = record.step_index,
            attempt = record.attempt,
            lease_epoch = record.job.lease_epoch,
            "a flash waited for this restart; its job continues once the controller has its result"
        );
        *self.resume.lock().unwrap_or_else(|p| p.into_inner()) = Some(PendingResume {
            record,
            flash: None,
        });
    }

    /// Resolves a pending resume, before the session's first heartbeat: checks the flash and
    /// spools its result (once), delivers the spool in order, and acts on the controller's
    /// answer to the flash result. `Err` (retry the session) while the controller could not
    /// be reached; the record stays on disk until the answer came.
    async fn resume_after_reboot(
        &self,
        client: &mut AgentServiceClient<Channel>,
        token: &str,
    ) -> Result<(), String> {
        let (record, spooled) = {
            let pending = self.resume.lock().unwrap_or_else(|p| p.into_inner());
            match pending.as_ref() {
                None => return Ok(()),
                Some(pending) => (pending.record.clone(), pending.flash.is_some()),
            }
        };
        let state_dir = &self.config.state_dir;
        let job_id = record.job.job_id.clone();
        if !spooled {
            let (result, from) = match runner::resume::flash_result(&self.runner_context(), &record)
                .await
            {
                Ok(checked) => checked,
                Err(problem) => {
                    let kept = resume::set_aside(state_dir, "unusable")
                        .map_or_else(|e| format!("not moved: {e}"), |p| p.display().to_string());
                    tracing::error!(job = %job_id, %problem, kept_at = %kept, "the resume record cannot be resumed");
                    *self.resume.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    return Ok(());
                }
            };
            let failed_step = (result.outcome != tollgate_domain::result::Outcome::Passed)
                .then(|| result.step_name.clone());
            let wire = tollgate_wire::step_result_for_upload(&result);
            let spool = Arc::clone(&self.spool);
            match tokio::task::spawn_blocking(move || spool.write(&wire)).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Err(format!("spooling the flash result: {error}")),
                Err(error) => return Err(format!("spooling the flash result: {error}")),
            }
            if let Some(pending) = self
                .resume
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                pending.flash = Some(SpooledFlash {
                    from,
                    failed_step,
                    answer: None,
                });
            }
        }
        // Everything spooled goes first, in order: results of the steps before the flash
        // that were not acknowledged before the reboot, then the flash result.
        {
            let _uploading = self.uploading.lock().await;
            upload_pass(client, &self.spool, &self.held, token, &self.answers()).await?;
        }
        let Some(PendingResume {
            record,
            flash: Some(flash),
        }) = self.resume.lock().unwrap_or_else(|p| p.into_inner()).take()
        else {
            return Ok(());
        };
        if let Err(error) = resume::clear(state_dir) {
            tracing::error!(%error, job = %job_id, "could not remove the resume record; remove it by hand, or the next start reports the flash again");
        }
        match flash.answer {
            Some(Ok(())) => {
                let job = record.job;
                if flash.from >= job.steps.len() {
                    tracing::info!(job = %job_id, "the flash was the job's last step");
                    return Ok(());
                }
                tracing::info!(job = %job_id, from_step = flash.from, lease_epoch = job.lease_epoch, "job continues after the reboot");
                let mut slot = self.job.lock().unwrap_or_else(|p| p.into_inner());
                self.start_job(
                    &mut slot,
                    job,
                    Start::AfterReboot {
                        from: flash.from,
                        failed_step: flash.failed_step,
                    },
                );
            }
            Some(Err(reason)) => tracing::warn!(
                job = %job_id,
                lease_epoch = record.job.lease_epoch,
                %reason,
                "the controller refused the flash result after the reboot: it no longer runs \
                 this job (declared lost or reassigned while the node was away); the resume \
                 record is dropped and the job's remaining steps are not run"
            ),
            None => tracing::error!(
                job = %job_id,
                "the flash result left the spool unanswered (see spool/corrupt); the resume \
                 record is dropped and the job's remaining steps are not run"
            ),
        }
        Ok(())
    }

    /// Runs sessions until `shutdown` resolves or a fatal error.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (shutdown_sender, mut shutdown_receiver) = watch::channel(false);
        let _watcher = AbortOnDrop(tokio::spawn(async move {
            shutdown.await;
            let _ = shutdown_sender.send(true);
        }));
        self.load_resume_record();
        self.report_leftover_attempt().await;
        let uploader = AbortOnDrop(tokio::spawn(upload_loop(
            AgentServiceClient::new(self.channel.clone()),
            Arc::clone(&self.spool),
            Arc::clone(&self.held),
            self.token.subscribe(),
            Arc::clone(&self.upload),
            Arc::clone(&self.uploading),
            self.answers(),
            shutdown_receiver.clone(),
        )));
        let _fleet = AbortOnDrop(tokio::spawn(fleet_loop(
            Arc::clone(&self.source),
            AgentServiceClient::new(self.channel.clone()),
            self.token.subscribe(),
            Arc::clone(&self.job),
            self.config.fleet_interval,
            self.config.telemetry_buffer,
        )));
        let mut backoff = Backoff::new();
        let (_, mut progress) = mpsc::channel(1);
        if let Some(receiver) = self.progress.take() {
            progress = receiver;
        }
        let outcome = loop {
            if *shutdown_receiver.borrow() {
                break Ok(());
            }
            match self
                .session(&mut progress, &mut shutdown_receiver, &mut backoff)
                .await
            {
                Ok(SessionEnd::Shutdown) => break Ok(()),
                Err(SessionError::Fatal(error)) => break Err(error),
                Err(SessionError::Retry(reason)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%reason, retry_in = ?delay, "no session with the controller; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = until_shutdown(&mut shutdown_receiver) => break Ok(()),
                    }
                }
            }
        };
        self.stop_job(Stop::Shutdown).await;
        drop(uploader);
        tracing::info!(node = %self.config.node, "agent stopped");
        outcome
    }

    /// Kills what the previous agent's interrupted attempt left running (see
    /// [`runner::orphans`]) and reports that attempt as an `error` result, before the first
    /// session: the first heartbeat then counts it unsent, and the controller decides about
    /// the job once it has it.
    async fn report_leftover_attempt(&self) {
        let state_dir = &self.config.state_dir;
        let leftover = match runner::orphans::recover(state_dir).await {
            Ok(Some(leftover)) => leftover,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(%error, "cannot read the interrupted step's process group record; its processes, if any, are not killed");
                return;
            }
        };
        let attempt = &leftover.attempt;
        let resumed = self
            .resume
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|pending| {
                pending.record.job.job_id == attempt.job_id
                    && pending.record.step_index == attempt.step_index
                    && pending.record.attempt == attempt.attempt
            });
        if resumed {
            // A flash killed between writing its resume record and dropping its group record:
            // the resume reports this attempt; an `error` for it too would contradict it.
            tracing::info!(job = %attempt.job_id, step = %attempt.step_name, "the interrupted attempt is a flash waiting for this restart; its resume record reports it");
            if let Err(error) = runner::orphans::clear(state_dir) {
                tracing::error!(%error, "could not remove the process group record");
            }
            return;
        }
        let message = format!(
            "interrupted: the agent restarted during step {} (attempt {}); {}",
            attempt.step_name, attempt.attempt, leftover.processes
        );
        tracing::warn!(
            job = %attempt.job_id,
            step = %attempt.step_name,
            attempt = attempt.attempt,
            n_killed = leftover.n_killed,
            "{message}"
        );
        let inventory = runner::observe_inventory(&self.source)
            .await
            .unwrap_or_default();
        let result = tollgate_domain::result::StepResult {
            job_id: attempt.job_id.clone(),
            step_index: attempt.step_index,
            step_name: attempt.step_name.clone(),
            attempt: attempt.attempt,
            lease_epoch: attempt.lease_epoch,
            outcome: tollgate_domain::result::Outcome::Error,
            exit_code: None,
            started_at: attempt.started_at,
            finished_at: crate::clock::now(),
            measurements: Vec::new(),
            telemetry: Vec::new(),
            events: Vec::new(),
            inventory,
            log_tail: String::new(),
            message,
            sub_results: Vec::new(),
            inventory_at_end: None,
            series: Vec::new(),
        };
        let wire = tollgate_wire::step_result_for_upload(&result);
        let spool = Arc::clone(&self.spool);
        let to_spool = wire.clone();
        let spooled = tokio::task::spawn_blocking(move || spool.write(&to_spool))
            .await
            .map_err(|error| error.to_string())
            .and_then(|written| written.map(|_| ()).map_err(|error| error.to_string()));
        if let Err(error) = spooled {
            tracing::error!(%error, "could not spool the interrupted attempt's result; it is kept in memory");
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(wire);
        }
        if let Err(error) = runner::orphans::clear(state_dir) {
            tracing::error!(%error, "could not remove the process group record; the next start reports the attempt again (the controller deduplicates it)");
        }
    }

    /// Stops the running job, if any, and waits until its results are spooled.
    async fn stop_job(&self, reason: Stop) {
        let running = self
            .job
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(running) = running {
            tracing::info!(job = %running.job_id, "stopping the running job");
            let _ = running.stop.send(Some(reason));
            let _ = running.task.await;
        }
    }

    /// What the agent runs now and what it still owes the controller; `commands_received`
    /// is how many commands of the current stream it had read.
    fn heartbeat(&self, commands_received: u64) -> v1::AgentEvent {
        let (running_job_id, lease_epoch, step) = self
            .job
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(|running| {
                let step = *running.step.lock().unwrap_or_else(|p| p.into_inner());
                (
                    running.job_id.to_string(),
                    running.lease_epoch.load(Ordering::SeqCst),
                    step,
                )
            })
            .unwrap_or_default();
        // Counted after the slot was read: a result leaves the slot's job only once it is
        // spooled or held, so a heartbeat never shows the job gone and its last result unsent
        // uncounted.
        let mut unsent_by_job = self.spool.count_pending_by_job();
        for result in self.held.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let n = unsent_by_job.entry(result.job_id.clone()).or_default();
            *n = n.saturating_add(1);
        }
        let unsent = unsent_by_job
            .values()
            .fold(0u32, |sum, n| sum.saturating_add(*n));
        v1::AgentEvent {
            event: Some(v1::agent_event::Event::Heartbeat(v1::Heartbeat {
                running_job_id,
                sent_at: Some(tollgate_wire::timestamp_to_proto(crate::clock::now())),
                unsent_results: unsent,
                lease_epoch,
                step_index: step.map(|(index, _)| index),
                attempt: step.map_or(0, |(_, attempt)| attempt),
                commands_received,
                unsent_by_job: unsent_by_job.into_iter().collect(),
            })),
        }
    }

    /// Registers, opens the stream and serves it until it breaks or the agent shuts down.
    async fn session(
        &self,
        progress_events: &mut mpsc::Receiver<v1::AgentEvent>,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> Result<SessionEnd, SessionError> {
        let mut client = AgentServiceClient::new(self.channel.clone());
        let inventory = runner::observe_inventory(&self.source)
            .await
            .map_err(|error| SessionError::Retry(format!("reading the inventory: {error}")))?;
        let request = v1::RegisterRequest {
            node_name: self.config.node.clone(),
            labels: self.config.labels.clone().into_iter().collect(),
            inventory: Some(inventory.to_proto()),
            agent_version: crate::AGENT_VERSION.to_owned(),
            node_token: self.token.borrow().clone().unwrap_or_default(),
        };
        let mut request = Request::new(request);
        request.set_timeout(CALL_TIMEOUT);
        let registration = match client.register(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::PermissionDenied => {
                return Err(SessionError::Fatal(anyhow::anyhow!(
                    "the controller refused node '{}': {} (the node token in {} does not match \
                     this node's enrollment; ask an operator to re-enroll the node)",
                    self.config.node,
                    status.message(),
                    token_path(&self.config.state_dir).display()
                )));
            }
            Err(status) => return Err(SessionError::Retry(describe(&status, "register"))),
        };
        let token = registration.node_token.clone();
        let path = token_path(&self.config.state_dir);
        let to_save = token.clone();
        match tokio::task::spawn_blocking(move || save_token(&path, &to_save)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "could not save the node token; it is kept in memory")
            }
            Err(error) => tracing::error!(%error, "saving the node token failed"),
        }
        self.token.send_replace(Some(token.clone()));
        let heartbeat_every = match registration.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        tracing::info!(
            node = %registration.node_name,
            heartbeat = ?heartbeat_every,
            gpus = inventory.gpus.len(),
            driver = %inventory.driver_version,
            "registered with the controller"
        );
        // A job whose flash waited for this restart continues before the first heartbeat,
        // which then names it: the controller keeps the job instead of declaring it
        // interrupted.
        self.resume_after_reboot(&mut client, &token)
            .await
            .map_err(SessionError::Retry)?;
        // Replay whatever the spool holds, now that uploads carry a valid token.
        self.upload.notify_one();

        let (outbound, outbound_receiver) = mpsc::channel::<v1::AgentEvent>(64);
        // Commands read from this stream, reported in every heartbeat: the controller judges a
        // heartbeat only once it was built after every command it sent.
        let mut commands_received: u64 = 0;
        outbound
            .send(self.heartbeat(commands_received))
            .await
            .map_err(|_| SessionError::Retry("stream closed".into()))?;
        let request = authorized(ReceiverStream::new(outbound_receiver), &token)
            .map_err(|status| SessionError::Retry(status.message().to_owned()))?;
        let mut inbound = client
            .connect(request)
            .await
            .map_err(|status| SessionError::Retry(describe(&status, "connect")))?
            .into_inner();
        backoff.reset();
        tracing::info!("stream to the controller open");

        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + heartbeat_every,
            heartbeat_every,
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let closed = |_| SessionError::Retry("the outbound stream closed".into());
        loop {
            tokio::select! {
                _ = until_shutdown(shutdown) => return Ok(SessionEnd::Shutdown),
                _ = ticker.tick() => {
                    tracing::debug!("heartbeat");
                    outbound.send(self.heartbeat(commands_received)).await.map_err(closed)?;
                }
                Some(progress) = progress_events.recv() => {
                    outbound.send(progress).await.map_err(closed)?;
                }
                message = inbound.message() => match message {
                    Ok(Some(command)) => {
                        commands_received += 1;
                        if let Some(reply) = self.handle(command) {
                            outbound.send(reply).await.map_err(closed)?;
                        }
                    }
                    Ok(None) => return Err(SessionError::Retry("the controller closed the stream".into())),
                    Err(status) => return Err(SessionError::Retry(describe(&status, "stream"))),
                },
            }
        }
    }

    /// Acts on a controller command; returns what to send back.
    fn handle(&self, command: v1::ControllerCommand) -> Option<v1::AgentEvent> {
        match command.command? {
            v1::controller_command::Command::AssignJob(assignment) => self.assign(assignment),
            v1::controller_command::Command::CancelJob(cancel) => {
                let slot = self.job.lock().unwrap_or_else(|p| p.into_inner());
                match slot.as_ref() {
                    Some(running) if running.job_id.as_str() == cancel.job_id => {
                        tracing::info!(job = %cancel.job_id, reason = %cancel.reason, "job cancelled by the controller");
                        let _ = running.stop.send(Some(Stop::Cancelled(cancel.reason)));
                    }
                    _ => {
                        tracing::info!(job = %cancel.job_id, "cancel for a job that is not running; ignored")
                    }
                }
                None
            }
        }
    }

    fn assign(&self, assignment: v1::AssignJob) -> Option<v1::AgentEvent> {
        let job = match runner::Job::from_proto(assignment) {
            Ok(job) => job,
            Err(error) => {
                tracing::error!(%error, "cannot run the assigned job");
                return None;
            }
        };
        let accepted = |job_id: &JobId, lease_epoch: u64| v1::AgentEvent {
            event: Some(v1::agent_event::Event::JobAccepted(v1::JobAccepted {
                job_id: job_id.to_string(),
                lease_epoch,
            })),
        };
        let mut slot = self.job.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = slot.as_ref() {
            if running.job_id == job.job_id {
                // A controller that reconnected re-sends the assignment: confirm, don't rerun.
                // A reassignment carries a newer epoch: acknowledge under it, and the results
                // still to come carry it too (the old epoch is fenced off).
                let epoch = running
                    .lease_epoch
                    .fetch_max(job.lease_epoch, Ordering::SeqCst)
                    .max(job.lease_epoch);
                return Some(accepted(&running.job_id, epoch));
            }
            tracing::warn!(running = %running.job_id, assigned = %job.job_id, "already running a job; assignment ignored");
            return None;
        }
        tracing::info!(
            job = %job.job_id,
            release = %job.release,
            milestone = %job.milestone,
            plan = %job.plan_name,
            steps = job.steps.len(),
            "job started"
        );
        let reply = accepted(&job.job_id, job.lease_epoch);
        self.start_job(&mut slot, job, Start::Fresh);
        Some(reply)
    }

    /// Spawns the job's task and puts it in the (locked, empty) slot. The slot stays locked
    /// while the task is spawned, so the task's own removal of the slot entry always comes
    /// after this insertion.
    fn start_job(&self, slot: &mut Option<RunningJob>, job: runner::Job, start: Start) {
        let (stop, stop_receiver) = watch::channel(None);
        let job_id = job.job_id.clone();
        let lease_epoch = Arc::new(AtomicU64::new(job.lease_epoch));
        let step = Arc::new(Mutex::new(None));
        let task = tokio::spawn(drive_job(
            self.runner_context(),
            job,
            start,
            stop_receiver,
            Delivery {
                spool: Arc::clone(&self.spool),
                held: Arc::clone(&self.held),
                upload: Arc::clone(&self.upload),
                progress: self.progress_sender.clone(),
            },
            Arc::clone(&self.job),
            Arc::clone(&lease_epoch),
            Arc::clone(&step),
        ));
        *slot = Some(RunningJob {
            job_id,
            lease_epoch,
            step,
            stop,
            task,
        });
    }
}

impl Drop for Agent {
    /// An agent dropped without a shutdown (its task aborted) takes its job down with it: the
    /// job task is aborted, which kills the step's process group through the runner's guard.
    fn drop(&mut self) {
        let running = self
            .job
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(running) = running {
            running.task.abort();
        }
    }
}

/// Where a job task's results and progress go.
struct Delivery {
    spool: Arc<Spool>,
    held: Held,
    /// Wakes the uploader.
    upload: Arc<Notify>,
    progress: mpsc::Sender<v1::AgentEvent>,
}

/// Runs a job, spooling each result (or holding it in memory when the spool fails) before
/// waking the uploader, then frees the job slot. A job whose flash waits for a reboot keeps
/// the slot until the agent stops (the reboot) or the controller cancels it (then its resume
/// record is removed).
#[expect(
    clippy::too_many_arguments,
    reason = "each argument is a distinct handle the job task owns"
)]
async fn drive_job(
    context: RunnerContext,
    job: runner::Job,
    start: Start,
    stop: watch::Receiver<Option<Stop>>,
    delivery: Delivery,
    slot: Arc<Mutex<Option<RunningJob>>>,
    lease_epoch: Arc<AtomicU64>,
    step: Arc<Mutex<Option<(u32, u32)>>>,
) {
    let Delivery {
        spool,
        held,
        upload,
        progress,
    } = delivery;
    let (events, mut receiver) = mpsc::unbounded_channel();
    let mut stop_after = stop.clone();
    let run = async {
        let end = match start {
            Start::Fresh => runner::run_job(&context, &job, stop, &events).await,
            Start::AfterReboot { from, failed_step } => {
                runner::continue_job(&context, &job, from, failed_step, stop, &events).await
            }
        };
        drop(events);
        if end == JobEnd::AwaitingReboot {
            tracing::info!(job = %job.job_id, "the node must reboot to finish the flash; the job waits for it");
            let reason = stop_after
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|reason| reason.clone());
            if let Some(Stop::Cancelled(reason)) = reason {
                match resume::clear(&context.state_dir) {
                    Ok(()) => {
                        tracing::info!(job = %job.job_id, %reason, "job cancelled while waiting for the reboot; its resume record is removed")
                    }
                    Err(error) => {
                        tracing::error!(job = %job.job_id, %error, "job cancelled while waiting for the reboot, but its resume record could not be removed")
                    }
                }
            } else {
                tracing::info!(job = %job.job_id, "the agent stops while the job waits for the reboot; it resumes at the next start");
            }
        }
    };
    let deliver = async {
        let mut outcomes = Vec::new();
        while let Some(event) = receiver.recv().await {
            match event {
                JobEvent::StepStarted {
                    step_index,
                    attempt,
                } => {
                    *step.lock().unwrap_or_else(|p| p.into_inner()) = Some((step_index, attempt));
                    let started = v1::AgentEvent {
                        event: Some(v1::agent_event::Event::StepStarted(v1::StepStarted {
                            job_id: job.job_id.to_string(),
                            lease_epoch: job.lease_epoch,
                            step_index,
                            attempt,
                        })),
                    };
                    // Progress is informational: when no session drains it, drop it.
                    let _ = progress.try_send(started);
                }
                JobEvent::Result(mut result, kept) => {
                    mark_gpu_lost(&mut result);
                    outcomes.push(result.outcome);
                    let mut wire = tollgate_wire::step_result_for_upload(&result);
                    wire.lease_epoch = wire.lease_epoch.max(lease_epoch.load(Ordering::SeqCst));
                    let writer = Arc::clone(&spool);
                    let to_spool = wire.clone();
                    let spooled = tokio::task::spawn_blocking(move || writer.write(&to_spool))
                        .await
                        .map_err(|error| format!("spooling task failed: {error}"))
                        .and_then(|written| written.map_err(|error| error.to_string()));
                    match spooled {
                        Ok(path) => tracing::debug!(path = %path.display(), "result spooled"),
                        Err(error) => {
                            tracing::error!(
                                %error,
                                job = %result.job_id,
                                step = %result.step_name,
                                attempt = result.attempt,
                                "could not spool a result; it is kept in memory and sent from \
                                 there until acknowledged (free space in the state directory: \
                                 an agent restart before then loses it, and the controller \
                                 records the attempt as interrupted)"
                            );
                            held.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push_back(wire);
                        }
                    }
                    // Only once the result is spooled or held does the step stop showing in
                    // heartbeats, so the controller never sees it neither running nor owed.
                    let mut current = step.lock().unwrap_or_else(|p| p.into_inner());
                    if *current == Some((result.step_index, result.attempt)) {
                        *current = None;
                    }
                    drop(current);
                    // Only now may the runner start the next attempt and drop the attempt's
                    // process group record.
                    kept.done();
                    upload.notify_one();
                }
            }
        }
        outcomes
    };
    let ((), outcomes) = tokio::join!(run, deliver);
    let passed = outcomes
        .iter()
        .filter(|o| **o == tollgate_domain::result::Outcome::Passed)
        .count();
    tracing::info!(job = %job.job_id, results = outcomes.len(), passed, "job ended");
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if slot
        .as_ref()
        .is_some_and(|running| running.job_id == job.job_id)
    {
        *slot = None;
    }
}

/// A GPU that fell off the bus during an attempt fails it, whatever its process said: the
/// evidence it produced cannot be trusted.
fn mark_gpu_lost(result: &mut tollgate_domain::result::StepResult) {
    use tollgate_domain::result::Outcome;
    use tollgate_domain::telemetry::EventKind;
    let lost: Vec<String> = result
        .events
        .iter()
        .filter(|event| event.kind == EventKind::GpuLost)
        .map(|event| event.gpu_index.to_string())
        .collect();
    if lost.is_empty() || matches!(result.outcome, Outcome::Failed) {
        return;
    }
    if matches!(result.outcome, Outcome::Passed | Outcome::Error) {
        result.outcome = Outcome::Failed;
        result.message = format!(
            "GPU {} fell off the bus during the step (gpu-lost); {}",
            lost.join(", "),
            result.message
        );
    }
}

/// Samples the GPUs every `interval` while no job runs (the step's sampler covers jobs) and
/// streams the samples and events to the controller; holds them in a bounded buffer while the
/// controller cannot be reached. Aborted with the agent.
async fn fleet_loop(
    source: Arc<dyn GpuSource>,
    mut client: AgentServiceClient<Channel>,
    token: watch::Receiver<Option<String>>,
    job: Arc<Mutex<Option<RunningJob>>>,
    interval: Duration,
    bound: usize,
) {
    if interval.is_zero() {
        return;
    }
    let mut buffer = crate::fleet::FleetBuffer::new(bound);
    let mut readers = std::collections::BTreeMap::new();
    let mut gpu_indexes: Vec<u32> = Vec::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let busy = job.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        if !busy {
            if gpu_indexes.is_empty()
                && let Ok(inventory) = runner::observe_inventory(&source).await
            {
                gpu_indexes = inventory.gpus.iter().map(|gpu| gpu.index).collect();
            }
            for sample in
                crate::fleet::sample_round(&source, &mut readers, &gpu_indexes, interval).await
            {
                buffer.push(sample);
            }
            let events_source = Arc::clone(&source);
            if let Ok(events) = tokio::task::spawn_blocking(move || events_source.events()).await {
                for event in &events {
                    tracing::warn!(gpu_index = event.gpu_index, kind = %event.kind, code = event.code, "GPU event outside a step");
                }
                buffer.push_events(events.iter().map(tollgate_wire::gpu_event_for_upload));
            }
        }
        if buffer.is_empty() {
            continue;
        }
        let Some(current_token) = token.borrow().clone() else {
            continue;
        };
        let batch = buffer.take_batch();
        let Ok(mut request) = authorized(tokio_stream::iter(vec![batch.clone()]), &current_token)
        else {
            buffer.restore(batch);
            continue;
        };
        request.set_timeout(CALL_TIMEOUT);
        match client.push_telemetry(request).await {
            Ok(_) => tracing::debug!(
                n_samples = batch.samples.len(),
                dropped = batch.dropped,
                "fleet telemetry delivered"
            ),
            Err(status) => {
                tracing::debug!(status = %describe(&status, "push telemetry"), buffered = buffer.len() + batch.samples.len(), "fleet telemetry kept for later");
                buffer.restore(batch);
            }
        }
    }
}

/// Delivers spooled results in order until each is acknowledged or rejected for good.
#[expect(
    clippy::too_many_arguments,
    reason = "each argument is a distinct handle the uploader owns"
)]
async fn upload_loop(
    mut client: AgentServiceClient<Channel>,
    spool: Arc<Spool>,
    held: Held,
    token: watch::Receiver<Option<String>>,
    wake: Arc<Notify>,
    uploading: Arc<tokio::sync::Mutex<()>>,
    answers: Answers,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new();
    let mut retry_in: Option<Duration> = None;
    loop {
        let retry = async {
            match retry_in {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = retry => {}
            _ = until_shutdown(&mut shutdown) => return,
        }
        let Some(current_token) = token.borrow().clone() else {
            // Not registered yet; the session wakes us after registering.
            continue;
        };
        let passed = {
            let _uploading = uploading.lock().await;
            upload_pass(&mut client, &spool, &held, &current_token, &answers).await
        };
        match passed {
            Ok(()) => {
                backoff.reset();
                retry_in = None;
            }
            Err(reason) => {
                let delay = backoff.next_delay();
                tracing::warn!(%reason, retry_in = ?delay, "result upload failed; the result stays spooled");
                retry_in = Some(delay);
            }
        }
    }
}

/// One pass: results held in memory are spooled if the disk takes them now; then the spool is
/// delivered oldest first, then what is still held, straight from memory. Stops at the first
/// retryable failure so that results keep their order.
async fn upload_pass(
    client: &mut AgentServiceClient<Channel>,
    spool: &Arc<Spool>,
    held: &Held,
    token: &str,
    answers: &Answers,
) -> Result<(), String> {
    respool_held(spool, held).await;
    let listing = Arc::clone(spool);
    let listed = tokio::task::spawn_blocking(move || listing.pending())
        .await
        .map_err(|error| format!("spool task failed: {error}"))
        .and_then(|listed| listed.map_err(|error| error.to_string()));
    // A spool that cannot even be listed must not hold up the results kept in memory.
    let (entries, spool_error) = match listed {
        Ok(entries) => (entries, None),
        Err(error) => (Vec::new(), Some(error)),
    };
    for entry in entries {
        match deliver(client, &entry.result, token, answers).await? {
            Delivered::Acknowledged => {
                let removed = blocking(spool, entry, |spool, entry| {
                    spool.remove(&entry).map(|_| ())
                })
                .await;
                if let Err(error) = removed {
                    tracing::warn!(%error, "could not delete an acknowledged result; it will be resent (the controller deduplicates)");
                }
            }
            Delivered::Refused => {
                let moved = blocking(spool, entry, |spool, entry| {
                    spool.reject(&entry).map(|_| ())
                })
                .await;
                if let Err(error) = moved {
                    tracing::error!(%error, "could not move a rejected result aside");
                }
            }
        }
    }
    loop {
        let next = held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .front()
            .cloned();
        let Some(result) = next else { break };
        let delivered = deliver(client, &result, token, answers).await?;
        if delivered == Delivered::Refused {
            tracing::error!(
                job = %result.job_id,
                step = %result.step_name,
                attempt = result.attempt,
                "a result held in memory was refused for good; it is dropped (see the reason above)"
            );
        }
        let mut queue = held.lock().unwrap_or_else(|p| p.into_inner());
        if queue.front() == Some(&result) {
            queue.pop_front();
        }
    }
    spool_error.map_or(Ok(()), Err)
}

/// Spools the results held in memory, oldest first, while the disk takes them.
async fn respool_held(spool: &Arc<Spool>, held: &Held) {
    loop {
        let next = held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .front()
            .cloned();
        let Some(result) = next else { return };
        let writer = Arc::clone(spool);
        let to_spool = result.clone();
        match tokio::task::spawn_blocking(move || writer.write(&to_spool)).await {
            Ok(Ok(path)) => {
                tracing::info!(path = %path.display(), job = %result.job_id, step = %result.step_name, attempt = result.attempt, "a result held in memory is spooled now");
                let mut queue = held.lock().unwrap_or_else(|p| p.into_inner());
                if queue.front() == Some(&result) {
                    queue.pop_front();
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "the spool still fails; results stay in memory");
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "spooling task failed; results stay in memory");
                return;
            }
        }
    }
}

/// How the controller answered one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    /// Committed (or already had it).
    Acknowledged,
    /// It will never accept this result (stale epoch, another node's job, malformed).
    Refused,
}

/// Sends one result; `Err` for a failure worth retrying later.
async fn deliver(
    client: &mut AgentServiceClient<Channel>,
    result: &v1::StepResult,
    token: &str,
    answers: &Answers,
) -> Result<Delivered, String> {
    let mut request = authorized(result.clone(), token).map_err(|s| s.message().to_owned())?;
    // A controller that accepts the call but never answers must not stall the spool.
    request.set_timeout(CALL_TIMEOUT);
    match client.report_result(request).await {
        Ok(ack) => {
            let duplicate = ack.into_inner().duplicate;
            tracing::info!(
                job = %result.job_id,
                step = %result.step_name,
                attempt = result.attempt,
                duplicate,
                "result acknowledged"
            );
            answers.note(result, Ok(()));
            Ok(Delivered::Acknowledged)
        }
        Err(status)
            if matches!(
                status.code(),
                Code::FailedPrecondition
                    | Code::PermissionDenied
                    | Code::InvalidArgument
                    | Code::NotFound
            ) =>
        {
            tracing::error!(
                job = %result.job_id,
                step = %result.step_name,
                attempt = result.attempt,
                code = ?status.code(),
                reason = %status.message(),
                "the controller will never accept this result; it is set aside (spool/rejected)"
            );
            answers.note(result, Err(&status));
            Ok(Delivered::Refused)
        }
        Err(status) => Err(describe(&status, "report result")),
    }
}

async fn blocking(
    spool: &Arc<Spool>,
    entry: SpoolEntry,
    work: impl FnOnce(&Spool, SpoolEntry) -> Result<(), crate::spool::SpoolError> + Send + 'static,
) -> Result<(), String> {
    let spool = Arc::clone(spool);
    match tokio::task::spawn_blocking(move || work(&spool, entry)).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

/// Resolves once shutdown was requested (or its sender is gone, which only happens then).
async fn until_shutdown(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here rather than hold it in a select.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

/// Wraps a message with the node's bearer token.
fn authorized<T>(message: T, token: &str) -> Result<Request<T>, Status> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| Status::internal("the node token is not valid ASCII metadata"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

fn describe(status: &Status, call: &str) -> String {
    format!("{call}: {:?}: {}", status.code(), status.message())
}

/// `<state-dir>/node-token`.
pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("node-token")
}

/// The saved node token, if any.
fn read_token(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => {
            Err(error).with_context(|| format!("reading the node token {}", path.display()))
        }
    }
}

/// Saves the node token readable only by the agent's user: temp file, fsync, rename.
fn save_token(path: &Path, token: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new();
        let delays: Vec<u128> = (0..7).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), BACKOFF_START);
    }

    #[test]
    fn a_lost_gpu_fails_the_step() {
        use tollgate_domain::result::Outcome;
        use tollgate_domain::telemetry::{EventKind, GpuEvent};
        let mut result = tollgate_domain::test_support::step_result(0, 1, Outcome::Passed);
        mark_gpu_lost(&mut result);
        assert_eq!(result.outcome, Outcome::Passed);
        result.events.push(GpuEvent {
            gpu_index: 3,
            gpu_uuid: "GPU-3".into(),
            kind: EventKind::GpuLost,
            code: 0,
            at: result.started_at,
            detail: String::new(),
        });
        mark_gpu_lost(&mut result);
        assert_eq!(result.outcome, Outcome::Failed);
        assert!(
            result.message.starts_with("GPU 3 fell off the bus"),
            "{}",
            result.message
        );
    }

    #[test]
    fn the_token_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_path(dir.path());
        assert_eq!(read_token(&path).unwrap(), None);
        save_token(&path, "secret-1").unwrap();
        save_token(&path, "secret-2").unwrap();
        assert_eq!(read_token(&path).unwrap().as_deref(), Some("secret-2"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
