//! `ReleaseService`: registering releases and promoting them along the track, only on a gate
//! that passes when evaluated now.

use super::auth::actor_of;
use super::convert::{NewRelease, ToProto, release_to_proto};
use super::{load_release, status};
use crate::Shared;
use crate::gates::{evaluate_now, explain_not_passed};
use crate::store::{AuditNote, StoreError};
use std::sync::Arc;
use tollgate_domain::ReleaseId;
use tollgate_domain::gate::Verdict;
use tollgate_domain::release::{Promotion, RELEASED, Release, Track};
use tollgate_proto::v1::{self as proto, release_service_server::ReleaseService};
use tonic::{Request, Response, Status};

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
}

/// `FailedPrecondition` when the release is halted, saying what cannot be done and why.
pub async fn refuse_if_halted(
    shared: &Shared,
    release: &ReleaseId,
    what: &str,
) -> Result<(), Status> {
    match shared.store.release_halt(release).await? {
        None => Ok(()),
        Some(reason) => Err(Status::failed_precondition(format!(
            "release {release} is halted ({reason}): it cannot be {what}; resume it with \
             `tollgate resume --release {release}`"
        ))),
    }
}

/// A release as stored now, on the wire, with its halt.
async fn current_release(shared: &Shared, release: &ReleaseId) -> Result<proto::Release, Status> {
    let stored = shared
        .store
        .get_release(release)
        .await?
        .ok_or_else(|| status::not_found(format!("release {release}")))?;
    let mut wire = release_to_proto(&stored, &Track::default());
    wire.halted_reason = shared
        .store
        .release_halt(release)
        .await?
        .unwrap_or_default();
    Ok(wire)
}

