//! The controller over real sockets: a server on `127.0.0.1:0` with a temporary SQLite data
//! directory, tonic clients, and hand-driven agent streams (the end-to-end tests with real
//! agents live in the workspace's `tests/`).

use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_controller::ControllerConfig;
use tollgate_proto::v1 as proto;
use tollgate_proto::v1::agent_service_client::AgentServiceClient;
use tollgate_proto::v1::gate_service_client::GateServiceClient;
use tollgate_proto::v1::node_service_client::NodeServiceClient;
use tollgate_proto::v1::plan_service_client::PlanServiceClient;
use tollgate_proto::v1::release_service_client::ReleaseServiceClient;
use tollgate_proto::v1::run_service_client::RunServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

/// How long a test waits for something that should happen within a few ticks.
const PATIENCE: Duration = Duration::from_secs(10);

struct Controller {
    channel: Channel,
    serving: tollgate_controller::Serving,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _data_dir: tempfile::TempDir,
}

impl Controller {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a controller whose configuration `adjust` may change (the clock, the grace).
    async fn start_with(adjust: impl FnOnce(&mut ControllerConfig)) -> Self {
        // The controller's log goes to the test's captured output, shown when a test fails
        // (each test runs on a thread of its own).
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "tollgate_controller=info",
            ))
            .try_init();
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut config = ControllerConfig::new(data_dir.path().to_path_buf());
        config.tick = Duration::from_millis(50);
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let (serving_tx, serving_rx) = oneshot::channel();
        let task = tokio::spawn(tollgate_controller::run_with(
            config,
            listener,
            async move {
                let _ = stopped.await;
            },
            move |serving| {
                let _ = serving_tx.send(serving);
            },
        ));
        let serving = tokio::time::timeout(PATIENCE, serving_rx)
            .await
            .expect("the controller serves within the patience")
            .expect("the controller started");
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_lazy();
        Self {
            channel,
            serving,
            stop: Some(stop),
            task,
            _data_dir: data_dir,
        }
    }

    fn agents(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel.clone())
    }

    fn releases(&self) -> ReleaseServiceClient<Channel> {
        ReleaseServiceClient::new(self.channel.clone())
    }

    fn plans(&self) -> PlanServiceClient<Channel> {
        PlanServiceClient::new(self.channel.clone())
    }

    fn runs(&self) -> RunServiceClient<Channel> {
        RunServiceClient::new(self.channel.clone())
    }

    fn gates(&self) -> GateServiceClient<Channel> {
        GateServiceClient::new(self.channel.clone())
    }

    fn nodes(&self) -> NodeServiceClient<Channel> {
        NodeServiceClient::new(self.channel.clone())
    }

    /// The node named `name`.
    async fn node(&self, name: &str) -> proto::Node {
        self.nodes()
            .get_node(proto::GetNodeRequest { name: name.into() })
            .await
            .expect("get node")
            .into_inner()
    }

    /// The run with id `run_id`.
    async fn run(&self, run_id: &str) -> proto::Run {
        self.runs()
            .get_run(proto::GetRunRequest {
                id: run_id.into(),
                ..Default::default()
            })
            .await
            .expect("get run")
            .into_inner()
    }

    /// Stops the controller and checks it stopped cleanly and promptly.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("controller stops within the patience")
            .expect("controller task did not panic");
        result.expect("controller ran without error");
    }
}

fn inventory() -> proto::Inventory {
    proto::Inventory {
        driver_version: "550.54.15".into(),
        cuda_driver_version: "12.4".into(),
        nvml_version: "12.550.54.15".into(),
        gpus: vec![proto::GpuInfo {
            index: 0,
            uuid: "GPU-00000000".into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            pci_bus_id: "00000000:18:00.0".into(),
            vbios_version: "96.00.89.00.01".into(),
            memory_total_mib: 81_559,
            ..Default::default()
        }],
        components: Default::default(),
        gpu_source: "simulated".into(),
        hostname: "sim".into(),
    }
}

