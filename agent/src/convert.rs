//! The agent's one place for proto ↔ domain conversion. Every message is destructured field by
//! field, so a field added to the proto fails to compile here until it is handled.

use crate::runner::{Job, JobStep};
use std::collections::BTreeMap;
use std::time::Duration;
use tollgate_domain::fleet::{GpuInfo, GpuSourceKind, Inventory};
use tollgate_domain::limits;
use tollgate_domain::plan::{DEFAULT_TIMEOUT, Step, StepKind};
use tollgate_domain::release::Component;
use tollgate_domain::result::{Measurement, Outcome, StepResult};
use tollgate_domain::telemetry::{FieldSummary, GpuEvent, GpuTelemetry};
use tollgate_domain::{JobId, Timestamp};
use tollgate_proto::v1;

/// A controller message the agent cannot act on; names every bad field.
#[derive(Debug, thiserror::Error)]
#[error("invalid {message}: {}", .problems.join("; "))]
pub struct ConvertError {
    /// The message kind.
    pub message: &'static str,
    /// One entry per bad field.
    pub problems: Vec<String>,
}

/// A domain timestamp on the wire.
pub fn timestamp(at: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A wire timestamp in the domain; `None` when absent or out of range.
pub fn timestamp_from(at: Option<&prost_types::Timestamp>) -> Option<Timestamp> {
    let at = at?;
    chrono::DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).ok()?)
}

/// The wire outcome.
pub fn outcome(outcome: Outcome) -> v1::Outcome {
    match outcome {
        Outcome::Passed => v1::Outcome::Passed,
        Outcome::Failed => v1::Outcome::Failed,
        Outcome::Error => v1::Outcome::Error,
        Outcome::Skipped => v1::Outcome::Skipped,
        Outcome::Lost => v1::Outcome::Lost,
    }
}

/// The wire inventory.
pub fn inventory(inventory: &Inventory) -> v1::Inventory {
    let Inventory {
        driver_version,
        cuda_driver_version,
        nvml_version,
        gpus,
        components,
        gpu_source,
        hostname,
    } = inventory;
    v1::Inventory {
        driver_version: driver_version.clone(),
        cuda_driver_version: cuda_driver_version.clone(),
        nvml_version: nvml_version.clone(),
        gpus: gpus.iter().map(gpu_info).collect(),
        components: components
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        gpu_source: gpu_source.as_str().to_owned(),
        hostname: hostname.clone(),
    }
}

fn gpu_info(gpu: &GpuInfo) -> v1::GpuInfo {
    let GpuInfo {
        index,
        uuid,
        name,
        serial,
        board_part_number,
        pci_bus_id,
        vbios_version,
        inforom_version,
        memory_total_mib,
        ecc_enabled,
        power_limit_w,
        max_pcie_gen,
        max_pcie_width,
    } = gpu;
    v1::GpuInfo {
        index: *index,
        uuid: uuid.clone(),
        name: name.clone(),
        serial: serial.clone(),
        board_part_number: board_part_number.clone(),
        pci_bus_id: pci_bus_id.clone(),
        vbios_version: vbios_version.clone(),
        inforom_version: inforom_version.clone(),
        memory_total_mib: *memory_total_mib,
        ecc_enabled: *ecc_enabled,
        power_limit_w: *power_limit_w,
        max_pcie_gen: *max_pcie_gen,
        max_pcie_width: *max_pcie_width,
    }
}

