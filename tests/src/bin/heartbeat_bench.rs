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
//! The ceiling, measured first in the same run: the same agents against a no-op
//! `AgentService` in a child process (`tollgate_tests::noop`: it answers `Register` and reads
//! and drops every `Connect` event, over the same transport settings), so the controller's
//! cost per heartbeat is printed beside what receiving the message alone costs on this
//! machine, and its storm beside the no-op server's.
//!
//! Last, the reconnection storm: the server is killed (every stream breaks at once) and
//! started again on the same address and data, and the time from the kill until every
//! agent's stream is open again is measured (the controller's `tollgate_agents_connected`,
//! the no-op server's count of open streams), with the restarted server's CPU until then.
//! The agents come back on their own reconnect delays (200 ms doubling, jittered), the same
//! for both servers.
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
    /// This process is the no-op server: write its address to this file and serve.
    noop_server: Option<PathBuf>,
    /// The no-op server's address (a restart's); a free port when absent.
    noop_listen: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        agents: 1000,
        interval: Duration::from_secs(10),
        window: Duration::from_secs(60),
        controllers: Vec::new(),
        keepalives: Vec::new(),
        noop_server: None,
        noop_listen: None,
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
            "--noop-server" => args.noop_server = Some(PathBuf::from(value()?)),
            "--noop-listen" => args.noop_listen = Some(value()?),
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

/// What is measured: the controller binary, or the no-op server (the ceiling).
#[derive(Clone, Copy)]
enum Target<'a> {
    Controller(&'a std::path::Path),
    Noop,
}

/// One measurement: the connection storm, the server's CPU idle and with the agents, and the
/// reconnection storm after a restart.
struct Figures {
    storm: Duration,
    idle: f64,
    busy: f64,
    /// The server's peak RSS in KiB with the agents connected, before the restart.
    peak_kib: u64,
    /// From the kill until every agent's stream was open again.
    reconnect: Duration,
    /// Seconds of the restarted server's CPU until then.
    reconnect_cpu: f64,
}

impl Figures {
    /// Seconds of server CPU per heartbeat, above the idle baseline.
    fn per_heartbeat(&self, args: &Args) -> f64 {
        let per_second = args.agents as f64 / args.interval.as_secs_f64();
        (self.busy - self.idle).max(0.0) / per_second
    }
}

async fn measure(args: &Args, target: Target<'_>, keepalive: Duration) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let interval = format!("{}ms", args.interval.as_millis());
    let grace = format!("{}ms", (args.interval * 3).as_millis());
    // The server, and how to tell that every agent is connected.
    let http_addr_file = dir.path().join("http.addr");
    let http_addr_flag = http_addr_file.display().to_string();
    let controller_flags = [
        "--heartbeat-interval",
        &interval,
        "--lease-grace",
        &grace,
        "--http-listen",
        "127.0.0.1:0",
        "--http-addr-file",
        &http_addr_flag,
    ];
    let (mut child, pid, url, clients) = match target {
        Target::Controller(bin) => {
            let controller =
                bench::start_controller(bin, dir.path(), args.agents + 1000, &controller_flags)
                    .await?;
            let channel = tonic::transport::Endpoint::from_shared(controller.url.clone())?
                .connect()
                .await?;
            let (pid, url) = (controller.pid, controller.url.clone());
            (controller.child, pid, url, Some(Clients::new(channel)))
        }
        Target::Noop => {
            let addr_file = dir.path().join("noop.addr");
            let (child, url) =
                tollgate_tests::noop::start(&addr_file, &["--interval", &interval]).await?;
            let pid = child.id().context("no-op server pid")?;
            (child, pid, url, None)
        }
    };

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
    match &clients {
        Some(clients) => bench::wait_ready(clients, args.agents).await,
        None => {
            let streams = tollgate_tests::noop::streams_file(&dir.path().join("noop.addr"));
            tollgate_tests::wait_for(Duration::from_secs(600), "every agent connected", || {
                let streams = streams.clone();
                async move {
                    let open: usize = std::fs::read_to_string(&streams)
                        .ok()?
                        .trim()
                        .parse()
                        .ok()?;
                    (open >= args.agents).then_some(())
                }
            })
            .await;
        }
    }
    let storm = started.elapsed();
    // One interval for every agent's heartbeat rhythm to settle, then the window.
    tokio::time::sleep(args.interval).await;
    let busy = cpu_share(pid, args.window).await?;
    let peak_kib = bench::process_usage(pid)?.1;

    // The reconnection storm: killed, every stream breaks at once; started again on the same
    // address and data.
    let addr = url.trim_start_matches("http://").to_owned();
    child.start_kill().ok();
    let _ = child.wait().await;
    let killed = Instant::now();
    let (mut child, pid) = match target {
        Target::Controller(bin) => {
            let _ = std::fs::remove_file(&http_addr_file);
            let controller = bench::start_controller_on(
                &addr,
                bin,
                dir.path(),
                args.agents + 1000,
                &controller_flags,
            )
            .await?;
            (controller.child, controller.pid)
        }
        Target::Noop => {
            let addr_file = dir.path().join("noop.addr");
            let (child, _) = tollgate_tests::noop::start(
                &addr_file,
                &["--interval", &interval, "--noop-listen", &addr],
            )
            .await?;
            let pid = child.id().context("no-op server pid")?;
            (child, pid)
        }
    };
    wait_connected(target, dir.path(), args.agents).await?;
    let reconnect = killed.elapsed();
    let reconnect_cpu = bench::process_usage(pid)?.0;
    for agent in agents {
        agent.kill();
    }
    child.start_kill().ok();
    let _ = child.wait().await;
    Ok(Figures {
        storm,
        idle,
        busy,
        peak_kib,
        reconnect,
        reconnect_cpu,
    })
}

