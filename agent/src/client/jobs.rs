//! Driving the job: accepting an assignment (or confirming one already running), starting the
//! job task in the slot, and the task itself, which runs the job's steps through
//! [`crate::runner`], spools each result (or holds it in memory when the spool fails) before
//! waking the uploader, tells heartbeats which step runs, and frees the slot when the job ends.

use super::upload::{Held, spool_or_hold};
use super::{Agent, RunningJob};
use crate::runner::{self, JobEnd, JobEvent, RunnerContext, Stop, flash};
use crate::spool::Spool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, watch};
use tollgate_domain::JobId;
use tollgate_domain::result::{Outcome, StepResult};
use tollgate_proto::v1;
use tollgate_wire::FromProto as _;

/// How a job starts on this agent.
pub(super) enum Start {
    /// From its first step: a fresh assignment.
    Fresh,
    /// From position `from`, after the reboot its flash step needed.
    AfterReboot {
        from: usize,
        failed_step: Option<String>,
    },
}

/// Where a job task's results and progress go.
struct Delivery {
    spool: Arc<Spool>,
    held: Held,
    /// Wakes the uploader.
    upload: Arc<Notify>,
    progress: mpsc::Sender<v1::AgentEvent>,
}

impl Agent {
    pub(super) fn assign(&self, assignment: v1::AssignJob) -> Option<v1::AgentEvent> {
        let job = match runner::Job::from_proto(assignment) {
            Ok(job) => job,
            Err(error) => {
                tracing::error!(%error, "cannot run the assigned job");
                return None;
            }
        };
        let accepted = |job_id: &JobId, lease_epoch: u64| v1::AgentEvent {
            event: Some(v1::agent_event::Event::JobAccepted(v1::JobAccepted {
                job_id: job_id.to_string(),
                lease_epoch,
            })),
        };
        let mut slot = self.job.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = slot.as_ref() {
            if running.job_id == job.job_id {
                // A controller that reconnected re-sends the assignment: confirm, don't rerun.
                // A reassignment carries a newer epoch: acknowledge under it, and the results
                // still to come carry it too (the old epoch is fenced off).
                let epoch = running
                    .lease_epoch
                    .fetch_max(job.lease_epoch, Ordering::SeqCst)
                    .max(job.lease_epoch);
                return Some(accepted(&running.job_id, epoch));
            }
            tracing::warn!(running = %running.job_id, assigned = %job.job_id, "already running a job; assignment ignored");
            return None;
        }
        tracing::info!(
            job = %job.job_id,
            release = %job.release,
            milestone = %job.milestone,
            plan = %job.plan_name,
            steps = job.steps.len(),
            "job started"
        );
        let reply = accepted(&job.job_id, job.lease_epoch);
        self.start_job(&mut slot, job, Start::Fresh);
        Some(reply)
    }

    /// Spawns the job's task and puts it in the (locked, empty) slot. The slot stays locked
    /// while the task is spawned, so the task's own removal of the slot entry always comes
    /// after this insertion.
    pub(super) fn start_job(&self, slot: &mut Option<RunningJob>, job: runner::Job, start: Start) {
        let (stop, stop_receiver) = watch::channel(None);
        let job_id = job.job_id.clone();
        let lease_epoch = Arc::new(AtomicU64::new(job.lease_epoch));
        let step = Arc::new(Mutex::new(None));
        let task = tokio::spawn(drive_job(
            self.runner_context(),
            job,
            start,
            stop_receiver,
            Delivery {
                spool: Arc::clone(&self.spool),
                held: Arc::clone(&self.held),
                upload: Arc::clone(&self.upload),
                progress: self.progress_sender.clone(),
            },
            Arc::clone(&self.job),
            Arc::clone(&lease_epoch),
            Arc::clone(&step),
        ));
        *slot = Some(RunningJob {
            job_id,
            lease_epoch,
            step,
            stop,
            task,
        });
    }

