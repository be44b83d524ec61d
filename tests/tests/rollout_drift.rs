//! End to end: drift after a rollout. A small rollout completes on two simulated nodes; one
//! of them comes back (its agent restarted) reporting an older VBIOS than the release brought
//! it to: `rollout show` lists it with expected and reported versions, `node list` marks it,
//! `node list --components` (text and `-o json`, filtered by selector) says which nodes run
//! which versions, the fleet page and rollout page show it and `/metrics` counts it. Brought back to the expected
//! VBIOS, it is no longer flagged. Runs the real CLI binary (`cargo build --workspace --bins`
//! first), on SQLite and on PostgreSQL (the latter when `TOLLGATE_TEST_DATABASE_URL` is set).

use std::time::Duration;
use tollgate_proto::v1;
use tollgate_tests::http::{self, Jar};
use tollgate_tests::process::tollgate_ok;
use tollgate_tests::{Agent, Backend, Clients, Controller, ControllerOptions, rollout, wait_for};

tollgate_tests::on_both_backends!(a_node_reporting_other_firmware_after_a_rollout_is_flagged);

/// The VBIOS the release brings nodes to (`Clients::create_release`).
const EXPECTED: &str = "96.00.89.00.01";
/// The VBIOS prod-2 comes back with.
const OLD: &str = "96.00.74.00.01";

/// Waits until `node` reports `vbios` on its GPUs.
async fn wait_vbios(clients: &Clients, node: &str, vbios: &str) {
    let what = format!("{node} to report VBIOS {vbios}");
    wait_for(Duration::from_secs(60), &what, || {
        let mut clients = clients.clone();
        let name = node.to_owned();
        async move {
            let node = clients
                .nodes
                .get_node(v1::GetNodeRequest { name })
                .await
                .ok()?
                .into_inner();
            let inventory = node.inventory?;
            (!inventory.gpus.is_empty()
                && inventory.gpus.iter().all(|gpu| gpu.vbios_version == vbios))
            .then_some(())
        }
    })
    .await;
}

