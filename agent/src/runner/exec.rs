//! Runs one `exec` attempt as a real child process in its own process group: captures stdout
//! and stderr to a log file with a bounded tail, reads measurement lines from stdout, enforces
//! the timeout and honours cancellation by killing the whole group.

use super::Stop;
use crate::parse::measure::MeasureParser;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tollgate_domain::result::{Measurement, Outcome};

/// Longest line the agent keeps; the rest of a longer line is dropped (and a `@tollgate` line
/// that long is malformed).
pub const MAX_LINE: usize = 64 * 1024;
/// The log tail sent with a result holds at most this many lines...
pub const TAIL_LINES: usize = 200;
/// ...and at most this many bytes (the controller's limit on a result's log tail).
pub const TAIL_BYTES: usize = tollgate_domain::limits::LOG_TAIL.max;
/// Between SIGTERM and SIGKILL when a group is stopped.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for the output pipes to close once the step's group is gone. A process
/// that left the group (setsid) may keep them open; the attempt must still end.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// Why an `exec` attempt could not even start.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The step has no command.
    #[error("the step has an empty command")]
    EmptyCommand,
    /// The program could not be started.
    #[error("could not start '{program}': {source}")]
    Spawn {
        /// The program (`argv[0]`).
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The step's working directory is missing or not a directory; reported apart from
    /// [`RunnerError::Spawn`] because the OS gives the same "not found" for both.
    #[error(
        "the step's workdir {} cannot be used ({problem}); create it on the node or fix the plan's workdir",
        path.display()
    )]
    Workdir {
        /// The directory the plan names.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The attempt's log file or results directory could not be created.
    #[error("could not create {path}: {source}")]
    Files {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// argv.
    pub command: Vec<String>,
    /// The whole environment, in order (later entries win); the agent's own is not inherited.
    pub env: Vec<(String, String)>,
    /// Working directory; `None` for the agent's.
    pub workdir: Option<PathBuf>,
    /// Kill the group after this long.
    pub timeout: Duration,
    /// Where stdout and stderr go.
    pub log_path: PathBuf,
    /// Where to record the attempt's processes while they run (see [`super::orphans`]);
    /// `None` records nothing. The record outlives this call: the runner removes it once the
    /// attempt's result is kept.
    pub group_record: Option<super::orphans::RecordTo>,
}

/// How an `exec` attempt ended.
#[derive(Debug, Clone)]
pub struct ExecReport {
    /// Outcome.
    pub outcome: Outcome,
    /// Exit code, when the process exited.
    pub exit_code: Option<i32>,
    /// Why.
    pub message: String,
    /// Measurements read from stdout.
    pub measurements: Vec<Measurement>,
    /// The last lines of output.
    pub log_tail: String,
    /// Whether the attempt was stopped by a cancel or shutdown.
    pub stopped: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// One line of output; `truncated` carries the limit when the line was cut.
struct Line {
    stream: Stream,
    bytes: Vec<u8>,
    truncated: Option<usize>,
}

enum Ending {
    Exited(ExitStatus),
    TimedOut,
    Stopped(Stop),
}

/// Runs the attempt to its end. Errors only when the process could not start.
///
/// Longer than most functions on purpose: from the first group record to `guard.disarm()` the
/// steps (record, spawn, record the group, wait, kill the group, drain) must stay in this
/// order under one guard, and reading them in one place is how that order is checked.
pub async fn run(
    request: &ExecRequest,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> Result<ExecReport, RunnerError> {
    let program = request
        .command
        .first()
        .ok_or(RunnerError::EmptyCommand)?
        .clone();
    let log_file = prepare(request).await?;
    let mut command = step_command(request, &program);
    // Recorded before the process exists, so an agent killed from here on leaves its
    // successor what it needs to find the process (see `orphans`).
    if let Some(to) = &request.group_record
        && let Err(error) = super::orphans::write(&to.state_dir, &to.attempt, &to.env_entry, None)
    {
        tracing::warn!(%error, "could not record the step attempt; should the agent be killed, its processes would outlive it");
    }
    let mut child = command.spawn().map_err(|source| RunnerError::Spawn {
        program: program.clone(),
        source,
    })?;
    // The child is its group's leader, so its pid is the group id.
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(Pid::from_raw);
    tracing::debug!(%program, pid = ?child.id(), "step process started");
    // Should this future be dropped mid-step (the agent task aborted), the guard still takes
    // the whole group down; `kill_on_drop` alone would reach only the leader.
    let mut guard = GroupGuard(group);
    if let (Some(to), Some(group)) = (&request.group_record, group)
        && let Err(error) = super::orphans::write(
            &to.state_dir,
            &to.attempt,
            &to.env_entry,
            Some(group.as_raw()),
        )
    {
        tracing::warn!(%error, "could not record the step's process group; should the agent be killed, its processes would outlive it");
    }

    let (mut readers, collector) = read_output(&mut child, log_file);

    let ending = tokio::select! {
        status = child.wait() => match status {
            Ok(status) => Ending::Exited(status),
            // Waiting on our own child cannot fail short of a kernel problem; treat it as a
            // stop so the group is cleaned up below.
            Err(error) => {
                tracing::warn!(%error, "waiting for the step process failed");
                Ending::Stopped(Stop::Cancelled(format!("waiting for the process failed: {error}")))
            }
        },
        _ = tokio::time::sleep(request.timeout) => {
            terminate_group(group, &mut child).await;
            Ending::TimedOut
        }
        reason = stopped(stop) => {
            terminate_group(group, &mut child).await;
            Ending::Stopped(reason)
        }
    };
    // A step's processes do not outlive the step: leftovers would keep the output pipes open
    // and keep loading the GPUs under the next step.
    signal_group(group, Signal::SIGKILL);
    let drained =
        tokio::time::timeout(DRAIN_WAIT, futures::future::join_all(readers.iter_mut())).await;
    if drained.is_err() {
        tracing::warn!(
            "step output still open after its process group ended (a process escaped the group); closing it"
        );
        for reader in &readers {
            reader.abort();
        }
    }
    guard.disarm();
    // The group record stays until the caller has the attempt's result on disk (see
    // `super::report`): an agent killed before then reports the attempt as interrupted.
    let (parser, tail) = match collector.await {
        Ok(collected) => collected,
        Err(_) => (MeasureParser::new(), VecDeque::new()),
    };
    let (measurements, malformed) = parser.finish();
    let log_tail = tail.into_iter().collect::<Vec<_>>().join("\n");

    let (outcome, exit_code, message, was_stopped) = grade(ending, malformed, request.timeout);
    Ok(ExecReport {
        outcome,
        exit_code,
        message,
        measurements,
        log_tail,
        stopped: was_stopped,
    })
}

/// Checks the working directory and creates the step's log file (and its directory).
async fn prepare(request: &ExecRequest) -> Result<tokio::fs::File, RunnerError> {
    if let Some(workdir) = &request.workdir {
        let problem = match tokio::fs::metadata(workdir).await {
            Ok(metadata) if metadata.is_dir() => None,
            Ok(_) => Some("it is not a directory".to_owned()),
            Err(error) => Some(error.to_string()),
        };
        if let Some(problem) = problem {
            return Err(RunnerError::Workdir {
                path: workdir.clone(),
                problem,
            });
        }
    }
    if let Some(parent) = request.log_path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| RunnerError::Files {
                path: parent.to_owned(),
                source,
            })?;
    }
    tokio::fs::File::create(&request.log_path)
        .await
        .map_err(|source| RunnerError::Files {
            path: request.log_path.clone(),
            source,
        })
}

/// `program` found on the step's own `PATH` (as the child would look it up), when it is a
/// bare name; `None` when it names a path, or nothing executable is found (the spawn then
/// reports it). Spawning an absolute path lets the standard library start the child with
/// `posix_spawn` instead of `fork`: a command looked up on a `PATH` the parent changed
/// forces a `fork`, which copies the agent's page tables for every step.
fn resolve_program(program: &str, env: &[(String, String)]) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    if program.is_empty() || program.contains('/') {
        return None;
    }
    let path = env.iter().rev().find(|(key, _)| key == "PATH")?;
    std::env::split_paths(&path.1)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|metadata| {
                metadata.is_file() && metadata.permissions().mode() & 0o111 != 0
            })
        })
}

