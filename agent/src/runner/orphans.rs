//! The running step's process group, recorded in the state directory, so that an agent killed
//! with `kill -9` finds and kills what it started once it starts again, and reports the
//! interrupted attempt.
//!
//! While an attempt runs, `<state-dir>/step-group.json` says which attempt it is and the
//! environment entry only its processes carry (`TOLLGATE_RESULTS_DIR=<its own directory>`);
//! once the process started, also its process group id and the group leader's start time
//! (field 22 of `/proc/PID/stat`, in clock ticks since boot). The file is written (fsynced,
//! renamed into place) before the process starts, completed right after, and removed once the
//! group is gone and the attempt's result is on disk (spooled), never before. A file found at
//! start-up means the previous agent died during that attempt before its result was on disk.
//! Its processes are killed: those of the recorded group that started no earlier than the
//! recorded leader (and only if the leader, when still there, has the recorded start time, so
//! a recycled process id is never killed), and those whose environment holds the attempt's
//! entry (which also finds a process that left the group with `setsid`, unless it cleared its
//! environment).

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tollgate_domain::{JobId, Timestamp};

/// How long start-up waits for killed processes to be gone before it carries on.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Which attempt a process group belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptId {
    /// The job.
    pub job_id: JobId,
    /// The step's position in the plan.
    pub step_index: u32,
    /// The step's name.
    pub step_name: String,
    /// The attempt, from 1.
    pub attempt: u32,
    /// The lease epoch the attempt ran under.
    pub lease_epoch: u64,
    /// When the attempt started (agent clock).
    pub started_at: Timestamp,
}

/// Where and what an `exec` attempt records while its process runs.
#[derive(Clone, Debug)]
pub struct RecordTo {
    /// The agent's state directory.
    pub state_dir: PathBuf,
    /// The attempt.
    pub attempt: AttemptId,
    /// `NAME=VALUE`, an environment entry only this attempt's processes carry.
    pub env_entry: String,
}

/// What `step-group.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The attempt.
    pub attempt: AttemptId,
    /// `NAME=VALUE`, an environment entry only this attempt's processes carry.
    pub env_entry: String,
    /// The process group once the process started: its id (the leader's pid) and the
    /// leader's start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub group: Option<(i32, u64)>,
}

/// What start-up found of an attempt the previous agent did not finish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    /// The attempt.
    pub attempt: AttemptId,
    /// What happened to its processes, in words for the result's message.
    pub processes: String,
    /// How many processes were killed.
    pub n_killed: usize,
}

/// A record that could not be read, written or removed.
#[derive(Debug, thiserror::Error)]
pub enum OrphanError {
    /// A file system call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The record is not valid JSON of the expected shape.
    #[error("{path} is corrupt: {detail}")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// `<state-dir>/step-group.json`.
pub fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join("step-group.json")
}

/// The start time of process `pid` in clock ticks since boot, and whether it is a zombie
/// (dead, only waiting to be reaped); `None` when there is no such process.
fn stat_of(pid: i32) -> Option<(u64, i32, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')': the fields
    // after it start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is fields[N - 3].
    let state = *fields.first()?;
    let pgid = fields.get(5 - 3)?.parse().ok()?;
    let start = fields.get(22 - 3)?.parse().ok()?;
    Some((start, pgid, state == "Z" || state == "X"))
}

/// The start time of a live process, in clock ticks since boot.
pub fn start_ticks(pid: i32) -> Option<u64> {
    stat_of(pid)
        .filter(|(_, _, dead)| !dead)
        .map(|(ticks, _, _)| ticks)
}

