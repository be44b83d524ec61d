//! A node's two state machines. Its lifecycle (`ready`, `busy`, `cordoned`, `draining`,
//! `maintenance`, `unreachable`, `retired`) changes only as [`next_state`] decides, from jobs starting and
//! ending, leases, reconnections and operators. Its health changes from what its results
//! showed (findings) and what an operator decided, and [`next`] is the one place that change is
//! decided.
//!
//! ```text
//!          repeated errors              GPU lost, failed health check
//!   good ─────────────────▶ suspect ─────────────────────────────────▶ bad
//!     │                                                                ▲
//!     └──────────────── GPU lost, failed health check ─────────────────┘
//!
//!   any ───operator sets HEALTH, with a reason (audited)───▶ HEALTH
//! ```
//!
//! An operator may set any health from any health, with a reason; findings only ever make
//! health worse, so a node is never cleared without a person saying why. Only `good` nodes are
//! selected for runs or sent jobs (`scheduler`).

use crate::fleet::{Health, Inventory, Labels, NodeState};
use crate::plan::StepKind;
use crate::release::{Component, check_inventory};
use crate::result::{Outcome, StepResult};
use crate::telemetry::EventKind;
use serde::{Deserialize, Serialize};

/// How many harness errors in a row on a node make it `suspect`: the node's latest step
/// results, across jobs and runs, skipped ones not counted, all `error` (a timeout, a crash,
/// output that could not be read, an interrupted attempt). A `passed` or `failed` result in
/// between starts the count again: the harness ran there.
pub const REPEATED_ERRORS: usize = 3;

/// Something that bears on a node's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthEvent {
    /// A GPU fell off the bus during a step (a `gpu-lost` event): a hardware finding.
    GpuLost {
        /// What was seen, where.
        detail: String,
    },
    /// An `inventory-check` step failed on a GPU health fact (ECC off, a degraded PCIe link,
    /// a row remap failure) while the versions matched: a hardware finding.
    HealthCheckFailed {
        /// What the check found.
        detail: String,
    },
    /// The node's latest [`REPEATED_ERRORS`] results were all harness errors.
    RepeatedErrors {
        /// What the errors were.
        detail: String,
    },
    /// The inventory the agent reported does not match the node's labels of record (its
    /// `sku` names a GPU its GPUs are not): suspect until an operator looks.
    LabelsMismatch {
        /// What disagrees.
        detail: String,
    },
    /// A periodic health check (`tollgate node health-plan set`) ended on the node: a failure
    /// makes a good node `suspect`; a pass clears `suspect` (never `bad`).
    PeriodicCheck {
        /// Whether the check passed.
        passed: bool,
        /// Which check, which run, what happened.
        detail: String,
    },
    /// An operator set the node's health (`tollgate node health NODE --set ... --reason ...`).
    OperatorSet {
        /// The health the operator chose.
        to: Health,
        /// Who.
        actor: String,
        /// Why, as the operator wrote it.
        reason: String,
    },
}

/// A decided change of a node's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthChange {
    /// The health it was decided from (the store applies it only if the node still has it).
    pub from: Health,
    /// The new health.
    pub to: Health,
    /// Why, for the node's `health_reason` and the audit entry.
    pub reason: String,
}

/// The one place node health changes are decided: the change `event` makes to a node in
/// `health`, or `None` when it makes none.
///
/// - `good`: nothing wrong seen. Repeated errors make it `suspect`; a hardware finding `bad`.
/// - `suspect`: something worth a look. A hardware finding makes it `bad`; more errors change
///   nothing; a passing periodic health check makes it `good` again.
/// - `bad`: a hardware finding. Further findings change nothing (the first reason stays).
/// - From any health an operator sets any health, with a reason (also the same health, to
///   record a new reason).
pub fn next(health: Health, event: &HealthEvent) -> Option<HealthChange> {
    use Health as H;
    use HealthEvent as E;
    let (to, reason) = match (health, event) {
        (_, E::OperatorSet { to, actor, reason }) => (*to, format!("set by {actor}: {reason}")),
        (H::Good | H::Suspect, E::GpuLost { detail } | E::HealthCheckFailed { detail }) => {
            (H::Bad, detail.clone())
        }
        (H::Good, E::RepeatedErrors { detail } | E::LabelsMismatch { detail }) => {
            (H::Suspect, detail.clone())
        }
        (
            H::Good,
            E::PeriodicCheck {
                passed: false,
                detail,
            },
        ) => (H::Suspect, detail.clone()),
        (
            H::Suspect,
            E::PeriodicCheck {
                passed: true,
                detail,
            },
        ) => (H::Good, detail.clone()),
        (H::Good, E::PeriodicCheck { passed: true, .. })
        | (H::Suspect, E::PeriodicCheck { passed: false, .. })
        | (H::Bad, E::PeriodicCheck { .. }) => return None,
        (H::Bad, E::GpuLost { .. } | E::HealthCheckFailed { .. })
        | (H::Suspect | H::Bad, E::RepeatedErrors { .. } | E::LabelsMismatch { .. }) => {
            return None;
        }
    };
    Some(HealthChange {
        from: health,
        to,
        reason,
    })
}

