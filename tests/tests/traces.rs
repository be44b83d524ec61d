//! OpenTelemetry traces of the real binaries: a fake OTLP/gRPC collector in the test receives
//! the spans of a `tollgate-controller` and a `tollgate-agent` (simulated GPU) started with
//! `--otlp-endpoint`, while a one-step qualification runs. The tracing subscriber is global per
//! process, so the daemons run as processes (`cargo build --bins` first).
//!
//! Checked: RPC spans carry service, method and status code; the step attempt, its upload, the
//! controller's `ReportResult` call, the result's handling and the gate re-evaluation it asked
//! for are one trace, each the child of the one before. Without the flag nothing is exported,
//! shown on the collector's state after both daemons stopped gracefully (which flushes).

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};
use tollgate_tests::Clients;
use tollgate_tests::process::{ControllerProcess, workspace_binary};

const PLAN: &str = "name: one-step\nselector: {sku: hgx-h100}\nsteps:\n  - {name: only, kind: exec, command: [\"true\"]}\n";

const GATE: &str = "milestone: lab-qual\nrules:\n  - steps-passed: {plan: one-step, steps: [only], min-fraction: 1.0}\n";

/// A span as received, with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    resource: Vec<KeyValue>,
    span: Span,
}

/// The fake collector: keeps every span it is sent.
#[derive(Debug, Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.received.lock().expect("not poisoned");
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|resource| resource.attributes)
                .unwrap_or_default();
            let service = text(&resource, "service.name").unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(Received {
                        service: service.clone(),
                        resource: resource.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Serves on 127.0.0.1:0; returns its `http://` endpoint.
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("collector address");
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Received> {
        self.received.lock().expect("not poisoned").clone()
    }
}

/// An attribute's value as text (strings and integers).
fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value {
        AnyValue {
            value: Some(any_value::Value::StringValue(text)),
        } => Some(text.clone()),
        AnyValue {
            value: Some(any_value::Value::IntValue(number)),
        } => Some(number.to_string()),
        _ => None,
    }
}

/// Starts an agent process with one simulated GPU; SIGTERM stops it gracefully.
fn start_agent(controller_url: &str, dir: &Path, otlp: Option<&str>) -> Child {
    let log = std::fs::File::create(dir.join("agent.log")).expect("agent log file");
    let mut command = Command::new(workspace_binary("tollgate-agent"));
    command
        .args(["--controller", controller_url, "--node", "node-1"])
        .args(["--gpus", "sim:1", "--label", "sku=hgx-h100"])
        .args(["--sample-interval", "100ms", "--fleet-interval", "0s"])
        .arg("--state-dir")
        .arg(dir.join("agent"));
    if let Some(endpoint) = otlp {
        command.args(["--otlp-endpoint", endpoint]);
    }
    command
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start tollgate-agent")
}

async fn stop_agent(mut agent: Child, dir: &Path) {
    if let Some(pid) = agent.id() {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pids fit i32"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(20), agent.wait())
        .await
        .expect("the agent stops within 20 s of SIGTERM")
        .expect("wait for the agent");
    assert!(
        status.success(),
        "tollgate-agent exited with {status}; log:\n{}",
        std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
    );
}

/// Runs a one-step qualification on a controller and an agent process (both sending traces
/// to `otlp` when given), then stops both gracefully.
async fn qualify_once(dir: &Path, otlp: Option<&str>) {
    let extra: Vec<String> = otlp
        .map(|endpoint| vec!["--otlp-endpoint".to_owned(), endpoint.to_owned()])
        .unwrap_or_default();
    let database_url = format!("sqlite://{}/tollgate.db", dir.display());
    let mut controller = ControllerProcess::start_with_args(
        &database_url,
        &dir.join("data"),
        &dir.join("controller.log"),
        Duration::from_secs(10),
        Duration::from_millis(200),
        &extra,
    )
    .await;
    let agent = start_agent(&controller.url, dir, otlp);
    let channel = controller
        .channel()
        .await
        .expect("a channel to the controller");
    let mut clients = Clients::new(channel);
    let run = clients.qualify("r550", 1, PLAN, GATE).await;
    assert_eq!(run.state, "finished", "{run:?}");
    // The gate re-evaluation the result asked for has decided (it logs each decision).
    tollgate_tests::wait_for(Duration::from_secs(20), "the gate decided", || {
        let decided = controller.log_text().contains("gate decided");
        async move { decided.then_some(()) }
    })
    .await;
    stop_agent(agent, dir).await;
    controller.stop().await;
}

fn one<'a>(spans: &'a [Received], what: &str, pick: impl Fn(&Received) -> bool) -> &'a Received {
    let found: Vec<&Received> = spans.iter().filter(|received| pick(received)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {what}, found {}: {found:#?}",
        found.len()
    );
    found[0]
}

