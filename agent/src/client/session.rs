//! One session with the controller: register (which hands out the node token, saved in the
//! state directory), resolve a pending resume, open the `Connect` stream, then heartbeats up
//! and commands (assign, cancel) down until the stream breaks; and the loop that starts a new
//! session after a jittered backoff ([`super::backoff`]), reset once a stream opened.

use super::backoff::Backoff;
use super::{Agent, CALL_TIMEOUT, authorized, describe, until_shutdown};
use crate::runner::{self, Stop};
use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1;
use tollgate_proto::v1::agent_service_client::AgentServiceClient;
use tollgate_wire::ToProto as _;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

/// Used when the controller's registration carries no heartbeat interval.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// How a session ended when it did not fail.
enum SessionEnd {
    Shutdown,
}

/// How a session failed.
enum SessionError {
    /// Reconnect after a backoff.
    Retry(String),
    /// Stop the agent.
    Fatal(anyhow::Error),
}

/// What a registration gave the session.
struct Registered {
    client: AgentServiceClient<Channel>,
    token: String,
    heartbeat_every: Duration,
}

impl Agent {
    /// Runs sessions one after the other, a backoff apart, until shutdown or a fatal error.
    pub(super) async fn serve_sessions(
        &self,
        progress: &mut mpsc::Receiver<v1::AgentEvent>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut backoff = Backoff::new();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let mut stream_opened = false;
            match self.session(progress, shutdown, &mut stream_opened).await {
                Ok(SessionEnd::Shutdown) => return Ok(()),
                Err(SessionError::Fatal(error)) => return Err(error),
                Err(SessionError::Retry(reason)) => {
                    self.metrics.reconnecting();
                    let delay = backoff.after_session(stream_opened);
                    tracing::warn!(%reason, retry_in = ?delay, "no session with the controller; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = until_shutdown(shutdown) => return Ok(()),
                    }
                }
            }
        }
    }

    /// Registers, opens the stream and serves it until it breaks or the agent shuts down;
    /// sets `stream_opened` once the stream is open.
    async fn session(
        &self,
        progress_events: &mut mpsc::Receiver<v1::AgentEvent>,
        shutdown: &mut watch::Receiver<bool>,
        stream_opened: &mut bool,
    ) -> Result<SessionEnd, SessionError> {
        let Registered {
            mut client,
            token,
            heartbeat_every,
        } = self.register().await?;
        // A job whose flash waited for this restart continues before the first heartbeat,
        // which then names it: the controller keeps the job instead of declaring it
        // interrupted.
        self.resume_after_reboot(&mut client, &token)
            .await
            .map_err(SessionError::Retry)?;
        // Replay whatever the spool holds, now that uploads carry a valid token.
        self.upload.notify_one();

        let (outbound, outbound_receiver) = mpsc::channel::<v1::AgentEvent>(64);
        // Commands read from this stream, reported in every heartbeat: the controller judges a
        // heartbeat only once it was built after every command it sent.
        let mut commands_received: u64 = 0;
        outbound
            .send(self.heartbeat(commands_received))
            .await
            .map_err(|_| SessionError::Retry("stream closed".into()))?;
        let request = authorized(ReceiverStream::new(outbound_receiver), &token)
            .map_err(|status| SessionError::Retry(status.message().to_owned()))?;
        let mut inbound = client
            .connect(request)
            .await
            .map_err(|status| SessionError::Retry(describe(&status, "connect")))?
            .into_inner();
        *stream_opened = true;
        tracing::info!("stream to the controller open");
        self.serve_stream(
            &outbound,
            &mut inbound,
            progress_events,
            shutdown,
            heartbeat_every,
            &mut commands_received,
        )
        .await
    }

    /// Registers the node with its inventory and saves the node token the controller hands
    /// out. A refusal of this node (its token does not match its enrollment) is fatal.
    async fn register(&self) -> Result<Registered, SessionError> {
        let mut client = AgentServiceClient::new(self.channel.clone());
        let inventory = runner::observe_inventory(&self.source)
            .await
            .map_err(|error| SessionError::Retry(format!("reading the inventory: {error}")))?;
        let request = v1::RegisterRequest {
            node_name: self.config.node.clone(),
            labels: self.config.labels.clone().into_iter().collect(),
            inventory: Some(inventory.to_proto()),
            agent_version: crate::AGENT_VERSION.to_owned(),
            node_token: self.token.borrow().clone().unwrap_or_default(),
        };
        let presented = if request.node_token.is_empty() {
            "this agent presented no node token".to_owned()
        } else {
            format!(
                "this agent presented the node token in {}",
                token_path(&self.config.state_dir).display()
            )
        };
        let mut request = Request::new(request);
        request.set_timeout(CALL_TIMEOUT);
        let registration = match client.register(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::PermissionDenied => {
                return Err(SessionError::Fatal(anyhow::anyhow!(
                    "the controller refused node '{}': {} ({presented})",
                    self.config.node,
                    status.message(),
                )));
            }
            Err(status) => return Err(SessionError::Retry(describe(&status, "register"))),
        };
        let token = registration.node_token.clone();
        let path = token_path(&self.config.state_dir);
        let to_save = token.clone();
        match tokio::task::spawn_blocking(move || save_token(&path, &to_save)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "could not save the node token; it is kept in memory")
            }
            Err(error) => tracing::error!(%error, "saving the node token failed"),
        }
        self.token.send_replace(Some(token.clone()));
        let heartbeat_every = match registration.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        tracing::info!(
            node = %registration.node_name,
            heartbeat = ?heartbeat_every,
            gpus = inventory.gpus.len(),
            driver = %inventory.driver_version,
            "registered with the controller"
        );
        Ok(Registered {
            client,
            token,
            heartbeat_every,
        })
    }

    /// Serves an open stream: heartbeats and progress up, commands down, until it breaks
    /// or the agent shuts down.
    async fn serve_stream(
        &self,
        outbound: &mpsc::Sender<v1::AgentEvent>,
        inbound: &mut Streaming<v1::ControllerCommand>,
        progress_events: &mut mpsc::Receiver<v1::AgentEvent>,
        shutdown: &mut watch::Receiver<bool>,
        heartbeat_every: Duration,
        commands_received: &mut u64,
    ) -> Result<SessionEnd, SessionError> {
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + heartbeat_every,
            heartbeat_every,
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let closed = |_| SessionError::Retry("the outbound stream closed".into());
        loop {
            tokio::select! {
                _ = until_shutdown(shutdown) => return Ok(SessionEnd::Shutdown),
                _ = ticker.tick() => {
                    tracing::debug!("heartbeat");
                    outbound.send(self.heartbeat(*commands_received)).await.map_err(closed)?;
                }
                Some(progress) = progress_events.recv() => {
                    outbound.send(progress).await.map_err(closed)?;
                }
                message = inbound.message() => match message {
                    Ok(Some(command)) => {
                        *commands_received += 1;
                        if let Some(reply) = self.handle(command) {
                            outbound.send(reply).await.map_err(closed)?;
                        }
                    }
                    Ok(None) => return Err(SessionError::Retry("the controller closed the stream".into())),
                    Err(status) => return Err(SessionError::Retry(describe(&status, "stream"))),
                },
            }
        }
    }

    /// What the agent runs now and what it still owes the controller; `commands_received`
    /// is how many commands of the current stream it had read.
    fn heartbeat(&self, commands_received: u64) -> v1::AgentEvent {
        let (running_job_id, lease_epoch, step) = self
            .job
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(|running| {
                let step = *running.step.lock().unwrap_or_else(|p| p.into_inner());
                (
                    running.job_id.to_string(),
                    running.lease_epoch.load(Ordering::SeqCst),
                    step,
                )
            })
            .unwrap_or_default();
        // Counted after the slot was read: a result leaves the slot's job only once it is
        // spooled or held, so a heartbeat never shows the job gone and its last result unsent
        // uncounted.
        let mut unsent_by_job = self.spool.count_pending_by_job();
        for result in self.held.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let n = unsent_by_job.entry(result.job_id.clone()).or_default();
            *n = n.saturating_add(1);
        }
        let unsent = unsent_by_job
            .values()
            .fold(0u32, |sum, n| sum.saturating_add(*n));
        v1::AgentEvent {
            event: Some(v1::agent_event::Event::Heartbeat(v1::Heartbeat {
                running_job_id,
                sent_at: Some(tollgate_wire::timestamp_to_proto(crate::clock::now())),
                unsent_results: unsent,
                lease_epoch,
                step_index: step.map(|(index, _)| index),
                attempt: step.map_or(0, |(_, attempt)| attempt),
                commands_received,
                unsent_by_job: unsent_by_job.into_iter().collect(),
            })),
        }
    }

    /// Acts on a controller command; returns what to send back.
    fn handle(&self, command: v1::ControllerCommand) -> Option<v1::AgentEvent> {
        match command.command? {
            v1::controller_command::Command::AssignJob(assignment) => self.assign(assignment),
            v1::controller_command::Command::CancelJob(cancel) => {
                let slot = self.job.lock().unwrap_or_else(|p| p.into_inner());
                match slot.as_ref() {
                    Some(running) if running.job_id.as_str() == cancel.job_id => {
                        tracing::info!(job = %cancel.job_id, reason = %cancel.reason, "job cancelled by the controller");
                        let _ = running.stop.send(Some(Stop::Cancelled(cancel.reason)));
                    }
                    _ => {
                        tracing::info!(job = %cancel.job_id, "cancel for a job that is not running; ignored")
                    }
                }
                None
            }
        }
    }
}

/// `<state-dir>/node-token`.
pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("node-token")
}

/// The saved node token, if any.
pub(super) fn read_token(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => {
            Err(error).with_context(|| format!("reading the node token {}", path.display()))
        }
    }
}

/// Saves the node token readable only by the agent's user: temp file, fsync, rename.
fn save_token(path: &Path, token: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_path(dir.path());
        assert_eq!(read_token(&path).unwrap(), None);
        save_token(&path, "secret-1").unwrap();
        save_token(&path, "secret-2").unwrap();
        assert_eq!(read_token(&path).unwrap().as_deref(), Some("secret-2"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
