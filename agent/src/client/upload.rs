//! Delivering results: the uploader sends what the spool holds, oldest first, then what is
//! held in memory (results the spool could not take), until each is acknowledged or refused
//! for good, and tells the rest of the agent about the controller's answers ([`Answers`]): a
//! refusal meaning the controller no longer runs the job stops it here.

use super::backoff::Backoff;
use super::resume::PendingResume;
use super::{Agent, CALL_TIMEOUT, RunningJob, authorized, describe, until_shutdown};
use crate::runner::Stop;
use crate::spool::{Spool, SpoolEntry};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tollgate_proto::v1;
use tollgate_proto::v1::agent_service_client::AgentServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::Instrument as _;

/// Results that could not be spooled (the state directory's disk is full or failing), oldest
/// first. The uploader spools them as soon as the disk takes them again, and meanwhile
/// delivers them straight from memory; one leaves only once acknowledged (or refused for
/// good). Heartbeats count them as unsent, so the controller waits for them.
pub(super) type Held = Arc<Mutex<std::collections::VecDeque<v1::StepResult>>>;

/// What the uploader tells the rest of the agent about the controller's answers.
#[derive(Clone)]
pub(super) struct Answers {
    job: Arc<Mutex<Option<RunningJob>>>,
    resume: Arc<Mutex<Option<PendingResume>>>,
}

impl Answers {
    /// Records the controller's answer to `result`: a resumed flash result gets its answer,
    /// and a refusal meaning the controller no longer runs the job (`FailedPrecondition`:
    /// the job ended or moved to a newer lease epoch; `NotFound`; `PermissionDenied`) stops
    /// that job if it is the one running here, so no more of it runs for nothing.
    fn note(&self, result: &v1::StepResult, answer: Result<(), &Status>) {
        if let Some(pending) = self
            .resume
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            pending.note(result, answer);
        }
        let Err(status) = answer else { return };
        if !matches!(
            status.code(),
            Code::FailedPrecondition | Code::NotFound | Code::PermissionDenied
        ) {
            return;
        }
        let slot = self.job.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = slot.as_ref()
            && running.job_id.as_str() == result.job_id
            && running.lease_epoch.load(Ordering::SeqCst) <= result.lease_epoch
        {
            tracing::warn!(
                job = %running.job_id,
                reason = %status.message(),
                "the controller no longer runs this job; stopping it"
            );
            let _ = running.stop.send(Some(Stop::Cancelled(format!(
                "the controller refused its results: {}",
                status.message()
            ))));
        }
    }
}

impl Agent {
    /// The handles the uploader needs to act on the controller's answers.
    pub(super) fn answers(&self) -> Answers {
        Answers {
            job: Arc::clone(&self.job),
            resume: Arc::clone(&self.resume),
        }
    }
}

/// Delivers spooled results in order until each is acknowledged or rejected for good.
#[expect(
    clippy::too_many_arguments,
    reason = "each argument is a distinct handle the uploader owns"
)]
pub(super) async fn upload_loop(
    mut client: AgentServiceClient<Channel>,
    spool: Arc<Spool>,
    held: Held,
    token: watch::Receiver<Option<String>>,
    wake: Arc<Notify>,
    uploading: Arc<tokio::sync::Mutex<()>>,
    answers: Answers,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new();
    let mut retry_in: Option<Duration> = None;
    loop {
        let retry = async {
            match retry_in {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = retry => {}
            _ = until_shutdown(&mut shutdown) => return,
        }
        let Some(current_token) = token.borrow().clone() else {
            // Not registered yet; the session wakes us after registering.
            continue;
        };
        let passed = {
            let _uploading = uploading.lock().await;
            upload_pass(&mut client, &spool, &held, &current_token, &answers).await
        };
        match passed {
            Ok(()) => {
                backoff.reset();
                retry_in = None;
            }
            Err(reason) => {
                let delay = backoff.next_delay();
                tracing::warn!(%reason, retry_in = ?delay, "result upload failed; the result stays spooled");
                retry_in = Some(delay);
            }
        }
    }
}

/// One pass: results held in memory are spooled if the disk takes them now; then the spool is
/// delivered oldest first, then what is still held, straight from memory. Stops at the first
/// retryable failure so that results keep their order.
pub(super) async fn upload_pass(
    client: &mut AgentServiceClient<Channel>,
    spool: &Arc<Spool>,
    held: &Held,
    token: &str,
    answers: &Answers,
) -> Result<(), String> {
    respool_held(spool, held).await;
    let listing = Arc::clone(spool);
    let listed = tokio::task::spawn_blocking(move || listing.pending())
        .await
        .map_err(|error| format!("spool task failed: {error}"))
        .and_then(|listed| listed.map_err(|error| error.to_string()));
    // A spool that cannot even be listed must not hold up the results kept in memory.
    let (entries, spool_error) = match listed {
        Ok(entries) => (entries, None),
        Err(error) => (Vec::new(), Some(error)),
    };
    for entry in entries {
        match deliver(client, &entry.result, token, answers).await? {
            Delivered::Acknowledged => {
                let removed = blocking(spool, entry, |spool, entry| {
                    spool.remove(&entry).map(|_| ())
                })
                .await;
                if let Err(error) = removed {
                    tracing::warn!(%error, "could not delete an acknowledged result; it will be resent (the controller deduplicates)");
                }
            }
            Delivered::Refused => {
                let moved = blocking(spool, entry, |spool, entry| {
                    spool.reject(&entry).map(|_| ())
                })
                .await;
                if let Err(error) = moved {
                    tracing::error!(%error, "could not move a rejected result aside");
                }
            }
        }
    }
    loop {
        let next = held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .front()
            .cloned();
        let Some(result) = next else { break };
        let delivered = deliver(client, &result, token, answers).await?;
        if delivered == Delivered::Refused {
            tracing::error!(
                job = %result.job_id,
                step = %result.step_name,
                attempt = result.attempt,
                "a result held in memory was refused for good; it is dropped (see the reason above)"
            );
        }
        let mut queue = held.lock().unwrap_or_else(|p| p.into_inner());
        if queue.front() == Some(&result) {
            queue.pop_front();
        }
    }
    spool_error.map_or(Ok(()), Err)
}

/// Spools the results held in memory, oldest first, while the disk takes them.
async fn respool_held(spool: &Arc<Spool>, held: &Held) {
    loop {
        let next = held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .front()
            .cloned();
        let Some(result) = next else { return };
        let writer = Arc::clone(spool);
        let to_spool = result.clone();
        match tokio::task::spawn_blocking(move || writer.write(&to_spool)).await {
            Ok(Ok(path)) => {
                tracing::info!(path = %path.display(), job = %result.job_id, step = %result.step_name, attempt = result.attempt, "a result held in memory is spooled now");
                let mut queue = held.lock().unwrap_or_else(|p| p.into_inner());
                if queue.front() == Some(&result) {
                    queue.pop_front();
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "the spool still fails; results stay in memory");
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "spooling task failed; results stay in memory");
                return;
            }
        }
    }
}

