//! What a previous run of the agent left behind, dealt with before the first heartbeat: a job
//! to continue after the reboot its flash step needed (the resume record, see
//! [`crate::runner::resume`]), and an attempt a killed agent left running (its processes are
//! killed and the attempt is reported as `error`, see [`crate::runner::orphans`]).

use super::Agent;
use super::jobs::Start;
use super::upload::{spool_or_hold, upload_pass};
use crate::runner;
use crate::runner::flash::{self, ResumeRecord};
use crate::runner::orphans::AttemptId;
use crate::runner::resume;
use std::sync::Arc;
use tollgate_domain::fleet::Inventory;
use tollgate_domain::result::{Outcome, StepResult};
use tollgate_proto::v1;
use tollgate_proto::v1::agent_service_client::AgentServiceClient;
use tonic::Status;
use tonic::transport::Channel;

/// A resume record this agent will act on, and how far it got.
pub(super) struct PendingResume {
    record: ResumeRecord,
    /// Set once the flash result is spooled.
    flash: Option<SpooledFlash>,
}

/// The flash result after the reboot, spooled and waiting for the controller's answer.
pub(super) struct SpooledFlash {
    /// The job's position to continue from (the step after the flash).
    from: usize,
    /// The flash step's name when it did not pass: the remaining steps are then skipped.
    failed_step: Option<String>,
    /// The controller's answer: `Ok` acknowledged, `Err` refused with its reason.
    answer: Option<Result<(), String>>,
}

impl PendingResume {
    /// Records the controller's answer to `result` if it is the spooled flash result.
    pub(super) fn note(&mut self, result: &v1::StepResult, answer: Result<(), &Status>) {
        if let Some(flash) = self.flash.as_mut()
            && self.record.job.job_id.as_str() == result.job_id
            && self.record.job.lease_epoch == result.lease_epoch
            && self.record.step_index == result.step_index
            && self.record.attempt == result.attempt
        {
            flash.answer = Some(answer.map_err(|status| status.message().to_owned()));
        }
    }
}

impl Agent {
    /// Reads the resume record a flash left before the node rebooted. A record this agent
    /// cannot use (corrupt, unreadable, or written for another node or controller) is moved
    /// aside and logged, never read again, so it cannot stop the agent at every start; the
    /// controller then treats the job as interrupted, as for any restart.
    pub(super) fn load_resume_record(&self) {
        let state_dir = &self.config.state_dir;
        let set_aside = |why: &str| match flash::set_aside(state_dir, why) {
            Ok(path) => path.display().to_string(),
            Err(error) => format!("not moved: {error}"),
        };
        let record = match flash::read(state_dir) {
            Ok(None) => return,
            Ok(Some(record)) => record,
            Err(error) => {
                let kept = set_aside(match error {
                    flash::ResumeError::Corrupt { .. } => "corrupt",
                    flash::ResumeError::Io { .. } => "unreadable",
                });
                tracing::error!(
                    %error,
                    kept_at = %kept,
                    "the resume record of a flash cannot be read; its job is not resumed (the \
                     controller records it as interrupted)"
                );
                return;
            }
        };
        if let Err(problem) =
            resume::check_owner(&record, &self.config.node, &self.config.controller)
        {
            let kept = set_aside("other-owner");
            tracing::error!(
                job = %record.job.job_id,
                %problem,
                kept_at = %kept,
                "the resume record of a flash is not this agent's; its job is not resumed"
            );
            return;
        }
        tracing::info!(
            job = %record.job.job_id,
            step_index = record.step_index,
            attempt = record.attempt,
            lease_epoch = record.job.lease_epoch,
            "a flash waited for this restart; its job continues once the controller has its result"
        );
        *self.resume.lock().unwrap_or_else(|p| p.into_inner()) = Some(PendingResume {
            record,
            flash: None,
        });
    }

    /// Resolves a pending resume, before the session's first heartbeat: checks the flash and
    /// spools its result (once), delivers the spool in order, and acts on the controller's
    /// answer to the flash result. `Err` (retry the session) while the controller could not
    /// be reached; the record stays on disk until the answer came.
    pub(super) async fn resume_after_reboot(
        &self,
        client: &mut AgentServiceClient<Channel>,
        token: &str,
    ) -> Result<(), String> {
        let (record, spooled) = {
            let pending = self.resume.lock().unwrap_or_else(|p| p.into_inner());
            match pending.as_ref() {
                None => return Ok(()),
                Some(pending) => (pending.record.clone(), pending.flash.is_some()),
            }
        };
        if !spooled && !self.spool_flash_result(&record).await? {
            return Ok(());
        }
        // Everything spooled goes first, in order: results of the steps before the flash
        // that were not acknowledged before the reboot, then the flash result.
        {
            let _uploading = self.uploading.lock().await;
            upload_pass(client, &self.spool, &self.held, token, &self.answers()).await?;
        }
        let Some(PendingResume {
            record,
            flash: Some(flash),
        }) = self.resume.lock().unwrap_or_else(|p| p.into_inner()).take()
        else {
            return Ok(());
        };
        if let Err(error) = flash::clear(&self.config.state_dir) {
            tracing::error!(%error, job = %record.job.job_id, "could not remove the resume record; remove it by hand, or the next start reports the flash again");
        }
        self.act_on_flash_answer(record, flash);
        Ok(())
    }

