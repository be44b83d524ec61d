//! Plans: the YAML a release manager writes, validated into a [`Plan`] whose version is its
//! content hash.

use crate::PlanVersion;
use crate::fleet::Selector;
use crate::limits;
use crate::release::name_problem;
use crate::scheduler::Selecting;
use crate::spec::RawInt;
use crate::spec::{Problems, SpecErrors, format_duration, parse_duration, parse_yaml};
use crate::telemetry::Field;
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
/// The exit code with which a `flash` command says the node must reboot to finish the flash.
pub const FLASH_REBOOT_EXIT_CODE: i32 = 194;
/// The `dcgmi diag` levels (`-r 1` to `-r 4`).
pub const DCGM_LEVELS: std::ops::RangeInclusive<u8> = 1..=4;

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
    /// Which nodes a run takes when it starts: every matching node, busy ones waiting (the
    /// default), or with `selection: ready-now` only those ready then, as `run start
    /// --nodes-now` asks of one run. Left out of the canonical form when it is the default, so
    /// the versions of plans that do not set it are what they were.
    #[serde(default, skip_serializing_if = "Selecting::is_default")]
    pub selection: Selecting,
    /// Blast radius: per label key (`rack`, `pdu`), at most this many of a run's jobs active
    /// at once on nodes sharing one value of it (`max-concurrent: {rack: 2}`); nodes without
    /// the label are not limited by it. Left out of the canonical form when empty, so the
    /// versions of plans that do not set it are what they were.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_concurrent: BTreeMap<String, u32>,
    /// Retries at the job level: a job that ends `lost` or `error` (the harness failed, not
    /// the thing under test) is started again on another eligible node, at most this many
    /// times (`reschedule: {attempts: 2}`); 0, the default, never. Left out of the canonical
    /// form when 0, so the versions of plans that do not set it are what they were.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reschedule_attempts: u32,
    /// Steps, in order.
    pub steps: Vec<Step>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The most job-level reschedules a plan may ask for.
pub const MAX_RESCHEDULES: u32 = 10;

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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, strum::IntoStaticStr)]
#[serde(rename_all = "kebab-case", tag = "kind")]
#[strum(serialize_all = "kebab-case")]
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
    /// Compare the node's inventory with the release's components, and check the GPUs' health
    /// facts (ECC on, PCIe width, row remapping).
    InventoryCheck {
        /// Components to check; empty for all.
        components: Vec<String>,
    },
    /// Run `dcgmi diag` and grade every test on every GPU.
    DcgmDiag {
        /// Diagnostic level, 1 to 4.
        level: u8,
        /// Run only these tests (`-r test1,test2`); empty for the level's suite.
        tests: Vec<String>,
        /// argv replacing the default `dcgmi diag -r LEVEL -j`; empty for the default.
        command: Vec<String>,
    },
    /// Run a test suite that writes a JUnit XML report, and grade every testcase.
    Junit {
        /// argv.
        command: Vec<String>,
        /// Extra environment.
        env: BTreeMap<String, String>,
        /// Working directory.
        workdir: Option<String>,
        /// The report's path, relative to `TOLLGATE_RESULTS_DIR` unless absolute; may hold a
        /// `*` glob in its file name.
        report: String,
    },
    /// Load the GPUs for a fixed time while watching telemetry limits.
    BurnIn {
        /// argv of the load generator.
        command: Vec<String>,
        /// Extra environment.
        env: BTreeMap<String, String>,
        /// Working directory.
        workdir: Option<String>,
        /// Run the load this long, then stop it; reaching the end is success.
        #[serde(with = "duration_text")]
        duration: Duration,
        /// Telemetry limits; the first sample outside one fails the step.
        limits: Vec<TelemetryLimit>,
    },
    /// Install firmware or a driver, then check the node reports the target version.
    Flash {
        /// argv of the installer.
        command: Vec<String>,
        /// Extra environment.
        env: BTreeMap<String, String>,
        /// Working directory.
        workdir: Option<String>,
        /// The component flashed (`vbios`, `driver`, a probe-reported name).
        component: String,
        /// The version the component must report afterwards.
        version: String,
        /// Reboot the node after the command before checking the version.
        reboot: bool,
    },
}

/// A bound on one telemetry field, checked on every sample while a burn-in runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TelemetryLimit {
    /// The field.
    pub field: Field,
    /// Smallest allowed value.
    pub min: Option<f64>,
    /// Largest allowed value.
    pub max: Option<f64>,
}

impl TelemetryLimit {
    /// Why `value` breaks this limit (`gpu_temp_c 94 > limit 88`), or `None` when it is inside.
    pub fn violation(&self, value: f64) -> Option<String> {
        let name = self.field.name();
        if let Some(max) = self.max
            && value > max
        {
            return Some(format!("{name} {value} > limit {max}"));
        }
        if let Some(min) = self.min
            && value < min
        {
            return Some(format!("{name} {value} < limit {min}"));
        }
        None
    }
}

