//! Harness for the end-to-end tests: a real controller served on `127.0.0.1:0`, agents with
//! simulated GPUs running real step processes, and gRPC clients over real sockets.

pub mod bench;
pub mod big_run;
pub mod http;
pub mod noop;
pub mod process;
pub mod rollout;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate_controller::ControllerConfig;
use tollgate_controller::store::testing;
use tollgate_proto::v1;
use tonic::transport::{Channel, Endpoint};

/// Which store a test's controller runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file in the controller's data directory.
    Sqlite,
    /// A fresh schema in the database `TOLLGATE_TEST_DATABASE_URL` names.
    Postgres,
}

/// A fresh, empty store of `backend`: an SQLite file in `dir`, or a new schema in the
/// database `TOLLGATE_TEST_DATABASE_URL` names. `None` for PostgreSQL when none is configured
/// (the test says it was skipped; with `TOLLGATE_REQUIRE_POSTGRES=1` it fails instead).
pub async fn fresh_database_url(backend: Backend, dir: &std::path::Path) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(format!("sqlite://{}", dir.join("tollgate.db").display())),
        Backend::Postgres => {
            let base = testing::postgres_url_or_skip()?;
            Some(
                testing::fresh_postgres_url(&base)
                    .await
                    .expect("fresh postgres schema"),
            )
        }
    }
}

/// How to start a controller.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// The store.
    pub backend: Backend,
    /// Heartbeat interval handed to agents.
    pub heartbeat_interval: Duration,
    /// Lease grace.
    pub lease_grace: Duration,
    /// Scheduler and watchdog tick.
    pub tick: Duration,
    /// The controller's clock; the system clock when `None` (a test that moves time passes
    /// a `ManualClock`).
    pub clock: Option<tollgate_controller::clock::SharedClock>,
    /// Manager API tokens as (name, secret); none for anonymous manager calls.
    pub api_tokens: Vec<(String, String)>,
    /// Per-identity stream and rate limits (the controller's defaults unless a test sets them).
    pub limits: tollgate_controller::limits::LimitsConfig,
    /// Connection caps and idle timeout (the controller's defaults unless a test sets them).
    pub connections: tollgate_controller::listener::ConnectionLimits,
    /// Serve TLS with a server certificate from a throwaway lab CA (in the test's temp
    /// directory, beside the data directory) instead of plain text on loopback.
    pub tls: bool,
    /// How long node certificates are valid (the controller's default when `None`).
    pub node_certificate_lifetime: Option<Duration>,
    /// Replicas wake each other through `LISTEN`/`NOTIFY` (the controller's default: off).
    pub wake_replicas: bool,
    /// The fleet telemetry history's tiers and how often closed buckets are written (the
    /// controller's defaults when `None`).
    pub fleet_history: Option<(tollgate_domain::fleet_history::History, Duration)>,
    /// Serve the web dashboard on a loopback port of its own ([`Controller::http_addr`]).
    pub http: bool,
    /// Post issue changes to this `http://` URL (`--issue-webhook`); none when `None`.
    pub issue_webhook: Option<String>,
}

impl ControllerOptions {
    /// Fast settings for tests on `backend`.
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            heartbeat_interval: Duration::from_millis(200),
            lease_grace: Duration::from_secs(3),
            tick: Duration::from_millis(100),
            clock: None,
            api_tokens: Vec::new(),
            limits: tollgate_controller::limits::LimitsConfig::default(),
            connections: tollgate_controller::listener::ConnectionLimits::default(),
            tls: false,
            node_certificate_lifetime: None,
            wake_replicas: false,
            fleet_history: None,
            http: false,
            issue_webhook: None,
        }
    }
}

/// A controller running in this process. Dropping it without [`Controller::stop`] aborts it.
pub struct Controller {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// `http://ADDR`, or `https://ADDR` with [`ControllerOptions::tls`].
    pub url: String,
    /// The lab CA's certificate clients trust, with [`ControllerOptions::tls`].
    pub ca_file: Option<PathBuf>,
    /// The database URL it uses (reused by [`Controller::restart`]).
    pub database_url: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The dashboard's address, with [`ControllerOptions::http`].
    pub http_addr: Option<SocketAddr>,
    options: ControllerOptions,
    /// The running controller's state, once it serves.
    shared: std::sync::Arc<
        std::sync::Mutex<Option<std::sync::Arc<tollgate_controller::shared::Shared>>>,
    >,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _tempdir: Option<std::sync::Arc<tempfile::TempDir>>,
}

