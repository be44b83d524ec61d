//! Fleet telemetry history in the store (`tollgate_domain::fleet_history`): closed buckets
//! written in batches, read back merged, deleted past their tier's retention.
//!
//! **Invariant:** rows are only inserted and deleted, never updated: a late sample's bucket
//! is a second row, folded into the first by `tollgate_domain::fleet_history::merge` when
//! read.

use super::connect::Begin;
use super::pg_copy::CopyBinary;
use super::rows::{Fields, StoreRow};
use super::{Pool, Store, StoreError, micros, text};
use std::collections::BTreeMap;
use tollgate_domain::fleet_history::{self, Bucket, Stat};
use tollgate_domain::telemetry::Field;
use tollgate_domain::{NodeId, Timestamp};

/// Rows per `INSERT` on SQLite (five parameters each).
const ROWS_PER_INSERT: usize = 500;

/// What [`Store::fleet_telemetry`] reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetQuery {
    /// The node.
    pub node: NodeId,
    /// One GPU, or every GPU.
    pub gpu_index: Option<u32>,
    /// The tier's width, seconds.
    pub resolution_s: u32,
    /// Buckets starting at or after this...
    pub since: Timestamp,
    /// ...and before this.
    pub until: Timestamp,
    /// Most rows read (buckets after merging may be fewer).
    pub limit: usize,
}

/// A bucket's fields as stored: field name → `[min, max, sum, samples]`.
fn fields_json(fields: &BTreeMap<Field, Stat>) -> String {
    let map: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(field, stat)| {
            (
                field.name().to_owned(),
                serde_json::json!([stat.min, stat.max, stat.sum, stat.samples]),
            )
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// A `fleet_telemetry` row. Field names this build does not know (written by a newer one)
/// are skipped.
pub(super) fn bucket(row: &impl StoreRow) -> Result<Bucket, StoreError> {
    let f = Fields::new(row, "fleet_telemetry", &["node"]);
    let stored: BTreeMap<String, (f64, f64, f64, u32)> = f.json("fields")?;
    Ok(Bucket {
        node: NodeId::from(f.text("node")?.as_str()),
        gpu_index: f.int_as("gpu_index")?,
        resolution_s: f.int_as("resolution_s")?,
        start: f.time("bucket_start")?,
        fields: stored
            .into_iter()
            .filter_map(|(name, (min, max, sum, samples))| {
                let field = name.parse::<Field>().ok()?;
                Some((
                    field,
                    Stat {
                        min,
                        max,
                        sum,
                        samples,
                    },
                ))
            })
            .collect(),
    })
}

/// SQLite's `INSERT` of `n_rows` rows, its parameters anonymous (`?`): sqlx binds a numbered
/// parameter (`$7`) by asking SQLite its name, a walk of the statement's parameter list each
/// time, so binding a statement of numbered parameters costs the square of their number
/// (2,500 here: 5 % of the controller's CPU in a 5,000-node run). Anonymous ones are bound in
/// order, without a name.
fn insert_sql(n_rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO fleet_telemetry (node, gpu_index, resolution_s, bucket_start, fields) VALUES ",
    );
    for row in 0..n_rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push_str("(?, ?, ?, ?, ?)");
    }
    sql
}

/// How each backend writes a batch of bucket rows (`rows`: each bucket's node and fields as
/// stored), all or none.
trait WriteBuckets {
    async fn write_buckets(
        &self,
        buckets: &[Bucket],
        rows: Vec<(String, String)>,
    ) -> Result<(), StoreError>;
}

