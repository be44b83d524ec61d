//! Heartbeat benchmark: what N idle, connected agents cost the controller.
//!
//! Starts the real `tollgate-controller` binary (its CPU time read from `/proc`), measures
//! its CPU over a window with no agent (the baseline, same run), then starts N in-process
//! agents with simulated GPUs at once (fleet telemetry off: `telemetry-bench` measures that),
//! times until every node is ready (the connection storm), and measures the controller's CPU
//! over the same window while they heartbeat. With `--controller PATH` given more than once,
//! each binary is measured in turn in the same run (an A/B of two builds); with `--keepalive D`
//! given more than once, each agent keepalive in turn (the agents' HTTP/2 ping interval,
//! default the agent's own).
//!
//! ```text
//! cargo build --release --workspace --bins
//! ./target/release/heartbeat-bench --agents 5000 --interval 10s --window 60s
//! ```

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tollgate_tests::bench;
use tollgate_tests::{Agent, Clients};

struct Args {
    agents: usize,
    interval: Duration,
    window: Duration,
    controllers: Vec<PathBuf>,
    keepalives: Vec<Duration>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        agents: 1000,
        interval: Duration::from_secs(10),
        window: Duration::from_secs(60),
        controllers: Vec::new(),
        keepalives: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--agents" => args.agents = value()?.parse().context("--agents N")?,
            "--interval" => {
                args.interval =
                    tollgate_domain::spec::parse_duration(&value()?).map_err(anyhow::Error::msg)?;
            }
            "--window" => {
                args.window =
                    tollgate_domain::spec::parse_duration(&value()?).map_err(anyhow::Error::msg)?;
            }
            "--controller" => args.controllers.push(PathBuf::from(value()?)),
            "--keepalive" => args.keepalives.push(
                tollgate_domain::spec::parse_duration(&value()?).map_err(anyhow::Error::msg)?,
            ),
            "-h" | "--help" => {
                println!(
                    "heartbeat-bench [--agents N (1000)] [--interval D (10s)] [--window D (60s)] \
                     [--controller PATH]... [--keepalive D (30s)]..."
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}; see --help"),
        }
    }
    if args.keepalives.is_empty() {
        args.keepalives
            .push(tollgate_agent::config::DEFAULT_KEEPALIVE);
    }
    if args.controllers.is_empty() {
        args.controllers.push(bench::sibling_controller()?);
    }
    Ok(args)
}

/// The controller's CPU over `window`, as a share of one core.
async fn cpu_share(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let (before, _) = bench::process_usage(pid)?;
    tokio::time::sleep(window).await;
    Ok((bench::process_usage(pid)?.0 - before) / window.as_secs_f64())
}

async fn measure(args: &Args, bin: &std::path::Path, keepalive: Duration) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let interval = format!("{}ms", args.interval.as_millis());
    let grace = format!("{}ms", (args.interval * 3).as_millis());
    let mut controller = bench::start_controller(
        bin,
        dir.path(),
        args.agents + 1000,
        &["--heartbeat-interval", &interval, "--lease-grace", &grace],
    )
    .await?;
    let (pid, url) = (controller.pid, controller.url.clone());
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .connect()
        .await?;
    let clients = Clients::new(channel);

    let idle = cpu_share(pid, args.window).await?;

    let started = Instant::now();
    let agents: Vec<Agent> = (0..args.agents)
        .map(|i| {
            let mut config = tollgate_agent::AgentConfig::simulated(
                &url,
                &format!("hb-{i:05}"),
                8,
                PathBuf::new(),
            );
            config.fleet_interval = Duration::ZERO;
            config.keepalive = keepalive;
            Agent::start_config(config)
        })
        .collect();
    bench::wait_ready(&clients, args.agents).await;
    let storm = started.elapsed();
    // One interval for every agent's heartbeat rhythm to settle, then the window.
    tokio::time::sleep(args.interval).await;
    let busy = cpu_share(pid, args.window).await?;

    let per_second = args.agents as f64 / args.interval.as_secs_f64();
    println!("controller                  {}", bin.display());
    println!("agents                      {}", args.agents);
    println!(
        "agent keepalive             {:.0} s",
        keepalive.as_secs_f64()
    );
    println!(
        "heartbeats                  every {:.1} s ({per_second:.0}/s)",
        args.interval.as_secs_f64()
    );
    println!("all ready after start       {:.2} s", storm.as_secs_f64());
    println!(
        "baseline: idle controller   {:.2} % of a core",
        idle * 100.0
    );
    println!(
        "with the agents             {:.2} % of a core",
        busy * 100.0
    );
    println!(
        "per heartbeat               {:.1} µs of controller CPU",
        (busy - idle).max(0.0) / per_second * 1e6
    );
    println!();
    for agent in agents {
        agent.kill();
    }
    controller.child.start_kill().ok();
    let _ = controller.child.wait().await;
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    for bin in &args.controllers {
        for &keepalive in &args.keepalives {
            measure(&args, bin, keepalive).await?;
        }
    }
    Ok(())
}