/// Whether the GPUs of `inventory` match the `sku` label of record: its last `-` part (`h100`
/// of `hgx-h100`) must appear in every GPU's name, case aside. A [`HealthEvent::LabelsMismatch`]
/// naming the first GPU that does not; `None` without a `sku` label naming a model (one with a
/// digit) or without GPUs.
pub fn label_findings(labels_of_record: &Labels, inventory: &Inventory) -> Option<HealthEvent> {
    let sku = labels_of_record.get("sku")?;
    let model = sku.rsplit('-').next()?.to_ascii_uppercase();
    if !model.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    let odd = inventory
        .gpus
        .iter()
        .find(|gpu| !gpu.name.to_ascii_uppercase().contains(&model))?;
    Some(HealthEvent::LabelsMismatch {
        detail: format!(
            "labels of record say sku={sku} but GPU {} reports '{}': check the node's hardware \
             or enroll it with the right labels",
            odd.index, odd.name
        ),
    })
}

/// Something that happens to a node's lifecycle (its [`NodeState`]; health is [`next`]'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeEvent {
    /// Its agent registered again, or a heartbeat came after it was `unreachable`.
    /// `active_job`: the store holds an active job (assigned or running) for it.
    Reconnected {
        /// Whether the node has an active job.
        active_job: bool,
    },
    /// No heartbeat within the lease grace.
    LeaseExpired,
    /// A job became active on it (assigned).
    JobStarted,
    /// A job of it ended (any terminal state). `active_job`: another job is still active on it.
    JobEnded {
        /// Whether another job is still active on the node.
        active_job: bool,
    },
    /// An operator cordoned it (`tollgate node cordon`).
    Cordon,
    /// An operator uncordoned it (`tollgate node uncordon`).
    Uncordon {
        /// Whether the node has an active job.
        active_job: bool,
    },
    /// An operator drains it: `draining` until its active job ends (or is cancelled at the
    /// drain's deadline), then `maintenance`.
    Drain {
        /// Whether the node has an active job.
        active_job: bool,
    },
    /// An operator puts it back in service (`tollgate node resume`): from `maintenance`,
    /// `draining` or `cordoned`.
    Resume {
        /// Whether the node has an active job.
        active_job: bool,
    },
    /// An operator retires it for good; refused while a job is active on it or jobs of
    /// unfinished runs wait for it (they would wait forever).
    Retire {
        /// Whether the node has an active job.
        active_job: bool,
        /// How many pending jobs wait for the node.
        pending_jobs: usize,
    },
}

/// Why a node cannot take an event: the message says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NodeRefusal {
    /// The state the node is in.
    pub state: NodeState,
    /// What is wrong and what to do.
    pub message: String,
}

/// Whether a node's agent holds a stream on some replica of the controller: on the one asking
/// (`here`), or, when replicas share the store (`window` is `Some`), on another one that
/// recorded a heartbeat of it within `window` before `now`.
pub fn agent_connected(
    here: bool,
    last_seen_at: Option<crate::Timestamp>,
    window: Option<std::time::Duration>,
    now: crate::Timestamp,
) -> bool {
    here || match (
        last_seen_at,
        window.and_then(|w| chrono::Duration::from_std(w).ok()),
    ) {
        (Some(seen), Some(window)) => seen + window >= now,
        _ => false,
    }
}

/// The state a node is shown and scheduled in: a `ready` or `busy` node without a live agent
/// session counts as `unreachable` (a node that registered but whose stream is not open yet,
/// or just closed, cannot be sent a job). Stored state is moved only by [`next_state`]; this
/// is the view of it while the lease has not yet run out.
pub fn seen_state(state: NodeState, connected: bool) -> NodeState {
    match state {
        NodeState::Ready | NodeState::Busy if !connected => NodeState::Unreachable,
        other => other,
    }
}

