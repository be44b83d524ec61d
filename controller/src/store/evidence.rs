//! Evidence in the store: loading it whole for a release at a milestone (three row sets in
//! one snapshot, assembled with each result's stored digest) and refreshing only the jobs that
//! changed.

use super::connect::Begin;
use super::rows::{EvidenceJob, EvidenceRun};
use super::{Pool, Refreshed, Store, StoreError, decode_in_chunks, rows};
use std::collections::HashMap;
use tollgate_domain::gate::{Evidence, JobEvidence, ResultReads, RunEvidence, result_digest};
use tollgate_domain::release::Release;
use tollgate_domain::result::StepResult;
use tollgate_domain::{JobId, RunId};

/// A result as loaded, with the digest stored with it (`None` for rows stored before digests
/// were).
pub(super) type StoredResult = (StepResult, Option<[u8; 32]>);

/// A loaded result thinned to what a gate's rules read, when `reads` is given
/// ([`ResultReads::thin`]), its digest taken first from the whole result when the row had
/// none.
fn thinned((mut result, digest): StoredResult, reads: Option<&ResultReads>) -> StoredResult {
    let Some(reads) = reads else {
        return (result, digest);
    };
    let digest = digest.unwrap_or_else(|| result_digest(&result));
    reads.thin(&mut result);
    (result, Some(digest))
}

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

