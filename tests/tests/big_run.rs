//! Every answer about a 5,000-node run, through the real gRPC server over a socket and the
//! real CLI, on both backends: `GetRun`'s pages, `WatchRun`'s messages, `StreamDecision`'s
//! parts and `ListNodes`' pages each stay under 1 MiB (a quarter of the 4 MiB a gRPC client
//! decodes by default) and together carry every job, node and evidence item exactly once, and
//! `tollgate run show`, `run watch`, `gate show -o json` and `node list` print all of them.
//! The run is written into the store directly (`tollgate_tests::big_run`); agents would take
//! minutes at this size.

use prost::Message as _;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tollgate_proto::v1;
use tollgate_tests::big_run::{self, BigRun};
use tollgate_tests::process::{text, tollgate};
use tollgate_tests::{Backend, Controller, ControllerOptions};
use tonic::Code;
use tonic::transport::Channel;

tollgate_tests::on_both_backends!(every_answer_about_a_5000_node_run_is_complete_and_small,);

const N_NODES: usize = 5000;

/// What a gRPC client decodes by default; every answer must fit.
const CLIENT_LIMIT: usize = 4 * 1024 * 1024;
/// What the controller aims for: a page's entries fill at most 1 MiB (plus the run's own
/// fields, a few hundred bytes).
const PAGE_LIMIT: usize = tollgate_wire::page::MAX_PAGE_BYTES + 4096;

// A page the controller aims for fits what any client decodes.
const _: () = assert!(PAGE_LIMIT < CLIENT_LIMIT);

fn assert_small(what: &str, n_bytes: usize) {
    assert!(
        n_bytes <= PAGE_LIMIT,
        "{what} is {n_bytes} bytes, over {PAGE_LIMIT}"
    );
}

/// Jobs per state of the seeded run; `open` while its last job still runs.
fn expected_counts(seeded: &BigRun, open: bool) -> Vec<v1::JobCount> {
    let count = |state: &str, count: usize| v1::JobCount {
        state: state.into(),
        count: u32::try_from(count).expect("a count"),
    };
    let n_failed = seeded.failed.len();
    let n_passed = N_NODES - n_failed - usize::from(open);
    let mut counts = Vec::new();
    if open {
        counts.push(count("running", 1));
    }
    counts.push(count("passed", n_passed));
    counts.push(count("failed", n_failed));
    counts
}

/// Fails unless `seen` holds exactly the seeded nodes, naming a few of the differences.
fn assert_every_node(what: &str, seen: &BTreeSet<String>, seeded: &BigRun) {
    let missing: Vec<&String> = seeded.nodes.difference(seen).take(5).collect();
    let extra: Vec<&String> = seen.difference(&seeded.nodes).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} nodes of {}; missing {missing:?}..., unexpected {extra:?}...",
        seen.len(),
        seeded.nodes.len()
    );
}

/// Adds each node of `jobs` to `seen`, failing on one seen before.
fn add_once<'a>(seen: &mut BTreeSet<String>, nodes: impl IntoIterator<Item = &'a str>) {
    for node in nodes {
        assert!(seen.insert(node.to_owned()), "{node} was sent twice");
    }
}

async fn every_answer_about_a_5000_node_run_is_complete_and_small(backend: Backend) {
    let mut options = ControllerOptions::new(backend);
    // No agent heartbeats: nothing may expire while the test reads.
    options.lease_grace = Duration::from_secs(3600);
    options.limits.rate = tollgate_domain::rate::Rate {
        per_second: 0,
        burst: 0,
    };
    let Some(controller) = Controller::start(options).await else {
        return;
    };
    let start = Instant::now();
    let seeded = big_run::seed(&controller.database_url, N_NODES)
        .await
        .expect("the run is seeded");
    println!("seeded in {:.1} s", start.elapsed().as_secs_f64());
    // Clients with tonic's default limits, as any gRPC client has them.
    let channel = controller.channel().await;

    let start = Instant::now();
    watch_sends_every_job_once_then_only_the_change(&controller, &channel, &seeded).await;
    println!("WatchRun in {:.1} s", start.elapsed().as_secs_f64());
    let start = Instant::now();
    get_run_pages_every_job_once(&channel, &seeded).await;
    println!("GetRun pages in {:.1} s", start.elapsed().as_secs_f64());
    let start = Instant::now();
    the_decision_streams_whole(&channel, &seeded).await;
    println!("StreamDecision in {:.1} s", start.elapsed().as_secs_f64());
    let start = Instant::now();
    list_nodes_pages_every_node_once(&channel, &seeded).await;
    println!("ListNodes pages in {:.1} s", start.elapsed().as_secs_f64());
    let start = Instant::now();
    the_cli_prints_every_answer_whole(&controller, &seeded).await;
    println!("CLI in {:.1} s", start.elapsed().as_secs_f64());
}

