//! Gate policies in the store: each applied version kept with its audit entry; the latest
//! applied policy of a milestone rules.

use super::connect::Begin;
use super::{AuditNote, Pool, Store, StoreError, StoredGate, micros, rows, text, to_json};
use tollgate_domain::Timestamp;
use tollgate_domain::gate::GatePolicy;

impl Store {
    /// Stores a gate policy with its audit entry `note`, in one transaction; the latest
    /// applied policy of a milestone rules.
    pub async fn put_gate(
        &self,
        policy: &GatePolicy,
        source: &str,
        now: Timestamp,
        note: &AuditNote,
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
            append_audit!(tx, note);
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
}
