//! The one module of the agent that reads the wall clock (clippy's `disallowed-methods` bans
//! `Utc::now` everywhere else), so every timestamp the agent reports has one origin.

use tollgate_domain::Timestamp;

/// The current wall-clock time, UTC.
#[allow(clippy::disallowed_methods)]
pub fn now() -> Timestamp {
    chrono::Utc::now()
}
