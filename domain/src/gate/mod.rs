//! Gates: the policy a release must satisfy to pass a milestone, the evidence it is judged
//! on, and [`evaluate`], the pure function that decides.
//!
//! A gate fails closed: missing or running evidence is `waiting`, an evaluation problem is
//! `error`, and neither ever passes. A waiver turns a failed rule into `waived`, never into
//! `passed`, and never exempts missing evidence.

mod greenwave;
mod order_stats;
mod parse;
mod rules;

pub use greenwave::greenwave;
pub use parse::parse_gate;
pub(crate) use parse::{RawRule, RuleDefaults, parse_rules};
pub use rules::PASSING_SAMPLE;

use crate::fleet::{GpuSourceKind, Labels, Selector};
use crate::job::JobState;
use crate::release::Release;
use crate::result::StepResult;
use crate::telemetry::Field;
use crate::{JobId, NodeId, PlanVersion, RunId, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The XID codes `no-events` checks when its file names none: the ones NVIDIA documents as
/// hardware or driver faults that need attention (ECC, row remapping, NVLink, fallen off the
/// bus, GSP), not application errors.
pub const CRITICAL_XIDS: [i64; 10] = [48, 63, 64, 74, 79, 92, 94, 95, 119, 120];

/// The policy guarding one milestone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatePolicy {
    /// The milestone.
    pub milestone: String,
    /// Free text.
    pub description: String,
    /// Rules; all must pass.
    pub rules: Vec<Rule>,
}

impl GatePolicy {
    /// Content hash of the policy.
    pub fn version(&self) -> String {
        crate::digest_json(self)
    }
}

/// One rule of a gate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Id, unique in the policy; waivers name it.
    pub id: String,
    /// What the rule checks.
    pub kind: RuleKind,
    /// Only jobs on nodes carrying these labels count; empty for every node.
    #[serde(default)]
    pub scope: Selector,
    /// The rule applies to releases created at or after this time, so tightening a gate
    /// does not fail releases that were already on their way.
    #[serde(default)]
    pub since: Option<Timestamp>,
}

/// What a rule checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, strum::IntoStaticStr)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum RuleKind {
    /// The listed steps of a plan passed on enough nodes (per label value when `per` is set),
    /// with at most so many failed, errored and inconclusive nodes.
    StepsPassed {
        /// Plan name.
        plan: String,
        /// Steps that must all pass on a node for it to count.
        steps: Vec<String>,
        /// How many nodes must pass (in each group).
        quorum: Quorum,
        /// Group nodes by this label (`sku`) and require the quorum in every group.
        per: Option<String>,
        /// How many failed, errored and inconclusive nodes are tolerated.
        tolerance: Tolerance,
    },
    /// A measurement aggregated across nodes meets a condition.
    Measurement {
        /// Measurement name.
        name: String,
        /// Only results of this step.
        step: Option<String>,
        /// Aggregate over nodes.
        aggregate: Aggregate,
        /// Condition on the aggregate.
        condition: Condition,
    },
    /// A telemetry field aggregated across nodes and GPUs meets a condition.
    Telemetry {
        /// Field.
        field: Field,
        /// Only results of this step.
        step: Option<String>,
        /// Which statistic of each GPU's step summary is aggregated.
        stat: Stat,
        /// Aggregate over every GPU's statistic.
        aggregate: Aggregate,
        /// Condition on the aggregate.
        condition: Condition,
    },
    /// A measurement compared with the last release promoted past the same milestone, per
    /// label value (SKU).
    Baseline {
        /// Measurement name.
        measurement: String,
        /// Only results of this step.
        step: Option<String>,
        /// Aggregate per group on both sides.
        aggregate: Aggregate,
        /// Largest tolerated regression, in percent of the baseline.
        max_regression_pct: f64,
        /// Whether larger values are better (bandwidth) or worse (latency).
        direction: Direction,
        /// The label grouping nodes (`sku`).
        per: String,
    },
    /// Per step (and per testcase of a step whose results carry test results) and per label
    /// value (SKU), the pass rate is not significantly lower than that of the last release
    /// promoted past the same milestone (one-sided Fisher's exact test); with a measurement,
    /// its values are not significantly worse either (one-sided Mann–Whitney U test).
    NoRegression {
        /// Only results of this step.
        step: Option<String>,
        /// The label grouping nodes (`sku`).
        per: String,
        /// The significance level: a p-value below it is a regression.
        significance: f64,
        /// Fewest samples on each side for a comparison; with fewer the rule waits.
        min_samples: u32,
        /// A measurement whose values are compared as well.
        measurement: Option<String>,
        /// Whether larger values of the measurement are better or worse.
        direction: Direction,
    },
    /// No XID with one of these codes on any node (every XID when empty).
    NoXid {
        /// XID codes.
        codes: Vec<i64>,
    },
    /// No critical event: XIDs, uncorrected ECC errors, row remap failures, lost GPUs.
    NoEvents {
        /// XID codes that count (every XID when empty).
        xid: Vec<i64>,
        /// Uncorrected ECC errors count (events, or a rising volatile counter).
        ecc_uncorrected: bool,
        /// A row remap failure counts.
        row_remap_failure: bool,
        /// A lost GPU counts.
        gpu_lost: bool,
    },
    /// The DCGM diagnostic ran at least at `min_level` and every listed test passed on every
    /// GPU. A skipped test counts as missing.
    DcgmDiag {
        /// Lowest acceptable `-r` level.
        min_level: u8,
        /// Tests that must pass on each GPU.
        tests: Vec<String>,
        /// Only results of this step.
        step: Option<String>,
    },
    /// Every node ran the release's components.
    InventoryMatchesRelease {
        /// Components to check; empty for all.
        components: Vec<String>,
    },
}

