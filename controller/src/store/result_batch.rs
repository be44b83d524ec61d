//! A batch of results and job changes written set-based
//! ([`Store::write_batch`](super::Store::write_batch)), on PostgreSQL and on SQLite.
//!
//! Why: a result in a transaction of its own costs about six statements and a commit (lock
//! the job, insert, count, compare-and-set, commit), and a batch in one transaction with a
//! savepoint and those statements per result was slower still: it serialized its results on
//! one connection (BENCHMARKS.md, `pg-ingest-bench`). Here a batch costs the same few
//! statements whatever its size: its jobs locked in id order in one, the keys of their stored
//! results read in one, the nodes its changes move locked in one; then every write is decided
//! in memory, in arrival order, exactly as its own statements would have decided it (a
//! duplicate, a result decided from fewer results than its job has by then, a job or node
//! that moved: each refused alone, the others kept); then one statement inserting the accepted
//! results (`INSERT ... SELECT FROM UNNEST`) and moving the jobs and nodes (`UPDATE ... FROM
//! UNNEST`), the columns bound as arrays; one commit.
//!
//! SQLite ([`write_sqlite`]) decides the same way from the same three reads, in its one
//! writer's transaction (`BEGIN IMMEDIATE`: nothing else writes until the commit), and writes
//! with a multi-row `INSERT` per [`SQLITE_ROWS_PER_INSERT`] results and one `UPDATE ... FROM
//! (VALUES ...)` each for the jobs and the nodes. The savepoint path cost five statements a
//! result (savepoint, the job's compare-and-set, insert, the node's move, count), each a
//! hand-off to SQLite's thread and back: about 14,000 of the 21,000 statements of a
//! 1,000-node run (BENCHMARKS.md). A write alone keeps that path on SQLite, whose
//! statements are kept prepared and cost less than these reads for one write.
//!
//! **Invariant:** each write gets the outcome that the savepoint path (one write after the
//! other, SQLite's) gives it. What is read is read under the rows' locks, after they were
//! granted, so no other transaction changes it before the commit: every writer of a job's
//! results locks the job first. The updates are still compare-and-sets on what was read, and
//! a statement that does not change exactly the rows decided fails the whole batch, which
//! then stores nothing (and the caller writes each alone).

use super::connect::Begin;
use super::results::{Prepared, PreparedResult, Refusal};
use super::rows::{Fields, StoreRow};
use super::{Recorded, StoreError, epoch_to_i64, micros, text};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use tollgate_domain::job::{JobChange, JobState};
use tollgate_domain::result::StepResult;
use tollgate_domain::{RunId, Timestamp};

/// The batch's jobs, locked in id order: two batches sharing jobs queue instead of
/// deadlocking. `FOR UPDATE` locks rows in the order of `ORDER BY`.
const LOCK_JOBS: &str = "SELECT id, run_id, state, lease_epoch FROM jobs
     WHERE id = ANY($1) ORDER BY id FOR UPDATE";
/// The keys of the stored results of the batch's jobs: a job's count, and which of the
/// batch's results are duplicates. Its own statement, after the locks were granted, so that
/// its snapshot holds every result committed before.
const RESULT_KEYS: &str = "SELECT job_id, step_index, attempt, lease_epoch FROM step_results
     WHERE job_id = ANY($1)";
/// The nodes the batch's changes move, locked in name order (after the jobs: the lock order
/// of every job change is run, jobs, nodes).
const LOCK_NODES: &str =
    "SELECT name, state FROM nodes WHERE name = ANY($1) ORDER BY name FOR UPDATE";
