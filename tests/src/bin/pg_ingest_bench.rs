//! PostgreSQL ingest benchmark: step results and fleet telemetry buckets written through the
//! controller's own store code, against a binary `COPY ... FROM STDIN (FORMAT binary)` of the
//! same rows into the same tables, measured in the same run.
//!
//! Results: one run of `--nodes` jobs × `--steps` results (8 GPUs × 6 telemetry fields and a
//! measurement each, as `report-bench` stores), recorded with `GroupCommit::record` (what
//! `ReportResult` calls: the results that arrive together written in one transaction, each
//! with its job's compare-and-set) from `--concurrency` tasks at once, each taking its jobs'
//! results in order, as agents would. The ceiling copies
//! the same `step_results` rows in one binary `COPY`, the rows' JSON, digests and encoding
//! made inside the timing (a `COPY` path would have to make them too).
//!
//! Fleet telemetry: `--flushes` flushes of `--fleet-nodes` nodes × 8 GPUs of 10 s buckets
//! (every sixth flush also the minute buckets), each written with
//! `Store::record_fleet_buckets` (what every flush calls: one transaction), against one binary
//! `COPY` per flush of the same rows, JSON and encoding inside the timing.
//!
//! Each side gets a fresh schema (`tollgate_test_*`), dropped at the end.
//!
//! ```text
//! cargo build --release --workspace --bins
//! TOLLGATE_TEST_DATABASE_URL=postgres://... ./target/release/pg-ingest-bench
//! ```

use anyhow::{Context, bail, ensure};
use sqlx::Connection as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_controller::group_commit::GroupCommit;
use tollgate_controller::store::pg_copy::CopyBinary;
use tollgate_controller::store::testing::{drop_postgres_schema, fresh_postgres_url};
use tollgate_controller::store::{
    AuditNote, COPY_BUCKETS, EncodedRow, JobRecord, RunPurpose, RunRecord, RunState, Store,
};
use tollgate_domain::fleet_history::{Bucket, Stat};
use tollgate_domain::job::{JobChange, JobState, ResultChange};
use tollgate_domain::plan::{Plan, Step};
use tollgate_domain::result::{Measurement, Outcome, StepResult};
use tollgate_domain::telemetry::{Field, FieldSummary, GpuTelemetry};
use tollgate_domain::test_support::{self as ts, at};
use tollgate_domain::{JobId, NodeId, RunId};

const N_GPUS: u32 = 8;
const MILESTONE: &str = "lab-qual";

struct Args {
    nodes: usize,
    steps: u32,
    concurrency: usize,
    fleet_nodes: usize,
    flushes: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        nodes: 500,
        steps: 10,
        concurrency: 16,
        fleet_nodes: 1000,
        flushes: 12,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => args.nodes = value()?.parse().context("--nodes N")?,
            "--steps" => args.steps = value()?.parse().context("--steps N")?,
            "--concurrency" => args.concurrency = value()?.parse().context("--concurrency N")?,
            "--fleet-nodes" => args.fleet_nodes = value()?.parse().context("--fleet-nodes N")?,
            "--flushes" => args.flushes = value()?.parse().context("--flushes N")?,
            "-h" | "--help" => {
                println!(
                    "pg-ingest-bench [--nodes N (500)] [--steps N (10)] [--concurrency N (16)] \
                     [--fleet-nodes N (1000)] [--flushes N (12)]; needs TOLLGATE_TEST_DATABASE_URL"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}; see --help"),
        }
    }
    ensure!(
        args.nodes > 0 && args.steps > 0 && args.concurrency > 0,
        "--nodes, --steps and --concurrency must be positive"
    );
    Ok(args)
}

fn plan(n_steps: u32) -> Plan {
    let mut plan = ts::plan_for("hgx-h100");
    let template = plan.steps[0].clone();
    plan.steps = (0..n_steps)
        .map(|idx| Step {
            name: format!("step{idx}"),
            ..template.clone()
        })
        .collect();
    plan
}

fn node_name(node_idx: usize) -> String {
    format!("lab-a-r{:02}-n{:03}", node_idx / 40, node_idx % 40)
}

