//! The agent's configuration: what `main` builds from flags and what tests build by hand.

use crate::gpu::simulated::Fault;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Where the agent gets its GPUs from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuMode {
    /// Real GPUs through NVML.
    Nvml,
    /// `count` simulated GPUs.
    Simulated {
        /// How many GPUs the simulated node has.
        count: u32,
    },
}

impl FromStr for GpuMode {
    type Err = String;

    /// Parses `nvml` or `sim:N`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "nvml" {
            return Ok(Self::Nvml);
        }
        let bad = || format!("'{text}' is not a GPU source (expected nvml or sim:N, e.g. sim:8)");
        let count = text
            .strip_prefix("sim:")
            .ok_or_else(bad)?
            .parse::<u32>()
            .map_err(|_| bad())?;
        if count == 0 || count > 64 {
            return Err(format!("sim:{count}: a simulated node has 1 to 64 GPUs"));
        }
        Ok(Self::Simulated { count })
    }
}

/// Everything an agent needs to run. Built by `main` from flags, or by tests directly.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Controller URL: `https://HOST:PORT`, or `http://` to a loopback address.
    pub controller: String,
    /// The CA certificate (PEM) the controller's certificate is checked against, for
    /// `https://`.
    pub ca_file: Option<PathBuf>,
    /// A file holding the one-time bootstrap token (`tollgate node enroll`); used once, when
    /// the state directory has no node certificate yet.
    pub bootstrap_token_file: Option<PathBuf>,
    /// This node's name.
    pub node: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// NVML or simulated GPUs.
    pub gpus: GpuMode,
    /// Seed of the simulated GPUs; `None` derives one from the node name.
    pub sim_seed: Option<u64>,
    /// Driver version the simulated node reports.
    pub sim_driver: String,
    /// VBIOS version the simulated GPUs report.
    pub sim_vbios: String,
    /// Faults injected into the simulated GPUs.
    pub faults: Vec<Fault>,
    /// Spool, node token and step logs live here.
    pub state_dir: PathBuf,
    /// How often telemetry is sampled while a step runs.
    pub sample_interval: Duration,
    /// How often fleet telemetry is sampled outside steps; zero turns it off.
    pub fleet_interval: Duration,
    /// Fleet samples (one GPU at one instant) held while the controller is unreachable;
    /// beyond it the oldest are dropped and counted.
    pub telemetry_buffer: usize,
    /// Inventory probes (`--probe NAME=COMMAND`), run whenever the inventory is observed.
    pub probes: Vec<crate::gpu::probed::Probe>,
    /// `PATH` for steps (`--step-path`); `None` passes the agent's own.
    pub step_path: Option<String>,
    /// Names of the agent's variables steps also get (`--pass-env`); every other one is
    /// withheld (see `runner::environment`).
    pub pass_env: Vec<String>,
    /// Where to serve the agent's own `GET /metrics` (`--metrics-listen`); off when `None`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How long the connection to the controller may go without a byte from it before the
    /// agent pings it (HTTP/2 keepalive; `--keepalive`). A ping unanswered within
    /// [`KEEPALIVE_TIMEOUT`] closes the connection and the agent reconnects (to the next
    /// replica, if several).
    pub keepalive: Duration,
}

impl AgentConfig {
    /// A configuration with the documented defaults for a simulated node; tests and the demo
    /// start from it.
    pub fn simulated(controller: &str, node: &str, n_gpus: u32, state_dir: PathBuf) -> Self {
        Self {
            controller: controller.to_owned(),
            ca_file: None,
            bootstrap_token_file: None,
            node: node.to_owned(),
            labels: BTreeMap::new(),
            gpus: GpuMode::Simulated { count: n_gpus },
            sim_seed: None,
            sim_driver: DEFAULT_SIM_DRIVER.to_owned(),
            sim_vbios: DEFAULT_SIM_VBIOS.to_owned(),
            faults: Vec::new(),
            state_dir,
            sample_interval: Duration::from_secs(1),
            fleet_interval: DEFAULT_FLEET_INTERVAL,
            telemetry_buffer: DEFAULT_TELEMETRY_BUFFER,
            probes: Vec::new(),
            step_path: None,
            pass_env: Vec::new(),
            metrics_listen: None,
            keepalive: DEFAULT_KEEPALIVE,
        }
    }
}

