//! Step results in the store: recording one with its job's decided change, reading a job's.
//!
//! **Invariant:** a result is committed before it is acknowledged, and stored once however
//! often it is sent (keyed by job, step index, attempt and lease epoch).

use super::connect::Begin;
use super::nodes::{
    REGISTRATIONS_PER_STATEMENT, record_heartbeats_sql, register_known_sql, register_new_sql,
};
use super::{
    EncodedRegistration, Pool, Recorded, Registration, Store, StoreError, as_stored,
    check_readable, classify, micros, rows, to_json,
};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use tollgate_domain::job::{JobChange, ResultChange};
use tollgate_domain::result::StepResult;
use tollgate_domain::{JobId, NodeId, RunId, Timestamp};

/// The most jobs [`Store::result_summaries_of_jobs`] asks about in one statement (a page's worth).
pub const RESULTS_OF_JOBS_MAX: usize = 1000;

/// Results per transaction of [`Store::seed_results`].
const SEED_CHUNK: usize = 500;

/// Stores a result's row (`ON CONFLICT DO NOTHING`: a duplicate inserts nothing) inside the
/// open transaction `$tx`; evaluates to the rows inserted, 0 or 1. `$columns` are the
/// result's [`ResultColumns`], `$what` names the job in errors.
macro_rules! insert_result {
    ($tx:expr, $result:expr, $columns:expr, $now:expr, $what:expr) => {{
        const INSERT_RESULT: &str = "INSERT INTO step_results (job_id, step_index, attempt, lease_epoch, step_name, outcome,
                 exit_code, started_at, finished_at, measurements, telemetry, events, inventory,
                 log_tail, message, recorded_at, sub_results, inventory_at_end, series, digest)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                     $18, $19, $20)
             ON CONFLICT (job_id, step_index, attempt, lease_epoch) DO NOTHING";
        let what: &str = $what;
        bind_result_row!(sqlx::query(INSERT_RESULT), $result, $columns, $now)
            .execute(&mut *$tx)
            .await
            .map_err(|err| classify(err, what, what))?
            .rows_affected()
    }};
}

/// A result's columns stored as JSON, and its digest: computed before the transaction.
#[derive(Clone)]
pub(super) struct ResultColumns {
    pub(super) measurements: String,
    pub(super) telemetry: String,
    pub(super) events: String,
    pub(super) inventory: String,
    pub(super) sub_results: String,
    pub(super) inventory_at_end: String,
    pub(super) series: String,
    pub(super) digest: String,
}

impl ResultColumns {
    pub(super) fn of(result: &StepResult) -> Self {
        let mut columns = Self {
            measurements: to_json(&result.measurements),
            telemetry: to_json(&result.telemetry),
            events: to_json(&result.events),
            inventory: to_json(&result.inventory),
            sub_results: to_json(&result.sub_results),
            inventory_at_end: to_json(&result.inventory_at_end),
            series: to_json(&result.series),
            digest: String::new(),
        };
        columns.digest = hex::encode(columns.digest_of(&as_stored(result)));
        columns
    }

    /// `gate::result_digest(stored)`, with the JSON of the fields these columns hold taken
    /// from them instead of serialized a second time (the series, telemetry and inventories
    /// are most of a result). It hashes the bytes `serde_json` writes for the whole
    /// `StepResult`: its fields in declaration order, each column being exactly its field's
    /// JSON (the columns are of the result itself; `as_stored` changes only text and
    /// timestamps, which are serialized here). A test holds the two digests equal for a result
    /// with every field set, so a field added to `StepResult` and not here fails it.
    fn digest_of(&self, stored: &StepResult) -> [u8; 32] {
        use std::io::Write as _;
        let mut hash = tollgate_domain::HashWriter::default();
        let mut field = |key: &str, value: &dyn erased::Json| {
            hash.write_all(key.as_bytes())
                .expect("a hash takes every byte");
            value.write_to(&mut hash);
        };
        field("{\"job_id\":", &stored.job_id);
        field(",\"step_index\":", &stored.step_index);
        field(",\"step_name\":", &stored.step_name);
        field(",\"attempt\":", &stored.attempt);
        field(",\"lease_epoch\":", &stored.lease_epoch);
        field(",\"outcome\":", &stored.outcome);
        field(",\"exit_code\":", &stored.exit_code);
        field(",\"started_at\":", &stored.started_at);
        field(",\"finished_at\":", &stored.finished_at);
        field(",\"measurements\":", &erased::Raw(&self.measurements));
        field(",\"telemetry\":", &erased::Raw(&self.telemetry));
        field(",\"events\":", &erased::Raw(&self.events));
        field(",\"inventory\":", &erased::Raw(&self.inventory));
        field(",\"log_tail\":", &stored.log_tail);
        field(",\"message\":", &stored.message);
        field(",\"sub_results\":", &erased::Raw(&self.sub_results));
        field(
            ",\"inventory_at_end\":",
            &erased::Raw(&self.inventory_at_end),
        );
        field(",\"series\":", &erased::Raw(&self.series));
        hash.write_all(b"}").expect("a hash takes every byte");
        hash.finish()
    }
}

