//! Plans: the YAML a release manager writes, validated into a [`Plan`] whose version is its
//! content hash.

use crate::PlanVersion;
use crate::fleet::Selector;
use crate::release::is_valid_name;
use crate::spec::{Problems, SpecErrors, format_duration, parse_duration, parse_yaml};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::time::Duration;

/// A step's timeout when the plan gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest timeout a step may have.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most retries a step may have.
pub const MAX_RETRIES: u32 = 10;

/// A qualification recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Nodes the plan runs on.
    pub selector: Selector,
    /// At most this many nodes; `None` for every matching node.
    pub max_nodes: Option<u32>,
    /// Steps, in order.
    pub steps: Vec<Step>,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Name, unique in the plan.
    pub name: String,
    /// What the step does.
    pub kind: StepKind,
    /// Kill an attempt after this long.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Extra attempts after a failed or erroring one.
    pub retries: u32,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum StepKind {
    /// Run a command; it passes iff it exits 0.
    Exec {
        /// argv.
        command: Vec<String>,
        /// Extra environment.
        env: BTreeMap<String, String>,
        /// Working directory.
        workdir: Option<String>,
    },
    /// Compare the node's inventory with the release's components.
    InventoryCheck {
        /// Components to check; empty for all.
        components: Vec<String>,
    },
}

impl StepKind {
    /// The kind's name as written in plan files.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Exec { .. } => "exec",
            Self::InventoryCheck { .. } => "inventory-check",
        }
    }
}

mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&crate::spec::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        crate::spec::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

impl Plan {
    /// The plan's version: the hex sha256 of its canonical form. Formatting, comments and key
    /// order in the YAML do not change it; any change of meaning does.
    pub fn version(&self) -> PlanVersion {
        PlanVersion(crate::digest_json(self))
    }

