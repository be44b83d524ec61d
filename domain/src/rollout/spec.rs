//! Rollout files: the YAML a release manager writes, validated into a [`RolloutSpec`] with
//! every problem named by file, line and field (docs/rollout-format.md).

use crate::NodeId;
use crate::fleet::Selector;
use crate::gate::{GatePolicy, RawRule, RuleDefaults, RuleKind, parse_rules};
use crate::limits;
use crate::plan::{check_labels, label_limits};
use crate::release::name_problem;
use crate::spec::{Problems, RawInt, SpecErrors, parse_duration, parse_yaml};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// The longest soak or pause between waves.
pub const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The milestone name of the gate a rollout's health rules make ([`RolloutSpec::health_gate`]):
/// decisions about a wave's health say it, never a milestone of a track.
pub const HEALTH_MILESTONE: &str = "rollout-health";

/// How a release is rolled onto a production fleet, as validated from a rollout file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpec {
    /// Name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// The fleet: the nodes carrying all these labels (never empty).
    pub selector: Selector,
    /// The waves, in order: canaries (by name or label) first, the last one `percent: 100`.
    pub waves: Vec<WaveSpec>,
    /// What each node goes through.
    pub procedure: Procedure,
    /// The plan that takes a node back to the previous release, if there is one.
    pub rollback: Option<Rollback>,
    /// Gate rules over a wave's evidence; all must pass before the next wave starts.
    pub health: Vec<crate::gate::Rule>,
    /// How long a wave's nodes are watched after the last of them finished, before the
    /// wave's health is judged.
    #[serde(with = "crate::plan::duration_text")]
    pub soak: Duration,
    /// Whether a wave is compared with the fleet's nodes not updated yet (its cohort) rather
    /// than with the last release promoted past the milestone.
    pub baseline_by_cohort: bool,
    /// How many nodes may be in procedure at once, where, and when.
    pub limits: RolloutLimits,
}

/// Which nodes one wave takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaveSpec {
    /// These nodes, by name (a canary wave).
    Nodes(Vec<NodeId>),
    /// The nodes of the fleet carrying these labels, not in an earlier wave (a canary wave).
    Selector(Selector),
    /// This many more nodes.
    Count(u32),
    /// More nodes, until this percentage of the fleet (rounded up) is in this wave or an
    /// earlier one: percentages are cumulative.
    Percent(f64),
}

impl WaveSpec {
    /// Whether the wave names its nodes (by name or label): canary waves come first.
    pub fn is_canary(&self) -> bool {
        matches!(self, Self::Nodes(_) | Self::Selector(_))
    }
}

impl fmt::Display for WaveSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nodes(nodes) => {
                let names: Vec<&str> = nodes.iter().map(NodeId::as_str).collect();
                write!(f, "nodes {}", names.join(", "))
            }
            Self::Selector(selector) => write!(f, "selector {selector}"),
            Self::Count(n) => write!(f, "{n} node(s)"),
            Self::Percent(p) => write!(f, "{p}% of the fleet"),
        }
    }
}

/// The per-node procedure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Procedure {
    /// The plan every node runs (registered with the controller).
    pub plan: String,
    /// What becomes of a node mid-procedure when the controller restarts.
    pub on_interrupted: OnInterrupted,
}

/// What becomes of a node that was in procedure when the controller restarted.
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
pub enum OnInterrupted {
    /// The node's procedure counts as failed (the default: a half-flashed node is not
    /// assumed good).
    #[default]
    Fail,
    /// The node's procedure is taken up again where its job stands.
    Resume,
}

impl OnInterrupted {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How a node goes back to the previous release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    /// The plan run on each node that went through the procedure.
    pub plan: String,
}

/// The blast radius of a rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutLimits {
    /// Per label key (`rack`, `pdu`), at most this many nodes sharing one value of it in
    /// procedure at once; nodes without the label are not limited by it.
    pub max_concurrent: BTreeMap<String, u32>,
    /// Whether a node starts only inside a maintenance window covering it.
    pub maintenance_windows: bool,
    /// How long to wait after a wave passed before the next one starts.
    #[serde(with = "crate::plan::duration_text")]
    pub pause_between_waves: Duration,
}

impl RolloutSpec {
    /// The rollout's version: the hex sha256 of its canonical form, like a plan's.
    pub fn version(&self) -> String {
        crate::digest_json(self)
    }

