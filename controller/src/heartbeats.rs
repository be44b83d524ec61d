//! Heartbeats, batched: an agent's heartbeat is only noted in memory when it arrives
//! (`Heartbeats::note`, newest per node); every [`flush_every`] the notes of every node go
//! to the store at once (`Store::touch_nodes`: one statement), the nodes' states and active
//! jobs are read at once (`Store::heartbeat_facts`: a statement per 500 nodes), and each heartbeat is
//! then judged as it always was (`grpc::agent::judge_heartbeat`: a node back from
//! `unreachable`, a job its agent no longer runs). A thousand agents cost three statements
//! a flush instead of a write transaction and a read each.
//!
//! `last_seen_at` lives in a narrow table of its own (`node_heartbeats`, a few dozen bytes a
//! row), so a flush never rewrites the wide `nodes` rows that carry the inventory, and the
//! node states it reads come from an index on (name, state) rather than from those rows.
//!
//! **Invariant:** a node's `last_seen_at` is at most one flush behind its last heartbeat, so
//! the lease watchdog never judges a live node on a heartbeat older than
//! `heartbeat_interval + flush_every`; `main` refuses a lease grace that short. This holds
//! across replicas: each replica flushes the heartbeats of the streams it holds to the one
//! store, and the replica that leads the watchdog judges every node from that store, so a
//! node heard on another replica is never silent to it. A flush the database refuses puts its
//! notes back (a newer note of the node wins) for the next one.

use crate::shared::Shared;
use crate::store::StoreError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_domain::{NodeId, Timestamp};
use tollgate_proto::v1 as proto;
use tracing::Instrument as _;

/// The longest time between flushes.
pub const MAX_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// How often heartbeats are flushed for agents heartbeating every `heartbeat_interval`: half
/// of it, between 20 ms and [`MAX_FLUSH_EVERY`].
pub fn flush_every(heartbeat_interval: Duration) -> Duration {
    (heartbeat_interval / 2).clamp(Duration::from_millis(20), MAX_FLUSH_EVERY)
}

/// One heartbeat waiting to be flushed.
#[derive(Debug, Clone)]
pub struct Note {
    /// The agent stream it came on.
    pub session_id: u64,
    /// What the agent said.
    pub heartbeat: proto::Heartbeat,
    /// When it arrived.
    pub at: Timestamp,
}

/// The heartbeats not flushed yet, the newest per node, and when this replica last heard
/// each node.
#[derive(Debug, Default)]
pub struct Heartbeats {
    pending: Mutex<Noted>,
}

/// What [`Heartbeats`] guards.
#[derive(Debug, Default)]
struct Noted {
    /// Not flushed yet (a flush takes them all).
    notes: HashMap<NodeId, Note>,
    /// The newest heartbeat this replica heard of each node, flushed or not: what the lease
    /// watchdog adds to the store's `last_seen_at`, which a flush held up by the database (a
    /// long write lock, a storm of registrations) may not have written yet.
    heard: HashMap<NodeId, Timestamp>,
    /// Agents that connected since the last flush, and when: recorded as seen by the flush,
    /// not judged (a connection says nothing of what the agent runs).
    connected: HashMap<NodeId, Timestamp>,
}

impl Heartbeats {
    /// Notes `node`'s heartbeat, replacing an older one not flushed yet.
    pub fn note(&self, node: NodeId, note: Note) {
        let mut noted = self.lock();
        match noted.heard.get_mut(&node) {
            Some(heard) => *heard = (*heard).max(note.at),
            None => {
                noted.heard.insert(node.clone(), note.at);
            }
        }
        noted.notes.insert(node, note);
    }

    /// Notes that `node`'s agent connected `at`: its lease is renewed here at once (the
    /// watchdog reads what this replica heard) and its `last_seen_at` written by the next
    /// flush, in the batch, instead of a write transaction per connection: a storm of agents
    /// reconnecting would queue one each behind the database's write lock.
    pub fn connected(&self, node: NodeId, at: Timestamp) {
        let mut noted = self.lock();
        let heard = noted.heard.entry(node.clone()).or_insert(at);
        *heard = (*heard).max(at);
        let connected = noted.connected.entry(node).or_insert(at);
        *connected = (*connected).max(at);
    }

    /// Raises each node's last heartbeat to the newest this replica heard, whether or not a
    /// flush has written it: a live node is never judged silent because its heartbeats are
    /// still waiting for the database.
    pub fn newest_heard(&self, last_seen: &mut [(NodeId, Option<Timestamp>)]) {
        let noted = self.lock();
        for (node, seen) in last_seen {
            if let Some(&heard) = noted.heard.get(node) {
                *seen = Some(seen.map_or(heard, |seen| seen.max(heard)));
            }
        }
    }

