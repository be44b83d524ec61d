//! The JUnit XML rendering, for CI tools that read only JUnit: one `<testsuite>` for the
//! decision (with the summary as properties and text) and one per rule; each rule's first test case carries the rule's verdict (failed
//! → `<failure>`, error → `<error>`, waived, waiting or not applicable → `<skipped>` with the
//! reason and the waiver), followed by one test case per evidence item. A failing evidence item
//! is a failure only where its rule failed; under a waiver it is skipped.
//!
//! Then one suite per node: its inventory as properties and one test case per step attempt
//! (the final attempt of a step fails or errors with its outcome; retried attempts are
//! skipped), with the attempt's tests (failing first), measurements, telemetry and events as
//! `<system-out>`. The
//! signature block travels as a `<property>` of a last suite, `tollgate.signature`.

use super::layout::{Layout, NamedSection};
use super::model::{AttemptView, NodeRow, NodeView, Report, RuleView, WaiverView};
use super::text::{self, put};
use tollgate_domain::report_signature as signature;

/// Escapes text for an XML attribute or element; drops characters XML 1.0 cannot carry.
pub(crate) fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    push_xml(&mut out, text);
    out
}

fn push_xml(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
}

/// What one rule's verdict test case says.
enum Outcome {
    Pass,
    Failure(String),
    Error(String),
    Skipped(String),
}

fn rule_outcome(rule: &RuleView, waivers: &[&WaiverView]) -> Outcome {
    match rule.verdict {
        "passed" => Outcome::Pass,
        "failed" => Outcome::Failure(rule.reason.clone()),
        "error" => Outcome::Error(rule.reason.clone()),
        "waived" => {
            let mut message = format!("waived: {}", rule.reason);
            for waiver in waivers.iter().filter(|w| w.in_force) {
                message.push_str(&format!(
                    "; waiver {}: {} (ticket {}, approved by {}, expires {})",
                    waiver.id, waiver.reason, waiver.ticket, waiver.approver, waiver.expires_at
                ));
            }
            Outcome::Skipped(message)
        }
        other => Outcome::Skipped(format!("{other}: {}", rule.reason)),
    }
}

fn testcase(out: &mut String, classname: &str, name: &str, outcome: &Outcome) {
    out.push_str("  <testcase classname=\"");
    push_xml(out, classname);
    out.push_str("\" name=\"");
    push_xml(out, name);
    out.push('"');
    let (tag, message) = match outcome {
        Outcome::Pass => {
            out.push_str("/>\n");
            return;
        }
        Outcome::Failure(message) => ("failure", message),
        Outcome::Error(message) => ("error", message),
        Outcome::Skipped(message) => ("skipped", message),
    };
    out.push_str(">\n    <");
    out.push_str(tag);
    out.push_str(" message=\"");
    push_xml(out, message);
    out.push_str("\"/>\n  </testcase>\n");
}

/// The JUnit layout.
pub(crate) struct Junit;

fn property(out: &mut String, name: &str, value: &str) {
    out.push_str("<property name=\"");
    push_xml(out, name);
    out.push_str("\" value=\"");
    push_xml(out, value);
    out.push_str("\"/>");
}

fn system_out(out: &mut String, text: &str) {
    if text.is_empty() {
        return;
    }
    out.push_str("    <system-out>");
    push_xml(out, text);
    out.push_str("</system-out>\n");
}

/// The decision's suite: the verdict as its one test case, the summary as properties and text.
fn decision_suite(out: &mut String, report: &Report) {
    let decision_failed = usize::from(report.decision.verdict == "failed");
    let decision_error = usize::from(report.decision.verdict == "error");
    put!(
        out,
        "<testsuite name=\"decision\" tests=\"1\" failures=\"{decision_failed}\" errors=\"{decision_error}\" skipped=\"{}\">\n<properties>",
        usize::from(decision_failed + decision_error == 0 && report.decision.verdict != "passed")
    );
    decision_properties(out, report);
    out.push_str("</properties>\n");
    let decision = match report.decision.verdict {
        "passed" => Outcome::Pass,
        "failed" => Outcome::Failure(report.decision.summary.clone()),
        "error" => Outcome::Error(report.decision.summary.clone()),
        _ => Outcome::Skipped(format!(
            "{}: {}",
            report.decision.verdict, report.decision.summary
        )),
    };
    let name = format!(
        "{} at {} (decision {})",
        report.release.name, report.milestone, report.decision.digest
    );
    testcase(out, "tollgate.decision", &name, &decision);
    system_out(out, &decision_text(report));
    out.push_str("</testsuite>\n");
}

