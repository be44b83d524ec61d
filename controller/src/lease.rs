//! The lease watchdog: every tick, nodes whose heartbeats stopped for longer than the lease
//! grace become `unreachable` and their active jobs `lost`; the gates those runs feed are
//! evaluated again. It also ends the runs a stop left `running` after their last job ended.
//!
//! Which leases ran out is `tollgate_domain::scheduler::expired_leases`; the controller's start
//! time is its first clock read, so after a restart every node gets a fresh grace period (never
//! shorter than an agent's longest reconnect delay plus a heartbeat) and a controller outage is
//! never read as the whole fleet dying. A database that refuses writes is
//! the same kind of outage (heartbeats arrive but cannot be recorded): no lease expires while
//! it lasts, and every lease gets a fresh grace when it ends (`Shared::refresh_leases`).
//!
//! A tick reads only the nodes not heard for half the grace (`LeaseGrace::quiet_since`) and
//! how many nodes are watched (`Store::lease_facts`): nodes heard since are neither silent nor
//! expired, so the answer is the one the whole fleet gives (a property test in
//! `tollgate_domain::lease` says so), at the cost of a scan of the narrow heartbeat rows
//! rather than a read of every node. The leader reads the heartbeats every replica recorded
//! (`heartbeats.rs`), so a node heard on another replica never expires here; and a node
//! this replica heard within the grace never expires, even when the flush that records its
//! heartbeat is held up by the database (`Heartbeats::newest_heard`).

use crate::shared::{FleetOutage, Shared};
use crate::store::{LeaseFacts, StoreError};
use std::collections::BTreeSet;
use std::sync::Arc;
use tollgate_domain::job::{self, JobEvent, JobFacts, NodeChange};
use tollgate_domain::node::NodeEvent;
use tollgate_domain::{NodeId, RunId};
use tracing::Instrument as _;

/// Runs until shutdown starts, checking leases while this replica leads (one replica of a
/// deployment expires leases; see `replica.rs`).
pub async fn run_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.subscribe_shutdown();
    let tick = shared.config.tick;
    let mut leader = crate::replica::Leader::default();
    // Whether this replica led at the last tick: taking the leadership is a controller
    // restart for the rollouts it now drives.
    let mut led = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = crate::shared::stopped(&mut shutdown) => break,
        }
        async {
            if !leader.leads(&shared).await {
                // Another replica expires leases; this one still shows a fleet outage it sees.
                if let Err(error) = look_for_outage(&shared).await {
                    tracing::debug!(%error, "could not look for a fleet outage");
                }
                led = false;
                return;
            }
            if !led {
                led = true;
                if let Err(error) = crate::rollouts::controller_restarted(&shared).await {
                    tracing::warn!(%error, "rollouts not told of the restart; their nodes are judged at the next tick");
                }
            }
            if let Err(error) = check_once(&shared).await {
                tracing::warn!(%error, "lease check failed; retrying at the next tick");
            }
            end_runs_left_running(&shared).await;
            if let Err(error) = crate::drain::enforce_deadlines(&shared).await {
                tracing::warn!(%error, "drain deadline check failed; retrying at the next tick");
            }
            if let Err(error) = crate::health_checks::tick(&shared).await {
                tracing::warn!(%error, "health checks not judged or started; retrying at the next tick");
            }
            if let Err(error) = crate::rollouts::tick(&shared).await {
                tracing::warn!(%error, "rollouts not driven; retrying at the next tick");
            }
            if let Err(error) = crate::fleet_history::prune_if_due(&shared).await {
                tracing::warn!(%error, "fleet telemetry past its retention not deleted; retrying at the next tick");
            }
        }
        .instrument(crate::traces::pass("lease watchdog tick"))
        .await;
    }
    tracing::debug!("lease watchdog stopped");
}

/// Ends the runs whose last job's end committed but whose own end was not decided (a
/// controller stopped in between, or the database refused that write; see
/// `Store::end_runs_left_running`).
async fn end_runs_left_running(shared: &Shared) {
    match shared.store.end_runs_left_running(shared.now()).await {
        Ok(ended) => {
            for run in ended {
                tracing::info!(%run, "run finished: its last job had ended before a stop");
            }
        }
        Err(error) => {
            tracing::warn!(%error, "runs left running not ended; retrying at the next tick");
        }
    }
}

