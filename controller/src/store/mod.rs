//! The store: every SQL statement of the controller lives under this module.
//!
//! **Boundary:** only `store/` writes SQL. Two backends, one API: [`Store`] wraps a typed
//! SQLite or PostgreSQL pool (never `sqlx::Any`), each with its own migrations folder
//! (`migrations/sqlite`, `migrations/postgres`, same version numbers). Most statements are
//! shared as written (`$N` placeholders, `ON CONFLICT`, `RETURNING`).
//!
//! **Invariant:** every method that changes more than one row does it in one transaction, so
//! nothing half-written is ever left behind; a result is committed before it is acknowledged.
//! Every transaction is a `tx::Tx`, which commits or rolls back and never returns a
//! connection in an unknown state to the pool; every write method runs through `writing!`,
//! which tells `writes.rs` whether the database accepted it ([`Store::watch_writes`]).
//!
//! How values are stored, the same on both backends: domain structs as JSON text (serde_json,
//! decoded here so that a bad document is a [`StoreError::Corrupt`] naming its row); enums by
//! their `as_str()` names; timestamps with microsecond precision (PostgreSQL's), so a value
//! reads back the same from either backend. Each method's body is written once and compiled
//! for both pools (see `with_pool!`); `rows.rs` decodes rows of either backend.
//! [`testing`] gives other crates' tests a PostgreSQL schema of their own.

mod connect;
pub mod pg_copy;
mod rows;
mod states;
pub mod testing;
mod tx;
mod writes;

pub use connect::sqlite_file;
pub use report_rows::{NodeEvidence, NodeJob, ReportRows};
pub use writes::{WRITES_CONFIRMED_AFTER, Writes};

use chrono::SubsecRound;
use connect::Begin;
use thiserror::Error;
use tollgate_domain::gate::GatePolicy;
use tollgate_domain::job::JobState;
use tollgate_domain::plan::Plan;
use tollgate_domain::result::StepResult;
use tollgate_domain::{JobId, NodeId, PlanVersion, ReleaseId, RunId, Timestamp};

/// What went wrong in the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The row exists already (unique name taken).
    #[error("{what} already exists")]
    AlreadyExists {
        /// What, for example "release r550".
        what: String,
    },
    /// The row to change does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What, for example "job job-1f2e".
        what: String,
    },
    /// A compare-and-set found another state than expected (someone else changed it first).
    #[error("{what} changed concurrently: {detail}")]
    Conflict {
        /// What.
        what: String,
        /// Expected versus found.
        detail: String,
    },
    /// A stored value could not be decoded (a JSON column, an unknown enum text).
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// What.
        what: String,
        /// Why.
        detail: String,
    },
    /// The database URL is not one this controller can use.
    #[error("unsupported database url '{0}': use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    /// Applying migrations failed.
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database said no.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether the database itself failed (connection lost, disk full, read-only, pool
    /// exhausted) rather than the request: the caller should retry later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Database(err) if writes::unavailable(err))
    }
}

/// Whether a result upload was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Stored now.
    Inserted,
    /// The same (job, step, attempt, epoch) was stored before; nothing changed.
    Duplicate,
}

/// What [`Store::refresh_evidence`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// The runs, the jobs or the release differed: the evidence was loaded whole again.
    Reloaded,
    /// Only these jobs (run index, job index) changed; the rest is as it was.
    Changed(Vec<(usize, usize)>),
}

pub use tollgate_domain::run::{RunPurpose, RunState};

/// A stored run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// Id.
    pub id: RunId,
    /// Release.
    pub release: ReleaseId,
    /// Plan name.
    pub plan_name: String,
    /// Pinned plan version.
    pub plan_version: PlanVersion,
    /// Milestone.
    pub milestone: String,
    /// State.
    pub state: RunState,
    /// Start.
    pub created_at: Timestamp,
    /// End of its last job.
    pub finished_at: Option<Timestamp>,
    /// What it is for: a health check's results are never evidence.
    pub purpose: RunPurpose,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// Id.
    pub id: JobId,
    /// Run.
    pub run_id: RunId,
    /// Node.
    pub node: NodeId,
    /// State.
    pub state: JobState,
    /// Fencing token, incremented on every assignment.
    pub lease_epoch: u64,
    /// Created.
    pub created_at: Timestamp,
    /// Last state change.
    pub updated_at: Timestamp,
    /// Which attempt of its node's share of the run: 1, or more once rescheduled
    /// (`tollgate_domain::reschedule`).
    pub attempt: u32,
    /// The job this one replaced, when it was rescheduled.
    pub rescheduled_from: Option<JobId>,
}

impl JobRecord {
    /// A new run's job `id` for `node`: pending, never assigned, its first attempt.
    pub fn first_pending(id: JobId, run: &RunRecord, node: NodeId, now: Timestamp) -> Self {
        Self {
            id,
            run_id: run.id.clone(),
            node,
            state: JobState::Pending,
            lease_epoch: 0,
            created_at: now,
            updated_at: now,
            attempt: 1,
            rescheduled_from: None,
        }
    }
}

