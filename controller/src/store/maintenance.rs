//! Maintenance windows, health plans and health checks in the store. Every change is written
//! with its audit entry in one transaction; ending a window early and judging a health check
//! are compare-and-sets, so two replicas never both do it.

use super::connect::Begin;
use super::rows::{Fields, StoreRow};
use super::{AuditNote, Pool, Store, StoreError, classify, micros, text};
use std::collections::HashMap;
use tollgate_domain::health_plan::HealthPlan;
use tollgate_domain::job::JobState;
use tollgate_domain::maintenance::MaintenanceWindow;
use tollgate_domain::{NodeId, PlanVersion, ReleaseId, RunId, Timestamp};

/// A `maintenance_windows` row.
fn window(row: &impl StoreRow) -> Result<MaintenanceWindow, StoreError> {
    let f = Fields::new(row, "maintenance_windows", &["id"]);
    Ok(MaintenanceWindow {
        id: f.text("id")?,
        key: f.text("label_key")?,
        value: f.text("label_value")?,
        starts_at: f.time("starts_at")?,
        ends_at: f.time("ends_at")?,
        reason: f.text("reason")?,
        created_by: f.text("created_by")?,
    })
}

/// A `health_plans` row.
fn health_plan(row: &impl StoreRow) -> Result<HealthPlan, StoreError> {
    let f = Fields::new(row, "health_plans", &["plan_name"]);
    Ok(HealthPlan {
        plan_name: f.text("plan_name")?,
        plan_version: PlanVersion(f.text("plan_version")?),
        release: ReleaseId(f.text("release")?),
        every_seconds: f.int_as("every_seconds")?,
        set_by: f.text("set_by")?,
        set_at: f.time("set_at")?,
    })
}

/// `SELECT` of maintenance windows, then `$tail`.
macro_rules! window_query {
    ($tail:expr) => {
        concat!(
            "SELECT id, label_key, label_value, starts_at, ends_at, reason, created_by, seq
             FROM maintenance_windows",
            $tail
        )
    };
}

/// A health check whose run has ended and whose node's health is not yet judged from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndedHealthCheck {
    /// Its run.
    pub run: RunId,
    /// The health plan's plan name.
    pub plan_name: String,
    /// The node checked.
    pub node: NodeId,
    /// The state its final job ended in (the last attempt, when it was rescheduled).
    pub job_state: JobState,
}

impl Store {
    /// Stores a new maintenance window with its audit entry.
    pub async fn create_maintenance_window(
        &self,
        window: &MaintenanceWindow,
        created_at: Timestamp,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        const INSERT: &str = "INSERT INTO maintenance_windows (id, label_key, label_value,
                 starts_at, ends_at, reason, created_by, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        let exists = format!("maintenance window {}", window.id);
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(INSERT)
                .bind(&window.id)
                .bind(&window.key)
                .bind(&window.value)
                .bind(micros(window.starts_at))
                .bind(micros(window.ends_at))
                .bind(text(&window.reason))
                .bind(&window.created_by)
                .bind(micros(created_at))
                .execute(&mut *tx)
                .await
                .map_err(|err| classify(err, &exists, &exists))?;
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }

    /// The maintenance windows not over at `now` (current and upcoming; a withdrawn one is
    /// not), or with `all` every window of record; by start.
    pub async fn maintenance_windows(
        &self,
        now: Timestamp,
        all: bool,
    ) -> Result<Vec<MaintenanceWindow>, StoreError> {
        const SQL: &str = window_query!(
            " WHERE ($2 OR (ends_at > $1 AND ends_at > starts_at)) ORDER BY starts_at, seq"
        );
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(micros(now))
                .bind(all)
                .fetch_all(pool)
                .await?
                .iter()
                .map(window)
                .collect()
        })
    }

    /// One window, ended or not.
    pub async fn get_maintenance_window(
        &self,
        id: &str,
    ) -> Result<Option<MaintenanceWindow>, StoreError> {
        const SQL: &str = window_query!(" WHERE id = $1");
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(|row| window(&row))
                .transpose()
        })
    }

    /// Moves the end of `window` (as read) to `ends_at`, as `MaintenanceWindow::end_at`
    /// decided, with its audit entry: a compare-and-set on the end it was decided from
    /// (`Conflict` when another writer moved it). Returns the window as ended.
    pub async fn end_maintenance_window(
        &self,
        window: &MaintenanceWindow,
        ends_at: Timestamp,
        note: &AuditNote,
    ) -> Result<MaintenanceWindow, StoreError> {
        const END: &str = "UPDATE maintenance_windows SET ends_at = $3, ended_early_by = $4
             WHERE id = $1 AND ends_at = $2";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let n_rows = sqlx::query(END)
                .bind(&window.id)
                .bind(micros(window.ends_at))
                .bind(micros(ends_at))
                .bind(&note.actor)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n_rows == 0 {
                return Err(StoreError::Conflict {
                    what: format!("maintenance window {}", window.id),
                    detail: "it was ended or changed meanwhile".into(),
                });
            }
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(MaintenanceWindow {
                ends_at,
                ..window.clone()
            })
        })
    }

    /// Sets (creates or replaces) the health plan of `plan.plan_name`, with its audit entry;
    /// `NotFound` when its plan version or release does not exist.
    pub async fn set_health_plan(
        &self,
        plan: &HealthPlan,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        const UPSERT: &str = "INSERT INTO health_plans (plan_name, plan_version, release,
                 every_seconds, set_by, set_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (plan_name) DO UPDATE SET plan_version = excluded.plan_version,
                 release = excluded.release, every_seconds = excluded.every_seconds,
                 set_by = excluded.set_by, set_at = excluded.set_at";
        let every = i64::try_from(plan.every_seconds).map_err(|_| StoreError::Corrupt {
            what: format!("health plan {}", plan.plan_name),
            detail: format!(
                "every {} s does not fit a signed 64-bit column",
                plan.every_seconds
            ),
        })?;
        let what = format!("health plan {}", plan.plan_name);
        let missing = format!(
            "plan {}@{} or release {}",
            plan.plan_name, plan.plan_version, plan.release
        );
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(UPSERT)
                .bind(&plan.plan_name)
                .bind(plan.plan_version.as_str())
                .bind(plan.release.as_str())
                .bind(every)
                .bind(&plan.set_by)
                .bind(micros(plan.set_at))
                .execute(&mut *tx)
                .await
                .map_err(|err| classify(err, &what, &missing))?;
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Removes the health plan of `plan_name`, with its audit entry; `NotFound` when there is
    /// none. Its checks stay on record.
    pub async fn remove_health_plan(
        &self,
        plan_name: &str,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        const DELETE: &str = "DELETE FROM health_plans WHERE plan_name = $1";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let n_rows = sqlx::query(DELETE)
                .bind(plan_name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n_rows == 0 {
                return Err(StoreError::NotFound {
                    what: format!("health plan {plan_name}"),
                });
            }
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Every health plan, by plan name.
    pub async fn health_plans(&self) -> Result<Vec<HealthPlan>, StoreError> {
        const SQL: &str = "SELECT plan_name, plan_version, release, every_seconds, set_by, set_at
             FROM health_plans ORDER BY plan_name";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .fetch_all(pool)
                .await?
                .iter()
                .map(health_plan)
                .collect()
        })
    }

    /// When each (health plan, node) check last started.
    pub async fn last_health_checks(
        &self,
    ) -> Result<HashMap<(String, NodeId), Timestamp>, StoreError> {
        const SQL: &str = "SELECT plan_name, node, MAX(created_at) AS created_at
             FROM health_checks GROUP BY plan_name, node";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let f = Fields::new(row, "health_checks", &["plan_name", "node"]);
                    Ok((
                        (f.text("plan_name")?, NodeId(f.text("node")?)),
                        f.time("created_at")?,
                    ))
                })
                .collect()
        })
    }

    /// The checks whose run has not ended, as (plan, node).
    pub async fn open_health_checks(&self) -> Result<Vec<(String, NodeId)>, StoreError> {
        const SQL: &str = "SELECT h.plan_name, h.node FROM health_checks h
             JOIN runs r ON r.id = h.run_id WHERE r.state = $1 ORDER BY h.created_at";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(tollgate_domain::run::RunState::Running.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let f = Fields::new(row, "health_checks", &["plan_name", "node"]);
                    Ok((f.text("plan_name")?, NodeId(f.text("node")?)))
                })
                .collect()
        })
    }

    /// The health checks whose run ended and whose node is not yet judged from them, oldest
    /// first, each with the state of its final job.
    pub async fn ended_health_checks(&self) -> Result<Vec<EndedHealthCheck>, StoreError> {
        const SQL: &str = "SELECT h.run_id, h.plan_name, h.node, j.state
             FROM health_checks h
             JOIN runs r ON r.id = h.run_id
             JOIN jobs j ON j.run_id = h.run_id
             WHERE h.judged_at IS NULL AND r.state <> 'running'
               AND NOT EXISTS (SELECT 1 FROM jobs j2 WHERE j2.rescheduled_from = j.id)
             ORDER BY h.created_at, h.run_id";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let f = Fields::new(row, "health_checks", &["run_id"]);
                    Ok(EndedHealthCheck {
                        run: RunId(f.text("run_id")?),
                        plan_name: f.text("plan_name")?,
                        node: NodeId(f.text("node")?),
                        job_state: f.parse("state")?,
                    })
                })
                .collect()
        })
    }

    /// Records that the node's health was judged from the check of `run` (`verdict`: passed,
    /// failed or none). Returns false when it was judged before (by another replica).
    pub async fn judge_health_check(
        &self,
        run: &RunId,
        verdict: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        const JUDGE: &str = "UPDATE health_checks SET verdict = $2, judged_at = $3
             WHERE run_id = $1 AND judged_at IS NULL";
        writing!(self, |pool| {
            let n_rows = sqlx::query(JUDGE)
                .bind(run.as_str())
                .bind(verdict)
                .bind(micros(at))
                .execute(pool)
                .await?
                .rows_affected();
            Ok(n_rows == 1)
        })
    }

    /// The latest health check of each (plan, node) with its verdict (`None` while not judged),
    /// for `node show`: (plan, node, run, started, verdict).
    pub async fn latest_health_checks(
        &self,
        node: &NodeId,
    ) -> Result<Vec<(String, RunId, Timestamp, Option<String>)>, StoreError> {
        const SQL: &str = "SELECT h.plan_name, h.run_id, h.created_at, h.verdict
             FROM health_checks h
             WHERE h.node = $1 AND h.created_at = (
                 SELECT MAX(h2.created_at) FROM health_checks h2
                 WHERE h2.node = h.node AND h2.plan_name = h.plan_name)
             ORDER BY h.plan_name";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(node.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let f = Fields::new(row, "health_checks", &["run_id"]);
                    Ok((
                        f.text("plan_name")?,
                        RunId(f.text("run_id")?),
                        f.time("created_at")?,
                        f.opt_text("verdict")?,
                    ))
                })
                .collect()
        })
    }
}
