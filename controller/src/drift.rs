//! Drift after rollouts: which components each node a rollout updated reports otherwise than
//! the rollout brought it to, from the expectations `Store::rollout_expectations` reads (one
//! query, whatever the number of nodes) and the nodes' inventories of record. The domain
//! decides (`tollgate_domain::rollout::drift`); this loads and asks.

use crate::shared::Shared;
use crate::store::StoreError;
use std::collections::BTreeMap;
use tollgate_domain::fleet::{Inventory, Node};
use tollgate_domain::rollout::drift::{Drift, Expected, drift, in_force};
use tollgate_domain::{NodeId, RolloutId};

/// The drift of each of `nodes` that has any.
pub async fn of_nodes(
    shared: &Shared,
    nodes: &[&Node],
) -> Result<BTreeMap<NodeId, Vec<Drift>>, StoreError> {
    let expected = in_force(shared.store.rollout_expectations().await?);
    Ok(judge(&expected, nodes))
}

/// The drift of each of `nodes` that has any, against the expectations in force.
fn judge(expected: &BTreeMap<NodeId, Expected>, nodes: &[&Node]) -> BTreeMap<NodeId, Vec<Drift>> {
    nodes
        .iter()
        .filter_map(|node| {
            let held = expected.get(&node.id)?;
            let found = drift(held, reported(&node.inventory));
            (!found.is_empty()).then(|| (node.id.clone(), found))
        })
        .collect()
}

/// The drift of the nodes rollout `id` updated last, each node with its drifted components,
/// from `nodes` (the rollout's, as read by the caller).
pub async fn of_rollout(
    shared: &Shared,
    id: &RolloutId,
    nodes: &[Node],
) -> Result<Vec<(NodeId, Drift)>, StoreError> {
    let expected = in_force(shared.store.rollout_expectations().await?);
    if expected.is_empty() {
        return Ok(Vec::new());
    }
    let nodes: Vec<&Node> = nodes.iter().collect();
    Ok(judge(&expected, &nodes)
        .into_iter()
        .flat_map(|(node, found)| found.into_iter().map(move |one| (node.clone(), one)))
        .filter(|(_, one)| one.rollout == *id)
        .collect())
}

/// The inventory a node reported, `None` before it reported one.
fn reported(inventory: &Inventory) -> Option<&Inventory> {
    (*inventory != Inventory::default()).then_some(inventory)
}
