//! `PlanService`: validating and storing plans, versioned by content.

use super::convert::ToProto;
use super::{load_plan, status};
use crate::shared::Shared;
use crate::store::AuditNote;
use std::sync::Arc;
use tollgate_proto::v1::{self as proto, plan_service_server::PlanService};
use tonic::{Request, Response, Status};

/// The plan service.
#[derive(Debug, Clone)]
pub struct PlanApi {
    shared: Arc<Shared>,
}

impl PlanApi {
    /// A service over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// The file name errors mention when the request names none.
fn file_name_or_default(file_name: &str, default: &str) -> String {
    if file_name.trim().is_empty() {
        default.to_owned()
    } else {
        file_name.to_owned()
    }
}

#[tonic::async_trait]
impl PlanService for PlanApi {
    async fn apply_plan(
        &self,
        request: Request<proto::ApplyPlanRequest>,
    ) -> Result<Response<proto::Plan>, Status> {
        let actor = super::auth::actor_of(&request);
        let proto::ApplyPlanRequest { source, file_name } =
            super::convert::bounded(request.into_inner())?;
        if source.trim().is_empty() {
            return Err(super::status::invalid_field(
                "source",
                "is empty; send the plan file's text",
            ));
        }
        let file_name = file_name_or_default(&file_name, "plan.yaml");
        let plan = tollgate_domain::plan::parse_plan(&file_name, &source)
            .map_err(|errors| status::invalid_spec(&errors))?;
        let version = plan.version();
        let is_new = self
            .shared
            .store
            .put_plan(
                &plan,
                &source,
                self.shared.now(),
                &AuditNote::new(
                    self.shared.now(),
                    &actor,
                    "plan.apply",
                    format!("plan/{}@{version}", plan.name),
                )
                .details(serde_json::json!({ "version": version.as_str() })),
            )
            .await?;
        if is_new {
            tracing::info!(plan = plan.name, version = %version, n_steps = plan.steps.len(), "plan applied");
        } else {
            tracing::debug!(plan = plan.name, version = %version, "plan applied again; unchanged");
        }
        let stored = load_plan(&self.shared, &plan.name, Some(version.as_str())).await?;
        Ok(Response::new(stored.to_proto()))
    }

    async fn get_plan(
        &self,
        request: Request<proto::GetPlanRequest>,
    ) -> Result<Response<proto::Plan>, Status> {
        let proto::GetPlanRequest { name, version } =
            super::convert::bounded(request.into_inner())?;
        if name.trim().is_empty() {
            return Err(super::status::invalid_field(
                "name",
                "is empty; give a plan name or name@version",
            ));
        }
        // `name@version` in the name field is accepted too, as StartRun reads it.
        let (name, inline_version) = super::split_plan_ref(&name);
        let version = if version.is_empty() {
            inline_version
        } else {
            Some(version.as_str())
        };
        let stored = load_plan(&self.shared, name, version).await?;
        Ok(Response::new(stored.to_proto()))
    }

    async fn list_plans(
        &self,
        request: Request<proto::ListPlansRequest>,
    ) -> Result<Response<proto::ListPlansResponse>, Status> {
        let proto::ListPlansRequest {} = super::convert::bounded(request.into_inner())?;
        let plans = self.shared.store.list_plans().await?;
        Ok(Response::new(proto::ListPlansResponse {
            plans: plans.iter().map(ToProto::to_proto).collect(),
        }))
    }
}
