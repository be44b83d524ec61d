//! `tollgate run`: start qualification runs, follow them live, show, list and cancel them.

use crate::args::RunCommand;
use crate::client::{Controller, RpcError, answer};
use crate::output::{
    Format, Table, format_millis, format_number, format_time, outcome_name, print_json,
    print_json_line, short_hash, time,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use tollgate_proto::v1 as pb;
use tollgate_wire::json;

/// The run state while jobs are still going; every other state is final.
const RUNNING: &str = "running";

/// Runs one `run` command.
pub async fn run(controller: &Controller, command: RunCommand) -> anyhow::Result<()> {
    match command {
        RunCommand::Start {
            release,
            plan,
            milestone,
            nodes_now,
            watch: follow,
            output,
        } => {
            let run = start(controller, &release, &plan, milestone.as_deref(), nodes_now).await?;
            match output.output {
                // A watched run prints a stream of objects, so the first one goes on one line too.
                Format::Json if follow => print_json_line(&json::run(&run))?,
                Format::Json => print_json(&json::run(&run))?,
                Format::Text => print!("{}", format_started(&run)),
            }
            if follow {
                watch(controller, &run.id, output.output).await?;
            }
            Ok(())
        }
        RunCommand::Watch { run, output } => {
            watch(controller, &run, output.output).await?;
            Ok(())
        }
        RunCommand::Show { run, output } => {
            let run = get(controller, &run).await?;
            match output.output {
                Format::Json => print_json(&json::run(&run)),
                Format::Text => {
                    print!("{}", format_run(&run));
                    Ok(())
                }
            }
        }
        RunCommand::List {
            release,
            pages,
            output,
        } => {
            let release = release.unwrap_or_default();
            let runs = crate::pages::follow(pages, |page_size, page_token| {
                let mut client = controller.runs();
                let request = pb::ListRunsRequest {
                    release: release.clone(),
                    page_size,
                    page_token,
                };
                async move {
                    let page = answer(client.list_runs(request).await)?;
                    Ok::<_, crate::client::RpcError>((page.runs, page.next_page_token))
                }
            })
            .await?;
            match output.output {
                Format::Json => {
                    print_json(&json::list("runs", runs.iter().map(json::run).collect()))
                }
                Format::Text => {
                    print!("{}", format_run_table(&runs));
                    Ok(())
                }
            }
        }
        RunCommand::Cancel { run, output } => {
            let run = answer(
                controller
                    .runs()
                    .cancel_run(pb::CancelRunRequest { id: run })
                    .await,
            )?;
            match output.output {
                Format::Json => print_json(&json::run(&run)),
                Format::Text => {
                    println!("run {} {}: {}", run.id, run.state, format_counts(&run));
                    Ok(())
                }
            }
        }
    }
}

/// Starts a run.
pub async fn start(
    controller: &Controller,
    release: &str,
    plan: &str,
    milestone: Option<&str>,
    nodes_now: bool,
) -> anyhow::Result<pb::Run> {
    Ok(answer(
        controller
            .runs()
            .start_run(pb::StartRunRequest {
                release: release.to_owned(),
                plan: plan.to_owned(),
                milestone: milestone.unwrap_or_default().to_owned(),
                nodes_now,
            })
            .await,
    )?)
}

/// One run with every job: GetRun's pages followed to the last, their jobs in one list; the
/// run's own fields and job counts are the last page's (the newest, for a live run).
pub async fn get(controller: &Controller, id: &str) -> anyhow::Result<pb::Run> {
    let mut jobs = Vec::new();
    let mut page_token = String::new();
    loop {
        let mut page = answer(
            controller
                .runs()
                .get_run(pb::GetRunRequest {
                    id: id.to_owned(),
                    // As many as fit: the controller ends a page at 1 MiB of jobs.
                    page_size: u32::try_from(tollgate_wire::page::MAX_PAGE_SIZE)
                        .unwrap_or(u32::MAX),
                    page_token,
                })
                .await,
        )?;
        jobs.append(&mut page.jobs);
        if page.next_page_token.is_empty() {
            page.jobs = jobs;
            return Ok(page);
        }
        page_token = std::mem::take(&mut page.next_page_token);
    }
}

/// Follows a run until it ends and returns it as it ended. Text on a terminal shows a progress
/// bar of jobs ended with each job's changes above it; anywhere else (a pipe, a log, `-o json`)
/// every update is appended as its own line.
///
/// Each message carries the run's own fields and job counts and only the jobs that changed;
/// the run returned holds every job, as last sent.
pub async fn watch(controller: &Controller, id: &str, format: Format) -> anyhow::Result<pb::Run> {
    let mut stream = answer(
        controller
            .runs()
            .watch_run(pb::GetRunRequest {
                id: id.to_owned(),
                ..Default::default()
            })
            .await,
    )?;
    let mut progress = Progress::new(format, std::io::stdout().is_terminal());
    let mut last: Option<pb::Run> = None;
    // Every job as last sent, by node and id (the run's order).
    let mut jobs: BTreeMap<(String, String), pb::Job> = BTreeMap::new();
    // A live drawing also ticks between updates, so its clock shows a long step still going.
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            _ = ticker.tick(), if progress.is_live() => {
                if let Some(run) = &last {
                    progress.update(run)?;
                }
                continue;
            }
        };
        let run = match message {
            Ok(Some(run)) => run,
            Ok(None) => break,
            Err(status) => return Err(RpcError::from(status).into()),
        };
        progress.update(&run)?;
        let mut run = run;
        for job in std::mem::take(&mut run.jobs) {
            jobs.insert((job.node.clone(), job.id.clone()), job);
        }
        // An ended run's jobs may still fill messages after the first that says it ended:
        // the controller closes the stream after the last.
        last = Some(run);
    }
    progress.finish();
    let Some(mut run) = last else {
        anyhow::bail!("the controller closed the watch of run {id} without sending it");
    };
    run.jobs = jobs.into_values().collect();
    if run.state == RUNNING {
        anyhow::bail!(
            "the controller closed the watch of run {id} while it was still running; \
             follow it again with `tollgate run watch {id}`"
        );
    }
    if format == Format::Text {
        println!("{}", format_ended(&run));
        // The hint is worth a call: the next thing a release manager wants is the decision.
        if crate::commands::gate::exists(controller, &run.milestone).await? {
            println!(
                "gate decision: tollgate gate show --release {} --milestone {}",
                run.release, run.milestone
            );
        }
    }
    Ok(run)
}

