//! The rollout driver, run by the leading replica on every lease-watchdog tick: for each
//! rollout not ended it loads the facts, feeds the events it sees to
//! `tollgate_domain::rollout::next` (a node's run ended, a soak or the pause between waves is
//! over, the wave's health rules judged) and applies each decided change with its audit entry
//! (`Store::apply_rollout_change`); it starts the nodes `rollout::startable` allows, each as a
//! run of one job of the procedure (or rollback) plan on exactly that node, created in the
//! same transaction as the change that starts it.
//!
//! A health failure halts the rollout; when its file has a rollback plan the driver then
//! rolls back the halted wave at once: its nodes that went through the procedure are taken
//! back, while the earlier waves, which passed their health, keep the release (the halt, with
//! its rules and nodes, stays recorded on the rollout). A person's abort with rollback takes
//! back every node that went through the procedure. When this
//! replica takes the leadership, every rollout gets `controller-restarted` first: a node
//! mid-procedure is taken up again or failed, as the file's `on-interrupted` says.
//!
//! People's actions (pause, resume, abort, skip-wave) go through [`act`], the same way.

use crate::grpc::new_id;
use crate::shared::Shared;
use crate::store::{
    AuditNote, FLEET_BUCKETS_MAX, JobRecord, RolloutNode, RolloutRecord, RolloutStart, RunEnd,
    RunPurpose, RunRecord, RunState, StoreError,
};
use std::collections::HashMap;
use tollgate_domain::fleet::{Labels, Node};
use tollgate_domain::fleet_history::{Bucket, Tier};
use tollgate_domain::gate::{Decision, RuleKind};
use tollgate_domain::rollout::{
    CohortVerdict, HEALTH_MILESTONE, HealthVerdict, NodeProgress, Phase, Progress, RolloutChange,
    RolloutEvent, RolloutFacts, RolloutRefusal, SoakFacts, SoakWindow, cohort_nodes,
    cohort_windows, combine, compares_with_cohort, health_verdict, judge_cohort, next,
    soak::too_much_telemetry, startable,
};
use tollgate_domain::{JobId, NodeId, RolloutId, RunId, Timestamp};

/// How many times a person's action is decided again when the driver changed the rollout
/// meanwhile.
const ACT_ATTEMPTS: usize = 3;

/// Who the driver's changes are audited as.
pub const ACTOR: &str = "controller";

/// Why an event could not be applied to a rollout.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// There is no such rollout.
    #[error("rollout {0} not found; list rollouts with `tollgate rollout list`")]
    NotFound(RolloutId),
    /// The state machine refused the event.
    #[error(transparent)]
    Refused(#[from] RolloutRefusal),
    /// The store failed, or the rollout changed meanwhile (`Conflict`).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A rollout as loaded: its record, its nodes and their progress.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The rollout.
    pub record: RolloutRecord,
    /// Its nodes, in wave order.
    pub nodes: Vec<RolloutNode>,
    /// Their progress, by node.
    pub progress: Progress,
}

impl Loaded {
    pub(crate) fn facts(&self) -> RolloutFacts<'_> {
        RolloutFacts {
            spec: &self.record.spec,
            waves: &self.record.waves,
            state: &self.record.state,
            progress: &self.progress,
        }
    }
}

/// Loads rollout `id`.
pub async fn load(shared: &Shared, id: &RolloutId) -> Result<Loaded, RolloutError> {
    let (record, nodes) = shared
        .store
        .rollout(id)
        .await?
        .ok_or_else(|| RolloutError::NotFound(id.clone()))?;
    let progress = nodes
        .iter()
        .map(|node| (node.node.clone(), node.progress))
        .collect();
    Ok(Loaded {
        record,
        nodes,
        progress,
    })
}

