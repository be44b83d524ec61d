//! Which replica runs the loops that must run once per deployment (lease expiry): the holder
//! of a PostgreSQL session-level advisory lock, taken on a connection of its own. PostgreSQL
//! releases the lock when that connection ends, so a replica that dies (`kill -9`, a lost
//! network) gives it up as soon as the database sees the connection go, and another replica
//! takes it at its next try. On SQLite one controller serves the file (`run` refuses a
//! second), so it always leads.

use super::{Pool, Store, StoreError};
use sqlx::Connection as _;

/// The advisory locks' first key: "toll" in ASCII, read as a big-endian number; the second
/// key is a hash of the database and schema, so that deployments (and tests) sharing one
/// PostgreSQL server or database in separate schemas each have their own leader. Any other
/// program using two-key advisory locks on the same database must avoid this first key.
pub const LEADER_LOCK_KEY: i32 = 0x746f_6c6c;

/// The advisory lock serializing replicas that record the report signing key at start, and
/// rotations of it.
pub(super) const REPORT_KEY_LOCK_KEY: i32 = LEADER_LOCK_KEY + 1;

/// The second key of this deployment's advisory locks, computed by the server.
macro_rules! deployment_key {
    () => {
        "hashtext(current_database() || '.' || current_schema())"
    };
}

/// Takes the report key lock ([`REPORT_KEY_LOCK_KEY`], bound as `$1`) until the transaction
/// ends.
pub(super) const REPORT_KEY_LOCK: &str =
    concat!("SELECT pg_advisory_xact_lock($1, ", deployment_key!(), ")");

/// Leadership held by this replica, until dropped or until [`Leadership::still_held`] finds
/// the connection holding it gone.
#[derive(Debug)]
pub struct Leadership {
    /// The connection holding the lock (PostgreSQL), out of the pool; `None` on SQLite.
    /// Dropping it closes its socket, and the server ends the session, releasing the lock.
    connection: Option<sqlx::PgConnection>,
}

impl Store {
    /// Takes the leadership if no other replica holds it: `Ok(None)` when another does.
    pub async fn try_lead(&self) -> Result<Option<Leadership>, StoreError> {
        match &self.pool {
            Pool::Sqlite(_) => Ok(Some(Leadership { connection: None })),
            Pool::Postgres(pool) => {
                let mut connection = pool.acquire().await?;
                const SQL: &str =
                    concat!("SELECT pg_try_advisory_lock($1, ", deployment_key!(), ")");
                let (taken,): (bool,) = sqlx::query_as(SQL)
                    .bind(LEADER_LOCK_KEY)
                    .fetch_one(&mut *connection)
                    .await?;
                // A connection that did not get the lock goes back to the pool holding
                // nothing; one that got it leaves the pool for as long as it leads.
                Ok(taken.then(|| Leadership {
                    connection: Some(connection.detach()),
                }))
            }
        }
    }
}

impl Leadership {
    /// Whether the lock is still held: the connection holding it still answers. A connection
    /// that failed is closed (never returned to the pool), and with it the lock is gone.
    pub async fn still_held(&mut self) -> bool {
        let Some(connection) = self.connection.as_mut() else {
            return true;
        };
        // A two-key advisory lock shows as objsubid 2, its first key as classid.
        let answered = sqlx::query_as::<_, (bool,)>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
             AND pid = pg_backend_pid() AND granted AND objsubid = 2 \
             AND classid::bigint = $1)",
        )
        .bind(i64::from(LEADER_LOCK_KEY))
        .fetch_one(&mut *connection)
        .await;
        match answered {
            Ok((held,)) => held,
            Err(error) => {
                tracing::warn!(%error, "the connection holding the leadership failed");
                if let Some(connection) = self.connection.take() {
                    // Closing ends the session, and with it the lock, on the server too.
                    let _ = connection.close().await;
                }
                false
            }
        }
    }
}
