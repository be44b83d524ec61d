//! Evaluating a release's gate now and storing the decision: shared by `EvaluateGate`,
//! `Promote`, reports, result ingestion and the lease watchdog.
//!
//! The decision itself is the domain's (`tollgate_domain::gate::GateState`); this module
//! loads its inputs, keeps recent gates evaluated in memory
//! ([`crate::gate_cache::GateCache`]) so a new result costs only its own part of the
//! decision, and persists the output.

use crate::gate_cache::{CACHED_GATES, CachedGate};
use crate::shared::{Shared, stopped};
use crate::store::{DecisionInputs, Refreshed, StoreError, StoredGate};
use opentelemetry::trace::SpanContext;
use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_domain::gate::{Decision, Evidence, GatePolicy, GateState, ResultReads};
use tollgate_domain::release::Release;
use tollgate_domain::{PlanVersion, ReleaseId, RunId};
use tracing::Instrument as _;

/// The least time between two passes of the re-evaluation loop; a request that arrives
/// sooner waits for the rest of it.
pub const REEVALUATE_SPACING: std::time::Duration = std::time::Duration::from_millis(250);

/// A decision with what it was made from.
#[derive(Debug, Clone)]
pub struct Evaluated {
    /// The ruling policy.
    pub gate: StoredGate,
    /// The plan and pinned version of each run judged, in the evidence's order. (Not the
    /// evidence itself: the gate cache's stays unshared, so that the next evaluation updates
    /// it in place instead of copying it.)
    pub plans: Vec<(String, PlanVersion)>,
    /// The verdict.
    pub decision: Decision,
}

/// The plan and pinned version of each run of `evidence`, in order.
pub fn run_plans(evidence: &Evidence) -> Vec<(String, PlanVersion)> {
    evidence
        .runs
        .iter()
        .map(|run| (run.plan_name.clone(), run.plan_version.clone()))
        .collect()
}

/// Evaluates the gate of `milestone` for `release` now; `None` when no gate guards the
/// milestone. The decision is stored, with its inputs, before it is returned.
///
/// The stored waivers of the release at the milestone apply (the domain decides which are in
/// force); when the policy compares with a baseline, the evidence of the last other release
/// promoted past the milestone is loaded as `Evidence.baseline`.
pub async fn evaluate_now(
    shared: &Shared,
    release: &Release,
    milestone: &str,
) -> Result<Option<Evaluated>, StoreError> {
    let Some(gate) = shared.store.get_gate(milestone).await? else {
        return Ok(None);
    };
    let baseline = load_baseline(shared, &gate.policy, release, milestone).await?;
    let waivers = shared
        .store
        .list_waivers(&release.id, Some(milestone))
        .await?;
    let (decision, inputs, plans) =
        decide_cached(shared, &gate, release, milestone, baseline, &waivers).await?;
    shared
        .metrics
        .store(
            "insert_decision",
            shared.store.insert_decision_encoded(&decision, &inputs),
        )
        .await?;
    shared.metrics.decision(decision.verdict.as_str());
    crate::issues::track(&shared.store, &decision, shared.now()).await;
    tracing::info!(
        release = %release.id,
        milestone,
        verdict = %decision.verdict,
        digest = %decision.digest,
        "gate decided: {}",
        decision.summary
    );
    Ok(Some(Evaluated {
        gate,
        plans,
        decision,
    }))
}

/// The evidence of the last other release promoted past `milestone`, when `policy` compares
/// with a baseline and there is one.
async fn load_baseline(
    shared: &Shared,
    policy: &GatePolicy,
    release: &Release,
    milestone: &str,
) -> Result<Option<Box<Evidence>>, StoreError> {
    if !tollgate_domain::gate::needs_baseline(policy) {
        return Ok(None);
    }
    let Some(baseline_id) = shared
        .store
        .last_promoted_past(milestone, &release.id)
        .await?
    else {
        return Ok(None);
    };
    let Some(base_release) = shared.store.get_release(&baseline_id).await? else {
        return Ok(None);
    };
    let reads = ResultReads::of(policy);
    Ok(Some(Box::new(
        shared
            .store
            .load_evidence_for(&base_release, milestone, Some(&reads))
            .await?,
    )))
}