/// Records the attempt before its process starts (`pgid` `None`), then again with its process
/// group once it started: temp file, fsync, rename.
pub fn write(
    state_dir: &Path,
    attempt: &AttemptId,
    env_entry: &str,
    pgid: Option<i32>,
) -> Result<(), OrphanError> {
    let path = record_path(state_dir);
    let group = match pgid {
        None => None,
        Some(pgid) => Some((
            pgid,
            start_ticks(pgid).ok_or_else(|| OrphanError::Io {
                what: "reading the start time of",
                path: PathBuf::from(format!("/proc/{pgid}/stat")),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?,
        )),
    };
    let record = GroupRecord {
        attempt: attempt.clone(),
        env_entry: env_entry.to_owned(),
        group,
    };
    let bytes = serde_json::to_vec_pretty(&record).map_err(|error| OrphanError::Corrupt {
        path: path.clone(),
        detail: error.to_string(),
    })?;
    let temp = path.with_extension("tmp");
    let written = std::fs::File::create(&temp)
        .and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temp, &path));
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(OrphanError::Io {
            what: "writing",
            path,
            source,
        });
    }
    Ok(())
}

/// Removes the record once the attempt's group is gone.
pub fn clear(state_dir: &Path) -> Result<(), OrphanError> {
    let path = record_path(state_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(OrphanError::Io {
            what: "removing",
            path,
            source,
        }),
    }
}

/// Reads the record the previous agent left, if any.
pub fn read(state_dir: &Path) -> Result<Option<GroupRecord>, OrphanError> {
    let path = record_path(state_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(OrphanError::Io {
                what: "reading",
                path,
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| OrphanError::Corrupt {
            path,
            detail: error.to_string(),
        })
}

/// Every live process id, with its start time and process group.
fn live_processes() -> Vec<(i32, u64, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let (start, group, dead) = stat_of(pid)?;
            (!dead).then_some((pid, start, group))
        })
        .collect()
}

/// Whether process `pid`'s environment holds `entry` (`NAME=VALUE`) exactly.
fn has_env_entry(pid: i32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
        environ
            .split(|byte| *byte == 0)
            .any(|item| item == entry.as_bytes())
    })
}

