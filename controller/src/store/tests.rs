//! Store tests. Every behaviour test runs twice: on SQLite in a temporary file, and on
//! PostgreSQL in a schema of its own when `TOLLGATE_TEST_DATABASE_URL` is set.

use super::connect::Begin as _;
use super::*;
use std::time::Duration;
use tempfile::TempDir;
use tollgate_domain::fleet::{GpuSourceKind, Health, Inventory, Labels, Node, NodeState};
use tollgate_domain::gate::{Decision, EvidenceItem, Rule, RuleDecision, RuleKind, Verdict};
use tollgate_domain::node::HealthChange;
use tollgate_domain::plan::Step;
use tollgate_domain::release::{Component, Release};
use tollgate_domain::release::{Promotion, ReleaseChange, ReleaseState};
use tollgate_domain::result::{Measurement, Outcome};
use tollgate_domain::telemetry::{EventKind, Field, FieldSummary, GpuEvent, GpuTelemetry};
use tollgate_domain::test_support::{at, inventory, node, plan_for, release, step_result};

// ---------------------------------------------------------------------------------------------
// Running each test on both backends.

/// A store and what must outlive it.
struct Backend {
    store: Store,
    /// The SQLite file's directory, removed on drop.
    _dir: Option<TempDir>,
    /// The PostgreSQL URL whose schema is dropped when the test passed.
    pg_url: Option<String>,
}

impl Backend {
    async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/tollgate.db", dir.path().display());
        let store = Store::connect(&url).await.expect("sqlite store");
        Backend {
            store,
            _dir: Some(dir),
            pg_url: None,
        }
    }

    async fn postgres() -> Option<Backend> {
        let base = testing::postgres_url_or_skip()?;
        let url = testing::fresh_postgres_url(&base)
            .await
            .expect("fresh postgres schema");
        let store = Store::connect(&url).await.expect("postgres store");
        Some(Backend {
            store,
            _dir: None,
            pg_url: Some(url),
        })
    }

    async fn finish(self) {
        self.store.close().await;
        if let Some(url) = &self.pg_url {
            testing::drop_postgres_schema(url)
                .await
                .expect("drop test schema");
        }
    }
}

/// Declares, for each named `async fn(&Store)`, a module with a `sqlite` and a `postgres`
/// test running it.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    let backend = super::Backend::sqlite().await;
                    super::$name(&backend.store).await;
                    backend.finish().await;
                }

                #[tokio::test]
                async fn postgres() {
                    let Some(backend) = super::Backend::postgres().await else {
                        return;
                    };
                    super::$name(&backend.store).await;
                    backend.finish().await;
                }
            }
        )*
    };
}

on_both_backends!(
    round_trip_of_every_stored_type,
    timestamps_keep_microseconds,
    lease_facts_list_only_the_quiet_watched_nodes,
    heartbeat_facts_are_each_node_s_own,
    nodes_named_reads_those_named_that_exist,
    registration_keeps_operator_state,
    plan_versions_and_latest,
    duplicate_result_is_stored_once,
    transition_is_compare_and_set,
    job_end_frees_node_and_finishes_run,
    a_rescheduled_job_keeps_its_run_open_and_is_replaced_once,
    concurrent_job_ends_finish_the_run,
    cancel_run_cancels_open_jobs,
    results_decided_from_the_same_state_apply_once,
    a_batch_of_results_keeps_each_result_s_own_outcome,
    a_batch_decides_its_results_in_arrival_order,
    a_batch_with_a_registration_decides_its_results_alike,
    a_batch_past_one_statement_s_rows_is_written_whole,
    a_batch_of_registrations_keeps_each_registration_s_own_outcome,
    a_result_racing_a_cancel_applies_one_consistent_outcome,
    registration_facts_follow_the_node,
    registration_facts_of_many_nodes_are_each_node_s_own,
    two_jobs_assigned_to_one_node_at_once_only_one_applies,
    two_replicas_assigning_one_run_keep_its_max_concurrent,
    promote_is_compare_and_set,
    concurrent_cordons_apply_once,
    load_evidence_picks_latest_run_per_plan,
    stored_result_digests_match_what_loads_back,
    refreshing_evidence_reads_only_what_changed,
    failing_multi_row_write_leaves_nothing,
    non_finite_numbers_are_refused,
    a_run_s_job_marks_show_what_a_watcher_compares,
    answers_read_in_pieces_are_whole_and_in_order,
    a_result_s_basis_is_its_job_s_facts_and_results,
    corrupt_values_name_their_row,
    node_health_changes_are_compare_and_set_and_audited,
    recent_outcomes_are_the_node_s_latest_not_skipped,
    maintenance_windows_and_health_checks_are_kept_and_judged_once,
    a_run_left_running_after_its_last_job_ended_is_ended_once,
    the_last_two_jobs_ending_at_once_end_the_run_once,
    a_late_duplicate_result_leaves_the_ended_run_as_it_was,
);

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// A plan of two steps ("stress", "burn") on `sku=hgx`, named `name`.
fn two_step_plan(name: &str) -> Plan {
    let mut plan = plan_for("hgx");
    plan.name = name.into();
    let burn = Step {
        name: "burn".into(),
        retries: 1,
        timeout: Duration::from_secs(30),
        ..plan.steps[0].clone()
    };
    plan.steps.push(burn);
    plan
}

/// The audit entry of a test's setup writes.
pub(super) fn setup_note() -> AuditNote {
    AuditNote::new(at(0), "test", "test.setup", "test")
}

/// Registers a node as the agent service does (decided by `node::next_state`, applied with a
/// compare-and-set).
pub(super) async fn register(
    store: &Store,
    node: &NodeId,
    labels: &Labels,
    inventory: &Inventory,
    token_hash: &str,
    now: Timestamp,
) -> Result<NodeState, crate::grpc::node::NodeChangeError> {
    crate::grpc::node::register(store, node, labels, inventory, token_hash, now).await
}

/// Puts a node in `state` for a test's setup, from whatever state it is in.
async fn put_node_state(store: &Store, name: &str, state: NodeState) -> Result<(), StoreError> {
    let id = NodeId::from(name);
    let current = store
        .get_node(&id)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("node {name}"),
        })?;
    store
        .change_node_state(&id, current.state, state, None, &setup_note())
        .await
}

async fn add_node(store: &Store, name: &str) {
    let fixture = node(name, "hgx");
    register(
        store,
        &fixture.id,
        &fixture.labels,
        &fixture.inventory,
        "token-hash",
        at(0),
    )
    .await
    .expect("register node");
}

async fn add_release(store: &Store) -> Release {
    let release = release();
    store
        .create_release(&release, &setup_note())
        .await
        .expect("release");
    release
}

async fn add_plan(store: &Store, plan: &Plan) {
    store
        .put_plan(plan, "steps: []", at(0), &setup_note())
        .await
        .expect("plan");
}

fn run_record(id: &str, plan: &Plan, milestone: &str, created_secs: i64) -> RunRecord {
    RunRecord {
        id: RunId::from(id),
        release: ReleaseId::from("r550"),
        plan_name: plan.name.clone(),
        plan_version: plan.version(),
        milestone: milestone.into(),
        state: RunState::Running,
        created_at: at(created_secs),
        finished_at: None,
        purpose: crate::store::RunPurpose::Qualification,
    }
}

fn job_record(id: &str, run: &RunRecord, node: &str) -> JobRecord {
    JobRecord {
        id: JobId::from(id),
        run_id: run.id.clone(),
        node: NodeId::from(node),
        state: JobState::Pending,
        lease_epoch: 0,
        created_at: run.created_at,
        updated_at: run.created_at,
        attempt: 1,
        rescheduled_from: None,
    }
}

/// A running run of `plan` with one pending job per node, named `<run>-<node>`.
async fn start_run(
    store: &Store,
    run_id: &str,
    plan: &Plan,
    nodes: &[&str],
    created_secs: i64,
) -> (RunRecord, Vec<JobRecord>) {
    let run = run_record(run_id, plan, "lab-qual", created_secs);
    let jobs: Vec<JobRecord> = nodes
        .iter()
        .map(|node| job_record(&format!("{run_id}-{node}"), &run, node))
        .collect();
    store
        .create_test_run(&run, &jobs)
        .await
        .expect("create run");
    (run, jobs)
}

/// What [`one_run`] stored.
struct OneRun {
    release: Release,
    plan: Plan,
    run: RunRecord,
    jobs: Vec<JobRecord>,
}

/// Release r550, the two-step plan `gpu-qual`, the nodes, and a running run `run_id` of the
/// plan (created at 10 s) with one pending job per node, in the order given.
async fn one_run(store: &Store, run_id: &str, nodes: &[&str]) -> OneRun {
    let release = add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    for name in nodes {
        add_node(store, name).await;
    }
    let (run, jobs) = start_run(store, run_id, &plan, nodes, 10).await;
    OneRun {
        release,
        plan,
        run,
        jobs,
    }
}

/// Moves a job pending → assigned → running under epoch 1.
async fn make_running(store: &Store, job: &JobId) {
    store
        .move_job(job, JobState::Pending, JobState::Assigned, 1, at(30))
        .await
        .expect("assign");
    store
        .move_job(job, JobState::Assigned, JobState::Running, 1, at(31))
        .await
        .expect("accept");
}

/// Changes node `name`'s health from `from` to `to`, audited.
async fn set_health(store: &Store, name: &str, from: Health, to: Health) {
    let change = HealthChange {
        from,
        to,
        reason: format!("set {to} by a test"),
    };
    let note = AuditNote::new(at(40), "test", "node.health", format!("node/{name}"));
    store
        .change_node_health(&NodeId::from(name), &change, &note)
        .await
        .expect("health");
}

fn result_of(job: &JobId, step_index: u32, attempt: u32, outcome: Outcome) -> StepResult {
    StepResult {
        job_id: job.clone(),
        ..step_result(step_index, attempt, outcome)
    }
}

/// A result carrying something in every field.
fn rich_result(job: &JobId) -> StepResult {
    StepResult {
        job_id: job.clone(),
        step_index: 1,
        step_name: "burn".into(),
        attempt: 2,
        lease_epoch: 7,
        outcome: Outcome::Failed,
        exit_code: Some(-9),
        started_at: at(100),
        finished_at: at(160),
        measurements: vec![Measurement {
            name: "membw_gbps".into(),
            value: 2843.25,
            unit: Some("GB/s".into()),
        }],
        telemetry: vec![GpuTelemetry {
            gpu_index: 1,
            gpu_uuid: "GPU-00000001".into(),
            fields: vec![FieldSummary {
                field: Field::GpuTempC,
                min: 31.0,
                max: 84.5,
                mean: 70.125,
                p99: 84.0,
                last: 60.0,
                samples: 120,
            }],
            samples_missed: 2,
        }],
        events: vec![GpuEvent {
            gpu_index: 1,
            gpu_uuid: "GPU-00000001".into(),
            kind: EventKind::Xid,
            code: 79,
            at: at(150),
            detail: "GPU has fallen off the bus".into(),
        }],
        inventory: inventory("550.54.15", "96.00.89.00.01", 2),
        log_tail: "line 1\nline 2 \u{1F525}\n".into(),
        message: "exit code -9 (killed)".into(),
        sub_results: vec![tollgate_domain::result::SubResult {
            source: "dcgm-diag".into(),
            suite: "Hardware".into(),
            name: "memory".into(),
            gpu_index: Some(1),
            outcome: Outcome::Failed,
            message: "uncorrectable error".into(),
            level: Some(3),
        }],
        inventory_at_end: Some(inventory("550.90.07", "96.00.99.00.01", 2)),
        series: vec![tollgate_domain::telemetry::TelemetrySeries {
            gpu_index: 1,
            field: Field::PowerW,
            bucket_ms: 2000,
            points: vec![tollgate_domain::telemetry::SeriesPoint {
                offset_ms: 2000,
                mean: 512.5,
                min: 500.0,
                max: 525.0,
                samples: 2,
            }],
        }],
    }
}

/// A result's digest is taken from its encoded columns instead of serializing it again: it
/// must be the digest of the whole result as stored, for a result with every field set and
/// for one with empty fields, text that storing changes (NUL) and timestamps past the
/// microsecond.
#[test]
fn a_results_digest_taken_from_its_columns_is_the_digest_of_it_as_stored() {
    let job = JobId::from("job-digest");
    let mut changed = rich_result(&job);
    changed.log_tail.push('\0');
    changed.step_name = "burn\0in".into();
    changed.started_at += chrono::Duration::nanoseconds(1_500);
    changed.finished_at += chrono::Duration::nanoseconds(999);
    let mut no_end_inventory = rich_result(&job);
    no_end_inventory.inventory_at_end = None;
    for result in [
        rich_result(&job),
        changed,
        no_end_inventory,
        result_of(&job, 0, 1, Outcome::Passed),
    ] {
        let expected = tollgate_domain::gate::result_digest(&as_stored(&result));
        assert_eq!(
            results::ResultColumns::of(&result).digest,
            hex::encode(expected),
            "{result:?}"
        );
    }
}

fn decision(verdict: Verdict, evaluated_secs: i64) -> Decision {
    Decision {
        release: "r550".into(),
        milestone: "lab-qual".into(),
        verdict,
        summary: "1 of 1 rules failed".into(),
        rules: vec![RuleDecision {
            rule_id: "no-xid".into(),
            kind: "no-xid".into(),
            verdict,
            reason: "XID 79 on n1".into(),
            evidence: vec![EvidenceItem {
                node: NodeId::from("n1"),
                step: Some("burn".into()),
                attempt: Some(2),
                gpu_index: Some(1),
                value: Some(79.0),
                limit: None,
                detail: "XID 79".into(),
                ok: false,
                signature: Some("XID 79".into()),
            }],
            failing_nodes: vec![NodeId::from("n1")],
            failure_groups: Vec::new(),
            waiver_id: None,
        }],
        digest: format!("digest-{evaluated_secs}"),
        policy_version: "policy-1".into(),
        evaluated_at: at(evaluated_secs),
    }
}

fn gate_policy(description: &str) -> GatePolicy {
    GatePolicy {
        milestone: "lab-qual".into(),
        description: description.into(),
        rules: vec![Rule {
            id: "no-xid".into(),
            kind: RuleKind::NoXid { codes: vec![79] },
            scope: Default::default(),
            since: None,
        }],
    }
}

/// Runs `sql` on the store's tables behind its back, as a hand edit or a damaged disk would:
/// what the store must notice, or survive, when it reads the rows again.
async fn edit_rows(store: &Store, sql: &'static str) {
    with_pool!(store, |pool| {
        sqlx::query(sql).execute(pool).await.expect(sql);
    });
}

async fn node_state(store: &Store, name: &str) -> NodeState {
    store
        .get_node(&NodeId::from(name))
        .await
        .expect("get node")
        .expect("node exists")
        .state
}

async fn job_state(store: &Store, job: &JobId) -> JobState {
    store
        .get_job(job)
        .await
        .expect("get job")
        .expect("job exists")
        .state
}

// ---------------------------------------------------------------------------------------------
// Writes as the tests make them: each change decided by the domain from what is stored, as
// the controller does, then applied.

/// The event that moves a job from `from` to `to`, for tests that name the two states.
fn event_between(from: JobState, to: JobState) -> tollgate_domain::job::JobEvent {
    use tollgate_domain::job::JobEvent as E;
    match (from, to) {
        (_, JobState::Assigned) if from == JobState::Pending => E::Assigned,
        (JobState::Running, JobState::Assigned) => E::AgentRestarted,
        (_, JobState::Running) if from == JobState::Assigned => E::Accepted,
        (_, JobState::Lost) => E::LeaseExpired,
        (_, JobState::Cancelled) => E::Cancelled,
        (_, to) if to.is_terminal() => E::StepReported { finished: Some(to) },
        _ => E::StepReported { finished: None },
    }
}

impl Store {
    /// A test's audit note.
    fn test_note(now: Timestamp) -> AuditNote {
        AuditNote::new(now, "test", "test.write", "test/store")
    }

