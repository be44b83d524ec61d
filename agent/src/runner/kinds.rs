//! The step kinds that run a process and then read something: `exec` as is, `dcgm-diag` (the
//! JSON it prints), `junit` (the report it writes), `burn-in` (telemetry limits while the load
//! runs for its duration) and `flash` (the inventory afterwards).
//!
//! | kind | passes when | fails when | is an error when |
//! | --- | --- | --- | --- |
//! | `dcgm-diag` | every test × GPU passed or was skipped | a test failed on a GPU | `runtime_error`, output not a diagnostic, timeout |
//! | `junit` | no failure or error, exit 0 | a testcase failed, or exit ≠ 0 with none failing | report missing or malformed, only errors, timeout |
//! | `burn-in` | the load ran for `duration` within every limit | a sample broke a limit (the load is stopped at once), or the load exited non-zero early | timeout, crash |
//! | `flash` | the component reports the target version afterwards (after the reboot, if one is needed) | it does not, or the installer exited non-zero | the resume record cannot be written |
//!
//! `dcgm-diag` writes the diagnostic's stdout to `$TOLLGATE_RESULTS_DIR/dcgm-diag.json` (its
//! stderr goes to the step log). dcgmi exits non-zero when a test fails, so its exit code is
//! read only when the output cannot be graded.
//!
//! A `flash` that needs a reboot (`reboot: true`, or the installer exits
//! [`FLASH_REBOOT_EXIT_CODE`]) writes a resume record and ends the job for now; see
//! [`super::flash`], which [`super::resume`] reads after the reboot.

use super::exec::{self, ExecRequest};
use super::flash::{self, Attempt};
use super::{AttemptEnd, Job, RunnerContext, Stop};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;
use tollgate_domain::plan::{FLASH_REBOOT_EXIT_CODE, StepKind, TelemetryLimit};
use tollgate_domain::result::Outcome;

/// The file a `dcgm-diag` step's JSON goes to, in the attempt's results directory.
pub const DCGM_OUTPUT: &str = "dcgm-diag.json";

/// Wraps a diagnostic argv so its stdout lands in [`DCGM_OUTPUT`].
pub fn dcgm_argv(argv: &[String]) -> Vec<String> {
    let mut wrapped = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        format!("exec \"$@\" > \"$TOLLGATE_RESULTS_DIR/{DCGM_OUTPUT}\""),
        "dcgm-diag".to_owned(),
    ];
    wrapped.extend(argv.iter().cloned());
    wrapped
}

/// Runs `request` for a step of `kind` and grades it as the kind says.
pub(super) async fn run_kind(
    context: &RunnerContext,
    job: &Job,
    kind: &StepKind,
    request: &ExecRequest,
    results_dir: &Path,
    at: Attempt,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> AttemptEnd {
    if let StepKind::BurnIn {
        duration, limits, ..
    } = kind
    {
        return burn_in(context, request, *duration, limits, stop).await;
    }
    let report = match exec::run(request, stop).await {
        Ok(report) => report,
        Err(error) => return AttemptEnd::error(error.to_string()),
    };
    let exec_failed_to_finish = report.stopped || report.exit_code.is_none();
    let mut end = AttemptEnd::from_exec(report);
    match kind {
        StepKind::DcgmDiag { level, .. } if !exec_failed_to_finish => {
            let path = results_dir.join(DCGM_OUTPUT);
            let graded = match tokio::fs::read_to_string(&path).await {
                Err(error) => Err(format!("could not read {}: {error}", path.display())),
                Ok(json) => {
                    crate::parse::dcgm::parse(&json, *level).map_err(|error| error.to_string())
                }
            };
            match graded {
                Ok(subs) => {
                    (end.outcome, end.message) = crate::parse::dcgm::step_outcome(&subs);
                    end.sub_results = subs;
                }
                Err(message) => {
                    end.outcome = Outcome::Error;
                    end.message = format!("{message} ({})", end.message);
                }
            }
        }
        StepKind::Junit { report, .. } if !exec_failed_to_finish => {
            match read_report(results_dir, report).await {
                Ok(subs) => {
                    (end.outcome, end.message) =
                        crate::parse::junit::step_outcome(&subs, end.exit_code);
                    end.sub_results = subs;
                }
                Err(message) => {
                    end.outcome = Outcome::Error;
                    end.message = format!("{message} ({})", end.message);
                }
            }
        }
        StepKind::Flash {
            component,
            version,
            reboot,
            ..
        } if !exec_failed_to_finish => {
            let needs_reboot = *reboot || end.exit_code == Some(FLASH_REBOOT_EXIT_CODE);
            flash::grade(context, job, at, component, version, needs_reboot, &mut end).await;
        }
        _ => {}
    }
    end
}

/// Finds and parses a `junit` step's report. `pattern` is relative to the results directory
/// unless absolute; a `*` in its file name matches any characters, and every matching file is
/// read, in name order.
async fn read_report(
    results_dir: &Path,
    pattern: &str,
) -> Result<Vec<tollgate_domain::result::SubResult>, String> {
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        results_dir.join(pattern)
    };
    let paths: Vec<PathBuf> = match full.file_name().and_then(|n| n.to_str()) {
        Some(name) if name.contains('*') => {
            let dir = full.parent().unwrap_or(results_dir);
            let mut found = Vec::new();
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if let Some(file) = entry.file_name().to_str()
                        && glob_match(name, file)
                    {
                        found.push(entry.path());
                    }
                }
            }
            found.sort();
            found
        }
        _ => vec![full.clone()],
    };
    let mut subs = Vec::new();
    for path in &paths {
        let xml = tokio::fs::read_to_string(path)
            .await
            .map_err(|error| format!("the JUnit report {} is missing: {error}", path.display()))?;
        let mut read = crate::parse::junit::parse(&xml)
            .map_err(|error| format!("{} : {error}", path.display()))?;
        subs.append(&mut read);
    }
    if paths.is_empty() {
        return Err(format!("no JUnit report matches {}", full.display()));
    }
    Ok(subs)
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = match parts.split_first() {
        Some(split) => split,
        None => return pattern == text,
    };
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    for (idx, part) in rest.iter().enumerate() {
        if idx == rest.len() - 1 {
            return remaining.ends_with(part);
        }
        match remaining.find(part) {
            Some(pos) => remaining = &remaining[pos + part.len()..],
            None => return false,
        }
    }
    remaining.is_empty()
}

