//! Waivers: every release's waivers (or one release's), in force, expired or revoked, with
//! reason, ticket, approver and expiry; release managers revoke the ones in force.

use super::layout::{self, badge, csrf, report_links, time};
use super::releases::{LIST_RELEASES, LIST_WAIVERS};
use super::session::{Caller, PageError, encode};
use axum::extract::{Path, Query};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use tollgate_domain::Timestamp;
use tollgate_proto::v1::{
    self as pb, gate_service_server::GateService, release_service_server::ReleaseService,
};

/// `RevokeWaiver`.
pub const REVOKE_WAIVER: &str = "/tollgate.v1.GateService/RevokeWaiver";

/// Whether a waiver applies at `now`: not revoked, not expired.
pub fn in_force(waiver: &pb::Waiver, now: Timestamp) -> bool {
    waiver.revoked_at.is_none()
        && waiver
            .expires_at
            .as_ref()
            .and_then(tollgate_wire::time::timestamp_from_proto)
            .is_some_and(|expires| expires > now)
}

fn state(waiver: &pb::Waiver, now: Timestamp) -> &'static str {
    if waiver.revoked_at.is_some() {
        "revoked"
    } else if in_force(waiver, now) {
        "in force"
    } else {
        "expired"
    }
}

/// A table of waivers; with `revoke`, a revoke button on each one in force when the caller
/// may revoke.
pub fn table(caller: &Caller, waivers: &[&pb::Waiver], revoke: bool) -> Markup {
    let now = caller.shared.now();
    let may_revoke = revoke && caller.may(REVOKE_WAIVER);
    html! {
        table.list.waivers {
            thead { tr { th { "Waiver" } th { "Release" } th { "Rule" } th { "State" } th { "Reason" } th { "Ticket" }
                         th { "Approved by" } th { "Expires" } th { "Scope" } @if may_revoke { th {} } } }
            tbody { @for waiver in waivers {
                tr {
                    td { code { (waiver.id) } }
                    td { a href={ "/releases/" (encode(&waiver.release)) } { (waiver.release) } div.muted { (waiver.milestone) } }
                    td { (waiver.rule_id) }
                    td { (badge(state(waiver, now))) }
                    td { (waiver.reason) }
                    td { (waiver.ticket) }
                    td { (waiver.approver) }
                    td { (time(waiver.expires_at.as_ref())) }
                    td { @if waiver.nodes.is_empty() && waiver.skus.is_empty() && waiver.steps.is_empty() { "any" }
                         @else { (waiver.nodes.iter().chain(&waiver.skus).chain(&waiver.steps).cloned().collect::<Vec<_>>().join(", ")) } }
                    @if may_revoke { td { @if in_force(waiver, now) {
                        form method="post" action={ "/waivers/" (encode(&waiver.id)) "/revoke" } {
                            (csrf(caller)) button type="submit" { "Revoke" } } } } }
                }
            } }
        }
    }
}

/// `/waivers`' query.
#[derive(Debug, Default, serde::Deserialize)]
pub struct WaiversQuery {
    #[serde(default)]
    release: String,
}

/// Waivers of one release, or of the latest 100 releases.
pub async fn list(
    caller: Caller,
    Query(query): Query<WaiversQuery>,
) -> Result<Response, PageError> {
    let shared = caller.shared.clone();
    let gates = crate::grpc::gate::GateApi::new(shared.clone());
    let releases = crate::grpc::release::ReleaseApi::new(shared.clone());
    let names: Vec<String> = if query.release.is_empty() {
        caller
            .rpc(
                LIST_RELEASES,
                pb::ListReleasesRequest {
                    page_size: 100,
                    page_token: String::new(),
                },
                |request| releases.list_releases(request),
            )
            .await?
            .releases
            .into_iter()
            .map(|release| release.name)
            .collect()
    } else {
        vec![query.release.clone()]
    };
    let mut waivers = Vec::new();
    for name in &names {
        waivers.extend(of_release(&caller, &gates, name).await?);
    }
    let refs: Vec<&pb::Waiver> = waivers.iter().collect();
    let body = html! {
        h1 { "Waivers" @if !query.release.is_empty() { " of " (query.release) } }
        form.filter method="get" action="/waivers" {
            label { "Release " input type="text" name="release" value=(query.release) placeholder="every release"; }
            button type="submit" { "Filter" }
        }
        @if !query.release.is_empty() {
            @if let Some(waiver) = waivers.first() { p { (report_links(&waiver.release, &waiver.milestone)) } }
        }
        @if refs.is_empty() { p.muted { "No waiver." } } @else { (table(&caller, &refs, true)) }
    };
    Ok(layout::page(&caller, "Waivers", "/waivers", body))
}

/// The first 100 waivers of `release` (every milestone), through `GateService/ListWaivers`.
pub async fn of_release(
    caller: &Caller,
    gates: &crate::grpc::gate::GateApi,
    release: &str,
) -> Result<Vec<pb::Waiver>, PageError> {
    Ok(caller
        .rpc(
            LIST_WAIVERS,
            pb::ListWaiversRequest {
                release: release.to_owned(),
                milestone: String::new(),
                page_size: 100,
                page_token: String::new(),
            },
            |request| gates.list_waivers(request),
        )
        .await?
        .waivers)
}

/// Revokes a waiver in force, through `GateService/RevokeWaiver`.
pub async fn revoke(
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<layout::ActionForm>,
) -> Result<Response, PageError> {
    caller.check_post(&headers, &form.csrf)?;
    let api = crate::grpc::gate::GateApi::new(caller.shared.clone());
    let waiver = caller
        .rpc(REVOKE_WAIVER, pb::RevokeWaiverRequest { id }, |request| {
            api.revoke_waiver(request)
        })
        .await?;
    Ok(Redirect::to(&format!("/waivers?release={}", encode(&waiver.release))).into_response())
}
