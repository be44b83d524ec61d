//! Fleet telemetry: while no job runs, the agent samples every GPU at a low rate and streams
//! the samples to the controller with `PushTelemetry`; while a job runs, the step's sampler
//! reads the GPUs and the stream sends its newest reading of each ([`LatestReadings`]), so
//! the fleet history and `/metrics` have no gap during a qualification.
//!
//! Through a controller outage the samples wait in a bounded buffer; beyond its bound the
//! oldest are dropped and counted, and the count goes with the next batch that is delivered,
//! so the controller knows what it did not see. Each GPU is read under a deadline on its own
//! blocking worker, as during steps.

use crate::gpu::GpuSource;
use crate::sampler::{Deadlined, Read, deadline_for};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tollgate_proto::v1;

/// The newest reading of each GPU that a step's sampler took and the fleet stream has not
/// sent yet: while a job runs, the fleet stream sends these instead of reading the GPUs
/// itself (the step owns them, and two readers would sample the same GPU twice).
#[derive(Debug, Default)]
pub struct LatestReadings {
    newest: std::sync::Mutex<BTreeMap<u32, v1::TelemetrySample>>,
}

impl LatestReadings {
    /// Records `values` read from GPU `gpu_index` at `at`, replacing an older unsent one.
    pub fn record(
        &self,
        gpu_index: u32,
        at: tollgate_domain::Timestamp,
        values: &BTreeMap<tollgate_domain::telemetry::Field, f64>,
    ) {
        let sample = v1::TelemetrySample {
            gpu_index,
            at: Some(tollgate_wire::timestamp_to_proto(at)),
            values: values
                .iter()
                .map(|(field, value)| (field.name().to_owned(), *value))
                .collect(),
        };
        self.lock().insert(gpu_index, sample);
    }

    /// The readings recorded since the last call, by GPU index.
    pub fn take(&self) -> Vec<v1::TelemetrySample> {
        std::mem::take(&mut *self.lock()).into_values().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, v1::TelemetrySample>> {
        self.newest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The samples waiting for delivery, bounded.
#[derive(Debug)]
pub struct FleetBuffer {
    samples: VecDeque<v1::TelemetrySample>,
    events: Vec<v1::GpuEvent>,
    bound: usize,
    dropped: u64,
}

impl FleetBuffer {
    /// An empty buffer holding at most `bound` samples (at least 1).
    pub fn new(bound: usize) -> Self {
        Self {
            samples: VecDeque::new(),
            events: Vec::new(),
            bound: bound.max(1),
            dropped: 0,
        }
    }

    /// Adds a sample, dropping the oldest when full.
    pub fn push(&mut self, sample: v1::TelemetrySample) {
        while self.samples.len() >= self.bound {
            self.samples.pop_front();
            self.dropped += 1;
        }
        self.samples.push_back(sample);
    }

    /// Adds events; they are few, and kept whole.
    pub fn push_events(&mut self, events: impl IntoIterator<Item = v1::GpuEvent>) {
        self.events.extend(events);
    }

    /// Samples waiting.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.events.is_empty() && self.dropped == 0
    }

    /// Samples dropped since the last delivered batch.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Takes everything waiting as one batch. Give it back with [`FleetBuffer::restore`] when
    /// it could not be delivered.
    pub fn take_batch(&mut self) -> v1::TelemetryBatch {
        v1::TelemetryBatch {
            samples: self.samples.drain(..).collect(),
            events: std::mem::take(&mut self.events),
            dropped: std::mem::take(&mut self.dropped),
        }
    }

    /// Puts an undelivered batch back in front of what arrived meanwhile, dropping the oldest
    /// beyond the bound.
    pub fn restore(&mut self, batch: v1::TelemetryBatch) {
        let newer = std::mem::take(&mut self.samples);
        let mut events = batch.events;
        events.append(&mut self.events);
        self.events = events;
        self.dropped += batch.dropped;
        for sample in batch.samples.into_iter().chain(newer) {
            self.push(sample);
        }
    }
}

/// One GPU's answer to a sample read.
pub type GpuRead = Result<BTreeMap<tollgate_domain::telemetry::Field, f64>, crate::gpu::GpuError>;

/// Reads every GPU of `gpu_indexes` once, each under its own deadline.
pub async fn sample_round(
    source: &Arc<dyn GpuSource>,
    readers: &mut BTreeMap<u32, Deadlined<GpuRead>>,
    gpu_indexes: &[u32],
    interval: Duration,
) -> Vec<v1::TelemetrySample> {
    let at = tollgate_wire::timestamp_to_proto(crate::clock::now());
    let reads = gpu_indexes.iter().map(|gpu_idx| {
        let gpu_idx = *gpu_idx;
        let source = Arc::clone(source);
        let mut reader = readers
            .remove(&gpu_idx)
            .unwrap_or_else(|| Deadlined::new(deadline_for(interval)));
        async move {
            let read = reader.read(move || source.sample_gpu(gpu_idx)).await;
            (gpu_idx, reader, read)
        }
    });
    let mut samples = Vec::new();
    for (gpu_idx, reader, read) in futures::future::join_all(reads).await {
        readers.insert(gpu_idx, reader);
        match read {
            Read::Done(Ok(values)) => samples.push(v1::TelemetrySample {
                gpu_index: gpu_idx,
                at: Some(at),
                values: values
                    .into_iter()
                    .map(|(field, value)| (field.name().to_owned(), value))
                    .collect(),
            }),
            Read::Done(Err(error)) => tracing::debug!(gpu_idx, %error, "fleet sample failed"),
            Read::Late => tracing::debug!(gpu_idx, "fleet sample missed its deadline"),
            Read::Failed(error) => tracing::debug!(gpu_idx, %error, "fleet sample task failed"),
        }
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(gpu_index: u32) -> v1::TelemetrySample {
        v1::TelemetrySample {
            gpu_index,
            at: None,
            values: Default::default(),
        }
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_reports_the_count_with_the_next_batch() {
        let mut buffer = FleetBuffer::new(3);
        for i in 0..5 {
            buffer.push(sample(i));
        }
        assert_eq!((buffer.len(), buffer.dropped()), (3, 2));
        let batch = buffer.take_batch();
        let kept: Vec<u32> = batch.samples.iter().map(|s| s.gpu_index).collect();
        assert_eq!(kept, [2, 3, 4], "the oldest went first");
        assert_eq!(batch.dropped, 2);
        assert!(buffer.is_empty());
        // The controller is down: the batch comes back, behind nothing, ahead of newer ones.
        buffer.push(sample(5));
        buffer.restore(batch);
        let again = buffer.take_batch();
        let kept: Vec<u32> = again.samples.iter().map(|s| s.gpu_index).collect();
        assert_eq!(kept, [3, 4, 5]);
        assert_eq!(again.dropped, 3, "two before, one more when it came back");
        assert_eq!(buffer.take_batch().dropped, 0, "reported once");
    }
}
