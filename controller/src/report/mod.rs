//! Customer acceptance reports in four formats (Markdown, JSON, self-contained HTML, JUnit),
//! written as a stream: the controller reads the evidence a page of nodes at a time
//! ([`render_from_store`]); each node's detail is laid out as it arrives and the summary is
//! written first once every node has been seen ([`Renderer`]). Memory holds one page of nodes
//! and one small row per node, never the fleet.
//!
//! **Invariant:** a report of evidence from simulated GPUs says so, prominently, in every format.
//!
//! Every format lays out the same view model ([`model`]), so the four cannot disagree on a
//! fact; the JSON rendering is the model itself, documented field by field in
//! `docs/report-format.md`. Rendering is deterministic: the same head and nodes give the same
//! bytes. Each report is signed as it is written (`tollgate_domain::report_signature`).

mod html;
mod json;
mod junit;
pub mod keys;
mod layout;
mod markdown;
mod model;
/// The telemetry fields whose series the HTML report charts.
pub use model::CHARTED_FIELDS;
pub mod signing_key;
mod stream;
mod text;

#[cfg(test)]
mod tamper_tests;
#[cfg(test)]
mod tests;

pub use stream::{Renderer, SpoolKind, Written};

use layout::Layout;

use crate::store::{NodeEvidence, NodeJob, ReportRows, Store, StoreError};
use ed25519_dalek::SigningKey;
use std::collections::BTreeMap;
use std::io::Write;
use tokio::sync::{mpsc, oneshot};
use tollgate_domain::Timestamp;
use tollgate_domain::fleet::Node;
use tollgate_domain::gate::{Decision, Evidence, GatePolicy, RunEvidence, Waiver};
use tollgate_domain::plan::Plan;
use tollgate_domain::release::Release;
use tollgate_domain::{NodeId, ReleaseId};

/// Nodes read from the store per page: enough to keep the store busy, few enough that a page
/// of results is a few megabytes.
pub const PAGE_NODES: usize = 32;

/// Nodes per page when the format charts step series (HTML): a node's series of every step
/// and GPU can be a few megabytes parsed, and up to four pages are held at once (one read, two
/// queued, one rendered).
pub const PAGE_NODES_CHARTED: usize = 4;

/// What a report shows besides the evidence rows, known before the first node is read.
#[derive(Debug, Clone)]
pub struct ReportHead {
    /// The release.
    pub release: Release,
    /// The milestone reported on.
    pub milestone: String,
    /// The gate policy evaluated.
    pub policy: GatePolicy,
    /// The decision (evaluated when the report was made).
    pub decision: Decision,
    /// The release the evidence was read for (a warning names a difference).
    pub evidence_release: ReleaseId,
    /// The milestone the evidence was read for.
    pub evidence_milestone: String,
    /// The exact plan versions of the evidence's runs.
    pub plans: Vec<Plan>,
    /// When the report was generated.
    pub generated_at: Timestamp,
    /// The controller's version.
    pub controller_version: String,
    /// The waivers of the release at the milestone (in force, expired or revoked).
    pub waivers: Vec<Waiver>,
    /// The hash of the newest audit log entry when the report was made.
    pub audit_head: Option<String>,
    /// When set, the report covers only nodes with this label; the decision must already be
    /// evaluated over them alone.
    pub scope: Option<CustomerScope>,
}

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

impl ReportFormat {
    /// The media type of a rendered report.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Markdown => "text/markdown; charset=utf-8",
            Self::Json => "application/json",
            Self::Html => "text/html; charset=utf-8",
            Self::Junit => "application/xml",
        }
    }

    /// The layout that writes this format.
    fn layout(self) -> &'static dyn Layout {
        match self {
            Self::Markdown => &markdown::Markdown,
            Self::Json => &json::Json,
            Self::Html => &html::HtmlPage,
            Self::Junit => &junit::Junit,
        }
    }

    /// The file extension of a rendered report.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Markdown => "md",
            Self::Json => "json",
            Self::Html => "html",
            Self::Junit => "xml",
        }
    }
}

/// Renders `input` in `format`, signed with `key`, in memory. Deterministic: the same input
/// and key always give the same bytes, whatever the order of its runs, jobs and nodes.
pub fn render(input: &ReportInput, format: ReportFormat, key: &SigningKey) -> Rendered {
    let mut renderer = Renderer::new(
        head_of(input),
        format.layout(),
        Vec::new(),
        SpoolKind::Memory,
    )
    .expect("an in-memory spool cannot fail");
    let (runs, nodes) = split_evidence(&input.evidence, &input.nodes);
    renderer.runs(runs);
    for node in &nodes {
        renderer.node(node).expect("writing to memory cannot fail");
    }
    let written = renderer.finish(key).expect("writing to memory cannot fail");
    Rendered {
        content: written.out,
        media_type: format.media_type(),
        extension: format.extension(),
    }
}

