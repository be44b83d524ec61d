//! The `tollgate-controller` binary as an operator meets it: flags, the address file, a clean
//! stop on SIGTERM, and one readable line when something is wrong.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_tollgate-controller");

fn wait_for_file(path: &Path, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.is_empty()
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Sends SIGTERM to the controller and waits until it exits; returns how it exited.
fn sigterm_and_wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the controller did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn serves_writes_its_address_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let addr_file = dir.path().join("addr");
    let mut child = Command::new(BINARY)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-loopback",
            "--log-format",
            "json",
        ])
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--addr-file")
        .arg(&addr_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the controller");
    let addr = wait_for_file(&addr_file, Duration::from_secs(20));
    let addr: std::net::SocketAddr = addr.trim().parse().expect("an address");
    assert!(std::net::TcpStream::connect(addr).is_ok());
    assert!(data_dir.join("tollgate.db").exists());

    let status = sigterm_and_wait(&mut child);
    let output = child.wait_with_output().expect("output");
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(status.success(), "{status:?}: {logs}");
    assert!(logs.contains("\"SIGTERM received\""), "{logs}");
    assert!(logs.contains("controller stopped"), "{logs}");
}

#[test]
fn a_bad_flag_says_what_is_wrong() {
    let output = Command::new(BINARY)
        .args(["serve", "--heartbeat-interval", "2x"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("'2x' is not a duration"), "{stderr}");

    let output = Command::new(BINARY)
        .args(["serve", "--heartbeat-interval", "2s", "--lease-grace", "1s"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(
            "error: --lease-grace 1s is too short: it must be longer than --heartbeat-interval (2s)"
        ),
        "{stderr}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(BINARY)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            "mysql://x/y",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: unsupported --database 'mysql://x/y'"),
        "{stderr}"
    );
}

#[test]
fn an_unusable_database_is_one_line_saying_what_to_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A file where the SQLite database's directory should be: the store cannot open it.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "not a directory").expect("write");
    let url = format!("sqlite://{}/tollgate.db", blocker.display());
    let output = Command::new(BINARY)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-loopback",
            "--database",
            &url,
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "off")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("opening the database"), "{stderr}");
    assert!(stderr.contains("--database"), "{stderr}");
}

#[test]
fn text_logs_written_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let addr_file = dir.path().join("addr");
    let stdout_path = dir.path().join("stdout.log");
    let stderr_path = dir.path().join("stderr.log");
    let mut child = Command::new(BINARY)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-loopback",
            "--log-format",
            "text",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--addr-file")
        .arg(&addr_file)
        .env("RUST_LOG", "info")
        // Colour must follow the output, not these variables.
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start the controller");
    wait_for_file(&addr_file, Duration::from_secs(20));
    sigterm_and_wait(&mut child);
    let mut logs = std::fs::read(&stdout_path).expect("stdout");
    logs.extend(std::fs::read(&stderr_path).expect("stderr"));
    let text = String::from_utf8_lossy(&logs);
    assert!(text.contains("controller stopped"), "{text}");
    assert!(
        !logs.contains(&0x1b),
        "escape codes in a log file: {text:?}"
    );
}

#[test]
fn api_tokens_on_the_command_line_are_warned_about_and_a_token_file_is_not() {
    let run = |token_args: &[&str]| -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr_file = dir.path().join("addr");
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "root s3cret\nci:operator hunter2\n").expect("tokens file");
        let mut child = Command::new(BINARY)
            .args(["serve", "--listen", "127.0.0.1:0", "--insecure-loopback"])
            .args(["--log-format", "text"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--addr-file")
            .arg(&addr_file)
            .args(token_args)
            .arg("--api-token-file")
            .arg(&tokens)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the controller");
        wait_for_file(&addr_file, Duration::from_secs(20));
        let status = sigterm_and_wait(&mut child);
        let output = child.wait_with_output().expect("output");
        let logs = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(status.success(), "{status:?}: {logs}");
        logs
    };
    let logs = run(&["--api-token", "extra:viewer=abc123"]);
    assert!(
        logs.contains("--api-token puts a secret on the command line"),
        "{logs}"
    );
    assert!(logs.contains("--api-token-file FILE instead"), "{logs}");
    let logs = run(&[]);
    assert!(!logs.contains("--api-token puts a secret"), "{logs}");
    assert!(!logs.contains("no API token configured"), "{logs}");
}

#[test]
fn plain_text_is_refused_off_loopback_and_without_the_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(BINARY)
        .args(["serve", "--listen", "0.0.0.0:0", "--insecure-loopback"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "off")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(stderr.contains("tollgate-controller ca init"), "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");

    let output = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "off")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no TLS configured"), "{stderr}");
    assert!(stderr.contains("--insecure-loopback"), "{stderr}");
    assert!(stderr.contains("--ca-dir"), "{stderr}");
}

