//! Every error the controller returns to a caller becomes a `tonic::Status` here, and only here.
//!
//! - `InvalidArgument`: the request itself is wrong; the message names every bad field.
//! - `NotFound`, `AlreadyExists`: as the names say.
//! - `FailedPrecondition`: a valid request in the wrong state (promote on a failing gate, start
//!   a run with no ready node, a stale lease epoch).
//! - `Aborted`: a compare-and-set lost a race; retrying the call is the right reaction.
//! - `PermissionDenied`: authenticated, but not allowed (an agent acting as another node).
//! - `Unauthenticated`: no valid node token.
//! - `ResourceExhausted`: a per-identity limit (open streams, call rate; the message says the
//!   limit and what to do, a rate refusal carries `RetryInfo`) or a request larger than its
//!   service accepts (see `grpc/limits.rs`).
//! - `Unavailable`: the database cannot be reached or refuses writes right now (connection
//!   lost, disk full, read-only); retry later.
//! - `Internal`: a bug or corrupt data; logged at ERROR because an operator must look.

use super::agent::AgentRefusal;
use super::auth::AuthError;
use super::node::NodeChangeError;
use crate::report::ReportError;
use crate::store::StoreError;
use tollgate_domain::job::ResultRefusal;
use tollgate_domain::release::ReleaseRefusal;
use tollgate_domain::run::CancelRefusal;
use tollgate_domain::scheduler::SelectError;
use tollgate_domain::spec::SpecErrors;
use tollgate_domain::waiver::WaiverRefusal;
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

/// `InvalidArgument` naming every `(field, problem)` a domain check found.
pub fn invalid_field_list(problems: Vec<(&'static str, String)>) -> Status {
    let mut errors = FieldErrors::new();
    for (field, message) in problems {
        errors.add(field, message);
    }
    match errors.finish(()) {
        Err(invalid) => invalid_fields(invalid),
        Ok(()) => Status::internal("a refused request named no field"),
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
            // The store alone tells a database outage from a failure: its driver's errors stay
            // behind it.
            _ if error.is_unavailable() => {
                tracing::warn!(%error, "database unavailable");
                Status::unavailable(format!("{error}; retry later"))
            }
            _ => {
                tracing::error!(%error, "store failed");
                Status::internal(error.to_string())
            }
        }
    }
}

impl From<NodeChangeError> for Status {
    fn from(error: NodeChangeError) -> Self {
        match error {
            NodeChangeError::Refused { .. } => Status::failed_precondition(error.to_string()),
            NodeChangeError::Claimed { .. } => Status::permission_denied(error.to_string()),
            NodeChangeError::Store(error) => error.into(),
        }
    }
}

/// A release change the release lifecycle refused. A target milestone that is not on the
/// track is a bad field; every other refusal is a valid request in the wrong state.
pub fn release_refused(refusal: ReleaseRefusal) -> Status {
    {
        match refusal {
            ReleaseRefusal::UnknownMilestone { .. } => {
                Status::invalid_argument(bounded_message(&refusal.to_string()))
            }
            ReleaseRefusal::Halted { .. }
            | ReleaseRefusal::AlreadyReleased { .. }
            | ReleaseRefusal::OffTrack { .. }
            | ReleaseRefusal::NoGate { .. }
            | ReleaseRefusal::StaleDecision { .. }
            | ReleaseRefusal::NotPassed { .. }
            | ReleaseRefusal::NotEarlier { .. }
            | ReleaseRefusal::AlreadyHalted { .. }
            | ReleaseRefusal::NotHalted { .. }
            | ReleaseRefusal::Moved { .. } => {
                Status::failed_precondition(bounded_message(&refusal.to_string()))
            }
        }
    }
}

/// A waiver grant or revocation refused. Bad fields and a rule that is not in the gate are the
/// request's fault; the rest are a valid request in the wrong state.
pub fn waiver_refused(refusal: WaiverRefusal) -> Status {
    {
        match refusal {
            WaiverRefusal::Fields(errors) => invalid_fields(InvalidFields(errors)),
            WaiverRefusal::UnknownRule { .. } => {
                Status::invalid_argument(bounded_message(&refusal.to_string()))
            }
            WaiverRefusal::NoGate { .. }
            | WaiverRefusal::AlreadyRevoked { .. }
            | WaiverRefusal::Expired { .. } => {
                Status::failed_precondition(bounded_message(&refusal.to_string()))
            }
        }
    }
}

impl From<crate::limits::LimitError> for Status {
    fn from(error: crate::limits::LimitError) -> Self {
        use tonic_types::{ErrorDetails, StatusExt};
        match error.retry_after() {
            Some(wait) => Status::with_error_details(
                tonic::Code::ResourceExhausted,
                error.to_string(),
                ErrorDetails::with_retry_info(Some(wait)),
            ),
            None => Status::resource_exhausted(error.to_string()),
        }
    }
}

