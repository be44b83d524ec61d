//! The job state machine: one job is one run's work on one node.
//!
//! ```text
//!   pending ──assign──▶ assigned ──accept──▶ running ──last result──▶ passed | failed | error
//!      │                   │                    │
//!      │                   ◀──agent dropped it──┤
//!      └──cancel──▶ cancelled ◀──cancel─────────┤
//!                          └──lease expired──▶ lost ◀──lease expired──┘
//! ```

use crate::fleet::NodeState;
use crate::node::{NodeEvent, NodeRefusal};
use crate::plan::Step;
use crate::release::FieldError;
use crate::result::{Outcome, StepResult, final_attempt};
use crate::{JobId, NodeId, RunId};
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

/// What a job change is decided from, as loaded: the job and its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFacts {
    /// The job.
    pub id: JobId,
    /// Its run.
    pub run: RunId,
    /// Its node.
    pub node: NodeId,
    /// Its state.
    pub state: JobState,
    /// Its lease epoch.
    pub lease_epoch: u64,
    /// Its node's lifecycle state.
    pub node_state: NodeState,
    /// Whether another job than this one is active on its node.
    pub node_has_other_active_job: bool,
}

/// A decided change of a node's lifecycle state, applied only if the node is still in `from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeChange {
    /// The node.
    pub node: NodeId,
    /// The state it was decided from.
    pub from: NodeState,
    /// The state it moves to.
    pub to: NodeState,
}

/// A decided change of one job: applied only if the job is still in `from` under
/// `from_epoch` (a compare-and-set), with its node's change in the same transaction. When the
/// job ends, the store asks [`crate::run::next`] about its run under the run's lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobChange {
    /// The job.
    pub job: JobId,
    /// The state it was decided from.
    pub from: JobState,
    /// The lease epoch it was decided from.
    pub from_epoch: u64,
    /// The state it moves to (may be `from`: the change then only checks that nothing moved).
    pub to: JobState,
    /// The lease epoch it gets.
    pub to_epoch: u64,
    /// Its node's change, when the job starts occupying the node or stops.
    pub node: Option<NodeChange>,
    /// When the job ends and is started again elsewhere ([`crate::reschedule`]): the new job,
    /// created in the same transaction as this change.
    pub reschedule: Option<crate::reschedule::Reschedule>,
}

/// Why a job change was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum JobRefusal {
    /// The job's state does not take the event.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The job's node cannot take it (an unreachable or retired node gets no job).
    #[error("node {node} cannot take job {job}: {refusal}")]
    Node {
        /// The node.
        node: NodeId,
        /// The job.
        job: JobId,
        /// The node's refusal.
        refusal: NodeRefusal,
    },
}

/// Decides what `event` does to a job and its node: the job's transition (to `to_epoch`) and,
/// when the job starts occupying its node or stops, the node's transition as
/// [`crate::node::next_state`] decides it.
pub fn decide(facts: &JobFacts, event: JobEvent, to_epoch: u64) -> Result<JobChange, JobRefusal> {
    let to = next(facts.state, event)?;
    let node_event = if !facts.state.is_active() && to.is_active() {
        Some(NodeEvent::JobStarted)
    } else if facts.state.is_active() && to.is_terminal() {
        Some(NodeEvent::JobEnded {
            active_job: facts.node_has_other_active_job,
        })
    } else {
        None
    };
    let node = match node_event {
        Some(node_event) => {
            let node_to =
                crate::node::next_state(facts.node_state, node_event).map_err(|refusal| {
                    JobRefusal::Node {
                        node: facts.node.clone(),
                        job: facts.id.clone(),
                        refusal,
                    }
                })?;
            (node_to != facts.node_state).then(|| NodeChange {
                node: facts.node.clone(),
                from: facts.node_state,
                to: node_to,
            })
        }
        None => None,
    };
    Ok(JobChange {
        job: facts.id.clone(),
        from: facts.state,
        from_epoch: facts.lease_epoch,
        to,
        to_epoch,
        node,
        reschedule: None,
    })
}

/// What to do with a result an agent sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acceptance {
    /// The same (step, attempt, lease epoch) is stored already: acknowledge it as a
    /// duplicate and change nothing (an agent sends again what it did not see acknowledged).
    Duplicate,
    /// Store the result and apply the change.
    Record(ResultChange),
}

/// A result to store and what it changes, applied only if nothing it was decided from moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultChange {
    /// The job's change (its state may stay: the change then only checks that the job did
    /// not move meanwhile).
    pub job: JobChange,
    /// How many results of the job were stored when this was decided: another result stored
    /// meanwhile may change how the job ends, so the decision holds only if none was.
    pub results_before: usize,
}

