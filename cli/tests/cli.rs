//! The `tollgate` binary as a person meets it, offline: help, validating plan and gate files,
//! and the message an unreachable controller gives.

use assert_cmd::Command;
use std::path::PathBuf;

fn tollgate() -> Command {
    let mut command = Command::cargo_bin("tollgate").expect("the tollgate binary is built");
    // Tests must not pick up a developer's controller, token or config file.
    command
        .env_remove("TOLLGATE_CONTROLLER")
        .env_remove("TOLLGATE_TOKEN")
        .env("XDG_CONFIG_HOME", "/nonexistent/tollgate-test-config");
    command
}

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_every_command() {
    let output = tollgate().arg("--help").output().expect("runs");
    assert!(output.status.success());
    let stdout = text(&output.stdout);
    for command in [
        "node", "release", "plan", "gate", "run", "rollout", "promote", "report", "demo", "status",
        "note",
    ] {
        assert!(
            stdout
                .lines()
                .any(|line| line.trim_start().starts_with(command)),
            "--help does not list {command}:\n{stdout}"
        );
    }
    assert!(stdout.contains("--controller"), "{stdout}");
    assert!(stdout.contains("-o/--output"), "{stdout}");
}

#[test]
fn report_help_says_o_is_the_file() {
    let output = tollgate()
        .args(["report", "--help"])
        .output()
        .expect("runs");
    assert!(output.status.success());
    assert!(text(&output.stdout).contains("-o/--output is the file to write"));
}

#[test]
fn broken_plan_is_rejected_with_file_line_and_problem() {
    let output = tollgate()
        .args(["plan", "validate"])
        .arg(example("plan-broken.yaml"))
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("plan-broken.yaml:11:"), "{stderr}");
    assert!(stderr.contains("steps[1].command"), "{stderr}");
    assert!(
        stderr.contains("steps[1].timeout: 'two minutes' is not a duration"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown step kind 'reboot'"), "{stderr}");
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
}

#[test]
fn demo_plan_validates_offline() {
    let output = tollgate()
        // Validation must not need a controller, even a bogus one.
        .args(["--controller", "http://127.0.0.1:1", "plan", "validate"])
        .arg(example("plan-demo.yaml"))
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("name:     gpu-qual"), "{stdout}");
    assert!(stdout.contains("selector: sku=hgx-h100"), "{stdout}");
    assert!(stdout.contains("version:"), "{stdout}");
    assert!(stdout.contains("2. stress"), "{stdout}");
}

#[test]
fn plan_validate_prints_json() {
    let output = tollgate()
        .args(["plan", "validate", "-o", "json"])
        .arg(example("plan-demo.yaml"))
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
    assert_eq!(value["name"], "gpu-qual");
    assert_eq!(value["steps"].as_array().map(Vec::len), Some(2));
    assert_eq!(value["version"].as_str().map(str::len), Some(64));
}

#[test]
fn demo_gate_validates_offline() {
    let output = tollgate()
        .args(["gate", "validate"])
        .arg(example("gate-lab-qual.yaml"))
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("milestone: lab-qual"), "{stdout}");
    assert!(stdout.contains("telemetry:gpu_temp_c"), "{stdout}");
    assert!(stdout.contains("no-xid"), "{stdout}");
}

#[test]
fn broken_gate_is_rejected_with_file_line_and_problem() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let file = scratch.path().join("gate.yaml");
    std::fs::write(
        &file,
        "milestone: lab-qual\nrules:\n  - telemetry:\n      field: gpu_temp_c\n      aggregate: max\n      condition: \"about 88\"\n",
    )
    .expect("write");
    let output = tollgate()
        .args(["gate", "validate"])
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("gate.yaml:4:"), "{stderr}");
    assert!(stderr.contains("rules[0].telemetry.condition"), "{stderr}");
}

#[test]
fn example_rollout_validates_offline() {
    let output = tollgate()
        .args(["--controller", "http://127.0.0.1:1", "rollout", "validate"])
        .arg(example("rollout-prod.yaml"))
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("is valid"), "{stdout}");
    assert!(stdout.contains("procedure: flash-and-soak"), "{stdout}");
    let output = tollgate()
        .args(["rollout", "validate", "-o", "json"])
        .arg(example("rollout-prod.yaml"))
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
    assert_eq!(value["procedure"]["plan"], "flash-and-soak");
}

