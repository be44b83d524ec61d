//! The JUnit XML rendering, for CI tools that read only JUnit: one `<testsuite>` for the
//! decision and one per rule; each rule's first test case carries the rule's verdict (failed
//! → `<failure>`, error → `<error>`, waived, waiting or not applicable → `<skipped>` with the
//! reason and the waiver), followed by one test case per evidence item. A failing evidence item
//! is a failure only where its rule failed; under a waiver it is skipped.
//!
//! The signature and the canonical content travel as `<property>` elements of the first suite.

use super::model::{Report, RuleView, WaiverView};
use super::text::put;
use tollgate_domain::report_signature::{self as signature, SignatureBlock};

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

/// Renders `report` as JUnit XML. Returns the text and the offset where the signature
/// properties go (just inside the first `<testsuite>`).
pub(crate) fn render(report: &Report) -> (String, usize) {
    let n_items: usize = report.rules.iter().map(|rule| rule.evidence.len()).sum();
    let mut out = String::with_capacity(4096 + n_items * 160);
    let count = |verdict: &str| report.rules.iter().filter(|r| r.verdict == verdict).count();
    let decision_failed = usize::from(report.decision.verdict == "failed");
    put!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\">\n",
        xml(&report.title),
        1 + report.rules.len() + n_items,
        count("failed") + decision_failed,
        count("error")
    );
    put!(
        out,
        "<testsuite name=\"decision\" tests=\"1\" failures=\"{decision_failed}\" errors=\"0\" skipped=\"0\">\n"
    );
    let split = out.len();
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
    testcase(&mut out, "tollgate.decision", &name, &decision);
    out.push_str("</testsuite>\n");
    for rule in &report.rules {
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
        let n_failures = usize::from(rule_failed)
            + if rule_failed {
                rule.n_evidence_not_ok
            } else {
                0
            };
        let n_skipped = usize::from(waived_message.is_some())
            + if waived_message.is_some() {
                rule.n_evidence_not_ok
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
        testcase(&mut out, &classname, "verdict", &outcome);
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
            testcase(
                &mut out,
                &classname,
                &name,
                &item_outcome(item.ok, &item.detail),
            );
        }
        out.push_str("</testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    (out, split)
}

/// Inserts the signature properties at `split`, inside XML comments marking the region.
pub(crate) fn signed(
    visible: String,
    split: usize,
    canonical: &str,
    block: &SignatureBlock,
) -> String {
    let mut out = String::with_capacity(visible.len() + canonical.len() * 11 / 10 + 8192);
    out.push_str(&visible[..split]);
    out.push_str(signature::REGION_BEGIN);
    out.push_str("<properties><property name=\"");
    out.push_str(signature::JUNIT_SIGNATURE_PROPERTY);
    out.push_str("\" value=\"");
    push_xml(
        &mut out,
        &serde_json::to_string(block).expect("a signature block serializes"),
    );
    out.push_str("\"/><property name=\"");
    out.push_str(signature::JUNIT_DATA_PROPERTY);
    out.push_str("\" value=\"");
    push_xml(&mut out, canonical);
    out.push_str("\"/></properties>");
    out.push_str(signature::REGION_END);
    out.push_str(&visible[split..]);
    out
}