impl WriteBuckets for sqlx::SqlitePool {
    /// In one transaction, in statements of [`ROWS_PER_INSERT`] rows.
    async fn write_buckets(
        &self,
        buckets: &[Bucket],
        rows: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        let full_sql = insert_sql(ROWS_PER_INSERT);
        let mut tx = self.begin_write().await?;
        for (chunk, encoded) in buckets
            .chunks(ROWS_PER_INSERT)
            .zip(rows.chunks(ROWS_PER_INSERT))
        {
            let sql = if chunk.len() == ROWS_PER_INSERT {
                full_sql.clone()
            } else {
                insert_sql(chunk.len())
            };
            // Built from numbered placeholders only: the values are bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (bucket, (node, fields)) in chunk.iter().zip(encoded) {
                query = query
                    .bind(node.as_str())
                    .bind(i64::from(bucket.gpu_index))
                    .bind(i64::from(bucket.resolution_s))
                    .bind(micros(bucket.start))
                    .bind(fields.as_str());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl WriteBuckets for sqlx::PgPool {
    /// In one binary `COPY` (one statement: all or none), as PostgreSQL appends rows fastest.
    /// One `INSERT ... SELECT FROM UNNEST` of the columns as arrays wrote at 0.69-0.85x of the
    /// same rows' `COPY`, statements of 500 rows × 5 parameters at a third of it
    /// (`pg-ingest-bench`, BENCHMARKS.md).
    async fn write_buckets(
        &self,
        buckets: &[Bucket],
        rows: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        use sqlx::postgres::PgPoolCopyExt as _;
        let n_bytes: usize = rows
            .iter()
            .map(|(node, fields)| node.len() + fields.len() + 64)
            .sum();
        let mut copy = CopyBinary::with_capacity(n_bytes);
        for (bucket, (node, fields)) in buckets.iter().zip(&rows) {
            copy.tuple(5);
            copy.text(node)?;
            copy.int8(i64::from(bucket.gpu_index));
            copy.int8(i64::from(bucket.resolution_s));
            copy.timestamptz(bucket.start);
            copy.text(fields)?;
        }
        let mut copy_in = self.copy_in_raw(COPY_BUCKETS).await?;
        copy_in.send(copy.finish()).await?;
        let n_rows = copy_in.finish().await?;
        if n_rows != buckets.len() as u64 {
            return Err(StoreError::Conflict {
                what: "a flush of fleet telemetry".into(),
                detail: format!("{} rows sent, {n_rows} stored", buckets.len()),
            });
        }
        Ok(())
    }
}

/// The bucket rows' binary `COPY` ([`CopyBinary`]).
pub const COPY_BUCKETS: &str = "COPY fleet_telemetry (node, gpu_index, resolution_s, \
     bucket_start, fields) FROM STDIN (FORMAT binary)";

impl Store {
    /// Writes closed buckets, all in one transaction: all or none.
    pub async fn record_fleet_buckets(&self, buckets: &[Bucket]) -> Result<(), StoreError> {
        if buckets.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, String)> = buckets
            .iter()
            .map(|bucket| {
                (
                    text(bucket.node.as_str()).into_owned(),
                    fields_json(&bucket.fields),
                )
            })
            .collect();
        writing!(self, |pool| pool.write_buckets(buckets, rows).await)
    }

    /// A node's buckets of one tier in `[since, until)`, oldest first then by GPU, rows of
    /// one bucket merged; at most `limit` rows read.
    pub async fn fleet_telemetry(&self, query: &FleetQuery) -> Result<Vec<Bucket>, StoreError> {
        const SQL: &str = "SELECT node, gpu_index, resolution_s, bucket_start, fields
             FROM fleet_telemetry
             WHERE node = $1 AND resolution_s = $2 AND bucket_start >= $3 AND bucket_start < $4
               AND ($5 IS NULL OR gpu_index = $5)
             ORDER BY bucket_start, gpu_index LIMIT $6";
        let rows: Vec<Bucket> = with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(query.node.as_str())
                .bind(i64::from(query.resolution_s))
                .bind(micros(query.since))
                .bind(micros(query.until))
                .bind(query.gpu_index.map(i64::from))
                .bind(super::page_limit(query.limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(bucket)
                .collect::<Result<_, StoreError>>()
        })?;
        Ok(fleet_history::merge(rows))
    }

    /// Deletes the buckets of the tier `resolution_s` seconds wide that start before
    /// `before`; returns how many rows went.
    pub async fn prune_fleet_telemetry(
        &self,
        resolution_s: u32,
        before: Timestamp,
    ) -> Result<u64, StoreError> {
        const SQL: &str =
            "DELETE FROM fleet_telemetry WHERE resolution_s = $1 AND bucket_start < $2";
        writing!(self, |pool| {
            Ok(sqlx::query(SQL)
                .bind(i64::from(resolution_s))
                .bind(micros(before))
                .execute(pool)
                .await?
                .rows_affected())
        })
    }
}
