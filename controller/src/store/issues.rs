//! Issues in the store: opened once per signature (unique), failures attached with inserts
//! that add only what is new, state changes by compare-and-set on the state decided from; each
//! change writes its `issue_history` entry and its audit entry in the same transaction. Audit
//! entries name the issue (`issue/7`) as their subject, not a release: the release's own log
//! stays what people did to the release.

use super::connect::Begin;
use super::{AuditNote, Pool, Store, StoreError, micros, rows, text};
use std::collections::BTreeSet;
use tollgate_domain::issue::{Failure, Issue, IssueHistory, IssueState, Signature};
use tollgate_domain::{NodeId, ReleaseId, Timestamp};

/// The columns of an issue row, then `$tail`.
macro_rules! issue_query {
    ($tail:expr) => {
        concat!(
            "SELECT id, kind, text, title, severity, owner, tickets, state, fix_release, reason,
                    evidence, opened_at, updated_at
             FROM issues ",
            $tail
        )
    };
}

/// Reads whole issues (with their releases and nodes) for the issue rows `$rows`, inside the
/// transaction `$tx`.
macro_rules! load_issues {
    ($tx:expr, $rows:expr) => {{
        const RELEASES: &str =
            "SELECT release FROM issue_releases WHERE issue_id = $1 ORDER BY release";
        const NODES: &str = "SELECT node FROM issue_nodes WHERE issue_id = $1 ORDER BY node";
        const CUSTOMERS: &str =
            "SELECT customer FROM issue_customers WHERE issue_id = $1 ORDER BY customer";
        let mut issues = Vec::new();
        for row in $rows.iter() {
            let mut issue = rows::issue(row)?;
            for found in sqlx::query(RELEASES)
                .bind(issue.id)
                .fetch_all(&mut *$tx)
                .await?
            {
                let f = rows::Fields::new(&found, "issue_releases", &["release"]);
                issue.releases.insert(ReleaseId::from(f.text("release")?));
            }
            for found in sqlx::query(NODES)
                .bind(issue.id)
                .fetch_all(&mut *$tx)
                .await?
            {
                let f = rows::Fields::new(&found, "issue_nodes", &["node"]);
                issue.nodes.insert(NodeId::from(f.text("node")?));
            }
            for found in sqlx::query(CUSTOMERS)
                .bind(issue.id)
                .fetch_all(&mut *$tx)
                .await?
            {
                let f = rows::Fields::new(&found, "issue_customers", &["customer"]);
                issue.customers.insert(f.text("customer")?);
            }
            issues.push(issue);
        }
        issues
    }};
}

