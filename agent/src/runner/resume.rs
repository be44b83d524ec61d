//! Resuming a job across the reboot a `flash` step needs.
//!
//! When a flash needs a reboot (`reboot: true`, or the installer exits
//! [`FLASH_REBOOT_EXIT_CODE`](tollgate_domain::plan::FLASH_REBOOT_EXIT_CODE)), the runner writes a
//! [`ResumeRecord`] to `<state-dir>/resume.json` (written to a temporary file, fsynced, renamed,
//! and the directory fsynced) and ends the job without a result for that attempt. The node then
//! reboots (the installer or the operator reboots it; the agent does not). After the reboot,
//! [`read`] finds the record and [`resume_job`] re-reads the inventory, reports the flash
//! attempt's result under the recorded job, attempt and lease epoch, and runs the job's
//! remaining steps instead of starting over. The agent's start-up must call these after
//! registering and report the resumed job as running in its heartbeats (so the controller does
//! not take the restart for an interruption); that start-up hook is not wired yet.
//!
//! The controller keeps the job running while the node is away only within its lease grace:
//! a lab that flashes with reboots must run the controller with `--lease-grace` longer than a
//! reboot takes, or the job is declared lost and the resumed results are refused as stale.

use super::{Job, JobEvent, RunnerContext, Stop, observe_inventory, unknown_inventory};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, watch};
use tollgate_domain::Timestamp;
use tollgate_domain::plan::StepKind;
use tollgate_domain::result::{Outcome, StepResult};

/// The record's file name in the state directory.
pub const RESUME_FILE: &str = "resume.json";

/// What the agent needs after a reboot to finish a flash step and continue its job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResumeRecord {
    /// The job, as assigned (its lease epoch included).
    pub job: Job,
    /// The flash step's index in the plan.
    pub step_index: u32,
    /// The flash attempt, from 1.
    pub attempt: u32,
    /// When the flash attempt started.
    pub started_at: Timestamp,
}

/// Why the resume record could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// A file operation failed.
    #[error("resume record {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The record is not valid JSON.
    #[error("resume record {path} is corrupt: {source}")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ResumeError + '_ {
    move |source| ResumeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes the record durably: temporary file, fsync, rename, fsync of the directory.
pub fn write(state_dir: &Path, record: &ResumeRecord) -> Result<(), ResumeError> {
    let path = state_dir.join(RESUME_FILE);
    let tmp = state_dir.join(format!("{RESUME_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(record).map_err(|source| ResumeError::Corrupt {
        path: path.clone(),
        source,
    })?;
    std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(&bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(state_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io(state_dir))
}

/// Reads the record, if there is one.
pub fn read(state_dir: &Path) -> Result<Option<ResumeRecord>, ResumeError> {
    let path = state_dir.join(RESUME_FILE);
    match std::fs::read(&path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ResumeError::Io { path, source }),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| ResumeError::Corrupt { path, source }),
    }
}

/// Removes the record once the flash result is handed on.
pub fn clear(state_dir: &Path) -> Result<(), ResumeError> {
    let path = state_dir.join(RESUME_FILE);
    match std::fs::remove_file(&path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(ResumeError::Io {
            path,
            source: error,
        }),
        _ => Ok(()),
    }
}

/// After the reboot: verifies the flash, reports its result, clears the record and runs the
/// job's remaining steps. A flash that did not take is not retried after a reboot: the later
/// steps are reported as skipped.
pub async fn resume_job(
    context: &RunnerContext,
    record: &ResumeRecord,
    mut stop: watch::Receiver<Option<Stop>>,
    events: &mpsc::UnboundedSender<JobEvent>,
) {
    let job = &record.job;
    let Some(position) = job.steps.iter().position(|s| s.index == record.step_index) else {
        tracing::warn!(job = %job.job_id, step_index = record.step_index, "resume record names no step of its job; ignored");
        let _ = clear(&context.state_dir);
        return;
    };
    let job_step = &job.steps[position];
    let (outcome, message) = match &job_step.step.kind {
        StepKind::Flash {
            component, version, ..
        } => super::kinds::verify_flash(context, component, version).await,
        other => (
            Outcome::Error,
            format!("resume record names a {} step, not a flash", other.name()),
        ),
    };
    let inventory = observe_inventory(&context.source)
        .await
        .unwrap_or_else(|_| unknown_inventory(&context.source));
    let result = StepResult {
        job_id: job.job_id.clone(),
        step_index: job_step.index,
        step_name: job_step.step.name.clone(),
        attempt: record.attempt,
        lease_epoch: job.lease_epoch,
        outcome,
        exit_code: None,
        started_at: record.started_at,
        finished_at: crate::clock::now(),
        measurements: Vec::new(),
        telemetry: Vec::new(),
        events: Vec::new(),
        inventory: inventory.clone(),
        log_tail: String::new(),
        message: format!("{message} (checked after the reboot)"),
        sub_results: Vec::new(),
        inventory_at_end: Some(inventory),
        series: Vec::new(),
    };
    tracing::info!(job = %job.job_id, step = %job_step.step.name, outcome = %outcome, "flash checked after the reboot");
    let _ = events.send(JobEvent::Result(Box::new(result)));
    // The result is in the caller's hands (the spool); the record has done its work.
    if let Err(error) = clear(&context.state_dir) {
        tracing::warn!(%error, "could not remove the resume record");
    }
    let failed = (outcome != Outcome::Passed).then(|| job_step.step.name.clone());
    super::run_steps(context, job, position + 1, failed, &mut stop, events).await;
}
