//! Issues kept up to date with gate decisions: after a decision is stored, its failure groups
//! open issues for new signatures and attach to known ones (`tollgate_domain::issue::
//! plan_matches`), and the issues whose fix is in the decision's release are verified by it
//! (`plan_verification`), closing with the decision's digest as their evidence.
//!
//! Every step adds only what is new, so evaluating the same evidence again changes nothing;
//! a step that lost a race with another replica (`Conflict`) is left to the next evaluation.

use crate::store::{IssueFilter, IssueTransition, Store, StoreError};
use tollgate_domain::gate::Decision;
use tollgate_domain::issue::{self, IssueEvent, IssueStateName, KnownIssue, Match, NodeCheck};
use tollgate_domain::{ReleaseId, Timestamp};

/// Who the history and the audit log name for automatic changes.
pub const ACTOR: &str = "controller";

/// The most issues of one release in one state that one decision verifies.
const VERIFIED_PER_DECISION: usize = 1000;

/// Brings issues up to date with `decision`, just stored, at `now`. Problems are logged, not
/// returned: the decision stands, and the next evaluation tries again from the store.
pub async fn track(store: &Store, decision: &Decision, now: Timestamp) {
    if let Err(error) = track_decision(store, decision, now).await {
        tracing::warn!(
            release = %decision.release,
            milestone = %decision.milestone,
            %error,
            "could not bring issues up to date with a gate decision"
        );
    }
}

/// [`track`], returning what went wrong.
pub async fn track_decision(
    store: &Store,
    decision: &Decision,
    now: Timestamp,
) -> Result<(), StoreError> {
    let failures = issue::failures_of(decision);
    if !failures.is_empty() {
        let signatures: Vec<_> = failures.iter().map(|f| f.signature.clone()).collect();
        let known: Vec<KnownIssue> = store
            .issues_with_signatures(&signatures)
            .await?
            .iter()
            .map(issue::Issue::known)
            .collect();
        for matched in issue::plan_matches(&known, &failures) {
            let outcome = match matched {
                Match::Open(failure) => store
                    .open_issue(&failure, &failure.signature.key(), ACTOR, now)
                    .await
                    .map(|opened| {
                        if let Some(id) = opened {
                            tracing::info!(
                                issue = id,
                                signature = %failure.signature.key(),
                                release = %failure.release,
                                "issue opened"
                            );
                        }
                    }),
                Match::Attach {
                    id,
                    new_release,
                    new_nodes,
                    event,
                } => {
                    let transition = event.and_then(|event| {
                        let from = known.iter().find(|k| k.id == id)?.state.clone();
                        let to = issue::next(&from, event).ok()?;
                        Some(IssueTransition {
                            from,
                            to,
                            evidence: None,
                        })
                    });
                    store
                        .attach_to_issue(
                            id,
                            new_release.as_ref(),
                            &new_nodes,
                            transition.as_ref(),
                            ACTOR,
                            now,
                        )
                        .await
                }
            };
            lost_race_is_fine(outcome)?;
        }
    }
    verify(store, decision, now).await
}

/// Verifies the issues whose fix is in the decision's release by its evidence.
async fn verify(store: &Store, decision: &Decision, now: Timestamp) -> Result<(), StoreError> {
    let release = ReleaseId::from(decision.release.as_str());
    for state in [IssueStateName::FixInRelease, IssueStateName::Verifying] {
        let filter = IssueFilter {
            state: Some(state.to_string()),
            release: Some(release.clone()),
            ..IssueFilter::default()
        };
        for found in store.issues(&filter, VERIFIED_PER_DECISION).await? {
            let checks = issue::checks_of(decision, &found.signature);
            let Some(event) =
                issue::plan_verification(&found.state, &found.nodes, &release, &checks)
            else {
                continue;
            };
            let Ok(to) = issue::next(&found.state, event.clone()) else {
                continue;
            };
            let passed: Vec<&str> = checks
                .iter()
                .filter(|(node, check)| **check == NodeCheck::Passed && found.nodes.contains(*node))
                .map(|(node, _)| node.as_str())
                .collect();
            let detail = match event {
                IssueEvent::StillFailing => format!(
                    "release {release} still fails {} (decision {})",
                    found.signature.key(),
                    decision.digest
                ),
                _ => format!(
                    "release {release} passed the checks on {} (decision {})",
                    passed.join(", "),
                    decision.digest
                ),
            };
            let transition = IssueTransition {
                from: found.state.clone(),
                evidence: (event == IssueEvent::Verified).then(|| decision.digest.clone()),
                to,
            };
            let outcome = store
                .change_issue_state(found.id, &transition, event.name(), &detail, ACTOR, now)
                .await;
            if outcome.is_ok() {
                tracing::info!(issue = found.id, state = transition.to.name(), "{detail}");
            }
            lost_race_is_fine(outcome)?;
        }
    }
    Ok(())
}

/// A change another writer made first is no failure: the next evaluation starts from it.
fn lost_race_is_fine<T>(outcome: Result<T, StoreError>) -> Result<(), StoreError> {
    match outcome {
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}
