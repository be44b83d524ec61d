//! End to end: fleet telemetry an idle agent streams is kept as history. A real agent with two
//! simulated GPUs samples every second; the controller folds the samples into 1 s and 5 s
//! buckets, writes them as they close, and `GetNodeTelemetry` answers them per GPU with each
//! field's min, mean and max, says they are simulated, and refuses a bad request naming every
//! bad field. On SQLite and PostgreSQL.

use std::time::Duration;
use tollgate_domain::fleet_history::History;
use tollgate_proto::v1;
use tollgate_tests::{Agent, Backend, Controller, ControllerOptions, wait_for};
use tonic::Code;

tollgate_tests::on_both_backends!(an_idle_agent_s_telemetry_is_kept_per_gpu_and_tier);

/// While a job runs, the step's sampler owns the GPUs; the fleet stream sends its newest
/// readings, so the history (and `/metrics`) has no gap during a qualification.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_agent_s_telemetry_has_no_gap_during_its_step() {
    let mut options = ControllerOptions::new(Backend::Sqlite);
    options.fleet_history = Some((
        History::parse("1s:1h").expect("history"),
        Duration::from_millis(300),
    ));
    let Some(controller) = Controller::start(options).await else {
        return;
    };
    let mut config = controller.agent_config("lab-1", 2);
    config.fleet_interval = Duration::from_millis(500);
    let _agent = Agent::start_config(config);
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(1).await;
    clients.create_release("r1").await;
    clients
        .apply_plan(
            "name: soak\nselector: {sku: hgx-h100}\nsteps:\n  - name: soak\n    kind: exec\n    command: [sh, -c, \"sleep 6\"]\n    timeout: 1m\n",
        )
        .await;
    let run = clients.start_run("r1", "soak").await;
    let run = clients.wait_run_done(&run.id).await;
    assert_eq!(run.state, "finished", "{run:?}");
    let created = run.created_at.expect("created").seconds;
    let finished = run.finished_at.expect("finished").seconds;
    assert!(finished - created >= 6, "{created}..{finished}");

    // Every 1 s bucket wholly inside the step, for both GPUs, once the last are written.
    let nodes = clients.nodes.clone();
    wait_for(
        Duration::from_secs(30),
        "1 s buckets during the step",
        || {
            let mut nodes = nodes.clone();
            async move {
                let answer = nodes
                    .get_node_telemetry(v1::GetNodeTelemetryRequest {
                        node: "lab-1".into(),
                        resolution_seconds: 1,
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner();
                let during = |gpu: u32| {
                    answer
                        .buckets
                        .iter()
                        .filter(|b| b.gpu_index == gpu)
                        .filter(|b| {
                            let start = b.start.expect("start").seconds;
                            start > created && start + 1 < finished
                        })
                        .count()
                };
                let expected = usize::try_from(finished - created - 2).ok()?;
                (during(0) >= expected && during(1) >= expected).then_some(())
            }
        },
    )
    .await;
}

async fn an_idle_agent_s_telemetry_is_kept_per_gpu_and_tier(backend: Backend) {
    let mut options = ControllerOptions::new(backend);
    options.fleet_history = Some((
        History::parse("1s:1h,5s:1d").expect("history"),
        Duration::from_millis(300),
    ));
    let Some(mut controller) = Controller::start(options).await else {
        return;
    };
    let mut config = controller.agent_config("lab-1", 2);
    config.fleet_interval = Duration::from_secs(1);
    let agent = Agent::start_config(config);
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(1).await;

    let ask = |resolution_seconds: u32| v1::GetNodeTelemetryRequest {
        node: "lab-1".into(),
        resolution_seconds,
        ..Default::default()
    };
    // Three seconds of 1 s buckets, for both GPUs.
    let nodes = clients.nodes.clone();
    let fine = wait_for(Duration::from_secs(30), "three 1 s buckets per GPU", || {
        let mut nodes = nodes.clone();
        async move {
            let answer = nodes.get_node_telemetry(ask(1)).await.ok()?.into_inner();
            let per_gpu = |gpu| answer.buckets.iter().filter(|b| b.gpu_index == gpu).count();
            (per_gpu(0) >= 3 && per_gpu(1) >= 3).then_some(answer)
        }
    })
    .await;
    assert_eq!(fine.resolution_seconds, 1);
    assert_eq!(fine.gpu_source, "simulated");
    assert_eq!(fine.history, "1s:1h,5s:24h");
    assert!(!fine.truncated);
    let starts: Vec<i64> = fine
        .buckets
        .iter()
        .map(|b| b.start.expect("start").seconds)
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {starts:?}"
    );
    for bucket in &fine.buckets {
        let temp = bucket
            .fields
            .iter()
            .find(|stat| stat.field == "gpu_temp_c")
            .expect("every bucket has the GPU temperature");
        assert!(temp.samples >= 1);
        assert!(temp.min <= temp.mean && temp.mean <= temp.max, "{temp:?}");
        assert!((20.0..100.0).contains(&temp.mean), "{temp:?}");
    }

    // One GPU, two fields (one by its DCGM name).
    let one = clients
        .nodes
        .get_node_telemetry(v1::GetNodeTelemetryRequest {
            gpu_index: Some(1),
            fields: vec!["power_w".into(), "DCGM_FI_DEV_GPU_TEMP".into()],
            limit: 2,
            ..ask(1)
        })
        .await
        .expect("telemetry")
        .into_inner();
    assert_eq!(one.buckets.len(), 2);
    assert!(one.truncated, "more than two buckets match");
    for bucket in &one.buckets {
        assert_eq!(bucket.gpu_index, 1);
        let mut fields: Vec<&str> = bucket.fields.iter().map(|f| f.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["gpu_temp_c", "power_w"]);
    }

    // The 5 s tier folds the same samples: a whole 5 s bucket holds several.
    let temp_samples = |bucket: &v1::TelemetryBucket| {
        bucket
            .fields
            .iter()
            .find(|stat| stat.field == "gpu_temp_c")
            .map_or(0, |stat| stat.samples)
    };
    wait_for(Duration::from_secs(30), "a whole 5 s bucket", || {
        let mut nodes = nodes.clone();
        async move {
            let answer = nodes.get_node_telemetry(ask(5)).await.ok()?.into_inner();
            answer
                .buckets
                .iter()
                .any(|bucket| temp_samples(bucket) >= 3)
                .then_some(())
        }
    })
    .await;

    // Every bad field at once, by name; an unknown node is NotFound.
    let refused = clients
        .nodes
        .get_node_telemetry(v1::GetNodeTelemetryRequest {
            node: "lab-1".into(),
            fields: vec!["gpu_tmep_c".into()],
            resolution_seconds: 7,
            limit: 5_000,
            ..Default::default()
        })
        .await
        .expect_err("bad request");
    assert_eq!(refused.code(), Code::InvalidArgument);
    for field in [
        "fields",
        "resolution_seconds",
        "limit",
        "gpu_tmep_c",
        "1s:1h,5s:24h",
    ] {
        assert!(
            refused.message().contains(field),
            "{field}: {}",
            refused.message()
        );
    }
    let missing = clients
        .nodes
        .get_node_telemetry(v1::GetNodeTelemetryRequest {
            node: "lab-9".into(),
            ..Default::default()
        })
        .await
        .expect_err("no such node");
    assert_eq!(missing.code(), Code::NotFound);

    agent.stop().await;
    controller.stop().await;
}
