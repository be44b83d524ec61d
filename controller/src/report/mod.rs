//! Customer acceptance reports: one input, three renderings (Markdown, JSON, self-contained
//! HTML). Rendering is a pure function of [`ReportInput`]; the controller gathers the input.
//!
//! **Invariant:** a report of evidence from simulated GPUs says so, prominently, in every format.
//!
//! [`render`] first gathers the input into one view model ([`model`]); each format only lays
//! that model out, so the three renderings cannot disagree on a fact. The JSON rendering is the
//! model itself, documented field by field in `docs/report-format.md`.

mod html;
mod json;
mod junit;
mod markdown;
mod model;
pub mod signing_key;
mod text;

#[cfg(test)]
mod tests;

use ed25519_dalek::SigningKey;
use tollgate_domain::Timestamp;
use tollgate_domain::fleet::Node;
use tollgate_domain::gate::{Decision, Evidence, GatePolicy, Waiver};
use tollgate_domain::plan::Plan;
use tollgate_domain::release::Release;
use tollgate_domain::report_signature as signature;

/// Everything a report shows.
#[derive(Debug, Clone)]
pub struct ReportInput {
    /// The release.
    pub release: Release,
    /// The milestone reported on.
    pub milestone: String,
    /// The gate policy evaluated.
    pub policy: GatePolicy,
    /// The decision (evaluated when the report was made).
    pub decision: Decision,
    /// The evidence the decision used.
    pub evidence: Evidence,
    /// The exact plan versions of the evidence's runs.
    pub plans: Vec<Plan>,
    /// The nodes that ran jobs, with their registered inventory.
    pub nodes: Vec<Node>,
    /// When the report was generated.
    pub generated_at: Timestamp,
    /// The controller's version.
    pub controller_version: String,
    /// The waivers of the release at the milestone (in force, expired or revoked).
    pub waivers: Vec<Waiver>,
    /// The hash of the newest audit log entry when the report was made.
    pub audit_head: Option<String>,
    /// When set, the report covers only nodes with this label; `evidence` and `decision` must
    /// already be restricted to them (see [`scope_evidence`]).
    pub scope: Option<CustomerScope>,
}

/// A customer's part of the fleet: the nodes whose label `label` has the value `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerScope {
    /// The label's name, for example `customer`.
    pub label: String,
    /// Its value, for example `acme`.
    pub value: String,
}

impl std::str::FromStr for CustomerScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((label, value)) if !label.is_empty() && !value.is_empty() => Ok(Self {
                label: label.to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(format!("customer scope '{s}' is not LABEL=VALUE")),
        }
    }
}

/// Keeps only the jobs of nodes in `scope`, and the runs that still have jobs: the gate is then
/// evaluated over the customer's nodes alone, so the decision is about them.
pub fn scope_evidence(evidence: &mut Evidence, scope: &CustomerScope) {
    for run in &mut evidence.runs {
        run.jobs
            .retain(|job| job.labels.get(&scope.label) == Some(&scope.value));
    }
    evidence.runs.retain(|run| !run.jobs.is_empty());
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    /// GitHub-flavoured Markdown.
    Markdown,
    /// JSON, schema `tollgate.report.v1` (documented in `docs/report-format.md`).
    Json,
    /// One self-contained HTML page: inline CSS and SVG, no network needed.
    Html,
    /// JUnit XML: one test suite per rule, one test case per evidence item, for CI tools.
    Junit,
}

impl std::str::FromStr for ReportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "markdown" | "md" => Ok(Self::Markdown),
            "json" => Ok(Self::Json),
            "html" => Ok(Self::Html),
            "junit" => Ok(Self::Junit),
            other => Err(format!(
                "unknown report format '{other}' (expected markdown, json, html or junit)"
            )),
        }
    }
}

/// A rendered report.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Bytes.
    pub content: Vec<u8>,
    /// Media type.
    pub media_type: &'static str,
    /// File extension.
    pub extension: &'static str,
}

/// Renders `input` in `format`, signed with `key`. Pure: the same input and key always give the
/// same bytes.
///
/// The canonical content (the view model as JSON with sorted keys) is signed together with the
/// visible part of the file; see `tollgate_domain::report_signature` and
/// `docs/report-format.md` for what each format embeds.
pub fn render(input: &ReportInput, format: ReportFormat, key: &SigningKey) -> Rendered {
    let report = model::build(input);
    let content = signature::canonical_value(&report)
        .expect("the report model has only string map keys and infallible serializers");
    let canonical = signature::canonical_json(&content);
    match format {
        ReportFormat::Markdown => {
            let visible = markdown::render(&report);
            let block = signature::sign_canonical(key, &content, &canonical, Some(&visible));
            Rendered {
                content: markdown::signed(visible, &canonical, &block).into_bytes(),
                media_type: "text/markdown; charset=utf-8",
                extension: "md",
            }
        }
        ReportFormat::Json => {
            let block = signature::sign_canonical(key, &content, &canonical, None);
            Rendered {
                content: json::signed(canonical, &block),
                media_type: "application/json",
                extension: "json",
            }
        }
        ReportFormat::Html => {
            let visible = html::render(&report);
            let block = signature::sign_canonical(key, &content, &canonical, Some(&visible));
            Rendered {
                content: html::signed(visible, &canonical, &block).into_bytes(),
                media_type: "text/html; charset=utf-8",
                extension: "html",
            }
        }
        ReportFormat::Junit => {
            let (visible, split) = junit::render(&report);
            let block = signature::sign_canonical(key, &content, &canonical, Some(&visible));
            Rendered {
                content: junit::signed(visible, split, &canonical, &block).into_bytes(),
                media_type: "application/xml",
                extension: "xml",
            }
        }
    }
}