impl Controller {
    /// Starts a controller on a fresh store of the chosen backend. Returns `None` for
    /// PostgreSQL when no database is configured (the test then says it was skipped).
    pub async fn start(options: ControllerOptions) -> Option<Self> {
        let tempdir = std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
        let data_dir = tempdir.path().join("controller");
        let database_url = fresh_database_url(options.backend, &data_dir).await?;
        Some(Self::start_on(options, database_url, data_dir, Some(tempdir), None).await)
    }

    async fn start_on(
        options: ControllerOptions,
        database_url: String,
        data_dir: PathBuf,
        tempdir: Option<std::sync::Arc<tempfile::TempDir>>,
        addr: Option<SocketAddr>,
    ) -> Self {
        let mut config = ControllerConfig::new(data_dir.clone());
        config.database_url = database_url.clone();
        config.heartbeat_interval = options.heartbeat_interval;
        config.lease_grace = options.lease_grace;
        config.tick = options.tick;
        if let Some(clock) = &options.clock {
            config.clock = clock.clone();
        }
        config.api_tokens =
            tollgate_controller::tokens::ApiTokens::new(&options.api_tokens).expect("tokens");
        config.limits = options.limits;
        config.connections = options.connections;
        config.wake_replicas = options.wake_replicas;
        if let Some((history, flush_every)) = &options.fleet_history {
            config.fleet_history = history.clone();
            config.fleet_flush_every = *flush_every;
        }
        if let Some(lifetime) = options.node_certificate_lifetime {
            config.node_certificate_lifetime = lifetime;
        }
        let ca_file = options.tls.then(|| {
            let pki = data_dir.with_file_name("pki");
            let (transport, ca, ca_file) = tls_transport(&pki);
            config.transport = transport;
            config.ca = Some(ca);
            ca_file
        });
        if options.http {
            config.http_listen = Some("127.0.0.1:0".parse().expect("literal address"));
        }
        config.issue_webhook = options.issue_webhook.as_deref().map(|url| {
            tollgate_controller::issue_webhook::WebhookUrl::parse(url).expect("webhook URL")
        });
        let bind = addr.unwrap_or_else(|| "127.0.0.1:0".parse().expect("literal address"));
        let listener = bind_retrying(bind).await;
        let addr = listener.local_addr().expect("bound address");
        let (tx, rx) = oneshot::channel::<()>();
        let shared = std::sync::Arc::new(std::sync::Mutex::new(None));
        let serving = shared.clone();
        let (serving_tx, serving_rx) = oneshot::channel::<Option<SocketAddr>>();
        let task = tokio::spawn(tollgate_controller::run_with(
            config,
            listener,
            async move {
                let _ = rx.await;
            },
            move |started| {
                *serving.lock().expect("not poisoned") = Some(started.shared);
                let _ = serving_tx.send(started.http_addr);
            },
        ));
        let scheme = if ca_file.is_some() { "https" } else { "http" };
        let mut controller = Self {
            addr,
            http_addr: None,
            url: format!("{scheme}://{addr}"),
            ca_file,
            database_url,
            data_dir,
            options,
            shared,
            shutdown: Some(tx),
            task: Some(task),
            _tempdir: tempdir,
        };
        controller.wait_serving().await;
        controller.http_addr = serving_rx.await.ok().flatten();
        controller
    }

