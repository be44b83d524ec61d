//! Runs in the store: creating one with its jobs (audited; a health check's row with it),
//! reading them, and cancelling one as `tollgate_domain::run::cancel` decided (audited,
//! compare-and-set).

use super::connect::Begin;
use super::{
    AuditNote, CreatedKey, JobRecord, Pool, RunPurpose, RunRecord, Store, StoreError, micros,
    page_limit, rows,
};
use tollgate_domain::run::Cancellation;
use tollgate_domain::{ReleaseId, RunId, Timestamp};

/// `SELECT` of runs, then a tail.
macro_rules! run_query {
    ($tail:expr) => {
        concat!(
            "SELECT id, release, plan_name, plan_version, milestone, state, created_at, finished_at,
                    purpose, seq
             FROM runs",
            $tail
        )
    };
}

impl Store {
    /// Stores a run and its jobs with the audit entry `note`, in one transaction.
    pub async fn create_run(
        &self,
        run: &RunRecord,
        jobs: &[JobRecord],
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            insert_run!(tx, run, jobs);
            if run.purpose == RunPurpose::Health {
                const HEALTH_CHECK: &str = "INSERT INTO health_checks (run_id, plan_name, node, created_at) VALUES ($1, $2, $3, $4)";
                for job in jobs {
                    sqlx::query(HEALTH_CHECK)
                        .bind(run.id.as_str())
                        .bind(&run.plan_name)
                        .bind(job.node.as_str())
                        .bind(micros(run.created_at))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }

    /// One run.
    pub async fn get_run(&self, run: &RunId) -> Result<Option<RunRecord>, StoreError> {
        const SQL: &str = run_query!(" WHERE id = $1");
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(run.as_str())
                .fetch_optional(pool)
                .await?
                .map(|row| rows::run(&row))
                .transpose()
        })
    }

    /// Runs, newest first, optionally of one release.
    pub async fn list_runs(
        &self,
        release: Option<&ReleaseId>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let page = self.list_runs_page(release, None, usize::MAX).await?;
        Ok(page.into_iter().map(|(run, _)| run).collect())
    }

    /// Up to `limit` runs, newest first (by `created_at`, then insertion), optionally of one
    /// release, starting after the order key `after` of the last one of the previous page;
    /// each with its order key.
    pub async fn list_runs_page(
        &self,
        release: Option<&ReleaseId>,
        after: Option<CreatedKey>,
        limit: usize,
    ) -> Result<Vec<(RunRecord, CreatedKey)>, StoreError> {
        const SQL: &str = run_query!(
            " WHERE ($1 IS NULL OR release = $1)
                AND ($2 IS NULL OR (created_at, seq) < ($2, $3))
              ORDER BY created_at DESC, seq DESC LIMIT $4"
        );
        let release = release.map(ReleaseId::as_str);
        let (at, seq) = after.unzip();
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(release)
                .bind(at)
                .bind(seq)
                .bind(page_limit(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok((rows::run(row)?, rows::created_key(row, "runs")?)))
                .collect()
        })
    }

    /// Cancels a run as `tollgate_domain::run::cancel` decided, with the audit entry `note`, in
    /// one transaction: the run moves only if it is still in the state decided from, each job
    /// (and its node) likewise; `Conflict` when anything moved (reload and decide again),
    /// `NotFound` when the run does not exist.
    pub async fn cancel_run(
        &self,
        run: &RunId,
        cancellation: &Cancellation,
        note: &AuditNote,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        const RUN_STATE: &str = "SELECT id, state FROM runs WHERE id = $1";
        let (from, to) = cancellation.run;
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            // The run row first: every job change locks it first too (see `apply_job_change!`).
            let n_rows = sqlx::query(super::jobs::MOVE_RUN)
                .bind(run.as_str())
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(micros(now))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n_rows == 0 {
                let found = sqlx::query(RUN_STATE)
                    .bind(run.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| rows::Fields::new(&row, "runs", &["id"]).text("state"))
                    .transpose()?;
                return Err(match found {
                    None => StoreError::NotFound {
                        what: format!("run {run}"),
                    },
                    Some(found) => StoreError::Conflict {
                        what: format!("run {run}"),
                        detail: format!("expected state {from}, found {found}"),
                    },
                });
            }
            for change in &cancellation.jobs {
                apply_job_change!(tx, change, now);
            }
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }
}

/// How many runs and jobs are in each state, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Runs per state.
    pub runs: Vec<(String, i64)>,
    /// Jobs per state.
    pub jobs: Vec<(String, i64)>,
}

impl Store {
    /// Counts runs and jobs by state (two grouped reads; the jobs' by an index on state).
    pub async fn state_counts(&self) -> Result<StateCounts, StoreError> {
        const RUNS: &str = "SELECT state, COUNT(*) FROM runs GROUP BY state ORDER BY state";
        const JOBS: &str = "SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state";
        with_pool!(self, |pool| {
            Ok(StateCounts {
                runs: sqlx::query_as(RUNS).fetch_all(pool).await?,
                jobs: sqlx::query_as(JOBS).fetch_all(pool).await?,
            })
        })
    }
}
