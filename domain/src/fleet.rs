//! Nodes: labels, inventory, state and health, and label selectors.

use crate::{JobId, NodeId, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Node labels (`sku=hgx-h100`, `site=lab-a`).
pub type Labels = BTreeMap<String, String>;

/// Where a node's GPU facts come from.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case", parse_err_ty = String, parse_err_fn = crate::names::unknown::<Self>)]
pub enum GpuSourceKind {
    /// Real hardware through NVML.
    #[default]
    Nvml,
    /// The simulated source: numbers are made up and every report says so.
    Simulated,
}

impl GpuSourceKind {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One GPU as an agent observed it. Optional fields are absent when the GPU does not report them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// NVML device index.
    pub index: u32,
    /// GPU UUID.
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// Board serial number.
    pub serial: Option<String>,
    /// Board part number.
    pub board_part_number: Option<String>,
    /// PCI bus id.
    pub pci_bus_id: String,
    /// VBIOS version.
    pub vbios_version: String,
    /// InfoROM image version.
    pub inforom_version: Option<String>,
    /// Framebuffer size in MiB.
    pub memory_total_mib: u64,
    /// ECC currently enabled.
    pub ecc_enabled: Option<bool>,
    /// Enforced power limit in watts.
    pub power_limit_w: Option<f64>,
    /// Maximum PCIe link generation.
    pub max_pcie_gen: Option<u32>,
    /// Maximum PCIe link width.
    pub max_pcie_width: Option<u32>,
}

/// What a node is running, as its agent observed it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// NVIDIA driver version.
    pub driver_version: String,
    /// CUDA driver version.
    pub cuda_driver_version: String,
    /// NVML library version.
    pub nvml_version: String,
    /// GPUs by index.
    pub gpus: Vec<GpuInfo>,
    /// Components reported by inventory probes.
    pub components: BTreeMap<String, String>,
    /// Where the GPU facts came from.
    pub gpu_source: GpuSourceKind,
    /// Host name.
    pub hostname: String,
}

/// A node's scheduling state.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case", parse_err_ty = String, parse_err_fn = crate::names::unknown::<Self>)]
pub enum NodeState {
    /// Connected, idle, accepting jobs.
    #[default]
    Ready,
    /// Connected and running a job.
    Busy,
    /// An operator took it out of scheduling; a running job finishes.
    Cordoned,
    /// Drained (`tollgate node drain`): no new jobs, waiting for its running job to end (or for
    /// the drain's deadline, when the job is cancelled and rescheduled elsewhere).
    Draining,
    /// Drained and out of service until an operator resumes it (`tollgate node resume`).
    Maintenance,
    /// No heartbeat within the lease grace; its running job is lost.
    Unreachable,
    /// Removed from the fleet for good.
    Retired,
}

/// A node's health, from what its steps showed and what an operator decided; changes are
/// decided by [`crate::node::next`]. Only a `good` node is selected for runs or sent jobs.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case", parse_err_ty = String, parse_err_fn = crate::names::unknown::<Self>)]
pub enum Health {
    /// Nothing wrong seen, or an operator cleared it.
    #[default]
    Good,
    /// Something worth a look: [`crate::node::REPEATED_ERRORS`] harness errors in a row.
    Suspect,
    /// A hardware finding: a GPU fell off the bus, or a health check failed.
    Bad,
}

impl NodeState {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}
impl Health {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A node of the fleet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Node name.
    pub id: NodeId,
    /// Labels of record: those an operator gave at enrollment (an agent that was not enrolled,
    /// on a plain loopback listener, gives its own). Runs select on these.
    pub labels: Labels,
    /// The labels the node's agent reports of itself (`--label`): shown beside the labels of
    /// record, never used to select.
    #[serde(default)]
    pub reported_labels: Labels,
    /// Scheduling state.
    pub state: NodeState,
    /// Health.
    pub health: Health,
    /// Why the node has its health: the finding or the operator's reason; empty for a node
    /// that was never anything but `good`.
    #[serde(default)]
    pub health_reason: String,
    /// Inventory from the last registration.
    pub inventory: Inventory,
    /// Last heartbeat.
    pub last_seen_at: Option<Timestamp>,
    /// The job the node is running.
    pub current_job: Option<JobId>,
}

/// A label selector: a node matches when it carries every label with the same value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Selector(pub BTreeMap<String, String>);

impl Selector {
    /// Whether `labels` carries every label of the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(every node)");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// Parses `key=value` as a label; the error says what is wrong.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("label '{text}' is not key=value"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("label '{text}' has an empty key"));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return Err(format!(
            "label key '{key}' may hold only letters, digits, '-', '_', '.' and '/'"
        ));
    }
    Ok((key.to_owned(), value.trim().to_owned()))
}

