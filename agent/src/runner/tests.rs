//! Runner tests with real child processes and a simulated GPU source.

use super::*;
use crate::gpu::simulated::{Fault, SimConfig, SimulatedSource};
use std::collections::BTreeMap;
use tollgate_domain::plan::Step;
use tollgate_domain::release::Component;
use tollgate_domain::telemetry::{EventKind, Field};

struct Fixture {
    _dir: tempfile::TempDir,
    context: RunnerContext,
}

fn fixture(faults: Vec<Fault>) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let source: Arc<dyn GpuSource> = Arc::new(SimulatedSource::new(SimConfig {
        node: "node-1".into(),
        seed: Some(42),
        n_gpus: 2,
        driver: "550.54.15".into(),
        vbios: "96.00.89.00.01".into(),
        faults,
    }));
    let context = RunnerContext {
        source,
        node: "node-1".into(),
        controller: "http://127.0.0.1:7800".into(),
        state_dir: dir.path().to_owned(),
        sample_interval: Duration::from_millis(50),
        environment: Arc::new(environment::StepEnvironment::of_agent(None, &[])),
        latest: Arc::default(),
    };
    Fixture { _dir: dir, context }
}

fn exec(name: &str, script: &str, timeout: Duration, retries: u32) -> Step {
    Step {
        name: name.into(),
        kind: StepKind::Exec {
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: BTreeMap::from([("STEP_VAR".to_owned(), "from-plan".to_owned())]),
            workdir: None,
        },
        timeout,
        retries,
    }
}

fn inventory_check(name: &str) -> Step {
    Step {
        name: name.into(),
        kind: StepKind::InventoryCheck {
            components: Vec::new(),
        },
        timeout: Duration::from_secs(60),
        retries: 0,
    }
}

fn job(steps: Vec<Step>) -> Job {
    Job {
        job_id: JobId::new("job-1"),
        run_id: "run-1".into(),
        lease_epoch: 3,
        release: "r550".into(),
        components: vec![
            Component {
                name: "driver".into(),
                version: "550.54.15".into(),
                ..Component::default()
            },
            Component {
                name: "cx7-fw".into(),
                version: "28.39.1002".into(),
                ..Component::default()
            },
        ],
        milestone: "lab-qual".into(),
        plan_name: "smoke".into(),
        plan_version: "abc".into(),
        steps: steps
            .into_iter()
            .enumerate()
            .map(|(idx, step)| JobStep {
                index: idx as u32,
                step,
            })
            .collect(),
    }
}

/// Keeps every result at once (as the agent does once it spooled it) and collects them, in
/// order, until the runner's sender is dropped.
fn keep_results(
    mut receiver: mpsc::UnboundedReceiver<JobEvent>,
) -> tokio::task::JoinHandle<Vec<StepResult>> {
    tokio::spawn(async move {
        let mut results = Vec::new();
        while let Some(event) = receiver.recv().await {
            if let JobEvent::Result(result, kept) = event {
                results.push(*result);
                kept.done();
            }
        }
        results
    })
}

/// Runs the job to its end and returns its results, in order.
async fn results_of(fixture: &Fixture, job: &Job) -> Vec<StepResult> {
    let (_stop_sender, stop) = watch::channel(None);
    let (sender, receiver) = mpsc::unbounded_channel();
    let keeper = keep_results(receiver);
    run_job(&fixture.context, job, stop, &sender).await;
    drop(sender);
    keeper.await.expect("keeper task")
}

