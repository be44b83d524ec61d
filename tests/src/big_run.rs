//! A run the size of a large lab, written straight into a controller's store: `n_nodes`
//! registered nodes with eight GPUs each, one run with a job per node, every job with a result
//! per step (measurements, per-GPU telemetry, tests), some of them failing, and a gate over
//! them. The answers about it are then read through the real gRPC server and CLI; only the
//! seeding skips the agents, which would take minutes at this size.

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use std::collections::BTreeSet;
use tollgate_controller::store::{AuditNote, JobRecord, RunPurpose, RunRecord, RunState, Store};
use tollgate_domain::job::{JobChange, JobState, ResultChange};
use tollgate_domain::result::{Outcome, StepResult, SubResult};
use tollgate_domain::telemetry::Field;
use tollgate_domain::test_support::{
    DRIVER, VBIOS, at, inventory, plan_for, step_result, with_measurement, with_telemetry,
};
use tollgate_domain::{JobId, NodeId, RunId};

/// Steps of the plan, in order.
pub const STEPS: [&str; 3] = ["versions", "stress", "diag"];
/// The milestone the run and gate are at.
pub const MILESTONE: &str = "lab-qual";
/// The release under test.
pub const RELEASE: &str = "r550";
/// GPUs per node.
pub const N_GPUS: u32 = 8;

