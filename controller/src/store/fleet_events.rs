//! GPU events agents report outside steps (`PushTelemetry`), and the reads a rollout's soak
//! is judged on: the events and fleet telemetry buckets of a wave's nodes, each read for
//! every node at once.

use super::connect::Begin;
use super::rows::Fields;
use super::{Pool, Store, StoreError, micros, text};
use tollgate_domain::fleet_history::{self, Bucket};
use tollgate_domain::telemetry::GpuEvent;
use tollgate_domain::{NodeId, Timestamp};

/// Events of the nodes in `$1` (a JSON array of names) seen at or after `$2`.
const EVENTS: (&str, &str) = in_json_list!(
    "SELECT node, gpu_index, gpu_uuid, kind, code, at, detail FROM fleet_events WHERE node",
    "$1",
    " AND at >= $2 ORDER BY at, seq LIMIT $3"
);

/// Buckets of the nodes in `$1` of the tier `$2` seconds wide in `[$3, $4)`.
const BUCKETS: (&str, &str) = in_json_list!(
    "SELECT node, gpu_index, resolution_s, bucket_start, fields FROM fleet_telemetry WHERE node",
    "$1",
    " AND resolution_s = $2 AND bucket_start >= $3 AND bucket_start < $4
     ORDER BY node, bucket_start, gpu_index LIMIT $5"
);

/// Most events one read returns; a wave with more has failed `no-events` many times over.
pub const FLEET_EVENTS_MAX: usize = 10_000;
/// Most bucket rows a rollout's soak reads of one side (100 nodes of 8 GPUs soaking 1 h in
/// 10 s buckets make 288,000); past it the caller reads a coarser tier.
pub const FLEET_BUCKETS_MAX: usize = 500_000;

fn names_json(nodes: &[NodeId]) -> String {
    super::json_list(nodes.iter().map(NodeId::as_str))
}

fn event(row: &impl super::rows::StoreRow) -> Result<(NodeId, GpuEvent), StoreError> {
    let f = Fields::new(row, "fleet_events", &["node", "at"]);
    Ok((
        NodeId::from(f.text("node")?.as_str()),
        GpuEvent {
            gpu_index: f.int_as("gpu_index")?,
            gpu_uuid: f.text("gpu_uuid")?,
            kind: f.parse("kind")?,
            code: f.int_as("code")?,
            at: f.time("at")?,
            detail: f.text("detail")?,
        },
    ))
}

impl Store {
    /// Records the events `node` reported outside steps, in one statement each, one
    /// transaction for all.
    pub async fn record_fleet_events(
        &self,
        node: &NodeId,
        events: &[GpuEvent],
    ) -> Result<(), StoreError> {
        const SQL: &str =
            "INSERT INTO fleet_events (node, gpu_index, gpu_uuid, kind, code, at, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7)";
        if events.is_empty() {
            return Ok(());
        }
        writing!(self, |pool| {
            let mut tx = pool.begin_write().await?;
            for event in events {
                sqlx::query(SQL)
                    .bind(text(node.as_str()).as_ref())
                    .bind(i64::from(event.gpu_index))
                    .bind(text(&event.gpu_uuid).as_ref())
                    .bind(event.kind.as_str())
                    .bind(event.code)
                    .bind(micros(event.at))
                    .bind(text(&event.detail).as_ref())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// The events of `nodes` seen at or after `since`, oldest first, at most
    /// [`FLEET_EVENTS_MAX`].
    pub async fn fleet_events_of(
        &self,
        nodes: &[NodeId],
        since: Timestamp,
    ) -> Result<Vec<(NodeId, GpuEvent)>, StoreError> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let names = names_json(nodes);
        let limit = super::page_limit(FLEET_EVENTS_MAX);
        with_pool_sql!(self, EVENTS, |pool, sql| {
            sqlx::query(sql)
                .bind(names)
                .bind(micros(since))
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(event)
                .collect()
        })
    }

    /// The buckets of `nodes` of the tier `resolution_s` seconds wide in `[since, until)`,
    /// rows of one bucket merged; `None` when there are more than `max_rows` rows (nothing
    /// is cut short silently: the caller reads a coarser tier, or says it cannot judge).
    pub async fn fleet_buckets_of(
        &self,
        nodes: &[NodeId],
        resolution_s: u32,
        since: Timestamp,
        until: Timestamp,
        max_rows: usize,
    ) -> Result<Option<Vec<Bucket>>, StoreError> {
        if nodes.is_empty() || since >= until {
            return Ok(Some(Vec::new()));
        }
        let names = names_json(nodes);
        let limit = super::page_limit(max_rows.saturating_add(1));
        let rows: Vec<Bucket> = with_pool_sql!(self, BUCKETS, |pool, sql| {
            sqlx::query(sql)
                .bind(names)
                .bind(i64::from(resolution_s))
                .bind(micros(since))
                .bind(micros(until))
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(super::fleet_telemetry::bucket)
                .collect::<Result<_, _>>()?
        });
        if rows.len() > max_rows {
            return Ok(None);
        }
        Ok(Some(fleet_history::merge(rows)))
    }

    /// Deletes the events seen before `before`; returns how many went.
    pub async fn prune_fleet_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        const SQL: &str = "DELETE FROM fleet_events WHERE at < $1";
        writing!(self, |pool| {
            Ok(sqlx::query(SQL)
                .bind(micros(before))
                .execute(pool)
                .await?
                .rows_affected())
        })
    }
}
