//! `tollgate waive`, `waiver list|revoke`, `demote`, `halt` and `resume`: the release
//! manager's exceptions and brakes, each recorded in the audit log under the caller's token.

use crate::args::{DemoteArgs, HaltArgs, ResumeArgs, WaiveArgs, WaiverCommand};
use crate::client::{Controller, answer};
use crate::output::{Format, Table, format_time, print_json};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use std::fmt::Write as _;
use tollgate_proto::v1 as pb;

/// Parses a time given as RFC 3339 or as a date (midnight UTC).
pub fn parse_time(text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|at| at.and_utc())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "'{text}' is not a time: use RFC 3339 (2026-12-01T08:00:00Z) or a date (2026-12-01)"
            )
        })
}

/// Parses a waiver's lifetime such as `7d`, `12h`, `30m` or `2w` into whole seconds, with the
/// one duration syntax of plans and flags (`tollgate_domain::spec::parse_duration`).
pub fn parse_for(text: &str) -> anyhow::Result<u64> {
    let duration = tollgate_domain::spec::parse_duration(text).map_err(anyhow::Error::msg)?;
    match duration.as_secs() {
        0 => anyhow::bail!("'{text}' is shorter than a second: a waiver lasts at least 1s"),
        seconds => Ok(seconds),
    }
}

/// The request `tollgate waive` sends.
pub fn waive_request(args: WaiveArgs) -> anyhow::Result<pb::WaiveRequest> {
    let WaiveArgs {
        release,
        milestone,
        rule,
        reason,
        ticket,
        expires,
        for_,
        nodes,
        skus,
        steps,
        issue,
        output: _,
    } = args;
    let expires_at = expires
        .as_deref()
        .map(parse_time)
        .transpose()?
        .map(tollgate_wire::timestamp_to_proto);
    let ttl_seconds = for_.as_deref().map(parse_for).transpose()?.unwrap_or(0);
    Ok(pb::WaiveRequest {
        release,
        milestone: milestone.unwrap_or_default(),
        rule_id: rule,
        reason,
        ticket,
        expires_at,
        ttl_seconds,
        nodes,
        skus,
        steps,
        issue: issue.unwrap_or(0),
    })
}

/// `tollgate waive`.
pub async fn waive(controller: &Controller, args: WaiveArgs) -> anyhow::Result<()> {
    let format = args.output.output;
    let request = waive_request(args)?;
    let waiver = answer(controller.gates().waive(request).await)?;
    match format {
        Format::Json => print_json(&tollgate_wire::json::waiver(&waiver)),
        Format::Text => {
            print!("{}", format_waiver(&waiver));
            Ok(())
        }
    }
}

/// Runs one `waiver` command.
pub async fn run(controller: &Controller, command: WaiverCommand) -> anyhow::Result<()> {
    match command {
        WaiverCommand::List {
            release,
            milestone,
            pages,
            output,
        } => {
            let milestone = milestone.unwrap_or_default();
            let waivers = crate::pages::follow(pages, |page_size, page_token| {
                let mut client = controller.gates();
                let request = pb::ListWaiversRequest {
                    release: release.clone(),
                    milestone: milestone.clone(),
                    page_size,
                    page_token,
                };
                async move {
                    let page = answer(client.list_waivers(request).await)?;
                    Ok::<_, crate::client::RpcError>((page.waivers, page.next_page_token))
                }
            })
            .await?;
            let listed = pb::ListWaiversResponse {
                waivers,
                next_page_token: String::new(),
            };
            match output.output {
                Format::Json => print_json(&Value::Array(
                    listed
                        .waivers
                        .iter()
                        .map(tollgate_wire::json::waiver)
                        .collect(),
                )),
                Format::Text => {
                    print!("{}", format_waivers(&listed.waivers));
                    Ok(())
                }
            }
        }
        WaiverCommand::Revoke { id, output } => {
            let waiver = answer(
                controller
                    .gates()
                    .revoke_waiver(pb::RevokeWaiverRequest { id })
                    .await,
            )?;
            match output.output {
                Format::Json => print_json(&tollgate_wire::json::waiver(&waiver)),
                Format::Text => {
                    println!(
                        "waiver {} revoked at {}",
                        waiver.id,
                        format_time(waiver.revoked_at.as_ref())
                    );
                    Ok(())
                }
            }
        }
    }
}

/// `tollgate demote`.
pub async fn demote(controller: &Controller, args: DemoteArgs) -> anyhow::Result<()> {
    let DemoteArgs {
        release,
        to,
        reason,
        output,
    } = args;
    let release = answer(
        controller
            .releases()
            .demote(pb::DemoteRequest {
                release,
                to_milestone: to,
                reason,
            })
            .await,
    )?;
    print_release_state(&release, output.output, "demoted")
}

/// `tollgate halt`.
pub async fn halt(controller: &Controller, args: HaltArgs) -> anyhow::Result<()> {
    let HaltArgs {
        release,
        reason,
        output,
    } = args;
    let release = answer(
        controller
            .releases()
            .halt(pb::HaltRequest { release, reason })
            .await,
    )?;
    print_release_state(&release, output.output, "halted")
}

/// `tollgate resume`.
pub async fn resume(controller: &Controller, args: ResumeArgs) -> anyhow::Result<()> {
    let ResumeArgs {
        release,
        reason,
        output,
    } = args;
    let release = answer(
        controller
            .releases()
            .resume(pb::ResumeRequest { release, reason })
            .await,
    )?;
    print_release_state(&release, output.output, "resumed")
}

