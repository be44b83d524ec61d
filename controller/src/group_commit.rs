//! Group commit of step results (and, on SQLite, job changes and node registrations): a
//! write that arrives while
//! another batch commits waits, and the next writer applies every waiting write in one
//! transaction ([`Store::write_batch`]), each with its own outcome. Nothing waits for
//! company: a lone write is applied at once.
//!
//! SQLite has one writer and every commit waits for its fsync, so writes of one transaction
//! each queue behind each other's fsyncs: with a thousand agents reporting at once most of a
//! result's time was spent waiting for the write lock. There a batch is a savepoint per write,
//! but for its registrations, applied first and together (a statement per hundred new nodes,
//! one per hundred known ones, one for their heartbeats: `register_together!` in
//! `store/results.rs`), each still with its own outcome.
//! PostgreSQL commits concurrent transactions in parallel, and a batch of savepoints was
//! slower there than a transaction per result (it serialized the batch's statements on one
//! connection); there a batch of results is written set-based instead, a few statements
//! whatever its size (`store/result_batch.rs`), so the statements and the commit flush are
//! shared. Job changes on PostgreSQL stay one transaction each: they are few, and the
//! scheduler's must not wait behind results.
//!
//! A result is checked and encoded (its JSON columns and digest: most of its write's work) by
//! its caller before it waits ([`EncodedRow`]), once however many times it is decided, so
//! that this runs beside the batch being written rather than inside the next one's turn.
//!
//! **Invariant:** a write is answered only after the transaction that holds it committed; a
//! batch that fails as a whole is written again one write at a time, so each gets its own
//! error.

use crate::store::{EncodedRegistration, EncodedRow, Recorded, Store, StoreError, Write};
use std::sync::Arc;
use tokio::sync::oneshot;
use tollgate_domain::Timestamp;
use tollgate_domain::job::{JobChange, ResultChange};

/// The most results one transaction takes.
const MAX_BATCH: usize = 256;

/// What waits for a writer.
enum Owned {
    Result(Arc<EncodedRow>, Box<ResultChange>),
    Job(JobChange),
    Registration(Box<EncodedRegistration>),
}

impl Owned {
    fn as_write(&self, now: Timestamp) -> Write<'_> {
        match self {
            Self::Result(row, change) => Write::Encoded(row, change, now),
            Self::Job(change) => Write::Job(change, now),
            Self::Registration(registration) => Write::Registration(registration, now),
        }
    }

    async fn write_alone(&self, store: &Store, now: Timestamp) -> Result<Recorded, StoreError> {
        match self {
            Self::Result(row, change) => store.write_one(Write::Encoded(row, change, now)).await,
            Self::Job(change) => store
                .apply_job_change(change, now)
                .await
                .map(|()| Recorded::Inserted),
            Self::Registration(registration) => store
                .register_node(registration, now)
                .await
                .map(|()| Recorded::Inserted),
        }
    }
}

/// A write waiting for a writer.
struct Waiting {
    write: Owned,
    now: Timestamp,
    reply: oneshot::Sender<Result<Recorded, StoreError>>,
}

/// The results waiting to be written and the turn to write them.
#[derive(Default)]
pub struct GroupCommit {
    waiting: std::sync::Mutex<Vec<Waiting>>,
    /// Held by the writer of the batch in flight. One batch at a time on PostgreSQL too:
    /// results arriving meanwhile make the next batch larger, and a larger batch costs less
    /// per result (its statements and commit are shared), where batches in parallel each
    /// took about one result (`pg-ingest-bench`, BENCHMARKS.md).
    turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// [`Store::record_result`] of the result encoded as `row`, batched with the results
    /// (and on SQLite the job changes) that arrive meanwhile.
    pub async fn record(
        &self,
        store: &Store,
        row: &Arc<EncodedRow>,
        change: &ResultChange,
        now: Timestamp,
    ) -> Result<Recorded, StoreError> {
        let write = Owned::Result(Arc::clone(row), Box::new(change.clone()));
        match self.write(store, write, now).await {
            Some(outcome) => outcome,
            // Its writer stopped without answering (it panicked): whether it was applied is
            // unknown, and recording it again says (a duplicate is acknowledged as one).
            None => store.write_one(Write::Encoded(row, change, now)).await,
        }
    }

