//! The job state machine: one job is one run's work on one node.
//!
//! ```text
//!   pending ──assign──▶ assigned ──accept──▶ running ──last result──▶ passed | failed | error
//!      │                   │                    │
//!      │                   ◀──agent dropped it──┤
//!      └──cancel──▶ cancelled ◀──cancel─────────┤
//!                          └──lease expired──▶ lost ◀──lease expired──┘
//! ```

use crate::result::{Outcome, StepResult, final_attempt};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where a job is. Each variant's doc says what is true in that state.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case", parse_err_ty = String, parse_err_fn = crate::names::unknown::<Self>)]
pub enum JobState {
    /// Created for its node; not yet sent to the agent.
    #[default]
    Pending,
    /// Sent to the agent under a lease epoch; the agent has not confirmed it.
    Assigned,
    /// The agent confirmed it and is running its steps.
    Running,
    /// Every step's final attempt passed.
    Passed,
    /// Some step's final attempt failed (the thing under test failed).
    Failed,
    /// Some step's final attempt errored (the harness failed) and none failed.
    Error,
    /// The node's lease ran out while the job was assigned or running.
    Lost,
    /// Cancelled before it ended.
    Cancelled,
}

impl JobState {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl JobState {
    /// Whether the job has ended; nothing changes it after that.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Passed | Self::Failed | Self::Error | Self::Lost | Self::Cancelled
        )
    }

    /// Whether the job occupies its node.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Assigned | Self::Running)
    }
}

/// Something that happens to a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobEvent {
    /// The scheduler sent the job to its node.
    Assigned,
    /// The agent confirmed the job.
    Accepted,
    /// A step result arrived; `finished` carries the job's end state when it was the last one.
    StepReported {
        /// The state the job ends in, when this result ended it (see [`final_state`]).
        finished: Option<JobState>,
    },
    /// The node's lease ran out.
    LeaseExpired,
    /// A manager cancelled the run.
    Cancelled,
    /// The agent no longer runs the job and the step it was in has attempts left (see
    /// [`compare_heartbeat`]): the job is assigned again under a new lease epoch.
    AgentRestarted,
}

/// An event that does not apply in the job's state.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("job in state {state} cannot take event {event}")]
pub struct TransitionError {
    /// The state.
    pub state: JobState,
    /// The event, as text.
    pub event: String,
}

/// The one place job transitions are defined.
pub fn next(state: JobState, event: JobEvent) -> Result<JobState, TransitionError> {
    use JobEvent as E;
    use JobState as S;
    let next = match (state, event) {
        (S::Pending, E::Assigned) => S::Assigned,
        // A result can overtake the acceptance on the wire: it means the agent runs the job.
        (S::Assigned, E::Accepted) | (S::Running, E::Accepted) => S::Running,
        (S::Assigned | S::Running, E::StepReported { finished: None }) => S::Running,
        (
            S::Assigned | S::Running,
            E::StepReported {
                finished: Some(end),
            },
        ) if end.is_terminal() => end,
        (S::Assigned | S::Running, E::LeaseExpired) => S::Lost,
        (S::Pending | S::Assigned | S::Running, E::Cancelled) => S::Cancelled,
        (S::Running, E::AgentRestarted) => S::Assigned,
        (state, event) => {
            return Err(TransitionError {
                state,
                event: format!("{event:?}"),
            });
        }
    };
    Ok(next)
}

