//! What the rollout driver reads of its nodes' runs on every tick, for every run of a
//! rollout at once: whether each ended, and when.

use super::rows::Fields;
use super::{Pool, Store, StoreError};
use std::collections::HashMap;
use tollgate_domain::RunId;
use tollgate_domain::job::JobState;
use tollgate_domain::{JobId, Timestamp};

/// The jobs of the runs in `$1` (a JSON array of ids), with their run's end.
const SQL: (&str, &str) = in_json_list!(
    "SELECT j.run_id, j.id, j.state, r.finished_at
     FROM jobs j JOIN runs r ON r.id = j.run_id WHERE j.run_id",
    "$1",
    " ORDER BY j.run_id, j.id"
);

/// A rollout node's run as the driver sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunEnd {
    /// Its jobs' states (one job: a rollout's runs have one).
    pub jobs: Vec<(JobId, JobState)>,
    /// When the run finished, once it did.
    pub finished_at: Option<Timestamp>,
}

impl RunEnd {
    /// Whether the run ended, and if so whether every job passed.
    pub fn passed(&self) -> Option<bool> {
        if self.jobs.is_empty() || self.jobs.iter().any(|(_, state)| !state.is_terminal()) {
            return None;
        }
        Some(
            self.jobs
                .iter()
                .all(|(_, state)| *state == JobState::Passed),
        )
    }
}

impl Store {
    /// The jobs and end of each of `runs`, in one statement; a run without jobs is left out.
    pub async fn run_ends(&self, runs: &[RunId]) -> Result<HashMap<RunId, RunEnd>, StoreError> {
        let mut ends: HashMap<RunId, RunEnd> = HashMap::new();
        if runs.is_empty() {
            return Ok(ends);
        }
        let ids = super::json_list(runs.iter().map(RunId::as_str));
        let rows = with_pool_sql!(self, SQL, |pool, sql| {
            sqlx::query(sql)
                .bind(ids)
                .fetch_all(pool)
                .await?
                .iter()
                .map(row)
                .collect::<Result<Vec<_>, _>>()?
        });
        for (run, job, state, finished_at) in rows {
            let end = ends.entry(run).or_default();
            end.jobs.push((job, state));
            end.finished_at = finished_at;
        }
        Ok(ends)
    }
}

type Row = (RunId, JobId, JobState, Option<Timestamp>);

fn row(row: &impl super::rows::StoreRow) -> Result<Row, StoreError> {
    let f = Fields::new(row, "jobs", &["run_id", "id"]);
    Ok((
        RunId::from(f.text("run_id")?.as_str()),
        JobId::from(f.text("id")?.as_str()),
        f.parse("state")?,
        f.opt_time("finished_at")?,
    ))
}