/// A job as `WatchRun` compares it with what it last sent ([`Store::job_marks_of_run`]): the
/// only things about a job that change, and its node (whose customer may see it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMark {
    /// Id.
    pub id: JobId,
    /// Node.
    pub node: NodeId,
    /// State.
    pub state: JobState,
    /// Fencing token.
    pub lease_epoch: u64,
    /// How many results it has.
    pub n_results: usize,
}

/// A stored plan version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPlan {
    /// The plan.
    pub plan: Plan,
    /// Its version.
    pub version: PlanVersion,
    /// The YAML it was applied from.
    pub source: String,
    /// First applied.
    pub created_at: Timestamp,
}

/// A stored gate policy version.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredGate {
    /// The policy.
    pub policy: GatePolicy,
    /// Its version.
    pub version: String,
    /// The YAML it was applied from.
    pub source: String,
    /// Applied.
    pub created_at: Timestamp,
}

/// The controller's database: SQLite (default, one file) or PostgreSQL. Clones share the
/// pool and what the store knows about [`Writes`].
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    writes: std::sync::Arc<writes::WriteHealth>,
    /// The plan version each run pinned, as read once (`Store::pinned_plan`).
    pinned: std::sync::Arc<plans::Pinned>,
    /// Whether issue changes write an `issue_webhook_outbox` row (`--issue-webhook` is set).
    issue_webhook: bool,
}

/// The typed pool a [`Store`] holds.
#[derive(Debug, Clone)]
pub enum Pool {
    /// Embedded SQLite.
    Sqlite(sqlx::SqlitePool),
    /// PostgreSQL.
    Postgres(sqlx::PgPool),
}

impl Pool {
    /// This backend's text of a statement pair `(SQLite, PostgreSQL)` ([`in_json_list!`],
    /// answers built as JSON).
    fn sql<'a>(&self, pair: (&'a str, &'a str)) -> &'a str {
        match self {
            Pool::Sqlite(_) => pair.0,
            Pool::Postgres(_) => pair.1,
        }
    }
}

/// Runs the same code on whichever typed pool the store holds. The body is compiled once per
/// backend, so every statement in it is bound and decoded with that backend's own types. It
/// looks like a closure but is not one: `?` and `return` in it act on the calling method.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// [`with_pool!`] for a method that writes: every write goes through here. `$body` evaluates
/// to the method's `Result`; `?` and `return` in it end the body, not the method, so that its
/// outcome is always seen (see `writes.rs`) before the method returns it. Transactions in it
/// are begun with [`Begin::begin_write`], whose [`tx::Tx`] rolls back or discards its
/// connection on every path that does not commit.
macro_rules! writing {
    ($store:expr, |$pool:ident| $body:expr) => {{
        let outcome: Result<_, StoreError> = async {
            let outcome: Result<_, StoreError> = with_pool!($store, |$pool| $body);
            outcome
        }
        .await;
        $store.writes.observe(&outcome);
        outcome
    }};
}

/// A statement taking a list of names or ids as one JSON array of strings bound at `$param`,
/// its text for each backend: `(SQLite, PostgreSQL)`. `$before IN (the list) $after`: one
/// statement whatever the length of the list. Used with [`with_pool_sql!`].
macro_rules! in_json_list {
    ($before:expr, $param:literal, $after:expr) => {
        (
            concat!(
                $before,
                " IN (SELECT value FROM json_each(",
                $param,
                "))",
                $after
            ),
            concat!(
                $before,
                " IN (SELECT jsonb_array_elements_text(",
                $param,
                "::jsonb))",
                $after
            ),
        )
    };
}

/// [`with_pool!`] with `$sql` the text of a statement pair ([`in_json_list!`]) for the
/// pool's backend.
macro_rules! with_pool_sql {
    ($store:expr, $pair:expr, |$pool:ident, $sql:ident| $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => {
                let $sql: &str = &$pair.0;
                $body
            }
            Pool::Postgres($pool) => {
                let $sql: &str = &$pair.1;
                $body
            }
        }
    };
}

