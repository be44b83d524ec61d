//! Gates: the policy a release must satisfy to pass a milestone, the evidence it is judged
//! on, and [`evaluate`], the pure function that decides.
//!
//! A gate fails closed: missing or running evidence is `waiting`, an evaluation problem is
//! `error`, and neither ever passes.

use crate::fleet::{GpuSourceKind, Labels};
use crate::job::JobState;
use crate::release::{Release, check_inventory};
use crate::result::{Outcome, StepResult};
use crate::spec::{Problems, SpecErrors, parse_yaml};
use crate::telemetry::{EventKind, Field};
use crate::{JobId, NodeId, PlanVersion, RunId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

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
}

/// What a rule checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleKind {
    /// The listed steps of a plan passed on enough nodes.
    StepsPassed {
        /// Plan name.
        plan: String,
        /// Steps that must all pass on a node for it to count.
        steps: Vec<String>,
        /// How many nodes must pass.
        quorum: Quorum,
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
        /// Aggregate over every GPU's step summary.
        aggregate: Aggregate,
        /// Condition on the aggregate.
        condition: Condition,
    },
    /// No XID with one of these codes on any node (every XID when empty).
    NoXid {
        /// XID codes.
        codes: Vec<i64>,
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
        match self {
            Self::StepsPassed { .. } => "steps-passed",
            Self::Measurement { .. } => "measurement",
            Self::Telemetry { .. } => "telemetry",
            Self::NoXid { .. } => "no-xid",
            Self::InventoryMatchesRelease { .. } => "inventory-matches-release",
        }
    }
}

/// How many nodes must pass.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Quorum {
    /// At least this many nodes.
    MinNodes(u32),
    /// At least this fraction (0-1] of the run's nodes, rounded up.
    MinFraction(f64),
}

impl Quorum {
    /// Nodes required out of `n_nodes`.
    pub fn required(self, n_nodes: usize) -> usize {
        match self {
            Self::MinNodes(n) => n as usize,
            Self::MinFraction(f) => ((f * n_nodes as f64).ceil() as usize).max(1),
        }
    }
}

/// How values across nodes and GPUs combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregate {
    /// The smallest.
    Min,
    /// The largest.
    Max,
    /// The arithmetic mean.
    Mean,
}

