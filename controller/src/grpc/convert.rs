//! Proto ↔ domain conversion, in one place. Every conversion destructures its source
//! completely, so a field added to the proto (or the domain) fails to compile here until it is
//! handled. Incoming messages are checked field by field and every bad field is reported at
//! once ([`InvalidFields`]).

use super::status::{FieldErrors, InvalidFields};
use crate::store::{StoredGate, StoredPlan};
use std::collections::BTreeMap;
use tollgate_domain::fleet::{GpuInfo, GpuSourceKind, Inventory, Labels, Node};
use tollgate_domain::gate::{Decision, EvidenceItem, RuleDecision};
use tollgate_domain::limits::{self, Limit, quote};
use tollgate_domain::plan::{Step, StepKind};
use tollgate_domain::release::{Component, Promotion, Release, Track, name_problem};
use tollgate_domain::result::{Measurement, Outcome, StepResult, SubResult};
use tollgate_domain::telemetry::{EventKind, Field, FieldSummary, GpuEvent, GpuTelemetry};
use tollgate_domain::{JobId, NodeId, Timestamp};
use tollgate_proto::v1 as proto;

// ---------------------------------------------------------------------------------------------
// The two directions. Both sides are foreign types (tollgate-proto, tollgate-domain), so the
// orphan rule rules out `From`/`TryFrom` between them; these local traits play that part.

/// A domain value's wire form.
pub trait ToProto {
    /// The wire type.
    type Proto;
    /// Converts; never fails.
    fn to_proto(&self) -> Self::Proto;
}

/// A domain value from its wire form, checking every field.
pub trait FromProto: Sized {
    /// The wire type.
    type Proto;
    /// Converts, naming every bad field on failure.
    fn from_proto(proto: Self::Proto) -> Result<Self, InvalidFields>;
}

// ---------------------------------------------------------------------------------------------
// Time.

/// A domain timestamp on the wire.
pub fn timestamp_to_proto(at: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        // Sub-second nanoseconds are always below 2e9 (leap seconds), so they fit an i32.
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(999_999_999),
    }
}