    /// Stores a run and its jobs, audited.
    pub(crate) async fn create_test_run(
        &self,
        run: &RunRecord,
        jobs: &[JobRecord],
    ) -> Result<(), StoreError> {
        self.create_run(run, jobs, &Self::test_note(run.created_at))
            .await
    }

    /// The change of `job` from `from` (whatever the store holds: a stale `from` makes the
    /// compare-and-set fail) to `to` at `epoch`, decided as the controller does.
    async fn test_change(
        &self,
        job: &JobId,
        from: JobState,
        to: JobState,
        epoch: Option<u64>,
    ) -> Result<tollgate_domain::job::JobChange, StoreError> {
        let Some(facts) = self.job_facts(job).await? else {
            return Err(StoreError::NotFound {
                what: format!("job {job}"),
            });
        };
        let facts = tollgate_domain::job::JobFacts {
            state: from,
            ..facts
        };
        let epoch = epoch.unwrap_or(facts.lease_epoch);
        tollgate_domain::job::decide(&facts, event_between(from, to), epoch).map_err(|refusal| {
            StoreError::Conflict {
                what: format!("job {job}"),
                detail: refusal.to_string(),
            }
        })
    }

    /// Moves `job` from `from` to `to` at lease epoch `epoch`, as decided by the domain.
    pub(crate) async fn move_job(
        &self,
        job: &JobId,
        from: JobState,
        to: JobState,
        epoch: u64,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let change = self.test_change(job, from, to, Some(epoch)).await?;
        self.apply_job_change(&change, now).await
    }

    /// Records a result; `transition` (from, to) moves its job under the result's epoch, and
    /// without it the job stays where it is (the change only checks it did not move).
    pub(crate) async fn record_test_result(
        &self,
        result: &StepResult,
        transition: Option<(JobState, JobState)>,
        now: Timestamp,
    ) -> Result<Recorded, StoreError> {
        let results_before = self.results_of_job(&result.job_id).await?.len();
        let change = match (self.job_facts(&result.job_id).await?, transition) {
            (None, _) => tollgate_domain::job::JobChange {
                job: result.job_id.clone(),
                from: JobState::Running,
                from_epoch: result.lease_epoch,
                to: JobState::Running,
                to_epoch: result.lease_epoch,
                node: None,
                reschedule: None,
            },
            (Some(facts), None) => tollgate_domain::job::JobChange {
                job: facts.id,
                from: facts.state,
                from_epoch: facts.lease_epoch,
                to: facts.state,
                to_epoch: facts.lease_epoch,
                node: None,
                reschedule: None,
            },
            (Some(_), Some((from, to))) => {
                self.test_change(&result.job_id, from, to, Some(result.lease_epoch))
                    .await?
            }
        };
        let change = tollgate_domain::job::ResultChange {
            job: change,
            results_before,
        };
        self.record_result(result, &change, now).await
    }

    /// Cancels a run as `CancelRun` does; returns its jobs that were active, as stored after.
    /// A refusal is a `Conflict` naming it.
    pub(crate) async fn cancel_test_run(
        &self,
        run: &RunId,
        now: Timestamp,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let Some(stored) = self.get_run(run).await? else {
            return Err(StoreError::NotFound {
                what: format!("run {run}"),
            });
        };
        let facts = self.job_facts_of_run(run).await?;
        let cancellation =
            tollgate_domain::run::cancel(stored.state, &facts).map_err(|refusal| {
                StoreError::Conflict {
                    what: format!("run {run}"),
                    detail: refusal.to_string(),
                }
            })?;
        self.cancel_run(run, &cancellation, &Self::test_note(now), now)
            .await?;
        let mut stopped = Vec::new();
        for job in facts.iter().filter(|job| job.state.is_active()) {
            if let Some(record) = self.get_job(&job.id).await? {
                stopped.push(record);
            }
        }
        Ok(stopped)
    }
}

// ---------------------------------------------------------------------------------------------
// Behaviour, on both backends.

async fn round_trip_of_every_stored_type(store: &Store) {
    // Nodes.
    let fixture = node("n1", "hgx");
    register(
        store,
        &fixture.id,
        &fixture.labels,
        &fixture.inventory,
        "abc123",
        at(1),
    )
    .await
    .expect("register");
    let stored = store
        .get_node(&fixture.id)
        .await
        .expect("get")
        .expect("some");
    assert_eq!(
        stored,
        Node {
            last_seen_at: Some(at(1)),
            // Registered without labels of record: its labels are those it reported.
            reported_labels: fixture.labels.clone(),
            ..fixture.clone()
        }
    );
    assert_eq!(
        store.node_token_hash(&fixture.id).await.expect("hash"),
        Some("abc123".into())
    );
    assert_eq!(
        store
            .node_token_hash(&NodeId::from("nope"))
            .await
            .expect("hash"),
        None
    );
    store.touch_node(&fixture.id, at(5)).await.expect("touch");
    set_health(store, "n1", Health::Good, Health::Suspect).await;
    let stored = store
        .get_node(&fixture.id)
        .await
        .expect("get")
        .expect("some");
    assert_eq!(
        (stored.last_seen_at, stored.health),
        (Some(at(5)), Health::Suspect)
    );
    assert!(matches!(
        store.touch_node(&NodeId::from("nope"), at(5)).await,
        Err(StoreError::NotFound { .. })
    ));
    add_node(store, "n0").await;
    let names: Vec<String> = store
        .list_nodes()
        .await
        .expect("list")
        .into_iter()
        .map(|node| node.id.0)
        .collect();
    assert_eq!(names, ["n0", "n1"]);

    // Releases, with components and promotions.
    let mut release = release();
    release.description = "driver and VBIOS for H100".into();
    release.components.push(Component {
        name: "cx7-fw".into(),
        version: "28.39.1002".into(),
        artifact_uri: Some("s3://fw/cx7.bin".into()),
        sha256: Some("ab".repeat(32)),
    });
    release.promotions.push(Promotion {
        from_milestone: "smoke".into(),
        to_milestone: "lab-qual".into(),
        at: at(3),
        decision_digest: "d0".into(),
        actor: "alice".into(),
    });
    store
        .create_release(&release, &setup_note())
        .await
        .expect("release");
    assert_eq!(
        store.get_release(&release.id).await.expect("get"),
        Some(release.clone())
    );
    let newer = Release {
        id: ReleaseId::from("r555"),
        created_at: at(10),
        promotions: Vec::new(),
        ..release.clone()
    };
    store
        .create_release(&newer, &setup_note())
        .await
        .expect("newer release");
    assert_eq!(
        store.list_releases().await.expect("list"),
        [newer, release.clone()]
    );
    assert!(matches!(
        store.create_release(&release, &setup_note()).await,
        Err(StoreError::AlreadyExists { .. })
    ));

    // Plans and gates.
    let plan = two_step_plan("gpu-qual");
    assert!(
        store
            .put_plan(&plan, "name: gpu-qual\n", at(2), &setup_note())
            .await
            .expect("put")
    );
    let stored = store
        .get_plan("gpu-qual", None)
        .await
        .expect("get")
        .expect("some");
    assert_eq!(
        stored,
        StoredPlan {
            plan: plan.clone(),
            version: plan.version(),
            source: "name: gpu-qual\n".into(),
            created_at: at(2),
        }
    );
    store
        .put_gate(
            &gate_policy("first"),
            "milestone: lab-qual\n",
            at(2),
            &setup_note(),
        )
        .await
        .expect("gate");
    let policy = gate_policy("second");
    store
        .put_gate(&policy, "second\n", at(3), &setup_note())
        .await
        .expect("gate");
    assert_eq!(
        store.get_gate("lab-qual").await.expect("gate"),
        Some(StoredGate {
            version: policy.version(),
            policy,
            source: "second\n".into(),
            created_at: at(3),
        })
    );
    assert_eq!(store.get_gate("production").await.expect("gate"), None);

    // Runs and jobs.
    let (run, jobs) = start_run(store, "run-1", &plan, &["n0", "n1"], 20).await;
    assert_eq!(
        store.get_run(&run.id).await.expect("run"),
        Some(run.clone())
    );
    assert_eq!(
        store.list_runs(None).await.expect("runs"),
        std::slice::from_ref(&run)
    );
    assert_eq!(
        store
            .list_runs(Some(&ReleaseId::from("r555")))
            .await
            .expect("runs"),
        []
    );
    assert_eq!(store.jobs_of_run(&run.id).await.expect("jobs"), jobs);
    assert_eq!(
        store.get_job(&jobs[0].id).await.expect("job"),
        Some(jobs[0].clone())
    );
    let pending: Vec<JobId> = store
        .pending_jobs()
        .await
        .expect("pending")
        .into_iter()
        .map(|pending| pending.job)
        .collect();
    assert_eq!(pending, [jobs[0].id.clone(), jobs[1].id.clone()]);
    make_running(store, &jobs[1].id).await;
    let active = store.active_jobs().await.expect("active");
    assert_eq!(active.len(), 1);
    assert_eq!(
        (&active[0].id, active[0].state, active[0].lease_epoch),
        (&jobs[1].id, JobState::Running, 1)
    );
    let n1 = store
        .get_node(&NodeId::from("n1"))
        .await
        .expect("n1")
        .expect("some");
    assert_eq!(n1.current_job, Some(jobs[1].id.clone()));

    // Results.
    let result = rich_result(&jobs[1].id);
    assert_eq!(
        store
            .record_test_result(&result, None, at(161))
            .await
            .expect("record"),
        Recorded::Inserted
    );
    assert_eq!(
        store.results_of_job(&jobs[1].id).await.expect("results"),
        [result]
    );

    // Decisions.
    assert_eq!(
        store
            .latest_decision(&release.id, "lab-qual")
            .await
            .expect("none yet"),
        None
    );
    store
        .insert_decision(&decision(Verdict::Waiting, 40))
        .await
        .expect("decision");
    let latest = decision(Verdict::Failed, 50);
    store.insert_decision(&latest).await.expect("decision");
    assert_eq!(
        store
            .latest_decision(&release.id, "lab-qual")
            .await
            .expect("latest"),
        Some(latest)
    );
}

async fn timestamps_keep_microseconds(store: &Store) {
    let precise = at(0) + chrono::Duration::nanoseconds(123_456_789);
    let micros = at(0) + chrono::Duration::nanoseconds(123_456_000);
    let fixture = node("n1", "hgx");
    register(
        store,
        &fixture.id,
        &fixture.labels,
        &fixture.inventory,
        "h",
        precise,
    )
    .await
    .expect("register");
    let stored = store
        .get_node(&fixture.id)
        .await
        .expect("get")
        .expect("some");
    assert_eq!(stored.last_seen_at, Some(micros));
}

/// The lease watchdog's read: every watched node counted; listed, only those not heard since
/// the moment asked for, with the heartbeat a flush recorded (to the microsecond, however the
/// backend orders times); unreachable and retired nodes neither.
async fn lease_facts_list_only_the_quiet_watched_nodes(store: &Store) {
    for name in ["n1", "n2", "n3", "n4", "n5", "n6", "n7"] {
        add_node(store, name).await;
    }
    let since = at(15) + chrono::Duration::microseconds(1);
    let seen = |name: &str, at: Timestamp| (NodeId::from(name), at);
    store
        .touch_nodes(&[
            seen("n1", at(10)),
            seen("n2", at(20)),
            seen("n3", at(5)),
            seen("n4", at(1)),
            seen("n5", at(1)),
            seen("n6", at(15)),
            seen("n7", since + chrono::Duration::microseconds(1)),
        ])
        .await
        .expect("heartbeats");
    put_node_state(store, "n4", NodeState::Unreachable)
        .await
        .expect("unreachable");
    put_node_state(store, "n5", NodeState::Retired)
        .await
        .expect("retired");
    assert_eq!(
        store.lease_facts(since).await.expect("lease facts"),
        LeaseFacts {
            n_watched: 5,
            quiet: vec![
                (NodeId::from("n1"), Some(at(10))),
                (NodeId::from("n3"), Some(at(5))),
                (NodeId::from("n6"), Some(at(15))),
            ],
        }
    );
    // Readers of a node see the heartbeat recorded in the narrow table.
    let n2 = store
        .get_node(&NodeId::from("n2"))
        .await
        .expect("get")
        .expect("some");
    assert_eq!(n2.last_seen_at, Some(at(20)));
    let listed = store.list_nodes().await.expect("list");
    let n3 = listed.iter().find(|node| node.id.as_str() == "n3");
    assert_eq!(n3.and_then(|node| node.last_seen_at), Some(at(5)));
}

/// What a heartbeat flush reads of the nodes it heard: each node's state and active job, in
/// one answer; a node that is gone is left out.
async fn heartbeat_facts_are_each_node_s_own(store: &Store) {
    let OneRun { jobs, .. } = one_run(store, "run-1", &["n1", "n2", "n3"]).await;
    make_running(store, &jobs[1].id).await;
    put_node_state(store, "n3", NodeState::Cordoned)
        .await
        .expect("cordoned");
    assert_eq!(store.heartbeat_facts(&[]).await.expect("none"), []);
    let names = ["n3", "gone", "n2", "n1"].map(NodeId::from);
    let mut facts = store.heartbeat_facts(&names).await.expect("facts");
    facts.sort_by(|a, b| a.node.cmp(&b.node));
    let running = store
        .get_node(&NodeId::from("n2"))
        .await
        .expect("get")
        .expect("some")
        .state;
    assert_eq!(
        facts,
        [
            HeartbeatFacts {
                node: NodeId::from("n1"),
                state: NodeState::Ready,
                current_job: None,
            },
            HeartbeatFacts {
                node: NodeId::from("n2"),
                state: running,
                current_job: Some(jobs[1].id.clone()),
            },
            HeartbeatFacts {
                node: NodeId::from("n3"),
                state: NodeState::Cordoned,
                current_job: None,
            },
        ]
    );
}

async fn nodes_named_reads_those_named_that_exist(store: &Store) {
    for name in ["n1", "n2", "n3", "n10"] {
        add_node(store, name).await;
    }
    let names =
        |nodes: Vec<Node>| -> Vec<String> { nodes.into_iter().map(|node| node.id.0).collect() };
    let asked: Vec<NodeId> = ["n3", "gone", "n1", "n10"]
        .into_iter()
        .map(NodeId::from)
        .collect();
    let found = store.nodes_named(&asked).await.expect("nodes named");
    assert_eq!(names(found.clone()), ["n1", "n10", "n3"]);
    let listed = store.list_nodes().await.expect("list");
    let n1 = listed.iter().find(|node| node.id.as_str() == "n1");
    assert_eq!(found.first(), n1, "the same node as the full list reads");
    assert!(store.nodes_named(&[]).await.expect("none").is_empty());
}