impl RuleKind {
    /// The kind's name as written in gate files.
    pub fn name(&self) -> &'static str {
        self.into()
    }
}

impl RuleKind {
    /// What the rule requires, in one sentence, for people (CLI, reports).
    pub fn describe(&self) -> String {
        let scope = |step: &Option<String>| match step {
            Some(step) => format!("step {step}"),
            None => "every step".to_owned(),
        };
        match self {
            RuleKind::StepsPassed {
                plan,
                steps,
                quorum,
                per,
                tolerance,
            } => describe_steps_passed(plan, steps, *quorum, per.as_deref(), *tolerance),
            RuleKind::Measurement {
                name,
                step,
                aggregate,
                condition,
            } => format!(
                "{aggregate} of measurement {name} over nodes ({}) {condition}",
                scope(step)
            ),
            RuleKind::Telemetry {
                field,
                step,
                aggregate,
                condition,
                ..
            } => {
                let unit = match field.unit() {
                    "" => String::new(),
                    unit => format!(" {unit}"),
                };
                format!(
                    "{aggregate} of telemetry {field} over every GPU ({}) {condition}{unit}",
                    scope(step)
                )
            }
            RuleKind::NoXid { codes } if codes.is_empty() => {
                "no XID of any code on any node".into()
            }
            RuleKind::NoXid { codes } => {
                let codes: Vec<String> = codes.iter().map(i64::to_string).collect();
                format!("no XID with code {} on any node", codes.join(", "))
            }
            RuleKind::InventoryMatchesRelease { components } if components.is_empty() => {
                "every node ran every component of the release".into()
            }
            RuleKind::InventoryMatchesRelease { components } => {
                format!("every node ran the release's {}", components.join(", "))
            }
            RuleKind::Baseline {
                measurement,
                step,
                aggregate,
                max_regression_pct,
                direction,
                per,
            } => format!(
                "{aggregate} of measurement {measurement} ({}) regresses at most {}% per {per} against the last release promoted past this milestone ({direction})",
                scope(step),
                format_number(*max_regression_pct)
            ),
            RuleKind::NoRegression {
                step,
                per,
                significance,
                min_samples,
                measurement,
                direction,
            } => describe_no_regression(
                step.as_deref(),
                per,
                *significance,
                *min_samples,
                measurement.as_deref(),
                *direction,
            ),
            RuleKind::NoEvents {
                xid,
                ecc_uncorrected,
                row_remap_failure,
                gpu_lost,
            } => describe_no_events(xid, *ecc_uncorrected, *row_remap_failure, *gpu_lost),
            RuleKind::DcgmDiag {
                min_level,
                tests,
                step,
            } => format!(
                "dcgmi diag at level {min_level} or higher ({}) passes {} on every GPU; skipped counts as missing",
                scope(step),
                tests.join(", ")
            ),
        }
    }
}

/// [`RuleKind::describe`] of a `steps-passed` rule.
fn describe_steps_passed(
    plan: &str,
    steps: &[String],
    quorum: Quorum,
    per: Option<&str>,
    tolerance: Tolerance,
) -> String {
    let mut parts = Vec::new();
    if let Some(n) = quorum.min_nodes {
        parts.push(format!("at least {n} node(s)"));
    }
    match quorum.min_fraction {
        Some(f) => parts.push(format!(
            "at least {}% of the nodes",
            format_number(f * 100.0)
        )),
        None if quorum.min_nodes.is_none() => parts.push("every node".to_owned()),
        None => {}
    }
    let group = per.map(|key| format!(" of each {key}")).unwrap_or_default();
    format!(
        "steps {} of plan {plan} pass on {}{group}; tolerated: {} failed, {} errored, {} inconclusive",
        steps.join(", "),
        parts.join(" and "),
        tolerance.max_failed,
        tolerance.max_errored,
        tolerance.max_inconclusive
    )
}

