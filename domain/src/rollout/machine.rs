//! The rollout state machine: [`next`] alone decides what an event does to a rollout and to
//! the progress of its nodes (the diagram is in the module's head, `rollout/mod.rs`).

use super::spec::{OnInterrupted, RolloutSpec};
use super::waves::WavePlan;
use crate::gate::{Decision, Verdict};
use crate::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Where a rollout is. Each variant's doc says what is true in that phase.
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
pub enum Phase {
    /// Created; no node has started.
    #[default]
    Pending,
    /// Nodes of wave `wave` start as the blast radius allows and go through the procedure.
    Running,
    /// Every node of wave `wave` finished; its telemetry is watched until `since + soak`.
    Soaking,
    /// Wave `wave` soaked; its health is being judged. Nothing starts.
    Judging,
    /// The wave before `wave` passed; wave `wave` starts at `since + pause-between-waves`.
    Interval,
    /// A person paused the rollout in phase `paused_from`: no node starts; nodes in procedure
    /// finish and are recorded.
    Paused,
    /// A health rule of wave `wave` failed (`halt` says which, and on which nodes): no node
    /// starts until a person resumes, skips the wave or aborts.
    Halted,
    /// Aborted with rollback (every node that went through the procedure), or a halted
    /// wave rolled back (that wave's nodes only): those nodes run the rollback plan, within
    /// the same blast radius.
    RollingBack,
    /// Every node that went through the procedure ran its rollback (some may have failed it).
    RolledBack,
    /// Every wave passed or was skipped.
    Completed,
    /// Aborted without rollback: nothing more starts; nodes in procedure finish.
    Aborted,
}

impl Phase {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the rollout has ended; only its stragglers' ends are recorded after that.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::RolledBack | Self::Aborted)
    }
}

/// Where one node of a rollout is (ordered as declared: the way a node goes).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
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
pub enum NodeProgress {
    /// Not started.
    #[default]
    Waiting,
    /// Going through the procedure.
    InProcedure,
    /// Went through the procedure, which passed.
    Passed,
    /// Went through the procedure, which failed (or was interrupted under `on-interrupted:
    /// fail`).
    Failed,
    /// Its wave was skipped before it started; it keeps the release it had.
    Skipped,
    /// Went through the procedure and waits to run the rollback plan.
    RollbackPending,
    /// Running the rollback plan.
    RollingBack,
    /// Ran the rollback plan, which passed.
    RolledBack,
    /// Ran the rollback plan, which failed.
    RollbackFailed,
}

impl NodeProgress {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the node occupies the blast radius: its procedure or rollback runs.
    pub fn is_active(self) -> bool {
        matches!(self, Self::InProcedure | Self::RollingBack)
    }
}

/// The progress of every node of a rollout, by node; a node not listed is `waiting`.
pub type Progress = BTreeMap<NodeId, NodeProgress>;

/// A rollout's own state (its nodes' progress is kept beside it, in a [`Progress`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutState {
    /// The phase.
    pub phase: Phase,
    /// The wave the phase is about: an index into [`WavePlan::waves`].
    pub wave: usize,
    /// When the phase began; a soak and the pause between waves count from it (a pause by a
    /// person does not stop them).
    pub since: Timestamp,
    /// While `paused`: the phase it resumes to.
    pub paused_from: Option<Phase>,
    /// While `halted`: which health rules failed, on which nodes.
    pub halt: Option<Halt>,
    /// Every wave skipped, in order.
    pub skipped: Vec<SkippedWave>,
}

impl RolloutState {
    /// A new rollout, `pending` since `now`.
    pub fn new(now: Timestamp) -> Self {
        Self {
            phase: Phase::Pending,
            wave: 0,
            since: now,
            paused_from: None,
            halt: None,
            skipped: Vec::new(),
        }
    }
}

