//! The fleet telemetry history on the controller: `PushTelemetry` folds samples into open
//! buckets in memory (`Shared::fleet_rollup`); every replica's [`run_loop`] writes the
//! buckets that closed, in writes of [`BUCKETS_PER_WRITE`], every `fleet_flush_every`, and
//! what is still open at shutdown; the lease leader deletes what fell out of retention
//! ([`prune_if_due`]).
//!
//! While the database refuses writes the buckets wait in memory, up to [`MAX_WAITING`]; past
//! that the oldest are dropped and a warning says how many.

use crate::shared::Shared;
use crate::store::StoreError;
use std::sync::Arc;
use std::time::Duration;
use tollgate_domain::fleet_history::{History, Refused};
use tollgate_domain::telemetry::Field;
use tollgate_domain::{NodeId, Timestamp};
use tracing::Instrument as _;

/// Most buckets waiting in memory (open, or closed and not yet written): about 100 bytes
/// each plus their fields; 1,000 nodes × 8 GPUs × 2 tiers × a few open buckets fit.
pub const MAX_WAITING: usize = 200_000;

/// How often the lease leader deletes buckets past their retention.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// What one `PushTelemetry` batch added.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Folded {
    /// Samples folded in.
    pub kept: u64,
    /// Samples refused: stamped more than five minutes ahead, or older than every tier keeps.
    pub refused: u64,
    /// Values under a field name this controller does not know (a newer agent's).
    pub unknown_fields: u64,
}

/// Folds one node's samples into the open buckets.
pub fn fold(
    shared: &Shared,
    node: &NodeId,
    samples: &[tollgate_proto::v1::TelemetrySample],
    now: Timestamp,
) -> Folded {
    let mut folded = Folded::default();
    let mut values = Vec::new();
    let mut rollup = shared
        .fleet_rollup
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Taken after the rollup's lock; nothing takes them the other way round.
    let mut latest = shared.metrics.latest();
    for sample in samples {
        let Some(at) = sample
            .at
            .as_ref()
            .and_then(tollgate_wire::timestamp_from_proto)
        else {
            folded.refused += 1;
            continue;
        };
        values.clear();
        for (name, value) in &sample.values {
            match name.parse::<Field>() {
                Ok(field) => values.push((field, *value)),
                Err(_) => folded.unknown_fields += 1,
            }
        }
        match rollup.add(node, sample.gpu_index, at, &values, now) {
            Ok(()) => {
                folded.kept += 1;
                crate::metrics::Metrics::note_sample(
                    &mut latest,
                    node,
                    sample.gpu_index,
                    at,
                    &values,
                );
            }
            Err(Refused::Future | Refused::TooOld) => folded.refused += 1,
        }
    }
    folded
}

/// Runs until shutdown starts, writing closed buckets every `fleet_flush_every`; then
/// writes every open bucket once.
pub async fn run_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.subscribe_shutdown();
    let every = shared.config.fleet_flush_every;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = crate::shared::stopped(&mut shutdown) => break,
        }
        if let Err(error) = flush(&shared, false)
            .instrument(crate::traces::pass("fleet telemetry flush"))
            .await
        {
            tracing::warn!(%error, "fleet telemetry not written; it waits in memory for the next try");
        }
    }
    if let Err(error) = flush(&shared, true).await {
        tracing::warn!(%error, "fleet telemetry still open at shutdown was not written");
    }
    tracing::debug!("fleet telemetry writer stopped");
}

/// Most buckets one write takes (a transaction each): a minute's end closes two tiers' buckets
/// of every GPU at once (16,000 at 1,000 nodes of 8 GPUs), and taken whole they and their
/// encoded rows were a tenth of the controller's memory at its peak while results arrived.
pub const BUCKETS_PER_WRITE: usize = 2_000;

