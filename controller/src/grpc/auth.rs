//! Identity at the gRPC edge. Over TLS an agent is the node its client certificate names
//! ([`certified_node`]; enrolled through `grpc/enroll.rs`, revocations checked on every call).
//! Node tokens, only on a plain-text loopback listener: issued at registration, presented as
//! `authorization: Bearer <token>` on every other agent call, and bound to exactly one node.
//! API tokens: bootstrap ones the operator configures (`--api-token NAME[:ROLE]=SECRET`) and
//! ones made through `TokenService`, presented the same way on every manager call; the name
//! is the actor recorded on waivers, promotions and audit entries, the role decides what it
//! may call (`authz.rs`). With no API token anywhere, manager calls are anonymous, from a
//! loopback peer only. Tokens themselves (hashing, the configured and stored sets, the node
//! cache) are `crate::tokens`; a refusal here is an [`AuthError`], which `status.rs` maps.

pub use crate::tokens::{generate_token, hash_token};

use super::authz::{self, Forbidden};
use crate::shared::Shared;
use crate::store::StoreError;
use crate::tokens::{ApiTokens, StoredTokens, TokenCache};
use std::net::SocketAddr;
use std::sync::Arc;
use tollgate_domain::access::{Role, TokenRefusal};
use tollgate_domain::{NodeId, Timestamp};
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
    #[error(
        "unknown API token: check the secret, or ask an admin for a token (tollgate token create)"
    )]
    UnknownApiToken,
    /// A known API token that is revoked or expired.
    #[error(transparent)]
    RefusedApiToken(#[from] TokenRefusal),
    /// An anonymous manager call from another host.
    #[error(
        "anonymous manager calls are accepted from this host's loopback only (the call came \
         from {peer}): create an API token (tollgate-controller serve --api-token-file, then \
         tollgate token create) and send it with --token-file or TOLLGATE_TOKEN"
    )]
    AnonymousFromAfar {
        /// The caller's address, or "an unknown address".
        peer: String,
    },
    /// The caller is known but its role may not make this call.
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
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

/// The client's address: from the listener's connection info (`listener::Peer`), else
/// tonic's own (a server run without the listener, as some unit tests do).
pub fn peer_addr<T>(request: &tonic::Request<T>) -> Option<std::net::SocketAddr> {
    request
        .extensions()
        .get::<crate::listener::Peer>()
        .and_then(|peer| peer.remote)
        .or_else(|| request.remote_addr())
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

/// Who makes a manager call. The interceptor puts it in the request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// No API token is configured anywhere and the call came from a loopback peer.
    Anonymous,
    /// An API token.
    Token {
        /// Its name: the actor.
        name: String,
        /// Its role.
        role: Role,
        /// The customer it sees, for a customer token.
        customer: Option<String>,
    },
}

impl Identity {
    /// The actor recorded on what it does.
    pub fn actor(&self) -> &str {
        match self {
            Identity::Anonymous => ANONYMOUS,
            Identity::Token { name, .. } => name,
        }
    }
}

/// The actor of a request, as the interceptor found it.
pub fn actor_of<T>(request: &tonic::Request<T>) -> String {
    request.extensions().get::<Identity>().map_or_else(
        || ANONYMOUS.to_owned(),
        |identity| identity.actor().to_owned(),
    )
}

/// The customer a request's answer is scoped to: `Some` for a customer token only.
pub fn customer_of<T>(request: &tonic::Request<T>) -> Option<String> {
    match request.extensions().get::<Identity>() {
        Some(Identity::Token {
            customer: Some(customer),
            ..
        }) => Some(customer.clone()),
        _ => None,
    }
}

/// Whether `peer` is this host: a loopback address, IPv4 mapped into IPv6 included.
fn is_loopback(peer: Option<SocketAddr>) -> bool {
    peer.is_some_and(|addr| addr.ip().to_canonical().is_loopback())
}

/// The API tokens a manager call is checked against.
#[derive(Clone, Copy, Debug)]
pub struct ManagerTokens<'a> {
    /// Given by flag or file.
    pub bootstrap: &'a ApiTokens,
    /// Made through `TokenService`.
    pub stored: &'a StoredTokens,
}

/// The caller of a manager call from `peer` at `now`: anonymous when no token is configured
/// anywhere and the peer is on loopback, else the token it carries; refused when it carries
/// none, an unknown one, a revoked or an expired one.
pub fn authenticate_manager(
    tokens: ManagerTokens<'_>,
    metadata: &MetadataMap,
    peer: Option<SocketAddr>,
    now: Timestamp,
) -> Result<Identity, AuthError> {
    if tokens.bootstrap.is_empty() && tokens.stored.is_empty() {
        if is_loopback(peer) {
            return Ok(Identity::Anonymous);
        }
        return Err(AuthError::AnonymousFromAfar {
            peer: peer.map_or_else(|| "an unknown address".to_owned(), |addr| addr.to_string()),
        });
    }
    let token = bearer_token(metadata).map_err(|_| AuthError::MissingApiToken)?;
    let token_hash = hash_token(token);
    if let Some(token) = tokens.bootstrap.by_hash(&token_hash) {
        return Ok(Identity::Token {
            name: token.name.clone(),
            role: token.role,
            customer: None,
        });
    }
    let token = tokens
        .stored
        .by_hash(&token_hash)
        .ok_or(AuthError::UnknownApiToken)?;
    token.check(now)?;
    Ok(Identity::Token {
        name: token.name,
        role: token.role,
        customer: token.customer,
    })
}