async fn registration_keeps_operator_state(store: &Store) {
    add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    for name in ["n1", "n2", "n3", "n4"] {
        add_node(store, name).await;
    }
    let (_, jobs) = start_run(store, "run-1", &plan, &["n2"], 10).await;
    make_running(store, &jobs[0].id).await;
    put_node_state(store, "n1", NodeState::Cordoned)
        .await
        .expect("cordon");
    set_health(store, "n1", Health::Good, Health::Bad).await;
    put_node_state(store, "n2", NodeState::Unreachable)
        .await
        .expect("unreachable");
    put_node_state(store, "n3", NodeState::Unreachable)
        .await
        .expect("unreachable");
    put_node_state(store, "n4", NodeState::Retired)
        .await
        .expect("retire");

    let mut labels = Labels::new();
    labels.insert("sku".into(), "hgx-h200".into());
    let inventory = inventory("560.28.03", "96.00.99.00.01", 8);
    for name in ["n1", "n2", "n3", "n4"] {
        register(
            store,
            &NodeId::from(name),
            &labels,
            &inventory,
            "new-hash",
            at(99),
        )
        .await
        .expect("re-register");
    }
    let n1 = store
        .get_node(&NodeId::from("n1"))
        .await
        .expect("n1")
        .expect("some");
    assert_eq!((n1.state, n1.health), (NodeState::Cordoned, Health::Bad));
    assert_eq!((n1.labels, n1.inventory), (labels, inventory));
    assert_eq!(n1.last_seen_at, Some(at(99)));
    assert_eq!(
        node_state(store, "n2").await,
        NodeState::Busy,
        "has a running job"
    );
    assert_eq!(node_state(store, "n3").await, NodeState::Ready);
    assert_eq!(node_state(store, "n4").await, NodeState::Retired);
    assert_eq!(
        store
            .node_token_hash(&NodeId::from("n4"))
            .await
            .expect("hash"),
        Some("new-hash".into())
    );
    assert!(matches!(
        put_node_state(store, "nope", NodeState::Ready).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn plan_versions_and_latest(store: &Store) {
    let v1 = two_step_plan("gpu-qual");
    let mut v2 = v1.clone();
    v2.description = "second".into();
    let other = two_step_plan("burn-in");
    assert!(
        store
            .put_plan(&v1, "v1", at(1), &setup_note())
            .await
            .expect("put")
    );
    assert!(
        !store
            .put_plan(&v1, "v1 again", at(2), &setup_note())
            .await
            .expect("put again")
    );
    assert!(
        store
            .put_plan(&v2, "v2", at(3), &setup_note())
            .await
            .expect("put v2")
    );
    assert!(
        store
            .put_plan(&other, "other", at(4), &setup_note())
            .await
            .expect("put other")
    );

    let latest = store
        .get_plan("gpu-qual", None)
        .await
        .expect("get")
        .expect("some");
    assert_eq!(latest.plan, v2);
    let by_prefix = store
        .get_plan("gpu-qual", Some(&v1.version().0[..8]))
        .await
        .expect("get")
        .expect("some");
    assert_eq!(
        (by_prefix.plan, by_prefix.source),
        (v1.clone(), "v1".into())
    );
    assert_eq!(
        store.get_plan("gpu-qual", Some("zz")).await.expect("get"),
        None
    );
    assert_eq!(store.get_plan("nope", None).await.expect("get"), None);

    let names: Vec<(String, PlanVersion)> = store
        .list_plans()
        .await
        .expect("list")
        .into_iter()
        .map(|stored| (stored.plan.name, stored.version))
        .collect();
    assert_eq!(
        names,
        [
            ("burn-in".into(), other.version()),
            ("gpu-qual".into(), v2.version())
        ]
    );

    // Applying v1 again rolls back to it, keeping when it was first stored.
    assert!(
        !store
            .put_plan(&v1, "v1 again", at(5), &setup_note())
            .await
            .expect("rollback")
    );
    let latest = store
        .get_plan("gpu-qual", None)
        .await
        .expect("get")
        .expect("some");
    assert_eq!((latest.plan, latest.created_at), (v1, at(1)));
}

async fn duplicate_result_is_stored_once(store: &Store) {
    let OneRun { jobs, .. } = one_run(store, "run-1", &["n1"]).await;
    let job = &jobs[0].id;
    make_running(store, job).await;

    let first = result_of(job, 0, 1, Outcome::Passed);
    let transition = Some((JobState::Running, JobState::Running));
    assert_eq!(
        store
            .record_test_result(&first, transition, at(40))
            .await
            .expect("first"),
        Recorded::Inserted
    );
    // The same key again, even with other content and a transition that would end the job.
    let again = StepResult {
        message: "sent twice".into(),
        ..first.clone()
    };
    let ending = Some((JobState::Running, JobState::Passed));
    assert_eq!(
        store
            .record_test_result(&again, ending, at(41))
            .await
            .expect("again"),
        Recorded::Duplicate
    );
    assert_eq!(
        store.results_of_job(job).await.expect("results"),
        std::slice::from_ref(&first)
    );
    assert_eq!(job_state(store, job).await, JobState::Running);

    // Another attempt or another epoch is a new result.
    let retry = result_of(job, 0, 2, Outcome::Passed);
    let new_epoch = StepResult {
        lease_epoch: 2,
        ..first.clone()
    };
    for result in [&retry, &new_epoch] {
        assert_eq!(
            store
                .record_test_result(result, None, at(42))
                .await
                .expect("new"),
            Recorded::Inserted
        );
    }
    assert_eq!(store.results_of_job(job).await.expect("results").len(), 3);

    // A result for a job that does not exist is refused.
    let orphan = result_of(&JobId::from("job-nope"), 0, 1, Outcome::Passed);
    assert!(matches!(
        store.record_test_result(&orphan, None, at(43)).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn transition_is_compare_and_set(store: &Store) {
    let OneRun { jobs, .. } = one_run(store, "run-1", &["n1"]).await;
    let job = &jobs[0].id;

    store
        .move_job(job, JobState::Pending, JobState::Assigned, 3, at(20))
        .await
        .expect("assign");
    let stored = store.get_job(job).await.expect("job").expect("some");
    assert_eq!(
        (stored.state, stored.lease_epoch, stored.updated_at),
        (JobState::Assigned, 3, at(20))
    );
    assert_eq!(node_state(store, "n1").await, NodeState::Busy);

    let err = store
        .move_job(job, JobState::Pending, JobState::Assigned, 4, at(21))
        .await
        .expect_err("no longer pending");
    match err {
        StoreError::Conflict { what, detail } => {
            assert!(what.contains(job.as_str()), "{what}");
            assert!(
                detail.contains("pending") && detail.contains("assigned"),
                "{detail}"
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let stored = store.get_job(job).await.expect("job").expect("some");
    assert_eq!((stored.state, stored.lease_epoch), (JobState::Assigned, 3));

    assert!(matches!(
        store
            .move_job(
                &JobId::from("job-nope"),
                JobState::Pending,
                JobState::Assigned,
                1,
                at(21)
            )
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn job_end_frees_node_and_finishes_run(store: &Store) {
    let OneRun { run, jobs, .. } = one_run(store, "run-1", &["n1", "n2"]).await;
    for job in &jobs {
        make_running(store, &job.id).await;
    }
    assert_eq!(node_state(store, "n1").await, NodeState::Busy);
    // A node cordoned while its job runs stays cordoned when the job ends.
    put_node_state(store, "n2", NodeState::Cordoned)
        .await
        .expect("cordon");

    // The last result ends the job in the same transaction.
    let last = result_of(&jobs[0].id, 1, 1, Outcome::Passed);
    store
        .record_test_result(&last, Some((JobState::Running, JobState::Passed)), at(50))
        .await
        .expect("record");
    assert_eq!(job_state(store, &jobs[0].id).await, JobState::Passed);
    assert_eq!(node_state(store, "n1").await, NodeState::Ready);
    let stored = store.get_run(&run.id).await.expect("run").expect("some");
    assert_eq!(
        (stored.state, stored.finished_at),
        (RunState::Running, None)
    );

    store
        .move_job(&jobs[1].id, JobState::Running, JobState::Lost, 1, at(60))
        .await
        .expect("lost");
    assert_eq!(node_state(store, "n2").await, NodeState::Cordoned);
    let stored = store.get_run(&run.id).await.expect("run").expect("some");
    assert_eq!(
        (stored.state, stored.finished_at),
        (RunState::Finished, Some(at(60)))
    );
    assert!(store.active_jobs().await.expect("active").is_empty());
    let n1 = store
        .get_node(&NodeId::from("n1"))
        .await
        .expect("n1")
        .expect("some");
    assert_eq!(n1.current_job, None);
}

async fn a_rescheduled_job_keeps_its_run_open_and_is_replaced_once(store: &Store) {
    use tollgate_domain::reschedule::{Cause, Reschedule};
    let OneRun {
        release, run, jobs, ..
    } = one_run(store, "run-1", &["n1"]).await;
    add_node(store, "n2").await;
    make_running(store, &jobs[0].id).await;
    let mut lost = store
        .test_change(&jobs[0].id, JobState::Running, JobState::Lost, None)
        .await
        .expect("decided");
    lost.reschedule = Some(Reschedule {
        job: JobId::from("run-1-n2-2"),
        node: NodeId::from("n2"),
        attempt: 2,
        cause: Cause::Lost,
    });
    store
        .apply_job_change(&lost, at(60))
        .await
        .expect("applied");
    // The run goes on with the new job, pending on n2.
    let stored = store.get_run(&run.id).await.expect("run").expect("some");
    assert_eq!(stored.state, RunState::Running);
    let again = store
        .get_job(&JobId::from("run-1-n2-2"))
        .await
        .expect("job")
        .expect("some");
    assert_eq!(
        (again.state, again.attempt, again.rescheduled_from.clone()),
        (JobState::Pending, 2, Some(jobs[0].id.clone()))
    );
    assert_eq!(
        store.attempts_of_job(&again.id).await.expect("attempts"),
        [
            (again.id.clone(), NodeId::from("n2"), 2),
            (jobs[0].id.clone(), NodeId::from("n1"), 1)
        ]
    );
    let audit = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit");
    assert!(
        audit.iter().any(|entry| entry.action == "job.reschedule"
            && entry.subject == format!("job/{}", jobs[0].id)),
        "{audit:?}"
    );
    // The evidence holds the new attempt only.
    let evidence = store
        .load_evidence(&release, "lab-qual")
        .await
        .expect("evidence");
    let ids: Vec<&JobId> = evidence.runs[0]
        .jobs
        .iter()
        .map(|job| &job.job_id)
        .collect();
    assert_eq!(ids, [&again.id]);

    // A job is replaced once: a second new job naming it is refused and nothing is written.
    let replaces_first = tollgate_domain::job::JobChange {
        job: jobs[0].id.clone(),
        from: JobState::Lost,
        from_epoch: lost.to_epoch,
        to: JobState::Lost,
        to_epoch: lost.to_epoch,
        node: None,
        reschedule: Some(Reschedule {
            job: JobId::from("run-1-n1-3"),
            node: NodeId::from("n1"),
            attempt: 3,
            cause: Cause::DrainDeadline,
        }),
    };
    assert!(
        store
            .apply_job_change(&replaces_first, at(70))
            .await
            .is_err()
    );
    assert!(
        store
            .get_job(&JobId::from("run-1-n1-3"))
            .await
            .expect("job")
            .is_none()
    );
}

async fn concurrent_job_ends_finish_the_run(store: &Store) {
    add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    let names: Vec<String> = (0..8).map(|idx| format!("n{idx}")).collect();
    for name in &names {
        add_node(store, name).await;
    }
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (run, jobs) = start_run(store, "run-1", &plan, &name_refs, 10).await;
    for job in &jobs {
        make_running(store, &job.id).await;
    }
    // Every job ends at once: exactly one of them is the last, and it must see the others.
    let ends = jobs.iter().map(|job| {
        let store = store.clone();
        let job = job.id.clone();
        tokio::spawn(async move {
            let result = result_of(&job, 1, 1, Outcome::Passed);
            store
                .record_test_result(&result, Some((JobState::Running, JobState::Passed)), at(70))
                .await
        })
    });
    for end in futures::future::join_all(ends).await {
        assert_eq!(end.expect("task").expect("record"), Recorded::Inserted);
    }
    let stored = store.get_run(&run.id).await.expect("run").expect("some");
    assert_eq!(stored.state, RunState::Finished);
    for name in &names {
        assert_eq!(node_state(store, name).await, NodeState::Ready);
    }
}

async fn cancel_run_cancels_open_jobs(store: &Store) {
    let OneRun {
        plan, run, jobs, ..
    } = one_run(store, "run-1", &["n1", "n2", "n3"]).await;
    make_running(store, &jobs[0].id).await;
    make_running(store, &jobs[2].id).await;
    store
        .move_job(&jobs[2].id, JobState::Running, JobState::Passed, 1, at(40))
        .await
        .expect("passed");

    let told = store
        .cancel_test_run(&run.id, at(50))
        .await
        .expect("cancel");
    assert_eq!(told.len(), 1, "only the running job's agent must be told");
    assert_eq!(
        (
            &told[0].id,
            &told[0].node,
            told[0].state,
            told[0].lease_epoch
        ),
        (&jobs[0].id, &NodeId::from("n1"), JobState::Cancelled, 1)
    );
    let states: Vec<JobState> = store
        .jobs_of_run(&run.id)
        .await
        .expect("jobs")
        .into_iter()
        .map(|job| job.state)
        .collect();
    assert_eq!(
        states,
        [JobState::Cancelled, JobState::Cancelled, JobState::Passed]
    );
    let stored = store.get_run(&run.id).await.expect("run").expect("some");
    assert_eq!(
        (stored.state, stored.finished_at),
        (RunState::Cancelled, Some(at(50)))
    );
    assert_eq!(node_state(store, "n1").await, NodeState::Ready);
    assert!(store.pending_jobs().await.expect("pending").is_empty());

    // Again, or a finished run: refused (a conflict here). Unknown: not found.
    assert!(matches!(
        store.cancel_test_run(&run.id, at(51)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store
            .cancel_test_run(&RunId::from("run-nope"), at(51))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let (finished, finished_jobs) = start_run(store, "run-2", &plan, &["n2"], 60).await;
    make_running(store, &finished_jobs[0].id).await;
    store
        .move_job(
            &finished_jobs[0].id,
            JobState::Running,
            JobState::Failed,
            1,
            at(70),
        )
        .await
        .expect("failed");
    assert!(matches!(
        store.cancel_test_run(&finished.id, at(80)).await,
        Err(StoreError::Conflict { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Two writers deciding from the same state: exactly one applies.

/// A result of `plan`'s step `step_index`, named as the plan names it.
fn plan_result(
    plan: &Plan,
    job: &JobId,
    step_index: u32,
    attempt: u32,
    outcome: Outcome,
) -> StepResult {
    StepResult {
        step_name: plan.steps[step_index as usize].name.clone(),
        ..result_of(job, step_index, attempt, outcome)
    }
}

/// What the controller decides for `result` from what the store holds now.
async fn accepted(
    store: &Store,
    plan: &Plan,
    result: &StepResult,
) -> tollgate_domain::job::ResultChange {
    use tollgate_domain::job::{Acceptance, PlanSteps, accept_result};
    let facts = store
        .job_facts(&result.job_id)
        .await
        .expect("facts")
        .expect("job");
    let stored = store.results_of_job(&result.job_id).await.expect("results");
    let steps = PlanSteps {
        name: &plan.name,
        steps: &plan.steps,
    };
    match accept_result(&facts, &facts.node.clone(), steps, &stored, result) {
        Ok(Acceptance::Record(change)) => change,
        other => panic!("expected a result to record, got {other:?}"),
    }
}

/// Exactly one of two outcomes is `Ok`, the other a `Conflict`; returns whether the first won.
fn exactly_one<T: std::fmt::Debug, U: std::fmt::Debug>(
    first: &Result<T, StoreError>,
    second: &Result<U, StoreError>,
) -> bool {
    match (first, second) {
        (Ok(_), Err(StoreError::Conflict { .. })) => true,
        (Err(StoreError::Conflict { .. }), Ok(_)) => false,
        other => panic!("expected exactly one to apply and one conflict, got {other:?}"),
    }
}

/// Results written together (group commit) are each recorded or refused as if alone: one
/// refused result stores nothing of itself and takes nothing of the others with it.
async fn a_batch_of_results_keeps_each_result_s_own_outcome(store: &Store) {
    add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    add_node(store, "n1").await;
    add_node(store, "n2").await;
    add_node(store, "n3").await;
    let (_, jobs) = start_run(store, "run-1", &plan, &["n1", "n2", "n3"], 10).await;
    let (one, two, three) = (&jobs[0].id, &jobs[1].id, &jobs[2].id);
    make_running(store, one).await;
    make_running(store, two).await;
    let stress_two = plan_result(&plan, two, 0, 1, Outcome::Passed);
    let stress_two_change = accepted(store, &plan, &stress_two).await;
    store
        .record_result(&stress_two, &stress_two_change, at(40))
        .await
        .expect("stress of job two");

    let stress_one = plan_result(&plan, one, 0, 1, Outcome::Passed);
    let stress_one_change = accepted(store, &plan, &stress_one).await;
    // Both decided from the same stored results of job two: the second is refused.
    let failed = plan_result(&plan, two, 1, 1, Outcome::Failed);
    let passed = plan_result(&plan, two, 1, 2, Outcome::Passed);
    let failed_change = accepted(store, &plan, &failed).await;
    let passed_change = accepted(store, &plan, &passed).await;
    let mut unreadable = plan_result(&plan, one, 1, 1, Outcome::Passed);
    unreadable.measurements.push(Measurement {
        name: "membw_gbps".into(),
        value: f64::NAN,
        unit: None,
    });
    let facts = store.job_facts(three).await.expect("facts").expect("found");
    let assign_three = tollgate_domain::job::decide(
        &facts,
        tollgate_domain::job::JobEvent::Assigned,
        facts.lease_epoch + 1,
    )
    .expect("a pending job can be assigned");
    let outcomes = store
        .write_batch(&[
            Write::Result(&stress_one, &stress_one_change, at(41)),
            Write::Result(&failed, &failed_change, at(41)),
            Write::Result(&passed, &passed_change, at(41)),
            Write::Result(&stress_two, &stress_two_change, at(41)),
            Write::Result(&unreadable, &stress_one_change, at(41)),
            // The same assignment twice: the second finds the job assigned already.
            Write::Job(&assign_three, at(41)),
            Write::Job(&assign_three, at(41)),
        ])
        .await
        .expect("the batch commits");
    assert_eq!(outcomes.len(), 7);
    assert!(
        matches!(outcomes[5], Ok(Recorded::Inserted)),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[6], Err(StoreError::Conflict { .. })),
        "{outcomes:?}"
    );
    assert_eq!(job_state(store, three).await, JobState::Assigned);
    assert!(
        matches!(outcomes[0], Ok(Recorded::Inserted)),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[1], Ok(Recorded::Inserted)),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[2], Err(StoreError::Conflict { .. })),
        "decided without the failed attempt: {outcomes:?}"
    );
    assert!(
        matches!(outcomes[3], Ok(Recorded::Duplicate)),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[4], Err(StoreError::Corrupt { .. })),
        "{outcomes:?}"
    );
    let of_one = store.results_of_job(one).await.expect("results");
    assert_eq!(of_one.len(), 1, "{of_one:?}");
    let of_two = store.results_of_job(two).await.expect("results");
    let kept: Vec<(u32, u32, Outcome)> = of_two
        .iter()
        .map(|r| (r.step_index, r.attempt, r.outcome))
        .collect();
    assert_eq!(
        kept,
        vec![(0, 1, Outcome::Passed), (1, 1, Outcome::Failed)],
        "the refused attempt left nothing"
    );
    assert_eq!(job_state(store, two).await, JobState::Running);
    assert_eq!(job_state(store, one).await, JobState::Running);
}

/// A batch's outcomes in a line each: `Inserted`, `Duplicate`, `conflict: WHAT: DETAIL` or
/// `error: ...`.
fn brief(outcomes: &[Result<Recorded, StoreError>]) -> Vec<String> {
    outcomes
        .iter()
        .map(|outcome| match outcome {
            Ok(recorded) => format!("{recorded:?}"),
            Err(StoreError::Conflict { what, detail }) => format!("conflict: {what}: {detail}"),
            Err(other) => format!("error: {other}"),
        })
        .collect()
}

/// A batch of results of several jobs is decided in arrival order exactly as if each were
/// written alone after the ones before it: a result that ends its job, then another of the
/// same job decided before that end (refused); two results of one job, the second decided
/// as if the first were stored (both kept, the job ends); the same result twice (the second
/// a duplicate) and one stored before (a duplicate); a result decided at an epoch the job
/// has left (refused alone); a job's last result sent again after it ended it (a
/// duplicate); and the run whose last job the batch ends is ended after it. Applied
/// set-based.
async fn a_batch_decides_its_results_in_arrival_order(store: &Store) {
    batch_decided_in_arrival_order(store, false).await;
}

/// The same batch with a node's registration at its end, which makes it applied one write
/// after the other, a savepoint each: the same outcomes, the same rows.
async fn a_batch_with_a_registration_decides_its_results_alike(store: &Store) {
    batch_decided_in_arrival_order(store, true).await;
}

async fn batch_decided_in_arrival_order(store: &Store, with_registration: bool) {
    use tollgate_domain::job::{Acceptance, PlanSteps, accept_result};
    add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    for name in ["n1", "n2", "n3", "n4", "n5"] {
        add_node(store, name).await;
    }
    let (_, jobs) = start_run(store, "run-1", &plan, &["n1", "n2", "n3", "n4"], 10).await;
    let (run_two, last) = start_run(store, "run-2", &plan, &["n5"], 11).await;
    let (one, two, three, four) = (&jobs[0].id, &jobs[1].id, &jobs[2].id, &jobs[3].id);
    let five = &last[0].id;
    for job in [one, two, three, four, five] {
        make_running(store, job).await;
    }
    for job in [one, five] {
        let stress = plan_result(&plan, job, 0, 1, Outcome::Passed);
        let change = accepted(store, &plan, &stress).await;
        store
            .record_result(&stress, &change, at(40))
            .await
            .expect("stress stored before the batch");
    }
    let stored_before = plan_result(&plan, five, 0, 1, Outcome::Passed);

    // Job one: its last step ends it; a second attempt decided from the same results comes
    // after it.
    let ends_one = plan_result(&plan, one, 1, 1, Outcome::Passed);
    let ends_one_change = accepted(store, &plan, &ends_one).await;
    assert_eq!(ends_one_change.job.to, JobState::Passed);
    assert!(ends_one_change.job.node.is_some(), "the end frees the node");
    let late_one = plan_result(&plan, one, 1, 2, Outcome::Passed);
    let late_one_change = accepted(store, &plan, &late_one).await;
    // Job two: the same result twice.
    let stress_two = plan_result(&plan, two, 0, 1, Outcome::Passed);
    let stress_two_change = accepted(store, &plan, &stress_two).await;
    // Job three: its first step, then its last decided as if the first were stored.
    let stress_three = plan_result(&plan, three, 0, 1, Outcome::Passed);
    let stress_three_change = accepted(store, &plan, &stress_three).await;
    let ends_three = plan_result(&plan, three, 1, 1, Outcome::Passed);
    let facts = store.job_facts(three).await.expect("facts").expect("job");
    let steps = PlanSteps {
        name: &plan.name,
        steps: &plan.steps,
    };
    let ends_three_change = match accept_result(
        &facts,
        &facts.node.clone(),
        steps,
        std::slice::from_ref(&stress_three),
        &ends_three,
    ) {
        Ok(Acceptance::Record(change)) => change,
        other => panic!("expected a result to record, got {other:?}"),
    };
    assert_eq!(ends_three_change.job.to, JobState::Passed);
    // Job four: decided, then the job was handed out again at a newer epoch.
    let stale_four = plan_result(&plan, four, 0, 1, Outcome::Passed);
    let stale_four_change = accepted(store, &plan, &stale_four).await;
    store
        .move_job(four, JobState::Running, JobState::Assigned, 2, at(42))
        .await
        .expect("handed out again");
    // Job five: its last step ends run-2's only job.
    let ends_five = plan_result(&plan, five, 1, 1, Outcome::Passed);
    let ends_five_change = accepted(store, &plan, &ends_five).await;

    let mut batch = vec![
        Write::Result(&ends_one, &ends_one_change, at(50)),
        Write::Result(&stress_two, &stress_two_change, at(50)),
        Write::Result(&late_one, &late_one_change, at(50)),
        Write::Result(&stress_three, &stress_three_change, at(51)),
        Write::Result(&stress_two, &stress_two_change, at(51)),
        Write::Result(&stale_four, &stale_four_change, at(51)),
        Write::Result(&ends_three, &ends_three_change, at(52)),
        Write::Result(&stored_before, &ends_five_change, at(52)),
        Write::Result(&ends_five, &ends_five_change, at(52)),
        // Job one's end sent again after it ended: the job no longer is where the change
        // was decided from, and the result is stored already.
        Write::Result(&ends_one, &ends_one_change, at(52)),
    ];
    let fixture = node("n9", "hgx");
    let registration = EncodedRegistration::new(
        &fixture.id,
        &fixture.labels,
        &fixture.labels,
        &fixture.inventory,
        "n9-hash",
        Registration::New(NodeState::Ready),
    );
    if with_registration {
        batch.push(Write::Registration(&registration, at(52)));
    }
    let outcomes = store.write_batch(&batch).await.expect("the batch commits");
    let mut expected = vec![
        "Inserted".to_owned(),
        "Inserted".to_owned(),
        "conflict: job run-1-n1: decided from 1 stored results, found 2 others".to_owned(),
        "Inserted".to_owned(),
        "Duplicate".to_owned(),
        "conflict: job run-1-n4: expected state running at epoch 1, found assigned at epoch 2"
            .to_owned(),
        "Inserted".to_owned(),
        "Duplicate".to_owned(),
        "Inserted".to_owned(),
        "Duplicate".to_owned(),
    ];
    if with_registration {
        expected.push("Inserted".to_owned());
    }
    assert_eq!(brief(&outcomes), expected);

    let kept = |results: Vec<StepResult>| -> Vec<(u32, u32)> {
        results.iter().map(|r| (r.step_index, r.attempt)).collect()
    };
    for (job, expected) in [
        (one, vec![(0, 1), (1, 1)]),
        (two, vec![(0, 1)]),
        (three, vec![(0, 1), (1, 1)]),
        (four, vec![]),
        (five, vec![(0, 1), (1, 1)]),
    ] {
        let stored = store.results_of_job(job).await.expect("results");
        assert_eq!(kept(stored), expected, "{job}");
    }
    let stored = store.results_of_job(three).await.expect("three");
    assert_eq!(
        (stored[0].outcome, stored[1].outcome),
        (Outcome::Passed, Outcome::Passed)
    );

    assert_eq!(job_state(store, one).await, JobState::Passed);
    assert_eq!(job_state(store, two).await, JobState::Running);
    assert_eq!(job_state(store, three).await, JobState::Passed);
    assert_eq!(job_state(store, four).await, JobState::Assigned);
    assert_eq!(job_state(store, five).await, JobState::Passed);
    let updated = store.get_job(three).await.expect("read").expect("job");
    assert_eq!(
        updated.updated_at,
        at(52),
        "the last write of the job's time"
    );
    for (name, state) in [
        ("n1", NodeState::Ready),
        ("n2", NodeState::Busy),
        ("n3", NodeState::Ready),
        ("n5", NodeState::Ready),
    ] {
        let node = store
            .get_node(&NodeId::from(name))
            .await
            .expect("read")
            .expect("node");
        assert_eq!(node.state, state, "{name}");
    }
    let still = store.get_run(&RunId::from("run-1")).await.expect("read");
    assert_eq!(still.expect("run").state, RunState::Running);
    let ended = store
        .get_run(&run_two.id)
        .await
        .expect("read")
        .expect("run");
    assert_eq!(
        (ended.state, ended.finished_at),
        (RunState::Finished, Some(at(52)))
    );
}

/// A batch of more results, jobs and nodes than one statement writes (on SQLite a hundred
/// results an insert, five hundred jobs or nodes a move) is written whole: every result
/// stored, every job and node moved, the run ended.
async fn a_batch_past_one_statement_s_rows_is_written_whole(store: &Store) {
    add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    let names: Vec<String> = (0..501).map(|i| format!("n{i:03}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for name in &names {
        add_node(store, name).await;
    }
    let (run, jobs) = start_run(store, "run-1", &plan, &names, 10).await;
    for job in &jobs {
        make_running(store, &job.id).await;
    }
    for step_index in [0, 1] {
        let results: Vec<StepResult> = jobs
            .iter()
            .map(|job| plan_result(&plan, &job.id, step_index, 1, Outcome::Passed))
            .collect();
        let mut changes = Vec::new();
        for result in &results {
            changes.push(accepted(store, &plan, result).await);
        }
        let batch: Vec<Write<'_>> = results
            .iter()
            .zip(&changes)
            .map(|(result, change)| Write::Result(result, change, at(40 + i64::from(step_index))))
            .collect();
        let outcomes = store.write_batch(&batch).await.expect("the batch commits");
        assert!(
            outcomes
                .iter()
                .all(|outcome| matches!(outcome, Ok(Recorded::Inserted))),
            "{:?}",
            brief(&outcomes)
        );
    }
    let marks = store.job_marks_of_run(&run.id).await.expect("marks");
    assert_eq!(marks.len(), 501);
    for mark in &marks {
        assert_eq!(
            (mark.state, mark.n_results),
            (JobState::Passed, 2),
            "{}",
            mark.id
        );
    }
    let nodes = store.list_nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 501);
    for node in &nodes {
        assert_eq!(node.state, NodeState::Ready, "{}", node.id);
    }
    let ended = store.get_run(&run.id).await.expect("read").expect("run");
    assert_eq!(
        (ended.state, ended.finished_at),
        (RunState::Finished, Some(at(41)))
    );
}

async fn results_decided_from_the_same_state_apply_once(store: &Store) {
    add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    add_node(store, "n1").await;
    let (_, jobs) = start_run(store, "run-1", &plan, &["n1"], 10).await;
    let job = &jobs[0].id;
    make_running(store, job).await;
    let stress = plan_result(&plan, job, 0, 1, Outcome::Passed);
    store
        .record_result(&stress, &accepted(store, &plan, &stress).await, at(40))
        .await
        .expect("stress");

    // Step "burn" (one retry): attempt 1 failed keeps the job running, attempt 2 passed
    // ends it. Both decided from the same stored results: whichever is applied second was
    // decided without the other and must be decided again.
    let failed = plan_result(&plan, job, 1, 1, Outcome::Failed);
    let passed = plan_result(&plan, job, 1, 2, Outcome::Passed);
    let failed_change = accepted(store, &plan, &failed).await;
    let passed_change = accepted(store, &plan, &passed).await;
    assert_eq!(passed_change.job.to, JobState::Passed);
    let (first, second) = tokio::join!(
        store.record_result(&failed, &failed_change, at(41)),
        store.record_result(&passed, &passed_change, at(41)),
    );
    let failed_won = exactly_one(&first, &second);
    let stored = store.results_of_job(job).await.expect("results");
    assert_eq!(stored.len(), 2, "the loser stored nothing");
    let expected = if failed_won {
        JobState::Running
    } else {
        JobState::Passed
    };
    assert_eq!(job_state(store, job).await, expected);

    // The loser, decided again from what is stored now, applies (or is refused for a reason).
    if failed_won {
        let change = accepted(store, &plan, &passed).await;
        assert_eq!(change.job.to, JobState::Passed);
        store
            .record_result(&passed, &change, at(42))
            .await
            .expect("decided again");
        assert_eq!(job_state(store, job).await, JobState::Passed);
        assert_eq!(node_state(store, "n1").await, NodeState::Ready);
    }
}

async fn a_result_racing_a_cancel_applies_one_consistent_outcome(store: &Store) {
    add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    add_node(store, "n1").await;
    let (run, jobs) = start_run(store, "run-1", &plan, &["n1"], 10).await;
    let job = &jobs[0].id;
    make_running(store, job).await;
    let stress = plan_result(&plan, job, 0, 1, Outcome::Passed);
    store
        .record_result(&stress, &accepted(store, &plan, &stress).await, at(40))
        .await
        .expect("stress");

    // The last result and a cancel, both decided from the same running job.
    let last = plan_result(&plan, job, 1, 1, Outcome::Passed);
    let result_change = accepted(store, &plan, &last).await;
    let facts = store.job_facts_of_run(&run.id).await.expect("facts");
    let cancellation = tollgate_domain::run::cancel(RunState::Running, &facts).expect("cancel");
    let note = AuditNote::new(at(50), "alice", "run.cancel", format!("run/{}", run.id));
    let (recorded, cancelled) = tokio::join!(
        store.record_result(&last, &result_change, at(50)),
        store.cancel_run(&run.id, &cancellation, &note, at(50)),
    );
    let result_won = exactly_one(&recorded, &cancelled);
    let stored_run = store.get_run(&run.id).await.expect("run").expect("some");
    let n_results = store.results_of_job(job).await.expect("results").len();
    let expected = if result_won {
        (JobState::Passed, RunState::Finished, 2)
    } else {
        (JobState::Cancelled, RunState::Cancelled, 1)
    };
    assert_eq!(
        (job_state(store, job).await, stored_run.state, n_results),
        expected
    );
    assert_eq!(node_state(store, "n1").await, NodeState::Ready);
    // The cancel's audit entry exists only if the cancel applied.
    let entries = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit");
    let n_cancels = entries.iter().filter(|e| e.action == "run.cancel").count();
    assert_eq!(n_cancels, usize::from(!result_won));
}

/// Decides `event` for `job` from its facts as stored (its lease epoch moved by `epoch_step`)
/// and applies the change.
async fn apply_event(
    store: &Store,
    job: &JobId,
    event: tollgate_domain::job::JobEvent,
    epoch_step: u64,
    now: Timestamp,
) {
    let facts = store.job_facts(job).await.expect("facts").expect("job");
    let change = tollgate_domain::job::decide(&facts, event, facts.lease_epoch + epoch_step)
        .expect("allowed");
    store.apply_job_change(&change, now).await.expect("applied");
}

/// Enrolls `node` with `labels` of record: a bootstrap token made at t=0 and spent at t=1
/// with a certificate, as `tollgate node enroll` and the agent's first start do.
async fn enroll(store: &Store, node: &NodeId, labels: &Labels) {
    let token = tollgate_domain::enrollment::BootstrapToken {
        node: node.clone(),
        labels: labels.clone(),
        expires_at: at(3600),
        spent_at: None,
    };
    let subject = format!("node/{node}");
    let hash = format!("hash-{node}");
    let made = AuditNote::new(at(0), "alice", "node.enroll-token", subject.clone());
    store
        .create_bootstrap_token(&hash, &token, &made)
        .await
        .expect("stored");
    let certificate = IssuedCertificate {
        serial: format!("0a0b{}", node.as_str().len()),
        node: node.clone(),
        issued_at: at(1),
        not_after: at(100_000),
    };
    let spent = AuditNote::new(at(1), subject.clone(), "node.enroll", subject);
    store
        .spend_bootstrap_token(&hash, labels, &certificate, &spent)
        .await
        .expect("spent");
}

/// What a registration is decided from, read at once: nothing for a node never seen, the
/// labels of record for one enrolled but not registered yet, then its token hash and state,
/// and whether a job occupies it (an assigned job does; an ended one does not).
async fn registration_facts_follow_the_node(store: &Store) {
    let id = NodeId::from("n1");
    assert_eq!(
        store.registration_facts(&id).await.expect("read"),
        RegistrationFacts::default()
    );
    let labels: Labels = [("sku".to_owned(), "hgx".to_owned())].into_iter().collect();
    enroll(store, &id, &labels).await;
    let enrolled = RegistrationFacts {
        labels_of_record: Some(labels.clone()),
        ..RegistrationFacts::default()
    };
    assert_eq!(store.registration_facts(&id).await.expect("read"), enrolled);
    add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    add_node(store, "n1").await;
    let registered = RegistrationFacts {
        token_hash: Some("token-hash".to_owned()),
        known: Some((NodeState::Ready, false)),
        labels_of_record: Some(labels),
    };
    assert_eq!(
        store.registration_facts(&id).await.expect("read"),
        registered
    );
    let (_, jobs) = start_run(store, "run-1", &plan, &["n1"], 10).await;
    let job = &jobs[0].id;
    apply_event(
        store,
        job,
        tollgate_domain::job::JobEvent::Assigned,
        1,
        at(20),
    )
    .await;
    let busy = store.registration_facts(&id).await.expect("read");
    assert_eq!(busy.known, Some((NodeState::Busy, true)), "{busy:?}");
    apply_event(
        store,
        job,
        tollgate_domain::job::JobEvent::Cancelled,
        0,
        at(21),
    )
    .await;
    let ended = store.registration_facts(&id).await.expect("read");
    assert_eq!(ended.known, Some((NodeState::Ready, false)), "{ended:?}");
}

/// Registration facts read for many nodes at once (more than one statement's worth) answer
/// every name asked, each as its own read would: a busy node, an idle one, one enrolled and
/// never registered, and names the store has never seen.
async fn registration_facts_of_many_nodes_are_each_node_s_own(store: &Store) {
    add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    add_node(store, "busy-1").await;
    add_node(store, "idle-1").await;
    let (_, jobs) = start_run(store, "run-1", &plan, &["busy-1"], 10).await;
    apply_event(
        store,
        &jobs[0].id,
        tollgate_domain::job::JobEvent::Assigned,
        1,
        at(20),
    )
    .await;
    let labels: Labels = [("sku".to_owned(), "b200".to_owned())]
        .into_iter()
        .collect();
    enroll(store, &NodeId::from("enrolled-1"), &labels).await;
    let mut names: Vec<NodeId> = (0..crate::store::HEARTBEATS_PER_STATEMENT + 50)
        .map(|idx| NodeId::from(format!("never-{idx}").as_str()))
        .collect();
    names.insert(3, NodeId::from("busy-1"));
    names.insert(120, NodeId::from("idle-1"));
    names.push(NodeId::from("enrolled-1"));
    let mut read = store.registration_facts_of(&names).await.expect("read");
    read.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = Vec::new();
    for name in &names {
        let alone = store.registration_facts(name).await.expect("read");
        expected.push((name.clone(), alone));
    }
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(read, expected);
    let facts_of = |name: &str| {
        let facts = read.iter().find(|(node, _)| node.as_str() == name);
        facts.map(|(_, facts)| facts.clone()).expect("answered")
    };
    assert_eq!(facts_of("busy-1").known, Some((NodeState::Busy, true)));
    assert_eq!(facts_of("idle-1").known, Some((NodeState::Ready, false)));
    assert_eq!(facts_of("enrolled-1").labels_of_record, Some(labels));
    assert_eq!(facts_of("enrolled-1").known, None);
    assert_eq!(facts_of("never-7"), RegistrationFacts::default());
}

async fn two_jobs_assigned_to_one_node_at_once_only_one_applies(store: &Store) {
    add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    add_node(store, "n1").await;
    let (_, first) = start_run(store, "run-1", &plan, &["n1"], 10).await;
    let (_, second) = start_run(store, "run-2", &plan, &["n1"], 11).await;
    // Two schedulers each see the node ready with no active job.
    let mut changes = Vec::new();
    for job in [&first[0].id, &second[0].id] {
        let facts = store.job_facts(job).await.expect("facts").expect("job");
        let change = tollgate_domain::job::decide(
            &facts,
            tollgate_domain::job::JobEvent::Assigned,
            facts.lease_epoch + 1,
        )
        .expect("assignable");
        assert_eq!(
            change.node.as_ref().map(|node| (node.from, node.to)),
            Some((NodeState::Ready, NodeState::Busy))
        );
        changes.push(change);
    }
    let (one, two) = tokio::join!(
        store.apply_job_change(&changes[0], at(20)),
        store.apply_job_change(&changes[1], at(20)),
    );
    exactly_one(&one, &two);
    assert_eq!(store.active_jobs().await.expect("active").len(), 1);
    assert_eq!(node_state(store, "n1").await, NodeState::Busy);
}

/// Two replicas, each holding one node's stream, assign two jobs of one run at once on nodes
/// sharing a label whose `max-concurrent` is 1: the run's lock serializes them and the second
/// finds the first active.
async fn two_replicas_assigning_one_run_keep_its_max_concurrent(store: &Store) {
    add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    add_node(store, "n1").await;
    add_node(store, "n2").await;
    let (_, jobs) = start_run(store, "run-1", &plan, &["n1", "n2"], 10).await;
    let mut changes = Vec::new();
    for job in &jobs {
        let facts = store.job_facts(&job.id).await.expect("facts").expect("job");
        changes.push(
            tollgate_domain::job::decide(
                &facts,
                tollgate_domain::job::JobEvent::Assigned,
                facts.lease_epoch + 1,
            )
            .expect("assignable"),
        );
    }
    let limits: std::collections::BTreeMap<String, u32> = [("sku".to_owned(), 1)].into();
    let labels: Labels = [("sku".to_owned(), "hgx".to_owned())].into();
    let (one, two) = tokio::join!(
        store.assign_job_within(&changes[0], at(20), &limits, &labels),
        store.assign_job_within(&changes[1], at(20), &limits, &labels),
    );
    exactly_one(&one, &two);
    let refused = one.err().or(two.err()).expect("one refused");
    assert!(
        refused.to_string().contains("max-concurrent for sku"),
        "{refused}"
    );
    assert_eq!(store.active_jobs().await.expect("active").len(), 1);
}

async fn promote_is_compare_and_set(store: &Store) {
    let release = add_release(store).await;
    let promotion = |actor: &str| Promotion {
        from_milestone: "lab-qual".into(),
        to_milestone: "customer-acceptance".into(),
        at: at(100),
        decision_digest: format!("digest-{actor}"),
        actor: actor.into(),
    };
    let change = |actor: &str| ReleaseChange {
        from: ReleaseState {
            milestone: "lab-qual".into(),
            halted: None,
        },
        to: ReleaseState {
            milestone: "customer-acceptance".into(),
            halted: None,
        },
        promotion: Some(promotion(actor)),
    };
    let note = |actor: &str| AuditNote::new(at(100), actor, "release.promote", "release/r550");
    // Two promotions decided from the same milestone, applied at once: exactly one applies.
    let (alice, bob) = (change("alice"), change("bob"));
    let (alice_note, bob_note) = (note("alice"), note("bob"));
    let (first, second) = tokio::join!(
        store.change_release(&release.id, &alice, &alice_note),
        store.change_release(&release.id, &bob, &bob_note),
    );
    let (winner, lost) = match (first, second) {
        (Ok(()), Err(lost)) => ("alice", lost),
        (Err(lost), Ok(())) => ("bob", lost),
        other => panic!("exactly one promotion must apply: {other:?}"),
    };
    assert!(
        matches!(&lost, StoreError::Conflict { detail, .. } if detail.contains("found customer-acceptance")),
        "{lost:?}"
    );
    let stored = store
        .get_release(&release.id)
        .await
        .expect("get")
        .expect("some");
    assert_eq!(stored.milestone, "customer-acceptance");
    assert_eq!(stored.promotions, [promotion(winner)]);
    let audited: Vec<String> = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit")
        .into_iter()
        .filter(|entry| entry.action == "release.promote")
        .map(|entry| entry.actor)
        .collect();
    assert_eq!(audited, [winner], "only the applied promotion is audited");
    assert!(matches!(
        store
            .change_release(&ReleaseId::from("nope"), &change("carol"), &note("carol"))
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

/// A batch of registrations, applied together (a statement per hundred), keeps each one's own
/// outcome: new nodes are inserted, a second registration of one of them in the same batch
/// finds it taken, a known node decided from its state and token is updated, one decided
/// from a state it left or from a token another registration replaced is refused and left as
/// it was, one that does not exist is not found; and the registered nodes' heartbeats are the
/// batch's time, the refused ones' untouched.
async fn a_batch_of_registrations_keeps_each_registration_s_own_outcome(store: &Store) {
    for name in ["k1", "k2", "k3", "k4"] {
        add_node(store, name).await;
    }
    let decided = |name: &str, token_hash: &str, registration| {
        let fixture = node(name, "hgx");
        EncodedRegistration::new(
            &fixture.id,
            &fixture.labels,
            &fixture.labels,
            &fixture.inventory,
            token_hash,
            registration,
        )
    };
    let known = |from, stored: &str| Registration::Known {
        from,
        to: NodeState::Ready,
        stored_token_hash: stored.to_owned(),
    };
    let new = || Registration::New(NodeState::Ready);
    let k2_hash = crate::tokens::hash_token("k2-token");
    let mut writes = vec![
        decided("n1", "n1-hash", new()),
        decided("n1", "n1-other-hash", new()),
        decided("k1", "k1-new-hash", new()),
        decided("k2", &k2_hash, known(NodeState::Ready, "token-hash")),
        decided("k3", "k3-new-hash", known(NodeState::Busy, "token-hash")),
        decided(
            "k4",
            "k4-new-hash",
            known(NodeState::Ready, "a-replaced-token-hash"),
        ),
        decided("gone", "gone-hash", known(NodeState::Ready, "token-hash")),
    ];
    // Past one statement's hundred.
    let many: Vec<String> = (0..150).map(|i| format!("m{i:03}")).collect();
    writes.extend(many.iter().map(|name| decided(name, "m-hash", new())));
    let batch: Vec<Write<'_>> = writes
        .iter()
        .map(|registration| Write::Registration(registration, at(30)))
        .collect();
    let outcomes = store.write_batch(&batch).await.expect("the batch commits");
    assert_eq!(
        brief(&outcomes[..7]),
        [
            "Inserted",
            "conflict: node n1: registered by another connection meanwhile",
            "conflict: node k1: registered by another connection meanwhile",
            "Inserted",
            "conflict: node k3: expected state busy, found ready",
            "conflict: node k4: its token was replaced by another registration meanwhile",
            "error: node gone not found",
        ]
    );
    assert_eq!(outcomes.len(), 157);
    assert!(
        outcomes[7..]
            .iter()
            .all(|outcome| matches!(outcome, Ok(Recorded::Inserted))),
        "{outcomes:?}"
    );

    let token = |name: &str| {
        let id = NodeId::from(name);
        async move { store.node_token_hash(&id).await.expect("read") }
    };
    assert_eq!(
        token("n1").await.as_deref(),
        Some("n1-hash"),
        "the first one's"
    );
    assert_eq!(
        token("k1").await.as_deref(),
        Some("token-hash"),
        "untouched"
    );
    assert_eq!(token("k2").await, Some(k2_hash));
    assert_eq!(
        token("k3").await.as_deref(),
        Some("token-hash"),
        "untouched"
    );
    assert_eq!(
        token("k4").await.as_deref(),
        Some("token-hash"),
        "untouched"
    );
    assert_eq!(token("gone").await, None);
    assert_eq!(token("m149").await.as_deref(), Some("m-hash"));
    let seen = |name: &str| {
        let id = NodeId::from(name);
        async move {
            store
                .get_node(&id)
                .await
                .expect("read")
                .expect("a node")
                .last_seen_at
        }
    };
    for name in ["n1", "k2", "m000", "m099", "m100", "m149"] {
        assert_eq!(seen(name).await, Some(at(30)), "{name} registered at 30");
    }
    for name in ["k1", "k3", "k4"] {
        assert_eq!(
            seen(name).await,
            Some(at(0)),
            "{name} refused: seen at 0 still"
        );
    }
    assert_eq!(node_state(store, "n1").await, NodeState::Ready);
    assert_eq!(node_state(store, "m149").await, NodeState::Ready);

    // A token cache that never saw these registrations (a restarted controller) finds a
    // node's token in the store, in one read of every node's token hash.
    assert_eq!(store.node_token_hashes().await.expect("hashes").len(), 155);
    let cache = crate::tokens::TokenCache::default();
    assert_eq!(
        cache.node_of(store, "k2-token").await.expect("read"),
        Some(NodeId::from("k2"))
    );
    assert_eq!(
        cache.node_of(store, "no-such-token").await.expect("read"),
        None
    );
}

async fn concurrent_cordons_apply_once(store: &Store) {
    add_node(store, "n1").await;
    let id = NodeId::from("n1");
    // Two operators decide from `ready`: one cordons, one retires. Exactly one applies.
    let cordon = AuditNote::new(at(1), "alice", "node.cordon", "node/n1");
    let retire = AuditNote::new(at(1), "bob", "node.retire", "node/n1");
    let (first, second) = tokio::join!(
        store.change_node_state(&id, NodeState::Ready, NodeState::Cordoned, None, &cordon),
        store.change_node_state(&id, NodeState::Ready, NodeState::Retired, None, &retire),
    );
    let (expected, lost) = match (first, second) {
        (Ok(()), Err(lost)) => (NodeState::Cordoned, lost),
        (Err(lost), Ok(())) => (NodeState::Retired, lost),
        other => panic!("exactly one change must apply: {other:?}"),
    };
    assert!(
        matches!(&lost, StoreError::Conflict { detail, .. } if detail.contains("expected state ready")),
        "{lost:?}"
    );
    assert_eq!(node_state(store, "n1").await, expected);
    let n_audited = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit")
        .iter()
        .filter(|entry| entry.subject == "node/n1")
        .count();
    assert_eq!(n_audited, 1, "only the applied change is audited");
    // A registration decided from a state the node has left is refused the same way.
    let fixture = node("n1", "hgx");
    let stale = Registration::Known {
        from: NodeState::Ready,
        to: NodeState::Ready,
        stored_token_hash: "token-hash".to_owned(),
    };
    let decided = |registration| {
        EncodedRegistration::new(
            &id,
            &fixture.labels,
            &fixture.labels,
            &fixture.inventory,
            "h",
            registration,
        )
    };
    let refused = store.register_node(&decided(stale), at(2)).await;
    assert!(
        matches!(&refused, Err(StoreError::Conflict { detail, .. }) if detail.contains("expected state ready")),
        "{refused:?}"
    );
    // So is one decided from the node's state but a token another registration replaced.
    let replaced = Registration::Known {
        from: expected,
        to: expected,
        stored_token_hash: "a-replaced-token-hash".to_owned(),
    };
    let refused = store.register_node(&decided(replaced), at(2)).await;
    assert!(
        matches!(&refused, Err(StoreError::Conflict { detail, .. }) if detail.contains("token was replaced")),
        "{refused:?}"
    );
    assert_eq!(
        store.node_token_hash(&id).await.expect("read").as_deref(),
        Some("token-hash"),
        "the token hash is the one stored"
    );
    let twice = Registration::New(NodeState::Ready);
    assert!(matches!(
        store.register_node(&decided(twice), at(2)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(node_state(store, "n1").await, expected, "unchanged");
}

async fn load_evidence_picks_latest_run_per_plan(store: &Store) {
    let release = add_release(store).await;
    let qual = two_step_plan("gpu-qual");
    let burn = two_step_plan("burn-in");
    add_plan(store, &qual).await;
    add_plan(store, &burn).await;
    for name in ["n2", "n1", "n3"] {
        add_node(store, name).await;
    }
    // gpu-qual: an older run, then a newer one that was cancelled: the older one counts.
    let (qual_old, qual_old_jobs) = start_run(store, "run-a", &qual, &["n2", "n1"], 10).await;
    let (qual_new, _) = start_run(store, "run-b", &qual, &["n3"], 20).await;
    store
        .cancel_test_run(&qual_new.id, at(21))
        .await
        .expect("cancel");
    // burn-in: the newer run counts; its created_at is what orders, not insertion.
    let (burn_new, burn_new_jobs) = start_run(store, "run-d", &burn, &["n3"], 15).await;
    let (_burn_old, _) = start_run(store, "run-c", &burn, &["n1"], 5).await;
    // Another milestone's run is never evidence here.
    let other = run_record("run-e", &qual, "production", 30);
    store.create_test_run(&other, &[]).await.expect("other run");

    // Results stored out of order come back by step index, then attempt.
    let n1_job = &qual_old_jobs[1].id;
    assert_eq!(qual_old_jobs[1].node, NodeId::from("n1"));
    let stored = [
        result_of(n1_job, 1, 2, Outcome::Passed),
        result_of(n1_job, 0, 1, Outcome::Passed),
        result_of(n1_job, 1, 1, Outcome::Failed),
    ];
    for result in &stored {
        store
            .record_test_result(result, None, at(40))
            .await
            .expect("record");
    }
    let burn_result = result_of(&burn_new_jobs[0].id, 0, 1, Outcome::Error);
    store
        .record_test_result(&burn_result, None, at(41))
        .await
        .expect("record");

    let evidence = store
        .load_evidence(&release, "lab-qual")
        .await
        .expect("evidence");
    assert_eq!(evidence.release, release);
    assert_eq!(evidence.milestone, "lab-qual");
    let runs: Vec<(&str, &RunId)> = evidence
        .runs
        .iter()
        .map(|run| (run.plan_name.as_str(), &run.run_id))
        .collect();
    assert_eq!(
        runs,
        [("burn-in", &burn_new.id), ("gpu-qual", &qual_old.id)]
    );

    let qual_evidence = &evidence.runs[1];
    assert_eq!(qual_evidence.plan_version, qual.version());
    assert_eq!(qual_evidence.plan_steps, ["stress", "burn"]);
    assert_eq!(qual_evidence.created_at, at(10));
    let nodes: Vec<&str> = qual_evidence
        .jobs
        .iter()
        .map(|job| job.node.as_str())
        .collect();
    assert_eq!(nodes, ["n1", "n2"]);
    let n1 = &qual_evidence.jobs[0];
    assert_eq!(n1.labels, node("n1", "hgx").labels);
    assert_eq!(n1.gpu_source, GpuSourceKind::Simulated);
    assert_eq!(n1.state, JobState::Pending);
    assert_eq!(
        n1.results,
        [stored[1].clone(), stored[2].clone(), stored[0].clone()]
    );
    assert!(qual_evidence.jobs[1].results.is_empty());
    assert_eq!(evidence.runs[0].jobs[0].results, [burn_result]);

    // Cancelling the only run of a plan leaves that plan without evidence.
    store
        .cancel_test_run(&burn_new.id, at(50))
        .await
        .expect("cancel");
    let evidence = store
        .load_evidence(&release, "lab-qual")
        .await
        .expect("evidence");
    let plans: Vec<&str> = evidence
        .runs
        .iter()
        .map(|run| run.plan_name.as_str())
        .collect();
    assert_eq!(
        plans,
        ["burn-in", "gpu-qual"],
        "run-c is now the latest burn-in"
    );
    assert_eq!(evidence.runs[0].run_id, RunId::from("run-c"));
}

/// The digest stored with a result as it arrives is the digest of the result a later load
/// returns (nanoseconds and NULs are normalized before digesting), and a row stored without
/// a digest gets one computed on load.
async fn stored_result_digests_match_what_loads_back(store: &Store) {
    use tollgate_domain::gate::result_digest;
    let OneRun { release, jobs, .. } = one_run(store, "run-a", &["n1"]).await;
    let mut rich = rich_result(&jobs[0].id);
    rich.started_at = at(30) + chrono::Duration::nanoseconds(123_456_789);
    rich.message = "exit\0code 1".into();
    // A mean whose shortest decimal form the fast float parser reads back one unit off.
    rich.measurements.push(Measurement {
        name: "mean".into(),
        value: 1136.0 / 12.0,
        unit: None,
    });
    store
        .record_test_result(&rich, None, at(40))
        .await
        .expect("record");
    let plain = result_of(&jobs[0].id, 0, 1, Outcome::Passed);
    store
        .record_test_result(&plain, None, at(41))
        .await
        .expect("record");
    edit_rows(
        store,
        "UPDATE step_results SET digest = NULL WHERE step_index = 0",
    )
    .await;

    let evidence = store
        .load_evidence(&release, "lab-qual")
        .await
        .expect("evidence");
    let job = &evidence.runs[0].jobs[0];
    assert_eq!(job.results.len(), 2);
    assert_ne!(job.results[1], rich, "the store normalized the result");
    // Each digest is that of the whole stored result, as it loads back in full.
    let stored = store.results_of_job(&jobs[0].id).await.expect("results");
    let recomputed: Vec<[u8; 32]> = stored.iter().map(result_digest).collect();
    assert_eq!(job.result_digests, recomputed);
    // Gates never read series: evidence leaves them out of a result with a stored digest,
    // and keeps them where the gate digests the result itself.
    assert!(!stored[1].series.is_empty(), "the rich result has series");
    assert!(job.results[1].series.is_empty());
    assert_eq!(job.results[0], stored[0], "no stored digest: read whole");
    let mut without_series = stored[1].clone();
    without_series.series.clear();
    assert_eq!(job.results[1], without_series);

    // A result with series stored without a digest is read whole, series included, and so
    // is its digest computed: on a load and on a refresh alike.
    edit_rows(store, "UPDATE step_results SET digest = NULL").await;
    let reloaded = store
        .load_evidence(&release, "lab-qual")
        .await
        .expect("evidence");
    let job = &reloaded.runs[0].jobs[0];
    assert_eq!(job.results, stored, "no stored digest: read whole");
    assert_eq!(job.result_digests, recomputed);
    let mut refreshed = evidence.clone();
    refreshed.runs[0].jobs[0].results.clear();
    refreshed.runs[0].jobs[0].result_digests.clear();
    store
        .refresh_evidence(&release, "lab-qual", &mut refreshed, None)
        .await
        .expect("refresh");
    assert_eq!(refreshed.runs[0].jobs[0].results, stored);
    assert_eq!(refreshed.runs[0].jobs[0].result_digests, recomputed);

    // Loaded for a gate reading only power, each result keeps no other summary (the rich
    // result's GPU reported only temperature, so it keeps no GPU), no series, no log tail and
    // no GPU names in its inventories, on a load and on a refresh alike; its digest is still
    // that of the whole result.
    let policy = tollgate_domain::gate::parse_gate(
        "gate.yaml",
        "milestone: lab-qual\nrules:\n  - telemetry: {field: power_w, aggregate: max, condition: \"< 600\"}\n",
    )
    .expect("gate");
    let reads = tollgate_domain::gate::ResultReads::of(&policy);
    let thinned: Vec<StepResult> = stored
        .iter()
        .map(|result| {
            let mut result = result.clone();
            reads.thin(&mut result);
            result
        })
        .collect();
    assert!(thinned[1].telemetry.is_empty() && thinned[1].series.is_empty());
    assert!(thinned[1].log_tail.is_empty() && !stored[1].log_tail.is_empty());
    assert_eq!(thinned[1].measurements, stored[1].measurements);
    let for_gate = store
        .load_evidence_for(&release, "lab-qual", Some(&reads))
        .await
        .expect("evidence");
    let job = &for_gate.runs[0].jobs[0];
    assert_eq!(job.results, thinned);
    assert_eq!(job.result_digests, recomputed);
    let mut refreshed = for_gate.clone();
    refreshed.runs[0].jobs[0].results.clear();
    refreshed.runs[0].jobs[0].result_digests.clear();
    store
        .refresh_evidence(&release, "lab-qual", &mut refreshed, Some(&reads))
        .await
        .expect("refresh");
    assert_eq!(refreshed, for_gate);
}

/// `refresh_evidence` brings loaded evidence to what a fresh load gives, naming the jobs that
/// changed, and loads everything again when the runs changed.
async fn refreshing_evidence_reads_only_what_changed(store: &Store) {
    let OneRun { release, jobs, .. } = one_run(store, "run-a", &["n1", "n2", "n3"]).await;
    store
        .record_test_result(&result_of(&jobs[0].id, 0, 1, Outcome::Passed), None, at(20))
        .await
        .expect("record");
    let mut cached = store
        .load_evidence(&release, "lab-qual")
        .await
        .expect("evidence");
    assert_eq!(
        store
            .refresh_evidence(&release, "lab-qual", &mut cached, None)
            .await
            .expect("refresh"),
        Refreshed::Changed(Vec::new())
    );

    store
        .record_test_result(&result_of(&jobs[1].id, 0, 1, Outcome::Failed), None, at(21))
        .await
        .expect("record");
    make_running(store, &jobs[2].id).await;
    // Two jobs with new results, read in one statement: each keeps its own.
    store
        .record_test_result(&result_of(&jobs[0].id, 1, 1, Outcome::Passed), None, at(22))
        .await
        .expect("record");
    assert_eq!(
        store
            .refresh_evidence(&release, "lab-qual", &mut cached, None)
            .await
            .expect("refresh"),
        Refreshed::Changed(vec![(0, 0), (0, 1), (0, 2)])
    );
    let fresh = store
        .load_evidence(&release, "lab-qual")
        .await
        .expect("evidence");
    assert_eq!(cached, fresh);

    // Another plan's run: the evidence is loaded whole again.
    let burn = two_step_plan("burn-in");
    add_plan(store, &burn).await;
    start_run(store, "run-b", &burn, &["n1"], 30).await;
    assert_eq!(
        store
            .refresh_evidence(&release, "lab-qual", &mut cached, None)
            .await
            .expect("refresh"),
        Refreshed::Reloaded
    );
    assert_eq!(cached.runs.len(), 2);
    assert_eq!(
        cached,
        store
            .load_evidence(&release, "lab-qual")
            .await
            .expect("evidence")
    );

    // Runs come in plan-name order (burn-in before gpu-qual) while their ids sort the other
    // way: a change is still read as a change, not as a reshaped evidence.
    store
        .record_test_result(&result_of(&jobs[2].id, 0, 1, Outcome::Passed), None, at(40))
        .await
        .expect("record");
    assert_eq!(
        store
            .refresh_evidence(&release, "lab-qual", &mut cached, None)
            .await
            .expect("refresh"),
        Refreshed::Changed(vec![(1, 2)])
    );
}

async fn failing_multi_row_write_leaves_nothing(store: &Store) {
    add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    add_node(store, "n1").await;

    // The second job's node does not exist: neither the run nor the first job is stored.
    let run = run_record("run-1", &plan, "lab-qual", 10);
    let jobs = [
        job_record("job-1", &run, "n1"),
        job_record("job-2", &run, "ghost"),
    ];
    let err = store
        .create_test_run(&run, &jobs)
        .await
        .expect_err("unknown node");
    assert!(
        matches!(&err, StoreError::NotFound { what } if what.contains("ghost")),
        "{err:?}"
    );
    assert_eq!(store.get_run(&run.id).await.expect("run"), None);
    assert_eq!(
        store.get_job(&JobId::from("job-1")).await.expect("job"),
        None
    );

    // Two jobs with one id: the same.
    let twice = [
        job_record("job-1", &run, "n1"),
        job_record("job-1", &run, "n1"),
    ];
    assert!(matches!(
        store.create_test_run(&run, &twice).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(store.get_run(&run.id).await.expect("run"), None);

    // A result whose job transition conflicts is not stored either.
    let (_, jobs) = start_run(store, "run-2", &plan, &["n1"], 20).await;
    let result = result_of(&jobs[0].id, 0, 1, Outcome::Passed);
    let err = store
        .record_test_result(&result, Some((JobState::Running, JobState::Passed)), at(30))
        .await
        .expect_err("job is pending, not running");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(
        store
            .results_of_job(&jobs[0].id)
            .await
            .expect("results")
            .is_empty()
    );
    assert_eq!(job_state(store, &jobs[0].id).await, JobState::Pending);
}

async fn a_run_s_job_marks_show_what_a_watcher_compares(store: &Store) {
    let OneRun {
        plan, run, jobs, ..
    } = one_run(store, "run-1", &["n1", "n2"]).await;
    let (_, other_jobs) = start_run(store, "run-2", &plan, &["n1"], 30).await;
    for step_index in 0..2 {
        store
            .record_test_result(
                &result_of(&jobs[1].id, step_index, 1, Outcome::Passed),
                None,
                at(20),
            )
            .await
            .expect("record");
    }
    store
        .record_test_result(
            &result_of(&other_jobs[0].id, 0, 1, Outcome::Passed),
            None,
            at(31),
        )
        .await
        .expect("record");
    let mut marks = store.job_marks_of_run(&run.id).await.expect("marks");
    marks.sort_by(|a, b| a.node.cmp(&b.node));
    let mark = |job: &JobRecord, n_results| JobMark {
        id: job.id.clone(),
        node: job.node.clone(),
        state: job.state,
        lease_epoch: job.lease_epoch,
        n_results,
    };
    assert_eq!(marks, [mark(&jobs[0], 0), mark(&jobs[1], 2)]);

    let missing = JobId::from("no-such-job");
    let mut read = store
        .jobs_with_ids(&[&jobs[1].id, &missing, &other_jobs[0].id])
        .await
        .expect("jobs");
    read.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expected = Vec::new();
    for job in [&jobs[1].id, &other_jobs[0].id] {
        expected.push(store.get_job(job).await.expect("job").expect("there"));
    }
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(read, expected);
    assert_eq!(store.jobs_with_ids(&[]).await.expect("none"), []);
    assert_eq!(
        store
            .job_marks_of_run(&RunId::from("no-such-run"))
            .await
            .expect("none"),
        []
    );
}

/// The reads answered as JSON in pieces (500 jobs or nodes a piece, 100 jobs for the
/// evidence) on a run of 1,001 nodes: nothing lost or read twice where pieces meet, and the
/// evidence's order kept across its eleven pieces (a refresh finds the changed jobs at their
/// places instead of loading it all again); and the facts of more jobs than one statement reads.
async fn answers_read_in_pieces_are_whole_and_in_order(store: &Store) {
    let names: Vec<String> = (0..1001).map(|i| format!("n{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let release = add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    for name in &names {
        add_node(store, name).await;
    }
    // Job ids in the reverse of their nodes' order, so that no order of ids passes for the
    // evidence's.
    let run = run_record("run-1", &plan, "lab-qual", 10);
    let jobs: Vec<JobRecord> = names
        .iter()
        .enumerate()
        .map(|(index, node)| job_record(&format!("job-{:04}", 1000 - index), &run, node))
        .collect();
    store
        .create_test_run(&run, &jobs)
        .await
        .expect("create run");
    let mut cached = store
        .load_evidence(&release, "lab-qual")
        .await
        .expect("evidence");
    let ended = [0, 499, 500, 777, 1000];
    for (i, index) in ended.iter().enumerate() {
        store
            .record_test_result(
                &result_of(&jobs[*index].id, 0, 1, Outcome::Passed),
                None,
                at(20 + i as i64),
            )
            .await
            .expect("record");
    }
    make_running(store, &jobs[250].id).await;

    let mut marks = store.job_marks_of_run(&run.id).await.expect("marks");
    marks.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expected: Vec<(JobId, usize)> = jobs
        .iter()
        .enumerate()
        .map(|(index, job)| (job.id.clone(), usize::from(ended.contains(&index))))
        .collect();
    expected.sort();
    let read: Vec<(JobId, usize)> = marks
        .iter()
        .map(|mark| (mark.id.clone(), mark.n_results))
        .collect();
    assert_eq!(read, expected);

    let asked: Vec<NodeId> = names.iter().map(|name| NodeId::from(*name)).collect();
    let facts = store.heartbeat_facts(&asked).await.expect("facts");
    let mut read: Vec<&str> = facts.iter().map(|fact| fact.node.as_str()).collect();
    read.sort_unstable();
    let mut expected = names.clone();
    expected.sort_unstable();
    assert_eq!(read, expected);
    let busy: Vec<_> = facts
        .iter()
        .filter_map(|fact| Some((fact.node.as_str(), fact.current_job.clone()?)))
        .collect();
    assert_eq!(busy, [("n250", jobs[250].id.clone())]);

    // The evidence is in node-name order: "n0", "n1", "n10", "n100", "n1000", "n101"…
    let mut in_order = names.clone();
    in_order.sort_unstable();
    let place = |index: usize| {
        in_order
            .iter()
            .position(|name| *name == names[index])
            .expect("a node of the run")
    };
    let mut changed: Vec<(usize, usize)> = ended
        .iter()
        .chain(&[250])
        .map(|index| (0, place(*index)))
        .collect();
    changed.sort_unstable();
    assert_eq!(
        store
            .refresh_evidence(&release, "lab-qual", &mut cached, None)
            .await
            .expect("refresh"),
        Refreshed::Changed(changed)
    );
    assert_eq!(
        cached,
        store
            .load_evidence(&release, "lab-qual")
            .await
            .expect("evidence")
    );
    // The facts of every job (past one statement's thousand) and of one that does not
    // exist, read together, are each job's own.
    let unknown = JobId::from("no-such-job");
    let mut asked: Vec<&JobId> = jobs.iter().map(|job| &job.id).collect();
    asked.insert(500, &unknown);
    let together = store.job_facts_of_jobs(&asked).await.expect("facts");
    assert_eq!(together.len(), 1001);
    assert!(!together.contains_key(&unknown));
    for job in [&jobs[0], &jobs[250], &jobs[999], &jobs[1000]] {
        let alone = store.job_facts(&job.id).await.expect("facts");
        assert_eq!(together.get(&job.id), alone.as_ref(), "{}", job.id);
    }
    // And what their results are decided from (past one statement's five hundred).
    let asked: Vec<JobId> = asked.into_iter().cloned().collect();
    let bases = store.result_bases(&asked).await.expect("bases");
    assert_eq!(bases.len(), 1001);
    let with_results: Vec<&JobId> = bases
        .iter()
        .filter(|(_, (_, results))| !results.is_empty())
        .map(|(job, _)| job)
        .collect();
    let mut expected: Vec<&JobId> = ended.iter().map(|index| &jobs[*index].id).collect();
    expected.sort_unstable();
    let mut with_results = with_results;
    with_results.sort_unstable();
    assert_eq!(with_results, expected);
    for (job, (facts, _)) in &bases {
        assert_eq!(&facts.id, job);
    }
}

/// The one read a result is decided from: the job's facts as `job_facts` reads them, and its
/// results as `result_summaries_of_job` does, in their order; a job with no result yet, and
/// a job that does not exist.
async fn a_result_s_basis_is_its_job_s_facts_and_results(store: &Store) {
    let OneRun { jobs, .. } = one_run(store, "run-1", &["n1", "n2"]).await;
    make_running(store, &jobs[0].id).await;
    let basis = |job: JobId| async move { store.result_basis(&job).await.expect("basis") };
    let facts = |job: JobId| async move { store.job_facts(&job).await.expect("facts") };

    let (read, results) = basis(jobs[0].id.clone()).await.expect("the job");
    assert_eq!(Some(read), facts(jobs[0].id.clone()).await);
    assert_eq!(results, []);

    for (step_index, attempt, second) in [(1, 1, 22), (0, 2, 21), (0, 1, 20)] {
        store
            .record_test_result(
                &result_of(&jobs[0].id, step_index, attempt, Outcome::Failed),
                None,
                at(second),
            )
            .await
            .expect("record");
    }
    store
        .record_test_result(&result_of(&jobs[1].id, 0, 1, Outcome::Passed), None, at(23))
        .await
        .expect("record");
    let (read, results) = basis(jobs[0].id.clone()).await.expect("the job");
    assert_eq!(Some(read), facts(jobs[0].id.clone()).await);
    assert_eq!(
        results,
        store
            .result_summaries_of_job(&jobs[0].id)
            .await
            .expect("summaries")
    );
    let keys: Vec<(u32, u32)> = results.iter().map(|r| (r.step_index, r.attempt)).collect();
    assert_eq!(keys, [(0, 1), (0, 2), (1, 1)]);
    assert!(basis(JobId::from("no-such-job")).await.is_none());

    // Read together: each job's own facts and results, an unknown job left out.
    let mut together = store
        .result_bases(&[
            jobs[1].id.clone(),
            JobId::from("no-such-job"),
            jobs[0].id.clone(),
        ])
        .await
        .expect("bases");
    together.sort_by(|a, b| a.0.cmp(&b.0));
    let mut alone = Vec::new();
    for job in [&jobs[0].id, &jobs[1].id] {
        alone.push((job.clone(), basis(job.clone()).await.expect("the job")));
    }
    alone.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(together, alone);
    assert_eq!(together.iter().map(|(_, (_, r))| r.len()).sum::<usize>(), 4);
}

async fn non_finite_numbers_are_refused(store: &Store) {
    let OneRun { jobs, .. } = one_run(store, "run-1", &["n1"]).await;
    let mut result = result_of(&jobs[0].id, 0, 1, Outcome::Passed);
    result.measurements.push(Measurement {
        name: "membw_gbps".into(),
        value: f64::NAN,
        unit: None,
    });
    let err = store
        .record_test_result(&result, None, at(20))
        .await
        .expect_err("NaN cannot be read back");
    assert!(
        matches!(&err, StoreError::Corrupt { what, .. } if what.contains("measurements")),
        "{err:?}"
    );
    // Where the number that is not finite is the only `null` in its column's text.
    let mut result = result_of(&jobs[0].id, 0, 1, Outcome::Passed);
    result.measurements.push(Measurement {
        name: "membw_gbps".into(),
        value: f64::INFINITY,
        unit: Some("GB/s".into()),
    });
    let err = store
        .record_test_result(&result, None, at(20))
        .await
        .expect_err("infinity cannot be read back");
    assert!(
        matches!(&err, StoreError::Corrupt { what, .. } if what.contains("measurements")),
        "{err:?}"
    );
    let mut result = result_of(&jobs[0].id, 0, 1, Outcome::Passed);
    result.telemetry.push(GpuTelemetry {
        gpu_index: 0,
        gpu_uuid: "GPU-0".into(),
        fields: vec![FieldSummary {
            field: Field::PowerW,
            min: 80.0,
            max: f64::NAN,
            mean: 90.0,
            p99: 95.0,
            last: 85.0,
            samples: 3,
        }],
        samples_missed: 0,
    });
    let err = store
        .record_test_result(&result, None, at(20))
        .await
        .expect_err("NaN cannot be read back");
    assert!(
        matches!(&err, StoreError::Corrupt { what, .. } if what.contains("telemetry")),
        "{err:?}"
    );
    assert!(
        store
            .results_of_job(&jobs[0].id)
            .await
            .expect("results")
            .is_empty()
    );

    // NUL in free text is stored (as U+FFFD) on both backends.
    let mut result = result_of(&jobs[0].id, 0, 1, Outcome::Passed);
    result.log_tail = "before\0after".into();
    store
        .record_test_result(&result, None, at(21))
        .await
        .expect("record");
    let stored = store.results_of_job(&jobs[0].id).await.expect("results");
    assert_eq!(stored[0].log_tail, "before\u{FFFD}after");
}

async fn corrupt_values_name_their_row(store: &Store) {
    add_node(store, "n1").await;
    edit_rows(
        store,
        "UPDATE nodes SET labels = '{not json' WHERE name = 'n1'",
    )
    .await;
    let err = store
        .get_node(&NodeId::from("n1"))
        .await
        .expect_err("corrupt");
    assert!(
        matches!(&err, StoreError::Corrupt { what, .. } if what == "nodes.labels of row 'n1'"),
        "{err:?}"
    );
    edit_rows(
        store,
        "UPDATE nodes SET labels = '{}', state = 'asleep' WHERE name = 'n1'",
    )
    .await;
    let err = store.list_nodes().await.expect_err("corrupt");
    assert!(
        matches!(&err, StoreError::Corrupt { what, detail } if what == "nodes.state of row 'n1'" && detail.contains("asleep")),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Backend-independent checks.

#[test]
fn migration_folders_hold_the_same_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let names = |backend: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root.join(backend))
            .expect("migrations folder")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8 name")
            })
            .collect();
        names.sort();
        names
    };
    let sqlite = names("sqlite");
    assert!(!sqlite.is_empty());
    assert_eq!(sqlite, names("postgres"));
}

#[test]
fn run_states_round_trip_through_text() {
    use tollgate_domain::names::{IntoEnumIterator, names};
    // Stored in `runs.state`: the names never change.
    assert_eq!(names::<RunState>(), ["running", "finished", "cancelled"]);
    for state in RunState::iter() {
        assert_eq!(state.as_str().parse::<RunState>(), Ok(state));
        assert_eq!(state.to_string(), state.as_str());
    }
    let error = "paused".parse::<RunState>().expect_err("not a run state");
    assert!(error.contains("'paused'"), "{error}");
}

#[tokio::test]
async fn unsupported_urls_are_refused_without_their_password() {
    for url in [
        "mysql://root:hunter2@db/tollgate",
        "tollgate.db",
        "sqlite://",
    ] {
        match Store::connect(url).await {
            Err(StoreError::UnsupportedUrl(shown)) => {
                assert!(!shown.contains("hunter2"), "{shown}");
            }
            other => panic!("{url}: expected UnsupportedUrl, got {other:?}"),
        }
    }
    assert_eq!(
        connect::redact("postgres://u:secret@host:5432/db?sslmode=require"),
        "postgres://u:***@host:5432/db?sslmode=require"
    );
    assert_eq!(connect::redact("postgres://host/db"), "postgres://host/db");
}

#[tokio::test]
async fn sqlite_creates_missing_directories_and_memory_works() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("a/b/tollgate.db");
    let store = Store::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect");
    assert_eq!(store.backend(), "sqlite");
    assert!(path.exists());
    store.close().await;
    // Reopening applies no migration twice.
    let store = Store::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("reopen");
    store.close().await;

    let memory = Store::connect("sqlite::memory:").await.expect("memory");
    add_node(&memory, "n1").await;
    assert_eq!(memory.list_nodes().await.expect("list").len(), 1);
}

#[cfg(unix)]
#[tokio::test]
async fn a_new_sqlite_database_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tollgate.db");
    let store = Store::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect");
    // A write, so the write-ahead log and its index exist while the store is open.
    add_node(&store, "n1").await;
    let mut checked = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let file = dir.path().join(format!("tollgate.db{suffix}"));
        let Ok(metadata) = std::fs::metadata(&file) else {
            assert!(!suffix.is_empty(), "the database file is missing");
            continue;
        };
        assert_eq!(
            metadata.permissions().mode() & 0o777,
            0o600,
            "{}",
            file.display()
        );
        checked.push(suffix);
    }
    assert!(checked.contains(&"-wal"), "WAL mode writes a -wal file");
    store.close().await;
}

// Waivers, audit, halts and replay.
mod audit;
mod enrollment;
mod fleet_events;
mod fleet_telemetry;
// The deployment's report signing keys.
mod report_keys;
// The plan of record: milestone targets and customers.
mod targets;
// Issues: opened once per signature, attached, changed by compare-and-set.
mod issues;
// Rollouts: created with their nodes, changed by compare-and-set with their runs and audit.
mod rollouts;
// What rollouts brought their nodes to, for drift.
mod rollout_drift;
// Meeting minutes and the passed decisions of a status report.
mod notes;

/// A health change applies only from the health it was decided from, sets the reason, and
/// writes its audit entry in the same transaction; a refused one writes nothing.
async fn node_health_changes_are_compare_and_set_and_audited(store: &Store) {
    add_node(store, "n1").await;
    set_health(store, "n1", Health::Good, Health::Bad).await;
    let stale = HealthChange {
        from: Health::Good,
        to: Health::Suspect,
        reason: "decided from an old read".into(),
    };
    let note = AuditNote::new(at(41), "test", "node.health", "node/n1");
    let error = store
        .change_node_health(&NodeId::from("n1"), &stale, &note)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Conflict { detail, .. } if detail == "expected health good, found bad"),
        "{error:?}"
    );
    let missing = store
        .change_node_health(&NodeId::from("nope"), &stale, &note)
        .await
        .unwrap_err();
    assert!(
        matches!(missing, StoreError::NotFound { .. }),
        "{missing:?}"
    );
    let stored = store
        .get_node(&NodeId::from("n1"))
        .await
        .expect("get")
        .expect("some");
    assert_eq!(
        (stored.health, stored.health_reason.as_str()),
        (Health::Bad, "set bad by a test")
    );
    let entries = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit");
    let health: Vec<&str> = entries
        .iter()
        .filter(|entry| entry.action == "node.health")
        .map(|entry| entry.subject.as_str())
        .collect();
    assert_eq!(health, ["node/n1"], "one entry, for the applied change");
}

/// The outcomes that decide "repeated errors": the node's latest results across jobs, newest
/// first, skipped ones left out, other nodes' results not counted.
async fn recent_outcomes_are_the_node_s_latest_not_skipped(store: &Store) {
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    add_release(store).await;
    for name in ["n1", "n2"] {
        add_node(store, name).await;
    }
    let (_, first) = start_run(store, "run-1", &plan, &["n1", "n2"], 10).await;
    let (_, second) = start_run(store, "run-2", &plan, &["n1"], 20).await;
    for job in [&first[0].id, &first[1].id, &second[0].id] {
        make_running(store, job).await;
    }
    let record = |job: &JobId, step, attempt, outcome| {
        let result = result_of(job, step, attempt, outcome);
        async move {
            store
                .record_test_result(&result, None, at(50))
                .await
                .expect("record");
        }
    };
    record(&first[0].id, 0, 1, Outcome::Passed).await;
    record(&first[0].id, 1, 1, Outcome::Error).await;
    record(&first[1].id, 0, 1, Outcome::Failed).await;
    record(&first[0].id, 1, 2, Outcome::Skipped).await;
    record(&second[0].id, 0, 1, Outcome::Error).await;
    let n1 = NodeId::from("n1");
    assert_eq!(
        store.recent_outcomes(&n1, 3).await.expect("recent"),
        [Outcome::Error, Outcome::Error, Outcome::Passed]
    );
    assert_eq!(
        store.recent_outcomes(&n1, 1).await.expect("recent"),
        [Outcome::Error]
    );
}

// A database that refuses writes for a while.
mod outage;

/// One leader per deployment: a second replica on the same schema does not lead while the
/// first holds the lock, and takes it once the first lets go; a deployment in another schema
/// of the same database (as every PostgreSQL test is) leads on its own meanwhile.
#[tokio::test]
async fn one_leader_per_deployment_and_deployments_do_not_share_it() {
    let Some(base) = testing::postgres_url_or_skip() else {
        return;
    };
    let url = testing::fresh_postgres_url(&base).await.expect("schema");
    let other_url = testing::fresh_postgres_url(&base).await.expect("schema");
    let first = Store::connect(&url).await.expect("first replica");
    let second = Store::connect(&url).await.expect("second replica");
    let other = Store::connect(&other_url)
        .await
        .expect("another deployment");

    let mut leading = first
        .try_lead()
        .await
        .expect("ask")
        .expect("the first leads");
    assert!(leading.still_held().await);
    assert!(
        second.try_lead().await.expect("ask").is_none(),
        "one leader"
    );
    let mut elsewhere = other
        .try_lead()
        .await
        .expect("ask")
        .expect("another schema has its own leader");
    assert!(elsewhere.still_held().await);

    drop(leading);
    let taken = lead_within_5s(&second).await;
    assert!(taken, "the second replica takes over once the first let go");
    for store in [first, second, other] {
        store.close().await;
    }
    for url in [url, other_url] {
        testing::drop_postgres_schema(&url).await.expect("drop");
    }
}

/// Tries to lead for up to 5 s: the server ends a dropped connection's session (and its
/// lock) a moment after its socket closes.
async fn lead_within_5s(store: &Store) -> bool {
    for _ in 0..50 {
        if store.try_lead().await.expect("ask").is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn maintenance_windows_and_health_checks_are_kept_and_judged_once(store: &Store) {
    use tollgate_domain::health_plan::HealthPlan;
    use tollgate_domain::maintenance::MaintenanceWindow;
    let window = |id: &str, from: i64, to: i64| MaintenanceWindow {
        id: id.into(),
        key: "rack".into(),
        value: "r12".into(),
        starts_at: at(from),
        ends_at: at(to),
        reason: "PDU swap".into(),
        created_by: "ops".into(),
    };
    for (id, from, to) in [("mw-now", 100, 200), ("mw-later", 500, 600)] {
        store
            .create_maintenance_window(&window(id, from, to), at(90), &setup_note())
            .await
            .expect("window");
    }
    let ids = |windows: Vec<MaintenanceWindow>| -> Vec<String> {
        windows.into_iter().map(|w| w.id).collect()
    };
    let listed = store
        .maintenance_windows(at(150), false)
        .await
        .expect("list");
    assert_eq!(listed[0], window("mw-now", 100, 200));
    assert_eq!(ids(listed), ["mw-now", "mw-later"]);
    assert_eq!(
        ids(store
            .maintenance_windows(at(250), false)
            .await
            .expect("list")),
        ["mw-later"]
    );
    // Ended early: over from then; a withdrawn upcoming one is listed only with `all`.
    let now_window = window("mw-now", 100, 200);
    let ended = store
        .end_maintenance_window(&now_window, at(150), &setup_note())
        .await
        .expect("end");
    assert_eq!(ended.ends_at, at(150));
    assert_eq!(
        store.get_maintenance_window("mw-now").await.expect("get"),
        Some(ended)
    );
    store
        .end_maintenance_window(&window("mw-later", 500, 600), at(500), &setup_note())
        .await
        .expect("withdraw");
    assert!(
        store
            .maintenance_windows(at(151), false)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        store
            .maintenance_windows(at(151), true)
            .await
            .expect("list")
            .len(),
        2
    );
    // Decided from an end that moved meanwhile: refused.
    assert!(matches!(
        store
            .end_maintenance_window(&now_window, at(160), &setup_note())
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        store.get_maintenance_window("mw-none").await.expect("get"),
        None
    );

    // A health plan: set, replaced, refused for a release that does not exist.
    let OneRun { release, plan, .. } = one_run(store, "run-1", &["n1"]).await;
    let version = plan.version();
    let mut health_plan = HealthPlan {
        plan_name: plan.name.clone(),
        plan_version: version,
        release: release.id.clone(),
        every_seconds: 3_600,
        set_by: "ops".into(),
        set_at: at(0),
    };
    store
        .set_health_plan(&health_plan, &setup_note())
        .await
        .expect("set");
    health_plan.every_seconds = 7_200;
    store
        .set_health_plan(&health_plan, &setup_note())
        .await
        .expect("set again");
    assert_eq!(
        store.health_plans().await.expect("plans"),
        [health_plan.clone()]
    );
    let unknown = HealthPlan {
        release: ReleaseId::from("r999"),
        ..health_plan.clone()
    };
    assert!(matches!(
        store.set_health_plan(&unknown, &setup_note()).await,
        Err(StoreError::NotFound { .. })
    ));

    // A check: its job is pending as a health check; judged once after its run ended.
    let mut check = run_record("check-1", &plan, "lab-qual", 20);
    check.purpose = RunPurpose::Health;
    let job = job_record("check-1-n1", &check, "n1");
    let note = AuditNote::new(at(20), "health-plan", "health.check", "run/check-1");
    store
        .create_run(&check, std::slice::from_ref(&job), &note)
        .await
        .expect("check");
    assert_eq!(
        store
            .get_run(&check.id)
            .await
            .expect("run")
            .expect("some")
            .purpose,
        RunPurpose::Health
    );
    let pending = store.pending_jobs().await.expect("pending");
    let flags: Vec<(String, bool)> = pending
        .iter()
        .map(|p| (p.job.to_string(), p.health_check))
        .collect();
    assert_eq!(
        flags,
        [
            ("run-1-n1".to_owned(), false),
            ("check-1-n1".to_owned(), true)
        ]
    );
    let last = store.last_health_checks().await.expect("last");
    assert_eq!(
        last.get(&(plan.name.clone(), NodeId::from("n1"))),
        Some(&at(20))
    );
    assert!(store.ended_health_checks().await.expect("ended").is_empty());
    assert_eq!(
        store.open_health_checks().await.expect("open"),
        [(plan.name.clone(), NodeId::from("n1"))]
    );
    make_running(store, &job.id).await;
    let passed = store
        .test_change(&job.id, JobState::Running, JobState::Passed, None)
        .await
        .expect("decided");
    store
        .apply_job_change(&passed, at(60))
        .await
        .expect("passed");
    let ended = store.ended_health_checks().await.expect("ended");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(store.open_health_checks().await.expect("open").is_empty());
    assert_eq!(ended[0].job_state, JobState::Passed);
    assert!(
        store
            .judge_health_check(&check.id, "passed", at(61))
            .await
            .expect("judge")
    );
    assert!(
        !store
            .judge_health_check(&check.id, "failed", at(62))
            .await
            .expect("judge")
    );
    assert!(store.ended_health_checks().await.expect("ended").is_empty());
    let latest = store
        .latest_health_checks(&NodeId::from("n1"))
        .await
        .expect("latest");
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].3.as_deref(), Some("passed"));

    store
        .remove_health_plan(&plan.name, &setup_note())
        .await
        .expect("remove");
    assert!(matches!(
        store.remove_health_plan(&plan.name, &setup_note()).await,
        Err(StoreError::NotFound { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// A run's end, decided after its last job's commit.

impl Store {
    /// Commits `change` as [`Store::apply_job_change`] does and stops there, as a controller
    /// killed (or a database that refused the next write) right after the job's commit
    /// would: the run's end is not decided.
    async fn end_job_then_stop(
        &self,
        change: &tollgate_domain::job::JobChange,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let _ = apply_job_change!(tx, change, now);
            tx.commit().await?;
            Ok(())
        })
    }
}

async fn a_run_left_running_after_its_last_job_ended_is_ended_once(store: &Store) {
    let OneRun { run, jobs, .. } = one_run(store, "run-1", &["n1", "n2"]).await;
    for job in &jobs {
        make_running(store, &job.id).await;
    }
    store
        .move_job(&jobs[0].id, JobState::Running, JobState::Passed, 1, at(40))
        .await
        .expect("first job ends");
    let last = store
        .test_change(&jobs[1].id, JobState::Running, JobState::Failed, Some(1))
        .await
        .expect("decided");
    store
        .end_job_then_stop(&last, at(50))
        .await
        .expect("last job ends");
    let stored = store.get_run(&run.id).await.expect("run").expect("some");
    assert_eq!(
        stored.state,
        RunState::Running,
        "the stop left the run's end undecided"
    );

    // What the lease watchdog's leader does each tick, and at its first after a restart.
    let ended = store.end_runs_left_running(at(60)).await.expect("repair");
    assert_eq!(ended, std::slice::from_ref(&run.id));
    let stored = store.get_run(&run.id).await.expect("run").expect("some");
    assert_eq!(
        (stored.state, stored.finished_at),
        (RunState::Finished, Some(at(60)))
    );
    assert!(
        store
            .end_runs_left_running(at(70))
            .await
            .expect("again")
            .is_empty()
    );
    let stored = store.get_run(&run.id).await.expect("run").expect("some");
    assert_eq!(stored.finished_at, Some(at(60)), "ended once");

    // A running run with open jobs, and a run without jobs, are left alone.
    let plan = two_step_plan("gpu-qual");
    let (open, open_jobs) = start_run(store, "run-2", &plan, &["n1"], 80).await;
    make_running(store, &open_jobs[0].id).await;
    assert!(
        store
            .end_runs_left_running(at(90))
            .await
            .expect("none")
            .is_empty()
    );
    let stored = store.get_run(&open.id).await.expect("run").expect("some");
    assert_eq!(stored.state, RunState::Running);
}

async fn the_last_two_jobs_ending_at_once_end_the_run_once(store: &Store) {
    let OneRun { run, jobs, .. } = one_run(store, "run-1", &["n1", "n2"]).await;
    for job in &jobs {
        make_running(store, &job.id).await;
    }
    // Both ends committed before either decided the run's end: each of their deciders then
    // sees no open job, and both race for the run.
    for job in &jobs {
        let change = store
            .test_change(&job.id, JobState::Running, JobState::Passed, Some(1))
            .await
            .expect("decided");
        store
            .end_job_then_stop(&change, at(50))
            .await
            .expect("ends");
    }
    let deciders = (0..2).map(|idx| {
        let store = store.clone();
        let runs = std::collections::BTreeSet::from([run.id.clone()]);
        tokio::spawn(async move { store.end_runs_if_done(&runs, at(60 + idx)).await })
    });
    let ended: Vec<RunId> = futures::future::join_all(deciders)
        .await
        .into_iter()
        .flat_map(|decider| decider.expect("task"))
        .collect();
    assert_eq!(
        ended,
        std::slice::from_ref(&run.id),
        "exactly one decider ends the run"
    );
    let stored = store.get_run(&run.id).await.expect("run").expect("some");
    assert_eq!(stored.state, RunState::Finished);
    assert!(matches!(stored.finished_at, Some(at_) if at_ == at(60) || at_ == at(61)));
}

async fn a_late_duplicate_result_leaves_the_ended_run_as_it_was(store: &Store) {
    let OneRun { run, jobs, .. } = one_run(store, "run-1", &["n1"]).await;
    make_running(store, &jobs[0].id).await;
    let result = result_of(&jobs[0].id, 1, 1, Outcome::Passed);
    let recorded = store
        .record_test_result(&result, Some((JobState::Running, JobState::Passed)), at(60))
        .await
        .expect("record");
    assert_eq!(recorded, Recorded::Inserted);
    let stored = store.get_run(&run.id).await.expect("run").expect("some");
    assert_eq!(
        (stored.state, stored.finished_at),
        (RunState::Finished, Some(at(60)))
    );

    // The agent sends it again after the run ended (its ack was lost).
    let again = store
        .record_test_result(&result, None, at(90))
        .await
        .expect("record again");
    assert_eq!(again, Recorded::Duplicate);
    let stored = store.get_run(&run.id).await.expect("run").expect("some");
    assert_eq!(
        (stored.state, stored.finished_at),
        (RunState::Finished, Some(at(60)))
    );
    assert_eq!(
        store
            .results_of_job(&jobs[0].id)
            .await
            .expect("results")
            .len(),
        1
    );
    assert!(
        store
            .end_runs_left_running(at(95))
            .await
            .expect("repair")
            .is_empty()
    );
}

/// `decode_in_chunks` decodes every row once, in order, whether the rows fill no chunk, part
/// of one, exactly one or several, and stops at the first row that does not decode.
#[tokio::test]
async fn rows_are_decoded_in_chunks_each_once_in_order() {
    for n in [
        0,
        1,
        DECODE_CHUNK - 1,
        DECODE_CHUNK,
        DECODE_CHUNK + 1,
        3 * DECODE_CHUNK + 7,
    ] {
        let rows = futures::stream::iter((0..n).map(Ok::<usize, sqlx::Error>));
        let mut seen = Vec::new();
        decode_in_chunks(rows, |row| Ok(*row * 2), |decoded| seen.push(decoded))
            .await
            .expect("decoded");
        let expected: Vec<usize> = (0..n).map(|row| row * 2).collect();
        assert_eq!(seen, expected, "{n} rows");
    }
    let rows = futures::stream::iter((0..300).map(Ok::<usize, sqlx::Error>));
    let mut seen = Vec::new();
    let error = decode_in_chunks(
        rows,
        |row| {
            if *row == 200 {
                Err(StoreError::Corrupt {
                    what: "row 200".into(),
                    detail: "not a number".into(),
                })
            } else {
                Ok(*row)
            }
        },
        |decoded| seen.push(decoded),
    )
    .await
    .expect_err("row 200 does not decode");
    assert!(error.to_string().contains("row 200"), "{error}");
    assert_eq!(seen, (0..200).collect::<Vec<_>>());
    // A stream that fails mid-way fails the read.
    let rows = futures::stream::iter(
        (0..DECODE_CHUNK + 5)
            .map(Ok::<usize, sqlx::Error>)
            .chain([Err(sqlx::Error::RowNotFound)]),
    );
    decode_in_chunks(rows, |row| Ok(*row), |_| {})
        .await
        .expect_err("the stream's error is the read's");
}
