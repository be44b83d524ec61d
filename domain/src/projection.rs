//! When each release should pass each milestone: the plan of record (a target date per
//! milestone) against a projection from the work left, the nodes that can do it and the
//! releases ahead in the queue.
//!
//! The model, kept simple on purpose so that a person can check it by hand:
//!
//! - A milestone's remaining work is `n_jobs` jobs, each running every step of the plan once.
//!   A step takes the median of its measured durations in earlier runs, or its timeout when
//!   none was measured ([`Basis`] says which). Retries and reschedules are not foreseen.
//! - A release's milestones are passed in track order: a milestone's jobs start when the one
//!   before it has finished (or `now`).
//! - Releases are served in the order given (oldest first). Each job goes to the matching node,
//!   among those in service, that is free first (ties: the node's name); it holds the node
//!   until it ends. A node's jobs thus queue FIFO in release order: a later release never
//!   overtakes an earlier one on a node, even where it could have used a gap.
//! - A milestone passed stays where it was passed. A milestone none of whose matching nodes is
//!   in service cannot be projected, nor can the ones after it.
//! - A milestone is at risk when its projected finish falls on a day after its target (UTC),
//!   or when it cannot be projected for want of a node.
//! - The critical path across releases: a milestone whose jobs wait for nodes another release
//!   holds lists that release's milestone in `waits_for` (following those links from a late
//!   milestone walks back to what it queues behind).
//! - A halted release runs nothing: it holds no node, so the releases after it are projected
//!   as if it were not there; its own milestones are projected as if it resumed now, and
//!   every one not passed is at risk for the halt.

use crate::{NodeId, ReleaseId, Timestamp};
use chrono::NaiveDate;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The nodes in service (not down, cordoned, draining, in maintenance or retired), with when
/// each becomes free: `now` for an idle node, the expected end of its current job otherwise.
pub type FreeAt = BTreeMap<NodeId, Timestamp>;

/// One release's plan of record and the facts its projection needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseFacts {
    /// The release.
    pub release: ReleaseId,
    /// Whether it is halted.
    pub halted: bool,
    /// Its milestones, in track order.
    pub milestones: Vec<MilestoneFacts>,
}

/// One milestone of a release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MilestoneFacts {
    /// The milestone.
    pub milestone: String,
    /// The date it should be passed by, if one was set.
    pub target: Option<NaiveDate>,
    /// When the release was promoted past it, if it was.
    pub passed_at: Option<Timestamp>,
    /// The work left; `None` when no plan is known for it (no run of the release yet).
    pub work: Option<Work>,
}

/// The work left at a milestone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Work {
    /// How many jobs are still to run.
    pub n_jobs: usize,
    /// The plan's steps, each job running all of them.
    pub steps: Vec<StepWork>,
    /// The nodes the plan's selector matches.
    pub matching: BTreeSet<NodeId>,
}

/// One step of the plan, with what earlier runs measured of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepWork {
    /// The step's name.
    pub name: String,
    /// How long its attempts took in earlier runs.
    pub measured: Vec<Duration>,
    /// Its timeout, assumed when nothing was measured.
    pub timeout: Duration,
}

/// Where the step durations of a projection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, strum::IntoStaticStr, strum::EnumString)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Basis {
    /// Every step's median measured duration.
    Measured,
    /// Measured durations for some steps, timeouts for the others.
    Mixed,
    /// Every step's timeout: nothing was measured yet.
    Timeouts,
}

/// When a milestone is, or should be, passed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Finish {
    /// It was passed then.
    Passed {
        /// When the release was promoted past it.
        at: Timestamp,
    },
    /// It should be passed then.
    Projected {
        /// The end of its last job.
        at: Timestamp,
        /// Where the step durations came from (`None`: no work was left).
        basis: Option<Basis>,
    },
    /// None of the nodes its plan matches is in service.
    NoMatchingNode,
    /// No plan is known for it yet.
    NoPlan,
    /// An earlier milestone cannot be projected.
    AfterUnknown {
        /// That milestone.
        milestone: String,
    },
}