/// Keeps only the jobs that count: a job rescheduled to another node is replaced by its next
/// attempt (`tollgate_domain::reschedule::superseded` decides).
fn final_attempts_only<T>(jobs: &mut Vec<T>, job: impl Fn(&T) -> &EvidenceJob) {
    let replaced = tollgate_domain::reschedule::superseded(
        jobs.iter()
            .map(|row| (&job(row).id, job(row).rescheduled_from.as_ref())),
    );
    if !replaced.is_empty() {
        jobs.retain(|row| !replaced.contains(&job(row).id));
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

/// Which jobs of `evidence` changed (run index, job index), from the latest runs' ids and
/// every job row with its number of stored results, as `Store::refresh_evidence` reads them;
/// `None` when the runs or the jobs themselves differ (the evidence must be loaded whole).
/// Results are append-only, so a job whose state, labels, GPU source and result count are
/// unchanged is unchanged.
fn changed_jobs(
    evidence: &Evidence,
    run_ids: &[RunId],
    jobs: &[(EvidenceJob, usize)],
) -> Option<Vec<(usize, usize)>> {
    let same_runs = run_ids.len() == evidence.runs.len()
        && run_ids
            .iter()
            .zip(&evidence.runs)
            .all(|(id, run)| *id == run.run_id);
    // The rows must be the evidence's jobs, in order.
    let slots: Vec<(usize, usize)> = evidence
        .runs
        .iter()
        .enumerate()
        .flat_map(|(r, run)| (0..run.jobs.len()).map(move |j| (r, j)))
        .collect();
    if !same_runs || slots.len() != jobs.len() {
        return None;
    }
    let mut changed = Vec::new();
    for ((row, n_results), (r, j)) in jobs.iter().zip(&slots) {
        let job = &evidence.runs[*r].jobs[*j];
        if job.job_id != row.id || evidence.runs[*r].run_id != row.run_id {
            return None;
        }
        if job.state != row.state
            || job.labels != row.labels
            || job.gpu_source != row.gpu_source
            || job.results.len() != *n_results
        {
            changed.push((*r, *j));
        }
    }
    Some(changed)
}

/// One row of a refresh's jobs (a JSON array, see `refresh_evidence`): each job with its
/// number of results.
type EvidenceJobRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    usize,
);

/// The jobs of a refresh, from the JSON arrays the database answered, in order.
fn evidence_jobs(pieces: Vec<String>) -> Result<Vec<(EvidenceJob, usize)>, StoreError> {
    let corrupt = |what: String, detail: String| StoreError::Corrupt { what, detail };
    let rows: Vec<EvidenceJobRow> = super::json_pieces(pieces)
        .map_err(|err| corrupt("jobs of the evidence".to_owned(), err.to_string()))?;
    rows.into_iter()
        .map(
            |(id, run_id, node, state, rescheduled_from, labels, gpu_source, n_results)| {
                let job = EvidenceJob {
                    state: state
                        .parse::<tollgate_domain::job::JobState>()
                        .map_err(|err| {
                            corrupt(format!("jobs.state of row '{id}'"), err.to_string())
                        })?,
                    labels: serde_json::from_str(&labels).map_err(|err| {
                        corrupt(format!("nodes.labels of node '{node}'"), err.to_string())
                    })?,
                    gpu_source: gpu_source
                        .parse::<tollgate_domain::fleet::GpuSourceKind>()
                        .map_err(|err| {
                            corrupt(
                                format!("nodes.gpu_source of node '{node}'"),
                                err.to_string(),
                            )
                        })?,
                    id: JobId::new(id),
                    run_id: RunId::new(run_id),
                    node: tollgate_domain::NodeId::new(node),
                    rescheduled_from: rescheduled_from.map(JobId::new),
                };
                Ok((job, n_results))
            },
        )
        .collect()
}

impl Store {
    /// The evidence for a release at a milestone: the latest non-cancelled run of each plan,
    /// with every job, its node's labels and GPU source, and every result.
    ///
    /// Three queries in one snapshot (runs, jobs, results), however many jobs and results;
    /// results are decoded as they arrive, without their series (`evidence_query!`).
    pub async fn load_evidence(
        &self,
        release: &Release,
        milestone: &str,
    ) -> Result<Evidence, StoreError> {
        self.load_evidence_for(release, milestone, None).await
    }

    /// [`Store::load_evidence`], each result thinned as it is decoded to what `reads` says a
    /// gate's rules read, when given (a few of a result's two hundred telemetry summaries, no
    /// log tail; its digest is taken whole first): the evidence a gate keeps in memory.
    pub async fn load_evidence_for(
        &self,
        release: &Release,
        milestone: &str,
        reads: Option<&ResultReads>,
    ) -> Result<Evidence, StoreError> {
        const RUNS: &str = concat!(
            latest_runs_cte!(),
            " SELECT r.id, r.plan_name, r.plan_version, r.created_at, p.spec
              FROM runs r JOIN plans p ON p.name = r.plan_name AND p.version = r.plan_version
              WHERE r.id IN (SELECT id FROM latest)
              ORDER BY r.plan_name"
        );
        const JOBS: &str = concat!(
            latest_runs_cte!(),
            " SELECT j.id, j.run_id, j.node, j.state, j.rescheduled_from, n.labels, n.gpu_source
              FROM jobs j JOIN nodes n ON n.name = j.node
              WHERE j.run_id IN (SELECT id FROM latest)
              ORDER BY j.run_id, j.node, j.id"
        );
        const RESULTS: &str = concat!(
            latest_runs_cte!(),
            " ",
            evidence_query!(
                " WHERE job_id IN (SELECT j.id FROM jobs j WHERE j.run_id IN (SELECT id FROM latest))
              ORDER BY job_id, step_index, attempt, lease_epoch"
            )
        );
        let (runs, jobs, results) = with_pool!(self, |pool| {
            let mut tx = pool.begin_snapshot().await?;
            let runs: Vec<rows::EvidenceRun> = sqlx::query(RUNS)
                .bind(release.id.as_str())
                .bind(milestone)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(rows::evidence_run)
                .collect::<Result<_, _>>()?;
            let mut jobs: Vec<rows::EvidenceJob> = sqlx::query(JOBS)
                .bind(release.id.as_str())
                .bind(milestone)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(rows::evidence_job)
                .collect::<Result<_, _>>()?;
            final_attempts_only(&mut jobs, |job| job);
            // Decoded a chunk at a time, like a refresh's: the raw rows of every result
            // (each result's telemetry and inventories) are never held at once.
            let mut results: Vec<StoredResult> = Vec::new();
            let stream = sqlx::query(RESULTS)
                .bind(release.id.as_str())
                .bind(milestone)
                .fetch(&mut *tx);
            decode_in_chunks(stream, rows::evidence_result, |stored| {
                results.push(thinned(stored, reads));
            })
            .await?;
            tx.commit().await?;
            (runs, jobs, results)
        });
        Ok(assemble(release, milestone, runs, jobs, results))
    }

    /// The evidence of exactly the runs `run_ids` of `release` (a rollout wave's procedure
    /// runs, one per node), labelled `milestone`: each run's jobs, their nodes' labels and GPU
    /// source, and every result, read in one snapshot. Runs of the same plan version are
    /// merged into one run of that plan, its jobs by node, so that a rule over the plan sees
    /// every node of the wave.
    pub async fn load_evidence_of_runs(
        &self,
        release: &Release,
        milestone: &str,
        run_ids: &[RunId],
    ) -> Result<Evidence, StoreError> {
        // Three statements whatever the number of runs: `$1` is a JSON array of their ids.
        macro_rules! of_runs {
            ($ids:literal) => {
                (
                    concat!(
                        "SELECT r.id, r.plan_name, r.plan_version, r.created_at, p.spec
                         FROM runs r JOIN plans p ON p.name = r.plan_name AND p.version = r.plan_version
                         WHERE r.id IN ",
                        $ids,
                        " ORDER BY r.id"
                    ),
                    concat!(
                        "SELECT j.id, j.run_id, j.node, j.state, j.rescheduled_from, n.labels, n.gpu_source
                         FROM jobs j JOIN nodes n ON n.name = j.node
                         WHERE j.run_id IN ",
                        $ids,
                        " ORDER BY j.run_id, j.node, j.id"
                    ),
                    evidence_query!(concat!(
                        " WHERE job_id IN (SELECT j.id FROM jobs j WHERE j.run_id IN ",
                        $ids,
                        ") ORDER BY job_id, step_index, attempt, lease_epoch"
                    )),
                )
            };
        }
        const SQLITE: (&str, &str, &str) = of_runs!("(SELECT value FROM json_each($1))");
        const POSTGRES: (&str, &str, &str) =
            of_runs!("(SELECT jsonb_array_elements_text($1::jsonb))");
        let ids: Vec<&str> = run_ids.iter().map(RunId::as_str).collect();
        let ids = serde_json::to_string(&ids).expect("a list of strings serializes");
        macro_rules! read {
            ($pool:expr, $sql:expr) => {{
                let (runs_sql, jobs_sql, results_sql) = $sql;
                let mut tx = $pool.begin_snapshot().await?;
                let runs: Vec<rows::EvidenceRun> = sqlx::query(runs_sql)
                    .bind(ids.as_str())
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(rows::evidence_run)
                    .collect::<Result<_, _>>()?;
                let jobs: Vec<rows::EvidenceJob> = sqlx::query(jobs_sql)
                    .bind(ids.as_str())
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(rows::evidence_job)
                    .collect::<Result<_, _>>()?;
                let mut results: Vec<StoredResult> = Vec::new();
                let stream = sqlx::query(results_sql).bind(ids.as_str()).fetch(&mut *tx);
                decode_in_chunks(stream, rows::evidence_result, |stored| results.push(stored))
                    .await?;
                tx.commit().await?;
                (runs, jobs, results)
            }};
        }
        let (runs, jobs, results) = match &self.pool {
            Pool::Sqlite(pool) => read!(pool, SQLITE),
            Pool::Postgres(pool) => read!(pool, POSTGRES),
        };
        let mut evidence = assemble(release, milestone, runs, jobs, results);
        let mut merged: Vec<RunEvidence> = Vec::new();
        for run in std::mem::take(&mut evidence.runs) {
            match merged.iter_mut().find(|kept| {
                kept.plan_name == run.plan_name && kept.plan_version == run.plan_version
            }) {
                Some(kept) => kept.jobs.extend(run.jobs),
                None => merged.push(run),
            }
        }
        for run in &mut merged {
            run.jobs.sort_by(|a, b| a.node.cmp(&b.node));
        }
        evidence.runs = merged;
        Ok(evidence)
    }

    /// Brings `evidence`, loaded earlier by [`Store::load_evidence_for`] for the same release,
    /// milestone and `reads`, up to date, reading only what changed: one snapshot reads every
    /// job with its state, labels and number of stored results, then the results of the jobs
    /// that changed (thinned as the load did). Results are append-only, so a job whose count,
    /// state and labels are unchanged is unchanged.
    ///
    /// When the runs or the jobs themselves differ (a new run, a cancelled one), or the
    /// release does, the whole evidence is loaded again and [`Refreshed::Reloaded`] says so.
    /// (Its length is its three statements and the reads that share one snapshot.)
    pub async fn refresh_evidence(
        &self,
        release: &Release,
        milestone: &str,
        evidence: &mut Evidence,
        reads: Option<&ResultReads>,
    ) -> Result<Refreshed, StoreError> {
        const RUN_IDS: &str = concat!(
            latest_runs_cte!(),
            " SELECT r.id FROM runs r WHERE r.id IN (SELECT id FROM latest) ORDER BY r.plan_name"
        );
        // Every job as JSON arrays of `[id, run, node, state, rescheduled from, labels, GPU
        // source, results]` arrays in the evidence's order, a row per 100 jobs (a refresh
        // reads every job of the latest runs, several times a second while a run ends, and
        // each row of an answer is a hand-off between SQLite's thread and the caller's; the
        // pieces' size: `super::json_pieces`).
        macro_rules! jobs_in_pieces {
            ($aggregate:literal) => {
                concat!(
                    latest_runs_cte!(),
                    " SELECT ",
                    $aggregate,
                    " AS jobs
                      FROM (SELECT j.id, j.run_id, j.node, j.state, j.rescheduled_from,
                                   n.labels, n.gpu_source, ru.plan_name,
                                   (SELECT COUNT(*) FROM step_results r WHERE r.job_id = j.id)
                                       AS n_results,
                                   (ROW_NUMBER() OVER (ORDER BY ru.plan_name, j.node, j.id)
                                       - 1) / 100 AS piece
                            FROM jobs j JOIN nodes n ON n.name = j.node
                                        JOIN runs ru ON ru.id = j.run_id
                            WHERE j.run_id IN (SELECT id FROM latest)) AS e
                      GROUP BY piece ORDER BY piece"
                )
            };
        }
        const JOBS: (&str, &str) = (
            jobs_in_pieces!(
                "json_group_array(json_array(id, run_id, node, state, rescheduled_from,
                                             labels, gpu_source, n_results)
                                  ORDER BY plan_name, node, id)"
            ),
            jobs_in_pieces!(
                "json_agg(json_build_array(id, run_id, node, state, rescheduled_from,
                                           labels, gpu_source, n_results)
                          ORDER BY plan_name, node, id)::text"
            ),
        );
        const JOB_RESULTS: (&str, &str) = in_json_list!(
            evidence_query!(" WHERE job_id"),
            "$1",
            " ORDER BY job_id, step_index, attempt, lease_epoch"
        );
        if evidence.release != *release || evidence.milestone != milestone {
            *evidence = self.load_evidence_for(release, milestone, reads).await?;
            return Ok(Refreshed::Reloaded);
        }
        let (jobs_sql, job_results) = (self.pool.sql(JOBS), self.pool.sql(JOB_RESULTS));
        let outcome = with_pool!(self, |pool| {
            let mut tx = pool.begin_snapshot().await?;
            let run_ids: Vec<RunId> = sqlx::query(RUN_IDS)
                .bind(release.id.as_str())
                .bind(milestone)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| {
                    rows::Fields::new(row, "runs", &["id"])
                        .text("id")
                        .map(RunId)
                })
                .collect::<Result<_, _>>()?;
            let pieces: Vec<String> = sqlx::query(jobs_sql)
                .bind(release.id.as_str())
                .bind(milestone)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| rows::Fields::new(row, "jobs", &[]).text("jobs"))
                .collect::<Result<_, _>>()?;
            let mut jobs = evidence_jobs(pieces)?;
            final_attempts_only(&mut jobs, |(job, _)| job);
            let changed = changed_jobs(evidence, &run_ids, &jobs);
            if let Some(changed) = changed {
                // The results of every job that changed, in one statement.
                let mut fresh: HashMap<JobId, Vec<StoredResult>> = HashMap::new();
                if !changed.is_empty() {
                    let ids = super::json_list(
                        changed
                            .iter()
                            .map(|(r, j)| evidence.runs[*r].jobs[*j].job_id.as_str()),
                    );
                    // Decoded a chunk at a time: the raw rows of every changed job
                    // (telemetry, inventories) are never held at once.
                    let stream = sqlx::query(job_results).bind(&ids).fetch(&mut *tx);
                    decode_in_chunks(stream, rows::evidence_result, |stored| {
                        fresh
                            .entry(stored.0.job_id.clone())
                            .or_default()
                            .push(thinned(stored, reads));
                    })
                    .await?;
                }
                tx.commit().await?;
                Some((jobs, changed, fresh))
            } else {
                tx.commit().await?;
                None
            }
        });
        let Some((jobs, changed, fresh)) = outcome else {
            *evidence = self.load_evidence_for(release, milestone, reads).await?;
            return Ok(Refreshed::Reloaded);
        };
        let mut rows: HashMap<JobId, rows::EvidenceJob> = jobs
            .into_iter()
            .map(|(row, _)| (row.id.clone(), row))
            .collect();
        let mut fresh = fresh;
        for (r, j) in &changed {
            let job = &mut evidence.runs[*r].jobs[*j];
            let results = fresh.remove(&job.job_id).unwrap_or_default();
            if let Some(row) = rows.remove(&job.job_id) {
                job.state = row.state;
                job.labels = row.labels;
                job.gpu_source = row.gpu_source;
            }
            set_results(job, results);
        }
        Ok(Refreshed::Changed(changed))
    }
}
