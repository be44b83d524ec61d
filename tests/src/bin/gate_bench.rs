//! Gate benchmark: `gate::evaluate` over 100,000 step results, against a plain SQL aggregate
//! over the same rows measured in the same run, and the cost of a decision after one more
//! result arrives (a `GateState` told about the changed job).
//!
//! Each result's digest is computed once, as the store does when the result arrives; that
//! cost is reported separately, per result.
//!
//! ```text
//! cargo build --release -p tollgate-tests --bin gate-bench
//! ./target/release/gate-bench --nodes 5000 --steps 20
//! ./target/release/gate-bench --nodes 5000 --steps 20 --controller
//! ```
//!
//! `--controller` measures the controller's path instead: the same results stored in a
//! SQLite store, `evaluate_now` the first time (load everything, build the gate), then after
//! one more result is stored (read what changed, decide, store the decision), then with
//! nothing new.

use anyhow::Context;
use sqlx::sqlite::SqlitePoolOptions;
use std::time::{Duration, Instant};
use tollgate_domain::gate::{Evidence, GateState, evaluate, parse_gate, result_digest};
use tollgate_domain::job::{JobChange, JobState, ResultChange};
use tollgate_domain::result::Outcome;
use tollgate_domain::telemetry::Field;
use tollgate_domain::test_support::{
    at, evidence, job, step_result, with_measurement, with_telemetry,
};

fn arg(name: &str, default: usize) -> anyhow::Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .context("flag needs a value")?
            .parse()
            .context("a number"),
        None => Ok(default),
    }
}

fn build(n_nodes: usize, n_steps: usize) -> Evidence {
    let jobs = (0..n_nodes)
        .map(|n| {
            let results = (0..n_steps)
                .map(|s| {
                    let base = step_result(s as u32, 1, Outcome::Passed);
                    let base = with_measurement(base, "membw_gbps", 2900.0 + (n % 97) as f64);
                    let base = with_telemetry(base, 0, Field::GpuTempC, 60.0 + (n % 20) as f64);
                    with_telemetry(base, 1, Field::GpuTempC, 61.0 + (s % 20) as f64)
                })
                .collect();
            job(&format!("n{n:05}"), JobState::Passed, results)
        })
        .collect();
    let mut ev = evidence(jobs);
    ev.runs[0].plan_steps = (0..n_steps).map(|s| format!("step{s}")).collect();
    ev
}

fn time<T>(repeats: u32, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..repeats {
        let start = Instant::now();
        let value = f();
        best = best.min(start.elapsed());
        last = Some(value);
    }
    (best, last.expect("at least one repeat"))
}

