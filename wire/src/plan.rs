//! Plans and gates as the controller describes them, plan steps as the agent runs them, and
//! job assignments.

use crate::fields::{FieldErrors, InvalidFields};
use crate::time::timestamp_to_proto;
use crate::{FromProto, ToProto, millis, non_empty, sorted, unsorted};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tollgate_domain::gate::GatePolicy;
use tollgate_domain::plan::{DCGM_LEVELS, DEFAULT_TIMEOUT, Plan, Step, StepKind, TelemetryLimit};
use tollgate_domain::release::Component;
use tollgate_domain::{JobId, PlanVersion, Timestamp};
use tollgate_proto::v1 as proto;

/// A stored plan version on the wire: the plan's name, steps and selector with the version,
/// the YAML it was applied from and when it was first applied.
pub fn plan_to_proto(
    plan: &Plan,
    version: &PlanVersion,
    source: &str,
    created_at: Timestamp,
) -> proto::Plan {
    proto::Plan {
        name: plan.name.clone(),
        version: version.to_string(),
        source: source.to_owned(),
        steps: plan.step_names(),
        selector: unsorted(&plan.selector.0),
        created_at: Some(timestamp_to_proto(created_at)),
    }
}

/// A stored gate policy version on the wire: its milestone and rule ids with the version and
/// the YAML it was applied from.
pub fn gate_policy_to_proto(policy: &GatePolicy, version: &str, source: &str) -> proto::GatePolicy {
    proto::GatePolicy {
        milestone: policy.milestone.clone(),
        version: version.to_owned(),
        source: source.to_owned(),
        rules: policy.rules.iter().map(|rule| rule.id.clone()).collect(),
    }
}

/// The wire's empty working directory means "the agent's default".
fn workdir_to_proto(workdir: &Option<String>) -> String {
    workdir.clone().unwrap_or_default()
}

fn kind_to_proto(kind: &StepKind) -> proto::step_spec::Kind {
    use proto::step_spec::Kind;
    match kind {
        StepKind::Exec {
            command,
            env,
            workdir,
        } => Kind::Exec(proto::ExecStep {
            command: command.clone(),
            env: unsorted(env),
            workdir: workdir_to_proto(workdir),
        }),
        StepKind::InventoryCheck { components } => {
            Kind::InventoryCheck(proto::InventoryCheckStep {
                components: components.clone(),
            })
        }
        StepKind::DcgmDiag {
            level,
            tests,
            command,
        } => Kind::DcgmDiag(proto::DcgmDiagStep {
            level: u32::from(*level),
            tests: tests.clone(),
            command: command.clone(),
        }),
        StepKind::Junit {
            command,
            env,
            workdir,
            report,
        } => Kind::Junit(proto::JunitStep {
            command: command.clone(),
            env: unsorted(env),
            workdir: workdir_to_proto(workdir),
            report: report.clone(),
        }),
        StepKind::BurnIn {
            command,
            env,
            workdir,
            duration,
            limits,
        } => Kind::BurnIn(proto::BurnInStep {
            command: command.clone(),
            env: unsorted(env),
            workdir: workdir_to_proto(workdir),
            duration_ms: millis(*duration),
            limits: limits
                .iter()
                .map(|limit| {
                    let TelemetryLimit { field, min, max } = limit;
                    proto::TelemetryLimit {
                        field: field.name().to_owned(),
                        min: *min,
                        max: *max,
                    }
                })
                .collect(),
        }),
        StepKind::Flash {
            command,
            env,
            workdir,
            component,
            version,
            reboot,
        } => Kind::Flash(proto::FlashStep {
            command: command.clone(),
            env: unsorted(env),
            workdir: workdir_to_proto(workdir),
            component: component.clone(),
            version: version.clone(),
            reboot: *reboot,
        }),
    }
}

/// One plan step as the agent executes it; `index` is its position in the plan.
pub fn step_to_proto(index: u32, step: &Step) -> proto::StepSpec {
    let Step {
        name,
        kind,
        timeout,
        retries,
    } = step;
    proto::StepSpec {
        index,
        name: name.clone(),
        timeout_ms: millis(*timeout),
        retries: *retries,
        kind: Some(kind_to_proto(kind)),
    }
}

/// A command, environment and working directory shared by the kinds that run one.
struct Process {
    command: Vec<String>,
    env: BTreeMap<String, String>,
    workdir: Option<String>,
}

