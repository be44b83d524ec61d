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
    /// Aborted with rollback: the nodes that went through the procedure run the rollback
    /// plan, within the same blast radius.
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

/// Where one node of a rollout is.
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
    /// Each health rule that failed (or could not be evaluated).
    pub failures: Vec<HealthFailure>,
    /// When.
    pub at: Timestamp,
}

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
    /// A person aborts it, rolling back the nodes that went through the procedure or not.
    Abort {
        /// Whether to run the rollback plan on those nodes.
        rollback: bool,
    },
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
            for (node, progress) in draft.all() {
                if matches!(progress, NodeProgress::Passed | NodeProgress::Failed) {
                    draft.set(&node, NodeProgress::RollbackPending);
                }
            }
            draft.to.paused_from = None;
            draft.enter(P::RollingBack, now);
        }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::waves::Wave;
    use crate::test_support::{at, rollout_spec};
    use NodeProgress as N;
    use Phase as P;
    use std::time::Duration;

    /// Three waves: the canary c1; n1 and n2; n3. A 30-minute soak, a 10-minute pause.
    fn spec() -> RolloutSpec {
        let mut spec = rollout_spec();
        spec.soak = Duration::from_secs(1800);
        spec.limits.pause_between_waves = Duration::from_secs(600);
        spec
    }

    fn waves() -> WavePlan {
        let wave = |spec_idx, nodes: &[&str]| Wave {
            spec_idx,
            nodes: nodes.iter().map(|n| NodeId::from(*n)).collect(),
        };
        WavePlan {
            waves: vec![wave(0, &["c1"]), wave(1, &["n1", "n2"]), wave(2, &["n3"])],
            left_out: Vec::new(),
        }
    }

    fn state(phase: Phase, wave: usize) -> RolloutState {
        RolloutState {
            phase,
            wave,
            ..RolloutState::new(at(0))
        }
    }

    fn progress(pairs: &[(&str, NodeProgress)]) -> Progress {
        pairs.iter().map(|(n, p)| (NodeId::from(*n), *p)).collect()
    }

    fn started(node: &str) -> RolloutEvent {
        RolloutEvent::NodeStarted { node: node.into() }
    }

    fn finished(node: &str, passed: bool) -> RolloutEvent {
        RolloutEvent::NodeFinished {
            node: node.into(),
            passed,
        }
    }

    fn failures() -> Vec<HealthFailure> {
        vec![HealthFailure {
            rule_id: "no-events".into(),
            reason: "XID 79 on n1".into(),
            nodes: vec!["n1".into()],
        }]
    }

    fn decide(
        spec: &RolloutSpec,
        state: &RolloutState,
        pairs: &[(&str, NodeProgress)],
        event: RolloutEvent,
        now: i64,
    ) -> Result<RolloutChange, RolloutRefusal> {
        let waves = waves();
        let progress = progress(pairs);
        let facts = RolloutFacts {
            spec,
            waves: &waves,
            state,
            progress: &progress,
        };
        next(facts, event, at(now))
    }

    fn moved(change: &RolloutChange) -> Vec<(&str, NodeProgress, NodeProgress)> {
        change
            .nodes
            .iter()
            .map(|c| (c.node.as_str(), c.from, c.to))
            .collect()
    }

    type Case<'a> = (
        &'a str,
        RolloutState,
        Vec<(&'a str, NodeProgress)>,
        RolloutEvent,
        (Phase, usize),
        Vec<(&'a str, NodeProgress, NodeProgress)>,
    );

    #[test]
    fn every_transition() {
        let paused_from = |phase: Phase, from: Phase, wave| RolloutState {
            paused_from: Some(from),
            ..state(phase, wave)
        };
        let halted = RolloutState {
            halt: Some(Halt {
                wave: 1,
                failures: failures(),
                at: at(0),
            }),
            ..state(P::Halted, 1)
        };
        let wave1_open = vec![
            ("c1", N::Passed),
            ("n1", N::InProcedure),
            ("n2", N::Waiting),
        ];
        let wave1_done = vec![("c1", N::Passed), ("n1", N::Passed), ("n2", N::Passed)];
        let cases: Vec<Case> = vec![
            (
                "start",
                state(P::Pending, 0),
                vec![],
                RolloutEvent::Start,
                (P::Running, 0),
                vec![],
            ),
            (
                "a node of the wave starts",
                state(P::Running, 0),
                vec![],
                started("c1"),
                (P::Running, 0),
                vec![("c1", N::Waiting, N::InProcedure)],
            ),
            (
                "the wave's last node passes: soak",
                state(P::Running, 0),
                vec![("c1", N::InProcedure)],
                finished("c1", true),
                (P::Soaking, 0),
                vec![("c1", N::InProcedure, N::Passed)],
            ),
            (
                "the wave's last node fails: soak, the health rules judge it",
                state(P::Running, 0),
                vec![("c1", N::InProcedure)],
                finished("c1", false),
                (P::Soaking, 0),
                vec![("c1", N::InProcedure, N::Failed)],
            ),
            (
                "a node finishes, another waits: still running",
                state(P::Running, 1),
                wave1_open.clone(),
                finished("n1", true),
                (P::Running, 1),
                vec![("n1", N::InProcedure, N::Passed)],
            ),
            (
                "soak over",
                state(P::Soaking, 0),
                vec![],
                RolloutEvent::SoakEnded,
                (P::Judging, 0),
                vec![],
            ),
            (
                "passed: the pause between waves",
                state(P::Judging, 0),
                vec![("c1", N::Passed)],
                RolloutEvent::HealthJudged(HealthVerdict::Passed),
                (P::Interval, 1),
                vec![],
            ),
            (
                "the pause is over: the next wave runs",
                state(P::Interval, 1),
                vec![("c1", N::Passed)],
                RolloutEvent::IntervalEnded,
                (P::Running, 1),
                vec![],
            ),
            (
                "the last wave passed: completed",
                state(P::Judging, 2),
                vec![],
                RolloutEvent::HealthJudged(HealthVerdict::Passed),
                (P::Completed, 2),
                vec![],
            ),
            (
                "evidence still coming: still judging",
                state(P::Judging, 1),
                vec![],
                RolloutEvent::HealthJudged(HealthVerdict::Waiting),
                (P::Judging, 1),
                vec![],
            ),
            (
                "a pass before the soak means nothing",
                state(P::Running, 1),
                wave1_open.clone(),
                RolloutEvent::HealthJudged(HealthVerdict::Passed),
                (P::Running, 1),
                vec![],
            ),
            (
                "a failure mid-wave halts",
                state(P::Running, 1),
                wave1_open.clone(),
                RolloutEvent::HealthJudged(HealthVerdict::Failed(failures())),
                (P::Halted, 1),
                vec![],
            ),
            (
                "a failure while soaking halts",
                state(P::Soaking, 1),
                wave1_done.clone(),
                RolloutEvent::HealthJudged(HealthVerdict::Failed(failures())),
                (P::Halted, 1),
                vec![],
            ),
            (
                "a failure when judged halts",
                state(P::Judging, 1),
                wave1_done.clone(),
                RolloutEvent::HealthJudged(HealthVerdict::Failed(failures())),
                (P::Halted, 1),
                vec![],
            ),
            (
                "a failure while paused halts",
                paused_from(P::Paused, P::Running, 1),
                wave1_open.clone(),
                RolloutEvent::HealthJudged(HealthVerdict::Failed(failures())),
                (P::Halted, 1),
                vec![],
            ),
            (
                "a halt stays, whatever later verdicts say",
                halted.clone(),
                wave1_done.clone(),
                RolloutEvent::HealthJudged(HealthVerdict::Passed),
                (P::Halted, 1),
                vec![],
            ),
            (
                "pause while running",
                state(P::Running, 1),
                wave1_open.clone(),
                RolloutEvent::Pause,
                (P::Paused, 1),
                vec![],
            ),
            (
                "pause while soaking",
                state(P::Soaking, 1),
                wave1_done.clone(),
                RolloutEvent::Pause,
                (P::Paused, 1),
                vec![],
            ),
            (
                "pause while judging",
                state(P::Judging, 1),
                wave1_done.clone(),
                RolloutEvent::Pause,
                (P::Paused, 1),
                vec![],
            ),
            (
                "pause between waves",
                state(P::Interval, 2),
                wave1_done.clone(),
                RolloutEvent::Pause,
                (P::Paused, 2),
                vec![],
            ),
            (
                "resume to the phase it left",
                paused_from(P::Paused, P::Soaking, 1),
                wave1_done.clone(),
                RolloutEvent::Resume,
                (P::Soaking, 1),
                vec![],
            ),
            (
                "resume a wave that finished while paused: it soaks",
                paused_from(P::Paused, P::Running, 1),
                wave1_done.clone(),
                RolloutEvent::Resume,
                (P::Soaking, 1),
                vec![],
            ),
            (
                "a node finishes while paused: recorded, still paused",
                paused_from(P::Paused, P::Running, 1),
                wave1_open.clone(),
                finished("n1", true),
                (P::Paused, 1),
                vec![("n1", N::InProcedure, N::Passed)],
            ),
            (
                "resume a halt: the wave runs again",
                halted.clone(),
                wave1_open.clone(),
                RolloutEvent::Resume,
                (P::Running, 1),
                vec![],
            ),
            (
                "resume a halt after the wave finished: it soaks again",
                halted.clone(),
                wave1_done.clone(),
                RolloutEvent::Resume,
                (P::Soaking, 1),
                vec![],
            ),
            (
                "a node finishes while halted: recorded, still halted",
                halted.clone(),
                wave1_open.clone(),
                finished("n1", false),
                (P::Halted, 1),
                vec![("n1", N::InProcedure, N::Failed)],
            ),
            (
                "abort",
                state(P::Running, 1),
                wave1_open.clone(),
                RolloutEvent::Abort { rollback: false },
                (P::Aborted, 1),
                vec![],
            ),
            (
                "abort with rollback: the nodes that went through the procedure wait for it",
                halted.clone(),
                wave1_open.clone(),
                RolloutEvent::Abort { rollback: true },
                (P::RollingBack, 1),
                vec![("c1", N::Passed, N::RollbackPending)],
            ),
            (
                "a rollback starts",
                state(P::RollingBack, 1),
                vec![("c1", N::RollbackPending)],
                started("c1"),
                (P::RollingBack, 1),
                vec![("c1", N::RollbackPending, N::RollingBack)],
            ),
            (
                "a procedure ending during a rollback waits for its own",
                state(P::RollingBack, 1),
                vec![("c1", N::RollingBack), ("n1", N::InProcedure)],
                finished("n1", true),
                (P::RollingBack, 1),
                vec![("n1", N::InProcedure, N::RollbackPending)],
            ),
            (
                "the last rollback passes: rolled back",
                state(P::RollingBack, 1),
                vec![
                    ("c1", N::RollingBack),
                    ("n1", N::RolledBack),
                    ("n2", N::Waiting),
                ],
                finished("c1", true),
                (P::RolledBack, 1),
                vec![("c1", N::RollingBack, N::RolledBack)],
            ),
            (
                "the last rollback fails: rolled back, the node says it failed",
                state(P::RollingBack, 1),
                vec![("c1", N::RollingBack)],
                finished("c1", false),
                (P::RolledBack, 1),
                vec![("c1", N::RollingBack, N::RollbackFailed)],
            ),
            (
                "abort a rollback",
                state(P::RollingBack, 1),
                vec![("c1", N::RollbackPending)],
                RolloutEvent::Abort { rollback: false },
                (P::Aborted, 1),
                vec![],
            ),
            (
                "roll back a rollout that never started: nothing to do",
                state(P::Pending, 0),
                vec![],
                RolloutEvent::Abort { rollback: true },
                (P::RolledBack, 0),
                vec![],
            ),
            (
                "skip a halted wave: its waiting nodes keep their release; the next runs at once",
                halted.clone(),
                wave1_open.clone(),
                RolloutEvent::SkipWave {
                    reason: "n2's rack is being rewired".into(),
                },
                (P::Running, 2),
                vec![("n2", N::Waiting, N::Skipped)],
            ),
            (
                "skip the last wave: completed",
                state(P::Running, 2),
                wave1_done.clone(),
                RolloutEvent::SkipWave {
                    reason: "n3 is retired next week".into(),
                },
                (P::Completed, 2),
                vec![("n3", N::Waiting, N::Skipped)],
            ),
            (
                "skip the wave waiting for its start",
                state(P::Interval, 1),
                vec![("c1", N::Passed)],
                RolloutEvent::SkipWave {
                    reason: "later".into(),
                },
                (P::Running, 2),
                vec![
                    ("n1", N::Waiting, N::Skipped),
                    ("n2", N::Waiting, N::Skipped),
                ],
            ),
            (
                "skip a wave being judged: accepted unjudged",
                state(P::Judging, 1),
                wave1_done.clone(),
                RolloutEvent::SkipWave {
                    reason: "judged by hand".into(),
                },
                (P::Running, 2),
                vec![],
            ),
            (
                "restarted under on-interrupted: fail",
                state(P::Running, 1),
                wave1_open.clone(),
                RolloutEvent::ControllerRestarted,
                (P::Running, 1),
                vec![("n1", N::InProcedure, N::Failed)],
            ),
            (
                "restarted mid-rollback under on-interrupted: fail",
                state(P::RollingBack, 1),
                vec![
                    ("c1", N::RollingBack),
                    ("n1", N::InProcedure),
                    ("n2", N::RollbackPending),
                ],
                RolloutEvent::ControllerRestarted,
                (P::RollingBack, 1),
                vec![
                    ("c1", N::RollingBack, N::RollbackFailed),
                    ("n1", N::InProcedure, N::RollbackPending),
                ],
            ),
            (
                "a straggler of an aborted rollout is recorded",
                state(P::Aborted, 1),
                wave1_open.clone(),
                finished("n1", true),
                (P::Aborted, 1),
                vec![("n1", N::InProcedure, N::Passed)],
            ),
        ];
        for (name, from, pairs, event, (phase, wave), nodes) in cases {
            let change = decide(&spec(), &from, &pairs, event, 10_000)
                .unwrap_or_else(|refusal| panic!("{name}: refused: {refusal}"));
            assert_eq!((change.to.phase, change.to.wave), (phase, wave), "{name}");
            assert_eq!(moved(&change), nodes, "{name}");
            assert_eq!(change.from, from, "{name}");
            assert!(change.resume.is_empty(), "{name}");
        }
    }

    #[test]
    fn what_each_transition_records() {
        let spec = spec();
        let halt = decide(
            &spec,
            &state(P::Judging, 1),
            &[],
            RolloutEvent::HealthJudged(HealthVerdict::Failed(failures())),
            500,
        )
        .expect("halts");
        assert_eq!(
            halt.to.halt,
            Some(Halt {
                wave: 1,
                failures: failures(),
                at: at(500)
            })
        );
        let paused =
            decide(&spec, &state(P::Soaking, 1), &[], RolloutEvent::Pause, 500).expect("pauses");
        assert_eq!(paused.to.paused_from, Some(P::Soaking));
        assert_eq!(
            paused.to.since,
            at(0),
            "a pause does not stop the soak's clock"
        );
        let resumed = decide(&spec, &paused.to, &[], RolloutEvent::Resume, 900).expect("resumes");
        assert_eq!((resumed.to.phase, resumed.to.since), (P::Soaking, at(0)));
        assert_eq!(resumed.to.paused_from, None);

        let halted = RolloutState {
            halt: halt.to.halt.clone(),
            ..state(P::Halted, 1)
        };
        let pairs = [("n1", N::Passed), ("n2", N::Waiting)];
        let skipped = decide(
            &spec,
            &halted,
            &pairs,
            RolloutEvent::SkipWave {
                reason: "rack r2 rewired".into(),
            },
            700,
        )
        .expect("skips");
        assert_eq!(skipped.to.halt, None);
        assert_eq!(
            skipped.to.skipped,
            [SkippedWave {
                wave: 1,
                reason: "rack r2 rewired".into(),
                at: at(700),
                nodes: vec!["n2".into()],
            }]
        );
        assert_eq!(skipped.to.since, at(700));
    }

    #[test]
    fn without_a_soak_or_a_pause_the_rollout_does_not_wait() {
        let mut spec = spec();
        spec.soak = Duration::ZERO;
        spec.limits.pause_between_waves = Duration::ZERO;
        let change = decide(
            &spec,
            &state(P::Running, 0),
            &[("c1", N::InProcedure)],
            finished("c1", true),
            100,
        )
        .expect("finishes");
        assert_eq!(change.to.phase, P::Judging);
        let change = decide(
            &spec,
            &state(P::Judging, 0),
            &[("c1", N::Passed)],
            RolloutEvent::HealthJudged(HealthVerdict::Passed),
            100,
        )
        .expect("passes");
        assert_eq!((change.to.phase, change.to.wave), (P::Running, 1));
    }

    #[test]
    fn a_restart_under_resume_takes_nodes_up_again_and_loses_none() {
        let mut spec = spec();
        spec.procedure.on_interrupted = OnInterrupted::Resume;
        let change = decide(
            &spec,
            &state(P::Running, 1),
            &[("n1", N::InProcedure), ("n2", N::Waiting)],
            RolloutEvent::ControllerRestarted,
            100,
        )
        .expect("restarts");
        assert_eq!(change.to, state(P::Running, 1));
        assert!(change.nodes.is_empty());
        assert_eq!(change.resume, [NodeId::from("n1")]);
    }

    #[test]
    fn every_refusal_says_why() {
        let spec = spec();
        let mut no_rollback = spec.clone();
        no_rollback.rollback = None;
        let skip = || RolloutEvent::SkipWave { reason: "x".into() };
        let cases: Vec<(
            RolloutSpec,
            RolloutState,
            Vec<(&str, NodeProgress)>,
            RolloutEvent,
            i64,
            &str,
        )> = vec![
            (
                spec.clone(),
                state(P::Running, 0),
                vec![],
                RolloutEvent::Start,
                10_000,
                "rollout is running: it cannot take start; it was started already",
            ),
            (
                spec.clone(),
                state(P::Completed, 2),
                vec![],
                RolloutEvent::Resume,
                10_000,
                "rollout is completed: it cannot take resume; it has ended; there is nothing to resume",
            ),
            (
                spec.clone(),
                state(P::Aborted, 1),
                vec![],
                RolloutEvent::Resume,
                10_000,
                "rollout is aborted: it cannot take resume; it has ended; there is nothing to resume",
            ),
            (
                spec.clone(),
                state(P::Running, 1),
                vec![],
                RolloutEvent::Resume,
                10_000,
                "rollout is running: it cannot take resume; it is neither paused nor halted",
            ),
            (
                spec.clone(),
                state(P::RollingBack, 1),
                vec![],
                skip(),
                10_000,
                "rollout is rolling-back: it cannot take skip-wave; it is rolling back; there is no wave to skip",
            ),
            (
                spec.clone(),
                state(P::Paused, 1),
                vec![],
                skip(),
                10_000,
                "rollout is paused: it cannot take skip-wave; it is paused; resume it first, or abort it",
            ),
            (
                spec.clone(),
                state(P::Pending, 0),
                vec![],
                skip(),
                10_000,
                "rollout is pending: it cannot take skip-wave; it has not started",
            ),
            (
                spec.clone(),
                state(P::Completed, 2),
                vec![],
                skip(),
                10_000,
                "rollout is completed: it cannot take skip-wave; it has ended",
            ),
            (
                spec.clone(),
                state(P::Halted, 1),
                vec![],
                started("n2"),
                10_000,
                "rollout is halted: it cannot take node-started; no node starts until it is resumed",
            ),
            (
                spec.clone(),
                state(P::Paused, 1),
                vec![],
                started("n2"),
                10_000,
                "rollout is paused: it cannot take node-started; no node starts until it is resumed",
            ),
            (
                spec.clone(),
                state(P::Soaking, 1),
                vec![],
                started("n2"),
                10_000,
                "rollout is soaking: it cannot take node-started; no node starts in this phase",
            ),
            (
                spec.clone(),
                state(P::Running, 1),
                vec![],
                started("n3"),
                10_000,
                "node n3 is not in wave 1, the wave that runs; it starts with its own wave",
            ),
            (
                spec.clone(),
                state(P::Running, 1),
                vec![("n1", N::Passed)],
                started("n1"),
                10_000,
                "node n1 is passed: it cannot take node-started",
            ),
            (
                spec.clone(),
                state(P::RollingBack, 1),
                vec![("n1", N::RolledBack)],
                started("n1"),
                10_000,
                "node n1 is rolled-back: it cannot take node-started",
            ),
            (
                spec.clone(),
                state(P::Running, 1),
                vec![],
                finished("n2", true),
                10_000,
                "node n2 is waiting: it cannot take node-finished",
            ),
            (
                spec.clone(),
                state(P::Soaking, 1),
                vec![],
                RolloutEvent::SoakEnded,
                1799,
                "the soak of wave 1 ends at 2026-01-01 00:30:00 UTC; it is not over yet",
            ),
            (
                spec.clone(),
                state(P::Running, 1),
                vec![],
                RolloutEvent::SoakEnded,
                10_000,
                "rollout is running: it cannot take soak-ended; no wave is soaking",
            ),
            (
                spec.clone(),
                state(P::Interval, 1),
                vec![],
                RolloutEvent::IntervalEnded,
                599,
                "the pause between waves of wave 1 ends at 2026-01-01 00:10:00 UTC; it is not over yet",
            ),
            (
                spec.clone(),
                state(P::Running, 1),
                vec![],
                RolloutEvent::IntervalEnded,
                10_000,
                "rollout is running: it cannot take interval-ended; it is not pausing between waves",
            ),
            (
                spec.clone(),
                state(P::Interval, 1),
                vec![],
                RolloutEvent::HealthJudged(HealthVerdict::Passed),
                10_000,
                "rollout is interval: it cannot take health-judged; no wave is being judged",
            ),
            (
                spec.clone(),
                state(P::Pending, 0),
                vec![],
                RolloutEvent::HealthJudged(HealthVerdict::Passed),
                10_000,
                "rollout is pending: it cannot take health-judged; no wave is being judged",
            ),
            (
                spec.clone(),
                state(P::Paused, 1),
                vec![],
                RolloutEvent::Pause,
                10_000,
                "rollout is paused: it cannot take pause; it is paused already",
            ),
            (
                spec.clone(),
                state(P::Halted, 1),
                vec![],
                RolloutEvent::Pause,
                10_000,
                "rollout is halted: it cannot take pause; it is halted: nothing starts; resume, skip the wave or abort it",
            ),
            (
                spec.clone(),
                state(P::Pending, 0),
                vec![],
                RolloutEvent::Pause,
                10_000,
                "rollout is pending: it cannot take pause; it has not started",
            ),
            (
                spec.clone(),
                state(P::RollingBack, 1),
                vec![],
                RolloutEvent::Pause,
                10_000,
                "rollout is rolling-back: it cannot take pause; a rollback is not paused; abort it without rollback to stop it",
            ),
            (
                spec.clone(),
                state(P::RolledBack, 1),
                vec![],
                RolloutEvent::Pause,
                10_000,
                "rollout is rolled-back: it cannot take pause; it has ended",
            ),
            (
                spec.clone(),
                state(P::Completed, 2),
                vec![],
                RolloutEvent::Abort { rollback: false },
                10_000,
                "rollout is completed: it cannot take abort; it has ended already",
            ),
            (
                spec.clone(),
                state(P::RolledBack, 1),
                vec![],
                RolloutEvent::Abort { rollback: true },
                10_000,
                "rollout is rolled-back: it cannot take abort; it has ended already",
            ),
            (
                spec.clone(),
                state(P::RollingBack, 1),
                vec![],
                RolloutEvent::Abort { rollback: true },
                10_000,
                "rollout is rolling-back: it cannot take abort; it is rolling back already",
            ),
            (
                no_rollback,
                state(P::Halted, 1),
                vec![],
                RolloutEvent::Abort { rollback: true },
                10_000,
                "rollout prod-h100 has no rollback plan; abort it without rollback, or add a rollback to its file",
            ),
        ];
        for (spec, from, pairs, event, now, expected) in cases {
            let refusal = decide(&spec, &from, &pairs, event, now).expect_err(expected);
            assert_eq!(refusal.to_string(), expected);
        }
    }

    #[test]
    fn health_verdicts_fail_closed_and_name_rules_and_nodes() {
        use crate::gate::RuleDecision;
        let rule = |id: &str, verdict: Verdict, nodes: &[&str]| RuleDecision {
            rule_id: id.into(),
            kind: "no-events".into(),
            verdict,
            reason: format!("{id} is {verdict}"),
            evidence: Vec::new(),
            failing_nodes: nodes.iter().map(|n| NodeId::from(*n)).collect(),
            failure_groups: Vec::new(),
            waiver_id: None,
        };
        let decision = |verdict, rules| Decision {
            release: "r550".into(),
            milestone: crate::rollout::HEALTH_MILESTONE.into(),
            verdict,
            summary: String::new(),
            rules,
            digest: String::new(),
            policy_version: String::new(),
            evaluated_at: at(0),
        };
        assert_eq!(
            health_verdict(&decision(Verdict::Passed, vec![])),
            HealthVerdict::Passed
        );
        assert_eq!(
            health_verdict(&decision(Verdict::Waiting, vec![])),
            HealthVerdict::Waiting
        );
        let failed = decision(
            Verdict::Error,
            vec![
                rule("a", Verdict::Passed, &[]),
                rule("b", Verdict::Failed, &["n1", "n2"]),
                rule("c", Verdict::Error, &[]),
                rule("d", Verdict::Waiting, &[]),
            ],
        );
        let HealthVerdict::Failed(failures) = health_verdict(&failed) else {
            panic!("an error halts");
        };
        let named: Vec<(&str, usize)> = failures
            .iter()
            .map(|f| (f.rule_id.as_str(), f.nodes.len()))
            .collect();
        assert_eq!(named, [("b", 2), ("c", 0)]);
    }

    #[test]
    fn what_may_start_follows_the_phase() {
        let spec = spec();
        let waves = waves();
        let pairs = progress(&[("c1", N::RollbackPending), ("n1", N::InProcedure)]);
        let may_start = |phase| {
            let state = state(phase, 1);
            let facts = RolloutFacts {
                spec: &spec,
                waves: &waves,
                state: &state,
                progress: &pairs,
            };
            facts
                .may_start()
                .into_iter()
                .map(|node| node.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(may_start(P::Running), ["n2"]);
        assert_eq!(may_start(P::RollingBack), ["c1"]);
        for phase in [
            P::Paused,
            P::Halted,
            P::Soaking,
            P::Judging,
            P::Interval,
            P::Aborted,
        ] {
            assert!(may_start(phase).is_empty(), "{phase}");
        }
    }

    fn arb_event() -> impl proptest::strategy::Strategy<Value = RolloutEvent> {
        use proptest::prelude::*;
        let node = prop::sample::select(vec!["c1", "n1", "n2", "n3"]);
        prop_oneof![
            Just(RolloutEvent::Start),
            node.clone().prop_map(started),
            node.clone().prop_map(started),
            (node, any::<bool>()).prop_map(|(node, passed)| finished(node, passed)),
            Just(RolloutEvent::SoakEnded),
            Just(RolloutEvent::IntervalEnded),
            Just(RolloutEvent::HealthJudged(HealthVerdict::Passed)),
            Just(RolloutEvent::HealthJudged(HealthVerdict::Waiting)),
            Just(RolloutEvent::HealthJudged(
                HealthVerdict::Failed(failures())
            )),
            Just(RolloutEvent::Pause),
            Just(RolloutEvent::Resume),
            any::<bool>().prop_map(|rollback| RolloutEvent::Abort { rollback }),
            Just(RolloutEvent::SkipWave { reason: "x".into() }),
            Just(RolloutEvent::ControllerRestarted),
        ]
    }

    proptest::proptest! {
        /// Over any sequence of events, applied as the store would: no node starts while the
        /// rollout is paused or halted; a change is decided from what it was given; a
        /// controller restart under `on-interrupted: fail` leaves no node in procedure; and
        /// a completed rollout left no node waiting.
        #[test]
        fn no_node_starts_while_paused_or_halted_and_none_is_lost(
            events in proptest::collection::vec((arb_event(), 0i64..4000), 1..80),
            resume in proptest::prelude::any::<bool>(),
        ) {
            let mut spec = spec();
            if resume {
                spec.procedure.on_interrupted = OnInterrupted::Resume;
            }
            let waves = waves();
            let mut state = RolloutState::new(at(0));
            let mut progress = Progress::new();
            let mut now = 0;
            for (event, step) in events {
                now += step;
                let is_start = matches!(event, RolloutEvent::NodeStarted { .. });
                let is_restart = event == RolloutEvent::ControllerRestarted;
                let facts = RolloutFacts { spec: &spec, waves: &waves, state: &state, progress: &progress };
                let Ok(change) = next(facts, event, at(now)) else { continue };
                if is_start {
                    proptest::prop_assert!(
                        matches!(state.phase, Phase::Running | Phase::RollingBack),
                        "a node started while {}", state.phase
                    );
                }
                proptest::prop_assert_eq!(&change.from, &state);
                for node in &change.nodes {
                    let was = progress.get(&node.node).copied().unwrap_or_default();
                    proptest::prop_assert_eq!(node.from, was);
                    progress.insert(node.node.clone(), node.to);
                }
                state = change.to;
                if is_restart && !resume {
                    proptest::prop_assert!(progress.values().all(|p| !p.is_active()));
                }
                if state.phase == Phase::Completed {
                    proptest::prop_assert!(
                        progress.values().all(|p| *p != NodeProgress::Waiting)
                            && progress.len() == 4,
                        "{:?}", progress
                    );
                }
            }
        }
    }
}
