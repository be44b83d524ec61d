//! Several controller replicas on one PostgreSQL, all active, while replicas die: agents spread
//! over three replicas (each given the list of all three) run one qualification while a
//! replica is killed with `kill -9` every second or two (and started again) until the run
//! ends. Every result is stored once, no job is assigned twice, the agents' spools empty, and
//! every replica decides the gate alike. And SQLite, which serves one controller, refuses a
//! second controller on its file. And one report signing key per deployment: a controller with
//! another key, or with a key a rotation retired, does not start, and a running replica whose
//! key was retired signs nothing until its data directory holds the new key.
//!
//! Runs the `tollgate-controller` binary (see `tollgate_tests::process`).

use std::time::Duration;
use tollgate_controller::store::testing;
use tollgate_tests::process::{ControllerProcess, Replicas, text, tollgate, workspace_binary};
use tollgate_tests::{
    Agent, Backend, Clients, assert_every_result_once, fresh_database_url, measuring_plan,
    spooled_results, stop_agents_leaving_no_step_process,
};

/// Replicas of the controller.
const REPLICAS: usize = 3;
/// Simulated agents, spread over the replicas.
const AGENTS: usize = 50;
/// Steps per job, each about 0.3 s: results arrive all through the kills.
const STEPS: u32 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_completes_on_replicas_killed_one_after_another() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(database_url) = fresh_database_url(Backend::Postgres, dir.path()).await else {
        return;
    };
    // A grace longer than the agents' largest reconnect backoff (5 s) plus a restart;
    // heartbeats every second, so that 50 agents load the database as a fleet would.
    let mut replicas = Replicas::start(
        &database_url,
        dir.path(),
        REPLICAS,
        Duration::from_secs(12),
        Duration::from_secs(1),
    )
    .await;
    let urls = replicas.urls();
    let marker = format!("replicas-{}", uuid::Uuid::new_v4().simple());
    // Agent i starts with replica i mod 3: the list, rotated.
    let agents: Vec<Agent> = (0..AGENTS)
        .map(|idx| {
            let list: Vec<&str> = (0..REPLICAS)
                .map(|k| urls[(idx + k) % REPLICAS].as_str())
                .collect();
            Agent::start(&list.join(","), &format!("lab-{}", idx + 1), 1, &[])
        })
        .collect();

    let mut clients = Clients::new(replicas.processes[0].channel().await.expect("connect"));
    clients.wait_ready_nodes(AGENTS).await;
    clients
        .apply_gate(&format!(
            "milestone: lab-qual\nrules:\n  - steps-passed: {{plan: gpu-qual, steps: [s0, s{}], min-nodes: {AGENTS}}}\n",
            STEPS - 1
        ))
        .await;
    let run = clients
        .start_qualification("r550", AGENTS, &measuring_plan(STEPS, 0.3, Some(&marker)))
        .await;
    assert_eq!(
        run.jobs.len(),
        AGENTS,
        "every node is selected, whichever replica holds its agent"
    );

    let (run, kills) = replicas
        .kill_in_turn_until(Duration::from_millis(1200), 40, |channel| {
            let id = run.id.clone();
            async move {
                let now = Clients::new(channel).run(&id).await;
                (now.state != "running").then_some(now)
            }
        })
        .await;
    println!("the run ended after {kills} replica kills");
    assert!(kills >= 2, "the run must have lived through kills");
    assert_every_result_once(&run, STEPS);

    // No job was assigned twice: every job is on its first lease epoch, and each of its
    // results was made under it.
    let pool = sqlx::PgPool::connect(&database_url)
        .await
        .expect("connect to the test schema");
    let epochs: Vec<(String, i64)> = sqlx::query_as("SELECT id, lease_epoch FROM jobs")
        .fetch_all(&pool)
        .await
        .expect("jobs");
    assert_eq!(epochs.len(), AGENTS);
    for (job, epoch) in &epochs {
        assert_eq!(*epoch, 1, "job {job} was assigned {epoch} times");
    }
    let (other_epochs,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM step_results WHERE lease_epoch <> 1")
            .fetch_one(&pool)
            .await
            .expect("results");
    assert_eq!(other_epochs, 0);
    pool.close().await;

    for agent in &agents {
        let spool = agent.state_dir.join("spool");
        tollgate_tests::wait_for(Duration::from_secs(20), "the spools to empty", || {
            let spool = spool.clone();
            async move { (spooled_results(&spool) == 0).then_some(()) }
        })
        .await;
    }
    // Every replica decides the gate on the same evidence alike.
    let mut digests = Vec::new();
    for replica in &replicas.processes {
        let mut clients = Clients::new(replica.channel().await.expect("connect"));
        let decision = clients.evaluate("r550").await;
        assert_eq!(decision.verdict, "passed", "{decision:#?}");
        digests.push(decision.digest);
    }
    assert!(
        digests.windows(2).all(|pair| pair[0] == pair[1]),
        "{digests:?}"
    );
    stop_agents_leaving_no_step_process(agents, &marker).await;
    replicas.stop().await;
    testing::drop_postgres_schema(&database_url)
        .await
        .expect("drop test schema");
}