/// The properties of the decision suite: what was decided, on what, when and by which
/// controller.
fn decision_properties(out: &mut String, report: &Report) {
    let s = &report.summary;
    for (name, value) in [
        ("tollgate.release", report.release.name.clone()),
        ("tollgate.milestone", report.milestone.clone()),
        ("tollgate.verdict", report.decision.verdict.to_owned()),
        ("tollgate.decision_digest", report.decision.digest.clone()),
        (
            "tollgate.policy_version",
            report.decision.policy_version.clone(),
        ),
        (
            "tollgate.simulated",
            report.simulated.banner.unwrap_or("no").to_owned(),
        ),
        ("tollgate.nodes", s.n_nodes.to_string()),
        ("tollgate.simulated_nodes", s.n_simulated_nodes.to_string()),
        ("tollgate.gpus", s.n_gpus.to_string()),
        ("tollgate.jobs", s.n_jobs.to_string()),
        ("tollgate.step_attempts", s.n_attempts.to_string()),
        ("tollgate.gpu_events", s.n_events.to_string()),
        ("tollgate.generated_at", report.generated_at.clone()),
        (
            "tollgate.controller_version",
            report.controller_version.clone(),
        ),
    ] {
        property(out, name, &value);
    }
    if let Some(scope) = &report.scope {
        property(
            out,
            "tollgate.customer_scope",
            &format!("{}={}", scope.label, scope.value),
        );
    }
}

/// The decision suite's text for people: title, simulation banner, scope, verdict and counts,
/// warnings.
fn decision_text(report: &Report) -> String {
    let s = &report.summary;
    let mut text = format!("{}\n", report.title);
    if let Some(banner) = report.simulated.banner {
        put!(text, "{banner}.\n");
    }
    if let Some(scope) = &report.scope {
        put!(
            text,
            "Customer scope {}={}: {}\n",
            scope.label,
            scope.value,
            scope.note
        );
    }
    put!(
        text,
        "Verdict {}: {}\nNodes {} ({} simulated), GPUs {}, jobs {}, step attempts {}, GPU events {}.\n",
        text::label(report.decision.verdict),
        report.decision.summary,
        s.n_nodes,
        s.n_simulated_nodes,
        s.n_gpus,
        s.n_jobs,
        s.n_attempts,
        s.n_events
    );
    for warning in &report.warnings {
        put!(text, "Warning: {warning}\n");
    }
    text
}

fn rule_suite(out: &mut String, report: &Report, rule: &RuleView) {
    let waivers: Vec<&WaiverView> = report
        .waivers
        .items
        .iter()
        .filter(|w| w.rule_id == rule.rule_id)
        .collect();
    let outcome = rule_outcome(rule, &waivers);
    let rule_failed = matches!(outcome, Outcome::Failure(_));
    let waived_message = match &outcome {
        Outcome::Skipped(message) => Some(message.as_str()),
        _ => None,
    };
    let item_outcome = |ok: bool, detail: &str| {
        if ok {
            Outcome::Pass
        } else if rule_failed {
            Outcome::Failure(detail.to_owned())
        } else if let Some(message) = waived_message {
            Outcome::Skipped(format!("{detail} ({message})"))
        } else {
            Outcome::Pass
        }
    };
    let n_failures = if rule_failed {
        1 + rule.n_evidence_not_ok
    } else {
        0
    };
    let n_skipped = if waived_message.is_some() {
        1 + rule.n_evidence_not_ok
    } else {
        0
    };
    put!(
        out,
        "<testsuite name=\"rule {}\" tests=\"{}\" failures=\"{n_failures}\" errors=\"{}\" skipped=\"{n_skipped}\">\n",
        xml(&rule.rule_id),
        1 + rule.evidence.len(),
        usize::from(matches!(outcome, Outcome::Error(_)))
    );
    let classname = format!("tollgate.rule.{}", rule.rule_id);
    testcase(out, &classname, "verdict", &outcome);
    let mut name = String::new();
    for item in &rule.evidence {
        name.clear();
        name.push_str(&item.node);
        if let Some(step) = &item.step {
            name.push('/');
            name.push_str(step);
        }
        if let Some(attempt) = item.attempt {
            put!(name, " attempt {attempt}");
        }
        if let Some(gpu) = item.gpu_index {
            put!(name, " gpu {gpu}");
        }
        testcase(out, &classname, &name, &item_outcome(item.ok, &item.detail));
    }
    out.push_str("</testsuite>\n");
}

