//! `tollgate maintenance add|list|end` and `tollgate node health-plan set|list|remove`: the
//! lab's planned absences and periodic health checks, each change recorded in the audit log.

use crate::args::{HealthPlanCommand, MaintenanceCommand};
use crate::client::{Controller, answer};
use crate::commands::waiver::parse_time;
use crate::output::{Format, Table, format_time, print_json};
use anyhow::Context as _;
use tollgate_proto::v1 as pb;
use tollgate_wire::json;
use tollgate_wire::time::timestamp_to_proto;

/// Runs one `maintenance` command.
pub async fn run(controller: &Controller, command: MaintenanceCommand) -> anyhow::Result<()> {
    match command {
        MaintenanceCommand::Add {
            label,
            from,
            until,
            duration,
            reason,
            output,
        } => {
            let request = add_request(label, from, until, duration, reason, crate::clock::now())?;
            let window = answer(controller.nodes().add_maintenance_window(request).await)?;
            print_windows(std::slice::from_ref(&window), output.output, "opened")
        }
        MaintenanceCommand::List { all, output } => {
            let windows = answer(
                controller
                    .nodes()
                    .list_maintenance_windows(pb::ListMaintenanceWindowsRequest { all })
                    .await,
            )?
            .windows;
            print_windows(&windows, output.output, "")
        }
        MaintenanceCommand::End { id, reason, output } => {
            let window = answer(
                controller
                    .nodes()
                    .end_maintenance_window(pb::EndMaintenanceWindowRequest { id, reason })
                    .await,
            )?;
            print_windows(std::slice::from_ref(&window), output.output, "ended")
        }
    }
}

