//! Telemetry during a step: samples each GPU on its own worker at a fixed interval while an
//! attempt runs (plus one sample at the start and one at the end, so short steps have data),
//! collects the critical events it sees, and summarizes both per GPU when the attempt ends.
//!
//! Stall isolation: every GPU has its own task, and each of its NVML reads runs on a blocking
//! thread under a deadline (the sampling interval, capped at [`MAX_DEADLINE`]). A read that
//! misses its deadline is left running but its GPU starts no new read until it returns; every
//! round that passes meanwhile is counted in `samples_missed`. A late answer is discarded,
//! never back-dated. One wedged GPU therefore holds one blocking thread and delays nobody else.

use crate::gpu::GpuSource;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate_domain::telemetry::{
    Field, FieldSummary, GpuEvent, GpuTelemetry, MAX_SERIES_POINTS, SeriesBuilder, TelemetrySeries,
};

/// How long [`Sampler::finish`] waits for the workers' final samples before summarizing what
/// it has; a hung NVML call must not hang the step's result.
const FINISH_WAIT: Duration = Duration::from_secs(10);

/// The longest one NVML read may take before its round is counted as missed.
pub const MAX_DEADLINE: Duration = Duration::from_secs(5);

/// What the sampling tasks have gathered so far. Shared so that `finish` can summarize even
/// when a task is stuck.
#[derive(Debug, Default)]
struct Collected {
    values: BTreeMap<u32, BTreeMap<Field, Vec<f64>>>,
    missed: BTreeMap<u32, u32>,
    events: Vec<GpuEvent>,
    /// Downsampled series per (GPU, field), bounded however long the attempt runs.
    series: BTreeMap<(u32, Field), SeriesBuilder>,
}

/// Telemetry and events of one attempt.
#[derive(Debug, Default)]
pub struct AttemptTelemetry {
    /// One summary set per GPU, ordered by index.
    pub telemetry: Vec<GpuTelemetry>,
    /// Events seen during the attempt, oldest first.
    pub events: Vec<GpuEvent>,
    /// Per GPU and field, a series of at most [`MAX_SERIES_POINTS`] points for charts.
    pub series: Vec<TelemetrySeries>,
}

/// A running sampler. The attempt owns it; `finish` stops it and returns the summaries.
pub struct Sampler {
    source: Arc<dyn GpuSource>,
    gpus: Vec<(u32, String)>,
    collected: Arc<Mutex<Collected>>,
    stop: watch::Sender<bool>,
    /// One task per GPU plus the event task; empty once `finish` took them. A sampler
    /// dropped unfinished (its attempt was aborted) aborts them so sampling never outlives
    /// the attempt.
    tasks: Vec<JoinHandle<()>>,
    loaded: bool,
}

