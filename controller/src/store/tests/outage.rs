//! Store tests of a database that refuses writes for a while (a full disk for SQLite, a
//! revoked privilege or killed connections for PostgreSQL): once it accepts them again, every
//! write succeeds without reconnecting the store by hand, and nothing half-written stays.

use super::*;

/// Big enough that a few results outgrow whatever the WAL file already holds.
const LOG_TAIL_BYTES: usize = 256 * 1024;

/// A node, a release, a plan and a run whose one job is running: what results attach to.
async fn running_job(store: &Store) -> JobId {
    add_release(store).await;
    let plan = two_step_plan("gpu-qual");
    add_plan(store, &plan).await;
    add_node(store, "n1").await;
    let (_, jobs) = start_run(store, "run-1", &plan, &["n1"], 10).await;
    make_running(store, &jobs[0].id).await;
    jobs[0].id.clone()
}

/// A result of step 0 whose log tail is large, so that storing it needs fresh pages.
fn big_result(job: &JobId, attempt: u32) -> StepResult {
    StepResult {
        log_tail: format!("{attempt:>8}").repeat(LOG_TAIL_BYTES / 8),
        ..result_of(job, 0, attempt, Outcome::Passed)
    }
}

/// Stores results until one is refused (at most `limit` tries); returns the attempts that
/// were acknowledged before that and the refusal.
async fn write_until_refused(store: &Store, job: &JobId, limit: u32) -> (Vec<u32>, StoreError) {
    let mut stored = Vec::new();
    for attempt in 1..=limit {
        match store
            .record_test_result(&big_result(job, attempt), None, at(40))
            .await
        {
            Ok(Recorded::Inserted) => stored.push(attempt),
            Ok(Recorded::Duplicate) => panic!("attempt {attempt} was new"),
            Err(err) => return (stored, err),
        }
    }
    panic!("the database accepted {limit} large results; the fault did not take");
}

/// After the fault is gone: every kind of write succeeds on every pooled connection, and the
/// results acknowledged before, during and after the outage are stored exactly once.
async fn writes_succeed_again(store: &Store, job: &JobId, acknowledged: &[u32]) {
    let mut acknowledged = acknowledged.to_vec();
    // More writes than the pool has connections, so that a connection left broken by the
    // outage would be handed out at least once.
    for attempt in 1000..1020 {
        let result = result_of(job, 1, attempt, Outcome::Passed);
        let recorded = store
            .record_test_result(&result, None, at(50))
            .await
            .unwrap_or_else(|err| panic!("result {attempt} after the outage: {err}"));
        assert_eq!(recorded, Recorded::Inserted);
        store
            .touch_node(&NodeId::from("n1"), at(50))
            .await
            .unwrap_or_else(|err| panic!("heartbeat after the outage: {err}"));
        acknowledged.push(attempt);
    }
    // A node health change after the outage (audited, so a transaction of two writes).
    set_health(store, "n1", Health::Good, Health::Suspect).await;
    let mut release = release();
    release.id = ReleaseId::from("r560");
    store
        .create_release(&release, &setup_note())
        .await
        .expect("a release after the outage");

    let mut stored: Vec<u32> = store
        .results_of_job(job)
        .await
        .expect("results after the outage")
        .iter()
        .map(|result| result.attempt)
        .collect();
    stored.sort_unstable();
    acknowledged.sort_unstable();
    assert_eq!(stored, acknowledged, "every acknowledged result, once");
}

