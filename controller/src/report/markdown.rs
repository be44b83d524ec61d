//! The Markdown rendering: GitHub-flavoured, with tables padded so the file also reads well
//! in a terminal. Every piece of untrusted text goes through [`md`] or [`md_code`].

use super::layout::{Layout, NamedSection};
use super::model::{AttemptView, NodeRow, NodeView, Report, RuleView, SHOWN_OK_EVIDENCE};
use super::text::{self, md, md_code, put};
use tollgate_domain::report_signature as signature;

/// Columns wider than this are not padded further, so one long message does not push every
/// row of a table off the screen.
const MAX_PADDED_WIDTH: usize = 40;

/// Simulated node names listed in the banner; the node table marks every one.
const BANNER_NODE_NAMES: usize = 10;

/// A table collected before writing, so its columns can be padded to a common width. The
/// cells are kept back to back in one string: a fleet report's tables hold millions of cells,
/// and one allocation each would cost more than writing them.
struct Table {
    head: &'static [&'static str],
    /// Every cell's text, in row order.
    text: String,
    /// Where each cell ends in `text`.
    ends: Vec<usize>,
    /// Each column's width so far, in characters, capped at [`MAX_PADDED_WIDTH`].
    widths: Vec<usize>,
}

/// Characters in `text`; its length when it is ASCII, as most cells are.
fn width_of(text: &str) -> usize {
    if text.is_ascii() {
        text.len()
    } else {
        text.chars().count()
    }
}

impl Table {
    fn new(head: &'static [&'static str]) -> Self {
        Self {
            head,
            text: String::new(),
            ends: Vec::new(),
            widths: head.iter().map(|h| width_of(h)).collect(),
        }
    }

    /// Ends the cell that started at `start`.
    fn close(&mut self, start: usize) {
        let column = self.ends.len() % self.head.len();
        let width = width_of(&self.text[start..]).min(MAX_PADDED_WIDTH);
        self.widths[column] = self.widths[column].max(width);
        self.ends.push(self.text.len());
    }

    /// Adds the next cell, written by `value`'s `Display`.
    fn cell(&mut self, value: impl std::fmt::Display) {
        let start = self.text.len();
        put!(self.text, "{value}");
        self.close(start);
    }

    /// Adds the next cell.
    fn cell_str(&mut self, value: &str) {
        let start = self.text.len();
        self.text.push_str(value);
        self.close(start);
    }

    fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.head.len(), "one cell per column");
        for cell in &cells {
            self.cell_str(cell);
        }
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn write(&self, out: &mut String) {
        debug_assert_eq!(self.ends.len() % self.head.len(), 0, "whole rows");
        let widths = &self.widths;
        let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
            out.push('|');
            for (cell, width) in cells.zip(widths) {
                out.push(' ');
                out.push_str(cell);
                let pad = width.saturating_sub(width_of(cell));
                out.extend(std::iter::repeat_n(' ', pad));
                out.push_str(" |");
            }
            out.push('\n');
        };
        line(out, &mut self.head.iter().copied());
        out.push('|');
        for width in widths {
            out.extend(std::iter::repeat_n('-', width + 2));
            out.push('|');
        }
        out.push('\n');
        let mut start = 0;
        for row in self.ends.chunks(self.head.len()) {
            let mut cells = row.iter().map(|&end| {
                let cell = &self.text[start..end];
                start = end;
                cell
            });
            line(out, &mut cells);
        }
        out.push('\n');
    }
}

fn opt(value: Option<&str>) -> String {
    value.map(md).unwrap_or_default()
}

fn opt_num<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// The Markdown layout.
pub(crate) struct Markdown;