    /// [`Store::apply_job_change`], batched with the writes that arrive meanwhile on SQLite.
    pub async fn apply(
        &self,
        store: &Store,
        change: &JobChange,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if store.backend() != "sqlite" {
            return store.apply_job_change(change, now).await;
        }
        match self.write(store, Owned::Job(change.clone()), now).await {
            Some(outcome) => outcome.map(|_| ()),
            // Its writer stopped without answering (it panicked): whether it was applied is
            // unknown, and applying it again says (one applied already is a conflict).
            None => store.apply_job_change(change, now).await,
        }
    }

    /// [`Store::register_node`], batched with the writes that arrive meanwhile on SQLite:
    /// when thousands of agents reconnect at once, their registrations share commits.
    pub async fn register(
        &self,
        store: &Store,
        registration: EncodedRegistration,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if store.backend() != "sqlite" {
            return store.register_node(&registration, now).await;
        }
        let retry = registration.clone();
        match self
            .write(store, Owned::Registration(Box::new(registration)), now)
            .await
        {
            Some(outcome) => outcome.map(|_| ()),
            // Its writer stopped without answering (it panicked): whether it was applied is
            // unknown, and applying it again says (one applied already is a conflict).
            None => store.register_node(&retry, now).await,
        }
    }

    /// Queues `write` and waits for its outcome, writing the batch it is in when the turn
    /// comes before the outcome; `None` when the writer that took it stopped without
    /// answering.
    async fn write(
        &self,
        store: &Store,
        write: Owned,
        now: Timestamp,
    ) -> Option<Result<Recorded, StoreError>> {
        let (reply, mut answer) = oneshot::channel();
        self.lock_waiting().push(Waiting { write, now, reply });
        loop {
            let turn = tokio::select! {
                biased;
                outcome = &mut answer => return outcome.ok(),
                turn = self.turn.lock() => turn,
            };
            let batch: Vec<Waiting> = {
                let mut waiting = self.lock_waiting();
                let n = waiting.len().min(MAX_BATCH);
                waiting.drain(..n).collect()
            };
            if batch.is_empty() {
                // Every waiting write, this one too, was taken by the batch just written.
                drop(turn);
                return answer.await.ok();
            }
            // Written by its own task: a caller that goes away mid-write (its client hung up)
            // must not cancel the others' transaction.
            let written = tokio::spawn(write_batch(store.clone(), batch)).await;
            drop(turn);
            if let Err(error) = written {
                tracing::error!(%error, "a batch of writes could not be applied");
            }
        }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Applies `batch` in one transaction and answers each write; when the transaction fails as
/// a whole, applies each alone so that each gets its own outcome.
async fn write_batch(store: Store, batch: Vec<Waiting>) {
    if batch.is_empty() {
        return;
    }
    let writes: Vec<Write<'_>> = batch
        .iter()
        .map(|waiting| waiting.write.as_write(waiting.now))
        .collect();
    let outcomes = store.write_batch(&writes).await;
    drop(writes);
    match outcomes {
        Ok(outcomes) if outcomes.len() == batch.len() => {
            for (waiting, outcome) in batch.into_iter().zip(outcomes) {
                // The caller may have gone; its write is applied all the same.
                let _ = waiting.reply.send(outcome);
            }
        }
        Ok(_) | Err(_) => {
            if batch.len() > 1 {
                tracing::debug!(
                    n = batch.len(),
                    "a batch of writes failed as a whole; applying each alone"
                );
            }
            for waiting in batch {
                let outcome = waiting.write.write_alone(&store, waiting.now).await;
                let _ = waiting.reply.send(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        AuditNote, JobRecord, Pool, Registration, RunPurpose, RunRecord, RunState, testing,
    };
    use std::time::Duration;
    use tollgate_domain::fleet::NodeState;
    use tollgate_domain::job::JobState;
    use tollgate_domain::result::Outcome;
    use tollgate_domain::result::StepResult;
    use tollgate_domain::test_support::{self as ts, at};
    use tollgate_domain::{JobId, NodeId, RunId};

    /// A running run with a running job (`job-<node>`, epoch 1) on each of `nodes`.
    async fn running_jobs(store: &Store, nodes: &[&str]) {
        let release = ts::release();
        let setup = AuditNote::new(at(0), "test", "test.setup", "test");
        store
            .create_release(&release, &setup)
            .await
            .expect("release");
        let plan = ts::plan_for("hgx-h100");
        store
            .put_plan(&plan, "steps: []", at(0), &setup)
            .await
            .expect("plan");
        for name in nodes {
            let node = ts::node(name, "hgx-h100");
            crate::grpc::node::register(
                store,
                &node.id,
                &node.labels,
                &node.inventory,
                "token-hash",
                at(0),
            )
            .await
            .expect("register");
        }
        let run = RunRecord {
            id: RunId::from("run-1"),
            release: release.id.clone(),
            plan_name: plan.name.clone(),
            plan_version: plan.version(),
            milestone: "lab-qual".into(),
            state: RunState::Running,
            created_at: at(0),
            finished_at: None,
            purpose: RunPurpose::Qualification,
        };
        let jobs: Vec<JobRecord> = nodes
            .iter()
            .map(|name| JobRecord {
                state: JobState::Running,
                lease_epoch: 1,
                ..JobRecord::first_pending(
                    JobId::from(format!("job-{name}")),
                    &run,
                    NodeId::from(*name),
                    at(0),
                )
            })
            .collect();
        store.create_run(&run, &jobs, &setup).await.expect("run");
    }

    /// The first result of `job-<node>`, which leaves it running.
    fn first_result(node: &str) -> (StepResult, ResultChange) {
        // With every kind of part a result's columns hold, so that a result written from its
        // encoded row is seen to keep them.
        let result = StepResult {
            job_id: JobId::from(format!("job-{node}")),
            log_tail: "dcgmi diag: pass\n".to_owned(),
            message: "all tests passed".to_owned(),
            ..ts::step_result(0, 1, Outcome::Passed)
        };
        let result = ts::with_measurement(result, "membw_gbps", 2_000.0);
        let result =
            ts::with_telemetry(result, 0, tollgate_domain::telemetry::Field::GpuTempC, 80.0);
        let result = ts::with_xid(result, 0, 79);
        let change = ResultChange {
            job: JobChange {
                job: result.job_id.clone(),
                from: JobState::Running,
                from_epoch: 1,
                to: JobState::Running,
                to_epoch: 1,
                node: None,
                reschedule: None,
            },
            results_before: 0,
        };
        (result, change)
    }

    /// Makes the database itself refuse every result of `job-n2` (a trigger), so that a
    /// batch holding one fails as a whole on either backend.
    async fn refuse_results_of_n2(store: &Store) {
        match store.pool() {
            Pool::Sqlite(pool) => sqlx::raw_sql(
                "CREATE TRIGGER refuse_n2 BEFORE INSERT ON step_results
                 WHEN NEW.job_id = 'job-n2'
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
            )
            .execute(pool)
            .await
            .map(drop),
            Pool::Postgres(pool) => sqlx::raw_sql(
                "CREATE FUNCTION refuse_n2() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                     IF NEW.job_id = 'job-n2' THEN RAISE EXCEPTION 'refused by the test'; END IF;
                     RETURN NEW;
                 END $$;
                 CREATE TRIGGER refuse_n2 BEFORE INSERT ON step_results
                 FOR EACH ROW EXECUTE FUNCTION refuse_n2();",
            )
            .execute(pool)
            .await
            .map(drop),
        }
        .expect("trigger created");
    }

    /// Releases `turn` (held as a batch in flight would hold it) once `n` writes wait for
    /// the next batch, then the outcomes of `tasks`, in order.
    async fn outcomes_once_waiting<T>(
        group_commit: &GroupCommit,
        turn: tokio::sync::MutexGuard<'_, ()>,
        n: usize,
        tasks: Vec<tokio::task::JoinHandle<T>>,
    ) -> Vec<T> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while group_commit.lock_waiting().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the {n} writes never all waited"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(turn);
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.expect("the task ran"));
        }
        outcomes
    }

    /// Agents registering the same new node at once, each decided from the store not knowing
    /// it and each with its own token, wait for one batch: the first is applied, every other
    /// loses the insert, finds the node claimed when it decides again and is refused, and the
    /// node keeps the first one's token (no later claimant takes the name over, nor leaves
    /// the first agent holding a token the controller no longer accepts).
    #[tokio::test]
    async fn of_agents_claiming_a_new_node_at_once_one_gets_it_and_keeps_it() {
        use crate::grpc::node::{Claim, NodeChangeError, register_reported};
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/tollgate.db", dir.path().display());
        let store = Store::connect(&url).await.expect("sqlite store");
        let group_commit = Arc::new(GroupCommit::default());
        let turn = group_commit.turn.lock().await;
        let node = ts::node("n1", "hgx-h100");
        let unknown = crate::store::RegistrationFacts::default();
        let mut tasks = Vec::new();
        for agent in 0..4 {
            let (group_commit, store) = (group_commit.clone(), store.clone());
            let (node, unknown) = (node.clone(), unknown.clone());
            tasks.push(tokio::spawn(async move {
                register_reported(
                    &store,
                    Some(&group_commit),
                    Some(&unknown),
                    Claim::Token,
                    &node.id,
                    &node.labels,
                    &node.labels,
                    &node.inventory,
                    &format!("hash-of-agent-{agent}"),
                    at(10),
                )
                .await
            }));
        }
        let outcomes = outcomes_once_waiting(&group_commit, turn, 4, tasks).await;
        let winners: Vec<usize> = (0..outcomes.len())
            .filter(|&agent| outcomes[agent].is_ok())
            .collect();
        assert_eq!(winners.len(), 1, "{outcomes:?}");
        for (agent, outcome) in outcomes.iter().enumerate() {
            if agent != winners[0] {
                assert!(
                    matches!(outcome, Err(NodeChangeError::Claimed { node }) if node.as_str() == "n1"),
                    "agent {agent}: {outcome:?}"
                );
            }
        }
        let facts = store.registration_facts(&node.id).await.expect("read");
        assert_eq!(
            facts.token_hash,
            Some(format!("hash-of-agent-{}", winners[0])),
            "the node keeps its first claimant's token"
        );
    }

    /// Three results wait while a batch commits and are taken as one batch; the database
    /// refuses one of them, which fails the batch as a whole. Each is then written alone:
    /// the refused one gets its own error, the other two are stored and acknowledged.
    async fn a_batch_that_fails_whole_is_written_one_at_a_time(store: &Store) {
        running_jobs(store, &["n1", "n2", "n3"]).await;
        refuse_results_of_n2(store).await;
        let group_commit = Arc::new(GroupCommit::default());
        // Held as a batch in flight would hold it, so that all three wait for the next turn.
        let turn = group_commit.turn.lock().await;
        let mut tasks = Vec::new();
        for node in ["n1", "n2", "n3"] {
            let (group_commit, store) = (group_commit.clone(), store.clone());
            tasks.push(tokio::spawn(async move {
                let (result, change) = first_result(node);
                group_commit
                    .record(&store, &Arc::new(EncodedRow::new(&result)), &change, at(10))
                    .await
            }));
        }
        let outcomes = outcomes_once_waiting(&group_commit, turn, 3, tasks).await;
        assert!(
            matches!(outcomes[0], Ok(Recorded::Inserted)),
            "{outcomes:?}"
        );
        assert!(
            matches!(&outcomes[1], Err(StoreError::Database(error)) if error.to_string().contains("refused by the test")),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[2], Ok(Recorded::Inserted)),
            "{outcomes:?}"
        );
        for (node, n_results) in [("n1", 1), ("n2", 0), ("n3", 1)] {
            let job = JobId::from(format!("job-{node}"));
            let stored = store.results_of_job(&job).await.expect("results");
            assert_eq!(stored.len(), n_results, "{node}");
            // Written alone from its encoded row: whole, telemetry and events included.
            if n_results == 1 {
                assert_eq!(stored, [first_result(node).0], "{node}");
            }
        }
    }

    /// Registrations that wait while a batch commits (thousands of agents reconnecting at
    /// once) are taken into one batch with a result that waits beside them; one decided from
    /// a state its node has left is refused alone (its savepoint rolled back), the others are
    /// applied with their last heartbeat. Registrations are batched on SQLite only.
    #[tokio::test]
    async fn registrations_waiting_together_share_a_batch_each_with_its_own_outcome() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/tollgate.db", dir.path().display());
        let store = Store::connect(&url).await.expect("sqlite store");
        running_jobs(&store, &["n1"]).await;
        let before = store.get_node(&NodeId::from("n1")).await.expect("read");
        let before = before.expect("n1 registered");
        let group_commit = Arc::new(GroupCommit::default());
        let turn = group_commit.turn.lock().await;
        let registration = |name: &str, registration: Registration| {
            let node = ts::node(name, "hgx-h100");
            EncodedRegistration::new(
                &node.id,
                &node.labels,
                &node.labels,
                &node.inventory,
                "token-hash",
                registration,
            )
        };
        let stale = Registration::Known {
            from: NodeState::Unreachable,
            to: NodeState::Ready,
            stored_token_hash: "token-hash".to_owned(),
        };
        let mut tasks = Vec::new();
        for encoded in [
            registration("n2", Registration::New(NodeState::Ready)),
            registration("n1", stale),
            registration("n3", Registration::New(NodeState::Ready)),
        ] {
            let (group_commit, store) = (group_commit.clone(), store.clone());
            tasks.push(tokio::spawn(async move {
                group_commit
                    .register(&store, encoded, at(10))
                    .await
                    .map(|()| Recorded::Inserted)
            }));
        }
        {
            let (group_commit, store) = (group_commit.clone(), store.clone());
            tasks.push(tokio::spawn(async move {
                let (result, change) = first_result("n1");
                group_commit
                    .record(&store, &Arc::new(EncodedRow::new(&result)), &change, at(10))
                    .await
            }));
        }
        let outcomes = outcomes_once_waiting(&group_commit, turn, 4, tasks).await;
        assert!(
            matches!(outcomes[0], Ok(Recorded::Inserted)),
            "{outcomes:?}"
        );
        assert!(
            matches!(&outcomes[1], Err(StoreError::Conflict { detail, .. }) if detail.contains("expected state unreachable")),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[2], Ok(Recorded::Inserted)),
            "{outcomes:?}"
        );
        assert!(
            matches!(outcomes[3], Ok(Recorded::Inserted)),
            "{outcomes:?}"
        );
        for name in ["n2", "n3"] {
            let node = store.get_node(&NodeId::from(name)).await.expect("read");
            let node = node.expect("registered");
            assert_eq!(node.state, NodeState::Ready, "{name}");
            assert_eq!(node.last_seen_at, Some(at(10)), "{name}");
        }
        let after = store.get_node(&NodeId::from("n1")).await.expect("read");
        let after = after.expect("n1 still there");
        assert_eq!(
            after.last_seen_at, before.last_seen_at,
            "the refused one wrote nothing"
        );
        let job = JobId::from("job-n1");
        let stored = store.results_of_job(&job).await.expect("results");
        assert_eq!(stored.len(), 1, "the result beside them was stored");
        store.close().await;
    }

    #[tokio::test]
    async fn a_batch_that_fails_whole_is_written_one_at_a_time_sqlite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/tollgate.db", dir.path().display());
        let store = Store::connect(&url).await.expect("sqlite store");
        a_batch_that_fails_whole_is_written_one_at_a_time(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn a_batch_that_fails_whole_is_written_one_at_a_time_postgres() {
        let Some(base) = testing::postgres_url_or_skip() else {
            return;
        };
        let url = testing::fresh_postgres_url(&base)
            .await
            .expect("fresh postgres schema");
        let store = Store::connect(&url).await.expect("postgres store");
        a_batch_that_fails_whole_is_written_one_at_a_time(&store).await;
        store.close().await;
        testing::drop_postgres_schema(&url)
            .await
            .expect("drop test schema");
    }
}
