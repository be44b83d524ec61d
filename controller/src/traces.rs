//! OpenTelemetry traces, sent over OTLP/gRPC when `--otlp-endpoint` is set (off by default).
//!
//! Off, nothing here costs more than a load of [`enabled`]: [`span`] hands out
//! `Span::none()`, no exporter exists, and the logs read as before. On, `main` adds a
//! `tracing-opentelemetry` layer fed by a batch span processor on the tokio runtime; its
//! exporter gives up on a batch after [`EXPORT_TIMEOUT`] and says so once ([`LogOnce`]), so an
//! unreachable collector drops spans but never slows or fails a call.
//!
//! Every span made here has the target `tollgate_traces`: the log layer filters that target
//! out (a log line looks the same with traces on), the trace layer takes it, and the events
//! the controller logs at INFO or above within such a span become the span's events.
//!
//! **The trace of a result.** The agent injects the W3C `traceparent` of its upload span
//! (a child of the step attempt's span) into the `ReportResult` call; `grpc/timing.rs`
//! extracts it and makes the RPC span its child; the handling (`record`, the store write
//! included) runs in that span. A result that ends its job asks for its gate's re-evaluation
//! with the current span's context ([`current_context`], kept beside the request in
//! `Shared`); the evaluation span is a **child** of that context when its pass serves exactly
//! one traced request for the gate, and otherwise a root span **linked** to each such context
//! (requests coalesced into one evaluation; at most [`MAX_LINKS`] kept per run).

use opentelemetry::trace::{SpanContext, TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tonic::codegen::http;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The target of every span made for traces (see the module docs).
pub const TARGET: &str = "tollgate_traces";

/// How long the exporter waits for the collector with one batch.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// The most span contexts kept per run waiting for its gate's re-evaluation.
pub const MAX_LINKS: usize = 32;

/// Set once, by `main`, when the trace layer is installed.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are being sent.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `make()` when traces are on, else a disabled span (free).
pub fn span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if enabled() {
        make()
    } else {
        tracing::Span::none()
    }
}

/// The current span's context, when traces are on and it is being recorded.
pub fn current_context() -> Option<SpanContext> {
    if !enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// Makes `span` a child of the W3C trace context in `headers` (`traceparent`), if any.
pub fn parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    use opentelemetry::propagation::TextMapPropagator as _;
    if span.is_none() || !headers.contains_key("traceparent") {
        return;
    }
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Makes `span` a child of the one context in `contexts`, or links it to each of several.
pub fn parent_or_link(span: &tracing::Span, contexts: &[SpanContext]) {
    match contexts {
        [] => {}
        [one] => {
            let _ = span
                .set_parent(opentelemetry::Context::new().with_remote_span_context(one.clone()));
        }
        several => {
            for context in several {
                span.add_link(context.clone());
            }
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The tracer provider; [`Traces::shutdown`] sends what is still queued.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Starts the exporter to `endpoint` (an `http://HOST:PORT` OTLP/gRPC collector) and its
    /// batch processor; call inside the tokio runtime. Returns the tracer for the layer.
    pub fn start(
        endpoint: &str,
        service: &'static str,
        attributes: Vec<opentelemetry::KeyValue>,
    ) -> anyhow::Result<(Self, opentelemetry_sdk::trace::Tracer)> {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|error| anyhow::anyhow!("--otlp-endpoint {endpoint}: {error}"))?;
        let processor =
            opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                LogOnce::new(exporter, endpoint),
                opentelemetry_sdk::runtime::Tokio,
            )
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .with_attributes(attributes)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer(service);
        ENABLED.store(true, Ordering::Relaxed);
        Ok((Self { provider }, tracer))
    }

    /// Sends the spans still queued and stops the processor, waiting at most
    /// `2 * EXPORT_TIMEOUT`. Call it outside the runtime's tasks while the runtime still runs
    /// (the processor's task exports).
    pub fn shutdown(self) {
        let (done, finished) = std::sync::mpsc::channel();
        let provider = self.provider;
        std::thread::spawn(move || {
            let _ = done.send(provider.shutdown());
        });
        match finished.recv_timeout(EXPORT_TIMEOUT * 2) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the last spans may not have been sent"),
            Err(_) => tracing::warn!("the trace collector did not take the last spans in time"),
        }
    }
}

