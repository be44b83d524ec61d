//! `tollgate-agent`: parses flags (over its configuration file) into an [`AgentConfig`], sets
//! up logging and signals, and runs the agent (or prints the inventory with
//! `--print-inventory`).

use anyhow::Context;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tollgate_agent::{AgentConfig, Fault, GpuMode};
use tollgate_wire::daemon_config::{self, Daemon};

/// Tollgate's per-node agent: runs qualification steps on this node's GPUs and reports results
/// to the controller.
#[derive(Debug, clap::Parser)]
#[command(name = "tollgate-agent", version)]
struct Args {
    /// Controller URL; for replicas, their URLs separated by commas
    /// (`https://ctl-a:7443,https://ctl-b:7443`): the agent connects to one that answers and
    /// moves to another when it goes away.
    #[arg(
        long,
        env = "TOLLGATE_CONTROLLER",
        default_value = "http://127.0.0.1:7800"
    )]
    controller: String,
    /// The CA certificate (PEM) that signed the controller's certificate, for https://
    /// controllers (`ca.pem` from `tollgate-controller ca init`).
    #[arg(long, env = "TOLLGATE_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// A file holding the one-time bootstrap token from `tollgate node enroll NODE`: the agent
    /// makes its key pair (node.key, mode 0600, in the state directory) and gets its client
    /// certificate (node.crt) once; later starts use the certificate.
    #[arg(long, value_name = "FILE")]
    bootstrap_token_file: Option<PathBuf>,
    /// This node's name (default: the host name).
    #[arg(long)]
    node: Option<String>,
    /// Node label KEY=VALUE; repeat for several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = tollgate_domain::fleet::parse_label)]
    labels: Vec<(String, String)>,
    /// GPU source: nvml, or sim:N for N simulated GPUs.
    #[arg(long, default_value = "nvml", value_parser = str::parse::<GpuMode>)]
    gpus: GpuMode,
    /// Seed of the simulated GPUs (default: derived from the node name).
    #[arg(long)]
    sim_seed: Option<u64>,
    /// Driver version the simulated node reports.
    #[arg(long, default_value = tollgate_agent::DEFAULT_SIM_DRIVER)]
    sim_driver: String,
    /// VBIOS version the simulated GPUs report.
    #[arg(long, default_value = tollgate_agent::DEFAULT_SIM_VBIOS)]
    sim_vbios: String,
    /// Inject a fault into the simulated GPUs: over-temp, ecc-uncorrected, xid=CODE,
    /// idle-xid=CODE:SECONDS, idle-hot=DEGREES:SECONDS (idle GPUs that many degrees hotter
    /// from SECONDS after a step ended), driver=VERSION or vbios=VERSION; repeat for several.
    #[arg(long = "fault", value_name = "FAULT", value_parser = str::parse::<Fault>)]
    faults: Vec<Fault>,
    /// Spool, node token and step logs (default: ./.tollgate-agent/<node>).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Telemetry sampling interval while a step runs, e.g. 1s or 500ms.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    sample_interval: Duration,
    /// Fleet telemetry interval, e.g. 10s (during a step, the step sampler's newest readings
    /// are sent); 0s turns it off.
    #[arg(long, default_value = "10s", value_parser = parse_fleet_interval)]
    fleet_interval: Duration,
    /// Fleet samples held while the controller is unreachable; the oldest beyond are dropped
    /// and counted.
    #[arg(long, value_name = "N", default_value_t = tollgate_agent::config::DEFAULT_TELEMETRY_BUFFER)]
    telemetry_buffer: usize,
    /// Inventory probe NAME=COMMAND: run through `sh -c` (10 s timeout) whenever the
    /// inventory is observed, printing component=version lines; repeat for several.
    #[arg(long = "probe", value_name = "NAME=COMMAND", value_parser = str::parse::<tollgate_agent::gpu::probed::Probe>)]
    probes: Vec<tollgate_agent::gpu::probed::Probe>,
    /// PATH the steps run with (default: the agent's own PATH).
    #[arg(long, value_name = "PATH")]
    step_path: Option<String>,
    /// Name of an agent environment variable steps also get; repeat for several (or a
    /// comma-separated TOLLGATE_AGENT_PASS_ENV). Steps get only PATH, HOME (the attempt's
    /// directory), LANG=C.UTF-8, these, the plan's env and the TOLLGATE_* variables.
    #[arg(
        long = "pass-env",
        value_name = "NAME",
        env = "TOLLGATE_AGENT_PASS_ENV",
        value_delimiter = ','
    )]
    pass_env: Vec<String>,
    /// Serve this agent's own Prometheus `/metrics` on ADDR (e.g. 0.0.0.0:9401): its GPUs'
    /// telemetry under dcgm-exporter's names and labels, and the agent's counters. Off unless
    /// given.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Ping the controller when it has sent nothing for this long (HTTP/2 keepalive), e.g.
    /// 30s; a ping unanswered within 5 s closes the connection and the agent reconnects.
    /// Shorter notices a silently dead connection sooner, at a ping per agent per interval.
    #[arg(long, value_name = "D", default_value = "30s", value_parser = parse_keepalive)]
    keepalive: Duration,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Send OpenTelemetry traces (each step attempt and result upload, continued by the
    /// controller) to this OTLP/gRPC collector, for example http://127.0.0.1:4317. Off when
    /// unset.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Print the inventory as JSON to stdout and exit.
    #[arg(long)]
    print_inventory: bool,
    /// Print N telemetry samples as JSON lines, one per sample interval, and exit.
    #[arg(long, value_name = "N")]
    print_samples: Option<u32>,
    /// Measure the sampler's overhead for SECONDS (then a minimal loop for as long) on the
    /// configured GPUs, print the figures as JSON and exit.
    #[arg(long, value_name = "SECONDS")]
    bench_sampling: Option<u64>,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = tollgate_domain::spec::parse_duration(text)?;
    if interval < Duration::from_millis(10) {
        return Err(format!("'{text}' is too short (at least 10ms)"));
    }
    Ok(interval)
}

