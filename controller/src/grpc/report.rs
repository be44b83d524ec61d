//! `ReportService`: gathers what a report shows besides its evidence (the gate evaluated now,
//! the exact plan versions, waivers) and renders it from the store node by node, streamed to
//! the client (`StreamReport`) or in one message (`RenderReport`).

use super::status::{FieldErrors, InvalidFields, invalid_fields, no_current_report_key, no_gate};
use super::{load_release_for, resolve_milestone};
use crate::gates::evaluate_now;
use crate::report::keys::Signer;
use crate::report::{CustomerScope, ReportFormat, ReportHead, render_from_store, scope_evidence};
use crate::shared::Shared;
use crate::store::StoreError;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_domain::plan::Plan;
use tollgate_domain::release::Release;
use tollgate_proto::v1::{self as proto, report_service_server::ReportService};
use tonic::{Request, Response, Status};

/// The report service.
#[derive(Debug, Clone)]
pub struct ReportApi {
    shared: Arc<Shared>,
    /// Signs every report with the deployment's current key; loaded from the data directory
    /// at start, and again after a rotation.
    signer: Arc<Signer>,
}

impl ReportApi {
    /// A service over the shared state, signing reports with `signer`'s key.
    pub fn new(shared: Arc<Shared>, signer: Signer) -> Self {
        Self {
            shared,
            signer: Arc::new(signer),
        }
    }
}

