//! End to end for the qualification step kinds: a plan with `flash`, `junit`, `burn-in` and
//! `dcgm-diag` steps runs on simulated agents against a real controller, the sub-results reach
//! the store, and the gate's `dcgm-diag` rule decides on them.

use tollgate_proto::v1;
use tollgate_tests::{Agent, Backend, Controller, ControllerOptions, outcome};

/// The synthetic `dcgmi diag -r 2 -j` output: `memory` fails on GPU 1, `pcie` is skipped there.
const DCGM_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/dcgm/synthetic_dcgmi_diag_r2_fail.json"
);

fn plan(versions_dir: &str) -> String {
    format!(
        r#"name: full-qual
selector: {{sku: hgx-h100}}
steps:
  - name: vbios
    kind: flash
    command: [sh, -c, "echo vbios=96.00.89.00.01 > {versions_dir}/$TOLLGATE_NODE.versions"]
    component: vbios
    version: 96.00.89.00.01
    timeout: 30s
  - name: nccl
    kind: junit
    command: [sh, -c, "printf '<testsuite name=\"nccl\"><testcase classname=\"nccl\" name=\"allreduce\"/></testsuite>' > $TOLLGATE_RESULTS_DIR/junit.xml"]
    report: junit.xml
    timeout: 30s
  - name: burn
    kind: burn-in
    command: [sleep, "60"]
    duration: 1500ms
    timeout: 30s
    limits:
      - {{field: gpu_temp_c, max: 88}}
      - {{field: ecc_uncorrected_volatile, max: 0}}
  - name: diag
    kind: dcgm-diag
    level: 2
    command: [cat, "{DCGM_FIXTURE}"]
    timeout: 30s
"#
    )
}

const GATE: &str = r#"milestone: lab-qual
rules:
  - dcgm-diag: {level: 2, tests: [memory, pcie]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qualification_step_kinds_run_end_to_end() {
    let Some(controller) = Controller::start(ControllerOptions::new(Backend::Sqlite)).await else {
        return;
    };
    let versions = tempfile::tempdir().expect("temp dir");
    let versions_dir = versions.path().display().to_string();
    let fault = |node: &str| format!("versions-file={versions_dir}/{node}.versions");
    let (cool_fault, hot_fault) = (fault("lab-cool"), fault("lab-hot"));
    // Both nodes start on an old VBIOS, which the flash step replaces.
    let _agents = [
        Agent::start(
            &controller.url,
            "lab-cool",
            2,
            &["vbios=96.00.74.00.01", &cool_fault],
        ),
        Agent::start(
            &controller.url,
            "lab-hot",
            2,
            &["vbios=96.00.74.00.01", &hot_fault, "over-temp"],
        ),
    ];
    let mut clients = controller.clients().await;
    let run = clients.qualify("r550", 2, &plan(&versions_dir), GATE).await;
    let job = |node: &str| {
        run.jobs
            .iter()
            .find(|job| job.node == node)
            .expect("a job per node")
    };

    let cool = job("lab-cool");
    let outcomes: Vec<v1::Outcome> = cool.results.iter().map(|r| outcome(r.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            v1::Outcome::Passed,
            v1::Outcome::Passed,
            v1::Outcome::Passed,
            v1::Outcome::Failed
        ],
        "{:#?}",
        cool.results
    );
    assert_eq!(
        cool.results[0].message,
        "after flashing, vbios is 96.00.89.00.01"
    );
    assert!(
        cool.results[1]
            .message
            .starts_with("1 testcase(s): 1 passed")
    );
    assert_eq!(
        cool.results[3].message,
        "dcgmi diag failed: memory on GPU 1 failed (SYNTHETIC EXAMPLE: memory test found an uncorrectable error on GPU 1)"
    );
    // The run lists the step's tests: the failing one first, then the rest of the six.
    let diag = &cool.results[3];
    let tests: Vec<(&str, Option<u32>, v1::Outcome)> = diag
        .sub_results
        .iter()
        .map(|s| (s.name.as_str(), s.gpu_index, outcome(s.outcome)))
        .collect();
    assert_eq!(tests.len(), 6, "{tests:?}");
    assert_eq!(tests[0], ("memory", Some(1), v1::Outcome::Failed));
    assert!(
        diag.sub_results[0]
            .message
            .contains("uncorrectable error on GPU 1")
    );
    assert_eq!(diag.sub_results_not_listed, 0);

    let hot = job("lab-hot");
    let burn = &hot.results[2];
    assert_eq!(
        outcome(burn.outcome),
        v1::Outcome::Failed,
        "{:#?}",
        hot.results
    );
    assert!(
        burn.message.starts_with("GPU 0 gpu_temp_c 9") && burn.message.ends_with("> limit 88"),
        "{}",
        burn.message
    );
    assert_eq!(outcome(hot.results[3].outcome), v1::Outcome::Skipped);

    // The gate reads the dcgm-diag sub-results: memory failed on lab-cool's GPU 1.
    let decision = clients.evaluate("r550").await;
    assert_eq!(decision.verdict, "failed", "{decision:#?}");
    let rule = decision
        .rules
        .iter()
        .find(|rule| rule.kind == "dcgm-diag")
        .expect("the dcgm-diag rule");
    assert_eq!(rule.verdict, "failed", "{rule:#?}");
    assert!(rule.reason.contains("failed"), "{}", rule.reason);
}

/// A JUnit report with more testcases than the controller keeps for one result: the agent
/// keeps the failing testcase and as many others as fit and says what it left out, and the
/// result arrives (the controller refuses an overlong list whole, which lost the result).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_junit_report_over_the_limit_still_delivers_its_result() {
    let Some(controller) = Controller::start(ControllerOptions::new(Backend::Sqlite)).await else {
        return;
    };
    let over = tollgate_domain::limits::SUB_RESULTS.max + 4;
    let plan = format!(
        r#"name: big-suite
selector: {{sku: hgx-h100}}
steps:
  - name: suite
    kind: junit
    command: [sh, -c, "i=0; {{ echo '<testsuite name=\"big\">'; while [ $i -lt {over} ]; do echo \"<testcase name=\\\"t$i\\\"/>\"; i=$((i+1)); done; echo '<testcase name=\"last\"><failure message=\"boom\"/></testcase></testsuite>'; }} > $TOLLGATE_RESULTS_DIR/junit.xml"]
    report: junit.xml
    timeout: 60s
"#
    );
    let _agent = Agent::start(&controller.url, "lab-big", 1, &[]);
    let mut clients = controller.clients().await;
    let run = clients.qualify("r550", 1, &plan, GATE).await;
    let result = &run.jobs[0].results[0];
    assert_eq!(outcome(result.outcome), v1::Outcome::Failed, "{result:#?}");
    assert!(
        result
            .message
            .ends_with("(5 test results over the limit of 10000 not kept)"),
        "{}",
        result.message
    );
    assert_eq!(result.sub_results[0].name, "last");
    assert_eq!(outcome(result.sub_results[0].outcome), v1::Outcome::Failed);
}

