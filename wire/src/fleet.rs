//! Nodes and what they run: GPUs, inventories, registrations.

use crate::bounds::check_labels;
use crate::fields::{FieldErrors, InvalidFields};
use crate::time::timestamp_to_proto;
use crate::{FromProto, ToProto, non_empty, sorted, unsorted};
use tollgate_domain::fleet::{GpuInfo, GpuSourceKind, Inventory, Labels, Node};
use tollgate_domain::limits;
use tollgate_domain::release::name_problem;
use tollgate_domain::{JobId, NodeId};
use tollgate_proto::v1 as proto;

fn gpu_from_proto(gpu: proto::GpuInfo, field: &str, errors: &mut FieldErrors) -> GpuInfo {
    let proto::GpuInfo {
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
    } = gpu;
    errors.non_blank(&format!("{field}.uuid"), &uuid);
    for (name, limit, value) in [
        ("uuid", &limits::INVENTORY_TEXT, Some(&uuid)),
        ("name", &limits::INVENTORY_TEXT, Some(&name)),
        ("serial", &limits::INVENTORY_TEXT, serial.as_ref()),
        (
            "board_part_number",
            &limits::INVENTORY_TEXT,
            board_part_number.as_ref(),
        ),
        ("pci_bus_id", &limits::INVENTORY_TEXT, Some(&pci_bus_id)),
        ("vbios_version", &limits::VERSION, Some(&vbios_version)),
        (
            "inforom_version",
            &limits::VERSION,
            inforom_version.as_ref(),
        ),
    ] {
        if let Some(value) = value {
            errors.text(&format!("{field}.{name}"), limit, value);
        }
    }
    GpuInfo {
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
    }
}

impl ToProto for GpuInfo {
    type Proto = proto::GpuInfo;
    fn to_proto(&self) -> proto::GpuInfo {
        let GpuInfo {
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
        } = self.clone();
        proto::GpuInfo {
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
        }
    }
}

/// Converts an inventory, recording bad fields under `field`.
pub fn inventory_from_proto(
    inventory: proto::Inventory,
    field: &str,
    errors: &mut FieldErrors,
) -> Inventory {
    let proto::Inventory {
        driver_version,
        cuda_driver_version,
        nvml_version,
        gpus,
        components,
        gpu_source,
        hostname,
    } = inventory;
    for (name, limit, value) in [
        ("driver_version", &limits::VERSION, &driver_version),
        (
            "cuda_driver_version",
            &limits::VERSION,
            &cuda_driver_version,
        ),
        ("nvml_version", &limits::VERSION, &nvml_version),
        ("hostname", &limits::INVENTORY_TEXT, &hostname),
    ] {
        errors.text(&format!("{field}.{name}"), limit, value);
    }
    let at = format!("{field}.components");
    if errors.count(&at, &limits::COMPONENTS, components.len()) {
        for (name, version) in &components {
            let entry = format!("{at}[{}]", limits::truncate(&limits::NAME, name, false));
            if errors.text(&entry, &limits::NAME, name) {
                errors.text(&entry, &limits::VERSION, version);
            }
        }
    }
    let gpu_source = errors
        .keyword::<GpuSourceKind>(&format!("{field}.gpu_source"), &gpu_source)
        .unwrap_or_default();
    let gpus = errors
        .within(&format!("{field}.gpus"), &limits::GPUS, gpus)
        .into_iter()
        .enumerate()
        .map(|(idx, gpu)| gpu_from_proto(gpu, &format!("{field}.gpus[{idx}]"), errors))
        .collect();
    Inventory {
        driver_version,
        cuda_driver_version,
        nvml_version,
        gpus,
        components: sorted(components),
        gpu_source,
        hostname,
    }
}

/// A required inventory field: a missing one is recorded with `hint` (what to send).
pub fn required_inventory(
    inventory: Option<proto::Inventory>,
    field: &str,
    hint: &str,
    errors: &mut FieldErrors,
) -> Inventory {
    match inventory {
        Some(inventory) => inventory_from_proto(inventory, field, errors),
        None => {
            errors.add(field, format!("is missing; {hint}"));
            Inventory::default()
        }
    }
}

impl FromProto for Inventory {
    type Proto = proto::Inventory;
    fn from_proto(inventory: proto::Inventory) -> Result<Self, InvalidFields> {
        let mut errors = FieldErrors::new();
        let inventory = inventory_from_proto(inventory, "inventory", &mut errors);
        errors.finish(inventory)
    }
}