impl Finish {
    /// The time passed or projected, if there is one.
    pub fn at(&self) -> Option<Timestamp> {
        match self {
            Finish::Passed { at } | Finish::Projected { at, .. } => Some(*at),
            Finish::NoMatchingNode | Finish::NoPlan | Finish::AfterUnknown { .. } => None,
        }
    }

    /// In words: `passed 2026-12-04`, `2027-01-20 (timeouts)`, `no matching node`, `no run
    /// yet`, `after lab-qual`. `release list`, `release show`, the dashboard and the status
    /// report all say it this way.
    pub fn words(&self) -> String {
        match self {
            Finish::Passed { at } => format!("passed {}", at.date_naive()),
            Finish::Projected { at, basis } => match basis {
                Some(basis) => format!("{} ({})", at.date_naive(), <&str>::from(*basis)),
                None => format!("{} (no work left)", at.date_naive()),
            },
            Finish::NoMatchingNode => "no matching node".to_owned(),
            Finish::NoPlan => "no run yet".to_owned(),
            Finish::AfterUnknown { milestone } => format!("after {milestone}"),
        }
    }
}

/// A milestone's risk column: `AT RISK (after-target)` for a risk's name; empty for none.
pub fn risk_words(risk: Option<&str>) -> String {
    risk.map_or_else(String::new, |risk| format!("AT RISK ({risk})"))
}

/// Other releases' milestones a milestone waits behind, in words: `r549 customer-acceptance,
/// r548 production`.
pub fn holders_words<'a>(holders: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    holders
        .into_iter()
        .map(|(release, milestone)| format!("{release} {milestone}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a milestone is at risk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, strum::IntoStaticStr)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Risk {
    /// It is projected to finish on a day after its target.
    AfterTarget,
    /// No node its plan matches (or an earlier milestone's) is in service.
    NoMatchingNode,
    /// The release is halted: nothing runs until it is resumed.
    Halted,
}

/// The projection of one milestone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MilestoneProjection {
    /// The milestone.
    pub milestone: String,
    /// Its target date, if any.
    pub target: Option<NaiveDate>,
    /// When it was or should be passed.
    pub finish: Finish,
    /// Why it is at risk; `None` when it is not.
    pub risk: Option<Risk>,
    /// The milestones of other releases whose jobs hold nodes this one's jobs wait for (its
    /// jobs would start sooner without them), by release and milestone; empty when none.
    pub waits_for: Vec<Holder>,
}

/// A release's milestone holding nodes in the projection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Holder {
    /// The release.
    pub release: ReleaseId,
    /// Its milestone.
    pub milestone: String,
}

/// The projection of one release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReleaseProjection {
    /// The release.
    pub release: ReleaseId,
    /// Its milestones, in track order.
    pub milestones: Vec<MilestoneProjection>,
}

/// Projects every milestone of every release in `releases` (served in that order) on the
/// nodes of `free_at`, from `now`. See the module's documentation for the model.
pub fn project(
    releases: &[ReleaseFacts],
    free_at: &FreeAt,
    now: Timestamp,
) -> Vec<ReleaseProjection> {
    let mut nodes = Nodes {
        free_at: free_at
            .iter()
            .map(|(node, at)| (node.clone(), (*at).max(now)))
            .collect(),
        held_by: BTreeMap::new(),
    };
    releases
        .iter()
        .map(|release| {
            let milestones = if release.halted {
                // Placed on a copy: a halted release holds no node.
                let mut milestones = project_release(release, &mut nodes.clone(), now);
                for milestone in &mut milestones {
                    if !matches!(milestone.finish, Finish::Passed { .. }) {
                        milestone.risk = Some(Risk::Halted);
                    }
                }
                milestones
            } else {
                project_release(release, &mut nodes, now)
            };
            ReleaseProjection {
                release: release.release.clone(),
                milestones,
            }
        })
        .collect()
}

/// The nodes as jobs are placed on them: when each is free, and whose job holds it until then.
#[derive(Clone, Debug)]
struct Nodes {
    free_at: FreeAt,
    held_by: BTreeMap<NodeId, Holder>,
}