impl Layout for Markdown {
    fn head(&self, report: &Report, rows: &[NodeRow]) -> Vec<NamedSection> {
        let mut sections = Vec::with_capacity(8 + report.rules.len());
        let mut out = String::with_capacity(16 * 1024);
        put!(out, "# {}\n\n", md(&report.title));
        if let Some(banner) = report.simulated.banner {
            let nodes = &report.simulated.nodes;
            let names: Vec<String> = nodes
                .iter()
                .take(BANNER_NODE_NAMES)
                .map(|n| md(n))
                .collect();
            put!(
                out,
                "> **⚠ {banner}.**\n>\n> Simulated nodes ({}): {}",
                nodes.len(),
                names.join(", ")
            );
            if nodes.len() > BANNER_NODE_NAMES {
                put!(
                    out,
                    " and {} more, each marked SIMULATED below",
                    nodes.len() - BANNER_NODE_NAMES
                );
            }
            out.push_str(".\n\n");
        }
        if let Some(scope) = &report.scope {
            put!(
                out,
                "> **Customer scope: {}.** {}\n\n",
                md_code(&format!("{}={}", scope.label, scope.value)),
                md(&scope.note)
            );
        }
        summary(&mut out, report);
        sections.push(("summary".to_owned(), out));
        let mut out = String::new();
        components(&mut out, report);
        sections.push(("release components".to_owned(), out));
        let mut out = String::new();
        decision(&mut out, report);
        sections.push(("decision".to_owned(), out));
        for rule in &report.rules {
            let mut out = String::new();
            rule_detail(&mut out, rule);
            sections.push((format!("rule {}", rule.rule_id), out));
        }
        let mut out = String::new();
        waivers(&mut out, report);
        sections.push(("waivers".to_owned(), out));
        let mut out = String::new();
        plans(&mut out, report);
        sections.push(("plans".to_owned(), out));
        let mut out = String::with_capacity(rows.len() * 256);
        nodes(&mut out, rows);
        sections.push(("nodes".to_owned(), out));
        sections
    }

    fn node(&self, _report: &Report, _idx: usize, node: &NodeView, out: &mut String) {
        node_detail(out, node);
    }

    fn tail(&self, report: &Report) -> Vec<NamedSection> {
        let mut out = String::new();
        events(&mut out, report);
        let mut end = String::new();
        footer(&mut end, report);
        vec![("events".to_owned(), out), ("footer".to_owned(), end)]
    }

    /// A short signature section, then the signature block in an HTML comment (invisible when
    /// rendered).
    fn format(&self) -> signature::Format {
        signature::Format::Markdown
    }

    fn suffix(&self) -> &'static str {
        "\n"
    }
}

fn summary(out: &mut String, report: &Report) {
    let s = &report.summary;
    put!(
        out,
        "## Summary\n\n**Verdict: {}** — {}\n\n",
        text::label(report.decision.verdict),
        md(&report.decision.summary)
    );
    let rules = &s.rules;
    let mut table = Table::new(&["Item", "Value"]);
    let mut add = |key: &str, value: String| table.row(vec![key.to_owned(), value]);
    add("Release", md(&report.release.name));
    add("Milestone", md(&report.milestone));
    add(
        "Rules",
        format!(
            "{} passed, {} failed, {} waived, {} waiting, {} error",
            rules.passed, rules.failed, rules.waived, rules.waiting, rules.error
        ),
    );
    let simulated = if s.n_simulated_nodes > 0 {
        format!(" ({} SIMULATED)", s.n_simulated_nodes)
    } else {
        String::new()
    };
    add(
        "Nodes",
        format!("{}{simulated}, {} GPUs", s.n_nodes, s.n_gpus),
    );
    add(
        "Jobs",
        format!("{} ({})", s.n_jobs, counts(s.job_states.iter())),
    );
    add(
        "Step attempts",
        format!("{} ({})", s.n_attempts, counts(s.attempt_outcomes.iter())),
    );
    add("GPU events", s.n_events.to_string());
    add("Decision digest", md_code(&report.decision.digest));
    add("Policy version", md_code(&report.decision.policy_version));
    add("Evaluated at", report.decision.evaluated_at.clone());
    add("Generated at", report.generated_at.clone());
    add("Controller version", md(&report.controller_version));
    add(
        "Audit log head",
        report
            .audit_head
            .as_deref()
            .map(md_code)
            .unwrap_or_else(|| "(none)".to_owned()),
    );
    table.write(out);
    if !report.warnings.is_empty() {
        out.push_str("**Warnings:**\n\n");
        for warning in &report.warnings {
            put!(out, "- {}\n", md(warning));
        }
        out.push('\n');
    }
}

