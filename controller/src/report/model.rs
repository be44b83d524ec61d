//! The report's view model: every fact the four formats show, gathered, checked and ordered
//! once, so Markdown, JSON, HTML and JUnit cannot disagree. The JSON format is this model
//! serialized; `docs/report-format.md` documents each field, so renaming one is a schema change.
//! [`Builder`] builds it from a stream of nodes: one [`NodeView`] at a time, plus counters.
//!
//! Every collection is ordered here (nodes by name, attempts by step, lease epoch and attempt,
//! events by time), never by hash-map iteration, so the same input always renders the same
//! bytes.

use super::ReportHead;
use super::text;
use crate::store::{NodeEvidence, NodeJob};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use tollgate_domain::fleet::{GpuInfo, GpuSourceKind, Inventory, Node};
use tollgate_domain::gate::{Comparison, Condition, EvidenceItem, RuleKind, Stat};
use tollgate_domain::gate::{Decision, JobEvidence, RunEvidence, Verdict};
use tollgate_domain::plan::{Plan, Step, StepKind};
use tollgate_domain::release::Release;
use tollgate_domain::result::StepResult;
use tollgate_domain::telemetry::{Field, GpuTelemetry};
use tollgate_domain::{NodeId, RunId, Timestamp, spec};

/// The JSON schema name; bump the version on any incompatible change.
pub(crate) const SCHEMA: &str = "tollgate.report.v1";

/// The banner every format shows when any evidence comes from simulated GPUs.
pub(crate) const SIMULATED_BANNER: &str = "SIMULATED GPUs — the telemetry and inventory in this report come from Tollgate's simulated GPU source, not from hardware";

/// Passing evidence items a rule shows in Markdown and HTML; the JSON carries every item. A
/// telemetry rule over a thousand nodes has tens of thousands of passing items, which a reader
/// never reads and which would make the page too heavy to open; failing items are all shown.
pub(crate) const SHOWN_OK_EVIDENCE: usize = 200;

/// The telemetry fields the HTML report charts per step.
pub const CHARTED_FIELDS: [Field; 2] = [Field::GpuTempC, Field::PowerW];

/// Everything a report shows except its nodes. The parts known before the first node is read
/// (release, decision, rules, waivers) are filled at the start; the rest (summary, simulated
/// nodes, runs, events, warnings) once every node has been seen, since the summary comes first.
#[derive(Debug)]
pub(crate) struct Report {
    pub schema: &'static str,
    pub title: String,
    pub release: ReleaseView,
    pub milestone: String,
    pub simulated: SimulatedView,
    pub summary: SummaryView,
    pub decision: DecisionView,
    pub policy: PolicyView,
    pub rules: Vec<RuleView>,
    pub waivers: WaiversView,
    pub plans: Vec<PlanView>,
    pub runs: Vec<RunView>,
    pub events: Vec<EventRow>,
    pub warnings: Vec<String>,
    pub generated_at: String,
    pub controller_version: String,
    pub audit_head: Option<String>,
    pub scope: Option<ScopeView>,
}

