//! Agents authenticate by the client certificate they got at enrollment (mutual TLS): the
//! certificate's node name is the node's identity, never a request field; a revoked
//! certificate is cut off at once.

use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1;
use tollgate_tests::{
    Agent, Backend, Controller, ControllerOptions, gate_yaml, plan_yaml, wait_for,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const ONE_STEP_PLAN: &str = "name: one-step\nselector: {sku: hgx-h100}\nsteps:\n  - {name: only, kind: exec, command: [\"true\"]}\n";

async fn tls_controller() -> Controller {
    let mut options = ControllerOptions::new(Backend::Sqlite);
    options.tls = true;
    Controller::start(options)
        .await
        .expect("sqlite always runs")
}

/// Waits until the command stream ends; false if it is still open after 10 s.
async fn stream_ends(commands: &mut tonic::Streaming<v1::ControllerCommand>) -> bool {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match commands.message().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await
    .is_ok()
}

async fn bootstrap_token(controller: &Controller, node: &str) -> String {
    controller
        .clients()
        .await
        .nodes
        .enroll_node(v1::EnrollNodeRequest {
            node_name: node.to_owned(),
            labels: [("sku".to_owned(), "hgx-h100".to_owned())]
                .into_iter()
                .collect(),
            ttl_seconds: 3600,
        })
        .await
        .expect("a bootstrap token")
        .into_inner()
        .bootstrap_token
}

/// Enrolls `node` with a key made here; returns a channel presenting its certificate.
async fn enrolled_channel(controller: &Controller, node: &str) -> Channel {
    let token = bootstrap_token(controller, node).await;
    let (key_pem, csr_pem) = tollgate_agent::identity::new_request(node).expect("a CSR");
    let enrolled = v1::agent_service_client::AgentServiceClient::new(controller.channel().await)
        .enroll(v1::EnrollRequest {
            node_name: node.to_owned(),
            bootstrap_token: token,
            csr_pem,
        })
        .await
        .expect("enrolled")
        .into_inner();
    let ca = std::fs::read(controller.ca_file.as_ref().expect("TLS")).expect("CA");
    Endpoint::from_shared(controller.url.clone())
        .expect("url")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .identity(Identity::from_pem(enrolled.certificate_pem, key_pem)),
        )
        .expect("TLS settings")
        .connect()
        .await
        .expect("an mTLS connection")
}

fn register_request(node: &str) -> v1::RegisterRequest {
    v1::RegisterRequest {
        node_name: node.into(),
        labels: [("sku".to_owned(), "hgx-h100".to_owned())]
            .into_iter()
            .collect(),
        inventory: Some(v1::Inventory {
            driver_version: "550.54.15".into(),
            gpu_source: "simulated".into(),
            hostname: node.into(),
            ..Default::default()
        }),
        agent_version: "test".into(),
        node_token: String::new(),
    }
}

fn heartbeat() -> v1::AgentEvent {
    v1::AgentEvent {
        event: Some(v1::agent_event::Event::Heartbeat(v1::Heartbeat::default())),
    }
}