/// One check; returns the nodes whose lease ran out and changed something (the node became
/// unreachable, or its jobs were lost).
pub async fn check_once(shared: &Shared) -> Result<Vec<NodeId>, StoreError> {
    if !shared.store.writes_accepted() {
        // Heartbeats cannot be recorded now, so silence proves nothing; the grace starts
        // again from the last tick that saw the outage.
        shared.refresh_leases(shared.now());
        return Ok(Vec::new());
    }
    let grace = lease_grace(shared);
    let now = shared.now();
    let mut facts = shared.store.lease_facts(grace.quiet_since(now)).await?;
    // Heartbeats this replica heard that a flush has not written yet count as heard.
    shared.heartbeats.newest_heard(&mut facts.quiet);
    if facts.n_watched == 0 {
        return Ok(Vec::new());
    }
    if judge_outage(shared, &facts, now) {
        return Ok(Vec::new());
    }
    let expired = tollgate_domain::scheduler::expired_leases(
        &facts.quiet,
        shared.leases_fresh_from(),
        grace,
        now,
    );
    if expired.is_empty() {
        return Ok(expired);
    }
    let mut unreachable = Vec::new();
    for node in &expired {
        match expire_lease(shared, node, now).await {
            Ok(Some(run_ids)) => {
                unreachable.push(node.clone());
                for run in &run_ids {
                    shared.request_reevaluation(run);
                }
            }
            Ok(None) => {}
            // A heartbeat, an operator or a result moved the node or its job meanwhile: the
            // next tick decides again from what they left.
            Err(StoreError::Conflict { detail, .. }) => {
                tracing::debug!(node = %node, detail, "node changed while its lease expired");
            }
            Err(error) => return Err(error),
        }
    }
    if !unreachable.is_empty() {
        shared.notify_changed();
        shared.poke_scheduler();
    }
    Ok(unreachable)
}

fn lease_grace(shared: &Shared) -> tollgate_domain::lease::LeaseGrace {
    tollgate_domain::lease::LeaseGrace::new(
        shared.config.lease_grace,
        shared.config.heartbeat_interval,
    )
}

/// Records in `shared` the fleet outage `facts` show now (`OutagePolicy`), keeping when it
/// began; returns the outage seen before and the one seen now.
fn record_outage(
    shared: &Shared,
    facts: &LeaseFacts,
    now: tollgate_domain::Timestamp,
) -> (Option<FleetOutage>, Option<FleetOutage>) {
    let silence = tollgate_domain::lease::silence(
        &facts.quiet,
        facts.n_watched,
        shared.leases_fresh_from(),
        lease_grace(shared),
        now,
    );
    let seen = shared
        .config
        .outage
        .is_outage(silence)
        .then(|| FleetOutage {
            since: shared.fleet_outage().map_or(now, |outage| outage.since),
            silent: silence.silent,
            watched: silence.watched,
        });
    (shared.set_fleet_outage(seen), seen)
}

/// Whether the fleet's silence is an outage now (`OutagePolicy`), recording it in `shared` and
/// saying so when it starts and ends. When it ends every lease gets a fresh grace (agents are
/// reconnecting), and this check expires nothing either.
fn judge_outage(shared: &Shared, facts: &LeaseFacts, now: tollgate_domain::Timestamp) -> bool {
    match record_outage(shared, facts, now) {
        (None, Some(outage)) => {
            tracing::warn!(
                silent = outage.silent,
                watched = outage.watched,
                fraction = shared.config.outage.fraction,
                "{} of {} nodes went silent at once: suspecting an outage of this controller, its \
                 database or the network rather than dead nodes; no lease expires until \
                 heartbeats return",
                outage.silent,
                outage.watched
            );
            true
        }
        (Some(_), Some(_)) => true,
        (Some(outage), None) => {
            shared.refresh_leases(now);
            tracing::info!(
                lasted_s = (now - outage.since).num_seconds(),
                "heartbeats returned: the fleet outage is over; every lease gets a fresh grace, \
                 and a node still silent after it is unreachable as ever"
            );
            true
        }
        (None, None) => false,
    }
}

/// Looks for a fleet outage without expiring anything (a replica that does not lead).
async fn look_for_outage(shared: &Shared) -> Result<(), StoreError> {
    let now = shared.now();
    let facts = shared
        .store
        .lease_facts(lease_grace(shared).quiet_since(now))
        .await?;
    record_outage(shared, &facts, now);
    Ok(())
}

