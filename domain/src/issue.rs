//! Issues: failures that share a signature, tracked across runs and releases until closed.
//!
//! ```text
//!   open ──fix R──▶ fix-in-release(R) ──R passes on some affected nodes──▶ verifying(R)
//!    ▲ ▲                 │   │                                               │   │
//!    │ └──still failing in R┘ └──────────R passes on every affected node──────┼─▶ closed(R)
//!    │                                                                         │      │
//!    └────────────────────────still failing in R───────────────────────────────┘      │
//!    └──────────────────────fails again in a release it was not known in───────────────┘
//!   open | fix-in-release | verifying ──won't fix (reason)──▶ won't-fix ──reopen──▶ open
//! ```
//!
//! [`next`] is the one place transitions are defined, [`plan_matches`] decides which failure
//! groups attach to which issue (no duplicates), and [`plan_verification`] decides what a fix
//! release's evidence does to an issue. The controller loads, calls these and persists the
//! answer with its history entry.

use crate::gate::{Decision, Verdict};
use crate::{NodeId, ReleaseId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

pub mod csv;
#[cfg(test)]
mod tests;

/// What alike failures share: the kind of gate rule that saw them and the failure group's
/// signature (`steps-passed` + `stress: failed: exit code #`, `events` + `XID 79`). The rule's
/// id is left out on purpose: two gates naming the same check differently still meet in one
/// issue.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Signature {
    /// The rule kind (`steps-passed`, `events`, `dcgm-diag`, `telemetry`, ...).
    pub kind: String,
    /// The failure group's signature.
    pub text: String,
}

impl Signature {
    /// The signature as one line: `kind: text`; issues are unique on it.
    pub fn key(&self) -> String {
        format!("{}: {}", self.kind, self.text)
    }
}

/// Where an issue is. Each variant's doc says what is true in that state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum IssueState {
    /// Failing, no fix promised yet.
    Open,
    /// A fix is promised in `release`; none of its evidence has passed on an affected node yet.
    FixInRelease {
        /// The release carrying the fix.
        release: ReleaseId,
    },
    /// The fix release has passed the signature's checks on some affected nodes, not yet on all.
    Verifying {
        /// The release carrying the fix.
        release: ReleaseId,
    },
    /// The fix release passed the signature's checks on every affected node.
    Closed {
        /// The release that fixed it.
        release: ReleaseId,
    },
    /// Not going to be fixed, for the reason given.
    WontFix {
        /// Why.
        reason: String,
    },
}

impl IssueState {
    /// The wire and storage name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::FixInRelease { .. } => "fix-in-release",
            Self::Verifying { .. } => "verifying",
            Self::Closed { .. } => "closed",
            Self::WontFix { .. } => "wont-fix",
        }
    }

    /// The fix release, in the states that have one.
    pub fn release(&self) -> Option<&ReleaseId> {
        match self {
            Self::FixInRelease { release }
            | Self::Verifying { release }
            | Self::Closed { release } => Some(release),
            Self::Open | Self::WontFix { .. } => None,
        }
    }

    /// The won't-fix reason, in that state.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::WontFix { reason } => Some(reason),
            _ => None,
        }
    }

    /// Rebuilds a state from its stored parts: the name, the fix release and the reason.
    pub fn from_parts(
        name: &str,
        release: Option<&str>,
        reason: Option<&str>,
    ) -> Result<Self, String> {
        let release = || {
            release
                .map(ReleaseId::from)
                .ok_or_else(|| format!("issue state {name} without a release"))
        };
        Ok(match name {
            "open" => Self::Open,
            "fix-in-release" => Self::FixInRelease {
                release: release()?,
            },
            "verifying" => Self::Verifying {
                release: release()?,
            },
            "closed" => Self::Closed {
                release: release()?,
            },
            "wont-fix" => Self::WontFix {
                reason: reason.unwrap_or_default().to_owned(),
            },
            other => return Err(crate::names::unknown::<IssueStateName>(other)),
        })
    }

    /// Whether the issue is over (closed or won't-fix).
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Closed { .. } | Self::WontFix { .. })
    }
}

