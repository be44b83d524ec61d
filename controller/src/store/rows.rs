//! Decoding rows into domain types, on either backend, with every failure reported as
//! [`StoreError::Corrupt`] naming the table, the column and the row.

use super::{JobRecord, RunPurpose, RunRecord, StoreError, StoredGate, StoredPlan};
use serde::de::DeserializeOwned;
use sqlx::{ColumnIndex, Decode, Row, Type};
use std::str::FromStr;
use tollgate_domain::fleet::{GpuSourceKind, Inventory, Labels, Node};
use tollgate_domain::gate::{Decision, GatePolicy};
use tollgate_domain::plan::Plan;
use tollgate_domain::release::{Component, Promotion};
use tollgate_domain::result::{Measurement, StepResult, SubResult};
use tollgate_domain::scheduler::PendingJob;
use tollgate_domain::telemetry::{GpuEvent, GpuTelemetry};
use tollgate_domain::{JobId, NodeId, PlanVersion, ReleaseId, RunId, Timestamp};

/// The column types Tollgate stores (text, 64-bit integers, timestamps), read from a row of
/// either backend; every NULL comes back as `None`.
pub(super) trait StoreRow {
    /// A text column.
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    /// An integer column.
    fn int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    /// A timestamp column.
    fn time(&self, column: &str) -> Result<Option<Timestamp>, sqlx::Error>;
}

impl<R> StoreRow for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'d> String: Decode<'d, R::Database> + Type<R::Database>,
    for<'d> i64: Decode<'d, R::Database> + Type<R::Database>,
    for<'d> Timestamp: Decode<'d, R::Database> + Type<R::Database>,
{
    fn text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(column)
    }

    fn int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(column)
    }

    fn time(&self, column: &str) -> Result<Option<Timestamp>, sqlx::Error> {
        self.try_get(column)
    }
}

/// One row of one table, with the key columns that name it in error messages.
pub(super) struct Fields<'r, R> {
    row: &'r R,
    table: &'static str,
    key_columns: &'static [&'static str],
}

impl<'r, R: StoreRow> Fields<'r, R> {
    /// Wraps `row` of `table`, named by its `key_columns` in errors.
    pub(super) fn new(
        row: &'r R,
        table: &'static str,
        key_columns: &'static [&'static str],
    ) -> Self {
        Self {
            row,
            table,
            key_columns,
        }
    }

    /// The row's key, its columns joined with '/'. Read only for an error message: decoding
    /// the key of every row of a large result set would cost for nothing.
    fn key(&self) -> String {
        let parts: Vec<String> = self
            .key_columns
            .iter()
            .map(|column| match self.row.text(column) {
                Ok(text) => text.unwrap_or_default(),
                // Integer parts of a composite key (step index, attempt) are not text.
                Err(_) => self
                    .row
                    .int(column)
                    .ok()
                    .flatten()
                    .map_or_else(|| String::from("?"), |value| value.to_string()),
            })
            .collect();
        parts.join("/")
    }

    fn corrupt(&self, column: &str, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            what: format!("{}.{} of row '{}'", self.table, column, self.key()),
            detail: detail.to_string(),
        }
    }

    fn required<T>(&self, column: &str, value: Option<T>) -> Result<T, StoreError> {
        value.ok_or_else(|| self.corrupt(column, "unexpected NULL"))
    }

    /// A nullable text column.
    pub(super) fn opt_text(&self, column: &'static str) -> Result<Option<String>, StoreError> {
        self.row
            .text(column)
            .map_err(|err| self.corrupt(column, err))
    }

    /// A non-null text column.
    pub(super) fn text(&self, column: &'static str) -> Result<String, StoreError> {
        let value = self.opt_text(column)?;
        self.required(column, value)
    }

    /// A nullable integer column that must fit `T` (an index, an attempt, an epoch).
    pub(super) fn opt_int_as<T: TryFrom<i64>>(
        &self,
        column: &'static str,
    ) -> Result<Option<T>, StoreError> {
        match self
            .row
            .int(column)
            .map_err(|err| self.corrupt(column, err))?
        {
            None => Ok(None),
            Some(value) => T::try_from(value).map(Some).map_err(|_| {
                self.corrupt(
                    column,
                    format!("{value} is out of range for {}", std::any::type_name::<T>()),
                )
            }),
        }
    }

    /// A non-null integer column that must fit `T`.
    pub(super) fn int_as<T: TryFrom<i64>>(&self, column: &'static str) -> Result<T, StoreError> {
        let value = self.opt_int_as(column)?;
        self.required(column, value)
    }

    /// A nullable timestamp column.
    pub(super) fn opt_time(&self, column: &'static str) -> Result<Option<Timestamp>, StoreError> {
        self.row
            .time(column)
            .map_err(|err| self.corrupt(column, err))
    }

    /// A non-null timestamp column.
    pub(super) fn time(&self, column: &'static str) -> Result<Timestamp, StoreError> {
        let value = self.opt_time(column)?;
        self.required(column, value)
    }

    /// A text column holding a JSON document of `T`.
    pub(super) fn json<T: DeserializeOwned>(&self, column: &'static str) -> Result<T, StoreError> {
        let text = self.text(column)?;
        serde_json::from_str(&text).map_err(|err| self.corrupt(column, err))
    }

    /// A text column holding a date, `YYYY-MM-DD`.
    pub(super) fn date(&self, column: &'static str) -> Result<chrono::NaiveDate, StoreError> {
        let text = self.text(column)?;
        text.parse().map_err(|err| self.corrupt(column, err))
    }

    /// A text column holding an enum's storage name.
    pub(super) fn parse<T: FromStr<Err = String>>(
        &self,
        column: &'static str,
    ) -> Result<T, StoreError> {
        let text = self.text(column)?;
        text.parse()
            .map_err(|err: String| self.corrupt(column, err))
    }
}