/// Adds the releases and nodes `$releases`/`$nodes` to issue `$id` inside `$tx`; those it has
/// already are left as they are.
macro_rules! attach_rows {
    ($tx:expr, $id:expr, $releases:expr, $nodes:expr) => {{
        const RELEASE: &str = "INSERT INTO issue_releases (issue_id, release) VALUES ($1, $2)
             ON CONFLICT (issue_id, release) DO NOTHING";
        const NODE: &str = "INSERT INTO issue_nodes (issue_id, node) VALUES ($1, $2)
             ON CONFLICT (issue_id, node) DO NOTHING";
        for release in $releases {
            sqlx::query(RELEASE)
                .bind($id)
                .bind(release.as_str())
                .execute(&mut *$tx)
                .await?;
        }
        for node in $nodes {
            sqlx::query(NODE)
                .bind($id)
                .bind(node.as_str())
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

/// Queues webhook event `$event` of issue `$id` at `$at` inside `$tx`, when `$store` has a
/// webhook (`--issue-webhook`): the outbox row commits or rolls back with the change.
macro_rules! queue_webhook {
    ($store:expr, $tx:expr, $id:expr, $event:expr, $at:expr) => {{
        if $store.issue_webhook {
            const OUTBOX: &str =
                "INSERT INTO issue_webhook_outbox (issue_id, event, at) VALUES ($1, $2, $3)";
            let event: WebhookEvent = $event;
            sqlx::query(OUTBOX)
                .bind($id)
                .bind(event.name())
                .bind(micros($at))
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

/// Appends `$entry` to issue `$id`'s history inside `$tx`.
macro_rules! append_history {
    ($tx:expr, $id:expr, $entry:expr) => {{
        const HISTORY: &str =
            "INSERT INTO issue_history (issue_id, at, actor, action, state, detail)
             VALUES ($1, $2, $3, $4, $5, $6)";
        let entry: &IssueHistory = $entry;
        sqlx::query(HISTORY)
            .bind($id)
            .bind(micros(entry.at))
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.state)
            .bind(text(&entry.detail))
            .execute(&mut *$tx)
            .await?;
    }};
}

/// Sets issue `$id`'s state from `$transition.from` to `$transition.to` inside `$tx`, or
/// returns `Conflict` from the body.
macro_rules! set_state {
    ($tx:expr, $id:expr, $transition:expr, $at:expr) => {{
        const SET: &str = "UPDATE issues
             SET state = $2, fix_release = $3, reason = $4, evidence = COALESCE($5, evidence),
                 updated_at = $6
             WHERE id = $1 AND state = $7 AND COALESCE(fix_release, '') = $8";
        let transition: &IssueTransition = $transition;
        let n_rows = sqlx::query(SET)
            .bind($id)
            .bind(transition.to.name())
            .bind(transition.to.release().map(ReleaseId::as_str))
            .bind(transition.to.reason().map(text))
            .bind(transition.evidence.as_deref())
            .bind(micros($at))
            .bind(transition.from.name())
            .bind(
                transition
                    .from
                    .release()
                    .map(ReleaseId::as_str)
                    .unwrap_or(""),
            )
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        if n_rows == 0 {
            return Err(StoreError::Conflict {
                what: format!("issue {}", $id),
                detail: format!("expected state {}, found another", transition.from.name()),
            });
        }
    }};
}
/// Replaces issue `$id`'s customers with `$customers` inside `$tx`.
macro_rules! set_customers {
    ($tx:expr, $id:expr, $customers:expr) => {{
        sqlx::query("DELETE FROM issue_customers WHERE issue_id = $1")
            .bind($id)
            .execute(&mut *$tx)
            .await?;
        for customer in $customers {
            sqlx::query("INSERT INTO issue_customers (issue_id, customer) VALUES ($1, $2)")
                .bind($id)
                .bind(text(customer))
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

/// Marks issue `$id` changed at `$at` inside `$tx`.
macro_rules! touch {
    ($tx:expr, $id:expr, $at:expr) => {{
        sqlx::query("UPDATE issues SET updated_at = $2 WHERE id = $1")
            .bind($id)
            .bind(micros($at))
            .execute(&mut *$tx)
            .await?;
    }};
}
/// Which issues a list shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IssueFilter {
    /// Only issues in this state (its name).
    pub state: Option<String>,
    /// Only issues that failed in this release or whose fix is in it.
    pub release: Option<ReleaseId>,
    /// Only issues set to matter to this customer.
    pub customer: Option<String>,
    /// Only issues that failed on this node.
    pub node: Option<NodeId>,
}

/// What a person sets on an issue, opening it or later: the whole new value of each field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IssueFields {
    /// The title.
    pub title: String,
    /// The severity, if any.
    pub severity: Option<String>,
    /// The owner, if any.
    pub owner: Option<String>,
    /// The ticket references.
    pub tickets: Vec<String>,
    /// The customers.
    pub customers: BTreeSet<String>,
}

/// A state change decided for an issue, applied only from the state it was decided from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueTransition {
    /// The state decided from.
    pub from: IssueState,
    /// The state after.
    pub to: IssueState,
    /// The evidence that closed it, when verification did.
    pub evidence: Option<String>,
}

impl Store {
    /// The issues with any of `signatures` (one read).
    pub async fn issues_with_signatures(
        &self,
        signatures: &[Signature],
    ) -> Result<Vec<Issue>, StoreError> {
        const SQL: &str = issue_query!("WHERE signature = $1");
        with_pool!(self, |pool| {
            let mut tx = pool.begin_snapshot().await?;
            let mut found = Vec::new();
            for signature in signatures {
                let rows = sqlx::query(SQL)
                    .bind(signature.key())
                    .fetch_all(&mut *tx)
                    .await?;
                found.extend(load_issues!(tx, rows));
            }
            tx.commit().await?;
            Ok(found)
        })
    }

    /// Issue `id`, if there is one.
    pub async fn issue(&self, id: i64) -> Result<Option<Issue>, StoreError> {
        const SQL: &str = issue_query!("WHERE id = $1");
        with_pool!(self, |pool| {
            let mut tx = pool.begin_snapshot().await?;
            let rows = sqlx::query(SQL).bind(id).fetch_all(&mut *tx).await?;
            let issues = load_issues!(tx, rows);
            tx.commit().await?;
            Ok(issues.into_iter().next())
        })
    }

    /// The issues `filter` lets through, oldest first, at most `limit`.
    pub async fn issues(
        &self,
        filter: &IssueFilter,
        limit: usize,
    ) -> Result<Vec<Issue>, StoreError> {
        self.issues_after(filter, None, limit).await
    }

    /// The issues `filter` lets through with a number above `after`, oldest first, at most
    /// `limit` (a page of `ListIssues`).
    pub async fn issues_after(
        &self,
        filter: &IssueFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Issue>, StoreError> {
        const SQL: &str = issue_query!(
            "WHERE ($1 = '' OR state = $1)
               AND ($2 = '' OR fix_release = $2
                    OR id IN (SELECT issue_id FROM issue_releases WHERE release = $2))
               AND ($4 = '' OR id IN (SELECT issue_id FROM issue_customers WHERE customer = $4))
               AND ($5 = '' OR id IN (SELECT issue_id FROM issue_nodes WHERE node = $5))
               AND id > $6
             ORDER BY id LIMIT $3"
        );
        let state = filter.state.clone().unwrap_or_default();
        let release = filter
            .release
            .as_ref()
            .map(|release| release.as_str().to_owned())
            .unwrap_or_default();
        let customer = filter.customer.clone().unwrap_or_default();
        let node = filter
            .node
            .as_ref()
            .map(|node| node.as_str().to_owned())
            .unwrap_or_default();
        with_pool!(self, |pool| {
            let mut tx = pool.begin_snapshot().await?;
            let rows = sqlx::query(SQL)
                .bind(&state)
                .bind(&release)
                .bind(super::page_limit(limit))
                .bind(&customer)
                .bind(&node)
                .bind(after.unwrap_or(0))
                .fetch_all(&mut *tx)
                .await?;
            let issues = load_issues!(tx, rows);
            tx.commit().await?;
            Ok(issues)
        })
    }

    /// Issue `id`'s history, oldest first.
    pub async fn issue_history(&self, id: i64) -> Result<Vec<IssueHistory>, StoreError> {
        const SQL: &str = "SELECT seq, at, actor, action, state, detail FROM issue_history
             WHERE issue_id = $1 ORDER BY seq";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(id)
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::issue_history)
                .collect()
        })
    }

    /// Opens an issue for `failure` with `title`, its history entry and its audit entry, in
    /// one transaction. `None` when
    /// an issue with the signature exists already (another writer opened it first).
    pub async fn open_issue(
        &self,
        failure: &Failure,
        title: &str,
        actor: &str,
        at: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        let fields = IssueFields {
            title: title.to_owned(),
            ..IssueFields::default()
        };
        self.open_issue_with(failure, &fields, actor, at).await
    }

    /// [`Self::open_issue`] with the fields a person gave (title, severity, owner, tickets,
    /// customers).
    pub async fn open_issue_with(
        &self,
        failure: &Failure,
        fields: &IssueFields,
        actor: &str,
        at: Timestamp,
    ) -> Result<Option<i64>, StoreError> {
        const INSERT: &str = "INSERT INTO issues (signature, kind, text, title, severity, owner,
                 tickets, state, opened_at, updated_at)
             VALUES ($1, $2, $3, $4, $6, $7, $8, $9, $5, $5)
             ON CONFLICT (signature) DO NOTHING RETURNING id";
        let title = fields.title.as_str();
        let tickets = super::to_json(&fields.tickets);
        let signature = &failure.signature;
        let detail = attach_detail(Some(&failure.release), &failure.nodes);
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let Some(row) = sqlx::query(INSERT)
                .bind(signature.key())
                .bind(&signature.kind)
                .bind(text(&signature.text))
                .bind(text(title))
                .bind(micros(at))
                .bind(fields.severity.as_deref().map(text))
                .bind(fields.owner.as_deref().map(text))
                .bind(&tickets)
                .bind(IssueState::Open.name())
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            let id: i64 = rows::Fields::new(&row, "issues", &["id"]).int_as("id")?;
            attach_rows!(tx, id, [&failure.release], &failure.nodes);
            set_customers!(tx, id, &fields.customers);
            let entry = IssueHistory {
                at,
                actor: actor.to_owned(),
                action: "opened".into(),
                state: "open".into(),
                detail: format!("{}; {detail}", signature.key()),
            };
            append_history!(tx, id, &entry);
            queue_webhook!(self, tx, id, WebhookEvent::Opened, at);
            let note = AuditNote::new(at, actor, "issue.open", format!("issue/{id}")).details(
                serde_json::json!({
                    "signature": signature.key(),
                    "release": failure.release,
                    "nodes": failure.nodes,
                }),
            );
            append_audit!(tx, &note);
            tx.commit().await?;
            Ok(Some(id))
        })
    }

    /// Attaches to issue `id` the release and nodes it failed in anew, and applies
    /// `transition` when the failure changes its state, with history and audit entries, in one
    /// transaction. A transition whose `from` is no longer the issue's state is `Conflict`.
    pub async fn attach_to_issue(
        &self,
        id: i64,
        release: Option<&ReleaseId>,
        nodes: &BTreeSet<NodeId>,
        transition: Option<&IssueTransition>,
        actor: &str,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let detail = attach_detail(release, nodes);
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            attach_rows!(tx, id, release.as_slice(), nodes);
            let state = match transition {
                Some(transition) => {
                    set_state!(tx, id, transition, at);
                    transition.to.name()
                }
                None => {
                    touch!(tx, id, at);
                    "unchanged"
                }
            };
            let entry = IssueHistory {
                at,
                actor: actor.to_owned(),
                action: transition
                    .map(|transition| format!("attached, {}", transition.to.name()))
                    .unwrap_or_else(|| "attached".into()),
                state: state.to_owned(),
                detail: detail.clone(),
            };
            append_history!(tx, id, &entry);
            queue_webhook!(self, tx, id, WebhookEvent::Attached, at);
            let note = AuditNote::new(at, actor, "issue.attach", format!("issue/{id}"))
                .details(serde_json::json!({"release": release, "nodes": nodes, "state": state}));
            append_audit!(tx, &note);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Applies a decided state change of issue `id` (`action` names it in the history, with
    /// `detail`) and its audit entry, in one transaction; `Conflict` when the issue is no
    /// longer in the state decided from, `NotFound` when there is no such issue.
    pub async fn change_issue_state(
        &self,
        id: i64,
        transition: &IssueTransition,
        action: &str,
        detail: &str,
        actor: &str,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        const EXISTS: &str = "SELECT id FROM issues WHERE id = $1";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            if sqlx::query(EXISTS)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .is_none()
            {
                return Err(StoreError::NotFound {
                    what: format!("issue {id}"),
                });
            }
            set_state!(tx, id, transition, at);
            let entry = IssueHistory {
                at,
                actor: actor.to_owned(),
                action: action.to_owned(),
                state: transition.to.name().to_owned(),
                detail: detail.to_owned(),
            };
            append_history!(tx, id, &entry);
            queue_webhook!(self, tx, id, WebhookEvent::State, at);
            let note = AuditNote::new(at, actor, format!("issue.{action}"), format!("issue/{id}"))
                .details(serde_json::json!({
                    "from": transition.from.name(),
                    "to": transition.to.name(),
                    "release": transition.to.release(),
                    "detail": detail,
                    "evidence": transition.evidence,
                }));
            append_audit!(tx, &note);
            tx.commit().await?;
            Ok(())
        })
    }
}

/// An issue as an import document gives it (docs/issue-format.md): a new one is opened
/// with all of it; one whose signature exists takes only `fields`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedIssue {
    /// The signature it is unique on.
    pub signature: Signature,
    /// Title, severity, owner, tickets, customers.
    pub fields: IssueFields,
    /// The state a new issue is opened in.
    pub state: IssueState,
    /// Where it failed (a new issue).
    pub releases: BTreeSet<ReleaseId>,
    /// Where it failed (a new issue).
    pub nodes: BTreeSet<NodeId>,
    /// The digest of the decision that closed it (a new issue).
    pub evidence: Option<String>,
}

/// What an import did, by issue number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    /// Issues opened, in the document's order.
    pub opened: Vec<i64>,
    /// Issues whose fields changed.
    pub updated: Vec<i64>,
    /// Issues the document gave as they were.
    pub unchanged: Vec<i64>,
}

impl Store {
    /// Imports `issues` in one transaction: an issue whose signature exists takes the
    /// entry's fields (with an `imported` history entry and an `issue.import` audit entry
    /// when they change it), a new one is opened as the entry gives it (history and audit
    /// likewise). Nothing is written when any entry fails: a signature given twice is
    /// `AlreadyExists`.
    pub async fn import_issues(
        &self,
        issues: &[ImportedIssue],
        actor: &str,
        at: Timestamp,
    ) -> Result<ImportOutcome, StoreError> {
        const FIND: &str = issue_query!("WHERE signature = $1");
        const INSERT: &str = "INSERT INTO issues (signature, kind, text, title, severity, owner,
                 tickets, state, fix_release, reason, evidence, opened_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)
             ON CONFLICT (signature) DO NOTHING RETURNING id";
        const SET: &str = "UPDATE issues
             SET title = $2, severity = $3, owner = $4, tickets = $5, updated_at = $6
             WHERE id = $1";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let mut outcome = ImportOutcome::default();
            let mut seen = BTreeSet::new();
            for entry in issues {
                let key = entry.signature.key();
                if !seen.insert(key.clone()) {
                    return Err(StoreError::AlreadyExists {
                        what: format!("issue {key} (given twice in the import)"),
                    });
                }
                let rows = sqlx::query(FIND).bind(&key).fetch_all(&mut *tx).await?;
                let found = load_issues!(tx, rows);
                let fields = &entry.fields;
                let tickets = super::to_json(&fields.tickets);
                if let Some(existing) = found.first() {
                    let id = existing.id;
                    let before = IssueFields {
                        title: existing.title.clone(),
                        severity: existing.severity.clone(),
                        owner: existing.owner.clone(),
                        tickets: existing.tickets.clone(),
                        customers: existing.customers.clone(),
                    };
                    let changed = describe_changes(&before, fields);
                    if changed.is_empty() {
                        outcome.unchanged.push(id);
                        continue;
                    }
                    sqlx::query(SET)
                        .bind(id)
                        .bind(text(&fields.title))
                        .bind(fields.severity.as_deref().map(text))
                        .bind(fields.owner.as_deref().map(text))
                        .bind(&tickets)
                        .bind(micros(at))
                        .execute(&mut *tx)
                        .await?;
                    set_customers!(tx, id, &fields.customers);
                    let history = IssueHistory {
                        at,
                        actor: actor.to_owned(),
                        action: "imported".into(),
                        state: existing.state.name().to_owned(),
                        detail: changed.clone(),
                    };
                    append_history!(tx, id, &history);
                    queue_webhook!(self, tx, id, WebhookEvent::Imported, at);
                    let note = AuditNote::new(at, actor, "issue.import", format!("issue/{id}"))
                        .details(serde_json::json!({
                            "signature": key,
                            "changed": changed,
                        }));
                    append_audit!(tx, &note);
                    outcome.updated.push(id);
                    continue;
                }
                let Some(row) = sqlx::query(INSERT)
                    .bind(&key)
                    .bind(&entry.signature.kind)
                    .bind(text(&entry.signature.text))
                    .bind(text(&fields.title))
                    .bind(fields.severity.as_deref().map(text))
                    .bind(fields.owner.as_deref().map(text))
                    .bind(&tickets)
                    .bind(entry.state.name())
                    .bind(entry.state.release().map(ReleaseId::as_str))
                    .bind(entry.state.reason().map(text))
                    .bind(entry.evidence.as_deref())
                    .bind(micros(at))
                    .fetch_optional(&mut *tx)
                    .await?
                else {
                    return Err(StoreError::AlreadyExists {
                        what: format!("issue {key}"),
                    });
                };
                let id: i64 = rows::Fields::new(&row, "issues", &["id"]).int_as("id")?;
                attach_rows!(tx, id, &entry.releases, &entry.nodes);
                set_customers!(tx, id, &fields.customers);
                let history = IssueHistory {
                    at,
                    actor: actor.to_owned(),
                    action: "imported".into(),
                    state: entry.state.name().to_owned(),
                    detail: format!(
                        "{key}; {}",
                        attach_detail_all(&entry.releases, &entry.nodes)
                    ),
                };
                append_history!(tx, id, &history);
                queue_webhook!(self, tx, id, WebhookEvent::Imported, at);
                let note = AuditNote::new(at, actor, "issue.import", format!("issue/{id}"))
                    .details(serde_json::json!({
                        "signature": key,
                        "state": entry.state.name(),
                        "releases": entry.releases,
                        "nodes": entry.nodes,
                    }));
                append_audit!(tx, &note);
                outcome.opened.push(id);
            }
            tx.commit().await?;
            Ok(outcome)
        })
    }
}

