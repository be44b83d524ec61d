//! The fixed workload that `scripts/callgrind` counts instructions of: a controller store in
//! an in-memory SQLite database takes a run's results as `ReportResult` stores them
//! (`Store::record_result`), the gate is evaluated as the controller does (`evaluate_now`:
//! load the evidence, decide, store the decision), and the decision is rendered as a signed
//! Markdown report over the results read whole again.
//!
//! Deterministic on purpose: fixed names and ids, a manual clock, fixed timestamps, a fixed
//! signing key; one thread drives it (a current-thread runtime, one SQLite connection), so
//! the count moves only when the code does. Small on purpose: it runs under callgrind in CI.
//!
//! ```text
//! cargo build --release -p tollgate-controller --example callgrind-workload
//! valgrind --tool=callgrind ./target/release/examples/callgrind-workload
//! ```

use anyhow::Context as _;
use tollgate_controller::store::{AuditNote, JobRecord, RunPurpose, RunRecord, RunState, Store};
use tollgate_controller::{ControllerConfig, clock::ManualClock, gates, report, shared::Shared};
use tollgate_domain::job::{JobChange, JobState, ResultChange};
use tollgate_domain::plan::{Plan, Step};
use tollgate_domain::result::{Measurement, Outcome, StepResult};
use tollgate_domain::telemetry::{Field, FieldSummary, GpuTelemetry};
use tollgate_domain::test_support::{self as ts, at};
use tollgate_domain::{JobId, NodeId, RunId};

