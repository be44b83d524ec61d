//! Store tests of rollouts: created with one row per node of their waves, every decided change
//! applied by compare-and-set on the rollout's version and phase and on each node's progress,
//! with the runs it starts and its audit entry in the same transaction, on both backends.

use super::*;
use crate::store::{AuditFilter, RolloutRecord, RolloutStart};
use tollgate_domain::RolloutId;
use tollgate_domain::rollout::{
    NodeProgress, Phase, Progress, RolloutEvent, RolloutFacts, RolloutState, Wave, WavePlan, next,
};
use tollgate_domain::test_support::rollout_spec;

on_both_backends!(
    a_rollout_keeps_its_file_waves_and_nodes,
    rollout_changes_are_compare_and_set_with_their_runs_and_audit,
    a_rollout_whose_start_failed_is_started_by_the_leader_after_the_grace,
);

/// Two waves: n1, then n2.
fn rollout_record(id: &str) -> RolloutRecord {
    let mut spec = rollout_spec();
    spec.procedure.plan = "flash".into();
    let waves = WavePlan {
        waves: vec![
            Wave {
                spec_idx: 0,
                nodes: vec![NodeId::from("n1")],
            },
            Wave {
                spec_idx: 1,
                nodes: vec![NodeId::from("n2")],
            },
        ],
        left_out: vec![(2, "no node left".into())],
    };
    RolloutRecord {
        id: RolloutId::from(id),
        release: ReleaseId::from("r550"),
        fleet: "role=prod".into(),
        file: "name: prod-h100\n".into(),
        digest: "ab".repeat(32),
        spec,
        waves,
        state: RolloutState::new(at(10)),
        version: 0,
        created_by: "alice".into(),
        created_at: at(10),
        updated_at: at(10),
    }
}

async fn setup(store: &Store) -> Plan {
    add_release(store).await;
    add_node(store, "n1").await;
    add_node(store, "n2").await;
    let mut plan = plan_for("hgx");
    plan.name = "flash".into();
    add_plan(store, &plan).await;
    plan
}

fn progress_of(nodes: &[crate::store::RolloutNode]) -> Progress {
    nodes
        .iter()
        .map(|node| (node.node.clone(), node.progress))
        .collect()
}

