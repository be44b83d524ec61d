//! Waking the other replicas (PostgreSQL `LISTEN`/`NOTIFY`): a replica that made work for
//! another (a run started, a job ended, a node resumed, a window ended) notifies this
//! deployment's channel, and every other replica's scheduler looks at its nodes' pending jobs
//! at once instead of at its next tick. Notifications are a shortcut, never the only way:
//! one lost while a listener reconnects is made up by the next tick.

use super::{Pool, Store, StoreError};
use sqlx::postgres::PgListener;

/// The deployment's channel name, computed by the server from the database and schema (as
/// the advisory locks' second key is), so that deployments sharing one server do not wake
/// each other.
const CHANNEL: &str = "SELECT 'tollgate_work_' || \
     replace(hashtext(current_database() || '.' || current_schema())::text, '-', 'm')";

/// Listens on the deployment's channel.
pub struct WorkListener {
    listener: PgListener,
}

impl std::fmt::Debug for WorkListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkListener").finish_non_exhaustive()
    }
}

impl WorkListener {
    /// The next notification's payload (the notifying replica's id). After a lost connection
    /// it reconnects first; notifications sent meanwhile are not seen.
    pub async fn next(&mut self) -> Result<String, StoreError> {
        Ok(self.listener.recv().await?.payload().to_owned())
    }
}

impl Store {
    /// The deployment's channel name; `None` on SQLite (one controller: nobody to wake).
    pub async fn work_channel(&self) -> Result<Option<String>, StoreError> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(None),
            Pool::Postgres(pool) => {
                let (channel,): (String,) = sqlx::query_as(CHANNEL).fetch_one(pool).await?;
                Ok(Some(channel))
            }
        }
    }

    /// Starts listening on `channel`, on a connection of its own; `None` on SQLite.
    pub async fn listen_for_work(&self, channel: &str) -> Result<Option<WorkListener>, StoreError> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(None),
            Pool::Postgres(pool) => {
                let mut listener = PgListener::connect_with(pool).await?;
                listener.listen(channel).await?;
                Ok(Some(WorkListener { listener }))
            }
        }
    }

    /// Notifies every listener on `channel`, with `payload` (this replica's id).
    pub async fn notify_work(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        if let Pool::Postgres(pool) = &self.pool {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(payload)
                .execute(pool)
                .await?;
        }
        Ok(())
    }
}