/// A wire inventory in the domain (used to read back what the agent sent).
pub fn inventory_from(wire: &v1::Inventory) -> Result<Inventory, ConvertError> {
    let v1::Inventory {
        driver_version,
        cuda_driver_version,
        nvml_version,
        gpus,
        components,
        gpu_source,
        hostname,
    } = wire;
    let gpu_source: GpuSourceKind = gpu_source.parse().map_err(|problem| ConvertError {
        message: "Inventory",
        problems: vec![format!("gpu_source: {problem}")],
    })?;
    Ok(Inventory {
        driver_version: driver_version.clone(),
        cuda_driver_version: cuda_driver_version.clone(),
        nvml_version: nvml_version.clone(),
        gpus: gpus
            .iter()
            .map(|gpu| {
                let v1::GpuInfo {
                    index,
                    uuid,
                    name,
                    serial,
                    board_part_number,
                    pci_bus_id,
                    vbios_version,
                    inforom_version,
                    memory_total_mib,
                    ecc_enabled,
                    power_limit_w,
                    max_pcie_gen,
                    max_pcie_width,
                } = gpu;
                GpuInfo {
                    index: *index,
                    uuid: uuid.clone(),
                    name: name.clone(),
                    serial: serial.clone(),
                    board_part_number: board_part_number.clone(),
                    pci_bus_id: pci_bus_id.clone(),
                    vbios_version: vbios_version.clone(),
                    inforom_version: inforom_version.clone(),
                    memory_total_mib: *memory_total_mib,
                    ecc_enabled: *ecc_enabled,
                    power_limit_w: *power_limit_w,
                    max_pcie_gen: *max_pcie_gen,
                    max_pcie_width: *max_pcie_width,
                }
            })
            .collect(),
        components: components
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        gpu_source,
        hostname: hostname.clone(),
    })
}

fn measurement(measurement: &Measurement) -> v1::Measurement {
    let Measurement { name, value, unit } = measurement;
    v1::Measurement {
        name: name.clone(),
        value: *value,
        unit: unit.clone().unwrap_or_default(),
    }
}

fn field_summary(summary: &FieldSummary) -> v1::FieldSummary {
    let FieldSummary {
        field,
        min,
        max,
        mean,
        p99,
        last,
        samples,
    } = summary;
    v1::FieldSummary {
        field: field.name().to_owned(),
        min: *min,
        max: *max,
        mean: *mean,
        p99: *p99,
        last: *last,
        samples: *samples,
    }
}

fn gpu_telemetry(telemetry: &GpuTelemetry) -> v1::GpuTelemetry {
    let GpuTelemetry {
        gpu_index,
        gpu_uuid,
        fields,
        samples_missed,
    } = telemetry;
    v1::GpuTelemetry {
        gpu_index: *gpu_index,
        gpu_uuid: gpu_uuid.clone(),
        fields: fields.iter().map(field_summary).collect(),
        samples_missed: *samples_missed,
    }
}

/// The wire event.
pub fn gpu_event(event: &GpuEvent) -> v1::GpuEvent {
    let GpuEvent {
        gpu_index,
        gpu_uuid,
        kind,
        code,
        at,
        detail,
    } = event;
    v1::GpuEvent {
        gpu_index: *gpu_index,
        gpu_uuid: gpu_uuid.clone(),
        kind: kind.as_str().to_owned(),
        code: *code,
        at: Some(timestamp(*at)),
        detail: limits::truncate(&limits::MESSAGE, detail, false),
    }
}

/// The wire step result. Free texts are trimmed to the controller's limits (the log tail keeps
/// its end), so a chatty step never gets its result refused; the spooled copy keeps them whole.
pub fn step_result(result: &StepResult) -> v1::StepResult {
    let StepResult {
        job_id,
        step_index,
        step_name,
        attempt,
        lease_epoch,
        outcome: result_outcome,
        exit_code,
        started_at,
        finished_at,
        measurements,
        telemetry,
        events,
        inventory: observed,
        log_tail,
        message,
        sub_results,
        inventory_at_end,
        series,
    } = result;
    v1::StepResult {
        job_id: job_id.to_string(),
        step_index: *step_index,
        step_name: step_name.clone(),
        attempt: *attempt,
        lease_epoch: *lease_epoch,
        outcome: outcome(*result_outcome) as i32,
        exit_code: *exit_code,
        started_at: Some(timestamp(*started_at)),
        finished_at: Some(timestamp(*finished_at)),
        measurements: measurements.iter().map(measurement).collect(),
        telemetry: telemetry.iter().map(gpu_telemetry).collect(),
        events: events.iter().map(gpu_event).collect(),
        inventory: Some(inventory(observed)),
        log_tail: limits::truncate(&limits::LOG_TAIL, log_tail, true),
        message: limits::truncate(&limits::MESSAGE, message, false),
        sub_results: sub_results.iter().map(sub_result).collect(),
        inventory_at_end: inventory_at_end.as_ref().map(inventory),
        series: series.iter().map(telemetry_series).collect(),
    }
}

