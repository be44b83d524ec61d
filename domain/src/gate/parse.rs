//! Parsing gate files into a validated [`GatePolicy`]; every problem is reported with its line
//! and field.

use super::*;
use crate::limits::{self, Limit};
use crate::spec::{Problems, RawInt, SpecErrors, parse_yaml};
use serde_saphyr::{Location, Spanned};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGate {
    milestone: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    rules: Spanned<Vec<RawRule>>,
}

/// One rule list item as written: exactly one kind should be given. Gate files and rollout
/// files' `health` lists share it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawRule {
    #[serde(default)]
    steps_passed: Option<Spanned<RawStepsPassed>>,
    #[serde(default)]
    measurement: Option<Spanned<RawMeasurement>>,
    #[serde(default)]
    telemetry: Option<Spanned<RawTelemetry>>,
    #[serde(default)]
    baseline: Option<Spanned<RawBaseline>>,
    #[serde(default)]
    no_regression: Option<Spanned<RawNoRegression>>,
    #[serde(default)]
    no_xid: Option<Spanned<RawNoXid>>,
    #[serde(default)]
    no_events: Option<Spanned<RawNoEvents>>,
    #[serde(default)]
    dcgm_diag: Option<Spanned<RawDcgmDiag>>,
    #[serde(default)]
    inventory_matches_release: Option<Spanned<RawInventory>>,
}

/// The fields every rule kind takes.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct Common {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    scope: Option<BTreeMap<String, String>>,
    #[serde(default)]
    since: Option<String>,
}

macro_rules! raw_rule {
    ($name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        struct $name {
            #[serde(default)]
            id: Option<String>,
            #[serde(default)]
            scope: Option<BTreeMap<String, String>>,
            #[serde(default)]
            since: Option<String>,
            $(#[serde(default)] $field: $ty,)*
        }

        impl $name {
            fn common(&mut self) -> Common {
                Common { id: self.id.take(), scope: self.scope.take(), since: self.since.take() }
            }
        }
    };
}

raw_rule!(RawStepsPassed {
    plan: Option<String>,
    steps: Vec<String>,
    min_nodes: Option<RawInt>,
    min_fraction: Option<f64>,
    per: Option<String>,
    max_failed: Option<RawInt>,
    max_errored: Option<RawInt>,
    max_inconclusive: Option<RawInt>,
});
raw_rule!(RawMeasurement { name: Option<String>, step: Option<String>, aggregate: Option<String>, condition: Option<String> });
raw_rule!(RawTelemetry { field: Option<String>, step: Option<String>, stat: Option<String>, aggregate: Option<String>, condition: Option<String> });
raw_rule!(RawBaseline {
    measurement: Option<String>,
    step: Option<String>,
    aggregate: Option<String>,
    max_regression_pct: Option<f64>,
    direction: Option<String>,
    per: Option<String>,
});
raw_rule!(RawNoRegression {
    step: Option<String>,
    per: Option<String>,
    significance: Option<f64>,
    min_samples: Option<RawInt>,
    measurement: Option<String>,
    direction: Option<String>,
});
raw_rule!(RawNoXid { codes: Vec<i64> });
raw_rule!(RawNoEvents { xid: Option<Vec<i64>>, ecc_uncorrected: Option<bool>, row_remap_failure: Option<bool>, gpu_lost: Option<bool> });
raw_rule!(RawDcgmDiag { level: Option<RawInt>, tests: Vec<String>, step: Option<String> });
raw_rule!(RawInventory { components: Vec<String> });

/// Reports problems of one rule body at its location.
struct At<'p, 'f> {
    problems: &'p mut Problems<'f>,
    location: Location,
    prefix: String,
}

impl At<'_, '_> {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        let path = if field.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{field}", self.prefix)
        };
        self.problems.add(self.location, path, message);
    }

    /// A whole-number field no larger than `max`; out of range is reported by name.
    fn int(&mut self, value: Option<RawInt>, field: &str, max: u32) -> Option<u32> {
        value?
            .to_u32(max)
            .map_err(|message| self.add(field, message))
            .ok()
    }

    fn required<T>(&mut self, value: Option<T>, field: &str, example: &str) -> Option<T> {
        if value.is_none() {
            self.add(
                field,
                format!("is required, for example {field}: {example}"),
            );
        }
        value
    }

    fn parse<T: std::str::FromStr<Err = String>>(
        &mut self,
        text: Option<&str>,
        field: &str,
    ) -> Option<T> {
        text?.parse::<T>().map_err(|e| self.add(field, e)).ok()
    }

    fn condition(&mut self, text: Option<String>) -> Option<Condition> {
        let text = self.required(text, "condition", "\">= 2800\"")?;
        Condition::parse(&text)
            .map_err(|e| self.add("condition", e))
            .ok()
    }
}