/// The message a promote gets when the milestone has no gate.
pub fn no_gate(milestone: &str) -> Status {
    Status::failed_precondition(format!(
        "no gate for milestone {milestone}; apply one with `tollgate gate apply -f FILE`"
    ))
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
        self.shared
            .store
            .create_release_audited(&release, Some(&note))
            .await?;
        tracing::info!(release = %release.id, n_components = release.components.len(), "release created");
        Ok(Response::new(release_to_proto(&release, &track)))
    }

    async fn get_release(
        &self,
        request: Request<proto::GetReleaseRequest>,
    ) -> Result<Response<proto::Release>, Status> {
        let proto::GetReleaseRequest { name } = super::convert::bounded(request.into_inner())?;
        let release = load_release(&self.shared, &name).await?;
        Ok(Response::new(
            current_release(&self.shared, &release.id).await?,
        ))
    }

    async fn list_releases(
        &self,
        request: Request<proto::ListReleasesRequest>,
    ) -> Result<Response<proto::ListReleasesResponse>, Status> {
        let proto::ListReleasesRequest {} = super::convert::bounded(request.into_inner())?;
        let track = Track::default();
        let releases = self.shared.store.list_releases().await?;
        Ok(Response::new(proto::ListReleasesResponse {
            releases: releases
                .iter()
                .map(|release| release_to_proto(release, &track))
                .collect(),
        }))
    }

    async fn promote(
        &self,
        request: Request<proto::PromoteRequest>,
    ) -> Result<Response<proto::PromoteResponse>, Status> {
        let actor = actor_of(&request);
        let proto::PromoteRequest { name } = super::convert::bounded(request.into_inner())?;
        let release = load_release(&self.shared, &name).await?;
        refuse_if_halted(&self.shared, &release.id, "promoted").await?;
        let track = Track::default();
        let from = release.milestone.clone();
        if from == RELEASED {
            return Err(Status::failed_precondition(format!(
                "release {} is already released; there is nothing to promote it to",
                release.id
            )));
        }
        let to = track.next(&from).ok_or_else(|| {
            Status::failed_precondition(format!(
                "release {} is at milestone {from}, which is not on the track ({})",
                release.id,
                track.milestones.join(", ")
            ))
        })?;
        let evaluated = evaluate_now(&self.shared, &release, &from)
            .await?
            .ok_or_else(|| no_gate(&from))?;
        let decision = evaluated.decision;
        if decision.verdict != Verdict::Passed {
            return Err(Status::failed_precondition(explain_not_passed(
                &release.id,
                &decision,
            )));
        }
        let promotion = Promotion {
            from_milestone: from.clone(),
            to_milestone: to.to_owned(),
            at: self.shared.now(),
            decision_digest: decision.digest.clone(),
            actor: actor.clone(),
        };
        let note = AuditNote::new(
            promotion.at,
            &actor,
            "release.promote",
            format!("release/{}", release.id),
        )
        .release(&release.id)
        .details(serde_json::json!({
            "from": from,
            "to": to,
            "decision_digest": decision.digest,
            "verdict": decision.verdict.as_str(),
        }));
        match self
            .shared
            .store
            .promote_release(&release.id, &promotion, &note)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(Status::failed_precondition(format!(
                    "release {} was promoted past {from} by someone else meanwhile",
                    release.id
                )));
            }
            Err(error) => return Err(error.into()),
        }
        tracing::info!(
            release = %release.id,
            from = %from,
            to,
            digest = %decision.digest,
            actor,
            "release promoted"
        );
        self.shared.notify_changed();
        let release = self
            .shared
            .store
            .get_release(&release.id)
            .await?
            .ok_or_else(|| status::not_found(format!("release {}", release.id)))?;
        Ok(Response::new(proto::PromoteResponse {
            release: Some(release_to_proto(&release, &track)),
            decision: Some(decision.to_proto()),
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
        let mut problems = Vec::new();
        if to_milestone.trim().is_empty() {
            problems.push("to_milestone: is empty; give the milestone to move back to");
        }
        if reason.trim().is_empty() {
            problems.push("reason: is empty; say why the release is demoted");
        }
        if !problems.is_empty() {
            return Err(Status::invalid_argument(problems.join("; ")));
        }
        let release = load_release(&self.shared, &release).await?;
        let track = Track::default();
        let position = |milestone: &str| {
            if milestone == RELEASED {
                Some(track.milestones.len())
            } else {
                track.milestones.iter().position(|m| m == milestone)
            }
        };
        let Some(to_idx) = track.milestones.iter().position(|m| *m == to_milestone) else {
            return Err(Status::invalid_argument(format!(
                "to_milestone: '{to_milestone}' is not on the track ({})",
                track.milestones.join(", ")
            )));
        };
        let from = release.milestone.clone();
        if position(&from).is_none_or(|from_idx| to_idx >= from_idx) {
            return Err(Status::failed_precondition(format!(
                "release {} is at {from}; it can only be demoted to an earlier milestone, and {to_milestone} is not",
                release.id
            )));
        }
        let note = AuditNote::new(
            self.shared.now(),
            &actor,
            "release.demote",
            format!("release/{}", release.id),
        )
        .release(&release.id)
        .details(serde_json::json!({ "from": from, "to": to_milestone, "reason": reason.trim() }));
        match self
            .shared
            .store
            .demote_release(&release.id, &from, &to_milestone, &note)
            .await
        {
            Err(StoreError::Conflict { .. }) => {
                return Err(Status::failed_precondition(format!(
                    "release {} moved from {from} meanwhile",
                    release.id
                )));
            }
            other => other?,
        }
        tracing::info!(release = %release.id, from, to = to_milestone, actor, "release demoted");
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
            return Err(Status::invalid_argument(
                "reason: is empty; say why the release is halted",
            ));
        }
        let release = load_release(&self.shared, &release).await?;
        let note = AuditNote::new(
            self.shared.now(),
            &actor,
            "release.halt",
            format!("release/{}", release.id),
        )
        .release(&release.id)
        .details(serde_json::json!({ "reason": reason.trim() }));
        self.shared
            .store
            .set_halt(&release.id, Some(reason.trim()), &note)
            .await?;
        tracing::info!(release = %release.id, actor, reason = reason.trim(), "release halted");
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
        let note = AuditNote::new(
            self.shared.now(),
            &actor,
            "release.resume",
            format!("release/{}", release.id),
        )
        .release(&release.id)
        .details(serde_json::json!({ "reason": reason.trim() }));
        self.shared.store.set_halt(&release.id, None, &note).await?;
        tracing::info!(release = %release.id, actor, "release resumed");
        self.shared.notify_changed();
        Ok(Response::new(
            current_release(&self.shared, &release.id).await?,
        ))
    }
}
