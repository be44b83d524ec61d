//! Node tokens: issued at registration, presented as `authorization: Bearer <token>` on every
//! other agent call, and bound to exactly one node.
//!
//! **Invariant:** only the sha256 of a token is stored or kept in memory; the token itself
//! exists only in the agent's state directory and in flight.

use crate::store::{Store, StoreError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tollgate_domain::NodeId;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// How often an unknown token may trigger a reload of every node's token hash. Tokens issued
/// by this process are cached at once; a reload only finds nodes enrolled before a restart (or
/// by another replica), so once a second is plenty and keeps bad tokens from costing a full
/// scan each.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// A fresh node token: 32 random bytes, hex.
pub fn generate_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The hex sha256 of a token, as stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The bearer token of a call, if it carries one.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata.get("authorization").ok_or_else(|| {
        Status::unauthenticated(
            "missing node token: send 'authorization: Bearer <token>' as issued by Register",
        )
    })?;
    let text = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            Status::unauthenticated("the authorization header is not 'Bearer <token>'")
        })?;
    Ok(token)
}

/// Token hash → node, filled at registration and from the store on a miss.
#[derive(Debug, Default)]
pub struct TokenCache {
    inner: Mutex<CacheInner>,
    /// Serializes reloads so concurrent misses cause one scan, not many.
    reload: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct CacheInner {
    by_hash: HashMap<String, NodeId>,
    last_reload: Option<Instant>,
}

impl TokenCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // Plain map operations never panic while the lock is held; a poisoned lock still
        // guards a consistent map.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers that `token_hash` belongs to `node`, forgetting any older token of the node.
    pub fn remember(&self, node: &NodeId, token_hash: &str) {
        let mut inner = self.lock();
        inner.by_hash.retain(|_, cached| cached != node);
        inner.by_hash.insert(token_hash.to_owned(), node.clone());
    }

    fn lookup(&self, token_hash: &str) -> Option<NodeId> {
        self.lock().by_hash.get(token_hash).cloned()
    }

    /// The node a call's token belongs to; `Unauthenticated` when it carries no known token.
    pub async fn authenticate(
        &self,
        store: &Store,
        metadata: &MetadataMap,
    ) -> Result<NodeId, Status> {
        let token_hash = hash_token(bearer_token(metadata)?);
        if let Some(node) = self.lookup(&token_hash) {
            return Ok(node);
        }
        self.reload_if_due(store).await?;
        self.lookup(&token_hash).ok_or_else(|| {
            Status::unauthenticated(
                "unknown node token: register again with the token this controller issued, \
                 or remove the agent's node-token file to enroll afresh",
            )
        })
    }

    /// Reloads every node's token hash, at most once per [`RELOAD_INTERVAL`].
    async fn reload_if_due(&self, store: &Store) -> Result<(), StoreError> {
        let _reloading = self.reload.lock().await;
        let due = self
            .lock()
            .last_reload
            .is_none_or(|last| last.elapsed() >= RELOAD_INTERVAL);
        if !due {
            return Ok(());
        }
        let mut found = Vec::new();
        for node in store.list_nodes().await? {
            if let Some(hash) = store.node_token_hash(&node.id).await? {
                found.push((hash, node.id));
            }
        }
        let mut inner = self.lock();
        // A node cached meanwhile (a registration that committed after the scan read it) keeps
        // its entry: the cache is never older than the store for a node it knows.
        let cached: std::collections::HashSet<NodeId> = inner.by_hash.values().cloned().collect();
        for (hash, node) in found {
            if !cached.contains(&node) {
                inner.by_hash.insert(hash, node);
            }
        }
        inner.last_reload = Some(Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn tokens_are_random_hex_and_hashes_are_stable() {
        let a = generate_token();
        let b = generate_token();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(hash_token("abc"), hash_token("abc"));
        assert_ne!(hash_token(&a), a);
        assert_eq!(hash_token(&a).len(), 64);
    }

    #[test]
    fn bearer_tokens_parse_or_say_why() {
        let mut metadata = MetadataMap::new();
        assert_eq!(
            bearer_token(&metadata).unwrap_err().code(),
            Code::Unauthenticated
        );
        metadata.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(
            bearer_token(&metadata).unwrap_err().code(),
            Code::Unauthenticated
        );
        metadata.insert("authorization", "Bearer ".parse().unwrap());
        assert!(bearer_token(&metadata).is_err());
        metadata.insert("authorization", "Bearer 0123abc".parse().unwrap());
        assert_eq!(bearer_token(&metadata).unwrap(), "0123abc");
    }

    #[test]
    fn a_node_has_one_token_in_the_cache() {
        let cache = TokenCache::default();
        let node = NodeId::from("n1");
        cache.remember(&node, "h1");
        cache.remember(&node, "h2");
        assert_eq!(cache.lookup("h1"), None);
        assert_eq!(cache.lookup("h2"), Some(node));
    }
}
