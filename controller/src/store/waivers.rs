//! Waivers in the store: granted and revoked with their audit entry in the same transaction;
//! a revocation applies only to a waiver not revoked before (compare-and-set).

use super::connect::Begin;
use super::rows::{Fields, StoreRow};
use super::{
    AuditNote, CreatedKey, Pool, Store, StoreError, classify, micros, page_limit, text, to_json,
};
use tollgate_domain::gate::Waiver;
use tollgate_domain::{NodeId, ReleaseId, Timestamp};

/// A `waivers` row.
fn waiver(row: &impl StoreRow) -> Result<Waiver, StoreError> {
    let f = Fields::new(row, "waivers", &["id"]);
    Ok(Waiver {
        id: f.text("id")?,
        release: f.text("release")?,
        milestone: f.text("milestone")?,
        rule_id: f.text("rule_id")?,
        reason: f.text("reason")?,
        ticket: f.text("ticket")?,
        approver: f.text("approver")?,
        created_at: f.time("created_at")?,
        expires_at: f.time("expires_at")?,
        revoked_at: f.opt_time("revoked_at")?,
        nodes: f.json::<Vec<NodeId>>("nodes")?,
        skus: f.json("skus")?,
        steps: f.json("steps")?,
        issue: f.opt_int_as("issue_id")?,
    })
}

/// `SELECT` of waivers, then `$tail`.
macro_rules! waiver_query {
    ($tail:expr) => {
        concat!(
            "SELECT id, release, milestone, rule_id, reason, ticket, approver, created_at,
                    expires_at, revoked_at, nodes, skus, steps, issue_id, seq
             FROM waivers",
            $tail
        )
    };
}

impl Store {
    /// Stores a new waiver with its audit entry; `AlreadyExists` when the id is taken,
    /// `NotFound` when the release does not exist.
    pub async fn create_waiver(&self, waiver: &Waiver, note: &AuditNote) -> Result<(), StoreError> {
        const INSERT: &str = "INSERT INTO waivers (id, release, milestone, rule_id, reason, ticket,
                 approver, created_at, expires_at, revoked_at, nodes, skus, steps, issue_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";
        let exists = format!("waiver {}", waiver.id);
        let missing = format!("release {}", waiver.release);
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(INSERT)
                .bind(&waiver.id)
                .bind(&waiver.release)
                .bind(&waiver.milestone)
                .bind(&waiver.rule_id)
                .bind(text(&waiver.reason))
                .bind(text(&waiver.ticket))
                .bind(&waiver.approver)
                .bind(micros(waiver.created_at))
                .bind(micros(waiver.expires_at))
                .bind(waiver.revoked_at.map(micros))
                .bind(to_json(&waiver.nodes))
                .bind(to_json(&waiver.skus))
                .bind(to_json(&waiver.steps))
                .bind(waiver.issue)
                .execute(&mut *tx)
                .await
                .map_err(|err| classify(err, &exists, &missing))?;
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }

    /// One waiver.
    pub async fn get_waiver(&self, id: &str) -> Result<Option<Waiver>, StoreError> {
        const SQL: &str = waiver_query!(" WHERE id = $1");
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(|row| waiver(&row))
                .transpose()
        })
    }

    /// The waivers of a release (at one milestone, when given), oldest first, revoked and
    /// expired ones included.
    pub async fn list_waivers(
        &self,
        release: &ReleaseId,
        milestone: Option<&str>,
    ) -> Result<Vec<Waiver>, StoreError> {
        const SQL: &str = waiver_query!(
            " WHERE release = $1 AND ($2 IS NULL OR milestone = $2) ORDER BY created_at, seq"
        );
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(release.as_str())
                .bind(milestone)
                .fetch_all(pool)
                .await?
                .iter()
                .map(waiver)
                .collect()
        })
    }

    /// Up to `limit` waivers of a release (at one milestone, when given), oldest first (by
    /// `created_at`, then insertion), starting after the order key `after` of the last one of
    /// the previous page; each with its order key.
    pub async fn list_waivers_page(
        &self,
        release: &ReleaseId,
        milestone: Option<&str>,
        after: Option<CreatedKey>,
        limit: usize,
    ) -> Result<Vec<(Waiver, CreatedKey)>, StoreError> {
        const SQL: &str = waiver_query!(
            " WHERE release = $1 AND ($2 IS NULL OR milestone = $2)
                AND ($3 IS NULL OR (created_at, seq) > ($3, $4))
              ORDER BY created_at, seq LIMIT $5"
        );
        let (at, seq) = after.unzip();
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(release.as_str())
                .bind(milestone)
                .bind(at)
                .bind(seq)
                .bind(page_limit(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Ok((waiver(row)?, super::rows::created_key(row, "waivers")?)))
                .collect()
        })
    }

    /// Revokes a waiver at `at`, with its audit entry; `NotFound` when there is no such
    /// waiver, `Conflict` when it was revoked before. Returns the waiver as revoked.
    pub async fn revoke_waiver(
        &self,
        id: &str,
        at: Timestamp,
        note: &AuditNote,
    ) -> Result<Waiver, StoreError> {
        const REVOKE: &str = "UPDATE waivers SET revoked_at = $2, revoked_by = $3
             WHERE id = $1 AND revoked_at IS NULL";
        const SQL: &str = waiver_query!(" WHERE id = $1");
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let n_rows = sqlx::query(REVOKE)
                .bind(id)
                .bind(micros(at))
                .bind(&note.actor)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let found = sqlx::query(SQL)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| waiver(&row))
                .transpose()?;
            let Some(found) = found else {
                return Err(StoreError::NotFound {
                    what: format!("waiver {id}"),
                });
            };
            if n_rows == 0 {
                return Err(StoreError::Conflict {
                    what: format!("waiver {id}"),
                    detail: "it was revoked already".into(),
                });
            }
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(found)
        })
    }
}
