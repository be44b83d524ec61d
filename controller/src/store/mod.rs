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
mod evidence;
mod report_rows;
mod rows;
pub mod testing;
mod tx;
mod writes;

pub use report_rows::{NodeEvidence, NodeJob, ReportRows};
pub use writes::Writes;

use chrono::SubsecRound;
use connect::Begin;
use std::collections::HashMap;
use thiserror::Error;
use tollgate_domain::fleet::{Inventory, Labels, Node, NodeState};
use tollgate_domain::gate::{Decision, Evidence, GatePolicy};
use tollgate_domain::job::JobState;
use tollgate_domain::node::HealthChange;
use tollgate_domain::plan::Plan;
use tollgate_domain::release::{Promotion, Release};
use tollgate_domain::result::{Outcome, StepResult};
use tollgate_domain::scheduler::PendingJob;
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

/// A run's lifecycle.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::EnumIter,
)]
#[strum(serialize_all = "kebab-case", parse_err_ty = String, parse_err_fn = tollgate_domain::names::unknown::<Self>)]
pub enum RunState {
    /// Some job has not ended.
    Running,
    /// Every job ended.
    Finished,
    /// Cancelled by a manager.
    Cancelled,
}

impl RunState {
    /// Storage and wire name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

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
}

/// The typed pool a [`Store`] holds.
#[derive(Debug, Clone)]
pub enum Pool {
    /// Embedded SQLite.
    Sqlite(sqlx::SqlitePool),
    /// PostgreSQL.
    Postgres(sqlx::PgPool),
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

/// The job states in which a job occupies its node ([`JobState::is_active`]), as SQL.
macro_rules! active_states {
    () => {
        "('assigned', 'running')"
    };
}

/// The job states that are not terminal ([`JobState::is_terminal`]), as SQL.
macro_rules! open_states {
    () => {
        "('pending', 'assigned', 'running')"
    };
}

/// The latest run that was not cancelled of each plan of release `$1` at milestone `$2`;
/// "latest" is the newest `created_at`, then the last inserted.
macro_rules! latest_runs_cte {
    () => {
        "WITH latest AS (
            SELECT r.id FROM runs r
            WHERE r.release = $1 AND r.milestone = $2 AND r.state <> 'cancelled'
              AND r.seq = (
                SELECT r2.seq FROM runs r2
                WHERE r2.release = r.release AND r2.milestone = r.milestone
                  AND r2.plan_name = r.plan_name AND r2.state <> 'cancelled'
                ORDER BY r2.created_at DESC, r2.seq DESC
                LIMIT 1))"
    };
}

/// `SELECT` of a node with its active job as `current_job`, then `$tail`.
macro_rules! node_query {
    ($tail:expr) => {
        concat!(
            "SELECT n.name, n.labels, n.inventory, n.state, n.health, n.health_reason,
                    n.last_seen_at,
                    (SELECT j.id FROM jobs j
                     WHERE j.node = n.name AND j.state IN ",
            active_states!(),
            "
                     ORDER BY j.updated_at DESC LIMIT 1) AS current_job
             FROM nodes n",
            $tail
        )
    };
}

/// `SELECT` of runs, then `$tail`.
macro_rules! run_query {
    ($tail:expr) => {
        concat!(
            "SELECT id, release, plan_name, plan_version, milestone, state, created_at, finished_at
             FROM runs",
            $tail
        )
    };
}