/// Why a rollout halted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halt {
    /// The wave judged.
    pub wave: usize,
    /// Each health rule that failed (or could not be evaluated); after a failed rollback, one
    /// entry of rule [`ROLLBACK_FAILED`] naming the nodes.
    pub failures: Vec<HealthFailure>,
    /// When.
    pub at: Timestamp,
    /// Whether a rollback failed (the halt stops the rollback; resume and skip-wave are
    /// refused: a person aborts, with rollback to try it again).
    #[serde(default)]
    pub rollback_failed: bool,
}

/// The rule id a halt lists when a node's rollback failed.
pub const ROLLBACK_FAILED: &str = "rollback";

/// One health rule that did not pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthFailure {
    /// The rule's id.
    pub rule_id: String,
    /// Its verdict's reason.
    pub reason: String,
    /// The nodes that made it fail.
    pub nodes: Vec<NodeId>,
}

/// A wave a person skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedWave {
    /// The wave.
    pub wave: usize,
    /// Why, as the person wrote it.
    pub reason: String,
    /// When.
    pub at: Timestamp,
    /// Its nodes that had not started and were skipped.
    pub nodes: Vec<NodeId>,
}

/// The verdict of a wave's health rules ([`health_verdict`] of the health gate's decision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthVerdict {
    /// Every rule passed.
    Passed,
    /// Evidence is missing or still coming.
    Waiting,
    /// Some rule failed or could not be evaluated: the rollout halts.
    Failed(Vec<HealthFailure>),
}

/// The health verdict of a decision of the rollout's health gate. It fails closed: a rule that
/// could not be evaluated (`error`) halts the rollout like a failed one.
pub fn health_verdict(decision: &Decision) -> HealthVerdict {
    match decision.verdict {
        Verdict::Passed => HealthVerdict::Passed,
        Verdict::Waiting => HealthVerdict::Waiting,
        _ => HealthVerdict::Failed(
            decision
                .rules
                .iter()
                .filter(|rule| matches!(rule.verdict, Verdict::Failed | Verdict::Error))
                .map(|rule| HealthFailure {
                    rule_id: rule.rule_id.clone(),
                    reason: rule.reason.clone(),
                    nodes: rule.failing_nodes.clone(),
                })
                .collect(),
        ),
    }
}

/// Something that happens to a rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutEvent {
    /// A person starts it.
    Start,
    /// The controller started a node's procedure (or, while rolling back, its rollback), as
    /// [`super::blast::startable`] allowed.
    NodeStarted {
        /// The node.
        node: NodeId,
    },
    /// A node's procedure (or rollback) ended.
    NodeFinished {
        /// The node.
        node: NodeId,
        /// Whether it passed.
        passed: bool,
    },
    /// The soak of the wave is over (the controller's timer).
    SoakEnded,
    /// The pause between waves is over (the controller's timer).
    IntervalEnded,
    /// The wave's health rules were evaluated.
    HealthJudged(HealthVerdict),
    /// A person pauses it.
    Pause,
    /// A person resumes it from `paused` or `halted`.
    Resume,
    /// A person aborts it, rolling back every node that went through the procedure or not.
    Abort {
        /// Whether to run the rollback plan on those nodes.
        rollback: bool,
    },
    /// The controller rolls back the halted wave (its file has a rollback plan): only the
    /// nodes of that wave that went through the procedure run the rollback plan; the earlier
    /// waves passed their health and keep the release.
    RollBackWave,
    /// A person skips the current wave: its nodes not started keep their release.
    SkipWave {
        /// Why.
        reason: String,
    },
    /// The controller started again: each node mid-procedure is resumed or failed, as the
    /// rollout's `on-interrupted` says; none is silently lost.
    ControllerRestarted,
}

impl RolloutEvent {
    /// The event's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::NodeStarted { .. } => "node-started",
            Self::NodeFinished { .. } => "node-finished",
            Self::SoakEnded => "soak-ended",
            Self::IntervalEnded => "interval-ended",
            Self::HealthJudged(_) => "health-judged",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort { .. } => "abort",
            Self::RollBackWave => "roll-back-wave",
            Self::SkipWave { .. } => "skip-wave",
            Self::ControllerRestarted => "controller-restarted",
        }
    }
}