impl AgentConfig {
    /// Rejects combinations the flags allow but the agent cannot honour.
    pub fn check(&self) -> Result<(), String> {
        if !self.faults.is_empty() && self.gpus == GpuMode::Nvml {
            return Err("--fault applies only to simulated GPUs (use --gpus sim:N)".to_owned());
        }
        for name in &self.pass_env {
            crate::runner::environment::check_pass_env_name(name)?;
        }
        let addresses = crate::client::parse_controllers(&self.controller)?;
        if addresses[0].url.starts_with("https://") && self.ca_file.is_none() {
            return Err(format!(
                "--ca-file is needed for {}: pass the controller's CA certificate (ca.pem from \
                 `tollgate-controller ca init`) with --ca-file or TOLLGATE_CA_FILE",
                addresses
                    .iter()
                    .map(|address| tollgate_wire::daemon_config::redact_url(&address.url))
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        if let Some(plain) = addresses.iter().find(|address| {
            !address.url.starts_with("https://")
                && !tollgate_domain::access::is_loopback_url(&address.url)
        }) {
            return Err(format!(
                "refusing plain text to {}: only a loopback controller may be reached with \
                 http://; use https://HOST:PORT with --ca-file (the controller's ca.pem)",
                tollgate_wire::daemon_config::redact_url(&plain.url)
            ));
        }
        if self.sample_interval.is_zero() {
            return Err("the sample interval must be longer than 0s".to_owned());
        }
        Ok(())
    }
}

/// How often fleet telemetry is sampled outside steps unless told otherwise.
pub const DEFAULT_FLEET_INTERVAL: Duration = Duration::from_secs(10);
/// Default of `--keepalive`. An idle controller sends nothing, so the agent pings once per
/// this interval: at 30 s, a connection that died without a reset (a partition, a host that
/// vanished) is noticed within 35 s, and 5,000 idle agents cost the controller a ping answer
/// every 6 ms instead of one per heartbeat (see BENCHMARKS.md, "Heartbeats").
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered before the connection counts as dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Fleet samples held through a controller outage unless told otherwise: a day of an 8-GPU
/// node at the default interval is 69,120; this keeps about three hours.
pub const DEFAULT_TELEMETRY_BUFFER: usize = 8_640;

/// The driver version a simulated node reports unless told otherwise.
pub const DEFAULT_SIM_DRIVER: &str = "550.54.15";
/// The VBIOS version simulated GPUs report unless told otherwise.
pub const DEFAULT_SIM_VBIOS: &str = "96.00.89.00.01";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_goes_only_to_loopback_and_https_needs_a_ca() {
        let config = |url: &str| AgentConfig::simulated(url, "n1", 1, PathBuf::from("/tmp/x"));
        assert!(config("http://127.0.0.1:7800").check().is_ok());
        let plain = config("http://10.0.0.9:7800").check().expect_err("refused");
        assert!(plain.contains("https://"), "{plain}");
        let no_ca = config("https://ctl:7800").check().expect_err("refused");
        assert!(no_ca.contains("--ca-file"), "{no_ca}");
        // A password in an address never reaches the message.
        for url in [
            "https://ops:s3cret@ctl:7800",
            "http://ops:s3cret@10.0.0.9:7800",
        ] {
            let refused = config(url).check().expect_err("refused");
            assert!(!refused.contains("s3cret"), "{refused}");
            assert!(refused.contains("ops:***@"), "{refused}");
        }
        let mut with_ca = config("https://ctl:7800");
        with_ca.ca_file = Some(PathBuf::from("ca.pem"));
        assert!(with_ca.check().is_ok());
    }

    #[test]
    fn gpu_modes_parse_or_say_why() {
        assert_eq!("nvml".parse::<GpuMode>(), Ok(GpuMode::Nvml));
        assert_eq!(
            "sim:8".parse::<GpuMode>(),
            Ok(GpuMode::Simulated { count: 8 })
        );
        assert!("sim:0".parse::<GpuMode>().unwrap_err().contains("1 to 64"));
        assert!(
            "gpu"
                .parse::<GpuMode>()
                .unwrap_err()
                .contains("expected nvml or sim:N")
        );
    }
}
