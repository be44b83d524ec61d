//! `ReportService`: gathers what a report shows besides its evidence (the gate evaluated now,
//! the exact plan versions, waivers) and renders it from the store node by node, streamed to
//! the client (`StreamReport`) or in one message (`RenderReport`).

use super::release::no_gate;
use super::{load_release, resolve_milestone};
use crate::Shared;
use crate::gates::evaluate_now;
use crate::report::{
    CustomerScope, ReportError, ReportFormat, ReportHead, render_from_store, scope_evidence,
};
use ed25519_dalek::SigningKey;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
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

impl ReportApi {
    /// Checks a request and gathers what a report shows besides the evidence rows: the gate
    /// evaluated now (over the customer's nodes alone when scoped), the exact plan versions of
    /// the runs, the waivers and the audit head. The evidence the gate read is dropped here;
    /// the report reads it again node by node.
    async fn head(
        &self,
        request: proto::RenderReportRequest,
    ) -> Result<(ReportHead, ReportFormat), Status> {
        let proto::RenderReportRequest {
            release,
            milestone,
            format,
            customer,
        } = request;
        let format = if format.is_empty() {
            "html"
        } else {
            format.as_str()
        };
        let format: ReportFormat = format
            .parse()
            .map_err(|message: String| super::status::invalid_field("format", message))?;
        let scope: Option<CustomerScope> = if customer.is_empty() {
            None
        } else {
            Some(
                customer
                    .parse()
                    .map_err(|message: String| super::status::invalid_field("customer", message))?,
            )
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
                let waivers = shared
                    .store
                    .list_waivers(&release.id, Some(&milestone))
                    .await?;
                let decision = tollgate_domain::gate::evaluate(
                    &gate.policy,
                    &evidence,
                    &waivers,
                    shared.now(),
                );
                crate::gates::Evaluated {
                    gate,
                    evidence: std::sync::Arc::new(evidence),
                    decision,
                }
            }
        };
        let crate::gates::Evaluated {
            gate,
            evidence,
            decision,
        } = evaluated;
        let runs: Vec<(String, tollgate_domain::PlanVersion)> = evidence
            .runs
            .iter()
            .map(|run| (run.plan_name.clone(), run.plan_version.clone()))
            .collect();
        drop(evidence);
        let mut plans = Vec::new();
        for (plan_name, plan_version) in runs {
            match shared
                .store
                .get_plan(&plan_name, Some(plan_version.as_str()))
                .await?
            {
                Some(stored) => plans.push(stored.plan),
                None => {
                    tracing::warn!(plan = plan_name, version = %plan_version, "plan version of a run is missing from the store")
                }
            }
        }
        let waivers = shared
            .store
            .list_waivers(&release.id, Some(&milestone))
            .await?;
        let audit_head = shared.store.audit_head().await?;
        let head = ReportHead {
            evidence_release: release.id.clone(),
            evidence_milestone: milestone.clone(),
            release,
            milestone,
            policy: gate.policy,
            decision,
            plans,
            generated_at: shared.now(),
            controller_version: env!("CARGO_PKG_VERSION").to_owned(),
            waivers,
            audit_head,
            scope,
        };
        Ok((head, format))
    }
}

/// Sends what the renderer writes as `ReportChunk`s of about [`CHUNK_BYTES`]; the first chunk
/// carries the report's media type, extension and decision digest. Runs on the renderer's
/// blocking thread, so it may block on a full channel (a slow client slows the renderer).
struct ChunkWriter {
    sender: mpsc::Sender<Result<proto::ReportChunk, Status>>,
    buffer: Vec<u8>,
    first: Option<proto::ReportChunk>,
}

/// Bytes per streamed chunk: well under gRPC's default 4 MiB message limit.
const CHUNK_BYTES: usize = 256 * 1024;

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let content = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        let chunk = match self.first.take() {
            Some(first) => proto::ReportChunk { content, ..first },
            None => proto::ReportChunk {
                content,
                ..Default::default()
            },
        };
        self.sender.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client stopped reading the report",
            )
        })
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() || self.first.is_some() {
            self.send()?;
        }
        Ok(())
    }
}

fn report_status(error: ReportError) -> Status {
    match error {
        ReportError::Store(error) => Status::from(error),
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl ReportService for ReportApi {
    async fn render_report(
        &self,
        request: Request<proto::RenderReportRequest>,
    ) -> Result<Response<proto::Report>, Status> {
        let (head, format) = self
            .head(super::convert::bounded(request.into_inner())?)
            .await?;
        let release = head.release.id.clone();
        let digest = head.decision.digest.clone();
        let written = render_from_store(
            &self.shared.store,
            head,
            format,
            (*self.key).clone(),
            Vec::new(),
        )
        .await
        .map_err(report_status)?;
        tracing::info!(
            release = %release,
            digest,
            n_bytes = written.n_bytes,
            format = format.extension(),
            "report rendered"
        );
        Ok(Response::new(proto::Report {
            content: written.out,
            media_type: format.media_type().to_owned(),
            file_extension: format.extension().to_owned(),
            decision_digest: digest,
        }))
    }

    type StreamReportStream = ReceiverStream<Result<proto::ReportChunk, Status>>;

    async fn stream_report(
        &self,
        request: Request<proto::RenderReportRequest>,
    ) -> Result<Response<Self::StreamReportStream>, Status> {
        let (head, format) = self
            .head(super::convert::bounded(request.into_inner())?)
            .await?;
        let (sender, receiver) = mpsc::channel(4);
        let release = head.release.id.clone();
        let digest = head.decision.digest.clone();
        let writer = ChunkWriter {
            sender: sender.clone(),
            buffer: Vec::with_capacity(CHUNK_BYTES),
            first: Some(proto::ReportChunk {
                content: Vec::new(),
                media_type: format.media_type().to_owned(),
                file_extension: format.extension().to_owned(),
                decision_digest: digest.clone(),
            }),
        };
        let shared = self.shared.clone();
        let key = (*self.key).clone();
        tokio::spawn(async move {
            match render_from_store(&shared.store, head, format, key, writer).await {
                Ok(written) => tracing::info!(
                    release = %release,
                    digest,
                    n_bytes = written.n_bytes,
                    format = format.extension(),
                    "report streamed"
                ),
                Err(error) => {
                    tracing::warn!(release = %release, %error, "streaming a report failed");
                    let _ = sender.send(Err(report_status(error))).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn render_attestation(
        &self,
        request: Request<proto::RenderAttestationRequest>,
    ) -> Result<Response<proto::Attestation>, Status> {
        let request = super::convert::bounded(request.into_inner())?;
        super::attestation::render(&self.shared, &self.key, request)
            .await
            .map(Response::new)
    }

    async fn get_public_key(
        &self,
        request: Request<proto::GetPublicKeyRequest>,
    ) -> Result<Response<proto::PublicKey>, Status> {
        let proto::GetPublicKeyRequest {} = super::convert::bounded(request.into_inner())?;
        let key = self.key.verifying_key();
        Ok(Response::new(proto::PublicKey {
            algorithm: tollgate_domain::report_signature::ALGORITHM.to_owned(),
            public_key: hex::encode(key.as_bytes()),
            fingerprint: tollgate_domain::report_signature::fingerprint(&key),
        }))
    }
}
