//! Store tests of GPU events outside steps and of a wave's telemetry read for several nodes
//! at once: events read back by node and time, oldest first; buckets of several nodes of one
//! tier in a window; events past their retention deleted; the labels of several nodes (a
//! wave's cohort) in one read. On both backends.

use super::*;
use std::collections::BTreeMap;
use tollgate_domain::fleet_history::{Bucket, Stat};

on_both_backends!(
    fleet_events_read_back_by_node_and_time,
    fleet_buckets_of_several_nodes_in_a_window,
    node_labels_of_several_nodes_in_one_read,
);

async fn node_labels_of_several_nodes_in_one_read(store: &Store) {
    for (name, sku) in [("n1", "hgx-h100"), ("n2", "hgx-h200"), ("n3", "hgx-h100")] {
        let fixture = tollgate_domain::test_support::node(name, sku);
        register(
            store,
            &fixture.id,
            &fixture.labels,
            &fixture.inventory,
            "token-hash",
            at(0),
        )
        .await
        .expect("register node");
    }
    let labels = store
        .node_labels_of(&[NodeId::from("n2"), NodeId::from("n3"), NodeId::from("gone")])
        .await
        .expect("labels");
    let skus: BTreeMap<&str, &str> = labels
        .iter()
        .map(|(node, labels)| (node.as_str(), labels["sku"].as_str()))
        .collect();
    assert_eq!(
        skus,
        BTreeMap::from([("n2", "hgx-h200"), ("n3", "hgx-h100")]),
        "the nodes asked for, a node that is gone left out"
    );
    assert!(store.node_labels_of(&[]).await.expect("none").is_empty());
}

fn event(gpu_index: u32, code: i64, secs: i64) -> GpuEvent {
    GpuEvent {
        gpu_index,
        gpu_uuid: format!("GPU-{gpu_index}"),
        kind: EventKind::Xid,
        code,
        at: at(secs),
        detail: format!("XID {code}"),
    }
}

async fn fleet_events_read_back_by_node_and_time(store: &Store) {
    let n1 = NodeId::from("n1");
    let n2 = NodeId::from("n2");
    store
        .record_fleet_events(&n1, &[event(0, 79, 30), event(1, 48, 10)])
        .await
        .expect("record n1");
    store
        .record_fleet_events(&n2, &[event(0, 13, 20)])
        .await
        .expect("record n2");
    store
        .record_fleet_events(&NodeId::from("n3"), &[event(0, 79, 25)])
        .await
        .expect("record n3");
    let read = store
        .fleet_events_of(&[n1.clone(), n2.clone()], at(15))
        .await
        .expect("read");
    assert_eq!(
        read,
        vec![
            (n2.clone(), event(0, 13, 20)),
            (n1.clone(), event(0, 79, 30))
        ],
        "n1 and n2 since 15 s, oldest first"
    );
    assert!(
        store
            .fleet_events_of(&[], at(0))
            .await
            .expect("none")
            .is_empty()
    );
    assert_eq!(store.prune_fleet_events(at(21)).await.expect("prune"), 2);
    let left = store
        .fleet_events_of(&[n1.clone(), n2, NodeId::from("n3")], at(0))
        .await
        .expect("read");
    assert_eq!(
        left,
        vec![
            (NodeId::from("n3"), event(0, 79, 25)),
            (n1, event(0, 79, 30))
        ]
    );
}

fn bucket(node: &str, gpu_index: u32, resolution_s: u32, secs: i64, temp: f64) -> Bucket {
    Bucket {
        node: NodeId::from(node),
        gpu_index,
        resolution_s,
        start: at(secs),
        fields: BTreeMap::from([(Field::GpuTempC, Stat::of(temp))]),
    }
}

async fn fleet_buckets_of_several_nodes_in_a_window(store: &Store) {
    let mut buckets = Vec::new();
    for node in ["n1", "n2", "n3"] {
        for idx in 0..6 {
            buckets.push(bucket(node, 0, 10, idx * 10, 40.0 + idx as f64));
        }
        buckets.push(bucket(node, 0, 60, 0, 50.0));
    }
    // A late sample's second row of n1's bucket at 20 s.
    buckets.push(bucket("n1", 0, 10, 20, 90.0));
    store.record_fleet_buckets(&buckets).await.expect("record");
    let two = [NodeId::from("n1"), NodeId::from("n2")];
    let read = store
        .fleet_buckets_of(&two, 10, at(20), at(40), 100)
        .await
        .expect("read")
        .expect("5 rows fit 100");
    let got: Vec<(&str, i64, f64, u32)> = read
        .iter()
        .map(|bucket| {
            let stat = bucket.fields[&Field::GpuTempC];
            (
                bucket.node.as_str(),
                bucket.start.timestamp() - at(0).timestamp(),
                stat.max,
                stat.samples,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("n1", 20, 90.0, 2),
            ("n1", 30, 43.0, 1),
            ("n2", 20, 42.0, 1),
            ("n2", 30, 43.0, 1),
        ]
    );
    // 5 rows (n1's bucket at 20 s in two): exactly 5 fit, 4 do not, and nothing is cut
    // short.
    let fits = store
        .fleet_buckets_of(&two, 10, at(20), at(40), 5)
        .await
        .expect("read");
    assert_eq!(fits.map(|buckets| buckets.len()), Some(4));
    let over = store
        .fleet_buckets_of(&two, 10, at(20), at(40), 4)
        .await
        .expect("read");
    assert_eq!(over, None, "more rows than asked for answer None");
    assert_eq!(
        store
            .fleet_buckets_of(&[NodeId::from("n1")], 10, at(40), at(40), 100)
            .await
            .expect("an empty window"),
        Some(Vec::new())
    );
}
