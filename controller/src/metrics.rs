//! What the controller counts as it goes, for `GET /metrics` (`http/metrics.rs`): results
//! ingested, gate decisions by verdict, lease expiries, RPC and store latencies, recorded
//! through the `metrics` facade into this controller's own Prometheus recorder, and the latest
//! fleet telemetry value of each GPU.
//!
//! The recorder is never installed globally: tests run several controllers in one process,
//! and each must report its own numbers. Gauges that state already holds (runs and jobs by
//! state, connected agents) are read at scrape time instead of being kept twice.
//!
//! Ownership: one [`Metrics`] per controller, in `Shared`; every task records into it. The
//! histograms' samples wait in lock-free buffers until a scrape or [`run_upkeep_loop`] folds
//! them into their buckets, so memory stays bounded when nobody scrapes.

use metrics::{Counter, Key, KeyName, Label, Metadata, Recorder as _};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_domain::telemetry::Field;
use tollgate_domain::{NodeId, Timestamp};

/// Results stored (a duplicate is acknowledged, not counted).
pub const RESULTS_INGESTED: &str = "tollgate_results_ingested_total";
/// Gate decisions made and stored, by verdict.
pub const DECISIONS: &str = "tollgate_gate_decisions_total";
/// Leases expired by this controller's watchdog.
pub const LEASE_EXPIRIES: &str = "tollgate_lease_expiries_total";
/// gRPC calls handled, by service, method and status code, to the response's headers.
pub const RPC_SECONDS: &str = "tollgate_grpc_server_handling_seconds";
/// Store operations, by operation.
pub const STORE_SECONDS: &str = "tollgate_store_operation_seconds";

/// Histogram buckets, in seconds: from half a millisecond (a cached read) to ten seconds (a
/// store outage's timeouts).
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often [`run_upkeep_loop`] folds histogram samples when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// One GPU's latest fleet telemetry.
#[derive(Debug, Clone, Default)]
pub struct GpuLatest {
    /// When the agent took the newest sample.
    pub at: Option<Timestamp>,
    /// The newest value of each field reported.
    pub values: BTreeMap<Field, f64>,
}

/// The controller's metrics; see the module docs.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    results_ingested: Counter,
    lease_expiries: Counter,
    /// Latest fleet telemetry per node and GPU index, written by `fleet_history::fold`.
    latest: Mutex<HashMap<NodeId, BTreeMap<u32, GpuLatest>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh recorder with every family described.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let describe = |name: &'static str, help: &'static str| {
            recorder.describe_counter(KeyName::from_const_str(name), None, help.into());
        };
        describe(
            RESULTS_INGESTED,
            "Step results stored (duplicates are not counted).",
        );
        describe(DECISIONS, "Gate decisions made and stored, by verdict.");
        describe(
            LEASE_EXPIRIES,
            "Node leases expired by this controller (no heartbeat within the grace).",
        );
        recorder.describe_histogram(
            KeyName::from_const_str(RPC_SECONDS),
            None,
            "gRPC calls handled by this controller, by service, method and code: seconds until the response's headers (for streams: until the stream opened).".into(),
        );
        recorder.describe_histogram(
            KeyName::from_const_str(STORE_SECONDS),
            None,
            "Store operations, by operation, in seconds.".into(),
        );
        let results_ingested =
            recorder.register_counter(&Key::from_static_name(RESULTS_INGESTED), &METADATA);
        let lease_expiries =
            recorder.register_counter(&Key::from_static_name(LEASE_EXPIRIES), &METADATA);
        // Present from the start at 0, so a rate over them is defined before the first event.
        results_ingested.increment(0);
        lease_expiries.increment(0);
        let handle = recorder.handle();
        Self {
            recorder,
            handle,
            results_ingested,
            lease_expiries,
            latest: Mutex::default(),
        }
    }

    /// A result was stored.
    pub fn result_ingested(&self) {
        self.results_ingested.increment(1);
    }

    /// A node's lease expired.
    pub fn lease_expired(&self) {
        self.lease_expiries.increment(1);
    }

    /// A gate decision with `verdict` was made and stored.
    pub fn decision(&self, verdict: &'static str) {
        let key = Key::from_parts(DECISIONS, vec![Label::new("verdict", verdict)]);
        self.recorder.register_counter(&key, &METADATA).increment(1);
    }

    /// A gRPC call ended after `elapsed`.
    pub fn rpc(
        &self,
        service: &'static str,
        method: &'static str,
        code: &'static str,
        elapsed: Duration,
    ) {
        let key = Key::from_parts(
            RPC_SECONDS,
            vec![
                Label::new("service", service),
                Label::new("method", method),
                Label::new("code", code),
            ],
        );
        self.recorder
            .register_histogram(&key, &METADATA)
            .record(elapsed.as_secs_f64());
    }

    /// Awaits `operation`, recording how long it took under `op`.
    pub async fn store<T>(&self, op: &'static str, operation: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let output = operation.await;
        let key = Key::from_parts(STORE_SECONDS, vec![Label::new("op", op)]);
        self.recorder
            .register_histogram(&key, &METADATA)
            .record(started.elapsed().as_secs_f64());
        output
    }

    /// The recorded families in the text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Keeps `gpu_index`'s newest values of `node` (an older sample, delivered late after an
    /// outage, does not replace a newer one).
    pub(crate) fn note_sample(
        latest: &mut HashMap<NodeId, BTreeMap<u32, GpuLatest>>,
        node: &NodeId,
        gpu_index: u32,
        at: Timestamp,
        values: &[(Field, f64)],
    ) {
        let gpus = match latest.get_mut(node) {
            Some(gpus) => gpus,
            None => latest.entry(node.clone()).or_default(),
        };
        let gpu = gpus.entry(gpu_index).or_default();
        if gpu.at.is_some_and(|newest| newest > at) {
            return;
        }
        gpu.at = Some(at);
        for (field, value) in values {
            gpu.values.insert(*field, *value);
        }
    }

    /// The latest telemetry, locked (held briefly: `fold` writes to it per batch).
    pub(crate) fn latest(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<NodeId, BTreeMap<u32, GpuLatest>>> {
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every node's GPUs whose newest sample is at `fresh_since` or later; drops the rest.
    pub fn fresh_gpus(&self, fresh_since: Timestamp) -> Vec<(NodeId, BTreeMap<u32, GpuLatest>)> {
        let mut latest = self.latest();
        latest.retain(|_, gpus| {
            gpus.retain(|_, gpu| gpu.at.is_some_and(|at| at >= fresh_since));
            !gpus.is_empty()
        });
        latest
            .iter()
            .map(|(node, gpus)| (node.clone(), gpus.clone()))
            .collect()
    }

    /// Forgets `node`'s telemetry (its lease expired: what it said is no longer fresh).
    pub fn forget_node(&self, node: &NodeId) {
        self.latest().remove(node);
    }

    fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// Folds histogram samples into their buckets every [`UPKEEP_EVERY`] until shutdown.
pub async fn run_upkeep_loop(shared: Arc<crate::shared::Shared>) {
    let mut shutdown = shared.subscribe_shutdown();
    loop {
        tokio::select! {
            () = tokio::time::sleep(UPKEEP_EVERY) => shared.metrics.run_upkeep(),
            () = crate::shared::stopped(&mut shutdown) => break,
        }
    }
}
