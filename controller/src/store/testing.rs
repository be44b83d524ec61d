//! Test support for any crate that runs a store on PostgreSQL: a freshly created schema per
//! test, so tests share one database without seeing each other's rows.

use super::{Store, StoreError};
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tollgate_domain::Timestamp;
use tollgate_domain::job::ResultChange;
use tollgate_domain::result::StepResult;

/// The environment variable naming the PostgreSQL database tests may use.
pub const DATABASE_URL_ENV: &str = "TOLLGATE_TEST_DATABASE_URL";
/// Set to `1` (as CI does) to fail instead of skipping when [`DATABASE_URL_ENV`] is unset.
pub const REQUIRE_POSTGRES_ENV: &str = "TOLLGATE_REQUIRE_POSTGRES";
/// What a skipped PostgreSQL test says.
pub const SKIPPED: &str = "skipped: TOLLGATE_TEST_DATABASE_URL not set";

/// Every schema this module creates starts with this, so a person can find and drop leftovers.
const SCHEMA_PREFIX: &str = "tollgate_test_";

/// The PostgreSQL URL tests should use: `Some(url)` when [`DATABASE_URL_ENV`] is set; `None`
/// after printing [`SKIPPED`] when it is not.
///
/// # Panics
///
/// When the URL is unset and [`REQUIRE_POSTGRES_ENV`] is `1`: CI must not skip silently.
pub fn postgres_url_or_skip() -> Option<String> {
    match std::env::var(DATABASE_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var(REQUIRE_POSTGRES_ENV).is_ok_and(|value| value == "1") {
                panic!("{SKIPPED} (and {REQUIRE_POSTGRES_ENV}=1)");
            }
            println!("{SKIPPED}");
            None
        }
    }
}

/// Creates a new, empty, uniquely named schema in the database at `base` and returns a URL
/// whose connections use it as their `search_path`, so a [`super::Store`] connected to it
/// creates its tables there.
pub async fn fresh_postgres_url(base: &str) -> Result<String, StoreError> {
    let schema = format!("{SCHEMA_PREFIX}{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(base).await?;
    // The name is ours (prefix and hex digits), so building the statement is safe.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    // libpq's `options` parameter, URL-encoded: "-c search_path=<schema>".
    let separator = if base.contains('?') { '&' } else { '?' };
    Ok(format!(
        "{base}{separator}options=-c%20search_path%3D{schema}"
    ))
}

/// Drops the schema that `url` (from [`fresh_postgres_url`]) uses, with everything in it.
/// Close every store on it first.
pub async fn drop_postgres_schema(url: &str) -> Result<(), StoreError> {
    let marker = "options=-c%20search_path%3D";
    let Some(start) = url.rfind(marker) else {
        return Err(StoreError::UnsupportedUrl(super::connect::redact(url)));
    };
    let schema: String = url[start + marker.len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if !schema.starts_with(SCHEMA_PREFIX) {
        return Err(StoreError::UnsupportedUrl(super::connect::redact(url)));
    }
    let base = &url[..start - 1];
    let mut conn = PgConnection::connect(base).await?;
    // Checked above: the prefix and then only letters, digits and '_'.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}

/// Set to `1` (as CI does where it runs as root) to fail instead of skipping when a tmpfs
/// cannot be mounted.
pub const REQUIRE_TMPFS_ENV: &str = "TOLLGATE_REQUIRE_TMPFS";

/// A tmpfs of `size_kib` KiB ([`Tmpfs::mount`]), or `None` after printing `skipped: <why>`.
///
/// # Panics
///
/// When it cannot be mounted and [`REQUIRE_TMPFS_ENV`] is `1`: CI must not skip silently.
pub fn tmpfs_or_skip(size_kib: u64) -> Option<Tmpfs> {
    match Tmpfs::mount(size_kib) {
        Ok(disk) => Some(disk),
        Err(why) => {
            if std::env::var(REQUIRE_TMPFS_ENV).is_ok_and(|value| value == "1") {
                panic!("{why} (and {REQUIRE_TMPFS_ENV}=1)");
            }
            println!("skipped: {why}");
            None
        }
    }
}

/// A small tmpfs mounted on a fresh temporary directory, unmounted on drop: a disk that tests
/// can fill and free. Mounting needs root and `mount`; [`Tmpfs::mount`] says why it could
/// not, so a test can print that it was skipped and why.
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_kib` KiB, or explains why it could not.
    pub fn mount(size_kib: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|err| format!("creating a mount point: {err}"))?;
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_kib}k,mode=0700"))
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .map_err(|err| format!("running mount: {err}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}; these tests need root and mount",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes `name` in the mount until the file system is full; returns its size in bytes.
    pub fn fill(&self, name: &str) -> std::io::Result<u64> {
        use std::io::Write as _;
        let mut file = std::fs::File::create(self.path().join(name))?;
        let chunk = vec![0xA5_u8; 16 * 1024];
        let mut written = 0_u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(err) if err.raw_os_error() == Some(28) => break, // ENOSPC
                Err(err) => return Err(err),
            }
        }
        // Smaller writes take the last partial page, so the disk is full to the byte.
        loop {
            match file.write(&[0xA5_u8]) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(err) if err.raw_os_error() == Some(28) => break,
                Err(err) => return Err(err),
            }
        }
        Ok(written)
    }

    /// Removes `name` (written by [`Tmpfs::fill`]), giving its space back.
    pub fn free(&self, name: &str) -> std::io::Result<()> {
        std::fs::remove_file(self.path().join(name))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so that a file still open somewhere does not keep the mount (and the test's
        // temporary directory) around.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Stores `results`, each with its job's decided change, many to a transaction: a run of
/// thousands of nodes seeded in seconds. Each result is stored as `Store::record_result`
/// stores it and each change applied with the same compare-and-set, but without checking
/// that the job has the results the change was decided from; results an agent sends go
/// through `record_result`.
pub async fn seed_results(
    store: &Store,
    results: &[(StepResult, ResultChange)],
    now: Timestamp,
) -> Result<(), StoreError> {
    store.seed_results(results, now).await
}
