//! `StatusService`: the weekly status report (facts gathered by `crate::status_report`,
//! rendered by `tollgate_domain::status_report`), and the notes that make its minutes (checked
//! by `tollgate_domain::note::plan_note`, stored with their audit entry); an action item is
//! marked done as `tollgate_domain::note::plan_done` decides, by compare-and-set.

use super::auth::{actor_of, customer_of};
use super::convert::ToProto;
use super::load_release;
use super::status::{FieldErrors, invalid_fields};
use crate::shared::Shared;
use crate::status_report::{StatusScope, gather};
use crate::store::{AuditNote, NoteFilter, StoreError};
use std::sync::Arc;
use tollgate_domain::ReleaseId;
use tollgate_domain::note::{plan_done, plan_note};
use tollgate_domain::status_report::{html, markdown};
use tollgate_proto::v1::{self as proto, status_service_server::StatusService};
use tonic::{Request, Response, Status};

/// How far back a report looks when no `since` is given.
pub const DEFAULT_SINCE_DAYS: i64 = 7;

/// The status service.
#[derive(Debug, Clone)]
pub struct StatusApi {
    shared: Arc<Shared>,
}

impl StatusApi {
    /// A service over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// How many times marking an action item done that lost a compare-and-set is decided again
/// from the store (the second decision then says who did it first).
const TRIES: usize = 2;

/// The formats a report is rendered in.
const FORMATS: [&str; 2] = ["markdown", "html"];

#[tonic::async_trait]
impl StatusService for StatusApi {
    async fn render_status(
        &self,
        request: Request<proto::RenderStatusRequest>,
    ) -> Result<Response<proto::StatusReport>, Status> {
        let token_customer = customer_of(&request);
        let proto::RenderStatusRequest {
            customer,
            since,
            format,
            minutes,
        } = super::convert::bounded(request.into_inner())?;
        let now = self.shared.now();
        let mut errors = FieldErrors::new();
        let since = errors.optional_timestamp("since", since);
        if since.is_some_and(|since| since > now) {
            errors.add(
                "since",
                "is in the future; give a time in the past, such as 7d ago",
            );
        }
        let format = match format.trim() {
            "" => "markdown",
            known if FORMATS.contains(&known) => known,
            other => {
                errors.add(
                    "format",
                    format!(
                        "'{other}' is not a report format; give one of {}",
                        FORMATS.join(", ")
                    ),
                );
                "markdown"
            }
        };
        let customer = customer.trim();
        if let Some(own) = &token_customer
            && !customer.is_empty()
            && customer != own
        {
            return Err(Status::permission_denied(format!(
                "a customer token reports on its own customer ({own}) only; leave out customer"
            )));
        }
        if token_customer.is_some() && minutes {
            // Notes are the team's own (ListNotes is not a customer's either).
            return Err(Status::permission_denied(
                "the minutes are the team's notes, which a customer token may not read; \
                 leave out minutes",
            ));
        }
        errors.finish(()).map_err(invalid_fields)?;
        let scope = StatusScope {
            customer: token_customer
                .or_else(|| (!customer.is_empty()).then(|| customer.to_owned())),
            since: since.unwrap_or(now - chrono::Duration::days(DEFAULT_SINCE_DAYS)),
            minutes,
        };
        let facts = gather(&self.shared, &scope).await?;
        let text = if format == "html" {
            html(&facts)
        } else {
            markdown(&facts)
        };
        Ok(Response::new(proto::StatusReport {
            format: format.to_owned(),
            text,
        }))
    }

    async fn add_note(
        &self,
        request: Request<proto::AddNoteRequest>,
    ) -> Result<Response<proto::Note>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        // Every bad field in one answer: the texts over their limits and what the domain
        // refuses, before the release is looked up.
        let mut errors = FieldErrors::new();
        tollgate_wire::Bounded::check_bounds(&request, &mut errors);
        let proto::AddNoteRequest {
            release,
            text,
            action_owner,
            due,
        } = request;
        let decided = plan_note(
            &release,
            &text,
            &action_owner,
            &due,
            &actor,
            self.shared.now(),
        );
        if let Err(refusals) = &decided {
            for refusal in refusals {
                errors.add(refusal.field, refusal.message.clone());
            }
        }
        errors.finish(()).map_err(invalid_fields)?;
        let note = decided.map_err(|_| Status::internal("a refused note passed its checks"))?;
        let release = load_release(&self.shared, note.release.as_str()).await?;
        let audit = AuditNote::new(note.at, &actor, "note.add", "note")
            .release(&release.id)
            .details(serde_json::json!({
                "text": note.text,
                "action_owner": note.action.as_ref().map(|action| &action.owner),
                "due": note.action.as_ref().map(|action| action.due),
            }));
        let stored = self.shared.store.add_note(&note, &audit).await?;
        tracing::info!(release = %release.id, note = stored.id, actor, "note added");
        Ok(Response::new(stored.to_proto()))
    }

    async fn complete_action(
        &self,
        request: Request<proto::CompleteActionRequest>,
    ) -> Result<Response<proto::Note>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        let mut errors = FieldErrors::new();
        tollgate_wire::Bounded::check_bounds(&request, &mut errors);
        let proto::CompleteActionRequest { id, comment } = request;
        if id <= 0 {
            errors.add(
                "id",
                format!("is {id}; give a note number (`tollgate note list --actions` shows them)"),
            );
        }
        errors.finish(()).map_err(invalid_fields)?;
        let mut tries = 0;
        loop {
            tries += 1;
            let note = self.shared.store.note(id).await?.ok_or_else(|| {
                Status::not_found(format!(
                    "note {id} not found; `tollgate note list --actions` lists the action items"
                ))
            })?;
            let done = plan_done(&note, &actor, &comment, self.shared.now())
                .map_err(super::status::done_refused)?;
            let audit = AuditNote::new(done.at, &actor, "note.done", format!("note/{id}"))
                .release(&note.release)
                .details(serde_json::json!({ "comment": done.comment }));
            match self.shared.store.complete_action(id, &done, &audit).await {
                Ok(stored) => {
                    tracing::info!(release = %stored.release, note = id, actor, "action item done");
                    return Ok(Response::new(stored.to_proto()));
                }
                Err(StoreError::Conflict { .. }) if tries < TRIES => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    async fn list_notes(
        &self,
        request: Request<proto::ListNotesRequest>,
    ) -> Result<Response<proto::ListNotesResponse>, Status> {
        let proto::ListNotesRequest {
            release,
            since,
            actions_only,
        } = super::convert::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        let since = errors.optional_timestamp("since", since);
        errors.finish(()).map_err(invalid_fields)?;
        let release = release.trim();
        let filter = NoteFilter {
            releases: (!release.is_empty()).then(|| vec![ReleaseId::from(release)]),
            since,
            actions_only,
        };
        let notes = self.shared.store.notes(&filter).await?;
        Ok(Response::new(proto::ListNotesResponse {
            notes: notes.iter().map(ToProto::to_proto).collect(),
        }))
    }
}
