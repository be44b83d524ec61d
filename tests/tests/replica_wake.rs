//! Replicas waking each other (`ControllerConfig::wake_replicas`, PostgreSQL `LISTEN`/`NOTIFY`):
//! a run started on one reaches an agent held by another long before that one's next scheduler
//! tick, and without the wake it does not. Kept apart from `replicas.rs` so that its two
//! in-process replicas do not load the machine while that file kills replicas in a loop.

use std::time::Duration;
use tollgate_tests::{Agent, Clients};
/// With a scheduler tick of a minute, a run started through replica A reaches the agent whose
/// stream replica B holds within seconds, only because A's start wakes B (`LISTEN`/`NOTIFY`);
/// with the wake turned off it is still pending after those seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_started_on_one_replica_wakes_the_replica_holding_its_agent() {
    use tollgate_tests::{Backend, Controller, ControllerOptions};
    for wake in [true, false] {
        let mut options = ControllerOptions::new(Backend::Postgres);
        options.tick = Duration::from_secs(60);
        options.wake_replicas = wake;
        let Some(a) = Controller::start(options).await else {
            return;
        };
        let b = a.replica().await;
        let agent = Agent::start(&b.url, "woken", 1, &[]);
        let mut clients = Clients::new(a.channel().await);
        clients.wait_ready_nodes(1).await;
        // A node is ready once registered, before its stream opens; opening it pokes B's
        // scheduler. Two heartbeats (sent on the stream only) say that poke came and went, so
        // that only a wake can bring the run to B before its next tick.
        clients.wait_heartbeats("woken", 2).await;
        clients.create_release("r550").await;
        clients
            .apply_plan("name: wake\nselector: {sku: hgx-h100}\nsteps:\n  - {name: quick, kind: exec, command: [sh, -c, 'true']}\n")
            .await;
        let run = clients.start_run("r550", "wake").await;
        let reached = async {
            loop {
                let seen = clients.run(&run.id).await;
                if seen.jobs.iter().all(|job| job.state != "pending") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let in_time = tokio::time::timeout(Duration::from_secs(8), reached)
            .await
            .is_ok();
        assert_eq!(
            in_time, wake,
            "wake_replicas {wake}: job left pending within 8 s: {in_time}"
        );
        agent.stop().await;
    }
}