/// A request over its service's size limit (tonic refused it before decoding it, as
/// `OUT_OF_RANGE`): `ResourceExhausted`, saying the limit and what to do.
pub fn request_too_large(found: Option<&str>, limit: &str) -> Status {
    let size = found.map_or_else(String::new, |found| format!(" of {found} bytes"));
    Status::resource_exhausted(format!(
        "the request{size} is larger than this service accepts ({limit} bytes; see \"Limits\" in \
         the README): send less in one call, or shorten its largest field"
    ))
}

/// A decision larger than one answer may carry: `ResourceExhausted`, naming the streamed RPC
/// that carries any decision.
pub fn decision_too_large(
    decision: &tollgate_proto::v1::Decision,
    n_bytes: usize,
    limit: usize,
) -> Status {
    Status::resource_exhausted(format!(
        "the decision of release {} at {} is {:.1} MiB, more than the {} MiB one answer may \
         carry; read it with GateService.StreamDecision, as `tollgate gate show` and `gate \
         check` do",
        decision.release,
        decision.milestone,
        n_bytes as f64 / (1024.0 * 1024.0),
        limit / (1024 * 1024)
    ))
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Store(error) => Status::from(error),
            AuthError::Forbidden(forbidden) => Status::permission_denied(forbidden.to_string()),
            refused => Status::unauthenticated(refused.to_string()),
        }
    }
}

impl From<ReportError> for Status {
    /// A report that could not be read is the store's failure; one that could not be written
    /// (the spool, the renderer thread) is the controller's own. Not logged here: the handler
    /// logs it with the release, and a client that stopped reading is no operator's concern.
    fn from(error: ReportError) -> Self {
        match error {
            ReportError::Store(error) => Status::from(error),
            other => Status::internal(other.to_string()),
        }
    }
}

impl From<crate::report::keys::SignerError> for Status {
    /// A controller whose key a rotation retired signs nothing until its data directory holds
    /// the new key: a valid request this controller cannot serve in its state. (Logged at
    /// ERROR by the signer: an operator must copy the key.)
    fn from(error: crate::report::keys::SignerError) -> Self {
        match error {
            crate::report::keys::SignerError::Store(error) => Status::from(error),
            refused @ crate::report::keys::SignerError::NotCurrent(_) => {
                Status::failed_precondition(refused.to_string())
            }
        }
    }
}

/// The deployment's report signing keys were edited so that none is current (a controller
/// records one at start, and a rotation replaces it in the same transaction).
pub fn no_current_report_key() -> Status {
    tracing::error!("the report_keys table holds no current key");
    Status::internal(
        "the deployment has no current report signing key: its report_keys table was edited",
    )
}

/// A release with no milestone left on the track was asked to be qualified at its current one.
pub fn no_milestone_left(release: &tollgate_domain::release::Release) -> Status {
    Status::failed_precondition(format!(
        "release {} is {}: it has no milestone left to qualify for; name one explicitly",
        release.id, release.milestone
    ))
}

