//! `tollgate node`: list, show, cordon, uncordon, drain and retire lab nodes, and set their
//! health.

use crate::args::NodeCommand;
use crate::client::{Controller, answer};
use crate::output::{
    Format, Table, format_age, format_labels, format_number, format_time, or_dash, print_json,
    sorted,
};
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::fmt::Write as _;
use tollgate_proto::v1 as pb;
use tollgate_wire::json;

/// The `gpu_source` value of nodes whose GPUs are simulated.
const SIMULATED: &str = "simulated";

/// Runs one `node` command.
pub async fn run(controller: &Controller, command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::List {
            selectors,
            components,
            pages,
            output,
        } => {
            let selector = parse_selector(&selectors)?;
            let nodes = list(controller, selector, pages).await?;
            match output.output {
                Format::Json if components => print_json(&json::list(
                    "nodes",
                    nodes.iter().map(components_json).collect(),
                )),
                Format::Text if components => {
                    print!("{}", format_components_table(&nodes));
                    Ok(())
                }
                Format::Json => {
                    print_json(&json::list("nodes", nodes.iter().map(json::node).collect()))
                }
                Format::Text => {
                    print!("{}", format_node_table(&nodes, crate::clock::now()));
                    Ok(())
                }
            }
        }
        NodeCommand::Show { name, output } => {
            let node = answer(
                controller
                    .nodes()
                    .get_node(pb::GetNodeRequest { name: name.clone() })
                    .await,
            )?;
            print_node(&node, output.output, crate::clock::now())
        }
        NodeCommand::Cordon { name, output } => {
            set_cordon(controller, name, true, output.output).await
        }
        NodeCommand::Uncordon { name, output } => {
            set_cordon(controller, name, false, output.output).await
        }
        NodeCommand::Resume { name, output } => {
            let node = answer(
                controller
                    .nodes()
                    .set_cordon(pb::SetCordonRequest {
                        name,
                        cordoned: false,
                    })
                    .await,
            )?;
            print_changed(&node, "resumed", output.output)
        }
        NodeCommand::Drain {
            name,
            reason,
            deadline,
            output,
        } => {
            let deadline_seconds = match deadline {
                Some(text) => tollgate_domain::spec::parse_duration(&text)
                    .map_err(anyhow::Error::msg)
                    .context("--deadline")?
                    .as_secs()
                    .max(1),
                None => 0,
            };
            let node = answer(
                controller
                    .nodes()
                    .drain_node(pb::DrainNodeRequest {
                        name,
                        reason,
                        deadline_seconds,
                    })
                    .await,
            )?;
            print_changed(&node, "drained", output.output)
        }
        NodeCommand::Retire {
            name,
            reason,
            output,
        } => {
            let node = answer(
                controller
                    .nodes()
                    .retire_node(pb::RetireNodeRequest { name, reason })
                    .await,
            )?;
            print_changed(&node, "retired", output.output)
        }
        NodeCommand::Health {
            name,
            set,
            reason,
            output,
        } => {
            let node = answer(
                controller
                    .nodes()
                    .set_health(pb::SetHealthRequest {
                        name,
                        health: set,
                        reason,
                    })
                    .await,
            )?;
            match output.output {
                Format::Json => print_json(&json::node(&node)),
                Format::Text => {
                    println!(
                        "node {} health {} ({})",
                        node.name, node.health, node.health_reason
                    );
                    Ok(())
                }
            }
        }
        NodeCommand::Enroll {
            name,
            labels,
            expires,
            output,
        } => enroll(controller, name, &labels, &expires, output.output).await,
        NodeCommand::Telemetry { args, output } => {
            crate::commands::telemetry::run(controller, args, output.output).await
        }
        NodeCommand::HealthPlan(command) => {
            crate::commands::maintenance::health_plan(controller, command).await
        }
        NodeCommand::Revoke { name, output } => {
            let revoked = answer(
                controller
                    .nodes()
                    .revoke_node(pb::RevokeNodeRequest { node_name: name })
                    .await,
            )?;
            match output.output {
                Format::Json => print_json(&serde_json::json!({
                    "node_name": revoked.node_name,
                    "serials": revoked.serials,
                })),
                Format::Text => {
                    println!(
                        "node {}: {} certificate(s) revoked ({})",
                        revoked.node_name,
                        revoked.serials.len(),
                        revoked.serials.join(", ")
                    );
                    Ok(())
                }
            }
        }
    }
}