/// Runs `tollgate-controller serve` on `data_dir` and `database_url`, expecting it to refuse
/// to start (it would otherwise serve until killed); returns what it printed.
async fn serve_until_refused(
    data_dir: &std::path::Path,
    database_url: &str,
) -> std::process::Output {
    let run = tokio::process::Command::new(workspace_binary("tollgate-controller"))
        .args(["serve", "--listen", "127.0.0.1:0", "--insecure-loopback"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--database", database_url])
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the controller refuses within 30 s instead of serving")
        .expect("run tollgate-controller")
}

/// A controller serving a new SQLite database in `dir` (data directory `dir/controller`);
/// returns the database URL with it.
async fn first_sqlite_controller(dir: &std::path::Path) -> (String, ControllerProcess) {
    let database_url = format!("sqlite://{}/tollgate.db", dir.display());
    let first = ControllerProcess::start(
        &database_url,
        &dir.join("controller"),
        &dir.join("first.log"),
        Duration::from_secs(10),
    )
    .await;
    (database_url, first)
}

#[tokio::test]
async fn a_second_controller_on_one_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (database_url, mut first) = first_sqlite_controller(dir.path()).await;
    let second = serve_until_refused(&dir.path().join("second"), &database_url).await;
    assert!(
        !second.status.success(),
        "a second controller must not start"
    );
    let stderr = text(&second.stderr);
    assert!(
        stderr.contains("another controller serves the SQLite database")
            && stderr.contains("run replicas on PostgreSQL"),
        "{stderr}"
    );
    // The first one serves on; once it stopped, a controller starts on the file again.
    assert!(first.is_running());
    first.stop().await;
    first.restart().await;
    first.stop().await;
}

/// One signing identity per deployment: a controller whose data directory holds another
/// report signing key than the one the database recorded (a replica whose key was not copied,
/// a key file lost and made anew) refuses to start, saying which key to restore.
#[tokio::test]
async fn a_controller_with_another_report_signing_key_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (database_url, mut first) = first_sqlite_controller(dir.path()).await;
    let key = tollgate_tests::process::public_key(&first.url).await;
    first.stop().await;

    let other_dir = dir.path().join("other");
    let refused = serve_until_refused(&other_dir, &database_url).await;
    assert!(!refused.status.success(), "it must not start");
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("is not this deployment's")
            && stderr.contains(&format!("signed with public key {key}")),
        "{stderr}"
    );
    // The key it made is gone again: restoring the deployment's key is a plain copy.
    assert!(!other_dir.join("report-signing.key").exists());
    std::fs::copy(
        dir.path().join("controller/report-signing.key"),
        other_dir.join("report-signing.key"),
    )
    .expect("copy the key");
    let mut restored = ControllerProcess::start(
        &database_url,
        &other_dir,
        &dir.path().join("restored.log"),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        tollgate_tests::process::public_key(&restored.url).await,
        key
    );
    restored.stop().await;
}

