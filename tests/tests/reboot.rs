//! End to end for a flash that needs a reboot: the installer stages the new VBIOS and exits 194,
//! the agent records where the job was and stops (the node reboots), the simulated GPUs come
//! back reporting what the reboot activated, and a new agent on the same state directory checks
//! the flash and continues the job from the step after it: every result exactly once, no step
//! run twice, the job never reassigned. Then the failure paths: the version did not change
//! (the flash fails saying what was found), and the controller declared the job lost while the
//! node was down (the flash result is refused and the job is not continued).

use std::path::{Path, PathBuf};
use std::time::Duration;
use tollgate_proto::v1;
use tollgate_tests::{
    Agent, Backend, Clients, Controller, ControllerOptions, on_both_backends, results_seen,
    wait_for,
};

on_both_backends!(
    a_flash_needing_a_reboot_continues_the_job_after_it,
    a_flash_whose_version_did_not_change_across_the_reboot_fails,
);

const OLD_VBIOS: &str = "96.00.74.00.01";
const NEW_VBIOS: &str = "96.00.89.00.01";

/// The installer stages the new VBIOS in `<dir>/<node>.staged` and asks for a reboot; the
/// steps around it count their runs in `<dir>/<node>.<step>`.
fn plan(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"name: flash-qual
selector: {{sku: hgx-h100}}
steps:
  - name: before
    kind: exec
    command: [sh, -c, "echo ran >> {dir}/$TOLLGATE_NODE.before"]
    timeout: 30s
  - name: vbios
    kind: flash
    command: [sh, -c, "echo vbios={NEW_VBIOS} > {dir}/$TOLLGATE_NODE.staged; exit 194"]
    component: vbios
    version: {NEW_VBIOS}
    timeout: 30s
  - name: after
    kind: exec
    command: [sh, -c, "echo ran >> {dir}/$TOLLGATE_NODE.after"]
    timeout: 30s
"#
    )
}

struct Lab {
    controller: Controller,
    clients: Clients,
    agent: Agent,
    dir: tempfile::TempDir,
}

