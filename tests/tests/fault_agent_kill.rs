//! Fault: the agent running a job is killed with `kill -9` ten times during one run, each time
//! at a seeded point inside a seeded step, and started again on the same state directory. The
//! run ends exactly as the plan's `retries` and `reschedule` say it must, given where the
//! kills landed: every interrupted attempt is stored once as an `error` (reported by the
//! restarted agent), the job is assigned again under the next lease epoch and runs from its
//! first step, the attempts that did not pass count against a step's retries over every
//! epoch, and a job whose step used them all ends `error` and is rescheduled to the next node
//! while the plan's attempts last, and never beyond. The expected jobs and results are derived from those rules
//! ([`expected_jobs`]) and compared whole with the stored ones, through the API and in the
//! database: nothing missing, nothing duplicated, nothing invented. The spools end empty and no
//! step process outlives its agent's restart. On SQLite and on PostgreSQL (the latter when
//! `TOLLGATE_TEST_DATABASE_URL` is set; otherwise it says it was skipped).
//!
//! The seed is printed; `TOLLGATE_KILL_SEED=N` replays a run. Runs the `tollgate-controller`
//! and `tollgate-agent` binaries (`cargo build --workspace --bins` first).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tollgate_controller::store::testing;
use tollgate_proto::v1;
use tollgate_tests::process::{ControllerProcess, group_members, live_processes_with};
use tollgate_tests::{
    Backend, Clients, assert_spool_empty, fresh_database_url, spooled_results, wait_for,
};

tollgate_tests::on_both_backends!(
    ten_kills_within_the_retries_end_in_a_pass_on_the_last_allowed_attempts,
    ten_kills_past_the_retries_reschedule_the_job_once_and_no_more,
);

/// How many times an agent is killed during the run.
const KILLS: usize = 10;
/// Steps of the plan: `s0`, `s1`, `s2`.
const STEPS: usize = 3;
/// How long each step's process runs; longer than the longest pause before a kill, so that
/// every kill lands inside the step it aims at.
const STEP: Duration = Duration::from_millis(1200);
/// The pause between a step's process starting and the kill: 0..PAUSE_SPREAD ms.
const PAUSE_SPREAD: u64 = 600;
/// How long the test waits for any one state.
const PATIENCE: Duration = Duration::from_secs(30);
/// The nodes, in the order the scheduler picks them (by name, among ready ones).
const NODES: [&str; 3] = ["lab-1", "lab-2", "lab-3"];

/// SplitMix64: a replayable sequence from one printed seed.
struct Seeded(u64);

impl Seeded {
    /// The seed from `TOLLGATE_KILL_SEED`, or this process's id; printed either way.
    fn from_env(test: &str) -> Self {
        let seed = std::env::var("TOLLGATE_KILL_SEED")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| u64::from(std::process::id()));
        println!("{test}: kill seed {seed} (replay with TOLLGATE_KILL_SEED={seed})");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `items` in a seeded order (Fisher-Yates).
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = usize::try_from(self.below(i as u64 + 1)).expect("an index");
            items.swap(i, j);
        }
    }
}

/// One kill: the step it lands in, and how long after that step's process started.
#[derive(Clone, Copy, Debug)]
struct Kill {
    step: usize,
    pause: Duration,
}

/// The plan: `STEPS` exec steps, each a shell running for [`STEP`] whose command line carries
/// `<marker>-s<i>`, with the given retries, and the given job-level reschedule attempts.
fn plan(marker: &str, retries: &[u32; STEPS], reschedule: u32) -> String {
    let mut yaml = format!(
        "name: gpu-qual\nselector: {{sku: hgx-h100}}\nnodes: 1\nreschedule: {{attempts: {reschedule}}}\nsteps:\n"
    );
    for (i, retries) in retries.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{name: s{i}, kind: exec, command: [sh, -c, \"sleep {}; echo done\", \"{marker}-s{i}\"], timeout: 1m, retries: {retries}}}\n",
            STEP.as_secs_f64()
        ));
    }
    yaml
}

/// A job as the test compares it: its node, job attempt, end state, last lease epoch, and
/// its results as (step, lease epoch, attempt, outcome), sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
struct JobSeen {
    node: String,
    attempt: u32,
    state: String,
    lease_epoch: u64,
    results: Vec<(String, u64, u32, v1::Outcome)>,
}

