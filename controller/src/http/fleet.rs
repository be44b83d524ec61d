//! The fleet: nodes by state and health, with labels, GPUs, driver/VBIOS/firmware versions
//! and their drift from a chosen release, and the current job; filtered by label, a page of
//! nodes at a time (`NodeService/ListNodes`' keyset pages), so a fleet of thousands loads as
//! fast as one page of it.

use super::layout::{self, badge, report_links, simulated};
use super::releases::GET_RELEASE;
use super::session::{Caller, PageError, encode};
use axum::extract::Query;
use axum::response::Response;
use maud::{Markup, html};
use std::collections::{BTreeMap, BTreeSet};
use tollgate_proto::v1::{self as pb, node_service_server::NodeService};

/// `ListNodes`.
pub const LIST_NODES: &str = "/tollgate.v1.NodeService/ListNodes";
/// Nodes per page by default.
const DEFAULT_PAGE: u32 = 100;

/// `/fleet`'s filters.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct FleetQuery {
    /// `KEY=VALUE[,KEY=VALUE...]`: only nodes with all these labels.
    #[serde(default)]
    pub label: String,
    /// A release to show each node's drift from.
    #[serde(default)]
    pub release: String,
    /// The page (a `next_page_token`).
    #[serde(default)]
    pub page: String,
    /// Nodes per page, up to 1,000.
    #[serde(default)]
    pub page_size: Option<u32>,
}

/// Parses the label filter; a bad one says what a good one looks like.
fn selector(text: &str) -> Result<BTreeMap<String, String>, PageError> {
    let mut selector = BTreeMap::new();
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        match part.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                selector.insert(key.trim().to_owned(), value.trim().to_owned());
            }
            _ => {
                return Err(PageError::BadRequest(format!(
                    "the label filter '{part}' is not KEY=VALUE: write it as sku=hgx-h100, \
                     several separated by commas, or leave it empty for every node"
                )));
            }
        }
    }
    Ok(selector)
}

/// How a node's versions differ from a release's components, in words (empty: no drift).
pub fn drift(release: &pb::Release, inventory: Option<&pb::Inventory>) -> Vec<String> {
    use tollgate_wire::FromProto as _;
    let Some(inventory) = inventory else {
        return vec!["no inventory yet".to_owned()];
    };
    let Ok(inventory) = tollgate_domain::fleet::Inventory::from_proto(inventory.clone()) else {
        return vec!["inventory unreadable".to_owned()];
    };
    let components: Vec<tollgate_domain::release::Component> = release
        .components
        .iter()
        .cloned()
        .map(tollgate_wire::release::component_from_proto)
        .collect();
    let mismatches = tollgate_domain::release::check_inventory(&components, &[], &inventory);
    // One line per component, however many GPUs differ.
    let mut lines: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for mismatch in mismatches {
        lines
            .entry(mismatch.component.clone())
            .or_default()
            .insert(match &mismatch.observed {
                Some(observed) => format!("{observed} ≠ {}", mismatch.expected),
                None => format!("unreported (wants {})", mismatch.expected),
            });
    }
    lines
        .into_iter()
        .map(|(component, seen)| {
            format!(
                "{component}: {}",
                seen.into_iter().collect::<Vec<_>>().join("; ")
            )
        })
        .collect()
}

/// The distinct values of a per-GPU fact.
fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let set: BTreeSet<&str> = values.filter(|value| !value.is_empty()).collect();
    if set.is_empty() {
        "—".to_owned()
    } else {
        set.into_iter().collect::<Vec<_>>().join(", ")
    }
}

/// One node's row.
pub fn row(node: &pb::Node, release: Option<&pb::Release>) -> Markup {
    let inventory = node.inventory.as_ref();
    let gpus = inventory.map_or(&[][..], |inventory| inventory.gpus.as_slice());
    let models = distinct(gpus.iter().map(|gpu| gpu.name.as_str()));
    let drift = release.map(|release| drift(release, inventory));
    html! {
        tr {
            td { a href={ "/nodes/" (encode(&node.name)) } { (node.name) }
                 @for one in &node.rollout_drift {
                     div.drift { (badge("drifted")) " " a href={ "/rollouts/" (encode(&one.rollout)) } { "rollout " (one.rollout) }
                         " expects " (one.component) " " code { (one.expected) } ", reports " code { (if one.reported.is_empty() { "nothing" } else { one.reported.as_str() }) } }
                 } }
            td { (badge(&node.state)) }
            td { (badge(&node.health)) }
            td.labels { @for (key, value) in node.labels.iter().collect::<BTreeMap<_, _>>() { span.chip { (key) "=" (value) } " " } }
            td { (gpus.len()) " × " (models)
                 @if inventory.is_some_and(|inventory| inventory.gpu_source == "simulated") { " " (simulated()) } }
            td { code { (inventory.map_or("—", |inventory| inventory.driver_version.as_str())) } }
            td { code { (distinct(gpus.iter().map(|gpu| gpu.vbios_version.as_str()))) } }
            td { @if let Some(inventory) = inventory { @for (name, version) in inventory.components.iter().collect::<BTreeMap<_, _>>() { div { (name) " " code { (version) } } } } }
            @if let Some(drift) = &drift {
                td { @if drift.is_empty() { (badge("ok")) } @else { @for line in drift { div.drift { (line) } } } }
            }
            td { @if node.current_job_id.is_empty() { span.muted { "—" } } @else { code { (node.current_job_id) } } }
        }
    }
}