fn counts<'a>(entries: impl Iterator<Item = (&'a &'static str, &'a usize)>) -> String {
    let parts: Vec<String> = entries.map(|(name, n)| format!("{n} {name}")).collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

fn components(out: &mut String, report: &Report) {
    let release = &report.release;
    out.push_str("## Release components\n\n");
    if !release.description.is_empty() {
        put!(out, "{}\n\n", md(&release.description));
    }
    put!(
        out,
        "Release {} was registered at {}; its current milestone is {}.\n\n",
        md(&release.name),
        release.created_at,
        md(&release.current_milestone)
    );
    let mut table = Table::new(&["Component", "Version", "Artifact", "sha256"]);
    for c in &release.components {
        table.row(vec![
            md(&c.name),
            md(&c.version),
            opt(c.artifact_uri.as_deref()),
            c.sha256.as_deref().map(md_code).unwrap_or_default(),
        ]);
    }
    table.write(out);
    if !release.promotions.is_empty() {
        let mut table = Table::new(&["From", "To", "At", "Decision digest"]);
        for p in &release.promotions {
            table.row(vec![
                md(&p.from_milestone),
                md(&p.to_milestone),
                p.at.clone(),
                md_code(&p.decision_digest),
            ]);
        }
        out.push_str("Promotions so far:\n\n");
        table.write(out);
    }
}

fn decision(out: &mut String, report: &Report) {
    let policy = &report.policy;
    put!(
        out,
        "## Gate decision\n\nGate policy for milestone {}, version {}.",
        md(&policy.milestone),
        md_code(&policy.version)
    );
    if !policy.description.is_empty() {
        put!(out, " {}", md(&policy.description));
    }
    out.push_str("\n\n");
    let mut table = Table::new(&["Verdict", "Rule", "Kind", "Reason"]);
    for rule in &report.rules {
        table.row(vec![
            format!("**{}**", text::label(rule.verdict)),
            md_code(&rule.rule_id),
            md(&rule.kind),
            md(&rule.reason),
        ]);
    }
    table.write(out);
}

fn rule_detail(out: &mut String, rule: &RuleView) {
    put!(
        out,
        "### {} {} ({})\n\n",
        text::label(rule.verdict),
        md_code(&rule.rule_id),
        md(&rule.kind)
    );
    if let Some(definition) = &rule.definition {
        put!(out, "- Requires: {}\n", md(definition));
    }
    put!(out, "- Reason: {}\n", md(&rule.reason));
    if !rule.failing_nodes.is_empty() {
        let names: Vec<String> = rule.failing_nodes.iter().map(|n| md(n)).collect();
        put!(out, "- Failing nodes: {}\n", names.join(", "));
    }
    put!(
        out,
        "- Evidence: {} item(s), {} not ok\n\n",
        rule.n_evidence_ok + rule.n_evidence_not_ok,
        rule.n_evidence_not_ok
    );
    if rule.evidence.is_empty() {
        return;
    }
    let mut table = Table::new(&[
        "OK", "Node", "Step", "Attempt", "GPU", "Value", "Limit", "Detail",
    ]);
    // The model orders failing items first; every one is shown, passing ones up to a limit.
    let n_shown = (rule.n_evidence_not_ok + SHOWN_OK_EVIDENCE).min(rule.evidence.len());
    for item in &rule.evidence[..n_shown] {
        table.row(vec![
            if item.ok { "ok" } else { "**NOT OK**" }.to_owned(),
            md(&item.node),
            opt(item.step.as_deref()),
            opt_num(item.attempt),
            opt_num(item.gpu_index),
            item.value.map(text::exact).unwrap_or_default(),
            opt(item.limit.as_deref()),
            md(&item.detail),
        ]);
    }
    table.write(out);
    if n_shown < rule.evidence.len() {
        put!(
            out,
            "{} more ok evidence item(s) are not shown here; the JSON report lists every item.\n\n",
            rule.evidence.len() - n_shown
        );
    }
}

fn waivers(out: &mut String, report: &Report) {
    out.push_str("## Waivers\n\n");
    put!(out, "{}\n\n", md(report.waivers.note));
    if !report.waivers.items.is_empty() {
        let mut table = Table::new(&[
            "Rule", "In force", "Reason", "Ticket", "Approver", "Expires", "Revoked", "Scope",
        ]);
        for waiver in &report.waivers.items {
            let scope: Vec<String> = waiver
                .nodes
                .iter()
                .map(|n| format!("node {n}"))
                .chain(waiver.skus.iter().map(|s| format!("sku {s}")))
                .chain(waiver.steps.iter().map(|s| format!("step {s}")))
                .collect();
            table.row(vec![
                md_code(&waiver.rule_id),
                if waiver.in_force { "yes" } else { "no" }.to_owned(),
                md(&waiver.reason),
                md(&waiver.ticket),
                md(&waiver.approver),
                waiver.expires_at.clone(),
                waiver.revoked_at.clone().unwrap_or_default(),
                md(&scope.join(", ")),
            ]);
        }
        table.write(out);
    }
    let waived: Vec<String> = report
        .rules
        .iter()
        .filter(|rule| rule.verdict == "waived")
        .map(|rule| md_code(&rule.rule_id))
        .collect();
    if !waived.is_empty() {
        put!(out, "Waived rules: {}\n\n", waived.join(", "));
    }
}

fn plans(out: &mut String, report: &Report) {
    out.push_str("## Plans\n\n");
    let mut table = Table::new(&["Run", "Plan", "Plan version", "Created at", "Jobs"]);
    for run in &report.runs {
        let version = if run.plan_available {
            md_code(&run.plan_version)
        } else {
            format!("{} (not in this report)", md_code(&run.plan_version))
        };
        table.row(vec![
            md(&run.run_id),
            md(&run.plan_name),
            version,
            run.created_at.clone(),
            run.n_jobs.to_string(),
        ]);
    }
    table.write(out);
    for plan in &report.plans {
        put!(
            out,
            "### Plan {} version {}\n\n",
            md(&plan.name),
            md_code(&plan.version)
        );
        if !plan.description.is_empty() {
            put!(out, "{}\n\n", md(&plan.description));
        }
        let selector: Vec<String> = plan
            .selector
            .iter()
            .map(|(k, v)| md(&format!("{k}={v}")))
            .collect();
        let selector = if selector.is_empty() {
            "every node".to_owned()
        } else {
            selector.join(", ")
        };
        let max_nodes = plan.max_nodes.map_or_else(
            || "every matching node".to_owned(),
            |n| format!("at most {n}"),
        );
        let runs: Vec<String> = plan.runs.iter().map(|r| md(r)).collect();
        put!(
            out,
            "Selector: {selector}; nodes: {max_nodes}; runs: {}.\n\n",
            if runs.is_empty() {
                "none".to_owned()
            } else {
                runs.join(", ")
            }
        );
        let mut table = Table::new(&["#", "Step", "Kind", "Timeout", "Retries", "Command"]);
        for step in &plan.steps {
            let mut command = match (&step.command, &step.components) {
                (Some(argv), _) => md_code(&text::shell_join(argv)),
                (None, Some(c)) if c.is_empty() => "every component".to_owned(),
                (None, Some(c)) => format!("components: {}", md(&c.join(", "))),
                (None, None) => String::new(),
            };
            if !step.env.is_empty() {
                let env: Vec<String> = step.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                put!(command, "; env: {}", md(&env.join(" ")));
            }
            if let Some(workdir) = &step.workdir {
                put!(command, "; workdir: {}", md(workdir));
            }
            table.row(vec![
                step.index.to_string(),
                md(&step.name),
                step.kind.to_owned(),
                step.timeout.clone(),
                step.retries.to_string(),
                command,
            ]);
        }
        table.write(out);
    }
}

fn nodes(out: &mut String, rows: &[NodeRow]) {
    out.push_str("## Nodes\n\n");
    let mut table = Table::new(&[
        "Node",
        "GPU source",
        "Labels",
        "Driver",
        "CUDA driver",
        "GPUs",
        "Inventory",
        "Jobs",
        "Fails rules",
    ]);
    for node in rows {
        let jobs: Vec<String> = node
            .jobs
            .iter()
            .map(|(plan_name, state)| format!("{} {state}", md(plan_name)))
            .collect();
        let rules: Vec<String> = node.failing_rules.iter().map(|r| md_code(r)).collect();
        table.row(vec![
            md(&node.name),
            source_label(node.simulated, node.gpu_source),
            labels(&node.labels),
            md(&node.driver_version),
            md(&node.cuda_driver_version),
            node.n_gpus.to_string(),
            node.inventory_source.to_owned(),
            jobs.join(", "),
            rules.join(", "),
        ]);
    }
    table.write(out);
}

fn source_label(simulated: bool, gpu_source: &str) -> String {
    if simulated {
        "**SIMULATED**".to_owned()
    } else {
        gpu_source.to_owned()
    }
}

fn labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| md(&format!("{k}={v}")))
        .collect();
    labels.join(", ")
}

