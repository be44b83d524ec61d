//! Group commit of step results and job changes on SQLite. SQLite has one writer and every
//! commit waits for its fsync, so writes of one transaction each queue behind each other's
//! fsyncs: with a thousand agents reporting at once most of a result's time was spent
//! waiting for the write lock. Here a write that arrives while another batch commits waits,
//! and the next writer applies every waiting write in one transaction
//! ([`Store::write_batch`]: a savepoint each, so each keeps its own outcome). Nothing waits
//! for company: a lone write is applied at once.
//!
//! PostgreSQL commits concurrent transactions in parallel (row locks, not one write lock),
//! so there each write is its own transaction, as before.
//!
//! **Invariant:** a write is answered only after the transaction that holds it committed; a
//! batch that fails as a whole is written again one write at a time, so each gets its own
//! error.

use crate::store::{Recorded, Store, StoreError, Write};
use tokio::sync::oneshot;
use tollgate_domain::Timestamp;
use tollgate_domain::job::{JobChange, ResultChange};
use tollgate_domain::result::StepResult;

/// The most results one transaction takes.
const MAX_BATCH: usize = 256;

/// What waits for a writer.
enum Owned {
    Result(Box<StepResult>, ResultChange),
    Job(JobChange),
}

impl Owned {
    fn as_write(&self, now: Timestamp) -> Write<'_> {
        match self {
            Self::Result(result, change) => Write::Result(result, change, now),
            Self::Job(change) => Write::Job(change, now),
        }
    }

    async fn write_alone(&self, store: &Store, now: Timestamp) -> Result<Recorded, StoreError> {
        match self {
            Self::Result(result, change) => store.record_result(result, change, now).await,
            Self::Job(change) => store
                .apply_job_change(change, now)
                .await
                .map(|()| Recorded::Inserted),
        }
    }
}

/// A write waiting for a writer.
struct Waiting {
    write: Owned,
    now: Timestamp,
    reply: oneshot::Sender<Result<Recorded, StoreError>>,
}

/// The results waiting to be written and the turn to write them.
#[derive(Default)]
pub struct GroupCommit {
    waiting: std::sync::Mutex<Vec<Waiting>>,
    turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// [`Store::record_result`], batched with the writes that arrive meanwhile on SQLite.
    pub async fn record(
        &self,
        store: &Store,
        result: &StepResult,
        change: &ResultChange,
        now: Timestamp,
    ) -> Result<Recorded, StoreError> {
        if store.backend() != "sqlite" {
            return store.record_result(result, change, now).await;
        }
        self.write(
            store,
            Owned::Result(Box::new(result.clone()), change.clone()),
            now,
        )
        .await
    }

    /// [`Store::apply_job_change`], batched with the writes that arrive meanwhile on SQLite.
    pub async fn apply(
        &self,
        store: &Store,
        change: &JobChange,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if store.backend() != "sqlite" {
            return store.apply_job_change(change, now).await;
        }
        self.write(store, Owned::Job(change.clone()), now)
            .await
            .map(|_| ())
    }

    async fn write(
        &self,
        store: &Store,
        write: Owned,
        now: Timestamp,
    ) -> Result<Recorded, StoreError> {
        let (reply, mut answer) = oneshot::channel();
        // Kept to write it alone if its writer stops without answering.
        let again = match &write {
            Owned::Result(result, change) => Owned::Result(result.clone(), change.clone()),
            Owned::Job(change) => Owned::Job(change.clone()),
        };
        self.lock_waiting().push(Waiting { write, now, reply });
        loop {
            let turn = self.turn.lock().await;
            match answer.try_recv() {
                Ok(outcome) => return outcome,
                // The writer that took it stopped without answering (it panicked): whether
                // it was applied is unknown, and applying it again says (a duplicate result
                // is acknowledged as one, a job change already applied is a conflict).
                Err(oneshot::error::TryRecvError::Closed) => {
                    drop(turn);
                    return again.write_alone(store, now).await;
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch: Vec<Waiting> = {
                let mut waiting = self.lock_waiting();
                let n = waiting.len().min(MAX_BATCH);
                waiting.drain(..n).collect()
            };
            // Written by its own task: a caller that goes away mid-write (its client hung up)
            // must not cancel the others' transaction.
            let written = tokio::spawn(write_batch(store.clone(), batch)).await;
            drop(turn);
            if let Err(error) = written {
                tracing::error!(%error, "a batch of writes could not be applied");
            }
        }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Applies `batch` in one transaction and answers each write; when the transaction fails as
/// a whole, applies each alone so that each gets its own outcome.
async fn write_batch(store: Store, batch: Vec<Waiting>) {
    if batch.is_empty() {
        return;
    }
    let writes: Vec<Write<'_>> = batch
        .iter()
        .map(|waiting| waiting.write.as_write(waiting.now))
        .collect();
    let outcomes = store.write_batch(&writes).await;
    drop(writes);
    match outcomes {
        Ok(outcomes) if outcomes.len() == batch.len() => {
            for (waiting, outcome) in batch.into_iter().zip(outcomes) {
                // The caller may have gone; its write is applied all the same.
                let _ = waiting.reply.send(outcome);
            }
        }
        Ok(_) | Err(_) => {
            if batch.len() > 1 {
                tracing::debug!(
                    n = batch.len(),
                    "a batch of writes failed as a whole; applying each alone"
                );
            }
            for waiting in batch {
                let outcome = waiting.write.write_alone(&store, waiting.now).await;
                let _ = waiting.reply.send(outcome);
            }
        }
    }
}
