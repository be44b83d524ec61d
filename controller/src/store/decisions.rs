//! Stored gate decisions: appended once per evaluation, the latest read back.

use super::{Pool, Store, StoreError, classify, micros, rows, to_json};
use tollgate_domain::ReleaseId;
use tollgate_domain::gate::Decision;

impl Store {
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
}
