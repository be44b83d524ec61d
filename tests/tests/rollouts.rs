//! End to end: rollouts. A release that passed its `production` gate is rolled onto a fleet
//! of 20 simulated nodes (5 racks) in 4 waves by a real controller: every wave's nodes go
//! through the procedure plan as runs of their own, never more than one node per rack at
//! once (checked from the audit log of the whole rollout), a wave starts only once the one
//! before passed, and the rollout completes. An XID on a wave-2 node halts the rollout before
//! wave 3 starts and rolls back the nodes that went through the procedure; `rollout show`
//! names the node and the rule; without a rollback plan the rollout stays halted until a
//! person skips the wave. With `maintenance-windows` a node starts only inside a window, and
//! its procedure job runs there. Pause, resume and abort are audited with their reasons. A
//! `kill -9` of the controller mid-wave: the rollout goes on after the restart, no node started
//! twice; two replicas on one PostgreSQL store, each killed in turn mid-rollout: it completes
//! the same. A release without a passed `production` gate is refused, naming the verdict. Every
//! test runs on SQLite and on PostgreSQL (the latter when `TOLLGATE_TEST_DATABASE_URL` is set),
//! but the replicas' (PostgreSQL only).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tollgate_proto::v1;
use tollgate_tests::process::{ControllerProcess, Replicas, text, tollgate, tollgate_ok};
use tollgate_tests::{
    Agent, Backend, Clients, Controller, ControllerOptions, fresh_database_url, held_plan,
    plan_yaml, wait_for,
};
use tonic::Code;

tollgate_tests::on_both_backends!(
    a_rollout_of_twenty_nodes_in_four_waves_completes_within_its_blast_radius,
    an_xid_on_a_wave_two_node_halts_before_wave_three_and_rolls_back_that_wave,
    abort_with_rollback_rolls_back_every_updated_node,
    a_failed_rollback_halts_naming_the_node_and_waits_for_a_person,
    pause_resume_and_abort_are_audited_with_their_reasons,
    a_rollout_goes_on_after_kill_9_of_the_controller,
    under_on_interrupted_fail_a_kill_9_fails_the_node_in_procedure_and_halts,
    maintenance_windows_start_the_rollout_s_nodes_and_let_its_jobs_through,
    without_a_rollback_plan_a_halt_waits_for_a_person_who_skips_the_wave,
    a_rollout_is_refused_until_the_release_passed_production,
    an_xid_during_the_soak_of_wave_two_halts_before_wave_three,
    a_wave_two_node_hotter_than_its_cohort_halts_before_wave_three,
    a_fleet_like_its_cohort_completes_naming_what_it_could_not_compare,
    a_telemetry_limit_breached_during_the_soak_halts_naming_node_rule_and_value,
);

/// The rack of node `prod-NN`: `r1`..`r5` in turn.
fn rack_of(node: &str) -> String {
    let i: usize = node
        .trim_start_matches("prod-")
        .parse()
        .expect("node number");
    format!("r{}", (i - 1) % 5 + 1)
}

/// The fleet: `n` nodes `prod-01`.. with `role=prod` and their rack; `xid_node` sees XID 79
/// under its first load.
fn fleet_with(url: &str, n: usize, xid_node: Option<&str>) -> Vec<Agent> {
    fleet_faults(url, n, xid_node.unwrap_or_default(), &["xid=79"])
}

/// The fleet: `n` nodes `prod-01`.. with `role=prod` and their rack; `faulty` runs with
/// `faults` (simulated GPU faults, as `--fault` takes them).
fn fleet_faults(url: &str, n: usize, faulty: &str, faults: &[&str]) -> Vec<Agent> {
    fleet_configs(url, n, faulty, faults)
        .into_iter()
        .map(Agent::start_config)
        .collect()
}

/// The agents' configurations of [`fleet_faults`].
fn fleet_configs(
    url: &str,
    n: usize,
    faulty: &str,
    faults: &[&str],
) -> Vec<tollgate_agent::AgentConfig> {
    (1..=n)
        .map(|i| {
            let name = format!("prod-{i:02}");
            let mut config =
                tollgate_agent::AgentConfig::simulated(url, &name, 1, std::path::PathBuf::new());
            for (key, value) in [
                ("sku", "hgx-h100".to_owned()),
                ("role", "prod".to_owned()),
                ("rack", rack_of(&name)),
            ] {
                config.labels.insert(key.into(), value);
            }
            config.sample_interval = Duration::from_millis(100);
            if name == faulty {
                config.faults = faults
                    .iter()
                    .map(|fault| fault.parse().expect("valid fault"))
                    .collect();
            }
            config
        })
        .collect()
}

