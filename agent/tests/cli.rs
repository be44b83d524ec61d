//! The `tollgate-agent` binary as an operator meets it: flags, exit codes, the messages a
//! person reads, and a clean exit on SIGTERM.

#![allow(clippy::unwrap_used)]

use assert_cmd::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-agent");

fn agent() -> Command {
    let mut command = Command::new(BIN);
    command
        .env_remove("TOLLGATE_CONTROLLER")
        .env("RUST_LOG", "info");
    command
}

#[test]
fn print_inventory_of_a_simulated_node_is_deterministic_json() {
    let run = || {
        let output = agent()
            .args([
                "--node",
                "lab-n1",
                "--gpus",
                "sim:2",
                "--sim-seed",
                "5",
                "--print-inventory",
            ])
            .args(["--fault", "vbios=96.00.74.00.01"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        output.stdout
    };
    let first = run();
    assert_eq!(first, run(), "same node and seed, same inventory");
    let inventory: serde_json::Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(inventory["gpu_source"], "simulated");
    assert_eq!(inventory["driver_version"], "550.54.15");
    assert_eq!(inventory["gpus"].as_array().unwrap().len(), 2);
    assert_eq!(inventory["gpus"][1]["vbios_version"], "96.00.74.00.01");
}

#[test]
fn without_a_driver_nvml_fails_with_one_clear_line() {
    let output = agent()
        .args(["--node", "lab-n1", "--print-inventory"])
        .output()
        .unwrap();
    if output.status.success() {
        eprintln!("skipped: this machine has a working NVIDIA driver");
        return;
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("no NVIDIA driver found") || stderr.contains("NVML"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Stack backtrace"), "{stderr}");
}

#[test]
fn bad_flags_are_named() {
    let cases: [(&[&str], &str); 4] = [
        (&["--fault", "melt"], "unknown fault 'melt'"),
        (&["--gpus", "sim:0"], "1 to 64 GPUs"),
        (&["--label", "sku"], "label 'sku' is not key=value"),
        (&["--sample-interval", "fast"], "'fast' is not a duration"),
    ];
    for (args, message) in cases {
        let output = agent().args(["--node", "n1"]).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let output = agent()
        .args(["--node", "n1", "--fault", "over-temp", "--print-inventory"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("applies only to simulated GPUs"));
}

#[test]
fn sigterm_stops_the_agent_with_exit_code_zero() {
    let state = tempfile::tempdir().unwrap();
    // A port nothing listens on: the agent keeps retrying until it is told to stop.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(BIN)
        .args(["--node", "n1", "--gpus", "sim:1"])
        .args(["--controller", &format!("http://127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(state.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The agent installs its signal handlers before it opens the spool: once the spool exists,
    // SIGTERM is a clean shutdown.
    let spool = state.path().join("spool");
    for _ in 0..200 {
        if spool.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(spool.exists(), "the agent did not start");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
