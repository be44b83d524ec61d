//! Rollouts in the store: created with one row per node of their waves; every change
//! `tollgate_domain::rollout::next` decided applied in one transaction with its audit entry, by
//! compare-and-set on the rollout's version and phase and on each node's progress; a node's
//! procedure (or rollback) run and job created in the same transaction as the change that
//! starts it.

use super::connect::Begin;
use super::{AuditNote, JobRecord, Pool, RunRecord, Store, StoreError, micros, rows, to_json};
use std::collections::{BTreeMap, HashMap};
use strum::IntoEnumIterator as _;
use tollgate_domain::rollout::{
    NodeProgress, Phase, RolloutChange, RolloutSpec, RolloutState, WavePlan,
};
use tollgate_domain::{NodeId, ReleaseId, RolloutId, RunId, Timestamp};

/// `SELECT` of rollouts, then a tail.
macro_rules! rollout_query {
    ($tail:expr) => {
        rollout_query!("file", $tail)
    };
    ($file:literal, $tail:expr) => {
        concat!(
            "SELECT id, name, release, fleet, ",
            $file,
            " AS file, digest, spec, waves, state, version, created_by, created_at, updated_at
             FROM rollouts",
            $tail
        )
    };
}

/// A stored rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutRecord {
    /// Id.
    pub id: RolloutId,
    /// The release it moves onto the fleet.
    pub release: ReleaseId,
    /// The fleet selector given at the start (`role=prod`), as text; the spec's selector
    /// already carries it.
    pub fleet: String,
    /// The rollout file as written.
    pub file: String,
    /// The hex sha256 of `file`.
    pub digest: String,
    /// The file, validated (its selector narrowed by `fleet`).
    pub spec: RolloutSpec,
    /// The waves, planned at the start.
    pub waves: WavePlan,
    /// Its state.
    pub state: RolloutState,
    /// The compare-and-set counter: every applied change adds one.
    pub version: i64,
    /// Who started it.
    pub created_by: String,
    /// When.
    pub created_at: Timestamp,
    /// Its last change.
    pub updated_at: Timestamp,
}

/// One node of a rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutNode {
    /// The node.
    pub node: NodeId,
    /// Its wave (an index into the rollout's [`WavePlan::waves`]).
    pub wave: usize,
    /// Where it is.
    pub progress: NodeProgress,
    /// The run of its procedure, once started.
    pub run: Option<RunId>,
    /// The run of its rollback, once started.
    pub rollback_run: Option<RunId>,
    /// When its progress last changed (for a node that went through the procedure: when its
    /// end was recorded).
    pub since: Timestamp,
}

/// When a node's procedure started and ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcedureTimes {
    /// The node.
    pub node: NodeId,
    /// When its procedure run started.
    pub started_at: Timestamp,
    /// When it ended, once it has.
    pub finished_at: Option<Timestamp>,
}

/// A node's procedure or rollback started by a change: its run of one job, created with it.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutStart {
    /// The node.
    pub node: NodeId,
    /// Whether this is its rollback (else its procedure).
    pub rollback: bool,
    /// The run.
    pub run: RunRecord,
    /// Its one job, on `node`.
    pub job: JobRecord,
}

impl Store {
    /// Stores a new rollout with one `waiting` row per node of its waves and the audit entry
    /// `note`, in one transaction.
    pub async fn create_rollout(
        &self,
        rollout: &RolloutRecord,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        const ROLLOUT: &str = "INSERT INTO rollouts (id, name, release, fleet, file, digest,
                 spec, waves, phase, wave, state, version, created_by, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)";
        const NODE: &str =
            "INSERT INTO rollout_nodes (rollout_id, node, wave, progress, updated_at)
             VALUES ($1, $2, $3, $4, $5)";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(ROLLOUT)
                .bind(rollout.id.as_str())
                .bind(&rollout.spec.name)
                .bind(rollout.release.as_str())
                .bind(&rollout.fleet)
                .bind(&rollout.file)
                .bind(&rollout.digest)
                .bind(to_json(&rollout.spec))
                .bind(to_json(&rollout.waves))
                .bind(rollout.state.phase.as_str())
                .bind(wave_to_i64(rollout.state.wave))
                .bind(to_json(&rollout.state))
                .bind(rollout.version)
                .bind(&rollout.created_by)
                .bind(micros(rollout.created_at))
                .execute(&mut *tx)
                .await
                .map_err(|err| {
                    super::classify(
                        err,
                        &format!("rollout {}", rollout.id),
                        &format!("release {}", rollout.release),
                    )
                })?;
            for (wave_idx, wave) in rollout.waves.waves.iter().enumerate() {
                for node in &wave.nodes {
                    sqlx::query(NODE)
                        .bind(rollout.id.as_str())
                        .bind(node.as_str())
                        .bind(wave_to_i64(wave_idx))
                        .bind(NodeProgress::Waiting.as_str())
                        .bind(micros(rollout.created_at))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Rollout `id` with its nodes (in wave order, then by name), if there is one.
    pub async fn rollout(
        &self,
        id: &RolloutId,
    ) -> Result<Option<(RolloutRecord, Vec<RolloutNode>)>, StoreError> {
        const ROLLOUT: &str = rollout_query!(" WHERE id = $1");
        const NODES: &str = "SELECT node, wave, progress, run_id, rollback_run_id, updated_at
             FROM rollout_nodes WHERE rollout_id = $1 ORDER BY wave, node";
        with_pool!(self, |pool| {
            let mut tx = pool.begin_snapshot().await?;
            let Some(row) = sqlx::query(ROLLOUT)
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?
            else {
                tx.commit().await?;
                return Ok(None);
            };
            let rollout = rows::rollout(&row)?;
            let nodes = sqlx::query(NODES)
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(rows::rollout_node)
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit().await?;
            Ok(Some((rollout, nodes)))
        })
    }

    /// When each node of rollout `id` started its procedure and, once it ended, when: the
    /// procedure runs' start and end, for the rollout's estimate (rollback runs not counted).
    pub async fn rollout_procedure_times(
        &self,
        id: &RolloutId,
    ) -> Result<Vec<ProcedureTimes>, StoreError> {
        const SQL: &str = "SELECT rollout_nodes.node, runs.created_at, runs.finished_at
             FROM rollout_nodes JOIN runs ON runs.id = rollout_nodes.run_id
             WHERE rollout_nodes.rollout_id = $1";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(id.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::procedure_times)
                .collect::<Result<Vec<_>, _>>()
        })
    }

