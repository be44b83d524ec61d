//! The connection to the controller: one tonic `Channel` shared by every service client, and
//! the errors a person sees when the controller is unreachable or answers with a gRPC status.

use std::fmt;
use std::time::Duration;
use tollgate_proto::v1::audit_service_client::AuditServiceClient;
use tollgate_proto::v1::{
    gate_service_client::GateServiceClient, node_service_client::NodeServiceClient,
    plan_service_client::PlanServiceClient, release_service_client::ReleaseServiceClient,
    report_service_client::ReportServiceClient, run_service_client::RunServiceClient,
    status_service_client::StatusServiceClient, token_service_client::TokenServiceClient,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// The API token every call carries, set once from `--token`, `TOLLGATE_TOKEN`, `--token-file`
/// or the config file (`credentials.rs`).
static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Sets the API token sent with every call; the first call wins.
pub fn set_token(token: Option<String>) {
    let _ = TOKEN.set(token.filter(|token| !token.is_empty()));
}

/// A channel whose calls carry the API token.
pub type Authed = InterceptedService<Channel, TokenInterceptor>;

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone, Debug)]
pub struct TokenInterceptor(Option<String>);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                tonic::Status::invalid_argument("the API token is not valid header text")
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// How long to wait for the TCP (and HTTP/2) connection before calling the controller
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected controller. Service clients are cheap views on the one channel.
#[derive(Clone, Debug)]
pub struct Controller {
    channel: Channel,
}

/// Where the controller is and which CA its certificate is trusted by.
#[derive(Clone, Debug)]
pub struct Target {
    /// `https://HOST:PORT`, or `http://` to a loopback address.
    pub url: String,
    /// The CA certificate (PEM) to trust for `https://` (`--ca-file`).
    pub ca_file: Option<std::path::PathBuf>,
}

/// An endpoint for `target`: TLS trusting `--ca-file` for `https://`, plain text only to a
/// loopback address.
pub fn endpoint(target: &Target) -> anyhow::Result<Endpoint> {
    let url = &target.url;
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|error| anyhow::anyhow!("'{url}' is not a valid controller URL: {error}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let Some(path) = &target.ca_file else {
            anyhow::bail!(
                "--ca-file is needed for {url}: pass the controller's CA certificate (ca.pem from \
                 `tollgate-controller ca init`) with --ca-file or TOLLGATE_CA_FILE"
            );
        };
        let pem = std::fs::read(path).map_err(|error| {
            anyhow::anyhow!(
                "reading --ca-file {}: {error}; pass the controller's ca.pem",
                path.display()
            )
        })?;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        return endpoint
            .tls_config(tls)
            .map_err(|error| anyhow::anyhow!("TLS for {url}: {}", error_chain(&error)));
    }
    if !tollgate_domain::access::is_loopback_url(url) {
        anyhow::bail!(
            "refusing plain text to {url}: only a loopback controller may be reached with \
             http://; use https://HOST:PORT with --ca-file (the controller's ca.pem)"
        );
    }
    Ok(endpoint)
}

impl Controller {
    /// Connects now, so that an unreachable controller is reported once, clearly, before any
    /// call is made.
    pub async fn connect(target: &Target) -> anyhow::Result<Self> {
        let channel = endpoint(target)?
            .connect()
            .await
            .map_err(|error| Unreachable {
                url: target.url.clone(),
                cause: error_chain(&error),
            })?;
        Ok(Self { channel })
    }

    /// NodeService.
    pub fn nodes(&self) -> NodeServiceClient<Authed> {
        NodeServiceClient::with_interceptor(self.channel.clone(), self.token())
    }

    /// ReleaseService.
    pub fn releases(&self) -> ReleaseServiceClient<Authed> {
        ReleaseServiceClient::with_interceptor(self.channel.clone(), self.token())
    }

    /// PlanService.
    pub fn plans(&self) -> PlanServiceClient<Authed> {
        PlanServiceClient::with_interceptor(self.channel.clone(), self.token())
    }

    /// GateService.
    pub fn gates(&self) -> GateServiceClient<Authed> {
        GateServiceClient::with_interceptor(self.channel.clone(), self.token())
    }

    /// RunService.
    pub fn runs(&self) -> RunServiceClient<Authed> {
        RunServiceClient::with_interceptor(self.channel.clone(), self.token())
    }

    /// RolloutService.
    pub fn rollouts(
        &self,
    ) -> tollgate_proto::v1::rollout_service_client::RolloutServiceClient<Authed> {
        tollgate_proto::v1::rollout_service_client::RolloutServiceClient::with_interceptor(
            self.channel.clone(),
            self.token(),
        )
    }

    /// ReportService.
    pub fn reports(&self) -> ReportServiceClient<Authed> {
        ReportServiceClient::with_interceptor(self.channel.clone(), self.token())
    }

