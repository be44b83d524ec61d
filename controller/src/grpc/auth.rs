//! Identity at the gRPC edge. Over TLS an agent is the node its client certificate names
//! ([`certified_node`]; enrolled through `grpc/enroll.rs`, revocations checked on every call).
//! Node tokens, only on a plain-text loopback listener: issued at registration, presented as
//! `authorization: Bearer <token>` on every other agent call, and bound to exactly one node.
//! API tokens: named secrets the operator configures (`--api-token NAME=SECRET`), presented
//! the same way on every manager call; the name is the actor recorded on waivers, promotions
//! and audit entries. Tokens themselves (hashing, the configured set, the node cache) are
//! `crate::tokens`; a refusal here is an [`AuthError`], which `status.rs` maps.

pub use crate::tokens::{generate_token, hash_token};

use crate::store::StoreError;
use crate::tokens::{ApiTokens, TokenCache};
use tollgate_domain::NodeId;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Why a call was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// An agent call without a bearer token.
    #[error("missing node token: send 'authorization: Bearer <token>' as issued by Register")]
    MissingNodeToken,
    /// The authorization header has bytes that are not text.
    #[error("the authorization header is not text")]
    HeaderNotText,
    /// The authorization header is not a bearer token.
    #[error("the authorization header is not 'Bearer <token>'")]
    NotBearer,
    /// A node token no node has.
    #[error(
        "unknown node token: register again with the token this controller issued, or remove \
         the agent's node-token file to enroll afresh"
    )]
    UnknownNodeToken,
    /// A manager call without a bearer token while API tokens are configured.
    #[error(
        "missing API token: send 'authorization: Bearer <secret>' (tollgate --token or \
         TOLLGATE_TOKEN)"
    )]
    MissingApiToken,
    /// A manager call with a token that is not configured.
    #[error("unknown API token")]
    UnknownApiToken,
    /// An agent call over TLS without a node certificate.
    #[error(
        "missing node certificate: enroll the agent with --bootstrap-token-file (a token from \
         `tollgate node enroll NODE`) and keep its state directory (node.crt, node.key)"
    )]
    MissingNodeCertificate,
    /// An agent call with a revoked node certificate.
    #[error(
        "the certificate of node {node} was revoked: enroll the node again with a new \
         bootstrap token (`tollgate node enroll {node}`) after removing its node.crt"
    )]
    RevokedCertificate {
        /// The node it names.
        node: NodeId,
    },
    /// The node tokens could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The bearer token of a call, if it carries one.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, AuthError> {
    let value = metadata
        .get("authorization")
        .ok_or(AuthError::MissingNodeToken)?;
    let text = value.to_str().map_err(|_| AuthError::HeaderNotText)?;
    text.strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or(AuthError::NotBearer)
}

/// The node an agent call's verified certificate names: `Ok(None)` without a certificate on a
/// plain-text loopback listener (the node token then names the node); refused without one
/// over TLS, or with a revoked one.
pub fn certified_node<T>(
    request: &tonic::Request<T>,
    transport: &crate::listener::Transport,
    revocations: &crate::pki::Revocations,
) -> Result<Option<NodeId>, AuthError> {
    let certificate = request
        .extensions()
        .get::<crate::listener::Peer>()
        .and_then(|peer| peer.certificate.as_ref());
    match certificate {
        Some(certificate) if revocations.is_revoked(&certificate.serial) => {
            Err(AuthError::RevokedCertificate {
                node: certificate.node.clone(),
            })
        }
        Some(certificate) => Ok(Some(certificate.node.clone())),
        None if matches!(transport, crate::listener::Transport::InsecureLoopback) => Ok(None),
        None => Err(AuthError::MissingNodeCertificate),
    }
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

/// The actor of a manager call: anonymous when no token is configured, else the name of the
/// token it carries; refused when it carries none or an unknown one.
pub fn authenticate_manager(
    tokens: &ApiTokens,
    metadata: &MetadataMap,
) -> Result<Actor, AuthError> {
    if tokens.is_empty() {
        return Ok(Actor(ANONYMOUS.to_owned()));
    }
    let token = bearer_token(metadata).map_err(|_| AuthError::MissingApiToken)?;
    tokens
        .name_of(token)
        .map(|name| Actor(name.to_owned()))
        .ok_or(AuthError::UnknownApiToken)
}

/// A tonic interceptor that authenticates every manager call and records its actor.
pub fn interceptor(
    tokens: &ApiTokens,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone + use<> {
    let tokens = tokens.clone();
    move |mut request: tonic::Request<()>| {
        let actor = authenticate_manager(&tokens, request.metadata())?;
        request.extensions_mut().insert(actor);
        Ok(request)
    }
}

impl TokenCache {
    /// The node a call's token belongs to; refused when it carries no known token. The
    /// agent service's handlers call it, so it answers in their error type.
    pub async fn authenticate(
        &self,
        store: &crate::store::Store,
        metadata: &MetadataMap,
    ) -> Result<NodeId, Status> {
        let token = bearer_token(metadata)?;
        let node = self.node_of(store, token).await.map_err(AuthError::from)?;
        Ok(node.ok_or(AuthError::UnknownNodeToken)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn bearer_tokens_parse_or_say_why() {
        let mut metadata = MetadataMap::new();
        assert!(matches!(
            bearer_token(&metadata),
            Err(AuthError::MissingNodeToken)
        ));
        metadata.insert("authorization", "Basic xyz".parse().unwrap());
        assert!(matches!(bearer_token(&metadata), Err(AuthError::NotBearer)));
        metadata.insert("authorization", "Bearer ".parse().unwrap());
        assert!(matches!(bearer_token(&metadata), Err(AuthError::NotBearer)));
        metadata.insert("authorization", "Bearer 0123abc".parse().unwrap());
        assert_eq!(bearer_token(&metadata).unwrap(), "0123abc");
    }

    #[test]
    fn api_tokens_name_the_actor_or_refuse() {
        let anonymous = ApiTokens::default();
        let metadata = MetadataMap::new();
        assert_eq!(
            authenticate_manager(&anonymous, &metadata).unwrap(),
            Actor(ANONYMOUS.into())
        );
        let pairs = ApiTokens::parse_file("alice s3cret\nbob hunter2\n").unwrap();
        let tokens = ApiTokens::new(&pairs).unwrap();
        assert!(matches!(
            authenticate_manager(&tokens, &metadata),
            Err(AuthError::MissingApiToken)
        ));
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", "Bearer hunter2".parse().unwrap());
        assert_eq!(
            authenticate_manager(&tokens, &metadata).unwrap(),
            Actor("bob".into())
        );
        metadata.insert("authorization", "Bearer nope".parse().unwrap());
        assert!(matches!(
            authenticate_manager(&tokens, &metadata),
            Err(AuthError::UnknownApiToken)
        ));
    }

    #[test]
    fn the_interceptor_refuses_unauthenticated_and_records_the_actor() {
        let pairs = ApiTokens::parse_file("bob hunter2\n").unwrap();
        let mut intercept = interceptor(&ApiTokens::new(&pairs).unwrap());
        let status = intercept(tonic::Request::new(())).unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains("missing API token"), "{status}");
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert("authorization", "Bearer hunter2".parse().unwrap());
        let request = intercept(request).unwrap();
        assert_eq!(actor_of(&request), "bob");
    }
}
