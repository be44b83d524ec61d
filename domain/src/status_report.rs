//! The weekly status report: per customer, per release, its milestones' targets against their
//! projection (and which are at risk), what passed since a day, what blocks it now, waivers
//! about to expire and the risks; with minutes, the notes taken since and the action items.
//!
//! Rendering is a pure function of [`StatusFacts`]: the controller gathers them (scoped to a
//! customer when asked), [`markdown`] and [`html`] write them. Every text from the facts is
//! escaped in HTML and kept inert in Markdown; links point into the dashboard, under its base
//! URL when one is known, else as paths (`/releases/r550`).

use crate::note::Note;
use crate::projection::{Finish, MilestoneProjection, Risk, holders_words, risk_words};
use crate::{ReleaseId, Timestamp};
use chrono::{Duration, NaiveDate};
use std::fmt::Write as _;

/// How far ahead a waiver's expiry is reported.
pub const WAIVER_HORIZON_DAYS: i64 = 7;

/// Everything one report says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusFacts {
    /// When it was made.
    pub now: Timestamp,
    /// What passed is reported from here on.
    pub since: Timestamp,
    /// The customer it is scoped to, if any: then only that customer's releases show.
    pub customer: Option<String>,
    /// The dashboard's base URL without a trailing `/` (`https://tollgate.lab:7880`); empty
    /// for links as paths.
    pub dashboard: String,
    /// The releases, oldest first.
    pub releases: Vec<ReleaseStatus>,
    /// The minutes, when asked for.
    pub minutes: Option<Minutes>,
}

/// One release's part of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseStatus {
    /// The release.
    pub release: ReleaseId,
    /// Its current milestone (or `released`).
    pub milestone: String,
    /// The customers it is for (sorted); none puts it under "no customer".
    pub customers: Vec<String>,
    /// Its milestones: target against projection.
    pub milestones: Vec<MilestoneProjection>,
    /// What passed since the report's `since`, oldest first.
    pub passed: Vec<Passed>,
    /// What blocks it now, in one sentence.
    pub blocker: String,
    /// The rules of its current gate that fail (or could not be evaluated).
    pub failing_rules: Vec<FailingRule>,
    /// The rules of its current gate still waiting for evidence.
    pub missing_evidence: Vec<String>,
    /// The issues it failed with that are not closed or won't-fix.
    pub open_issues: Vec<OpenIssue>,
    /// Its waivers in force that expire within [`WAIVER_HORIZON_DAYS`].
    pub expiring_waivers: Vec<ExpiringWaiver>,
}

/// Something that passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Passed {
    /// A gate decision that passed (the first one with its digest).
    Gate {
        /// When.
        at: Timestamp,
        /// The milestone.
        milestone: String,
        /// The decision's digest.
        digest: String,
    },
    /// A promotion.
    Promotion {
        /// When.
        at: Timestamp,
        /// Promoted past.
        from: String,
        /// Promoted to.
        to: String,
        /// Who promoted.
        actor: String,
    },
}

impl Passed {
    /// When it passed.
    pub fn at(&self) -> Timestamp {
        match self {
            Passed::Gate { at, .. } | Passed::Promotion { at, .. } => *at,
        }
    }
}

/// A rule that holds the gate back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailingRule {
    /// The rule.
    pub rule_id: String,
    /// Its verdict (`failed`, `error`).
    pub verdict: String,
    /// Why.
    pub reason: String,
    /// The nodes it failed on.
    pub nodes: Vec<String>,
}

/// An issue not done yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenIssue {
    /// Its number.
    pub id: i64,
    /// Its title.
    pub title: String,
    /// Its state's name.
    pub state: String,
    /// Who works on it, if anyone.
    pub owner: Option<String>,
    /// When it was opened.
    pub opened_at: Timestamp,
}

/// A waiver that expires soon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiringWaiver {
    /// Its id.
    pub id: String,
    /// The milestone.
    pub milestone: String,
    /// The rule it waives.
    pub rule_id: String,
    /// When it expires.
    pub expires_at: Timestamp,
}

