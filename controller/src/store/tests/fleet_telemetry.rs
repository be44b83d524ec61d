//! Store tests of the fleet telemetry history: buckets written in one batch (more rows than
//! one `INSERT` takes) read back by node, tier, time and GPU; a late bucket's second row is
//! merged when read; retention deletes only its tier's old rows. On both backends.

use super::*;
use crate::store::FleetQuery;
use std::collections::BTreeMap;
use tollgate_domain::fleet_history::{Bucket, Stat};

on_both_backends!(
    fleet_buckets_read_back_by_node_tier_time_and_gpu,
    a_late_bucket_merges_when_read_and_retention_keeps_the_rest,
);

fn bucket(node: &str, gpu_index: u32, resolution_s: u32, secs: i64, temp: f64) -> Bucket {
    Bucket {
        node: NodeId::from(node),
        gpu_index,
        resolution_s,
        start: at(secs),
        fields: BTreeMap::from([
            (
                Field::GpuTempC,
                Stat {
                    min: temp - 1.0,
                    max: temp + 1.0,
                    sum: temp * 4.0,
                    samples: 4,
                },
            ),
            (Field::PowerW, Stat::of(300.5)),
        ]),
    }
}

fn query(node: &str, gpu_index: Option<u32>, resolution_s: u32) -> FleetQuery {
    FleetQuery {
        node: NodeId::from(node),
        gpu_index,
        resolution_s,
        since: at(0),
        until: at(100_000),
        limit: 10_000,
    }
}

async fn fleet_buckets_read_back_by_node_tier_time_and_gpu(store: &Store) {
    // 2 nodes × 8 GPUs × 40 buckets of 10 s, and one 60 s bucket each: 656 rows, over one
    // INSERT's 500.
    let mut buckets = Vec::new();
    for name in ["n1", "n2"] {
        for gpu in 0..8 {
            for idx in 0..40 {
                buckets.push(bucket(name, gpu, 10, idx * 10, 40.0 + f64::from(gpu)));
            }
            buckets.push(bucket(name, gpu, 60, 0, 50.0));
        }
    }
    store.record_fleet_buckets(&buckets).await.expect("record");

    let n1 = store
        .fleet_telemetry(&query("n1", None, 10))
        .await
        .expect("read");
    assert_eq!(n1.len(), 8 * 40);
    assert_eq!(
        n1[..8].iter().map(|b| b.gpu_index).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>(),
        "oldest first, then by GPU"
    );
    assert_eq!(n1[0], buckets[0], "every field reads back as written");
    let gpu3 = store
        .fleet_telemetry(&FleetQuery {
            since: at(100),
            until: at(200),
            ..query("n1", Some(3), 10)
        })
        .await
        .expect("read");
    assert_eq!(
        gpu3.iter()
            .map(|b| (b.gpu_index, b.start))
            .collect::<Vec<_>>(),
        (10..20).map(|idx| (3, at(idx * 10))).collect::<Vec<_>>()
    );
    let minute = store
        .fleet_telemetry(&query("n2", Some(0), 60))
        .await
        .expect("read");
    assert_eq!(minute.len(), 1);
    assert_eq!(minute[0].fields[&Field::GpuTempC].mean(), 50.0);
    let limited = store
        .fleet_telemetry(&FleetQuery {
            limit: 5,
            ..query("n1", None, 10)
        })
        .await
        .expect("read");
    assert_eq!(limited.len(), 5);
    assert!(
        store
            .fleet_telemetry(&query("n3", None, 10))
            .await
            .expect("read")
            .is_empty()
    );
}

async fn a_late_bucket_merges_when_read_and_retention_keeps_the_rest(store: &Store) {
    store
        .record_fleet_buckets(&[bucket("n1", 0, 10, 0, 40.0), bucket("n1", 0, 10, 10, 40.0)])
        .await
        .expect("record");
    // A late sample of the first bucket, written later as a row of its own.
    let mut late = bucket("n1", 0, 10, 0, 60.0);
    late.fields.remove(&Field::PowerW);
    store.record_fleet_buckets(&[late]).await.expect("late");
    store
        .record_fleet_buckets(&[bucket("n1", 0, 60, 0, 40.0)])
        .await
        .expect("minute");

    let read = store
        .fleet_telemetry(&query("n1", Some(0), 10))
        .await
        .expect("read");
    assert_eq!(read.len(), 2);
    let temp = read[0].fields[&Field::GpuTempC];
    assert_eq!((temp.min, temp.max, temp.samples), (39.0, 61.0, 8));
    assert_eq!(temp.mean(), 50.0);
    assert_eq!(read[0].fields[&Field::PowerW].samples, 1);

    // Retention of the 10 s tier before at(10): the first bucket's two rows go, the 60 s
    // tier's bucket starting at the same instant stays.
    assert_eq!(
        store
            .prune_fleet_telemetry(10, at(10))
            .await
            .expect("prune"),
        2
    );
    let read = store
        .fleet_telemetry(&query("n1", Some(0), 10))
        .await
        .expect("read");
    assert_eq!(read.iter().map(|b| b.start).collect::<Vec<_>>(), [at(10)]);
    assert_eq!(
        store
            .fleet_telemetry(&query("n1", Some(0), 60))
            .await
            .expect("read")
            .len(),
        1
    );
}