/// What a step runs as a process: its argv, environment and working directory.
#[derive(Clone, Debug, PartialEq)]
pub struct StepProcess<'a> {
    /// The argv (a `dcgm-diag` step's as [`StepKind::dcgm_command`] makes it).
    pub command: Vec<String>,
    /// What the plan sets in the step's environment.
    pub env: &'a BTreeMap<String, String>,
    /// The working directory the plan names, if any.
    pub workdir: Option<&'a str>,
}

/// The environment of a kind that sets none.
static NO_ENV: BTreeMap<String, String> = BTreeMap::new();

impl StepKind {
    /// The kind's name as written in plan files.
    pub fn name(&self) -> &'static str {
        self.into()
    }

    /// The process a step of this kind runs; `None` for an inventory check, which runs none.
    pub fn process(&self) -> Option<StepProcess<'_>> {
        match self {
            StepKind::Exec {
                command,
                env,
                workdir,
            }
            | StepKind::Junit {
                command,
                env,
                workdir,
                ..
            }
            | StepKind::BurnIn {
                command,
                env,
                workdir,
                ..
            }
            | StepKind::Flash {
                command,
                env,
                workdir,
                ..
            } => Some(StepProcess {
                command: command.clone(),
                env,
                workdir: workdir.as_deref(),
            }),
            StepKind::DcgmDiag {
                level,
                tests,
                command,
            } => Some(StepProcess {
                command: Self::dcgm_command(*level, tests, command),
                env: &NO_ENV,
                workdir: None,
            }),
            StepKind::InventoryCheck { .. } => None,
        }
    }

    /// The argv a `dcgm-diag` step runs: its override, or `dcgmi diag -r LEVEL -j` with the
    /// level replaced by the comma-separated test list when tests are named.
    pub fn dcgm_command(level: u8, tests: &[String], command: &[String]) -> Vec<String> {
        if !command.is_empty() {
            return command.to_vec();
        }
        let run = if tests.is_empty() {
            level.to_string()
        } else {
            tests.join(",")
        };
        ["dcgmi", "diag", "-r", run.as_str(), "-j"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
}

pub(crate) mod duration_text {
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
    nodes: Option<Spanned<RawInt>>,
    #[serde(default)]
    selection: Option<Spanned<String>>,
    #[serde(default)]
    max_concurrent: Option<Spanned<BTreeMap<String, Spanned<RawInt>>>>,
    #[serde(default)]
    reschedule: Option<RawReschedule>,
    steps: Spanned<Vec<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawReschedule {
    attempts: Spanned<RawInt>,
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
    retries: Option<Spanned<RawInt>>,
    #[serde(default)]
    components: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    level: Option<Spanned<RawInt>>,
    #[serde(default)]
    tests: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    report: Option<Spanned<String>>,
    #[serde(default)]
    duration: Option<Spanned<String>>,
    #[serde(default)]
    limits: Option<Spanned<Vec<RawLimit>>>,
    #[serde(default)]
    component: Option<Spanned<String>>,
    #[serde(default)]
    version: Option<Spanned<String>>,
    #[serde(default)]
    reboot: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimit {
    field: Spanned<String>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
}

/// The fields each kind accepts besides name, kind, timeout and retries.
fn fields_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "exec" => &["command", "env", "workdir"],
        "inventory-check" => &["components"],
        "dcgm-diag" => &["level", "tests", "command"],
        "junit" => &["command", "env", "workdir", "report"],
        "burn-in" => &["command", "env", "workdir", "duration", "limits"],
        "flash" => &[
            "command",
            "env",
            "workdir",
            "component",
            "version",
            "reboot",
        ],
        _ => &[],
    }
}

/// Parses and validates a plan file. `file` names the file in error messages; every problem
/// found is returned, each with its line and field.
pub fn parse_plan(file: &str, source: &str) -> Result<Plan, SpecErrors> {
    let raw: RawPlan = parse_yaml(file, source)?;
    let mut problems = Problems::new(file);
    if let Some(message) = name_problem("plan", &raw.name.value) {
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
    if let Some(selector) = &raw.selector {
        check_labels(&mut problems, raw.name.referenced, "selector", selector);
    }
    let max_nodes = raw.nodes.as_ref().and_then(|n| max_nodes(&mut problems, n));
    let selection = raw
        .selection
        .as_ref()
        .map(|s| selection(&mut problems, s))
        .unwrap_or_default();
    let max_concurrent = raw
        .max_concurrent
        .as_ref()
        .map(|limits| max_concurrent(&mut problems, limits))
        .unwrap_or_default();
    let reschedule_attempts = raw
        .reschedule
        .as_ref()
        .map(|r| match r.attempts.value.to_u32(MAX_RESCHEDULES) {
            Ok(n) => n,
            Err(message) => {
                problems.add(r.attempts.referenced, "reschedule.attempts", message);
                0
            }
        })
        .unwrap_or_default();
    if raw.steps.value.is_empty() {
        problems.add(
            raw.steps.referenced,
            "steps",
            "a plan needs at least one step",
        );
    }
    if !problems.count(
        raw.steps.referenced,
        "steps",
        &limits::STEPS,
        raw.steps.value.len(),
    ) {
        // Checking each of a huge list would only make a huge answer; the count is the error.
        return Err(problems.into_errors());
    }
    let mut steps = Vec::new();
    for (idx, raw_step) in raw.steps.value.into_iter().enumerate() {
        if let Some(step) = parse_step(&mut problems, idx, raw_step, &steps) {
            steps.push(step);
        }
    }
    let plan = Plan {
        name: raw.name.value,
        description: raw.description.unwrap_or_default(),
        selector: Selector(raw.selector.unwrap_or_default()),
        max_nodes,
        selection,
        max_concurrent,
        reschedule_attempts,
        steps,
    };
    problems.finish(plan)
}

/// `nodes: N`: at least 1.
fn max_nodes(problems: &mut Problems, nodes: &Spanned<RawInt>) -> Option<u32> {
    match nodes.value.to_u32(u32::MAX) {
        Ok(0) => {
            problems.add(
                nodes.referenced,
                "nodes",
                "must be at least 1 (leave it out to use every matching node)",
            );
            None
        }
        Ok(n) => Some(n),
        Err(message) => {
            problems.add(nodes.referenced, "nodes", message);
            None
        }
    }
}

/// `max-concurrent: {LABEL: N}`: label keys, each with at least 1.
fn max_concurrent(
    problems: &mut Problems,
    raw: &Spanned<BTreeMap<String, Spanned<RawInt>>>,
) -> BTreeMap<String, u32> {
    label_limits(
        problems,
        raw,
        "max-concurrent",
        "the most jobs of a run active at once",
    )
}

/// Per-label limits written as `{LABEL: N}` under `field` (a plan's `max-concurrent`, a
/// rollout's `limits.max-concurrent`): label keys, each with at least 1; `what` says what N
/// bounds, for the message.
pub(crate) fn label_limits(
    problems: &mut Problems,
    raw: &Spanned<BTreeMap<String, Spanned<RawInt>>>,
    field: &str,
    what: &str,
) -> BTreeMap<String, u32> {
    if !problems.count(raw.referenced, field, &limits::LABELS, raw.value.len()) {
        return BTreeMap::new();
    }
    let mut limits_of = BTreeMap::new();
    for (key, n) in &raw.value {
        let at = format!("{field}[{}]", limits::truncate(&limits::NAME, key, false));
        if !problems.text(n.referenced, at.clone(), &limits::LABEL_KEY, key) {
            continue;
        }
        match n.value.to_u32(u32::MAX) {
            Ok(0) => problems.add(
                n.referenced,
                at,
                format!("must be at least 1: {what} on nodes sharing one value of the label"),
            ),
            Ok(n) => {
                limits_of.insert(key.clone(), n);
            }
            Err(message) => problems.add(n.referenced, at, message),
        }
    }
    limits_of
}

/// `selection: ready-now` or `ready-and-busy`.
fn selection(problems: &mut Problems, text: &Spanned<String>) -> Selecting {
    text.value.parse().unwrap_or_else(|_| {
        problems.add(
            text.referenced,
            "selection",
            format!(
                "{} is not a selection; give ready-and-busy (every matching node, busy ones \
                 wait; the default) or ready-now (only the nodes ready when the run starts)",
                limits::quote(&text.value)
            ),
        );
        Selecting::default()
    })
}

/// Where one step's problems are reported.
struct StepAt {
    idx: usize,
    /// The location of the step's `kind`, for problems of fields without their own.
    kind: serde_saphyr::Location,
    kind_name: String,
}

impl StepAt {
    /// `steps[IDX].FIELD`.
    fn field(&self, field: &str) -> String {
        format!("steps[{}].{field}", self.idx)
    }
}

/// Parses step `idx`; `None` when its kind is unknown. `earlier` are the steps before it.
fn parse_step(problems: &mut Problems, idx: usize, raw: RawStep, earlier: &[Step]) -> Option<Step> {
    let at = StepAt {
        idx,
        kind: raw.kind.referenced,
        kind_name: raw.kind.value.clone(),
    };
    let name = raw.name.value.clone();
    let name_invalid = name_problem("step", &name);
    if let Some(message) = &name_invalid {
        problems.add(raw.name.referenced, at.field("name"), message.clone());
    }
    if name_invalid.is_none() && earlier.iter().any(|s| s.name == name) {
        problems.add(
            raw.name.referenced,
            at.field("name"),
            format!("step name {} is used twice", limits::quote(&name)),
        );
    }
    let mut timeout = match &raw.timeout {
        None => DEFAULT_TIMEOUT,
        Some(text) => step_duration(problems, text, at.field("timeout")).unwrap_or(DEFAULT_TIMEOUT),
    };
    let retries = match &raw.retries {
        Some(r) => r.value.to_u32(MAX_RETRIES).unwrap_or_else(|message| {
            problems.add(r.referenced, at.field("retries"), message);
            0
        }),
        None => 0,
    };
    check_fields_apply(problems, &at, &raw);
    check_sizes(problems, &at, &raw);
    let kind = match at.kind_name.as_str() {
        "exec" => exec_step(problems, &at, raw),
        "inventory-check" => StepKind::InventoryCheck {
            components: raw.components.map(|c| c.value).unwrap_or_default(),
        },
        "dcgm-diag" => dcgm_diag_step(problems, &at, raw),
        "junit" => junit_step(problems, &at, raw),
        "burn-in" => burn_in_step(problems, &at, raw, &mut timeout),
        "flash" => flash_step(problems, &at, raw),
        other => {
            problems.add(
                at.kind,
                at.field("kind"),
                format!(
                    "unknown step kind {} (expected exec, inventory-check, dcgm-diag, junit, burn-in or flash)",
                    limits::quote(other)
                ),
            );
            return None;
        }
    };
    Some(Step {
        name,
        kind,
        timeout,
        retries,
    })
}

/// A timeout or a duration: `Ok` when usable; `Err(Some(d))` when it is zero or longer than 7
/// days, `Err(None)` when it is not a duration. Each problem is recorded under `field`.
fn step_duration(
    problems: &mut Problems,
    text: &Spanned<String>,
    field: String,
) -> Result<Duration, Option<Duration>> {
    match parse_duration(&text.value) {
        Ok(d) if d.is_zero() => {
            problems.add(text.referenced, field, "must be longer than 0s");
            Err(Some(d))
        }
        Ok(d) if d > MAX_TIMEOUT => {
            problems.add(
                text.referenced,
                field,
                format!(
                    "{} is longer than the limit of 7 days",
                    limits::quote(&text.value)
                ),
            );
            Err(Some(d))
        }
        Ok(d) => Ok(d),
        Err(message) => {
            problems.add(text.referenced, field, message);
            Err(None)
        }
    }
}

/// Refuses the fields the step's kind does not take (an unknown kind is refused by itself).
fn check_fields_apply(problems: &mut Problems, at: &StepAt, raw: &RawStep) {
    let allowed = fields_of(&at.kind_name);
    if allowed.is_empty() {
        return;
    }
    let present = [
        ("command", raw.command.is_some()),
        ("env", raw.env.is_some()),
        ("workdir", raw.workdir.is_some()),
        ("components", raw.components.is_some()),
        ("level", raw.level.is_some()),
        ("tests", raw.tests.is_some()),
        ("report", raw.report.is_some()),
        ("duration", raw.duration.is_some()),
        ("limits", raw.limits.is_some()),
        ("component", raw.component.is_some()),
        ("version", raw.version.is_some()),
        ("reboot", raw.reboot.is_some()),
    ];
    for (field, is_present) in present {
        if is_present && !allowed.contains(&field) {
            problems.add(
                at.kind,
                at.field(field),
                format!("'{field}' does not apply to kind {}", at.kind_name),
            );
        }
    }
}

/// Checks every list and text of a step against its limit.
fn check_sizes(problems: &mut Problems, at: &StepAt, raw: &RawStep) {
    let idx = at.idx;
    let each = |problems: &mut Problems, list: &Spanned<Vec<String>>, field: &str, limit| {
        for (i, text) in list.value.iter().enumerate() {
            problems.text(
                list.referenced,
                format!("steps[{idx}].{field}[{i}]"),
                limit,
                text,
            );
        }
    };
    if let Some(command) = &raw.command
        && problems.count(
            command.referenced,
            at.field("command"),
            &limits::COMMAND_ARGS,
            command.value.len(),
        )
    {
        each(problems, command, "command", &limits::COMMAND_ARG);
    }
    if let Some(env) = &raw.env
        && problems.count(at.kind, at.field("env"), &limits::ENV_VARS, env.len())
    {
        for (key, value) in env {
            let field = format!(
                "steps[{idx}].env[{}]",
                limits::truncate(&limits::NAME, key, false)
            );
            if problems.text(at.kind, field.clone(), &limits::NAME, key) {
                problems.text(at.kind, field, &limits::ENV_VALUE, value);
            }
        }
    }
    if let Some(workdir) = &raw.workdir {
        problems.text(at.kind, at.field("workdir"), &limits::PATH, workdir);
    }
    if let Some(report) = &raw.report {
        problems.text(
            report.referenced,
            at.field("report"),
            &limits::PATH,
            &report.value,
        );
    }
    for (field, list, limit) in [
        ("components", &raw.components, &limits::COMPONENTS),
        ("tests", &raw.tests, &limits::STEP_LIST),
    ] {
        if let Some(list) = list
            && problems.count(list.referenced, at.field(field), limit, list.value.len())
        {
            each(problems, list, field, &limits::NAME);
        }
    }
    if let Some(limits_list) = &raw.limits {
        problems.count(
            limits_list.referenced,
            at.field("limits"),
            &limits::STEP_LIST,
            limits_list.value.len(),
        );
    }
    for (field, text, limit) in [
        ("component", &raw.component, &limits::NAME),
        ("version", &raw.version, &limits::VERSION),
    ] {
        if let Some(text) = text {
            problems.text(text.referenced, at.field(field), limit, &text.value);
        }
    }
}

/// The command a kind needs: a non-empty argv; `example` shows one when it is missing.
fn step_command(
    problems: &mut Problems,
    at: &StepAt,
    command: Option<Spanned<Vec<String>>>,
    example: &str,
) -> Vec<String> {
    match command {
        Some(command) if command.value.is_empty() || command.value[0].trim().is_empty() => {
            problems.add(
                command.referenced,
                at.field("command"),
                "the command is empty; give the program and its arguments as a list",
            );
            Vec::new()
        }
        Some(command) => command.value,
        None => {
            let kind = &at.kind_name;
            let article = if kind.starts_with('e') { "an" } else { "a" };
            problems.add(
                at.kind,
                at.field("command"),
                format!("{article} {kind} step needs a command, for example {example}"),
            );
            Vec::new()
        }
    }
}

fn exec_step(problems: &mut Problems, at: &StepAt, raw: RawStep) -> StepKind {
    StepKind::Exec {
        command: step_command(
            problems,
            at,
            raw.command,
            "command: [sh, -c, \"./stress.sh\"]",
        ),
        env: raw.env.unwrap_or_default(),
        workdir: raw.workdir,
    }
}

fn dcgm_diag_step(problems: &mut Problems, at: &StepAt, raw: RawStep) -> StepKind {
    let level = match &raw.level {
        None => {
            problems.add(
                at.kind,
                at.field("level"),
                "a dcgm-diag step needs a level, 1 to 4 (dcgmi diag -r LEVEL)",
            );
            1
        }
        Some(level) => match level.value.to_u32(u32::from(*DCGM_LEVELS.end())) {
            Ok(value) if DCGM_LEVELS.contains(&(value as u8)) => value as u8,
            _ => {
                let shown = match &level.value {
                    RawInt::Int(value) => value.to_string(),
                    RawInt::Other(text) => text.clone(),
                };
                problems.add(
                    level.referenced,
                    at.field("level"),
                    format!("{shown} is not a dcgmi diag level (1 to 4)"),
                );
                1
            }
        },
    };
    let tests = raw.tests.map(|t| t.value).unwrap_or_default();
    if let Some(bad) = tests
        .iter()
        .find(|t| t.trim().is_empty() || t.contains(','))
    {
        problems.add(
            at.kind,
            at.field("tests"),
            format!(
                "{} is not a test name (one name per list item)",
                limits::quote(bad)
            ),
        );
    }
    // The default `dcgmi diag` command unless one is given.
    let command = match raw.command {
        Some(command) => step_command(problems, at, Some(command), ""),
        None => Vec::new(),
    };
    StepKind::DcgmDiag {
        level,
        tests,
        command,
    }
}

fn junit_step(problems: &mut Problems, at: &StepAt, raw: RawStep) -> StepKind {
    let command = step_command(
        problems,
        at,
        raw.command,
        "command: [pytest, --junitxml=report.xml]",
    );
    let report = match raw.report {
        Some(report) if report.value.trim().is_empty() => {
            problems.add(
                report.referenced,
                at.field("report"),
                "the report path is empty",
            );
            String::new()
        }
        Some(report) => report.value,
        None => {
            problems.add(
                at.kind,
                at.field("report"),
                "a junit step needs the report it writes, for example report: junit.xml (relative to $TOLLGATE_RESULTS_DIR)",
            );
            String::new()
        }
    };
    StepKind::Junit {
        command,
        env: raw.env.unwrap_or_default(),
        workdir: raw.workdir,
        report,
    }
}

/// A burn-in step; its timeout defaults to the duration plus [`DEFAULT_TIMEOUT`], and a given
/// one must be longer than the duration.
fn burn_in_step(
    problems: &mut Problems,
    at: &StepAt,
    raw: RawStep,
    timeout: &mut Duration,
) -> StepKind {
    let command = step_command(problems, at, raw.command, "command: [gpu-burn, \"3600\"]");
    let duration = match &raw.duration {
        None => {
            problems.add(
                at.kind,
                at.field("duration"),
                "a burn-in step needs a duration, for example duration: 1h",
            );
            Duration::ZERO
        }
        Some(text) => match step_duration(problems, text, at.field("duration")) {
            Ok(d) | Err(Some(d)) => d,
            Err(None) => Duration::ZERO,
        },
    };
    match &raw.timeout {
        // The load is stopped at `duration`; the timeout only guards a stop that hangs, so by
        // default it is the duration plus the usual timeout.
        None => *timeout = duration + DEFAULT_TIMEOUT,
        Some(text) if !duration.is_zero() && *timeout <= duration => problems.add(
            text.referenced,
            at.field("timeout"),
            format!(
                "{} is not longer than the duration {}; the timeout must leave time to stop the load",
                text.value,
                format_duration(duration)
            ),
        ),
        Some(_) => {}
    }
    let limits = raw
        .limits
        .map(|l| l.value)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, raw_limit)| telemetry_limit(problems, at, i, raw_limit))
        .collect();
    StepKind::BurnIn {
        command,
        env: raw.env.unwrap_or_default(),
        workdir: raw.workdir,
        duration,
        limits,
    }
}

