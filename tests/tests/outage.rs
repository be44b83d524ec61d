//! Controller outages: the controller stops mid-run and comes back after longer than a lease
//! grace; every result the agents produced meanwhile arrives from their spools exactly once,
//! in order, and the run finishes. And agent restarts: an agent that restarts during a step
//! gets the attempt recorded as interrupted and the job assigned again. On SQLite and on PostgreSQL (the latter when
//! `TOLLGATE_TEST_DATABASE_URL` is set; otherwise it says it was skipped).

use std::time::Duration;
use tollgate_tests::{
    Agent, Backend, Controller, ControllerOptions, assert_every_result_once, assert_spool_empty,
    lab_agents, measuring_plan, spooled_results, wait_for,
};

tollgate_tests::on_both_backends!(
    results_survive_a_controller_outage_exactly_once,
    agent_restarted_mid_step_is_recorded_and_the_job_retried,
);

/// Steps per job, one second each: some end before the outage, some during it, some after.
const STEPS: u32 = 4;

async fn results_survive_a_controller_outage_exactly_once(backend: Backend) {
    let mut options = ControllerOptions::new(backend);
    // Longer than the agents' largest reconnect backoff (5 s), shorter than the outage.
    let options_grace = Duration::from_secs(8);
    options.lease_grace = options_grace;
    let Some(mut controller) = Controller::start(options).await else {
        eprintln!("skipped: no PostgreSQL configured (TOLLGATE_TEST_DATABASE_URL)");
        return;
    };
    let agents = lab_agents(&controller.url, 2, &[&[], &[]]);
    let mut clients = controller.clients().await;
    let run = clients
        .start_qualification("r550", 2, &measuring_plan(STEPS, 1.0, None))
        .await;
    assert_eq!(run.jobs.len(), 2);

    // Stop mid-run: once every job reported a step (and, at one second a step, not all four).
    clients.wait_first_results(&run.id).await;
    controller.stop().await;
    let stopped_at = tokio::time::Instant::now();
    // Come back once every agent spooled results the controller has not seen, and later than
    // the lease grace.
    wait_for(
        Duration::from_secs(60),
        "results spooled during the outage, past the lease grace",
        || {
            let spooled = agents
                .iter()
                .all(|agent| spooled_results(&agent.state_dir.join("spool")) > 0);
            let past_grace = stopped_at.elapsed() > options_grace + Duration::from_secs(2);
            async move { (spooled && past_grace).then_some(()) }
        },
    )
    .await;
    controller.restart().await;

    let mut clients = controller.clients().await;
    let run = clients.wait_run_done(&run.id).await;
    assert_every_result_once(&run, STEPS);
    for agent in agents {
        assert_spool_empty(&agent.state_dir, &agent.node);
        agent.stop().await;
    }
}

async fn agent_restarted_mid_step_is_recorded_and_the_job_retried(backend: Backend) {
    let Some(controller) = Controller::start(ControllerOptions::new(backend)).await else {
        eprintln!("skipped: no PostgreSQL configured (TOLLGATE_TEST_DATABASE_URL)");
        return;
    };
    let agent = Agent::start(&controller.url, "lab-1", 1, &[]);
    let mut clients = controller.clients().await;
    let plan = "name: gpu-qual\nselector: {sku: hgx-h100}\nsteps:\n  - {name: s0, kind: exec, command: [true], timeout: 1m}\n  - {name: s1, kind: exec, command: [sleep, '2'], timeout: 1m, retries: 1}\n";
    let run = clients.start_qualification("r550", 1, plan).await;
    // s0 is done and s1 sleeps: restart the agent in the middle of s1, once its process runs
    // (the agent's record of the step's process group says so).
    let state_dir = agent.state_dir.clone();
    wait_for(Duration::from_secs(30), "s1's process to run", || {
        let record = tollgate_agent::runner::orphans::read(&state_dir)
            .ok()
            .flatten();
        let running = record.is_some_and(|r| r.attempt.step_index == 1 && r.group.is_some());
        async move { running.then_some(()) }
    })
    .await;
    let agent = agent.restart();
    let run = clients.wait_run_done(&run.id).await;
    let job = &run.jobs[0];
    let interrupted: Vec<_> = job
        .results
        .iter()
        .filter(|r| {
            r.message
                .starts_with("interrupted: the agent restarted during step s1")
        })
        .collect();
    assert_eq!(interrupted.len(), 1, "{:#?}", job.results);
    assert_eq!(interrupted[0].step_name, "s1");
    assert_eq!(
        job.state, "passed",
        "the retry ran on the new epoch: {:#?}",
        job.results
    );
    agent.stop().await;
}