fn parse_keepalive(text: &str) -> Result<Duration, String> {
    let interval = tollgate_domain::spec::parse_duration(text)?;
    if interval < Duration::from_secs(1) {
        return Err(format!(
            "'{text}' is too short for a keepalive (at least 1s)"
        ));
    }
    Ok(interval)
}

fn parse_fleet_interval(text: &str) -> Result<Duration, String> {
    let interval = tollgate_domain::spec::parse_duration(text)?;
    if !interval.is_zero() && interval < Duration::from_secs(1) {
        return Err(format!(
            "'{text}' is too short for fleet telemetry (at least 1s, or 0s)"
        ));
    }
    Ok(interval)
}

/// Logs to stderr, filtered by RUST_LOG; with an OTLP endpoint, also traces (see
/// `tollgate_agent::traces`), whose spans the logs leave out. Call inside the runtime.
fn init_logging(
    format: &str,
    otlp_endpoint: Option<&str>,
    node: Option<&str>,
) -> anyhow::Result<Option<tollgate_agent::traces::Traces>> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive(
            format!("{}=off", tollgate_agent::traces::TARGET)
                .parse()
                .expect("a fixed, valid directive"),
        );
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let log = if format == "json" {
        log.json().boxed()
    } else {
        log.boxed()
    };
    let (traces, trace_layer) = match otlp_endpoint {
        None => (None, None),
        Some(endpoint) => {
            let attributes = node
                .map(|node| opentelemetry::KeyValue::new("tollgate.node", node.to_owned()))
                .into_iter()
                .collect();
            let (traces, tracer) =
                tollgate_agent::traces::Traces::start(endpoint, "tollgate-agent", attributes)?;
            let only_ours = tracing_subscriber::filter::Targets::new()
                .with_target(tollgate_agent::traces::TARGET, tracing::Level::INFO)
                .with_target("tollgate_agent", tracing::Level::INFO);
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(only_ours);
            (Some(traces), Some(layer))
        }
    };
    tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(trace_layer)
        .init();
    Ok(traces)
}

