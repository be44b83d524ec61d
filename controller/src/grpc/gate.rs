//! `GateService`: gate policies per milestone, evaluating them on demand, replaying stored
//! decisions, and waivers (granted and revoked as `tollgate_domain::waiver` decides, with
//! their audit entry).

use super::auth::actor_of;
use super::convert::{ToProto, timestamp_from_proto};
use super::status::FieldErrors;
use super::status::no_gate;
use super::{load_release, load_release_for, new_id, resolve_milestone, status};
use crate::gates::{evaluate_now, replay_at};
use crate::shared::Shared;
use crate::store::{AuditNote, StoreError};
use std::pin::Pin;
use std::sync::Arc;
use tollgate_domain::ReleaseId;
use tollgate_domain::release::Track;
use tollgate_domain::waiver::{WaiverRefusal, WaiverRequest};
use tollgate_proto::v1::{self as proto, gate_service_server::GateService};
use tonic::{Request, Response, Status};

/// The largest decision EvaluateGate answers in one message: the 4 MiB a gRPC client decodes
/// by default. A larger one (thousands of failing nodes) is refused, naming StreamDecision.
pub const UNARY_DECISION_BYTES: usize = 4 * 1024 * 1024;

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

    /// The decision EvaluateGate and StreamDecision answer: evaluated now (for a customer,
    /// over its own nodes), or replayed as stored at `at`.
    async fn decide(
        &self,
        request: Request<proto::EvaluateGateRequest>,
    ) -> Result<proto::Decision, Status> {
        let customer = super::auth::customer_of(&request);
        let proto::EvaluateGateRequest {
            release,
            milestone,
            at,
        } = super::convert::bounded(request.into_inner())?;
        // A release only for other customers is, to a customer, one that does not exist: not
        // even its milestones and rules are told.
        let release = load_release_for(&self.shared, &release, customer.as_deref()).await?;
        let milestone = resolve_milestone(&release, &milestone)?;
        if let Some(customer) = customer {
            // A customer's decision is evaluated now over its own nodes' evidence, as a
            // customer-scoped report's is; stored decisions are the whole fleet's.
            if at.is_some() {
                return Err(status::invalid_field(
                    "at",
                    "replays the whole fleet's stored decision, which a customer token may \
                     not read; leave it out to evaluate over your own nodes now",
                ));
            }
            let scope = crate::report::CustomerScope {
                label: tollgate_domain::access::CUSTOMER_LABEL.to_owned(),
                value: customer,
            };
            let evaluated =
                super::report::evaluate(&self.shared, &release, &milestone, Some(&scope)).await?;
            return Ok(evaluated.decision.to_proto());
        }
        if let Some(at) = at {
            let at = timestamp_from_proto(&at)
                .ok_or_else(|| status::invalid_field("at", "is not a valid timestamp"))?;
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
            return Ok(decision);
        }
        let evaluated = evaluate_now(&self.shared, &release, &milestone)
            .await?
            .ok_or_else(|| no_gate(&milestone))?;
        Ok(evaluated.decision.to_proto())
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
        if source.trim().is_empty() {
            return Err(status::invalid_field(
                "source",
                "is empty; send the gate file's text",
            ));
        }
        let file_name = if file_name.trim().is_empty() {
            "gate.yaml".to_owned()
        } else {
            file_name
        };
        let policy = tollgate_domain::gate::parse_gate(&file_name, &source)
            .map_err(|errors| status::invalid_spec(&errors))?;
        let track = Track::default();
        if !track.contains(&policy.milestone) {
            return Err(status::invalid_field(
                "milestone",
                format!(
                    "'{}' in {file_name} is not on the track ({})",
                    policy.milestone,
                    track.milestones.join(", ")
                ),
            ));
        }
        let note = AuditNote::new(
            self.shared.now(),
            &actor,
            "gate.apply",
            format!("gate/{}", policy.milestone),
        )
        .details(serde_json::json!({ "version": policy.version() }));
        self.shared
            .store
            .put_gate(&policy, &source, self.shared.now(), &note)
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
            return Err(status::invalid_field(
                "milestone",
                "is empty; give a milestone",
            ));
        }
        // ApplyGate takes only milestones on the track, so no other can have a gate.
        let track = Track::default();
        if !track.contains(&milestone) {
            return Err(status::invalid_field(
                "milestone",
                format!(
                    "'{milestone}' is not on the track ({}); give one of them",
                    track.milestones.join(", ")
                ),
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
        let decision = self.decide(request).await?;
        let n_bytes = prost::Message::encoded_len(&decision);
        if n_bytes > UNARY_DECISION_BYTES {
            return Err(status::decision_too_large(
                &decision,
                n_bytes,
                UNARY_DECISION_BYTES,
            ));
        }
        Ok(Response::new(decision))
    }

    type StreamDecisionStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::DecisionPart, Status>> + Send>>;

    async fn stream_decision(
        &self,
        request: Request<proto::EvaluateGateRequest>,
    ) -> Result<Response<Self::StreamDecisionStream>, Status> {
        let identity = super::limits::identity_of(&request);
        let permit = super::limits::open_stream(&self.shared, identity, "StreamDecision")?;
        let decision = self.decide(request).await?;
        let parts = tollgate_wire::decision_parts::split_for_stream(decision);
        let stream = tokio_stream::iter(parts.into_iter().map(Ok));
        Ok(Response::new(Box::pin(super::limits::holding(
            permit, stream,
        ))))
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
            issue,
        } = super::convert::bounded(request.into_inner())?;
        let now = self.shared.now();
        let mut errors = FieldErrors::new();
        let expires_at = match expires_at.map(|at| timestamp_from_proto(&at)) {
            Some(None) => {
                errors.add("expires_at", "is not a valid timestamp");
                None
            }
            Some(at) => at,
            None => None,
        };
        let request = WaiverRequest {
            id: new_id("waiver"),
            release,
            rule_id,
            reason,
            ticket,
            approver: actor.clone(),
            expires_at,
            ttl_seconds,
            nodes,
            skus,
            steps,
            issue: (issue != 0).then_some(issue),
        };
        // Every bad field at once, before anything is loaded.
        if let Err(found) = tollgate_domain::waiver::check_request(&request, now) {
            errors.extend(found);
        }
        errors.finish(()).map_err(status::invalid_fields)?;
        let release = load_release(&self.shared, &request.release).await?;
        let milestone = resolve_milestone(&release, &milestone)?;
        if let Some(issue) = request.issue
            && self.shared.store.issue(issue).await?.is_none()
        {
            return Err(status::not_found(format!(
                "issue #{issue} (list them with `tollgate issue list`)"
            )));
        }
        let gate = self.shared.store.get_gate(&milestone).await?;
        let waiver = tollgate_domain::waiver::grant(
            request,
            &milestone,
            gate.as_ref().map(|gate| &gate.policy),
            now,
        )
        .map_err(status::waiver_refused)?;
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
            return Err(status::invalid_field("id", "is empty; give a waiver id"));
        }
        // Decided from the waiver as loaded; one revoked meanwhile by another writer loses the
        // compare-and-set, and deciding again from the stored waiver refuses it.
        for _ in 0..2 {
            let now = self.shared.now();
            let existing = self
                .shared
                .store
                .get_waiver(&id)
                .await?
                .ok_or_else(|| status::not_found(format!("waiver {id}")))?;
            let at =
                tollgate_domain::waiver::revoke(&existing, now).map_err(status::waiver_refused)?;
            let note = AuditNote::new(at, &actor, "waiver.revoke", format!("waiver/{id}"))
                .release(&ReleaseId::from(existing.release.as_str()))
                .details(serde_json::json!({
                    "rule_id": existing.rule_id,
                    "milestone": existing.milestone,
                }));
            match self.shared.store.revoke_waiver(&id, at, &note).await {
                Ok(waiver) => {
                    tracing::info!(waiver = id, actor, "waiver revoked");
                    self.shared.notify_changed();
                    return Ok(Response::new(waiver.to_proto()));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(status::waiver_refused(WaiverRefusal::AlreadyRevoked { id }))
    }

    async fn list_waivers(
        &self,
        request: Request<proto::ListWaiversRequest>,
    ) -> Result<Response<proto::ListWaiversResponse>, Status> {
        let proto::ListWaiversRequest {
            release,
            milestone,
            page_size,
            page_token,
        } = super::convert::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        let page = super::pages::by_creation(
            &mut errors,
            tollgate_wire::page::List::Waivers,
            &[&release, &milestone],
            page_size,
            &page_token,
        );
        errors.finish(()).map_err(status::invalid_fields)?;
        let release = load_release(&self.shared, &release).await?;
        let milestone = (!milestone.is_empty()).then_some(milestone.as_str());
        let fetched = self
            .shared
            .store
            .list_waivers_page(&release.id, milestone, page.after, page.fetch())
            .await?;
        let (waivers, next_page_token) =
            page.answer(fetched, |(_, key)| super::pages::created(key));
        let mut answered = Vec::with_capacity(waivers.len());
        for (waiver, _) in &waivers {
            let mut wire = waiver.to_proto();
            // The issue's state now, so a waiver whose issue is closed can be revoked.
            if let Some(issue) = waiver.issue
                && let Some(found) = self.shared.store.issue(issue).await?
            {
                wire.issue_state = found.state.name().to_owned();
            }
            answered.push(wire);
        }
        Ok(Response::new(proto::ListWaiversResponse {
            waivers: answered,
            next_page_token,
        }))
    }
}