/// A step attempt's outcome as a test case: only a step's final attempt fails or errors.
fn attempt_outcome(attempt: &AttemptView) -> Outcome {
    let message = || {
        if attempt.message.is_empty() {
            attempt.outcome.to_owned()
        } else {
            format!("{}: {}", attempt.outcome, attempt.message)
        }
    };
    if !attempt.final_attempt {
        return Outcome::Skipped(format!("retried: {}", message()));
    }
    match attempt.outcome {
        "passed" => Outcome::Pass,
        "failed" => Outcome::Failure(message()),
        "error" | "lost" => Outcome::Error(message()),
        _ => Outcome::Skipped(message()),
    }
}

/// The attempt's tests (failing first), measurements, telemetry and events as lines of text.
fn attempt_text(attempt: &AttemptView) -> String {
    let mut text = String::new();
    for sub in &attempt.sub_results {
        put!(text, "test {} {}", sub.label(), sub.outcome);
        if !sub.message.is_empty() {
            put!(text, ": {}", sub.message);
        }
        text.push('\n');
    }
    if attempt.sub_results_not_listed > 0 {
        put!(
            text,
            "{} passing or skipped test(s) not listed\n",
            attempt.sub_results_not_listed
        );
    }
    for m in &attempt.measurements {
        put!(
            text,
            "measurement {} = {} {}",
            m.name,
            text::exact(m.value),
            m.unit.as_deref().unwrap_or("")
        );
        for c in &m.checks {
            put!(
                text,
                "; {} {} {}",
                c.condition,
                c.rule_id,
                if c.ok { "ok" } else { "NOT OK" }
            );
        }
        text.push('\n');
    }
    telemetry_text(&mut text, attempt);
    for e in &attempt.events {
        put!(
            text,
            "event {} GPU {} {} {}: {}\n",
            e.at,
            e.gpu_index,
            e.kind,
            e.code,
            e.detail
        );
    }
    if attempt.outcome != "passed" && !attempt.log_tail.is_empty() {
        put!(text, "log tail:\n{}", attempt.log_tail);
    }
    text
}

/// Each GPU's telemetry during the attempt, a line per field with its checks, and the
/// sampling rounds it missed.
fn telemetry_text(text: &mut String, attempt: &AttemptView) {
    for gpu in &attempt.telemetry {
        for f in &gpu.fields {
            put!(
                text,
                "GPU {} {} ({}): min {} mean {} max {} p99 {} last {}, {} samples",
                gpu.gpu_index,
                f.field,
                f.unit,
                text::Stat(f.min),
                text::Stat(f.mean),
                text::Stat(f.max),
                text::Stat(f.p99),
                text::Stat(f.last),
                f.samples
            );
            for c in &f.checks {
                put!(
                    text,
                    "; {} {} {}",
                    c.aggregate,
                    c.condition,
                    if c.ok { "ok" } else { "NOT OK" }
                );
            }
            text.push('\n');
        }
        if gpu.samples_missed > 0 {
            put!(
                text,
                "GPU {}: {} sampling rounds missed\n",
                gpu.gpu_index,
                gpu.samples_missed
            );
        }
    }
}