/// The minutes: notes taken since the report's `since`, every open action item, and those
/// done since `since`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Minutes {
    /// Notes without an action item taken since `since`, oldest first.
    pub decisions: Vec<Note>,
    /// Every action item not done yet, by due date (a done one here is left out).
    pub actions: Vec<Note>,
    /// The action items done since `since`, in the order they were done.
    pub done: Vec<Note>,
}

/// How an action item was done, in words: `done 2026-12-04 by carol: swapped it`.
fn done_words(note: &Note) -> String {
    let Some(done) = &note.done else {
        return String::new();
    };
    match &done.comment {
        Some(comment) => format!("done {} by {}: {comment}", day(done.at), done.by),
        None => format!("done {} by {}", day(done.at), done.by),
    }
}

/// A group of the report: one customer's releases, or those for no customer.
struct Group<'a> {
    customer: Option<&'a str>,
    releases: Vec<&'a ReleaseStatus>,
}

/// The releases grouped by customer (a release for two customers shows under each), then
/// those for no customer; a customer-scoped report has only its customer's group.
fn groups(facts: &StatusFacts) -> Vec<Group<'_>> {
    if let Some(customer) = &facts.customer {
        return vec![Group {
            customer: Some(customer),
            releases: facts
                .releases
                .iter()
                .filter(|release| release.customers.contains(customer))
                .collect(),
        }];
    }
    let mut customers: Vec<&str> = facts
        .releases
        .iter()
        .flat_map(|release| release.customers.iter().map(String::as_str))
        .collect();
    customers.sort_unstable();
    customers.dedup();
    let mut groups: Vec<Group<'_>> = customers
        .into_iter()
        .map(|customer| Group {
            customer: Some(customer),
            releases: facts
                .releases
                .iter()
                .filter(|release| release.customers.iter().any(|c| c == customer))
                .collect(),
        })
        .collect();
    let without: Vec<&ReleaseStatus> = facts
        .releases
        .iter()
        .filter(|release| release.customers.is_empty())
        .collect();
    if !without.is_empty() {
        groups.push(Group {
            customer: None,
            releases: without,
        });
    }
    groups
}

/// Whether `note` is about a release the report shows (a customer-scoped report shows no note
/// about another customer's release).
fn shown(facts: &StatusFacts, note: &Note) -> bool {
    groups(facts).iter().any(|group| {
        group
            .releases
            .iter()
            .any(|release| release.release == note.release)
    })
}

/// A path segment with everything but unreserved characters percent-encoded.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The dashboard link of a path.
fn link(facts: &StatusFacts, path: &str) -> String {
    format!("{}{path}", facts.dashboard)
}

/// A day as the report writes it.
fn day(at: Timestamp) -> String {
    at.date_naive().to_string()
}

/// Whole days from `from` to `to` (0 within a day).
fn days(from: Timestamp, to: Timestamp) -> i64 {
    (to - from).num_days().max(0)
}

/// "1 day", "3 days".
fn n_days(n: i64) -> String {
    if n == 1 {
        "1 day".to_owned()
    } else {
        format!("{n} days")
    }
}

/// The risks of a release, one sentence each: milestones at risk, with why.
fn risks(release: &ReleaseStatus) -> Vec<String> {
    release
        .milestones
        .iter()
        .filter_map(|milestone| {
            let risk = milestone.risk?;
            let sentence = match (risk, &milestone.finish, milestone.target) {
                (Risk::AfterTarget, Finish::Projected { at, .. }, Some(target)) => format!(
                    "{} is projected for {}, {} after its target {target}",
                    milestone.milestone,
                    day(*at),
                    n_days(late_by(*at, target))
                ),
                (Risk::AfterTarget, _, _) => {
                    format!("{} is projected after its target", milestone.milestone)
                }
                (Risk::NoMatchingNode, _, _) => format!(
                    "{} cannot be projected: no node its plan matches is in service",
                    milestone.milestone
                ),
                (Risk::Halted, _, _) => {
                    format!("{} waits: the release is halted", milestone.milestone)
                }
            };
            Some(if milestone.waits_for.is_empty() {
                sentence
            } else {
                let holders = milestone
                    .waits_for
                    .iter()
                    .map(|holder| (holder.release.as_str(), holder.milestone.as_str()));
                format!("{sentence}; it queues behind {}", holders_words(holders))
            })
        })
        .collect()
}