/// Registers over `channel` (no token: the certificate says who it is) and opens the
/// stream, heartbeating; returns the command stream.
async fn connect(channel: Channel, node: &str) -> tonic::Streaming<v1::ControllerCommand> {
    let mut client = v1::agent_service_client::AgentServiceClient::new(channel);
    client
        .register(register_request(node))
        .await
        .expect("register");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(heartbeat()).await.expect("queue");
    let commands = client
        .connect(ReceiverStream::new(rx))
        .await
        .expect("connect")
        .into_inner();
    tokio::spawn(async move {
        while tx.send(heartbeat()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    commands
}

async fn next_assignment(commands: &mut tonic::Streaming<v1::ControllerCommand>) -> v1::AssignJob {
    loop {
        let command = tokio::time::timeout(Duration::from_secs(20), commands.message())
            .await
            .expect("an assignment in time")
            .expect("stream open")
            .expect("a command");
        if let Some(v1::controller_command::Command::AssignJob(job)) = command.command {
            return job;
        }
    }
}

fn passed_result(job: &v1::AssignJob) -> v1::StepResult {
    let now = prost_types::Timestamp {
        seconds: 1_767_225_600,
        nanos: 0,
    };
    v1::StepResult {
        job_id: job.job_id.clone(),
        step_index: 0,
        step_name: job.steps[0].name.clone(),
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

#[tokio::test]
async fn an_enrolled_agent_runs_a_job_over_mutual_tls() {
    let controller = tls_controller().await;
    let token = bootstrap_token(&controller, "mtls-1").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).expect("token file");
    let mut config = controller.agent_config("mtls-1", 1);
    config.bootstrap_token_file = Some(token_file);
    let agent = Agent::start_config(config);
    let mut clients = controller.clients().await;
    let run = clients
        .qualify("r-mtls", 1, &plan_yaml(0.2), &gate_yaml(1))
        .await;
    assert_eq!(run.jobs.len(), 1, "{run:?}");
    assert_eq!(run.jobs[0].node, "mtls-1", "{run:?}");
    assert_eq!(run.jobs[0].state, "passed", "{run:?}");
    agent.stop().await;
}

#[tokio::test]
async fn an_agent_acts_only_as_the_node_its_certificate_names() {
    let controller = tls_controller().await;
    let alice = enrolled_channel(&controller, "mtls-a").await;
    let bob = enrolled_channel(&controller, "mtls-b").await;
    let mut alice_commands = connect(alice.clone(), "mtls-a").await;
    let mut bob_commands = connect(bob.clone(), "mtls-b").await;
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(2).await;
    clients.create_release("r-mtls").await;
    clients.apply_plan(ONE_STEP_PLAN).await;
    clients.start_run("r-mtls", "one-step").await;
    let _alice_job = next_assignment(&mut alice_commands).await;
    let bob_job = next_assignment(&mut bob_commands).await;

    // Alice's certificate, Bob's job.
    let mut as_alice = v1::agent_service_client::AgentServiceClient::new(alice.clone());
    let denied = as_alice
        .report_result(passed_result(&bob_job))
        .await
        .expect_err("another node's job");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // Alice's certificate, registering as Bob.
    let denied = as_alice
        .register(register_request("mtls-b"))
        .await
        .expect_err("registering as another node");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("names node mtls-a"), "{denied:?}");

    // No certificate at all: managers may connect, an agent call is refused.
    let mut anonymous =
        v1::agent_service_client::AgentServiceClient::new(controller.channel().await);
    let refused = anonymous
        .report_result(passed_result(&bob_job))
        .await
        .expect_err("no certificate");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("missing node certificate"),
        "{refused:?}"
    );

    // Bob's own certificate is accepted.
    v1::agent_service_client::AgentServiceClient::new(bob)
        .report_result(passed_result(&bob_job))
        .await
        .expect("Bob reports his own job");
}

#[tokio::test]
async fn revoking_a_node_cuts_its_open_agent_off() {
    let controller = tls_controller().await;
    let channel = enrolled_channel(&controller, "mtls-r").await;
    let mut commands = connect(channel.clone(), "mtls-r").await;
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(1).await;

    let revoked = clients
        .nodes
        .revoke_node(v1::RevokeNodeRequest {
            node_name: "mtls-r".into(),
        })
        .await
        .expect("revoked")
        .into_inner();
    assert_eq!(revoked.serials.len(), 1, "{revoked:?}");

    // The open stream ends...
    assert!(
        stream_ends(&mut commands).await,
        "the revoked node's stream must be closed"
    );
    // ...every call on the open connection is refused...
    let refused = v1::agent_service_client::AgentServiceClient::new(channel)
        .register(register_request("mtls-r"))
        .await
        .expect_err("revoked");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
    // ...and the node shows as disconnected.
    wait_for(Duration::from_secs(10), "mtls-r disconnected", || {
        let mut clients = clients.clone();
        async move {
            let nodes = clients.try_list_nodes().await?;
            nodes
                .iter()
                .find(|node| node.name == "mtls-r" && node.state != "ready")
                .map(|_| ())
        }
    })
    .await;

    let again = clients
        .nodes
        .revoke_node(v1::RevokeNodeRequest {
            node_name: "mtls-r".into(),
        })
        .await
        .expect_err("nothing left to revoke");
    assert_eq!(again.code(), Code::NotFound, "{again:?}");
}

#[tokio::test]
async fn a_certificate_is_renewed_while_its_job_keeps_running() {
    let mut options = ControllerOptions::new(Backend::Sqlite);
    options.tls = true;
    options.node_certificate_lifetime = Some(Duration::from_secs(4));
    let controller = Controller::start(options)
        .await
        .expect("sqlite always runs");
    let token = bootstrap_token(&controller, "mtls-rot").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).expect("token file");
    let mut config = controller.agent_config("mtls-rot", 1);
    config.bootstrap_token_file = Some(token_file);
    let agent = Agent::start_config(config);
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(1).await;
    let first = std::fs::read_to_string(agent.state_dir.join("node.crt")).expect("enrolled");

    // One step of 7 s: the 4 s certificate is renewed (at 70-90 %) while it runs.
    let run = clients
        .qualify("r-rot", 1, &plan_yaml(7.0), &gate_yaml(1))
        .await;
    assert_eq!(run.jobs[0].state, "passed", "{run:?}");
    let last = std::fs::read_to_string(agent.state_dir.join("node.crt")).expect("kept");
    assert_ne!(first, last, "the certificate was renewed");
    let mut audit = v1::audit_service_client::AuditServiceClient::new(controller.channel().await);
    let n_renewals = audit
        .list_audit(v1::ListAuditRequest::default())
        .await
        .expect("audit")
        .into_inner()
        .entries
        .iter()
        .filter(|entry| entry.action == "node.renew")
        .count();
    assert!(n_renewals >= 1, "{n_renewals} renewals");
    agent.stop().await;
}

/// Replicas on one PostgreSQL: a node revoked through one replica is cut off on another,
/// where its agent holds its stream, within the replicas' sync interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_on_one_replica_cuts_the_agent_off_on_another() {
    let mut options = ControllerOptions::new(Backend::Postgres);
    options.tls = true;
    let Some(first) = Controller::start(options).await else {
        return;
    };
    let second = first.replica().await;
    let channel = enrolled_channel(&second, "mtls-replica").await;
    let mut commands = connect(channel.clone(), "mtls-replica").await;
    let mut clients = first.clients().await;
    // The first replica sees the node connected although its stream is on the second.
    clients.wait_ready_nodes(1).await;

    clients
        .nodes
        .revoke_node(v1::RevokeNodeRequest {
            node_name: "mtls-replica".into(),
        })
        .await
        .expect("revoked");
    assert!(
        stream_ends(&mut commands).await,
        "the stream on the other replica must be closed"
    );
    let refused = v1::agent_service_client::AgentServiceClient::new(channel)
        .register(register_request("mtls-replica"))
        .await
        .expect_err("revoked on the other replica too");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
}