/// [`RuleKind::describe`] of a `no-regression` rule.
fn describe_no_regression(
    step: Option<&str>,
    per: &str,
    significance: f64,
    min_samples: u32,
    measurement: Option<&str>,
    direction: Direction,
) -> String {
    let what = match step {
        Some(step) => format!("step {step} and each of its testcases"),
        None => "every step and testcase".to_owned(),
    };
    let values = measurement
        .map(|m| {
            format!(", nor are its {m} values significantly worse ({direction}; one-sided Mann-Whitney U)")
        })
        .unwrap_or_default();
    format!(
        "the pass rate of {what} per {per} is not significantly lower than the last release promoted past this milestone (one-sided Fisher's exact test){values}, at p < {} with at least {min_samples} samples on each side",
        format_number(significance)
    )
}

/// [`RuleKind::describe`] of a `no-events` rule.
fn describe_no_events(
    xid: &[i64],
    ecc_uncorrected: bool,
    row_remap_failure: bool,
    gpu_lost: bool,
) -> String {
    let mut kinds = vec![if xid.is_empty() {
        "no XID".to_owned()
    } else {
        let codes: Vec<String> = xid.iter().map(i64::to_string).collect();
        format!("no XID {}", codes.join(", "))
    }];
    for (on, what) in [
        (ecc_uncorrected, "no uncorrected ECC error"),
        (row_remap_failure, "no row remap failure"),
        (gpu_lost, "no lost GPU"),
    ] {
        if on {
            kinds.push(what.to_owned());
        }
    }
    format!("{} on any node", kinds.join(", "))
}

/// A number without a pointless fraction: `98`, `97.5`.
fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// How many nodes must pass: at least `min_nodes`, and at least `min_fraction` of the nodes
/// (rounded up). With neither, every node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Quorum {
    /// At least this many nodes.
    pub min_nodes: Option<u32>,
    /// At least this fraction (0-1] of the nodes.
    pub min_fraction: Option<f64>,
}

impl Quorum {
    /// Nodes required out of `n_nodes`.
    pub fn required(self, n_nodes: usize) -> usize {
        let by_fraction = |f: f64| ((f * n_nodes as f64).ceil() as usize).max(1);
        match (self.min_nodes, self.min_fraction) {
            (None, None) => by_fraction(1.0),
            (nodes, fraction) => (nodes.unwrap_or(0) as usize).max(fraction.map_or(0, by_fraction)),
        }
    }
}

/// How many nodes of each bad kind a `steps-passed` rule tolerates (Argo-style).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tolerance {
    /// Nodes where the thing under test failed.
    pub max_failed: u32,
    /// Nodes where the harness failed (error, lost).
    pub max_errored: u32,
    /// Nodes whose evidence is unusable (skipped, missing on an ended job, or produced on
    /// another build than the release's).
    pub max_inconclusive: u32,
}

/// How values across nodes and GPUs combine.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
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
pub enum Aggregate {
    /// The smallest.
    Min,
    /// The largest.
    Max,
    /// The arithmetic mean.
    Mean,
    /// 5th percentile (nearest rank).
    P5,
    /// Median (nearest rank).
    P50,
    /// 95th percentile (nearest rank).
    P95,
    /// 99th percentile (nearest rank).
    P99,
    /// How many values there are.
    Count,
}

impl Aggregate {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl Aggregate {
    /// Aggregates `values` (not empty).
    pub fn apply(self, values: &[f64]) -> f64 {
        let percentile = |p: f64| {
            let mut sorted = values.to_vec();
            sorted.sort_by(f64::total_cmp);
            let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[rank - 1]
        };
        match self {
            Self::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
            Self::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Self::Mean => values.iter().sum::<f64>() / values.len() as f64,
            Self::P5 => percentile(0.05),
            Self::P50 => percentile(0.50),
            Self::P95 => percentile(0.95),
            Self::P99 => percentile(0.99),
            Self::Count => values.len() as f64,
        }
    }
}

/// Which statistic of a GPU's per-step telemetry summary a rule looks at.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
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
pub enum Stat {
    /// The smallest sample.
    Min,
    /// The largest sample.
    Max,
    /// The mean.
    Mean,
    /// The 99th percentile.
    P99,
    /// The last sample.
    Last,
}

impl Stat {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl Stat {
    /// The statistic a rule uses when the file names none: the one matching the aggregate.
    pub fn default_for(aggregate: Aggregate) -> Self {
        match aggregate {
            Aggregate::Min | Aggregate::P5 => Self::Min,
            Aggregate::Max | Aggregate::P95 | Aggregate::P99 => Self::Max,
            Aggregate::Mean | Aggregate::P50 | Aggregate::Count => Self::Mean,
        }
    }
}

/// Which way a measurement improves.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
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
pub enum Direction {
    /// Larger is better (bandwidth, throughput).
    HigherIsBetter,
    /// Smaller is better (latency, errors).
    LowerIsBetter,
}

impl Direction {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A comparison with a number, written like `>= 2800` or `< 88`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// The comparison.
    pub op: Comparison,
    /// The number compared with.
    pub threshold: f64,
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Condition {
    /// Parses `>= 2800`, `<88`, `== 0`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (op, rest) = [
            ("<=", Comparison::Le),
            (">=", Comparison::Ge),
            ("==", Comparison::Eq),
            ("!=", Comparison::Ne),
            ("<", Comparison::Lt),
            (">", Comparison::Gt),
        ]
        .into_iter()
        .find_map(|(sym, op)| text.strip_prefix(sym).map(|rest| (op, rest)))
        .ok_or_else(|| {
            format!(
                "condition '{text}' must start with <, <=, >, >=, == or !=, for example \">= 2800\""
            )
        })?;
        let threshold: f64 = rest
            .trim()
            .parse()
            .map_err(|_| format!("condition '{text}': '{}' is not a number", rest.trim()))?;
        if !threshold.is_finite() {
            return Err(format!("condition '{text}': the number must be finite"));
        }
        Ok(Self { op, threshold })
    }

