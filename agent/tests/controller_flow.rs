//! The agent against an in-test controller: a real tonic `AgentService` on `127.0.0.1:0` that
//! issues a token, assigns one job and withholds its first ack, with the agent running
//! in-process on simulated GPUs and real step processes.

// Helpers outside `#[test]` functions are test code too: a panic is how they report failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tollgate_agent::AgentConfig;
use tollgate_agent::spool::Spool;
use tollgate_proto::v1;
use tollgate_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use tonic::{Request, Response, Status, Streaming};

const TOKEN: &str = "tok-node-1";

/// What the fake controller saw.
#[derive(Default)]
struct Seen {
    registrations: Vec<v1::RegisterRequest>,
    /// Every ReportResult call with its authorization header, in arrival order.
    uploads: Vec<(v1::StepResult, String)>,
    /// Results acknowledged, keyed by (job, step, attempt).
    acked: BTreeMap<(String, u32, u32), v1::StepResult>,
    /// Connect streams opened, with their authorization header.
    connects: Vec<String>,
    /// Events received on the stream.
    events: Vec<v1::agent_event::Event>,
    withheld_once: bool,
    /// Keeps each Connect response stream open.
    command_senders: Vec<mpsc::Sender<Result<v1::ControllerCommand, Status>>>,
}

#[derive(Clone)]
struct FakeController {
    seen: Arc<Mutex<Seen>>,
    deny_registration: bool,
}

fn auth_of<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn assignment() -> v1::ControllerCommand {
    let component = |name: &str, version: &str| v1::Component {
        name: name.into(),
        version: version.into(),
        ..v1::Component::default()
    };
    v1::ControllerCommand {
        command: Some(v1::controller_command::Command::AssignJob(v1::AssignJob {
            job_id: "job-1".into(),
            run_id: "run-1".into(),
            lease_epoch: 7,
            release: "r550".into(),
            components: vec![
                component("driver", "550.54.15"),
                component("vbios", "96.00.89.00.01"),
            ],
            milestone: "lab-qual".into(),
            plan_name: "smoke".into(),
            plan_version: "v1".into(),
            steps: vec![
                v1::StepSpec {
                    index: 0,
                    name: "membw".into(),
                    timeout_ms: 60_000,
                    retries: 0,
                    kind: Some(v1::step_spec::Kind::Exec(v1::ExecStep {
                        command: vec![
                            "sh".into(),
                            "-c".into(),
                            "echo \"@tollgate measure membw_gbps 2950.5 GB/s\"; sleep 0.3".into(),
                        ],
                        ..v1::ExecStep::default()
                    })),
                },
                v1::StepSpec {
                    index: 1,
                    name: "inventory".into(),
                    timeout_ms: 60_000,
                    retries: 0,
                    kind: Some(v1::step_spec::Kind::InventoryCheck(
                        v1::InventoryCheckStep::default(),
                    )),
                },
            ],
        })),
    }
}

#[tonic::async_trait]
impl AgentService for FakeController {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::Registration>, Status> {
        if self.deny_registration {
            return Err(Status::permission_denied("node token does not match"));
        }
        let request = request.into_inner();
        let node_name = request.node_name.clone();
        self.seen.lock().unwrap().registrations.push(request);
        Ok(Response::new(v1::Registration {
            node_name,
            node_token: TOKEN.into(),
            heartbeat_interval_ms: 200,
            lease_grace_ms: 2000,
        }))
    }

