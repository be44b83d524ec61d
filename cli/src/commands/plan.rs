//! `tollgate plan`: validate plan files offline, apply them, show and list stored plans.

use crate::args::PlanCommand;
use crate::client::{Controller, answer};
use crate::output::{Format, Table, format_labels, format_time, print_json, short_hash};
use anyhow::Context as _;
use serde_json::json;
use std::fmt::Write as _;
use std::path::Path;
use tollgate_domain::plan::{Plan, StepKind, describe_timeout};
use tollgate_proto::v1 as pb;
use tollgate_wire::json;

/// Runs one `plan` command.
pub async fn run(controller: &Controller, command: PlanCommand) -> anyhow::Result<()> {
    match command {
        PlanCommand::Validate { file, output } => validate(&file, output.output),
        PlanCommand::Apply { file, output } => {
            let source = read(&file)?;
            let plan = apply(controller, &file.display().to_string(), source).await?;
            match output.output {
                Format::Json => print_json(&json::plan(&plan)),
                Format::Text => {
                    print!("{}", format_applied(&plan));
                    Ok(())
                }
            }
        }
        PlanCommand::Show { name, output } => {
            let (name, version) = match name.split_once('@') {
                Some((name, version)) => (name.to_owned(), version.to_owned()),
                None => (name, String::new()),
            };
            let plan = answer(
                controller
                    .plans()
                    .get_plan(pb::GetPlanRequest { name, version })
                    .await,
            )?;
            match output.output {
                Format::Json => print_json(&json::plan(&plan)),
                Format::Text => {
                    print!("{}", format_plan(&plan));
                    Ok(())
                }
            }
        }
        PlanCommand::List { output } => {
            let plans = answer(controller.plans().list_plans(pb::ListPlansRequest {}).await)?.plans;
            match output.output {
                Format::Json => {
                    print_json(&json::list("plans", plans.iter().map(json::plan).collect()))
                }
                Format::Text => {
                    print!("{}", format_plan_table(&plans));
                    Ok(())
                }
            }
        }
    }
}

fn read(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading plan file {}", file.display()))
}

/// Stores a plan; the controller validates it again and answers InvalidArgument with every
/// located problem, which is printed as is.
pub async fn apply(
    controller: &Controller,
    file_name: &str,
    source: String,
) -> anyhow::Result<pb::Plan> {
    Ok(answer(
        controller
            .plans()
            .apply_plan(pb::ApplyPlanRequest {
                source,
                file_name: file_name.to_owned(),
            })
            .await,
    )?)
}

/// `plan validate`: parses the file with the same code the controller uses. Problems go to
/// stderr, one located line each, and the exit code is 1.
pub fn validate(file: &Path, format: Format) -> anyhow::Result<()> {
    let source = read(file)?;
    let file_name = file.display().to_string();
    let parsed = tollgate_domain::plan::parse_plan(&file_name, &source);
    super::print_validated(
        &file_name,
        parsed,
        format,
        plan_summary_json,
        format_plan_summary,
    )
}

/// What a step does, on one line.
pub fn describe_step_kind(kind: &StepKind) -> String {
    match kind {
        StepKind::Exec { command, .. } => {
            // An inline script would wrap the summary; the plan file has the full text.
            let words: Vec<String> = command
                .iter()
                .map(|word| match word.lines().count() {
                    0 | 1 => word.clone(),
                    n_lines => format!("<{n_lines}-line script>"),
                })
                .collect();
            format!("exec: {}", words.join(" "))
        }
        StepKind::InventoryCheck { components } if components.is_empty() => {
            "inventory-check: every release component".to_owned()
        }
        StepKind::InventoryCheck { components } => {
            format!("inventory-check: {}", components.join(", "))
        }
        StepKind::DcgmDiag {
            level,
            tests,
            command,
        } => format!(
            "dcgm-diag level {level}: {}",
            StepKind::dcgm_command(*level, tests, command).join(" ")
        ),
        StepKind::Junit {
            command, report, ..
        } => format!("junit: {} (report {report})", command.join(" ")),
        StepKind::BurnIn {
            command,
            duration,
            limits,
            ..
        } => format!(
            "burn-in {}: {} ({} limit(s))",
            tollgate_domain::spec::format_duration(*duration),
            command.join(" "),
            limits.len()
        ),
        StepKind::Flash {
            component,
            version,
            reboot,
            ..
        } => format!(
            "flash: {component} to {version}{}",
            if *reboot { ", then reboot" } else { "" }
        ),
    }
}

