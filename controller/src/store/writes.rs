//! Whether the database accepts writes right now, as the store last saw it.
//!
//! Every write method of the store reports its outcome here (`writing!` in `store/mod.rs`):
//! an error that says the database itself refused or failed (disk full, read-only, connection
//! lost, pool exhausted) marks writes refused; any write that succeeds marks them accepted.
//! An error about the request (a name taken, a row missing, a state changed concurrently)
//! says nothing about the database and changes nothing. The controller watches this to set
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
    let StoreError::Database(err) = err else {
        return false;
    };
    match err {
        sqlx::Error::Database(db) => matches!(db.kind(), sqlx::error::ErrorKind::Other),
        // A value that does not fit a column, a row that does not decode: the request's
        // or the code's problem, not the database's.
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_)
        | sqlx::Error::InvalidArgument(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::RowNotFound => false,
        _ => true,
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
