//! API tokens in the store: created and revoked with their audit entry in the same
//! transaction; a revocation applies only to a token not revoked before (compare-and-set).
//! Only a secret's sha256 is stored.

use super::connect::Begin;
use super::rows::{Fields, StoreRow};
use super::{AuditNote, Pool, Store, StoreError, classify, micros};
use tollgate_domain::Timestamp;
use tollgate_domain::access::ApiToken;

/// An `api_tokens` row: the token and its secret's hash.
fn api_token(row: &impl StoreRow) -> Result<(String, ApiToken), StoreError> {
    let f = Fields::new(row, "api_tokens", &["name"]);
    let token = ApiToken {
        name: f.text("name")?,
        role: f.parse("role")?,
        customer: f.opt_text("customer")?,
        created_by: f.text("created_by")?,
        created_at: f.time("created_at")?,
        expires_at: f.time("expires_at")?,
        revoked_at: f.opt_time("revoked_at")?,
    };
    Ok((f.text("secret_hash")?, token))
}

/// `SELECT` of API tokens, then `$tail`.
macro_rules! api_token_query {
    ($tail:expr) => {
        concat!(
            "SELECT name, secret_hash, role, customer, created_by, created_at, expires_at,
                    revoked_at
             FROM api_tokens",
            $tail
        )
    };
}

impl Store {
    /// Stores a new token by its secret's hash, with its audit entry; `AlreadyExists` when
    /// the name is taken.
    pub async fn create_api_token(
        &self,
        token: &ApiToken,
        secret_hash: &str,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        const INSERT: &str = "INSERT INTO api_tokens (name, secret_hash, role, customer,
                 created_by, created_at, expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        let exists = format!("API token {}", token.name);
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(INSERT)
                .bind(&token.name)
                .bind(secret_hash)
                .bind(token.role.as_str())
                .bind(token.customer.as_deref())
                .bind(&token.created_by)
                .bind(micros(token.created_at))
                .bind(micros(token.expires_at))
                .bind(token.revoked_at.map(micros))
                .execute(&mut *tx)
                .await
                .map_err(|err| classify(err, &exists, &exists))?;
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Every stored token with its secret's hash, oldest first, revoked and expired ones
    /// included.
    pub async fn list_api_tokens(&self) -> Result<Vec<(String, ApiToken)>, StoreError> {
        const SQL: &str = api_token_query!(" ORDER BY seq");
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .fetch_all(pool)
                .await?
                .iter()
                .map(api_token)
                .collect()
        })
    }

    /// Revokes a token at `at`, with its audit entry; `NotFound` when there is no such token,
    /// `Conflict` when it was revoked before. Returns the token as revoked.
    pub async fn revoke_api_token(
        &self,
        name: &str,
        at: Timestamp,
        note: &AuditNote,
    ) -> Result<ApiToken, StoreError> {
        const REVOKE: &str = "UPDATE api_tokens SET revoked_at = $2, revoked_by = $3
             WHERE name = $1 AND revoked_at IS NULL";
        const SQL: &str = api_token_query!(" WHERE name = $1");
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let n_rows = sqlx::query(REVOKE)
                .bind(name)
                .bind(micros(at))
                .bind(&note.actor)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let found = sqlx::query(SQL)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| api_token(&row))
                .transpose()?;
            let Some((_, found)) = found else {
                return Err(StoreError::NotFound {
                    what: format!("API token {name} (tollgate token list shows them)"),
                });
            };
            if n_rows == 0 {
                return Err(StoreError::Conflict {
                    what: format!("API token {name}"),
                    detail: "it was revoked already".into(),
                });
            }
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(found)
        })
    }
}