    /// The rollouts of `release` (every release when `None`) whose waves hold `node` (any
    /// when `None`), newest first, at most `limit`; with `active_only`, those not ended. Each
    /// with how many of its nodes are at each progress. The records' `file` is empty (its
    /// text is not read).
    pub async fn rollout_summaries(
        &self,
        active_only: bool,
        release: Option<&ReleaseId>,
        node: Option<&NodeId>,
        limit: usize,
    ) -> Result<Vec<(RolloutRecord, BTreeMap<NodeProgress, usize>)>, StoreError> {
        // Without the file's text, which a summary does not carry.
        const SQL: &str = rollout_query!(
            "''",
            " WHERE ($1 = '' OR release = $1)
                AND ($2 = '' OR id IN (SELECT rollout_id FROM rollout_nodes WHERE node = $2))
              ORDER BY created_at DESC, seq DESC"
        );
        const COUNTS: &str = "SELECT rollout_id, progress, COUNT(*) AS n FROM rollout_nodes
             WHERE ($1 = '' OR rollout_id IN (SELECT id FROM rollouts WHERE release = $1))
               AND ($2 = '' OR rollout_id IN (SELECT rollout_id FROM rollout_nodes WHERE node = $2))
             GROUP BY rollout_id, progress";
        let release = release.map_or("", ReleaseId::as_str);
        let node = node.map_or("", NodeId::as_str);
        let (records, counts) = with_pool!(self, |pool| {
            let mut tx = pool.begin_snapshot().await?;
            let records = sqlx::query(SQL)
                .bind(release)
                .bind(node)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(rows::rollout)
                .collect::<Result<Vec<_>, _>>()?;
            let counts = sqlx::query(COUNTS)
                .bind(release)
                .bind(node)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(rows::rollout_progress_count)
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit().await?;
            Ok::<_, StoreError>((records, counts))
        })?;
        let mut by_rollout: HashMap<RolloutId, BTreeMap<NodeProgress, usize>> = HashMap::new();
        for (rollout, progress, n) in counts {
            *by_rollout
                .entry(rollout)
                .or_default()
                .entry(progress)
                .or_default() += n;
        }
        // Whether a phase has ended is the domain's to say, not a list of names in SQL.
        Ok(records
            .into_iter()
            .filter(|rollout| !active_only || !rollout.state.phase.is_terminal())
            .take(limit)
            .map(|rollout| {
                let counts = by_rollout.remove(&rollout.id).unwrap_or_default();
                (rollout, counts)
            })
            .collect())
    }

