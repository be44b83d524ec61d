//! Runs a job's steps in order: each attempt observes the inventory, samples telemetry while it
//! runs, executes the step and becomes a [`StepResult`]; failed attempts are retried, and once a
//! step has finally not passed the rest are reported as skipped.
//!
//! The runner decides nothing about the release: it reports what happened. Results leave
//! through a channel, so the caller decides how they are made durable (the spool); each carries
//! a [`Kept`] the caller answers once the result is on disk (or, when the disk refuses it, held
//! in memory). Until then the runner waits: the next attempt does not start and the attempt's
//! process group record (see [`orphans`]) stays, so an agent killed before the result is on
//! disk reports the attempt as interrupted at its next start instead of losing it.
//!
//! # What an `exec` step sees
//!
//! The step runs as a child process in its own process group, with stdin from `/dev/null`, in
//! the plan's `workdir` (or the agent's working directory), with a cleared environment built
//! as [`environment`] says (`PATH`, `HOME`, `LANG`, the `--pass-env` allowlist), then the
//! step's `env`, then these variables (which the step's `env` cannot override):
//!
//! | variable | value |
//! | --- | --- |
//! | `TOLLGATE_RELEASE` | the release under test |
//! | `TOLLGATE_MILESTONE` | the milestone the run qualifies for |
//! | `TOLLGATE_NODE` | this node's name |
//! | `TOLLGATE_JOB_ID` | the job |
//! | `TOLLGATE_STEP` | the step's name |
//! | `TOLLGATE_ATTEMPT` | the attempt, from 1 |
//! | `TOLLGATE_RESULTS_DIR` | an empty directory for this attempt's files, under the state dir |
//! | `TOLLGATE_GPUS` | the GPU UUIDs, comma-separated, in index order |
//! | `TOLLGATE_COMPONENT_<NAME>` | each release component's version; the name upper-cased, `-` and `.` as `_` (`TOLLGATE_COMPONENT_CX7_FW`) |
//!
//! Exit 0 passes, any other exit code fails (`exit code N`); a timeout (`timed out after 2m`),
//! a death by signal, or a malformed `@tollgate` line (see [`crate::parse::measure`]) is an
//! `error`. stdout and stderr go to `<state-dir>/jobs/<job>/<index>-<step>/attempt-<n>/output.log`;
//! the last 200 lines (at most 64 KiB) travel with the result. When the attempt ends, whatever
//! is left of the process group is killed.
//!
//! `dcgm-diag`, `junit`, `burn-in` and `flash` steps run their command exactly like this (same
//! environment, working directory, timeout, log and process group) and then grade what it left
//! behind; see [`kinds`]. A step that passes after failed attempts says so in its message
//! (`passed on attempt 2 after 1 failed attempt(s) (flaky)`), so flakiness stays in the evidence.

pub mod environment;
pub mod exec;
pub mod flash;
pub mod kinds;
pub mod orphans;
pub mod resume;

use crate::gpu::GpuSource;
use crate::sampler::Sampler;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tollgate_domain::JobId;
use tollgate_domain::fleet::Inventory;
use tollgate_domain::plan::StepKind;
use tollgate_domain::release::check_inventory;
use tollgate_domain::result::{Outcome, StepResult};
use tracing::Instrument as _;

pub use exec::RunnerError;

/// A job as assigned by the controller, and one of its steps with its position in the plan:
/// read from the wire (and checked) by `tollgate-wire`.
pub use tollgate_wire::plan::{AssignedStep as JobStep, Assignment as Job};

/// Why a job stops before its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The controller cancelled the job, with its reason.
    Cancelled(String),
    /// The agent is shutting down.
    Shutdown,
}