fn node_detail(out: &mut String, node: &NodeView) {
    let mark = if node.simulated { " (SIMULATED)" } else { "" };
    put!(out, "### Node {}{mark}\n\n", md(&node.name));
    let inventory = &node.inventory;
    let mut facts = vec![format!(
        "GPU source: {}",
        source_label(node.simulated, node.gpu_source)
    )];
    if !node.labels.is_empty() {
        facts.push(format!("labels: {}", labels(&node.labels)));
    }
    if let (Some(state), Some(health)) = (node.node_state, node.health) {
        facts.push(format!("state now: {state}, health: {health}"));
    }
    facts.push(format!(
        "driver {}, CUDA driver {}, NVML {}",
        md(&inventory.driver_version),
        md(&inventory.cuda_driver_version),
        md(&inventory.nvml_version)
    ));
    if !inventory.hostname.is_empty() {
        facts.push(format!("hostname {}", md(&inventory.hostname)));
    }
    facts.push(
        match (&inventory.observed_step, inventory.observed_attempt) {
            (Some(step), Some(attempt)) => format!(
                "inventory observed at the start of {} attempt {attempt}",
                md(step)
            ),
            _ if inventory.source == "registered" => {
                "inventory **as registered** (not observed during a step)".to_owned()
            }
            _ => "**no inventory available**".to_owned(),
        },
    );
    for fact in facts {
        put!(out, "- {fact}\n");
    }
    for note in &inventory.notes {
        put!(out, "- Note: {}\n", md(note));
    }
    out.push('\n');
    if !inventory.components.is_empty() {
        let components: Vec<String> = inventory
            .components
            .iter()
            .map(|(k, v)| md(&format!("{k}={v}")))
            .collect();
        put!(out, "Components reported: {}\n\n", components.join(", "));
    }
    if !inventory.gpus.is_empty() {
        let mut table = Table::new(&["GPU", "Name", "UUID", "Serial", "PCI bus id", "VBIOS"]);
        for gpu in &inventory.gpus {
            table.row(vec![
                gpu.index.to_string(),
                md(&gpu.name),
                md(&gpu.uuid),
                opt(gpu.serial.as_deref()),
                md(&gpu.pci_bus_id),
                md(&gpu.vbios_version),
            ]);
        }
        table.write(out);
    }
    for job in &node.jobs {
        put!(
            out,
            "#### Job {} — plan {}, run {}: {}\n\n",
            md(&job.job_id),
            md(&job.plan_name),
            md(&job.run_id),
            text::label(job.state)
        );
        if job.attempts.is_empty() {
            out.push_str("No step results.\n\n");
            continue;
        }
        attempts(out, &job.attempts);
    }
}

