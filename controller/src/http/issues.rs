//! Issues: the failures tracked to closure (`/issues`, filtered by state, release and node, a
//! page at a time) and one issue with its history (`/issues/N`). Read through `IssueService`
//! (`ListIssues`, `GetIssue`: a customer sees only the issues whose customers include it);
//! changing an issue stays with `tollgate issue`.

use super::layout::{self, badge, time};
use super::session::{Caller, PageError, encode};
use axum::extract::{Path, Query};
use axum::response::Response;
use maud::{Markup, html};
use tollgate_proto::v1::{self as pb, issue_service_server::IssueService};

/// `ListIssues`.
pub const LIST_ISSUES: &str = "/tollgate.v1.IssueService/ListIssues";
/// `GetIssue`.
pub const GET_ISSUE: &str = "/tollgate.v1.IssueService/GetIssue";

/// Issues shown on one page of the list.
const PAGE: u32 = 100;

/// `/issues`' query: the filters and the page.
#[derive(Debug, Default, serde::Deserialize)]
pub struct IssuesQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    release: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    page: String,
}

/// The link to `/issues` with `query`'s filters and `page`.
fn list_link(query: &IssuesQuery, page: &str) -> String {
    let mut link = "/issues?".to_owned();
    for (key, value) in [
        ("state", &query.state),
        ("release", &query.release),
        ("node", &query.node),
    ] {
        if !value.is_empty() {
            link.push_str(&format!("{key}={}&", encode(value)));
        }
    }
    link.push_str(&format!("page={}", encode(page)));
    link
}

/// The state as a badge: open work is a warning, a closed issue done.
fn state_badge(state: &str) -> Markup {
    match state {
        "closed" => badge("done"),
        "open" | "fix-in-release" | "verifying" => {
            html! { span class="badge warn" { (state) } }
        }
        other => badge(other),
    }
}

/// A table of issues.
fn table(issues: &[pb::Issue]) -> Markup {
    html! {
        table.list.issues {
            thead { tr { th { "Issue" } th { "State" } th { "Title" } th { "Owner" } th { "Releases" }
                         th { "Nodes" } th { "Fix in" } th { "Opened" } } }
            tbody { @for issue in issues {
                tr {
                    td { a href={ "/issues/" (issue.id) } { "#" (issue.id) } }
                    td { (state_badge(&issue.state)) }
                    td { (issue.title) div.muted { (issue.kind) } }
                    td { @if issue.owner.is_empty() { span.muted { "nobody" } } @else { (issue.owner) } }
                    td { (release_links(&issue.releases)) }
                    td { (node_links(&issue.nodes)) }
                    td { @if issue.fix_release.is_empty() { span.muted { "—" } }
                         @else { a href={ "/releases/" (encode(&issue.fix_release)) } { (issue.fix_release) } } }
                    td { (time(issue.opened_at.as_ref())) }
                }
            } }
        }
    }
}

fn release_links(releases: &[String]) -> Markup {
    html! { @for (i, release) in releases.iter().enumerate() {
        @if i > 0 { ", " } a href={ "/releases/" (encode(release)) } { (release) }
    } }
}

fn node_links(nodes: &[String]) -> Markup {
    html! { @for (i, node) in nodes.iter().enumerate() {
        @if i > 0 { ", " } a href={ "/nodes/" (encode(node)) } { (node) }
    } }
}