/// Writes the buckets that closed by now (`all`: every bucket), oldest first, in writes of at
/// most [`BUCKETS_PER_WRITE`]; returns how many were written. On a failed write its buckets
/// go back to memory, bounded by [`MAX_WAITING`] (with those not taken yet), and the error
/// is returned: what was written before it stays written.
pub async fn flush(shared: &Shared, all: bool) -> Result<usize, StoreError> {
    let now = shared.now();
    let mut written = 0;
    loop {
        let buckets = {
            let mut rollup = shared
                .fleet_rollup
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if all {
                rollup.take_all(BUCKETS_PER_WRITE)
            } else {
                rollup.take_closed(now, shared.config.fleet_flush_every, BUCKETS_PER_WRITE)
            }
        };
        if buckets.is_empty() {
            return Ok(written);
        }
        let n_buckets = buckets.len();
        match shared
            .metrics
            .store(
                "record_fleet_buckets",
                shared.store.record_fleet_buckets(&buckets),
            )
            .await
        {
            Ok(()) => {
                tracing::debug!(n_buckets, "fleet telemetry buckets written");
                written += n_buckets;
            }
            Err(error) => {
                let dropped = shared
                    .fleet_rollup
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .restore(buckets, MAX_WAITING);
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        max = MAX_WAITING,
                        "fleet telemetry buckets dropped: too many wait for the database"
                    );
                }
                return Err(error);
            }
        }
        if n_buckets < BUCKETS_PER_WRITE {
            return Ok(written);
        }
    }
}