/// Parses `2026-11-01` (midnight UTC) or an RFC 3339 time.
pub(crate) fn parse_since(text: &str) -> Result<Timestamp, String> {
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| {
            format!(
                "{} is not a date (write 2026-11-01 or 2026-11-01T12:00:00Z)",
                crate::limits::quote(text)
            )
        })
}

/// Parses and validates a gate file. Every problem is returned with its line and field.
pub fn parse_gate(file: &str, source: &str) -> Result<GatePolicy, SpecErrors> {
    let raw: RawGate = parse_yaml(file, source)?;
    let mut problems = Problems::new(file);
    if let Some(message) = crate::release::name_problem("milestone", &raw.milestone.value) {
        problems.add(raw.milestone.referenced, "milestone", message);
    }
    if !problems.count(
        raw.rules.referenced,
        "rules",
        &crate::limits::RULES,
        raw.rules.value.len(),
    ) {
        // Checking each of a huge list would only make a huge answer; the count is the error.
        return Err(problems.into_errors());
    }
    if raw.rules.value.is_empty() {
        problems.add(
            raw.rules.referenced,
            "rules",
            "a gate needs at least one rule; an empty gate would pass anything",
        );
    }
    let rules = parse_rules(
        &mut problems,
        raw.rules.referenced,
        raw.rules.value,
        &RuleDefaults::gate(),
    );
    if let Some(description) = &raw.description {
        problems.text(
            raw.milestone.referenced,
            "description",
            &limits::DESCRIPTION,
            description,
        );
    }
    problems.finish(GatePolicy {
        milestone: raw.milestone.value,
        description: raw.description.unwrap_or_default(),
        rules,
    })
}

/// What a rule list's context supplies: the list's field name (`rules` in a gate file,
/// `health` in a rollout file) and, in a rollout, the one plan its rules judge.
pub(crate) struct RuleDefaults<'a> {
    /// The list's field name, the head of every problem's field path.
    pub(crate) list: &'a str,
    /// The plan a `steps-passed` rule judges when it names none; such a rule may then also
    /// leave `steps` out, meaning every step of the plan (see
    /// [`crate::rollout::RolloutSpec::health_gate`]). `None` in a gate file: both are required.
    pub(crate) plan: Option<&'a str>,
    /// Whether `baseline` and `no-regression` rules compare a rollout's wave with its cohort
    /// (`baseline-by-cohort: true`): their measurement is then a telemetry field, and a step
    /// means nothing. Always false in a gate file.
    pub(crate) cohort: bool,
}

impl RuleDefaults<'_> {
    /// A gate file's `rules`.
    fn gate() -> Self {
        RuleDefaults {
            list: "rules",
            plan: None,
            cohort: false,
        }
    }
}

/// Parses a list of rules, each with exactly one kind, under `defaults.list`; every problem is
/// recorded with its line and field.
pub(crate) fn parse_rules(
    problems: &mut Problems,
    location: Location,
    raw_rules: Vec<RawRule>,
    defaults: &RuleDefaults<'_>,
) -> Vec<Rule> {
    let list = defaults.list;
    let mut rules: Vec<Rule> = Vec::new();
    for (idx, raw_rule) in raw_rules.into_iter().enumerate() {
        let mut given = kinds_given(problems, idx, raw_rule, defaults);
        match given.len() {
            0 => problems.add(
                location,
                format!("{list}[{idx}]"),
                "a rule needs one of: steps-passed, measurement, telemetry, baseline, no-regression, no-xid, no-events, dcgm-diag, inventory-matches-release",
            ),
            1 => {
                if defaults.cohort
                    && let (location, _, Some(kind)) = &given[0]
                {
                    check_cohort_kind(problems, *location, &format!("{list}[{idx}]"), kind);
                }
                if let Some(rule) = rule_of(problems, list, idx, given.remove(0), &rules) {
                    rules.push(rule);
                }
            }
            _ => problems.add(
                given[1].0,
                format!("{list}[{idx}]"),
                "a rule has exactly one kind; split it into one list item per rule",
            ),
        }
    }
    rules
}

