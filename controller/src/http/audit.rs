//! The audit log, filterable by release, actor and time, with the hash chain's verification
//! state (`AuditService/VerifyAudit`).

use super::layout::{self, badge, report_links, time};
use super::session::{Caller, PageError, encode};
use axum::extract::Query;
use axum::response::Response;
use maud::html;
use tollgate_proto::v1::{self as pb, audit_service_server::AuditService};

/// `ListAudit`.
pub const LIST_AUDIT: &str = "/tollgate.v1.AuditService/ListAudit";
/// `VerifyAudit`.
pub const VERIFY_AUDIT: &str = "/tollgate.v1.AuditService/VerifyAudit";

/// `/audit`'s filters.
#[derive(Debug, Default, serde::Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    release: String,
    #[serde(default)]
    actor: String,
    /// RFC 3339, or a date.
    #[serde(default)]
    since: String,
    #[serde(default)]
    page: String,
}

/// Parses `since`: RFC 3339 or `YYYY-MM-DD` (midnight UTC).
fn parse_since(text: &str) -> Result<Option<prost_types::Timestamp>, PageError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let at = chrono::DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map(|day| day.and_time(chrono::NaiveTime::MIN).and_utc())
        })
        .map_err(|_| {
            PageError::BadRequest(format!(
                "the filter since='{text}' is not a time: give a date (2026-12-01) or an RFC \
                 3339 time (2026-12-01T08:00:00Z), or leave it empty"
            ))
        })?;
    Ok(Some(tollgate_wire::time::timestamp_to_proto(at)))
}

/// The audit log page.
pub async fn show(caller: Caller, Query(query): Query<AuditQuery>) -> Result<Response, PageError> {
    let since = parse_since(&query.since)?;
    let api = crate::grpc::audit::AuditApi::new(caller.shared.clone());
    let verified = caller
        .rpc(VERIFY_AUDIT, pb::VerifyAuditRequest {}, |request| {
            api.verify_audit(request)
        })
        .await?;
    let entries = caller
        .rpc(
            LIST_AUDIT,
            pb::ListAuditRequest {
                release: query.release.clone(),
                actor: query.actor.clone(),
                since,
                until: None,
                page_size: 200,
                page_token: query.page.clone(),
            },
            |request| api.list_audit(request),
        )
        .await?;
    let next = format!(
        "/audit?release={}&actor={}&since={}&page={}",
        encode(&query.release),
        encode(&query.actor),
        encode(&query.since),
        encode(&entries.next_page_token)
    );
    let body = html! {
        h1 { "Audit log" }
        p.chain role="status" {
            "Hash chain: "
            @if verified.ok {
                (badge("intact")) " " (verified.n_entries) " entries verified; head "
                code.digest { (verified.head_hash) }
            } @else {
                (badge("broken")) " at entry " (verified.broken_seq) ": " (verified.reason)
            }
        }
        form.filter method="get" action="/audit" {
            label { "Release " input type="text" name="release" value=(query.release); }
            label { "Actor " input type="text" name="actor" value=(query.actor); }
            label { "Since " input type="text" name="since" value=(query.since) placeholder="2026-12-01"; }
            button type="submit" { "Filter" }
        }
        @if !query.release.is_empty() {
            p { "The signed report of " (query.release) " names this log's head hash: "
                (report_links(&query.release, "")) }
        }
        @if entries.entries.is_empty() { p.muted { "No entry matches." } }
        @else {
            table.list.audit {
                thead { tr { th { "#" } th { "When" } th { "Actor" } th { "Action" } th { "Subject" } th { "Details" } th { "Hash" } } }
                tbody { @for entry in &entries.entries {
                    tr { td { (entry.seq) } td { (time(entry.at.as_ref())) } td { (entry.actor) }
                         td { code { (entry.action) } } td { (entry.subject) }
                         td { code.details { (entry.details) } }
                         td { code.digest title=(entry.hash) { (entry.hash.get(..12).unwrap_or(&entry.hash)) } } }
                } }
            }
            @if !entries.next_page_token.is_empty() { p { a href=(next) { "Next page →" } } }
        }
    };
    Ok(layout::page(&caller, "Audit log", "/audit", body))
}
