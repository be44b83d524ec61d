//! Opening a store: which backend a URL names, each backend's pool settings, migrations, and
//! the one place where the backends begin transactions differently.

use super::tx::Tx;
use super::{Pool, Store, StoreError};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

/// How long a SQLite writer waits for another writer before giving up. Writes are short
/// (a handful of rows), so waiting this long means something is stuck.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// SQLite serializes writers; a few connections serve concurrent readers (WAL) without
/// queueing every gRPC call behind one connection: two per core, at least 4 and at most 8.
/// Each connection is a thread of its own (sqlx), with its own page cache and statements and
/// glibc's malloc arena: on two cores 8 connections peaked 16–39 MiB higher than 4 at 1,000
/// agents (`fleet-bench`, BENCHMARKS.md) and answered no faster.
fn sqlite_max_connections() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    u32::try_from(cores.saturating_mul(2))
        .unwrap_or(u32::MAX)
        .clamp(4, 8)
}
/// Enough for the scheduler, the watchdog and concurrent gRPC calls of one replica.
const POSTGRES_MAX_CONNECTIONS: u32 = 16;

// The migrations are embedded at compile time. `include_str!` makes the compiler track the
// files, so editing a migration rebuilds the crate and re-runs `migrate!` (which on stable
// Rust does not tell Cargo about the folder itself).
const _: &str = include_str!("../../../migrations/sqlite/0001_init.sql");
const _: &str = include_str!("../../../migrations/postgres/0001_init.sql");
const _: &str = include_str!("../../../migrations/sqlite/0004_waivers_audit.sql");
const _: &str = include_str!("../../../migrations/postgres/0004_waivers_audit.sql");
const _: &str = include_str!("../../../migrations/sqlite/0005_result_digests.sql");
const _: &str = include_str!("../../../migrations/postgres/0005_result_digests.sql");
const _: &str = include_str!("../../../migrations/sqlite/0012_list_pages.sql");
const _: &str = include_str!("../../../migrations/postgres/0012_list_pages.sql");
const _: &str = include_str!("../../../migrations/sqlite/0013_report_keys.sql");
const _: &str = include_str!("../../../migrations/postgres/0013_report_keys.sql");
const _: &str = include_str!("../../../migrations/sqlite/0014_report_key_rotation.sql");
const _: &str = include_str!("../../../migrations/postgres/0014_report_key_rotation.sql");
const _: &str = include_str!("../../../migrations/sqlite/0018_node_heartbeats.sql");
const _: &str = include_str!("../../../migrations/postgres/0018_node_heartbeats.sql");
const _: &str = include_str!("../../../migrations/sqlite/0019_release_plan_of_record.sql");
const _: &str = include_str!("../../../migrations/postgres/0019_release_plan_of_record.sql");
const _: &str = include_str!("../../../migrations/sqlite/0020_issues.sql");
const _: &str = include_str!("../../../migrations/postgres/0020_issues.sql");
const _: &str = include_str!("../../../migrations/sqlite/0021_issue_links.sql");
const _: &str = include_str!("../../../migrations/postgres/0021_issue_links.sql");
const _: &str = include_str!("../../../migrations/sqlite/0022_notes.sql");
const _: &str = include_str!("../../../migrations/postgres/0022_notes.sql");
const _: &str = include_str!("../../../migrations/sqlite/0023_rollouts.sql");
const _: &str = include_str!("../../../migrations/postgres/0023_rollouts.sql");
const _: &str = include_str!("../../../migrations/sqlite/0024_issue_webhook.sql");
const _: &str = include_str!("../../../migrations/postgres/0024_issue_webhook.sql");
const _: &str = include_str!("../../../migrations/sqlite/0025_note_done.sql");
const _: &str = include_str!("../../../migrations/postgres/0025_note_done.sql");
const _: &str = include_str!("../../../migrations/sqlite/0026_fleet_events.sql");
const _: &str = include_str!("../../../migrations/postgres/0026_fleet_events.sql");
const _: &str = include_str!("../../../migrations/sqlite/0027_rollout_node_components.sql");
const _: &str = include_str!("../../../migrations/postgres/0027_rollout_node_components.sql");

