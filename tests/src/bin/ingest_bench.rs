//! Fleet telemetry ingest benchmark: how many samples a second the controller takes in through
//! `PushTelemetry` and stores, against two ceilings measured in the same run.
//!
//! N simulated agents (8 GPUs each, values from the simulated GPU source) each register, open
//! one `PushTelemetry` stream on their own connection and send `--rounds` sampling rounds,
//! `--batch` rounds to a `TelemetryBatch`, stamped `--interval` apart and ending half a minute
//! ago (compressed time: minutes of history in seconds). The messages are the real wire
//! messages, encoded with prost before the clock starts for each GPU's values and assembled
//! per batch by plain copies while they stream, so the agents' side costs little CPU; the load
//! comes from this process, the controller is a child (`tollgate-controller` on SQLite).
//!
//! The figure: samples from the first message until the controller has exited after SIGTERM,
//! its shutdown flush having committed every bucket; the rows are then counted and the
//! samples they fold summed from the database, which must equal what was sent. The ceilings:
//!
//! (a) a no-op `AgentService` in a child process (this binary, `--noop-server`) that decodes
//!     every `TelemetryBatch` and drops it, fed the same bytes the same way;
//! (b) the rows the controller writes for this load (the same 10 s and 1 min buckets, folded
//!     here with the domain's `Rollup`, fields as JSON), inserted raw with sqlx into a fresh
//!     SQLite database with the controller's schema and settings (WAL, synchronous FULL),
//!     500-row `INSERT`s, one transaction per 500 rows, rows encoded before the clock starts.
//!
//! ```text
//! cargo build --release --workspace --bins
//! ./target/release/ingest-bench --agents 100 --rounds 3000
//! ```

use anyhow::{Context, bail, ensure};
use prost::Message as _;
use prost::bytes::{BufMut as _, Bytes, BytesMut};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_agent::gpu::GpuSource as _;
use tollgate_agent::gpu::simulated::{SimConfig, SimulatedSource};
use tollgate_domain::fleet_history::{Bucket, History, Rollup};
use tollgate_domain::telemetry::Field;
use tollgate_domain::{NodeId, Timestamp};
use tollgate_proto::v1;
use tollgate_tests::bench;
use tollgate_wire::ToProto as _;

/// Distinct values each simulated GPU cycles through.
const VARIANTS: usize = 16;
/// Rows per `INSERT`, and per transaction, in the raw SQLite ceiling (the controller's
/// statement size).
const ROWS_PER_BATCH: usize = 500;
/// The field every simulated sample carries; its per-bucket sample counts are summed to check
/// what was stored.
const CHECK_FIELD: Field = Field::GpuTempC;

struct Args {
    agents: usize,
    gpus: u32,
    rounds: usize,
    batch: usize,
    interval: Duration,
    controller: Option<PathBuf>,
    /// This process is the no-op server: write its address to this file and serve.
    noop_server: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        agents: 100,
        gpus: 8,
        rounds: 3000,
        batch: 100,
        interval: Duration::from_millis(100),
        controller: None,
        noop_server: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--agents" => args.agents = value()?.parse().context("--agents N")?,
            "--gpus" => args.gpus = value()?.parse().context("--gpus N")?,
            "--rounds" => args.rounds = value()?.parse().context("--rounds N")?,
            "--batch" => args.batch = value()?.parse().context("--batch N")?,
            "--interval" => {
                args.interval =
                    tollgate_domain::spec::parse_duration(&value()?).map_err(anyhow::Error::msg)?;
            }
            "--controller" => args.controller = Some(PathBuf::from(value()?)),
            "--noop-server" => args.noop_server = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!(
                    "ingest-bench [--agents N (100)] [--gpus N (8)] [--rounds N per agent (3000)] \
                     [--batch ROUNDS per message (100)] [--interval D between rounds (100ms)] \
                     [--controller PATH]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}; see --help"),
        }
    }
    ensure!(
        args.agents > 0 && args.gpus > 0 && args.rounds > 0 && args.batch > 0,
        "--agents, --gpus, --rounds and --batch must be positive"
    );
    ensure!(
        args.batch * args.gpus as usize <= 10_000,
        "a batch holds at most 10,000 samples (--batch × --gpus)"
    );
    Ok(args)
}