/// A `baseline` or `no-regression` rule comparing a rollout's wave with its cohort: its
/// measurement must be a telemetry field (the cohort ran no step, so only fleet telemetry
/// compares), and a step, which only procedure results have, is refused.
fn check_cohort_kind(problems: &mut Problems, location: Location, at: &str, kind: &RuleKind) {
    let (name, measurement, step) = match kind {
        RuleKind::Baseline {
            measurement, step, ..
        } => ("baseline", Some(measurement), step),
        RuleKind::NoRegression {
            measurement, step, ..
        } => ("no-regression", measurement.as_ref(), step),
        _ => return,
    };
    if step.is_some() {
        problems.add(
            location,
            format!("{at}.{name}.step"),
            "means nothing with baseline-by-cohort: the wave is compared with the cohort over \
             fleet telemetry after the procedure, not over a step's results; leave step out",
        );
    }
    if let Some(measurement) = measurement
        && let Err(message) = measurement.parse::<Field>()
    {
        problems.add(
            location,
            format!("{at}.{name}.measurement"),
            format!(
                "{message}; with baseline-by-cohort the measurement is a telemetry field the \
                 wave and its cohort both report, for example gpu_temp_c"
            ),
        );
    }
}

/// Every kind given in one rule list item, with its location, the common fields and the kind
/// (`None` when its body has a problem).
fn kinds_given(
    problems: &mut Problems,
    idx: usize,
    raw_rule: RawRule,
    defaults: &RuleDefaults<'_>,
) -> Vec<(Location, Common, Option<RuleKind>)> {
    let list = defaults.list;
    let mut given: Vec<(Location, Common, Option<RuleKind>)> = Vec::new();
    let RawRule {
        steps_passed,
        measurement,
        telemetry,
        baseline,
        no_regression,
        no_xid,
        no_events,
        dcgm_diag,
        inventory_matches_release,
    } = raw_rule;
    macro_rules! body {
        ($body:ident, $kind:literal, $make:expr) => {
            if let Some(spanned) = $body {
                let location = spanned.referenced;
                let mut raw = spanned.value;
                let common = raw.common();
                let mut at = At {
                    problems: &mut *problems,
                    location,
                    prefix: format!("{list}[{idx}].{}", $kind),
                };
                let kind: Option<RuleKind> = $make(raw, &mut at);
                given.push((location, common, kind));
            }
        };
    }
    body!(
        steps_passed,
        "steps-passed",
        |raw: RawStepsPassed, at: &mut At<'_, '_>| steps_passed_kind(raw, at, defaults.plan)
    );
    body!(measurement, "measurement", measurement_kind);
    body!(telemetry, "telemetry", telemetry_kind);
    body!(baseline, "baseline", baseline_kind);
    body!(no_regression, "no-regression", no_regression_kind);
    body!(no_xid, "no-xid", |raw: RawNoXid, _: &mut At<'_, '_>| Some(
        RuleKind::NoXid { codes: raw.codes }
    ));
    body!(
        no_events,
        "no-events",
        |raw: RawNoEvents, _: &mut At<'_, '_>| Some(RuleKind::NoEvents {
            xid: raw.xid.unwrap_or_else(|| CRITICAL_XIDS.to_vec()),
            ecc_uncorrected: raw.ecc_uncorrected.unwrap_or(true),
            row_remap_failure: raw.row_remap_failure.unwrap_or(true),
            gpu_lost: raw.gpu_lost.unwrap_or(true),
        })
    );
    body!(dcgm_diag, "dcgm-diag", dcgm_diag_kind);
    body!(
        inventory_matches_release,
        "inventory-matches-release",
        |raw: RawInventory, _: &mut At<'_, '_>| Some(RuleKind::InventoryMatchesRelease {
            components: raw.components
        })
    );

    given
}

