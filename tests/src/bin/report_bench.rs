//! Report benchmark: renders the customer report of a synthetic fleet (250 and 1,000 nodes ×
//! 8 GPUs × 10 steps by default) from a real SQLite store through the controller's streaming
//! path (`report::render_from_store`), next to an equally streaming baseline measured in the
//! same run: reading the same rows the same way (`Store::read_report_evidence`, a page of
//! nodes at a time, on the same pipeline) and serializing each page to JSON into a sink.
//!
//! Each measurement runs in a fresh child process of this binary, so every peak RSS (VmHWM)
//! belongs to one format alone. The gate is evaluated once per fleet by the parent and stored;
//! a child loads that decision, as the controller loads a stored one.
//!
//! ```text
//! cargo build --release -p tollgate-tests --bin report-bench
//! ./target/release/report-bench --nodes 250,1000
//! ```

use anyhow::{Context, bail};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tollgate_controller::report::{self, ReportFormat, ReportHead};
use tollgate_controller::store::{JobRecord, ReportRows, RunRecord, RunState, Store};
use tollgate_domain::gate::{self, Evidence, GatePolicy};
use tollgate_domain::job::{JobChange, JobState, ResultChange};
use tollgate_domain::plan::{Plan, Step};
use tollgate_domain::release::Release;
use tollgate_domain::result::{Measurement, Outcome, StepResult};
use tollgate_domain::telemetry::{Field, FieldSummary, GpuTelemetry};
use tollgate_domain::test_support::{self as ts, at};
use tollgate_domain::{JobId, NodeId, RunId};

const N_GPUS: u32 = 8;
const N_STEPS: u32 = 10;
const MILESTONE: &str = "lab-qual";
const MODES: [&str; 5] = ["baseline", "markdown", "json", "html", "junit"];

const GATE: &str = r#"
milestone: lab-qual
rules:
  - steps-passed: {plan: gpu-qual, steps: [step0, step9], min-nodes: 2}
  - telemetry: {field: gpu_temp_c, aggregate: max, condition: "< 88"}
  - measurement: {name: membw_gbps, aggregate: min, condition: ">= 2800"}
  - no-xid: {codes: [48, 79]}
  - inventory-matches-release: {}
"#;

struct Args {
    nodes: Vec<usize>,
    repeat: usize,
    /// Set in a child: the mode to measure and the store to read.
    child: Option<(String, String)>,
    /// Keep each fleet's store in this directory (`nodes-N.db`) and reuse it when present.
    keep: Option<std::path::PathBuf>,
    /// Also write each format's report once to this directory (`nodes-N.EXT`), after timing.
    out: Option<std::path::PathBuf>,
    /// Points in each result's series of each GPU and field (as an agent sends for charts);
    /// 0 stores none, as results stored before series existed.
    series_points: u32,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        nodes: vec![250, 1000],
        repeat: 3,
        child: None,
        keep: None,
        out: None,
        series_points: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => {
                args.nodes = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .context("--nodes N[,N...]")?
            }
            "--repeat" => args.repeat = value()?.parse().context("--repeat N")?,
            "--child" => {
                let mode = value()?;
                let url = value()?;
                args.child = Some((mode, url));
            }
            "--keep" => args.keep = Some(value()?.into()),
            "--out" => args.out = Some(value()?.into()),
            "--series-points" => {
                args.series_points = value()?.parse().context("--series-points N")?;
            }
            "-h" | "--help" => {
                println!(
                    "report-bench [--nodes N[,N...] (250,1000)] [--repeat N (3)] [--keep DIR] [--out DIR] \
                     [--series-points N (0)]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}; see --help"),
        }
    }
    Ok(args)
}

fn plan() -> Plan {
    let mut plan = ts::plan_for("hgx-h100");
    let template = plan.steps[0].clone();
    plan.steps = (0..N_STEPS)
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

/// One step's result on one node: 8 GPUs × 6 telemetry fields, one measurement; GPU 3 of
/// every 100th node runs hot, so the report has failures to show.
fn step_result(node_idx: usize, step_idx: u32, series_points: u32) -> StepResult {
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
                    let hot =
                        node_idx.is_multiple_of(100) && gpu_index == 3 && field == Field::GpuTempC;
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
            value: 2900.0 + (node_idx % 200) as f64,
            unit: Some("GB/s".into()),
        }],
        series: (0..N_GPUS)
            .flat_map(|gpu_index| {
                fields.iter().map(move |&field| {
                    let mut series = tollgate_domain::telemetry::SeriesBuilder::new(
                        1000,
                        tollgate_domain::telemetry::MAX_SERIES_POINTS,
                    );
                    for i in 0..series_points {
                        let wave = f64::from((i + gpu_index) % 11);
                        series.push(u64::from(i) * 1000, 55.0 + wave);
                    }
                    series.build(gpu_index, field)
                })
            })
            .filter(|series| !series.points.is_empty())
            .collect(),
        telemetry,
        inventory,
        log_tail: "PASS all tests\n".into(),
        message: "exit 0".into(),
        ..ts::step_result(step_idx, 1, Outcome::Passed)
    }
}

