//! Report tests: a Markdown snapshot of a small hand-built input, the JSON's documented shape,
//! the HTML's self-containment and escaping, the simulated banner's presence and absence, and
//! a manual render benchmark at fleet scale.

use super::model::{Builder, NodeView, Report, SIMULATED_BANNER};
use super::text::Html;
use super::*;
use std::collections::BTreeSet;
use std::time::Duration;
use tollgate_domain::fleet::{GpuSourceKind, Inventory};
use tollgate_domain::gate::{self, Evidence, JobEvidence, RunEvidence};
use tollgate_domain::job::JobState;
use tollgate_domain::plan::{Step, StepKind};
use tollgate_domain::release::Component;
use tollgate_domain::result::{Measurement, Outcome, StepResult, SubResult};
use tollgate_domain::telemetry::{
    EventKind, Field, FieldSummary, GpuEvent, GpuTelemetry, SeriesPoint, TelemetrySeries,
};
use tollgate_domain::test_support::{self as ts, at};
use tollgate_domain::{JobId, NodeId, PlanVersion, RunId};

const MILESTONE: &str = "customer-acceptance";

const GATE: &str = r#"
milestone: customer-acceptance
description: Acceptance on the customer's SKU.
rules:
  - steps-passed: {plan: gpu-qual, steps: [versions, stress], min-nodes: 2}
  - telemetry: {field: gpu_temp_c, step: stress, aggregate: max, condition: "< 88"}
  - measurement: {name: membw_gbps, step: stress, aggregate: min, condition: ">= 2800"}
  - no-xid: {codes: [48, 79]}
  - inventory-matches-release: {}
"#;

/// The top-level keys `docs/report-format.md` documents, in order.
const TOP_LEVEL_KEYS: [&str; 20] = [
    "schema",
    "title",
    "release",
    "milestone",
    "simulated",
    "summary",
    "decision",
    "policy",
    "rules",
    "waivers",
    "plans",
    "runs",
    "nodes",
    "events",
    "warnings",
    "generated_at",
    "controller_version",
    "audit_head",
    "scope",
    "signature",
];

/// A fixed signing key, so renderings are reproducible.
pub(super) fn test_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32])
}

fn plan() -> Plan {
    Plan {
        name: "gpu-qual".into(),
        description: "Burn-in and versions".into(),
        selector: tollgate_domain::fleet::Selector(
            [("sku".to_owned(), "hgx-h100".to_owned())]
                .into_iter()
                .collect(),
        ),
        max_nodes: Some(2),
        selection: Default::default(),
        max_concurrent: Default::default(),
        reschedule_attempts: 0,
        steps: vec![
            Step {
                name: "versions".into(),
                kind: StepKind::InventoryCheck {
                    components: Vec::new(),
                },
                timeout: Duration::from_secs(60),
                retries: 0,
            },
            Step {
                name: "stress".into(),
                kind: StepKind::Exec {
                    command: vec!["sh".into(), "-c".into(), "./stress.sh --minutes 10".into()],
                    env: [("STRESS_LEVEL".to_owned(), "high".to_owned())]
                        .into_iter()
                        .collect(),
                    workdir: None,
                },
                timeout: Duration::from_secs(900),
                retries: 1,
            },
        ],
    }
}

fn node_inventory(name: &str, source: GpuSourceKind) -> Inventory {
    let mut inventory = ts::inventory(ts::DRIVER, ts::VBIOS, 2);
    inventory.gpu_source = source;
    inventory.hostname = name.to_owned();
    for gpu in &mut inventory.gpus {
        gpu.uuid = format!("GPU-{name}-{}", gpu.index);
    }
    inventory
}

fn result(
    node: &str,
    source: GpuSourceKind,
    step: (u32, &str),
    attempt: u32,
    outcome: Outcome,
    start: i64,
) -> StepResult {
    StepResult {
        job_id: JobId::from(format!("job-{node}")),
        step_name: step.1.into(),
        started_at: at(start),
        finished_at: at(start + 95),
        inventory: node_inventory(node, source),
        ..ts::step_result(step.0, attempt, outcome)
    }
}

fn telemetry(gpu_index: u32, node: &str, temp_max: f64, power_max: f64) -> GpuTelemetry {
    let summary = |field, min: f64, mean: f64, max: f64| FieldSummary {
        field,
        min,
        max,
        mean,
        p99: max,
        last: mean,
        samples: 95,
    };
    GpuTelemetry {
        gpu_index,
        gpu_uuid: format!("GPU-{node}-{gpu_index}"),
        // Deliberately out of display order: the report orders fields itself.
        fields: vec![
            summary(Field::PowerW, 80.0, power_max - 40.0, power_max),
            summary(Field::GpuTempC, 35.0, temp_max - 12.5, temp_max),
        ],
        samples_missed: 0,
    }
}

/// A temperature series over 95 s in 1 s buckets rising from `from` to `to`.
fn temperature_series(gpu_index: u32, from: f64, to: f64) -> TelemetrySeries {
    TelemetrySeries {
        gpu_index,
        field: Field::GpuTempC,
        bucket_ms: 1000,
        points: (0..95u32)
            .map(|i| {
                let mean = from + (to - from) * f64::from(i) / 94.0;
                SeriesPoint {
                    offset_ms: u64::from(i) * 1000,
                    mean: mean - 0.5,
                    min: mean - 1.0,
                    max: mean,
                    samples: 1,
                }
            })
            .collect(),
    }
}

