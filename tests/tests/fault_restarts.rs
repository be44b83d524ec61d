//! Restart faults, driven through the real `tollgate-controller` and `tollgate-agent`
//! binaries: the controller killed (`kill -9`) and started again, agents killed mid-step and
//! started again, in each order; and an agent whose heartbeats name another step, another
//! job or none. Each scenario checks that every result is stored exactly once, that no job
//! stays `running` (the run finishes), that no process of the killed step survives its
//! agent's restart, and that the controller serves again. On SQLite and on PostgreSQL (the
//! latter when `TOLLGATE_TEST_DATABASE_URL` is set; otherwise it says it was skipped).
//!
//! The binaries are the ones built beside this test (`cargo build --workspace --bins`, which
//! `cargo test --workspace` does).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tollgate_proto::v1;
use tollgate_tests::process::{group_members, live_processes_with};
use tollgate_tests::{
    Backend, Clients, assert_spool_empty, fresh_database_url, spooled_results, wait_for,
};
use tonic::transport::Endpoint;

tollgate_tests::on_both_backends!(
    agent_killed_with_spooled_results_restarts_before_the_controller,
    agent_killed_with_spooled_results_restarts_after_the_controller,
    agent_killed_and_restarted_while_the_controller_is_down,
    agent_restarted_with_an_empty_spool_while_its_job_runs,
    heartbeats_naming_another_step_another_job_or_none,
    an_assignment_lost_with_its_stream_is_sent_again_when_the_agent_connects,
    an_agent_claiming_a_taken_node_name_stops_and_says_what_to_do,
    results_the_spool_cannot_take_are_delivered_from_memory,
);

/// How long a scenario waits for any one state.
const PATIENCE: Duration = Duration::from_secs(30);

/// The last lines of a log file that are not per-heartbeat or per-sample, for a failing
/// assertion's message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.contains("heartbeat") && !line.contains("telemetry sample"))
        .collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// One scenario's world: a directory, a database, a controller process and agent processes.
struct World {
    dir: tempfile::TempDir,
    database_url: String,
    /// The address the controller serves on; a restarted controller binds it again.
    addr: Option<String>,
    controller: Option<Child>,
    n_controller_starts: u32,
}

impl World {
    /// A world on `backend`; `None` (the test says it was skipped) for PostgreSQL when no
    /// database is configured.
    async fn new(backend: Backend) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let database_url = fresh_database_url(backend, dir.path()).await?;
        Some(Self {
            dir,
            database_url,
            addr: None,
            controller: None,
            n_controller_starts: 0,
        })
    }

    fn url(&self) -> String {
        format!(
            "http://{}",
            self.addr.as_deref().expect("the controller started once")
        )
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Starts the controller binary (on the address it had before, after a restart) and waits
    /// until it serves.
    async fn start_controller(&mut self) {
        self.n_controller_starts += 1;
        let addr_file = self.dir.path().join("controller.addr");
        let _ = std::fs::remove_file(&addr_file);
        let listen = self.addr.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        let log =
            std::fs::File::create(self.log(&format!("controller-{}", self.n_controller_starts)))
                .expect("log file");
        let child = Command::new(tollgate_tests::process::workspace_binary(
            "tollgate-controller",
        ))
        .args([
            "serve",
            "--listen",
            &listen,
            "--insecure-loopback",
            "--data-dir",
        ])
        .arg(self.dir.path().join("controller"))
        .args(["--database", &self.database_url])
        .args(["--heartbeat-interval", "200ms", "--lease-grace", "5s"])
        .arg("--addr-file")
        .arg(&addr_file)
        .env("RUST_LOG", "info,tollgate_controller=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start tollgate-controller");
        self.controller = Some(child);
        let addr = wait_for(PATIENCE, "the controller's address file", || {
            let addr_file = addr_file.clone();
            async move {
                let text = std::fs::read_to_string(&addr_file).ok()?;
                let text = text.trim().to_owned();
                text.parse::<std::net::SocketAddr>().is_ok().then_some(text)
            }
        })
        .await;
        self.addr = Some(addr);
        self.wait_serving().await;
    }

    /// Waits until the controller answers a manager call.
    async fn wait_serving(&self) {
        let url = self.url();
        wait_for(PATIENCE, "the controller to serve", || {
            let url = url.clone();
            async move {
                let channel = Endpoint::from_shared(url).ok()?.connect().await.ok()?;
                let mut nodes = v1::node_service_client::NodeServiceClient::new(channel);
                nodes.list_nodes(v1::ListNodesRequest::default()).await.ok()
            }
        })
        .await;
    }

    /// `kill -9` of the controller.
    async fn kill_controller(&mut self) {
        if let Some(mut child) = self.controller.take() {
            child.start_kill().expect("SIGKILL the controller");
            child.wait().await.expect("reap the controller");
        }
    }

    async fn clients(&self) -> Clients {
        let channel = Endpoint::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect to the controller");
        Clients::new(channel)
    }

    /// Starts an agent binary for `node` with one simulated GPU.
    fn start_agent(&self, node: &str, state_dir: &Path, n_start: u32) -> Child {
        let log = std::fs::File::create(self.log(&format!("{node}-{n_start}"))).expect("log file");
        Command::new(tollgate_tests::process::workspace_binary("tollgate-agent"))
            .args([
                "--controller",
                &self.url(),
                "--node",
                node,
                "--gpus",
                "sim:1",
            ])
            .args(["--label", "sku=hgx-h100", "--sample-interval", "100ms"])
            .args(["--fleet-interval", "0s", "--state-dir"])
            .arg(state_dir)
            .env("RUST_LOG", "info,tollgate_agent=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start tollgate-agent")
    }

    /// Every log of this world, for a failing assertion's message.
    fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            let mut paths: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|ext| ext == "log"))
                .collect();
            paths.sort();
            for path in paths {
                out.push_str(&format!("\n--- {}\n{}", path.display(), tail(&path)));
            }
        }
        out
    }
}