    async fn wait_serving(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(channel) = self.endpoint().connect().await {
                let mut nodes = v1::node_service_client::NodeServiceClient::new(channel);
                // Refusing an unauthenticated call is an answer too: it is serving.
                match nodes.list_nodes(v1::ListNodesRequest::default()).await {
                    Ok(_) => return,
                    Err(status) if status.code() == tonic::Code::Unauthenticated => return,
                    Err(_) => {}
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "controller did not start serving"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes an API token through `TokenService` as `bearer` (anonymous when `None`); its
    /// secret. `customer` scopes a `customer` token (empty for the other roles).
    pub async fn create_token(
        &self,
        bearer: Option<&str>,
        name: &str,
        role: &str,
        customer: &str,
    ) -> String {
        let header = bearer.map(|secret| format!("Bearer {secret}"));
        let mut tokens = v1::token_service_client::TokenServiceClient::with_interceptor(
            self.channel().await,
            move |mut request: tonic::Request<()>| {
                if let Some(header) = &header {
                    request
                        .metadata_mut()
                        .insert("authorization", header.parse().expect("header"));
                }
                Ok(request)
            },
        );
        tokens
            .create_token(v1::CreateTokenRequest {
                name: name.into(),
                role: role.into(),
                customer: customer.into(),
                ttl_seconds: 3600,
            })
            .await
            .expect("create token")
            .into_inner()
            .secret
    }

    /// The running controller's state (`tollgate_controller::Serving::shared`), for tests
    /// that serve its HTTP routes.
    pub fn shared(&self) -> std::sync::Arc<tollgate_controller::shared::Shared> {
        self.shared
            .lock()
            .expect("not poisoned")
            .clone()
            .expect("the controller serves once started")
    }

    /// Stops the controller gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("controller task")
                .expect("controller run");
        }
    }

    /// Stops the controller and starts a new one on the same store and address.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut fresh = Self::start_on(
            self.options.clone(),
            self.database_url.clone(),
            self.data_dir.clone(),
            self._tempdir.clone(),
            Some(self.addr),
        )
        .await;
        self.shutdown = fresh.shutdown.take();
        self.task = fresh.task.take();
        self.http_addr = fresh.http_addr;
        self.shared = fresh.shared.clone();
        // `fresh` owns nothing else that must outlive it: dropping it now aborts nothing.
    }

    /// Another replica on the same store (PostgreSQL), data directory (report signing key)
    /// and lab CA, listening on an address of its own.
    pub async fn replica(&self) -> Self {
        Self::start_on(
            self.options.clone(),
            self.database_url.clone(),
            self.data_dir.clone(),
            self._tempdir.clone(),
            None,
        )
        .await
    }

    /// A channel to the controller.
    pub async fn channel(&self) -> Channel {
        self.endpoint()
            .connect()
            .await
            .expect("connect to controller")
    }

    /// The controller's endpoint, trusting its lab CA when it serves TLS.
    pub fn endpoint(&self) -> Endpoint {
        let endpoint = Endpoint::from_shared(self.url.clone()).expect("url");
        match &self.ca_file {
            Some(ca_file) => endpoint
                .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(
                    tonic::transport::Certificate::from_pem(std::fs::read(ca_file).expect("CA")),
                ))
                .expect("TLS settings"),
            None => endpoint,
        }
    }

    /// An agent's configuration for `node` against this controller (trusting its CA), with
    /// `n_gpus` simulated GPUs and label `sku=hgx-h100`; [`Agent::start_config`] gives it a
    /// state directory.
    pub fn agent_config(&self, node: &str, n_gpus: u32) -> tollgate_agent::AgentConfig {
        let mut config =
            tollgate_agent::AgentConfig::simulated(&self.url, node, n_gpus, PathBuf::new());
        config.ca_file = self.ca_file.clone();
        config.labels.insert("sku".into(), "hgx-h100".into());
        config.sample_interval = Duration::from_millis(100);
        config
    }

    /// Manager clients.
    pub async fn clients(&self) -> Clients {
        Clients::new(self.channel().await)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A TLS transport with a server certificate for 127.0.0.1 from the lab CA in `pki` (made
/// there on first use, reused on restart); returns it with the CA and its certificate's path.
pub fn tls_transport(
    pki: &std::path::Path,
) -> (
    tollgate_controller::listener::Transport,
    std::sync::Arc<tollgate_controller::pki::Ca>,
    PathBuf,
) {
    use tollgate_controller::clock::Clock as _;
    use tollgate_controller::pki::{self, Ca};
    let ca = if pki.join(pki::CA_CERT_FILE).exists() {
        Ca::load_dir(pki).expect("the test CA loads")
    } else {
        pki::init_ca_now(pki).expect("a test CA")
    };
    let identity = ca
        .server_certificate(
            &["127.0.0.1".to_owned()],
            tollgate_controller::clock::SystemClock.now(),
        )
        .expect("a server certificate");
    let config = pki::server_config(
        &identity,
        &pki.join("server.pem"),
        &pki.join("server.key"),
        Some(ca.cert_pem()),
    )
    .expect("TLS settings");
    (
        tollgate_controller::listener::Transport::Tls(config),
        std::sync::Arc::new(ca),
        pki.join(pki::CA_CERT_FILE),
    )
}

async fn bind_retrying(addr: SocketAddr) -> tokio::net::TcpListener {
    // A restarted controller rebinds the port its predecessor just released.
    for _ in 0..100 {
        if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("could not bind {addr}");
}

/// The manager services' clients.
#[derive(Clone)]
pub struct Clients {
    /// Nodes.
    pub nodes: v1::node_service_client::NodeServiceClient<Channel>,
    /// Releases.
    pub releases: v1::release_service_client::ReleaseServiceClient<Channel>,
    /// Plans.
    pub plans: v1::plan_service_client::PlanServiceClient<Channel>,
    /// Runs.
    pub runs: v1::run_service_client::RunServiceClient<Channel>,
    /// Gates.
    pub gates: v1::gate_service_client::GateServiceClient<Channel>,
    /// Reports.
    pub reports: v1::report_service_client::ReportServiceClient<Channel>,
    /// Issues.
    pub issues: v1::issue_service_client::IssueServiceClient<Channel>,
    /// Rollouts.
    pub rollouts: v1::rollout_service_client::RolloutServiceClient<Channel>,
    /// The audit log.
    pub audit: v1::audit_service_client::AuditServiceClient<Channel>,
    /// Status reports and notes.
    pub status: v1::status_service_client::StatusServiceClient<Channel>,
}

impl Clients {
    /// Clients over one channel.
    pub fn new(channel: Channel) -> Self {
        Self {
            nodes: v1::node_service_client::NodeServiceClient::new(channel.clone()),
            releases: v1::release_service_client::ReleaseServiceClient::new(channel.clone()),
            plans: v1::plan_service_client::PlanServiceClient::new(channel.clone()),
            runs: v1::run_service_client::RunServiceClient::new(channel.clone()),
            gates: v1::gate_service_client::GateServiceClient::new(channel.clone()),
            reports: v1::report_service_client::ReportServiceClient::new(channel.clone()),
            issues: v1::issue_service_client::IssueServiceClient::new(channel.clone()),
            rollouts: v1::rollout_service_client::RolloutServiceClient::new(channel.clone()),
            audit: v1::audit_service_client::AuditServiceClient::new(channel.clone()),
            status: v1::status_service_client::StatusServiceClient::new(channel),
        }
    }

    /// Sets the customers `release` is for (empty: for no customer in particular).
    pub async fn set_customers(&mut self, release: &str, customers: &[&str]) -> v1::Release {
        self.releases
            .set_customers(v1::SetCustomersRequest {
                release: release.into(),
                customers: customers.iter().map(|name| (*name).to_owned()).collect(),
            })
            .await
            .expect("set the release's customers")
            .into_inner()
    }

    /// Creates a release with the simulated source's default driver and VBIOS.
    pub async fn create_release(&mut self, name: &str) -> v1::Release {
        let component = |name: &str, version: &str| v1::Component {
            name: name.into(),
            version: version.into(),
            ..Default::default()
        };
        self.releases
            .create_release(v1::CreateReleaseRequest {
                name: name.into(),
                components: vec![
                    component("driver", "550.54.15"),
                    component("vbios", "96.00.89.00.01"),
                ],
                description: String::new(),
            })
            .await
            .expect("create release")
            .into_inner()
    }

    /// Applies a plan from YAML text.
    pub async fn apply_plan(&mut self, source: &str) -> v1::Plan {
        self.plans
            .apply_plan(v1::ApplyPlanRequest {
                source: source.into(),
                file_name: "plan.yaml".into(),
            })
            .await
            .expect("apply plan")
            .into_inner()
    }

    /// Applies a gate from YAML text.
    pub async fn apply_gate(&mut self, source: &str) -> v1::GatePolicy {
        self.gates
            .apply_gate(v1::ApplyGateRequest {
                source: source.into(),
                file_name: "gate.yaml".into(),
            })
            .await
            .expect("apply gate")
            .into_inner()
    }

    /// Waits until `n` nodes are registered and ready.
    pub async fn wait_ready_nodes(&mut self, n: usize) -> Vec<v1::Node> {
        wait_for(Duration::from_secs(30), "nodes to be ready", || {
            let mut clients = self.clone();
            async move {
                let listed = clients.try_list_nodes().await?;
                let ready: Vec<v1::Node> =
                    listed.into_iter().filter(|n| n.state == "ready").collect();
                (ready.len() >= n).then_some(ready)
            }
        })
        .await
    }

    /// Waits until `n` more heartbeats of `node` reached the controller after this call (its
    /// `last_seen_at` moved `n` times). A stream's events are handled one at a time, so every
    /// one but the last of them was also judged whole (liveness included): with `n >= 2`, what
    /// the controller concludes from the agent's word since this call is in the store.
    pub async fn wait_heartbeats(&mut self, node: &str, n: usize) {
        let mut seen = self.last_seen(node).await;
        for i in 0..n {
            let what = format!("heartbeat {} of {n} from {node}", i + 1);
            seen = wait_for(Duration::from_secs(30), &what, || {
                let mut clients = self.clone();
                let before = seen;
                async move {
                    let now = clients.last_seen(node).await;
                    (now > before).then_some(now)
                }
            })
            .await;
        }
    }

    /// The node's last heartbeat as (seconds, nanos); `None` before the first.
    async fn last_seen(&mut self, node: &str) -> Option<(i64, i32)> {
        self.try_list_nodes()
            .await?
            .into_iter()
            .find(|n| n.name == node)?
            .last_seen_at
            .map(|at| (at.seconds, at.nanos))
    }

    /// Starts a run. While no matching node can take a job yet it tries again, for up to 30
    /// s: a registration renews `last_seen_at`, so on PostgreSQL a node registered moments ago
    /// is listed ready (live on some replica) before its agent's stream is open.
    pub async fn start_run(&mut self, release: &str, plan: &str) -> v1::Run {
        let request = v1::StartRunRequest {
            release: release.into(),
            plan: plan.into(),
            milestone: String::new(),
            nodes_now: false,
        };
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.runs.start_run(request.clone()).await {
                Ok(run) => return run.into_inner(),
                Err(status)
                    if status.code() == tonic::Code::FailedPrecondition
                        && status.message().contains("none can take a job")
                        && tokio::time::Instant::now() < give_up =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("start run: {status:?}"),
            }
        }
    }

    /// Waits until the run is finished or cancelled and returns it.
    pub async fn wait_run_done(&mut self, run_id: &str) -> v1::Run {
        self.wait_run(run_id, Duration::from_secs(60), "the run to end", |run| {
            run.state != "running"
        })
        .await
    }

    /// Waits until the run satisfies `done` and returns it as it was then; fails the test,
    /// saying `what` it waited for, after `timeout`.
    pub async fn wait_run(
        &mut self,
        run_id: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&v1::Run) -> bool,
    ) -> v1::Run {
        let done = &done;
        wait_for(timeout, what, || {
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

    /// Waits until every job of the run has at least one result stored.
    pub async fn wait_first_results(&mut self, run_id: &str) -> v1::Run {
        self.wait_run(
            run_id,
            Duration::from_secs(30),
            "every job's first result",
            |run| run.jobs.iter().all(|job| !job.results.is_empty()),
        )
        .await
    }

    /// The run with id `run_id`, as it is now. A caller polling faster than the controller's
    /// rate limit waits as the refusal's `RetryInfo` says, as a well-behaved client does.
    pub async fn run(&mut self, run_id: &str) -> v1::Run {
        loop {
            let answer = self
                .runs
                .get_run(v1::GetRunRequest {
                    id: run_id.into(),
                    ..Default::default()
                })
                .await;
            match answer {
                Ok(run) => return run.into_inner(),
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    tokio::time::sleep(retry_delay(&status)).await;
                }
                Err(status) => panic!("get run: {status:?}"),
            }
        }
    }

    /// The node named `name`.
    pub async fn node(&mut self, name: &str) -> v1::Node {
        self.nodes
            .get_node(v1::GetNodeRequest { name: name.into() })
            .await
            .expect("get node")
            .into_inner()
    }

    /// Qualifies `release` on `n_nodes` ready nodes: creates the release, applies the plan
    /// and the gate, starts a run of the plan and waits until it ends; returns the ended run.
    pub async fn qualify(
        &mut self,
        release: &str,
        n_nodes: usize,
        plan: &str,
        gate: &str,
    ) -> v1::Run {
        self.apply_gate(gate).await;
        let run = self.start_qualification(release, n_nodes, plan).await;
        self.wait_run_done(&run.id).await
    }

    /// Once `n_nodes` nodes are ready, creates `release`, applies the plan and starts a run
    /// of it; returns the run as started.
    pub async fn start_qualification(
        &mut self,
        release: &str,
        n_nodes: usize,
        plan: &str,
    ) -> v1::Run {
        self.wait_ready_nodes(n_nodes).await;
        self.create_release(release).await;
        let plan = self.apply_plan(plan).await;
        self.start_run(release, &plan.name).await
    }

    /// Every node as the controller lists it; `None` while it does not answer.
    pub async fn try_list_nodes(&mut self) -> Option<Vec<v1::Node>> {
        self.try_list_nodes_paged(0).await
    }

    /// [`Self::try_list_nodes`] in pages of `page_size` nodes (0: the controller's default).
    pub async fn try_list_nodes_paged(&mut self, page_size: u32) -> Option<Vec<v1::Node>> {
        // Every page: a fleet larger than one page (the benchmarks') is listed whole.
        let mut nodes = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .nodes
                .list_nodes(v1::ListNodesRequest {
                    page_token,
                    page_size,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            nodes.extend(page.nodes);
            if page.next_page_token.is_empty() {
                return Some(nodes);
            }
            page_token = page.next_page_token;
        }
    }

    /// Evaluates the gate of a release at its current milestone.
    pub async fn evaluate(&mut self, release: &str) -> v1::Decision {
        self.gates
            .evaluate_gate(v1::EvaluateGateRequest {
                release: release.into(),
                milestone: String::new(),
                at: None,
            })
            .await
            .expect("evaluate gate")
            .into_inner()
    }
}

/// Polls `probe` until it returns `Some`, failing the test with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long a `ResourceExhausted` refusal asks its caller to wait (its `RetryInfo`), 50 ms
/// when it does not say.
pub fn retry_delay(status: &tonic::Status) -> Duration {
    use tonic_types::StatusExt as _;
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .unwrap_or(Duration::from_millis(50))
}

/// An agent running in this process with simulated GPUs.
pub struct Agent {
    /// Node name.
    pub node: String,
    /// State directory (spool, token, logs).
    pub state_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// What it was started with, for [`Agent::restart`].
    config: tollgate_agent::AgentConfig,
    _tempdir: tempfile::TempDir,
}

impl Agent {
    /// Starts an agent for `node` with `n_gpus` simulated GPUs, label `sku=hgx-h100`, and the
    /// given faults (`over-temp`, `xid=79`, `driver=535.104.05`, ...).
    pub fn start(controller_url: &str, node: &str, n_gpus: u32, faults: &[&str]) -> Self {
        let tempdir = tempfile::tempdir().expect("temp dir");
        let state_dir = tempdir.path().join(node);
        let mut config =
            tollgate_agent::AgentConfig::simulated(controller_url, node, n_gpus, state_dir.clone());
        config.labels.insert("sku".into(), "hgx-h100".into());
        config.sample_interval = Duration::from_millis(100);
        config.faults = faults
            .iter()
            .map(|f| f.parse().expect("valid fault"))
            .collect();
        Self::start_with(config, tempdir)
    }

    /// [`Agent::start`] without faults, with `labels` besides `sku=hgx-h100` (a customer's
    /// node: `customer=acme`).
    pub fn start_labelled(
        controller_url: &str,
        node: &str,
        n_gpus: u32,
        labels: &[(&str, &str)],
    ) -> Self {
        let tempdir = tempfile::tempdir().expect("temp dir");
        let state_dir = tempdir.path().join(node);
        let mut config =
            tollgate_agent::AgentConfig::simulated(controller_url, node, n_gpus, state_dir);
        config.labels.insert("sku".into(), "hgx-h100".into());
        for (key, value) in labels {
            config.labels.insert((*key).into(), (*value).into());
        }
        config.sample_interval = Duration::from_millis(100);
        Self::start_with(config, tempdir)
    }

    /// [`Agent::start`] without faults, keeping its state (spool, token) in `state_dir`: a
    /// small disk a test fills, say.
    pub fn start_at(controller_url: &str, node: &str, n_gpus: u32, state_dir: PathBuf) -> Self {
        let mut config =
            tollgate_agent::AgentConfig::simulated(controller_url, node, n_gpus, state_dir);
        config.labels.insert("sku".into(), "hgx-h100".into());
        config.sample_interval = Duration::from_millis(100);
        Self::start_with(config, tempfile::tempdir().expect("temp dir"))
    }

    /// Starts an agent with `config` (see [`Controller::agent_config`]) and its state in a
    /// fresh temp directory.
    pub fn start_config(mut config: tollgate_agent::AgentConfig) -> Self {
        let tempdir = tempfile::tempdir().expect("temp dir");
        config.state_dir = tempdir.path().join(&config.node);
        Self::start_with(config, tempdir)
    }

    fn start_with(config: tollgate_agent::AgentConfig, tempdir: tempfile::TempDir) -> Self {
        let (tx, rx) = oneshot::channel::<()>();
        let node = config.node.clone();
        let state_dir = config.state_dir.clone();
        let task = tokio::spawn(tollgate_agent::run(config.clone(), async move {
            let _ = rx.await;
        }));
        Self {
            node,
            state_dir,
            shutdown: Some(tx),
            task: Some(task),
            config,
            _tempdir: tempdir,
        }
    }

    /// Kills the agent abruptly (its running step's processes die with it) and starts a new
    /// one on the same state directory, as a restarted agent process would: its node token
    /// and spool survive, its memory of the running job does not.
    pub fn restart(mut self) -> Self {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let config = self.config.clone();
        let tempdir = std::mem::replace(&mut self._tempdir, tempfile::tempdir().expect("temp dir"));
        drop(self);
        Self::start_with(config, tempdir)
    }

    /// Stops the agent gracefully (as the shutdown before a node's reboot does) and keeps
    /// its state directory and settings, so [`StoppedAgent::start`] can boot it again.
    pub async fn shut_down(mut self) -> StoppedAgent {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("agent task")
                .expect("the agent stopped cleanly");
        }
        let config = self.config.clone();
        let tempdir = std::mem::replace(&mut self._tempdir, tempfile::tempdir().expect("temp dir"));
        StoppedAgent { config, tempdir }
    }

    /// Stops the agent gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Kills the agent abruptly: no goodbye, no more heartbeats.
    pub fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An agent stopped by [`Agent::shut_down`]: a node that is down (rebooting, say).
pub struct StoppedAgent {
    config: tollgate_agent::AgentConfig,
    tempdir: tempfile::TempDir,
}

impl StoppedAgent {
    /// The state directory the agent will start on again.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.config.state_dir
    }

    /// Starts a new agent on the same state directory with the same settings, as the agent
    /// process a node starts when it comes back up.
    pub fn start(self) -> Agent {
        Agent::start_with(self.config, self.tempdir)
    }

    /// [`StoppedAgent::start`] with `faults` instead of its own (`vbios=96.00.74.00.01`: the
    /// node comes back reporting another VBIOS, as after a board swap).
    pub fn start_with_faults(mut self, faults: &[&str]) -> Agent {
        self.config.faults = faults
            .iter()
            .map(|fault| fault.parse().expect("valid fault"))
            .collect();
        Agent::start_with(self.config, self.tempdir)
    }

    /// [`StoppedAgent::start`] with the node's faults repaired: it comes back healthy.
    pub fn start_repaired(mut self) -> Agent {
        self.config.faults.clear();
        Agent::start_with(self.config, self.tempdir)
    }
}

/// Agents `lab-1`, `lab-2`, ... with `n_gpus` simulated GPUs each, one per entry of `faults`
/// (the faults of that node; see [`Agent::start`]).
pub fn lab_agents(controller_url: &str, n_gpus: u32, faults: &[&[&str]]) -> Vec<Agent> {
    faults
        .iter()
        .enumerate()
        .map(|(idx, faults)| {
            Agent::start(controller_url, &format!("lab-{}", idx + 1), n_gpus, faults)
        })
        .collect()
}

/// Three agents `lab-1` to `lab-3` with two GPUs each, `lab-3` running over temperature, and
/// a finished qualification of release r550: [`plan_yaml`] with `stress_seconds` of stress,
/// and [`gate_yaml`] for three nodes, which fails on the temperature rule (asserted).
pub async fn qualify_with_one_hot_node(
    controller: &Controller,
    stress_seconds: f64,
) -> (Vec<Agent>, Clients) {
    let agents = lab_agents(&controller.url, 2, &[&[], &[], &["over-temp"]]);
    let mut clients = controller.clients().await;
    clients
        .qualify("r550", 3, &plan_yaml(stress_seconds), &gate_yaml(3))
        .await;
    let decision = clients.evaluate("r550").await;
    assert_eq!(decision.verdict, "failed", "{decision:#?}");
    (agents, clients)
}

/// Stops the agents gracefully, then asserts that no process whose command line carries
/// `marker` (every step of the test's plan does) outlived them.
pub async fn stop_agents_leaving_no_step_process(agents: Vec<Agent>, marker: &str) {
    for agent in agents {
        agent.stop().await;
    }
    assert_eq!(
        process::processes_with(marker),
        Vec::<u32>::new(),
        "no step process left"
    );
}

/// Result files waiting in a spool directory, not yet acknowledged (not the `corrupt` or
/// `rejected` folders).
pub fn spooled_results(spool: &std::path::Path) -> usize {
    std::fs::read_dir(spool)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.path().is_file())
                .count()
        })
        .unwrap_or(0)
}

