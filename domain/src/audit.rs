//! The audit log's hash chain: how an entry's hash is computed and how a sequence of entries
//! is checked for edits, deletions and reordering.
//!
//! Each entry's hash is the sha256 of the previous entry's hash followed by the entry itself
//! in canonical form, so changing, removing or moving any entry breaks every hash after it.
//! The store keeps the head (last sequence number and hash) beside the log, which also
//! catches the removal of the newest entries.

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One entry of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When the change happened.
    pub at: Timestamp,
    /// Who made it (an API token's name, or "anonymous").
    pub actor: String,
    /// What was done, for example `waiver.create`.
    pub action: String,
    /// What it was done to, for example `release/r550` or `waiver/w-1f2e`.
    pub subject: String,
    /// Details as a JSON document, hashed exactly as stored.
    pub details: String,
    /// The previous entry's hash ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// `sha256(prev_hash || canonical entry)`, hex.
    pub hash: String,
}

/// An entry before it is chained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAuditEntry {
    /// When.
    pub at: Timestamp,
    /// Who.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub subject: String,
    /// Details as a JSON document.
    pub details: String,
}

/// The hash of an entry with these fields after `prev_hash`.
pub fn entry_hash(
    prev_hash: &str,
    seq: u64,
    at: Timestamp,
    actor: &str,
    action: &str,
    subject: &str,
    details: &str,
) -> String {
    // A JSON array of strings is unambiguous: no field can run into the next one.
    let canonical = serde_json::json!([
        seq.to_string(),
        at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        actor,
        action,
        subject,
        details
    ]);
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(canonical.to_string().as_bytes());
    hex::encode(hasher.finalize())
}

/// Chains `entry` after `prev` (the current head; `None` for an empty log).
pub fn chain(prev: Option<(u64, &str)>, entry: NewAuditEntry) -> AuditEntry {
    let (prev_seq, prev_hash) = prev.unwrap_or((0, GENESIS_HASH));
    let seq = prev_seq + 1;
    let hash = entry_hash(
        prev_hash,
        seq,
        entry.at,
        &entry.actor,
        &entry.action,
        &entry.subject,
        &entry.details,
    );
    AuditEntry {
        seq,
        at: entry.at,
        actor: entry.actor,
        action: entry.action,
        subject: entry.subject,
        details: entry.details,
        prev_hash: prev_hash.to_owned(),
        hash,
    }
}

/// The first entry that breaks the chain, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    /// The sequence number where the chain breaks.
    pub seq: u64,
    /// What is wrong there.
    pub reason: String,
}

