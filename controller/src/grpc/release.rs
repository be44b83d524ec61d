//! `ReleaseService`: registering releases and moving them along their lifecycle. Every change
//! (promote, demote, halt, resume) is load -> `tollgate_domain::release::next` -> apply with a
//! compare-and-set on the state it was decided from and its audit entry; a promotion is
//! decided on the gate of the release's milestone evaluated now.

use super::auth::actor_of;
use super::convert::{NewRelease, ToProto, release_to_proto};
use super::status::{self, FieldErrors};
use super::{hide_unseen_holders, load_release, load_release_for};
use crate::gates::evaluate_now;
use crate::shared::Shared;
use crate::store::{AuditNote, StoreError};
use std::sync::Arc;
use tollgate_domain::ReleaseId;
use tollgate_domain::projection::ReleaseProjection;
use tollgate_domain::release::{
    Release, ReleaseChange, ReleaseEvent, ReleaseRefusal, ReleaseState, Track,
};
use tollgate_domain::target::{MilestoneTarget, plan_target};
use tollgate_proto::v1::{self as proto, release_service_server::ReleaseService};
use tollgate_wire::release::DescribedRelease;
use tonic::{Request, Response, Status};

/// How many times a demotion, halt or resume that lost a compare-and-set is decided again from
/// the state found before the caller gets the `Conflict`. A promotion is never decided again:
/// it was asked for from the milestone it was at.
const ATTEMPTS: usize = 3;

/// The release service.
#[derive(Debug, Clone)]
pub struct ReleaseApi {
    shared: Arc<Shared>,
}

impl ReleaseApi {
    /// A service over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// `GetRelease` without the projections: for callers that want the release itself (its
    /// components, say) and should not pay for projecting every release (the Fleet page).
    pub async fn describe_release(
        &self,
        request: Request<proto::GetReleaseRequest>,
    ) -> Result<Response<proto::Release>, Status> {
        let customer = super::auth::customer_of(&request);
        let proto::GetReleaseRequest { name } = super::convert::bounded(request.into_inner())?;
        required_name(&name)?;
        // A customer sees the releases for it and those for no customer in particular, as if
        // no other existed, and none of the other customers a release is for.
        let release = load_release_for(&self.shared, &name, customer.as_deref()).await?;
        let mut wire = current_release(&self.shared, &release.id).await?;
        if let Some(customer) = customer {
            wire.customers.retain(|of| *of == customer);
        }
        Ok(Response::new(wire))
    }
}

/// Where `release` stands now; `NotFound` when it does not exist.
async fn state_of(shared: &Shared, release: &ReleaseId) -> Result<ReleaseState, Status> {
    shared
        .store
        .release_state(release)
        .await?
        .ok_or_else(|| status::not_found(format!("release {release}")))
}

/// `FailedPrecondition` when the release is halted, saying what cannot be done and why.
pub async fn refuse_if_halted(
    shared: &Shared,
    release: &ReleaseId,
    what: &'static str,
) -> Result<(), Status> {
    state_of(shared, release)
        .await?
        .refuse_if_halted(release, what)
        .map_err(status::release_refused)
}

/// A release as stored now, on the wire, with its halt and its plan of record.
async fn current_release(shared: &Shared, release: &ReleaseId) -> Result<proto::Release, Status> {
    let stored = shared
        .store
        .get_release(release)
        .await?
        .ok_or_else(|| status::not_found(format!("release {release}")))?;
    let track = Track::default();
    let targets = in_track_order(&track, shared.store.milestone_targets(release).await?);
    Ok(DescribedRelease {
        release: stored,
        halted_reason: state_of(shared, release).await?.halted,
        targets,
        customers: shared.store.release_customers(release).await?,
        track,
    }
    .to_proto())
}

/// A release's projected milestones on the wire (none for a release created after the
/// projection was made).
fn projections_to_proto(projection: Option<ReleaseProjection>) -> Vec<proto::MilestoneProjection> {
    projection.map_or_else(Vec::new, |projection| {
        projection
            .milestones
            .iter()
            .map(ToProto::to_proto)
            .collect()
    })
}