/// The items of a JSON answer, read in pieces, as one list in the pieces' order.
///
/// Reads of thousands of jobs or nodes made several times a second are answered by the
/// database as JSON arrays, each row of an answer being a hand-off between SQLite's thread
/// and the caller's. They are cut into pieces of a few hundred items (a statement per
/// piece of the list asked for; `GROUP BY rowid / SIZE`; `(ROW_NUMBER() OVER (…) - 1) / SIZE
/// AS piece … GROUP BY piece` where the order matters), each under 64 KiB at the usual sizes
/// of its items: glibc serves a block over its mmap threshold (128 KiB at
/// start) from its own mapping and, once such a block is freed, raises the threshold to its
/// size for good, keeping more heap from then on (with one array a run, a text of hundreds of
/// KiB on SQLite's side, in sqlx's copy and in the caller's, several times a second).
fn json_pieces<T: serde::de::DeserializeOwned>(
    pieces: impl IntoIterator<Item = String>,
) -> Result<Vec<T>, serde_json::Error> {
    let mut items = Vec::new();
    for piece in pieces {
        items.extend(serde_json::from_str::<Vec<T>>(&piece)?);
    }
    Ok(items)
}

/// A list of names or ids as the JSON array [`in_json_list!`] statements bind.
fn json_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.into_iter().collect();
    serde_json::to_string(&items).expect("a list of strings serializes")
}

/// Raw rows [`decode_in_chunks`] takes from a stream before it decodes them.
const DECODE_CHUNK: usize = 128;

/// Decodes each row of `rows` with `decode` and hands it to `each`, taking up to
/// [`DECODE_CHUNK`] raw rows from the stream before decoding them.
///
/// Between the two extremes: `fetch_all` holds every raw row of a read at once (a thousand
/// results with their telemetry summaries and inventories are tens of MiB), and decoding each
/// row as it arrives left sqlx's SQLite worker blocked on a full row channel after every row,
/// woken for the next: a gate's first load of 100,000 small results took 2.6–3.8 s that way
/// against 1.6 s read whole (`gate-bench`, BENCHMARKS.md). A chunk is taken as fast as the
/// worker sends, and at most a chunk's raw rows are held.
async fn decode_in_chunks<R, T>(
    mut rows: impl futures::Stream<Item = Result<R, sqlx::Error>> + Unpin,
    decode: impl Fn(&R) -> Result<T, StoreError>,
    mut each: impl FnMut(T),
) -> Result<(), StoreError> {
    use futures::TryStreamExt as _;
    let mut chunk = Vec::with_capacity(DECODE_CHUNK);
    loop {
        while chunk.len() < DECODE_CHUNK {
            match rows.try_next().await? {
                Some(row) => chunk.push(row),
                None => break,
            }
        }
        let last = chunk.len() < DECODE_CHUNK;
        for row in chunk.drain(..) {
            each(decode(&row)?);
        }
        if last {
            return Ok(());
        }
    }
}

/// The latest qualification run (health checks are never evidence) that was not cancelled of
/// each plan of release `$1` at milestone `$2`;
/// "latest" is the newest `created_at`, then the last inserted.
macro_rules! latest_runs_cte {
    () => {
        "WITH latest AS (
            SELECT r.id FROM runs r
            WHERE r.release = $1 AND r.milestone = $2 AND r.state <> 'cancelled'
              AND r.purpose = 'qualification'
              AND r.seq = (
                SELECT r2.seq FROM runs r2
                WHERE r2.release = r.release AND r2.milestone = r.milestone
                  AND r2.plan_name = r.plan_name AND r2.state <> 'cancelled'
                  AND r2.purpose = 'qualification'
                ORDER BY r2.created_at DESC, r2.seq DESC
                LIMIT 1))"
    };
}

/// `SELECT` of a node with its active job as `current_job`, then `$tail`: a template for
/// `states::sql`.
macro_rules! node_query {
    ($tail:expr) => {
        concat!(
            "SELECT n.name, n.labels, n.reported_labels, n.inventory, n.state, n.health,
                    n.health_reason, h.last_seen_at,
                    (SELECT j.id FROM jobs j
                     WHERE j.node = n.name AND j.state IN {active}
                     ORDER BY j.updated_at DESC LIMIT 1) AS current_job
             FROM nodes n LEFT JOIN node_heartbeats h ON h.node = n.name",
            $tail
        )
    };
}

/// `SELECT` of step results, then `$tail`.
macro_rules! result_query {
    ($tail:expr) => {
        concat!(
            "SELECT job_id, step_index, attempt, lease_epoch, step_name, outcome, exit_code,
                    started_at, finished_at, measurements, telemetry, events, inventory,
                    log_tail, message, sub_results, inventory_at_end, series, digest
             FROM step_results",
            $tail
        )
    };
}

/// `SELECT` of step results as gate evidence ([`rows::evidence_result`]), then `$tail`: every
/// column but the series, which gates never read (half of a result's stored bytes), except in a
/// row without a stored digest (stored before digests were), which the gate digests whole.
macro_rules! evidence_query {
    ($tail:expr) => {
        concat!(
            "SELECT job_id, step_index, attempt, lease_epoch, step_name, outcome, exit_code,
                    started_at, finished_at, measurements, telemetry, events, inventory,
                    log_tail, message, sub_results, inventory_at_end,
                    (SELECT series WHERE digest IS NULL) AS series, digest
             FROM step_results",
            $tail
        )
    };
}