/// Decides on the cached state of the gate, brought up to date with the store first: reused
/// when the policy and baseline are the same (only the jobs that changed are recomputed),
/// built anew otherwise (dropping the least recently used gate beyond [`CACHED_GATES`]).
/// Returns the decision with its replay inputs and the runs' plans, taken under the cache's
/// lock: the cached evidence is never shared past it, so a refresh never copies it.
async fn decide_cached(
    shared: &Shared,
    gate: &StoredGate,
    release: &Release,
    milestone: &str,
    baseline: Option<Box<Evidence>>,
    waivers: &[tollgate_domain::gate::Waiver],
) -> Result<(Decision, DecisionInputs, Vec<(String, PlanVersion)>), StoreError> {
    let policy_version = gate.policy.version();
    let key = (release.id.clone(), milestone.to_owned());
    let mut entries = shared.gate_cache.entries.lock().await;
    let tick = entries.values().map(|c| c.last_used).max().unwrap_or(0) + 1;
    let reusable = entries
        .get(&key)
        .is_some_and(|c| c.policy_version == policy_version && c.evidence.baseline == baseline);
    let cached = match entries.get_mut(&key) {
        Some(cached) if reusable => {
            refresh(shared, &gate.policy, release, milestone, baseline, cached).await?;
            cached
        }
        _ => {
            let reads = ResultReads::of(&gate.policy);
            let mut evidence = shared
                .store
                .load_evidence_for(release, milestone, Some(&reads))
                .await?;
            evidence.baseline = baseline;
            let evidence = Arc::new(evidence);
            let state = build_state(&gate.policy, &evidence).await;
            if entries.len() >= CACHED_GATES
                && !entries.contains_key(&key)
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, c)| c.last_used)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
            entries.insert(
                key.clone(),
                CachedGate {
                    policy_version,
                    evidence,
                    state,
                    last_used: tick,
                },
            );
            entries.get_mut(&key).expect("just inserted")
        }
    };
    cached.last_used = tick;
    let decision = cached
        .state
        .decide(&gate.policy, &cached.evidence, waivers, shared.now());
    let inputs = DecisionInputs::of(&gate.policy, &cached.evidence, waivers);
    Ok((decision, inputs, run_plans(&cached.evidence)))
}

/// Brings a cached gate up to date with the store: the jobs that changed are recomputed one
/// by one, or the state is built anew when the evidence was reloaded or many jobs changed.
async fn refresh(
    shared: &Shared,
    policy: &GatePolicy,
    release: &Release,
    milestone: &str,
    baseline: Option<Box<Evidence>>,
    cached: &mut CachedGate,
) -> Result<(), StoreError> {
    let evidence = Arc::make_mut(&mut cached.evidence);
    let reads = ResultReads::of(policy);
    match shared
        .store
        .refresh_evidence(release, milestone, evidence, Some(&reads))
        .await?
    {
        Refreshed::Reloaded => {
            evidence.baseline = baseline;
            cached.state = build_state(policy, &cached.evidence).await;
        }
        // Many changed jobs (a wave of results between two evaluations): build anew, on every
        // core and off the async runtime, rather than one job at a time.
        Refreshed::Changed(jobs) if jobs.len() * 4 > n_jobs(evidence) => {
            cached.state = build_state(policy, &cached.evidence).await;
        }
        Refreshed::Changed(jobs) => {
            for (run, job) in jobs {
                cached.state.job_changed(policy, evidence, run, job);
            }
        }
    }
    Ok(())
}

/// Builds a gate's state on a blocking thread: over a large fleet it is tens of milliseconds
/// of CPU on every core, which must not hold up the async runtime.
async fn build_state(policy: &GatePolicy, evidence: &Arc<Evidence>) -> GateState {
    let (owned_policy, shared_evidence) = (policy.clone(), Arc::clone(evidence));
    match tokio::task::spawn_blocking(move || GateState::new(&owned_policy, &shared_evidence)).await
    {
        Ok(state) => state,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // The runtime is shutting down: build it here.
        Err(_) => GateState::new(policy, evidence),
    }
}

