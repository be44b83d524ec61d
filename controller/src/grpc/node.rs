//! `NodeService`: the fleet as lab operators see it, cordoning and health; and applying the
//! node lifecycle changes that registration and an agent's connection make.
//!
//! Every state change here is load -> `tollgate_domain::node::next_state` -> apply with a
//! compare-and-set on the state it was decided from; a lost race is decided again from the
//! state found, at most [`ATTEMPTS`] times.

use super::convert::{ToProto, check_labels};
use super::status::{FieldErrors, invalid_fields, not_found};
use crate::group_commit::GroupCommit;
use crate::shared::Shared;
use crate::store::{
    AuditNote, EncodedRegistration, Registration, RegistrationFacts, Store, StoreError,
};
use std::sync::Arc;
use tollgate_domain::fleet::{Health, Inventory, Labels, Node, NodeState, Selector};
use tollgate_domain::node::{HealthChange, HealthEvent, NodeEvent, NodeRefusal, next_state};
use tollgate_domain::plan::StepKind;
use tollgate_domain::result::{Outcome, StepResult};
use tollgate_domain::{NodeId, ReleaseId, Timestamp};
use tollgate_proto::v1::{self as proto, node_service_server::NodeService};
use tonic::{Request, Response, Status};

/// How many times a change that lost a compare-and-set is decided again from what the store
/// holds now before the caller gets the `Conflict` (`Aborted`: retry the call).
pub const ATTEMPTS: usize = 3;

/// What a node state change could not do: the domain refused it, or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeChangeError {
    /// The node's lifecycle does not allow it.
    #[error("node {node}: {refusal}")]
    Refused {
        /// The node.
        node: NodeId,
        /// Why not, and what to do.
        #[source]
        refusal: NodeRefusal,
    },
    /// Another agent registered the node, with its own token, between this registration's
    /// token check and its write.
    #[error(
        "node {node} was registered by another agent at the same moment, with its own token; \
         this registration was not applied. If this machine is node {node}, restore the \
         token file (<state-dir>/node-token) of the agent that holds it; else start this \
         agent with another node name"
    )]
    Claimed {
        /// The node.
        node: NodeId,
    },
    /// The store failed, or the race was lost [`ATTEMPTS`] times.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What proves a registration's claim to its node name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The node's token, checked against the token hash the registration was decided from
    /// (none for a node the store did not know): a registration decided again after losing
    /// a race that finds another hash finds the node claimed by another agent meanwhile,
    /// and is refused (`NodeChangeError::Claimed`) instead of taking the node over.
    Token,
    /// A node certificate naming the node (mTLS): the token, unused, is replaced by every
    /// registration.
    Certificate,
}

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

    /// Applies an operator's change of the node `name` and answers the node as it is after.
    async fn operator_change(
        &self,
        name: &str,
        change: OperatorChange,
        actor: &str,
        reason: &str,
    ) -> Result<Response<proto::Node>, Status> {
        let node = self.load(name).await?;
        let (from, to) = change_by_operator(&self.shared, &node.id, change, actor, reason).await?;
        if from != to {
            tracing::info!(node = %node.id, from = %from, to = %to, actor, reason, "node {}", change.action());
            self.shared.notify_changed();
            if change == OperatorChange::Uncordon {
                self.shared.poke_scheduler();
            }
        }
        let mut node = self.load(name).await?;
        mark_disconnected(&self.shared, std::slice::from_mut(&mut node));
        Ok(Response::new(node.to_proto()))
    }
}

/// What an operator asks of a node's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorChange {
    /// No new jobs.
    Cordon,
    /// Jobs again.
    Uncordon,
    /// No new jobs; `draining` until its active job ends (or is cancelled and rescheduled at
    /// the deadline, if any), then `maintenance`.
    Drain {
        /// When a job still running is cancelled.
        deadline: Option<tollgate_domain::Timestamp>,
    },
    /// For good.
    Retire,
}

