//! What a `flash` step and its resumption after a reboot share: the resume record (its type
//! and its durable file in the state directory) and the check that the flashed component
//! reports its target version. [`super::kinds`] grades the flash and writes the record;
//! [`super::resume`] reads it back after the reboot; neither imports the other.

use super::{AttemptEnd, Job, RunnerContext, observe_inventory};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use tollgate_domain::Timestamp;
use tollgate_domain::release::{Component, check_inventory};
use tollgate_domain::result::Outcome;

/// Which attempt is running, for the resume record a reboot needs.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    /// The step's index in the plan.
    pub index: u32,
    /// The attempt, from 1.
    pub attempt: u32,
    /// When it started.
    pub started_at: tollgate_domain::Timestamp,
}

/// The record's file name in the state directory.
pub const RESUME_FILE: &str = "resume.json";

/// Where the kernel publishes the identity of the current boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

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
    /// The node the job was assigned to.
    pub node: String,
    /// The controller that assigned it (its URL as the agent was configured).
    pub controller: String,
    /// The boot the flash ran in (empty where the kernel does not say), so the check after
    /// the restart can tell whether the node really rebooted.
    #[serde(default)]
    pub boot_id: String,
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

/// The identity of the current boot, or empty where the kernel does not publish one.
pub fn boot_id() -> String {
    std::fs::read_to_string(BOOT_ID)
        .map(|id| id.trim().to_owned())
        .unwrap_or_default()
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
    sync_dir(state_dir)
}

fn sync_dir(dir: &Path) -> Result<(), ResumeError> {
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io(dir))
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

/// Removes the record once its job is handed on (or given up).
pub fn clear(state_dir: &Path) -> Result<(), ResumeError> {
    let path = state_dir.join(RESUME_FILE);
    match std::fs::remove_file(&path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(ResumeError::Io {
            path,
            source: error,
        }),
        Err(_) => Ok(()),
        Ok(()) => sync_dir(state_dir),
    }
}

/// Moves a record the agent will not resume to `resume.json.<why>-<time>` beside it, for the
/// operator, so that it is neither lost nor read again at the next start. Returns the new path.
pub fn set_aside(state_dir: &Path, why: &str) -> Result<PathBuf, ResumeError> {
    let path = state_dir.join(RESUME_FILE);
    let stamp = crate::clock::now().format("%Y%m%dT%H%M%S%.3fZ");
    let target = state_dir.join(format!("{RESUME_FILE}.{why}-{stamp}"));
    std::fs::rename(&path, &target).map_err(io(&path))?;
    sync_dir(state_dir)?;
    Ok(target)
}

/// Grades a flash whose installer finished: one that needs a reboot writes the resume record
/// and ends the attempt waiting for it; otherwise the component must report `version` now.
pub(super) async fn grade(
    context: &RunnerContext,
    job: &Job,
    at: Attempt,
    component: &str,
    version: &str,
    needs_reboot: bool,
    end: &mut AttemptEnd,
) {
    if needs_reboot {
        let record = ResumeRecord {
            job: job.clone(),
            step_index: at.index,
            attempt: at.attempt,
            started_at: at.started_at,
            node: context.node.clone(),
            controller: context.controller.clone(),
            boot_id: boot_id(),
        };
        match write(&context.state_dir, &record) {
            Ok(()) => {
                tracing::info!(job = %job.job_id, %component, "flash needs a reboot; resume record written");
                end.awaiting_reboot = true;
                end.message = format!("the flash of {component} waits for a reboot");
            }
            Err(error) => {
                end.outcome = Outcome::Error;
                end.message = format!("the flash of {component} needs a reboot, but {error}");
            }
        }
    } else if end.outcome == Outcome::Passed {
        (end.outcome, end.message) = verify_flash(context, component, version).await;
    } else {
        end.message = format!("the flash command failed: {}", end.message);
    }
}

/// Re-reads the inventory after a flash: passes iff `component` now reports `version`.
pub async fn verify_flash(
    context: &RunnerContext,
    component: &str,
    version: &str,
) -> (Outcome, String) {
    let inventory = match observe_inventory(&context.source).await {
        Ok(inventory) => inventory,
        Err(error) => {
            return (
                Outcome::Error,
                format!("after flashing, reading the inventory failed: {error}"),
            );
        }
    };
    let wanted = Component {
        name: component.to_owned(),
        version: version.to_owned(),
        ..Component::default()
    };
    let mismatches = check_inventory(std::slice::from_ref(&wanted), &[], &inventory);
    if mismatches.is_empty() {
        return (
            Outcome::Passed,
            format!("after flashing, {component} is {version}"),
        );
    }
    let text: Vec<String> = mismatches
        .iter()
        .map(|m| {
            let gpu = m
                .gpu_index
                .map(|idx| format!(" on GPU {idx}"))
                .unwrap_or_default();
            let observed = m.observed.as_deref().unwrap_or("not reported");
            format!("after flashing, {component}{gpu} is {observed}, wanted {version}")
        })
        .collect();
    (Outcome::Failed, text.join("; "))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record of step 0, attempt 1 of a job on `node-1`, written now on this boot.
    pub(crate) fn record() -> ResumeRecord {
        ResumeRecord {
            job: Job {
                job_id: "job-1".into(),
                run_id: "run-1".into(),
                lease_epoch: 2,
                release: "r550".into(),
                components: Vec::new(),
                milestone: "lab-qual".into(),
                plan_name: "gpu-qual".into(),
                plan_version: "v1".into(),
                steps: Vec::new(),
            },
            step_index: 0,
            attempt: 1,
            started_at: crate::clock::now(),
            node: "node-1".into(),
            controller: "http://127.0.0.1:7800".into(),
            boot_id: boot_id(),
        }
    }

    #[test]
    fn a_record_survives_the_round_trip_and_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        write(dir.path(), &record()).unwrap();
        let read_back = read(dir.path()).unwrap().expect("written");
        assert_eq!(read_back.job.job_id.as_str(), "job-1");
        assert_eq!(read_back.node, "node-1");
        clear(dir.path()).unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        clear(dir.path()).expect("clearing twice is fine");
    }

    #[test]
    fn a_corrupt_record_is_reported_and_set_aside_with_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(RESUME_FILE), b"{\"job\": {\"job_id\"").unwrap();
        let error = read(dir.path()).unwrap_err();
        assert!(matches!(error, ResumeError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("is corrupt"), "{error}");
        let kept = set_aside(dir.path(), "corrupt").unwrap();
        assert!(
            kept.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("resume.json.corrupt-")),
            "{}",
            kept.display()
        );
        assert_eq!(std::fs::read(&kept).unwrap(), b"{\"job\": {\"job_id\"");
        assert!(read(dir.path()).unwrap().is_none(), "not read again");
    }
}
