//! Dashboard benchmark: the Fleet page of 1,000 nodes (8 simulated GPUs each, labels, drift
//! from a release computed for every node) fetched over HTTP from a real controller on an
//! SQLite store, next to its baseline measured in the same run: `NodeService/ListNodes` of
//! the same page over gRPC, i.e. the same store read without the HTML. The nodes are written
//! into the store before the controller starts, as registrations write them.
//!
//! ```text
//! cargo build --release -p tollgate-tests --bin dash-bench
//! ./target/release/dash-bench --nodes 1000 --repeat 30
//! ```

use anyhow::{Context, bail};
use std::time::{Duration, Instant};
use tollgate_controller::store::{Registration, Store};
use tollgate_domain::fleet::Labels;
use tollgate_domain::node::FIRST_STATE;
use tollgate_domain::test_support::{self as ts, at};
use tollgate_proto::v1;

struct Args {
    nodes: usize,
    repeat: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        nodes: 1000,
        repeat: 30,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => args.nodes = value()?.parse().context("--nodes N")?,
            "--repeat" => args.repeat = value()?.parse().context("--repeat N")?,
            "-h" | "--help" => {
                println!("dash-bench [--nodes N (1000)] [--repeat N (30)]");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}; see --help"),
        }
    }
    if args.nodes == 0 || args.nodes > 1000 || args.repeat == 0 {
        bail!("--nodes must be 1 to 1000 (one page) and --repeat at least 1");
    }
    Ok(args)
}

/// Median and 95th percentile, milliseconds.
fn summary(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p95 = ((samples.len() as f64 * 0.95).ceil() as usize).clamp(1, samples.len()) - 1;
    (ms(samples[samples.len() / 2]), ms(samples[p95]))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("controller");
    std::fs::create_dir_all(&data_dir)?;
    let url = format!("sqlite://{}", data_dir.join("tollgate.db").display());
    {
        let store = Store::connect(&url).await?;
        for idx in 0..args.nodes {
            let name = format!("node-{idx:04}");
            let labels: Labels = [
                ("sku".to_owned(), "hgx-h100".to_owned()),
                ("rack".to_owned(), format!("r{:02}", idx / 40)),
                ("site".to_owned(), "lab-a".to_owned()),
            ]
            .into_iter()
            .collect();
            // Every tenth node runs an older driver: drift to show.
            let driver = if idx % 10 == 0 {
                "535.104.05"
            } else {
                "550.54.15"
            };
            let inventory = ts::inventory(driver, "96.00.89.00.01", 8);
            store
                .register_node(
                    &tollgate_controller::store::EncodedRegistration::new(
                        &tollgate_domain::NodeId::from(name.as_str()),
                        &labels,
                        &labels,
                        &inventory,
                        &format!("hash-{idx}"),
                        Registration::New(FIRST_STATE),
                    ),
                    at(0),
                )
                .await?;
        }
        store.close().await;
    }
    let mut config = tollgate_controller::ControllerConfig::new(data_dir);
    config.database_url = url;
    config.http_listen = Some("127.0.0.1:0".parse()?);
    // No rate limit: the benchmark calls back to back.
    config.limits.rate.per_second = 0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let grpc_addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (serving_tx, serving_rx) = tokio::sync::oneshot::channel();
    let controller = tokio::spawn(tollgate_controller::run_with(
        config,
        listener,
        async move {
            let _ = stopped.await;
        },
        move |serving| {
            let _ = serving_tx.send(serving.http_addr);
        },
    ));
    let http_addr = serving_rx
        .await
        .context("the controller did not start")?
        .context("no dashboard address")?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))?
        .connect()
        .await?;
    let mut clients = tollgate_tests::Clients::new(channel.clone());
    clients.create_release("r550").await;
    let mut nodes = v1::node_service_client::NodeServiceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024);
    let path = format!("/fleet?page_size={}&release=r550", args.nodes);
    let jar = tollgate_tests::http::Jar::default();

    // Warm both paths once (the first statement preparation, the first connection).
    let first = tollgate_tests::http::get(http_addr, &path, &jar).await;
    if first.status != 200 {
        bail!("the fleet page answered {}: {}", first.status, first.body);
    }
    let rows = first.body.matches("href=\"/nodes/").count();
    if rows != args.nodes {
        bail!("the fleet page lists {rows} nodes, expected {}", args.nodes);
    }
    let mut page = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..args.repeat {
        let started = Instant::now();
        let listed = nodes
            .list_nodes(v1::ListNodesRequest {
                selector: Default::default(),
                page_size: args.nodes as u32,
                page_token: String::new(),
            })
            .await?
            .into_inner();
        baseline.push(started.elapsed());
        if listed.nodes.len() != args.nodes {
            bail!("ListNodes answered {} nodes", listed.nodes.len());
        }
        let started = Instant::now();
        let answer = tollgate_tests::http::get(http_addr, &path, &jar).await;
        page.push(started.elapsed());
        if answer.status != 200 {
            bail!("the fleet page answered {}", answer.status);
        }
    }
    let (page_p50, page_p95) = summary(page);
    let (base_p50, base_p95) = summary(baseline);
    println!(
        "fleet page, {} nodes × 8 GPUs, drift from r550 ({} KiB of HTML), {} requests",
        args.nodes,
        first.body.len() / 1024,
        args.repeat
    );
    println!("| path | median | p95 |");
    println!("| --- | --- | --- |");
    println!("| baseline: ListNodes over gRPC, same page | {base_p50:.1} ms | {base_p95:.1} ms |");
    println!("| GET /fleet over HTTP (the page) | {page_p50:.1} ms | {page_p95:.1} ms |");
    let _ = stop.send(());
    controller.await??;
    if page_p95 > 100.0 {
        eprintln!("the fleet page's p95 is {page_p95:.1} ms, over the 100 ms target");
        std::process::exit(1);
    }
    Ok(())
}
