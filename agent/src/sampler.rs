//! Telemetry during a step: samples every GPU at a fixed interval while an attempt runs (plus
//! one sample at the start and one at the end, so short steps have data), collects the critical
//! events it sees, and summarizes both per GPU when the attempt ends.
//!
//! Cost: one task ticks at the interval, and each tick hands the whole round (every GPU's read
//! and the event drain) to one blocking thread, which reads them one after the other and
//! records the values itself. That is one thread handoff per interval, the least a sampler
//! that must not block the runtime can do (the agent's overhead benchmark, `--bench-sampling`,
//! compares it with a bare loop).
//!
//! Stall isolation: the round's reads are claimed one at a time from a shared cursor. When a
//! round is not done within a quarter of the read deadline (the sampling interval, capped at
//! [`MAX_DEADLINE`]), the reads nobody has claimed yet go to a fresh blocking thread, and so on,
//! so a read that hangs holds up only its own GPU: every other GPU's sample of that round comes
//! at most a quarter of the deadline late, and later rounds never wait for it. A GPU whose read
//! is still in flight starts no new read: each round that passes meanwhile is counted in its
//! `samples_missed`, and so is the hung read itself if it returns after its deadline (its
//! answer is discarded, never back-dated).

use crate::gpu::GpuSource;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tollgate_domain::telemetry::{
    Field, FieldSummary, GpuEvent, GpuTelemetry, MAX_SERIES_POINTS, SeriesBuilder, TelemetrySeries,
};

/// How long [`Sampler::finish`] waits for the workers' final samples before summarizing what
/// it has; a hung NVML call must not hang the step's result.
const FINISH_WAIT: Duration = Duration::from_secs(10);

/// The longest one NVML read may take before its round is counted as missed.
pub const MAX_DEADLINE: Duration = Duration::from_secs(5);

/// A round not done after this fraction of the read deadline hands its unclaimed reads to a
/// fresh blocking thread.
const HANDOFF_DIVISOR: u32 = 4;

/// What the readers have gathered so far. Shared so that `finish` can summarize even when a
/// read is stuck. Indexed by position (GPU in the sampler's list, field in [`Field::ALL`]) so
/// that recording a sample looks nothing up.
#[derive(Debug, Default)]
struct Collected {
    /// Per GPU, in the order of the sampler's GPU list.
    gpus: Vec<GpuCollected>,
    events: Vec<GpuEvent>,
}

/// One GPU's samples.
#[derive(Debug, Default)]
struct GpuCollected {
    /// Per field, at its position in [`Field::ALL`]; `None` until the field is first read.
    fields: Vec<Option<FieldCollected>>,
    /// Rounds without a sample: failed, late, or skipped while a read was in flight.
    missed: u32,
}