    /// AuditService.
    pub fn audit(&self) -> AuditServiceClient<Authed> {
        AuditServiceClient::with_interceptor(self.channel.clone(), self.token())
    }

    /// IssueService.
    pub fn issues(&self) -> tollgate_proto::v1::issue_service_client::IssueServiceClient<Authed> {
        tollgate_proto::v1::issue_service_client::IssueServiceClient::with_interceptor(
            self.channel.clone(),
            self.token(),
        )
    }

    /// StatusService.
    pub fn status(&self) -> StatusServiceClient<Authed> {
        StatusServiceClient::with_interceptor(self.channel.clone(), self.token())
    }

    /// TokenService.
    pub fn tokens(&self) -> TokenServiceClient<Authed> {
        TokenServiceClient::with_interceptor(self.channel.clone(), self.token())
    }

    fn token(&self) -> TokenInterceptor {
        TokenInterceptor(TOKEN.get().cloned().flatten())
    }

    /// The raw channel, for clients outside tollgate.v1 (gRPC health).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

/// The controller could not be reached at all.
#[derive(Debug)]
pub struct Unreachable {
    /// The URL tried.
    pub url: String,
    /// Why, with every cause.
    pub cause: String,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot reach the controller at {}: {}; start one with `tollgate-controller serve` or pass --controller (and, for https://, the CA that signed its certificate with --ca-file)",
            self.url, self.cause
        )
    }
}

impl std::error::Error for Unreachable {}

/// A gRPC status from the controller. It displays as the controller's message alone: the
/// controller writes messages for people (every bad field named), and tonic's own rendering
/// adds metadata nobody needs.
#[derive(Debug)]
pub struct RpcError {
    /// The status code; it picks the exit code.
    pub code: tonic::Code,
    /// The controller's message.
    pub message: String,
    /// The bad fields of an `InvalidArgument` answer, one by one (empty otherwise).
    pub fields: Vec<FieldError>,
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "the controller answered {:?}", self.code)
        } else {
            f.write_str(&self.message)
        }
    }
}

impl std::error::Error for RpcError {}

impl From<tonic::Status> for RpcError {
    fn from(status: tonic::Status) -> Self {
        use tonic_types::StatusExt;
        // A status whose details do not decode still has its code and message.
        let fields = status
            .check_error_details()
            .ok()
            .and_then(|details| details.bad_request().cloned())
            .map(|bad| {
                bad.field_violations
                    .into_iter()
                    .map(|v| FieldError {
                        field: v.field,
                        message: v.description,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            code: status.code(),
            message: status.message().to_owned(),
            fields,
        }
    }
}

/// One bad field of an `InvalidArgument` answer, as the controller named it: the same type
/// the controller collects them in.
pub use tollgate_wire::fields::FieldError;

/// The body of a unary answer, or its status as an [`RpcError`].
pub fn answer<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Result<T, RpcError> {
    result
        .map(tonic::Response::into_inner)
        .map_err(RpcError::from)
}

/// A status code's canonical name in snake case (`invalid_argument`), as `-o json` errors
/// write it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The exit code for a gRPC status code: InvalidArgument 2, FailedPrecondition 3, NotFound 4,
/// anything else 1.
pub fn exit_code_for(code: tonic::Code) -> u8 {
    match code {
        tonic::Code::InvalidArgument => 2,
        tonic::Code::FailedPrecondition => 3,
        tonic::Code::NotFound => 4,
        _ => 1,
    }
}

/// An error and all its sources on one line, without repeating a message a source already
/// says (hyper and tonic nest errors that often share text).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(error) = current {
        let text = error.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        current = error.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_exit_codes() {
        assert_eq!(exit_code_for(tonic::Code::InvalidArgument), 2);
        assert_eq!(exit_code_for(tonic::Code::FailedPrecondition), 3);
        assert_eq!(exit_code_for(tonic::Code::NotFound), 4);
        assert_eq!(exit_code_for(tonic::Code::Internal), 1);
    }

    #[test]
    fn plain_text_goes_only_to_loopback() {
        let plain = |url: &str| Target {
            url: url.to_owned(),
            ca_file: None,
        };
        assert!(endpoint(&plain("http://127.0.0.1:7800")).is_ok());
        assert!(endpoint(&plain("http://[::1]:7800")).is_ok());
        assert!(endpoint(&plain("http://localhost:7800")).is_ok());
        let refused = endpoint(&plain("http://10.1.2.3:7800")).expect_err("refused");
        assert!(refused.to_string().contains("https://"), "{refused}");
        let no_ca = endpoint(&plain("https://controller:7800")).expect_err("refused");
        assert!(no_ca.to_string().contains("--ca-file"), "{no_ca}");
    }

    #[test]
    fn a_status_shows_only_its_message() {
        let error = RpcError::from(tonic::Status::not_found("release 'r9' does not exist"));
        assert_eq!(error.to_string(), "release 'r9' does not exist");
    }
}
