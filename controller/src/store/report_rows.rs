//! The evidence of a report, read node by node: the jobs of a release's latest runs (with
//! their nodes), then their results a page of nodes at a time, so a report of any fleet holds
//! one page in memory. Everything is read in one snapshot.

use super::connect::Begin as _;
use super::rows::{self, Fields, StoreRow};
use super::{Pool, Store, StoreError};
use std::collections::HashMap;
use tokio::sync::mpsc;
use tollgate_domain::fleet::{Inventory, Labels, Node};
use tollgate_domain::gate::{JobEvidence, RunEvidence};
use tollgate_domain::result::StepResult;
use tollgate_domain::{JobId, NodeId, ReleaseId, RunId};

/// The columns of a result, as `rows::step_result` reads them; `$series` is the `series`
/// column, or an empty list in its place when the report draws no chart.
macro_rules! result_columns {
    ($series:expr) => {
        concat!(
            "SELECT job_id, step_index, attempt, lease_epoch, step_name, outcome, exit_code,
                    started_at, finished_at, measurements, telemetry, events, inventory,
                    log_tail, message, sub_results, inventory_at_end, ",
            $series,
            " FROM step_results"
        )
    };
}

/// One node's part of the evidence, as a report reads it.
#[derive(Debug, Clone)]
pub struct NodeEvidence {
    /// The node.
    pub node: NodeId,
    /// The node as registered now (labels, state, health, registered inventory); `None` when
    /// it is not registered.
    pub registered: Option<Node>,
    /// Its jobs in the evidence, each with its run and every result.
    pub jobs: Vec<NodeJob>,
}

/// A job of a node, with the run it belongs to.
#[derive(Debug, Clone)]
pub struct NodeJob {
    /// The run.
    pub run_id: RunId,
    /// The job and its results.
    pub job: JobEvidence,
}

/// What [`Store::read_report_evidence`] sends, in this order: the runs once, then pages of
/// nodes by name.
#[derive(Debug)]
pub enum ReportRows {
    /// The runs the evidence comes from (their `jobs` left empty), by plan name.
    Runs(Vec<RunEvidence>),
    /// The next nodes, by name, each with its jobs (by plan name, run, job) and results (by
    /// step index, attempt, lease epoch).
    Nodes(Vec<NodeEvidence>),
}

/// A job row with its node's current registration.
struct ReportJob {
    run_id: RunId,
    rescheduled_from: Option<JobId>,
    plan_name: String,
    job: JobEvidence,
    registered: Node,
}

const RUNS: &str = concat!(
    latest_runs_cte!(),
    " SELECT r.id, r.plan_name, r.plan_version, r.created_at, p.spec
      FROM runs r JOIN plans p ON p.name = r.plan_name AND p.version = r.plan_version
      WHERE r.id IN (SELECT id FROM latest)
      ORDER BY r.plan_name"
);

const JOBS: &str = concat!(
    latest_runs_cte!(),
    " SELECT j.id, j.run_id, j.node, j.state, j.rescheduled_from, r.plan_name,
             n.labels, n.gpu_source, n.state AS node_state, n.health, n.inventory, h.last_seen_at
      FROM jobs j JOIN nodes n ON n.name = j.node JOIN runs r ON r.id = j.run_id
           LEFT JOIN node_heartbeats h ON h.node = n.name
      WHERE j.run_id IN (SELECT id FROM latest)"
);

/// Results of the jobs in `$1` (a JSON array of job ids), with and without their series.
macro_rules! results_of_jobs {
    ($series:expr, sqlite) => {
        concat!(
            result_columns!($series),
            " WHERE job_id IN (SELECT value FROM json_each($1))
              ORDER BY job_id, step_index, attempt, lease_epoch"
        )
    };
    ($series:expr, postgres) => {
        concat!(
            result_columns!($series),
            " WHERE job_id IN (SELECT jsonb_array_elements_text($1::jsonb))
              ORDER BY job_id, step_index, attempt, lease_epoch"
        )
    };
}
const RESULTS_SQLITE: &str = results_of_jobs!("series", sqlite);
const RESULTS_POSTGRES: &str = results_of_jobs!("series", postgres);
const RESULTS_SQLITE_NO_SERIES: &str = results_of_jobs!("'[]' AS series", sqlite);
const RESULTS_POSTGRES_NO_SERIES: &str = results_of_jobs!("'[]' AS series", postgres);

fn report_job(row: &impl StoreRow) -> Result<ReportJob, StoreError> {
    let f = Fields::new(row, "jobs", &["id"]);
    let node = NodeId(f.text("node")?);
    let labels: Labels = f.json("labels")?;
    Ok(ReportJob {
        run_id: RunId(f.text("run_id")?),
        rescheduled_from: f.opt_text("rescheduled_from")?.map(JobId),
        plan_name: f.text("plan_name")?,
        registered: Node {
            id: node.clone(),
            labels: labels.clone(),
            // The report shows the labels of record.
            reported_labels: Labels::default(),
            state: f.parse("node_state")?,
            health: f.parse("health")?,
            // The report shows state and health now; the reason is for `node show`.
            health_reason: String::new(),
            inventory: f.json::<Inventory>("inventory")?,
            last_seen_at: f.opt_time("last_seen_at")?,
            current_job: None,
        },
        job: JobEvidence {
            job_id: JobId(f.text("id")?),
            node,
            labels,
            gpu_source: f.parse("gpu_source")?,
            state: f.parse("state")?,
            results: Vec::new(),
            // Reports do not re-evaluate the gate; its digests are not needed here.
            result_digests: Vec::new(),
        },
    })
}

