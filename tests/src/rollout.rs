//! Small rollouts for the tests of what shows them (the dashboard, drift): a production fleet
//! of simulated nodes `prod-1`.., a release qualified at `production` on one lab node, and a
//! rollout of one canary then the rest, through a procedure that fails on the nodes named.

use crate::{Agent, Clients, plan_yaml, wait_for};
use std::time::Duration;
use tollgate_proto::v1;

/// The production gate: the qualification plan passed on at least one node.
pub const PRODUCTION_GATE: &str = r#"milestone: production
rules:
  - steps-passed: {plan: gpu-qual, steps: [versions, stress], min-nodes: 1}
"#;

/// The procedure `flash-or-fail`: an inventory check, then a step failing on the nodes in
/// `fail_on`.
pub fn procedure(fail_on: &[&str]) -> String {
    let test = fail_on
        .iter()
        .map(|node| format!("[ \\\"$TOLLGATE_NODE\\\" != {node} ]"))
        .chain(std::iter::once("true".to_owned()))
        .collect::<Vec<_>>()
        .join(" && ");
    format!(
        r#"name: flash-or-fail
selector: {{sku: hgx-h100}}
steps:
  - {{name: versions, kind: inventory-check}}
  - name: flash
    kind: exec
    command: [sh, -c, "{test}"]
    timeout: 1m
"#
    )
}

/// The rollout file: one canary, then the rest; the procedure's steps must pass; one node
/// per rack at once; no rollback plan (a halt waits for a person).
pub const ROLLOUT: &str = r#"name: prod-small
selector: {sku: hgx-h100}
waves:
  - count: 1
  - percent: 100
procedure:
  plan: flash-or-fail
  on-interrupted: resume
health:
  - steps-passed: {id: procedure-passed, max-failed: 0}
limits:
  max-concurrent: {rack: 1}
"#;

/// Agents `prod-1`..`prod-N` (one GPU each) labelled `role=prod` and `rack=rK`, one rack each.
pub fn prod_agents(controller_url: &str, n: usize) -> Vec<Agent> {
    (1..=n)
        .map(|i| {
            let rack = format!("r{i}");
            Agent::start_labelled(
                controller_url,
                &format!("prod-{i}"),
                1,
                &[("role", "prod"), ("rack", rack.as_str())],
            )
        })
        .collect()
}

/// Creates `release`, qualifies it at `production` on one node (the first by name, a lab
/// node) and starts the rollout of [`ROLLOUT`] onto `role=prod` through [`procedure`] failing
/// on `fail_on`; returns it as started.
pub async fn start(clients: &mut Clients, release: &str, fail_on: &[&str]) -> v1::Rollout {
    start_with(clients, release, &procedure(fail_on)).await
}

/// As [`start`], with `procedure` (a plan named `flash-or-fail`) as the procedure.
pub async fn start_with(clients: &mut Clients, release: &str, procedure: &str) -> v1::Rollout {
    clients.create_release(release).await;
    let qualification = plan_yaml(0.05).replace(
        "selector: {sku: hgx-h100}\n",
        "selector: {sku: hgx-h100}\nnodes: 1\n",
    );
    clients.apply_plan(&qualification).await;
    clients.apply_plan(procedure).await;
    clients.apply_gate(PRODUCTION_GATE).await;
    let run = clients
        .runs
        .start_run(v1::StartRunRequest {
            release: release.into(),
            plan: "gpu-qual".into(),
            milestone: "production".into(),
            nodes_now: false,
        })
        .await
        .expect("start the production qualification")
        .into_inner();
    clients.wait_run_done(&run.id).await;
    clients
        .rollouts
        .start_rollout(v1::StartRolloutRequest {
            release: release.into(),
            fleet: "role=prod".into(),
            file: ROLLOUT.into(),
            file_name: "rollout.yaml".into(),
        })
        .await
        .expect("start the rollout")
        .into_inner()
}

/// Waits until rollout `id` is in `phase` with no node in procedure; returns it.
pub async fn wait_phase(clients: &Clients, id: &str, phase: &str) -> v1::Rollout {
    let what = format!("rollout {id} to be {phase}");
    wait_for(Duration::from_secs(120), &what, || {
        let mut clients = clients.clone();
        let id = id.to_owned();
        let phase = phase.to_owned();
        async move {
            let rollout = clients
                .rollouts
                .get_rollout(v1::GetRolloutRequest { id })
                .await
                .ok()?
                .into_inner();
            let settled = rollout
                .waves
                .iter()
                .flat_map(|wave| &wave.nodes)
                .all(|node| node.progress != "in-procedure");
            (rollout.phase == phase && settled).then_some(rollout)
        }
    })
    .await
}
