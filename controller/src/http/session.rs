//! Who is looking: sign-in with an API token (kept, hex, in an HTTP-only `SameSite=Strict`
//! cookie, `Secure` over TLS), checked on every request exactly as a gRPC call's bearer token
//! (`grpc::auth::authenticate_manager`: the same tables, revocation and expiry, anonymous only
//! when no token is configured anywhere and the client is on loopback). Every POST must carry
//! the session's CSRF token (a random value in its own cookie, repeated in a hidden field) and
//! come from this origin (`Origin`, else `Referer`, naming the `Host`).
//!
//! [`Caller::rpc`] is how every page reads and acts: the RPC's authorization row is checked
//! for the caller's identity, then the gRPC handler runs in-process with that identity in the
//! request's extensions, so the handler scopes a customer's answer as it does over gRPC.

use super::ClientAddr;
use super::layout;
use crate::grpc::auth::{self, AuthError, Identity, ManagerTokens};
use crate::grpc::authz::Forbidden;
use crate::shared::Shared;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::metadata::MetadataMap;

/// The cookie holding the signed-in API token (hex).
pub const SESSION_COOKIE: &str = "tollgate_session";
/// The cookie holding the session's CSRF token, repeated in every form's hidden field.
pub const CSRF_COOKIE: &str = "tollgate_csrf";
/// The hidden field every form carries.
pub const CSRF_FIELD: &str = "csrf";

/// The value of cookie `name` in the request, if it sent one.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The person (or script) behind a request, authenticated as a gRPC manager call would be.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who it is, as the gRPC interceptor would put it in a call's extensions.
    pub identity: Identity,
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The session's CSRF token.
    pub csrf: String,
    /// Whether the CSRF cookie must be set on the answer (the request carried none).
    pub new_csrf: bool,
    /// Whether the dashboard is served over TLS (cookies are then `Secure`).
    pub tls: bool,
    /// The host the request was sent to (`Host`, or the HTTP/2 authority).
    pub host: String,
    /// The shared state, to build the handlers the pages call.
    pub shared: Arc<Shared>,
}

/// Why a page could not be shown, as a page.
#[derive(Debug)]
pub enum PageError {
    /// The caller's role may not make the call the page needs.
    Forbidden(Forbidden),
    /// The handler refused, or failed.
    Status(tonic::Status),
    /// The request itself is bad (a filter that does not parse).
    BadRequest(String),
    /// A POST without the session's CSRF token or from another origin.
    Csrf(&'static str),
}

impl From<tonic::Status> for PageError {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(error: crate::store::StoreError) -> Self {
        Self::Status(tonic::Status::from(error))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            Self::Forbidden(forbidden) => layout::error_page(
                StatusCode::FORBIDDEN,
                "Not allowed",
                &format!("{forbidden}. Sign in with another token to do this."),
            ),
            Self::BadRequest(message) => {
                layout::error_page(StatusCode::BAD_REQUEST, "Bad request", &message)
            }
            Self::Csrf(why) => layout::error_page(
                StatusCode::FORBIDDEN,
                "Form refused",
                &format!(
                    "{why}. Reload the page and submit the form from it again; forms are \
                     accepted only from this dashboard's own pages."
                ),
            ),
            Self::Status(status) => {
                use tonic::Code;
                let (code, title) = match status.code() {
                    Code::NotFound => (StatusCode::NOT_FOUND, "Not found"),
                    Code::InvalidArgument | Code::OutOfRange => {
                        (StatusCode::BAD_REQUEST, "Bad request")
                    }
                    Code::PermissionDenied => (StatusCode::FORBIDDEN, "Not allowed"),
                    Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "Sign in"),
                    Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => {
                        (StatusCode::CONFLICT, "Refused")
                    }
                    Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "Slow down"),
                    Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, "Controller error"),
                };
                let hint = match status.code() {
                    Code::NotFound => " Check the name, or go back to the list it came from.",
                    Code::InvalidArgument => " Fix the value and try again.",
                    _ => "",
                };
                layout::error_page(code, title, &format!("{}.{hint}", status.message()))
            }
        }
    }
}

impl Caller {
    /// The token's name, or `anonymous`.
    pub fn actor(&self) -> &str {
        self.identity.actor()
    }

    /// The role's name, or `anonymous`.
    pub fn role(&self) -> &str {
        match &self.identity {
            Identity::Anonymous => "anonymous",
            Identity::Token { role, .. } => role.as_str(),
        }
    }

    /// The customer the caller is scoped to, for a customer token.
    pub fn customer(&self) -> Option<&str> {
        match &self.identity {
            Identity::Token { customer, .. } => customer.as_deref(),
            Identity::Anonymous => None,
        }
    }

    /// Whether the caller's role may call the RPC `path` (the forms of actions it may not
    /// take are not shown).
    pub fn may(&self, path: &str) -> bool {
        auth::authorize(&self.identity, path).is_ok()
    }

