//! End to end: the controller's `GET /metrics`, on its HTTP listener (`--http-listen`), after
//! a real qualification on two agents with simulated GPUs, parsed with a Prometheus text-format parser: the controller's families agree with
//! what happened (results ingested, runs and jobs by state, connected agents, decisions, RPC
//! latencies), every DCGM-named family is one dcgm-exporter's `default-counters.csv` lists, with
//! its type and HELP, and each GPU carries dcgm-exporter's labels with the node's values. A node
//! whose agent went away is no longer reported. On SQLite and PostgreSQL.

use prometheus_parse::{Sample, Scrape, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tollgate_domain::fleet_history::History;
use tollgate_tests::{
    Agent, Backend, Controller, ControllerOptions, gate_yaml, plan_yaml, results_seen, wait_for,
};

tollgate_tests::on_both_backends!(metrics_report_the_controller_and_its_fleet_s_gpus);

/// dcgm-exporter's counters: name → (type, help), from its `etc/default-counters.csv`,
/// including the lines it ships commented out.
fn dcgm_counters() -> BTreeMap<String, (String, String)> {
    let csv = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/dcgm/default-counters.csv"
    ));
    csv.lines()
        .filter_map(|line| {
            let line = line.trim_start_matches('#').trim();
            let mut parts = line.splitn(3, ',');
            let (name, kind, help) = (parts.next()?, parts.next()?, parts.next()?);
            name.trim().starts_with("DCGM_").then(|| {
                (
                    name.trim().to_owned(),
                    (kind.trim().to_owned(), help.trim().to_owned()),
                )
            })
        })
        .collect()
}

/// GETs `/metrics` from `addr`; the status line and the body.
async fn get_metrics(addr: std::net::SocketAddr) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("headers end");
    (head.to_owned(), body.to_owned())
}

fn parse(body: &str) -> Scrape {
    Scrape::parse_at(
        body.lines().map(|line| Ok(line.to_owned())),
        chrono::DateTime::UNIX_EPOCH,
    )
    .expect("the text format parses")
}

fn value(sample: &Sample) -> f64 {
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{}: not a single value: {other:?}", sample.metric),
    }
}

fn one(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(value)
}

fn gpu_series<'a>(scrape: &'a Scrape, metric: &str) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .collect()
}

