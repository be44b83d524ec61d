//! `GET /metrics`: the controller's metrics and its fleet's GPU telemetry in the Prometheus
//! text format.
//!
//! What it answers, in order: the families the controller records as it goes
//! (`crate::metrics`: results ingested, gate decisions by verdict, lease expiries, gRPC and
//! store latency histograms); gauges read from state at scrape time (runs, jobs and nodes by
//! state, connected agents); then each fresh GPU's latest fleet telemetry under dcgm-exporter's
//! names and labels (`tollgate_wire::prometheus::write_gpu_families`).
//!
//! **Fresh:** a GPU is reported while its node's agent is connected (to this replica, or on
//! PostgreSQL to another that heard it lately: `Shared::agent_connected`), the node is neither
//! `unreachable` nor `retired`, and its newest sample is no older than the lease grace. A GPU
//! that fails any of these is left out, not reported with an old value: Prometheus then marks
//! the series stale after its lookback, as it would for a dcgm-exporter that went away. While a
//! job runs the agent samples for the step's result, not the fleet stream, so a busy node's
//! GPUs drop out after the lease grace and return when it is idle again.

use crate::shared::Shared;
use crate::store::StoreError;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tollgate_domain::fleet::{GpuSourceKind, NodeState};
use tollgate_wire::prometheus::{CONTENT_TYPE, GpuSeries, Text, write_gpu_families};

/// The `/metrics` route, with its state applied.
pub fn routes(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(shared)
}

async fn scrape(State(shared): State<Arc<Shared>>) -> Response {
    match render(&shared).await {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::warn!(%error, "/metrics not answered: the store did not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the store did not answer: {error}\n"),
            )
                .into_response()
        }
    }
}

/// Everything `/metrics` answers; see the module docs.
pub async fn render(shared: &Shared) -> Result<String, StoreError> {
    let counts = shared
        .metrics
        .store("metrics_state_counts", shared.store.state_counts())
        .await?;
    let nodes = shared
        .metrics
        .store("metrics_list_nodes", shared.store.list_nodes())
        .await?;
    let now = shared.now();
    let mut text = Text::after(shared.metrics.render());

    for (name, help, counts) in [
        ("tollgate_runs", "Runs, by state.", &counts.runs),
        ("tollgate_jobs", "Jobs, by state.", &counts.jobs),
    ] {
        text.family(name, "gauge", help);
        for (state, n) in counts {
            text.sample(name, &[("state", state)], *n as f64);
        }
    }
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for node in &nodes {
        *by_state.entry(node.state.as_ref()).or_default() += 1;
    }
    text.family("tollgate_nodes", "gauge", "Nodes, by state.");
    for (state, n) in &by_state {
        text.sample("tollgate_nodes", &[("state", state)], *n as f64);
    }
    let node_refs: Vec<&tollgate_domain::fleet::Node> = nodes.iter().collect();
    let drifted = shared
        .metrics
        .store(
            "metrics_rollout_drift",
            crate::drift::of_nodes(shared, &node_refs),
        )
        .await?;
    text.single(
        "tollgate_rollout_drifted_nodes",
        "gauge",
        "Nodes reporting other components than the rollout that last updated them brought them to.",
        drifted.len() as f64,
    );
    text.single(
        "tollgate_agents_connected",
        "gauge",
        "Agents holding a Connect stream to this controller.",
        shared.sessions.connected_nodes().len() as f64,
    );

    let fresh_since = now
        - chrono::Duration::from_std(shared.config.lease_grace).unwrap_or(chrono::Duration::MAX);
    let fresh = shared.metrics.fresh_gpus(fresh_since);
    let nodes: HashMap<&str, &tollgate_domain::fleet::Node> =
        nodes.iter().map(|node| (node.id.as_str(), node)).collect();
    let mut series = Vec::new();
    for (node_id, gpus) in &fresh {
        let Some(node) = nodes.get(node_id.as_str()) else {
            continue;
        };
        if matches!(node.state, NodeState::Unreachable | NodeState::Retired)
            || !shared.agent_connected(&node.id, node.last_seen_at, now)
        {
            continue;
        }
        let inventory = &node.inventory;
        for (gpu_index, latest) in gpus {
            let Some(gpu) = inventory.gpus.iter().find(|gpu| gpu.index == *gpu_index) else {
                continue;
            };
            series.push(GpuSeries {
                index: gpu.index,
                uuid: &gpu.uuid,
                pci_bus_id: &gpu.pci_bus_id,
                model_name: &gpu.name,
                hostname: node.id.as_str(),
                driver_version: &inventory.driver_version,
                simulated: inventory.gpu_source == GpuSourceKind::Simulated,
                values: &latest.values,
            });
        }
    }
    series.sort_by(|a, b| (a.hostname, a.index).cmp(&(b.hostname, b.index)));
    write_gpu_families(&mut text, &series);
    Ok(text.finish())
}
