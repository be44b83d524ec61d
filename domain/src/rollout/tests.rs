//! The rollout state machine's tests: every transition, every refusal, and its invariants.

use super::machine::*;
use super::spec::{OnInterrupted, RolloutSpec};
use super::waves::WavePlan;
use crate::NodeId;
use crate::gate::{Decision, Verdict};
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

/// Halted at wave 1 because a rollback failed.
fn rollback_halted() -> RolloutState {
    RolloutState {
        halt: Some(Halt {
            wave: 1,
            failures: failures(),
            at: at(0),
            rollback_failed: true,
        }),
        ..state(P::Halted, 1)
    }
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
            rollback_failed: false,
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
            "abort with rollback takes back every wave's updated nodes",
            halted.clone(),
            vec![("c1", N::Passed), ("n1", N::Passed), ("n2", N::Failed)],
            RolloutEvent::Abort { rollback: true },
            (P::RollingBack, 1),
            vec![
                ("c1", N::Passed, N::RollbackPending),
                ("n1", N::Passed, N::RollbackPending),
                ("n2", N::Failed, N::RollbackPending),
            ],
        ),
        (
            "roll back the halted wave: only its updated nodes; the canary's wave passed",
            halted.clone(),
            vec![("c1", N::Passed), ("n1", N::Passed), ("n2", N::Failed)],
            RolloutEvent::RollBackWave,
            (P::RollingBack, 1),
            vec![
                ("n1", N::Passed, N::RollbackPending),
                ("n2", N::Failed, N::RollbackPending),
            ],
        ),
        (
            "roll back the halted wave: a node still in procedure waits for it; one not started stays",
            halted.clone(),
            wave1_open.clone(),
            RolloutEvent::RollBackWave,
            (P::RollingBack, 1),
            vec![],
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
            "a rollback fails: halted for a person, the other rollbacks wait",
            state(P::RollingBack, 1),
            vec![("c1", N::RollingBack), ("n1", N::RollbackPending)],
            finished("c1", false),
            (P::Halted, 1),
            vec![("c1", N::RollingBack, N::RollbackFailed)],
        ),
        (
            "abort with rollback after a failed one: it runs again, with the others",
            rollback_halted(),
            vec![
                ("c1", N::RollbackFailed),
                ("n1", N::RollbackPending),
                ("n2", N::RolledBack),
            ],
            RolloutEvent::Abort { rollback: true },
            (P::RollingBack, 1),
            vec![("c1", N::RollbackFailed, N::RollbackPending)],
        ),
        (
            "abort without rollback after a failed one: aborted",
            rollback_halted(),
            vec![("c1", N::RollbackFailed), ("n1", N::RollbackPending)],
            RolloutEvent::Abort { rollback: false },
            (P::Aborted, 1),
            vec![],
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
            "restarted mid-rollback under on-interrupted: fail: the interrupted rollback failed, halted",
            state(P::RollingBack, 1),
            vec![
                ("c1", N::RollingBack),
                ("n1", N::InProcedure),
                ("n2", N::RollbackPending),
            ],
            RolloutEvent::ControllerRestarted,
            (P::Halted, 1),
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
            at: at(500),
            rollback_failed: false,
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

/// A refusal case: the rollout, its state and nodes, the event, when, and the message.
type Refusal<'a> = (
    RolloutSpec,
    RolloutState,
    Vec<(&'a str, NodeProgress)>,
    RolloutEvent,
    i64,
    &'a str,
);

#[test]
fn every_refusal_says_why() {
    let spec = spec();
    let mut no_rollback = spec.clone();
    no_rollback.rollback = None;
    let skip = || RolloutEvent::SkipWave { reason: "x".into() };
    let cases: Vec<Refusal> = vec![
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
            no_rollback.clone(),
            state(P::Halted, 1),
            vec![],
            RolloutEvent::Abort { rollback: true },
            10_000,
            "rollout prod-h100 has no rollback plan; abort it without rollback, or add a rollback to its file",
        ),
        (
            no_rollback,
            state(P::Halted, 1),
            vec![],
            RolloutEvent::RollBackWave,
            10_000,
            "rollout prod-h100 has no rollback plan; abort it without rollback, or add a rollback to its file",
        ),
        (
            spec.clone(),
            rollback_halted(),
            vec![],
            RolloutEvent::Resume,
            10_000,
            "rollout is halted: it cannot take resume; a rollback failed: abort it, with rollback to run the rollback plan again on the nodes not rolled back",
        ),
        (
            spec.clone(),
            rollback_halted(),
            vec![],
            RolloutEvent::SkipWave { reason: "r".into() },
            10_000,
            "rollout is halted: it cannot take skip-wave; a rollback failed: abort it, with rollback to run the rollback plan again on the nodes not rolled back",
        ),
        (
            spec.clone(),
            state(P::Judging, 1),
            vec![],
            RolloutEvent::RollBackWave,
            10_000,
            "rollout is judging: it cannot take roll-back-wave; only a halted rollout rolls back its wave",
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

#[test]
fn a_failed_rollback_halts_naming_its_node_and_abort_with_rollback_clears_it() {
    let spec = spec();
    let failed = decide(
        &spec,
        &state(P::RollingBack, 1),
        &[("n1", N::RollingBack), ("n2", N::RollbackPending)],
        finished("n1", false),
        700,
    )
    .expect("recorded");
    let halt = failed.to.halt.clone().expect("a halt says why");
    assert!(halt.rollback_failed);
    assert_eq!((halt.wave, halt.at), (1, at(700)));
    assert_eq!(halt.failures.len(), 1);
    assert_eq!(halt.failures[0].rule_id, ROLLBACK_FAILED);
    assert_eq!(halt.failures[0].nodes, vec![NodeId::from("n1")]);
    assert!(
        halt.failures[0]
            .reason
            .starts_with("the rollback plan failed on n1; "),
        "{}",
        halt.failures[0].reason
    );
    // Nothing starts while it waits for a person: n2's rollback included.
    let progress = progress(&[("n1", N::RollbackFailed), ("n2", N::RollbackPending)]);
    let waves = waves();
    let facts = RolloutFacts {
        spec: &spec,
        waves: &waves,
        state: &failed.to,
        progress: &progress,
    };
    assert!(facts.may_start().is_empty());
    let again = decide(
        &spec,
        &failed.to,
        &[("n1", N::RollbackFailed), ("n2", N::RollbackPending)],
        RolloutEvent::Abort { rollback: true },
        800,
    )
    .expect("rolls back again");
    assert_eq!(again.to.phase, P::RollingBack);
    assert_eq!(again.to.halt, None);
}