/// What the node table shows of a node: kept for every node (a few hundred bytes each) while
/// the node's detail is written out and dropped.
#[derive(Debug)]
pub(crate) struct NodeRow {
    pub name: String,
    pub simulated: bool,
    pub gpu_source: &'static str,
    pub labels: BTreeMap<String, String>,
    pub driver_version: String,
    pub cuda_driver_version: String,
    pub n_gpus: usize,
    pub inventory_source: &'static str,
    /// Plan name and state of each job.
    pub jobs: Vec<(String, &'static str)>,
    pub failing_rules: Vec<String>,
}

impl NodeRow {
    pub(crate) fn of(node: &NodeView) -> Self {
        Self {
            name: node.name.clone(),
            simulated: node.simulated,
            gpu_source: node.gpu_source,
            labels: node.labels.clone(),
            driver_version: node.inventory.driver_version.clone(),
            cuda_driver_version: node.inventory.cuda_driver_version.clone(),
            n_gpus: node.inventory.gpus.len(),
            inventory_source: node.inventory.source,
            jobs: node
                .jobs
                .iter()
                .map(|job| (job.plan_name.clone(), job.state))
                .collect(),
            failing_rules: node.failing_rules.clone(),
        }
    }
}

/// The customer scope a report is restricted to.
#[derive(Debug, Serialize)]
pub(crate) struct ScopeView {
    pub label: String,
    pub value: String,
    pub note: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct ReleaseView {
    pub name: String,
    pub description: String,
    pub current_milestone: String,
    pub created_at: String,
    pub components: Vec<ComponentView>,
    pub promotions: Vec<PromotionView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ComponentView {
    pub name: String,
    pub version: String,
    pub artifact_uri: Option<String>,
    pub sha256: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct PromotionView {
    pub from_milestone: String,
    pub to_milestone: String,
    pub at: String,
    pub decision_digest: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct SimulatedView {
    pub any: bool,
    pub banner: Option<&'static str>,
    pub nodes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct SummaryView {
    pub verdict: &'static str,
    pub summary: String,
    pub rules: VerdictCounts,
    pub n_nodes: usize,
    pub n_simulated_nodes: usize,
    pub n_gpus: usize,
    pub n_runs: usize,
    pub n_jobs: usize,
    pub job_states: BTreeMap<&'static str, usize>,
    pub n_attempts: usize,
    pub attempt_outcomes: BTreeMap<&'static str, usize>,
    pub n_events: usize,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct VerdictCounts {
    pub passed: usize,
    pub failed: usize,
    pub waived: usize,
    pub waiting: usize,
    pub error: usize,
    pub not_applicable: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct DecisionView {
    pub verdict: &'static str,
    pub summary: String,
    pub digest: String,
    pub policy_version: String,
    pub evaluated_at: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct PolicyView {
    pub milestone: String,
    pub description: String,
    pub version: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct RuleView {
    pub rule_id: String,
    pub kind: String,
    pub verdict: &'static str,
    pub reason: String,
    pub definition: Option<String>,
    pub limit: Option<LimitView>,
    pub failing_nodes: Vec<String>,
    pub n_evidence_ok: usize,
    pub n_evidence_not_ok: usize,
    pub evidence: Vec<EvidenceView>,
}

/// The numeric limit of a measurement or telemetry rule.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LimitView {
    pub rule_id: String,
    pub source: &'static str,
    pub subject: String,
    pub unit: Option<&'static str>,
    pub step: Option<String>,
    pub aggregate: &'static str,
    pub op: &'static str,
    pub threshold: f64,
    pub condition: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct EvidenceView {
    pub ok: bool,
    pub node: String,
    pub step: Option<String>,
    pub attempt: Option<u32>,
    pub gpu_index: Option<u32>,
    pub value: Option<f64>,
    pub limit: Option<String>,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct WaiversView {
    pub reported: bool,
    pub note: &'static str,
    pub items: Vec<WaiverView>,
}

/// One waiver of a rule of the reported gate.
#[derive(Debug, Serialize)]
pub(crate) struct WaiverView {
    pub id: String,
    pub rule_id: String,
    pub reason: String,
    pub ticket: String,
    pub approver: String,
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
    pub in_force: bool,
    pub nodes: Vec<String>,
    pub skus: Vec<String>,
    pub steps: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct PlanView {
    pub name: String,
    pub version: String,
    pub description: String,
    pub selector: BTreeMap<String, String>,
    pub max_nodes: Option<u32>,
    pub runs: Vec<String>,
    pub steps: Vec<StepView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct StepView {
    pub index: usize,
    pub name: String,
    pub kind: &'static str,
    pub timeout: String,
    pub timeout_s: f64,
    pub retries: u32,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub components: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct RunView {
    pub run_id: String,
    pub plan_name: String,
    pub plan_version: String,
    pub plan_available: bool,
    pub plan_steps: Vec<String>,
    pub created_at: String,
    pub n_jobs: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct NodeView {
    pub name: String,
    pub simulated: bool,
    pub gpu_source: &'static str,
    pub labels: BTreeMap<String, String>,
    pub registered: bool,
    pub node_state: Option<&'static str>,
    pub health: Option<&'static str>,
    pub failing_rules: Vec<String>,
    pub inventory: InventoryView,
    pub jobs: Vec<JobView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct InventoryView {
    pub source: &'static str,
    pub observed_step: Option<String>,
    pub observed_attempt: Option<u32>,
    pub notes: Vec<String>,
    pub hostname: String,
    pub gpu_source: &'static str,
    pub driver_version: String,
    pub cuda_driver_version: String,
    pub nvml_version: String,
    pub components: BTreeMap<String, String>,
    pub gpus: Vec<GpuView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct GpuView {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub serial: Option<String>,
    pub board_part_number: Option<String>,
    pub pci_bus_id: String,
    pub vbios_version: String,
    pub inforom_version: Option<String>,
    pub memory_total_mib: u64,
    pub ecc_enabled: Option<bool>,
    pub power_limit_w: Option<f64>,
    pub max_pcie_gen: Option<u32>,
    pub max_pcie_width: Option<u32>,
}

#[derive(Debug, Serialize)]
pub(crate) struct JobView {
    pub job_id: String,
    pub run_id: String,
    pub plan_name: String,
    pub plan_version: String,
    pub state: &'static str,
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AttemptView {
    pub step_index: u32,
    pub step_name: String,
    pub attempt: u32,
    pub final_attempt: bool,
    pub outcome: &'static str,
    pub exit_code: Option<i32>,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: i64,
    pub lease_epoch: u64,
    pub message: String,
    pub measurements: Vec<MeasurementView>,
    pub telemetry: Vec<GpuTelemetryView>,
    pub events: Vec<EventView>,
    pub log_tail: String,
    /// The attempt's tests (JUnit testcases, dcgmi diag tests per GPU): every failing one
    /// first, then up to [`tollgate_domain::result::LISTED_PASSING`] others, so a suite of
    /// thousands of testcases keeps the report small.
    pub sub_results: Vec<SubResultView>,
    /// How many passing or skipped tests `sub_results` leaves out.
    pub sub_results_not_listed: usize,
    /// The downsampled series of the charted fields ([`CHARTED_FIELDS`]), by field then GPU,
    /// for the HTML report's charts; not part of the JSON (the summaries above are the
    /// evidence, a series only pictures them).
    #[serde(skip)]
    pub series: Vec<tollgate_domain::telemetry::TelemetrySeries>,
}

/// One test of a step attempt, as its result parser read it.
#[derive(Debug, Serialize)]
pub(crate) struct SubResultView {
    pub source: String,
    pub suite: String,
    pub name: String,
    pub gpu_index: Option<u32>,
    pub outcome: &'static str,
    pub failing: bool,
    pub message: String,
    pub level: Option<u8>,
}

impl SubResultView {
    /// The test name, with its GPU for a per-GPU test (`memory on GPU 3`).
    pub(crate) fn label(&self) -> String {
        match self.gpu_index {
            Some(gpu) => format!("{} on GPU {gpu}", self.name),
            None => self.name.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct MeasurementView {
    pub name: String,
    pub value: f64,
    pub unit: Option<String>,
    pub checks: Vec<CheckView>,
}

/// One value compared with one rule's limit.
#[derive(Debug, Serialize)]
pub(crate) struct CheckView {
    pub rule_id: String,
    pub aggregate: &'static str,
    pub condition: String,
    pub value: f64,
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct GpuTelemetryView {
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub samples_missed: u32,
    pub fields: Vec<FieldView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct FieldView {
    /// For ordering and lookup; serialized as `field`.
    #[serde(skip)]
    pub kind: Field,
    pub field: &'static str,
    pub unit: &'static str,
    pub min: f64,
    pub mean: f64,
    pub max: f64,
    pub p99: f64,
    pub last: f64,
    pub samples: u32,
    pub checks: Vec<CheckView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct EventView {
    /// For ordering only: RFC 3339 text with optional fractions does not sort by time.
    #[serde(skip)]
    pub at_time: Timestamp,
    pub at: String,
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub kind: &'static str,
    pub code: i64,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct EventRow {
    #[serde(skip)]
    pub at_time: Timestamp,
    pub at: String,
    pub node: String,
    pub job_id: String,
    pub step_name: String,
    pub attempt: u32,
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub kind: &'static str,
    pub code: i64,
    pub detail: String,
}

impl Report {
    /// The limits of telemetry rules on `field` that apply to `step_name`.
    pub(crate) fn telemetry_limits<'a>(
        &'a self,
        field: Field,
        step_name: &'a str,
    ) -> impl Iterator<Item = &'a LimitView> + 'a {
        self.rules.iter().filter_map(move |rule| {
            rule.limit.as_ref().filter(|limit| {
                limit.source == "telemetry"
                    && limit.subject == field.name()
                    && limit.step.as_deref().is_none_or(|s| s == step_name)
            })
        })
    }
}

/// A numeric rule's limit, kept with the typed values that evaluate it.
struct Limit {
    view: LimitView,
    subject: Subject,
    /// Which statistic of each GPU's summary the rule compares (telemetry rules).
    stat: Stat,
    condition: Condition,
}

enum Subject {
    Telemetry(Field),
    Measurement(String),
}

impl Limit {
    fn applies_to_step(&self, step_name: &str) -> bool {
        self.view.step.as_deref().is_none_or(|s| s == step_name)
    }

    fn check(&self, value: f64) -> CheckView {
        CheckView {
            rule_id: self.view.rule_id.clone(),
            aggregate: self.view.aggregate,
            condition: self.view.condition.clone(),
            value,
            ok: self.condition.holds(value),
        }
    }
}

/// A report being built from a stream of nodes: the views known from the start, the limits
/// that check each node's values, and counters over the nodes seen so far. Memory holds the
/// counters, one [`NodeRow`] per node and the GPU events, never the nodes' detail.
pub(crate) struct Builder {
    pub report: Report,
    limits: Vec<Limit>,
    /// Node name → ids of the rules it made fail, in policy order.
    failing_rules: BTreeMap<String, Vec<String>>,
    /// The runs of the evidence (their jobs empty) and how many jobs of each were seen.
    runs: Vec<(RunEvidence, usize)>,
    plans: Vec<Plan>,
    scoped: bool,
    pub rows: Vec<NodeRow>,
    n_simulated: usize,
    n_gpus: usize,
    n_jobs: usize,
    job_states: BTreeMap<&'static str, usize>,
    n_attempts: usize,
    attempt_outcomes: BTreeMap<&'static str, usize>,
}

/// For each node, the rules that failed on it.
fn failing_rules_by_node(decision: &Decision) -> BTreeMap<String, Vec<String>> {
    let mut failing_rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for rule in &decision.rules {
        for node in &rule.failing_nodes {
            failing_rules
                .entry(node.to_string())
                .or_default()
                .push(rule.rule_id.clone());
        }
    }
    failing_rules
}

/// The decision's rules counted by verdict.
fn verdict_counts(decision: &Decision) -> VerdictCounts {
    let mut counts = VerdictCounts::default();
    for rule in &decision.rules {
        match rule.verdict {
            Verdict::Passed => counts.passed += 1,
            Verdict::Failed => counts.failed += 1,
            Verdict::Waived => counts.waived += 1,
            Verdict::Waiting => counts.waiting += 1,
            Verdict::Error => counts.error += 1,
            Verdict::NotApplicable => counts.not_applicable += 1,
        }
    }
    counts
}

/// The release as a report shows it: its components and the promotions it went through.
fn release_view(release: &Release) -> ReleaseView {
    ReleaseView {
        name: release.id.to_string(),
        description: release.description.clone(),
        current_milestone: release.milestone.clone(),
        created_at: text::time(&release.created_at),
        components: release
            .components
            .iter()
            .map(|c| ComponentView {
                name: c.name.clone(),
                version: c.version.clone(),
                artifact_uri: c.artifact_uri.clone(),
                sha256: c.sha256.clone(),
            })
            .collect(),
        promotions: release
            .promotions
            .iter()
            .map(|p| PromotionView {
                from_milestone: p.from_milestone.clone(),
                to_milestone: p.to_milestone.clone(),
                at: text::time(&p.at),
                decision_digest: p.decision_digest.clone(),
            })
            .collect(),
    }
}

impl Builder {
    /// Starts a report of `head`.
    pub(crate) fn new(head: ReportHead) -> Self {
        let mut warnings = Vec::new();
        check_consistency(&head, &mut warnings);
        let limits = numeric_limits(&head);
        let rules = rule_views(&head, &limits, &mut warnings);
        let failing_rules = failing_rules_by_node(&head.decision);
        let rule_counts = verdict_counts(&head.decision);
        let report = Report {
            schema: SCHEMA,
            title: format!(
                "Customer acceptance report — {} at {}",
                head.release.id, head.milestone
            ),
            release: release_view(&head.release),
            milestone: head.milestone.clone(),
            simulated: SimulatedView {
                any: false,
                banner: None,
                nodes: Vec::new(),
            },
            summary: SummaryView {
                verdict: head.decision.verdict.as_str(),
                summary: head.decision.summary.clone(),
                rules: rule_counts,
                n_nodes: 0,
                n_simulated_nodes: 0,
                n_gpus: 0,
                n_runs: 0,
                n_jobs: 0,
                job_states: BTreeMap::new(),
                n_attempts: 0,
                attempt_outcomes: BTreeMap::new(),
                n_events: 0,
            },
            decision: DecisionView {
                verdict: head.decision.verdict.as_str(),
                summary: head.decision.summary.clone(),
                digest: head.decision.digest.clone(),
                policy_version: head.decision.policy_version.clone(),
                evaluated_at: text::time(&head.decision.evaluated_at),
            },
            policy: PolicyView {
                milestone: head.policy.milestone.clone(),
                description: head.policy.description.clone(),
                version: head.policy.version(),
            },
            rules,
            waivers: waivers_view(&head),
            plans: Vec::new(),
            runs: Vec::new(),
            events: Vec::new(),
            warnings,
            generated_at: text::time(&head.generated_at),
            controller_version: head.controller_version.clone(),
            audit_head: head.audit_head.clone(),
            scope: head.scope.as_ref().map(|scope| ScopeView {
                label: scope.label.clone(),
                value: scope.value.clone(),
                note: format!(
                    "This report covers only nodes labelled {}={}: it shows their evidence alone, and the gate was evaluated over that evidence alone.",
                    scope.label, scope.value
                ),
            }),
        };
        Self {
            report,
            limits,
            failing_rules,
            runs: Vec::new(),
            plans: head.plans,
            scoped: head.scope.is_some(),
            rows: Vec::new(),
            n_simulated: 0,
            n_gpus: 0,
            n_jobs: 0,
            job_states: BTreeMap::new(),
            n_attempts: 0,
            attempt_outcomes: BTreeMap::new(),
        }
    }

    /// The runs the evidence comes from (their `jobs` are not read).
    pub(crate) fn set_runs(&mut self, runs: Vec<RunEvidence>) {
        self.runs = runs.into_iter().map(|run| (run, 0)).collect();
    }

    /// The view of one node; counts it, keeps its row for the node table and its events.
    pub(crate) fn node(&mut self, evidence: &NodeEvidence) -> NodeView {
        let node = node_view(
            evidence,
            &self.runs,
            &self.limits,
            self.failing_rules.remove(evidence.node.as_str()),
            &mut self.report.warnings,
        );
        if node.simulated {
            self.n_simulated += 1;
            self.report.simulated.nodes.push(node.name.clone());
        }
        self.n_gpus += node.inventory.gpus.len();
        for job in &node.jobs {
            self.n_jobs += 1;
            *self.job_states.entry(job.state).or_insert(0) += 1;
            if let Some((_, n_jobs)) = self
                .runs
                .iter_mut()
                .find(|(run, _)| run.run_id.as_str() == job.run_id)
            {
                *n_jobs += 1;
            }
            for attempt in &job.attempts {
                self.n_attempts += 1;
                *self.attempt_outcomes.entry(attempt.outcome).or_insert(0) += 1;
                for event in &attempt.events {
                    self.report.events.push(EventRow {
                        at_time: event.at_time,
                        at: event.at.clone(),
                        node: node.name.clone(),
                        job_id: job.job_id.clone(),
                        step_name: attempt.step_name.clone(),
                        attempt: attempt.attempt,
                        gpu_index: event.gpu_index,
                        gpu_uuid: event.gpu_uuid.clone(),
                        kind: event.kind,
                        code: event.code,
                        detail: event.detail.clone(),
                    });
                }
            }
        }
        self.rows.push(NodeRow::of(&node));
        node
    }

    /// Fills in what needed every node: the summary, the simulated nodes, runs and plans.
    pub(crate) fn finish(&mut self) {
        if self.scoped {
            // A scoped report keeps only the runs that have jobs on the customer's nodes.
            self.runs.retain(|(_, n_jobs)| *n_jobs > 0);
        }
        let (plans, runs) = plan_and_run_views(&self.plans, &self.runs, &mut self.report.warnings);
        let report = &mut self.report;
        report.plans = plans;
        report.runs = runs;
        // Stable: equal times keep node, step and attempt order.
        report.events.sort_by_key(|row| row.at_time);
        let any_simulated = self.n_simulated > 0;
        report.simulated.any = any_simulated;
        report.simulated.banner = any_simulated.then_some(SIMULATED_BANNER);
        let summary = &mut report.summary;
        summary.n_nodes = self.rows.len();
        summary.n_simulated_nodes = self.n_simulated;
        summary.n_gpus = self.n_gpus;
        summary.n_runs = self.runs.len();
        summary.n_jobs = self.n_jobs;
        summary.job_states = std::mem::take(&mut self.job_states);
        summary.n_attempts = self.n_attempts;
        summary.attempt_outcomes = std::mem::take(&mut self.attempt_outcomes);
        summary.n_events = report.events.len();
    }
}

fn waivers_view(input: &ReportHead) -> WaiversView {
    let mut items: Vec<WaiverView> = input
        .waivers
        .iter()
        .map(|waiver| WaiverView {
            id: waiver.id.clone(),
            rule_id: waiver.rule_id.clone(),
            reason: waiver.reason.clone(),
            ticket: waiver.ticket.clone(),
            approver: waiver.approver.clone(),
            created_at: text::time(&waiver.created_at),
            expires_at: text::time(&waiver.expires_at),
            revoked_at: waiver.revoked_at.as_ref().map(text::time),
            in_force: waiver.in_force(input.decision.evaluated_at),
            nodes: waiver.nodes.iter().map(ToString::to_string).collect(),
            skus: waiver.skus.clone(),
            steps: waiver.steps.clone(),
        })
        .collect();
    items.sort_by(|a, b| {
        (&a.rule_id, &a.created_at, &a.id).cmp(&(&b.rule_id, &b.created_at, &b.id))
    });
    WaiversView {
        reported: true,
        note: "Every waiver of a rule of this gate: in force when the decision was evaluated, expired or revoked. A rule whose verdict is waived was exempted by a waiver in force.",
        items,
    }
}

/// Says where the parts of the input do not describe the same release, milestone and policy.
/// The report still renders: a customer is better served by a report that names the
/// inconsistency than by none.
fn check_consistency(input: &ReportHead, warnings: &mut Vec<String>) {
    let release = input.release.id.as_str();
    let decision = &input.decision;
    if decision.release != release {
        warnings.push(format!(
            "the decision is about release {}, not {release}",
            decision.release
        ));
    }
    if input.evidence_release.as_str() != release {
        warnings.push(format!(
            "the evidence is about release {}, not {release}",
            input.evidence_release
        ));
    }
    for (what, milestone) in [
        ("decision", &decision.milestone),
        ("gate policy", &input.policy.milestone),
        ("evidence", &input.evidence_milestone),
    ] {
        if milestone != &input.milestone {
            warnings.push(format!(
                "the {what} is for milestone {milestone}, not {}",
                input.milestone
            ));
        }
    }
    let policy_version = input.policy.version();
    if decision.policy_version != policy_version {
        warnings.push(format!(
            "the decision was evaluated under policy version {}, but the policy in this report has version {policy_version}",
            decision.policy_version
        ));
    }
}

fn comparison_symbol(op: Comparison) -> &'static str {
    match op {
        Comparison::Lt => "<",
        Comparison::Le => "<=",
        Comparison::Gt => ">",
        Comparison::Ge => ">=",
        Comparison::Eq => "==",
        Comparison::Ne => "!=",
    }
}

fn numeric_limits(input: &ReportHead) -> Vec<Limit> {
    input
        .policy
        .rules
        .iter()
        .filter_map(|rule| {
            let (source, subject, unit, step, aggregate, stat, condition) = match &rule.kind {
                RuleKind::Telemetry {
                    field,
                    step,
                    stat,
                    aggregate,
                    condition,
                } => (
                    "telemetry",
                    Subject::Telemetry(*field),
                    Some(field.unit()),
                    step,
                    *aggregate,
                    *stat,
                    *condition,
                ),
                RuleKind::Measurement {
                    name,
                    step,
                    aggregate,
                    condition,
                } => (
                    "measurement",
                    Subject::Measurement(name.clone()),
                    None,
                    step,
                    *aggregate,
                    Stat::default_for(*aggregate),
                    *condition,
                ),
                _ => return None,
            };
            let subject_name = match &subject {
                Subject::Telemetry(field) => field.name().to_owned(),
                Subject::Measurement(name) => name.clone(),
            };
            Some(Limit {
                view: LimitView {
                    rule_id: rule.id.clone(),
                    source,
                    subject: subject_name,
                    unit,
                    step: step.clone(),
                    aggregate: aggregate.as_str(),
                    op: comparison_symbol(condition.op),
                    threshold: condition.threshold,
                    condition: condition.to_string(),
                },
                subject,
                stat,
                condition,
            })
        })
        .collect()
}

fn rule_views(input: &ReportHead, limits: &[Limit], warnings: &mut Vec<String>) -> Vec<RuleView> {
    let policy_rules: BTreeMap<&str, &RuleKind> = input
        .policy
        .rules
        .iter()
        .map(|rule| (rule.id.as_str(), &rule.kind))
        .collect();
    let decided: BTreeSet<&str> = input
        .decision
        .rules
        .iter()
        .map(|rule| rule.rule_id.as_str())
        .collect();
    for rule in &input.policy.rules {
        if !decided.contains(rule.id.as_str()) {
            warnings.push(format!(
                "rule {} of the gate policy has no decision in this report",
                rule.id
            ));
        }
    }
    input
        .decision
        .rules
        .iter()
        .map(|rule| {
            let kind = policy_rules.get(rule.rule_id.as_str());
            if kind.is_none() {
                warnings.push(format!(
                    "rule {} was decided but is not in the gate policy of this report",
                    rule.rule_id
                ));
            }
            // Failing evidence first: it is what a reader looks for; the order within each
            // group stays the gate's.
            let mut evidence: Vec<&EvidenceItem> = rule.evidence.iter().collect();
            evidence.sort_by_key(|item| item.ok);
            let n_evidence_ok = evidence.iter().filter(|item| item.ok).count();
            RuleView {
                rule_id: rule.rule_id.clone(),
                kind: rule.kind.clone(),
                verdict: rule.verdict.as_str(),
                reason: rule.reason.clone(),
                definition: kind.map(|kind| kind.describe()),
                limit: limits
                    .iter()
                    .find(|limit| limit.view.rule_id == rule.rule_id)
                    .map(|limit| limit.view.clone()),
                failing_nodes: rule.failing_nodes.iter().map(NodeId::to_string).collect(),
                n_evidence_ok,
                n_evidence_not_ok: evidence.len() - n_evidence_ok,
                evidence: evidence
                    .into_iter()
                    .map(|item| EvidenceView {
                        ok: item.ok,
                        node: item.node.to_string(),
                        step: item.step.clone(),
                        attempt: item.attempt,
                        gpu_index: item.gpu_index,
                        value: item.value,
                        limit: item.limit.clone(),
                        detail: item.detail.clone(),
                    })
                    .collect(),
            }
        })
        .collect()
}

fn plan_and_run_views(
    input_plans: &[Plan],
    input_runs: &[(RunEvidence, usize)],
    warnings: &mut Vec<String>,
) -> (Vec<PlanView>, Vec<RunView>) {
    // Keyed by version, so a plan given twice appears once and the order is stable.
    let mut plans: BTreeMap<(String, String), (&Plan, Vec<String>)> = BTreeMap::new();
    let mut by_version: BTreeMap<String, (String, String)> = BTreeMap::new();
    for plan in input_plans {
        let version = plan.version().0;
        let key = (plan.name.clone(), version.clone());
        by_version.insert(version, key.clone());
        plans.entry(key).or_insert((plan, Vec::new()));
    }
    let mut runs: Vec<RunView> = Vec::with_capacity(input_runs.len());
    for (run, n_jobs) in input_runs {
        let key = by_version.get(run.plan_version.as_str());
        let plan_available = key.is_some();
        match key.and_then(|key| plans.get_mut(key)) {
            Some((_, run_ids)) => run_ids.push(run.run_id.to_string()),
            None => warnings.push(format!(
                "run {} used plan {} version {}, which is not in this report",
                run.run_id, run.plan_name, run.plan_version
            )),
        }
        runs.push(RunView {
            run_id: run.run_id.to_string(),
            plan_name: run.plan_name.clone(),
            plan_version: run.plan_version.to_string(),
            plan_available,
            plan_steps: run.plan_steps.clone(),
            created_at: text::time(&run.created_at),
            n_jobs: *n_jobs,
        });
    }
    runs.sort_by(|a, b| (&a.plan_name, &a.run_id).cmp(&(&b.plan_name, &b.run_id)));
    let plans = plans
        .into_iter()
        .map(|((_, version), (plan, mut run_ids))| {
            run_ids.sort();
            PlanView {
                name: plan.name.clone(),
                version,
                description: plan.description.clone(),
                selector: plan.selector.0.clone(),
                max_nodes: plan.max_nodes,
                runs: run_ids,
                steps: plan
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(index, step)| step_view(index, step))
                    .collect(),
            }
        })
        .collect();
    (plans, runs)
}

/// A plan step as a report shows it: what it runs (command, environment, directory) or, for
/// an inventory check, the components it compares.
fn step_view(index: usize, step: &Step) -> StepView {
    let (command, env, workdir, components) = match (&step.kind, step.kind.process()) {
        (StepKind::InventoryCheck { components }, _) => {
            (None, BTreeMap::new(), None, Some(components.clone()))
        }
        (_, Some(process)) => (
            Some(process.command),
            process.env.clone(),
            process.workdir.map(str::to_owned),
            None,
        ),
        (_, None) => (None, BTreeMap::new(), None, None),
    };
    StepView {
        index,
        name: step.name.clone(),
        kind: step.kind.name(),
        timeout: spec::format_duration(step.timeout),
        timeout_s: step.timeout.as_secs_f64(),
        retries: step.retries,
        command,
        env,
        workdir,
        components,
    }
}

fn node_view(
    evidence: &NodeEvidence,
    runs: &[(RunEvidence, usize)],
    limits: &[Limit],
    failing_rules: Option<Vec<String>>,
    warnings: &mut Vec<String>,
) -> NodeView {
    let id = &evidence.node;
    let run_of = |job: &NodeJob| {
        runs.iter()
            .map(|(run, _)| run)
            .find(|run| run.run_id == job.run_id)
    };
    let mut jobs: Vec<(Option<&RunEvidence>, &NodeJob)> =
        evidence.jobs.iter().map(|job| (run_of(job), job)).collect();
    jobs.sort_by(|(run_a, a), (run_b, b)| {
        (run_a.map(|run| &run.plan_name), &a.run_id, &a.job.job_id).cmp(&(
            run_b.map(|run| &run.plan_name),
            &b.run_id,
            &b.job.job_id,
        ))
    });
    let node = evidence.registered.as_ref();
    if jobs.is_empty() && node.is_some() {
        warnings.push(format!("node {id} has no job in the evidence"));
    }
    let job_evidence: Vec<&JobEvidence> = jobs.iter().map(|(_, job)| &job.job).collect();
    let inventory = inventory_view(id, &job_evidence, node);
    let simulated = inventory.gpu_source == GpuSourceKind::Simulated.as_str()
        || job_evidence.iter().any(|job| {
            job.gpu_source == GpuSourceKind::Simulated
                || job
                    .results
                    .iter()
                    .any(|r| r.inventory.gpu_source == GpuSourceKind::Simulated)
        });
    // The labels the gate saw; the registered ones when no job carries any.
    let labels = job_evidence
        .iter()
        .rev()
        .map(|job| &job.labels)
        .find(|labels| !labels.is_empty())
        .or(node.map(|node| &node.labels))
        .cloned()
        .unwrap_or_default();
    if inventory.source == "none" {
        warnings.push(format!(
            "node {id}: no inventory was observed or registered"
        ));
    }
    NodeView {
        name: id.to_string(),
        simulated,
        gpu_source: if simulated {
            GpuSourceKind::Simulated.as_str()
        } else {
            GpuSourceKind::Nvml.as_str()
        },
        labels,
        registered: node.is_some(),
        node_state: node.map(|node| node.state.as_str()),
        health: node.map(|node| node.health.as_str()),
        failing_rules: failing_rules.unwrap_or_default(),
        inventory,
        jobs: jobs
            .iter()
            .map(|(run, job)| job_view(*run, &job.run_id, &job.job, limits))
            .collect(),
    }
}

/// The inventory a node showed during its steps: the one its latest attempt ran on
/// (`StepResult::ran_on`: observed when the attempt ended, so a flash shows what it
/// installed), with a note for every attempt that ran on something different. Falls back to
/// the inventory the node registered with, and says so.
fn inventory_view(id: &NodeId, jobs: &[&JobEvidence], registered: Option<&Node>) -> InventoryView {
    let mut results: Vec<(&JobEvidence, &StepResult)> = jobs
        .iter()
        .flat_map(|job| job.results.iter().map(move |result| (*job, result)))
        .collect();
    results.sort_by(|(job_a, a), (job_b, b)| {
        (a.started_at, a.step_index, a.attempt, &job_a.job_id).cmp(&(
            b.started_at,
            b.step_index,
            b.attempt,
            &job_b.job_id,
        ))
    });
    if let Some((_, latest)) = results.last() {
        let shown = latest.ran_on();
        // Group differing attempts by what differed, so a driver swap mid-job is one note.
        let mut differences: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (_, result) in &results {
            if result.ran_on() != shown {
                differences
                    .entry(describe_difference(result.ran_on(), shown))
                    .or_default()
                    .push(format!("{} attempt {}", result.step_name, result.attempt));
            }
        }
        let notes = differences
            .into_iter()
            .map(|(difference, attempts)| {
                let n_more = attempts.len().saturating_sub(3);
                let mut listed = attempts.into_iter().take(3).collect::<Vec<_>>().join(", ");
                if n_more > 0 {
                    listed.push_str(&format!(" and {n_more} more"));
                }
                format!("{listed} observed a different inventory: {difference}")
            })
            .collect();
        return inventory_from(
            shown,
            "observed",
            Some((latest.step_name.clone(), latest.attempt)),
            notes,
        );
    }
    match registered {
        Some(node) => inventory_from(
            &node.inventory,
            "registered",
            None,
            vec![format!(
                "no step of node {id} reported an inventory; this is the inventory the node registered with, not one observed during qualification"
            )],
        ),
        None => InventoryView {
            source: "none",
            observed_step: None,
            observed_attempt: None,
            notes: vec![format!(
                "node {id} reported no inventory during its steps and is not registered"
            )],
            hostname: String::new(),
            gpu_source: GpuSourceKind::Nvml.as_str(),
            driver_version: String::new(),
            cuda_driver_version: String::new(),
            nvml_version: String::new(),
            components: BTreeMap::new(),
            gpus: Vec::new(),
        },
    }
}

fn describe_difference(other: &Inventory, shown: &Inventory) -> String {
    let mut parts = Vec::new();
    let mut compare = |what: &str, a: &str, b: &str| {
        if a != b {
            parts.push(format!("{what} {a} (shown: {b})"));
        }
    };
    compare("driver", &other.driver_version, &shown.driver_version);
    compare(
        "CUDA driver",
        &other.cuda_driver_version,
        &shown.cuda_driver_version,
    );
    compare(
        "GPU source",
        other.gpu_source.as_str(),
        shown.gpu_source.as_str(),
    );
    compare(
        "GPU count",
        &other.gpus.len().to_string(),
        &shown.gpus.len().to_string(),
    );
    for (a, b) in other.gpus.iter().zip(&shown.gpus) {
        let gpu = format!("GPU {}", a.index);
        compare(&format!("{gpu} VBIOS"), &a.vbios_version, &b.vbios_version);
        compare(&format!("{gpu} UUID"), &a.uuid, &b.uuid);
    }
    let names: BTreeSet<&String> = other
        .components
        .keys()
        .chain(shown.components.keys())
        .collect();
    for name in names {
        let version = |inventory: &Inventory| {
            inventory
                .components
                .get(name)
                .cloned()
                .unwrap_or_else(|| "(none)".to_owned())
        };
        compare(name, &version(other), &version(shown));
    }
    if parts.is_empty() {
        "other inventory details differ".to_owned()
    } else {
        parts.join(", ")
    }
}

fn inventory_from(
    inventory: &Inventory,
    source: &'static str,
    observed: Option<(String, u32)>,
    notes: Vec<String>,
) -> InventoryView {
    let (observed_step, observed_attempt) = observed.unzip();
    let mut gpus: Vec<GpuView> = inventory.gpus.iter().map(gpu_view).collect();
    gpus.sort_by_key(|gpu| gpu.index);
    InventoryView {
        source,
        observed_step,
        observed_attempt,
        notes,
        hostname: inventory.hostname.clone(),
        gpu_source: inventory.gpu_source.as_str(),
        driver_version: inventory.driver_version.clone(),
        cuda_driver_version: inventory.cuda_driver_version.clone(),
        nvml_version: inventory.nvml_version.clone(),
        components: inventory.components.clone(),
        gpus,
    }
}

fn gpu_view(gpu: &GpuInfo) -> GpuView {
    GpuView {
        index: gpu.index,
        name: gpu.name.clone(),
        uuid: gpu.uuid.clone(),
        serial: gpu.serial.clone(),
        board_part_number: gpu.board_part_number.clone(),
        pci_bus_id: gpu.pci_bus_id.clone(),
        vbios_version: gpu.vbios_version.clone(),
        inforom_version: gpu.inforom_version.clone(),
        memory_total_mib: gpu.memory_total_mib,
        ecc_enabled: gpu.ecc_enabled,
        power_limit_w: gpu.power_limit_w,
        max_pcie_gen: gpu.max_pcie_gen,
        max_pcie_width: gpu.max_pcie_width,
    }
}

fn job_view(
    run: Option<&RunEvidence>,
    run_id: &RunId,
    job: &JobEvidence,
    limits: &[Limit],
) -> JobView {
    // The final attempt of each step is the one the gate judges.
    let finals: BTreeSet<usize> = tollgate_domain::result::final_attempts(&job.results)
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    let mut results: Vec<(usize, &StepResult)> = job.results.iter().enumerate().collect();
    results.sort_by_key(|(_, r)| (r.step_index, r.order_key(), r.started_at));
    JobView {
        job_id: job.job_id.to_string(),
        run_id: run_id.to_string(),
        plan_name: run.map(|run| run.plan_name.clone()).unwrap_or_default(),
        plan_version: run
            .map(|run| run.plan_version.to_string())
            .unwrap_or_default(),
        state: job.state.as_str(),
        attempts: results
            .into_iter()
            .map(|(i, result)| attempt_view(result, finals.contains(&i), limits))
            .collect(),
    }
}

fn attempt_view(result: &StepResult, final_attempt: bool, limits: &[Limit]) -> AttemptView {
    let step_limits: Vec<&Limit> = limits
        .iter()
        .filter(|limit| limit.applies_to_step(&result.step_name))
        .collect();
    let measurements = result
        .measurements
        .iter()
        .map(|m| MeasurementView {
            name: m.name.clone(),
            value: m.value,
            unit: m.unit.clone(),
            checks: step_limits
                .iter()
                .filter(
                    |limit| matches!(&limit.subject, Subject::Measurement(name) if name == &m.name),
                )
                .map(|limit| limit.check(m.value))
                .collect(),
        })
        .collect();
    let mut telemetry: Vec<GpuTelemetryView> = result
        .telemetry
        .iter()
        .map(|gpu| gpu_telemetry_view(gpu, &step_limits))
        .collect();
    telemetry.sort_by_key(|gpu| gpu.gpu_index);
    let mut events: Vec<EventView> = result
        .events
        .iter()
        .map(|event| EventView {
            at_time: event.at,
            at: text::time(&event.at),
            gpu_index: event.gpu_index,
            gpu_uuid: event.gpu_uuid.clone(),
            kind: event.kind.as_str(),
            code: event.code,
            detail: event.detail.clone(),
        })
        .collect();
    events.sort_by_key(|event| (event.at_time, event.gpu_index, event.code));
    let (listed, sub_results_not_listed) = tollgate_domain::result::listed(
        &result.sub_results,
        tollgate_domain::result::LISTED_PASSING,
    );
    let sub_results = listed
        .into_iter()
        .map(|sub| SubResultView {
            source: sub.source.clone(),
            suite: sub.suite.clone(),
            name: sub.name.clone(),
            gpu_index: sub.gpu_index,
            outcome: sub.outcome.as_str(),
            failing: sub.is_failing(),
            message: sub.message.clone(),
            level: sub.level,
        })
        .collect();
    AttemptView {
        step_index: result.step_index,
        step_name: result.step_name.clone(),
        attempt: result.attempt,
        final_attempt,
        outcome: result.outcome.as_str(),
        exit_code: result.exit_code,
        started_at: text::time(&result.started_at),
        finished_at: text::time(&result.finished_at),
        duration_ms: (result.finished_at - result.started_at).num_milliseconds(),
        lease_epoch: result.lease_epoch,
        message: result.message.clone(),
        measurements,
        telemetry,
        events,
        log_tail: result.log_tail.clone(),
        sub_results,
        sub_results_not_listed,
        series: charted_series(&result.series),
    }
}

/// The series of the charted fields with at least one finite point, by field then GPU.
fn charted_series(
    series: &[tollgate_domain::telemetry::TelemetrySeries],
) -> Vec<tollgate_domain::telemetry::TelemetrySeries> {
    let mut charted: Vec<_> = series
        .iter()
        .filter(|s| CHARTED_FIELDS.contains(&s.field))
        .filter(|s| s.points.iter().any(|p| p.mean.is_finite()))
        .cloned()
        .collect();
    charted.sort_by_key(|s| (s.field, s.gpu_index));
    charted
}

fn gpu_telemetry_view(gpu: &GpuTelemetry, step_limits: &[&Limit]) -> GpuTelemetryView {
    // `Field`'s order is its display order.
    let mut summaries: Vec<_> = gpu.fields.iter().collect();
    summaries.sort_by_key(|summary| summary.field);
    let fields: Vec<FieldView> = summaries
        .into_iter()
        .map(|summary| FieldView {
            kind: summary.field,
            field: summary.field.name(),
            unit: summary.field.unit(),
            min: summary.min,
            mean: summary.mean,
            max: summary.max,
            p99: summary.p99,
            last: summary.last,
            samples: summary.samples,
            checks: step_limits
                .iter()
                .filter(
                    |limit| matches!(limit.subject, Subject::Telemetry(f) if f == summary.field),
                )
                .map(|limit| {
                    // The gate compares the statistic its aggregate names, per GPU.
                    let value = match limit.stat {
                        Stat::Min => summary.min,
                        Stat::Max => summary.max,
                        Stat::Mean => summary.mean,
                        Stat::P99 => summary.p99,
                        Stat::Last => summary.last,
                    };
                    limit.check(value)
                })
                .collect(),
        })
        .collect();
    GpuTelemetryView {
        gpu_index: gpu.gpu_index,
        gpu_uuid: gpu.gpu_uuid.clone(),
        samples_missed: gpu.samples_missed,
        fields,
    }
}