/// The step's command: its own process group, output piped, no input.
fn step_command(request: &ExecRequest, program: &str) -> tokio::process::Command {
    let mut command = match resolve_program(program, &request.env) {
        Some(path) => {
            let mut command = tokio::process::Command::new(path);
            // The child still sees the name it was given as its argv[0].
            command.arg0(program);
            command
        }
        None => tokio::process::Command::new(program),
    };
    command
        .args(&request.command[1..])
        .env_clear()
        .envs(request.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a timeout or cancel reaches every process the step started.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(workdir) = &request.workdir {
        command.current_dir(workdir);
    }
    command
}

/// What the collector gathered: the measurement parser and the log's last lines.
type Collected = (MeasureParser, VecDeque<String>);

/// Reads the child's stdout and stderr line by line into one collector that writes the log
/// and parses measurement lines; returns the readers and the collector.
fn read_output(
    child: &mut tokio::process::Child,
    log_file: tokio::fs::File,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    tokio::task::JoinHandle<Collected>,
) {
    let (line_sender, line_receiver) = mpsc::channel::<Line>(256);
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(read_lines(
            stdout,
            Stream::Stdout,
            line_sender.clone(),
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(read_lines(
            stderr,
            Stream::Stderr,
            line_sender,
        )));
    } else {
        drop(line_sender);
    }
    let collector = tokio::spawn(collect(line_receiver, log_file));
    (readers, collector)
}

/// The outcome, exit code, message and whether a stop ended it, from how the process ended;
/// a malformed measurement line makes an exited process a harness error.
fn grade(
    ending: Ending,
    malformed: Option<String>,
    timeout: std::time::Duration,
) -> (Outcome, Option<i32>, String, bool) {
    match ending {
        Ending::TimedOut => (
            Outcome::Error,
            None,
            format!(
                "timed out after {}",
                tollgate_domain::spec::format_duration(timeout)
            ),
            false,
        ),
        Ending::Stopped(Stop::Cancelled(reason)) => {
            (Outcome::Error, None, format!("cancelled: {reason}"), true)
        }
        Ending::Stopped(Stop::Shutdown) => (
            Outcome::Error,
            None,
            "the agent shut down while the step ran".to_owned(),
            true,
        ),
        Ending::Exited(status) => match (status.code(), status.signal()) {
            (None, Some(signal)) => (
                Outcome::Error,
                None,
                format!("killed by signal {}", signal_name(signal)),
                false,
            ),
            (code, _) => {
                let code = code.unwrap_or(-1);
                if let Some(malformed) = malformed {
                    (Outcome::Error, Some(code), malformed, false)
                } else if code == 0 {
                    (Outcome::Passed, Some(0), "exit code 0".to_owned(), false)
                } else {
                    (
                        Outcome::Failed,
                        Some(code),
                        format!("exit code {code}"),
                        false,
                    )
                }
            }
        },
    }
}

/// Resolves when a stop is requested; never, if nobody can request one any more.
async fn stopped(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    let reason = match stop.wait_for(Option::is_some).await {
        Ok(value) => value.clone(),
        Err(_) => None,
    };
    match reason {
        Some(reason) => reason,
        None => std::future::pending().await,
    }
}

/// Kills a step's process group when dropped, unless disarmed after a normal end.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.0, Signal::SIGKILL);
    }
}