/// Connects to `url` and applies the migrations.
pub(super) async fn connect(url: &str) -> Result<Store, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(POSTGRES_MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(Store::new(Pool::Postgres(pool)))
    } else if let Some(path) = sqlite_path(url) {
        let pool = sqlite_pool(path, url).await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(Store::new(Pool::Sqlite(pool)))
    } else {
        Err(StoreError::UnsupportedUrl(redact(url)))
    }
}

/// What follows the scheme of a SQLite URL (a path, `:memory:`, options after `?`); `None`
/// for any other URL.
fn sqlite_path(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
}

/// The database file a SQLite URL names; `None` for an in-memory database and any other URL.
pub fn sqlite_file(url: &str) -> Option<&str> {
    let file = sqlite_path(url)?
        .split(['?', '#'])
        .next()
        .unwrap_or_default();
    (!file.is_empty() && file != ":memory:").then_some(file)
}

/// A pool on the SQLite file at `path` (`:memory:` for a private in-memory database).
async fn sqlite_pool(path: &str, url: &str) -> Result<SqlitePool, StoreError> {
    let file = path.split(['?', '#']).next().unwrap_or_default();
    if file.is_empty() {
        return Err(StoreError::UnsupportedUrl(redact(url)));
    }
    if file == ":memory:" {
        // Every connection to an in-memory database would see its own empty database, and
        // closing the last one drops it: keep exactly one, forever.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(SqliteConnectOptions::from_str(url)?.foreign_keys(true))
            .await?;
        return Ok(pool);
    }
    let options = SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL, not NORMAL: an acknowledged result must survive a power cut, not only a crash.
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    if let Some(parent) = std::path::Path::new(file).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|err| {
            StoreError::Database(sqlx::Error::Configuration(
                format!(
                    "creating the directory {} for {file}: {err}",
                    parent.display()
                )
                .into(),
            ))
        })?;
    }
    create_private(file)?;
    let pool = SqlitePoolOptions::new()
        .max_connections(sqlite_max_connections())
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Creates the database file readable by its owner only (0600) when it does not exist yet:
/// it holds node tokens' hashes and every result. SQLite gives its `-wal` and `-shm` files the
/// database file's mode, so they follow.
fn create_private(file: &str) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(file) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(StoreError::Database(sqlx::Error::Configuration(
            format!("creating the database file {file}: {error}").into(),
        ))),
    }
}

/// The URL with its password replaced, for error messages and logs.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        _ => url.to_owned(),
    }
}

/// How each backend begins its transactions. Both return a [`Tx`], which ends in a commit or
/// in a rollback and never leaves a connection in an unknown state in the pool.
pub(super) trait Begin {
    /// The backend.
    type Db: sqlx::Database;

    /// A transaction that will write. SQLite takes the write lock up front (`BEGIN
    /// IMMEDIATE`): a deferred transaction that reads first and writes later fails with
    /// "database is locked" instead of waiting when another writer got in between.
    async fn begin_write(&self) -> Result<Tx<Self::Db>, sqlx::Error>;

    /// A read-only transaction whose statements all see one snapshot, so that reading runs,
    /// then jobs, then results gives one consistent picture.
    async fn begin_snapshot(&self) -> Result<Tx<Self::Db>, sqlx::Error>;
}

impl Begin for SqlitePool {
    type Db = Sqlite;

    async fn begin_write(&self) -> Result<Tx<Sqlite>, sqlx::Error> {
        Tx::begin(self, "BEGIN IMMEDIATE").await
    }

    async fn begin_snapshot(&self) -> Result<Tx<Sqlite>, sqlx::Error> {
        // In WAL mode a deferred transaction reads one snapshot from its first read on.
        Tx::begin(self, "BEGIN").await
    }
}

impl Begin for PgPool {
    type Db = Postgres;

    async fn begin_write(&self) -> Result<Tx<Postgres>, sqlx::Error> {
        // Read committed plus row locks taken in one order (run, then jobs, then node) is
        // what every multi-row change relies on; see `apply_job_change!` in `store/mod.rs`.
        Tx::begin(self, "BEGIN").await
    }

    async fn begin_snapshot(&self) -> Result<Tx<Postgres>, sqlx::Error> {
        Tx::begin(self, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await
    }
}