/// A field's JSON written into a hash: serialized, or already-encoded text as it is.
mod erased {
    pub(super) trait Json {
        fn write_to(&self, out: &mut dyn std::io::Write);
    }

    impl<T: serde::Serialize> Json for T {
        fn write_to(&self, out: &mut dyn std::io::Write) {
            serde_json::to_writer(out, self).expect("domain values serialize to JSON");
        }
    }

    /// JSON text already encoded.
    pub(super) struct Raw<'a>(pub(super) &'a str);

    impl Json for Raw<'_> {
        fn write_to(&self, out: &mut dyn std::io::Write) {
            out.write_all(self.0.as_bytes())
                .expect("a hash takes every byte");
        }
    }
}

const COUNT: &str = "SELECT COUNT(*) AS n FROM step_results WHERE job_id = $1";
/// Evaluates to how many results job `$job` has in the transaction `$tx`.
macro_rules! count_results {
    ($tx:expr, $job:expr) => {{
        let row = sqlx::query(COUNT)
            .bind($job.as_str())
            .fetch_one(&mut *$tx)
            .await?;
        let n: usize = rows::Fields::new(&row, "step_results", &[]).int_as("n")?;
        n
    }};
}

/// A result decided from `results_before` stored results of its job (`what`) found
/// `n_others` instead.
pub(super) fn count_conflict(what: &str, results_before: usize, n_others: usize) -> StoreError {
    StoreError::Conflict {
        what: what.to_owned(),
        detail: format!("decided from {results_before} stored results, found {n_others} others"),
    }
}

/// Whether a result is stored already (its key), when its job's compare-and-set missed.
const RESULT_EXISTS: &str = "SELECT job_id FROM step_results
     WHERE job_id = $1 AND step_index = $2 AND attempt = $3 AND lease_epoch = $4";
/// One write of a batch ([`Store::write_batch`]).
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    /// [`Store::record_result`]'s.
    Result(&'a StepResult, &'a ResultChange, Timestamp),
    /// [`Store::record_result`]'s, the result encoded beforehand ([`EncodedRow`]).
    Encoded(&'a EncodedRow, &'a ResultChange, Timestamp),
    /// [`Store::apply_job_change`]'s; `Recorded::Inserted` when applied.
    Job(&'a JobChange, Timestamp),
    /// [`Store::register_node`]'s; `Recorded::Inserted` when applied.
    Registration(&'a EncodedRegistration, Timestamp),
}

impl Write<'_> {
    /// What it writes, as an error names it.
    fn what(&self) -> String {
        match self {
            Self::Result(result, ..) => format!("result of job {}", result.job_id),
            Self::Encoded(row, ..) => format!("result of job {}", row.result.job_id),
            Self::Job(change, _) => format!("job {}", change.job),
            Self::Registration(registration, _) => format!("node {}", registration.node),
        }
    }

    /// When the write was decided.
    fn now(&self) -> Timestamp {
        match *self {
            Self::Result(_, _, now)
            | Self::Encoded(_, _, now)
            | Self::Job(_, now)
            | Self::Registration(_, now) => now,
        }
    }
}

/// A result checked and encoded for its row (its JSON columns and digest) once, however many
/// times its change is decided and its write tried: the encoding is most of the work of
/// writing a result, and done by the result's handler it runs beside the batch being
/// written instead of inside the next batch's turn.
///
/// It keeps of the result only what is not in its columns ([`scalars_of`]): what waits for a
/// batch is the row, not also a copy of the telemetry, series and inventories it was encoded
/// from (a thousand results arrive within a second when a thousand nodes end a step).
pub struct EncodedRow {
    /// The result without the fields its columns hold.
    result: StepResult,
    /// The row's columns, or why the result cannot be stored.
    columns: Result<ResultColumns, Refusal>,
}