fn n_jobs(evidence: &Evidence) -> usize {
    evidence.runs.iter().map(|run| run.jobs.len()).sum()
}

/// A stored decision evaluated again from its stored inputs.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// The decision as stored.
    pub stored: Decision,
    /// The decision evaluated again, at the stored decision's time; `None` when the decision
    /// was stored without its inputs.
    pub replayed: Option<Decision>,
}

impl Replayed {
    /// Whether replaying gave the stored digest and verdict, in words.
    pub fn describe(&self) -> String {
        match &self.replayed {
            None => "NOT REPLAYED: this decision was stored without its inputs".to_owned(),
            Some(replayed)
                if replayed.digest == self.stored.digest
                    && replayed.verdict == self.stored.verdict =>
            {
                "replayed from stored inputs: digest matches".to_owned()
            }
            Some(replayed) => format!(
                "REPLAY MISMATCH: stored digest {} verdict {}, replayed digest {} verdict {}",
                self.stored.digest, self.stored.verdict, replayed.digest, replayed.verdict
            ),
        }
    }
}

/// The decision of `release` at `milestone` as it stood at `at`: the latest stored at or
/// before `at`, evaluated again from its stored inputs with `now` = its evaluation time.
pub async fn replay_at(
    shared: &Shared,
    release: &Release,
    milestone: &str,
    at: tollgate_domain::Timestamp,
) -> Result<Option<Replayed>, StoreError> {
    let Some((stored, inputs)) = shared.store.decision_at(&release.id, milestone, at).await? else {
        return Ok(None);
    };
    let replayed = inputs.map(|inputs| {
        let mut replayed = tollgate_domain::gate::evaluate(
            &inputs.policy,
            &inputs.evidence,
            &inputs.waivers,
            stored.evaluated_at,
        );
        if inputs.first_scheme {
            replayed.digest = tollgate_domain::gate::digest_inputs_v1(
                &inputs.policy,
                &inputs.evidence,
                &inputs.waivers,
                stored.evaluated_at,
            );
        }
        replayed
    });
    Ok(Some(Replayed { stored, replayed }))
}

/// Re-evaluates the gate a run's evidence feeds, after that evidence changed. Problems are
/// logged, not returned: the change itself is already committed and the next evaluation
/// (on demand or at the next change) starts from the store again.
pub async fn reevaluate_for_run(shared: &Shared, run: &RunId) {
    let outcome = async {
        let Some(run) = shared.store.get_run(run).await? else {
            return Ok::<_, StoreError>(());
        };
        // A health check is never evidence: no gate depends on it.
        if run.purpose == crate::store::RunPurpose::Health {
            return Ok(());
        }
        let Some(release) = shared.store.get_release(&run.release).await? else {
            return Ok(());
        };
        evaluate_now(shared, &release, &run.milestone).await?;
        Ok(())
    };
    if let Err(error) = outcome.await {
        tracing::warn!(run = %run, %error, "could not re-evaluate the gate after a change");
    }
}

/// Evaluates the gates of runs whose evidence changed, as they are asked for through
/// [`Shared::request_reevaluation`], until shutdown.
///
/// Requests coalesce: while one evaluation runs, every request that arrives is remembered once,
/// so a wave of 200 jobs ending together costs a few evaluations, not 200 of them each loading
/// the whole evidence. A decision therefore reflects every result committed before it started.
pub async fn run_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.subscribe_shutdown();
    let mut last_pass: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = shared.reevaluation_requested() => {}
            () = stopped(&mut shutdown) => break,
        }
        // Job ends close together are judged together: a thousand in a second cost a few
        // evaluations of the gate, each reading every job's state, not a thousand.
        if let Some(started) = last_pass {
            tokio::select! {
                () = tokio::time::sleep_until(started + REEVALUATE_SPACING) => {}
                () = stopped(&mut shutdown) => break,
            }
        }
        last_pass = Some(tokio::time::Instant::now());
        let requests = shared.take_reevaluation_requests();
        // One evaluation per gate: the first run asking for it stands for the others, and the
        // evaluation's span answers every traced request for the gate (`traces.rs`).
        let mut targets: BTreeMap<(ReleaseId, String), (RunId, Vec<SpanContext>)> = BTreeMap::new();
        for (run_id, contexts) in requests {
            let target = match shared.store.get_run(&run_id).await {
                Ok(Some(run)) => (run.release, run.milestone),
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(run = %run_id, %error, "could not load a run to re-evaluate its gate");
                    continue;
                }
            };
            let (_, asked) = targets
                .entry(target)
                .or_insert_with(|| (run_id, Vec::new()));
            asked.extend(contexts);
        }
        for ((release, milestone), (run_id, contexts)) in targets {
            let span = crate::traces::span(|| {
                tracing::info_span!(
                    target: "tollgate_traces",
                    "gate re-evaluation",
                    tollgate.run = %run_id,
                    tollgate.release = %release,
                    tollgate.milestone = %milestone,
                    tollgate.requests_traced = contexts.len(),
                )
            });
            crate::traces::parent_or_link(&span, &contexts);
            reevaluate_for_run(&shared, &run_id).instrument(span).await;
        }
    }
    tracing::debug!("gate re-evaluation loop stopped");
}