impl JobSeen {
    fn of(job: &v1::Job) -> Self {
        let mut results: Vec<_> = job
            .results
            .iter()
            .map(|r| {
                (
                    r.step_name.clone(),
                    r.lease_epoch,
                    r.attempt,
                    tollgate_tests::outcome(r.outcome),
                )
            })
            .collect();
        results.sort_by(|a, b| (a.1, &a.0, a.2).cmp(&(b.1, &b.0, b.2)));
        Self {
            node: job.node.clone(),
            attempt: job.attempt,
            state: job.state.clone(),
            lease_epoch: job.lease_epoch,
            results,
        }
    }
}

/// Where each kill lands, as the rules place it: the job (index into the run's jobs by
/// attempt), the lease epoch the job runs under then, and whether the kill ends the job.
#[derive(Clone, Copy, Debug)]
struct KillAt {
    job_idx: usize,
    lease_epoch: u64,
    ends_job: bool,
}

/// The jobs a run must end with when a job's agent is killed at `kills`, derived from the
/// rules, and where each kill lands:
///
/// - a kill inside a step interrupts that step's attempt: the restarted agent reports it as
///   an `error` result under the attempt's lease epoch, every step before it having passed in
///   that epoch;
/// - the job is then assigned again under the next lease epoch and runs from its first step,
///   numbering attempts from 1 again;
/// - a step may have `retries + 1` attempts that did not pass, counted over every epoch (a
///   rerun of a step that had passed, because a later step was interrupted, is not one of
///   them): the interrupted attempt past that is the step's final result, and the job ends
///   `error` without the steps after it;
/// - a job that ends `error` is started again as a new job (job attempt + 1, lease epoch 1)
///   on the next node by name that it has not run on, while its attempt is at most the plan's
///   `reschedule` attempts, and never beyond;
/// - a job whose kills are over runs every step once more, passing.
fn expected_jobs(
    retries: &[u32; STEPS],
    reschedule: u32,
    kills: &[Kill],
) -> (Vec<JobSeen>, Vec<KillAt>) {
    let passed = |step: usize, epoch: u64| (format!("s{step}"), epoch, 1, v1::Outcome::Passed);
    let new_job = |idx: usize| JobSeen {
        node: NODES[idx].to_owned(),
        attempt: u32::try_from(idx + 1).expect("few jobs"),
        state: "running".to_owned(),
        lease_epoch: 1,
        results: Vec::new(),
    };
    let mut jobs = vec![new_job(0)];
    let mut used = [0u32; STEPS];
    let mut at = Vec::new();
    for kill in kills {
        let job_idx = jobs.len() - 1;
        let job = jobs.last_mut().expect("a job");
        assert_eq!(
            job.state, "running",
            "a kill after the run ended: {kills:?}"
        );
        let epoch = job.lease_epoch;
        job.results
            .extend((0..kill.step).map(|step| passed(step, epoch)));
        job.results
            .push((format!("s{}", kill.step), epoch, 1, v1::Outcome::Error));
        used[kill.step] += 1;
        let ends_job = used[kill.step] > retries[kill.step];
        at.push(KillAt {
            job_idx,
            lease_epoch: epoch,
            ends_job,
        });
        if !ends_job {
            job.lease_epoch += 1;
            continue;
        }
        job.state = "error".to_owned();
        if job.attempt <= reschedule && job_idx + 1 < NODES.len() {
            jobs.push(new_job(job_idx + 1));
            used = [0; STEPS];
        }
    }
    if let Some(job) = jobs.last_mut().filter(|job| job.state == "running") {
        let epoch = job.lease_epoch;
        job.results
            .extend((0..STEPS).map(|step| passed(step, epoch)));
        job.state = "passed".to_owned();
    }
    for job in &mut jobs {
        job.results
            .sort_by(|a, b| (a.1, &a.0, a.2).cmp(&(b.1, &b.0, b.2)));
    }
    (jobs, at)
}

/// The message of the `error` result the restarted agent reports for an attempt it was
/// killed in.
fn interrupted_message(step: &str) -> String {
    format!("interrupted: the agent restarted during step {step} (attempt 1)")
}

/// One agent process of the test: its node, state directory, and the process while it runs.
struct AgentProcess {
    node: String,
    state_dir: PathBuf,
    log_dir: PathBuf,
    controller_url: String,
    n_starts: u32,
    child: Option<Child>,
}

