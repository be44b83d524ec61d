//! Enrollment in the store: bootstrap tokens (hashed), spent once with a compare-and-set on
//! `spent_at IS NULL` together with the certificate issued, the node's labels of record and
//! the audit entry, in one transaction.

use super::connect::Begin;
use super::{AuditNote, Pool, Store, StoreError, micros, rows, to_json};
use tollgate_domain::enrollment::BootstrapToken;
use tollgate_domain::fleet::Labels;
use tollgate_domain::{NodeId, Timestamp};

/// A client certificate the controller signed for a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// Its serial number, hex.
    pub serial: String,
    /// The node it names.
    pub node: NodeId,
    /// When it was signed.
    pub issued_at: Timestamp,
    /// When it expires.
    pub not_after: Timestamp,
}

/// Inserts the row of a certificate issued to a node, in transaction `$tx`.
macro_rules! insert_certificate {
    ($tx:ident, $certificate:expr) => {{
        let certificate: &IssuedCertificate = $certificate;
        sqlx::query(
            "INSERT INTO node_certificates (serial, node_name, issued_at, not_after)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&certificate.serial)
        .bind(certificate.node.as_str())
        .bind(micros(certificate.issued_at))
        .bind(micros(certificate.not_after))
        .execute(&mut *$tx)
        .await?;
    }};
}

impl Store {
    /// Stores a new bootstrap token (only its hash) with its audit entry.
    pub async fn create_bootstrap_token(
        &self,
        token_hash: &str,
        token: &BootstrapToken,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO bootstrap_tokens
                (token_hash, node_name, labels, created_at, created_by, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)";
        let labels = to_json(&token.labels);
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            sqlx::query(SQL)
                .bind(token_hash)
                .bind(token.node.as_str())
                .bind(&labels)
                .bind(micros(note.at))
                .bind(&note.actor)
                .bind(micros(token.expires_at))
                .execute(&mut *tx)
                .await?;
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }

    /// The bootstrap token with this hash, if any.
    pub async fn bootstrap_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<BootstrapToken>, StoreError> {
        const SQL: &str = "SELECT token_hash, node_name, labels, expires_at, spent_at
             FROM bootstrap_tokens WHERE token_hash = $1";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(token_hash)
                .fetch_optional(pool)
                .await?
                .map(|row| {
                    let f = rows::Fields::new(&row, "bootstrap_tokens", &["token_hash"]);
                    Ok(BootstrapToken {
                        node: NodeId::new(f.text("node_name")?),
                        labels: f.json::<Labels>("labels")?,
                        expires_at: f.time("expires_at")?,
                        spent_at: f.opt_time("spent_at")?,
                    })
                })
                .transpose()
        })
    }

    /// Spends the bootstrap token (decided by `tollgate_domain::enrollment::check` from a
    /// token not yet spent) and records the certificate issued for its node and the node's
    /// labels of record, with the audit entry, in one transaction. `Conflict` when another
    /// enrollment spent the token meanwhile.
    pub async fn spend_bootstrap_token(
        &self,
        token_hash: &str,
        labels: &Labels,
        certificate: &IssuedCertificate,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        const SPEND: &str = "UPDATE bootstrap_tokens SET spent_at = $2
             WHERE token_hash = $1 AND spent_at IS NULL";
        const LABELS: &str = "INSERT INTO node_enrollments (node_name, labels, enrolled_at)
             VALUES ($1, $2, $3)
             ON CONFLICT (node_name) DO UPDATE SET labels = $2, enrolled_at = $3";
        let labels = to_json(labels);
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let n_rows = sqlx::query(SPEND)
                .bind(token_hash)
                .bind(micros(note.at))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n_rows == 0 {
                return Err(StoreError::Conflict {
                    what: format!("bootstrap token of node {}", certificate.node),
                    detail: "spent by another enrollment meanwhile".into(),
                });
            }
            insert_certificate!(tx, certificate);
            sqlx::query(LABELS)
                .bind(certificate.node.as_str())
                .bind(&labels)
                .bind(micros(note.at))
                .execute(&mut *tx)
                .await?;
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Revokes every certificate of `node` not revoked yet (a compare-and-set on
    /// `revoked_at IS NULL`), with the audit entry; returns their serials (none: nothing
    /// was revoked, and nothing is audited).
    pub async fn revoke_node_certificates(
        &self,
        node: &NodeId,
        note: &AuditNote,
    ) -> Result<Vec<String>, StoreError> {
        const SQL: &str = "UPDATE node_certificates SET revoked_at = $2
             WHERE node_name = $1 AND revoked_at IS NULL RETURNING serial";
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            let serials = sqlx::query(SQL)
                .bind(node.as_str())
                .bind(micros(note.at))
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| rows::Fields::new(row, "node_certificates", &["serial"]).text("serial"))
                .collect::<Result<Vec<_>, _>>()?;
            if serials.is_empty() {
                return Ok(serials);
            }
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(serials)
        })
    }

    /// Every revoked node certificate: its serial and the node it was issued to.
    pub async fn revoked_certificates(&self) -> Result<Vec<(String, NodeId)>, StoreError> {
        const SQL: &str =
            "SELECT serial, node_name FROM node_certificates WHERE revoked_at IS NOT NULL";
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let fields =
                        rows::Fields::new(row, "node_certificates", &["serial", "node_name"]);
                    Ok((
                        fields.text("serial")?,
                        NodeId::new(fields.text("node_name")?),
                    ))
                })
                .collect()
        })
    }

    /// Records a certificate issued to an enrolled node (a renewal), with its audit entry.
    pub async fn record_certificate(
        &self,
        certificate: &IssuedCertificate,
        note: &AuditNote,
    ) -> Result<(), StoreError> {
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            insert_certificate!(tx, certificate);
            append_audit!(tx, note);
            tx.commit().await?;
            Ok(())
        })
    }
}