/// The one place a node's lifecycle state changes are decided: the state `event` moves a node
/// in `state` to (which may be `state` itself: nothing to change), or a refusal.
///
/// ```text
///                JobStarted                     LeaseExpired
///   ready ◀──────────────────▶ busy   ready|busy ──────────▶ unreachable
///         JobEnded (no other)                    ◀──────────  Reconnected (busy if a job)
///
///   ready|busy ──Cordon──▶ cordoned ──Uncordon|Resume──▶ ready | busy (active job)
///   ready|busy|cordoned ──Drain──▶ draining (active job) | maintenance
///   draining ──JobEnded (no other)──▶ maintenance ──Resume|Uncordon──▶ ready
///   any but busy/draining-with-a-job ──Retire──▶ retired (final)
/// ```
///
/// A cordoned node whose lease expires stays cordoned, and a draining one goes to
/// `maintenance` (its running job is lost by the lease watchdog, so it has nothing left to
/// drain): an operator's cordon or drain is not forgotten when its agent comes back. Whether it
/// is connected is shown apart from its state. A retired node stays retired whatever its
/// agent does.
pub fn next_state(state: NodeState, event: NodeEvent) -> Result<NodeState, NodeRefusal> {
    use NodeEvent as E;
    use NodeState as S;
    let refuse = |message: String| Err(NodeRefusal { state, message });
    match (state, event) {
        (
            S::Retired,
            E::Cordon | E::Uncordon { .. } | E::Resume { .. } | E::Drain { .. } | E::JobStarted,
        ) => refuse("the node is retired; it takes no jobs and no operator changes".into()),
        (S::Retired, _) => Ok(S::Retired),
        (S::Unreachable, E::Reconnected { active_job }) => Ok(busy_if(active_job)),
        (S::Unreachable, E::Cordon | E::Uncordon { .. } | E::Resume { .. } | E::Drain { .. }) => {
            refuse(
                "the node is unreachable; cordon, uncordon or drain it once its agent is back, \
             or retire it"
                    .into(),
            )
        }
        (S::Unreachable, E::JobStarted) => {
            refuse("the node is unreachable; a job can start only on a connected node".into())
        }
        (
            _,
            E::Retire {
                active_job: true, ..
            },
        ) => refuse(
            "a job is active on the node; drain it (`tollgate node drain`) or cancel the run, \
             then retire it"
                .into(),
        ),
        (_, E::Retire { pending_jobs, .. }) if pending_jobs > 0 => refuse(format!(
            "{pending_jobs} pending job(s) of unfinished runs wait for the node; cancel those \
             runs (`tollgate run cancel`) or let them run, then retire it"
        )),
        (_, E::Retire { .. }) => Ok(S::Retired),
        (S::Ready | S::Busy, E::LeaseExpired) => Ok(S::Unreachable),
        (S::Cordoned, E::LeaseExpired) => Ok(S::Cordoned),
        (S::Draining | S::Maintenance, E::LeaseExpired) => Ok(S::Maintenance),
        (S::Unreachable, E::LeaseExpired | E::JobEnded { .. }) => Ok(S::Unreachable),
        (S::Ready | S::Busy, E::JobStarted) => Ok(S::Busy),
        // An assignment decided just before the cordon or drain was applied.
        (S::Cordoned | S::Draining, E::JobStarted) => Ok(S::Draining),
        (S::Maintenance, E::JobStarted) => refuse(
            "the node is in maintenance; it takes jobs again after `tollgate node resume`".into(),
        ),
        (S::Busy, E::JobEnded { active_job }) => Ok(busy_if(active_job)),
        (S::Draining, E::JobEnded { active_job: false }) => Ok(S::Maintenance),
        (S::Ready | S::Cordoned | S::Draining | S::Maintenance, E::JobEnded { .. }) => Ok(state),
        (
            S::Ready | S::Busy | S::Cordoned | S::Draining | S::Maintenance,
            E::Reconnected { .. },
        ) => Ok(state),
        (S::Ready | S::Busy | S::Cordoned, E::Cordon) => Ok(S::Cordoned),
        (S::Draining | S::Maintenance, E::Cordon) => Ok(state),
        (
            S::Cordoned | S::Draining | S::Maintenance,
            E::Uncordon { active_job } | E::Resume { active_job },
        ) => Ok(busy_if(active_job)),
        (S::Ready | S::Busy, E::Uncordon { .. } | E::Resume { .. }) => Ok(state),
        (S::Ready | S::Busy | S::Cordoned | S::Draining, E::Drain { active_job }) => {
            Ok(if active_job {
                S::Draining
            } else {
                S::Maintenance
            })
        }
        (S::Maintenance, E::Drain { .. }) => Ok(S::Maintenance),
    }
}

