//! End to end: rollouts. A release that passed its `production` gate is rolled onto a fleet
//! of 20 simulated nodes (5 racks) in 4 waves by a real controller: every wave's nodes go
//! through the procedure plan as runs of their own, never more than one node per rack at
//! once (checked from the audit log of the whole rollout), a wave starts only once the one
//! before passed, and the rollout completes. A release without a passed `production` gate is
//! refused, naming the verdict. Every test runs on SQLite and on PostgreSQL (the latter when
//! `TOLLGATE_TEST_DATABASE_URL` is set).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tollgate_proto::v1;
use tollgate_tests::{Agent, Backend, Clients, Controller, ControllerOptions, plan_yaml, wait_for};

tollgate_tests::on_both_backends!(
    a_rollout_of_twenty_nodes_in_four_waves_completes_within_its_blast_radius,
    a_rollout_is_refused_until_the_release_passed_production,
);

/// The fleet: 20 nodes `prod-01`..`prod-20` with `role=prod`, racks `r1`..`r5` in turn.
fn fleet(url: &str) -> Vec<Agent> {
    (1..=20)
        .map(|i| {
            let rack = format!("r{}", (i - 1) % 5 + 1);
            Agent::start_labelled(
                url,
                &format!("prod-{i:02}"),
                1,
                &[("role", "prod"), ("rack", rack.as_str())],
            )
        })
        .collect()
}

/// The procedure (and, named `flash-previous`, the rollback): an inventory check and a short
/// step.
fn flash_plan(name: &str) -> String {
    format!(
        r#"name: {name}
selector: {{sku: hgx-h100}}
steps:
  - {{name: versions, kind: inventory-check}}
  - name: flash
    kind: exec
    command: [sh, -c, "sleep 0.2"]
    timeout: 1m
"#
    )
}

/// The rollout file: 2 canaries, then 25 %, 60 % and 100 % of the fleet; one node per rack
/// at once.
const ROLLOUT: &str = r#"name: prod-fleet
selector: {sku: hgx-h100}
waves:
  - count: 2
  - percent: 25
  - percent: 60
  - percent: 100
procedure:
  plan: flash-and-soak
  on-interrupted: resume
rollback:
  plan: flash-previous
health:
  - steps-passed: {max-failed: 0}
  - no-events: {xid: [79]}
soak: 1s
limits:
  max-concurrent: {rack: 1}
"#;

/// The production gate: the qualification plan passed on at least one node.
const PRODUCTION_GATE: &str = r#"milestone: production
rules:
  - steps-passed: {plan: gpu-qual, steps: [versions, stress], min-nodes: 1}
"#;

/// Creates release `r1`, applies the plans, and unless `qualify` is false runs the
/// qualification plan at `production` until its gate passes.
async fn prepare(clients: &mut Clients, qualify: bool) {
    clients.create_release("r1").await;
    clients.apply_plan(&plan_yaml(0.05)).await;
    clients.apply_plan(&flash_plan("flash-and-soak")).await;
    clients.apply_plan(&flash_plan("flash-previous")).await;
    clients.apply_gate(PRODUCTION_GATE).await;
    if !qualify {
        return;
    }
    let request = v1::StartRunRequest {
        release: "r1".into(),
        plan: "gpu-qual".into(),
        milestone: "production".into(),
        nodes_now: false,
    };
    let run = clients
        .runs
        .start_run(request)
        .await
        .expect("start the production qualification")
        .into_inner();
    clients.wait_run_done(&run.id).await;
}

fn start_request() -> v1::StartRolloutRequest {
    v1::StartRolloutRequest {
        release: "r1".into(),
        fleet: "role=prod".into(),
        file: ROLLOUT.into(),
        file_name: "rollout.yaml".into(),
    }
}

/// Waits until the rollout's phase is `phase`.
async fn wait_phase(clients: &Clients, id: &str, phase: &str) -> v1::Rollout {
    let what = format!("rollout {id} to be {phase}");
    wait_for(Duration::from_secs(180), &what, || {
        let mut clients = clients.clone();
        let id = id.to_owned();
        async move {
            let rollout = clients
                .rollouts
                .get_rollout(v1::GetRolloutRequest { id })
                .await
                .ok()?
                .into_inner();
            (rollout.phase == phase).then_some(rollout)
        }
    })
    .await
}

