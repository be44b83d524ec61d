//! `IssueService`: what people do to issues. Opening one from a failure group of a stored gate
//! decision (attaching to the signature's issue when it has one), reading and listing them,
//! changing their fields, and the state changes `tollgate_domain::issue::next` allows: the fix
//! release, won't-fix and reopen. Each change is applied from the state or version it was
//! decided from; one that lost a race with another writer is decided again from the store.

use super::auth::{actor_of, customer_of};
use super::convert::{timestamp_from_proto, timestamp_to_proto};
use super::status::{self, FieldErrors};
use super::{load_release, resolve_milestone};
use crate::shared::Shared;
use crate::store::{IssueFields, IssueFilter, IssueTransition, StoreError, describe_changes};
use std::collections::BTreeSet;
use std::sync::Arc;
use tollgate_domain::issue::{
    self, Issue, IssueEvent, IssueHistory, IssueStateName, KnownIssue, Match,
};
use tollgate_domain::{NodeId, ReleaseId, access};
use tollgate_proto::v1::{self as proto, issue_service_server::IssueService};
use tonic::{Request, Response, Status};

/// How many times a change lost to another writer is decided again before giving up.
const TRIES: usize = 3;

/// The issue service.
#[derive(Debug, Clone)]
pub struct IssueApi {
    shared: Arc<Shared>,
}