/// Rule `idx` from its one kind's body; `None` when a problem leaves no rule. `earlier` are
/// the rules before it.
fn rule_of(
    problems: &mut Problems,
    list: &str,
    idx: usize,
    (location, common, kind): (Location, Common, Option<RuleKind>),
    earlier: &[Rule],
) -> Option<Rule> {
    let kind = kind?;
    let since = common.since.as_deref().and_then(|text| {
        parse_since(text)
            .map_err(|e| problems.add(location, format!("{list}[{idx}].since"), e))
            .ok()
    });
    check_bounds(
        &mut *problems,
        location,
        &format!("{list}[{idx}].{}", kind.name()),
        &kind,
    );
    if let Some(scope) = &common.scope {
        check_scope(
            &mut *problems,
            location,
            &format!("{list}[{idx}].scope"),
            scope,
        );
    }
    let id = common.id.unwrap_or_else(|| default_rule_id(&kind));
    if !problems.text(location, format!("{list}[{idx}].id"), &limits::RULE_ID, &id) {
        return None;
    }
    if earlier.iter().any(|r| r.id == id) {
        problems.add(
            location,
            format!("{list}[{idx}].id"),
            format!(
                "rule id {} is used twice; give one of them an `id:`",
                limits::quote(&id)
            ),
        );
    }
    Some(Rule {
        id,
        kind,
        scope: Selector(common.scope.unwrap_or_default()),
        since,
    })
}

/// The `steps-passed` kind of a rule, checked field by field. `only_plan`: the one plan the
/// rule may judge (a rollout's procedure), its default; `steps` may then be left out.
fn steps_passed_kind(
    raw: RawStepsPassed,
    at: &mut At<'_, '_>,
    only_plan: Option<&str>,
) -> Option<RuleKind> {
    let plan = match (raw.plan, only_plan) {
        (None, Some(only)) => Some(only.to_owned()),
        (Some(plan), Some(only)) if plan != only => {
            at.add(
                "plan",
                format!(
                    "{} is not the procedure's plan; a health rule judges only {}, so leave \
                     plan out",
                    limits::quote(&plan),
                    limits::quote(only)
                ),
            );
            None
        }
        (plan, _) => at.required(plan, "plan", "gpu-qual"),
    };
    if raw.steps.is_empty() && only_plan.is_none() {
        at.add("steps", "list at least one step of the plan");
    }
    let min_nodes = at.int(raw.min_nodes, "min-nodes", u32::MAX);
    if min_nodes == Some(0) {
        at.add("min-nodes", "must be at least 1");
    }
    let max_failed = at.int(raw.max_failed, "max-failed", u32::MAX);
    let max_errored = at.int(raw.max_errored, "max-errored", u32::MAX);
    let max_inconclusive = at.int(raw.max_inconclusive, "max-inconclusive", u32::MAX);
    if let Some(f) = raw.min_fraction
        && !(f > 0.0 && f <= 1.0)
    {
        at.add("min-fraction", format!("{f} is not in (0, 1]"));
    }
    plan.map(|plan| RuleKind::StepsPassed {
        plan,
        steps: raw.steps,
        quorum: Quorum {
            min_nodes,
            min_fraction: raw.min_fraction,
        },
        per: raw.per,
        tolerance: Tolerance {
            max_failed: max_failed.unwrap_or(0),
            max_errored: max_errored.unwrap_or(0),
            max_inconclusive: max_inconclusive.unwrap_or(0),
        },
    })
}

/// The `measurement` kind of a rule, checked field by field.
fn measurement_kind(raw: RawMeasurement, at: &mut At<'_, '_>) -> Option<RuleKind> {
    let name = at.required(raw.name, "name", "membw_gbps");
    let aggregate = at
        .required(raw.aggregate.as_deref(), "aggregate", "min")
        .and_then(|a| at.parse(Some(a), "aggregate"));
    let condition = at.condition(raw.condition);
    match (name, aggregate, condition) {
        (Some(name), Some(aggregate), Some(condition)) => Some(RuleKind::Measurement {
            name,
            step: raw.step,
            aggregate,
            condition,
        }),
        _ => None,
    }
}