impl std::fmt::Debug for EncodedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedRow")
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}

impl EncodedRow {
    /// Checks and encodes `result`.
    pub fn new(result: &StepResult) -> Self {
        Self {
            columns: encode(result),
            result: scalars_of(result),
        }
    }
}

/// `result` without the fields [`ResultColumns`] holds as JSON (left empty): the fields a
/// write reads from the result itself, its key, outcome, times and texts. Every field is
/// named, so that a field added to `StepResult` is placed on one side or the other here.
fn scalars_of(result: &StepResult) -> StepResult {
    StepResult {
        job_id: result.job_id.clone(),
        step_index: result.step_index,
        step_name: result.step_name.clone(),
        attempt: result.attempt,
        lease_epoch: result.lease_epoch,
        outcome: result.outcome,
        exit_code: result.exit_code,
        started_at: result.started_at,
        finished_at: result.finished_at,
        log_tail: result.log_tail.clone(),
        message: result.message.clone(),
        // In the columns.
        measurements: Vec::new(),
        telemetry: Vec::new(),
        events: Vec::new(),
        inventory: tollgate_domain::fleet::Inventory::default(),
        sub_results: Vec::new(),
        inventory_at_end: None,
        series: Vec::new(),
    }
}

/// A write ready for the transaction.
pub(super) enum Prepared<'a> {
    Result(Box<PreparedResult<'a>>),
    Job(&'a JobChange, Timestamp),
    Registration(&'a EncodedRegistration, Timestamp),
}

impl Prepared<'_> {
    /// Whether the set-based batch (`result_batch.rs`) can apply it: not a change
    /// that starts a job again elsewhere (`JobChange::reschedule`), nor a registration.
    pub(super) fn set_based(&self) -> bool {
        match self {
            Self::Result(item) => item.change.job.reschedule.is_none(),
            Self::Job(change, _) => change.reschedule.is_none(),
            Self::Registration(..) => false,
        }
    }
}

/// A result ready to insert: checked, its JSON columns and digest computed outside the
/// transaction.
pub(super) struct PreparedResult<'a> {
    pub(super) result: &'a StepResult,
    pub(super) change: &'a ResultChange,
    pub(super) now: Timestamp,
    pub(super) columns: Cow<'a, ResultColumns>,
}

/// Why a result was refused before its transaction; given again as a fresh error.
#[derive(Clone)]
pub(super) enum Refusal {
    Corrupt { what: String, detail: String },
    Conflict { what: String, detail: String },
}

impl Refusal {
    pub(super) fn again(&self) -> StoreError {
        match self {
            Self::Corrupt { what, detail } => StoreError::Corrupt {
                what: what.clone(),
                detail: detail.clone(),
            },
            Self::Conflict { what, detail } => StoreError::Conflict {
                what: what.clone(),
                detail: detail.clone(),
            },
        }
    }
}

/// Checks `result` (readable numbers) and encodes its row.
fn encode(result: &StepResult) -> Result<ResultColumns, Refusal> {
    let columns = ResultColumns::of(result);
    if let Err(error) = check_readable(result, &columns.measurements, &columns.telemetry) {
        return Err(match error {
            StoreError::Corrupt { what, detail } => Refusal::Corrupt { what, detail },
            other => Refusal::Corrupt {
                what: format!("result of job {}", result.job_id),
                detail: other.to_string(),
            },
        });
    }
    Ok(columns)
}

/// Refuses a `change` of another job than `result`'s.
fn check_change(result: &StepResult, change: &ResultChange) -> Result<(), Refusal> {
    if change.job.job != result.job_id {
        return Err(Refusal::Conflict {
            what: format!("result of job {}", result.job_id),
            detail: format!("it came with a change of job {}", change.job.job),
        });
    }
    Ok(())
}

impl<'a> Prepared<'a> {
    fn of(write: &Write<'a>) -> Result<Self, Refusal> {
        Ok(match *write {
            Write::Result(result, change, now) => {
                let columns = encode(result)?;
                check_change(result, change)?;
                Self::Result(Box::new(PreparedResult {
                    result,
                    change,
                    now,
                    columns: Cow::Owned(columns),
                }))
            }
            Write::Encoded(row, change, now) => {
                let columns = row.columns.as_ref().map_err(Refusal::clone)?;
                check_change(&row.result, change)?;
                Self::Result(Box::new(PreparedResult {
                    result: &row.result,
                    change,
                    now,
                    columns: Cow::Borrowed(columns),
                }))
            }
            Write::Job(change, now) => Self::Job(change, now),
            Write::Registration(registration, now) => Self::Registration(registration, now),
        })
    }
}

