//! Store tests of issues: one per signature, attachments that add only what is new, state
//! changes by compare-and-set, each with its history and audit entry, on both backends.

use super::*;
use crate::store::{
    AuditFilter, ImportOutcome, ImportedIssue, IssueFields, IssueFilter, IssueTransition,
};
use std::collections::BTreeSet;
use tollgate_domain::issue::{Failure, IssueState, Signature};

on_both_backends!(
    an_issue_is_opened_once_per_signature_and_attaches_what_is_new,
    issue_states_change_from_what_they_were_with_history_and_audit,
    gate_decisions_open_attach_and_verify_issues,
    issue_fields_change_by_compare_and_set_with_history_and_audit,
    issue_lists_filter_by_state_release_customer_and_node_in_pages,
    issue_imports_open_and_update_by_signature_all_or_nothing,
    webhook_events_are_queued_in_the_change_s_transaction,
);

fn nodes(names: &[&str]) -> BTreeSet<NodeId> {
    names.iter().map(|name| NodeId::from(*name)).collect()
}

fn failure(text: &str, release: &str, on: &[&str]) -> Failure {
    Failure {
        signature: Signature {
            kind: "steps-passed".into(),
            text: text.into(),
        },
        release: ReleaseId::from(release),
        nodes: nodes(on),
    }
}

async fn an_issue_is_opened_once_per_signature_and_attaches_what_is_new(store: &Store) {
    let gemm = failure("gemm: failed", "r1", &["n1"]);
    let id = store
        .open_issue(&gemm, "gemm fails", "controller", at(1))
        .await
        .expect("open")
        .expect("a new issue");
    // A second writer with the same signature opens nothing.
    assert_eq!(
        store
            .open_issue(&gemm, "gemm fails", "controller", at(2))
            .await
            .expect("open"),
        None
    );
    let other = store
        .open_issue(
            &failure("nccl: failed", "r1", &["n2"]),
            "nccl",
            "alice",
            at(3),
        )
        .await
        .expect("open")
        .expect("another issue");
    assert_ne!(id, other);

    // Attaching what the issue knows already adds nothing; new nodes and releases are added.
    store
        .attach_to_issue(
            id,
            Some(&ReleaseId::from("r1")),
            &nodes(&["n1", "n3"]),
            None,
            "controller",
            at(4),
        )
        .await
        .expect("attach");
    store
        .attach_to_issue(
            id,
            Some(&ReleaseId::from("r2")),
            &nodes(&[]),
            None,
            "controller",
            at(5),
        )
        .await
        .expect("attach");
    let issue = store.issue(id).await.expect("issue").expect("found");
    assert_eq!(issue.signature.key(), "steps-passed: gemm: failed");
    assert_eq!(issue.title, "gemm fails");
    assert_eq!(issue.state, IssueState::Open);
    assert_eq!(issue.nodes, nodes(&["n1", "n3"]));
    let releases: Vec<&str> = issue.releases.iter().map(ReleaseId::as_str).collect();
    assert_eq!(releases, ["r1", "r2"]);
    assert_eq!(issue.opened_at, at(1));
    assert_eq!(issue.updated_at, at(5));

    let found = store
        .issues_with_signatures(std::slice::from_ref(&gemm.signature))
        .await
        .expect("by signature");
    assert_eq!(found, vec![issue.clone()]);
    let in_r2 = store
        .issues(
            &IssueFilter {
                release: Some(ReleaseId::from("r2")),
                ..IssueFilter::default()
            },
            100,
        )
        .await
        .expect("list");
    assert_eq!(in_r2, vec![issue]);
    assert_eq!(
        store
            .issues(&IssueFilter::default(), 100)
            .await
            .expect("list")
            .len(),
        2
    );

    let history = store.issue_history(id).await.expect("history");
    let actions: Vec<&str> = history.iter().map(|entry| entry.action.as_str()).collect();
    assert_eq!(actions, ["opened", "attached", "attached"]);
    assert_eq!(history[1].detail, "release r1; nodes n1, n3");
    let audit = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit");
    let issue_actions: Vec<&str> = audit
        .iter()
        .filter(|entry| entry.subject == format!("issue/{id}"))
        .map(|entry| entry.action.as_str())
        .collect();
    assert_eq!(
        issue_actions,
        ["issue.open", "issue.attach", "issue.attach"]
    );
    assert!(store.verify_audit().await.expect("verify").is_ok());
}

