//! Drain deadlines: a node drained with `--deadline` whose running job has not ended when
//! the deadline passes gets that job cancelled and started again on another eligible node
//! (`tollgate_domain::reschedule`, cause `drain-deadline`); with no job left, the node is in
//! `maintenance`. Checked by the replica that expires leases, every tick.

use crate::shared::Shared;
use crate::store::StoreError;
use tollgate_domain::NodeId;
use tollgate_domain::fleet::NodeState;
use tollgate_domain::job::{self, JobEvent};

/// Cancels (and reschedules) the jobs of every node whose drain is overdue; returns the nodes
/// whose job was cancelled.
pub async fn enforce_deadlines(shared: &Shared) -> Result<Vec<NodeId>, StoreError> {
    let now = shared.now();
    let mut cancelled = Vec::new();
    for (node, deadline) in shared.store.drain_deadlines().await? {
        if !tollgate_domain::node::drain_overdue(NodeState::Draining, Some(deadline), now) {
            continue;
        }
        for facts in shared.store.active_job_facts_of_node(&node).await? {
            let Ok(mut change) = job::decide(&facts, JobEvent::Cancelled, facts.lease_epoch) else {
                continue;
            };
            crate::reschedule::attach(shared, &mut change, true).await?;
            match shared.store.apply_job_change(&change, now).await {
                Ok(()) => {}
                // The job ended or moved meanwhile: the next tick looks again.
                Err(StoreError::Conflict { detail, .. }) => {
                    tracing::debug!(node = %node, job = %facts.id, detail, "job moved while its drain deadline passed");
                    continue;
                }
                Err(error) => return Err(error),
            }
            let moved_to = change
                .reschedule
                .as_ref()
                .map(|next| format!("; started again on {} as {}", next.node, next.job))
                .unwrap_or_default();
            tracing::warn!(node = %node, job = %facts.id, %deadline, "drain deadline passed: job cancelled{moved_to}");
            let reason = format!("node {node} was drained and its deadline passed{moved_to}");
            if let Err(error) = shared.sessions.send(
                &node,
                crate::grpc::agent::cancel_command(&facts.id, &reason),
            ) {
                // The agent's next heartbeat (here or on another replica) learns it ended.
                tracing::debug!(job = %facts.id, %error, "cancel not delivered here");
            }
            shared.request_reevaluation(&facts.run);
            cancelled.push(node.clone());
        }
    }
    if !cancelled.is_empty() {
        shared.notify_changed();
        shared.poke_scheduler();
    }
    Ok(cancelled)
}