fn telemetry_series(series: &tollgate_domain::telemetry::TelemetrySeries) -> v1::TelemetrySeries {
    v1::TelemetrySeries {
        gpu_index: series.gpu_index,
        field: series.field.name().to_owned(),
        bucket_ms: series.bucket_ms,
        points: series
            .points
            .iter()
            .map(|point| v1::SeriesPoint {
                offset_ms: point.offset_ms,
                mean: point.mean,
                min: point.min,
                max: point.max,
                samples: point.samples,
            })
            .collect(),
    }
}

/// The wire form of a parser's per-test result.
fn sub_result(sub: &tollgate_domain::result::SubResult) -> v1::SubResult {
    v1::SubResult {
        source: sub.source.clone(),
        suite: sub.suite.clone(),
        name: sub.name.clone(),
        gpu_index: sub.gpu_index,
        outcome: outcome(sub.outcome) as i32,
        message: limits::truncate(&limits::MESSAGE, &sub.message, false),
        level: sub.level.map(u32::from),
    }
}

/// An assignment as a runnable job. Every bad step is named.
pub fn job(assignment: v1::AssignJob) -> Result<Job, ConvertError> {
    let v1::AssignJob {
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
    let mut problems = Vec::new();
    if job_id.is_empty() {
        problems.push("job_id: empty".to_owned());
    }
    let mut job_steps = Vec::new();
    for (position, spec) in steps.into_iter().enumerate() {
        let v1::StepSpec {
            index,
            name,
            timeout_ms,
            retries,
            kind,
        } = spec;
        let kind = match kind {
            Some(v1::step_spec::Kind::Exec(v1::ExecStep {
                command,
                env,
                workdir,
            })) => {
                if command.is_empty() {
                    problems.push(format!("steps[{position}].exec.command: empty"));
                }
                StepKind::Exec {
                    command,
                    env: env.into_iter().collect(),
                    workdir: (!workdir.is_empty()).then_some(workdir),
                }
            }
            Some(v1::step_spec::Kind::InventoryCheck(v1::InventoryCheckStep { components })) => {
                StepKind::InventoryCheck { components }
            }
            Some(v1::step_spec::Kind::DcgmDiag(v1::DcgmDiagStep {
                level,
                tests,
                command,
            })) => {
                let level = u8::try_from(level)
                    .ok()
                    .filter(|level| tollgate_domain::plan::DCGM_LEVELS.contains(level));
                let Some(level) = level else {
                    problems.push(format!("steps[{position}].dcgm_diag.level: not 1 to 4"));
                    continue;
                };
                StepKind::DcgmDiag {
                    level,
                    tests,
                    command,
                }
            }
            Some(v1::step_spec::Kind::Junit(v1::JunitStep {
                command,
                env,
                workdir,
                report,
            })) => {
                if command.is_empty() {
                    problems.push(format!("steps[{position}].junit.command: empty"));
                }
                if report.is_empty() {
                    problems.push(format!("steps[{position}].junit.report: empty"));
                }
                StepKind::Junit {
                    command,
                    env: env.into_iter().collect(),
                    workdir: (!workdir.is_empty()).then_some(workdir),
                    report,
                }
            }
            Some(v1::step_spec::Kind::BurnIn(v1::BurnInStep {
                command,
                env,
                workdir,
                duration_ms,
                limits,
            })) => {
                if command.is_empty() {
                    problems.push(format!("steps[{position}].burn_in.command: empty"));
                }
                if duration_ms == 0 {
                    problems.push(format!("steps[{position}].burn_in.duration_ms: 0"));
                }
                let mut domain_limits = Vec::new();
                for (limit_idx, limit) in limits.into_iter().enumerate() {
                    match limit.field.parse::<tollgate_domain::telemetry::Field>() {
                        Ok(field) => domain_limits.push(tollgate_domain::plan::TelemetryLimit {
                            field,
                            min: limit.min,
                            max: limit.max,
                        }),
                        Err(message) => problems.push(format!(
                            "steps[{position}].burn_in.limits[{limit_idx}].field: {message}"
                        )),
                    }
                }
                StepKind::BurnIn {
                    command,
                    env: env.into_iter().collect(),
                    workdir: (!workdir.is_empty()).then_some(workdir),
                    duration: std::time::Duration::from_millis(duration_ms),
                    limits: domain_limits,
                }
            }
            Some(v1::step_spec::Kind::Flash(v1::FlashStep {
                command,
                env,
                workdir,
                component,
                version,
                reboot,
            })) => {
                if command.is_empty() {
                    problems.push(format!("steps[{position}].flash.command: empty"));
                }
                if component.is_empty() || version.is_empty() {
                    problems.push(format!(
                        "steps[{position}].flash: component and version are required"
                    ));
                }
                StepKind::Flash {
                    command,
                    env: env.into_iter().collect(),
                    workdir: (!workdir.is_empty()).then_some(workdir),
                    component,
                    version,
                    reboot,
                }
            }
            None => {
                problems.push(format!("steps[{position}].kind: missing"));
                continue;
            }
        };
        job_steps.push(JobStep {
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
        });
    }
    if !problems.is_empty() {
        return Err(ConvertError {
            message: "AssignJob",
            problems,
        });
    }
    Ok(Job {
        job_id: JobId::new(job_id),
        run_id,
        lease_epoch,
        release,
        components: components
            .into_iter()
            .map(|component| {
                let v1::Component {
                    name,
                    version,
                    artifact_uri,
                    sha256,
                } = component;
                Component {
                    name,
                    version,
                    artifact_uri: (!artifact_uri.is_empty()).then_some(artifact_uri),
                    sha256: (!sha256.is_empty()).then_some(sha256),
                }
            })
            .collect(),
        milestone,
        plan_name,
        plan_version,
        steps: job_steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::GpuSource;
    use crate::gpu::simulated::{SimConfig, SimulatedSource};

    #[test]
    fn inventory_round_trips() {
        let source = SimulatedSource::new(SimConfig {
            node: "n1".into(),
            seed: Some(1),
            n_gpus: 2,
            driver: "550.54.15".into(),
            vbios: "96.00.89.00.01".into(),
            faults: vec![],
        });
        let mut observed = source.inventory().unwrap();
        observed
            .components
            .insert("cx7-fw".into(), "28.39.1002".into());
        observed.gpus[1].serial = None;
        let wire = inventory(&observed);
        assert_eq!(wire.gpu_source, "simulated");
        assert_eq!(inventory_from(&wire).unwrap(), observed);
    }

    #[test]
    fn results_are_sent_within_the_controllers_text_limits() {
        let mut result = tollgate_domain::test_support::step_result(0, 1, Outcome::Failed);
        result.log_tail = format!("{}last line", "x".repeat(2 * limits::LOG_TAIL.max));
        result.message = "m".repeat(2 * limits::MESSAGE.max);
        let wire = step_result(&result);
        assert_eq!(wire.log_tail.len(), limits::LOG_TAIL.max);
        assert!(wire.log_tail.ends_with("last line"));
        assert_eq!(wire.message.len(), limits::MESSAGE.max);
    }

    #[test]
    fn timestamps_round_trip() {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 123_000_000).unwrap();
        assert_eq!(timestamp_from(Some(&timestamp(at))), Some(at));
    }

    #[test]
    fn assignments_become_jobs_and_bad_steps_are_named() {
        let assignment = v1::AssignJob {
            job_id: "job-1".into(),
            lease_epoch: 2,
            components: vec![v1::Component {
                name: "driver".into(),
                version: "550.54.15".into(),
                ..v1::Component::default()
            }],
            steps: vec![
                v1::StepSpec {
                    index: 0,
                    name: "bw".into(),
                    timeout_ms: 120_000,
                    retries: 1,
                    kind: Some(v1::step_spec::Kind::Exec(v1::ExecStep {
                        command: vec!["true".into()],
                        ..v1::ExecStep::default()
                    })),
                },
                v1::StepSpec {
                    index: 1,
                    name: "inv".into(),
                    kind: Some(v1::step_spec::Kind::InventoryCheck(
                        v1::InventoryCheckStep::default(),
                    )),
                    ..v1::StepSpec::default()
                },
            ],
            ..v1::AssignJob::default()
        };
        let job = job(assignment.clone()).unwrap();
        assert_eq!(job.steps.len(), 2);
        assert_eq!(job.steps[0].step.timeout, Duration::from_secs(120));
        assert_eq!(job.steps[1].step.timeout, DEFAULT_TIMEOUT);
        assert_eq!(job.components[0].artifact_uri, None);

        let mut broken = assignment;
        broken.steps[0].kind = Some(v1::step_spec::Kind::Exec(v1::ExecStep::default()));
        broken.steps[1].kind = None;
        let error = super::job(broken).unwrap_err().to_string();
        assert_eq!(
            error,
            "invalid AssignJob: steps[0].exec.command: empty; steps[1].kind: missing"
        );
    }

    #[test]
    fn qualification_kinds_convert_and_bad_ones_are_named() {
        let spec = |index: u32, kind: v1::step_spec::Kind| v1::StepSpec {
            index,
            name: format!("s{index}"),
            timeout_ms: 60_000,
            kind: Some(kind),
            ..v1::StepSpec::default()
        };
        let assignment = v1::AssignJob {
            job_id: "job-1".into(),
            steps: vec![
                spec(
                    0,
                    v1::step_spec::Kind::DcgmDiag(v1::DcgmDiagStep {
                        level: 3,
                        tests: vec!["memory".into()],
                        command: Vec::new(),
                    }),
                ),
                spec(
                    1,
                    v1::step_spec::Kind::Junit(v1::JunitStep {
                        command: vec!["pytest".into()],
                        report: "junit.xml".into(),
                        ..v1::JunitStep::default()
                    }),
                ),
                spec(
                    2,
                    v1::step_spec::Kind::BurnIn(v1::BurnInStep {
                        command: vec!["gpu-burn".into()],
                        duration_ms: 1500,
                        limits: vec![v1::TelemetryLimit {
                            field: "gpu_temp_c".into(),
                            min: None,
                            max: Some(88.0),
                        }],
                        ..v1::BurnInStep::default()
                    }),
                ),
                spec(
                    3,
                    v1::step_spec::Kind::Flash(v1::FlashStep {
                        command: vec!["./flash.sh".into()],
                        component: "vbios".into(),
                        version: "96.00.89.00.01".into(),
                        ..v1::FlashStep::default()
                    }),
                ),
            ],
            ..v1::AssignJob::default()
        };
        let job = job(assignment.clone()).unwrap();
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
        broken.steps[0].kind = Some(v1::step_spec::Kind::DcgmDiag(v1::DcgmDiagStep {
            level: 7,
            ..v1::DcgmDiagStep::default()
        }));
        broken.steps[2].kind = Some(v1::step_spec::Kind::BurnIn(v1::BurnInStep {
            command: vec!["x".into()],
            limits: vec![v1::TelemetryLimit {
                field: "gpu_tmp".into(),
                ..v1::TelemetryLimit::default()
            }],
            ..v1::BurnInStep::default()
        }));
        let error = super::job(broken).unwrap_err().to_string();
        assert!(
            error.contains("steps[0].dcgm_diag.level: not 1 to 4"),
            "{error}"
        );
        assert!(
            error.contains("steps[2].burn_in.limits[0].field: unknown telemetry field 'gpu_tmp'"),
            "{error}"
        );
    }
}
