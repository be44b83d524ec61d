//! Fixture builders for tests in this crate and others: minimal, valid values to adjust with
//! struct update syntax.

use crate::fleet::NodeState;
use crate::fleet::{GpuInfo, GpuSourceKind, Inventory, Labels, Node};
use crate::gate::{Evidence, JobEvidence, RunEvidence};
use crate::job::{JobFacts, JobState};
use crate::plan::{Plan, Step, StepKind};
use crate::release::{Component, Release};
use crate::result::{Measurement, Outcome, StepResult};
use crate::telemetry::{EventKind, Field, FieldSummary, GpuEvent, GpuTelemetry};
use crate::{JobId, NodeId, PlanVersion, ReleaseId, RunId, Timestamp};
use std::time::Duration;

/// The driver version fixtures use.
pub const DRIVER: &str = "550.54.15";
/// The VBIOS version fixtures use.
pub const VBIOS: &str = "96.00.89.00.01";

/// A fixed instant `secs` seconds after 2026-01-01T00:00:00Z.
pub fn at(secs: i64) -> Timestamp {
    chrono::DateTime::from_timestamp(1_767_225_600 + secs, 0).expect("in range")
}

/// A component.
pub fn component(name: &str, version: &str) -> Component {
    Component {
        name: name.into(),
        version: version.into(),
        artifact_uri: None,
        sha256: None,
    }
}

/// An inventory with `n_gpus` GPUs on the given driver and VBIOS.
pub fn inventory(driver: &str, vbios: &str, n_gpus: u32) -> Inventory {
    Inventory {
        driver_version: driver.into(),
        cuda_driver_version: "12.4".into(),
        nvml_version: "12.550.54.15".into(),
        gpus: (0..n_gpus)
            .map(|index| GpuInfo {
                index,
                uuid: format!("GPU-{index:08}"),
                name: "NVIDIA H100 80GB HBM3".into(),
                serial: Some(format!("SIM{index:010}")),
                pci_bus_id: format!("00000000:{:02X}:00.0", 0x18 + index),
                vbios_version: vbios.into(),
                memory_total_mib: 81_559,
                ..GpuInfo::default()
            })
            .collect(),
        gpu_source: GpuSourceKind::Simulated,
        hostname: "sim".into(),
        ..Inventory::default()
    }
}

/// Node ids from names.
pub fn node_ids(names: &[&str]) -> Vec<NodeId> {
    names.iter().map(|name| NodeId::from(*name)).collect()
}

/// A ready, healthy node with `sku` as its only label.
pub fn node(name: &str, sku: &str) -> Node {
    Node {
        id: NodeId::from(name),
        labels: [("sku".to_owned(), sku.to_owned())].into_iter().collect(),
        inventory: inventory(DRIVER, VBIOS, 2),
        ..Node::default()
    }
}

/// A release with the fixture driver and VBIOS.
pub fn release() -> Release {
    Release {
        id: ReleaseId::from("r550"),
        description: String::new(),
        components: vec![component("driver", DRIVER), component("vbios", VBIOS)],
        milestone: "lab-qual".into(),
        created_at: at(0),
        promotions: Vec::new(),
    }
}

/// A plan selecting `sku=<sku>` with one exec step.
pub fn plan_for(sku: &str) -> Plan {
    Plan {
        name: "gpu-qual".into(),
        description: String::new(),
        selector: crate::fleet::Selector(
            [("sku".to_owned(), sku.to_owned())].into_iter().collect(),
        ),
        max_nodes: None,
        selection: Default::default(),
        max_concurrent: Default::default(),
        reschedule_attempts: 0,
        steps: vec![Step {
            name: "stress".into(),
            kind: StepKind::Exec {
                command: vec!["true".into()],
                env: Default::default(),
                workdir: None,
            },
            timeout: Duration::from_secs(60),
            retries: 0,
        }],
    }
}

/// A result of `step_index` (named `step<N>`) on the fixture inventory.
pub fn step_result(step_index: u32, attempt: u32, outcome: Outcome) -> StepResult {
    StepResult {
        job_id: JobId::from("job-1"),
        step_index,
        step_name: format!("step{step_index}"),
        attempt,
        lease_epoch: 1,
        outcome,
        exit_code: Some(if outcome == Outcome::Passed { 0 } else { 1 }),
        started_at: at(10),
        finished_at: at(20),
        measurements: Vec::new(),
        telemetry: Vec::new(),
        events: Vec::new(),
        inventory: inventory(DRIVER, VBIOS, 2),
        log_tail: String::new(),
        message: String::new(),
        sub_results: Vec::new(),
        inventory_at_end: None,
        series: Vec::new(),
    }
}

/// A result named `step_name` carrying a measurement.
pub fn with_measurement(mut result: StepResult, name: &str, value: f64) -> StepResult {
    result.measurements.push(Measurement {
        name: name.into(),
        value,
        unit: None,
    });
    result
}

