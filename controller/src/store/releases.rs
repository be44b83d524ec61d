//! Releases in the store: registering them, reading them with their promotions, and applying
//! a lifecycle change decided by `tollgate_domain::release::next` (promotion, demotion, halt,
//! resume) with a compare-and-set on the state it was decided from and its audit entry, in
//! one transaction.

use super::connect::Begin;
use super::{
    AuditNote, CreatedKey, Pool, Store, StoreError, classify, micros, page_limit, rows, text,
    to_json,
};
use std::collections::HashMap;
use tollgate_domain::ReleaseId;
use tollgate_domain::release::{Promotion, Release, ReleaseChange, ReleaseState};

/// Appends one promotion row.
const INSERT_PROMOTION: &str =
    "INSERT INTO promotions (release, from_milestone, to_milestone, promoted_at, decision_digest,
                             actor)
     VALUES ($1, $2, $3, $4, $5, $6)";

impl Store {
    /// Stores a new release with its audit entry `note`, in one transaction; `AlreadyExists`
    /// when the name is taken.
    pub async fn create_release(
        &self,
        release: &Release,
        note: &AuditNote,
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
            append_audit!(tx, note);
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
        let page = self.list_releases_page(None, None, usize::MAX).await?;
        Ok(page.into_iter().map(|(release, _)| release).collect())
    }

    /// Up to `limit` releases, newest first (by `created_at`, then insertion), starting after
    /// the order key `after` of the last one of the previous page; each with its order key.
    /// With `customer`, only the releases that customer may see: those for it, and those for
    /// no customer in particular (`release_customers`).
    pub async fn list_releases_page(
        &self,
        after: Option<CreatedKey>,
        customer: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Release, CreatedKey)>, StoreError> {
        macro_rules! page {
            ($columns:expr) => {
                concat!(
                    "SELECT ",
                    $columns,
                    " FROM releases WHERE ($1 IS NULL OR (created_at, seq) < ($1, $2))
                       AND ($4 IS NULL
                            OR NOT EXISTS (SELECT 1 FROM release_customers c WHERE c.release = name)
                            OR name IN (SELECT release FROM release_customers WHERE customer = $4))
                     ORDER BY created_at DESC, seq DESC LIMIT $3"
                )
            };
        }
        const SQL: &str = page!("name, description, components, milestone, created_at, seq");
        const PROMOTIONS: &str = concat!(
            "SELECT release, from_milestone, to_milestone, promoted_at, decision_digest, actor
             FROM promotions WHERE release IN (",
            page!("name"),
            ") ORDER BY promoted_at, seq"
        );
        let (at, seq) = after.unzip();
        let limit = page_limit(limit);
        with_pool!(self, |pool| {
            let mut tx = pool.begin_snapshot().await?;
            let mut releases: Vec<(Release, CreatedKey)> = sqlx::query(SQL)
                .bind(at)
                .bind(seq)
                .bind(limit)
                .bind(customer)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| Ok((rows::release(row)?, rows::created_key(row, "releases")?)))
                .collect::<Result<_, StoreError>>()?;
            let mut promotions: HashMap<String, Vec<Promotion>> = HashMap::new();
            let promoted = sqlx::query(PROMOTIONS)
                .bind(at)
                .bind(seq)
                .bind(limit)
                .bind(customer)
                .fetch_all(&mut *tx)
                .await?;
            for row in promoted {
                let release =
                    rows::Fields::new(&row, "promotions", &["release"]).text("release")?;
                promotions
                    .entry(release)
                    .or_default()
                    .push(rows::promotion(&row)?);
            }
            tx.commit().await?;
            for (release, _) in &mut releases {
                release.promotions = promotions.remove(release.id.as_str()).unwrap_or_default();
            }
            Ok(releases)
        })
    }

    /// Where a release stands (milestone, halt), or `None` when it does not exist.
    pub async fn release_state(
        &self,
        release: &ReleaseId,
    ) -> Result<Option<ReleaseState>, StoreError> {
        const SQL: &str = "SELECT name, milestone, halted_reason FROM releases WHERE name = $1";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(release.as_str())
                .fetch_optional(pool)
                .await?
                .map(|row| {
                    let f = rows::Fields::new(&row, "releases", &["name"]);
                    Ok(ReleaseState {
                        milestone: f.text("milestone")?,
                        halted: f.opt_text("halted_reason")?,
                    })
                })
                .transpose()
        })
    }

    /// Applies a release change decided by `tollgate_domain::release::next`: moves the release
    /// to `change.to`, appends `change.promotion` when there is one, and writes the audit entry
    /// `note`, in one transaction. It applies only if the release is still in `change.from`
    /// (milestone and halt), else `Conflict` (or `NotFound`), so two writers never both apply
    /// changes decided from the same state: of two promotions from one milestone, one applies.
    pub async fn change_release(
        &self,
        release: &ReleaseId,
        change: &ReleaseChange,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        // Which of the two depends on the state decided from, not on the row: a halt reason is
        // compared as a value, its absence as NULL.
        const WHEN_RUNNING: &str = "UPDATE releases SET milestone = $3, halted_reason = $4
             WHERE name = $1 AND milestone = $2 AND halted_reason IS NULL";
        const WHEN_HALTED: &str = "UPDATE releases SET milestone = $3, halted_reason = $4
             WHERE name = $1 AND milestone = $2 AND halted_reason = $5";
        let from_halted = change.from.halted.as_deref().map(text);
        let sql = if from_halted.is_some() {
            WHEN_HALTED
        } else {
            WHEN_RUNNING
        };
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let mut update = sqlx::query(sql)
                .bind(release.as_str())
                .bind(&change.from.milestone)
                .bind(&change.to.milestone)
                .bind(change.to.halted.as_deref().map(text));
            if let Some(reason) = &from_halted {
                update = update.bind(reason.as_ref());
            }
            let n_rows = update.execute(&mut *tx).await?.rows_affected();
            if n_rows == 0 {
                let current = sqlx::query(
                    "SELECT name, milestone, halted_reason FROM releases WHERE name = $1",
                )
                .bind(release.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| {
                    let f = rows::Fields::new(&row, "releases", &["name"]);
                    Ok::<_, StoreError>((f.text("milestone")?, f.opt_text("halted_reason")?))
                })
                .transpose()?;
                return Err(match current {
                    None => StoreError::NotFound {
                        what: format!("release {release}"),
                    },
                    Some((milestone, halted)) => StoreError::Conflict {
                        what: format!("release {release}"),
                        detail: format!(
                            "expected milestone {} ({}), found {milestone} ({})",
                            change.from.milestone,
                            halt_text(change.from.halted.as_deref()),
                            halt_text(halted.as_deref())
                        ),
                    },
                });
            }
            if let Some(promotion) = &change.promotion {
                sqlx::query(INSERT_PROMOTION)
                    .bind(release.as_str())
                    .bind(&promotion.from_milestone)
                    .bind(&promotion.to_milestone)
                    .bind(micros(promotion.at))
                    .bind(&promotion.decision_digest)
                    .bind(&promotion.actor)
                    .execute(&mut *tx)
                    .await?;
            }
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }
}

/// A halt for a conflict's detail.
fn halt_text(halted: Option<&str>) -> String {
    halted.map_or_else(
        || "not halted".to_owned(),
        |reason| format!("halted: {reason}"),
    )
}