/// What a change is decided from, as loaded.
#[derive(Clone, Copy, Debug)]
pub struct RolloutFacts<'a> {
    /// The rollout file.
    pub spec: &'a RolloutSpec,
    /// Its waves, planned when it started.
    pub waves: &'a WavePlan,
    /// Its state.
    pub state: &'a RolloutState,
    /// Its nodes' progress.
    pub progress: &'a Progress,
}

impl RolloutFacts<'_> {
    /// The progress of `node` (`waiting` when not listed).
    pub fn progress_of(&self, node: &NodeId) -> NodeProgress {
        self.progress.get(node).copied().unwrap_or_default()
    }

    /// The current wave's nodes that have not started, in wave order: those
    /// [`super::blast::startable`] chooses from while `running`.
    pub fn waiting_in_wave(&self) -> Vec<&NodeId> {
        self.waves
            .waves
            .get(self.state.wave)
            .map(|wave| {
                wave.nodes
                    .iter()
                    .filter(|node| self.progress_of(node) == NodeProgress::Waiting)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What may start now: the current wave's waiting nodes while `running`, the nodes waiting
    /// for their rollback while `rolling-back`, none otherwise (a halt or a pause starts
    /// nothing).
    pub fn may_start(&self) -> Vec<&NodeId> {
        match self.state.phase {
            Phase::Running => self.waiting_in_wave(),
            Phase::RollingBack => self
                .progress
                .iter()
                .filter(|(_, progress)| **progress == NodeProgress::RollbackPending)
                .map(|(node, _)| node)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The nodes occupying the blast radius: in procedure or rolling back.
    pub fn active(&self) -> Vec<&NodeId> {
        self.progress
            .iter()
            .filter(|(_, progress)| progress.is_active())
            .map(|(node, _)| node)
            .collect()
    }
}

/// One node's decided change of progress, applied only if the node is still in `from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressChange {
    /// The node.
    pub node: NodeId,
    /// The progress it was decided from.
    pub from: NodeProgress,
    /// The progress it moves to.
    pub to: NodeProgress,
}

/// A decided change of a rollout: applied only if the rollout is still in `from` (a
/// compare-and-set), with every node's change in the same transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutChange {
    /// The state it was decided from.
    pub from: RolloutState,
    /// The state it moves to (may equal `from`: then only nodes change, or nothing).
    pub to: RolloutState,
    /// The nodes whose progress changes, by name.
    pub nodes: Vec<ProgressChange>,
    /// After a controller restart under `on-interrupted: resume`: the nodes whose procedure
    /// (or rollback) the controller takes up again.
    pub resume: Vec<NodeId>,
}

/// Why a rollout cannot take an event; the message says what to do.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RolloutRefusal {
    /// The phase does not take the event.
    #[error("rollout is {phase}: it cannot take {event}; {hint}")]
    Phase {
        /// The phase.
        phase: Phase,
        /// The event's name.
        event: &'static str,
        /// What to do instead.
        hint: String,
    },
    /// The node is not where the event needs it.
    #[error("node {node} is {progress}: it cannot take {event}")]
    Node {
        /// The node.
        node: NodeId,
        /// Its progress.
        progress: NodeProgress,
        /// The event's name.
        event: &'static str,
    },
    /// The node is not in the wave that runs.
    #[error("node {node} is not in wave {wave}, the wave that runs; it starts with its own wave")]
    NotInWave {
        /// The node.
        node: NodeId,
        /// The wave that runs.
        wave: usize,
    },
    /// A timer event before its time.
    #[error("the {what} of wave {wave} ends at {until}; it is not over yet")]
    TooEarly {
        /// `soak` or `pause between waves`.
        what: &'static str,
        /// The wave.
        wave: usize,
        /// When it ends.
        until: Timestamp,
    },
    /// Rollback asked of a rollout whose file has none.
    #[error(
        "rollout {rollout} has no rollback plan; abort it without rollback, or add a rollback \
         to its file"
    )]
    NoRollbackPlan {
        /// The rollout's name.
        rollout: String,
    },
}

