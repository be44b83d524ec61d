//! Store tests of the deployment's report signing keys: the first key claimed is kept, a
//! rotation retires the current key for a new one with its audit entry (compare-and-set: a
//! second rotation from the same key is refused), on both backends.

use super::*;
use crate::store::{AuditFilter, AuditNote};
use ed25519_dalek::{SigningKey, VerifyingKey};
use tollgate_domain::report_key::{self, ReportKey, Rotation, Standing};

on_both_backends!(
    the_first_key_claimed_is_the_deployment_s,
    a_rotation_retires_the_current_key_once_with_its_audit_entry,
);

fn key(seed: u8) -> VerifyingKey {
    SigningKey::from_bytes(&[seed; 32]).verifying_key()
}

fn rotation(from: u8, to: u8, secs: i64) -> Rotation {
    Rotation {
        retired: key(from),
        current: key(to),
        at: at(secs),
    }
}

fn note(secs: i64) -> AuditNote {
    AuditNote::new(at(secs), "alice", "report-key.rotate", "report-key/new")
}

async fn the_first_key_claimed_is_the_deployment_s(store: &Store) {
    assert_eq!(store.report_keys().await.expect("keys"), Vec::new());
    let first = vec![ReportKey {
        public_key: key(1),
        active_from: at(0),
        retired_at: None,
    }];
    assert_eq!(
        store.claim_report_key(&key(1), at(0)).await.expect("claim"),
        first
    );
    // A replica with another key finds the first one, and records nothing.
    let keys = store.claim_report_key(&key(2), at(5)).await.expect("claim");
    assert_eq!(keys, first);
    assert_eq!(
        report_key::standing(&keys, &key(2)),
        Standing::Foreign {
            current: Some(&first[0])
        }
    );
    assert_eq!(store.report_keys().await.expect("keys"), first);
}

async fn a_rotation_retires_the_current_key_once_with_its_audit_entry(store: &Store) {
    store.claim_report_key(&key(1), at(0)).await.expect("claim");
    store
        .rotate_report_key(&rotation(1, 2, 100), &note(100))
        .await
        .expect("rotate");
    // The same rotation decided twice (two operators at once): the second finds key 1
    // retired already, and changes nothing.
    assert!(matches!(
        store
            .rotate_report_key(&rotation(1, 3, 101), &note(101))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    store
        .rotate_report_key(&rotation(2, 3, 200), &note(200))
        .await
        .expect("rotate again");
    let keys = store.report_keys().await.expect("keys");
    assert_eq!(
        keys,
        vec![
            ReportKey {
                public_key: key(1),
                active_from: at(0),
                retired_at: Some(at(100)),
            },
            ReportKey {
                public_key: key(2),
                active_from: at(100),
                retired_at: Some(at(200)),
            },
            ReportKey {
                public_key: key(3),
                active_from: at(200),
                retired_at: None,
            },
        ]
    );
    assert_eq!(report_key::standing(&keys, &key(3)), Standing::Current);
    // A controller starting later with a retired key is told so, and records nothing.
    let claimed = store
        .claim_report_key(&key(2), at(300))
        .await
        .expect("claim");
    assert_eq!(claimed, keys);
    assert!(matches!(
        report_key::standing(&claimed, &key(2)),
        Standing::Retired { .. }
    ));
    // A retired key never becomes current again, even if a rotation were decided so.
    assert!(matches!(
        store
            .rotate_report_key(&rotation(3, 1, 400), &note(400))
            .await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(store.report_keys().await.expect("keys"), keys);
    let audit = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit");
    let rotations: Vec<_> = audit
        .iter()
        .filter(|entry| entry.action == "report-key.rotate")
        .map(|entry| entry.at)
        .collect();
    assert_eq!(rotations, [at(100), at(200)]);
    assert!(store.verify_audit().await.expect("verify").is_ok());
}
