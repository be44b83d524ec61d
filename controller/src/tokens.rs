//! Tokens as the controller keeps them: node tokens (issued at registration, bound to one
//! node), the operator's bootstrap API tokens (`--api-token NAME[:ROLE]=SECRET`, admin unless
//! given a role) and the API tokens made through `TokenService` (stored, kept in memory by
//! their hash in [`StoredTokens`]). This module knows
//! secrets and their hashes only; reading them from a call and refusing one is the gRPC
//! edge's (`grpc/auth.rs`), so the configuration can hold tokens without depending on it.
//!
//! **Invariant:** only the sha256 of a token is stored or kept in memory; the token itself
//! exists only in the agent's state directory and in flight.

use crate::store::{Store, StoreError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tollgate_domain::NodeId;
use tollgate_domain::access::{ApiToken, Role};

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

/// A bootstrap API token: given by flag or file, never stored, never expiring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapToken {
    /// Its name, the actor recorded on everything done with it.
    pub name: String,
    /// Its role: admin unless the flag or file line names one.
    pub role: Role,
}

/// The configured (bootstrap) API tokens: sha256 of the secret → token.
#[derive(Clone, Debug, Default)]
pub struct ApiTokens {
    by_hash: HashMap<String, BootstrapToken>,
}

/// Splits `NAME` or `NAME:ROLE` into the token's name and role (admin when none is given).
fn name_and_role(text: &str) -> Result<BootstrapToken, String> {
    let (name, role) = match text.trim().split_once(':') {
        Some((name, role)) => (name, role.parse::<Role>()?),
        None => (text.trim(), Role::Admin),
    };
    if role == Role::Customer {
        return Err(format!(
            "'{text}': a customer token needs its customer; create it with `tollgate token \
             create NAME --role customer --customer VALUE`"
        ));
    }
    tollgate_domain::access::check_token_name(name)?;
    Ok(BootstrapToken {
        name: name.to_owned(),
        role,
    })
}

impl ApiTokens {
    /// Tokens from `(NAME[:ROLE], secret)` pairs; an error names every bad pair.
    pub fn new(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut by_hash = HashMap::new();
        let mut problems = Vec::new();
        for (name, secret) in pairs {
            if name.trim().is_empty() || secret.trim().is_empty() {
                problems.push(format!("'{name}': name and secret must both be non-empty"));
                continue;
            }
            let token = match name_and_role(name) {
                Ok(token) => token,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            if by_hash.insert(hash_token(secret.trim()), token).is_some() {
                problems.push(format!("'{name}': the same secret is given twice"));
            }
        }
        if problems.is_empty() {
            Ok(Self { by_hash })
        } else {
            Err(problems.join("; "))
        }
    }

    /// Parses `NAME=SECRET` or `NAME:ROLE=SECRET`.
    pub fn parse_flag(text: &str) -> Result<(String, String), String> {
        match text.split_once('=') {
            Some((name, secret)) if !name.is_empty() && !secret.is_empty() => {
                Ok((name.to_owned(), secret.to_owned()))
            }
            _ => Err(format!("'{text}' is not NAME=SECRET or NAME:ROLE=SECRET")),
        }
    }

    /// Parses a tokens file: one `name secret` or `name:role secret` per line; blank lines and
    /// `#` comments are skipped. An error names every bad line.
    pub fn parse_file(text: &str) -> Result<Vec<(String, String)>, String> {
        let mut pairs = Vec::new();
        let mut problems = Vec::new();
        for (idx, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [name, secret] => pairs.push(((*name).to_owned(), (*secret).to_owned())),
                _ => problems.push(format!(
                    "line {}: expected 'name secret' or 'name:role secret'",
                    idx + 1
                )),
            }
        }
        if problems.is_empty() {
            Ok(pairs)
        } else {
            Err(problems.join("; "))
        }
    }

    /// Whether no bootstrap token is configured.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The token whose secret has the sha256 `token_hash`; `None` for an unknown one.
    pub fn by_hash(&self, token_hash: &str) -> Option<&BootstrapToken> {
        self.by_hash.get(token_hash)
    }

    /// The token named `name`.
    pub fn by_name(&self, name: &str) -> Option<&BootstrapToken> {
        self.by_hash.values().find(|token| token.name == name)
    }

    /// The name of the token whose secret is `token`; `None` for an unknown one.
    pub fn name_of(&self, token: &str) -> Option<&str> {
        self.by_hash(&hash_token(token))
            .map(|token| token.name.as_str())
    }
}

/// The API tokens made through `TokenService`, by their secret's hash: loaded once at start
/// and again after each create and revoke, so a call with an unknown token costs one map
/// lookup, never a database read.
#[derive(Debug, Default)]
pub struct StoredTokens {
    by_hash: RwLock<HashMap<String, ApiToken>>,
}

