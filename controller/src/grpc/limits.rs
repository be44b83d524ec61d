//! Limits at the gRPC edge: who a call counts against ([`identity_of`]), the rate limit on
//! manager calls (an interceptor behind authentication), the largest request each service
//! decodes, and the answer to a larger one (`RESOURCE_EXHAUSTED`, not tonic's `OUT_OF_RANGE`).
//! The counting itself is `crate::limits`; statuses are made in `status.rs`.

use crate::limits::{Identity, StreamPermit};
use crate::shared::Shared;
use std::sync::Arc;
use tollgate_domain::limits;
use tonic::Status;
use tonic::codegen::http;

/// The largest `AgentService` request: a step result carries a log tail
/// (`log-tail`, 64 KiB), up to 10,000 measurements, parsed test results and GPU events (each
/// message trimmed to `message`, 16 KiB) and telemetry summaries of up to 64 GPUs; a
/// `PushTelemetry` batch up to 10,000 samples. A result of a large dcgm or JUnit report is a
/// few MiB; this leaves room without letting one call hold hundreds of MiB.
pub const AGENT_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// The largest request of the services that take files and lists (`PlanService`,
/// `GateService`, `ReleaseService`, `IssueService`): a plan, gate or issue import file
/// (`spec-source`, 1 MiB) or a
/// release's 256 components with artifact URIs (`path`, 4 KiB each) fit twice over.
pub const SPEC_REQUEST_BYTES: usize = limits::REQUEST.max;

/// The largest request of the small manager services (`NodeService`, `RunService`,
/// `ReportService`, `AuditService`): names, ids, selectors (64 labels) and reasons (1 KiB).
pub const SMALL_REQUEST_BYTES: usize = 256 * 1024;

// Every field a service takes fits its request size twice over, so an oversize field is
// refused by name (`INVALID_ARGUMENT`), not by size; checked when compiling.
const _: () = {
    assert!(limits::SPEC_SOURCE.max * 2 <= SPEC_REQUEST_BYTES);
    assert!(limits::PATH.max * 2 <= SPEC_REQUEST_BYTES);
    assert!(limits::REASON.max * 2 <= SMALL_REQUEST_BYTES);
    assert!(limits::LABEL_VALUE.max * limits::LABELS.max * 2 <= SMALL_REQUEST_BYTES);
    assert!(limits::LOG_TAIL.max + limits::MESSAGE.max * 64 <= AGENT_REQUEST_BYTES);
};

/// Who a call counts against for stream and rate limits: the API token's name when the call
/// carries one, else (anonymous) the peer's IP address. Agent calls count against their node
/// (`Identity::node`). The one place that decides; add new credentials here.
pub fn identity_of<T>(request: &tonic::Request<T>) -> Identity {
    match request.extensions().get::<super::auth::Identity>() {
        Some(super::auth::Identity::Token { name, .. }) => Identity::api_token(name),
        _ => Identity::peer(super::auth::peer_addr(request).map(|addr| addr.ip())),
    }
}

/// `authenticate` (the API token interceptor), then the caller's rate limit: a call over it is
/// refused before its handler runs.
pub fn rate_limited(
    mut authenticate: impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone,
    shared: Arc<Shared>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
    move |request: tonic::Request<()>| {
        let request = authenticate(request)?;
        shared.limiter.admit(&identity_of(&request), shared.now())?;
        Ok(request)
    }
}

/// Opens a stream of `rpc` for the call's identity: its permit, or `RESOURCE_EXHAUSTED` when
/// the identity holds the limit.
pub fn open_stream(
    shared: &Shared,
    identity: Identity,
    rpc: &'static str,
) -> Result<StreamPermit, Status> {
    Ok(shared.limiter.open_stream(identity, rpc)?)
}

/// `stream`, holding `permit` until the stream is dropped (the caller closed it, or it ended).
pub fn holding<S: tokio_stream::Stream>(
    permit: StreamPermit,
    stream: S,
) -> impl tokio_stream::Stream<Item = S::Item> {
    use tokio_stream::StreamExt as _;
    stream.map(move |item| {
        let _held = &permit;
        item
    })
}

/// What tonic answers a request over `max_decoding_message_size` (before decoding it).
const TOO_LARGE_PREFIX: &str = "Error, decoded message length too large";

/// Turns tonic's `OUT_OF_RANGE` for an oversize request into `RESOURCE_EXHAUSTED` saying the
/// limit and what to do; every other response passes unchanged. tonic answers the refusal
/// before the handler runs, as a trailers-only response, so its status is in the headers.
pub fn oversize_as_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    // Decoded as a client would (the message travels percent-encoded).
    let Some(message) = Status::from_header_map(headers)
        .filter(|status| status.code() == tonic::Code::OutOfRange)
        .map(|status| status.message().to_owned())
        .filter(|message| message.starts_with(TOO_LARGE_PREFIX))
    else {
        return response;
    };
    // "…: found N bytes, the limit is: M bytes"
    let number_after = |label: &str| {
        message.split_once(label).and_then(|(_, rest)| {
            rest.split_whitespace()
                .next()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .map(str::to_owned)
        })
    };
    let found = number_after("found ");
    let limit = number_after("the limit is: ").unwrap_or_else(|| "its limit".to_owned());
    let status = super::status::request_too_large(found.as_deref(), &limit);
    headers.remove("grpc-status-details-bin");
    if status.add_header(headers).is_err() {
        tracing::warn!(
            "could not rewrite an oversize request's status; the caller sees OUT_OF_RANGE"
        );
    }
    response
}

/// The layer applying [`oversize_as_exhausted`] to every response.
pub type OversizeLayer = tower::util::MapResponseLayer<
    fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>,
>;

/// The [`OversizeLayer`].
pub fn oversize_layer() -> OversizeLayer {
    tower::util::MapResponseLayer::new(oversize_as_exhausted::<tonic::body::Body> as fn(_) -> _)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(code: &str, message: &str) -> http::Response<()> {
        let mut response = http::Response::new(());
        response
            .headers_mut()
            .insert("grpc-status", code.parse().unwrap());
        response
            .headers_mut()
            .insert("grpc-message", message.parse().unwrap());
        response
    }

    #[test]
    fn an_oversize_refusal_becomes_resource_exhausted_naming_the_limit() {
        let rewritten = oversize_as_exhausted(response(
            "11",
            "Error, decoded message length too large: found 104857612 bytes, the limit is: 262144 bytes",
        ));
        let status = Status::from_header_map(rewritten.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("of 104857612 bytes"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("(262144 bytes"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn other_statuses_pass_unchanged() {
        for (code, message) in [("11", "page out of range"), ("3", TOO_LARGE_PREFIX)] {
            let kept = oversize_as_exhausted(response(code, message));
            assert_eq!(kept.headers()["grpc-status"], code);
            assert_eq!(kept.headers()["grpc-message"], message);
        }
    }
}