/// `kill -9` of an agent.
async fn kill(mut agent: Child) {
    agent.start_kill().expect("SIGKILL the agent");
    agent.wait().await.expect("reap the agent");
}

/// Four steps; `s2` loads the node (a `sleep 30` in the background, carrying `marker` in its
/// shell's command line) the first time it runs and passes at once after that, so a rerun
/// after an interruption is quick. `s2` has one retry.
fn plan(marker: &str, flag: &Path) -> String {
    format!(
        r#"name: gpu-qual
selector: {{sku: hgx-h100}}
steps:
  - {{name: s0, kind: exec, command: [sh, -c, "sleep 0.5"], timeout: 1m}}
  - {{name: s1, kind: exec, command: [sh, -c, "sleep 0.2"], timeout: 1m}}
  - name: s2
    kind: exec
    command: [sh, -c, "if [ -e '{flag}' ]; then exit 0; fi; touch '{flag}'; sleep 30 & wait", "{marker}"]
    timeout: 1m
    retries: 1
  - {{name: s3, kind: exec, command: ["true"], timeout: 1m}}
"#,
        flag = flag.display()
    )
}

/// A run of that plan on one node: the world, the run, the marker and the agent's state dir.
struct Scenario {
    world: World,
    run_id: String,
    marker: String,
    state_dir: PathBuf,
}

async fn start_scenario(backend: Backend, name: &str) -> Option<(Scenario, Child)> {
    let mut world = World::new(backend).await?;
    world.start_controller().await;
    let marker = format!("tollgate-fault-{name}-{backend:?}-{}", std::process::id());
    let flag = world.dir.path().join("s2-ran-once");
    let state_dir = world.dir.path().join("agent-lab-1");
    let agent = world.start_agent("lab-1", &state_dir, 1);
    let mut clients = world.clients().await;
    let run = clients
        .start_qualification("r550", 1, &plan(&marker, &flag))
        .await;
    Some((
        Scenario {
            world,
            run_id: run.id,
            marker,
            state_dir,
        },
        agent,
    ))
}

impl Scenario {
    async fn job(&self) -> v1::Job {
        let mut clients = self.world.clients().await;
        let run = clients.run(&self.run_id).await;
        run.jobs.into_iter().next().expect("one job")
    }

    async fn wait_job_state(&self, state: &str) {
        let what = format!("the job to be {state}");
        let mut clients = self.world.clients().await;
        clients
            .wait_run(&self.run_id, PATIENCE, &what, |run| {
                run.jobs.first().is_some_and(|job| job.state == state)
            })
            .await;
    }