/// A node whose stress step errored once, then passed with GPU 0 running too hot.
fn hot_job(name: &str, source: GpuSourceKind) -> JobEvidence {
    let versions = result(name, source, (0, "versions"), 1, Outcome::Passed, 100);
    let mut first = result(name, source, (1, "stress"), 1, Outcome::Error, 200);
    first.exit_code = None;
    first.message = "timed out after 15m; killed".into();
    first.log_tail = "iteration 41 ok\niteration 42 | stuck <waiting>\n```\n".into();
    let mut second = result(name, source, (1, "stress"), 2, Outcome::Passed, 400);
    second.message = "exit 0".into();
    second.measurements.push(Measurement {
        name: "membw_gbps".into(),
        value: 3012.5,
        unit: Some("GB/s".into()),
    });
    second.telemetry = vec![
        telemetry(1, name, 71.0, 640.0),
        telemetry(0, name, 95.5, 700.0),
    ];
    // GPU 0 climbs to 95.5 °C; GPU 1 stays near 60. Power has no series: its chart falls
    // back to the range of each GPU.
    second.series = vec![
        temperature_series(1, 60.0, 71.0),
        temperature_series(0, 60.0, 95.5),
    ];
    second.events.push(GpuEvent {
        gpu_index: 0,
        gpu_uuid: format!("GPU-{name}-0"),
        kind: EventKind::Xid,
        code: 31,
        at: at(450),
        detail: "MMU fault".into(),
    });
    JobEvidence {
        gpu_source: source,
        ..ts::job(name, JobState::Passed, vec![versions, first, second])
    }
}

/// A node that passed everything on real hardware.
fn cool_job(name: &str) -> JobEvidence {
    let source = GpuSourceKind::Nvml;
    let versions = result(name, source, (0, "versions"), 1, Outcome::Passed, 100);
    let mut stress = result(name, source, (1, "stress"), 1, Outcome::Passed, 200);
    stress.message = "exit 0".into();
    stress.measurements.push(Measurement {
        name: "membw_gbps".into(),
        value: 2950.0,
        unit: Some("GB/s".into()),
    });
    stress.telemetry = vec![
        telemetry(0, name, 70.0, 650.0),
        telemetry(1, name, 72.25, 655.5),
    ];
    JobEvidence {
        gpu_source: source,
        ..ts::job(name, JobState::Passed, vec![versions, stress])
    }
}

/// Two nodes: `hot` (over temperature on GPU 0, failing the telemetry rule) and `cool`.
fn input_with(hot: &str, hot_source: GpuSourceKind, cool: &str) -> ReportInput {
    let mut release = ts::release();
    release.milestone = MILESTONE.into();
    release.description = "Driver 550 with the 96.00.89 VBIOS".into();
    release.components[0] = Component {
        artifact_uri: Some("https://artifacts.example/nvidia-driver-550.54.15.run".into()),
        sha256: Some("ab".repeat(32)),
        ..release.components[0].clone()
    };
    let plan = plan();
    let evidence = Evidence {
        release: release.clone(),
        milestone: MILESTONE.into(),
        baseline: None,
        runs: vec![RunEvidence {
            run_id: RunId::from("run-1"),
            plan_name: plan.name.clone(),
            plan_version: plan.version(),
            plan_steps: plan.step_names(),
            created_at: at(50),
            jobs: vec![hot_job(hot, hot_source), cool_job(cool)],
        }],
    };
    let policy = gate::parse_gate("gate.yaml", GATE).expect("the test gate is valid");
    let decision = gate::evaluate(&policy, &evidence, &[], at(1000));
    let mut hot_node = ts::node(hot, "hgx-h100");
    hot_node.inventory = node_inventory(hot, hot_source);
    let mut cool_node = ts::node(cool, "hgx-h100");
    cool_node.inventory = node_inventory(cool, GpuSourceKind::Nvml);
    ReportInput {
        release,
        milestone: MILESTONE.into(),
        policy,
        decision,
        evidence,
        plans: vec![plan],
        nodes: vec![cool_node, hot_node],
        generated_at: at(1200),
        waivers: Vec::new(),
        audit_head: None,
        scope: None,
        controller_version: "0.1.0".into(),
    }
}

pub(super) fn input() -> ReportInput {
    input_with("lab-a-n1", GpuSourceKind::Simulated, "lab-a-n2")
}

/// The view model of `input` as the renderer builds it: the report and every node's view.
fn build(input: &ReportInput) -> (Report, Vec<NodeView>) {
    let mut builder = Builder::new(head_of(input));
    let (runs, nodes) = split_evidence(&input.evidence, &input.nodes);
    builder.set_runs(runs);
    let views = nodes.iter().map(|node| builder.node(node)).collect();
    builder.finish();
    (builder.report, views)
}

fn text_of(input: &ReportInput, format: ReportFormat) -> String {
    String::from_utf8(render(input, format, &test_key()).content).expect("reports are UTF-8")
}