/// The head of an in-memory input.
fn head_of(input: &ReportInput) -> ReportHead {
    ReportHead {
        release: input.release.clone(),
        milestone: input.milestone.clone(),
        policy: input.policy.clone(),
        decision: input.decision.clone(),
        evidence_release: input.evidence.release.id.clone(),
        evidence_milestone: input.evidence.milestone.clone(),
        plans: input.plans.clone(),
        generated_at: input.generated_at,
        controller_version: input.controller_version.clone(),
        waivers: input.waivers.clone(),
        audit_head: input.audit_head.clone(),
        scope: input.scope.clone(),
    }
}

/// The runs of `evidence` (without their jobs) and its nodes by name, each with its jobs and
/// its registration from `registered`; registered nodes without a job are included.
fn split_evidence(
    evidence: &Evidence,
    registered: &[Node],
) -> (Vec<RunEvidence>, Vec<NodeEvidence>) {
    let mut nodes: BTreeMap<&NodeId, NodeEvidence> = BTreeMap::new();
    for node in registered {
        nodes.insert(
            &node.id,
            NodeEvidence {
                node: node.id.clone(),
                registered: Some(node.clone()),
                jobs: Vec::new(),
            },
        );
    }
    let mut runs = Vec::with_capacity(evidence.runs.len());
    for run in &evidence.runs {
        for job in &run.jobs {
            nodes
                .entry(&job.node)
                .or_insert_with(|| NodeEvidence {
                    node: job.node.clone(),
                    registered: None,
                    jobs: Vec::new(),
                })
                .jobs
                .push(NodeJob {
                    run_id: run.run_id.clone(),
                    job: job.clone(),
                });
        }
        runs.push(RunEvidence {
            jobs: Vec::new(),
            ..run.clone()
        });
    }
    runs.sort_by(|a, b| (&a.plan_name, &a.run_id).cmp(&(&b.plan_name, &b.run_id)));
    (runs, nodes.into_values().collect())
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading the evidence failed; nothing was written.
    #[error("reading the report's evidence: {0}")]
    Store(#[from] StoreError),
    /// Writing the report failed.
    #[error("writing the report: {0}")]
    Write(#[from] std::io::Error),
    /// The rendering thread stopped.
    #[error("the report renderer stopped: {0}")]
    Renderer(String),
}

/// Reads the evidence of `head`'s release at its milestone from `store`, a page of nodes at a
/// time, and writes the report in `format` to `out`, signed with `key`. Layout runs on a
/// blocking thread while the next page is read. Nothing is written to `out` unless every read
/// succeeded, so a failed read never leaves a signed partial report.
pub async fn render_from_store<W: Write + Send + 'static>(
    store: &Store,
    head: ReportHead,
    format: ReportFormat,
    key: SigningKey,
    out: W,
) -> Result<Written<W>, ReportError> {
    let release = head.release.id.clone();
    let milestone = head.milestone.clone();
    let scope = head.scope.clone();
    let (sender, mut receiver) = mpsc::channel::<ReportRows>(2);
    // Only the HTML draws series, and only of the charted fields.
    let charted: &[tollgate_domain::telemetry::Field] = match format {
        ReportFormat::Html => &model::CHARTED_FIELDS,
        _ => &[],
    };
    let (read_ok, read_done) = oneshot::channel::<bool>();
    let mut renderer = Renderer::new(head, format.layout(), out, SpoolKind::TempFile)?;
    let render = tokio::task::spawn_blocking(move || {
        while let Some(rows) = receiver.blocking_recv() {
            match rows {
                ReportRows::Runs(runs) => renderer.runs(runs),
                ReportRows::Nodes(nodes) => {
                    for node in &nodes {
                        renderer.node(node)?;
                    }
                }
            }
        }
        if read_done.blocking_recv() != Ok(true) {
            return Ok(None);
        }
        renderer.finish(&key).map(Some)
    });
    let keep = move |labels: &tollgate_domain::fleet::Labels| {
        scope
            .as_ref()
            .is_none_or(|scope| labels.get(&scope.label) == Some(&scope.value))
    };
    let page_nodes = if charted.is_empty() {
        PAGE_NODES
    } else {
        PAGE_NODES_CHARTED
    };
    let read = store
        .read_report_evidence(&release, &milestone, keep, page_nodes, charted, sender)
        .await;
    let _ = read_ok.send(read.is_ok());
    let rendered = render
        .await
        .map_err(|error| ReportError::Renderer(error.to_string()))?;
    read?;
    match rendered? {
        Some(written) => Ok(written),
        None => Err(ReportError::Renderer(
            "the evidence reader stopped before the last node".to_owned(),
        )),
    }
}