    /// Waits until `s2` loads the node; returns its process group.
    async fn wait_loading(&self) -> i32 {
        wait_for(PATIENCE, "step s2 to run", || async {
            live_processes_with(&self.marker)
                .first()
                .map(|(_, pgid)| *pgid)
        })
        .await
    }

    /// Once the job runs, kills the controller; once `s0` and `s1` ended (their results
    /// waiting in the spool) and `s2` loads the node, kills the agent mid-step. Returns the
    /// process group of `s2`, which outlives the agent.
    async fn spool_then_kill_the_agent_mid_step(&mut self, agent: Child) -> i32 {
        self.wait_job_state("running").await;
        self.world.kill_controller().await;
        let pgid = self.wait_loading().await;
        wait_for(PATIENCE, "s0 and s1 to wait in the spool", || async {
            (self.spooled() == 2).then_some(())
        })
        .await;
        kill_mid_step(agent, pgid).await;
        pgid
    }

    /// Result files waiting in the agent's spool.
    fn spooled(&self) -> usize {
        spooled_results(&self.state_dir.join("spool"))
    }

    /// The run finishes with the job passed; every result is there exactly once.
    /// `first_epoch` lists the results of the interrupted epoch, as (step, outcome).
    async fn check_end(&self, first_epoch: &[(&str, i32)], interrupted_message: &str) {
        let mut clients = self.world.clients().await;
        let run = tokio::time::timeout(PATIENCE * 2, clients.wait_run_done(&self.run_id))
            .await
            .unwrap_or_else(|_| panic!("the run did not end; logs:{}", self.world.logs()));
        let job = &run.jobs[0];
        assert_eq!(run.state, "finished", "{:#?}{}", run, self.world.logs());
        assert_eq!(
            job.state,
            "passed",
            "{:#?}{}",
            job.results,
            self.world.logs()
        );
        assert_eq!(
            job.lease_epoch, 2,
            "assigned once more after the interruption"
        );
        let passed = v1::Outcome::Passed as i32;
        let mut expected: Vec<(String, u32, i32)> = first_epoch
            .iter()
            .map(|(step, outcome)| ((*step).to_owned(), 1, *outcome))
            .collect();
        expected.extend(["s0", "s1", "s2", "s3"].map(|step| (step.to_owned(), 1, passed)));
        expected.sort();
        let mut got: Vec<(String, u32, i32)> = job
            .results
            .iter()
            .map(|r| (r.step_name.clone(), r.attempt, r.outcome))
            .collect();
        got.sort();
        assert_eq!(
            got, expected,
            "every result exactly once: {:#?}",
            job.results
        );
        let interrupted: Vec<_> = job
            .results
            .iter()
            .filter(|r| r.message.starts_with("interrupted:"))
            .collect();
        assert_eq!(interrupted.len(), 1, "{:#?}", job.results);
        assert_eq!(interrupted[0].step_name, "s2");
        assert!(
            interrupted[0].message.starts_with(interrupted_message),
            "{}",
            interrupted[0].message
        );
        assert_spool_empty(&self.state_dir, "lab-1");
        assert!(
            live_processes_with(&self.marker).is_empty(),
            "no step process left"
        );
        assert_eq!(
            clients.node("lab-1").await.state,
            "ready",
            "the node is free again"
        );
    }
}

/// The agent's own report of the attempt it was killed in.
const REPORTED: &str = "interrupted: the agent restarted during step s2 (attempt 1); the agent \
                        killed the 2 process(es) it had left running";

/// The first epoch's results when the agent was killed in `s2`: `s0` and `s1` passed, `s2`
/// interrupted.
const INTERRUPTED_AT_S2: [(&str, i32); 3] = [
    ("s0", v1::Outcome::Passed as i32),
    ("s1", v1::Outcome::Passed as i32),
    ("s2", v1::Outcome::Error as i32),
];

/// `kill -9` of the agent while its step runs: the step's processes outlive it (they are what
/// the restarted agent must kill).
async fn kill_mid_step(agent: Child, pgid: i32) {
    kill(agent).await;
    assert!(
        !group_members(pgid).is_empty(),
        "the killed agent's step processes outlive it until the restart"
    );
}

/// Once the agent restarted, nothing of its killed step is left.
async fn orphan_is_killed_by_the_restart(marker: &str, pgid: i32) {
    wait_for(
        PATIENCE,
        "the orphaned step processes to be killed",
        || async {
            (group_members(pgid).is_empty() && live_processes_with(marker).is_empty()).then_some(())
        },
    )
    .await;
}

