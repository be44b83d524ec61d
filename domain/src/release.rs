//! Releases, their components, the milestone track, the release lifecycle ([`next`]: the one
//! place promotions, demotions, halts and resumes are decided), and the check that a node
//! really runs a release.

use crate::fleet::Inventory;
use crate::gate::{Decision, Verdict};
use crate::{ReleaseId, Timestamp};
use serde::{Deserialize, Serialize};

/// The milestone a release reaches after passing the last gate of its track.
pub const RELEASED: &str = "released";

/// Component names the agent observes itself; every other name needs an inventory probe.
pub const DRIVER: &str = "driver";
/// The VBIOS of every GPU on the node.
pub const VBIOS: &str = "vbios";
/// The CUDA driver version reported by NVML.
pub const CUDA_DRIVER: &str = "cuda-driver";

/// One versioned part of a release.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// Name (`driver`, `vbios`, `cx7-fw`).
    pub name: String,
    /// Exact version the node must report.
    pub version: String,
    /// Where the artifact lives.
    pub artifact_uri: Option<String>,
    /// Hex sha256 of the artifact.
    pub sha256: Option<String>,
}

/// A promotion past one milestone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The milestone whose gate passed.
    pub from_milestone: String,
    /// The milestone reached.
    pub to_milestone: String,
    /// When.
    pub at: Timestamp,
    /// Digest of the passed decision's inputs.
    pub decision_digest: String,
    /// Who promoted it (an API token's name, or "anonymous").
    #[serde(default)]
    pub actor: String,
}

/// A candidate build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Name.
    pub id: ReleaseId,
    /// Free text.
    pub description: String,
    /// Components, in the order given.
    pub components: Vec<Component>,
    /// The milestone whose gate the release must pass next, or [`RELEASED`].
    pub milestone: String,
    /// When it was registered.
    pub created_at: Timestamp,
    /// Promotions so far, oldest first.
    pub promotions: Vec<Promotion>,
}

/// The ordered milestones every release moves along.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Track {
    /// Milestones, first to last.
    pub milestones: Vec<String>,
}