/// What has been printed of a watched run, so the next update prints only what changed.
struct Progress {
    format: Format,
    /// On a terminal (text only): a bar of jobs ended out of all, with the run's state and
    /// elapsed time; job lines that change are printed above it. `None` anywhere else (a
    /// pipe, a log, `-o json`): every change is appended as its own line.
    bar: Option<ProgressBar>,
    /// The last line printed per job id.
    job_lines: HashMap<String, String>,
    /// The widest node name seen so far: job lines align across updates.
    name_width: usize,
    /// The run state last printed.
    state: String,
}

/// The live bar's layout: `run 1a2b3c4d5e6f running (  12.0s) [#####-----] 3/8 jobs ended`.
const BAR_TEMPLATE: &str = "{msg} [{bar:30}] {pos}/{len} jobs ended";

impl Progress {
    fn new(format: Format, terminal: bool) -> Self {
        let bar = (terminal && format == Format::Text).then(|| {
            let style = ProgressStyle::with_template(BAR_TEMPLATE)
                .expect("the bar template is a fixed, valid template")
                .progress_chars("#>-");
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout()).with_style(style)
        });
        Self {
            format,
            bar,
            job_lines: HashMap::new(),
            name_width: 0,
            state: String::new(),
        }
    }

    /// Whether updates redraw a bar (and so should also come on a clock tick).
    fn is_live(&self) -> bool {
        self.bar.is_some()
    }

    fn update(&mut self, run: &pb::Run) -> anyhow::Result<()> {
        if self.format == Format::Json {
            return print_json_line(&json::run(run));
        }
        let elapsed = format!(
            "{:>5.1}s",
            run_elapsed(run, crate::clock::now()).as_secs_f64()
        );
        match self.bar.clone() {
            // A clone is a handle on the same bar.
            Some(bar) => {
                for line in self.changed_job_lines(run) {
                    bar.println(format!("  {line}"));
                }
                bar.set_length(u64::from(run.n_jobs));
                bar.set_position(n_ended(run));
                bar.set_message(format!(
                    "run {} {} ({elapsed})",
                    short_hash(&run.id),
                    run.state
                ));
            }
            None => self.append_lines(run, &elapsed)?,
        }
        self.state.clone_from(&run.state);
        Ok(())
    }

    /// Appends the run's first state, the job lines that changed, and a later state change
    /// after the job lines that caused it.
    fn append_lines(&mut self, run: &pb::Run, elapsed: &str) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        let state_changed = run.state != self.state;
        if state_changed && self.state.is_empty() {
            writeln!(stdout, "{elapsed} run {} {}", run.id, run.state)?;
        }
        for line in self.changed_job_lines(run) {
            writeln!(stdout, "{elapsed}   {line}")?;
        }
        if state_changed && !self.state.is_empty() {
            writeln!(stdout, "{elapsed} run {} {}", run.id, run.state)?;
        }
        stdout.flush()?;
        Ok(())
    }

    /// The lines of the jobs whose line differs from the one printed last, remembered as
    /// printed.
    fn changed_job_lines(&mut self, run: &pb::Run) -> Vec<String> {
        self.name_width = self.name_width.max(name_width(&run.jobs));
        let width = self.name_width;
        let mut changed = Vec::new();
        for job in &run.jobs {
            let line = format_job_line(job, width);
            if self.job_lines.get(&job.id) != Some(&line) {
                self.job_lines.insert(job.id.clone(), line.clone());
                changed.push(line);
            }
        }
        changed
    }

    /// Ends the bar, leaving its last drawing on the screen.
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// Whether a job in `state` is over (passed, failed, error, cancelled, lost): it counts on
/// the bar.
fn state_ended(state: &str) -> bool {
    !matches!(state, "pending" | "assigned" | "running")
}