#[test]
fn fixture_fails_only_the_telemetry_rule() {
    let input = input();
    let verdicts: Vec<(&str, &str)> = input
        .decision
        .rules
        .iter()
        .map(|r| (r.rule_id.as_str(), r.verdict.as_str()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("steps-passed:gpu-qual", "passed"),
            ("telemetry:gpu_temp_c", "failed"),
            ("measurement:membw_gbps", "passed"),
            ("no-xid", "passed"),
            ("inventory-matches-release", "passed"),
        ]
    );
}

#[test]
fn markdown_snapshot() {
    insta::assert_snapshot!(text_of(&input(), ReportFormat::Markdown));
}

#[test]
fn json_has_documented_keys_and_one_entry_per_rule() {
    let input = input();
    let rendered = render(&input, ReportFormat::Json, &test_key());
    assert_eq!(rendered.media_type, "application/json");
    let json: serde_json::Value =
        serde_json::from_slice(&rendered.content).expect("the JSON report parses");
    let keys: Vec<&str> = json
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut documented = TOP_LEVEL_KEYS.to_vec();
    documented.sort_unstable();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort_unstable();
    assert_eq!(keys_sorted, documented);
    assert_eq!(json["schema"], "tollgate.report.v1");
    let rules = json["rules"].as_array().expect("rules is an array");
    assert_eq!(rules.len(), input.policy.rules.len());
    assert_eq!(rules[1]["rule_id"], "telemetry:gpu_temp_c");
    assert_eq!(rules[1]["verdict"], "failed");
    assert_eq!(rules[1]["failing_nodes"][0], "lab-a-n1");
    assert_eq!(rules[1]["limit"]["threshold"], 88.0);
    assert_eq!(json["decision"]["verdict"], "failed");
    assert_eq!(json["simulated"]["any"], true);
    assert_eq!(json["simulated"]["banner"], SIMULATED_BANNER);
    assert_eq!(json["waivers"]["reported"], true);
    let nodes = json["nodes"].as_array().expect("nodes is an array");
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(names, ["lab-a-n1", "lab-a-n2"]);
    assert_eq!(nodes[0]["simulated"], true);
    assert_eq!(nodes[1]["simulated"], false);
    assert_eq!(nodes[0]["inventory"]["source"], "observed");
    let attempts = nodes[0]["jobs"][0]["attempts"]
        .as_array()
        .expect("attempts");
    assert_eq!(attempts.len(), 3);
    assert_eq!(attempts[1]["final_attempt"], false);
    let gpu0 = &attempts[2]["telemetry"][0];
    assert_eq!(gpu0["gpu_index"], 0);
    assert_eq!(gpu0["fields"][0]["field"], "gpu_temp_c");
    assert_eq!(gpu0["fields"][0]["unit"], "°C");
    assert_eq!(gpu0["fields"][0]["checks"][0]["ok"], false);
    assert_eq!(json["events"][0]["code"], 31);
}

#[test]
fn html_is_self_contained() {
    let html = text_of(&input(), ReportFormat::Html);
    assert!(html.starts_with("<!DOCTYPE html>"));
    let lower = html.to_ascii_lowercase();
    for forbidden in [
        "src=",
        "href=\"http",
        "href='http",
        "href=\"//",
        "<script",
        "<link",
        "<img",
        "<iframe",
        "@import",
        "url(",
        "@font-face",
    ] {
        // The only scripts are the two inert JSON data blocks of the signature.
        let lower = lower
            .replace(
                "<script type=\"application/json\" id=\"tollgate-report\">",
                "",
            )
            .replace(
                "<script type=\"application/json\" id=\"tollgate-signature\">",
                "",
            );
        assert!(!lower.contains(forbidden), "the page contains {forbidden}");
    }
    // Internal anchors are the only links.
    for (idx, _) in lower.match_indices("href=") {
        assert!(
            lower[idx..].starts_with("href=\"#"),
            "{}",
            &lower[idx..idx + 40]
        );
    }
    // The artifact address is shown as text, not fetched or linked.
    assert!(html.contains("https://artifacts.example/nvidia-driver-550.54.15.run"));
    assert!(html.contains("@media print"));
    assert!(html.contains("<details class=\"node\""));
    assert!(html.contains("<svg class=\"chart\""));
}

#[test]
fn html_charts_each_gpu_s_series_and_marks_the_one_over_its_limit() {
    let html = text_of(&input(), ReportFormat::Html);
    let charts: Vec<&str> = html
        .match_indices("<figure class=\"series\">")
        .map(|(at, _)| &html[at..at + html[at..].find("</figure>").expect("an end")])
        .collect();
    // Only the hot node's passing stress attempt has series, and only of temperature.
    assert_eq!(charts.len(), 1, "{charts:?}");
    let chart = charts[0];
    assert!(chart.contains("gpu_temp_c (°C)"), "{chart}");
    // A panel per GPU, in GPU order, each with its peak; GPU 0 broke the limit and is marked.
    let gpu0 = chart.find("GPU 0, max 95.5 °C").expect("GPU 0's panel");
    let gpu1 = chart.find("GPU 1, max 71 °C").expect("GPU 1's panel");
    assert!(gpu0 < gpu1);
    assert!(
        chart[..gpu0]
            .ends_with("<g transform=\"translate(0 0)\" class=\"x\"><text x=\"0\" y=\"10\">"),
        "{chart}"
    );
    assert!(
        chart.contains("<g transform=\"translate(150 0)\"><text"),
        "{chart}"
    );
    // The gate's limit is drawn in each panel and named in the title.
    assert_eq!(chart.matches("<path class=\"lim\"").count(), 2, "{chart}");
    assert!(chart.contains("limit max &lt; 88 (dashed)"), "{chart}");
    // 95 points are drawn as at most 48 per line, mean and max.
    for class in ["ln", "mx"] {
        let at = chart
            .find(&format!("<path class=\"{class}\" d=\""))
            .expect("a line");
        let d = &chart[at..at + chart[at..].find("\"/>").expect("end")];
        let points = d.matches(['M', 'L']).count();
        assert!((40..=48).contains(&points), "{points} points: {d}");
    }
    // Power has no series: each GPU's range is drawn instead.
    assert!(html.contains("aria-label=\"power_w per GPU during stress attempt 2\""));
}

