//! `tollgate-controller`: parses flags (`serve` also from its configuration file), sets up
//! logging, binds the listener and calls [`tollgate_controller::run`] until SIGINT or SIGTERM.

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tollgate_controller::ControllerConfig;
use tollgate_controller::config::redact_database_url;
use tollgate_controller::store::StoreError;
use tollgate_wire::daemon_config::{self, Daemon, Origin, Origins, Parsed};
use tracing_subscriber::EnvFilter;

/// Tollgate's controller: schedules qualification plans onto lab nodes, collects results and
/// decides gates.
#[derive(Debug, Parser)]
#[command(name = "tollgate-controller", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves the gRPC API (agents and managers) until SIGINT or SIGTERM.
    Serve(Box<ServeArgs>),
    /// Prints the public key reports are signed with (hex), making the key pair if the data
    /// directory has none yet.
    PublicKey(PublicKeyArgs),
    /// The deployment's report signing key.
    #[command(subcommand)]
    ReportKey(ReportKeyCommand),
    /// The lab certificate authority that signs the server's and the nodes' certificates.
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Makes a lab CA in DIR: ca.pem (give it to the CLI and agents with --ca-file) and
    /// ca.key (mode 0600); or, with --ca-cert and --ca-key, copies an existing CA there.
    /// Then serve with --ca-dir DIR.
    Init(CaInitArgs),
}

#[derive(Debug, Subcommand)]
enum ReportKeyCommand {
    /// Retires the deployment's report signing key for a new one: run it where the current
    /// key is (--data-dir), against the deployment's database. The new key files replace the
    /// old ones there; copy report-signing.key and report-signing.pub into every other
    /// replica's data directory (each signs nothing until it has them, and reads them at its
    /// next report). Reports signed before keep verifying with the retired key, which
    /// `tollgate report public-key --all` lists. Recorded in the audit log.
    Rotate(RotateArgs),
}