    type ConnectStream = ReceiverStream<Result<v1::ControllerCommand, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<v1::AgentEvent>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let auth = auth_of(&request);
        let mut inbound = request.into_inner();
        let (sender, receiver) = mpsc::channel(8);
        {
            let mut seen = self.seen.lock().unwrap();
            seen.connects.push(auth);
            if seen.connects.len() == 1 {
                sender.try_send(Ok(assignment())).unwrap();
            }
            seen.command_senders.push(sender);
        }
        let seen = Arc::clone(&self.seen);
        tokio::spawn(async move {
            while let Ok(Some(event)) = inbound.message().await {
                if let Some(event) = event.event {
                    seen.lock().unwrap().events.push(event);
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn report_result(
        &self,
        request: Request<v1::StepResult>,
    ) -> Result<Response<v1::Ack>, Status> {
        let auth = auth_of(&request);
        let result = request.into_inner();
        let mut seen = self.seen.lock().unwrap();
        seen.uploads.push((result.clone(), auth));
        if result.job_id == "job-stale" {
            return Err(Status::failed_precondition("stale lease epoch"));
        }
        if !seen.withheld_once {
            // Committed, but the ack never reaches the agent: it must send the result again.
            seen.withheld_once = true;
            return Err(Status::unavailable("ack withheld by the test"));
        }
        let key = (result.job_id.clone(), result.step_index, result.attempt);
        let duplicate = seen.acked.insert(key, result).is_some();
        Ok(Response::new(v1::Ack { duplicate }))
    }

    async fn push_telemetry(
        &self,
        _request: Request<Streaming<v1::TelemetryBatch>>,
    ) -> Result<Response<v1::Ack>, Status> {
        Ok(Response::new(v1::Ack { duplicate: false }))
    }

    async fn enroll(
        &self,
        _request: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        Err(Status::unimplemented(
            "this fake controller enrolls no node",
        ))
    }

    async fn renew_certificate(
        &self,
        _request: Request<v1::RenewCertificateRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        Err(Status::unimplemented(
            "this fake controller signs no certificate",
        ))
    }
}

/// Serves `controller` on an ephemeral loopback port; returns its URL.
async fn serve(controller: FakeController) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(controller))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    format!("http://{address}")
}

/// Waits until `done` holds. The bound only stops a broken agent from hanging the suite.
async fn wait_until(seen: &Arc<Mutex<Seen>>, done: impl Fn(&Seen) -> bool) {
    for _ in 0..1200 {
        if done(&seen.lock().unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the agent did not get there within a minute");
}

fn spooled_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".pb"))
        .collect()
}

#[tokio::test]
async fn the_agent_runs_an_assigned_job_and_delivers_every_result() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let url = serve(FakeController {
        seen: Arc::clone(&seen),
        deny_registration: false,
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::simulated(&url, "node-1", 2, state.path().to_owned());
    config.sample_interval = Duration::from_millis(100);
    config.labels.insert("sku".into(), "hgx-h100".into());

    // A result left over from an earlier run whose lease has since moved on.
    let spool = Spool::open(state.path().join("spool")).unwrap();
    spool
        .write(&v1::StepResult {
            job_id: "job-stale".into(),
            step_name: "old".into(),
            attempt: 1,
            outcome: v1::Outcome::Passed as i32,
            ..v1::StepResult::default()
        })
        .unwrap();
    drop(spool);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(tollgate_agent::run(config, async {
        let _ = stopped.await;
    }));

    // The controller acknowledges before the agent deletes the spooled file, so wait for both.
    let spool_dir = state.path().join("spool");
    wait_until(&seen, |seen| {
        seen.acked.len() == 2 && spooled_files(&spool_dir).is_empty()
    })
    .await;
    stop.send(()).unwrap();
    agent.await.unwrap().expect("the agent shuts down cleanly");

    let seen = seen.lock().unwrap();
    let registration = &seen.registrations[0];
    assert_eq!(registration.node_name, "node-1");
    assert_eq!(
        registration.labels.get("sku").map(String::as_str),
        Some("hgx-h100")
    );
    assert_eq!(registration.node_token, "", "first enrollment has no token");
    let inventory = registration.inventory.as_ref().expect("inventory");
    assert_eq!(inventory.gpu_source, "simulated");
    assert_eq!(inventory.gpus.len(), 2);

    let bearer = format!("Bearer {TOKEN}");
    assert!(
        seen.connects.iter().all(|auth| *auth == bearer),
        "{:?}",
        seen.connects
    );
    assert!(seen.uploads.iter().all(|(_, auth)| *auth == bearer));
    assert!(seen.events.iter().any(|event| matches!(
        event,
        v1::agent_event::Event::JobAccepted(accepted) if accepted.job_id == "job-1" && accepted.lease_epoch == 7
    )));
    assert!(
        seen.events
            .iter()
            .any(|event| matches!(event, v1::agent_event::Event::Heartbeat(_)))
    );

    // Upload order: the stale leftover first (rejected), then the withheld one, then replays.
    let order: Vec<(&str, u32)> = seen
        .uploads
        .iter()
        .map(|(result, _)| (result.job_id.as_str(), result.step_index))
        .collect();
    assert_eq!(order[0], ("job-stale", 0));
    assert_eq!(
        order.iter().filter(|key| **key == ("job-1", 0)).count(),
        2,
        "the result whose ack was withheld is sent again: {order:?}"
    );

    let exec = &seen.acked[&("job-1".to_owned(), 0, 1)];
    assert_eq!(exec.outcome, v1::Outcome::Passed as i32, "{}", exec.message);
    assert_eq!(exec.lease_epoch, 7);
    assert_eq!(exec.exit_code, Some(0));
    assert_eq!(exec.measurements.len(), 1);
    assert_eq!(exec.measurements[0].name, "membw_gbps");
    assert_eq!(exec.measurements[0].value, 2950.5);
    assert_eq!(exec.measurements[0].unit, "GB/s");
    assert_eq!(exec.telemetry.len(), 2);
    for gpu in &exec.telemetry {
        assert!(gpu.gpu_uuid.starts_with("GPU-"));
        let temp = gpu
            .fields
            .iter()
            .find(|summary| summary.field == "gpu_temp_c")
            .expect("temperature summary");
        assert!(temp.samples >= 2 && temp.max >= 60.0, "{temp:?}");
        assert!(
            gpu.fields
                .iter()
                .all(|summary| summary.field != "fan_speed_pct")
        );
    }
    assert!(exec.log_tail.contains("@tollgate measure membw_gbps"));
    assert!(exec.started_at.is_some() && exec.finished_at.is_some());

    let check = &seen.acked[&("job-1".to_owned(), 1, 1)];
    assert_eq!(
        check.outcome,
        v1::Outcome::Passed as i32,
        "{}",
        check.message
    );
    assert_eq!(
        check.inventory.as_ref().unwrap().driver_version,
        "550.54.15"
    );

    assert_eq!(spooled_files(&spool_dir.join("rejected")).len(), 1);
    let token = std::fs::read_to_string(state.path().join("node-token")).unwrap();
    assert_eq!(token, TOKEN);
}

#[tokio::test]
async fn a_refused_registration_stops_the_agent_with_a_clear_error() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let url = serve(FakeController {
        seen,
        deny_registration: true,
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let config = AgentConfig::simulated(&url, "node-1", 1, state.path().to_owned());
    let error = tollgate_agent::run(config, std::future::pending())
        .await
        .expect_err("a refused node cannot run");
    let message = error.to_string();
    assert!(message.contains("refused node 'node-1'"), "{message}");
    assert!(message.contains("node token does not match"), "{message}");
}