impl Default for Track {
    fn default() -> Self {
        Self {
            milestones: ["lab-qual", "customer-acceptance", "production"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl Track {
    /// The first milestone, where new releases start.
    pub fn first(&self) -> &str {
        self.milestones.first().map_or(RELEASED, String::as_str)
    }

    /// The milestone after `milestone`, or [`RELEASED`] after the last; `None` if unknown.
    pub fn next(&self, milestone: &str) -> Option<&str> {
        let position = self.milestones.iter().position(|m| m == milestone)?;
        Some(
            self.milestones
                .get(position + 1)
                .map_or(RELEASED, String::as_str),
        )
    }

    /// Whether `milestone` is on the track.
    pub fn contains(&self, milestone: &str) -> bool {
        self.milestones.iter().any(|m| m == milestone)
    }

    /// Where `milestone` is along the track: its index, or the track's length for
    /// [`RELEASED`]; `None` when it is neither.
    pub fn position(&self, milestone: &str) -> Option<usize> {
        if milestone == RELEASED {
            Some(self.milestones.len())
        } else {
            self.milestones.iter().position(|m| m == milestone)
        }
    }
}

/// Where a release stands in its lifecycle: the milestone whose gate it must pass next (or
/// [`RELEASED`]) and, when an operator halted it, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseState {
    /// The milestone whose gate the release must pass next, or [`RELEASED`].
    pub milestone: String,
    /// Why it is halted; `None` when it is not.
    pub halted: Option<String>,
}

impl ReleaseState {
    /// `Err(Halted)` when the release is halted: nothing may be `what` ("run", "promoted") then.
    pub fn refuse_if_halted(
        &self,
        release: &ReleaseId,
        what: &'static str,
    ) -> Result<(), ReleaseRefusal> {
        match &self.halted {
            None => Ok(()),
            Some(reason) => Err(ReleaseRefusal::Halted {
                release: release.clone(),
                reason: reason.clone(),
                what,
            }),
        }
    }
}

/// Something a person asks of a release.
#[derive(Clone, Debug, PartialEq)]
pub enum ReleaseEvent {
    /// Move past the current milestone, on the gate decision evaluated for it (`None`: the
    /// milestone has no gate).
    Promote {
        /// The decision of the current milestone's gate, evaluated just now.
        decision: Option<Box<Decision>>,
        /// When.
        at: Timestamp,
        /// Who.
        actor: String,
    },
    /// Move back to an earlier milestone of the track.
    Demote {
        /// The milestone to move back to.
        to: String,
    },
    /// Stop runs and promotions until resumed.
    Halt {
        /// Why, as the operator wrote it.
        reason: String,
    },
    /// Lift a halt.
    Resume,
}

/// A decided change of a release: the state it was decided from (the store applies it only if
/// the release is still there), the state it moves to, and the promotion to record, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseChange {
    /// The state the change was decided from.
    pub from: ReleaseState,
    /// The state after it.
    pub to: ReleaseState,
    /// The promotion to append (promotions only).
    pub promotion: Option<Promotion>,
}

/// Why a release cannot take an event; the message says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseRefusal {
    /// Halted releases are neither promoted nor run.
    #[error(
        "release {release} is halted ({reason}): it cannot be {what}; resume it with \
         `tollgate resume --release {release}`"
    )]
    Halted {
        /// The release.
        release: ReleaseId,
        /// Why it was halted.
        reason: String,
        /// What was asked ("promoted", "run").
        what: &'static str,
    },
    /// Past the last milestone there is nothing to promote to.
    #[error("release {release} is already released; there is nothing to promote it to")]
    AlreadyReleased {
        /// The release.
        release: ReleaseId,
    },
    /// The release's milestone is not on the track (the track changed under it).
    #[error(
        "release {release} is at milestone {milestone}, which is not on the track ({track}); \
         demote it to a milestone of the track"
    )]
    OffTrack {
        /// The release.
        release: ReleaseId,
        /// Its milestone.
        milestone: String,
        /// The track's milestones, comma separated.
        track: String,
    },
    /// The milestone has no gate, so nothing was evaluated.
    #[error("no gate for milestone {milestone}; apply one with `tollgate gate apply -f FILE`")]
    NoGate {
        /// The milestone.
        milestone: String,
    },
    /// The decision offered is about another release or milestone than the release is at.
    #[error(
        "the gate decision offered is for release {decided_release} at {decided_milestone}, but \
         release {release} is at {milestone}; evaluate the gate again and retry"
    )]
    StaleDecision {
        /// The release.
        release: ReleaseId,
        /// Its milestone.
        milestone: String,
        /// The decision's release.
        decided_release: String,
        /// The decision's milestone.
        decided_milestone: String,
    },
    /// The gate did not pass: the verdict, summary and every rule holding the release back.
    #[error("{explanation}")]
    NotPassed {
        /// What a person reads ([`explain_not_passed`]).
        explanation: String,
    },
    /// A demotion target that is not on the track.
    #[error("to_milestone: '{to}' is not on the track ({track})")]
    UnknownMilestone {
        /// The milestone asked for.
        to: String,
        /// The track's milestones, comma separated.
        track: String,
    },
    /// A demotion target that is not before the release's milestone.
    #[error(
        "release {release} is at {from}; it can only be demoted to an earlier milestone, and \
         {to} is not"
    )]
    NotEarlier {
        /// The release.
        release: ReleaseId,
        /// Its milestone.
        from: String,
        /// The milestone asked for.
        to: String,
    },
    /// Halting a halted release would lose the first reason.
    #[error(
        "release {release} is already halted ({reason}); resume it first to halt it for \
         another reason"
    )]
    AlreadyHalted {
        /// The release.
        release: ReleaseId,
        /// Why it is halted.
        reason: String,
    },
    /// Only a halted release can be resumed.
    #[error("release {release} is not halted; there is nothing to resume")]
    NotHalted {
        /// The release.
        release: ReleaseId,
    },
    /// The release changed between the decision and its application, so the decision no
    /// longer holds (a promotion is not decided again for the next milestone on its own).
    #[error(
        "release {release} changed meanwhile (it was at {was}, it is now at {now}); look at it \
         again and retry"
    )]
    Moved {
        /// The release.
        release: ReleaseId,
        /// The milestone decided from.
        was: String,
        /// The milestone found.
        now: String,
    },
}