impl AgentProcess {
    fn start(controller_url: &str, node: &str, dir: &Path) -> Self {
        let mut agent = Self {
            node: node.to_owned(),
            state_dir: dir.join(format!("agent-{node}")),
            log_dir: dir.to_owned(),
            controller_url: controller_url.to_owned(),
            n_starts: 0,
            child: None,
        };
        agent.spawn();
        agent
    }

    /// Starts the agent binary on its state directory (again, after a kill).
    fn spawn(&mut self) {
        self.n_starts += 1;
        let log = std::fs::File::create(
            self.log_dir
                .join(format!("{}-{}.log", self.node, self.n_starts)),
        )
        .expect("agent log file");
        let child = Command::new(tollgate_tests::process::workspace_binary("tollgate-agent"))
            .args(["--controller", &self.controller_url, "--node", &self.node])
            .args(["--gpus", "sim:1", "--label", "sku=hgx-h100"])
            .args(["--sample-interval", "100ms", "--fleet-interval", "0s"])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .env("RUST_LOG", "info,tollgate_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start tollgate-agent");
        self.child = Some(child);
    }

    /// `kill -9`, and waits until it is gone.
    async fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("SIGKILL the agent");
            child.wait().await.expect("reap the agent");
        }
    }
}

/// One test's world: a directory, a database, the controller process and the agents.
struct World {
    dir: tempfile::TempDir,
    backend: Backend,
    controller: ControllerProcess,
    agents: Vec<AgentProcess>,
    marker: String,
}