    /// Calls a gRPC handler in-process as this caller: the authorization table first, then
    /// `handler` with the caller's identity and address in the request's extensions.
    pub async fn rpc<Q, A, F, Fut>(
        &self,
        path: &'static str,
        message: Q,
        handler: F,
    ) -> Result<A, PageError>
    where
        F: FnOnce(tonic::Request<Q>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<A>, tonic::Status>>,
    {
        auth::authorize(&self.identity, path).map_err(PageError::Forbidden)?;
        let mut request = tonic::Request::new(message);
        request.extensions_mut().insert(self.identity.clone());
        request.extensions_mut().insert(crate::listener::Peer {
            remote: self.remote,
            certificate: None,
        });
        Ok(handler(request).await?.into_inner())
    }

    /// Checks a POST: it comes from this dashboard's origin and carries the session's CSRF
    /// token in its form.
    pub fn check_post(&self, headers: &HeaderMap, csrf: &str) -> Result<(), PageError> {
        check_origin(headers, &self.host)?;
        let sent = cookie(headers, CSRF_COOKIE).unwrap_or_default();
        if csrf.is_empty() || sent.is_empty() {
            return Err(PageError::Csrf("the form carries no CSRF token"));
        }
        if !constant_time_eq(csrf.as_bytes(), sent.as_bytes()) {
            return Err(PageError::Csrf(
                "the form's CSRF token is not this session's",
            ));
        }
        Ok(())
    }

    /// The `Set-Cookie` header of a fresh CSRF token, when this answer must set one.
    pub fn csrf_cookie(&self) -> Option<String> {
        self.new_csrf
            .then(|| set_cookie(CSRF_COOKIE, &self.csrf, self.tls, None))
    }
}

/// The host a request was sent to: its `Host` header, or the authority of its URI (HTTP/2).
pub fn host_of(headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            uri.authority()
                .map(|authority| authority.as_str().to_owned())
        })
        .unwrap_or_default()
}

/// Refuses a POST whose `Origin` (or, without one, `Referer`) is not `host`.
fn check_origin(headers: &HeaderMap, host: &str) -> Result<(), PageError> {
    let origin = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|value| value.to_str().ok());
    let Some(origin) = origin else {
        return Err(PageError::Csrf(
            "the form carries neither Origin nor Referer",
        ));
    };
    let authority = origin
        .split_once("://")
        .map_or("", |(_, rest)| rest.split('/').next().unwrap_or_default());
    if host.is_empty() || authority != host {
        return Err(PageError::Csrf("the form was sent from another site"));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A `Set-Cookie` value: HTTP-only, `SameSite=Strict`, the whole dashboard, `Secure` on TLS;
/// `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, tls: bool, max_age: Option<u64>) -> String {
    let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if tls {
        cookie.push_str("; Secure");
    }
    if let Some(seconds) = max_age {
        cookie.push_str(&format!("; Max-Age={seconds}"));
    }
    cookie
}

fn is_tls(shared: &Shared) -> bool {
    matches!(shared.config.transport, crate::listener::Transport::Tls(_))
}

/// Authenticates a request as the gRPC interceptor would a call bearing the session's token.
fn authenticate(
    shared: &Shared,
    headers: &HeaderMap,
    remote: Option<SocketAddr>,
) -> Result<Identity, AuthError> {
    let mut metadata = MetadataMap::new();
    if let Some(token) = cookie(headers, SESSION_COOKIE)
        .and_then(|hexed| hex::decode(hexed).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        && let Ok(value) = format!("Bearer {token}").parse()
    {
        metadata.insert("authorization", value);
    }
    let tokens = ManagerTokens {
        bootstrap: &shared.config.api_tokens,
        stored: &shared.api_tokens,
    };
    auth::authenticate_manager(tokens, &metadata, remote, shared.now())
}

impl FromRequestParts<Arc<Shared>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        let remote = parts
            .extensions
            .get::<ConnectInfo<ClientAddr>>()
            .and_then(|info| info.0.0);
        let identity = match authenticate(shared, &parts.headers, remote) {
            Ok(identity) => identity,
            Err(error) if parts.method == axum::http::Method::GET => {
                let next = parts.uri.path_and_query().map_or("/", |path| path.as_str());
                let why = match error {
                    AuthError::MissingApiToken => String::new(),
                    other => other.to_string(),
                };
                return Err(Redirect::to(&format!(
                    "/signin?next={}&why={}",
                    encode(next),
                    encode(&why)
                ))
                .into_response());
            }
            Err(error) => {
                return Err(layout::error_page(
                    StatusCode::UNAUTHORIZED,
                    "Sign in",
                    &format!("{error}. Sign in again, then repeat what you did."),
                ));
            }
        };
        // Every page counts against the caller's rate limit, as one gRPC call does.
        let limited = match &identity {
            Identity::Token { name, .. } => crate::limits::Identity::api_token(name),
            Identity::Anonymous => crate::limits::Identity::peer(remote.map(|addr| addr.ip())),
        };
        if let Err(error) = shared.limiter.admit(&limited, shared.now()) {
            return Err(PageError::Status(tonic::Status::from(error)).into_response());
        }
        let (csrf, new_csrf) = match cookie(&parts.headers, CSRF_COOKIE) {
            Some(csrf) if csrf.len() == 64 => (csrf.to_owned(), false),
            _ => (crate::tokens::generate_token(), true),
        };
        Ok(Self {
            identity,
            remote,
            csrf,
            new_csrf,
            tls: is_tls(shared),
            host: host_of(&parts.headers, &parts.uri),
            shared: shared.clone(),
        })
    }
}