/// A wire timestamp as a domain one; `None` when out of range.
pub fn timestamp_from_proto(at: &prost_types::Timestamp) -> Option<Timestamp> {
    let nanos = u32::try_from(at.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    chrono::DateTime::from_timestamp(at.seconds, nanos)
}

/// A required timestamp field.
fn required_timestamp(
    errors: &mut FieldErrors,
    field: &str,
    at: Option<prost_types::Timestamp>,
) -> Option<Timestamp> {
    match at {
        None => {
            errors.add(field, "is missing");
            None
        }
        Some(at) => {
            let converted = timestamp_from_proto(&at);
            if converted.is_none() {
                errors.add(
                    field,
                    format!("{}s {}ns is not a valid timestamp", at.seconds, at.nanos),
                );
            }
            converted
        }
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

fn sorted<V>(map: std::collections::HashMap<String, V>) -> BTreeMap<String, V> {
    map.into_iter().collect()
}

fn unsorted<V>(map: BTreeMap<String, V>) -> std::collections::HashMap<String, V> {
    map.into_iter().collect()
}

/// Checks label keys and values; each bad label is named.
pub fn check_labels(errors: &mut FieldErrors, field: &str, labels: &Labels) {
    if !count(errors, field, &limits::LABELS, labels.len()) {
        return;
    }
    for (key, value) in labels {
        let at = format!("{field}[{}]", limits::truncate(&limits::NAME, key, false));
        if !text(errors, &at, &limits::LABEL_KEY, key)
            || !text(errors, &at, &limits::LABEL_VALUE, value)
        {
            continue;
        }
        if let Err(message) = tollgate_domain::fleet::parse_label(&format!("{key}={value}")) {
            errors.add(at, message);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Limits: every string and list a caller sends is checked against `tollgate_domain::limits`
// before anything else reads it, so an oversize value is refused by name, quoted by a prefix.

/// Records a problem when `value` is longer than `limit`; `true` when it fits.
fn text(errors: &mut FieldErrors, field: &str, limit: &Limit, value: &str) -> bool {
    match limits::check_text(limit, value) {
        Ok(()) => true,
        Err(message) => {
            errors.add(field, message);
            false
        }
    }
}

/// Records a problem when a list of `n` entries is longer than `limit`; `true` when it fits.
fn count(errors: &mut FieldErrors, field: &str, limit: &Limit, n: usize) -> bool {
    match limits::check_count(limit, n) {
        Ok(()) => true,
        Err(message) => {
            errors.add(field, message);
            false
        }
    }
}

/// Checks every entry of a list of texts: its length, then each entry.
fn texts(errors: &mut FieldErrors, field: &str, list: &Limit, each: &Limit, values: &[String]) {
    if count(errors, field, list, values.len()) {
        for (idx, value) in values.iter().enumerate() {
            text(errors, &format!("{field}[{idx}]"), each, value);
        }
    }
}

/// Parses a short keyword (a GPU source, a telemetry field, an event kind); one longer than a
/// name is refused without being echoed whole by the parser's message.
fn parse_bounded<T: std::str::FromStr<Err = String>>(value: &str) -> Result<T, String> {
    limits::check_text(&limits::NAME, value)?;
    value.parse::<T>()
}

/// The agent's stream events: a job id longer than a name is refused by name like any request
/// field (the controller then ignores the event and logs why; see `grpc/agent.rs`).
impl Bounded for proto::agent_event::Event {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        use proto::agent_event::Event;
        match self {
            Event::Heartbeat(proto::Heartbeat {
                running_job_id,
                sent_at: _,
                unsent_results: _,
                lease_epoch: _,
                step_index: _,
                attempt: _,
                commands_received: _,
                unsent_by_job,
            }) => {
                text(
                    errors,
                    "heartbeat.running_job_id",
                    &limits::NAME,
                    running_job_id,
                );
                // One entry per job with unsent results; an agent holds few jobs' results, so
                // the label count bounds it generously.
                if count(
                    errors,
                    "heartbeat.unsent_by_job",
                    &limits::LABELS,
                    unsent_by_job.len(),
                ) {
                    for job_id in unsent_by_job.keys() {
                        text(errors, "heartbeat.unsent_by_job", &limits::NAME, job_id);
                    }
                }
            }
            Event::JobAccepted(proto::JobAccepted {
                job_id,
                lease_epoch: _,
            }) => {
                text(errors, "job_accepted.job_id", &limits::NAME, job_id);
            }
            Event::StepStarted(proto::StepStarted {
                job_id,
                lease_epoch: _,
                step_index: _,
                attempt: _,
            }) => {
                text(errors, "step_started.job_id", &limits::NAME, job_id);
            }
        }
    }
}

/// One batch of fleet telemetry: its lists, each sample's fields and each event's texts.
impl Bounded for proto::TelemetryBatch {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        let proto::TelemetryBatch {
            samples,
            events,
            dropped: _,
        } = self;
        if count(errors, "samples", &limits::TELEMETRY_BATCH, samples.len()) {
            for (idx, sample) in samples.iter().enumerate() {
                let proto::TelemetrySample {
                    gpu_index: _,
                    at: _,
                    values,
                } = sample;
                let field = format!("samples[{idx}].values");
                if count(errors, &field, &limits::SAMPLE_FIELDS, values.len()) {
                    for name in values.keys() {
                        text(errors, &field, &limits::NAME, name);
                    }
                }
            }
        }
        if count(errors, "events", &limits::TELEMETRY_BATCH, events.len()) {
            for (idx, event) in events.iter().enumerate() {
                let proto::GpuEvent {
                    gpu_index: _,
                    gpu_uuid,
                    kind,
                    code: _,
                    at: _,
                    detail,
                } = event;
                text(
                    errors,
                    &format!("events[{idx}].gpu_uuid"),
                    &limits::INVENTORY_TEXT,
                    gpu_uuid,
                );
                text(errors, &format!("events[{idx}].kind"), &limits::NAME, kind);
                text(
                    errors,
                    &format!("events[{idx}].detail"),
                    &limits::MESSAGE,
                    detail,
                );
            }
        }
    }
}

/// A request whose strings and lists all have a limit.
pub trait Bounded {
    /// Records every field over its limit.
    fn check_bounds(&self, errors: &mut FieldErrors);
}

/// The request when every field is within its limit, else `InvalidArgument` naming each one.
pub fn bounded<T: Bounded>(request: T) -> Result<T, InvalidFields> {
    let mut errors = FieldErrors::new();
    request.check_bounds(&mut errors);
    errors.finish(request)
}

/// `Bounded` for requests of plain texts: each field with its limit, then (after `;`) the
/// fields that are not texts. Every field is listed, so a new one fails to compile here.
macro_rules! bounded_texts {
    ($($message:ident { $($field:ident: $limit:ident),* $(; $($other:ident),*)? })*) => {
        $(
            impl Bounded for proto::$message {
                #[allow(unused_variables)]
                fn check_bounds(&self, errors: &mut FieldErrors) {
                    let proto::$message { $($field,)* $($($other: _,)*)? } = self;
                    $(text(errors, stringify!($field), &limits::$limit, $field);)*
                }
            }
        )*
    };
}

bounded_texts! {
    GetNodeRequest { name: NAME }
    SetCordonRequest { name: NAME; cordoned }
    SetHealthRequest { name: NAME, health: NAME, reason: REASON }
    GetReleaseRequest { name: NAME }
    ListReleasesRequest {}
    PromoteRequest { name: NAME }
    DemoteRequest { release: NAME, to_milestone: NAME, reason: REASON }
    HaltRequest { release: NAME, reason: REASON }
    ResumeRequest { release: NAME, reason: REASON }
    ApplyPlanRequest { source: SPEC_SOURCE, file_name: PATH }
    GetPlanRequest { name: NAME, version: NAME }
    ListPlansRequest {}
    GetRunRequest { id: NAME }
    ListRunsRequest { release: NAME }
    CancelRunRequest { id: NAME }
    ApplyGateRequest { source: SPEC_SOURCE, file_name: PATH }
    GetGateRequest { milestone: NAME }
    EvaluateGateRequest { release: NAME, milestone: NAME; at }
    RevokeWaiverRequest { id: NAME }
    ListWaiversRequest { release: NAME, milestone: NAME }
    ListAuditRequest { release: NAME, actor: NAME; since, until }
    VerifyAuditRequest {}
    GetPublicKeyRequest {}
    RenderAttestationRequest { release: NAME, milestone: NAME }
}

impl Bounded for proto::ListNodesRequest {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        let proto::ListNodesRequest { selector } = self;
        let selector: Labels = selector
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        check_labels(errors, "selector", &selector);
    }
}

/// A plan reference, `name` or `name@version`: each part is a name.
fn check_plan_ref(errors: &mut FieldErrors, field: &str, plan: &str) {
    let (name, version) = super::split_plan_ref(plan);
    if name.len() > limits::NAME.max || version.is_some_and(|v| v.len() > limits::NAME.max) {
        errors.add(field, limits::too_long(&limits::NAME, plan));
    }
}

impl Bounded for proto::StartRunRequest {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        let proto::StartRunRequest {
            release,
            plan,
            milestone,
            nodes_now: _,
        } = self;
        text(errors, "release", &limits::NAME, release);
        check_plan_ref(errors, "plan", plan);
        text(errors, "milestone", &limits::NAME, milestone);
    }
}

impl Bounded for proto::WaiveRequest {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        let proto::WaiveRequest {
            release,
            milestone,
            rule_id,
            reason,
            ticket,
            expires_at: _,
            ttl_seconds: _,
            nodes,
            skus,
            steps,
        } = self;
        text(errors, "release", &limits::NAME, release);
        text(errors, "milestone", &limits::NAME, milestone);
        text(errors, "rule_id", &limits::RULE_ID, rule_id);
        text(errors, "reason", &limits::REASON, reason);
        text(errors, "ticket", &limits::TICKET, ticket);
        let scope = &limits::WAIVER_SCOPE;
        texts(errors, "nodes", scope, &limits::NAME, nodes);
        texts(errors, "skus", scope, &limits::LABEL_VALUE, skus);
        texts(errors, "steps", scope, &limits::NAME, steps);
    }
}

impl Bounded for proto::RenderReportRequest {
    fn check_bounds(&self, errors: &mut FieldErrors) {
        let proto::RenderReportRequest {
            release,
            milestone,
            format,
            customer,
        } = self;
        text(errors, "release", &limits::NAME, release);
        text(errors, "milestone", &limits::NAME, milestone);
        text(errors, "format", &limits::NAME, format);
        let (key, value) = customer.split_once('=').unwrap_or((customer, ""));
        if key.len() > limits::LABEL_KEY.max || value.len() > limits::LABEL_VALUE.max {
            errors.add("customer", limits::too_long(&limits::LABEL_VALUE, customer));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Inventory.

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
    if uuid.trim().is_empty() {
        errors.add(format!("{field}.uuid"), "is empty");
    }
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
            text(errors, &format!("{field}.{name}"), limit, value);
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

fn gpu_to_proto(gpu: &GpuInfo) -> proto::GpuInfo {
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
    } = gpu.clone();
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
        text(errors, &format!("{field}.{name}"), limit, value);
    }
    let at = format!("{field}.components");
    if count(errors, &at, &limits::COMPONENTS, components.len()) {
        for (name, version) in &components {
            let entry = format!("{at}[{}]", limits::truncate(&limits::NAME, name, false));
            if text(errors, &entry, &limits::NAME, name) {
                text(errors, &entry, &limits::VERSION, version);
            }
        }
    }
    let gpu_source = match parse_bounded::<GpuSourceKind>(&gpu_source) {
        Ok(kind) => kind,
        Err(message) => {
            errors.add(format!("{field}.gpu_source"), message);
            GpuSourceKind::default()
        }
    };
    let gpus = if count(errors, &format!("{field}.gpus"), &limits::GPUS, gpus.len()) {
        gpus.into_iter()
            .enumerate()
            .map(|(idx, gpu)| gpu_from_proto(gpu, &format!("{field}.gpus[{idx}]"), errors))
            .collect()
    } else {
        Vec::new()
    };
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
        let inventory = self;
        let Inventory {
            driver_version,
            cuda_driver_version,
            nvml_version,
            gpus,
            components,
            gpu_source,
            hostname,
        } = inventory;
        proto::Inventory {
            driver_version: driver_version.clone(),
            cuda_driver_version: cuda_driver_version.clone(),
            nvml_version: nvml_version.clone(),
            gpus: gpus.iter().map(gpu_to_proto).collect(),
            components: unsorted(components.clone()),
            gpu_source: gpu_source.as_str().to_owned(),
            hostname: hostname.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Registration.

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
    fn try_from(request: proto::RegisterRequest) -> Result<Self, Self::Error> {
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
        text(
            &mut errors,
            "agent_version",
            &limits::VERSION,
            &agent_version,
        );
        text(&mut errors, "node_token", &limits::TOKEN, &node_token);
        let labels = sorted(labels);
        check_labels(&mut errors, "labels", &labels);
        let inventory = match inventory {
            Some(inventory) => inventory_from_proto(inventory, "inventory", &mut errors),
            None => {
                errors.add(
                    "inventory",
                    "is missing; the agent sends what it observed at start",
                );
                Inventory::default()
            }
        };
        errors.finish(Enrollment {
            node: NodeId::new(node_name),
            labels,
            inventory,
            agent_version,
            node_token: non_empty(node_token),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes.

impl ToProto for Node {
    type Proto = proto::Node;
    fn to_proto(&self) -> proto::Node {
        let node = self;
        let Node {
            id,
            labels,
            state,
            health,
            health_reason,
            inventory,
            last_seen_at,
            current_job,
        } = node;
        proto::Node {
            name: id.to_string(),
            labels: unsorted(labels.clone()),
            state: state.as_str().to_owned(),
            health: health.as_str().to_owned(),
            health_reason: health_reason.clone(),
            inventory: Some(inventory.to_proto()),
            last_seen_at: last_seen_at.map(timestamp_to_proto),
            current_job_id: current_job
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Releases.

/// A component from the wire; empty optional texts mean absent. Validation is the domain's
/// (`validate_release`), so this cannot fail.
pub fn component_from_proto(component: proto::Component) -> Component {
    {
        let proto::Component {
            name,
            version,
            artifact_uri,
            sha256,
        } = component;
        Component {
            name,
            version,
            artifact_uri: non_empty(artifact_uri),
            sha256: non_empty(sha256),
        }
    }
}

impl ToProto for Component {
    type Proto = proto::Component;
    fn to_proto(&self) -> proto::Component {
        let component = self;
        let Component {
            name,
            version,
            artifact_uri,
            sha256,
        } = component;
        proto::Component {
            name: name.clone(),
            version: version.clone(),
            artifact_uri: artifact_uri.clone().unwrap_or_default(),
            sha256: sha256.clone().unwrap_or_default(),
        }
    }
}

/// A checked `CreateReleaseRequest`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRelease {
    /// Name.
    pub name: String,
    /// Components.
    pub components: Vec<Component>,
    /// Free text.
    pub description: String,
}

impl TryFrom<proto::CreateReleaseRequest> for NewRelease {
    type Error = InvalidFields;
    fn try_from(request: proto::CreateReleaseRequest) -> Result<Self, Self::Error> {
        let proto::CreateReleaseRequest {
            name,
            components,
            description,
        } = request;
        let components: Vec<Component> = components.into_iter().map(component_from_proto).collect();
        let mut errors = FieldErrors::new();
        if let Err(problems) =
            tollgate_domain::release::validate_release(&name, &description, &components)
        {
            errors.extend(problems);
        }
        errors.finish(NewRelease {
            name,
            components,
            description,
        })
    }
}

impl ToProto for Promotion {
    type Proto = proto::Promotion;
    fn to_proto(&self) -> proto::Promotion {
        let promotion = self;
        let Promotion {
            from_milestone,
            to_milestone,
            at,
            decision_digest,
            actor,
        } = promotion;
        proto::Promotion {
            from_milestone: from_milestone.clone(),
            to_milestone: to_milestone.clone(),
            at: Some(timestamp_to_proto(*at)),
            decision_digest: decision_digest.clone(),
            actor: actor.clone(),
        }
    }
}

/// A release on the wire, with the track it moves along.
pub fn release_to_proto(release: &Release, track: &Track) -> proto::Release {
    let Release {
        id,
        description,
        components,
        milestone,
        created_at,
        promotions,
    } = release;
    proto::Release {
        name: id.to_string(),
        components: components.iter().map(ToProto::to_proto).collect(),
        description: description.clone(),
        milestone: milestone.clone(),
        track: track.milestones.clone(),
        created_at: Some(timestamp_to_proto(*created_at)),
        promotions: promotions.iter().map(ToProto::to_proto).collect(),
        // Not part of the domain release; the release handlers fill it from the store.
        halted_reason: String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Plans and gates.

impl ToProto for StoredPlan {
    type Proto = proto::Plan;
    fn to_proto(&self) -> proto::Plan {
        let stored = self;
        let StoredPlan {
            plan,
            version,
            source,
            created_at,
        } = stored;
        proto::Plan {
            name: plan.name.clone(),
            version: version.to_string(),
            source: source.clone(),
            steps: plan.step_names(),
            selector: unsorted(plan.selector.0.clone()),
            created_at: Some(timestamp_to_proto(*created_at)),
        }
    }
}

impl ToProto for StoredGate {
    type Proto = proto::GatePolicy;
    fn to_proto(&self) -> proto::GatePolicy {
        let stored = self;
        let StoredGate {
            policy,
            version,
            source,
            created_at: _,
        } = stored;
        proto::GatePolicy {
            milestone: policy.milestone.clone(),
            version: version.clone(),
            source: source.clone(),
            rules: policy.rules.iter().map(|rule| rule.id.clone()).collect(),
        }
    }
}

/// One plan step as the agent executes it; `index` is its position in the plan.
pub fn step_to_proto(index: u32, step: &Step) -> proto::StepSpec {
    let Step {
        name,
        kind,
        timeout,
        retries,
    } = step;
    let kind = match kind {
        StepKind::Exec {
            command,
            env,
            workdir,
        } => proto::step_spec::Kind::Exec(proto::ExecStep {
            command: command.clone(),
            env: unsorted(env.clone()),
            workdir: workdir.clone().unwrap_or_default(),
        }),
        StepKind::InventoryCheck { components } => {
            proto::step_spec::Kind::InventoryCheck(proto::InventoryCheckStep {
                components: components.clone(),
            })
        }
        StepKind::DcgmDiag {
            level,
            tests,
            command,
        } => proto::step_spec::Kind::DcgmDiag(proto::DcgmDiagStep {
            level: u32::from(*level),
            tests: tests.clone(),
            command: command.clone(),
        }),
        StepKind::Junit {
            command,
            env,
            workdir,
            report,
        } => proto::step_spec::Kind::Junit(proto::JunitStep {
            command: command.clone(),
            env: unsorted(env.clone()),
            workdir: workdir.clone().unwrap_or_default(),
            report: report.clone(),
        }),
        StepKind::BurnIn {
            command,
            env,
            workdir,
            duration,
            limits,
        } => proto::step_spec::Kind::BurnIn(proto::BurnInStep {
            command: command.clone(),
            env: unsorted(env.clone()),
            workdir: workdir.clone().unwrap_or_default(),
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            limits: limits
                .iter()
                .map(|limit| proto::TelemetryLimit {
                    field: limit.field.name().to_owned(),
                    min: limit.min,
                    max: limit.max,
                })
                .collect(),
        }),
        StepKind::Flash {
            command,
            env,
            workdir,
            component,
            version,
            reboot,
        } => proto::step_spec::Kind::Flash(proto::FlashStep {
            command: command.clone(),
            env: unsorted(env.clone()),
            workdir: workdir.clone().unwrap_or_default(),
            component: component.clone(),
            version: version.clone(),
            reboot: *reboot,
        }),
    };
    proto::StepSpec {
        index,
        name: name.clone(),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        retries: *retries,
        kind: Some(kind),
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions.

impl ToProto for EvidenceItem {
    type Proto = proto::EvidenceItem;
    fn to_proto(&self) -> proto::EvidenceItem {
        let item = self;
        let EvidenceItem {
            node,
            step,
            attempt,
            gpu_index,
            value,
            limit,
            detail,
            ok,
            signature,
        } = item;
        proto::EvidenceItem {
            node: node.to_string(),
            step: step.clone().unwrap_or_default(),
            attempt: attempt.unwrap_or(0),
            value: *value,
            limit: limit.clone().unwrap_or_default(),
            detail: detail.clone(),
            ok: *ok,
            gpu_index: *gpu_index,
            signature: signature.clone().unwrap_or_default(),
        }
    }
}

impl ToProto for RuleDecision {
    type Proto = proto::RuleDecision;
    fn to_proto(&self) -> proto::RuleDecision {
        let rule = self;
        let RuleDecision {
            rule_id,
            kind,
            verdict,
            reason,
            evidence,
            failing_nodes,
            failure_groups,
            waiver_id,
        } = rule;
        proto::RuleDecision {
            rule_id: rule_id.clone(),
            kind: kind.clone(),
            verdict: verdict.as_str().to_owned(),
            reason: reason.clone(),
            evidence: evidence.iter().map(ToProto::to_proto).collect(),
            failing_nodes: failing_nodes.iter().map(ToString::to_string).collect(),
            failure_groups: failure_groups
                .iter()
                .map(|group| proto::FailureGroup {
                    signature: group.signature.clone(),
                    count: u32::try_from(group.count).unwrap_or(u32::MAX),
                    nodes: group.nodes.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            waiver_id: waiver_id.clone().unwrap_or_default(),
        }
    }
}

impl ToProto for Decision {
    type Proto = proto::Decision;
    fn to_proto(&self) -> proto::Decision {
        let decision = self;
        let Decision {
            release,
            milestone,
            verdict,
            summary,
            rules,
            digest,
            policy_version,
            evaluated_at,
        } = decision;
        proto::Decision {
            release: release.clone(),
            milestone: milestone.clone(),
            verdict: verdict.as_str().to_owned(),
            summary: summary.clone(),
            rules: rules.iter().map(ToProto::to_proto).collect(),
            digest: digest.clone(),
            evaluated_at: Some(timestamp_to_proto(*evaluated_at)),
            policy_version: policy_version.clone(),
            greenwave_json: tollgate_domain::gate::greenwave(decision).to_string(),
            // Only a replayed decision says how its replay went; the gate service sets it.
            replay: String::new(),
        }
    }
}

impl ToProto for tollgate_domain::gate::Waiver {
    type Proto = proto::Waiver;
    fn to_proto(&self) -> proto::Waiver {
        let tollgate_domain::gate::Waiver {
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
            nodes,
            skus,
            steps,
        } = self;
        proto::Waiver {
            id: id.clone(),
            release: release.clone(),
            milestone: milestone.clone(),
            rule_id: rule_id.clone(),
            reason: reason.clone(),
            ticket: ticket.clone(),
            approver: approver.clone(),
            created_at: Some(timestamp_to_proto(*created_at)),
            expires_at: Some(timestamp_to_proto(*expires_at)),
            revoked_at: revoked_at.map(timestamp_to_proto),
            nodes: nodes.iter().map(ToString::to_string).collect(),
            skus: skus.clone(),
            steps: steps.clone(),
        }
    }
}

impl ToProto for tollgate_domain::audit::AuditEntry {
    type Proto = proto::AuditEntry;
    fn to_proto(&self) -> proto::AuditEntry {
        let tollgate_domain::audit::AuditEntry {
            seq,
            at,
            actor,
            action,
            subject,
            details,
            prev_hash,
            hash,
        } = self;
        proto::AuditEntry {
            seq: *seq,
            at: Some(timestamp_to_proto(*at)),
            actor: actor.clone(),
            action: action.clone(),
            subject: subject.clone(),
            details: details.clone(),
            prev_hash: prev_hash.clone(),
            hash: hash.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Results.

/// A domain outcome on the wire.
pub fn outcome_to_proto(outcome: Outcome) -> proto::Outcome {
    match outcome {
        Outcome::Passed => proto::Outcome::Passed,
        Outcome::Failed => proto::Outcome::Failed,
        Outcome::Error => proto::Outcome::Error,
        Outcome::Skipped => proto::Outcome::Skipped,
        Outcome::Lost => proto::Outcome::Lost,
    }
}

/// A wire outcome as a domain one; `None` for unspecified or unknown values.
pub fn outcome_from_proto(value: i32) -> Option<Outcome> {
    match proto::Outcome::try_from(value).ok()? {
        proto::Outcome::Unspecified => None,
        proto::Outcome::Passed => Some(Outcome::Passed),
        proto::Outcome::Failed => Some(Outcome::Failed),
        proto::Outcome::Error => Some(Outcome::Error),
        proto::Outcome::Skipped => Some(Outcome::Skipped),
        proto::Outcome::Lost => Some(Outcome::Lost),
    }
}

fn measurement_from_proto(
    measurement: proto::Measurement,
    field: &str,
    errors: &mut FieldErrors,
) -> Measurement {
    let proto::Measurement { name, value, unit } = measurement;
    if name.trim().is_empty() {
        errors.add(format!("{field}.name"), "is empty");
    }
    text(errors, &format!("{field}.name"), &limits::NAME, &name);
    text(
        errors,
        &format!("{field}.unit"),
        &limits::INVENTORY_TEXT,
        &unit,
    );
    if !value.is_finite() {
        errors.add(
            format!("{field}.value"),
            format!("{value} is not a finite number"),
        );
    }
    Measurement {
        name,
        value,
        unit: non_empty(unit),
    }
}

impl ToProto for Measurement {
    type Proto = proto::Measurement;
    fn to_proto(&self) -> proto::Measurement {
        let measurement = self;
        let Measurement { name, value, unit } = measurement;
        proto::Measurement {
            name: name.clone(),
            value: *value,
            unit: unit.clone().unwrap_or_default(),
        }
    }
}

fn telemetry_from_proto(
    telemetry: proto::GpuTelemetry,
    field: &str,
    errors: &mut FieldErrors,
) -> GpuTelemetry {
    let proto::GpuTelemetry {
        gpu_index,
        gpu_uuid,
        fields,
        samples_missed,
    } = telemetry;
    text(
        errors,
        &format!("{field}.gpu_uuid"),
        &limits::INVENTORY_TEXT,
        &gpu_uuid,
    );
    let fields = if count(
        errors,
        &format!("{field}.fields"),
        &limits::SERIES,
        fields.len(),
    ) {
        fields
    } else {
        Vec::new()
    };
    let fields = fields
        .into_iter()
        .enumerate()
        .filter_map(|(idx, summary)| {
            let proto::FieldSummary {
                field: name,
                min,
                max,
                mean,
                p99,
                last,
                samples,
            } = summary;
            match parse_bounded::<Field>(&name) {
                Ok(parsed) => Some(FieldSummary {
                    field: parsed,
                    min,
                    max,
                    mean,
                    p99,
                    last,
                    samples,
                }),
                Err(message) => {
                    errors.add(format!("{field}.fields[{idx}].field"), message);
                    None
                }
            }
        })
        .collect();
    GpuTelemetry {
        gpu_index,
        gpu_uuid,
        fields,
        samples_missed,
    }
}

impl ToProto for GpuTelemetry {
    type Proto = proto::GpuTelemetry;
    fn to_proto(&self) -> proto::GpuTelemetry {
        let telemetry = self;
        let GpuTelemetry {
            gpu_index,
            gpu_uuid,
            fields,
            samples_missed,
        } = telemetry;
        proto::GpuTelemetry {
            gpu_index: *gpu_index,
            gpu_uuid: gpu_uuid.clone(),
            fields: fields
                .iter()
                .map(|summary| {
                    let FieldSummary {
                        field,
                        min,
                        max,
                        mean,
                        p99,
                        last,
                        samples,
                    } = summary;
                    proto::FieldSummary {
                        field: field.name().to_owned(),
                        min: *min,
                        max: *max,
                        mean: *mean,
                        p99: *p99,
                        last: *last,
                        samples: *samples,
                    }
                })
                .collect(),
            samples_missed: *samples_missed,
        }
    }
}

/// Converts a GPU event, recording bad fields under `field`; `None` when unusable.
pub fn event_from_proto(
    event: proto::GpuEvent,
    field: &str,
    errors: &mut FieldErrors,
) -> Option<GpuEvent> {
    let proto::GpuEvent {
        gpu_index,
        gpu_uuid,
        kind,
        code,
        at,
        detail,
    } = event;
    text(
        errors,
        &format!("{field}.gpu_uuid"),
        &limits::INVENTORY_TEXT,
        &gpu_uuid,
    );
    text(
        errors,
        &format!("{field}.detail"),
        &limits::MESSAGE,
        &detail,
    );
    let kind = parse_bounded::<EventKind>(&kind)
        .map_err(|message| errors.add(format!("{field}.kind"), message))
        .ok();
    let at = required_timestamp(errors, &format!("{field}.at"), at);
    Some(GpuEvent {
        gpu_index,
        gpu_uuid,
        kind: kind?,
        code,
        at: at?,
        detail,
    })
}

impl ToProto for GpuEvent {
    type Proto = proto::GpuEvent;
    fn to_proto(&self) -> proto::GpuEvent {
        let event = self;
        let GpuEvent {
            gpu_index,
            gpu_uuid,
            kind,
            code,
            at,
            detail,
        } = event;
        proto::GpuEvent {
            gpu_index: *gpu_index,
            gpu_uuid: gpu_uuid.clone(),
            kind: kind.as_str().to_owned(),
            code: *code,
            at: Some(timestamp_to_proto(*at)),
            detail: detail.clone(),
        }
    }
}

impl FromProto for StepResult {
    type Proto = proto::StepResult;
    fn from_proto(result: proto::StepResult) -> Result<Self, InvalidFields> {
        let proto::StepResult {
            job_id,
            step_index,
            step_name,
            attempt,
            lease_epoch,
            outcome,
            exit_code,
            started_at,
            finished_at,
            measurements,
            telemetry,
            events,
            inventory,
            log_tail,
            message,
            sub_results,
            inventory_at_end,
            series,
        } = result;
        let mut errors = FieldErrors::new();
        if job_id.trim().is_empty() {
            errors.add("job_id", "is empty");
        }
        if step_name.trim().is_empty() {
            errors.add("step_name", "is empty");
        }
        text(&mut errors, "job_id", &limits::NAME, &job_id);
        text(&mut errors, "step_name", &limits::NAME, &step_name);
        text(&mut errors, "log_tail", &limits::LOG_TAIL, &log_tail);
        text(&mut errors, "message", &limits::MESSAGE, &message);
        // A list over its limit is refused whole: its entries are neither checked nor kept.
        let within = |errors: &mut FieldErrors, field: &str, limit: &Limit, n: usize| {
            count(errors, field, limit, n)
        };
        let measurements = if within(
            &mut errors,
            "measurements",
            &limits::MEASUREMENTS,
            measurements.len(),
        ) {
            measurements
        } else {
            Vec::new()
        };
        let telemetry = if within(&mut errors, "telemetry", &limits::GPUS, telemetry.len()) {
            telemetry
        } else {
            Vec::new()
        };
        let events = if within(&mut errors, "events", &limits::EVENTS, events.len()) {
            events
        } else {
            Vec::new()
        };
        let sub_results = if within(
            &mut errors,
            "sub_results",
            &limits::SUB_RESULTS,
            sub_results.len(),
        ) {
            sub_results
        } else {
            Vec::new()
        };
        let series = if within(&mut errors, "series", &limits::SERIES, series.len()) {
            series
        } else {
            Vec::new()
        };
        if attempt == 0 {
            errors.add("attempt", "must be at least 1");
        }
        let outcome = outcome_from_proto(outcome);
        if outcome.is_none() {
            errors.add(
                "outcome",
                "must be one of passed, failed, error, skipped, lost (not unspecified)",
            );
        }
        let started_at = required_timestamp(&mut errors, "started_at", started_at);
        let finished_at = required_timestamp(&mut errors, "finished_at", finished_at);
        if let (Some(start), Some(end)) = (started_at, finished_at)
            && end < start
        {
            errors.add("finished_at", format!("{end} is before started_at {start}"));
        }
        let measurements = measurements
            .into_iter()
            .enumerate()
            .map(|(idx, m)| measurement_from_proto(m, &format!("measurements[{idx}]"), &mut errors))
            .collect();
        let telemetry = telemetry
            .into_iter()
            .enumerate()
            .map(|(idx, t)| telemetry_from_proto(t, &format!("telemetry[{idx}]"), &mut errors))
            .collect();
        let events = events
            .into_iter()
            .enumerate()
            .filter_map(|(idx, e)| event_from_proto(e, &format!("events[{idx}]"), &mut errors))
            .collect();
        let inventory = match inventory {
            Some(inventory) => inventory_from_proto(inventory, "inventory", &mut errors),
            None => {
                errors.add(
                    "inventory",
                    "is missing; send the inventory observed at step start",
                );
                Inventory::default()
            }
        };
        let sub_results = sub_results
            .into_iter()
            .enumerate()
            .filter_map(|(idx, sub)| {
                sub_result_from_proto(sub, &format!("sub_results[{idx}]"), &mut errors)
            })
            .collect();
        let inventory_at_end = inventory_at_end
            .map(|inventory| inventory_from_proto(inventory, "inventory_at_end", &mut errors));
        let series = series
            .into_iter()
            .enumerate()
            .filter_map(|(idx, series)| {
                series_from_proto(series, &format!("series[{idx}]"), &mut errors)
            })
            .collect();
        match (outcome, started_at, finished_at) {
            (Some(outcome), Some(started_at), Some(finished_at)) => errors.finish(StepResult {
                job_id: JobId::new(job_id),
                step_index,
                step_name,
                attempt,
                lease_epoch,
                outcome,
                exit_code,
                started_at,
                finished_at,
                measurements,
                telemetry,
                events,
                inventory,
                log_tail,
                message,
                sub_results,
                inventory_at_end,
                series,
            }),
            // Each missing piece was recorded above, so `errors` is not empty here.
            _ => Err(errors
                .finish(())
                .err()
                .unwrap_or_else(|| InvalidFields(Vec::new()))),
        }
    }
}

impl ToProto for StepResult {
    type Proto = proto::StepResult;
    fn to_proto(&self) -> proto::StepResult {
        let result = self;
        let StepResult {
            job_id,
            step_index,
            step_name,
            attempt,
            lease_epoch,
            outcome,
            exit_code,
            started_at,
            finished_at,
            measurements,
            telemetry,
            events,
            inventory,
            log_tail,
            message,
            sub_results,
            inventory_at_end,
            series,
        } = result;
        proto::StepResult {
            job_id: job_id.to_string(),
            step_index: *step_index,
            step_name: step_name.clone(),
            attempt: *attempt,
            lease_epoch: *lease_epoch,
            outcome: outcome_to_proto(*outcome).into(),
            exit_code: *exit_code,
            started_at: Some(timestamp_to_proto(*started_at)),
            finished_at: Some(timestamp_to_proto(*finished_at)),
            measurements: measurements.iter().map(ToProto::to_proto).collect(),
            telemetry: telemetry.iter().map(ToProto::to_proto).collect(),
            events: events.iter().map(ToProto::to_proto).collect(),
            inventory: Some(inventory.to_proto()),
            log_tail: log_tail.clone(),
            message: message.clone(),
            sub_results: sub_results.iter().map(sub_result_to_proto).collect(),
            inventory_at_end: inventory_at_end.as_ref().map(ToProto::to_proto),
            series: series.iter().map(series_to_proto).collect(),
        }
    }
}

fn series_to_proto(series: &tollgate_domain::telemetry::TelemetrySeries) -> proto::TelemetrySeries {
    proto::TelemetrySeries {
        gpu_index: series.gpu_index,
        field: series.field.name().to_owned(),
        bucket_ms: series.bucket_ms,
        points: series
            .points
            .iter()
            .map(|point| proto::SeriesPoint {
                offset_ms: point.offset_ms,
                mean: point.mean,
                min: point.min,
                max: point.max,
                samples: point.samples,
            })
            .collect(),
    }
}

fn series_from_proto(
    series: proto::TelemetrySeries,
    at: &str,
    errors: &mut FieldErrors,
) -> Option<tollgate_domain::telemetry::TelemetrySeries> {
    let proto::TelemetrySeries {
        gpu_index,
        field,
        bucket_ms,
        points,
    } = series;
    let field = match parse_bounded::<tollgate_domain::telemetry::Field>(&field) {
        Ok(field) => field,
        Err(error) => {
            errors.add(format!("{at}.field"), error);
            return None;
        }
    };
    if points.len() > tollgate_domain::telemetry::MAX_SERIES_POINTS {
        errors.add(
            format!("{at}.points"),
            format!(
                "has {} points; at most {}",
                points.len(),
                tollgate_domain::telemetry::MAX_SERIES_POINTS
            ),
        );
        return None;
    }
    let all_finite = points
        .iter()
        .all(|p| p.mean.is_finite() && p.min.is_finite() && p.max.is_finite());
    if !all_finite {
        errors.add(format!("{at}.points"), "holds a value that is not finite");
        return None;
    }
    Some(tollgate_domain::telemetry::TelemetrySeries {
        gpu_index,
        field,
        bucket_ms,
        points: points
            .into_iter()
            .map(|p| tollgate_domain::telemetry::SeriesPoint {
                offset_ms: p.offset_ms,
                mean: p.mean,
                min: p.min,
                max: p.max,
                samples: p.samples,
            })
            .collect(),
    })
}

fn sub_result_to_proto(sub: &SubResult) -> proto::SubResult {
    let SubResult {
        source,
        suite,
        name,
        gpu_index,
        outcome,
        message,
        level,
    } = sub;
    proto::SubResult {
        source: source.clone(),
        suite: suite.clone(),
        name: name.clone(),
        gpu_index: *gpu_index,
        outcome: outcome_to_proto(*outcome).into(),
        message: message.clone(),
        level: level.map(u32::from),
    }
}

fn sub_result_from_proto(
    sub: proto::SubResult,
    field: &str,
    errors: &mut FieldErrors,
) -> Option<SubResult> {
    let proto::SubResult {
        source,
        suite,
        name,
        gpu_index,
        outcome,
        message,
        level,
    } = sub;
    if !matches!(source.as_str(), "dcgm-diag" | "junit") {
        errors.add(
            format!("{field}.source"),
            format!(
                "{} is not a result parser (expected dcgm-diag or junit)",
                quote(&source)
            ),
        );
    }
    if name.trim().is_empty() {
        errors.add(format!("{field}.name"), "is empty");
    }
    text(
        errors,
        &format!("{field}.suite"),
        &limits::TEST_NAME,
        &suite,
    );
    text(errors, &format!("{field}.name"), &limits::TEST_NAME, &name);
    text(
        errors,
        &format!("{field}.message"),
        &limits::MESSAGE,
        &message,
    );
    let level = match level.map(u8::try_from) {
        Some(Ok(level)) => Some(level),
        Some(Err(_)) => {
            errors.add(
                format!("{field}.level"),
                "is not a dcgmi diag level (1 to 4)",
            );
            None
        }
        None => None,
    };
    let Some(outcome) = outcome_from_proto(outcome) else {
        errors.add(
            format!("{field}.outcome"),
            "must be one of passed, failed, error, skipped, lost",
        );
        return None;
    };
    Some(SubResult {
        source,
        suite,
        name,
        gpu_index,
        outcome,
        message,
        level,
    })
}

/// A result as a run shows it, with every failing test and the first
/// [`tollgate_domain::result::LISTED_PASSING`] others (a run of a large fleet stays small).
pub fn result_summary(result: &StepResult) -> proto::StepResultSummary {
    let duration_ms = (result.finished_at - result.started_at)
        .num_milliseconds()
        .max(0);
    let (listed, not_listed) = tollgate_domain::result::listed(
        &result.sub_results,
        tollgate_domain::result::LISTED_PASSING,
    );
    proto::StepResultSummary {
        sub_results: listed.into_iter().map(sub_result_to_proto).collect(),
        sub_results_not_listed: u32::try_from(not_listed).unwrap_or(u32::MAX),
        step_index: result.step_index,
        step_name: result.step_name.clone(),
        attempt: result.attempt,
        outcome: outcome_to_proto(result.outcome).into(),
        message: result.message.clone(),
        measurements: result.measurements.iter().map(ToProto::to_proto).collect(),
        duration_ms: u64::try_from(duration_ms).unwrap_or(0),
        lease_epoch: result.lease_epoch,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn agent_events_with_an_oversize_job_id_are_refused_by_name() {
        use proto::agent_event::Event;
        let huge = "j".repeat(3 * 1024 * 1024);
        let events = [
            (
                Event::Heartbeat(proto::Heartbeat {
                    running_job_id: huge.clone(),
                    ..Default::default()
                }),
                "heartbeat.running_job_id",
            ),
            (
                Event::JobAccepted(proto::JobAccepted {
                    job_id: huge.clone(),
                    lease_epoch: 1,
                }),
                "job_accepted.job_id",
            ),
            (
                Event::StepStarted(proto::StepStarted {
                    job_id: huge.clone(),
                    ..Default::default()
                }),
                "step_started.job_id",
            ),
        ];
        for (event, field) in events {
            let refused = bounded(event).expect_err("an oversize id is refused");
            assert_eq!(refused.fields(), [field]);
            assert!(
                refused.to_string().len() < 1024,
                "{}",
                refused.to_string().len()
            );
        }
        let fine = Event::Heartbeat(proto::Heartbeat {
            running_job_id: "job-1".into(),
            ..Default::default()
        });
        assert!(bounded(fine).is_ok());
    }

    use super::*;
    use tollgate_domain::test_support::{at, inventory, step_result};
    use tonic::{Code, Status};

    fn full_result() -> StepResult {
        let mut result = step_result(1, 2, Outcome::Failed);
        result.exit_code = Some(3);
        result.lease_epoch = 4;
        result.inventory_at_end = Some(result.inventory.clone());
        let mut series = tollgate_domain::telemetry::SeriesBuilder::new(1000, 120);
        series.push(0, 60.0);
        series.push(1500, 71.0);
        result.series = vec![series.build(0, Field::GpuTempC)];
        result.started_at = at(10);
        result.finished_at = at(70) + chrono::Duration::milliseconds(250);
        result.measurements = vec![Measurement {
            name: "membw_gbps".into(),
            value: 3012.5,
            unit: Some("GB/s".into()),
        }];
        result.telemetry = vec![GpuTelemetry {
            gpu_index: 0,
            gpu_uuid: "GPU-00000000".into(),
            fields: vec![
                FieldSummary::from_samples(Field::GpuTempC, &[60.0, 71.0]).expect("samples"),
            ],
            samples_missed: 1,
        }];
        result.events = vec![GpuEvent {
            gpu_index: 0,
            gpu_uuid: "GPU-00000000".into(),
            kind: EventKind::Xid,
            code: 79,
            at: at(30),
            detail: "fallen off the bus".into(),
        }];
        result.inventory = inventory("550.54.15", "96.00.89.00.01", 2);
        result
            .inventory
            .components
            .insert("cx7-fw".into(), "28.39.1002".into());
        result.log_tail = "line 1\nline 2\n".into();
        result.message = "exit status 3".into();
        result
    }

    #[test]
    fn step_results_round_trip() {
        let result = full_result();
        let wire = result.to_proto();
        assert_eq!(StepResult::from_proto(wire), Ok(result));
    }

    #[test]
    fn inventories_round_trip() {
        let mut inv = inventory("550.54.15", "96.00.89.00.01", 3);
        inv.gpus[1].ecc_enabled = Some(true);
        inv.gpus[2].power_limit_w = Some(700.0);
        inv.components.insert("cx7-fw".into(), "28.39.1002".into());
        assert_eq!(Inventory::from_proto(inv.to_proto()), Ok(inv));
    }

    #[test]
    fn timestamps_round_trip_to_the_nanosecond() {
        let t = at(5) + chrono::Duration::nanoseconds(123_456_789);
        assert_eq!(timestamp_from_proto(&timestamp_to_proto(t)), Some(t));
        let bad = prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(timestamp_from_proto(&bad), None);
    }

    #[test]
    fn a_malformed_result_names_every_bad_field() {
        let mut wire = full_result().to_proto();
        wire.job_id = String::new();
        wire.step_name = " ".into();
        wire.attempt = 0;
        wire.outcome = proto::Outcome::Unspecified.into();
        wire.started_at = None;
        wire.finished_at = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: 2_000_000_000,
        });
        wire.measurements[0].value = f64::NAN;
        wire.telemetry[0].fields[0].field = "gpu_temperature".into();
        wire.events[0].kind = "meteor".into();
        wire.inventory = None;
        let error = StepResult::from_proto(wire).unwrap_err();
        assert_eq!(
            error.fields(),
            [
                "job_id",
                "step_name",
                "attempt",
                "outcome",
                "started_at",
                "finished_at",
                "measurements[0].value",
                "telemetry[0].fields[0].field",
                "events[0].kind",
                "inventory",
            ]
        );
        let status = Status::from(error);
        assert_eq!(status.code(), Code::InvalidArgument);
        for field in ["job_id", "outcome", "started_at: is missing", "inventory"] {
            assert!(status.message().contains(field), "{}", status.message());
        }
    }

    #[test]
    fn a_result_that_ends_before_it_starts_is_rejected() {
        let mut wire = full_result().to_proto();
        wire.finished_at = Some(timestamp_to_proto(at(0)));
        let error = StepResult::from_proto(wire).unwrap_err();
        assert_eq!(error.fields(), ["finished_at"]);
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
    fn a_new_release_names_every_bad_field() {
        let request = proto::CreateReleaseRequest {
            name: "bad name".into(),
            components: vec![
                proto::Component {
                    name: "driver".into(),
                    version: String::new(),
                    ..Default::default()
                },
                proto::Component {
                    name: "vbios".into(),
                    version: "96.00".into(),
                    sha256: "xyz".into(),
                    ..Default::default()
                },
            ],
            description: String::new(),
        };
        let error = NewRelease::try_from(request).unwrap_err();
        assert_eq!(
            error.fields(),
            ["name", "components[0].version", "components[1].sha256"]
        );
    }

    #[test]
    fn plan_steps_reach_the_agent_with_their_limits() {
        let plan = tollgate_domain::plan::parse_plan(
            "p.yaml",
            "name: p\nsteps:\n  - {name: v, kind: inventory-check, components: [driver]}\n  - {name: s, kind: exec, command: [sh, -c, 'true'], env: {A: b}, timeout: 90s, retries: 2}\n",
        )
        .expect("valid plan");
        let specs: Vec<proto::StepSpec> = plan
            .steps
            .iter()
            .enumerate()
            .map(|(idx, step)| step_to_proto(idx as u32, step))
            .collect();
        assert_eq!(specs[0].index, 0);
        assert_eq!(
            specs[0].kind,
            Some(proto::step_spec::Kind::InventoryCheck(
                proto::InventoryCheckStep {
                    components: vec!["driver".into()]
                }
            ))
        );
        assert_eq!(
            (specs[1].index, specs[1].timeout_ms, specs[1].retries),
            (1, 90_000, 2)
        );
        let Some(proto::step_spec::Kind::Exec(exec)) = &specs[1].kind else {
            panic!("exec step expected: {:?}", specs[1].kind);
        };
        assert_eq!(exec.command, ["sh", "-c", "true"]);
        assert_eq!(exec.env.get("A").map(String::as_str), Some("b"));
        assert_eq!(exec.workdir, "");
    }

    #[test]
    fn summaries_carry_the_duration() {
        let summary = result_summary(&full_result());
        assert_eq!(summary.duration_ms, 60_250);
        assert_eq!(summary.outcome, i32::from(proto::Outcome::Failed));
    }

    #[test]
    fn summaries_list_failing_tests_first_and_count_the_passing_ones_left_out() {
        let mut result = full_result();
        let test = |name: String, outcome| SubResult {
            source: "junit".into(),
            suite: "suite".into(),
            name,
            gpu_index: None,
            outcome,
            message: String::new(),
            level: None,
        };
        let passing = tollgate_domain::result::LISTED_PASSING + 5;
        result.sub_results = (0..passing)
            .map(|n| test(format!("ok_{n}"), Outcome::Passed))
            .collect();
        result
            .sub_results
            .push(test("bandwidth".into(), Outcome::Failed));
        let summary = result_summary(&result);
        assert_eq!(summary.sub_results[0].name, "bandwidth");
        assert_eq!(
            summary.sub_results[0].outcome,
            i32::from(proto::Outcome::Failed)
        );
        assert_eq!(
            summary.sub_results.len(),
            tollgate_domain::result::LISTED_PASSING + 1
        );
        assert_eq!(summary.sub_results_not_listed, 5);
    }
}