#[test]
fn html_telemetry_is_one_narrow_table_per_gpu() {
    let html = text_of(&input(), ReportFormat::Html);
    // Two nodes' stress attempts with two GPUs each.
    assert_eq!(html.matches("<table class=\"tm\">").count(), 4);
    for caption in [
        "GPU 0 <code>GPU-lab-a-n1-0</code>",
        "GPU 1 <code>GPU-lab-a-n2-1</code>",
    ] {
        assert!(
            html.contains(&format!("<caption>{caption}</caption>")),
            "{caption}"
        );
    }
    let at = html
        .find("<caption>GPU 0 <code>GPU-lab-a-n1-0</code>")
        .expect("table");
    let table = &html[at..at + html[at..].find("</table>").expect("end")];
    // Eight columns at most, whatever the number of fields: a row per field.
    assert!(table.contains("<th>Field</th><th>Unit</th><th>min</th><th>mean</th><th>max</th><th>p99</th><th>last</th><th>Limit</th>"), "{table}");
    assert!(table.contains("<tr class=\"bad\"><td>gpu_temp_c</td><td>°C</td><td>35</td><td>83</td><td>95.5</td><td>95.5</td><td>83</td>"), "{table}");
    assert!(
        table.contains("<strong>NOT OK: max 95.5</strong>"),
        "{table}"
    );
    assert!(table.contains("<tr><td>power_w</td><td>W</td>"), "{table}");
    assert_eq!(
        table.matches("<tr").count(),
        3,
        "a header and a row per field: {table}"
    );
}

#[test]
fn html_escapes_untrusted_text() {
    let evil = "<script>alert(1)</script>";
    let input = input_with("lab-a-n1", GpuSourceKind::Simulated, evil);
    let html = text_of(&input, ReportFormat::Html);
    assert!(!html.contains(evil));
    assert_eq!(html.to_ascii_lowercase().matches("<script").count(), 1);
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    // The log tail's markup characters are escaped too.
    assert!(html.contains("stuck &lt;waiting&gt;"));

    let markdown = text_of(&input, ReportFormat::Markdown);
    assert!(!markdown.contains(evil));
    assert!(markdown.contains(r"\<script>alert(1)\</script>"));
    // JSON carries the name as data, exactly.
    let json: serde_json::Value =
        serde_json::from_slice(&render(&input, ReportFormat::Json, &test_key()).content)
            .expect("parses");
    assert_eq!(json["nodes"][0]["name"], evil);
}

#[test]
fn simulated_gpus_are_announced_in_every_format() {
    let input = input();
    let html = text_of(&input, ReportFormat::Html);
    assert!(html.contains("class=\"banner\""));
    assert!(html.contains("SIMULATED GPUs"));
    assert!(html.contains(&Html(SIMULATED_BANNER).to_string()));
    assert!(html.contains("<span class=\"badge sim\">SIMULATED</span>"));
    let markdown = text_of(&input, ReportFormat::Markdown);
    assert!(markdown.contains(SIMULATED_BANNER));
    assert!(markdown.contains("### Node lab-a-n1 (SIMULATED)"));
    let json = text_of(&input, ReportFormat::Json);
    assert!(json.contains(SIMULATED_BANNER));
}