fn register_request(node: &str, token: &str) -> proto::RegisterRequest {
    proto::RegisterRequest {
        node_name: node.into(),
        labels: [("sku".to_owned(), "hgx-h100".to_owned())]
            .into_iter()
            .collect(),
        inventory: Some(inventory()),
        agent_version: "test".into(),
        node_token: token.into(),
    }
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

/// A hand-driven agent: registered, with its `Connect` stream open.
struct Agent {
    token: String,
    events: mpsc::Sender<proto::AgentEvent>,
    commands: Streaming<proto::ControllerCommand>,
}

impl Agent {
    async fn enroll(controller: &Controller, node: &str) -> Self {
        let agent = Self::enroll_quiet(controller, node).await;
        agent
            .events
            .send(heartbeat())
            .await
            .expect("queue the first heartbeat");
        agent
    }

    /// Registered and connected, but its first heartbeat not sent yet.
    async fn enroll_quiet(controller: &Controller, node: &str) -> Self {
        let registration = controller
            .agents()
            .register(register_request(node, ""))
            .await
            .expect("register")
            .into_inner();
        let (events, outbound) = mpsc::channel(16);
        let commands = controller
            .agents()
            .connect(authed(
                ReceiverStream::new(outbound),
                &registration.node_token,
            ))
            .await
            .expect("connect")
            .into_inner();
        Self {
            token: registration.node_token,
            events,
            commands,
        }
    }

    /// Waits for the next `AssignJob`.
    async fn next_assignment(&mut self) -> proto::AssignJob {
        loop {
            let command = tokio::time::timeout(PATIENCE, self.commands.next())
                .await
                .expect("an assignment within the patience")
                .expect("stream open")
                .expect("command");
            if let Some(proto::controller_command::Command::AssignJob(assign)) = command.command {
                return assign;
            }
        }
    }

    /// The next `AssignJob` if one comes within `wait`.
    async fn next_assignment_within(&mut self, wait: Duration) -> Option<proto::AssignJob> {
        tokio::time::timeout(wait, self.next_assignment())
            .await
            .ok()
    }

    /// Uploads `result` with this agent's node token.
    async fn report(
        &self,
        controller: &Controller,
        result: proto::StepResult,
    ) -> Result<proto::Ack, tonic::Status> {
        controller
            .agents()
            .report_result(authed(result, &self.token))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn accept(&self, assign: &proto::AssignJob) {
        self.events
            .send(proto::AgentEvent {
                event: Some(proto::agent_event::Event::JobAccepted(proto::JobAccepted {
                    job_id: assign.job_id.clone(),
                    lease_epoch: assign.lease_epoch,
                })),
            })
            .await
            .expect("send acceptance");
    }
}

fn heartbeat() -> proto::AgentEvent {
    proto::AgentEvent {
        event: Some(proto::agent_event::Event::Heartbeat(proto::Heartbeat {
            running_job_id: String::new(),
            sent_at: Some(prost_types::Timestamp {
                seconds: 1_767_225_600,
                nanos: 0,
            }),
            unsent_results: 0,
            ..Default::default()
        })),
    }
}

fn result(
    assign: &proto::AssignJob,
    step_index: u32,
    outcome: proto::Outcome,
) -> proto::StepResult {
    proto::StepResult {
        job_id: assign.job_id.clone(),
        step_index,
        step_name: assign.steps[step_index as usize].name.clone(),
        attempt: 1,
        lease_epoch: assign.lease_epoch,
        outcome: outcome.into(),
        exit_code: Some(0),
        started_at: Some(prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 0,
        }),
        finished_at: Some(prost_types::Timestamp {
            seconds: 1_767_225_660,
            nanos: 0,
        }),
        measurements: Vec::new(),
        telemetry: Vec::new(),
        events: Vec::new(),
        sub_results: Vec::new(),
        inventory_at_end: None,
        series: Vec::new(),
        inventory: Some(inventory()),
        log_tail: String::new(),
        message: "ok".into(),
    }
}

const PLAN: &str = "name: gpu-qual\nselector: {sku: hgx-h100}\nsteps:\n  - {name: versions, kind: inventory-check}\n  - {name: stress, kind: exec, command: [sh, -c, 'true']}\n";
const GATE: &str = "milestone: lab-qual\nrules:\n  - steps-passed: {plan: gpu-qual, steps: [versions, stress], min-nodes: 2}\n";

/// Creating release `name` whose one component is the driver at `driver`.
fn release_request(name: &str, driver: &str) -> proto::CreateReleaseRequest {
    proto::CreateReleaseRequest {
        name: name.into(),
        components: vec![proto::Component {
            name: "driver".into(),
            version: driver.into(),
            ..Default::default()
        }],
        description: String::new(),
    }
}

/// Applying [`PLAN`].
fn plan_request() -> proto::ApplyPlanRequest {
    proto::ApplyPlanRequest {
        source: PLAN.into(),
        file_name: "plan.yaml".into(),
    }
}

/// Starting a run of `gpu-qual` for `release` at its current milestone, on every matching
/// node.
fn start_request(release: &str) -> proto::StartRunRequest {
    proto::StartRunRequest {
        release: release.into(),
        plan: "gpu-qual".into(),
        milestone: String::new(),
        nodes_now: false,
    }
}

/// Two connected agents, a release, the plan, and a started run whose jobs reached the agents.
struct Fixture {
    a: Agent,
    b: Agent,
    assign_a: proto::AssignJob,
    assign_b: proto::AssignJob,
    run_id: String,
}

/// Release r550 (driver 550.54.15), the plan, and a started run of it.
async fn start_run_of_r550(controller: &Controller) -> proto::Run {
    start_run_of(controller, PLAN).await
}

/// Release r550 (driver 550.54.15), the plan `gpu-qual` as `plan`, and a started run of it.
async fn start_run_of(controller: &Controller, plan: &str) -> proto::Run {
    controller
        .releases()
        .create_release(release_request("r550", "550.54.15"))
        .await
        .expect("create release");
    controller
        .plans()
        .apply_plan(proto::ApplyPlanRequest {
            source: plan.into(),
            file_name: "plan.yaml".into(),
        })
        .await
        .expect("apply plan");
    controller
        .runs()
        .start_run(start_request("r550"))
        .await
        .expect("start run")
        .into_inner()
}

async fn fixture(controller: &Controller) -> Fixture {
    fixture_of(controller, PLAN).await
}

/// [`fixture`] with the plan `gpu-qual` as `plan`.
async fn fixture_of(controller: &Controller, plan: &str) -> Fixture {
    let mut a = Agent::enroll(controller, "node-a").await;
    let mut b = Agent::enroll(controller, "node-b").await;
    let mut connected = controller.serving.shared.sessions.connected_nodes();
    connected.sort();
    assert_eq!(connected, ["node-a".into(), "node-b".into()]);
    let run = start_run_of(controller, plan).await;
    assert_eq!(run.jobs.len(), 2, "{run:?}");
    let assign_a = a.next_assignment().await;
    let assign_b = b.next_assignment().await;
    assert_eq!(assign_a.lease_epoch, 1);
    assert_eq!(assign_a.steps.len(), 2);
    assert_eq!(assign_a.release, "r550");
    a.accept(&assign_a).await;
    b.accept(&assign_b).await;
    Fixture {
        a,
        b,
        assign_a,
        assign_b,
        run_id: run.id,
    }
}

#[tokio::test]
async fn registration_issues_a_token_bound_to_its_node() {
    let controller = Controller::start().await;
    let mut agents = controller.agents();
    let registration = agents
        .register(register_request("node-a", ""))
        .await
        .expect("register")
        .into_inner();
    assert_eq!(registration.node_name, "node-a");
    assert_eq!(registration.node_token.len(), 64);
    assert_eq!(registration.heartbeat_interval_ms, 2_000);
    assert_eq!(registration.lease_grace_ms, 10_000);

    // Re-registering with the token keeps it; without it is refused.
    let again = agents
        .register(register_request("node-a", &registration.node_token))
        .await
        .expect("re-register")
        .into_inner();
    assert_eq!(again.node_token, registration.node_token);
    let status = agents
        .register(register_request("node-a", ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("node-token"),
        "{}",
        status.message()
    );

    // A bad registration names every bad field.
    let mut bad = register_request("node a", "");
    bad.inventory = None;
    let status = agents.register(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("node_name") && status.message().contains("inventory"),
        "{}",
        status.message()
    );

    // Calls other than Register need a known token.
    let status = agents
        .report_result(proto::StepResult::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = agents
        .report_result(authed(proto::StepResult::default(), "not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    controller.stop().await;
}

#[tokio::test]
async fn results_are_owned_fenced_and_stored_once() {
    let controller = Controller::start().await;
    let fx = fixture(&controller).await;

    // Node b cannot report for node a's job.
    let status =
        fx.b.report(&controller, result(&fx.assign_a, 0, proto::Outcome::Passed))
            .await
            .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // A result under another epoch is stale.
    let mut stale = result(&fx.assign_a, 0, proto::Outcome::Passed);
    stale.lease_epoch += 1;
    let status = fx.a.report(&controller, stale).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("stale lease epoch"),
        "{}",
        status.message()
    );

    // A malformed result names its bad fields.
    let mut malformed = result(&fx.assign_a, 0, proto::Outcome::Unspecified);
    malformed.started_at = None;
    let status = fx.a.report(&controller, malformed).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("outcome") && status.message().contains("started_at"),
        "{}",
        status.message()
    );

    // An inventory-check runs no program: a result of it with measurements is refused.
    let mut measured = result(&fx.assign_a, 0, proto::Outcome::Passed);
    measured.measurements = vec![proto::Measurement {
        name: "membw_gbps".into(),
        value: 3000.0,
        unit: String::new(),
    }];
    let status = fx.a.report(&controller, measured).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("measurements: step versions is an inventory-check step"),
        "{}",
        status.message()
    );

    // A result over a limit names the field and the limit.
    let mut oversize = result(&fx.assign_a, 0, proto::Outcome::Passed);
    oversize.log_tail = "x".repeat(tollgate_domain::limits::LOG_TAIL.max + 1);
    let status = fx.a.report(&controller, oversize).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("log_tail: ") && status.message().contains("(log-tail)"),
        "{}",
        status.message()
    );
    assert!(status.message().len() < 1024, "{}", status.message().len());

    // The first upload is new, every repeat a duplicate, and it is stored once.
    let first = result(&fx.assign_a, 0, proto::Outcome::Passed);
    let ack =
        fx.a.report(&controller, first.clone())
            .await
            .expect("first upload");
    assert!(!ack.duplicate);
    for _ in 0..2 {
        let ack =
            fx.a.report(&controller, first.clone())
                .await
                .expect("repeat");
        assert!(ack.duplicate);
    }
    let run = controller.run(&fx.run_id).await;
    let job_a = run
        .jobs
        .iter()
        .find(|job| job.id == fx.assign_a.job_id)
        .expect("job of node a");
    assert_eq!(job_a.results.len(), 1, "{job_a:?}");
    assert_eq!(job_a.state, "running");
    assert_eq!(job_a.n_steps, 2);
    drop(fx.b);
    controller.stop().await;
}

#[tokio::test]
async fn a_passed_gate_promotes_and_a_missing_one_explains_itself() {
    let controller = Controller::start().await;
    let fx = fixture(&controller).await;
    let status = controller
        .releases()
        .promote(proto::PromoteRequest {
            name: "r550".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("no gate for milestone lab-qual"),
        "{}",
        status.message()
    );

    let decision = apply_gate_and_evaluate(&controller).await;
    assert_eq!(decision.verdict, "waiting", "{decision:?}");
    let status = controller
        .releases()
        .promote(proto::PromoteRequest {
            name: "r550".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("waiting"), "{}", status.message());

    let mut watch = controller
        .runs()
        .watch_run(proto::GetRunRequest {
            id: fx.run_id.clone(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    for (agent, assign) in [(&fx.a, &fx.assign_a), (&fx.b, &fx.assign_b)] {
        for step in 0..2 {
            agent
                .report(&controller, result(assign, step, proto::Outcome::Passed))
                .await
                .expect("upload");
        }
    }
    let finished = tokio::time::timeout(PATIENCE, async {
        while let Some(run) = watch.next().await {
            let run = run.expect("watch item");
            if run.state != "running" {
                return run;
            }
        }
        panic!("watch ended before the run finished");
    })
    .await
    .expect("run finishes");
    assert_eq!(finished.state, "finished");
    // A watch message carries only the jobs that changed; its counts cover every job.
    assert_eq!(
        finished.job_counts,
        [proto::JobCount {
            state: "passed".into(),
            count: 2
        }],
        "{finished:?}"
    );
    assert_eq!(finished.n_jobs, 2);

    let promoted = controller
        .releases()
        .promote(proto::PromoteRequest {
            name: "r550".into(),
        })
        .await
        .expect("promote")
        .into_inner();
    let release = promoted.release.expect("release");
    assert_eq!(release.milestone, "customer-acceptance");
    let decision = promoted.decision.expect("decision");
    assert_eq!(decision.verdict, "passed");
    assert_eq!(release.promotions[0].decision_digest, decision.digest);
    controller.stop().await;
}

#[tokio::test]
async fn bad_requests_name_every_bad_field() {
    let controller = Controller::start().await;
    let status = controller
        .releases()
        .create_release(proto::CreateReleaseRequest {
            name: "bad name".into(),
            components: vec![
                proto::Component {
                    name: "driver".into(),
                    version: String::new(),
                    ..Default::default()
                },
                proto::Component {
                    name: "driver".into(),
                    version: "1".into(),
                    sha256: "xyz".into(),
                    ..Default::default()
                },
            ],
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    for field in [
        "name:",
        "components[0].version",
        "components[1].name",
        "components[1].sha256",
    ] {
        assert!(
            status.message().contains(field),
            "{field} in {}",
            status.message()
        );
    }

    let status = controller
        .plans()
        .apply_plan(proto::ApplyPlanRequest {
            source: "name: p\nsteps:\n  - {name: a, kind: exec}\n  - {name: b, kind: reboot}\n"
                .into(),
            file_name: "broken.yaml".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("broken.yaml:3"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("broken.yaml:4"),
        "{}",
        status.message()
    );

    let status = controller
        .runs()
        .start_run(proto::StartRunRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("release") && status.message().contains("plan"),
        "{}",
        status.message()
    );

    let status = controller
        .releases()
        .get_release(proto::GetReleaseRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    controller.stop().await;
}

#[tokio::test]
async fn a_run_needs_a_connected_node() {
    let controller = Controller::start().await;
    controller
        .agents()
        .register(register_request("node-a", ""))
        .await
        .expect("register");
    controller
        .releases()
        .create_release(release_request("r1", "1"))
        .await
        .expect("release");
    controller
        .plans()
        .apply_plan(plan_request())
        .await
        .expect("plan");
    let status = controller
        .runs()
        .start_run(start_request("r1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("node-a is unreachable"),
        "{}",
        status.message()
    );

    let nodes = controller
        .nodes()
        .list_nodes(proto::ListNodesRequest {
            selector: [("sku".to_owned(), "hgx-h100".to_owned())]
                .into_iter()
                .collect(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(nodes.nodes.len(), 1);
    // Listed as the run saw it: registered, but without a stream it cannot take a job.
    assert_eq!(nodes.nodes[0].state, "unreachable");
    let cordoned = controller
        .nodes()
        .set_cordon(proto::SetCordonRequest {
            name: "node-a".into(),
            cordoned: true,
        })
        .await
        .expect("cordon")
        .into_inner();
    assert_eq!(cordoned.state, "cordoned");
    controller.stop().await;
}

#[tokio::test]
async fn health_and_reflection_answer() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let controller = Controller::start().await;
    let mut health = HealthClient::new(controller.channel.clone());
    for service in ["", "tollgate.v1.AgentService", "tollgate.v1.RunService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(response.status, ServingStatus::Serving as i32, "{service}");
    }

    let mut reflection = ServerReflectionClient::new(controller.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("one response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "tollgate.v1.AgentService",
        "tollgate.v1.RunService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    controller.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_agent_streams() {
    let controller = Controller::start().await;
    let mut agent = Agent::enroll(&controller, "node-a").await;
    // The stream stays open (the agent keeps its sender) while the controller stops.
    let stopping = tokio::spawn(controller.stop());
    let end = tokio::time::timeout(PATIENCE, agent.commands.next())
        .await
        .expect("the command stream ends on shutdown");
    assert!(end.is_none() || end.is_some_and(|item| item.is_err()));
    stopping.await.expect("stopped cleanly");
    drop(agent.events);
}

/// Polls `check` until it returns `Some`, or fails after the patience.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_silent_node_becomes_unreachable_and_loses_its_job() {
    use tollgate_controller::clock::ManualClock;
    let start = chrono::DateTime::from_timestamp(1_767_225_600, 0).expect("in range");
    let clock = ManualClock::new(start);
    let controller = Controller::start_with({
        let clock = clock.clone();
        move |config| {
            config.clock = std::sync::Arc::new(clock);
            // The rate limit's bucket refills on the controller's clock, which this test
            // holds still: polling would empty it however long the controller takes.
            config.limits.rate.per_second = 0;
        }
    })
    .await;
    let fx = fixture(&controller).await;
    let node_state = |name: &'static str| async { controller.node(name).await.state };
    // Both acceptances are handled before time moves: both jobs run (their nodes are busy
    // from the assignment on, so a busy node does not prove its acceptance was handled).
    eventually("both jobs running", || async {
        let run = controller.run(&fx.run_id).await;
        run.jobs
            .iter()
            .all(|job| job.state == "running")
            .then_some(())
    })
    .await;
    assert_eq!(node_state("node-a").await, "busy");
    assert_eq!(node_state("node-b").await, "busy");

    // Past the grace (10 s by default) without a heartbeat, both nodes are unreachable. The
    // clock goes on moving while the test waits: anything that rightly gives every lease a
    // fresh grace meanwhile (a write the database refused under load, say, once writes are
    // accepted again) moves the deadline, never removes it. The exact deadline is
    // `lease.rs`'s tests' business.
    clock.advance(chrono::Duration::seconds(11));
    eventually("node-a unreachable", || async {
        if node_state("node-a").await == "unreachable" {
            return Some(());
        }
        clock.advance(chrono::Duration::seconds(1));
        None
    })
    .await;
    let run = eventually("the run to finish", || async {
        let run = controller.run(&fx.run_id).await;
        (run.state == "finished").then_some(run)
    })
    .await;
    assert!(run.jobs.iter().all(|job| job.state == "lost"), "{run:?}");

    // A late result of a lost job is refused; a heartbeat brings the node back.
    let status =
        fx.a.report(&controller, result(&fx.assign_a, 0, proto::Outcome::Passed))
            .await
            .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    fx.a.events.send(heartbeat()).await.expect("heartbeat");
    eventually("node-a ready again", || async {
        (node_state("node-a").await == "ready").then_some(())
    })
    .await;
    assert_eq!(node_state("node-b").await, "unreachable");
    controller.stop().await;
}

/// A controller on a clock that moves only when told, so each heartbeat leaves a distinct
/// `last_seen_at`.
async fn controller_on_a_manual_clock() -> (Controller, tollgate_controller::clock::ManualClock) {
    use tollgate_controller::clock::ManualClock;
    let start = chrono::DateTime::from_timestamp(1_767_225_600, 0).expect("in range");
    let clock = ManualClock::new(start);
    let controller = Controller::start_with({
        let clock = clock.clone();
        move |config| {
            config.clock = std::sync::Arc::new(clock);
            // The rate limit's bucket refills on the controller's clock, which this test
            // holds still: polling would empty it however long the controller takes.
            config.limits.rate.per_second = 0;
        }
    })
    .await;
    (controller, clock)
}

/// Sends `event` a second after the last one and waits until the controller renewed the
/// node's lease with it. A stream's events are handled in order, so once this returns for one
/// heartbeat, every earlier one was judged whole.
async fn send_heartbeat(
    controller: &Controller,
    clock: &tollgate_controller::clock::ManualClock,
    agent: &Agent,
    node: &str,
    event: proto::AgentEvent,
) {
    use tollgate_controller::clock::Clock as _;
    let store = &controller.serving.shared.store;
    let node_id: tollgate_domain::NodeId = node.into();
    clock.advance(chrono::Duration::seconds(1));
    let now = clock.now();
    agent.events.send(event).await.expect("heartbeat");
    eventually("the heartbeat to be handled", || async {
        let seen = store.get_node(&node_id).await.ok().flatten()?.last_seen_at;
        (seen == Some(now)).then_some(())
    })
    .await;
}

/// The first heartbeat of a stream was built when the stream opened. When it reaches the
/// controller only after the job assigned on that stream is already running (its first result
/// came in on another call), it says nothing about the job: the job is not taken for
/// interrupted by an agent restart.
#[tokio::test]
async fn a_first_heartbeat_overtaken_by_a_result_does_not_interrupt_the_job() {
    let (controller, clock) = controller_on_a_manual_clock().await;
    let mut agent = Agent::enroll_quiet(&controller, "node-a").await;
    start_run_of_r550(&controller).await;
    let assign = agent.next_assignment().await;
    agent
        .report(&controller, result(&assign, 0, proto::Outcome::Passed))
        .await
        .expect("the first result moves the job to running");
    let store = &controller.serving.shared.store;
    let job = tollgate_domain::JobId::new(assign.job_id.clone());
    assert_eq!(
        store
            .get_job(&job)
            .await
            .expect("job")
            .expect("found")
            .state,
        tollgate_domain::job::JobState::Running
    );
    // Now the heartbeat built at connect time arrives: idle. Another after it, so that once
    // that one renewed the lease the first was judged whole.
    send_heartbeat(&controller, &clock, &agent, "node-a", heartbeat()).await;
    send_heartbeat(&controller, &clock, &agent, "node-a", heartbeat()).await;
    let job = store.get_job(&job).await.expect("job").expect("found");
    assert_eq!(
        job.state,
        tollgate_domain::job::JobState::Running,
        "{job:?}"
    );
    assert_eq!(job.lease_epoch, 1);
    let results = store.results_of_job(&job.id).await.expect("results");
    assert_eq!(
        results.len(),
        1,
        "no interrupted result was added: {results:?}"
    );
    controller.stop().await;
}

/// The controller waits for an idle agent's unsent results of the node's job only: results of
/// other jobs the agent cannot deliver do not keep the job `running`.
#[tokio::test]
async fn only_the_jobs_own_unsent_results_keep_it_waiting() {
    let (controller, clock) = controller_on_a_manual_clock().await;
    let mut agent = Agent::enroll(&controller, "node-a").await;
    start_run_of_r550(&controller).await;
    let assign = agent.next_assignment().await;
    agent.accept(&assign).await;
    agent
        .report(&controller, result(&assign, 0, proto::Outcome::Passed))
        .await
        .expect("the first result");
    let idle_owing = |owed: &[(&str, u32)]| proto::AgentEvent {
        event: Some(proto::agent_event::Event::Heartbeat(proto::Heartbeat {
            // Built after the assignment: the agent's word counts.
            commands_received: 1,
            unsent_results: owed.iter().map(|(_, n)| n).sum(),
            unsent_by_job: owed
                .iter()
                .map(|(job, n)| ((*job).to_owned(), *n))
                .collect(),
            ..Default::default()
        })),
    };
    let store = &controller.serving.shared.store;
    let job = tollgate_domain::JobId::new(assign.job_id.clone());
    // It still owes a result of this job: wait for it (two heartbeats, both judged).
    for _ in 0..2 {
        let owed = idle_owing(&[(assign.job_id.as_str(), 1)]);
        send_heartbeat(&controller, &clock, &agent, "node-a", owed).await;
    }
    let waiting = store.get_job(&job).await.expect("job").expect("found");
    assert_eq!(
        waiting.state,
        tollgate_domain::job::JobState::Running,
        "{waiting:?}"
    );
    // It owes only another job's result: this job's step is interrupted, and with no retries
    // left the job ends in `error`.
    let owed = idle_owing(&[("job-from-an-earlier-run", 3)]);
    send_heartbeat(&controller, &clock, &agent, "node-a", owed).await;
    let ended = eventually("the job to end", || async {
        let job = store.get_job(&job).await.ok().flatten()?;
        (job.state != tollgate_domain::job::JobState::Running).then_some(job)
    })
    .await;
    assert_eq!(
        ended.state,
        tollgate_domain::job::JobState::Error,
        "{ended:?}"
    );
    let results = store.results_of_job(&job).await.expect("results");
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[1].step_index, 1);
    assert_eq!(results[1].outcome, tollgate_domain::result::Outcome::Error);
    controller.stop().await;
}

/// Heartbeats are judged in batches, after they arrived: one that arrived before the job's
/// last result ended it still names the job, but says nothing about the agent now and stops
/// nothing. One that arrived after the end and still names the job cancels it on the agent.
#[tokio::test]
async fn a_heartbeat_older_than_the_end_of_its_job_cancels_nothing() {
    use tollgate_controller::clock::Clock as _;
    let (controller, clock) = controller_on_a_manual_clock().await;
    let mut agent = Agent::enroll(&controller, "node-a").await;
    start_run_of_r550(&controller).await;
    let assign = agent.next_assignment().await;
    agent.accept(&assign).await;
    let heard_before_the_end = clock.now();
    clock.advance(chrono::Duration::seconds(1));
    for step in 0..assign.steps.len() {
        let step = u32::try_from(step).expect("few steps");
        agent
            .report(&controller, result(&assign, step, proto::Outcome::Passed))
            .await
            .expect("result");
    }
    let shared = &controller.serving.shared;
    let node: tollgate_domain::NodeId = "node-a".into();
    let job = tollgate_domain::JobId::new(assign.job_id.clone());
    let ended = shared
        .store
        .get_job(&job)
        .await
        .expect("job")
        .expect("found");
    assert_eq!(ended.state, tollgate_domain::job::JobState::Passed);
    clock.advance(chrono::Duration::seconds(1));
    judge_naming(shared, &node, &assign.job_id, heard_before_the_end).await;
    let cancel = next_cancel(&mut agent.commands).await;
    assert!(
        cancel.is_none(),
        "a heartbeat older than the end cancelled: {cancel:?}"
    );
    judge_naming(shared, &node, &assign.job_id, clock.now()).await;
    let cancel = next_cancel(&mut agent.commands)
        .await
        .expect("a heartbeat after the end naming the job cancels it");
    assert_eq!(cancel.job_id, assign.job_id);
    controller.stop().await;
}

/// Judges, as a heartbeat flush would, a heartbeat that arrived at `at` naming `job` as
/// running.
async fn judge_naming(
    shared: &tollgate_controller::shared::Shared,
    node: &tollgate_domain::NodeId,
    job: &str,
    at: tollgate_domain::Timestamp,
) {
    let note = tollgate_controller::heartbeats::Note {
        session_id: 0,
        heartbeat: proto::Heartbeat {
            running_job_id: job.to_owned(),
            commands_received: 1,
            ..Default::default()
        },
        at,
    };
    let facts = shared
        .store
        .heartbeat_facts(std::slice::from_ref(node))
        .await
        .expect("facts");
    tollgate_controller::grpc::agent::judge_heartbeat(shared, node, &note, facts.first())
        .await
        .expect("judged");
}

/// The next `CancelJob` if one comes within half a second.
async fn next_cancel(
    commands: &mut Streaming<proto::ControllerCommand>,
) -> Option<proto::CancelJob> {
    loop {
        let command = tokio::time::timeout(Duration::from_millis(500), commands.next())
            .await
            .ok()??
            .ok()?;
        if let Some(proto::controller_command::Command::CancelJob(cancel)) = command.command {
            return Some(cancel);
        }
    }
}

/// Asserts a short `InvalidArgument` that names `field` and the limit `limit`.
fn assert_refused(status: &tonic::Status, field: &str, limit: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let message = status.message();
    assert!(message.contains(&format!("{field}: ")), "{message}");
    assert!(message.contains(&format!("({limit})")), "{message}");
    assert!(message.len() < 1024, "a {} byte message", message.len());
}

#[tokio::test]
async fn oversize_fields_are_refused_by_name_with_a_short_message() {
    let controller = Controller::start().await;
    let huge = "r".repeat(3 * 1024 * 1024);
    let component = proto::Component {
        name: "driver".into(),
        version: "550.54.15".into(),
        ..Default::default()
    };

    // A 3 MB name, over a real socket: the answer is INVALID_ARGUMENT quoting a prefix, not
    // a RESOURCE_EXHAUSTED from a message too large for the response headers.
    let status = controller
        .releases()
        .create_release(proto::CreateReleaseRequest {
            name: huge.clone(),
            components: vec![component.clone()],
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert_refused(&status, "name", "name");
    assert!(
        status.message().contains("(3145728 bytes)"),
        "{}",
        status.message()
    );
    let status = controller
        .releases()
        .get_release(proto::GetReleaseRequest { name: huge.clone() })
        .await
        .unwrap_err();
    assert_refused(&status, "name", "name");
    // The node service takes requests of 256 KiB at most: 3 MB is refused by size, a name of
    // 128 KiB by name.
    let status = controller
        .nodes()
        .get_node(proto::GetNodeRequest { name: huge.clone() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("(262144 bytes"),
        "{}",
        status.message()
    );
    let status = controller
        .nodes()
        .get_node(proto::GetNodeRequest {
            name: "n".repeat(128 * 1024),
        })
        .await
        .unwrap_err();
    assert_refused(&status, "name", "name");

    // Versions, descriptions, reasons and command arguments are refused, never stored (a
    // megabyte each, so that two fit one request).
    let huge = "v".repeat(1024 * 1024);
    let status = controller
        .releases()
        .create_release(proto::CreateReleaseRequest {
            name: "r1".into(),
            components: vec![proto::Component {
                version: huge.clone(),
                ..component.clone()
            }],
            description: huge.clone(),
        })
        .await
        .unwrap_err();
    assert_refused(&status, "components[0].version", "version");
    assert_refused(&status, "description", "description");
    let status = controller
        .releases()
        .halt(proto::HaltRequest {
            release: "r1".into(),
            reason: huge.clone(),
        })
        .await
        .unwrap_err();
    assert_refused(&status, "reason", "reason");
    let status = controller
        .gates()
        .waive(proto::WaiveRequest {
            release: "r1".into(),
            rule_id: "no-xid".into(),
            reason: huge.clone(),
            ticket: "T-1".into(),
            ttl_seconds: 60,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_refused(&status, "reason", "reason");
    let plan = format!(
        "name: p\nsteps:\n  - {{name: s, kind: exec, command: [sh, -c, '{}']}}\n",
        "x".repeat(tollgate_domain::limits::COMMAND_ARG.max + 1)
    );
    let status = controller
        .plans()
        .apply_plan(proto::ApplyPlanRequest {
            source: plan,
            file_name: "plan.yaml".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("plan.yaml:3:")
            && status.message().contains("steps[0].command[2]: ")
            && status.message().contains("(command-arg)"),
        "{}",
        status.message()
    );
    assert!(status.message().len() < 1024, "{}", status.message().len());
    let releases = controller
        .releases()
        .list_releases(proto::ListReleasesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(releases.releases.is_empty(), "{releases:?}");

    // A release of 100,000 components is refused for its count, not checked entry by entry.
    let components: Vec<proto::Component> = (0..100_000)
        .map(|idx| proto::Component {
            name: format!("c{idx}"),
            version: "1".into(),
            ..Default::default()
        })
        .collect();
    let status = controller
        .releases()
        .create_release(proto::CreateReleaseRequest {
            name: "r-big".into(),
            components,
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert_refused(&status, "components", "components");
    assert!(
        status
            .message()
            .contains("has 100000 entries, over the limit of 256 items"),
        "{}",
        status.message()
    );
    controller.stop().await;
}

/// A plan with `selection: ready-now` keeps its runs to the nodes ready when they start, as
/// `nodes_now` does for one run: with every matching node busy, the run is refused.
#[tokio::test]
async fn a_plan_that_selects_ready_nodes_only_leaves_busy_ones_out() {
    let controller = Controller::start().await;
    let _fx = fixture(&controller).await;
    controller
        .plans()
        .apply_plan(proto::ApplyPlanRequest {
            source: PLAN.replace("name: gpu-qual", "name: gpu-qual-now\nselection: ready-now"),
            file_name: "plan.yaml".into(),
        })
        .await
        .expect("apply plan");
    let status = controller
        .runs()
        .start_run(proto::StartRunRequest {
            release: "r550".into(),
            plan: "gpu-qual-now".into(),
            milestone: String::new(),
            nodes_now: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("node-a is busy") && status.message().contains("node-b is busy"),
        "{}",
        status.message()
    );
    controller.stop().await;
}

/// A run started while its nodes are busy selects them: their jobs wait, pending, and go out
/// once the earlier run's jobs end. `nodes_now` keeps to the nodes ready now.
#[tokio::test]
async fn a_run_started_while_its_nodes_are_busy_waits_for_them() {
    let controller = Controller::start().await;
    let mut fx = fixture(&controller).await;
    let start = |nodes_now: bool| proto::StartRunRequest {
        nodes_now,
        ..start_request("r550")
    };
    let status = controller.runs().start_run(start(true)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("node-a is busy") && status.message().contains("node-b is busy"),
        "{}",
        status.message()
    );
    let second = controller
        .runs()
        .start_run(start(false))
        .await
        .expect("a run of busy nodes starts")
        .into_inner();
    let selection = second
        .selection
        .clone()
        .expect("StartRun says what it selected");
    assert!(selection.now.is_empty(), "{selection:?}");
    assert_eq!(selection.waiting, ["node-a", "node-b"]);
    assert!(
        second.jobs.iter().all(|job| job.state == "pending"),
        "{second:?}"
    );

    // Node a ends its first job: the waiting job is sent to it.
    for step in 0..2 {
        fx.a.report(
            &controller,
            result(&fx.assign_a, step, proto::Outcome::Passed),
        )
        .await
        .expect("result");
    }
    let next = fx.a.next_assignment().await;
    let waiting_a = second
        .jobs
        .iter()
        .find(|job| job.node == "node-a")
        .expect("a job for node-a");
    assert_eq!(next.job_id, waiting_a.id);
    controller.stop().await;
}

/// Findings make a node's health worse and say why; a node that is not good is left out of new
/// runs; an operator clears it with a reason, audited.
#[tokio::test]
async fn node_health_comes_from_findings_and_an_operator_clears_it() {
    let controller = Controller::start().await;
    let mut fx = fixture(&controller).await;
    // Node a: a GPU falls off the bus during its first step.
    let mut lost = result(&fx.assign_a, 0, proto::Outcome::Passed);
    lost.events.push(proto::GpuEvent {
        gpu_index: 1,
        gpu_uuid: "GPU-1".into(),
        kind: "gpu-lost".into(),
        code: 0,
        at: lost.started_at,
        detail: String::new(),
    });
    fx.a.report(&controller, lost).await.expect("result");
    // Node b: three harness errors in a row, over three runs.
    let mut assign = fx.assign_b.clone();
    for n in 1..=3 {
        let mut error = result(&assign, 0, proto::Outcome::Error);
        error.message = format!("timed out ({n})");
        fx.b.report(&controller, error).await.expect("result");
        // The step after the errored one is skipped, which ends the job.
        fx.b.report(&controller, result(&assign, 1, proto::Outcome::Skipped))
            .await
            .expect("result");
        if n < 3 {
            let run = controller
                .runs()
                .start_run(start_request("r550"))
                .await
                .expect("a run for node b")
                .into_inner();
            assert!(run.selection.is_some_and(|s| s.now == ["node-b"]));
            assign = fx.b.next_assignment().await;
            fx.b.accept(&assign).await;
        }
    }
    let a = controller.node("node-a").await;
    assert_eq!(a.health, "bad");
    assert!(
        a.health_reason
            .starts_with("GPU 1 fell off the bus during step versions"),
        "{}",
        a.health_reason
    );
    let b = controller.node("node-b").await;
    assert_eq!(b.health, "suspect");
    assert!(
        b.health_reason.starts_with("3 harness errors in a row")
            && b.health_reason.ends_with("timed out (3)"),
        "{}",
        b.health_reason
    );
    let status = controller
        .runs()
        .start_run(start_request("r550"))
        .await
        .unwrap_err();
    assert!(
        status.message().contains("node-a is bad")
            && status.message().contains("node-b is suspect"),
        "{}",
        status.message()
    );

    let status = controller
        .nodes()
        .set_health(proto::SetHealthRequest {
            name: "node-a".into(),
            health: "great".into(),
            reason: " ".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("health") && status.message().contains("reason"),
        "{}",
        status.message()
    );
    let cleared = controller
        .nodes()
        .set_health(proto::SetHealthRequest {
            name: "node-a".into(),
            health: "good".into(),
            reason: "reseated GPU 1; dcgmi diag -r 3 passed".into(),
        })
        .await
        .expect("set health")
        .into_inner();
    assert_eq!(
        (cleared.health.as_str(), cleared.health_reason.as_str()),
        (
            "good",
            "set by anonymous: reseated GPU 1; dcgmi diag -r 3 passed"
        )
    );
    let audit = controller
        .serving
        .shared
        .store
        .list_audit(&tollgate_controller::store::AuditFilter::default())
        .await
        .expect("audit");
    let health: Vec<(&str, &str)> = audit
        .iter()
        .filter(|entry| entry.action == "node.health")
        .map(|entry| (entry.actor.as_str(), entry.subject.as_str()))
        .collect();
    assert_eq!(
        health,
        [
            ("controller", "node/node-a"),
            ("controller", "node/node-b"),
            ("anonymous", "node/node-a")
        ]
    );
    controller.stop().await;
}

#[tokio::test]
async fn fleet_telemetry_over_its_limits_is_refused_by_name() {
    let controller = Controller::start().await;
    let agent = Agent::enroll(&controller, "lab-1").await;
    let sample = |values: std::collections::BTreeMap<String, f64>| proto::TelemetrySample {
        gpu_index: 0,
        at: None,
        values,
    };
    let one_field = || [("gpu_temp_c".to_owned(), 60.0)].into_iter().collect();
    let push = |batch: proto::TelemetryBatch| {
        let mut agents = controller.agents();
        let token = agent.token.clone();
        async move {
            agents
                .push_telemetry(authed(tokio_stream::iter(vec![batch]), &token))
                .await
        }
    };

    // Within the limits: accepted.
    push(proto::TelemetryBatch {
        samples: vec![sample(one_field())],
        events: Vec::new(),
        dropped: 0,
    })
    .await
    .expect("a small batch is accepted");

    // Too many samples in one batch.
    let status = push(proto::TelemetryBatch {
        samples: (0..10_001).map(|_| sample(Default::default())).collect(),
        events: Vec::new(),
        dropped: 0,
    })
    .await
    .unwrap_err();
    assert_refused(&status, "samples", "telemetry-batch");

    // A field name of a megabyte, and an event detail over the message limit.
    let status = push(proto::TelemetryBatch {
        samples: vec![sample([("f".repeat(1 << 20), 1.0)].into_iter().collect())],
        events: vec![proto::GpuEvent {
            kind: "xid".into(),
            detail: "d".repeat(64 * 1024),
            ..Default::default()
        }],
        dropped: 0,
    })
    .await
    .unwrap_err();
    assert_refused(&status, "samples[0].values", "name");
    assert_refused(&status, "events[0].detail", "message");
}

#[tokio::test]
async fn a_halt_resume_or_demotion_that_does_not_apply_is_refused_saying_why() {
    let controller = Controller::start().await;
    let mut releases = controller.releases();
    releases
        .create_release(proto::CreateReleaseRequest {
            name: "r1".into(),
            components: vec![proto::Component {
                name: "driver".into(),
                version: "550.54.15".into(),
                ..Default::default()
            }],
            description: String::new(),
        })
        .await
        .expect("create");
    let resume = |reason: &str| proto::ResumeRequest {
        release: "r1".into(),
        reason: reason.into(),
    };
    let halt = |reason: &str| proto::HaltRequest {
        release: "r1".into(),
        reason: reason.into(),
    };
    let refused = releases
        .resume(resume("nothing to resume"))
        .await
        .expect_err("not halted");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("not halted"), "{refused:?}");

    releases.halt(halt("bad batch")).await.expect("halt");
    let refused = releases
        .halt(halt("another reason"))
        .await
        .expect_err("halted already");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("already halted (bad batch)"),
        "{refused:?}"
    );
    let refused = releases
        .promote(proto::PromoteRequest { name: "r1".into() })
        .await
        .expect_err("halted");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("tollgate resume"), "{refused:?}");

    let demote = |to: &str| proto::DemoteRequest {
        release: "r1".into(),
        to_milestone: to.into(),
        reason: "recall".into(),
    };
    let refused = releases
        .demote(demote("production"))
        .await
        .expect_err("not earlier");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("earlier milestone"),
        "{refused:?}"
    );
    let refused = releases
        .demote(demote("moon"))
        .await
        .expect_err("not on the track");
    assert_eq!(refused.code(), Code::InvalidArgument);

    let resumed = releases
        .resume(resume("batch replaced"))
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(resumed.halted_reason, "");
    controller.stop().await;
}

/// Applies [`GATE`] and evaluates it for r550 at its current milestone.
async fn apply_gate_and_evaluate(controller: &Controller) -> proto::Decision {
    controller
        .gates()
        .apply_gate(proto::ApplyGateRequest {
            source: GATE.into(),
            file_name: "gate.yaml".into(),
        })
        .await
        .expect("apply gate");
    controller
        .gates()
        .evaluate_gate(proto::EvaluateGateRequest {
            release: "r550".into(),
            milestone: String::new(),
            at: None,
        })
        .await
        .expect("evaluate")
        .into_inner()
}

/// The audit entries of `action`, as JSON details.
async fn audit_details(controller: &Controller, action: &str) -> Vec<serde_json::Value> {
    controller
        .serving
        .shared
        .store
        .list_audit(&tollgate_controller::store::AuditFilter::default())
        .await
        .expect("audit")
        .iter()
        .filter(|entry| entry.action == action)
        .map(|entry| serde_json::from_str(&entry.details).expect("JSON details"))
        .collect()
}

impl Agent {
    /// Waits for the next `CancelJob`, skipping other commands.
    async fn next_cancel(&mut self) -> proto::CancelJob {
        loop {
            let command = tokio::time::timeout(PATIENCE, self.commands.next())
                .await
                .expect("a cancel within the patience")
                .expect("stream open")
                .expect("command");
            if let Some(proto::controller_command::Command::CancelJob(cancel)) = command.command {
                return cancel;
            }
        }
    }
}

/// A node drained with a deadline its job outlives: the job is cancelled at the deadline and
/// started again on another eligible node (recorded as a reschedule), the drained node goes to
/// maintenance and comes back with resume, and the gate counts the new attempt only.
#[tokio::test]
async fn a_drain_deadline_moves_the_job_to_another_node_and_resume_brings_the_node_back() {
    let controller = Controller::start().await;
    let mut fx = fixture(&controller).await;
    let mut c = Agent::enroll(&controller, "node-c").await;
    eventually("node-c to be ready", || async {
        (controller.node("node-c").await.state == "ready").then_some(())
    })
    .await;
    let drained = controller
        .nodes()
        .drain_node(proto::DrainNodeRequest {
            name: "node-a".into(),
            reason: "replace PSU 2".into(),
            deadline_seconds: 1,
        })
        .await
        .expect("drain")
        .into_inner();
    assert_eq!(drained.state, "draining");

    // The job outlives the deadline: node-a's agent is told to stop it, node-c gets it.
    let cancel = fx.a.next_cancel().await;
    assert_eq!(cancel.job_id, fx.assign_a.job_id);
    assert!(cancel.reason.contains("deadline"), "{}", cancel.reason);
    let again = c.next_assignment().await;
    assert_ne!(again.job_id, fx.assign_a.job_id);
    c.accept(&again).await;
    eventually("node-a to be in maintenance", || async {
        (controller.node("node-a").await.state == "maintenance").then_some(())
    })
    .await;
    let run = controller.run(&fx.run_id).await;
    let job = |id: &str| run.jobs.iter().find(|job| job.id == id).expect("job");
    assert_eq!(job(&fx.assign_a.job_id).state, "cancelled");
    let moved = job(&again.job_id);
    assert_eq!(
        (
            moved.node.as_str(),
            moved.attempt,
            moved.rescheduled_from.as_str()
        ),
        ("node-c", 2, fx.assign_a.job_id.as_str())
    );
    let reschedules = audit_details(&controller, "job.reschedule").await;
    assert_eq!(reschedules.len(), 1, "{reschedules:?}");
    assert_eq!(reschedules[0]["cause"], "drain-deadline");
    assert_eq!(reschedules[0]["node"], "node-c");
    let drains = audit_details(&controller, "node.drain").await;
    assert!(drains[0]["deadline"].is_string(), "{drains:?}");

    // node-b and node-c pass: the run ends and the gate counts two nodes (node-a's cancelled
    // job was replaced, so it is not evidence).
    for (agent, assign) in [(&fx.b, &fx.assign_b), (&c, &again)] {
        for step in 0..2 {
            agent
                .report(&controller, result(assign, step, proto::Outcome::Passed))
                .await
                .expect("result");
        }
    }
    eventually("the run to finish", || async {
        (controller.run(&fx.run_id).await.state == "finished").then_some(())
    })
    .await;
    let decision = apply_gate_and_evaluate(&controller).await;
    assert_eq!(decision.verdict, "passed", "{decision:?}");

    // Maintenance keeps node-a out until an operator resumes it.
    assert_eq!(controller.node("node-a").await.state, "maintenance");
    let resumed = controller
        .nodes()
        .set_cordon(proto::SetCordonRequest {
            name: "node-a".into(),
            cordoned: false,
        })
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(resumed.state, "ready");
    controller.stop().await;
}

/// A plan with `reschedule: {attempts: 1}`: a job that ends in a harness error is started
/// again once on another node; the second error is final.
#[tokio::test]
async fn a_harness_error_is_rescheduled_as_often_as_the_plan_allows() {
    let controller = Controller::start().await;
    let plan = PLAN.replace("steps:", "reschedule: {attempts: 1}\nsteps:");
    let mut fx = fixture_of(&controller, &plan).await;
    let mut c = Agent::enroll(&controller, "node-c").await;
    eventually("node-c to be ready", || async {
        (controller.node("node-c").await.state == "ready").then_some(())
    })
    .await;
    for step in 0..2 {
        fx.a.report(
            &controller,
            result(&fx.assign_a, step, proto::Outcome::Error),
        )
        .await
        .expect("result");
    }
    let again = c.next_assignment().await;
    c.accept(&again).await;
    for step in 0..2 {
        c.report(&controller, result(&again, step, proto::Outcome::Error))
            .await
            .expect("result");
    }
    for step in 0..2 {
        fx.b.report(
            &controller,
            result(&fx.assign_b, step, proto::Outcome::Passed),
        )
        .await
        .expect("result");
    }
    eventually("the run to finish", || async {
        (controller.run(&fx.run_id).await.state == "finished").then_some(())
    })
    .await;
    let run = controller.run(&fx.run_id).await;
    let mut jobs: Vec<(&str, &str, u32)> = run
        .jobs
        .iter()
        .map(|job| (job.node.as_str(), job.state.as_str(), job.attempt))
        .collect();
    jobs.sort();
    assert_eq!(
        jobs,
        [
            ("node-a", "error", 1),
            ("node-b", "passed", 1),
            ("node-c", "error", 2)
        ]
    );
    let reschedules = audit_details(&controller, "job.reschedule").await;
    assert_eq!(reschedules.len(), 1, "{reschedules:?}");
    assert_eq!(reschedules[0]["cause"], "error");
    // Nothing was started for node-c's error: node-a is the only other node, and it was tried.
    let _ =
        fx.a.next_assignment_within(Duration::from_millis(300))
            .await
            .map(|extra| {
                panic!("no third attempt: {extra:?}");
            });
    controller.stop().await;
}

/// An operator drains a busy node (it finishes its job and ends in maintenance, taking no new one)
/// and retires a node only once nothing is active on it and no pending job waits for it; a
/// retired node takes no operator change again; each change is audited with its reason.
#[tokio::test]
async fn a_drained_node_finishes_its_job_and_a_retired_one_stays_retired() {
    let controller = Controller::start().await;
    let fx = fixture(&controller).await;
    let drain = |name: &str| proto::DrainNodeRequest {
        name: name.into(),
        reason: "replace PSU 2".into(),
        deadline_seconds: 0,
    };
    let retire = |name: &str, reason: &str| proto::RetireNodeRequest {
        name: name.into(),
        reason: reason.into(),
    };
    let drained = controller
        .nodes()
        .drain_node(drain("node-a"))
        .await
        .expect("drain")
        .into_inner();
    assert_eq!(drained.state, "draining");

    // A job is active on node-a: retiring it is refused, saying to drain or cancel.
    let status = controller
        .nodes()
        .retire_node(retire("node-a", "returned"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("drain"), "{}", status.message());
    // No reason: the field is named.
    let status = controller
        .nodes()
        .retire_node(retire("node-b", "  "))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("reason"), "{}", status.message());

    // A second run: node-a (draining) is left out, node-b (busy) gets a job that waits.
    let second = controller
        .runs()
        .start_run(start_request("r550"))
        .await
        .expect("second run")
        .into_inner();
    let selection = second.selection.expect("selection");
    assert_eq!(selection.waiting, ["node-b"]);
    assert_eq!(selection.left_out.len(), 1, "{:?}", selection.left_out);
    assert!(
        selection.left_out[0].contains("node-a"),
        "{:?}",
        selection.left_out
    );
    controller
        .nodes()
        .set_cordon(proto::SetCordonRequest {
            name: "node-b".into(),
            cordoned: true,
        })
        .await
        .expect("cordon node-b");

    // Both first jobs end: the drained node is in maintenance, not ready; node-b stays
    // cordoned with the second run's job pending for it.
    for (agent, assign) in [(&fx.a, &fx.assign_a), (&fx.b, &fx.assign_b)] {
        for step in 0..2 {
            agent
                .report(&controller, result(assign, step, proto::Outcome::Passed))
                .await
                .expect("result");
        }
    }
    assert_eq!(controller.node("node-a").await.state, "maintenance");
    assert_eq!(controller.node("node-b").await.state, "cordoned");
    let status = controller
        .nodes()
        .retire_node(retire("node-b", "returned"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("1 pending job(s)"),
        "{}",
        status.message()
    );

    let retired = controller
        .nodes()
        .retire_node(retire("node-a", "chassis returned to the vendor"))
        .await
        .expect("retire")
        .into_inner();
    assert_eq!(retired.state, "retired");
    let status = controller
        .nodes()
        .set_cordon(proto::SetCordonRequest {
            name: "node-a".into(),
            cordoned: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("retired"), "{}", status.message());

    let audit = controller
        .serving
        .shared
        .store
        .list_audit(&tollgate_controller::store::AuditFilter::default())
        .await
        .expect("audit");
    let changes: Vec<(&str, String)> = audit
        .iter()
        .filter(|entry| entry.subject == "node/node-a")
        .map(|entry| {
            (
                entry.action.as_str(),
                serde_json::from_str::<serde_json::Value>(&entry.details).expect("JSON details")
                    ["reason"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("node.drain", "replace PSU 2".to_owned()),
            ("node.retire", "chassis returned to the vendor".to_owned()),
        ]
    );
    controller.stop().await;
}

/// Health checks: with a health plan set, every idle node it selects gets a check (a run of
/// purpose `health`); a failed check makes the node suspect, which keeps it out of
/// qualification runs but not out of its next check, and a passing check clears it. Checks
/// are never gate evidence; a node is not checked again before the period; removing the plan
/// stops the checks. Each change is audited.
#[tokio::test]
async fn health_checks_make_a_failing_node_suspect_and_a_passing_check_clears_it() {
    use tollgate_controller::clock::ManualClock;
    let start = chrono::DateTime::from_timestamp(1_767_225_600, 0).expect("in range");
    let clock = ManualClock::new(start);
    let controller = Controller::start_with({
        let clock = clock.clone();
        move |config| {
            config.clock = std::sync::Arc::new(clock);
            // The rate limit's bucket refills on the controller's clock, held still here.
            config.limits.rate.per_second = 0;
            // Time jumps by hours here; no lease may run out meanwhile.
            config.lease_grace = Duration::from_secs(7 * 86_400);
        }
    })
    .await;
    let (mut a, mut b) = two_ready_agents(&controller).await;
    controller
        .releases()
        .create_release(release_request("r550", "550.54.15"))
        .await
        .expect("create release");
    controller
        .plans()
        .apply_plan(plan_request())
        .await
        .expect("apply plan");
    let set = |plan: &str, release: &str, every_seconds: u64| proto::SetHealthPlanRequest {
        plan: plan.into(),
        release: release.into(),
        every_seconds,
    };

    // Bad settings are refused, naming each field; unknown names are NotFound.
    let status = controller
        .nodes()
        .set_health_plan(set("", "", 30))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for field in ["plan", "release", "every_seconds"] {
        assert!(status.message().contains(field), "{field}: {status:?}");
    }
    let status = controller
        .nodes()
        .set_health_plan(set("gpu-qual", "r999", 3_600))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let health_plan = controller
        .nodes()
        .set_health_plan(set("gpu-qual", "r550", 3_600))
        .await
        .expect("set health plan")
        .into_inner();
    assert_eq!(health_plan.every_seconds, 3_600);

    // Both idle nodes are checked; node-a's check fails, node-b's passes.
    let check_a = a.next_assignment().await;
    let check_b = b.next_assignment().await;
    let first_check = controller.run(&check_a.run_id).await;
    assert_eq!(first_check.purpose, "health");
    for (agent, check, stress) in [
        (&a, &check_a, proto::Outcome::Failed),
        (&b, &check_b, proto::Outcome::Passed),
    ] {
        agent.accept(check).await;
        agent
            .report(&controller, result(check, 0, proto::Outcome::Passed))
            .await
            .expect("result");
        agent
            .report(&controller, result(check, 1, stress))
            .await
            .expect("result");
    }
    // The health changes before the check's verdict is stored (a crash between the two judges
    // the check again, where the other order could lose the health change): wait for both.
    let suspect = eventually("node-a to be suspect and its check judged", || async {
        let node = controller.node("node-a").await;
        (node.health == "suspect" && node.health_checks.first()?.verdict == "failed")
            .then_some(node)
    })
    .await;
    assert!(
        suspect
            .health_reason
            .contains("health check gpu-qual failed"),
        "{}",
        suspect.health_reason
    );
    assert_eq!(suspect.health_checks.len(), 1, "{suspect:?}");
    assert_eq!(suspect.health_checks[0].verdict, "failed");
    eventually("node-b's check to be judged", || async {
        let node = controller.node("node-b").await;
        (node.health_checks.first()?.verdict == "passed").then_some(())
    })
    .await;
    assert_eq!(controller.node("node-b").await.health, "good");

    // Checks are not evidence: the gate sees no run of gpu-qual at all.
    let decision = apply_gate_and_evaluate(&controller).await;
    assert_ne!(decision.verdict, "passed", "{decision:?}");
    assert!(
        decision
            .rules
            .iter()
            .all(|rule| rule.evidence.is_empty() && rule.failing_nodes.is_empty()),
        "{decision:?}"
    );

    // No second check within the period; a qualification run leaves the suspect node out.
    assert!(
        b.next_assignment_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    let run = controller
        .runs()
        .start_run(start_request("r550"))
        .await
        .expect("start run")
        .into_inner();
    let selection = run.selection.expect("selection");
    assert_eq!(selection.now, ["node-b"]);
    assert!(
        selection.left_out[0].contains("node-a is suspect"),
        "{selection:?}"
    );
    let job_b = b.next_assignment().await;
    b.accept(&job_b).await;
    for step in 0..2 {
        b.report(&controller, result(&job_b, step, proto::Outcome::Passed))
            .await
            .expect("result");
    }
    eventually("the qualification run to finish", || async {
        (controller.run(&run.id).await.state == "finished").then_some(())
    })
    .await;

    // A period later both are due again; the suspect node's check passes and clears it.
    clock.advance(chrono::Duration::seconds(3_601));
    let again_a = a.next_assignment().await;
    let again_b = b.next_assignment().await;
    assert_ne!(again_a.run_id, check_a.run_id);
    for (agent, check) in [(&a, &again_a), (&b, &again_b)] {
        agent.accept(check).await;
        for step in 0..2 {
            agent
                .report(&controller, result(check, step, proto::Outcome::Passed))
                .await
                .expect("result");
        }
    }
    let cleared = eventually("node-a to be good again", || async {
        let node = controller.node("node-a").await;
        (node.health == "good").then_some(node)
    })
    .await;
    assert!(
        cleared
            .health_reason
            .contains("health check gpu-qual passed"),
        "{}",
        cleared.health_reason
    );

    // Removed, the plan checks no more.
    controller
        .nodes()
        .remove_health_plan(proto::RemoveHealthPlanRequest {
            plan: "gpu-qual".into(),
        })
        .await
        .expect("remove");
    let listed = controller
        .nodes()
        .list_health_plans(proto::ListHealthPlansRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(listed.health_plans.is_empty());
    clock.advance(chrono::Duration::seconds(3_601));
    assert!(
        a.next_assignment_within(Duration::from_millis(500))
            .await
            .is_none()
    );
    assert_eq!(audit_details(&controller, "health-plan.set").await.len(), 1);
    assert_eq!(audit_details(&controller, "health.check").await.len(), 4);
    assert_eq!(
        audit_details(&controller, "health-plan.remove").await.len(),
        1
    );
    controller.stop().await;
}

/// A maintenance window on a label: a run's jobs for the nodes it covers wait (no job
/// starts) until the window is ended, then go out. Bad windows are refused naming every
/// field; ending one twice is refused; both changes are audited.
#[tokio::test]
async fn no_job_starts_in_a_maintenance_window_until_it_ends() {
    let controller = Controller::start().await;
    let (mut a, mut b) = two_ready_agents(&controller).await;

    let status = controller
        .nodes()
        .add_maintenance_window(proto::AddMaintenanceWindowRequest {
            label: "rack".into(),
            starts_at: None,
            ends_at: None,
            reason: " ".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for field in ["label", "ends_at", "reason"] {
        assert!(status.message().contains(field), "{field}: {status:?}");
    }
    let in_an_hour = controller.serving.shared.now() + chrono::Duration::hours(1);
    let window = controller
        .nodes()
        .add_maintenance_window(proto::AddMaintenanceWindowRequest {
            label: "sku=hgx-h100".into(),
            starts_at: None,
            ends_at: Some(tollgate_wire::time::timestamp_to_proto(in_an_hour)),
            reason: "PDU swap".into(),
        })
        .await
        .expect("open window")
        .into_inner();
    assert!(window.active, "{window:?}");
    let held = controller.node("node-a").await;
    assert!(
        held.maintenance_window.contains(&window.id)
            && held.maintenance_window.contains("PDU swap"),
        "{held:?}"
    );

    // The run takes both nodes, but their jobs wait for the window.
    let run = start_run_of_r550(&controller).await;
    let selection = run.selection.expect("selection");
    assert!(selection.now.is_empty(), "{selection:?}");
    assert_eq!(selection.waiting, ["node-a", "node-b"]);
    assert!(
        a.next_assignment_within(Duration::from_millis(500))
            .await
            .is_none()
    );
    let run_now = controller.run(&run.id).await;
    assert!(
        run_now.jobs.iter().all(|job| job.state == "pending"),
        "{run_now:?}"
    );

    let ended = controller
        .nodes()
        .end_maintenance_window(proto::EndMaintenanceWindowRequest {
            id: window.id.clone(),
            reason: "done early".into(),
        })
        .await
        .expect("end")
        .into_inner();
    assert!(!ended.active);
    let assign_a = a.next_assignment().await;
    let assign_b = b.next_assignment().await;
    assert_eq!(assign_a.run_id, run.id);
    assert_eq!(assign_b.run_id, run.id);

    let status = controller
        .nodes()
        .end_maintenance_window(proto::EndMaintenanceWindowRequest {
            id: window.id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let list = |all: bool| {
        let mut nodes = controller.nodes();
        async move {
            nodes
                .list_maintenance_windows(proto::ListMaintenanceWindowsRequest { all })
                .await
                .expect("list")
                .into_inner()
                .windows
        }
    };
    assert!(list(false).await.is_empty());
    assert_eq!(list(true).await.len(), 1);
    assert_eq!(
        audit_details(&controller, "maintenance.open").await.len(),
        1
    );
    assert_eq!(audit_details(&controller, "maintenance.end").await.len(), 1);
    controller.stop().await;
}

/// Agents for node-a and node-b, once both nodes are ready.
async fn two_ready_agents(controller: &Controller) -> (Agent, Agent) {
    let a = Agent::enroll(controller, "node-a").await;
    let b = Agent::enroll(controller, "node-b").await;
    eventually("both nodes ready", || async {
        (controller.node("node-a").await.state == "ready"
            && controller.node("node-b").await.state == "ready")
            .then_some(())
    })
    .await;
    (a, b)
}
