//! What a report format is to the writer: the [`Layout`] trait. Each format implements it in
//! its own file (`markdown.rs`, `json.rs`, `html.rs`, `junit.rs`); the writer (`stream.rs`)
//! knows only the trait, and `ReportFormat::layout` picks the implementation.

use super::model::{NodeRow, NodeView, Report};
use tollgate_domain::report_signature as signature;

/// One named part of a report's body.
pub(crate) type NamedSection = (String, String);

/// How one format lays a report out. The renderer calls `head` and `tail` once, after every
/// node; `node` once per node, in order. Each returns complete sections; their bytes, in
/// order, are the body of the file, and the signature region (the domain's fixed layout for
/// `format`) and `suffix` follow it.
pub(crate) trait Layout: Sync {
    /// Everything before the first node's detail (the summary first).
    fn head(&self, report: &Report, rows: &[NodeRow]) -> Vec<NamedSection>;
    /// The detail of the `idx`th node, appended to `out`.
    fn node(&self, report: &Report, idx: usize, node: &NodeView, out: &mut String);
    /// Everything after the last node's detail.
    fn tail(&self, report: &Report) -> Vec<NamedSection>;
    /// Which signature region layout the format uses, written after the body's sections
    /// except the suffix.
    fn format(&self) -> signature::Format;
    /// The end of the file after the signature region; signed as the section `end`.
    fn suffix(&self) -> &'static str;
}