fn print_release_state(release: &pb::Release, format: Format, what: &str) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(&tollgate_wire::json::release(release)),
        Format::Text => {
            let halted = if release.halted_reason.is_empty() {
                String::new()
            } else {
                format!(" (halted: {})", release.halted_reason)
            };
            println!(
                "release {} {what}: now at {}{halted}",
                release.name, release.milestone
            );
            Ok(())
        }
    }
}

/// One waiver, for people.
pub fn format_waiver(waiver: &pb::Waiver) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "waiver {} granted by {}: rule {} of release {} at {}",
        waiver.id, waiver.approver, waiver.rule_id, waiver.release, waiver.milestone
    );
    let _ = writeln!(out, "  reason:  {}", waiver.reason);
    let _ = writeln!(out, "  ticket:  {}", waiver.ticket);
    let _ = writeln!(
        out,
        "  expires: {}",
        format_time(waiver.expires_at.as_ref())
    );
    let _ = writeln!(out, "  scope:   {}", scope(waiver));
    if waiver.issue > 0 {
        let _ = writeln!(out, "  issue:   {}", issue_of(waiver));
    }
    out
}

/// The waiver's issue: `#3`, with its state when the answer carries it (`#3 closed`).
fn issue_of(waiver: &pb::Waiver) -> String {
    match (waiver.issue, waiver.issue_state.as_str()) {
        (0, _) => "-".to_owned(),
        (issue, "") => format!("#{issue}"),
        (issue, state) => format!("#{issue} {state}"),
    }
}

fn scope(waiver: &pb::Waiver) -> String {
    let mut parts = Vec::new();
    for (name, values) in [
        ("nodes", &waiver.nodes),
        ("skus", &waiver.skus),
        ("steps", &waiver.steps),
    ] {
        if !values.is_empty() {
            parts.push(format!("{name} {}", values.join(",")));
        }
    }
    if parts.is_empty() {
        "the whole rule".to_owned()
    } else {
        parts.join("; ")
    }
}

/// A table of waivers.
pub fn format_waivers(waivers: &[pb::Waiver]) -> String {
    if waivers.is_empty() {
        return "no waivers\n".to_owned();
    }
    let mut table = Table::new(&[
        "ID",
        "MILESTONE",
        "RULE",
        "BY",
        "TICKET",
        "EXPIRES",
        "REVOKED",
        "SCOPE",
        "ISSUE",
    ]);
    for waiver in waivers {
        table.row(vec![
            waiver.id.clone(),
            waiver.milestone.clone(),
            waiver.rule_id.clone(),
            waiver.approver.clone(),
            waiver.ticket.clone(),
            format_time(waiver.expires_at.as_ref()),
            waiver
                .revoked_at
                .as_ref()
                .map_or_else(|| "-".to_owned(), |t| format_time(Some(t))),
            scope(waiver),
            issue_of(waiver),
        ]);
    }
    let mut out = table.render("");
    // A waiver whose issue is closed waives a failure that is fixed: say it can go.
    for waiver in waivers.iter().filter(|waiver| {
        waiver.issue > 0 && waiver.issue_state == "closed" && waiver.revoked_at.is_none()
    }) {
        let _ = writeln!(
            out,
            "waiver {}: issue #{} closed; revoke the waiver with `tollgate waiver revoke {}`",
            waiver.id, waiver.issue, waiver.id
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_parse_or_say_how() {
        assert_eq!(
            parse_time("2026-12-01").unwrap().to_rfc3339(),
            "2026-12-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_time("2026-12-01T08:30:00+02:00")
                .unwrap()
                .to_rfc3339(),
            "2026-12-01T06:30:00+00:00"
        );
        assert!(
            parse_time("next week")
                .unwrap_err()
                .to_string()
                .contains("RFC 3339")
        );
        assert_eq!(parse_for("7d").unwrap(), 7 * 86_400);
        assert_eq!(parse_for("12h").unwrap(), 12 * 3600);
        assert!(parse_for("0d").is_err());
        assert_eq!(parse_for("7 days").unwrap(), 7 * 86_400);
        assert_eq!(parse_for("2w").unwrap(), 14 * 86_400);
        assert!(parse_for("500ms").is_err());
        assert!(parse_for("7 parsecs").is_err());
        assert!(parse_for("d").is_err());
    }

    #[test]
    fn a_waiver_prints_its_scope() {
        let waiver = pb::Waiver {
            id: "waiver-1".into(),
            rule_id: "temp".into(),
            nodes: vec!["n1".into()],
            steps: vec!["stress".into()],
            ..Default::default()
        };
        assert!(format_waiver(&waiver).contains("scope:   nodes n1; steps stress"));
        assert!(format_waivers(&[waiver]).contains("waiver-1"));
    }

    #[test]
    fn a_waiver_whose_issue_is_closed_says_it_can_be_revoked() {
        let waiver = |issue_state: &str| pb::Waiver {
            id: "waiver-2".into(),
            issue: 3,
            issue_state: issue_state.into(),
            ..Default::default()
        };
        let closed = format_waivers(&[waiver("closed")]);
        assert!(
            closed.contains(
                "waiver waiver-2: issue #3 closed; revoke the waiver with `tollgate waiver \
                 revoke waiver-2`"
            ),
            "{closed}"
        );
        let open = format_waivers(&[waiver("open")]);
        assert!(
            open.contains("#3 open") && !open.contains("revoke"),
            "{open}"
        );
        assert!(format_waiver(&waiver("")).contains("issue:   #3\n"));
    }
}
