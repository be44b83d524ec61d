//! The one place the CLI reads the wall clock (for "last seen 4s ago"); everything else takes
//! `now` as an argument so its output can be tested.

/// The current time.
#[allow(clippy::disallowed_methods)] // This module is the allowed reader of the clock.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}