/// WatchRun on the open run: first every job once, in messages under the limit, then, when
/// the last job ends, a message with that job alone and the run finished.
async fn watch_sends_every_job_once_then_only_the_change(
    controller: &Controller,
    channel: &Channel,
    seeded: &BigRun,
) {
    let mut runs = v1::run_service_client::RunServiceClient::new(channel.clone());
    let mut stream = runs
        .watch_run(v1::GetRunRequest {
            id: seeded.run.to_string(),
            ..Default::default()
        })
        .await
        .expect("a watch")
        .into_inner();
    let mut seen = BTreeSet::new();
    let mut n_messages = 0;
    while seen.len() < N_NODES {
        let message = stream
            .message()
            .await
            .expect("a watch message")
            .expect("the watch goes on while the run is open");
        n_messages += 1;
        assert_small("a WatchRun message", message.encoded_len());
        assert_eq!(message.state, "running");
        assert_eq!(message.job_counts, expected_counts(seeded, true));
        assert_eq!(message.n_jobs, 5000);
        add_once(&mut seen, message.jobs.iter().map(|job| job.node.as_str()));
    }
    assert_every_node("WatchRun", &seen, seeded);
    assert!(
        n_messages > 1,
        "5,000 jobs with results fill several messages"
    );

    big_run::finish(&controller.database_url, seeded)
        .await
        .expect("the last result is recorded");
    // Then only that job, until the stream closes with the run finished. The run and its jobs
    // are read one after the other, so a message may show the job's end before the run's.
    let mut after = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("the change is sent within the watch's fallback")
            .expect("a watch message");
        let Some(message) = message else { break };
        assert_small("a WatchRun message", message.encoded_len());
        after.push(message);
    }
    let last = after.last().expect("a message after the change");
    assert_eq!(last.state, "finished");
    assert_eq!(last.job_counts, expected_counts(seeded, false));
    let changed: Vec<&v1::Job> = after.iter().flat_map(|message| &message.jobs).collect();
    assert!(
        changed.iter().all(|job| job.id == seeded.open_job.as_str()),
        "only the job that changed is sent again: {:?}",
        changed.iter().map(|job| &job.node).collect::<Vec<_>>()
    );
    let job = changed.last().expect("the job that changed");
    assert_eq!(job.state, "passed");
    assert_eq!(job.results.len(), big_run::STEPS.len());
}

