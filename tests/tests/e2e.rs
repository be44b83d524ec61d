//! End to end: a real controller on `127.0.0.1:0`, agents with simulated GPUs running real
//! processes, and real gRPC clients. Every test runs on SQLite and on PostgreSQL (the latter
//! when `TOLLGATE_TEST_DATABASE_URL` is set; otherwise it says it was skipped).

use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1;
use tollgate_tests::process::{text, tollgate};
use tollgate_tests::{
    Agent, Backend, Controller, ControllerOptions, gate_yaml, lab_agents, plan_yaml,
    qualify_with_one_hot_node,
};
use tonic::Code;
use tonic::metadata::MetadataValue;

tollgate_tests::on_both_backends!(
    clean_release_passes_and_promotes,
    faulty_node_fails_the_gate_and_promotion_is_refused,
    result_uploaded_twice_is_stored_once,
    a_reported_result_is_stored_whole,
    a_new_gate_policy_judges_telemetry_the_old_one_did_not_read,
    agent_cannot_act_as_another_node,
    agents_claiming_one_new_node_at_once_leave_it_one_token,
    killed_agent_leaves_its_job_lost,
    gate_show_json_has_one_entry_per_rule,
    a_node_runs_only_the_plans_its_label_allows,
);

/// A node labelled `allowed-plans` that does not list the plan is left out of the run, and
/// the answer to `run start` counts it.
async fn a_node_runs_only_the_plans_its_label_allows(backend: Backend) {
    let Some(mut controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let _open = Agent::start(&controller.url, "lab-1", 1, &[]);
    let _restricted = Agent::start_labelled(
        &controller.url,
        "lab-2",
        1,
        &[("allowed-plans", "flash-only, burn-in")],
    );
    let mut clients = controller.clients().await;
    let run = clients
        .start_qualification("r550", 2, &plan_yaml(0.1))
        .await;
    let nodes: Vec<&str> = run.jobs.iter().map(|job| job.node.as_str()).collect();
    assert_eq!(nodes, ["lab-1"], "{run:#?}");
    let selection = run.selection.expect("run start answers with its selection");
    assert_eq!(selection.n_plan_not_allowed, 1, "{selection:#?}");
    assert!(
        selection.left_out[0].contains("lab-2 runs only the plans its allowed-plans label lists"),
        "{selection:#?}"
    );
    controller.stop().await;
}

async fn clean_release_passes_and_promotes(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let agents = lab_agents(&controller.url, 2, &[&[], &[], &[]]);
    let mut clients = controller.clients().await;
    clients.apply_gate(&gate_yaml(3)).await;
    let run = clients
        .start_qualification("r550", 3, &plan_yaml(0.5))
        .await;
    assert_eq!(run.jobs.len(), 3);
    let run = clients.wait_run_done(&run.id).await;
    assert_eq!(run.state, "finished");
    for job in &run.jobs {
        assert_eq!(
            job.state, "passed",
            "job on {}: {:?}",
            job.node, job.results
        );
        let stress = job
            .results
            .iter()
            .find(|r| r.step_name == "stress")
            .expect("stress result");
        assert_eq!(stress.measurements[0].name, "membw_gbps");
    }

    let decision = clients.evaluate("r550").await;
    assert_eq!(decision.verdict, "passed", "{decision:#?}");
    assert_eq!(decision.rules.len(), 5);
    assert!(!decision.digest.is_empty());

    let promoted = clients
        .releases
        .promote(v1::PromoteRequest {
            name: "r550".into(),
        })
        .await
        .expect("promotion of a passed release")
        .into_inner();
    let release = promoted.release.expect("release");
    assert_eq!(release.milestone, "customer-acceptance");
    assert_eq!(release.promotions.len(), 1);
    assert_eq!(
        release.promotions[0].decision_digest,
        promoted.decision.expect("decision").digest
    );
    for agent in agents {
        agent.stop().await;
    }
}

async fn faulty_node_fails_the_gate_and_promotion_is_refused(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let (_agents, mut clients) = qualify_with_one_hot_node(&controller, 2.0).await;

    let decision = clients.evaluate("r550").await;
    let telemetry = decision
        .rules
        .iter()
        .find(|r| r.rule_id == "telemetry:gpu_temp_c")
        .expect("telemetry rule");
    assert_eq!(telemetry.verdict, "failed", "{decision:#?}");
    assert_eq!(telemetry.failing_nodes, ["lab-3"]);
    assert!(telemetry.reason.contains("lab-3"), "{}", telemetry.reason);
    let others: Vec<&str> = decision
        .rules
        .iter()
        .filter(|r| r.verdict != "passed")
        .map(|r| r.rule_id.as_str())
        .collect();
    assert_eq!(
        others,
        ["telemetry:gpu_temp_c"],
        "only the telemetry rule fails: {decision:#?}"
    );

    let refused = clients
        .releases
        .promote(v1::PromoteRequest {
            name: "r550".into(),
        })
        .await
        .expect_err("promotion must be refused");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("lab-3"), "{}", refused.message());
    assert!(
        refused.message().contains("telemetry:gpu_temp_c"),
        "{}",
        refused.message()
    );
    let release = clients
        .releases
        .get_release(v1::GetReleaseRequest {
            name: "r550".into(),
        })
        .await
        .expect("release")
        .into_inner();
    assert_eq!(
        release.milestone, "lab-qual",
        "a refused promotion changes nothing"
    );
}

