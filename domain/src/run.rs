//! The run lifecycle: a run is `running` until its last job ends (`finished`) or a manager
//! cancels it (`cancelled`).
//!
//! ```text
//!   running ──its last open job ended──▶ finished
//!      └────────────cancel─────────────▶ cancelled
//! ```
//!
//! [`next`] alone decides a run's transitions; [`cancel`] decides what cancelling a run does
//! to it and to each of its jobs (and their nodes).

use crate::job::{self, JobChange, JobEvent, JobFacts};
use serde::{Deserialize, Serialize};

/// Where a run is. Each variant's doc says what is true in that state.
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
pub enum RunState {
    /// Some job of it has not ended.
    #[default]
    Running,
    /// Every job of it ended.
    Finished,
    /// A manager cancelled it; its jobs that had not ended were cancelled with it.
    Cancelled,
}

impl RunState {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What a run is for.
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
pub enum RunPurpose {
    /// Qualifying a release at a milestone: its results are gate and report evidence.
    #[default]
    Qualification,
    /// A periodic health check of one node (`crate::health_plan`): it judges the node's
    /// health and is never evidence.
    Health,
    /// One node's procedure or rollback in a rollout (`crate::rollout`): its results are the
    /// wave's health evidence, never a milestone's, and it runs inside maintenance windows.
    Rollout,
}

impl RunPurpose {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Something that happens to a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEvent {
    /// One of its jobs ended; `open_jobs` of its jobs have not ended (this one not counted).
    JobEnded {
        /// Jobs of the run not yet ended, after this one ended.
        open_jobs: usize,
    },
    /// A manager cancelled it.
    Cancelled,
}

/// Why a run cannot take an event: the message says what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RunRefusal {
    /// The state the run is in.
    pub state: RunState,
    /// What is wrong and what to do.
    pub message: String,
}

/// The one place run transitions are decided: the state `event` moves a run in `state` to
/// (which may be `state` itself: nothing changes), or a refusal.
pub fn next(state: RunState, event: RunEvent) -> Result<RunState, RunRefusal> {
    use RunEvent as E;
    use RunState as S;
    match (state, event) {
        (S::Running, E::JobEnded { open_jobs: 0 }) => Ok(S::Finished),
        (S::Running, E::JobEnded { .. }) => Ok(S::Running),
        // Nothing of an ended run is open any more; a late job end changes nothing.
        (S::Finished | S::Cancelled, E::JobEnded { .. }) => Ok(state),
        (S::Running, E::Cancelled) => Ok(S::Cancelled),
        (S::Finished | S::Cancelled, E::Cancelled) => Err(RunRefusal {
            state,
            message: format!("the run is already {state}; there is nothing to cancel"),
        }),
    }
}

/// What cancelling a run changes: the run's own transition and one change per job that had
/// not ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cancellation {
    /// The run's transition (from, to), applied only if the run is still in `from`.
    pub run: (RunState, RunState),
    /// Each open job's change to `cancelled`, with its node's change when the job was active.
    pub jobs: Vec<JobChange>,
}

/// Decides what cancelling a run in `state` whose jobs are `jobs` does; a run that ended
/// (finished or cancelled already) is refused.
pub fn cancel(state: RunState, jobs: &[JobFacts]) -> Result<Cancellation, CancelRefusal> {
    let to = next(state, RunEvent::Cancelled).map_err(CancelRefusal::Run)?;
    let changes = jobs
        .iter()
        .filter(|facts| !facts.state.is_terminal())
        .map(|facts| job::decide(facts, JobEvent::Cancelled, facts.lease_epoch))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CancelRefusal::Job)?;
    Ok(Cancellation {
        run: (state, to),
        jobs: changes,
    })
}

/// Why a run cannot be cancelled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CancelRefusal {
    /// The run's state does not allow it.
    #[error(transparent)]
    Run(RunRefusal),
    /// One of its jobs could not be cancelled (a job that has not ended always can be: this
    /// would be a bug in the job state machine).
    #[error(transparent)]
    Job(job::JobRefusal),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::NodeState;
    use crate::job::JobState;
    use crate::test_support::job_facts;

    #[test]
    fn a_run_finishes_when_its_last_open_job_ends() {
        assert_eq!(
            next(RunState::Running, RunEvent::JobEnded { open_jobs: 2 }),
            Ok(RunState::Running)
        );
        assert_eq!(
            next(RunState::Running, RunEvent::JobEnded { open_jobs: 0 }),
            Ok(RunState::Finished)
        );
        for ended in [RunState::Finished, RunState::Cancelled] {
            assert_eq!(next(ended, RunEvent::JobEnded { open_jobs: 0 }), Ok(ended));
        }
    }

    #[test]
    fn cancel_stops_open_jobs_and_frees_their_nodes() {
        let running = job_facts("job-1", JobState::Running, NodeState::Busy);
        let pending = job_facts("job-2", JobState::Pending, NodeState::Busy);
        let passed = job_facts("job-3", JobState::Passed, NodeState::Ready);
        let cancellation =
            cancel(RunState::Running, &[running, pending, passed]).expect("cancellable");
        assert_eq!(cancellation.run, (RunState::Running, RunState::Cancelled));
        type Moved<'a> = (&'a str, JobState, Option<(NodeState, NodeState)>);
        let moved: Vec<Moved> = cancellation
            .jobs
            .iter()
            .map(|change| {
                (
                    change.job.as_str(),
                    change.to,
                    change.node.as_ref().map(|node| (node.from, node.to)),
                )
            })
            .collect();
        assert_eq!(
            moved,
            [
                (
                    "job-1",
                    JobState::Cancelled,
                    Some((NodeState::Busy, NodeState::Ready))
                ),
                // A pending job never occupied its node: the node's own job goes on.
                ("job-2", JobState::Cancelled, None),
            ]
        );
    }

    #[test]
    fn a_run_that_ended_is_not_cancelled() {
        let running = job_facts("job-1", JobState::Running, NodeState::Busy);
        for ended in [RunState::Finished, RunState::Cancelled] {
            let refused = cancel(ended, std::slice::from_ref(&running)).expect_err("refused");
            assert_eq!(
                refused.to_string(),
                format!("the run is already {ended}; there is nothing to cancel")
            );
        }
    }
}
