//! Fleet telemetry: the task that samples the GPUs while no job runs (and takes the step
//! sampler's newest readings while one does) and streams the samples to the controller (see
//! [`crate::fleet`] for the buffer that holds them through an outage).

use super::{CALL_TIMEOUT, RunningJob, authorized, describe};
use crate::gpu::GpuSource;
use crate::runner;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tollgate_proto::v1::agent_service_client::AgentServiceClient;
use tonic::transport::Channel;

/// Where fleet samples come from: the GPUs themselves while no job runs, a running step's
/// newest readings while one does.
pub(super) struct FleetGpus {
    /// The GPUs.
    pub source: Arc<dyn GpuSource>,
    /// The step sampler's newest reading of each GPU.
    pub latest: Arc<crate::fleet::LatestReadings>,
}

/// Samples the GPUs every `interval` while no job runs, and while one does sends the step
/// sampler's newest reading of each GPU instead (the step owns the GPUs and its events);
/// streams the samples and events to the controller; holds them in a bounded buffer while the
/// controller cannot be reached. Aborted with the agent.
pub(super) async fn fleet_loop(
    gpus: FleetGpus,
    mut client: AgentServiceClient<Channel>,
    token: watch::Receiver<Option<String>>,
    job: Arc<Mutex<Option<RunningJob>>>,
    interval: Duration,
    bound: usize,
    metrics: Arc<crate::metrics::AgentMetrics>,
) {
    let FleetGpus { source, latest } = gpus;
    if interval.is_zero() {
        return;
    }
    let mut buffer = crate::fleet::FleetBuffer::new(bound);
    let mut readers = std::collections::BTreeMap::new();
    let mut gpu_indexes: Vec<u32> = Vec::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let busy = job.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        // Readings a step took; left over from a step that just ended when idle, still new.
        for sample in latest.take() {
            let values = sample
                .values
                .iter()
                .filter_map(|(name, value)| Some((name.parse().ok()?, *value)))
                .collect();
            metrics.sample_taken(sample.gpu_index, &values);
            buffer.push(sample);
        }
        if !busy {
            if gpu_indexes.is_empty()
                && let Ok(inventory) = runner::observe_inventory(&source).await
            {
                gpu_indexes = inventory.gpus.iter().map(|gpu| gpu.index).collect();
                metrics.set_inventory(inventory);
            }
            for sample in
                crate::fleet::sample_round(&source, &mut readers, &gpu_indexes, interval).await
            {
                let values = sample
                    .values
                    .iter()
                    .filter_map(|(name, value)| Some((name.parse().ok()?, *value)))
                    .collect();
                metrics.sample_taken(sample.gpu_index, &values);
                buffer.push(sample);
            }
            let events_source = Arc::clone(&source);
            if let Ok(events) = tokio::task::spawn_blocking(move || events_source.events()).await {
                for event in &events {
                    tracing::warn!(gpu_index = event.gpu_index, kind = %event.kind, code = event.code, "GPU event outside a step");
                }
                buffer.push_events(events.iter().map(tollgate_wire::gpu_event_for_upload));
            }
        }
        if buffer.is_empty() {
            continue;
        }
        let Some(current_token) = token.borrow().clone() else {
            continue;
        };
        let batch = buffer.take_batch();
        let Ok(mut request) = authorized(tokio_stream::iter(vec![batch.clone()]), &current_token)
        else {
            buffer.restore(batch);
            continue;
        };
        request.set_timeout(CALL_TIMEOUT);
        match client.push_telemetry(request).await {
            Ok(_) => tracing::debug!(
                n_samples = batch.samples.len(),
                dropped = batch.dropped,
                "fleet telemetry delivered"
            ),
            Err(status) => {
                tracing::debug!(status = %describe(&status, "push telemetry"), buffered = buffer.len() + batch.samples.len(), "fleet telemetry kept for later");
                buffer.restore(batch);
            }
        }
    }
}
