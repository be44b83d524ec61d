//! Fault: a full disk. The controller's SQLite database, and an agent's state directory, on a
//! small tmpfs that the test fills and frees mid-run. The controller says it is degraded
//! (health `NOT_SERVING`, an ERROR line) while writes fail, and serves again by itself, the
//! same process, once space returns (an INFO line); no live node is taken for dead, every
//! result is stored exactly once, every job ends, and no step process is left.
//!
//! Mounting a tmpfs needs root and `mount`; without them each test prints `skipped: ...`
//! and why. Runs the `tollgate-controller` binary (see `tollgate_tests::process`).

use std::time::Duration;
use tollgate_controller::store::testing::tmpfs_or_skip;
use tollgate_proto::v1;
use tollgate_tests::process::{ControllerProcess, processes_with};
use tollgate_tests::{Agent, Clients, wait_for};
use tonic_health::ServingStatus;

/// Steps per job, each about 0.3 s: results keep coming while the disk is full.
const STEPS: u32 = 12;

/// A plan of [`STEPS`] short steps, each reporting its own measurement; `marker` is in every
/// step's command line so the test can look for leftover processes.
fn busy_plan(marker: &str) -> String {
    let mut yaml = String::from("name: gpu-qual\nselector: {sku: hgx-h100}\nsteps:\n");
    for i in 0..STEPS {
        yaml.push_str(&format!(
            "  - name: s{i}\n    kind: exec\n    command: [sh, -c, \"sleep 0.3; echo '@tollgate measure step_{i} {i} n'\", {marker}]\n    timeout: 1m\n"
        ));
    }
    yaml
}

/// Waits until the controller's health service says `want` for the whole server and for the
/// run service.
async fn wait_health(controller: &ControllerProcess, want: ServingStatus, timeout: Duration) {
    let what = format!("health {want:?}");
    wait_for(timeout, &what, || async {
        let server = controller.health("").await?;
        let runs = controller
            .health(v1::run_service_server::SERVICE_NAME)
            .await?;
        (server == want && runs == want).then_some(())
    })
    .await;
}

/// Asserts the run finished with every job passed and every step's result stored once.
fn assert_every_result_once(run: &v1::Run) {
    assert_eq!(run.state, "finished", "{run:#?}");
    for job in &run.jobs {
        assert_eq!(
            job.state, "passed",
            "job on {}: {:#?}",
            job.node, job.results
        );
        let stored: Vec<(String, u32)> = job
            .results
            .iter()
            .map(|r| (r.step_name.clone(), r.attempt))
            .collect();
        let expected: Vec<(String, u32)> = (0..STEPS).map(|i| (format!("s{i}"), 1)).collect();
        assert_eq!(
            stored, expected,
            "every result exactly once, on {}",
            job.node
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controller_database_on_a_full_disk_recovers_without_a_restart() {
    let Some(disk) = tmpfs_or_skip(16 * 1024) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    // Longer than the agents' largest reconnect backoff (5 s); the disk stays full longer.
    let grace = Duration::from_secs(6);
    let mut controller = ControllerProcess::start(
        &format!("sqlite://{}/tollgate.db", disk.path().display()),
        &dir.path().join("controller"),
        &dir.path().join("controller.log"),
        grace,
    )
    .await;
    let pid = controller.pid();
    let marker = format!("fault-disk-{}", uuid::Uuid::new_v4().simple());
    let agents: Vec<Agent> = (1..=2)
        .map(|i| Agent::start(&controller.url, &format!("lab-{i}"), 1, &[]))
        .collect();
    let mut clients = Clients::new(controller.channel().await.expect("connect"));
    clients.wait_ready_nodes(2).await;
    clients.create_release("r550").await;
    clients.apply_plan(&busy_plan(&marker)).await;
    let run = clients.start_run("r550", "gpu-qual").await;

    // Some results are in; then the disk fills up.
    wait_for(Duration::from_secs(20), "the first results", || {
        let mut runs = clients.runs.clone();
        let id = run.id.clone();
        async move {
            let run = runs
                .get_run(v1::GetRunRequest { id })
                .await
                .ok()?
                .into_inner();
            run.jobs
                .iter()
                .all(|job| !job.results.is_empty())
                .then_some(())
        }
    })
    .await;
    disk.fill("filler").expect("filling the disk");
    wait_health(
        &controller,
        ServingStatus::NotServing,
        Duration::from_secs(15),
    )
    .await;
    // Full for longer than the lease grace: heartbeats arrive but cannot be recorded.
    tokio::time::sleep(grace + Duration::from_secs(1)).await;
    assert_eq!(
        controller.health("").await,
        Some(ServingStatus::NotServing),
        "still degraded while the disk is full"
    );
    disk.free("filler").expect("freeing the disk");

    // Serving again by itself: the same process, not restarted.
    wait_health(&controller, ServingStatus::Serving, Duration::from_secs(15)).await;
    assert_eq!(controller.pid(), pid);
    assert!(controller.is_running());

    let run = clients.wait_run_done(&run.id).await;
    assert_every_result_once(&run);
    let nodes = clients
        .nodes
        .list_nodes(v1::ListNodesRequest::default())
        .await
        .expect("list nodes")
        .into_inner()
        .nodes;
    for node in &nodes {
        assert_eq!(node.state, "ready", "{} was not taken for dead", node.name);
    }
    for agent in agents {
        agent.stop().await;
    }
    assert_eq!(
        processes_with(&marker),
        Vec::<u32>::new(),
        "no step process left"
    );
    controller.stop().await;
    let log = controller.log_text();
    assert!(log.contains("the database refuses writes"), "{log}");
    assert!(log.contains("the database accepts writes again"), "{log}");
}

// An agent that cannot spool a result keeps it in memory, sends it from there until it is
// acknowledged and counts it as unsent in its heartbeats, so the job ends with every result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_state_directory_on_a_full_disk_loses_no_result() {
    let Some(disk) = tmpfs_or_skip(4 * 1024) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut controller = ControllerProcess::start(
        &format!("sqlite://{}/tollgate.db", dir.path().display()),
        &dir.path().join("controller"),
        &dir.path().join("controller.log"),
        Duration::from_secs(6),
    )
    .await;
    let marker = format!("fault-disk-{}", uuid::Uuid::new_v4().simple());
    let agent = Agent::start_at(&controller.url, "lab-1", 1, disk.path().join("lab-1"));
    let mut clients = Clients::new(controller.channel().await.expect("connect"));
    clients.wait_ready_nodes(1).await;
    clients.create_release("r550").await;
    clients.apply_plan(&busy_plan(&marker)).await;
    let run = clients.start_run("r550", "gpu-qual").await;

    wait_for(Duration::from_secs(20), "the first result", || {
        let mut runs = clients.runs.clone();
        let id = run.id.clone();
        async move {
            let run = runs
                .get_run(v1::GetRunRequest { id })
                .await
                .ok()?
                .into_inner();
            run.jobs
                .iter()
                .all(|job| !job.results.is_empty())
                .then_some(())
        }
    })
    .await;
    // Results produced now cannot be spooled; they must still arrive.
    disk.fill("filler").expect("filling the disk");
    tokio::time::sleep(Duration::from_secs(2)).await;
    disk.free("filler").expect("freeing the disk");

    let run = clients.wait_run_done(&run.id).await;
    assert_every_result_once(&run);
    agent.stop().await;
    assert_eq!(
        processes_with(&marker),
        Vec::<u32>::new(),
        "no step process left"
    );
    controller.stop().await;
}