/// How the controller answered one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    /// Committed (or already had it).
    Acknowledged,
    /// It will never accept this result (stale epoch, another node's job, malformed).
    Refused,
}

/// Sends one result; `Err` for a failure worth retrying later.
async fn deliver(
    client: &mut AgentServiceClient<Channel>,
    result: &v1::StepResult,
    token: &str,
    answers: &Answers,
) -> Result<Delivered, String> {
    let mut request = authorized(result.clone(), token).map_err(|s| s.message().to_owned())?;
    // A controller that accepts the call but never answers must not stall the spool.
    request.set_timeout(CALL_TIMEOUT);
    // With traces on, the controller's handling of the call continues this trace.
    let span = crate::traces::upload_span(&result.job_id, result.step_index, result.attempt);
    crate::traces::inject(&span, request.metadata_mut());
    let answered = client.report_result(request).instrument(span).await;
    if !matches!(&answered, Err(status) if !is_refusal(status.code())) {
        crate::traces::forget_attempt(&result.job_id, result.step_index, result.attempt);
    }
    match answered {
        Ok(ack) => {
            let duplicate = ack.into_inner().duplicate;
            tracing::info!(
                job = %result.job_id,
                step = %result.step_name,
                attempt = result.attempt,
                duplicate,
                "result acknowledged"
            );
            answers.note(result, Ok(()));
            Ok(Delivered::Acknowledged)
        }
        Err(status) if is_refusal(status.code()) => {
            tracing::error!(
                job = %result.job_id,
                step = %result.step_name,
                attempt = result.attempt,
                code = ?status.code(),
                reason = %status.message(),
                "the controller will never accept this result; it is set aside (spool/rejected)"
            );
            answers.note(result, Err(&status));
            Ok(Delivered::Refused)
        }
        Err(status) => Err(describe(&status, "report result")),
    }
}

/// Whether the controller refused a result for good (it is set aside, never sent again).
fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::FailedPrecondition | Code::PermissionDenied | Code::InvalidArgument | Code::NotFound
    )
}

async fn blocking(
    spool: &Arc<Spool>,
    entry: SpoolEntry,
    work: impl FnOnce(&Spool, SpoolEntry) -> Result<(), crate::spool::SpoolError> + Send + 'static,
) -> Result<(), String> {
    let spool = Arc::clone(spool);
    match tokio::task::spawn_blocking(move || work(&spool, entry)).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

/// Spools `wire`, or holds it in memory when the spool cannot take it (the uploader spools it
/// once the disk takes it again, and meanwhile delivers it from memory). `Err` says why the
/// spool failed, for the caller to log.
pub(super) async fn spool_or_hold(
    spool: &Arc<Spool>,
    held: &Held,
    wire: v1::StepResult,
) -> Result<PathBuf, String> {
    let writer = Arc::clone(spool);
    let to_spool = wire.clone();
    let spooled = tokio::task::spawn_blocking(move || writer.write(&to_spool))
        .await
        .map_err(|error| format!("spooling task failed: {error}"))
        .and_then(|written| written.map_err(|error| error.to_string()));
    if spooled.is_err() {
        held.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(wire);
    }
    spooled
}