/// The state names, for listing filters and error messages.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::EnumIter,
)]
#[strum(serialize_all = "kebab-case", parse_err_ty = String, parse_err_fn = crate::names::unknown::<Self>)]
pub enum IssueStateName {
    /// [`IssueState::Open`].
    Open,
    /// [`IssueState::FixInRelease`].
    FixInRelease,
    /// [`IssueState::Verifying`].
    Verifying,
    /// [`IssueState::Closed`].
    Closed,
    /// [`IssueState::WontFix`].
    WontFix,
}

/// Something that happens to an issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssueEvent {
    /// A person says the fix is in `release`.
    Fix {
        /// The release.
        release: ReleaseId,
    },
    /// The fix release passed the signature's checks on some affected nodes.
    VerificationStarted,
    /// The fix release passed the signature's checks on every affected node.
    Verified,
    /// The fix release still fails the signature's checks.
    StillFailing,
    /// A person decides it will not be fixed.
    WontFix {
        /// Why.
        reason: String,
    },
    /// The signature failed in a release the issue did not know, or a person reopens it.
    Reopen,
}

impl IssueEvent {
    /// The event's name, for refusals and history.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Fix { .. } => "fix",
            Self::VerificationStarted => "verification-started",
            Self::Verified => "verified",
            Self::StillFailing => "still-failing",
            Self::WontFix { .. } => "wont-fix",
            Self::Reopen => "reopen",
        }
    }
}

/// Why an event cannot apply.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum IssueRefusal {
    /// The event does not apply in the issue's state.
    #[error("an issue in state {state} cannot take {event}")]
    Transition {
        /// The state's name.
        state: &'static str,
        /// The event's name.
        event: &'static str,
    },
    /// Won't-fix needs a reason.
    #[error("won't-fix needs a reason; give one")]
    NoReason,
    /// A fix needs a release.
    #[error("a fix needs the release it is in; give one")]
    NoRelease,
}

/// The one place issue transitions are defined.
pub fn next(state: &IssueState, event: IssueEvent) -> Result<IssueState, IssueRefusal> {
    use IssueEvent as E;
    use IssueState as S;
    let refused = |event: &IssueEvent| IssueRefusal::Transition {
        state: state.name(),
        event: event.name(),
    };
    Ok(match (state, event) {
        (_, E::Fix { release }) if release.as_str().trim().is_empty() => {
            return Err(IssueRefusal::NoRelease);
        }
        (_, E::WontFix { reason }) if reason.trim().is_empty() => {
            return Err(IssueRefusal::NoReason);
        }
        // A fix can be promised, or moved to another release, until the issue is over.
        (S::Open | S::FixInRelease { .. } | S::Verifying { .. }, E::Fix { release }) => {
            S::FixInRelease { release }
        }
        (S::FixInRelease { release }, E::VerificationStarted) => S::Verifying {
            release: release.clone(),
        },
        (S::FixInRelease { release } | S::Verifying { release }, E::Verified) => S::Closed {
            release: release.clone(),
        },
        (S::FixInRelease { .. } | S::Verifying { .. }, E::StillFailing) => S::Open,
        (S::Open | S::FixInRelease { .. } | S::Verifying { .. }, E::WontFix { reason }) => {
            S::WontFix {
                reason: reason.trim().to_owned(),
            }
        }
        (S::Closed { .. } | S::WontFix { .. }, E::Reopen) => S::Open,
        (_, event) => return Err(refused(&event)),
    })
}

/// What a store knows of one issue when matching new failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownIssue {
    /// The issue's id.
    pub id: i64,
    /// Its signature.
    pub signature: Signature,
    /// Its state.
    pub state: IssueState,
    /// The releases it is known to fail in.
    pub releases: BTreeSet<ReleaseId>,
    /// The nodes it is known to fail on.
    pub nodes: BTreeSet<NodeId>,
}

/// One failure group seen in a release's gate decision, keyed by its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The signature.
    pub signature: Signature,
    /// The release it failed in.
    pub release: ReleaseId,
    /// The nodes it failed on.
    pub nodes: BTreeSet<NodeId>,
}

/// What to do with one failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// No issue has this signature: open one.
    Open(Failure),
    /// An issue has it: add what is new (a release, nodes); `event` is a transition to apply
    /// with it, when the failure changes the issue's state.
    Attach {
        /// The issue.
        id: i64,
        /// The releases not known before.
        new_release: Option<ReleaseId>,
        /// The nodes not known before.
        new_nodes: BTreeSet<NodeId>,
        /// The transition the failure causes, if any.
        event: Option<IssueEvent>,
    },
}

