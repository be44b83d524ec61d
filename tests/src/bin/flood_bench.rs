//! Flood benchmark: what unauthenticated registrations and idle connections cost a controller.
//!
//! Starts the real `tollgate-controller` binary over TLS (a throwaway lab CA), measures
//! `ListNodes` latency and the controller's memory and open files at rest (the baseline), then
//! floods it, measuring the same during and after each flood:
//!
//! 1. registration attempts: each a fresh TLS connection without a node certificate calling
//!    `AgentService.Register` for a new node name (refused: `Unauthenticated`);
//! 2. idle connections: TCP connections that send nothing, from 100 loopback addresses
//!    (127.0.1.1 ..), held open by two child processes of this binary (file descriptors).
//!
//! ```text
//! cargo build --release --workspace --bins
//! ./target/release/flood-bench --registrations 20000 --idle 20000
//! ```

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tollgate_proto::v1;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

struct Args {
    registrations: usize,
    idle: usize,
    concurrency: usize,
    /// This process is a child holding idle connections: target, first source, count.
    hold: Option<(std::net::SocketAddr, u8, usize)>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        registrations: 20_000,
        idle: 20_000,
        concurrency: 32,
        hold: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--registrations" => {
                args.registrations = value()?.parse().context("--registrations N")?
            }
            "--idle" => args.idle = value()?.parse().context("--idle N")?,
            "--concurrency" => args.concurrency = value()?.parse().context("--concurrency N")?,
            // A child holding idle connections: --hold ADDR FIRST_SOURCE N.
            "--hold" => {
                let target = value()?.parse().context("--hold ADDR")?;
                let first: u8 = value()?.parse().context("--hold ADDR FIRST")?;
                let n: usize = value()?.parse().context("--hold ADDR FIRST N")?;
                args.hold = Some((target, first, n));
            }
            "-h" | "--help" => {
                println!(
                    "flood-bench [--registrations N (20000)] [--idle N (20000)] [--concurrency N (32)]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}; see --help"),
        }
    }
    Ok(args)
}

/// Opens `n` TCP connections to `target` from 100 loopback source addresses starting at
/// 127.0.1.`first`, then sleeps until killed. Connections the controller closes stay open on
/// this side (their file descriptors are this process's, not the controller's).
async fn hold(target: std::net::SocketAddr, first: u8, n: usize) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let last = first.wrapping_add(u8::try_from(i % 100).unwrap_or(0));
        let source = std::net::Ipv4Addr::new(127, 0, 1, last);
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(source.into(), 0))?;
        let stream = socket
            .connect(target)
            .await
            .with_context(|| format!("connection {i} from {source}"))?;
        held.push(stream);
    }
    println!("held {n}");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

/// The controller's resident memory now and at its peak (KiB), and its open files.
fn usage(pid: u32) -> anyhow::Result<(u64, u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading /proc/PID/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let files = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0);
    Ok((field("VmRSS:"), field("VmHWM:"), files))
}

/// `ListNodes` latencies of `n` calls in a row on a fresh connection each time (what a CLI
/// does), sorted; a call that failed or took over 10 s counts as 10 s, and is counted.
async fn list_latencies(endpoint: &Endpoint, n: usize) -> Latencies {
    let mut latencies = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let started = Instant::now();
        let answered = async {
            let channel = endpoint.connect().await.ok()?;
            v1::node_service_client::NodeServiceClient::new(channel)
                .list_nodes(v1::ListNodesRequest::default())
                .await
                .ok()
        };
        match tokio::time::timeout(Duration::from_secs(10), answered).await {
            Ok(Some(_)) => latencies.push(started.elapsed()),
            _ => {
                failed += 1;
                latencies.push(Duration::from_secs(10));
            }
        }
    }
    latencies.sort();
    Latencies { latencies, failed }
}

/// Sorted latencies, and how many calls failed.
struct Latencies {
    latencies: Vec<Duration>,
    failed: usize,
}

fn summary(measured: &Latencies) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let latencies = &measured.latencies;
    format!(
        "median {:.1} ms, max {:.1} ms, {} of {} failed",
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() - 1]),
        measured.failed,
        latencies.len()
    )
}