/// Why a burn-in's load was stopped by the runner itself.
#[derive(Clone, Debug)]
enum BurnInEnd {
    DurationReached,
    Violation(String),
}

/// Runs the load; stops its process group when `duration` is reached (a pass) or at the first
/// telemetry sample outside a limit (a failure naming GPU, field, value and limit).
///
/// The limits are checked on samples this function reads itself, at the runner's sampling
/// interval, beside the step's telemetry sampler; the simulated source's numbers advance with
/// every read, a real GPU's do not care. One `select!` loop over the process, the deadline and
/// the sampler, which share the process group, hence its length.
async fn burn_in(
    context: &RunnerContext,
    request: &ExecRequest,
    duration: std::time::Duration,
    limits: &[TelemetryLimit],
    stop: &mut watch::Receiver<Option<Stop>>,
) -> AttemptEnd {
    let (inner_sender, mut inner) = watch::channel(None::<Stop>);
    let (end_sender, mut end_receiver) = watch::channel(None::<BurnInEnd>);
    let source = Arc::clone(&context.source);
    let interval = context
        .sample_interval
        .max(std::time::Duration::from_millis(10));
    let limits = limits.to_vec();
    let mut outer = stop.clone();
    let watcher = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + duration;
        let mut ticker = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = end_sender.send(Some(BurnInEnd::DurationReached));
                    let _ = inner_sender.send(Some(Stop::Cancelled("burn-in duration reached".to_owned())));
                    return;
                }
                reason = next_stop(&mut outer) => {
                    if let Some(reason) = reason {
                        let _ = inner_sender.send(Some(reason));
                    }
                    return;
                }
                _ = ticker.tick() => {
                    let source = Arc::clone(&source);
                    let Ok(Ok(sample)) = tokio::task::spawn_blocking(move || source.sample()).await else {
                        continue;
                    };
                    if let Some(message) = first_violation(&sample, &limits) {
                        let _ = end_sender.send(Some(BurnInEnd::Violation(message.clone())));
                        let _ = inner_sender.send(Some(Stop::Cancelled(message)));
                        return;
                    }
                }
            }
        }
    });
    let report = exec::run(request, &mut inner).await;
    watcher.abort();
    let ended_by = end_receiver.borrow_and_update().clone();
    let report = match report {
        Ok(report) => report,
        Err(error) => return AttemptEnd::error(error.to_string()),
    };
    let job_stopped = stop.borrow().is_some();
    let mut end = AttemptEnd::from_exec(report);
    match ended_by {
        _ if job_stopped => {}
        Some(BurnInEnd::Violation(message)) => {
            end.outcome = Outcome::Failed;
            end.message = message;
            end.stopped = false;
        }
        Some(BurnInEnd::DurationReached) => {
            end.outcome = Outcome::Passed;
            end.message = format!(
                "ran {} within every limit",
                tollgate_domain::spec::format_duration(duration)
            );
            end.stopped = false;
        }
        // The load ended by itself before the duration: its exit code decides, as for exec.
        None => {
            if end.outcome == Outcome::Passed {
                end.message = format!(
                    "the load exited 0 before the duration {}",
                    tollgate_domain::spec::format_duration(duration)
                );
            }
        }
    }
    end
}

/// The first limit a sample breaks, as "GPU <index> <why>".
fn first_violation(sample: &crate::gpu::Sample, limits: &[TelemetryLimit]) -> Option<String> {
    sample.iter().find_map(|(gpu_idx, values)| {
        limits.iter().find_map(|limit| {
            let why = limit.violation(*values.get(&limit.field)?)?;
            Some(format!("GPU {gpu_idx} {why}"))
        })
    })
}

/// The stop the job's receiver carries once one is requested; never, if nobody can send one.
async fn next_stop(stop: &mut watch::Receiver<Option<Stop>>) -> Option<Stop> {
    let reason = {
        let seen = stop.wait_for(Option::is_some).await;
        seen.ok().and_then(|reason| reason.clone())
    };
    match reason {
        Some(reason) => Some(reason),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob_matches_stars_only() {
        assert!(glob_match("*.xml", "junit.xml"));
        assert!(glob_match("junit-*.xml", "junit-1.xml"));
        assert!(!glob_match("junit-*.xml", "other-1.xml"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }
}