/// Every attempt of a job, section by section in the order they appear.
fn attempts(out: &mut String, attempts: &[AttemptView]) {
    attempt_table(out, attempts);
    tests(out, attempts);
    measurements(out, attempts);
    telemetry(out, attempts);
    gpu_events(out, attempts);
    log_tails(out, attempts);
}

/// One row per attempt: step, attempt (marked when retried), outcome, times, message.
fn attempt_table(out: &mut String, attempts: &[AttemptView]) {
    let mut table = Table::new(&[
        "Step", "Attempt", "Outcome", "Started", "Duration", "Exit", "Message",
    ]);
    for a in attempts {
        let attempt = if a.final_attempt {
            a.attempt.to_string()
        } else {
            format!("{} (retried)", a.attempt)
        };
        table.row(vec![
            md(&a.step_name),
            attempt,
            text::label(a.outcome),
            a.started_at.clone(),
            text::duration_ms(a.duration_ms),
            opt_num(a.exit_code),
            md(&a.message),
        ]);
    }
    table.write(out);
}

/// Every measurement of every attempt, with the limits it was checked against.
fn measurements(out: &mut String, attempts: &[AttemptView]) {
    let mut table = Table::new(&["Step", "Attempt", "Measurement", "Value", "Unit", "Limit"]);
    for a in attempts {
        for m in &a.measurements {
            let limits: Vec<String> = m
                .checks
                .iter()
                .map(|c| {
                    let ok = if c.ok { "ok" } else { "**NOT OK**" };
                    format!("{} {} ({ok})", md(&c.condition), md_code(&c.rule_id))
                })
                .collect();
            table.row(vec![
                md(&a.step_name),
                a.attempt.to_string(),
                md(&m.name),
                text::exact(m.value),
                opt(m.unit.as_deref()),
                limits.join("; "),
            ]);
        }
    }
    if !table.is_empty() {
        out.push_str("Measurements:\n\n");
        table.write(out);
    }
}

