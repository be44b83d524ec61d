//! Group commit of step results on SQLite. SQLite has one writer and every commit waits for
//! its fsync, so results recorded one transaction each queue behind each other's fsyncs:
//! with a thousand agents reporting at once most of a result's time was spent waiting for
//! the write lock. Here a result that arrives while another batch commits waits, and the
//! next writer records every waiting result in one transaction ([`Store::record_results`]:
//! a savepoint each, so each keeps its own outcome). Nothing waits for company: a lone
//! result is written at once.
//!
//! PostgreSQL commits concurrent transactions in parallel (row locks, not one write lock),
//! so there results are recorded one transaction each, as before.
//!
//! **Invariant:** a result is acknowledged only after the transaction that holds it
//! committed; a batch that fails as a whole is recorded again one result at a time, so each
//! gets its own error.

use crate::store::{Recorded, Store, StoreError};
use tokio::sync::oneshot;
use tollgate_domain::Timestamp;
use tollgate_domain::job::ResultChange;
use tollgate_domain::result::StepResult;

/// The most results one transaction takes.
const MAX_BATCH: usize = 256;

/// A result waiting for a writer.
struct Waiting {
    result: StepResult,
    change: ResultChange,
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
    /// [`Store::record_result`], batched with the results that arrive meanwhile on SQLite.
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
        let (reply, mut answer) = oneshot::channel();
        self.lock_waiting().push(Waiting {
            result: result.clone(),
            change: change.clone(),
            now,
            reply,
        });
        loop {
            let turn = self.turn.lock().await;
            match answer.try_recv() {
                Ok(outcome) => return outcome,
                // The writer that took it stopped without answering (it panicked): whether
                // it was stored is unknown, and recording it again says (a duplicate is
                // acknowledged as one).
                Err(oneshot::error::TryRecvError::Closed) => {
                    drop(turn);
                    return store.record_result(result, change, now).await;
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
            let written = tokio::spawn(write(store.clone(), batch)).await;
            drop(turn);
            if let Err(error) = written {
                tracing::error!(%error, "a batch of results could not be written");
            }
        }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Writes `batch` in one transaction and answers each result; when the transaction fails as
/// a whole, records each result alone so that each gets its own outcome.
async fn write(store: Store, batch: Vec<Waiting>) {
    if batch.is_empty() {
        return;
    }
    let items: Vec<(&StepResult, &ResultChange, Timestamp)> = batch
        .iter()
        .map(|waiting| (&waiting.result, &waiting.change, waiting.now))
        .collect();
    let outcomes = store.record_results(&items).await;
    drop(items);
    match outcomes {
        Ok(outcomes) if outcomes.len() == batch.len() => {
            for (waiting, outcome) in batch.into_iter().zip(outcomes) {
                // The caller may have gone; its result is stored all the same.
                let _ = waiting.reply.send(outcome);
            }
        }
        Ok(_) | Err(_) => {
            if batch.len() > 1 {
                tracing::debug!(
                    n = batch.len(),
                    "a batch of results failed as a whole; recording each alone"
                );
            }
            for waiting in batch {
                let outcome = store
                    .record_result(&waiting.result, &waiting.change, waiting.now)
                    .await;
                let _ = waiting.reply.send(outcome);
            }
        }
    }
}