/// What a running job reports.
#[derive(Debug)]
pub enum JobEvent {
    /// An attempt started.
    StepStarted {
        /// The step's index.
        step_index: u32,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// An attempt (or a skipped step) has its result; answer the [`Kept`] once it is durable.
    Result(Box<StepResult>, Kept),
}

/// The receiver's answer that a result is kept: written to disk and fsynced, or held in memory
/// when the disk refuses it. The runner waits for it before anything else happens.
#[derive(Debug)]
pub struct Kept(oneshot::Sender<()>);

impl Kept {
    /// Says the result is kept; the runner carries on.
    pub fn done(self) {
        // The runner is gone only when its job was dropped: nobody waits any more.
        let _ = self.0.send(());
    }
}

/// Sends `result`, cut to what the controller keeps, and waits until the receiver kept it. A
/// receiver that is gone (the agent drops the job) ends the wait: there is nobody left to
/// keep it.
async fn report(events: &mpsc::UnboundedSender<JobEvent>, mut result: StepResult) {
    result.fit_to_limits();
    let (kept, answer) = oneshot::channel();
    if events
        .send(JobEvent::Result(Box::new(result), Kept(kept)))
        .is_ok()
    {
        let _ = answer.await;
    }
}

/// Removes the attempt's process group record once its result is kept (or a resume record
/// took its place): from then on nothing is lost if the agent dies.
fn clear_group_record(context: &RunnerContext) {
    if let Err(error) = orphans::clear(&context.state_dir) {
        tracing::warn!(%error, "could not remove the step's process group record; the next start finds the group gone and reports the attempt again (the controller deduplicates it)");
    }
}

/// What the runner needs from the agent.
#[derive(Clone)]
pub struct RunnerContext {
    /// The GPUs.
    pub source: Arc<dyn GpuSource>,
    /// This node's name (`TOLLGATE_NODE`).
    pub node: String,
    /// The controller's URL, written into a flash's resume record.
    pub controller: String,
    /// Step logs and result directories live under `<state_dir>/jobs`.
    pub state_dir: PathBuf,
    /// Telemetry sampling interval while a step runs.
    pub sample_interval: Duration,
    /// What a step's environment is built from besides its plan (see [`environment`]).
    pub environment: Arc<environment::StepEnvironment>,
    /// Where the step's sampler leaves each GPU's newest reading for the fleet stream.
    pub latest: Arc<crate::fleet::LatestReadings>,
}

/// How a job's run ended on this agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobEnd {
    /// Every step has its result.
    Finished,
    /// A stop interrupted it; the interrupted attempt was reported, later steps were not.
    Stopped,
    /// A flash wrote its resume record: the job continues after the node reboots.
    AwaitingReboot,
}

/// Runs every step of `job`, sending progress and results to `events`, until the end or until
/// `stop` says otherwise. An attempt interrupted by a stop is reported; later steps are not.
pub async fn run_job(
    context: &RunnerContext,
    job: &Job,
    mut stop: watch::Receiver<Option<Stop>>,
    events: &mpsc::UnboundedSender<JobEvent>,
) -> JobEnd {
    run_steps(context, job, 0, None, &mut stop, events).await
}

/// Runs the job's steps from position `from` on, as after the reboot a flash needed (see
/// [`resume`]); `failed_step` names a step that already finally did not pass, so the rest are
/// reported as skipped.
pub async fn continue_job(
    context: &RunnerContext,
    job: &Job,
    from: usize,
    failed_step: Option<String>,
    mut stop: watch::Receiver<Option<Stop>>,
    events: &mpsc::UnboundedSender<JobEvent>,
) -> JobEnd {
    run_steps(context, job, from, failed_step, &mut stop, events).await
}

