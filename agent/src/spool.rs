//! The result spool: every step result is made durable on the node's disk before it is sent
//! and deleted only after the controller acknowledged it, so a controller outage of any length
//! loses no result.
//!
//! Layout under `<state-dir>/spool/`: one file per result, `<seq>-<job>-<step>-<attempt>.pb`,
//! replayed in `seq` order; `corrupt/` holds files that failed their checks; `rejected/` holds
//! results the controller can never accept (stale lease epoch, wrong node).
//!
//! File format: the 8-byte magic `TGSPOOL1`, the payload length as a little-endian u64, the
//! sha256 of the payload (32 bytes), then the payload: the prost-encoded
//! `tollgate.v1.StepResult`. A truncated or altered file fails the length or digest check.
//!
//! Every method blocks on the file system (fsync); async callers use `spawn_blocking`.

use prost::Message;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tollgate_proto::v1;

const MAGIC: &[u8; 8] = b"TGSPOOL1";
const HEADER_LEN: usize = 8 + 8 + 32;
const EXTENSION: &str = "pb";

/// A spool operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file system call failed.
    #[error("spool {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Why a spool file is unreadable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CorruptFile {
    /// Shorter than its header or than the length it announces.
    #[error("truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// Bytes present.
        actual: usize,
        /// Bytes the header announces.
        expected: usize,
    },
    /// Does not start with the magic.
    #[error("not a spool file (bad magic)")]
    BadMagic,
    /// Longer than the header announces.
    #[error("{extra} unexpected trailing bytes")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The payload's digest differs from the header's.
    #[error("checksum mismatch")]
    Checksum,
    /// The payload is not a `StepResult`.
    #[error("payload does not decode: {0}")]
    Decode(String),
    /// The name does not start with a sequence number.
    #[error("file name without a sequence number")]
    BadName,
}

/// One spooled result waiting for its ack.
#[derive(Debug, Clone)]
pub struct SpoolEntry {
    /// Order of writing.
    pub seq: u64,
    /// The file.
    pub path: PathBuf,
    /// The result.
    pub result: v1::StepResult,
}

/// The spool directory. Shared between the job task (writes) and the uploader (reads, removes).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// The next sequence number; guarded so concurrent writers never share one.
    next_seq: Mutex<u64>,
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError {
    let path = path.to_owned();
    move |source| SpoolError::Io { what, path, source }
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

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error("syncing directory", dir))
}

/// Encodes a result in the spool file format.
pub fn encode(result: &v1::StepResult) -> Vec<u8> {
    let payload = result.encode_to_vec();
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&Sha256::digest(&payload));
    bytes.extend_from_slice(&payload);
    bytes
}

/// Decodes and checks a spool file's bytes.
pub fn decode(bytes: &[u8]) -> Result<v1::StepResult, CorruptFile> {
    if bytes.len() < HEADER_LEN {
        return Err(CorruptFile::Truncated {
            actual: bytes.len(),
            expected: HEADER_LEN,
        });
    }
    if &bytes[..8] != MAGIC {
        return Err(CorruptFile::BadMagic);
    }
    let mut length = [0u8; 8];
    length.copy_from_slice(&bytes[8..16]);
    let length = usize::try_from(u64::from_le_bytes(length)).unwrap_or(usize::MAX);
    let expected = HEADER_LEN.saturating_add(length);
    if bytes.len() < expected {
        return Err(CorruptFile::Truncated {
            actual: bytes.len(),
            expected,
        });
    }
    if bytes.len() > expected {
        return Err(CorruptFile::TrailingBytes {
            extra: bytes.len() - expected,
        });
    }
    let payload = &bytes[HEADER_LEN..];
    if Sha256::digest(payload)[..] != bytes[16..48] {
        return Err(CorruptFile::Checksum);
    }
    v1::StepResult::decode(payload).map_err(|error| CorruptFile::Decode(error.to_string()))
}

/// The job of a spool file's stem, `<seq>-<job>-<step index>-<attempt>` (the job may hold
/// `-`, the numbers do not).
fn job_of_name(stem: &str) -> Option<&str> {
    let (_, rest) = stem.split_once('-')?;
    let (rest, attempt) = rest.rsplit_once('-')?;
    let (job, step) = rest.rsplit_once('-')?;
    let numeric = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    (numeric(attempt) && numeric(step) && !job.is_empty()).then_some(job)
}

fn seq_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.split('-').next()?.parse().ok()
}