/// A GPU health fact an `inventory-check` found wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthProblem {
    /// The GPU.
    pub gpu_index: u32,
    /// What is wrong, naming the fact and its value (`ECC is disabled`).
    pub problem: String,
}

impl fmt::Display for HealthProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GPU {}: {}", self.gpu_index, self.problem)
    }
}

/// Checks the health facts a qualification needs on every GPU, each only where the GPU reports
/// it: ECC enabled; the current PCIe link width at the GPU's maximum; no row remap pending and
/// no row remap failure. `sample` is one telemetry round (GPU index, fields).
///
/// The PCIe link *generation* is not compared: GPUs lower it when idle to save power, so an idle
/// GPU at Gen1 is healthy. A degraded link shows in its width (a bad riser or retimer), and in
/// the `pcie` test of a `dcgm-diag` step under load.
pub fn check_health(
    inventory: &Inventory,
    sample: &[(u32, BTreeMap<crate::telemetry::Field, f64>)],
) -> Vec<HealthProblem> {
    use crate::telemetry::Field;
    let mut problems = Vec::new();
    for gpu in &inventory.gpus {
        let mut add = |problem: String| {
            problems.push(HealthProblem {
                gpu_index: gpu.index,
                problem,
            });
        };
        if gpu.ecc_enabled == Some(false) {
            add("ECC is disabled".to_owned());
        }
        let Some(values) = sample
            .iter()
            .find(|(idx, _)| *idx == gpu.index)
            .map(|(_, values)| values)
        else {
            continue;
        };
        if let (Some(max), Some(&width)) = (gpu.max_pcie_width, values.get(&Field::PcieLinkWidth))
            && width < f64::from(max)
        {
            add(format!(
                "PCIe link width is x{width}, the GPU supports x{max}"
            ));
        }
        if values
            .get(&Field::RowRemapPending)
            .is_some_and(|v| *v > 0.0)
        {
            add("a row remap is pending (the GPU needs a reset)".to_owned());
        }
        if values
            .get(&Field::RowRemapFailure)
            .is_some_and(|v| *v > 0.0)
        {
            add("row remapping failed (the GPU should be replaced)".to_owned());
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_needs_every_label() {
        let labels: Labels = [
            ("sku".into(), "hgx-h100".into()),
            ("site".into(), "a".into()),
        ]
        .into_iter()
        .collect();
        let sel = |pairs: &[(&str, &str)]| {
            Selector(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert!(sel(&[]).matches(&labels));
        assert!(sel(&[("sku", "hgx-h100")]).matches(&labels));
        assert!(!sel(&[("sku", "hgx-h100"), ("site", "b")]).matches(&labels));
        assert!(!sel(&[("rack", "1")]).matches(&labels));
    }

    #[test]
    fn labels_parse_or_say_why() {
        assert_eq!(
            parse_label("sku=hgx-h100"),
            Ok(("sku".into(), "hgx-h100".into()))
        );
        assert!(parse_label("sku").unwrap_err().contains("not key=value"));
        assert!(parse_label("=x").unwrap_err().contains("empty key"));
        assert!(parse_label("a b=x").unwrap_err().contains("may hold only"));
    }

    #[test]
    fn health_check_names_each_problem_where_reported() {
        use crate::telemetry::Field;
        let mut inventory = crate::test_support::inventory("550.54.15", "96.00.89.00.01", 3);
        for gpu in &mut inventory.gpus {
            gpu.ecc_enabled = Some(true);
            gpu.max_pcie_width = Some(16);
        }
        inventory.gpus[1].ecc_enabled = Some(false);
        let healthy = BTreeMap::from([
            (Field::PcieLinkWidth, 16.0),
            (Field::PcieLinkGen, 1.0),
            (Field::RowRemapPending, 0.0),
        ]);
        let mut narrow = healthy.clone();
        narrow.insert(Field::PcieLinkWidth, 8.0);
        narrow.insert(Field::RowRemapPending, 1.0);
        narrow.insert(Field::RowRemapFailure, 1.0);
        let sample = vec![(0, healthy.clone()), (1, healthy), (2, narrow)];
        let text: Vec<String> = check_health(&inventory, &sample)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            text,
            [
                "GPU 1: ECC is disabled",
                "GPU 2: PCIe link width is x8, the GPU supports x16",
                "GPU 2: a row remap is pending (the GPU needs a reset)",
                "GPU 2: row remapping failed (the GPU should be replaced)",
            ]
        );
        // Facts a GPU does not report are not held against it.
        for gpu in &mut inventory.gpus {
            gpu.ecc_enabled = None;
        }
        assert!(check_health(&inventory, &[]).is_empty());
    }
}