fn node_suite(out: &mut String, node: &NodeView) {
    let attempts: Vec<(&str, &AttemptView)> = node
        .jobs
        .iter()
        .flat_map(|job| job.attempts.iter().map(move |a| (job.job_id.as_str(), a)))
        .collect();
    let outcomes: Vec<Outcome> = attempts.iter().map(|(_, a)| attempt_outcome(a)).collect();
    let count = |test: fn(&Outcome) -> bool| outcomes.iter().filter(|o| test(o)).count();
    put!(
        out,
        "<testsuite name=\"node {}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\">\n<properties>",
        xml(&node.name),
        outcomes.len(),
        count(|o| matches!(o, Outcome::Failure(_))),
        count(|o| matches!(o, Outcome::Error(_))),
        count(|o| matches!(o, Outcome::Skipped(_)))
    );
    node_properties(out, node);
    out.push_str("</properties>\n");
    let classname = format!("tollgate.node.{}", node.name);
    for ((job_id, attempt), outcome) in attempts.iter().zip(&outcomes) {
        let name = format!(
            "{} attempt {} (job {job_id})",
            attempt.step_name, attempt.attempt
        );
        let text = attempt_text(attempt);
        if text.is_empty() {
            testcase(out, &classname, &name, outcome);
            continue;
        }
        // A test case with output: open it, add the outcome, then the text.
        out.push_str("  <testcase classname=\"");
        push_xml(out, &classname);
        out.push_str("\" name=\"");
        push_xml(out, &name);
        put!(
            out,
            "\" time=\"{:.3}\">\n",
            attempt.duration_ms as f64 / 1000.0
        );
        let (tag, message) = match outcome {
            Outcome::Pass => ("", ""),
            Outcome::Failure(message) => ("failure", message.as_str()),
            Outcome::Error(message) => ("error", message.as_str()),
            Outcome::Skipped(message) => ("skipped", message.as_str()),
        };
        if !tag.is_empty() {
            put!(out, "    <{tag} message=\"");
            push_xml(out, message);
            out.push_str("\"/>\n");
        }
        system_out(out, &text);
        out.push_str("  </testcase>\n");
    }
    out.push_str("</testsuite>\n");
}

/// The properties of a node's suite: GPU source, labels, inventory, GPUs, failing rules.
fn node_properties(out: &mut String, node: &NodeView) {
    let inventory = &node.inventory;
    property(out, "gpu_source", node.gpu_source);
    if node.simulated {
        property(out, "simulated", "SIMULATED GPUs");
    }
    let labels: Vec<String> = node
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    property(out, "labels", &labels.join(", "));
    property(out, "inventory", inventory.source);
    property(out, "driver_version", &inventory.driver_version);
    property(out, "cuda_driver_version", &inventory.cuda_driver_version);
    property(out, "nvml_version", &inventory.nvml_version);
    for note in &inventory.notes {
        property(out, "inventory_note", note);
    }
    for gpu in &inventory.gpus {
        property(
            out,
            &format!("gpu {}", gpu.index),
            &format!(
                "{}, uuid {}, serial {}, PCI {}, VBIOS {}",
                gpu.name,
                gpu.uuid,
                gpu.serial.as_deref().unwrap_or("-"),
                gpu.pci_bus_id,
                gpu.vbios_version
            ),
        );
    }
    if !node.failing_rules.is_empty() {
        property(out, "failing_rules", &node.failing_rules.join(", "));
    }
}

impl Layout for Junit {
    fn head(&self, report: &Report, _rows: &[NodeRow]) -> Vec<NamedSection> {
        let n_items: usize = report
            .rules
            .iter()
            .map(|rule| 1 + rule.evidence.len())
            .sum();
        let mut out = String::with_capacity(8192);
        put!(
            out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"{}\" tests=\"{}\">\n",
            xml(&report.title),
            1 + n_items + report.summary.n_attempts
        );
        decision_suite(&mut out, report);
        let mut sections = vec![("decision".to_owned(), out)];
        for rule in &report.rules {
            let mut out = String::with_capacity(256 + rule.evidence.len() * 160);
            rule_suite(&mut out, report, rule);
            sections.push((format!("rule {}", rule.rule_id), out));
        }
        sections
    }

    fn node(&self, _report: &Report, _idx: usize, node: &NodeView, out: &mut String) {
        node_suite(out, node);
    }

    fn tail(&self, _report: &Report) -> Vec<NamedSection> {
        Vec::new()
    }

    /// A last suite without tests whose property holds the signature block, inside XML
    /// comments marking the region.
    fn format(&self) -> signature::Format {
        signature::Format::Junit
    }

    fn suffix(&self) -> &'static str {
        "\n</testsuites>\n"
    }
}