    /// Heartbeats waiting.
    pub fn len(&self) -> usize {
        self.lock().notes.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.lock().notes.is_empty()
    }

    fn take(&self) -> (HashMap<NodeId, Note>, HashMap<NodeId, Timestamp>) {
        let mut noted = self.lock();
        (
            std::mem::take(&mut noted.notes),
            std::mem::take(&mut noted.connected),
        )
    }

    /// Puts back notes and connections a flush could not write; a node's newer note, noted
    /// meanwhile, wins.
    fn restore(&self, notes: HashMap<NodeId, Note>, connected: HashMap<NodeId, Timestamp>) {
        let mut pending = self.lock();
        for (node, note) in notes {
            pending.notes.entry(node).or_insert(note);
        }
        for (node, at) in connected {
            let kept = pending.connected.entry(node).or_insert(at);
            *kept = (*kept).max(at);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Noted> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs until shutdown starts, flushing every [`flush_every`]; then flushes once more.
pub async fn run_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.subscribe_shutdown();
    let every = flush_every(shared.config.heartbeat_interval);
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = crate::shared::stopped(&mut shutdown) => break,
        }
        if let Err(error) = flush(&shared)
            .instrument(crate::traces::pass("heartbeat flush"))
            .await
        {
            tracing::warn!(%error, "heartbeats not recorded; retrying at the next flush");
        }
    }
    if let Err(error) = flush(&shared).await {
        tracing::debug!(%error, "heartbeats noted at shutdown not recorded");
    }
    tracing::debug!("heartbeat flusher stopped");
}