/// Fills a fresh store with one run of `n_nodes` jobs of 10 results each.
async fn populate(store: &Store, n_nodes: usize, series_points: u32) -> anyhow::Result<()> {
    let release = ts::release();
    let setup = tollgate_controller::store::AuditNote::new(at(0), "bench", "bench.setup", "bench");
    store.create_release(&release, &setup).await?;
    let plan = plan();
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
        purpose: tollgate_controller::store::RunPurpose::Qualification,
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
    let note = tollgate_controller::store::AuditNote::new(
        at(0),
        "bench",
        "run.start",
        format!("run/{}", run.id),
    );
    store.create_run(&run, &jobs, &note).await?;
    for node_idx in 0..n_nodes {
        for step_idx in 0..N_STEPS {
            let result = step_result(node_idx, step_idx, series_points);
            let to = if step_idx + 1 == N_STEPS {
                JobState::Passed
            } else {
                JobState::Running
            };
            let change = ResultChange {
                job: job_change(&result.job_id, JobState::Running, to),
                results_before: step_idx as usize,
            };
            store.record_result(&result, &change, at(2000)).await?;
        }
    }
    Ok(())
}

/// Peak resident set size of this process in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn best(times: &[Duration]) -> Duration {
    times.iter().copied().min().unwrap_or_default()
}

/// Counts the bytes written to it and drops them.
#[derive(Default)]
struct CountingSink {
    n_bytes: u64,
}

impl Write for CountingSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.n_bytes += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The baseline: the report's reads, on the report's pipeline (reads on the runtime, a
/// blocking thread consuming pages), each page serialized to JSON into a sink. Returns the
/// bytes serialized.
async fn fetch_and_serialize(store: &Store, release: &Release) -> anyhow::Result<u64> {
    let (sender, mut receiver) = mpsc::channel::<ReportRows>(2);
    let serialize = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut sink = std::io::BufWriter::with_capacity(1 << 20, CountingSink::default());
        while let Some(rows) = receiver.blocking_recv() {
            match rows {
                ReportRows::Runs(runs) => serde_json::to_writer(&mut sink, &runs)?,
                ReportRows::Nodes(nodes) => {
                    for node in &nodes {
                        let jobs: Vec<_> = node
                            .jobs
                            .iter()
                            .map(|job| (&job.run_id, &job.job))
                            .collect();
                        serde_json::to_writer(&mut sink, &(&node.node, &node.registered, jobs))?;
                    }
                }
            }
        }
        sink.flush()?;
        let sink = sink.into_inner().map_err(|error| error.into_error())?;
        Ok(sink.n_bytes)
    });
    store
        .read_report_evidence(
            &release.id,
            MILESTONE,
            |_| true,
            report::PAGE_NODES,
            // What the HTML report reads, the most any format does.
            &report::CHARTED_FIELDS,
            sender,
        )
        .await?;
    serialize.await?
}

/// A child: measures `mode` `repeat` times and prints one line:
/// `mode work_ms bytes vmhwm_kib_before vmhwm_kib`.
async fn child(
    mode: &str,
    url: &str,
    repeat: usize,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let store = Store::connect(url).await?;
    let release: Release = store
        .get_release(&ts::release().id)
        .await?
        .context("release missing")?;
    let decision = store
        .latest_decision(&release.id, MILESTONE)
        .await?
        .context("the parent stores a decision")?;
    let policy: GatePolicy =
        gate::parse_gate("gate.yaml", GATE).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let rss_before = peak_rss_kib();
    let head = |release: &Release| ReportHead {
        evidence_release: release.id.clone(),
        evidence_milestone: MILESTONE.into(),
        release: release.clone(),
        milestone: MILESTONE.into(),
        policy: policy.clone(),
        decision: decision.clone(),
        plans: vec![plan()],
        generated_at: at(5000),
        controller_version: "bench".into(),
        waivers: Vec::new(),
        audit_head: None,
        scope: None,
    };
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let mut times = Vec::new();
    let mut n_bytes = 0;
    for _ in 0..repeat {
        let started = Instant::now();
        n_bytes = if mode == "baseline" {
            fetch_and_serialize(&store, &release).await?
        } else {
            let format: ReportFormat = mode.parse().map_err(anyhow::Error::msg)?;
            let out = std::io::BufWriter::with_capacity(1 << 20, CountingSink::default());
            report::render_from_store(&store, head(&release), format, key.clone(), out)
                .await?
                .n_bytes
        };
        times.push(started.elapsed());
    }
    let rss_after = peak_rss_kib();
    if let Some(dir) = out
        && mode != "baseline"
    {
        let format: ReportFormat = mode.parse().map_err(anyhow::Error::msg)?;
        let n_nodes = store.list_nodes().await?.len();
        let path = dir.join(format!("nodes-{n_nodes}.{}", format.extension()));
        let file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        report::render_from_store(&store, head(&release), format, key, file).await?;
    }
    println!(
        "{mode} {:.1} {n_bytes} {rss_before} {}",
        best(&times).as_secs_f64() * 1000.0,
        rss_after
    );
    Ok(())
}