/// The state a job ends in, given its results, or `None` while steps remain.
///
/// A job ends when every step has a final result: a passed attempt, or the last allowed
/// attempt (`retries + 1`). The agent reports the steps after a failed one as skipped, so the
/// last step's final result ends the job. Failed outranks error: if the thing under test
/// failed anywhere, the job failed.
///
/// A job reassigned after an interruption (see [`compare_heartbeat`]) has results under more
/// than one lease epoch: the latest epoch's latest attempt is the step's last result, and the
/// attempts of every epoch count against the step's retries.
pub fn final_state(results: &[StepResult], step_retries: &[u32]) -> Option<JobState> {
    let mut worst = JobState::Passed;
    for (step_index, retries) in step_retries.iter().enumerate() {
        let step = u32::try_from(step_index).ok()?;
        let last = final_attempt(results, step)?;
        let n_attempts = attempts_used(results.iter().filter(|r| r.step_index == step));
        let is_final = last.outcome == Outcome::Passed
            || last.outcome == Outcome::Skipped
            || n_attempts > *retries;
        if !is_final {
            return None;
        }
        worst = match (worst, last.outcome) {
            (_, Outcome::Failed) | (JobState::Failed, _) => JobState::Failed,
            (_, Outcome::Error | Outcome::Lost) | (JobState::Error, _) => JobState::Error,
            (state, _) => state,
        };
    }
    Some(worst)
}

/// Attempts a step has used: per lease epoch the highest attempt number (the agent numbers
/// attempts from 1 under each assignment), added up over epochs.
fn attempts_used<'a>(results: impl Iterator<Item = &'a StepResult>) -> u32 {
    let mut per_epoch = std::collections::BTreeMap::<u64, u32>::new();
    for result in results {
        let max = per_epoch.entry(result.lease_epoch).or_default();
        *max = (*max).max(result.attempt);
    }
    per_epoch
        .values()
        .fold(0u32, |sum, n| sum.saturating_add(*n))
}

/// What the agent said about the node's job in one heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentReport {
    /// Whether the agent says it runs this job, under any lease epoch (an older one than the
    /// job's means the reassignment is still on its way to the agent).
    pub runs_job: bool,
    /// Results of this job the agent still holds, not yet acknowledged (spooled or kept in
    /// memory); other jobs' results do not count, and results refused for good are set aside.
    pub unsent_results: u32,
    /// Whether the agent had read every command the controller sent on its stream when it
    /// built the heartbeat. One built earlier may predate the job's assignment.
    pub saw_every_command: bool,
}

/// What a heartbeat means for the job the controller believes the node runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Nothing to do: the job is not running, the agent runs it, or every step has its final
    /// result already.
    Nothing,
    /// The heartbeat was built before the agent read every command sent to it, so it may
    /// predate the job's assignment: judge the next one.
    Stale,
    /// The agent does not run the job but still holds results: they may finish it, so nothing
    /// is decided until a heartbeat reports none unsent.
    WaitForResults,
    /// The agent no longer runs the job and holds none of its results: the step it was in is
    /// interrupted. Record `record_attempt` as an `error` result if set, then end the job as
    /// `end` or, when `end` is `None`, assign it again under a new lease epoch.
    Interrupted {
        /// The step the agent was in: the first without a final result.
        step_index: u32,
        /// The attempt number of the `error` result to record, when the step has no result
        /// under the current lease epoch yet (the agent was mid-attempt and nobody reported
        /// it). `None` when its latest attempt already has a result (the agent stopped
        /// between attempts, or reported the interrupted attempt itself after a restart):
        /// nothing is invented, only the remaining attempts are run again.
        record_attempt: Option<u32>,
        /// `Some(Error)` when the recorded attempt was the step's last allowed one.
        end: Option<JobState>,
        /// Why, for the result's message and the log.
        message: String,
    },
}