async fn metrics_report_the_controller_and_its_fleet_s_gpus(backend: Backend) {
    let mut options = ControllerOptions::new(backend);
    options.http = true;
    options.fleet_history = Some((
        History::parse("1s:1h,5s:1d").expect("history"),
        Duration::from_millis(300),
    ));
    let Some(mut controller) = Controller::start(options).await else {
        return;
    };
    let agents: Vec<Agent> = ["lab-1", "lab-2"]
        .into_iter()
        .map(|node| {
            let mut config = controller.agent_config(node, 2);
            config.fleet_interval = Duration::from_secs(1);
            Agent::start_config(config)
        })
        .collect();
    let mut clients = controller.clients().await;
    let run = clients
        .qualify("r550", 2, &plan_yaml(0.1), &gate_yaml(2))
        .await;
    let decision = clients.evaluate("r550").await;
    let n_results: usize = run.jobs.iter().map(|job| results_seen(job).len()).sum();
    assert_eq!(n_results, 4, "two steps on two nodes: {run:#?}");

    let addr = controller
        .http_addr
        .expect("the controller's HTTP listener");

    // Idle again, the agents stream fleet telemetry: every GPU of both nodes appears.
    let scrape = wait_for(
        Duration::from_secs(30),
        "four GPUs in /metrics",
        || async move {
            let (head, body) = get_metrics(addr).await;
            assert!(
                head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
                "{head}"
            );
            assert!(head.contains("text/plain; version=0.0.4"), "{head}");
            let scrape = parse(&body);
            (gpu_series(&scrape, "DCGM_FI_DEV_GPU_TEMP").len() == 4).then_some(scrape)
        },
    )
    .await;

    // The controller's own families.
    assert_eq!(
        one(&scrape, "tollgate_results_ingested_total", &[]),
        Some(n_results as f64)
    );
    assert_eq!(one(&scrape, "tollgate_agents_connected", &[]), Some(2.0));
    assert_eq!(
        one(&scrape, "tollgate_lease_expiries_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        one(&scrape, "tollgate_runs", &[("state", "finished")]),
        Some(1.0)
    );
    let job_state = &run.jobs[0].state;
    assert_eq!(
        one(&scrape, "tollgate_jobs", &[("state", job_state)]),
        Some(2.0)
    );
    assert_eq!(
        one(&scrape, "tollgate_nodes", &[("state", "ready")]),
        Some(2.0)
    );
    assert!(
        one(
            &scrape,
            "tollgate_gate_decisions_total",
            &[("verdict", &decision.verdict)]
        )
        .is_some_and(|n| n >= 1.0),
        "the decision just made is counted"
    );
    let report_result = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "tollgate_grpc_server_handling_seconds"
                && s.labels.get("service") == Some("tollgate.v1.AgentService")
                && s.labels.get("method") == Some("ReportResult")
                && s.labels.get("code") == Some("OK")
        })
        .expect("ReportResult's latency histogram");
    let Value::Histogram(buckets) = &report_result.value else {
        panic!("a histogram: {report_result:?}");
    };
    let infinite = buckets
        .iter()
        .find(|bucket| bucket.less_than.is_infinite())
        .expect("the +Inf bucket");
    assert!(infinite.count >= n_results as f64, "{buckets:?}");
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "tollgate_store_operation_seconds"
                && s.labels.get("op") == Some("record_result")),
        "record_result's latency histogram"
    );

    // Every DCGM-named family is dcgm-exporter's, with its type and HELP.
    let counters = dcgm_counters();
    let families: BTreeSet<&str> = scrape
        .samples
        .iter()
        .map(|s| s.metric.as_str())
        .filter(|name| name.starts_with("DCGM_"))
        .collect();
    assert!(families.len() >= 8, "{families:?}");
    for family in &families {
        let (kind, help) = counters
            .get(*family)
            .unwrap_or_else(|| panic!("{family} is not in default-counters.csv"));
        assert_eq!(scrape.docs.get(*family), Some(help), "{family}'s HELP");
        for sample in gpu_series(&scrape, family) {
            let typed = match sample.value {
                Value::Counter(_) => "counter",
                Value::Gauge(_) => "gauge",
                _ => "other",
            };
            assert_eq!(typed, kind, "{family}'s type");
        }
    }

    // dcgm-exporter's labels, with each node's values.
    for node in ["lab-1", "lab-2"] {
        let stored = clients.node(node).await;
        let inventory = stored.inventory.expect("inventory");
        for gpu in &inventory.gpus {
            let index = gpu.index.to_string();
            let temp = gpu_series(&scrape, "DCGM_FI_DEV_GPU_TEMP")
                .into_iter()
                .find(|s| {
                    s.labels.get("Hostname") == Some(node)
                        && s.labels.get("gpu") == Some(index.as_str())
                })
                .unwrap_or_else(|| panic!("{node} GPU {index}"));
            let device = format!("nvidia{index}");
            for (label, expected) in [
                ("UUID", gpu.uuid.as_str()),
                ("pci_bus_id", gpu.pci_bus_id.as_str()),
                ("device", device.as_str()),
                ("modelName", gpu.name.as_str()),
                ("DCGM_FI_DRIVER_VERSION", inventory.driver_version.as_str()),
                ("simulated", "true"),
            ] {
                assert_eq!(temp.labels.get(label), Some(expected), "{node}: {label}");
            }
            assert!((20.0..100.0).contains(&value(temp)), "{temp:?}");
        }
    }

    // An agent that went away: its GPUs are no longer reported as fresh.
    let mut agents = agents.into_iter();
    let lab_1 = agents.next().expect("lab-1");
    agents.next().expect("lab-2").stop().await;
    wait_for(
        Duration::from_secs(30),
        "lab-2's GPUs gone",
        || async move {
            let (_, body) = get_metrics(addr).await;
            let scrape = parse(&body);
            let hosts: BTreeSet<String> = gpu_series(&scrape, "DCGM_FI_DEV_GPU_TEMP")
                .iter()
                .filter_map(|s| s.labels.get("Hostname").map(str::to_owned))
                .collect();
            (hosts == BTreeSet::from(["lab-1".to_owned()])).then_some(())
        },
    )
    .await;

    lab_1.stop().await;
    controller.stop().await;
}