#[test]
fn real_hardware_has_no_simulated_banner() {
    let input = input_with("lab-a-n1", GpuSourceKind::Nvml, "lab-a-n2");
    for format in [ReportFormat::Markdown, ReportFormat::Html] {
        let text = text_of(&input, format);
        assert!(!text.contains("SIMULATED"), "{format:?}");
        assert!(!text.contains("simulated GPU source"), "{format:?}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&render(&input, ReportFormat::Json, &test_key()).content)
            .expect("parses");
    assert_eq!(json["simulated"]["any"], false);
    assert!(json["simulated"]["banner"].is_null());
    assert_eq!(json["summary"]["n_simulated_nodes"], 0);
}

#[test]
fn a_simulated_inventory_marks_the_node_even_if_the_job_says_nvml() {
    let mut input = input_with("lab-a-n1", GpuSourceKind::Nvml, "lab-a-n2");
    input.evidence.runs[0].jobs[0].results[0]
        .inventory
        .gpu_source = GpuSourceKind::Simulated;
    let (report, _) = build(&input);
    assert!(report.simulated.any);
    assert_eq!(report.simulated.nodes, ["lab-a-n1"]);
}

#[test]
fn output_is_deterministic_and_ignores_input_order() {
    let input = input();
    let mut shuffled = input.clone();
    shuffled.nodes.reverse();
    for format in [
        ReportFormat::Markdown,
        ReportFormat::Json,
        ReportFormat::Html,
    ] {
        let first = render(&input, format, &test_key()).content;
        assert_eq!(
            first,
            render(&input, format, &test_key()).content,
            "{format:?}"
        );
        assert_eq!(
            first,
            render(&shuffled, format, &test_key()).content,
            "{format:?}"
        );
    }
}

#[test]
fn registered_inventory_is_the_fallback_and_says_so() {
    let mut input = input();
    let job = &mut input.evidence.runs[0].jobs[1];
    job.results.clear();
    job.state = JobState::Pending;
    let (_, nodes) = build(&input);
    let cool = &nodes[1];
    assert_eq!(cool.inventory.source, "registered");
    assert!(
        cool.inventory.notes[0].contains("registered with"),
        "{:?}",
        cool.inventory.notes
    );
    assert_eq!(cool.inventory.gpus.len(), 2);
    let markdown = text_of(&input, ReportFormat::Markdown);
    assert!(markdown.contains("inventory **as registered**"));
}

#[test]
fn a_plan_version_missing_from_the_input_is_a_warning() {
    let mut input = input();
    input.plans.clear();
    let (report, _) = build(&input);
    assert!(report.plans.is_empty());
    assert!(!report.runs[0].plan_available);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("which is not in this report")),
        "{:?}",
        report.warnings
    );
}

#[test]
fn a_changed_inventory_during_the_job_is_noted() {
    let mut input = input();
    let results = &mut input.evidence.runs[0].jobs[0].results;
    results[0].inventory.driver_version = "535.161.08".into();
    let (_, nodes) = build(&input);
    let notes = &nodes[0].inventory.notes;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("versions attempt 1"), "{notes:?}");
    assert!(
        notes[0].contains("driver 535.161.08 (shown: 550.54.15)"),
        "{notes:?}"
    );
}

/// After an agent restart the job reruns a step under a new lease epoch from attempt 1: that
/// attempt, not the earlier epoch's higher-numbered one, is the step's final attempt, listed
/// after the attempts it followed.
#[test]
fn the_final_attempt_is_the_latest_epoch_s_latest_attempt() {
    let mut input = input();
    let results = &mut input.evidence.runs[0].jobs[0].results;
    // Stress: epoch 1 attempt 1 errored, epoch 1 attempt 2 interrupted, epoch 2 attempt 1 passed.
    results[1].lease_epoch = 1;
    results[2].lease_epoch = 2;
    results[2].attempt = 1;
    let mut interrupted = results[1].clone();
    interrupted.attempt = 2;
    interrupted.message = "interrupted: the agent restarted during step stress".into();
    results.push(interrupted);
    let (_, nodes) = build(&input);
    let attempts: Vec<(u64, u32, &str, bool)> = nodes[0].jobs[0]
        .attempts
        .iter()
        .filter(|a| a.step_name == "stress")
        .map(|a| (a.lease_epoch, a.attempt, a.outcome, a.final_attempt))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, 1, "error", false),
            (1, 2, "error", false),
            (2, 1, "passed", true)
        ]
    );
}

/// A flash as the node's latest attempt started on the old VBIOS and ended on the release's:
/// the report shows what the flash installed, and no attempt differs from it.
#[test]
fn the_inventory_shown_is_the_one_the_latest_attempt_ended_on() {
    let mut input = input();
    let results = &mut input.evidence.runs[0].jobs[0].results;
    let latest = results
        .iter_mut()
        .max_by_key(|r| r.started_at)
        .expect("results");
    let installed = latest.inventory.clone();
    latest.inventory_at_end = Some(installed.clone());
    for gpu in &mut latest.inventory.gpus {
        gpu.vbios_version = "96.00.61.00.01".into();
    }
    let (_, nodes) = build(&input);
    let shown = &nodes[0].inventory;
    assert_eq!(shown.gpus[0].vbios_version, installed.gpus[0].vbios_version);
    assert!(shown.notes.is_empty(), "{:?}", shown.notes);
}