#[tokio::test]
async fn the_next_step_waits_until_the_result_is_kept_and_the_group_record_stays_until_then() {
    let fixture = fixture(vec![]);
    let job = job(vec![
        exec("first", "echo first", Duration::from_secs(30), 0),
        exec("second", "echo second", Duration::from_secs(30), 0),
    ]);
    let (_stop_sender, stop) = watch::channel(None);
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let context = fixture.context.clone();
    let running = tokio::spawn(async move { run_job(&context, &job, stop, &sender).await });
    let (first, kept) = loop {
        match receiver
            .recv()
            .await
            .expect("the runner reports the first step")
        {
            JobEvent::StepStarted { .. } => {}
            JobEvent::Result(result, kept) => break (*result, kept),
        }
    };
    assert_eq!((first.step_index, first.outcome), (0, Outcome::Passed));
    // The result is not kept yet (a slow disk): the first attempt's record must still be on
    // disk, so an agent killed now reports the attempt at its next start. The second step
    // rewrites the record before its process starts, so this also shows it has not started.
    let record = orphans::read(&fixture.context.state_dir)
        .expect("the record is readable")
        .expect("the record stays until the result is kept");
    assert_eq!((record.attempt.step_index, record.attempt.attempt), (0, 1));
    assert!(
        receiver.is_empty(),
        "nothing happens before the result is kept: {:?}",
        receiver.try_recv()
    );
    kept.done();
    let results = keep_results(receiver);
    assert_eq!(running.await.expect("job task"), JobEnd::Finished);
    let rest = results.await.expect("keeper task");
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!((rest[0].step_index, rest[0].outcome), (1, Outcome::Passed));
    assert!(
        orphans::read(&fixture.context.state_dir)
            .expect("readable")
            .is_none(),
        "the record goes once the last result is kept"
    );
}

#[tokio::test]
async fn a_passing_step_reports_measurements_env_and_telemetry() {
    let fixture = fixture(vec![]);
    let script = r#"echo "release=$TOLLGATE_RELEASE milestone=$TOLLGATE_MILESTONE node=$TOLLGATE_NODE"
echo "job=$TOLLGATE_JOB_ID step=$TOLLGATE_STEP attempt=$TOLLGATE_ATTEMPT"
echo "gpus=$TOLLGATE_GPUS"
echo "driver=$TOLLGATE_COMPONENT_DRIVER cx7=$TOLLGATE_COMPONENT_CX7_FW var=$STEP_VAR"
test -d "$TOLLGATE_RESULTS_DIR" && echo "results dir exists"
echo "to stderr" >&2
echo "@tollgate measure membw_gbps 2950.5 GB/s""#;
    let results = results_of(
        &fixture,
        &job(vec![exec("bw", script, Duration::from_secs(30), 0)]),
    )
    .await;
    assert_eq!(results.len(), 1);
    let result = &results[0];
    assert_eq!(result.outcome, Outcome::Passed, "{}", result.message);
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.lease_epoch, 3);
    assert_eq!(result.measurements.len(), 1);
    assert_eq!(result.measurements[0].name, "membw_gbps");
    assert_eq!(result.measurements[0].value, 2950.5);
    assert_eq!(result.measurements[0].unit.as_deref(), Some("GB/s"));
    let tail = &result.log_tail;
    assert!(
        tail.contains("release=r550 milestone=lab-qual node=node-1"),
        "{tail}"
    );
    assert!(tail.contains("job=job-1 step=bw attempt=1"), "{tail}");
    let uuids: Vec<&str> = result
        .inventory
        .gpus
        .iter()
        .map(|g| g.uuid.as_str())
        .collect();
    assert!(
        tail.contains(&format!("gpus={}", uuids.join(","))),
        "{tail}"
    );
    assert!(
        tail.contains("driver=550.54.15 cx7=28.39.1002 var=from-plan"),
        "{tail}"
    );
    assert!(tail.contains("results dir exists"), "{tail}");
    assert!(tail.contains("to stderr"), "{tail}");
    let log =
        attempt_dir(&fixture.context.state_dir, &result.job_id, 0, "bw", 1).join("output.log");
    let logged = std::fs::read_to_string(&log).expect("step log on disk");
    assert!(logged.contains("@tollgate measure membw_gbps"), "{logged}");
    assert_eq!(result.telemetry.len(), 2);
    let temp = result.telemetry[0]
        .field(Field::GpuTempC)
        .expect("temperature");
    assert!(temp.samples >= 2 && temp.max >= 60.0, "{temp:?}");
}