/// The batch's rows in one statement, the columns bound as arrays: the accepted results
/// inserted in arrival order (`$1`-`$20`), each changed job moved where the batch leaves it
/// (`$21`-`$26`) and each changed node (`$27`-`$29`), both compare-and-sets on what was read.
/// It answers how many rows each part wrote. One statement instead of three saves two round
/// trips a batch; its parts see one snapshot, and the rows they write are the batch's,
/// locked, so none reads what another writes.
const WRITE_ROWS: &str = "WITH inserted AS (
         INSERT INTO step_results (job_id, step_index, attempt, lease_epoch, step_name, outcome,
             exit_code, started_at, finished_at, measurements, telemetry, events, inventory,
             log_tail, message, recorded_at, sub_results, inventory_at_end, series, digest)
         SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::TEXT[],
             $6::TEXT[], $7::BIGINT[], $8::TIMESTAMPTZ[], $9::TIMESTAMPTZ[], $10::TEXT[],
             $11::TEXT[], $12::TEXT[], $13::TEXT[], $14::TEXT[], $15::TEXT[], $16::TIMESTAMPTZ[],
             $17::TEXT[], $18::TEXT[], $19::TEXT[], $20::TEXT[])
         RETURNING 1),
     moved_jobs AS (
         UPDATE jobs j
         SET state = u.state, lease_epoch = u.lease_epoch, updated_at = u.updated_at
         FROM UNNEST($21::TEXT[], $22::TEXT[], $23::BIGINT[], $24::TEXT[], $25::BIGINT[],
                     $26::TIMESTAMPTZ[]) AS u (id, found_state, found_epoch, state, lease_epoch,
                                                updated_at)
         WHERE j.id = u.id AND j.state = u.found_state AND j.lease_epoch = u.found_epoch
         RETURNING 1),
     moved_nodes AS (
         UPDATE nodes n SET state = u.state
         FROM UNNEST($27::TEXT[], $28::TEXT[], $29::TEXT[]) AS u (name, found_state, state)
         WHERE n.name = u.name AND n.state = u.found_state
         RETURNING 1)
     SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM moved_jobs),
            (SELECT count(*) FROM moved_nodes)";

/// A job as the batch read it, and where the writes decided so far leave it.
struct JobNow {
    run: String,
    found_state: JobState,
    found_epoch: i64,
    state: JobState,
    epoch: i64,
    /// When a write last changed it (its `updated_at`); `None` while none did.
    changed_at: Option<Timestamp>,
    n_results: usize,
}

/// A node's state as the batch read it, and where the writes decided so far leave it.
struct NodeNow {
    found_state: String,
    state: String,
    changed: bool,
}

/// A stored result's key: job, step index, attempt, lease epoch.
type Key = (String, i64, i64, i64);

/// What the batch read under its locks, changed in memory as its writes are decided.
#[derive(Default)]
struct Facts {
    jobs: HashMap<String, JobNow>,
    keys: HashSet<Key>,
    nodes: HashMap<String, NodeNow>,
}

/// Reads what a batch is decided from in the open transaction `$tx`: its jobs (`$jobs`, a
/// query bound to its list), then the keys of their stored results (`$keys`), then the nodes
/// its changes move (`$nodes`, `None` when none moves); evaluates to the [`Facts`]. The keys
/// are read after the jobs: on PostgreSQL after the jobs' locks were granted.
macro_rules! read_facts {
    ($tx:expr, $jobs:expr, $keys:expr, $nodes:expr) => {{
        let mut facts = Facts::default();
        for row in $jobs.fetch_all(&mut *$tx).await? {
            facts.add_job(&row)?;
        }
        for row in $keys.fetch_all(&mut *$tx).await? {
            facts.add_key(&row)?;
        }
        if let Some(nodes) = $nodes {
            for row in nodes.fetch_all(&mut *$tx).await? {
                facts.add_node(&row)?;
            }
        }
        facts
    }};
}

impl Facts {
    /// A job as [`LOCK_JOBS`] or [`SQLITE_JOBS`] read it.
    fn add_job(&mut self, row: &impl StoreRow) -> Result<(), StoreError> {
        let f = Fields::new(row, "jobs", &["id"]);
        let state: JobState = f.parse("state")?;
        let epoch: i64 = f.int_as("lease_epoch")?;
        self.jobs.insert(
            f.text("id")?,
            JobNow {
                run: f.text("run_id")?,
                found_state: state,
                found_epoch: epoch,
                state,
                epoch,
                changed_at: None,
                n_results: 0,
            },
        );
        Ok(())
    }

    /// A stored result's key as [`RESULT_KEYS`] or [`SQLITE_RESULT_KEYS`] read it; counted
    /// to its job, which is read first.
    fn add_key(&mut self, row: &impl StoreRow) -> Result<(), StoreError> {
        let f = Fields::new(row, "step_results", &["job_id"]);
        let key: Key = (
            f.text("job_id")?,
            f.int_as("step_index")?,
            f.int_as("attempt")?,
            f.int_as("lease_epoch")?,
        );
        if let Some(job) = self.jobs.get_mut(&key.0) {
            job.n_results += 1;
        }
        self.keys.insert(key);
        Ok(())
    }