/// The rollout's node starts and ends, in the order the audit log recorded them.
async fn node_history(clients: &mut Clients, id: &str) -> Vec<(String, String)> {
    let subject = format!("rollout/{id}");
    let mut history = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = clients
            .audit
            .list_audit(v1::ListAuditRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list audit")
            .into_inner();
        for entry in page.entries {
            if entry.subject != subject
                || !matches!(
                    entry.action.as_str(),
                    "rollout.node-started" | "rollout.node-finished"
                )
            {
                continue;
            }
            let details: serde_json::Value =
                serde_json::from_str(&entry.details).expect("details are JSON");
            let node = details["event"]["node"]
                .as_str()
                .expect("the event names its node")
                .to_owned();
            history.push((entry.action, node));
        }
        if page.next_page_token.is_empty() {
            return history;
        }
        page_token = page.next_page_token;
    }
}

async fn a_rollout_of_twenty_nodes_in_four_waves_completes_within_its_blast_radius(
    backend: Backend,
) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let agents = fleet(&controller.url);
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(20).await;
    prepare(&mut clients, true).await;

    let started = clients
        .rollouts
        .start_rollout(start_request())
        .await
        .expect("start rollout")
        .into_inner();
    assert_eq!(started.release, "r1");
    assert_eq!(started.fleet, "role=prod");
    let sizes: Vec<usize> = started.waves.iter().map(|wave| wave.nodes.len()).collect();
    assert_eq!(sizes, [2, 3, 7, 8]);

    let done = wait_phase(&clients, &started.id, "completed").await;
    assert!(done.halt.is_none(), "{:?}", done.halt);
    let mut runs = BTreeSet::new();
    for node in done.waves.iter().flat_map(|wave| &wave.nodes) {
        assert_eq!(node.progress, "passed", "{node:?}");
        assert!(node.rollback_run.is_empty(), "{node:?}");
        // Each node ran the procedure as a run of its own, on exactly that node.
        let run = clients.run(&node.run).await;
        assert_eq!(run.plan_name, "flash-and-soak");
        assert_eq!(run.jobs.len(), 1, "{run:?}");
        assert_eq!(run.jobs[0].node, node.node);
        assert_eq!(run.jobs[0].state, "passed");
        runs.insert(node.run.clone());
    }
    assert_eq!(runs.len(), 20);

    // From the whole rollout's history: never two nodes of one rack in procedure at once, and
    // no node of a wave started before every node of the wave before it finished.
    let history = node_history(&mut clients, &started.id).await;
    let rack_of = |node: &str| -> String {
        let i: usize = node
            .trim_start_matches("prod-")
            .parse()
            .expect("node number");
        format!("r{}", (i - 1) % 5 + 1)
    };
    let wave_of: BTreeMap<String, usize> = done
        .waves
        .iter()
        .enumerate()
        .flat_map(|(idx, wave)| wave.nodes.iter().map(move |node| (node.node.clone(), idx)))
        .collect();
    let mut active: BTreeSet<String> = BTreeSet::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    for (action, node) in &history {
        if action == "rollout.node-started" {
            let rack = rack_of(node);
            assert!(
                !active.iter().any(|other| rack_of(other) == rack),
                "{node} started while {active:?} were in procedure: two on rack {rack}"
            );
            let wave = wave_of[node];
            for (other, other_wave) in &wave_of {
                if *other_wave < wave {
                    assert!(
                        finished.contains(other),
                        "{node} of wave {wave} started before {other} of wave {other_wave} finished"
                    );
                }
            }
            active.insert(node.clone());
        } else {
            assert!(active.remove(node), "{node} finished without starting");
            finished.insert(node.clone());
        }
    }
    assert_eq!(finished.len(), 20, "{history:?}");
    assert!(active.is_empty());

    for agent in agents {
        agent.stop().await;
    }
}

async fn a_rollout_is_refused_until_the_release_passed_production(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let agent = Agent::start_labelled(&controller.url, "prod-01", 1, &[("role", "prod")]);
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(1).await;
    prepare(&mut clients, false).await;
    let refused = clients
        .rollouts
        .start_rollout(start_request())
        .await
        .expect_err("no production evidence yet");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("has not passed its production gate: the decision is waiting"),
        "{}",
        refused.message()
    );
    let listed = clients
        .rollouts
        .list_rollouts(v1::ListRolloutsRequest { active_only: false })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.rollouts.is_empty());
    agent.stop().await;
}