/// Expires one node's lease: the node moves as `node::next_state` decides for
/// `LeaseExpired` (a cordoned node stays cordoned), each of its active jobs is lost (with its
/// node's and run's changes decided by `job::decide`), in one transaction. Returns the runs
/// whose jobs were lost, or `None` when nothing changed (a cordoned node without a job whose
/// agent stays away).
async fn expire_lease(
    shared: &Shared,
    node: &NodeId,
    now: tollgate_domain::Timestamp,
) -> Result<Option<BTreeSet<RunId>>, StoreError> {
    let Some(current) = shared.store.get_node(node).await? else {
        return Ok(None);
    };
    let Ok(to) = tollgate_domain::node::next_state(current.state, NodeEvent::LeaseExpired) else {
        return Ok(None);
    };
    let node_change = (to != current.state).then(|| NodeChange {
        node: node.clone(),
        from: current.state,
        to,
    });
    let mut lost = Vec::new();
    let mut runs = BTreeSet::new();
    for facts in shared.store.active_job_facts_of_node(node).await? {
        // The job is lost after the node moved: its end leaves the node where the lease left it.
        let facts = JobFacts {
            node_state: to,
            ..facts
        };
        if let Ok(mut change) = job::decide(&facts, JobEvent::LeaseExpired, facts.lease_epoch) {
            crate::reschedule::attach(shared, &mut change, false).await?;
            runs.insert(facts.run.clone());
            lost.push(change);
        }
    }
    if node_change.is_none() && lost.is_empty() {
        return Ok(None);
    }
    shared
        .metrics
        .store(
            "expire_lease",
            shared.store.expire_lease(node_change.as_ref(), &lost, now),
        )
        .await?;
    shared.metrics.lease_expired();
    shared.metrics.forget_node(node);
    tracing::warn!(
        node = %node,
        state = %to,
        grace_s = shared.config.lease_grace.as_secs(),
        "no heartbeat within the lease grace"
    );
    for change in &lost {
        tracing::warn!(job = %change.job, node = %node, "job lost: its node's lease ran out");
    }
    Ok(Some(runs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ControllerConfig;
    use crate::clock::ManualClock;
    use crate::store::{AuditNote, Store, testing};
    use std::time::Duration;
    use tollgate_domain::fleet::NodeState;
    use tollgate_domain::release::Release;
    use tollgate_domain::test_support::{at, node, release};

    /// Creates releases with a large description until the database refuses one.
    async fn write_until_refused(store: &Store) {
        for i in 0..64 {
            let big = Release {
                id: format!("r{i}").as_str().into(),
                description: "x".repeat(256 * 1024),
                ..release()
            };
            let note = AuditNote::new(at(0), "alice", "release.create", format!("release/r{i}"));
            if store.create_release(&big, &note).await.is_err() {
                return;
            }
        }
        panic!("the database accepted 64 large releases on a full disk");
    }

    #[tokio::test]
    async fn no_lease_expires_while_writes_are_refused_and_each_gets_a_fresh_grace_after() {
        let Some(disk) = testing::tmpfs_or_skip(8 * 1024) else {
            return;
        };
        let store = Store::connect(&format!("sqlite://{}/tollgate.db", disk.path().display()))
            .await
            .expect("store on tmpfs");
        let n1 = node("n1", "hgx");
        crate::grpc::node::register(&store, &n1.id, &n1.labels, &n1.inventory, "hash", at(0))
            .await
            .expect("register");
        store.touch_node(&n1.id, at(0)).await.expect("heartbeat");
        let clock = ManualClock::new(at(0));
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut config = ControllerConfig::new(data_dir.path().to_owned());
        config.clock = std::sync::Arc::new(clock.clone());
        config.lease_grace = Duration::from_secs(10);
        let shared = Shared::new(store.clone(), config);

        // The disk fills; the node's heartbeats can no longer be recorded.
        disk.fill("filler").expect("fill");
        write_until_refused(&store).await;
        assert!(!store.writes_accepted());
        clock.advance(chrono::Duration::seconds(11));
        assert_eq!(
            check_once(&shared).await.expect("no write is tried"),
            Vec::<NodeId>::new(),
            "silence while heartbeats cannot be stored proves nothing"
        );

        // Space returns; the grace runs from the last check that saw the outage (t=11).
        disk.free("filler").expect("free");
        store
            .probe_write()
            .await
            .expect("the probe after the outage");
        assert!(
            !store.writes_accepted(),
            "one write that succeeds is not yet a recovery"
        );
        tokio::time::sleep(crate::store::WRITES_CONFIRMED_AFTER).await;
        store
            .probe_write()
            .await
            .expect("the next probe after the outage");
        assert!(store.writes_accepted());
        clock.advance(chrono::Duration::seconds(9));
        assert_eq!(
            check_once(&shared).await.expect("check"),
            Vec::<NodeId>::new()
        );
        let seen = store.get_node(&n1.id).await.expect("read").expect("node");
        assert_eq!(seen.state, NodeState::Ready);

        // A node that stays silent for a whole grace after that is unreachable as ever.
        clock.advance(chrono::Duration::seconds(2));
        assert_eq!(
            check_once(&shared).await.expect("check"),
            vec![n1.id.clone()]
        );
        store.close().await;
    }

    /// A store in `dir` with `names` registered and heard at t=0, and a controller's shared
    /// state on it with a manual clock at t=0, a 10 s grace and 2 s heartbeats.
    async fn heard_at_zero(
        dir: &std::path::Path,
        names: &[String],
    ) -> (Store, ManualClock, Shared) {
        let store = Store::connect(&format!("sqlite://{}/tollgate.db", dir.display()))
            .await
            .expect("store");
        for name in names {
            let n = node(name, "hgx");
            crate::grpc::node::register(&store, &n.id, &n.labels, &n.inventory, "hash", at(0))
                .await
                .expect("register");
            store.touch_node(&n.id, at(0)).await.expect("heartbeat");
        }
        let clock = ManualClock::new(at(0));
        let mut config = ControllerConfig::new(dir.to_owned());
        config.clock = std::sync::Arc::new(clock.clone());
        config.lease_grace = Duration::from_secs(10);
        config.heartbeat_interval = Duration::from_secs(2);
        let shared = Shared::new(store.clone(), config);
        (store, clock, shared)
    }

    #[tokio::test]
    async fn half_the_fleet_silent_for_ten_minutes_expires_no_lease_until_heartbeats_return() {
        let dir = tempfile::tempdir().expect("temp dir");
        let names: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        let (store, clock, shared) = heard_at_zero(dir.path(), &names).await;
        let nodes: Vec<_> = names.iter().map(|name| node(name, "hgx")).collect();
        let heartbeats = |live: std::ops::Range<usize>| {
            let (store, nodes, now) = (&store, &nodes, shared.now());
            async move {
                for n in &nodes[live] {
                    store.touch_node(&n.id, now).await.expect("heartbeat");
                }
            }
        };

        // Half the fleet (n5..n9) goes silent for ten minutes; the other half heartbeats.
        for _ in 0..120 {
            clock.advance(chrono::Duration::seconds(5));
            heartbeats(0..5).await;
            assert_eq!(
                check_once(&shared).await.expect("check"),
                Vec::<NodeId>::new(),
                "no lease expires during the outage (t={})",
                shared.now()
            );
        }
        let outage = shared.fleet_outage().expect("the outage is seen");
        assert_eq!((outage.silent, outage.watched), (5, 10));
        for n in &nodes {
            let stored = store.get_node(&n.id).await.expect("read").expect("node");
            assert_eq!(stored.state, NodeState::Ready, "{}", n.id);
        }

        // Heartbeats return, but n9 stays silent: the outage ends and every lease gets a
        // fresh grace...
        clock.advance(chrono::Duration::seconds(1));
        heartbeats(0..9).await;
        assert_eq!(
            check_once(&shared).await.expect("check"),
            Vec::<NodeId>::new()
        );
        assert_eq!(shared.fleet_outage(), None);
        clock.advance(chrono::Duration::seconds(5));
        heartbeats(0..9).await;
        assert_eq!(
            check_once(&shared).await.expect("check"),
            Vec::<NodeId>::new()
        );
        // ...after which the node still silent is unreachable as ever.
        clock.advance(chrono::Duration::seconds(6));
        heartbeats(0..9).await;
        assert_eq!(
            check_once(&shared).await.expect("check"),
            vec![nodes[9].id.clone()]
        );
        store.close().await;
    }

    #[tokio::test]
    async fn a_heartbeat_heard_but_not_yet_flushed_keeps_its_lease() {
        let dir = tempfile::tempdir().expect("temp dir");
        let names = ["n1", "n2", "n3"].map(String::from);
        let (store, clock, shared) = heard_at_zero(dir.path(), &names).await;
        let n1 = node("n1", "hgx").id;
        // n1's heartbeat at t=8 is heard but waits for a flush the database holds up.
        clock.advance(chrono::Duration::seconds(8));
        shared.heartbeats.note(
            n1.clone(),
            crate::heartbeats::Note {
                session_id: 1,
                heartbeat: tollgate_proto::v1::Heartbeat::default(),
                at: shared.now(),
            },
        );
        clock.advance(chrono::Duration::seconds(3));
        let mut expired = check_once(&shared).await.expect("check");
        expired.sort();
        assert_eq!(
            expired,
            vec![node("n2", "hgx").id, node("n3", "hgx").id],
            "n1 was heard 3 s ago"
        );
        let stored = store.get_node(&n1).await.expect("read").expect("n1");
        assert_eq!(stored.state, NodeState::Ready);
        // Heard at t=8 and silent since: its lease runs out after the grace as ever.
        clock.advance(chrono::Duration::seconds(8));
        assert_eq!(check_once(&shared).await.expect("check"), vec![n1.clone()]);
        store.close().await;
    }

    #[tokio::test]
    async fn in_a_small_lab_silent_nodes_expire_as_ever() {
        let dir = tempfile::tempdir().expect("temp dir");
        let names = ["n1", "n2", "n3"].map(String::from);
        let (store, clock, shared) = heard_at_zero(dir.path(), &names).await;
        clock.advance(chrono::Duration::seconds(11));
        assert_eq!(check_once(&shared).await.expect("check").len(), 3);
        assert_eq!(shared.fleet_outage(), None);
        store.close().await;
    }
}
