//! The JSON rendering: the view model serialized, pretty-printed so a person can read and diff
//! it. The schema (`tollgate.report.v1`) is documented in `docs/report-format.md`.

use super::model::Report;

/// Renders `report` as JSON.
pub(crate) fn render(report: &Report) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(report)
        .expect("the report model has only string map keys and infallible serializers");
    out.push(b'\n');
    out
}