fn name_is(received: &Received, service: &str, name: &str) -> bool {
    received.service == service && received.span.name == name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_results_path_from_the_agent_to_the_gate_decision_is_one_trace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let collector = Collector::default();
    let endpoint = collector.serve().await;
    qualify_once(dir.path(), Some(&endpoint)).await;
    let spans = collector.spans();

    // Every RPC: service, method and status code.
    let rpcs: Vec<&Received> = spans
        .iter()
        .filter(|received| text(&received.span.attributes, "rpc.system").as_deref() == Some("grpc"))
        .collect();
    assert!(!rpcs.is_empty(), "no RPC spans: {spans:#?}");
    for rpc in &rpcs {
        assert_eq!(rpc.service, "tollgate-controller");
        let service = text(&rpc.span.attributes, "rpc.service").expect("rpc.service");
        let method = text(&rpc.span.attributes, "rpc.method").expect("rpc.method");
        assert_eq!(rpc.span.name, format!("{service}/{method}"));
        assert!(
            text(&rpc.span.attributes, "rpc.grpc.status_code").is_some(),
            "no status code: {rpc:#?}"
        );
    }
    // A loop pass (the one that sent the job; the other loops' ticks may not have come yet).
    assert!(
        spans
            .iter()
            .any(|received| name_is(received, "tollgate-controller", "scheduler pass")),
        "no scheduler pass span"
    );

    // The result's trace, agent to decision.
    let attempt = one(&spans, "step attempt", |r| {
        name_is(r, "tollgate-agent", "step attempt")
    });
    assert_eq!(
        text(&attempt.span.attributes, "tollgate.step").as_deref(),
        Some("only")
    );
    assert_eq!(
        text(&attempt.resource, "tollgate.node").as_deref(),
        Some("node-1")
    );
    let trace_id = attempt.span.trace_id.clone();
    let upload = one(&spans, "result upload", |r| {
        name_is(r, "tollgate-agent", "result upload")
    });
    let report = one(&spans, "ReportResult call", |r| {
        name_is(
            r,
            "tollgate-controller",
            "tollgate.v1.AgentService/ReportResult",
        )
    });
    assert_eq!(
        text(&report.span.attributes, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    let record = one(&spans, "record result", |r| {
        name_is(r, "tollgate-controller", "record result")
    });
    let evaluation = one(&spans, "gate re-evaluation", |r| {
        name_is(r, "tollgate-controller", "gate re-evaluation")
    });
    for (child, parent) in [
        (upload, attempt),
        (report, upload),
        (record, report),
        (evaluation, record),
    ] {
        assert_eq!(
            child.span.trace_id, trace_id,
            "{} is not in the result's trace",
            child.span.name
        );
        assert_eq!(
            child.span.parent_span_id, parent.span.span_id,
            "{} is not the child of {}",
            child.span.name, parent.span.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_an_otlp_endpoint_nothing_is_exported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let collector = Collector::default();
    // The collector listens, but neither daemon is told about it.
    let _endpoint = collector.serve().await;
    qualify_once(dir.path(), None).await;
    // Both daemons stopped gracefully: anything they meant to send was sent.
    assert!(collector.spans().is_empty(), "{:#?}", collector.spans());
}
