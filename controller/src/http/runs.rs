//! A run: live progress by node and step. The grid is rendered on the server; with script,
//! an `EventSource` on `/runs/{id}/events` receives the grid again (server-sent events) each
//! time the controller records a change, so a result shows without a reload. Without script
//! the page is the same grid as of its load.

use super::layout::{self, badge, duration_ms, report_links, time};
use super::session::{Caller, PageError, encode};
use axum::extract::Path;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use std::convert::Infallible;
use std::time::Duration;
use tollgate_proto::v1::{
    self as pb, plan_service_server::PlanService, run_service_server::RunService,
};

/// `GetRun`.
pub const GET_RUN: &str = "/tollgate.v1.RunService/GetRun";
/// `GetPlan`.
pub const GET_PLAN: &str = "/tollgate.v1.PlanService/GetPlan";
/// Jobs shown: GetRun's largest page.
const JOBS_SHOWN: u32 = 1000;
/// How long changes are gathered before the grid is sent again.
const COALESCE: Duration = Duration::from_millis(150);

/// A run's job counts, in words.
pub fn counts(run: &pb::Run) -> String {
    run.job_counts
        .iter()
        .map(|count| format!("{} {}", count.count, count.state))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The run with its first page of jobs and results, and the plan's step names (from the
/// pinned plan when the caller may read plans, else from the results seen).
async fn load(caller: &Caller, id: &str) -> Result<(pb::Run, Vec<String>), PageError> {
    let runs = crate::grpc::run::RunApi::new(caller.shared.clone());
    let run = caller
        .rpc(
            GET_RUN,
            pb::GetRunRequest {
                id: id.to_owned(),
                page_size: JOBS_SHOWN,
                page_token: String::new(),
            },
            |request| runs.get_run(request),
        )
        .await?;
    let mut steps = Vec::new();
    if caller.may(GET_PLAN) {
        let plans = crate::grpc::plan::PlanApi::new(caller.shared.clone());
        if let Ok(plan) = caller
            .rpc(
                GET_PLAN,
                pb::GetPlanRequest {
                    name: run.plan_name.clone(),
                    version: run.plan_version.clone(),
                },
                |request| plans.get_plan(request),
            )
            .await
        {
            steps = plan.steps;
        }
    }
    let n_steps = run.jobs.iter().map(|job| job.n_steps).max().unwrap_or(0) as usize;
    steps.resize(steps.len().max(n_steps), String::new());
    for job in &run.jobs {
        for result in &job.results {
            if let Some(name) = steps.get_mut(result.step_index as usize)
                && name.is_empty()
            {
                name.clone_from(&result.step_name);
            }
        }
    }
    for (idx, name) in steps.iter_mut().enumerate() {
        if name.is_empty() {
            *name = format!("step {}", idx + 1);
        }
    }
    Ok((run, steps))
}

fn outcome(result: &pb::StepResultSummary) -> &'static str {
    match pb::Outcome::try_from(result.outcome).unwrap_or(pb::Outcome::Unspecified) {
        pb::Outcome::Passed => "passed",
        pb::Outcome::Failed => "failed",
        pb::Outcome::Error => "error",
        pb::Outcome::Skipped => "skipped",
        pb::Outcome::Lost => "lost",
        pb::Outcome::Unspecified => "unknown",
    }
}

/// The latest attempt of each step of a job (the highest lease epoch, then attempt).
fn latest(job: &pb::Job, step: usize) -> Option<&pb::StepResultSummary> {
    job.results
        .iter()
        .filter(|result| result.step_index as usize == step)
        .max_by_key(|result| (result.lease_epoch, result.attempt))
}