    /// Whether `value` satisfies the condition.
    pub fn holds(&self, value: f64) -> bool {
        match self.op {
            Comparison::Lt => value < self.threshold,
            Comparison::Le => value <= self.threshold,
            Comparison::Gt => value > self.threshold,
            Comparison::Ge => value >= self.threshold,
            Comparison::Eq => value == self.threshold,
            Comparison::Ne => value != self.threshold,
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
            Comparison::Eq => "==",
            Comparison::Ne => "!=",
        };
        write!(f, "{op} {}", self.threshold)
    }
}

// ---------------------------------------------------------------------------------------------
// Evidence and decisions.

/// Everything a gate looks at for one release at one milestone: the latest run of each plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The release under test.
    pub release: Release,
    /// The milestone.
    pub milestone: String,
    /// The latest run of each plan for the release at the milestone.
    pub runs: Vec<RunEvidence>,
    /// The evidence of the last release promoted past the same milestone, for `baseline` and
    /// `no-regression` rules; `None` when there is none (or the policy has neither rule).
    #[serde(default)]
    pub baseline: Option<Box<Evidence>>,
}

/// One run and what it produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunEvidence {
    /// The run.
    pub run_id: RunId,
    /// Plan name.
    pub plan_name: String,
    /// Plan version pinned by the run.
    pub plan_version: PlanVersion,
    /// The plan's step names, in order.
    pub plan_steps: Vec<String>,
    /// When the run started.
    pub created_at: Timestamp,
    /// One job per selected node.
    pub jobs: Vec<JobEvidence>,
}

/// One job and its results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvidence {
    /// The job.
    pub job_id: JobId,
    /// Its node.
    pub node: NodeId,
    /// The node's labels when the gate evaluated.
    pub labels: Labels,
    /// Where the node's GPU facts come from.
    pub gpu_source: GpuSourceKind,
    /// The job's state.
    pub state: JobState,
    /// Every result, all attempts.
    pub results: Vec<StepResult>,
    /// The digest of each result ([`result_digest`]), in the order of `results`, when the
    /// store computed it as the result arrived; results without one are digested when the gate
    /// is evaluated. Not part of the serialized evidence.
    #[serde(skip)]
    pub result_digests: Vec<[u8; 32]>,
}

impl JobEvidence {
    /// The result of the final attempt of `step_index` ([`crate::result::final_attempt`]).
    pub fn latest(&self, step_index: usize) -> Option<&StepResult> {
        crate::result::final_attempt(&self.results, u32::try_from(step_index).ok()?)
    }

    /// The final attempt of every step, by step index.
    pub fn latest_results(&self) -> impl Iterator<Item = &StepResult> {
        crate::result::final_attempts(&self.results)
            .into_iter()
            .map(|(_, i)| &self.results[i])
    }
}

/// A waiver: an expiring exemption of one rule of one release at one milestone, optionally
/// narrowed to nodes, SKUs or steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Waiver {
    /// Id.
    pub id: String,
    /// Release name.
    pub release: String,
    /// Milestone.
    pub milestone: String,
    /// The rule waived.
    pub rule_id: String,
    /// Why.
    pub reason: String,
    /// Ticket reference.
    pub ticket: String,
    /// Who approved it.
    pub approver: String,
    /// When it was granted.
    pub created_at: Timestamp,
    /// When it stops applying.
    pub expires_at: Timestamp,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
    /// Only failures on these nodes are waived; empty for any node.
    #[serde(default)]
    pub nodes: Vec<NodeId>,
    /// Only failures on nodes with these `sku` labels are waived; empty for any SKU.
    #[serde(default)]
    pub skus: Vec<String>,
    /// Only failures in these steps are waived; empty for any step.
    #[serde(default)]
    pub steps: Vec<String>,
    /// The issue the waived failures are tracked in, if any. Left out of the JSON when none,
    /// so the digests of decisions under waivers without one stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue: Option<i64>,
}

