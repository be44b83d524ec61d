//! Whether the database accepts writes right now, as the store last saw it.
//!
//! Every write method of the store reports its outcome here (`writing!` in `store/mod.rs`):
//! an error that says the database itself refused or failed ([`unavailable`]: disk full,
//! read-only, connection lost, pool exhausted) marks writes refused; any write that succeeds
//! marks them accepted. Any other error (a name taken, a row missing, a state changed
//! concurrently, a bug) says nothing about the database and changes nothing. The controller watches this to set
//! its health service and to give leases a fresh grace once writes work again.

use super::StoreError;
use tokio::sync::watch;

/// The last thing the store learnt about writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Writes {
    /// The last write that reached the database succeeded (or none was tried yet).
    Accepted,
    /// The last write failed because of the database; the error, for logs.
    Refused(String),
}

impl Writes {
    /// Whether writes are accepted.
    pub fn accepted(&self) -> bool {
        matches!(self, Self::Accepted)
    }
}

/// Shared by every clone of a store.
#[derive(Debug)]
pub(crate) struct WriteHealth {
    state: watch::Sender<Writes>,
}

impl Default for WriteHealth {
    fn default() -> Self {
        Self {
            state: watch::channel(Writes::Accepted).0,
        }
    }
}

impl WriteHealth {
    /// Takes in the outcome of one write.
    pub(crate) fn observe<T>(&self, outcome: &Result<T, StoreError>) {
        let next = match outcome {
            Ok(_) => Writes::Accepted,
            Err(err) if refused_by_database(err) => Writes::Refused(err.to_string()),
            Err(_) => return,
        };
        // Only a change wakes the watchers, so a steady state costs nothing.
        self.state.send_if_modified(|state| {
            let changed = state.accepted() != next.accepted();
            if changed {
                *state = next;
            }
            changed
        });
    }

    /// A receiver of every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Writes> {
        self.state.subscribe()
    }
}

/// Whether `err` says the database could not write, rather than that the request was wrong.
fn refused_by_database(err: &StoreError) -> bool {
    matches!(err, StoreError::Database(err) if unavailable(err))
}

/// Whether the database (not the request, not the code) failed: the connection or the pool is
/// gone or exhausted, the disk is full or failing, the database is read-only or refuses this
/// user's writes, or a lock did not come free in time. Retrying later is the right reaction.
pub(crate) fn unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed
        | sqlx::Error::InvalidSavePointStatement => true,
        sqlx::Error::Database(db) => {
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // The primary result code is the low byte of the extended one.
                let primary = db
                    .code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .map(|code| code & 0xff);
                matches!(
                    primary,
                    Some(
                        5  // SQLITE_BUSY
                        | 6  // SQLITE_LOCKED
                        | 7  // SQLITE_NOMEM
                        | 8  // SQLITE_READONLY
                        | 10 // SQLITE_IOERR
                        | 13 // SQLITE_FULL
                        | 14 // SQLITE_CANTOPEN
                        | 15 // SQLITE_PROTOCOL
                    )
                )
            } else {
                // PostgreSQL SQLSTATE classes: 08 connection exception, 53 insufficient
                // resources (disk full, out of memory, too many connections), 57 operator
                // intervention (shutdown, terminated backend), 58 system error (I/O); and
                // 25006 read-only transaction, 42501 insufficient privilege.
                db.code().is_some_and(|code| {
                    ["08", "53", "57", "58"]
                        .iter()
                        .any(|class| code.starts_with(class))
                        || code == "25006"
                        || code == "42501"
                })
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_of_the_database_itself_refuse_writes() {
        let health = WriteHealth::default();
        let mut seen = health.subscribe();
        health.observe::<()>(&Err(StoreError::Conflict {
            what: "job j1".into(),
            detail: "expected state running, found passed".into(),
        }));
        health.observe::<()>(&Err(StoreError::AlreadyExists {
            what: "release r550".into(),
        }));
        assert!(!seen.has_changed().expect("sender alive"));
        assert!(seen.borrow().accepted());

        health.observe::<()>(&Err(StoreError::Database(sqlx::Error::PoolTimedOut)));
        assert!(seen.has_changed().expect("sender alive"));
        assert!(!seen.borrow_and_update().accepted());
        // Refused again: no second wake-up.
        health.observe::<()>(&Err(StoreError::Database(sqlx::Error::PoolClosed)));
        assert!(!seen.has_changed().expect("sender alive"));

        health.observe(&Ok(()));
        assert!(seen.has_changed().expect("sender alive"));
        assert_eq!(*seen.borrow_and_update(), Writes::Accepted);
    }
}
