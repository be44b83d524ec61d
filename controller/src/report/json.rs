//! The JSON rendering: the view model serialized canonically (keys sorted), with its
//! `signature` object added last. The schema (`tollgate.report.v1`) is
//! documented in `docs/report-format.md`.
//!
//! It is written compactly: a fleet-sized report holds millions of numbers, and indentation
//! would triple its size. `jq .` pretty-prints it for reading.

use tollgate_domain::report_signature::SignatureBlock;

/// The canonical content with the `signature` object added as its last field.
pub(crate) fn signed(canonical: String, block: &SignatureBlock) -> Vec<u8> {
    let block = serde_json::to_string(block).expect("a signature block serializes");
    let mut out = canonical.into_bytes();
    // The canonical content is one JSON object; reopen it to add the signature.
    if out.last() == Some(&b'}') {
        out.pop();
        out.extend_from_slice(b",\"signature\":");
        out.extend_from_slice(block.as_bytes());
        out.push(b'}');
    }
    out.push(b'\n');
    out
}
