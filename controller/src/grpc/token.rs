//! `TokenService`: API tokens made, listed and revoked through the API. The secret is
//! generated here, returned once and stored only as its sha256; every change is audited and
//! refreshes the in-memory map the interceptor checks calls against.

use super::auth::{actor_of, generate_token, hash_token};
use super::convert::{api_token_to_proto, token_request};
use super::status;
use crate::shared::Shared;
use crate::store::AuditNote;
use std::sync::Arc;
use tollgate_proto::v1::{self as proto, token_service_server::TokenService};
use tonic::{Request, Response, Status};

/// The token service.
#[derive(Debug, Clone)]
pub struct TokenApi {
    shared: Arc<Shared>,
}

impl TokenApi {
    /// A service over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Reads the stored tokens again after a change, so the next call sees it.
    async fn refresh(&self) -> Result<(), Status> {
        self.shared
            .api_tokens
            .reload(&self.shared.store)
            .await
            .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn create_token(
        &self,
        request: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreatedToken>, Status> {
        let actor = actor_of(&request);
        let request = token_request(super::convert::bounded(request.into_inner())?);
        let now = self.shared.now();
        let token = tollgate_domain::access::create_token(request, &actor, now)
            .map_err(status::invalid_field_list)?;
        if self.shared.config.api_tokens.by_name(&token.name).is_some() {
            return Err(status::invalid_field(
                "name",
                format!(
                    "{} is a bootstrap token's name (--api-token); pick another",
                    token.name
                ),
            ));
        }
        let secret = generate_token();
        let note = AuditNote::new(now, &actor, "token.create", format!("token/{}", token.name))
            .details(serde_json::json!({
                "role": token.role.as_str(),
                "customer": token.customer,
                "expires_at": token.expires_at.to_rfc3339(),
            }));
        self.shared
            .store
            .create_api_token(&token, &hash_token(&secret), &note)
            .await?;
        self.refresh().await?;
        tracing::info!(token = %token.name, role = %token.role, "API token created");
        Ok(Response::new(proto::CreatedToken {
            token: Some(api_token_to_proto(&token)),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<proto::ListTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        let proto::ListTokensRequest {} = super::convert::bounded(request.into_inner())?;
        let tokens = self.shared.store.list_api_tokens().await?;
        Ok(Response::new(proto::ListTokensResponse {
            tokens: tokens
                .iter()
                .map(|(_, token)| api_token_to_proto(token))
                .collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::ApiToken>, Status> {
        let actor = actor_of(&request);
        let proto::RevokeTokenRequest { name } = super::convert::bounded(request.into_inner())?;
        if let Some(revoked_at) = self
            .shared
            .api_tokens
            .by_name(&name)
            .and_then(|token| token.revoked_at)
        {
            return Err(Status::failed_precondition(format!(
                "API token {name} was revoked already, at {revoked_at}"
            )));
        }
        let now = self.shared.now();
        let note = AuditNote::new(now, &actor, "token.revoke", format!("token/{name}"));
        let revoked = self.shared.store.revoke_api_token(&name, now, &note).await;
        // Refreshed whatever the outcome: a revocation that raced another one is still a
        // revocation the map must know.
        self.refresh().await?;
        let revoked = revoked?;
        tracing::info!(token = %name, "API token revoked");
        Ok(Response::new(api_token_to_proto(&revoked)))
    }
}
