//! Identity. Node tokens: issued at registration, presented as `authorization: Bearer <token>`
//! on every other agent call, and bound to exactly one node. API tokens: named secrets the
//! operator configures (`--api-token NAME=SECRET`), presented the same way on every manager
//! call; the name is the actor recorded on waivers, promotions and audit entries.
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

/// The actor of a manager call when no API token is configured.
pub const ANONYMOUS: &str = "anonymous";

/// Who makes a manager call: an API token's name, or [`ANONYMOUS`]. The interceptor puts it
/// in the request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(pub String);

/// The actor of a request, as the interceptor found it.
pub fn actor_of<T>(request: &tonic::Request<T>) -> String {
    request
        .extensions()
        .get::<Actor>()
        .map_or_else(|| ANONYMOUS.to_owned(), |actor| actor.0.clone())
}

/// The configured API tokens: sha256 of the secret → name.
#[derive(Clone, Debug, Default)]
pub struct ApiTokens {
    by_hash: HashMap<String, String>,
}

impl ApiTokens {
    /// Tokens from `(name, secret)` pairs; an error names every bad pair.
    pub fn new(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut by_hash = HashMap::new();
        let mut problems = Vec::new();
        for (name, secret) in pairs {
            if name.trim().is_empty() || secret.trim().is_empty() {
                problems.push(format!("'{name}': name and secret must both be non-empty"));
            } else if by_hash
                .insert(hash_token(secret.trim()), name.trim().to_owned())
                .is_some()
            {
                problems.push(format!("'{name}': the same secret is given twice"));
            }
        }
        if problems.is_empty() {
            Ok(Self { by_hash })
        } else {
            Err(problems.join("; "))
        }
    }

    /// Parses `NAME=SECRET`.
    pub fn parse_flag(text: &str) -> Result<(String, String), String> {
        match text.split_once('=') {
            Some((name, secret)) if !name.is_empty() && !secret.is_empty() => {
                Ok((name.to_owned(), secret.to_owned()))
            }
            _ => Err(format!("'{text}' is not NAME=SECRET")),
        }
    }

    /// Parses a tokens file: one `name secret` per line; blank lines and `#` comments are
    /// skipped. An error names every bad line.
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
                _ => problems.push(format!("line {}: expected 'name secret'", idx + 1)),
            }
        }
        if problems.is_empty() {
            Ok(pairs)
        } else {
            Err(problems.join("; "))
        }
    }

    /// Whether no token is configured (every manager call is then anonymous).
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The actor of a manager call: anonymous when no token is configured, else the name of
    /// the token it carries; `Unauthenticated` when it carries none or an unknown one.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Actor, Status> {
        if self.is_empty() {
            return Ok(Actor(ANONYMOUS.to_owned()));
        }
        let token = bearer_token(metadata).map_err(|_| {
            Status::unauthenticated(
                "missing API token: send 'authorization: Bearer <secret>' (tollgate --token or \
                 TOLLGATE_TOKEN)",
            )
        })?;
        self.by_hash
            .get(&hash_token(token))
            .map(|name| Actor(name.clone()))
            .ok_or_else(|| Status::unauthenticated("unknown API token"))
    }

    /// A tonic interceptor that authenticates every call and records its actor.
    pub fn interceptor(
        &self,
    ) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone + use<> {
        let tokens = self.clone();
        move |mut request: tonic::Request<()>| {
            let actor = tokens.authenticate(request.metadata())?;
            request.extensions_mut().insert(actor);
            Ok(request)
        }
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
    fn api_tokens_name_the_actor_or_refuse() {
        let anonymous = ApiTokens::default();
        let metadata = MetadataMap::new();
        assert_eq!(
            anonymous.authenticate(&metadata).unwrap(),
            Actor(ANONYMOUS.into())
        );
        let pairs = ApiTokens::parse_file("# managers\nalice s3cret\n\nbob hunter2\n").unwrap();
        let tokens = ApiTokens::new(&pairs).unwrap();
        assert_eq!(
            tokens.authenticate(&metadata).unwrap_err().code(),
            Code::Unauthenticated
        );
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", "Bearer hunter2".parse().unwrap());
        assert_eq!(tokens.authenticate(&metadata).unwrap(), Actor("bob".into()));
        metadata.insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(
            tokens.authenticate(&metadata).unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(
            ApiTokens::parse_flag("ci=abc").unwrap(),
            ("ci".to_owned(), "abc".to_owned())
        );
        assert!(ApiTokens::parse_flag("ci").is_err());
        let err = ApiTokens::parse_file("alice\nbob x y\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("line 2"), "{err}");
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
