//! `GateService`: gate policies per milestone, and evaluating them on demand.

use super::convert::ToProto;
use super::release::no_gate;
use super::{load_release, resolve_milestone, status};
use crate::Shared;
use crate::gates::evaluate_now;
use std::sync::Arc;
use tollgate_domain::release::Track;
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
        let proto::ApplyGateRequest { source, file_name } = request.into_inner();
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
            .put_gate(&policy, &source, self.shared.now())
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
        let proto::GetGateRequest { milestone } = request.into_inner();
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
        let proto::EvaluateGateRequest { release, milestone } = request.into_inner();
        let release = load_release(&self.shared, &release).await?;
        let milestone = resolve_milestone(&release, &milestone)?;
        let evaluated = evaluate_now(&self.shared, &release, &milestone)
            .await?
            .ok_or_else(|| no_gate(&milestone))?;
        Ok(Response::new(evaluated.decision.to_proto()))
    }
}
