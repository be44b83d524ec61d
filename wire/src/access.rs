//! API tokens on the wire: a stored token as `ApiToken` (never with its secret) and a
//! `CreateTokenRequest` as the domain's `TokenRequest`.

use crate::time::timestamp_to_proto;
use tollgate_domain::access::{ApiToken, TokenRequest};
use tollgate_proto::v1 as proto;

/// A token as ListTokens, CreateToken and RevokeToken answer it.
pub fn api_token_to_proto(token: &ApiToken) -> proto::ApiToken {
    let ApiToken {
        name,
        role,
        customer,
        created_by,
        created_at,
        expires_at,
        revoked_at,
    } = token;
    proto::ApiToken {
        name: name.clone(),
        role: role.as_str().to_owned(),
        customer: customer.clone().unwrap_or_default(),
        created_by: created_by.clone(),
        created_at: Some(timestamp_to_proto(*created_at)),
        expires_at: Some(timestamp_to_proto(*expires_at)),
        revoked_at: revoked_at.map(timestamp_to_proto),
    }
}

/// A CreateToken request as the domain checks it (after `bounded`).
pub fn token_request(request: proto::CreateTokenRequest) -> TokenRequest {
    let proto::CreateTokenRequest {
        name,
        role,
        customer,
        ttl_seconds,
    } = request;
    TokenRequest {
        name,
        role,
        customer,
        ttl_seconds,
    }
}
