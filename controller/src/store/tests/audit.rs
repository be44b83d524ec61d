//! Store tests of waivers, the audit log, halts, demotions and replayable decisions, on both
//! backends.

use super::*;
use crate::store::{AuditFilter, AuditNote, ReplayInputs};
use tollgate_domain::gate::{Evidence, Waiver};
use tollgate_domain::release::{ReleaseChange, ReleaseState};
use tollgate_domain::test_support::evidence;

on_both_backends!(
    waivers_are_stored_revoked_once_and_audited,
    the_audit_chain_finds_an_edited_or_deleted_row,
    audit_entries_filter_by_release_actor_and_time,
    halts_demotions_and_baselines,
    decisions_keep_their_inputs_for_replay,
    replay_reloads_the_referenced_results_and_sees_an_edit,
    inputs_stored_whole_are_marked_for_the_first_digest_scheme,
    api_tokens_are_stored_by_hash_revoked_once_and_audited,
);

async fn api_tokens_are_stored_by_hash_revoked_once_and_audited(store: &Store) {
    use tollgate_domain::access::{ApiToken, Role};
    let token = ApiToken {
        name: "acme-portal".into(),
        role: Role::Customer,
        customer: Some("acme".into()),
        created_by: "root".into(),
        created_at: at(10),
        expires_at: at(1000),
        revoked_at: None,
    };
    let created = |secs| AuditNote::new(at(secs), "root", "token.create", "token/acme-portal");
    store
        .create_api_token(&token, "hash-1", &created(10))
        .await
        .expect("create");
    assert!(matches!(
        store.create_api_token(&token, "hash-2", &created(11)).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(
        store.list_api_tokens().await.expect("list"),
        vec![("hash-1".to_owned(), token.clone())]
    );
    let revoke = |secs| AuditNote::new(at(secs), "root", "token.revoke", "token/acme-portal");
    let revoked = store
        .revoke_api_token("acme-portal", at(20), &revoke(20))
        .await
        .expect("revoke");
    assert_eq!(revoked.revoked_at, Some(at(20)));
    assert!(matches!(
        store
            .revoke_api_token("acme-portal", at(21), &revoke(21))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.revoke_api_token("nope", at(21), &revoke(21)).await,
        Err(StoreError::NotFound { .. })
    ));
    let actions: Vec<String> = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit")
        .into_iter()
        .map(|entry| entry.action)
        .collect();
    assert_eq!(actions, ["token.create", "token.revoke"]);
}

fn waiver(id: &str) -> Waiver {
    Waiver {
        id: id.into(),
        release: "r550".into(),
        milestone: "lab-qual".into(),
        rule_id: "no-overtemp".into(),
        reason: "fan firmware bug, fixed in next drop".into(),
        ticket: "HW-1234".into(),
        approver: "alice".into(),
        created_at: at(10),
        expires_at: at(1000),
        revoked_at: None,
        nodes: vec![NodeId::from("n1")],
        skus: vec!["hgx-h100".into()],
        steps: vec!["stress".into()],
        issue: None,
    }
}

fn note(actor: &str, action: &str, secs: i64) -> AuditNote {
    AuditNote::new(at(secs), actor, action, "release/r550")
        .release(&ReleaseId::from("r550"))
        .details(serde_json::json!({ "n": secs }))
}

async fn waivers_are_stored_revoked_once_and_audited(store: &Store) {
    let release = add_release(store).await;
    let w = waiver("waiver-1");
    store
        .create_waiver(&w, &note("alice", "waiver.create", 10))
        .await
        .expect("create");
    assert!(matches!(
        store
            .create_waiver(&w, &note("alice", "waiver.create", 11))
            .await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let mut orphan = waiver("waiver-2");
    orphan.release = "nope".into();
    assert!(matches!(
        store
            .create_waiver(&orphan, &note("alice", "waiver.create", 11))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store.get_waiver("waiver-1").await.expect("get"),
        Some(w.clone())
    );
    let listed = store
        .list_waivers(&release.id, Some("lab-qual"))
        .await
        .expect("list");
    assert_eq!(listed, vec![w.clone()]);
    assert!(
        store
            .list_waivers(&release.id, Some("production"))
            .await
            .expect("list")
            .is_empty()
    );
    let revoked = store
        .revoke_waiver("waiver-1", at(20), &note("bob", "waiver.revoke", 20))
        .await
        .expect("revoke");
    assert_eq!(revoked.revoked_at, Some(at(20)));
    assert!(matches!(
        store
            .revoke_waiver("waiver-1", at(21), &note("bob", "waiver.revoke", 21))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store
            .revoke_waiver("nope", at(21), &note("bob", "waiver.revoke", 21))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    // The failed attempts rolled back with their audit entries.
    let entries = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit");
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e.action != "test.setup")
        .map(|e| (e.actor.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![("alice", "waiver.create"), ("bob", "waiver.revoke")]
    );
    let last = entries.last().expect("entries");
    assert_eq!(
        store.verify_audit().await.expect("verify"),
        Ok(last.hash.clone())
    );
    assert_eq!(
        store.audit_head().await.expect("head"),
        Some(last.hash.clone())
    );
}

async fn the_audit_chain_finds_an_edited_or_deleted_row(store: &Store) {
    add_release(store).await;
    assert!(
        store.audit_head().await.expect("head").is_some(),
        "creating the release is audited"
    );
    for secs in 1..=3 {
        store
            .append_audit(&note("alice", "release.halt", secs))
            .await
            .expect("append");
    }
    assert!(store.verify_audit().await.expect("verify").is_ok());
    edit_rows(store, "UPDATE audit SET actor = 'mallory' WHERE seq = 2").await;
    let broken = store
        .verify_audit()
        .await
        .expect("verify")
        .expect_err("edited");
    assert_eq!(broken.seq, 2);
    edit_rows(store, "UPDATE audit SET actor = 'alice' WHERE seq = 2").await;
    edit_rows(store, "DELETE FROM audit WHERE seq = 3").await;
    let broken = store
        .verify_audit()
        .await
        .expect("verify")
        .expect_err("deleted");
    assert_eq!(broken.seq, 3, "{}", broken.reason);
}

async fn audit_entries_filter_by_release_actor_and_time(store: &Store) {
    add_release(store).await;
    store
        .append_audit(&note("alice", "release.halt", 1))
        .await
        .expect("append");
    store
        .append_audit(&note("bob", "release.resume", 5))
        .await
        .expect("append");
    store
        .append_audit(&AuditNote::new(at(9), "bob", "node.cordon", "node/n1"))
        .await
        .expect("append");
    let count =
        |filter: AuditFilter| async move { store.list_audit(&filter).await.expect("list").len() };
    // The three, after the release's creation.
    assert_eq!(count(AuditFilter::default()).await, 4);
    assert_eq!(
        count(AuditFilter {
            release: Some(ReleaseId::from("r550")),
            ..AuditFilter::default()
        })
        .await,
        2
    );
    assert_eq!(
        count(AuditFilter {
            actor: Some("bob".into()),
            ..AuditFilter::default()
        })
        .await,
        2
    );
    assert_eq!(
        count(AuditFilter {
            since: Some(at(5)),
            until: Some(at(8)),
            ..AuditFilter::default()
        })
        .await,
        1
    );
}

fn state(milestone: &str, halted: Option<&str>) -> ReleaseState {
    ReleaseState {
        milestone: milestone.into(),
        halted: halted.map(str::to_owned),
    }
}

fn change(from: ReleaseState, to: ReleaseState) -> ReleaseChange {
    ReleaseChange {
        from,
        to,
        promotion: None,
    }
}

async fn halts_demotions_and_baselines(store: &Store) {
    let release = add_release(store).await;
    let halt_of = |store: &Store| {
        let store = store.clone();
        let id = release.id.clone();
        async move {
            store
                .release_state(&id)
                .await
                .expect("state")
                .expect("found")
                .halted
        }
    };
    assert_eq!(halt_of(store).await, None);
    let running = state("lab-qual", None);
    let halted = state("lab-qual", Some("bad batch"));
    store
        .change_release(
            &release.id,
            &change(running.clone(), halted.clone()),
            &note("alice", "release.halt", 1),
        )
        .await
        .expect("halt");
    assert_eq!(halt_of(store).await, Some("bad batch".into()));
    // Decided from "not halted": the halt is in the way.
    assert!(matches!(
        store
            .change_release(
                &release.id,
                &change(running.clone(), state("customer-acceptance", None)),
                &note("alice", "release.promote", 1),
            )
            .await,
        Err(StoreError::Conflict { .. })
    ));
    store
        .change_release(
            &release.id,
            &change(halted, running.clone()),
            &note("alice", "release.resume", 2),
        )
        .await
        .expect("resume");
    assert_eq!(halt_of(store).await, None);
    let promotion = Promotion {
        from_milestone: "lab-qual".into(),
        to_milestone: "customer-acceptance".into(),
        at: at(3),
        decision_digest: "d".into(),
        actor: "carol".into(),
    };
    store
        .change_release(
            &release.id,
            &ReleaseChange {
                promotion: Some(promotion),
                ..change(running, state("customer-acceptance", None))
            },
            &note("carol", "release.promote", 3),
        )
        .await
        .expect("promote");
    let stored = store
        .get_release(&release.id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(stored.promotions[0].actor, "carol");
    let other = ReleaseId::from("r560");
    assert_eq!(
        store
            .last_promoted_past("lab-qual", &other)
            .await
            .expect("baseline"),
        Some(release.id.clone())
    );
    assert_eq!(
        store
            .last_promoted_past("lab-qual", &release.id)
            .await
            .expect("baseline"),
        None
    );
    let demotion = change(state("customer-acceptance", None), state("lab-qual", None));
    store
        .change_release(&release.id, &demotion, &note("carol", "release.demote", 4))
        .await
        .expect("demote");
    assert_eq!(
        store
            .last_promoted_past("lab-qual", &other)
            .await
            .expect("baseline"),
        None,
        "a release demoted back to lab-qual is no longer a baseline past it"
    );
    assert!(matches!(
        store
            .change_release(&release.id, &demotion, &note("carol", "release.demote", 5))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let actions: Vec<String> = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit")
        .into_iter()
        .map(|e| e.action)
        .filter(|action| action != "test.setup")
        .collect();
    assert_eq!(
        actions,
        [
            "release.halt",
            "release.resume",
            "release.promote",
            "release.demote"
        ]
    );
    assert!(store.verify_audit().await.expect("verify").is_ok());
}

async fn decisions_keep_their_inputs_for_replay(store: &Store) {
    let release = add_release(store).await;
    let (inputs, decision) = decide_with_inputs(store, evidence(Vec::new())).await;
    assert!(
        store
            .decision_at(&release.id, "lab-qual", at(49))
            .await
            .expect("at")
            .is_none()
    );
    let (stored, stored_inputs) = store
        .decision_at(&release.id, "lab-qual", at(60))
        .await
        .expect("at")
        .expect("found");
    assert_eq!(stored, decision);
    assert_eq!(stored_inputs.as_ref(), Some(&inputs));
    // The same inputs again: a second decision row, one stored copy of the inputs.
    store
        .insert_decision_with_inputs(&decision, &inputs)
        .await
        .expect("insert again");
    let n_copies: i64 = with_pool!(store, |pool| {
        sqlx::query_scalar("SELECT COUNT(*) FROM decision_inputs")
            .fetch_one(pool)
            .await
            .expect("count")
    });
    assert_eq!(n_copies, 1);
}

/// Stored inputs reference the results: replaying loads them again and gives the stored
/// digest, and a result edited in the database afterwards gives another one.
async fn replay_reloads_the_referenced_results_and_sees_an_edit(store: &Store) {
    let release = add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    add_node(store, "n1").await;
    let (_, jobs) = start_run(store, "run-a", &plan, &["n1"], 10).await;
    for step in 0..2 {
        store
            .record_test_result(
                &result_of(&jobs[0].id, step, 1, Outcome::Passed),
                None,
                at(20),
            )
            .await
            .expect("record");
    }
    let evidence = store
        .load_evidence(&release, "lab-qual")
        .await
        .expect("evidence");
    let inputs = ReplayInputs {
        policy: gate_policy("replay"),
        evidence: evidence.clone(),
        waivers: Vec::new(),
        first_scheme: false,
    };
    let decision = tollgate_domain::gate::evaluate(&inputs.policy, &inputs.evidence, &[], at(50));
    store
        .insert_decision_with_inputs(&decision, &inputs)
        .await
        .expect("insert");

    let replay = |store: &Store| {
        let store = store.clone();
        let release = release.id.clone();
        async move {
            let (_, inputs) = store
                .decision_at(&release, "lab-qual", at(60))
                .await
                .expect("at")
                .expect("found");
            inputs.expect("inputs stored")
        }
    };
    let replayed = replay(store).await;
    let mut expected = evidence;
    for job in &mut expected.runs[0].jobs {
        job.result_digests.clear();
    }
    assert_eq!(replayed.evidence, expected);
    let again = tollgate_domain::gate::evaluate(
        &replayed.policy,
        &replayed.evidence,
        &replayed.waivers,
        at(50),
    );
    assert_eq!(again.digest, decision.digest);

    edit_rows(
        store,
        "UPDATE step_results SET message = 'edited' WHERE step_index = 1",
    )
    .await;
    let edited = replay(store).await;
    let after =
        tollgate_domain::gate::evaluate(&edited.policy, &edited.evidence, &edited.waivers, at(50));
    assert_ne!(
        after.digest, decision.digest,
        "an edited result must not replay to the same digest"
    );
}

/// Inputs an earlier controller stored whole still load, marked so that replay digests them
/// under the scheme they were decided with.
async fn inputs_stored_whole_are_marked_for_the_first_digest_scheme(store: &Store) {
    add_release(store).await;
    let (inputs, _) = decide_with_inputs(store, evidence(Vec::new())).await;
    let whole = serde_json::to_string(&inputs).expect("json");
    with_pool!(store, |pool| {
        sqlx::query("UPDATE decision_inputs SET inputs = $1")
            .bind(&whole)
            .execute(pool)
            .await
            .expect("store whole, as before references");
    });
    let (_, loaded) = store
        .decision_at(&ReleaseId::from("r550"), "lab-qual", at(60))
        .await
        .expect("at")
        .expect("found");
    let loaded = loaded.expect("inputs");
    assert!(loaded.first_scheme);
    assert_eq!(loaded.evidence, inputs.evidence);
    assert_eq!(loaded.waivers, inputs.waivers);
}

/// Decides the `replay` gate at 50 s on `evidence` with the waiver `waiver-1`, and stores the
/// decision with its inputs; returns both.
async fn decide_with_inputs(store: &Store, evidence: Evidence) -> (ReplayInputs, Decision) {
    let inputs = ReplayInputs {
        policy: gate_policy("replay"),
        evidence,
        waivers: vec![waiver("waiver-1")],
        first_scheme: false,
    };
    let decision =
        tollgate_domain::gate::evaluate(&inputs.policy, &inputs.evidence, &inputs.waivers, at(50));
    store
        .insert_decision_with_inputs(&decision, &inputs)
        .await
        .expect("insert");
    (inputs, decision)
}
