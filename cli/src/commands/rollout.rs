//! `tollgate rollout`: validate a rollout file offline; start, show, list and watch rollouts;
//! pause, resume, abort and skip a wave, each with a reason.

use crate::args::RolloutCommand;
use crate::client::{Controller, answer};
use crate::output::{Format, Table, format_time, print_json, print_json_line};
use anyhow::Context as _;
use std::fmt::Write as _;
use std::path::Path;
use tollgate_domain::rollout::RolloutSpec;
use tollgate_proto::v1 as pb;

/// Runs one `rollout` command (all but `validate`, which is offline).
pub async fn run(controller: &Controller, command: RolloutCommand) -> anyhow::Result<()> {
    let mut client = controller.rollouts();
    let (rollout, format) = match command {
        RolloutCommand::Validate { file, output } => return validate(&file, output.output),
        RolloutCommand::Start {
            release,
            fleet,
            file,
            output,
        } => {
            let source = read(&file)?;
            let request = pb::StartRolloutRequest {
                release,
                fleet,
                file: source,
                file_name: file.display().to_string(),
            };
            (answer(client.start_rollout(request).await)?, output.output)
        }
        RolloutCommand::Show { id, output } => (
            answer(client.get_rollout(pb::GetRolloutRequest { id }).await)?,
            output.output,
        ),
        RolloutCommand::List {
            active,
            release,
            node,
            output,
        } => {
            let listed = answer(
                client
                    .list_rollouts(pb::ListRolloutsRequest {
                        active_only: active,
                        release: release.unwrap_or_default(),
                        node: node.unwrap_or_default(),
                    })
                    .await,
            )?;
            return match output.output {
                Format::Json => print_json(&serde_json::json!({
                    "rollouts": listed.rollouts.iter().map(rollout_json).collect::<Vec<_>>(),
                })),
                Format::Text => {
                    print!("{}", format_list(&listed.rollouts));
                    Ok(())
                }
            };
        }
        RolloutCommand::Watch { id, output } => {
            let mut stream = answer(client.watch_rollout(pb::GetRolloutRequest { id }).await)?;
            while let Some(rollout) = stream
                .message()
                .await
                .map_err(crate::client::RpcError::from)?
            {
                match output.output {
                    Format::Json => print_json_line(&rollout_json(&rollout))?,
                    Format::Text => println!("{}", format_progress_line(&rollout)),
                }
            }
            return Ok(());
        }
        RolloutCommand::Pause { id, reason, output } => (
            answer(
                client
                    .pause_rollout(pb::RolloutActionRequest { id, reason })
                    .await,
            )?,
            output.output,
        ),
        RolloutCommand::Resume { id, reason, output } => (
            answer(
                client
                    .resume_rollout(pb::RolloutActionRequest { id, reason })
                    .await,
            )?,
            output.output,
        ),
        RolloutCommand::Abort {
            id,
            reason,
            rollback,
            output,
        } => (
            answer(
                client
                    .abort_rollout(pb::AbortRolloutRequest {
                        id,
                        reason,
                        rollback,
                    })
                    .await,
            )?,
            output.output,
        ),
        RolloutCommand::SkipWave { id, reason, output } => (
            answer(
                client
                    .skip_wave(pb::RolloutActionRequest { id, reason })
                    .await,
            )?,
            output.output,
        ),
    };
    match format {
        Format::Json => print_json(&rollout_json(&rollout)),
        Format::Text => {
            print!("{}", format_rollout(&rollout));
            Ok(())
        }
    }
}

fn read(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file)
        .with_context(|| format!("reading rollout file {}", file.display()))
}

/// `rollout validate FILE`: parses and validates the file offline.
pub fn validate(file: &Path, format: Format) -> anyhow::Result<()> {
    let source = read(file)?;
    let file_name = file.display().to_string();
    let parsed = tollgate_domain::rollout::parse_rollout(&file_name, &source);
    super::print_validated(&file_name, parsed, format, spec_json, format_spec)
}