fn signal_group(group: Option<Pid>, signal: Signal) {
    if let Some(group) = group {
        // ESRCH (the group is already gone) is the expected case after a clean exit.
        let _ = killpg(group, signal);
    }
}

/// SIGTERM to the group, then SIGKILL after a grace period; reaps the leader.
async fn terminate_group(group: Option<Pid>, child: &mut tokio::process::Child) {
    signal_group(group, Signal::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!("step process ignored SIGTERM; sending SIGKILL");
    }
    signal_group(group, Signal::SIGKILL);
    if group.is_none() {
        let _ = child.start_kill();
    }
    let _ = child.wait().await;
}

fn signal_name(signal: i32) -> String {
    match Signal::try_from(signal) {
        Ok(named) => format!("{signal} ({named})"),
        Err(_) => signal.to_string(),
    }
}

/// Reads `reader` line by line without ever holding more than [`MAX_LINE`] bytes of one line.
async fn read_lines(reader: impl AsyncRead + Unpin, stream: Stream, sender: mpsc::Sender<Line>) {
    let mut reader = BufReader::with_capacity(MAX_LINE, reader);
    let mut line = Vec::new();
    let mut truncated = false;
    // A read error ends the stream like EOF: the process is gone or the pipe broke.
    while let Ok(buf) = reader.fill_buf().await {
        if buf.is_empty() {
            if !line.is_empty() {
                let bytes = std::mem::take(&mut line);
                let _ = sender
                    .send(Line {
                        stream,
                        bytes,
                        truncated: truncated.then_some(MAX_LINE),
                    })
                    .await;
            }
            break;
        }
        let (chunk, consumed, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(pos) => (&buf[..pos], pos + 1, true),
            None => (buf, buf.len(), false),
        };
        let room = MAX_LINE - line.len();
        if chunk.len() > room {
            truncated = true;
        }
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(consumed);
        if complete {
            let bytes = std::mem::take(&mut line);
            let cut = std::mem::take(&mut truncated);
            if sender
                .send(Line {
                    stream,
                    bytes,
                    truncated: cut.then_some(MAX_LINE),
                })
                .await
                .is_err()
            {
                break;
            }
        }
    }
}

