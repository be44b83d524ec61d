//! The tower layer that times every gRPC call for `/metrics`
//! (`tollgate_grpc_server_handling_seconds{service,method,code}`).
//!
//! Cheap on purpose: a map lookup of the path, a clock read on each side and one histogram
//! sample. The time is to the response's headers: a unary call's whole handling, a stream's
//! opening. The code is the `grpc-status` header when the call failed before answering (how
//! tonic answers every error of a unary call), else `OK`: a stream that fails later says so
//! in its trailers, which this layer does not wait for. A path that names no known method is
//! counted as `unknown`/`unknown`, so a client cannot make up label values.
//!
//! With traces on (`crate::traces`), each call also gets a span `SERVICE/METHOD` (kind
//! server; `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code` and its name
//! `rpc.grpc.status`), a child of the caller's `traceparent` when the request carries one.

use crate::shared::Shared;
use prost::Message as _;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codegen::http;
use tracing::Instrument as _;

/// Every method this controller serves, by request path: `(service, method)`.
static KNOWN: LazyLock<HashMap<String, (&'static str, &'static str)>> = LazyLock::new(|| {
    let mut known = HashMap::new();
    let mut add = |service: &str, method: &str| {
        // Leaked once per process: the set is fixed and small, and labels then cost no copy.
        let service: &'static str = Box::leak(service.to_owned().into_boxed_str());
        let method: &'static str = Box::leak(method.to_owned().into_boxed_str());
        known.insert(format!("/{service}/{method}"), (service, method));
    };
    for set in [
        tollgate_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = format!("{package}.{}", service.name.unwrap_or_default());
                for method in service.method {
                    add(&name, &method.name.unwrap_or_default());
                }
            }
        }
    }
    for version in ["v1", "v1alpha"] {
        add(
            &format!("grpc.reflection.{version}.ServerReflection"),
            "ServerReflectionInfo",
        );
    }
    known
});

/// The `code` label of each gRPC status code, as other gRPC exporters spell them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

fn code_of(headers: &http::HeaderMap) -> &'static str {
    match headers.get("grpc-status") {
        None => CODES[0],
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.parse::<usize>().ok())
            .and_then(|code| CODES.get(code).copied())
            .unwrap_or("Unknown"),
    }
}

/// Wraps the gRPC routes in [`Timing`].
#[derive(Debug, Clone)]
pub struct TimingLayer {
    shared: Arc<Shared>,
}

impl TimingLayer {
    /// Times into `shared.metrics`.
    pub fn new(shared: Arc<Shared>) -> Self {
        LazyLock::force(&KNOWN);
        Self { shared }
    }
}

impl<S> tower::Layer<S> for TimingLayer {
    type Service = Timing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timing {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Times each call of `inner`; see the module docs.
#[derive(Debug, Clone)]
pub struct Timing<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Timing<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let (service, method) = KNOWN
            .get(request.uri().path())
            .copied()
            .unwrap_or(("unknown", "unknown"));
        let span = crate::traces::span(|| {
            tracing::info_span!(
                target: "tollgate_traces",
                "rpc",
                otel.name = %format_args!("{service}/{method}"),
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = method,
                rpc.grpc.status_code = tracing::field::Empty,
                rpc.grpc.status = tracing::field::Empty,
            )
        });
        crate::traces::parent_from_headers(&span, request.headers());
        // The handler's work (a unary call's whole handling) runs inside the span.
        let answer = span.in_scope(|| self.inner.call(request));
        let shared = self.shared.clone();
        Box::pin(
            async move {
                let answered = answer.await;
                let code = match &answered {
                    Ok(response) => code_of(response.headers()),
                    Err(_) => "Unknown",
                };
                shared.metrics.rpc(service, method, code, started.elapsed());
                let span = tracing::Span::current();
                if !span.is_none() {
                    let number = CODES.iter().position(|known| *known == code).unwrap_or(2);
                    span.record("rpc.grpc.status_code", number);
                    span.record("rpc.grpc.status", code);
                    if code != "OK" {
                        span.record("otel.status_code", "ERROR");
                    }
                }
                answered
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths_are_every_served_method_and_codes_are_named() {
        assert_eq!(
            KNOWN.get("/tollgate.v1.AgentService/ReportResult"),
            Some(&("tollgate.v1.AgentService", "ReportResult"))
        );
        assert!(KNOWN.contains_key("/grpc.health.v1.Health/Check"));
        assert!(!KNOWN.contains_key("/tollgate.v1.AgentService/Made.Up"));
        let mut headers = http::HeaderMap::new();
        assert_eq!(code_of(&headers), "OK");
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(code_of(&headers), "NotFound");
        headers.insert("grpc-status", http::HeaderValue::from_static("99"));
        assert_eq!(code_of(&headers), "Unknown");
    }
}
