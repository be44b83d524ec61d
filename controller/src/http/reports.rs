//! Downloads of the signed acceptance report (`ReportService/StreamReport`, in-process):
//! HTML, Markdown, JSON or JUnit, streamed as the renderer writes it. A customer token gets
//! the report over its own nodes, as over gRPC.

use super::session::{Caller, PageError};
use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio_stream::StreamExt as _;
use tollgate_proto::v1::{self as pb, report_service_server::ReportService};

/// `StreamReport`.
pub const STREAM_REPORT: &str = "/tollgate.v1.ReportService/StreamReport";
/// The milestone segment meaning the release's current milestone.
pub const CURRENT: &str = "current";

/// `/reports/..`'s query.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ReportQuery {
    #[serde(default)]
    format: String,
}

/// Streams the signed report of a release at a milestone as a file.
pub async fn download(
    caller: Caller,
    Path((release, milestone)): Path<(String, String)>,
    Query(query): Query<ReportQuery>,
) -> Result<Response, PageError> {
    let shared = caller.shared.clone();
    // The signer reads the deployment's current key from the data directory; `run` checked
    // it at start (`report::keys::key_at_start`), and `Signer::key` checks it again.
    let key = crate::report::signing_key::load(&shared.config.data_dir).map_err(|error| {
        PageError::Status(tonic::Status::failed_precondition(format!(
            "no report signing key in the data directory: {error}"
        )))
    })?;
    let api = crate::grpc::report::ReportApi::new(
        shared.clone(),
        crate::report::keys::Signer::new(shared.config.data_dir.clone(), key),
    );
    let format = if query.format.is_empty() {
        "html".to_owned()
    } else {
        query.format
    };
    let milestone = if milestone == CURRENT {
        String::new()
    } else {
        milestone
    };
    let mut stream = caller
        .rpc(
            STREAM_REPORT,
            pb::RenderReportRequest {
                release: release.clone(),
                milestone: milestone.clone(),
                format,
                customer: String::new(),
            },
            |request| api.stream_report(request),
        )
        .await?;
    // The first chunk says what the report is; an error before it is the page's error.
    let first = match stream.next().await {
        Some(chunk) => chunk?,
        None => {
            return Err(PageError::Status(tonic::Status::internal(
                "the report ended before it began",
            )));
        }
    };
    let name = format!(
        "{release}{}.{}",
        if milestone.is_empty() {
            String::new()
        } else {
            format!("-{milestone}")
        },
        first.file_extension
    )
    .replace(
        |c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "_",
    );
    let media_type = first.media_type.clone();
    let digest = first.decision_digest.clone();
    let rest = stream.map(|chunk| {
        chunk
            .map(|chunk| chunk.content)
            .map_err(|status| std::io::Error::other(status.message().to_owned()))
    });
    let body =
        Body::from_stream(tokio_stream::once(Ok::<_, std::io::Error>(first.content)).chain(rest));
    Ok((
        [
            (header::CONTENT_TYPE, media_type),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (
                header::HeaderName::from_static("x-tollgate-decision-digest"),
                digest,
            ),
        ],
        body,
    )
        .into_response())
}