/// Records every heartbeat and connection noted since the last flush and judges the
/// heartbeats; returns how many heartbeats.
pub async fn flush(shared: &Shared) -> Result<usize, StoreError> {
    let (notes, connected) = shared.heartbeats.take();
    if notes.is_empty() && connected.is_empty() {
        return Ok(0);
    }
    let mut newest: HashMap<&NodeId, Timestamp> =
        connected.iter().map(|(node, at)| (node, *at)).collect();
    for (node, note) in &notes {
        let at = newest.entry(node).or_insert(note.at);
        *at = (*at).max(note.at);
    }
    let mut seen: Vec<(NodeId, Timestamp)> = newest
        .into_iter()
        .map(|(node, at)| (node.clone(), at))
        .collect();
    // One order for every flush, so that two replicas' flushes lock rows alike.
    seen.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if let Err(error) = shared
        .metrics
        .store("touch_nodes", shared.store.touch_nodes(&seen))
        .await
    {
        shared.heartbeats.restore(notes, connected);
        return Err(error);
    }
    if notes.is_empty() {
        return Ok(0);
    }
    let names: Vec<NodeId> = notes.keys().cloned().collect();
    let facts: HashMap<NodeId, crate::store::HeartbeatFacts> = shared
        .store
        .heartbeat_facts(&names)
        .await?
        .into_iter()
        .map(|facts| (facts.node.clone(), facts))
        .collect();
    let n_notes = notes.len();
    for (node, note) in notes {
        let facts = facts.get(&node);
        if let Err(error) = crate::grpc::agent::judge_heartbeat(shared, &node, &note, facts).await {
            tracing::warn!(node = %node, %error, "could not judge a heartbeat; the next one is judged again");
        }
    }
    Ok(n_notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(session_id: u64, secs: i64) -> Note {
        Note {
            session_id,
            heartbeat: proto::Heartbeat::default(),
            at: tollgate_domain::test_support::at(secs),
        }
    }

    #[test]
    fn the_newest_note_of_a_node_is_kept_and_wins_over_one_put_back() {
        let beats = Heartbeats::default();
        beats.note(NodeId::from("n1"), note(1, 1));
        beats.note(NodeId::from("n1"), note(1, 2));
        beats.note(NodeId::from("n2"), note(2, 1));
        assert_eq!(beats.len(), 2);
        let (taken, _) = beats.take();
        assert!(beats.is_empty());
        assert_eq!(
            taken[&NodeId::from("n1")].at,
            tollgate_domain::test_support::at(2)
        );
        // A newer note arrived while the flush failed: it is kept, the old one only fills in.
        beats.note(NodeId::from("n1"), note(3, 5));
        beats.restore(taken, HashMap::new());
        let (again, _) = beats.take();
        assert_eq!(again[&NodeId::from("n1")].session_id, 3);
        assert_eq!(again[&NodeId::from("n2")].session_id, 2);
    }

    /// Notes a heartbeat of each of `nodes` at the clock's now, on their sessions, and
    /// flushes them.
    async fn beat(shared: &Shared, nodes: &[(&NodeId, u64)]) {
        for (node, session_id) in nodes {
            shared.heartbeats.note(
                (*node).clone(),
                Note {
                    session_id: *session_id,
                    heartbeat: proto::Heartbeat::default(),
                    at: shared.now(),
                },
            );
        }
        assert_eq!(flush(shared).await.expect("flush"), nodes.len());
    }

    /// A store in `dir` with `names` registered at 0 s, and a manual clock at 0 s.
    async fn registered(
        dir: &std::path::Path,
        names: &[&str],
    ) -> (crate::store::Store, crate::clock::ManualClock) {
        use tollgate_domain::test_support::{at, node};
        let store =
            crate::store::Store::connect(&format!("sqlite://{}/tollgate.db", dir.display()))
                .await
                .expect("store");
        for name in names {
            let fixture = node(name, "hgx");
            crate::grpc::node::register(
                &store,
                &fixture.id,
                &fixture.labels,
                &fixture.inventory,
                "hash",
                at(0),
            )
            .await
            .expect("register");
        }
        (store, crate::clock::ManualClock::new(at(0)))
    }

    /// A controller's config on `dir` and `clock`: heartbeats every 2 s, a 10 s grace.
    fn config(
        dir: &std::path::Path,
        clock: &crate::clock::ManualClock,
    ) -> crate::config::ControllerConfig {
        let mut config = crate::config::ControllerConfig::new(dir.to_owned());
        config.clock = Arc::new(clock.clone());
        config.heartbeat_interval = Duration::from_secs(2);
        config.lease_grace = Duration::from_secs(10);
        config
    }

    fn move_to(clock: &crate::clock::ManualClock, to: Timestamp) {
        use crate::clock::Clock;
        clock.advance(to - clock.now());
    }

    /// A connection renews the lease at once, before any flush, and the next flush records
    /// it as the node's `last_seen_at` without judging a heartbeat; a flush that fails keeps
    /// it for the next.
    #[tokio::test]
    async fn a_connection_renews_the_lease_at_once_and_is_recorded_by_the_next_flush() {
        use tollgate_domain::test_support::at;
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, clock) = registered(dir.path(), &["n1"]).await;
        let shared = Shared::new(store.clone(), config(dir.path(), &clock));
        let (_session, _commands) = shared.sessions.open(&NodeId::from("n1")).expect("session");
        let last_seen = || {
            let store = store.clone();
            async move {
                store
                    .get_node(&NodeId::from("n1"))
                    .await
                    .expect("read")
                    .expect("node")
                    .last_seen_at
            }
        };

        // Connected at 8 s, 8 s after registering: at 15 s the store's `last_seen_at` (0 s)
        // is past the 10 s grace, but the lease counts from the connection.
        move_to(&clock, at(8));
        shared
            .heartbeats
            .connected(NodeId::from("n1"), shared.now());
        move_to(&clock, at(15));
        assert!(
            crate::lease::check_once(&shared)
                .await
                .expect("check")
                .is_empty()
        );
        assert_eq!(last_seen().await, Some(at(0)));

        // The flush records it and judges no heartbeat.
        assert_eq!(flush(&shared).await.expect("flush"), 0);
        assert_eq!(last_seen().await, Some(at(8)));

        // A flush that cannot write keeps the connection for the next one.
        shared.heartbeats.connected(NodeId::from("n1"), at(15));
        let (notes, connected) = shared.heartbeats.take();
        shared.heartbeats.restore(notes, connected);
        assert_eq!(flush(&shared).await.expect("flush"), 0);
        assert_eq!(last_seen().await, Some(at(15)));
    }

    #[tokio::test]
    async fn a_lease_runs_out_a_grace_after_the_last_flushed_heartbeat_and_a_restart_renews_it() {
        use tollgate_domain::fleet::NodeState;
        use tollgate_domain::test_support::at;
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, clock) = registered(dir.path(), &["n1", "n2"]).await;
        let (n1, n2) = (NodeId::from("n1"), NodeId::from("n2"));
        let config = || config(dir.path(), &clock);
        let shared = Shared::new(store.clone(), config());
        let (s1, _c1) = shared.sessions.open(&n1).expect("session");
        let (s2, _c2) = shared.sessions.open(&n2).expect("session");
        let state = |node: NodeId| {
            let store = store.clone();
            async move {
                store
                    .get_node(&node)
                    .await
                    .expect("read")
                    .expect("node")
                    .state
            }
        };

        // Both heartbeat every 2 s for 20 s: batched, and no lease runs out.
        for _ in 0..10 {
            beat(&shared, &[(&n1, s1), (&n2, s2)]).await;
            assert!(
                crate::lease::check_once(&shared)
                    .await
                    .expect("check")
                    .is_empty()
            );
            clock.advance(chrono::Duration::seconds(2));
        }
        assert_eq!(
            store
                .get_node(&n1)
                .await
                .expect("read")
                .expect("node")
                .last_seen_at,
            Some(at(18)),
            "the last flush recorded the last heartbeat's time"
        );
        // n1 goes on; n2 falls silent after its heartbeat at 18 s: its lease holds until 28 s.
        move_to(&clock, at(27));
        beat(&shared, &[(&n1, s1)]).await;
        assert!(
            crate::lease::check_once(&shared)
                .await
                .expect("check")
                .is_empty()
        );
        move_to(&clock, at(28) + chrono::Duration::milliseconds(500));
        beat(&shared, &[(&n1, s1)]).await;
        assert_eq!(
            crate::lease::check_once(&shared).await.expect("check"),
            vec![n2.clone()]
        );
        assert_eq!(state(n2.clone()).await, NodeState::Unreachable);
        assert_eq!(state(n1.clone()).await, NodeState::Ready);

        // A heartbeat of n2 noted at 18 s but judged only now (its flush held up past the
        // grace) predates the silence: n2 stays unreachable.
        shared.heartbeats.note(
            n2.clone(),
            Note {
                session_id: s2,
                heartbeat: proto::Heartbeat::default(),
                at: at(18),
            },
        );
        assert_eq!(flush(&shared).await.expect("flush"), 1);
        assert_eq!(state(n2.clone()).await, NodeState::Unreachable);
        // n2's agent comes back: its next flushed heartbeat makes it ready again.
        beat(&shared, &[(&n1, s1), (&n2, s2)]).await;
        assert_eq!(state(n2.clone()).await, NodeState::Ready);

        // The controller restarts at 40 s, 11 s after n1's last heartbeat (28.5 s) was
        // recorded: past the grace, but a restart gives every lease a fresh one (at least an
        // agent's reconnect delay plus a heartbeat, 7 s; here the 10 s grace).
        move_to(&clock, at(40));
        let restarted = Shared::new(store.clone(), config());
        assert!(
            crate::lease::check_once(&restarted)
                .await
                .expect("check")
                .is_empty()
        );
        move_to(&clock, at(49));
        assert!(
            crate::lease::check_once(&restarted)
                .await
                .expect("check")
                .is_empty()
        );
        move_to(&clock, at(50) + chrono::Duration::milliseconds(500));
        let mut expired = crate::lease::check_once(&restarted).await.expect("check");
        expired.sort();
        assert_eq!(
            expired,
            vec![n1, n2],
            "silent since the restart: a grace later, both expire"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn a_node_heard_on_another_replica_keeps_its_lease_where_leases_are_judged() {
        use tollgate_domain::test_support::at;
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, clock) = registered(dir.path(), &["n1"]).await;
        let config = || config(dir.path(), &clock);
        let n1 = NodeId::from("n1");
        // Two replicas on one store: one holds the agent's stream, the other judges leases.
        let holder = Shared::new(store.clone(), config());
        let leader = Shared::new(store.clone(), config());
        let (session, _commands) = holder.sessions.open(&n1).expect("session");
        assert!(!leader.sessions.is_connected(&n1));

        // A minute of heartbeats, each flushed where they arrive: the leader, which never
        // heard one itself, expires nothing, however long past its own start.
        for _ in 0..30 {
            clock.advance(chrono::Duration::seconds(2));
            beat(&holder, &[(&n1, session)]).await;
            assert!(
                crate::lease::check_once(&leader)
                    .await
                    .expect("check")
                    .is_empty()
            );
        }
        // Silent from 60 s on: the leader expires the lease a grace later, not before.
        move_to(&clock, at(70));
        assert!(
            crate::lease::check_once(&leader)
                .await
                .expect("check")
                .is_empty()
        );
        move_to(&clock, at(70) + chrono::Duration::milliseconds(1));
        assert_eq!(
            crate::lease::check_once(&leader).await.expect("check"),
            vec![n1.clone()]
        );
        store.close().await;
    }

    #[test]
    fn flushes_come_twice_a_heartbeat_and_at_least_every_second() {
        assert_eq!(
            flush_every(Duration::from_millis(200)),
            Duration::from_millis(100)
        );
        assert_eq!(flush_every(Duration::from_secs(10)), MAX_FLUSH_EVERY);
        assert_eq!(
            flush_every(Duration::from_millis(10)),
            Duration::from_millis(20)
        );
    }
}