fn fleet(url: &str) -> Vec<Agent> {
    fleet_with(url, 20, None)
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
    command: [sh, -c, "sleep 0.5"]
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
  - no-events: {id: no-xid-79, xid: [79]}
soak: 1s
limits:
  max-concurrent: {rack: 1}
"#;

/// A rollout of one canary, then the rest, through `plan`, without a rollback plan.
fn two_waves(plan: &str) -> String {
    format!(
        r#"name: prod-two
selector: {{sku: hgx-h100}}
waves:
  - count: 1
  - percent: 100
procedure:
  plan: {plan}
  on-interrupted: resume
health:
  - steps-passed: {{max-failed: 0}}
limits:
  max-concurrent: {{rack: 1}}
"#
    )
}

/// The production gate: the qualification plan passed on at least one node.
const PRODUCTION_GATE: &str = r#"milestone: production
rules:
  - steps-passed: {plan: gpu-qual, steps: [versions, stress], min-nodes: 1}
"#;

/// Creates release `r1`, applies the plans, and unless `qualify` is false runs the
/// qualification plan at `production` until its gate passes.
async fn prepare(clients: &mut Clients, qualify: bool) {
    clients.create_release("r1").await;
    // Qualified on one node (the first by name): the others meet their first load in the
    // rollout.
    let qualification = plan_yaml(0.05).replace(
        "selector: {sku: hgx-h100}\n",
        "selector: {sku: hgx-h100}\nnodes: 1\n",
    );
    clients.apply_plan(&qualification).await;
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
    start_file(ROLLOUT)
}

fn start_file(file: &str) -> v1::StartRolloutRequest {
    v1::StartRolloutRequest {
        release: "r1".into(),
        fleet: "role=prod".into(),
        file: file.into(),
        file_name: "rollout.yaml".into(),
    }
}

/// Waits until the rollout satisfies `done`.
async fn wait_rollout(
    clients: &Clients,
    id: &str,
    what: &str,
    done: impl Fn(&v1::Rollout) -> bool,
) -> v1::Rollout {
    let what = format!("rollout {id}: {what}");
    wait_for(Duration::from_secs(180), &what, || {
        let mut clients = clients.clone();
        let id = id.to_owned();
        let rollout = async move {
            clients
                .rollouts
                .get_rollout(v1::GetRolloutRequest { id })
                .await
                .ok()
                .map(tonic::Response::into_inner)
        };
        async { rollout.await.filter(|rollout| done(rollout)) }
    })
    .await
}

/// The progress of `node` in the rollout.
fn progress_of<'a>(rollout: &'a v1::Rollout, node: &str) -> &'a str {
    rollout
        .waves
        .iter()
        .flat_map(|wave| &wave.nodes)
        .find(|n| n.node == node)
        .map_or("", |n| n.progress.as_str())
}

/// The nodes of wave `idx` (0-based).
fn wave_nodes(rollout: &v1::Rollout, idx: usize) -> Vec<&v1::RolloutNode> {
    rollout.waves[idx].nodes.iter().collect()
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

/// The rollout's audit entries as (action, details), in order.
async fn rollout_audit(
    clients: &mut Clients,
    id: &str,
) -> Vec<(String, String, serde_json::Value)> {
    let subject = format!("rollout/{id}");
    let mut entries = Vec::new();
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
            if entry.subject == subject {
                let details = serde_json::from_str(&entry.details).expect("details are JSON");
                entries.push((entry.action, entry.actor, details));
            }
        }
        if page.next_page_token.is_empty() {
            return entries;
        }
        page_token = page.next_page_token;
    }
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

/// From the whole rollout's audit log: never two nodes of one rack in procedure (or rolling
/// back) at once, no node started twice, and no node of a wave started before every node of
/// the waves before it finished. Returns the nodes that finished.
async fn assert_blast_radius(clients: &mut Clients, done: &v1::Rollout) -> BTreeSet<String> {
    let history = node_history(clients, &done.id).await;
    let wave_of: BTreeMap<String, usize> = done
        .waves
        .iter()
        .enumerate()
        .flat_map(|(idx, wave)| wave.nodes.iter().map(move |node| (node.node.clone(), idx)))
        .collect();
    let mut active: BTreeSet<String> = BTreeSet::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut started: BTreeSet<String> = BTreeSet::new();
    for (action, node) in &history {
        if action == "rollout.node-started" {
            let rack = rack_of(node);
            assert!(
                !active.iter().any(|other| rack_of(other) == rack),
                "{node} started while {active:?} were in procedure: two on rack {rack}"
            );
            // A rollback starts each node once more; a procedure only once.
            if !finished.contains(node) {
                assert!(started.insert(node.clone()), "{node} started twice");
                let wave = wave_of[node];
                for (other, other_wave) in &wave_of {
                    if *other_wave < wave {
                        assert!(
                            finished.contains(other),
                            "{node} of wave {wave} started before {other} of wave {other_wave} finished"
                        );
                    }
                }
            }
            active.insert(node.clone());
        } else {
            assert!(active.remove(node), "{node} finished without starting");
            finished.insert(node.clone());
        }
    }
    assert!(active.is_empty(), "{active:?} never finished");
    finished
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

    let finished = assert_blast_radius(&mut clients, &done).await;
    assert_eq!(finished.len(), 20);

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
    // Health rules that compare with a baseline are refused by name unless the file compares
    // each wave with its cohort, and the refusal says how.
    let compares = ROLLOUT.replace(
        "  - steps-passed: {max-failed: 0}\n",
        "  - baseline: {id: membw, measurement: membw_gbps, aggregate: mean, max-regression-pct: 5}\n  - no-regression: {id: rates}\n",
    );
    let refused = clients
        .rollouts
        .start_rollout(start_file(&compares))
        .await
        .expect_err("a baseline rule");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("file: health rule(s) membw, rates compare with a baseline")
            && refused.message().contains("set baseline-by-cohort: true"),
        "{}",
        refused.message()
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("rollout.yaml");
    std::fs::write(&path, &compares).expect("write the rollout file");
    let path = path.to_str().expect("a UTF-8 path");
    let cli = tollgate(
        &controller.url,
        &[
            "rollout",
            "start",
            "--release",
            "r1",
            "--fleet",
            "role=prod",
            "-f",
            path,
        ],
    )
    .await;
    assert!(!cli.status.success());
    let stderr = text(&cli.stderr);
    assert!(
        stderr.contains("health rule(s) membw, rates compare with a baseline")
            && stderr.contains("set baseline-by-cohort: true"),
        "{stderr}"
    );
    // With it, a cohort rule's measurement must be a telemetry field, named with its line.
    let cohort = compares.replace("health:", "baseline-by-cohort: true\nhealth:");
    let refused = clients
        .rollouts
        .start_rollout(start_file(&cohort))
        .await
        .expect_err("membw_gbps is no telemetry field");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("health[0].baseline.measurement: unknown telemetry field 'membw_gbps'")
            && refused.message().contains("rollout.yaml:"),
        "{}",
        refused.message()
    );
    // A valid cohort rule passes validation; only the missing production pass refuses it.
    let cohort = cohort.replace("membw_gbps", "gpu_temp_c");
    let refused = clients
        .rollouts
        .start_rollout(start_file(&cohort))
        .await
        .expect_err("no production evidence yet");
    assert_eq!(
        refused.code(),
        Code::FailedPrecondition,
        "{}",
        refused.message()
    );
    let listed = clients
        .rollouts
        .list_rollouts(v1::ListRolloutsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.rollouts.is_empty());
    agent.stop().await;
}

