//! A node: its inventory, state and health, its jobs in recent runs, and telemetry charts per
//! GPU — the fleet history tiers (`NodeService/GetNodeTelemetry`) and the stored step series
//! of its latest job, with the gate's and plan's limits and the GPU events (XID, ECC, GPU
//! lost) on the time axis. Operators cordon and uncordon it here.

use super::charts::{self, Chart, Limit, Mark, Point};
use super::layout::{self, badge, csrf, report_links, simulated, time};
use super::releases::LIST_RUNS;
use super::session::{Caller, PageError, encode};
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use std::collections::BTreeMap;
use tollgate_domain::telemetry::Field;
use tollgate_proto::v1::{
    self as pb, node_service_server::NodeService, run_service_server::RunService,
};

/// `GetNode`.
pub const GET_NODE: &str = "/tollgate.v1.NodeService/GetNode";
/// `SetCordon`.
pub const SET_CORDON: &str = "/tollgate.v1.NodeService/SetCordon";
/// `GetNodeTelemetry`.
pub const GET_NODE_TELEMETRY: &str = "/tollgate.v1.NodeService/GetNodeTelemetry";
/// The fields charted.
const CHARTED: [Field; 2] = [Field::GpuTempC, Field::PowerW];
/// How far back the fleet history chart reaches.
const HISTORY_SECONDS: i64 = 30 * 60;

/// A node's job in a recent run.
struct JobRow {
    run: pb::Run,
    job: pb::Job,
}

/// The node's jobs in the latest 100 runs, newest first.
async fn jobs_of(caller: &Caller, node: &str) -> Result<Vec<JobRow>, PageError> {
    let runs = crate::grpc::run::RunApi::new(caller.shared.clone());
    let answer = caller
        .rpc(
            LIST_RUNS,
            pb::ListRunsRequest {
                release: String::new(),
                page_size: 100,
                page_token: String::new(),
            },
            |request| runs.list_runs(request),
        )
        .await?;
    let mut rows = Vec::new();
    for mut run in answer.runs {
        let jobs = std::mem::take(&mut run.jobs);
        for job in jobs.into_iter().filter(|job| job.node == node) {
            rows.push(JobRow {
                run: run.clone(),
                job,
            });
        }
    }
    Ok(rows)
}

fn seconds(at: &tollgate_domain::Timestamp) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

/// The windows of fleet history the node page offers.
const WINDOWS: [(&str, i64); 3] = [
    ("30m", HISTORY_SECONDS),
    ("6h", 6 * 3600),
    ("24h", 24 * 3600),
];
/// The most buckets one `GetNodeTelemetry` call answers.
const MAX_BUCKETS: u64 = 2000;

/// `/nodes/{name}`'s query: the fleet history window.
#[derive(Debug, Default, serde::Deserialize)]
pub struct NodeQuery {
    #[serde(default)]
    window: String,
}

/// The finest tier of the controller's fleet history that keeps `window` seconds and whose
/// buckets over it fit one answer per GPU (the coarsest when none does).
fn resolution_for(history: &tollgate_domain::fleet_history::History, window: i64) -> u32 {
    let window = std::time::Duration::from_secs(window.unsigned_abs());
    let fitting = history.tiers().iter().find(|tier| {
        tier.retention >= window
            && window.as_secs() / tier.resolution.as_secs().max(1) <= MAX_BUCKETS
    });
    fitting
        .or(history.tiers().last())
        .map_or(0, tollgate_domain::fleet_history::Tier::resolution_s)
}