fn spec_json(spec: &RolloutSpec) -> serde_json::Value {
    serde_json::to_value(spec).unwrap_or(serde_json::Value::Null)
}

/// A validated file, for people.
pub fn format_spec(file_name: &str, spec: &RolloutSpec) -> String {
    let mut out = format!("{file_name}: rollout {} is valid\n", spec.name);
    let _ = writeln!(out, "  fleet:     {}", spec.selector);
    for (idx, wave) in spec.waves.iter().enumerate() {
        let _ = writeln!(out, "  wave {idx}:    {wave}");
    }
    let _ = writeln!(
        out,
        "  procedure: {} (interrupted nodes: {})",
        spec.procedure.plan, spec.procedure.on_interrupted
    );
    let _ = writeln!(
        out,
        "  rollback:  {}",
        spec.rollback
            .as_ref()
            .map_or("none", |rollback| rollback.plan.as_str())
    );
    let rules: Vec<&str> = spec.health.iter().map(|rule| rule.id.as_str()).collect();
    let _ = writeln!(out, "  health:    {}", rules.join(", "));
    let _ = writeln!(out, "  soak:      {}s", spec.soak.as_secs());
    out
}

/// A rollout as JSON.
pub fn rollout_json(rollout: &pb::Rollout) -> serde_json::Value {
    let time = |at: &Option<prost_types::Timestamp>| format_time(at.as_ref());
    serde_json::json!({
        "id": rollout.id,
        "name": rollout.name,
        "release": rollout.release,
        "fleet": rollout.fleet,
        "digest": rollout.digest,
        "phase": rollout.phase,
        "wave": rollout.wave,
        "n_waves": rollout.n_waves,
        "progress_counts": rollout
            .progress_counts
            .iter()
            .map(|count| (count.progress.clone(), count.nodes))
            .collect::<std::collections::BTreeMap<_, _>>(),
        "since": time(&rollout.since),
        "paused_from": rollout.paused_from,
        "halt": rollout.halt.as_ref().map(|halt| serde_json::json!({
            "wave": halt.wave,
            "at": time(&halt.at),
            "failures": halt.failures.iter().map(|failure| serde_json::json!({
                "rule_id": failure.rule_id,
                "reason": failure.reason,
                "nodes": failure.nodes,
            })).collect::<Vec<_>>(),
        })),
        "waves": rollout.waves.iter().map(|wave| serde_json::json!({
            "index": wave.index,
            "nodes": wave.nodes.iter().map(|node| serde_json::json!({
                "node": node.node,
                "progress": node.progress,
                "run": node.run,
                "rollback_run": node.rollback_run,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "skipped": rollout.skipped.iter().map(|skipped| serde_json::json!({
            "wave": skipped.wave,
            "reason": skipped.reason,
            "nodes": skipped.nodes,
        })).collect::<Vec<_>>(),
        "created_by": rollout.created_by,
        "created_at": time(&rollout.created_at),
        "updated_at": time(&rollout.updated_at),
        "drifted": rollout.drifted.iter().map(tollgate_wire::json::drift).collect::<Vec<_>>(),
        "eta": rollout.eta.as_ref().map(|eta| format_time(Some(eta))),
        "eta_per_node_seconds": rollout.eta.as_ref().map(|_| rollout.eta_per_node_seconds),
        "eta_nodes_left": rollout.eta.as_ref().map(|_| rollout.eta_nodes_left),
    })
}

/// How many nodes of the rollout have each progress, as `passed 5, waiting 15`.
fn progress_counts(rollout: &pb::Rollout) -> String {
    rollout
        .progress_counts
        .iter()
        .map(|count| format!("{} {}", count.progress, count.nodes))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line per change while watching.
pub fn format_progress_line(rollout: &pb::Rollout) -> String {
    let eta = rollout
        .eta
        .as_ref()
        .map(|eta| format!(" (ends about {})", format_time(Some(eta))))
        .unwrap_or_default();
    format!(
        "{} {} wave {}/{}: {}{eta}",
        rollout.id,
        rollout.phase,
        rollout.wave + 1,
        rollout.n_waves,
        progress_counts(rollout)
    )
}

/// The estimate of the end: `2026-12-06T09:40:00Z (9 nodes left, 130 s each)`; `-` when none
/// holds (paused, halted, rolling back, ended).
fn eta_words(rollout: &pb::Rollout) -> String {
    match &rollout.eta {
        None => "-".to_owned(),
        Some(eta) => format!(
            "{} ({} node(s) left, {:.0} s each)",
            format_time(Some(eta)),
            rollout.eta_nodes_left,
            rollout.eta_per_node_seconds
        ),
    }
}

/// A rollout, for people: phase, why it halted, each wave with its nodes.
pub fn format_rollout(rollout: &pb::Rollout) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rollout {} ({}) of release {}",
        rollout.id, rollout.name, rollout.release
    );
    if !rollout.fleet.is_empty() {
        let _ = writeln!(out, "  fleet:   {}", rollout.fleet);
    }
    let paused = if rollout.paused_from.is_empty() {
        String::new()
    } else {
        format!(" (from {})", rollout.paused_from)
    };
    let _ = writeln!(
        out,
        "  phase:   {}{paused}, wave {} of {}, since {}",
        rollout.phase,
        rollout.wave + 1,
        rollout.n_waves,
        format_time(rollout.since.as_ref())
    );
    let _ = writeln!(out, "  nodes:   {}", progress_counts(rollout));
    let _ = writeln!(out, "  ends:    {}", eta_words(rollout));
    let _ = writeln!(out, "  file:    sha256 {}", rollout.digest);
    if let Some(halt) = &rollout.halt {
        let _ = writeln!(
            out,
            "  halted at wave {} ({}):",
            halt.wave + 1,
            format_time(halt.at.as_ref())
        );
        for failure in &halt.failures {
            let _ = writeln!(
                out,
                "    rule {} failed on {}: {}",
                failure.rule_id,
                failure.nodes.join(", "),
                failure.reason
            );
        }
    }
    for skipped in &rollout.skipped {
        let _ = writeln!(
            out,
            "  wave {} skipped ({} node(s) kept their release): {}",
            skipped.wave + 1,
            skipped.nodes.len(),
            skipped.reason
        );
    }
    let mut table = Table::new(&["WAVE", "NODE", "PROGRESS", "RUN", "ROLLBACK RUN"]);
    for wave in &rollout.waves {
        for node in &wave.nodes {
            table.row(vec![
                (wave.index + 1).to_string(),
                node.node.clone(),
                node.progress.clone(),
                node.run.clone(),
                node.rollback_run.clone(),
            ]);
        }
    }
    out.push_str(&table.render("  "));
    if !rollout.drifted.is_empty() {
        let _ = writeln!(
            out,
            "  drifted since this rollout updated them (expected vs reported):"
        );
        for drift in &rollout.drifted {
            let reported = if drift.reported.is_empty() {
                "nothing"
            } else {
                drift.reported.as_str()
            };
            let _ = writeln!(
                out,
                "    {} {}: {} vs {reported}",
                drift.node, drift.component, drift.expected
            );
        }
    }
    out
}

/// Rollouts, one line each.
fn format_list(rollouts: &[pb::Rollout]) -> String {
    let mut table = Table::new(&["ID", "NAME", "RELEASE", "PHASE", "WAVE", "NODES"]);
    for rollout in rollouts {
        table.row(vec![
            rollout.id.clone(),
            rollout.name.clone(),
            rollout.release.clone(),
            rollout.phase.clone(),
            format!("{}/{}", rollout.wave + 1, rollout.n_waves),
            progress_counts(rollout),
        ]);
    }
    table.render("")
}
