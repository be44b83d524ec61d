//! Telemetry during a step: samples the GPU source at a fixed interval while an attempt runs
//! (plus one sample at the start and one at the end, so short steps have data), collects the
//! critical events it sees, and summarizes both per GPU when the attempt ends.

use crate::gpu::GpuSource;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate_domain::telemetry::{Field, FieldSummary, GpuEvent, GpuTelemetry};

/// How long [`Sampler::finish`] waits for a stalled final sample before summarizing what it
/// has; a hung NVML call must not hang the step's result.
const FINISH_WAIT: Duration = Duration::from_secs(10);

/// What the sampling task has gathered so far. Shared so that `finish` can summarize even when
/// the task is stuck in a blocking call.
#[derive(Debug, Default)]
struct Collected {
    values: BTreeMap<u32, BTreeMap<Field, Vec<f64>>>,
    missed: BTreeMap<u32, u32>,
    events: Vec<GpuEvent>,
}

/// Telemetry and events of one attempt.
#[derive(Debug, Default)]
pub struct AttemptTelemetry {
    /// One summary set per GPU, ordered by index.
    pub telemetry: Vec<GpuTelemetry>,
    /// Events seen during the attempt, oldest first.
    pub events: Vec<GpuEvent>,
}

/// A running sampler. The attempt owns it; `finish` stops it and returns the summaries.
pub struct Sampler {
    source: Arc<dyn GpuSource>,
    gpus: Vec<(u32, String)>,
    collected: Arc<Mutex<Collected>>,
    stop: Option<oneshot::Sender<()>>,
    /// `None` once `finish` has taken it; a sampler dropped unfinished (its attempt was
    /// aborted) aborts the task so sampling never outlives the attempt.
    task: Option<JoinHandle<()>>,
    loaded: bool,
}

impl Sampler {
    /// Starts sampling `gpus` (index, UUID) every `interval`. `loaded` tells the source a
    /// step is loading the GPUs (the simulated source heats up); it is cleared on `finish`.
    pub fn start(
        source: Arc<dyn GpuSource>,
        gpus: Vec<(u32, String)>,
        interval: Duration,
        loaded: bool,
    ) -> Self {
        let collected = Arc::new(Mutex::new(Collected::default()));
        let (stop, mut stopped) = oneshot::channel();
        let task_source = Arc::clone(&source);
        let task_collected = Arc::clone(&collected);
        let indexes: Vec<u32> = gpus.iter().map(|(idx, _)| *idx).collect();
        let task = tokio::spawn(async move {
            if loaded {
                let source = Arc::clone(&task_source);
                let _ = tokio::task::spawn_blocking(move || source.set_load(true)).await;
            }
            // The start sample, taken before looking at `stop` so every attempt has it.
            sample_once(&task_source, &indexes, &task_collected).await;
            let period = interval.max(Duration::from_millis(10));
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = &mut stopped => break,
                }
                sample_once(&task_source, &indexes, &task_collected).await;
            }
            // The end sample, so even a step shorter than the interval has two.
            sample_once(&task_source, &indexes, &task_collected).await;
        });
        Self {
            source,
            gpus,
            collected,
            stop: Some(stop),
            task: Some(task),
            loaded,
        }
    }

    /// Stops sampling, takes the end sample and summarizes everything per GPU.
    pub async fn finish(mut self) -> AttemptTelemetry {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(FINISH_WAIT, &mut task).await.is_err()
        {
            tracing::warn!(
                "telemetry sampling did not stop in time; summarizing what was collected"
            );
            task.abort();
        }
        if self.loaded {
            let source = Arc::clone(&self.source);
            let _ = tokio::task::spawn_blocking(move || source.set_load(false)).await;
        }
        let mut collected = self
            .collected
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut gpus = std::mem::take(&mut self.gpus);
        // GPUs that answered but were not in the inventory (it could not be read) still count.
        for idx in collected.values.keys() {
            if !gpus.iter().any(|(known, _)| known == idx) {
                gpus.push((*idx, String::new()));
            }
        }
        gpus.sort_by_key(|(idx, _)| *idx);
        let telemetry = gpus
            .into_iter()
            .map(|(gpu_index, gpu_uuid)| {
                let values = collected.values.get(&gpu_index);
                let fields = Field::ALL
                    .into_iter()
                    .filter_map(|field| {
                        let samples = values.and_then(|v| v.get(&field))?;
                        FieldSummary::from_samples(field, samples)
                    })
                    .collect();
                GpuTelemetry {
                    gpu_index,
                    gpu_uuid,
                    fields,
                    samples_missed: collected.missed.get(&gpu_index).copied().unwrap_or(0),
                }
            })
            .collect();
        AttemptTelemetry {
            telemetry,
            events: std::mem::take(&mut collected.events),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            if self.loaded {
                // Both sources answer `set_load` at once, so calling it here does not block.
                self.source.set_load(false);
            }
        }
    }
}

/// One sampling round: the sample and the events drained since the last round.
async fn sample_once(source: &Arc<dyn GpuSource>, gpus: &[u32], collected: &Arc<Mutex<Collected>>) {
    let blocking_source = Arc::clone(source);
    let round =
        tokio::task::spawn_blocking(move || (blocking_source.sample(), blocking_source.events()))
            .await;
    let Ok((sample, events)) = round else {
        return;
    };
    let mut collected = collected
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for event in &events {
        tracing::warn!(gpu_index = event.gpu_index, kind = %event.kind, code = event.code, "GPU event during the step");
    }
    collected.events.extend(events);
    let sample = match sample {
        Ok(sample) => sample,
        Err(error) => {
            tracing::debug!(%error, "telemetry sample failed");
            Vec::new()
        }
    };
    for idx in gpus {
        if !sample.iter().any(|(gpu_idx, _)| gpu_idx == idx) {
            *collected.missed.entry(*idx).or_default() += 1;
        }
    }
    for (gpu_idx, fields) in sample {
        tracing::debug!(gpu_idx, ?fields, "telemetry sample");
        let per_gpu = collected.values.entry(gpu_idx).or_default();
        for (field, value) in fields {
            per_gpu.entry(field).or_default().push(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::simulated::{Fault, SimConfig, SimulatedSource};
    use tollgate_domain::telemetry::EventKind;

    #[tokio::test]
    async fn a_short_step_still_gets_start_and_end_samples_and_events() {
        let source: Arc<dyn GpuSource> = Arc::new(SimulatedSource::new(SimConfig {
            node: "n1".into(),
            seed: Some(1),
            n_gpus: 2,
            driver: "550.54.15".into(),
            vbios: "96.00.89.00.01".into(),
            faults: vec![Fault::Xid(79)],
        }));
        let inventory = source.inventory().unwrap();
        let gpus = inventory
            .gpus
            .iter()
            .map(|g| (g.index, g.uuid.clone()))
            .collect();
        let sampler = Sampler::start(Arc::clone(&source), gpus, Duration::from_secs(3600), true);
        let result = sampler.finish().await;
        assert_eq!(result.telemetry.len(), 2);
        let temp = result.telemetry[0]
            .field(Field::GpuTempC)
            .expect("temperature");
        assert_eq!(temp.samples, 2, "start and end samples: {temp:?}");
        assert!(result.telemetry[0].field(Field::FanSpeedPct).is_none());
        assert_eq!(result.telemetry[0].gpu_uuid, inventory.gpus[0].uuid);
        assert_eq!(result.events.len(), 1);
        assert_eq!(result.events[0].kind, EventKind::Xid);
    }
}
