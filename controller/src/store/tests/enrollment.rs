//! Store tests of enrollment: bootstrap tokens spent once (compare-and-set) with the
//! certificate and labels of record, and revocation, on both backends.

use super::*;
use crate::store::{AuditFilter, AuditNote, IssuedCertificate};
use tollgate_domain::enrollment::BootstrapToken;

on_both_backends!(a_bootstrap_token_is_spent_once_with_its_certificate_and_audit);

fn labels() -> Labels {
    [("sku".to_owned(), "hgx-h200".to_owned())]
        .into_iter()
        .collect()
}

async fn a_bootstrap_token_is_spent_once_with_its_certificate_and_audit(store: &Store) {
    let node = NodeId::from("n1");
    let token = BootstrapToken {
        node: node.clone(),
        labels: labels(),
        expires_at: at(3600),
        spent_at: None,
    };
    let made = AuditNote::new(at(0), "alice", "node.enroll-token", "node/n1");
    store
        .create_bootstrap_token("hash-1", &token, &made)
        .await
        .expect("stored");
    assert_eq!(
        store.bootstrap_token("hash-1").await.expect("read"),
        Some(token.clone())
    );
    assert_eq!(store.bootstrap_token("nope").await.expect("read"), None);
    assert_eq!(
        store
            .registration_facts(&node)
            .await
            .expect("read")
            .labels_of_record,
        None
    );

    let certificate = IssuedCertificate {
        serial: "0a0b".into(),
        node: node.clone(),
        issued_at: at(10),
        not_after: at(100_000),
    };
    let spent = AuditNote::new(at(10), "node/n1", "node.enroll", "node/n1");
    store
        .spend_bootstrap_token("hash-1", &labels(), &certificate, &spent)
        .await
        .expect("spent once");
    let again = store
        .spend_bootstrap_token("hash-1", &labels(), &certificate, &spent)
        .await
        .expect_err("a token is spent once");
    assert!(matches!(again, StoreError::Conflict { .. }), "{again:?}");
    let stored = store
        .bootstrap_token("hash-1")
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(stored.spent_at, Some(at(10)));
    assert_eq!(
        store
            .registration_facts(&node)
            .await
            .expect("read")
            .labels_of_record,
        Some(labels())
    );

    let actions: Vec<String> = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit")
        .into_iter()
        .map(|entry| entry.action)
        .collect();
    assert_eq!(actions, ["node.enroll-token", "node.enroll"]);

    assert!(store.revoked_certificates().await.expect("read").is_empty());
    let revoke = AuditNote::new(at(20), "alice", "node.revoke", "node/n1");
    let revoked = store
        .revoke_node_certificates(&node, &revoke)
        .await
        .expect("revoked");
    assert_eq!(revoked, ["0a0b"]);
    assert_eq!(
        store.revoked_certificates().await.expect("read"),
        [("0a0b".to_owned(), node.clone())]
    );
    let again = store
        .revoke_node_certificates(&node, &revoke)
        .await
        .expect("nothing left");
    assert!(again.is_empty(), "{again:?}");
    let n_revokes = store
        .list_audit(&AuditFilter::default())
        .await
        .expect("audit")
        .iter()
        .filter(|entry| entry.action == "node.revoke")
        .count();
    assert_eq!(n_revokes, 1, "a revoke that revoked nothing is not audited");
}
