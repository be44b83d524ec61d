//! Value generators for property tests (with the `proptest` feature): every domain value
//! that crosses the wire, each valid as the wire checks it (names, bounds, finite numbers,
//! whole milliseconds, timestamps without leap seconds), so a round trip must give it back.

use crate::audit::AuditEntry;
use crate::fleet::{GpuInfo, GpuSourceKind, Health, Inventory, Labels, Node, NodeState};
use crate::gate::{Decision, EvidenceItem, FailureGroup, RuleDecision, Verdict, Waiver};
use crate::plan::{Step, StepKind, TelemetryLimit};
use crate::release::{Component, Promotion, Release};
use crate::result::{Measurement, Outcome, StepResult, SubResult};
use crate::telemetry::{
    EventKind, Field, FieldSummary, GpuEvent, GpuTelemetry, MAX_SERIES_POINTS, SeriesPoint,
    TelemetrySeries,
};
use crate::{JobId, NodeId, ReleaseId, Timestamp};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use std::collections::BTreeMap;
use std::time::Duration;

/// Any variant of a string enum; a variant added later is generated too.
pub fn every<T: strum::IntoEnumIterator + Clone + std::fmt::Debug + 'static>()
-> impl Strategy<Value = T> {
    select(T::iter().collect::<Vec<T>>())
}

/// A timestamp between 1970 and 2096 to the nanosecond, never inside a leap second.
pub fn timestamp() -> impl Strategy<Value = Timestamp> {
    (0i64..4_000_000_000, 0u32..1_000_000_000).prop_map(|(secs, nanos)| {
        chrono::DateTime::from_timestamp(secs, nanos).expect("in range, not a leap second")
    })
}

/// A usable name (release, node, component, step).
pub fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9._-]{0,15}"
}

/// A short free text, possibly empty.
pub fn text() -> impl Strategy<Value = String> {
    "[ -~]{0,24}"
}

/// A free text that is not empty (the wire's empty string means absent).
pub fn some_text() -> impl Strategy<Value = String> {
    "[!-~][ -~]{0,23}"
}

/// A finite number.
pub fn number() -> impl Strategy<Value = f64> {
    -1.0e9f64..1.0e9
}

/// Node labels.
pub fn labels() -> impl Strategy<Value = Labels> {
    btree_map("[a-z][a-z0-9./_-]{0,11}", "[a-z0-9-]{0,12}", 0..4)
}

/// Any outcome.
pub fn outcome() -> impl Strategy<Value = Outcome> {
    every::<Outcome>()
}

/// Any telemetry field.
pub fn field() -> impl Strategy<Value = Field> {
    select(Field::ALL.to_vec())
}

/// One GPU.
pub fn gpu_info() -> impl Strategy<Value = GpuInfo> {
    (
        (0u32..16, "GPU-[0-9a-f]{8}", text(), option::of(some_text())),
        (option::of(some_text()), text(), "[0-9.]{1,14}"),
        (
            option::of(some_text()),
            any::<u64>(),
            option::of(any::<bool>()),
        ),
        (
            option::of(number()),
            option::of(any::<u32>()),
            option::of(any::<u32>()),
        ),
    )
        .prop_map(
            |(
                (index, uuid, name, serial),
                (board_part_number, pci_bus_id, vbios_version),
                (inforom_version, memory_total_mib, ecc_enabled),
                (power_limit_w, max_pcie_gen, max_pcie_width),
            )| GpuInfo {
                index,
                uuid,
                name,
                serial,
                board_part_number,
                pci_bus_id,
                vbios_version,
                inforom_version,
                memory_total_mib,
                ecc_enabled,
                power_limit_w,
                max_pcie_gen,
                max_pcie_width,
            },
        )
}

/// An inventory.
pub fn inventory() -> impl Strategy<Value = Inventory> {
    (
        ("[0-9.]{0,10}", "[0-9.]{0,6}", "[0-9.]{0,12}"),
        vec(gpu_info(), 0..4),
        btree_map(name(), "[0-9a-z.]{1,10}", 0..4),
        every::<GpuSourceKind>(),
        text(),
    )
        .prop_map(
            |(
                (driver_version, cuda_driver_version, nvml_version),
                gpus,
                components,
                gpu_source,
                hostname,
            )| {
                Inventory {
                    driver_version,
                    cuda_driver_version,
                    nvml_version,
                    gpus,
                    components,
                    gpu_source,
                    hostname,
                }
            },
        )
}