#[test]
fn broken_rollout_is_rejected_with_file_line_and_problem() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let file = scratch.path().join("rollout.yaml");
    std::fs::write(
        &file,
        "name: prod\nselector: {env: prod}\nwaves:\n  - percent: 50\nprocedure: {plan: flash}\nhealth:\n  - steps-passed: {max-failed: 0}\n",
    )
    .expect("write");
    let output = tollgate()
        .args(["rollout", "validate"])
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("rollout.yaml:4:"), "{stderr}");
    assert!(
        stderr.contains("the last wave must be percent: 100"),
        "{stderr}"
    );
}

#[test]
fn missing_file_names_the_file() {
    let output = tollgate()
        .args(["plan", "validate", "no-such-plan.yaml"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("reading plan file no-such-plan.yaml"));
}

#[test]
fn a_pdf_without_chromium_says_how_to_get_one_before_calling_the_controller() {
    // No Chromium on PATH: refused before the (unreachable) controller is asked.
    let empty = tempfile::tempdir().expect("tempdir");
    let output = tollgate()
        .env("PATH", empty.path())
        .env_remove("TOLLGATE_CHROMIUM")
        .args([
            "--controller",
            "http://127.0.0.1:1",
            "report",
            "--release",
            "r550",
        ])
        .args(["--format", "pdf"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("no Chromium found on PATH"), "{stderr}");
    assert!(stderr.contains("apt-get install chromium"), "{stderr}");
    assert!(stderr.contains("TOLLGATE_CHROMIUM"), "{stderr}");
    assert!(!stderr.contains("cannot reach the controller"), "{stderr}");

    // A named Chromium that cannot run is named.
    let not_executable = empty.path().join("chrome");
    std::fs::write(&not_executable, "not a program").expect("write");
    let output = tollgate()
        .env("TOLLGATE_CHROMIUM", &not_executable)
        .args([
            "--controller",
            "http://127.0.0.1:1",
            "report",
            "--release",
            "r550",
        ])
        .args(["--format", "pdf"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "TOLLGATE_CHROMIUM={} is not an executable file",
            not_executable.display()
        )),
        "{stderr}"
    );
}

#[test]
fn unreachable_controller_says_so_clearly() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let output = tollgate()
        .args(["--controller", "http://127.0.0.1:1", "node", "list"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot reach the controller at http://127.0.0.1:1:"),
        "{stderr}"
    );
    assert!(stderr.contains("tollgate-controller serve"), "{stderr}");
    assert!(stderr.contains("--controller"), "{stderr}");
}

#[test]
fn token_files_others_may_read_are_refused_and_flag_tokens_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("token");
    std::fs::write(&file, "s3cret\n").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let output = tollgate()
        .args([
            "--controller",
            "http://127.0.0.1:1",
            "node",
            "list",
            "--token-file",
        ])
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("chmod 600 {}", file.display())),
        "{stderr}"
    );
    assert!(
        !stderr.contains("cannot reach"),
        "refused before any call: {stderr}"
    );
    let output = tollgate()
        .args([
            "--controller",
            "http://127.0.0.1:1",
            "node",
            "list",
            "--token",
            "s3cret",
        ])
        .output()
        .expect("runs");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("warning: --token shows the secret"),
        "{stderr}"
    );
}