impl ToProto for Inventory {
    type Proto = proto::Inventory;
    fn to_proto(&self) -> proto::Inventory {
        let Inventory {
            driver_version,
            cuda_driver_version,
            nvml_version,
            gpus,
            components,
            gpu_source,
            hostname,
        } = self;
        proto::Inventory {
            driver_version: driver_version.clone(),
            cuda_driver_version: cuda_driver_version.clone(),
            nvml_version: nvml_version.clone(),
            gpus: gpus.iter().map(ToProto::to_proto).collect(),
            components: unsorted(components),
            gpu_source: gpu_source.as_str().to_owned(),
            hostname: hostname.clone(),
        }
    }
}

/// A checked `RegisterRequest`.
#[derive(Debug, Clone, PartialEq)]
pub struct Enrollment {
    /// The node.
    pub node: NodeId,
    /// Its labels.
    pub labels: Labels,
    /// Its inventory.
    pub inventory: Inventory,
    /// The agent's version.
    pub agent_version: String,
    /// The token the agent holds; `None` on first enrollment.
    pub node_token: Option<String>,
}

impl TryFrom<proto::RegisterRequest> for Enrollment {
    type Error = InvalidFields;
    fn try_from(request: proto::RegisterRequest) -> Result<Self, InvalidFields> {
        let proto::RegisterRequest {
            node_name,
            labels,
            inventory,
            agent_version,
            node_token,
        } = request;
        let mut errors = FieldErrors::new();
        if let Some(message) = name_problem("node", &node_name) {
            errors.add("node_name", message);
        }
        errors.text("agent_version", &limits::VERSION, &agent_version);
        errors.text("node_token", &limits::TOKEN, &node_token);
        let labels = sorted(labels);
        check_labels(&mut errors, "labels", &labels);
        let inventory = required_inventory(
            inventory,
            "inventory",
            "the agent sends what it observed at start",
            &mut errors,
        );
        errors.finish(Enrollment {
            node: NodeId::new(node_name),
            labels,
            inventory,
            agent_version,
            node_token: non_empty(node_token),
        })
    }
}

impl ToProto for Enrollment {
    type Proto = proto::RegisterRequest;
    fn to_proto(&self) -> proto::RegisterRequest {
        let Enrollment {
            node,
            labels,
            inventory,
            agent_version,
            node_token,
        } = self;
        proto::RegisterRequest {
            node_name: node.to_string(),
            labels: unsorted(labels),
            inventory: Some(inventory.to_proto()),
            agent_version: agent_version.clone(),
            node_token: node_token.clone().unwrap_or_default(),
        }
    }
}

impl ToProto for Node {
    type Proto = proto::Node;
    fn to_proto(&self) -> proto::Node {
        let Node {
            id,
            labels,
            reported_labels,
            state,
            health,
            health_reason,
            inventory,
            last_seen_at,
            current_job,
        } = self;
        proto::Node {
            name: id.to_string(),
            labels: unsorted(labels),
            reported_labels: unsorted(reported_labels),
            state: state.as_str().to_owned(),
            health: health.as_str().to_owned(),
            health_reason: health_reason.clone(),
            inventory: Some(inventory.to_proto()),
            last_seen_at: last_seen_at.map(timestamp_to_proto),
            current_job_id: current_job
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            // GetNode adds these from the store.
            drain_deadline: None,
            maintenance_window: String::new(),
            health_checks: Vec::new(),
            // ListNodes and GetNode add it from the rollouts that updated the node.
            rollout_drift: Vec::new(),
        }
    }
}

/// A node as the controller describes it (the CLI reads it back to print it).
impl FromProto for Node {
    type Proto = proto::Node;
    fn from_proto(node: proto::Node) -> Result<Self, InvalidFields> {
        let proto::Node {
            name,
            labels,
            state,
            health,
            health_reason,
            inventory,
            last_seen_at,
            current_job_id,
            reported_labels,
            // What GetNode adds is printed from the answer itself (`tollgate node show`).
            drain_deadline: _,
            maintenance_window: _,
            health_checks: _,
            rollout_drift: _,
        } = node;
        let mut errors = FieldErrors::new();
        if let Some(message) = name_problem("node", &name) {
            errors.add("name", message);
        }
        let labels = sorted(labels);
        check_labels(&mut errors, "labels", &labels);
        let reported_labels = sorted(reported_labels);
        check_labels(&mut errors, "reported_labels", &reported_labels);
        let state = errors.keyword("state", &state).unwrap_or_default();
        let health = errors.keyword("health", &health).unwrap_or_default();
        errors.text("health_reason", &limits::REASON, &health_reason);
        let inventory = required_inventory(
            inventory,
            "inventory",
            "every node has the inventory its agent last sent",
            &mut errors,
        );
        let last_seen_at = errors.optional_timestamp("last_seen_at", last_seen_at);
        errors.text("current_job_id", &limits::NAME, &current_job_id);
        errors.finish(Node {
            id: NodeId::new(name),
            labels,
            reported_labels,
            state,
            health,
            health_reason,
            inventory,
            last_seen_at,
            current_job: non_empty(current_job_id).map(JobId::new),
        })
    }
}