struct Measured {
    mode: String,
    work_ms: f64,
    n_bytes: u64,
    rss_before_kib: u64,
    rss_kib: u64,
}

fn run_child(exe: &Path, mode: &str, url: &str, args: &Args) -> anyhow::Result<Measured> {
    let mut command = std::process::Command::new(exe);
    command.args(["--repeat", &args.repeat.to_string(), "--child", mode, url]);
    if let Some(out) = &args.out {
        command.arg("--out").arg(out);
    }
    let output = command
        .output()
        .with_context(|| format!("running the {mode} child"))?;
    if !output.status.success() {
        bail!(
            "the {mode} child failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let line = String::from_utf8(output.stdout).context("child output is UTF-8")?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [mode, work_ms, n_bytes, rss_before_kib, rss_kib] = fields[..] else {
        bail!("unexpected child output: {line}");
    };
    Ok(Measured {
        mode: mode.to_owned(),
        work_ms: work_ms.parse()?,
        n_bytes: n_bytes.parse()?,
        rss_before_kib: rss_before_kib.parse()?,
        rss_kib: rss_kib.parse()?,
    })
}

/// Fills a fresh store with `n_nodes` nodes and stores the gate's decision over them.
fn prepare(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    n_nodes: usize,
    series_points: u32,
) -> anyhow::Result<()> {
    let started = Instant::now();
    runtime.block_on(async {
        let store = Store::connect(url).await?;
        populate(&store, n_nodes, series_points).await?;
        let release = store
            .get_release(&ts::release().id)
            .await?
            .context("release missing")?;
        let evidence: Evidence = store.load_evidence(&release, MILESTONE).await?;
        let policy: GatePolicy =
            gate::parse_gate("gate.yaml", GATE).map_err(|errors| anyhow::anyhow!("{errors}"))?;
        let decision = gate::evaluate(&policy, &evidence, &[], at(5000));
        store.insert_decision(&decision).await?;
        store.close().await;
        anyhow::Ok(())
    })?;
    println!(
        "stored {n_nodes} nodes × {N_GPUS} GPUs × {N_STEPS} steps in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    if let Some((mode, url)) = &args.child {
        return runtime.block_on(child(mode, url, args.repeat, args.out.as_deref()));
    }
    let exe = std::env::current_exe().context("own path")?;
    let mut table = Vec::new();
    for &n_nodes in &args.nodes {
        let dir = tempfile::tempdir().context("temp dir")?;
        let path = match &args.keep {
            Some(keep) => keep.join(format!("nodes-{n_nodes}-series-{}.db", args.series_points)),
            None => dir.path().join("bench.db"),
        };
        let url = format!("sqlite://{}", path.display());
        if !path.exists() {
            prepare(&runtime, &url, n_nodes, args.series_points)?;
        }
        for mode in MODES {
            table.push((n_nodes, run_child(&exe, mode, &url, &args)?));
        }
    }
    println!(
        "{:>6} {:<9} {:>9} {:>7} {:>9} {:>11} {:>10}",
        "nodes", "mode", "time ms", "ratio", "MiB out", "RSS before", "peak RSS"
    );
    for (n_nodes, m) in &table {
        let baseline = table
            .iter()
            .find(|(n, m)| n == n_nodes && m.mode == "baseline")
            .map_or(f64::NAN, |(_, m)| m.work_ms);
        println!(
            "{n_nodes:>6} {:<9} {:>9.1} {:>7.2} {:>9.1} {:>7.1} MiB {:>6.1} MiB",
            m.mode,
            m.work_ms,
            m.work_ms / baseline,
            m.n_bytes as f64 / (1024.0 * 1024.0),
            m.rss_before_kib as f64 / 1024.0,
            m.rss_kib as f64 / 1024.0
        );
    }
    println!(
        "time = best of {} (baseline: read the report's rows page by page and serialize them to JSON; \
         format: read the same rows and render, sign and write the report); ratio = time / baseline; \
         RSS before = peak RSS once the decision is loaded, before the first read",
        args.repeat
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