impl World {
    /// Starts the controller and agents for the first `n_agents` of [`NODES`]; `None` (the
    /// test says it was skipped) for PostgreSQL when no database is configured.
    async fn start(backend: Backend, n_agents: usize) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let database_url = fresh_database_url(backend, dir.path()).await?;
        // Far longer than a restarted agent takes to come back: no kill is read as the
        // node dying, so no job is `lost`.
        let controller = ControllerProcess::start(
            &database_url,
            &dir.path().join("controller"),
            &dir.path().join("controller.log"),
            Duration::from_secs(20),
        )
        .await;
        let agents = NODES[..n_agents]
            .iter()
            .map(|node| AgentProcess::start(&controller.url, node, dir.path()))
            .collect();
        let marker = format!("tollgate-agent-kill-{}", uuid::Uuid::new_v4().simple());
        Some(Self {
            dir,
            backend,
            controller,
            agents,
            marker,
        })
    }

    async fn clients(&self) -> Clients {
        Clients::new(self.controller.channel().await.expect("connect"))
    }

    /// The last lines of every log, for a failing assertion's message.
    fn logs(&self) -> String {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
            .collect();
        paths.sort();
        let mut out = String::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|line| !line.contains("heartbeat") && !line.contains("telemetry"))
                .collect();
            out.push_str(&format!(
                "\n--- {}\n{}",
                path.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            ));
        }
        out
    }

    /// Kills the agent running the run's jobs at each of `kills`, where `at` (from
    /// [`expected_jobs`]) says the job and lease epoch will be: waits until that job runs
    /// under that epoch and the kill's step process runs, pauses, kills the agent (the step's
    /// processes outlive it: the kill landed inside the step) and starts it again on the same
    /// state directory, which kills what is left of the step.
    async fn kill_agents(&mut self, run_id: &str, kills: &[Kill], at: &[KillAt]) {
        for (n, (kill, at)) in kills.iter().zip(at).enumerate() {
            let step_marker = format!("{}-s{}", self.marker, kill.step);
            let clients = self.clients().await;
            let what = format!(
                "kill {}: job attempt {} running under lease epoch {}, in step s{}",
                n + 1,
                at.job_idx + 1,
                at.lease_epoch,
                kill.step
            );
            let deadline = tokio::time::Instant::now() + PATIENCE;
            let (node, pid, pgid) = loop {
                let run = clients.clone().run(run_id).await;
                let job = run
                    .jobs
                    .iter()
                    .find(|job| job.attempt as usize == at.job_idx + 1);
                if let Some(job) = job
                    && job.state == "running"
                    && job.lease_epoch == at.lease_epoch
                    && let Some((pid, pgid)) = live_processes_with(&step_marker).into_iter().next()
                {
                    break (job.node.clone(), pid, pgid);
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "timed out waiting for {what}; the run: {:#?}{}",
                    run.jobs.iter().map(JobSeen::of).collect::<Vec<_>>(),
                    self.logs()
                );
                // 40 reads a second: under the controller's default rate limit of 50.
                tokio::time::sleep(Duration::from_millis(25)).await;
            };
            tokio::time::sleep(kill.pause).await;
            let agent = self
                .agents
                .iter_mut()
                .find(|agent| agent.node == node)
                .expect("the job's node has an agent");
            agent.kill_9().await;
            assert!(
                !group_members(pgid).is_empty(),
                "kill {}: the step process {pid} of s{} ended before the agent was killed; the \
                 kill did not land inside the step{}",
                n + 1,
                kill.step,
                self.logs()
            );
            agent.spawn();
            println!(
                "kill -9 number {} of the agent of {node}: in step s{} of job attempt {} under \
                 lease epoch {}, {} ms into the step{}",
                n + 1,
                kill.step,
                at.job_idx + 1,
                at.lease_epoch,
                kill.pause.as_millis(),
                if at.ends_job { "; ends the job" } else { "" }
            );
            // The restarted agent kills what its predecessor left running, before it connects.
            wait_for(
                PATIENCE,
                "the killed step's processes to be gone",
                || async { group_members(pgid).is_empty().then_some(()) },
            )
            .await;
        }
    }

    /// Waits until the run ends, then checks everything the rules say about it: the jobs and
    /// their results as `expected`, every interrupted attempt reported by the restarted agent,
    /// the same results in the database once each, empty spools, no step process left.
    async fn check_end(&mut self, run_id: &str, expected: &[JobSeen]) {
        let mut clients = self.clients().await;
        let run = tokio::time::timeout(PATIENCE * 2, clients.wait_run_done(run_id))
            .await
            .unwrap_or_else(|_| panic!("the run did not end; logs:{}", self.logs()));
        assert_eq!(run.state, "finished", "{run:#?}{}", self.logs());
        let mut jobs = run.jobs.clone();
        jobs.sort_by_key(|job| job.attempt);
        let seen: Vec<JobSeen> = jobs.iter().map(JobSeen::of).collect();
        assert_eq!(
            seen,
            expected,
            "the jobs and results the plan's retries and reschedule call for{}",
            self.logs()
        );
        for (job, previous) in jobs.iter().skip(1).zip(&jobs) {
            assert_eq!(job.rescheduled_from, previous.id, "{job:#?}");
        }
        for job in &jobs {
            for result in &job.results {
                if tollgate_tests::outcome(result.outcome) == v1::Outcome::Error {
                    assert!(
                        result
                            .message
                            .starts_with(&interrupted_message(&result.step_name)),
                        "an interrupted attempt, reported by the restarted agent: {result:#?}"
                    );
                }
            }
        }
        let mut shown: Vec<(String, i64, i64, i64)> = jobs
            .iter()
            .flat_map(|job| {
                job.results.iter().map(|r| {
                    (
                        job.id.clone(),
                        i64::from(r.step_index),
                        i64::from(r.attempt),
                        i64::try_from(r.lease_epoch).expect("a small epoch"),
                    )
                })
            })
            .collect();
        shown.sort();
        let stored = stored_result_keys(&self.controller.database_url, self.backend).await;
        let mut unique = stored.clone();
        unique.dedup();
        assert_eq!(unique, stored, "no result stored twice");
        assert_eq!(
            stored, shown,
            "the database holds exactly the results the run shows"
        );
        for agent in &self.agents {
            let spool = agent.state_dir.join("spool");
            wait_for(PATIENCE, "the spools to empty", || {
                let spool = spool.clone();
                async move { (spooled_results(&spool) == 0).then_some(()) }
            })
            .await;
            assert_spool_empty(&agent.state_dir, &agent.node);
        }
        assert_eq!(
            live_processes_with(&self.marker),
            Vec::new(),
            "no step process left"
        );
    }

    /// Stops the agents and the controller, and drops the PostgreSQL schema.
    async fn finish(mut self) {
        for agent in &mut self.agents {
            agent.kill_9().await;
        }
        assert_eq!(
            live_processes_with(&self.marker),
            Vec::new(),
            "no step process outlives the agents"
        );
        self.controller.stop().await;
        if self.backend == Backend::Postgres {
            testing::drop_postgres_schema(&self.controller.database_url)
                .await
                .expect("drop test schema");
        }
    }
}