/// The deadline of one read at this sampling interval.
pub fn deadline_for(interval: Duration) -> Duration {
    interval.clamp(Duration::from_millis(10), MAX_DEADLINE)
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
        if loaded {
            // Both sources answer `set_load` at once.
            source.set_load(true);
        }
        let collected = Arc::new(Mutex::new(Collected::default()));
        let (stop, stopped) = watch::channel(false);
        let period = interval.max(Duration::from_millis(10));
        let started = tokio::time::Instant::now();
        let mut tasks: Vec<JoinHandle<()>> = gpus
            .iter()
            .map(|(gpu_idx, _)| {
                tokio::spawn(gpu_worker(
                    Arc::clone(&source),
                    *gpu_idx,
                    period,
                    started,
                    Arc::clone(&collected),
                    stopped.clone(),
                ))
            })
            .collect();
        tasks.push(tokio::spawn(event_worker(
            Arc::clone(&source),
            period,
            Arc::clone(&collected),
            stopped,
        )));
        Self {
            source,
            gpus,
            collected,
            stop,
            tasks,
            loaded,
        }
    }

    /// Stops sampling, takes the end samples and summarizes everything per GPU.
    pub async fn finish(mut self) -> AttemptTelemetry {
        let _ = self.stop.send(true);
        let mut tasks = std::mem::take(&mut self.tasks);
        let joined = futures::future::join_all(tasks.iter_mut().map(|task| async move {
            let _ = task.await;
        }));
        if tokio::time::timeout(FINISH_WAIT, joined).await.is_err() {
            tracing::warn!(
                "telemetry sampling did not stop in time; summarizing what was collected"
            );
            for task in &tasks {
                task.abort();
            }
        }
        // The last drain comes after the GPUs' end samples, which may have raised events.
        let source = Arc::clone(&self.source);
        let mut reader = Deadlined::new(MAX_DEADLINE);
        let last_events = match reader.read(move || source.events()).await {
            Read::Done(events) => events,
            Read::Late | Read::Failed(_) => Vec::new(),
        };
        if self.loaded {
            self.source.set_load(false);
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
        let mut events = std::mem::take(&mut collected.events);
        events.extend(last_events);
        events.sort_by_key(|event| event.at);
        let series = collected
            .series
            .iter()
            .map(|((gpu_index, field), builder)| builder.build(*gpu_index, *field))
            .collect();
        AttemptTelemetry {
            telemetry,
            events,
            series,
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        if !self.tasks.is_empty() {
            for task in &self.tasks {
                task.abort();
            }
            if self.loaded {
                // Both sources answer `set_load` at once, so calling it here does not block.
                self.source.set_load(false);
            }
        }
    }
}

/// A blocking read that may still be running after its deadline.
pub struct Deadlined<T> {
    in_flight: Option<JoinHandle<T>>,
    deadline: Duration,
}

/// How one deadlined read ended.
#[derive(Debug)]
pub enum Read<T> {
    /// It answered in time.
    Done(T),
    /// It missed its deadline, or the previous read still had not returned.
    Late,
    /// The blocking task panicked or was cancelled.
    Failed(String),
}

impl<T: Send + 'static> Deadlined<T> {
    /// Reads with this deadline.
    pub fn new(deadline: Duration) -> Self {
        Self {
            in_flight: None,
            deadline,
        }
    }

    /// Runs `read` on a blocking thread and waits at most the deadline. While an earlier read
    /// is still running, no new one starts and the round is `Late`; its answer is discarded.
    pub async fn read(&mut self, read: impl FnOnce() -> T + Send + 'static) -> Read<T> {
        if let Some(previous) = self.in_flight.take()
            && !previous.is_finished()
        {
            self.in_flight = Some(previous);
            return Read::Late;
        }
        let mut handle = tokio::task::spawn_blocking(read);
        match tokio::time::timeout(self.deadline, &mut handle).await {
            Ok(Ok(value)) => Read::Done(value),
            Ok(Err(error)) => Read::Failed(error.to_string()),
            Err(_) => {
                self.in_flight = Some(handle);
                Read::Late
            }
        }
    }
}

/// Samples one GPU: a start sample, one per tick until stopped, and an end sample.
async fn gpu_worker(
    source: Arc<dyn GpuSource>,
    gpu_idx: u32,
    period: Duration,
    started: tokio::time::Instant,
    collected: Arc<Mutex<Collected>>,
    mut stop: watch::Receiver<bool>,
) {
    let bucket_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
    let mut reader = Deadlined::new(deadline_for(period));
    let mut late_logged = false;
    let mut round = async |reader: &mut Deadlined<_>| {
        let source = Arc::clone(&source);
        let read = reader.read(move || source.sample_gpu(gpu_idx)).await;
        let mut collected = collected
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match read {
            Read::Done(Ok(fields)) => {
                tracing::debug!(gpu_idx, ?fields, "telemetry sample");
                let offset_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                for (field, value) in &fields {
                    collected
                        .series
                        .entry((gpu_idx, *field))
                        .or_insert_with(|| SeriesBuilder::new(bucket_ms, MAX_SERIES_POINTS))
                        .push(offset_ms, *value);
                }
                let per_gpu = collected.values.entry(gpu_idx).or_default();
                for (field, value) in fields {
                    per_gpu.entry(field).or_default().push(value);
                }
            }
            Read::Done(Err(error)) => {
                tracing::debug!(gpu_idx, %error, "telemetry sample failed");
                *collected.missed.entry(gpu_idx).or_default() += 1;
            }
            Read::Late => {
                if !late_logged {
                    late_logged = true;
                    tracing::warn!(
                        gpu_idx,
                        "a GPU read missed its deadline; counting its missed rounds"
                    );
                }
                *collected.missed.entry(gpu_idx).or_default() += 1;
            }
            Read::Failed(error) => {
                tracing::warn!(gpu_idx, %error, "telemetry read task failed");
                *collected.missed.entry(gpu_idx).or_default() += 1;
            }
        }
    };
    // The start sample, taken before looking at `stop` so every attempt has it.
    round(&mut reader).await;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    // A round that overran (the start sample of a stalled GPU) skips the ticks it covered:
    // they are counted as missed by the next round's `Late`, never replayed as a burst.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        round(&mut reader).await;
    }
    // The end sample, so even a step shorter than the interval has two.
    round(&mut reader).await;
}

