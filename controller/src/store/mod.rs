//! The store: every SQL statement of the controller lives under this module.
//!
//! **Boundary:** only `store/` writes SQL. Two backends, one API: [`Store`] wraps a typed
//! SQLite or PostgreSQL pool (never `sqlx::Any`), each with its own migrations folder
//! (`migrations/sqlite`, `migrations/postgres`, same version numbers). Most statements are
//! shared as written (`$N` placeholders, `ON CONFLICT`, `RETURNING`).
//!
//! **Invariant:** every method that changes more than one row does it in one transaction, so
//! nothing half-written is ever left behind; a result is committed before it is acknowledged.

use thiserror::Error;
use tollgate_domain::fleet::{Health, Inventory, Labels, Node, NodeState};
use tollgate_domain::gate::{Decision, Evidence, GatePolicy};
use tollgate_domain::job::JobState;
use tollgate_domain::plan::Plan;
use tollgate_domain::release::{Promotion, Release};
use tollgate_domain::result::StepResult;
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

/// Whether a result upload was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Stored now.
    Inserted,
    /// The same (job, step, attempt, epoch) was stored before; nothing changed.
    Duplicate,
}

/// A run's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        match self {
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Cancelled => "cancelled",
        }
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

/// The controller's database: SQLite (default, one file) or PostgreSQL.
#[derive(Debug, Clone)]
pub enum Store {
    /// Embedded SQLite.
    Sqlite(sqlx::SqlitePool),
    /// PostgreSQL.
    Postgres(sqlx::PgPool),
}