async fn a_node_reporting_other_firmware_after_a_rollout_is_flagged(backend: Backend) {
    let mut options = ControllerOptions::new(backend);
    options.http = true;
    let Some(mut controller) = Controller::start(options).await else {
        return;
    };
    let url = controller.url.clone();
    let addr = controller.http_addr.expect("the dashboard listens");
    let lab = Agent::start(&url, "lab-1", 1, &[]);
    let mut prod = rollout::prod_agents(&url, 2);
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(3).await;
    let started = rollout::start(&mut clients, "r1", &[]).await;
    let done = rollout::wait_phase(&clients, &started.id, "completed").await;
    assert!(done.drifted.is_empty(), "{done:?}");

    // Nothing drifted yet: both nodes run what the rollout brought them to.
    let listed = tollgate_ok(&url, &["node", "list"]).await;
    assert!(!listed.contains("drift:"), "{listed}");
    let shown = tollgate_ok(&url, &["rollout", "show", &started.id]).await;
    assert!(!shown.contains("drifted"), "{shown}");

    // prod-2 comes back with its old VBIOS.
    let prod_2 = prod.pop().expect("prod-2");
    let prod_2 = prod_2
        .shut_down()
        .await
        .start_with_faults(&[&format!("vbios={OLD}")]);
    wait_vbios(&clients, "prod-2", OLD).await;

    let shown = tollgate_ok(&url, &["rollout", "show", &started.id]).await;
    assert!(
        shown.contains("drifted since this rollout updated them (expected vs reported):")
            && shown.contains(&format!("    prod-2 vbios: {EXPECTED} vs {OLD}")),
        "{shown}"
    );
    assert!(!shown.contains("prod-1 vbios"), "{shown}");
    let json: serde_json::Value = serde_json::from_str(
        &tollgate_ok(&url, &["rollout", "show", &started.id, "-o", "json"]).await,
    )
    .expect("rollout show -o json");
    assert_eq!(
        json["drifted"],
        serde_json::json!([{
            "rollout": started.id,
            "node": "prod-2",
            "component": "vbios",
            "expected": EXPECTED,
            "reported": OLD,
        }]),
        "{json}"
    );

    let listed = tollgate_ok(&url, &["node", "list"]).await;
    let line = format!(
        "prod-2 drift: rollout {} expects vbios {EXPECTED}, reports {OLD}",
        started.id
    );
    assert!(listed.contains(&line), "{listed}");
    assert!(!listed.contains("prod-1 drift"), "{listed}");

    // Which nodes run which versions, by selector.
    let components = tollgate_ok(&url, &["node", "list", "--components", "-l", "role=prod"]).await;
    assert!(
        components.contains("NAME") && components.contains("VBIOS"),
        "{components}"
    );
    assert!(
        components.contains(OLD) && components.contains(&line),
        "{components}"
    );
    assert!(
        !components.contains("lab-1"),
        "the selector leaves lab-1 out: {components}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &tollgate_ok(
            &url,
            &[
                "node",
                "list",
                "--components",
                "-l",
                "role=prod",
                "-o",
                "json",
            ],
        )
        .await,
    )
    .expect("node list --components -o json");
    let nodes = json["nodes"].as_array().expect("nodes");
    let names: Vec<&str> = nodes
        .iter()
        .filter_map(|node| node["name"].as_str())
        .collect();
    assert_eq!(names, ["prod-1", "prod-2"], "{json}");
    assert_eq!(nodes[0]["vbios"], serde_json::json!([EXPECTED]), "{json}");
    assert_eq!(nodes[0]["rollout_drift"], serde_json::json!([]), "{json}");
    assert_eq!(nodes[1]["vbios"], serde_json::json!([OLD]), "{json}");
    assert_eq!(nodes[1]["driver"], "550.54.15", "{json}");
    assert_eq!(nodes[1]["rollout_drift"][0]["expected"], EXPECTED, "{json}");
    assert_eq!(nodes[1]["rollout_drift"][0]["reported"], OLD, "{json}");

    // The dashboard shows it on the fleet, the node and the rollout.
    let anonymous = Jar::default();
    let fleet = http::get(addr, "/fleet", &anonymous).await;
    assert_eq!(fleet.status, 200, "{}", fleet.body);
    assert_eq!(fleet.body.matches(">drifted<").count(), 1, "{}", fleet.body);
    assert!(
        fleet
            .body
            .contains(&format!("href=\"/rollouts/{}\"", started.id)),
        "{}",
        fleet.body
    );
    let scrape = http::get(addr, "/metrics", &anonymous).await;
    assert!(
        scrape.body.contains("\ntollgate_rollout_drifted_nodes 1\n"),
        "{}",
        scrape.body
    );
    let page = http::get(addr, &format!("/rollouts/{}", started.id), &anonymous).await;
    assert!(
        page.body.contains("Drift since this rollout") && page.body.contains(OLD),
        "{}",
        page.body
    );

    // Back on the expected VBIOS: no longer flagged.
    let prod_2 = prod_2.shut_down().await.start_repaired();
    wait_vbios(&clients, "prod-2", EXPECTED).await;
    let shown = tollgate_ok(&url, &["rollout", "show", &started.id]).await;
    assert!(!shown.contains("drifted"), "{shown}");
    let listed = tollgate_ok(&url, &["node", "list"]).await;
    assert!(!listed.contains("drift:"), "{listed}");
    let fleet = http::get(addr, "/fleet", &anonymous).await;
    assert!(!fleet.body.contains(">drifted<"), "{}", fleet.body);
    let scrape = http::get(addr, "/metrics", &anonymous).await;
    assert!(
        scrape.body.contains("\ntollgate_rollout_drifted_nodes 0\n"),
        "{}",
        scrape.body
    );

    prod_2.stop().await;
    for agent in prod {
        agent.stop().await;
    }
    lab.stop().await;
    controller.stop().await;
}