#[tokio::test]
async fn a_step_sees_only_the_documented_environment() {
    let mut fixture = fixture(vec![]);
    // Cargo gives every test process this variable: the agent's real environment has it, and
    // a step must not.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let agent_env = std::env::vars_os().chain(
        [
            ("AGENT_SECRET", "hunter2"),
            ("ALLOWED", "from-agent"),
            ("STEP_VAR", "from-agent"),
            ("PATH", "/usr/bin:/bin"),
        ]
        .map(|(k, v)| (k.into(), v.into())),
    );
    fixture.context.environment = Arc::new(environment::StepEnvironment::new(
        agent_env,
        None,
        &["ALLOWED".into(), "STEP_VAR".into()],
    ));
    let script = r#"echo "secret=[$AGENT_SECRET] cargo=[$CARGO_MANIFEST_DIR] allowed=[$ALLOWED]"
echo "var=[$STEP_VAR] lang=[$LANG] path=[$PATH] home=[$HOME]"
echo "names=$(env | cut -d= -f1 | grep -v '^TOLLGATE_' | sort | tr '\n' ' ')""#;
    let results = results_of(
        &fixture,
        &job(vec![exec("env", script, Duration::from_secs(30), 0)]),
    )
    .await;
    let result = &results[0];
    assert_eq!(result.outcome, Outcome::Passed, "{}", result.message);
    let tail = &result.log_tail;
    assert!(
        tail.contains("secret=[] cargo=[] allowed=[from-agent]"),
        "{tail}"
    );
    let home = attempt_dir(&fixture.context.state_dir, &result.job_id, 0, "env", 1);
    assert!(
        tail.contains(&format!(
            "var=[from-plan] lang=[C.UTF-8] path=[/usr/bin:/bin] home=[{}]",
            home.display()
        )),
        "{tail}"
    );
    // `sh` itself adds PWD (and may add SHLVL, `_`); nothing else of the agent's.
    let names = tail
        .lines()
        .find_map(|line| line.strip_prefix("names="))
        .expect("the step listed its variables");
    let unexpected: Vec<&str> = names
        .split_whitespace()
        .filter(|name| {
            ![
                "ALLOWED", "HOME", "LANG", "PATH", "STEP_VAR", "PWD", "SHLVL", "_", "OLDPWD",
            ]
            .contains(name)
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected variables: {unexpected:?}"
    );
}

#[tokio::test]
async fn a_failing_step_is_retried_then_later_steps_are_skipped() {
    let fixture = fixture(vec![]);
    let job = job(vec![
        exec("flaky", "echo trying; exit 3", Duration::from_secs(30), 1),
        inventory_check("inventory"),
    ]);
    let results = results_of(&fixture, &job).await;
    let summary: Vec<(u32, u32, Outcome, &str)> = results
        .iter()
        .map(|r| (r.step_index, r.attempt, r.outcome, r.message.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (0, 1, Outcome::Failed, "exit code 3"),
            (0, 2, Outcome::Failed, "exit code 3"),
            (1, 1, Outcome::Skipped, "not run: step flaky failed"),
        ]
    );
    assert_eq!(results[0].exit_code, Some(3));
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let fixture = fixture(vec![]);
    let pid_file = fixture.context.state_dir.join("grandchild.pid");
    let script = format!("sleep 100 & echo $! > {}; sleep 100", pid_file.display());
    let results = results_of(
        &fixture,
        &job(vec![exec("hang", &script, Duration::from_millis(500), 0)]),
    )
    .await;
    assert_eq!(results[0].outcome, Outcome::Error);
    assert_eq!(results[0].message, "timed out after 500ms");
    assert_eq!(results[0].exit_code, None);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the step wrote its grandchild's pid")
        .trim()
        .parse()
        .expect("a pid");
    assert!(
        process_gone(pid).await,
        "grandchild {pid} outlived its step"
    );
}

/// Whether `pid` is gone or a zombie waiting for init to reap it (it no longer runs).
async fn process_gone(pid: i32) -> bool {
    for _ in 0..100 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) => {
                let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
                if state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X')) {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_malformed_measurement_line_is_a_harness_error() {
    let fixture = fixture(vec![]);
    let script = "echo ok; echo '@tollgate measure membw fast GB/s'; exit 0";
    let results = results_of(
        &fixture,
        &job(vec![exec("bad", script, Duration::from_secs(30), 0)]),
    )
    .await;
    assert_eq!(results[0].outcome, Outcome::Error);
    assert_eq!(
        results[0].message,
        "stdout line 2: measurement value 'fast' is not a finite number"
    );
}