async fn an_xid_on_a_wave_two_node_halts_before_wave_three_and_rolls_back_that_wave(
    backend: Backend,
) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    // prod-04 is in wave 2 (prod-03..prod-05): its first load, the procedure, sees XID 79.
    let agents = fleet_with(&controller.url, 20, Some("prod-04"));
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(20).await;
    prepare(&mut clients, true).await;
    let started = clients
        .rollouts
        .start_rollout(start_request())
        .await
        .expect("start rollout")
        .into_inner();
    assert!(
        started.waves[1]
            .nodes
            .iter()
            .any(|node| node.node == "prod-04"),
        "{:?}",
        started.waves
    );

    let done = wait_phase(&clients, &started.id, "rolled-back").await;
    let halt = done.halt.clone().expect("the halt stays recorded");
    assert_eq!(halt.wave, 1);
    let xid = halt
        .failures
        .iter()
        .find(|failure| failure.rule_id == "no-xid-79")
        .unwrap_or_else(|| panic!("the XID rule failed: {halt:?}"));
    assert_eq!(xid.nodes, ["prod-04"]);
    assert!(
        halt.failures
            .iter()
            .all(|failure| failure.nodes == ["prod-04"]),
        "{halt:?}"
    );
    // Wave 3 never started: its nodes and wave 4's keep their release.
    for wave in [2, 3] {
        for node in wave_nodes(&done, wave) {
            assert_eq!(node.progress, "waiting", "{node:?}");
            assert!(node.run.is_empty(), "{node:?}");
        }
    }
    // Only the halted wave's nodes ran the rollback plan; the canaries' wave passed its
    // health and keeps the release.
    for node in wave_nodes(&done, 1) {
        assert_eq!(node.progress, "rolled-back", "{node:?}");
        let rollback = clients.run(&node.rollback_run).await;
        assert_eq!(rollback.plan_name, "flash-previous");
        assert_eq!(rollback.jobs[0].node, node.node);
    }
    for node in wave_nodes(&done, 0) {
        assert_eq!(node.progress, "passed", "{node:?}");
        assert!(node.rollback_run.is_empty(), "{node:?}");
    }
    assert_blast_radius(&mut clients, &done).await;
    let audit = rollout_audit(&mut clients, &started.id).await;
    let rolled = audit
        .iter()
        .find(|(action, _, _)| action == "rollout.roll-back-wave")
        .expect("the controller rolled back the halted wave");
    assert_eq!(rolled.1, "controller");
    assert!(
        !audit.iter().any(|(action, _, _)| action == "rollout.abort"),
        "nobody aborted it"
    );

    // `rollout show` names the node and the rule; `-o json` carries the same.
    let shown = tollgate(&controller.url, &["rollout", "show", &started.id]).await;
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let stdout = text(&shown.stdout);
    assert!(stdout.contains("phase:   rolled-back"), "{stdout}");
    assert!(
        stdout.contains("halted at wave 2") && stdout.contains("rule no-xid-79 failed on prod-04"),
        "{stdout}"
    );
    let json = tollgate(
        &controller.url,
        &["rollout", "show", &started.id, "-o", "json"],
    )
    .await;
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(json["phase"], "rolled-back");
    assert_eq!(json["halt"]["failures"][0]["nodes"][0], "prod-04");
    for agent in agents {
        agent.stop().await;
    }
}