    /// Every rollout, newest first, at most `limit`; with `active_only`, those not ended.
    pub async fn rollouts(
        &self,
        active_only: bool,
        limit: usize,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        const SQL: &str = rollout_query!(" ORDER BY created_at DESC, seq DESC");
        let all: Vec<RolloutRecord> = with_pool!(self, |pool| {
            sqlx::query(SQL)
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::rollout)
                .collect::<Result<Vec<_>, _>>()
        })?;
        // Whether a phase has ended is the domain's to say, not a list of names in SQL.
        Ok(all
            .into_iter()
            .filter(|rollout| !active_only || !rollout.state.phase.is_terminal())
            .take(limit)
            .collect())
    }

    /// The rollouts the driver looks at: every one not ended, and every ended one with a node
    /// still in procedure or rolling back (its end is still to be recorded).
    pub async fn rollouts_to_drive(&self) -> Result<Vec<RolloutId>, StoreError> {
        const SQL: &str = "SELECT id FROM rollouts
             WHERE phase NOT IN ($1, $2, $3)
                OR id IN (SELECT rollout_id FROM rollout_nodes WHERE progress IN ($4, $5))
             ORDER BY seq";
        // Which phases have ended and which progress is active are the domain's to say.
        let ended: Vec<&str> = Phase::iter()
            .filter(|phase| phase.is_terminal())
            .map(Phase::as_str)
            .collect();
        let active: Vec<&str> = NodeProgress::iter()
            .filter(|progress| progress.is_active())
            .map(NodeProgress::as_str)
            .collect();
        let [ended_1, ended_2, ended_3] = ended[..] else {
            return Err(StoreError::Corrupt {
                what: "rollout phases".into(),
                detail: format!("expected three ended phases, the domain has {ended:?}"),
            });
        };
        let [active_1, active_2] = active[..] else {
            return Err(StoreError::Corrupt {
                what: "rollout node progress".into(),
                detail: format!("expected two active kinds of progress, the domain has {active:?}"),
            });
        };
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(ended_1)
                .bind(ended_2)
                .bind(ended_3)
                .bind(active_1)
                .bind(active_2)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    rows::Fields::new(row, "rollouts", &["id"])
                        .text("id")
                        .map(RolloutId::from)
                })
                .collect()
        })
    }

    /// The rollout and node of the rollout run `run` (a procedure's or a rollback's), if it
    /// is one.
    pub async fn rollout_of_run(
        &self,
        run: &RunId,
    ) -> Result<Option<(RolloutId, NodeId)>, StoreError> {
        const SQL: &str = "SELECT rollout_id, node FROM rollout_nodes
             WHERE run_id = $1 OR rollback_run_id = $1";
        with_pool!(self, |pool| {
            let Some(row) = sqlx::query(SQL)
                .bind(run.as_str())
                .fetch_optional(pool)
                .await?
            else {
                return Ok(None);
            };
            let f = rows::Fields::new(&row, "rollout_nodes", &["rollout_id", "node"]);
            Ok(Some((
                RolloutId::from(f.text("rollout_id")?),
                NodeId::from(f.text("node")?),
            )))
        })
    }

    /// Applies `change` of rollout `id`, decided from its `version`, with the runs `starts`
    /// it starts and the audit entry `note`, in one transaction; returns the new version.
    /// `Conflict` when the rollout is no longer at `version` in the phase decided from, or a
    /// node is no longer in the progress decided from; then nothing is written.
    pub async fn apply_rollout_change(
        &self,
        id: &RolloutId,
        version: i64,
        change: &RolloutChange,
        starts: &[RolloutStart],
        note: &AuditNote,
    ) -> Result<i64, StoreError> {
        const ROLLOUT: &str = "UPDATE rollouts
             SET phase = $3, wave = $4, state = $5, version = version + 1, updated_at = $6
             WHERE id = $1 AND version = $2 AND phase = $7";
        const NODE: &str = "UPDATE rollout_nodes SET progress = $3, updated_at = $4
             WHERE rollout_id = $1 AND node = $2 AND progress = $5";
        const PROCEDURE_RUN: &str = "UPDATE rollout_nodes SET run_id = $3
             WHERE rollout_id = $1 AND node = $2";
        const ROLLBACK_RUN: &str = "UPDATE rollout_nodes SET rollback_run_id = $3
             WHERE rollout_id = $1 AND node = $2";
        let at = micros(note.at);
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let n_rows = sqlx::query(ROLLOUT)
                .bind(id.as_str())
                .bind(version)
                .bind(change.to.phase.as_str())
                .bind(wave_to_i64(change.to.wave))
                .bind(to_json(&change.to))
                .bind(at)
                .bind(change.from.phase.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n_rows == 0 {
                return Err(StoreError::Conflict {
                    what: format!("rollout {id}"),
                    detail: format!(
                        "expected version {version} in phase {}, found another",
                        change.from.phase
                    ),
                });
            }
            for node in &change.nodes {
                let n_rows = sqlx::query(NODE)
                    .bind(id.as_str())
                    .bind(node.node.as_str())
                    .bind(node.to.as_str())
                    .bind(at)
                    .bind(node.from.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n_rows == 0 {
                    return Err(StoreError::Conflict {
                        what: format!("node {} of rollout {id}", node.node),
                        detail: format!("expected progress {}, found another", node.from),
                    });
                }
                // What the node was brought to, kept for drift (`rollout_drift.rs`).
                if node.to == NodeProgress::Passed {
                    sqlx::query(super::rollout_drift::RECORD)
                        .bind(id.as_str())
                        .bind(node.node.as_str())
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            for start in starts {
                insert_run!(tx, &start.run, [&start.job]);
                let sql = if start.rollback {
                    ROLLBACK_RUN
                } else {
                    PROCEDURE_RUN
                };
                sqlx::query(sql)
                    .bind(id.as_str())
                    .bind(start.node.as_str())
                    .bind(start.run.id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(version + 1)
        })
    }
}

/// A wave index as the signed 64-bit integer both backends store.
fn wave_to_i64(wave: usize) -> i64 {
    i64::try_from(wave).unwrap_or(i64::MAX)
}