/// Blast radius: with `max-concurrent: {rack: 1}` a run never has two jobs active at once in
/// one rack; the other rack's node runs alongside. Checked on the steps' own clocks: the
/// attempts in rack r1 do not overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_keeps_its_max_concurrent_per_rack() {
    let Some(controller) = Controller::start(ControllerOptions::new(Backend::Sqlite)).await else {
        return;
    };
    // The step reports when it started and ended, on the host's clock.
    let plan = r#"name: rack-limited
selector: {sku: hgx-h100}
max-concurrent: {rack: 1}
steps:
  - name: load
    kind: exec
    command: [sh, -c, "echo \"@tollgate measure t_start $(date +%s.%N) s\"; sleep 0.6; echo \"@tollgate measure t_end $(date +%s.%N) s\""]
"#;
    let _agents = [
        Agent::start_labelled(&controller.url, "r1-a", 1, &[("rack", "r1")]),
        Agent::start_labelled(&controller.url, "r1-b", 1, &[("rack", "r1")]),
        Agent::start_labelled(&controller.url, "r1-c", 1, &[("rack", "r1")]),
        Agent::start_labelled(&controller.url, "r2-a", 1, &[("rack", "r2")]),
    ];
    let mut clients = controller.clients().await;
    let run = clients
        .qualify(
            "r550",
            4,
            plan,
            "milestone: lab-qual\nrules:\n  - steps-passed: {plan: rack-limited, steps: [load], min-nodes: 4}\n",
        )
        .await;
    assert_eq!(run.state, "finished", "{run:#?}");
    let span = |node: &str| {
        let job = run.jobs.iter().find(|job| job.node == node).expect("a job");
        assert_eq!(job.state, "passed", "{job:#?}");
        let measured = |name: &str| {
            job.results[0]
                .measurements
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} on {node}: {job:#?}"))
                .value
        };
        (measured("t_start"), measured("t_end"))
    };
    let mut rack1: Vec<(f64, f64)> = ["r1-a", "r1-b", "r1-c"].iter().map(|n| span(n)).collect();
    rack1.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in rack1.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two jobs of rack r1 ran at once: {rack1:?}"
        );
    }
    // r2's node did not wait for rack r1.
    let r2 = span("r2-a");
    assert!(
        r2.0 < rack1[1].0,
        "r2-a waited for rack r1: {r2:?} {rack1:?}"
    );
}