/// Each GPU's telemetry during each attempt, then the sampling rounds missed.
fn telemetry(out: &mut String, attempts: &[AttemptView]) {
    let mut table = Table::new(&[
        "Step", "Attempt", "GPU", "Field", "Unit", "Min", "Mean", "Max", "p99", "Last", "Samples",
        "Limit",
    ]);
    let mut limits = String::new();
    for a in attempts {
        let step_name = md(&a.step_name);
        for gpu in &a.telemetry {
            for f in &gpu.fields {
                limits.clear();
                for (idx, c) in f.checks.iter().enumerate() {
                    let ok = if c.ok { "ok" } else { "**NOT OK**" };
                    let sep = if idx > 0 { "; " } else { "" };
                    put!(limits, "{sep}{} {} ({ok})", c.aggregate, md(&c.condition));
                }
                table.cell_str(&step_name);
                table.cell(a.attempt);
                table.cell(gpu.gpu_index);
                table.cell_str(f.field);
                table.cell_str(f.unit);
                table.cell(text::Stat(f.min));
                table.cell(text::Stat(f.mean));
                table.cell(text::Stat(f.max));
                table.cell(text::Stat(f.p99));
                table.cell(text::Stat(f.last));
                table.cell(f.samples);
                table.cell_str(&limits);
            }
        }
    }
    if !table.is_empty() {
        out.push_str("Telemetry during each attempt:\n\n");
        table.write(out);
    }
    let missed: Vec<String> = attempts
        .iter()
        .flat_map(|a| {
            a.telemetry
                .iter()
                .filter(|gpu| gpu.samples_missed > 0)
                .map(move |gpu| {
                    format!(
                        "{} attempt {} GPU {}: {}",
                        md(&a.step_name),
                        a.attempt,
                        gpu.gpu_index,
                        gpu.samples_missed
                    )
                })
        })
        .collect();
    if !missed.is_empty() {
        put!(out, "Sampling rounds missed: {}\n\n", missed.join("; "));
    }
}