/// Whether a drained node's running job is to be cancelled now (and started again elsewhere):
/// the node is still `draining` and its drain's deadline has passed.
pub fn drain_overdue(
    state: NodeState,
    deadline: Option<crate::Timestamp>,
    now: crate::Timestamp,
) -> bool {
    state == NodeState::Draining && deadline.is_some_and(|deadline| deadline <= now)
}

/// The state a node starts in when it registers for the first time.
pub const FIRST_STATE: NodeState = NodeState::Ready;

fn busy_if(active_job: bool) -> NodeState {
    if active_job {
        NodeState::Busy
    } else {
        NodeState::Ready
    }
}

/// The findings one new result makes about its node, in the order to apply them.
///
/// `step_kind` is the kind of the result's step; `release` the components of the release under
/// test; `recent` the node's latest non-skipped outcomes, newest first, this result's included
/// (the caller needs to read them only when this result is an error).
pub fn findings(
    result: &StepResult,
    step_kind: &StepKind,
    release: &[Component],
    recent: &[Outcome],
) -> Vec<HealthEvent> {
    let mut events = Vec::new();
    let lost: Vec<String> = result
        .events
        .iter()
        .filter(|event| event.kind == EventKind::GpuLost)
        .map(|event| format!("GPU {}", event.gpu_index))
        .collect();
    if !lost.is_empty() {
        events.push(HealthEvent::GpuLost {
            detail: format!(
                "{} fell off the bus during step {} (attempt {}) of job {}",
                lost.join(", "),
                result.step_name,
                result.attempt,
                result.job_id
            ),
        });
    }
    if let StepKind::InventoryCheck { components } = step_kind {
        // With the versions right, what the check failed on is a GPU health fact.
        if result.outcome == Outcome::Failed
            && check_inventory(release, components, result.ran_on()).is_empty()
        {
            events.push(HealthEvent::HealthCheckFailed {
                detail: format!(
                    "health check {} of job {} failed: {}",
                    result.step_name, result.job_id, result.message
                ),
            });
        }
    }
    if result.outcome == Outcome::Error && errors_in_a_row(recent) >= REPEATED_ERRORS {
        events.push(HealthEvent::RepeatedErrors {
            detail: format!(
                "{REPEATED_ERRORS} harness errors in a row, the latest in step {} of job {}: {}",
                result.step_name, result.job_id, result.message
            ),
        });
    }
    events
}