impl Lab {
    /// A controller, one agent `lab-1` on the old VBIOS whose simulated GPUs report the
    /// versions in `<dir>/lab-1.versions` once that file exists, and the plan.
    async fn start(options: ControllerOptions) -> Option<Self> {
        let Some(controller) = Controller::start(options).await else {
            eprintln!("skipped: no PostgreSQL configured (TOLLGATE_TEST_DATABASE_URL)");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let versions = format!(
            "versions-file={}",
            dir.path().join("lab-1.versions").display()
        );
        let old = format!("vbios={OLD_VBIOS}");
        let agent = Agent::start(&controller.url, "lab-1", 2, &[&old, &versions]);
        let mut clients = controller.clients().await;
        clients.wait_ready_nodes(1).await;
        clients.create_release("r550").await;
        clients.apply_plan(&plan(dir.path())).await;
        Some(Self {
            controller,
            clients,
            agent,
            dir,
        })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// How many times a step counting its runs ran.
    fn runs_of(&self, step: &str) -> usize {
        std::fs::read_to_string(self.file(&format!("lab-1.{step}")))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    async fn job(&mut self, run_id: &str) -> v1::Job {
        let run = self.clients.run(run_id).await;
        run.jobs.into_iter().next().expect("one job")
    }

    /// Starts the run and waits until the flash wrote its resume record; returns the run id
    /// and the job's lease epoch at that moment.
    async fn run_until_the_flash_waits_for_a_reboot(&mut self) -> (String, u64) {
        // A freshly restarted agent may not have its stream open yet: retry until it has.
        let clients = self.clients.clone();
        let run = wait_for(Duration::from_secs(30), "the run to start", || {
            let mut runs = clients.runs.clone();
            async move {
                let request = v1::StartRunRequest {
                    release: "r550".into(),
                    plan: "flash-qual".into(),
                    milestone: String::new(),
                    nodes_now: false,
                };
                runs.start_run(request)
                    .await
                    .ok()
                    .map(|run| run.into_inner())
            }
        })
        .await;
        let record = self.agent.state_dir.join("resume.json");
        wait_for(Duration::from_secs(30), "the resume record", || {
            let exists = record.exists();
            async move { exists.then_some(()) }
        })
        .await;
        // `before`'s result travels through the spool, so it may land just after the record.
        let job = self
            .clients
            .wait_first_results(&run.id)
            .await
            .jobs
            .into_iter()
            .next()
            .expect("one job");
        assert_eq!(job.state, "running", "{job:#?}");
        assert_eq!(
            job.results.len(),
            1,
            "only `before` reported so far: {job:#?}"
        );
        (run.id, job.lease_epoch)
    }
}

/// The reboot activates the staged VBIOS: the job continues after the flash and passes.
async fn a_flash_needing_a_reboot_continues_the_job_after_it(backend: Backend) {
    let Some(mut lab) = Lab::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let (run_id, epoch) = lab.run_until_the_flash_waits_for_a_reboot().await;
    // The job keeps its node while the flash waits: heartbeats still name it, so the
    // controller, having judged them, still has it running.
    lab.clients.wait_heartbeats("lab-1", 3).await;
    assert_eq!(lab.job(&run_id).await.state, "running");

    let (staged, versions) = (lab.file("lab-1.staged"), lab.file("lab-1.versions"));
    let down = lab.agent.shut_down().await;
    std::fs::rename(staged, versions).expect("the reboot activates the staged VBIOS");
    lab.agent = down.start();

    let run = lab.clients.wait_run_done(&run_id).await;
    let job = &run.jobs[0];
    assert_eq!(job.state, "passed", "{:#?}", job.results);
    assert_eq!(job.lease_epoch, epoch, "never reassigned: {job:#?}");
    assert_eq!(
        results_seen(job),
        [
            ("before", 1, v1::Outcome::Passed),
            ("vbios", 1, v1::Outcome::Passed),
            ("after", 1, v1::Outcome::Passed),
        ],
        "every result exactly once: {:#?}",
        job.results
    );
    assert!(
        job.results[1].message.starts_with(&format!(
            "after flashing, vbios is {NEW_VBIOS} (checked after the "
        )),
        "{}",
        job.results[1].message
    );
    assert_eq!(
        lab.runs_of("before"),
        1,
        "the step before the flash ran once"
    );
    assert_eq!(lab.runs_of("after"), 1, "the step after the flash ran once");
    assert!(!lab.agent.state_dir.join("resume.json").exists());
    lab.clients.wait_ready_nodes(1).await;
    lab.agent.stop().await;
    drop(lab.controller);
}

/// The reboot did not activate the new VBIOS: the flash fails naming what the GPUs report,
/// and the step after it is skipped, not run.
async fn a_flash_whose_version_did_not_change_across_the_reboot_fails(backend: Backend) {
    let Some(mut lab) = Lab::start(ControllerOptions::new(backend)).await else {
        return;
    };
    let (run_id, epoch) = lab.run_until_the_flash_waits_for_a_reboot().await;
    let down = lab.agent.shut_down().await;
    lab.agent = down.start();

    let run = lab.clients.wait_run_done(&run_id).await;
    let job = &run.jobs[0];
    assert_eq!(job.state, "failed", "{:#?}", job.results);
    assert_eq!(job.lease_epoch, epoch, "never reassigned: {job:#?}");
    assert_eq!(
        results_seen(job),
        [
            ("before", 1, v1::Outcome::Passed),
            ("vbios", 1, v1::Outcome::Failed),
            ("after", 1, v1::Outcome::Skipped),
        ],
        "{:#?}",
        job.results
    );
    let wanted = format!(
        "after flashing, vbios on GPU 0 is {OLD_VBIOS}, wanted {NEW_VBIOS}; \
         after flashing, vbios on GPU 1 is {OLD_VBIOS}, wanted {NEW_VBIOS} (checked after the "
    );
    assert!(
        job.results[1].message.starts_with(&wanted),
        "{}",
        job.results[1].message
    );
    assert_eq!(job.results[2].message, "not run: step vbios failed");
    assert_eq!(lab.runs_of("before"), 1);
    assert_eq!(lab.runs_of("after"), 0);
    lab.agent.stop().await;
}

/// The node stayed down past the lease grace: the controller declared the job lost. The
/// restarted agent's flash result is refused; it drops the resume record, keeps the refused
/// result in `spool/rejected`, runs nothing more of the job, and the node takes work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_lost_while_the_node_rebooted_is_not_continued() {
    let mut options = ControllerOptions::new(Backend::Sqlite);
    options.lease_grace = Duration::from_secs(1);
    let Some(mut lab) = Lab::start(options).await else {
        return;
    };
    let (run_id, _) = lab.run_until_the_flash_waits_for_a_reboot().await;
    let (staged, versions) = (lab.file("lab-1.staged"), lab.file("lab-1.versions"));
    let down = lab.agent.shut_down().await;
    let run = lab.clients.wait_run_done(&run_id).await;
    assert_eq!(run.jobs[0].state, "lost", "{:#?}", run.jobs[0]);
    std::fs::rename(staged, versions).expect("the reboot activates the staged VBIOS");
    let state_dir = down.state_dir().to_owned();
    lab.agent = down.start();

    // The agent moves the refused result aside, then drops the record once it has the
    // controller's answer: wait for both.
    let rejected = state_dir.join("spool").join("rejected");
    let record = state_dir.join("resume.json");
    wait_for(
        Duration::from_secs(30),
        "the refused flash result in spool/rejected and the resume record dropped",
        || {
            let n = std::fs::read_dir(&rejected).map_or(0, |dir| dir.count());
            let dropped = !record.exists();
            async move { (n == 1 && dropped).then_some(()) }
        },
    )
    .await;
    lab.clients.wait_ready_nodes(1).await;
    let job = lab.job(&run_id).await;
    assert_eq!(job.state, "lost");
    assert_eq!(job.results.len(), 1, "{job:#?}");
    // The agent runs one job at a time, and would have continued the lost one before taking
    // any other: once a new run's first step reported, the lost job's `after` ran or never
    // will.
    lab.run_until_the_flash_waits_for_a_reboot().await;
    assert_eq!(lab.runs_of("before"), 2, "the new run's `before` ran");
    assert_eq!(lab.runs_of("after"), 0, "nothing more of the lost job ran");
    lab.agent.stop().await;
}

/// A resume record the agent cannot use never stops it: a corrupt one and one written for
/// another node are moved aside (kept for the operator), and the agent serves as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unusable_resume_record_is_set_aside_and_the_agent_serves() {
    use tollgate_agent::runner::flash::{self, ResumeRecord};
    let Some(mut lab) = Lab::start(ControllerOptions::new(Backend::Sqlite)).await else {
        return;
    };
    let kept = |state_dir: &Path, prefix: &str| {
        std::fs::read_dir(state_dir)
            .expect("state dir")
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
            .count()
    };

    let down = lab.agent.shut_down().await;
    let state_dir = down.state_dir().to_owned();
    std::fs::write(state_dir.join("resume.json"), b"{\"job\": {\"job_id\"").expect("write");
    lab.agent = down.start();
    wait_for(
        Duration::from_secs(30),
        "the corrupt record set aside",
        || {
            let n = kept(&state_dir, "resume.json.corrupt-");
            async move { (n == 1).then_some(()) }
        },
    )
    .await;
    assert!(!state_dir.join("resume.json").exists());

    let down = lab.agent.shut_down().await;
    let record = ResumeRecord {
        job: tollgate_agent::runner::Job {
            job_id: "job-of-another-node".into(),
            run_id: "run-1".into(),
            lease_epoch: 1,
            release: "r550".into(),
            components: Vec::new(),
            milestone: "lab-qual".into(),
            plan_name: "flash-qual".into(),
            plan_version: "v1".into(),
            steps: Vec::new(),
        },
        step_index: 1,
        attempt: 1,
        started_at: tollgate_agent::clock::now(),
        node: "lab-2".into(),
        controller: lab.controller.url.clone(),
        boot_id: String::new(),
    };
    flash::write(&state_dir, &record).expect("write the record");
    lab.agent = down.start();
    wait_for(
        Duration::from_secs(30),
        "the other node's record set aside",
        || {
            let n = kept(&state_dir, "resume.json.other-owner-");
            async move { (n == 1).then_some(()) }
        },
    )
    .await;
    assert!(!state_dir.join("resume.json").exists());

    // The agent serves: a run of the plan gets as far as the flash.
    let (_, _) = lab.run_until_the_flash_waits_for_a_reboot().await;
    lab.agent.stop().await;
}
