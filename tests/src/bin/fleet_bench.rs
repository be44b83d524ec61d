//! Fleet benchmark: the demo-sized flow with N simulated agents.
//!
//! Starts the real `tollgate-controller` binary (so its CPU time and peak RSS can be read from
//! `/proc`), N in-process agents with simulated GPUs running real step processes, and drives a
//! run through gRPC. Prints the time from `run start` to the gate's decision, next to the
//! baseline measured in the same run: the step's own duration, the floor no scheduler can beat.
//!
//! ```text
//! cargo build --release --workspace --bins
//! ./target/release/fleet-bench --agents 200
//! ```

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tollgate_proto::v1;
use tollgate_tests::{Agent, Clients};

struct Args {
    agents: usize,
    gpus: u32,
    step_seconds: f64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        agents: 200,
        gpus: 8,
        step_seconds: 2.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--agents" => args.agents = value()?.parse().context("--agents N")?,
            "--gpus" => args.gpus = value()?.parse().context("--gpus N")?,
            "--step-seconds" => args.step_seconds = value()?.parse().context("--step-seconds S")?,
            "-h" | "--help" => {
                println!("fleet-bench [--agents N (200)] [--gpus N (8)] [--step-seconds S (2)]");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}; see --help"),
        }
    }
    Ok(args)
}

/// CPU seconds (user + system) and peak RSS in KiB of a process, from /proc.
fn process_usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/PID/stat")?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("parsing /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // Linux reports these in USER_HZ, 100 on every mainstream configuration.
    let cpu = ticks / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading /proc/PID/status")?;
    let hwm = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok((cpu, hwm))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("binary directory")?;
    let controller_bin = bin_dir.join("tollgate-controller");
    if !controller_bin.exists() {
        bail!(
            "{} not found; build it with `cargo build --release --workspace --bins`",
            controller_bin.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let addr_file: PathBuf = dir.path().join("controller.addr");
    let mut controller = tokio::process::Command::new(&controller_bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-loopback",
            "--lease-grace",
            "30s",
        ])
        // Every agent connects from this host: the per-address cap (256) must not refuse them.
        .args(["--max-connections-per-ip", &(args.agents + 100).to_string()])
        .args(["--max-connections", &(args.agents + 1000).to_string()])
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
    let mut clients = Clients::new(channel);

    let agents: Vec<Agent> = (0..args.agents)
        .map(|i| Agent::start(&url, &format!("bench-{i:04}"), args.gpus, &[]))
        .collect();
    let n_agents = args.agents;
    tollgate_tests::wait_for(Duration::from_secs(600), "every node ready", || {
        let mut clients = clients.clone();
        async move {
            let listed = clients.try_list_nodes().await?;
            (listed.iter().filter(|n| n.state == "ready").count() >= n_agents).then_some(())
        }
    })
    .await;
    clients.create_release("bench").await;
    clients
        .apply_plan(&format!(
            "name: gpu-qual\nselector: {{sku: hgx-h100}}\nsteps:\n  - {{name: versions, kind: inventory-check}}\n  - name: stress\n    kind: exec\n    command: [sh, -c, \"sleep {}; echo '@tollgate measure membw_gbps 2950.5 GB/s'\"]\n    timeout: 5m\n",
            args.step_seconds
        ))
        .await;
    clients
        .apply_gate(&tollgate_tests::gate_yaml(args.agents as u32))
        .await;
    let (cpu_before, _) = process_usage(pid)?;

    let started = Instant::now();
    let run = clients.start_run("bench", "gpu-qual").await;
    let mut watch = clients
        .runs
        .watch_run(v1::GetRunRequest { id: run.id.clone() })
        .await?
        .into_inner();
    while let Some(update) = watch.message().await? {
        if update.state != "running" {
            break;
        }
    }
    let decision = clients.evaluate("bench").await;
    let elapsed = started.elapsed();
    let (cpu_after, peak_rss_kib) = process_usage(pid)?;

    println!("agents                      {}", args.agents);
    println!("GPUs per agent              {}", args.gpus);
    println!(
        "decision                    {} ({})",
        decision.verdict, decision.summary
    );
    println!("run start -> decision       {:.2} s", elapsed.as_secs_f64());
    println!("baseline: step duration     {:.2} s", args.step_seconds);
    println!(
        "ratio to baseline           {:.2}x",
        elapsed.as_secs_f64() / args.step_seconds
    );
    println!(
        "controller CPU during run   {:.2} s",
        cpu_after - cpu_before
    );
    println!("controller CPU total        {:.2} s", cpu_after);
    println!(
        "controller peak RSS         {:.1} MiB",
        peak_rss_kib as f64 / 1024.0
    );

    for agent in agents {
        agent.kill();
    }
    controller.start_kill().ok();
    let _ = controller.wait().await;
    if decision.verdict != "passed" {
        bail!("expected the clean fleet to pass, got {}", decision.verdict);
    }
    Ok(())
}