    /// A node as [`LOCK_NODES`] or [`SQLITE_NODES`] read it.
    fn add_node(&mut self, row: &impl StoreRow) -> Result<(), StoreError> {
        let f = Fields::new(row, "nodes", &["name"]);
        let state = f.text("state")?;
        self.nodes.insert(
            f.text("name")?,
            NodeNow {
                found_state: state.clone(),
                state,
                changed: false,
            },
        );
        Ok(())
    }
}

/// The jobs the batch's writes change, in id order, and the nodes their changes move, in
/// name order.
fn names_of<'p>(prepared: &'p [Result<Prepared<'_>, Refusal>]) -> (Vec<&'p str>, Vec<&'p str>) {
    let mut job_ids = BTreeSet::new();
    let mut node_names = BTreeSet::new();
    for item in prepared.iter().flatten() {
        let change = match item {
            Prepared::Result(item) => &item.change.job,
            Prepared::Job(change, _) => change,
            // Never here: `write_prepared` applies a batch with a registration write by write.
            Prepared::Registration(..) => continue,
        };
        job_ids.insert(change.job.as_str());
        if let Some(node) = &change.node {
            node_names.insert(node.node.as_str());
        }
    }
    (
        job_ids.into_iter().collect(),
        node_names.into_iter().collect(),
    )
}

/// Applies `prepared` in one transaction on PostgreSQL, set-based (see the module docs);
/// adds to `ended` the runs whose last open job a write ended.
pub(super) async fn write(
    pool: &sqlx::PgPool,
    prepared: &[Result<Prepared<'_>, Refusal>],
    ended: &mut BTreeSet<RunId>,
) -> Result<Vec<Result<Recorded, StoreError>>, StoreError> {
    let (job_ids, node_names) = names_of(prepared);
    if job_ids.is_empty() {
        // Every write was refused before its transaction: nothing to write.
        return Ok(decide(prepared, &mut Facts::default()).outcomes);
    }
    let mut tx = pool.begin_write().await?;
    let mut facts = read_facts!(
        tx,
        sqlx::query(LOCK_JOBS).bind(&job_ids),
        // Planned for each batch's jobs (an unnamed statement, parsed and described each
        // time: one round trip more): a plan cached while the table was small scans it
        // whole, and is kept as the table grows until an analyze invalidates it (the
        // statement's time grew from 0.2 to 1.8 ms a batch over the 5,000 results of
        // `pg-ingest-bench`).
        sqlx::query(RESULT_KEYS).persistent(false).bind(&job_ids),
        (!node_names.is_empty()).then(|| sqlx::query(LOCK_NODES).bind(&node_names))
    );

    let decided = decide(prepared, &mut facts);
    write_rows(&mut tx, &decided.inserts, &Moves::of(&facts)).await?;
    tx.commit().await?;
    ended.extend(decided.ended);
    Ok(decided.outcomes)
}

/// What a batch's writes do, decided in arrival order.
struct Decided<'p, 'a> {
    /// Each write's outcome, in order.
    outcomes: Vec<Result<Recorded, StoreError>>,
    /// The results to insert, in order.
    inserts: Vec<&'p PreparedResult<'a>>,
    /// The runs whose last open job a write ended.
    ended: BTreeSet<RunId>,
}

/// Decides each write of `prepared` in order from `facts`, which each accepted write changes
/// as its statements would have changed the rows: the savepoint path's outcomes, in memory.
fn decide<'p, 'a>(
    prepared: &'p [Result<Prepared<'a>, Refusal>],
    facts: &mut Facts,
) -> Decided<'p, 'a> {
    let mut decided = Decided {
        outcomes: Vec::with_capacity(prepared.len()),
        inserts: Vec::new(),
        ended: BTreeSet::new(),
    };
    for item in prepared {
        let outcome = match item {
            Err(refusal) => Err(refusal.again()),
            Ok(Prepared::Job(change, now)) => apply(facts, change, *now).map(|run| {
                decided.ended.extend(run);
                Recorded::Inserted
            }),
            Ok(Prepared::Registration(registration, _)) => Err(StoreError::Corrupt {
                what: format!("node {}", registration.node()),
                detail: "a registration is not written set-based".to_owned(),
            }),
            Ok(Prepared::Result(item)) => record(facts, item).map(|recorded| {
                if let Some(run) = recorded {
                    decided.inserts.push(item);
                    decided.ended.extend(run);
                    Recorded::Inserted
                } else {
                    Recorded::Duplicate
                }
            }),
        };
        decided.outcomes.push(outcome);
    }
    decided
}