/// A change being decided: the rollout's new state and its nodes' changes so far.
struct Draft<'a> {
    facts: RolloutFacts<'a>,
    to: RolloutState,
    nodes: BTreeMap<NodeId, (NodeProgress, NodeProgress)>,
    resume: Vec<NodeId>,
}

impl<'a> Draft<'a> {
    fn new(facts: RolloutFacts<'a>) -> Self {
        Self {
            facts,
            to: facts.state.clone(),
            nodes: BTreeMap::new(),
            resume: Vec::new(),
        }
    }

    fn progress(&self, node: &NodeId) -> NodeProgress {
        self.nodes
            .get(node)
            .map_or_else(|| self.facts.progress_of(node), |(_, to)| *to)
    }

    fn set(&mut self, node: &NodeId, to: NodeProgress) {
        let from = self.facts.progress_of(node);
        self.nodes.insert(node.clone(), (from, to));
    }

    /// Every node with its progress as drafted (every node of the plan and every listed one).
    fn all(&self) -> Vec<(NodeId, NodeProgress)> {
        let mut names: Vec<&NodeId> = self
            .facts
            .waves
            .waves
            .iter()
            .flat_map(|wave| &wave.nodes)
            .chain(self.facts.progress.keys())
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|node| (node.clone(), self.progress(node)))
            .collect()
    }

    fn enter(&mut self, phase: Phase, now: Timestamp) {
        self.to.phase = phase;
        self.to.since = now;
    }

    fn is_last_wave(&self) -> bool {
        self.to.wave + 1 >= self.facts.waves.waves.len()
    }

    /// Moves on from a wave that passed or was skipped: to the next wave (after the pause
    /// between waves, unless `at_once`), or to `completed` after the last.
    fn next_wave(&mut self, at_once: bool, now: Timestamp) {
        if self.is_last_wave() {
            self.enter(Phase::Completed, now);
            return;
        }
        self.to.wave += 1;
        let pause = self.facts.spec.limits.pause_between_waves;
        if at_once || pause.is_zero() {
            self.enter(Phase::Running, now);
        } else {
            self.enter(Phase::Interval, now);
        }
    }

    /// What follows on its own from the drafted progress: a running wave with every node
    /// finished soaks (or is judged at once without a soak); a rollback with nothing left to
    /// run has rolled back.
    fn settle(&mut self, now: Timestamp) {
        match self.to.phase {
            Phase::Running => {
                let open = self
                    .facts
                    .waves
                    .waves
                    .get(self.to.wave)
                    .is_some_and(|wave| {
                        wave.nodes.iter().any(|node| {
                            matches!(
                                self.progress(node),
                                NodeProgress::Waiting | NodeProgress::InProcedure
                            )
                        })
                    });
                if !open {
                    let phase = if self.facts.spec.soak.is_zero() {
                        Phase::Judging
                    } else {
                        Phase::Soaking
                    };
                    self.enter(phase, now);
                }
            }
            Phase::RollingBack => {
                // A rollback that failed halts the rollout for a person: nothing more starts.
                let failed: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter(|(_, (from, to))| {
                        *to == NodeProgress::RollbackFailed && *from != NodeProgress::RollbackFailed
                    })
                    .map(|(node, _)| node.clone())
                    .collect();
                if !failed.is_empty() {
                    self.to.halt = Some(Halt {
                        wave: self.to.wave,
                        failures: vec![HealthFailure {
                            rule_id: ROLLBACK_FAILED.to_owned(),
                            reason: format!(
                                "the rollback plan failed on {}; they may still run the \
                                 release: look at their rollback runs, then abort the rollout \
                                 (with rollback to try again)",
                                failed
                                    .iter()
                                    .map(NodeId::as_str)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                            nodes: failed,
                        }],
                        at: now,
                        rollback_failed: true,
                    });
                    self.enter(Phase::Halted, now);
                    return;
                }
                let open = self.all().into_iter().any(|(_, progress)| {
                    matches!(
                        progress,
                        NodeProgress::InProcedure
                            | NodeProgress::RollbackPending
                            | NodeProgress::RollingBack
                    )
                });
                if !open {
                    self.enter(Phase::RolledBack, now);
                }
            }
            _ => {}
        }
    }

    fn finish(self) -> RolloutChange {
        RolloutChange {
            from: self.facts.state.clone(),
            to: self.to,
            nodes: self
                .nodes
                .into_iter()
                .filter(|(_, (from, to))| from != to)
                .map(|(node, (from, to))| ProgressChange { node, from, to })
                .collect(),
            resume: self.resume,
        }
    }
}