async fn a_rollout_keeps_its_file_waves_and_nodes(store: &Store) {
    setup(store).await;
    let record = rollout_record("rollout-1");
    let note = AuditNote::new(at(10), "alice", "rollout.start", "rollout/rollout-1");
    store.create_rollout(&record, &note).await.expect("create");
    let (loaded, nodes) = store
        .rollout(&record.id)
        .await
        .expect("load")
        .expect("found");
    assert_eq!(loaded, record);
    assert_eq!(
        nodes
            .iter()
            .map(|node| (
                node.node.as_str(),
                node.wave,
                node.progress,
                node.run.clone()
            ))
            .collect::<Vec<_>>(),
        [
            ("n1", 0, NodeProgress::Waiting, None),
            ("n2", 1, NodeProgress::Waiting, None)
        ]
    );
    // The id is unique; a rollout of an unknown release is refused.
    assert!(matches!(
        store.create_rollout(&record, &note).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let mut orphan = rollout_record("rollout-2");
    orphan.release = ReleaseId::from("nope");
    assert!(matches!(
        store.create_rollout(&orphan, &note).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.rollouts(true, 10).await.expect("list").len(), 1);
    assert!(
        store
            .rollout(&RolloutId::from("rollout-9"))
            .await
            .expect("load")
            .is_none()
    );
}

async fn rollout_changes_are_compare_and_set_with_their_runs_and_audit(store: &Store) {
    let plan = setup(store).await;
    let record = rollout_record("rollout-1");
    let note = |action: &str, at_secs: i64| {
        AuditNote::new(at(at_secs), "controller", action, "rollout/rollout-1")
    };
    store
        .create_rollout(&record, &note("rollout.start", 10))
        .await
        .expect("create");
    let facts = |state: &RolloutState, progress: &Progress| {
        next(
            RolloutFacts {
                spec: &record.spec,
                waves: &record.waves,
                state,
                progress,
            },
            RolloutEvent::Start,
            at(11),
        )
    };
    let start = facts(&record.state, &Progress::new()).expect("start");
    let version = store
        .apply_rollout_change(&record.id, 0, &start, &[], &note("rollout.started", 11))
        .await
        .expect("started");
    assert_eq!(version, 1);
    // The same change again, decided from version 0, is refused and writes nothing.
    assert!(matches!(
        store
            .apply_rollout_change(&record.id, 0, &start, &[], &note("rollout.started", 11))
            .await,
        Err(StoreError::Conflict { .. })
    ));

    // Starting n1 creates its procedure run and job in the same transaction.
    let (loaded, nodes) = store
        .rollout(&record.id)
        .await
        .expect("load")
        .expect("found");
    assert_eq!(loaded.state.phase, Phase::Running);
    let progress = progress_of(&nodes);
    let started = next(
        RolloutFacts {
            spec: &loaded.spec,
            waves: &loaded.waves,
            state: &loaded.state,
            progress: &progress,
        },
        RolloutEvent::NodeStarted { node: "n1".into() },
        at(12),
    )
    .expect("node started");
    let mut run = run_record("run-n1", &plan, "rollout-health", 12);
    run.purpose = RunPurpose::Rollout;
    let job = job_record("job-n1", &run, "n1");
    let starts = [RolloutStart {
        node: "n1".into(),
        rollback: false,
        run: run.clone(),
        job,
    }];
    // A start whose run cannot be stored (its plan is unknown) leaves the node waiting.
    let mut bad = starts.clone();
    bad[0].run.plan_name = "nope".into();
    assert!(
        store
            .apply_rollout_change(&record.id, 1, &started, &bad, &note("rollout.node", 12))
            .await
            .is_err()
    );
    let (_, nodes) = store
        .rollout(&record.id)
        .await
        .expect("load")
        .expect("found");
    assert_eq!(nodes[0].progress, NodeProgress::Waiting);
    assert_eq!(nodes[0].run, None);

    store
        .apply_rollout_change(&record.id, 1, &started, &starts, &note("rollout.node", 12))
        .await
        .expect("node started");
    let (loaded, nodes) = store
        .rollout(&record.id)
        .await
        .expect("load")
        .expect("found");
    assert_eq!(loaded.version, 2);
    assert_eq!(nodes[0].progress, NodeProgress::InProcedure);
    assert_eq!(nodes[0].run, Some(RunId::from("run-n1")));
    let stored = store.get_run(&run.id).await.expect("run").expect("found");
    assert_eq!(stored.purpose, RunPurpose::Rollout);
    assert_eq!(
        store.rollout_of_run(&run.id).await.expect("of run"),
        Some((record.id.clone(), NodeId::from("n1")))
    );

    // A node change decided from a progress the node has left is refused as a whole: the
    // rollout's version does not move either.
    let mut stale = started.clone();
    stale.from = loaded.state.clone();
    assert!(matches!(
        store
            .apply_rollout_change(&record.id, 2, &stale, &[], &note("rollout.node", 13))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let (after, _) = store
        .rollout(&record.id)
        .await
        .expect("load")
        .expect("found");
    assert_eq!(after.version, 2);

    let audit: Vec<String> = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit")
        .into_iter()
        .filter(|entry| entry.subject == "rollout/rollout-1")
        .map(|entry| entry.action)
        .collect();
    assert_eq!(audit, ["rollout.start", "rollout.started", "rollout.node"]);

    // Aborted with n1 still in procedure, the rollout is still driven (n1's end is to be
    // recorded); once n1 finished, no longer.
    let drive = |loaded: &RolloutRecord, nodes: &[crate::store::RolloutNode], event, secs| {
        let progress = progress_of(nodes);
        next(
            RolloutFacts {
                spec: &loaded.spec,
                waves: &loaded.waves,
                state: &loaded.state,
                progress: &progress,
            },
            event,
            at(secs),
        )
        .expect("decided")
    };
    assert_eq!(
        store.rollouts_to_drive().await.expect("to drive"),
        std::slice::from_ref(&record.id)
    );
    let (loaded, nodes) = store
        .rollout(&record.id)
        .await
        .expect("load")
        .expect("found");
    let abort = drive(&loaded, &nodes, RolloutEvent::Abort { rollback: false }, 14);
    store
        .apply_rollout_change(&record.id, 2, &abort, &[], &note("rollout.abort", 14))
        .await
        .expect("aborted");
    assert_eq!(
        store.rollouts_to_drive().await.expect("to drive"),
        std::slice::from_ref(&record.id)
    );
    let (loaded, nodes) = store
        .rollout(&record.id)
        .await
        .expect("load")
        .expect("found");
    assert_eq!(loaded.state.phase, Phase::Aborted);
    let finished = drive(
        &loaded,
        &nodes,
        RolloutEvent::NodeFinished {
            node: "n1".into(),
            passed: true,
        },
        15,
    );
    store
        .apply_rollout_change(&record.id, 3, &finished, &[], &note("rollout.node", 15))
        .await
        .expect("finished");
    assert!(
        store
            .rollouts_to_drive()
            .await
            .expect("to drive")
            .is_empty()
    );
}

/// A rollout whose start failed after its creation (left `pending`) is not left so: once
/// `START_GRACE` passed, the driver's tick starts it, audited as the controller with why;
/// before that, its creator's start is waited for.
async fn a_rollout_whose_start_failed_is_started_by_the_leader_after_the_grace(store: &Store) {
    setup(store).await;
    let record = rollout_record("rollout-1");
    let note = AuditNote::new(at(10), "alice", "rollout.create", "rollout/rollout-1");
    store.create_rollout(&record, &note).await.expect("create");
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = crate::clock::ManualClock::new(at(15));
    let mut config = crate::config::ControllerConfig::new(dir.path().to_owned());
    config.clock = std::sync::Arc::new(clock.clone());
    let shared = crate::shared::Shared::new(store.clone(), config);
    let phase = || async {
        store
            .rollout(&record.id)
            .await
            .expect("load")
            .expect("found")
            .0
            .state
            .phase
    };

    crate::rollouts::tick(&shared).await.expect("tick");
    assert_eq!(
        phase().await,
        Phase::Pending,
        "within the grace its creator starts it"
    );
    let grace = chrono::Duration::from_std(crate::rollouts::START_GRACE).expect("short");
    clock.advance(grace - chrono::Duration::seconds(5));
    crate::rollouts::tick(&shared).await.expect("tick");
    assert_eq!(phase().await, Phase::Running);
    let started: Vec<(String, String, serde_json::Value)> = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit")
        .into_iter()
        .filter(|entry| entry.subject == "rollout/rollout-1" && entry.action == "rollout.start")
        .map(|entry| {
            let details = serde_json::from_str(&entry.details).expect("JSON");
            (entry.action, entry.actor, details)
        })
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].1, "controller");
    assert!(
        started[0].2["reason"]
            .as_str()
            .is_some_and(|reason| reason.starts_with("its start did not complete")),
        "{started:?}"
    );
}