async fn agent_killed_with_spooled_results_restarts_before_the_controller(backend: Backend) {
    let Some((mut sc, agent)) = start_scenario(backend, "a").await else {
        return;
    };
    let pgid = sc.spool_then_kill_the_agent_mid_step(agent).await;
    let agent = sc.world.start_agent("lab-1", &sc.state_dir, 2);
    orphan_is_killed_by_the_restart(&sc.marker, pgid).await;
    sc.world.start_controller().await;
    sc.check_end(&INTERRUPTED_AT_S2, REPORTED).await;
    kill(agent).await;
}

async fn agent_killed_with_spooled_results_restarts_after_the_controller(backend: Backend) {
    let Some((mut sc, agent)) = start_scenario(backend, "b").await else {
        return;
    };
    let pgid = sc.spool_then_kill_the_agent_mid_step(agent).await;
    sc.world.start_controller().await;
    // The controller serves, the node is away (within its grace), the job is still running.
    assert_eq!(sc.job().await.state, "running");
    let agent = sc.world.start_agent("lab-1", &sc.state_dir, 2);
    orphan_is_killed_by_the_restart(&sc.marker, pgid).await;
    sc.check_end(&INTERRUPTED_AT_S2, REPORTED).await;
    kill(agent).await;
}

async fn agent_killed_and_restarted_while_the_controller_is_down(backend: Backend) {
    let Some((mut sc, agent)) = start_scenario(backend, "c").await else {
        return;
    };
    // s0 and s1 are delivered; the controller goes down during s2.
    let pgid = sc.wait_loading().await;
    wait_for(PATIENCE, "s0 and s1 to be stored", || async {
        (sc.job().await.results.len() == 2).then_some(())
    })
    .await;
    sc.world.kill_controller().await;
    kill_mid_step(agent, pgid).await;
    let agent = sc.world.start_agent("lab-1", &sc.state_dir, 2);
    orphan_is_killed_by_the_restart(&sc.marker, pgid).await;
    // The restarted agent spooled its report of the interrupted attempt.
    wait_for(
        PATIENCE,
        "the interrupted attempt to be spooled",
        || async { (sc.spooled() == 1).then_some(()) },
    )
    .await;
    sc.world.start_controller().await;
    sc.check_end(&INTERRUPTED_AT_S2, REPORTED).await;
    kill(agent).await;
}

/// The node lost the agent's state (reinstalled, say) but kept its token: the restarted agent
/// has an empty spool and no record of the step, so the controller alone sees that the job is
/// no longer run, records the interrupted attempt and assigns the job again.
async fn agent_restarted_with_an_empty_spool_while_its_job_runs(backend: Backend) {
    let Some((sc, agent)) = start_scenario(backend, "d").await else {
        return;
    };
    let pgid = sc.wait_loading().await;
    wait_for(PATIENCE, "s0 and s1 to be stored", || async {
        (sc.job().await.results.len() == 2).then_some(())
    })
    .await;
    kill(agent).await;
    // What a reinstall leaves: the token, nothing else; and the reboot killed the step.
    let _ = nix_kill_group(pgid);
    let token = std::fs::read(sc.state_dir.join("node-token")).expect("node token");
    std::fs::remove_dir_all(&sc.state_dir).expect("wipe the state directory");
    std::fs::create_dir_all(&sc.state_dir).expect("state directory");
    std::fs::write(sc.state_dir.join("node-token"), token).expect("restore the token");
    let agent = sc.world.start_agent("lab-1", &sc.state_dir, 2);
    sc.check_end(
        &INTERRUPTED_AT_S2,
        "interrupted: the agent stopped running the job during step s2",
    )
    .await;
    kill(agent).await;
}

/// `message` with the node token as its bearer.
fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

/// SIGKILL to a process group, through `kill(1)` (the test crate has no signal crate).
fn nix_kill_group(pgid: i32) -> std::io::Result<std::process::ExitStatus> {
    std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status()
}

