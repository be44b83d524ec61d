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
use tollgate_domain::release::FieldError;
use tollgate_domain::scheduler::SelectError;
use tollgate_domain::spec::SpecErrors;
use tonic::Status;

/// A request with bad fields; every one is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe_fields(.0))]
pub struct InvalidFields(pub Vec<FieldError>);

impl InvalidFields {
    /// Field paths, in the order found.
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.field.as_str()).collect()
    }
}

fn describe_fields(errors: &[FieldError]) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!("invalid request: {}", parts.join("; "))
}

/// Collects field errors while a request is checked, so all of them are reported at once.
#[derive(Debug, Default)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is wrong.
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records errors found elsewhere (a domain validation).
    pub fn extend(&mut self, errors: impl IntoIterator<Item = FieldError>) {
        self.0.extend(errors);
    }

    /// `value` if nothing was recorded, else every error.
    pub fn finish<T>(self, value: T) -> Result<T, InvalidFields> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(InvalidFields(self.0))
        }
    }
}

impl From<InvalidFields> for Status {
    /// The message lists every bad field for people; the same fields travel as
    /// `google.rpc.BadRequest` details, so a client (the CLI's `-o json`, grpcurl) can read
    /// them one by one without parsing the message.
    fn from(error: InvalidFields) -> Self {
        use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
        let violations: Vec<FieldViolation> = error
            .0
            .iter()
            .map(|e| FieldViolation::new(e.field.clone(), e.message.clone()))
            .collect();
        Status::with_error_details(
            tonic::Code::InvalidArgument,
            error.to_string(),
            ErrorDetails::with_bad_request(violations),
        )
    }
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

/// A plan or gate file that does not validate: the full located error text, one per line.
pub fn invalid_spec(errors: &SpecErrors) -> Status {
    Status::invalid_argument(errors.to_string())
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
        let status = Status::from(errors.finish(()).unwrap_err());
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
