//! Scheduling benchmark: one pass of `tollgate_domain::scheduler::plan` over 10,000 pending
//! jobs (two runs, one job per node each) on 5,000 ready nodes in 100 racks, both runs'
//! plans limiting them to `max-concurrent: {rack: 10}`, with a maintenance window on 5 racks.
//! The baseline, in the same run, is an unconstrained greedy assignment of the same jobs
//! (oldest first, one job per free node; no health, window or limit checks).
//!
//! ```text
//! cargo build --release -p tollgate-tests --bin schedule-bench
//! ./target/release/schedule-bench --nodes 5000 --jobs-per-node 2 --repeat 20
//! ```

use anyhow::{Context, bail};
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;
use tollgate_domain::fleet::{Health, Labels, NodeState};
use tollgate_domain::maintenance::MaintenanceWindow;
use tollgate_domain::scheduler::{Concurrency, NodeSlot, PendingJob, plan};
use tollgate_domain::{JobId, NodeId, RunId};

struct Args {
    nodes: usize,
    jobs_per_node: usize,
    repeat: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        nodes: 5000,
        jobs_per_node: 2,
        repeat: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => args.nodes = value()?.parse().context("--nodes N")?,
            "--jobs-per-node" => {
                args.jobs_per_node = value()?.parse().context("--jobs-per-node N")?
            }
            "--repeat" => args.repeat = value()?.parse().context("--repeat N")?,
            "-h" | "--help" => {
                println!(
                    "schedule-bench [--nodes N (5000)] [--jobs-per-node N (2)] [--repeat N (20)]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}; see --help"),
        }
    }
    Ok(args)
}

/// The unconstrained baseline: oldest first, one job per node not yet given one.
fn greedy(pending: &[PendingJob]) -> usize {
    let mut ordered: Vec<&PendingJob> = pending.iter().collect();
    ordered.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.job.cmp(&b.job))
    });
    let mut taken: HashSet<&NodeId> = HashSet::new();
    ordered
        .into_iter()
        .filter(|job| taken.insert(&job.node))
        .count()
}

/// The median of `samples` seconds, in milliseconds.
fn median_ms(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2] * 1000.0
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    // A fixed instant: the pass reads no clock.
    let now = tollgate_domain::test_support::at(0);
    let slots: Vec<NodeSlot> = (0..args.nodes)
        .map(|idx| NodeSlot {
            node: NodeId::from(format!("node-{idx:05}").as_str()),
            state: NodeState::Ready,
            connected: true,
            has_active_job: false,
            health: Health::Good,
            labels: Labels::from([
                ("sku".to_owned(), "hgx-h100".to_owned()),
                ("rack".to_owned(), format!("r{:03}", idx % 100)),
            ]),
        })
        .collect();
    let runs: Vec<RunId> = (0..args.jobs_per_node)
        .map(|idx| RunId::from(format!("run-{idx}").as_str()))
        .collect();
    let pending: Vec<PendingJob> = runs
        .iter()
        .enumerate()
        .flat_map(|(run_idx, run)| {
            slots.iter().enumerate().map(move |(idx, slot)| PendingJob {
                job: JobId::from(format!("job-{run_idx}-{idx:05}").as_str()),
                run: run.clone(),
                node: slot.node.clone(),
                created_at: now - chrono::Duration::seconds(i64::try_from(run_idx).unwrap_or(0)),
                health_check: false,
                rollout: false,
            })
        })
        .collect();
    let concurrency = Concurrency {
        limits: runs
            .iter()
            .map(|run| (run.clone(), BTreeMap::from([("rack".to_owned(), 10)])))
            .collect(),
        active: Vec::new(),
    };
    let windows: Vec<MaintenanceWindow> = (0..5)
        .map(|rack| MaintenanceWindow {
            id: format!("mw-{rack}"),
            key: "rack".into(),
            value: format!("r{rack:03}"),
            starts_at: now - chrono::Duration::hours(1),
            ends_at: now + chrono::Duration::hours(1),
            reason: "bench".into(),
            created_by: "bench".into(),
        })
        .collect();

    let mut planned = Vec::new();
    let mut baseline = Vec::new();
    let (mut n_planned, mut n_greedy) = (0, 0);
    for _ in 0..args.repeat {
        let started = Instant::now();
        n_greedy = greedy(&pending);
        baseline.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        n_planned = plan(&slots, &pending, &concurrency, &windows, now).len();
        planned.push(started.elapsed().as_secs_f64());
    }
    let (plan_ms, greedy_ms) = (median_ms(planned), median_ms(baseline));
    println!("nodes                       {}", args.nodes);
    println!("pending jobs                {}", pending.len());
    println!("assigned (limits, windows)  {n_planned}");
    println!("baseline: greedy assigned   {n_greedy}");
    println!("scheduling pass (median)    {plan_ms:.2} ms");
    println!("baseline: greedy (median)   {greedy_ms:.2} ms");
    println!("greedy / pass               {:.2}x", greedy_ms / plan_ms);
    Ok(())
}