/// Percent-encodes a query value.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `/signin`'s query.
#[derive(Debug, Default, serde::Deserialize)]
pub struct SigninQuery {
    /// Where to go once signed in.
    #[serde(default)]
    next: String,
    /// Why the caller was sent here.
    #[serde(default)]
    why: String,
}

/// Only paths of this dashboard are followed after sign-in (never another site).
fn local_path(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/releases"
    }
}

/// The sign-in form.
pub async fn signin_page(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(query): axum::extract::Query<SigninQuery>,
) -> Response {
    let anonymous_ok = shared.config.api_tokens.is_empty() && shared.api_tokens.is_empty();
    signin_form(&query.next, &query.why, anonymous_ok, StatusCode::OK)
}

fn signin_form(next: &str, why: &str, anonymous_ok: bool, status: StatusCode) -> Response {
    let body = html! {
        section.card.signin {
            h1 { "Sign in" }
            @if !why.is_empty() { p.notice.bad role="alert" { (why) } }
            @if anonymous_ok {
                p { "No API token is configured: from this host you are "
                    b { "anonymous" } " and may do everything. "
                    a href=(local_path(next)) { "Continue" } "." }
            }
            p { "Paste an API token (" code { "tollgate token create" } ", or a line of "
                code { "--api-token-file" } "). It is kept in a cookie only your browser sends back." }
            form method="post" action="/signin" {
                input type="hidden" name="next" value=(local_path(next));
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
        }
    };
    layout::bare_page(status, "Sign in", body, &[])
}

/// `/signin`'s form.
#[derive(Debug, serde::Deserialize)]
pub struct SigninForm {
    token: String,
    #[serde(default)]
    next: String,
}

/// Checks the token as a gRPC call would and keeps it in the session cookie.
pub async fn signin(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(ClientAddr(remote)): ConnectInfo<ClientAddr>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    axum::Form(form): axum::Form<SigninForm>,
) -> Response {
    if let Err(refused) = check_origin(&headers, &host_of(&headers, &uri)) {
        return refused.into_response();
    }
    let token = form.token.trim();
    let mut metadata = MetadataMap::new();
    let Ok(value) = format!("Bearer {token}").parse() else {
        return signin_form(
            &form.next,
            "that is not a token: paste it without line breaks",
            false,
            StatusCode::UNAUTHORIZED,
        );
    };
    metadata.insert("authorization", value);
    let tokens = ManagerTokens {
        bootstrap: &shared.config.api_tokens,
        stored: &shared.api_tokens,
    };
    if let Err(error) = auth::authenticate_manager(tokens, &metadata, remote, shared.now()) {
        return signin_form(
            &form.next,
            &error.to_string(),
            false,
            StatusCode::UNAUTHORIZED,
        );
    }
    let tls = is_tls(&shared);
    let mut response = Redirect::to(local_path(&form.next)).into_response();
    let headers = response.headers_mut();
    for cookie in [
        set_cookie(SESSION_COOKIE, &hex::encode(token), tls, None),
        // A fresh CSRF token for each session.
        set_cookie(CSRF_COOKIE, &crate::tokens::generate_token(), tls, None),
    ] {
        if let Ok(value) = cookie.parse() {
            headers.append(header::SET_COOKIE, value);
        }
    }
    response
}

/// `/signout`'s form.
#[derive(Debug, serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Forgets the session.
pub async fn signout(
    caller: Caller,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    if let Err(refused) = caller.check_post(&headers, &form.csrf) {
        return refused.into_response();
    }
    let mut response = Redirect::to("/signin").into_response();
    for name in [SESSION_COOKIE, CSRF_COOKIE] {
        if let Ok(value) = set_cookie(name, "", caller.tls, Some(0)).parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; tollgate_csrf=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, CSRF_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), None);
    }

    #[test]
    fn posts_from_another_origin_are_refused() {
        let mut headers = HeaderMap::new();
        let host = "127.0.0.1:8080";
        assert!(check_origin(&headers, host).is_err());
        headers.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(check_origin(&headers, host).is_err());
        headers.insert(header::ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(check_origin(&headers, host).is_ok());
        assert!(check_origin(&headers, "").is_err());
    }

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local_path("/fleet?page=2"), "/fleet?page=2");
        assert_eq!(local_path("//evil.example/"), "/releases");
        assert_eq!(local_path("https://evil.example/"), "/releases");
        assert_eq!(local_path(""), "/releases");
    }
}
