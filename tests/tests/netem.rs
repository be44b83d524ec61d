//! Network faults between agents and the controller: the agents run in a network namespace of
//! their own, joined to the controller's by a veth pair whose two ends delay, reorder and drop
//! packets (`tc qdisc ... netem`, both directions). Results flow through 5 % loss, then 30 %,
//! then a blackout (100 %), then 5 % again; every result is stored exactly once (none lost,
//! none duplicated by the resends the faults cause), every job passes, the run finishes, the
//! spools end empty and no step process is left. On SQLite and on PostgreSQL (the latter when
//! `TOLLGATE_TEST_DATABASE_URL` is set; otherwise it says it was skipped).
//!
//! Kernels built without `sch_netem` get a fallback made of what they do have, so the test
//! still runs through real faults rather than skipping:
//! - a `tbf` throttle on both ends in place of the delay: a low rate and a small bucket, so
//!   packets queue behind it, and any that would wait longer than its latency are dropped;
//!   there is no jitter, so nothing is reordered;
//! - loss, where the kernel has `htb` and the `u32` classifier: an `htb` root whose `u32`
//!   filters send to a `blackhole` class the packets whose IP identification falls in the
//!   phase's residues mod 16 (1 of 16 for 5 %, 5 of 16 for 30 %). Linux numbers a TCP
//!   connection's packets one after another, so this drops a fixed share of each connection's
//!   packets, spread out, and a resent packet has a new number; without `htb` or `u32` the
//!   lossy phases are the throttle alone;
//! - the blackout: a `blackhole` root qdisc on both ends, then the throttle again.
//!
//! The test prints which set it used (netem, or the fallback and which of its parts), and
//! after each phase what the qdiscs sent and dropped.
//!
//! Off the loopback address the controller serves TLS only: it runs with a throwaway lab CA,
//! the agents enroll with bootstrap tokens, and the test calls it with an API token.
//!
//! Needs root (network namespaces, veth, `tc`) and either `sch_netem` or, for the fallback,
//! `tbf` and `blackhole`. Without them the test says why it was skipped and passes, unless
//! `TOLLGATE_REQUIRE_NETEM=1` makes that a failure (the fallback is no skip: that variable asks
//! for network faults of either set, not for netem itself). The namespace and the veth pair
//! are deleted at the end, also when the test fails. Runs the `tollgate-controller` and
//! `tollgate-agent` binaries (`cargo build --workspace --bins` first).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::process::{Child, Command};
use tollgate_controller::store::testing;
use tollgate_proto::v1;
use tollgate_tests::process::{live_processes_with, workspace_binary};
use tollgate_tests::{
    Backend, assert_every_result_once, assert_spool_empty, fresh_database_url, measuring_plan,
    spooled_results, wait_for,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

tollgate_tests::on_both_backends!(results_cross_a_delayed_lossy_network_exactly_once);

/// Agents, each in the namespace.
const N_AGENTS: usize = 3;
/// Steps per job; each takes about [`STEP_SECONDS`], so results flow through every fault.
const STEPS: u32 = 24;
const STEP_SECONDS: f64 = 0.3;
/// How long the test waits for any one state; the faults slow everything down.
const PATIENCE: Duration = Duration::from_secs(90);
/// The packet loss in each phase of the run, with how long it lasts (the last lasts until
/// the run ends). The blackout outlasts the agents' HTTP/2 keepalive (`--keepalive 10s`: a
/// ping after 10 s without a byte from the controller, answered within 5 s), so their connections break and they reconnect and send again what
/// was not acknowledged.
const PHASES: [(u32, Duration); 3] = [
    (30, Duration::from_secs(3)),
    (100, Duration::from_secs(17)),
    (5, Duration::ZERO),
];

/// Which namespace of this process a test gets (both backends may run at once).
static NEXT_NETNS: AtomicU32 = AtomicU32::new(0);

/// Runs a command to completion; `Err` says what failed and what it printed.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let shown = format!("{program} {}", args.join(" "));
    let output = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("`{shown}` could not run: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{shown}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A network namespace with one end of a veth pair, the other end here, and the faults on both
/// ends. Deleted on drop (the namespace, and the pair with its host end), whatever happened.
struct NetNs {
    name: String,
    host_if: String,
    ns_if: String,
    /// The host end's address: the controller listens on it.
    host_addr: Ipv4Addr,
    /// What [`NetNs::set_loss`] puts on the ends; chosen once, by [`NetNs::create`].
    faults: Faults,
}

/// The set of faults this kernel can make.
#[derive(Debug)]
enum Faults {
    /// `netem` on both ends: delay with jitter, which reorders packets, and random loss.
    Netem,
    /// No `sch_netem` (`netem_error` says how `tc` refused it): `tbf`, `blackhole`, and `loss`.
    Fallback { netem_error: String, loss: Loss },
}

/// How the fallback drops a share of the packets.
#[derive(Debug)]
enum Loss {
    /// An `htb` root whose `u32` filters send packets by IP identification to a `blackhole`
    /// class, the rest to the throttle.
    ByIpId,
    /// The kernel refused that (the reason); the lossy phases are the throttle alone.
    Unavailable(String),
}

/// One end of the veth pair.
#[derive(Clone, Copy, Debug)]
enum End {
    /// In the namespace: what it sends goes from the agents to the controller.
    Agent,
    /// Here: what it sends goes from the controller to the agents.
    Controller,
}

impl End {
    /// netem's delay with its jitter, which reorders packets.
    fn delay(self) -> &'static str {
        match self {
            End::Agent => "delay 80ms 40ms",
            End::Controller => "delay 20ms 10ms",
        }
    }

    /// The fallback's stand-in for the delay: `tbf` at a low rate (a full-sized packet takes
    /// 47 ms at 256 kbit/s, 12 ms at 1 Mbit/s) with a bucket of two full-sized packets, so
    /// packets queue, and what would wait longer than the latency is dropped.
    fn throttle(self) -> &'static str {
        match self {
            End::Agent => "rate 256kbit burst 3028 latency 400ms",
            End::Controller => "rate 1mbit burst 3028 latency 200ms",
        }
    }
}