#[derive(Debug, clap::Args)]
struct RotateArgs {
    /// The data directory holding the current key.
    #[arg(long, default_value = "./.tollgate", value_name = "DIR")]
    data_dir: PathBuf,
    /// The deployment's database, as the controllers serve it [default: sqlite://<data-dir>/tollgate.db].
    #[arg(long = "database", value_name = "URL", env = "TOLLGATE_DATABASE_URL")]
    database: Option<String>,
    /// Who rotates, recorded as the audit entry's actor [default: the user running it].
    #[arg(long, value_name = "NAME")]
    actor: Option<String>,
    /// Why (a schedule, a suspected leak), recorded in the audit entry.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

#[derive(Debug, clap::Args)]
struct CaInitArgs {
    /// The CA directory to create.
    #[arg(long, default_value = "./.tollgate/pki", value_name = "DIR")]
    dir: PathBuf,
    /// An existing CA certificate (PEM) to use instead of making one; needs --ca-key.
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The existing CA's private key (PEM); needs --ca-cert.
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct PublicKeyArgs {
    /// Where the controller keeps its files.
    #[arg(long, default_value = "./.tollgate", value_name = "DIR")]
    data_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (see --addr-file).
    #[arg(long, default_value = "127.0.0.1:7800", value_name = "ADDR")]
    listen: String,
    /// Where the controller keeps its files; created if missing.
    #[arg(long, default_value = "./.tollgate", value_name = "DIR")]
    data_dir: PathBuf,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB [default: sqlite://<data-dir>/tollgate.db].
    #[arg(long = "database", value_name = "URL", env = "TOLLGATE_DATABASE_URL")]
    database: Option<String>,
    /// How often agents send heartbeats, for example 2s or 500ms.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    heartbeat_interval: Duration,
    /// After how long without a heartbeat a node is unreachable and its running job lost.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    lease_grace: Duration,
    /// The share of nodes (0 to 1) that, silent at once, the controller takes for an outage of
    /// itself, its database or the network rather than dead nodes: no lease expires until
    /// heartbeats return. Above 1 turns the rule off.
    #[arg(long, default_value_t = 0.5, value_name = "FRACTION")]
    outage_fraction: f64,
    /// The fewest watched nodes for --outage-fraction to apply (in a small lab a few dead nodes
    /// are a large share).
    #[arg(long, default_value_t = 10, value_name = "N")]
    outage_min_nodes: usize,
    /// Write the bound address (for example 127.0.0.1:41234) to this file once listening.
    #[arg(long, value_name = "PATH")]
    addr_file: Option<PathBuf>,
    /// Serve the web dashboard on this address (port 0 picks a free port), with the same TLS
    /// as --listen (plain text only on a loopback address, with --insecure-loopback); off
    /// when not given.
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,
    /// POST every issue change (opened, attached, state, updated, imported) as JSON to this
    /// plain http:// URL, from the leading replica, at least once, in order per issue
    /// (docs/issue-format.md); https:// is refused. Off when not given.
    #[arg(long, value_name = "URL")]
    issue_webhook: Option<String>,
    /// Write the dashboard's bound address to this file once it listens (needs --http-listen).
    #[arg(long, value_name = "PATH", requires = "http_listen")]
    http_addr_file: Option<PathBuf>,
    /// The dashboard's URL as people reach it (for example https://tollgate.lab:7880): status
    /// reports link into the dashboard under it; without it they link by path (/releases/R).
    #[arg(long, value_name = "URL")]
    dashboard_url: Option<String>,
    /// Log format; RUST_LOG filters (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Send OpenTelemetry traces (every RPC, each loop pass, a result's path to its gate
    /// decision) to this OTLP/gRPC collector, for example http://127.0.0.1:4317. Off when unset.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// A bootstrap manager API token, NAME=SECRET (an admin) or NAME:ROLE=SECRET; repeatable.
    /// The secret shows in `ps`: prefer --api-token-file. Without any token (flag, file or
    /// made with `tollgate token create`), manager calls are anonymous from loopback only.
    #[arg(long = "api-token", value_name = "NAME[:ROLE]=SECRET", value_parser = tollgate_controller::tokens::ApiTokens::parse_flag)]
    api_tokens: Vec<(String, String)>,
    /// A file of bootstrap manager API tokens, one `name secret` or `name:role secret` per
    /// line (a name without a role is an admin).
    #[arg(
        long = "api-token-file",
        visible_alias = "api-tokens-file",
        value_name = "FILE"
    )]
    api_tokens_file: Option<PathBuf>,
    /// Streams (WatchRun, StreamReport; an agent's Connect, PushTelemetry) one identity (API
    /// token, node, or anonymous caller's IP) may hold open at once; more are refused with
    /// RESOURCE_EXHAUSTED. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = tollgate_controller::limits::DEFAULT_STREAMS_PER_IDENTITY)]
    max_streams_per_identity: usize,
    /// Manager calls a second one identity may make on average; faster ones are refused with
    /// RESOURCE_EXHAUSTED and the time to wait. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = tollgate_controller::limits::DEFAULT_RATE_PER_SECOND)]
    rate_limit: u32,
    /// Manager calls one identity may make at once after a quiet spell (the rate limit's burst).
    #[arg(long, value_name = "N", default_value_t = tollgate_controller::limits::DEFAULT_RATE_BURST)]
    rate_burst: u32,
    /// Connections open at once, TLS handshakes included; more are closed as soon as they
    /// are accepted. Keep it under the open-file limit (`ulimit -n`).
    #[arg(long, value_name = "N", default_value_t = tollgate_controller::listener::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Connections open at once from one IP address; more are closed at accept.
    #[arg(long, value_name = "N", default_value_t = tollgate_controller::listener::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: usize,
    /// A connection that sends nothing for this long is closed (live clients answer the
    /// server's pings every 20 s); at least 30s.
    #[arg(long, default_value = "2m", value_parser = parse_duration, value_name = "DURATION")]
    idle_timeout: Duration,
    /// The fleet telemetry history kept from what agents stream while idle: tiers of
    /// RESOLUTION:RETENTION, finest first (each resolution a multiple of the one before).
    #[arg(long, default_value = "10s:1d,1m:30d", value_parser = tollgate_domain::fleet_history::History::parse, value_name = "TIERS")]
    telemetry_history: tollgate_domain::fleet_history::History,
    #[command(flatten)]
    tls: TlsArgs,
}

/// How the listener is secured: exactly one of a server certificate, a lab CA, or plain text
/// on loopback.
#[derive(Debug, clap::Args)]
struct TlsArgs {
    /// The server's certificate chain (PEM), for TLS; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server's private key (PEM); needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The lab CA directory (from `tollgate-controller ca init`); without --tls-cert the
    /// controller makes itself a server certificate from it for the --listen address and
    /// every --hostname at each start.
    #[arg(long, value_name = "DIR")]
    ca_dir: Option<PathBuf>,
    /// A host name (or address) clients reach the controller by, put in the server
    /// certificate made from --ca-dir; repeatable.
    #[arg(long = "hostname", value_name = "NAME")]
    hostnames: Vec<String>,
    /// How long a node certificate signed at enrollment or renewal is valid; agents renew
    /// theirs between 70 % and 90 % of it.
    #[arg(long, default_value = "30d", value_parser = parse_duration, value_name = "DURATION")]
    node_certificate_lifetime: Duration,
    /// Serve plain text, without TLS; allowed only on a loopback --listen address (tests,
    /// trying things out).
    #[arg(long, conflicts_with_all = ["tls_cert", "ca_dir"])]
    insecure_loopback: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = tollgate_domain::spec::parse_duration(text)?;
    if duration.is_zero() {
        return Err("must be longer than 0s".to_owned());
    }
    Ok(duration)
}

/// `serve` reads its flags from a configuration file too; the other subcommands do not.
const DAEMON: Daemon = Daemon {
    subcommand: Some("serve"),
    config_env: "TOLLGATE_CONTROLLER_CONFIG",
    default_path: "/etc/tollgate/controller.toml",
    actions: &[],
};

fn main() -> std::process::ExitCode {
    let Parsed { cli, origins } = daemon_config::parse::<Cli>(&DAEMON);
    let args = match cli.command {
        Command::Serve(args) => *args,
        Command::Ca(CaCommand::Init(args)) => return ca_init(&args),
        Command::ReportKey(ReportKeyCommand::Rotate(args)) => return rotate_report_key(args),
        Command::PublicKey(args) => {
            return match tollgate_controller::report::signing_key::load_or_create(&args.data_dir) {
                Ok(key) => {
                    println!(
                        "{}",
                        tollgate_controller::report::signing_key::public_key_hex(&key)
                    );
                    std::process::ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The trace exporter and its batch processor live on the runtime.
    let traces = match runtime
        .block_on(async { init_logging(args.log_format, args.otlp_endpoint.as_deref()) })
    {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            return std::process::ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(serve(args, &origins));
    // The last spans (the shutdown's own included) are sent while the runtime still runs.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `report-key rotate`: rotates the deployment's report signing key and says what to copy
/// where.
fn rotate_report_key(args: RotateArgs) -> std::process::ExitCode {
    use tollgate_controller::clock::Clock as _;
    use tollgate_controller::report::keys::{RotateRequest, rotate};
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let config = ControllerConfig::new(args.data_dir.clone());
    let database_url = args.database.unwrap_or(config.database_url);
    let request = RotateRequest {
        actor: args.actor.unwrap_or_else(local_user),
        reason: args.reason,
    };
    let rotated = runtime.block_on(async {
        let store = tollgate_controller::store::Store::connect(&database_url)
            .await
            .with_context(|| {
                format!(
                    "opening the database {}",
                    redact_database_url(&database_url)
                )
            })?;
        let now = tollgate_controller::clock::SystemClock.now();
        let rotated = rotate(&store, &args.data_dir, &request, now).await;
        store.close().await;
        rotated
    });
    match rotated {
        Ok(rotation) => {
            use tollgate_controller::report::signing_key::{KEY_FILE, PUBLIC_KEY_FILE};
            println!(
                "retired report signing key {} at {}\nsigning with {} from now on\nCopy {KEY_FILE} \
                 and {PUBLIC_KEY_FILE} from {} into every other replica's data directory: until \
                 then they sign no report. Reports signed before verify with the retired key; \
                 `tollgate report public-key --all` lists every key.",
                hex::encode(rotation.retired.as_bytes()),
                tollgate_domain::report_key::format_time(rotation.at),
                hex::encode(rotation.current.as_bytes()),
                args.data_dir.display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The name of the user running this process, for the audit log; `operator` when unknown.
fn local_user() -> String {
    ["USER", "LOGNAME"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|user| !user.is_empty()))
        .unwrap_or_else(|| "operator".to_owned())
}

/// `ca init`: makes or imports the lab CA and says what to do with it.
fn ca_init(args: &CaInitArgs) -> std::process::ExitCode {
    use tollgate_controller::pki;
    let made = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => pki::Ca::import(&args.dir, cert, key),
        _ => pki::init_ca_now(&args.dir),
    };
    match made {
        Ok(_) => {
            let (cert, key) = pki::ca_paths(&args.dir);
            println!(
                "CA certificate: {}\nCA key (keep it private): {}\nServe with \
                 `tollgate-controller serve --ca-dir {}`; give {} to the CLI and agents with \
                 --ca-file.",
                cert.display(),
                key.display(),
                args.dir.display(),
                cert.display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The listener's transport from the flags: a given certificate, one made from the lab CA,
/// or plain text on loopback; none of them is refused with what to pass.
fn transport(
    tls: &TlsArgs,
    listen: std::net::SocketAddr,
) -> anyhow::Result<(
    tollgate_controller::listener::Transport,
    Option<std::sync::Arc<tollgate_controller::pki::Ca>>,
)> {
    use tollgate_controller::clock::Clock as _;
    use tollgate_controller::listener::Transport;
    use tollgate_controller::pki;
    if tls.insecure_loopback {
        return Ok((Transport::InsecureLoopback, None));
    }
    let ca = match &tls.ca_dir {
        Some(dir) => Some(std::sync::Arc::new(pki::Ca::load_dir(dir).with_context(
            || {
                format!(
                    "loading the lab CA from --ca-dir {}; make one with \
                 `tollgate-controller ca init --dir {}`",
                    dir.display(),
                    dir.display()
                )
            },
        )?)),
        None => None,
    };
    let (identity, cert_path, key_path) = match (&tls.tls_cert, &tls.tls_key, &ca) {
        (Some(cert), Some(key), _) => {
            let read = |path: &Path| {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
            };
            let identity = pki::CertifiedKey {
                cert_pem: read(cert)?,
                key_pem: read(key)?,
            };
            (identity, cert.clone(), key.clone())
        }
        (_, _, Some(ca)) => {
            let dir = tls.ca_dir.clone().unwrap_or_default();
            let names = server_names(listen, &tls.hostnames);
            let now = tollgate_controller::clock::SystemClock.now();
            let identity = ca.server_certificate(&names, now)?;
            tracing::info!(?names, "made a server certificate from the lab CA");
            (identity, dir.join("server.pem"), dir.join("server.key"))
        }
        _ => bail!(
            "no TLS configured: pass --tls-cert FILE --tls-key FILE, or make a lab CA with \
             `tollgate-controller ca init --dir DIR` and pass --ca-dir DIR; to serve plain \
             text on a loopback address (tests only) pass --insecure-loopback"
        ),
    };
    let client_ca = ca.as_ref().map(|ca| ca.cert_pem().to_owned());
    let server = pki::server_config(&identity, &cert_path, &key_path, client_ca.as_deref())?;
    Ok((Transport::Tls(server), ca))
}

/// The names a server certificate made at start covers: the listen address (every local
/// name when it is a wildcard) and the given host names.
fn server_names(listen: std::net::SocketAddr, hostnames: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    if listen.ip().is_unspecified() {
        names.extend(["127.0.0.1", "::1", "localhost"].map(str::to_owned));
        let host = hostname();
        if !host.is_empty() {
            names.push(host);
        }
    } else {
        names.push(listen.ip().to_string());
    }
    for name in hostnames {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// This machine's host name, or empty when it cannot be read.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|text| text.trim().to_owned())
        .unwrap_or_default()
}

/// The error chain on one line, without repeating a cause its wrapper already quotes, plus
/// what to do when the database is the problem.
fn describe(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !parts.last().is_some_and(|last| last.ends_with(&text)) {
            parts.push(text);
        }
    }
    let mut line = parts.join(": ");
    if error
        .chain()
        .any(|cause| cause.downcast_ref::<StoreError>().is_some())
    {
        line.push_str(
            "; check that the database is running and reachable, or pick another with --database",
        );
    }
    line
}

/// Logs to stderr, filtered by RUST_LOG; with an OTLP endpoint, also traces (see
/// `tollgate_controller::traces`), whose spans the logs leave out. Call inside the runtime.
fn init_logging(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Option<tollgate_controller::traces::Traces>> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(
            format!("{}=off", tollgate_controller::traces::TARGET)
                .parse()
                .expect("a fixed, valid directive"),
        );
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only help a person at a terminal; in a file or a pipe they are noise.
        .with_ansi(std::io::stderr().is_terminal());
    let log = match format {
        LogFormat::Text => log.boxed(),
        LogFormat::Json => log.json().boxed(),
    };
    let (traces, trace_layer) = match otlp_endpoint {
        None => (None, None),
        Some(endpoint) => {
            let (traces, tracer) = tollgate_controller::traces::Traces::start(
                endpoint,
                "tollgate-controller",
                Vec::new(),
            )?;
            let only_ours = tracing_subscriber::filter::Targets::new()
                .with_target(tollgate_controller::traces::TARGET, tracing::Level::INFO)
                .with_target("tollgate_controller", tracing::Level::INFO);
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(only_ours);
            (Some(traces), Some(layer))
        }
    };
    tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(trace_layer)
        .init();
    Ok(traces)
}

async fn serve(args: ServeArgs, origins: &Origins) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "creating the data directory {}; pick a writable one with --data-dir",
            args.data_dir.display()
        )
    })?;
    // Heartbeats are recorded in batches (`heartbeats.rs`), at most one flush late.
    let recorded_within = args.heartbeat_interval
        + tollgate_controller::heartbeats::flush_every(args.heartbeat_interval);
    if args.lease_grace <= recorded_within {
        bail!(
            "--lease-grace {} is too short: it must be longer than --heartbeat-interval ({}) \
             plus the {} heartbeats may wait to be recorded ({} in all), or live nodes would \
             turn unreachable between two heartbeats; pass --lease-grace {} or more",
            tollgate_domain::spec::format_duration(args.lease_grace),
            tollgate_domain::spec::format_duration(args.heartbeat_interval),
            tollgate_domain::spec::format_duration(tollgate_controller::heartbeats::flush_every(
                args.heartbeat_interval
            )),
            tollgate_domain::spec::format_duration(recorded_within),
            tollgate_domain::spec::format_duration(recorded_within * 2)
        );
    }
    let grace = tollgate_domain::lease::LeaseGrace::new(args.lease_grace, args.heartbeat_interval);
    if grace.after_start > grace.renewed {
        tracing::warn!(
            lease_grace = %tollgate_domain::spec::format_duration(args.lease_grace),
            after_start = %tollgate_domain::spec::format_duration(
                grace.after_start.to_std().unwrap_or(Duration::MAX)
            ),
            "--lease-grace is shorter than an agent's longest reconnect delay plus a heartbeat: \
             a node whose connection drops for a few seconds may lose its job; after a \
             controller start every lease still gets the longer grace"
        );
    }
    let mut config = ControllerConfig::new(args.data_dir.clone());
    if let Some(url) = args.database {
        let instead = "set TOLLGATE_DATABASE_URL in the service's environment instead, or keep \
                       the password in ~/.pgpass (PostgreSQL reads it when the URL has none)";
        if redact_database_url(&url) != url {
            // From the flag, a password shows in `ps` to every user.
            if origins.of("database") == Origin::Flag {
                tracing::warn!(
                    "--database holds a password, which `ps` shows to every user of this host; \
                     {instead}"
                );
            }
            warn_if_shared("database", &origins.of("database"), "a password", instead);
        }
        config.database_url = url;
    }
    config.heartbeat_interval = args.heartbeat_interval;
    config.lease_grace = args.lease_grace;
    anyhow::ensure!(
        args.outage_fraction.is_finite() && args.outage_fraction > 0.0,
        "--outage-fraction {} must be a share above 0 (0.5: half the nodes; above 1: never)",
        args.outage_fraction
    );
    config.outage = tollgate_domain::lease::OutagePolicy {
        fraction: args.outage_fraction,
        min_nodes: args.outage_min_nodes,
    };
    if !args.api_tokens.is_empty() {
        let instead = "put the tokens in a file readable by this user only and pass \
                       --api-token-file FILE instead";
        if origins.of("api-token") == Origin::Flag {
            tracing::warn!(
                "--api-token puts a secret on the command line, where `ps` shows it to every \
                 user of this host; {instead}"
            );
        }
        warn_if_shared("api-token", &origins.of("api-token"), "a secret", instead);
    }
    anyhow::ensure!(
        args.idle_timeout >= Duration::from_secs(30),
        "--idle-timeout {:?} is shorter than 30s: live clients answer the server's pings only \
         every {:?}, so they would be cut off; pass --idle-timeout 30s or more",
        args.idle_timeout,
        tollgate_controller::listener::KEEPALIVE_INTERVAL
    );
    config.connections = tollgate_controller::listener::ConnectionLimits {
        max: args.max_connections.max(1),
        per_ip: args.max_connections_per_ip.max(1),
        idle_timeout: args.idle_timeout,
    };
    config.limits = tollgate_controller::limits::LimitsConfig {
        streams_per_identity: args.max_streams_per_identity,
        rate: tollgate_domain::rate::Rate {
            per_second: args.rate_limit,
            burst: args.rate_burst.max(1),
        },
    };
    let mut api_tokens = args.api_tokens.clone();
    if let Some(path) = &args.api_tokens_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --api-token-file {}", path.display()))?;
        let pairs = tollgate_controller::tokens::ApiTokens::parse_file(&text)
            .map_err(|err| anyhow::anyhow!("--api-token-file {}: {err}", path.display()))?;
        api_tokens.extend(pairs);
    }
    config.api_tokens = tollgate_controller::tokens::ApiTokens::new(&api_tokens)
        .map_err(|err| anyhow::anyhow!("API tokens: {err}"))?;
    if !(config.database_url.starts_with("sqlite:")
        || config.database_url.starts_with("postgres://")
        || config.database_url.starts_with("postgresql://"))
    {
        bail!(
            "unsupported --database '{}': use sqlite://PATH or postgres://USER@HOST/DB",
            redact_database_url(&config.database_url)
        );
    }

    let listen: std::net::SocketAddr = tokio::net::lookup_host(&args.listen)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .with_context(|| {
            format!(
                "--listen {} is not an address to listen on; use HOST:PORT, for example \
                 127.0.0.1:7800",
                args.listen
            )
        })?;
    (config.transport, config.ca) = transport(&args.tls, listen)?;
    config.node_certificate_lifetime = args.tls.node_certificate_lifetime;
    config.fleet_history = args.telemetry_history.clone();
    tollgate_controller::listener::check(&config.transport, listen)?;
    if let Some(http_listen) = &args.http_listen {
        let addr: std::net::SocketAddr = tokio::net::lookup_host(http_listen)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .with_context(|| {
                format!(
                    "--http-listen {http_listen} is not an address to listen on; use HOST:PORT, \
                     for example 127.0.0.1:7880"
                )
            })?;
        tollgate_controller::listener::check(&config.transport, addr)
            .context("--http-listen serves the dashboard with the same transport as --listen")?;
        config.http_listen = Some(addr);
    }
    if let Some(url) = &args.dashboard_url {
        let url = url.trim().trim_end_matches('/');
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.contains(char::is_whitespace)
        {
            anyhow::bail!(
                "--dashboard-url {url} is not an http(s) URL; give the dashboard's base URL, for \
                 example https://tollgate.lab:7880"
            );
        }
        config.dashboard_url = Some(url.to_owned());
    }
    if let Some(url) = &args.issue_webhook {
        let url = tollgate_controller::issue_webhook::WebhookUrl::parse(url)
            .map_err(|error| anyhow::anyhow!("--issue-webhook {error}"))?;
        config.issue_webhook = Some(url);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "listening on {}; is another controller running there? pick another with --listen",
                args.listen
            )
        })?;
    // The address file is written only once the store is open and the services answer, so a
    // reader never finds an address of a controller that is about to fail.
    let mut addr_file_error = None;
    let on_serving = |serving: tollgate_controller::Serving| {
        let files = [
            (args.addr_file.as_ref(), Some(serving.addr)),
            (args.http_addr_file.as_ref(), serving.http_addr),
        ];
        for (path, addr) in files {
            if let (Some(path), Some(addr)) = (path, addr)
                && let Err(error) = write_addr_file(path, &addr.to_string())
            {
                tracing::error!("{error:#}");
                addr_file_error = Some(error);
            }
        }
    };
    let served =
        tollgate_controller::run_with(config, listener, shutdown_signal(), on_serving).await;
    match addr_file_error {
        Some(error) => Err(error),
        None => served,
    }
}

/// Warns when the `secret` in `key` comes from a configuration file other users of this host
/// may read.
fn warn_if_shared(key: &str, origin: &Origin, secret: &str, instead: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Origin::File { path, line } = origin
        && std::fs::metadata(path).is_ok_and(|metadata| metadata.permissions().mode() & 0o077 != 0)
    {
        tracing::warn!(
            "{} line {line}: `{key}` holds {secret}, and other users of this host may read that \
             file; make it readable by this user only (chmod 0600), or {instead}",
            path.display()
        );
    }
}

/// Writes the address to a temporary file and renames it, so a reader never sees half of it.
fn write_addr_file(path: &Path, addr: &str) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, addr)
        .with_context(|| format!("writing the address file {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("writing the address file {}", path.display()))?;
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers now and completes on the first of them. Installed
/// before the controller opens its store, so a supervisor's SIGTERM sent as soon as the address
/// file appears stops it gracefully instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::error!(%error, "cannot listen for {name}");
            None
        }
    };
    let interrupt = listen(SignalKind::interrupt(), "SIGINT");
    let terminate = listen(SignalKind::terminate(), "SIGTERM");
    let received = |stream: Option<tokio::signal::unix::Signal>| async move {
        match stream {
            Some(mut stream) => {
                stream.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    async move {
        tokio::select! {
            () = received(interrupt) => tracing::info!("SIGINT received"),
            () = received(terminate) => tracing::info!("SIGTERM received"),
        }
    }
}