impl Store {
    /// Sets issue `id`'s fields to `fields` (`changed` names what changed, for the history),
    /// with its history and audit entries, in one transaction; only if the issue last changed
    /// at `expected` (compare-and-set: `Conflict` otherwise), `NotFound` when there is none.
    pub async fn update_issue(
        &self,
        id: i64,
        expected: Timestamp,
        fields: &IssueFields,
        changed: &str,
        actor: &str,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        const EXISTS: &str = "SELECT state FROM issues WHERE id = $1";
        const SET: &str = "UPDATE issues
             SET title = $2, severity = $3, owner = $4, tickets = $5, updated_at = $6
             WHERE id = $1 AND updated_at = $7";
        let tickets = super::to_json(&fields.tickets);
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let Some(row) = sqlx::query(EXISTS)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Err(StoreError::NotFound {
                    what: format!("issue {id}"),
                });
            };
            let state = rows::Fields::new(&row, "issues", &["state"]).text("state")?;
            let n_rows = sqlx::query(SET)
                .bind(id)
                .bind(text(&fields.title))
                .bind(fields.severity.as_deref().map(text))
                .bind(fields.owner.as_deref().map(text))
                .bind(&tickets)
                .bind(micros(at))
                .bind(micros(expected))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n_rows == 0 {
                return Err(StoreError::Conflict {
                    what: format!("issue {id}"),
                    detail: format!("it changed after {}; read it again", expected.to_rfc3339()),
                });
            }
            set_customers!(tx, id, &fields.customers);
            let entry = IssueHistory {
                at,
                actor: actor.to_owned(),
                action: "updated".into(),
                state,
                detail: changed.to_owned(),
            };
            append_history!(tx, id, &entry);
            queue_webhook!(self, tx, id, WebhookEvent::Updated, at);
            let note = AuditNote::new(at, actor, "issue.update", format!("issue/{id}")).details(
                serde_json::json!({
                    "changed": changed,
                    "title": fields.title,
                    "severity": fields.severity,
                    "owner": fields.owner,
                    "tickets": fields.tickets,
                    "customers": fields.customers,
                }),
            );
            append_audit!(tx, &note);
            tx.commit().await?;
            Ok(())
        })
    }
}