/// The residues of the IP identification, mod 16, whose packets the fallback drops: the
/// first `n` for a loss of `n` in 16. In bit-reversed order, so that any first few are
/// spread over the 16. Never 0: packets sent outside a connection (a listener's SYN-ACK, a
/// reset) carry identification 0, and dropping every SYN-ACK would refuse every reconnection.
const LOSS_RESIDUES: [u16; 15] = [1, 9, 5, 13, 3, 11, 7, 15, 2, 10, 6, 14, 4, 12, 8];

/// The residues for `loss_percent` % loss (below 100): the nearest number of sixteenths, at
/// least one when there is any loss.
fn loss_residues(loss_percent: u32) -> &'static [u16] {
    let n = match (loss_percent * 16 + 50) / 100 {
        0 if loss_percent > 0 => 1,
        n => usize::try_from(n)
            .expect("at most 16")
            .min(LOSS_RESIDUES.len()),
    };
    &LOSS_RESIDUES[..n]
}

impl NetNs {
    /// Makes the namespace and the pair, addresses them (a /30 of 10.213.0.0/16 no local
    /// interface uses), chooses the faults (netem, or else the fallback) and puts
    /// [`PHASES`]' last loss on both ends. `Err` says what the host does not allow.
    fn create() -> Result<Self, String> {
        let pid = std::process::id();
        let n = NEXT_NETNS.fetch_add(1, Ordering::SeqCst);
        let used = std::process::Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        let third = (0..256u32)
            .map(|i| (pid.wrapping_mul(7) + n * 61 + i) % 256)
            .find(|x| !used.contains(&format!("10.213.{x}.")))
            .ok_or("every 10.213.X.0/30 is in use here")?;
        let third = u8::try_from(third).expect("below 256");
        // Interface names have at most 15 bytes.
        let mut netns = NetNs {
            name: format!("tollgate-netem-{pid}-{n}"),
            host_if: format!("tg{}h{n}", pid % 100_000),
            ns_if: format!("tg{}n{n}", pid % 100_000),
            host_addr: Ipv4Addr::new(10, 213, third, 1),
            faults: Faults::Netem,
        };
        run("ip", &["netns", "add", &netns.name])?;
        // From here on, dropping `netns` cleans up whatever was made.
        let host_cidr = format!("{}/30", netns.host_addr);
        let ns_cidr = format!("{}/30", netns.ns_addr());
        run(
            "ip",
            &[
                "link",
                "add",
                &netns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &netns.ns_if,
            ],
        )?;
        run("ip", &["link", "set", &netns.ns_if, "netns", &netns.name])?;
        run("ip", &["addr", "add", &host_cidr, "dev", &netns.host_if])?;
        run("ip", &["link", "set", &netns.host_if, "up"])?;
        netns.exec(&["ip", "addr", "add", &ns_cidr, "dev", &netns.ns_if])?;
        netns.exec(&["ip", "link", "set", &netns.ns_if, "up"])?;
        netns.exec(&["ip", "link", "set", "lo", "up"])?;
        netns.choose_faults()?;
        Ok(netns)
    }

