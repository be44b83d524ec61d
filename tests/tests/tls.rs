//! TLS on the controller's listener: the CLI and agents reach it over `https://` trusting the
//! lab CA, and a client trusting another CA, or speaking plain text, gets nothing.
//!
//! Runs the `tollgate` binary: build the binaries first (`cargo build --bins`).

use std::time::Duration;
use tollgate_proto::v1;
use tollgate_tests::process::{text, tollgate_tls};
use tollgate_tests::{Backend, Controller, ControllerOptions};

async fn tls_controller() -> Controller {
    let mut options = ControllerOptions::new(Backend::Sqlite);
    options.tls = true;
    Controller::start(options)
        .await
        .expect("sqlite always runs")
}

#[tokio::test]
async fn the_cli_works_over_tls() {
    // (An agent over TLS needs its enrolled certificate: see mtls.rs.)
    let controller = tls_controller().await;
    assert!(controller.url.starts_with("https://"), "{}", controller.url);
    let ca_file = controller
        .ca_file
        .clone()
        .expect("a TLS controller has a CA");
    let made = tollgate_tls(
        &controller.url,
        &ca_file,
        &[
            "release",
            "create",
            "r-tls",
            "--component",
            "driver=550.54.15",
        ],
    )
    .await;
    assert!(made.status.success(), "{}", text(&made.stderr));
    let listed = tollgate_tls(
        &controller.url,
        &ca_file,
        &["release", "list", "-o", "json"],
    )
    .await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(
        text(&listed.stdout).contains("r-tls"),
        "{}",
        text(&listed.stdout)
    );
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
