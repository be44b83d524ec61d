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

#[test]
fn a_configuration_file_sets_the_flags_and_print_config_says_where_each_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "# a node of lab A\n\
         controller = \"https://ops:pa55@ctl-a:7443,https://ctl-b:7443\"\n\
         node = \"lab-n1\"\n\
         label = [\"sku=hgx-h100\", \"site=lab-a\"]\n\
         gpus = \"sim:2\"\n\
         sim_seed = 5\n\
         sample-interval = \"500ms\"\n",
    )
    .unwrap();
    let output = agent()
        .env_remove("TOLLGATE_AGENT_CONFIG")
        .env("TOLLGATE_CA_FILE", "/etc/tollgate/ca.pem")
        .arg("--config")
        .arg(&path)
        .args(["--print-config", "--node", "lab-n2"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let file = format!("# file {}", path.display());
    for line in [
        format!("controller = \"https://ops:***@ctl-a:7443,https://ctl-b:7443\" {file}"),
        "ca-file = \"/etc/tollgate/ca.pem\" # env TOLLGATE_CA_FILE".to_owned(),
        "node = \"lab-n2\" # flag".to_owned(),
        format!("label = [\"sku=hgx-h100\", \"site=lab-a\"] {file}"),
        format!("sim-seed = 5 {file}"),
        format!("sample-interval = \"500ms\" {file}"),
        "fleet-interval = \"10s\" # default".to_owned(),
        "# state-dir is not set # default".to_owned(),
    ] {
        assert!(
            text.lines().any(|printed| printed == line),
            "{line:?} in\n{text}"
        );
    }
    assert!(!text.contains("pa55"), "{text}");

    // The same file drives the agent itself, not only the printout (here the simulated GPUs
    // of its `gpus` and `sim_seed`; the flag's plain-text controller needs no CA).
    let output = agent()
        .env_remove("TOLLGATE_AGENT_CONFIG")
        .arg("--config")
        .arg(&path)
        .args(["--controller", "http://127.0.0.1:9", "--print-inventory"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let inventory: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(inventory["gpu_source"], "simulated", "gpus from the file");
    assert_eq!(inventory["gpus"].as_array().unwrap().len(), 2);
}

#[test]
fn a_bad_configuration_file_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let state_dir = dir.path().join("state");
    std::fs::write(
        &path,
        format!(
            "state-dir = {:?}\ngpus = \"sim:1\"\n\ncontoler = \"x\"\n",
            state_dir
        ),
    )
    .unwrap();
    let output = agent()
        .env("TOLLGATE_AGENT_CONFIG", &path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: {} line 4: unknown key `contoler`; the keys are the long flags of `--help`",
            path.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("controller, ca-file"), "{stderr}");
    assert!(!state_dir.exists(), "nothing starts on a bad configuration");

    let output = agent()
        .args(["--config", "/nonexistent/tollgate/agent.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "the configuration file /nonexistent/tollgate/agent.toml (--config) does not exist"
        ),
        "{stderr}"
    );
}