/// The OTLP exporter, saying once that the collector refused or did not answer a batch (the
/// batch is dropped) and once that it answers again.
#[derive(Debug)]
struct LogOnce<E> {
    inner: E,
    endpoint: String,
    failing: AtomicBool,
}

impl<E> LogOnce<E> {
    fn new(inner: E, endpoint: &str) -> Self {
        Self {
            inner,
            endpoint: endpoint.to_owned(),
            failing: AtomicBool::new(false),
        }
    }
}

impl<E: SpanExporter> SpanExporter for LogOnce<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let exported = self.inner.export(batch).await;
        match &exported {
            Err(error) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                endpoint = %self.endpoint,
                %error,
                "the trace collector does not take spans; they are dropped until it does \
                 (said once)"
            ),
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(endpoint = %self.endpoint, "the trace collector takes spans again");
            }
            _ => {}
        }
        exported
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The span of one pass of a controller loop (`scheduler pass`, `lease watchdog tick`,
/// `heartbeat flush`, `fleet telemetry flush`): a root span each.
pub fn pass(name: &'static str) -> tracing::Span {
    span(
        || tracing::info_span!(target: "tollgate_traces", "loop pass", otel.name = name, tollgate.loop = name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Keeps every finished span.
    #[derive(Debug, Clone, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().expect("not poisoned").extend(batch);
            Ok(())
        }
    }

    fn span_context(span: &tracing::Span) -> SpanContext {
        span.context().span().span_context().clone()
    }

    #[test]
    fn an_evaluation_for_one_request_is_its_child_and_for_several_is_linked_to_each() {
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(kept.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let (first, second) = tracing::subscriber::with_default(subscriber, || {
            let first = tracing::info_span!(target: TARGET, "first request");
            let second = tracing::info_span!(target: TARGET, "second request");
            let (first_context, second_context) = (span_context(&first), span_context(&second));
            assert!(first_context.is_valid() && second_context.is_valid());

            let alone = tracing::info_span!(target: TARGET, "alone");
            parent_or_link(&alone, std::slice::from_ref(&first_context));
            drop(alone);
            let coalesced = tracing::info_span!(target: TARGET, "coalesced");
            parent_or_link(&coalesced, &[first_context.clone(), second_context.clone()]);
            drop(coalesced);
            let unrequested = tracing::info_span!(target: TARGET, "unrequested");
            parent_or_link(&unrequested, &[]);
            drop(unrequested);
            (first_context, second_context)
        });
        let spans = kept.0.lock().expect("not poisoned").clone();
        let named = |name: &str| {
            spans
                .iter()
                .find(|span| span.name == name)
                .unwrap_or_else(|| panic!("no span {name}: {spans:#?}"))
        };

        let alone = named("alone");
        assert_eq!(alone.span_context.trace_id(), first.trace_id());
        assert_eq!(alone.parent_span_id, first.span_id());
        assert!(alone.links.is_empty());

        let coalesced = named("coalesced");
        assert_ne!(coalesced.span_context.trace_id(), first.trace_id());
        assert_ne!(coalesced.span_context.trace_id(), second.trace_id());
        assert_eq!(
            coalesced.parent_span_id,
            opentelemetry::trace::SpanId::INVALID
        );
        let linked: Vec<_> = coalesced
            .links
            .iter()
            .map(|link| link.span_context.clone())
            .collect();
        assert_eq!(linked, vec![first, second]);

        let unrequested = named("unrequested");
        assert_eq!(
            unrequested.parent_span_id,
            opentelemetry::trace::SpanId::INVALID
        );
        assert!(unrequested.links.is_empty());
    }
}
