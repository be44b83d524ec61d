//! Whether the database accepts writes right now, as the store last saw it.
//!
//! Every write method of the store reports its outcome here (`writing!` in `store/mod.rs`):
//! an error that says the database itself refused or failed ([`unavailable`]: disk full,
//! read-only, connection lost, pool exhausted) marks writes refused at once; once refused,
//! writes are accepted again when they have succeeded for [`WRITES_CONFIRMED_AFTER`] with
//! none refused in between. One success proves little: on a full disk SQLite still takes a
//! small write that fits in pages it holds already (a recycled write-ahead log, free pages),
//! while the heartbeats and results beside it are refused, and taking such a write for
//! recovery flapped the controller's health and gave every lease a fresh grace each time. Any
//! other error (a name taken, a row missing, a state changed
//! concurrently, a bug) says nothing about the database and changes nothing. The controller watches this to set
//! its health service and to give leases a fresh grace once writes work again.

use super::StoreError;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long writes must keep succeeding, none refused, before refused writes count as
/// accepted again. The controller probes a write every
/// `health::WRITE_PROBE_INTERVAL` (no shorter) while they are refused, so recovery is
/// noticed by the second probe that succeeds even when nothing else writes.
pub const WRITES_CONFIRMED_AFTER: Duration = Duration::from_secs(2);

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
    /// While writes are refused: when the successes since the last refusal began.
    succeeding_since: std::sync::Mutex<Option<Instant>>,
    /// [`WRITES_CONFIRMED_AFTER`], shorter in this module's tests.
    confirmed_after: Duration,
}

impl Default for WriteHealth {
    fn default() -> Self {
        Self::confirmed_after(WRITES_CONFIRMED_AFTER)
    }
}

impl WriteHealth {
    fn confirmed_after(confirmed_after: Duration) -> Self {
        Self {
            state: watch::channel(Writes::Accepted).0,
            succeeding_since: std::sync::Mutex::default(),
            confirmed_after,
        }
    }

    /// Takes in the outcome of one write.
    pub(crate) fn observe<T>(&self, outcome: &Result<T, StoreError>) {
        let refused = match outcome {
            // The common case, writes accepted and this one too: nothing to take a lock for.
            Ok(_) if self.state.borrow().accepted() => return,
            Ok(_) => None,
            Err(err) if refused_by_database(err) => Some(err.to_string()),
            Err(_) => return,
        };
        let mut since = self
            .succeeding_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = match refused {
            Some(error) => {
                *since = None;
                Writes::Refused(error)
            }
            None => {
                let now = Instant::now();
                let began = *since.get_or_insert(now);
                if now.duration_since(began) < self.confirmed_after {
                    return;
                }
                *since = None;
                Writes::Accepted
            }
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

        // Accepted again once writes kept succeeding for the confirmation time.
        health.observe(&Ok(()));
        assert!(!seen.has_changed().expect("sender alive"));
        std::thread::sleep(WRITES_CONFIRMED_AFTER);
        health.observe(&Ok(()));
        assert!(seen.has_changed().expect("sender alive"));
        assert_eq!(*seen.borrow_and_update(), Writes::Accepted);
    }

    #[test]
    fn refused_writes_are_accepted_again_only_after_succeeding_for_a_while_none_refused() {
        let confirmed_after = Duration::from_millis(200);
        let health = WriteHealth::confirmed_after(confirmed_after);
        let seen = health.subscribe();
        let refused = || StoreError::Database(sqlx::Error::PoolTimedOut);
        health.observe::<()>(&Err(refused()));
        assert!(!seen.borrow().accepted());
        // A success, then one refused within the window: the successes start over.
        health.observe(&Ok(()));
        std::thread::sleep(confirmed_after / 2);
        health.observe::<()>(&Err(refused()));
        std::thread::sleep(confirmed_after / 2 + Duration::from_millis(20));
        health.observe(&Ok(()));
        assert!(
            !seen.borrow().accepted(),
            "a refusal in between restarts the count"
        );
        // Successes only, for the whole window: accepted.
        std::thread::sleep(confirmed_after / 2);
        health.observe(&Ok(()));
        assert!(!seen.borrow().accepted(), "not yet the whole window");
        std::thread::sleep(confirmed_after / 2 + Duration::from_millis(20));
        health.observe(&Ok(()));
        assert!(seen.borrow().accepted());
        // Refused again at the first refusal.
        health.observe::<()>(&Err(refused()));
        assert!(!seen.borrow().accepted());
    }
}
