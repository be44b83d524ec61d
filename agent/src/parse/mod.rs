//! Parsers for what steps print.

pub mod dcgm;
pub mod junit;
pub mod measure;

use tollgate_domain::limits::{self, Limit};

/// A text of a test result as the controller keeps it: a NUL byte as U+FFFD
/// (`limits::printable`), cut at the end to its limit.
pub(crate) fn kept_text(limit: &Limit, text: String) -> String {
    limits::truncate(limit, &limits::printable(text), false)
}
