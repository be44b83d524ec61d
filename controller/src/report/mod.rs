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
mod markdown;
mod model;
mod text;

#[cfg(test)]
mod tests;

use tollgate_domain::Timestamp;
use tollgate_domain::fleet::Node;
use tollgate_domain::gate::{Decision, Evidence, GatePolicy};
use tollgate_domain::plan::Plan;
use tollgate_domain::release::Release;

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
}

impl std::str::FromStr for ReportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "markdown" | "md" => Ok(Self::Markdown),
            "json" => Ok(Self::Json),
            "html" => Ok(Self::Html),
            other => Err(format!(
                "unknown report format '{other}' (expected markdown, json or html)"
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

/// Renders `input` in `format`. Pure: the same input always gives the same bytes.
pub fn render(input: &ReportInput, format: ReportFormat) -> Rendered {
    let report = model::build(input);
    match format {
        ReportFormat::Markdown => Rendered {
            content: markdown::render(&report).into_bytes(),
            media_type: "text/markdown; charset=utf-8",
            extension: "md",
        },
        ReportFormat::Json => Rendered {
            content: json::render(&report),
            media_type: "application/json",
            extension: "json",
        },
        ReportFormat::Html => Rendered {
            content: html::render(&report).into_bytes(),
            media_type: "text/html; charset=utf-8",
            extension: "html",
        },
    }
}