/// The text a person reads when a gate did not pass: the verdict, the summary and every rule
/// that is not passed or waived with its reason.
pub fn explain_not_passed(release: &ReleaseId, decision: &Decision) -> String {
    let mut text = format!(
        "gate of milestone {} for release {release} is {}: {}",
        decision.milestone, decision.verdict, decision.summary
    );
    for rule in &decision.rules {
        if !matches!(rule.verdict, Verdict::Passed | Verdict::Waived) {
            text.push_str(&format!(
                "\n  - {} ({}): {}",
                rule.rule_id, rule.verdict, rule.reason
            ));
        }
    }
    text
}

/// The one place a release's lifecycle changes are decided: the change `event` makes to
/// `release` in `state` on `track`, or a refusal.
///
/// ```text
///   m1 ──promote (gate of m1 passed)──▶ m2 ── … ──▶ last ──promote──▶ released
///   mN ──demote to an earlier mK──▶ mK
///   not halted ──halt (reason)──▶ halted ──resume──▶ not halted
/// ```
///
/// A halted release is not promoted (nor run) until resumed; it may still be demoted. A
/// promotion needs the decision of the gate of the release's current milestone, for this
/// release, with verdict `passed`.
pub fn next(
    track: &Track,
    release: &ReleaseId,
    state: &ReleaseState,
    event: ReleaseEvent,
) -> Result<ReleaseChange, ReleaseRefusal> {
    let change = |to: ReleaseState, promotion| ReleaseChange {
        from: state.clone(),
        to,
        promotion,
    };
    match event {
        ReleaseEvent::Promote {
            decision,
            at,
            actor,
        } => {
            let promotion = promote(track, release, state, decision.as_deref(), at, actor)?;
            let to = ReleaseState {
                milestone: promotion.to_milestone.clone(),
                halted: None,
            };
            Ok(change(to, Some(promotion)))
        }
        ReleaseEvent::Demote { to } => {
            let track_text = || track.milestones.join(", ");
            // Only a milestone of the track: a release is never demoted to `released`.
            let Some(to_idx) = track.milestones.iter().position(|m| *m == to) else {
                return Err(ReleaseRefusal::UnknownMilestone {
                    to,
                    track: track_text(),
                });
            };
            if track
                .position(&state.milestone)
                .is_none_or(|from_idx| to_idx >= from_idx)
            {
                return Err(ReleaseRefusal::NotEarlier {
                    release: release.clone(),
                    from: state.milestone.clone(),
                    to,
                });
            }
            let to = ReleaseState {
                milestone: to,
                halted: state.halted.clone(),
            };
            Ok(change(to, None))
        }
        ReleaseEvent::Halt { reason } => match &state.halted {
            Some(halted) => Err(ReleaseRefusal::AlreadyHalted {
                release: release.clone(),
                reason: halted.clone(),
            }),
            None => {
                let to = ReleaseState {
                    milestone: state.milestone.clone(),
                    halted: Some(reason),
                };
                Ok(change(to, None))
            }
        },
        ReleaseEvent::Resume => match state.halted {
            None => Err(ReleaseRefusal::NotHalted {
                release: release.clone(),
            }),
            Some(_) => {
                let to = ReleaseState {
                    milestone: state.milestone.clone(),
                    halted: None,
                };
                Ok(change(to, None))
            }
        },
    }
}