/// Opens the savepoint `result` for the next write of a batch in the transaction `$tx`;
/// when the write before left its own open (`$open`), releases it in the same call (one
/// round trip to the database per write instead of two).
macro_rules! next_savepoint {
    ($tx:expr, $open:expr) => {{
        if $open {
            sqlx::raw_sql("RELEASE SAVEPOINT result; SAVEPOINT result")
                .execute(&mut *$tx)
                .await?;
        } else {
            sqlx::query("SAVEPOINT result").execute(&mut *$tx).await?;
            $open = true;
        }
    }};
}

/// Applies the registrations of a batch in the open transaction `$tx` before its other
/// writes, together: the new nodes' inserts in a statement per
/// [`REGISTRATIONS_PER_STATEMENT`], the known nodes' compare-and-sets likewise, then the
/// heartbeats of every node registered (a storm of agents arriving at once costs a few
/// statements per hundred instead of three each). Each keeps its own outcome: a name the
/// insert did not take was registered by another connection meanwhile (`Conflict`), a known
/// node the update missed is read for why (`node_state_conflict!`). Only a node's first
/// registration in the batch goes here; a second one (an agent that retried) is applied
/// after, alone, and sees the first.
///
/// Applied first, the registrations come before the batch's other writes in its order. No
/// outcome changes meaning: every write is a compare-and-set on what it was decided from,
/// so the batch is applied as if its writes had arrived in that order.
///
/// The statements are not kept prepared: a batch's size decides their text, and a hundred
/// shapes of each would push the statements every call uses out of the connection's cache.
///
/// Evaluates to each write's outcome when it was applied here, `None` for the others; returns
/// a database error (the transaction may be unusable).
macro_rules! register_together {
    ($tx:expr, $prepared:expr) => {{
        let prepared: &[Result<Prepared<'_>, Refusal>] = $prepared;
        let mut outcomes: Vec<Option<Result<Recorded, StoreError>>> =
            std::iter::repeat_with(|| None)
                .take(prepared.len())
                .collect();
        let mut first = HashSet::new();
        let (mut new, mut known) = (Vec::new(), Vec::new());
        for (index, item) in prepared.iter().enumerate() {
            if let Ok(Prepared::Registration(registration, now)) = item
                && first.insert(registration.node.as_str())
            {
                match &registration.registration {
                    Registration::New(_) => new.push((index, *registration, *now)),
                    Registration::Known { .. } => known.push((index, *registration, *now)),
                }
            }
        }
        let mut registered: Vec<(&NodeId, Timestamp)> = Vec::new();
        let statements: [(_, fn(usize) -> String); 2] =
            [(new, register_new_sql), (known, register_known_sql)];
        for (group, sql) in statements {
            for chunk in group.chunks(REGISTRATIONS_PER_STATEMENT) {
                // Built from numbered placeholders only: the values are bound.
                let mut query =
                    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql(chunk.len())))
                        .persistent(false);
                for (_, registration, now) in chunk {
                    query = bind_registration!(query, registration, *now);
                }
                let applied: HashSet<String> =
                    query.fetch_all(&mut *$tx).await?.into_iter().collect();
                for (index, registration, now) in chunk {
                    outcomes[*index] = Some(if applied.contains(registration.node.as_str()) {
                        registered.push((&registration.node, *now));
                        Ok(Recorded::Inserted)
                    } else {
                        Err(registration_missed!($tx, registration))
                    });
                }
            }
        }
        for chunk in registered.chunks(REGISTRATIONS_PER_STATEMENT) {
            // Built from numbered placeholders only: the values are bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(record_heartbeats_sql(chunk.len())))
                .persistent(false);
            for (node, now) in chunk {
                query = query.bind(node.as_str()).bind(micros(*now));
            }
            query.execute(&mut *$tx).await?;
        }
        outcomes
    }};
}