/// The `telemetry` kind of a rule, checked field by field.
fn telemetry_kind(raw: RawTelemetry, at: &mut At<'_, '_>) -> Option<RuleKind> {
    let field = at
        .required(raw.field.as_deref(), "field", "gpu_temp_c")
        .and_then(|f| at.parse::<Field>(Some(f), "field"));
    let aggregate: Option<Aggregate> = at
        .required(raw.aggregate.as_deref(), "aggregate", "max")
        .and_then(|a| at.parse(Some(a), "aggregate"));
    let stat: Option<Stat> = match raw.stat.as_deref() {
        None => aggregate.map(Stat::default_for),
        Some(text) => at.parse(Some(text), "stat"),
    };
    let condition = at.condition(raw.condition);
    match (field, aggregate, stat, condition) {
        (Some(field), Some(aggregate), Some(stat), Some(condition)) => Some(RuleKind::Telemetry {
            field,
            step: raw.step,
            stat,
            aggregate,
            condition,
        }),
        _ => None,
    }
}

/// The `baseline` kind of a rule, checked field by field.
fn baseline_kind(raw: RawBaseline, at: &mut At<'_, '_>) -> Option<RuleKind> {
    let measurement = at.required(raw.measurement, "measurement", "membw_gbps");
    let aggregate: Option<Aggregate> = match raw.aggregate.as_deref() {
        None => Some(Aggregate::Mean),
        Some(text) => at.parse(Some(text), "aggregate"),
    };
    let direction: Option<Direction> = match raw.direction.as_deref() {
        None => Some(Direction::HigherIsBetter),
        Some(text) => at.parse(Some(text), "direction"),
    };
    let pct = at.required(raw.max_regression_pct, "max-regression-pct", "5");
    if let Some(p) = pct
        && !(p.is_finite() && p >= 0.0)
    {
        at.add(
            "max-regression-pct",
            format!("{p} must be a percentage of at least 0"),
        );
    }
    match (measurement, aggregate, direction, pct) {
        (Some(measurement), Some(aggregate), Some(direction), Some(max_regression_pct)) => {
            Some(RuleKind::Baseline {
                measurement,
                step: raw.step,
                aggregate,
                max_regression_pct,
                direction,
                per: raw.per.unwrap_or_else(|| "sku".to_owned()),
            })
        }
        _ => None,
    }
}

/// The significance level a `no-regression` rule uses when its file names none.
const DEFAULT_SIGNIFICANCE: f64 = 0.05;

/// The fewest samples on each side a `no-regression` rule compares when its file names none.
const DEFAULT_MIN_SAMPLES: u32 = 20;

/// The `no-regression` kind of a rule, checked field by field.
fn no_regression_kind(raw: RawNoRegression, at: &mut At<'_, '_>) -> Option<RuleKind> {
    let significance = raw.significance.unwrap_or(DEFAULT_SIGNIFICANCE);
    let significance_ok = significance > 0.0 && significance < 1.0;
    if !significance_ok {
        at.add(
            "significance",
            format!("{significance} is not a significance level in (0, 1), for example 0.05"),
        );
    }
    let min_samples = match raw.min_samples {
        None => Some(DEFAULT_MIN_SAMPLES),
        Some(value) => at.int(Some(value), "min-samples", u32::MAX),
    };
    if min_samples == Some(0) {
        at.add(
            "min-samples",
            "must be at least 1: a comparison without samples proves nothing",
        );
    }
    let direction: Option<Direction> = match raw.direction.as_deref() {
        None => Some(Direction::HigherIsBetter),
        Some(_) if raw.measurement.is_none() => {
            at.add(
                "direction",
                "applies to a measurement; name one with measurement: NAME, or leave direction out",
            );
            None
        }
        Some(text) => at.parse(Some(text), "direction"),
    };
    match (min_samples, direction) {
        (Some(min_samples @ 1..), Some(direction)) if significance_ok => {
            Some(RuleKind::NoRegression {
                step: raw.step,
                per: raw.per.unwrap_or_else(|| "sku".to_owned()),
                significance,
                min_samples,
                measurement: raw.measurement,
                direction,
            })
        }
        _ => None,
    }
}

/// The `dcgm-diag` kind of a rule, checked field by field.
fn dcgm_diag_kind(raw: RawDcgmDiag, at: &mut At<'_, '_>) -> Option<RuleKind> {
    let level = at
        .required(raw.level, "level", "3")
        .and_then(|level| match level.to_u32(4) {
            Ok(l @ 1..=4) => u8::try_from(l).ok(),
            _ => {
                let shown = match level {
                    RawInt::Int(value) => value.to_string(),
                    RawInt::Other(text) => text,
                };
                at.add(
                    "level",
                    format!("{shown} is not a dcgmi diag level (1 to 4)"),
                );
                None
            }
        });
    if raw.tests.is_empty() {
        at.add(
            "tests",
            "list the diagnostic tests that must pass, for example [memory, pcie, targeted_stress]",
        );
    }
    level.map(|min_level| RuleKind::DcgmDiag {
        min_level,
        tests: raw.tests,
        step: raw.step,
    })
}