/// `targets` in the order of `track`'s milestones (a target of a milestone no longer on the
/// track last, by name).
fn in_track_order(track: &Track, mut targets: Vec<MilestoneTarget>) -> Vec<MilestoneTarget> {
    targets.sort_by_key(|target| {
        (
            track.position(&target.milestone).unwrap_or(usize::MAX),
            target.milestone.clone(),
        )
    });
    targets
}

/// Decides `event` for `release` as it stands now and applies the change with the audit entry
/// `note` makes of it. A change that lost the compare-and-set is decided again from the state
/// found (at most `attempts` times; with 1, the caller gets `Moved`).
async fn decide_and_apply(
    shared: &Shared,
    release: &ReleaseId,
    event: impl Fn() -> ReleaseEvent,
    note: impl Fn(&ReleaseChange) -> AuditNote,
    attempts: usize,
) -> Result<ReleaseChange, Status> {
    let track = Track::default();
    let mut lost = None;
    for _ in 0..attempts {
        let state = state_of(shared, release).await?;
        let change = tollgate_domain::release::next(&track, release, &state, event())
            .map_err(status::release_refused)?;
        match shared
            .store
            .change_release(release, &change, &note(&change))
            .await
        {
            Ok(()) => return Ok(change),
            Err(StoreError::Conflict { .. }) => lost = Some(state),
            Err(error) => return Err(error.into()),
        }
    }
    let now = state_of(shared, release).await?;
    Err(status::release_refused(ReleaseRefusal::Moved {
        release: release.clone(),
        was: lost.map_or_else(|| now.milestone.clone(), |state| state.milestone),
        now: now.milestone,
    }))
}

/// The audit entry of a release change made by `actor`, with `details`.
fn release_note(
    shared: &Shared,
    actor: &str,
    action: &str,
    release: &ReleaseId,
    details: serde_json::Value,
) -> AuditNote {
    AuditNote::new(shared.now(), actor, action, format!("release/{release}"))
        .release(release)
        .details(details)
}

#[tonic::async_trait]
impl ReleaseService for ReleaseApi {
    async fn create_release(
        &self,
        request: Request<proto::CreateReleaseRequest>,
    ) -> Result<Response<proto::Release>, Status> {
        let actor = actor_of(&request);
        let NewRelease {
            name,
            components,
            description,
        } = NewRelease::try_from(request.into_inner()).map_err(super::status::invalid_fields)?;
        let track = Track::default();
        let release = Release {
            id: ReleaseId::new(name),
            description,
            components,
            milestone: track.first().to_owned(),
            created_at: self.shared.now(),
            promotions: Vec::new(),
        };
        let note = AuditNote::new(
            release.created_at,
            &actor,
            "release.create",
            format!("release/{}", release.id),
        )
        .release(&release.id)
        .details(serde_json::json!({ "components": release.components }));
        self.shared.store.create_release(&release, &note).await?;
        tracing::info!(release = %release.id, n_components = release.components.len(), "release created");
        Ok(Response::new(release_to_proto(&release, &track)))
    }

    async fn get_release(
        &self,
        request: Request<proto::GetReleaseRequest>,
    ) -> Result<Response<proto::Release>, Status> {
        let customer = super::auth::customer_of(&request);
        let mut wire = self.describe_release(request).await?.into_inner();
        let id = ReleaseId::from(wire.name.as_str());
        let mut projections = crate::projections::project_now(&self.shared).await?;
        let mut projection = projections.remove(&id);
        if let Some(projection) = &mut projection {
            hide_unseen_holders(
                &self.shared,
                customer.as_deref(),
                &mut projection.milestones,
            )
            .await?;
        }
        wire.projections = projections_to_proto(projection);
        wire.blocking_issues = super::issue::blocking_issues(
            &self.shared,
            &id,
            customer.as_deref(),
            self.shared.now(),
        )
        .await?;
        Ok(Response::new(wire))
    }

