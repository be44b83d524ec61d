//! The `tollgate` binary as a person meets it, offline: help, validating plan and gate files,
//! and the message an unreachable controller gives.

use assert_cmd::Command;
use std::path::PathBuf;

fn tollgate() -> Command {
    let mut command = Command::cargo_bin("tollgate").expect("the tollgate binary is built");
    // Tests must not pick up a developer's controller.
    command.env_remove("TOLLGATE_CONTROLLER");
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
        "node", "release", "plan", "gate", "run", "promote", "report", "demo",
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
        stderr.contains("steps[1].timeout: '2 minutes' is not a duration"),
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
fn missing_file_names_the_file() {
    let output = tollgate()
        .args(["plan", "validate", "no-such-plan.yaml"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("reading plan file no-such-plan.yaml"));
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