impl Waiver {
    /// Whether the waiver applies at `now`.
    pub fn in_force(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none_or(|revoked| revoked > now) && now < self.expires_at
    }

    /// Whether the waiver's scope covers one failing piece of evidence.
    fn covers(&self, item: &EvidenceItem, labels: Option<&Labels>) -> bool {
        let node_ok = self.nodes.is_empty() || self.nodes.contains(&item.node);
        let sku_ok = self.skus.is_empty()
            || labels
                .and_then(|l| l.get("sku"))
                .is_some_and(|sku| self.skus.contains(sku));
        let step_ok = self.steps.is_empty()
            || item
                .step
                .as_ref()
                .is_some_and(|step| self.steps.contains(step));
        node_ok && sku_ok && step_ok
    }

    /// Whether the waiver has a scope narrower than the whole rule.
    pub fn is_scoped(&self) -> bool {
        !(self.nodes.is_empty() && self.skus.is_empty() && self.steps.is_empty())
    }
}

/// A gate's or a rule's verdict.
#[derive(
    Clone,
    Copy,
    Debug,
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
pub enum Verdict {
    /// Satisfied.
    Passed,
    /// Not satisfied.
    Failed,
    /// Evidence is missing or still coming.
    Waiting,
    /// Could not be evaluated.
    Error,
    /// Failed, but a waiver in force exempts it (rules only).
    Waived,
    /// The rule does not apply to this release (its `since` is later than the release).
    NotApplicable,
}

impl Verdict {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One piece of evidence behind a rule decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvidenceItem {
    /// Node.
    pub node: NodeId,
    /// Step, when about one step.
    pub step: Option<String>,
    /// Attempt, when about one attempt.
    pub attempt: Option<u32>,
    /// GPU, when about one GPU.
    pub gpu_index: Option<u32>,
    /// Observed value, when numeric.
    pub value: Option<f64>,
    /// Limit or expectation.
    pub limit: Option<String>,
    /// What it shows.
    pub detail: String,
    /// Whether it satisfied the rule.
    pub ok: bool,
    /// For a failing item: what kind of failure, so alike failures group together
    /// (`stress: failed: exit code #`, `XID 79`).
    #[serde(default)]
    pub signature: Option<String>,
}

/// Failures of one rule that share a signature, with the nodes they hit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureGroup {
    /// The shared signature.
    pub signature: String,
    /// How many failing evidence items carry it.
    pub count: usize,
    /// The nodes affected.
    pub nodes: Vec<NodeId>,
}

/// One rule's verdict and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleDecision {
    /// Rule id.
    pub rule_id: String,
    /// Rule kind.
    pub kind: String,
    /// Verdict.
    pub verdict: Verdict,
    /// One line a person can act on.
    pub reason: String,
    /// Evidence used.
    pub evidence: Vec<EvidenceItem>,
    /// Nodes that made the rule fail.
    pub failing_nodes: Vec<NodeId>,
    /// Failures grouped by signature, largest group first.
    #[serde(default)]
    pub failure_groups: Vec<FailureGroup>,
    /// The waiver that exempts the rule, when one does.
    #[serde(default)]
    pub waiver_id: Option<String>,
}

/// A gate's verdict over evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Release.
    pub release: String,
    /// Milestone.
    pub milestone: String,
    /// Overall verdict: passed, failed, waiting or error (never waived).
    pub verdict: Verdict,
    /// One sentence.
    pub summary: String,
    /// Per rule, in policy order.
    pub rules: Vec<RuleDecision>,
    /// Hex sha256 of the inputs: policy, evidence and the waivers in force.
    pub digest: String,
    /// Version of the policy.
    pub policy_version: String,
    /// When it was evaluated.
    pub evaluated_at: Timestamp,
}

/// The digest of one step result: sha256 of its canonical JSON. The store computes it once,
/// when the result arrives, and a decision's input digest combines these.
pub fn result_digest(result: &StepResult) -> [u8; 32] {
    crate::digest_json_bytes(result)
}

/// The digest of a decision's inputs. Time enters only through which waivers are in force, so
/// the same evidence under the same policy and waivers always gives the same digest.
///
/// It is a sha256 over, in order: a version tag, the policy version, the release and milestone,
/// the baseline evidence's digest, then per run its header and per job its digest (the job's
/// identity, labels, GPU source, state and the digests of its results in order), and last the
/// waivers in force. Per-result digests computed at ingestion make this cheap to recompute.
pub fn digest_inputs(
    policy: &GatePolicy,
    evidence: &Evidence,
    waivers_in_force: &[&Waiver],
) -> String {
    GateState::new(policy, evidence).digest(policy, evidence, waivers_in_force)
}