/// Fleet history charts: per field, one chart per GPU.
async fn history(
    caller: &Caller,
    node: &str,
    n_gpus: usize,
    window: &str,
) -> Result<Markup, PageError> {
    let api = crate::grpc::node::NodeApi::new(caller.shared.clone());
    let seconds_back = WINDOWS
        .iter()
        .find(|(name, _)| *name == window)
        .map(|(_, seconds)| *seconds)
        .ok_or_else(|| {
            PageError::BadRequest(format!(
                "the history window '{window}' is not one of 30m, 6h, 24h; pick one of the \
                 links on the node page"
            ))
        })?;
    let since = caller.shared.now() - chrono::Duration::seconds(seconds_back);
    // One call per GPU, so that every GPU's window fits an answer.
    let gpus: Vec<Option<u32>> = match n_gpus {
        0 => vec![None],
        n => (0..n).map(|idx| u32::try_from(idx).ok()).collect(),
    };
    let resolution_seconds = resolution_for(&caller.shared.config.fleet_history, seconds_back);
    let mut answers = Vec::new();
    for gpu_index in gpus {
        answers.push(
            caller
                .rpc(
                    GET_NODE_TELEMETRY,
                    pb::GetNodeTelemetryRequest {
                        node: node.to_owned(),
                        since: Some(tollgate_wire::time::timestamp_to_proto(since)),
                        until: None,
                        gpu_index,
                        fields: CHARTED
                            .iter()
                            .map(|field| field.name().to_owned())
                            .collect(),
                        resolution_seconds,
                        limit: MAX_BUCKETS as u32,
                    },
                    |request| api.get_node_telemetry(request),
                )
                .await?,
        );
    }
    let telemetry = pb::NodeTelemetry {
        truncated: answers.iter().any(|answer| answer.truncated),
        buckets: answers
            .iter_mut()
            .flat_map(|answer| std::mem::take(&mut answer.buckets))
            .collect(),
        ..answers.first().cloned().unwrap_or_default()
    };
    let mut by_field: BTreeMap<(&str, u32), Vec<Point>> = BTreeMap::new();
    for bucket in &telemetry.buckets {
        let Some(at) = bucket
            .start
            .as_ref()
            .and_then(tollgate_wire::time::timestamp_from_proto)
        else {
            continue;
        };
        for stat in &bucket.fields {
            if let Some(field) = CHARTED.iter().find(|field| field.name() == stat.field) {
                by_field
                    .entry((field.name(), bucket.gpu_index))
                    .or_default()
                    .push(Point {
                        at: seconds(&at),
                        mean: stat.mean,
                        min: stat.min,
                        max: stat.max,
                    });
            }
        }
    }
    Ok(html! {
        h3 { "Fleet history, last " (window) " (" (telemetry.resolution_seconds) " s buckets; tiers "
             (telemetry.history) ")" @if telemetry.gpu_source == "simulated" { " " (simulated()) } }
        p.windows { "Window: " @for (name, _) in WINDOWS {
            @if name == window { b { (name) } " " } @else { a href={ "?window=" (name) } { (name) } " " } } }
        @if telemetry.truncated { p.muted { "More buckets than one page: the oldest are shown." } }
        @if by_field.is_empty() { p.muted { "No fleet telemetry in this window (agents send it while idle)." } }
        @for field in CHARTED {
            @let charts: Vec<Chart> = by_field.iter()
                .filter(|((name, _), _)| *name == field.name())
                .map(|((_, gpu), points)| Chart { title: format!("GPU {gpu}"), unit: field.unit().to_owned(), points: points.clone(), ..Chart::default() })
                .collect();
            @if !charts.is_empty() { h4 { (field.name()) } (charts::multiples(&charts)) }
        }
    })
}

/// The limits on `field` of the gate at `milestone` (telemetry rules) and the run's plan
/// (burn-in steps).
async fn limits(caller: &Caller, run: &pb::Run) -> Result<BTreeMap<Field, Vec<Limit>>, PageError> {
    let store = &caller.shared.store;
    let mut limits: BTreeMap<Field, Vec<Limit>> = BTreeMap::new();
    if let Some(gate) = store.get_gate(&run.milestone).await? {
        for rule in &gate.policy.rules {
            if let tollgate_domain::gate::RuleKind::Telemetry {
                field, condition, ..
            } = &rule.kind
            {
                limits.entry(*field).or_default().push(Limit {
                    value: condition.threshold,
                    label: format!("gate rule {}: {condition}", rule.id),
                });
            }
        }
    }
    if let Some((_, plan)) = store
        .run_and_plan(&tollgate_domain::RunId::from(run.id.clone()))
        .await?
    {
        for step in &plan.plan.steps {
            if let tollgate_domain::plan::StepKind::BurnIn {
                limits: step_limits,
                ..
            } = &step.kind
            {
                for limit in step_limits {
                    for value in [limit.min, limit.max].into_iter().flatten() {
                        limits.entry(limit.field).or_default().push(Limit {
                            value,
                            label: format!("plan step {} limit", step.name),
                        });
                    }
                }
            }
        }
    }
    Ok(limits)
}

