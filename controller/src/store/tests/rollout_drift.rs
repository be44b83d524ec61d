//! Store tests of what rollouts brought their nodes to: recorded in the transaction where a
//! node's procedure passes, with its release's components, and in force only while the node
//! stays `passed` (a rollback takes it out), on both backends.

use super::*;
use crate::store::{RolloutRecord, RolloutStart};
use tollgate_domain::RolloutId;
use tollgate_domain::rollout::{
    NodeProgress, Progress, RolloutEvent, RolloutFacts, RolloutState, Wave, WavePlan, next,
};
use tollgate_domain::test_support::rollout_spec;

on_both_backends!(a_passed_node_s_components_are_expected_until_it_is_rolled_back);

/// One wave of node n1, through plan `flash`, with a rollback plan.
fn rollout_record() -> RolloutRecord {
    let mut spec = rollout_spec();
    spec.procedure.plan = "flash".into();
    RolloutRecord {
        id: RolloutId::from("rollout-1"),
        release: ReleaseId::from("r550"),
        fleet: String::new(),
        file: "name: prod-h100\n".into(),
        digest: "ab".repeat(32),
        spec,
        waves: WavePlan {
            waves: vec![Wave {
                spec_idx: 0,
                nodes: vec![NodeId::from("n1")],
            }],
            left_out: Vec::new(),
        },
        state: RolloutState::new(at(10)),
        version: 0,
        created_by: "alice".into(),
        created_at: at(10),
        updated_at: at(10),
    }
}

/// Decides `event` on the rollout as stored and applies it with `starts`.
async fn apply(store: &Store, event: RolloutEvent, starts: &[RolloutStart], secs: i64) {
    let id = RolloutId::from("rollout-1");
    let (record, nodes) = store.rollout(&id).await.expect("load").expect("found");
    let progress: Progress = nodes
        .iter()
        .map(|node| (node.node.clone(), node.progress))
        .collect();
    let change = next(
        RolloutFacts {
            spec: &record.spec,
            waves: &record.waves,
            state: &record.state,
            progress: &progress,
        },
        event,
        at(secs),
    )
    .expect("decided");
    let note = AuditNote::new(at(secs), "controller", "rollout.test", "rollout/rollout-1");
    store
        .apply_rollout_change(&id, record.version, &change, starts, &note)
        .await
        .expect("applied");
}

async fn a_passed_node_s_components_are_expected_until_it_is_rolled_back(store: &Store) {
    let release = add_release(store).await;
    add_node(store, "n1").await;
    let mut plan = plan_for("hgx");
    plan.name = "flash".into();
    add_plan(store, &plan).await;
    let record = rollout_record();
    let note = AuditNote::new(at(10), "alice", "rollout.create", "rollout/rollout-1");
    store.create_rollout(&record, &note).await.expect("create");
    apply(store, RolloutEvent::Start, &[], 11).await;
    let mut run = run_record("run-n1", &plan, "rollout-health", 12);
    run.purpose = RunPurpose::Rollout;
    let job = job_record("job-n1", &run, "n1");
    let starts = [RolloutStart {
        node: "n1".into(),
        rollback: false,
        run,
        job,
    }];
    apply(
        store,
        RolloutEvent::NodeStarted { node: "n1".into() },
        &starts,
        12,
    )
    .await;
    // In procedure: nothing is expected of it yet.
    assert!(store.rollout_expectations().await.expect("read").is_empty());

    let finished = RolloutEvent::NodeFinished {
        node: "n1".into(),
        passed: true,
    };
    apply(store, finished, &[], 13).await;
    let expected = store.rollout_expectations().await.expect("read");
    assert_eq!(expected.len(), 1, "{expected:?}");
    assert_eq!(expected[0].rollout, record.id);
    assert_eq!(expected[0].node, NodeId::from("n1"));
    assert_eq!(expected[0].components, release.components);
    assert_eq!(expected[0].recorded_at, at(13));

    // Aborted with rollback, n1 is to go back to the previous release: no longer expected to
    // run this one.
    apply(store, RolloutEvent::Abort { rollback: true }, &[], 14).await;
    let (_, nodes) = store
        .rollout(&record.id)
        .await
        .expect("load")
        .expect("found");
    assert_eq!(nodes[0].progress, NodeProgress::RollbackPending);
    assert!(store.rollout_expectations().await.expect("read").is_empty());
}
