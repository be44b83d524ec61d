//! Where GPU facts come from: the [`GpuSource`] trait, implemented by NVML ([`nvml`]) and by
//! the simulated node ([`simulated`]).
//!
//! Every method blocks (NVML calls do); async code calls them through `spawn_blocking`.

pub mod nvml;
pub mod nvml_raw;
pub mod probed;
pub mod simulated;

use std::collections::BTreeMap;
use tollgate_domain::fleet::{GpuSourceKind, Inventory};
use tollgate_domain::telemetry::{Field, GpuEvent};

/// One sampling round: for each GPU index, the fields it reported. Unsupported fields are
/// absent, never zero.
pub type Sample = Vec<(u32, BTreeMap<Field, f64>)>;

/// A source of inventory, telemetry and critical events for the GPUs of this node.
pub trait GpuSource: Send + Sync {
    /// Which kind of source this is.
    fn kind(&self) -> GpuSourceKind;

    /// The node's inventory as observed now.
    fn inventory(&self) -> Result<Inventory, GpuError>;

    /// One telemetry sample of every GPU. A GPU that could not be read is left out of the
    /// round (the sampler counts it as missed); `Err` means no GPU could be read at all.
    fn sample(&self) -> Result<Sample, GpuError>;

    /// One telemetry sample of one GPU. The sampler calls this on a blocking worker per GPU
    /// under a deadline, so a GPU whose driver call hangs delays only its own samples.
    fn sample_gpu(&self, gpu_idx: u32) -> Result<BTreeMap<Field, f64>, GpuError>;

    /// Critical events (XID, uncorrected ECC, GPU lost) seen since the last call.
    fn events(&self) -> Vec<GpuEvent>;

    /// Tells the source whether a step is loading the GPUs. Only the simulated source uses
    /// it, to decide what its numbers look like; real GPUs know for themselves.
    fn set_load(&self, _loaded: bool) {}
}

/// Why GPU facts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// The NVML library is not installed.
    #[error(
        "no NVIDIA driver found: libnvidia-ml.so.1 could not be loaded (install the NVIDIA \
         driver, or run with --gpus sim:N for simulated GPUs)"
    )]
    NoDriver,
    /// The library is there but the kernel module is not loaded.
    #[error(
        "the NVIDIA kernel driver is not loaded (check `lsmod | grep nvidia` and dmesg; \
         or run with --gpus sim:N for simulated GPUs)"
    )]
    DriverNotLoaded,
    /// The agent's user may not talk to the driver.
    #[error("no permission to use NVML (run the agent as a user that may open /dev/nvidia*)")]
    NoPermission,
    /// User-space library and kernel module are from different driver versions.
    #[error(
        "NVML library and kernel module versions differ — typical right after a driver \
         upgrade without reboot; reboot the node"
    )]
    VersionMismatch,
    /// The GPU fell off the bus (NVML `GpuLost`); a `gpu-lost` event was raised.
    #[error("GPU {gpu_idx} is lost (fell off the bus)")]
    GpuLost {
        /// NVML device index.
        gpu_idx: u32,
    },
    /// The simulated node has no GPU with this index.
    #[error("no GPU with index {gpu_idx}")]
    NoSuchGpu {
        /// The index asked for.
        gpu_idx: u32,
    },
    /// Any other NVML failure, with what was being done.
    #[error("NVML {what} failed: {source}")]
    Nvml {
        /// What the agent was doing.
        what: String,
        /// NVML's error.
        source: nvml_wrapper::error::NvmlError,
    },
}

/// The host name of the machine the agent runs on; empty when it cannot be read.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_default()
}
