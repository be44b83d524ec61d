//! Transactions that never leave a connection in an unknown state.
//!
//! A [`Tx`] runs `BEGIN` on a pooled connection it owns and hands the connection out for the
//! statements; [`Tx::commit`] ends it. Every other way out (a `?` that returns early, a
//! failed commit, a cancelled request) drops the `Tx`, which rolls the transaction back on a
//! task of its own and returns the connection to the pool only when that `ROLLBACK`
//! succeeded. When it fails, nobody knows what state the connection is in, so it is closed
//! (which ends any transaction: the server does it for PostgreSQL, the library for SQLite)
//! and the pool opens a fresh one for the next caller.
//!
//! Why not `sqlx::Transaction`: it counts nesting levels on the connection and, when a
//! rollback fails, keeps counting a transaction that is gone. On a full disk SQLite rolls a
//! failed `COMMIT` back by itself, sqlx's own `ROLLBACK` then fails ("no transaction is
//! active"), and the connection goes back to the pool believing it is inside a transaction:
//! every later `BEGIN IMMEDIATE` on it fails with "attempted to call begin_with at non-zero
//! transaction depth", for as long as the process lives.

use sqlx::pool::PoolConnection;
use sqlx::{Database, Executor, Pool};
use std::ops::{Deref, DerefMut};

/// An open transaction on a pooled connection; see the module docs.
pub(crate) struct Tx<DB: Database> {
    /// Present until the `Tx` is dropped.
    conn: Option<PoolConnection<DB>>,
    /// True from before `BEGIN` is sent until `COMMIT` succeeded: a `BEGIN` that failed or
    /// was cancelled half-way leaves the connection as unknown as a failed statement does.
    open: bool,
    /// Ends an abandoned transaction ([`abandon`] for this backend, chosen where the
    /// backend's statement types are known).
    abandon: fn(PoolConnection<DB>),
}

/// What `Deref` says when the connection is missing, which only `Drop` causes.
const PRESENT: &str = "a Tx holds its connection until it is dropped";

impl<DB: Database> Tx<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// Takes a connection from `pool` and runs `begin` (`BEGIN`, `BEGIN IMMEDIATE`, ...) on it.
    pub(crate) async fn begin(pool: &Pool<DB>, begin: &'static str) -> Result<Self, sqlx::Error> {
        let mut tx = Tx {
            conn: Some(pool.acquire().await?),
            open: true,
            abandon: abandon::<DB>,
        };
        sqlx::raw_sql(begin).execute(&mut *tx).await?;
        Ok(tx)
    }

    /// Commits. On error the transaction's fate is unknown (SQLite may have rolled it back by
    /// itself, a PostgreSQL connection may be gone); dropping `self` then sorts it out.
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("COMMIT").execute(&mut *self).await?;
        self.open = false;
        Ok(())
    }
}

impl<DB: Database> Deref for Tx<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        self.conn.as_ref().expect(PRESENT)
    }
}

impl<DB: Database> DerefMut for Tx<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        self.conn.as_mut().expect(PRESENT)
    }
}

impl<DB: Database> Drop for Tx<DB> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !self.open {
            return; // committed: back to the pool as it is
        }
        (self.abandon)(conn);
    }
}

/// Rolls back the transaction open on `conn` on a task of its own; the connection goes back
/// to the pool only if that worked, and is closed otherwise.
fn abandon<DB: Database>(mut conn: PoolConnection<DB>)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // No runtime to roll back on (the process is ending): just never reuse it.
        conn.close_on_drop();
        return;
    };
    runtime.spawn(async move {
        if let Err(error) = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await {
            tracing::debug!(
                %error,
                "rolling back an abandoned transaction failed; closing its connection"
            );
            conn.close_on_drop();
        }
    });
}
