//! Releases, their components, the milestone track, and the check that a node really runs a
//! release.

use crate::fleet::Inventory;
use crate::{ReleaseId, Timestamp};
use serde::{Deserialize, Serialize};

/// The milestone a release reaches after passing the last gate of its track.
pub const RELEASED: &str = "released";

/// Component names the agent observes itself; every other name needs an inventory probe.
pub const DRIVER: &str = "driver";
/// The VBIOS of every GPU on the node.
pub const VBIOS: &str = "vbios";
/// The CUDA driver version reported by NVML.
pub const CUDA_DRIVER: &str = "cuda-driver";

/// One versioned part of a release.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// Name (`driver`, `vbios`, `cx7-fw`).
    pub name: String,
    /// Exact version the node must report.
    pub version: String,
    /// Where the artifact lives.
    pub artifact_uri: Option<String>,
    /// Hex sha256 of the artifact.
    pub sha256: Option<String>,
}

/// A promotion past one milestone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The milestone whose gate passed.
    pub from_milestone: String,
    /// The milestone reached.
    pub to_milestone: String,
    /// When.
    pub at: Timestamp,
    /// Digest of the passed decision's inputs.
    pub decision_digest: String,
    /// Who promoted it (an API token's name, or "anonymous").
    #[serde(default)]
    pub actor: String,
}

/// A candidate build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Name.
    pub id: ReleaseId,
    /// Free text.
    pub description: String,
    /// Components, in the order given.
    pub components: Vec<Component>,
    /// The milestone whose gate the release must pass next, or [`RELEASED`].
    pub milestone: String,
    /// When it was registered.
    pub created_at: Timestamp,
    /// Promotions so far, oldest first.
    pub promotions: Vec<Promotion>,
}

/// The ordered milestones every release moves along.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Track {
    /// Milestones, first to last.
    pub milestones: Vec<String>,
}