/// `SELECT` of the columns of step results that [`rows::step_result_summary`] reads, then
/// `$tail`.
macro_rules! result_summary_query {
    ($tail:expr) => {
        concat!(
            "SELECT job_id, step_index, attempt, lease_epoch, step_name, outcome, exit_code,
                    started_at, finished_at, measurements, message, sub_results
             FROM step_results",
            $tail
        )
    };
}

/// Inserts run `$run` and its jobs `$jobs` inside the open transaction `$tx` (no audit entry:
/// the caller writes the one that says why the run exists).
macro_rules! insert_run {
    ($tx:expr, $run:expr, $jobs:expr) => {{
        const RUN: &str =
            "INSERT INTO runs (id, release, plan_name, plan_version, milestone, state,
                               created_at, finished_at, purpose)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        const JOB: &str =
            "INSERT INTO jobs (id, run_id, node, state, lease_epoch, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)";
        let run: &$crate::store::RunRecord = $run;
        sqlx::query(RUN)
            .bind(run.id.as_str())
            .bind(run.release.as_str())
            .bind(&run.plan_name)
            .bind(run.plan_version.as_str())
            .bind(&run.milestone)
            .bind(run.state.as_str())
            .bind($crate::store::micros(run.created_at))
            .bind(run.finished_at.map($crate::store::micros))
            .bind(run.purpose.as_str())
            .execute(&mut *$tx)
            .await
            .map_err(|err| {
                $crate::store::classify(
                    err,
                    &format!("run {}", run.id),
                    &format!(
                        "release {} or plan {}@{}",
                        run.release, run.plan_name, run.plan_version
                    ),
                )
            })?;
        for job in $jobs {
            let job: &$crate::store::JobRecord = job;
            sqlx::query(JOB)
                .bind(job.id.as_str())
                .bind(job.run_id.as_str())
                .bind(job.node.as_str())
                .bind(job.state.as_str())
                .bind($crate::store::epoch_to_i64(job.lease_epoch, &job.id)?)
                .bind($crate::store::micros(job.created_at))
                .bind($crate::store::micros(job.updated_at))
                .execute(&mut *$tx)
                .await
                .map_err(|err| {
                    $crate::store::classify(
                        err,
                        &format!("job {}", job.id),
                        &format!("node {} or run {}", job.node, job.run_id),
                    )
                })?;
        }
    }};
}

/// Appends an audit entry inside the open transaction `$tx`, chained after the head, whose
/// row it locks first: concurrent writers queue on it (PostgreSQL; SQLite's `BEGIN
/// IMMEDIATE` already serializes them), so the chain never forks.
macro_rules! append_audit {
    ($tx:expr, $note:expr) => {{
        let note: &$crate::store::AuditNote = $note;
        sqlx::query($crate::store::audit::LOCK_HEAD)
            .execute(&mut *$tx)
            .await?;
        let head = sqlx::query($crate::store::audit::READ_HEAD)
            .fetch_one(&mut *$tx)
            .await?;
        let entry = $crate::store::audit::chained(&head, note)?;
        sqlx::query($crate::store::audit::INSERT_ENTRY)
            .bind($crate::store::audit::seq_to_i64(entry.seq)?)
            .bind(entry.at)
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.subject)
            .bind(note.release.as_ref().map(|release| release.as_str()))
            .bind(&entry.details)
            .bind(&entry.prev_hash)
            .bind(&entry.hash)
            .execute(&mut *$tx)
            .await?;
        sqlx::query($crate::store::audit::MOVE_HEAD)
            .bind($crate::store::audit::seq_to_i64(entry.seq)?)
            .bind(&entry.hash)
            .execute(&mut *$tx)
            .await?;
        entry
    }};
}

/// Why a compare-and-set on node `$node`'s state `$expected` changed no row, read in the
/// open transaction `$tx`: `NotFound` when the node is gone, else `Conflict` naming the state
/// expected and the one found. A compare-and-set on more than the state gives what its miss
/// means when the node is still in `$expected` (`$unchanged`, `Some` detail).
macro_rules! node_state_conflict {
    ($tx:expr, $node:expr, $expected:expr) => {
        node_state_conflict!($tx, $node, $expected, None::<&str>)
    };
    ($tx:expr, $node:expr, $expected:expr, $unchanged:expr) => {{
        let node: &tollgate_domain::NodeId = $node;
        let expected: tollgate_domain::fleet::NodeState = $expected;
        let unchanged: Option<&str> = $unchanged;
        let found = sqlx::query($crate::store::jobs::NODE_STATE)
            .bind(node.as_str())
            .fetch_optional(&mut *$tx)
            .await?
            .map(|row| $crate::store::rows::Fields::new(&row, "nodes", &["name"]).text("state"))
            .transpose()?;
        match (found, unchanged) {
            (None, _) => $crate::store::StoreError::NotFound {
                what: format!("node {node}"),
            },
            (Some(found), Some(unchanged)) if found == expected.as_str() => {
                $crate::store::StoreError::Conflict {
                    what: format!("node {node}"),
                    detail: unchanged.to_owned(),
                }
            }
            (Some(found), _) => $crate::store::StoreError::Conflict {
                what: format!("node {node}"),
                detail: format!("expected state {expected}, found {found}"),
            },
        }
    }};
}