/// `nodes` joined with the node's active job as `current_job`.
pub(super) fn node(row: &impl StoreRow) -> Result<Node, StoreError> {
    let f = Fields::new(row, "nodes", &["name"]);
    Ok(Node {
        id: NodeId(f.text("name")?),
        labels: f.json::<Labels>("labels")?,
        reported_labels: f.json::<Labels>("reported_labels")?,
        state: f.parse("state")?,
        health: f.parse("health")?,
        health_reason: f.text("health_reason")?,
        inventory: f.json::<Inventory>("inventory")?,
        last_seen_at: f.opt_time("last_seen_at")?,
        current_job: f.opt_text("current_job")?.map(JobId),
    })
}

/// A `milestone_targets` row.
pub(super) fn milestone_target(
    row: &impl StoreRow,
) -> Result<tollgate_domain::target::MilestoneTarget, StoreError> {
    let f = Fields::new(row, "milestone_targets", &["release", "milestone"]);
    Ok(tollgate_domain::target::MilestoneTarget {
        milestone: f.text("milestone")?,
        target: f.date("target")?,
        reason: f.opt_text("reason")?,
        set_by: f.text("set_by")?,
        set_at: f.time("set_at")?,
    })
}

/// An `issues` row, without its releases and nodes (read from their own tables).
pub(super) fn issue(row: &impl StoreRow) -> Result<tollgate_domain::issue::Issue, StoreError> {
    let f = Fields::new(row, "issues", &["id"]);
    let state = tollgate_domain::issue::IssueState::from_parts(
        &f.text("state")?,
        f.opt_text("fix_release")?.as_deref(),
        f.opt_text("reason")?.as_deref(),
    )
    .map_err(|err| f.corrupt("state", err))?;
    Ok(tollgate_domain::issue::Issue {
        id: f.int_as("id")?,
        signature: tollgate_domain::issue::Signature {
            kind: f.text("kind")?,
            text: f.text("text")?,
        },
        title: f.text("title")?,
        severity: f.opt_text("severity")?,
        owner: f.opt_text("owner")?,
        tickets: f.json("tickets")?,
        customers: Default::default(),
        state,
        releases: Default::default(),
        nodes: Default::default(),
        evidence: f.opt_text("evidence")?,
        opened_at: f.time("opened_at")?,
        updated_at: f.time("updated_at")?,
    })
}

/// An `issue_history` row.
pub(super) fn issue_history(
    row: &impl StoreRow,
) -> Result<tollgate_domain::issue::IssueHistory, StoreError> {
    let f = Fields::new(row, "issue_history", &["seq"]);
    Ok(tollgate_domain::issue::IssueHistory {
        at: f.time("at")?,
        actor: f.text("actor")?,
        action: f.text("action")?,
        state: f.text("state")?,
        detail: f.text("detail")?,
    })
}

/// The order key of a row listed newest or oldest first: `created_at`, then `seq`.
pub(super) fn created_key(
    row: &impl StoreRow,
    table: &'static str,
) -> Result<super::CreatedKey, StoreError> {
    let f = Fields::new(row, table, &["seq"]);
    Ok((f.time("created_at")?, f.int_as("seq")?))
}