/// A node.
pub fn node() -> impl Strategy<Value = Node> {
    let state = every::<NodeState>();
    let health = every::<Health>();
    (
        (name(), labels(), state, health, text()),
        (
            inventory(),
            option::of(timestamp()),
            option::of("job-[0-9a-f]{4}"),
        ),
    )
        .prop_map(
            |((id, labels, state, health, health_reason), (inventory, last_seen_at, job))| Node {
                id: NodeId::new(id),
                reported_labels: labels.clone(),
                labels,
                state,
                health,
                health_reason,
                inventory,
                last_seen_at,
                current_job: job.map(JobId::new),
            },
        )
}

/// A release component, valid as a release lists it.
pub fn component() -> impl Strategy<Value = Component> {
    (
        name(),
        "[0-9a-z.]{1,10}",
        option::of("https://[a-z]{1,8}/[a-z]{1,8}"),
        option::of("[0-9a-f]{64}"),
    )
        .prop_map(|(name, version, artifact_uri, sha256)| Component {
            name,
            version,
            artifact_uri,
            sha256,
        })
}

/// A promotion.
pub fn promotion() -> impl Strategy<Value = Promotion> {
    (name(), name(), timestamp(), "[0-9a-f]{16}", name()).prop_map(
        |(from_milestone, to_milestone, at, decision_digest, actor)| Promotion {
            from_milestone,
            to_milestone,
            at,
            decision_digest,
            actor,
        },
    )
}

/// A release with one to four components of distinct names.
pub fn release() -> impl Strategy<Value = Release> {
    (
        name(),
        text(),
        btree_map(name(), component(), 1..5),
        name(),
        timestamp(),
        vec(promotion(), 0..3),
    )
        .prop_map(
            |(id, description, components, milestone, created_at, promotions)| Release {
                id: ReleaseId::new(id),
                description,
                components: components
                    .into_iter()
                    .map(|(name, component)| Component { name, ..component })
                    .collect(),
                milestone,
                created_at,
                promotions,
            },
        )
}

fn argv() -> impl Strategy<Value = Vec<String>> {
    vec("[a-z./-]{1,10}", 1..4)
}

fn env() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map("[A-Z_]{1,8}", text(), 0..3)
}

fn workdir() -> impl Strategy<Value = Option<String>> {
    option::of("/[a-z/]{1,12}")
}

fn millis() -> impl Strategy<Value = Duration> {
    (1u64..100_000_000).prop_map(Duration::from_millis)
}

fn telemetry_limit() -> impl Strategy<Value = TelemetryLimit> {
    (field(), option::of(number()), option::of(number()))
        .prop_map(|(field, min, max)| TelemetryLimit { field, min, max })
}

/// What a step does, every kind.
pub fn step_kind() -> impl Strategy<Value = StepKind> {
    prop_oneof![
        (argv(), env(), workdir()).prop_map(|(command, env, workdir)| StepKind::Exec {
            command,
            env,
            workdir
        }),
        vec(name(), 0..3).prop_map(|components| StepKind::InventoryCheck { components }),
        (1u8..=4, vec(name(), 0..3), vec("[a-z-]{1,8}", 0..3)).prop_map(
            |(level, tests, command)| StepKind::DcgmDiag {
                level,
                tests,
                command
            }
        ),
        (argv(), env(), workdir(), "[a-z*./]{1,12}").prop_map(|(command, env, workdir, report)| {
            StepKind::Junit {
                command,
                env,
                workdir,
                report,
            }
        }),
        (
            argv(),
            env(),
            workdir(),
            millis(),
            vec(telemetry_limit(), 0..3)
        )
            .prop_map(
                |(command, env, workdir, duration, limits)| StepKind::BurnIn {
                    command,
                    env,
                    workdir,
                    duration,
                    limits
                }
            ),
        (
            argv(),
            env(),
            workdir(),
            name(),
            "[0-9.]{1,10}",
            any::<bool>()
        )
            .prop_map(|(command, env, workdir, component, version, reboot)| {
                StepKind::Flash {
                    command,
                    env,
                    workdir,
                    component,
                    version,
                    reboot,
                }
            }),
    ]
}