/// Compares what the agent says it runs (every heartbeat) with the job the controller
/// believes its node runs, and says what to do.
///
/// Only a `running` job can be interrupted (an `assigned` one is simply sent again). The
/// agent's word counts only when it had read every command sent to it (else the heartbeat
/// may predate the assignment) and holds no unsent result (else its spool may still finish
/// the job): no result is ever invented ahead of a real one, and no wait lasts longer than
/// the agent's results take to arrive.
pub fn compare_heartbeat(
    state: JobState,
    lease_epoch: u64,
    agent: AgentReport,
    results: &[StepResult],
    step_names: &[String],
    step_retries: &[u32],
) -> Liveness {
    if state != JobState::Running || agent.runs_job {
        return Liveness::Nothing;
    }
    if !agent.saw_every_command {
        return Liveness::Stale;
    }
    if agent.unsent_results > 0 {
        return Liveness::WaitForResults;
    }
    if final_state(results, step_retries).is_some() {
        return Liveness::Nothing;
    }
    // The first step without a final result is the one the agent was in.
    for (step_index, retries) in step_retries.iter().enumerate() {
        let of_step: Vec<&StepResult> = results
            .iter()
            .filter(|r| r.step_index as usize == step_index)
            .collect();
        let last = final_attempt(of_step.iter().copied(), step_index as u32);
        let n_attempts = attempts_used(of_step.iter().copied());
        let is_final = last.is_some_and(|last| {
            matches!(last.outcome, Outcome::Passed | Outcome::Skipped) || n_attempts > *retries
        });
        if is_final {
            continue;
        }
        let name = step_names
            .get(step_index)
            .map_or_else(|| format!("#{step_index}"), Clone::clone);
        let step_index = u32::try_from(step_index).unwrap_or(u32::MAX);
        let reported_under_epoch = of_step.iter().any(|r| r.lease_epoch == lease_epoch);
        if reported_under_epoch {
            return Liveness::Interrupted {
                step_index,
                record_attempt: None,
                end: None,
                message: format!(
                    "the agent no longer runs the job after step {name}'s last reported attempt; \
                     its remaining attempts run again"
                ),
            };
        }
        return Liveness::Interrupted {
            step_index,
            record_attempt: Some(1),
            end: (n_attempts + 1 > *retries).then_some(JobState::Error),
            message: format!(
                "interrupted: the agent stopped running the job during step {name} (restarted, \
                 or lost its state) and holds no result of it"
            ),
        };
    }
    Liveness::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::step_result;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("step{i}")).collect()
    }

    const IDLE: AgentReport = AgentReport {
        runs_job: false,
        unsent_results: 0,
        saw_every_command: true,
    };

    #[test]
    fn an_agent_that_stopped_mid_step_with_retries_left_gets_the_job_again() {
        let results = vec![step_result(0, 1, Outcome::Passed)];
        let decision = compare_heartbeat(JobState::Running, 1, IDLE, &results, &names(2), &[0, 1]);
        assert_eq!(
            decision,
            Liveness::Interrupted {
                step_index: 1,
                record_attempt: Some(1),
                end: None,
                message: "interrupted: the agent stopped running the job during step step1 \
                          (restarted, or lost its state) and holds no result of it"
                    .to_owned(),
            }
        );
    }

    #[test]
    fn an_interrupted_last_attempt_ends_the_job_as_error() {
        // Attempt 1 under epoch 1 failed and was retried under epoch 2, where the agent
        // stopped mid-attempt: that was the step's second and last allowed attempt.
        let mut results = vec![step_result(0, 1, Outcome::Failed)];
        results[0].lease_epoch = 1;
        let decision = compare_heartbeat(JobState::Running, 2, IDLE, &results, &names(1), &[1]);
        assert!(
            matches!(
                decision,
                Liveness::Interrupted {
                    step_index: 0,
                    record_attempt: Some(1),
                    end: Some(JobState::Error),
                    ..
                }
            ),
            "{decision:?}"
        );
    }

    #[test]
    fn an_attempt_with_its_result_is_not_invented_again() {
        // The agent reported attempt 1 (failed, or interrupted and reported at its restart)
        // and then forgot the job: the remaining attempt runs again, no result is added.
        let results = vec![step_result(0, 1, Outcome::Error)];
        let decision = compare_heartbeat(JobState::Running, 1, IDLE, &results, &names(1), &[1]);
        assert!(
            matches!(
                decision,
                Liveness::Interrupted {
                    step_index: 0,
                    record_attempt: None,
                    end: None,
                    ..
                }
            ),
            "{decision:?}"
        );
    }

    #[test]
    fn nothing_is_decided_on_a_stale_report_or_while_results_are_unsent() {
        let results = vec![];
        let judge =
            |agent| compare_heartbeat(JobState::Running, 1, agent, &results, &names(1), &[0]);
        assert_eq!(
            judge(AgentReport {
                runs_job: true,
                ..IDLE
            }),
            Liveness::Nothing
        );
        assert_eq!(
            judge(AgentReport {
                saw_every_command: false,
                ..IDLE
            }),
            Liveness::Stale
        );
        assert_eq!(
            judge(AgentReport {
                unsent_results: 2,
                ..IDLE
            }),
            Liveness::WaitForResults
        );
        // Once the spool drained, the same job is judged.
        assert!(matches!(judge(IDLE), Liveness::Interrupted { .. }));
        for state in [JobState::Assigned, JobState::Passed, JobState::Lost] {
            assert_eq!(
                compare_heartbeat(state, 1, IDLE, &results, &names(1), &[0]),
                Liveness::Nothing
            );
        }
        // Every step has its final result: the job ends by its results, not by a heartbeat.
        let done = vec![step_result(0, 1, Outcome::Passed)];
        assert_eq!(
            compare_heartbeat(JobState::Running, 1, IDLE, &done, &names(1), &[0]),
            Liveness::Nothing
        );
    }

    #[test]
    fn after_a_reassignment_the_new_epoch_counts_and_attempts_add_up() {
        // Epoch 1: step 0 interrupted at attempt 1 (error); epoch 2 reruns it and passes.
        let interrupted = step_result(0, 1, Outcome::Error);
        let mut rerun = step_result(0, 1, Outcome::Passed);
        rerun.lease_epoch = 2;
        assert_eq!(
            final_state(&[interrupted.clone(), rerun], &[1]),
            Some(JobState::Passed)
        );
        let mut failed_again = step_result(0, 1, Outcome::Error);
        failed_again.lease_epoch = 2;
        assert_eq!(
            final_state(&[interrupted, failed_again], &[1]),
            Some(JobState::Error)
        );
    }

    #[test]
    fn happy_path() {
        let mut state = JobState::Pending;
        for event in [
            JobEvent::Assigned,
            JobEvent::Accepted,
            JobEvent::StepReported { finished: None },
            JobEvent::StepReported {
                finished: Some(JobState::Passed),
            },
        ] {
            state = next(state, event).expect("allowed");
        }
        assert_eq!(state, JobState::Passed);
    }

    #[test]
    fn terminal_states_take_nothing() {
        for state in [
            JobState::Passed,
            JobState::Failed,
            JobState::Error,
            JobState::Lost,
            JobState::Cancelled,
        ] {
            for event in [
                JobEvent::Assigned,
                JobEvent::Accepted,
                JobEvent::LeaseExpired,
                JobEvent::Cancelled,
            ] {
                assert!(next(state, event).is_err(), "{state} took {event:?}");
            }
        }
    }

    #[test]
    fn lease_expiry_loses_active_jobs_only() {
        assert_eq!(
            next(JobState::Running, JobEvent::LeaseExpired),
            Ok(JobState::Lost)
        );
        assert_eq!(
            next(JobState::Assigned, JobEvent::LeaseExpired),
            Ok(JobState::Lost)
        );
        assert!(next(JobState::Pending, JobEvent::LeaseExpired).is_err());
    }

    #[test]
    fn final_state_waits_for_retries_and_ranks_failed_over_error() {
        let retries = [0, 1];
        let first_failed = [
            step_result(0, 1, Outcome::Passed),
            step_result(1, 1, Outcome::Failed),
        ];
        assert_eq!(final_state(&first_failed, &retries), None, "one retry left");
        let retried = [&first_failed[..], &[step_result(1, 2, Outcome::Passed)]].concat();
        assert_eq!(final_state(&retried, &retries), Some(JobState::Passed));
        let errored = [
            step_result(0, 1, Outcome::Error),
            step_result(1, 1, Outcome::Skipped),
        ];
        assert_eq!(final_state(&errored, &retries), Some(JobState::Error));
        let both = [
            step_result(0, 1, Outcome::Error),
            step_result(1, 2, Outcome::Failed),
        ];
        assert_eq!(final_state(&both, &retries), Some(JobState::Failed));
        assert_eq!(
            final_state(&[step_result(0, 1, Outcome::Passed)], &retries),
            None
        );
    }
}