impl Spool {
    /// Opens (creating) the spool under `dir`, dropping temp files a crash left half-written.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, SpoolError> {
        let dir = dir.into();
        for sub in [dir.clone(), dir.join("corrupt"), dir.join("rejected")] {
            fs::create_dir_all(&sub).map_err(io_error("creating", &sub))?;
        }
        let mut max_seq = 0;
        for entry in fs::read_dir(&dir).map_err(io_error("listing", &dir))? {
            let path = entry.map_err(io_error("listing", &dir))?.path();
            if path.extension().is_some_and(|ext| ext == "tmp") {
                // Never renamed into place, so never acknowledged-pending: the result was
                // not durable yet and its attempt's outcome was not reported.
                tracing::warn!(path = %path.display(), "removing a half-written spool file");
                fs::remove_file(&path).map_err(io_error("removing", &path))?;
                continue;
            }
            if let Some(seq) = seq_of(&path) {
                max_seq = max_seq.max(seq);
            }
        }
        Ok(Self {
            dir,
            next_seq: Mutex::new(max_seq + 1),
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes `result` durable: temp file, fsync, rename, fsync of the directory.
    pub fn write(&self, result: &v1::StepResult) -> Result<PathBuf, SpoolError> {
        let seq = {
            let mut next = self
                .next_seq
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let seq = *next;
            *next += 1;
            seq
        };
        let name = format!(
            "{seq:012}-{}-{}-{}.{EXTENSION}",
            path_safe(&result.job_id),
            result.step_index,
            result.attempt
        );
        let path = self.dir.join(&name);
        let temp = self.dir.join(format!(".{name}.tmp"));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io_error("creating", &temp))
            .and_then(|mut file| {
                file.write_all(&encode(result))
                    .and_then(|()| file.sync_all())
                    .map_err(io_error("writing", &temp))
            })
            .and_then(|()| fs::rename(&temp, &path).map_err(io_error("renaming", &temp)));
        if let Err(error) = written {
            // A half-written file (the disk filled up) would only take more of the space the
            // next try needs; the caller keeps the result.
            let _ = fs::remove_file(&temp);
            return Err(error);
        }
        sync_dir(&self.dir)?;
        Ok(path)
    }

    /// Every result waiting for an ack, oldest first. Corrupt files are moved to `corrupt/`
    /// with a warning naming them.
    pub fn pending(&self) -> Result<Vec<SpoolEntry>, SpoolError> {
        let mut paths = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_error("listing", &self.dir))? {
            let path = entry.map_err(io_error("listing", &self.dir))?.path();
            if path.is_file() && path.extension().is_some_and(|ext| ext == EXTENSION) {
                paths.push(path);
            }
        }
        let mut entries = Vec::new();
        for path in paths {
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                // Removed meanwhile (acknowledged by a concurrent pass): nothing to replay.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(io_error("reading", &path)(error)),
            };
            let checked = seq_of(&path)
                .ok_or(CorruptFile::BadName)
                .and_then(|seq| decode(&bytes).map(|result| (seq, result)));
            match checked {
                Ok((seq, result)) => entries.push(SpoolEntry { seq, path, result }),
                Err(problem) => {
                    let moved = self.move_to(&path, "corrupt")?;
                    tracing::warn!(
                        file = %path.display(),
                        moved_to = %moved.display(),
                        %problem,
                        "corrupt spool file moved aside; its result is lost"
                    );
                }
            }
        }
        entries.sort_by_key(|entry| entry.seq);
        Ok(entries)
    }

    /// How many results wait for an ack, by job (read from the file names, which carry the
    /// job id as written by [`Spool::write`]: the controller's ids are file-name safe, so the
    /// name is the id); empty when the spool cannot be listed. Refused results live in
    /// `rejected/` and are not counted.
    pub fn count_pending_by_job(&self) -> std::collections::BTreeMap<String, u32> {
        let mut counts = std::collections::BTreeMap::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return counts;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != EXTENSION) {
                continue;
            }
            if let Some(job) = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(job_of_name)
            {
                let n: &mut u32 = counts.entry(job.to_owned()).or_default();
                *n = n.saturating_add(1);
            }
        }
        counts
    }

    /// Deletes an acknowledged result.
    pub fn remove(&self, entry: &SpoolEntry) -> Result<(), SpoolError> {
        match fs::remove_file(&entry.path) {
            Ok(()) => sync_dir(&self.dir),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error("removing", &entry.path)(error)),
        }
    }

    /// Moves a result the controller can never accept to `rejected/`, kept for the operator.
    pub fn reject(&self, entry: &SpoolEntry) -> Result<PathBuf, SpoolError> {
        self.move_to(&entry.path, "rejected")
    }

    fn move_to(&self, path: &Path, sub: &str) -> Result<PathBuf, SpoolError> {
        let target_dir = self.dir.join(sub);
        let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
        let target = target_dir.join(name);
        fs::rename(path, &target).map_err(io_error("moving", path))?;
        sync_dir(&self.dir)?;
        sync_dir(&target_dir)?;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(job: &str, step_index: u32, attempt: u32) -> v1::StepResult {
        v1::StepResult {
            job_id: job.into(),
            step_index,
            step_name: format!("step-{step_index}"),
            attempt,
            lease_epoch: 1,
            outcome: v1::Outcome::Passed as i32,
            message: "exit code 0".into(),
            ..v1::StepResult::default()
        }
    }

    fn keys(entries: &[SpoolEntry]) -> Vec<(String, u32, u32)> {
        entries
            .iter()
            .map(|e| {
                (
                    e.result.job_id.clone(),
                    e.result.step_index,
                    e.result.attempt,
                )
            })
            .collect()
    }

    #[test]
    fn results_replay_in_write_order_and_leave_after_the_ack() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        for (step, attempt) in [(0, 1), (0, 2), (1, 1), (10, 1)] {
            spool.write(&result("job-a", step, attempt)).unwrap();
        }
        let pending = spool.pending().unwrap();
        assert_eq!(
            keys(&pending),
            [
                ("job-a".into(), 0, 1),
                ("job-a".into(), 0, 2),
                ("job-a".into(), 1, 1),
                ("job-a".into(), 10, 1)
            ]
        );
        spool.remove(&pending[0]).unwrap();
        // A reopened spool (agent restart) sees the rest and continues the sequence.
        let reopened = Spool::open(dir.path()).unwrap();
        let path = reopened.write(&result("job-b", 0, 1)).unwrap();
        assert!(
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("000000000005-job-b-0-1")
        );
        let pending = reopened.pending().unwrap();
        assert_eq!(pending.len(), 4);
        assert_eq!(pending.last().unwrap().result.job_id, "job-b");
    }

    #[test]
    fn corrupt_and_truncated_files_are_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let good = spool.write(&result("job-a", 0, 1)).unwrap();
        let truncated = spool.write(&result("job-a", 1, 1)).unwrap();
        let flipped = spool.write(&result("job-a", 2, 1)).unwrap();
        let bytes = fs::read(&truncated).unwrap();
        fs::write(&truncated, &bytes[..bytes.len() - 3]).unwrap();
        let mut bytes = fs::read(&flipped).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&flipped, &bytes).unwrap();
        fs::write(dir.path().join("000000000099-garbage-0-1.pb"), b"hello").unwrap();
        fs::write(dir.path().join("notes.pb"), encode(&result("x", 0, 1))).unwrap();

        let pending = spool.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].path, good);
        let mut corrupt: Vec<String> = fs::read_dir(dir.path().join("corrupt"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        corrupt.sort();
        assert_eq!(
            corrupt,
            [
                "000000000002-job-a-1-1.pb",
                "000000000003-job-a-2-1.pb",
                "000000000099-garbage-0-1.pb",
                "notes.pb"
            ]
        );
    }

    #[test]
    fn decode_names_the_problem() {
        let bytes = encode(&result("job-a", 0, 1));
        assert_eq!(decode(&bytes).unwrap().job_id, "job-a");
        assert!(matches!(
            decode(&bytes[..10]),
            Err(CorruptFile::Truncated { .. })
        ));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(CorruptFile::Truncated { .. })
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            decode(&longer),
            Err(CorruptFile::TrailingBytes { extra: 1 })
        );
        let mut bad_magic = bytes.clone();
        bad_magic[0] = b'X';
        assert_eq!(decode(&bad_magic), Err(CorruptFile::BadMagic));
        let mut flipped = bytes;
        flipped[20] ^= 1;
        assert_eq!(decode(&flipped), Err(CorruptFile::Checksum));
    }

    #[test]
    fn rejected_results_are_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.write(&result("job-a", 0, 1)).unwrap();
        let pending = spool.pending().unwrap();
        let moved = spool.reject(&pending[0]).unwrap();
        assert!(moved.starts_with(dir.path().join("rejected")));
        assert!(spool.pending().unwrap().is_empty());
        assert_eq!(decode(&fs::read(moved).unwrap()).unwrap().job_id, "job-a");
    }

    #[test]
    fn pending_results_are_counted_by_job_and_rejected_ones_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        for (job, step) in [("job-1-a", 0), ("job-1-a", 1), ("job-2", 0), ("job-2", 12)] {
            spool.write(&result(job, step, 1)).unwrap();
        }
        let counts = |spool: &Spool| -> Vec<(String, u32)> {
            spool.count_pending_by_job().into_iter().collect()
        };
        assert_eq!(
            counts(&spool),
            [("job-1-a".to_owned(), 2), ("job-2".to_owned(), 2)]
        );
        let pending = spool.pending().unwrap();
        spool.reject(&pending[2]).unwrap();
        spool.remove(&pending[0]).unwrap();
        assert_eq!(
            counts(&spool),
            [("job-1-a".to_owned(), 1), ("job-2".to_owned(), 1)]
        );
    }

    #[test]
    fn half_written_temp_files_are_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(".000000000001-job-a-0-1.pb.tmp"),
            b"partial",
        )
        .unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert!(spool.pending().unwrap().is_empty());
        assert!(!dir.path().join(".000000000001-job-a-0-1.pb.tmp").exists());
    }
}