async fn pause_resume_and_abort_are_audited_with_their_reasons(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let agents = fleet_with(&controller.url, 4, None);
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(4).await;
    prepare(&mut clients, true).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let go = dir.path().join("go");
    clients.apply_plan(&held_plan("flash-held", &go)).await;
    let started = clients
        .rollouts
        .start_rollout(start_file(&two_waves("flash-held")))
        .await
        .expect("start rollout")
        .into_inner();
    let id = started.id.clone();
    let action = |reason: &str| v1::RolloutActionRequest {
        id: id.clone(),
        reason: reason.into(),
    };
    wait_rollout(&clients, &id, "the canary in procedure", |rollout| {
        progress_of(rollout, "prod-01") == "in-procedure"
    })
    .await;

    let refused = clients
        .rollouts
        .pause_rollout(action(" "))
        .await
        .expect_err("a reason is required");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("reason"),
        "{}",
        refused.message()
    );
    let paused = clients
        .rollouts
        .pause_rollout(action("PDU work in r2"))
        .await
        .expect("pause")
        .into_inner();
    assert_eq!(
        (paused.phase.as_str(), paused.paused_from.as_str()),
        ("paused", "running")
    );

    // The canary finishes while paused and is recorded; nothing else starts (the state
    // machine refuses starts while paused, and the rollout is still paused once it is seen).
    std::fs::write(&go, "").expect("let the procedure finish");
    let seen = wait_rollout(
        &clients,
        &id,
        "the canary recorded while paused",
        |rollout| progress_of(rollout, "prod-01") == "passed",
    )
    .await;
    assert_eq!(seen.phase, "paused");
    for node in wave_nodes(&seen, 1) {
        assert_eq!(node.progress, "waiting", "{node:?}");
    }

    std::fs::remove_file(&go).expect("hold the next procedures");
    clients
        .rollouts
        .resume_rollout(action("PDU work done"))
        .await
        .expect("resume");
    wait_rollout(&clients, &id, "wave 2 in procedure", |rollout| {
        rollout.wave == 1
            && wave_nodes(rollout, 1)
                .iter()
                .any(|node| node.progress == "in-procedure")
    })
    .await;
    let aborted = clients
        .rollouts
        .abort_rollout(v1::AbortRolloutRequest {
            id: id.clone(),
            reason: "driver hangs under NCCL".into(),
            rollback: false,
        })
        .await
        .expect("abort")
        .into_inner();
    assert_eq!(aborted.phase, "aborted");
    let in_procedure: Vec<String> = wave_nodes(&aborted, 1)
        .iter()
        .filter(|node| node.progress == "in-procedure")
        .map(|node| node.node.clone())
        .collect();
    assert!(!in_procedure.is_empty());
    let refused = clients
        .rollouts
        .resume_rollout(action("try again"))
        .await
        .expect_err("an aborted rollout does not resume");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("it has ended"),
        "{}",
        refused.message()
    );

    // Nodes in procedure at the abort finish and are recorded; the others never start.
    std::fs::write(&go, "").expect("let the procedures finish");
    let ended = wait_rollout(&clients, &id, "the stragglers recorded", |rollout| {
        in_procedure
            .iter()
            .all(|node| progress_of(rollout, node) == "passed")
    })
    .await;
    assert_eq!(ended.phase, "aborted");
    for node in wave_nodes(&ended, 1) {
        if !in_procedure.contains(&node.node) {
            assert_eq!(node.progress, "waiting", "{node:?}");
        }
    }

    let audit = rollout_audit(&mut clients, &id).await;
    let person: Vec<(&str, &str, &str)> = audit
        .iter()
        .filter(|(action, _, _)| {
            matches!(
                action.as_str(),
                "rollout.pause" | "rollout.resume" | "rollout.abort"
            )
        })
        .map(|(action, actor, details)| {
            (
                action.as_str(),
                actor.as_str(),
                details["reason"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        person,
        [
            ("rollout.pause", "anonymous", "PDU work in r2"),
            ("rollout.resume", "anonymous", "PDU work done"),
            ("rollout.abort", "anonymous", "driver hangs under NCCL"),
        ]
    );
    for agent in agents {
        agent.stop().await;
    }
}

async fn a_rollout_goes_on_after_kill_9_of_the_controller(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(database_url) = fresh_database_url(backend, dir.path()).await else {
        return;
    };
    // A lease grace longer than the agents' reconnect backoff plus a restart: the kill is
    // not read as the nodes dying.
    let mut controller = ControllerProcess::start(
        &database_url,
        &dir.path().join("controller"),
        &dir.path().join("controller.log"),
        Duration::from_secs(12),
    )
    .await;
    let agents = fleet_with(&controller.url, 6, None);
    let mut clients = Clients::new(controller.channel().await.expect("connect"));
    clients.wait_ready_nodes(6).await;
    prepare(&mut clients, true).await;
    let slow = flash_plan("flash-slow").replace("sleep 0.5", "sleep 1.5");
    clients.apply_plan(&slow).await;
    let started = clients
        .rollouts
        .start_rollout(start_file(&two_waves("flash-slow")))
        .await
        .expect("start rollout")
        .into_inner();
    wait_rollout(&clients, &started.id, "wave 2 in procedure", |rollout| {
        rollout.wave == 1
            && wave_nodes(rollout, 1)
                .iter()
                .any(|node| node.progress == "in-procedure")
    })
    .await;

    controller.kill_9().await;
    controller.restart().await;
    let mut clients = Clients::new(controller.channel().await.expect("connect"));
    let done = wait_phase(&clients, &started.id, "completed").await;
    for node in done.waves.iter().flat_map(|wave| &wave.nodes) {
        assert_eq!(node.progress, "passed", "{node:?}");
    }
    let finished = assert_blast_radius(&mut clients, &done).await;
    assert_eq!(finished.len(), 6);
    for agent in agents {
        agent.stop().await;
    }
    controller.stop().await;
}

/// The sequence numbers of the audit entries `wanted` picks, in order.
async fn audit_seqs(clients: &mut Clients, wanted: impl Fn(&v1::AuditEntry) -> bool) -> Vec<u64> {
    let mut seqs = Vec::new();
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
        seqs.extend(page.entries.iter().filter(|e| wanted(e)).map(|e| e.seq));
        if page.next_page_token.is_empty() {
            return seqs;
        }
        page_token = page.next_page_token;
    }
}

/// With `maintenance-windows: true` a node starts only once a window covers it, and its
/// procedure job runs inside the window: the window that holds every other job back lets a
/// rollout's through.
async fn maintenance_windows_start_the_rollout_s_nodes_and_let_its_jobs_through(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let agents = fleet_with(&controller.url, 2, None);
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(2).await;
    prepare(&mut clients, true).await;
    let file =
        two_waves("flash-and-soak").replace("limits:\n", "limits:\n  maintenance-windows: true\n");
    let started = clients
        .rollouts
        .start_rollout(start_file(&file))
        .await
        .expect("start rollout")
        .into_inner();
    assert_eq!(progress_of(&started, "prod-01"), "waiting");
    let in_an_hour = prost_types::Timestamp {
        seconds: controller.shared().now().timestamp() + 3600,
        nanos: 0,
    };
    let open = |rack: &str| v1::AddMaintenanceWindowRequest {
        label: format!("rack={rack}"),
        starts_at: None,
        ends_at: Some(in_an_hour),
        reason: "firmware rollout".into(),
    };
    clients
        .nodes
        .add_maintenance_window(open("r1"))
        .await
        .expect("window on r1");
    let seen = wait_rollout(
        &clients,
        &started.id,
        "the canary done inside its window",
        |r| progress_of(r, "prod-01") == "passed",
    )
    .await;
    let canary = clients.run(&seen.waves[0].nodes[0].run).await;
    assert_eq!(canary.jobs[0].state, "passed");

    clients
        .nodes
        .add_maintenance_window(open("r2"))
        .await
        .expect("window on r2");
    let done = wait_phase(&clients, &started.id, "completed").await;
    assert_eq!(progress_of(&done, "prod-02"), "passed");
    // Each node started only after the window covering it opened.
    let subject = format!("rollout/{}", started.id);
    for (rack, node) in [("r1", "prod-01"), ("r2", "prod-02")] {
        let opened = audit_seqs(&mut clients, |entry| {
            entry.action == "maintenance.open" && entry.details.contains(&format!("rack={rack}"))
        })
        .await;
        let node_started = audit_seqs(&mut clients, |entry| {
            entry.subject == subject
                && entry.action == "rollout.node-started"
                && entry.details.contains(&format!("\"{node}\""))
        })
        .await;
        assert_eq!((opened.len(), node_started.len()), (1, 1), "{rack} {node}");
        assert!(
            opened[0] < node_started[0],
            "{node} started before its window"
        );
    }
    for agent in agents {
        agent.stop().await;
    }
}

/// Without a rollback plan a failed health rule halts the rollout and it stays halted; a
/// person skips the wave with a reason and the next wave runs.
async fn without_a_rollback_plan_a_halt_waits_for_a_person_who_skips_the_wave(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    // prod-02 is the canary; its procedure is its first load and sees XID 79.
    let agents = fleet_with(&controller.url, 3, Some("prod-02"));
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(3).await;
    prepare(&mut clients, true).await;
    let file = two_waves("flash-and-soak")
        .replace("  - count: 1\n", "  - nodes: [prod-02]\n")
        .replace(
            "  - steps-passed: {max-failed: 0}\n",
            "  - steps-passed: {max-failed: 0}\n  - no-events: {id: no-xid-79, xid: [79]}\n",
        );
    let started = clients
        .rollouts
        .start_rollout(start_file(&file))
        .await
        .expect("start rollout")
        .into_inner();
    let halted = wait_phase(&clients, &started.id, "halted").await;
    let halt = halted.halt.clone().expect("why it halted");
    assert_eq!(halt.wave, 0);
    assert!(
        halt.failures
            .iter()
            .any(|failure| failure.rule_id == "no-xid-79" && failure.nodes == ["prod-02"]),
        "{halt:?}"
    );
    // Halted: nothing of the next wave started.
    for node in wave_nodes(&halted, 1) {
        assert_eq!(node.progress, "waiting", "{node:?}");
    }

    let refused = clients
        .rollouts
        .skip_wave(v1::RolloutActionRequest {
            id: started.id.clone(),
            reason: String::new(),
        })
        .await
        .expect_err("a reason is required");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let skipped = clients
        .rollouts
        .skip_wave(v1::RolloutActionRequest {
            id: started.id.clone(),
            reason: "canary hardware fault, tracked separately".into(),
        })
        .await
        .expect("skip the wave")
        .into_inner();
    assert!(skipped.halt.is_none());
    assert_eq!(skipped.skipped.len(), 1);
    assert_eq!(skipped.skipped[0].wave, 0);
    assert_eq!(
        skipped.skipped[0].reason,
        "canary hardware fault, tracked separately"
    );
    let done = wait_phase(&clients, &started.id, "completed").await;
    // Its procedure itself passed (the XID is an event, not a failed step); the wave's
    // health failed and the wave was skipped, so every node has its progress recorded.
    assert_eq!(progress_of(&done, "prod-02"), "passed");
    for node in wave_nodes(&done, 1) {
        assert_eq!(node.progress, "passed", "{node:?}");
    }
    let audit = rollout_audit(&mut clients, &started.id).await;
    assert!(
        audit
            .iter()
            .any(|(action, actor, details)| action == "rollout.skip-wave"
                && actor == "anonymous"
                && details["reason"] == "canary hardware fault, tracked separately"),
        "{audit:?}"
    );
    for agent in agents {
        agent.stop().await;
    }
}

/// Under `on-interrupted: fail`, the node in procedure when the controller was killed is
/// failed when it comes back: its run is cancelled, the wave's health fails on it, and the
/// rollout halts.
async fn under_on_interrupted_fail_a_kill_9_fails_the_node_in_procedure_and_halts(
    backend: Backend,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(database_url) = fresh_database_url(backend, dir.path()).await else {
        return;
    };
    let mut controller = ControllerProcess::start(
        &database_url,
        &dir.path().join("controller"),
        &dir.path().join("controller.log"),
        Duration::from_secs(12),
    )
    .await;
    let agents = fleet_with(&controller.url, 3, None);
    let mut clients = Clients::new(controller.channel().await.expect("connect"));
    clients.wait_ready_nodes(3).await;
    prepare(&mut clients, true).await;
    let slow = flash_plan("flash-slow").replace("sleep 0.5", "sleep 4");
    clients.apply_plan(&slow).await;
    let file = two_waves("flash-slow").replace("on-interrupted: resume", "on-interrupted: fail");
    let started = clients
        .rollouts
        .start_rollout(start_file(&file))
        .await
        .expect("start rollout")
        .into_inner();
    let canary = wait_rollout(
        &clients,
        &started.id,
        "the canary in procedure",
        |rollout| progress_of(rollout, "prod-01") == "in-procedure",
    )
    .await;
    let run_id = canary.waves[0].nodes[0].run.clone();

    controller.kill_9().await;
    controller.restart().await;
    let mut clients = Clients::new(controller.channel().await.expect("connect"));
    let halted = wait_phase(&clients, &started.id, "halted").await;
    assert_eq!(progress_of(&halted, "prod-01"), "failed");
    let halt = halted.halt.clone().expect("why it halted");
    assert!(
        halt.failures
            .iter()
            .any(|failure| failure.nodes == ["prod-01"]),
        "{halt:?}"
    );
    let run = clients.run(&run_id).await;
    assert_eq!(run.jobs[0].state, "cancelled", "{run:?}");
    for node in wave_nodes(&halted, 1) {
        assert_eq!(node.progress, "waiting", "{node:?}");
    }
    let audit = rollout_audit(&mut clients, &started.id).await;
    assert!(
        audit
            .iter()
            .any(|(action, _, _)| action == "rollout.controller-restarted"),
        "{audit:?}"
    );
    for agent in agents {
        agent.stop().await;
    }
    controller.stop().await;
}

/// A 20-node, 4-wave rollout with a rollback plan: prod-04 (wave 2) passes its procedure,
/// then its agent reports XID 79 outside any step while the wave soaks. The soak's health
/// rules see it: the rollout halts before wave 3 starts, naming the node, the rule and the
/// XID, rolls back that wave's nodes (their procedures had passed), and `rollout show` says
/// so.
async fn an_xid_during_the_soak_of_wave_two_halts_before_wave_three(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let agents = fleet_faults(&controller.url, 20, "prod-04", &["idle-xid=79:1"]);
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(20).await;
    prepare(&mut clients, true).await;
    let file = ROLLOUT.replace("soak: 1s", "soak: 10s");
    let started = clients
        .rollouts
        .start_rollout(start_file(&file))
        .await
        .expect("start rollout")
        .into_inner();
    assert!(
        started.waves[1]
            .nodes
            .iter()
            .any(|node| node.node == "prod-04"),
        "{:?}",
        started.waves
    );

    let done = wait_phase(&clients, &started.id, "rolled-back").await;
    let halt = done.halt.clone().expect("the halt stays recorded");
    assert_eq!(halt.wave, 1, "{halt:?}");
    assert_eq!(halt.failures.len(), 1, "{halt:?}");
    let failure = &halt.failures[0];
    assert_eq!(failure.rule_id, "no-xid-79");
    assert_eq!(failure.nodes, ["prod-04"]);
    assert!(
        failure
            .reason
            .starts_with("during the soak: prod-04: XID 79 on GPU 0 at "),
        "{failure:?}"
    );
    // Its procedure passed: the XID came after it, outside any step.
    let prod_04 = wave_nodes(&done, 1)
        .into_iter()
        .find(|node| node.node == "prod-04")
        .expect("prod-04 in wave 2");
    let run = clients.run(&prod_04.run).await;
    assert_eq!(run.jobs[0].state, "passed");
    // The halted wave's nodes, whose procedures all passed, were rolled back; the canaries'
    // wave passed its health and keeps the release; wave 3 never started.
    for node in wave_nodes(&done, 1) {
        assert_eq!(node.progress, "rolled-back", "{node:?}");
        let rollback = clients.run(&node.rollback_run).await;
        assert_eq!(rollback.plan_name, "flash-previous");
        assert_eq!(rollback.jobs[0].node, node.node);
    }
    for node in wave_nodes(&done, 0) {
        assert_eq!(node.progress, "passed", "{node:?}");
        assert!(node.rollback_run.is_empty(), "{node:?}");
    }
    for wave in [2, 3] {
        for node in wave_nodes(&done, wave) {
            assert_eq!(node.progress, "waiting", "{node:?}");
            assert!(node.run.is_empty(), "{node:?}");
        }
    }
    let shown = tollgate(&controller.url, &["rollout", "show", &started.id]).await;
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let stdout = text(&shown.stdout);
    assert!(
        stdout.contains("phase:   rolled-back")
            && stdout.contains("halted at wave 2")
            && stdout
                .contains("rule no-xid-79 failed on prod-04: during the soak: prod-04: XID 79"),
        "{stdout}"
    );
    for agent in agents {
        agent.stop().await;
    }
}

/// A person's `abort --rollback` takes back every node that went through the procedure,
/// including those of waves that passed their health: here the canary, whose wave passed,
/// while the rollout waits between waves.
async fn abort_with_rollback_rolls_back_every_updated_node(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let agents = fleet_with(&controller.url, 4, None);
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(4).await;
    prepare(&mut clients, true).await;
    let file = format!(
        "{}rollback:\n  plan: flash-previous\n",
        two_waves("flash-and-soak").replace(
            "limits:\n  max-concurrent: {rack: 1}\n",
            "limits:\n  max-concurrent: {rack: 1}\n  pause-between-waves: 10m\n"
        )
    );
    let started = clients
        .rollouts
        .start_rollout(start_file(&file))
        .await
        .expect("start rollout")
        .into_inner();
    let waiting = wait_phase(&clients, &started.id, "interval").await;
    let canary = wave_nodes(&waiting, 0)[0].node.clone();
    assert_eq!(progress_of(&waiting, &canary), "passed");

    let aborted = tollgate(
        &controller.url,
        &[
            "rollout",
            "abort",
            &started.id,
            "--rollback",
            "--reason",
            "driver hangs under NCCL",
        ],
    )
    .await;
    assert!(aborted.status.success(), "{}", text(&aborted.stderr));
    let done = wait_phase(&clients, &started.id, "rolled-back").await;
    assert_eq!(progress_of(&done, &canary), "rolled-back");
    let rollback = clients.run(&wave_nodes(&done, 0)[0].rollback_run).await;
    assert_eq!(rollback.plan_name, "flash-previous");
    for node in wave_nodes(&done, 1) {
        assert_eq!(node.progress, "waiting", "{node:?}");
    }
    let help = tollgate(&controller.url, &["rollout", "abort", "--help"]).await;
    assert!(
        text(&help.stdout).contains("every node that went through the procedure"),
        "{}",
        text(&help.stdout)
    );
    for agent in agents {
        agent.stop().await;
    }
}

/// The halted wave's rollback plan fails on its first node: the rollout halts again, naming
/// the node and the rollback, starts no other rollback, and refuses to resume or skip the
/// wave until a person aborts it.
async fn a_failed_rollback_halts_naming_the_node_and_waits_for_a_person(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    // prod-04 is in wave 2 (prod-03..prod-05): its procedure sees XID 79.
    let agents = fleet_with(&controller.url, 20, Some("prod-04"));
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(20).await;
    prepare(&mut clients, true).await;
    clients
        .apply_plan(
            r#"name: flash-broken
selector: {sku: hgx-h100}
steps:
  - name: flash
    kind: exec
    command: [sh, -c, "exit 3"]
    timeout: 1m
"#,
        )
        .await;
    // One node at a time: the rollbacks run in wave order, prod-03 first.
    let file = ROLLOUT
        .replace("plan: flash-previous", "plan: flash-broken")
        .replace("max-concurrent: {rack: 1}", "max-concurrent: {role: 1}");
    let started = clients
        .rollouts
        .start_rollout(start_file(&file))
        .await
        .expect("start rollout")
        .into_inner();
    let halted = wait_rollout(&clients, &started.id, "halted by a failed rollback", |r| {
        r.phase == "halted"
            && r.halt
                .as_ref()
                .is_some_and(|halt| halt.failures.iter().any(|f| f.rule_id == "rollback"))
    })
    .await;
    let halt = halted.halt.clone().expect("a halt");
    assert_eq!(halt.wave, 1);
    assert_eq!(halt.failures.len(), 1, "{halt:?}");
    assert_eq!(halt.failures[0].nodes, ["prod-03"]);
    assert!(
        halt.failures[0]
            .reason
            .starts_with("the rollback plan failed on prod-03; "),
        "{halt:?}"
    );
    assert_eq!(progress_of(&halted, "prod-03"), "rollback-failed");
    let rollback = clients.run(&wave_nodes(&halted, 1)[0].rollback_run).await;
    assert_eq!(rollback.jobs[0].state, "failed");
    // Nothing else starts: prod-04 waits for its rollback, prod-05 (never started: the XID
    // halted the wave first) and wave 3 for their procedure; the canaries keep the release.
    assert_eq!(progress_of(&halted, "prod-04"), "rollback-pending");
    assert_eq!(progress_of(&halted, "prod-05"), "waiting");
    for node in wave_nodes(&halted, 2) {
        assert_eq!(node.progress, "waiting", "{node:?}");
    }
    for node in wave_nodes(&halted, 0) {
        assert_eq!(node.progress, "passed", "{node:?}");
    }
    let action = |reason: &str| v1::RolloutActionRequest {
        id: started.id.clone(),
        reason: reason.into(),
    };
    let refused = clients
        .rollouts
        .resume_rollout(action("go on"))
        .await
        .expect_err("a failed rollback is not resumed");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("a rollback failed: abort it"),
        "{}",
        refused.message()
    );
    let shown = tollgate(&controller.url, &["rollout", "show", &started.id]).await;
    let stdout = text(&shown.stdout);
    assert!(
        stdout.contains("rule rollback failed on prod-03: the rollback plan failed on prod-03"),
        "{stdout}"
    );
    for agent in agents {
        agent.stop().await;
    }
}