/// Decides a result as its savepoint would: the job must exist; a duplicate changes
/// nothing (`None`); the job must have exactly the results the change was decided from;
/// then its change applies ([`apply`]). `Some` with the run the result's change ended, if
/// any, when it is to be inserted.
fn record(
    facts: &mut Facts,
    item: &PreparedResult<'_>,
) -> Result<Option<Option<RunId>>, StoreError> {
    let result: &StepResult = item.result;
    let job = &result.job_id;
    let Some(found) = facts.jobs.get(job.as_str()) else {
        return Err(StoreError::NotFound {
            what: format!("job {job}"),
        });
    };
    let key: Key = (
        job.as_str().to_owned(),
        i64::from(result.step_index),
        i64::from(result.attempt),
        epoch_to_i64(result.lease_epoch, job)?,
    );
    if facts.keys.contains(&key) {
        return Ok(None);
    }
    let n_results = found.n_results;
    if n_results != item.change.results_before {
        return Err(super::results::count_conflict(
            &format!("job {job}"),
            item.change.results_before,
            n_results,
        ));
    }
    let run = apply(facts, &item.change.job, item.now)?;
    facts.keys.insert(key);
    if let Some(found) = facts.jobs.get_mut(job.as_str()) {
        found.n_results += 1;
    }
    Ok(Some(run))
}

/// Decides a job change as `apply_job_change!` would: the job must be in the state and at
/// the epoch it was decided from, and its node (when it moves) in the state decided from.
/// Evaluates to the job's run when the change ended the job.
fn apply(
    facts: &mut Facts,
    change: &JobChange,
    now: Timestamp,
) -> Result<Option<RunId>, StoreError> {
    let job = &change.job;
    let Some(found) = facts.jobs.get_mut(job.as_str()) else {
        return Err(StoreError::NotFound {
            what: format!("job {job}"),
        });
    };
    let from_epoch = epoch_to_i64(change.from_epoch, job)?;
    let to_epoch = epoch_to_i64(change.to_epoch, job)?;
    if found.state != change.from || found.epoch != from_epoch {
        return Err(StoreError::Conflict {
            what: format!("job {job}"),
            detail: format!(
                "expected state {} at epoch {}, found {} at epoch {}",
                change.from, change.from_epoch, found.state, found.epoch
            ),
        });
    }
    if let Some(node) = &change.node {
        let Some(node_now) = facts.nodes.get_mut(node.node.as_str()) else {
            return Err(StoreError::NotFound {
                what: format!("node {}", node.node),
            });
        };
        if node_now.state != node.from.as_str() {
            return Err(StoreError::Conflict {
                what: format!("node {}", node.node),
                detail: format!("expected state {}, found {}", node.from, node_now.state),
            });
        }
        node_now.state = node.to.as_str().to_owned();
        node_now.changed = true;
    }
    found.state = change.to;
    found.epoch = to_epoch;
    found.changed_at = Some(now);
    Ok(if change.to.is_terminal() && !change.from.is_terminal() {
        Some(RunId::new(found.run.clone()))
    } else {
        None
    })
}

/// That a set-based statement changed another number of rows than decided: something
/// wrote the rows without their locks. The whole batch fails.
fn not_as_decided(what: &str, decided: usize, n_rows: i64) -> StoreError {
    StoreError::Conflict {
        what: format!("a batch's {what}"),
        detail: format!("{decided} rows decided, {n_rows} written"),
    }
}

/// The most bytes of results one `INSERT` carries (about; a larger result goes alone): a
/// batch's results in one statement, short of a pathological one. sqlx 0.9.0 left Nagle's
/// algorithm on for its sockets, and statements past about 16 KiB then waited 40-45 ms each
/// for the server's delayed acknowledgement, so results went 8 KiB at a time; 0.9.1 sets
/// `TCP_NODELAY` again, and one statement per batch measured 0.30-0.37x of a binary COPY
/// against 0.25-0.27x at 8 KiB (`pg-ingest-bench`, BENCHMARKS.md).
const INSERT_BYTES: usize = 1024 * 1024;

