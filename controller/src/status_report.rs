//! The facts of a status report: loads what `tollgate_domain::status_report` renders (the
//! releases, scoped to a customer when asked; their projections, made once for all of them;
//! what passed since a time; their gate evaluated now; open issues; waivers about to expire;
//! the minutes). Decides nothing itself.

use crate::grpc::report::evaluate;
use crate::report::CustomerScope;
use crate::shared::Shared;
use crate::store::{IssueFilter, NoteFilter};
use std::collections::BTreeSet;
use tollgate_domain::access::CUSTOMER_LABEL;
use tollgate_domain::gate::Verdict;
use tollgate_domain::note::Note;
use tollgate_domain::release::RELEASED;
use tollgate_domain::status_report::{
    ExpiringWaiver, FailingRule, Minutes, OpenIssue, Passed, ReleaseStatus, StatusFacts,
    waiver_horizon,
};
use tollgate_domain::{ReleaseId, Timestamp};
use tollgate_proto::v1 as proto;
use tollgate_wire::ToProto;
use tonic::Status;

/// How many issues of one release a report reads.
const ISSUES_MAX: usize = 1000;

/// What a report covers.
#[derive(Clone, Debug)]
pub struct StatusScope {
    /// Only this customer's releases, nodes and issues; `None` for everything.
    pub customer: Option<String>,
    /// What passed is reported from here on.
    pub since: Timestamp,
    /// Whether to add the minutes.
    pub minutes: bool,
}

/// Gathers the facts of the report `scope` asks for, now.
pub async fn gather(shared: &Shared, scope: &StatusScope) -> Result<StatusFacts, Status> {
    let now = shared.now();
    let store = &shared.store;
    let mut releases = store.list_releases().await?;
    releases.reverse();
    let ids: Vec<ReleaseId> = releases.iter().map(|release| release.id.clone()).collect();
    let mut customers_of = store.release_customers_of(&ids).await?;
    let customer_nodes = match &scope.customer {
        Some(customer) => Some(crate::grpc::customer_nodes(shared, customer).await?),
        None => None,
    };
    let customer_scope = scope.customer.as_ref().map(|customer| CustomerScope {
        label: CUSTOMER_LABEL.to_owned(),
        value: customer.clone(),
    });
    // One projection for every release: it is the expensive part.
    let mut projections = crate::projections::project_now(shared).await?;
    let mut statuses = Vec::new();
    for release in releases {
        let customers = customers_of.remove(&release.id).unwrap_or_default();
        if let Some(customer) = &scope.customer
            && !customers.contains(customer)
        {
            continue;
        }
        let mut passed: Vec<Passed> = release
            .promotions
            .iter()
            .filter(|promotion| promotion.at >= scope.since)
            .map(|promotion| Passed::Promotion {
                at: promotion.at,
                from: promotion.from_milestone.clone(),
                to: promotion.to_milestone.clone(),
                actor: promotion.actor.clone(),
            })
            .collect();
        // Stored decisions are the whole fleet's: a customer's report lists promotions only.
        if scope.customer.is_none() {
            for decision in store
                .passed_decisions_since(&release.id, scope.since)
                .await?
            {
                passed.push(Passed::Gate {
                    at: decision.at,
                    milestone: decision.milestone,
                    digest: decision.digest,
                });
            }
        }
        passed.sort_by_key(Passed::at);
        let released = release.milestone == RELEASED;
        if released && passed.is_empty() {
            continue;
        }
        let halted = store
            .release_state(&release.id)
            .await?
            .and_then(|state| state.halted);
        let decision = if released || halted.is_some() {
            Err(String::new())
        } else {
            match evaluate(
                shared,
                &release,
                &release.milestone,
                customer_scope.as_ref(),
            )
            .await
            {
                Ok(evaluated) => Ok(evaluated.decision),
                Err(status) => Err(status.message().to_owned()),
            }
        };
        let wire_release = proto::Release {
            name: release.id.to_string(),
            milestone: release.milestone.clone(),
            halted_reason: halted.clone().unwrap_or_default(),
            ..proto::Release::default()
        };
        let wire_decision = decision
            .as_ref()
            .map(ToProto::to_proto)
            .map_err(Clone::clone);
        let blocker = tollgate_wire::release::blocker(&wire_release, &wire_decision);
        let (failing_rules, missing_evidence) = match &decision {
            Ok(decision) => (
                decision
                    .rules
                    .iter()
                    .filter(|rule| matches!(rule.verdict, Verdict::Failed | Verdict::Error))
                    .map(|rule| FailingRule {
                        rule_id: rule.rule_id.clone(),
                        verdict: rule.verdict.as_str().to_owned(),
                        reason: rule.reason.clone(),
                        nodes: rule.failing_nodes.iter().map(ToString::to_string).collect(),
                    })
                    .collect(),
                decision
                    .rules
                    .iter()
                    .filter(|rule| rule.verdict == Verdict::Waiting)
                    .map(|rule| rule.rule_id.clone())
                    .collect(),
            ),
            Err(_) => (Vec::new(), Vec::new()),
        };
        let open_issues = open_issues(shared, &release.id, customer_nodes.as_ref()).await?;
        let horizon = waiver_horizon(now);
        let expiring_waivers = store
            .list_waivers(&release.id, None)
            .await?
            .into_iter()
            .filter(|waiver| waiver.in_force(now) && waiver.expires_at <= horizon)
            .map(|waiver| ExpiringWaiver {
                id: waiver.id,
                milestone: waiver.milestone,
                rule_id: waiver.rule_id,
                expires_at: waiver.expires_at,
            })
            .collect();
        statuses.push(ReleaseStatus {
            milestones: projections
                .remove(&release.id)
                .map(|projection| projection.milestones)
                .unwrap_or_default(),
            release: release.id,
            milestone: release.milestone,
            customers,
            passed,
            blocker,
            failing_rules,
            missing_evidence,
            open_issues,
            expiring_waivers,
        });
    }
    // A customer's report names no release that customer could not get, not even as what
    // one of its milestones waits for.
    crate::grpc::hide_unseen_holders(
        shared,
        scope.customer.as_deref(),
        statuses
            .iter_mut()
            .flat_map(|status| status.milestones.iter_mut()),
    )
    .await?;
    let minutes = if scope.minutes {
        Some(minutes(shared, scope, &statuses).await?)
    } else {
        None
    };
    Ok(StatusFacts {
        now,
        since: scope.since,
        customer: scope.customer.clone(),
        dashboard: shared.config.dashboard_url.clone().unwrap_or_default(),
        releases: statuses,
        minutes,
    })
}

