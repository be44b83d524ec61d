//! What `tollgate release create` reads: `--component` specs and release YAML files. In the
//! library so the fuzz targets (`fuzz/`) can call the same code the command runs.

use anyhow::Context as _;
use serde::Deserialize;
use tollgate_proto::v1 as pb;

/// Parses `name=version[@artifact_uri][#sha256]`.
///
/// The sha256 is split off at the last `#` and the artifact URI at the first `@` after the
/// `=`, because versions never hold `@` while URIs may (`https://user@host/...`).
pub fn parse_component(spec: &str) -> anyhow::Result<pb::Component> {
    let (name, rest) = spec.split_once('=').with_context(|| {
        format!("component '{spec}' is not name=version[@artifact_uri][#sha256]")
    })?;
    let (rest, sha256) = match rest.rsplit_once('#') {
        Some((rest, sha256)) => (rest, sha256),
        None => (rest, ""),
    };
    let (version, artifact_uri) = match rest.split_once('@') {
        Some((version, uri)) => (version, uri),
        None => (rest, ""),
    };
    let name = name.trim();
    let version = version.trim();
    if name.is_empty() || version.is_empty() {
        anyhow::bail!("component '{spec}' needs both a name and a version, like driver=550.54.15");
    }
    Ok(pb::Component {
        name: name.to_owned(),
        version: version.to_owned(),
        artifact_uri: artifact_uri.trim().to_owned(),
        sha256: sha256.trim().to_owned(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ReleaseFile {
    name: String,
    #[serde(default)]
    description: String,
    components: Vec<ComponentEntry>,
    #[serde(default)]
    customers: Vec<String>,
    #[serde(default)]
    targets: Vec<TargetEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TargetEntry {
    milestone: String,
    target: String,
    #[serde(default)]
    reason: String,
}

/// The plan of record a release file may give besides the release: `release create -f` sets
/// it, once the release is created, as `release customers` and `release plan` would.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReleasePlan {
    /// The customers the release is for (`customers: [acme, globex]`).
    pub customers: Vec<String>,
    /// Target dates (`targets: [{milestone: M, target: YYYY-MM-DD, reason: TEXT}]`), each as
    /// `SetMilestoneTarget` takes it.
    pub targets: Vec<pb::SetMilestoneTargetRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ComponentEntry {
    name: String,
    version: String,
    #[serde(default)]
    artifact_uri: String,
    #[serde(default)]
    sha256: String,
}

/// Parses release YAML; an error says `file:line:column: problem`. The server checks names
/// and versions; this only checks the file's shape.
pub fn parse_release_file(file: &str, text: &str) -> anyhow::Result<pb::CreateReleaseRequest> {
    parse_release_file_with_plan(file, text).map(|(request, _)| request)
}

/// [`parse_release_file`], with the plan of record the file gives.
pub fn parse_release_file_with_plan(
    file: &str,
    text: &str,
) -> anyhow::Result<(pb::CreateReleaseRequest, ReleasePlan)> {
    let parsed: ReleaseFile = serde_saphyr::from_str(text).map_err(|error| {
        let message = error.to_string();
        let first_line = message.lines().next().unwrap_or("invalid YAML").trim();
        match error.location() {
            Some(location) => anyhow::anyhow!(
                "{file}:{}:{}: {first_line}",
                location.line(),
                location.column()
            ),
            None => anyhow::anyhow!("{file}: {first_line}"),
        }
    })?;
    let plan = ReleasePlan {
        customers: parsed.customers,
        targets: parsed
            .targets
            .into_iter()
            .map(|entry| pb::SetMilestoneTargetRequest {
                release: parsed.name.clone(),
                milestone: entry.milestone,
                target_date: entry.target,
                reason: entry.reason,
            })
            .collect(),
    };
    let request = pb::CreateReleaseRequest {
        name: parsed.name,
        description: parsed.description,
        components: parsed
            .components
            .into_iter()
            .map(|entry| pb::Component {
                name: entry.name,
                version: entry.version,
                artifact_uri: entry.artifact_uri,
                sha256: entry.sha256,
            })
            .collect(),
    };
    Ok((request, plan))
}
