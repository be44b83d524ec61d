//! The agent's own `GET /metrics` (`--metrics-listen`, off by default): its GPUs' latest
//! telemetry under dcgm-exporter's names and labels (as the controller's `/metrics` reports
//! them for the fleet) and the agent's counters: samples taken, reconnects, spool depth, step
//! processes running.
//!
//! Ownership: one [`AgentMetrics`] per agent, shared by the fleet loop (which writes the
//! samples and the inventory), the session loop (reconnects) and the HTTP handler, which reads
//! the spool and the job slot at scrape time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tollgate_domain::fleet::{GpuSourceKind, Inventory};
use tollgate_domain::telemetry::Field;
use tollgate_wire::prometheus::{GpuSeries, Text, write_gpu_families};

/// Counters and the latest GPU values; see the module docs.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    samples_taken: AtomicU64,
    reconnects: AtomicU64,
    inventory: Mutex<Option<Inventory>>,
    latest: Mutex<BTreeMap<u32, BTreeMap<Field, f64>>>,
}

/// What a scrape reads from the rest of the agent.
#[derive(Debug, Clone, Copy)]
pub struct Live {
    /// Results in the spool, not yet acknowledged.
    pub spool_depth: usize,
    /// Step processes running now (0 or 1: one job, one step at a time).
    pub steps_running: usize,
}

impl AgentMetrics {
    /// The inventory whose GPUs label the telemetry.
    pub fn set_inventory(&self, inventory: Inventory) {
        *self
            .inventory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(inventory);
    }

    /// One GPU's sample was taken.
    pub fn sample_taken(&self, gpu_index: u32, values: &BTreeMap<Field, f64>) {
        self.samples_taken.fetch_add(1, Ordering::Relaxed);
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(gpu_index, values.clone());
    }

    /// A session with the controller ended and another will be tried.
    pub fn reconnecting(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// The text format of everything, with `node` as `Hostname`.
    pub fn render(&self, node: &str, live: Live) -> String {
        let mut text = Text::default();
        text.single(
            "tollgate_agent_samples_taken_total",
            "counter",
            "GPU telemetry samples taken for the fleet stream (one per GPU per round).",
            self.samples_taken.load(Ordering::Relaxed) as f64,
        );
        text.single(
            "tollgate_agent_reconnects_total",
            "counter",
            "Sessions with the controller that ended and were tried again.",
            self.reconnects.load(Ordering::Relaxed) as f64,
        );
        text.single(
            "tollgate_agent_spool_depth",
            "gauge",
            "Results in the spool, not yet acknowledged by the controller.",
            live.spool_depth as f64,
        );
        text.single(
            "tollgate_agent_step_processes_running",
            "gauge",
            "Step processes running now.",
            live.steps_running as f64,
        );
        let inventory = self
            .inventory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let latest = self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(inventory) = &inventory {
            let series: Vec<GpuSeries<'_>> = inventory
                .gpus
                .iter()
                .filter_map(|gpu| {
                    Some(GpuSeries {
                        index: gpu.index,
                        uuid: &gpu.uuid,
                        pci_bus_id: &gpu.pci_bus_id,
                        model_name: &gpu.name,
                        hostname: node,
                        driver_version: &inventory.driver_version,
                        simulated: inventory.gpu_source == GpuSourceKind::Simulated,
                        values: latest.get(&gpu.index)?,
                    })
                })
                .collect();
            write_gpu_families(&mut text, &series);
        }
        text.finish()
    }
}