/// Decides what `event` does to the rollout as loaded and applies it, with the runs `starts`
/// and an audit entry by `actor` (with `reason`, when a person gave one). Returns the change,
/// or `None` when it changed nothing (then nothing is written).
async fn apply(
    shared: &Shared,
    loaded: &Loaded,
    event: RolloutEvent,
    starts: Vec<RolloutStart>,
    actor: &str,
    reason: Option<&str>,
) -> Result<Option<RolloutChange>, RolloutError> {
    let now = shared.now();
    let name = event.name();
    let details = event_details(&event);
    let change = next(loaded.facts(), event, now)?;
    if change.to == change.from && change.nodes.is_empty() && change.resume.is_empty() {
        return Ok(None);
    }
    let record = &loaded.record;
    let note = AuditNote::new(
        now,
        actor,
        format!("rollout.{name}"),
        format!("rollout/{}", record.id),
    )
    .release(&record.release)
    .details(serde_json::json!({
        "event": details,
        "reason": reason,
        "from": record.state.phase,
        "to": change.to.phase,
        "from_wave": record.state.wave,
        "wave": change.to.wave,
        "nodes": change
            .nodes
            .iter()
            .map(|node| serde_json::json!({"node": node.node, "from": node.from, "to": node.to}))
            .collect::<Vec<_>>(),
        "resumed": change.resume,
        "runs": starts.iter().map(|start| &start.run.id).collect::<Vec<_>>(),
    }));
    shared
        .store
        .apply_rollout_change(&record.id, record.version, &change, &starts, &note)
        .await?;
    tracing::info!(
        rollout = %record.id,
        event = name,
        from = %record.state.phase,
        to = %change.to.phase,
        wave = change.to.wave,
        "rollout changed"
    );
    if !starts.is_empty() {
        shared.poke_scheduler();
    }
    shared.notify_changed();
    Ok(Some(change))
}

/// What an event carries, for its audit entry.
fn event_details(event: &RolloutEvent) -> serde_json::Value {
    match event {
        RolloutEvent::NodeStarted { node } => serde_json::json!({"node": node}),
        RolloutEvent::NodeFinished { node, passed } => {
            serde_json::json!({"node": node, "passed": passed})
        }
        RolloutEvent::HealthJudged(HealthVerdict::Failed(failures)) => {
            serde_json::json!({"failed": failures})
        }
        RolloutEvent::Abort { rollback } => serde_json::json!({"rollback": rollback}),
        RolloutEvent::SkipWave { reason } => serde_json::json!({"reason": reason}),
        _ => serde_json::Value::Null,
    }
}

/// A person's action on rollout `id` (start, pause, resume, abort, skip-wave), audited as
/// `actor` with `reason`; returns the rollout as it is after.
pub async fn act(
    shared: &Shared,
    id: &RolloutId,
    event: RolloutEvent,
    actor: &str,
    reason: &str,
) -> Result<Loaded, RolloutError> {
    // The driver may change the rollout between the load and the write: decide again on
    // what it became, a few times.
    let mut tries = 0;
    loop {
        let loaded = load(shared, id).await?;
        match apply(
            shared,
            &loaded,
            event.clone(),
            Vec::new(),
            actor,
            Some(reason),
        )
        .await
        {
            Err(RolloutError::Store(StoreError::Conflict { .. })) if tries < ACT_ATTEMPTS => {
                tries += 1;
            }
            outcome => {
                outcome?;
                break;
            }
        }
    }
    // Whatever the action allows now (the next wave's first nodes, a rollback) starts at once.
    let loaded = load(shared, id).await?;
    if let Err(error) = drive(shared, loaded).await {
        tracing::warn!(rollout = %id, %error, "rollout not driven after the action; the next tick tries again");
    }
    load(shared, id).await
}

/// Every rollout not ended gets `controller-restarted`: this replica just took the
/// leadership, so each node mid-procedure is taken up again or failed, as its file says.
pub async fn controller_restarted(shared: &Shared) -> Result<(), StoreError> {
    for record in shared.store.rollouts(true, usize::MAX).await? {
        let outcome = async {
            let loaded = load(shared, &record.id).await?;
            let change = apply(
                shared,
                &loaded,
                RolloutEvent::ControllerRestarted,
                Vec::new(),
                ACTOR,
                None,
            )
            .await?;
            if let Some(change) = change {
                cancel_interrupted(shared, &loaded, &change).await?;
            }
            Ok::<_, RolloutError>(())
        }
        .await;
        if let Err(error) = outcome {
            tracing::warn!(rollout = %record.id, %error, "rollout not resumed after the restart");
        }
    }
    Ok(())
}