/// Every stored result's (job, step, attempt, lease epoch), sorted, read from the database.
async fn stored_result_keys(database_url: &str, backend: Backend) -> Vec<(String, i64, i64, i64)> {
    const KEYS: &str = "SELECT job_id, CAST(step_index AS BIGINT), CAST(attempt AS BIGINT), \
                        CAST(lease_epoch AS BIGINT) FROM step_results";
    let mut keys: Vec<(String, i64, i64, i64)> = match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(database_url)
                .await
                .expect("open the database");
            let keys = sqlx::query_as(KEYS)
                .fetch_all(&pool)
                .await
                .expect("read results");
            pool.close().await;
            keys
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(database_url)
                .await
                .expect("open the database");
            let keys = sqlx::query_as(KEYS)
                .fetch_all(&pool)
                .await
                .expect("read results");
            pool.close().await;
            keys
        }
    };
    keys.sort();
    keys
}

/// Ten kills in seeded steps, with each step allowed exactly as many retries as kills land
/// in it: every step's last allowed attempt is the one that passes, the job passes under
/// lease epoch 11, and no reschedule happens although the plan allows one.
async fn ten_kills_within_the_retries_end_in_a_pass_on_the_last_allowed_attempts(backend: Backend) {
    let mut seeded = Seeded::from_env("within the retries");
    let kills: Vec<Kill> = (0..KILLS)
        .map(|_| Kill {
            step: usize::try_from(seeded.below(STEPS as u64)).expect("a step"),
            pause: Duration::from_millis(seeded.below(PAUSE_SPREAD)),
        })
        .collect();
    let mut retries = [0u32; STEPS];
    for kill in &kills {
        retries[kill.step] += 1;
    }
    let (expected, at) = expected_jobs(&retries, 1, &kills);
    assert_eq!(expected.len(), 1, "no kill ends the job: {expected:#?}");
    assert_eq!(expected[0].lease_epoch, KILLS as u64 + 1);

    let Some(mut world) = World::start(backend, 2).await else {
        return;
    };
    let mut clients = world.clients().await;
    let run = clients
        .start_qualification("r550", 2, &plan(&world.marker, &retries, 1))
        .await;
    world.kill_agents(&run.id, &kills, &at).await;
    world.check_end(&run.id, &expected).await;
    world.finish().await;
}

/// Ten kills on a plan that allows one reschedule: on the first node the kills use up one
/// step's attempts (`retries: 2`, three kills in it), so the job ends `error` and is started
/// again on the second node, where the remaining kills use them up again; the third node,
/// ready and eligible, gets nothing: two jobs, both `error`.
async fn ten_kills_past_the_retries_reschedule_the_job_once_and_no_more(backend: Backend) {
    let mut seeded = Seeded::from_env("past the retries");
    // Not the last step: a job whose agent restarted after such a step's final attempt is
    // ended by the controller, the agent never reporting the steps after it skipped.
    let exhausted = usize::try_from(seeded.below(STEPS as u64 - 1)).expect("a step");
    let others: Vec<usize> = (0..STEPS).filter(|step| *step != exhausted).collect();
    let mut retries = [4u32; STEPS];
    retries[exhausted] = 2;
    // Per job: three kills in the exhausted step, the last of them last, and two in the
    // other steps (within their retries), in a seeded order.
    let mut kills = Vec::new();
    for _job in 0..2 {
        let mut steps = vec![exhausted, exhausted];
        steps.extend((0..2).map(|_| others[usize::from(seeded.below(2) == 1)]));
        seeded.shuffle(&mut steps);
        steps.push(exhausted);
        kills.extend(steps.into_iter().map(|step| Kill {
            step,
            pause: Duration::from_millis(seeded.below(PAUSE_SPREAD)),
        }));
    }
    assert_eq!(kills.len(), KILLS);
    let (expected, at) = expected_jobs(&retries, 1, &kills);
    assert_eq!(expected.len(), 2, "one reschedule: {expected:#?}");
    assert!(expected.iter().all(|job| job.state == "error"));

    let Some(mut world) = World::start(backend, 3).await else {
        return;
    };
    let mut clients = world.clients().await;
    let run = clients
        .start_qualification("r550", 3, &plan(&world.marker, &retries, 1))
        .await;
    world.kill_agents(&run.id, &kills, &at).await;
    world.check_end(&run.id, &expected).await;
    world.finish().await;
}