#[tokio::test]
async fn huge_output_is_bounded_and_measurements_still_read() {
    let fixture = fixture(vec![]);
    // A 3 MB line without a newline, many ordinary lines, then a measurement.
    let script = "head -c 3000000 /dev/zero | tr '\\0' x; echo; \
                  i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done; \
                  echo '@tollgate measure after 7'";
    let results = results_of(
        &fixture,
        &job(vec![exec("loud", script, Duration::from_secs(60), 0)]),
    )
    .await;
    let result = &results[0];
    assert_eq!(result.outcome, Outcome::Passed, "{}", result.message);
    assert_eq!(result.measurements[0].name, "after");
    assert!(result.log_tail.len() <= exec::TAIL_BYTES);
    assert!(result.log_tail.lines().count() <= exec::TAIL_LINES);
    assert!(result.log_tail.ends_with("@tollgate measure after 7"));
}

#[tokio::test]
async fn a_missing_program_is_a_harness_error() {
    let fixture = fixture(vec![]);
    let mut step = exec("missing", "", Duration::from_secs(5), 0);
    step.kind = StepKind::Exec {
        command: vec!["/nonexistent/tollgate-test-binary".into()],
        env: BTreeMap::new(),
        workdir: None,
    };
    let results = results_of(&fixture, &job(vec![step])).await;
    assert_eq!(results[0].outcome, Outcome::Error);
    assert!(
        results[0].message.starts_with("could not start"),
        "{}",
        results[0].message
    );
}

#[tokio::test]
async fn a_missing_workdir_is_named_not_taken_for_a_missing_program() {
    let fixture = fixture(vec![]);
    let mut step = exec("in-missing-dir", "", Duration::from_secs(5), 0);
    step.kind = StepKind::Exec {
        command: vec!["sh".into(), "-c".into(), "true".into()],
        env: BTreeMap::new(),
        workdir: Some("/nonexistent/tollgate-test-workdir".into()),
    };
    let results = results_of(&fixture, &job(vec![step])).await;
    assert_eq!(results[0].outcome, Outcome::Error);
    let message = &results[0].message;
    assert!(
        message.contains("workdir /nonexistent/tollgate-test-workdir cannot be used"),
        "{message}"
    );
    assert!(!message.contains("could not start"), "{message}");
}

#[tokio::test]
async fn inventory_check_passes_on_a_matching_node_and_names_a_wrong_driver() {
    let mut job = job(vec![inventory_check("inventory")]);
    job.components.truncate(1);
    let fixture_ok = fixture(vec![]);
    let results = results_of(&fixture_ok, &job).await;
    assert_eq!(
        results[0].outcome,
        Outcome::Passed,
        "{}",
        results[0].message
    );
    let fixture_bad = fixture(vec![Fault::Driver("535.129.03".into())]);
    let results = results_of(&fixture_bad, &job).await;
    assert_eq!(results[0].outcome, Outcome::Failed);
    assert_eq!(
        results[0].message,
        "driver is 535.129.03, release wants 550.54.15"
    );
    assert_eq!(results[0].inventory.driver_version, "535.129.03");
}

#[tokio::test]
async fn injected_events_land_in_the_attempt_that_loads_the_gpus() {
    let fixture = fixture(vec![Fault::Xid(79), Fault::EccUncorrected, Fault::OverTemp]);
    let results = results_of(
        &fixture,
        &job(vec![exec("load", "sleep 0.2", Duration::from_secs(30), 0)]),
    )
    .await;
    let kinds: Vec<(EventKind, i64)> = results[0].events.iter().map(|e| (e.kind, e.code)).collect();
    assert!(kinds.contains(&(EventKind::Xid, 79)), "{kinds:?}");
    assert!(kinds.contains(&(EventKind::EccUncorrected, 1)), "{kinds:?}");
    let gpu0 = &results[0].telemetry[0];
    assert!(gpu0.field(Field::GpuTempC).expect("temp").max >= 92.0);
    assert!(gpu0.field(Field::EccUncorrectedVolatile).expect("ecc").max >= 1.0);
}