/// The one place rollout transitions are decided: what `event` does at `now` to the rollout
/// in `facts` and to its nodes, or why it cannot.
pub fn next(
    facts: RolloutFacts<'_>,
    event: RolloutEvent,
    now: Timestamp,
) -> Result<RolloutChange, RolloutRefusal> {
    use Phase as P;
    use RolloutEvent as E;
    let phase = facts.state.phase;
    let refuse = |hint: &str| RolloutRefusal::Phase {
        phase,
        event: event.name(),
        hint: hint.to_owned(),
    };
    let mut draft = Draft::new(facts);
    match (phase, &event) {
        (P::Pending, E::Start) => draft.enter(P::Running, now),
        (_, E::Start) => return Err(refuse("it was started already")),

        (P::Running | P::RollingBack, E::NodeStarted { node }) => {
            node_started(&mut draft, node, event.name())?
        }
        (P::Paused | P::Halted, E::NodeStarted { .. }) => {
            return Err(refuse("no node starts until it is resumed"));
        }
        (_, E::NodeStarted { .. }) => return Err(refuse("no node starts in this phase")),

        (_, E::NodeFinished { node, passed }) => {
            node_finished(&mut draft, node, *passed, event.name())?
        }

        (P::Soaking, E::SoakEnded) => {
            let until = facts.state.since + facts.spec.soak;
            if now < until {
                return Err(too_early("soak", facts.state.wave, until));
            }
            draft.enter(P::Judging, now);
        }
        (_, E::SoakEnded) => return Err(refuse("no wave is soaking")),

        (P::Interval, E::IntervalEnded) => {
            let until = facts.state.since + facts.spec.limits.pause_between_waves;
            if now < until {
                return Err(too_early("pause between waves", facts.state.wave, until));
            }
            draft.enter(P::Running, now);
        }
        (_, E::IntervalEnded) => return Err(refuse("it is not pausing between waves")),

        (P::Running | P::Soaking | P::Judging | P::Paused, E::HealthJudged(verdict)) => {
            match verdict {
                HealthVerdict::Failed(failures) => {
                    draft.to.halt = Some(Halt {
                        wave: facts.state.wave,
                        failures: failures.clone(),
                        at: now,
                        rollback_failed: false,
                    });
                    draft.to.paused_from = None;
                    draft.enter(P::Halted, now);
                }
                // A wave passes only once judged after its soak; before that, and while
                // evidence is still coming, a verdict changes nothing.
                HealthVerdict::Passed if phase == P::Judging => draft.next_wave(false, now),
                HealthVerdict::Passed | HealthVerdict::Waiting => {}
            }
        }
        // A halt stays until a person acts on it, whatever later verdicts say.
        (P::Halted, E::HealthJudged(_)) => {}
        (_, E::HealthJudged(_)) => return Err(refuse("no wave is being judged")),

        (P::Running | P::Soaking | P::Judging | P::Interval, E::Pause) => {
            draft.to.paused_from = Some(phase);
            draft.to.phase = P::Paused;
        }
        (P::Paused, E::Pause) => return Err(refuse("it is paused already")),
        (P::Halted, E::Pause) => {
            return Err(refuse(
                "it is halted: nothing starts; resume, skip the wave or abort it",
            ));
        }
        (P::Pending, E::Pause) => return Err(refuse("it has not started")),
        (P::RollingBack, E::Pause) => {
            return Err(refuse(
                "a rollback is not paused; abort it without rollback to stop it",
            ));
        }
        (_, E::Pause) => return Err(refuse("it has ended")),

        (P::Paused, E::Resume) => {
            draft.to.phase = facts.state.paused_from.unwrap_or(P::Running);
            draft.to.paused_from = None;
        }
        (P::Halted, E::Resume | E::SkipWave { .. }) if rollback_failed(facts.state) => {
            return Err(refuse(
                "a rollback failed: abort it, with rollback to run the rollback plan again on \
                 the nodes not rolled back",
            ));
        }
        // Resuming a halted rollout takes its wave up again: it soaks and is judged again.
        (P::Halted, E::Resume) => {
            draft.to.halt = None;
            draft.enter(P::Running, now);
        }
        (P::Completed | P::RolledBack | P::Aborted, E::Resume) => {
            return Err(refuse("it has ended; there is nothing to resume"));
        }
        (_, E::Resume) => return Err(refuse("it is neither paused nor halted")),

        (P::Completed | P::RolledBack | P::Aborted, E::Abort { .. }) => {
            return Err(refuse("it has ended already"));
        }
        (P::RollingBack, E::Abort { rollback: true }) => {
            return Err(refuse("it is rolling back already"));
        }
        (_, E::Abort { rollback: false }) => {
            draft.to.paused_from = None;
            draft.enter(P::Aborted, now);
        }
        (_, E::Abort { rollback: true }) => {
            if facts.spec.rollback.is_none() {
                return Err(RolloutRefusal::NoRollbackPlan {
                    rollout: facts.spec.name.clone(),
                });
            }
            // A node whose rollback failed runs it again.
            for (node, progress) in draft.all() {
                if matches!(
                    progress,
                    NodeProgress::Passed | NodeProgress::Failed | NodeProgress::RollbackFailed
                ) {
                    draft.set(&node, NodeProgress::RollbackPending);
                }
            }
            draft.to.halt = draft.to.halt.take().filter(|halt| !halt.rollback_failed);
            draft.to.paused_from = None;
            draft.enter(P::RollingBack, now);
        }

        (P::Halted, E::RollBackWave) => {
            if facts.spec.rollback.is_none() {
                return Err(RolloutRefusal::NoRollbackPlan {
                    rollout: facts.spec.name.clone(),
                });
            }
            let halted = facts
                .state
                .halt
                .as_ref()
                .map_or(facts.state.wave, |halt| halt.wave);
            let nodes: Vec<NodeId> = facts
                .waves
                .waves
                .get(halted)
                .map(|wave| wave.nodes.clone())
                .unwrap_or_default();
            for node in &nodes {
                if matches!(
                    draft.progress(node),
                    NodeProgress::Passed | NodeProgress::Failed
                ) {
                    draft.set(node, NodeProgress::RollbackPending);
                }
            }
            draft.enter(P::RollingBack, now);
        }
        (_, E::RollBackWave) => return Err(refuse("only a halted rollout rolls back its wave")),

        (
            P::Running | P::Soaking | P::Judging | P::Interval | P::Halted,
            E::SkipWave { reason },
        ) => skip_wave(&mut draft, reason, now),
        (P::RollingBack, E::SkipWave { .. }) => {
            return Err(refuse("it is rolling back; there is no wave to skip"));
        }
        (P::Paused, E::SkipWave { .. }) => {
            return Err(refuse("it is paused; resume it first, or abort it"));
        }
        (P::Pending, E::SkipWave { .. }) => return Err(refuse("it has not started")),
        (_, E::SkipWave { .. }) => return Err(refuse("it has ended")),

        (_, E::ControllerRestarted) => controller_restarted(&mut draft, phase),
    }
    draft.settle(now);
    Ok(draft.finish())
}