/// Days from `target` to the day of `at`.
fn late_by(at: Timestamp, target: NaiveDate) -> i64 {
    (at.date_naive() - target).num_days()
}

/// Whether nothing about the release needs saying beyond its milestones.
fn is_quiet(release: &ReleaseStatus) -> bool {
    release.failing_rules.is_empty()
        && release.missing_evidence.is_empty()
        && release.open_issues.is_empty()
}

/// What a passed item says.
fn passed_words(passed: &Passed) -> (String, Vec<String>) {
    match passed {
        Passed::Gate {
            milestone, digest, ..
        } => (
            format!("the {milestone} gate passed"),
            vec![format!("decision {}", short(digest))],
        ),
        Passed::Promotion {
            from, to, actor, ..
        } => (
            format!("promoted {from} → {to}"),
            vec![format!("by {actor}")],
        ),
    }
}

/// The first 12 characters of a digest.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// An issue's owner and age.
fn issue_tail(issue: &OpenIssue, now: Timestamp) -> String {
    format!(
        "owner {}, open {}",
        issue.owner.as_deref().unwrap_or("none"),
        n_days(days(issue.opened_at, now))
    )
}

/// The heading of a group.
fn group_title(group: &Group<'_>) -> String {
    match group.customer {
        Some(customer) => format!("Customer {customer}"),
        None => "No customer".to_owned(),
    }
}

/// A text made inert for Markdown: characters that would format or link are escaped, line
/// breaks become spaces.
pub fn md(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#' | '!' | '~' | '&' => {
                out.push('\\');
                out.push(ch);
            }
            '\n' | '\r' => out.push(' '),
            _ => out.push(ch),
        }
    }
    out
}

/// A link target for Markdown: the characters that would end it are percent-encoded.
fn md_url(url: &str) -> String {
    url.replace('(', "%28")
        .replace(')', "%29")
        .replace(' ', "%20")
}

/// The report in Markdown.
pub fn markdown(facts: &StatusFacts) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Status report {}", day(facts.now));
    let _ = writeln!(out);
    let mut scope = format!(
        "Since {} ({}), made {}.",
        day(facts.since),
        n_days(days(facts.since, facts.now)),
        facts.now.format("%Y-%m-%d %H:%M UTC")
    );
    if let Some(customer) = &facts.customer {
        let _ = write!(scope, " For customer {} only.", md(customer));
    }
    let _ = writeln!(out, "{scope}");
    let groups = groups(facts);
    if groups.iter().all(|group| group.releases.is_empty()) {
        let _ = writeln!(out);
        let _ = writeln!(out, "No release to report.");
    }
    for group in &groups {
        let _ = writeln!(out);
        let _ = writeln!(out, "## {}", md(&group_title(group)));
        for release in &group.releases {
            markdown_release(&mut out, facts, release);
        }
    }
    if let Some(minutes) = &facts.minutes {
        markdown_minutes(&mut out, facts, minutes);
    }
    out
}