impl IssueApi {
    /// A service over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Issue `id`, or `NotFound`.
    async fn load(&self, id: i64) -> Result<Issue, Status> {
        self.shared
            .store
            .issue(id)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// Issue `id` with its history, as GetIssue and the changes answer it.
    async fn answer(&self, id: i64) -> Result<proto::Issue, Status> {
        let issue = self.load(id).await?;
        let history = self.shared.store.issue_history(id).await?;
        Ok(issue_to_proto(&issue, &history))
    }

    /// Applies `event` to issue `id` as `next` decides from its stored state, with `detail`
    /// in its history; decided again when another writer changed the state meanwhile.
    async fn change(
        &self,
        id: i64,
        event: IssueEvent,
        detail: &str,
        actor: &str,
    ) -> Result<proto::Issue, Status> {
        for _ in 0..TRIES {
            let found = self.load(id).await?;
            let to = issue::next(&found.state, event.clone())
                .map_err(|refusal| status::issue_refused(id, refusal))?;
            let transition = IssueTransition {
                from: found.state.clone(),
                to,
                evidence: None,
            };
            let now = self.shared.now();
            match self
                .shared
                .store
                .change_issue_state(id, &transition, event.name(), detail, actor, now)
                .await
            {
                Ok(()) => {
                    tracing::info!(
                        issue = id,
                        state = transition.to.name(),
                        actor,
                        "issue {}",
                        event.name()
                    );
                    return self.answer(id).await;
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(Status::aborted(format!(
            "issue #{id} kept changing while this change was applied; retry the call"
        )))
    }
}

/// An issue number a request names: positive, or the field is named.
fn check_id(errors: &mut FieldErrors, id: i64) {
    if id <= 0 {
        errors.add(
            "id",
            format!("is {id}; give an issue number (`tollgate issue list` shows them)"),
        );
    }
}

/// A text a person may leave empty: `None` when it is blank, else trimmed.
fn optional_text(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// Checks the entries of a list a person sets: none blank, no duplicates.
fn clean_list(errors: &mut FieldErrors, field: &str, values: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut clean = Vec::new();
    for (idx, value) in values.iter().enumerate() {
        let value = value.trim();
        if value.is_empty() {
            errors.add(format!("{field}[{idx}]"), "is empty");
        } else if !seen.insert(value.to_owned()) {
            errors.add(
                format!("{field}[{idx}]"),
                format!("'{value}' is given twice"),
            );
        } else {
            clean.push(value.to_owned());
        }
    }
    clean
}

/// Element-by-element changes to one of an issue's lists (its tickets or customers): values
/// to add where absent and values to remove where present, so that two people changing the
/// list at once do not undo each other's change.
#[derive(Clone, Debug, Default)]
struct ListEdits {
    add: Vec<String>,
    remove: Vec<String>,
}

impl ListEdits {
    /// The edits a request gives as `add` and `remove`, each cleaned like a whole list; refused
    /// (naming the fields) beside the whole list `whole`, and for a value both added and removed.
    fn clean(
        errors: &mut FieldErrors,
        whole: (&str, bool),
        add: (&str, &[String]),
        remove: (&str, &[String]),
    ) -> Self {
        let edits = Self {
            add: clean_list(errors, add.0, add.1),
            remove: clean_list(errors, remove.0, remove.1),
        };
        let (whole, whole_given) = whole;
        if whole_given {
            for (field, values) in [add, remove] {
                if !values.is_empty() {
                    errors.add(
                        field,
                        format!(
                            "is given with {whole}, which replaces the whole list; give either \
                             {whole} or the values to add and remove"
                        ),
                    );
                }
            }
        }
        for (idx, value) in remove.1.iter().enumerate() {
            if edits.add.contains(&value.trim().to_owned()) {
                errors.add(
                    format!("{}[{idx}]", remove.0),
                    format!(
                        "'{}' is also in {}; give it in only one of them",
                        value.trim(),
                        add.0
                    ),
                );
            }
        }
        edits
    }

    /// Whether there is nothing to change.
    fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// `list` with the removed values taken out and the added ones it lacks appended, in the
    /// order given.
    fn apply(&self, list: &[String]) -> Vec<String> {
        let mut out: Vec<String> = list
            .iter()
            .filter(|value| !self.remove.contains(value))
            .cloned()
            .collect();
        for value in &self.add {
            if !out.contains(value) {
                out.push(value.clone());
            }
        }
        out
    }
}

/// The answer for an issue that does not exist, or that the caller may not see.
fn not_found(id: i64) -> Status {
    status::not_found(format!(
        "issue #{id} (list them with `tollgate issue list`)"
    ))
}

#[tonic::async_trait]
impl IssueService for IssueApi {
    async fn open_issue(
        &self,
        request: Request<proto::OpenIssueRequest>,
    ) -> Result<Response<proto::OpenIssueResponse>, Status> {
        let actor = actor_of(&request);
        let proto::OpenIssueRequest {
            release,
            milestone,
            group,
            title,
            severity,
            owner,
        } = status::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        if release.trim().is_empty() {
            errors.add(
                "release",
                "is empty; give the release whose decision failed",
            );
        }
        if group.trim().is_empty() {
            errors.add(
                "group",
                "is empty; give a failure group as `tollgate gate show` names it (RULE#N) or \
                 its signature",
            );
        }
        errors.finish(()).map_err(status::invalid_fields)?;
        let release = load_release(&self.shared, &release).await?;
        let milestone = resolve_milestone(&release, &milestone)?;
        let decision = self
            .shared
            .store
            .latest_decision(&release.id, &milestone)
            .await?
            .ok_or_else(|| {
                status::not_found(format!(
                    "stored gate decision of release {} at {milestone} (evaluate it first with \
                     `tollgate gate show {}`)",
                    release.id, release.id
                ))
            })?;
        let failure = issue::failure_named(&decision, &group)
            .map_err(|message| status::invalid_field("group", message))?;
        let fields = IssueFields {
            title: optional_text(&title).unwrap_or_else(|| failure.signature.key()),
            severity: optional_text(&severity),
            owner: optional_text(&owner),
            ..IssueFields::default()
        };
        for _ in 0..TRIES {
            let now = self.shared.now();
            let known: Vec<KnownIssue> = self
                .shared
                .store
                .issues_with_signatures(std::slice::from_ref(&failure.signature))
                .await?
                .iter()
                .map(Issue::known)
                .collect();
            let outcome = match issue::plan_matches(&known, std::slice::from_ref(&failure))
                .into_iter()
                .next()
            {
                Some(Match::Open(failure)) => {
                    match self
                        .shared
                        .store
                        .open_issue_with(&failure, &fields, &actor, now)
                        .await?
                    {
                        Some(id) => {
                            tracing::info!(
                                issue = id,
                                signature = %failure.signature.key(),
                                actor,
                                "issue opened"
                            );
                            Ok((id, false))
                        }
                        // Another writer opened it first: attach to that one.
                        None => continue,
                    }
                }
                Some(Match::Attach {
                    id,
                    new_release,
                    new_nodes,
                    event,
                }) => {
                    let transition = event.and_then(|event| {
                        let from = known.iter().find(|k| k.id == id)?.state.clone();
                        let to = issue::next(&from, event).ok()?;
                        Some(IssueTransition {
                            from,
                            to,
                            evidence: None,
                        })
                    });
                    self.shared
                        .store
                        .attach_to_issue(
                            id,
                            new_release.as_ref(),
                            &new_nodes,
                            transition.as_ref(),
                            &actor,
                            now,
                        )
                        .await
                        .map(|()| (id, true))
                }
                // The issue knows this release and these nodes already: nothing to add.
                None => match known.first() {
                    Some(existing) => Ok((existing.id, true)),
                    None => continue,
                },
            };
            match outcome {
                Ok((id, attached)) => {
                    return Ok(Response::new(proto::OpenIssueResponse {
                        issue: Some(self.answer(id).await?),
                        attached,
                    }));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(Status::aborted(format!(
            "the issue of {} kept changing while it was opened; retry the call",
            failure.signature.key()
        )))
    }

    async fn get_issue(
        &self,
        request: Request<proto::GetIssueRequest>,
    ) -> Result<Response<proto::Issue>, Status> {
        let customer = customer_of(&request);
        let proto::GetIssueRequest { id } = status::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        check_id(&mut errors, id);
        errors.finish(()).map_err(status::invalid_fields)?;
        let mut issue = self.answer(id).await?;
        // A customer learns nothing of another customer's issue, not even that it exists.
        let customers: BTreeSet<String> = issue.customers.iter().cloned().collect();
        if !access::sees_issue(customer.as_deref(), &customers) {
            return Err(not_found(id));
        }
        hide_unseen_releases(
            &self.shared,
            customer.as_deref(),
            std::slice::from_mut(&mut issue),
        )
        .await?;
        Ok(Response::new(issue))
    }

    async fn list_issues(
        &self,
        request: Request<proto::ListIssuesRequest>,
    ) -> Result<Response<proto::ListIssuesResponse>, Status> {
        let scope = customer_of(&request);
        let proto::ListIssuesRequest {
            state,
            release,
            customer,
            node,
            page_size,
            page_token,
        } = status::bounded(request.into_inner())?;
        // A customer token lists only the issues that matter to its customer; naming another
        // customer is refused rather than answered empty, so a mistyped scope is not mistaken
        // for "no issues".
        if let Some(scope) = &scope
            && !customer.trim().is_empty()
            && customer.trim() != scope
        {
            return Err(Status::permission_denied(format!(
                "this token sees only customer {scope}'s issues; leave the customer filter out \
                 or set it to {scope}"
            )));
        }
        let mut errors = FieldErrors::new();
        if !state.is_empty() {
            errors.keyword::<IssueStateName>("state", &state);
        }
        let page = super::pages::by_seq(
            &mut errors,
            tollgate_wire::page::List::Issues,
            &[&state, &release, &customer, &node],
            page_size,
            &page_token,
        );
        errors.finish(()).map_err(status::invalid_fields)?;
        let release = optional_text(&release).map(ReleaseId::from);
        if let Some(release) = &release
            && !super::sees_release(&self.shared, scope.as_deref(), release).await?
        {
            // The issues of a release only for other customers: none, as of one that does
            // not exist.
            return Ok(Response::new(proto::ListIssuesResponse::default()));
        }
        let filter = IssueFilter {
            state: optional_text(&state),
            release,
            customer: scope.clone().or_else(|| optional_text(&customer)),
            node: optional_text(&node).map(NodeId::from),
        };
        let after = page.after.map(|seq| i64::try_from(seq).unwrap_or(i64::MAX));
        let fetched = self
            .shared
            .store
            .issues_after(&filter, after, page.fetch())
            .await?;
        let (issues, next_page_token) =
            page.answer(fetched, |issue| tollgate_wire::page::After::Seq(issue.id));
        let mut issues: Vec<proto::Issue> = issues
            .iter()
            .map(|issue| issue_to_proto(issue, &[]))
            .collect();
        hide_unseen_releases(&self.shared, scope.as_deref(), &mut issues).await?;
        Ok(Response::new(proto::ListIssuesResponse {
            issues,
            next_page_token,
        }))
    }

    async fn update_issue(
        &self,
        request: Request<proto::UpdateIssueRequest>,
    ) -> Result<Response<proto::Issue>, Status> {
        let actor = actor_of(&request);
        let proto::UpdateIssueRequest {
            id,
            title,
            severity,
            owner,
            tickets,
            customers,
            expected_updated_at,
            add_tickets,
            remove_tickets,
            add_customers,
            remove_customers,
        } = status::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        check_id(&mut errors, id);
        if title
            .as_deref()
            .is_some_and(|title| title.trim().is_empty())
        {
            errors.add(
                "title",
                "is empty; give a title, or leave it out to keep it",
            );
        }
        let tickets = tickets.map(|list| clean_list(&mut errors, "tickets", &list.values));
        let customers = customers.map(|list| clean_list(&mut errors, "customers", &list.values));
        let ticket_edits = ListEdits::clean(
            &mut errors,
            ("tickets", tickets.is_some()),
            ("add_tickets", &add_tickets),
            ("remove_tickets", &remove_tickets),
        );
        let customer_edits = ListEdits::clean(
            &mut errors,
            ("customers", customers.is_some()),
            ("add_customers", &add_customers),
            ("remove_customers", &remove_customers),
        );
        let expected = match expected_updated_at.map(|at| timestamp_from_proto(&at)) {
            Some(None) => {
                errors.add("expected_updated_at", "is not a valid timestamp");
                None
            }
            Some(at) => at,
            None => None,
        };
        if title.is_none()
            && severity.is_none()
            && owner.is_none()
            && tickets.is_none()
            && customers.is_none()
            && ticket_edits.is_empty()
            && customer_edits.is_empty()
        {
            errors.add(
                "title",
                "nothing to change: give at least one of title, severity, owner, tickets, \
                 customers, add_tickets, remove_tickets, add_customers, remove_customers",
            );
        }
        errors.finish(()).map_err(status::invalid_fields)?;
        for _ in 0..TRIES {
            let found = self.load(id).await?;
            let before = IssueFields {
                title: found.title.clone(),
                severity: found.severity.clone(),
                owner: found.owner.clone(),
                tickets: found.tickets.clone(),
                customers: found.customers.clone(),
            };
            let after = IssueFields {
                title: title
                    .as_deref()
                    .map_or_else(|| before.title.clone(), |t| t.trim().to_owned()),
                severity: severity
                    .as_deref()
                    .map_or_else(|| before.severity.clone(), optional_text),
                owner: owner
                    .as_deref()
                    .map_or_else(|| before.owner.clone(), optional_text),
                tickets: tickets
                    .clone()
                    .unwrap_or_else(|| ticket_edits.apply(&before.tickets)),
                customers: customers.clone().map_or_else(
                    || {
                        customer_edits
                            .apply(&before.customers.iter().cloned().collect::<Vec<_>>())
                            .into_iter()
                            .collect()
                    },
                    |c| c.into_iter().collect(),
                ),
            };
            let changed = describe_changes(&before, &after);
            if changed.is_empty() {
                return Ok(Response::new(self.answer(id).await?));
            }
            let now = self.shared.now();
            match self
                .shared
                .store
                .update_issue(
                    id,
                    expected.unwrap_or(found.updated_at),
                    &after,
                    &changed,
                    &actor,
                    now,
                )
                .await
            {
                Ok(()) => {
                    tracing::info!(issue = id, actor, "issue updated: {changed}");
                    return Ok(Response::new(self.answer(id).await?));
                }
                Err(StoreError::Conflict { .. }) if expected.is_some() => {
                    return Err(Status::failed_precondition(format!(
                        "issue #{id} changed at {} after expected_updated_at; show it again \
                         (`tollgate issue show {id}`) and retry from what it is now",
                        found.updated_at.to_rfc3339()
                    )));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(Status::aborted(format!(
            "issue #{id} kept changing while it was updated; retry the call"
        )))
    }

    async fn set_fix_release(
        &self,
        request: Request<proto::SetFixReleaseRequest>,
    ) -> Result<Response<proto::Issue>, Status> {
        let actor = actor_of(&request);
        let proto::SetFixReleaseRequest { id, release, note } =
            status::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        check_id(&mut errors, id);
        if release.trim().is_empty() {
            errors.add("release", "is empty; give the release that carries the fix");
        }
        errors.finish(()).map_err(status::invalid_fields)?;
        // The issue is what the call is about: when neither exists, it is the one named.
        self.load(id).await?;
        let release = load_release(&self.shared, release.trim()).await?;
        let detail = match optional_text(&note) {
            Some(note) => format!("fix in release {}: {note}", release.id),
            None => format!("fix in release {}", release.id),
        };
        let event = IssueEvent::Fix {
            release: release.id.clone(),
        };
        Ok(Response::new(
            self.change(id, event, &detail, &actor).await?,
        ))
    }

    async fn wont_fix(
        &self,
        request: Request<proto::WontFixRequest>,
    ) -> Result<Response<proto::Issue>, Status> {
        let actor = actor_of(&request);
        let proto::WontFixRequest { id, reason } = status::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        check_id(&mut errors, id);
        if reason.trim().is_empty() {
            errors.add("reason", "is empty; say why it will not be fixed");
        }
        errors.finish(()).map_err(status::invalid_fields)?;
        let reason = reason.trim().to_owned();
        let event = IssueEvent::WontFix {
            reason: reason.clone(),
        };
        Ok(Response::new(
            self.change(id, event, &reason, &actor).await?,
        ))
    }

    async fn reopen(
        &self,
        request: Request<proto::ReopenIssueRequest>,
    ) -> Result<Response<proto::Issue>, Status> {
        let actor = actor_of(&request);
        let proto::ReopenIssueRequest { id, reason } = status::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        check_id(&mut errors, id);
        errors.finish(()).map_err(status::invalid_fields)?;
        let detail = optional_text(&reason).unwrap_or_else(|| "reopened".to_owned());
        Ok(Response::new(
            self.change(id, IssueEvent::Reopen, &detail, &actor).await?,
        ))
    }

    async fn import_issues(
        &self,
        request: Request<proto::ImportIssuesRequest>,
    ) -> Result<Response<proto::ImportIssuesResponse>, Status> {
        let actor = actor_of(&request);
        let proto::ImportIssuesRequest {
            document,
            file_name,
            format,
        } = status::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        let issues = match format.trim() {
            "" | "json" => super::issue_import::parse(&mut errors, &document),
            "csv" => super::issue_import::parse_csv(&mut errors, &document),
            other => {
                errors.add(
                    "format",
                    format!(
                        "{} is not a format; give json or csv",
                        tollgate_domain::limits::quote(other)
                    ),
                );
                None
            }
        };
        let issues = errors
            .finish(issues.unwrap_or_default())
            .map_err(status::invalid_fields)?;
        let now = self.shared.now();
        let outcome = self
            .shared
            .store
            .import_issues(&issues, &actor, now)
            .await?;
        tracing::info!(
            file = %file_name,
            opened = outcome.opened.len(),
            updated = outcome.updated.len(),
            unchanged = outcome.unchanged.len(),
            actor,
            "issues imported"
        );
        Ok(Response::new(proto::ImportIssuesResponse {
            opened: outcome.opened,
            updated: outcome.updated,
            unchanged: outcome.unchanged,
        }))
    }
}

/// An issue on the wire, with `history` (empty in lists).
pub fn issue_to_proto(issue: &Issue, history: &[IssueHistory]) -> proto::Issue {
    let Issue {
        id,
        signature,
        title,
        severity,
        owner,
        tickets,
        customers,
        state,
        releases,
        nodes,
        evidence,
        opened_at,
        updated_at,
    } = issue;
    proto::Issue {
        id: *id,
        kind: signature.kind.clone(),
        text: signature.text.clone(),
        signature: signature.key(),
        title: title.clone(),
        severity: severity.clone().unwrap_or_default(),
        owner: owner.clone().unwrap_or_default(),
        tickets: tickets.clone(),
        customers: customers.iter().cloned().collect(),
        state: state.name().to_owned(),
        fix_release: state.release().map(ToString::to_string).unwrap_or_default(),
        reason: state.reason().unwrap_or_default().to_owned(),
        releases: releases.iter().map(ToString::to_string).collect(),
        nodes: nodes.iter().map(ToString::to_string).collect(),
        evidence: evidence.clone().unwrap_or_default(),
        opened_at: Some(timestamp_to_proto(*opened_at)),
        updated_at: Some(timestamp_to_proto(*updated_at)),
        history: history
            .iter()
            .map(|entry| proto::IssueHistoryEntry {
                at: Some(timestamp_to_proto(entry.at)),
                actor: entry.actor.clone(),
                action: entry.action.clone(),
                state: entry.state.clone(),
                detail: entry.detail.clone(),
            })
            .collect(),
    }
}

/// Leaves out of `issues` the releases a caller scoped to `customer` does not see: from the
/// releases each failed in, and the fix release (empty then, as in a state without one).
async fn hide_unseen_releases(
    shared: &Shared,
    customer: Option<&str>,
    issues: &mut [proto::Issue],
) -> Result<(), Status> {
    if customer.is_none() {
        return Ok(());
    }
    let named: Vec<ReleaseId> = issues
        .iter()
        .flat_map(|issue| issue.releases.iter().chain([&issue.fix_release]))
        .filter(|release| !release.is_empty())
        .map(|release| ReleaseId::from(release.as_str()))
        .collect();
    let unseen = super::unseen_releases(shared, customer, &named).await?;
    if unseen.is_empty() {
        return Ok(());
    }
    let seen = |release: &String| !unseen.contains(&ReleaseId::from(release.as_str()));
    for issue in issues {
        issue.releases.retain(seen);
        if !seen(&issue.fix_release) {
            issue.fix_release.clear();
        }
    }
    Ok(())
}

/// How many issues of one release `GetRelease` and `ListReleases` read for what blocks it.
const BLOCKING_MAX: usize = 1000;

/// The issues of `release` (failed in it, or whose fix is in it) not closed or won't-fix,
/// oldest first, as part of what blocks it at `now`; for a customer token (`customer`), only
/// those set to matter to that customer.
pub async fn blocking_issues(
    shared: &Shared,
    release: &ReleaseId,
    customer: Option<&str>,
    now: tollgate_domain::Timestamp,
) -> Result<Vec<proto::BlockingIssue>, Status> {
    let filter = IssueFilter {
        release: Some(release.clone()),
        customer: customer.map(str::to_owned),
        ..IssueFilter::default()
    };
    Ok(shared
        .store
        .issues(&filter, BLOCKING_MAX)
        .await?
        .iter()
        .filter(|issue| !issue.state.is_done())
        .map(|issue| proto::BlockingIssue {
            id: issue.id,
            state: issue.state.name().to_owned(),
            owner: issue.owner.clone().unwrap_or_default(),
            opened_at: Some(timestamp_to_proto(issue.opened_at)),
            age_days: u32::try_from((now - issue.opened_at).num_days().max(0)).unwrap_or(u32::MAX),
        })
        .collect())
}
