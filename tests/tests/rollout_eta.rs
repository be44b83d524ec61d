//! End to end: a rollout says when it should end. While nodes are in procedure, `GetRollout`
//! carries an estimate in the future with the nodes it still counts (each assumed to take the
//! procedure plan's step timeouts until one was measured, then the median measured); a paused
//! rollout and an ended one carry none; `rollout show` prints it. `ListRollouts` (and
//! `rollout list`) answers it summarized, filtered by release and node. Runs the real CLI binary
//! (`cargo build --workspace --bins` first), on SQLite and on PostgreSQL (the latter when
//! `TOLLGATE_TEST_DATABASE_URL` is set).

use std::time::Duration;
use tollgate_proto::v1;
use tollgate_tests::process::tollgate_ok;
use tollgate_tests::{Agent, Backend, Clients, Controller, ControllerOptions, rollout, wait_for};

tollgate_tests::on_both_backends!(a_running_rollout_estimates_its_end_and_an_ended_one_does_not);

/// The procedure: an inventory check, then 2 s of flashing (timeout 1 min).
const SLOW_PROCEDURE: &str = r#"name: flash-or-fail
selector: {sku: hgx-h100}
steps:
  - {name: versions, kind: inventory-check, timeout: 30s}
  - name: flash
    kind: exec
    command: [sleep, "2"]
    timeout: 1m
"#;

async fn get(clients: &mut Clients, id: &str) -> v1::Rollout {
    clients
        .rollouts
        .get_rollout(v1::GetRolloutRequest { id: id.into() })
        .await
        .expect("get the rollout")
        .into_inner()
}

fn in_procedure(rollout: &v1::Rollout) -> usize {
    rollout
        .waves
        .iter()
        .flat_map(|wave| &wave.nodes)
        .filter(|node| node.progress == "in-procedure")
        .count()
}

async fn a_running_rollout_estimates_its_end_and_an_ended_one_does_not(backend: Backend) {
    let Some(mut controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let url = controller.url.clone();
    let _lab = Agent::start(&url, "lab-1", 1, &[]);
    let _prod = rollout::prod_agents(&url, 3);
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(4).await;
    let started = rollout::start_with(&mut clients, "r1", SLOW_PROCEDURE).await;

    // The canary in procedure, nothing measured yet: 30 s + 1 min assumed per node, three
    // nodes to go, so the end is at least that far off.
    let running = wait_for(Duration::from_secs(60), "the canary in procedure", || {
        let mut clients = clients.clone();
        let id = started.id.clone();
        async move {
            let rollout = get(&mut clients, &id).await;
            (rollout.phase == "running" && rollout.wave == 0 && in_procedure(&rollout) == 1)
                .then_some(rollout)
        }
    })
    .await;
    let eta = running
        .eta
        .as_ref()
        .expect("a running rollout has an estimate");
    let since = running.since.as_ref().expect("since").seconds;
    assert_eq!(running.eta_per_node_seconds, 90.0, "{running:?}");
    assert_eq!(running.eta_nodes_left, 3, "{running:?}");
    assert!(eta.seconds >= since + 90, "{eta:?} vs since {since}");
    let shown = tollgate_ok(&url, &["rollout", "show", &started.id]).await;
    assert!(
        shown.contains("  ends:    20") && shown.contains("(3 node(s) left, 90 s each)"),
        "{shown}"
    );

    // Paused: no estimate holds.
    let paused = clients
        .rollouts
        .pause_rollout(v1::RolloutActionRequest {
            id: started.id.clone(),
            reason: "look at the canary".into(),
        })
        .await
        .expect("pause")
        .into_inner();
    assert_eq!(paused.phase, "paused");
    let paused = get(&mut clients, &started.id).await;
    assert!(paused.eta.is_none(), "{paused:?}");
    assert_eq!(paused.eta_nodes_left, 0);
    clients
        .rollouts
        .resume_rollout(v1::RolloutActionRequest {
            id: started.id.clone(),
            reason: "canary fine".into(),
        })
        .await
        .expect("resume");

    // The canary measured (about 2 s): the estimate now assumes that, not the timeouts.
    let later = wait_for(Duration::from_secs(60), "wave 2 in procedure", || {
        let mut clients = clients.clone();
        let id = started.id.clone();
        async move {
            let rollout = get(&mut clients, &id).await;
            (rollout.wave == 1 && rollout.phase == "running" && rollout.eta.is_some())
                .then_some(rollout)
        }
    })
    .await;
    assert!(
        later.eta_per_node_seconds > 1.0 && later.eta_per_node_seconds < 30.0,
        "the measured canary's duration: {later:?}"
    );
    assert_eq!(later.eta_nodes_left, 2, "{later:?}");

    let done = rollout::wait_phase(&clients, &started.id, "completed").await;
    assert!(done.eta.is_none(), "{done:?}");
    let shown = tollgate_ok(&url, &["rollout", "show", &started.id]).await;
    assert!(shown.contains("  ends:    -\n"), "{shown}");
    let json: serde_json::Value = serde_json::from_str(
        &tollgate_ok(&url, &["rollout", "show", &started.id, "-o", "json"]).await,
    )
    .expect("rollout show -o json");
    assert_eq!(json["eta"], serde_json::Value::Null, "{json}");

    // The list answers each rollout summarized (however large the fleet): no node list, no
    // file; the waves planned and the nodes at each progress. Filtered by release and node.
    let list = |release: &str, node: &str| {
        let mut clients = clients.clone();
        let request = v1::ListRolloutsRequest {
            active_only: false,
            release: release.into(),
            node: node.into(),
        };
        async move {
            clients
                .rollouts
                .list_rollouts(request)
                .await
                .expect("list rollouts")
                .into_inner()
                .rollouts
        }
    };
    let listed = list("", "").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let summary = &listed[0];
    assert_eq!(summary.id, started.id);
    assert!(
        summary.waves.is_empty() && summary.file.is_empty(),
        "{summary:?}"
    );
    assert_eq!(summary.n_waves, 2);
    assert_eq!(
        summary
            .progress_counts
            .iter()
            .map(|count| (count.progress.as_str(), count.nodes))
            .collect::<Vec<_>>(),
        vec![("passed", 3)]
    );
    assert_eq!(done.n_waves, 2, "GetRollout says the same");
    assert_eq!(list("r1", "prod-2").await.len(), 1);
    assert!(list("", "lab-1").await.is_empty(), "lab-1 was in no wave");
    assert!(list("r2", "").await.is_empty());
    let listed = tollgate_ok(&url, &["rollout", "list", "--node", "prod-3"]).await;
    assert!(
        listed.contains(&started.id) && listed.contains("2/2") && listed.contains("passed 3"),
        "{listed}"
    );
    let listed = tollgate_ok(&url, &["rollout", "list", "--release", "r2"]).await;
    assert!(!listed.contains(&started.id), "{listed}");
    controller.stop().await;
}