#[tokio::test]
async fn sqlite_writes_recover_once_a_full_disk_has_space_again() {
    let Some(disk) = testing::tmpfs_or_skip(8 * 1024) else {
        return;
    };
    let url = format!("sqlite://{}/tollgate.db", disk.path().display());
    let store = Store::connect(&url).await.expect("sqlite store on tmpfs");
    let job = running_job(&store).await;

    let writes = store.watch_writes();
    assert!(writes.borrow().accepted());

    disk.fill("filler").expect("filling the disk");
    let (acknowledged, refusal) = write_until_refused(&store, &job, 64).await;
    assert!(
        refusal.to_string().contains("full"),
        "a full disk is named: {refusal}"
    );
    assert!(refusal.is_unavailable(), "retry later: {refusal:?}");
    assert!(
        matches!(&*writes.borrow(), Writes::Refused(why) if why.contains("full")),
        "the store says writes are refused: {:?}",
        *writes.borrow()
    );
    // The disk still full, SQLite may take a small write (into pages it holds already) while
    // larger ones are refused: that is no recovery.
    let mut small_ones = 0;
    for attempt in 0..20 {
        if store.probe_write().await.is_ok() {
            small_ones += 1;
            assert!(
                !writes.borrow().accepted(),
                "one small write taken counted as a recovery"
            );
        }
        let big = store
            .record_test_result(&big_result(&job, 100 + attempt), None, at(40))
            .await;
        assert!(big.is_err(), "a large write fits on the full disk");
        assert!(
            !writes.borrow().accepted(),
            "writes counted accepted while large ones are refused ({small_ones} small ones taken)"
        );
    }
    eprintln!("small writes taken on the full disk: {small_ones} of 20");
    disk.free("filler").expect("freeing the disk");

    writes_succeed_again(&store, &job, &acknowledged).await;
    // Accepted once writes have kept succeeding, none refused, for the confirmation time.
    tokio::time::sleep(crate::store::WRITES_CONFIRMED_AFTER).await;
    store.probe_write().await.expect("a probe after the outage");
    assert_eq!(*writes.borrow(), Writes::Accepted);
    store.close().await;
}

/// A PostgreSQL database of its own (a test may set it read-only without touching anyone
/// else's), dropped at the end.
struct OwnDatabase {
    base: String,
    name: String,
}

impl OwnDatabase {
    async fn create(base: &str) -> OwnDatabase {
        let name = format!("tollgate_test_{}", uuid::Uuid::new_v4().simple());
        Self::admin(base, &format!("CREATE DATABASE {name}")).await;
        OwnDatabase {
            base: base.to_owned(),
            name,
        }
    }

    /// `base` with its database replaced by this one.
    fn url(&self) -> String {
        let (without_query, query) = match self.base.split_once('?') {
            Some((url, query)) => (url, format!("?{query}")),
            None => (self.base.as_str(), String::new()),
        };
        let server = without_query
            .rsplit_once('/')
            .map_or(without_query, |(server, _)| server);
        format!("{server}/{}{query}", self.name)
    }

    /// Runs `sql` (built from our own generated name only) on the base database.
    async fn admin(base: &str, sql: &str) {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(base)
            .await
            .expect("connect to the base database");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
        conn.close().await.expect("close");
    }

    /// Sets whether new sessions are read-only, then ends every session of the database, as a
    /// failover to a read-only replica (and back) does.
    async fn set_read_only(&self, read_only: bool) {
        let setting = if read_only {
            "SET default_transaction_read_only = on"
        } else {
            "RESET default_transaction_read_only"
        };
        let name = &self.name;
        Self::admin(&self.base, &format!("ALTER DATABASE {name} {setting}")).await;
        Self::admin(
            &self.base,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            ),
        )
        .await;
    }

    async fn drop(self) {
        let name = &self.name;
        Self::admin(&self.base, &format!("DROP DATABASE {name} WITH (FORCE)")).await;
    }
}

#[tokio::test]
async fn postgres_writes_recover_once_the_database_accepts_them_again() {
    let Some(base) = testing::postgres_url_or_skip() else {
        return;
    };
    let database = OwnDatabase::create(&base).await;
    let store = Store::connect(&database.url())
        .await
        .expect("postgres store");
    let job = running_job(&store).await;
    let writes = store.watch_writes();

    database.set_read_only(true).await;
    let (acknowledged, refusal) = write_until_refused(&store, &job, 8).await;
    assert!(refusal.is_unavailable(), "{refusal:?}");
    assert!(
        matches!(&*writes.borrow(), Writes::Refused(_)),
        "the store says writes are refused: {:?}",
        *writes.borrow()
    );
    // Reads still work meanwhile.
    store.get_job(&job).await.expect("read while read-only");
    assert!(
        store.probe_write().await.is_err(),
        "the probe is refused too"
    );

    database.set_read_only(false).await;
    store
        .probe_write()
        .await
        .expect("the probe after the outage");
    tokio::time::sleep(crate::store::WRITES_CONFIRMED_AFTER).await;
    store
        .probe_write()
        .await
        .expect("the next probe after the outage");
    assert_eq!(*writes.borrow(), Writes::Accepted);
    writes_succeed_again(&store, &job, &acknowledged).await;
    store.close().await;
    database.drop().await;
}