/// Waits until `n` agent streams are open on the server measured: the controller's
/// `tollgate_agents_connected` (its dashboard's address in `dir/http.addr`), the no-op
/// server's count beside its address file. Probes every 100 ms.
async fn wait_connected(target: Target<'_>, dir: &std::path::Path, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let open = match target {
            Target::Controller(_) => match std::fs::read_to_string(dir.join("http.addr")) {
                Ok(text) if !text.trim().is_empty() => {
                    let addr = text.trim().parse().context("the dashboard's address")?;
                    let answer =
                        tollgate_tests::http::get(addr, "/metrics", &Default::default()).await;
                    answer.body.lines().find_map(|line| {
                        line.strip_prefix("tollgate_agents_connected ")
                            .and_then(|value| value.trim().parse::<f64>().ok())
                            .map(|value| value as usize)
                    })
                }
                _ => None,
            },
            Target::Noop => {
                std::fs::read_to_string(tollgate_tests::noop::streams_file(&dir.join("noop.addr")))
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
            }
        };
        if open.is_some_and(|open| open >= n) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {n} agents reconnected after 600 s",
                open.unwrap_or(0)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print(args: &Args, name: &str, keepalive: Duration, figures: &Figures) {
    let per_second = args.agents as f64 / args.interval.as_secs_f64();
    println!("server                      {name}");
    println!("agents                      {}", args.agents);
    println!(
        "agent keepalive             {:.0} s",
        keepalive.as_secs_f64()
    );
    println!(
        "heartbeats                  every {:.1} s ({per_second:.0}/s)",
        args.interval.as_secs_f64()
    );
    println!(
        "all ready after start       {:.2} s",
        figures.storm.as_secs_f64()
    );
    println!(
        "idle server                 {:.2} % of a core",
        figures.idle * 100.0
    );
    println!(
        "with the agents             {:.2} % of a core",
        figures.busy * 100.0
    );
    println!(
        "per heartbeat               {:.1} µs of server CPU",
        figures.per_heartbeat(args) * 1e6
    );
    println!(
        "server peak RSS             {:.1} MiB",
        figures.peak_kib as f64 / 1024.0
    );
    println!(
        "all reconnected after kill  {:.2} s ({:.2} s of the restarted server's CPU)",
        figures.reconnect.as_secs_f64(),
        figures.reconnect_cpu
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Some(addr_file) = &args.noop_server {
        let rhythm = tollgate_tests::noop::Rhythm {
            heartbeat_interval: args.interval,
            lease_grace: args.interval * 3,
        };
        let listen = args.noop_listen.as_deref().unwrap_or("127.0.0.1:0");
        return tollgate_tests::noop::serve_on(listen, addr_file, rhythm).await;
    }
    for &keepalive in &args.keepalives {
        let ceiling = measure(&args, Target::Noop, keepalive).await?;
        print(
            &args,
            "ceiling: no-op AgentService (receives, drops)",
            keepalive,
            &ceiling,
        );
        println!();
        for bin in &args.controllers {
            let figures = measure(&args, Target::Controller(bin), keepalive).await?;
            print(&args, &bin.display().to_string(), keepalive, &figures);
            println!(
                "against the ceiling         {:.2}x its CPU per heartbeat, {:.2}x its storm, \
                 {:.2}x its reconnection",
                figures.per_heartbeat(&args) / ceiling.per_heartbeat(&args).max(1e-9),
                figures.storm.as_secs_f64() / ceiling.storm.as_secs_f64().max(1e-9),
                figures.reconnect.as_secs_f64() / ceiling.reconnect.as_secs_f64().max(1e-9)
            );
            println!();
        }
    }
    Ok(())
}