/// Asserts that the agent whose state directory is `state_dir` holds no result: none waiting
/// in its spool, none set aside as `rejected` or `corrupt`.
pub fn assert_spool_empty(state_dir: &std::path::Path, node: &str) {
    let spool = state_dir.join("spool");
    assert_eq!(spooled_results(&spool), 0, "the spool of {node} is empty");
    for aside in ["rejected", "corrupt"] {
        let n = std::fs::read_dir(spool.join(aside))
            .map(|entries| entries.count())
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing in spool/{aside} of {node}");
    }
}

/// A plan `gpu-qual` of `n_steps` exec steps `s0`, `s1`, ..., each sleeping `step_seconds`
/// and then reporting its own measurement `step_<i>`; `marker`, when given, is in every
/// step's command line so a test can look for leftover processes.
pub fn measuring_plan(n_steps: u32, step_seconds: f64, marker: Option<&str>) -> String {
    let marker = marker
        .map(|marker| format!(", {marker}"))
        .unwrap_or_default();
    let mut yaml = String::from("name: gpu-qual\nselector: {sku: hgx-h100}\nsteps:\n");
    for i in 0..n_steps {
        yaml.push_str(&format!(
            "  - name: s{i}\n    kind: exec\n    command: [sh, -c, \"sleep {step_seconds}; echo '@tollgate measure step_{i} {i} n'\"{marker}]\n    timeout: 1m\n"
        ));
    }
    yaml
}