/// Checks the length of every name and list a rule holds, reporting each at the rule.
fn check_bounds(problems: &mut Problems, location: Location, at: &str, kind: &RuleKind) {
    let name = |problems: &mut Problems, field: &str, value: &str| {
        problems.text(location, format!("{at}.{field}"), &limits::NAME, value);
    };
    let names = |problems: &mut Problems, field: &str, list: &Limit, values: &[String]| {
        let path = format!("{at}.{field}");
        if problems.count(location, path.clone(), list, values.len()) {
            for (idx, value) in values.iter().enumerate() {
                problems.text(location, format!("{path}[{idx}]"), &limits::NAME, value);
            }
        }
    };
    match kind {
        RuleKind::StepsPassed {
            plan, steps, per, ..
        } => {
            name(problems, "plan", plan);
            names(problems, "steps", &limits::STEPS, steps);
            if let Some(per) = per {
                problems.text(location, format!("{at}.per"), &limits::LABEL_KEY, per);
            }
        }
        RuleKind::Measurement {
            name: measurement,
            step,
            ..
        }
        | RuleKind::Baseline {
            measurement, step, ..
        } => {
            name(problems, "name", measurement);
            if let Some(step) = step {
                name(problems, "step", step);
            }
            if let RuleKind::Baseline { per, .. } = kind {
                problems.text(location, format!("{at}.per"), &limits::LABEL_KEY, per);
            }
        }
        RuleKind::Telemetry { step, .. } => {
            if let Some(step) = step {
                name(problems, "step", step);
            }
        }
        RuleKind::NoRegression {
            step,
            per,
            measurement,
            ..
        } => {
            if let Some(step) = step {
                name(problems, "step", step);
            }
            if let Some(measurement) = measurement {
                name(problems, "measurement", measurement);
            }
            problems.text(location, format!("{at}.per"), &limits::LABEL_KEY, per);
        }
        RuleKind::NoXid { codes } => {
            problems.count(
                location,
                format!("{at}.codes"),
                &limits::STEP_LIST,
                codes.len(),
            );
        }
        RuleKind::NoEvents { xid, .. } => {
            problems.count(location, format!("{at}.xid"), &limits::STEP_LIST, xid.len());
        }
        RuleKind::DcgmDiag { tests, step, .. } => {
            names(problems, "tests", &limits::STEP_LIST, tests);
            if let Some(step) = step {
                name(problems, "step", step);
            }
        }
        RuleKind::InventoryMatchesRelease { components } => {
            names(problems, "components", &limits::COMPONENTS, components);
        }
    }
}

/// Checks a rule's scope selector like a plan's.
fn check_scope(
    problems: &mut Problems,
    location: Location,
    at: &str,
    scope: &BTreeMap<String, String>,
) {
    if !problems.count(location, at, &limits::LABELS, scope.len()) {
        return;
    }
    for (key, value) in scope {
        let field = format!("{at}[{}]", limits::truncate(&limits::NAME, key, false));
        if problems.text(location, field.clone(), &limits::LABEL_KEY, key) {
            problems.text(location, field, &limits::LABEL_VALUE, value);
        }
    }
}

fn default_rule_id(kind: &RuleKind) -> String {
    match kind {
        RuleKind::Measurement { name, .. } => format!("measurement:{name}"),
        RuleKind::Telemetry { field, .. } => format!("telemetry:{field}"),
        RuleKind::StepsPassed { plan, .. } => format!("steps-passed:{plan}"),
        RuleKind::Baseline { measurement, .. } => format!("baseline:{measurement}"),
        // Two of these differ by their step or measurement: either names the rule.
        RuleKind::NoRegression {
            step, measurement, ..
        } => [
            Some("no-regression"),
            step.as_deref(),
            measurement.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<&str>>()
        .join(":"),
        other => other.name().to_owned(),
    }
}