/// The compare-and-set of a decided [`tollgate_domain::job::NodeChange`] inside the open
/// transaction `$tx`: `Conflict` when the node is no longer in the state decided from.
macro_rules! move_node {
    ($tx:expr, $node:expr) => {{
        let node: &tollgate_domain::job::NodeChange = $node;
        let n_rows = sqlx::query($crate::store::jobs::MOVE_NODE)
            .bind(node.node.as_str())
            .bind(node.from.as_str())
            .bind(node.to.as_str())
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        if n_rows == 0 {
            return Err(node_state_conflict!($tx, &node.node, node.from));
        }
    }};
}

/// Binds a result's row to `$query` in `step_results`' column order (job, step index,
/// attempt, lease epoch, step name, outcome, exit code, start, end, measurements, telemetry,
/// events, inventory, log tail, message, recorded at `$now`, sub-results, inventory at end,
/// series, digest): `results::insert_result!`'s statement, or a row of SQLite's batch insert.
/// `$columns` are the result's `results::ResultColumns`; returns when its epoch is too large.
macro_rules! bind_result_row {
    ($query:expr, $result:expr, $columns:expr, $now:expr) => {{
        let result: &tollgate_domain::result::StepResult = $result;
        let columns: &$crate::store::results::ResultColumns = $columns;
        $query
            .bind(result.job_id.as_str())
            .bind(i64::from(result.step_index))
            .bind(i64::from(result.attempt))
            .bind($crate::store::epoch_to_i64(
                result.lease_epoch,
                &result.job_id,
            )?)
            .bind($crate::store::text(&result.step_name))
            .bind(result.outcome.as_str())
            .bind(result.exit_code.map(i64::from))
            .bind($crate::store::micros(result.started_at))
            .bind($crate::store::micros(result.finished_at))
            .bind(columns.measurements.as_str())
            .bind(columns.telemetry.as_str())
            .bind(columns.events.as_str())
            .bind(columns.inventory.as_str())
            .bind($crate::store::text(&result.log_tail))
            .bind($crate::store::text(&result.message))
            .bind($crate::store::micros($now))
            .bind(columns.sub_results.as_str())
            .bind(columns.inventory_at_end.as_str())
            .bind(columns.series.as_str())
            .bind(columns.digest.as_str())
    }};
}

/// Binds an [`EncodedRegistration`] decided at `$now` to `$query` in its statement's order:
/// `nodes::REGISTER_NEW`'s for a new node, `nodes::REGISTER_KNOWN`'s for a known one (a row of
/// their many-node forms alike).
macro_rules! bind_registration {
    ($query:expr, $registration:expr, $now:expr) => {{
        let registration: &$crate::store::EncodedRegistration = $registration;
        let query = $query
            .bind(registration.node.as_str())
            .bind(&registration.labels)
            .bind(&registration.inventory)
            .bind(registration.gpu_source);
        match &registration.registration {
            $crate::store::Registration::New(state) => query
                .bind(state.as_str())
                .bind(tollgate_domain::fleet::Health::Good.as_str())
                .bind(&registration.token_hash)
                .bind($crate::store::micros($now))
                .bind(&registration.reported),
            $crate::store::Registration::Known {
                from,
                to,
                stored_token_hash,
            } => query
                .bind(&registration.token_hash)
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(&registration.reported)
                .bind(stored_token_hash),
        }
    }};
}

/// Why an [`EncodedRegistration`] whose statement changed no row inside the open transaction
/// `$tx` missed: a new node's name was taken meanwhile (`Conflict`); a known node left the
/// state it was decided from, or its token was replaced (`Conflict`), or it is gone
/// (`NotFound`), read from the node as it is now.
macro_rules! registration_missed {
    ($tx:expr, $registration:expr) => {{
        let registration: &$crate::store::EncodedRegistration = $registration;
        match &registration.registration {
            $crate::store::Registration::New(_) => {
                $crate::store::nodes::new_node_taken(&registration.node)
            }
            $crate::store::Registration::Known { from, .. } => node_state_conflict!(
                $tx,
                &registration.node,
                *from,
                Some($crate::store::nodes::TOKEN_REPLACED)
            ),
        }
    }};
}