fn process(
    errors: &mut FieldErrors,
    field: &str,
    command: Vec<String>,
    env: HashMap<String, String>,
    workdir: String,
) -> Process {
    if command.is_empty() {
        errors.add(format!("{field}.command"), "is empty");
    }
    Process {
        command,
        env: sorted(env),
        workdir: non_empty(workdir),
    }
}

/// A step kind from the wire: one arm per kind, each checking that kind's fields (long for
/// that reason; the arms share the collected errors).
fn kind_from_proto(
    kind: Option<proto::step_spec::Kind>,
    field: &str,
    errors: &mut FieldErrors,
) -> Option<StepKind> {
    use proto::step_spec::Kind;
    let kind = match kind {
        Some(Kind::Exec(proto::ExecStep {
            command,
            env,
            workdir,
        })) => {
            let Process {
                command,
                env,
                workdir,
            } = process(errors, &format!("{field}.exec"), command, env, workdir);
            StepKind::Exec {
                command,
                env,
                workdir,
            }
        }
        Some(Kind::InventoryCheck(proto::InventoryCheckStep { components })) => {
            StepKind::InventoryCheck { components }
        }
        Some(Kind::DcgmDiag(proto::DcgmDiagStep {
            level,
            tests,
            command,
        })) => {
            let level = u8::try_from(level)
                .ok()
                .filter(|level| DCGM_LEVELS.contains(level));
            let Some(level) = level else {
                errors.add(format!("{field}.dcgm_diag.level"), "is not 1 to 4");
                return None;
            };
            StepKind::DcgmDiag {
                level,
                tests,
                command,
            }
        }
        Some(Kind::Junit(proto::JunitStep {
            command,
            env,
            workdir,
            report,
        })) => {
            let at = format!("{field}.junit");
            let Process {
                command,
                env,
                workdir,
            } = process(errors, &at, command, env, workdir);
            errors.non_blank(&format!("{at}.report"), &report);
            StepKind::Junit {
                command,
                env,
                workdir,
                report,
            }
        }
        Some(Kind::BurnIn(burn_in)) => burn_in_from_proto(burn_in, field, errors),
        Some(Kind::Flash(proto::FlashStep {
            command,
            env,
            workdir,
            component,
            version,
            reboot,
        })) => {
            let at = format!("{field}.flash");
            let Process {
                command,
                env,
                workdir,
            } = process(errors, &at, command, env, workdir);
            errors.non_blank(&format!("{at}.component"), &component);
            errors.non_blank(&format!("{at}.version"), &version);
            StepKind::Flash {
                command,
                env,
                workdir,
                component,
                version,
                reboot,
            }
        }
        None => {
            errors.add(format!("{field}.kind"), "is missing");
            return None;
        }
    };
    Some(kind)
}

fn burn_in_from_proto(
    burn_in: proto::BurnInStep,
    field: &str,
    errors: &mut FieldErrors,
) -> StepKind {
    let proto::BurnInStep {
        command,
        env,
        workdir,
        duration_ms,
        limits,
    } = burn_in;
    let at = format!("{field}.burn_in");
    let Process {
        command,
        env,
        workdir,
    } = process(errors, &at, command, env, workdir);
    if duration_ms == 0 {
        errors.add(
            format!("{at}.duration_ms"),
            "is 0; a burn-in runs for a while",
        );
    }
    let limits = limits
        .into_iter()
        .enumerate()
        .filter_map(|(idx, limit)| {
            let proto::TelemetryLimit { field, min, max } = limit;
            let field = errors.keyword(&format!("{at}.limits[{idx}].field"), &field)?;
            Some(TelemetryLimit { field, min, max })
        })
        .collect();
    StepKind::BurnIn {
        command,
        env,
        workdir,
        duration: Duration::from_millis(duration_ms),
        limits,
    }
}

/// One step of an assignment with its position in the plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssignedStep {
    /// Position in the plan, from 0.
    pub index: u32,
    /// The step.
    pub step: Step,
}

/// A step the agent can run, from its wire form; bad fields are recorded under `field`.
fn step_from_proto(
    spec: proto::StepSpec,
    field: &str,
    errors: &mut FieldErrors,
) -> Option<AssignedStep> {
    let proto::StepSpec {
        index,
        name,
        timeout_ms,
        retries,
        kind,
    } = spec;
    let kind = kind_from_proto(kind, field, errors)?;
    Some(AssignedStep {
        index,
        step: Step {
            name,
            kind,
            // The controller always sends one; 0 would kill every attempt at once.
            timeout: if timeout_ms == 0 {
                DEFAULT_TIMEOUT
            } else {
                Duration::from_millis(timeout_ms)
            },
            retries,
        },
    })
}

