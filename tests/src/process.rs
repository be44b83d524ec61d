//! The controller as a real process (the `tollgate-controller` binary next to the test
//! executables), for the fault tests that must `kill -9` it or watch it recover by itself.
//!
//! The binary is the one `cargo test --workspace` builds (the controller's own integration
//! tests need it). Running one test file alone (`cargo test -p tollgate-tests --test
//! end_to_end FILE::`), build the binaries first (`cargo build --bins`), or the test runs an
//! old one.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// How long a controller process may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of a workspace binary built beside the test executables (`target/<profile>/`).
///
/// # Panics
///
/// When it is not there, saying how to build it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let binary = profile_dir.join(name);
    assert!(
        binary.is_file(),
        "{} is missing: build the binaries first (cargo build --bins)",
        binary.display()
    );
    binary
}

/// Runs the `tollgate` CLI against the controller at `url` and returns what it printed.
pub async fn tollgate(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(workspace_binary("tollgate"))
        .env("TOLLGATE_CONTROLLER", url)
        .args(args)
        .output()
        .await
        .expect("run tollgate")
}

/// Runs the `tollgate` CLI against the controller at `url`, asserts it succeeded (naming the
/// command and what it printed on standard error otherwise) and returns its standard output.
pub async fn tollgate_ok(url: &str, args: &[&str]) -> String {
    let output = tollgate(url, args).await;
    assert!(
        output.status.success(),
        "tollgate {args:?}: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Runs the `tollgate` CLI against the TLS controller at `url`, trusting `ca_file`.
pub async fn tollgate_tls(url: &str, ca_file: &Path, args: &[&str]) -> std::process::Output {
    Command::new(workspace_binary("tollgate"))
        .env("TOLLGATE_CONTROLLER", url)
        .env("TOLLGATE_CA_FILE", ca_file)
        .args(args)
        .output()
        .await
        .expect("run tollgate")
}

/// Runs `tollgate-controller report-key rotate` on `data_dir` (which holds the current key)
/// against `database_url`, and returns what it printed.
pub async fn rotate_report_key(data_dir: &Path, database_url: &str) -> std::process::Output {
    Command::new(workspace_binary("tollgate-controller"))
        .args([
            "report-key",
            "rotate",
            "--actor",
            "alice",
            "--reason",
            "yearly",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--database", database_url])
        .output()
        .await
        .expect("run tollgate-controller report-key rotate")
}

/// Output bytes as text, for assertions and failure messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The controller's report-signing public key, as `tollgate report public-key` prints it.
pub async fn public_key(url: &str) -> String {
    let output = tollgate(url, &["report", "public-key"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let key = stdout
        .lines()
        .next()
        .expect("the key line")
        .trim()
        .to_owned();
    assert_eq!(key.len(), 64, "a hex Ed25519 public key: {stdout}");
    key
}

/// A `tollgate-controller serve` process on a fixed local port, so that agents reconnect to
/// the same address after it was killed and started again. Killed on drop.
pub struct ControllerProcess {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The database URL it serves.
    pub database_url: String,
    /// Its combined stdout and stderr, appended to across restarts.
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl ControllerProcess {
    /// Starts a controller on `database_url` with its data directory (signing key) in
    /// `data_dir`, logging to `log`, heartbeats every 200 ms and the given lease grace; waits
    /// until its health service says `SERVING`.
    pub async fn start(
        database_url: &str,
        data_dir: &Path,
        log: &Path,
        lease_grace: Duration,
    ) -> ControllerProcess {
        Self::start_with(
            database_url,
            data_dir,
            log,
            lease_grace,
            Duration::from_millis(200),
        )
        .await
    }

    /// [`ControllerProcess::start`] with agents told to heartbeat every `heartbeat_interval`
    /// (a test with many agents keeps the database's load near a real fleet's).
    pub async fn start_with(
        database_url: &str,
        data_dir: &Path,
        log: &Path,
        lease_grace: Duration,
        heartbeat_interval: Duration,
    ) -> ControllerProcess {
        Self::start_with_args(
            database_url,
            data_dir,
            log,
            lease_grace,
            heartbeat_interval,
            &[],
        )
        .await
    }

    /// [`ControllerProcess::start_with`] with more `serve` flags (`--otlp-endpoint URL`).
    pub async fn start_with_args(
        database_url: &str,
        data_dir: &Path,
        log: &Path,
        lease_grace: Duration,
        heartbeat_interval: Duration,
        extra: &[String],
    ) -> ControllerProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free local port")
            .port();
        let args = vec![
            "serve".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--insecure-loopback".to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--database".to_owned(),
            database_url.to_owned(),
            "--heartbeat-interval".to_owned(),
            format!("{}ms", heartbeat_interval.as_millis()),
            "--lease-grace".to_owned(),
            format!("{}ms", lease_grace.as_millis()),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .collect();
        let mut controller = ControllerProcess {
            url: format!("http://127.0.0.1:{port}"),
            database_url: database_url.to_owned(),
            log: log.to_owned(),
            args,
            child: None,
        };
        controller.spawn().await;
        controller
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the controller's log");
        let child = Command::new(workspace_binary("tollgate-controller"))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start tollgate-controller");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if self.health("").await == Some(ServingStatus::Serving) {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "tollgate-controller exited with {status} while starting; log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tollgate-controller did not serve within {START_TIMEOUT:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id of the running controller.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether the process still runs (it was not killed and did not exit).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// `kill -9`, and waits until it is gone.
    pub async fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("SIGKILL the controller");
        }
    }

    /// Starts it again on the same port, database and data directory.
    pub async fn restart(&mut self) {
        self.kill_9().await;
        self.spawn().await;
    }

    /// Stops it with SIGTERM (a graceful shutdown) and waits for it to exit.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pids fit i32"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
            Ok(status) => {
                let status = status.expect("wait for the controller");
                assert!(
                    status.success(),
                    "tollgate-controller exited with {status}; log:\n{}",
                    self.log_text()
                );
            }
            Err(_) => {
                let _ = child.kill().await;
                panic!(
                    "tollgate-controller did not stop within 20 s of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
        }
    }

    /// A channel to it.
    pub async fn channel(&self) -> Option<Channel> {
        Endpoint::from_shared(self.url.clone())
            .expect("url")
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .ok()
    }

    /// What its health service says about `service` ("" for the whole server); `None` when
    /// it does not answer.
    pub async fn health(&self, service: &str) -> Option<ServingStatus> {
        let channel = self.channel().await?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .ok()?;
        match response.into_inner().status {
            1 => Some(ServingStatus::Serving),
            2 => Some(ServingStatus::NotServing),
            _ => Some(ServingStatus::Unknown),
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Processes whose command line contains `marker` (the step commands of one test carry a
/// marker of their own): what a test checks is gone at its end.
pub fn processes_with(marker: &str) -> Vec<u32> {
    pids_with(marker).collect()
}

/// Live processes whose command line contains `marker`, as (pid, process group); a zombie
/// is dead already and not listed.
pub fn live_processes_with(marker: &str) -> Vec<(u32, i32)> {
    pids_with(marker)
        .filter_map(|pid| Some((pid, live_process_group(pid)?)))
        .collect()
}

/// Live processes in process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<u32> {
    all_pids()
        .filter(|pid| live_process_group(*pid) == Some(pgid))
        .collect()
}

/// Every process id in `/proc` but this test's own.
fn all_pids() -> impl Iterator<Item = u32> {
    let own = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(move |pid| *pid != own)
}

fn pids_with(marker: &str) -> impl Iterator<Item = u32> {
    all_pids().filter(move |pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
    })
}

/// The process group of `pid` from `/proc/PID/stat`; `None` when it is gone or a zombie.
fn live_process_group(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces: the fields after it are state,
    // parent and process group.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(2)?.parse().ok()
}

/// Controller replicas as processes on one PostgreSQL store, sharing one data directory (so
/// they sign with the same report key), for the tests that kill them in turn.
pub struct Replicas {
    /// The processes, in the order they were started.
    pub processes: Vec<ControllerProcess>,
}

impl Replicas {
    /// Starts `n` replicas on `database_url` with their data directory in `dir/controller`
    /// and each one's log in `dir/replica-N.log`; agents heartbeat every
    /// `heartbeat_interval` and a lease lasts `lease_grace` past the last heartbeat.
    pub async fn start(
        database_url: &str,
        dir: &Path,
        n: usize,
        lease_grace: Duration,
        heartbeat_interval: Duration,
    ) -> Self {
        let data_dir = dir.join("controller");
        let mut processes = Vec::with_capacity(n);
        for idx in 0..n {
            processes.push(
                ControllerProcess::start_with(
                    database_url,
                    &data_dir,
                    &dir.join(format!("replica-{idx}.log")),
                    lease_grace,
                    heartbeat_interval,
                )
                .await,
            );
        }
        Self { processes }
    }

    /// Their gRPC URLs, in order.
    pub fn urls(&self) -> Vec<String> {
        self.processes.iter().map(|p| p.url.clone()).collect()
    }

    /// Every `every`, asks `done` (given a channel to a replica that is alive) whether the
    /// test's work has ended; until it answers, kills the next replica in turn with
    /// `kill -9` and starts it again. Returns the answer and how many kills it took.
    ///
    /// # Panics
    ///
    /// After `max_kills` kills without an answer.
    pub async fn kill_in_turn_until<T, F, Fut>(
        &mut self,
        every: Duration,
        max_kills: usize,
        mut done: F,
    ) -> (T, usize)
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let n = self.processes.len();
        let mut kills = 0;
        let mut victim = 0;
        loop {
            tokio::time::sleep(every).await;
            let alive = (victim + 1) % n;
            let channel = self.processes[alive]
                .channel()
                .await
                .expect("connect to a live replica");
            if let Some(answer) = done(channel).await {
                return (answer, kills);
            }
            assert!(
                kills < max_kills,
                "the work did not end after {kills} replica kills"
            );
            self.processes[victim].kill_9().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.processes[victim].restart().await;
            kills += 1;
            println!("kill -9 of replica {victim} (number {kills}); serving again");
            victim = (victim + 1) % n;
        }
    }

    /// Stops each with SIGTERM.
    pub async fn stop(&mut self) {
        for process in &mut self.processes {
            process.stop().await;
        }
    }
}
