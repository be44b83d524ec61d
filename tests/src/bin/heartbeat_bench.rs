//! Heartbeat benchmark: what N idle, connected agents cost the controller.
//!
//! Starts the real `tollgate-controller` binary (its CPU time read from `/proc`), measures
//! its CPU over a window with no agent (the baseline, same run), then starts N in-process
//! agents with simulated GPUs at once (fleet telemetry off: `telemetry-bench` measures that),
//! times until every node is ready (the connection storm), and measures the controller's CPU
//! over the same window while they heartbeat. With `--controller PATH` given more than once,
//! each binary is measured in turn in the same run (an A/B of two builds).
//!
//! ```text
//! cargo build --release --workspace --bins
//! ./target/release/heartbeat-bench --agents 5000 --interval 10s --window 60s
//! ```

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tollgate_tests::{Agent, Clients, wait_for};

struct Args {
    agents: usize,
    interval: Duration,
    window: Duration,
    controllers: Vec<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        agents: 1000,
        interval: Duration::from_secs(10),
        window: Duration::from_secs(60),
        controllers: Vec::new(),
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
            "-h" | "--help" => {
                println!(
                    "heartbeat-bench [--agents N (1000)] [--interval D (10s)] [--window D (60s)] \
                     [--controller PATH]..."
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}; see --help"),
        }
    }
    if args.controllers.is_empty() {
        let exe = std::env::current_exe()?;
        let bin = exe
            .parent()
            .context("binary directory")?
            .join("tollgate-controller");
        if !bin.exists() {
            bail!(
                "{} not found; build it with `cargo build --release --workspace --bins`",
                bin.display()
            );
        }
        args.controllers.push(bin);
    }
    Ok(args)
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/PID/stat")?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("parsing /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// The controller's CPU over `window`, as a share of one core.
async fn cpu_share(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = cpu_seconds(pid)?;
    tokio::time::sleep(window).await;
    Ok((cpu_seconds(pid)? - before) / window.as_secs_f64())
}

async fn measure(args: &Args, bin: &std::path::Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let addr_file = dir.path().join("controller.addr");
    let connections = (args.agents + 1000).to_string();
    let interval = format!("{}ms", args.interval.as_millis());
    let grace = format!("{}ms", (args.interval * 3).as_millis());
    let mut controller = tokio::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--insecure-loopback"])
        .args(["--heartbeat-interval", &interval, "--lease-grace", &grace])
        .args(["--max-connections", &connections])
        .args(["--max-connections-per-ip", &connections])
        .arg("--addr-file")
        .arg(&addr_file)
        .arg("--data-dir")
        .arg(dir.path().join("controller"))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("starting tollgate-controller")?;
    let pid = controller.id().context("controller pid")?;
    let addr = loop {
        if let Ok(text) = std::fs::read_to_string(&addr_file)
            && !text.trim().is_empty()
        {
            break text.trim().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let url = format!("http://{addr}");
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
            Agent::start_config(config)
        })
        .collect();
    let n_agents = args.agents;
    wait_for(Duration::from_secs(600), "every node ready", || {
        let mut clients = clients.clone();
        async move {
            let listed = clients.try_list_nodes().await?;
            (listed.iter().filter(|n| n.state == "ready").count() >= n_agents).then_some(())
        }
    })
    .await;
    let storm = started.elapsed();
    // One interval for every agent's heartbeat rhythm to settle, then the window.
    tokio::time::sleep(args.interval).await;
    let busy = cpu_share(pid, args.window).await?;

    let per_second = args.agents as f64 / args.interval.as_secs_f64();
    println!("controller                  {}", bin.display());
    println!("agents                      {}", args.agents);
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
    controller.start_kill().ok();
    let _ = controller.wait().await;
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    for bin in &args.controllers {
        measure(&args, bin).await?;
    }
    Ok(())
}