/// A job the controller assigned to a node, as the agent runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The job.
    pub job_id: JobId,
    /// The run it belongs to.
    pub run_id: String,
    /// Fencing token every result carries.
    pub lease_epoch: u64,
    /// The release under test.
    pub release: String,
    /// What the node must be running.
    pub components: Vec<Component>,
    /// The milestone the run qualifies for.
    pub milestone: String,
    /// Plan name.
    pub plan_name: String,
    /// Plan version.
    pub plan_version: String,
    /// Steps, in order.
    pub steps: Vec<AssignedStep>,
}

impl FromProto for Assignment {
    type Proto = proto::AssignJob;
    fn from_proto(assignment: proto::AssignJob) -> Result<Self, InvalidFields> {
        let proto::AssignJob {
            job_id,
            run_id,
            lease_epoch,
            release,
            components,
            milestone,
            plan_name,
            plan_version,
            steps,
        } = assignment;
        let mut errors = FieldErrors::new();
        errors.non_blank("job_id", &job_id);
        let steps = steps
            .into_iter()
            .enumerate()
            .filter_map(|(idx, spec)| step_from_proto(spec, &format!("steps[{idx}]"), &mut errors))
            .collect();
        errors.finish(Assignment {
            job_id: JobId::new(job_id),
            run_id,
            lease_epoch,
            release,
            components: components
                .into_iter()
                .map(crate::release::component_from_proto)
                .collect(),
            milestone,
            plan_name,
            plan_version,
            steps,
        })
    }
}

