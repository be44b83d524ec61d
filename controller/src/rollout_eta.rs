//! When a rollout should end, from what the store holds: the domain's estimate
//! ([`tollgate_domain::rollout::eta`]) over the durations of its nodes' procedures so far.

use crate::rollouts::Loaded;
use crate::shared::Shared;
use crate::store::StoreError;
use std::collections::BTreeMap;
use std::time::Duration;
use tollgate_domain::fleet::Node;
use tollgate_domain::rollout::{Eta, EtaFacts, eta};

/// The estimate of `loaded`'s end now, or `None` when none holds (paused, halted, rolling
/// back, ended). Before any procedure was measured, each node is assumed to take the sum of
/// the procedure plan's step timeouts. `nodes` are the rollout's (their labels count for its
/// blast radius).
pub async fn eta_of(
    shared: &Shared,
    loaded: &Loaded,
    nodes: &[Node],
) -> Result<Option<Eta>, StoreError> {
    let facts = loaded.facts();
    if facts.state.phase.is_terminal() {
        return Ok(None);
    }
    let mut started_at = BTreeMap::new();
    let mut measured = Vec::new();
    for times in shared
        .store
        .rollout_procedure_times(&loaded.record.id)
        .await?
    {
        match times.finished_at {
            Some(end) => measured.push((end - times.started_at).to_std().unwrap_or_default()),
            None => {
                started_at.insert(times.node, times.started_at);
            }
        }
    }
    let assumed = shared
        .store
        .get_plan(&loaded.record.spec.procedure.plan, None)
        .await?
        .map_or(Duration::ZERO, |stored| {
            stored.plan.steps.iter().map(|step| step.timeout).sum()
        });
    let labels = nodes
        .iter()
        .map(|node| (node.id.clone(), node.labels.clone()))
        .collect();
    Ok(eta(
        EtaFacts {
            rollout: facts,
            labels: &labels,
            started_at: &started_at,
            measured: &measured,
            assumed,
        },
        shared.now(),
    ))
}