/// What changed between two versions of an issue's fields, for its history:
/// `owner alice; tickets JIRA-1, JIRA-2`; empty when nothing did.
pub fn describe_changes(before: &IssueFields, after: &IssueFields) -> String {
    let or_none = |value: &Option<String>| value.clone().unwrap_or_else(|| "(none)".into());
    let list = |values: Vec<&str>| {
        if values.is_empty() {
            "(none)".to_owned()
        } else {
            values.join(", ")
        }
    };
    let mut parts = Vec::new();
    if before.title != after.title {
        parts.push(format!("title {}", after.title));
    }
    if before.severity != after.severity {
        parts.push(format!("severity {}", or_none(&after.severity)));
    }
    if before.owner != after.owner {
        parts.push(format!("owner {}", or_none(&after.owner)));
    }
    if before.tickets != after.tickets {
        parts.push(format!(
            "tickets {}",
            list(after.tickets.iter().map(String::as_str).collect())
        ));
    }
    if before.customers != after.customers {
        parts.push(format!(
            "customers {}",
            list(after.customers.iter().map(String::as_str).collect())
        ));
    }
    parts.join("; ")
}

/// Where an imported issue failed, for its history: `releases r1, r2; nodes n1`.
fn attach_detail_all(releases: &BTreeSet<ReleaseId>, nodes: &BTreeSet<NodeId>) -> String {
    let releases: Vec<&str> = releases.iter().map(ReleaseId::as_str).collect();
    let nodes: Vec<&str> = nodes.iter().map(NodeId::as_str).collect();
    format!("releases {}; nodes {}", or_none(&releases), or_none(&nodes))
}