impl OperatorChange {
    /// The audit action.
    fn action(self) -> &'static str {
        match self {
            OperatorChange::Cordon => "node.cordon",
            OperatorChange::Uncordon => "node.uncordon",
            OperatorChange::Drain { .. } => "node.drain",
            OperatorChange::Retire => "node.retire",
        }
    }
}

/// Applies an operator's `change` of `node` as `actor` (with `reason`, if any, in the audit
/// entry): decided by `next_state` from the node as loaded and applied with its audit entry,
/// only if the node is still in the state it was decided from (else decided again). Returns
/// the state before and after.
pub async fn change_by_operator(
    shared: &Shared,
    node: &NodeId,
    change: OperatorChange,
    actor: &str,
    reason: &str,
) -> Result<(NodeState, NodeState), NodeChangeError> {
    let mut lost = None;
    for _ in 0..ATTEMPTS {
        let current = load_node(&shared.store, node).await?;
        let active_job = current.current_job.is_some();
        let event = match change {
            OperatorChange::Cordon => NodeEvent::Cordon,
            OperatorChange::Uncordon => NodeEvent::Uncordon { active_job },
            OperatorChange::Drain { .. } => NodeEvent::Drain { active_job },
            OperatorChange::Retire => NodeEvent::Retire {
                active_job,
                pending_jobs: shared.store.pending_jobs_of_node(node).await?,
            },
        };
        let to = decide(node, current.state, event)?;
        let drain_deadline = match change {
            OperatorChange::Drain { deadline } if to == NodeState::Draining => deadline,
            _ => None,
        };
        // Draining a draining node again with a deadline sets (or moves) the deadline.
        if to == current.state && drain_deadline.is_none() {
            return Ok((to, to));
        }
        let mut details = serde_json::json!({ "from": current.state.as_str(), "to": to.as_str() });
        if !reason.is_empty() {
            details["reason"] = reason.into();
        }
        if let Some(deadline) = drain_deadline {
            details["deadline"] = deadline.to_rfc3339().into();
        }
        let note = AuditNote::new(shared.now(), actor, change.action(), format!("node/{node}"))
            .details(details);
        match shared
            .store
            .change_node_state(node, current.state, to, drain_deadline, &note)
            .await
        {
            Ok(()) => return Ok((current.state, to)),
            Err(conflict @ StoreError::Conflict { .. }) => lost = Some(conflict),
            Err(error) => return Err(error.into()),
        }
    }
    Err(lost_race(node, lost).into())
}

/// `next_state`, its refusal naming the node.
fn decide(node: &NodeId, state: NodeState, event: NodeEvent) -> Result<NodeState, NodeChangeError> {
    next_state(state, event).map_err(|refusal| NodeChangeError::Refused {
        node: node.clone(),
        refusal,
    })
}

/// The race a retry loop lost last, or, had it run no attempt ([`ATTEMPTS`] is never 0), a
/// `Conflict` saying so.
fn lost_race(node: &NodeId, lost: Option<StoreError>) -> StoreError {
    lost.unwrap_or_else(|| StoreError::Conflict {
        what: format!("node {node}"),
        detail: "no attempt was made".into(),
    })
}

async fn load_node(store: &Store, node: &NodeId) -> Result<Node, StoreError> {
    store
        .get_node(node)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("node {node}"),
        })
}

/// Registers `node` (labels, inventory, token hash): a node the store does not know starts
/// `ready`; a known one is `Reconnected` (`next_state`: an `unreachable` node comes back
/// `ready`, or `busy` with an active job; a cordon, a drain and a retirement stay), applied
/// with a compare-and-set on the state it was decided from. Returns the state after.
pub async fn register(
    store: &Store,
    node: &NodeId,
    labels: &Labels,
    inventory: &Inventory,
    token_hash: &str,
    now: Timestamp,
) -> Result<NodeState, NodeChangeError> {
    register_reported(
        store,
        None,
        None,
        Claim::Token,
        node,
        labels,
        labels,
        inventory,
        token_hash,
        now,
    )
    .await
}