/// The request `maintenance add` sends: `--from` (now when left out) and `--until` or
/// `--for` from the start.
pub fn add_request(
    label: String,
    from: Option<String>,
    until: Option<String>,
    duration: Option<String>,
    reason: String,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<pb::AddMaintenanceWindowRequest> {
    let starts_at = match &from {
        Some(text) => parse_time(text).context("--from")?,
        None => now,
    };
    let ends_at = match (until, duration) {
        (Some(text), _) => parse_time(&text).context("--until")?,
        (None, Some(text)) => {
            let length = tollgate_domain::spec::parse_duration(&text)
                .map_err(anyhow::Error::msg)
                .context("--for")?;
            starts_at
                + chrono::Duration::from_std(length)
                    .map_err(|_| anyhow::anyhow!("--for: '{text}' is too long"))?
        }
        (None, None) => anyhow::bail!("give --until TIME or --for DURATION"),
    };
    Ok(pb::AddMaintenanceWindowRequest {
        label,
        starts_at: from.is_some().then(|| timestamp_to_proto(starts_at)),
        ends_at: Some(timestamp_to_proto(ends_at)),
        reason,
    })
}

/// Windows as a table (ID LABEL FROM UNTIL ACTIVE BY REASON), or as JSON; `verb` says what
/// just happened to a single window.
fn print_windows(
    windows: &[pb::MaintenanceWindow],
    format: Format,
    verb: &str,
) -> anyhow::Result<()> {
    match format {
        Format::Json if verb.is_empty() => print_json(&json::list(
            "windows",
            windows.iter().map(json::maintenance_window).collect(),
        )),
        Format::Json => print_json(&json::maintenance_window(&windows[0])),
        Format::Text => {
            if !verb.is_empty() {
                println!("maintenance window {} {verb}", windows[0].id);
            }
            print!("{}", format_windows(windows));
            Ok(())
        }
    }
}

/// The window table.
pub fn format_windows(windows: &[pb::MaintenanceWindow]) -> String {
    if windows.is_empty() {
        return "no maintenance windows\n".to_owned();
    }
    let mut table = Table::new(&["ID", "LABEL", "FROM", "UNTIL", "ACTIVE", "BY", "REASON"]);
    for window in windows {
        table.row(vec![
            window.id.clone(),
            window.label.clone(),
            format_time(window.starts_at.as_ref()),
            format_time(window.ends_at.as_ref()),
            if window.active { "yes" } else { "no" }.to_owned(),
            window.created_by.clone(),
            window.reason.clone(),
        ]);
    }
    table.render("")
}

/// Runs one `node health-plan` command.
pub async fn health_plan(
    controller: &Controller,
    command: HealthPlanCommand,
) -> anyhow::Result<()> {
    match command {
        HealthPlanCommand::Set {
            plan,
            release,
            every,
            output,
        } => {
            let every_seconds = tollgate_domain::spec::parse_duration(&every)
                .map_err(anyhow::Error::msg)
                .context("--every")?
                .as_secs();
            let set = answer(
                controller
                    .nodes()
                    .set_health_plan(pb::SetHealthPlanRequest {
                        plan,
                        release,
                        every_seconds,
                    })
                    .await,
            )?;
            print_health_plans(std::slice::from_ref(&set), output.output, "set")
        }
        HealthPlanCommand::List { output } => {
            let plans = answer(
                controller
                    .nodes()
                    .list_health_plans(pb::ListHealthPlansRequest {})
                    .await,
            )?
            .health_plans;
            print_health_plans(&plans, output.output, "")
        }
        HealthPlanCommand::Remove { plan, output } => {
            let removed = answer(
                controller
                    .nodes()
                    .remove_health_plan(pb::RemoveHealthPlanRequest { plan })
                    .await,
            )?;
            print_health_plans(std::slice::from_ref(&removed), output.output, "removed")
        }
    }
}

fn print_health_plans(plans: &[pb::HealthPlan], format: Format, verb: &str) -> anyhow::Result<()> {
    match format {
        Format::Json if verb.is_empty() => print_json(&json::list(
            "health_plans",
            plans.iter().map(json::health_plan).collect(),
        )),
        Format::Json => print_json(&json::health_plan(&plans[0])),
        Format::Text => {
            if !verb.is_empty() {
                println!("health plan {} {verb}", plans[0].plan_name);
            }
            print!("{}", format_health_plans(plans));
            Ok(())
        }
    }
}

/// The health plan table.
pub fn format_health_plans(plans: &[pb::HealthPlan]) -> String {
    if plans.is_empty() {
        return "no health plans (set one with `tollgate node health-plan set PLAN --release R \
                --every 6h`)\n"
            .to_owned();
    }
    let mut table = Table::new(&["PLAN", "VERSION", "RELEASE", "EVERY", "SET BY", "SET AT"]);
    for plan in plans {
        table.row(vec![
            plan.plan_name.clone(),
            crate::output::short_hash(&plan.plan_version).to_owned(),
            plan.release.clone(),
            tollgate_domain::spec::format_duration(std::time::Duration::from_secs(
                plan.every_seconds,
            )),
            plan.set_by.clone(),
            format_time(plan.set_at.as_ref()),
        ]);
    }
    table.render("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_wire::time::timestamp_from_proto;

    fn at(text: &str) -> chrono::DateTime<chrono::Utc> {
        parse_time(text).expect("time")
    }

    #[test]
    fn a_window_is_given_by_its_end_or_its_length_from_now_or_from_its_start() {
        let now = at("2026-12-05T10:00:00Z");
        let request = add_request(
            "rack=r12".into(),
            None,
            None,
            Some("4h".into()),
            "PDU swap".into(),
            now,
        )
        .expect("request");
        assert_eq!(request.starts_at, None, "the controller's now");
        let end = timestamp_from_proto(request.ends_at.as_ref().expect("end")).expect("time");
        assert_eq!(end, at("2026-12-05T14:00:00Z"));

        let request = add_request(
            "rack=r12".into(),
            Some("2026-12-06T02:00:00Z".into()),
            None,
            Some("2h".into()),
            "x".into(),
            now,
        )
        .expect("request");
        let end = timestamp_from_proto(request.ends_at.as_ref().expect("end")).expect("time");
        assert_eq!(end, at("2026-12-06T04:00:00Z"));

        let error = add_request(
            "rack=r12".into(),
            Some("tomorrow".into()),
            Some("2026-12-07".into()),
            None,
            "x".into(),
            now,
        )
        .expect_err("bad --from");
        assert!(
            format!("{error:#}").starts_with("--from: 'tomorrow' is not a time"),
            "{error:#}"
        );
    }
}