    /// Step names, in order.
    pub fn step_names(&self) -> Vec<String> {
        self.steps.iter().map(|step| step.name.clone()).collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPlan {
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    nodes: Option<Spanned<u32>>,
    steps: Spanned<Vec<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawStep {
    name: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    workdir: Option<String>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    retries: Option<Spanned<u32>>,
    #[serde(default)]
    components: Option<Spanned<Vec<String>>>,
}

/// Parses and validates a plan file. `file` names the file in error messages; every problem
/// found is returned, each with its line and field.
pub fn parse_plan(file: &str, source: &str) -> Result<Plan, SpecErrors> {
    let raw: RawPlan = parse_yaml(file, source)?;
    let mut problems = Problems::new(file);
    if !is_valid_name(&raw.name.value) {
        problems.add(
            raw.name.referenced,
            "name",
            format!(
                "'{}' is not a valid plan name (1-128 letters, digits, '-', '_', '.')",
                raw.name.value
            ),
        );
    }
    if let Some(nodes) = &raw.nodes
        && nodes.value == 0
    {
        problems.add(
            nodes.referenced,
            "nodes",
            "must be at least 1 (leave it out to use every matching node)",
        );
    }
    if raw.steps.value.is_empty() {
        problems.add(
            raw.steps.referenced,
            "steps",
            "a plan needs at least one step",
        );
    }
    let mut steps = Vec::new();
    for (idx, raw_step) in raw.steps.value.into_iter().enumerate() {
        let at = |field: &str| format!("steps[{idx}].{field}");
        let name = raw_step.name.value.clone();
        if !is_valid_name(&name) {
            problems.add(
                raw_step.name.referenced,
                at("name"),
                format!("'{name}' is not a valid step name"),
            );
        }
        if steps.iter().any(|s: &Step| s.name == name) {
            problems.add(
                raw_step.name.referenced,
                at("name"),
                format!("step name '{name}' is used twice"),
            );
        }
        let timeout = match &raw_step.timeout {
            None => DEFAULT_TIMEOUT,
            Some(text) => match parse_duration(&text.value) {
                Ok(d) if d.is_zero() => {
                    problems.add(text.referenced, at("timeout"), "must be longer than 0s");
                    DEFAULT_TIMEOUT
                }
                Ok(d) if d > MAX_TIMEOUT => {
                    problems.add(
                        text.referenced,
                        at("timeout"),
                        format!("{} is longer than the limit of 7 days", text.value),
                    );
                    DEFAULT_TIMEOUT
                }
                Ok(d) => d,
                Err(message) => {
                    problems.add(text.referenced, at("timeout"), message);
                    DEFAULT_TIMEOUT
                }
            },
        };
        let retries = match &raw_step.retries {
            Some(r) if r.value > MAX_RETRIES => {
                problems.add(
                    r.referenced,
                    at("retries"),
                    format!("{} is more than the limit of {MAX_RETRIES}", r.value),
                );
                0
            }
            Some(r) => r.value,
            None => 0,
        };
        let kind_location = raw_step.kind.referenced;
        let mut not_for_kind = |present: bool, field: &str, kind: &str| {
            if present {
                problems.add(
                    kind_location,
                    at(field),
                    format!("'{field}' does not apply to kind {kind}"),
                );
            }
        };
        let kind = match raw_step.kind.value.as_str() {
            "exec" => {
                not_for_kind(raw_step.components.is_some(), "components", "exec");
                let command = match raw_step.command {
                    Some(command)
                        if command.value.is_empty() || command.value[0].trim().is_empty() =>
                    {
                        problems.add(
                            command.referenced,
                            at("command"),
                            "the command is empty; give the program and its arguments as a list",
                        );
                        Vec::new()
                    }
                    Some(command) => command.value,
                    None => {
                        problems.add(kind_location, at("command"), "an exec step needs a command, for example command: [sh, -c, \"./stress.sh\"]");
                        Vec::new()
                    }
                };
                StepKind::Exec {
                    command,
                    env: raw_step.env.unwrap_or_default(),
                    workdir: raw_step.workdir,
                }
            }
            "inventory-check" => {
                not_for_kind(raw_step.command.is_some(), "command", "inventory-check");
                not_for_kind(raw_step.env.is_some(), "env", "inventory-check");
                not_for_kind(raw_step.workdir.is_some(), "workdir", "inventory-check");
                StepKind::InventoryCheck {
                    components: raw_step.components.map(|c| c.value).unwrap_or_default(),
                }
            }
            other => {
                problems.add(
                    kind_location,
                    at("kind"),
                    format!("unknown step kind '{other}' (expected exec or inventory-check)"),
                );
                continue;
            }
        };
        steps.push(Step {
            name,
            kind,
            timeout,
            retries,
        });
    }
    let plan = Plan {
        name: raw.name.value,
        description: raw.description.unwrap_or_default(),
        selector: Selector(raw.selector.unwrap_or_default()),
        max_nodes: raw.nodes.map(|n| n.value),
        steps,
    };
    problems.finish(plan)
}

/// Renders a step's timeout for display.
pub fn describe_timeout(step: &Step) -> String {
    format_duration(step.timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: gpu-qual
selector: {sku: hgx-h100}
steps:
  - {name: versions, kind: inventory-check}
  - name: stress
    kind: exec
    command: [sh, -c, "echo hi"]
    timeout: 2m
    retries: 1
"#;

    #[test]
    fn good_plan_parses() {
        let plan = parse_plan("plan.yaml", GOOD).expect("valid plan");
        assert_eq!(plan.name, "gpu-qual");
        assert_eq!(
            plan.selector.0.get("sku").map(String::as_str),
            Some("hgx-h100")
        );
        assert_eq!(plan.step_names(), ["versions", "stress"]);
        assert_eq!(plan.steps[1].timeout, Duration::from_secs(120));
        assert_eq!(plan.steps[1].retries, 1);
        assert_eq!(plan.steps[0].timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn version_ignores_formatting_but_not_meaning() {
        let a = parse_plan("a.yaml", GOOD).expect("valid");
        let reformatted = GOOD.replace("{sku: hgx-h100}", "\n  sku: hgx-h100 # lab A");
        let b = parse_plan("b.yaml", &reformatted).expect("valid");
        assert_eq!(a.version(), b.version());
        let c = parse_plan("c.yaml", &GOOD.replace("2m", "3m")).expect("valid");
        assert_ne!(a.version(), c.version());
    }

    #[test]
    fn every_problem_is_named_with_its_line() {
        let source = "name: gpu-qual\nsteps:\n  - {name: a, kind: exec}\n  - {name: a, kind: exec, command: [x], timeout: 2x}\n  - {name: c, kind: reboot}\n";
        let errors = parse_plan("plan.yaml", source).unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("plan.yaml:3:"), "{text}");
        assert!(
            text.contains("steps[0].command: an exec step needs a command"),
            "{text}"
        );
        assert!(text.contains("plan.yaml:4:"), "{text}");
        assert!(
            text.contains("steps[1].name: step name 'a' is used twice"),
            "{text}"
        );
        assert!(
            text.contains("steps[1].timeout: '2x' is not a duration"),
            "{text}"
        );
        assert!(text.contains("plan.yaml:5:"), "{text}");
        assert!(text.contains("unknown step kind 'reboot'"), "{text}");
    }

    #[test]
    fn unknown_key_and_bad_yaml_say_where() {
        let errors = parse_plan("p.yaml", "name: x\nsteps: []\nselectr: {a: b}\n").unwrap_err();
        let error = &errors.0[0];
        assert_eq!(error.line, 3, "{errors}");
        assert!(error.message.contains("selectr"), "{errors}");
        let errors =
            parse_plan("p.yaml", "name: x\nsteps:\n  - {name: a, kind: exec\n").unwrap_err();
        assert!(errors.0[0].line >= 3, "{errors}");
    }
}