/// Two controller replicas on one PostgreSQL store, each killed with `kill -9` in turn while
/// a rollout runs (so the one leading it dies at least once and the other takes the lead):
/// the rollout completes, every node passed, none started twice, and the blast radius held
/// over the whole run, from the audit log. PostgreSQL only: SQLite serves one controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_completes_across_replica_failovers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(database_url) = fresh_database_url(Backend::Postgres, dir.path()).await else {
        return;
    };
    // A lease grace longer than the agents' reconnect backoff plus a restart.
    let mut replicas = Replicas::start(
        &database_url,
        dir.path(),
        2,
        Duration::from_secs(12),
        Duration::from_secs(1),
    )
    .await;
    let agents = fleet_with(&replicas.urls().join(","), 6, None);
    let mut clients = Clients::new(replicas.processes[0].channel().await.expect("connect"));
    clients.wait_ready_nodes(6).await;
    prepare(&mut clients, true).await;
    let slow = flash_plan("flash-slow").replace("sleep 0.5", "sleep 1.5");
    clients.apply_plan(&slow).await;
    let started = clients
        .rollouts
        .start_rollout(start_file(&two_waves("flash-slow")))
        .await
        .expect("start rollout")
        .into_inner();

    let (done, kills) = replicas
        .kill_in_turn_until(Duration::from_millis(1500), 30, |channel| {
            let id = started.id.clone();
            async move {
                let now = Clients::new(channel)
                    .rollouts
                    .get_rollout(v1::GetRolloutRequest { id })
                    .await
                    .expect("get the rollout")
                    .into_inner();
                assert!(
                    !matches!(now.phase.as_str(), "halted" | "aborted" | "rolled-back"),
                    "the rollout stopped: {now:?}"
                );
                (now.phase == "completed").then_some(now)
            }
        })
        .await;
    assert!(
        kills >= 2,
        "both replicas must have been killed mid-rollout"
    );
    for node in done.waves.iter().flat_map(|wave| &wave.nodes) {
        assert_eq!(node.progress, "passed", "{node:?}");
    }
    let mut clients = Clients::new(replicas.processes[0].channel().await.expect("connect"));
    let finished = assert_blast_radius(&mut clients, &done).await;
    assert_eq!(finished.len(), 6);
    for agent in agents {
        agent.stop().await;
    }
    replicas.stop().await;
}