    /// Stops the running job, if any, and waits until its results are spooled.
    pub(super) async fn stop_job(&self, reason: Stop) {
        let running = self
            .job
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(running) = running {
            tracing::info!(job = %running.job_id, "stopping the running job");
            let _ = running.stop.send(Some(reason));
            let _ = running.task.await;
        }
    }
}

/// Runs a job, spooling each result (or holding it in memory when the spool fails) before
/// waking the uploader, then frees the job slot. A job whose flash waits for a reboot keeps
/// the slot until the agent stops (the reboot) or the controller cancels it (then its resume
/// record is removed).
#[expect(
    clippy::too_many_arguments,
    reason = "each argument is a distinct handle the job task owns"
)]
async fn drive_job(
    context: RunnerContext,
    job: runner::Job,
    start: Start,
    stop: watch::Receiver<Option<Stop>>,
    delivery: Delivery,
    slot: Arc<Mutex<Option<RunningJob>>>,
    lease_epoch: Arc<AtomicU64>,
    step: Arc<Mutex<Option<(u32, u32)>>>,
) {
    let (events, receiver) = mpsc::unbounded_channel();
    let run = run_to_end(&context, &job, start, stop, events);
    let deliver = deliver_events(&job, receiver, &delivery, &lease_epoch, &step);
    let ((), outcomes) = tokio::join!(run, deliver);
    let passed = outcomes.iter().filter(|o| **o == Outcome::Passed).count();
    tracing::info!(job = %job.job_id, results = outcomes.len(), passed, "job ended");
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if slot
        .as_ref()
        .is_some_and(|running| running.job_id == job.job_id)
    {
        *slot = None;
    }
}

/// Runs the job's steps; when its flash waits for a reboot, waits until the agent stops or
/// the controller cancels the job. Dropping `events` at the end ends [`deliver_events`].
async fn run_to_end(
    context: &RunnerContext,
    job: &runner::Job,
    start: Start,
    stop: watch::Receiver<Option<Stop>>,
    events: mpsc::UnboundedSender<JobEvent>,
) {
    let stop_after = stop.clone();
    let end = match start {
        Start::Fresh => runner::run_job(context, job, stop, &events).await,
        Start::AfterReboot { from, failed_step } => {
            runner::continue_job(context, job, from, failed_step, stop, &events).await
        }
    };
    drop(events);
    if end == JobEnd::AwaitingReboot {
        wait_for_reboot(context, job, stop_after).await;
    }
}

/// Keeps a job whose flash needs a reboot in its slot until the agent stops (it resumes at
/// the next start) or the controller cancels it (its resume record is removed).
async fn wait_for_reboot(
    context: &RunnerContext,
    job: &runner::Job,
    mut stop: watch::Receiver<Option<Stop>>,
) {
    tracing::info!(job = %job.job_id, "the node must reboot to finish the flash; the job waits for it");
    let reason = stop
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|reason| reason.clone());
    if let Some(Stop::Cancelled(reason)) = reason {
        match flash::clear(&context.state_dir) {
            Ok(()) => {
                tracing::info!(job = %job.job_id, %reason, "job cancelled while waiting for the reboot; its resume record is removed")
            }
            Err(error) => {
                tracing::error!(job = %job.job_id, %error, "job cancelled while waiting for the reboot, but its resume record could not be removed")
            }
        }
    } else {
        tracing::info!(job = %job.job_id, "the agent stops while the job waits for the reboot; it resumes at the next start");
    }
}

