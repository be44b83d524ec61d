//! TLS on the controller's listener: the CLI and agents reach it over `https://` trusting the
//! lab CA, and a client trusting another CA, or speaking plain text, gets nothing.
//!
//! Runs the `tollgate` binary: build the binaries first (`cargo build --bins`).

use std::time::Duration;
use tollgate_proto::v1;
use tollgate_tests::process::{text, tollgate_tls};
use tollgate_tests::{Agent, Backend, Controller, ControllerOptions};

async fn tls_controller() -> Controller {
    let mut options = ControllerOptions::new(Backend::Sqlite);
    options.tls = true;
    Controller::start(options)
        .await
        .expect("sqlite always runs")
}

#[tokio::test]
async fn the_cli_and_an_agent_work_over_tls() {
    let controller = tls_controller().await;
    assert!(controller.url.starts_with("https://"), "{}", controller.url);
    let ca_file = controller
        .ca_file
        .clone()
        .expect("a TLS controller has a CA");
    let agent = Agent::start_config(controller.agent_config("tls-1", 1));
    let mut clients = controller.clients().await;
    let plan = tollgate_tests::plan_yaml(0.2);
    let run = clients
        .qualify("r-tls", 1, &plan, &tollgate_tests::gate_yaml(1))
        .await;
    assert_eq!(run.jobs.len(), 1, "{run:?}");
    assert_eq!(run.jobs[0].state, "passed", "{run:?}");

    let listed = tollgate_tls(&controller.url, &ca_file, &["node", "list", "-o", "json"]).await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(
        text(&listed.stdout).contains("tls-1"),
        "{}",
        text(&listed.stdout)
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_client_trusting_another_ca_or_speaking_plain_text_is_refused() {
    let controller = tls_controller().await;
    let other = tempfile::tempdir().expect("temp dir");
    tollgate_controller::pki::init_ca_now(other.path()).expect("another CA");
    let other_ca = other.path().join("ca.pem");

    let refused = tollgate_tls(&controller.url, &other_ca, &["node", "list"]).await;
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("cannot reach the controller"), "{stderr}");
    assert!(stderr.contains("--ca-file"), "{stderr}");

    // The same request with the right CA answers, so the refusal above was the CA's doing.
    let ca_file = controller.ca_file.clone().expect("CA");
    let answered = tollgate_tls(&controller.url, &ca_file, &["node", "list"]).await;
    assert!(answered.status.success(), "{}", text(&answered.stderr));

    // Plain HTTP/2 to the TLS listener gets no answer either.
    let plain_url = controller.url.replacen("https://", "http://", 1);
    let plain = async {
        let channel = tonic::transport::Endpoint::from_shared(plain_url)
            .expect("url")
            .connect()
            .await?;
        v1::node_service_client::NodeServiceClient::new(channel)
            .list_nodes(v1::ListNodesRequest::default())
            .await
            .map_err(anyhow::Error::from)?;
        anyhow::Ok(())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), plain)
        .await
        .expect("a plain-text client is turned away promptly");
    assert!(outcome.is_err(), "plain text must not be served over TLS");
}