/// Limit `i` of a burn-in step; `None` when its field is unknown.
fn telemetry_limit(
    problems: &mut Problems,
    at: &StepAt,
    i: usize,
    raw: RawLimit,
) -> Option<TelemetryLimit> {
    let where_ = format!("steps[{}].limits[{i}]", at.idx);
    let location = raw.field.referenced;
    let field = match raw.field.value.parse::<Field>() {
        Err(message) => {
            problems.add(location, format!("{where_}.field"), message);
            return None;
        }
        Ok(field) => field,
    };
    if raw.min.is_none() && raw.max.is_none() {
        problems.add(
            location,
            where_.clone(),
            format!("the limit on {} needs a min, a max or both", field.name()),
        );
    }
    if let (Some(min), Some(max)) = (raw.min, raw.max)
        && min > max
    {
        problems.add(location, where_, format!("min {min} is above max {max}"));
    }
    Some(TelemetryLimit {
        field,
        min: raw.min,
        max: raw.max,
    })
}

fn flash_step(problems: &mut Problems, at: &StepAt, raw: RawStep) -> StepKind {
    let command = step_command(
        problems,
        at,
        raw.command,
        "command: [./flash.sh, vbios.rom]",
    );
    let mut required = |value: Option<Spanned<String>>, field: &str, example: &str| match value {
        Some(text) if !text.value.trim().is_empty() => text.value,
        Some(text) => {
            problems.add(
                text.referenced,
                at.field(field),
                format!("the {field} is empty"),
            );
            String::new()
        }
        None => {
            problems.add(
                at.kind,
                at.field(field),
                format!("a flash step needs a {field}, for example {field}: {example}"),
            );
            String::new()
        }
    };
    let component = required(raw.component, "component", "vbios");
    let version = required(raw.version, "version", "96.00.89.00.01");
    StepKind::Flash {
        command,
        env: raw.env.unwrap_or_default(),
        workdir: raw.workdir,
        component,
        version,
        reboot: raw.reboot.map(|r| r.value).unwrap_or(false),
    }
}