/// The promotion of `release` past its milestone on `decision`, or why not.
fn promote(
    track: &Track,
    release: &ReleaseId,
    state: &ReleaseState,
    decision: Option<&Decision>,
    at: Timestamp,
    actor: String,
) -> Result<Promotion, ReleaseRefusal> {
    state.refuse_if_halted(release, "promoted")?;
    let from = &state.milestone;
    if from == RELEASED {
        return Err(ReleaseRefusal::AlreadyReleased {
            release: release.clone(),
        });
    }
    let Some(to) = track.next(from) else {
        return Err(ReleaseRefusal::OffTrack {
            release: release.clone(),
            milestone: from.clone(),
            track: track.milestones.join(", "),
        });
    };
    let Some(decision) = decision else {
        return Err(ReleaseRefusal::NoGate {
            milestone: from.clone(),
        });
    };
    if decision.release != release.as_str() || decision.milestone != *from {
        return Err(ReleaseRefusal::StaleDecision {
            release: release.clone(),
            milestone: from.clone(),
            decided_release: decision.release.clone(),
            decided_milestone: decision.milestone.clone(),
        });
    }
    if decision.verdict != Verdict::Passed {
        return Err(ReleaseRefusal::NotPassed {
            explanation: explain_not_passed(release, decision),
        });
    }
    Ok(Promotion {
        from_milestone: from.clone(),
        to_milestone: to.to_owned(),
        at,
        decision_digest: decision.digest.clone(),
        actor,
    })
}

/// A field of a request that is wrong, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Field path, for example `components[1].version`.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Whether `name` is usable as a release, plan, node or component name.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crate::limits::NAME.max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Why `name` is not a valid name of `what` (release, plan, node, step, component), quoting at
/// most a prefix of it; `None` when it is valid.
pub fn name_problem(what: &str, name: &str) -> Option<String> {
    use crate::limits::{NAME, quote};
    if name.len() > NAME.max {
        Some(crate::limits::too_long(&NAME, name))
    } else if is_valid_name(name) {
        None
    } else {
        Some(format!(
            "{} is not a valid {what} name (1-{} letters, digits, '-', '_', '.')",
            quote(name),
            NAME.max
        ))
    }
}

