//! The job state machine: one job is one run's work on one node.
//!
//! ```text
//!   pending ──assign──▶ assigned ──accept──▶ running ──last result──▶ passed | failed | error
//!      │                   │                    │
//!      └──cancel──▶ cancelled ◀──cancel─────────┤
//!                          └──lease expired──▶ lost ◀──lease expired──┘
//! ```

use crate::result::{Outcome, StepResult};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where a job is. Each variant's doc says what is true in that state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
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

crate::fleet::str_enum!(JobState { Pending => "pending", Assigned => "assigned", Running => "running", Passed => "passed", Failed => "failed", Error => "error", Lost => "lost", Cancelled => "cancelled" });

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
pub fn final_state(results: &[StepResult], step_retries: &[u32]) -> Option<JobState> {
    let mut worst = JobState::Passed;
    for (step_index, retries) in step_retries.iter().enumerate() {
        let last = results
            .iter()
            .filter(|r| r.step_index as usize == step_index)
            .max_by_key(|r| r.attempt)?;
        let is_final = last.outcome == Outcome::Passed
            || last.outcome == Outcome::Skipped
            || last.attempt > *retries;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::step_result;

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