/// A hand-made agent's client on the world's controller, registered as node `lab-1` (one
/// simulated H100, label `sku: hgx-h100`) but not connected: its client, inventory and token.
async fn hand_made_agent(
    world: &World,
) -> (
    v1::agent_service_client::AgentServiceClient<tonic::transport::Channel>,
    v1::Inventory,
    String,
) {
    let channel = Endpoint::from_shared(world.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut agents = v1::agent_service_client::AgentServiceClient::new(channel);
    let inventory = v1::Inventory {
        hostname: "lab-1".into(),
        driver_version: "550.54.15".into(),
        gpus: vec![v1::GpuInfo {
            index: 0,
            uuid: "GPU-0".into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            vbios_version: "96.00.89.00.01".into(),
            ..Default::default()
        }],
        gpu_source: "simulated".into(),
        ..Default::default()
    };
    let registration = agents
        .register(v1::RegisterRequest {
            node_name: "lab-1".into(),
            labels: [("sku".to_owned(), "hgx-h100".to_owned())].into(),
            inventory: Some(inventory.clone()),
            agent_version: "hand-made".into(),
            node_token: String::new(),
        })
        .await
        .expect("register")
        .into_inner();
    (agents, inventory, registration.node_token)
}

/// A job whose assignment was lost with its stream (it closed before the agent read it) is
/// sent as the first command once the agent connects again, and again on each reconnection
/// until the agent accepts it; a connection after that job ended sends nothing.
async fn an_assignment_lost_with_its_stream_is_sent_again_when_the_agent_connects(
    backend: Backend,
) {
    use tokio_stream::StreamExt as _;
    let Some(mut world) = World::new(backend).await else {
        return;
    };
    world.start_controller().await;
    let (mut agents, _inventory, token) = hand_made_agent(&world).await;
    let idle = v1::AgentEvent {
        event: Some(v1::agent_event::Event::Heartbeat(v1::Heartbeat::default())),
    };
    let mut connect = async || {
        let events = tokio_stream::iter([idle.clone()]).chain(tokio_stream::pending());
        agents
            .connect(authed(events, &token))
            .await
            .expect("connect")
            .into_inner()
    };
    let mut clients = world.clients().await;
    // The job is assigned while this stream is open, and the stream closes before the agent
    // read anything from it: the assignment went with it.
    let away = connect().await;
    let plan = "name: gpu-qual\nselector: {sku: hgx-h100}\nsteps:\n  - {name: s0, kind: exec, command: [\"true\"], timeout: 1m}\n";
    let run = clients.start_qualification("r550", 1, plan).await;
    clients
        .wait_run(&run.id, PATIENCE, "the job assigned", |run| {
            run.jobs.first().is_some_and(|job| job.state == "assigned")
        })
        .await;
    drop(away);
    for connection in ["first", "second"] {
        let mut commands = connect().await;
        let command = tokio::time::timeout(PATIENCE, commands.next())
            .await
            .unwrap_or_else(|_| panic!("a command on the {connection} connection"))
            .expect("stream open")
            .expect("command")
            .command;
        let Some(v1::controller_command::Command::AssignJob(assign)) = command else {
            panic!("the assignment on the {connection} connection: {command:?}");
        };
        assert_eq!(assign.job_id, run.jobs[0].id, "{connection} connection");
        assert_eq!(assign.lease_epoch, 1, "{connection} connection");
    }
    // The job ends (cancelled with its run): a connection then carries no command.
    clients
        .runs
        .cancel_run(v1::CancelRunRequest { id: run.id.clone() })
        .await
        .expect("cancel the run");
    let mut commands = connect().await;
    let command = tokio::time::timeout(Duration::from_secs(2), commands.next()).await;
    assert!(
        command.is_err(),
        "nothing to send once the job ended: {command:?}"
    );
    world.kill_controller().await;
}

/// A second agent binary started with a node name another agent holds, without its token
/// (another machine, or the state directory lost): it stops with a failure, saying that it
/// presented no token and which file to restore, and the node stays the first agent's.
async fn an_agent_claiming_a_taken_node_name_stops_and_says_what_to_do(backend: Backend) {
    let Some(mut world) = World::new(backend).await else {
        return;
    };
    world.start_controller().await;
    let _first = world.start_agent("lab-1", &world.dir.path().join("agent-lab-1"), 1);
    let mut clients = world.clients().await;
    clients.wait_ready_nodes(1).await;
    let mut second = world.start_agent("lab-1", &world.dir.path().join("elsewhere"), 2);
    let status = tokio::time::timeout(PATIENCE, second.wait())
        .await
        .unwrap_or_else(|_| panic!("the second agent stops on its own{}", world.logs()))
        .expect("reap the agent");
    assert!(!status.success(), "{status:?}");
    let log = std::fs::read_to_string(world.log("lab-1-2")).expect("its log");
    for said in [
        "the controller refused node 'lab-1'",
        "restore that file on the node, or pick another node name",
        "this agent presented no node token",
    ] {
        assert!(log.contains(said), "{said:?} in:\n{log}");
    }
    let nodes = clients.wait_ready_nodes(1).await;
    assert_eq!(nodes.len(), 1, "{nodes:#?}");
    world.kill_controller().await;
}

/// A hand-made agent on the real controller: its heartbeats name the job at another step
/// (nothing happens), a job that does not exist (that job is cancelled on the agent; a
/// heartbeat built before the agent read every command says nothing about its own job), and
/// finally none, once it has read every command (the job's attempt is recorded as interrupted
/// and the job assigned again).
async fn heartbeats_naming_another_step_another_job_or_none(backend: Backend) {
    use tokio_stream::StreamExt as _;
    let Some(mut world) = World::new(backend).await else {
        return;
    };
    world.start_controller().await;
    let (mut agents, inventory, token) = hand_made_agent(&world).await;
    let (events, outbound) = tokio::sync::mpsc::channel(16);
    let heartbeat = |job: &str, step: Option<u32>, commands_received: u64| v1::AgentEvent {
        event: Some(v1::agent_event::Event::Heartbeat(v1::Heartbeat {
            running_job_id: job.to_owned(),
            lease_epoch: u64::from(!job.is_empty()),
            step_index: step,
            attempt: u32::from(step.is_some()),
            commands_received,
            ..Default::default()
        })),
    };
    events
        .send(heartbeat("", None, 0))
        .await
        .expect("first heartbeat");
    let mut commands = agents
        .connect(authed(
            tokio_stream::wrappers::ReceiverStream::new(outbound),
            &token,
        ))
        .await
        .expect("connect")
        .into_inner();
    let mut next_command = async || {
        tokio::time::timeout(PATIENCE, commands.next())
            .await
            .expect("a command within the patience")
            .expect("stream open")
            .expect("command")
            .command
            .expect("a command")
    };
    let mut clients = world.clients().await;
    let plan = "name: gpu-qual\nselector: {sku: hgx-h100}\nsteps:\n  - {name: s0, kind: exec, command: [\"true\"], timeout: 1m}\n  - {name: s1, kind: exec, command: [\"true\"], timeout: 1m, retries: 1}\n";
    let run = clients.start_qualification("r550", 1, plan).await;
    let v1::controller_command::Command::AssignJob(assign) = next_command().await else {
        panic!("an assignment first");
    };
    let job_id = assign.job_id.clone();
    events
        .send(v1::AgentEvent {
            event: Some(v1::agent_event::Event::JobAccepted(v1::JobAccepted {
                job_id: job_id.clone(),
                lease_epoch: assign.lease_epoch,
            })),
        })
        .await
        .expect("accept");
    let s0 = v1::StepResult {
        job_id: job_id.clone(),
        step_index: 0,
        step_name: "s0".into(),
        attempt: 1,
        lease_epoch: assign.lease_epoch,
        outcome: v1::Outcome::Passed as i32,
        exit_code: Some(0),
        started_at: Some(prost_types::Timestamp::default()),
        finished_at: Some(prost_types::Timestamp::default()),
        inventory: Some(inventory),
        message: "exit code 0".into(),
        ..Default::default()
    };
    agents
        .report_result(authed(s0, &token))
        .await
        .expect("s0 stored");
    let job = |clients: &mut Clients| {
        let mut clients = clients.clone();
        let id = run.id.clone();
        async move { clients.run(&id).await.jobs.remove(0) }
    };
    assert_eq!(job(&mut clients).await.state, "running");

    // The job at another step than the controller has results for: the agent runs it.
    events
        .send(heartbeat(&job_id, Some(1), 1))
        .await
        .expect("heartbeat");
    // Idle, but built before the assignment arrived: says nothing about the job.
    events
        .send(heartbeat("", None, 0))
        .await
        .expect("heartbeat");
    // A job that does not exist, also built early: that job is cancelled on the agent. The
    // cancel comes after the controller handled the two heartbeats before it, in order.
    events
        .send(heartbeat("no-such-job", Some(0), 0))
        .await
        .expect("heartbeat");
    let v1::controller_command::Command::CancelJob(cancel) = next_command().await else {
        panic!("a cancel of the unknown job");
    };
    assert_eq!(cancel.job_id, "no-such-job");
    let after = job(&mut clients).await;
    assert_eq!(after.state, "running", "{after:#?}");
    assert_eq!(after.lease_epoch, assign.lease_epoch);
    assert_eq!(
        after.results.len(),
        1,
        "nothing invented: {:#?}",
        after.results
    );

    // Idle, and it read both commands: the agent no longer runs the job.
    events
        .send(heartbeat("", None, 2))
        .await
        .expect("heartbeat");
    let v1::controller_command::Command::AssignJob(again) = next_command().await else {
        panic!("the job assigned again");
    };
    assert_eq!(again.job_id, job_id);
    assert_eq!(again.lease_epoch, assign.lease_epoch + 1);
    let after = job(&mut clients).await;
    let messages: Vec<(&str, u32, &str)> = after
        .results
        .iter()
        .map(|r| (r.step_name.as_str(), r.attempt, r.message.as_str()))
        .collect();
    assert_eq!(
        messages,
        [
            ("s0", 1, "exit code 0"),
            (
                "s1",
                1,
                "interrupted: the agent stopped running the job during step s1 (restarted, or \
                 lost its state) and holds no result of it"
            ),
        ],
    );
    assert_eq!(after.state, "assigned");
    // The controller served throughout; it stops cleanly.
    world.kill_controller().await;
}

/// The agent's spool breaks (its directory replaced by a file: every write fails, whoever
/// the agent runs as) while the controller is down: the results are kept in memory, counted
/// as unsent, and delivered once the controller is back; the job passes with every result
/// once instead of staying `running`.
async fn results_the_spool_cannot_take_are_delivered_from_memory(backend: Backend) {
    let Some(mut world) = World::new(backend).await else {
        return;
    };
    world.start_controller().await;
    let state_dir = world.dir.path().join("agent-lab-1");
    let agent = world.start_agent("lab-1", &state_dir, 1);
    let mut clients = world.clients().await;
    let plan = "name: gpu-qual\nselector: {sku: hgx-h100}\nsteps:\n  - {name: s0, kind: exec, command: [sleep, '1'], timeout: 1m}\n  - {name: s1, kind: exec, command: [sleep, '0.2'], timeout: 1m}\n  - {name: s2, kind: exec, command: [\"true\"], timeout: 1m}\n";
    let run = clients.start_qualification("r550", 1, plan).await;
    let job_id = run.jobs[0].id.clone();
    clients
        .wait_run(&run.id, PATIENCE, "the job to run", |run| {
            run.jobs.first().is_some_and(|job| job.state == "running")
        })
        .await;
    world.kill_controller().await;
    let spool = state_dir.join("spool");
    std::fs::rename(&spool, state_dir.join("spool-away")).expect("move the spool away");
    std::fs::write(&spool, b"not a directory").expect("break the spool");
    // Every step ran (its log exists and the agent moved on) while nothing could be spooled.
    let last_log = state_dir
        .join("jobs")
        .join(&job_id)
        .join("2-s2")
        .join("attempt-1")
        .join("output.log");
    wait_for(PATIENCE, "the last step to run", || async {
        last_log.exists().then_some(())
    })
    .await;
    world.start_controller().await;
    let mut clients = world.clients().await;
    let run = tokio::time::timeout(PATIENCE * 2, clients.wait_run_done(&run.id))
        .await
        .unwrap_or_else(|_| panic!("the run did not end; logs:{}", world.logs()));
    let job = &run.jobs[0];
    assert_eq!(job.state, "passed", "{:#?}{}", job.results, world.logs());
    let steps: Vec<(&str, u32)> = job
        .results
        .iter()
        .map(|r| (r.step_name.as_str(), r.attempt))
        .collect();
    assert_eq!(
        steps,
        [("s0", 1), ("s1", 1), ("s2", 1)],
        "every result once"
    );
    assert!(spool.is_file(), "the spool stayed broken throughout");
    kill(agent).await;
}
