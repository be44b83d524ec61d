//! Every error the controller returns to a caller becomes a `tonic::Status` here, and only here.
//!
//! - `InvalidArgument`: the request itself is wrong; the message names every bad field.
//! - `NotFound`, `AlreadyExists`: as the names say.
//! - `FailedPrecondition`: a valid request in the wrong state (promote on a failing gate, start
//!   a run with no ready node, a stale lease epoch).
//! - `Aborted`: a compare-and-set lost a race; retrying the call is the right reaction.
//! - `PermissionDenied`: authenticated, but not allowed (an agent acting as another node).
//! - `Unauthenticated`: no valid node token.
//! - `Unavailable`: the database cannot be reached or refuses writes right now (connection
//!   lost, disk full, read-only); retry later.
//! - `Internal`: a bug or corrupt data; logged at ERROR because an operator must look.

use crate::store::StoreError;
use tollgate_domain::job::TransitionError;
use tollgate_domain::scheduler::SelectError;
use tollgate_domain::spec::SpecErrors;
use tonic::Status;

/// Bad fields are collected by the wire crate's checks (and by handlers, the same way); they
/// become `InvalidArgument` here.
pub use tollgate_wire::{FieldErrors, InvalidFields, LISTED_PROBLEMS};

/// The longest `InvalidArgument` message sent: it travels in a response header, which clients
/// refuse past a few kilobytes (each problem already quotes only a prefix of its value).
const MESSAGE_BYTES: tollgate_domain::limits::Limit = tollgate_domain::limits::Limit {
    name: "error-message",
    max: 8 * 1024,
    unit: tollgate_domain::limits::Unit::Bytes,
    applies_to: "an error message",
};

/// `message` cut to [`MESSAGE_BYTES`].
fn bounded_message(message: &str) -> String {
    tollgate_domain::limits::truncate(&MESSAGE_BYTES, message, false)
}

/// A message with bad fields as `InvalidArgument`. The message lists every bad field for
/// people; the same fields travel as `google.rpc.BadRequest` details, so a client (the CLI's
/// `-o json`, grpcurl) can read them one by one without parsing the message. (A function, not
/// `From`: both types are foreign here.)
pub fn invalid_fields(error: InvalidFields) -> Status {
    use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
    // Details travel in a response header like the message: as many as the message lists.
    let violations: Vec<FieldViolation> = error
        .0
        .iter()
        .take(LISTED_PROBLEMS)
        .map(|e| FieldViolation::new(e.field.clone(), e.message.clone()))
        .collect();
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        bounded_message(&error.to_string()),
        ErrorDetails::with_bad_request(violations),
    )
}

/// One bad field as `InvalidArgument`, with the same `BadRequest` details as any other.
pub fn invalid_field(field: &str, message: impl Into<String>) -> Status {
    let mut errors = FieldErrors::new();
    errors.add(field, message);
    match errors.finish(()) {
        Err(invalid) => invalid_fields(invalid),
        Ok(()) => Status::internal("a recorded field error was lost"),
    }
}

/// The request when every field is within its limit, else `InvalidArgument` naming each one.
pub fn bounded<T: tollgate_wire::Bounded>(request: T) -> Result<T, Status> {
    tollgate_wire::bounded(request).map_err(invalid_fields)
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::AlreadyExists { .. } => Status::already_exists(error.to_string()),
            StoreError::NotFound { .. } => Status::not_found(error.to_string()),
            StoreError::Conflict { .. } => Status::aborted(format!("{error}; retry the call")),
            StoreError::Database(_) if error.is_unavailable() => {
                tracing::warn!(%error, "database unavailable");
                Status::unavailable(format!("{error}; retry later"))
            }
            StoreError::Corrupt { .. }
            | StoreError::UnsupportedUrl(_)
            | StoreError::Migrate(_)
            | StoreError::Database(_) => {
                tracing::error!(%error, "store failed");
                Status::internal(error.to_string())
            }
        }
    }
}

/// A plan or gate file that does not validate: the located error text, one per line (at most
/// [`LISTED_PROBLEMS`] of them, then how many more).
pub fn invalid_spec(errors: &SpecErrors) -> Status {
    let mut listed = SpecErrors(errors.0.iter().take(LISTED_PROBLEMS).cloned().collect());
    let more = errors.0.len().saturating_sub(LISTED_PROBLEMS);
    if more > 0
        && let Some(last) = listed.0.last_mut()
    {
        last.message
            .push_str(&format!("\n(and {more} more problems)"));
    }
    Status::invalid_argument(bounded_message(&listed.to_string()))
}