/// The gate: every step passed on every node, memory bandwidth, and a GPU temperature limit
/// that every GPU of every node exceeds (as after a fan-control regression): one failing
/// evidence item per GPU, 40,000 at 5,000 nodes, more than one 4 MiB message holds.
pub const GATE: &str = "milestone: lab-qual
rules:
  - steps-passed: {plan: gpu-qual, steps: [versions, stress, diag], min-fraction: 1.0}
  - measurement: {name: membw_gbps, aggregate: min, condition: \">= 2800\"}
  - telemetry: {field: gpu_temp_c, aggregate: max, condition: \"< 70\"}
  - inventory-matches-release: {}
";

/// The dcgmi diag tests each node's diag step runs on every GPU: 24 tests, more than a run
/// lists (every failing one and 20 others).
const DIAG_TESTS: [&str; 3] = ["memory", "pcie", "targeted_power"];

/// Registrations written at once on PostgreSQL, which commits them in parallel; SQLite takes
/// one writer at a time, so there they are written one by one.
const PG_WRITERS: usize = 8;

/// What was seeded.
#[derive(Debug, Clone)]
pub struct BigRun {
    /// The run's id.
    pub run: RunId,
    /// Every node, by name.
    pub nodes: BTreeSet<String>,
    /// The nodes whose `diag` step failed.
    pub failed: BTreeSet<String>,
    /// The last node's job, still running: its last result is sent by [`finish`].
    pub open_job: JobId,
    /// That result, and the change it makes (the job passes, the run finishes).
    last_result: (StepResult, ResultChange),
}

/// Node `idx`'s name.
pub fn node_name(idx: usize) -> String {
    format!("lab-{idx:05}")
}

/// Whether node `idx`'s diag step fails: one node in ten.
pub fn diag_fails(idx: usize) -> bool {
    idx % 10 == 3
}

fn job_change(job: &JobId, from: JobState, to: JobState) -> JobChange {
    JobChange {
        job: job.clone(),
        from,
        from_epoch: 1,
        to,
        to_epoch: 1,
        node: None,
        reschedule: None,
    }
}

/// Node `idx`'s result of step `step_idx`.
fn result(job: &JobId, idx: usize, step_idx: usize) -> StepResult {
    let diag_fails = diag_fails(idx);
    let step = u32::try_from(step_idx).expect("three steps");
    let outcome = if step_idx == 2 && diag_fails {
        Outcome::Failed
    } else {
        Outcome::Passed
    };
    let mut result = step_result(step, 1, outcome);
    result.job_id = job.clone();
    result.step_name = STEPS[step_idx].to_owned();
    result.inventory = inventory(DRIVER, VBIOS, N_GPUS);
    if step_idx == 1 {
        for (name, base) in [
            ("membw_gbps", 2900.0),
            ("power_w", 690.0),
            ("fp16_tflops", 750.0),
            ("nvlink_gbps", 440.0),
        ] {
            result = with_measurement(result, name, base + (idx % 97) as f64);
        }
        for gpu in 0..N_GPUS {
            let temp = 70.0 + f64::from(gpu) + (idx % 7) as f64;
            result = with_telemetry(result, gpu, Field::GpuTempC, temp);
        }
    }
    if step_idx == 2 {
        // As a run shows them (`result_summary`): every failing test, then up to 20 others.
        for test in DIAG_TESTS {
            for gpu in 0..N_GPUS {
                let failing = diag_fails && test == "memory" && gpu == 5;
                result.sub_results.push(SubResult {
                    source: "dcgm-diag".into(),
                    suite: "Hardware".into(),
                    name: test.into(),
                    gpu_index: Some(gpu),
                    outcome: if failing {
                        Outcome::Failed
                    } else {
                        Outcome::Passed
                    },
                    message: if failing {
                        "uncorrectable ECC error in memory test".into()
                    } else {
                        format!("{test} passed on GPU {gpu}")
                    },
                    level: Some(2),
                });
            }
        }
        if diag_fails {
            result.message = "dcgmi diag: memory failed on GPU 5".into();
        }
    }
    result
}

/// Seeds the store at `database_url` (the controller's own) with a release, the plan and
/// gate, `n_nodes` nodes and one finished run over all of them.
pub async fn seed(database_url: &str, n_nodes: usize) -> anyhow::Result<BigRun> {
    let store = Store::connect(database_url).await.context("the store")?;
    let release = tollgate_domain::test_support::release();
    let setup = AuditNote::new(at(0), "seed", "seed.setup", "seed");
    store.create_release(&release, &setup).await?;
    let mut plan = plan_for("hgx-h100");
    let template = plan.steps[0].clone();
    plan.steps = STEPS
        .iter()
        .map(|name| tollgate_domain::plan::Step {
            name: (*name).to_owned(),
            ..template.clone()
        })
        .collect();
    store.put_plan(&plan, "seeded", at(0), &setup).await?;
    let policy = tollgate_domain::gate::parse_gate("gate.yaml", GATE)
        .map_err(|errors| anyhow::anyhow!("the seeded gate does not parse: {errors:?}"))?;
    store.put_gate(&policy, GATE, at(0), &setup).await?;

    let writers = if database_url.starts_with("postgres") {
        PG_WRITERS
    } else {
        1
    };
    let started = std::time::Instant::now();
    let labels = tollgate_domain::test_support::node("x", "hgx-h100").labels;
    let nodes: Vec<String> = (0..n_nodes).map(node_name).collect();
    let node_inventory = inventory(DRIVER, VBIOS, N_GPUS);
    futures::stream::iter(&nodes)
        .map(|name| {
            let (store, labels, node_inventory) = (&store, &labels, &node_inventory);
            async move {
                tollgate_controller::grpc::node::register(
                    store,
                    &NodeId::from(name.as_str()),
                    labels,
                    node_inventory,
                    "token-hash",
                    at(0),
                )
                .await
                .map_err(|error| anyhow::anyhow!("registering {name}: {error:?}"))
            }
        })
        .buffer_unordered(writers)
        .try_collect::<Vec<_>>()
        .await?;
    println!(
        "registered {n_nodes} nodes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let run = RunRecord {
        id: RunId::from("run-big"),
        release: release.id.clone(),
        plan_name: plan.name.clone(),
        plan_version: plan.version(),
        milestone: MILESTONE.to_owned(),
        state: RunState::Running,
        created_at: at(0),
        finished_at: None,
        purpose: RunPurpose::Qualification,
    };
    // Each job is created in the state its results end it in (the last one still running),
    // so that storing them moves no job: a job ending one by one would count the run's
    // open jobs 5,000 times.
    let ended = |idx: usize| match (idx + 1 == n_nodes, diag_fails(idx)) {
        (true, _) => JobState::Running,
        (false, false) => JobState::Passed,
        (false, true) => JobState::Failed,
    };
    let jobs: Vec<JobRecord> = nodes
        .iter()
        .enumerate()
        .map(|(idx, name)| JobRecord {
            id: JobId::new(format!("job-{name}")),
            run_id: run.id.clone(),
            node: NodeId::from(name.as_str()),
            state: ended(idx),
            lease_epoch: 1,
            created_at: at(0),
            updated_at: at(0),
            attempt: 1,
            rescheduled_from: None,
        })
        .collect();
    let note = AuditNote::new(at(0), "seed", "run.start", format!("run/{}", run.id));
    store.create_run(&run, &jobs, &note).await?;
    let started = std::time::Instant::now();
    let mut failed = BTreeSet::new();
    let mut results = Vec::with_capacity(jobs.len() * STEPS.len());
    for (idx, job) in jobs.iter().enumerate() {
        for step_idx in 0..STEPS.len() {
            let result = result(&job.id, idx, step_idx);
            if result.outcome == Outcome::Failed {
                failed.insert(job.node.to_string());
            }
            // The open job's last result ends it: `finish` records it as an agent's is.
            let to = if job.state == JobState::Running && step_idx + 1 == STEPS.len() {
                JobState::Passed
            } else {
                job.state
            };
            let change = ResultChange {
                job: job_change(&job.id, job.state, to),
                results_before: step_idx,
            };
            results.push((result, change));
        }
    }
    let last_result = results.pop().context("at least one result")?;
    // One writer: storing results is bound by this process's CPU (JSON, digests), not by
    // the database.
    tollgate_controller::store::testing::seed_results(&store, &results, at(100))
        .await
        .context("the results")?;
    println!(
        "seeded {} results in {:.1} s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    store.close().await;
    Ok(BigRun {
        run: run.id,
        nodes: nodes.into_iter().collect(),
        failed,
        open_job: last_result.0.job_id.clone(),
        last_result,
    })
}

/// Records the open job's last result through `Store::record_result`, as the controller
/// records an agent's: the job passes and the run finishes.
pub async fn finish(database_url: &str, big_run: &BigRun) -> anyhow::Result<()> {
    let store = Store::connect(database_url).await.context("the store")?;
    let (result, change) = &big_run.last_result;
    store
        .record_result(result, change, at(200))
        .await
        .context("the last result")?;
    store.close().await;
    Ok(())
}