/// Installs the SIGINT and SIGTERM handlers now and resolves once either arrives. Installed
/// before the agent opens its state directory, so a signal sent once the spool exists always
/// shuts the agent down cleanly instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for {name}");
            None
        }
    };
    let interrupt = listen(SignalKind::interrupt(), "SIGINT");
    let terminate = listen(SignalKind::terminate(), "SIGTERM");
    let received = |stream: Option<tokio::signal::unix::Signal>| async move {
        match stream {
            Some(mut stream) => {
                stream.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    async move {
        tokio::select! {
            _ = received(interrupt) => tracing::info!("SIGINT received; shutting down"),
            _ = received(terminate) => tracing::info!("SIGTERM received; shutting down"),
        }
    }
}

/// The agent's configuration file: every flag but the one-off actions.
const DAEMON: Daemon = Daemon {
    subcommand: None,
    config_env: "TOLLGATE_AGENT_CONFIG",
    default_path: "/etc/tollgate/agent.toml",
    actions: &["print-inventory", "print-samples", "bench-sampling"],
};

fn main() -> ExitCode {
    let args = daemon_config::parse::<Args>(&DAEMON).cli;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The node's name, as `run` resolves it, labels its traces.
    let node = args
        .node
        .clone()
        .unwrap_or_else(tollgate_agent::gpu::hostname);
    // The trace exporter and its batch processor live on the runtime.
    let traces = match runtime.block_on(async {
        init_logging(
            &args.log_format,
            args.otlp_endpoint.as_deref(),
            Some(node.as_str()).filter(|node| !node.is_empty()),
        )
    }) {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    // Errors are printed as one readable chain, never as a debug dump with a backtrace: the
    // reader is an operator at a node's console.
    let json = args.log_format == "json";
    let ran = runtime.block_on(run(args));
    // The last spans are sent while the runtime still runs.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if json => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let node = match args.node {
        Some(node) => node,
        None => {
            let host = tollgate_agent::gpu::hostname();
            anyhow::ensure!(
                !host.is_empty(),
                "cannot read the host name; pass --node NAME"
            );
            host
        }
    };
    anyhow::ensure!(
        tollgate_domain::release::is_valid_name(&node),
        "'{node}' is not a valid node name (1-128 letters, digits, '-', '_', '.'); pass --node NAME"
    );
    let state_dir = args
        .state_dir
        .unwrap_or_else(|| PathBuf::from(".tollgate-agent").join(&node));
    let config = AgentConfig {
        controller: args.controller,
        ca_file: args.ca_file,
        bootstrap_token_file: args.bootstrap_token_file,
        node,
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
        gpus: args.gpus,
        sim_seed: args.sim_seed,
        sim_driver: args.sim_driver,
        sim_vbios: args.sim_vbios,
        faults: args.faults,
        state_dir,
        sample_interval: args.sample_interval,
        fleet_interval: args.fleet_interval,
        telemetry_buffer: args.telemetry_buffer,
        probes: args.probes,
        step_path: args.step_path,
        pass_env: args.pass_env,
        metrics_listen: args.metrics_listen,
        keepalive: args.keepalive,
    };
    config.check().map_err(anyhow::Error::msg)?;
    if let Some(seconds) = args.bench_sampling {
        let source = tollgate_agent::build_source(&config)?;
        let n_gpus = u32::try_from(source.inventory()?.gpus.len()).unwrap_or(0);
        let report = tollgate_agent::bench::run(
            source,
            n_gpus,
            config.sample_interval,
            Duration::from_secs(seconds),
        )
        .await;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if let Some(n) = args.print_samples {
        return print_samples(&config, n).await;
    }
    if args.print_inventory {
        let source = tollgate_agent::build_source(&config)?;
        let inventory = source.inventory().context("reading the inventory")?;
        println!("{}", serde_json::to_string_pretty(&inventory)?);
        return Ok(());
    }
    let shutdown = shutdown_signal();
    tollgate_agent::run(config, shutdown).await
}

/// `--print-samples N`: N rounds of every GPU's telemetry, one JSON line per round.
async fn print_samples(config: &AgentConfig, n: u32) -> anyhow::Result<()> {
    let source = tollgate_agent::build_source(config)?;
    let inventory = source.inventory().context("reading the inventory")?;
    let deadline = tollgate_agent::sampler::deadline_for(config.sample_interval);
    let mut ticker = tokio::time::interval(config.sample_interval);
    for _ in 0..n {
        ticker.tick().await;
        let mut gpus = Vec::new();
        for gpu in &inventory.gpus {
            let reader = std::sync::Arc::clone(&source);
            let gpu_idx = gpu.index;
            let read = tokio::time::timeout(
                deadline,
                tokio::task::spawn_blocking(move || reader.sample_gpu(gpu_idx)),
            )
            .await;
            let values = match read {
                Ok(Ok(Ok(values))) => serde_json::to_value(
                    values
                        .iter()
                        .map(|(field, value)| (field.name(), *value))
                        .collect::<BTreeMap<_, _>>(),
                )?,
                Ok(Ok(Err(error))) => serde_json::json!({ "error": error.to_string() }),
                Ok(Err(error)) => serde_json::json!({ "error": error.to_string() }),
                Err(_) => serde_json::json!({ "error": "missed its deadline" }),
            };
            gpus.push(serde_json::json!({
                "index": gpu.index,
                "uuid": gpu.uuid,
                "pci_bus_id": gpu.pci_bus_id,
                "values": values,
            }));
        }
        let line = serde_json::json!({
            "at": tollgate_agent::clock::now().to_rfc3339(),
            "gpus": gpus,
        });
        println!("{line}");
    }
    Ok(())
}