/// Drains the source's critical events every period, and once more when stopped.
async fn event_worker(
    source: Arc<dyn GpuSource>,
    period: Duration,
    collected: Arc<Mutex<Collected>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reader = Deadlined::new(deadline_for(period));
    let drain = async |reader: &mut Deadlined<_>| {
        let source = Arc::clone(&source);
        if let Read::Done(events) = reader.read(move || source.events()).await {
            let events: Vec<GpuEvent> = events;
            for event in &events {
                tracing::warn!(gpu_index = event.gpu_index, kind = %event.kind, code = event.code, "GPU event during the step");
            }
            collected
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .events
                .extend(events);
        }
    };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        drain(&mut reader).await;
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
        let temp_series = result
            .series
            .iter()
            .find(|s| s.gpu_index == 0 && s.field == Field::GpuTempC)
            .expect("a series per GPU and field");
        let n: u32 = temp_series.points.iter().map(|p| p.samples).sum();
        assert_eq!(n, 2);
    }

    /// GPU 1's first loaded read hangs for 2 s: GPU 0 keeps its cadence, and GPU 1's rounds
    /// during the hang are counted as missed, not filled in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_gpu_delays_only_itself_and_its_missed_rounds_are_counted() {
        let source: Arc<dyn GpuSource> = Arc::new(SimulatedSource::new(SimConfig {
            node: "n1".into(),
            seed: Some(1),
            n_gpus: 2,
            driver: "550.54.15".into(),
            vbios: "96.00.89.00.01".into(),
            faults: vec![Fault::Stall { gpu: 1, seconds: 2 }],
        }));
        let gpus = vec![(0, "gpu-0".to_owned()), (1, "gpu-1".to_owned())];
        let interval = Duration::from_millis(100);
        let sampler = Sampler::start(Arc::clone(&source), gpus, interval, true);
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let result = sampler.finish().await;
        let samples = |gpu: usize| {
            result.telemetry[gpu]
                .field(Field::GpuTempC)
                .map_or(0, |summary| summary.samples)
        };
        let (gpu0, gpu1) = (samples(0), samples(1));
        let missed1 = result.telemetry[1].samples_missed;
        // 3 s at 100 ms is 30 ticks plus the start and end samples.
        assert!(gpu0 >= 25, "GPU 0 kept its cadence: {gpu0} samples");
        assert_eq!(result.telemetry[0].samples_missed, 0);
        assert!(
            (15..=22).contains(&missed1),
            "GPU 1 missed the rounds of its 2 s stall: {missed1}"
        );
        assert!(gpu1 >= 5, "GPU 1 resumed after the stall: {gpu1}");
        let rounds1 = gpu1 + missed1;
        assert!(
            rounds1.abs_diff(gpu0) <= 3,
            "every round of GPU 1 is a sample or a miss: {gpu1} + {missed1} vs {gpu0}"
        );
    }
}