/// The input digest of decisions stored before [`digest_inputs`] combined per-result digests:
/// sha256 of the canonical JSON of policy, evidence and the waivers in force at `now`. Only
/// for replaying those decisions.
pub fn digest_inputs_v1(
    policy: &GatePolicy,
    evidence: &Evidence,
    waivers: &[Waiver],
    now: Timestamp,
) -> String {
    let (_, in_force) = waivers_of(policy, evidence, waivers, now);
    crate::digest_json(&(policy, evidence, in_force))
}

/// The waivers of the evidence's release at the policy's milestone, and those of them in force
/// at `now`.
fn waivers_of<'w>(
    policy: &GatePolicy,
    evidence: &Evidence,
    waivers: &'w [Waiver],
    now: Timestamp,
) -> (Vec<&'w Waiver>, Vec<&'w Waiver>) {
    let relevant: Vec<&Waiver> = waivers
        .iter()
        .filter(|w| w.release == evidence.release.id.as_str() && w.milestone == policy.milestone)
        .collect();
    let in_force = relevant
        .iter()
        .copied()
        .filter(|w| w.in_force(now))
        .collect();
    (relevant, in_force)
}

/// Whether any rule of the policy compares with a baseline release, so the caller knows
/// whether to load the baseline's evidence.
pub fn needs_baseline(policy: &GatePolicy) -> bool {
    policy.rules.iter().any(|rule| {
        matches!(
            rule.kind,
            RuleKind::Baseline { .. } | RuleKind::NoRegression { .. }
        )
    })
}

/// What the rules of a policy read of each result, and so what a gate kept evaluated in memory
/// keeps of it ([`ResultReads::thin`]): its outcome, times, message, measurements, events and
/// test results; of its telemetry summaries only the fields rules look at (a `telemetry` rule
/// its field, `no-events` the uncorrected-ECC and row-remap counters); of its inventories the
/// versions and each GPU's index and VBIOS; no series and no log tail (up to 64 KiB a result,
/// which no rule reads). A decision over evidence so thinned is the decision over the whole,
/// digest included: the store digests each result whole as it arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultReads {
    /// The telemetry summary fields read, sorted, each once.
    fields: Vec<Field>,
}

impl ResultReads {
    /// What the rules of `policy` read.
    pub fn of(policy: &GatePolicy) -> Self {
        let mut fields = Vec::new();
        for rule in &policy.rules {
            rules::summary_fields(&rule.kind, &mut fields);
        }
        fields.sort_unstable();
        fields.dedup();
        Self { fields }
    }

    /// The telemetry summary fields read, in order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// Drops of `result` what no rule reads. Its digest must be taken before
    /// ([`result_digest`]).
    pub fn thin(&self, result: &mut StepResult) {
        for gpu in &mut result.telemetry {
            gpu.fields
                .retain(|summary| self.fields.binary_search(&summary.field).is_ok());
            gpu.fields.shrink_to_fit();
        }
        result.telemetry.retain(|gpu| !gpu.fields.is_empty());
        result.telemetry.shrink_to_fit();
        result.series = Vec::new();
        result.log_tail = String::new();
        thin_inventory(&mut result.inventory);
        if let Some(at_end) = &mut result.inventory_at_end {
            thin_inventory(at_end);
        }
    }
}

/// Keeps of an inventory what rules read: the versions `release::check_inventory` compares and
/// each GPU's index (the GPUs a result covers). Every field is named, so that a new one is
/// kept or dropped on purpose.
fn thin_inventory(inventory: &mut crate::fleet::Inventory) {
    let crate::fleet::Inventory {
        driver_version: _,
        cuda_driver_version: _,
        nvml_version,
        gpus,
        components: _,
        gpu_source: _,
        hostname,
    } = inventory;
    *nvml_version = String::new();
    *hostname = String::new();
    for gpu in gpus {
        let crate::fleet::GpuInfo {
            index: _,
            uuid,
            name,
            serial,
            board_part_number,
            pci_bus_id,
            vbios_version: _,
            inforom_version,
            memory_total_mib: _,
            ecc_enabled: _,
            power_limit_w: _,
            max_pcie_gen: _,
            max_pcie_width: _,
        } = gpu;
        *uuid = String::new();
        *name = String::new();
        *pci_bus_id = String::new();
        *serial = None;
        *board_part_number = None;
        *inforom_version = None;
    }
}

/// Decides whether `evidence` satisfies `policy` at `now`.
pub fn evaluate(
    policy: &GatePolicy,
    evidence: &Evidence,
    waivers: &[Waiver],
    now: Timestamp,
) -> Decision {
    GateState::new(policy, evidence).decide(policy, evidence, waivers, now)
}

/// From how many jobs [`GateState::new`] builds on several threads.
pub const PARALLEL_FROM_JOBS: usize = 256;

