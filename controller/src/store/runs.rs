//! Runs in the store: creating one with its jobs (audited; a health check's row with it),
//! reading them, cancelling one as `tollgate_domain::run::cancel` decided (audited,
//! compare-and-set), and ending one after its last job's commit (`tollgate_domain::run::next`,
//! compare-and-set).

use super::connect::Begin;
use super::{
    AuditNote, CreatedKey, JobRecord, Pool, RunPurpose, RunRecord, Store, StoreError, micros,
    page_limit, rows,
};
use std::collections::BTreeSet;
use std::sync::LazyLock;
use tollgate_domain::run::{Cancellation, RunEvent, RunState};
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
                // The run was cancelled above: a job ending with it leaves no end to decide.
                let _ = apply_job_change!(tx, change, now);
            }
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }
}

impl Store {
    /// Decides the end of each of `runs`, whose jobs ended in a committed transaction:
    /// `tollgate_domain::run::next` from the run's state and its open jobs read now, applied
    /// by a compare-and-set on the state decided from. Of several callers seeing a run's last
    /// job ended, one ends it; the others find it ended and change nothing. Evaluates to the
    /// runs it ended.
    ///
    /// Called after the commit of every job change that ended a job (see `apply_job_change!`
    /// in `mod.rs` for why not inside it). Its errors are logged, not returned: the job's
    /// change is committed, and a run left `running` with no open job is ended by
    /// [`Store::end_runs_left_running`] on the lease watchdog's next tick.
    pub(super) async fn end_runs_if_done(
        &self,
        runs: &BTreeSet<RunId>,
        now: Timestamp,
    ) -> Vec<RunId> {
        let mut ended = Vec::new();
        for run in runs {
            match self.end_run_if_done(run, now).await {
                Ok(true) => ended.push(run.clone()),
                Ok(false) => {}
                Err(error) => tracing::warn!(
                    %run, %error,
                    "run's end not decided after its job ended; the lease watchdog decides it"
                ),
            }
        }
        ended
    }

    /// [`Store::end_runs_if_done`] of one run: whether this call ended it.
    async fn end_run_if_done(&self, run: &RunId, now: Timestamp) -> Result<bool, StoreError> {
        let facts = with_pool!(self, |pool| {
            sqlx::query(super::jobs::RUN_OPEN_JOBS.as_str())
                .bind(run.as_str())
                .fetch_optional(pool)
                .await?
                .map(|row| {
                    let fields = rows::Fields::new(&row, "runs", &["id"]);
                    Ok::<_, StoreError>((
                        fields.parse::<RunState>("state")?,
                        fields.int_as::<usize>("open_jobs")?,
                    ))
                })
                .transpose()
        })?;
        let Some((state, open_jobs)) = facts else {
            return Ok(false);
        };
        let to = match tollgate_domain::run::next(state, RunEvent::JobEnded { open_jobs }) {
            Ok(to) if to != state => to,
            // Still running with open jobs, or already ended: nothing to apply.
            Ok(_) => return Ok(false),
            Err(refusal) => {
                return Err(StoreError::Conflict {
                    what: format!("run {run}"),
                    detail: refusal.to_string(),
                });
            }
        };
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let n_rows = sqlx::query(super::jobs::MOVE_RUN)
                .bind(run.as_str())
                .bind(state.as_str())
                .bind(to.as_str())
                .bind(micros(now))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            // No row: another caller ended it first (or a manager cancelled it meanwhile).
            Ok(n_rows == 1)
        })
    }

    /// Ends every run left `running` though it has jobs and none of them is open: a
    /// controller stopped (or its database refused the write) between a job's commit and
    /// [`Store::end_runs_if_done`]. The lease watchdog's leader calls it each tick.
    /// Evaluates to the runs it ended.
    pub async fn end_runs_left_running(&self, now: Timestamp) -> Result<Vec<RunId>, StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            super::states::sql(
                "SELECT r.id FROM runs r WHERE r.state = $1
                   AND EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = r.id)
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = r.id
                                   AND j.state IN {open})",
            )
        });
        let runs: BTreeSet<RunId> = with_pool!(self, |pool| {
            sqlx::query(SQL.as_str())
                .bind(RunState::Running.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    Ok(RunId::new(
                        rows::Fields::new(row, "runs", &["id"]).text("id")?,
                    ))
                })
                .collect::<Result<_, StoreError>>()
        })?;
        let mut ended = Vec::new();
        for run in &runs {
            if self.end_run_if_done(run, now).await? {
                ended.push(run.clone());
            }
        }
        Ok(ended)
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