/// Checks a new release's name, description and components; returns every problem at once.
pub fn validate_release(
    name: &str,
    description: &str,
    components: &[Component],
) -> Result<(), Vec<FieldError>> {
    use crate::limits::{COMPONENTS, DESCRIPTION, PATH, VERSION, check_count, check_text, quote};
    let mut errors = Vec::new();
    let mut field = |field: String, message: String| errors.push(FieldError { field, message });
    if let Some(message) = name_problem("release", name) {
        field("name".into(), message);
    }
    if let Err(message) = check_text(&DESCRIPTION, description) {
        field("description".into(), message);
    }
    if let Err(message) = check_count(&COMPONENTS, components.len()) {
        // Checking each of a huge list would only make a huge answer; the count is the error.
        field("components".into(), message);
        return Err(errors);
    }
    if components.is_empty() {
        errors.push(FieldError {
            field: "components".into(),
            message: "a release needs at least one component, for example driver=550.54.15".into(),
        });
    }
    let mut seen = std::collections::HashSet::new();
    for (idx, component) in components.iter().enumerate() {
        let name_invalid = name_problem("component", &component.name);
        let shown = quote(&component.name);
        if let Some(message) = &name_invalid {
            errors.push(FieldError {
                field: format!("components[{idx}].name"),
                message: message.clone(),
            });
        }
        if component.version.trim().is_empty() {
            errors.push(FieldError {
                field: format!("components[{idx}].version"),
                message: format!("component {shown} has an empty version"),
            });
        } else if let Err(message) = check_text(&VERSION, &component.version) {
            errors.push(FieldError {
                field: format!("components[{idx}].version"),
                message,
            });
        }
        if let Some(uri) = &component.artifact_uri
            && let Err(message) = check_text(&PATH, uri)
        {
            errors.push(FieldError {
                field: format!("components[{idx}].artifact_uri"),
                message,
            });
        }
        if let Some(sha) = &component.sha256
            && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
        {
            errors.push(FieldError {
                field: format!("components[{idx}].sha256"),
                message: format!("{} is not 64 hex digits", quote(sha)),
            });
        }
        if name_invalid.is_none() && !seen.insert(component.name.as_str()) {
            errors.push(FieldError {
                field: format!("components[{idx}].name"),
                message: format!("component {shown} is given twice"),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// A component whose observed version differs from the release's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryMismatch {
    /// Component name.
    pub component: String,
    /// The release's version.
    pub expected: String,
    /// What the node reported; `None` when nothing reports this component.
    pub observed: Option<String>,
    /// The GPU, for per-GPU components (VBIOS).
    pub gpu_index: Option<u32>,
}

impl std::fmt::Display for InventoryMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gpu = self
            .gpu_index
            .map(|idx| format!(" on GPU {idx}"))
            .unwrap_or_default();
        match &self.observed {
            Some(observed) => write!(
                f,
                "{}{gpu} is {observed}, release wants {}",
                self.component, self.expected
            ),
            None => write!(
                f,
                "{} is not reported by the node (release wants {}); add an inventory probe for it",
                self.component, self.expected
            ),
        }
    }
}

/// Compares what a node observed with the release's components.
///
/// `only` limits the check to the named components; empty means all of them. `driver`,
/// `vbios` (every GPU) and `cuda-driver` are read from NVML; every other component must come
/// from an inventory probe, and one that nothing reports is a mismatch: the check fails closed.
pub fn check_inventory(
    components: &[Component],
    only: &[String],
    inventory: &Inventory,
) -> Vec<InventoryMismatch> {
    let mut mismatches = Vec::new();
    let wanted = components
        .iter()
        .filter(|c| only.is_empty() || only.iter().any(|name| name == &c.name));
    for component in wanted {
        let mut check = |observed: Option<&str>, gpu_index: Option<u32>| {
            if observed != Some(component.version.as_str()) {
                mismatches.push(InventoryMismatch {
                    component: component.name.clone(),
                    expected: component.version.clone(),
                    observed: observed.map(str::to_owned),
                    gpu_index,
                });
            }
        };
        // Gates call this for every result they count: no allocation unless something differs.
        match component.name.as_str() {
            DRIVER => check(non_empty(&inventory.driver_version), None),
            CUDA_DRIVER => check(non_empty(&inventory.cuda_driver_version), None),
            VBIOS if inventory.gpus.is_empty() => check(None, None),
            VBIOS => {
                for gpu in &inventory.gpus {
                    check(non_empty(&gpu.vbios_version), Some(gpu.index));
                }
            }
            name => check(inventory.components.get(name).map(String::as_str), None),
        }
    }
    mismatches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{component, inventory};

    #[test]
    fn matching_inventory_has_no_mismatch() {
        let components = [
            component("driver", "550.54.15"),
            component("vbios", "96.00.89.00.01"),
        ];
        assert!(
            check_inventory(
                &components,
                &[],
                &inventory("550.54.15", "96.00.89.00.01", 2)
            )
            .is_empty()
        );
    }

    #[test]
    fn each_gpu_with_another_vbios_is_named() {
        let components = [component("vbios", "96.00.89.00.01")];
        let mut inv = inventory("550.54.15", "96.00.89.00.01", 3);
        inv.gpus[2].vbios_version = "96.00.74.00.01".into();
        let mismatches = check_inventory(&components, &[], &inv);
        assert_eq!(mismatches.len(), 1);
        assert_eq!(mismatches[0].gpu_index, Some(2));
        assert_eq!(
            mismatches[0].to_string(),
            "vbios on GPU 2 is 96.00.74.00.01, release wants 96.00.89.00.01"
        );
    }

    #[test]
    fn unobserved_component_fails_closed_unless_left_out() {
        let components = [
            component("driver", "550.54.15"),
            component("cx7-fw", "28.39.1002"),
        ];
        let inv = inventory("550.54.15", "96.00.89.00.01", 1);
        let mismatches = check_inventory(&components, &[], &inv);
        assert_eq!(mismatches.len(), 1);
        assert!(mismatches[0].to_string().contains("add an inventory probe"));
        assert!(check_inventory(&components, &["driver".into()], &inv).is_empty());
        let mut probed = inv.clone();
        probed
            .components
            .insert("cx7-fw".into(), "28.39.1002".into());
        assert!(check_inventory(&components, &[], &probed).is_empty());
    }

    #[test]
    fn release_validation_names_every_bad_field() {
        let errors = validate_release(
            "bad name",
            "",
            &[
                component("driver", ""),
                component("driver", "1"),
                Component {
                    sha256: Some("xyz".into()),
                    ..component("vbios", "1")
                },
            ],
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "components[0].version",
                "components[1].name",
                "components[2].sha256"
            ]
        );
        assert!(
            validate_release("r1", "", &[]).unwrap_err()[0]
                .message
                .contains("at least one")
        );
    }

    mod lifecycle {
        use super::super::*;
        use crate::test_support::at;

        fn id() -> ReleaseId {
            ReleaseId::from("r550")
        }

        fn at_milestone(milestone: &str) -> ReleaseState {
            ReleaseState {
                milestone: milestone.into(),
                halted: None,
            }
        }

        fn decision(milestone: &str, verdict: Verdict) -> Option<Box<Decision>> {
            Some(Box::new(Decision {
                release: "r550".into(),
                milestone: milestone.into(),
                verdict,
                summary: "1 of 1 rules passed".into(),
                rules: Vec::new(),
                digest: "d1".into(),
                policy_version: "v1".into(),
                evaluated_at: at(10),
            }))
        }

        fn promote(decision: Option<Box<Decision>>) -> ReleaseEvent {
            ReleaseEvent::Promote {
                decision,
                at: at(11),
                actor: "alice".into(),
            }
        }

        #[test]
        fn a_passed_gate_promotes_to_the_next_milestone_and_then_to_released() {
            let track = Track::default();
            let change = next(
                &track,
                &id(),
                &at_milestone("lab-qual"),
                promote(decision("lab-qual", Verdict::Passed)),
            )
            .expect("promoted");
            assert_eq!(change.from, at_milestone("lab-qual"));
            assert_eq!(change.to, at_milestone("customer-acceptance"));
            assert_eq!(
                change.promotion,
                Some(Promotion {
                    from_milestone: "lab-qual".into(),
                    to_milestone: "customer-acceptance".into(),
                    at: at(11),
                    decision_digest: "d1".into(),
                    actor: "alice".into(),
                })
            );
            let last = next(
                &track,
                &id(),
                &at_milestone("production"),
                promote(decision("production", Verdict::Passed)),
            )
            .expect("released");
            assert_eq!(last.to.milestone, RELEASED);
        }

        #[test]
        fn each_promotion_refusal() {
            use ReleaseRefusal as R;
            let track = Track::default();
            let refused = |state: &ReleaseState, decision| {
                next(&track, &id(), state, promote(decision)).expect_err("refused")
            };
            let lab = at_milestone("lab-qual");
            for verdict in [Verdict::Failed, Verdict::Waiting, Verdict::Error] {
                let refusal = refused(&lab, decision("lab-qual", verdict));
                assert!(
                    matches!(&refusal, R::NotPassed { explanation } if explanation.contains(verdict.as_str())),
                    "{refusal:?}"
                );
            }
            assert_eq!(
                refused(&lab, None),
                R::NoGate {
                    milestone: "lab-qual".into()
                }
            );
            assert!(matches!(
                refused(&lab, decision("production", Verdict::Passed)),
                R::StaleDecision { .. }
            ));
            let mut other = decision("lab-qual", Verdict::Passed);
            if let Some(d) = other.as_mut() {
                d.release = "r560".into();
            }
            assert!(matches!(refused(&lab, other), R::StaleDecision { .. }));
            let halted = ReleaseState {
                halted: Some("bad batch".into()),
                ..lab.clone()
            };
            let refusal = refused(&halted, decision("lab-qual", Verdict::Passed));
            assert!(matches!(
                refusal,
                R::Halted {
                    what: "promoted",
                    ..
                }
            ));
            assert!(refusal.to_string().contains("tollgate resume"), "{refusal}");
            assert!(matches!(
                refused(&at_milestone(RELEASED), decision(RELEASED, Verdict::Passed)),
                R::AlreadyReleased { .. }
            ));
            assert!(matches!(
                refused(&at_milestone("moon"), decision("moon", Verdict::Passed)),
                R::OffTrack { .. }
            ));
        }

        #[test]
        fn demotion_goes_back_only_and_keeps_a_halt() {
            use ReleaseRefusal as R;
            let track = Track::default();
            let demote = |state: &ReleaseState, to: &str| {
                next(&track, &id(), state, ReleaseEvent::Demote { to: to.into() })
            };
            let halted = ReleaseState {
                milestone: RELEASED.into(),
                halted: Some("recall".into()),
            };
            let change = demote(&halted, "customer-acceptance").expect("demoted");
            assert_eq!(change.to.milestone, "customer-acceptance");
            assert_eq!(change.to.halted.as_deref(), Some("recall"));
            assert_eq!(change.promotion, None);
            let ca = at_milestone("customer-acceptance");
            assert!(matches!(
                demote(&ca, "production"),
                Err(R::NotEarlier { .. })
            ));
            assert!(matches!(
                demote(&ca, "customer-acceptance"),
                Err(R::NotEarlier { .. })
            ));
            assert!(matches!(
                demote(&ca, RELEASED),
                Err(R::UnknownMilestone { .. })
            ));
            assert!(matches!(
                demote(&ca, "moon"),
                Err(R::UnknownMilestone { .. })
            ));
        }

        #[test]
        fn halt_and_resume_toggle_and_refuse_a_repeat() {
            use ReleaseRefusal as R;
            let track = Track::default();
            let lab = at_milestone("lab-qual");
            let halt = |reason: &str| ReleaseEvent::Halt {
                reason: reason.into(),
            };
            let halted = next(&track, &id(), &lab, halt("bad batch"))
                .expect("halted")
                .to;
            assert_eq!(halted.halted.as_deref(), Some("bad batch"));
            assert_eq!(halted.milestone, "lab-qual");
            assert!(matches!(
                next(&track, &id(), &halted, halt("again")),
                Err(R::AlreadyHalted { reason, .. }) if reason == "bad batch"
            ));
            let resumed = next(&track, &id(), &halted, ReleaseEvent::Resume).expect("resumed");
            assert_eq!(resumed.to, lab);
            assert!(matches!(
                next(&track, &id(), &lab, ReleaseEvent::Resume),
                Err(R::NotHalted { .. })
            ));
            assert!(lab.refuse_if_halted(&id(), "run").is_ok());
            assert!(matches!(
                halted.refuse_if_halted(&id(), "run"),
                Err(R::Halted { what: "run", .. })
            ));
        }
    }

    #[test]
    fn track_moves_forward_to_released() {
        let track = Track::default();
        assert_eq!(track.first(), "lab-qual");
        assert_eq!(track.next("lab-qual"), Some("customer-acceptance"));
        assert_eq!(track.next("production"), Some(RELEASED));
        assert_eq!(track.next("nowhere"), None);
    }
}