/// A change worth a mark on the time axis that telemetry shows rather than an event: a row
/// remap turning pending or failed, uncorrected ECC errors counting up. The first bucket
/// where it shows, if any.
fn state_change(series: &tollgate_domain::telemetry::TelemetrySeries, start: f64) -> Option<Mark> {
    let label = match series.field {
        Field::RowRemapPending => "row remap pending",
        Field::RowRemapFailure => "row remap failed",
        Field::EccUncorrectedVolatile => "uncorrected ECC",
        _ => return None,
    };
    let first = series.points.first()?;
    let baseline = match series.field {
        Field::EccUncorrectedVolatile => first.min,
        _ => 0.0,
    };
    series
        .points
        .iter()
        .find(|point| point.max > baseline)
        .map(|point| Mark {
            at: start + point.offset_ms as f64 / 1000.0,
            label: label.to_owned(),
        })
}

/// The stored step series of the node's latest job with results, per field one chart per
/// GPU, the limits drawn and the GPU events marked.
async fn step_series(caller: &Caller, rows: &[JobRow]) -> Result<Markup, PageError> {
    let store = &caller.shared.store;
    let mut found = None;
    for row in rows {
        let results = store
            .results_of_job(&tollgate_domain::JobId::from(row.job.id.clone()))
            .await?;
        if !results.is_empty() {
            found = Some((row, results));
            break;
        }
    }
    let Some((row, results)) = found else {
        return Ok(html! { p.muted { "No step has reported telemetry on this node yet." } });
    };
    let limits = limits(caller, &row.run).await?;
    let mut by_field: BTreeMap<(Field, u32), Vec<Point>> = BTreeMap::new();
    let mut marks: BTreeMap<u32, Vec<Mark>> = BTreeMap::new();
    for result in &results {
        let start = seconds(&result.started_at);
        for series in &result.series {
            if let Some(mark) = state_change(series, start) {
                marks.entry(series.gpu_index).or_default().push(mark);
            }
            let points = by_field
                .entry((series.field, series.gpu_index))
                .or_default();
            points.extend(series.points.iter().map(|p| Point {
                at: start + p.offset_ms as f64 / 1000.0,
                mean: p.mean,
                min: p.min,
                max: p.max,
            }));
        }
        for event in &result.events {
            let label = match event.kind {
                tollgate_domain::telemetry::EventKind::Xid => format!("XID {}", event.code),
                other => other.as_str().to_owned(),
            };
            marks.entry(event.gpu_index).or_default().push(Mark {
                at: seconds(&event.at),
                label,
            });
        }
    }
    Ok(html! {
        h3 { "Steps of job " code { (row.job.id) } " (run " a href={ "/runs/" (encode(&row.run.id)) } { (row.run.id) } ", "
             (row.run.release) " at " (row.run.milestone) ")" }
        @for field in CHARTED {
            @let charts: Vec<Chart> = by_field.iter()
                .filter(|((f, _), _)| *f == field)
                .map(|((_, gpu), points)| Chart {
                    title: format!("GPU {gpu}"),
                    unit: field.unit().to_owned(),
                    points: points.clone(),
                    limits: limits.get(&field).cloned().unwrap_or_default(),
                    marks: marks.get(gpu).cloned().unwrap_or_default(),
                })
                .collect();
            @if !charts.is_empty() { h4 { (field.name()) } (charts::multiples(&charts)) }
        }
        @let events: Vec<(&u32, &Mark)> = marks.iter().flat_map(|(gpu, marks)| marks.iter().map(move |mark| (gpu, mark))).collect();
        @if !events.is_empty() {
            h4 { "Events" }
            ul { @for (gpu, mark) in events { li { "GPU " (gpu) ": " (mark.label) } } }
        }
    })
}

