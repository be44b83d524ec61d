//! Fleet benchmark: the demo-sized flow with N simulated agents.
//!
//! Starts the real `tollgate-controller` binary (so its CPU time and peak RSS can be read from
//! `/proc`), N in-process agents with simulated GPUs running real step processes, and drives a
//! run through gRPC. Prints the time from `run start` to the gate's decision, next to the
//! baseline measured in the same run: the step's own duration, the floor no scheduler can beat.
//! Beside the controller's CPU it prints what else ran on the same cores meanwhile: the agents'
//! process, their ended step processes, and the whole machine's busy share (when the machine
//! was busy throughout, the time to decision is bounded by CPU, not by waiting).
//!
//! ```text
//! cargo build --release --workspace --bins
//! ./target/release/fleet-bench --agents 200
//! ```

use anyhow::{Context, bail};
use std::time::Instant;
use tollgate_proto::v1;
use tollgate_tests::bench::{self, process_usage};
use tollgate_tests::{Agent, Clients};

struct Args {
    agents: usize,
    gpus: u32,
    step_seconds: f64,
    /// The agents' telemetry sampling interval while a step runs: the agent's default.
    sample_interval: std::time::Duration,
    /// The controller binary; the one beside this benchmark when not given.
    controller: Option<std::path::PathBuf>,
    /// KiB of log lines the step prints before its measurement (a real stress test's output
    /// fills the result's log tail: the last 200 lines, up to 64 KiB); none by default.
    log_kib: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        agents: 200,
        gpus: 8,
        step_seconds: 2.0,
        sample_interval: std::time::Duration::from_secs(1),
        controller: None,
        log_kib: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--agents" => args.agents = value()?.parse().context("--agents N")?,
            "--gpus" => args.gpus = value()?.parse().context("--gpus N")?,
            "--step-seconds" => args.step_seconds = value()?.parse().context("--step-seconds S")?,
            "--controller" => args.controller = Some(value()?.into()),
            "--log-kib" => args.log_kib = value()?.parse().context("--log-kib N")?,
            "--sample-interval" => {
                args.sample_interval = tollgate_domain::spec::parse_duration(&value()?)
                    .map_err(|err| anyhow::anyhow!("--sample-interval: {err}"))?;
            }
            "-h" | "--help" => {
                println!(
                    "fleet-bench [--agents N (200)] [--gpus N (8)] [--step-seconds S (2)] \
                     [--sample-interval D (1s, the agent's default)] [--log-kib N (0)] \
                     [--controller PATH (the one beside this binary)]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}; see --help"),
        }
    }
    Ok(args)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let controller_bin = match &args.controller {
        Some(path) => path.clone(),
        None => bench::sibling_controller()?,
    };
    let dir = tempfile::tempdir()?;
    let mut controller = bench::start_controller(
        &controller_bin,
        dir.path(),
        args.agents + 100,
        &["--lease-grace", "30s"],
    )
    .await?;
    let (pid, url) = (controller.pid, controller.url.clone());
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .connect()
        .await?;
    let mut clients = Clients::new(channel);

    let agents: Vec<Agent> = (0..args.agents)
        .map(|i| {
            let mut config = tollgate_agent::AgentConfig::simulated(
                &url,
                &format!("bench-{i:04}"),
                args.gpus,
                std::path::PathBuf::new(),
            );
            config.labels.insert("sku".into(), "hgx-h100".into());
            config.sample_interval = args.sample_interval;
            Agent::start_config(config)
        })
        .collect();
    bench::wait_ready(&clients, args.agents).await;
    clients.create_release("bench").await;
    // Lines of 330 bytes: the agent keeps the last 200 lines, up to 64 KiB.
    let log = match args.log_kib {
        0 => String::new(),
        kib => format!(
            "yes '{}' | head -c {}; ",
            "stress: iteration passed on every GPU, bandwidth within limits; ".repeat(5),
            kib * 1024
        ),
    };
    clients
        .apply_plan(&format!(
            "name: gpu-qual\nselector: {{sku: hgx-h100}}\nsteps:\n  - {{name: versions, kind: inventory-check}}\n  - name: stress\n    kind: exec\n    command: [sh, -c, \"{log}sleep {}; echo '@tollgate measure membw_gbps 2950.5 GB/s'\"]\n    timeout: 5m\n",
            args.step_seconds
        ))
        .await;
    clients
        .apply_gate(&tollgate_tests::gate_yaml(args.agents as u32))
        .await;
    let (cpu_before, _) = process_usage(pid)?;
    let (agents_before, _) = process_usage(std::process::id())?;
    let steps_before = bench::waited_children_cpu()?;
    let (busy_before, total_before) = bench::machine_cpu()?;

    let started = Instant::now();
    let run = clients.start_run("bench", "gpu-qual").await;
    let mut watch = clients
        .runs
        .watch_run(v1::GetRunRequest {
            id: run.id.clone(),
            ..Default::default()
        })
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
    let (agents_after, _) = process_usage(std::process::id())?;
    let steps_after = bench::waited_children_cpu()?;
    let (busy_after, total_after) = bench::machine_cpu()?;

    println!("agents                      {}", args.agents);
    println!("GPUs per agent              {}", args.gpus);
    println!("sample interval             {:?}", args.sample_interval);
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
        "agents' process CPU         {:.2} s (this process, every agent in it)",
        agents_after - agents_before
    );
    println!(
        "step processes' CPU         {:.2} s (ended steps, waited for)",
        steps_after - steps_before
    );
    println!(
        "machine busy                {:.2} of {:.2} CPU s ({:.0} %, all cores)",
        busy_after - busy_before,
        total_after - total_before,
        bench::busy_percent((busy_before, total_before), (busy_after, total_after))
    );
    println!(
        "controller peak RSS         {:.1} MiB",
        peak_rss_kib as f64 / 1024.0
    );

    for agent in agents {
        agent.kill();
    }
    controller.child.start_kill().ok();
    let _ = controller.child.wait().await;
    if decision.verdict != "passed" {
        bail!("expected the clean fleet to pass, got {}", decision.verdict);
    }
    Ok(())
}