/// A fleet of 6 nodes sending fleet telemetry every 200 ms to a controller keeping 1-second
/// buckets; `faulty` runs with `faults`. Waves: prod-01, prod-02, then the other four.
async fn telemetry_fleet(
    backend: Backend,
    faulty: &str,
    faults: &[&str],
) -> Option<(Controller, Vec<Agent>)> {
    let mut options = ControllerOptions::new(backend);
    options.fleet_history = Some((
        tollgate_domain::fleet_history::History::parse("1s:1h").expect("history"),
        Duration::from_millis(300),
    ));
    let controller = Controller::start(options).await?;
    let agents = fleet_configs(&controller.url, 6, faulty, faults)
        .into_iter()
        .map(|mut config| {
            config.fleet_interval = Duration::from_millis(200);
            Agent::start_config(config)
        })
        .collect();
    Some((controller, agents))
}

/// Three waves of one, one and four nodes, soaking 3 s, judged by `health`.
fn three_waves(health: &str) -> String {
    format!(
        r#"name: prod-cohort
selector: {{sku: hgx-h100}}
waves:
  - count: 1
  - count: 1
  - percent: 100
procedure:
  plan: flash-and-soak
health:
  - steps-passed: {{max-failed: 0}}
{health}soak: 3s
"#
    )
}