/// The node page.
pub async fn show(
    caller: Caller,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<NodeQuery>,
) -> Result<Response, PageError> {
    let window = if query.window.is_empty() {
        WINDOWS[0].0
    } else {
        query.window.as_str()
    };
    let api = crate::grpc::node::NodeApi::new(caller.shared.clone());
    // GetNode scopes a customer: another customer's node is not found, and nothing below is
    // read for it.
    let node = caller
        .rpc(
            GET_NODE,
            pb::GetNodeRequest { name: name.clone() },
            |request| api.get_node(request),
        )
        .await?;
    let rows = jobs_of(&caller, &node.name).await?;
    let n_gpus = node
        .inventory
        .as_ref()
        .map_or(0, |inventory| inventory.gpus.len());
    let history = history(&caller, &node.name, n_gpus, window).await?;
    let steps = step_series(&caller, &rows).await?;
    let rollouts: Vec<pb::Rollout> = if caller.may(super::rollouts::LIST_ROLLOUTS) {
        super::rollouts::all(&caller, None, Some(&node.name)).await?
    } else {
        Vec::new()
    };
    let inventory = node.inventory.clone().unwrap_or_default();
    let is_simulated = inventory.gpu_source == "simulated";
    let cordoned = node.state == "cordoned";
    let body = html! {
        h1 { "Node " (node.name) " " (badge(&node.state)) " " (badge(&node.health))
             @if is_simulated { " " (simulated()) } }
        @if is_simulated {
            p.notice { "This node's GPUs are simulated: its inventory and telemetry are made up; the processes, scheduling and gates are real." }
        }
        @if caller.may(SET_CORDON) && matches!(node.state.as_str(), "ready" | "busy" | "cordoned") {
            form.action method="post" action={ "/nodes/" (encode(&node.name)) "/cordon" } {
                (csrf(&caller))
                input type="hidden" name="cordoned" value=(if cordoned { "false" } else { "true" });
                button type="submit" { @if cordoned { "Uncordon" } @else { "Cordon" } }
            }
        }
        dl.facts {
            dt { "Health reason" } dd { @if node.health_reason.is_empty() { span.muted { "—" } } @else { (node.health_reason) } }
            dt { "Last seen" } dd { (time(node.last_seen_at.as_ref())) }
            dt { "Current job" } dd { @if node.current_job_id.is_empty() { span.muted { "—" } } @else { code { (node.current_job_id) } } }
            dt { "Labels" } dd { @for (key, value) in node.labels.iter().collect::<BTreeMap<_, _>>() { span.chip { (key) "=" (value) } " " } }
            @if !node.maintenance_window.is_empty() { dt { "Maintenance" } dd { (node.maintenance_window) } }
            dt { "Host" } dd { (inventory.hostname) }
            dt { "Driver" } dd { code { (inventory.driver_version) } " (CUDA " (inventory.cuda_driver_version) ", NVML " (inventory.nvml_version) ")" }
            dt { "GPU source" } dd { (inventory.gpu_source) }
            @for one in &node.rollout_drift {
                dt { "Drift" } dd { (badge("drifted")) " " (tollgate_wire::fleet::drift_words(one)) " (" a href={ "/rollouts/" (encode(&one.rollout)) } { "rollout " (one.rollout) } ")" }
            }
            @for (component, version) in inventory.components.iter().collect::<BTreeMap<_, _>>() { dt { (component) } dd { code { (version) } } }
        }
        section {
            h2 { "GPUs" }
            table.list {
                thead { tr { th { "#" } th { "Model" } th { "UUID" } th { "Serial" } th { "PCI bus" } th { "VBIOS" } th { "Memory" } th { "ECC" } th { "Power limit" } th { "PCIe" } } }
                tbody { @for gpu in &inventory.gpus {
                    tr { td { (gpu.index) } td { (gpu.name) @if is_simulated { " " (simulated()) } } td { code { (gpu.uuid) } }
                         td { (gpu.serial.as_deref().unwrap_or("—")) } td { code { (gpu.pci_bus_id) } }
                         td { code { (gpu.vbios_version) } } td { (gpu.memory_total_mib) " MiB" }
                         td { (gpu.ecc_enabled.map_or("—", |on| if on { "on" } else { "off" })) }
                         td { (gpu.power_limit_w.map_or("—".to_owned(), |w| format!("{w:.0} W"))) }
                         td { (gpu.max_pcie_gen.map_or("—".to_owned(), |g| format!("Gen{g}"))) (gpu.max_pcie_width.map_or(String::new(), |w| format!(" x{w}"))) } }
                } }
            }
        }
        section {
            h2 { "Telemetry" }
            (history)
            (steps)
        }
        section {
            h2 { "Job history (latest 100 runs)" }
            @if rows.is_empty() { p.muted { "No job yet." } }
            @else {
                table.list {
                    thead { tr { th { "Job" } th { "Run" } th { "Release" } th { "State" } th { "Started" } th { "Report" } } }
                    tbody { @for row in &rows {
                        tr { td { code { (row.job.id) } } td { a href={ "/runs/" (encode(&row.run.id)) } { (row.run.id) } }
                             td { a href={ "/releases/" (encode(&row.run.release)) } { (row.run.release) } " at " (row.run.milestone) }
                             td { (badge(&row.job.state)) } td { (time(row.run.created_at.as_ref())) }
                             td { (report_links(&row.run.release, &row.run.milestone)) } }
                    } }
                }
            }
        }
        section {
            h2 { "Rollouts" }
            @if rollouts.is_empty() { p.muted { "Part of no rollout." } }
            @else { (super::rollouts::table(&rollouts, true)) }
        }
        @if !node.health_checks.is_empty() {
            section {
                h2 { "Health checks" }
                ul { @for check in &node.health_checks {
                    li { (check.plan_name) ": " (badge(if check.verdict.is_empty() { "running" } else { &check.verdict }))
                         " " a href={ "/runs/" (encode(&check.run_id)) } { (check.run_id) } " " (time(check.started_at.as_ref())) }
                } }
            }
        }
    };
    Ok(layout::page(
        &caller,
        &format!("Node {}", node.name),
        "/fleet",
        body,
    ))
}

