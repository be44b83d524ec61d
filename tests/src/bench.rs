//! What the benchmark binaries share: the controller binary started as a child process on a
//! fresh SQLite data directory, its CPU and peak RSS read from `/proc`, and a wait for a
//! fleet of any size to be ready.

use crate::Clients;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `tollgate-controller` beside the running benchmark binary (`cargo build --release
/// --workspace --bins` puts them together).
pub fn sibling_controller() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("binary directory")?
        .join("tollgate-controller");
    if !bin.exists() {
        bail!(
            "{} not found; build it with `cargo build --release --workspace --bins`",
            bin.display()
        );
    }
    Ok(bin)
}

/// A controller serving plain text on loopback from a child process.
pub struct BenchController {
    /// The child; killed on drop.
    pub child: tokio::process::Child,
    /// Its process id, for [`process_usage`].
    pub pid: u32,
    /// `http://ADDR`.
    pub url: String,
}

/// Starts `bin` serving on a free loopback port with its data in `dir/controller`, the
/// connection caps raised for `connections` agents from this host, and `extra` flags.
pub async fn start_controller(
    bin: &Path,
    dir: &Path,
    connections: usize,
    extra: &[&str],
) -> anyhow::Result<BenchController> {
    start_controller_on("127.0.0.1:0", bin, dir, connections, extra).await
}

/// [`start_controller`] listening on `listen` (`127.0.0.1:PORT`): a restart on the address
/// its agents know.
pub async fn start_controller_on(
    listen: &str,
    bin: &Path,
    dir: &Path,
    connections: usize,
    extra: &[&str],
) -> anyhow::Result<BenchController> {
    let addr_file = dir.join("controller.addr");
    // A restart's file is written anew: the old address must not read as the new one's.
    let _ = std::fs::remove_file(&addr_file);
    let connections = connections.to_string();
    let child = tokio::process::Command::new(bin)
        .args(["serve", "--listen", listen, "--insecure-loopback"])
        // Every agent connects from this host: the per-address cap (256) must not refuse them.
        .args(["--max-connections", &connections])
        .args(["--max-connections-per-ip", &connections])
        .args(extra)
        .arg("--addr-file")
        .arg(&addr_file)
        .arg("--data-dir")
        .arg(dir.join("controller"))
        // TOLLGATE_BENCH_CONTROLLER_LOG (a RUST_LOG filter) shows more, e.g. `sqlx=debug` to
        // see every statement with its time.
        .env(
            "RUST_LOG",
            std::env::var("TOLLGATE_BENCH_CONTROLLER_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("controller pid")?;
    let addr = loop {
        if let Ok(text) = std::fs::read_to_string(&addr_file)
            && !text.trim().is_empty()
        {
            break text.trim().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(BenchController {
        child,
        pid,
        url: format!("http://{addr}"),
    })
}

/// CPU seconds (user + system) and peak RSS in KiB of a process, from /proc.
pub fn process_usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    // utime and stime.
    let cpu = stat_seconds(&format!("/proc/{pid}/stat"), 11)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading /proc/PID/status")?;
    let hwm = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok((cpu, hwm))
}

/// CPU seconds (user + system) of this process's children that were waited for (the step
/// processes of in-process agents), from /proc/self/stat.
pub fn waited_children_cpu() -> anyhow::Result<f64> {
    // cutime and cstime.
    stat_seconds("/proc/self/stat", 13)
}

/// The sum in seconds of the two clock-tick fields at `first` and `first + 1` of a
/// `/proc/PID/stat` file, counted from the field after the command name.
fn stat_seconds(path: &str, first: usize) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("parsing {path}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |idx: usize| -> anyhow::Result<f64> {
        fields
            .get(idx)
            .with_context(|| format!("{path} has no field {idx}"))?
            .parse::<f64>()
            .with_context(|| format!("parsing {path}"))
    };
    // Linux reports these in USER_HZ, 100 on every mainstream configuration.
    Ok((field(first)? + field(first + 1)?) / 100.0)
}

/// The machine's busy and total CPU seconds over every core so far (`/proc/stat`'s first
/// line): busy is user, nice, system, irq, softirq and steal; total is busy and idle. I/O
/// wait is left out of both: proc(5) calls it unreliable, and it can decrease, which made a
/// busy share computed with it exceed the whole.
pub fn machine_cpu() -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("an empty /proc/stat")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse::<f64>)
        .collect::<Result<_, _>>()
        .context("parsing /proc/stat")?;
    let tick = |idx: usize| ticks.get(idx).copied().unwrap_or(0.0);
    let busy = [0, 1, 2, 5, 6, 7].into_iter().map(tick).sum::<f64>();
    Ok((busy / 100.0, (busy + tick(3)) / 100.0))
}

/// The machine's busy share of a window between two [`machine_cpu`] readings, in percent, at
/// most 100 (over a short window `/proc/stat`'s idle time may lag its busy time).
pub fn busy_percent(before: (f64, f64), after: (f64, f64)) -> f64 {
    let busy = after.0 - before.0;
    let total = (after.1 - before.1).max(busy).max(0.01);
    100.0 * busy / total
}

/// Waits up to ten minutes until `n` nodes are ready, following every page of the list.
pub async fn wait_ready(clients: &Clients, n: usize) {
    // Each probe lists the whole fleet, and listing 5,000 nodes loads the controller being
    // measured: probes 200 ms apart, in pages of 1,000, so a figure is at most 200 ms late.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let mut clients = clients.clone();
        if let Some(listed) = clients.try_list_nodes_paged(1000).await
            && listed.iter().filter(|node| node.state == "ready").count() >= n
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for every node ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_of_this_process_its_waited_children_and_the_machine_only_grow() {
        let (cpu_before, hwm) = process_usage(std::process::id()).expect("this process");
        assert!(cpu_before >= 0.0 && hwm > 0, "{cpu_before} s, {hwm} KiB");
        let children_before = waited_children_cpu().expect("children");
        let (busy_before, total_before) = machine_cpu().expect("machine");
        // A child that spins for a while, then is waited for: its CPU moves to cutime.
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .expect("sh runs");
        assert!(status.success());
        let children_after = waited_children_cpu().expect("children");
        assert!(
            children_after > children_before,
            "{children_before} s then {children_after} s"
        );
        let (busy_after, total_after) = machine_cpu().expect("machine");
        // Both grow; the busy part of a short window is not compared with the whole, which
        // the kernel does not keep consistent (its idle time, computed per core on tickless
        // kernels, lagged behind busy time and failed that comparison on a loaded machine):
        // `busy_percent` bounds it.
        assert!(busy_after > busy_before && total_after > total_before);
        assert_eq!(busy_percent((1.0, 2.0), (1.5, 2.0)), 100.0);
        assert_eq!(busy_percent((1.0, 2.0), (1.5, 3.0)), 50.0);
        assert!(
            stat_seconds("/proc/self/stat", 1_000).is_err(),
            "no such field"
        );
    }
}