/// Whether `identity` may call the RPC at `path` (anonymous callers may call every RPC the
/// table has).
pub fn authorize(identity: &Identity, path: &str) -> Result<(), Forbidden> {
    match identity {
        Identity::Anonymous => {
            authz::row_of(path)
                .map(|_| ())
                .ok_or_else(|| Forbidden::NotInTable {
                    path: path.to_owned(),
                })
        }
        Identity::Token { name, role, .. } => authz::authorize(path, name, *role),
    }
}

/// The gRPC path of a call, put into its extensions by [`WithPath`] (the interceptor itself
/// does not see the URI).
#[derive(Clone, Debug)]
pub struct CallPath(pub String);

/// Wraps a service so the interceptor behind it knows which RPC is called.
#[derive(Clone, Debug)]
pub struct WithPath<S>(pub S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for WithPath<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for WithPath<S>
where
    S: tonic::codegen::Service<tonic::codegen::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: tonic::codegen::http::Request<B>) -> Self::Future {
        let path = CallPath(request.uri().path().to_owned());
        request.extensions_mut().insert(path);
        self.0.call(request)
    }
}

/// A tonic interceptor that authenticates every manager call, checks it against the
/// authorization table and records its caller. It reads only memory: the stored tokens are
/// kept by hash in `shared.api_tokens`.
pub fn interceptor(
    shared: Arc<Shared>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
    move |mut request: tonic::Request<()>| {
        let tokens = ManagerTokens {
            bootstrap: &shared.config.api_tokens,
            stored: &shared.api_tokens,
        };
        let identity = authenticate_manager(
            tokens,
            request.metadata(),
            peer_addr(&request),
            shared.now(),
        )?;
        let path = request
            .extensions()
            .get::<CallPath>()
            .map_or("", |path| path.0.as_str());
        authorize(&identity, path).map_err(AuthError::from)?;
        request.extensions_mut().insert(identity);
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

    fn loopback() -> Option<SocketAddr> {
        Some("127.0.0.1:5000".parse().unwrap())
    }

    fn afar() -> Option<SocketAddr> {
        Some("10.1.2.3:5000".parse().unwrap())
    }

    fn now() -> Timestamp {
        chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn without_any_token_only_loopback_callers_are_anonymous() {
        let bootstrap = ApiTokens::default();
        let stored = StoredTokens::default();
        let tokens = ManagerTokens {
            bootstrap: &bootstrap,
            stored: &stored,
        };
        let metadata = MetadataMap::new();
        assert_eq!(
            authenticate_manager(tokens, &metadata, loopback(), now()).unwrap(),
            Identity::Anonymous
        );
        let mapped = Some("[::ffff:127.0.0.1]:5000".parse().unwrap());
        assert_eq!(
            authenticate_manager(tokens, &metadata, mapped, now()).unwrap(),
            Identity::Anonymous
        );
        let err = authenticate_manager(tokens, &metadata, afar(), now()).unwrap_err();
        assert!(matches!(err, AuthError::AnonymousFromAfar { .. }), "{err}");
        assert!(err.to_string().contains("10.1.2.3"), "{err}");
        assert!(err.to_string().contains("create an API token"), "{err}");
        assert!(authenticate_manager(tokens, &metadata, None, now()).is_err());
    }

    #[test]
    fn api_tokens_name_the_actor_and_role_or_refuse() {
        let pairs = ApiTokens::parse_file("alice s3cret\nbob:viewer hunter2\n").unwrap();
        let bootstrap = ApiTokens::new(&pairs).unwrap();
        let stored = StoredTokens::default();
        let tokens = ManagerTokens {
            bootstrap: &bootstrap,
            stored: &stored,
        };
        let metadata = MetadataMap::new();
        assert!(matches!(
            authenticate_manager(tokens, &metadata, loopback(), now()),
            Err(AuthError::MissingApiToken)
        ));
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", "Bearer hunter2".parse().unwrap());
        assert_eq!(
            authenticate_manager(tokens, &metadata, afar(), now()).unwrap(),
            Identity::Token {
                name: "bob".into(),
                role: Role::Viewer,
                customer: None
            }
        );
        metadata.insert("authorization", "Bearer nope".parse().unwrap());
        assert!(matches!(
            authenticate_manager(tokens, &metadata, loopback(), now()),
            Err(AuthError::UnknownApiToken)
        ));
    }

    #[test]
    fn anonymous_callers_may_call_what_the_table_has_and_nothing_else() {
        assert_eq!(
            authorize(
                &Identity::Anonymous,
                "/tollgate.v1.TokenService/CreateToken"
            ),
            Ok(())
        );
        assert!(authorize(&Identity::Anonymous, "/tollgate.v1.NodeService/Nope").is_err());
    }

    #[test]
    fn the_interceptor_refuses_unauthenticated_and_records_the_actor() {
        let pairs = ApiTokens::parse_file("bob hunter2\n").unwrap();
        let bootstrap = ApiTokens::new(&pairs).unwrap();
        let stored = StoredTokens::default();
        let tokens = ManagerTokens {
            bootstrap: &bootstrap,
            stored: &stored,
        };
        let status = Status::from(
            authenticate_manager(tokens, &MetadataMap::new(), loopback(), now()).unwrap_err(),
        );
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains("missing API token"), "{status}");
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(Identity::Token {
            name: "bob".into(),
            role: Role::Admin,
            customer: None,
        });
        assert_eq!(actor_of(&request), "bob");
        assert_eq!(customer_of(&request), None);
    }
}