/// Runs the job's steps from position `from` on; `failed_step` names a step that already
/// finally did not pass, so the rest are reported as skipped.
async fn run_steps(
    context: &RunnerContext,
    job: &Job,
    from: usize,
    failed_step: Option<String>,
    stop: &mut watch::Receiver<Option<Stop>>,
    events: &mpsc::UnboundedSender<JobEvent>,
) -> JobEnd {
    let mut failed_step = failed_step;
    for job_step in job.steps.iter().skip(from) {
        if stop.borrow().is_some() {
            return JobEnd::Stopped;
        }
        if let Some(failed) = &failed_step {
            let result = skipped_result(context, job, job_step, failed).await;
            report(events, result).await;
            continue;
        }
        let attempts = job_step.step.retries.saturating_add(1);
        let mut n_failed_attempts = 0u32;
        for attempt in 1..=attempts {
            let _ = events.send(JobEvent::StepStarted {
                step_index: job_step.index,
                attempt,
            });
            // With traces on, the attempt's span is the root of its result's trace (see
            // `crate::traces`): its upload and the controller's handling follow from it.
            let attempt_span = crate::traces::span(|| {
                tracing::info_span!(
                    target: "tollgate_traces",
                    "step attempt",
                    tollgate.job = %job.job_id,
                    tollgate.step = %job_step.step.name,
                    tollgate.step_index = job_step.index,
                    tollgate.attempt = attempt,
                    tollgate.outcome = tracing::field::Empty,
                )
            });
            let (mut result, was_stopped, awaiting_reboot) =
                run_attempt(context, job, job_step, attempt, stop)
                    .instrument(attempt_span.clone())
                    .await;
            if awaiting_reboot {
                // The resume record is on disk: the result is reported after the reboot, so
                // the installer's exit code says nothing about the outcome yet.
                clear_group_record(context);
                tracing::info!(job = %job.job_id, step = %job_step.step.name, attempt, "flash needs a reboot; the job resumes after it");
                return JobEnd::AwaitingReboot;
            }
            let outcome = result.outcome;
            if outcome == Outcome::Passed && n_failed_attempts > 0 {
                // A pass after failures is recorded as flaky, so the evidence shows it.
                result.message = format!(
                    "{}; passed on attempt {attempt} after {n_failed_attempts} failed attempt(s) (flaky)",
                    result.message
                );
            } else if outcome != Outcome::Passed {
                n_failed_attempts += 1;
            }
            tracing::info!(
                job = %job.job_id,
                step = %job_step.step.name,
                attempt,
                outcome = %outcome,
                message = %result.message,
                "step attempt ended"
            );
            attempt_span.record("tollgate.outcome", tracing::field::display(outcome));
            attempt_span.in_scope(|| {
                crate::traces::remember_attempt(job.job_id.as_str(), job_step.index, attempt);
            });
            report(events, result).instrument(attempt_span).await;
            clear_group_record(context);
            if was_stopped {
                return JobEnd::Stopped;
            }
            if outcome == Outcome::Passed {
                break;
            }
            if attempt == attempts {
                failed_step = Some(job_step.step.name.clone());
            } else {
                tracing::info!(job = %job.job_id, step = %job_step.step.name, next_attempt = attempt + 1, "retrying step");
            }
        }
    }
    JobEnd::Finished
}

/// Reads the inventory on a blocking thread.
pub async fn observe_inventory(source: &Arc<dyn GpuSource>) -> Result<Inventory, String> {
    let source = Arc::clone(source);
    match tokio::task::spawn_blocking(move || source.inventory()).await {
        Ok(Ok(inventory)) => Ok(inventory),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(format!("inventory task failed: {error}")),
    }
}