/// The cohort rule of the tests below: a wave's idle GPUs at most 10 % hotter, on average,
/// than those of the fleet's nodes not updated yet.
const COHORT_RULE: &str = "  - baseline: {id: temp-vs-cohort, measurement: gpu_temp_c, aggregate: mean, max-regression-pct: 10, direction: lower-is-better}\nbaseline-by-cohort: true\n";

/// prod-02 (wave 2) idles 20 °C hotter once its procedure ended; the fleet's other nodes idle
/// at 33-37 °C. Compared with its cohort (the four nodes of wave 3, not updated yet) over its
/// soak, wave 2 is 57 % hotter: the rollout halts before wave 3 starts, and `rollout show`
/// names the node, the rule and both sides' figures. Wave 1 (prod-01, as cool as its cohort)
/// passed.
async fn a_wave_two_node_hotter_than_its_cohort_halts_before_wave_three(backend: Backend) {
    let Some((controller, agents)) = telemetry_fleet(backend, "prod-02", &["idle-hot=20:0"]).await
    else {
        return;
    };
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(6).await;
    prepare(&mut clients, true).await;
    let started = clients
        .rollouts
        .start_rollout(start_file(&three_waves(COHORT_RULE)))
        .await
        .expect("start rollout")
        .into_inner();
    assert_eq!(started.waves[1].nodes[0].node, "prod-02");

    let halted = wait_phase(&clients, &started.id, "halted").await;
    let halt = halted.halt.clone().expect("a halted rollout says why");
    assert_eq!(halt.wave, 1, "{halt:?}");
    assert_eq!(halt.failures.len(), 1, "{halt:?}");
    let failure = &halt.failures[0];
    assert_eq!(failure.rule_id, "temp-vs-cohort");
    assert_eq!(failure.nodes, ["prod-02"]);
    assert!(
        failure.reason.starts_with(
            "against the cohort (the fleet's nodes not updated yet) over the soak: mean of \
             gpu_temp_c per GPU on sku=hgx-h100: wave 5"
        ) && failure.reason.contains("(1 GPU(s)) vs cohort 3")
            && failure.reason.contains("(4 GPU(s))")
            && failure
                .reason
                .contains("more than 10% worse (lower-is-better); wave nodes: prod-02 5"),
        "{failure:?}"
    );
    assert_eq!(progress_of(&halted, "prod-01"), "passed");
    assert_eq!(progress_of(&halted, "prod-02"), "passed");
    for node in wave_nodes(&halted, 2) {
        assert_eq!(node.progress, "waiting", "{node:?}");
        assert!(node.run.is_empty(), "{node:?}");
    }
    let stdout = tollgate_ok(&controller.url, &["rollout", "show", &started.id]).await;
    assert!(
        stdout.contains("halted at wave 2")
            && stdout.contains("rule temp-vs-cohort failed on prod-02: against the cohort")
            && stdout.contains("vs cohort 3"),
        "{stdout}"
    );
    for agent in agents {
        agent.stop().await;
    }
}