fn tls_endpoint(url: &str, ca: &Path) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .tls_config(
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?)),
        )?
        .connect_timeout(Duration::from_secs(5)))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Some((target, first, n)) = args.hold {
        return hold(target, first, n).await;
    }
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("binary directory")?;
    let controller_bin = bin_dir.join("tollgate-controller");
    if !controller_bin.exists() {
        bail!(
            "{} not found; build it with `cargo build --release --workspace --bins`",
            controller_bin.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let pki: PathBuf = dir.path().join("pki");
    let made = std::process::Command::new(&controller_bin)
        .args(["ca", "init", "--dir"])
        .arg(&pki)
        .output()?;
    anyhow::ensure!(made.status.success(), "ca init: {made:?}");
    let addr_file: PathBuf = dir.path().join("controller.addr");
    let mut controller = tokio::process::Command::new(&controller_bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--ca-dir"])
        .arg(&pki)
        .arg("--addr-file")
        .arg(&addr_file)
        .arg("--data-dir")
        .arg(dir.path().join("controller"))
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .context("starting tollgate-controller")?;
    let pid = controller.id().context("controller pid")?;
    let addr = loop {
        if let Ok(text) = std::fs::read_to_string(&addr_file)
            && !text.trim().is_empty()
        {
            break text.trim().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let url = format!("https://{addr}");
    let endpoint = tls_endpoint(&url, &pki.join("ca.pem"))?;

    let baseline = list_latencies(&endpoint, 50).await;
    let (rss, _, files) = usage(pid)?;
    println!("| phase | ListNodes (fresh TLS connection each) | controller RSS | open files |");
    println!("| --- | --- | ---: | ---: |");
    println!(
        "| at rest (baseline) | {} | {:.1} MiB | {files} |",
        summary(&baseline),
        rss as f64 / 1024.0
    );

    // 1. Registration attempts without a certificate.
    let started = Instant::now();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let endpoint = endpoint.clone();
            let refused = refused.clone();
            let next = next.clone();
            let total = args.registrations;
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let Ok(channel) = endpoint.connect().await else {
                        continue;
                    };
                    let answer = v1::agent_service_client::AgentServiceClient::new(channel)
                        .register(v1::RegisterRequest {
                            node_name: format!("flood-{i:05}"),
                            labels: [("sku".to_owned(), "hgx-h100".to_owned())].into(),
                            ..Default::default()
                        })
                        .await;
                    if matches!(&answer, Err(status) if status.code() == tonic::Code::Unauthenticated)
                    {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let during = list_latencies(&endpoint, 50).await;
    let (rss, _, files) = usage(pid)?;
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed();
    println!(
        "| during {} registration attempts | {} | {:.1} MiB | {files} |",
        args.registrations,
        summary(&during),
        rss as f64 / 1024.0
    );
    let after = list_latencies(&endpoint, 50).await;
    let (rss, _, files) = usage(pid)?;
    let nodes = v1::node_service_client::NodeServiceClient::new(endpoint.connect().await?)
        .list_nodes(v1::ListNodesRequest::default())
        .await?
        .into_inner()
        .nodes
        .len();
    println!(
        "| after them ({} refused in {:.1} s, {nodes} nodes registered) | {} | {:.1} MiB | {files} |",
        refused.load(std::sync::atomic::Ordering::Relaxed),
        elapsed.as_secs_f64(),
        summary(&after),
        rss as f64 / 1024.0
    );

    // 2. Idle connections, held by two children (each needs a file descriptor per connection).
    let target: std::net::SocketAddr = addr.parse()?;
    let half = args.idle / 2;
    let mut holders = Vec::new();
    for (first, n) in [(1, half), (101, args.idle - half)] {
        let child = tokio::process::Command::new(&exe)
            .args([
                "--hold",
                &target.to_string(),
                &first.to_string(),
                &n.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        holders.push(child);
    }
    let mut outputs = Vec::new();
    for holder in &mut holders {
        use tokio::io::AsyncBufReadExt as _;
        let stdout = holder.stdout.take().context("holder stdout")?;
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await?;
        outputs.push(line.trim().to_owned());
    }
    let held = list_latencies(&endpoint, 50).await;
    let (rss, peak, files) = usage(pid)?;
    println!(
        "| {} idle connections held ({}) | {} | {:.1} MiB | {files} |",
        args.idle,
        outputs.join(", "),
        summary(&held),
        rss as f64 / 1024.0
    );
    drop(holders);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, _, files) = usage(pid)?;
    println!(
        "| idle holders gone | — | {:.1} MiB (peak {:.1} MiB) | {files} |",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    controller.kill().await?;
    Ok(())
}