/// Applies an [`EncodedRegistration`] at `$now` inside the open transaction `$tx`: a new
/// node's insert (`Conflict` when another registration inserted it meanwhile) or a known
/// one's update with a compare-and-set on the state it was decided from (`Conflict` or
/// `NotFound` otherwise), and its last heartbeat (registering is a sign of life).
macro_rules! apply_registration {
    ($tx:expr, $registration:expr, $now:expr) => {{
        let registration: &$crate::store::EncodedRegistration = $registration;
        let sql = match &registration.registration {
            $crate::store::Registration::New(_) => $crate::store::nodes::REGISTER_NEW,
            $crate::store::Registration::Known { .. } => $crate::store::nodes::REGISTER_KNOWN,
        };
        let applied = bind_registration!(sqlx::query(sql), registration, $now)
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        if applied == 0 {
            return Err(registration_missed!($tx, registration));
        }
        sqlx::query($crate::store::nodes::RECORD_HEARTBEAT)
            .bind(registration.node.as_str())
            .bind($crate::store::micros($now))
            .execute(&mut *$tx)
            .await?;
    }};
}

/// Evaluates to the id of job `$job`'s run, read in the transaction `$tx` without locking
/// the run; returns `NotFound` from the method when the job does not exist.
macro_rules! job_run {
    ($tx:expr, $job:expr) => {{
        let job: &tollgate_domain::JobId = $job;
        let Some(row) = sqlx::query($crate::store::jobs::JOB_RUN)
            .bind(job.as_str())
            .fetch_optional(&mut *$tx)
            .await?
        else {
            return Err($crate::store::StoreError::NotFound {
                what: format!("job {job}"),
            });
        };
        $crate::store::rows::Fields::new(&row, "jobs", &["id"]).text("run_id")?
    }};
}

/// Takes the lock of job `$job`'s run in the transaction `$tx` (the first lock of the order
/// run, jobs, node) and evaluates to the run's id; returns `NotFound` from the method when
/// the job does not exist. Only what is decided from the run's other jobs while they may
/// change takes it (an assignment within `max-concurrent`); a job's change does not.
macro_rules! lock_job_run {
    ($tx:expr, $job:expr) => {{
        let run_id = job_run!($tx, $job);
        sqlx::query($crate::store::jobs::LOCK_RUN)
            .bind(&run_id)
            .execute(&mut *$tx)
            .await?;
        run_id
    }};
}

/// Applies a decided [`tollgate_domain::job::JobChange`] inside the open transaction `$tx`:
/// a compare-and-set of the job's state and lease epoch, then of its node's state when the
/// change moves the node; `Conflict` (the caller rolls back, reloads and decides again) when
/// either moved since it was decided. Evaluates to the job's run when the change ended the
/// job (else `None`): the caller decides that run's end after its commit
/// ([`Store::end_runs_if_done`]), never inside the transaction.
///
/// Why after: "was this the run's last open job" must see every other job of the run
/// committed. Deciding it inside the transaction would need the run's row locked by every
/// job end, so that the jobs of one run queue behind each other's commits (on PostgreSQL,
/// 18 ms each: BENCHMARKS.md). Read after the commit instead, the last job to commit always
/// sees no open job (an ended job never opens again, and a rescheduled job is inserted in
/// its predecessor's transaction), and the run's compare-and-set on its state lets one of
/// two jobs committing at once end it. A controller that stops between the commit and the
/// run's end leaves a run `running` with no open job: the lease watchdog's leader ends it
/// ([`Store::end_runs_left_running`]), at its first tick after a restart too.
///
/// Locks are taken in one order everywhere (run, then jobs, then nodes), so concurrent
/// changes wait for each other instead of deadlocking.
macro_rules! apply_job_change {
    ($tx:expr, $change:expr, $now:expr) => {{
        let change: &tollgate_domain::job::JobChange = $change;
        let now: tollgate_domain::Timestamp = $now;
        let job = &change.job;
        let moved = sqlx::query($crate::store::jobs::MOVE_JOB)
            .bind(job.as_str())
            .bind(change.from.as_str())
            .bind($crate::store::epoch_to_i64(change.from_epoch, job)?)
            .bind(change.to.as_str())
            .bind($crate::store::epoch_to_i64(change.to_epoch, job)?)
            .bind($crate::store::micros(now))
            .fetch_optional(&mut *$tx)
            .await?;
        let Some(moved) = moved else {
            // Read again: the state the change was decided from may be stale.
            let Some(found) = sqlx::query($crate::store::jobs::JOB_STATE)
                .bind(job.as_str())
                .fetch_optional(&mut *$tx)
                .await?
            else {
                return Err($crate::store::StoreError::NotFound {
                    what: format!("job {job}"),
                });
            };
            let found = $crate::store::rows::Fields::new(&found, "jobs", &["id"]);
            let state: tollgate_domain::job::JobState = found.parse("state")?;
            let epoch: u64 = found.int_as("lease_epoch")?;
            return Err($crate::store::StoreError::Conflict {
                what: format!("job {job}"),
                detail: format!(
                    "expected state {} at epoch {}, found {state} at epoch {epoch}",
                    change.from, change.from_epoch
                ),
            });
        };
        let run_id: String = $crate::store::rows::Fields::new(&moved, "jobs", &["id"]).text("run_id")?;
        if let Some(node) = &change.node {
            move_node!($tx, node);
        }
        if let Some(next) = &change.reschedule {
            // In the ended job's transaction: its run never shows no open job in between.
            sqlx::query($crate::store::jobs::INSERT_RESCHEDULED)
                .bind(next.job.as_str())
                .bind(&run_id)
                .bind(next.node.as_str())
                .bind(tollgate_domain::job::JobState::Pending.as_str())
                .bind($crate::store::micros(now))
                .bind(i64::from(next.attempt))
                .bind(job.as_str())
                .bind(next.cause.as_str())
                .execute(&mut *$tx)
                .await
                .map_err(|err| {
                    $crate::store::classify(
                        err,
                        &format!("job {}", next.job),
                        &format!("node {} or the job {job} it replaces", next.node),
                    )
                })?;
            let note = $crate::store::AuditNote::new(
                now,
                "controller",
                "job.reschedule",
                format!("job/{job}"),
            )
            .details(serde_json::json!({
                "run": run_id,
                "ended": change.to.as_str(),
                "cause": next.cause.as_str(),
                "job": next.job.as_str(),
                "node": next.node.as_str(),
                "attempt": next.attempt,
            }));
            append_audit!($tx, &note);
        }
        if change.to.is_terminal() && !change.from.is_terminal() {
            Some(tollgate_domain::RunId::new(run_id))
        } else {
            None
        }
    }};
}