/// About how many bytes a result's row takes in an `INSERT`'s parameters.
fn row_bytes(item: &PreparedResult<'_>) -> usize {
    let columns = &item.columns;
    let result = item.result;
    [
        &columns.measurements,
        &columns.telemetry,
        &columns.events,
        &columns.inventory,
        &columns.sub_results,
        &columns.inventory_at_end,
        &columns.series,
        &columns.digest,
        &result.step_name,
        &result.log_tail,
        &result.message,
    ]
    .iter()
    .map(|value| value.len() + 4)
    .sum::<usize>()
        + result.job_id.as_str().len()
        + 100
}

/// The jobs and nodes a batch's writes changed, where they leave them: the columns of
/// [`WRITE_ROWS`]'s moves, jobs in id order and nodes in name order.
#[derive(Default)]
struct Moves<'f> {
    jobs: Vec<&'f str>,
    jobs_found_state: Vec<&'static str>,
    jobs_found_epoch: Vec<i64>,
    jobs_state: Vec<&'static str>,
    jobs_epoch: Vec<i64>,
    jobs_changed_at: Vec<Timestamp>,
    nodes: Vec<&'f str>,
    nodes_found_state: Vec<&'f str>,
    nodes_state: Vec<&'f str>,
}

impl<'f> Moves<'f> {
    fn of(facts: &'f Facts) -> Self {
        let mut moves = Self::default();
        let jobs: BTreeMap<&str, (&JobNow, Timestamp)> = facts
            .jobs
            .iter()
            .filter_map(|(id, job)| Some((id.as_str(), (job, job.changed_at?))))
            .collect();
        for (id, (job, changed_at)) in jobs {
            moves.jobs.push(id);
            moves.jobs_found_state.push(job.found_state.as_str());
            moves.jobs_found_epoch.push(job.found_epoch);
            moves.jobs_state.push(job.state.as_str());
            moves.jobs_epoch.push(job.epoch);
            moves.jobs_changed_at.push(micros(changed_at));
        }
        let nodes: BTreeMap<&str, &NodeNow> = facts
            .nodes
            .iter()
            .filter(|(_, node)| node.changed)
            .map(|(name, node)| (name.as_str(), node))
            .collect();
        for (name, node) in nodes {
            moves.nodes.push(name);
            moves.nodes_found_state.push(&node.found_state);
            moves.nodes_state.push(&node.state);
        }
        moves
    }

    fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.nodes.is_empty()
    }
}

