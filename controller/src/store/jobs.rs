//! Jobs in the store: reading them and the facts their changes are decided from, and
//! applying a decided change (`tollgate_domain::job::decide`) with a compare-and-set.
//!
//! **Invariant:** a job's state, lease epoch and its node's state change only through
//! `apply_job_change!` (`mod.rs`), inside one transaction, and only if none of them moved
//! since the change was decided; the run's end is decided after that transaction commits
//! (`Store::end_runs_if_done`).

use super::connect::Begin;
use super::rows::{self, Fields, StoreRow};
use super::{JobMark, JobRecord, Pool, Store, StoreError, states};
use std::collections::HashMap;
use std::sync::LazyLock;
use tollgate_domain::job::{JobChange, JobFacts, JobState, NodeChange};
use tollgate_domain::result::StepResult;
use tollgate_domain::scheduler::PendingJob;
use tollgate_domain::{JobId, NodeId, RunId, Timestamp};

/// A job's run.
pub(super) const JOB_RUN: &str = "SELECT id, run_id FROM jobs WHERE id = $1";
/// Locks a run's row (PostgreSQL; SQLite's `BEGIN IMMEDIATE` holds the database already).
pub(super) const LOCK_RUN: &str = "UPDATE runs SET state = state WHERE id = $1";
/// The compare-and-set of a job: state and lease epoch as decided from; returns the job's
/// run (no row when it missed). On PostgreSQL it takes the job's row lock.
pub(super) const MOVE_JOB: &str = "UPDATE jobs SET state = $4, lease_epoch = $5, updated_at = $6
     WHERE id = $1 AND state = $2 AND lease_epoch = $3 RETURNING id, run_id";
/// A job started again in its run, replacing the job `$7` (which the unique index on
/// `rescheduled_from` lets be replaced once).
pub(super) const INSERT_RESCHEDULED: &str =
    "INSERT INTO jobs (id, run_id, node, state, lease_epoch, created_at, updated_at, attempt,
                       rescheduled_from, reschedule_cause)
     VALUES ($1, $2, $3, $4, 0, $5, $5, $6, $7, $8)";
/// A job's state and epoch, to say what a failed compare-and-set found.
pub(super) const JOB_STATE: &str = "SELECT id, state, lease_epoch FROM jobs WHERE id = $1";
/// The compare-and-set of a node's lifecycle state.
pub(super) const MOVE_NODE: &str = "UPDATE nodes SET state = $3 WHERE name = $1 AND state = $2";
/// A node's state, to say what a failed compare-and-set found.
pub(super) const NODE_STATE: &str = "SELECT name, state FROM nodes WHERE name = $1";
/// The compare-and-set of a run's state; `finished_at` is when it ended.
pub(super) const MOVE_RUN: &str =
    "UPDATE runs SET state = $3, finished_at = $4 WHERE id = $1 AND state = $2";
/// A run's state and how many of its jobs have not ended.
pub(super) static RUN_OPEN_JOBS: LazyLock<String> = LazyLock::new(|| {
    states::sql(
        "SELECT r.id, r.state,
                (SELECT COUNT(*) FROM jobs j WHERE j.run_id = r.id AND j.state IN {open})
                    AS open_jobs
         FROM runs r WHERE r.id = $1",
    )
});

/// `SELECT` of jobs, then a tail.
macro_rules! job_query {
    ($tail:expr) => {
        concat!(
            "SELECT id, run_id, node, state, lease_epoch, created_at, updated_at, attempt,
                    rescheduled_from
             FROM jobs",
            $tail
        )
    };
}

/// `SELECT` of jobs with what their changes are decided from (see [`JobFacts`]), then a tail:
/// a template for `states::sql`.
macro_rules! facts_query {
    ($tail:expr) => {
        concat!(
            "SELECT ",
            facts_columns!(),
            " FROM jobs j JOIN nodes n ON n.name = j.node",
            $tail
        )
    };
}