    /// Tries netem, then the fallback with loss, then the fallback without, and leaves the
    /// first that works on both ends with [`PHASES`]' last loss. Every set must also make the
    /// blackout, so that is tried before. `Err` when neither netem nor `tbf` with
    /// `blackhole` can be made.
    fn choose_faults(&mut self) -> Result<(), String> {
        let last = PHASES[PHASES.len() - 1].0;
        self.faults = Faults::Netem;
        let Err(netem_error) = self.set_loss(100).and_then(|()| self.set_loss(last)) else {
            return Ok(());
        };
        self.faults = Faults::Fallback {
            netem_error: netem_error.clone(),
            loss: Loss::ByIpId,
        };
        let Err(loss_error) = self.set_loss(100).and_then(|()| self.set_loss(last)) else {
            return Ok(());
        };
        self.faults = Faults::Fallback {
            netem_error: netem_error.clone(),
            loss: Loss::Unavailable(loss_error),
        };
        self.set_loss(100)
            .and_then(|()| self.set_loss(last))
            .map_err(|error| {
                format!("no netem ({netem_error}), and no tbf or blackhole instead ({error})")
            })
    }

    /// What the faults are, for the test's output.
    fn describe_faults(&self) -> String {
        let ends = |what: fn(End) -> &'static str| {
            format!(
                "agent end `{}`, controller end `{}`",
                what(End::Agent),
                what(End::Controller)
            )
        };
        match &self.faults {
            Faults::Netem => format!(
                "network faults: netem on both ends (delay with jitter: {}; random loss by \
                 phase)",
                ends(End::delay)
            ),
            Faults::Fallback { netem_error, loss } => {
                let loss = match loss {
                    Loss::ByIpId => "loss: an htb root whose u32 filters send the packets \
                                     with chosen IP identifications mod 16 to a blackhole class"
                        .to_owned(),
                    Loss::Unavailable(error) => {
                        format!("loss: NONE, the lossy phases are the throttle alone ({error})")
                    }
                };
                format!(
                    "network faults: FALLBACK, netem is unavailable ({netem_error}); delay: a \
                     tbf throttle instead, no jitter, no reordering ({}); {loss}; blackout: a \
                     blackhole root qdisc",
                    ends(End::throttle)
                )
            }
        }
    }

    /// What a phase with `loss_percent` % loss does with these faults, for the output.
    fn describe_loss(&self, loss_percent: u32) -> String {
        match &self.faults {
            Faults::Netem => format!("{loss_percent} % random loss"),
            Faults::Fallback { .. } if loss_percent >= 100 => "blackout (blackhole)".to_owned(),
            Faults::Fallback {
                loss: Loss::ByIpId, ..
            } => {
                let residues = loss_residues(loss_percent);
                format!(
                    "{} % loss (throttle, and IP identification mod 16 in {residues:?}; \
                     netem would drop {loss_percent} %)",
                    residues.len() * 100 / 16
                )
            }
            Faults::Fallback {
                loss: Loss::Unavailable(_),
                ..
            } => format!("throttle only (netem would drop {loss_percent} %)"),
        }
    }

    /// The namespace end's address: the agents' source address.
    fn ns_addr(&self) -> Ipv4Addr {
        let [a, b, c, d] = self.host_addr.octets();
        Ipv4Addr::new(a, b, c, d + 1)
    }

    /// Runs `command` inside the namespace.
    fn exec(&self, command: &[&str]) -> Result<(), String> {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(command);
        run("ip", &args)
    }

    /// Runs `tc` with `args` where `end` is, with `{dev}` standing for its interface.
    fn tc(&self, end: End, args: &str) -> Result<(), String> {
        let dev = match end {
            End::Agent => &self.ns_if,
            End::Controller => &self.host_if,
        };
        let args: Vec<&str> = args
            .split_whitespace()
            .map(|arg| if arg == "{dev}" { dev.as_str() } else { arg })
            .collect();
        match end {
            End::Agent => {
                let mut command = vec!["tc"];
                command.extend(args);
                self.exec(&command)
            }
            End::Controller => run("tc", &args),
        }
    }

    /// Puts `loss_percent` % loss (100: a blackout) on both ends, with the chosen faults.
    fn set_loss(&self, loss_percent: u32) -> Result<(), String> {
        for end in [End::Agent, End::Controller] {
            match &self.faults {
                Faults::Netem => self.tc(
                    end,
                    &format!(
                        "qdisc replace dev {{dev}} root netem {} loss {loss_percent}%",
                        end.delay()
                    ),
                )?,
                Faults::Fallback { .. } if loss_percent >= 100 => {
                    self.tc(end, "qdisc replace dev {dev} root blackhole")?;
                }
                Faults::Fallback {
                    loss: Loss::ByIpId, ..
                } => {
                    // Built anew each time: the root may be the blackout's. Deleting fails
                    // where there is no root qdisc yet, which is fine.
                    let _ = self.tc(end, "qdisc del dev {dev} root");
                    self.tc(end, "qdisc add dev {dev} root handle 1: htb default 1")?;
                    // The two classes do not limit (the throttle is the leaf below); an
                    // explicit quantum keeps htb from warning about its default one.
                    for class in ["1:1", "1:2"] {
                        self.tc(
                            end,
                            &format!(
                                "class add dev {{dev}} parent 1: classid {class} htb rate \
                                 10gbit quantum 60000"
                            ),
                        )?;
                    }
                    self.tc(
                        end,
                        &format!(
                            "qdisc add dev {{dev}} parent 1:1 handle 10: tbf {}",
                            end.throttle()
                        ),
                    )?;
                    self.tc(end, "qdisc add dev {dev} parent 1:2 handle 20: blackhole")?;
                    // The IP identification is the 16 bits at offset 4 of the IP header.
                    for residue in loss_residues(loss_percent) {
                        self.tc(
                            end,
                            &format!(
                                "filter add dev {{dev}} parent 1: protocol ip prio 1 u32 \
                                 match u16 {residue} 0x000f at 4 flowid 1:2"
                            ),
                        )?;
                    }
                }
                Faults::Fallback {
                    loss: Loss::Unavailable(_),
                    ..
                } => self.tc(
                    end,
                    &format!("qdisc replace dev {{dev}} root tbf {}", end.throttle()),
                )?,
            }
        }
        Ok(())
    }

    /// What each end's qdiscs sent and dropped, for the output: `tc -s qdisc show` in one line.
    /// A qdisc counts from when it was made; one changed in place (netem's, a lone `tbf`)
    /// keeps counting, the fallback's `htb` tree and the blackout are made anew each phase.
    fn qdisc_stats(&self) -> String {
        [(End::Agent, &self.ns_if), (End::Controller, &self.host_if)]
            .into_iter()
            .map(|(end, dev)| {
                let mut command = match end {
                    End::Agent => {
                        let mut command = std::process::Command::new("ip");
                        command.args(["netns", "exec", &self.name, "tc"]);
                        command
                    }
                    End::Controller => std::process::Command::new("tc"),
                };
                let shown = match command.args(["-s", "qdisc", "show", "dev", dev]).output() {
                    Ok(output) => summarize_qdisc_stats(&String::from_utf8_lossy(&output.stdout)),
                    Err(error) => format!("`tc -s qdisc show` could not run: {error}"),
                };
                format!("{end:?} end {dev}: {shown}")
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// `tc -s qdisc show`'s output in one line: each qdisc's kind, with what it sent and dropped.
fn summarize_qdisc_stats(shown: &str) -> String {
    let mut qdiscs = Vec::new();
    let mut lines = shown.lines();
    while let Some(line) = lines.next() {
        let Some(kind) = line.strip_prefix("qdisc ") else {
            continue;
        };
        let kind = kind.split_whitespace().next().unwrap_or_default();
        // The next line reads ` Sent 232582 bytes 336 pkt (dropped 17, overlimits 103 ...`.
        let counts = lines.next().unwrap_or_default().trim();
        let counts = counts
            .split_once(" bytes ")
            .map_or(counts, |(_, after)| after)
            .split(" requeues")
            .next()
            .unwrap_or_default();
        qdiscs.push(format!("{kind} sent {counts})"));
    }
    qdiscs.join(", ")
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting one end deletes the pair; the end in the namespace goes with it too.
        let _ = run("ip", &["link", "del", &self.host_if]);
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Adds the API token to every manager call.
#[derive(Clone)]
struct Bearer(String);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let value = format!("Bearer {}", self.0)
            .parse()
            .expect("a token is header text");
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// The manager clients the test calls the controller with, as an admin.
#[derive(Clone)]
struct Manager {
    nodes: v1::node_service_client::NodeServiceClient<Authed>,
    releases: v1::release_service_client::ReleaseServiceClient<Authed>,
    plans: v1::plan_service_client::PlanServiceClient<Authed>,
    runs: v1::run_service_client::RunServiceClient<Authed>,
}

impl Manager {
    /// Connects over TLS, trusting `ca_file`, with the API token `secret`.
    async fn connect(url: &str, ca_file: &Path, secret: &str) -> Self {
        let ca = std::fs::read(ca_file).expect("the lab CA");
        let channel = Endpoint::from_shared(url.to_owned())
            .expect("url")
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .expect("TLS settings")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("connect to the controller");
        let bearer = Bearer(secret.to_owned());
        Self {
            nodes: v1::node_service_client::NodeServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            releases: v1::release_service_client::ReleaseServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            plans: v1::plan_service_client::PlanServiceClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            ),
            runs: v1::run_service_client::RunServiceClient::with_interceptor(channel, bearer),
        }
    }

    /// A bootstrap token enrolling `node` with label `sku=hgx-h100`.
    async fn enroll(&mut self, node: &str) -> String {
        self.nodes
            .enroll_node(v1::EnrollNodeRequest {
                node_name: node.to_owned(),
                labels: [("sku".to_owned(), "hgx-h100".to_owned())].into(),
                ttl_seconds: 3600,
            })
            .await
            .expect("a bootstrap token")
            .into_inner()
            .bootstrap_token
    }

    /// Waits until `n` nodes are ready.
    async fn wait_ready_nodes(&self, n: usize) {
        wait_for(PATIENCE, "the agents' nodes to be ready", || {
            let mut nodes = self.nodes.clone();
            async move {
                let listed = nodes
                    .list_nodes(v1::ListNodesRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .nodes;
                (listed.iter().filter(|node| node.state == "ready").count() >= n).then_some(())
            }
        })
        .await;
    }

    /// Creates release `r550`, applies `plan` and starts a run of it on the ready nodes.
    async fn start_run(&mut self, plan: &str) -> v1::Run {
        let component = |name: &str, version: &str| v1::Component {
            name: name.into(),
            version: version.into(),
            ..Default::default()
        };
        self.releases
            .create_release(v1::CreateReleaseRequest {
                name: "r550".into(),
                components: vec![
                    component("driver", "550.54.15"),
                    component("vbios", "96.00.89.00.01"),
                ],
                description: String::new(),
            })
            .await
            .expect("create release");
        let plan = self
            .plans
            .apply_plan(v1::ApplyPlanRequest {
                source: plan.into(),
                file_name: "plan.yaml".into(),
            })
            .await
            .expect("apply plan")
            .into_inner();
        self.runs
            .start_run(v1::StartRunRequest {
                release: "r550".into(),
                plan: plan.name,
                milestone: String::new(),
                nodes_now: false,
            })
            .await
            .expect("start run")
            .into_inner()
    }

    /// The run as it is now.
    async fn run(&mut self, run_id: &str) -> v1::Run {
        self.runs
            .get_run(v1::GetRunRequest {
                id: run_id.into(),
                ..Default::default()
            })
            .await
            .expect("get run")
            .into_inner()
    }

    /// Waits until the run satisfies `done`, and returns it then.
    async fn wait_run(&self, run_id: &str, what: &str, done: impl Fn(&v1::Run) -> bool) -> v1::Run {
        let done = &done;
        wait_for(PATIENCE, what, || {
            let mut runs = self.runs.clone();
            let id = run_id.to_owned();
            async move {
                let run = runs
                    .get_run(v1::GetRunRequest {
                        id,
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner();
                done(&run).then_some(run)
            }
        })
        .await
    }
}

/// The controller process, serving TLS on the host end of the pair.
struct ControllerProcess {
    child: Child,
    url: String,
}

impl ControllerProcess {
    async fn start(dir: &Path, listen: Ipv4Addr, database_url: &str, tokens: &Path) -> Self {
        let addr_file = dir.join("controller.addr");
        let log = std::fs::File::create(dir.join("controller.log")).expect("log file");
        let child = Command::new(workspace_binary("tollgate-controller"))
            .args(["serve", "--config", "/dev/null", "--listen"])
            .arg(format!("{listen}:0"))
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--ca-dir")
            .arg(dir.join("pki"))
            .arg("--data-dir")
            .arg(dir.join("controller"))
            .args(["--database", database_url])
            .arg("--api-token-file")
            .arg(tokens)
            // The blackout and the reconnections after it stay well within the grace: no
            // lease expires, no job is lost.
            .args(["--heartbeat-interval", "500ms", "--lease-grace", "60s"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start tollgate-controller");
        let addr = wait_for(PATIENCE, "the controller's address file", || {
            let addr_file = addr_file.clone();
            async move {
                let text = std::fs::read_to_string(&addr_file).ok()?;
                let text = text.trim().to_owned();
                text.parse::<std::net::SocketAddr>().is_ok().then_some(text)
            }
        })
        .await;
        Self {
            child,
            url: format!("https://{addr}"),
        }
    }

    /// SIGTERM, and waits for it to exit.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pids fit i32"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

/// The last lines of every log in `dir`, for a failing assertion's message.
fn logs(dir: &Path) -> String {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    paths.sort();
    let mut out = String::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.contains("heartbeat") && !line.contains("telemetry"))
            .collect();
        out.push_str(&format!(
            "\n--- {}\n{}",
            path.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        ));
    }
    out
}

/// How often the agents' logs say `needle`, for the summary of what the faults did.
fn count_in_agent_logs(dir: &Path, needle: &str) -> usize {
    (1..=N_AGENTS)
        .map(|i| {
            std::fs::read_to_string(dir.join(format!("lab-{i}.log")))
                .unwrap_or_default()
                .matches(needle)
                .count()
        })
        .sum()
}

async fn results_cross_a_delayed_lossy_network_exactly_once(backend: Backend) {
    let netns = match NetNs::create() {
        Ok(netns) => netns,
        Err(reason) => {
            assert!(
                std::env::var("TOLLGATE_REQUIRE_NETEM").as_deref() != Ok("1"),
                "TOLLGATE_REQUIRE_NETEM=1, but the network faults cannot be made here: {reason}"
            );
            println!(
                "skipped: the network faults cannot be made here: {reason}; run as root on a \
                 kernel with sch_netem (modprobe sch_netem), or with tbf and blackhole"
            );
            return;
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(database_url) = fresh_database_url(backend, dir.path()).await else {
        return;
    };
    let made = std::process::Command::new(workspace_binary("tollgate-controller"))
        .args(["ca", "init", "--dir"])
        .arg(dir.path().join("pki"))
        .output()
        .expect("run tollgate-controller ca init");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let ca_file = dir.path().join("pki").join("ca.pem");
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let tokens = dir.path().join("api-tokens");
    std::fs::write(&tokens, format!("netem-test {secret}\n")).expect("write the API tokens");
    let controller =
        ControllerProcess::start(dir.path(), netns.host_addr, &database_url, &tokens).await;
    println!("{}", netns.describe_faults());
    println!(
        "controller at {} (host end {}); agents in namespace {} behind {}; {}",
        controller.url,
        netns.host_if,
        netns.name,
        netns.ns_if,
        netns.describe_loss(PHASES[PHASES.len() - 1].0)
    );
    let mut manager = Manager::connect(&controller.url, &ca_file, &secret).await;

    let marker = format!("tollgate-netem-{}", uuid::Uuid::new_v4().simple());
    let mut agents = Vec::new();
    for i in 1..=N_AGENTS {
        let node = format!("lab-{i}");
        let token_file = dir.path().join(format!("{node}.token"));
        std::fs::write(&token_file, manager.enroll(&node).await).expect("write the token");
        let state_dir = dir.path().join(format!("agent-{node}"));
        let log = std::fs::File::create(dir.path().join(format!("{node}.log"))).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &netns.name])
            .arg(workspace_binary("tollgate-agent"))
            .args(["--config", "/dev/null", "--controller", &controller.url])
            .arg("--ca-file")
            .arg(&ca_file)
            .arg("--bootstrap-token-file")
            .arg(&token_file)
            .args([
                "--node",
                &node,
                "--gpus",
                "sim:1",
                "--label",
                "sku=hgx-h100",
            ])
            .args(["--sample-interval", "100ms", "--fleet-interval", "0s"])
            .args(["--keepalive", "10s"])
            .arg("--state-dir")
            .arg(&state_dir)
            .env("RUST_LOG", "info,tollgate_agent::client=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start tollgate-agent in the namespace");
        agents.push((node, state_dir, child));
    }
    manager.wait_ready_nodes(N_AGENTS).await;
    let run = manager
        .start_run(&measuring_plan(STEPS, STEP_SECONDS, Some(&marker)))
        .await;
    assert_eq!(run.jobs.len(), N_AGENTS, "{run:#?}");
    manager
        .wait_run(&run.id, "every job's first result", |run| {
            run.jobs.iter().all(|job| !job.results.is_empty())
        })
        .await;
    for (loss, duration) in PHASES {
        netns
            .set_loss(loss)
            .unwrap_or_else(|error| panic!("the faults worked at the start: {error}"));
        let stored: usize = manager
            .run(&run.id)
            .await
            .jobs
            .iter()
            .map(|job| job.results.len())
            .sum();
        println!(
            "{} for {duration:?}, {stored} results stored so far",
            netns.describe_loss(loss)
        );
        tokio::time::sleep(duration).await;
        if !duration.is_zero() {
            println!(
                "  qdisc counters, since the qdiscs were made: {}",
                netns.qdisc_stats()
            );
        }
    }

    let run = manager
        .wait_run(&run.id, "the run to end", |run| run.state != "running")
        .await;
    assert!(
        run.state == "finished" && run.jobs.iter().all(|job| job.state == "passed"),
        "{run:#?}{}",
        logs(dir.path())
    );
    assert_every_result_once(&run, STEPS);
    for (node, state_dir, _) in &agents {
        let spool = state_dir.join("spool");
        wait_for(PATIENCE, "the spools to empty", || {
            let spool = spool.clone();
            async move { (spooled_results(&spool) == 0).then_some(()) }
        })
        .await;
        assert_spool_empty(state_dir, node);
    }
    println!(
        "the agents opened their streams {} times and had {} results acknowledged as \
         duplicates of stored ones",
        count_in_agent_logs(dir.path(), "stream to the controller open"),
        count_in_agent_logs(dir.path(), "duplicate=true")
    );
    println!(
        "qdisc counters, since the qdiscs were made: {}",
        netns.qdisc_stats()
    );
    for (_, _, mut child) in agents {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    assert_eq!(
        live_processes_with(&marker),
        Vec::new(),
        "no step process left"
    );
    controller.stop().await;
    if backend == Backend::Postgres {
        testing::drop_postgres_schema(&database_url)
            .await
            .expect("drop test schema");
    }
    drop(netns);
}