/// One GPU's sample without its timestamp, prost-encoded, and the values it holds.
type EncodedSample = (Bytes, Vec<(Field, f64)>);

/// One simulated agent's load: its node, and each GPU's values, prost-encoded once as a
/// `TelemetrySample` without its timestamp (`gpu_index` and `values`; the timestamp, field 2,
/// is appended per sample: protobuf takes fields in any order).
struct AgentLoad {
    node: String,
    /// `[gpu_idx][variant]`: the encoded fields, and the values they hold.
    encoded: Vec<Vec<EncodedSample>>,
}

impl AgentLoad {
    fn new(node: String, source: &SimulatedSource, n_gpus: u32) -> anyhow::Result<Self> {
        let mut encoded = vec![Vec::with_capacity(VARIANTS); n_gpus as usize];
        for _ in 0..VARIANTS {
            for gpu_idx in 0..n_gpus {
                let values = source.sample_gpu(gpu_idx)?;
                ensure!(
                    values.contains_key(&CHECK_FIELD),
                    "the simulated GPU reports no {CHECK_FIELD}"
                );
                let sample = v1::TelemetrySample {
                    gpu_index: gpu_idx,
                    at: None,
                    values: values
                        .iter()
                        .map(|(field, value)| (field.name().to_owned(), *value))
                        .collect(),
                };
                encoded[gpu_idx as usize].push((
                    Bytes::from(sample.encode_to_vec()),
                    values.into_iter().collect(),
                ));
            }
        }
        Ok(Self { node, encoded })
    }

    fn n_gpus(&self) -> usize {
        self.encoded.len()
    }
}

/// When round `round` was sampled.
fn round_at(first: Timestamp, interval: Duration, round: usize) -> Timestamp {
    first
        + chrono::Duration::from_std(interval * u32::try_from(round).unwrap_or(u32::MAX))
            .unwrap_or_default()
}

/// The wire bytes of one `TelemetryBatch` holding rounds `rounds` of `load`.
fn encode_batch(
    load: &AgentLoad,
    rounds: std::ops::Range<usize>,
    first: Timestamp,
    interval: Duration,
) -> Bytes {
    let mut out = BytesMut::with_capacity(rounds.len() * load.n_gpus() * 512);
    for round in rounds {
        let at = tollgate_wire::timestamp_to_proto(round_at(first, interval, round));
        let at_len = at.encoded_len();
        for variants in &load.encoded {
            let (fields, _) = &variants[round % VARIANTS];
            // Field 2 (`at`): tag, length, message.
            let sample_len =
                fields.len() + 1 + prost::encoding::encoded_len_varint(at_len as u64) + at_len;
            // `TelemetryBatch.samples` is field 1.
            out.put_u8(0x0a);
            prost::encoding::encode_varint(sample_len as u64, &mut out);
            out.put_slice(fields);
            out.put_u8(0x12);
            prost::encoding::encode_varint(at_len as u64, &mut out);
            at.encode(&mut out).expect("BytesMut grows");
        }
    }
    out.freeze()
}

/// A codec sending already encoded messages and decoding the `Ack`.
#[derive(Clone, Copy, Default)]
struct PreEncoded;

#[derive(Clone, Copy, Default)]
struct BytesEncoder;

impl tonic::codec::Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = v1::Ack;
    type Encoder = BytesEncoder;
    type Decoder = tonic_prost::ProstDecoder<v1::Ack>;
    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// Every agent's stream at once against `url`, each on its own connection and with its token