#[tokio::test]
async fn a_cancel_kills_the_step_and_ends_the_job() {
    let fixture = fixture(vec![]);
    let job = job(vec![
        exec(
            "long",
            "echo started; sleep 100",
            Duration::from_secs(600),
            2,
        ),
        inventory_check("inventory"),
    ]);
    let (stop_sender, stop) = watch::channel(None);
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let context = fixture.context.clone();
    let running = tokio::spawn(async move { run_job(&context, &job, stop, &sender).await });
    // Wait until the attempt has started before cancelling it.
    match receiver.recv().await {
        Some(JobEvent::StepStarted {
            step_index: 0,
            attempt: 1,
        }) => {}
        other => panic!("expected the first attempt to start, got {other:?}"),
    }
    let keeper = keep_results(receiver);
    stop_sender
        .send(Some(Stop::Cancelled("operator asked".into())))
        .expect("job listens");
    running.await.expect("job task");
    let results = keeper.await.expect("keeper task");
    assert_eq!(
        results.len(),
        1,
        "no retry and no skipped steps after a cancel"
    );
    assert_eq!(results[0].outcome, Outcome::Error);
    assert_eq!(results[0].message, "cancelled: operator asked");
}

#[tokio::test]
async fn an_aborted_job_task_still_takes_the_process_group_down() {
    let fixture = fixture(vec![]);
    let pid_file = fixture.context.state_dir.join("grandchild.pid");
    let script = format!("sleep 100 & echo $! > {}; sleep 100", pid_file.display());
    let job = job(vec![exec("hang", &script, Duration::from_secs(600), 0)]);
    let (_stop_sender, stop) = watch::channel(None);
    let (sender, _receiver) = mpsc::unbounded_channel();
    let context = fixture.context.clone();
    let running = tokio::spawn(async move { run_job(&context, &job, stop, &sender).await });
    let mut pid = None;
    for _ in 0..200 {
        if let Some(found) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
        {
            pid = Some(found);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = pid.expect("the step wrote its grandchild's pid");
    running.abort();
    let _ = running.await;
    assert!(
        process_gone(pid).await,
        "grandchild {pid} outlived its aborted step"
    );
}

fn step(name: &str, kind: StepKind, timeout: Duration) -> Step {
    Step {
        name: name.into(),
        kind,
        timeout,
        retries: 0,
    }
}

const DCGM_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/dcgm/synthetic_dcgmi_diag_r2_fail.json"
);

#[tokio::test]
async fn dcgm_diag_grades_each_test_per_gpu_and_fails_on_a_failed_test() {
    let fixture = fixture(vec![]);
    let diag = StepKind::DcgmDiag {
        level: 2,
        tests: Vec::new(),
        command: vec!["cat".into(), DCGM_FIXTURE.into()],
    };
    let results = results_of(
        &fixture,
        &job(vec![step("diag", diag, Duration::from_secs(30))]),
    )
    .await;
    let result = &results[0];
    assert_eq!(result.outcome, Outcome::Failed, "{}", result.message);
    assert_eq!(
        result.message,
        "dcgmi diag failed: memory on GPU 1 failed (SYNTHETIC EXAMPLE: memory test found an uncorrectable error on GPU 1)"
    );
    assert_eq!(result.sub_results.len(), 6);
    assert!(
        result
            .sub_results
            .iter()
            .all(|s| s.source == "dcgm-diag" && s.level == Some(2))
    );
}

#[tokio::test]
async fn dcgm_diag_runtime_error_and_garbage_are_harness_errors() {
    let fixture = fixture(vec![]);
    let printing = |json: &str| StepKind::DcgmDiag {
        level: 1,
        tests: Vec::new(),
        command: vec!["printf".into(), "%s".into(), json.into()],
    };
    let results = results_of(
        &fixture,
        &job(vec![step(
            "a",
            printing(r#"{"DCGM Diagnostic": {"runtime_error": "no host engine"}}"#),
            Duration::from_secs(30),
        )]),
    )
    .await;
    assert_eq!(results[0].outcome, Outcome::Error);
    assert!(
        results[0].message.contains("did not run: no host engine"),
        "{}",
        results[0].message
    );
    let results = results_of(
        &fixture,
        &job(vec![step(
            "b",
            printing(r#"{"DCGM Diagnostic": {"test_categ"#),
            Duration::from_secs(30),
        )]),
    )
    .await;
    assert_eq!(results[0].outcome, Outcome::Error);
    assert!(results[0].message.contains("not valid JSON"));
}

#[tokio::test]
async fn junit_reads_the_report_from_the_results_dir() {
    let fixture = fixture(vec![]);
    let script = r#"cat > "$TOLLGATE_RESULTS_DIR/junit-1.xml" <<'XML'
<testsuite name="nccl"><testcase classname="nccl" name="allreduce"/><testcase classname="nccl" name="p2p"><failure message="busbw too low"/></testcase></testsuite>
XML
exit 1"#;
    let junit = |report: &str| StepKind::Junit {
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        workdir: None,
        report: report.into(),
    };
    let results = results_of(
        &fixture,
        &job(vec![step(
            "suite",
            junit("junit-*.xml"),
            Duration::from_secs(30),
        )]),
    )
    .await;
    let result = &results[0];
    assert_eq!(result.outcome, Outcome::Failed, "{}", result.message);
    assert_eq!(result.sub_results.len(), 2);
    assert_eq!(result.sub_results[1].name, "nccl.p2p");
    assert_eq!(result.sub_results[1].message, "busbw too low");
    let results = results_of(
        &fixture,
        &job(vec![step(
            "suite",
            junit("missing.xml"),
            Duration::from_secs(30),
        )]),
    )
    .await;
    assert_eq!(results[0].outcome, Outcome::Error);
    assert!(
        results[0].message.contains("missing.xml is missing"),
        "{}",
        results[0].message
    );
}

fn burn_in(limits: Vec<tollgate_domain::plan::TelemetryLimit>) -> StepKind {
    StepKind::BurnIn {
        command: vec!["sleep".into(), "30".into()],
        env: BTreeMap::new(),
        workdir: None,
        duration: Duration::from_millis(600),
        limits,
    }
}

#[tokio::test]
async fn burn_in_passes_at_its_duration_and_stops_at_the_first_violation() {
    let limits = vec![
        tollgate_domain::plan::TelemetryLimit {
            field: Field::GpuTempC,
            min: None,
            max: Some(88.0),
        },
        tollgate_domain::plan::TelemetryLimit {
            field: Field::EccUncorrectedVolatile,
            min: None,
            max: Some(0.0),
        },
    ];
    let fixture_ok = fixture(vec![]);
    let started = std::time::Instant::now();
    let results = results_of(
        &fixture_ok,
        &job(vec![step(
            "burn",
            burn_in(limits.clone()),
            Duration::from_secs(20),
        )]),
    )
    .await;
    assert_eq!(
        results[0].outcome,
        Outcome::Passed,
        "{}",
        results[0].message
    );
    assert_eq!(results[0].message, "ran 600ms within every limit");
    assert!(started.elapsed() < Duration::from_secs(10));

    let fixture_hot = fixture(vec![Fault::OverTemp]);
    let results = results_of(
        &fixture_hot,
        &job(vec![step("burn", burn_in(limits), Duration::from_secs(20))]),
    )
    .await;
    let result = &results[0];
    assert_eq!(result.outcome, Outcome::Failed, "{}", result.message);
    assert!(
        result.message.starts_with("GPU 0 gpu_temp_c 9") && result.message.ends_with(" > limit 88"),
        "{}",
        result.message
    );
}

#[tokio::test]
async fn flash_passes_only_when_the_component_reports_the_target_version() {
    let dir = tempfile::tempdir().expect("temp dir");
    let versions = dir.path().join("sim-versions");
    let mut fixture = fixture(vec![]);
    fixture.context.source = Arc::new(SimulatedSource::new(SimConfig {
        node: "node-1".into(),
        seed: Some(42),
        n_gpus: 2,
        driver: "550.54.15".into(),
        vbios: "96.00.74.00.01".into(),
        faults: vec![Fault::VersionsFile(versions.display().to_string())],
    }));
    let flash = |written: &str| StepKind::Flash {
        command: vec![
            "sh".into(),
            "-c".into(),
            format!("echo 'vbios={written}' > '{}'", versions.display()),
        ],
        env: BTreeMap::new(),
        workdir: None,
        component: "vbios".into(),
        version: "96.00.89.00.01".into(),
        reboot: false,
    };
    let results = results_of(
        &fixture,
        &job(vec![step(
            "flash",
            flash("96.00.89.00.01"),
            Duration::from_secs(30),
        )]),
    )
    .await;
    assert_eq!(
        results[0].outcome,
        Outcome::Passed,
        "{}",
        results[0].message
    );
    let results = results_of(
        &fixture,
        &job(vec![step(
            "flash",
            flash("96.00.74.00.01"),
            Duration::from_secs(30),
        )]),
    )
    .await;
    assert_eq!(results[0].outcome, Outcome::Failed);
    assert_eq!(
        results[0].message,
        "after flashing, vbios on GPU 0 is 96.00.74.00.01, wanted 96.00.89.00.01; after flashing, vbios on GPU 1 is 96.00.74.00.01, wanted 96.00.89.00.01"
    );
}

#[tokio::test]
async fn a_pass_after_a_failed_attempt_is_recorded_as_flaky() {
    let fixture = fixture(vec![]);
    let script = r#"marker="$TOLLGATE_RESULTS_DIR/../../flaky-marker"
if [ -e "$marker" ]; then exit 0; fi
touch "$marker"; exit 1"#;
    let results = results_of(
        &fixture,
        &job(vec![exec("flaky", script, Duration::from_secs(30), 2)]),
    )
    .await;
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].outcome, Outcome::Failed);
    assert_eq!(results[1].outcome, Outcome::Passed);
    assert_eq!(
        results[1].message,
        "exit code 0; passed on attempt 2 after 1 failed attempt(s) (flaky)"
    );
}

#[tokio::test]
async fn inventory_check_names_gpu_health_problems() {
    let fixture = fixture(vec![]);
    let mut job = job(vec![inventory_check("inventory")]);
    job.components.truncate(1);
    // The simulated GPUs report ECC on, a x16 link and no row remapping: healthy.
    let results = results_of(&fixture, &job).await;
    assert_eq!(
        results[0].outcome,
        Outcome::Passed,
        "{}",
        results[0].message
    );
    let inventory = &results[0].inventory;
    let mut sample = vec![(0, BTreeMap::from([(Field::PcieLinkWidth, 8.0)]))];
    sample.push((1, BTreeMap::from([(Field::RowRemapFailure, 1.0)])));
    let problems: Vec<String> = tollgate_domain::fleet::check_health(inventory, &sample)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        problems,
        [
            "GPU 0: PCIe link width is x8, the GPU supports x16",
            "GPU 1: row remapping failed (the GPU should be replaced)"
        ]
    );
}