/// Checks a whole log, oldest first, against the head recorded beside it (`None` when the
/// head says the log is empty). Returns the head hash when every entry is intact.
pub fn verify(entries: &[AuditEntry], head: Option<(u64, &str)>) -> Result<String, Broken> {
    let mut prev_hash = GENESIS_HASH.to_owned();
    for (idx, entry) in entries.iter().enumerate() {
        let expected_seq = idx as u64 + 1;
        if entry.seq != expected_seq {
            return Err(Broken {
                seq: expected_seq,
                reason: format!(
                    "expected entry {expected_seq}, found entry {}: an entry was deleted or moved",
                    entry.seq
                ),
            });
        }
        if entry.prev_hash != prev_hash {
            return Err(Broken {
                seq: entry.seq,
                reason: format!(
                    "prev_hash {} does not match the previous entry's hash {prev_hash}: an entry before it was deleted, reordered or rewritten",
                    entry.prev_hash
                ),
            });
        }
        let recomputed = entry_hash(
            &entry.prev_hash,
            entry.seq,
            entry.at,
            &entry.actor,
            &entry.action,
            &entry.subject,
            &entry.details,
        );
        if recomputed != entry.hash {
            return Err(Broken {
                seq: entry.seq,
                reason: format!(
                    "hash {} does not match its content (recomputed {recomputed}): the entry was edited",
                    entry.hash
                ),
            });
        }
        prev_hash = entry.hash.clone();
    }
    let last = entries.last().map(|e| (e.seq, e.hash.as_str()));
    match (head, last) {
        (None, None) => Ok(prev_hash),
        (Some((seq, hash)), Some((last_seq, last_hash)))
            if seq == last_seq && hash == last_hash =>
        {
            Ok(prev_hash)
        }
        (Some((seq, hash)), _) => Err(Broken {
            seq: last.map_or(1, |(last_seq, _)| last_seq + 1),
            reason: format!(
                "the recorded head is entry {seq} with hash {hash}, but the log ends {}: entries at the end were deleted or replaced",
                match last {
                    Some((last_seq, last_hash)) =>
                        format!("at entry {last_seq} with hash {last_hash}"),
                    None => "empty".to_owned(),
                }
            ),
        }),
        (None, Some((last_seq, _))) => Err(Broken {
            seq: last_seq,
            reason: "the recorded head says the log is empty, but it holds entries".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::at;

    fn log(n: u64) -> Vec<AuditEntry> {
        let mut entries: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let prev = entries.last().map(|e| (e.seq, e.hash.as_str()));
            let entry = chain(
                prev,
                NewAuditEntry {
                    at: at(i as i64),
                    actor: "alice".into(),
                    action: "waiver.create".into(),
                    subject: format!("waiver/w{i}"),
                    details: format!("{{\"i\":{i}}}"),
                },
            );
            entries.push(entry);
        }
        entries
    }

    fn head(entries: &[AuditEntry]) -> Option<(u64, &str)> {
        entries.last().map(|e| (e.seq, e.hash.as_str()))
    }

    #[test]
    fn an_intact_log_verifies_to_its_head() {
        let entries = log(3);
        assert_eq!(entries[0].prev_hash, GENESIS_HASH);
        assert_eq!(entries[1].prev_hash, entries[0].hash);
        assert_eq!(
            verify(&entries, head(&entries)),
            Ok(entries[2].hash.clone())
        );
        assert_eq!(verify(&[], None), Ok(GENESIS_HASH.to_owned()));
    }

    #[test]
    fn an_edited_entry_is_found() {
        let mut entries = log(4);
        let recorded = (4, entries[3].hash.clone());
        entries[1].actor = "mallory".into();
        let broken = verify(&entries, Some((recorded.0, &recorded.1))).unwrap_err();
        assert_eq!(broken.seq, 2);
        assert!(broken.reason.contains("edited"), "{}", broken.reason);
    }

    #[test]
    fn an_edited_entry_with_a_recomputed_hash_breaks_the_next_link() {
        let mut entries = log(3);
        let recorded = (3, entries[2].hash.clone());
        entries[0].details = "{}".into();
        entries[0].hash = entry_hash(
            GENESIS_HASH,
            1,
            entries[0].at,
            "alice",
            "waiver.create",
            "waiver/w0",
            "{}",
        );
        let broken = verify(&entries, Some((recorded.0, &recorded.1))).unwrap_err();
        assert_eq!(broken.seq, 2);
    }

    #[test]
    fn a_deleted_entry_is_found() {
        let mut entries = log(4);
        let recorded = (4, entries[3].hash.clone());
        entries.remove(1);
        let broken = verify(&entries, Some((recorded.0, &recorded.1))).unwrap_err();
        assert_eq!(broken.seq, 2);
        assert!(broken.reason.contains("deleted"), "{}", broken.reason);
    }

    #[test]
    fn reordered_entries_are_found() {
        let mut entries = log(3);
        let recorded = (3, entries[2].hash.clone());
        entries.swap(1, 2);
        let broken = verify(&entries, Some((recorded.0, &recorded.1))).unwrap_err();
        assert_eq!(broken.seq, 2);
    }

    #[test]
    fn a_truncated_tail_is_found_through_the_head() {
        let mut entries = log(3);
        let recorded = (3, entries[2].hash.clone());
        entries.pop();
        let broken = verify(&entries, Some((recorded.0, &recorded.1))).unwrap_err();
        assert_eq!(broken.seq, 3);
        assert!(broken.reason.contains("deleted"), "{}", broken.reason);
        let broken = verify(&[], Some((recorded.0, &recorded.1))).unwrap_err();
        assert_eq!(broken.seq, 1);
    }
}
