//! The controller's configuration, built by `main.rs` from flags and by tests directly.

use crate::clock::SharedClock;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `run` needs besides its listener and shutdown signal.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// `sqlite://PATH` or `postgres://...`.
    pub database_url: String,
    /// Where the controller keeps its files (the SQLite database by default, report keys).
    pub data_dir: PathBuf,
    /// How often agents send heartbeats.
    pub heartbeat_interval: Duration,
    /// After how long without a heartbeat a node is unreachable and its running job lost.
    pub lease_grace: Duration,
    /// When silent nodes mean an outage rather than dead nodes (no lease expires meanwhile).
    pub outage: tollgate_domain::lease::OutagePolicy,
    /// How often the scheduler and the lease watchdog wake up when nothing pokes them.
    pub tick: Duration,
    /// The clock every decision reads `now` from.
    pub clock: SharedClock,
    /// Manager API tokens; empty for anonymous manager calls.
    pub api_tokens: crate::tokens::ApiTokens,
    /// Per-identity stream and rate limits.
    pub limits: crate::limits::LimitsConfig,
    /// Caps on open connections, and their idle timeout.
    pub connections: crate::listener::ConnectionLimits,
    /// TLS, or plain text on loopback only. `new` picks plain text (tests); `main` always
    /// sets it from `--tls-cert`, `--ca-dir` or `--insecure-loopback`.
    pub transport: crate::listener::Transport,
    /// The lab CA that signs node certificates at enrollment; `None` refuses enrollment.
    pub ca: Option<std::sync::Arc<crate::pki::Ca>>,
    /// How long a node certificate signed at enrollment or renewal is valid.
    pub node_certificate_lifetime: Duration,
    /// On PostgreSQL, whether replicas wake each other's schedulers with `LISTEN`/`NOTIFY`
    /// (`replica::wake_loop`); without it a job for a node whose stream another replica holds
    /// waits for that replica's next tick. Off by default: with it, every replica schedules
    /// at the same instant, and a 50-agent run start made them contend on the run's row long
    /// enough to exhaust their connection pools (see BENCHMARKS.md); `replica-bench`
    /// measures both.
    pub wake_replicas: bool,
    /// The fleet telemetry history kept: tiers of bucket width and retention
    /// (`tollgate_domain::fleet_history`; `--telemetry-history`).
    pub fleet_history: tollgate_domain::fleet_history::History,
    /// How often closed fleet telemetry buckets are written, and how long after a bucket's
    /// end its late samples are still folded in before it is.
    pub fleet_flush_every: Duration,
    /// Where the web dashboard listens (`--http-listen`); `None` serves none. It uses the
    /// gRPC listener's transport: TLS, or plain text on a loopback address only.
    pub http_listen: Option<std::net::SocketAddr>,
    /// The dashboard's base URL as people reach it (`--dashboard-url`,
    /// `https://tollgate.lab:7880`, no trailing `/`), for the links of status reports; `None`
    /// links by path (`/releases/r550`).
    pub dashboard_url: Option<String>,
    /// Where issue changes are posted (`--issue-webhook`, `issue_webhook.rs`); `None` posts
    /// nothing and queues nothing.
    pub issue_webhook: Option<crate::issue_webhook::WebhookUrl>,
}

impl ControllerConfig {
    /// Defaults for a controller keeping its data in `data_dir` on SQLite.
    pub fn new(data_dir: PathBuf) -> Self {
        let database_url = format!("sqlite://{}", data_dir.join("tollgate.db").display());
        Self {
            database_url,
            data_dir,
            heartbeat_interval: Duration::from_secs(2),
            lease_grace: Duration::from_secs(10),
            outage: tollgate_domain::lease::OutagePolicy::default(),
            tick: Duration::from_secs(1),
            clock: std::sync::Arc::new(crate::clock::SystemClock),
            api_tokens: crate::tokens::ApiTokens::default(),
            limits: crate::limits::LimitsConfig::default(),
            connections: crate::listener::ConnectionLimits::default(),
            transport: crate::listener::Transport::InsecureLoopback,
            ca: None,
            node_certificate_lifetime: Duration::from_secs(30 * 24 * 3600),
            wake_replicas: false,
            fleet_history: tollgate_domain::fleet_history::History::default(),
            fleet_flush_every: Duration::from_secs(10),
            http_listen: None,
            dashboard_url: None,
            issue_webhook: None,
        }
    }
}

/// The database URL with any password replaced, for logs and error messages (the same
/// masking `--print-config` applies).
pub fn redact_database_url(url: &str) -> String {
    tollgate_wire::daemon_config::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_passwords_never_reach_logs() {
        assert_eq!(
            redact_database_url("postgres://tg:s3cret@db:5432/tollgate"),
            "postgres://tg:***@db:5432/tollgate"
        );
        assert_eq!(
            redact_database_url("postgres://tg@db/tollgate"),
            "postgres://tg@db/tollgate"
        );
        assert_eq!(
            redact_database_url("sqlite://./.tollgate/tollgate.db"),
            "sqlite://./.tollgate/tollgate.db"
        );
    }
}