/// The same rollout over a fleet whose nodes all idle alike completes: each wave is as cool
/// as its cohort. The last wave has no cohort; its judgement says so in the audit log.
async fn a_fleet_like_its_cohort_completes_naming_what_it_could_not_compare(backend: Backend) {
    let Some((controller, agents)) = telemetry_fleet(backend, "", &[]).await else {
        return;
    };
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(6).await;
    prepare(&mut clients, true).await;
    let started = clients
        .rollouts
        .start_rollout(start_file(&three_waves(COHORT_RULE)))
        .await
        .expect("start rollout")
        .into_inner();
    let done = wait_phase(&clients, &started.id, "completed").await;
    assert!(done.halt.is_none(), "{done:?}");
    let judged: Vec<String> = rollout_audit(&mut clients, &started.id)
        .await
        .into_iter()
        .filter(|(action, _, _)| action == "rollout.health-judged")
        .map(|(_, _, details)| details["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(judged.len(), 3, "{judged:?}");
    assert_eq!(judged[..2], ["", ""], "waves 1 and 2 were compared");
    assert_eq!(
        judged[2],
        "not compared with the cohort: rule temp-vs-cohort on sku=hgx-h100: no node of the \
         cohort reported gpu_temp_c"
    );
    for agent in agents {
        agent.stop().await;
    }
}

/// A `telemetry` rule without a step judges the soak too: prod-02 idles 50 °C hotter once its
/// procedure ended (83-87 °C, hotter than under load), breaking `< 80` during its wave's soak
/// although every procedure step stayed under it. The rollout halts naming the node, the rule
/// and the value.
async fn a_telemetry_limit_breached_during_the_soak_halts_naming_node_rule_and_value(
    backend: Backend,
) {
    let Some((controller, agents)) = telemetry_fleet(backend, "prod-02", &["idle-hot=50:0"]).await
    else {
        return;
    };
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(6).await;
    prepare(&mut clients, true).await;
    let file = three_waves(
        "  - telemetry: {id: cool, field: gpu_temp_c, aggregate: max, condition: \"< 80\"}\n",
    );
    let started = clients
        .rollouts
        .start_rollout(start_file(&file))
        .await
        .expect("start rollout")
        .into_inner();
    let halted = wait_phase(&clients, &started.id, "halted").await;
    let halt = halted.halt.clone().expect("a halted rollout says why");
    assert_eq!(halt.wave, 1, "{halt:?}");
    assert_eq!(halt.failures.len(), 1, "{halt:?}");
    let failure = &halt.failures[0];
    assert_eq!(failure.rule_id, "cool");
    assert_eq!(failure.nodes, ["prod-02"]);
    assert!(
        failure
            .reason
            .starts_with("during the soak: max of gpu_temp_c max per GPU = 8")
            && failure
                .reason
                .contains("which breaks < 80 (prod-02 GPU 0 = 8"),
        "{failure:?}"
    );
    // Its procedure passed the same rule: the breach came after it.
    assert_eq!(progress_of(&halted, "prod-02"), "passed");
    let stdout = tollgate_ok(&controller.url, &["rollout", "show", &started.id]).await;
    assert!(
        stdout.contains("rule cool failed on prod-02: during the soak: max of gpu_temp_c"),
        "{stdout}"
    );
    for agent in agents {
        agent.stop().await;
    }
}