/// How many of the run's jobs are over, from its job counts.
fn n_ended(run: &pb::Run) -> u64 {
    run.job_counts
        .iter()
        .filter(|count| state_ended(&count.state))
        .map(|count| u64::from(count.count))
        .sum()
}

/// How long the run has been going, counted from its start on the controller (not from when
/// this watch began), up to its end once it ended. Zero when the controller sent no start.
pub fn run_elapsed(run: &pb::Run, now: chrono::DateTime<chrono::Utc>) -> std::time::Duration {
    let at = tollgate_wire::timestamp_from_proto;
    let Some(start) = run.created_at.as_ref().and_then(at) else {
        return std::time::Duration::ZERO;
    };
    let end = run.finished_at.as_ref().and_then(at).unwrap_or(now);
    (end - start).to_std().unwrap_or_default()
}

fn name_width(jobs: &[pb::Job]) -> usize {
    jobs.iter()
        .map(|job| job.node.chars().count())
        .max()
        .unwrap_or(0)
}

/// Where a job is: the step it is on (or reached), of how many.
///
/// Steps run in order, so the step in progress is the one after the last step that passed or
/// was skipped; a retried step keeps its number.
pub fn current_step(job: &pb::Job) -> u32 {
    let done = job
        .results
        .iter()
        .filter(|result| matches!(outcome_name(result.outcome), "passed" | "skipped"))
        .map(|result| result.step_index)
        .max()
        .map_or(0, |idx| idx + 1);
    let reached = job
        .results
        .iter()
        .map(|result| result.step_index + 1)
        .max()
        .unwrap_or(0);
    let in_progress = matches!(job.state.as_str(), "assigned" | "running");
    if in_progress {
        (done + 1).min(job.n_steps.max(1))
    } else {
        reached.max(done)
    }
}

/// A compact line for one job: node, state, current step of n, last outcome.
pub fn format_job_line(job: &pb::Job, name_width: usize) -> String {
    let mut line = format!(
        "{:<name_width$}  {:<9}  step {}/{}",
        job.node,
        job.state,
        current_step(job),
        job.n_steps
    );
    if let Some(result) = job.results.last() {
        let _ = write!(
            line,
            "  last: {} {}",
            result.step_name,
            outcome_name(result.outcome)
        );
        if result.attempt > 1 {
            let _ = write!(line, " (attempt {})", result.attempt);
        }
    }
    line
}

