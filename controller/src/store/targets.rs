//! The plan of record of releases in the store: a target date per milestone, set with a
//! compare-and-set on the target it was decided from (`tollgate_domain::target::plan_target`)
//! and its audit entry in one transaction; the customers each release is for; and the step
//! durations earlier runs measured, for projections.

use super::connect::Begin;
use super::{AuditNote, Pool, Store, StoreError, micros, rows, text};
use std::collections::BTreeMap;
use std::time::Duration;
use tollgate_domain::ReleaseId;
use tollgate_domain::target::{MilestoneTarget, TargetChange};

/// A release's targets, by milestone name.
const TARGETS: &str = "SELECT release, milestone, target, reason, set_by, set_at
     FROM milestone_targets WHERE release = $1 ORDER BY milestone";
/// A release's customers, by name.
const CUSTOMERS: &str =
    "SELECT customer FROM release_customers WHERE release = $1 ORDER BY customer";

impl Store {
    /// The targets of `release`'s milestones, by milestone name.
    pub async fn milestone_targets(
        &self,
        release: &ReleaseId,
    ) -> Result<Vec<MilestoneTarget>, StoreError> {
        Ok(self
            .milestone_targets_of(std::slice::from_ref(release))
            .await?
            .remove(release)
            .unwrap_or_default())
    }

    /// The targets of each of `releases` (one read), by milestone name; a release without
    /// any has no entry.
    pub async fn milestone_targets_of(
        &self,
        releases: &[ReleaseId],
    ) -> Result<BTreeMap<ReleaseId, Vec<MilestoneTarget>>, StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin_snapshot().await?;
            let mut targets = BTreeMap::new();
            for release in releases {
                let found: Vec<MilestoneTarget> = sqlx::query(TARGETS)
                    .bind(release.as_str())
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(rows::milestone_target)
                    .collect::<Result<_, _>>()?;
                if !found.is_empty() {
                    targets.insert(release.clone(), found);
                }
            }
            tx.commit().await?;
            Ok(targets)
        })
    }

    /// Applies a decided target change of `release` with its audit entry `note`, in one
    /// transaction, if the milestone's target is still the one decided from; else
    /// `Conflict`, so two writers never both move a date from the same one.
    pub async fn set_milestone_target(
        &self,
        release: &ReleaseId,
        change: &TargetChange,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        const INSERT: &str =
            "INSERT INTO milestone_targets (release, milestone, target, reason, set_by, set_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (release, milestone) DO NOTHING";
        const MOVE: &str = "UPDATE milestone_targets
             SET target = $3, reason = $4, set_by = $5, set_at = $6
             WHERE release = $1 AND milestone = $2 AND target = $7";
        let to = &change.to;
        let from = change.from.map(|date| date.to_string());
        let what = format!("target of release {release} at {}", to.milestone);
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let query = sqlx::query(if from.is_some() { MOVE } else { INSERT })
                .bind(release.as_str())
                .bind(&to.milestone)
                .bind(to.target.to_string())
                .bind(to.reason.as_deref().map(text))
                .bind(&to.set_by)
                .bind(micros(to.set_at));
            let query = match &from {
                Some(from) => query.bind(from),
                None => query,
            };
            let n_rows = query.execute(&mut *tx).await?.rows_affected();
            if n_rows == 0 {
                return Err(StoreError::Conflict {
                    what: what.clone(),
                    detail: format!(
                        "expected {}, found another",
                        from.as_deref().unwrap_or("no target")
                    ),
                });
            }
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }

    /// How long the passed attempts of the steps of plan `plan_name` took, in any run, the
    /// newest `limit` of them: (step name, duration), newest first.
    pub async fn step_durations(
        &self,
        plan_name: &str,
        limit: usize,
    ) -> Result<Vec<(String, Duration)>, StoreError> {
        const SQL: &str = "SELECT s.seq, s.step_name, s.started_at, s.finished_at
             FROM step_results s JOIN jobs j ON j.id = s.job_id JOIN runs r ON r.id = j.run_id
             WHERE r.plan_name = $1 AND s.outcome = 'passed'
             ORDER BY s.seq DESC LIMIT $2";
        let limit = super::page_limit(limit);
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(plan_name)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let f = rows::Fields::new(row, "step_results", &["seq"]);
                    let took = f.time("finished_at")? - f.time("started_at")?;
                    // A clock step backwards on the node can make an attempt look negative.
                    Ok((f.text("step_name")?, took.to_std().unwrap_or_default()))
                })
                .collect()
        })
    }

    /// The customers `release` is for, by name.
    pub async fn release_customers(&self, release: &ReleaseId) -> Result<Vec<String>, StoreError> {
        Ok(self
            .release_customers_of(std::slice::from_ref(release))
            .await?
            .remove(release)
            .unwrap_or_default())
    }

    /// The customers of each of `releases` (one read), by name; a release without any has no
    /// entry.
    pub async fn release_customers_of(
        &self,
        releases: &[ReleaseId],
    ) -> Result<BTreeMap<ReleaseId, Vec<String>>, StoreError> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin_snapshot().await?;
            let mut customers = BTreeMap::new();
            for release in releases {
                let found: Vec<String> = sqlx::query(CUSTOMERS)
                    .bind(release.as_str())
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|row| {
                        rows::Fields::new(row, "release_customers", &["customer"]).text("customer")
                    })
                    .collect::<Result<_, _>>()?;
                if !found.is_empty() {
                    customers.insert(release.clone(), found);
                }
            }
            tx.commit().await?;
            Ok(customers)
        })
    }

    /// Makes `customers` the ones `release` is for, with the audit entry `note`, in one
    /// transaction.
    pub async fn set_release_customers(
        &self,
        release: &ReleaseId,
        customers: &[String],
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        const CLEAR: &str = "DELETE FROM release_customers WHERE release = $1";
        const INSERT: &str = "INSERT INTO release_customers (release, customer) VALUES ($1, $2)
             ON CONFLICT (release, customer) DO NOTHING";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(CLEAR)
                .bind(release.as_str())
                .execute(&mut *tx)
                .await?;
            for customer in customers {
                sqlx::query(INSERT)
                    .bind(release.as_str())
                    .bind(customer)
                    .execute(&mut *tx)
                    .await?;
            }
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }
}