/// A `releases` row, without its promotions.
pub(super) fn release(
    row: &impl StoreRow,
) -> Result<tollgate_domain::release::Release, StoreError> {
    let f = Fields::new(row, "releases", &["name"]);
    Ok(tollgate_domain::release::Release {
        id: ReleaseId(f.text("name")?),
        description: f.text("description")?,
        components: f.json::<Vec<Component>>("components")?,
        milestone: f.text("milestone")?,
        created_at: f.time("created_at")?,
        promotions: Vec::new(),
    })
}

/// A `promotions` row.
pub(super) fn promotion(row: &impl StoreRow) -> Result<Promotion, StoreError> {
    let f = Fields::new(row, "promotions", &["release", "to_milestone"]);
    Ok(Promotion {
        from_milestone: f.text("from_milestone")?,
        to_milestone: f.text("to_milestone")?,
        at: f.time("promoted_at")?,
        decision_digest: f.text("decision_digest")?,
        actor: f.text("actor")?,
    })
}

/// A `plans` row.
pub(super) fn plan(row: &impl StoreRow) -> Result<StoredPlan, StoreError> {
    let f = Fields::new(row, "plans", &["name", "version"]);
    Ok(StoredPlan {
        plan: f.json::<Plan>("spec")?,
        version: PlanVersion(f.text("version")?),
        source: f.text("source")?,
        created_at: f.time("created_at")?,
    })
}

/// A `gates` row.
pub(super) fn gate(row: &impl StoreRow) -> Result<StoredGate, StoreError> {
    let f = Fields::new(row, "gates", &["milestone", "version"]);
    Ok(StoredGate {
        policy: f.json::<GatePolicy>("policy")?,
        version: f.text("version")?,
        source: f.text("source")?,
        created_at: f.time("created_at")?,
    })
}

/// A `runs` row.
pub(super) fn run(row: &impl StoreRow) -> Result<RunRecord, StoreError> {
    let f = Fields::new(row, "runs", &["id"]);
    Ok(RunRecord {
        id: RunId(f.text("id")?),
        release: ReleaseId(f.text("release")?),
        plan_name: f.text("plan_name")?,
        plan_version: PlanVersion(f.text("plan_version")?),
        milestone: f.text("milestone")?,
        state: f.parse("state")?,
        created_at: f.time("created_at")?,
        finished_at: f.opt_time("finished_at")?,
        purpose: f.parse("purpose")?,
    })
}

/// A `jobs` row.
pub(super) fn job(row: &impl StoreRow) -> Result<JobRecord, StoreError> {
    let f = Fields::new(row, "jobs", &["id"]);
    Ok(JobRecord {
        id: JobId(f.text("id")?),
        run_id: RunId(f.text("run_id")?),
        node: NodeId(f.text("node")?),
        state: f.parse("state")?,
        lease_epoch: f.int_as("lease_epoch")?,
        created_at: f.time("created_at")?,
        updated_at: f.time("updated_at")?,
        attempt: f.int_as("attempt")?,
        rescheduled_from: f.opt_text("rescheduled_from")?.map(JobId),
    })
}

/// A `step_results` row.
pub(super) fn step_result(row: &impl StoreRow) -> Result<StepResult, StoreError> {
    let f = Fields::new(
        row,
        "step_results",
        &["job_id", "step_index", "attempt", "lease_epoch"],
    );
    let mut result = step_result_without_series(&f)?;
    result.series = f.json::<Vec<tollgate_domain::telemetry::TelemetrySeries>>("series")?;
    Ok(result)
}

/// Every column of a `step_results` row but its series (left empty).
fn step_result_without_series<R: StoreRow>(f: &Fields<'_, R>) -> Result<StepResult, StoreError> {
    Ok(StepResult {
        telemetry: f.json::<Vec<GpuTelemetry>>("telemetry")?,
        events: f.json::<Vec<GpuEvent>>("events")?,
        inventory: f.json::<Inventory>("inventory")?,
        log_tail: f.text("log_tail")?,
        inventory_at_end: f.json::<Option<Inventory>>("inventory_at_end")?,
        ..summary_columns(f)?
    })
}

/// A `step_results` row read by [`result_summary_query!`]: what a result summary shows and a
/// job's state is decided from (keys, outcome, times, message, measurements, tests). Its
/// telemetry, events, inventories, series and log tail are left empty: never use it as
/// evidence or in a report.
pub(super) fn step_result_summary(row: &impl StoreRow) -> Result<StepResult, StoreError> {
    summary_columns(&Fields::new(
        row,
        "step_results",
        &["job_id", "step_index", "attempt", "lease_epoch"],
    ))
}