/// Serializes a domain value for a JSON column.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Domain types are plain data with string map keys; serde_json cannot fail on them.
    serde_json::to_string(value).expect("domain values serialize to JSON")
}

/// Free text as PostgreSQL accepts it: a text value cannot hold NUL, and a log tail may.
/// Both backends store the same replacement, so they read back the same.
fn text(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains('\0') {
        std::borrow::Cow::Owned(value.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

/// `result` as it reads back from the store (NULs replaced, timestamps in microseconds), so
/// the digest stored with it is the digest of what a later load returns; borrowed when it
/// reads back unchanged (the usual case: no copy of its telemetry).
fn as_stored(result: &StepResult) -> std::borrow::Cow<'_, StepResult> {
    let unchanged = [&result.step_name, &result.log_tail, &result.message]
        .iter()
        .all(|field| !field.contains('\0'))
        && micros(result.started_at) == result.started_at
        && micros(result.finished_at) == result.finished_at;
    if unchanged {
        return std::borrow::Cow::Borrowed(result);
    }
    let mut stored = result.clone();
    for field in [
        &mut stored.step_name,
        &mut stored.log_tail,
        &mut stored.message,
    ] {
        if let std::borrow::Cow::Owned(clean) = text(field) {
            *field = clean;
        }
    }
    stored.started_at = micros(stored.started_at);
    stored.finished_at = micros(stored.finished_at);
    std::borrow::Cow::Owned(stored)
}

/// Where a row stands in a list ordered by creation: its `created_at`, then its insertion
/// number `seq` (ties in time keep insertion order). A page of such a list starts after one.
pub type CreatedKey = (Timestamp, i64);

/// A page size as the `LIMIT` both backends bind.
fn page_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A timestamp as both backends store it: PostgreSQL keeps microseconds, so SQLite gets the
/// same, and a value reads back the same from either.
fn micros(at: Timestamp) -> Timestamp {
    at.trunc_subsecs(6)
}

/// A u64 counter (a lease epoch) as the signed 64-bit integer both backends store.
fn epoch_to_i64(epoch: u64, job: &JobId) -> Result<i64, StoreError> {
    i64::try_from(epoch).map_err(|_| StoreError::Corrupt {
        what: format!("lease epoch of job {job}"),
        detail: format!("{epoch} does not fit a signed 64-bit column"),
    })
}

/// Maps a unique-key violation to `AlreadyExists` and a foreign-key violation to
/// `NotFound`, naming what the caller says; every other error stays a database error.
fn classify(err: sqlx::Error, exists: &str, missing: &str) -> StoreError {
    match err.as_database_error().map(|db| db.kind()) {
        Some(sqlx::error::ErrorKind::UniqueViolation) => StoreError::AlreadyExists {
            what: exists.to_owned(),
        },
        Some(sqlx::error::ErrorKind::ForeignKeyViolation) => StoreError::NotFound {
            what: missing.to_owned(),
        },
        _ => StoreError::Database(err),
    }
}

/// Checks that a result's numbers read back as written: JSON has no NaN or infinity (serde
/// writes them as null), and a stored result that cannot be read would make the whole
/// release's evidence unreadable. Refusing it here names the culprit instead. `measurements`
/// and `telemetry` are those columns as encoded for the row: parsed, not encoded again.
fn check_readable(
    result: &StepResult,
    measurements: &str,
    telemetry: &str,
) -> Result<(), StoreError> {
    let unreadable = |column: &str, err: serde_json::Error| StoreError::Corrupt {
        what: format!(
            "result of job {} step {} attempt {} ({column}, not stored)",
            result.job_id, result.step_index, result.attempt
        ),
        detail: format!("{err}; numbers must be finite"),
    };
    // What `serde_json` writes for these types reads back unless a number was not finite,
    // which it writes as `null`: text without `null` anywhere is read back only to be sure
    // when it has one (a unit left out, a name with `null` in it, or a number that was NaN).
    if measurements.contains("null") {
        serde_json::from_str::<Vec<tollgate_domain::result::Measurement>>(measurements)
            .map_err(|err| unreadable("measurements", err))?;
    }
    if telemetry.contains("null") {
        serde_json::from_str::<Vec<tollgate_domain::telemetry::GpuTelemetry>>(telemetry)
            .map_err(|err| unreadable("telemetry", err))?;
    }
    Ok(())
}

impl Store {
    /// Connects to `url` (`sqlite://PATH`, created if missing, WAL, foreign keys; or
    /// `postgres://...`) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        connect::connect(url).await
    }

    /// A store on `pool`, writes taken as accepted until one fails.
    fn new(pool: Pool) -> Store {
        Store {
            pool,
            writes: std::sync::Arc::default(),
            pinned: std::sync::Arc::default(),
            issue_webhook: false,
        }
    }

    /// This store, writing an `issue_webhook_outbox` row beside every issue change when
    /// `on` (a webhook is configured); without one no row is written.
    pub fn with_issue_webhook(mut self, on: bool) -> Store {
        self.issue_webhook = on;
        self
    }

    /// The typed pool, for tests that reach behind the store's back (to tamper with a row).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Which backend, for logs: "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Whether the database accepted the last write, and every change of that: the
    /// controller's health service and lease watchdog follow it.
    pub fn watch_writes(&self) -> tokio::sync::watch::Receiver<Writes> {
        self.writes.subscribe()
    }

    /// Whether the database accepted the last write (see [`Store::watch_writes`]).
    pub fn writes_accepted(&self) -> bool {
        self.writes.subscribe().borrow().accepted()
    }

    /// A write that changes nothing anyone reads (the audit chain's head row is rewritten
    /// as it is) but needs the database to write: while writes are refused the controller
    /// calls this now and then, so that it notices recovery even when nothing else writes.
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE audit_head SET hash = hash WHERE id = 1";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(SQL).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Closes the pool, waiting for in-flight statements.
    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await)
    }
}