/// A run that cannot select any node.
pub fn no_nodes(error: &SelectError) -> Status {
    Status::failed_precondition(error.to_string())
}

/// A job event that does not apply in the job's state.
pub fn bad_transition(error: &TransitionError) -> Status {
    Status::failed_precondition(error.to_string())
}

/// `what` does not exist (for example "release r550").
pub fn not_found(what: impl std::fmt::Display) -> Status {
    Status::not_found(format!("{what} not found"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn store_errors_map_to_grpc_codes() {
        let cases = [
            (
                StoreError::AlreadyExists {
                    what: "release r1".into(),
                },
                Code::AlreadyExists,
            ),
            (
                StoreError::NotFound {
                    what: "job job-1".into(),
                },
                Code::NotFound,
            ),
            (
                StoreError::Conflict {
                    what: "job job-1".into(),
                    detail: "expected pending, found cancelled".into(),
                },
                Code::Aborted,
            ),
            (
                StoreError::Corrupt {
                    what: "node n1".into(),
                    detail: "bad json".into(),
                },
                Code::Internal,
            ),
            (
                StoreError::Database(sqlx::Error::PoolTimedOut),
                Code::Unavailable,
            ),
            (
                StoreError::Database(sqlx::Error::RowNotFound),
                Code::Internal,
            ),
        ];
        for (error, code) in cases {
            let text = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{text}");
            assert!(status.message().contains(&text), "{}", status.message());
        }
    }

    #[test]
    fn invalid_fields_name_every_field_in_one_message() {
        let mut errors = FieldErrors::new();
        errors.add("name", "is empty");
        errors.add("components[1].version", "is empty");
        let status = invalid_fields(errors.finish(()).unwrap_err());
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "invalid request: name: is empty; components[1].version: is empty"
        );
        assert_eq!(FieldErrors::new().finish(7), Ok(7));
        // The same fields, one by one, as google.rpc.BadRequest details.
        use tonic_types::StatusExt;
        let details = status.get_error_details();
        let violations: Vec<(&str, &str)> = details
            .bad_request()
            .expect("BadRequest details")
            .field_violations
            .iter()
            .map(|v| (v.field.as_str(), v.description.as_str()))
            .collect();
        assert_eq!(
            violations,
            [("name", "is empty"), ("components[1].version", "is empty")]
        );
    }

    #[test]
    fn one_bad_field_carries_bad_request_details_too() {
        let status = invalid_field("release", "is empty; give a release name");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "invalid request: release: is empty; give a release name"
        );
        use tonic_types::StatusExt;
        let details = status.get_error_details();
        let fields: Vec<&str> = details
            .bad_request()
            .expect("BadRequest details")
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["release"]);
    }

    #[test]
    fn a_request_with_many_bad_fields_gets_a_short_message() {
        let mut errors = FieldErrors::new();
        for idx in 0..100_000 {
            errors.add(format!("components[{idx}].version"), "is empty");
        }
        let status = invalid_fields(errors.finish(()).unwrap_err());
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("components[19].version: is empty; and 99980 more")
        );
        assert!(!status.message().contains("components[20]"));
        use tonic_types::StatusExt;
        let details = status.get_error_details();
        let listed = details.bad_request().expect("BadRequest details");
        assert_eq!(listed.field_violations.len(), LISTED_PROBLEMS);

        let mut source = String::from("name: p\nsteps:\n");
        for idx in 0..50 {
            source.push_str(&format!("  - {{name: s{idx}, kind: meteor}}\n"));
        }
        let spec = tollgate_domain::plan::parse_plan("p.yaml", &source).unwrap_err();
        let status = invalid_spec(&spec);
        assert_eq!(status.message().lines().count(), LISTED_PROBLEMS + 1);
        assert!(
            status.message().ends_with("(and 30 more problems)"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn domain_errors_keep_their_text() {
        let error = SelectError::NoMatchingNode {
            selector: "sku=gb200".into(),
        };
        let status = no_nodes(&error);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status
                .message()
                .contains("no node matches selector sku=gb200")
        );
        let spec = tollgate_domain::plan::parse_plan("p.yaml", "name: x\nsteps: []\n").unwrap_err();
        let status = invalid_spec(&spec);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with("p.yaml:2"),
            "{}",
            status.message()
        );
    }
}