/// Checks a selector's size and the length of each key and value.
pub(crate) fn check_labels(
    problems: &mut Problems,
    location: serde_saphyr::Location,
    field: &str,
    labels: &BTreeMap<String, String>,
) {
    if !problems.count(location, field, &limits::LABELS, labels.len()) {
        return;
    }
    for (key, value) in labels {
        let at = format!("{field}[{}]", limits::truncate(&limits::NAME, key, false));
        if problems.text(location, at.clone(), &limits::LABEL_KEY, key) {
            problems.text(location, at, &limits::LABEL_VALUE, value);
        }
    }
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
    fn selection_keeps_runs_to_ready_nodes_or_says_where_it_is_wrong() {
        let with = |line: &str| GOOD.replace("selector:", &format!("{line}\nselector:"));
        let default = parse_plan("a.yaml", GOOD).expect("valid");
        assert_eq!(default.selection, Selecting::ReadyAndBusy);
        // The canonical form leaves the default out: plans that do not set it keep their
        // versions.
        let canonical = serde_json::to_value(&default).expect("a plan serializes");
        assert!(canonical.get("selection").is_none(), "{canonical}");
        let explicit = parse_plan("b.yaml", &with("selection: ready-and-busy")).expect("valid");
        assert_eq!(explicit.version(), default.version());
        let now = parse_plan("c.yaml", &with("selection: ready-now")).expect("valid");
        assert_eq!(now.selection, Selecting::ReadyNow);
        assert_ne!(now.version(), default.version());
        let errors = parse_plan("d.yaml", &with("selection: idle")).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        let error = &errors.0[0];
        assert_eq!(
            (error.line, error.field.as_str()),
            (3, "selection"),
            "{errors}"
        );
        assert!(
            error.message.contains("'idle' is not a selection")
                && error.message.contains("ready-now"),
            "{errors}"
        );
    }

    #[test]
    fn max_concurrent_limits_jobs_per_label_value_or_says_where_it_is_wrong() {
        let with = |line: &str| GOOD.replace("selector:", &format!("{line}\nselector:"));
        let default = parse_plan("a.yaml", GOOD).expect("valid");
        assert!(default.max_concurrent.is_empty());
        let canonical = serde_json::to_value(&default).expect("a plan serializes");
        assert!(canonical.get("max_concurrent").is_none(), "{canonical}");
        let limited =
            parse_plan("b.yaml", &with("max-concurrent: {rack: 2, pdu: 1}")).expect("valid");
        assert_eq!(
            limited.max_concurrent,
            [("pdu".to_owned(), 1), ("rack".to_owned(), 2)].into()
        );
        assert_ne!(limited.version(), default.version());
        let text = parse_plan("c.yaml", &with("max-concurrent: {rack: 0, pdu: many}"))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("c.yaml:3:24: max-concurrent[rack]: must be at least 1"),
            "{text}"
        );
        assert!(text.contains("max-concurrent[pdu]:"), "{text}");
    }

    #[test]
    fn reschedule_sets_job_level_retries_or_says_where_it_is_wrong() {
        let with = |line: &str| GOOD.replace("selector:", &format!("{line}\nselector:"));
        let default = parse_plan("a.yaml", GOOD).expect("valid");
        assert_eq!(default.reschedule_attempts, 0);
        let canonical = serde_json::to_value(&default).expect("a plan serializes");
        assert!(
            canonical.get("reschedule_attempts").is_none(),
            "{canonical}"
        );
        let twice = parse_plan("b.yaml", &with("reschedule: {attempts: 2}")).expect("valid");
        assert_eq!(twice.reschedule_attempts, 2);
        assert_ne!(twice.version(), default.version());
        for (line, expected) in [
            (
                "reschedule: {attempts: 11}",
                "c.yaml:3:24: reschedule.attempts: 11 is more than the limit of 10",
            ),
            (
                "reschedule: {attempts: -1}",
                "reschedule.attempts: -1 is not a non-negative integer",
            ),
            ("reschedule: {tries: 2}", "unknown field `tries`"),
        ] {
            let text = parse_plan("c.yaml", &with(line)).unwrap_err().to_string();
            assert!(text.contains(expected), "{expected} not in:\n{text}");
        }
    }

    #[test]
    fn integers_out_of_range_name_the_field_and_line() {
        let source = "name: p\nnodes: -3\nsteps:\n  - name: a\n    kind: exec\n    command: [x]\n    retries: -1\n  - name: b\n    kind: dcgm-diag\n    level: 99999999999\n  - {name: c, kind: exec, command: [x], retries: 4294967296}\n  - {name: d, kind: exec, command: [x], retries: lots}\n";
        let text = parse_plan("plan.yaml", source).unwrap_err().to_string();
        for expected in [
            "plan.yaml:2:8: nodes: -3 is not a non-negative integer",
            "plan.yaml:7:14: steps[0].retries: -1 is not a non-negative integer",
            "plan.yaml:10:12: steps[1].level: 99999999999 is not a dcgmi diag level (1 to 4)",
            "plan.yaml:11:",
            "steps[2].retries: 4294967296 is more than the limit of 10",
            "steps[3].retries: 'lots' is not a non-negative integer",
        ] {
            assert!(text.contains(expected), "{expected} not in:\n{text}");
        }
        assert!(!text.contains("invalid"), "{text}");
    }

    #[test]
    fn lists_and_texts_over_their_limits_are_refused_by_name() {
        let long = "x".repeat(100 * 1024);
        let source = format!(
            "name: {long}\ndescription: {long}\nsteps:\n  - name: a\n    kind: exec\n    command: [x, {long}]\n    env: {{A: {long}}}\n    workdir: {long}\n"
        );
        let text = parse_plan("plan.yaml", &source).unwrap_err().to_string();
        for expected in [
            "name: 'xxxx",
            "(102400 bytes) is 102400 bytes, over the limit of 128 bytes (name)",
            "description: ",
            "(description)",
            "steps[0].command[1]: ",
            "(command-arg)",
            "steps[0].env[A]: ",
            "(env-value)",
            "steps[0].workdir: ",
            "(path)",
        ] {
            assert!(text.contains(expected), "{expected} not in the errors");
        }
        assert!(text.len() < 4096, "{} bytes of errors", text.len());

        let mut many = String::from("name: p\nsteps:\n");
        for idx in 0..=limits::STEPS.max {
            many.push_str(&format!("  - {{name: s{idx}, kind: exec, command: [x]}}\n"));
        }
        let text = parse_plan("plan.yaml", &many).unwrap_err().to_string();
        assert_eq!(
            text,
            "plan.yaml:3:3: steps: has 101 entries, over the limit of 100 items (steps); send fewer"
        );
        let huge = format!("name: p\n# {}\n", "x".repeat(limits::SPEC_SOURCE.max));
        let text = parse_plan("plan.yaml", &huge).unwrap_err().to_string();
        assert!(
            text.starts_with("plan.yaml: the file is 1048587 bytes, over the limit of 1048576 bytes (spec-source)"),
            "{text}"
        );
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

    const QUAL: &str = r#"
name: full-qual
steps:
  - {name: diag, kind: dcgm-diag, level: 3, tests: [memory, pcie]}
  - {name: diag-sim, kind: dcgm-diag, level: 2, command: [cat, diag.json]}
  - name: nccl
    kind: junit
    command: [pytest, --junitxml=junit.xml]
    report: junit.xml
  - name: burn
    kind: burn-in
    command: [gpu-burn, "600"]
    duration: 10m
    limits:
      - {field: gpu_temp_c, max: 88}
      - {field: ecc_uncorrected_volatile, max: 0}
      - {field: power_w, min: 100, max: 700}
  - name: vbios
    kind: flash
    command: [./flash.sh]
    component: vbios
    version: 96.00.89.00.01
    reboot: true
"#;

    #[test]
    fn qualification_kinds_parse() {
        let plan = parse_plan("qual.yaml", QUAL).expect("valid plan");
        let kinds: Vec<&str> = plan.steps.iter().map(|s| s.kind.name()).collect();
        assert_eq!(
            kinds,
            ["dcgm-diag", "dcgm-diag", "junit", "burn-in", "flash"]
        );
        let StepKind::DcgmDiag {
            level,
            tests,
            command,
        } = &plan.steps[0].kind
        else {
            panic!("dcgm-diag expected");
        };
        assert_eq!(
            StepKind::dcgm_command(*level, tests, command),
            ["dcgmi", "diag", "-r", "memory,pcie", "-j"]
        );
        assert_eq!(
            StepKind::dcgm_command(3, &[], &[]),
            ["dcgmi", "diag", "-r", "3", "-j"]
        );
        let StepKind::BurnIn {
            duration, limits, ..
        } = &plan.steps[3].kind
        else {
            panic!("burn-in expected");
        };
        assert_eq!(*duration, Duration::from_secs(600));
        assert_eq!(
            plan.steps[3].timeout,
            Duration::from_secs(600) + DEFAULT_TIMEOUT
        );
        assert_eq!(limits.len(), 3);
        assert_eq!(
            limits[0].violation(94.0).as_deref(),
            Some("gpu_temp_c 94 > limit 88")
        );
        assert_eq!(
            limits[2].violation(50.0).as_deref(),
            Some("power_w 50 < limit 100")
        );
        assert_eq!(limits[1].violation(0.0), None);
        assert!(matches!(
            &plan.steps[4].kind,
            StepKind::Flash { component, reboot: true, .. } if component == "vbios"
        ));
    }

    #[test]
    fn qualification_kind_problems_are_located() {
        let source = "name: q\nsteps:\n  - {name: a, kind: dcgm-diag, level: 5}\n  - {name: b, kind: junit, command: [x]}\n  - {name: c, kind: burn-in, command: [x], duration: 1h, timeout: 10m, limits: [{field: gpu_tmp, max: 1}, {field: power_w}]}\n  - {name: d, kind: flash, command: [x], component: vbios, report: x.xml}\n  - {name: e, kind: dcgm-diag}\n";
        let errors = parse_plan("plan.yaml", source).unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("plan.yaml:3:"), "{text}");
        assert!(
            text.contains("steps[0].level: 5 is not a dcgmi diag level"),
            "{text}"
        );
        assert!(
            text.contains("steps[1].report: a junit step needs the report"),
            "{text}"
        );
        assert!(
            text.contains("steps[2].timeout: 10m is not longer than the duration 1h"),
            "{text}"
        );
        assert!(
            text.contains("steps[2].limits[0].field: unknown telemetry field 'gpu_tmp'"),
            "{text}"
        );
        assert!(
            text.contains("steps[2].limits[1]: the limit on power_w needs a min, a max or both"),
            "{text}"
        );
        assert!(
            text.contains("steps[3].version: a flash step needs a version"),
            "{text}"
        );
        assert!(
            text.contains("steps[3].report: 'report' does not apply to kind flash"),
            "{text}"
        );
        assert!(
            text.contains("steps[4].level: a dcgm-diag step needs a level"),
            "{text}"
        );
    }
}