/// Cancels the runs of the nodes `change` took out of procedure (or rollback) after a restart
/// under `on-interrupted: fail`: a node failed half-way is not left running its procedure,
/// and its cancelled job is the wave's evidence of it.
async fn cancel_interrupted(
    shared: &Shared,
    loaded: &Loaded,
    change: &RolloutChange,
) -> Result<(), StoreError> {
    for moved in &change.nodes {
        let Some(node) = loaded.nodes.iter().find(|node| node.node == moved.node) else {
            continue;
        };
        let run = match moved.from {
            NodeProgress::InProcedure => node.run.as_ref(),
            NodeProgress::RollingBack => node.rollback_run.as_ref(),
            _ => None,
        };
        let Some(run) = run else { continue };
        let Some(record) = shared.store.get_run(run).await? else {
            continue;
        };
        let jobs = shared.store.job_facts_of_run(run).await?;
        let Ok(cancellation) = tollgate_domain::run::cancel(record.state, &jobs) else {
            // It ended meanwhile: nothing to stop.
            continue;
        };
        let note = AuditNote::new(shared.now(), ACTOR, "run.cancel", format!("run/{run}"))
            .release(&record.release)
            .details(serde_json::json!({
                "rollout": loaded.record.id,
                "node": moved.node,
                "why": "interrupted by a controller restart; the rollout's on-interrupted is fail",
            }));
        shared
            .store
            .cancel_run(run, &cancellation, &note, shared.now())
            .await?;
        for job in jobs.iter().filter(|job| job.state.is_active()) {
            let command = crate::grpc::agent::cancel_command(
                &job.id,
                &format!(
                    "its node's procedure in rollout {} was interrupted",
                    loaded.record.id
                ),
            );
            if let Err(error) = shared.sessions.send(&job.node, command) {
                tracing::debug!(job = %job.id, %error, "cancel not delivered; the agent's results for it are refused");
            }
        }
        tracing::info!(rollout = %loaded.record.id, node = %moved.node, run = %run, "interrupted procedure cancelled");
    }
    Ok(())
}

/// One pass over every rollout not ended, and every ended one whose last nodes are still
/// in procedure (their ends are recorded).
pub async fn tick(shared: &Shared) -> Result<(), StoreError> {
    for id in shared.store.rollouts_to_drive().await? {
        let outcome = async {
            let loaded = load(shared, &id).await?;
            if loaded.record.state.phase == Phase::Pending {
                return start_left_pending(shared, loaded).await;
            }
            drive(shared, loaded).await
        }
        .await;
        match outcome {
            Ok(()) => {}
            // Another writer (a person's action) changed it first: the next tick sees it.
            Err(RolloutError::Store(StoreError::Conflict { detail, .. })) => {
                tracing::debug!(rollout = %id, detail, "rollout changed meanwhile");
            }
            Err(error) => tracing::warn!(rollout = %id, %error, "rollout not driven"),
        }
    }
    Ok(())
}

