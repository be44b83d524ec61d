//! OpenTelemetry traces, sent over OTLP/gRPC when `--otlp-endpoint` is set (off by default).
//!
//! Off, nothing here costs more than a load of [`enabled`]. On, `main` adds a
//! `tracing-opentelemetry` layer fed by a batch span processor on the tokio runtime; its
//! exporter gives up on a batch after [`EXPORT_TIMEOUT`] and says so once, so an unreachable
//! collector drops spans but never holds up a step or an upload. Every span made here has the
//! target `tollgate_traces`, which the logs leave out.
//!
//! **The trace of a result.** The runner opens a span per step attempt (`step attempt`) and
//! remembers its context by (job, step index, attempt) ([`remember_attempt`]); the uploader
//! opens `result upload` as its child ([`upload_span`]) and puts its W3C `traceparent` in the
//! `ReportResult` call's metadata ([`inject`]), where the controller picks the trace up. A
//! result spooled by an earlier run of the agent uploads in a trace of its own.

use opentelemetry::trace::{SpanContext, TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The target of every span made for traces.
pub const TARGET: &str = "tollgate_traces";

/// How long the exporter waits for the collector with one batch.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// The most step attempts whose contexts wait for their results' upload; beyond, the oldest
/// uploads start traces of their own.
const MAX_REMEMBERED: usize = 1024;

/// Set once, by `main`, when the trace layer is installed.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// A result: job, step index, attempt.
type AttemptKey = (String, u32, u32);

/// Step attempts' span contexts, until their results are acknowledged or refused.
static ATTEMPTS: Mutex<Option<HashMap<AttemptKey, SpanContext>>> = Mutex::new(None);

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

/// Remembers the current span (a step attempt's) as the parent of its result's upload.
pub fn remember_attempt(job: &str, step_index: u32, attempt: u32) {
    if !enabled() {
        return;
    }
    let context = tracing::Span::current()
        .context()
        .span()
        .span_context()
        .clone();
    if !context.is_valid() {
        return;
    }
    let mut attempts = ATTEMPTS.lock().unwrap_or_else(|p| p.into_inner());
    let attempts = attempts.get_or_insert_with(HashMap::new);
    if attempts.len() >= MAX_REMEMBERED {
        attempts.clear();
    }
    attempts.insert((job.to_owned(), step_index, attempt), context);
}

/// Forgets a result's attempt once the controller answered for good.
pub fn forget_attempt(job: &str, step_index: u32, attempt: u32) {
    if !enabled() {
        return;
    }
    if let Some(attempts) = ATTEMPTS.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        attempts.remove(&(job.to_owned(), step_index, attempt));
    }
}

/// The span of one upload of a result: a child of its attempt's span when this agent ran it.
pub fn upload_span(job: &str, step_index: u32, attempt: u32) -> tracing::Span {
    let span = span(|| {
        tracing::info_span!(
            target: "tollgate_traces",
            "result upload",
            otel.kind = "client",
            tollgate.job = job,
            tollgate.step_index = step_index,
            tollgate.attempt = attempt,
        )
    });
    if span.is_none() {
        return span;
    }
    let parent = ATTEMPTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|attempts| {
            attempts
                .get(&(job.to_owned(), step_index, attempt))
                .cloned()
        });
    if let Some(parent) = parent {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
    span
}

/// Puts `span`'s W3C trace context (`traceparent`) into a call's metadata.
pub fn inject(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    use opentelemetry::propagation::TextMapPropagator as _;
    if span.is_none() {
        return;
    }
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .inject_context(&span.context(), &mut MetadataInjector(metadata));
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
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
