//! `AuditService`: reading and verifying the hash-chained audit log.

use super::convert::ToProto;
use super::status::{FieldErrors, invalid_fields};
use crate::shared::Shared;
use crate::store::AuditFilter;
use std::sync::Arc;
use tollgate_domain::ReleaseId;
use tollgate_proto::v1::{self as proto, audit_service_server::AuditService};
use tonic::{Request, Response, Status};

/// The audit service.
#[derive(Debug, Clone)]
pub struct AuditApi {
    shared: Arc<Shared>,
}

impl AuditApi {
    /// A service over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit(
        &self,
        request: Request<proto::ListAuditRequest>,
    ) -> Result<Response<proto::ListAuditResponse>, Status> {
        let proto::ListAuditRequest {
            release,
            actor,
            since,
            until,
            page_size,
            page_token,
        } = super::convert::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        let since = errors.optional_timestamp("since", since);
        let until = errors.optional_timestamp("until", until);
        let bound = |at: Option<tollgate_domain::Timestamp>| {
            at.map_or_else(String::new, |at| at.timestamp_micros().to_string())
        };
        let page = super::pages::by_seq(
            &mut errors,
            tollgate_wire::page::List::Audit,
            &[&release, &actor, &bound(since), &bound(until)],
            page_size,
            &page_token,
        );
        errors.finish(()).map_err(invalid_fields)?;
        let filter = AuditFilter {
            release: (!release.is_empty()).then(|| ReleaseId::from(release.as_str())),
            actor: (!actor.is_empty()).then_some(actor),
            since,
            until,
        };
        let fetched = self
            .shared
            .store
            .list_audit_page(&filter, page.after, page.fetch())
            .await?;
        let (entries, next_page_token) = page.answer(fetched, |entry| {
            tollgate_wire::page::After::Seq(i64::try_from(entry.seq).unwrap_or(i64::MAX))
        });
        Ok(Response::new(proto::ListAuditResponse {
            entries: entries.iter().map(ToProto::to_proto).collect(),
            next_page_token,
        }))
    }

    async fn verify_audit(
        &self,
        request: Request<proto::VerifyAuditRequest>,
    ) -> Result<Response<proto::VerifyAuditResponse>, Status> {
        let proto::VerifyAuditRequest {} = super::convert::bounded(request.into_inner())?;
        let n_entries = self
            .shared
            .store
            .list_audit(&AuditFilter::default())
            .await?
            .len() as u64;
        let answer = match self.shared.store.verify_audit().await? {
            Ok(head_hash) => proto::VerifyAuditResponse {
                ok: true,
                head_hash,
                n_entries,
                broken_seq: 0,
                reason: String::new(),
            },
            Err(broken) => {
                tracing::error!(seq = broken.seq, reason = %broken.reason, "the audit log is broken");
                proto::VerifyAuditResponse {
                    ok: false,
                    head_hash: String::new(),
                    n_entries,
                    broken_seq: broken.seq,
                    reason: broken.reason,
                }
            }
        };
        Ok(Response::new(answer))
    }
}