#[tokio::test]
async fn a_flash_needing_a_reboot_writes_a_resume_record_and_the_job_continues_after_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let versions = dir.path().join("sim-versions");
    let sim = |versions: &std::path::Path| -> Arc<dyn GpuSource> {
        Arc::new(SimulatedSource::new(SimConfig {
            node: "node-1".into(),
            seed: Some(42),
            n_gpus: 2,
            driver: "550.54.15".into(),
            vbios: "96.00.74.00.01".into(),
            faults: vec![Fault::VersionsFile(versions.display().to_string())],
        }))
    };
    let mut fixture = fixture(vec![]);
    fixture.context.source = sim(&versions);
    // The installer stages the new VBIOS and exits 194: it takes effect after a reboot.
    let flash = StepKind::Flash {
        command: vec![
            "sh".into(),
            "-c".into(),
            format!(
                "echo 'vbios=96.00.89.00.01' > '{}'; exit 194",
                versions.display()
            ),
        ],
        env: BTreeMap::new(),
        workdir: None,
        component: "vbios".into(),
        version: "96.00.89.00.01".into(),
        reboot: false,
    };
    let job = job(vec![
        step("vbios", flash, Duration::from_secs(30)),
        exec("after", "echo after the reboot", Duration::from_secs(30), 0),
    ]);
    let results = results_of(&fixture, &job).await;
    assert!(
        results.is_empty(),
        "no result before the reboot: {results:?}"
    );
    let record = flash::read(&fixture.context.state_dir)
        .expect("readable")
        .expect("the resume record was written");
    assert_eq!(record.job.job_id, job.job_id);
    assert_eq!(record.job.lease_epoch, 3);
    assert_eq!((record.step_index, record.attempt), (0, 1));

    assert_eq!(record.node, "node-1");
    assert_eq!(record.controller, "http://127.0.0.1:7800");

    // "Reboot": a fresh source and runner context on the same state directory. The agent's
    // start-up checks the flash, delivers its result, then continues after it.
    fixture.context.source = sim(&versions);
    let (flash, from) = resume::flash_result(&fixture.context, &record)
        .await
        .expect("the record names the flash step");
    assert_eq!(from, 1);
    assert_eq!(flash.step_name, "vbios");
    assert_eq!(flash.outcome, Outcome::Passed, "{}", flash.message);
    assert!(
        flash
            .message
            .starts_with("after flashing, vbios is 96.00.89.00.01 (checked after the "),
        "{}",
        flash.message
    );
    assert_eq!((flash.lease_epoch, flash.attempt), (3, 1));
    let (_stop_sender, stop) = watch::channel(None);
    let (sender, receiver) = mpsc::unbounded_channel();
    let keeper = keep_results(receiver);
    let end = super::continue_job(&fixture.context, &record.job, from, None, stop, &sender).await;
    assert_eq!(end, super::JobEnd::Finished);
    drop(sender);
    let results = keeper.await.expect("keeper task");
    assert_eq!(
        results.len(),
        1,
        "only the steps after the flash run: {results:?}"
    );
    assert_eq!(results[0].step_name, "after");
    assert_eq!(results[0].outcome, Outcome::Passed);
}

