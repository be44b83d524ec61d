//! Tollgate's per-node agent: reports the node's inventory, keeps a lease with the controller
//! through heartbeats, runs the steps of assigned jobs as real processes while sampling GPU
//! telemetry, and delivers every result through an on-disk spool.
//!
//! **Boundary:** the agent never decides. It executes what the controller assigned and reports
//! facts; whether a result is good for a release is the controller's (the domain's) call.
//!
//! [`run`] is the whole agent: `main` parses flags into an [`AgentConfig`] and calls it, and
//! tests call it in-process with a shutdown future they control.

// Unsafe code is denied everywhere but `gpu::nvml_raw`, which says why it needs it.
#![deny(unsafe_code)]

pub mod bench;
pub mod client;
pub mod clock;
pub mod config;
pub mod fleet;
pub mod gpu;
pub mod identity;
pub mod metrics;
pub mod parse;
pub mod runner;
pub mod sampler;
pub mod spool;
pub mod traces;

pub use config::{AgentConfig, DEFAULT_SIM_DRIVER, DEFAULT_SIM_VBIOS, GpuMode};
pub use gpu::simulated::Fault;

use anyhow::Context;
use gpu::simulated::{SimConfig, SimulatedSource};
use gpu::{GpuError, GpuSource};
use std::future::Future;
use std::sync::Arc;

/// The agent's version, sent with every registration.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds the configured GPU source. NVML initialization blocks, so async callers run this on
/// a blocking thread.
pub fn build_source(config: &AgentConfig) -> Result<Arc<dyn GpuSource>, GpuError> {
    let source = build_gpu_source(config)?;
    if config.probes.is_empty() {
        return Ok(source);
    }
    Ok(Arc::new(gpu::probed::ProbedSource::new(
        source,
        config.probes.clone(),
        gpu::probed::PROBE_TIMEOUT,
    )))
}

fn build_gpu_source(config: &AgentConfig) -> Result<Arc<dyn GpuSource>, GpuError> {
    match config.gpus {
        GpuMode::Nvml => Ok(Arc::new(gpu::nvml::NvmlSource::new()?)),
        GpuMode::Simulated { count } => Ok(Arc::new(SimulatedSource::new(SimConfig {
            node: config.node.clone(),
            seed: config.sim_seed,
            n_gpus: count,
            driver: config.sim_driver.clone(),
            vbios: config.sim_vbios.clone(),
            faults: config.faults.clone(),
        }))),
    }
}

/// Runs the agent until `shutdown` resolves (then it kills a running step's process group,
/// keeps unsent results in the spool and returns `Ok`), or until a fatal error: no usable GPU
/// source, an unusable state directory, or the controller refusing this node.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.check().map_err(anyhow::Error::msg)?;
    let source_config = config.clone();
    let source = tokio::task::spawn_blocking(move || build_source(&source_config))
        .await
        .context("starting the GPU source")??;
    std::fs::create_dir_all(&config.state_dir).with_context(|| {
        format!(
            "creating the state directory {}",
            config.state_dir.display()
        )
    })?;
    let spool_dir = config.state_dir.join("spool");
    let spool = spool::Spool::open(&spool_dir)
        .with_context(|| format!("opening the spool {}", spool_dir.display()))?;
    tracing::info!(
        node = %config.node,
        controller = %config.controller,
        gpu_source = source.kind().as_str(),
        state_dir = %config.state_dir.display(),
        "agent starting"
    );
    enroll_once(&config).await?;
    client::Agent::new(config, source, Arc::new(spool))?
        .run(shutdown)
        .await
}

/// Enrolls the node with `--bootstrap-token-file` when the state directory holds no node
/// certificate yet; waits for an unreachable controller (a refusal is final).
async fn enroll_once(config: &AgentConfig) -> anyhow::Result<()> {
    let Some(token_file) = &config.bootstrap_token_file else {
        return Ok(());
    };
    if identity::load(&config.state_dir)?.is_some() {
        return Ok(());
    }
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading --bootstrap-token-file {}", token_file.display()))?;
    let mut delay = std::time::Duration::from_millis(100);
    let channel = loop {
        match client::enrollment_channel(config).await {
            Ok(channel) => break channel,
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), retry_in = ?delay, "cannot reach the controller to enroll");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    };
    identity::enroll(channel, &config.node, &token, &config.state_dir).await?;
    Ok(())
}