/// A milestone that no gate guards, asked to be evaluated, reported on or promoted past.
pub fn no_gate(milestone: &str) -> Status {
    release_refused(ReleaseRefusal::NoGate {
        milestone: milestone.to_owned(),
    })
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

/// A run that cannot select any node; `n_disconnected` nodes were taken as unreachable
/// because no agent of theirs is connected to this controller.
pub fn no_nodes(error: &SelectError, n_disconnected: usize) -> Status {
    if n_disconnected > 0 {
        Status::failed_precondition(format!(
            "{error} (a node shown unreachable here has no agent connected to this controller)"
        ))
    } else {
        Status::failed_precondition(error.to_string())
    }
}

/// A refused result. Another node's job: `PermissionDenied`; a result that does not fit the
/// plan: `InvalidArgument` naming the field; one the job can no longer take (stale epoch, the
/// job ended): `FailedPrecondition`, which tells the agent to stop sending it.
pub fn refused_result(refusal: ResultRefusal) -> Status {
    let message = refusal.to_string();
    match refusal {
        ResultRefusal::UnknownJob { .. } => Status::not_found(message),
        ResultRefusal::NotYourJob { .. } => Status::permission_denied(message),
        ResultRefusal::StaleEpoch { .. }
        | ResultRefusal::JobEnded { .. }
        | ResultRefusal::Transition(_) => Status::failed_precondition(message),
        ResultRefusal::UnknownStep { .. } | ResultRefusal::StepNameMismatch { .. } => {
            Status::invalid_argument(message)
        }
        ResultRefusal::DoesNotFitStep(fields) => invalid_fields(InvalidFields(fields)),
    }
}

/// A refused cancel. A run that ended cannot be cancelled: `FailedPrecondition`. A job that
/// could not be cancelled would be a bug in the job state machine: `Internal`, logged.
pub fn refused_cancel(refusal: CancelRefusal) -> Status {
    match &refusal {
        CancelRefusal::Run(_) => Status::failed_precondition(refusal.to_string()),
        CancelRefusal::Job(_) => {
            tracing::error!(%refusal, "a job of the run could not be cancelled");
            Status::internal(refusal.to_string())
        }
    }
}

impl From<AgentRefusal> for Status {
    fn from(refusal: AgentRefusal) -> Self {
        match refusal {
            AgentRefusal::EnrolledWithAnotherToken { .. } => {
                Status::permission_denied(refusal.to_string())
            }
            AgentRefusal::AnotherNode { .. } => Status::permission_denied(refusal.to_string()),
            AgentRefusal::ShuttingDown => Status::unavailable(refusal.to_string()),
        }
    }
}

impl From<super::enroll::EnrollError> for Status {
    fn from(error: super::enroll::EnrollError) -> Self {
        use super::enroll::EnrollError;
        use tollgate_domain::enrollment::EnrollRefusal;
        let message = error.to_string();
        match error {
            EnrollError::Refused(EnrollRefusal::OtherNode { .. }) => {
                Status::permission_denied(message)
            }
            EnrollError::Refused(_) => Status::unauthenticated(message),
            EnrollError::NoCa => Status::failed_precondition(message),
            EnrollError::BadRequest(_) => Status::invalid_argument(message),
            EnrollError::Store(store) => store.into(),
        }
    }
}

/// An issue event the state machine refuses, for issue `id`: a missing reason or release is
/// `InvalidArgument` naming the field; a transition the state does not allow is
/// `FailedPrecondition` saying what to do instead.
pub fn issue_refused(id: i64, refusal: tollgate_domain::issue::IssueRefusal) -> Status {
    use tollgate_domain::issue::IssueRefusal;
    match refusal {
        IssueRefusal::NoReason => invalid_field("reason", refusal.to_string()),
        IssueRefusal::NoRelease => invalid_field("release", refusal.to_string()),
        IssueRefusal::Transition { state, event } => {
            let hint = match (state, event) {
                ("closed" | "wont-fix", _) => {
                    format!("reopen it first with `tollgate issue reopen {id}`")
                }
                (_, "reopen") => "only a closed or won't-fix issue can be reopened".to_owned(),
                _ => "see `tollgate issue show` for its state".to_owned(),
            };
            Status::failed_precondition(bounded_message(&format!("issue #{id}: {refusal}; {hint}")))
        }
    }
}

/// An action item that cannot be marked done: the note has none, or it is done already.
pub fn done_refused(refusal: tollgate_domain::note::DoneRefusal) -> Status {
    Status::failed_precondition(refusal.to_string())
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
    fn refused_tokens_are_unauthenticated_and_unreadable_ones_the_stores_answer() {
        let status = Status::from(AuthError::UnknownApiToken);
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().starts_with("unknown API token"));
        let status = Status::from(AuthError::MissingNodeToken);
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains("as issued by Register"));
        let outage = AuthError::Store(StoreError::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(Status::from(outage).code(), Code::Unavailable);
    }

    #[test]
    fn report_errors_are_the_stores_or_internal() {
        let missing = ReportError::Store(StoreError::NotFound {
            what: "release r1".into(),
        });
        assert_eq!(Status::from(missing).code(), Code::NotFound);
        let stopped = ReportError::Renderer("the evidence reader stopped".into());
        let status = Status::from(stopped);
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("the evidence reader stopped"));
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
    fn each_result_refusal_has_its_code() {
        use tollgate_domain::job::JobState;
        use tollgate_domain::release::FieldError;
        let job = tollgate_domain::JobId::from("job-1");
        let cases = [
            (
                ResultRefusal::UnknownJob { job: job.clone() },
                Code::NotFound,
            ),
            (
                ResultRefusal::NotYourJob {
                    node: "n2".into(),
                    job: job.clone(),
                    owner: "n1".into(),
                },
                Code::PermissionDenied,
            ),
            (
                ResultRefusal::StaleEpoch {
                    job: job.clone(),
                    epoch: 1,
                    current: 2,
                },
                Code::FailedPrecondition,
            ),
            (
                ResultRefusal::JobEnded {
                    job,
                    state: JobState::Cancelled,
                    step_index: 0,
                    attempt: 1,
                },
                Code::FailedPrecondition,
            ),
            (
                ResultRefusal::UnknownStep {
                    step_index: 7,
                    plan: "gpu-qual".into(),
                    n_steps: 2,
                },
                Code::InvalidArgument,
            ),
            (
                ResultRefusal::DoesNotFitStep(vec![FieldError {
                    field: "measurements".into(),
                    message: "none expected".into(),
                }]),
                Code::InvalidArgument,
            ),
        ];
        for (refusal, code) in cases {
            let text = refusal.to_string();
            let status = refused_result(refusal);
            assert_eq!(status.code(), code, "{text}");
        }
        let finished = tollgate_domain::run::cancel(tollgate_domain::run::RunState::Finished, &[])
            .expect_err("refused");
        assert_eq!(refused_cancel(finished).code(), Code::FailedPrecondition);
    }

    #[test]
    fn domain_errors_keep_their_text() {
        let error = SelectError::NoMatchingNode {
            selector: "sku=gb200".into(),
        };
        let status = no_nodes(&error, 0);
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
