//! `GateService`: gate policies per milestone, evaluating them on demand, replaying stored
//! decisions, and waivers.

use super::auth::actor_of;
use super::convert::{ToProto, timestamp_from_proto};
use super::release::no_gate;
use super::{load_release, new_id, resolve_milestone, status};
use crate::gates::{evaluate_now, replay_at};
use crate::shared::Shared;
use crate::store::{AuditNote, StoreError};
use std::sync::Arc;
use tollgate_domain::gate::Waiver;
use tollgate_domain::release::Track;
use tollgate_domain::{NodeId, ReleaseId};
use tollgate_proto::v1::{self as proto, gate_service_server::GateService};
use tonic::{Request, Response, Status};

/// The gate service.
#[derive(Debug, Clone)]
pub struct GateApi {
    shared: Arc<Shared>,
}

impl GateApi {
    /// A service over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl GateService for GateApi {
    async fn apply_gate(
        &self,
        request: Request<proto::ApplyGateRequest>,
    ) -> Result<Response<proto::GatePolicy>, Status> {
        let actor = actor_of(&request);
        let proto::ApplyGateRequest { source, file_name } =
            super::convert::bounded(request.into_inner())?;
        let file_name = if file_name.trim().is_empty() {
            "gate.yaml".to_owned()
        } else {
            file_name
        };
        let policy = tollgate_domain::gate::parse_gate(&file_name, &source)
            .map_err(|errors| status::invalid_spec(&errors))?;
        let track = Track::default();
        if !track.contains(&policy.milestone) {
            return Err(Status::invalid_argument(format!(
                "{file_name}: milestone: '{}' is not on the track ({})",
                policy.milestone,
                track.milestones.join(", ")
            )));
        }
        self.shared
            .store
            .put_gate_audited(
                &policy,
                &source,
                self.shared.now(),
                Some(
                    &AuditNote::new(
                        self.shared.now(),
                        &actor,
                        "gate.apply",
                        format!("gate/{}", policy.milestone),
                    )
                    .details(serde_json::json!({ "version": policy.version() })),
                ),
            )
            .await?;
        tracing::info!(
            milestone = policy.milestone,
            version = policy.version(),
            n_rules = policy.rules.len(),
            "gate applied"
        );
        let stored = self
            .shared
            .store
            .get_gate(&policy.milestone)
            .await?
            .ok_or_else(|| status::not_found(format!("gate of milestone {}", policy.milestone)))?;
        self.shared.notify_changed();
        Ok(Response::new(stored.to_proto()))
    }

    async fn get_gate(
        &self,
        request: Request<proto::GetGateRequest>,
    ) -> Result<Response<proto::GatePolicy>, Status> {
        let proto::GetGateRequest { milestone } = super::convert::bounded(request.into_inner())?;
        if milestone.is_empty() {
            return Err(Status::invalid_argument(
                "milestone: is empty; give a milestone",
            ));
        }
        let stored = self
            .shared
            .store
            .get_gate(&milestone)
            .await?
            .ok_or_else(|| {
                status::not_found(format!(
                    "gate of milestone {milestone} (apply one with `tollgate gate apply -f FILE`)"
                ))
            })?;
        Ok(Response::new(stored.to_proto()))
    }

    async fn evaluate_gate(
        &self,
        request: Request<proto::EvaluateGateRequest>,
    ) -> Result<Response<proto::Decision>, Status> {
        let proto::EvaluateGateRequest {
            release,
            milestone,
            at,
        } = super::convert::bounded(request.into_inner())?;
        let release = load_release(&self.shared, &release).await?;
        let milestone = resolve_milestone(&release, &milestone)?;
        if let Some(at) = at {
            let at = timestamp_from_proto(&at)
                .ok_or_else(|| Status::invalid_argument("at: is not a valid timestamp"))?;
            let replayed = replay_at(&self.shared, &release, &milestone, at)
                .await?
                .ok_or_else(|| {
                    status::not_found(format!(
                        "decision of release {} at milestone {milestone} made at or before {}",
                        release.id,
                        at.to_rfc3339()
                    ))
                })?;
            let note = replayed.describe();
            if replayed.replayed.is_some() && !note.starts_with("replayed") {
                tracing::error!(release = %release.id, milestone, "{note}");
            }
            let mut decision = replayed.stored.to_proto();
            decision.replay = note;
            return Ok(Response::new(decision));
        }
        let evaluated = evaluate_now(&self.shared, &release, &milestone)
            .await?
            .ok_or_else(|| no_gate(&milestone))?;
        Ok(Response::new(evaluated.decision.to_proto()))
    }

