//! The JSON rendering: the view model serialized. The schema (`tollgate.report.v1`) is
//! documented in `docs/report-format.md`.
//!
//! It is written compactly: a fleet-sized report holds millions of numbers, and indentation
//! would triple its size. `jq .` pretty-prints it for reading.

use super::model::Report;

/// Renders `report` as JSON.
pub(crate) fn render(report: &Report) -> Vec<u8> {
    let mut out = serde_json::to_vec(report)
        .expect("the report model has only string map keys and infallible serializers");
    out.push(b'\n');
    out
}
