//! The issue webhook (`--issue-webhook URL`): every issue change (opened, attached, a state
//! change, an update, an import) queues an event in `issue_webhook_outbox` in the change's own
//! transaction (`store/issues.rs`), and [`run_loop`] on the leading replica posts the queued
//! events to the URL, oldest first, as JSON (docs/issue-format.md, "Webhook").
//!
//! Delivery is at least once: an event leaves the outbox (a delete by its id) only after the
//! receiver answered 2xx, so a controller that stops between the answer and the delete posts it
//! again; receivers deduplicate on the event id. An event that is not accepted stops delivery
//! there (later events of the same issue never overtake it) and is retried after a backoff that
//! doubles from [`FIRST_RETRY`] up to [`MAX_RETRY`]. The loop runs on its own task: requests and
//! gate evaluations only insert the outbox row.
//!
//! Plain `http://` only: the POST is written by hand over a TCP connection (HTTP/1.1,
//! `Connection: close`); an `https://` URL is refused at startup.

use crate::shared::{Shared, stopped};
use crate::store::{QueuedWebhook, StoreError};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tollgate_domain::issue::Issue;

/// The first wait after a delivery failed.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(60);
/// How long one POST (connect, send, status line) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Events read from the outbox at a time.
const BATCH: i64 = 100;

/// An `http://HOST[:PORT][/PATH]` URL the webhook posts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    /// The host name or address (an IPv6 address in brackets).
    pub host: String,
    /// The port; 80 when the URL names none.
    pub port: u16,
    /// The path and query, `/` when the URL names none.
    pub path: String,
}

impl WebhookUrl {
    /// Reads `url`; an `https://` URL, another scheme, a missing host or a bad port is an
    /// error that says what to write instead.
    pub fn parse(url: &str) -> Result<WebhookUrl, String> {
        if url.starts_with("https://") {
            return Err(format!(
                "{url}: https is not supported; the webhook posts plain http:// (put a \
                 TLS-terminating proxy on the receiver's side if the network needs it)"
            ));
        }
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!(
                "{url} is not an http:// URL; use http://HOST[:PORT]/PATH"
            ));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('/') => (&rest[..at], rest[at..].to_owned()),
            Some(at) => (&rest[..at], format!("/{}", &rest[at..])),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return Err(format!("{url}: credentials in the URL are not supported"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|port| *port != 0)
                    .ok_or_else(|| format!("{url}: '{port}' is not a port"))?;
                (host, port)
            }
            _ => (authority, 80),
        };
        if host.is_empty()
            || host.chars().any(|c| c.is_whitespace() || c.is_control())
            || path.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "{url} is not a valid URL; use http://HOST[:PORT]/PATH"
            ));
        }
        Ok(WebhookUrl {
            host: host.to_owned(),
            port,
            path,
        })
    }
}

impl std::fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// Posts queued issue events while this replica leads, until shutdown; returns at once when
/// no webhook is configured.
pub async fn run_loop(shared: Arc<Shared>) {
    let Some(url) = shared.config.issue_webhook.clone() else {
        return;
    };
    let mut shutdown = shared.subscribe_shutdown();
    let mut retry: Option<Duration> = None;
    loop {
        let wait = retry.unwrap_or(shared.config.tick);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopped(&mut shutdown) => break,
        }
        if !shared.leading.load(Ordering::Relaxed) {
            retry = None;
            continue;
        }
        // Shutdown does not wait for a slow receiver: an event cut off is posted again later.
        let outcome = tokio::select! {
            outcome = deliver_queued(&shared, &url) => outcome,
            () = stopped(&mut shutdown) => break,
        };
        match outcome {
            Ok(()) => retry = None,
            Err(error) => {
                let next = retry.map_or(FIRST_RETRY, |last| (last * 2).min(MAX_RETRY));
                tracing::warn!(
                    webhook = %url,
                    retry_in_s = next.as_secs(),
                    "issue webhook not delivered: {error}"
                );
                retry = Some(next);
            }
        }
    }
    tracing::debug!("issue webhook stopped");
}

