//! The running step's process group, recorded in the state directory, so that an agent killed
//! with `kill -9` finds and kills what it started once it starts again, and reports the
//! interrupted attempt.
//!
//! While an attempt's process runs, `<state-dir>/step-group.json` holds its process group id,
//! the group leader's start time (field 22 of `/proc/PID/stat`, in clock ticks since boot) and
//! which attempt it is. The file is written (fsynced, renamed into place) right after the
//! process starts and removed once its group is gone. A file found at start-up means the
//! previous agent died during that attempt: the processes of that group are killed, but only
//! those that started no earlier than the recorded leader, and only if the leader (when still
//! there) has the recorded start time, so a recycled process id is never killed.
//!
//! A process group reaches every descendant that did not leave it (`setsid`, `setpgid`); a
//! step that daemonizes out of its group is beyond this record, as it is beyond a timeout.

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

/// What `step-group.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The attempt.
    pub attempt: AttemptId,
    /// The process group id (the leader's pid).
    pub pgid: i32,
    /// The leader's start time, clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
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

/// Records the attempt's process group (`pgid` is its leader's pid): temp file, fsync, rename.
pub fn write(state_dir: &Path, attempt: &AttemptId, pgid: i32) -> Result<(), OrphanError> {
    let path = record_path(state_dir);
    let io = |what: &'static str| {
        let path = path.clone();
        move |source| OrphanError::Io { what, path, source }
    };
    let start_ticks = start_ticks(pgid).ok_or_else(|| OrphanError::Io {
        what: "reading the start time of",
        path: PathBuf::from(format!("/proc/{pgid}/stat")),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let record = GroupRecord {
        attempt: attempt.clone(),
        pgid,
        start_ticks,
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
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(io("writing")(error));
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

/// The live processes of group `pgid` that started no earlier than `not_before` ticks.
fn members(pgid: i32, not_before: u64) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            stat_of(*pid).is_some_and(|(start, group, dead)| {
                group == pgid && !dead && start >= not_before
            })
        })
        .collect()
}

/// Kills what is left of a recorded group: every live process in it that started no earlier
/// than the recorded leader, unless the leader's pid now belongs to a younger process (the
/// group died and its id was reused). Waits until they are gone.
pub async fn kill_group(record: &GroupRecord) -> (usize, String) {
    let pgid = record.pgid;
    if let Some((start, _, false)) = stat_of(pgid)
        && start != record.start_ticks
    {
        return (
            0,
            format!(
                "its process group {pgid} is gone (the id now belongs to another process, left \
                 alone)"
            ),
        );
    }
    let targets = members(pgid, record.start_ticks);
    if targets.is_empty() {
        return (0, format!("no process of its group {pgid} was left"));
    }
    for pid in &targets {
        // ESRCH: it ended meanwhile, which is what we want.
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let deadline = tokio::time::Instant::now() + KILL_WAIT;
    loop {
        let left = members(pgid, record.start_ticks);
        if left.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::error!(pgid, left = ?left, "processes of the interrupted step survive SIGKILL");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (
        targets.len(),
        format!(
            "the agent killed the {} process(es) left of its group {pgid}",
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
    let (n_killed, processes) = kill_group(&record).await;
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

    /// A shell in its own group with a grandchild: both must die.
    fn spawn_group(marker: &str) -> std::process::Child {
        std::process::Command::new("sh")
            .args(["-c", &format!("sleep 300 & exec sleep 301 # {marker}")])
            .process_group(0)
            .spawn()
            .expect("spawn")
    }

    fn alive(pgid: i32) -> usize {
        members(pgid, 0).len()
    }

    #[tokio::test]
    async fn a_recorded_group_and_its_grandchildren_are_killed_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_group("orphan-test-kill");
        let pgid = i32::try_from(child.id()).unwrap();
        write(dir.path(), &attempt(), pgid).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(pgid) < 2 {
            assert!(std::time::Instant::now() < deadline, "the group started");
            std::thread::sleep(Duration::from_millis(10));
        }
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
    async fn a_reused_process_id_is_never_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_group("orphan-test-reused");
        let pgid = i32::try_from(child.id()).unwrap();
        write(dir.path(), &attempt(), pgid).unwrap();
        // Pretend the recorded group started earlier: the live leader is then another
        // process that got the same id.
        let mut record = read(dir.path()).unwrap().unwrap();
        record.start_ticks -= 1;
        let (n_killed, why) = kill_group(&record).await;
        assert_eq!(n_killed, 0, "{why}");
        assert!(start_ticks(pgid).is_some(), "the leader still runs");
        let _ = nix::sys::signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let _ = child.wait();
    }

    #[test]
    fn a_corrupt_record_is_reported_not_acted_on() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(record_path(dir.path()), b"{not json").unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(OrphanError::Corrupt { .. })
        ));
    }
}
