//! Enrollment: an operator's one-time bootstrap token becomes a node's client certificate,
//! once, in time, and for the token's node only; the labels given at enroll are the node's
//! labels of record.

use std::sync::Arc;
use std::time::Duration;
use tollgate_controller::clock::{Clock as _, ManualClock, SystemClock};
use tollgate_proto::v1;
use tollgate_tests::{Agent, Backend, Controller, ControllerOptions, wait_for};
use tonic::Code;

async fn tls_controller(clock: Option<Arc<ManualClock>>) -> Controller {
    let mut options = ControllerOptions::new(Backend::Sqlite);
    options.tls = true;
    options.clock = clock.map(|clock| clock as tollgate_controller::clock::SharedClock);
    Controller::start(options)
        .await
        .expect("sqlite always runs")
}

async fn bootstrap_token(
    controller: &Controller,
    node: &str,
    labels: &[(&str, &str)],
    ttl: u64,
) -> String {
    let mut nodes = controller.clients().await.nodes;
    nodes
        .enroll_node(v1::EnrollNodeRequest {
            node_name: node.to_owned(),
            labels: labels
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
            ttl_seconds: ttl,
        })
        .await
        .expect("a bootstrap token")
        .into_inner()
        .bootstrap_token
}

async fn enroll(
    controller: &Controller,
    node: &str,
    token: &str,
) -> Result<v1::EnrollResponse, tonic::Status> {
    let (_key, csr_pem) = tollgate_agent::identity::new_request(node).expect("a CSR");
    v1::agent_service_client::AgentServiceClient::new(controller.channel().await)
        .enroll(v1::EnrollRequest {
            node_name: node.to_owned(),
            bootstrap_token: token.to_owned(),
            csr_pem,
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn an_agent_enrolls_with_a_bootstrap_token_and_keeps_the_labels_of_record() {
    let controller = tls_controller(None).await;
    // The operator's command: the token on stdout, once.
    let ca_file = controller.ca_file.clone().expect("TLS");
    let made = tollgate_tests::process::tollgate_tls(
        &controller.url,
        &ca_file,
        &[
            "node",
            "enroll",
            "enr-1",
            "--labels",
            "sku=hgx-h200,site=lab-b",
            "--expires",
            "1h",
            "-o",
            "json",
        ],
    )
    .await;
    assert!(
        made.status.success(),
        "{}",
        tollgate_tests::process::text(&made.stderr)
    );
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).expect("JSON");
    assert_eq!(made["node_name"], "enr-1", "{made}");
    let token = made["bootstrap_token"]
        .as_str()
        .expect("the token")
        .to_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let mut config = controller.agent_config("enr-1", 1);
    config.bootstrap_token_file = Some(token_file);
    let agent = Agent::start_config(config);
    let clients = controller.clients().await;
    let node = wait_for(
        std::time::Duration::from_secs(20),
        "enr-1 registered",
        || {
            let mut clients = clients.clone();
            async move {
                clients
                    .try_list_nodes()
                    .await?
                    .into_iter()
                    .find(|n| n.name == "enr-1")
            }
        },
    )
    .await;
    let labels: std::collections::BTreeMap<_, _> = node.labels.into_iter().collect();
    assert_eq!(
        labels.get("sku").map(String::as_str),
        Some("hgx-h200"),
        "{labels:?}"
    );
    assert_eq!(
        labels.get("site").map(String::as_str),
        Some("lab-b"),
        "{labels:?}"
    );
    // What the agent says of itself (sku=hgx-h100, its --label) is shown as reported.
    let reported: std::collections::BTreeMap<_, _> = node.reported_labels.into_iter().collect();
    assert_eq!(
        reported.get("sku").map(String::as_str),
        Some("hgx-h100"),
        "{reported:?}"
    );
    assert!(!reported.contains_key("site"), "{reported:?}");
    let cert =
        std::fs::read_to_string(agent.state_dir.join("node.crt")).expect("the node's certificate");
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    // Its GPUs (simulated H100s) are not what its labels of record say (sku=hgx-h200).
    let suspect = wait_for(Duration::from_secs(20), "enr-1 suspect", || {
        let mut clients = clients.clone();
        async move {
            clients
                .try_list_nodes()
                .await?
                .into_iter()
                .find(|n| n.name == "enr-1" && n.health == "suspect")
        }
    })
    .await;
    assert!(
        suspect.health_reason.contains("sku=hgx-h200"),
        "{suspect:?}"
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_bootstrap_token_enrolls_once_in_time_and_only_its_node() {
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let controller = tls_controller(Some(clock.clone())).await;
    let token = bootstrap_token(&controller, "enr-a", &[], 3600).await;

    let other = enroll(&controller, "enr-b", &token)
        .await
        .expect_err("another node");
    assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");
    assert!(other.message().contains("enrolls node enr-a"), "{other:?}");

    let enrolled = enroll(&controller, "enr-a", &token)
        .await
        .expect("the token's node enrolls");
    assert!(
        enrolled
            .certificate_pem
            .starts_with("-----BEGIN CERTIFICATE-----")
    );

    let again = enroll(&controller, "enr-a", &token)
        .await
        .expect_err("a second use");
    assert_eq!(again.code(), Code::Unauthenticated, "{again:?}");
    assert!(again.message().contains("already used"), "{again:?}");

    let late = bootstrap_token(&controller, "enr-c", &[], 60).await;
    clock.advance(chrono::Duration::seconds(61));
    let expired = enroll(&controller, "enr-c", &late)
        .await
        .expect_err("expired");
    assert_eq!(expired.code(), Code::Unauthenticated, "{expired:?}");
    assert!(expired.message().contains("expired"), "{expired:?}");

    let unknown = enroll(&controller, "enr-a", "no-such-token")
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::Unauthenticated, "{unknown:?}");

    let mut audit = v1::audit_service_client::AuditServiceClient::new(controller.channel().await);
    let actions: Vec<String> = audit
        .list_audit(v1::ListAuditRequest::default())
        .await
        .expect("audit")
        .into_inner()
        .entries
        .into_iter()
        .map(|entry| entry.action)
        .collect();
    let count = |action: &str| actions.iter().filter(|a| *a == action).count();
    assert_eq!(count("node.enroll-token"), 2, "{actions:?}");
    assert_eq!(count("node.enroll"), 1, "{actions:?}");
    assert_eq!(count("node.enroll-refused"), 4, "{actions:?}");
}