/// A component that drifted on `node` since the rollout that updated it, as answered.
pub fn drift_to_proto(
    node: &tollgate_domain::NodeId,
    drift: &tollgate_domain::rollout::drift::Drift,
) -> proto::RolloutDrift {
    let tollgate_domain::rollout::drift::Drift {
        rollout,
        component,
        expected,
        reported,
    } = drift;
    proto::RolloutDrift {
        rollout: rollout.to_string(),
        node: node.to_string(),
        component: component.clone(),
        expected: expected.clone(),
        reported: reported.clone(),
    }
}

/// A drift as people read it: `rollout R expects vbios 96.00.89.00.01, reports 96.00.74.00.01`.
pub fn drift_words(drift: &proto::RolloutDrift) -> String {
    let reported = if drift.reported.is_empty() {
        "nothing"
    } else {
        drift.reported.as_str()
    };
    format!(
        "rollout {} expects {} {}, reports {reported}",
        drift.rollout, drift.component, drift.expected
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_domain::test_support::inventory;

    #[test]
    fn inventories_round_trip() {
        let mut inv = inventory("550.54.15", "96.00.89.00.01", 3);
        inv.gpus[1].ecc_enabled = Some(true);
        inv.gpus[2].power_limit_w = Some(700.0);
        inv.gpus[1].serial = None;
        inv.components.insert("cx7-fw".into(), "28.39.1002".into());
        let wire = inv.to_proto();
        assert_eq!(wire.gpu_source, "simulated");
        assert_eq!(Inventory::from_proto(wire), Ok(inv));
    }

    #[test]
    fn registration_needs_a_valid_name_labels_and_inventory() {
        let request = proto::RegisterRequest {
            node_name: "lab a".into(),
            labels: [("bad key".to_owned(), "x".to_owned())]
                .into_iter()
                .collect(),
            inventory: None,
            agent_version: "0.1.0".into(),
            node_token: String::new(),
        };
        let error = Enrollment::try_from(request).unwrap_err();
        assert_eq!(
            error.fields(),
            ["node_name", "labels[bad key]", "inventory"]
        );

        let mut wire_inventory = inventory("550.54.15", "96.00", 1).to_proto();
        wire_inventory.gpu_source = "magic".into();
        wire_inventory.gpus[0].uuid = String::new();
        let request = proto::RegisterRequest {
            node_name: "lab-a-n1".into(),
            labels: Default::default(),
            inventory: Some(wire_inventory),
            agent_version: "0.1.0".into(),
            node_token: String::new(),
        };
        let error = Enrollment::try_from(request).unwrap_err();
        assert_eq!(
            error.fields(),
            ["inventory.gpu_source", "inventory.gpus[0].uuid"]
        );
    }

    #[test]
    fn registration_converts() {
        let inv = inventory("550.54.15", "96.00", 1);
        let request = proto::RegisterRequest {
            node_name: "lab-a-n1".into(),
            labels: [("sku".to_owned(), "hgx-h100".to_owned())]
                .into_iter()
                .collect(),
            inventory: Some(inv.to_proto()),
            agent_version: "0.1.0".into(),
            node_token: "abc".into(),
        };
        let enrollment = Enrollment::try_from(request).expect("valid");
        assert_eq!(enrollment.node, NodeId::from("lab-a-n1"));
        assert_eq!(enrollment.inventory, inv);
        assert_eq!(enrollment.node_token.as_deref(), Some("abc"));
    }

    #[test]
    fn a_node_with_an_unknown_state_names_the_field() {
        let mut wire = tollgate_domain::test_support::node("n1", "hgx").to_proto();
        wire.state = "asleep".into();
        wire.last_seen_at = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: -5,
        });
        let error = Node::from_proto(wire).unwrap_err();
        assert_eq!(error.fields(), ["state", "last_seen_at"]);
    }
}