/// GPU events (XIDs and the like) during the attempts.
fn gpu_events(out: &mut String, attempts: &[AttemptView]) {
    let mut table = Table::new(&["Time", "Step", "Attempt", "GPU", "Kind", "Code", "Detail"]);
    for a in attempts {
        for e in &a.events {
            table.row(vec![
                e.at.clone(),
                md(&a.step_name),
                a.attempt.to_string(),
                e.gpu_index.to_string(),
                e.kind.to_owned(),
                e.code.to_string(),
                md(&e.detail),
            ]);
        }
    }
    if !table.is_empty() {
        out.push_str("GPU events:\n\n");
        table.write(out);
    }
}

/// Log tails of attempts that did not pass: the ones a reader needs to see.
fn log_tails(out: &mut String, attempts: &[AttemptView]) {
    for a in attempts
        .iter()
        .filter(|a| a.outcome != "passed" && !a.log_tail.is_empty())
    {
        let log = text::printable(&a.log_tail);
        let fence = "`".repeat(longest_backtick_run(&log).max(2) + 1);
        put!(
            out,
            "Log tail of {} attempt {} ({}):\n\n{fence}text\n{}\n{fence}\n\n",
            md(&a.step_name),
            a.attempt,
            a.outcome,
            log.trim_end_matches('\n')
        );
    }
}

/// The attempts' tests, failing ones first, and how many passing or skipped ones each
/// attempt had beyond those listed.
fn tests(out: &mut String, attempts: &[AttemptView]) {
    let mut table = Table::new(&["Step", "Attempt", "Test", "Suite", "Outcome", "Message"]);
    let mut not_listed = Vec::new();
    for a in attempts {
        for sub in &a.sub_results {
            table.row(vec![
                md(&a.step_name),
                a.attempt.to_string(),
                md(&sub.label()),
                md(&sub.suite),
                if sub.failing {
                    format!("**{}**", sub.outcome)
                } else {
                    sub.outcome.to_owned()
                },
                md(&sub.message),
            ]);
        }
        if a.sub_results_not_listed > 0 {
            not_listed.push(format!(
                "{} attempt {}: {}",
                md(&a.step_name),
                a.attempt,
                a.sub_results_not_listed
            ));
        }
    }
    if !table.is_empty() {
        out.push_str("Tests:\n\n");
        table.write(out);
    }
    if !not_listed.is_empty() {
        put!(
            out,
            "Passing or skipped tests not listed: {}\n\n",
            not_listed.join("; ")
        );
    }
}

/// A fence one backtick longer than any run in the text cannot be closed by the text.
fn longest_backtick_run(text: &str) -> usize {
    let (mut longest, mut run) = (0, 0);
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest
}

fn events(out: &mut String, report: &Report) {
    out.push_str("## GPU events\n\n");
    if report.events.is_empty() {
        out.push_str("No XID, uncorrected ECC or GPU-lost event was seen during any step.\n\n");
        return;
    }
    let mut table = Table::new(&[
        "Time", "Node", "Step", "Attempt", "GPU", "Kind", "Code", "Detail",
    ]);
    for e in &report.events {
        table.row(vec![
            e.at.clone(),
            md(&e.node),
            md(&e.step_name),
            e.attempt.to_string(),
            e.gpu_index.to_string(),
            e.kind.to_owned(),
            e.code.to_string(),
            md(&e.detail),
        ]);
    }
    table.write(out);
}

fn footer(out: &mut String, report: &Report) {
    put!(
        out,
        "---\n\nDecision digest {} under policy version {}, evaluated at {}. Report generated at {} by tollgate-controller {}; schema {}.\n",
        md_code(&report.decision.digest),
        md_code(&report.decision.policy_version),
        report.decision.evaluated_at,
        report.generated_at,
        md(&report.controller_version),
        report.schema
    );
    if report.simulated.any {
        put!(
            out,
            "\n**{}.**\n",
            report.simulated.banner.unwrap_or_default()
        );
    }
}
