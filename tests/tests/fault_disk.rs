//! Fault: a full disk. The controller's SQLite database, and an agent's state directory, on a
//! small tmpfs that the test fills and frees mid-run. The controller says it is degraded
//! (health `NOT_SERVING`, an ERROR line) while writes fail, and serves again by itself, the
//! same process, once space returns (an INFO line); no live node is taken for dead, every
//! result is stored exactly once, every job ends, and no step process is left.
//!
//! Mounting a tmpfs needs root and `mount`; without them each test prints `skipped: ...`
//! and why. Runs the `tollgate-controller` binary (see `tollgate_tests::process`).

use std::path::Path;
use std::time::Duration;
use tollgate_controller::clock::{Clock, SystemClock};
use tollgate_controller::store::testing::tmpfs_or_skip;
use tollgate_proto::v1;
use tollgate_tests::process::ControllerProcess;
use tollgate_tests::{
    Agent, Clients, assert_every_result_once, lab_agents, measuring_plan, spooled_results,
    stop_agents_leaving_no_step_process, wait_for,
};
use tonic_health::ServingStatus;

/// Steps per job, each about 0.3 s: results keep coming while the disk is full.
const STEPS: u32 = 12;

/// A controller process whose SQLite database lives in `db_dir`, with its data directory and
/// log in `dir`, and the given lease grace.
async fn start_controller(db_dir: &Path, dir: &Path, grace: Duration) -> ControllerProcess {
    ControllerProcess::start(
        &format!("sqlite://{}/tollgate.db", db_dir.display()),
        &dir.join("controller"),
        &dir.join("controller.log"),
        grace,
    )
    .await
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

/// Waits until every node's last recorded heartbeat is older than `age` by this machine's
/// clock (the controller's too): while writes fail, the heartbeats that arrive cannot be
/// recorded, so a lease watchdog blind to the outage would now take every node for dead.
async fn wait_heartbeats_unrecorded_for(clients: &Clients, age: Duration) {
    let what = format!("no heartbeat recorded for {age:?}");
    wait_for(Duration::from_secs(60), &what, || {
        let mut clients = clients.clone();
        async move {
            let listed = clients.try_list_nodes().await?;
            let now = SystemClock.now().timestamp_millis();
            listed
                .iter()
                .all(|node| {
                    node.last_seen_at.as_ref().is_some_and(|at| {
                        let seen = at.seconds * 1000 + i64::from(at.nanos) / 1_000_000;
                        now - seen > i64::try_from(age.as_millis()).expect("a short age")
                    })
                })
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controller_database_on_a_full_disk_recovers_without_a_restart() {
    let Some(disk) = tmpfs_or_skip(16 * 1024) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    // Longer than the agents' largest reconnect backoff (5 s); the disk stays full longer.
    let grace = Duration::from_secs(6);
    let mut controller = start_controller(disk.path(), dir.path(), grace).await;
    let pid = controller.pid();
    let marker = format!("fault-disk-{}", uuid::Uuid::new_v4().simple());
    let agents = lab_agents(&controller.url, 1, &[&[], &[]]);
    let mut clients = Clients::new(controller.channel().await.expect("connect"));
    let run = clients
        .start_qualification("r550", 2, &measuring_plan(STEPS, 0.3, Some(&marker)))
        .await;

    // Some results are in; then the disk fills up.
    clients.wait_first_results(&run.id).await;
    disk.fill("filler").expect("filling the disk");
    wait_health(
        &controller,
        ServingStatus::NotServing,
        Duration::from_secs(15),
    )
    .await;
    // Full for longer than the lease grace (a second more for the watchdog's tick):
    // heartbeats arrive but cannot be recorded.
    wait_heartbeats_unrecorded_for(&clients, grace + Duration::from_secs(1)).await;
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
    assert_every_result_once(&run, STEPS);
    let nodes = clients.try_list_nodes().await.expect("list nodes");
    for node in &nodes {
        assert_eq!(node.state, "ready", "{} was not taken for dead", node.name);
    }
    stop_agents_leaving_no_step_process(agents, &marker).await;
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
    let mut controller = start_controller(dir.path(), dir.path(), Duration::from_secs(6)).await;
    let marker = format!("fault-disk-{}", uuid::Uuid::new_v4().simple());
    let agent = Agent::start_at(&controller.url, "lab-1", 1, disk.path().join("lab-1"));
    let mut clients = Clients::new(controller.channel().await.expect("connect"));
    let run = clients
        .start_qualification("r550", 1, &measuring_plan(STEPS, 0.3, Some(&marker)))
        .await;

    clients.wait_first_results(&run.id).await;
    // Results produced now cannot be spooled; they must still arrive. Each result produced
    // before the disk filled up is either still in the spool or already stored, so a stored
    // result beyond those counts, read after the fill, was held in memory; wait for two of
    // them while the disk is still full.
    disk.fill("filler").expect("filling the disk");
    let spooled = spooled_results(&agent.state_dir.join("spool"));
    let stored = stored_results(&clients.run(&run.id).await);
    let wanted = spooled + stored + 2;
    assert!(
        wanted < STEPS as usize,
        "the run leaves steps to produce while the disk is full ({spooled} spooled, {stored} stored)"
    );
    clients
        .wait_run(
            &run.id,
            Duration::from_secs(30),
            "results produced while the disk is full",
            |run| stored_results(run) >= wanted,
        )
        .await;
    disk.free("filler").expect("freeing the disk");

    let run = clients.wait_run_done(&run.id).await;
    assert_every_result_once(&run, STEPS);
    stop_agents_leaving_no_step_process(vec![agent], &marker).await;
    controller.stop().await;
}

/// Results stored for the run's jobs, all together.
fn stored_results(run: &v1::Run) -> usize {
    run.jobs.iter().map(|job| job.results.len()).sum()
}