/// The failures of a decision, one per signature, with the nodes each hit. Only rules that
/// failed and are not waived carry failure groups.
pub fn failures_of(decision: &Decision) -> Vec<Failure> {
    let mut by_signature: BTreeMap<Signature, BTreeSet<NodeId>> = BTreeMap::new();
    for rule in &decision.rules {
        if rule.verdict != Verdict::Failed {
            continue;
        }
        for group in &rule.failure_groups {
            let signature = Signature {
                kind: rule.kind.clone(),
                text: group.signature.clone(),
            };
            by_signature
                .entry(signature)
                .or_default()
                .extend(group.nodes.iter().cloned());
        }
    }
    by_signature
        .into_iter()
        .map(|(signature, nodes)| Failure {
            signature,
            release: ReleaseId::from(decision.release.as_str()),
            nodes,
        })
        .collect()
}

/// How a person names a failure group of a decision: `RULE#N`, the Nth group (from 1) of the
/// rule with id RULE, as `tollgate gate show` numbers them.
pub fn group_ref(rule_id: &str, idx: usize) -> String {
    format!("{rule_id}#{}", idx + 1)
}

/// The failure a person names in `decision`: a group reference ([`group_ref`]) or a whole
/// signature (`kind: text`). The error says which groups there are.
pub fn failure_named(decision: &Decision, reference: &str) -> Result<Failure, String> {
    let reference = reference.trim();
    let mut known = Vec::new();
    for rule in &decision.rules {
        for (idx, group) in rule.failure_groups.iter().enumerate() {
            let signature = Signature {
                kind: rule.kind.clone(),
                text: group.signature.clone(),
            };
            let name = group_ref(&rule.rule_id, idx);
            if name == reference || signature.key() == reference {
                return Ok(Failure {
                    signature,
                    release: ReleaseId::from(decision.release.as_str()),
                    nodes: group.nodes.iter().cloned().collect(),
                });
            }
            known.push(format!("{name} ({})", signature.key()));
        }
    }
    if known.is_empty() {
        return Err(format!(
            "'{reference}' names no failure group: the latest decision of release {} at {} has \
             none (no rule failed)",
            decision.release, decision.milestone
        ));
    }
    Err(format!(
        "'{reference}' names no failure group of the latest decision of release {} at {}; give \
         one of: {}",
        decision.release,
        decision.milestone,
        known.join(", ")
    ))
}

/// Decides, for each failure, whether it opens an issue or attaches to a known one. Nothing
/// new gives nothing: re-evaluating the same evidence changes no issue. A failure in the
/// release an issue's fix is in sends the issue back to open; one in a release a closed or
/// won't-fix issue did not know reopens it (won't-fix stays: it was decided knowingly).
pub fn plan_matches(known: &[KnownIssue], failures: &[Failure]) -> Vec<Match> {
    let by_signature: BTreeMap<&Signature, &KnownIssue> = known
        .iter()
        .map(|issue| (&issue.signature, issue))
        .collect();
    let mut matches = Vec::new();
    for failure in failures {
        let Some(issue) = by_signature.get(&failure.signature) else {
            matches.push(Match::Open(failure.clone()));
            continue;
        };
        let new_release =
            (!issue.releases.contains(&failure.release)).then(|| failure.release.clone());
        let new_nodes: BTreeSet<NodeId> = failure.nodes.difference(&issue.nodes).cloned().collect();
        let event = match &issue.state {
            IssueState::FixInRelease { release } | IssueState::Verifying { release }
                if *release == failure.release =>
            {
                Some(IssueEvent::StillFailing)
            }
            IssueState::Closed { .. } if new_release.is_some() => Some(IssueEvent::Reopen),
            _ => None,
        };
        if new_release.is_some() || !new_nodes.is_empty() || event.is_some() {
            matches.push(Match::Attach {
                id: issue.id,
                new_release,
                new_nodes,
                event,
            });
        }
    }
    matches
}

/// How the signature's checks went on one node in the fix release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeCheck {
    /// The checks ran and none failed with the signature.
    Passed,
    /// A check failed with the signature.
    Failed,
    /// No evidence yet, or other failures hide whether the signature's checks pass.
    Pending,
}

