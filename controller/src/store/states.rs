//! SQL lists of states, generated once from the domain's enums, so that no statement keeps
//! its own copy of which job states are active or open.

use std::sync::LazyLock;
use tollgate_domain::job::JobState;
use tollgate_domain::names::IntoEnumIterator as _;

/// `('a', 'b')`: the storage names of `states`, as an SQL `IN` list. The names are the enum's
/// own `as_str()` constants (lowercase words), so quoting them needs no escaping.
pub(super) fn in_list(states: impl IntoIterator<Item = &'static str>) -> String {
    let quoted: Vec<String> = states
        .into_iter()
        .map(|state| format!("'{state}'"))
        .collect();
    format!("({})", quoted.join(", "))
}

/// The job states in which a job occupies its node ([`JobState::is_active`]).
pub(super) static ACTIVE_JOBS: LazyLock<String> = LazyLock::new(|| {
    in_list(
        JobState::iter()
            .filter(|state| state.is_active())
            .map(JobState::as_str),
    )
});

/// The job states that are not terminal ([`JobState::is_terminal`]).
pub(super) static OPEN_JOBS: LazyLock<String> = LazyLock::new(|| {
    in_list(
        JobState::iter()
            .filter(|state| !state.is_terminal())
            .map(JobState::as_str),
    )
});

/// A statement built once from a template: every `{active}` becomes [`ACTIVE_JOBS`] and
/// every `{open}` [`OPEN_JOBS`].
pub(super) fn sql(template: &str) -> String {
    template
        .replace("{active}", &ACTIVE_JOBS)
        .replace("{open}", &OPEN_JOBS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lists_follow_the_enum() {
        assert_eq!(ACTIVE_JOBS.as_str(), "('assigned', 'running')");
        assert_eq!(OPEN_JOBS.as_str(), "('pending', 'assigned', 'running')");
        assert_eq!(
            sql("WHERE state IN {active} OR state IN {open}"),
            "WHERE state IN ('assigned', 'running') OR state IN ('pending', 'assigned', 'running')"
        );
    }
}
