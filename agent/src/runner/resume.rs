//! Resuming a job across the reboot a `flash` step needs.
//!
//! When a flash needs a reboot (`reboot: true`, or the installer exits
//! [`FLASH_REBOOT_EXIT_CODE`](tollgate_domain::plan::FLASH_REBOOT_EXIT_CODE)), the runner writes a
//! [`ResumeRecord`] to `<state-dir>/resume.json` (written to a temporary file, fsynced, renamed,
//! and the directory fsynced; the record and its file live in [`super::flash`]) and ends the
//! attempt without a result. The job keeps its slot (heartbeats still name it) until the agent
//! stops; the node then reboots (the installer or the operator reboots it; the agent does not).
//!
//! When the agent starts again ([`crate::client`]), it reads the record before anything else.
//! A record it cannot use is moved aside with [`super::flash::set_aside`] and logged, never
//! retried at every start: a corrupt one, or one written for another node or controller
//! ([`check_owner`]).
//! Otherwise, after registering and before its first heartbeat, the agent re-reads the
//! inventory and builds the flash attempt's result under the recorded job, attempt and lease
//! epoch ([`flash_result`]), spools it, and delivers it. Acknowledged: the record is removed and
//! the job's remaining steps run, reported as the running job in every heartbeat, so the
//! controller does not take the restart for an interruption. Refused (the controller declared
//! the job lost or reassigned it while the node was away): the record is removed, the result
//! stays in `spool/rejected`, and nothing more of the job runs.
//!
//! The controller keeps the job running while the node is away only within its lease grace:
//! a lab that flashes with reboots must run the controller with `--lease-grace` longer than a
//! reboot takes, or the job is declared lost and the resumed result is refused as stale.

use super::flash::{ResumeRecord, boot_id, verify_flash};
use super::{RunnerContext, observe_inventory, unknown_inventory};
use tollgate_domain::plan::StepKind;
use tollgate_domain::result::{Outcome, StepResult};

/// Whether this agent may resume `record`: it must have been written by this node for this
/// controller. A record for another node or controller (a state directory copied between
/// nodes, an agent re-pointed at another controller) would report a job this agent does not
/// own; the error says which fields differ.
pub fn check_owner(record: &ResumeRecord, node: &str, controller: &str) -> Result<(), String> {
    let mut problems = Vec::new();
    if record.node != node {
        problems.push(format!(
            "it was written for node '{}', this agent is node '{node}'",
            record.node
        ));
    }
    if record.controller != controller {
        problems.push(format!(
            "it was written for controller {}, this agent reports to {controller}",
            record.controller
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The flash attempt's result after the reboot, and the position in the job of the step after
/// the flash. The flash passes iff its component now reports the target version; otherwise it
/// fails naming what was found. `Err` when the record names no flash step of its job.
pub async fn flash_result(
    context: &RunnerContext,
    record: &ResumeRecord,
) -> Result<(StepResult, usize), String> {
    let job = &record.job;
    let position = job
        .steps
        .iter()
        .position(|s| s.index == record.step_index)
        .ok_or_else(|| {
            format!(
                "the resume record names step {} of job {}, which has no such step",
                record.step_index, job.job_id
            )
        })?;
    let job_step = &job.steps[position];
    let StepKind::Flash {
        component, version, ..
    } = &job_step.step.kind
    else {
        return Err(format!(
            "the resume record names step {} ({}), a {} step, not a flash",
            record.step_index,
            job_step.step.name,
            job_step.step.kind.name()
        ));
    };
    let (outcome, message) = verify_flash(context, component, version).await;
    let now_boot = boot_id();
    let rebooted = record.boot_id.is_empty() || now_boot.is_empty() || record.boot_id != now_boot;
    let message = match (rebooted, outcome) {
        (true, _) => format!("{message} (checked after the reboot)"),
        (false, Outcome::Passed) => format!("{message} (checked after the agent restarted)"),
        (false, _) => format!(
            "{message} (checked after the agent restarted; the node has not rebooted since \
             the flash: its boot id is unchanged)"
        ),
    };
    let inventory = observe_inventory(&context.source)
        .await
        .unwrap_or_else(|_| unknown_inventory(&context.source));
    let result = StepResult {
        job_id: job.job_id.clone(),
        step_index: job_step.index,
        step_name: job_step.step.name.clone(),
        attempt: record.attempt,
        lease_epoch: job.lease_epoch,
        outcome,
        exit_code: None,
        started_at: record.started_at,
        finished_at: crate::clock::now(),
        measurements: Vec::new(),
        telemetry: Vec::new(),
        events: Vec::new(),
        inventory: inventory.clone(),
        log_tail: String::new(),
        message,
        sub_results: Vec::new(),
        inventory_at_end: Some(inventory),
        series: Vec::new(),
    };
    tracing::info!(job = %job.job_id, step = %job_step.step.name, outcome = %outcome, message = %result.message, "flash checked after the restart");
    Ok((result, position + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ResumeRecord {
        crate::runner::flash::tests::record()
    }

    #[test]
    fn a_record_of_another_node_or_controller_is_not_resumed() {
        let record = record();
        assert_eq!(
            check_owner(&record, "node-1", "http://127.0.0.1:7800"),
            Ok(())
        );
        let other_node = check_owner(&record, "node-2", "http://127.0.0.1:7800").unwrap_err();
        assert_eq!(
            other_node,
            "it was written for node 'node-1', this agent is node 'node-2'"
        );
        let other_controller = check_owner(&record, "node-1", "http://10.0.0.5:7800").unwrap_err();
        assert!(
            other_controller.contains("written for controller http://127.0.0.1:7800"),
            "{other_controller}"
        );
    }
}
