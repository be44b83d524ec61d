//! Test support for any crate that runs a store on PostgreSQL: a freshly created schema per
//! test, so tests share one database without seeing each other's rows.

use super::StoreError;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

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