/// Why a result is refused. Each message says what happened and what becomes of the result.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ResultRefusal {
    /// No such job.
    #[error("job {job} not found")]
    UnknownJob {
        /// The job named by the result.
        job: JobId,
    },
    /// The job belongs to another node than the one reporting.
    #[error("node {node} cannot report results of job {job}: it belongs to node {owner}")]
    NotYourJob {
        /// The reporting node.
        node: NodeId,
        /// The job.
        job: JobId,
        /// Its node.
        owner: NodeId,
    },
    /// The result was produced under an older (or unknown) assignment of the job.
    #[error(
        "stale lease epoch {epoch} for job {job}: the job is at epoch {current} (it was \
         reassigned or lost); this result is not recorded"
    )]
    StaleEpoch {
        /// The job.
        job: JobId,
        /// The result's epoch.
        epoch: u64,
        /// The job's epoch.
        current: u64,
    },
    /// The job ended (or never started): nothing more is recorded for it.
    #[error(
        "job {job} is {state}; the result of step {step_index} attempt {attempt} is not recorded"
    )]
    JobEnded {
        /// The job.
        job: JobId,
        /// Its state.
        state: JobState,
        /// The result's step.
        step_index: u32,
        /// The result's attempt.
        attempt: u32,
    },
    /// The plan has no step with the result's index.
    #[error("step_index: {step_index} is out of range; plan {plan} has {n_steps} steps")]
    UnknownStep {
        /// The result's step index.
        step_index: u32,
        /// The plan's name.
        plan: String,
        /// How many steps the plan has.
        n_steps: usize,
    },
    /// The result names another step than the plan has at its index.
    #[error("step_name: '{sent}' does not match step {step_index} of plan {plan}, '{expected}'")]
    StepNameMismatch {
        /// The result's step index.
        step_index: u32,
        /// The name the result carries.
        sent: String,
        /// The plan's name of that step.
        expected: String,
        /// The plan's name.
        plan: String,
    },
    /// The result does not fit its step's kind; every bad field is listed.
    #[error("the result does not fit its step: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    DoesNotFitStep(Vec<FieldError>),
    /// The job's state does not take the result.
    #[error(transparent)]
    Transition(#[from] TransitionError),
}

/// The plan a result is judged against: its name and steps.
#[derive(Clone, Copy, Debug)]
pub struct PlanSteps<'a> {
    /// The plan's name, for messages.
    pub name: &'a str,
    /// Its steps, in order.
    pub steps: &'a [Step],
}

