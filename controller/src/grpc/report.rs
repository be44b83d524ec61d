//! `ReportService`: gathers a report's input (the gate evaluated now, its evidence, the exact
//! plan versions and the nodes involved) and renders it.

use super::release::no_gate;
use super::{load_release, resolve_milestone};
use crate::Shared;
use crate::gates::evaluate_now;
use crate::report::{CustomerScope, ReportFormat, ReportInput, scope_evidence};
use ed25519_dalek::SigningKey;
use std::collections::BTreeSet;
use std::sync::Arc;
use tollgate_domain::NodeId;
use tollgate_proto::v1::{self as proto, report_service_server::ReportService};
use tonic::{Request, Response, Status};

/// The report service.
#[derive(Debug, Clone)]
pub struct ReportApi {
    shared: Arc<Shared>,
    /// Signs every report; loaded from the data directory at start.
    key: Arc<SigningKey>,
}

impl ReportApi {
    /// A service over the shared state, signing reports with `key`.
    pub fn new(shared: Arc<Shared>, key: SigningKey) -> Self {
        Self {
            shared,
            key: Arc::new(key),
        }
    }
}

#[tonic::async_trait]
impl ReportService for ReportApi {
    async fn render_report(
        &self,
        request: Request<proto::RenderReportRequest>,
    ) -> Result<Response<proto::Report>, Status> {
        let proto::RenderReportRequest {
            release,
            milestone,
            format,
            customer,
        } = request.into_inner();
        let format = if format.is_empty() {
            "html"
        } else {
            format.as_str()
        };
        let format: ReportFormat = format
            .parse()
            .map_err(|message: String| Status::invalid_argument(format!("format: {message}")))?;
        let scope: Option<CustomerScope> = if customer.is_empty() {
            None
        } else {
            Some(customer.parse().map_err(|message: String| {
                Status::invalid_argument(format!("customer: {message}"))
            })?)
        };
        let shared = &self.shared;
        let release = load_release(shared, &release).await?;
        let milestone = resolve_milestone(&release, &milestone)?;
        let evaluated = match &scope {
            None => evaluate_now(shared, &release, &milestone)
                .await?
                .ok_or_else(|| no_gate(&milestone))?,
            // A customer's decision is evaluated over their nodes' evidence alone and is not
            // stored: it is not the release's decision, only a view of it.
            Some(scope) => {
                let gate = shared
                    .store
                    .get_gate(&milestone)
                    .await?
                    .ok_or_else(|| no_gate(&milestone))?;
                let mut evidence = shared.store.load_evidence(&release, &milestone).await?;
                scope_evidence(&mut evidence, scope);
                let decision =
                    tollgate_domain::gate::evaluate(&gate.policy, &evidence, &[], shared.now());
                crate::gates::Evaluated {
                    gate,
                    evidence,
                    decision,
                }
            }
        };

        let mut plans = Vec::new();
        for run in &evaluated.evidence.runs {
            match shared
                .store
                .get_plan(&run.plan_name, Some(run.plan_version.as_str()))
                .await?
            {
                Some(stored) => plans.push(stored.plan),
                None => {
                    tracing::warn!(plan = run.plan_name, version = %run.plan_version, "plan version of a run is missing from the store")
                }
            }
        }
        let node_ids: BTreeSet<&NodeId> = evaluated
            .evidence
            .runs
            .iter()
            .flat_map(|run| run.jobs.iter().map(|job| &job.node))
            .collect();
        let mut nodes = Vec::with_capacity(node_ids.len());
        for node in node_ids {
            if let Some(node) = shared.store.get_node(node).await? {
                nodes.push(node);
            }
        }
        let waivers = shared
            .store
            .list_waivers(&release.id, Some(&milestone))
            .await?;
        let audit_head = shared.store.audit_head().await?;
        let input = ReportInput {
            release,
            milestone,
            policy: evaluated.gate.policy,
            decision: evaluated.decision,
            evidence: evaluated.evidence,
            plans,
            nodes,
            generated_at: shared.now(),
            controller_version: env!("CARGO_PKG_VERSION").to_owned(),
            waivers,
            audit_head,
            scope,
        };
        let release_id = input.release.id.clone();
        // Rendering is CPU work on data in memory; keep it off the request threads.
        let key = self.key.clone();
        let rendered = tokio::task::spawn_blocking(move || {
            let rendered = crate::report::render(&input, format, &key);
            (rendered, input.decision.digest)
        })
        .await
        .map_err(|error| Status::internal(format!("rendering the report failed: {error}")))?;
        let (rendered, digest) = rendered;
        tracing::info!(
            release = %release_id,
            digest,
            n_bytes = rendered.content.len(),
            format = rendered.extension,
            "report rendered"
        );
        Ok(Response::new(proto::Report {
            content: rendered.content,
            media_type: rendered.media_type.to_owned(),
            file_extension: rendered.extension.to_owned(),
            decision_digest: digest,
        }))
    }

    async fn get_public_key(
        &self,
        request: Request<proto::GetPublicKeyRequest>,
    ) -> Result<Response<proto::PublicKey>, Status> {
        let proto::GetPublicKeyRequest {} = request.into_inner();
        let key = self.key.verifying_key();
        Ok(Response::new(proto::PublicKey {
            algorithm: tollgate_domain::report_signature::ALGORITHM.to_owned(),
            public_key: hex::encode(key.as_bytes()),
            fingerprint: tollgate_domain::report_signature::fingerprint(&key),
        }))
    }
}