/// A hand-driven agent: registers, keeps a `Connect` stream open, and uploads what the test says.
struct FakeAgent {
    node: String,
    token: String,
    client: v1::agent_service_client::AgentServiceClient<tonic::transport::Channel>,
    commands: tonic::Streaming<v1::ControllerCommand>,
    _events: tokio::sync::mpsc::Sender<v1::AgentEvent>,
}

impl FakeAgent {
    async fn connect(controller: &Controller, node: &str) -> Self {
        let mut client =
            v1::agent_service_client::AgentServiceClient::new(controller.channel().await);
        let inventory = v1::Inventory {
            driver_version: "550.54.15".into(),
            gpu_source: "simulated".into(),
            hostname: node.into(),
            ..Default::default()
        };
        let registration = client
            .register(v1::RegisterRequest {
                node_name: node.into(),
                labels: [("sku".to_owned(), "hgx-h100".to_owned())]
                    .into_iter()
                    .collect(),
                inventory: Some(inventory),
                agent_version: "test".into(),
                node_token: String::new(),
            })
            .await
            .expect("register")
            .into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(heartbeat()).await.expect("queue heartbeat");
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        authorize(&mut request, &registration.node_token);
        let commands = client.connect(request).await.expect("connect").into_inner();
        // Keep the lease alive while the test runs.
        let beat = tx.clone();
        tokio::spawn(async move {
            while beat.send(heartbeat()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            node: node.into(),
            token: registration.node_token,
            client,
            commands,
            _events: tx,
        }
    }

    async fn next_assignment(&mut self) -> v1::AssignJob {
        loop {
            let command = tokio::time::timeout(Duration::from_secs(20), self.commands.message())
                .await
                .expect("an assignment in time")
                .expect("stream open")
                .expect("a command");
            if let Some(v1::controller_command::Command::AssignJob(job)) = command.command {
                return job;
            }
        }
    }

    async fn report(
        &mut self,
        token: &str,
        result: v1::StepResult,
    ) -> Result<v1::Ack, tonic::Status> {
        let mut request = tonic::Request::new(result);
        authorize(&mut request, token);
        self.client
            .report_result(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

fn heartbeat() -> v1::AgentEvent {
    v1::AgentEvent {
        event: Some(v1::agent_event::Event::Heartbeat(v1::Heartbeat::default())),
    }
}

fn authorize<T>(request: &mut tonic::Request<T>, token: &str) {
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
    request.metadata_mut().insert("authorization", value);
}

fn passed_result(job: &v1::AssignJob, step_index: u32) -> v1::StepResult {
    let now = prost_types::Timestamp {
        seconds: 1_767_225_600,
        nanos: 0,
    };
    v1::StepResult {
        job_id: job.job_id.clone(),
        step_index,
        step_name: job.steps[step_index as usize].name.clone(),
        attempt: 1,
        lease_epoch: job.lease_epoch,
        outcome: v1::Outcome::Passed as i32,
        exit_code: Some(0),
        started_at: Some(now),
        finished_at: Some(now),
        inventory: Some(v1::Inventory {
            driver_version: "550.54.15".into(),
            gpu_source: "simulated".into(),
            ..Default::default()
        }),
        message: "exit code 0".into(),
        ..Default::default()
    }
}

const ONE_STEP_PLAN: &str = "name: one-step\nselector: {sku: hgx-h100}\nsteps:\n  - {name: only, kind: exec, command: [\"true\"]}\n";

/// A controller, a [`FakeAgent`] `fake-1`, and the job of a one-step run it was assigned.
struct AssignedJob {
    controller: Controller,
    agent: FakeAgent,
    clients: tollgate_tests::Clients,
    run: v1::Run,
    job: v1::AssignJob,
}

impl AssignedJob {
    /// `None` when `backend` is not available.
    async fn start(backend: Backend) -> Option<Self> {
        let controller = Controller::start(ControllerOptions::new(backend)).await?;
        let mut agent = FakeAgent::connect(&controller, "fake-1").await;
        let mut clients = controller.clients().await;
        let run = clients.start_qualification("r550", 1, ONE_STEP_PLAN).await;
        let job = agent.next_assignment().await;
        assert_eq!(job.run_id, run.id);
        Some(Self {
            controller,
            agent,
            clients,
            run,
            job,
        })
    }
}

async fn result_uploaded_twice_is_stored_once(backend: Backend) {
    let Some(AssignedJob {
        controller: _controller,
        mut agent,
        mut clients,
        run,
        job,
    }) = AssignedJob::start(backend).await
    else {
        return;
    };
    let token = agent.token.clone();
    let first = agent
        .report(&token, passed_result(&job, 0))
        .await
        .expect("first upload");
    assert!(!first.duplicate);
    let second = agent
        .report(&token, passed_result(&job, 0))
        .await
        .expect("repeat upload is acknowledged");
    assert!(second.duplicate, "the repeat is recognized as one");

    let run = clients.wait_run_done(&run.id).await;
    assert_eq!(
        run.jobs[0].results.len(),
        1,
        "stored once: {:?}",
        run.jobs[0].results
    );
    assert_eq!(run.jobs[0].state, "passed");
}

/// A result is stored as its agent sent it, telemetry summaries, series and events
/// included: while it waits for its write its handler keeps decoded only what deciding
/// reads, the row holds the rest.
async fn a_reported_result_is_stored_whole(backend: Backend) {
    let Some(AssignedJob {
        controller,
        mut agent,
        mut clients,
        run,
        job,
    }) = AssignedJob::start(backend).await
    else {
        return;
    };
    let token = agent.token.clone();
    let mut result = passed_result(&job, 0);
    result.telemetry = vec![v1::GpuTelemetry {
        gpu_index: 0,
        gpu_uuid: "GPU-0".into(),
        fields: vec![v1::FieldSummary {
            field: "gpu_temp_c".into(),
            min: 40.0,
            max: 71.5,
            mean: 60.25,
            p99: 71.0,
            last: 65.0,
            samples: 30,
        }],
        samples_missed: 1,
    }];
    result.series = vec![v1::TelemetrySeries {
        gpu_index: 0,
        field: "gpu_temp_c".into(),
        bucket_ms: 1_000,
        points: (0..3)
            .map(|i| v1::SeriesPoint {
                offset_ms: i * 1_000,
                mean: 50.0 + i as f64,
                min: 49.0 + i as f64,
                max: 51.0 + i as f64,
                samples: 10,
            })
            .collect(),
    }];
    result.events = vec![v1::GpuEvent {
        gpu_index: 0,
        gpu_uuid: "GPU-0".into(),
        kind: "xid".into(),
        code: 79,
        at: result.started_at,
        detail: "fallen off the bus?".into(),
    }];
    agent.report(&token, result).await.expect("stored");
    clients.wait_run_done(&run.id).await;

    let stored = controller
        .shared()
        .store
        .results_of_job(&tollgate_domain::JobId::new(job.job_id.clone()))
        .await
        .expect("read back");
    assert_eq!(stored.len(), 1, "{stored:?}");
    let stored = &stored[0];
    assert_eq!(stored.telemetry.len(), 1, "{stored:?}");
    assert_eq!(stored.telemetry[0].samples_missed, 1);
    let summary = &stored.telemetry[0].fields[..];
    assert_eq!(summary.len(), 1, "{summary:?}");
    assert_eq!(
        (summary[0].field.name(), summary[0].max, summary[0].mean),
        ("gpu_temp_c", 71.5, 60.25)
    );
    assert_eq!(stored.series.len(), 1, "{stored:?}");
    let means: Vec<f64> = stored.series[0].points.iter().map(|p| p.mean).collect();
    assert_eq!(means, [50.0, 51.0, 52.0]);
    assert_eq!(stored.events.len(), 1, "{stored:?}");
    assert_eq!(stored.events[0].code, 79);
}

/// The controller keeps a gate's evidence in memory with only the telemetry its rules read: a
/// new version of the gate reading another field judges that field's values, stored all along.
async fn a_new_gate_policy_judges_telemetry_the_old_one_did_not_read(backend: Backend) {
    let Some(AssignedJob {
        controller: _controller,
        mut agent,
        mut clients,
        run,
        job,
    }) = AssignedJob::start(backend).await
    else {
        return;
    };
    let token = agent.token.clone();
    let mut result = passed_result(&job, 0);
    let summary = |field: &str, max: f64| v1::FieldSummary {
        field: field.into(),
        min: max - 10.0,
        max,
        mean: max - 5.0,
        p99: max,
        last: max,
        samples: 30,
    };
    result.telemetry = vec![v1::GpuTelemetry {
        gpu_index: 0,
        gpu_uuid: "GPU-0".into(),
        fields: vec![summary("gpu_temp_c", 71.5), summary("power_w", 700.0)],
        samples_missed: 0,
    }];
    // On the release under test: its driver and the GPU's VBIOS.
    result.inventory.as_mut().expect("inventory").gpus = vec![v1::GpuInfo {
        index: 0,
        uuid: "GPU-0".into(),
        name: "NVIDIA H100 80GB HBM3".into(),
        pci_bus_id: "00000000:18:00.0".into(),
        vbios_version: "96.00.89.00.01".into(),
        ..Default::default()
    }];
    agent.report(&token, result).await.expect("stored");
    clients.wait_run_done(&run.id).await;

    let gate = |rule: &str| format!("milestone: lab-qual\nrules:\n  - {rule}\n");
    clients
        .apply_gate(&gate(
            r#"telemetry: {field: gpu_temp_c, aggregate: max, condition: "< 88"}"#,
        ))
        .await;
    for _ in 0..2 {
        let decision = clients.evaluate("r550").await;
        assert_eq!(decision.verdict, "passed", "{decision:#?}");
    }
    clients
        .apply_gate(&gate(
            r#"telemetry: {field: power_w, aggregate: max, condition: "< 600"}"#,
        ))
        .await;
    let decision = clients.evaluate("r550").await;
    assert_eq!(decision.verdict, "failed", "{decision:#?}");
    let rule = &decision.rules[0];
    assert_eq!(rule.rule_id, "telemetry:power_w");
    assert!(rule.reason.contains("is 700"), "{}", rule.reason);
}

async fn agent_cannot_act_as_another_node(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let mut alice = FakeAgent::connect(&controller, "fake-a").await;
    let mut mallory = FakeAgent::connect(&controller, "fake-m").await;
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(2).await;
    clients.create_release("r550").await;
    clients.apply_plan(ONE_STEP_PLAN).await;
    clients.start_run("r550", "one-step").await;
    let alice_job = alice.next_assignment().await;
    let _mallory_job = mallory.next_assignment().await;

    // Mallory uploads a result for Alice's job with Mallory's own token.
    let token = mallory.token.clone();
    let denied = mallory
        .report(&token, passed_result(&alice_job, 0))
        .await
        .expect_err("another node's job");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // Registering as Alice without Alice's token is refused too.
    let mut client = v1::agent_service_client::AgentServiceClient::new(controller.channel().await);
    let denied = client
        .register(v1::RegisterRequest {
            node_name: alice.node.clone(),
            inventory: Some(v1::Inventory {
                gpu_source: "simulated".into(),
                ..Default::default()
            }),
            node_token: mallory.token.clone(),
            ..Default::default()
        })
        .await
        .expect_err("taking over another node");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // A call without a token is unauthenticated.
    let unauthenticated = client
        .report_result(passed_result(&alice_job, 0))
        .await
        .expect_err("no token");
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
}

/// Sixteen agents register the same new node name at the same moment, none with a token:
/// exactly one is registered and gets a token, every other is refused (`PermissionDenied`,
/// saying what to do), and the winner's token is the one the node keeps: it registers again
/// with it.
async fn agents_claiming_one_new_node_at_once_leave_it_one_token(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let channel = controller.channel().await;
    let register = |node_token: String| {
        let mut client = v1::agent_service_client::AgentServiceClient::new(channel.clone());
        async move {
            client
                .register(v1::RegisterRequest {
                    node_name: "contested".into(),
                    inventory: Some(v1::Inventory {
                        gpu_source: "simulated".into(),
                        ..Default::default()
                    }),
                    node_token,
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let outcomes = futures::future::join_all((0..16).map(|_| register(String::new()))).await;
    let tokens: Vec<String> = outcomes
        .iter()
        .filter_map(|outcome| outcome.as_ref().ok())
        .map(|registration| registration.node_token.clone())
        .collect();
    assert_eq!(tokens.len(), 1, "one claimant gets the node: {outcomes:#?}");
    for refused in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("node-token"),
            "says which file to restore: {refused:?}"
        );
    }
    let again = register(tokens[0].clone())
        .await
        .expect("the winner's token is the node's");
    assert_eq!(again.node_token, tokens[0]);
}

async fn killed_agent_leaves_its_job_lost(backend: Backend) {
    let mut options = ControllerOptions::new(backend);
    options.lease_grace = Duration::from_millis(1500);
    let Some(controller) = Controller::start(options).await else {
        return;
    };
    let agent = Agent::start(&controller.url, "lab-1", 1, &[]);
    let mut clients = controller.clients().await;
    let run = clients
        .start_qualification("r550", 1, &plan_yaml(30.0))
        .await;

    // Kill the agent once its job is under way.
    clients
        .wait_run(&run.id, Duration::from_secs(20), "the job to run", |run| {
            run.jobs[0].state == "running"
        })
        .await;
    agent.kill();

    let run = clients.wait_run_done(&run.id).await;
    assert_eq!(run.jobs[0].state, "lost");
    assert_eq!(clients.node("lab-1").await.state, "unreachable");
}

async fn gate_show_json_has_one_entry_per_rule(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let mut clients = controller.clients().await;
    clients.create_release("r550").await;
    clients.apply_gate(&gate_yaml(3)).await;
    let output = tollgate(
        &controller.url,
        &[
            "gate",
            "show",
            "--release",
            "r550",
            "--milestone",
            "lab-qual",
            "-o",
            "json",
        ],
    )
    .await;
    assert!(output.status.success(), "stderr: {}", text(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
    assert_eq!(json["verdict"], "waiting", "no run yet: {json}");
    let rules = json["rules"].as_array().expect("rules array");
    assert_eq!(rules.len(), 5);
    assert!(
        rules
            .iter()
            .all(|r| r["verdict"] == "waiting"
                && r["reason"].as_str().is_some_and(|s| !s.is_empty()))
    );
}