/// Writes the batch's rows: `inserts` in order, in statements of about [`INSERT_BYTES`]
/// each, the first of which also makes the `moves`.
async fn write_rows(
    tx: &mut sqlx::PgConnection,
    inserts: &[&PreparedResult<'_>],
    moves: &Moves<'_>,
) -> Result<(), StoreError> {
    if inserts.is_empty() && moves.is_empty() {
        return Ok(());
    }
    let none = Moves::default();
    let mut moves = moves;
    let mut start = 0;
    loop {
        let mut end = (start + 1).min(inserts.len());
        let mut n_bytes = inserts[start..end]
            .iter()
            .map(|item| row_bytes(item))
            .sum::<usize>();
        while end < inserts.len() {
            n_bytes += row_bytes(inserts[end]);
            if n_bytes > INSERT_BYTES {
                break;
            }
            end += 1;
        }
        write_statement(tx, &inserts[start..end], moves).await?;
        moves = &none;
        start = end;
        if start == inserts.len() {
            return Ok(());
        }
    }
}

/// One [`WRITE_ROWS`]: `inserts` in order and `moves`; fails when any part wrote other rows
/// than decided.
async fn write_statement(
    tx: &mut sqlx::PgConnection,
    inserts: &[&PreparedResult<'_>],
    moves: &Moves<'_>,
) -> Result<(), StoreError> {
    let texts = |value: fn(&StepResult) -> &str| {
        inserts
            .iter()
            .map(|item| text(value(item.result)))
            .collect::<Vec<_>>()
    };
    let ints = |value: fn(&StepResult) -> i64| {
        inserts
            .iter()
            .map(|item| value(item.result))
            .collect::<Vec<_>>()
    };
    let columns = |value: fn(&super::results::ResultColumns) -> &str| {
        inserts
            .iter()
            .map(|item| value(&item.columns))
            .collect::<Vec<_>>()
    };
    let times = |value: fn(&PreparedResult<'_>) -> Timestamp| {
        inserts
            .iter()
            .map(|item| micros(value(item)))
            .collect::<Vec<_>>()
    };
    let epochs = inserts
        .iter()
        .map(|item| epoch_to_i64(item.result.lease_epoch, &item.result.job_id))
        .collect::<Result<Vec<_>, _>>()?;
    let (n_inserted, n_jobs, n_nodes): (i64, i64, i64) = sqlx::query_as(WRITE_ROWS)
        .bind(
            inserts
                .iter()
                .map(|item| item.result.job_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(ints(|result| i64::from(result.step_index)))
        .bind(ints(|result| i64::from(result.attempt)))
        .bind(epochs)
        .bind(texts(|result| &result.step_name))
        .bind(
            inserts
                .iter()
                .map(|item| item.result.outcome.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            inserts
                .iter()
                .map(|item| item.result.exit_code.map(i64::from))
                .collect::<Vec<_>>(),
        )
        .bind(times(|item| item.result.started_at))
        .bind(times(|item| item.result.finished_at))
        .bind(columns(|columns| &columns.measurements))
        .bind(columns(|columns| &columns.telemetry))
        .bind(columns(|columns| &columns.events))
        .bind(columns(|columns| &columns.inventory))
        .bind(texts(|result| &result.log_tail))
        .bind(texts(|result| &result.message))
        .bind(times(|item| item.now))
        .bind(columns(|columns| &columns.sub_results))
        .bind(columns(|columns| &columns.inventory_at_end))
        .bind(columns(|columns| &columns.series))
        .bind(columns(|columns| &columns.digest))
        .bind(&moves.jobs)
        .bind(&moves.jobs_found_state)
        .bind(&moves.jobs_found_epoch)
        .bind(&moves.jobs_state)
        .bind(&moves.jobs_epoch)
        .bind(&moves.jobs_changed_at)
        .bind(&moves.nodes)
        .bind(&moves.nodes_found_state)
        .bind(&moves.nodes_state)
        .fetch_one(&mut *tx)
        .await?;
    for (what, decided, written) in [
        ("results", inserts.len(), n_inserted),
        ("jobs", moves.jobs.len(), n_jobs),
        ("nodes", moves.nodes.len(), n_nodes),
    ] {
        if written != decided as i64 {
            return Err(not_as_decided(what, decided, written));
        }
    }
    Ok(())
}

/// The batch's jobs on SQLite, read in its writer's transaction: nothing else writes them
/// before the commit.
const SQLITE_JOBS: &str = "SELECT id, run_id, state, lease_epoch FROM jobs
     WHERE id IN (SELECT value FROM json_each($1))";
/// The keys of the stored results of the batch's jobs on SQLite.
const SQLITE_RESULT_KEYS: &str = "SELECT job_id, step_index, attempt, lease_epoch
     FROM step_results WHERE job_id IN (SELECT value FROM json_each($1))";
/// The nodes the batch's changes move, on SQLite.
const SQLITE_NODES: &str =
    "SELECT name, state FROM nodes WHERE name IN (SELECT value FROM json_each($1))";

/// The most results one SQLite `INSERT` carries: 20 parameters each, 2,000 a statement
/// (SQLite takes up to 32,766).
const SQLITE_ROWS_PER_INSERT: usize = 100;
/// The most jobs or nodes one SQLite `UPDATE` moves: 6 parameters each at most.
const SQLITE_ROWS_PER_MOVE: usize = 500;

/// Applies `prepared` in one transaction on SQLite, set-based (see the module docs); adds to
/// `ended` the runs whose last open job a write ended.
pub(super) async fn write_sqlite(
    pool: &sqlx::SqlitePool,
    prepared: &[Result<Prepared<'_>, Refusal>],
    ended: &mut BTreeSet<RunId>,
) -> Result<Vec<Result<Recorded, StoreError>>, StoreError> {
    let (job_ids, node_names) = names_of(prepared);
    if job_ids.is_empty() {
        // Every write was refused before its transaction: nothing to write.
        return Ok(decide(prepared, &mut Facts::default()).outcomes);
    }
    let job_ids = super::json_list(job_ids);
    let mut tx = pool.begin_write().await?;
    let mut facts = read_facts!(
        tx,
        sqlx::query(SQLITE_JOBS).bind(&job_ids),
        sqlx::query(SQLITE_RESULT_KEYS).bind(&job_ids),
        (!node_names.is_empty())
            .then(|| sqlx::query(SQLITE_NODES).bind(super::json_list(node_names)))
    );

    let decided = decide(prepared, &mut facts);
    for chunk in decided.inserts.chunks(SQLITE_ROWS_PER_INSERT) {
        insert_sqlite(&mut tx, chunk).await?;
    }
    move_sqlite(&mut tx, &Moves::of(&facts)).await?;
    tx.commit().await?;
    ended.extend(decided.ended);
    Ok(decided.outcomes)
}

/// `n` rows of `width` anonymous placeholders for a `VALUES` list: `(?, ?), (?, ?)`, bound in
/// order. SQLite looks up each numbered one (`$12`) in the list of those before it: for the
/// 2,000 of a hundred results, a measurable share of the batch's parsing (`perf`).
fn anonymous_rows(n: usize, width: usize) -> String {
    let row = format!("({})", vec!["?"; width].join(", "));
    vec![row; n].join(", ")
}

/// Inserts `inserts` in one statement. The statement of one result has one text and is kept
/// prepared; those of several are prepared each time (a hundred lengths of it would push the
/// statements every call uses out of the connection's cache).
async fn insert_sqlite(
    tx: &mut sqlx::SqliteConnection,
    inserts: &[&PreparedResult<'_>],
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO step_results (job_id, step_index, attempt, lease_epoch, step_name, outcome,
             exit_code, started_at, finished_at, measurements, telemetry, events, inventory,
             log_tail, message, recorded_at, sub_results, inventory_at_end, series, digest)
         VALUES {}",
        anonymous_rows(inserts.len(), 20)
    );
    // Built from placeholders only: the values are bound.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(inserts.len() == 1);
    for item in inserts {
        query = bind_result_row!(query, item.result, &item.columns, item.now);
    }
    let n_rows = query.execute(&mut *tx).await?.rows_affected();
    if n_rows != inserts.len() as u64 {
        return Err(not_as_decided("results", inserts.len(), n_rows as i64));
    }
    Ok(())
}

/// Moves the batch's changed jobs and nodes, compare-and-sets on what was read, a statement
/// per [`SQLITE_ROWS_PER_MOVE`] of each; fails when one moved other rows than decided.
async fn move_sqlite(tx: &mut sqlx::SqliteConnection, moves: &Moves<'_>) -> Result<(), StoreError> {
    for start in (0..moves.jobs.len()).step_by(SQLITE_ROWS_PER_MOVE) {
        let end = (start + SQLITE_ROWS_PER_MOVE).min(moves.jobs.len());
        let sql = format!(
            "UPDATE jobs SET state = v.column4, lease_epoch = v.column5, updated_at = v.column6
             FROM (VALUES {}) AS v
             WHERE jobs.id = v.column1 AND jobs.state = v.column2
               AND jobs.lease_epoch = v.column3",
            anonymous_rows(end - start, 6)
        );
        // Built from placeholders only: the values are bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(end - start == 1);
        for index in start..end {
            query = query
                .bind(moves.jobs[index])
                .bind(moves.jobs_found_state[index])
                .bind(moves.jobs_found_epoch[index])
                .bind(moves.jobs_state[index])
                .bind(moves.jobs_epoch[index])
                .bind(moves.jobs_changed_at[index]);
        }
        let n_rows = query.execute(&mut *tx).await?.rows_affected();
        if n_rows != (end - start) as u64 {
            return Err(not_as_decided("jobs", end - start, n_rows as i64));
        }
    }
    for start in (0..moves.nodes.len()).step_by(SQLITE_ROWS_PER_MOVE) {
        let end = (start + SQLITE_ROWS_PER_MOVE).min(moves.nodes.len());
        let sql = format!(
            "UPDATE nodes SET state = v.column3 FROM (VALUES {}) AS v
             WHERE nodes.name = v.column1 AND nodes.state = v.column2",
            anonymous_rows(end - start, 3)
        );
        // Built from placeholders only: the values are bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(end - start == 1);
        for index in start..end {
            query = query
                .bind(moves.nodes[index])
                .bind(moves.nodes_found_state[index])
                .bind(moves.nodes_state[index]);
        }
        let n_rows = query.execute(&mut *tx).await?.rows_affected();
        if n_rows != (end - start) as u64 {
            return Err(not_as_decided("nodes", end - start, n_rows as i64));
        }
    }
    Ok(())
}