/// `a, b`, or `(none)` for no names.
fn or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

/// What an attachment added, for the history: `release r2; nodes n1, n2`.
fn attach_detail(release: Option<&ReleaseId>, nodes: &BTreeSet<NodeId>) -> String {
    let mut parts = Vec::new();
    if let Some(release) = release {
        parts.push(format!("release {release}"));
    }
    if !nodes.is_empty() {
        let names: Vec<&str> = nodes.iter().map(NodeId::as_str).collect();
        parts.push(format!("nodes {}", names.join(", ")));
    }
    parts.join("; ")
}

/// What an issue webhook event says happened (docs/issue-format.md, "Webhook").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookEvent {
    /// A failure opened it.
    Opened,
    /// A failure attached to it (new releases or nodes, maybe a new state).
    Attached,
    /// Its state changed (verification, a person's decision).
    State,
    /// A person changed its fields.
    Updated,
    /// An import opened or changed it.
    Imported,
}

impl WebhookEvent {
    /// The name in the webhook body.
    pub fn name(self) -> &'static str {
        match self {
            WebhookEvent::Opened => "opened",
            WebhookEvent::Attached => "attached",
            WebhookEvent::State => "state",
            WebhookEvent::Updated => "updated",
            WebhookEvent::Imported => "imported",
        }
    }
}