/// `SELECT` of jobs, then `$tail`.
macro_rules! job_query {
    ($tail:expr) => {
        concat!(
            "SELECT id, run_id, node, state, lease_epoch, created_at, updated_at FROM jobs",
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
/// the digest stored with it is the digest of what a later load returns.
fn as_stored(result: &StepResult) -> StepResult {
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
    stored
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
/// release's evidence unreadable. Refusing it here names the culprit instead.
fn check_readable(result: &StepResult) -> Result<(), StoreError> {
    let unreadable = |column: &str, err: serde_json::Error| StoreError::Corrupt {
        what: format!(
            "result of job {} step {} attempt {} ({column}, not stored)",
            result.job_id, result.step_index, result.attempt
        ),
        detail: format!("{err}; numbers must be finite"),
    };
    serde_json::from_str::<Vec<tollgate_domain::result::Measurement>>(&to_json(
        &result.measurements,
    ))
    .map_err(|err| unreadable("measurements", err))?;
    serde_json::from_str::<Vec<tollgate_domain::telemetry::GpuTelemetry>>(&to_json(
        &result.telemetry,
    ))
    .map_err(|err| unreadable("telemetry", err))?;
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
        }
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

    // --- nodes ---

    /// Creates or updates a node at registration: labels, inventory, token hash. A new node
    /// starts `ready`/`good`; an existing one keeps its cordon, health and retirement, and an
    /// `unreachable` one becomes `ready` (or `busy` when it has an active job).
    pub async fn register_node(
        &self,
        node: &NodeId,
        labels: &Labels,
        inventory: &Inventory,
        token_hash: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        const SQL: &str = concat!(
            "INSERT INTO nodes (name, labels, inventory, gpu_source, state, health, token_hash,
                                last_seen_at, registered_at)
             VALUES ($1, $2, $3, $4, 'ready', 'good', $5, $6, $6)
             ON CONFLICT (name) DO UPDATE SET
                labels = excluded.labels,
                inventory = excluded.inventory,
                gpu_source = excluded.gpu_source,
                token_hash = excluded.token_hash,
                last_seen_at = excluded.last_seen_at,
                state = CASE
                    WHEN nodes.state <> 'unreachable' THEN nodes.state
                    WHEN EXISTS (SELECT 1 FROM jobs
                                 WHERE jobs.node = nodes.name AND jobs.state IN ",
            active_states!(),
            ") THEN 'busy'
                    ELSE 'ready'
                END"
        );
        let labels = to_json(labels);
        let gpu_source = inventory.gpu_source.as_str();
        let inventory = to_json(inventory);
        writing!(self, |pool| {
            sqlx::query(SQL)
                .bind(node.as_str())
                .bind(&labels)
                .bind(&inventory)
                .bind(gpu_source)
                .bind(token_hash)
                .bind(micros(now))
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// The sha256 (hex) of the node's token, if the node exists.
    pub async fn node_token_hash(&self, node: &NodeId) -> Result<Option<String>, StoreError> {
        const SQL: &str = "SELECT token_hash FROM nodes WHERE name = $1";
        let row = with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(node.as_str())
                .fetch_optional(pool)
                .await?
                .map(|row| rows::Fields::new(&row, "nodes", &["name"]).text("token_hash"))
                .transpose()?
        });
        Ok(row)
    }

    /// One node.
    pub async fn get_node(&self, node: &NodeId) -> Result<Option<Node>, StoreError> {
        const SQL: &str = node_query!(" WHERE n.name = $1");
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(node.as_str())
                .fetch_optional(pool)
                .await?
                .map(|row| rows::node(&row))
                .transpose()
        })
    }

    /// Every node, by name. `current_job` is its assigned or running job.
    pub async fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        const SQL: &str = node_query!(" ORDER BY n.name");
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::node)
                .collect()
        })
    }

    /// Records a heartbeat.
    pub async fn touch_node(&self, node: &NodeId, now: Timestamp) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE nodes SET last_seen_at = $2 WHERE name = $1";
        writing!(self, |pool| {
            let n_rows = sqlx::query(SQL)
                .bind(node.as_str())
                .bind(micros(now))
                .execute(pool)
                .await?
                .rows_affected();
            found(n_rows, || format!("node {node}"))
        })
    }

    /// Sets a node's state.
    pub async fn set_node_state(&self, node: &NodeId, state: NodeState) -> Result<(), StoreError> {
        self.set_node_state_audited(node, state, None).await
    }

    /// [`Store::set_node_state`], with the audit entry `note` written in the same transaction.
    pub async fn set_node_state_audited(
        &self,
        node: &NodeId,
        state: NodeState,
        note: Option<&AuditNote>,
    ) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE nodes SET state = $2 WHERE name = $1";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let n_rows = sqlx::query(SQL)
                .bind(node.as_str())
                .bind(state.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            found(n_rows, || format!("node {node}"))?;
            if let Some(note) = note {
                append_audit!(tx, note);
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Applies a node health change decided by `tollgate_domain::node::next`, with its audit
    /// entry `note` in the same transaction. The change applies only if the node still has
    /// the health it was decided from (`Conflict` otherwise), so two writers never both apply
    /// changes decided from the same health.
    pub async fn change_node_health(
        &self,
        node: &NodeId,
        change: &HealthChange,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        const SQL: &str =
            "UPDATE nodes SET health = $3, health_reason = $4 WHERE name = $1 AND health = $2";
        const CURRENT: &str = "SELECT name, health FROM nodes WHERE name = $1";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let n_rows = sqlx::query(SQL)
                .bind(node.as_str())
                .bind(change.from.as_str())
                .bind(change.to.as_str())
                .bind(&change.reason)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n_rows == 0 {
                let current = sqlx::query(CURRENT)
                    .bind(node.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| rows::Fields::new(&row, "nodes", &["name"]).text("health"))
                    .transpose()?;
                return Err(match current {
                    None => StoreError::NotFound {
                        what: format!("node {node}"),
                    },
                    Some(current) => StoreError::Conflict {
                        what: format!("node {node}"),
                        detail: format!("expected health {}, found {current}", change.from),
                    },
                });
            }
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }

    /// The outcomes of the node's latest `limit` step results that were not skipped, newest
    /// first (by arrival), across jobs and runs.
    pub async fn recent_outcomes(
        &self,
        node: &NodeId,
        limit: usize,
    ) -> Result<Vec<Outcome>, StoreError> {
        const SQL: &str = "SELECT r.job_id, r.outcome FROM step_results r
             JOIN jobs j ON j.id = r.job_id
             WHERE j.node = $1 AND r.outcome <> 'skipped'
             ORDER BY r.seq DESC LIMIT $2";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(node.as_str())
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| rows::Fields::new(row, "step_results", &["job_id"]).parse("outcome"))
                .collect()
        })
    }

    // --- releases ---

    /// Stores a new release; `AlreadyExists` when the name is taken.
    pub async fn create_release(&self, release: &Release) -> Result<(), StoreError> {
        self.create_release_audited(release, None).await
    }

    /// [`Store::create_release`], with the audit entry `note` written in the same transaction.
    pub async fn create_release_audited(
        &self,
        release: &Release,
        note: Option<&AuditNote>,
    ) -> Result<(), StoreError> {
        const INSERT: &str =
            "INSERT INTO releases (name, description, components, milestone, created_at)
             VALUES ($1, $2, $3, $4, $5)";
        let what = format!("release {}", release.id);
        let components = to_json(&release.components);
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(INSERT)
                .bind(release.id.as_str())
                .bind(text(&release.description))
                .bind(&components)
                .bind(&release.milestone)
                .bind(micros(release.created_at))
                .execute(&mut *tx)
                .await
                .map_err(|err| classify(err, &what, &what))?;
            // A new release normally has no promotions; an imported one keeps its history.
            for promotion in &release.promotions {
                sqlx::query(INSERT_PROMOTION)
                    .bind(release.id.as_str())
                    .bind(&promotion.from_milestone)
                    .bind(&promotion.to_milestone)
                    .bind(micros(promotion.at))
                    .bind(&promotion.decision_digest)
                    .bind(&promotion.actor)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(note) = note {
                append_audit!(tx, note);
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// One release with its promotions.
    pub async fn get_release(&self, release: &ReleaseId) -> Result<Option<Release>, StoreError> {
        const SQL: &str = "SELECT name, description, components, milestone, created_at
             FROM releases WHERE name = $1";
        const PROMOTIONS: &str =
            "SELECT release, from_milestone, to_milestone, promoted_at, decision_digest, actor
             FROM promotions WHERE release = $1 ORDER BY promoted_at, seq";
        with_pool!(self, |pool| {
            let mut tx = pool.begin_snapshot().await?;
            let Some(row) = sqlx::query(SQL)
                .bind(release.as_str())
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            let mut stored = rows::release(&row)?;
            stored.promotions = sqlx::query(PROMOTIONS)
                .bind(release.as_str())
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(rows::promotion)
                .collect::<Result<_, _>>()?;
            tx.commit().await?;
            Ok(Some(stored))
        })
    }

    /// All releases, newest first.
    pub async fn list_releases(&self) -> Result<Vec<Release>, StoreError> {
        const SQL: &str = "SELECT name, description, components, milestone, created_at
             FROM releases ORDER BY created_at DESC, seq DESC";
        const PROMOTIONS: &str =
            "SELECT release, from_milestone, to_milestone, promoted_at, decision_digest, actor
             FROM promotions ORDER BY promoted_at, seq";
        with_pool!(self, |pool| {
            let mut tx = pool.begin_snapshot().await?;
            let mut releases: Vec<Release> = sqlx::query(SQL)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(rows::release)
                .collect::<Result<_, _>>()?;
            let mut promotions: HashMap<String, Vec<Promotion>> = HashMap::new();
            for row in sqlx::query(PROMOTIONS).fetch_all(&mut *tx).await? {
                let release =
                    rows::Fields::new(&row, "promotions", &["release"]).text("release")?;
                promotions
                    .entry(release)
                    .or_default()
                    .push(rows::promotion(&row)?);
            }
            tx.commit().await?;
            for release in &mut releases {
                release.promotions = promotions.remove(release.id.as_str()).unwrap_or_default();
            }
            Ok(releases)
        })
    }

    /// Appends a promotion and moves the release to `promotion.to_milestone`, in one
    /// transaction; `Conflict` if the release is no longer at `promotion.from_milestone`.
    ///
    /// `note` is the audit entry written in the same transaction.
    pub async fn promote_release(
        &self,
        release: &ReleaseId,
        promotion: &Promotion,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        const MOVE: &str = "UPDATE releases SET milestone = $3 WHERE name = $1 AND milestone = $2";
        const CURRENT: &str = "SELECT milestone FROM releases WHERE name = $1";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let n_rows = sqlx::query(MOVE)
                .bind(release.as_str())
                .bind(&promotion.from_milestone)
                .bind(&promotion.to_milestone)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n_rows == 0 {
                let current = sqlx::query(CURRENT)
                    .bind(release.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| rows::Fields::new(&row, "releases", &["name"]).text("milestone"))
                    .transpose()?;
                return Err(match current {
                    None => StoreError::NotFound {
                        what: format!("release {release}"),
                    },
                    Some(current) => StoreError::Conflict {
                        what: format!("release {release}"),
                        detail: format!(
                            "expected milestone {}, found {current}",
                            promotion.from_milestone
                        ),
                    },
                });
            }
            sqlx::query(INSERT_PROMOTION)
                .bind(release.as_str())
                .bind(&promotion.from_milestone)
                .bind(&promotion.to_milestone)
                .bind(micros(promotion.at))
                .bind(&promotion.decision_digest)
                .bind(&promotion.actor)
                .execute(&mut *tx)
                .await?;
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }

    // --- plans and gates ---

    /// Stores a plan version; returns false when that exact version was stored before.
    ///
    /// Applying a stored version again makes it the latest again (a rollback), keeping its
    /// `created_at`.
    pub async fn put_plan(
        &self,
        plan: &Plan,
        source: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.put_plan_audited(plan, source, now, None).await
    }

    /// [`Store::put_plan`], with the audit entry `note` written in the same transaction.
    pub async fn put_plan_audited(
        &self,
        plan: &Plan,
        source: &str,
        now: Timestamp,
        note: Option<&AuditNote>,
    ) -> Result<bool, StoreError> {
        const REAPPLY: &str = "UPDATE plans SET applied_at = $3 WHERE name = $1 AND version = $2";
        const INSERT: &str =
            "INSERT INTO plans (name, version, spec, source, created_at, applied_at)
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (name, version) DO NOTHING";
        let version = plan.version();
        let spec = to_json(plan);
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let reapplied = sqlx::query(REAPPLY)
                .bind(&plan.name)
                .bind(version.as_str())
                .bind(micros(now))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let inserted = if reapplied == 0 {
                sqlx::query(INSERT)
                    .bind(&plan.name)
                    .bind(version.as_str())
                    .bind(&spec)
                    .bind(text(source))
                    .bind(micros(now))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            } else {
                0
            };
            if let Some(note) = note {
                append_audit!(tx, note);
            }
            tx.commit().await?;
            Ok(inserted == 1)
        })
    }

    /// The latest version of a plan, or the version whose hash starts with `version_prefix`.
    ///
    /// "Latest" is the most recently applied. When a prefix matches several versions, the
    /// most recently applied of them.
    pub async fn get_plan(
        &self,
        name: &str,
        version_prefix: Option<&str>,
    ) -> Result<Option<StoredPlan>, StoreError> {
        const SQL: &str = "SELECT name, version, spec, source, created_at FROM plans
             WHERE name = $1 AND substr(version, 1, length($2)) = $2
             ORDER BY applied_at DESC, seq DESC
             LIMIT 1";
        let prefix = version_prefix.unwrap_or_default();
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(name)
                .bind(prefix)
                .fetch_optional(pool)
                .await?
                .map(|row| rows::plan(&row))
                .transpose()
        })
    }

    /// The latest version of every plan, by name.
    pub async fn list_plans(&self) -> Result<Vec<StoredPlan>, StoreError> {
        const SQL: &str = "SELECT p.name, p.version, p.spec, p.source, p.created_at FROM plans p
             WHERE p.seq = (SELECT q.seq FROM plans q WHERE q.name = p.name
                            ORDER BY q.applied_at DESC, q.seq DESC LIMIT 1)
             ORDER BY p.name";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::plan)
                .collect()
        })
    }

    /// Stores a gate policy; the latest applied policy of a milestone rules.
    pub async fn put_gate(
        &self,
        policy: &GatePolicy,
        source: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.put_gate_audited(policy, source, now, None).await
    }

    /// [`Store::put_gate`], with the audit entry `note` written in the same transaction.
    pub async fn put_gate_audited(
        &self,
        policy: &GatePolicy,
        source: &str,
        now: Timestamp,
        note: Option<&AuditNote>,
    ) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO gates (milestone, version, policy, source, created_at)
             VALUES ($1, $2, $3, $4, $5)";
        let version = policy.version();
        let document = to_json(policy);
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(SQL)
                .bind(&policy.milestone)
                .bind(&version)
                .bind(&document)
                .bind(text(source))
                .bind(micros(now))
                .execute(&mut *tx)
                .await?;
            if let Some(note) = note {
                append_audit!(tx, note);
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// The ruling policy of a milestone.
    pub async fn get_gate(&self, milestone: &str) -> Result<Option<StoredGate>, StoreError> {
        const SQL: &str = "SELECT milestone, version, policy, source, created_at FROM gates
             WHERE milestone = $1
             ORDER BY created_at DESC, seq DESC
             LIMIT 1";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(milestone)
                .fetch_optional(pool)
                .await?
                .map(|row| rows::gate(&row))
                .transpose()
        })
    }

    // --- runs and jobs ---

    /// Stores a run and its jobs in one transaction.
    pub async fn create_run(&self, run: &RunRecord, jobs: &[JobRecord]) -> Result<(), StoreError> {
        self.create_run_audited(run, jobs, None).await
    }

    /// [`Store::create_run`], with the audit entry `note` written in the same transaction.
    pub async fn create_run_audited(
        &self,
        run: &RunRecord,
        jobs: &[JobRecord],
        note: Option<&AuditNote>,
    ) -> Result<(), StoreError> {
        const RUN: &str =
            "INSERT INTO runs (id, release, plan_name, plan_version, milestone, state,
                               created_at, finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        const JOB: &str =
            "INSERT INTO jobs (id, run_id, node, state, lease_epoch, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(RUN)
                .bind(run.id.as_str())
                .bind(run.release.as_str())
                .bind(&run.plan_name)
                .bind(run.plan_version.as_str())
                .bind(&run.milestone)
                .bind(run.state.as_str())
                .bind(micros(run.created_at))
                .bind(run.finished_at.map(micros))
                .execute(&mut *tx)
                .await
                .map_err(|err| {
                    classify(
                        err,
                        &format!("run {}", run.id),
                        &format!(
                            "release {} or plan {}@{}",
                            run.release, run.plan_name, run.plan_version
                        ),
                    )
                })?;
            for job in jobs {
                sqlx::query(JOB)
                    .bind(job.id.as_str())
                    .bind(job.run_id.as_str())
                    .bind(job.node.as_str())
                    .bind(job.state.as_str())
                    .bind(epoch_to_i64(job.lease_epoch, &job.id)?)
                    .bind(micros(job.created_at))
                    .bind(micros(job.updated_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(|err| {
                        classify(
                            err,
                            &format!("job {}", job.id),
                            &format!("node {} or run {}", job.node, job.run_id),
                        )
                    })?;
            }
            if let Some(note) = note {
                append_audit!(tx, note);
            }
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
        const SQL: &str =
            run_query!(" WHERE ($1 IS NULL OR release = $1) ORDER BY created_at DESC, seq DESC");
        let release = release.map(ReleaseId::as_str);
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(release)
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::run)
                .collect()
        })
    }

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

    /// Every pending job with its node.
    pub async fn pending_jobs(&self) -> Result<Vec<PendingJob>, StoreError> {
        const SQL: &str = "SELECT id, node, created_at FROM jobs WHERE state = 'pending'
             ORDER BY created_at, id";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::pending_job)
                .collect()
        })
    }

    /// Every assigned or running job.
    pub async fn active_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        const SQL: &str = job_query!(concat!(
            " WHERE state IN ",
            active_states!(),
            " ORDER BY node, id"
        ));
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::job)
                .collect()
        })
    }

    /// Compare-and-set of a job's state: moves `job` from `from` to `to` and sets its lease
    /// epoch to `epoch`; `Conflict` when the job is no longer in `from`. Also sets the node's
    /// state to `busy` when the job becomes active and back to `ready` (unless cordoned,
    /// draining, unreachable or retired) when it ends, and finishes the run (state
    /// `finished`, `finished_at = now`) when its last job ends. One transaction.
    pub async fn transition_job(
        &self,
        job: &JobId,
        from: JobState,
        to: JobState,
        epoch: u64,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.change_job(job, None, Some((from, to, epoch)), now)
            .await
            .map(|_| ())
    }

    /// Cancels a run: every job not yet ended becomes `cancelled`, the run `cancelled`. One
    /// transaction. Returns the jobs that were active (their agents must be told).
    ///
    /// The returned jobs are as stored after the change (`cancelled`). Cancelling a cancelled
    /// run changes nothing and returns no jobs; cancelling a finished run is a `Conflict`.
    pub async fn cancel_run(
        &self,
        run: &RunId,
        now: Timestamp,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.cancel_run_audited(run, now, None).await
    }

    /// [`Store::cancel_run`], with the audit entry `note` written in the same transaction.
    pub async fn cancel_run_audited(
        &self,
        run: &RunId,
        now: Timestamp,
        note: Option<&AuditNote>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        const CANCEL_RUN: &str = "UPDATE runs SET state = 'cancelled', finished_at = $2
             WHERE id = $1 AND state = 'running'";
        const RUN_STATE: &str = "SELECT id, state FROM runs WHERE id = $1";
        const ACTIVE: &str = job_query!(concat!(
            " WHERE run_id = $1 AND state IN ",
            active_states!(),
            " ORDER BY node, id"
        ));
        const CANCEL_JOBS: &str = concat!(
            "UPDATE jobs SET state = 'cancelled', updated_at = $2
             WHERE run_id = $1 AND state IN ",
            open_states!()
        );
        const FREE_NODES: &str = concat!(
            "UPDATE nodes SET state = 'ready'
             WHERE state = 'busy'
               AND name IN (SELECT node FROM jobs WHERE run_id = $1)
               AND NOT EXISTS (SELECT 1 FROM jobs j
                               WHERE j.node = nodes.name AND j.state IN ",
            active_states!(),
            ")"
        );
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            // The run row first: every job change locks it first too (see `change_job`).
            let n_rows = sqlx::query(CANCEL_RUN)
                .bind(run.as_str())
                .bind(micros(now))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n_rows == 0 {
                let state = sqlx::query(RUN_STATE)
                    .bind(run.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| rows::Fields::new(&row, "runs", &["id"]).parse::<RunState>("state"))
                    .transpose()?;
                return match state {
                    None => Err(StoreError::NotFound {
                        what: format!("run {run}"),
                    }),
                    Some(RunState::Cancelled) => Ok(Vec::new()),
                    Some(state) => Err(StoreError::Conflict {
                        what: format!("run {run}"),
                        detail: format!("it is {}, not running", state.as_str()),
                    }),
                };
            }
            let mut active: Vec<JobRecord> = sqlx::query(ACTIVE)
                .bind(run.as_str())
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(rows::job)
                .collect::<Result<_, _>>()?;
            sqlx::query(CANCEL_JOBS)
                .bind(run.as_str())
                .bind(micros(now))
                .execute(&mut *tx)
                .await?;
            sqlx::query(FREE_NODES)
                .bind(run.as_str())
                .execute(&mut *tx)
                .await?;
            if let Some(note) = note {
                append_audit!(tx, note);
            }
            tx.commit().await?;
            for job in &mut active {
                job.state = JobState::Cancelled;
                job.updated_at = micros(now);
            }
            Ok(active)
        })
    }

    // --- results ---

    /// Stores a result, idempotent on (job, step index, attempt, lease epoch), and, when
    /// `job_transition` is given as (from, to), moves the job in the same transaction (as
    /// [`Store::transition_job`] does). A duplicate changes nothing.
    ///
    /// The job's lease epoch becomes the result's. A result whose numbers are not finite is
    /// refused as `Corrupt` (it could not be read back); NUL characters in its text are
    /// stored as U+FFFD.
    pub async fn record_result(
        &self,
        result: &StepResult,
        job_transition: Option<(JobState, JobState)>,
        now: Timestamp,
    ) -> Result<Recorded, StoreError> {
        check_readable(result)?;
        let transition = job_transition.map(|(from, to)| (from, to, result.lease_epoch));
        self.change_job(&result.job_id, Some(result), transition, now)
            .await
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

    // --- evidence and decisions ---

    /// The evidence for a release at a milestone: the latest non-cancelled run of each plan,
    /// with every job, its node's labels and GPU source, and every result.
    ///
    /// Three queries in one snapshot (runs, jobs, results), however many jobs and results.
    pub async fn load_evidence(
        &self,
        release: &Release,
        milestone: &str,
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
            " SELECT j.id, j.run_id, j.node, j.state, n.labels, n.gpu_source
              FROM jobs j JOIN nodes n ON n.name = j.node
              WHERE j.run_id IN (SELECT id FROM latest)
              ORDER BY j.run_id, j.node, j.id"
        );
        const RESULTS: &str = concat!(
            latest_runs_cte!(),
            " ",
            result_query!(
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
            let jobs: Vec<rows::EvidenceJob> = sqlx::query(JOBS)
                .bind(release.id.as_str())
                .bind(milestone)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(rows::evidence_job)
                .collect::<Result<_, _>>()?;
            let results: Vec<evidence::StoredResult> = sqlx::query(RESULTS)
                .bind(release.id.as_str())
                .bind(milestone)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| Ok((rows::step_result(row)?, rows::result_digest(row)?)))
                .collect::<Result<_, StoreError>>()?;
            tx.commit().await?;
            (runs, jobs, results)
        });
        Ok(evidence::assemble(release, milestone, runs, jobs, results))
    }

    /// Brings `evidence`, loaded earlier by [`Store::load_evidence`] for the same release and
    /// milestone, up to date, reading only what changed: one snapshot reads every job with its
    /// state, labels and number of stored results, then the results of the jobs that changed.
    /// Results are append-only, so a job whose count, state and labels are unchanged is
    /// unchanged.
    ///
    /// When the runs or the jobs themselves differ (a new run, a cancelled one), or the
    /// release does, the whole evidence is loaded again and [`Refreshed::Reloaded`] says so.
    pub async fn refresh_evidence(
        &self,
        release: &Release,
        milestone: &str,
        evidence: &mut Evidence,
    ) -> Result<Refreshed, StoreError> {
        const RUN_IDS: &str = concat!(
            latest_runs_cte!(),
            " SELECT r.id FROM runs r WHERE r.id IN (SELECT id FROM latest) ORDER BY r.plan_name"
        );
        const JOBS: &str = concat!(
            latest_runs_cte!(),
            " SELECT j.id, j.run_id, j.node, j.state, n.labels, n.gpu_source,
                     (SELECT COUNT(*) FROM step_results r WHERE r.job_id = j.id) AS n_results
              FROM jobs j JOIN nodes n ON n.name = j.node JOIN runs ru ON ru.id = j.run_id
              WHERE j.run_id IN (SELECT id FROM latest)
              ORDER BY ru.plan_name, j.node, j.id"
        );
        const JOB_RESULTS: &str =
            result_query!(" WHERE job_id = $1 ORDER BY job_id, step_index, attempt, lease_epoch");
        if evidence.release != *release || evidence.milestone != milestone {
            *evidence = self.load_evidence(release, milestone).await?;
            return Ok(Refreshed::Reloaded);
        }
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
            let jobs: Vec<(rows::EvidenceJob, usize)> = sqlx::query(JOBS)
                .bind(release.id.as_str())
                .bind(milestone)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| {
                    let n: i64 = rows::Fields::new(row, "jobs", &["id"]).int_as("n_results")?;
                    Ok((rows::evidence_job(row)?, usize::try_from(n).unwrap_or(0)))
                })
                .collect::<Result<_, StoreError>>()?;
            let same_runs = run_ids.len() == evidence.runs.len()
                && run_ids
                    .iter()
                    .zip(&evidence.runs)
                    .all(|(id, run)| *id == run.run_id);
            // The rows must be the evidence's jobs, in order.
            let mut slots: Vec<(usize, usize)> = Vec::new();
            for (r, run) in evidence.runs.iter().enumerate() {
                for j in 0..run.jobs.len() {
                    slots.push((r, j));
                }
            }
            let mut same_jobs = same_runs && slots.len() == jobs.len();
            let mut changed = Vec::new();
            for ((row, n_results), (r, j)) in jobs.iter().zip(&slots) {
                let job = &evidence.runs[*r].jobs[*j];
                if job.job_id != row.id || evidence.runs[*r].run_id != row.run_id {
                    same_jobs = false;
                    break;
                }
                if job.state != row.state
                    || job.labels != row.labels
                    || job.gpu_source != row.gpu_source
                    || job.results.len() != *n_results
                {
                    changed.push((*r, *j));
                }
            }
            if !same_jobs {
                tx.commit().await?;
                None
            } else {
                let mut fresh = Vec::with_capacity(changed.len());
                for (r, j) in &changed {
                    let id = &evidence.runs[*r].jobs[*j].job_id;
                    let results: Vec<evidence::StoredResult> = sqlx::query(JOB_RESULTS)
                        .bind(id.as_str())
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map(|row| Ok((rows::step_result(row)?, rows::result_digest(row)?)))
                        .collect::<Result<_, StoreError>>()?;
                    fresh.push(results);
                }
                tx.commit().await?;
                Some((jobs, changed, fresh))
            }
        });
        let Some((jobs, changed, fresh)) = outcome else {
            *evidence = self.load_evidence(release, milestone).await?;
            return Ok(Refreshed::Reloaded);
        };
        let mut rows: HashMap<JobId, rows::EvidenceJob> = jobs
            .into_iter()
            .map(|(row, _)| (row.id.clone(), row))
            .collect();
        for ((r, j), results) in changed.iter().zip(fresh) {
            let job = &mut evidence.runs[*r].jobs[*j];
            if let Some(row) = rows.remove(&job.job_id) {
                job.state = row.state;
                job.labels = row.labels;
                job.gpu_source = row.gpu_source;
            }
            evidence::set_results(job, results);
        }
        Ok(Refreshed::Changed(changed))
    }

    /// Stores a decision (append-only).
    pub async fn insert_decision(&self, decision: &Decision) -> Result<(), StoreError> {
        const SQL: &str =
            "INSERT INTO decisions (release, milestone, verdict, digest, policy_version,
                                    decision, evaluated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)";
        let document = to_json(decision);
        let what = format!("release {}", decision.release);
        writing!(self, |pool| {
            sqlx::query(SQL)
                .bind(&decision.release)
                .bind(&decision.milestone)
                .bind(decision.verdict.as_str())
                .bind(&decision.digest)
                .bind(&decision.policy_version)
                .bind(&document)
                .bind(micros(decision.evaluated_at))
                .execute(pool)
                .await
                .map_err(|err| classify(err, &what, &what))?;
            Ok(())
        })
    }

    /// The most recent stored decision of a release at a milestone.
    pub async fn latest_decision(
        &self,
        release: &ReleaseId,
        milestone: &str,
    ) -> Result<Option<Decision>, StoreError> {
        const SQL: &str = "SELECT release, milestone, digest, decision FROM decisions
             WHERE release = $1 AND milestone = $2
             ORDER BY evaluated_at DESC, seq DESC
             LIMIT 1";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(release.as_str())
                .bind(milestone)
                .fetch_optional(pool)
                .await?
                .map(|row| rows::decision(&row))
                .transpose()
        })
    }

    // --- shared by the job-changing methods ---

    /// Stores `result` (when given) and moves `job` (when `transition` is given as from, to,
    /// epoch), with the node and run effects [`Store::transition_job`] describes, in one
    /// transaction. A duplicate result rolls back and changes nothing.
    ///
    /// Locks are taken in one order everywhere (run, then jobs, then node), so concurrent
    /// changes of one run wait for each other instead of deadlocking; and because each one
    /// holds the run's row, the check "was this the run's last open job" sees every other
    /// change of the run committed. SQLite gets the same by `BEGIN IMMEDIATE`.
    async fn change_job(
        &self,
        job: &JobId,
        result: Option<&StepResult>,
        transition: Option<(JobState, JobState, u64)>,
        now: Timestamp,
    ) -> Result<Recorded, StoreError> {
        const INSERT_RESULT: &str = "INSERT INTO step_results (job_id, step_index, attempt, lease_epoch, step_name, outcome,
                 exit_code, started_at, finished_at, measurements, telemetry, events, inventory,
                 log_tail, message, recorded_at, sub_results, inventory_at_end, series, digest)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                     $18, $19, $20)
             ON CONFLICT (job_id, step_index, attempt, lease_epoch) DO NOTHING";
        const JOB: &str = "SELECT id, run_id, node, state FROM jobs WHERE id = $1";
        const LOCK_RUN: &str = "UPDATE runs SET state = state WHERE id = $1";
        const MOVE: &str = "UPDATE jobs SET state = $3, lease_epoch = $4, updated_at = $5
             WHERE id = $1 AND state = $2";
        const NODE_BUSY: &str =
            "UPDATE nodes SET state = 'busy' WHERE name = $1 AND state = 'ready'";
        const NODE_FREE: &str = concat!(
            "UPDATE nodes SET state = 'ready'
             WHERE name = $1 AND state = 'busy'
               AND NOT EXISTS (SELECT 1 FROM jobs j
                               WHERE j.node = nodes.name AND j.state IN ",
            active_states!(),
            ")"
        );
        const FINISH_RUN: &str = concat!(
            "UPDATE runs SET state = 'finished', finished_at = $2
             WHERE id = $1 AND state = 'running'
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.run_id = runs.id AND j.state IN ",
            open_states!(),
            ")"
        );
        let what = format!("job {job}");
        let result_json = result.map(|result| {
            (
                to_json(&result.measurements),
                to_json(&result.telemetry),
                to_json(&result.events),
                to_json(&result.inventory),
                to_json(&result.sub_results),
                to_json(&result.inventory_at_end),
                to_json(&result.series),
                hex::encode(tollgate_domain::gate::result_digest(&as_stored(result))),
            )
        });
        let epoch = transition
            .map(|(_, _, epoch)| epoch_to_i64(epoch, job))
            .transpose()?;
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            if let (
                Some(result),
                Some((
                    measurements,
                    telemetry,
                    events,
                    inventory,
                    sub_results,
                    inventory_at_end,
                    series,
                    digest,
                )),
            ) = (result, &result_json)
            {
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
                    .bind(measurements)
                    .bind(telemetry)
                    .bind(events)
                    .bind(inventory)
                    .bind(text(&result.log_tail))
                    .bind(text(&result.message))
                    .bind(micros(now))
                    .bind(sub_results)
                    .bind(inventory_at_end)
                    .bind(series)
                    .bind(digest)
                    .execute(&mut *tx)
                    .await
                    .map_err(|err| classify(err, &what, &what))?
                    .rows_affected();
                if n_rows == 0 {
                    return Ok(Recorded::Duplicate);
                }
            }
            if let (Some((from, to, _)), Some(epoch)) = (transition, epoch) {
                let Some(row) = sqlx::query(JOB)
                    .bind(job.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                else {
                    return Err(StoreError::NotFound { what });
                };
                let fields = rows::Fields::new(&row, "jobs", &["id"]);
                let run_id = fields.text("run_id")?;
                let node = fields.text("node")?;
                sqlx::query(LOCK_RUN)
                    .bind(&run_id)
                    .execute(&mut *tx)
                    .await?;
                let n_rows = sqlx::query(MOVE)
                    .bind(job.as_str())
                    .bind(from.as_str())
                    .bind(to.as_str())
                    .bind(epoch)
                    .bind(micros(now))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n_rows == 0 {
                    // Read again: the state seen before taking the run's lock may be stale.
                    let found = sqlx::query(JOB)
                        .bind(job.as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                    let found: JobState =
                        rows::Fields::new(&found, "jobs", &["id"]).parse("state")?;
                    return Err(StoreError::Conflict {
                        what,
                        detail: format!("expected state {from}, found {found}"),
                    });
                }
                if to.is_active() {
                    sqlx::query(NODE_BUSY).bind(&node).execute(&mut *tx).await?;
                }
                if to.is_terminal() {
                    sqlx::query(NODE_FREE).bind(&node).execute(&mut *tx).await?;
                    sqlx::query(FINISH_RUN)
                        .bind(&run_id)
                        .bind(micros(now))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            Ok(Recorded::Inserted)
        })
    }
}

/// Appends one promotion row.
const INSERT_PROMOTION: &str =
    "INSERT INTO promotions (release, from_milestone, to_milestone, promoted_at, decision_digest,
                             actor)
     VALUES ($1, $2, $3, $4, $5, $6)";

/// `NotFound` when an update matched no row.
fn found(n_rows: u64, what: impl FnOnce() -> String) -> Result<(), StoreError> {
    if n_rows == 0 {
        Err(StoreError::NotFound { what: what() })
    } else {
        Ok(())
    }
}

// After the macros, which it uses.
mod audit;
pub use audit::{AuditFilter, AuditNote, ReplayInputs};

// Last, so that the SQL macros above are in scope in the tests.
#[cfg(test)]
mod tests;