/// Posts every queued event, oldest first, deleting each once accepted; stops at the first
/// that is not.
async fn deliver_queued(shared: &Shared, url: &WebhookUrl) -> Result<(), String> {
    loop {
        let queued = shared
            .store
            .queued_webhooks(BATCH)
            .await
            .map_err(|error| error.to_string())?;
        if queued.is_empty() {
            return Ok(());
        }
        for event in queued {
            if !shared.leading.load(Ordering::Relaxed) {
                return Ok(());
            }
            let issue = shared
                .store
                .issue(event.issue_id)
                .await
                .map_err(|error: StoreError| error.to_string())?;
            let body = body(&event, issue.as_ref());
            post(url, event.id, &body).await?;
            shared
                .store
                .webhook_delivered(event.id)
                .await
                .map_err(|error| error.to_string())?;
        }
    }
}

/// The JSON body of `event` about `issue` (as the store has it now).
pub fn body(event: &QueuedWebhook, issue: Option<&Issue>) -> serde_json::Value {
    serde_json::json!({
        "id": event.id,
        "event": event.event,
        "issue": issue.map(issue_json),
        "at": event.at.to_rfc3339(),
    })
}

/// An issue in the shape `tollgate issue export` gives it (docs/issue-format.md).
pub fn issue_json(issue: &Issue) -> serde_json::Value {
    serde_json::json!({
        "id": issue.id,
        "signature": issue.signature.key(),
        "kind": issue.signature.kind,
        "text": issue.signature.text,
        "title": issue.title,
        "severity": issue.severity,
        "owner": issue.owner,
        "tickets": issue.tickets,
        "customers": issue.customers,
        "state": issue.state.name(),
        "fix_release": issue.state.release(),
        "reason": issue.state.reason(),
        "releases": issue.releases,
        "nodes": issue.nodes,
        "evidence": issue.evidence,
        "opened_at": issue.opened_at.to_rfc3339(),
        "updated_at": issue.updated_at.to_rfc3339(),
    })
}

/// POSTs `body` to `url`; `Ok` only on a 2xx answer.
async fn post(url: &WebhookUrl, id: i64, body: &serde_json::Value) -> Result<(), String> {
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: tollgate-controller\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n\
         X-Tollgate-Event-Id: {id}\r\nConnection: close\r\n\r\n{body}",
        path = url.path,
        host = url.host,
        port = url.port,
        len = body.len(),
    );
    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host, url.port))
            .await
            .map_err(|error| format!("connecting: {error}"))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| format!("sending: {error}"))?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 8192 {
            let read = stream
                .read(&mut chunk)
                .await
                .map_err(|error| format!("reading the answer: {error}"))?;
            if read == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..read]);
        }
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))??;
    let line = String::from_utf8_lossy(&answer);
    let line = line.lines().next().unwrap_or_default();
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("event {id}: the receiver answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_plain_http_with_a_host() {
        let url = WebhookUrl::parse("http://hooks.lab:8080/tollgate?x=1").unwrap();
        assert_eq!(
            url,
            WebhookUrl {
                host: "hooks.lab".into(),
                port: 8080,
                path: "/tollgate?x=1".into()
            }
        );
        let url = WebhookUrl::parse("http://[::1]").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("[::1]", 80, "/")
        );
        for bad in [
            "https://hooks.lab/x",
            "ftp://hooks.lab",
            "hooks.lab:80",
            "http://",
            "http://hooks.lab:0/",
            "http://hooks.lab:http/",
            "http://user:pw@hooks.lab/",
            "http://hooks lab/",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad} was accepted");
        }
        assert!(
            WebhookUrl::parse("https://hooks.lab/x")
                .unwrap_err()
                .contains("https is not supported")
        );
    }
}