/// `/issues`: the issues the caller may see, oldest first, filtered.
pub async fn list(caller: Caller, Query(query): Query<IssuesQuery>) -> Result<Response, PageError> {
    let api = crate::grpc::issue::IssueApi::new(caller.shared.clone());
    let answer = caller
        .rpc(
            LIST_ISSUES,
            pb::ListIssuesRequest {
                state: query.state.clone(),
                release: query.release.clone(),
                customer: String::new(),
                node: query.node.clone(),
                page_size: PAGE,
                page_token: query.page.clone(),
            },
            |request| api.list_issues(request),
        )
        .await?;
    let states = [
        "",
        "open",
        "fix-in-release",
        "verifying",
        "closed",
        "wont-fix",
    ];
    let body = html! {
        h1 { "Issues" }
        form.filter method="get" action="/issues" {
            label { "State " select name="state" {
                @for state in states {
                    option value=(state) selected[query.state == state] {
                        @if state.is_empty() { "any" } @else { (state) }
                    }
                }
            } }
            label { "Release " input type="text" name="release" value=(query.release) placeholder="every release"; }
            label { "Node " input type="text" name="node" value=(query.node) placeholder="every node"; }
            button type="submit" { "Filter" }
        }
        @if answer.issues.is_empty() {
            p.muted { "No issue. A failed gate opens one for each new failure signature; "
                      code { "tollgate issue open --from RULE#N" } " opens one by hand." }
        } @else {
            (table(&answer.issues))
        }
        @if !answer.next_page_token.is_empty() {
            p { a href=(list_link(&query, &answer.next_page_token)) { "Next page" } }
        }
    };
    Ok(layout::page(&caller, "Issues", "/issues", body))
}

/// `/issues/N`: one issue, with its history.
pub async fn show(caller: Caller, Path(id): Path<String>) -> Result<Response, PageError> {
    let Ok(id) = id.parse::<i64>() else {
        return Err(PageError::Status(tonic::Status::not_found(format!(
            "issue {id} not found: issues are numbered (/issues/1)"
        ))));
    };
    let api = crate::grpc::issue::IssueApi::new(caller.shared.clone());
    let issue = caller
        .rpc(GET_ISSUE, pb::GetIssueRequest { id }, |request| {
            api.get_issue(request)
        })
        .await?;
    let title = format!("Issue #{}", issue.id);
    let body = html! {
        h1 { (title) " " (state_badge(&issue.state)) }
        p { b { (issue.title) } }
        table.facts {
            tr { th { "Signature" } td { code { (issue.signature) } } }
            tr { th { "Severity" } td { @if issue.severity.is_empty() { span.muted { "not set" } } @else { (issue.severity) } } }
            tr { th { "Owner" } td { @if issue.owner.is_empty() { span.muted { "nobody" } } @else { (issue.owner) } } }
            tr { th { "Failed in" } td { (release_links(&issue.releases)) } }
            tr { th { "On nodes" } td { (node_links(&issue.nodes)) } }
            tr { th { "Fix in" } td { @if issue.fix_release.is_empty() { span.muted { "—" } }
                                      @else { a href={ "/releases/" (encode(&issue.fix_release)) } { (issue.fix_release) } } } }
            @if !issue.reason.is_empty() { tr { th { "Won't fix because" } td { (issue.reason) } } }
            @if !issue.evidence.is_empty() { tr { th { "Closed on decision" } td { code { (issue.evidence) } } } }
            tr { th { "Tickets" } td { @if issue.tickets.is_empty() { span.muted { "none" } } @else { (issue.tickets.join(", ")) } } }
            tr { th { "Customers" } td { @if issue.customers.is_empty() { span.muted { "none set" } } @else { (issue.customers.join(", ")) } } }
            tr { th { "Opened" } td { (time(issue.opened_at.as_ref())) } }
            tr { th { "Last changed" } td { (time(issue.updated_at.as_ref())) } }
        }
        h2 { "History" }
        table.list.history {
            thead { tr { th { "When" } th { "Who" } th { "What" } th { "State after" } th { "Detail" } } }
            tbody { @for entry in &issue.history {
                tr {
                    td { (time(entry.at.as_ref())) }
                    td { (entry.actor) }
                    td { (entry.action) }
                    td { (state_badge(&entry.state)) }
                    td { (entry.detail) }
                }
            } }
        }
        p.muted { "Change it with " code { "tollgate issue set|fix|wont-fix|reopen " (issue.id) } "." }
    };
    Ok(layout::page(&caller, &title, "/issues", body))
}
