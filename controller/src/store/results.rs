//! Step results in the store: recording one with its job's decided change, reading a job's.
//!
//! **Invariant:** a result is committed before it is acknowledged, and stored once however
//! often it is sent (keyed by job, step index, attempt and lease epoch).

use super::connect::Begin;
use super::{
    Pool, Recorded, Store, StoreError, as_stored, check_readable, classify, epoch_to_i64, micros,
    rows, text, to_json,
};
use tollgate_domain::job::ResultChange;
use tollgate_domain::result::StepResult;
use tollgate_domain::{JobId, Timestamp};

impl Store {
    /// Stores a result the domain accepted (`tollgate_domain::job::accept_result`) and
    /// applies its `change` in the same transaction: only if the job has the results it was
    /// decided from, no more, and the job (and its node, and its run when the job was the
    /// run's last) is still where it was decided from; else `Conflict` and nothing is stored
    /// (reload and decide again). A duplicate (same job, step index, attempt and lease epoch)
    /// changes nothing.
    ///
    /// A result whose numbers are not finite is refused as `Corrupt` (it could not be read
    /// back); NUL characters in its text are stored as U+FFFD.
    ///
    /// Long because the insert binds every column of a result and the lock, insert, count and
    /// apply must share one transaction, in this order.
    pub async fn record_result(
        &self,
        result: &StepResult,
        change: &ResultChange,
        now: Timestamp,
    ) -> Result<Recorded, StoreError> {
        const LOCK_JOB: &str = "UPDATE jobs SET state = state WHERE id = $1 RETURNING id, run_id";
        const COUNT: &str = "SELECT COUNT(*) AS n FROM step_results WHERE job_id = $1";
        const INSERT_RESULT: &str = "INSERT INTO step_results (job_id, step_index, attempt, lease_epoch, step_name, outcome,
                 exit_code, started_at, finished_at, measurements, telemetry, events, inventory,
                 log_tail, message, recorded_at, sub_results, inventory_at_end, series, digest)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                     $18, $19, $20)
             ON CONFLICT (job_id, step_index, attempt, lease_epoch) DO NOTHING";
        check_readable(result)?;
        if change.job.job != result.job_id {
            return Err(StoreError::Conflict {
                what: format!("result of job {}", result.job_id),
                detail: format!("it came with a change of job {}", change.job.job),
            });
        }
        let job = &result.job_id;
        let what = format!("job {job}");
        let measurements = to_json(&result.measurements);
        let telemetry = to_json(&result.telemetry);
        let events = to_json(&result.events);
        let inventory = to_json(&result.inventory);
        let sub_results = to_json(&result.sub_results);
        let inventory_at_end = to_json(&result.inventory_at_end);
        let series = to_json(&result.series);
        let digest = hex::encode(tollgate_domain::gate::result_digest(&as_stored(result)));
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            // The job's lock before the insert, so that the count below sees every result
            // another writer of this job committed meanwhile: under PostgreSQL's read
            // committed, two writers that inserted before either locked would each count only
            // their own. The run's lock before it (the lock order of `apply_job_change!`) only
            // when the job ends: the run's transition is decided from its open jobs. Most
            // results leave the job running, and a run's jobs then do not wait for each other.
            if change.job.to.is_terminal() && !change.job.from.is_terminal() {
                lock_job_run!(tx, job);
            }
            let Some(row) = sqlx::query(LOCK_JOB)
                .bind(job.as_str())
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Err(StoreError::NotFound { what });
            };
            let run_id = rows::Fields::new(&row, "jobs", &["id"]).text("run_id")?;
            let n_rows = sqlx::query(INSERT_RESULT)
                .bind(result.job_id.as_str())
                .bind(i64::from(result.step_index))
                .bind(i64::from(result.attempt))
                .bind(epoch_to_i64(result.lease_epoch, job)?)
                .bind(text(&result.step_name))
                .bind(result.outcome.as_str())
                .bind(result.exit_code.map(i64::from))
                .bind(micros(result.started_at))
                .bind(micros(result.finished_at))
                .bind(&measurements)
                .bind(&telemetry)
                .bind(&events)
                .bind(&inventory)
                .bind(text(&result.log_tail))
                .bind(text(&result.message))
                .bind(micros(now))
                .bind(&sub_results)
                .bind(&inventory_at_end)
                .bind(&series)
                .bind(&digest)
                .execute(&mut *tx)
                .await
                .map_err(|err| classify(err, &what, &what))?
                .rows_affected();
            if n_rows == 0 {
                return Ok(Recorded::Duplicate);
            }
            let row = sqlx::query(COUNT)
                .bind(job.as_str())
                .fetch_one(&mut *tx)
                .await?;
            let n_results: usize = rows::Fields::new(&row, "step_results", &[]).int_as("n")?;
            if n_results != change.results_before + 1 {
                return Err(StoreError::Conflict {
                    what,
                    detail: format!(
                        "decided from {} stored results, found {} others",
                        change.results_before,
                        n_results.saturating_sub(1)
                    ),
                });
            }
            apply_job_change!(tx, &change.job, now, run_id);
            tx.commit().await?;
            Ok(Recorded::Inserted)
        })
    }

    /// Every result of a job, by step index then attempt.
    pub async fn results_of_job(&self, job: &JobId) -> Result<Vec<StepResult>, StoreError> {
        const SQL: &str =
            result_query!(" WHERE job_id = $1 ORDER BY step_index, attempt, lease_epoch");
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(job.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::step_result)
                .collect()
        })
    }
}