impl ToProto for Assignment {
    type Proto = proto::AssignJob;
    fn to_proto(&self) -> proto::AssignJob {
        let Assignment {
            job_id,
            run_id,
            lease_epoch,
            release,
            components,
            milestone,
            plan_name,
            plan_version,
            steps,
        } = self;
        proto::AssignJob {
            job_id: job_id.to_string(),
            run_id: run_id.clone(),
            lease_epoch: *lease_epoch,
            release: release.clone(),
            components: components.iter().map(ToProto::to_proto).collect(),
            milestone: milestone.clone(),
            plan_name: plan_name.clone(),
            plan_version: plan_version.clone(),
            steps: steps
                .iter()
                .map(|AssignedStep { index, step }| step_to_proto(*index, step))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_steps_reach_the_agent_with_their_limits() {
        let plan = tollgate_domain::plan::parse_plan(
            "p.yaml",
            "name: p\nsteps:\n  - {name: v, kind: inventory-check, components: [driver]}\n  - {name: s, kind: exec, command: [sh, -c, 'true'], env: {A: b}, timeout: 90s, retries: 2}\n",
        )
        .expect("valid plan");
        let specs: Vec<proto::StepSpec> = plan
            .steps
            .iter()
            .enumerate()
            .map(|(idx, step)| step_to_proto(idx as u32, step))
            .collect();
        assert_eq!(specs[0].index, 0);
        assert_eq!(
            specs[0].kind,
            Some(proto::step_spec::Kind::InventoryCheck(
                proto::InventoryCheckStep {
                    components: vec!["driver".into()]
                }
            ))
        );
        assert_eq!(
            (specs[1].index, specs[1].timeout_ms, specs[1].retries),
            (1, 90_000, 2)
        );
        let Some(proto::step_spec::Kind::Exec(exec)) = &specs[1].kind else {
            panic!("exec step expected: {:?}", specs[1].kind);
        };
        assert_eq!(exec.command, ["sh", "-c", "true"]);
        assert_eq!(exec.env.get("A").map(String::as_str), Some("b"));
        assert_eq!(exec.workdir, "");
    }

    fn spec(index: u32, kind: proto::step_spec::Kind) -> proto::StepSpec {
        proto::StepSpec {
            index,
            name: format!("s{index}"),
            timeout_ms: 60_000,
            kind: Some(kind),
            ..proto::StepSpec::default()
        }
    }

    #[test]
    fn assignments_become_jobs_and_bad_steps_are_named() {
        use proto::step_spec::Kind;
        let assignment = proto::AssignJob {
            job_id: "job-1".into(),
            lease_epoch: 2,
            components: vec![proto::Component {
                name: "driver".into(),
                version: "550.54.15".into(),
                ..proto::Component::default()
            }],
            steps: vec![
                spec(
                    0,
                    Kind::Exec(proto::ExecStep {
                        command: vec!["true".into()],
                        ..proto::ExecStep::default()
                    }),
                ),
                proto::StepSpec {
                    timeout_ms: 0,
                    ..spec(
                        1,
                        Kind::InventoryCheck(proto::InventoryCheckStep::default()),
                    )
                },
            ],
            ..proto::AssignJob::default()
        };
        let job = Assignment::from_proto(assignment.clone()).expect("valid");
        assert_eq!(job.steps.len(), 2);
        assert_eq!(job.steps[0].step.timeout, Duration::from_secs(60));
        assert_eq!(job.steps[1].step.timeout, DEFAULT_TIMEOUT);
        assert_eq!(job.components[0].artifact_uri, None);

        let mut broken = assignment;
        broken.job_id = String::new();
        broken.steps[0].kind = Some(Kind::Exec(proto::ExecStep::default()));
        broken.steps[1].kind = None;
        let error = Assignment::from_proto(broken).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid request: job_id: is empty; steps[0].exec.command: is empty; steps[1].kind: is missing"
        );
    }

    #[test]
    fn qualification_kinds_convert_and_bad_ones_are_named() {
        use proto::step_spec::Kind;
        let assignment = proto::AssignJob {
            job_id: "job-1".into(),
            steps: vec![
                spec(
                    0,
                    Kind::DcgmDiag(proto::DcgmDiagStep {
                        level: 3,
                        tests: vec!["memory".into()],
                        command: Vec::new(),
                    }),
                ),
                spec(
                    1,
                    Kind::Junit(proto::JunitStep {
                        command: vec!["pytest".into()],
                        report: "junit.xml".into(),
                        ..proto::JunitStep::default()
                    }),
                ),
                spec(
                    2,
                    Kind::BurnIn(proto::BurnInStep {
                        command: vec!["gpu-burn".into()],
                        duration_ms: 1500,
                        limits: vec![proto::TelemetryLimit {
                            field: "gpu_temp_c".into(),
                            min: None,
                            max: Some(88.0),
                        }],
                        ..proto::BurnInStep::default()
                    }),
                ),
                spec(
                    3,
                    Kind::Flash(proto::FlashStep {
                        command: vec!["./flash.sh".into()],
                        component: "vbios".into(),
                        version: "96.00.89.00.01".into(),
                        ..proto::FlashStep::default()
                    }),
                ),
            ],
            ..proto::AssignJob::default()
        };
        let job = Assignment::from_proto(assignment.clone()).expect("valid");
        let kinds: Vec<&str> = job.steps.iter().map(|s| s.step.kind.name()).collect();
        assert_eq!(kinds, ["dcgm-diag", "junit", "burn-in", "flash"]);
        let StepKind::BurnIn {
            duration, limits, ..
        } = &job.steps[2].step.kind
        else {
            panic!("burn-in expected");
        };
        assert_eq!(*duration, Duration::from_millis(1500));
        assert_eq!(
            limits[0].violation(90.0).as_deref(),
            Some("gpu_temp_c 90 > limit 88")
        );

        let mut broken = assignment;
        broken.steps[0].kind = Some(Kind::DcgmDiag(proto::DcgmDiagStep {
            level: 7,
            ..proto::DcgmDiagStep::default()
        }));
        broken.steps[2].kind = Some(Kind::BurnIn(proto::BurnInStep {
            command: vec!["x".into()],
            limits: vec![proto::TelemetryLimit {
                field: "gpu_tmp".into(),
                ..proto::TelemetryLimit::default()
            }],
            ..proto::BurnInStep::default()
        }));
        broken.steps[3].kind = Some(Kind::Flash(proto::FlashStep {
            command: vec!["./flash.sh".into()],
            ..proto::FlashStep::default()
        }));
        let error = Assignment::from_proto(broken).unwrap_err();
        assert_eq!(
            error.fields(),
            [
                "steps[0].dcgm_diag.level",
                "steps[2].burn_in.duration_ms",
                "steps[2].burn_in.limits[0].field",
                "steps[3].flash.component",
                "steps[3].flash.version",
            ]
        );
        assert!(
            error
                .to_string()
                .contains("unknown telemetry field 'gpu_tmp'"),
            "{error}"
        );
    }
}