async fn issue_states_change_from_what_they_were_with_history_and_audit(store: &Store) {
    let id = store
        .open_issue(
            &failure("XID 79", "r1", &["n1"]),
            "fell off the bus",
            "controller",
            at(1),
        )
        .await
        .expect("open")
        .expect("a new issue");
    let r2 = ReleaseId::from("r2");
    let fix = IssueTransition {
        from: IssueState::Open,
        to: IssueState::FixInRelease {
            release: r2.clone(),
        },
        evidence: None,
    };
    store
        .change_issue_state(id, &fix, "fix", "fix in r2", "alice", at(2))
        .await
        .expect("fix");
    // Decided from "open", which it no longer is.
    assert!(matches!(
        store
            .change_issue_state(id, &fix, "fix", "again", "bob", at(3))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store
            .change_issue_state(9999, &fix, "fix", "none", "bob", at(3))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let close = IssueTransition {
        from: IssueState::FixInRelease {
            release: r2.clone(),
        },
        to: IssueState::Closed {
            release: r2.clone(),
        },
        evidence: Some("digest-of-r2".into()),
    };
    store
        .change_issue_state(id, &close, "verified", "passed on n1", "controller", at(4))
        .await
        .expect("close");
    let issue = store.issue(id).await.expect("issue").expect("found");
    assert_eq!(
        issue.state,
        IssueState::Closed {
            release: r2.clone()
        }
    );
    assert_eq!(issue.evidence.as_deref(), Some("digest-of-r2"));
    let closed = store
        .issues(
            &IssueFilter {
                state: Some("closed".into()),
                release: Some(r2.clone()),
                ..IssueFilter::default()
            },
            100,
        )
        .await
        .expect("list");
    assert_eq!(closed.len(), 1);

    let wont = IssueTransition {
        from: IssueState::Open,
        to: IssueState::WontFix {
            reason: "board revision".into(),
        },
        evidence: None,
    };
    let reopen = IssueTransition {
        from: issue.state.clone(),
        to: IssueState::Open,
        evidence: None,
    };
    store
        .attach_to_issue(
            id,
            Some(&ReleaseId::from("r3")),
            &nodes(&[]),
            Some(&reopen),
            "controller",
            at(5),
        )
        .await
        .expect("reopen");
    store
        .change_issue_state(id, &wont, "wont-fix", "board revision", "alice", at(6))
        .await
        .expect("won't fix");
    let issue = store.issue(id).await.expect("issue").expect("found");
    assert_eq!(issue.state.reason(), Some("board revision"));

    let history = store.issue_history(id).await.expect("history");
    let states: Vec<(&str, &str)> = history
        .iter()
        .map(|entry| (entry.action.as_str(), entry.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("opened", "open"),
            ("fix", "fix-in-release"),
            ("verified", "closed"),
            ("attached, open", "open"),
            ("wont-fix", "wont-fix"),
        ]
    );
    let audit = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit");
    let verified = audit
        .iter()
        .find(|entry| entry.action == "issue.verified")
        .expect("audited");
    let details: serde_json::Value = serde_json::from_str(&verified.details).expect("json");
    assert_eq!(details["evidence"], "digest-of-r2");
    assert_eq!(verified.subject, format!("issue/{id}"));
    assert!(store.verify_audit().await.expect("verify").is_ok());
}

/// A decision of `release` whose one `steps-passed` rule judged `items` (node, failing
/// signature or none for a pass).
fn decision(release: &str, digest: &str, items: &[(&str, Option<&str>)]) -> Decision {
    let evidence: Vec<EvidenceItem> = items
        .iter()
        .map(|(node, failing)| EvidenceItem {
            node: NodeId::from(*node),
            step: Some("gemm".into()),
            attempt: Some(1),
            gpu_index: None,
            value: None,
            limit: None,
            detail: "gemm".into(),
            ok: failing.is_none(),
            signature: failing.map(str::to_owned),
        })
        .collect();
    let mut groups: std::collections::BTreeMap<String, BTreeSet<NodeId>> = Default::default();
    for item in evidence.iter().filter(|item| !item.ok) {
        let signature = item.signature.clone().expect("a failing item has one");
        groups
            .entry(signature)
            .or_default()
            .insert(item.node.clone());
    }
    let verdict = if groups.is_empty() {
        Verdict::Passed
    } else {
        Verdict::Failed
    };
    Decision {
        release: release.into(),
        milestone: "lab-qual".into(),
        verdict,
        summary: String::new(),
        rules: vec![RuleDecision {
            rule_id: "steps".into(),
            kind: "steps-passed".into(),
            verdict,
            reason: String::new(),
            evidence,
            failing_nodes: Vec::new(),
            failure_groups: groups
                .into_iter()
                .map(|(signature, nodes)| tollgate_domain::gate::FailureGroup {
                    signature,
                    count: nodes.len(),
                    nodes: nodes.into_iter().collect(),
                })
                .collect(),
            waiver_id: None,
        }],
        digest: digest.into(),
        policy_version: "p".into(),
        evaluated_at: at(0),
    }
}

async fn gate_decisions_open_attach_and_verify_issues(store: &Store) {
    use crate::issues::track_decision;
    let fp16 = Some("gemm: testcase gemm_fp16 failed");
    let fp8 = Some("gemm: testcase gemm_fp8 failed");
    let all = || async {
        store
            .issues(&IssueFilter::default(), 100)
            .await
            .expect("list")
    };

    // A failing testcase opens an issue; the same decision evaluated again changes nothing.
    let first = decision("r1", "d1", &[("n1", fp16), ("n2", None)]);
    track_decision(store, &first, at(1)).await.expect("track");
    track_decision(store, &first, at(2))
        .await
        .expect("track again");
    let issues = all().await;
    assert_eq!(issues.len(), 1, "{issues:?}");
    let id = issues[0].id;
    assert_eq!(issues[0].nodes, nodes(&["n1"]));
    assert_eq!(store.issue_history(id).await.expect("history").len(), 1);

    // A second run: the same testcase on a new node attaches; another testcase opens an issue.
    let second = decision("r1", "d2", &[("n1", fp16), ("n3", fp16), ("n2", fp8)]);
    track_decision(store, &second, at(3)).await.expect("track");
    let issues = all().await;
    assert_eq!(issues.len(), 2, "{issues:?}");
    assert_eq!(issues[0].id, id);
    assert_eq!(issues[0].nodes, nodes(&["n1", "n3"]));
    assert_eq!(issues[1].signature.text, "gemm: testcase gemm_fp8 failed");

    // The fix is in r2: r2 passing on one affected node starts verifying, on all closes it
    // with the decision as evidence.
    let r2 = ReleaseId::from("r2");
    let fix = IssueTransition {
        from: IssueState::Open,
        to: IssueState::FixInRelease {
            release: r2.clone(),
        },
        evidence: None,
    };
    store
        .change_issue_state(id, &fix, "fix", "fix in r2", "alice", at(4))
        .await
        .expect("fix");
    track_decision(store, &decision("r2", "e1", &[("n1", None)]), at(5))
        .await
        .expect("track");
    let issue = store.issue(id).await.expect("issue").expect("found");
    assert_eq!(
        issue.state,
        IssueState::Verifying {
            release: r2.clone()
        }
    );
    track_decision(
        store,
        &decision("r2", "e2", &[("n1", None), ("n3", None)]),
        at(6),
    )
    .await
    .expect("track");
    let issue = store.issue(id).await.expect("issue").expect("found");
    assert_eq!(
        issue.state,
        IssueState::Closed {
            release: r2.clone()
        }
    );
    assert_eq!(issue.evidence.as_deref(), Some("e2"));
    let history = store.issue_history(id).await.expect("history");
    let last = history.last().expect("entries");
    assert_eq!(last.action, "verified");
    assert_eq!(last.actor, crate::issues::ACTOR);
    assert_eq!(
        last.detail,
        "release r2 passed the checks on n1, n3 (decision e2)"
    );

    // r1's gate evaluated again does not reopen it; a failure in a new release does.
    track_decision(store, &second, at(7)).await.expect("track");
    assert!(
        store
            .issue(id)
            .await
            .expect("issue")
            .expect("found")
            .state
            .is_done()
    );
    track_decision(store, &decision("r3", "f1", &[("n1", fp16)]), at(8))
        .await
        .expect("track");
    let issue = store.issue(id).await.expect("issue").expect("found");
    assert_eq!(issue.state, IssueState::Open);
    assert!(issue.releases.contains(&ReleaseId::from("r3")));
    assert_eq!(all().await.len(), 2);
}

async fn issue_fields_change_by_compare_and_set_with_history_and_audit(store: &Store) {
    let fields = IssueFields {
        title: "gemm fails".into(),
        severity: Some("high".into()),
        owner: Some("bob".into()),
        ..IssueFields::default()
    };
    let id = store
        .open_issue_with(
            &failure("gemm: failed", "r1", &["n1"]),
            &fields,
            "bob",
            at(1),
        )
        .await
        .expect("open")
        .expect("a new issue");
    let opened = store.issue(id).await.expect("issue").expect("found");
    assert_eq!(opened.severity.as_deref(), Some("high"));
    assert_eq!(opened.owner.as_deref(), Some("bob"));

    let changed = IssueFields {
        owner: Some("alice".into()),
        tickets: vec!["JIRA-1".into()],
        customers: ["acme".to_owned()].into(),
        ..fields.clone()
    };
    store
        .update_issue(
            id,
            opened.updated_at,
            &changed,
            "owner alice",
            "alice",
            at(2),
        )
        .await
        .expect("update");
    let updated = store.issue(id).await.expect("issue").expect("found");
    assert_eq!(updated.owner.as_deref(), Some("alice"));
    assert_eq!(updated.tickets, ["JIRA-1"]);
    assert_eq!(updated.customers, ["acme".to_owned()].into());
    assert_eq!(updated.updated_at, at(2));
    assert_eq!(updated.state, IssueState::Open);

    // A writer that read the issue before that change loses, and changes nothing.
    let stale = store
        .update_issue(id, opened.updated_at, &fields, "owner bob", "bob", at(3))
        .await
        .expect_err("stale");
    assert!(matches!(stale, StoreError::Conflict { .. }), "{stale:?}");
    assert_eq!(store.issue(id).await.expect("issue"), Some(updated));
    let missing = store
        .update_issue(999, at(2), &fields, "owner bob", "bob", at(3))
        .await
        .expect_err("no such issue");
    assert!(
        matches!(missing, StoreError::NotFound { .. }),
        "{missing:?}"
    );

    let history = store.issue_history(id).await.expect("history");
    let actions: Vec<(&str, &str)> = history
        .iter()
        .map(|entry| (entry.action.as_str(), entry.detail.as_str()))
        .collect();
    assert_eq!(actions[1], ("updated", "owner alice"));
    assert_eq!(history.len(), 2);
    let audit = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit");
    let update: Vec<_> = audit
        .iter()
        .filter(|entry| entry.action == "issue.update")
        .collect();
    assert_eq!(update.len(), 1);
    assert_eq!(update[0].subject, format!("issue/{id}"));
    assert_eq!(update[0].actor, "alice");
}

async fn issue_lists_filter_by_state_release_customer_and_node_in_pages(store: &Store) {
    let mut ids = Vec::new();
    for (text, release, node) in [("a", "r1", "n1"), ("b", "r1", "n2"), ("c", "r2", "n2")] {
        let id = store
            .open_issue(&failure(text, release, &[node]), text, "controller", at(1))
            .await
            .expect("open")
            .expect("a new issue");
        ids.push(id);
    }
    let b = store.issue(ids[1]).await.expect("issue").expect("found");
    let with_customer = IssueFields {
        title: b.title.clone(),
        customers: ["acme".to_owned()].into(),
        ..IssueFields::default()
    };
    store
        .update_issue(
            ids[1],
            b.updated_at,
            &with_customer,
            "customers acme",
            "alice",
            at(2),
        )
        .await
        .expect("update");
    store
        .change_issue_state(
            ids[2],
            &IssueTransition {
                from: IssueState::Open,
                to: IssueState::WontFix {
                    reason: "retired".into(),
                },
                evidence: None,
            },
            "wont-fix",
            "retired",
            "alice",
            at(3),
        )
        .await
        .expect("won't fix");
    let listed = |filter: IssueFilter, after: Option<i64>, limit: usize| async move {
        store
            .issues_after(&filter, after, limit)
            .await
            .expect("list")
            .iter()
            .map(|issue| issue.id)
            .collect::<Vec<i64>>()
    };
    assert_eq!(listed(IssueFilter::default(), None, 10).await, ids);
    let release = IssueFilter {
        release: Some(ReleaseId::from("r1")),
        ..IssueFilter::default()
    };
    assert_eq!(listed(release, None, 10).await, ids[..2]);
    let customer = IssueFilter {
        customer: Some("acme".into()),
        ..IssueFilter::default()
    };
    assert_eq!(listed(customer, None, 10).await, [ids[1]]);
    let node = IssueFilter {
        node: Some(NodeId::from("n2")),
        ..IssueFilter::default()
    };
    assert_eq!(listed(node.clone(), None, 10).await, ids[1..]);
    let open_on_n2 = IssueFilter {
        state: Some(IssueState::Open.name().into()),
        ..node
    };
    assert_eq!(listed(open_on_n2, None, 10).await, [ids[1]]);
    // Pages start after the last number sent.
    assert_eq!(listed(IssueFilter::default(), None, 2).await, ids[..2]);
    assert_eq!(
        listed(IssueFilter::default(), Some(ids[1]), 2).await,
        [ids[2]]
    );
}

fn imported(text: &str, title: &str, owner: Option<&str>, state: IssueState) -> ImportedIssue {
    ImportedIssue {
        signature: Signature {
            kind: "steps-passed".into(),
            text: text.into(),
        },
        fields: IssueFields {
            title: title.into(),
            owner: owner.map(str::to_owned),
            tickets: vec!["JIRA-9".into()],
            customers: ["acme".to_owned()].into(),
            ..IssueFields::default()
        },
        state,
        releases: [ReleaseId::from("r1")].into(),
        nodes: nodes(&["n1", "n2"]),
        evidence: None,
    }
}

async fn issue_imports_open_and_update_by_signature_all_or_nothing(store: &Store) {
    let existing = store
        .open_issue(
            &failure("gemm: failed", "r0", &["n9"]),
            "gemm",
            "controller",
            at(1),
        )
        .await
        .expect("open")
        .expect("a new issue");
    let gemm = imported(
        "gemm: failed",
        "gemm is slow",
        Some("alice"),
        IssueState::Open,
    );
    let closed = imported(
        "nccl: failed",
        "nccl",
        None,
        IssueState::Closed {
            release: ReleaseId::from("r2"),
        },
    );
    let audit_before = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit")
        .len();

    // A batch that fails on its last entry (a signature given twice) writes nothing: not the
    // update of the existing issue, not the new one.
    let refused = store
        .import_issues(
            &[gemm.clone(), closed.clone(), closed.clone()],
            "alice",
            at(2),
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::AlreadyExists { .. })),
        "{refused:?}"
    );
    let all = store
        .issues(&IssueFilter::default(), 100)
        .await
        .expect("list");
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].title, "gemm");
    assert_eq!(all[0].owner, None);
    assert_eq!(
        store.issue_history(existing).await.expect("history").len(),
        1
    );
    assert_eq!(
        store
            .list_audit(&AuditFilter::default())
            .await
            .expect("audit")
            .len(),
        audit_before
    );

    // The batch without the duplicate: the existing issue takes the fields, the new one is
    // opened as given (state, releases, nodes), each with history and audit.
    let outcome = store
        .import_issues(&[gemm.clone(), closed.clone()], "alice", at(3))
        .await
        .expect("import");
    assert_eq!(outcome.updated, vec![existing]);
    assert_eq!(outcome.opened.len(), 1);
    assert!(outcome.unchanged.is_empty());
    let updated = store.issue(existing).await.expect("read").expect("there");
    assert_eq!(updated.title, "gemm is slow");
    assert_eq!(updated.owner.as_deref(), Some("alice"));
    assert_eq!(updated.tickets, ["JIRA-9"]);
    assert_eq!(updated.state, IssueState::Open);
    assert_eq!(
        updated.releases,
        [ReleaseId::from("r0")].into(),
        "not attached"
    );
    let new = store
        .issue(outcome.opened[0])
        .await
        .expect("read")
        .expect("there");
    assert_eq!(
        new.state,
        IssueState::Closed {
            release: ReleaseId::from("r2")
        }
    );
    assert_eq!(new.nodes, nodes(&["n1", "n2"]));
    assert_eq!(new.customers, ["acme".to_owned()].into());
    let history = store.issue_history(existing).await.expect("history");
    assert_eq!(history.last().expect("an entry").action, "imported");
    assert_eq!(
        history.last().expect("an entry").detail,
        "title gemm is slow; owner alice; tickets JIRA-9; customers acme"
    );
    let imports = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit")
        .iter()
        .filter(|entry| entry.action == "issue.import")
        .count();
    assert_eq!(imports, 2);

    // The same batch again changes nothing.
    let again = store
        .import_issues(&[gemm, closed], "alice", at(4))
        .await
        .expect("import");
    assert_eq!(
        again,
        ImportOutcome {
            unchanged: vec![existing, outcome.opened[0]],
            ..ImportOutcome::default()
        }
    );
    assert_eq!(store.issue(existing).await.expect("read"), Some(updated));
    assert_eq!(
        store.issue_history(existing).await.expect("history"),
        history
    );
    assert!(store.verify_audit().await.expect("verify").is_ok());
}

