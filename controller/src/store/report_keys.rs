//! The deployment's report signing keys (`report_keys`), oldest first: the first controller to
//! start records its key, and a rotation retires the current key for a new one, with its audit
//! entry, in one transaction. No row is ever deleted: reports signed with a retired key stay
//! verifiable, and `tollgate report public-key --all` lists them all.

use super::connect::Begin as _;
use super::leader::REPORT_KEY_LOCK;
use super::rows::{Fields, StoreRow};
use super::{AuditNote, Pool, Store, StoreError, classify, micros};
use ed25519_dalek::VerifyingKey;
use tollgate_domain::Timestamp;
use tollgate_domain::report_key::{ReportKey, Rotation};

/// Every key, oldest first (a rotation's new key begins when the old one is retired).
const ALL: &str = "SELECT public_key, first_used_at, retired_at FROM report_keys \
                   ORDER BY first_used_at, public_key";

/// A `report_keys` row.
fn report_key(row: &impl StoreRow) -> Result<ReportKey, StoreError> {
    let f = Fields::new(row, "report_keys", &["public_key"]);
    let public_key = f.parse::<HexKey>("public_key")?.0;
    Ok(ReportKey {
        public_key,
        active_from: f.time("first_used_at")?,
        retired_at: f.opt_time("retired_at")?,
    })
}

/// A public key as stored: lowercase hex.
struct HexKey(VerifyingKey);

impl std::str::FromStr for HexKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        tollgate_domain::report_signature::parse_public_key(text).map(HexKey)
    }
}

/// A public key as stored.
fn hex_key(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

impl Store {
    /// Records `public_key` as the deployment's report signing key, current from `at`, when
    /// no key is recorded yet, and returns every key: the first controller to start signs for
    /// all, and one whose key is not the current one must not sign
    /// (`tollgate_domain::report_key::standing` says why).
    pub async fn claim_report_key(
        &self,
        public_key: &VerifyingKey,
        at: Timestamp,
    ) -> Result<Vec<ReportKey>, StoreError> {
        const ANY: &str = "SELECT public_key FROM report_keys LIMIT 1";
        const INSERT: &str = "INSERT INTO report_keys (public_key, first_used_at) VALUES ($1, $2) \
                              ON CONFLICT (public_key) DO NOTHING";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            // Two replicas starting at once: the first to lock inserts, the other reads its
            // key (SQLite's write transaction serializes them already).
            if self.backend() == "postgres" {
                sqlx::query(REPORT_KEY_LOCK)
                    .bind(super::leader::REPORT_KEY_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
            }
            let recorded = sqlx::query(ANY).fetch_optional(&mut *tx).await?;
            if recorded.is_none() {
                sqlx::query(INSERT)
                    .bind(hex_key(public_key))
                    .bind(micros(at))
                    .execute(&mut *tx)
                    .await?;
            }
            let keys = sqlx::query(ALL)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(report_key)
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit().await?;
            Ok(keys)
        })
    }

    /// Every key the deployment has signed reports with, oldest first; the current one has
    /// no `retired_at`.
    pub async fn report_keys(&self) -> Result<Vec<ReportKey>, StoreError> {
        with_pool!(self, |pool| {
            sqlx::query(ALL)
                .fetch_all(pool)
                .await?
                .iter()
                .map(report_key)
                .collect()
        })
    }

    /// Applies a decided rotation with its audit entry: retires `rotation.retired` at
    /// `rotation.at` if it is still the current key (compare-and-set: `Conflict` when another
    /// rotation came first) and makes `rotation.current` current from the same instant.
    pub async fn rotate_report_key(
        &self,
        rotation: &Rotation,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        const RETIRE: &str = "UPDATE report_keys SET retired_at = $2 \
                              WHERE public_key = $1 AND retired_at IS NULL";
        const INSERT: &str = "INSERT INTO report_keys (public_key, first_used_at) VALUES ($1, $2)";
        let fingerprint = tollgate_domain::report_signature::fingerprint;
        let new_key = format!("report signing key {}", fingerprint(&rotation.current));
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            if self.backend() == "postgres" {
                sqlx::query(REPORT_KEY_LOCK)
                    .bind(super::leader::REPORT_KEY_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
            }
            let n_rows = sqlx::query(RETIRE)
                .bind(hex_key(&rotation.retired))
                .bind(micros(rotation.at))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n_rows == 0 {
                return Err(StoreError::Conflict {
                    what: format!("report signing key {}", fingerprint(&rotation.retired)),
                    detail: "it is no longer the deployment's current key".into(),
                });
            }
            sqlx::query(INSERT)
                .bind(hex_key(&rotation.current))
                .bind(micros(rotation.at))
                .execute(&mut *tx)
                .await
                .map_err(|err| classify(err, &new_key, &new_key))?;
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }
}
