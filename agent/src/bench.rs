//! Sampling overhead benchmark (`--bench-sampling SECONDS`): samples simulated GPUs at the
//! sampling interval through the real [`Sampler`] path, and, in the same process, through a
//! minimal loop over the same source, and reports CPU time and peak RSS of each.
//!
//! The minimal loop runs first: peak RSS (`VmHWM`) only grows, so the figure after the
//! sampler phase is the sampler's peak (or the minimal loop's, if that was higher).

use crate::gpu::GpuSource;
use crate::sampler::Sampler;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CPU time and memory of one phase.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PhaseCost {
    /// Wall time, s.
    pub wall_s: f64,
    /// User plus system CPU time of the process, s.
    pub cpu_s: f64,
    /// CPU time as a share of one core, %.
    pub core_pct: f64,
    /// Peak resident set size of the process at the end of the phase, MiB.
    pub peak_rss_mib: f64,
    /// Samples taken (GPU × rounds).
    pub samples: u64,
}

/// Both phases and their ratio.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BenchReport {
    /// Simulated GPUs.
    pub n_gpus: u32,
    /// Sampling interval, s.
    pub interval_s: f64,
    /// The minimal loop.
    pub minimal: PhaseCost,
    /// The sampler.
    pub sampler: PhaseCost,
    /// Sampler CPU over minimal-loop CPU.
    pub cpu_ratio: f64,
}

/// Process CPU time in seconds: the sum over the process's threads of `schedstat`'s time on
/// CPU (nanoseconds), which resolves the sub-tick figures this benchmark measures; falls back
/// to `/proc/self/stat` (10 ms ticks) where schedstat is not available.
fn cpu_seconds() -> f64 {
    let from_schedstat = std::fs::read_dir("/proc/self/task").ok().map(|tasks| {
        tasks
            .filter_map(Result::ok)
            .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
            .sum::<u64>()
    });
    match from_schedstat {
        Some(ns) if ns > 0 => ns as f64 / 1e9,
        _ => stat_cpu_seconds(),
    }
}

/// Process CPU time (user + system) from `/proc/self/stat`, in seconds.
fn stat_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        // The kernel reports these in USER_HZ, 100 on every Linux ABI the agent runs on.
        (Some(utime), Some(stime)) => (utime + stime) / 100.0,
        _ => 0.0,
    }
}

/// Peak RSS (`VmHWM`) from `/proc/self/status`, in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn cost(wall: Duration, cpu_s: f64, samples: u64) -> PhaseCost {
    let wall_s = wall.as_secs_f64();
    PhaseCost {
        wall_s,
        cpu_s,
        core_pct: if wall_s > 0.0 {
            100.0 * cpu_s / wall_s
        } else {
            0.0
        },
        peak_rss_mib: peak_rss_mib(),
        samples,
    }
}

/// Runs both phases for `duration` each over `source`'s GPUs `0..n_gpus`.
pub async fn run(
    source: Arc<dyn GpuSource>,
    n_gpus: u32,
    interval: Duration,
    duration: Duration,
) -> BenchReport {
    // The minimal loop: one blocking read per GPU per interval, values kept in a vector.
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    let mut kept: Vec<f64> = Vec::new();
    let mut samples = 0u64;
    while start.elapsed() < duration {
        ticker.tick().await;
        let reader = Arc::clone(&source);
        let round = tokio::task::spawn_blocking(move || {
            (0..n_gpus)
                .filter_map(|gpu_idx| reader.sample_gpu(gpu_idx).ok())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for fields in round {
            samples += 1;
            kept.extend(fields.values().copied());
        }
    }
    let minimal = cost(start.elapsed(), cpu_seconds() - cpu0, samples);
    drop(kept);

    // The real path: per-GPU workers with deadlines, summaries at the end.
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let gpus = (0..n_gpus).map(|i| (i, format!("gpu-{i}"))).collect();
    let sampler = Sampler::start(Arc::clone(&source), gpus, interval, true);
    tokio::time::sleep(duration).await;
    let observed = sampler.finish().await;
    let samples = observed
        .telemetry
        .iter()
        .filter_map(|gpu| gpu.fields.first().map(|f| u64::from(f.samples)))
        .sum();
    let sampler = cost(start.elapsed(), cpu_seconds() - cpu0, samples);
    BenchReport {
        n_gpus,
        interval_s: interval.as_secs_f64(),
        cpu_ratio: if minimal.cpu_s > 0.0 {
            sampler.cpu_s / minimal.cpu_s
        } else {
            f64::NAN
        },
        minimal,
        sampler,
    }
}