impl StoredTokens {
    /// Reads every stored token again.
    pub async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let tokens: HashMap<String, ApiToken> =
            store.list_api_tokens().await?.into_iter().collect();
        *self
            .by_hash
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tokens;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, ApiToken>> {
        // Plain map operations never panic while the lock is held; a poisoned lock still
        // guards a consistent map.
        self.by_hash
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The token whose secret has the sha256 `token_hash`, revoked and expired ones included.
    pub fn by_hash(&self, token_hash: &str) -> Option<ApiToken> {
        self.read().get(token_hash).cloned()
    }

    /// The token named `name`.
    pub fn by_name(&self, name: &str) -> Option<ApiToken> {
        self.read()
            .values()
            .find(|token| token.name == name)
            .cloned()
    }

    /// Whether no token was ever made (revoked and expired ones count as made).
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
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
    /// The other way round, so that a node's older token is forgotten without a scan (a
    /// fleet of thousands registering at once).
    by_node: HashMap<NodeId, String>,
    last_reload: Option<Instant>,
}

impl CacheInner {
    /// `token_hash` is `node`'s token now; its older one, if any, is forgotten.
    fn insert(&mut self, token_hash: String, node: NodeId) {
        if let Some(older) = self.by_node.insert(node.clone(), token_hash.clone())
            && older != token_hash
            && self.by_hash.get(&older) == Some(&node)
        {
            self.by_hash.remove(&older);
        }
        self.by_hash.insert(token_hash, node);
    }
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
        inner.insert(token_hash.to_owned(), node.clone());
    }

    fn lookup(&self, token_hash: &str) -> Option<NodeId> {
        self.lock().by_hash.get(token_hash).cloned()
    }

    /// The node `token` belongs to; `None` when no node has it, even after reloading the
    /// store's token hashes (at most once per [`RELOAD_INTERVAL`]).
    pub async fn node_of(&self, store: &Store, token: &str) -> Result<Option<NodeId>, StoreError> {
        let token_hash = hash_token(token);
        if let Some(node) = self.lookup(&token_hash) {
            return Ok(Some(node));
        }
        self.reload_if_due(store).await?;
        Ok(self.lookup(&token_hash))
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
        // One statement whatever the fleet's size: any call with a token this cache does not
        // know can cause it (once per interval).
        let found = store.node_token_hashes().await?;
        let mut inner = self.lock();
        // A node cached meanwhile (a registration that committed after the scan read it) keeps
        // its entry: the cache is never older than the store for a node it knows.
        for (node, hash) in found {
            if !inner.by_node.contains_key(&node) {
                inner.insert(hash, node);
            }
        }
        inner.last_reload = Some(Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn api_token_flags_and_files_parse_or_name_every_bad_line() {
        let pairs =
            ApiTokens::parse_file("# managers\nalice s3cret\n\nbob:viewer hunter2\n").unwrap();
        let tokens = ApiTokens::new(&pairs).unwrap();
        assert_eq!(tokens.name_of("hunter2"), Some("bob"));
        let bob = tokens.by_hash(&hash_token("hunter2")).unwrap();
        assert_eq!(bob.role, Role::Viewer);
        assert_eq!(
            tokens.by_hash(&hash_token("s3cret")).unwrap().role,
            Role::Admin,
            "a token without a role is an admin"
        );
        assert_eq!(
            ApiTokens::parse_flag("ops:operator=abc").unwrap(),
            ("ops:operator".to_owned(), "abc".to_owned())
        );
        let err = ApiTokens::new(&[("x:root".into(), "s".into())]).unwrap_err();
        assert!(err.contains("unknown Role"), "{err}");
        let err = ApiTokens::new(&[("x:customer".into(), "s".into())]).unwrap_err();
        assert!(err.contains("tollgate token create"), "{err}");
        assert_eq!(tokens.name_of("nope"), None);
        assert_eq!(
            ApiTokens::parse_flag("ci=abc").unwrap(),
            ("ci".to_owned(), "abc".to_owned())
        );
        assert!(ApiTokens::parse_flag("ci").is_err());
        let err = ApiTokens::parse_file("alice\nbob x y\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("line 2"), "{err}");
        let err =
            ApiTokens::new(&[("a".into(), "s".into()), ("b".into(), "s".into())]).unwrap_err();
        assert!(err.contains("'b': the same secret is given twice"), "{err}");
    }

    #[test]
    fn a_node_has_one_token_in_the_cache() {
        let cache = TokenCache::default();
        let node = NodeId::from("n1");
        cache.remember(&node, "h1");
        cache.remember(&node, "h2");
        assert_eq!(cache.lookup("h1"), None);
        assert_eq!(cache.lookup("h2"), Some(node.clone()));
        // A hash that is another node's now stays that node's when the first moves on.
        let other = NodeId::from("n2");
        cache.remember(&other, "h2");
        cache.remember(&node, "h3");
        assert_eq!(cache.lookup("h2"), Some(other));
        assert_eq!(cache.lookup("h3"), Some(node));
    }
}