/// A plan step with a timeout in whole milliseconds (as the wire carries it).
pub fn step() -> impl Strategy<Value = Step> {
    (name(), step_kind(), millis(), 0u32..5).prop_map(|(name, kind, timeout, retries)| Step {
        name,
        kind,
        timeout,
        retries,
    })
}

/// A measurement.
pub fn measurement() -> impl Strategy<Value = Measurement> {
    (name(), number(), option::of("[a-zA-Z/%]{1,6}")).prop_map(|(name, value, unit)| Measurement {
        name,
        value,
        unit,
    })
}

/// One GPU's telemetry summary of a step.
pub fn gpu_telemetry() -> impl Strategy<Value = GpuTelemetry> {
    let summary = (
        field(),
        number(),
        number(),
        number(),
        number(),
        number(),
        any::<u32>(),
    )
        .prop_map(|(field, min, max, mean, p99, last, samples)| FieldSummary {
            field,
            min,
            max,
            mean,
            p99,
            last,
            samples,
        });
    (
        0u32..16,
        "GPU-[0-9a-f]{8}",
        vec(summary, 0..4),
        any::<u32>(),
    )
        .prop_map(
            |(gpu_index, gpu_uuid, fields, samples_missed)| GpuTelemetry {
                gpu_index,
                gpu_uuid,
                fields,
                samples_missed,
            },
        )
}

/// A GPU event.
pub fn gpu_event() -> impl Strategy<Value = GpuEvent> {
    let kind = every::<EventKind>();
    (
        0u32..16,
        "GPU-[0-9a-f]{8}",
        kind,
        any::<i64>(),
        timestamp(),
        text(),
    )
        .prop_map(|(gpu_index, gpu_uuid, kind, code, at, detail)| GpuEvent {
            gpu_index,
            gpu_uuid,
            kind,
            code,
            at,
            detail,
        })
}

/// One test of a step.
pub fn sub_result() -> impl Strategy<Value = SubResult> {
    (
        select(vec!["dcgm-diag", "junit"]),
        text(),
        some_text(),
        option::of(0u32..16),
        outcome(),
        text(),
        option::of(any::<u8>()),
    )
        .prop_map(
            |(source, suite, name, gpu_index, outcome, message, level)| SubResult {
                source: source.to_owned(),
                suite,
                name,
                gpu_index,
                outcome,
                message,
                level,
            },
        )
}

/// A telemetry series of a step.
pub fn series() -> impl Strategy<Value = TelemetrySeries> {
    let point = (any::<u64>(), number(), number(), number(), any::<u32>()).prop_map(
        |(offset_ms, mean, min, max, samples)| SeriesPoint {
            offset_ms,
            mean,
            min,
            max,
            samples,
        },
    );
    (
        0u32..16,
        field(),
        any::<u64>(),
        vec(point, 0..MAX_SERIES_POINTS.min(8)),
    )
        .prop_map(|(gpu_index, field, bucket_ms, points)| TelemetrySeries {
            gpu_index,
            field,
            bucket_ms,
            points,
        })
}

/// A step result: attempts from 1, several lease epochs, finished no earlier than started.
pub fn step_result() -> impl Strategy<Value = StepResult> {
    (
        (
            "job-[0-9a-f]{4}",
            0u32..8,
            name(),
            1u32..4,
            1u64..4,
            outcome(),
        ),
        (option::of(any::<i32>()), timestamp(), 0i64..10_000_000_000),
        (
            vec(measurement(), 0..3),
            vec(gpu_telemetry(), 0..2),
            vec(gpu_event(), 0..2),
        ),
        (inventory(), text(), text(), vec(sub_result(), 0..3)),
        (option::of(inventory()), vec(series(), 0..2)),
    )
        .prop_map(
            |(
                (job_id, step_index, step_name, attempt, lease_epoch, outcome),
                (exit_code, started_at, run_nanos),
                (measurements, telemetry, events),
                (inventory, log_tail, message, sub_results),
                (inventory_at_end, series),
            )| StepResult {
                job_id: JobId::new(job_id),
                step_index,
                step_name,
                attempt,
                lease_epoch,
                outcome,
                exit_code,
                started_at,
                finished_at: started_at + chrono::Duration::nanoseconds(run_nanos),
                measurements,
                telemetry,
                events,
                inventory,
                log_tail,
                message,
                sub_results,
                inventory_at_end,
                series,
            },
        )
}