    /// The gate the controller evaluates over one wave's evidence: the health rules, each
    /// `steps-passed` rule that lists no steps given every step of the procedure's plan
    /// (`plan_steps`, in order). With `baseline-by-cohort`, the `baseline` and
    /// `no-regression` rules are left out: they compare the wave with its cohort
    /// ([`super::judge_cohort`]), not the procedure runs with another release's.
    pub fn health_gate(&self, plan_steps: &[String]) -> GatePolicy {
        let rules = self
            .health
            .iter()
            .filter(|rule| !(self.baseline_by_cohort && super::compares_with_cohort(rule)))
            .cloned()
            .map(|mut rule| {
                if let RuleKind::StepsPassed { steps, .. } = &mut rule.kind
                    && steps.is_empty()
                {
                    *steps = plan_steps.to_vec();
                }
                rule
            })
            .collect();
        GatePolicy {
            milestone: HEALTH_MILESTONE.to_owned(),
            description: format!("health of each wave of rollout {}", self.name),
            rules,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRollout {
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    selector: Option<Spanned<BTreeMap<String, String>>>,
    waves: Spanned<Vec<Spanned<RawWave>>>,
    procedure: Spanned<RawProcedure>,
    #[serde(default)]
    rollback: Option<Spanned<RawRollback>>,
    health: Spanned<Vec<RawRule>>,
    #[serde(default)]
    soak: Option<Spanned<String>>,
    #[serde(default)]
    baseline_by_cohort: Option<bool>,
    #[serde(default)]
    limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawWave {
    #[serde(default)]
    nodes: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    selector: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    count: Option<Spanned<RawInt>>,
    #[serde(default)]
    percent: Option<Spanned<RawNumber>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawProcedure {
    plan: Spanned<String>,
    #[serde(default)]
    on_interrupted: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRollback {
    plan: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimits {
    #[serde(default)]
    max_concurrent: Option<Spanned<BTreeMap<String, Spanned<RawInt>>>>,
    #[serde(default)]
    maintenance_windows: Option<bool>,
    #[serde(default)]
    pause_between_waves: Option<Spanned<String>>,
}

/// A number as written in YAML, so that a percentage that is not one is reported with the
/// field's name and line rather than the YAML library's type error.
#[derive(Clone, Debug, PartialEq)]
enum RawNumber {
    /// A number.
    Number(f64),
    /// Anything else, quoted for the message.
    Other(String),
}

impl<'de> Deserialize<'de> for RawNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E>(self, value: i64) -> Result<RawNumber, E> {
                Ok(RawNumber::Number(value as f64))
            }
            fn visit_u64<E>(self, value: u64) -> Result<RawNumber, E> {
                Ok(RawNumber::Number(value as f64))
            }
            fn visit_f64<E>(self, value: f64) -> Result<RawNumber, E> {
                Ok(RawNumber::Number(value))
            }
            fn visit_bool<E>(self, value: bool) -> Result<RawNumber, E> {
                Ok(RawNumber::Other(value.to_string()))
            }
            fn visit_str<E>(self, value: &str) -> Result<RawNumber, E> {
                Ok(RawNumber::Other(limits::quote(value)))
            }
            fn visit_unit<E>(self) -> Result<RawNumber, E> {
                Ok(RawNumber::Other("null".into()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Parses and validates a rollout file. `file` names the file in error messages; every
/// problem found is returned, each with its line and field.
pub fn parse_rollout(file: &str, source: &str) -> Result<RolloutSpec, SpecErrors> {
    let raw: RawRollout = parse_yaml(file, source)?;
    let mut problems = Problems::new(file);
    if let Some(message) = name_problem("rollout", &raw.name.value) {
        problems.add(raw.name.referenced, "name", message);
    }
    if let Some(description) = &raw.description {
        problems.text(
            raw.name.referenced,
            "description",
            &limits::DESCRIPTION,
            description,
        );
    }
    let selector = match &raw.selector {
        Some(selector) if !selector.value.is_empty() => {
            check_labels(
                &mut problems,
                selector.referenced,
                "selector",
                &selector.value,
            );
            Selector(selector.value.clone())
        }
        Some(selector) => {
            problems.add(
                selector.referenced,
                "selector",
                "is empty; name the fleet's labels, for example {env: prod, sku: hgx-h100} \
                 (an empty selector would take every node, lab nodes included)",
            );
            Selector::default()
        }
        None => {
            problems.add(
                raw.name.referenced,
                "selector",
                "is required: the labels of the fleet to roll out to, for example \
                 {env: prod, sku: hgx-h100}",
            );
            Selector::default()
        }
    };
    let waves = waves(&mut problems, &raw.waves);
    let procedure = procedure(&mut problems, &raw.procedure.value);
    let rollback = raw.rollback.as_ref().map(|rollback| {
        let plan = &rollback.value.plan;
        if let Some(message) = name_problem("plan", &plan.value) {
            problems.add(plan.referenced, "rollback.plan", message);
        }
        Rollback {
            plan: plan.value.clone(),
        }
    });
    let baseline_by_cohort = raw.baseline_by_cohort.unwrap_or(false);
    let health = health(
        &mut problems,
        raw.health,
        &procedure.plan,
        baseline_by_cohort,
    );
    let soak = raw
        .soak
        .as_ref()
        .map_or(Duration::ZERO, |soak| wait(&mut problems, soak, "soak"));
    let limits = raw
        .limits
        .as_ref()
        .map(|raw| rollout_limits(&mut problems, raw))
        .unwrap_or_default();
    problems.finish(RolloutSpec {
        name: raw.name.value,
        description: raw.description.unwrap_or_default(),
        selector,
        waves,
        procedure,
        rollback,
        health,
        soak,
        baseline_by_cohort,
        limits,
    })
}

/// `waves`: at least one; canaries first; percentages rising to a last `percent: 100`; no
/// node named twice.
fn waves(problems: &mut Problems, raw: &Spanned<Vec<Spanned<RawWave>>>) -> Vec<WaveSpec> {
    if raw.value.is_empty() {
        problems.add(
            raw.referenced,
            "waves",
            "a rollout needs at least one wave; the last one is percent: 100",
        );
        return Vec::new();
    }
    if !problems.count(raw.referenced, "waves", &limits::WAVES, raw.value.len()) {
        return Vec::new();
    }
    let n_named: usize = raw
        .value
        .iter()
        .filter_map(|wave| wave.value.nodes.as_ref())
        .map(|nodes| nodes.value.len())
        .sum();
    if !problems.count(raw.referenced, "waves", &limits::CANARIES, n_named) {
        return Vec::new();
    }
    let mut waves = Vec::new();
    let mut named: BTreeSet<&str> = BTreeSet::new();
    let mut last_percent: Option<f64> = None;
    let mut first_counted: Option<usize> = None;
    for (idx, wave) in raw.value.iter().enumerate() {
        let at = |field: &str| format!("waves[{idx}].{field}");
        let RawWave {
            nodes,
            selector,
            count,
            percent,
        } = &wave.value;
        let given = [
            nodes.as_ref().map(|n| n.referenced),
            selector.as_ref().map(|s| s.referenced),
            count.as_ref().map(|c| c.referenced),
            percent.as_ref().map(|p| p.referenced),
        ];
        let mut locations = given.iter().flatten();
        match (locations.next(), locations.next()) {
            (None, _) => {
                problems.add(
                    wave.referenced,
                    format!("waves[{idx}]"),
                    "a wave needs one of: nodes, selector, count, percent",
                );
                continue;
            }
            (Some(_), Some(second)) => {
                problems.add(
                    *second,
                    format!("waves[{idx}]"),
                    "a wave takes exactly one of nodes, selector, count and percent; split it \
                     into one wave each",
                );
                continue;
            }
            (Some(_), None) => {}
        }
        let spec = if let Some(nodes) = nodes {
            if nodes.value.is_empty() {
                problems.add(nodes.referenced, at("nodes"), "list at least one node");
            }
            for (node_idx, node) in nodes.value.iter().enumerate() {
                let field = format!("waves[{idx}].nodes[{node_idx}]");
                if let Some(message) = name_problem("node", &node.value) {
                    problems.add(node.referenced, field, message);
                } else if !named.insert(node.value.as_str()) {
                    problems.add(
                        node.referenced,
                        field,
                        format!(
                            "node {} is named twice; a node is in exactly one wave",
                            limits::quote(&node.value)
                        ),
                    );
                }
            }
            WaveSpec::Nodes(
                nodes
                    .value
                    .iter()
                    .map(|n| NodeId::from(n.value.as_str()))
                    .collect(),
            )
        } else if let Some(selector) = selector {
            if selector.value.is_empty() {
                problems.add(
                    selector.referenced,
                    at("selector"),
                    "is empty; give the canaries' labels, for example {rack: r1}",
                );
            }
            check_labels(
                problems,
                selector.referenced,
                &at("selector"),
                &selector.value,
            );
            WaveSpec::Selector(Selector(selector.value.clone()))
        } else if let Some(count) = count {
            first_counted.get_or_insert(idx);
            match count.value.to_u32(u32::MAX) {
                Ok(0) => problems.add(count.referenced, at("count"), "must be at least 1"),
                Ok(_) => {}
                Err(message) => problems.add(count.referenced, at("count"), message),
            }
            WaveSpec::Count(count.value.to_u32(u32::MAX).unwrap_or(0))
        } else if let Some(percent) = percent {
            first_counted.get_or_insert(idx);
            let value = wave_percent(problems, percent, &at("percent"), last_percent);
            if let Some(value) = value {
                last_percent = Some(value);
            }
            WaveSpec::Percent(value.unwrap_or(0.0))
        } else {
            continue;
        };
        if spec.is_canary()
            && let Some(first) = first_counted
        {
            let field = if nodes.is_some() { "nodes" } else { "selector" };
            problems.add(
                wave.referenced,
                at(field),
                format!(
                    "a canary wave (nodes, selector) comes before every count and percent \
                     wave; move it before waves[{first}]"
                ),
            );
        }
        waves.push(spec);
    }
    if let Some(last) = raw.value.last()
        && !matches!(&last.value.percent, Some(p) if p.value == RawNumber::Number(100.0))
    {
        problems.add(
            last.referenced,
            format!("waves[{}]", raw.value.len() - 1),
            "the last wave must be percent: 100, so that the rollout reaches every node of \
             the fleet",
        );
    }
    waves
}

/// One wave's `percent`: in (0, 100] and above the previous wave's.
fn wave_percent(
    problems: &mut Problems,
    percent: &Spanned<RawNumber>,
    field: &str,
    previous: Option<f64>,
) -> Option<f64> {
    let value = match &percent.value {
        RawNumber::Number(value) => *value,
        RawNumber::Other(text) => {
            problems.add(
                percent.referenced,
                field,
                format!("{text} is not a percentage"),
            );
            return None;
        }
    };
    if !(value.is_finite() && value > 0.0 && value <= 100.0) {
        problems.add(
            percent.referenced,
            field,
            format!("{value} is not a percentage in (0, 100]"),
        );
        return None;
    }
    if let Some(previous) = previous
        && value <= previous
    {
        problems.add(
            percent.referenced,
            field,
            format!(
                "{value} is not above the previous wave's {previous}; percentages are \
                 cumulative shares of the fleet"
            ),
        );
        return None;
    }
    Some(value)
}

/// `procedure`: a plan name and what becomes of an interrupted node.
fn procedure(problems: &mut Problems, raw: &RawProcedure) -> Procedure {
    if let Some(message) = name_problem("plan", &raw.plan.value) {
        problems.add(raw.plan.referenced, "procedure.plan", message);
    }
    let on_interrupted = raw
        .on_interrupted
        .as_ref()
        .map(|text| {
            text.value.parse().unwrap_or_else(|message| {
                problems.add(text.referenced, "procedure.on-interrupted", message);
                OnInterrupted::default()
            })
        })
        .unwrap_or_default();
    Procedure {
        plan: raw.plan.value.clone(),
        on_interrupted,
    }
}

/// `health`: at least one gate rule; `steps-passed` judges the procedure's plan.
fn health(
    problems: &mut Problems,
    raw: Spanned<Vec<RawRule>>,
    plan: &str,
    cohort: bool,
) -> Vec<crate::gate::Rule> {
    if raw.value.is_empty() {
        problems.add(
            raw.referenced,
            "health",
            "a rollout needs at least one health rule; without one every wave would pass",
        );
        return Vec::new();
    }
    if !problems.count(raw.referenced, "health", &limits::RULES, raw.value.len()) {
        return Vec::new();
    }
    let defaults = RuleDefaults {
        list: "health",
        plan: Some(plan),
        cohort,
    };
    parse_rules(problems, raw.referenced, raw.value, &defaults)
}

/// `soak` or `limits.pause-between-waves`: a duration of at most [`MAX_WAIT`] (0s for none).
fn wait(problems: &mut Problems, text: &Spanned<String>, field: &str) -> Duration {
    match parse_duration(&text.value) {
        Ok(duration) if duration > MAX_WAIT => {
            problems.add(
                text.referenced,
                field,
                format!(
                    "{} is longer than the limit of 7 days",
                    limits::quote(&text.value)
                ),
            );
            Duration::ZERO
        }
        Ok(duration) => duration,
        Err(message) => {
            problems.add(text.referenced, field, message);
            Duration::ZERO
        }
    }
}

/// `limits`: per-label concurrency, maintenance windows, the pause between waves.
fn rollout_limits(problems: &mut Problems, raw: &RawLimits) -> RolloutLimits {
    RolloutLimits {
        max_concurrent: raw
            .max_concurrent
            .as_ref()
            .map(|raw| {
                label_limits(
                    problems,
                    raw,
                    "limits.max-concurrent",
                    "the most nodes in procedure at once",
                )
            })
            .unwrap_or_default(),
        maintenance_windows: raw.maintenance_windows.unwrap_or(false),
        pause_between_waves: raw
            .pause_between_waves
            .as_ref()
            .map_or(Duration::ZERO, |text| {
                wait(problems, text, "limits.pause-between-waves")
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/rollout-prod.yaml");

    const GOOD: &str = "name: r\nselector: {env: prod}\nwaves:\n  - percent: 100\nprocedure: {plan: flash}\nhealth:\n  - no-events: {}\n";

    /// The errors of `source`, one line each.
    fn errors(source: &str) -> String {
        parse_rollout("r.yaml", source)
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn the_example_parses() {
        let spec = parse_rollout("rollout-prod.yaml", EXAMPLE).expect("valid");
        assert_eq!(spec.name, "prod-h100");
        assert_eq!(spec.selector.to_string(), "env=prod,sku=hgx-h100");
        assert_eq!(
            spec.waves,
            [
                WaveSpec::Nodes(vec!["gpu-a01".into(), "gpu-a02".into()]),
                WaveSpec::Percent(10.0),
                WaveSpec::Percent(50.0),
                WaveSpec::Percent(100.0),
            ]
        );
        assert_eq!(
            spec.procedure,
            Procedure {
                plan: "flash-and-soak".into(),
                on_interrupted: OnInterrupted::Fail
            }
        );
        assert_eq!(
            spec.rollback.as_ref().map(|r| r.plan.as_str()),
            Some("flash-previous")
        );
        assert_eq!(spec.soak, Duration::from_secs(1800));
        assert!(spec.baseline_by_cohort);
        assert_eq!(
            spec.limits,
            RolloutLimits {
                max_concurrent: [("pdu".to_owned(), 2), ("rack".to_owned(), 1)].into(),
                maintenance_windows: true,
                pause_between_waves: Duration::from_secs(600),
            }
        );
        let ids: Vec<&str> = spec.health.iter().map(|rule| rule.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "steps-passed:flash-and-soak",
                "no-events",
                "telemetry:gpu_temp_c",
                "temp-vs-cohort"
            ]
        );
    }

    #[test]
    fn defaults_and_the_version() {
        let spec = parse_rollout("r.yaml", GOOD).expect("valid");
        assert_eq!(spec.procedure.on_interrupted, OnInterrupted::Fail);
        assert_eq!(spec.rollback, None);
        assert_eq!(spec.soak, Duration::ZERO);
        assert!(!spec.baseline_by_cohort);
        assert_eq!(spec.limits, RolloutLimits::default());
        let reformatted = GOOD.replace("{env: prod}", "\n  env: prod  # the fleet");
        let same = parse_rollout("b.yaml", &reformatted).expect("valid");
        assert_eq!(spec.version(), same.version());
        let resumed = parse_rollout(
            "c.yaml",
            &GOOD.replace("{plan: flash}", "{plan: flash, on-interrupted: resume}"),
        )
        .expect("valid");
        assert_eq!(resumed.procedure.on_interrupted, OnInterrupted::Resume);
        assert_ne!(spec.version(), resumed.version());
    }

    #[test]
    fn health_rules_judge_the_procedure_and_fill_in_its_steps() {
        let spec = parse_rollout("rollout-prod.yaml", EXAMPLE).expect("valid");
        let steps = ["flash".to_owned(), "soak".to_owned()];
        let gate = spec.health_gate(&steps);
        assert_eq!(gate.milestone, HEALTH_MILESTONE);
        match &gate.rules[0].kind {
            RuleKind::StepsPassed {
                plan,
                steps: listed,
                tolerance,
                ..
            } => {
                assert_eq!(plan, "flash-and-soak");
                assert_eq!(listed, &steps);
                assert_eq!(tolerance.max_failed, 0);
            }
            other => panic!("not steps-passed: {other:?}"),
        }
        let text = errors(&GOOD.replace(
            "  - no-events: {}",
            "  - steps-passed: {plan: other, steps: [a]}\n  - {no-xid: {}, no-events: {}}",
        ));
        for expected in [
            "r.yaml:7:",
            "health[0].steps-passed.plan: 'other' is not the procedure's plan; a health rule \
             judges only 'flash', so leave plan out",
            "r.yaml:8:",
            "health[1]: a rule has exactly one kind",
        ] {
            assert!(text.contains(expected), "{expected} not in:\n{text}");
        }
        let text = errors(&GOOD.replace("no-events: {}", "measurment: {}"));
        assert!(
            text.contains("r.yaml:7:5: unknown field `measurment`"),
            "{text}"
        );
        let text = errors(&GOOD.replace("  - no-events: {}", "  - {}"));
        assert!(
            text.contains("r.yaml:7:3: health[0]: a rule needs one of:"),
            "{text}"
        );
        let text = errors(&GOOD.replace("health:\n  - no-events: {}\n", "health: []\n"));
        assert!(
            text.contains("health: a rollout needs at least one health rule"),
            "{text}"
        );
    }

    #[test]
    fn rules_compared_with_the_cohort_name_a_telemetry_field_and_no_step() {
        let cohort = |rules: &str| {
            GOOD.replace("  - no-events: {}\n", rules)
                .replace("health:", "baseline-by-cohort: true\nhealth:")
        };
        let text = errors(&cohort(
            "  - baseline: {measurement: membw_gbps, max-regression-pct: 5}\n  - no-regression: {step: flash, measurement: gpu_temp}\n",
        ));
        for expected in [
            "r.yaml:8:15: health[0].baseline.measurement: unknown telemetry field 'membw_gbps'",
            "for example gpu_temp_c",
            "r.yaml:9:20: health[1].no-regression.step: means nothing with baseline-by-cohort",
            "r.yaml:9:20: health[1].no-regression.measurement: unknown telemetry field 'gpu_temp'",
        ] {
            assert!(text.contains(expected), "{expected} not in:\n{text}");
        }
        // Without the flag the same rules compare procedure results: any measurement, a step.
        let compares = "  - baseline: {measurement: membw_gbps, max-regression-pct: 5}\n  - no-regression: {step: flash}\n";
        let spec = parse_rollout("r.yaml", &GOOD.replace("  - no-events: {}\n", compares))
            .expect("valid without baseline-by-cohort");
        assert_eq!(spec.health_gate(&[]).rules.len(), 2);
        // With it, they are judged against the cohort, not in the procedure's gate.
        let spec = parse_rollout(
            "r.yaml",
            &cohort(
                "  - baseline: {measurement: gpu_temp_c, direction: lower-is-better, max-regression-pct: 5}\n  - no-regression: {}\n  - no-events: {}\n",
            ),
        )
        .expect("valid");
        assert!(spec.baseline_by_cohort);
        let ids: Vec<String> = spec
            .health_gate(&[])
            .rules
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["no-events"]);
    }

    #[test]
    fn every_bad_field_is_named_with_its_line() {
        let source = "\
name: prod h100
selector: {}
waves:
  - nodes: [gpu-a01, gpu-a01]
  - percent: 0
  - percent: 50
  - {count: 0}
  - percent: 40
  - nodes: [gpu-b01]
  - {count: 2, percent: 60}
  - {}
  - percent: 101
procedure: {plan: flash, on-interrupted: retry}
rollback: {plan: ''}
health:
  - no-events: {}
soak: 8d
limits:
  max-concurrent: {rack: 0}
  pause-between-waves: soon
";
        let text = errors(source);
        for expected in [
            "r.yaml:1:7: name: 'prod h100' is not a valid rollout name",
            "r.yaml:2:11: selector: is empty; name the fleet's labels",
            "r.yaml:4:22: waves[0].nodes[1]: node 'gpu-a01' is named twice; a node is in \
             exactly one wave",
            "r.yaml:5:14: waves[1].percent: 0 is not a percentage in (0, 100]",
            "r.yaml:7:",
            "waves[3].count: must be at least 1",
            "r.yaml:8:14: waves[4].percent: 40 is not above the previous wave's 50; \
             percentages are cumulative shares of the fleet",
            "r.yaml:9:",
            "waves[5].nodes: a canary wave (nodes, selector) comes before every count and \
             percent wave; move it before waves[1]",
            "r.yaml:10:",
            "waves[6]: a wave takes exactly one of nodes, selector, count and percent",
            "r.yaml:11:",
            "waves[7]: a wave needs one of: nodes, selector, count, percent",
            "r.yaml:12:14: waves[8].percent: 101 is not a percentage in (0, 100]",
            "the last wave must be percent: 100",
            "r.yaml:13:",
            "procedure.on-interrupted: unknown OnInterrupted 'retry' (expected one of: fail, \
             resume)",
            "r.yaml:14:",
            "rollback.plan: '' is not a valid plan name",
            "r.yaml:17:7: soak: '8d' is longer than the limit of 7 days",
            "r.yaml:19:",
            "limits.max-concurrent[rack]: must be at least 1: the most nodes in procedure at \
             once on nodes sharing one value of the label",
            "r.yaml:20:",
            "limits.pause-between-waves: 'soon' is not a duration",
        ] {
            assert!(text.contains(expected), "{expected} not in:\n{text}");
        }
    }

    #[test]
    fn missing_parts_unknown_fields_and_a_short_last_wave_are_refused() {
        let text = errors(&GOOD.replace("selector: {env: prod}\n", ""));
        assert!(
            text.contains("r.yaml:1:7: selector: is required: the labels of the fleet"),
            "{text}"
        );
        let text = errors(&GOOD.replace("  - percent: 100", "  - percent: 50"));
        assert!(
            text.contains(
                "r.yaml:4:5: waves[0]: the last wave must be percent: 100, so that \
                 the rollout reaches every node of the fleet"
            ),
            "{text}"
        );
        let text = errors(&GOOD.replace("  - percent: 100", "  - {count: 3}"));
        assert!(
            text.contains("the last wave must be percent: 100"),
            "{text}"
        );
        let text = errors(&GOOD.replace("waves:\n  - percent: 100\n", "waves: []\n"));
        assert!(
            text.contains("waves: a rollout needs at least one wave"),
            "{text}"
        );
        let text = errors(&GOOD.replace("  - percent: 100", "  - {percent: 100, weight: 2}"));
        assert!(
            text.contains("r.yaml:4:") && text.contains("unknown field `weight`"),
            "{text}"
        );
        let text = errors(&format!(
            "{GOOD}limits: {{max-concurrent-per: {{rack: 1}}}}\n"
        ));
        assert!(
            text.contains("unknown field `max-concurrent-per`"),
            "{text}"
        );
        let text = errors(&GOOD.replace("percent: 100", "percent: all"));
        assert!(
            text.contains("waves[0].percent: 'all' is not a percentage"),
            "{text}"
        );
        let text = errors(&GOOD.replace("procedure: {plan: flash}\n", ""));
        assert!(text.contains("missing field `procedure`"), "{text}");
    }

    #[test]
    fn fractions_and_canaries_by_label_are_waves_too() {
        let source = GOOD.replace(
            "  - percent: 100",
            "  - selector: {rack: r1}\n  - count: 2\n  - percent: 0.5\n  - percent: 100",
        );
        let spec = parse_rollout("r.yaml", &source).expect("valid");
        assert_eq!(
            spec.waves,
            [
                WaveSpec::Selector(Selector([("rack".to_owned(), "r1".to_owned())].into())),
                WaveSpec::Count(2),
                WaveSpec::Percent(0.5),
                WaveSpec::Percent(100.0),
            ]
        );
        let text = errors(&GOOD.replace("  - percent: 100", "  - selector: {}\n  - percent: 100"));
        assert!(
            text.contains("waves[0].selector: is empty; give the canaries' labels"),
            "{text}"
        );
    }
}