/// `node enroll`: asks for a bootstrap token and prints it once.
async fn enroll(
    controller: &Controller,
    name: String,
    labels: &[String],
    expires: &str,
    format: Format,
) -> anyhow::Result<()> {
    let labels = labels
        .iter()
        .filter(|text| !text.is_empty())
        .map(|text| {
            tollgate_domain::fleet::parse_label(text)
                .map_err(anyhow::Error::msg)
                .context("--labels")
        })
        .collect::<anyhow::Result<HashMap<_, _>>>()?;
    let ttl = tollgate_domain::spec::parse_duration(expires)
        .map_err(anyhow::Error::msg)
        .context("--expires")?;
    let response = answer(
        controller
            .nodes()
            .enroll_node(pb::EnrollNodeRequest {
                node_name: name,
                labels,
                ttl_seconds: ttl.as_secs(),
            })
            .await,
    )?;
    let expires_at = response
        .expires_at
        .and_then(|at| tollgate_wire::time::timestamp_from_proto(&at))
        .map(|at| at.to_rfc3339())
        .unwrap_or_default();
    match format {
        Format::Json => print_json(&serde_json::json!({
            "node_name": response.node_name,
            "bootstrap_token": response.bootstrap_token,
            "expires_at": expires_at,
        })),
        Format::Text => {
            println!("{}", response.bootstrap_token);
            eprintln!(
                "bootstrap token for node {} (expires {expires_at}; shown only now): save it in a \
                 file on the node and start `tollgate-agent --node {} --bootstrap-token-file FILE`",
                response.node_name, response.node_name
            );
            Ok(())
        }
    }
}

/// Every node matching `selector` (up to `pages.limit`), ordered by name.
pub async fn list(
    controller: &Controller,
    selector: HashMap<String, String>,
    pages: crate::pages::PageArgs,
) -> anyhow::Result<Vec<pb::Node>> {
    let nodes = crate::pages::follow(pages, |page_size, page_token| {
        let mut client = controller.nodes();
        let request = pb::ListNodesRequest {
            selector: selector.clone(),
            page_size,
            page_token,
        };
        let first_page = request.page_token.is_empty();
        async move {
            let page = answer(client.list_nodes(request).await)?;
            if first_page && let Some(outage) = &page.fleet_outage {
                warn_fleet_outage(outage);
            }
            Ok::<_, crate::client::RpcError>((page.nodes, page.next_page_token))
        }
    })
    .await?;
    Ok(nodes)
}

/// Says on stderr that the controller takes the fleet's silence for an outage.
fn warn_fleet_outage(outage: &pb::FleetOutage) {
    let since = outage
        .since
        .as_ref()
        .and_then(tollgate_wire::time::timestamp_from_proto)
        .map(|at| {
            format!(
                " since {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        })
        .unwrap_or_default();
    eprintln!(
        "warning: {} of {} nodes are silent at once{since}: the controller suspects an outage \
         of itself, its database or the network, and no lease expires until heartbeats return",
        outage.silent, outage.watched
    );
}

async fn set_cordon(
    controller: &Controller,
    name: String,
    cordoned: bool,
    format: Format,
) -> anyhow::Result<()> {
    let node = answer(
        controller
            .nodes()
            .set_cordon(pb::SetCordonRequest { name, cordoned })
            .await,
    )?;
    print_changed(
        &node,
        if cordoned { "cordoned" } else { "uncordoned" },
        format,
    )
}

/// The node after an operator's change: `node NAME VERB; state STATE`, or the node as JSON.
fn print_changed(node: &pb::Node, verb: &str, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(&json::node(node)),
        Format::Text => {
            println!("node {} {verb}; state {}", node.name, node.state);
            Ok(())
        }
    }
}

fn print_node(node: &pb::Node, format: Format, now: DateTime<Utc>) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(&json::node(node)),
        Format::Text => {
            print!("{}", format_node(node, now));
            Ok(())
        }
    }
}

/// `--selector k=v` flags as a label map; the error names the bad one.
pub fn parse_selector(selectors: &[String]) -> anyhow::Result<HashMap<String, String>> {
    selectors
        .iter()
        .map(|text| {
            tollgate_domain::fleet::parse_label(text)
                .map_err(anyhow::Error::msg)
                .context("--selector")
        })
        .collect()
}

fn is_simulated(node: &pb::Node) -> bool {
    node.inventory
        .as_ref()
        .is_some_and(|inventory| inventory.gpu_source == SIMULATED)
}