/// Writes every line to the log file, keeps the tail, and parses stdout for measurements.
async fn collect(
    mut lines: mpsc::Receiver<Line>,
    log_file: tokio::fs::File,
) -> (MeasureParser, VecDeque<String>) {
    let mut log = tokio::io::BufWriter::new(log_file);
    let mut log_ok = true;
    let mut parser = MeasureParser::new();
    let mut tail = VecDeque::new();
    let mut tail_bytes = 0;
    while let Some(line) = lines.recv().await {
        if log_ok {
            let written = async {
                log.write_all(&line.bytes).await?;
                log.write_all(b"\n").await
            }
            .await;
            if let Err(error) = written {
                tracing::warn!(%error, "writing the step log failed; the tail is still kept");
                log_ok = false;
            }
        }
        if line.stream == Stream::Stdout {
            parser.feed(&line.bytes, line.truncated);
        }
        let text = String::from_utf8_lossy(&line.bytes).into_owned();
        tail_bytes += text.len() + 1;
        tail.push_back(text);
        while tail.len() > TAIL_LINES || (tail_bytes > TAIL_BYTES && tail.len() > 1) {
            if let Some(dropped) = tail.pop_front() {
                tail_bytes -= dropped.len() + 1;
            }
        }
    }
    if log_ok && let Err(error) = log.flush().await {
        tracing::warn!(%error, "flushing the step log failed");
    }
    // A single line may still exceed the byte bound: keep its end.
    if tail_bytes > TAIL_BYTES
        && let Some(only) = tail.back_mut()
    {
        let mut start = only.len().saturating_sub(TAIL_BYTES);
        while !only.is_char_boundary(start) {
            start += 1;
        }
        *only = only[start..].to_owned();
    }
    (parser, tail)
}

#[cfg(test)]
mod resolve_tests {
    use super::resolve_program;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_bare_name_is_found_on_the_step_s_path_and_nothing_else_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(dir.path().join("data"), "not a program").expect("write");
        let path = format!("relative/dir:/nonexistent:{}", dir.path().display());
        let env = vec![
            ("PATH".to_owned(), "/elsewhere".to_owned()),
            ("PATH".to_owned(), path),
        ];
        // The last PATH is the one the child gets.
        assert_eq!(resolve_program("tool", &env), Some(tool));
        assert_eq!(resolve_program("data", &env), None, "not executable");
        assert_eq!(resolve_program("missing", &env), None);
        assert_eq!(
            resolve_program("./tool", &env),
            None,
            "a path is left as given"
        );
        assert_eq!(
            resolve_program("tool", &[]),
            None,
            "no PATH: left to the spawn"
        );
    }
}
