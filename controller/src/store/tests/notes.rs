//! Store tests of meeting minutes (a note and its audit entry in one transaction, read back
//! by release, time and action items) and of the passed decisions a status report lists, on
//! both backends.

use super::*;
use crate::store::{AuditFilter, AuditNote, NoteFilter};
use tollgate_domain::note::plan_note;

on_both_backends!(
    notes_are_added_with_their_audit_entry_and_filtered,
    passed_decisions_are_listed_once_per_digest_since_a_time,
);

fn note_audit(actor: &str, secs: i64) -> AuditNote {
    AuditNote::new(at(secs), actor, "note.add", "note")
        .release(&ReleaseId::from("r550"))
        .details(serde_json::json!({ "text": "t" }))
}

async fn notes_are_added_with_their_audit_entry_and_filtered(store: &Store) {
    let release = add_release(store).await;
    let decided = plan_note(
        release.id.as_str(),
        "wait for the BMC fix",
        "",
        "",
        "alice",
        at(10),
    )
    .expect("a note");
    let first = store
        .add_note(&decided, &note_audit("alice", 10))
        .await
        .expect("added");
    assert_eq!(first.text, "wait for the BMC fix");
    assert_eq!(first.action, None);
    let action = plan_note(
        release.id.as_str(),
        "replace the fan",
        "bob",
        "2026-02-01",
        "alice",
        at(20),
    )
    .expect("an action item");
    let second = store
        .add_note(&action, &note_audit("alice", 20))
        .await
        .expect("added");
    assert!(second.id > first.id);

    let all = store.notes(&NoteFilter::default()).await.expect("notes");
    assert_eq!(all, vec![first.clone(), second.clone()]);
    let actions = store
        .notes(&NoteFilter {
            actions_only: true,
            ..NoteFilter::default()
        })
        .await
        .expect("notes");
    assert_eq!(actions, vec![second.clone()]);
    assert_eq!(
        actions[0].action.as_ref().map(|a| a.due.to_string()),
        Some("2026-02-01".to_owned())
    );
    let recent = store
        .notes(&NoteFilter {
            since: Some(at(15)),
            ..NoteFilter::default()
        })
        .await
        .expect("notes");
    assert_eq!(recent, vec![second.clone()]);
    let other = store
        .notes(&NoteFilter {
            releases: Some(vec![ReleaseId::from("other")]),
            ..NoteFilter::default()
        })
        .await
        .expect("notes");
    assert!(other.is_empty());

    // Each note's audit entry names it, by the number the store gave it.
    let audit = store
        .list_audit(&AuditFilter {
            release: Some(release.id.clone()),
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    let subjects: Vec<&str> = audit
        .iter()
        .filter(|entry| entry.action == "note.add")
        .map(|entry| entry.subject.as_str())
        .collect();
    assert_eq!(
        subjects,
        [format!("note/{}", first.id), format!("note/{}", second.id)]
    );

    // A note about a release that does not exist is refused, and leaves no audit entry.
    let stray = plan_note("nope", "x", "", "", "alice", at(30)).expect("a note");
    assert!(
        store
            .add_note(&stray, &note_audit("alice", 30))
            .await
            .is_err()
    );
    let n_entries = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit")
        .iter()
        .filter(|entry| entry.action == "note.add")
        .count();
    assert_eq!(n_entries, 2);
}

fn stored_decision(verdict: Verdict, digest: &str, secs: i64) -> Decision {
    Decision {
        release: "r550".into(),
        milestone: "lab-qual".into(),
        verdict,
        summary: String::new(),
        rules: Vec::new(),
        digest: digest.into(),
        policy_version: "p1".into(),
        evaluated_at: at(secs),
    }
}

async fn passed_decisions_are_listed_once_per_digest_since_a_time(store: &Store) {
    let release = add_release(store).await;
    for decision in [
        stored_decision(Verdict::Passed, "old", 5),
        stored_decision(Verdict::Failed, "failing", 20),
        stored_decision(Verdict::Passed, "d1", 30),
        stored_decision(Verdict::Passed, "d1", 40),
        stored_decision(Verdict::Passed, "d2", 50),
    ] {
        store.insert_decision(&decision).await.expect("decision");
    }
    let passed = store
        .passed_decisions_since(&release.id, at(10))
        .await
        .expect("passed");
    let seen: Vec<(&str, Timestamp)> = passed
        .iter()
        .map(|passed| (passed.digest.as_str(), passed.at))
        .collect();
    assert_eq!(seen, [("d1", at(30)), ("d2", at(50))]);
    assert!(passed.iter().all(|passed| passed.milestone == "lab-qual"));
}