/// The columns [`result_summary_query!`] selects, the others left empty.
fn summary_columns<R: StoreRow>(f: &Fields<'_, R>) -> Result<StepResult, StoreError> {
    Ok(StepResult {
        job_id: JobId(f.text("job_id")?),
        step_index: f.int_as("step_index")?,
        step_name: f.text("step_name")?,
        attempt: f.int_as("attempt")?,
        lease_epoch: f.int_as("lease_epoch")?,
        outcome: f.parse("outcome")?,
        exit_code: f.opt_int_as("exit_code")?,
        started_at: f.time("started_at")?,
        finished_at: f.time("finished_at")?,
        measurements: f.json::<Vec<Measurement>>("measurements")?,
        telemetry: Vec::new(),
        events: Vec::new(),
        inventory: Inventory::default(),
        log_tail: String::new(),
        message: f.text("message")?,
        sub_results: f.json::<Vec<SubResult>>("sub_results")?,
        inventory_at_end: None,
        series: Vec::new(),
    })
}

/// A `step_results` row as gate evidence with its stored digest: everything but the series,
/// which gates never read, unless the row has no digest (stored before digests were), when
/// the gate digests the whole result itself.
pub(super) fn evidence_result(
    row: &impl StoreRow,
) -> Result<(StepResult, Option<[u8; 32]>), StoreError> {
    let digest = result_digest(row)?;
    let f = Fields::new(
        row,
        "step_results",
        &["job_id", "step_index", "attempt", "lease_epoch"],
    );
    let mut result = step_result_without_series(&f)?;
    if digest.is_none() {
        result.series = f.json::<Vec<tollgate_domain::telemetry::TelemetrySeries>>("series")?;
    }
    // Decoded lists grow by doubling, and a gate keeps its evidence cached for as long as it
    // is evaluated: give back the spare capacity (a GPU's 24 field summaries sit in room for
    // 32).
    for gpu in &mut result.telemetry {
        gpu.fields.shrink_to_fit();
    }
    Ok((result, digest))
}

/// A `step_results` row with only the series of the `charted` fields parsed: a result holds a
/// series per GPU and field (a hundred points each), and a report charts two fields, so the
/// others are skipped unparsed.
pub(super) fn step_result_charted(
    row: &impl StoreRow,
    charted: &[tollgate_domain::telemetry::Field],
) -> Result<StepResult, StoreError> {
    /// A series whose points are left unparsed until it is known to be wanted.
    #[derive(serde::Deserialize)]
    struct Unparsed<'a> {
        gpu_index: u32,
        field: tollgate_domain::telemetry::Field,
        bucket_ms: u64,
        #[serde(borrow)]
        points: &'a serde_json::value::RawValue,
    }
    let f = Fields::new(
        row,
        "step_results",
        &["job_id", "step_index", "attempt", "lease_epoch"],
    );
    let text = f.text("series")?;
    let unparsed: Vec<Unparsed<'_>> =
        serde_json::from_str(&text).map_err(|err| f.corrupt("series", err))?;
    let mut series = Vec::new();
    for one in unparsed.into_iter().filter(|s| charted.contains(&s.field)) {
        series.push(tollgate_domain::telemetry::TelemetrySeries {
            gpu_index: one.gpu_index,
            field: one.field,
            bucket_ms: one.bucket_ms,
            points: serde_json::from_str(one.points.get())
                .map_err(|err| f.corrupt("series", err))?,
        });
    }
    let mut result = step_result_without_series(&f)?;
    result.series = series;
    Ok(result)
}

/// The digest stored with a `step_results` row; `None` for rows stored before digests were.
pub(super) fn result_digest(row: &impl StoreRow) -> Result<Option<[u8; 32]>, StoreError> {
    let f = Fields::new(
        row,
        "step_results",
        &["job_id", "step_index", "attempt", "lease_epoch"],
    );
    f.opt_text("digest")?
        .map(|hex_digest| {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(&hex_digest, &mut digest)
                .map_err(|err| f.corrupt("digest", err))?;
            Ok(digest)
        })
        .transpose()
}

/// A `decisions` row: the stored document.
pub(super) fn decision(row: &impl StoreRow) -> Result<Decision, StoreError> {
    let f = Fields::new(row, "decisions", &["release", "milestone", "digest"]);
    f.json::<Decision>("decision")
}