/// One field's samples on one GPU.
#[derive(Debug)]
struct FieldCollected {
    samples: Vec<f64>,
    /// Downsampled, bounded however long the attempt runs.
    series: SeriesBuilder,
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
    shared: Arc<Shared>,
    gpus: Vec<(u32, String)>,
    stop: watch::Sender<bool>,
    /// The task that ticks the rounds; `None` once `finish` took it. A sampler dropped
    /// unfinished (its attempt was aborted) aborts it so sampling never outlives the attempt.
    task: Option<JoinHandle<()>>,
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
        Self::start_publishing(source, gpus, interval, loaded, None)
    }

    /// [`Sampler::start`], also recording each GPU's newest reading in `latest` for the fleet
    /// stream.
    pub fn start_publishing(
        source: Arc<dyn GpuSource>,
        gpus: Vec<(u32, String)>,
        interval: Duration,
        loaded: bool,
        latest: Option<Arc<crate::fleet::LatestReadings>>,
    ) -> Self {
        if loaded {
            // Both sources answer `set_load` at once.
            source.set_load(true);
        }
        let (stop, stopped) = watch::channel(false);
        let period = interval.max(Duration::from_millis(10));
        let deadline = deadline_for(period);
        let shared = Arc::new(Shared {
            source,
            gpus: gpus
                .iter()
                .map(|(gpu_idx, _)| GpuSlot {
                    gpu_idx: *gpu_idx,
                    busy: AtomicBool::new(false),
                    late_logged: AtomicBool::new(false),
                })
                .collect(),
            events_busy: AtomicBool::new(false),
            collected: Mutex::new(Collected {
                gpus: gpus.iter().map(|_| GpuCollected::default()).collect(),
                events: Vec::new(),
            }),
            deadline,
            handoff: deadline / HANDOFF_DIVISOR,
            bucket_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            started: Instant::now(),
            latest,
        });
        let task = tokio::spawn(sample_rounds(Arc::clone(&shared), period, stopped));
        Self {
            shared,
            gpus,
            stop,
            task: Some(task),
            loaded,
        }
    }

    /// Stops sampling, takes the end samples and summarizes everything per GPU.
    pub async fn finish(mut self) -> AttemptTelemetry {
        let _ = self.stop.send(true);
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(FINISH_WAIT, &mut task).await.is_err()
        {
            tracing::warn!(
                "telemetry sampling did not stop in time; summarizing what was collected"
            );
            task.abort();
        }
        // The last drain comes after the GPUs' end samples, which may have raised events.
        let source = Arc::clone(&self.shared.source);
        let mut reader = Deadlined::new(MAX_DEADLINE);
        let last_events = match reader.read(move || source.events()).await {
            Read::Done(events) => events,
            Read::Late | Read::Failed(_) => Vec::new(),
        };
        if self.loaded {
            self.shared.source.set_load(false);
        }
        let mut collected = self.shared.lock();
        let gpus = std::mem::take(&mut self.gpus);
        let mut order: Vec<usize> = (0..gpus.len()).collect();
        order.sort_by_key(|slot| gpus[*slot].0);
        let mut telemetry = Vec::with_capacity(gpus.len());
        let mut series = Vec::new();
        for slot in order {
            let (gpu_index, gpu_uuid) = gpus[slot].clone();
            let Some(gpu) = collected.gpus.get(slot) else {
                continue;
            };
            let mut fields = Vec::new();
            for (field, collected) in Field::ALL.into_iter().zip(&gpu.fields) {
                let Some(collected) = collected else { continue };
                if let Some(summary) = FieldSummary::from_samples(field, &collected.samples) {
                    fields.push(summary);
                }
                series.push(collected.series.build(gpu_index, field));
            }
            telemetry.push(GpuTelemetry {
                gpu_index,
                gpu_uuid,
                fields,
                samples_missed: gpu.missed,
            });
        }
        let mut events = std::mem::take(&mut collected.events);
        events.extend(last_events);
        events.sort_by_key(|event| event.at);
        AttemptTelemetry {
            telemetry,
            events,
            series,
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            if self.loaded {
                // Both sources answer `set_load` at once, so calling it here does not block.
                self.shared.source.set_load(false);
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

/// One GPU of the sampler.
struct GpuSlot {
    gpu_idx: u32,
    /// A read of this GPU is in flight (claimed by a round and not returned).
    busy: AtomicBool,
    /// The first missed deadline was logged; later ones are only counted.
    late_logged: AtomicBool,
}

/// What the round task and the blocking readers share.
struct Shared {
    source: Arc<dyn GpuSource>,
    gpus: Vec<GpuSlot>,
    /// An event drain is in flight.
    events_busy: AtomicBool,
    /// What has been gathered; summarized by `finish` even when a read is stuck.
    collected: Mutex<Collected>,
    /// A read that takes longer is discarded and counted as missed.
    deadline: Duration,
    /// A round not done after this hands its unclaimed reads to a fresh thread.
    handoff: Duration,
    /// The series' first bucket width: the sampling interval.
    bucket_ms: u64,
    /// When sampling started; series points are offsets from it.
    started: Instant,
    /// Where each GPU's newest reading goes for the fleet stream, if anywhere.
    latest: Option<Arc<crate::fleet::LatestReadings>>,
}

/// What a round reads.
#[derive(Clone, Copy, Debug)]
enum Item {
    /// One sample of `Shared::gpus[i]`.
    Gpu(usize),
    /// One drain of the critical events.
    Events,
}

/// One round: its reads, claimed one at a time by whichever blocking reader gets there first.
struct Round {
    items: Vec<Item>,
    /// The next item to claim (past the end once all are claimed).
    next: AtomicUsize,
    /// Items done.
    done: AtomicUsize,
    /// Told once every item is done.
    all_done: Notify,
}

impl Round {
    fn all_claimed(&self) -> bool {
        self.next.load(Ordering::Acquire) >= self.items.len()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Collected> {
        self.collected
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The reads of a new round: every GPU and the event drain, except those whose previous
    /// read is still in flight (each such GPU misses this round).
    fn claim_round(&self) -> Vec<Item> {
        let mut items = Vec::with_capacity(self.gpus.len() + 1);
        let mut missed = Vec::new();
        for (slot, gpu) in self.gpus.iter().enumerate() {
            if gpu.busy.swap(true, Ordering::AcqRel) {
                missed.push(slot);
            } else {
                items.push(Item::Gpu(slot));
            }
        }
        if !self.events_busy.swap(true, Ordering::AcqRel) {
            items.push(Item::Events);
        }
        if !missed.is_empty() {
            let mut collected = self.lock();
            for slot in missed {
                let gpu = &self.gpus[slot];
                if !gpu.late_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        gpu_idx = gpu.gpu_idx,
                        "a GPU read missed its deadline; counting its missed rounds"
                    );
                }
                if let Some(gpu) = collected.gpus.get_mut(slot) {
                    gpu.missed += 1;
                }
            }
        }
        items
    }

    /// Claims and reads the round's items until none is left. Runs on a blocking thread.
    fn read_round(&self, round: &Round) {
        loop {
            let Some(item) = round.items.get(round.next.fetch_add(1, Ordering::AcqRel)) else {
                return;
            };
            match *item {
                Item::Gpu(slot) => self.read_gpu(slot),
                Item::Events => self.drain_events(),
            }
            if round.done.fetch_add(1, Ordering::AcqRel) + 1 == round.items.len() {
                round.all_done.notify_one();
            }
        }
    }

    fn read_gpu(&self, slot: usize) {
        let gpu = &self.gpus[slot];
        let gpu_idx = gpu.gpu_idx;
        let began = Instant::now();
        let read = self.source.sample_gpu(gpu_idx);
        let late = began.elapsed() > self.deadline;
        {
            let mut collected = self.lock();
            let Some(collected) = collected.gpus.get_mut(slot) else {
                gpu.busy.store(false, Ordering::Release);
                return;
            };
            match read {
                Ok(fields) if !late => {
                    tracing::debug!(gpu_idx, ?fields, "telemetry sample");
                    if let Some(latest) = &self.latest {
                        latest.record(gpu_idx, crate::clock::now(), &fields);
                    }
                    let offset_ms =
                        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    if collected.fields.is_empty() {
                        collected.fields.resize_with(Field::ALL.len(), || None);
                    }
                    for (field, value) in fields {
                        let Some(position) = Field::ALL.iter().position(|f| *f == field) else {
                            continue;
                        };
                        let entry =
                            collected.fields[position].get_or_insert_with(|| FieldCollected {
                                samples: Vec::new(),
                                series: SeriesBuilder::new(self.bucket_ms, MAX_SERIES_POINTS),
                            });
                        entry.samples.push(value);
                        entry.series.push(offset_ms, value);
                    }
                }
                Ok(_) => {
                    if !gpu.late_logged.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            gpu_idx,
                            "a GPU read missed its deadline; counting its missed rounds"
                        );
                    }
                    collected.missed += 1;
                }
                Err(error) => {
                    tracing::debug!(gpu_idx, %error, "telemetry sample failed");
                    collected.missed += 1;
                }
            }
        }
        gpu.busy.store(false, Ordering::Release);
    }

    fn drain_events(&self) {
        let events = self.source.events();
        if !events.is_empty() {
            for event in &events {
                tracing::warn!(gpu_index = event.gpu_index, kind = %event.kind, code = event.code, "GPU event during the step");
            }
            self.lock().events.extend(events);
        }
        self.events_busy.store(false, Ordering::Release);
    }
}

/// Runs one round: hands it to a blocking reader and, while it is not done after
/// `Shared::handoff` and reads remain unclaimed, to one more. The last round waits up to the
/// read deadline for reads still in flight, so the end samples are in before `finish`
/// summarizes.
async fn run_round(shared: &Arc<Shared>, last: bool) {
    let items = shared.claim_round();
    if items.is_empty() {
        return;
    }
    let round = Arc::new(Round {
        items,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        all_done: Notify::new(),
    });
    loop {
        let reader = {
            let (shared, round) = (Arc::clone(shared), Arc::clone(&round));
            move || shared.read_round(&round)
        };
        // Detached: a reader stuck in a read finishes (or not) on its own.
        drop(tokio::task::spawn_blocking(reader));
        if tokio::time::timeout(shared.handoff, round.all_done.notified())
            .await
            .is_ok()
        {
            return;
        }
        if round.all_claimed() {
            // Only reads in flight are left, each on its own GPU.
            if last {
                let _ = tokio::time::timeout(shared.deadline, round.all_done.notified()).await;
            }
            return;
        }
        tracing::debug!("a telemetry read is slow; the rest of the round goes to another thread");
    }
}

/// Ticks the rounds: a start round, one per interval until stopped, and an end round.
async fn sample_rounds(shared: Arc<Shared>, period: Duration, mut stop: watch::Receiver<bool>) {
    // The start round, taken before looking at `stop` so every attempt has it.
    run_round(&shared, false).await;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    // A round that overran skips the ticks it covered: a GPU still busy is counted as missed
    // by the next round, never replayed as a burst.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        run_round(&shared, false).await;
    }
    // The end round, so even a step shorter than the interval has two samples.
    run_round(&shared, true).await;
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