/// The live part of the page: the node × step grid and the failures.
pub fn grid(run: &pb::Run, steps: &[String]) -> Markup {
    let failures: Vec<(&pb::Job, &pb::StepResultSummary)> = run
        .jobs
        .iter()
        .flat_map(|job| job.results.iter().map(move |result| (job, result)))
        .filter(|(_, result)| !matches!(outcome(result), "passed" | "skipped"))
        .collect();
    html! {
        p.counts role="status" { (badge(&run.state)) " " (run.n_jobs) " jobs: " (counts(run)) }
        div.scroll {
            table.grid {
                thead { tr { th { "Node" } th { "Job" } @for step in steps { th { (step) } } } }
                tbody { @for job in &run.jobs {
                    tr data-node=(job.node) {
                        th scope="row" { a href={ "/nodes/" (encode(&job.node)) } { (job.node) } }
                        td { (badge(&job.state)) @if job.attempt > 1 { div.muted { "attempt " (job.attempt) } } }
                        @for idx in 0..steps.len() {
                            @match latest(job, idx) {
                                Some(result) => {
                                    td class={ "cell " (outcome(result)) } title=(result.message) {
                                        span.o { (outcome(result)) }
                                        span.d { (duration_ms(result.duration_ms)) }
                                        @if result.attempt > 1 { span.d { " · try " (result.attempt) } }
                                    }
                                },
                                None => { td.cell.none { span.o { "—" } } },
                            }
                        }
                    }
                } }
            }
        }
        @if !run.next_page_token.is_empty() {
            p.muted { "The first " (JOBS_SHOWN) " jobs are shown; " code { "tollgate run show" } " pages through all of them." }
        }
        section.failures {
            h2 { "Failures" }
            @if failures.is_empty() { p.muted { "None so far." } }
            @for (job, result) in &failures {
                div.failure {
                    p { a href={ "/nodes/" (encode(&job.node)) } { (job.node) } " · " b { (result.step_name) }
                        " attempt " (result.attempt) " " (badge(outcome(result))) " " (result.message) }
                    @let failing: Vec<&pb::SubResult> = result.sub_results.iter()
                        .filter(|sub| matches!(pb::Outcome::try_from(sub.outcome), Ok(pb::Outcome::Failed | pb::Outcome::Error)))
                        .collect();
                    @if !failing.is_empty() {
                        ul.tests { @for sub in failing {
                            li { code { (sub.suite) "/" (sub.name) } @if let Some(gpu) = sub.gpu_index { " GPU " (gpu) } " — " (sub.message) }
                        } }
                    }
                }
            }
        }
    }
}

/// The run page.
pub async fn show(caller: Caller, Path(id): Path<String>) -> Result<Response, PageError> {
    let (run, steps) = load(&caller, &id).await?;
    let live = run.state == "running";
    let body = html! {
        h1 { "Run " (run.id) }
        dl.facts {
            dt { "Release" } dd { a href={ "/releases/" (encode(&run.release)) } { (run.release) } " at " (run.milestone) }
            dt { "Plan" } dd { (run.plan_name) " " code { (run.plan_version.get(..12).unwrap_or(&run.plan_version)) } }
            dt { "Purpose" } dd { (run.purpose) }
            dt { "Started" } dd { (time(run.created_at.as_ref())) }
            dt { "Finished" } dd { (time(run.finished_at.as_ref())) }
        }
        p { (report_links(&run.release, &run.milestone)) }
        @if live { p.muted.live { "Updates as results arrive (reload without script)." } }
        div #grid data-events=[live.then(|| format!("/runs/{}/events", encode(&run.id)))] { (grid(&run, &steps)) }
    };
    Ok(layout::page(
        &caller,
        &format!("Run {}", run.id),
        "/releases",
        body,
    ))
}

/// The run's grid as server-sent events: `grid` with the grid's HTML each time it changes,
/// then `end` once the run is no longer running (or the controller shuts down). Every event
/// carries data: a browser drops an event whose data is empty. A stream that outlives the
/// listener's idle timeout (the browser sends nothing on it) is closed; `EventSource` then
/// reconnects by itself and is sent the grid as it is now.
pub async fn events(caller: Caller, Path(id): Path<String>) -> Result<Response, PageError> {
    // An unknown run, or one the caller may not see, is refused before the stream opens.
    let (run, steps) = load(&caller, &id).await?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(4);
    let shared = caller.shared.clone();
    tokio::spawn(async move {
        let mut changes = shared.subscribe_changes();
        let mut shutdown = shared.subscribe_shutdown();
        let mut shown = grid(&run, &steps).into_string();
        let mut running = run.state == "running";
        if sender
            .send(Ok(Event::default().event("grid").data(shown.as_str())))
            .await
            .is_err()
        {
            return;
        }
        while running {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = shutdown.wait_for(|stopping| *stopping) => break,
                () = sender.closed() => return,
            }
            tokio::time::sleep(COALESCE).await;
            let Ok((run, steps)) = load(&caller, &id).await else {
                break;
            };
            running = run.state == "running";
            let fresh = grid(&run, &steps).into_string();
            if fresh != shown {
                shown = fresh;
                if sender
                    .send(Ok(Event::default().event("grid").data(shown.as_str())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let _ = sender
            .send(Ok(Event::default()
                .event("end")
                .data("the run is no longer running")))
            .await;
    });
    Ok(
        Sse::new(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .keep_alive(KeepAlive::default())
            .into_response(),
    )
}