/// A gate kept up to date over evidence that grows: built once over the evidence, then told
/// about each job that changed ([`GateState::job_changed`]), so that a decision after one new
/// result recomputes that job's part and the totals, not the whole evidence.
///
/// The state belongs to one policy and one shape of evidence (the same runs holding the same
/// jobs); when a run or a job is added, or the policy changes, build a new one.
pub struct GateState {
    slots: Vec<rules::Slot>,
    facts: Vec<rules::JobFacts>,
    job_digests: Vec<[u8; 32]>,
    rules: Vec<rules::RuleState>,
    /// Digest of what does not change per job: policy, release, milestone, baseline.
    head: [u8; 32],
    /// Per run: the digest of its header.
    run_heads: Vec<[u8; 32]>,
    policy_version: String,
}

impl GateState {
    /// Builds the state of `policy` over `evidence`, on several threads when the evidence is
    /// large ([`PARALLEL_FROM_JOBS`] jobs or more).
    pub fn new(policy: &GatePolicy, evidence: &Evidence) -> Self {
        let n_jobs: usize = evidence.runs.iter().map(|run| run.jobs.len()).sum();
        let threads = if n_jobs >= PARALLEL_FROM_JOBS {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
        } else {
            1
        };
        Self::with_threads(policy, evidence, threads)
    }

    /// Builds the state on `threads` threads, each taking a contiguous share of the jobs into
    /// every rule. The result does not depend on `threads`.
    pub fn with_threads(policy: &GatePolicy, evidence: &Evidence, threads: usize) -> Self {
        let slots = rules::slots(evidence);
        let mut rule_states: Vec<rules::RuleState> = {
            let ctx = rules::Ctx {
                evidence,
                slots: &slots,
                facts: &[],
                first: 0,
            };
            policy
                .rules
                .iter()
                .map(|rule| rules::RuleState::new(rule, &ctx))
                .collect()
        };
        let (facts, job_digests) =
            rules::build(&mut rule_states, evidence, &slots, threads, job_digest);
        let policy_version = policy.version();
        let baseline = evidence
            .baseline
            .as_deref()
            .map(|base| hex::encode(evidence_digest(base)))
            .unwrap_or_default();
        let head = crate::digest_json_bytes(&(
            "tollgate-gate-inputs/2",
            &policy_version,
            &evidence.release,
            &evidence.milestone,
            baseline,
        ));
        Self {
            run_heads: evidence.runs.iter().map(run_head).collect(),
            slots,
            facts,
            job_digests,
            rules: rule_states,
            head,
            policy_version,
        }
    }

    /// Takes in a change of job `job` of run `run` of `evidence` (results added, its state or
    /// labels changed). Everything else must be as when the state was built.
    pub fn job_changed(
        &mut self,
        policy: &GatePolicy,
        evidence: &Evidence,
        run: usize,
        job: usize,
    ) {
        let Some(j) = self.slots.iter().position(|s| s.run == run && s.job == job) else {
            return;
        };
        let changed = &evidence.runs[run].jobs[job];
        self.facts[j] = rules::JobFacts::new(changed, &evidence.release);
        self.job_digests[j] = job_digest(changed);
        let ctx = rules::Ctx {
            evidence,
            slots: &self.slots,
            facts: &self.facts,
            first: 0,
        };
        debug_assert_eq!(self.policy_version, policy.version());
        for state in &mut self.rules {
            state.job_changed(&ctx, j);
        }
    }

    /// The digest of the inputs ([`digest_inputs`]).
    pub fn digest(
        &self,
        policy: &GatePolicy,
        evidence: &Evidence,
        waivers_in_force: &[&Waiver],
    ) -> String {
        use sha2::{Digest, Sha256};
        debug_assert_eq!(self.policy_version, policy.version());
        let mut hasher = Sha256::new();
        hasher.update(self.head);
        let mut slots = self.slots.iter().zip(&self.job_digests).peekable();
        for (r, (run, head)) in evidence.runs.iter().zip(&self.run_heads).enumerate() {
            hasher.update(head);
            hasher.update((run.jobs.len() as u64).to_le_bytes());
            while let Some((_, digest)) = slots.next_if(|(slot, _)| slot.run == r) {
                hasher.update(digest);
            }
        }
        hasher.update(crate::digest_json_bytes(&waivers_in_force));
        hex::encode(hasher.finalize())
    }

