//! Rollouts: moving a release that passed `production` onto a production fleet in waves, each
//! judged by health rules before the next starts. Pure: the controller stores what these
//! functions return and drives the rollout with the events it sees.
//!
//! - [`spec`]: the rollout file, parsed and validated with file:line errors ([`parse_rollout`]).
//! - [`waves`]: which nodes each wave takes, decided once at the start ([`plan_waves`]).
//! - [`blast`]: which nodes of the wave may start now ([`startable`]).
//! - [`machine`]: the state machine ([`next`]), with the nodes' progress.
//! - [`soak`]: the wave's soak judged over its nodes' fleet telemetry and events ([`judge_soak`]).
//! - [`cohort`]: with `baseline-by-cohort`, the wave compared with the fleet's nodes not
//!   updated yet over the same span ([`judge_cohort`]).
//! - [`eta`](mod@eta): when it should end ([`eta()`](fn@eta)).
//! - [`drift`](mod@drift): a node reporting other components than a rollout brought it to.
//!
//! ```text
//!   pending ──start──▶ running(i) ──wave i's last node finished──▶ soaking(i) ──soak ended──▶ judging(i)
//!                        ▲         (no soak: straight to judging)                                  │
//!                        ├──interval ended── interval(i+1) ◀──passed, a pause between waves───────┤
//!                        └──────────────────────────────────────passed, no pause: wave i+1────────┤
//!                                                          passed, last wave ──▶ completed ◀───────┘
//!   running|soaking|judging|paused ──health failed──▶ halted(rules, nodes) ──resume──▶ running(i)
//!   running|soaking|judging|interval ──pause──▶ paused ──resume──▶ the phase it left
//!   running|soaking|judging|interval|halted ──skip-wave──▶ running(i+1) | completed
//!   any not ended ──abort──▶ aborted ;  ──abort with rollback (every updated node)──▶ rolling-back ──all rolled back──▶ rolled-back
//!   halted ──roll back the wave (a rollback plan; the halted wave's updated nodes only)──▶ rolling-back
//!   rolling-back ──a node's rollback failed──▶ halted(rollback) ──abort [with rollback: again]──▶ aborted | rolling-back
//!   any ──controller restarted──▶ the same phase; nodes mid-procedure resumed or failed (on-interrupted)
//! ```
//!
//! **Invariant:** no node starts while the rollout is paused or halted ([`next`] refuses
//! `node-started` then, and [`RolloutFacts::may_start`] offers none).

pub mod blast;
pub mod cohort;
pub mod drift;
pub mod eta;
pub mod machine;
pub mod soak;
pub mod spec;
pub mod waves;

#[cfg(test)]
mod tests;

pub use blast::{Starts, startable};
pub use cohort::{CohortVerdict, cohort_nodes, cohort_windows, compares_with_cohort, judge_cohort};
pub use eta::{Eta, EtaFacts, eta};
pub use machine::{
    Halt, HealthFailure, HealthVerdict, NodeProgress, Phase, Progress, ProgressChange,
    ROLLBACK_FAILED, RolloutChange, RolloutEvent, RolloutFacts, RolloutRefusal, RolloutState,
    SkippedWave, health_verdict, next,
};
pub use soak::{SoakFacts, SoakWindow, combine, judge_soak};
pub use spec::{
    HEALTH_MILESTONE, OnInterrupted, Procedure, Rollback, RolloutLimits, RolloutSpec, WaveSpec,
    parse_rollout,
};
pub use waves::{Wave, WavePlan, WavesError, plan_waves, select_fleet};