/// How the fix release's `decision` judged `signature` on each node it has evidence for.
pub fn checks_of(decision: &Decision, signature: &Signature) -> BTreeMap<NodeId, NodeCheck> {
    let mut checks: BTreeMap<NodeId, NodeCheck> = BTreeMap::new();
    for rule in decision
        .rules
        .iter()
        .filter(|rule| rule.kind == signature.kind)
    {
        for item in &rule.evidence {
            let failing_here = !item.ok
                && item.signature.as_deref().unwrap_or(item.detail.as_str()) == signature.text;
            let now = if failing_here {
                NodeCheck::Failed
            } else if item.ok {
                NodeCheck::Passed
            } else {
                NodeCheck::Pending
            };
            let check = checks.entry(item.node.clone()).or_insert(now);
            *check = match (*check, now) {
                (NodeCheck::Failed, _) | (_, NodeCheck::Failed) => NodeCheck::Failed,
                (NodeCheck::Pending, _) | (_, NodeCheck::Pending) => NodeCheck::Pending,
                (NodeCheck::Passed, NodeCheck::Passed) => NodeCheck::Passed,
            };
        }
    }
    checks
}

/// Decides what the fix release's evidence does to an issue: `Verified` when the checks passed
/// on every affected node, `StillFailing` when one failed, `VerificationStarted` when some have
/// passed, nothing otherwise. Only an issue whose fix is in `release` is verified by it.
pub fn plan_verification(
    state: &IssueState,
    affected: &BTreeSet<NodeId>,
    release: &ReleaseId,
    checks: &BTreeMap<NodeId, NodeCheck>,
) -> Option<IssueEvent> {
    let (IssueState::FixInRelease { release: fix } | IssueState::Verifying { release: fix }) =
        state
    else {
        return None;
    };
    if fix != release || affected.is_empty() {
        return None;
    }
    let check = |node: &NodeId| checks.get(node).copied().unwrap_or(NodeCheck::Pending);
    if affected.iter().any(|node| check(node) == NodeCheck::Failed) {
        Some(IssueEvent::StillFailing)
    } else if affected.iter().all(|node| check(node) == NodeCheck::Passed) {
        Some(IssueEvent::Verified)
    } else if matches!(state, IssueState::FixInRelease { .. })
        && affected.iter().any(|node| check(node) == NodeCheck::Passed)
    {
        Some(IssueEvent::VerificationStarted)
    } else {
        None
    }
}

/// An issue as stored: what it is, who owns it, where it stands and where it failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// The issue's number.
    pub id: i64,
    /// The signature it groups failures by.
    pub signature: Signature,
    /// A one-line title; the signature's key until a person sets one.
    pub title: String,
    /// How bad it is, as a person judged (`low`, `high`, ...); none until set.
    pub severity: Option<String>,
    /// Who works on it; none until set.
    pub owner: Option<String>,
    /// References to tickets in other trackers.
    pub tickets: Vec<String>,
    /// The customers it matters to, as a person set them.
    #[serde(default)]
    pub customers: BTreeSet<String>,
    /// Where it stands.
    pub state: IssueState,
    /// The releases it failed in.
    pub releases: BTreeSet<ReleaseId>,
    /// The nodes it failed on.
    pub nodes: BTreeSet<NodeId>,
    /// The evidence that closed it: the fix release's decision digest, when closed by
    /// verification.
    pub evidence: Option<String>,
    /// When it was opened.
    pub opened_at: crate::Timestamp,
    /// When it last changed.
    pub updated_at: crate::Timestamp,
}

impl Issue {
    /// What matching needs to know of it.
    pub fn known(&self) -> KnownIssue {
        KnownIssue {
            id: self.id,
            signature: self.signature.clone(),
            state: self.state.clone(),
            releases: self.releases.clone(),
            nodes: self.nodes.clone(),
        }
    }
}

/// One entry of an issue's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueHistory {
    /// When.
    pub at: crate::Timestamp,
    /// Who: a person's token name, or `controller` for automatic changes.
    pub actor: String,
    /// What happened (`opened`, `attached`, an [`IssueEvent`]'s name).
    pub action: String,
    /// The state after it.
    pub state: String,
    /// Details a person reads: the release and nodes attached, the reason, the evidence.
    pub detail: String,
}