/// Whether the rollout halted because a rollback failed.
fn rollback_failed(state: &RolloutState) -> bool {
    state.halt.as_ref().is_some_and(|halt| halt.rollback_failed)
}

fn too_early(what: &'static str, wave: usize, until: Timestamp) -> RolloutRefusal {
    RolloutRefusal::TooEarly { what, wave, until }
}

/// A node starts its procedure (from the running wave) or its rollback.
fn node_started(
    draft: &mut Draft<'_>,
    node: &NodeId,
    event: &'static str,
) -> Result<(), RolloutRefusal> {
    let progress = draft.progress(node);
    let (from, to) = if draft.to.phase == Phase::RollingBack {
        (NodeProgress::RollbackPending, NodeProgress::RollingBack)
    } else {
        let wave = draft.to.wave;
        let in_wave = draft
            .facts
            .waves
            .waves
            .get(wave)
            .is_some_and(|w| w.nodes.contains(node));
        if !in_wave {
            return Err(RolloutRefusal::NotInWave {
                node: node.clone(),
                wave,
            });
        }
        (NodeProgress::Waiting, NodeProgress::InProcedure)
    };
    if progress != from {
        return Err(RolloutRefusal::Node {
            node: node.clone(),
            progress,
            event,
        });
    }
    draft.set(node, to);
    Ok(())
}

