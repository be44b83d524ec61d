//! Fault: the controller process is killed with `kill -9` again and again while agents upload
//! results, and started again each time. Every result an agent produced is stored exactly
//! once (none lost, none duplicated), every job ends, the agents' spools empty, and no step
//! process outlives the test. On SQLite and on PostgreSQL (the latter when
//! `TOLLGATE_TEST_DATABASE_URL` is set; otherwise it says it was skipped).
//!
//! Runs the `tollgate-controller` binary (see `tollgate_tests::process`).

use std::time::Duration;
use tollgate_controller::store::testing;
use tollgate_tests::process::ControllerProcess;
use tollgate_tests::{
    Backend, Clients, assert_every_result_once, fresh_database_url, lab_agents, measuring_plan,
    spooled_results, stop_agents_leaving_no_step_process,
};

tollgate_tests::on_both_backends!(results_survive_repeated_kill_9_of_the_controller);

/// How many times the controller is killed during the run.
const KILLS: u32 = 6;
/// Steps per job; each takes about 0.3 s, so results arrive all through the kills.
const STEPS: u32 = 12;

/// The pause before each kill, in milliseconds: spread over 300..1100 ms by a fixed sequence,
/// so a failure can be replayed (the seed is printed).
fn pauses(seed: u64) -> impl Iterator<Item = u64> {
    let mut state = seed;
    std::iter::repeat_with(move || {
        // SplitMix64.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        300 + (z ^ (z >> 31)) % 800
    })
}

async fn results_survive_repeated_kill_9_of_the_controller(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(database_url) = fresh_database_url(backend, dir.path()).await else {
        return;
    };
    // Longer than the agents' largest reconnect backoff (5 s) plus a restart: a kill must
    // not be read as the nodes dying.
    let mut controller = ControllerProcess::start(
        &database_url,
        &dir.path().join("controller"),
        &dir.path().join("controller.log"),
        Duration::from_secs(12),
    )
    .await;
    let marker = format!("fault-kill-{}", uuid::Uuid::new_v4().simple());
    let agents = lab_agents(&controller.url, 1, &[&[], &[]]);

    let mut clients = Clients::new(controller.channel().await.expect("connect"));
    let run = clients
        .start_qualification("r550", 2, &measuring_plan(STEPS, 0.3, Some(&marker)))
        .await;
    assert_eq!(run.jobs.len(), 2);

    let seed = u64::from(std::process::id());
    println!("kill pauses from seed {seed}");
    for (kill, pause_ms) in (1..=KILLS).zip(pauses(seed)) {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        controller.kill_9().await;
        controller.restart().await;
        println!("kill -9 number {kill} after {pause_ms} ms; serving again");
    }

    let mut clients = Clients::new(controller.channel().await.expect("connect"));
    let run = clients.wait_run_done(&run.id).await;
    assert_every_result_once(&run, STEPS);
    // Every result was acknowledged: nothing is left to send.
    for agent in &agents {
        let spool = agent.state_dir.join("spool");
        tollgate_tests::wait_for(Duration::from_secs(10), "the spools to empty", || {
            let spool = spool.clone();
            async move { (spooled_results(&spool) == 0).then_some(()) }
        })
        .await;
    }
    stop_agents_leaving_no_step_process(agents, &marker).await;
    controller.stop().await;
    if backend == Backend::Postgres {
        testing::drop_postgres_schema(&database_url)
            .await
            .expect("drop test schema");
    }
}
