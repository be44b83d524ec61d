//! Controller outages: the controller stops mid-run and comes back after longer than a lease
//! grace; every result the agents produced meanwhile arrives from their spools exactly once,
//! in order, and the run finishes. And agent restarts: an agent that restarts during a step
//! gets the attempt recorded as interrupted and the job assigned again. And leases across a
//! controller restart: an agent whose reconnect backoff reached its cap keeps its node and its
//! job even when the lease grace is shorter than that cap. On SQLite and on PostgreSQL (the
//! latter when `TOLLGATE_TEST_DATABASE_URL` is set; otherwise it says it was skipped).

use std::time::Duration;
use tollgate_proto::v1;
use tollgate_tests::{
    Agent, Backend, Clients, Controller, ControllerOptions, assert_every_result_once,
    assert_spool_empty, lab_agents, measuring_plan, spooled_results, wait_for,
};

tollgate_tests::on_both_backends!(
    results_survive_a_controller_outage_exactly_once,
    agent_restarted_mid_step_is_recorded_and_the_job_retried,
    a_lease_outlives_an_agent_reconnecting_at_its_backoff_cap,
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

/// The job's state in `run_id`'s only job.
async fn job_state(clients: &Clients, run_id: &str) -> Option<String> {
    let mut runs = clients.runs.clone();
    let run = runs
        .get_run(v1::GetRunRequest {
            id: run_id.into(),
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner();
    run.jobs.first().map(|job| job.state.clone())
}

/// A TCP proxy in front of `target` that holds every connection it accepts until `open` is
/// true, then forwards it: the agents behind it reach the controller only from a moment the
/// test chooses.
fn gated_proxy(
    listener: tokio::net::TcpListener,
    target: std::net::SocketAddr,
    open: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut open = open.clone();
            tokio::spawn(async move {
                if open.wait_for(|open| *open).await.is_err() {
                    return;
                }
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

async fn a_lease_outlives_an_agent_reconnecting_at_its_backoff_cap(backend: Backend) {
    let mut options = ControllerOptions::new(backend);
    // Shorter than the agent's longest reconnect delay (5 s): a lab may well pick this.
    options.lease_grace = Duration::from_secs(4);
    options.heartbeat_interval = Duration::from_secs(2);
    let Some(mut controller) = Controller::start(options).await else {
        eprintln!("skipped: no PostgreSQL configured (TOLLGATE_TEST_DATABASE_URL)");
        return;
    };
    // The agent reaches the controller through a proxy the test opens and closes.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("proxy address");
    let proxy_url = format!("http://{}", proxy.local_addr().expect("proxy address"));
    let (gate, open) = tokio::sync::watch::channel(true);
    let _proxy = gated_proxy(proxy, controller.addr, open);
    let agent = Agent::start(&proxy_url, "lab-1", 1, &[]);
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(1).await;
    clients.create_release("r550").await;
    clients
        .apply_plan(
            "name: gpu-qual\nselector: {sku: hgx-h100}\nsteps:\n  - {name: long, kind: exec, command: [sleep, '20'], timeout: 1m}\n",
        )
        .await;
    let run = clients.start_run("r550", "gpu-qual").await;
    wait_for(Duration::from_secs(30), "the job to run", || {
        let clients = clients.clone();
        let id = run.id.clone();
        async move { (job_state(&clients, &id).await? == "running").then_some(()) }
    })
    .await;

    // The controller restarts; the agent gets through again only 4.5 s after the start, as
    // an agent whose backoff reached its cap (5 s) may: later than the lease grace.
    gate.send_replace(false);
    controller.restart().await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    gate.send_replace(true);

    // Its lease must still hold: the job is not lost and its result is accepted.
    let clients = controller.clients().await;
    let state = wait_for(Duration::from_secs(60), "the job to end", || {
        let clients = clients.clone();
        let id = run.id.clone();
        async move {
            let state = job_state(&clients, &id).await?;
            (!matches!(state.as_str(), "pending" | "assigned" | "running")).then_some(state)
        }
    })
    .await;
    let mut runs = clients.runs.clone();
    let run = runs
        .get_run(v1::GetRunRequest {
            id: run.id.clone(),
            ..Default::default()
        })
        .await
        .expect("get run")
        .into_inner();
    assert_eq!(
        state, "passed",
        "the job of a node that reconnected 4.5 s after the controller started: {:#?}",
        run.jobs
    );
    let results: Vec<(String, u32)> = run.jobs[0]
        .results
        .iter()
        .map(|r| (r.step_name.clone(), r.attempt))
        .collect();
    assert_eq!(results, [("long".to_owned(), 1)]);
    let rejected = std::fs::read_dir(agent.state_dir.join("spool/rejected"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(rejected, 0, "no result was refused");
    agent.stop().await;
}