/// The columns [`job_facts`] reads, of `jobs j` joined with `nodes n`; named so that they
/// never meet a result's (`result_basis` reads both in one row).
macro_rules! facts_columns {
    () => {
        "j.id AS job, j.run_id AS job_run, j.node AS job_node, j.state AS job_state,
         j.lease_epoch AS job_epoch, n.state AS node_state,
         (SELECT COUNT(*) FROM jobs o
          WHERE o.node = j.node AND o.id <> j.id AND o.state IN {active}) AS other_active"
    };
}

/// The most jobs one statement of [`Store::result_bases`] reads (a coalesced batch of results'
/// reads is at most `node_reads::MAX_BATCH`, a thousand).
pub(super) const BASES_PER_STATEMENT: usize = 500;

/// A row of `facts_query!`.
fn job_facts(row: &impl StoreRow) -> Result<JobFacts, StoreError> {
    let f = Fields::new(row, "jobs", &["job"]);
    Ok(JobFacts {
        id: JobId::new(f.text("job")?),
        run: RunId::new(f.text("job_run")?),
        node: NodeId::new(f.text("job_node")?),
        state: f.parse("job_state")?,
        lease_epoch: f.int_as("job_epoch")?,
        node_state: f.parse("node_state")?,
        node_has_other_active_job: f.int_as::<u64>("other_active")? > 0,
    })
}