/// The summary `plan validate` prints: name, short version, selector and steps.
pub fn format_plan_summary(file_name: &str, plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{file_name}: valid plan");
    let _ = writeln!(out, "name:     {}", plan.name);
    let _ = writeln!(out, "version:  {}", short_hash(&plan.version().0));
    let _ = writeln!(out, "selector: {}", plan.selector);
    let _ = writeln!(
        out,
        "nodes:    {}",
        plan.max_nodes.map_or_else(
            || "every matching node".to_owned(),
            |n| format!("at most {n}")
        )
    );
    let _ = writeln!(out, "steps:");
    for (idx, step) in plan.steps.iter().enumerate() {
        let retries = if step.retries > 0 {
            format!(", {} retries", step.retries)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {}. {} (timeout {}{retries}) {}",
            idx + 1,
            step.name,
            describe_timeout(step),
            describe_step_kind(&step.kind)
        );
    }
    out
}

/// The JSON form of `plan validate`'s summary.
pub fn plan_summary_json(plan: &Plan) -> serde_json::Value {
    json!({
        "name": plan.name,
        "description": plan.description,
        "version": plan.version().0,
        "selector": plan.selector.0,
        "max_nodes": plan.max_nodes,
        "steps": plan.steps.iter().map(|step| json!({
            "name": step.name,
            "kind": step.kind.name(),
            "timeout": describe_timeout(step),
            "retries": step.retries,
        })).collect::<Vec<_>>(),
    })
}

/// What `plan apply` prints.
pub fn format_applied(plan: &pb::Plan) -> String {
    format!(
        "plan {} applied: version {}\nsteps: {}\n",
        plan.name,
        short_hash(&plan.version),
        plan.steps.join(", ")
    )
}

/// A stored plan with its source.
pub fn format_plan(plan: &pb::Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "plan {}", plan.name);
    let _ = writeln!(out, "version:  {}", plan.version);
    let _ = writeln!(out, "applied:  {}", format_time(plan.created_at.as_ref()));
    let _ = writeln!(out, "selector: {}", format_labels(&plan.selector));
    let _ = writeln!(out, "steps:    {}", plan.steps.join(", "));
    let _ = writeln!(out, "source:");
    for line in plan.source.lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// Plans, one per line.
pub fn format_plan_table(plans: &[pb::Plan]) -> String {
    if plans.is_empty() {
        return "no plans\n".to_owned();
    }
    let mut table = Table::new(&["NAME", "VERSION", "STEPS", "SELECTOR", "APPLIED"]);
    for plan in plans {
        table.row(vec![
            plan.name.clone(),
            short_hash(&plan.version).to_owned(),
            plan.steps.join(","),
            format_labels(&plan.selector),
            format_time(plan.created_at.as_ref()),
        ]);
    }
    table.render("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_plan_summarizes() {
        let plan = tollgate_domain::plan::parse_plan(
            "plan-demo.yaml",
            include_str!("../../../examples/plan-demo.yaml"),
        )
        .expect("the demo plan is valid");
        let text = format_plan_summary("plan-demo.yaml", &plan);
        assert!(text.contains("name:     gpu-qual"), "{text}");
        assert!(text.contains("selector: sku=hgx-h100"), "{text}");
        assert!(text.contains("1. versions"), "{text}");
        assert!(text.contains("inventory-check"), "{text}");
        assert!(text.contains("2. stress (timeout 2m)"), "{text}");
        let value = plan_summary_json(&plan);
        assert_eq!(value["steps"][1]["kind"], "exec");
    }

    #[test]
    fn the_broken_plan_is_rejected_with_lines() {
        let errors = tollgate_domain::plan::parse_plan(
            "plan-broken.yaml",
            include_str!("../../../examples/plan-broken.yaml"),
        )
        .expect_err("the broken plan is broken");
        assert!(errors.0.len() >= 2, "{errors}");
        assert!(errors.0.iter().all(|error| error.line > 0), "{errors}");
    }
}