    async fn waive(
        &self,
        request: Request<proto::WaiveRequest>,
    ) -> Result<Response<proto::Waiver>, Status> {
        let actor = actor_of(&request);
        let proto::WaiveRequest {
            release,
            milestone,
            rule_id,
            reason,
            ticket,
            expires_at,
            ttl_seconds,
            nodes,
            skus,
            steps,
        } = super::convert::bounded(request.into_inner())?;
        let now = self.shared.now();
        let mut problems = Vec::new();
        if release.trim().is_empty() {
            problems.push("release: is empty; give a release name".to_owned());
        }
        if rule_id.trim().is_empty() {
            problems.push("rule_id: is empty; give the id of the rule to waive".to_owned());
        }
        if reason.trim().is_empty() {
            problems.push("reason: is empty; say why the rule may be waived".to_owned());
        }
        if ticket.trim().is_empty() {
            problems.push("ticket: is empty; give the ticket that tracks the waiver".to_owned());
        }
        let expires_at = match (expires_at, ttl_seconds) {
            (Some(_), ttl) if ttl > 0 => {
                problems.push("expires_at, ttl_seconds: give one of them, not both".to_owned());
                None
            }
            (Some(at), _) => match timestamp_from_proto(&at) {
                Some(at) if at > now => Some(at),
                Some(at) => {
                    problems.push(format!(
                        "expires_at: {} is not in the future",
                        at.to_rfc3339()
                    ));
                    None
                }
                None => {
                    problems.push("expires_at: is not a valid timestamp".to_owned());
                    None
                }
            },
            (None, 0) => {
                problems
                    .push("expires_at, ttl_seconds: both missing; a waiver must expire".to_owned());
                None
            }
            (None, ttl) => i64::try_from(ttl)
                .ok()
                .and_then(chrono::TimeDelta::try_seconds)
                .and_then(|ttl| now.checked_add_signed(ttl))
                .or_else(|| {
                    problems.push(format!("ttl_seconds: {ttl} is too long"));
                    None
                }),
        };
        if !problems.is_empty() {
            return Err(Status::invalid_argument(problems.join("; ")));
        }
        let release = load_release(&self.shared, &release).await?;
        let milestone = resolve_milestone(&release, &milestone)?;
        let gate = self
            .shared
            .store
            .get_gate(&milestone)
            .await?
            .ok_or_else(|| no_gate(&milestone))?;
        if !gate.policy.rules.iter().any(|rule| rule.id == rule_id) {
            let ids: Vec<&str> = gate.policy.rules.iter().map(|r| r.id.as_str()).collect();
            return Err(Status::invalid_argument(format!(
                "rule_id: '{rule_id}' is not a rule of the gate of milestone {milestone} (rules: {})",
                ids.join(", ")
            )));
        }
        let expires_at = expires_at
            .ok_or_else(|| Status::internal("a waiver without an expiry passed validation"))?;
        let waiver = Waiver {
            id: new_id("waiver"),
            release: release.id.to_string(),
            milestone: milestone.clone(),
            rule_id,
            reason: reason.trim().to_owned(),
            ticket: ticket.trim().to_owned(),
            approver: actor.clone(),
            created_at: now,
            expires_at,
            revoked_at: None,
            nodes: nodes.into_iter().map(NodeId::from).collect(),
            skus,
            steps,
        };
        let note = AuditNote::new(
            now,
            &actor,
            "waiver.create",
            format!("waiver/{}", waiver.id),
        )
        .release(&release.id)
        .details(serde_json::to_value(&waiver).unwrap_or_default());
        self.shared.store.create_waiver(&waiver, &note).await?;
        tracing::info!(
            waiver = waiver.id,
            release = %release.id,
            milestone,
            rule = waiver.rule_id,
            actor,
            "waiver granted"
        );
        self.shared.notify_changed();
        Ok(Response::new(waiver.to_proto()))
    }

    async fn revoke_waiver(
        &self,
        request: Request<proto::RevokeWaiverRequest>,
    ) -> Result<Response<proto::Waiver>, Status> {
        let actor = actor_of(&request);
        let proto::RevokeWaiverRequest { id } = super::convert::bounded(request.into_inner())?;
        if id.trim().is_empty() {
            return Err(Status::invalid_argument("id: is empty; give a waiver id"));
        }
        let now = self.shared.now();
        let existing = self
            .shared
            .store
            .get_waiver(&id)
            .await?
            .ok_or_else(|| status::not_found(format!("waiver {id}")))?;
        let note = AuditNote::new(now, &actor, "waiver.revoke", format!("waiver/{id}"))
            .release(&ReleaseId::from(existing.release.as_str()))
            .details(
                serde_json::json!({ "rule_id": existing.rule_id, "milestone": existing.milestone }),
            );
        let waiver = match self.shared.store.revoke_waiver(&id, now, &note).await {
            Err(StoreError::Conflict { .. }) => {
                return Err(Status::failed_precondition(format!(
                    "waiver {id} was revoked already"
                )));
            }
            other => other?,
        };
        tracing::info!(waiver = id, actor, "waiver revoked");
        self.shared.notify_changed();
        Ok(Response::new(waiver.to_proto()))
    }

    async fn list_waivers(
        &self,
        request: Request<proto::ListWaiversRequest>,
    ) -> Result<Response<proto::ListWaiversResponse>, Status> {
        let proto::ListWaiversRequest { release, milestone } =
            super::convert::bounded(request.into_inner())?;
        let release = load_release(&self.shared, &release).await?;
        let milestone = (!milestone.is_empty()).then_some(milestone.as_str());
        let waivers = self
            .shared
            .store
            .list_waivers(&release.id, milestone)
            .await?;
        Ok(Response::new(proto::ListWaiversResponse {
            waivers: waivers.iter().map(ToProto::to_proto).collect(),
        }))
    }
}