/// The run's job counts: `3 passed, 1 failed`, states in alphabetical order. A run without
/// counts (from a controller older than them) is counted from the jobs it carries.
pub fn format_counts(run: &pb::Run) -> String {
    if run.job_counts.is_empty() {
        return format_job_counts(&run.jobs);
    }
    let counts: BTreeMap<&str, u32> = run
        .job_counts
        .iter()
        .map(|count| (count.state.as_str(), count.count))
        .collect();
    counts
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Job states counted: `3 passed, 1 failed`.
pub fn format_job_counts(jobs: &[pb::Job]) -> String {
    if jobs.is_empty() {
        return "no jobs".to_owned();
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for job in jobs {
        *counts.entry(job.state.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `run start` prints: the run id and its jobs.
pub fn format_started(run: &pb::Run) -> String {
    let mut out = format!(
        "run {} started: plan {}@{} for release {} at {}\n",
        run.id,
        run.plan_name,
        short_hash(&run.plan_version),
        run.release,
        run.milestone
    );
    if let Some(selection) = &run.selection {
        let _ = writeln!(
            out,
            "  {} node(s) selected now, {} waiting for their current job{} to end{}",
            selection.now.len(),
            selection.waiting.len(),
            if selection.held.is_empty() {
                ""
            } else {
                " or a maintenance window"
            },
            if selection.left_out.is_empty() {
                String::new()
            } else {
                format!("; left out: {}", selection.left_out.join(", "))
            }
        );
        for why in &selection.held {
            let _ = writeln!(out, "  waiting: {why}");
        }
        if selection.n_plan_not_allowed > 0 {
            let _ = writeln!(
                out,
                "  {} node(s) left out because their allowed-plans label does not list plan {}",
                selection.n_plan_not_allowed, run.plan_name
            );
        }
    }
    let width = name_width(&run.jobs);
    for job in &run.jobs {
        let _ = writeln!(out, "  {:<width$}  {}  job {}", job.node, job.state, job.id);
    }
    out
}

/// The line printed when a watched run ends.
pub fn format_ended(run: &pb::Run) -> String {
    let took = match (
        time(run.created_at.as_ref()),
        time(run.finished_at.as_ref()),
    ) {
        (Some(start), Some(end)) => {
            let ms = u64::try_from((end - start).num_milliseconds()).unwrap_or(0);
            format!(" in {}", format_millis(ms))
        }
        _ => String::new(),
    };
    format!("run {} {}{took}: {}", run.id, run.state, format_counts(run))
}

/// A run with its jobs and every step result.
pub fn format_run(run: &pb::Run) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "run {}", run.id);
    if run.purpose == "health" {
        let _ = writeln!(
            out,
            "purpose:   periodic health check of its node (never gate or report evidence)"
        );
    }
    let _ = writeln!(out, "release:   {} at {}", run.release, run.milestone);
    let _ = writeln!(
        out,
        "plan:      {}@{}",
        run.plan_name,
        short_hash(&run.plan_version)
    );
    let _ = writeln!(out, "state:     {} ({})", run.state, format_counts(run));
    let _ = writeln!(out, "started:   {}", format_time(run.created_at.as_ref()));
    let _ = writeln!(out, "finished:  {}", format_time(run.finished_at.as_ref()));
    for job in &run.jobs {
        format_job(&mut out, job);
    }
    out
}

/// A job of `run show`: its heading (state, step, lease epoch), a table of every result with
/// the epoch and attempt it belongs to, each result's failing tests and its measurements.
fn format_job(out: &mut String, job: &pb::Job) {
    let rescheduled = if job.rescheduled_from.is_empty() {
        String::new()
    } else {
        format!(
            ", attempt {} rescheduled from job {}",
            job.attempt, job.rescheduled_from
        )
    };
    let _ = writeln!(
        out,
        "\njob {} on {}: {} (step {}/{}, lease epoch {}{rescheduled})",
        job.id,
        job.node,
        job.state,
        current_step(job),
        job.n_steps,
        job.lease_epoch
    );
    if job.results.is_empty() {
        let _ = writeln!(out, "  no results yet");
        return;
    }
    // EPOCH tells a reassigned job's attempts apart: each lease epoch numbers its attempts
    // from 1 again.
    let mut table = Table::new(&["STEP", "OUTCOME", "EPOCH", "ATTEMPT", "DURATION", "MESSAGE"]);
    for result in &job.results {
        table.row(vec![
            format!("{}. {}", result.step_index + 1, result.step_name),
            outcome_name(result.outcome).to_owned(),
            result.lease_epoch.to_string(),
            result.attempt.to_string(),
            format_millis(result.duration_ms),
            result.message.replace('\n', " "),
        ]);
    }
    out.push_str(&table.render("  "));
    for result in &job.results {
        format_failing_tests(out, result);
    }
    for result in job.results.iter().filter(|r| !r.measurements.is_empty()) {
        let measured: Vec<String> = result
            .measurements
            .iter()
            .map(|m| {
                let unit = if m.unit.is_empty() {
                    String::new()
                } else {
                    format!(" {}", m.unit)
                };
                format!("{} = {}{unit}", m.name, format_number(m.value))
            })
            .collect();
        let _ = writeln!(
            out,
            "  {} #{} measured: {}",
            result.step_name,
            result.attempt,
            measured.join(", ")
        );
    }
}

/// Under a step result, its failing tests one per line (test, GPU, outcome, message), then
/// how many other tests it had; nothing for a step without tests.
fn format_failing_tests(out: &mut String, result: &pb::StepResultSummary) {
    let failing = |s: &&pb::SubResult| {
        matches!(
            pb::Outcome::try_from(s.outcome),
            Ok(pb::Outcome::Failed | pb::Outcome::Error | pb::Outcome::Lost)
        )
    };
    let n_failing = result.sub_results.iter().filter(failing).count();
    let n_total = result.sub_results.len() + result.sub_results_not_listed as usize;
    if n_total == 0 {
        return;
    }
    let _ = writeln!(
        out,
        "  {} #{} tests: {n_failing} failing of {n_total}",
        result.step_name, result.attempt
    );
    for sub in result.sub_results.iter().filter(failing) {
        let gpu = sub
            .gpu_index
            .map(|gpu| format!(" on GPU {gpu}"))
            .unwrap_or_default();
        let message = sub.message.lines().next().unwrap_or_default().trim();
        let message = if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        };
        let _ = writeln!(
            out,
            "    {}{gpu} {}{message}",
            sub.name,
            outcome_name(sub.outcome)
        );
    }
    let others = n_total - n_failing;
    if others > 0 && n_failing > 0 {
        let _ = writeln!(out, "    and {others} other test(s) passed or skipped");
    }
}

/// Runs, one per line.
pub fn format_run_table(runs: &[pb::Run]) -> String {
    if runs.is_empty() {
        return "no runs\n".to_owned();
    }
    let mut table = Table::new(&[
        "ID",
        "RELEASE",
        "MILESTONE",
        "PLAN",
        "STATE",
        "JOBS",
        "STARTED",
    ]);
    for run in runs {
        table.row(vec![
            run.id.clone(),
            run.release.clone(),
            run.milestone.clone(),
            format!(
                "{}@{}{}",
                run.plan_name,
                short_hash(&run.plan_version),
                if run.purpose == "health" {
                    " (health check)"
                } else {
                    ""
                }
            ),
            run.state.clone(),
            format_counts(run),
            format_time(run.created_at.as_ref()),
        ]);
    }
    table.render("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_counts_from_the_runs_start_not_from_the_watch() {
        let ts = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
        let now = chrono::DateTime::from_timestamp(1_000_100, 0).expect("valid time");
        let mut run = pb::Run {
            created_at: Some(ts(1_000_000)),
            ..Default::default()
        };
        // A watch opened 100 s into the run shows 100 s, not 0.
        assert_eq!(run_elapsed(&run, now), std::time::Duration::from_secs(100));
        // An ended run stops counting at its end.
        run.finished_at = Some(ts(1_000_042));
        assert_eq!(run_elapsed(&run, now), std::time::Duration::from_secs(42));
        // No start from the controller: nothing to count from.
        run.created_at = None;
        assert_eq!(run_elapsed(&run, now), std::time::Duration::ZERO);
    }

    fn result(step_index: u32, name: &str, outcome: pb::Outcome) -> pb::StepResultSummary {
        pb::StepResultSummary {
            step_index,
            step_name: name.into(),
            attempt: 1,
            outcome: outcome as i32,
            message: String::new(),
            measurements: Vec::new(),
            duration_ms: 3100,
            sub_results: Vec::new(),
            sub_results_not_listed: 0,
            lease_epoch: 1,
        }
    }

    fn job(state: &str, results: Vec<pb::StepResultSummary>) -> pb::Job {
        pb::Job {
            id: "j1".into(),
            node: "lab-1".into(),
            state: state.into(),
            lease_epoch: 1,
            results,
            n_steps: 3,
            attempt: 1,
            rescheduled_from: String::new(),
        }
    }

    #[test]
    fn a_health_check_says_so_in_run_show_and_run_list() {
        let check = pb::Run {
            id: "run-1".into(),
            plan_name: "node-health".into(),
            plan_version: "26017f9cf4da".into(),
            purpose: "health".into(),
            ..Default::default()
        };
        assert!(
            format_run(&check).contains("purpose:   periodic health check of its node"),
            "{}",
            format_run(&check)
        );
        let table = format_run_table(std::slice::from_ref(&check));
        assert!(
            table.contains("node-health@26017f9cf4da (health check)"),
            "{table}"
        );
        let qualification = pb::Run {
            purpose: "qualification".into(),
            ..check
        };
        assert!(!format_run(&qualification).contains("purpose"));
        assert!(!format_run_table(&[qualification]).contains("health check"));
    }

    #[test]
    fn run_show_says_which_job_a_rescheduled_one_replaced() {
        let mut out = String::new();
        format_job(&mut out, &job("pending", Vec::new()));
        assert!(!out.contains("rescheduled"), "{out}");
        let again = pb::Job {
            attempt: 2,
            rescheduled_from: "j0".into(),
            ..job("pending", Vec::new())
        };
        let mut out = String::new();
        format_job(&mut out, &again);
        assert!(
            out.contains("job j1 on lab-1: pending (step 0/3, lease epoch 1, attempt 2 rescheduled from job j0)"),
            "{out}"
        );
    }

    #[test]
    fn job_lines_show_the_step_in_progress_and_the_last_outcome() {
        assert_eq!(
            format_job_line(&job("pending", vec![]), 5),
            "lab-1  pending    step 0/3"
        );
        let running = job("running", vec![result(0, "versions", pb::Outcome::Passed)]);
        assert_eq!(
            format_job_line(&running, 5),
            "lab-1  running    step 2/3  last: versions passed"
        );
        let failed = job(
            "failed",
            vec![
                result(0, "versions", pb::Outcome::Passed),
                result(1, "stress", pb::Outcome::Failed),
            ],
        );
        assert_eq!(
            format_job_line(&failed, 5),
            "lab-1  failed     step 2/3  last: stress failed"
        );
    }

    #[test]
    fn a_started_run_says_how_many_nodes_run_now_and_how_many_wait() {
        let run = pb::Run {
            id: "run-1".into(),
            jobs: vec![job("n1", Vec::new()), job("n2", Vec::new())],
            selection: Some(pb::NodeSelection {
                now: vec!["n1".into()],
                waiting: vec!["n2".into()],
                left_out: vec!["n3 is unreachable".into()],
                n_plan_not_allowed: 0,
                held: Vec::new(),
            }),
            plan_name: "burn-in".into(),
            ..Default::default()
        };
        let text = format_started(&run);
        assert!(
            text.contains(
                "1 node(s) selected now, 1 waiting for their current job to end; left out: n3 is unreachable"
            ),
            "{text}"
        );
        assert!(!text.contains("allowed-plans"), "{text}");
        let mut restricted = run.clone();
        if let Some(selection) = &mut restricted.selection {
            selection.n_plan_not_allowed = 2;
        }
        let text = format_started(&restricted);
        assert!(
            text.contains(
                "2 node(s) left out because their allowed-plans label does not list plan burn-in"
            ),
            "{text}"
        );
    }

    #[test]
    fn runs_show_every_result_with_measurements() {
        let mut stress = result(1, "stress", pb::Outcome::Passed);
        stress.measurements.push(pb::Measurement {
            name: "membw_gbps".into(),
            value: 3012.5,
            unit: "GB/s".into(),
        });
        let run = pb::Run {
            id: "run-1".into(),
            release: "r1".into(),
            plan_name: "gpu-qual".into(),
            plan_version: "abcdef0123456789".into(),
            milestone: "lab-qual".into(),
            state: "finished".into(),
            jobs: vec![job(
                "passed",
                vec![result(0, "versions", pb::Outcome::Passed), stress],
            )],
            ..Default::default()
        };
        let text = format_run(&run);
        assert!(text.contains("plan:      gpu-qual@abcdef012345"), "{text}");
        assert!(text.contains("2. stress"), "{text}");
        assert!(text.contains("3.1s"), "{text}");
        assert!(
            text.contains("stress #1 measured: membw_gbps = 3012.5 GB/s"),
            "{text}"
        );
        assert_eq!(format_ended(&run), "run run-1 finished: 1 passed");
    }

    /// The cells of the result row of `run show` whose step cell is `step`, split on the
    /// column gaps.
    fn result_row<'a>(text: &'a str, step: &str) -> Vec<Vec<&'a str>> {
        text.lines()
            .filter(|line| line.trim_start().starts_with(step))
            .map(|line| {
                line.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn run_show_tells_a_reassigned_jobs_attempts_apart_by_epoch() {
        let at = |epoch: u64, attempt: u32, outcome: pb::Outcome| pb::StepResultSummary {
            lease_epoch: epoch,
            attempt,
            ..result(0, "flash", outcome)
        };
        let mut reassigned = job(
            "passed",
            vec![
                at(1, 1, pb::Outcome::Failed),
                at(1, 2, pb::Outcome::Lost),
                at(2, 1, pb::Outcome::Passed),
            ],
        );
        reassigned.lease_epoch = 2;
        let run = pb::Run {
            jobs: vec![reassigned],
            ..Default::default()
        };
        let text = format_run(&run);
        assert!(text.contains("lease epoch 2)"), "{text}");
        let header = result_row(&text, "STEP");
        assert_eq!(
            header,
            [["STEP", "OUTCOME", "EPOCH", "ATTEMPT", "DURATION", "MESSAGE"]],
            "{text}"
        );
        // Outcome, epoch and attempt of each row: two attempts numbered 1, told apart.
        let rows: Vec<Vec<&str>> = result_row(&text, "1. flash")
            .into_iter()
            .map(|cells| cells[1..4].to_vec())
            .collect();
        assert_eq!(
            rows,
            [
                ["failed", "1", "1"],
                ["lost", "1", "2"],
                ["passed", "2", "1"]
            ],
            "{text}"
        );
    }

    #[test]
    fn the_live_bar_counts_jobs_ended_of_all_from_the_runs_counts() {
        let mut progress = Progress {
            format: Format::Text,
            bar: Some(ProgressBar::hidden()),
            job_lines: HashMap::new(),
            name_width: 0,
            state: String::new(),
        };
        // A watch message carries only the jobs that changed; the bar counts every job.
        let run = pb::Run {
            id: "run-1".into(),
            state: RUNNING.into(),
            jobs: vec![job("running", Vec::new())],
            job_counts: ["passed", "running", "lost", "pending", "cancelled"]
                .into_iter()
                .map(|state| pb::JobCount {
                    state: state.into(),
                    count: 1,
                })
                .collect(),
            n_jobs: 5,
            ..Default::default()
        };
        progress.update(&run).expect("a hidden bar draws nowhere");
        let bar = progress.bar.as_ref().expect("live");
        assert_eq!((bar.position(), bar.length()), (3, Some(5)));
        assert!(bar.message().contains("run-1 running"), "{}", bar.message());
    }

    #[test]
    fn runs_show_the_failing_tests_of_a_step_and_count_the_rest() {
        let test = |name: &str, gpu, outcome: pb::Outcome, message: &str| pb::SubResult {
            source: "dcgm-diag".into(),
            suite: "Hardware".into(),
            name: name.into(),
            gpu_index: gpu,
            outcome: outcome as i32,
            message: message.into(),
            level: Some(2),
        };
        let mut diag = result(1, "diag", pb::Outcome::Failed);
        diag.sub_results = vec![
            test(
                "memory",
                Some(1),
                pb::Outcome::Failed,
                "uncorrectable error\ndetail",
            ),
            test("pcie", None, pb::Outcome::Error, ""),
            test("memory", Some(0), pb::Outcome::Passed, "fine"),
        ];
        diag.sub_results_not_listed = 3;
        let run = pb::Run {
            jobs: vec![job("failed", vec![diag])],
            ..Default::default()
        };
        let text = format_run(&run);
        assert!(text.contains("  diag #1 tests: 2 failing of 6\n"), "{text}");
        assert!(
            text.contains("    memory on GPU 1 failed: uncorrectable error\n"),
            "{text}"
        );
        assert!(text.contains("    pcie error\n"), "{text}");
        assert!(
            text.contains("    and 4 other test(s) passed or skipped\n"),
            "{text}"
        );
        assert!(
            !text.contains("fine"),
            "passing tests are only counted: {text}"
        );
    }
}