    async fn list_releases(
        &self,
        request: Request<proto::ListReleasesRequest>,
    ) -> Result<Response<proto::ListReleasesResponse>, Status> {
        let customer = super::auth::customer_of(&request);
        let proto::ListReleasesRequest {
            page_size,
            page_token,
        } = super::convert::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        let page = super::pages::by_creation(
            &mut errors,
            tollgate_wire::page::List::Releases,
            &[],
            page_size,
            &page_token,
        );
        errors.finish(()).map_err(status::invalid_fields)?;
        let track = Track::default();
        let fetched = self
            .shared
            .store
            .list_releases_page(page.after, customer.as_deref(), page.fetch())
            .await?;
        let (releases, next_page_token) =
            page.answer(fetched, |(_, key)| super::pages::created(key));
        let ids: Vec<ReleaseId> = releases
            .iter()
            .map(|(release, _)| release.id.clone())
            .collect();
        let mut targets = self.shared.store.milestone_targets_of(&ids).await?;
        let mut customers = self.shared.store.release_customers_of(&ids).await?;
        let mut halts = std::collections::HashMap::new();
        let mut blocking = std::collections::HashMap::new();
        let now = self.shared.now();
        for id in &ids {
            halts.insert(id.clone(), state_of(&self.shared, id).await?.halted);
            blocking.insert(
                id.clone(),
                super::issue::blocking_issues(&self.shared, id, customer.as_deref(), now).await?,
            );
        }
        let mut projections = crate::projections::project_now(&self.shared).await?;
        projections.retain(|id, _| ids.contains(id));
        hide_unseen_holders(
            &self.shared,
            customer.as_deref(),
            projections
                .values_mut()
                .flat_map(|projection| projection.milestones.iter_mut()),
        )
        .await?;
        Ok(Response::new(proto::ListReleasesResponse {
            releases: releases
                .into_iter()
                .map(|(release, _)| {
                    let targets = targets.remove(&release.id).unwrap_or_default();
                    let projection = projections.remove(&release.id);
                    let blocking_issues = blocking.remove(&release.id).unwrap_or_default();
                    let mut customers = customers.remove(&release.id).unwrap_or_default();
                    if let Some(customer) = &customer {
                        customers.retain(|of| of == customer);
                    }
                    let mut wire = DescribedRelease {
                        targets: in_track_order(&track, targets),
                        customers,
                        halted_reason: halts.remove(&release.id).flatten(),
                        release,
                        track: track.clone(),
                    }
                    .to_proto();
                    wire.projections = projections_to_proto(projection);
                    wire.blocking_issues = blocking_issues;
                    wire
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn promote(
        &self,
        request: Request<proto::PromoteRequest>,
    ) -> Result<Response<proto::PromoteResponse>, Status> {
        let actor = actor_of(&request);
        let proto::PromoteRequest { name } = super::convert::bounded(request.into_inner())?;
        required_name(&name)?;
        let release = load_release(&self.shared, &name).await?;
        let state = state_of(&self.shared, &release.id).await?;
        let track = Track::default();
        // The gate is evaluated only where a promotion could follow: on the track, not halted.
        let decision = if state.halted.is_none() && track.contains(&state.milestone) {
            evaluate_now(&self.shared, &release, &state.milestone)
                .await?
                .map(|evaluated| Box::new(evaluated.decision))
        } else {
            None
        };
        let event = || ReleaseEvent::Promote {
            decision: decision.clone(),
            at: self.shared.now(),
            actor: actor.clone(),
        };
        let note = |change: &ReleaseChange| {
            let digest = change
                .promotion
                .as_ref()
                .map(|p| p.decision_digest.as_str());
            release_note(
                &self.shared,
                &actor,
                "release.promote",
                &release.id,
                serde_json::json!({
                    "from": change.from.milestone,
                    "to": change.to.milestone,
                    "decision_digest": digest,
                    "verdict": "passed",
                }),
            )
        };
        let change = decide_and_apply(&self.shared, &release.id, event, note, 1).await?;
        tracing::info!(
            release = %release.id,
            from = %change.from.milestone,
            to = %change.to.milestone,
            actor,
            "release promoted"
        );
        self.shared.notify_changed();
        let promoted = self
            .shared
            .store
            .get_release(&release.id)
            .await?
            .ok_or_else(|| status::not_found(format!("release {}", release.id)))?;
        Ok(Response::new(proto::PromoteResponse {
            release: Some(release_to_proto(&promoted, &track)),
            decision: decision.map(|decision| decision.to_proto()),
        }))
    }

    async fn demote(
        &self,
        request: Request<proto::DemoteRequest>,
    ) -> Result<Response<proto::Release>, Status> {
        let actor = actor_of(&request);
        let proto::DemoteRequest {
            release,
            to_milestone,
            reason,
        } = super::convert::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        if to_milestone.trim().is_empty() {
            errors.add(
                "to_milestone",
                "is empty; give the milestone to move back to",
            );
        }
        if reason.trim().is_empty() {
            errors.add("reason", "is empty; say why the release is demoted");
        }
        let track = Track::default();
        if !to_milestone.trim().is_empty() && !track.contains(&to_milestone) {
            errors.add(
                "to_milestone",
                format!(
                    "'{to_milestone}' is not on the track ({}); give one of them",
                    track.milestones.join(", ")
                ),
            );
        }
        errors.finish(()).map_err(status::invalid_fields)?;
        let release = load_release(&self.shared, &release).await?;
        let reason = reason.trim();
        let event = || ReleaseEvent::Demote {
            to: to_milestone.clone(),
        };
        let note = |change: &ReleaseChange| {
            release_note(
                &self.shared,
                &actor,
                "release.demote",
                &release.id,
                serde_json::json!({
                    "from": change.from.milestone,
                    "to": change.to.milestone,
                    "reason": reason,
                }),
            )
        };
        let change = decide_and_apply(&self.shared, &release.id, event, note, ATTEMPTS).await?;
        tracing::info!(release = %release.id, from = %change.from.milestone, to = %change.to.milestone, actor, "release demoted");
        self.shared.notify_changed();
        Ok(Response::new(
            current_release(&self.shared, &release.id).await?,
        ))
    }

    async fn halt(
        &self,
        request: Request<proto::HaltRequest>,
    ) -> Result<Response<proto::Release>, Status> {
        let actor = actor_of(&request);
        let proto::HaltRequest { release, reason } = super::convert::bounded(request.into_inner())?;
        if reason.trim().is_empty() {
            return Err(status::invalid_field(
                "reason",
                "is empty; say why the release is halted",
            ));
        }
        let release = load_release(&self.shared, &release).await?;
        let reason = reason.trim();
        let event = || ReleaseEvent::Halt {
            reason: reason.to_owned(),
        };
        let note = |_: &ReleaseChange| {
            release_note(
                &self.shared,
                &actor,
                "release.halt",
                &release.id,
                serde_json::json!({ "reason": reason }),
            )
        };
        decide_and_apply(&self.shared, &release.id, event, note, ATTEMPTS).await?;
        tracing::info!(release = %release.id, actor, reason, "release halted");
        self.shared.notify_changed();
        Ok(Response::new(
            current_release(&self.shared, &release.id).await?,
        ))
    }

    async fn resume(
        &self,
        request: Request<proto::ResumeRequest>,
    ) -> Result<Response<proto::Release>, Status> {
        let actor = actor_of(&request);
        let proto::ResumeRequest { release, reason } =
            super::convert::bounded(request.into_inner())?;
        let release = load_release(&self.shared, &release).await?;
        let reason = reason.trim();
        let note = |_: &ReleaseChange| {
            release_note(
                &self.shared,
                &actor,
                "release.resume",
                &release.id,
                serde_json::json!({ "reason": reason }),
            )
        };
        decide_and_apply(
            &self.shared,
            &release.id,
            || ReleaseEvent::Resume,
            note,
            ATTEMPTS,
        )
        .await?;
        tracing::info!(release = %release.id, actor, "release resumed");
        self.shared.notify_changed();
        Ok(Response::new(
            current_release(&self.shared, &release.id).await?,
        ))
    }

    async fn set_milestone_target(
        &self,
        request: Request<proto::SetMilestoneTargetRequest>,
    ) -> Result<Response<proto::Release>, Status> {
        let actor = actor_of(&request);
        let request = request.into_inner();
        // Every bad field in one answer: the texts over their limits, then (below) what the
        // domain refuses, before the release is looked up.
        let mut errors = FieldErrors::new();
        tollgate_wire::Bounded::check_bounds(&request, &mut errors);
        let proto::SetMilestoneTargetRequest {
            release,
            milestone,
            target_date,
            reason,
        } = request;
        let track = Track::default();
        let decide = |current: Option<&MilestoneTarget>| {
            plan_target(
                &track,
                current,
                milestone.trim(),
                &target_date,
                Some(&reason),
                &actor,
                self.shared.now(),
            )
        };
        if release.trim().is_empty() {
            errors.add("release", "is empty; give a release name");
        }
        if let Err(refusals) = decide(None) {
            for refusal in refusals {
                errors.add(refusal.field(), refusal.to_string());
            }
        }
        errors.finish(()).map_err(status::invalid_fields)?;
        let release = load_release(&self.shared, &release).await?;
        let mut moved = None;
        for _ in 0..ATTEMPTS {
            let targets = self.shared.store.milestone_targets(&release.id).await?;
            let current = targets.iter().find(|t| t.milestone == milestone.trim());
            // The request passed these checks above; only the date moved from differs now.
            let change = decide(current).map_err(|refusals| {
                let mut errors = FieldErrors::new();
                for refusal in refusals {
                    errors.add(refusal.field(), refusal.to_string());
                }
                errors.finish(()).map_or_else(status::invalid_fields, |()| {
                    status::invalid_field("milestone", "could not be decided")
                })
            })?;
            let note = release_note(
                &self.shared,
                &actor,
                "release.target",
                &release.id,
                serde_json::json!({
                    "milestone": change.to.milestone,
                    "from": change.from,
                    "to": change.to.target,
                    "reason": change.to.reason,
                }),
            );
            match self
                .shared
                .store
                .set_milestone_target(&release.id, &change, &note)
                .await
            {
                Ok(()) => {
                    moved = Some(change);
                    break;
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        let Some(change) = moved else {
            return Err(StoreError::Conflict {
                what: format!("target of release {} at {}", release.id, milestone.trim()),
                detail: "moved by others meanwhile; try again".into(),
            }
            .into());
        };
        tracing::info!(
            release = %release.id,
            milestone = %change.to.milestone,
            from = ?change.from,
            to = %change.to.target,
            actor,
            "milestone target set"
        );
        Ok(Response::new(
            current_release(&self.shared, &release.id).await?,
        ))
    }

    async fn set_customers(
        &self,
        request: Request<proto::SetCustomersRequest>,
    ) -> Result<Response<proto::Release>, Status> {
        let actor = actor_of(&request);
        let proto::SetCustomersRequest { release, customers } =
            super::convert::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        if release.trim().is_empty() {
            errors.add("release", "is empty; give a release name");
        }
        for (idx, customer) in customers.iter().enumerate() {
            if customer.trim().is_empty() {
                errors.add(
                    format!("customers[{idx}]"),
                    "is empty; give a customer's name",
                );
            }
        }
        errors.finish(()).map_err(status::invalid_fields)?;
        let release = load_release(&self.shared, &release).await?;
        let mut customers: Vec<String> = customers.iter().map(|c| c.trim().to_owned()).collect();
        customers.sort();
        customers.dedup();
        let before = self.shared.store.release_customers(&release.id).await?;
        let note = release_note(
            &self.shared,
            &actor,
            "release.customers",
            &release.id,
            serde_json::json!({ "from": before, "to": customers }),
        );
        self.shared
            .store
            .set_release_customers(&release.id, &customers, &note)
            .await?;
        tracing::info!(release = %release.id, ?customers, actor, "release customers set");
        Ok(Response::new(
            current_release(&self.shared, &release.id).await?,
        ))
    }
}

/// `InvalidArgument` naming `name` when a request's release name is empty.
fn required_name(name: &str) -> Result<(), Status> {
    if name.trim().is_empty() {
        return Err(status::invalid_field(
            "name",
            "is empty; give a release name",
        ));
    }
    Ok(())
}
