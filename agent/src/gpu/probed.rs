//! Inventory probes (`--probe NAME=COMMAND`): site commands that report component versions
//! the GPU source cannot see (a NIC firmware, a BMC, a kernel). Each runs through `sh -c`
//! under a timeout whenever the inventory is observed, and prints `component=version` lines;
//! those merge into `Inventory.components`. A probe that fails, times out or prints nothing
//! usable is logged and reported as `probe.NAME.error`, and never stops the agent.

use super::{GpuError, GpuSource, Sample};
use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_domain::fleet::{GpuSourceKind, Inventory};
use tollgate_domain::telemetry::{Field, GpuEvent};

/// How long a probe may run.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most output read from one probe.
const MAX_OUTPUT: u64 = 64 * 1024;

/// One `--probe NAME=COMMAND`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Name, for logs and the error component.
    pub name: String,
    /// Shell command.
    pub command: String,
}

impl FromStr for Probe {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('=') {
            Some((name, command)) if !name.trim().is_empty() && !command.trim().is_empty() => {
                Ok(Self {
                    name: name.trim().to_owned(),
                    command: command.to_owned(),
                })
            }
            _ => Err(format!(
                "probe '{text}': expected NAME=COMMAND, e.g. nic=/opt/site/nic-versions"
            )),
        }
    }
}

/// Why a probe gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// It could not be started.
    #[error("could not start: {0}")]
    Spawn(std::io::Error),
    /// It ran past the timeout and was killed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// It exited unsuccessfully.
    #[error("exited with {0}")]
    Exit(std::process::ExitStatus),
    /// Waiting for it failed.
    #[error("waiting failed: {0}")]
    Wait(std::io::Error),
}

/// Runs one probe and parses its `component=version` lines.
pub fn run_probe(probe: &Probe, timeout: Duration) -> Result<BTreeMap<String, String>, ProbeError> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&probe.command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(ProbeError::Spawn)?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait().map_err(ProbeError::Wait)? {
            Some(status) => break status,
            None if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProbeError::Timeout(timeout));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut output = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = stdout.take(MAX_OUTPUT).read_to_string(&mut output);
    }
    if !status.success() {
        return Err(ProbeError::Exit(status));
    }
    Ok(parse_components(&output))
}

/// `component=version` lines; anything else is ignored.
pub fn parse_components(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(component, version)| (component.trim(), version.trim()))
        .filter(|(component, version)| !component.is_empty() && !version.is_empty())
        .map(|(component, version)| (component.to_owned(), version.to_owned()))
        .collect()
}

/// A GPU source whose inventory also carries what the probes report.
pub struct ProbedSource {
    inner: Arc<dyn GpuSource>,
    probes: Vec<Probe>,
    timeout: Duration,
}

impl ProbedSource {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn GpuSource>, probes: Vec<Probe>, timeout: Duration) -> Self {
        Self {
            inner,
            probes,
            timeout,
        }
    }
}

impl GpuSource for ProbedSource {
    fn kind(&self) -> GpuSourceKind {
        self.inner.kind()
    }

    fn inventory(&self) -> Result<Inventory, GpuError> {
        let mut inventory = self.inner.inventory()?;
        for probe in &self.probes {
            match run_probe(probe, self.timeout) {
                Ok(components) if components.is_empty() => {
                    tracing::warn!(probe = %probe.name, "inventory probe printed no component=version line");
                    inventory.components.insert(
                        format!("probe.{}.error", probe.name),
                        "no component=version output".to_owned(),
                    );
                }
                Ok(components) => inventory.components.extend(components),
                Err(error) => {
                    tracing::warn!(probe = %probe.name, %error, "inventory probe failed");
                    inventory
                        .components
                        .insert(format!("probe.{}.error", probe.name), error.to_string());
                }
            }
        }
        Ok(inventory)
    }

    fn sample(&self) -> Result<Sample, GpuError> {
        self.inner.sample()
    }

    fn sample_gpu(&self, gpu_idx: u32) -> Result<BTreeMap<Field, f64>, GpuError> {
        self.inner.sample_gpu(gpu_idx)
    }

    fn events(&self) -> Vec<GpuEvent> {
        self.inner.events()
    }

    fn set_load(&self, loaded: bool) {
        self.inner.set_load(loaded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::simulated::{SimConfig, SimulatedSource};

    fn probe(text: &str) -> Probe {
        text.parse().expect("probe")
    }

    #[test]
    fn probes_merge_components_and_failures_are_reported_not_fatal() {
        let inner: Arc<dyn GpuSource> = Arc::new(SimulatedSource::new(SimConfig {
            node: "n1".into(),
            seed: Some(1),
            n_gpus: 1,
            driver: "550.54.15".into(),
            vbios: "96.00.89.00.01".into(),
            faults: vec![],
        }));
        let source = ProbedSource::new(
            inner,
            vec![
                probe("nic=printf 'cx7-fw=28.39.1002\\nnoise\\nbmc = 1.2.3\\n'"),
                probe("broken=exit 3"),
                probe("slow=sleep 5"),
            ],
            Duration::from_millis(300),
        );
        let inventory = source.inventory().expect("inventory");
        let c = &inventory.components;
        assert_eq!(c.get("cx7-fw").map(String::as_str), Some("28.39.1002"));
        assert_eq!(c.get("bmc").map(String::as_str), Some("1.2.3"));
        assert!(c["probe.broken.error"].contains("exit"), "{c:?}");
        assert!(c["probe.slow.error"].contains("timed out"), "{c:?}");
        assert_eq!(inventory.gpus.len(), 1);
    }

    #[test]
    fn probe_flags_parse_or_say_why() {
        assert_eq!(
            probe("nic=/opt/nic-versions --all"),
            Probe {
                name: "nic".into(),
                command: "/opt/nic-versions --all".into()
            }
        );
        assert!("nic".parse::<Probe>().unwrap_err().contains("NAME=COMMAND"));
        assert!("=cmd".parse::<Probe>().is_err());
    }
}