/// A node's procedure or rollback ended; recorded in every phase, so that nothing a node did
/// is lost (a procedure ending during a rollback waits for its own rollback).
fn node_finished(
    draft: &mut Draft<'_>,
    node: &NodeId,
    passed: bool,
    event: &'static str,
) -> Result<(), RolloutRefusal> {
    let to = match (draft.progress(node), passed) {
        (NodeProgress::InProcedure, _) if draft.to.phase == Phase::RollingBack => {
            NodeProgress::RollbackPending
        }
        (NodeProgress::InProcedure, true) => NodeProgress::Passed,
        (NodeProgress::InProcedure, false) => NodeProgress::Failed,
        (NodeProgress::RollingBack, true) => NodeProgress::RolledBack,
        (NodeProgress::RollingBack, false) => NodeProgress::RollbackFailed,
        (progress, _) => {
            return Err(RolloutRefusal::Node {
                node: node.clone(),
                progress,
                event,
            });
        }
    };
    draft.set(node, to);
    Ok(())
}

/// Skips the current wave: its nodes not started are skipped (those in procedure finish and
/// are recorded), the halt is lifted, and the next wave starts at once.
fn skip_wave(draft: &mut Draft<'_>, reason: &str, now: Timestamp) {
    let wave = draft.to.wave;
    let skipped: Vec<NodeId> = draft.facts.waiting_in_wave().into_iter().cloned().collect();
    for node in &skipped {
        draft.set(node, NodeProgress::Skipped);
    }
    draft.to.skipped.push(SkippedWave {
        wave,
        reason: reason.to_owned(),
        at: now,
        nodes: skipped,
    });
    draft.to.halt = None;
    draft.next_wave(true, now);
}

/// After a controller restart, each node mid-procedure (or mid-rollback) is taken up again or
/// failed, as `on-interrupted` says.
fn controller_restarted(draft: &mut Draft<'_>, phase: Phase) {
    let resume = draft.facts.spec.procedure.on_interrupted == OnInterrupted::Resume;
    for (node, progress) in draft.all() {
        let failed = match progress {
            NodeProgress::InProcedure if phase == Phase::RollingBack => {
                NodeProgress::RollbackPending
            }
            NodeProgress::InProcedure => NodeProgress::Failed,
            NodeProgress::RollingBack => NodeProgress::RollbackFailed,
            _ => continue,
        };
        if resume {
            draft.resume.push(node);
        } else {
            draft.set(&node, failed);
        }
    }
}