/// One release in Markdown.
fn markdown_release(out: &mut String, facts: &StatusFacts, release: &ReleaseStatus) {
    let name = release.release.as_str();
    let url = link(facts, &format!("/releases/{}", encode_segment(name)));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "### [{}]({}) at {}",
        md(name),
        md_url(&url),
        md(&release.milestone)
    );
    let _ = writeln!(out);
    if !release.milestones.is_empty() {
        let _ = writeln!(out, "| milestone | target | projected | risk |");
        let _ = writeln!(out, "| --- | --- | --- | --- |");
        for milestone in &release.milestones {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                md(&milestone.milestone),
                milestone
                    .target
                    .map_or_else(|| "-".to_owned(), |target| target.to_string()),
                md(&milestone.finish.words()),
                risk_words(milestone.risk.map(<&str>::from))
            );
        }
        let _ = writeln!(out);
    }
    if release.passed.is_empty() {
        let _ = writeln!(out, "- **Passed since {}:** nothing.", day(facts.since));
    } else {
        let _ = writeln!(out, "- **Passed since {}:**", day(facts.since));
        for passed in &release.passed {
            let (what, tail) = passed_words(passed);
            let _ = writeln!(
                out,
                "  - {} {} ({})",
                day(passed.at()),
                md(&what),
                md(&tail.join(", "))
            );
        }
    }
    let _ = writeln!(out, "- **Blocks now:** {}", md(&release.blocker));
    for rule in &release.failing_rules {
        let nodes: Vec<String> = rule
            .nodes
            .iter()
            .map(|node| {
                let url = link(facts, &format!("/nodes/{}", encode_segment(node)));
                format!("[{}]({})", md(node), md_url(&url))
            })
            .collect();
        let on = if nodes.is_empty() {
            String::new()
        } else {
            format!(" on {}", nodes.join(", "))
        };
        let _ = writeln!(
            out,
            "  - rule {} {}{on}: {}",
            md(&rule.rule_id),
            md(&rule.verdict),
            md(&rule.reason)
        );
    }
    if !release.missing_evidence.is_empty() {
        let rules: Vec<String> = release.missing_evidence.iter().map(|r| md(r)).collect();
        let _ = writeln!(out, "  - missing evidence: {}", rules.join(", "));
    }
    for issue in &release.open_issues {
        let _ = writeln!(
            out,
            "  - issue #{} ({}): {}; {}",
            issue.id,
            md(&issue.state),
            md(&issue.title),
            md(&issue_tail(issue, facts.now))
        );
    }
    if !release.expiring_waivers.is_empty() {
        let url = link(facts, &format!("/waivers?release={}", encode_segment(name)));
        let _ = writeln!(
            out,
            "- **Waivers expiring within {WAIVER_HORIZON_DAYS} days** ([all]({})):",
            md_url(&url)
        );
        for waiver in &release.expiring_waivers {
            let _ = writeln!(
                out,
                "  - {} of {} at {}: expires {}",
                md(&waiver.id),
                md(&waiver.rule_id),
                md(&waiver.milestone),
                waiver.expires_at.format("%Y-%m-%d %H:%M UTC")
            );
        }
    }
    let risks = risks(release);
    if !risks.is_empty() {
        let _ = writeln!(out, "- **Risks:**");
        for risk in risks {
            let _ = writeln!(out, "  - {}", md(&risk));
        }
    }
}