impl Store {
    /// Reads the evidence of a release at a milestone for a report and sends it to `sender`:
    /// the runs, then the nodes `page_nodes` at a time, by name. Only jobs whose node labels
    /// satisfy `keep` are read (a customer's scope). One snapshot covers every read; memory
    /// holds the job list and one page of results. Stops early, without error, when the
    /// receiver is dropped.
    ///
    /// Long because the snapshot transaction cannot be handed to helpers across the `writing!`
    /// / `with_pool!` backends without boxing every query; each step is commented in order.
    pub async fn read_report_evidence(
        &self,
        release: &ReleaseId,
        milestone: &str,
        keep: impl Fn(&Labels) -> bool + Send,
        page_nodes: usize,
        charted: &[tollgate_domain::telemetry::Field],
        sender: mpsc::Sender<ReportRows>,
    ) -> Result<(), StoreError> {
        let page_nodes = page_nodes.max(1);
        macro_rules! read {
            ($pool:expr, $results_sql:expr) => {{
                let mut tx = $pool.begin_snapshot().await?;
                let runs: Vec<RunEvidence> = sqlx::query(RUNS)
                    .bind(release.as_str())
                    .bind(milestone)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|row| {
                        rows::evidence_run(row).map(|run| RunEvidence {
                            plan_steps: run.plan.step_names(),
                            run_id: run.id,
                            plan_name: run.plan_name,
                            plan_version: run.plan_version,
                            created_at: run.created_at,
                            jobs: Vec::new(),
                        })
                    })
                    .collect::<Result<_, _>>()?;
                if sender.send(ReportRows::Runs(runs)).await.is_err() {
                    return Ok(());
                }
                let mut jobs: Vec<ReportJob> = sqlx::query(JOBS)
                    .bind(release.as_str())
                    .bind(milestone)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(report_job)
                    .collect::<Result<_, _>>()?;
                // Only the final attempt of a rescheduled job is evidence.
                let replaced = tollgate_domain::reschedule::superseded(
                    jobs.iter()
                        .map(|job| (&job.job.job_id, job.rescheduled_from.as_ref())),
                );
                jobs.retain(|job| keep(&job.job.labels) && !replaced.contains(&job.job.job_id));
                // Sorted here rather than in SQL: PostgreSQL would order names by its locale.
                jobs.sort_by(|a, b| {
                    (&a.job.node, &a.plan_name, &a.run_id, &a.job.job_id).cmp(&(
                        &b.job.node,
                        &b.plan_name,
                        &b.run_id,
                        &b.job.job_id,
                    ))
                });
                let mut by_node: Vec<Vec<ReportJob>> = Vec::new();
                for job in jobs {
                    match by_node.last_mut() {
                        Some(node_jobs) if node_jobs[0].job.node == job.job.node => {
                            node_jobs.push(job)
                        }
                        _ => by_node.push(vec![job]),
                    }
                }
                let mut by_node = by_node.into_iter().peekable();
                while by_node.peek().is_some() {
                    let page: Vec<Vec<ReportJob>> = by_node.by_ref().take(page_nodes).collect();
                    let ids: Vec<&str> = page
                        .iter()
                        .flatten()
                        .map(|job| job.job.job_id.as_str())
                        .collect();
                    let ids = serde_json::to_string(&ids).expect("a list of strings serializes");
                    let mut results: HashMap<JobId, Vec<StepResult>> = HashMap::new();
                    for row in sqlx::query($results_sql)
                        .bind(ids)
                        .fetch_all(&mut *tx)
                        .await?
                    {
                        let result = if charted.is_empty() {
                            rows::step_result(&row)?
                        } else {
                            rows::step_result_charted(&row, charted)?
                        };
                        results
                            .entry(result.job_id.clone())
                            .or_default()
                            .push(result);
                    }
                    let nodes = page
                        .into_iter()
                        .map(|node_jobs| {
                            let registered = node_jobs[0].registered.clone();
                            NodeEvidence {
                                node: registered.id.clone(),
                                registered: Some(registered),
                                jobs: node_jobs
                                    .into_iter()
                                    .map(|mut job| {
                                        job.job.results =
                                            results.remove(&job.job.job_id).unwrap_or_default();
                                        NodeJob {
                                            run_id: job.run_id,
                                            job: job.job,
                                        }
                                    })
                                    .collect(),
                            }
                        })
                        .collect();
                    if sender.send(ReportRows::Nodes(nodes)).await.is_err() {
                        return Ok(());
                    }
                }
                tx.commit().await?;
            }};
        }
        match &self.pool {
            Pool::Sqlite(pool) if charted.is_empty() => read!(pool, RESULTS_SQLITE_NO_SERIES),
            Pool::Sqlite(pool) => read!(pool, RESULTS_SQLITE),
            Pool::Postgres(pool) if charted.is_empty() => read!(pool, RESULTS_POSTGRES_NO_SERIES),
            Pool::Postgres(pool) => read!(pool, RESULTS_POSTGRES),
        }
        Ok(())
    }
}
