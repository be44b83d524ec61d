//! Replica benchmark: how long a job waits to reach an agent whose stream another replica
//! holds, with replicas waking each other through PostgreSQL `LISTEN`/`NOTIFY` and without
//! (the other replica finds the job at its next scheduler tick, the baseline).
//!
//! Two in-process controller replicas on one fresh PostgreSQL schema, at the controller's
//! default tick (1 s); agents connected to replica B only; runs started one after another
//! through replica A. For each run, the time from `StartRun`'s answer to its job seen
//! `assigned` or later (polled every 2 ms through replica A). Needs
//! `TOLLGATE_TEST_DATABASE_URL`.
//!
//! ```text
//! cargo build --release --workspace --bins
//! TOLLGATE_TEST_DATABASE_URL=postgres://... ./target/release/replica-bench --runs 40
//! ```

use anyhow::{Context, bail};
use std::time::{Duration, Instant};
use tollgate_tests::{Agent, Backend, Clients, Controller, ControllerOptions};

struct Args {
    runs: usize,
    tick: Duration,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        runs: 40,
        tick: Duration::from_secs(1),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => args.runs = value()?.parse().context("--runs N")?,
            "--tick-ms" => {
                args.tick = Duration::from_millis(value()?.parse().context("--tick-ms MS")?)
            }
            "-h" | "--help" => {
                println!("replica-bench [--runs N (40)] [--tick-ms MS (1000, the default tick)]");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}; see --help"),
        }
    }
    Ok(args)
}

const PLAN: &str = "name: wake\nselector: {sku: hgx-h100}\nsteps:\n  - {name: quick, kind: exec, command: [sh, -c, 'true']}\n";

/// Milliseconds from each run's start to its job leaving `pending`, with `wake` on or off.
async fn measure(args: &Args, wake: bool) -> anyhow::Result<Vec<f64>> {
    let mut options = ControllerOptions::new(Backend::Postgres);
    options.tick = args.tick;
    options.wake_replicas = wake;
    // Polling every 2 ms is this benchmark's own load, not a client to limit.
    options.limits.rate = tollgate_domain::rate::Rate {
        per_second: 0,
        burst: 0,
    };
    let Some(a) = Controller::start(options).await else {
        bail!("set TOLLGATE_TEST_DATABASE_URL to a PostgreSQL database this benchmark may use");
    };
    let b = a.replica().await;
    let agent = Agent::start(&b.url, "bench-node", 1, &[]);
    let mut clients = Clients::new(a.channel().await);
    clients.wait_ready_nodes(1).await;
    clients.create_release("r550").await;
    clients.apply_plan(PLAN).await;
    let mut latencies = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let run = clients.start_run("r550", "wake").await;
        let started = Instant::now();
        loop {
            let seen = clients.run(&run.id).await;
            if seen.jobs.iter().all(|job| job.state != "pending") {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("run {} stayed pending for 30 s", run.id);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        clients.wait_run_done(&run.id).await;
        // Let the node be ready again before the next run.
        clients.wait_ready_nodes(1).await;
    }
    agent.stop().await;
    Ok(latencies)
}

fn summary(latencies: &mut [f64]) -> (f64, f64, f64) {
    latencies.sort_by(f64::total_cmp);
    let mean = latencies.iter().sum::<f64>() / latencies.len() as f64;
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    (mean, at(0.5), at(0.95))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    println!(
        "replica-bench: {} runs, tick {} ms, agent on replica B, runs started on replica A",
        args.runs,
        args.tick.as_millis()
    );
    let mut polling = measure(&args, false).await?;
    let mut waking = measure(&args, true).await?;
    let (p_mean, p_median, p_95) = summary(&mut polling);
    let (w_mean, w_median, w_95) = summary(&mut waking);
    println!("start -> assigned, ms       mean   median      p95");
    println!("tick only (baseline)  {p_mean:9.1} {p_median:8.1} {p_95:8.1}");
    println!("LISTEN/NOTIFY         {w_mean:9.1} {w_median:8.1} {w_95:8.1}");
    println!(
        "LISTEN/NOTIFY takes {:.3}x the baseline's mean",
        w_mean / p_mean
    );
    Ok(())
}