/// [`register`] a node whose labels of record (`labels`, given at enrollment) differ from
/// those its agent reported (`reported`, kept beside them); with `commits`, its write shares
/// a commit with the others arriving meanwhile (`group_commit.rs`). The first attempt is
/// decided from `facts` when the caller read them already ([`Store::registration_facts`]);
/// with `Claim::Token`, an attempt decided again finds the token hash of that first decision
/// or is refused.
#[allow(clippy::too_many_arguments)]
pub async fn register_reported(
    store: &Store,
    commits: Option<&GroupCommit>,
    mut facts: Option<&RegistrationFacts>,
    claim: Claim,
    node: &NodeId,
    labels: &Labels,
    reported: &Labels,
    inventory: &Inventory,
    token_hash: &str,
    now: Timestamp,
) -> Result<NodeState, NodeChangeError> {
    let mut lost = None;
    // The token hash the first decision was made from.
    let mut decided_from: Option<Option<String>> = facts.map(|facts| facts.token_hash.clone());
    for _ in 0..ATTEMPTS {
        let (known, stored_token_hash) = match facts.take() {
            Some(facts) => (facts.known, facts.token_hash.clone()),
            None => {
                let fresh = store.registration_facts(node).await?;
                match &decided_from {
                    Some(hash) if claim == Claim::Token && *hash != fresh.token_hash => {
                        return Err(NodeChangeError::Claimed { node: node.clone() });
                    }
                    Some(_) => {}
                    None => decided_from = Some(fresh.token_hash.clone()),
                }
                (fresh.known, fresh.token_hash)
            }
        };
        let registration = match known {
            None => Registration::New(tollgate_domain::node::FIRST_STATE),
            Some((state, active_job)) => Registration::Known {
                from: state,
                to: decide(node, state, NodeEvent::Reconnected { active_job })?,
                // A known node has a token hash; were it missing, the compare-and-set misses.
                stored_token_hash: stored_token_hash.unwrap_or_default(),
            },
        };
        let to = match &registration {
            Registration::New(to) | Registration::Known { to, .. } => *to,
        };
        let encoded =
            EncodedRegistration::new(node, labels, reported, inventory, token_hash, registration);
        let written = match commits {
            Some(commits) => commits.register(store, encoded, now).await,
            None => store.register_node(&encoded, now).await,
        };
        match written {
            Ok(()) => return Ok(to),
            Err(conflict @ StoreError::Conflict { .. }) => lost = Some(conflict),
            Err(error) => return Err(error.into()),
        }
    }
    Err(lost_race(node, lost).into())
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn revoke_node(
        &self,
        request: Request<proto::RevokeNodeRequest>,
    ) -> Result<Response<proto::RevokeNodeResponse>, Status> {
        let actor = super::auth::actor_of(&request);
        let proto::RevokeNodeRequest { node_name } = request.into_inner();
        if let Some(message) = tollgate_domain::release::name_problem("node", &node_name) {
            return Err(super::status::invalid_field("node_name", message));
        }
        let node = NodeId::new(node_name);
        let note = AuditNote::new(
            self.shared.now(),
            &actor,
            "node.revoke",
            format!("node/{node}"),
        );
        let serials = self
            .shared
            .store
            .revoke_node_certificates(&node, &note)
            .await?;
        if serials.is_empty() {
            return Err(not_found(format!(
                "a certificate of node {node} that is not revoked yet"
            )));
        }
        self.shared.revocations.add(serials.iter().cloned());
        self.shared.sessions.close_node(&node);
        tracing::warn!(node = %node, ?serials, actor, "node certificates revoked; its stream is closed");
        self.shared.notify_changed();
        Ok(Response::new(proto::RevokeNodeResponse {
            node_name: node.to_string(),
            serials,
        }))
    }

    async fn enroll_node(
        &self,
        request: Request<proto::EnrollNodeRequest>,
    ) -> Result<Response<proto::EnrollNodeResponse>, Status> {
        let actor = super::auth::actor_of(&request);
        super::enroll::enroll_node(&self.shared, &actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_nodes(
        &self,
        request: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        let customer = super::auth::customer_of(&request);
        let proto::ListNodesRequest {
            selector,
            page_size,
            page_token,
        } = super::convert::bounded(request.into_inner())?;
        let selector = Selector(selector.into_iter().collect());
        let mut errors = FieldErrors::new();
        check_labels(&mut errors, "selector", &selector.0);
        let filters: Vec<String> = selector.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
        let page = super::pages::by_name(
            &mut errors,
            tollgate_wire::page::List::Nodes,
            &filters,
            page_size,
            &page_token,
        );
        errors.finish(()).map_err(invalid_fields)?;
        // The page is cut by name before the selector applies, so a page may hold fewer
        // nodes than asked (even none) while next_page_token says more follow.
        let mut fetched = self
            .shared
            .store
            .list_nodes_page(page.after.as_deref(), page.fetch())
            .await?;
        mark_disconnected(&self.shared, &mut fetched);
        let mut drifts =
            crate::drift::of_nodes(&self.shared, &fetched.iter().collect::<Vec<_>>()).await?;
        // Each node with its view, `None` when the selector or the caller's scope leaves it
        // out; the page ends early when its views would outgrow one answer.
        let views: Vec<(NodeId, Option<proto::Node>)> = fetched
            .into_iter()
            .map(|node| {
                let shown = selector.matches(&node.labels)
                    && tollgate_domain::access::sees_node(customer.as_deref(), &node.labels);
                let view = shown.then(|| {
                    let mut view = node.to_proto();
                    view.rollout_drift = drift_to_proto(&node.id, drifts.remove(&node.id));
                    view
                });
                (node.id, view)
            })
            .collect();
        let (views, next_page_token) = page.answer_within(
            views,
            |(id, _)| tollgate_wire::page::After::Name(id.as_str().to_owned()),
            |(_, view)| view.as_ref().map_or(0, prost::Message::encoded_len),
        );
        Ok(Response::new(proto::ListNodesResponse {
            nodes: views.into_iter().filter_map(|(_, view)| view).collect(),
            next_page_token,
            // Fleet-wide counts: not for a customer, who sees their own nodes only.
            fleet_outage: self
                .shared
                .fleet_outage()
                .filter(|_| customer.is_none())
                .map(|outage| proto::FleetOutage {
                    since: Some(tollgate_wire::time::timestamp_to_proto(outage.since)),
                    silent: u32::try_from(outage.silent).unwrap_or(u32::MAX),
                    watched: u32::try_from(outage.watched).unwrap_or(u32::MAX),
                }),
        }))
    }

    async fn get_node(
        &self,
        request: Request<proto::GetNodeRequest>,
    ) -> Result<Response<proto::Node>, Status> {
        let customer = super::auth::customer_of(&request);
        let proto::GetNodeRequest { name } = super::convert::bounded(request.into_inner())?;
        let mut node = self.load(&name).await?;
        // Another customer's node is answered as if it did not exist.
        if !tollgate_domain::access::sees_node(customer.as_deref(), &node.labels) {
            return Err(not_found(format!("node {name}")));
        }
        mark_disconnected(&self.shared, std::slice::from_mut(&mut node));
        let mut view = node.to_proto();
        super::maintenance::node_details(&self.shared, &node, &mut view).await?;
        let mut drifts = crate::drift::of_nodes(&self.shared, &[&node]).await?;
        view.rollout_drift = drift_to_proto(&node.id, drifts.remove(&node.id));
        Ok(Response::new(view))
    }

    async fn add_maintenance_window(
        &self,
        request: Request<proto::AddMaintenanceWindowRequest>,
    ) -> Result<Response<proto::MaintenanceWindow>, Status> {
        let actor = super::auth::actor_of(&request);
        let request = super::convert::bounded(request.into_inner())?;
        super::maintenance::add_window(&self.shared, &actor, request)
            .await
            .map(Response::new)
    }

    async fn list_maintenance_windows(
        &self,
        request: Request<proto::ListMaintenanceWindowsRequest>,
    ) -> Result<Response<proto::ListMaintenanceWindowsResponse>, Status> {
        let proto::ListMaintenanceWindowsRequest { all } =
            super::convert::bounded(request.into_inner())?;
        super::maintenance::list_windows(&self.shared, all)
            .await
            .map(Response::new)
    }

    async fn end_maintenance_window(
        &self,
        request: Request<proto::EndMaintenanceWindowRequest>,
    ) -> Result<Response<proto::MaintenanceWindow>, Status> {
        let actor = super::auth::actor_of(&request);
        let request = super::convert::bounded(request.into_inner())?;
        super::maintenance::end_window(&self.shared, &actor, request)
            .await
            .map(Response::new)
    }

    async fn set_health_plan(
        &self,
        request: Request<proto::SetHealthPlanRequest>,
    ) -> Result<Response<proto::HealthPlan>, Status> {
        let actor = super::auth::actor_of(&request);
        let request = super::convert::bounded(request.into_inner())?;
        super::maintenance::set_health_plan(&self.shared, &actor, request)
            .await
            .map(Response::new)
    }

    async fn list_health_plans(
        &self,
        request: Request<proto::ListHealthPlansRequest>,
    ) -> Result<Response<proto::ListHealthPlansResponse>, Status> {
        let proto::ListHealthPlansRequest {} = super::convert::bounded(request.into_inner())?;
        super::maintenance::list_health_plans(&self.shared)
            .await
            .map(Response::new)
    }

    async fn get_node_telemetry(
        &self,
        request: Request<proto::GetNodeTelemetryRequest>,
    ) -> Result<Response<proto::NodeTelemetry>, Status> {
        let customer = super::auth::customer_of(&request);
        let request = super::convert::bounded(request.into_inner())?;
        super::telemetry::get_node_telemetry(&self.shared, customer.as_deref(), request)
            .await
            .map(Response::new)
    }

    async fn remove_health_plan(
        &self,
        request: Request<proto::RemoveHealthPlanRequest>,
    ) -> Result<Response<proto::HealthPlan>, Status> {
        let actor = super::auth::actor_of(&request);
        let request = super::convert::bounded(request.into_inner())?;
        super::maintenance::remove_health_plan(&self.shared, &actor, request)
            .await
            .map(Response::new)
    }

    async fn set_cordon(
        &self,
        request: Request<proto::SetCordonRequest>,
    ) -> Result<Response<proto::Node>, Status> {
        let actor = super::auth::actor_of(&request);
        let proto::SetCordonRequest { name, cordoned } =
            super::convert::bounded(request.into_inner())?;
        let change = if cordoned {
            OperatorChange::Cordon
        } else {
            OperatorChange::Uncordon
        };
        self.operator_change(&name, change, &actor, "").await
    }

    async fn drain_node(
        &self,
        request: Request<proto::DrainNodeRequest>,
    ) -> Result<Response<proto::Node>, Status> {
        let actor = super::auth::actor_of(&request);
        let proto::DrainNodeRequest {
            name,
            reason,
            deadline_seconds,
        } = super::convert::bounded(request.into_inner())?;
        let max = tollgate_domain::plan::MAX_TIMEOUT.as_secs();
        if deadline_seconds > max {
            return Err(super::status::invalid_field(
                "deadline_seconds",
                format!(
                    "{deadline_seconds} is more than {max} (7 days); give a shorter deadline, or \
                     none to wait for the running job however long it takes"
                ),
            ));
        }
        let deadline = (deadline_seconds > 0).then(|| {
            self.shared.now()
                + chrono::Duration::seconds(i64::try_from(deadline_seconds).unwrap_or(i64::MAX))
        });
        self.operator_change(
            &name,
            OperatorChange::Drain { deadline },
            &actor,
            reason.trim(),
        )
        .await
    }

    async fn retire_node(
        &self,
        request: Request<proto::RetireNodeRequest>,
    ) -> Result<Response<proto::Node>, Status> {
        let actor = super::auth::actor_of(&request);
        let proto::RetireNodeRequest { name, reason } =
            super::convert::bounded(request.into_inner())?;
        if reason.trim().is_empty() {
            return Err(super::status::invalid_field(
                "reason",
                "say why the node is retired, for example --reason \"chassis returned\"",
            ));
        }
        self.operator_change(&name, OperatorChange::Retire, &actor, reason.trim())
            .await
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
        if let Some(change) = change_health(&self.shared, &node.id, &actor, &event).await? {
            tracing::info!(node = %node.id, from = %change.from, to = %change.to, reason, "node health set");
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
    shared: &crate::shared::Shared,
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
        if let Some(change) = change_health(shared, node, "controller", &event).await? {
            tracing::warn!(node = %node, from = %change.from, to = %change.to, reason = change.reason, "node health changed by a finding");
        }
    }
    Ok(())
}

/// Decides what `event` does to `node`'s health as stored (`node::next`) and applies it with
/// its audit entry by `actor`. A change decided from a health another writer changed meanwhile
/// is decided again from the health found, at most [`ATTEMPTS`] times. Returns the change
/// applied, or `None` when the event changes nothing.
/// Makes an enrolled node suspect when the inventory its agent reported does not match its
/// labels of record (`tollgate_domain::node::label_findings` decides).
pub(crate) async fn apply_label_findings(
    shared: &Shared,
    node: &NodeId,
    labels_of_record: &Labels,
    inventory: &Inventory,
) -> Result<(), StoreError> {
    if let Some(event) = tollgate_domain::node::label_findings(labels_of_record, inventory)
        && let Some(change) = change_health(shared, node, "controller", &event).await?
    {
        tracing::warn!(node = %node, to = %change.to, reason = change.reason, "node health changed: labels of record and inventory disagree");
        shared.notify_changed();
    }
    Ok(())
}

pub(crate) async fn change_health(
    shared: &Shared,
    node: &NodeId,
    actor: &str,
    event: &HealthEvent,
) -> Result<Option<HealthChange>, StoreError> {
    let mut lost = None;
    for _ in 0..ATTEMPTS {
        let current = load_node(&shared.store, node).await?;
        let Some(change) = tollgate_domain::node::next(current.health, event) else {
            return Ok(None);
        };
        // The audit keeps what the person wrote; a finding's reason is the change's.
        let reason = match event {
            HealthEvent::OperatorSet { reason, .. } => reason,
            _ => &change.reason,
        };
        let note = AuditNote::new(shared.now(), actor, "node.health", format!("node/{node}"))
            .details(serde_json::json!({
                "from": change.from.as_str(),
                "to": change.to.as_str(),
                "reason": reason,
            }));
        match shared.store.change_node_health(node, &change, &note).await {
            Ok(()) => {
                shared.notify_changed();
                return Ok(Some(change));
            }
            Err(conflict @ StoreError::Conflict { .. }) => lost = Some(conflict),
            Err(error) => return Err(error),
        }
    }
    Err(lost_race(node, lost))
}

/// Shows each node as `node::seen_state` does for whether its agent has a live session on any
/// replica (`Shared::agent_connected`), as run selection sees it. Returns how many it marked.
pub(crate) fn mark_disconnected(shared: &crate::shared::Shared, nodes: &mut [Node]) -> usize {
    let mut n_marked = 0;
    let now = shared.now();
    for node in nodes {
        let seen = tollgate_domain::node::seen_state(
            node.state,
            shared.agent_connected(&node.id, node.last_seen_at, now),
        );
        if seen != node.state {
            node.state = seen;
            n_marked += 1;
        }
    }
    n_marked
}

/// A node's drift after the rollout that updated it, as answered.
fn drift_to_proto(
    node: &NodeId,
    drift: Option<Vec<tollgate_domain::rollout::drift::Drift>>,
) -> Vec<proto::RolloutDrift> {
    drift
        .unwrap_or_default()
        .iter()
        .map(|one| tollgate_wire::fleet::drift_to_proto(node, one))
        .collect()
}