/// The minutes in Markdown.
fn markdown_minutes(out: &mut String, facts: &StatusFacts, minutes: &Minutes) {
    let _ = writeln!(out);
    let _ = writeln!(out, "## Minutes");
    let _ = writeln!(out);
    let _ = writeln!(out, "### Decisions since {}", day(facts.since));
    let _ = writeln!(out);
    let decisions: Vec<&Note> = minutes
        .decisions
        .iter()
        .filter(|n| shown(facts, n))
        .collect();
    let actions: Vec<&Note> = minutes
        .actions
        .iter()
        .filter(|n| shown(facts, n) && n.is_open_action())
        .collect();
    let done: Vec<&Note> = minutes
        .done
        .iter()
        .filter(|n| shown(facts, n) && n.done.is_some())
        .collect();
    if decisions.is_empty() {
        let _ = writeln!(out, "None recorded.");
    }
    for note in decisions {
        let _ = writeln!(
            out,
            "- {} {} ({}): {}",
            day(note.at),
            md(note.release.as_str()),
            md(&note.author),
            md(&note.text)
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "### Action items");
    let _ = writeln!(out);
    if actions.is_empty() {
        let _ = writeln!(out, "None.");
    }
    for note in actions {
        let Some(action) = &note.action else { continue };
        let overdue = if action.overdue(facts.now) {
            " **OVERDUE**"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "- {} {}: {} (owner {}, due {}){overdue}",
            md(note.release.as_str()),
            format_args!("#{}", note.id),
            md(&note.text),
            md(&action.owner),
            action.due
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "### Action items done since {}", day(facts.since));
    let _ = writeln!(out);
    if done.is_empty() {
        let _ = writeln!(out, "None.");
    }
    for note in done {
        let Some(action) = &note.action else { continue };
        let _ = writeln!(
            out,
            "- {} {}: {} (owner {}, due {}), {}",
            md(note.release.as_str()),
            format_args!("#{}", note.id),
            md(&note.text),
            md(&action.owner),
            action.due,
            md(&done_words(note))
        );
    }
}

/// A text escaped for HTML text and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

/// The stylesheet of the HTML report: small, inline, no external resource.
const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:1rem auto;\
padding:0 1rem;line-height:1.4}table{border-collapse:collapse}th,td{border:1px solid #999;\
padding:.15rem .5rem;text-align:left}.risk{font-weight:bold;color:#b00}.overdue{font-weight:bold;\
color:#b00}";

/// The report in HTML: one self-contained page.
pub fn html(facts: &StatusFacts) -> String {
    let mut out = String::new();
    let title = format!("Status report {}", day(facts.now));
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{STYLE}</style></head>\n<body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    let mut scope = format!(
        "Since {} ({}), made {}.",
        day(facts.since),
        n_days(days(facts.since, facts.now)),
        facts.now.format("%Y-%m-%d %H:%M UTC")
    );
    if let Some(customer) = &facts.customer {
        let _ = write!(scope, " For customer {customer} only.");
    }
    let _ = writeln!(out, "<p>{}</p>", esc(&scope));
    let groups = groups(facts);
    if groups.iter().all(|group| group.releases.is_empty()) {
        let _ = writeln!(out, "<p>No release to report.</p>");
    }
    for group in &groups {
        let _ = writeln!(out, "<h2>{}</h2>", esc(&group_title(group)));
        for release in &group.releases {
            html_release(&mut out, facts, release);
        }
    }
    if let Some(minutes) = &facts.minutes {
        html_minutes(&mut out, facts, minutes);
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// One release in HTML.
fn html_release(out: &mut String, facts: &StatusFacts, release: &ReleaseStatus) {
    let name = release.release.as_str();
    let url = link(facts, &format!("/releases/{}", encode_segment(name)));
    let _ = writeln!(
        out,
        "<h3><a href=\"{}\">{}</a> at {}</h3>",
        esc(&url),
        esc(name),
        esc(&release.milestone)
    );
    if !release.milestones.is_empty() {
        out.push_str(
            "<table>\n<tr><th>milestone</th><th>target</th><th>projected</th><th>risk</th></tr>\n",
        );
        for milestone in &release.milestones {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"risk\">{}</td></tr>",
                esc(&milestone.milestone),
                milestone
                    .target
                    .map_or_else(|| "-".to_owned(), |target| target.to_string()),
                esc(&milestone.finish.words()),
                esc(&risk_words(milestone.risk.map(<&str>::from)))
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("<ul>\n");
    let _ = write!(out, "<li><b>Passed since {}:</b>", day(facts.since));
    if release.passed.is_empty() {
        out.push_str(" nothing.</li>\n");
    } else {
        out.push_str("<ul>\n");
        for passed in &release.passed {
            let (what, tail) = passed_words(passed);
            let _ = writeln!(
                out,
                "<li>{} {} ({})</li>",
                day(passed.at()),
                esc(&what),
                esc(&tail.join(", "))
            );
        }
        out.push_str("</ul></li>\n");
    }
    let _ = write!(out, "<li><b>Blocks now:</b> {}", esc(&release.blocker));
    if !is_quiet(release) {
        out.push_str("<ul>\n");
        for rule in &release.failing_rules {
            let nodes: Vec<String> = rule
                .nodes
                .iter()
                .map(|node| {
                    let url = link(facts, &format!("/nodes/{}", encode_segment(node)));
                    format!("<a href=\"{}\">{}</a>", esc(&url), esc(node))
                })
                .collect();
            let on = if nodes.is_empty() {
                String::new()
            } else {
                format!(" on {}", nodes.join(", "))
            };
            let _ = writeln!(
                out,
                "<li>rule {} {}{on}: {}</li>",
                esc(&rule.rule_id),
                esc(&rule.verdict),
                esc(&rule.reason)
            );
        }
        if !release.missing_evidence.is_empty() {
            let rules: Vec<String> = release.missing_evidence.iter().map(|r| esc(r)).collect();
            let _ = writeln!(out, "<li>missing evidence: {}</li>", rules.join(", "));
        }
        for issue in &release.open_issues {
            let _ = writeln!(
                out,
                "<li>issue #{} ({}): {}; {}</li>",
                issue.id,
                esc(&issue.state),
                esc(&issue.title),
                esc(&issue_tail(issue, facts.now))
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</li>\n");
    if !release.expiring_waivers.is_empty() {
        let url = link(facts, &format!("/waivers?release={}", encode_segment(name)));
        let _ = writeln!(
            out,
            "<li><b>Waivers expiring within {WAIVER_HORIZON_DAYS} days</b> (<a href=\"{}\">all</a>):<ul>",
            esc(&url)
        );
        for waiver in &release.expiring_waivers {
            let _ = writeln!(
                out,
                "<li>{} of {} at {}: expires {}</li>",
                esc(&waiver.id),
                esc(&waiver.rule_id),
                esc(&waiver.milestone),
                waiver.expires_at.format("%Y-%m-%d %H:%M UTC")
            );
        }
        out.push_str("</ul></li>\n");
    }
    let risks = risks(release);
    if !risks.is_empty() {
        out.push_str("<li><b>Risks:</b><ul>\n");
        for risk in risks {
            let _ = writeln!(out, "<li class=\"risk\">{}</li>", esc(&risk));
        }
        out.push_str("</ul></li>\n");
    }
    out.push_str("</ul>\n");
}

/// The minutes in HTML.
fn html_minutes(out: &mut String, facts: &StatusFacts, minutes: &Minutes) {
    out.push_str("<h2>Minutes</h2>\n");
    let _ = writeln!(out, "<h3>Decisions since {}</h3>", day(facts.since));
    let decisions: Vec<&Note> = minutes
        .decisions
        .iter()
        .filter(|n| shown(facts, n))
        .collect();
    let actions: Vec<&Note> = minutes
        .actions
        .iter()
        .filter(|n| shown(facts, n) && n.is_open_action())
        .collect();
    let done: Vec<&Note> = minutes
        .done
        .iter()
        .filter(|n| shown(facts, n) && n.done.is_some())
        .collect();
    if decisions.is_empty() {
        out.push_str("<p>None recorded.</p>\n");
    } else {
        out.push_str("<ul>\n");
        for note in decisions {
            let _ = writeln!(
                out,
                "<li>{} {} ({}): {}</li>",
                day(note.at),
                esc(note.release.as_str()),
                esc(&note.author),
                esc(&note.text)
            );
        }
        out.push_str("</ul>\n");
    }
    out.push_str("<h3>Action items</h3>\n");
    if actions.is_empty() {
        out.push_str("<p>None.</p>\n");
    } else {
        html_actions(out, facts, &actions);
    }
    let _ = writeln!(out, "<h3>Action items done since {}</h3>", day(facts.since));
    if done.is_empty() {
        out.push_str("<p>None.</p>\n");
        return;
    }
    out.push_str("<ul>\n");
    for note in done {
        let Some(action) = &note.action else { continue };
        let _ = writeln!(
            out,
            "<li>{} #{}: {} (owner {}, due {}), {}</li>",
            esc(note.release.as_str()),
            note.id,
            esc(&note.text),
            esc(&action.owner),
            action.due,
            esc(&done_words(note))
        );
    }
    out.push_str("</ul>\n");
}

/// The open action items in HTML, overdue ones marked.
fn html_actions(out: &mut String, facts: &StatusFacts, actions: &[&Note]) {
    out.push_str("<ul>\n");
    for note in actions {
        let Some(action) = &note.action else { continue };
        let overdue = if action.overdue(facts.now) {
            " <span class=\"overdue\">OVERDUE</span>"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<li>{} #{}: {} (owner {}, due {}){overdue}</li>",
            esc(note.release.as_str()),
            note.id,
            esc(&note.text),
            esc(&action.owner),
            action.due
        );
    }
    out.push_str("</ul>\n");
}

/// The day `horizon` days after `now`: waivers expiring before it are reported.
pub fn waiver_horizon(now: Timestamp) -> Timestamp {
    now + Duration::days(WAIVER_HORIZON_DAYS)
}
