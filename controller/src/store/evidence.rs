//! Assembling [`Evidence`] from the three row sets `Store::load_evidence` reads.

use super::rows::{EvidenceJob, EvidenceRun};
use std::collections::HashMap;
use tollgate_domain::JobId;
use tollgate_domain::gate::{Evidence, JobEvidence, RunEvidence};
use tollgate_domain::release::Release;
use tollgate_domain::result::StepResult;

/// Groups jobs under their runs and results under their jobs, keeping the order each set
/// was read in (runs by plan name, jobs by node name, results by step index then attempt).
pub(super) fn assemble(
    release: &Release,
    milestone: &str,
    runs: Vec<EvidenceRun>,
    jobs: Vec<EvidenceJob>,
    results: Vec<StepResult>,
) -> Evidence {
    let mut results_by_job: HashMap<JobId, Vec<StepResult>> = HashMap::new();
    for result in results {
        results_by_job
            .entry(result.job_id.clone())
            .or_default()
            .push(result);
    }
    let mut jobs_by_run: HashMap<_, Vec<JobEvidence>> = HashMap::new();
    for job in jobs {
        let results = results_by_job.remove(&job.id).unwrap_or_default();
        jobs_by_run
            .entry(job.run_id)
            .or_default()
            .push(JobEvidence {
                job_id: job.id,
                node: job.node,
                labels: job.labels,
                gpu_source: job.gpu_source,
                state: job.state,
                results,
            });
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