/// GetRun's pages: each under the limit, every job once with all its results, the counts on
/// every page; bad page fields are refused by name.
async fn get_run_pages_every_job_once(channel: &Channel, seeded: &BigRun) {
    let mut runs = v1::run_service_client::RunServiceClient::new(channel.clone());
    let mut seen = BTreeSet::new();
    let mut token = String::new();
    let mut n_pages = 0;
    loop {
        let page = runs
            .get_run(v1::GetRunRequest {
                id: seeded.run.to_string(),
                page_size: 1000,
                page_token: token,
            })
            .await
            .expect("a page of the run")
            .into_inner();
        n_pages += 1;
        assert_small("a GetRun page", page.encoded_len());
        assert_eq!(page.job_counts, expected_counts(seeded, false));
        assert_eq!((page.n_jobs, page.state.as_str()), (5000, "finished"));
        for job in &page.jobs {
            assert_eq!(job.results.len(), big_run::STEPS.len(), "{}", job.node);
            let failed = job.state == "failed";
            assert_eq!(failed, seeded.failed.contains(&job.node), "{}", job.node);
        }
        add_once(&mut seen, page.jobs.iter().map(|job| job.node.as_str()));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_every_node("GetRun", &seen, seeded);
    assert!(n_pages > 1, "5,000 jobs with results fill several pages");

    for (request, field) in [
        (
            v1::GetRunRequest {
                id: seeded.run.to_string(),
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            v1::GetRunRequest {
                id: seeded.run.to_string(),
                page_token: "not-a-token".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ] {
        let refused = runs.get_run(request).await.expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(field), "{refused:?}");
    }
    // A token of another run's jobs is refused too.
    let first = runs
        .get_run(v1::GetRunRequest {
            id: seeded.run.to_string(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .expect("a first page")
        .into_inner();
    let refused = runs
        .get_run(v1::GetRunRequest {
            id: "run-other".into(),
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .expect_err("a token of another run");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("page_token"), "{refused:?}");
}

/// The decision (40,000 failing evidence items) is refused whole by EvaluateGate, naming
/// StreamDecision, and streamed complete by it.
async fn the_decision_streams_whole(channel: &Channel, seeded: &BigRun) {
    let mut gates = v1::gate_service_client::GateServiceClient::new(channel.clone());
    let request = v1::EvaluateGateRequest {
        release: big_run::RELEASE.into(),
        milestone: big_run::MILESTONE.into(),
        at: None,
    };
    let refused = gates
        .evaluate_gate(request.clone())
        .await
        .expect_err("too large for one message");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("StreamDecision"), "{refused:?}");

    let mut stream = gates
        .stream_decision(request)
        .await
        .expect("a decision stream")
        .into_inner();
    let mut parts = Vec::new();
    while let Some(part) = stream.message().await.expect("a part") {
        assert_small("a StreamDecision part", part.encoded_len());
        parts.push(part);
    }
    let decision = tollgate_wire::decision_parts::assemble(parts).expect("a whole decision");
    assert!(decision.encoded_len() > CLIENT_LIMIT);
    assert_decision_complete(&decision_rules(&decision), seeded);
}

/// Each rule's failing nodes and failing evidence (node, GPU), from the wire decision.
type RuleLists = BTreeMap<String, (Vec<String>, Vec<(String, Option<u32>)>)>;

fn decision_rules(decision: &v1::Decision) -> RuleLists {
    decision
        .rules
        .iter()
        .map(|rule| {
            let failing = rule
                .evidence
                .iter()
                .filter(|item| !item.ok)
                .map(|item| (item.node.clone(), item.gpu_index))
                .collect();
            (rule.kind.clone(), (rule.failing_nodes.clone(), failing))
        })
        .collect()
}

fn assert_decision_complete(rules: &RuleLists, seeded: &BigRun) {
    let (failing_nodes, failing_items) = &rules["steps-passed"];
    let failing_nodes: BTreeSet<String> = failing_nodes.iter().cloned().collect();
    assert!(
        failing_nodes == seeded.failed,
        "steps-passed's failing nodes"
    );
    assert_eq!(failing_items.len(), seeded.failed.len());
    let (failing_nodes, failing_items) = &rules["telemetry"];
    let mut seen = BTreeSet::new();
    add_once(&mut seen, failing_nodes.iter().map(String::as_str));
    assert_every_node("telemetry's failing nodes", &seen, seeded);
    // Every GPU of every node, once.
    let items: BTreeSet<&(String, Option<u32>)> = failing_items.iter().collect();
    assert_eq!(items.len(), failing_items.len(), "an item was sent twice");
    assert_eq!(items.len(), N_NODES * big_run::N_GPUS as usize);
}

/// ListNodes at its largest page size: each page under the limit, every node once.
async fn list_nodes_pages_every_node_once(channel: &Channel, seeded: &BigRun) {
    let mut nodes = v1::node_service_client::NodeServiceClient::new(channel.clone());
    let mut seen = BTreeSet::new();
    let mut token = String::new();
    loop {
        let page = nodes
            .list_nodes(v1::ListNodesRequest {
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("a page of nodes")
            .into_inner();
        assert_small("a ListNodes page", page.encoded_len());
        add_once(&mut seen, page.nodes.iter().map(|node| node.name.as_str()));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_every_node("ListNodes", &seen, seeded);
}

fn json_of(output: &std::process::Output, what: &str) -> serde_json::Value {
    assert!(output.status.success(), "{what}: {}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| panic!("{what}: {error}"))
}

fn nodes_of<'a>(values: impl IntoIterator<Item = &'a serde_json::Value>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    add_once(
        &mut seen,
        values.into_iter().map(|value| {
            value["node"]
                .as_str()
                .or(value["name"].as_str())
                .expect("a name")
        }),
    );
    seen
}

/// The CLI follows the pages and streams: `run show` (text and JSON), `run watch -o json`,
/// `gate show -o json` and `node list` print every job, evidence item and node.
async fn the_cli_prints_every_answer_whole(controller: &Controller, seeded: &BigRun) {
    let url = &controller.url;
    let start = Instant::now();
    let lap = |what: &str| println!("  {what}: {:.1} s", start.elapsed().as_secs_f64());
    let run_id = seeded.run.as_str();
    let shown = json_of(
        &tollgate(url, &["run", "show", run_id, "-o", "json"]).await,
        "run show -o json",
    );
    let jobs = shown["jobs"].as_array().expect("jobs");
    assert_every_node("run show -o json", &nodes_of(jobs), seeded);
    assert_eq!(
        shown["job_counts"],
        serde_json::json!({"passed": 4500, "failed": 500})
    );
    assert_eq!(shown["n_jobs"], 5000);
    lap("run show -o json");

    let output = tollgate(url, &["run", "show", run_id]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let shown = text(&output.stdout);
    assert!(
        shown.contains("state:     finished (500 failed, 4500 passed)"),
        "{}",
        &shown[..500]
    );
    assert_eq!(shown.matches("\njob job-lab-").count(), N_NODES);
    lap("run show");

    // The run has ended: the watch prints every job once, and the run's end.
    let output = tollgate(url, &["run", "watch", run_id, "-o", "json"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines: Vec<serde_json::Value> = text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let watched = nodes_of(
        lines
            .iter()
            .flat_map(|line| line["jobs"].as_array().expect("jobs")),
    );
    assert_every_node("run watch -o json", &watched, seeded);
    assert_eq!(lines.last().expect("a line")["state"], "finished");
    lap("run watch -o json");

    let decision = json_of(
        &tollgate(
            url,
            &[
                "gate",
                "show",
                "--release",
                big_run::RELEASE,
                "--milestone",
                big_run::MILESTONE,
                "-o",
                "json",
            ],
        )
        .await,
        "gate show -o json",
    );
    let rules: RuleLists = decision["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|rule| {
            let failing_nodes = rule["failing_nodes"]
                .as_array()
                .expect("failing nodes")
                .iter()
                .map(|node| node.as_str().expect("a node").to_owned())
                .collect();
            let failing = rule["evidence"]
                .as_array()
                .expect("evidence")
                .iter()
                .filter(|item| item["ok"] == false)
                .map(|item| {
                    let gpu = item["gpu_index"]
                        .as_u64()
                        .and_then(|gpu| u32::try_from(gpu).ok());
                    (item["node"].as_str().expect("a node").to_owned(), gpu)
                })
                .collect();
            (
                rule["kind"].as_str().expect("a kind").to_owned(),
                (failing_nodes, failing),
            )
        })
        .collect();
    assert_decision_complete(&rules, seeded);
    assert_eq!(decision["verdict"], "failed");
    lap("gate show -o json");

    let listed = json_of(
        &tollgate(url, &["node", "list", "-o", "json", "--page-size", "1000"]).await,
        "node list -o json",
    );
    let listed_nodes = nodes_of(listed["nodes"].as_array().expect("nodes"));
    assert_every_node("node list -o json", &listed_nodes, seeded);
    lap("node list -o json");
    let output = tollgate(url, &["node", "list"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let listed = text(&output.stdout);
    for node in [big_run::node_name(0), big_run::node_name(N_NODES - 1)] {
        assert_eq!(listed.matches(&format!("\n{node} ")).count(), 1, "{node}");
    }
}