/// Handles the runner's events until it is done: a started step is shown in heartbeats and
/// sent as progress; a result is kept (see [`keep_result`]). Returns the results' outcomes.
async fn deliver_events(
    job: &runner::Job,
    mut receiver: mpsc::UnboundedReceiver<JobEvent>,
    delivery: &Delivery,
    lease_epoch: &AtomicU64,
    step: &Mutex<Option<(u32, u32)>>,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    while let Some(event) = receiver.recv().await {
        match event {
            JobEvent::StepStarted {
                step_index,
                attempt,
            } => {
                *step.lock().unwrap_or_else(|p| p.into_inner()) = Some((step_index, attempt));
                let started = v1::AgentEvent {
                    event: Some(v1::agent_event::Event::StepStarted(v1::StepStarted {
                        job_id: job.job_id.to_string(),
                        lease_epoch: job.lease_epoch,
                        step_index,
                        attempt,
                    })),
                };
                // Progress is informational: when no session drains it, drop it.
                let _ = delivery.progress.try_send(started);
            }
            JobEvent::Result(mut result, kept) => {
                mark_gpu_lost(&mut result);
                outcomes.push(result.outcome);
                keep_result(&result, delivery, lease_epoch).await;
                // Only once the result is spooled or held does the step stop showing in
                // heartbeats, so the controller never sees it neither running nor owed.
                let mut current = step.lock().unwrap_or_else(|p| p.into_inner());
                if *current == Some((result.step_index, result.attempt)) {
                    *current = None;
                }
                drop(current);
                // Only now may the runner start the next attempt and drop the attempt's
                // process group record.
                kept.done();
                delivery.upload.notify_one();
            }
        }
    }
    outcomes
}

/// Spools a result under the job's latest lease epoch, or holds it in memory when the spool
/// cannot take it.
async fn keep_result(result: &StepResult, delivery: &Delivery, lease_epoch: &AtomicU64) {
    let mut wire = tollgate_wire::step_result_for_upload(result);
    wire.lease_epoch = wire.lease_epoch.max(lease_epoch.load(Ordering::SeqCst));
    match spool_or_hold(&delivery.spool, &delivery.held, wire).await {
        Ok(path) => tracing::debug!(path = %path.display(), "result spooled"),
        Err(error) => tracing::error!(
            %error,
            job = %result.job_id,
            step = %result.step_name,
            attempt = result.attempt,
            "could not spool a result; it is kept in memory and sent from there until \
             acknowledged (free space in the state directory: an agent restart before then \
             loses it, and the controller records the attempt as interrupted)"
        ),
    }
}

/// A GPU that fell off the bus during an attempt fails it, whatever its process said: the
/// evidence it produced cannot be trusted.
fn mark_gpu_lost(result: &mut tollgate_domain::result::StepResult) {
    use tollgate_domain::result::Outcome;
    use tollgate_domain::telemetry::EventKind;
    let lost: Vec<String> = result
        .events
        .iter()
        .filter(|event| event.kind == EventKind::GpuLost)
        .map(|event| event.gpu_index.to_string())
        .collect();
    if lost.is_empty() || matches!(result.outcome, Outcome::Failed) {
        return;
    }
    if matches!(result.outcome, Outcome::Passed | Outcome::Error) {
        result.outcome = Outcome::Failed;
        result.message = format!(
            "GPU {} fell off the bus during the step (gpu-lost); {}",
            lost.join(", "),
            result.message
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_gpu_fails_the_step() {
        use tollgate_domain::result::Outcome;
        use tollgate_domain::telemetry::{EventKind, GpuEvent};
        let mut result = tollgate_domain::test_support::step_result(0, 1, Outcome::Passed);
        mark_gpu_lost(&mut result);
        assert_eq!(result.outcome, Outcome::Passed);
        result.events.push(GpuEvent {
            gpu_index: 3,
            gpu_uuid: "GPU-3".into(),
            kind: EventKind::GpuLost,
            code: 0,
            at: result.started_at,
            detail: String::new(),
        });
        mark_gpu_lost(&mut result);
        assert_eq!(result.outcome, Outcome::Failed);
        assert!(
            result.message.starts_with("GPU 3 fell off the bus"),
            "{}",
            result.message
        );
    }
}