/// The one place a result is judged: given the job it names (as loaded, with its node), the
/// reporting node, the plan's steps, the job's stored results and the new result, whether to
/// store it and what it changes, or why not.
///
/// The order of the checks is the order of their answers' weight: another node's job is
/// refused before anything about it is said; a stale epoch before a duplicate (an old
/// epoch's result is never acknowledged as stored); a duplicate before the job's end (the
/// agent resends what it did not see acknowledged, also after the job ended by it).
pub fn accept_result(
    facts: &JobFacts,
    reporter: &NodeId,
    plan: PlanSteps<'_>,
    results: &[StepResult],
    result: &StepResult,
) -> Result<Acceptance, ResultRefusal> {
    if &facts.node != reporter {
        return Err(ResultRefusal::NotYourJob {
            node: reporter.clone(),
            job: facts.id.clone(),
            owner: facts.node.clone(),
        });
    }
    if result.lease_epoch != facts.lease_epoch {
        return Err(ResultRefusal::StaleEpoch {
            job: facts.id.clone(),
            epoch: result.lease_epoch,
            current: facts.lease_epoch,
        });
    }
    let same_attempt = |stored: &StepResult| {
        stored.step_index == result.step_index
            && stored.attempt == result.attempt
            && stored.lease_epoch == result.lease_epoch
    };
    if results.iter().any(same_attempt) {
        return Ok(Acceptance::Duplicate);
    }
    if !facts.state.is_active() {
        return Err(ResultRefusal::JobEnded {
            job: facts.id.clone(),
            state: facts.state,
            step_index: result.step_index,
            attempt: result.attempt,
        });
    }
    let step =
        plan.steps
            .get(result.step_index as usize)
            .ok_or_else(|| ResultRefusal::UnknownStep {
                step_index: result.step_index,
                plan: plan.name.to_owned(),
                n_steps: plan.steps.len(),
            })?;
    if step.name != result.step_name {
        return Err(ResultRefusal::StepNameMismatch {
            step_index: result.step_index,
            sent: result.step_name.clone(),
            expected: step.name.clone(),
            plan: plan.name.to_owned(),
        });
    }
    crate::result::check_fits_step(result, step).map_err(ResultRefusal::DoesNotFitStep)?;
    let retries: Vec<u32> = plan.steps.iter().map(|step| step.retries).collect();
    let mut with_new = Vec::with_capacity(results.len() + 1);
    with_new.extend_from_slice(results);
    with_new.push(result.clone());
    let finished = final_state(&with_new, &retries);
    let change = decide(
        facts,
        JobEvent::StepReported { finished },
        result.lease_epoch,
    )
    .map_err(|refusal| match refusal {
        JobRefusal::Transition(error) => ResultRefusal::Transition(error),
        // A job that ends only frees its node, which every node state allows.
        JobRefusal::Node { refusal, .. } => ResultRefusal::Transition(TransitionError {
            state: facts.state,
            event: refusal.message,
        }),
    })?;
    Ok(Acceptance::Record(ResultChange {
        job: change,
        results_before: results.len(),
    }))
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
/// attempts that did not pass, of every epoch, count against the step's retries (a passed
/// step run again because a later one was interrupted used none).
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

/// Attempts of a step that did not pass, added up over lease epochs: what counts against its
/// `retries` ("extra attempts after a failed or erroring one"). Per epoch the agent numbers
/// attempts from 1 and starts another only after one that did not pass, so an epoch's
/// highest attempt number counts them all, less that attempt itself when it passed (or was
/// skipped). A step that passed and ran again only because the job was reassigned after a
/// later step's interruption has used none of its retries.
fn attempts_used<'a>(results: impl Iterator<Item = &'a StepResult>) -> u32 {
    let mut per_epoch = std::collections::BTreeMap::<u64, (u32, Outcome)>::new();
    for result in results {
        let latest = per_epoch
            .entry(result.lease_epoch)
            .or_insert((0, Outcome::Passed));
        if result.attempt >= latest.0 {
            *latest = (result.attempt, result.outcome);
        }
    }
    per_epoch
        .values()
        .map(|(attempt, outcome)| match outcome {
            Outcome::Passed | Outcome::Skipped => attempt.saturating_sub(1),
            _ => *attempt,
        })
        .fold(0u32, u32::saturating_add)
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
    /// The agent no longer runs the job, holds none of its results, and a step's final
    /// attempt did not pass: a running agent would have reported the steps after it as
    /// skipped, which one that restarted meanwhile never does. The job ends as `end` now,
    /// with nothing recorded for the steps the agent never started and nothing run again
    /// (running it again would give the step attempts it no longer has).
    Ended {
        /// The step whose final attempt did not pass.
        step_index: u32,
        /// `Failed` when that attempt failed, else `Error` (as [`final_state`] ranks them).
        end: JobState,
        /// Why, for the log.
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
    // The first step without a final result is the one the agent was in, unless a step
    // before it finally did not pass: the agent was done with the job then.
    for (step_index, retries) in step_retries.iter().enumerate() {
        let of_step: Vec<&StepResult> = results
            .iter()
            .filter(|r| r.step_index as usize == step_index)
            .collect();
        let last = final_attempt(of_step.iter().copied(), step_index as u32);
        let n_attempts = attempts_used(of_step.iter().copied());
        let passed =
            last.is_some_and(|last| matches!(last.outcome, Outcome::Passed | Outcome::Skipped));
        let name = step_names
            .get(step_index)
            .map_or_else(|| format!("#{step_index}"), Clone::clone);
        let step_index = u32::try_from(step_index).unwrap_or(u32::MAX);
        if passed {
            continue;
        }
        if let Some(last) = last.filter(|_| n_attempts > *retries) {
            let end = if last.outcome == Outcome::Failed {
                JobState::Failed
            } else {
                JobState::Error
            };
            return Liveness::Ended {
                step_index,
                end,
                message: format!(
                    "the agent no longer runs the job and step {name}'s final attempt was \
                     {}: the job ends {end} without the steps after it",
                    last.outcome
                ),
            };
        }
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
    fn a_passed_step_run_again_after_a_later_interruption_keeps_its_retries() {
        // Epoch 1: step 0 passed, step 1 was interrupted; epoch 2 reran step 0, which was
        // interrupted in its turn. Step 0 has one attempt that did not pass, within its one
        // retry: it runs again, and no attempt of step 1 is invented.
        let mut results = vec![
            step_result(0, 1, Outcome::Passed),
            step_result(1, 1, Outcome::Error),
            step_result(0, 1, Outcome::Error),
        ];
        results[2].lease_epoch = 2;
        let decision = compare_heartbeat(JobState::Running, 2, IDLE, &results, &names(2), &[1, 1]);
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
        // So the job does not end while step 0 has its retry left, even though step 1 used
        // its only attempt.
        assert_eq!(final_state(&results, &[1, 0]), None);
        // A step's own failed attempts in one epoch still count, the passing one not.
        let mut flaky = vec![
            step_result(0, 1, Outcome::Failed),
            step_result(0, 2, Outcome::Passed),
            step_result(0, 1, Outcome::Failed),
        ];
        flaky[2].lease_epoch = 2;
        assert_eq!(final_state(&flaky, &[1]), Some(JobState::Failed));
        assert_eq!(final_state(&flaky, &[2]), None);
    }

    #[test]
    fn a_step_that_finally_did_not_pass_ends_the_job_without_running_it_again() {
        // Step 0 was interrupted twice (epochs 1 and 2), its one retry used: the agent,
        // restarted again, will not report step 1 as skipped. The job ends `error`; no
        // attempt of step 1, which never started, is invented, and step 0 does not run a
        // third time.
        let mut results = vec![
            step_result(0, 1, Outcome::Error),
            step_result(0, 1, Outcome::Error),
        ];
        results[1].lease_epoch = 2;
        let decision = compare_heartbeat(JobState::Running, 2, IDLE, &results, &names(2), &[1, 1]);
        assert!(
            matches!(
                decision,
                Liveness::Ended {
                    step_index: 0,
                    end: JobState::Error,
                    ..
                }
            ),
            "{decision:?}"
        );
        // The thing under test failed and the agent restarted before it reported the rest
        // skipped: the job fails, and the failed step is not given another chance to pass.
        let failed = vec![
            step_result(0, 1, Outcome::Passed),
            step_result(1, 1, Outcome::Failed),
        ];
        let decision =
            compare_heartbeat(JobState::Running, 1, IDLE, &failed, &names(3), &[0, 0, 2]);
        assert!(
            matches!(
                decision,
                Liveness::Ended {
                    step_index: 1,
                    end: JobState::Failed,
                    ..
                }
            ),
            "{decision:?}"
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

    mod accepting {
        use super::super::*;
        use crate::test_support::{job_facts, plan_for, step_result};

        fn steps() -> Vec<Step> {
            let mut plan = plan_for("hgx");
            let first = plan.steps[0].clone();
            plan.steps = (0..2)
                .map(|idx| Step {
                    name: format!("step{idx}"),
                    retries: 0,
                    ..first.clone()
                })
                .collect();
            plan.steps
        }

        fn judge(
            facts: &JobFacts,
            reporter: &str,
            stored: &[StepResult],
            result: &StepResult,
        ) -> Result<Acceptance, ResultRefusal> {
            let steps = steps();
            let plan = PlanSteps {
                name: "gpu-qual",
                steps: &steps,
            };
            accept_result(facts, &NodeId::from(reporter), plan, stored, result)
        }

        fn running() -> JobFacts {
            job_facts("job-1", JobState::Running, NodeState::Busy)
        }

        #[test]
        fn a_result_that_is_not_the_last_keeps_the_job_running_and_checks_it_did_not_move() {
            let decision = judge(&running(), "n1", &[], &step_result(0, 1, Outcome::Passed));
            assert_eq!(
                decision,
                Ok(Acceptance::Record(ResultChange {
                    job: JobChange {
                        job: JobId::from("job-1"),
                        from: JobState::Running,
                        from_epoch: 1,
                        to: JobState::Running,
                        to_epoch: 1,
                        node: None,
                        reschedule: None,
                    },
                    results_before: 0,
                }))
            );
        }

        #[test]
        fn the_last_result_ends_the_job_and_frees_its_node() {
            let stored = [step_result(0, 1, Outcome::Passed)];
            let Ok(Acceptance::Record(ResultChange {
                job: change,
                results_before: 1,
            })) = judge(
                &running(),
                "n1",
                &stored,
                &step_result(1, 1, Outcome::Failed),
            )
            else {
                panic!("recorded");
            };
            assert_eq!(
                (change.from, change.to),
                (JobState::Running, JobState::Failed)
            );
            assert_eq!(
                change.node,
                Some(NodeChange {
                    node: NodeId::from("n1"),
                    from: NodeState::Busy,
                    to: NodeState::Ready,
                })
            );
            // A cordoned node stays cordoned; a draining one is in maintenance once its job ended.
            for (node_state, after) in [
                (NodeState::Cordoned, None),
                (NodeState::Draining, Some(NodeState::Maintenance)),
            ] {
                let facts = JobFacts {
                    node_state,
                    ..running()
                };
                let Ok(Acceptance::Record(ResultChange { job: change, .. })) =
                    judge(&facts, "n1", &stored, &step_result(1, 1, Outcome::Passed))
                else {
                    panic!("recorded");
                };
                assert_eq!(change.node.map(|node| node.to), after, "{node_state}");
            }
        }

        #[test]
        fn each_refusal() {
            let result = step_result(0, 1, Outcome::Passed);
            let refused = |facts: &JobFacts, reporter: &str, result: &StepResult| {
                judge(facts, reporter, &[], result).expect_err("refused")
            };
            assert!(matches!(
                refused(&running(), "n2", &result),
                ResultRefusal::NotYourJob { node, owner, .. }
                    if node.as_str() == "n2" && owner.as_str() == "n1"
            ));
            let stale = StepResult {
                lease_epoch: 0,
                ..result.clone()
            };
            assert!(matches!(
                refused(&running(), "n1", &stale),
                ResultRefusal::StaleEpoch {
                    epoch: 0,
                    current: 1,
                    ..
                }
            ));
            let cancelled = JobFacts {
                state: JobState::Cancelled,
                ..running()
            };
            assert!(matches!(
                refused(&cancelled, "n1", &result),
                ResultRefusal::JobEnded {
                    state: JobState::Cancelled,
                    ..
                }
            ));
            let unknown = step_result(7, 1, Outcome::Passed);
            let refusal = refused(&running(), "n1", &unknown);
            assert!(
                matches!(
                    refusal,
                    ResultRefusal::UnknownStep {
                        step_index: 7,
                        n_steps: 2,
                        ..
                    }
                ),
                "{refusal:?}"
            );
            assert_eq!(
                refusal.to_string(),
                "step_index: 7 is out of range; plan gpu-qual has 2 steps"
            );
            let renamed = StepResult {
                step_name: "burn".into(),
                ..result.clone()
            };
            assert!(matches!(
                refused(&running(), "n1", &renamed),
                ResultRefusal::StepNameMismatch { sent, expected, .. }
                    if sent == "burn" && expected == "step0"
            ));
        }

        #[test]
        fn a_result_that_does_not_fit_its_step_is_refused_with_its_fields() {
            let mut steps = steps();
            steps[0].kind = crate::plan::StepKind::InventoryCheck {
                components: Vec::new(),
            };
            let result = crate::test_support::with_measurement(
                step_result(0, 1, Outcome::Passed),
                "gflops",
                1.0,
            );
            let plan = PlanSteps {
                name: "gpu-qual",
                steps: &steps,
            };
            let refusal = accept_result(&running(), &NodeId::from("n1"), plan, &[], &result);
            assert!(
                matches!(&refusal, Err(ResultRefusal::DoesNotFitStep(fields)) if !fields.is_empty()),
                "{refusal:?}"
            );
        }

        #[test]
        fn a_duplicate_is_acknowledged_even_after_it_ended_the_job() {
            let stored = [step_result(0, 1, Outcome::Passed)];
            let passed = JobFacts {
                state: JobState::Passed,
                ..running()
            };
            assert_eq!(
                judge(&passed, "n1", &stored, &stored[0]),
                Ok(Acceptance::Duplicate)
            );
            // Not so under another epoch: that is stale, never stored.
            let mut old = stored[0].clone();
            old.lease_epoch = 0;
            assert!(matches!(
                judge(&passed, "n1", &stored, &old),
                Err(ResultRefusal::StaleEpoch { .. })
            ));
        }

        #[test]
        fn a_job_starting_on_an_unreachable_node_is_refused() {
            let pending = job_facts("job-1", JobState::Pending, NodeState::Unreachable);
            assert!(matches!(
                decide(&pending, JobEvent::Assigned, 1),
                Err(JobRefusal::Node { .. })
            ));
            let pending = job_facts("job-1", JobState::Pending, NodeState::Ready);
            let change = decide(&pending, JobEvent::Assigned, 1).expect("assigned");
            assert_eq!(
                change.node.map(|node| (node.from, node.to)),
                Some((NodeState::Ready, NodeState::Busy))
            );
        }
    }
}