/// One step's result on one node: 8 GPUs × 6 telemetry fields and one measurement.
fn step_result(node_idx: usize, step_idx: u32) -> StepResult {
    let name = node_name(node_idx);
    let mut inventory = ts::inventory(ts::DRIVER, ts::VBIOS, N_GPUS);
    inventory.hostname = name.clone();
    let fields = [
        Field::GpuTempC,
        Field::MemTempC,
        Field::PowerW,
        Field::SmClockMhz,
        Field::GpuUtilPct,
        Field::FbUsedMib,
    ];
    let start = i64::from(step_idx) * 120;
    let telemetry = (0..N_GPUS)
        .map(|gpu_index| GpuTelemetry {
            gpu_index,
            gpu_uuid: format!("GPU-{name}-{gpu_index}"),
            fields: fields
                .iter()
                .map(|&field| {
                    let base = 60.0 + f64::from(gpu_index) + (node_idx % 7) as f64;
                    FieldSummary {
                        field,
                        min: base - 20.0,
                        max: base + 10.0,
                        mean: base,
                        p99: base + 9.0,
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
            value: 2900.0 + (node_idx % 200) as f64,
            unit: Some("GB/s".into()),
        }],
        telemetry,
        inventory,
        log_tail: "PASS all tests\n".into(),
        message: "exit 0".into(),
        ..ts::step_result(step_idx, 1, Outcome::Passed)
    }
}

/// A release, plan, `n_nodes` registered nodes and one running run with a job on each.
async fn set_up_run(store: &Store, n_nodes: usize, n_steps: u32) -> anyhow::Result<()> {
    let release = ts::release();
    let setup = AuditNote::new(at(0), "bench", "bench.setup", "bench");
    store.create_release(&release, &setup).await?;
    let plan = plan(n_steps);
    store.put_plan(&plan, "generated", at(0), &setup).await?;
    for node_idx in 0..n_nodes {
        let node = ts::node(&node_name(node_idx), "hgx-h100");
        let mut inventory = ts::inventory(ts::DRIVER, ts::VBIOS, N_GPUS);
        inventory.hostname = node.id.to_string();
        tollgate_controller::grpc::node::register(
            store,
            &node.id,
            &node.labels,
            &inventory,
            "token-hash",
            at(0),
        )
        .await?;
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
    let jobs: Vec<JobRecord> = (0..n_nodes)
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
    let note = AuditNote::new(at(0), "bench", "run.start", "run/run-1");
    store.create_run(&run, &jobs, &note).await?;
    Ok(())
}

/// Every result through `GroupCommit::record`, `concurrency` jobs at a time.
async fn record_results(store: &Store, args: &Args) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let group_commit = std::sync::Arc::new(GroupCommit::default());
    let mut tasks = tokio::task::JoinSet::new();
    for task_idx in 0..args.concurrency {
        let store = store.clone();
        let group_commit = group_commit.clone();
        let (n_nodes, n_steps, concurrency) = (args.nodes, args.steps, args.concurrency);
        tasks.spawn(async move {
            for node_idx in (task_idx..n_nodes).step_by(concurrency) {
                for step_idx in 0..n_steps {
                    let result = step_result(node_idx, step_idx);
                    let to = if step_idx + 1 == n_steps {
                        JobState::Passed
                    } else {
                        JobState::Running
                    };
                    let change = ResultChange {
                        job: JobChange {
                            job: result.job_id.clone(),
                            from: JobState::Running,
                            from_epoch: 1,
                            to,
                            to_epoch: 1,
                            node: None,
                            reschedule: None,
                        },
                        results_before: step_idx as usize,
                    };
                    group_commit
                        .record(
                            &store,
                            &Arc::new(EncodedRow::new(&result)),
                            &change,
                            at(2000),
                        )
                        .await?;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(started.elapsed())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

const COPY_RESULTS: &str = "COPY step_results (job_id, step_index, attempt, lease_epoch, step_name, \
    outcome, exit_code, started_at, finished_at, measurements, telemetry, events, inventory, \
    log_tail, message, recorded_at, sub_results, inventory_at_end, series, digest) \
    FROM STDIN (FORMAT binary)";

/// The same `step_results` rows in one binary `COPY`.
async fn copy_results(conn: &mut sqlx::PgConnection, args: &Args) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut copy = CopyBinary::with_capacity(1 << 20);
    for node_idx in 0..args.nodes {
        for step_idx in 0..args.steps {
            let result = step_result(node_idx, step_idx);
            copy.tuple(20);
            copy.text(result.job_id.as_str())?;
            copy.int8(i64::from(result.step_index));
            copy.int8(i64::from(result.attempt));
            copy.int8(i64::try_from(result.lease_epoch)?);
            copy.text(&result.step_name)?;
            copy.text(result.outcome.as_str())?;
            match result.exit_code {
                Some(code) => copy.int8(i64::from(code)),
                None => copy.null(),
            }
            copy.timestamptz(result.started_at);
            copy.timestamptz(result.finished_at);
            copy.text(&serde_json::to_string(&result.measurements)?)?;
            copy.text(&serde_json::to_string(&result.telemetry)?)?;
            copy.text(&serde_json::to_string(&result.events)?)?;
            copy.text(&serde_json::to_string(&result.inventory)?)?;
            copy.text(&result.log_tail)?;
            copy.text(&result.message)?;
            copy.timestamptz(at(2000));
            copy.text(&serde_json::to_string(&result.sub_results)?)?;
            copy.text(&serde_json::to_string(&result.inventory_at_end)?)?;
            copy.text(&serde_json::to_string(&result.series)?)?;
            copy.text(&hex(&tollgate_domain::gate::result_digest(&result)))?;
        }
    }
    let data = copy.finish();
    let mut copy_in = conn.copy_in_raw(COPY_RESULTS).await?;
    copy_in.send(data).await?;
    let n_rows = copy_in.finish().await?;
    let took = started.elapsed();
    ensure!(
        n_rows == (args.nodes * args.steps as usize) as u64,
        "COPY stored {n_rows} results"
    );
    Ok(took)
}

/// Fleet telemetry as `flushes` flushes write it: each `fleet_nodes` × 8 GPUs of 10 s
/// buckets, every sixth also the minute buckets; 12 fields each.
fn flushes(args: &Args) -> Vec<Vec<Bucket>> {
    let fields: BTreeMap<Field, Stat> = Field::ALL
        .iter()
        .take(12)
        .enumerate()
        .map(|(idx, field)| {
            let value = 40.0 + idx as f64;
            (
                *field,
                Stat {
                    min: value - 1.0,
                    max: value + 1.0,
                    sum: value * 100.0,
                    samples: 100,
                },
            )
        })
        .collect();
    (0..args.flushes)
        .map(|flush_idx| {
            let mut tiers = vec![(10u32, 10 * flush_idx as i64)];
            if flush_idx % 6 == 5 {
                tiers.push((60, 60 * (flush_idx as i64 / 6)));
            }
            let mut buckets = Vec::new();
            for (resolution_s, start) in tiers {
                for node_idx in 0..args.fleet_nodes {
                    let node = NodeId::from(node_name(node_idx).as_str());
                    for gpu_index in 0..N_GPUS {
                        buckets.push(Bucket {
                            node: node.clone(),
                            gpu_index,
                            resolution_s,
                            start: at(100_000 + start),
                            fields: fields.clone(),
                        });
                    }
                }
            }
            buckets
        })
        .collect()
}

/// A bucket's fields as the store writes them: name → `[min, max, sum, samples]`.
fn fields_json(bucket: &Bucket) -> String {
    let map: serde_json::Map<String, serde_json::Value> = bucket
        .fields
        .iter()
        .map(|(field, stat)| {
            (
                field.name().to_owned(),
                serde_json::json!([stat.min, stat.max, stat.sum, stat.samples]),
            )
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// The same `fleet_telemetry` rows, one binary `COPY` per flush.
async fn copy_buckets(
    conn: &mut sqlx::PgConnection,
    batches: &[Vec<Bucket>],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for buckets in batches {
        let mut copy = CopyBinary::with_capacity(1 << 20);
        for bucket in buckets {
            copy.tuple(5);
            copy.text(bucket.node.as_str())?;
            copy.int8(i64::from(bucket.gpu_index));
            copy.int8(i64::from(bucket.resolution_s));
            copy.timestamptz(bucket.start);
            copy.text(&fields_json(bucket))?;
        }
        let mut copy_in = conn.copy_in_raw(COPY_BUCKETS).await?;
        copy_in.send(copy.finish()).await?;
        let n_rows = copy_in.finish().await?;
        ensure!(
            n_rows == buckets.len() as u64,
            "COPY stored {n_rows} buckets"
        );
    }
    Ok(started.elapsed())
}

async fn count(url: &str, table: &'static str) -> anyhow::Result<i64> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let sql = match table {
        "step_results" => "SELECT count(*) FROM step_results",
        _ => "SELECT count(*) FROM fleet_telemetry",
    };
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&mut conn).await?;
    conn.close().await?;
    Ok(n)
}

fn line(what: &str, n: usize, unit: &str, figure: Duration, ceiling: Duration) {
    let rate = |took: Duration| n as f64 / took.as_secs_f64();
    println!("{what}: {n} {unit}");
    println!(
        "  controller's store        {:>8.3} s  {:>10.0} {unit}/s",
        figure.as_secs_f64(),
        rate(figure)
    );
    println!(
        "  binary COPY (ceiling)     {:>8.3} s  {:>10.0} {unit}/s",
        ceiling.as_secs_f64(),
        rate(ceiling)
    );
    println!(
        "  ratio                     {:>8.2}×",
        ceiling.as_secs_f64() / figure.as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let base = std::env::var(tollgate_controller::store::testing::DATABASE_URL_ENV)
        .ok()
        .filter(|url| !url.is_empty())
        .context("set TOLLGATE_TEST_DATABASE_URL to a PostgreSQL database")?;
    let n_results = args.nodes * args.steps as usize;

    // Results through the store.
    let store_url = fresh_postgres_url(&base).await?;
    let copy_url = fresh_postgres_url(&base).await?;
    let outcome = async {
        let store = Store::connect(&store_url).await?;
        set_up_run(&store, args.nodes, args.steps).await?;
        let results_store = record_results(&store, &args).await?;
        ensure!(
            count(&store_url, "step_results").await? == n_results as i64,
            "the store did not keep every result"
        );
        // The same rows by COPY, into a schema set up the same way.
        let copy_store = Store::connect(&copy_url).await?;
        set_up_run(&copy_store, args.nodes, args.steps).await?;
        copy_store.close().await;
        let mut conn = sqlx::PgConnection::connect(&copy_url).await?;
        let results_copy = copy_results(&mut conn, &args).await?;

        // Fleet telemetry buckets.
        let batches = flushes(&args);
        let n_buckets: usize = batches.iter().map(Vec::len).sum();
        let started = Instant::now();
        for buckets in &batches {
            store.record_fleet_buckets(buckets).await?;
        }
        let buckets_store = started.elapsed();
        let buckets_copy = copy_buckets(&mut conn, &batches).await?;
        for url in [&store_url, &copy_url] {
            ensure!(
                count(url, "fleet_telemetry").await? == n_buckets as i64,
                "not every bucket was stored"
            );
        }
        conn.close().await?;
        store.close().await;

        line(
            &format!(
                "step results ({} jobs × {} steps, {} writers; GroupCommit::record, as ReportResult)",
                args.nodes, args.steps, args.concurrency
            ),
            n_results,
            "results",
            results_store,
            results_copy,
        );
        line(
            &format!(
                "fleet telemetry buckets ({} flushes of {} nodes × {N_GPUS} GPUs; Store::record_fleet_buckets, a transaction each)",
                args.flushes, args.fleet_nodes
            ),
            n_buckets,
            "buckets",
            buckets_store,
            buckets_copy,
        );
        anyhow::Ok(())
    }
    .await;
    drop_postgres_schema(&store_url).await?;
    drop_postgres_schema(&copy_url).await?;
    outcome
}