const N_NODES: usize = 16;
const N_STEPS: u32 = 6;
const N_GPUS: u32 = 8;
const MILESTONE: &str = "lab-qual";
const GATE: &str = "milestone: lab-qual
rules:
  - steps-passed: {plan: gpu-qual, steps: [step0, step1, step2, step3, step4, step5], min-fraction: 0.9}
  - measurement: {name: membw_gbps, aggregate: p5, condition: \">= 2800\"}
  - telemetry: {field: gpu_temp_c, aggregate: max, condition: \"< 88\"}
  - no-events: {}
  - inventory-matches-release: {}
";

fn plan() -> Plan {
    let mut plan = ts::plan_for("hgx-h100");
    let template = plan.steps[0].clone();
    plan.steps = (0..N_STEPS)
        .map(|step_idx| Step {
            name: format!("step{step_idx}"),
            ..template.clone()
        })
        .collect();
    plan
}

fn node_name(node_idx: usize) -> String {
    format!("lab-a-n{node_idx:03}")
}

/// One step's result on one node: 8 GPUs × 3 telemetry fields and one measurement; GPU 3 of
/// node 5 runs hot, so the decision has a failure to explain.
fn step_result(node_idx: usize, step_idx: u32) -> StepResult {
    let name = node_name(node_idx);
    let mut inventory = ts::inventory(ts::DRIVER, ts::VBIOS, N_GPUS);
    inventory.hostname = name.clone();
    let start = i64::from(step_idx) * 120;
    let telemetry = (0..N_GPUS)
        .map(|gpu_index| GpuTelemetry {
            gpu_index,
            gpu_uuid: format!("GPU-{name}-{gpu_index}"),
            fields: [Field::GpuTempC, Field::PowerW, Field::SmClockMhz]
                .into_iter()
                .map(|field| {
                    let hot = node_idx == 5 && gpu_index == 3 && field == Field::GpuTempC;
                    let base = 60.0 + f64::from(gpu_index) + (node_idx % 7) as f64;
                    let max = if hot { 93.5 } else { base + 10.0 };
                    FieldSummary {
                        field,
                        min: base - 20.0,
                        max,
                        mean: base,
                        p99: max - 1.0,
                        last: base + 1.0,
                        samples: 120,
                    }
                })
                .collect(),
            samples_missed: 0,
        })
        .collect();
    StepResult {
        job_id: JobId::from(format!("job-{name}")),
        started_at: at(start),
        finished_at: at(start + 110),
        measurements: vec![Measurement {
            name: "membw_gbps".into(),
            value: 2900.0 + (node_idx * 13 % 200) as f64,
            unit: Some("GB/s".into()),
        }],
        telemetry,
        inventory,
        log_tail: "PASS all tests\n".into(),
        message: "exit 0".into(),
        ..ts::step_result(step_idx, 1, Outcome::Passed)
    }
}

/// The change a result makes to its job, running at lease epoch 1.
fn job_change(job: &JobId, to: JobState) -> JobChange {
    JobChange {
        job: job.clone(),
        from: JobState::Running,
        from_epoch: 1,
        to,
        to_epoch: 1,
        node: None,
        reschedule: None,
    }
}

async fn workload() -> anyhow::Result<()> {
    let store = Store::connect("sqlite::memory:").await?;
    let setup = AuditNote::new(at(0), "workload", "workload.setup", "workload");
    let release = ts::release();
    store.create_release(&release, &setup).await?;
    let plan = plan();
    store.put_plan(&plan, "generated", at(0), &setup).await?;
    let policy = tollgate_domain::gate::parse_gate("gate.yaml", GATE)
        .map_err(|errors| anyhow::anyhow!("{errors}"))?;
    store.put_gate(&policy, "gate.yaml", at(0), &setup).await?;
    let mut nodes = Vec::with_capacity(N_NODES);
    for node_idx in 0..N_NODES {
        let node = ts::node(&node_name(node_idx), "hgx-h100");
        let mut inventory = ts::inventory(ts::DRIVER, ts::VBIOS, N_GPUS);
        inventory.hostname = node.id.to_string();
        tollgate_controller::grpc::node::register(
            &store,
            &node.id,
            &node.labels,
            &inventory,
            "token-hash",
            at(0),
        )
        .await?;
        nodes.push(node);
    }
    let run = RunRecord {
        id: RunId::from("run-1"),
        release: release.id.clone(),
        plan_name: plan.name.clone(),
        plan_version: plan.version(),
        milestone: MILESTONE.into(),
        state: RunState::Running,
        created_at: at(0),
        finished_at: None,
        purpose: RunPurpose::Qualification,
    };
    let jobs: Vec<JobRecord> = (0..N_NODES)
        .map(|node_idx| {
            let name = node_name(node_idx);
            JobRecord {
                id: JobId::from(format!("job-{name}")),
                run_id: run.id.clone(),
                node: NodeId::from(name.as_str()),
                state: JobState::Running,
                lease_epoch: 1,
                created_at: at(0),
                updated_at: at(0),
                attempt: 1,
                rescheduled_from: None,
            }
        })
        .collect();
    let note = AuditNote::new(at(0), "workload", "run.start", "run/run-1");
    store.create_run(&run, &jobs, &note).await?;

    // The results, in the order a fleet would send them: every node's step 0, then step 1...
    for step_idx in 0..N_STEPS {
        for node_idx in 0..N_NODES {
            let result = step_result(node_idx, step_idx);
            let to = if step_idx + 1 == N_STEPS {
                JobState::Passed
            } else {
                JobState::Running
            };
            let change = ResultChange {
                job: job_change(&result.job_id, to),
                results_before: step_idx as usize,
            };
            store
                .record_result(&result, &change, at(1000 + i64::from(step_idx)))
                .await?;
        }
    }

    let mut config = ControllerConfig::new(std::path::PathBuf::from("/nonexistent"));
    config.clock = std::sync::Arc::new(ManualClock::new(at(2000)));
    let shared = Shared::new(store.clone(), config);
    let evaluated = gates::evaluate_now(&shared, &release, MILESTONE)
        .await?
        .context("the gate is stored")?;
    let input = report::ReportInput {
        release: release.clone(),
        milestone: MILESTONE.into(),
        policy,
        decision: evaluated.decision.clone(),
        // The gate keeps only what its rules read; a report shows every result whole, read
        // again from the store as `RenderReport` does.
        evidence: store.load_evidence(&release, MILESTONE).await?,
        plans: vec![plan],
        nodes,
        generated_at: at(2000),
        controller_version: "workload".into(),
        waivers: Vec::new(),
        audit_head: None,
        scope: None,
    };
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let rendered = report::render(&input, report::ReportFormat::Markdown, &key);
    println!(
        "{} results, decision {}: {}; report {} bytes",
        N_NODES * N_STEPS as usize,
        evaluated.decision.verdict,
        evaluated.decision.summary,
        rendered.content.len()
    );
    store.close().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(workload())
}