/// Any verdict.
pub fn verdict() -> impl Strategy<Value = Verdict> {
    every::<Verdict>()
}

/// An evidence item; a step, attempt, limit and signature are either absent or set.
pub fn evidence_item() -> impl Strategy<Value = EvidenceItem> {
    (
        (
            name(),
            option::of(name()),
            option::of(1u32..5),
            option::of(0u32..8),
        ),
        (
            option::of(number()),
            option::of(some_text()),
            text(),
            any::<bool>(),
        ),
        option::of(some_text()),
    )
        .prop_map(
            |((node, step, attempt, gpu_index), (value, limit, detail, ok), signature)| {
                EvidenceItem {
                    node: NodeId::new(node),
                    step,
                    attempt,
                    gpu_index,
                    value,
                    limit,
                    detail,
                    ok,
                    signature,
                }
            },
        )
}

/// One rule's decision.
pub fn rule_decision() -> impl Strategy<Value = RuleDecision> {
    let group =
        (some_text(), 0usize..1000, vec(name(), 0..3)).prop_map(|(signature, count, nodes)| {
            FailureGroup {
                signature,
                count,
                nodes: nodes.into_iter().map(NodeId::new).collect(),
            }
        });
    (
        (name(), name(), verdict(), text()),
        (vec(evidence_item(), 0..3), vec(name(), 0..3)),
        (vec(group, 0..2), option::of(name())),
    )
        .prop_map(
            |(
                (rule_id, kind, verdict, reason),
                (evidence, failing_nodes),
                (failure_groups, waiver_id),
            )| RuleDecision {
                rule_id,
                kind,
                verdict,
                reason,
                evidence,
                failing_nodes: failing_nodes.into_iter().map(NodeId::new).collect(),
                failure_groups,
                waiver_id,
            },
        )
}

/// A gate decision.
pub fn decision() -> impl Strategy<Value = Decision> {
    (
        (name(), name(), verdict(), text()),
        vec(rule_decision(), 0..3),
        ("[0-9a-f]{16}", "[0-9a-f]{16}", timestamp()),
    )
        .prop_map(
            |(
                (release, milestone, verdict, summary),
                rules,
                (digest, policy_version, evaluated_at),
            )| {
                Decision {
                    release,
                    milestone,
                    verdict,
                    summary,
                    rules,
                    digest,
                    policy_version,
                    evaluated_at,
                }
            },
        )
}

/// A waiver.
pub fn waiver() -> impl Strategy<Value = Waiver> {
    (
        ("waiver-[0-9a-f]{4}", name(), name(), name()),
        (text(), text(), name()),
        (timestamp(), timestamp(), option::of(timestamp())),
        (vec(name(), 0..3), vec(name(), 0..3), vec(name(), 0..3)),
    )
        .prop_map(
            |(
                (id, release, milestone, rule_id),
                (reason, ticket, approver),
                (created_at, expires_at, revoked_at),
                (nodes, skus, steps),
            )| Waiver {
                id,
                release,
                milestone,
                rule_id,
                reason,
                ticket,
                approver,
                created_at,
                expires_at,
                revoked_at,
                nodes: nodes.into_iter().map(NodeId::new).collect(),
                skus,
                steps,
                issue: None,
            },
        )
}

/// An audit entry.
pub fn audit_entry() -> impl Strategy<Value = AuditEntry> {
    (
        any::<u64>(),
        timestamp(),
        (name(), name(), name(), text()),
        ("[0-9a-f]{16}", "[0-9a-f]{16}"),
    )
        .prop_map(
            |(seq, at, (actor, action, subject, details), (prev_hash, hash))| AuditEntry {
                seq,
                at,
                actor,
                action,
                subject,
                details,
                prev_hash,
                hash,
            },
        )
}
