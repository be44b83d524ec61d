//! Running as one of several replicas on one PostgreSQL database, all active: every replica
//! answers every call and accepts agents; what they must agree on lives in the database.
//!
//! - [`sole_sqlite_controller`]: SQLite serves one controller; a second on the same file is
//!   refused before it opens the database.
//! - [`Leader`]: the loops that must run once per deployment (lease expiry) run on the holder
//!   of the leadership (`Store::try_lead`, a PostgreSQL advisory lock); another replica takes
//!   it within a tick of the holder's death, and gives every lease a fresh grace first, since
//!   the dead replica's agents are reconnecting elsewhere.
//! - [`wake_loop`] (off unless `ControllerConfig::wake_replicas`): a replica that made work for
//!   another (a run started, a job ended, a node resumed) wakes every replica's scheduler
//!   through PostgreSQL `LISTEN`/`NOTIFY`, so a job reaches an agent held elsewhere in
//!   milliseconds rather than at that replica's next tick (`replica-bench` measures both); the
//!   tick stays the fallback for a lost notification.
//! - [`sync_loop`]: revoked node certificates and API tokens made or revoked on another
//!   replica take effect here within [`SYNC_INTERVAL`]; a node whose certificate was revoked
//!   elsewhere loses its stream here too.

use crate::shared::{Shared, stopped};
use crate::store::{Leadership, StoreError};
use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;

/// How often a replica reads what other replicas may have changed (revocations, API tokens).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Refuses to serve a SQLite database that another controller serves: holds an exclusive
/// lock on `FILE-controller.lock` beside it for as long as the returned file is kept. `None`
/// for PostgreSQL (any number of replicas) and in-memory databases.
pub fn sole_sqlite_controller(database_url: &str) -> anyhow::Result<Option<std::fs::File>> {
    let Some(file) = crate::store::sqlite_file(database_url) else {
        return Ok(None);
    };
    let path = std::path::PathBuf::from(format!("{file}-controller.lock"));
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the directory {}", parent.display()))?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another controller serves the SQLite database {file} (it holds {}): SQLite serves \
             one controller; stop the other one, or run replicas on PostgreSQL \
             (--database postgres://USER@HOST/DB)",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// This replica's leadership, taken and kept tick by tick by the loop that needs it.
#[derive(Debug, Default)]
pub struct Leader {
    held: Option<Leadership>,
}

impl Leader {
    /// Whether this replica leads now: keeps the leadership it holds while its connection
    /// lives, or tries to take it. On taking it, every lease gets a fresh grace from now.
    pub async fn leads(&mut self, shared: &Shared) -> bool {
        let leads = self.take_or_keep(shared).await;
        shared
            .leading
            .store(leads, std::sync::atomic::Ordering::Relaxed);
        leads
    }

    /// [`Self::leads`] without noting the answer in `shared.leading`.
    async fn take_or_keep(&mut self, shared: &Shared) -> bool {
        if let Some(held) = self.held.as_mut() {
            if held.still_held().await {
                return true;
            }
            self.held = None;
            tracing::warn!("this replica lost the leadership; another replica expires leases now");
        }
        match shared.store.try_lead().await {
            Ok(Some(taken)) => {
                self.held = Some(taken);
                shared.refresh_leases(shared.now());
                if shared.store.backend() == "postgres" {
                    tracing::info!(
                        "this replica leads: it expires leases (every lease gets a fresh grace first)"
                    );
                }
                true
            }
            Ok(None) => false,
            Err(error) => {
                tracing::warn!(%error, "could not ask for the leadership; trying again at the next tick");
                false
            }
        }
    }
}

/// Reads revocations and API tokens every [`SYNC_INTERVAL`] until shutdown.
pub async fn sync_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.subscribe_shutdown();
    loop {
        tokio::select! {
            () = tokio::time::sleep(SYNC_INTERVAL) => {}
            () = stopped(&mut shutdown) => break,
        }
        if let Err(error) = sync_once(&shared).await {
            tracing::warn!(%error, "could not read revocations and API tokens; trying again");
        }
    }
}

/// One read of what other replicas may have changed.
pub async fn sync_once(shared: &Shared) -> Result<(), StoreError> {
    for (serial, node) in shared.store.revoked_certificates().await? {
        if shared.revocations.add([serial.clone()]) > 0 {
            // Revoked on another replica: its calls here are refused from now on, and an
            // open stream here ends.
            shared.sessions.close_node(&node);
            tracing::warn!(node = %node, serial, "node certificate revoked on another replica; its stream here is closed");
        }
    }
    shared.api_tokens.reload(&shared.store).await
}

/// Wakes the other replicas' schedulers when this one's is poked, and this one's when another
/// replica's is (`Store::notify_work` / `Store::listen_for_work`), until shutdown. Does nothing
/// on SQLite or with `wake_replicas` off. A listener that fails is opened again after a second.
pub async fn wake_loop(shared: Arc<Shared>) {
    if !shared.config.wake_replicas {
        return;
    }
    let mut shutdown = shared.subscribe_shutdown();
    let channel = loop {
        match shared.store.work_channel().await {
            Ok(Some(channel)) => break channel,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot name the replicas' wake channel; trying again in a second");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stopped(&mut shutdown) => return,
                }
            }
        }
    };
    let send = {
        let shared = shared.clone();
        let channel = channel.clone();
        async move {
            loop {
                shared.replicas_wake_requested().await;
                if let Err(error) = shared.store.notify_work(&channel, &shared.replica_id).await {
                    tracing::debug!(%error, "could not wake the other replicas; they look at their next tick");
                }
            }
        }
    };
    let listen = async {
        loop {
            let mut listener = match shared.store.listen_for_work(&channel).await {
                Ok(Some(listener)) => listener,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for the other replicas' work; trying again in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::debug!(channel, "listening for the other replicas' work");
            loop {
                match listener.next().await {
                    Ok(from) if from != shared.replica_id => shared.poke_scheduler_here(),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "lost the other replicas' wake channel; listening again");
                        break;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = send => {}
        () = listen => {}
        () = stopped(&mut shutdown) => {}
    }
}