/// The live processes the recorded attempt left: its group's (see the module doc) and those
/// carrying its environment entry.
fn leftovers(record: &GroupRecord) -> Vec<i32> {
    let group = record.group.filter(|(pgid, start)| {
        // The leader's pid now names a younger process: the group died and its id was reused.
        !matches!(stat_of(*pgid), Some((now, _, false)) if now != *start)
    });
    let own = std::process::id();
    live_processes()
        .into_iter()
        .filter(|(pid, start, pgid)| {
            u32::try_from(*pid).is_ok_and(|pid| pid != own)
                && (group
                    .is_some_and(|(group, leader_start)| *pgid == group && *start >= leader_start)
                    || has_env_entry(*pid, &record.env_entry))
        })
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Kills what the recorded attempt left running and waits until it is gone; returns how many
/// processes were killed and a sentence saying so.
pub async fn kill_leftovers(record: &GroupRecord) -> (usize, String) {
    let targets = leftovers(record);
    if targets.is_empty() {
        return (0, "no process of it was left".to_owned());
    }
    for pid in &targets {
        // ESRCH: it ended meanwhile, which is what we want.
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let deadline = tokio::time::Instant::now() + KILL_WAIT;
    loop {
        let left: Vec<i32> = leftovers(record)
            .into_iter()
            .filter(|pid| targets.contains(pid))
            .collect();
        if left.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::error!(left = ?left, "processes of the interrupted step survive SIGKILL");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (
        targets.len(),
        format!(
            "the agent killed the {} process(es) it had left running",
            targets.len()
        ),
    )
}

/// At start-up: kills what the previous agent's interrupted attempt left running and returns
/// that attempt, so it can be reported. The record is removed once acted on; a corrupt one is
/// removed with an error logged (there is nothing safe to kill from it).
pub async fn recover(state_dir: &Path) -> Result<Option<Leftover>, OrphanError> {
    let record = match read(state_dir) {
        Ok(Some(record)) => record,
        Ok(None) => return Ok(None),
        Err(error @ OrphanError::Corrupt { .. }) => {
            tracing::error!(%error, "the step's process group record is unreadable; its processes, if any, are not killed");
            clear(state_dir)?;
            return Ok(None);
        }
        Err(error) => return Err(error),
    };
    let (n_killed, processes) = kill_leftovers(&record).await;
    Ok(Some(Leftover {
        attempt: record.attempt,
        processes,
        n_killed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn attempt() -> AttemptId {
        AttemptId {
            job_id: JobId::from("job-1"),
            step_index: 1,
            step_name: "stress".into(),
            attempt: 2,
            lease_epoch: 3,
            started_at: tollgate_domain::test_support::at(10),
        }
    }

    const ENTRY: &str = "TOLLGATE_RESULTS_DIR=/orphan-test";

    /// A shell in its own group with a grandchild: both must die.
    fn spawn_group(marker: &str, env_value: &str) -> std::process::Child {
        std::process::Command::new("sh")
            .args(["-c", &format!("sleep 300 & exec sleep 301 # {marker}")])
            .env("TOLLGATE_RESULTS_DIR", env_value)
            .process_group(0)
            .spawn()
            .expect("spawn")
    }

    fn alive(pgid: i32) -> usize {
        live_processes()
            .iter()
            .filter(|(_, _, group)| *group == pgid)
            .count()
    }

    fn wait_started(pgid: i32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(pgid) < 2 {
            assert!(std::time::Instant::now() < deadline, "the group started");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[tokio::test]
    async fn a_recorded_group_and_its_grandchildren_are_killed_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_group("orphan-test-kill", "/elsewhere-1");
        let pgid = i32::try_from(child.id()).unwrap();
        write(dir.path(), &attempt(), ENTRY, Some(pgid)).unwrap();
        wait_started(pgid);
        // What a restarted agent does first.
        let leftover = recover(dir.path()).await.unwrap().expect("a leftover");
        let _ = child.wait();
        assert_eq!(leftover.attempt, attempt());
        assert_eq!(leftover.n_killed, 2, "{}", leftover.processes);
        assert_eq!(alive(pgid), 0, "nothing of the group is left");
        assert!(read(dir.path()).unwrap().is_some(), "kept until reported");
        clear(dir.path()).unwrap();
        assert!(recover(dir.path()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn processes_started_before_their_group_was_recorded_are_found_by_environment() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &attempt(), ENTRY, None).unwrap();
        // The agent died between starting the process and recording its group.
        let mut child = spawn_group("orphan-test-env", "/orphan-test");
        let pgid = i32::try_from(child.id()).unwrap();
        wait_started(pgid);
        let leftover = recover(dir.path()).await.unwrap().expect("a leftover");
        let _ = child.wait();
        assert_eq!(leftover.n_killed, 2, "{}", leftover.processes);
        assert_eq!(alive(pgid), 0);
    }

    #[tokio::test]
    async fn a_reused_process_id_is_never_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_group("orphan-test-reused", "/elsewhere-2");
        let pgid = i32::try_from(child.id()).unwrap();
        write(dir.path(), &attempt(), ENTRY, Some(pgid)).unwrap();
        wait_started(pgid);
        // Pretend the recorded group started earlier: the live leader is then another
        // process that got the same id.
        let mut record = read(dir.path()).unwrap().unwrap();
        record.group = record.group.map(|(pgid, start)| (pgid, start - 1));
        let (n_killed, why) = kill_leftovers(&record).await;
        assert_eq!(n_killed, 0, "{why}");
        assert_eq!(alive(pgid), 2, "the group still runs");
        let _ = nix::sys::signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let _ = child.wait();
    }

    #[test]
    fn a_corrupt_record_is_reported_not_acted_on() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(record_path(dir.path()), b"{not json").unwrap();
        assert!(matches!(read(dir.path()), Err(OrphanError::Corrupt { .. })));
    }
}