#[tokio::test]
async fn a_flash_whose_version_did_not_change_across_the_reboot_fails_saying_what_was_found() {
    let fixture = fixture(vec![Fault::Vbios("96.00.74.00.01".into())]);
    let flash = StepKind::Flash {
        command: vec!["sh".into(), "-c".into(), "exit 194".into()],
        env: BTreeMap::new(),
        workdir: None,
        component: "vbios".into(),
        version: "96.00.89.00.01".into(),
        reboot: false,
    };
    let job = job(vec![
        step("vbios", flash, Duration::from_secs(30)),
        exec("after", "echo after the reboot", Duration::from_secs(30), 0),
    ]);
    assert!(results_of(&fixture, &job).await.is_empty());
    let record = flash::read(&fixture.context.state_dir)
        .expect("readable")
        .expect("written");
    let (flash, from) = resume::flash_result(&fixture.context, &record)
        .await
        .expect("the record names the flash step");
    assert_eq!(flash.outcome, Outcome::Failed);
    assert!(
        flash.message.starts_with(
            "after flashing, vbios on GPU 0 is 96.00.74.00.01, wanted 96.00.89.00.01; \
             after flashing, vbios on GPU 1 is 96.00.74.00.01, wanted 96.00.89.00.01 (checked after the "
        ),
        "{}",
        flash.message
    );
    let (_stop_sender, stop) = watch::channel(None);
    let (sender, receiver) = mpsc::unbounded_channel();
    let keeper = keep_results(receiver);
    super::continue_job(
        &fixture.context,
        &record.job,
        from,
        Some(flash.step_name.clone()),
        stop,
        &sender,
    )
    .await;
    drop(sender);
    let results = keeper.await.expect("keeper task");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].outcome, Outcome::Skipped);
    assert_eq!(results[0].message, "not run: step vbios failed");
}