/// The controller's path over a SQLite store holding `ev`'s results.
async fn controller_path(
    policy: &tollgate_domain::gate::GatePolicy,
    ev: &Evidence,
) -> anyhow::Result<()> {
    use tollgate_controller::store::{JobRecord, RunRecord, RunState, Store};
    use tollgate_controller::{ControllerConfig, gates::evaluate_now, shared::Shared};
    let dir = tempfile::tempdir()?;
    let config = ControllerConfig::new(dir.path().to_path_buf());
    let store = Store::connect(&config.database_url).await?;
    let release = ev.release.clone();
    let setup = tollgate_controller::store::AuditNote::new(at(0), "bench", "bench.setup", "bench");
    store.create_release(&release, &setup).await?;
    let mut plan = tollgate_domain::test_support::plan_for("hgx-h100");
    let template = plan.steps[0].clone();
    plan.steps = ev.runs[0]
        .plan_steps
        .iter()
        .map(|name| tollgate_domain::plan::Step {
            name: name.clone(),
            ..template.clone()
        })
        .collect();
    store.put_plan(&plan, "generated", at(0), &setup).await?;
    store.put_gate(policy, "bench.yaml", at(0), &setup).await?;
    let inventory = ev.runs[0].jobs[0].results[0].inventory.clone();
    for job in &ev.runs[0].jobs {
        let node = tollgate_domain::test_support::node(job.node.as_str(), "hgx-h100");
        tollgate_controller::grpc::node::register(
            &store,
            &node.id,
            &node.labels,
            &inventory,
            "token-hash",
            at(0),
        )
        .await?;
    }
    let run = RunRecord {
        id: tollgate_domain::RunId::from("run-1"),
        release: release.id.clone(),
        plan_name: plan.name.clone(),
        plan_version: plan.version(),
        milestone: ev.milestone.clone(),
        state: RunState::Running,
        created_at: at(0),
        finished_at: None,
        purpose: tollgate_controller::store::RunPurpose::Qualification,
    };
    let jobs: Vec<JobRecord> = ev.runs[0]
        .jobs
        .iter()
        .map(|job| JobRecord {
            id: job.job_id.clone(),
            run_id: run.id.clone(),
            node: job.node.clone(),
            state: JobState::Running,
            lease_epoch: 1,
            created_at: at(0),
            updated_at: at(0),
            attempt: 1,
            rescheduled_from: None,
        })
        .collect();
    let note = tollgate_controller::store::AuditNote::new(
        at(0),
        "bench",
        "run.start",
        format!("run/{}", run.id),
    );
    store.create_run(&run, &jobs, &note).await?;
    let fill = Instant::now();
    for job in &ev.runs[0].jobs {
        for (i, result) in job.results.iter().enumerate() {
            let mut result = result.clone();
            result.job_id = job.job_id.clone();
            let last = i + 1 == job.results.len();
            let to = if last {
                JobState::Passed
            } else {
                JobState::Running
            };
            let change = ResultChange {
                job: job_change(&result.job_id, JobState::Running, to),
                results_before: i,
            };
            store.record_result(&result, &change, at(2000)).await?;
        }
    }
    println!(
        "stored {} results in {:.1} s",
        ev.runs[0].jobs.len() * ev.runs[0].jobs[0].results.len(),
        fill.elapsed().as_secs_f64()
    );
    let shared = Shared::new(store.clone(), config);
    let timed = |label: &'static str| {
        let shared = &shared;
        let release = &release;
        let milestone = ev.milestone.clone();
        async move {
            let start = Instant::now();
            let evaluated = evaluate_now(shared, release, &milestone)
                .await?
                .context("the gate is stored")?;
            println!(
                "{label:<40} {:>9.1} ms  ({}: {})",
                start.elapsed().as_secs_f64() * 1e3,
                evaluated.decision.verdict,
                evaluated.decision.summary
            );
            anyhow::Ok(())
        }
    };
    timed("evaluate_now, first (load, build)").await?;
    timed("evaluate_now, nothing new").await?;
    let job = &ev.runs[0].jobs[0];
    let mut extra = job.results[job.results.len() - 1].clone();
    extra.job_id = job.job_id.clone();
    extra.attempt += 1;
    let change = ResultChange {
        job: job_change(&extra.job_id, JobState::Passed, JobState::Passed),
        results_before: job.results.len(),
    };
    store.record_result(&extra, &change, at(2001)).await?;
    timed("evaluate_now, one new result").await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let n_nodes = arg("--nodes", 5000)?;
    let n_steps = arg("--steps", 20)?;
    let steps: Vec<String> = (0..n_steps).map(|s| format!("step{s}")).collect();
    let policy = parse_gate(
        "bench.yaml",
        &format!(
            "milestone: lab-qual\nrules:\n  - steps-passed: {{plan: gpu-qual, steps: [{}], min-fraction: 0.98}}\n  - measurement: {{name: membw_gbps, aggregate: p5, condition: \">= 2800\"}}\n  - telemetry: {{field: gpu_temp_c, aggregate: max, condition: \"< 88\"}}\n  - no-events: {{}}\n  - inventory-matches-release: {{}}\n",
            steps.join(", ")
        ),
    )?;
    let mut ev = build(n_nodes, n_steps);
    let n_results = n_nodes * n_steps;
    if std::env::args().any(|a| a == "--controller") {
        return controller_path(&policy, &ev).await;
    }

    // Baseline: the same rows in SQLite, one plain aggregate query over them.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await?;
    sqlx::query("CREATE TABLE results (node TEXT, step INTEGER, outcome TEXT, membw REAL, temp0 REAL, temp1 REAL)")
        .execute(&pool)
        .await?;
    let mut tx = pool.begin().await?;
    for job in &ev.runs[0].jobs {
        for r in &job.results {
            sqlx::query("INSERT INTO results VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(job.node.as_str())
                .bind(i64::from(r.step_index))
                .bind(r.outcome.as_str())
                .bind(r.measurements[0].value)
                .bind(r.telemetry[0].fields[0].max)
                .bind(r.telemetry[1].fields[0].max)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    let mut sql_best = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let row: (i64, i64, f64, f64) = sqlx::query_as(
            "SELECT COUNT(DISTINCT node), SUM(outcome = 'passed'), MIN(membw), MAX(MAX(temp0, temp1)) FROM results",
        )
        .fetch_one(&pool)
        .await?;
        sql_best = sql_best.min(start.elapsed());
        std::hint::black_box(row);
    }

    // Ingestion: the store digests each result once, when it arrives.
    let ingest_start = Instant::now();
    for job in &mut ev.runs[0].jobs {
        job.result_digests = job.results.iter().map(result_digest).collect();
    }
    let ingest_per_result = ingest_start.elapsed() / n_results as u32;

    // `--profile N`: only evaluate N times, for a profiler to look at.
    let profile = arg("--profile", 0)?;
    if profile > 0 {
        for _ in 0..profile {
            std::hint::black_box(evaluate(&policy, &ev, &[], at(1_000_000)));
        }
        return Ok(());
    }
    let (eval_best, decision) = time(5, || evaluate(&policy, &ev, &[], at(1_000_000)));
    let (one_thread, _) = time(5, || {
        GateState::with_threads(&policy, &ev, 1).decide(&policy, &ev, &[], at(1_000_000))
    });
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    // One more result arrives: a further attempt of the last step on the first node. The
    // state built over the evidence is told about the job, then decides.
    let mut state = GateState::new(&policy, &ev);
    let (digest_best, _) = time(5, || state.digest(&policy, &ev, &[]));
    let extra = with_telemetry(
        step_result((n_steps - 1) as u32, 2, Outcome::Passed),
        0,
        Field::GpuTempC,
        70.0,
    );
    let extra_digest = result_digest(&extra);
    let job = &mut ev.runs[0].jobs[0];
    job.results.push(extra);
    job.result_digests.push(extra_digest);
    let mut after_best = Duration::MAX;
    let mut after = None;
    for _ in 0..20 {
        let start = Instant::now();
        state.job_changed(&policy, &ev, 0, 0);
        let d = state.decide(&policy, &ev, &[], at(1_000_000));
        after_best = after_best.min(start.elapsed());
        after = Some(d);
    }
    let after = after.expect("decided");
    let full_after = evaluate(&policy, &ev, &[], at(1_000_000));
    anyhow::ensure!(
        after == full_after,
        "the incremental decision differs from a full evaluation"
    );

    println!(
        "results                          {n_results} ({n_nodes} nodes x {n_steps} steps, 2 GPUs each)"
    );
    println!(
        "decision                         {} ({})",
        decision.verdict, decision.summary
    );
    println!(
        "gate::evaluate                   {:.1} ms ({threads} thread(s))",
        eval_best.as_secs_f64() * 1e3
    );
    println!(
        "  on one thread                  {:.1} ms",
        one_thread.as_secs_f64() * 1e3
    );
    println!(
        "input digest (from stored digests) {:.2} ms",
        digest_best.as_secs_f64() * 1e3
    );
    println!(
        "baseline: SQL aggregate (SQLite) {:.1} ms",
        sql_best.as_secs_f64() * 1e3
    );
    println!(
        "ratio to baseline                {:.2}x",
        eval_best.as_secs_f64() / sql_best.as_secs_f64()
    );
    println!(
        "decision after one new result    {:.3} ms (incremental; equals a full evaluation: {})",
        after_best.as_secs_f64() * 1e3,
        after.verdict
    );
    println!(
        "result digest at ingestion       {:.1} us per result",
        ingest_per_result.as_secs_f64() * 1e6
    );
    Ok(())
}

/// The change a result makes to its job, which the benchmark inserted at lease epoch 1:
/// `from` → `to` (the same state when the result does not end it).
fn job_change(job: &tollgate_domain::JobId, from: JobState, to: JobState) -> JobChange {
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