    /// Checks the flash after the reboot and spools its result. `Ok(false)` when the record
    /// cannot be resumed (it is set aside and forgotten); `Err` when the spool failed.
    async fn spool_flash_result(&self, record: &ResumeRecord) -> Result<bool, String> {
        let job_id = &record.job.job_id;
        let (result, from) = match resume::flash_result(&self.runner_context(), record).await {
            Ok(checked) => checked,
            Err(problem) => {
                let kept = flash::set_aside(&self.config.state_dir, "unusable")
                    .map_or_else(|e| format!("not moved: {e}"), |p| p.display().to_string());
                tracing::error!(job = %job_id, %problem, kept_at = %kept, "the resume record cannot be resumed");
                *self.resume.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Ok(false);
            }
        };
        let failed_step = (result.outcome != Outcome::Passed).then(|| result.step_name.clone());
        let wire = tollgate_wire::step_result_for_upload(&result);
        let spool = Arc::clone(&self.spool);
        match tokio::task::spawn_blocking(move || spool.write(&wire)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(format!("spooling the flash result: {error}")),
            Err(error) => return Err(format!("spooling the flash result: {error}")),
        }
        if let Some(pending) = self
            .resume
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            pending.flash = Some(SpooledFlash {
                from,
                failed_step,
                answer: None,
            });
        }
        Ok(true)
    }

    /// Continues the job after an acknowledged flash result; after a refusal (or none) its
    /// remaining steps are not run, and the log says why.
    fn act_on_flash_answer(&self, record: ResumeRecord, flash: SpooledFlash) {
        let job_id = record.job.job_id.clone();
        match flash.answer {
            Some(Ok(())) => {
                let job = record.job;
                if flash.from >= job.steps.len() {
                    tracing::info!(job = %job_id, "the flash was the job's last step");
                    return;
                }
                tracing::info!(job = %job_id, from_step = flash.from, lease_epoch = job.lease_epoch, "job continues after the reboot");
                let mut slot = self.job.lock().unwrap_or_else(|p| p.into_inner());
                self.start_job(
                    &mut slot,
                    job,
                    Start::AfterReboot {
                        from: flash.from,
                        failed_step: flash.failed_step,
                    },
                );
            }
            Some(Err(reason)) => tracing::warn!(
                job = %job_id,
                lease_epoch = record.job.lease_epoch,
                %reason,
                "the controller refused the flash result after the reboot: it no longer runs \
                 this job (declared lost or reassigned while the node was away); the resume \
                 record is dropped and the job's remaining steps are not run"
            ),
            None => tracing::error!(
                job = %job_id,
                "the flash result left the spool unanswered (see spool/corrupt); the resume \
                 record is dropped and the job's remaining steps are not run"
            ),
        }
    }

    /// Kills what the previous agent's interrupted attempt left running (see
    /// [`runner::orphans`]) and reports that attempt as an `error` result, before the first
    /// session: the first heartbeat then counts it unsent, and the controller decides about
    /// the job once it has it.
    pub(super) async fn report_leftover_attempt(&self) {
        let state_dir = &self.config.state_dir;
        let leftover = match runner::orphans::recover(state_dir).await {
            Ok(Some(leftover)) => leftover,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(%error, "cannot read the interrupted step's process group record; its processes, if any, are not killed");
                return;
            }
        };
        let attempt = &leftover.attempt;
        if self.is_resumed(attempt) {
            // A flash killed between writing its resume record and dropping its group record:
            // the resume reports this attempt; an `error` for it too would contradict it.
            tracing::info!(job = %attempt.job_id, step = %attempt.step_name, "the interrupted attempt is a flash waiting for this restart; its resume record reports it");
            if let Err(error) = runner::orphans::clear(state_dir) {
                tracing::error!(%error, "could not remove the process group record");
            }
            return;
        }
        let message = format!(
            "interrupted: the agent restarted during step {} (attempt {}); {}",
            attempt.step_name, attempt.attempt, leftover.processes
        );
        tracing::warn!(
            job = %attempt.job_id,
            step = %attempt.step_name,
            attempt = attempt.attempt,
            n_killed = leftover.n_killed,
            "{message}"
        );
        let inventory = runner::observe_inventory(&self.source)
            .await
            .unwrap_or_default();
        let wire =
            tollgate_wire::step_result_for_upload(&interrupted_result(attempt, inventory, message));
        if let Err(error) = spool_or_hold(&self.spool, &self.held, wire).await {
            tracing::error!(%error, "could not spool the interrupted attempt's result; it is kept in memory");
        }
        if let Err(error) = runner::orphans::clear(state_dir) {
            tracing::error!(%error, "could not remove the process group record; the next start reports the attempt again (the controller deduplicates it)");
        }
    }

    /// Whether `attempt` is the flash the pending resume record reports.
    fn is_resumed(&self, attempt: &AttemptId) -> bool {
        self.resume
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|pending| {
                pending.record.job.job_id == attempt.job_id
                    && pending.record.step_index == attempt.step_index
                    && pending.record.attempt == attempt.attempt
            })
    }
}

/// The `error` result of an attempt the agent's restart interrupted.
fn interrupted_result(attempt: &AttemptId, inventory: Inventory, message: String) -> StepResult {
    StepResult {
        job_id: attempt.job_id.clone(),
        step_index: attempt.step_index,
        step_name: attempt.step_name.clone(),
        attempt: attempt.attempt,
        lease_epoch: attempt.lease_epoch,
        outcome: Outcome::Error,
        exit_code: None,
        started_at: attempt.started_at,
        finished_at: crate::clock::now(),
        measurements: Vec::new(),
        telemetry: Vec::new(),
        events: Vec::new(),
        inventory,
        log_tail: String::new(),
        message,
        sub_results: Vec::new(),
        inventory_at_end: None,
        series: Vec::new(),
    }
}