/// How long a rollout may stay `pending` after its creation before the leading controller
/// starts it: `StartRollout` starts it at once, so only a start that failed after the
/// creation (the database went away between the two) leaves one pending that long.
pub const START_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Starts a rollout left `pending` past [`START_GRACE`] (its start failed after it was
/// created), audited as the controller with why; a younger one is left to its creator.
async fn start_left_pending(shared: &Shared, loaded: Loaded) -> Result<(), RolloutError> {
    let grace = chrono::Duration::from_std(START_GRACE).unwrap_or(chrono::Duration::MAX);
    if shared.now() < loaded.record.created_at + grace {
        return Ok(());
    }
    let reason = "its start did not complete when it was created; the leading controller \
                  started it";
    apply(
        shared,
        &loaded,
        RolloutEvent::Start,
        Vec::new(),
        ACTOR,
        Some(reason),
    )
    .await?;
    tracing::warn!(rollout = %loaded.record.id, "rollout left pending after its creation started by the controller");
    let loaded = load(shared, &loaded.record.id).await?;
    drive(shared, loaded).await
}

/// Feeds one rollout every event that is due, reloading after each applied change.
async fn drive(shared: &Shared, mut loaded: Loaded) -> Result<(), RolloutError> {
    let id = loaded.record.id.clone();
    // Bounded: each applied event changes the rollout, and there are finitely many due.
    for _ in 0..(4 * loaded.nodes.len() + 16) {
        if loaded.record.state.phase.is_terminal() && !any_active(&loaded) {
            return Ok(());
        }
        let Some((event, reason)) = due_event(shared, &loaded).await? else {
            break;
        };
        let halting = matches!(event, RolloutEvent::HealthJudged(HealthVerdict::Failed(_)));
        apply(shared, &loaded, event, Vec::new(), ACTOR, reason.as_deref()).await?;
        loaded = load(shared, &id).await?;
        if halting
            && loaded.record.state.phase == Phase::Halted
            && loaded.record.spec.rollback.is_some()
        {
            let reason = "a health rule failed and the rollout has a rollback plan: the \
                          halted wave's updated nodes are rolled back";
            apply(
                shared,
                &loaded,
                RolloutEvent::RollBackWave,
                Vec::new(),
                ACTOR,
                Some(reason),
            )
            .await?;
            loaded = load(shared, &id).await?;
        }
    }
    start_nodes(shared, &loaded).await
}

/// Whether a node of the rollout is in procedure or rolling back.
fn any_active(loaded: &Loaded) -> bool {
    loaded
        .progress
        .values()
        .any(|progress| progress.is_active())
}

/// The next event due on the rollout, if any: a node's run ended, a timer ran out, or the
/// wave's health has a verdict that changes something, with the comparisons with the cohort
/// that could not be made (the reason its audit entry records).
async fn due_event(
    shared: &Shared,
    loaded: &Loaded,
) -> Result<Option<(RolloutEvent, Option<String>)>, RolloutError> {
    // One read for every run the driver looks at: those of nodes in procedure or rolling
    // back (have they ended?) and those of the current wave (when did they end?).
    let wave = loaded.record.state.wave;
    let runs: Vec<RunId> = loaded
        .nodes
        .iter()
        .flat_map(|node| {
            let active = match node.progress {
                NodeProgress::InProcedure => node.run.clone(),
                NodeProgress::RollingBack => node.rollback_run.clone(),
                _ => None,
            };
            let of_wave = (node.wave == wave).then(|| node.run.clone()).flatten();
            active.into_iter().chain(of_wave)
        })
        .collect();
    let ends = shared.store.run_ends(&runs).await?;
    for node in &loaded.nodes {
        let run = match node.progress {
            NodeProgress::InProcedure => node.run.as_ref(),
            NodeProgress::RollingBack => node.rollback_run.as_ref(),
            _ => None,
        };
        if let Some(passed) = run.and_then(|run| ends.get(run)).and_then(RunEnd::passed) {
            let event = RolloutEvent::NodeFinished {
                node: node.node.clone(),
                passed,
            };
            return Ok(Some((event, None)));
        }
    }
    let state = &loaded.record.state;
    let spec = &loaded.record.spec;
    let now = shared.now();
    match state.phase {
        Phase::Soaking if now >= state.since + spec.soak => {
            return Ok(Some((RolloutEvent::SoakEnded, None)));
        }
        Phase::Interval if now >= state.since + spec.limits.pause_between_waves => {
            return Ok(Some((RolloutEvent::IntervalEnded, None)));
        }
        Phase::Running | Phase::Soaking | Phase::Judging => {}
        _ => return Ok(None),
    }
    let Some(judged) = judge_wave(shared, loaded).await? else {
        return Ok(None);
    };
    let (soak, cohort) = judge_soak(shared, loaded, &judged, &ends).await?;
    let verdict = combine(
        combine(health_verdict(&judged.decision), soak),
        cohort.verdict,
    );
    // Before the wave was judged after its soak, only a failure changes anything.
    let matters = match &verdict {
        HealthVerdict::Failed(_) => true,
        HealthVerdict::Passed => state.phase == Phase::Judging,
        HealthVerdict::Waiting => false,
    };
    if !matters {
        return Ok(None);
    }
    let reason = (!cohort.not_compared.is_empty()).then(|| {
        let not_compared = cohort.not_compared.join("; ");
        tracing::info!(rollout = %loaded.record.id, wave = state.wave + 1, not_compared, "wave judged; some comparisons with the cohort could not be made");
        format!("not compared with the cohort: {not_compared}")
    });
    Ok(Some((RolloutEvent::HealthJudged(verdict), reason)))
}

/// The health gate's decision over the current wave's evidence, and the labels of the
/// wave's nodes it saw.
pub struct Judged {
    /// The decision over the procedure runs.
    pub decision: Decision,
    /// The labels of the nodes with a procedure run, by node.
    pub labels: HashMap<NodeId, Labels>,
    /// When each node's last procedure step ended, as its agent reported (the clock its
    /// events outside steps are stamped with), by node.
    pub ended: HashMap<NodeId, tollgate_domain::Timestamp>,
    /// When the release was created.
    pub release_created: tollgate_domain::Timestamp,
}

/// The health gate's decision over the current wave's evidence (its nodes' procedure runs),
/// or `None` while no node of the wave has a run.
pub async fn judge_wave(shared: &Shared, loaded: &Loaded) -> Result<Option<Judged>, StoreError> {
    let record = &loaded.record;
    let wave = record.state.wave;
    let runs: Vec<RunId> = loaded
        .nodes
        .iter()
        .filter(|node| node.wave == wave)
        .filter_map(|node| node.run.clone())
        .collect();
    if runs.is_empty() {
        return Ok(None);
    }
    let Some(release) = shared.store.get_release(&record.release).await? else {
        return Ok(None);
    };
    let plan_steps = shared
        .store
        .get_plan(&record.spec.procedure.plan, None)
        .await?
        .map(|stored| stored.plan.step_names())
        .unwrap_or_default();
    let policy = record.spec.health_gate(&plan_steps);
    let evidence = shared
        .store
        .load_evidence_of_runs(&release, HEALTH_MILESTONE, &runs)
        .await?;
    let labels = evidence
        .runs
        .iter()
        .flat_map(|run| &run.jobs)
        .map(|job| (job.node.clone(), job.labels.clone()))
        .collect();
    let mut ended: HashMap<NodeId, tollgate_domain::Timestamp> = HashMap::new();
    for job in evidence.runs.iter().flat_map(|run| &run.jobs) {
        if let Some(last) = job.results.iter().map(|result| result.finished_at).max() {
            let at = ended.entry(job.node.clone()).or_insert(last);
            *at = (*at).max(last);
        }
    }
    Ok(Some(Judged {
        ended,
        decision: tollgate_domain::gate::evaluate(&policy, &evidence, &[], shared.now()),
        labels,
        release_created: release.created_at,
    }))
}

/// The verdict of the health rules over the soak windows of the current wave's nodes whose
/// procedure ended (`rollout::judge_soak`): their GPU events outside steps and fleet
/// telemetry from their procedure's end until the wave's soak ends (until now while it runs
/// or soaks). With `baseline-by-cohort`, beside it, the verdict of the rules comparing the
/// wave with its cohort over the same span (`rollout::judge_cohort`); the cohort's labels,
/// events and telemetry are read for all its nodes at once, one query each, and only those a
/// rule compares.
async fn judge_soak(
    shared: &Shared,
    loaded: &Loaded,
    judged: &Judged,
    ends: &HashMap<RunId, RunEnd>,
) -> Result<(HealthVerdict, CohortVerdict), StoreError> {
    let state = &loaded.record.state;
    let spec = &loaded.record.spec;
    let now = shared.now();
    let until = match state.phase {
        Phase::Soaking => (state.since + spec.soak).min(now),
        Phase::Judging => state.since,
        _ => now,
    };
    // A node's window opens when its last procedure step ended on the node (when its run
    // finished, or its end was recorded, if it reported no step).
    let windows: Vec<SoakWindow> = loaded
        .nodes
        .iter()
        .filter(|node| {
            node.wave == state.wave
                && matches!(node.progress, NodeProgress::Passed | NodeProgress::Failed)
        })
        .map(|node| SoakWindow {
            node: node.node.clone(),
            labels: judged.labels.get(&node.node).cloned().unwrap_or_default(),
            from: judged.ended.get(&node.node).copied().unwrap_or_else(|| {
                node.run
                    .as_ref()
                    .and_then(|run| ends.get(run))
                    .and_then(|end| end.finished_at)
                    .unwrap_or(node.since)
            }),
            until,
        })
        .filter(|window| window.from < until)
        .collect();
    let compares = spec.baseline_by_cohort && spec.health.iter().any(compares_with_cohort);
    let Some(since) = windows.iter().map(|window| window.from).min() else {
        // Nothing was watched yet (or, with no soak, at all): nothing to compare.
        let nothing = CohortVerdict {
            verdict: HealthVerdict::Passed,
            not_compared: compares
                .then(|| "no node of the wave has a soak window to compare".to_owned())
                .into_iter()
                .collect(),
        };
        return Ok((HealthVerdict::Passed, nothing));
    };
    let cohort = if compares {
        let cohort: Vec<NodeId> = cohort_nodes(&loaded.facts()).into_iter().cloned().collect();
        let mut labels = shared.store.node_labels_of(&cohort).await?;
        let labelled: Vec<(NodeId, Labels)> = cohort
            .into_iter()
            .filter_map(|node| labels.remove(&node).map(|labels| (node, labels)))
            .collect();
        cohort_windows(&windows, &labelled)
    } else {
        Vec::new()
    };
    // The wave's events and buckets are read as before, the cohort's apart: a cohort is most
    // of the fleet, and a read sharing the wave's row limit could crowd the wave's rows out.
    let nodes: Vec<NodeId> = windows.iter().map(|window| window.node.clone()).collect();
    let cohort_ids: Vec<NodeId> = cohort.iter().map(|window| window.node.clone()).collect();
    let mut events = shared.store.fleet_events_of(&nodes, since).await?;
    let soak_reads_telemetry = spec.health.iter().any(|rule| {
        matches!(
            rule.kind,
            RuleKind::Telemetry { step: None, .. }
                | RuleKind::NoEvents {
                    row_remap_failure: true,
                    ..
                }
        )
    });
    let cohort_reads = |events: bool| {
        compares
            && spec.health.iter().any(|rule| match &rule.kind {
                RuleKind::Baseline { .. } => !events,
                RuleKind::NoRegression { measurement, .. } => measurement.is_none() == events,
                _ => false,
            })
    };
    let (cohort_reads_events, cohort_reads_telemetry) = (cohort_reads(true), cohort_reads(false));
    let reads_telemetry = soak_reads_telemetry || cohort_reads_telemetry;
    let (mut buckets, mut cohort_buckets, telemetry_complete) = if reads_telemetry {
        let read = soak_buckets(shared, &nodes, since, until, FLEET_BUCKETS_MAX).await?;
        let cohort_read = if cohort_reads_telemetry {
            soak_buckets(shared, &cohort_ids, since, until, FLEET_BUCKETS_MAX).await?
        } else {
            Some((Vec::new(), None))
        };
        let (Some((buckets, tier)), Some((cohort_buckets, _))) = (read, cohort_read) else {
            // Fail closed: a telemetry rule judged on rows cut short could pass a breach.
            return Ok((
                too_much_telemetry(
                    &spec.health,
                    nodes.len() + cohort_ids.len(),
                    FLEET_BUCKETS_MAX,
                ),
                CohortVerdict {
                    verdict: HealthVerdict::Passed,
                    not_compared: Vec::new(),
                },
            ));
        };
        // The bucket holding the soak's end is written once it closed and the writer passed
        // after the lateness allowance (`fleet_history::flush`).
        let complete = tier.is_none_or(|tier| {
            now >= until
                + tier.resolution
                + shared.config.fleet_flush_every
                + shared.config.fleet_flush_every
        });
        (buckets, cohort_buckets, complete)
    } else {
        (Vec::new(), Vec::new(), true)
    };
    let soak = tollgate_domain::rollout::judge_soak(
        &spec.health,
        &SoakFacts {
            release_created: judged.release_created,
            windows: &windows,
            events: &events,
            buckets: &buckets,
            telemetry_complete,
        },
    );
    if !compares {
        let nothing = CohortVerdict {
            verdict: HealthVerdict::Passed,
            not_compared: Vec::new(),
        };
        return Ok((soak, nothing));
    }
    if cohort_reads_events {
        events.extend(shared.store.fleet_events_of(&cohort_ids, since).await?);
    }
    buckets.append(&mut cohort_buckets);
    let both = SoakFacts {
        release_created: judged.release_created,
        windows: &windows,
        events: &events,
        buckets: &buckets,
        telemetry_complete,
    };
    Ok((soak, judge_cohort(&spec.health, &both, &cohort)))
}

/// The fleet telemetry buckets of `nodes` in `[since, until)` from the finest tier whose rows
/// fit `max_rows` ([`FLEET_BUCKETS_MAX`]), with that tier (`None` for no tier at all); `None`
/// when even the coarsest tier's do not fit.
async fn soak_buckets(
    shared: &Shared,
    nodes: &[NodeId],
    since: Timestamp,
    until: Timestamp,
    max_rows: usize,
) -> Result<Option<(Vec<Bucket>, Option<Tier>)>, StoreError> {
    let tiers = shared.config.fleet_history.tiers();
    if tiers.is_empty() {
        return Ok(Some((Vec::new(), None)));
    }
    for tier in tiers {
        if let Some(buckets) = shared
            .store
            .fleet_buckets_of(nodes, tier.resolution_s(), since, until, max_rows)
            .await?
        {
            return Ok(Some((buckets, Some(*tier))));
        }
    }
    Ok(None)
}

/// Starts the nodes the blast radius allows now, each with its run, one change each.
async fn start_nodes(shared: &Shared, loaded: &Loaded) -> Result<(), RolloutError> {
    let facts = loaded.facts();
    let may_start: Vec<NodeId> = facts.may_start().into_iter().cloned().collect();
    if may_start.is_empty() {
        return Ok(());
    }
    let rollback = loaded.record.state.phase == Phase::RollingBack;
    let spec = &loaded.record.spec;
    let plan_name = if rollback {
        match &spec.rollback {
            Some(rollback) => rollback.plan.clone(),
            None => return Ok(()),
        }
    } else {
        spec.procedure.plan.clone()
    };
    let Some(plan) = shared.store.get_plan(&plan_name, None).await? else {
        tracing::warn!(rollout = %loaded.record.id, plan = plan_name, "the rollout's plan is not registered; no node starts until it is applied");
        return Ok(());
    };
    let nodes = shared.store.list_nodes().await?;
    let by_name: HashMap<&NodeId, &Node> = nodes.iter().map(|node| (&node.id, node)).collect();
    let waiting: Vec<&Node> = may_start
        .iter()
        .filter_map(|id| by_name.get(id).copied())
        .collect();
    let active: Vec<&Labels> = facts
        .active()
        .into_iter()
        .filter_map(|id| by_name.get(id).map(|node| &node.labels))
        .collect();
    let now = shared.now();
    let windows = shared.store.maintenance_windows(now, false).await?;
    let starts = startable(&waiting, &active, &spec.limits, &windows, now);
    for (node, why) in &starts.held {
        tracing::debug!(rollout = %loaded.record.id, node = %node, why, "node waits");
    }
    let mut loaded = loaded.clone();
    for node in starts.start {
        let run = RunRecord {
            id: RunId::new(new_id("run")),
            release: loaded.record.release.clone(),
            plan_name: plan.plan.name.clone(),
            plan_version: plan.version.clone(),
            milestone: HEALTH_MILESTONE.to_owned(),
            state: RunState::Running,
            created_at: now,
            finished_at: None,
            purpose: RunPurpose::Rollout,
        };
        let job = JobRecord::first_pending(JobId::new(new_id("job")), &run, node.clone(), now);
        let start = RolloutStart {
            node: node.clone(),
            rollback,
            run,
            job,
        };
        apply(
            shared,
            &loaded,
            RolloutEvent::NodeStarted { node },
            vec![start],
            ACTOR,
            None,
        )
        .await?;
        loaded = load(shared, &loaded.record.id).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tollgate_domain::fleet_history::Stat;
    use tollgate_domain::telemetry::Field;
    use tollgate_domain::test_support::at;

    fn bucket(node: &str, resolution_s: u32, secs: i64) -> Bucket {
        Bucket {
            node: NodeId::from(node),
            gpu_index: 0,
            resolution_s,
            start: at(secs),
            fields: BTreeMap::from([(Field::GpuTempC, Stat::of(50.0))]),
        }
    }

    /// A soak too large for the finest tier is read from the next one; too large for every
    /// tier, it is not read at all (never cut short).
    #[tokio::test]
    async fn a_soak_is_read_from_the_finest_tier_that_fits_and_never_cut_short() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            crate::store::Store::connect(&format!("sqlite://{}/tollgate.db", dir.path().display()))
                .await
                .expect("store");
        let mut buckets: Vec<Bucket> = (0..12).map(|idx| bucket("n1", 10, idx * 10)).collect();
        buckets.extend([bucket("n1", 60, 0), bucket("n1", 60, 60)]);
        store.record_fleet_buckets(&buckets).await.expect("record");
        let shared = Shared::new(
            store,
            crate::config::ControllerConfig::new(dir.path().to_owned()),
        );
        let nodes = [NodeId::from("n1")];
        let tier_of = |read: Option<(Vec<Bucket>, Option<Tier>)>| {
            read.map(|(buckets, tier)| (buckets.len(), tier.map(|tier| tier.resolution_s())))
        };
        let read = |max_rows| soak_buckets(&shared, &nodes, at(0), at(120), max_rows);
        assert_eq!(tier_of(read(12).await.expect("read")), Some((12, Some(10))));
        assert_eq!(tier_of(read(11).await.expect("read")), Some((2, Some(60))));
        assert_eq!(tier_of(read(1).await.expect("read")), None);
    }
}
