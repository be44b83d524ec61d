//! `RolloutService`: starting a rollout (only for a release that passed its `production`
//! gate), reading and watching rollouts, and a person's actions on them (pause, resume, abort,
//! skip-wave, each with a reason), every change decided by `tollgate_domain::rollout::next`
//! through `crate::rollouts` and audited.

use super::auth::actor_of;
use super::status::{FieldErrors, invalid_fields, invalid_spec};
use super::{load_release, new_id};
use crate::rollouts::{self, Loaded, RolloutError};
use crate::shared::Shared;
use crate::store::{AuditNote, RolloutRecord};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_domain::gate::{RuleKind, Verdict};
use tollgate_domain::rollout::{
    NodeProgress, RolloutEvent, RolloutState, parse_rollout, plan_waves,
};
use tollgate_domain::{NodeId, ReleaseId, RolloutId};
use tollgate_proto::v1::{self as proto, rollout_service_server::RolloutService};
use tollgate_wire::time::timestamp_to_proto;
use tonic::{Request, Response, Status};

/// The milestone whose gate a release must have passed before it is rolled out.
pub const PRODUCTION: &str = "production";

/// How often a watch reads the rollout when nothing told it of a change.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// The `RolloutService` implementation.
#[derive(Clone)]
pub struct RolloutApi {
    shared: Arc<Shared>,
}

impl RolloutApi {
    /// Wraps the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl From<RolloutError> for Status {
    fn from(error: RolloutError) -> Self {
        match error {
            RolloutError::NotFound(_) => Status::not_found(error.to_string()),
            RolloutError::Refused(refusal) => Status::failed_precondition(refusal.to_string()),
            RolloutError::Store(error) => error.into(),
        }
    }
}

/// A rollout as answered whole: its waves with every node, and its file.
pub fn rollout_to_proto(loaded: &Loaded) -> proto::Rollout {
    let record = &loaded.record;
    let wave_u32 = |wave: usize| u32::try_from(wave).unwrap_or(u32::MAX);
    let mut counts: BTreeMap<NodeProgress, usize> = BTreeMap::new();
    for name in record.waves.waves.iter().flat_map(|wave| &wave.nodes) {
        *counts
            .entry(loaded.progress.get(name).copied().unwrap_or_default())
            .or_default() += 1;
    }
    let waves = record
        .waves
        .waves
        .iter()
        .enumerate()
        .map(|(idx, wave)| proto::RolloutWave {
            index: wave_u32(idx),
            nodes: wave
                .nodes
                .iter()
                .map(|name| {
                    let node = loaded.nodes.iter().find(|node| node.node == *name);
                    proto::RolloutNode {
                        node: name.to_string(),
                        progress: loaded
                            .progress
                            .get(name)
                            .copied()
                            .unwrap_or_default()
                            .as_str()
                            .to_owned(),
                        run: node
                            .and_then(|node| node.run.as_ref())
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                        rollback_run: node
                            .and_then(|node| node.rollback_run.as_ref())
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                    }
                })
                .collect(),
        })
        .collect();
    proto::Rollout {
        waves,
        file: record.file.clone(),
        ..rollout_summary(record, &counts)
    }
}