/// The node table: NAME STATE HEALTH GPUS SOURCE DRIVER LABELS LAST SEEN, with a note under it
/// when any node's GPUs are simulated.
pub fn format_node_table(nodes: &[pb::Node], now: DateTime<Utc>) -> String {
    if nodes.is_empty() {
        return "no nodes\n".to_owned();
    }
    let mut table = Table::new(&[
        "NAME",
        "STATE",
        "HEALTH",
        "GPUS",
        "SOURCE",
        "DRIVER",
        "LABELS",
        "LAST SEEN",
    ]);
    for node in nodes {
        let (n_gpus, source, driver) = match &node.inventory {
            Some(inventory) => (
                inventory.gpus.len().to_string(),
                or_dash(&inventory.gpu_source).to_owned(),
                or_dash(&inventory.driver_version).to_owned(),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        table.row(vec![
            node.name.clone(),
            node.state.clone(),
            node.health.clone(),
            n_gpus,
            source,
            driver,
            format_labels(&node.labels),
            format_age(node.last_seen_at.as_ref(), now),
        ]);
    }
    let mut out = table.render("");
    // Why a node is not good, so the operator knows what to look at before clearing it.
    for node in nodes.iter().filter(|node| node.health != "good") {
        let _ = writeln!(
            out,
            "{} is {}: {}",
            node.name,
            node.health,
            or_dash(&node.health_reason)
        );
    }
    out.push_str(&drift_lines(nodes));
    let n_simulated = nodes.iter().filter(|node| is_simulated(node)).count();
    if n_simulated > 0 {
        let _ = writeln!(
            out,
            "note: {n_simulated} of {} nodes report simulated GPUs; their numbers are made up",
            nodes.len()
        );
    }
    out
}

/// One line per component a node reports otherwise than the rollout that updated it:
/// `prod-3 drift: rollout R expects vbios 96.00.89.00.01, reports 96.00.74.00.01`.
fn drift_lines(nodes: &[pb::Node]) -> String {
    let mut out = String::new();
    for node in nodes {
        for drift in &node.rollout_drift {
            let _ = writeln!(
                out,
                "{} drift: {}",
                node.name,
                tollgate_wire::fleet::drift_words(drift)
            );
        }
    }
    out
}

/// The distinct VBIOS versions of a node's GPUs.
fn vbios_versions(inventory: &pb::Inventory) -> Vec<&str> {
    let set: std::collections::BTreeSet<&str> = inventory
        .gpus
        .iter()
        .map(|gpu| gpu.vbios_version.as_str())
        .filter(|version| !version.is_empty())
        .collect();
    set.into_iter().collect()
}

/// Which versions a node runs, as JSON (`node list --components -o json`).
pub fn components_json(node: &pb::Node) -> serde_json::Value {
    let inventory = node.inventory.clone().unwrap_or_default();
    serde_json::json!({
        "name": node.name,
        "labels": sorted(&node.labels),
        "driver": inventory.driver_version,
        "cuda_driver": inventory.cuda_driver_version,
        "vbios": vbios_versions(&inventory),
        "components": sorted(&inventory.components),
        "gpu_source": inventory.gpu_source,
        "rollout_drift": node.rollout_drift.iter().map(json::drift).collect::<Vec<_>>(),
    })
}

/// Which versions each node runs: NAME DRIVER VBIOS COMPONENTS, then the drift lines.
pub fn format_components_table(nodes: &[pb::Node]) -> String {
    if nodes.is_empty() {
        return "no nodes\n".to_owned();
    }
    let mut table = Table::new(&["NAME", "DRIVER", "VBIOS", "COMPONENTS"]);
    for node in nodes {
        let inventory = node.inventory.clone().unwrap_or_default();
        let components = sorted(&inventory.components)
            .into_iter()
            .map(|(name, version)| format!("{name}={version}"))
            .collect::<Vec<_>>()
            .join(",");
        table.row(vec![
            node.name.clone(),
            or_dash(&inventory.driver_version).to_owned(),
            or_dash(&vbios_versions(&inventory).join(",")).to_owned(),
            or_dash(&components).to_owned(),
        ]);
    }
    let mut out = table.render("");
    out.push_str(&drift_lines(nodes));
    out
}

/// One node with its inventory and a table of its GPUs.
pub fn format_node(node: &pb::Node, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node {}", node.name);
    if is_simulated(node) {
        let _ = writeln!(
            out,
            "  SIMULATED GPUs: every GPU fact and number below is made up"
        );
    }
    let _ = writeln!(out, "state:       {}", node.state);
    if node.health_reason.is_empty() {
        let _ = writeln!(out, "health:      {}", node.health);
    } else {
        let _ = writeln!(out, "health:      {} ({})", node.health, node.health_reason);
    }
    let _ = writeln!(out, "labels:      {}", format_labels(&node.labels));
    // What the agent says of itself, when it differs from the labels of record.
    if node.reported_labels != node.labels {
        let _ = writeln!(
            out,
            "reported:    {} (by its agent; runs select on the labels above)",
            format_labels(&node.reported_labels)
        );
    }
    let _ = writeln!(
        out,
        "last seen:   {} ({})",
        format_time(node.last_seen_at.as_ref()),
        format_age(node.last_seen_at.as_ref(), now)
    );
    let _ = writeln!(out, "current job: {}", or_dash(&node.current_job_id));
    if let Some(deadline) = &node.drain_deadline {
        let _ = writeln!(
            out,
            "drain deadline: {} (a job still running then is cancelled and started elsewhere)",
            format_time(Some(deadline))
        );
    }
    if !node.maintenance_window.is_empty() {
        let _ = writeln!(out, "maintenance: {}", node.maintenance_window);
    }
    for check in &node.health_checks {
        let _ = writeln!(
            out,
            "health check: {} {} at {} (run {})",
            check.plan_name,
            if check.verdict.is_empty() {
                "running"
            } else {
                check.verdict.as_str()
            },
            format_time(check.started_at.as_ref()),
            check.run_id
        );
    }
    let Some(inventory) = &node.inventory else {
        let _ = writeln!(out, "inventory:   none reported yet");
        return out;
    };
    let _ = writeln!(out, "hostname:    {}", or_dash(&inventory.hostname));
    let _ = writeln!(out, "gpu source:  {}", or_dash(&inventory.gpu_source));
    let _ = writeln!(
        out,
        "driver:      {} (CUDA {}, NVML {})",
        or_dash(&inventory.driver_version),
        or_dash(&inventory.cuda_driver_version),
        or_dash(&inventory.nvml_version)
    );
    if !inventory.components.is_empty() {
        let _ = writeln!(out, "components:");
        for (name, version) in sorted(&inventory.components) {
            let _ = writeln!(out, "  {name} = {version}");
        }
    }
    let _ = writeln!(out, "gpus ({}):", inventory.gpus.len());
    if !inventory.gpus.is_empty() {
        let mut table = Table::new(&[
            "IDX", "MODEL", "SERIAL", "PCI", "VBIOS", "MEMORY", "ECC", "POWER", "PCIE", "UUID",
        ]);
        for gpu in &inventory.gpus {
            table.row(vec![
                gpu.index.to_string(),
                gpu.name.clone(),
                gpu.serial.clone().unwrap_or_else(|| "-".into()),
                gpu.pci_bus_id.clone(),
                gpu.vbios_version.clone(),
                format!("{} MiB", gpu.memory_total_mib),
                match gpu.ecc_enabled {
                    Some(true) => "on".into(),
                    Some(false) => "off".into(),
                    None => "-".into(),
                },
                gpu.power_limit_w
                    .map_or_else(|| "-".into(), |w| format!("{} W", format_number(w))),
                match (gpu.max_pcie_gen, gpu.max_pcie_width) {
                    (Some(generation), Some(width)) => format!("gen{generation} x{width}"),
                    _ => "-".into(),
                },
                gpu.uuid.clone(),
            ]);
        }
        out.push_str(&table.render("  "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, source: &str) -> pb::Node {
        pb::Node {
            name: name.into(),
            labels: [("sku".to_string(), "hgx-h100".to_string())].into(),
            state: "ready".into(),
            health: "good".into(),
            inventory: Some(pb::Inventory {
                driver_version: "550.54.15".into(),
                gpus: vec![pb::GpuInfo {
                    index: 0,
                    name: "NVIDIA H100 80GB HBM3".into(),
                    vbios_version: "96.00.89.00.01".into(),
                    ..Default::default()
                }],
                gpu_source: source.into(),
                ..Default::default()
            }),
            last_seen_at: Some(prost_types::Timestamp {
                seconds: 995,
                nanos: 0,
            }),
            current_job_id: String::new(),
            health_reason: String::new(),
            reported_labels: [("sku".to_string(), "hgx-h100".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn node_show_says_the_drain_deadline_the_window_and_the_latest_health_checks() {
        let mut drained = node("n1", "nvml");
        drained.state = "draining".into();
        drained.drain_deadline = Some(prost_types::Timestamp {
            seconds: 1_767_229_200,
            nanos: 0,
        });
        drained.maintenance_window =
            "n1 is in maintenance window mw-1 (rack=r12) until 2026-01-01T02:00:00Z: PDU swap"
                .into();
        drained.health_checks = vec![
            pb::NodeHealthCheck {
                plan_name: "node-health".into(),
                run_id: "run-9".into(),
                started_at: Some(prost_types::Timestamp {
                    seconds: 1_767_225_600,
                    nanos: 0,
                }),
                verdict: "failed".into(),
            },
            pb::NodeHealthCheck {
                plan_name: "burn-in".into(),
                run_id: "run-10".into(),
                started_at: None,
                verdict: String::new(),
            },
        ];
        let text = format_node(&drained, DateTime::from_timestamp(1_000, 0).expect("time"));
        assert!(
            text.contains("drain deadline: 2026-01-01T01:00:00Z (a job still running then"),
            "{text}"
        );
        assert!(
            text.contains("maintenance: n1 is in maintenance window mw-1 (rack=r12)"),
            "{text}"
        );
        assert!(
            text.contains("health check: node-health failed at 2026-01-01T00:00:00Z (run run-9)"),
            "{text}"
        );
        assert!(text.contains("health check: burn-in running at"), "{text}");
        // Without them, none of those lines.
        let plain = format_node(
            &node("n2", "nvml"),
            DateTime::from_timestamp(1_000, 0).expect("time"),
        );
        assert!(
            !plain.contains("drain deadline") && !plain.contains("health check"),
            "{plain}"
        );
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1000, 0).expect("valid")
    }

    #[test]
    fn node_table_marks_simulated_nodes() {
        let text = format_node_table(&[node("lab-1", "simulated"), node("gpu-7", "nvml")], now());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{text}");
        assert!(lines[0].contains("LAST SEEN"), "{text}");
        assert!(
            lines[1].contains("simulated") && lines[1].contains("5s ago"),
            "{text}"
        );
        assert!(lines[2].contains("nvml"), "{text}");
        assert!(
            text.contains("1 of 2 nodes report simulated GPUs"),
            "{text}"
        );
    }

    #[test]
    fn node_details_list_gpus() {
        let text = format_node(&node("lab-1", "simulated"), now());
        assert!(text.contains("SIMULATED GPUs"), "{text}");
        assert!(text.contains("96.00.89.00.01"), "{text}");
        assert!(text.contains("driver:      550.54.15"), "{text}");
        assert!(!text.contains("reported:"), "same as of record: {text}");
    }

    #[test]
    fn node_details_show_reported_labels_unlike_the_labels_of_record() {
        let mut claimed = node("lab-1", "nvml");
        claimed.reported_labels = [("sku".to_string(), "hgx-h200".to_string())].into();
        let text = format_node(&claimed, now());
        assert!(text.contains("labels:      sku=hgx-h100"), "{text}");
        assert!(
            text.contains(
                "reported:    sku=hgx-h200 (by its agent; runs select on the labels above)"
            ),
            "{text}"
        );
    }

    #[test]
    fn list_and_show_say_why_a_node_is_not_good() {
        let mut bad = node("gpu-7", "nvml");
        bad.health = "bad".into();
        bad.health_reason =
            "GPU 0 fell off the bus during step stress (attempt 1) of job j1".into();
        let table = format_node_table(&[node("lab-1", "nvml"), bad.clone()], now());
        assert!(
            table.contains("gpu-7 is bad: GPU 0 fell off the bus during step stress"),
            "{table}"
        );
        assert!(!table.contains("lab-1 is good"), "{table}");
        let shown = format_node(&bad, now());
        assert!(
            shown.contains("health:      bad (GPU 0 fell off the bus"),
            "{shown}"
        );
    }

    #[test]
    fn selectors_must_be_key_value() {
        assert!(parse_selector(&["sku=hgx-h100".into()]).is_ok());
        let error = parse_selector(&["sku".into()]).expect_err("no =");
        assert!(format!("{error:#}").contains("not key=value"), "{error:#}");
    }
}