/// The events queued for the webhook, as `(issue, event)`, oldest first.
async fn queued(store: &Store) -> Vec<(i64, String)> {
    store
        .queued_webhooks(100)
        .await
        .expect("queued")
        .into_iter()
        .map(|queued| (queued.issue_id, queued.event))
        .collect()
}

async fn webhook_events_are_queued_in_the_change_s_transaction(plain: &Store) {
    // Without a webhook, changes queue nothing.
    plain
        .open_issue(
            &failure("nccl: failed", "r1", &["n1"]),
            "nccl",
            "bob",
            at(1),
        )
        .await
        .expect("open")
        .expect("new");
    assert_eq!(queued(plain).await, []);

    let store = plain.clone().with_issue_webhook(true);
    let id = store
        .open_issue(
            &failure("gemm: failed", "r1", &["n1"]),
            "gemm",
            "bob",
            at(2),
        )
        .await
        .expect("open")
        .expect("new");
    store
        .attach_to_issue(
            id,
            Some(&ReleaseId::from("r2")),
            &nodes(&["n2"]),
            None,
            "bob",
            at(3),
        )
        .await
        .expect("attach");
    let fixed = IssueTransition {
        from: IssueState::Open,
        to: IssueState::FixInRelease {
            release: ReleaseId::from("r3"),
        },
        evidence: None,
    };
    store
        .change_issue_state(id, &fixed, "fix-promised", "in r3", "alice", at(4))
        .await
        .expect("state");
    // A change that loses its compare-and-set queues nothing.
    assert!(matches!(
        store
            .change_issue_state(id, &fixed, "fix-promised", "in r3", "alice", at(5))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let before = store.issue(id).await.expect("read").expect("issue");
    let fields = IssueFields {
        title: "gemm fails".into(),
        ..IssueFields::default()
    };
    store
        .update_issue(id, before.updated_at, &fields, "title", "alice", at(6))
        .await
        .expect("update");
    let expected = |tail: &[(i64, &str)]| -> Vec<(i64, String)> {
        [
            (id, "opened"),
            (id, "attached"),
            (id, "state"),
            (id, "updated"),
        ]
        .iter()
        .chain(tail)
        .map(|(issue, event)| (*issue, (*event).to_owned()))
        .collect()
    };
    assert_eq!(queued(&store).await, expected(&[]));

    // An import that fails on its last entry rolls back the outbox rows of the entries before
    // it with everything else.
    let gemm = imported("gemm: failed", "gemm again", None, IssueState::Open);
    let new = imported("ecc: failed", "ecc", None, IssueState::Open);
    assert!(matches!(
        store
            .import_issues(&[gemm.clone(), new.clone(), new.clone()], "alice", at(7))
            .await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(queued(&store).await, expected(&[]));
    let outcome = store
        .import_issues(&[gemm, new], "alice", at(8))
        .await
        .expect("import");
    let ecc = outcome.opened[0];
    assert_eq!(
        queued(&store).await,
        expected(&[(id, "imported"), (ecc, "imported")])
    );

    // Delivered events leave the outbox once, by compare-and-set on their id; ids increase.
    let events = store.queued_webhooks(100).await.expect("queued");
    assert!(events.windows(2).all(|pair| pair[0].id < pair[1].id));
    assert_eq!(events[0].at, at(2));
    assert!(
        store
            .webhook_delivered(events[0].id)
            .await
            .expect("delivered")
    );
    assert!(
        !store
            .webhook_delivered(events[0].id)
            .await
            .expect("delivered again")
    );
    assert_eq!(queued(&store).await[0], (id, "attached".to_owned()));
}