impl Default for Track {
    fn default() -> Self {
        Self {
            milestones: ["lab-qual", "customer-acceptance", "production"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl Track {
    /// The first milestone, where new releases start.
    pub fn first(&self) -> &str {
        self.milestones.first().map_or(RELEASED, String::as_str)
    }

    /// The milestone after `milestone`, or [`RELEASED`] after the last; `None` if unknown.
    pub fn next(&self, milestone: &str) -> Option<&str> {
        let position = self.milestones.iter().position(|m| m == milestone)?;
        Some(
            self.milestones
                .get(position + 1)
                .map_or(RELEASED, String::as_str),
        )
    }

    /// Whether `milestone` is on the track.
    pub fn contains(&self, milestone: &str) -> bool {
        self.milestones.iter().any(|m| m == milestone)
    }
}

/// A field of a request that is wrong, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Field path, for example `components[1].version`.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Whether `name` is usable as a release, plan, node or component name.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crate::limits::NAME.max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Why `name` is not a valid name of `what` (release, plan, node, step, component), quoting at
/// most a prefix of it; `None` when it is valid.
pub fn name_problem(what: &str, name: &str) -> Option<String> {
    use crate::limits::{NAME, quote};
    if name.len() > NAME.max {
        Some(crate::limits::too_long(&NAME, name))
    } else if is_valid_name(name) {
        None
    } else {
        Some(format!(
            "{} is not a valid {what} name (1-{} letters, digits, '-', '_', '.')",
            quote(name),
            NAME.max
        ))
    }
}

/// Checks a new release's name, description and components; returns every problem at once.
pub fn validate_release(
    name: &str,
    description: &str,
    components: &[Component],
) -> Result<(), Vec<FieldError>> {
    use crate::limits::{COMPONENTS, DESCRIPTION, PATH, VERSION, check_count, check_text, quote};
    let mut errors = Vec::new();
    let mut field = |field: String, message: String| errors.push(FieldError { field, message });
    if let Some(message) = name_problem("release", name) {
        field("name".into(), message);
    }
    if let Err(message) = check_text(&DESCRIPTION, description) {
        field("description".into(), message);
    }
    if let Err(message) = check_count(&COMPONENTS, components.len()) {
        // Checking each of a huge list would only make a huge answer; the count is the error.
        field("components".into(), message);
        return Err(errors);
    }
    if components.is_empty() {
        errors.push(FieldError {
            field: "components".into(),
            message: "a release needs at least one component, for example driver=550.54.15".into(),
        });
    }
    let mut seen = std::collections::HashSet::new();
    for (idx, component) in components.iter().enumerate() {
        let name_invalid = name_problem("component", &component.name);
        let shown = quote(&component.name);
        if let Some(message) = &name_invalid {
            errors.push(FieldError {
                field: format!("components[{idx}].name"),
                message: message.clone(),
            });
        }
        if component.version.trim().is_empty() {
            errors.push(FieldError {
                field: format!("components[{idx}].version"),
                message: format!("component {shown} has an empty version"),
            });
        } else if let Err(message) = check_text(&VERSION, &component.version) {
            errors.push(FieldError {
                field: format!("components[{idx}].version"),
                message,
            });
        }
        if let Some(uri) = &component.artifact_uri
            && let Err(message) = check_text(&PATH, uri)
        {
            errors.push(FieldError {
                field: format!("components[{idx}].artifact_uri"),
                message,
            });
        }
        if let Some(sha) = &component.sha256
            && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
        {
            errors.push(FieldError {
                field: format!("components[{idx}].sha256"),
                message: format!("{} is not 64 hex digits", quote(sha)),
            });
        }
        if name_invalid.is_none() && !seen.insert(component.name.as_str()) {
            errors.push(FieldError {
                field: format!("components[{idx}].name"),
                message: format!("component {shown} is given twice"),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// A component whose observed version differs from the release's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryMismatch {
    /// Component name.
    pub component: String,
    /// The release's version.
    pub expected: String,
    /// What the node reported; `None` when nothing reports this component.
    pub observed: Option<String>,
    /// The GPU, for per-GPU components (VBIOS).
    pub gpu_index: Option<u32>,
}

impl std::fmt::Display for InventoryMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gpu = self
            .gpu_index
            .map(|idx| format!(" on GPU {idx}"))
            .unwrap_or_default();
        match &self.observed {
            Some(observed) => write!(
                f,
                "{}{gpu} is {observed}, release wants {}",
                self.component, self.expected
            ),
            None => write!(
                f,
                "{} is not reported by the node (release wants {}); add an inventory probe for it",
                self.component, self.expected
            ),
        }
    }
}

/// Compares what a node observed with the release's components.
///
/// `only` limits the check to the named components; empty means all of them. `driver`,
/// `vbios` (every GPU) and `cuda-driver` are read from NVML; every other component must come
/// from an inventory probe, and one that nothing reports is a mismatch: the check fails closed.
pub fn check_inventory(
    components: &[Component],
    only: &[String],
    inventory: &Inventory,
) -> Vec<InventoryMismatch> {
    let mut mismatches = Vec::new();
    let wanted = components
        .iter()
        .filter(|c| only.is_empty() || only.iter().any(|name| name == &c.name));
    for component in wanted {
        let mut check = |observed: Option<&str>, gpu_index: Option<u32>| {
            if observed != Some(component.version.as_str()) {
                mismatches.push(InventoryMismatch {
                    component: component.name.clone(),
                    expected: component.version.clone(),
                    observed: observed.map(str::to_owned),
                    gpu_index,
                });
            }
        };
        // Gates call this for every result they count: no allocation unless something differs.
        match component.name.as_str() {
            DRIVER => check(non_empty(&inventory.driver_version), None),
            CUDA_DRIVER => check(non_empty(&inventory.cuda_driver_version), None),
            VBIOS if inventory.gpus.is_empty() => check(None, None),
            VBIOS => {
                for gpu in &inventory.gpus {
                    check(non_empty(&gpu.vbios_version), Some(gpu.index));
                }
            }
            name => check(inventory.components.get(name).map(String::as_str), None),
        }
    }
    mismatches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{component, inventory};

    #[test]
    fn matching_inventory_has_no_mismatch() {
        let components = [
            component("driver", "550.54.15"),
            component("vbios", "96.00.89.00.01"),
        ];
        assert!(
            check_inventory(
                &components,
                &[],
                &inventory("550.54.15", "96.00.89.00.01", 2)
            )
            .is_empty()
        );
    }

    #[test]
    fn each_gpu_with_another_vbios_is_named() {
        let components = [component("vbios", "96.00.89.00.01")];
        let mut inv = inventory("550.54.15", "96.00.89.00.01", 3);
        inv.gpus[2].vbios_version = "96.00.74.00.01".into();
        let mismatches = check_inventory(&components, &[], &inv);
        assert_eq!(mismatches.len(), 1);
        assert_eq!(mismatches[0].gpu_index, Some(2));
        assert_eq!(
            mismatches[0].to_string(),
            "vbios on GPU 2 is 96.00.74.00.01, release wants 96.00.89.00.01"
        );
    }

    #[test]
    fn unobserved_component_fails_closed_unless_left_out() {
        let components = [
            component("driver", "550.54.15"),
            component("cx7-fw", "28.39.1002"),
        ];
        let inv = inventory("550.54.15", "96.00.89.00.01", 1);
        let mismatches = check_inventory(&components, &[], &inv);
        assert_eq!(mismatches.len(), 1);
        assert!(mismatches[0].to_string().contains("add an inventory probe"));
        assert!(check_inventory(&components, &["driver".into()], &inv).is_empty());
        let mut probed = inv.clone();
        probed
            .components
            .insert("cx7-fw".into(), "28.39.1002".into());
        assert!(check_inventory(&components, &[], &probed).is_empty());
    }

    #[test]
    fn release_validation_names_every_bad_field() {
        let errors = validate_release(
            "bad name",
            "",
            &[
                component("driver", ""),
                component("driver", "1"),
                Component {
                    sha256: Some("xyz".into()),
                    ..component("vbios", "1")
                },
            ],
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "components[0].version",
                "components[1].name",
                "components[2].sha256"
            ]
        );
        assert!(
            validate_release("r1", "", &[]).unwrap_err()[0]
                .message
                .contains("at least one")
        );
    }

    #[test]
    fn track_moves_forward_to_released() {
        let track = Track::default();
        assert_eq!(track.first(), "lab-qual");
        assert_eq!(track.next("lab-qual"), Some("customer-acceptance"));
        assert_eq!(track.next("production"), Some(RELEASED));
        assert_eq!(track.next("nowhere"), None);
    }
}