/// On the lease leader: deletes the buckets past their tier's retention (and the events
/// outside steps past the longest one), at most every
/// [`PRUNE_EVERY`]; returns the rows deleted (`None` when not due).
pub async fn prune_if_due(shared: &Shared) -> Result<Option<u64>, StoreError> {
    let now = shared.now();
    {
        let last = shared
            .fleet_pruned_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = last.is_none_or(|at| (now - at).to_std().unwrap_or_default() >= PRUNE_EVERY);
        if !due {
            return Ok(None);
        }
    }
    let mut deleted = 0;
    for tier in shared.config.fleet_history.tiers() {
        deleted += shared
            .store
            .prune_fleet_telemetry(tier.resolution_s(), History::cutoff(*tier, now))
            .await?;
    }
    // Events outside steps are kept as long as the longest tier keeps its buckets.
    if let Some(longest) = shared
        .config
        .fleet_history
        .tiers()
        .iter()
        .max_by_key(|tier| tier.retention)
    {
        deleted += shared
            .store
            .prune_fleet_events(History::cutoff(*longest, now))
            .await?;
    }
    *shared
        .fleet_pruned_at
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(now);
    if deleted > 0 {
        tracing::info!(deleted, "fleet telemetry past its retention deleted");
    }
    Ok(Some(deleted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::ControllerConfig;
    use crate::store::{FleetQuery, Pool, Store};
    use tollgate_domain::test_support::at;
    use tollgate_proto::v1 as proto;

    fn sample(gpu_index: u32, at: Timestamp, temp: f64) -> proto::TelemetrySample {
        proto::TelemetrySample {
            gpu_index,
            at: Some(tollgate_wire::timestamp_to_proto(at)),
            values: [
                ("gpu_temp_c".to_owned(), temp),
                ("some_future_field".to_owned(), 1.0),
            ]
            .into(),
        }
    }

    fn query(resolution_s: u32) -> FleetQuery {
        FleetQuery {
            node: NodeId::from("n1"),
            gpu_index: None,
            resolution_s,
            since: at(-100_000),
            until: at(100_000),
            limit: 100,
        }
    }

    /// A controller's shared state on a fresh SQLite store, its clock at 0 and manual, its
    /// history `tiers`, flushing every 5 s.
    async fn on_sqlite(tiers: &str) -> (tempfile::TempDir, Store, ManualClock, Shared) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::connect(&format!("sqlite://{}/tollgate.db", dir.path().display()))
            .await
            .expect("store");
        let clock = ManualClock::new(at(0));
        let mut config = ControllerConfig::new(dir.path().to_owned());
        config.clock = std::sync::Arc::new(clock.clone());
        config.fleet_history = History::parse(tiers).expect("history");
        config.fleet_flush_every = Duration::from_secs(5);
        let shared = Shared::new(store.clone(), config);
        (dir, store, clock, shared)
    }

    #[tokio::test]
    async fn samples_are_written_once_closed_and_deleted_past_retention() {
        let (_dir, store, clock, shared) = on_sqlite("10s:1h,1m:1d").await;
        let n1 = NodeId::from("n1");

        let folded = fold(
            &shared,
            &n1,
            &[
                sample(0, at(0), 40.0),
                sample(0, at(5), 50.0),
                sample(1, at(5), 60.0),
                // Ten minutes ahead of the controller's clock: refused.
                sample(0, at(600), 99.0),
            ],
            at(5),
        );
        assert_eq!(
            folded,
            Folded {
                kept: 3,
                refused: 1,
                unknown_fields: 4
            }
        );
        // The 10 s bucket [0, 10) is not closed before 10 s + the 5 s lateness.
        clock.advance(chrono::Duration::seconds(14));
        assert_eq!(flush(&shared, false).await.expect("flush"), 0);
        clock.advance(chrono::Duration::seconds(1));
        assert_eq!(
            flush(&shared, false).await.expect("flush"),
            2,
            "one per GPU"
        );
        let written = store.fleet_telemetry(&query(10)).await.expect("read");
        let temp = written[0].fields[&Field::GpuTempC];
        assert_eq!(
            (written[0].gpu_index, temp.mean(), temp.samples),
            (0, 45.0, 2)
        );
        // At shutdown the open minute buckets are written too.
        assert_eq!(flush(&shared, true).await.expect("flush"), 2);
        assert_eq!(
            store.fleet_telemetry(&query(60)).await.expect("read").len(),
            2
        );

        // The first prune is due at once and finds nothing old; the next waits PRUNE_EVERY.
        assert_eq!(prune_if_due(&shared).await.expect("prune"), Some(0));
        clock.advance(chrono::Duration::hours(2));
        assert_eq!(
            prune_if_due(&shared).await.expect("prune"),
            Some(2),
            "the 10 s tier keeps an hour; the minute tier a day"
        );
        assert!(
            store
                .fleet_telemetry(&query(10))
                .await
                .expect("read")
                .is_empty()
        );
        assert_eq!(
            store.fleet_telemetry(&query(60)).await.expect("read").len(),
            2
        );
        clock.advance(chrono::Duration::days(2));
        assert_eq!(prune_if_due(&shared).await.expect("prune"), Some(2));
        assert_eq!(
            prune_if_due(&shared).await.expect("prune"),
            None,
            "not due again yet"
        );
        store.close().await;
    }

    /// More closed buckets than one write takes are written in several, oldest first; a
    /// write the database refuses leaves the ones before it written, puts its own back, and
    /// the next flush writes them and the rest.
    #[tokio::test]
    async fn closed_buckets_past_one_write_are_written_in_several() {
        let (_dir, store, clock, shared) = on_sqlite("10s:1h").await;
        // 2,600 GPUs' buckets [0, 10) and 100 GPUs' of [10, 20): node names sort by number.
        let nodes: Vec<NodeId> = (0..325).map(|n| NodeId::from(format!("n{n:03}"))).collect();
        for node in &nodes {
            let samples: Vec<_> = (0..8).map(|gpu| sample(gpu, at(1), 40.0)).collect();
            fold(&shared, node, &samples, at(1));
        }
        for node in &nodes[..25] {
            let samples: Vec<_> = (0..4).map(|gpu| sample(gpu, at(11), 50.0)).collect();
            fold(&shared, node, &samples, at(11));
        }
        let Pool::Sqlite(pool) = store.pool() else {
            unreachable!("a SQLite store")
        };
        // The database refuses the second write: it holds node n250's buckets.
        sqlx::raw_sql(
            "CREATE TRIGGER refuse_n250 BEFORE INSERT ON fleet_telemetry
             WHEN NEW.node = 'n250'
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        )
        .execute(pool)
        .await
        .expect("trigger");
        let count = || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM fleet_telemetry")
                .fetch_one(pool)
                .await
                .expect("count")
        };
        clock.advance(chrono::Duration::seconds(25));
        assert!(
            flush(&shared, false).await.is_err(),
            "the second write fails"
        );
        assert_eq!(
            count().await,
            BUCKETS_PER_WRITE as i64,
            "the first is written"
        );
        let open = || {
            shared
                .fleet_rollup
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .open_buckets()
        };
        assert_eq!(
            open(),
            2_700 - BUCKETS_PER_WRITE,
            "the refused write is put back"
        );

        sqlx::raw_sql("DROP TRIGGER refuse_n250")
            .execute(pool)
            .await
            .expect("drop trigger");
        assert_eq!(
            flush(&shared, false).await.expect("flush"),
            2_700 - BUCKETS_PER_WRITE
        );
        assert_eq!(count().await, 2_700);
        assert_eq!(open(), 0);
        // Each bucket once, the later ones too.
        let n000 = store
            .fleet_telemetry(&FleetQuery {
                node: NodeId::from("n000"),
                ..query(10)
            })
            .await
            .expect("read");
        assert_eq!(n000.len(), 12, "8 GPUs' first bucket, 4 GPUs' second");
        assert!(n000.iter().all(|b| b.fields[&Field::GpuTempC].samples == 1));
        store.close().await;
    }
}
