//! `ReleaseService`: registering releases and promoting them along the track, only on a gate
//! that passes when evaluated now.

use super::convert::{NewRelease, ToProto, release_to_proto};
use super::{load_release, status};
use crate::Shared;
use crate::gates::{evaluate_now, explain_not_passed};
use crate::store::StoreError;
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
        let NewRelease {
            name,
            components,
            description,
        } = NewRelease::try_from(request.into_inner())?;
        let track = Track::default();
        let release = Release {
            id: ReleaseId::new(name),
            description,
            components,
            milestone: track.first().to_owned(),
            created_at: self.shared.now(),
            promotions: Vec::new(),
        };
        self.shared.store.create_release(&release).await?;
        tracing::info!(release = %release.id, n_components = release.components.len(), "release created");
        Ok(Response::new(release_to_proto(&release, &track)))
    }

    async fn get_release(
        &self,
        request: Request<proto::GetReleaseRequest>,
    ) -> Result<Response<proto::Release>, Status> {
        let proto::GetReleaseRequest { name } = request.into_inner();
        let release = load_release(&self.shared, &name).await?;
        Ok(Response::new(release_to_proto(&release, &Track::default())))
    }

    async fn list_releases(
        &self,
        request: Request<proto::ListReleasesRequest>,
    ) -> Result<Response<proto::ListReleasesResponse>, Status> {
        let proto::ListReleasesRequest {} = request.into_inner();
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
        let proto::PromoteRequest { name } = request.into_inner();
        let release = load_release(&self.shared, &name).await?;
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
        };
        match self
            .shared
            .store
            .promote_release(&release.id, &promotion)
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
}