#[allow(unused_variables, clippy::todo)]
impl Store {
    /// Connects to `url` (`sqlite://PATH`, created if missing, WAL, foreign keys; or
    /// `postgres://...`) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        todo!()
    }

    /// Which backend, for logs: "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool, waiting for in-flight statements.
    pub async fn close(&self) {
        todo!()
    }

    // --- nodes ---

    /// Creates or updates a node at registration: labels, inventory, token hash. A new node
    /// starts `ready`/`good`; an existing one keeps its cordon, health and retirement, and an
    /// `unreachable` one becomes `ready` (or `busy` when it has an active job).
    pub async fn register_node(&self, node: &NodeId, labels: &Labels, inventory: &Inventory, token_hash: &str, now: Timestamp) -> Result<(), StoreError> {
        todo!()
    }

    /// The sha256 (hex) of the node's token, if the node exists.
    pub async fn node_token_hash(&self, node: &NodeId) -> Result<Option<String>, StoreError> {
        todo!()
    }

    /// One node.
    pub async fn get_node(&self, node: &NodeId) -> Result<Option<Node>, StoreError> {
        todo!()
    }

    /// Every node, by name. `current_job` is its assigned or running job.
    pub async fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        todo!()
    }

    /// Records a heartbeat.
    pub async fn touch_node(&self, node: &NodeId, now: Timestamp) -> Result<(), StoreError> {
        todo!()
    }

    /// Sets a node's state.
    pub async fn set_node_state(&self, node: &NodeId, state: NodeState) -> Result<(), StoreError> {
        todo!()
    }

    /// Sets a node's health.
    pub async fn set_node_health(&self, node: &NodeId, health: Health) -> Result<(), StoreError> {
        todo!()
    }

    // --- releases ---

    /// Stores a new release; `AlreadyExists` when the name is taken.
    pub async fn create_release(&self, release: &Release) -> Result<(), StoreError> {
        todo!()
    }

    /// One release with its promotions.
    pub async fn get_release(&self, release: &ReleaseId) -> Result<Option<Release>, StoreError> {
        todo!()
    }

    /// All releases, newest first.
    pub async fn list_releases(&self) -> Result<Vec<Release>, StoreError> {
        todo!()
    }

    /// Appends a promotion and moves the release to `promotion.to_milestone`, in one
    /// transaction; `Conflict` if the release is no longer at `promotion.from_milestone`.
    pub async fn promote_release(&self, release: &ReleaseId, promotion: &Promotion) -> Result<(), StoreError> {
        todo!()
    }

    // --- plans and gates ---

    /// Stores a plan version; returns false when that exact version was stored before.
    pub async fn put_plan(&self, plan: &Plan, source: &str, now: Timestamp) -> Result<bool, StoreError> {
        todo!()
    }

    /// The latest version of a plan, or the version whose hash starts with `version_prefix`.
    pub async fn get_plan(&self, name: &str, version_prefix: Option<&str>) -> Result<Option<StoredPlan>, StoreError> {
        todo!()
    }

    /// The latest version of every plan, by name.
    pub async fn list_plans(&self) -> Result<Vec<StoredPlan>, StoreError> {
        todo!()
    }

    /// Stores a gate policy; the latest applied policy of a milestone rules.
    pub async fn put_gate(&self, policy: &GatePolicy, source: &str, now: Timestamp) -> Result<(), StoreError> {
        todo!()
    }

    /// The ruling policy of a milestone.
    pub async fn get_gate(&self, milestone: &str) -> Result<Option<StoredGate>, StoreError> {
        todo!()
    }

    // --- runs and jobs ---

    /// Stores a run and its jobs in one transaction.
    pub async fn create_run(&self, run: &RunRecord, jobs: &[JobRecord]) -> Result<(), StoreError> {
        todo!()
    }

    /// One run.
    pub async fn get_run(&self, run: &RunId) -> Result<Option<RunRecord>, StoreError> {
        todo!()
    }

    /// Runs, newest first, optionally of one release.
    pub async fn list_runs(&self, release: Option<&ReleaseId>) -> Result<Vec<RunRecord>, StoreError> {
        todo!()
    }

    /// A run's jobs, by node name.
    pub async fn jobs_of_run(&self, run: &RunId) -> Result<Vec<JobRecord>, StoreError> {
        todo!()
    }

    /// One job.
    pub async fn get_job(&self, job: &JobId) -> Result<Option<JobRecord>, StoreError> {
        todo!()
    }

    /// Every pending job with its node.
    pub async fn pending_jobs(&self) -> Result<Vec<PendingJob>, StoreError> {
        todo!()
    }

    /// Every assigned or running job.
    pub async fn active_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        todo!()
    }

    /// Compare-and-set of a job's state: moves `job` from `from` to `to` and sets its lease
    /// epoch to `epoch`; `Conflict` when the job is no longer in `from`. Also sets the node's
    /// state to `busy` when the job becomes active and back to `ready` (unless cordoned,
    /// draining, unreachable or retired) when it ends, and finishes the run (state
    /// `finished`, `finished_at = now`) when its last job ends. One transaction.
    pub async fn transition_job(&self, job: &JobId, from: JobState, to: JobState, epoch: u64, now: Timestamp) -> Result<(), StoreError> {
        todo!()
    }

    /// Cancels a run: every job not yet ended becomes `cancelled`, the run `cancelled`. One
    /// transaction. Returns the jobs that were active (their agents must be told).
    pub async fn cancel_run(&self, run: &RunId, now: Timestamp) -> Result<Vec<JobRecord>, StoreError> {
        todo!()
    }

    // --- results ---

    /// Stores a result, idempotent on (job, step index, attempt, lease epoch), and, when
    /// `job_transition` is given as (from, to), moves the job in the same transaction (as
    /// [`Store::transition_job`] does). A duplicate changes nothing.
    pub async fn record_result(&self, result: &StepResult, job_transition: Option<(JobState, JobState)>, now: Timestamp) -> Result<Recorded, StoreError> {
        todo!()
    }

    /// Every result of a job, by step index then attempt.
    pub async fn results_of_job(&self, job: &JobId) -> Result<Vec<StepResult>, StoreError> {
        todo!()
    }

    // --- evidence and decisions ---

    /// The evidence for a release at a milestone: the latest non-cancelled run of each plan,
    /// with every job, its node's labels and GPU source, and every result.
    pub async fn load_evidence(&self, release: &Release, milestone: &str) -> Result<Evidence, StoreError> {
        todo!()
    }

    /// Stores a decision (append-only).
    pub async fn insert_decision(&self, decision: &Decision) -> Result<(), StoreError> {
        todo!()
    }

    /// The most recent stored decision of a release at a milestone.
    pub async fn latest_decision(&self, release: &ReleaseId, milestone: &str) -> Result<Option<Decision>, StoreError> {
        todo!()
    }
}