/// `NotFound` when an update matched no row.
fn found(n_rows: u64, what: impl FnOnce() -> String) -> Result<(), StoreError> {
    if n_rows == 0 {
        Err(StoreError::NotFound { what: what() })
    } else {
        Ok(())
    }
}

// After the macros, which they use.
mod audit;
mod decisions;
mod enrollment;
mod evidence;
mod fleet_events;
mod fleet_telemetry;
pub use fleet_events::{FLEET_BUCKETS_MAX, FLEET_EVENTS_MAX};
pub use fleet_telemetry::{COPY_BUCKETS, FleetQuery};
mod gates;
mod jobs;
mod leader;
mod maintenance;
mod notify;
pub use maintenance::EndedHealthCheck;
pub use notify::WorkListener;
mod nodes;
mod plans;
pub use plans::PinnedPlan;
mod releases;
mod report_keys;
mod report_rows;
mod result_batch;
mod results;
pub use results::{EncodedRow, RESULTS_OF_JOBS_MAX, Write};
mod issues;
pub use issues::{
    ImportOutcome, ImportedIssue, IssueFields, IssueFilter, IssueTransition, QueuedWebhook,
    WebhookEvent, describe_changes,
};
mod rollout_drift;
mod rollout_runs;
pub use rollout_runs::RunEnd;
mod rollouts;
pub use rollouts::{ProcedureTimes, RolloutNode, RolloutRecord, RolloutStart};
mod notes;
pub use notes::{NOTES_MAX, NoteFilter, PassedDecision};
mod runs;
pub use runs::StateCounts;
mod targets;
mod tokens;
mod waivers;
pub use audit::{AuditFilter, AuditNote, DecisionInputs, ReplayInputs};
pub use enrollment::IssuedCertificate;
pub use leader::Leadership;
pub use nodes::{
    EncodedRegistration, HEARTBEATS_PER_STATEMENT, HeartbeatFacts, LeaseFacts, Registration,
    RegistrationFacts,
};

// Last, so that the SQL macros above are in scope in the tests.
#[cfg(test)]
mod tests;