#[test]
fn ca_init_makes_a_private_ca_that_serve_uses() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = dir.path().join("pki");
    let output = Command::new(BINARY)
        .args(["ca", "init", "--dir"])
        .arg(&pki)
        .output()
        .expect("run");
    assert!(output.status.success(), "{output:?}");
    let mode = std::fs::metadata(pki.join("ca.key"))
        .expect("the CA key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(pki.join("ca.pem"))
            .expect("the CA certificate")
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let again = Command::new(BINARY)
        .args(["ca", "init", "--dir"])
        .arg(&pki)
        .output()
        .expect("run");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let addr_file = dir.path().join("addr");
    let mut child = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--ca-dir"])
        .arg(&pki)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--addr-file")
        .arg(&addr_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the controller");
    let addr = wait_for_file(&addr_file, Duration::from_secs(20));
    assert!(
        addr.trim().parse::<std::net::SocketAddr>().is_ok(),
        "{addr}"
    );
    let status = sigterm_and_wait(&mut child);
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_reads_its_configuration_file_and_print_config_masks_secrets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("controller.toml");
    let data_dir = dir.path().join("data");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "root s3cret\n").expect("tokens file");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {data_dir:?}\ninsecure-loopback = true\n\
             api-token = [\"ci:operator=hunter2\"]\napi-token-file = {tokens:?}\n\
             hostname = [\"ctl.lab\", \"10.0.0.5\"]\nrate-limit = 50\n"
        ),
    )
    .expect("config file");
    // Readable by every user, as a shipped configuration file is.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let output = Command::new(BINARY)
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .args(["--print-config", "--rate-limit", "70"])
        .env(
            "TOLLGATE_DATABASE_URL",
            "postgres://tollgate:s3cret@db.lab:5432/tollgate",
        )
        .env_remove("TOLLGATE_CONTROLLER_CONFIG")
        .output()
        .expect("run");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let file = format!("# file {}", path.display());
    for line in [
        format!("listen = \"127.0.0.1:0\" {file}"),
        format!("data-dir = {:?} {file}", data_dir.display().to_string()),
        "database = \"postgres://tollgate:***@db.lab:5432/tollgate\" # env TOLLGATE_DATABASE_URL"
            .to_owned(),
        "rate-limit = 70 # flag".to_owned(),
        "lease-grace = \"10s\" # default".to_owned(),
        format!("api-token = [\"ci:operator=***\"] {file}"),
        format!("api-token-file = {:?} {file}", tokens.display().to_string()),
        format!("hostname = [\"ctl.lab\", \"10.0.0.5\"] {file}"),
        format!("insecure-loopback = true {file}"),
        "# tls-cert is not set # default".to_owned(),
    ] {
        assert!(
            text.lines().any(|printed| printed == line),
            "{line:?} in\n{text}"
        );
    }
    assert!(
        !text.contains("s3cret") && !text.contains("hunter2"),
        "{text}"
    );
    assert!(!data_dir.exists(), "--print-config starts nothing");

    // The same file serves: flags from the file, the address file from the command line.
    let addr_file = dir.path().join("addr");
    let mut child = Command::new(BINARY)
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .arg("--addr-file")
        .arg(&addr_file)
        .env("RUST_LOG", "warn")
        .env_remove("TOLLGATE_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the controller");
    wait_for_file(&addr_file, Duration::from_secs(20));
    assert!(
        data_dir.join("tollgate.db").exists(),
        "data-dir from the file"
    );
    let status = sigterm_and_wait(&mut child);
    let output = child.wait_with_output().expect("output");
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(status.success(), "{status:?}: {logs}");
    // A secret in a file others may read is warned about, naming the file and line.
    assert!(
        logs.contains(&format!(
            "{} line 4: `api-token` holds a secret",
            path.display()
        )),
        "{logs}"
    );
}

#[test]
fn serve_refuses_a_bad_configuration_file_and_other_subcommands_ignore_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("controller.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\nheartbeat-interval = 2\n").expect("file");
    let output = Command::new(BINARY)
        .args(["serve", "--insecure-loopback"])
        .env("TOLLGATE_CONTROLLER_CONFIG", &path)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: {} line 2: `heartbeat-interval` = 2 is invalid:",
            path.display()
        )),
        "{stderr}"
    );

    let output = Command::new(BINARY)
        .arg("public-key")
        .arg("--data-dir")
        .arg(dir.path().join("keys"))
        .env("TOLLGATE_CONTROLLER_CONFIG", &path)
        .output()
        .expect("run");
    assert!(output.status.success(), "{output:?}");
}