/// The nodes table for one page.
pub fn table(nodes: &[pb::Node], release: Option<&pb::Release>) -> Markup {
    html! {
        table.list.fleet {
            thead { tr { th { "Node" } th { "State" } th { "Health" } th { "Labels" } th { "GPUs" } th { "Driver" } th { "VBIOS" } th { "Firmware" }
                         @if let Some(release) = release { th { "Drift from " (release.name) } } th { "Current job" } } }
            tbody { @for node in nodes { (row(node, release)) } }
        }
    }
}

/// The fleet page.
pub async fn show(caller: Caller, Query(query): Query<FleetQuery>) -> Result<Response, PageError> {
    let body = render(&caller, &query).await?;
    Ok(layout::page(&caller, "Fleet", "/fleet", body))
}

/// The fleet page's body (the benchmark times this).
pub async fn render(caller: &Caller, query: &FleetQuery) -> Result<Markup, PageError> {
    let selector = selector(&query.label)?;
    let page_size = query.page_size.unwrap_or(DEFAULT_PAGE).clamp(1, 1000);
    let nodes_api = crate::grpc::node::NodeApi::new(caller.shared.clone());
    let release = if query.release.trim().is_empty() {
        None
    } else {
        let releases = crate::grpc::release::ReleaseApi::new(caller.shared.clone());
        Some(
            caller
                .rpc(
                    GET_RELEASE,
                    pb::GetReleaseRequest {
                        name: query.release.trim().to_owned(),
                    },
                    // The release's components only: never its projection, which reads every
                    // release, run and node.
                    |request| releases.describe_release(request),
                )
                .await?,
        )
    };
    let answer = caller
        .rpc(
            LIST_NODES,
            pb::ListNodesRequest {
                selector: selector.into_iter().collect(),
                page_size,
                page_token: query.page.clone(),
            },
            |request| nodes_api.list_nodes(request),
        )
        .await?;
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_health: BTreeMap<&str, usize> = BTreeMap::new();
    for node in &answer.nodes {
        *by_state.entry(node.state.as_str()).or_default() += 1;
        *by_health.entry(node.health.as_str()).or_default() += 1;
    }
    let next = format!(
        "/fleet?label={}&release={}&page_size={page_size}&page={}",
        encode(&query.label),
        encode(&query.release),
        encode(&answer.next_page_token)
    );
    Ok(html! {
        h1 { "Fleet" }
        @if let Some(outage) = &answer.fleet_outage {
            p.notice.bad role="alert" { "Fleet outage: " (outage.silent) " of " (outage.watched)
                " nodes silent at once; no lease expires until heartbeats return." }
        }
        form.filter method="get" action="/fleet" {
            label { "Labels " input type="text" name="label" value=(query.label) placeholder="sku=hgx-h100,site=lab-a"; }
            label { "Drift from release " input type="text" name="release" value=(query.release) placeholder="r550-u3"; }
            input type="hidden" name="page_size" value=(page_size);
            button type="submit" { "Filter" }
        }
        @if let Some(release) = &release { p { (report_links(&release.name, "")) } }
        p.summary {
            "This page: " (answer.nodes.len()) " nodes — "
            @for (state, n) in &by_state { (badge(state)) " " (n) " " }
            " · health " @for (health, n) in &by_health { (badge(health)) " " (n) " " }
        }
        @if answer.nodes.is_empty() { p.muted { "No node on this page matches." } }
        @else { div.scroll { (table(&answer.nodes, release.as_ref())) } }
        @if !answer.next_page_token.is_empty() { p { a href=(next) rel="next" { "Next page →" } } }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_filters_parse_or_say_how() {
        assert_eq!(selector("").unwrap().len(), 0);
        let parsed = selector("sku=hgx-h100, site=lab-a").unwrap();
        assert_eq!(parsed["site"], "lab-a");
        let Err(PageError::BadRequest(message)) = selector("sku") else {
            panic!("a filter without '=' is refused");
        };
        assert!(message.contains("KEY=VALUE"), "{message}");
    }
}