/// The cordon form.
#[derive(Debug, serde::Deserialize)]
pub struct CordonForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    cordoned: String,
}

/// Cordons or uncordons the node, through `NodeService/SetCordon` (audited there).
pub async fn cordon(
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CordonForm>,
) -> Result<Response, PageError> {
    caller.check_post(&headers, &form.csrf)?;
    let cordoned = match form.cordoned.as_str() {
        "true" => true,
        "false" => false,
        other => {
            return Err(PageError::BadRequest(format!(
                "cordoned='{other}' is neither true nor false; use the node page's button"
            )));
        }
    };
    let api = crate::grpc::node::NodeApi::new(caller.shared.clone());
    caller
        .rpc(
            SET_CORDON,
            pb::SetCordonRequest {
                name: name.clone(),
                cordoned,
            },
            |request| api.set_cordon(request),
        )
        .await?;
    Ok(Redirect::to(&format!("/nodes/{}", encode(&name))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_domain::telemetry::{SeriesPoint, TelemetrySeries};

    fn series(field: Field, values: &[f64]) -> TelemetrySeries {
        TelemetrySeries {
            gpu_index: 0,
            field,
            bucket_ms: 1000,
            points: values
                .iter()
                .enumerate()
                .map(|(idx, value)| SeriesPoint {
                    offset_ms: idx as u64 * 1000,
                    mean: *value,
                    min: *value,
                    max: *value,
                    samples: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn the_history_tier_is_the_finest_that_fits_the_window() {
        let history = tollgate_domain::fleet_history::History::default();
        assert_eq!(resolution_for(&history, 30 * 60), 10);
        assert_eq!(resolution_for(&history, 6 * 3600), 60);
        assert_eq!(resolution_for(&history, 24 * 3600), 60);
    }

    #[test]
    fn remaps_and_uncorrected_ecc_are_marked_where_they_first_show() {
        let mark = state_change(&series(Field::RowRemapPending, &[0.0, 0.0, 1.0]), 100.0)
            .expect("a pending remap is marked");
        assert_eq!((mark.at, mark.label.as_str()), (102.0, "row remap pending"));
        let mark = state_change(
            &series(Field::EccUncorrectedVolatile, &[3.0, 3.0, 4.0]),
            0.0,
        )
        .expect("a counter going up is marked");
        assert_eq!(mark.at, 2.0);
        assert!(state_change(&series(Field::EccUncorrectedVolatile, &[3.0, 3.0]), 0.0).is_none());
        assert!(state_change(&series(Field::GpuTempC, &[90.0]), 0.0).is_none());
    }
}