/// The text a person reads when a gate did not pass; the release lifecycle decides with it.
pub use tollgate_domain::release::explain_not_passed;

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_domain::gate::{RuleDecision, Verdict};
    use tollgate_domain::test_support::at;

    /// A decision handed out does not share the gate cache's evidence: the next evaluation's
    /// refresh updates it in place instead of copying it (a copy of 100,000 results whenever
    /// two evaluations overlap, say a dashboard view during the re-evaluation loop's).
    #[tokio::test]
    async fn a_decision_handed_out_leaves_the_cached_evidence_unshared() {
        let store = crate::store::Store::connect("sqlite::memory:")
            .await
            .expect("store");
        let setup = crate::store::AuditNote::new(at(0), "test", "test.setup", "test");
        let release = tollgate_domain::test_support::release();
        store
            .create_release(&release, &setup)
            .await
            .expect("release");
        let policy = tollgate_domain::gate::parse_gate(
            "gate.yaml",
            "milestone: lab-qual\nrules:\n  - no-xid: {}\n",
        )
        .expect("gate");
        store
            .put_gate(&policy, "gate.yaml", at(0), &setup)
            .await
            .expect("gate stored");
        let shared = Shared::new(
            store,
            crate::ControllerConfig::new(std::path::PathBuf::from("/nonexistent")),
        );
        let key = (release.id.clone(), "lab-qual".to_owned());
        for _ in 0..2 {
            let held = evaluate_now(&shared, &release, "lab-qual")
                .await
                .expect("evaluated")
                .expect("a gate guards lab-qual");
            let entries = shared.gate_cache.entries.lock().await;
            let cached = entries.get(&key).expect("the gate is cached");
            assert_eq!(Arc::strong_count(&cached.evidence), 1);
            drop(entries);
            drop(held);
        }
    }

    #[test]
    fn the_explanation_lists_every_rule_that_holds_the_release_back() {
        let rule = |id: &str, verdict: Verdict, reason: &str| RuleDecision {
            rule_id: id.into(),
            kind: "steps-passed".into(),
            verdict,
            reason: reason.into(),
            evidence: Vec::new(),
            failing_nodes: Vec::new(),
            failure_groups: Vec::new(),
            waiver_id: None,
        };
        let decision = Decision {
            release: "r1".into(),
            milestone: "lab-qual".into(),
            verdict: Verdict::Failed,
            summary: "1 of 3 rules failed: stress".into(),
            rules: vec![
                rule("versions", Verdict::Passed, "all nodes run the release"),
                rule("stress", Verdict::Failed, "n2 failed step stress"),
                rule("soak", Verdict::Waiting, "run still going"),
            ],
            digest: "d".into(),
            policy_version: "p".into(),
            evaluated_at: at(0),
        };
        let text = explain_not_passed(&ReleaseId::from("r1"), &decision);
        assert!(text.starts_with("gate of milestone lab-qual for release r1 is failed: 1 of 3"));
        assert!(text.contains("\n  - stress (failed): n2 failed step stress"));
        assert!(text.contains("\n  - soak (waiting): run still going"));
        assert!(!text.contains("versions"));
    }
}