impl Store {
    /// A run's jobs, by node name.
    pub async fn jobs_of_run(&self, run: &RunId) -> Result<Vec<JobRecord>, StoreError> {
        const SQL: &str = job_query!(" WHERE run_id = $1 ORDER BY node, id");
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(run.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::job)
                .collect()
        })
    }

    /// What `WatchRun` compares to find the jobs of a run that changed since its last look,
    /// in one statement: each job's node, state, lease epoch and number of results (a job
    /// changes only in these). In no particular order.
    ///
    /// The database answers them as JSON arrays of `[id, node, state, lease epoch, results]`
    /// arrays, a row per 500 jobs at most ([`super::json_pieces`]): a run of thousands of
    /// jobs is looked at several times a second while it runs, and each row of an answer is
    /// a hand-off between SQLite's thread and the caller's (a row per job cost ten times the
    /// time). SQLite cuts the pieces by row id, a window function (`ROW_NUMBER`) tripling
    /// the statement's time there; a run's jobs are inserted together, so their row ids run
    /// on.
    pub async fn job_marks_of_run(&self, run: &RunId) -> Result<Vec<JobMark>, StoreError> {
        const SQL: (&str, &str) = (
            "SELECT json_group_array(json_array(j.id, j.node, j.state, j.lease_epoch,
                        (SELECT COUNT(*) FROM step_results r WHERE r.job_id = j.id)))
                    AS marks
             FROM jobs j WHERE j.run_id = $1
             GROUP BY j.rowid / 500",
            "SELECT json_agg(json_build_array(id, node, state, lease_epoch, n_results))::text
                    AS marks
             FROM (SELECT j.id, j.node, j.state, j.lease_epoch,
                          (SELECT COUNT(*) FROM step_results r WHERE r.job_id = j.id)
                              AS n_results,
                          (ROW_NUMBER() OVER () - 1) / 500 AS piece
                   FROM jobs j WHERE j.run_id = $1) AS m
             GROUP BY piece",
        );
        let pieces: Vec<String> = with_pool_sql!(self, SQL, |pool, sql| {
            sqlx::query(sql)
                .bind(run.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Fields::new(row, "jobs", &[]).text("marks"))
                .collect::<Result<_, _>>()?
        });
        let corrupt = |detail: String| StoreError::Corrupt {
            what: format!("jobs of run {run}"),
            detail,
        };
        let marks: Vec<(String, String, String, u64, usize)> =
            super::json_pieces(pieces).map_err(|err| corrupt(err.to_string()))?;
        marks
            .into_iter()
            .map(|(id, node, state, lease_epoch, n_results)| {
                Ok(JobMark {
                    state: state
                        .parse()
                        .map_err(|err| corrupt(format!("job {id}: state: {err}")))?,
                    id: JobId::new(id),
                    node: NodeId::new(node),
                    lease_epoch,
                    n_results,
                })
            })
            .collect()
    }

    /// The jobs of `ids` that exist, in one statement whatever their number; in no
    /// particular order.
    pub async fn jobs_with_ids(&self, ids: &[&JobId]) -> Result<Vec<JobRecord>, StoreError> {
        const SQL: (&str, &str) = in_json_list!(job_query!(" WHERE id"), "$1", "");
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = super::json_list(ids.iter().map(|id| id.as_str()));
        with_pool_sql!(self, SQL, |pool, sql| {
            sqlx::query(sql)
                .bind(&ids)
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::job)
                .collect()
        })
    }

    /// One job.
    pub async fn get_job(&self, job: &JobId) -> Result<Option<JobRecord>, StoreError> {
        const SQL: &str = job_query!(" WHERE id = $1");
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(job.as_str())
                .fetch_optional(pool)
                .await?
                .map(|row| rows::job(&row))
                .transpose()
        })
    }

    /// The attempts of `job` back to the first: the job itself first, then the job it was
    /// rescheduled from, and so on; each with its node and attempt.
    pub async fn attempts_of_job(
        &self,
        job: &JobId,
    ) -> Result<Vec<(JobId, NodeId, u32)>, StoreError> {
        const SQL: &str = "WITH RECURSIVE chain (id, node, attempt, prev, depth) AS (
                 SELECT id, node, attempt, rescheduled_from, 0 FROM jobs WHERE id = $1
                 UNION ALL
                 SELECT j.id, j.node, j.attempt, j.rescheduled_from, c.depth + 1
                 FROM jobs j JOIN chain c ON j.id = c.prev
             )
             SELECT id, node, attempt FROM chain ORDER BY depth";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(job.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let f = Fields::new(row, "jobs", &["id"]);
                    Ok((
                        JobId::new(f.text("id")?),
                        NodeId::new(f.text("node")?),
                        f.int_as("attempt")?,
                    ))
                })
                .collect()
        })
    }

    /// How many pending jobs wait for `node`.
    pub async fn pending_jobs_of_node(&self, node: &NodeId) -> Result<usize, StoreError> {
        const SQL: &str = "SELECT COUNT(*) AS n FROM jobs WHERE node = $1 AND state = $2";
        with_pool!(self, |pool| {
            let row = sqlx::query(SQL)
                .bind(node.as_str())
                .bind(JobState::Pending.as_str())
                .fetch_one(pool)
                .await?;
            rows::Fields::new(&row, "jobs", &[]).int_as("n")
        })
    }

    /// Every pending job with its node.
    pub async fn pending_jobs(&self) -> Result<Vec<PendingJob>, StoreError> {
        const SQL: &str = "SELECT j.id, j.run_id, j.node, j.created_at, r.purpose
             FROM jobs j JOIN runs r ON r.id = j.run_id WHERE j.state = $1
             ORDER BY j.created_at, j.id";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(JobState::Pending.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::pending_job)
                .collect()
        })
    }

    /// The jobs assigned to `node` and not accepted yet, by id (read through the index on
    /// node and state: a reconnecting agent's, not the whole fleet's).
    pub async fn assigned_jobs_of_node(&self, node: &NodeId) -> Result<Vec<JobRecord>, StoreError> {
        const SQL: &str = job_query!(" WHERE node = $1 AND state = $2 ORDER BY id");
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(node.as_str())
                .bind(JobState::Assigned.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::job)
                .collect()
        })
    }

    /// Every assigned or running job.
    pub async fn active_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        static SQL: LazyLock<String> =
            LazyLock::new(|| states::sql(job_query!(" WHERE state IN {active} ORDER BY node, id")));
        with_pool!(self, |pool| {
            sqlx::query(SQL.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::job)
                .collect()
        })
    }

    /// What a change of `job` is decided from: the job and its node's state.
    pub async fn job_facts(&self, job: &JobId) -> Result<Option<JobFacts>, StoreError> {
        static SQL: LazyLock<String> =
            LazyLock::new(|| states::sql(facts_query!(" WHERE j.id = $1")));
        with_pool!(self, |pool| {
            sqlx::query(SQL.as_str())
                .bind(job.as_str())
                .fetch_optional(pool)
                .await?
                .map(|row| job_facts(&row))
                .transpose()
        })
    }

    /// [`Store::job_facts`] of each of `jobs` that exists, by id: one statement per
    /// [`RESULTS_OF_JOBS_MAX`](super::results::RESULTS_OF_JOBS_MAX) jobs (a scheduling pass
    /// reads the facts of every job it assigns, a thousand at a run's start).
    pub async fn job_facts_of_jobs(
        &self,
        jobs: &[&JobId],
    ) -> Result<HashMap<JobId, JobFacts>, StoreError> {
        static SQL: LazyLock<(String, String)> = LazyLock::new(|| {
            let (sqlite, postgres) = in_json_list!(facts_query!(" WHERE j.id"), "$1", "");
            (states::sql(sqlite), states::sql(postgres))
        });
        let mut facts = HashMap::with_capacity(jobs.len());
        for chunk in jobs.chunks(super::results::RESULTS_OF_JOBS_MAX) {
            let ids = super::json_list(chunk.iter().map(|id| id.as_str()));
            let rows: Vec<JobFacts> = with_pool_sql!(self, *SQL, |pool, sql| {
                sqlx::query(sql)
                    .bind(&ids)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(job_facts)
                    .collect::<Result<_, _>>()?
            });
            facts.extend(rows.into_iter().map(|job| (job.id.clone(), job)));
        }
        Ok(facts)
    }

    /// What deciding a result of `job` reads (its [`Store::job_facts`] and the summaries of
    /// its results, `rows::step_result_summary`), in one statement: [`Store::result_bases`] of one
    /// job. Every result an agent reports is decided from these.
    pub async fn result_basis(
        &self,
        job: &JobId,
    ) -> Result<Option<(JobFacts, Vec<StepResult>)>, StoreError> {
        Ok(self
            .result_bases(std::slice::from_ref(job))
            .await?
            .pop()
            .map(|(_, basis)| basis))
    }

    /// [`Store::result_basis`] of each of `jobs` that exists, in one statement per
    /// `BASES_PER_STATEMENT` (500) jobs: a row per stored result (one with the result's columns
    /// null for a job with none), the job's facts in each; in no particular order of jobs.
    pub async fn result_bases(
        &self,
        jobs: &[JobId],
    ) -> Result<Vec<(JobId, (JobFacts, Vec<StepResult>))>, StoreError> {
        static SQL: LazyLock<(String, String)> = LazyLock::new(|| {
            let (sqlite, postgres) = in_json_list!(
                concat!(
                    "SELECT ",
                    facts_columns!(),
                    ", r.job_id, r.step_index, r.attempt, r.lease_epoch, r.step_name, r.outcome,
                       r.exit_code, r.started_at, r.finished_at, r.measurements, r.message,
                       r.sub_results
                     FROM jobs j JOIN nodes n ON n.name = j.node
                                 LEFT JOIN step_results r ON r.job_id = j.id
                     WHERE j.id"
                ),
                "$1",
                " ORDER BY j.id, r.step_index, r.attempt, r.lease_epoch"
            );
            (states::sql(sqlite), states::sql(postgres))
        });
        let mut bases: Vec<(JobId, (JobFacts, Vec<StepResult>))> = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(BASES_PER_STATEMENT) {
            let ids = super::json_list(chunk.iter().map(|id| id.as_str()));
            with_pool_sql!(self, *SQL, |pool, sql| {
                for row in sqlx::query(sql).bind(&ids).fetch_all(pool).await? {
                    let facts = job_facts(&row)?;
                    let is_next = bases.last().is_none_or(|(job, _)| *job != facts.id);
                    if is_next {
                        bases.push((facts.id.clone(), (facts, Vec::new())));
                    }
                    let f = Fields::new(&row, "step_results", &["job_id"]);
                    if f.opt_text("job_id")?.is_some()
                        && let Some((_, (_, results))) = bases.last_mut()
                    {
                        results.push(rows::step_result_summary(&row)?);
                    }
                }
            });
        }
        Ok(bases)
    }

    /// [`Store::job_facts`] of every job of a run, by node name.
    pub async fn job_facts_of_run(&self, run: &RunId) -> Result<Vec<JobFacts>, StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            states::sql(facts_query!(" WHERE j.run_id = $1 ORDER BY j.node, j.id"))
        });
        with_pool!(self, |pool| {
            sqlx::query(SQL.as_str())
                .bind(run.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(job_facts)
                .collect()
        })
    }

    /// [`Store::job_facts`] of the node's active jobs.
    pub async fn active_job_facts_of_node(
        &self,
        node: &NodeId,
    ) -> Result<Vec<JobFacts>, StoreError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            states::sql(facts_query!(
                " WHERE j.node = $1 AND j.state IN {active} ORDER BY j.id"
            ))
        });
        with_pool!(self, |pool| {
            sqlx::query(SQL.as_str())
                .bind(node.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(job_facts)
                .collect()
        })
    }

    /// Applies a job change the domain decided (an assignment, an acceptance, a reassignment
    /// after the agent lost the job): one transaction, `Conflict` when the job or its node
    /// moved since (reload and decide again); then the run's end when the job was its last.
    pub async fn apply_job_change(
        &self,
        change: &JobChange,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let ended = writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let ended = apply_job_change!(tx, change, now);
            tx.commit().await?;
            Ok(ended)
        })?;
        self.end_runs_if_done(&ended.into_iter().collect(), now)
            .await;
        Ok(())
    }

    /// Applies an assignment the domain decided, as [`Store::apply_job_change`] does, after
    /// checking under the run's lock that it keeps the run within its plan's `max-concurrent`
    /// (`limits`) for the node's `labels`: replicas assigning jobs of one run at once are
    /// serialized by that lock, so neither puts the run over the limit. `Conflict` naming the
    /// label when it would (the job waits for one of the run's jobs there to end).
    pub async fn assign_job_within(
        &self,
        change: &JobChange,
        now: Timestamp,
        limits: &std::collections::BTreeMap<String, u32>,
        labels: &tollgate_domain::fleet::Labels,
    ) -> Result<(), StoreError> {
        static ACTIVE_LABELS: LazyLock<String> = LazyLock::new(|| {
            states::sql(
                "SELECT n.labels FROM jobs j JOIN nodes n ON n.name = j.node \
                 WHERE j.run_id = $1 AND j.state IN {active}",
            )
        });
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let run_id = lock_job_run!(tx, &change.job);
            let active: Vec<tollgate_domain::fleet::Labels> = sqlx::query(ACTIVE_LABELS.as_str())
                .bind(&run_id)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| rows::Fields::new(row, "nodes", &[]).json("labels"))
                .collect::<Result<_, _>>()?;
            if let Err(why) = tollgate_domain::scheduler::within_limits(limits, labels, &active) {
                return Err(StoreError::Conflict {
                    what: format!("job {}", change.job),
                    detail: why,
                });
            }
            // An assignment ends no job: no run's end to decide.
            let _ = apply_job_change!(tx, change, now);
            tx.commit().await?;
            Ok(())
        })
    }

    /// A node's lease ran out: its active jobs are lost (`jobs`, decided by
    /// `tollgate_domain::job::decide` with `LeaseExpired`) and the node moves as
    /// `tollgate_domain::node::next_state` decided (`node`; `None` when its state stays, as a
    /// cordoned node's does). One transaction; `Conflict` when anything moved meanwhile.
    pub async fn expire_lease(
        &self,
        node: Option<&NodeChange>,
        jobs: &[JobChange],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let ended = writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let mut ended = std::collections::BTreeSet::new();
            // Jobs first, node last: the lock order of every job change (run, job, node).
            for change in jobs {
                ended.extend(apply_job_change!(tx, change, now));
            }
            if let Some(node) = node {
                move_node!(tx, node);
            }
            tx.commit().await?;
            Ok(ended)
        })?;
        self.end_runs_if_done(&ended, now).await;
        Ok(())
    }

    /// A node's agent is back (a heartbeat after the node was `unreachable`): the node moves
    /// as `tollgate_domain::node::next_state` decided, if it is still in the state decided
    /// from (`Conflict` otherwise).
    pub async fn node_reconnected(&self, node: &NodeChange) -> Result<(), StoreError> {
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            move_node!(tx, node);
            tx.commit().await?;
            Ok(())
        })
    }
}