/// A fleet-sized input: `n_nodes` nodes × 8 GPUs × 10 steps, six telemetry fields per GPU.
fn fleet_input(n_nodes: usize) -> ReportInput {
    const N_STEPS: u32 = 10;
    const N_GPUS: u32 = 8;
    let fields = [
        Field::GpuTempC,
        Field::MemTempC,
        Field::PowerW,
        Field::SmClockMhz,
        Field::GpuUtilPct,
        Field::FbUsedMib,
    ];
    let mut plan = plan();
    let template = plan.steps[1].clone();
    plan.steps = (0..N_STEPS)
        .map(|idx| Step {
            name: format!("step{idx}"),
            ..template.clone()
        })
        .collect();
    let mut release = ts::release();
    release.milestone = MILESTONE.into();
    let jobs: Vec<JobEvidence> = (0..n_nodes)
        .map(|node_idx| {
            let name = format!("lab-a-r{:02}-n{:03}", node_idx / 40, node_idx % 40);
            let mut inventory = ts::inventory(ts::DRIVER, ts::VBIOS, N_GPUS);
            inventory.hostname = name.clone();
            let results = (0..N_STEPS)
                .map(|step_idx| {
                    let start = i64::from(step_idx) * 120;
                    let telemetry = (0..N_GPUS)
                        .map(|gpu_index| GpuTelemetry {
                            gpu_index,
                            gpu_uuid: format!("GPU-{name}-{gpu_index}"),
                            fields: fields
                                .iter()
                                .map(|&field| {
                                    let base = 60.0 + f64::from(gpu_index) + (node_idx % 7) as f64;
                                    FieldSummary {
                                        field,
                                        min: base - 20.0,
                                        max: base + 10.0,
                                        mean: base,
                                        p99: base + 9.0,
                                        last: base + 1.0,
                                        samples: 120,
                                    }
                                })
                                .collect(),
                            samples_missed: 0,
                        })
                        .collect();
                    StepResult {
                        job_id: JobId::from(format!("job-{name}")),
                        step_name: format!("step{step_idx}"),
                        started_at: at(start),
                        finished_at: at(start + 110),
                        measurements: vec![Measurement {
                            name: "membw_gbps".into(),
                            value: 2900.0 + (node_idx % 200) as f64,
                            unit: Some("GB/s".into()),
                        }],
                        telemetry,
                        inventory: inventory.clone(),
                        log_tail: "PASS all tests\n".into(),
                        message: "exit 0".into(),
                        ..ts::step_result(step_idx, 1, Outcome::Passed)
                    }
                })
                .collect();
            JobEvidence {
                node: NodeId::from(name.as_str()),
                ..ts::job(&name, JobState::Passed, results)
            }
        })
        .collect();
    let nodes = jobs
        .iter()
        .map(|job| ts::node(job.node.as_str(), "hgx-h100"))
        .collect();
    let evidence = Evidence {
        release: release.clone(),
        milestone: MILESTONE.into(),
        baseline: None,
        runs: vec![RunEvidence {
            run_id: RunId::from("run-1"),
            plan_name: plan.name.clone(),
            plan_version: PlanVersion(plan.version().0),
            plan_steps: plan.step_names(),
            created_at: at(0),
            jobs,
        }],
    };
    // Rules over every step, so the telemetry rule judges all 80 GPU summaries of each node.
    let gate = GATE
        .replace("steps: [versions, stress]", "steps: [step0, step9]")
        .replace("step: stress, ", "");
    let policy = gate::parse_gate("gate.yaml", &gate).expect("valid gate");
    let decision = gate::evaluate(&policy, &evidence, &[], at(5000));
    ReportInput {
        release,
        milestone: MILESTONE.into(),
        policy,
        decision,
        evidence,
        plans: vec![plan],
        nodes,
        generated_at: at(5000),
        waivers: Vec::new(),
        audit_head: None,
        scope: None,
        controller_version: "bench".into(),
    }
}

#[test]
#[ignore = "benchmark: run with `cargo test --release -p tollgate-controller report::tests::render_benchmark -- --ignored --nocapture`"]
fn render_benchmark() {
    let input = fleet_input(1000);
    let started = std::time::Instant::now();
    let (report, nodes) = build(&input);
    println!(
        "model: {:?} ({} nodes, {} attempts)",
        started.elapsed(),
        nodes.len(),
        report.summary.n_attempts
    );
    for format in [
        ReportFormat::Markdown,
        ReportFormat::Json,
        ReportFormat::Html,
    ] {
        let started = std::time::Instant::now();
        let rendered = render(&input, format, &test_key());
        println!(
            "{format:?}: {:?}, {:.1} MiB",
            started.elapsed(),
            rendered.content.len() as f64 / (1024.0 * 1024.0)
        );
    }
}

#[test]
fn fleet_input_renders_every_node() {
    // The benchmark's input at a size every test run can afford, so it stays correct.
    let input = fleet_input(3);
    let (report, nodes) = build(&input);
    assert_eq!(nodes.len(), 3);
    assert_eq!(report.summary.n_attempts, 30);
    assert_eq!(report.summary.n_gpus, 24);
    // The decision lists every failing item and a sample of passing ones.
    let rule = &report.rules[1];
    assert_eq!(
        rule.evidence.len(),
        rule.n_evidence_ok + rule.n_evidence_not_ok
    );
    assert!(rule.n_evidence_ok > 0);
    let html = text_of(&input, ReportFormat::Html);
    assert_eq!(html.matches("<details class=\"node\"").count(), 3);
    assert!(html.contains("<path class=\"lim\""));
}

use tollgate_domain::report_signature as signature;

fn signed_text(format: ReportFormat) -> String {
    String::from_utf8(render(&input(), format, &test_key()).content).expect("UTF-8")
}

#[test]
fn every_format_verifies_with_the_signing_key() {
    let key = test_key().verifying_key();
    for format in [
        ReportFormat::Markdown,
        ReportFormat::Json,
        ReportFormat::Html,
        ReportFormat::Junit,
    ] {
        let verified = signature::verify(&signed_text(format), Some(&key))
            .unwrap_or_else(|error| panic!("{format:?}: {error}"));
        assert_eq!(
            verified.release,
            input().release.id.to_string(),
            "{format:?}"
        );
        assert_eq!(verified.verdict, "failed", "{format:?}");
        assert_eq!(verified.fingerprint, signature::fingerprint(&key));
    }
}