/// A result carrying one GPU's summary of `field` with the given max (min = max - 10).
pub fn with_telemetry(
    mut result: StepResult,
    gpu_index: u32,
    field: Field,
    max: f64,
) -> StepResult {
    let summary = FieldSummary {
        field,
        min: max - 10.0,
        max,
        mean: max - 5.0,
        p99: max,
        last: max - 1.0,
        samples: 10,
    };
    result.telemetry.push(GpuTelemetry {
        gpu_index,
        gpu_uuid: format!("GPU-{gpu_index:08}"),
        fields: vec![summary],
        samples_missed: 0,
    });
    result
}

/// A result carrying an XID event.
pub fn with_xid(mut result: StepResult, gpu_index: u32, code: i64) -> StepResult {
    result.events.push(GpuEvent {
        gpu_index,
        gpu_uuid: format!("GPU-{gpu_index:08}"),
        kind: EventKind::Xid,
        code,
        at: at(15),
        detail: "test".into(),
    });
    result
}

/// A job of `node` in `state` with `results`.
pub fn job(node: &str, state: JobState, results: Vec<StepResult>) -> JobEvidence {
    let labels: Labels = [("sku".to_owned(), "hgx-h100".to_owned())]
        .into_iter()
        .collect();
    JobEvidence {
        job_id: JobId::from(format!("job-{node}")),
        node: NodeId::from(node),
        labels,
        gpu_source: GpuSourceKind::Simulated,
        state,
        results,
        result_digests: Vec::new(),
    }
}

/// Evidence of one run of plan `gpu-qual` with steps `step0`, `step1`.
pub fn evidence(jobs: Vec<JobEvidence>) -> Evidence {
    Evidence {
        release: release(),
        milestone: "lab-qual".into(),
        baseline: None,
        runs: vec![RunEvidence {
            run_id: RunId::from("run-1"),
            plan_name: "gpu-qual".into(),
            plan_version: PlanVersion::from("abc123"),
            plan_steps: vec!["step0".into(), "step1".into()],
            created_at: at(5),
            jobs,
        }],
    }
}

/// The facts of job `id` of run `run-1` on node `n1` at lease epoch 1, its node in
/// `node_state` with no other active job.
pub fn job_facts(id: &str, state: JobState, node_state: NodeState) -> JobFacts {
    JobFacts {
        id: JobId::from(id),
        run: RunId::from("run-1"),
        node: NodeId::from("n1"),
        state,
        lease_epoch: 1,
        node_state,
        node_has_other_active_job: false,
    }
}

#[cfg(feature = "proptest")]
pub mod arb;

/// XID `code` on GPU 0 of `node`, reported `secs` after [`at`]'s origin outside any step.
pub fn xid(node: &str, code: i64, secs: i64) -> (NodeId, GpuEvent) {
    (
        node.into(),
        GpuEvent {
            gpu_index: 0,
            gpu_uuid: "GPU-0".into(),
            kind: EventKind::Xid,
            code,
            at: at(secs),
            detail: String::new(),
        },
    )
}

/// A gate rule `id` of `kind`, over every node, for every release.
pub fn rule(id: &str, kind: crate::gate::RuleKind) -> crate::gate::Rule {
    crate::gate::Rule {
        id: id.into(),
        kind,
        scope: crate::fleet::Selector::default(),
        since: None,
    }
}

/// A rollout onto the nodes labelled `env=prod`: one wave of every node, procedure
/// `flash-and-soak` (interrupted nodes fail), rollback `flash-previous`, one `no-events` health
/// rule, no soak, no limits.
pub fn rollout_spec() -> crate::rollout::RolloutSpec {
    use crate::rollout::{
        OnInterrupted, Procedure, Rollback, RolloutLimits, RolloutSpec, WaveSpec,
    };
    RolloutSpec {
        name: "prod-h100".into(),
        description: String::new(),
        selector: crate::fleet::Selector([("env".to_owned(), "prod".to_owned())].into()),
        waves: vec![WaveSpec::Percent(100.0)],
        procedure: Procedure {
            plan: "flash-and-soak".into(),
            on_interrupted: OnInterrupted::Fail,
        },
        rollback: Some(Rollback {
            plan: "flash-previous".into(),
        }),
        health: vec![crate::gate::Rule {
            id: "no-events".into(),
            kind: crate::gate::RuleKind::NoEvents {
                xid: crate::gate::CRITICAL_XIDS.to_vec(),
                ecc_uncorrected: true,
                row_remap_failure: true,
                gpu_lost: true,
            },
            scope: crate::fleet::Selector::default(),
            since: None,
        }],
        soak: Duration::ZERO,
        baseline_by_cohort: false,
        limits: RolloutLimits::default(),
    }
}
