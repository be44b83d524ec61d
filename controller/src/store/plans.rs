//! Plans in the store: versions by content hash, applied with their audit entry, and read
//! back by name and version prefix.

use super::connect::Begin;
use super::{AuditNote, Pool, Store, StoreError, StoredPlan, micros, rows, text, to_json};
use std::sync::Arc;
use tollgate_domain::Timestamp;
use tollgate_domain::plan::Plan;

/// The plan version a run pinned, with the run's other facts that never change.
#[derive(Debug)]
pub struct PinnedPlan {
    /// The release the run qualifies.
    pub release: tollgate_domain::ReleaseId,
    /// The plan's name (the run's `plan_name`).
    pub name: String,
    /// The version the run pinned.
    pub stored: StoredPlan,
}

/// Each run's pinned plan, read once: a run's plan name and version never change, and a plan
/// version is immutable (its content is its hash), so what was read stays true on every
/// replica. Emptied when it holds [`Pinned::MAX_RUNS`] runs (the runs in progress are read
/// again at their next result).
#[derive(Debug, Default)]
pub(super) struct Pinned {
    runs: std::sync::Mutex<std::collections::HashMap<tollgate_domain::RunId, Arc<PinnedPlan>>>,
}

impl Pinned {
    /// Runs kept before the cache starts over.
    const MAX_RUNS: usize = 4096;

    fn get(&self, run: &tollgate_domain::RunId) -> Option<Arc<PinnedPlan>> {
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(run)
            .cloned()
    }

    fn put(&self, run: &tollgate_domain::RunId, pinned: Arc<PinnedPlan>) {
        let mut runs = self
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if runs.len() >= Self::MAX_RUNS {
            runs.clear();
        }
        runs.insert(run.clone(), pinned);
    }
}

impl Store {
    /// The plan version run `run` pinned; `None` when the run or that version is not stored.
    /// Read from the store once per run (see [`Pinned`]): accepting a result needs the plan's
    /// steps and the run's release, and this spares two reads per result.
    pub async fn pinned_plan(
        &self,
        run: &tollgate_domain::RunId,
    ) -> Result<Option<Arc<PinnedPlan>>, StoreError> {
        if let Some(pinned) = self.pinned.get(run) {
            return Ok(Some(pinned));
        }
        let Some((record, stored)) = self.run_and_plan(run).await? else {
            return Ok(None);
        };
        let pinned = Arc::new(PinnedPlan {
            release: record.release,
            name: record.plan_name,
            stored,
        });
        self.pinned.put(run, Arc::clone(&pinned));
        Ok(Some(pinned))
    }

    /// A run and the plan version it pinned; `None` when either is gone.
    pub async fn run_and_plan(
        &self,
        run: &tollgate_domain::RunId,
    ) -> Result<Option<(super::RunRecord, StoredPlan)>, StoreError> {
        let Some(record) = self.get_run(run).await? else {
            return Ok(None);
        };
        let plan = self
            .get_plan(&record.plan_name, Some(record.plan_version.as_str()))
            .await?;
        Ok(plan.map(|plan| (record, plan)))
    }

    /// Stores a plan version with its audit entry `note`, in one transaction; returns false
    /// when that exact version was stored before.
    ///
    /// Applying a stored version again makes it the latest again (a rollback), keeping its
    /// `created_at`.
    pub async fn put_plan(
        &self,
        plan: &Plan,
        source: &str,
        now: Timestamp,
        note: &AuditNote,
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
            append_audit!(tx, note);
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
}