/// The issues of `release` not closed or won't-fix; for a customer, only those seen on its
/// nodes, titled by their signature (a title names the nodes of every customer).
async fn open_issues(
    shared: &Shared,
    release: &ReleaseId,
    customer_nodes: Option<&BTreeSet<String>>,
) -> Result<Vec<OpenIssue>, Status> {
    let filter = IssueFilter {
        release: Some(release.clone()),
        ..IssueFilter::default()
    };
    Ok(shared
        .store
        .issues(&filter, ISSUES_MAX)
        .await?
        .into_iter()
        .filter(|issue| !issue.state.is_done())
        .filter(|issue| {
            customer_nodes
                .is_none_or(|nodes| issue.nodes.iter().any(|node| nodes.contains(node.as_str())))
        })
        .map(|issue| OpenIssue {
            id: issue.id,
            title: match customer_nodes {
                Some(_) => issue.signature.key(),
                None => issue.title.clone(),
            },
            state: issue.state.name().to_owned(),
            owner: issue.owner.clone(),
            opened_at: issue.opened_at,
        })
        .collect())
}

/// The minutes of the releases in `statuses`: notes taken since the report's `since`
/// without an action item, every open action item by due date, and those done since `since`
/// in the order they were done.
async fn minutes(
    shared: &Shared,
    scope: &StatusScope,
    statuses: &[ReleaseStatus],
) -> Result<Minutes, Status> {
    let releases: Vec<ReleaseId> = statuses.iter().map(|s| s.release.clone()).collect();
    let decisions = shared
        .store
        .notes(&NoteFilter {
            releases: Some(releases.clone()),
            since: Some(scope.since),
            actions_only: false,
        })
        .await?
        .into_iter()
        .filter(|note| note.action.is_none())
        .collect();
    let (mut actions, mut done): (Vec<Note>, Vec<Note>) = shared
        .store
        .notes(&NoteFilter {
            releases: Some(releases),
            since: None,
            actions_only: true,
        })
        .await?
        .into_iter()
        .partition(Note::is_open_action);
    actions.sort_by_key(|note| (note.action.as_ref().map(|action| action.due), note.id));
    done.retain(|note| {
        note.done
            .as_ref()
            .is_some_and(|done| done.at >= scope.since)
    });
    done.sort_by_key(|note| (note.done.as_ref().map(|done| done.at), note.id));
    Ok(Minutes {
        decisions,
        actions,
        done,
    })
}