/// Asserts that a run of [`measuring_plan`] with `n_steps` steps finished with every job
/// passed and every step's result stored exactly once, in order, with its own measurement.
pub fn assert_every_result_once(run: &v1::Run, n_steps: u32) {
    assert_eq!(run.state, "finished", "{run:#?}");
    for job in &run.jobs {
        assert_eq!(
            job.state, "passed",
            "job on {}: {:#?}",
            job.node, job.results
        );
        let stored: Vec<(String, u32)> = job
            .results
            .iter()
            .map(|r| (r.step_name.clone(), r.attempt))
            .collect();
        let expected: Vec<(String, u32)> = (0..n_steps).map(|i| (format!("s{i}"), 1)).collect();
        assert_eq!(
            stored, expected,
            "every result exactly once, on {}",
            job.node
        );
        for (i, result) in job.results.iter().enumerate() {
            assert_eq!(
                result.measurements.first().map(|m| m.name.clone()),
                Some(format!("step_{i}")),
                "the measurement of s{i} on {}",
                job.node
            );
        }
    }
}

/// Each result of `job` as (step, attempt, outcome), in the order they are listed.
pub fn results_seen(job: &v1::Job) -> Vec<(&str, u32, v1::Outcome)> {
    job.results
        .iter()
        .map(|r| (r.step_name.as_str(), r.attempt, outcome(r.outcome)))
        .collect()
}

