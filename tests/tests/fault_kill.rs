//! Fault: the controller process is killed with `kill -9` again and again while agents upload
//! results, and started again each time. Every result an agent produced is stored exactly
//! once (none lost, none duplicated), every job ends, the agents' spools empty, and no step
//! process outlives the test. On SQLite and on PostgreSQL (the latter when
//! `TOLLGATE_TEST_DATABASE_URL` is set; otherwise it says it was skipped).
//!
//! Runs the `tollgate-controller` binary (see `tollgate_tests::process`).

use std::time::Duration;
use tollgate_controller::store::testing;
use tollgate_tests::process::{ControllerProcess, processes_with};
use tollgate_tests::{Agent, Backend, Clients};

tollgate_tests::on_both_backends!(results_survive_repeated_kill_9_of_the_controller);

/// How many times the controller is killed during the run.
const KILLS: u32 = 6;
/// Steps per job; each takes about 0.3 s, so results arrive all through the kills.
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
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}/tollgate.db", dir.path().display()),
        Backend::Postgres => {
            let Some(base) = testing::postgres_url_or_skip() else {
                return;
            };
            testing::fresh_postgres_url(&base)
                .await
                .expect("fresh postgres schema")
        }
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
    let agents: Vec<Agent> = (1..=2)
        .map(|i| Agent::start(&controller.url, &format!("lab-{i}"), 1, &[]))
        .collect();

    let mut clients = Clients::new(controller.channel().await.expect("connect"));
    clients.wait_ready_nodes(2).await;
    clients.create_release("r550").await;
    clients.apply_plan(&busy_plan(&marker)).await;
    let run = clients.start_run("r550", "gpu-qual").await;
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
        for (i, result) in job.results.iter().enumerate() {
            assert_eq!(result.measurements[0].name, format!("step_{i}"));
        }
    }
    // Every result was acknowledged: nothing is left to send.
    for agent in &agents {
        let spool = agent.state_dir.join("spool");
        tollgate_tests::wait_for(Duration::from_secs(10), "the spools to empty", || {
            let spool = spool.clone();
            async move { (spool_files(&spool) == 0).then_some(()) }
        })
        .await;
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
    if backend == Backend::Postgres {
        testing::drop_postgres_schema(&database_url)
            .await
            .expect("drop test schema");
    }
}

/// Result files waiting in a spool directory (not the `corrupt` or `rejected` folders).
fn spool_files(spool: &std::path::Path) -> usize {
    std::fs::read_dir(spool)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.path().is_file())
                .count()
        })
        .unwrap_or(0)
}