#[test]
fn another_key_fails_verification() {
    let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]).verifying_key();
    let error =
        signature::verify(&signed_text(ReportFormat::Json), Some(&other)).expect_err("another key");
    assert!(
        error.to_string().contains("not by the expected key"),
        "{error}"
    );
}

/// Replaces the first occurrence of `from` at or after `marker`.
fn edit_after(text: &str, marker: &str, from: &str, to: &str) -> String {
    let start = text.find(marker).unwrap_or_else(|| panic!("no {marker}"));
    let at = start
        + text[start..]
            .find(from)
            .unwrap_or_else(|| panic!("no {from}"));
    format!("{}{to}{}", &text[..at], &text[at + from.len()..])
}

#[test]
fn editing_a_number_fails_verification_and_names_the_section() {
    let node = "`node lab-a-n1`";
    let rule = "`rule telemetry:gpu_temp_c`";
    // (format, marker, text after it, replacement, section named)
    let edits = [
        (
            ReportFormat::Json,
            "\"rule_id\":\"telemetry:gpu_temp_c\"",
            "88.0",
            "98.0",
            rule,
        ),
        (
            ReportFormat::Json,
            "\"name\":\"lab-a-n1\"",
            "95.5",
            "85.5",
            node,
        ),
        (
            ReportFormat::Markdown,
            "### FAILED `telemetry:gpu_temp_c`",
            "88",
            "98",
            rule,
        ),
        (
            ReportFormat::Markdown,
            "### Node lab-a-n1",
            "95.5",
            "85.5",
            node,
        ),
        (
            ReportFormat::Html,
            "<details class=\"rule\" open>",
            "88",
            "98",
            rule,
        ),
        (
            ReportFormat::Html,
            "<details class=\"node\" id=\"node-0\">",
            "95.5",
            "8",
            node,
        ),
        (
            ReportFormat::Junit,
            "<testsuite name=\"node lab-a-n1\"",
            "95.5",
            "85.5",
            node,
        ),
        (
            ReportFormat::Junit,
            "<testsuite name=\"rule telemetry",
            "failures=\"",
            "failures=\"0",
            rule,
        ),
    ];
    for (format, marker, from, to, section) in edits {
        let text = signed_text(format);
        let edited = edit_after(&text, marker, from, to);
        let error = signature::verify(&edited, None).expect_err("an edited number");
        let message = error.to_string();
        assert!(
            message.contains("does not match its signature") && message.contains(section),
            "{format:?} {marker}: {message}"
        );
        assert!(!message.contains("`summary`"), "{format:?}: {message}");
    }
    // The summary's counts are signed too.
    let text = signed_text(ReportFormat::Markdown);
    let edited = edit_after(&text, "| Step attempts", "5", "6");
    let error = signature::verify(&edited, None).expect_err("an edited count");
    assert!(error.to_string().contains("`summary`"), "{error}");
    // So is the verdict the signature names.
    let text = signed_text(ReportFormat::Html);
    let edited = edit_after(
        &text,
        signature::HTML_SIGNATURE_OPEN,
        "\"failed\"",
        "\"passed\"",
    );
    let error = signature::verify(&edited, None).expect_err("an edited verdict");
    assert!(
        error.to_string().contains("signature does not match"),
        "{error}"
    );
}