/// How many of `recent` (newest first) are errors before the first other outcome; skipped
/// results say nothing about the harness and are passed over.
pub fn errors_in_a_row(recent: &[Outcome]) -> usize {
    recent
        .iter()
        .filter(|outcome| **outcome != Outcome::Skipped)
        .take_while(|outcome| **outcome == Outcome::Error)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::GpuEvent;
    use crate::test_support::{DRIVER, at, inventory, release, step_result};

    fn operator(to: Health) -> HealthEvent {
        HealthEvent::OperatorSet {
            to,
            actor: "alice".into(),
            reason: "reseated GPU 3".into(),
        }
    }

    #[test]
    fn a_failed_health_check_makes_a_good_node_suspect_and_a_pass_clears_only_suspect() {
        let check = |passed| HealthEvent::PeriodicCheck {
            passed,
            detail: format!("health check node-health passed={passed}"),
        };
        let to = |health, passed| next(health, &check(passed)).map(|change| change.to);
        assert_eq!(to(Health::Good, false), Some(Health::Suspect));
        assert_eq!(to(Health::Suspect, true), Some(Health::Good));
        assert_eq!(to(Health::Good, true), None);
        assert_eq!(to(Health::Suspect, false), None, "the first reason stays");
        assert_eq!(
            to(Health::Bad, true),
            None,
            "a pass never clears a hardware finding"
        );
        assert_eq!(to(Health::Bad, false), None);
        let change = next(Health::Good, &check(false)).expect("change");
        assert_eq!(change.reason, "health check node-health passed=false");
    }

    #[test]
    fn gpus_unlike_the_sku_of_record_make_a_good_node_suspect() {
        let labels = |sku: &str| -> Labels { [("sku".to_owned(), sku.to_owned())].into() };
        let h100s = inventory(DRIVER, "96.00.89.00.01", 2);
        assert_eq!(label_findings(&labels("hgx-h100"), &h100s), None);
        assert_eq!(
            label_findings(&labels("hgx"), &h100s),
            None,
            "no model named"
        );
        assert_eq!(label_findings(&Labels::new(), &h100s), None);
        let mut mixed = h100s.clone();
        mixed.gpus[1].name = "NVIDIA H200".into();
        let event = label_findings(&labels("hgx-h100"), &mixed).expect("GPU 1 is no H100");
        let change = next(Health::Good, &event).expect("a change");
        assert_eq!(change.to, Health::Suspect);
        assert!(
            change.reason.contains("GPU 1 reports 'NVIDIA H200'"),
            "{}",
            change.reason
        );
        let event = label_findings(&labels("hgx-h200"), &h100s).expect("H100s are no H200s");
        assert_eq!(next(Health::Suspect, &event), None);
        assert_eq!(next(Health::Bad, &event), None);
    }

    #[test]
    fn only_a_ready_or_busy_node_without_its_agent_is_seen_unreachable() {
        use crate::names::IntoEnumIterator as _;
        for state in NodeState::iter() {
            assert_eq!(seen_state(state, true), state);
            let expected = match state {
                NodeState::Ready | NodeState::Busy => NodeState::Unreachable,
                other => other,
            };
            assert_eq!(seen_state(state, false), expected, "{state}");
        }
    }

    #[test]
    fn an_agent_is_connected_here_or_recently_heard_by_a_replica_sharing_the_store() {
        let window = Some(std::time::Duration::from_secs(6));
        assert!(agent_connected(true, None, None, at(100)));
        // One controller on its own store: only its own sessions count.
        assert!(!agent_connected(false, Some(at(100)), None, at(100)));
        // Replicas: a heartbeat another one recorded within the window counts.
        assert!(agent_connected(false, Some(at(94)), window, at(100)));
        assert!(!agent_connected(false, Some(at(93)), window, at(100)));
        assert!(!agent_connected(false, None, window, at(100)));
    }

    fn lost() -> HealthEvent {
        HealthEvent::GpuLost {
            detail: "GPU 0 fell off the bus".into(),
        }
    }

    fn errors() -> HealthEvent {
        HealthEvent::RepeatedErrors {
            detail: "3 harness errors in a row".into(),
        }
    }

    #[test]
    fn findings_only_make_health_worse() {
        use Health::*;
        let to = |health, event: &HealthEvent| next(health, event).map(|change| change.to);
        assert_eq!(to(Good, &errors()), Some(Suspect));
        assert_eq!(to(Suspect, &errors()), None);
        assert_eq!(to(Bad, &errors()), None);
        for finding in [
            lost(),
            HealthEvent::HealthCheckFailed {
                detail: "ECC is disabled".into(),
            },
        ] {
            assert_eq!(to(Good, &finding), Some(Bad));
            assert_eq!(to(Suspect, &finding), Some(Bad));
            assert_eq!(to(Bad, &finding), None, "the first reason stays");
        }
    }

    #[test]
    fn an_operator_clears_a_bad_node_with_a_reason() {
        let change = next(Health::Bad, &operator(Health::Good)).expect("a change");
        assert_eq!(
            change,
            HealthChange {
                from: Health::Bad,
                to: Health::Good,
                reason: "set by alice: reseated GPU 3".into(),
            }
        );
        for from in [Health::Good, Health::Suspect, Health::Bad] {
            for to in [Health::Good, Health::Suspect, Health::Bad] {
                assert_eq!(next(from, &operator(to)).map(|c| c.to), Some(to));
            }
        }
    }

    #[test]
    fn errors_in_a_row_pass_over_skipped_and_stop_at_a_run_harness() {
        use Outcome::*;
        assert_eq!(errors_in_a_row(&[Error, Skipped, Error, Error, Passed]), 3);
        assert_eq!(errors_in_a_row(&[Error, Failed, Error, Error]), 1);
        assert_eq!(errors_in_a_row(&[Passed, Error, Error, Error]), 0);
        assert_eq!(errors_in_a_row(&[]), 0);
    }

    #[test]
    fn a_result_s_findings() {
        let release = release().components;
        let exec = StepKind::Exec {
            command: vec!["true".into()],
            env: Default::default(),
            workdir: None,
        };
        // A GPU lost during a passed step.
        let mut result = step_result(1, 1, Outcome::Passed);
        result.events.push(GpuEvent {
            gpu_index: 1,
            gpu_uuid: "GPU-1".into(),
            kind: EventKind::GpuLost,
            code: 79,
            at: at(15),
            detail: String::new(),
        });
        let found = findings(&result, &exec, &release, &[Outcome::Passed]);
        assert!(
            matches!(&found[..], [HealthEvent::GpuLost { detail }] if detail.starts_with("GPU 1 fell off the bus during step step1")),
            "{found:?}"
        );
        // Three harness errors in a row; two are not enough.
        let error = step_result(0, 1, Outcome::Error);
        let three = [Outcome::Error; 3];
        assert!(matches!(
            &findings(&error, &exec, &release, &three)[..],
            [HealthEvent::RepeatedErrors { .. }]
        ));
        assert!(findings(&error, &exec, &release, &three[..2]).is_empty());
        // An inventory check that failed with the right versions failed on health; with the
        // wrong versions it says nothing about the node's health.
        let check = StepKind::InventoryCheck {
            components: Vec::new(),
        };
        let mut failed = step_result(0, 1, Outcome::Failed);
        failed.message = "GPU 0: ECC is disabled".into();
        assert!(matches!(
            &findings(&failed, &check, &release, &[Outcome::Failed])[..],
            [HealthEvent::HealthCheckFailed { detail }] if detail.ends_with("ECC is disabled")
        ));
        failed.inventory = inventory(DRIVER, "96.00.61.00.01", 2);
        assert!(findings(&failed, &check, &release, &[Outcome::Failed]).is_empty());
    }

    mod lifecycle {
        use super::super::*;
        use NodeEvent as E;
        use NodeState as S;

        const ALL: [NodeState; 7] = [
            S::Ready,
            S::Busy,
            S::Cordoned,
            S::Draining,
            S::Maintenance,
            S::Unreachable,
            S::Retired,
        ];

        fn events() -> Vec<NodeEvent> {
            let mut events = vec![E::LeaseExpired, E::JobStarted, E::Cordon];
            for active_job in [false, true] {
                events.extend([
                    E::Reconnected { active_job },
                    E::JobEnded { active_job },
                    E::Uncordon { active_job },
                    E::Resume { active_job },
                    E::Drain { active_job },
                    E::Retire {
                        active_job,
                        pending_jobs: 0,
                    },
                    E::Retire {
                        active_job,
                        pending_jobs: 2,
                    },
                ]);
            }
            events
        }

        #[test]
        fn a_job_makes_a_ready_node_busy_and_its_end_frees_it() {
            assert_eq!(next_state(S::Ready, E::JobStarted), Ok(S::Busy));
            assert_eq!(
                next_state(S::Busy, E::JobEnded { active_job: false }),
                Ok(S::Ready)
            );
            assert_eq!(
                next_state(S::Busy, E::JobEnded { active_job: true }),
                Ok(S::Busy)
            );
        }

        #[test]
        fn an_unreachable_node_comes_back_busy_only_with_an_active_job() {
            assert_eq!(next_state(S::Busy, E::LeaseExpired), Ok(S::Unreachable));
            let back = |active_job| next_state(S::Unreachable, E::Reconnected { active_job });
            assert_eq!(back(true), Ok(S::Busy));
            assert_eq!(back(false), Ok(S::Ready));
        }

        #[test]
        fn a_cordon_or_drain_outlives_a_lost_lease_and_the_agent_coming_back() {
            for (from, kept) in [
                (S::Cordoned, S::Cordoned),
                (S::Draining, S::Maintenance),
                (S::Maintenance, S::Maintenance),
            ] {
                let after = next_state(from, E::LeaseExpired).expect("lease expiry");
                assert_eq!(after, kept, "{from}");
                for active_job in [false, true] {
                    assert_eq!(next_state(after, E::Reconnected { active_job }), Ok(kept));
                }
            }
        }

        #[test]
        fn a_drained_node_is_in_maintenance_once_its_job_ends() {
            assert_eq!(
                next_state(S::Busy, E::Drain { active_job: true }),
                Ok(S::Draining)
            );
            for from in [S::Ready, S::Cordoned, S::Maintenance] {
                assert_eq!(
                    next_state(from, E::Drain { active_job: false }),
                    Ok(S::Maintenance),
                    "{from}"
                );
            }
            assert_eq!(
                next_state(S::Draining, E::JobEnded { active_job: false }),
                Ok(S::Maintenance)
            );
            assert_eq!(
                next_state(S::Draining, E::JobEnded { active_job: true }),
                Ok(S::Draining)
            );
            // Cordoning a drained node leaves it drained.
            for from in [S::Draining, S::Maintenance] {
                assert_eq!(next_state(from, E::Cordon), Ok(from));
            }
        }

        #[test]
        fn only_a_draining_node_past_its_deadline_is_overdue() {
            use crate::test_support::at;
            assert!(drain_overdue(S::Draining, Some(at(10)), at(10)));
            assert!(!drain_overdue(S::Draining, Some(at(10)), at(9)));
            assert!(!drain_overdue(S::Draining, None, at(99)));
            for state in [S::Maintenance, S::Ready, S::Cordoned] {
                assert!(!drain_overdue(state, Some(at(10)), at(99)), "{state}");
            }
        }

        #[test]
        fn a_node_in_maintenance_takes_no_job() {
            let refusal = next_state(S::Maintenance, E::JobStarted).expect_err("refused");
            assert!(refusal.message.contains("node resume"), "{refusal}");
        }

        #[test]
        fn resume_and_uncordon_give_back_ready_or_busy() {
            for from in [S::Cordoned, S::Draining, S::Maintenance] {
                for back in [
                    E::Uncordon { active_job: true },
                    E::Resume { active_job: true },
                ] {
                    assert_eq!(next_state(from, back), Ok(S::Busy), "{from} {back:?}");
                }
                for back in [
                    E::Uncordon { active_job: false },
                    E::Resume { active_job: false },
                ] {
                    assert_eq!(next_state(from, back), Ok(S::Ready), "{from} {back:?}");
                }
            }
        }

        #[test]
        fn operators_cannot_change_unreachable_or_retired_nodes() {
            for state in [S::Unreachable, S::Retired] {
                for event in [
                    E::Cordon,
                    E::Uncordon { active_job: false },
                    E::Resume { active_job: false },
                    E::Drain { active_job: false },
                ] {
                    let refusal = next_state(state, event).expect_err("refused");
                    assert_eq!(refusal.state, state);
                    assert!(refusal.message.contains(state.as_str()), "{refusal}");
                }
            }
        }

        #[test]
        fn a_node_with_an_active_job_is_not_retired() {
            for state in [S::Busy, S::Draining, S::Cordoned] {
                let retire = E::Retire {
                    active_job: true,
                    pending_jobs: 0,
                };
                let refusal = next_state(state, retire).expect_err("refused");
                assert!(refusal.message.contains("drain"), "{refusal}");
            }
            let idle = E::Retire {
                active_job: false,
                pending_jobs: 0,
            };
            assert_eq!(next_state(S::Unreachable, idle), Ok(S::Retired));
        }

        #[test]
        fn a_node_that_pending_jobs_wait_for_is_not_retired() {
            for state in [S::Ready, S::Cordoned, S::Unreachable] {
                let retire = E::Retire {
                    active_job: false,
                    pending_jobs: 3,
                };
                let refusal = next_state(state, retire).expect_err("refused");
                assert!(refusal.message.contains("3 pending job(s)"), "{refusal}");
                assert!(refusal.message.contains("run cancel"), "{refusal}");
            }
        }

        #[test]
        fn retired_is_final() {
            for event in events() {
                if let Ok(to) = next_state(S::Retired, event) {
                    assert_eq!(to, S::Retired, "{event:?}");
                }
            }
        }

        #[test]
        fn every_state_answers_every_event_and_only_a_job_makes_a_node_busy() {
            for state in ALL {
                for event in events() {
                    let Ok(to) = next_state(state, event) else {
                        continue;
                    };
                    let gains_a_job = matches!(
                        event,
                        E::JobStarted
                            | E::JobEnded { active_job: true }
                            | E::Reconnected { active_job: true }
                            | E::Uncordon { active_job: true }
                            | E::Resume { active_job: true }
                    );
                    if to == S::Busy && state != S::Busy {
                        assert!(gains_a_job, "{state:?} --{event:?}--> busy");
                    }
                }
            }
        }
    }
}
