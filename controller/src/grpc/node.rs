//! `NodeService`: the fleet as lab operators see it, and cordoning.

use super::convert::{ToProto, check_labels};
use super::status::{FieldErrors, invalid_fields, not_found};
use crate::Shared;
use crate::store::StoreError;
use std::sync::Arc;
use tollgate_domain::fleet::{Health, Node, NodeState, Selector};
use tollgate_domain::node::HealthEvent;
use tollgate_domain::plan::StepKind;
use tollgate_domain::result::{Outcome, StepResult};
use tollgate_domain::{NodeId, ReleaseId};
use tollgate_proto::v1::{self as proto, node_service_server::NodeService};
use tonic::{Request, Response, Status};

/// The node service.
#[derive(Debug, Clone)]
pub struct NodeApi {
    shared: Arc<Shared>,
}

impl NodeApi {
    /// A service over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn load(&self, name: &str) -> Result<Node, Status> {
        if name.is_empty() {
            return Err(super::status::invalid_field(
                "name",
                "is empty; give a node name",
            ));
        }
        self.shared
            .store
            .get_node(&NodeId::from(name))
            .await?
            .ok_or_else(|| not_found(format!("node {name}")))
    }
}

/// The state a node moves to when cordoned or uncordoned, or `Err` with why it cannot.
pub fn cordon_state(node: &Node, cordoned: bool) -> Result<NodeState, String> {
    use NodeState as S;
    match (node.state, cordoned) {
        (S::Ready | S::Busy | S::Cordoned, true) => Ok(S::Cordoned),
        (S::Draining, true) => Ok(S::Draining),
        (S::Cordoned | S::Draining, false) if node.current_job.is_some() => Ok(S::Busy),
        (S::Cordoned | S::Draining, false) => Ok(S::Ready),
        (S::Ready | S::Busy, false) => Ok(node.state),
        (S::Unreachable, _) => Err(format!(
            "node {} is unreachable; cordon or uncordon it once its agent is back",
            node.id
        )),
        (S::Retired, _) => Err(format!("node {} is retired", node.id)),
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn list_nodes(
        &self,
        request: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        let proto::ListNodesRequest { selector } = super::convert::bounded(request.into_inner())?;
        let selector = Selector(selector.into_iter().collect());
        let mut errors = FieldErrors::new();
        check_labels(&mut errors, "selector", &selector.0);
        errors.finish(()).map_err(invalid_fields)?;
        let mut nodes = self.shared.store.list_nodes().await?;
        mark_disconnected(&self.shared, &mut nodes);
        Ok(Response::new(proto::ListNodesResponse {
            nodes: nodes
                .iter()
                .filter(|node| selector.matches(&node.labels))
                .map(ToProto::to_proto)
                .collect(),
        }))
    }

    async fn get_node(
        &self,
        request: Request<proto::GetNodeRequest>,
    ) -> Result<Response<proto::Node>, Status> {
        let proto::GetNodeRequest { name } = super::convert::bounded(request.into_inner())?;
        let mut node = self.load(&name).await?;
        mark_disconnected(&self.shared, std::slice::from_mut(&mut node));
        Ok(Response::new(node.to_proto()))
    }

    async fn set_cordon(
        &self,
        request: Request<proto::SetCordonRequest>,
    ) -> Result<Response<proto::Node>, Status> {
        let actor = super::auth::actor_of(&request);
        let proto::SetCordonRequest { name, cordoned } =
            super::convert::bounded(request.into_inner())?;
        let node = self.load(&name).await?;
        let state = cordon_state(&node, cordoned).map_err(Status::failed_precondition)?;
        if state != node.state {
            let action = if cordoned {
                "node.cordon"
            } else {
                "node.uncordon"
            };
            let note = crate::store::AuditNote::new(
                self.shared.now(),
                &actor,
                action,
                format!("node/{}", node.id),
            )
            .details(serde_json::json!({ "from": node.state.as_str(), "to": state.as_str() }));
            self.shared
                .store
                .set_node_state_audited(&node.id, state, Some(&note))
                .await?;
            tracing::info!(node = %node.id, from = %node.state, to = %state, "{}", if cordoned { "node cordoned" } else { "node uncordoned" });
            self.shared.notify_changed();
            if !cordoned {
                self.shared.poke_scheduler();
            }
        }
        let mut node = self.load(&name).await?;
        mark_disconnected(&self.shared, std::slice::from_mut(&mut node));
        Ok(Response::new(node.to_proto()))
    }

    async fn set_health(
        &self,
        request: Request<proto::SetHealthRequest>,
    ) -> Result<Response<proto::Node>, Status> {
        let actor = super::auth::actor_of(&request);
        let proto::SetHealthRequest {
            name,
            health,
            reason,
        } = super::convert::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        let to = match health.parse::<Health>() {
            Ok(to) => Some(to),
            Err(error) => {
                errors.add("health", format!("{error}; give good, suspect or bad"));
                None
            }
        };
        let reason = reason.trim();
        if reason.is_empty() {
            errors.add(
                "reason",
                "is empty; say why, for example --reason 'reseated GPU 3, diag passed'",
            );
        }
        let to = errors
            .finish(to)
            .map_err(invalid_fields)?
            .expect("a health that does not parse is a field error above");
        let node = self.load(&name).await?;
        let event = HealthEvent::OperatorSet {
            to,
            actor: actor.clone(),
            reason: reason.to_owned(),
        };
        if let Some(change) = tollgate_domain::node::next(node.health, &event) {
            let note = crate::store::AuditNote::new(
                self.shared.now(),
                &actor,
                "node.health",
                format!("node/{}", node.id),
            )
            .details(serde_json::json!({
                "from": change.from.as_str(),
                "to": change.to.as_str(),
                "reason": reason,
            }));
            self.shared
                .store
                .change_node_health(&node.id, &change, &note)
                .await?;
            tracing::info!(node = %node.id, from = %change.from, to = %change.to, reason, "node health set");
            self.shared.notify_changed();
            if change.to == Health::Good {
                self.shared.poke_scheduler();
            }
        }
        let mut node = self.load(&name).await?;
        mark_disconnected(&self.shared, std::slice::from_mut(&mut node));
        Ok(Response::new(node.to_proto()))
    }
}

/// Applies the health findings of one stored result to its node (`node::findings`, each
/// decided by `node::next` and applied with its audit entry). A change decided from a health
/// another writer changed meanwhile is decided again from the new health.
pub(crate) async fn apply_findings(
    shared: &crate::Shared,
    node: &NodeId,
    step_kind: &StepKind,
    release: &ReleaseId,
    result: &StepResult,
) -> Result<(), StoreError> {
    let store = &shared.store;
    // Read only what the domain needs to judge this result.
    let recent = if result.outcome == Outcome::Error {
        store
            .recent_outcomes(node, tollgate_domain::node::REPEATED_ERRORS)
            .await?
    } else {
        Vec::new()
    };
    let components = if matches!(step_kind, StepKind::InventoryCheck { .. })
        && result.outcome == Outcome::Failed
    {
        store
            .get_release(release)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("release {release}"),
            })?
            .components
    } else {
        Vec::new()
    };
    for event in tollgate_domain::node::findings(result, step_kind, &components, &recent) {
        for _ in 0..3 {
            let Some(current) = store.get_node(node).await? else {
                return Err(StoreError::NotFound {
                    what: format!("node {node}"),
                });
            };
            let Some(change) = tollgate_domain::node::next(current.health, &event) else {
                break;
            };
            let note = crate::store::AuditNote::new(
                shared.now(),
                "controller",
                "node.health",
                format!("node/{node}"),
            )
            .details(serde_json::json!({
                "from": change.from.as_str(),
                "to": change.to.as_str(),
                "reason": change.reason,
            }));
            match store.change_node_health(node, &change, &note).await {
                Ok(()) => {
                    tracing::warn!(node = %node, from = %change.from, to = %change.to, reason = change.reason, "node health changed by a finding");
                    shared.notify_changed();
                    break;
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
}

/// Shows a `ready` or `busy` node without a live agent session on this controller as
/// `unreachable`, as the scheduler and run selection see it: a node that registered but whose
/// stream is not open yet (or just closed) cannot be sent a job. Returns how many it marked.
pub(crate) fn mark_disconnected(shared: &crate::Shared, nodes: &mut [Node]) -> usize {
    let mut n_marked = 0;
    for node in nodes {
        if matches!(node.state, NodeState::Ready | NodeState::Busy)
            && !shared.sessions.is_connected(&node.id)
        {
            node.state = NodeState::Unreachable;
            n_marked += 1;
        }
    }
    n_marked
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_domain::JobId;
    use tollgate_domain::test_support::node;

    #[test]
    fn cordoning_keeps_a_running_job_and_uncordoning_restores_busy() {
        let mut n = node("n1", "hgx-h100");
        assert_eq!(cordon_state(&n, true), Ok(NodeState::Cordoned));
        n.state = NodeState::Cordoned;
        assert_eq!(cordon_state(&n, false), Ok(NodeState::Ready));
        n.current_job = Some(JobId::from("job-1"));
        assert_eq!(cordon_state(&n, false), Ok(NodeState::Busy));
        n.state = NodeState::Busy;
        assert_eq!(cordon_state(&n, true), Ok(NodeState::Cordoned));
        assert_eq!(cordon_state(&n, false), Ok(NodeState::Busy));
        n.state = NodeState::Unreachable;
        assert!(cordon_state(&n, true).unwrap_err().contains("unreachable"));
    }
}