tollgate_tests::on_both_backends!(an_agent_serves_its_own_metrics);

/// `--metrics-listen`: the agent's GPUs under the same DCGM names and labels, and its own
/// counters.
async fn an_agent_serves_its_own_metrics(backend: Backend) {
    let Some(mut controller) = Controller::start(ControllerOptions::new(backend)).await else {
        return;
    };
    // A free port: bound, read and released (the agent binds it again at once).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let mut config = controller.agent_config("lab-1", 2);
    config.fleet_interval = Duration::from_secs(1);
    config.metrics_listen = Some(addr);
    let agent = Agent::start_config(config);
    let mut clients = controller.clients().await;
    clients.wait_ready_nodes(1).await;
    let scrape = wait_for(
        Duration::from_secs(30),
        "two GPUs in the agent's /metrics",
        || async move {
            let (head, body) =
                tokio::time::timeout(Duration::from_secs(5), get_metrics_if_up(addr))
                    .await
                    .ok()??;
            assert!(head.contains("text/plain; version=0.0.4"), "{head}");
            let scrape = parse(&body);
            (gpu_series(&scrape, "DCGM_FI_DEV_POWER_USAGE").len() == 2
                && one(&scrape, "tollgate_agent_samples_taken_total", &[])
                    .is_some_and(|n| n >= 2.0))
            .then_some(scrape)
        },
    )
    .await;
    assert_eq!(one(&scrape, "tollgate_agent_spool_depth", &[]), Some(0.0));
    assert_eq!(
        one(&scrape, "tollgate_agent_step_processes_running", &[]),
        Some(0.0)
    );
    assert!(one(&scrape, "tollgate_agent_reconnects_total", &[]).is_some());
    let counters = dcgm_counters();
    let inventory = clients.node("lab-1").await.inventory.expect("inventory");
    for sample in scrape
        .samples
        .iter()
        .filter(|s| s.metric.starts_with("DCGM_"))
    {
        let (kind, help) = counters
            .get(&sample.metric)
            .unwrap_or_else(|| panic!("{} is not in default-counters.csv", sample.metric));
        assert_eq!(scrape.docs.get(&sample.metric), Some(help));
        let typed = if matches!(sample.value, Value::Counter(_)) {
            "counter"
        } else {
            "gauge"
        };
        assert_eq!(typed, kind, "{}", sample.metric);
        let gpu = inventory
            .gpus
            .iter()
            .find(|gpu| Some(gpu.index.to_string().as_str()) == sample.labels.get("gpu"))
            .expect("a GPU of the inventory");
        assert_eq!(sample.labels.get("UUID"), Some(gpu.uuid.as_str()));
        assert_eq!(sample.labels.get("modelName"), Some(gpu.name.as_str()));
        assert_eq!(sample.labels.get("Hostname"), Some("lab-1"));
        assert_eq!(sample.labels.get("simulated"), Some("true"));
    }
    agent.stop().await;
    controller.stop().await;
}

/// [`get_metrics`], `None` while nothing listens yet.
async fn get_metrics_if_up(addr: std::net::SocketAddr) -> Option<(String, String)> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(get_metrics(addr).await)
}