/// The health facts an `inventory-check` adds to the version comparison, read from one fresh
/// telemetry sample. A sample that cannot be read leaves only the inventory's own facts (ECC).
async fn health_problems(context: &RunnerContext, inventory: &Inventory) -> Vec<String> {
    let source = Arc::clone(&context.source);
    let sample = match tokio::task::spawn_blocking(move || source.sample()).await {
        Ok(Ok(sample)) => sample,
        _ => Vec::new(),
    };
    tollgate_domain::fleet::check_health(inventory, &sample)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// An inventory with no GPUs, for results whose inventory could not be read.
fn unknown_inventory(source: &Arc<dyn GpuSource>) -> Inventory {
    Inventory {
        gpu_source: source.kind(),
        hostname: crate::gpu::hostname(),
        ..Inventory::default()
    }
}

async fn skipped_result(
    context: &RunnerContext,
    job: &Job,
    job_step: &JobStep,
    failed: &str,
) -> StepResult {
    let now = crate::clock::now();
    let inventory = observe_inventory(&context.source)
        .await
        .unwrap_or_else(|_| unknown_inventory(&context.source));
    StepResult {
        job_id: job.job_id.clone(),
        step_index: job_step.index,
        step_name: job_step.step.name.clone(),
        attempt: 1,
        lease_epoch: job.lease_epoch,
        outcome: Outcome::Skipped,
        exit_code: None,
        started_at: now,
        finished_at: now,
        measurements: Vec::new(),
        telemetry: Vec::new(),
        events: Vec::new(),
        inventory,
        log_tail: String::new(),
        message: format!("not run: step {failed} failed"),
        sub_results: Vec::new(),
        inventory_at_end: None,
        series: Vec::new(),
    }
}

/// Keeps the characters that are safe in a file name.
fn path_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `<state>/jobs/<job>/<index>-<step>/attempt-<n>`: the attempt's log and results directory.
pub fn attempt_dir(
    state_dir: &Path,
    job: &JobId,
    step_index: u32,
    step: &str,
    attempt: u32,
) -> PathBuf {
    state_dir
        .join("jobs")
        .join(path_safe(job.as_str()))
        .join(format!("{step_index}-{}", path_safe(step)))
        .join(format!("attempt-{attempt}"))
}

/// The environment name of a component: `TOLLGATE_COMPONENT_` and the name upper-cased, with
/// every character that is not a letter or digit (`-`, `.`) turned into `_`.
pub fn component_env_name(component: &str) -> String {
    let suffix: String = component
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("TOLLGATE_COMPONENT_{suffix}")
}

/// The whole environment an `exec` attempt sees, later entries winning: the agent's base
/// (see [`environment`]; `HOME` is the attempt's directory `home`), the step's `env`, then
/// Tollgate's variables, which a step cannot override so that results stay attributable.
#[allow(clippy::too_many_arguments)]
fn step_env(
    context: &RunnerContext,
    job: &Job,
    job_step: &JobStep,
    attempt: u32,
    home: &Path,
    results_dir: &Path,
    inventory: &Inventory,
    step_vars: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env = context.environment.base(home);
    env.extend(step_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    let gpus: Vec<&str> = inventory.gpus.iter().map(|gpu| gpu.uuid.as_str()).collect();
    let mut ours = vec![
        ("TOLLGATE_RELEASE", job.release.clone()),
        ("TOLLGATE_MILESTONE", job.milestone.clone()),
        ("TOLLGATE_NODE", context.node.clone()),
        ("TOLLGATE_JOB_ID", job.job_id.to_string()),
        ("TOLLGATE_STEP", job_step.step.name.clone()),
        ("TOLLGATE_ATTEMPT", attempt.to_string()),
        ("TOLLGATE_RESULTS_DIR", results_dir.display().to_string()),
        ("TOLLGATE_GPUS", gpus.join(",")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect::<Vec<_>>();
    for component in &job.components {
        ours.push((
            component_env_name(&component.name),
            component.version.clone(),
        ));
    }
    env.extend(ours);
    env
}

/// How one attempt's work ended, before telemetry is attached.
struct AttemptEnd {
    outcome: Outcome,
    exit_code: Option<i32>,
    message: String,
    measurements: Vec<tollgate_domain::result::Measurement>,
    log_tail: String,
    stopped: bool,
    sub_results: Vec<tollgate_domain::result::SubResult>,
    /// A flash wrote its resume record: the job continues after the node reboots.
    awaiting_reboot: bool,
}

impl AttemptEnd {
    fn error(message: String) -> Self {
        Self {
            outcome: Outcome::Error,
            exit_code: None,
            message,
            measurements: Vec::new(),
            log_tail: String::new(),
            stopped: false,
            sub_results: Vec::new(),
            awaiting_reboot: false,
        }
    }

    fn from_exec(report: exec::ExecReport) -> Self {
        Self {
            outcome: report.outcome,
            exit_code: report.exit_code,
            message: report.message,
            measurements: report.measurements,
            log_tail: report.log_tail,
            stopped: report.stopped,
            sub_results: Vec::new(),
            awaiting_reboot: false,
        }
    }
}

/// Runs one attempt; the flags say whether a stop interrupted it and whether it waits for a
/// reboot (a flash wrote its resume record).
async fn run_attempt(
    context: &RunnerContext,
    job: &Job,
    job_step: &JobStep,
    attempt: u32,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> (StepResult, bool, bool) {
    let started_at = crate::clock::now();
    let step = &job_step.step;
    let inventory = observe_inventory(&context.source).await;
    // Events from before the attempt belong to no step; log them rather than lose them.
    let source = Arc::clone(&context.source);
    if let Ok(stale) = tokio::task::spawn_blocking(move || source.events()).await {
        for event in stale {
            tracing::warn!(gpu_index = event.gpu_index, kind = %event.kind, code = event.code, "GPU event between steps");
        }
    }
    let gpus = inventory
        .as_ref()
        .map(|inv| inv.gpus.iter().map(|g| (g.index, g.uuid.clone())).collect())
        .unwrap_or_default();
    let loads_gpus = !matches!(step.kind, StepKind::InventoryCheck { .. });
    let sampler = Sampler::start_publishing(
        Arc::clone(&context.source),
        gpus,
        context.sample_interval,
        loads_gpus,
        Some(Arc::clone(&context.latest)),
    );
    tracing::info!(job = %job.job_id, step = %step.name, attempt, kind = step.kind.name(), "step attempt started");
    let end = match &inventory {
        Err(error) => AttemptEnd::error(format!("reading the inventory failed: {error}")),
        Ok(inventory) => match &step.kind {
            StepKind::InventoryCheck { components } => {
                check_inventory_step(context, job, components, inventory).await
            }
            kind => {
                let at = flash::Attempt {
                    index: job_step.index,
                    attempt,
                    started_at,
                };
                run_process(context, job, job_step, kind, inventory, at, stop).await
            }
        },
    };
    let observed = sampler.finish().await;
    // Observed again at the end: a flash (or anything else the step did) may have changed it.
    let inventory_at_end = observe_inventory(&context.source).await.ok();
    let result = StepResult {
        job_id: job.job_id.clone(),
        step_index: job_step.index,
        step_name: step.name.clone(),
        attempt,
        lease_epoch: job.lease_epoch,
        outcome: end.outcome,
        exit_code: end.exit_code,
        started_at,
        finished_at: crate::clock::now(),
        measurements: end.measurements,
        telemetry: observed.telemetry,
        events: observed.events,
        inventory: inventory.unwrap_or_else(|_| unknown_inventory(&context.source)),
        log_tail: end.log_tail,
        message: end.message,
        sub_results: end.sub_results,
        inventory_at_end,
        series: observed.series,
    };
    (result, end.stopped, end.awaiting_reboot)
}

/// An `inventory-check` step: passes iff the inventory matches the release (and the listed
/// components) and no GPU shows a health problem.
async fn check_inventory_step(
    context: &RunnerContext,
    job: &Job,
    components: &[String],
    inventory: &Inventory,
) -> AttemptEnd {
    let mismatches: Vec<String> = check_inventory(&job.components, components, inventory)
        .iter()
        .map(ToString::to_string)
        .collect();
    let health = health_problems(context, inventory).await;
    let mismatches: Vec<String> = mismatches.into_iter().chain(health).collect();
    if mismatches.is_empty() {
        AttemptEnd {
            outcome: Outcome::Passed,
            message: "inventory matches the release".to_owned(),
            ..AttemptEnd::error(String::new())
        }
    } else {
        AttemptEnd {
            outcome: Outcome::Failed,
            message: mismatches.join("; "),
            ..AttemptEnd::error(String::new())
        }
    }
}

/// The command line, environment and working directory a step of `kind` runs (a
/// `dcgm-diag` step's argv as the agent runs `dcgmi`).
fn step_command(
    kind: &StepKind,
) -> (
    Vec<String>,
    std::collections::BTreeMap<String, String>,
    Option<String>,
) {
    match kind.process() {
        Some(process) => {
            let command = if matches!(kind, StepKind::DcgmDiag { .. }) {
                kinds::dcgm_argv(&process.command)
            } else {
                process.command
            };
            (
                command,
                process.env.clone(),
                process.workdir.map(str::to_owned),
            )
        }
        None => (Vec::new(), Default::default(), None),
    }
}

/// A step that runs a process: in the attempt's own directory, its process group recorded
/// (see [`orphans`]), graded as its kind says.
async fn run_process(
    context: &RunnerContext,
    job: &Job,
    job_step: &JobStep,
    kind: &StepKind,
    inventory: &Inventory,
    at: flash::Attempt,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> AttemptEnd {
    let step = &job_step.step;
    let (command, env, workdir) = step_command(kind);
    let dir = attempt_dir(
        &context.state_dir,
        &job.job_id,
        job_step.index,
        &step.name,
        at.attempt,
    );
    let results_dir = dir.join("results");
    if let Err(error) = tokio::fs::create_dir_all(&results_dir).await {
        return AttemptEnd::error(format!(
            "could not create {}: {error}",
            results_dir.display()
        ));
    }
    let request = exec::ExecRequest {
        command,
        env: step_env(
            context,
            job,
            job_step,
            at.attempt,
            &dir,
            &results_dir,
            inventory,
            &env,
        ),
        workdir: workdir.as_ref().map(PathBuf::from),
        timeout: step.timeout,
        log_path: dir.join("output.log"),
        group_record: Some(orphans::RecordTo {
            state_dir: context.state_dir.clone(),
            attempt: orphans::AttemptId {
                job_id: job.job_id.clone(),
                step_index: job_step.index,
                step_name: step.name.clone(),
                attempt: at.attempt,
                lease_epoch: job.lease_epoch,
                started_at: at.started_at,
            },
            // The attempt's own directory: no other process has it.
            env_entry: format!("TOLLGATE_RESULTS_DIR={}", results_dir.display()),
        }),
    };
    kinds::run_kind(context, job, kind, &request, &results_dir, at, stop).await
}

#[cfg(test)]
mod tests;