    /// Decides whether the evidence satisfies the policy at `now`.
    pub fn decide(
        &self,
        policy: &GatePolicy,
        evidence: &Evidence,
        waivers: &[Waiver],
        now: Timestamp,
    ) -> Decision {
        let (relevant, in_force) = waivers_of(policy, evidence, waivers, now);
        let ctx = rules::Ctx {
            evidence,
            slots: &self.slots,
            facts: &self.facts,
            first: 0,
        };
        let mut rules: Vec<RuleDecision> =
            self.rules.iter().map(|state| state.decide(&ctx)).collect();
        let mut labels_of: Option<BTreeMap<&NodeId, &Labels>> = None;
        for rule in &mut rules {
            if rule.verdict != Verdict::Failed {
                continue;
            }
            let failing: Vec<&EvidenceItem> =
                rule.evidence.iter().filter(|item| !item.ok).collect();
            let labels = labels_of.get_or_insert_with(|| {
                evidence
                    .runs
                    .iter()
                    .flat_map(|run| run.jobs.iter().map(|job| (&job.node, &job.labels)))
                    .collect()
            });
            let applies = |waiver: &&&Waiver| {
                waiver.rule_id == rule.rule_id
                    && (!waiver.is_scoped()
                        || (!failing.is_empty()
                            && failing
                                .iter()
                                .all(|item| waiver.covers(item, labels.get(&item.node).copied()))))
            };
            if let Some(waiver) = in_force.iter().find(applies) {
                rule.verdict = Verdict::Waived;
                rule.waiver_id = Some(waiver.id.clone());
                rule.reason = format!(
                    "waived by {} until {} ({}: {}); without the waiver: {}",
                    waiver.approver,
                    waiver.expires_at.format("%Y-%m-%d %H:%M UTC"),
                    waiver.ticket,
                    waiver.reason,
                    rule.reason
                );
            } else if let Some(lapsed) = relevant
                .iter()
                .find(|w| w.rule_id == rule.rule_id && !w.in_force(now))
            {
                let how = if lapsed.revoked_at.is_some_and(|r| r <= now) {
                    "was revoked"
                } else {
                    "expired"
                };
                rule.reason = format!("{} (waiver {} {how})", rule.reason, lapsed.id);
            } else if let Some(narrow) = in_force.iter().find(|w| w.rule_id == rule.rule_id) {
                rule.reason = format!(
                    "{} (waiver {} does not cover every failure)",
                    rule.reason, narrow.id
                );
            }
        }
        let (verdict, summary) = overall(&rules);
        Decision {
            release: evidence.release.id.to_string(),
            milestone: policy.milestone.clone(),
            verdict,
            summary,
            rules,
            digest: self.digest(policy, evidence, &in_force),
            policy_version: self.policy_version.clone(),
            evaluated_at: now,
        }
    }
}

/// The gate's verdict and summary from its rules' verdicts.
fn overall(rules: &[RuleDecision]) -> (Verdict, String) {
    let count = |v: Verdict| rules.iter().filter(|r| r.verdict == v).count();
    if count(Verdict::Failed) > 0 {
        let names: Vec<&str> = rules
            .iter()
            .filter(|r| r.verdict == Verdict::Failed)
            .map(|r| r.rule_id.as_str())
            .collect();
        (
            Verdict::Failed,
            format!(
                "{} of {} rules failed: {}",
                names.len(),
                rules.len(),
                names.join(", ")
            ),
        )
    } else if count(Verdict::Error) > 0 {
        (
            Verdict::Error,
            format!(
                "{} rule(s) could not be evaluated; see their reasons",
                count(Verdict::Error)
            ),
        )
    } else if count(Verdict::Waiting) > 0 {
        (
            Verdict::Waiting,
            format!("{} rule(s) wait for evidence", count(Verdict::Waiting)),
        )
    } else if count(Verdict::Waived) > 0 {
        (
            Verdict::Passed,
            format!(
                "all {} rules passed, {} with a waiver",
                rules.len(),
                count(Verdict::Waived)
            ),
        )
    } else {
        (Verdict::Passed, format!("all {} rules passed", rules.len()))
    }
}

/// The digest of one job: its identity, labels, GPU source and state, then its results'
/// digests in order (those the store supplied, the others computed here).
fn job_digest(job: &JobEvidence) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(job.job_id.as_str().as_bytes());
    field(job.node.as_str().as_bytes());
    field(&(job.labels.len() as u64).to_le_bytes());
    for (key, value) in &job.labels {
        field(key.as_bytes());
        field(value.as_bytes());
    }
    field(job.gpu_source.as_str().as_bytes());
    field(job.state.as_str().as_bytes());
    field(&(job.results.len() as u64).to_le_bytes());
    for (i, result) in job.results.iter().enumerate() {
        match job.result_digests.get(i) {
            Some(digest) => hasher.update(digest),
            None => hasher.update(result_digest(result)),
        }
    }
    hasher.finalize().into()
}

/// The digest of a run's header: id, plan, plan version and steps, creation time.
fn run_head(run: &RunEvidence) -> [u8; 32] {
    crate::digest_json_bytes(&(
        &run.run_id,
        &run.plan_name,
        &run.plan_version,
        &run.plan_steps,
        &run.created_at,
    ))
}

/// The digest of a whole evidence set without a policy (for the baseline release's evidence).
fn evidence_digest(evidence: &Evidence) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(crate::digest_json_bytes(&(
        &evidence.release,
        &evidence.milestone,
    )));
    for run in &evidence.runs {
        hasher.update(run_head(run));
        hasher.update((run.jobs.len() as u64).to_le_bytes());
        for job in &run.jobs {
            hasher.update(job_digest(job));
        }
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests;