/// After a key rotation, a controller whose data directory holds the retired key (a replica
/// not given the new key files) refuses to start, saying when its key was retired, which key
/// signs now and what to copy where; its key file is left alone. With the new key files
/// copied in it starts and signs with the new key.
#[tokio::test]
async fn a_controller_with_a_retired_report_signing_key_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (database_url, mut first) = first_sqlite_controller(dir.path()).await;
    let old_key = tollgate_tests::process::public_key(&first.url).await;
    first.stop().await;
    let first_dir = dir.path().join("controller");
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).expect("mkdir");
    let copy_keys = || {
        for file in ["report-signing.key", "report-signing.pub"] {
            std::fs::copy(first_dir.join(file), other_dir.join(file)).expect("copy the key");
        }
    };
    copy_keys();

    let rotated = tollgate_tests::process::rotate_report_key(&first_dir, &database_url).await;
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    let new_key = std::fs::read_to_string(first_dir.join("report-signing.pub"))
        .expect("the new public key")
        .trim()
        .to_owned();
    assert_ne!(new_key, old_key);

    let refused = serve_until_refused(&other_dir, &database_url).await;
    assert!(!refused.status.success(), "it must not start");
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains(&format!("(public key {old_key}) was retired at "))
            && stderr.contains(&format!("signed with public key {new_key}"))
            && stderr.contains("copy report-signing.key and report-signing.pub from the data directory where `tollgate-controller report-key rotate` ran"),
        "{stderr}"
    );
    let kept = std::fs::read_to_string(other_dir.join("report-signing.pub")).expect("kept");
    assert_eq!(kept.trim(), old_key, "a retired key file is not removed");

    copy_keys();
    let mut replica = ControllerProcess::start(
        &database_url,
        &other_dir,
        &dir.path().join("replica.log"),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        tollgate_tests::process::public_key(&replica.url).await,
        new_key
    );
    replica.stop().await;
}

/// Two running replicas on one PostgreSQL, each with its own copy of the key. After a
/// rotation from the first one's data directory, the first signs its next report with the new
/// key; the other signs none (FAILED_PRECONDITION naming the key to copy) until its data
/// directory holds the new key files, then signs with the new key without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_replica_signs_with_the_rotated_key_once_given_its_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(database_url) = fresh_database_url(Backend::Postgres, dir.path()).await else {
        return;
    };
    let (first_dir, other_dir) = (dir.path().join("first"), dir.path().join("other"));
    let grace = Duration::from_secs(10);
    let mut first = ControllerProcess::start(
        &database_url,
        &first_dir,
        &dir.path().join("first.log"),
        grace,
    )
    .await;
    std::fs::create_dir_all(&other_dir).expect("mkdir");
    let copy_keys = || {
        for file in ["report-signing.key", "report-signing.pub"] {
            std::fs::copy(first_dir.join(file), other_dir.join(file)).expect("copy the key");
        }
    };
    copy_keys();
    let mut other = ControllerProcess::start(
        &database_url,
        &other_dir,
        &dir.path().join("other.log"),
        grace,
    )
    .await;
    let mut clients = Clients::new(first.channel().await.expect("connect"));
    clients.apply_plan(&tollgate_tests::plan_yaml(1.0)).await;
    clients.apply_gate(&tollgate_tests::gate_yaml(1)).await;
    clients.create_release("r550").await;
    let report = |url: String, name: &str| {
        let path = dir.path().join(name);
        async move {
            let output = tollgate(
                &url,
                &[
                    "report",
                    "--release",
                    "r550",
                    "--format",
                    "markdown",
                    "-o",
                    path.to_str().expect("UTF-8 path"),
                ],
            )
            .await;
            (output, path)
        }
    };
    let verify = |path: std::path::PathBuf, key: String| async move {
        let path = path.to_str().expect("UTF-8 path").to_owned();
        // Offline: no controller.
        let output = tollgate("", &["report", "verify", &path, "--public-key", &key]).await;
        output.status.code()
    };

    let rotated = tollgate_tests::process::rotate_report_key(&first_dir, &database_url).await;
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    let new_key = std::fs::read_to_string(first_dir.join("report-signing.pub"))
        .expect("the new public key")
        .trim()
        .to_owned();

    let (output, path) = report(first.url.clone(), "first.md").await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(verify(path, new_key.clone()).await, Some(0));

    let (output, path) = report(other.url.clone(), "refused.md").await;
    assert!(
        !output.status.success(),
        "a replica with a retired key signs nothing"
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("was retired at")
            && stderr.contains(&new_key)
            && stderr.contains("no restart needed"),
        "{stderr}"
    );
    assert!(!path.exists());

    copy_keys();
    let (output, path) = report(other.url.clone(), "other.md").await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(verify(path, new_key).await, Some(0));
    first.stop().await;
    other.stop().await;
    testing::drop_postgres_schema(&database_url)
        .await
        .expect("drop test schema");
}