/// An undelivered issue webhook event, as its outbox row keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedWebhook {
    /// The event id, increasing in the order the changes committed; the receiver
    /// deduplicates on it.
    pub id: i64,
    /// The issue it is about.
    pub issue_id: i64,
    /// `opened`, `attached`, `state`, `updated` or `imported`.
    pub event: String,
    /// When the change was made.
    pub at: Timestamp,
}

impl Store {
    /// The oldest `limit` undelivered issue webhook events, oldest first.
    pub async fn queued_webhooks(&self, limit: i64) -> Result<Vec<QueuedWebhook>, StoreError> {
        const SQL: &str =
            "SELECT id, issue_id, event, at FROM issue_webhook_outbox ORDER BY id LIMIT $1";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let fields =
                        rows::Fields::new(row, "issue_webhook_outbox", &["id", "issue_id"]);
                    Ok(QueuedWebhook {
                        id: fields.int_as("id")?,
                        issue_id: fields.int_as("issue_id")?,
                        event: fields.text("event")?,
                        at: fields.time("at")?,
                    })
                })
                .collect()
        })
    }

    /// Marks event `id` delivered by deleting its outbox row; `false` when it was gone
    /// already (another leader delivered it first).
    pub async fn webhook_delivered(&self, id: i64) -> Result<bool, StoreError> {
        const SQL: &str = "DELETE FROM issue_webhook_outbox WHERE id = $1";
        writing!(self, |pool| {
            let done = sqlx::query(SQL).bind(id).execute(pool).await?;
            Ok(done.rows_affected() == 1)
        })
    }
}