impl ReportApi {
    /// Checks a request and gathers what a report shows besides the evidence rows: the gate
    /// evaluated now (over the customer's nodes alone when scoped), the exact plan versions of
    /// the runs, the waivers and the audit head. A caller scoped to `customer` gets `NotFound`
    /// for a release only for other customers, as for one that does not exist.
    async fn head(
        &self,
        request: proto::RenderReportRequest,
        customer: Option<&str>,
    ) -> Result<(ReportHead, ReportFormat), Status> {
        let proto::RenderReportRequest {
            release,
            milestone,
            format,
            customer: asked_scope,
        } = request;
        let (format, scope) =
            parse_report_request(&format, &asked_scope).map_err(invalid_fields)?;
        let shared = &self.shared;
        let release = load_release_for(shared, &release, customer).await?;
        let milestone = resolve_milestone(&release, &milestone)?;
        let crate::gates::Evaluated {
            gate,
            plans,
            decision,
        } = evaluate(shared, &release, &milestone, scope.as_ref()).await?;
        // The report reads the evidence again, node by node, whole.
        let plans = plans_of_runs(shared, &plans).await?;
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

/// A report request as a customer may make it: over its own nodes, whatever scope it asked
/// for.
fn scoped_to(
    mut request: proto::RenderReportRequest,
    customer: Option<&str>,
) -> proto::RenderReportRequest {
    if let Some(customer) = customer {
        request.customer = tollgate_domain::access::customer_scope(customer);
    }
    request
}

/// The gate of `release` at `milestone` evaluated now: stored, as every evaluation is, for the
/// whole fleet; over the customer's nodes alone, and not stored, when `scope` is given (that
/// decision is not the release's, only a view of it).
pub(crate) async fn evaluate(
    shared: &Shared,
    release: &Release,
    milestone: &str,
    scope: Option<&CustomerScope>,
) -> Result<crate::gates::Evaluated, Status> {
    let Some(scope) = scope else {
        return evaluate_now(shared, release, milestone)
            .await?
            .ok_or_else(|| no_gate(milestone));
    };
    let gate = shared
        .store
        .get_gate(milestone)
        .await?
        .ok_or_else(|| no_gate(milestone))?;
    let mut evidence = shared.store.load_evidence(release, milestone).await?;
    scope_evidence(&mut evidence, scope);
    let waivers = shared
        .store
        .list_waivers(&release.id, Some(milestone))
        .await?;
    let decision = tollgate_domain::gate::evaluate(&gate.policy, &evidence, &waivers, shared.now());
    Ok(crate::gates::Evaluated {
        gate,
        plans: crate::gates::run_plans(&evidence),
        decision,
    })
}

/// The exact plan versions the judged runs ran (`crate::gates::run_plans`); a version missing
/// from the store is logged and left out.
async fn plans_of_runs(
    shared: &Shared,
    runs: &[(String, tollgate_domain::PlanVersion)],
) -> Result<Vec<Plan>, StoreError> {
    let mut plans = Vec::new();
    for (name, version) in runs {
        match shared.store.get_plan(name, Some(version.as_str())).await? {
            Some(stored) => plans.push(stored.plan),
            None => tracing::warn!(
                plan = name,
                %version,
                "plan version of a run is missing from the store"
            ),
        }
    }
    Ok(plans)
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

/// The format (HTML when none is given) and the customer scope of a report request; every
/// bad field is named.
fn parse_report_request(
    format: &str,
    customer: &str,
) -> Result<(ReportFormat, Option<CustomerScope>), InvalidFields> {
    let mut problems = FieldErrors::new();
    let format = if format.is_empty() { "html" } else { format };
    // A bad format is recorded and stands in as HTML; `finish` then returns the problems,
    // never the stand-in.
    let format = format.parse::<ReportFormat>().unwrap_or_else(|message| {
        problems.add("format", message);
        ReportFormat::Html
    });
    let scope = if customer.is_empty() {
        None
    } else {
        customer
            .parse::<CustomerScope>()
            .map_err(|message| problems.add("customer", message))
            .ok()
    };
    problems.finish((format, scope))
}

#[tonic::async_trait]
impl ReportService for ReportApi {
    async fn render_report(
        &self,
        request: Request<proto::RenderReportRequest>,
    ) -> Result<Response<proto::Report>, Status> {
        let customer = super::auth::customer_of(&request);
        let (head, format) = self
            .head(
                scoped_to(
                    super::convert::bounded(request.into_inner())?,
                    customer.as_deref(),
                ),
                customer.as_deref(),
            )
            .await?;
        let key = self.signer.key(&self.shared.store).await?;
        let release = head.release.id.clone();
        let digest = head.decision.digest.clone();
        let written = render_from_store(&self.shared.store, head, format, key, Vec::new()).await?;
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

    type StreamReportStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<proto::ReportChunk, Status>> + Send>,
    >;

    async fn stream_report(
        &self,
        request: Request<proto::RenderReportRequest>,
    ) -> Result<Response<Self::StreamReportStream>, Status> {
        let customer = super::auth::customer_of(&request);
        let permit = super::limits::open_stream(
            &self.shared,
            super::limits::identity_of(&request),
            "StreamReport",
        )?;
        let (head, format) = self
            .head(
                scoped_to(
                    super::convert::bounded(request.into_inner())?,
                    customer.as_deref(),
                ),
                customer.as_deref(),
            )
            .await?;
        let key = self.signer.key(&self.shared.store).await?;
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
                    let _ = sender.send(Err(error.into())).await;
                }
            }
        });
        let stream = super::limits::holding(permit, ReceiverStream::new(receiver));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn render_attestation(
        &self,
        request: Request<proto::RenderAttestationRequest>,
    ) -> Result<Response<proto::Attestation>, Status> {
        let request = super::convert::bounded(request.into_inner())?;
        let key = self.signer.key(&self.shared.store).await?;
        super::attestation::render(&self.shared, &key, request)
            .await
            .map(Response::new)
    }

    async fn get_public_key(
        &self,
        request: Request<proto::GetPublicKeyRequest>,
    ) -> Result<Response<proto::PublicKey>, Status> {
        let proto::GetPublicKeyRequest {} = super::convert::bounded(request.into_inner())?;
        let keys = self.shared.store.report_keys().await?;
        let current =
            tollgate_domain::report_key::current(&keys).ok_or_else(no_current_report_key)?;
        Ok(Response::new(proto::PublicKey {
            algorithm: tollgate_domain::report_signature::ALGORITHM.to_owned(),
            public_key: current.hex(),
            fingerprint: current.fingerprint(),
            keys: keys
                .iter()
                .map(tollgate_wire::report_key_to_proto)
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt as _;

    #[test]
    fn a_report_request_names_every_bad_field_at_once() {
        let status = invalid_fields(parse_report_request("pdf", "acme").unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("format: unknown report format 'pdf'")
                && status.message().contains("customer: "),
            "{}",
            status.message()
        );
        let details = status.get_error_details();
        let fields: Vec<&str> = details
            .bad_request()
            .expect("BadRequest details")
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["format", "customer"]);
    }

    #[test]
    fn a_report_request_defaults_to_html_for_the_whole_fleet() {
        assert_eq!(
            parse_report_request("", "").unwrap(),
            (ReportFormat::Html, None)
        );
        let (format, scope) = parse_report_request("md", "customer=acme").unwrap();
        assert_eq!(format, ReportFormat::Markdown);
        assert_eq!(scope.expect("scoped").value, "acme");
    }
}
