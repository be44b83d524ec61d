//! Node health as a state machine: what a node's results showed (findings) and what an operator
//! decided move it, and [`next`] is the one place a change is decided.
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

use crate::fleet::Health;
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
///   nothing.
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
        (H::Good, E::RepeatedErrors { detail }) => (H::Suspect, detail.clone()),
        (H::Bad, E::GpuLost { .. } | E::HealthCheckFailed { .. })
        | (H::Suspect | H::Bad, E::RepeatedErrors { .. }) => return None,
    };
    Some(HealthChange {
        from: health,
        to,
        reason,
    })
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
}