crate::fleet::str_enum!(Aggregate { Min => "min", Max => "max", Mean => "mean" });

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
// Parsing gate files.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGate {
    milestone: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    rules: Spanned<Vec<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRule {
    #[serde(default)]
    steps_passed: Option<Spanned<RawStepsPassed>>,
    #[serde(default)]
    measurement: Option<Spanned<RawMeasurement>>,
    #[serde(default)]
    telemetry: Option<Spanned<RawTelemetry>>,
    #[serde(default)]
    no_xid: Option<Spanned<RawNoXid>>,
    #[serde(default)]
    inventory_matches_release: Option<Spanned<RawInventory>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawStepsPassed {
    #[serde(default)]
    id: Option<String>,
    plan: String,
    steps: Vec<String>,
    #[serde(default)]
    min_nodes: Option<u32>,
    #[serde(default)]
    min_fraction: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawMeasurement {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    step: Option<String>,
    aggregate: String,
    condition: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTelemetry {
    #[serde(default)]
    id: Option<String>,
    field: String,
    #[serde(default)]
    step: Option<String>,
    aggregate: String,
    condition: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawNoXid {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    codes: Vec<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawInventory {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    components: Vec<String>,
}

/// Parses and validates a gate file. Every problem is returned with its line and field.
pub fn parse_gate(file: &str, source: &str) -> Result<GatePolicy, SpecErrors> {
    let raw: RawGate = parse_yaml(file, source)?;
    let mut problems = Problems::new(file);
    if !crate::release::is_valid_name(&raw.milestone.value) {
        problems.add(
            raw.milestone.referenced,
            "milestone",
            format!("'{}' is not a valid milestone name", raw.milestone.value),
        );
    }
    if raw.rules.value.is_empty() {
        problems.add(
            raw.rules.referenced,
            "rules",
            "a gate needs at least one rule; an empty gate would pass anything",
        );
    }
    let mut rules: Vec<Rule> = Vec::new();
    for (idx, raw_rule) in raw.rules.value.into_iter().enumerate() {
        let field = |name: &str| format!("rules[{idx}].{name}");
        let mut given = Vec::new();
        let RawRule {
            steps_passed,
            measurement,
            telemetry,
            no_xid,
            inventory_matches_release,
        } = raw_rule;
        if let Some(body) = steps_passed {
            let location = body.referenced;
            let RawStepsPassed {
                id,
                plan,
                steps,
                min_nodes,
                min_fraction,
            } = body.value;
            let quorum = match (min_nodes, min_fraction) {
                (Some(_), Some(_)) => {
                    problems.add(
                        location,
                        field("steps-passed"),
                        "give min-nodes or min-fraction, not both",
                    );
                    None
                }
                (Some(0), None) => {
                    problems.add(
                        location,
                        field("steps-passed.min-nodes"),
                        "must be at least 1",
                    );
                    None
                }
                (Some(n), None) => Some(Quorum::MinNodes(n)),
                (None, Some(f)) if !(f > 0.0 && f <= 1.0) => {
                    problems.add(
                        location,
                        field("steps-passed.min-fraction"),
                        format!("{f} is not in (0, 1]"),
                    );
                    None
                }
                (None, Some(f)) => Some(Quorum::MinFraction(f)),
                (None, None) => Some(Quorum::MinFraction(1.0)),
            };
            if steps.is_empty() {
                problems.add(
                    location,
                    field("steps-passed.steps"),
                    "list at least one step of the plan",
                );
            }
            if let Some(quorum) = quorum {
                given.push((
                    location,
                    id,
                    RuleKind::StepsPassed {
                        plan,
                        steps,
                        quorum,
                    },
                ));
            }
        }
        if let Some(body) = measurement {
            let location = body.referenced;
            let RawMeasurement {
                id,
                name,
                step,
                aggregate,
                condition,
            } = body.value;
            let aggregate = aggregate
                .parse::<Aggregate>()
                .map_err(|e| problems.add(location, field("measurement.aggregate"), e))
                .ok();
            let condition = Condition::parse(&condition)
                .map_err(|e| problems.add(location, field("measurement.condition"), e))
                .ok();
            if let (Some(aggregate), Some(condition)) = (aggregate, condition) {
                given.push((
                    location,
                    id,
                    RuleKind::Measurement {
                        name,
                        step,
                        aggregate,
                        condition,
                    },
                ));
            }
        }
        if let Some(body) = telemetry {
            let location = body.referenced;
            let RawTelemetry {
                id,
                field: field_name,
                step,
                aggregate,
                condition,
            } = body.value;
            let telemetry_field = field_name
                .parse::<Field>()
                .map_err(|e| problems.add(location, field("telemetry.field"), e))
                .ok();
            let aggregate = aggregate
                .parse::<Aggregate>()
                .map_err(|e| problems.add(location, field("telemetry.aggregate"), e))
                .ok();
            let condition = Condition::parse(&condition)
                .map_err(|e| problems.add(location, field("telemetry.condition"), e))
                .ok();
            if let (Some(f), Some(aggregate), Some(condition)) =
                (telemetry_field, aggregate, condition)
            {
                given.push((
                    location,
                    id,
                    RuleKind::Telemetry {
                        field: f,
                        step,
                        aggregate,
                        condition,
                    },
                ));
            }
        }
        if let Some(body) = no_xid {
            given.push((
                body.referenced,
                body.value.id,
                RuleKind::NoXid {
                    codes: body.value.codes,
                },
            ));
        }
        if let Some(body) = inventory_matches_release {
            given.push((
                body.referenced,
                body.value.id,
                RuleKind::InventoryMatchesRelease {
                    components: body.value.components,
                },
            ));
        }
        match given.len() {
            1 => {
                let (location, id, kind) = given.remove(0);
                let id = id.unwrap_or_else(|| default_rule_id(&kind));
                if rules.iter().any(|r| r.id == id) {
                    problems.add(location, field("id"), format!("rule id '{id}' is used twice; give one of them an `id:`"));
                }
                rules.push(Rule { id, kind });
            }
            0 => problems.add(raw.rules.referenced, format!("rules[{idx}]"), "a rule needs one of: steps-passed, measurement, telemetry, no-xid, inventory-matches-release"),
            _ => problems.add(given[1].0, format!("rules[{idx}]"), "a rule has exactly one kind; split it into one list item per rule"),
        }
    }
    problems.finish(GatePolicy {
        milestone: raw.milestone.value,
        description: raw.description.unwrap_or_default(),
        rules,
    })
}

fn default_rule_id(kind: &RuleKind) -> String {
    match kind {
        RuleKind::Measurement { name, .. } => format!("measurement:{name}"),
        RuleKind::Telemetry { field, .. } => format!("telemetry:{field}"),
        RuleKind::StepsPassed { plan, .. } => format!("steps-passed:{plan}"),
        other => other.name().to_owned(),
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
}

impl JobEvidence {
    /// The result of the latest attempt of `step_index`.
    fn latest(&self, step_index: usize) -> Option<&StepResult> {
        self.results
            .iter()
            .filter(|r| r.step_index as usize == step_index)
            .max_by_key(|r| r.attempt)
    }

    /// The latest attempt of every step.
    fn latest_results(&self) -> impl Iterator<Item = &StepResult> {
        let indexes: BTreeSet<u32> = self.results.iter().map(|r| r.step_index).collect();
        indexes
            .into_iter()
            .filter_map(|idx| self.latest(idx as usize))
    }
}

/// A waiver: an expiring exemption of one rule of one release at one milestone.
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
}

impl Waiver {
    /// Whether the waiver applies at `now`.
    pub fn in_force(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none_or(|revoked| revoked > now) && now < self.expires_at
    }
}

/// A gate's or a rule's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
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
}

crate::fleet::str_enum!(Verdict { Passed => "passed", Failed => "failed", Waiting => "waiting", Error => "error", Waived => "waived" });

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

/// The digest of a decision's inputs. Time enters only through which waivers are in force, so
/// the same evidence under the same policy and waivers always gives the same digest.
pub fn digest_inputs(
    policy: &GatePolicy,
    evidence: &Evidence,
    waivers_in_force: &[&Waiver],
) -> String {
    crate::digest_json(&(policy, evidence, waivers_in_force))
}

/// Decides whether `evidence` satisfies `policy` at `now`.
pub fn evaluate(
    policy: &GatePolicy,
    evidence: &Evidence,
    waivers: &[Waiver],
    now: Timestamp,
) -> Decision {
    let in_force: Vec<&Waiver> = waivers
        .iter()
        .filter(|w| {
            w.in_force(now)
                && w.release == evidence.release.id.as_str()
                && w.milestone == policy.milestone
        })
        .collect();
    let mut rules: Vec<RuleDecision> = policy
        .rules
        .iter()
        .map(|rule| {
            let (verdict, reason, items, failing) = if evidence.runs.is_empty() {
                (
                    Verdict::Waiting,
                    no_run_reason(evidence),
                    Vec::new(),
                    BTreeSet::new(),
                )
            } else {
                evaluate_rule(&rule.kind, evidence)
            };
            RuleDecision {
                rule_id: rule.id.clone(),
                kind: rule.kind.name().to_owned(),
                verdict,
                reason,
                evidence: items,
                failing_nodes: failing.into_iter().collect(),
            }
        })
        .collect();
    for rule in &mut rules {
        if rule.verdict != Verdict::Failed {
            continue;
        }
        if let Some(waiver) = in_force.iter().find(|w| w.rule_id == rule.rule_id) {
            rule.verdict = Verdict::Waived;
            rule.reason = format!(
                "waived by {} until {} ({}: {}); without the waiver: {}",
                waiver.approver,
                waiver.expires_at.format("%Y-%m-%d %H:%M UTC"),
                waiver.ticket,
                waiver.reason,
                rule.reason
            );
        } else if let Some(expired) = waivers
            .iter()
            .find(|w| w.rule_id == rule.rule_id && !w.in_force(now))
        {
            rule.reason = format!(
                "{} (waiver {} is no longer in force)",
                rule.reason, expired.id
            );
        }
    }
    let count = |v: Verdict| rules.iter().filter(|r| r.verdict == v).count();
    let (verdict, summary) = if count(Verdict::Failed) > 0 {
        let names: Vec<String> = rules
            .iter()
            .filter(|r| r.verdict == Verdict::Failed)
            .map(|r| r.rule_id.clone())
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
    };
    Decision {
        release: evidence.release.id.to_string(),
        milestone: policy.milestone.clone(),
        verdict,
        summary,
        rules,
        digest: digest_inputs(policy, evidence, &in_force),
        policy_version: policy.version(),
        evaluated_at: now,
    }
}

fn no_run_reason(evidence: &Evidence) -> String {
    format!(
        "no run of release {} at milestone {} yet; start one with `tollgate run start --release {} --plan PLAN --milestone {}`",
        evidence.release.id, evidence.milestone, evidence.release.id, evidence.milestone
    )
}

type RuleOutcome = (Verdict, String, Vec<EvidenceItem>, BTreeSet<NodeId>);

/// Whether a result counts toward the gate: the node ran the release under test.
fn counts(result: &StepResult, release: &Release) -> bool {
    check_inventory(&release.components, &[], &result.inventory).is_empty()
}

fn all_jobs(evidence: &Evidence) -> impl Iterator<Item = &JobEvidence> {
    evidence.runs.iter().flat_map(|run| run.jobs.iter())
}

fn jobs_still_running(evidence: &Evidence) -> usize {
    all_jobs(evidence)
        .filter(|job| !job.state.is_terminal())
        .count()
}

fn evaluate_rule(kind: &RuleKind, evidence: &Evidence) -> RuleOutcome {
    match kind {
        RuleKind::StepsPassed {
            plan,
            steps,
            quorum,
        } => evaluate_steps_passed(plan, steps, *quorum, evidence),
        RuleKind::Measurement {
            name,
            step,
            aggregate,
            condition,
        } => {
            let mut items = Vec::new();
            for job in all_jobs(evidence) {
                for result in job.latest_results() {
                    let relevant = step.as_ref().is_none_or(|s| s == &result.step_name)
                        && matches!(result.outcome, Outcome::Passed | Outcome::Failed)
                        && counts(result, &evidence.release);
                    if !relevant {
                        continue;
                    }
                    for m in result.measurements.iter().filter(|m| &m.name == name) {
                        items.push(numeric_item(
                            job,
                            result,
                            None,
                            m.value,
                            *condition,
                            format!(
                                "{} = {}{}",
                                name,
                                m.value,
                                m.unit
                                    .as_deref()
                                    .map(|u| format!(" {u}"))
                                    .unwrap_or_default()
                            ),
                        ));
                    }
                }
            }
            let what = format!("measurement {name}");
            judge_numeric(&what, items, *aggregate, *condition, evidence)
        }
        RuleKind::Telemetry {
            field,
            step,
            aggregate,
            condition,
        } => {
            let mut items = Vec::new();
            for job in all_jobs(evidence) {
                for result in &job.results {
                    if step.as_ref().is_some_and(|s| s != &result.step_name)
                        || !counts(result, &evidence.release)
                    {
                        continue;
                    }
                    for gpu in &result.telemetry {
                        let Some(summary) = gpu.field(*field) else {
                            continue;
                        };
                        let value = match aggregate {
                            Aggregate::Min => summary.min,
                            Aggregate::Max => summary.max,
                            Aggregate::Mean => summary.mean,
                        };
                        items.push(numeric_item(
                            job,
                            result,
                            Some(gpu.gpu_index),
                            value,
                            *condition,
                            format!("GPU {} {} {} = {}", gpu.gpu_index, field, aggregate, value),
                        ));
                    }
                }
            }
            let what = format!("telemetry {field} ({aggregate} per GPU)");
            judge_numeric(&what, items, *aggregate, *condition, evidence)
        }
        RuleKind::NoXid { codes } => {
            let mut items = Vec::new();
            let mut failing = BTreeSet::new();
            for job in all_jobs(evidence) {
                for result in &job.results {
                    for event in result.events.iter().filter(|e| {
                        e.kind == EventKind::Xid && (codes.is_empty() || codes.contains(&e.code))
                    }) {
                        failing.insert(job.node.clone());
                        items.push(EvidenceItem {
                            node: job.node.clone(),
                            step: Some(result.step_name.clone()),
                            attempt: Some(result.attempt),
                            gpu_index: Some(event.gpu_index),
                            value: Some(event.code as f64),
                            limit: Some(describe_codes(codes)),
                            detail: format!(
                                "XID {} on GPU {} during {}: {}",
                                event.code, event.gpu_index, result.step_name, event.detail
                            ),
                            ok: false,
                        });
                    }
                }
            }
            if !failing.is_empty() {
                let nodes: Vec<String> = failing.iter().map(|n| n.to_string()).collect();
                let reason = format!(
                    "{} XID event(s) ({}) on {}: {}",
                    items.len(),
                    describe_codes(codes),
                    plural_nodes(nodes.len()),
                    describe_xids(&items)
                );
                return (Verdict::Failed, reason, items, failing);
            }
            let running = jobs_still_running(evidence);
            if running > 0 {
                return (
                    Verdict::Waiting,
                    format!(
                        "no XID ({}) so far; {running} job(s) still running",
                        describe_codes(codes)
                    ),
                    items,
                    failing,
                );
            }
            let n_jobs = all_jobs(evidence).count();
            (
                Verdict::Passed,
                format!(
                    "no XID ({}) on any of {n_jobs} job(s)",
                    describe_codes(codes)
                ),
                items,
                failing,
            )
        }
        RuleKind::InventoryMatchesRelease { components } => {
            let mut items = Vec::new();
            let mut failing = BTreeSet::new();
            let mut n_results = 0;
            for job in all_jobs(evidence) {
                let mut problems: Vec<String> = Vec::new();
                for result in &job.results {
                    n_results += 1;
                    for mismatch in
                        check_inventory(&evidence.release.components, components, &result.inventory)
                    {
                        let text = mismatch.to_string();
                        if !problems.contains(&text) {
                            problems.push(text);
                        }
                    }
                }
                if job.results.is_empty() {
                    continue;
                }
                let ok = problems.is_empty();
                if !ok {
                    failing.insert(job.node.clone());
                }
                items.push(EvidenceItem {
                    node: job.node.clone(),
                    step: None,
                    attempt: None,
                    gpu_index: None,
                    value: None,
                    limit: Some(describe_components(&evidence.release, components)),
                    detail: if ok {
                        "observed inventory matches the release".into()
                    } else {
                        problems.join("; ")
                    },
                    ok,
                });
            }
            if !failing.is_empty() {
                let first = items
                    .iter()
                    .find(|i| !i.ok)
                    .map(|i| format!("{}: {}", i.node, i.detail))
                    .unwrap_or_default();
                let reason = format!(
                    "{} did not run release {}: {first}",
                    plural_nodes(failing.len()),
                    evidence.release.id
                );
                return (Verdict::Failed, reason, items, failing);
            }
            let running = jobs_still_running(evidence);
            if running > 0 || n_results == 0 {
                return (
                    Verdict::Waiting,
                    format!("inventory matches so far; {running} job(s) still running"),
                    items,
                    failing,
                );
            }
            (
                Verdict::Passed,
                format!(
                    "every node ran {} ({})",
                    evidence.release.id,
                    describe_components(&evidence.release, components)
                ),
                items,
                failing,
            )
        }
    }
}

fn evaluate_steps_passed(
    plan: &str,
    steps: &[String],
    quorum: Quorum,
    evidence: &Evidence,
) -> RuleOutcome {
    let Some(run) = evidence
        .runs
        .iter()
        .filter(|r| r.plan_name == plan)
        .max_by_key(|r| r.created_at)
    else {
        let reason = format!(
            "no run of plan {plan} for release {} at milestone {} yet; start one with `tollgate run start --release {} --plan {plan} --milestone {}`",
            evidence.release.id, evidence.milestone, evidence.release.id, evidence.milestone
        );
        return (Verdict::Waiting, reason, Vec::new(), BTreeSet::new());
    };
    let mut step_indexes = Vec::new();
    for step in steps {
        match run.plan_steps.iter().position(|s| s == step) {
            Some(idx) => step_indexes.push((idx, step)),
            None => {
                let reason = format!(
                    "plan {plan} (version {}) has no step '{step}'; its steps are: {}",
                    short(&run.plan_version.0),
                    run.plan_steps.join(", ")
                );
                return (Verdict::Error, reason, Vec::new(), BTreeSet::new());
            }
        }
    }
    let mut items = Vec::new();
    let mut failing = BTreeSet::new();
    let (mut n_passed, mut n_pending) = (0, 0);
    let mut failures: Vec<String> = Vec::new();
    for job in &run.jobs {
        let mut node_failure: Option<String> = None;
        let mut node_pending = false;
        for (idx, step) in &step_indexes {
            match job.latest(*idx) {
                None if job.state.is_terminal() => {
                    node_failure
                        .get_or_insert_with(|| format!("{step}: no result, job {}", job.state));
                }
                None => node_pending = true,
                Some(result)
                    if result.outcome == Outcome::Passed && counts(result, &evidence.release) => {}
                Some(result) if result.outcome == Outcome::Passed => {
                    let mismatch =
                        check_inventory(&evidence.release.components, &[], &result.inventory);
                    let text: Vec<String> = mismatch.iter().map(ToString::to_string).collect();
                    node_failure.get_or_insert_with(|| {
                        format!(
                            "{step}: passed, but not on the release under test ({})",
                            text.join("; ")
                        )
                    });
                }
                Some(_) if !job.state.is_terminal() => node_pending = true,
                Some(result) => {
                    let why = if result.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", result.message)
                    };
                    node_failure.get_or_insert_with(|| format!("{step}: {}{why}", result.outcome));
                }
            }
        }
        let (ok, detail) = match (&node_failure, node_pending) {
            (Some(failure), _) => {
                failing.insert(job.node.clone());
                failures.push(format!("{} ({failure})", job.node));
                (false, failure.clone())
            }
            (None, true) => {
                n_pending += 1;
                (false, format!("still running (job {})", job.state))
            }
            (None, false) => {
                n_passed += 1;
                (true, "every listed step passed".to_owned())
            }
        };
        items.push(EvidenceItem {
            node: job.node.clone(),
            step: None,
            attempt: None,
            gpu_index: None,
            value: None,
            limit: None,
            detail,
            ok,
        });
    }
    let n_nodes = run.jobs.len();
    let required = quorum.required(n_nodes);
    let what = format!(
        "{n_passed} of {n_nodes} nodes passed [{}] of plan {plan}, {required} required",
        steps.join(", ")
    );
    if n_passed >= required {
        (Verdict::Passed, what, items, BTreeSet::new())
    } else if n_passed + n_pending >= required {
        (
            Verdict::Waiting,
            format!("{what}; {n_pending} still running"),
            items,
            failing,
        )
    } else if failures.is_empty() {
        (
            Verdict::Failed,
            format!("{what}; only {n_nodes} node(s) were selected"),
            items,
            failing,
        )
    } else {
        (
            Verdict::Failed,
            format!("{what}; failed: {}", failures.join(", ")),
            items,
            failing,
        )
    }
}

fn numeric_item(
    job: &JobEvidence,
    result: &StepResult,
    gpu_index: Option<u32>,
    value: f64,
    condition: Condition,
    detail: String,
) -> EvidenceItem {
    EvidenceItem {
        node: job.node.clone(),
        step: Some(result.step_name.clone()),
        attempt: Some(result.attempt),
        gpu_index,
        value: Some(value),
        limit: Some(condition.to_string()),
        detail,
        ok: condition.holds(value),
    }
}

/// Judges a numeric rule: aggregate the items, compare, name the nodes whose own values break
/// the condition. While jobs run, only a violation that more values cannot repair fails early
/// (a minimum already too low, a maximum already too high).
fn judge_numeric(
    what: &str,
    items: Vec<EvidenceItem>,
    aggregate: Aggregate,
    condition: Condition,
    evidence: &Evidence,
) -> RuleOutcome {
    let values: Vec<f64> = items.iter().filter_map(|i| i.value).collect();
    let running = jobs_still_running(evidence);
    if values.is_empty() {
        let reason = if running > 0 {
            format!("no {what} yet; {running} job(s) still running")
        } else {
            format!(
                "no result on the release under test reports {what}; the gate waits for a run that does"
            )
        };
        return (Verdict::Waiting, reason, items, BTreeSet::new());
    }
    let value = match aggregate {
        Aggregate::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
        Aggregate::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        Aggregate::Mean => values.iter().sum::<f64>() / values.len() as f64,
    };
    let holds = condition.holds(value);
    let failing: BTreeSet<NodeId> = items
        .iter()
        .filter(|i| !i.ok)
        .map(|i| i.node.clone())
        .collect();
    let offenders = describe_offenders(&items);
    let base = format!(
        "{aggregate} {what} is {value} over {} value(s), limit {condition}",
        values.len()
    );
    let settled_failure = matches!(
        (aggregate, condition.op),
        (Aggregate::Min, Comparison::Ge | Comparison::Gt)
            | (Aggregate::Max, Comparison::Le | Comparison::Lt)
    );
    match (holds, running) {
        (false, 0) => (
            Verdict::Failed,
            format!("{base}; {offenders}"),
            items,
            failing,
        ),
        (false, _) if settled_failure => (
            Verdict::Failed,
            format!("{base}; {offenders}"),
            items,
            failing,
        ),
        (_, n) if n > 0 => (
            Verdict::Waiting,
            format!("{base} so far; {n} job(s) still running"),
            items,
            BTreeSet::new(),
        ),
        _ => (Verdict::Passed, base, items, BTreeSet::new()),
    }
}

fn describe_offenders(items: &[EvidenceItem]) -> String {
    let mut by_node: BTreeMap<&NodeId, Vec<&EvidenceItem>> = BTreeMap::new();
    for item in items.iter().filter(|i| !i.ok) {
        by_node.entry(&item.node).or_default().push(item);
    }
    if by_node.is_empty() {
        return "no single node breaks the limit; the aggregate does".into();
    }
    let parts: Vec<String> = by_node
        .iter()
        .map(|(node, items)| {
            let worst = items
                .iter()
                .map(|i| i.detail.as_str())
                .take(2)
                .collect::<Vec<_>>()
                .join(", ");
            let more = if items.len() > 2 {
                format!(" and {} more", items.len() - 2)
            } else {
                String::new()
            };
            format!(
                "{node} ({}: {worst}{more})",
                items[0].step.as_deref().unwrap_or("?")
            )
        })
        .collect();
    format!("breaking the limit: {}", parts.join("; "))
}

fn describe_codes(codes: &[i64]) -> String {
    if codes.is_empty() {
        "any code".into()
    } else {
        let list: Vec<String> = codes.iter().map(i64::to_string).collect();
        format!("codes {}", list.join(", "))
    }
}

fn describe_xids(items: &[EvidenceItem]) -> String {
    let parts: Vec<String> = items
        .iter()
        .take(5)
        .map(|i| {
            format!(
                "{} GPU {} XID {}",
                i.node,
                i.gpu_index.unwrap_or(0),
                i.value.unwrap_or(0.0)
            )
        })
        .collect();
    parts.join(", ")
}

fn describe_components(release: &Release, only: &[String]) -> String {
    release
        .components
        .iter()
        .filter(|c| only.is_empty() || only.contains(&c.name))
        .map(|c| format!("{}={}", c.name, c.version))
        .collect::<Vec<_>>()
        .join(", ")
}

fn plural_nodes(n: usize) -> String {
    if n == 1 {
        "1 node".into()
    } else {
        format!("{n} nodes")
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

#[cfg(test)]
mod tests;