/// (`None`: the no-op server takes none); returns the time from the first message until every
/// stream was acknowledged.
async fn push_all(
    url: &str,
    loads: &Arc<Vec<AgentLoad>>,
    tokens: &[Option<String>],
    args: &Args,
    first: Timestamp,
) -> anyhow::Result<Duration> {
    let mut channels = Vec::with_capacity(loads.len());
    for _ in 0..loads.len() {
        channels.push(
            tonic::transport::Endpoint::from_shared(url.to_owned())?
                .connect()
                .await?,
        );
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (agent_idx, (channel, token)) in channels.into_iter().zip(tokens).enumerate() {
        let loads = Arc::clone(loads);
        let token = token.clone();
        let (n_rounds, batch, interval) = (args.rounds, args.batch, args.interval);
        tasks.spawn(async move {
            let batches = (0..n_rounds).step_by(batch).map(move |start| {
                let load = &loads[agent_idx];
                encode_batch(load, start..(start + batch).min(n_rounds), first, interval)
            });
            let mut request = tonic::Request::new(tokio_stream::iter(batches));
            if let Some(token) = token {
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse()?);
            }
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await?;
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(
                "/tollgate.v1.AgentService/PushTelemetry",
            );
            grpc.client_streaming(request, path, PreEncoded)
                .await
                .context("PushTelemetry")?;
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(started.elapsed())
}

/// Registers every agent's node with the controller; returns their tokens.
async fn register_all(
    url: &str,
    loads: &[AgentLoad],
    gpus: u32,
) -> anyhow::Result<Vec<Option<String>>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect()
        .await?;
    let mut client = v1::agent_service_client::AgentServiceClient::new(channel);
    let mut tokens = Vec::with_capacity(loads.len());
    for load in loads {
        let source = simulated(&load.node, gpus);
        let inventory = source.inventory()?;
        let registration = client
            .register(v1::RegisterRequest {
                node_name: load.node.clone(),
                labels: Default::default(),
                inventory: Some(inventory.to_proto()),
                agent_version: "ingest-bench".to_owned(),
                node_token: String::new(),
            })
            .await
            .with_context(|| format!("registering {}", load.node))?
            .into_inner();
        tokens.push(Some(registration.node_token));
    }
    Ok(tokens)
}

fn simulated(node: &str, gpus: u32) -> SimulatedSource {
    SimulatedSource::new(SimConfig {
        node: node.to_owned(),
        seed: None,
        n_gpus: gpus,
        driver: tollgate_agent::config::DEFAULT_SIM_DRIVER.to_owned(),
        vbios: tollgate_agent::config::DEFAULT_SIM_VBIOS.to_owned(),
        faults: Vec::new(),
    })
}

/// The buckets the controller folds this load into, with its default history.
fn expected_buckets(
    loads: &[AgentLoad],
    args: &Args,
    first: Timestamp,
    now: Timestamp,
) -> anyhow::Result<Vec<Bucket>> {
    let mut rollup = Rollup::new(History::default());
    for load in loads {
        let node = NodeId::from(load.node.as_str());
        for round in 0..args.rounds {
            let at = micros(round_at(first, args.interval, round));
            for (gpu_idx, variants) in load.encoded.iter().enumerate() {
                let (_, values) = &variants[round % VARIANTS];
                rollup
                    .add(&node, u32::try_from(gpu_idx)?, at, values, now)
                    .map_err(|refused| anyhow::anyhow!("sample refused: {refused:?}"))?;
            }
        }
    }
    Ok(rollup.take_all(usize::MAX))
}

/// Timestamps as the wire carries them (and the store keeps them): whole microseconds.
fn micros(at: Timestamp) -> Timestamp {
    use chrono::SubsecRound as _;
    at.trunc_subsecs(6)
}

/// A bucket's fields as the store writes them: name → `[min, max, sum, samples]`.
fn fields_json(bucket: &Bucket) -> String {
    let map: serde_json::Map<String, serde_json::Value> = bucket
        .fields
        .iter()
        .map(|(field, stat)| {
            (
                field.name().to_owned(),
                serde_json::json!([stat.min, stat.max, stat.sum, stat.samples]),
            )
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Ceiling (b): `buckets` inserted raw into a fresh database with the controller's schema;
/// returns the time the inserts took.
async fn raw_sqlite_insert(dir: &Path, buckets: &[Bucket]) -> anyhow::Result<Duration> {
    let file = dir.join("ceiling.db");
    let url = format!("sqlite://{}", file.display());
    // The controller's migrations make the schema; its store is then closed.
    tollgate_controller::store::Store::connect(&url)
        .await?
        .close()
        .await;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let rows: Vec<(&Bucket, String)> = buckets.iter().map(|b| (b, fields_json(b))).collect();
    let sql = |n: usize| {
        let mut sql = String::from(
            "INSERT INTO fleet_telemetry (node, gpu_index, resolution_s, bucket_start, fields) VALUES ",
        );
        for row in 0..n {
            if row > 0 {
                sql.push(',');
            }
            // Anonymous parameters, bound in order: sqlx binds a numbered one by its name, a
            // walk of the statement's parameter list each.
            sql.push_str("(?, ?, ?, ?, ?)");
        }
        sql
    };
    let full = sql(ROWS_PER_BATCH);
    let started = Instant::now();
    for chunk in rows.chunks(ROWS_PER_BATCH) {
        let text = if chunk.len() == ROWS_PER_BATCH {
            full.clone()
        } else {
            sql(chunk.len())
        };
        let mut tx = pool.begin().await?;
        let mut query = sqlx::query(sqlx::AssertSqlSafe(text));
        for (bucket, fields) in chunk {
            query = query
                .bind(bucket.node.as_str())
                .bind(i64::from(bucket.gpu_index))
                .bind(i64::from(bucket.resolution_s))
                .bind(bucket.start)
                .bind(fields.as_str());
        }
        query.execute(&mut *tx).await?;
        tx.commit().await?;
    }
    let took = started.elapsed();
    let (n_rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM fleet_telemetry")
        .fetch_one(&pool)
        .await?;
    ensure!(
        usize::try_from(n_rows)? == buckets.len(),
        "the raw insert stored {n_rows} rows of {}",
        buckets.len()
    );
    pool.close().await;
    Ok(took)
}

/// What the controller stored: rows, and per tier the samples of [`CHECK_FIELD`] they fold.
async fn stored(db: &Path) -> anyhow::Result<(u64, BTreeMap<i64, i64>)> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let (n_rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM fleet_telemetry")
        .fetch_one(&pool)
        .await?;
    let per_tier: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT resolution_s, CAST(sum(json_extract(fields, '$.gpu_temp_c[3]')) AS INTEGER)
         FROM fleet_telemetry GROUP BY resolution_s",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    Ok((u64::try_from(n_rows)?, per_tier.into_iter().collect()))
}

fn rate(samples: u64, took: Duration) -> f64 {
    samples as f64 / took.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Some(addr_file) = &args.noop_server {
        return tollgate_tests::noop::serve(addr_file, Default::default()).await;
    }
    let controller_bin = match &args.controller {
        Some(path) => path.clone(),
        None => bench::sibling_controller()?,
    };
    let dir = tempfile::tempdir()?;
    let n_samples = (args.agents * args.rounds) as u64 * u64::from(args.gpus);
    let loads: Arc<Vec<AgentLoad>> = Arc::new(
        (0..args.agents)
            .map(|i| {
                let node = format!("ingest-{i:05}");
                let source = simulated(&node, args.gpus);
                AgentLoad::new(node, &source, args.gpus)
            })
            .collect::<anyhow::Result<_>>()?,
    );
    // The rounds end half a minute ago: every bucket is past its lateness, and within every
    // tier's retention.
    let now = tollgate_agent::clock::now();
    let first = now
        - chrono::Duration::seconds(30)
        - chrono::Duration::from_std(args.interval * u32::try_from(args.rounds)?)?;

    // What is sent is what prost decodes: one batch checked against the values it encodes.
    let check = v1::TelemetryBatch::decode(encode_batch(&loads[0], 0..2, first, args.interval))?;
    ensure!(
        check.samples.len() == 2 * args.gpus as usize
            && check.samples[args.gpus as usize].at
                == Some(tollgate_wire::timestamp_to_proto(round_at(
                    first,
                    args.interval,
                    1
                )))
            && check.samples[1].gpu_index == 1
            && check.samples[1].values.len() == loads[0].encoded[1][0].1.len(),
        "a hand-assembled batch does not decode to what it should"
    );

    // The controller.
    let mut controller =
        bench::start_controller(&controller_bin, dir.path(), args.agents + 100, &[]).await?;
    let tokens = register_all(&controller.url, &loads, args.gpus).await?;
    let (cpu_before, _) = bench::process_usage(controller.pid)?;
    let started = Instant::now();
    let acked = push_all(&controller.url, &loads, &tokens, &args, first).await?;
    let (cpu_acked, _) = bench::process_usage(controller.pid)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(controller.pid)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = controller.child.wait().await?;
    let stored_after = started.elapsed();
    ensure!(status.success(), "the controller exited with {status}");
    let (n_rows, per_tier) = stored(&dir.path().join("controller/tollgate.db")).await?;
    let expected: i64 = i64::try_from(n_samples)?;
    for tier in History::default().tiers() {
        let folded = per_tier
            .get(&i64::from(tier.resolution_s()))
            .copied()
            .unwrap_or(0);
        ensure!(
            folded == expected,
            "the {} s tier folds {folded} samples of {expected} sent",
            tier.resolution_s()
        );
    }

    // Ceiling (a): the no-op server, a child process like the controller.
    let addr_file = dir.path().join("noop.addr");
    let (mut noop, noop_url) = tollgate_tests::noop::start(&addr_file, &[]).await?;
    let no_tokens = vec![None; args.agents];
    let noop_took = push_all(&noop_url, &loads, &no_tokens, &args, first).await?;
    noop.start_kill()?;
    let _ = noop.wait().await;

    // Ceiling (b): the same rows inserted raw.
    let buckets = expected_buckets(&loads, &args, first, now)?;
    let insert_took = raw_sqlite_insert(dir.path(), &buckets).await?;

    let figure = rate(n_samples, stored_after);
    let ceiling_a = rate(n_samples, noop_took);
    let ceiling_b = rate(n_samples, insert_took);
    let ceiling = ceiling_a.min(ceiling_b);
    println!(
        "load                          {} agents × {} GPUs × {} rounds = {n_samples} samples, \
         {} rounds ({} samples) a message, one stream per agent",
        args.agents,
        args.gpus,
        args.rounds,
        args.batch,
        args.batch * args.gpus as usize
    );
    println!(
        "controller: acknowledged      {:.2} s, {:.0} samples/s (folded in memory)",
        acked.as_secs_f64(),
        rate(n_samples, acked)
    );
    println!(
        "controller: stored            {:.2} s, {figure:.0} samples/s (until exit after SIGTERM: every bucket committed)",
        stored_after.as_secs_f64()
    );
    println!(
        "  rows stored                 {n_rows} ({} buckets; a bucket split by a flush is two rows), every sample counted in both tiers",
        buckets.len()
    );
    println!(
        "  controller CPU while pushing {:.2} s",
        cpu_acked - cpu_before
    );
    println!(
        "ceiling (a): no-op server     {:.2} s, {ceiling_a:.0} samples/s (decodes each TelemetryBatch, drops it)",
        noop_took.as_secs_f64()
    );
    println!(
        "ceiling (b): raw SQLite insert {:.3} s, {ceiling_b:.0} samples/s ({} bucket rows, not raw samples: the rows this load folds into; {ROWS_PER_BATCH} a transaction)",
        insert_took.as_secs_f64(),
        buckets.len()
    );
    println!(
        "ratio to min(ceilings)        {:.2}× (acknowledged: {:.2}×)",
        figure / ceiling,
        rate(n_samples, acked) / ceiling
    );
    Ok(())
}