/// A rollout as `ListRollouts` answers it: without its waves' nodes and its file; with how
/// many nodes are at each progress (`counts`).
pub fn rollout_summary(
    record: &RolloutRecord,
    counts: &BTreeMap<NodeProgress, usize>,
) -> proto::Rollout {
    let state = &record.state;
    let wave_u32 = |wave: usize| u32::try_from(wave).unwrap_or(u32::MAX);
    proto::Rollout {
        id: record.id.to_string(),
        name: record.spec.name.clone(),
        release: record.release.to_string(),
        fleet: record.fleet.clone(),
        digest: record.digest.clone(),
        phase: state.phase.as_str().to_owned(),
        wave: wave_u32(state.wave),
        since: Some(timestamp_to_proto(state.since)),
        paused_from: state
            .paused_from
            .map(|phase| phase.as_str().to_owned())
            .unwrap_or_default(),
        halt: state.halt.as_ref().map(|halt| proto::RolloutHalt {
            wave: wave_u32(halt.wave),
            failures: halt
                .failures
                .iter()
                .map(|failure| proto::RolloutHealthFailure {
                    rule_id: failure.rule_id.clone(),
                    reason: failure.reason.clone(),
                    nodes: failure.nodes.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            at: Some(timestamp_to_proto(halt.at)),
        }),
        waves: Vec::new(),
        skipped: state
            .skipped
            .iter()
            .map(|skipped| proto::SkippedWave {
                wave: wave_u32(skipped.wave),
                reason: skipped.reason.clone(),
                nodes: skipped.nodes.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        created_by: record.created_by.clone(),
        created_at: Some(timestamp_to_proto(record.created_at)),
        updated_at: Some(timestamp_to_proto(record.updated_at)),
        file: String::new(),
        // GetRollout and WatchRollout add them (`detailed`).
        drifted: Vec::new(),
        eta: None,
        eta_per_node_seconds: 0.0,
        eta_nodes_left: 0,
        n_waves: wave_u32(record.waves.waves.len()),
        progress_counts: counts
            .iter()
            .map(|(progress, n)| proto::RolloutProgressCount {
                progress: progress.as_str().to_owned(),
                nodes: u32::try_from(*n).unwrap_or(u32::MAX),
            })
            .collect(),
    }
}

/// A rollout as answered by `GetRollout` and `WatchRollout`: with the drift of the nodes it
/// updated last and the estimate of its end.
async fn detailed(shared: &Shared, loaded: &Loaded) -> Result<proto::Rollout, Status> {
    let mut message = rollout_to_proto(loaded);
    // One read of the rollout's nodes for both the drift and the estimate.
    let members: Vec<NodeId> = loaded.nodes.iter().map(|node| node.node.clone()).collect();
    let nodes = shared.store.nodes_named(&members).await?;
    message.drifted = crate::drift::of_rollout(shared, &loaded.record.id, &nodes)
        .await?
        .iter()
        .map(|(node, drift)| tollgate_wire::fleet::drift_to_proto(node, drift))
        .collect();
    if let Some(eta) = crate::rollout_eta::eta_of(shared, loaded, &nodes).await? {
        message.eta = Some(timestamp_to_proto(eta.ends_at));
        message.eta_per_node_seconds = eta.per_node.as_secs_f64();
        message.eta_nodes_left = u32::try_from(eta.n_remaining).unwrap_or(u32::MAX);
    }
    Ok(message)
}

/// `message` without what moves with the clock alone (the estimate), to tell a change.
fn without_eta(message: &proto::Rollout) -> proto::Rollout {
    proto::Rollout {
        eta: None,
        eta_per_node_seconds: 0.0,
        eta_nodes_left: 0,
        ..message.clone()
    }
}

/// The fleet labels `role=prod,site=a`, or every bad one named.
fn parse_fleet(fleet: &str) -> Result<Vec<(String, String)>, String> {
    fleet
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(tollgate_domain::fleet::parse_label)
        .collect()
}

/// Checks the id and reason of an action on a rollout.
fn check_action(id: &str, reason: &str) -> Result<RolloutId, Status> {
    let mut errors = FieldErrors::new();
    if id.is_empty() {
        errors.add(
            "id",
            "is empty; give a rollout id (`tollgate rollout list`)",
        );
    }
    if reason.trim().is_empty() {
        errors.add(
            "reason",
            "is empty; say why (it is recorded in the audit log)",
        );
    }
    errors.finish(()).map_err(invalid_fields)?;
    Ok(RolloutId::from(id))
}

impl RolloutApi {
    /// Applies a person's action and answers the rollout after it.
    async fn act(
        &self,
        actor: &str,
        id: &str,
        reason: &str,
        event: RolloutEvent,
    ) -> Result<Response<proto::Rollout>, Status> {
        let id = check_action(id, reason)?;
        let loaded = rollouts::act(&self.shared, &id, event, actor, reason).await?;
        Ok(Response::new(rollout_to_proto(&loaded)))
    }
}

#[tonic::async_trait]
impl RolloutService for RolloutApi {
    async fn start_rollout(
        &self,
        request: Request<proto::StartRolloutRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        let actor = actor_of(&request);
        let proto::StartRolloutRequest {
            release,
            fleet,
            file,
            file_name,
        } = super::convert::bounded(request.into_inner())?;
        let mut errors = FieldErrors::new();
        if release.is_empty() {
            errors.add("release", "is empty; give the release to roll out");
        }
        if file.trim().is_empty() {
            errors.add("file", "is empty; send the rollout file's text");
        }
        let fleet_labels = match parse_fleet(&fleet) {
            Ok(labels) => labels,
            Err(message) => {
                errors.add(
                    "fleet",
                    format!("{message}; write it as key=value,key=value"),
                );
                Vec::new()
            }
        };
        errors.finish(()).map_err(invalid_fields)?;
        let file_name = if file_name.is_empty() {
            "rollout.yaml"
        } else {
            file_name.as_str()
        };
        let mut spec = parse_rollout(file_name, &file).map_err(|errors| invalid_spec(&errors))?;
        let compares: Vec<&str> = spec
            .health
            .iter()
            .filter(|rule| {
                matches!(
                    rule.kind,
                    RuleKind::Baseline { .. } | RuleKind::NoRegression { .. }
                )
            })
            .map(|rule| rule.id.as_str())
            .collect();
        if !compares.is_empty() && !spec.baseline_by_cohort {
            return Err(invalid_fields_one(
                "file",
                format!(
                    "health rule(s) {} compare with a baseline, and a wave has no earlier \
                     release's evidence to compare with; set baseline-by-cohort: true to \
                     compare each wave with the fleet's nodes not updated yet, or judge it \
                     with absolute limits (steps-passed, no-events, measurement, telemetry)",
                    compares.join(", ")
                ),
            ));
        }
        for (key, value) in fleet_labels {
            match spec.selector.0.get(&key) {
                Some(existing) if *existing != value => {
                    return Err(invalid_fields_one(
                        "fleet",
                        format!(
                            "{key}={value} contradicts the file's selector {key}={existing}; \
                             the fleet is the nodes carrying both"
                        ),
                    ));
                }
                _ => {
                    spec.selector.0.insert(key, value);
                }
            }
        }
        let shared = &self.shared;
        let release = load_release(shared, &release).await?;
        for plan in std::iter::once(&spec.procedure.plan)
            .chain(spec.rollback.as_ref().map(|rollback| &rollback.plan))
        {
            if shared.store.get_plan(plan, None).await?.is_none() {
                return Err(Status::failed_precondition(format!(
                    "plan {plan} of the rollout file is not registered; apply it first \
                     (`tollgate plan apply`)"
                )));
            }
        }
        refuse_unless_production_passed(shared, &release).await?;
        let nodes = shared.store.list_nodes().await?;
        let waves = plan_waves(&spec, &nodes)
            .map_err(|error| Status::failed_precondition(error.to_string()))?;
        let now = shared.now();
        let record = RolloutRecord {
            id: RolloutId::new(new_id("rollout")),
            release: ReleaseId::clone(&release.id),
            fleet: fleet.trim().to_owned(),
            digest: tollgate_domain::report_signature::sha256_hex(file.as_bytes()),
            file,
            spec,
            waves,
            state: RolloutState::new(now),
            version: 0,
            created_by: actor.clone(),
            created_at: now,
            updated_at: now,
        };
        let note = AuditNote::new(
            now,
            &actor,
            "rollout.create",
            format!("rollout/{}", record.id),
        )
        .release(&record.release)
        .details(serde_json::json!({
            "name": record.spec.name,
            "digest": record.digest,
            "fleet": record.fleet,
            "waves": record.waves.waves.iter().map(|wave| wave.nodes.len()).collect::<Vec<_>>(),
        }));
        shared.store.create_rollout(&record, &note).await?;
        tracing::info!(rollout = %record.id, release = %record.release, n_nodes = record.waves.n_nodes(), "rollout created");
        let loaded = rollouts::act(shared, &record.id, RolloutEvent::Start, &actor, "started")
            .await
            .map_err(|error| {
                tracing::warn!(rollout = %record.id, %error, "rollout created but not started");
                Status::unavailable(format!(
                    "rollout {} was created but did not start ({error}); the leading \
                     controller starts it within {} s: follow it with `tollgate rollout show {}`, \
                     do not start it again",
                    record.id,
                    rollouts::START_GRACE.as_secs(),
                    record.id
                ))
            })?;
        Ok(Response::new(rollout_to_proto(&loaded)))
    }

    async fn get_rollout(
        &self,
        request: Request<proto::GetRolloutRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        let customer = super::auth::customer_of(&request);
        let proto::GetRolloutRequest { id } = super::convert::bounded(request.into_inner())?;
        if id.is_empty() {
            return Err(invalid_fields_one(
                "id",
                "is empty; give a rollout id (`tollgate rollout list`)",
            ));
        }
        let loaded = rollouts::load(&self.shared, &RolloutId::from(id)).await?;
        refuse_outside_scope(&self.shared, customer.as_deref(), &loaded).await?;
        Ok(Response::new(detailed(&self.shared, &loaded).await?))
    }

    async fn list_rollouts(
        &self,
        request: Request<proto::ListRolloutsRequest>,
    ) -> Result<Response<proto::ListRolloutsResponse>, Status> {
        let customer = super::auth::customer_of(&request);
        let proto::ListRolloutsRequest {
            active_only,
            release,
            node,
        } = super::convert::bounded(request.into_inner())?;
        let release = (!release.is_empty()).then(|| ReleaseId::from(release));
        let node = (!node.is_empty()).then(|| NodeId::from(node));
        let mut summaries = self
            .shared
            .store
            .rollout_summaries(active_only, release.as_ref(), node.as_ref(), 1000)
            .await?;
        if let Some(customer) = &customer {
            let releases: Vec<ReleaseId> = summaries
                .iter()
                .map(|(record, _)| record.release.clone())
                .collect();
            let customers = self.shared.store.release_customers_of(&releases).await?;
            summaries.retain(|(record, _)| {
                customers
                    .get(&record.release)
                    .is_some_and(|of| of.contains(customer))
            });
        }
        let rollouts = summaries
            .iter()
            .map(|(record, counts)| rollout_summary(record, counts))
            .collect();
        Ok(Response::new(proto::ListRolloutsResponse { rollouts }))
    }

    type WatchRolloutStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::Rollout, Status>> + Send>>;

    async fn watch_rollout(
        &self,
        request: Request<proto::GetRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        let identity = super::limits::identity_of(&request);
        let customer = super::auth::customer_of(&request);
        let proto::GetRolloutRequest { id } = super::convert::bounded(request.into_inner())?;
        if id.is_empty() {
            return Err(invalid_fields_one(
                "id",
                "is empty; give a rollout id (`tollgate rollout list`)",
            ));
        }
        let id = RolloutId::from(id);
        // Fail the call itself, not the stream, when the rollout does not exist (for this
        // caller).
        let loaded = rollouts::load(&self.shared, &id).await?;
        refuse_outside_scope(&self.shared, customer.as_deref(), &loaded).await?;
        let permit = super::limits::open_stream(&self.shared, identity, "WatchRollout")?;
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(watch(self.shared.clone(), id, sender));
        let stream = super::limits::holding(permit, ReceiverStream::new(receiver));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn pause_rollout(
        &self,
        request: Request<proto::RolloutActionRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        let actor = actor_of(&request);
        let proto::RolloutActionRequest { id, reason } =
            super::convert::bounded(request.into_inner())?;
        self.act(&actor, &id, &reason, RolloutEvent::Pause).await
    }

    async fn resume_rollout(
        &self,
        request: Request<proto::RolloutActionRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        let actor = actor_of(&request);
        let proto::RolloutActionRequest { id, reason } =
            super::convert::bounded(request.into_inner())?;
        self.act(&actor, &id, &reason, RolloutEvent::Resume).await
    }

    async fn abort_rollout(
        &self,
        request: Request<proto::AbortRolloutRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        let actor = actor_of(&request);
        let proto::AbortRolloutRequest {
            id,
            reason,
            rollback,
        } = super::convert::bounded(request.into_inner())?;
        self.act(&actor, &id, &reason, RolloutEvent::Abort { rollback })
            .await
    }

    async fn skip_wave(
        &self,
        request: Request<proto::RolloutActionRequest>,
    ) -> Result<Response<proto::Rollout>, Status> {
        let actor = actor_of(&request);
        let proto::RolloutActionRequest { id, reason } =
            super::convert::bounded(request.into_inner())?;
        let event = RolloutEvent::SkipWave {
            reason: reason.clone(),
        };
        self.act(&actor, &id, &reason, event).await
    }
}

/// `NotFound` for a customer's call about a rollout of a release not for that customer (the
/// release's `customers`), as if there were none: a customer sees only the rollouts of the
/// releases in its scope, as in its status report.
async fn refuse_outside_scope(
    shared: &Shared,
    customer: Option<&str>,
    loaded: &Loaded,
) -> Result<(), Status> {
    let Some(customer) = customer else {
        return Ok(());
    };
    let customers = shared
        .store
        .release_customers(&loaded.record.release)
        .await?;
    if customers.iter().any(|of| of == customer) {
        Ok(())
    } else {
        Err(RolloutError::NotFound(loaded.record.id.clone()).into())
    }
}

/// One bad field as `InvalidArgument`.
fn invalid_fields_one(field: &str, message: impl Into<String>) -> Status {
    super::status::invalid_field(field, message)
}

/// `FailedPrecondition` unless the release's `production` gate passes now, naming the verdict
/// and why.
async fn refuse_unless_production_passed(
    shared: &Shared,
    release: &tollgate_domain::release::Release,
) -> Result<(), Status> {
    let Some(evaluated) = crate::gates::evaluate_now(shared, release, PRODUCTION).await? else {
        return Err(Status::failed_precondition(format!(
            "release {} cannot be rolled out: no gate guards milestone {PRODUCTION}; apply one \
             (`tollgate gate apply`) and qualify the release against it",
            release.id
        )));
    };
    let decision = &evaluated.decision;
    if decision.verdict != Verdict::Passed {
        return Err(Status::failed_precondition(format!(
            "release {} has not passed its {PRODUCTION} gate: the decision is {} ({}); only a \
             release whose {PRODUCTION} gate passed is rolled out",
            release.id, decision.verdict, decision.summary
        )));
    }
    Ok(())
}

/// Sends the rollout now and after each change, until it has ended and none of its nodes is
/// in procedure or rolling back.
async fn watch(
    shared: Arc<Shared>,
    id: RolloutId,
    sender: mpsc::Sender<Result<proto::Rollout, Status>>,
) {
    let mut changes = shared.subscribe_changes();
    let mut shutdown = shared.subscribe_shutdown();
    let mut last: Option<proto::Rollout> = None;
    loop {
        let loaded = match rollouts::load(&shared, &id).await {
            Ok(loaded) => loaded,
            Err(error) => {
                let _ = sender.send(Err(error.into())).await;
                return;
            }
        };
        let message = match detailed(&shared, &loaded).await {
            Ok(message) => message,
            Err(status) => {
                let _ = sender.send(Err(status)).await;
                return;
            }
        };
        let ended = loaded.record.state.phase.is_terminal()
            && !loaded
                .progress
                .values()
                .any(|progress| progress.is_active());
        let compared = without_eta(&message);
        if last.as_ref() != Some(&compared) {
            if sender.send(Ok(message)).await.is_err() {
                return;
            }
            last = Some(compared);
        }
        if ended {
            return;
        }
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(WATCH_POLL) => {}
            () = sender.closed() => return,
            () = crate::shared::stopped(&mut shutdown) => return,
        }
    }
}