/// Applies the prepared writes of a batch one after the other in the transaction that
/// `$pool` begins, each in a savepoint of its own so that each keeps its own outcome;
/// collects the runs whose last open job a write ended in `$ended`. Evaluates to the
/// outcomes in order, or returns a database error (the transaction may be unusable).
///
/// Long because the insert binds every column of a result and the job's compare-and-set,
/// insert and count must share one transaction, in this order.
macro_rules! savepoint_each {
    ($pool:expr, $prepared:expr, $ended:expr) => {{
        let prepared: &[Result<Prepared<'_>, Refusal>] = $prepared;
        let ended: &mut BTreeSet<RunId> = $ended;
        let mut tx = $pool.begin_write().await?;
        let mut together = register_together!(tx, prepared);
        let mut outcomes = Vec::with_capacity(prepared.len());
        // Whether the savepoint of the write before is open: it is released when the next
        // write opens its own, in the same call, and the commit releases the last.
        let mut open = false;
        for (item, together) in prepared.iter().zip(&mut together) {
            if let Some(outcome) = together.take() {
                outcomes.push(outcome);
                continue;
            }
            let item = match item {
                Ok(Prepared::Result(item)) => item,
                Ok(other @ (Prepared::Job(..) | Prepared::Registration(..))) => {
                    next_savepoint!(tx, open);
                    let outcome: Result<Option<RunId>, StoreError> = async {
                        Ok(match other {
                            Prepared::Job(change, now) => apply_job_change!(tx, *change, *now),
                            Prepared::Registration(registration, now) => {
                                apply_registration!(tx, registration, *now);
                                None
                            }
                            // Taken by the arm above.
                            Prepared::Result(_) => None,
                        })
                    }
                    .await;
                    let outcome = match outcome {
                        Err(StoreError::Database(error)) => {
                            return Err(StoreError::Database(error));
                        }
                        Ok(run) => {
                            ended.extend(run);
                            Ok(Recorded::Inserted)
                        }
                        Err(error) => {
                            sqlx::query("ROLLBACK TO SAVEPOINT result")
                                .execute(&mut *tx)
                                .await?;
                            Err(error)
                        }
                    };
                    outcomes.push(outcome);
                    continue;
                }
                Err(refusal) => {
                    outcomes.push(Err(refusal.again()));
                    continue;
                }
            };
            next_savepoint!(tx, open);
            let outcome = async {
                let result = item.result;
                let change = item.change;
                let job = &result.job_id;
                let what = format!("job {job}");
                // The job's compare-and-set first: on PostgreSQL it takes the job's lock
                // before the insert, so that the count below sees every result another
                // writer of this job committed meanwhile (under read committed, two writers
                // that inserted before either locked would each count only their own). No
                // run's lock: a result that ends its job leaves the run's end to after the
                // commit, and a run's jobs do not wait for each other.
                let moved: Result<Option<RunId>, StoreError> =
                    async { Ok(apply_job_change!(tx, &change.job, item.now)) }.await;
                let run = match moved {
                    Ok(run) => run,
                    // Said as if the result had been inserted and counted first: the same
                    // result stored already is a duplicate whatever its job did since, and
                    // results stored since the decision outrank the job's move.
                    Err(StoreError::Conflict {
                        what: moved_what,
                        detail: moved_detail,
                    }) => {
                        let stored = sqlx::query(RESULT_EXISTS)
                            .bind(job.as_str())
                            .bind(i64::from(result.step_index))
                            .bind(i64::from(result.attempt))
                            .bind(super::epoch_to_i64(result.lease_epoch, job)?)
                            .fetch_optional(&mut *tx)
                            .await?;
                        if stored.is_some() {
                            return Ok((Recorded::Duplicate, None));
                        }
                        let n_stored = count_results!(tx, job);
                        if n_stored != change.results_before {
                            return Err(count_conflict(&what, change.results_before, n_stored));
                        }
                        return Err(StoreError::Conflict {
                            what: moved_what,
                            detail: moved_detail,
                        });
                    }
                    Err(error) => return Err(error),
                };
                let n_rows = insert_result!(tx, result, &item.columns, item.now, &what);
                if n_rows == 0 {
                    return Ok((Recorded::Duplicate, None));
                }
                let n_others = count_results!(tx, job).saturating_sub(1);
                if n_others != change.results_before {
                    return Err(count_conflict(&what, change.results_before, n_others));
                }
                Ok((Recorded::Inserted, run))
            }
            .await;
            let outcome = match outcome {
                // The database itself failed: the transaction may be unusable.
                Err(StoreError::Database(error)) => return Err(StoreError::Database(error)),
                Ok((Recorded::Inserted, run)) => {
                    ended.extend(run);
                    Ok(Recorded::Inserted)
                }
                other => {
                    sqlx::query("ROLLBACK TO SAVEPOINT result")
                        .execute(&mut *tx)
                        .await?;
                    other.map(|(recorded, _)| recorded)
                }
            };
            outcomes.push(outcome);
        }
        tx.commit().await?;
        Ok(outcomes)
    }};
}

/// The outcome of each write of a batch, in order, or the error that failed it whole.
type Outcomes = Result<Vec<Result<Recorded, StoreError>>, StoreError>;

/// How each backend applies a batch of prepared writes in one transaction, each as if alone,
/// adding to `ended` the runs whose last open job a write ended.
trait WriteBatch {
    async fn write_prepared(
        &self,
        prepared: &[Result<Prepared<'_>, Refusal>],
        ended: &mut BTreeSet<RunId>,
    ) -> Outcomes;
}

impl WriteBatch for sqlx::SqlitePool {
    /// Set-based (`result_batch.rs`): a few statements for the whole batch. A batch that
    /// starts a job again elsewhere (rare: a job lost or failed and rescheduled) or registers
    /// a node is applied one write after the other, a savepoint each; so is a write alone,
    /// whose own statements are kept prepared and cost less than the batch's reads (the
    /// callgrind workload, which records its results one by one, took 3.1 % more
    /// instructions set-based).
    async fn write_prepared(
        &self,
        prepared: &[Result<Prepared<'_>, Refusal>],
        ended: &mut BTreeSet<RunId>,
    ) -> Outcomes {
        if prepared.len() == 1
            || prepared
                .iter()
                .any(|item| item.as_ref().is_ok_and(|item| !item.set_based()))
        {
            return savepoint_each!(self, prepared, ended);
        }
        super::result_batch::write_sqlite(self, prepared, ended).await
    }
}

impl WriteBatch for sqlx::PgPool {
    /// Set-based (`result_batch.rs`): a handful of statements for the whole batch. A batch
    /// that starts a job again elsewhere (rare: a job lost or failed and rescheduled) or
    /// registers a node is applied one write after the other, a savepoint each.
    async fn write_prepared(
        &self,
        prepared: &[Result<Prepared<'_>, Refusal>],
        ended: &mut BTreeSet<RunId>,
    ) -> Outcomes {
        if prepared
            .iter()
            .any(|item| item.as_ref().is_ok_and(|item| !item.set_based()))
        {
            return savepoint_each!(self, prepared, ended);
        }
        super::result_batch::write(self, prepared, ended).await
    }
}

impl Store {
    /// Stores a result the domain accepted (`tollgate_domain::job::accept_result`) and
    /// applies its `change` in the same transaction: only if the job has the results it was
    /// decided from, no more, and the job (and its node, and its run when the job was the
    /// run's last) is still where it was decided from; else `Conflict` and nothing is stored
    /// (reload and decide again). A duplicate (same job, step index, attempt and lease epoch)
    /// changes nothing.
    ///
    /// A result whose numbers are not finite is refused as `Corrupt` (it could not be read
    /// back); NUL characters in its text are stored as U+FFFD.
    pub async fn record_result(
        &self,
        result: &StepResult,
        change: &ResultChange,
        now: Timestamp,
    ) -> Result<Recorded, StoreError> {
        self.write_one(Write::Result(result, change, now)).await
    }

    /// One write of a batch ([`Store::write_batch`]) alone: its own outcome.
    pub async fn write_one(&self, write: Write<'_>) -> Result<Recorded, StoreError> {
        self.write_batch(&[write]).await?.pop().unwrap_or_else(|| {
            Err(StoreError::Corrupt {
                what: write.what(),
                detail: "a batch of one gave no outcome".to_owned(),
            })
        })
    }

    /// [`Store::record_result`]s, [`Store::apply_job_change`]s and
    /// [`Store::register_node`]s in one transaction (one commit, one fsync): each is applied,
    /// or refused, as if alone and in order (the registrations first, together:
    /// `register_together!`), and gets its own outcome. Both backends apply a batch
    /// set-based, a few statements for the whole batch (`result_batch.rs`), or, when it
    /// registers a node or starts a job again elsewhere (or is one write, on SQLite), one
    /// write after the other, a savepoint each (`savepoint_each!`). A
    /// database error (the disk refused, the connection broke, a deadlock) fails the whole
    /// batch and stores none of it: write each again to learn its own outcome.
    pub async fn write_batch(&self, batch: &[Write<'_>]) -> Outcomes {
        let prepared: Vec<Result<Prepared<'_>, Refusal>> = batch.iter().map(Prepared::of).collect();
        let mut ended = BTreeSet::new();
        let outcomes = writing!(self, |pool| pool
            .write_prepared(&prepared, &mut ended)
            .await)?;
        // After the commit: see `apply_job_change!` in `mod.rs`. The latest write's time is
        // the runs' end time (a batch's writes arrive together).
        if let Some(now) = batch.iter().map(Write::now).max() {
            self.end_runs_if_done(&ended, now).await;
        }
        Ok(outcomes)
    }

    /// Stores many results at once, each with its job's decided change, in one transaction
    /// per [`SEED_CHUNK`] results. Unlike [`Self::record_result`] it does not check that a
    /// job has the results its change was decided from: for tests that need a large run
    /// quickly (`testing::seed_results`), never for results an agent sent.
    pub(super) async fn seed_results(
        &self,
        results: &[(StepResult, ResultChange)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut ended = BTreeSet::new();
        for chunk in results.chunks(SEED_CHUNK) {
            let columns: Vec<ResultColumns> = chunk
                .iter()
                .map(|(result, _)| ResultColumns::of(result))
                .collect();
            writing!(self, |pool| {
                let mut tx = pool.begin_write().await?;
                for ((result, change), columns) in chunk.iter().zip(&columns) {
                    check_readable(result, &columns.measurements, &columns.telemetry)?;
                    let what = format!("job {}", result.job_id);
                    insert_result!(tx, result, columns, now, &what);
                    ended.extend(apply_job_change!(tx, &change.job, now));
                }
                tx.commit().await?;
                Ok(())
            })?;
        }
        self.end_runs_if_done(&ended, now).await;
        Ok(())
    }

    /// The summaries of every result of each of `jobs` (up to [`RESULTS_OF_JOBS_MAX`] jobs),
    /// each job's by step index then attempt: one query for a page of a run's jobs. Only what
    /// a summary shows is read ([`rows::step_result_summary`]): no telemetry, events,
    /// inventories, series or log tail.
    pub async fn result_summaries_of_jobs(
        &self,
        jobs: &[&JobId],
    ) -> Result<HashMap<JobId, Vec<StepResult>>, StoreError> {
        let mut by_job: HashMap<JobId, Vec<StepResult>> = HashMap::new();
        for chunk in jobs.chunks(RESULTS_OF_JOBS_MAX) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
            let sql = format!(
                result_summary_query!(
                    " WHERE job_id IN ({}) ORDER BY job_id, step_index, attempt, lease_epoch"
                ),
                placeholders.join(", ")
            );
            let results: Vec<StepResult> = with_pool!(self, |pool| {
                // Built from numbered placeholders only: the values are bound.
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for job in chunk {
                    query = query.bind(job.as_str());
                }
                query
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(rows::step_result_summary)
                    .collect::<Result<_, StoreError>>()
            })?;
            for result in results {
                by_job
                    .entry(result.job_id.clone())
                    .or_default()
                    .push(result);
            }
        }
        Ok(by_job)
    }

    /// The summaries of every result of a job, by step index then attempt: what deciding the
    /// job's state needs ([`rows::step_result_summary`]: no telemetry, events, inventories,
    /// series or log tail). The controller reads them with the job's facts
    /// ([`Store::result_basis`]); kept for the tests, which hold that read to this one.
    #[cfg(test)]
    pub async fn result_summaries_of_job(
        &self,
        job: &JobId,
    ) -> Result<Vec<StepResult>, StoreError> {
        const SQL: &str =
            result_summary_query!(" WHERE job_id = $1 ORDER BY step_index, attempt, lease_epoch");
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(job.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::step_result_summary)
                .collect()
        })
    }

    /// Every result of a job, by step index then attempt.
    pub async fn results_of_job(&self, job: &JobId) -> Result<Vec<StepResult>, StoreError> {
        const SQL: &str =
            result_query!(" WHERE job_id = $1 ORDER BY step_index, attempt, lease_epoch");
        with_pool!(self, |pool| {
            sqlx::query(SQL)
                .bind(job.as_str())
                .fetch_all(pool)
                .await?
                .iter()
                .map(rows::step_result)
                .collect()
        })
    }
}