/// One release's milestones, taking nodes as its jobs are placed.
fn project_release(
    release: &ReleaseFacts,
    nodes: &mut Nodes,
    now: Timestamp,
) -> Vec<MilestoneProjection> {
    let mut ready = now;
    // The first milestone that could not be projected, and the risk it passes on.
    let mut unknown: Option<(String, Option<Risk>)> = None;
    let mut projections = Vec::with_capacity(release.milestones.len());
    for facts in &release.milestones {
        let me = Holder {
            release: release.release.clone(),
            milestone: facts.milestone.clone(),
        };
        let mut waits_for = BTreeSet::new();
        let (finish, risk) = if let Some(at) = facts.passed_at {
            ready = ready.max(at);
            (Finish::Passed { at }, None)
        } else if let Some((milestone, risk)) = &unknown {
            let finish = Finish::AfterUnknown {
                milestone: milestone.clone(),
            };
            (finish, *risk)
        } else {
            let placed = facts
                .work
                .as_ref()
                .map(|work| place(work, nodes, ready, &me, &mut waits_for));
            match placed {
                None => {
                    unknown = Some((facts.milestone.clone(), None));
                    (Finish::NoPlan, None)
                }
                Some(None) => {
                    unknown = Some((facts.milestone.clone(), Some(Risk::NoMatchingNode)));
                    (Finish::NoMatchingNode, Some(Risk::NoMatchingNode))
                }
                Some(Some((at, basis))) => {
                    ready = at;
                    let late = facts.target.is_some_and(|target| at.date_naive() > target);
                    (
                        Finish::Projected { at, basis },
                        late.then_some(Risk::AfterTarget),
                    )
                }
            }
        };
        projections.push(MilestoneProjection {
            milestone: facts.milestone.clone(),
            target: facts.target,
            finish,
            risk,
            waits_for: waits_for.into_iter().collect(),
        });
    }
    projections
}

/// Places `work`'s jobs (of `me`), none starting before `ready`, on the matching nodes that
/// are free first, and says when the last one ends and where its durations came from (`None`
/// with no job left); `None` when no matching node is in service. A job that starts after
/// `ready` on a node another release's job held adds that holder to `waits_for`.
fn place(
    work: &Work,
    nodes: &mut Nodes,
    ready: Timestamp,
    me: &Holder,
    waits_for: &mut BTreeSet<Holder>,
) -> Option<(Timestamp, Option<Basis>)> {
    let (per_job, basis) = job_duration(&work.steps);
    if work.n_jobs == 0 {
        return Some((ready, None));
    }
    let per_job = chrono_of(per_job);
    let mut end = ready;
    for _ in 0..work.n_jobs {
        let (node, start) = work
            .matching
            .iter()
            .filter_map(|node| nodes.free_at.get(node).map(|at| (node, (*at).max(ready))))
            .min_by_key(|(node, start)| (*start, (*node).clone()))?;
        if start > ready
            && let Some(holder) = nodes.held_by.get(node)
            && holder.release != me.release
        {
            waits_for.insert(holder.clone());
        }
        let job_end = start + per_job;
        nodes.free_at.insert(node.clone(), job_end);
        nodes.held_by.insert(node.clone(), me.clone());
        end = end.max(job_end);
    }
    Some((end, Some(basis)))
}

/// How long one job of `steps` takes, and where that came from.
fn job_duration(steps: &[StepWork]) -> (Duration, Basis) {
    let n_measured = steps.iter().filter(|s| !s.measured.is_empty()).count();
    let total = steps
        .iter()
        .map(|step| median(&step.measured).unwrap_or(step.timeout))
        .fold(Duration::ZERO, Duration::saturating_add);
    let basis = if n_measured == steps.len() {
        Basis::Measured
    } else if n_measured == 0 {
        Basis::Timeouts
    } else {
        Basis::Mixed
    };
    (total, basis)
}

/// The median (the upper one of an even count), or `None` for no duration. Rollout ETAs use
/// it too.
pub(crate) fn median(durations: &[Duration]) -> Option<Duration> {
    let mut sorted = durations.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied()
}

/// `duration` for date arithmetic, capped at a century: past it a projection or an estimate
/// means nothing, and capping keeps the sums from overflowing.
pub(crate) fn chrono_of(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration)
        .unwrap_or(chrono::Duration::MAX)
        .min(chrono::Duration::days(36_500))
}

#[cfg(test)]
mod tests;