/// What `load_evidence` needs of a job: the job, its node's labels and GPU source.
pub(super) struct EvidenceJob {
    pub(super) id: JobId,
    pub(super) run_id: RunId,
    pub(super) node: NodeId,
    pub(super) state: tollgate_domain::job::JobState,
    pub(super) labels: Labels,
    pub(super) gpu_source: GpuSourceKind,
    pub(super) rescheduled_from: Option<JobId>,
}

/// `jobs` joined with `nodes` for evidence.
pub(super) fn evidence_job(row: &impl StoreRow) -> Result<EvidenceJob, StoreError> {
    let f = Fields::new(row, "jobs", &["id"]);
    Ok(EvidenceJob {
        id: JobId(f.text("id")?),
        run_id: RunId(f.text("run_id")?),
        node: NodeId(f.text("node")?),
        state: f.parse("state")?,
        labels: f.json::<Labels>("labels")?,
        gpu_source: f.parse("gpu_source")?,
        rescheduled_from: f.opt_text("rescheduled_from")?.map(JobId),
    })
}

/// What `load_evidence` needs of a run: the run and its pinned plan's spec.
pub(super) struct EvidenceRun {
    pub(super) id: RunId,
    pub(super) plan_name: String,
    pub(super) plan_version: PlanVersion,
    pub(super) created_at: Timestamp,
    pub(super) plan: Plan,
}

/// `runs` joined with `plans` for evidence.
pub(super) fn evidence_run(row: &impl StoreRow) -> Result<EvidenceRun, StoreError> {
    let f = Fields::new(row, "runs", &["id"]);
    Ok(EvidenceRun {
        id: RunId(f.text("id")?),
        plan_name: f.text("plan_name")?,
        plan_version: PlanVersion(f.text("plan_version")?),
        created_at: f.time("created_at")?,
        plan: f.json::<Plan>("spec")?,
    })
}

/// A pending `jobs` row as the scheduler sees it.
pub(super) fn pending_job(row: &impl StoreRow) -> Result<PendingJob, StoreError> {
    let f = Fields::new(row, "jobs", &["id"]);
    Ok(PendingJob {
        job: JobId(f.text("id")?),
        run: RunId(f.text("run_id")?),
        node: NodeId(f.text("node")?),
        created_at: f.time("created_at")?,
        health_check: f.text("purpose")? == RunPurpose::Health.as_str(),
        rollout: f.text("purpose")? == RunPurpose::Rollout.as_str(),
    })
}

/// A `rollouts` row.
pub(super) fn rollout(row: &impl StoreRow) -> Result<super::RolloutRecord, StoreError> {
    let f = Fields::new(row, "rollouts", &["id"]);
    Ok(super::RolloutRecord {
        id: tollgate_domain::RolloutId(f.text("id")?),
        release: ReleaseId(f.text("release")?),
        fleet: f.text("fleet")?,
        file: f.text("file")?,
        digest: f.text("digest")?,
        spec: f.json("spec")?,
        waves: f.json("waves")?,
        state: f.json("state")?,
        version: f.int_as("version")?,
        created_by: f.text("created_by")?,
        created_at: f.time("created_at")?,
        updated_at: f.time("updated_at")?,
    })
}

/// A `rollout_nodes` row.
pub(super) fn rollout_progress_count(
    row: &impl StoreRow,
) -> Result<
    (
        tollgate_domain::RolloutId,
        tollgate_domain::rollout::NodeProgress,
        usize,
    ),
    StoreError,
> {
    let f = Fields::new(row, "rollout_nodes", &["rollout_id", "progress"]);
    Ok((
        tollgate_domain::RolloutId(f.text("rollout_id")?),
        f.parse("progress")?,
        f.int_as("n")?,
    ))
}

pub(super) fn procedure_times(row: &impl StoreRow) -> Result<super::ProcedureTimes, StoreError> {
    let f = Fields::new(row, "rollout_nodes", &["node"]);
    Ok(super::ProcedureTimes {
        node: NodeId(f.text("node")?),
        started_at: f.time("created_at")?,
        finished_at: f.opt_time("finished_at")?,
    })
}

pub(super) fn rollout_node(row: &impl StoreRow) -> Result<super::RolloutNode, StoreError> {
    let f = Fields::new(row, "rollout_nodes", &["node"]);
    Ok(super::RolloutNode {
        node: NodeId(f.text("node")?),
        wave: f.int_as("wave")?,
        progress: f.parse("progress")?,
        run: f.opt_text("run_id")?.map(RunId),
        rollback_run: f.opt_text("rollback_run_id")?.map(RunId),
        since: f.time("updated_at")?,
    })
}