#[test]
fn the_config_file_names_the_controller_and_the_token_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").expect("write");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::create_dir_all(dir.path().join("tollgate")).expect("mkdir");
    std::fs::write(
        dir.path().join("tollgate/config.toml"),
        format!(
            "controller = \"http://127.0.0.1:1\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    )
    .expect("write config");
    let output = tollgate()
        .env("XDG_CONFIG_HOME", dir.path())
        .args(["node", "list"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot reach the controller at http://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!stderr.contains("warning"), "{stderr}");
    // The token file is read: one others may read stops the command.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let output = tollgate()
        .env("XDG_CONFIG_HOME", dir.path())
        .args(["node", "list"])
        .output()
        .expect("runs");
    assert!(
        text(&output.stderr).contains("chmod 600"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn controller_comes_from_the_environment() {
    let output = tollgate()
        .env("TOLLGATE_CONTROLLER", "http://127.0.0.1:1")
        .args(["release", "list"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("cannot reach the controller at http://127.0.0.1:1"));
}

#[test]
fn bad_component_flag_is_an_error_before_any_call() {
    let output = tollgate()
        .args([
            "--controller",
            "http://127.0.0.1:1",
            "release",
            "create",
            "r1",
            "-c",
            "driver",
        ])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("component 'driver' is not name=version"),
        "{stderr}"
    );
}

/// A stub ReleaseService on loopback, so the mapping from gRPC statuses to messages and exit
/// codes is checked without a controller.
mod stub {
    use tollgate_proto::v1 as pb;
    use tollgate_proto::v1::release_service_server::{ReleaseService, ReleaseServiceServer};
    use tonic::{Request, Response, Status};

    struct Releases;

    fn release(name: &str) -> pb::Release {
        pb::Release {
            name: name.to_owned(),
            components: vec![pb::Component {
                name: "driver".into(),
                version: "550.54.15".into(),
                ..Default::default()
            }],
            milestone: "lab-qual".into(),
            track: vec!["lab-qual".into(), "customer-acceptance".into()],
            ..Default::default()
        }
    }

    #[tonic::async_trait]
    impl ReleaseService for Releases {
        async fn create_release(
            &self,
            request: Request<pb::CreateReleaseRequest>,
        ) -> Result<Response<pb::Release>, Status> {
            let request = request.into_inner();
            if request.name == "bad" {
                // As the controller answers: every bad field in the message, and again one by
                // one as google.rpc.BadRequest details.
                use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
                return Err(Status::with_error_details(
                    tonic::Code::InvalidArgument,
                    "invalid request: components[0].version: must not be empty; description: too long",
                    ErrorDetails::with_bad_request(vec![
                        FieldViolation::new("components[0].version", "must not be empty"),
                        FieldViolation::new("description", "too long"),
                    ]),
                ));
            }
            Ok(Response::new(release(&request.name)))
        }

        async fn get_release(
            &self,
            request: Request<pb::GetReleaseRequest>,
        ) -> Result<Response<pb::Release>, Status> {
            Err(Status::not_found(format!(
                "release '{}' does not exist",
                request.into_inner().name
            )))
        }

        async fn list_releases(
            &self,
            _: Request<pb::ListReleasesRequest>,
        ) -> Result<Response<pb::ListReleasesResponse>, Status> {
            Ok(Response::new(pb::ListReleasesResponse {
                releases: vec![release("r550-u3")],
                next_page_token: String::new(),
            }))
        }

        async fn promote(
            &self,
            _: Request<pb::PromoteRequest>,
        ) -> Result<Response<pb::PromoteResponse>, Status> {
            Err(Status::failed_precondition(
                "the lab-qual gate failed: telemetry:gpu_temp_c failed on lab-4",
            ))
        }

        async fn demote(
            &self,
            _: Request<pb::DemoteRequest>,
        ) -> Result<Response<pb::Release>, Status> {
            Err(Status::unimplemented("not in the stub"))
        }

        async fn halt(&self, _: Request<pb::HaltRequest>) -> Result<Response<pb::Release>, Status> {
            Err(Status::unimplemented("not in the stub"))
        }

        async fn resume(
            &self,
            _: Request<pb::ResumeRequest>,
        ) -> Result<Response<pb::Release>, Status> {
            Err(Status::unimplemented("not in the stub"))
        }

        // A release file's plan of record is set after the release is created: the stub
        // answers with the release named, as set.
        async fn set_milestone_target(
            &self,
            request: Request<pb::SetMilestoneTargetRequest>,
        ) -> Result<Response<pb::Release>, Status> {
            let request = request.into_inner();
            Ok(Response::new(pb::Release {
                name: request.release,
                targets: vec![pb::MilestoneTarget {
                    milestone: request.milestone,
                    target_date: request.target_date,
                    ..Default::default()
                }],
                ..Default::default()
            }))
        }

        async fn set_customers(
            &self,
            request: Request<pb::SetCustomersRequest>,
        ) -> Result<Response<pb::Release>, Status> {
            let request = request.into_inner();
            Ok(Response::new(pb::Release {
                name: request.release,
                customers: request.customers,
                ..Default::default()
            }))
        }
    }

    /// A GateService whose decision's verdict is the release name after `r-`
    /// (`r-passed`, `r-failed`, `r-waiting`).
    struct Gates;

    fn decision(release: String) -> pb::Decision {
        let verdict = release.strip_prefix("r-").unwrap_or("error").to_owned();
        pb::Decision {
            release,
            milestone: "lab-qual".into(),
            summary: format!("the gate {verdict}"),
            verdict,
            ..Default::default()
        }
    }

    #[tonic::async_trait]
    impl pb::gate_service_server::GateService for Gates {
        async fn apply_gate(
            &self,
            _: Request<pb::ApplyGateRequest>,
        ) -> Result<Response<pb::GatePolicy>, Status> {
            Err(Status::unimplemented("not in the stub"))
        }

        async fn get_gate(
            &self,
            _: Request<pb::GetGateRequest>,
        ) -> Result<Response<pb::GatePolicy>, Status> {
            Err(Status::unimplemented("not in the stub"))
        }

        async fn evaluate_gate(
            &self,
            request: Request<pb::EvaluateGateRequest>,
        ) -> Result<Response<pb::Decision>, Status> {
            Ok(Response::new(decision(request.into_inner().release)))
        }

        type StreamDecisionStream = std::pin::Pin<
            Box<dyn tokio_stream::Stream<Item = Result<pb::DecisionPart, Status>> + Send>,
        >;

        async fn stream_decision(
            &self,
            request: Request<pb::EvaluateGateRequest>,
        ) -> Result<Response<Self::StreamDecisionStream>, Status> {
            let parts = tollgate_wire::decision_parts::split_for_stream(decision(
                request.into_inner().release,
            ));
            Ok(Response::new(Box::pin(tokio_stream::iter(
                parts.into_iter().map(Ok),
            ))))
        }

        async fn waive(
            &self,
            _: Request<pb::WaiveRequest>,
        ) -> Result<Response<pb::Waiver>, Status> {
            Err(Status::unimplemented("not in the stub"))
        }

        async fn revoke_waiver(
            &self,
            _: Request<pb::RevokeWaiverRequest>,
        ) -> Result<Response<pb::Waiver>, Status> {
            Err(Status::unimplemented("not in the stub"))
        }

        async fn list_waivers(
            &self,
            _: Request<pb::ListWaiversRequest>,
        ) -> Result<Response<pb::ListWaiversResponse>, Status> {
            Err(Status::unimplemented("not in the stub"))
        }
    }

    /// Serves the stub on its own thread and runtime for the rest of the test process;
    /// returns its URL.
    pub fn serve() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                tonic::transport::Server::builder()
                    .add_service(ReleaseServiceServer::new(Releases))
                    .add_service(pb::gate_service_server::GateServiceServer::new(Gates))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await
                    .expect("stub serves");
            });
        });
        format!("http://{addr}")
    }
}

fn against_stub(args: &[&str]) -> std::process::Output {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let url = URL.get_or_init(stub::serve);
    tollgate()
        .arg("--controller")
        .arg(url)
        .args(args)
        .output()
        .expect("runs")
}

#[test]
fn not_found_prints_the_message_and_exits_4() {
    let output = against_stub(&["release", "show", "r9"]);
    assert_eq!(output.status.code(), Some(4));
    assert_eq!(
        text(&output.stderr).trim(),
        "error: release 'r9' does not exist"
    );
}

#[test]
fn invalid_argument_exits_2() {
    let output = against_stub(&["release", "create", "bad", "-c", "driver=1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("components[0].version: must not be empty"));
}

#[test]
fn refused_promotion_says_why_and_exits_3() {
    let output = against_stub(&["promote", "--release", "r550-u3"]);
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(
        text(&output.stderr).trim(),
        "promotion refused: the lab-qual gate failed: telemetry:gpu_temp_c failed on lab-4"
    );
}

#[test]
fn lists_print_json_and_text() {
    let output = against_stub(&["release", "list", "-o", "json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
    assert_eq!(value["releases"][0]["name"], "r550-u3");
    assert_eq!(
        value["releases"][0]["components"][0]["version"],
        "550.54.15"
    );
    let output = against_stub(&["release", "list"]);
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with("NAME"), "{stdout}");
    assert!(stdout.contains("driver=550.54.15"), "{stdout}");
}

#[test]
fn release_files_create_releases() {
    let output = against_stub(&["release", "create", "-f"]);
    assert!(!output.status.success(), "-f needs a file");
    let release_file = example("release.yaml");
    let output = against_stub(&[
        "release",
        "create",
        "-f",
        release_file.to_str().expect("utf-8 path"),
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("release r550-u3"));
}

#[test]
fn json_errors_are_json_on_stdout_with_every_bad_field() {
    let output = against_stub(&["release", "create", "bad", "-c", "driver=1", "-o", "json"]);
    assert_eq!(output.status.code(), Some(2));
    let value: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the error is JSON on stdout");
    let error = &value["error"];
    assert_eq!(error["code"], "invalid_argument");
    assert_eq!(error["exit_code"], 2);
    assert_eq!(error["fields"][0]["field"], "components[0].version");
    assert_eq!(error["fields"][0]["message"], "must not be empty");
    assert_eq!(error["fields"][1]["field"], "description");
    assert!(
        error["message"]
            .as_str()
            .expect("a message")
            .contains("components[0].version: must not be empty"),
        "{value}"
    );
    // Text mode keeps the message for people on stderr.
    let output = against_stub(&["release", "create", "bad", "-c", "driver=1"]);
    assert!(output.stdout.is_empty());
    assert!(text(&output.stderr).starts_with("error: invalid request:"));
}

#[test]
fn json_refusals_and_not_found_keep_their_exit_codes() {
    let output = against_stub(&["promote", "--release", "r550-u3", "-o", "json"]);
    assert_eq!(output.status.code(), Some(3));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(value["error"]["code"], "failed_precondition");
    assert_eq!(value["error"]["fields"], serde_json::json!([]));
    let output = against_stub(&["release", "show", "r9", "-o", "json"]);
    assert_eq!(output.status.code(), Some(4));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(value["error"]["code"], "not_found");
    assert_eq!(value["error"]["message"], "release 'r9' does not exist");
}

#[test]
fn json_plan_problems_name_file_line_and_field() {
    let output = tollgate()
        .args(["plan", "validate", "-o", "json"])
        .arg(example("plan-broken.yaml"))
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(value["error"]["code"], "invalid_file");
    let fields = value["error"]["fields"].as_array().expect("fields");
    let timeout = fields
        .iter()
        .find(|f| f["field"] == "steps[1].timeout")
        .expect("the bad timeout is listed");
    assert_eq!(timeout["line"], 11);
    assert!(
        timeout["message"]
            .as_str()
            .expect("message")
            .contains("'two minutes' is not a duration")
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_tollgate()"),
        ("zsh", "#compdef tollgate"),
        ("fish", "complete -c tollgate"),
    ] {
        let output = tollgate()
            .args(["completions", shell])
            .output()
            .expect("runs");
        assert!(output.status.success(), "{shell}: {}", text(&output.stderr));
        let script = text(&output.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        // Subcommands are completed too.
        assert!(script.contains("promote"), "{shell}");
    }
    let output = tollgate()
        .args(["completions", "tcsh"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn gate_check_exits_0_only_when_the_gate_passed() {
    for (release, code) in [
        ("r-passed", 0),
        ("r-failed", 3),
        ("r-waiting", 5),
        ("r-error", 1),
    ] {
        let output = against_stub(&["gate", "check", "--release", release]);
        assert_eq!(output.status.code(), Some(code), "{release}");
        assert!(text(&output.stdout).contains(&format!("release {release}")));
    }
    // -o json prints the decision, not an error, and keeps the exit code.
    let output = against_stub(&["gate", "check", "--release", "r-failed", "-o", "json"]);
    assert_eq!(output.status.code(), Some(3));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(value["verdict"], "failed");
}
