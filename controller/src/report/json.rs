//! The JSON rendering: the view model as one compact object, schema `tollgate.report.v1`
//! (documented in `docs/report-format.md`), written a section at a time with the `signature`
//! object as its last field.
//!
//! It is written compactly: a fleet-sized report holds millions of numbers, and indentation
//! would triple its size. `jq .` pretty-prints it for reading (the pretty copy no longer
//! verifies: the signature covers the exact bytes).

use super::layout::{Layout, NamedSection};
use super::model::{NodeRow, NodeView, Report};
use serde::Serialize;
use tollgate_domain::report_signature as signature;

/// The JSON layout.
pub(crate) struct Json;

/// Appends `"key":value` (after a comma unless `first`).
fn field(out: &mut String, first: bool, key: &str, value: &impl Serialize) {
    if !first {
        out.push(',');
    }
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
    value_to(out, value);
}

fn value_to(out: &mut String, value: &impl Serialize) {
    // The views hold only strings, numbers, options, vectors and string-keyed maps.
    let text = serde_json::to_string(value).expect("the report's views always serialize");
    out.push_str(&text);
}

impl Layout for Json {
    fn head(&self, report: &Report, _rows: &[NodeRow]) -> Vec<NamedSection> {
        let mut sections = Vec::with_capacity(8 + report.rules.len());
        let mut out = String::from("{");
        field(&mut out, true, "schema", &report.schema);
        field(&mut out, false, "title", &report.title);
        field(&mut out, false, "release", &report.release);
        field(&mut out, false, "milestone", &report.milestone);
        field(&mut out, false, "simulated", &report.simulated);
        field(&mut out, false, "summary", &report.summary);
        field(&mut out, false, "decision", &report.decision);
        field(&mut out, false, "policy", &report.policy);
        out.push_str(",\"rules\":[");
        sections.push(("summary".to_owned(), out));
        for (idx, rule) in report.rules.iter().enumerate() {
            let mut out = String::new();
            if idx > 0 {
                out.push(',');
            }
            value_to(&mut out, rule);
            sections.push((format!("rule {}", rule.rule_id), out));
        }
        let mut out = String::from("]");
        field(&mut out, false, "waivers", &report.waivers);
        sections.push(("waivers".to_owned(), out));
        let mut out = String::new();
        field(&mut out, false, "plans", &report.plans);
        field(&mut out, false, "runs", &report.runs);
        sections.push(("plans".to_owned(), out));
        sections.push(("nodes".to_owned(), ",\"nodes\":[".to_owned()));
        sections
    }

    fn node(&self, _report: &Report, idx: usize, node: &NodeView, out: &mut String) {
        if idx > 0 {
            out.push(',');
        }
        value_to(out, node);
    }

    fn tail(&self, report: &Report) -> Vec<NamedSection> {
        let mut events = String::from("]");
        field(&mut events, false, "events", &report.events);
        let mut out = String::new();
        field(&mut out, false, "warnings", &report.warnings);
        field(&mut out, false, "generated_at", &report.generated_at);
        field(
            &mut out,
            false,
            "controller_version",
            &report.controller_version,
        );
        field(&mut out, false, "audit_head", &report.audit_head);
        field(&mut out, false, "scope", &report.scope);
        vec![("events".to_owned(), events), ("footer".to_owned(), out)]
    }

    /// The `signature` field, last.
    fn format(&self) -> signature::Format {
        signature::Format::Json
    }

    fn suffix(&self) -> &'static str {
        "}\n"
    }
}
