//! Assembling [`Evidence`] from the three row sets `Store::load_evidence` reads, with each
//! result's stored digest.

use super::rows::{EvidenceJob, EvidenceRun};
use std::collections::HashMap;
use tollgate_domain::JobId;
use tollgate_domain::gate::{Evidence, JobEvidence, RunEvidence, result_digest};
use tollgate_domain::release::Release;
use tollgate_domain::result::StepResult;

/// A result as loaded, with the digest stored with it (`None` for rows stored before digests
/// were).
pub(super) type StoredResult = (StepResult, Option<[u8; 32]>);

/// Groups jobs under their runs and results under their jobs, keeping the order each set
/// was read in (runs by plan name, jobs by node name, results by step index then attempt).
pub(super) fn assemble(
    release: &Release,
    milestone: &str,
    runs: Vec<EvidenceRun>,
    jobs: Vec<EvidenceJob>,
    results: Vec<StoredResult>,
) -> Evidence {
    let mut results_by_job: HashMap<JobId, Vec<StoredResult>> = HashMap::new();
    for (result, digest) in results {
        results_by_job
            .entry(result.job_id.clone())
            .or_default()
            .push((result, digest));
    }
    let mut jobs_by_run: HashMap<_, Vec<JobEvidence>> = HashMap::new();
    for job in jobs {
        let mut evidence = JobEvidence {
            job_id: job.id,
            node: job.node,
            labels: job.labels,
            gpu_source: job.gpu_source,
            state: job.state,
            results: Vec::new(),
            result_digests: Vec::new(),
        };
        let results = results_by_job.remove(&evidence.job_id).unwrap_or_default();
        set_results(&mut evidence, results);
        jobs_by_run.entry(job.run_id).or_default().push(evidence);
    }
    let runs = runs
        .into_iter()
        .map(|run| RunEvidence {
            jobs: jobs_by_run.remove(&run.id).unwrap_or_default(),
            plan_steps: run.plan.step_names(),
            run_id: run.id,
            plan_name: run.plan_name,
            plan_version: run.plan_version,
            created_at: run.created_at,
        })
        .collect();
    Evidence {
        release: release.clone(),
        milestone: milestone.to_owned(),
        runs,
        baseline: None,
    }
}

/// Sets a job's results and their digests; results stored before digests were get theirs
/// computed here.
pub(super) fn set_results(job: &mut JobEvidence, results: Vec<StoredResult>) {
    let (results, digests): (Vec<StepResult>, Vec<Option<[u8; 32]>>) = results.into_iter().unzip();
    job.result_digests = results
        .iter()
        .zip(digests)
        .map(|(result, digest)| digest.unwrap_or_else(|| result_digest(result)))
        .collect();
    job.results = results;
}
