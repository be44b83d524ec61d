//! `NodeService/GetNodeTelemetry`: a node's fleet telemetry history
//! (`tollgate_domain::fleet_history`), one tier, bounded.

use super::status::not_found;
use crate::shared::Shared;
use crate::store::FleetQuery;
use std::collections::BTreeSet;
use tollgate_domain::NodeId;
use tollgate_domain::fleet_history::Bucket;
use tollgate_domain::telemetry::Field;
use tollgate_proto::v1 as proto;

/// Buckets in an answer when the request says none.
pub const DEFAULT_LIMIT: u32 = 500;
/// Most buckets in one answer: 24 fields each stay well under the message size limit.
pub const MAX_LIMIT: u32 = 2_000;
/// How far back an answer reaches when the request gives no `since`.
const DEFAULT_SPAN: chrono::Duration = chrono::Duration::hours(1);

/// `GetNodeTelemetry`, for `customer` (a customer token sees only its customer's nodes).
pub async fn get_node_telemetry(
    shared: &Shared,
    customer: Option<&str>,
    request: proto::GetNodeTelemetryRequest,
) -> Result<proto::NodeTelemetry, tonic::Status> {
    let proto::GetNodeTelemetryRequest {
        node,
        since,
        until,
        gpu_index,
        fields,
        resolution_seconds,
        limit,
    } = request;
    let now = shared.now();
    let history = &shared.config.fleet_history;
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    if node.trim().is_empty() {
        problems.push((
            "node",
            "is empty; give a node name (`tollgate node list`)".into(),
        ));
    }
    let until = match until.as_ref().map(tollgate_wire::timestamp_from_proto) {
        None => now,
        Some(Some(at)) => at,
        Some(None) => {
            problems.push(("until", "is not a valid timestamp".into()));
            now
        }
    };
    let since = match since.as_ref().map(tollgate_wire::timestamp_from_proto) {
        None => until - DEFAULT_SPAN,
        Some(Some(at)) => at,
        Some(None) => {
            problems.push(("since", "is not a valid timestamp".into()));
            until - DEFAULT_SPAN
        }
    };
    if since >= until {
        problems.push(("since", "must be before until".into()));
    }
    let mut wanted = BTreeSet::new();
    for name in &fields {
        match name.parse::<Field>() {
            Ok(field) => {
                wanted.insert(field);
            }
            Err(message) => problems.push(("fields", message)),
        }
    }
    let tier = if resolution_seconds == 0 {
        Some(history.tier_for(since, now))
    } else {
        let tier = history.tier(resolution_seconds);
        if tier.is_none() {
            problems.push((
                "resolution_seconds",
                format!(
                    "{resolution_seconds} is not a tier this controller keeps ({history}); give \
                     one of their widths in seconds, or 0 for the finest reaching back to since"
                ),
            ));
        }
        tier
    };
    if limit > MAX_LIMIT {
        problems.push((
            "limit",
            format!("{limit} is over {MAX_LIMIT}; ask again from after the last bucket's start"),
        ));
    }
    if !problems.is_empty() {
        return Err(super::status::invalid_field_list(problems));
    }
    let Some(tier) = tier else {
        return Err(tonic::Status::internal("a refused tier named no problem"));
    };
    let node_id = NodeId::from(node.as_str());
    let found = shared
        .store
        .get_node(&node_id)
        .await?
        .filter(|found| tollgate_domain::access::sees_node(customer, &found.labels))
        // Another customer's node is answered as if it did not exist.
        .ok_or_else(|| not_found(format!("node {node} (`tollgate node list` lists them)")))?;
    let limit = if limit == 0 { DEFAULT_LIMIT } else { limit };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut buckets = shared
        .store
        .fleet_telemetry(&FleetQuery {
            node: node_id,
            gpu_index,
            resolution_s: tier.resolution_s(),
            since,
            until,
            // One more than asked: whether more match.
            limit: limit.saturating_add(1),
        })
        .await?;
    let truncated = buckets.len() > limit;
    buckets.truncate(limit);
    Ok(proto::NodeTelemetry {
        node,
        resolution_seconds: tier.resolution_s(),
        buckets: buckets
            .iter()
            .map(|bucket| bucket_to_proto(bucket, &wanted))
            .collect(),
        truncated,
        gpu_source: found.inventory.gpu_source.as_str().to_owned(),
        history: history.to_string(),
    })
}

/// A bucket on the wire, with only the `wanted` fields (every field when empty).
fn bucket_to_proto(bucket: &Bucket, wanted: &BTreeSet<Field>) -> proto::TelemetryBucket {
    proto::TelemetryBucket {
        gpu_index: bucket.gpu_index,
        start: Some(tollgate_wire::timestamp_to_proto(bucket.start)),
        fields: bucket
            .fields
            .iter()
            .filter(|(field, _)| wanted.is_empty() || wanted.contains(*field))
            .map(|(field, stat)| proto::FieldStat {
                field: field.name().to_owned(),
                min: stat.min,
                mean: stat.mean(),
                max: stat.max,
                samples: stat.samples,
            })
            .collect(),
    }
}