/// An outcome as the wire carries it, read back; `Unspecified` for a number it does not know.
pub fn outcome(wire: i32) -> v1::Outcome {
    v1::Outcome::try_from(wire).unwrap_or(v1::Outcome::Unspecified)
}

/// A plan for the simulated fleet: an inventory check and a short exec step reporting a
/// measurement.
pub fn plan_yaml(stress_seconds: f64) -> String {
    format!(
        r#"name: gpu-qual
selector: {{sku: hgx-h100}}
steps:
  - {{name: versions, kind: inventory-check}}
  - name: stress
    kind: exec
    command: [sh, -c, "sleep {stress_seconds}; echo '@tollgate measure membw_gbps 2950.5 GB/s'"]
    timeout: 1m
"#
    )
}

/// A plan `name` whose second step, `held`, ends only once the file `go` exists: a run of it
/// stays running until the test lets it finish (a live view is then seen changing).
pub fn held_plan(name: &str, go: &std::path::Path) -> String {
    format!(
        r#"name: {name}
selector: {{sku: hgx-h100}}
steps:
  - {{name: versions, kind: inventory-check}}
  - name: held
    kind: exec
    command: [sh, -c, "while [ ! -e '{}' ]; do sleep 0.05; done; echo '@tollgate measure membw_gbps 2950.5 GB/s'"]
    timeout: 1m
"#,
        go.display()
    )
}

/// The gate of the README's example, requiring `min_nodes` nodes.
pub fn gate_yaml(min_nodes: u32) -> String {
    format!(
        r#"milestone: lab-qual
rules:
  - steps-passed: {{plan: gpu-qual, steps: [versions, stress], min-nodes: {min_nodes}}}
  - measurement: {{name: membw_gbps, aggregate: min, condition: ">= 2800"}}
  - telemetry: {{field: gpu_temp_c, aggregate: max, condition: "< 88"}}
  - no-xid: {{codes: [48, 63, 64, 74, 79, 94, 95]}}
  - inventory-matches-release: {{}}
"#
    )
}

/// Declares, for each named `async fn NAME(backend: Backend)` of the calling test file, a module
/// `NAME` with two tests, `NAME::sqlite` and `NAME::postgres` (which says it was skipped when
/// no PostgreSQL database is configured). CI counts the `postgres` ones.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::Backend::Postgres).await
            }
        }
    )*};
}