#[test]
fn junit_parses_and_fails_one_verdict_per_failed_rule() {
    use quick_xml::events::Event;
    let text = signed_text(ReportFormat::Junit);
    let mut reader = quick_xml::Reader::from_str(&text);
    let (mut suite, mut testcase) = (String::new(), String::new());
    let mut failed_verdicts = Vec::new();
    let mut properties = Vec::new();
    loop {
        match reader.read_event().expect("JUnit parses") {
            Event::Eof => break,
            Event::Start(element) | Event::Empty(element) => {
                let attr = |name: &[u8]| {
                    element
                        .try_get_attribute(name)
                        .expect("attribute")
                        .map(|a| a.unescape_value().expect("unescapes").into_owned())
                        .unwrap_or_default()
                };
                match element.name().as_ref() {
                    b"testsuite" => suite = attr(b"name"),
                    b"testcase" => testcase = attr(b"name"),
                    b"failure" if testcase == "verdict" => failed_verdicts.push(suite.clone()),
                    b"property" => properties.push(attr(b"name")),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let failed: Vec<String> = input()
        .decision
        .rules
        .iter()
        .filter(|rule| rule.verdict == gate::Verdict::Failed)
        .map(|rule| format!("rule {}", rule.rule_id))
        .collect();
    assert!(!failed.is_empty());
    assert_eq!(failed_verdicts, failed);
    assert!(properties.iter().any(|p| p == "tollgate.simulated"));
    assert_eq!(
        properties.last().map(String::as_str),
        Some("tollgate.signature")
    );
}

#[test]
fn customer_scope_keeps_only_the_labelled_nodes() {
    let mut input = input();
    let scope: CustomerScope = "customer=acme".parse().expect("scope");
    let keep = input.evidence.runs[0].jobs[0].node.clone();
    for run in &mut input.evidence.runs {
        for job in &mut run.jobs {
            if job.node == keep {
                job.labels.insert("customer".into(), "acme".into());
            }
        }
    }
    scope_evidence(&mut input.evidence, &scope);
    let nodes: BTreeSet<&NodeId> = input
        .evidence
        .runs
        .iter()
        .flat_map(|run| run.jobs.iter().map(|job| &job.node))
        .collect();
    assert_eq!(nodes.into_iter().collect::<Vec<_>>(), [&keep]);
    input.nodes.retain(|node| node.id == keep);
    input.scope = Some(scope);
    let text = String::from_utf8(render(&input, ReportFormat::Markdown, &test_key()).content)
        .expect("UTF-8");
    assert!(text.contains("Customer scope: `customer=acme`"), "{text}");
    assert!("bad=".parse::<CustomerScope>().is_err());
}

#[test]
fn the_html_data_blocks_are_inert_and_external_free() {
    let text = signed_text(ReportFormat::Html);
    let n_scripts = text.matches("<script").count();
    assert_eq!(n_scripts, 1, "only the signature's JSON data block");
    assert_eq!(text.matches("<script type=\"application/json\"").count(), 1);
    for external in ["src=", "href=\"http", "url(http", "@import"] {
        assert!(!text.contains(external), "{external}");
    }
    let region = &text[text.find(signature::REGION_BEGIN).expect("region")..];
    let data = &region[region.find(signature::HTML_SIGNATURE_OPEN).expect("data")
        + signature::HTML_SIGNATURE_OPEN.len()..];
    let data = &data[..data.find("</script>").expect("closed")];
    assert!(!data.contains('<'), "no markup inside the data block");
}

/// `input()` with a JUnit step's tests on the hot node's errored stress attempt: two failing
/// tests after more passing ones than a report lists.
fn input_with_tests() -> ReportInput {
    let mut input = input();
    let test = |name: String, outcome, message: &str| SubResult {
        source: "junit".into(),
        suite: "test_gpu_checks".into(),
        name,
        gpu_index: None,
        outcome,
        message: message.into(),
        level: None,
    };
    let n_passing = tollgate_domain::result::LISTED_PASSING + 7;
    let mut subs: Vec<SubResult> = (0..n_passing)
        .map(|n| test(format!("test_ok_{n:02}"), Outcome::Passed, ""))
        .collect();
    subs.push(test(
        "test_gpu_checks.test_hbm_bandwidth_regression".into(),
        Outcome::Failed,
        "bandwidth 2710 < 3000 GB/s",
    ));
    subs.push(test(
        "test_gpu_checks.test_pcie_link".into(),
        Outcome::Error,
        "no device",
    ));
    let job = &mut input.evidence.runs[0].jobs[0];
    let attempt = job
        .results
        .iter_mut()
        .find(|r| r.step_name == "stress" && r.attempt == 1)
        .expect("the hot node's first stress attempt");
    attempt.sub_results = subs;
    input
}

#[test]
fn every_format_lists_the_failing_tests_first_and_counts_the_passing_ones_left_out() {
    let input = input_with_tests();
    let last_listed = format!("test_ok_{:02}", tollgate_domain::result::LISTED_PASSING - 1);
    let first_left_out = format!("test_ok_{:02}", tollgate_domain::result::LISTED_PASSING);
    for format in [
        ReportFormat::Markdown,
        ReportFormat::Html,
        ReportFormat::Json,
        ReportFormat::Junit,
    ] {
        let text = text_of(&input, format);
        let failed = text
            .find("test_gpu_checks.test_hbm_bandwidth_regression")
            .unwrap_or_else(|| panic!("{format:?} names the failing test"));
        assert!(
            text.contains("bandwidth 2710 &lt; 3000 GB/s")
                || text.contains("bandwidth 2710 < 3000 GB/s"),
            "{format:?} gives the failing test's message"
        );
        assert!(
            text.contains("test_gpu_checks.test_pcie_link"),
            "{format:?} names the errored test"
        );
        let passing = text
            .find("test_ok_00")
            .unwrap_or_else(|| panic!("{format:?} lists some passing tests"));
        assert!(failed < passing, "{format:?} lists failing tests first");
        assert!(text.contains(&last_listed), "{format:?}");
        assert!(
            !text.contains(&first_left_out),
            "{format:?} lists at most {} passing tests",
            tollgate_domain::result::LISTED_PASSING
        );
    }
    let markdown = text_of(&input, ReportFormat::Markdown);
    assert!(
        markdown.contains("Passing or skipped tests not listed: stress attempt 1: 7"),
        "{markdown}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&text_of(&input, ReportFormat::Json)).expect("the JSON parses");
    let attempt = json["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .flat_map(|node| node["jobs"].as_array().expect("jobs"))
        .flat_map(|job| job["attempts"].as_array().expect("attempts"))
        .find(|a| !a["sub_results"].as_array().expect("sub_results").is_empty())
        .expect("an attempt with tests");
    assert_eq!(attempt["sub_results_not_listed"], 7);
    assert_eq!(attempt["sub_results"][0]["outcome"], "failed");
    assert_eq!(attempt["sub_results"][0]["failing"], true);
    let html = text_of(&input, ReportFormat::Html);
    assert!(html.contains("7 passing or skipped test(s) not listed"));
    let junit = text_of(&input, ReportFormat::Junit);
    assert!(
        junit.contains("test test_gpu_checks.test_hbm_bandwidth_regression failed: bandwidth 2710 &lt; 3000 GB/s"),
        "{junit}"
    );
}
