//! Store tests of the plan of record: milestone targets (compare-and-set, audited) and the
//! customers of a release, on both backends.

use super::*;
use crate::store::{AuditFilter, AuditNote};
use tollgate_domain::release::Track;
use tollgate_domain::target::{MilestoneTarget, TargetChange, plan_target};

on_both_backends!(
    targets_are_set_moved_from_what_they_were_and_audited,
    customers_are_replaced_and_audited,
);

fn date(text: &str) -> chrono::NaiveDate {
    text.parse().expect("a test date")
}

fn target_note(actor: &str, change: &TargetChange) -> AuditNote {
    AuditNote::new(change.to.set_at, actor, "release.target", "release/r550")
        .release(&ReleaseId::from("r550"))
        .details(serde_json::json!({
            "milestone": change.to.milestone,
            "from": change.from,
            "to": change.to.target,
            "reason": change.to.reason,
        }))
}

fn decide(
    current: Option<&MilestoneTarget>,
    target: &str,
    reason: Option<&str>,
    actor: &str,
    secs: i64,
) -> TargetChange {
    plan_target(
        &Track::default(),
        current,
        "customer-acceptance",
        target,
        reason,
        actor,
        at(secs),
    )
    .expect("a valid target")
}

async fn targets_are_set_moved_from_what_they_were_and_audited(store: &Store) {
    let release = add_release(store).await;
    assert!(
        store
            .milestone_targets(&release.id)
            .await
            .expect("targets")
            .is_empty()
    );

    let first = decide(None, "2027-01-15", None, "alice", 10);
    store
        .set_milestone_target(&release.id, &first, &target_note("alice", &first))
        .await
        .expect("set");
    let stored = store.milestone_targets(&release.id).await.expect("targets");
    assert_eq!(stored, std::slice::from_ref(&first.to));

    // A second first setting, decided from "no target", lost the race.
    let racing = decide(None, "2027-03-01", None, "carol", 11);
    assert!(matches!(
        store
            .set_milestone_target(&release.id, &racing, &target_note("carol", &racing))
            .await,
        Err(StoreError::Conflict { .. })
    ));

    let moved = decide(
        stored.first(),
        "2027-02-01",
        Some("vendor VBIOS late"),
        "bob",
        20,
    );
    store
        .set_milestone_target(&release.id, &moved, &target_note("bob", &moved))
        .await
        .expect("move");
    // Decided from the first date, which is no longer there.
    let stale = decide(Some(&first.to), "2027-04-01", None, "carol", 21);
    assert!(matches!(
        store
            .set_milestone_target(&release.id, &stale, &target_note("carol", &stale))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let stored = store.milestone_targets(&release.id).await.expect("targets");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].target, date("2027-02-01"));
    assert_eq!(stored[0].reason.as_deref(), Some("vendor VBIOS late"));
    assert_eq!(stored[0].set_by, "bob");
    assert_eq!(stored[0].set_at, at(20));

    let by_release = store
        .milestone_targets_of(&[release.id.clone(), ReleaseId::from("other")])
        .await
        .expect("targets");
    assert_eq!(by_release.len(), 1);
    assert_eq!(by_release[&release.id], stored);

    // Two entries, none from the refused changes: who, from what, to what, why.
    let audit: Vec<_> = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit")
        .into_iter()
        .filter(|entry| entry.action == "release.target")
        .collect();
    assert_eq!(audit.len(), 2, "{audit:?}");
    let details: serde_json::Value = serde_json::from_str(&audit[1].details).expect("json");
    assert_eq!(audit[1].actor, "bob");
    assert_eq!(details["from"], "2027-01-15");
    assert_eq!(details["to"], "2027-02-01");
    assert_eq!(details["reason"], "vendor VBIOS late");
    let details: serde_json::Value = serde_json::from_str(&audit[0].details).expect("json");
    assert_eq!(details["from"], serde_json::Value::Null);
    assert!(store.verify_audit().await.expect("verify").is_ok());
}

async fn customers_are_replaced_and_audited(store: &Store) {
    let release = add_release(store).await;
    assert!(
        store
            .release_customers(&release.id)
            .await
            .expect("customers")
            .is_empty()
    );
    let note = |secs| {
        AuditNote::new(at(secs), "alice", "release.customers", "release/r550").release(&release.id)
    };
    store
        .set_release_customers(&release.id, &["globex".into(), "acme".into()], &note(1))
        .await
        .expect("set");
    assert_eq!(
        store
            .release_customers(&release.id)
            .await
            .expect("customers"),
        ["acme", "globex"]
    );
    store
        .set_release_customers(&release.id, &["initech".into()], &note(2))
        .await
        .expect("replace");
    assert_eq!(
        store
            .release_customers(&release.id)
            .await
            .expect("customers"),
        ["initech"]
    );
    let n_audited = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit")
        .iter()
        .filter(|entry| entry.action == "release.customers")
        .count();
    assert_eq!(n_audited, 2);
}
