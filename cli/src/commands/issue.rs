//! `tollgate issue open|list|export|import|show|set|fix|wont-fix|reopen`: issues by hand, each change
//! recorded in the issue's history and the audit log under the caller's token.

use crate::args::{IssueCommand, IssueExportFormat};
use crate::client::{Controller, RpcError, answer};
use crate::output::{Format, Table, format_time, print_json};
use serde_json::{Value, json};
use std::fmt::Write as _;
use tollgate_domain::issue::csv;
use tollgate_proto::v1 as pb;

/// Runs one `issue` command.
pub async fn run(controller: &Controller, command: IssueCommand) -> anyhow::Result<()> {
    match command {
        IssueCommand::Open {
            release,
            milestone,
            from,
            title,
            severity,
            owner,
            output,
        } => {
            let opened = answer(
                controller
                    .issues()
                    .open_issue(pb::OpenIssueRequest {
                        release,
                        milestone: milestone.unwrap_or_default(),
                        group: from,
                        title: title.unwrap_or_default(),
                        severity: severity.unwrap_or_default(),
                        owner: owner.unwrap_or_default(),
                    })
                    .await,
            )?;
            let issue = opened.issue.unwrap_or_default();
            match output.output {
                Format::Json => print_json(&json!({
                    "attached": opened.attached,
                    "issue": issue_json(&issue),
                })),
                Format::Text => {
                    if opened.attached {
                        println!(
                            "issue #{} has this signature already: attached to it (change its \
                             fields with `tollgate issue set {}`)",
                            issue.id, issue.id
                        );
                    } else {
                        println!("issue #{} opened", issue.id);
                    }
                    print!("{}", format_issue(&issue));
                    Ok(())
                }
            }
        }
        IssueCommand::List {
            state,
            release,
            customer,
            node,
            pages,
            output,
        } => {
            let request = pb::ListIssuesRequest {
                state: state.unwrap_or_default(),
                release: release.unwrap_or_default(),
                customer: customer.unwrap_or_default(),
                node: node.unwrap_or_default(),
                page_size: 0,
                page_token: String::new(),
            };
            let issues = list(controller, request, pages).await?;
            match output.output {
                Format::Json => print_json(&Value::Array(issues.iter().map(issue_json).collect())),
                Format::Text => {
                    print!("{}", format_issues(&issues));
                    Ok(())
                }
            }
        }
        IssueCommand::Export {
            format,
            state,
            release,
        } => {
            let request = pb::ListIssuesRequest {
                state: state.unwrap_or_default(),
                release: release.unwrap_or_default(),
                ..Default::default()
            };
            let issues = list(controller, request, crate::pages::PageArgs::default()).await?;
            match format {
                IssueExportFormat::Json => print_json(&export_json(&issues)),
                IssueExportFormat::Csv => {
                    print!("{}", export_csv(&issues));
                    Ok(())
                }
            }
        }
        IssueCommand::Import {
            file,
            format,
            output,
        } => {
            let format = format.unwrap_or_else(|| import_format_of(&file));
            let document = std::fs::read_to_string(&file).map_err(|error| {
                anyhow::anyhow!(
                    "cannot read {}: {error}; give the file `tollgate issue export` wrote",
                    file.display()
                )
            })?;
            let imported = answer(
                controller
                    .issues()
                    .import_issues(pb::ImportIssuesRequest {
                        document,
                        file_name: file.display().to_string(),
                        format: match format {
                            IssueExportFormat::Json => "json",
                            IssueExportFormat::Csv => "csv",
                        }
                        .to_owned(),
                    })
                    .await,
            )?;
            match output.output {
                Format::Json => print_json(&json!({
                    "opened": imported.opened,
                    "updated": imported.updated,
                    "unchanged": imported.unchanged,
                })),
                Format::Text => {
                    let numbers = |ids: &[i64]| {
                        ids.iter()
                            .map(|id| format!("#{id}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    println!(
                        "imported {}: {} opened, {} updated, {} unchanged",
                        file.display(),
                        imported.opened.len(),
                        imported.updated.len(),
                        imported.unchanged.len()
                    );
                    for (what, ids) in
                        [("opened", &imported.opened), ("updated", &imported.updated)]
                    {
                        if !ids.is_empty() {
                            println!("  {what}: {}", numbers(ids));
                        }
                    }
                    Ok(())
                }
            }
        }
        IssueCommand::Show { id, output } => {
            let issue = answer(
                controller
                    .issues()
                    .get_issue(pb::GetIssueRequest { id })
                    .await,
            )?;
            print_issue(&issue, output.output)
        }
        IssueCommand::Set {
            id,
            title,
            severity,
            owner,
            tickets,
            clear_tickets,
            customers,
            clear_customers,
            add_tickets,
            remove_tickets,
            add_customers,
            remove_customers,
            output,
        } => {
            let list = |values: Vec<String>, clear: bool| {
                (clear || !values.is_empty()).then_some(pb::TextList { values })
            };
            let issue = answer(
                controller
                    .issues()
                    .update_issue(pb::UpdateIssueRequest {
                        id,
                        title,
                        severity,
                        owner,
                        tickets: list(tickets, clear_tickets),
                        customers: list(customers, clear_customers),
                        expected_updated_at: None,
                        add_tickets,
                        remove_tickets,
                        add_customers,
                        remove_customers,
                    })
                    .await,
            )?;
            print_issue(&issue, output.output)
        }
        IssueCommand::Fix {
            id,
            release,
            note,
            output,
        } => {
            let issue = answer(
                controller
                    .issues()
                    .set_fix_release(pb::SetFixReleaseRequest { id, release, note })
                    .await,
            )?;
            print_issue(&issue, output.output)
        }
        IssueCommand::WontFix { id, reason, output } => {
            let issue = answer(
                controller
                    .issues()
                    .wont_fix(pb::WontFixRequest { id, reason })
                    .await,
            )?;
            print_issue(&issue, output.output)
        }
        IssueCommand::Reopen { id, reason, output } => {
            let issue = answer(
                controller
                    .issues()
                    .reopen(pb::ReopenIssueRequest { id, reason })
                    .await,
            )?;
            print_issue(&issue, output.output)
        }
    }
}

/// Every issue `request` filters, following its pages.
async fn list(
    controller: &Controller,
    request: pb::ListIssuesRequest,
    pages: crate::pages::PageArgs,
) -> Result<Vec<pb::Issue>, RpcError> {
    crate::pages::follow(pages, |page_size, page_token| {
        let mut client = controller.issues();
        let request = pb::ListIssuesRequest {
            page_size,
            page_token,
            ..request.clone()
        };
        async move {
            let page = answer(client.list_issues(request).await)?;
            Ok::<_, RpcError>((page.issues, page.next_page_token))
        }
    })
    .await
}

/// The name and version of the export document's format.
pub const EXPORT_FORMAT: &str = "tollgate-issues/1";

/// The format of an import file by its name: CSV when it ends in `.csv` (any case), else JSON.
pub fn import_format_of(file: &std::path::Path) -> IssueExportFormat {
    match file.extension().and_then(|ext| ext.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("csv") => IssueExportFormat::Csv,
        _ => IssueExportFormat::Json,
    }
}

/// The JSON export: the format's name and every issue as `issue list -o json` prints it,
/// without its history.
pub fn export_json(issues: &[pb::Issue]) -> Value {
    let issues: Vec<Value> = issues
        .iter()
        .map(|issue| {
            let mut value = issue_json(issue);
            if let Some(object) = value.as_object_mut() {
                object.remove("history");
            }
            value
        })
        .collect();
    json!({ "format": EXPORT_FORMAT, "issues": issues })
}

/// The CSV export: a header line of the domain's [`csv::COLUMNS`], then one line per issue;
/// lists are joined with `;`, absent values are empty.
pub fn export_csv(issues: &[pb::Issue]) -> String {
    let header: Vec<String> = csv::COLUMNS.iter().map(|c| (*c).to_owned()).collect();
    let mut out = csv::record(&header);
    for issue in issues {
        let value = issue_json(issue);
        let cells: Vec<String> = csv::COLUMNS
            .iter()
            .map(|column| match &value[*column] {
                Value::Null => String::new(),
                Value::String(text) => text.clone(),
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(&csv::LIST_SEPARATOR.to_string()),
                other => other.to_string(),
            })
            .collect();
        out.push_str(&csv::record(&cells));
    }
    out
}

fn print_issue(issue: &pb::Issue, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(&issue_json(issue)),
        Format::Text => {
            print!("{}", format_issue(issue));
            Ok(())
        }
    }
}

/// An issue as JSON: the wire message's fields, snake_case, times in RFC 3339.
pub fn issue_json(issue: &pb::Issue) -> Value {
    let time = |at: Option<&prost_types::Timestamp>| {
        at.and_then(tollgate_wire::timestamp_from_proto)
            .map(|at| at.to_rfc3339())
    };
    json!({
        "id": issue.id,
        "signature": issue.signature,
        "kind": issue.kind,
        "text": issue.text,
        "title": issue.title,
        "severity": (!issue.severity.is_empty()).then_some(&issue.severity),
        "owner": (!issue.owner.is_empty()).then_some(&issue.owner),
        "tickets": issue.tickets,
        "customers": issue.customers,
        "state": issue.state,
        "fix_release": (!issue.fix_release.is_empty()).then_some(&issue.fix_release),
        "reason": (!issue.reason.is_empty()).then_some(&issue.reason),
        "releases": issue.releases,
        "nodes": issue.nodes,
        "evidence": (!issue.evidence.is_empty()).then_some(&issue.evidence),
        "opened_at": time(issue.opened_at.as_ref()),
        "updated_at": time(issue.updated_at.as_ref()),
        "history": issue.history.iter().map(|entry| json!({
            "at": time(entry.at.as_ref()),
            "actor": entry.actor,
            "action": entry.action,
            "state": entry.state,
            "detail": entry.detail,
        })).collect::<Vec<_>>(),
    })
}

/// The state as people read it: `fix-in-release r551`, `wont-fix (reason)`.
pub fn format_state(issue: &pb::Issue) -> String {
    if !issue.fix_release.is_empty() {
        format!("{} {}", issue.state, issue.fix_release)
    } else if !issue.reason.is_empty() {
        format!("{} ({})", issue.state, issue.reason)
    } else {
        issue.state.clone()
    }
}

/// One issue with its history, for `issue show` and after every change.
pub fn format_issue(issue: &pb::Issue) -> String {
    let or_dash = |text: &str| {
        if text.is_empty() {
            "-".to_owned()
        } else {
            text.to_owned()
        }
    };
    let list = |values: &[String]| or_dash(&values.join(", "));
    let mut out = String::new();
    let _ = writeln!(out, "issue #{}: {}", issue.id, issue.title);
    let _ = writeln!(out, "signature: {}", issue.signature);
    let _ = writeln!(out, "state:     {}", format_state(issue));
    let _ = writeln!(out, "severity:  {}", or_dash(&issue.severity));
    let _ = writeln!(out, "owner:     {}", or_dash(&issue.owner));
    let _ = writeln!(out, "tickets:   {}", list(&issue.tickets));
    let _ = writeln!(out, "customers: {}", list(&issue.customers));
    let _ = writeln!(out, "releases:  {}", list(&issue.releases));
    let _ = writeln!(out, "nodes:     {}", list(&issue.nodes));
    if !issue.evidence.is_empty() {
        let _ = writeln!(out, "evidence:  decision {}", issue.evidence);
    }
    let _ = writeln!(
        out,
        "opened:    {}  updated {}",
        format_time(issue.opened_at.as_ref()),
        format_time(issue.updated_at.as_ref())
    );
    if !issue.history.is_empty() {
        let mut table = Table::new(&["AT", "ACTOR", "ACTION", "STATE", "DETAIL"]);
        for entry in &issue.history {
            table.row(vec![
                format_time(entry.at.as_ref()),
                entry.actor.clone(),
                entry.action.clone(),
                entry.state.clone(),
                entry.detail.clone(),
            ]);
        }
        let _ = writeln!(out, "history:");
        out.push_str(&table.render("  "));
    }
    out
}

/// A table of issues, for `issue list`.
pub fn format_issues(issues: &[pb::Issue]) -> String {
    if issues.is_empty() {
        return "no issues\n".to_owned();
    }
    let mut table = Table::new(&["ID", "STATE", "SEVERITY", "OWNER", "RELEASES", "TITLE"]);
    for issue in issues {
        table.row(vec![
            format!("#{}", issue.id),
            format_state(issue),
            issue.severity.clone(),
            issue.owner.clone(),
            issue.releases.join(", "),
            issue.title.clone(),
        ]);
    }
    table.render("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue() -> pb::Issue {
        pb::Issue {
            id: 7,
            kind: "events".into(),
            text: "XID 79".into(),
            signature: "events: XID 79".into(),
            title: "GPU falls off the bus".into(),
            owner: "alice".into(),
            tickets: vec!["JIRA-12".into()],
            state: "fix-in-release".into(),
            fix_release: "r551".into(),
            releases: vec!["r550".into()],
            nodes: vec!["lab-3".into()],
            history: vec![pb::IssueHistoryEntry {
                actor: "controller".into(),
                action: "opened".into(),
                state: "open".into(),
                detail: "events: XID 79; release r550; nodes lab-3".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn an_issue_reads_field_by_field_with_its_history() {
        let text = format_issue(&issue());
        assert!(
            text.starts_with("issue #7: GPU falls off the bus\n"),
            "{text}"
        );
        assert!(text.contains("state:     fix-in-release r551\n"), "{text}");
        assert!(text.contains("severity:  -\n"), "{text}");
        assert!(text.contains("tickets:   JIRA-12\n"), "{text}");
        assert!(text.contains("opened"), "{text}");
        assert!(
            text.contains("events: XID 79; release r550; nodes lab-3"),
            "{text}"
        );
        let json = issue_json(&issue());
        assert_eq!(json["fix_release"], "r551");
        assert_eq!(json["severity"], Value::Null);
        assert_eq!(json["history"][0]["action"], "opened");
    }

    #[test]
    fn exports_carry_every_field_without_the_history() {
        let mut quoted = issue();
        quoted.title = "hot, \"very\" hot".into();
        quoted.tickets.push("JIRA-13".into());
        let document = export_json(&[issue()]);
        assert_eq!(document["format"], EXPORT_FORMAT);
        assert_eq!(document["issues"][0]["signature"], "events: XID 79");
        assert_eq!(document["issues"][0]["history"], Value::Null);
        let csv = export_csv(&[quoted]);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0], csv::COLUMNS.join(","));
        assert_eq!(
            lines[1],
            "7,events,XID 79,\"hot, \"\"very\"\" hot\",,alice,JIRA-12;JIRA-13,,fix-in-release,\
             r551,,r550,lab-3,,,"
        );
        assert_eq!(lines.len(), 3, "a line per issue, each ended: {csv:?}");
    }

    #[test]
    fn lists_show_the_state_with_its_release_or_reason() {
        let mut wont = issue();
        wont.state = "wont-fix".into();
        wont.fix_release.clear();
        wont.reason = "hardware retired".into();
        let text = format_issues(&[issue(), wont]);
        assert!(text.contains("fix-in-release r551"), "{text}");
        assert!(text.contains("wont-fix (hardware retired)"), "{text}");
        assert_eq!(format_issues(&[]), "no issues\n");
    }
}
